#!/usr/bin/env bash
# Soak test of the release `duplicator` binary: load, connection churn and
# broken mirrors for a while, on loopback only; then a verdict on whether the
# proxy's memory and descriptors stayed flat and the client never saw an error.
#
# Usage:
#   swift build -c release --scratch-path .build-soak
#   scripts/soak.sh [--stalled-readers N] [--slow-readers N] [BIN_DIR] [DURATION_SECONDS]
#
#   --stalled-readers N  hostile clients beside the load: each sends a 1 MiB request
#                        (echoed by main) and never reads (default: $STALLED_READERS or 200)
#   --slow-readers N     the same request, then 4 KiB read every 125 ms (default: $SLOW_READERS or 200)
#                        Both run as `duplicator-testclient --hostile` in HOSTILE_CHUNK_S runs,
#                        so their sessions end and begin again; 0 turns them off.
#   BIN_DIR            holds duplicator, duplicator-testserver, duplicator-testclient
#                      (default: .build-soak/release)
#   DURATION_SECONDS   the whole run, load and idle tail (default: 600)
#
# Knobs (environment):
#   OUT_DIR=DIR          where samples.csv, the logs and verdict.txt go (default: a new /tmp/duplicator-soak.*)
#   SAMPLE_S=10          seconds between samples
#   WARMUP_S=60          load seconds excluded before the "early" window
#   WINDOW_S=60          length of the "early" and "late" windows compared
#   IDLE_TAIL_S=40       seconds without load at the end (descriptors must be back to baseline)
#   CHUNK_S=20           duration of each closed-loop client run (connections churn between runs)
#   CONNECTIONS=50 SIZE=1024   the closed-loop client's -p and -s
#   CHURN_RATE=10        short connections per second (connect, send a line, read it back, close)
#   BULK_EVERY_S=60      a bulk client (64 KiB messages, 4 connections, 5 s) this often
#   FLAP_UP_S=12 FLAP_DOWN_S=8   the flapping mirror's up and down times
#   RSS_TOLERANCE_KIB=4096       late-vs-early RSS growth allowed (median of each window)
#   FD_TOLERANCE=0               idle-tail descriptors allowed above the idle baseline
#   HOSTILE_CHUNK_S=60   how long each run of stalled or slow readers holds its connections
#   HOSTILE_REQUEST_BYTES=1048576  the stalled and slow readers' request (and echoed reply)
#
# Topology (all 127.0.0.1):
#   client load -> duplicator -> main: testserver --mode echo
#                             -> mirror 1: testserver --mode echo (healthy)
#                             -> mirror 2: testserver --mode stall (accepts, never reads)
#                             -> mirror 3: testserver --mode echo on a fixed port, killed and
#                                restarted every FLAP_UP_S+FLAP_DOWN_S seconds (refused while down)
#                             -> mirror 4: testserver --mode blackhole (connects never complete)
#   stalled and slow readers -> duplicator (the same proxy, beside the load above)
#
# Every SAMPLE_S seconds: the proxy's VmRSS, its descriptor count and its
# /metrics (sessions, per-mirror counters), one printed line and one CSV row.
# Exit status: 0 when flat and error-free, 1 when a check failed, 2 on a setup error.
set -euo pipefail

STALLED_READERS=${STALLED_READERS:-200}
SLOW_READERS=${SLOW_READERS:-200}
while (($#)); do
    case $1 in
        --stalled-readers) STALLED_READERS=${2:?--stalled-readers needs a number}; shift 2 ;;
        --slow-readers) SLOW_READERS=${2:?--slow-readers needs a number}; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; break ;;
        -*) echo "soak: unknown flag $1 (see --help)" >&2; exit 2 ;;
        *) break ;;
    esac
