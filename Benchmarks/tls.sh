#!/usr/bin/env bash
# TLS termination side by side (issue 22): duplicator --tls-cert, haproxy
# `bind ... ssl` and nginx `stream { listen ... ssl }`, each terminating TLS
# 1.3 with the same ECDSA P-256 certificate in front of the same plain nginx
# (one worker), with wrk over HTTPS:
#   keep-alive   10 connections, requests/s
#   handshakes   10 connections, `Connection: close`: one handshake per request
# and each proxy's CPU (user + system, /proc/PID/stat) per request.
# Usage: Benchmarks/tls.sh [runs] [seconds]   (defaults 3 and 5); prints one
# line per (proxy, mode, run). Needs nginx with the stream module, haproxy,
# wrk, openssl and a release build (make release; or DUPLICATOR=path).
set -euo pipefail
runs=${1:-3}
seconds=${2:-5}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary=${DUPLICATOR:-$here/.build/release/duplicator}
[[ -x $binary ]] || { echo "tls.sh: build first: make release" >&2; exit 2; }
work=$(mktemp -d /tmp/duplicator-tls-bench-XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/key.pem" \
    -out "$work/cert.pem" -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/both.pem"
chmod 755 "$work"; chmod 644 "$work"/*.pem
main=18480 duplicator=18481 haproxy=18482 nginx=18483
nginx_modules=""
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] && nginx_modules="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
cat > "$work/nginx.conf" <<EOF
$nginx_modules
worker_processes 1;
daemon off;
error_log $work/nginx-error.log;
pid $work/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$main; location / { return 200 "hello\n"; } }
}
EOF
# nginx's stream proxy in a process of its own, so that its CPU is its own.
cat > "$work/nginx-stream.conf" <<EOF
$nginx_modules
worker_processes 1;
daemon off;
error_log $work/nginx-stream-error.log;
pid $work/nginx-stream.pid;
events { worker_connections 4096; }
stream {
    server {
        listen 127.0.0.1:$nginx ssl;
        ssl_certificate $work/cert.pem; ssl_certificate_key $work/key.pem;
        ssl_protocols TLSv1.3;
        proxy_pass 127.0.0.1:$main;
    }
}
EOF
cat > "$work/haproxy.cfg" <<EOF
global
    nbthread 1
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend tls
    bind 127.0.0.1:$haproxy ssl crt $work/both.pem ssl-min-ver TLSv1.3
    default_backend main
backend main
    server main 127.0.0.1:$main
EOF
nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
nginx -p "$work" -c "$work/nginx-stream.conf" & pids+=($!)
haproxy -f "$work/haproxy.cfg" & pids+=($!)
"$binary" -l 127.0.0.1:$duplicator -f 127.0.0.1:$main --threads 1 --tls-cert "$work/cert.pem" --tls-key "$work/key.pem" \
    2>"$work/duplicator.log" & pids+=($!)
sleep 1
# The processes that listen on a port (nginx's master and worker): their CPU together.
pids_of() { ss -Htlnp "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' '; }
cpu_ticks() { local total=0 pid; for pid in $1; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$total"; }
ticks=$(getconf CLK_TCK)
echo "# date: $(date -u +%Y-%m-%dT%H:%MZ), $runs runs of ${seconds}s, wrk -t1 -c10, TLS 1.3, ECDSA P-256"
echo "# proxy mode run requests_per_s proxy_cpu_us_per_request"
for run in $(seq 1 "$runs"); do
    for name in duplicator haproxy nginx; do
        port=${!name}
        pid=$(pids_of "$port")
        for mode in keep-alive handshakes; do
            header=()
            [[ $mode == handshakes ]] && header=(-H "Connection: close")
            before=$(cpu_ticks "$pid")
            output=$(wrk -t1 -c10 -d"${seconds}s" "${header[@]}" "https://127.0.0.1:$port/")
            after=$(cpu_ticks "$pid")
            requests=$(awk '/requests in/ { print $1 }' <<<"$output")
            rate=$(awk '/Requests\/sec/ { print $2 }' <<<"$output")
            cpu=$(awk -v t=$((after - before)) -v hz="$ticks" -v n="$requests" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
            note=$(grep -E "Socket errors|Non-2xx" <<<"$output" | tr -s ' ' | tr '\n' ';' || true)
            echo "$name $mode $run $rate $cpu${note:+ # $note}"
        done
    done
done
