#!/usr/bin/env bash
# Counts, per io_uring completion, the mallocs, swift_retain and swift_release
# calls of a running proxy: the seed workload (10 connections x 1 KiB, one
# echo mirror) for a few seconds, with uprobes on libc's malloc and the Swift
# runtime, and the io_uring_complete tracepoint. Needs root and linux-perf.
#
#   Benchmarks/hot_loop_counts.sh [BIN_DIR] [SECONDS]     (default .build/release, 3)
set -euo pipefail
bin_dir=${1:-.build/release}
seconds=${2:-3}
command -v perf >/dev/null || { echo "hot_loop_counts.sh: perf is required (apt-get install linux-perf)" >&2; exit 2; }
libc=$(ldd "$bin_dir/duplicator" | awk '/libc\.so/ {print $3}')
swift_core=$(ldd "$bin_dir/duplicator" | awk '/libswiftCore\.so/ {print $3}')
[ -n "$libc" ] && [ -n "$swift_core" ] || { echo "hot_loop_counts.sh: cannot find libc or libswiftCore of $bin_dir/duplicator" >&2; exit 2; }
perf probe -q -x "$libc" -a malloc 2>/dev/null || true
perf probe -q -x "$swift_core" -a swift_retain -a swift_release 2>/dev/null || true

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
main_port=$(port); mirror_port=$(port); proxy_port=$(port)
"$bin_dir/duplicator-testserver" -l "127.0.0.1:$main_port" -q >"$work/log" 2>&1 & pids+=($!)
"$bin_dir/duplicator-testserver" -l "127.0.0.1:$mirror_port" -q >>"$work/log" 2>&1 & pids+=($!)
sleep 0.3
"$bin_dir/duplicator" run -l "127.0.0.1:$proxy_port" -f "127.0.0.1:$main_port" -m "127.0.0.1:$mirror_port" --threads 1 >>"$work/log" 2>&1 & proxy=$!
pids+=($proxy)
sleep 0.5
# A first short run opens the sessions' first connections; the counted run
# is the steady state of the next one's.
"$bin_dir/duplicator-testclient" -a "127.0.0.1:$proxy_port" -d 0.5 >/dev/null 2>&1
perf stat -x, -o "$work/counts" -e probe_libc:malloc,probe_libswiftCore:swift_retain,probe_libswiftCore:swift_release,io_uring:io_uring_complete -p "$proxy" &
stat=$!
sleep 0.2
"$bin_dir/duplicator-testclient" -a "127.0.0.1:$proxy_port" -d "$seconds" --json 2>/dev/null | head -c 80; echo
kill -INT "$stat"; wait "$stat" || true
python3 - "$work/counts" <<'PY'
import sys
counts = {}
for line in open(sys.argv[1]):
    fields = line.strip().split(",")
    if len(fields) > 2 and fields[0].replace(".", "").isdigit():
        counts[fields[2].split(":")[-1]] = float(fields[0])
completions = counts.get("io_uring_complete", 0)
print(f"completions {completions:.0f}")
for name in ["malloc", "swift_retain", "swift_release"]:
    value = counts.get(name, 0)
    print(f"{name:14s} {value:8.0f}  per completion {value / completions if completions else float('nan'):.4f}")
PY
