#!/usr/bin/env bash
# duplicator replay --speed max against redis, beside redis-benchmark on the
# same workload (issue 23): requests/s and the client's CPU per request.
#
# One recording: redis-benchmark (CONNECTIONS connections, REQUESTS requests
# of each of TESTS) through the proxy with --record-dir. Then RUNS times,
# each against a fresh redis: redis-benchmark alone, and the replay of the
# recording (the same sessions and requests) at --speed max with as many
# connections. CPU is the client process's user+system time (/usr/bin/time)
# over the requests it made; the replay's own loop thread is also shown
# (cpu_us_per_request of --json, without reading the captures).
#
# Usage: Benchmarks/replay.sh   (CONNECTIONS=50 REQUESTS=20000 RUNS=3 TESTS=ping,set,get)
set -euo pipefail
cd "$(dirname "$0")/.."
CONNECTIONS=${CONNECTIONS:-50}
REQUESTS=${REQUESTS:-20000}
RUNS=${RUNS:-3}
TESTS=${TESTS:-ping,set,get}
BIN=${BIN:-.build/release/duplicator}
[[ -x $BIN ]] || swift build -c release --product duplicator >/dev/null

work=$(mktemp -d /tmp/duplicator-replay-bench-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_redis() {  # sets REDIS_PORT (not in a subshell: its pid must reach the cleanup)
    local port; port=$(free_port)
    mkdir -p "$work/redis-$port"
    redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$work/redis-$port" \
        >"$work/redis-$port/log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do redis-cli -p "$port" PING >/dev/null 2>&1 && break; sleep 0.05; done
    REDIS_PORT=$port
}

# The recording.
start_redis
redis_port=$REDIS_PORT
proxy_port=$(free_port)
mkdir -p "$work/records"
"$BIN" -l "127.0.0.1:$proxy_port" -f "127.0.0.1:$redis_port" --record-dir "$work/records" --threads 1 \
    --max-memory 256MiB >"$work/proxy.log" 2>&1 &
proxy=$!
pids+=($proxy)
for _ in $(seq 100); do redis-cli -p "$proxy_port" PING >/dev/null 2>&1 && break; sleep 0.05; done
redis-benchmark -p "$proxy_port" -c "$CONNECTIONS" -n "$REQUESTS" -t "$TESTS" -q >/dev/null 2>&1
kill -INT $proxy
wait $proxy || true
echo "recorded: $(ls "$work/records" | wc -l) sessions, $(du -sh "$work/records" | cut -f1)"

printf '%-5s %-16s %12s %10s %14s\n' run client requests/s requests 'CPU us/request'
for run in $(seq "$RUNS"); do
    start_redis
    port=$REDIS_PORT
    /usr/bin/time -f '%U %S' -o "$work/time" \
        redis-benchmark -p "$port" -c "$CONNECTIONS" -n "$REQUESTS" -t "$TESTS" -q >"$work/bench.out" 2>&1
    # Each test's "N requests per second" line: the requests over the sum of the tests' times.
    read -r rps total < <(tr '\r' '\n' <"$work/bench.out" | awk '/requests per second/ {
        for (i = 1; i <= NF; i++) if ($i == "requests") { rate = $(i - 1); gsub(/[^0-9.]/, "", rate) }
        n += '"$REQUESTS"'; t += '"$REQUESTS"' / rate } END { printf "%.0f %d\n", n / t, n }')
    read -r user system <"$work/time"
    printf '%-5s %-16s %12s %10s %14.2f\n' "$run" redis-benchmark "$rps" "$total" \
        "$(python3 -c "print(($user + $system) * 1e6 / $total)")"
    redis-cli -p "$port" FLUSHALL >/dev/null
    /usr/bin/time -f '%U %S' -o "$work/time" \
        "$BIN" replay "$work/records" --target "127.0.0.1:$port" --speed max --connections "$CONNECTIONS" --compare --json \
        >"$work/replay.json" 2>"$work/replay.err"
    read -r user system <"$work/time"
    python3 - "$work/replay.json" "$user" "$system" "$run" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
cpu = (float(sys.argv[2]) + float(sys.argv[3])) * 1e6 / max(1, report["requests"])
print(f'{sys.argv[4]:<5} {"duplicator replay":<16} {report["requests_per_s"]:12.0f} {report["requests"]:10d} {cpu:14.2f}'
      f'   (loop thread {report["cpu_us_per_request"]:.2f}; {report["match"]}/{report["sessions"]} match; p50 {report["p50_us"]} us, p99 {report["p99_us"]} us)')
PY
done
