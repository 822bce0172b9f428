#!/bin/sh
# Check the systemd units (`make systemd-check`; tests/test_systemd_units.py does the same):
#   - stage them with tools/install-systemd.sh --root into a temporary tree, with a stub
#     lakeferry executable at the prefix (verify insists that ExecStart= exists);
#   - `systemd-analyze verify` every unit (templates through one instance): any complaint fails;
#   - `systemd-analyze security --offline` on lakeferry.service and one instance of each
#     template: prints the exposure and fails when it is above MAX_EXPOSURE (default 2.0).
# Needs systemd-analyze (Debian package `systemd`); no running systemd, no root.
set -eu

MAX_EXPOSURE=${MAX_EXPOSURE:-2.0}
SRC=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v systemd-analyze >/dev/null 2>&1; then
    echo "systemd-check: systemd-analyze not found: apt-get install systemd" >&2
    exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ! out=$("$SRC/tools/install-systemd.sh" --root "$tmp/root" --prefix "$tmp/prefix" --no-venv 2>&1)
then
    printf '%s\nsystemd-check: staging the units failed\n' "$out" >&2
    exit 1
fi
mkdir -p "$tmp/prefix/.venv/bin"
printf '#!/bin/sh\nexit 1\n' > "$tmp/prefix/.venv/bin/lakeferry"
chmod 0755 "$tmp/prefix/.venv/bin/lakeferry"
units=$tmp/root/etc/systemd/system

# One instance per template, with a port from that stage's range.
instance() {
    case $1 in
        lakeferry-ingest@.service) echo lakeferry-ingest@9501.service ;;
        lakeferry-download@.service) echo lakeferry-download@9521.service ;;
        lakeferry-upload@.service) echo lakeferry-upload@9541.service ;;
        lakeferry-results@.service) echo lakeferry-results@9561.service ;;
        *@.service) echo "${1%@.service}@1.service" ;;
        *) echo "$1" ;;
    esac
}

failed=0
for path in "$units"/*; do
    name=$(instance "$(basename "$path")")
    out=$(cd "$units" && systemd-analyze verify "$units/$name" 2>&1) || failed=1
    if [ -n "$out" ]; then
        failed=1
        printf 'verify %s: FAILED\n%s\n' "$name" "$out"
    else
        printf 'verify %s: ok\n' "$name"
    fi
done

threshold=$(echo "$MAX_EXPOSURE" | awk '{ printf "%d", $1 * 10 + 0.5 }')
for path in "$units"/*.service; do
    name=$(instance "$(basename "$path")")
    out=$(systemd-analyze security --offline=true --threshold="$threshold" "$units/$name" 2>&1) \
        && rc=0 || rc=$?
    level=$(printf '%s\n' "$out" \
        | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [ "$rc" -ne 0 ] || [ -z "$level" ]; then
        failed=1
        printf '%s\n' "$out" | grep -v '^✓' || true
        printf 'security %s: %s (above %s) FAILED\n' "$name" "${level:-?}" "$MAX_EXPOSURE"
    else
        printf 'security %s: %s (at most %s)\n' "$name" "$level" "$MAX_EXPOSURE"
    fi
done
exit $failed
