#!/usr/bin/env bash
# What a mirror costs per request of the seed workload (10 connections x
# 1 KiB ping-pong, echo main, one echo mirror or none): per request, the
# proxy's system calls, context switches (wakeups), io_uring operations by
# opcode and completions, and the echo servers' system calls and context
# switches. Counted with perf (tracepoints), so the figures are counts, not
# times: repeatable on a noisy machine. Needs root and linux-perf.
#
#   Benchmarks/mirror_cost.sh [BIN_DIR] [SECONDS]        (default .build/release, 4)
#   DUPLICATOR_ARGS='--mirror-batch-bytes 0' Benchmarks/mirror_cost.sh   (extra proxy flags)
#   CLIENT_ARGS='-p 1000' Benchmarks/mirror_cost.sh      (extra client flags: the many workload)
#   CLIENT_ARGS='--rate 5000' MIRROR_COUNTS='0 1 4' THREADS=default Benchmarks/mirror_cost.sh
#       (open loop at a fixed rate, below saturation; 0, 1 and 4 mirrors; the proxy's
#        default worker count instead of --threads 1)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir=${1:-.build/release}
seconds=${2:-4}
command -v perf >/dev/null || { echo "mirror_cost.sh: perf is required (apt-get install linux-perf)" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
main_port=$(port)
"$bin_dir/duplicator-testserver" -l "127.0.0.1:$main_port" -q >"$work/log" 2>&1 & main=$!; pids+=($main)
# Four echo mirror servers; "mirror" below counts all of them together.
mirror_ports=(); mirror_pids=()
for _ in 1 2 3 4; do
    mirror_ports+=("$(port)")
    "$bin_dir/duplicator-testserver" -l "127.0.0.1:${mirror_ports[-1]}" -q >>"$work/log" 2>&1 & mirror_pids+=($!); pids+=($!)
done
mirror=$(IFS=,; echo "${mirror_pids[*]}")
mirror_counts=${MIRROR_COUNTS:-0 1}
threads_args=(--threads "${THREADS:-1}")
[[ ${THREADS:-} == default ]] && threads_args=()
sleep 0.3
events=raw_syscalls:sys_enter,context-switches,task-clock
for mirrors in $mirror_counts; do
    proxy_port=$(port)
    mirror_args=()
    for index in $(seq 0 $((mirrors - 1))); do mirror_args+=(-m "127.0.0.1:${mirror_ports[$index]}"); done
    "$bin_dir/duplicator" -l "127.0.0.1:$proxy_port" -f "127.0.0.1:$main_port" "${mirror_args[@]}" "${threads_args[@]}" \
        ${DUPLICATOR_ARGS:-} >>"$work/log" 2>&1 & proxy=$!
    sleep 0.5
    # A first short run opens the sessions; the counted run is the next one's steady state.
    "$bin_dir/duplicator-testclient" -a "127.0.0.1:$proxy_port" -d 0.5 ${CLIENT_ARGS:-} >/dev/null 2>&1
    perf stat -x, -o "$work/proxy.$mirrors" -e "$events,io_uring:io_uring_complete,io_uring:io_uring_submit_req" -p "$proxy" & s1=$!
    perf stat -x, -o "$work/main.$mirrors" -e "$events" -p "$main" & s2=$!
    perf stat -x, -o "$work/mirror.$mirrors" -e "$events" -p "$mirror" & s3=$!
    perf record -q -m 16M -o "$work/ops.$mirrors" -e io_uring:io_uring_submit_req -p "$proxy" 2>/dev/null & s4=$!
    sleep 0.3
    "$bin_dir/duplicator-testclient" -a "127.0.0.1:$proxy_port" -d "$seconds" ${CLIENT_ARGS:-} --json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["requests"])' >"$work/requests.$mirrors"
    kill -INT $s1 $s2 $s3 $s4; wait $s1 $s2 $s3 $s4 2>/dev/null || true
    perf script -i "$work/ops.$mirrors" -F trace 2>/dev/null | sed -n 's/.*opcode \([A-Z_]*\).*/\1/p' | sort | uniq -c >"$work/opcodes.$mirrors"
    kill -TERM "$proxy"; wait "$proxy" 2>/dev/null || true
done
PYTHONPATH="$here" python3 - "$work" $mirror_counts <<'PY'
import sys
from perf_counts import read_counts
work, counts_of_mirrors = sys.argv[1], sys.argv[2:]
def counts(path):
    return read_counts(path, "mirror_cost.sh")
rows = []
for mirrors in counts_of_mirrors:
    requests = float(open(f"{work}/requests.{mirrors}").read())
    row = {"requests": requests}
    for who in ("proxy", "main", "mirror"):
        for name, value in counts(f"{work}/{who}.{mirrors}").items():
            row[f"{who} {name}"] = value / requests
    # The opcodes' shares from the recording (which may lose events at
    # high rates), scaled to the exact count of submissions.
    opcodes = [line.split() for line in open(f"{work}/opcodes.{mirrors}")]
    recorded = sum(float(count) for count, _ in opcodes) or 1.0
    for count, opcode in opcodes:
        row[f"proxy SQE {opcode}"] = row["proxy io_uring_submit_req"] * float(count) / recorded
    rows.append(row)
names = sorted(set().union(*rows), key=lambda n: (n != "requests", n))
print(f"{'per request':42}" + "".join(f"{m + (' mirror' if m == '1' else ' mirrors'):>12}" for m in counts_of_mirrors))
for name in names:
    values = [row.get(name, 0.0) for row in rows]
    if name == "requests":
        print(f"{'requests counted':42}" + "".join(f"{v:12.0f}" for v in values))
    elif name.endswith("task-clock"):
        print(f"{name.replace('task-clock', 'CPU us'):42}" + "".join(f"{v * 1000:12.2f}" for v in values))
    else:
        print(f"{name:42}" + "".join(f"{v:12.3f}" for v in values))
PY
