#!/usr/bin/env bash
# The benchmark run behind BENCHMARKS.md: redis-benchmark's XADD figures and `blogctl bench`,
# against one private redis-server (no persistence), each run RUNS times (medians are yours to
# take from the figures printed). Usage: scripts/bench.sh [COMMENTS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/ensure-redis.sh
source scripts/ensure-redis.sh
ensure_redis

comments=${1:-100000}
runs=${2:-3}
cargo build --release --quiet
blogctl=target/release/blogctl

dir=$(mktemp -d)
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
services=()
cleanup() {
    for pid in "${services[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$dir"
}
trap cleanup EXIT
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" --daemonize yes \
    --logfile "$dir/redis.log" >/dev/null
until redis-cli -p "$port" ping >/dev/null 2>&1; do sleep 0.05; done
export BLOGCTL_REDIS_URL="redis://127.0.0.1:$port"

echo "== machine: $(nproc) cores, $(uname -srm), $(redis-server --version | cut -d' ' -f3)"
echo "== redis-benchmark XADD (200,000 each, 50 clients)"
for run in $(seq "$runs"); do
    for pipeline in 1 16; do
        printf 'run %s, -P %-2s: ' "$run" "$pipeline"
        redis-benchmark -p "$port" -n 200000 -P "$pipeline" -q XADD "bench:xadd" '*' field value | tr '\r' '\n' | tail -1
    done
    redis-cli -p "$port" del bench:xadd >/dev/null
done

echo "== blogctl bench --embedded ($comments comments, 100 posts, 128 in flight)"
for run in $(seq "$runs"); do
    echo "-- run $run"
    "$blogctl" --namespace "bench-embedded-$run" bench --embedded --posts 100 --comments "$comments" --in-flight 128
done

echo "== latency alone, one comment at a time (3,000 samples), without and with --busy-poll 200, taking turns"
for run in $(seq "$runs"); do
    for busy_poll in 0 200; do
        printf 'run %s, --busy-poll %-3s: ' "$run" "$busy_poll"
        "$blogctl" --busy-poll "$busy_poll" --namespace "bench-latency-$run-$busy_poll" bench --embedded \
            --posts 10 --comments 10 --in-flight 1 --latency-samples 3000 | grep latency
    done
done

echo "== rebuild query over the log of 333,401 comments made by the services ($runs runs)"
# 100 posts and 333,300 comments of three events each, plus one latency sample: 1,000,003 events
# on the three streams; query's rebuild reads the posts' and the comments' streams, 666,703 of them.
"$blogctl" --namespace bench-rebuild bench --embedded --posts 100 --comments 333300 --in-flight 128 \
    --latency-samples 1 >/dev/null
for run in $(seq "$runs"); do
    "$blogctl" --namespace bench-rebuild rebuild query
done

echo "== blogctl bench against four service processes (RSS per service)"
for service in posts comments moderation query; do
    "$blogctl" --namespace bench-processes serve "$service" 2>"$dir/$service.log" &
    services+=("$!")
done
until "$blogctl" --namespace bench-processes status --check >/dev/null 2>&1; do sleep 0.05; done
"$blogctl" --namespace bench-processes bench --posts 100 --comments "$((comments / 5))" --in-flight 128

echo "== one-shot client: post list --json on a small blog (5 posts), 50 runs each, wall time"
"$blogctl" --namespace bench-small serve all 2>"$dir/small.log" &
services+=("$!")
for n in 1 2 3 4 5; do "$blogctl" --namespace bench-small post create --wait "Post $n" >/dev/null; done
# Timed from Python: a shell's own fork and clock calls would add milliseconds to each run.
python3 - "$blogctl" "$port" <<'PY'
import statistics, subprocess, sys, time
blogctl, port = sys.argv[1], sys.argv[2]
for name, command in [
    ("true (process start alone)", ["true"]),
    ("redis-cli ping", ["redis-cli", "-p", port, "ping"]),
    ("blogctl --version", [blogctl, "--version"]),
    ("blogctl --json post list", [blogctl, "--namespace", "bench-small", "--json", "post", "list"]),
]:
    times = []
    for _ in range(50):
        start = time.perf_counter()
        subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    print(f"{name:28} median {statistics.median(times):.2f} ms  p90 {times[44]:.2f} ms")
PY