done
BIN_DIR=${1:-.build-soak/release}
DURATION_S=${2:-600}
SAMPLE_S=${SAMPLE_S:-10}
WARMUP_S=${WARMUP_S:-60}
WINDOW_S=${WINDOW_S:-60}
IDLE_TAIL_S=${IDLE_TAIL_S:-40}
CHUNK_S=${CHUNK_S:-20}
CONNECTIONS=${CONNECTIONS:-50}
SIZE=${SIZE:-1024}
CHURN_RATE=${CHURN_RATE:-10}
BULK_EVERY_S=${BULK_EVERY_S:-60}
FLAP_UP_S=${FLAP_UP_S:-12}
FLAP_DOWN_S=${FLAP_DOWN_S:-8}
RSS_TOLERANCE_KIB=${RSS_TOLERANCE_KIB:-4096}
FD_TOLERANCE=${FD_TOLERANCE:-0}
HOSTILE_CHUNK_S=${HOSTILE_CHUNK_S:-60}
HOSTILE_REQUEST_BYTES=${HOSTILE_REQUEST_BYTES:-1048576}

die() { echo "soak: $*" >&2; exit 2; }
for tool in duplicator duplicator-testserver duplicator-testclient; do
    [[ -x $BIN_DIR/$tool ]] || die "$BIN_DIR/$tool not found (build with: swift build -c release --scratch-path .build-soak)"
done
for tool in python3 curl timeout; do command -v "$tool" >/dev/null || die "$tool is needed"; done
[[ $DURATION_S =~ ^[0-9]+$ ]] || die "DURATION_SECONDS must be a whole number of seconds"
[[ $STALLED_READERS =~ ^[0-9]+$ && $SLOW_READERS =~ ^[0-9]+$ ]] || die "--stalled-readers and --slow-readers take a whole number"
LOAD_S=$((DURATION_S - IDLE_TAIL_S))
((LOAD_S >= WARMUP_S + 2 * WINDOW_S)) || die "DURATION_SECONDS too short: needs IDLE_TAIL_S + WARMUP_S + 2*WINDOW_S = $((IDLE_TAIL_S + WARMUP_S + 2 * WINDOW_S))"
BIN_DIR=$(cd "$BIN_DIR" && pwd)
OUT_DIR=${OUT_DIR:-$(mktemp -d /tmp/duplicator-soak.XXXXXX)}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
CSV=$OUT_DIR/samples.csv

now() { echo "$EPOCHREALTIME"; }
elapsed() { python3 -c "import sys; print(int(float(sys.argv[1]) - float(sys.argv[2])))" "$(now)" "$1"; }

# ---------------------------------------------------------------- python helpers

read -r -d '' PY_PORTS <<'PY' || true
# N free TCP ports on 127.0.0.1 below the ephemeral range: a mirror port that is
# sometimes closed must not be one the kernel can pick as a source port (a
# connect to it could then connect to itself).
import random, socket, sys
count = int(sys.argv[1])
low, high = 20000, 32000
with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
    ephemeral_low = int(f.read().split()[0])
high = min(high, ephemeral_low)
ports = set()
rng = random.Random()
while len(ports) < count:
    port = rng.randrange(low, high)
    if port in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
        ports.add(port)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, sorted(ports))))
PY

read -r -d '' PY_CHURN <<'PY' || true
# Short connections at a steady rate until the deadline: connect, send a line,
# read it back, close. Every 4th half-closes first and reads to EOF; every 10th
# ends with a reset (SO_LINGER 0) once it has its reply. Writes one JSON line.
import json, socket, struct, sys, time
port, rate, deadline, out = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
ok = errors = 0
first_error = None
index = 0
next_at = time.time()
while time.time() < deadline:
    index += 1
    line = b"churn %d %s\n" % (index, b"x" * (index % 200))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            s.sendall(line)
            half_close = index % 4 == 0
            if half_close:
                s.shutdown(socket.SHUT_WR)
            got = b""
            while len(got) < len(line) or half_close:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            if got != line:
                raise RuntimeError("reply %r != %r" % (got[:60], line[:60]))
            if index % 10 == 0:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ok += 1
    except Exception as e:  # any failure of the main path counts
        errors += 1
        if first_error is None:
            first_error = "%s at %.0f" % (e, time.time())
    next_at += 1.0 / rate
    pause = next_at - time.time()
    if pause > 0:
        time.sleep(pause)
    else:
        next_at = time.time()
with open(out, "w") as f:
    json.dump({"ok": ok, "errors": errors, "first_error": first_error}, f)
    f.write("\n")
PY

read -r -d '' PY_PROBE <<'PY' || true
# One exchange through the proxy: exit 0 when the line comes back intact.
import socket, sys
line = b"still answering?\n"
try:
    with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5) as s:
        s.settimeout(5)
        s.sendall(line)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    sys.exit(0 if got == line else 1)
