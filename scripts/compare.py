#!/usr/bin/env python3
"""Compares blogctl binaries in one sitting, taking turns, against one private redis-server.

Usage: scripts/compare.py NAME=PATH[,NAME=PATH...] [ROUNDS] [COMMENTS]

Each turn empties Redis (`FLUSHALL SYNC`), then runs `blogctl bench --embedded` (COMMENTS comments, 128 in flight, 500 latency samples,
then its `rebuild query`) in a fresh namespace, and prints its figures with Redis's CPU per
comment (`INFO CPU` before and after) and the bench process's CPU per comment (getrusage); both
cover the whole run, rebuild included. The binaries take turns in a rotating order, so none always
runs first or last in a round. Then the medians per binary. CPU figures vary far less
than wall-clock ones on a noisy machine: compare those first.
"""
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main():
    binaries = dict(pair.split("=", 1) for pair in sys.argv[1].split(","))
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    comments = int(sys.argv[3]) if len(sys.argv) > 3 else 30000
    port = free_port()
    directory = tempfile.mkdtemp()
    redis = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", directory, "--logfile", "redis.log"])

    def cli(*args):
        return subprocess.run(["redis-cli", "-p", str(port), *args],
                              capture_output=True, text=True).stdout

    deadline = time.monotonic() + 10
    while cli("PING").strip() != "PONG":
        if time.monotonic() > deadline:
            sys.exit("redis-server did not start")
        time.sleep(0.05)

    def redis_cpu():
        info = dict(line.split(":", 1) for line in cli("INFO", "CPU").splitlines() if ":" in line)
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    print(f"machine: {os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}, "
          f"{cli('INFO', 'server').split('redis_version:')[1].split()[0]}; "
          f"{comments} comments per run, {rounds} rounds")
    results = {name: [] for name in binaries}
    turn = 0
    try:
        names = list(binaries)
        for round_number in range(rounds):
            order = names[round_number % len(names):] + names[:round_number % len(names)]
            for name in order:
                path = binaries[name]
                turn += 1
                cli("FLUSHALL", "SYNC")
                env = dict(os.environ, BLOGCTL_REDIS_URL=f"redis://127.0.0.1:{port}",
                           BLOGCTL_NAMESPACE=f"compare-{turn}")
                before, usage = redis_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
                run = subprocess.run(
                    [path, "--json", "bench", "--embedded", "--comments", str(comments),
                     "--in-flight", "128", "--latency-samples", "500"],
                    env=env, capture_output=True, text=True)
                after, used = redis_cpu(), resource.getrusage(resource.RUSAGE_CHILDREN)
                if run.returncode != 0:
                    print(f"{name}: bench failed: {run.stderr.strip()[-300:]}")
                    continue
                report = json.loads(run.stdout.strip().splitlines()[-1])
                row = {
                    "comments/s": report["comments_per_second"],
                    "p50 ms": report["latency_ms"]["p50"],
                    "p99 ms": report["latency_ms"]["p99"],
                    "rebuild events/s": report["rebuild_events_per_second"],
                    "redis us/comment": (after - before) * 1e6 / comments,
                    "blogctl us/comment": (used.ru_utime - usage.ru_utime
                                           + used.ru_stime - usage.ru_stime) * 1e6 / comments,
                }
                results[name].append(row)
                print(f"{name} round {round_number + 1}: "
                      + ", ".join(f"{key} {value:.3f}" if value < 10 else f"{key} {value:,.0f}"
                                  for key, value in row.items()), flush=True)
    finally:
        cli("SHUTDOWN", "NOSAVE")
        redis.wait()
    for name, rows in results.items():
        if not rows:
            continue
        medians = {key: statistics.median(row[key] for row in rows) for key in rows[0]}
        print(f"{name}: medians of {len(rows)}: "
              + ", ".join(f"{key} {value:.3f}" if value < 10 else f"{key} {value:,.1f}"
                          for key, value in medians.items()))


if __name__ == "__main__":
    main()
