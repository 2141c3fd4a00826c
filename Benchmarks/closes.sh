#!/usr/bin/env bash
# A connection per request, plaintext: wrk (-t1 -c10, `Connection: close`)
# through each proxy to a plain nginx main (one worker) that answers
# "hello" and closes, so every request is an accept, a connect to main, a
# request, a reply and both halves of a close (the FINs) in the proxy.
# duplicator with 0 and 1 mirror (a second nginx server), haproxy (mode tcp)
# and nginx's stream module side by side, one worker thread each; with
# DUPLICATOR_BEFORE=path that binary too (0 and 1 mirror). Per proxy and
# run: requests/s and the proxy's CPU per request (user + system of every
# thread it had, those that exited too: /proc/PID/stat).
# Usage: Benchmarks/closes.sh [runs] [seconds]   (defaults 3 and 5). Needs
# nginx with the stream module, haproxy, wrk and a release build (make
# release; or DUPLICATOR=path).
set -euo pipefail
runs=${1:-3}
seconds=${2:-5}
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
binary=${DUPLICATOR:-$here/.build/release/duplicator}
before=${DUPLICATOR_BEFORE:-}
[[ -x $binary ]] || { echo "closes.sh: build first: make release" >&2; exit 2; }
[[ -z $before || -x $before ]] || { echo "closes.sh: DUPLICATOR_BEFORE=$before is not an executable" >&2; exit 2; }
for tool in nginx haproxy wrk; do
    command -v "$tool" >/dev/null || { echo "closes.sh: $tool is required" >&2; exit 2; }
done
work=$(mktemp -d /tmp/duplicator-closes-XXXXXX)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

main=18680 mirror=18681 haproxy=18682 nginx=18683
declare -A ports=([duplicator]=18684 [duplicator-1-mirror]=18685 [before]=18686 [before-1-mirror]=18687)
modules=""
[[ -e /usr/lib/nginx/modules/ngx_stream_module.so ]] && modules="load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
common="worker_processes 1; daemon off; events { worker_connections 4096; }"
cat > "$work/servers.conf" <<EOF
$common
error_log $work/servers.log; pid $work/servers.pid;
http {
    access_log off; keepalive_timeout 0;
    client_body_temp_path $work/body; proxy_temp_path $work/proxy; fastcgi_temp_path $work/fastcgi;
    uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
    server { listen 127.0.0.1:$main; listen 127.0.0.1:$mirror; location / { return 200 "hello\n"; } }
}
EOF
# nginx's stream proxy in a process of its own, so that its CPU is its own.
cat > "$work/stream.conf" <<EOF
$modules
$common
error_log $work/stream.log; pid $work/stream.pid;
stream { server { listen 127.0.0.1:$nginx; proxy_pass 127.0.0.1:$main; } }
EOF
{ cat "$here/Benchmarks/Support/haproxy-one-thread.cfg"; cat <<EOF; } > "$work/haproxy.cfg"
listen plain
    bind 127.0.0.1:$haproxy
    server main 127.0.0.1:$main
EOF
nginx -p "$work" -c "$work/servers.conf" & pids+=($!)
nginx -p "$work" -c "$work/stream.conf" & pids+=($!)
haproxy -f "$work/haproxy.cfg" & pids+=($!)
proxies=(duplicator duplicator-1-mirror)
[[ -n $before ]] && proxies+=(before before-1-mirror)
for name in "${proxies[@]}"; do
    program=$binary
    [[ $name == before* ]] && program=$before
    mirrors=()
    [[ $name == *-1-mirror ]] && mirrors=(-m 127.0.0.1:$mirror)
    "$program" -l 127.0.0.1:${ports[$name]} -f 127.0.0.1:$main --threads 1 "${mirrors[@]}" 2>"$work/$name.log" & pids+=($!)
done
ports[haproxy]=$haproxy ports[nginx]=$nginx
proxies+=(haproxy nginx)
sleep 1

# The processes that listen on a port (nginx's master and worker): their CPU together.
pids_of() { ss -Htlnp "sport = :$1" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | tr '\n' ' '; }
cpu_ticks() { local total=0 pid; for pid in $1; do total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat"))); done; echo "$total"; }
ticks=$(getconf CLK_TCK)

echo "# date: $(date -u +%Y-%m-%dT%H:%MZ), $runs runs of ${seconds}s, wrk -t1 -c10 -H 'Connection: close'"
echo "# proxy run requests_per_s proxy_cpu_us_per_request"
for run in $(seq 1 "$runs"); do
    for name in "${proxies[@]}"; do
        watched=$(pids_of "${ports[$name]}")
        start=$(cpu_ticks "$watched")
        output=$(wrk -t1 -c10 -d"${seconds}s" -H "Connection: close" "http://127.0.0.1:${ports[$name]}/")
        end=$(cpu_ticks "$watched")
        requests=$(awk '/requests in/ { print $1 }' <<<"$output")
        errors=$(grep -E "Socket errors|Non-2xx" <<<"$output" | tr -s ' ' | tr '\n' ';' || true)
        awk -v name="$name" -v run="$run" -v rate="$(awk '/Requests\/sec/ { print $2 }' <<<"$output")" \
            -v t=$((end - start)) -v hz="$ticks" -v n="$requests" -v e="$errors" 'BEGIN {
                printf "%s %d %s %.1f%s\n", name, run, rate, n ? t / hz * 1e6 / n : 0, e == "" ? "" : " # " e }'
    done
done
