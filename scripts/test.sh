#!/usr/bin/env bash
# Runs every test of blogctl. The tests start their own private redis-server processes on free
# loopback ports (never the shared 6379), so redis-server must be installed, and openssl for the
# TLS tests: this installs them when it can (see scripts/ensure-redis.sh). Extra arguments go to
# the test runner.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/ensure-redis.sh
source scripts/ensure-redis.sh
ensure_redis
ensure_openssl

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install a Rust toolchain (https://rustup.rs)" >&2
    exit 1
fi

if cargo nextest --version >/dev/null 2>&1; then
    exec cargo nextest run --workspace "$@"
fi
echo "cargo-nextest is not installed (cargo install cargo-nextest --locked); using cargo test" >&2
exec cargo test --workspace "$@"
