#!/usr/bin/env bash
# Makes sure `redis-server` and `redis-cli` are installed: the demo and the tests start private
# servers from it, and join Cluster nodes with `redis-cli --cluster create`.
#
# Source it and call `ensure_redis`, or run it. When redis-server is missing it is installed
# with apt-get if this runs as root; otherwise it says precisely what to install and fails.

ensure_redis() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return 0
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "redis-server or redis-cli is missing; installing the Debian packages redis-server and redis-tools with apt-get" >&2
        # Keep the package from starting a system-wide Redis on 6379 (which may be taken, and
        # would fail the install): blogctl's scripts and tests start private ones instead.
        local policy=/usr/sbin/policy-rc.d added=0 status=0
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added=1
        fi
        {
            DEBIAN_FRONTEND=noninteractive apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server redis-tools
        } >&2 || status=$?
        if ((added)); then
            rm -f "$policy"
        fi
        if ((status != 0)); then
            echo "error: installing redis-server with apt-get failed (exit code $status)" >&2
            return 1
        fi
        if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
            echo "error: apt-get installed redis-server and redis-tools, but they are not on PATH ($PATH)" >&2
            return 1
        fi
        return 0
    fi
    cat >&2 <<'EOF'
error: redis-server or redis-cli is not installed (they are installed automatically only when
running as root with apt-get). Install them, then run this again:
    Debian/Ubuntu:     sudo apt-get install -y redis-server redis-tools
    Fedora:            sudo dnf install -y redis
    macOS (Homebrew):  brew install redis
EOF
    return 1
}

# Makes sure `openssl` is installed: the TLS tests make their certificates with it.
ensure_openssl() {
    if command -v openssl >/dev/null 2>&1; then
        return 0
    fi
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "openssl is missing; installing the Debian package openssl with apt-get" >&2
        {
            DEBIAN_FRONTEND=noninteractive apt-get update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssl
        } >&2 || {
            echo "error: installing openssl with apt-get failed" >&2
            return 1
        }
        return 0
    fi
    echo "error: openssl is not installed (the TLS tests need it): install the openssl package" >&2
    return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    set -euo pipefail
    ensure_redis
fi
