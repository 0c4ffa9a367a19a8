#!/usr/bin/env bash
# The blogctl demo: the four services on Redis streams, one per producer, driven from the shell.
#
# Makes a Redis user per process (`blogctl acl`, passwords in a temporary directory), starts a
# private redis-server with that ACL file on a free loopback port (AOF on, everysec), runs each
# service as a process of its own, as its own user, tells a short story with the client (as the
# client's user) and the operator (as the operator's), shows Redis refusing a service what is
# not its own, and stops everything it started. With BLOGCTL_REDIS_URL pointing at a Redis, it
# uses that one instead, every process as the URL's user (it cannot load an ACL file there).
# `--cluster`: a private Redis Cluster of three masters instead of one redis-server, and a blog
# of 8 partitions spread over them.
# BLOGCTL_BIN: use this binary instead of building one. Works from any directory.
set -euo pipefail

cluster=0
case ${1:-} in
    "") ;;
    --cluster) cluster=1 ;;
    *)
        echo "usage: scripts/demo.sh [--cluster]" >&2
        exit 2
        ;;
esac

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# shellcheck source=scripts/ensure-redis.sh
source scripts/ensure-redis.sh

workdir=$(mktemp -d "${TMPDIR:-/tmp}/blogctl-demo.XXXXXX")
redis_pid=""
# The nodes of the Cluster, with --cluster.
cluster_pids=()
# One process per service, in the order of $services.
services=(posts comments moderation query)
service_pids=()

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
    local index
    for index in "${!service_pids[@]}"; do
        stop "${service_pids[$index]}" "blogctl serve ${services[$index]}"
    done
    stop "$redis_pid" "redis-server"
    for index in "${!cluster_pids[@]}"; do
        stop "${cluster_pids[$index]}" "redis-server (Cluster node)"
    done
    if ((status != 0)); then
        echo "demo: failed (exit code $status)" >&2
        for index in "${!service_pids[@]}"; do
            echo "demo: the log of blogctl serve ${services[$index]}:" >&2
            tail -n 15 "$workdir/${services[$index]}.log" >&2 || true
        done
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

# --- Redis and its users ----------------------------------------------------------------
# Its own namespace, so the demo never mixes with a blog already in that Redis.
export BLOGCTL_NAMESPACE="demo-$$"

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
    else
        echo $((20000 + RANDOM % 30000))
    fi
}

# With users (a private Redis), each role runs as `<namespace>-<role>`, with its password file.
users=0
secrets=$workdir/secrets
port=""

# Sets role_env to the environment a process of ROLE (a service, client or operator) runs with:
# its Redis user and password file, when the demo made users.
role_env() {
    role_env=()
    if ((users)); then
        role_env=(
            "BLOGCTL_REDIS_URL=redis://$BLOGCTL_NAMESPACE-$1@127.0.0.1:$port"
            "BLOGCTL_REDIS_PASSWORD_FILE=$secrets/$BLOGCTL_NAMESPACE-$1.password"
        )
    fi
}

# blogctl as the user of its command: `post` and `comment` the client's, any other the operator's.
blogctl() {
    local role=operator
    case $1 in post | comment) role=client ;; esac
    role_env "$role"
    env ${role_env[@]+"${role_env[@]}"} "$bin" "$@"
}

# Ready once the operator can read from it; its last error is kept for the report.
redis_ready() { blogctl status >/dev/null 2>"$workdir/ready.err"; }

# A loopback port p, 20000 to 39999, whose p + 10000 (a Cluster node's bus) is free too.
free_cluster_port() {
    python3 -c '
import random, socket
def free(port):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False
while True:
    port = random.randrange(20000, 40000)
    if free(port) and free(port + 10000):
        print(port)
        break'
}

