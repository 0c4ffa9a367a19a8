#!/usr/bin/env bash
# The blogctl demo: the four services on Redis streams, one per producer, driven from the shell.
#
# Starts a private redis-server on a free loopback port (AOF on, everysec) unless
# BLOGCTL_REDIS_URL points at one, runs `blogctl serve all`, tells a short story with the client,
# prints the view, and stops everything it started. BLOGCTL_BIN: use this binary instead of
# building one. Works from any directory.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/ensure-redis.sh
source scripts/ensure-redis.sh

workdir=$(mktemp -d "${TMPDIR:-/tmp}/blogctl-demo.XXXXXX")
redis_pid=""
serve_pid=""

# Waits for a child process to exit, up to $2 seconds; true when it did.
wait_for_exit() {
    local pid=$1 deadline=$((SECONDS + $2)) state
    while kill -0 "$pid" 2>/dev/null; do
        # An exited child stays a zombie (state Z) until reaped: count it as gone.
        read -r _ _ state _ <"/proc/$pid/stat" 2>/dev/null || break
        [[ $state == Z ]] && break
        ((SECONDS < deadline)) || return 1
        sleep 0.05
    done
    wait "$pid" 2>/dev/null || true
}

# Stops a child with SIGTERM, then SIGKILL if it does not exit in time.
stop() {
    local pid=$1 name=$2
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_for_exit "$pid" 10; then
        echo "demo: $name did not stop within 10s; killing it" >&2
        kill -KILL "$pid" 2>/dev/null || true
        wait_for_exit "$pid" 5 || true
    fi
}

cleanup() {
    local status=$?
    # A second Ctrl-C must not cut the clean-up short.
    trap - EXIT
    trap '' INT TERM
    stop "$serve_pid" "blogctl serve"
    stop "$redis_pid" "redis-server"
    if ((status != 0)) && [[ -s $workdir/serve.log ]]; then
        echo "demo: failed (exit code $status); the services' log:" >&2
        tail -n 30 "$workdir/serve.log" >&2
    fi
    rm -rf "$workdir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Retries a command until it succeeds, for at most $1 seconds.
wait_until() {
    local timeout=$1 what=$2
    shift 2
    local deadline=$((SECONDS + timeout))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "demo: gave up after ${timeout}s waiting for $what" >&2
            return 1
        fi
        sleep 0.1
    done
}

# --- the binary ---------------------------------------------------------------------------
if [[ -n ${BLOGCTL_BIN:-} ]]; then
    bin=$BLOGCTL_BIN
else
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo is not installed; install a Rust toolchain (https://rustup.rs) or set BLOGCTL_BIN" >&2
        exit 1
    fi
    echo "demo: building blogctl (cargo build --release; about a minute the first time)" >&2
    cargo build --release
    # Where cargo put it: CARGO_TARGET_DIR when set (relative to the repository), else target/.
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$repo/$target_dir
    bin=$target_dir/release/blogctl
fi
if [[ ! -x $bin ]]; then
    echo "demo: error: no blogctl binary at $bin (set BLOGCTL_BIN to the one to use)" >&2
    exit 1
fi
blogctl() { "$bin" "$@"; }

# --- Redis --------------------------------------------------------------------------------
free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        echo $((20000 + RANDOM % 30000))
    fi
}

# Ready once the client can read from it; the client's last error is kept for the report.
redis_ready() { blogctl post list >/dev/null 2>"$workdir/ready.err"; }

if [[ -n ${BLOGCTL_REDIS_URL:-} ]]; then
    echo "demo: using the Redis at $BLOGCTL_REDIS_URL" >&2
    wait_until 5 "Redis at $BLOGCTL_REDIS_URL" redis_ready
else
    ensure_redis
    for _ in 1 2 3 4 5; do
        port=$(free_port)
        # Never the shared 6379.
        [[ $port == 6379 ]] && continue
        export BLOGCTL_REDIS_URL="redis://127.0.0.1:$port"
        redis-server --bind 127.0.0.1 --port "$port" --dir "$workdir" \
            --appendonly yes --appendfsync everysec --save '' \
            --logfile "$workdir/redis.log" &
        redis_pid=$!
        # A port someone took meanwhile makes it exit: then try another.
        deadline=$((SECONDS + 10))
        until redis_ready; do
            if ! kill -0 "$redis_pid" 2>/dev/null || ((SECONDS >= deadline)); then
                stop "$redis_pid" "redis-server"
                redis_pid=""
                break
            fi
            sleep 0.05
        done
        [[ -n $redis_pid ]] && break
    done
    if [[ -z $redis_pid ]]; then
        echo "demo: could not start redis-server, or blogctl could not use it:" >&2
        cat "$workdir/ready.err" >&2 || true
        echo "demo: redis-server's log:" >&2
        tail -n 20 "$workdir/redis.log" >&2 || true
        exit 1
    fi
    echo "demo: started a private redis-server at $BLOGCTL_REDIS_URL (AOF, fsync every second)" >&2
fi
# Its own namespace, so the demo never mixes with a blog already in that Redis.
export BLOGCTL_NAMESPACE="demo-$$"

# --- the services -------------------------------------------------------------------------
# The binary itself, not the `blogctl` function: $! must be its pid, for the trap to stop it.
RUST_LOG=info "$bin" serve all >"$workdir/serve.log" 2>&1 &
serve_pid=$!
# Ready when each of the four services has said it started (and the process is still up).
services_started() {
    kill -0 "$serve_pid" 2>/dev/null || {
        echo "demo: blogctl serve all exited" >&2
        exit 1
    }
    (($(grep -c ' started' "$workdir/serve.log" || true) >= 4))
}
wait_until 15 "the four services to start" services_started
echo "demo: blogctl serve all is running (pid $serve_pid, namespace $BLOGCTL_NAMESPACE)" >&2

# --- the story ----------------------------------------------------------------------------
# Shows a command as typed, runs it, prints its output, keeps it in $output, returns its exit code.
show() {
    local arg shown=""
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=-]+$ ]]; then shown+=" $arg"; else shown+=" \"$arg\""; fi
    done
    printf '\n$ blogctl%s\n' "$shown"
    local status=0
    output=$(blogctl "$@") || status=$?
    [[ -z $output ]] || printf '%s\n' "$output"
    return "$status"
}

show post create --wait "Hello, event-driven world"
post1=$output
show post create --json "Fruit of the day"
post2=$(sed -E 's/.*"id":"([^"]+)".*/\1/' <<<"$output")

show comment create "$post1" "First!"
show comment create --wait "$post1" "Four services, a stream per producer: neat."
show comment create --wait "$post2" "Bananas, obviously"
show comment create --wait --json "$post2" "Nothing beats an Orange"

printf '\n# A comment on a post that does not exist fails, with exit code 3:\n'
status=0
show comment create 00000000-0000-7000-8000-000000000000 "Hello?" 2>&1 || status=$?
echo "(exit code $status)"
if [[ $status != 3 ]]; then
    echo "demo: expected exit code 3 for a missing post, got $status" >&2
    exit 1
fi

show post list

printf '\n# What the services did, as an operator sees it:\n'
show status
show events list --count 6

printf '\n# Done. To go on, start a Redis and the services yourself and follow the README'"'"'s Tour\n'
printf '# (README.md, "Tour"): blogctl serve all & blogctl post create "Hello" ...\n'
