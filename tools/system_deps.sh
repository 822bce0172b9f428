#!/bin/sh
# Debian packages the tests need beyond Python, Java and Maven (`make system-deps`, run first
# by `make test`): each is installed only when its command is missing.
#
#   promtool         prometheus   checks etc/prometheus/alerts.yml and a live /metrics scrape
#   systemd-analyze  systemd      verifies the units in systemd/ and rates their sandbox
#   strace           strace       traces the daemon to prove it fits the units' filters
#   /usr/sbin/sshd   openssh-server  the sftp plugin's tests run a real OpenSSH server on loopback
#   /usr/sbin/nginx  nginx        the benchmark's origin (`make bench`, tests/test_bench_tools.py)
#   aria2c, curl     aria2, curl  the benchmark's peers
#   chromium, chromedriver  chromium, chromium-driver  the console's browser tests (selenium)
#
# Runs `apt-get update` only when the package lists do not know a package, then
# `apt-get install -y --no-install-recommends`; needs root (CI runs as root). The prometheus
# package would start a Prometheus server on :9090 on a systemd machine: the install runs
# under a policy-rc.d that forbids starting services (unless one is already in place), and a
# server that started anyway is stopped and disabled. Only promtool is used; likewise nginx's
# and ssh's own services (the tests and the benchmark start their own on free ports).
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
need aria2c aria2
need curl curl
need chromium chromium
need chromedriver chromium-driver
# not on PATH for non-root users: test the files themselves
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
[ -x /usr/sbin/nginx ] || missing="$missing nginx"

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
        "systemd-analyze, strace, aria2c, curl, chromium, chromedriver, /usr/sbin/sshd," \
        "/usr/sbin/nginx) another way" >&2
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

# The packages enable services; only their commands are used (a test or the benchmark starts
# its own server on a free port).
for pair in prometheus:prometheus openssh-server:ssh nginx:nginx; do
    pkg=${pair%%:*}
    service=${pair#*:}
    case " $missing " in
        *" $pkg "*) ;;
        *) continue ;;
    esac
    if [ -d /run/systemd/system ]; then
        echo "system-deps: systemctl disable --now $service"
        systemctl disable --now "$service"
    elif command -v systemctl >/dev/null 2>&1; then
        echo "system-deps: systemctl disable $service (systemd is not running here)"
        systemctl disable "$service"
    fi
done
echo "system-deps: installed$missing"