# Starts three Cluster nodes with the ACL file, joins them (as an administrator the demo adds to
# the file for that), and sets `port` to the first node's: blogctl reaches the others through it.
start_cluster() {
    local admin_password ports=() node
    admin_password=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
    echo "user demo-admin on >$admin_password ~* &* +@all" >>"$workdir/users.acl"
    for node in 1 2 3; do
        local node_port
        node_port=$(free_cluster_port)
        mkdir -p "$workdir/node-$node"
        redis-server --bind 127.0.0.1 --port "$node_port" --dir "$workdir/node-$node" \
            --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
            --appendonly yes --appendfsync everysec --save '' \
            --aclfile "$workdir/users.acl" --logfile "$workdir/node-$node/redis.log" &
        cluster_pids+=("$!")
        ports+=("127.0.0.1:$node_port")
    done
    local address
    for address in "${ports[@]}"; do
        wait_until 10 "the Cluster node at $address" \
            env REDISCLI_AUTH="$admin_password" redis-cli -h 127.0.0.1 -p "${address#*:}" \
            --user demo-admin ping >/dev/null
    done
    REDISCLI_AUTH=$admin_password redis-cli --user demo-admin --cluster create "${ports[@]}" \
        --cluster-yes >"$workdir/cluster-create.log" 2>&1 || {
        echo "demo: redis-cli --cluster create failed:" >&2
        cat "$workdir/cluster-create.log" >&2
        exit 1
    }
    cluster_ok() {
        REDISCLI_AUTH=$admin_password redis-cli -p "${ports[0]#*:}" --user demo-admin \
            cluster info 2>/dev/null | grep -q 'cluster_state:ok'
    }
    wait_until 15 "the Cluster to serve every slot" cluster_ok
    port=${ports[0]#*:}
    wait_until 10 "blogctl to reach the Cluster" redis_ready
    echo "demo: started a private Redis Cluster of three masters (${ports[*]}) with that ACL file;" \
        "blogctl reaches it through 127.0.0.1:$port" >&2
}

if [[ -n ${BLOGCTL_REDIS_URL:-} ]] && ((cluster)); then
    echo "demo: --cluster starts a Cluster of its own: unset BLOGCTL_REDIS_URL" >&2
    exit 2
fi
if [[ -n ${BLOGCTL_REDIS_URL:-} ]]; then
    echo "demo: using the Redis at $BLOGCTL_REDIS_URL, every process as its user" >&2
    wait_until 5 "Redis at $BLOGCTL_REDIS_URL" redis_ready
else
    ensure_redis
    # A user per process: the file Redis loads holds the hashes of their passwords, and turns
    # Redis's `default` user off.
    "$bin" acl --passwords "$secrets" >"$workdir/users.acl" 2>/dev/null
    users=1
    echo "demo: made a Redis user per process: blogctl acl --passwords $secrets > users.acl" >&2
    if ((cluster)); then
        start_cluster
        # Eight partitions, so the blog spreads over the three masters.
        export BLOGCTL_PARTITIONS=8
        echo "demo: the blog has 8 partitions (BLOGCTL_PARTITIONS=8), spread over the masters" >&2
    fi
    for _ in 1 2 3 4 5; do
        ((cluster)) && break
        port=$(free_port)
        # Never the shared 6379.
        [[ $port == 6379 ]] && continue
        redis-server --bind 127.0.0.1 --port "$port" --dir "$workdir" \
            --appendonly yes --appendfsync everysec --save '' \
            --aclfile "$workdir/users.acl" --logfile "$workdir/redis.log" &
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
    if [[ -z $redis_pid ]] && ((!cluster)); then
        echo "demo: could not start redis-server, or blogctl could not use it:" >&2
        cat "$workdir/ready.err" >&2 || true
        echo "demo: redis-server's log:" >&2
        tail -n 20 "$workdir/redis.log" >&2 || true
        exit 1
    fi
    if ((!cluster)); then
        echo "demo: started a private redis-server on 127.0.0.1:$port (AOF, fsync every second) with that ACL file" >&2
    fi
fi

# --- the services -------------------------------------------------------------------------
# Each service a process of its own, as its own user. Started through `env`, which becomes the
# binary: $! must be its pid, for the trap to stop it.
for service in "${services[@]}"; do
    role_env "$service"
    env ${role_env[@]+"${role_env[@]}"} RUST_LOG=info "$bin" serve "$service" \
        >"$workdir/$service.log" 2>&1 &
    service_pids+=("$!")
done
# Ready when each service has said it started (and its process is still up).
services_started() {
    local index
    for index in "${!services[@]}"; do
        kill -0 "${service_pids[$index]}" 2>/dev/null || {
            echo "demo: blogctl serve ${services[$index]} exited" >&2
            exit 1
        }
        grep -q ' started' "$workdir/${services[$index]}.log" || return 1
    done
}
wait_until 15 "the four services to start" services_started
if ((users)); then
    echo "demo: the four services are running, each as its own user ($BLOGCTL_NAMESPACE-posts, ...)" >&2
else
    echo "demo: the four services are running (namespace $BLOGCTL_NAMESPACE)" >&2
fi

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

if ((users)); then
    printf '\n# The commands below run as %s (post, comment) and %s (the others).\n' \
        "$BLOGCTL_NAMESPACE-client" "$BLOGCTL_NAMESPACE-operator"
fi

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

if ((users)) && command -v redis-cli >/dev/null 2>&1; then
    printf '\n# Redis refuses a user what is not its own: the query service reads the posts'"'"' stream,\n'
    printf '# and may not add to it (only the posts service writes its events):\n'
    query_user=$BLOGCTL_NAMESPACE-query
    stream="$BLOGCTL_NAMESPACE:posts:{$BLOGCTL_NAMESPACE.0}:events"
    printf '\n$ redis-cli --user %s XADD "%s" "*" type PostCreated data "{}"\n' "$query_user" "$stream"
    refusal=$(REDISCLI_AUTH=$(head -n 1 "$secrets/$query_user.password") \
        redis-cli -c -p "$port" --user "$query_user" XADD "$stream" '*' type PostCreated data '{}' 2>&1)
    printf '%s\n' "$refusal"
    if [[ $refusal != NOPERM* ]]; then
        echo "demo: expected Redis to refuse $query_user an XADD to $stream" >&2
        exit 1
    fi
fi

printf '\n# Done. To go on, start a Redis and the services yourself and follow the README'"'"'s Tour\n'
printf '# (README.md, "Tour"): blogctl serve all & blogctl post create "Hello" ...\n'
