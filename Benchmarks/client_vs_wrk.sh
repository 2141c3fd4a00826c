#!/usr/bin/env bash
# The load client's CPU per request beside wrk's, where they compare: each
# closed loop, one thread, 10 connections, 1 KiB each way over loopback,
# straight to a server (no proxy): duplicator-testclient against the echo
# server (1 KiB requests echoed), wrk against nginx serving a 1 KiB file over
# HTTP/1.1 keep-alive (a ~80-byte request, a ~1.3 KiB response). Client CPU
# is user + system time from /proc (wrk: its whole process) divided by the
# requests. Interleaved rounds; each line is one run.
#
#   Benchmarks/client_vs_wrk.sh [BIN_DIR] [ROUNDS] [SECONDS]   (default .build/release 3 4)
set -euo pipefail
bin_dir=${1:-.build/release}; rounds=${2:-3}; seconds=${3:-4}
command -v wrk >/dev/null && command -v nginx >/dev/null || { echo "client_vs_wrk.sh: wrk and nginx are required" >&2; exit 2; }
work=$(mktemp -d); pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo_port=$(port); http_port=$(port)
"$bin_dir/duplicator-testserver" -l "127.0.0.1:$echo_port" -q >"$work/echo.log" 2>&1 & pids+=($!)
mkdir -p "$work/www" "$work/logs"; head -c 1024 /dev/zero | tr '\0' x >"$work/www/k"
cat >"$work/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1; pid $work/nginx.pid; error_log $work/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000000;
  server { listen 127.0.0.1:$http_port; root $work/www; } }
CONF
nginx -p "$work" -c "$work/nginx.conf" -e "$work/logs/error.log" & pids+=($!)
sleep 0.5
for round in $(seq "$rounds"); do
    "$bin_dir/duplicator-testclient" -a "127.0.0.1:$echo_port" -p 10 -d "$seconds" --json 2>/dev/null \
        | python3 -c 'import json,sys; d=json.load(sys.stdin); print("round %s duplicator-testclient (%s): %s req/s, %.2f us CPU per request" % (sys.argv[1], d["backend"], format(d["rps"], ",.0f"), d["client_cpu_us_per_req"]))' "$round"
    # wrk's CPU: its rusage as a child of this one-line Python, user + system.
    python3 - "$http_port" "$seconds" "$round" <<'PY'
import re, resource, subprocess, sys
port, seconds, round_index = sys.argv[1], sys.argv[2], sys.argv[3]
out = subprocess.run(["wrk", "-t1", "-c10", f"-d{seconds}s", f"http://127.0.0.1:{port}/k"], capture_output=True, text=True).stdout
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
requests = int(re.search(r"(\d+) requests in", out).group(1))
print(f"round {round_index} wrk -t1 -c10: {requests / float(seconds):,.0f} req/s, "
      f"{(usage.ru_utime + usage.ru_stime) * 1e6 / max(requests, 1):.2f} us CPU per request")
PY
done