except Exception as e:
    print("probe: %s" % e, file=sys.stderr)
    sys.exit(1)
PY

read -r -d '' PY_VERDICT <<'PY' || true
import csv, glob, json, os, statistics, sys
out_dir = sys.argv[1]
load_s, warmup_s, window_s = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rss_tol, fd_tol = int(sys.argv[5]), int(sys.argv[6])
probe_ok, term_status = sys.argv[7] == "0", sys.argv[8]
flap_up_s = int(sys.argv[9])
rows = list(csv.DictReader(open(os.path.join(out_dir, "samples.csv"))))
for r in rows:
    for k, v in r.items():
        if k != "phase":
            r[k] = int(float(v)) if v not in ("", None) else -1
baseline = [r for r in rows if r["phase"] == "baseline"]
load = [r for r in rows if r["phase"] == "load"]
tail = [r for r in rows if r["phase"] == "idle"]
early = [r for r in load if warmup_s <= r["t_s"] < warmup_s + window_s]
late = [r for r in load if load_s - window_s <= r["t_s"] < load_s]
settled = tail[1:] if len(tail) > 1 else tail  # first idle sample may catch lingering mirrors
checks, notes = [], []
def check(ok, text):
    checks.append((bool(ok), text))
def med(rs, key):
    return statistics.median(r[key] for r in rs) if rs else float("nan")

if not (baseline and early and late and settled):
    check(False, "samples: baseline %d, early %d, late %d, idle %d (each must be > 0)"
          % (len(baseline), len(early), len(late), len(settled)))
else:
    rss_early, rss_late = med(early, "rss_kib"), med(late, "rss_kib")
    rss_max = max(r["rss_kib"] for r in load if r["t_s"] >= warmup_s)
    rss_idle = settled[-1]["rss_kib"]
    check(rss_late - rss_early <= rss_tol,
          "RSS flat under load: early median %.1f MiB, late median %.1f MiB, growth %+.0f KiB (tolerance %d KiB); max after warm-up %.1f MiB"
          % (rss_early / 1024, rss_late / 1024, rss_late - rss_early, rss_tol, rss_max / 1024))
    check(rss_idle - rss_early <= rss_tol,
          "RSS when idle at the end %.1f MiB vs early-load median %.1f MiB (growth %+.0f KiB, tolerance %d KiB); idle baseline before load %.1f MiB"
          % (rss_idle / 1024, rss_early / 1024, rss_idle - rss_early, rss_tol, baseline[-1]["rss_kib"] / 1024))
    # Least-squares slope of RSS after warm-up, for the record.
    pts = [(r["t_s"], r["rss_kib"]) for r in load if r["t_s"] >= warmup_s]
    if len(pts) >= 2:
        mt = statistics.mean(t for t, _ in pts); mv = statistics.mean(v for _, v in pts)
        den = sum((t - mt) ** 2 for t, _ in pts)
        slope = sum((t - mt) * (v - mv) for t, v in pts) / den * 60 if den else 0.0
        notes.append("RSS trend after warm-up: %+.1f KiB/min over %d samples" % (slope, len(pts)))
    fd_base = baseline[-1]["fds"]
    fd_idle = [r["fds"] for r in settled]
    check(all(f - fd_base <= fd_tol for f in fd_idle) and all(f >= 0 for f in fd_idle),
          "descriptors back to baseline when idle: baseline %d, idle tail %s (tolerance %d)" % (fd_base, fd_idle, fd_tol))
    notes.append("descriptors under load: early median %.0f, late median %.0f, max %d"
                 % (med(early, "fds"), med(late, "fds"), max(r["fds"] for r in load)))
    notes.append("sessions active under load: early median %.0f, late median %.0f, max %d"
                 % (med(early, "active"), med(late, "active"), max(r["active"] for r in load)))
    check(all(r["active"] == 0 for r in settled), "sessions active when idle: %s" % [r["active"] for r in settled])
    check(all(r["pool_in_use"] == 0 for r in settled), "pool slots in use when idle: %s" % [r["pool_in_use"] for r in settled])

