#!/usr/bin/env bash
# What keeping a conversation's first turns (--mirror-turns) costs a
# pipelining protocol: redis-benchmark with -P pipelined commands through the
# proxy, with one mirror redis, kept turns on (default) and off, beside no
# mirror and a direct connection, in interleaved rounds. Also checks that the
# mirror processed as many commands as main (the mirror's stream is exact).
#
#   Benchmarks/pipelining.sh [-r ROUNDS] [-n REQUESTS] [-P PIPELINE] [-c CLIENTS]
#
# Needs redis-server and redis-benchmark (Debian: redis-server, redis-tools)
# and a release build (.build/release/duplicator, or $DUPLICATOR_BIN_DIR).
# Loopback only: ports 127.0.0.1:7401-7403.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
rounds=3 requests=200000 pipeline=16 clients=20
while getopts "r:n:P:c:h" option; do
    case "$option" in
        r) rounds=$OPTARG ;;
        n) requests=$OPTARG ;;
        P) pipeline=$OPTARG ;;
        c) clients=$OPTARG ;;
        *) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
    esac
done
bin="${DUPLICATOR_BIN_DIR:-$root/.build/release}/duplicator"
for tool in redis-server redis-benchmark redis-cli; do
    command -v "$tool" >/dev/null || { echo "pipelining.sh: $tool is missing (apt-get install redis-server redis-tools)" >&2; exit 2; }
done
[ -x "$bin" ] || { echo "pipelining.sh: no $bin (swift build -c release)" >&2; exit 2; }

work="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

start_redis() { # port
    redis-server --port "$1" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
        --dir "$work" --dbfilename "dump-$1.rdb" >"$work/redis-$1.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do redis-cli -p "$1" ping >/dev/null 2>&1 && return; sleep 0.1; done
    echo "pipelining.sh: redis on $1 did not start" >&2; exit 1
}
commands() { # port -> commands processed so far
    redis-cli -p "$1" info stats | sed -n 's/^total_commands_processed:\([0-9]*\).*/\1/p'
}
start_redis 7401
start_redis 7402

# Each configuration: a name and the proxy's arguments (empty: direct).
names=(direct none turns4 turns0)
declare -A args=(
    [direct]=""
    [none]="-l 127.0.0.1:7403 -f 127.0.0.1:7401"
    [turns4]="-l 127.0.0.1:7403 -f 127.0.0.1:7401 -m 127.0.0.1:7402"
    [turns0]="-l 127.0.0.1:7403 -f 127.0.0.1:7401 -m 127.0.0.1:7402 --mirror-turns 0"
)
declare -A results

run() { # name -> requests/s
    local name=$1 port=7403 proxy=""
    if [ -z "${args[$name]}" ]; then port=7401; else
        # shellcheck disable=SC2086
        "$bin" ${args[$name]} --log-level warning >"$work/proxy.log" 2>&1 &
        proxy=$!
        for _ in $(seq 50); do redis-cli -p 7403 ping >/dev/null 2>&1 && break; sleep 0.1; done
    fi
    local main_before mirror_before
    main_before=$(commands 7401); mirror_before=$(commands 7402)
    local rate
    rate=$(redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -n "$requests" -P "$pipeline" -t set,get -q --csv \
        | awk -F'"' '$2 != "test" { sum += $4; count++ } END { printf "%.0f", sum / count }')
    if [ -n "$proxy" ]; then
        kill -TERM "$proxy"; wait "$proxy" 2>/dev/null || true
    fi
    local main_done mirror_done
    sleep 0.2
    main_done=$(( $(commands 7401) - main_before )); mirror_done=$(( $(commands 7402) - mirror_before ))
    if [ "$name" = turns4 ] || [ "$name" = turns0 ]; then
        # Both counts include one INFO of this script's; everything else the
        # mirror processed came through the proxy, like main's.
        [ "$mirror_done" -eq "$main_done" ] || echo "  $name: the mirror processed $mirror_done commands, main $main_done" >&2
    fi
    echo "$rate"
}

for round in $(seq "$rounds"); do
    for name in "${names[@]}"; do
        rate=$(run "$name")
        results[$name]="${results[$name]:-} $rate"
        printf 'round %d %-7s %s requests/s\n' "$round" "$name" "$rate"
    done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
echo
echo "redis-benchmark -c $clients -n $requests -P $pipeline -t set,get, median of $rounds interleaved rounds (requests/s):"
for name in "${names[@]}"; do
    printf '  %-7s %s\n' "$name" "$(echo "${results[$name]}" | median)"
done
