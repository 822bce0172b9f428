#!/bin/sh
# The benchmark's peers and origin, from Debian's packages, installed only when missing (root).
set -eu
missing=""
command -v nginx >/dev/null 2>&1 || missing="$missing nginx"
command -v aria2c >/dev/null 2>&1 || missing="$missing aria2"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
if [ -n "$missing" ]; then
    echo "bench: installing$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    # nginx's package starts a service on port 80 where systemd runs; the benchmark runs its own.
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
fi
