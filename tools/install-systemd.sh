#!/bin/sh
# Install lakeferry as a systemd service: `make install-systemd` runs this (as root).
#
#   tools/install-systemd.sh [--prefix DIR] [--bus embedded|kafka] [--root DIR] [--no-venv]
#
# What it does, printing each step:
#   1. the system user and group `lakeferry` (systemd-sysusers, /etc/sysusers.d/lakeferry.conf);
#   2. the code: a venv in PREFIX/.venv (default /opt/lakeferry) with lakeferry and its
#      built-in plugins installed from this checkout, pinned by constraints.txt (needs python3
#      >= 3.11 with venv, and PyPI or a mirror); README and docs in PREFIX/doc; a
#      /usr/local/bin/lakeferry link for operators;
#   3. the units (systemd/*.service, lakeferry.target) into /etc/systemd/system, with
#      /opt/lakeferry replaced by PREFIX; they are overwritten on every run, so site changes
#      belong in drop-ins (`systemctl edit lakeferry`);
#   4. the config /etc/lakeferry/lakeferry.toml from etc/lakeferry.toml (--bus kafka:
#      etc/lakeferry.kafka.toml), state defaulting to /var/lib/lakeferry, and the environment
#      file /etc/lakeferry/lakeferry.env, both root:lakeferry 0640 and only when absent;
#   5. systemctl daemon-reload. It enables and starts nothing: it prints how.
#
# --root DIR installs into another root (a staging tree, a test): steps 2's venv and the
# operator link (a venv is not relocatable: build it on the target, or give --no-venv), the
# chown and the daemon-reload are skipped; the user goes into DIR/etc/passwd.
set -eu

PREFIX=/opt/lakeferry
BUS=embedded
ROOT=
VENV=yes
SRC=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}

usage() {
    sed -n 's/^#   \(tools.*\)/usage: \1/p' "$0" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
        --prefix) PREFIX=${2:?}; shift 2 ;;
        --prefix=*) PREFIX=${1#*=}; shift ;;
        --bus) BUS=${2:?}; shift 2 ;;
        --bus=*) BUS=${1#*=}; shift ;;
        --root) ROOT=${2:?}; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --no-venv) VENV=no; shift ;;
        -h|--help) usage ;;
        *) echo "install-systemd: unknown argument $1" >&2; usage ;;
    esac
done

case $BUS in
    embedded) CONFIG_SRC=$SRC/etc/lakeferry.toml ;;
    kafka) CONFIG_SRC=$SRC/etc/lakeferry.kafka.toml ;;
    *) echo "install-systemd: --bus is embedded or kafka, not $BUS" >&2; exit 2 ;;
esac
case $PREFIX in
    /*) ;;
    *) echo "install-systemd: --prefix must be an absolute path" >&2; exit 2 ;;
esac
ROOT=${ROOT%/}
if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install-systemd: run as root (or give --root DIR to stage the files elsewhere)" >&2
    exit 1
fi

step() { printf '==> %s\n' "$*"; }
run() { printf '    $ %s\n' "$*"; "$@"; }

UNITDIR=$ROOT/etc/systemd/system
ETC=$ROOT/etc/lakeferry

# 1. the user ------------------------------------------------------------------------------
step "system user and group lakeferry"
run install -d -m 0755 "$ROOT/etc/sysusers.d"
run install -m 0644 "$SRC/systemd/lakeferry.sysusers" "$ROOT/etc/sysusers.d/lakeferry.conf"
if [ -n "$ROOT" ]; then
    run systemd-sysusers --root="$ROOT" lakeferry.conf
else
    run systemd-sysusers lakeferry.conf
fi

# 2. the code ------------------------------------------------------------------------------
if [ "$VENV" = yes ] && [ -z "$ROOT" ]; then
    step "code: venv $PREFIX/.venv from $SRC"
    run install -d -m 0755 "$PREFIX"
    if [ ! -x "$PREFIX/.venv/bin/python" ]; then
        run "$PYTHON" -m venv "$PREFIX/.venv"
    fi
    run "$PREFIX/.venv/bin/python" -m pip install --quiet --upgrade pip
    run "$PREFIX/.venv/bin/python" -m pip install --quiet -c "$SRC/constraints.txt" "$SRC"
    run ln -sfn "$PREFIX/.venv/bin/lakeferry" /usr/local/bin/lakeferry
else
    step "code: venv skipped (build $PREFIX/.venv on the target: $PYTHON -m venv, pip install)"
fi
run install -d -m 0755 "$ROOT$PREFIX/doc/docs"
run install -m 0644 "$SRC/README.md" "$ROOT$PREFIX/doc/README.md"
run install -m 0644 "$SRC"/docs/*.md "$ROOT$PREFIX/doc/docs/"

# 3. the units -----------------------------------------------------------------------------
step "units into $UNITDIR (prefix $PREFIX)"
run install -d -m 0755 "$UNITDIR"
for unit in "$SRC"/systemd/*.service "$SRC"/systemd/*.target; do
    name=$(basename "$unit")
    printf '    $ sed s|/opt/lakeferry|%s|g %s > %s\n' "$PREFIX" "$unit" "$UNITDIR/$name"
    sed "s|/opt/lakeferry|$PREFIX|g" "$unit" > "$UNITDIR/$name.tmp"
    chmod 0644 "$UNITDIR/$name.tmp"
    mv "$UNITDIR/$name.tmp" "$UNITDIR/$name"
done

# 4. the config ----------------------------------------------------------------------------
step "config in $ETC"
run install -d -m 0755 "$ETC"
install_private() {  # SOURCE TARGET [sed expression]: root:lakeferry 0640, only when absent
    if [ -e "$2" ]; then
        echo "    $2 exists: kept"
        return
    fi
    printf '    $ sed %s %s > %s\n' "${3:-}" "$1" "$2"
    {
        printf '# Installed from %s by tools/install-systemd.sh; yours to edit.\n' "${1#"$SRC"/}"
        sed "${3:-}" "$1"
    } > "$2.tmp"
    chmod 0640 "$2.tmp"
    if [ -z "$ROOT" ]; then
        chgrp lakeferry "$2.tmp"
    fi
    mv "$2.tmp" "$2"
}
# State paths default to the StateDirectory, so the CLI (`sudo -u lakeferry lakeferry dlq
# list`) finds the same bus without LAKEFERRY_STATE in its environment.
install_private "$CONFIG_SRC" "$ETC/lakeferry.toml" \
    's|\${LAKEFERRY_STATE:-\(\.\./\)\{0,1\}var/lakeferry[a-z-]*}|${LAKEFERRY_STATE:-/var/lib/lakeferry}|g'
install_private "$SRC/systemd/lakeferry.env" "$ETC/lakeferry.env"

# 5. systemd -------------------------------------------------------------------------------
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    step "systemd"
    run systemctl daemon-reload
else
    step "systemd: not running here (or --root): no daemon-reload"
fi

cat <<EOF

Installed. Check the config, then start either the all-in-one daemon:
    lakeferry check-config /etc/lakeferry/lakeferry.toml
    systemctl enable --now lakeferry
or, on the Kafka bus (--bus kafka), stage workers (the instance is the metrics port):
    lakeferry topics ensure -c /etc/lakeferry/lakeferry.toml
    systemctl enable --now lakeferry.target lakeferry-ingest@9501 \\
        lakeferry-download@{9521..9526} lakeferry-upload@{9541..9544} lakeferry-results@9561
Operators: sudo -u lakeferry lakeferry dlq list -c /etc/lakeferry/lakeferry.toml
EOF
