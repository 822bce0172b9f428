#!/bin/sh
# Debian packages the tests need beyond Python, Java and Maven (`make system-deps`, run first
# by `make test`): each is installed only when its command is missing.
#
#   promtool         prometheus   checks etc/prometheus/alerts.yml and a live /metrics scrape
#   systemd-analyze  systemd      verifies the units in systemd/ and rates their sandbox
#   strace           strace       traces the daemon to prove it fits the units' filters
#   /usr/sbin/sshd   openssh-server  the sftp plugin's tests run a real OpenSSH server on loopback
#
# Runs `apt-get update` only when the package lists do not know a package, then
# `apt-get install -y --no-install-recommends`; needs root (CI runs as root). The prometheus
# package would start a Prometheus server on :9090 on a systemd machine: the install runs
# under a policy-rc.d that forbids starting services (unless one is already in place), and a
# server that started anyway is stopped and disabled. Only promtool is used.
set -eu

missing=
need() {  # COMMAND PACKAGE
    if ! command -v "$1" >/dev/null 2>&1; then
        missing="$missing $2"
    fi
}
need promtool prometheus
need systemd-analyze systemd
need strace strace
if [ ! -x /usr/sbin/sshd ]; then  # not on PATH for non-root users: test the file itself
    missing="$missing openssh-server"
fi

if [ -z "$missing" ]; then
    exit 0
fi
echo "system-deps: missing Debian package(s):$missing"
if [ "$(id -u)" -ne 0 ]; then
    echo "system-deps: run as root, or: sudo apt-get install --no-install-recommends$missing" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "system-deps: no apt-get here; install$missing (the commands promtool," \
        "systemd-analyze, strace, /usr/sbin/sshd) another way" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
updated=no
update() {
    echo "system-deps: apt-get update ($1)"
    apt-get update -q
    updated=yes
}
for pkg in $missing; do
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
        update "the package lists do not know $pkg"
        break
    fi
done

policy=/usr/sbin/policy-rc.d
own_policy=no
if [ ! -e "$policy" ]; then
    echo "system-deps: $policy forbids starting services during the install"
    printf '#!/bin/sh\n# lakeferry tools/system_deps.sh: no service starts during its install\n%s\n' \
        'exit 101' > "$policy"
    chmod 0755 "$policy"
    own_policy=yes
fi
trap 'if [ "$own_policy" = yes ]; then rm -f "$policy"; fi' EXIT

install() {
    echo "system-deps: apt-get install -y --no-install-recommends$missing"
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y -q --no-install-recommends $missing
}
if ! install; then
    # Stale lists point at package versions the mirror no longer has.
    [ "$updated" = no ] || exit 1
    update "the install failed; the package lists may be stale"
    install
fi

case $missing in
    *prometheus*)
        # The package enables prometheus.service; only promtool is needed.
        if [ -d /run/systemd/system ]; then
            echo "system-deps: systemctl disable --now prometheus"
            systemctl disable --now prometheus
        elif command -v systemctl >/dev/null 2>&1; then
            echo "system-deps: systemctl disable prometheus (systemd is not running here)"
            systemctl disable prometheus
        fi
        ;;
esac
case $missing in
    *openssh-server*)
        # The package enables ssh.service; the tests start their own sshd on a free port.
        if [ -d /run/systemd/system ]; then
            echo "system-deps: systemctl disable --now ssh"
            systemctl disable --now ssh
        elif command -v systemctl >/dev/null 2>&1; then
            echo "system-deps: systemctl disable ssh (systemd is not running here)"
            systemctl disable ssh
        fi
        ;;
esac
echo "system-deps: installed$missing"