# Client results.
chunks = [json.loads(l) for f in sorted(glob.glob(os.path.join(out_dir, "load-*.json"))) for l in open(f) if l.startswith("{")]
chunk_files = len(glob.glob(os.path.join(out_dir, "load-*.json")))
load_errors = sum(int(c["errors"]) for c in chunks)
requests = sum(int(c["requests"]) for c in chunks)
short = [c for c in chunks if int(c["connections_established"]) != int(c["connections"])]
check(chunks and len(chunks) == chunk_files and load_errors == 0 and not short,
      "closed-loop client: %d runs (%d files), %d requests, %d errors, %d runs with connections missing%s"
      % (len(chunks), chunk_files, requests, load_errors, len(short),
         "".join("; first error: " + c["first_error"] for c in chunks if c.get("first_error"))[:300]))
rates = [float(c["rps"]) for c in chunks]
if rates:
    notes.append("closed-loop client requests/s per run: min %.0f, median %.0f, max %.0f"
                 % (min(rates), statistics.median(rates), max(rates)))
check(all(int(c["requests"]) > 0 for c in chunks),
      "closed-loop client: every run completed requests (%d of %d runs with none)"
      % (sum(1 for c in chunks if int(c["requests"]) == 0), len(chunks)))
for kind, wanted in (("stall", int(sys.argv[10])), ("slow-read", int(sys.argv[11]))):
    files = sorted(glob.glob(os.path.join(out_dir, "hostile-%s-*.json" % kind)))
    runs = [json.loads(l) for f in files for l in open(f) if l.startswith("{")]
    if wanted == 0:
        continue
    opened = sum(int(r["opened"]) for r in runs)
    notes.append("%s readers: %d runs of %d connections; opened %d, refused %d, connect failures %d, reset %d, "
                 "closed by the proxy %d, still connecting at the end %d; received %d bytes"
                 % (kind, len(runs), wanted, opened, sum(int(r["refused"]) for r in runs),
                    sum(int(r["connect_failures"]) for r in runs), sum(int(r["reset"]) for r in runs),
                    sum(int(r["closed_by_peer"]) for r in runs), sum(int(r["connecting_at_end"]) for r in runs),
                    sum(int(r["bytes_received"]) for r in runs)))
    check(runs and len(runs) == len(files) and opened > 0,
          "%s readers ran beside the load: %d runs (%d files), %d connections opened" % (kind, len(runs), len(files), opened))
bulks = [json.loads(l) for f in sorted(glob.glob(os.path.join(out_dir, "bulk-*.json"))) for l in open(f) if l.startswith("{")]
bulk_files = len(glob.glob(os.path.join(out_dir, "bulk-*.json")))
bulk_errors = sum(int(c["errors"]) for c in bulks)
check(len(bulks) == bulk_files and bulk_errors == 0,
      "bulk client (64 KiB): %d runs, %d requests, %d errors" % (len(bulks), sum(int(c["requests"]) for c in bulks), bulk_errors))
try:
    churn = json.load(open(os.path.join(out_dir, "churn.json")))
    check(churn["errors"] == 0 and churn["ok"] > 0,
          "churn: %d short connections ok, %d errors%s" % (churn["ok"], churn["errors"],
          "; first: " + churn["first_error"] if churn["first_error"] else ""))
except (OSError, ValueError) as e:
    check(False, "churn: no result (%s)" % e)
check(probe_ok, "proxy still answers a fresh connection at the end")
check(term_status == "0", "proxy exit status after SIGTERM: %s" % term_status)

