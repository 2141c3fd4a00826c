#!/usr/bin/env bash
# TLS termination (issue 22), three scenarios, each proxy in front of a plain
# nginx (one worker), wrk over HTTPS, TLS 1.3 with one ECDSA P-256 certificate:
#   proxies  duplicator --tls-cert, haproxy `bind ... ssl` and nginx
#            `stream { listen ... ssl }` side by side: keep-alive (10
#            connections) and handshakes (`Connection: close`, one handshake
#            per request), requests/s and each proxy's CPU (user + system,
#            /proc/PID/stat) per request.
#   flood    a keep-alive client (1 connection) alone, then beside a flood of
#            new handshakes (50 connections, `Connection: close`): its
#            requests/s both times and the flood's. With DUPLICATOR_BEFORE=path
#            that binary too, in turn with DUPLICATOR in each run; and a
#            control: the flood through haproxy instead (the same load on
#            the machine, none of it in duplicator's loop).
#   mirror   duplicator's CPU per request (10 keep-alive connections) with 0
#            and 1 mirror (a second plain nginx server), over TLS and over
#            plaintext: what a mirror costs over each.
# Usage: Benchmarks/tls.sh [runs] [seconds] [scenarios]   (defaults 3, 5 and
# "proxies flood mirror"); prints one line per measurement. Needs nginx with
# the stream module, haproxy, wrk, openssl and a release build (make release;
# or DUPLICATOR=path).
set -euo pipefail
runs=${1:-3}
seconds=${2:-5}
scenarios=${3:-proxies flood mirror}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary=${DUPLICATOR:-$here/.build/release/duplicator}
[[ -x $binary ]] || { echo "tls.sh: build first: make release" >&2; exit 2; }
before=${DUPLICATOR_BEFORE:-}
[[ -z $before || -x $before ]] || { echo "tls.sh: DUPLICATOR_BEFORE=$before is not an executable" >&2; exit 2; }
work=$(mktemp -d /tmp/duplicator-tls-bench-XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$work/key.pem" \
    -out "$work/cert.pem" -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" 2>/dev/null
cat "$work/cert.pem" "$work/key.pem" > "$work/both.pem"
chmod 755 "$work"; chmod 644 "$work"/*.pem
main=18480 duplicator=18481 haproxy=18482 nginx=18483 mirror=18484 before_port=18485
plain=18486 plain_mirrored=18487 tls_mirrored=18488
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
    server { listen 127.0.0.1:$mirror; location / { return 200 "hello\n"; } }
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
{ cat "$here/Benchmarks/Support/haproxy-one-thread.cfg"; cat <<EOF; } > "$work/haproxy.cfg"
frontend tls
    bind 127.0.0.1:$haproxy ssl crt $work/both.pem ssl-min-ver TLSv1.3
    default_backend main
backend main
    server main 127.0.0.1:$main
EOF
nginx -p "$work" -c "$work/nginx.conf" & pids+=($!)
nginx -p "$work" -c "$work/nginx-stream.conf" & pids+=($!)
haproxy -f "$work/haproxy.cfg" & pids+=($!)
tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
# One worker each: the proxies' CPU is one thread's, as haproxy's and nginx's.
run_duplicator() {
    local program=$1 port=$2; shift 2
    "$program" -l 127.0.0.1:$port -f 127.0.0.1:$main --threads 1 "$@" 2>"$work/duplicator-$port.log" & pids+=($!)
}
run_duplicator "$binary" $duplicator "${tls[@]}"
[[ -n $before ]] && run_duplicator "$before" $before_port "${tls[@]}"
run_duplicator "$binary" $plain
run_duplicator "$binary" $plain_mirrored -m 127.0.0.1:$mirror
run_duplicator "$binary" $tls_mirrored -m 127.0.0.1:$mirror "${tls[@]}"
sleep 1
# The processes that listen on a port (nginx's master and worker): their CPU together.
pids_of() { ss -Htlnp "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' '; }
cpu_ticks() { local total=0 pid; for pid in $1; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$total"; }
ticks=$(getconf CLK_TCK)
rate_of() { awk '/Requests\/sec/ { print $2 }' <<<"$1"; }
errors_of() { grep -E "Socket errors|Non-2xx" <<<"$1" | tr -s ' ' | tr '\n' ';' || true; }
# wrk on `url` with `connections`, its output; the CPU per request of the processes `pid` in $cpu_us.
measure() {
    local pid=$1 url=$2 connections=$3; shift 3
    local start output end requests
    start=$(cpu_ticks "$pid")
    output=$(wrk -t1 -c"$connections" -d"${seconds}s" "$@" "$url")
    end=$(cpu_ticks "$pid")
    requests=$(awk '/requests in/ { print $1 }' <<<"$output")
    cpu_us=$(awk -v t=$((end - start)) -v hz="$ticks" -v n="$requests" 'BEGIN { printf "%.1f", n ? t / hz * 1e6 / n : 0 }')
    wrk_output=$output
}
echo "# date: $(date -u +%Y-%m-%dT%H:%MZ), $runs runs of ${seconds}s, scenarios: $scenarios, TLS 1.3, ECDSA P-256"

proxies() {
    echo "# proxies: proxy mode run requests_per_s proxy_cpu_us_per_request (wrk -t1 -c10)"
    local name port mode header note
    for name in duplicator haproxy nginx; do
        port=${!name}
        for mode in keep-alive handshakes; do
            header=()
            [[ $mode == handshakes ]] && header=(-H "Connection: close")
            measure "$(pids_of "$port")" "https://127.0.0.1:$port/" 10 "${header[@]}"
            note=$(errors_of "$wrk_output")
            echo "proxies $name $mode $run $(rate_of "$wrk_output") $cpu_us${note:+ # $note}"
        done
    done
}

flood() {
    echo "# flood: binary run keep_alive_alone_per_s keep_alive_during_flood_per_s ratio flood_handshakes_per_s"
    local name port flooded alone during flood_output ratio
    # control: the keep-alive client through duplicator, the flood through
    # haproxy: the same machine's load without the flood in duplicator's loop.
    local -a binaries=(after control)
    [[ -n $before ]] && binaries=(before after control)
    for name in "${binaries[@]}"; do
        port=$duplicator
        [[ $name == before ]] && port=$before_port
        flooded=$port
        [[ $name == control ]] && flooded=$haproxy
        measure "" "https://127.0.0.1:$port/" 1
        alone=$(rate_of "$wrk_output")
        wrk -t1 -c50 -d$((seconds + 2))s -H "Connection: close" "https://127.0.0.1:$flooded/" >"$work/flood.out" &
        local flooder=$!
        sleep 1
        measure "" "https://127.0.0.1:$port/" 1
        during=$(rate_of "$wrk_output")
        wait "$flooder"
        flood_output=$(cat "$work/flood.out")
        ratio=$(awk -v a="$alone" -v d="$during" 'BEGIN { printf "%.2f", (a > 0 ? d / a : 0) }')
        echo "flood $name $run $alone $during $ratio $(rate_of "$flood_output")"
    done
}

mirror() {
    echo "# mirror: transport mirrors run requests_per_s proxy_cpu_us_per_request (wrk -t1 -c10, keep-alive)"
    local transport mirrors port scheme note
    for transport in plaintext tls; do
        for mirrors in 0 1; do
            case $transport/$mirrors in
            plaintext/0) port=$plain scheme=http ;;
            plaintext/1) port=$plain_mirrored scheme=http ;;
            tls/0) port=$duplicator scheme=https ;;
            tls/1) port=$tls_mirrored scheme=https ;;
            esac
            measure "$(pids_of "$port")" "$scheme://127.0.0.1:$port/" 10
            note=$(errors_of "$wrk_output")
            echo "mirror $transport $mirrors $run $(rate_of "$wrk_output") $cpu_us${note:+ # $note}"
        done
    done
}

for run in $(seq 1 "$runs"); do
    for scenario in $scenarios; do "$scenario"; done
done
