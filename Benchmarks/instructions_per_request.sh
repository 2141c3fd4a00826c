#!/usr/bin/env bash
# Instructions the proxy executes per request of the seed workload (10
# connections x 1 KiB ping-pong, echo main, one echo mirror unless MIRRORS=0),
# counted by callgrind: repeatable whatever else the machine does, unlike
# requests/s or CPU time. The counters are zeroed after a warm-up and dumped
# after a measured run, so start-up is not counted. Also counted: the calls of
# swift_beginAccess, Swift's run-time exclusivity checks.
#
#   Benchmarks/instructions_per_request.sh BIN [BIN...]    (each a duplicator binary)
#
# Env: SECONDS_MEASURED (default 6), MIRRORS (0 or 1, default 1), PROXY_ARGS
# (more arguments for each proxy, split on spaces: e.g. '--backend epoll'),
# RATE (open loop at this many requests/s over the 10 connections instead of
# closed-loop ping-pong: the proxy below saturation, each request on its own,
# as at a fixed rate on a machine with room; under callgrind the proxy runs
# some 50x slower, so a few hundred requests/s is "below saturation" there),
# THREADS (the proxy's --threads, default 1; "default" leaves it unset).
# Loopback only.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
tools=${TOOLS_DIR:-$here/../.build/release}
seconds=${SECONDS_MEASURED:-6}
mirrors=${MIRRORS:-1}
rate_args=()
[[ -n ${RATE:-} ]] && rate_args=(--rate "$RATE")
threads_args=(--threads "${THREADS:-1}")
[[ ${THREADS:-} == default ]] && threads_args=()
read -r -a proxy_args <<<"${PROXY_ARGS:-}"
command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || {
    echo "instructions_per_request.sh: valgrind is required (apt-get install valgrind)" >&2; exit 2; }
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
main_port=$(port); mirror_port=$(port)
"$tools/duplicator-testserver" -l "127.0.0.1:$main_port" -q >"$work/servers.log" 2>&1 & pids+=($!)
"$tools/duplicator-testserver" -l "127.0.0.1:$mirror_port" -q >>"$work/servers.log" 2>&1 & pids+=($!)
sleep 0.3
for bin in "$@"; do
    proxy_port=$(port)
    mirror_args=()
    [[ $mirrors == 1 ]] && mirror_args=(-m "127.0.0.1:$mirror_port")
    valgrind --tool=callgrind --callgrind-out-file="$work/cg.%p" \
        "$bin" -l "127.0.0.1:$proxy_port" -f "127.0.0.1:$main_port" "${mirror_args[@]}" "${threads_args[@]}" \
        "${proxy_args[@]}" >"$work/proxy.log" 2>&1 &
    proxy=$!
    for _ in $(seq 100); do python3 -c "import socket; socket.create_connection(('127.0.0.1', $proxy_port), 1)" 2>/dev/null && break; sleep 0.2; done
    timeout 60 "$tools/duplicator-testclient" -a "127.0.0.1:$proxy_port" -d 2 "${rate_args[@]}" >/dev/null 2>&1 || true
    callgrind_control -z "$proxy" >/dev/null
    requests=$(timeout 120 "$tools/duplicator-testclient" -a "127.0.0.1:$proxy_port" -d "$seconds" "${rate_args[@]}" --json 2>/dev/null \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["requests"])')
    callgrind_control -d "$proxy" >/dev/null
    kill -INT "$proxy"; wait "$proxy" 2>/dev/null || true
    read -r instructions accesses < <(python3 - "$work" "$proxy" <<'PY'
import glob, re, sys
# The dump taken after the measured run: the file with the highest part number.
files = sorted(glob.glob(f"{sys.argv[1]}/cg.{sys.argv[2]}.*"), key=lambda p: int(p.rsplit(".", 1)[1]))
total = 0
# Calls of swift_beginAccess: the run-time exclusivity checks (BENCHMARKS.md).
# Callgrind names a function once in full, "(id) name", then by "(id)".
names, callee, accesses = {}, "", 0
for line in open(files[-1]):
    if line.startswith("summary:") or line.startswith("totals:"):
        total = int(line.split()[1])
    elif line.startswith(("fn=", "cfn=")):
        text = line.split("=", 1)[1].strip()
        m = re.match(r"\((\d+)\)(?: (.*))?", text)
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
        if line.startswith("cfn="):
            callee = names.get(m.group(1), "") if m else text
    elif line.startswith("calls=") and callee == "swift_beginAccess":
        accesses += int(line[6:].split()[0])
print(total, accesses)
PY
)
    python3 -c "import sys; i, r, a = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[4]); r = max(r, 1); print(f'{sys.argv[3]}: {r} requests, {i} instructions, {i / r:.0f} per request, {a / r:.1f} swift_beginAccess calls per request')" \
        "$instructions" "$requests" "$bin" "$accesses"
    if [[ -n ${KEEP_DIR:-} ]]; then mkdir -p "$KEEP_DIR"; cp "$work"/cg.* "$KEEP_DIR/"; fi
    rm -f "$work"/cg.*
done