# Mirrors, from the last sample.
if rows:
    last = rows[-1]
    names = ["healthy", "stall", "flap", "blackhole"]
    for i, n in enumerate(names, 1):
        notes.append("mirror %d %-9s: mirrored %d, lag cuts %d, connect failures %d, timeouts %d, errors %d, skipped (backing off) %d"
                     % (i, n, last["m%d_sessions" % i], last["m%d_lag_cuts" % i], last["m%d_connect_failures" % i],
                        last["m%d_connect_timeouts" % i], last["m%d_errors" % i], last["m%d_skipped" % i]))
    notes.append("sessions accepted %d; ended: completed %d, client error %d, main error %d, main connect failure %d, aborted %d; rejected %d; accept errors %d; pool exhausted %d"
                 % (last["accepted"], last["completed"], last["client_error"], last["main_error"],
                    last["main_connect_failure"], last["aborted"], last["rejected"], last["accept_errors"], last["pool_exhausted"]))
    check(last["main_error"] == 0 and last["main_connect_failure"] == 0,
          "main path failures seen by the proxy: main error %d, main connect failure %d" % (last["main_error"], last["main_connect_failure"]))
    check(last["m2_lag_cuts"] + last["m2_errors"] > 0 and last["m4_connect_timeouts"] > 0 and last["m3_connect_failures"] > 0,
          "faults were exercised: stall mirror cut %d times, blackhole timed out %d times, flapping mirror refused %d times"
          % (last["m2_lag_cuts"] + last["m2_errors"], last["m4_connect_timeouts"], last["m3_connect_failures"]))
    # The flapping mirror comes back after each restart: sessions mirrored to it grow
    # between the last sample before it came up and the first sample after its up time.
    ups = [float(l.split()[1]) for l in open(os.path.join(out_dir, "flap-events.log")) if l.startswith("up ")]
    recovered = considered = 0
    for up in ups:
        before = [r for r in rows if r["t_s"] <= up]
        after = [r for r in rows if r["t_s"] >= up + flap_up_s and r["phase"] == "load"]
        if not before or not after or up <= 0:
            continue
        considered += 1
        if after[0]["m3_sessions"] > before[-1]["m3_sessions"]:
            recovered += 1
    check(considered == 0 or recovered >= 0.8 * considered,
          "flapping mirror recovered (mirrored again) after %d of %d restarts" % (recovered, considered))

failed = [t for ok, t in checks if not ok]
with open(os.path.join(out_dir, "verdict.txt"), "w") as f:
    for ok, t in checks:
        line = ("PASS " if ok else "FAIL ") + t
        print(line); f.write(line + "\n")
    for n in notes:
        print("     " + n); f.write("     " + n + "\n")
    v = "VERDICT: %s (%d checks, %d failed)" % ("FLAT" if not failed else "NOT FLAT", len(checks), len(failed))
    print(v); f.write(v + "\n")
sys.exit(1 if failed else 0)
PY

# ---------------------------------------------------------------- processes

