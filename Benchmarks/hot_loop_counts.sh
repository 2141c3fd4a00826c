#!/usr/bin/env bash
# Counts, per io_uring completion, the mallocs, swift_retain and swift_release
# calls of a running proxy: the seed workload (10 connections x 1 KiB, one
# echo mirror) for a few seconds, with uprobes on libc's malloc and the Swift
# runtime, and the io_uring_complete tracepoint. Needs root and linux-perf.
#
#   Benchmarks/hot_loop_counts.sh [BIN_DIR] [SECONDS]     (default .build/release, 3)
#   DUPLICATOR_ARGS='--compare' Benchmarks/hot_loop_counts.sh   (extra flags for the proxy)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin_dir=${1:-.build/release}
seconds=${2:-3}
command -v perf >/dev/null || { echo "hot_loop_counts.sh: perf is required (apt-get install linux-perf)" >&2; exit 2; }
# The library's own name in the first column: a plain /libc\.so/ also
# matches libswiftGlibc.so.
libc=$(ldd "$bin_dir/duplicator" | awk '$1 ~ /^libc\.so/ {print $3}')
swift_core=$(ldd "$bin_dir/duplicator" | awk '$1 ~ /^libswiftCore\.so/ {print $3}')
[ -n "$libc" ] && [ -n "$swift_core" ] || { echo "hot_loop_counts.sh: cannot find libc or libswiftCore of $bin_dir/duplicator" >&2; exit 2; }
# Add each probe unless an earlier run left it; any other failure stops here.
probes=$(perf probe -l 2>/dev/null || true)
add_probe() {  # group, library, function
    grep -q "probe_$1:$3 " <<<"$probes" && return
    perf probe -q -x "$2" -a "$3" || { echo "hot_loop_counts.sh: perf probe could not add $3 in $2" >&2; exit 2; }
}
add_probe libc "$libc" malloc
add_probe libswiftCore "$swift_core" swift_retain
add_probe libswiftCore "$swift_core" swift_release

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
main_port=$(port); mirror_port=$(port); proxy_port=$(port)
"$bin_dir/duplicator-testserver" -l "127.0.0.1:$main_port" -q >"$work/log" 2>&1 & pids+=($!)
"$bin_dir/duplicator-testserver" -l "127.0.0.1:$mirror_port" -q >>"$work/log" 2>&1 & pids+=($!)
sleep 0.3
"$bin_dir/duplicator" -l "127.0.0.1:$proxy_port" -f "127.0.0.1:$main_port" -m "127.0.0.1:$mirror_port" --threads 1 ${DUPLICATOR_ARGS:-} >>"$work/log" 2>&1 & proxy=$!
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
PYTHONPATH="$here" python3 - "$work/counts" <<'PY'
import sys
from perf_counts import read_counts
counts = read_counts(sys.argv[1], "hot_loop_counts.sh")
for name in ["io_uring_complete", "malloc", "swift_retain", "swift_release"]:
    if name not in counts:
        sys.exit(f"hot_loop_counts.sh: perf reported no count for {name}")
completions = counts["io_uring_complete"]
if completions == 0:
    sys.exit("hot_loop_counts.sh: no io_uring completion was counted")
print(f"completions {completions:.0f}")
for name in ["malloc", "swift_retain", "swift_release"]:
    value = counts[name]
    print(f"{name:14s} {value:8.0f}  per completion {value / completions:.4f}")
PY