PIDS=()          # everything started here, killed by id on exit
cleanup() {
    local pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    [[ -f $OUT_DIR/flap.pid ]] && kill -TERM "$(cat "$OUT_DIR/flap.pid")" 2>/dev/null || true
    sleep 1
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    [[ -f $OUT_DIR/flap.pid ]] && kill -KILL "$(cat "$OUT_DIR/flap.pid")" 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'echo "soak: interrupted" >&2; exit 1' INT TERM

read -r MAIN_PORT HEALTHY_PORT STALL_PORT FLAP_PORT BLACKHOLE_PORT PROXY_PORT METRICS_PORT <<<"$(python3 -c "$PY_PORTS" 7)"

server() {  # server MODE PORT LOGNAME
    "$BIN_DIR/duplicator-testserver" -l "127.0.0.1:$2" --mode "$1" -q >>"$OUT_DIR/$3.log" 2>&1 &
    PIDS+=($!)
}
server echo "$MAIN_PORT" main
server echo "$HEALTHY_PORT" mirror-healthy
server stall "$STALL_PORT" mirror-stall
server blackhole "$BLACKHOLE_PORT" mirror-blackhole

wait_port() {  # wait_port PORT SECONDS
    local deadline=$((SECONDS + $2))
    while ((SECONDS < deadline)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.2
    done
    return 1
}
for port in "$MAIN_PORT" "$HEALTHY_PORT" "$STALL_PORT"; do wait_port "$port" 10 || die "a test server did not start on $port"; done
sleep 0.5  # the blackhole server fills its accept queue; do not connect to it

# The flapping mirror: up FLAP_UP_S, killed (alternately SIGTERM and SIGKILL), down FLAP_DOWN_S, again.
flap_loop() {
    local child="" sleeper="" round=0 signal
    trap 'kill -TERM $child $sleeper 2>/dev/null; rm -f "$OUT_DIR/flap.pid"; exit 0' TERM
    while :; do
        "$BIN_DIR/duplicator-testserver" -l "127.0.0.1:$FLAP_PORT" --mode echo -q >>"$OUT_DIR/mirror-flap.log" 2>&1 &
        child=$!
        echo "$child" >"$OUT_DIR/flap.pid"
        echo "up $(elapsed "$LOAD_START")" >>"$OUT_DIR/flap-events.log"
        sleep "$FLAP_UP_S" & sleeper=$!; wait "$sleeper"
        signal=$([[ $((round % 2)) == 0 ]] && echo TERM || echo KILL)
        kill -"$signal" "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
        echo "down $(elapsed "$LOAD_START") $signal" >>"$OUT_DIR/flap-events.log"
        child=""
        round=$((round + 1))
        sleep "$FLAP_DOWN_S" & sleeper=$!; wait "$sleeper"
    done
}

"$BIN_DIR/duplicator" -l "127.0.0.1:$PROXY_PORT" -f "127.0.0.1:$MAIN_PORT" \
    -m "127.0.0.1:$HEALTHY_PORT" -m "127.0.0.1:$STALL_PORT" -m "127.0.0.1:$FLAP_PORT" -m "127.0.0.1:$BLACKHOLE_PORT" \
    --metrics "127.0.0.1:$METRICS_PORT" --stats-interval 60s --log-level info >"$OUT_DIR/proxy.log" 2>&1 &
PROXY_PID=$!
PIDS+=("$PROXY_PID")
deadline=$((SECONDS + 20))
until curl -sf -m 2 "http://127.0.0.1:$METRICS_PORT/metrics" >/dev/null; do
    kill -0 "$PROXY_PID" 2>/dev/null || { cat "$OUT_DIR/proxy.log" >&2; die "the proxy exited"; }
    ((SECONDS < deadline)) || die "the proxy's metrics did not answer in 20 s"
    sleep 0.2
done
wait_port "$PROXY_PORT" 10 || die "the proxy does not listen on $PROXY_PORT"

echo "soak: $DURATION_S s ($LOAD_S s load, $IDLE_TAIL_S s idle), proxy pid $PROXY_PID on 127.0.0.1:$PROXY_PORT, output in $OUT_DIR"
echo "soak: beside the load: $STALLED_READERS stalled readers, $SLOW_READERS slow readers ($HOSTILE_REQUEST_BYTES-byte requests, runs of $HOSTILE_CHUNK_S s)"
echo "soak: main :$MAIN_PORT, mirrors healthy :$HEALTHY_PORT, stall :$STALL_PORT, flap :$FLAP_PORT, blackhole :$BLACKHOLE_PORT, metrics :$METRICS_PORT"

# ---------------------------------------------------------------- sampling

MIRRORS=("127.0.0.1:$HEALTHY_PORT" "127.0.0.1:$STALL_PORT" "127.0.0.1:$FLAP_PORT" "127.0.0.1:$BLACKHOLE_PORT")
header="t_s,phase,rss_kib,fds,active,accepted,completed,client_error,main_error,main_connect_failure,aborted,rejected,accept_errors,pool_in_use,pool_exhausted"
for i in 1 2 3 4; do
    header+=",m${i}_sessions,m${i}_lag_cuts,m${i}_connect_failures,m${i}_connect_timeouts,m${i}_errors,m${i}_skipped,m${i}_backing_off"
done
echo "$header" >"$CSV"

sample() {  # sample T PHASE
    local rss fds metrics
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status" 2>/dev/null || echo -1)
    fds=$(ls "/proc/$PROXY_PID/fd" 2>/dev/null | wc -l)
    metrics=$(curl -sf -m 5 "http://127.0.0.1:$METRICS_PORT/metrics" || true)
    awk -v t="$1" -v phase="$2" -v rss="${rss:--1}" -v fds="$fds" -v names="${MIRRORS[*]}" '
        BEGIN { n = split(names, mirror, " ") }
        /^#/ { next }
        {
            key = $1; value = $2
            if (match(key, /mirror="[^"]*"/)) {
                label = substr(key, RSTART + 8, RLENGTH - 9)
                sub(/\{.*/, "", key)
                for (i = 1; i <= n; i++) if (mirror[i] == label) m[i, key] = value
            } else {
                v[key] = value
            }
        }
        function g(k) { return (k in v) ? v[k] : -1 }
        function gm(i, k) { return ((i, k) in m) ? m[i, k] : -1 }
        END {
            row = t "," phase "," rss "," fds "," g("duplicator_sessions_active") "," g("duplicator_sessions_accepted_total")
            row = row "," g("duplicator_sessions_ended_total{cause=\"completed\"}") "," g("duplicator_sessions_ended_total{cause=\"client_error\"}")
            row = row "," g("duplicator_sessions_ended_total{cause=\"main_error\"}") "," g("duplicator_sessions_ended_total{cause=\"main_connect_failure\"}")
            row = row "," g("duplicator_sessions_ended_total{cause=\"aborted\"}") "," g("duplicator_sessions_rejected_total")
            row = row "," g("duplicator_accept_errors_total") "," g("duplicator_pool_slots_in_use") "," g("duplicator_pool_exhausted_total")
            for (i = 1; i <= n; i++) {
                row = row "," gm(i, "duplicator_mirror_sessions_total") "," gm(i, "duplicator_mirror_lag_cuts_total")
                row = row "," gm(i, "duplicator_mirror_connect_failures_total") "," gm(i, "duplicator_mirror_connect_timeouts_total")
                row = row "," gm(i, "duplicator_mirror_errors_total") "," gm(i, "duplicator_mirror_skipped_sessions_total")
                row = row "," gm(i, "duplicator_mirror_backing_off")
            }
            print row
        }' <<<"$metrics" >>"$CSV"
    # One readable line from the row just written.
    tail -n 1 "$CSV" | awk -F, '{
        printf "t=%4ss %-8s rss=%6.1fMiB fds=%4s active=%4s accepted=%7s pool=%4s | healthy=%s stall=%s(cut %s) flap=%s(refused %s, off %s) blackhole(timeouts %s, off %s)\n",
            $1, $2, $3 / 1024, $4, $5, $6, $14, $16, $23, $24, $30, $32, $36, $40, $43 }'
}

# ---------------------------------------------------------------- load

LOAD_START=$(now)
LOAD_END=$(python3 -c "import sys; print(float(sys.argv[1]) + int(sys.argv[2]))" "$LOAD_START" "$LOAD_S")
remaining() { python3 -c "import sys; print(max(0, int(float(sys.argv[1]) - float(sys.argv[2]))))" "$LOAD_END" "$(now)"; }

sleep 3             # the readiness probe's session ends (mirror connect timeout, linger)
sample -5 baseline   # idle, before any load

load_loop() {  # closed-loop chunks of CHUNK_S seconds; the connections churn between chunks
    local child="" n=0 left
    trap 'kill -TERM $child 2>/dev/null; exit 0' TERM
    while left=$(remaining) && ((left >= 2)); do
        n=$((n + 1))
        timeout -k 5 $((CHUNK_S + 30)) "$BIN_DIR/duplicator-testclient" -a "127.0.0.1:$PROXY_PORT" \
            -p "$CONNECTIONS" -s "$SIZE" -d $((left < CHUNK_S ? left : CHUNK_S)) --json \
            >"$OUT_DIR/load-$(printf %04d $n).json" 2>/dev/null &
        child=$!
        wait "$child" || echo "soak: load chunk $n exited with $?" >>"$OUT_DIR/client-exits.log"
    done
}
hostile_loop() {  # hostile_loop MODE COUNT: COUNT hostile connections held for HOSTILE_CHUNK_S, again and again
    local child="" n=0 left
    trap 'kill -TERM $child 2>/dev/null; exit 0' TERM
    while left=$(remaining) && ((left >= 2)); do
        n=$((n + 1))
        timeout -k 5 $((HOSTILE_CHUNK_S + 30)) "$BIN_DIR/duplicator-testclient" -a "127.0.0.1:$PROXY_PORT" \
            --hostile "$1" -p "$2" -d $((left < HOSTILE_CHUNK_S ? left : HOSTILE_CHUNK_S)) \
            --hostile-request-bytes "$HOSTILE_REQUEST_BYTES" --json \
            >"$OUT_DIR/hostile-$1-$(printf %04d $n).json" 2>/dev/null &
        child=$!
        wait "$child" || echo "soak: hostile $1 run $n exited with $?" >>"$OUT_DIR/client-exits.log"
    done
}
bulk_loop() {  # 4 connections of 64 KiB messages for 5 s, every BULK_EVERY_S
    local child="" n=0 left
    trap 'kill -TERM $child 2>/dev/null; exit 0' TERM
    sleep 15 & child=$!; wait "$child"
    while left=$(remaining) && ((left >= 8)); do
        n=$((n + 1))
        timeout -k 5 40 "$BIN_DIR/duplicator-testclient" -a "127.0.0.1:$PROXY_PORT" -p 4 -s 65536 -d 5 --json \
            >"$OUT_DIR/bulk-$(printf %04d $n).json" 2>/dev/null &
        child=$!
        wait "$child" || echo "soak: bulk run $n exited with $?" >>"$OUT_DIR/client-exits.log"
        left=$(remaining)
        sleep $((left < BULK_EVERY_S - 5 ? left : BULK_EVERY_S - 5)) & child=$!; wait "$child"
    done
}

flap_loop & PIDS+=($!)
load_loop & PIDS+=($!)
bulk_loop & PIDS+=($!)
timeout -k 5 $((LOAD_S + 30)) python3 -c "$PY_CHURN" "$PROXY_PORT" "$CHURN_RATE" "$LOAD_END" "$OUT_DIR/churn.json" &
CHURN_PID=$!
PIDS+=("$CHURN_PID")
LOOP_PIDS=("${PIDS[@]: -4}")
HOSTILE_PIDS=()
if ((STALLED_READERS > 0)); then hostile_loop stall "$STALLED_READERS" & PIDS+=($!); HOSTILE_PIDS+=($!); fi
if ((SLOW_READERS > 0)); then hostile_loop slow-read "$SLOW_READERS" & PIDS+=($!); HOSTILE_PIDS+=($!); fi

for ((k = 1; k * SAMPLE_S <= DURATION_S; k++)); do
    target=$(python3 -c "import sys; print(max(0.0, float(sys.argv[1]) + int(sys.argv[2]) - float(sys.argv[3])))" \
             "$LOAD_START" $((k * SAMPLE_S)) "$(now)")
    sleep "$target"
    t=$((k * SAMPLE_S))
    if ((t > LOAD_S)) && [[ -n ${LOOP_PIDS[*]-} ]]; then
        # The load is over: the clients end by themselves; stop the flapping.
        wait "${LOOP_PIDS[1]}" "${LOOP_PIDS[2]}" "$CHURN_PID" ${HOSTILE_PIDS[@]+"${HOSTILE_PIDS[@]}"} 2>/dev/null || true
        kill -TERM "${LOOP_PIDS[0]}" 2>/dev/null || true
        wait "${LOOP_PIDS[0]}" 2>/dev/null || true
        LOOP_PIDS=()
    fi
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "soak: the proxy died" >&2; break; }
    sample "$t" "$( ((t < LOAD_S)) && echo load || { ((t == LOAD_S)) && echo stop || echo idle; })"
done

# ---------------------------------------------------------------- the end

probe=1
timeout 15 python3 -c "$PY_PROBE" "$PROXY_PORT" && probe=0
term_status=died
if kill -0 "$PROXY_PID" 2>/dev/null; then
    kill -TERM "$PROXY_PID"
    deadline=$((SECONDS + 20))
    while kill -0 "$PROXY_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    if kill -0 "$PROXY_PID" 2>/dev/null; then term_status="still running 20 s after SIGTERM"
    else wait "$PROXY_PID" && term_status=0 || term_status=$?; fi
fi
if grep -Eiq 'critical|fatal error|worker stopped' "$OUT_DIR/proxy.log"; then
    echo "soak: the proxy logged a critical line:" >&2
    grep -Ei 'critical|fatal error|worker stopped' "$OUT_DIR/proxy.log" | head -5 >&2
    term_status="$term_status (critical lines in proxy.log)"
fi

echo "soak: verdict (samples in $CSV)"
set +e
python3 -c "$PY_VERDICT" "$OUT_DIR" "$LOAD_S" "$WARMUP_S" "$WINDOW_S" "$RSS_TOLERANCE_KIB" "$FD_TOLERANCE" \
    "$probe" "$term_status" "$FLAP_UP_S" "$STALLED_READERS" "$SLOW_READERS"
status=$?
set -e
exit "$status"
