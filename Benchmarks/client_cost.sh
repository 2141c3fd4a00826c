#!/usr/bin/env bash
# What the load client costs per request against what the proxy it measures
# costs, in the same runs: duplicator-testclient --rate R (10 connections x
# 1 KiB, open loop) through `duplicator` (its defaults, no mirror) to an
# echo server, on each client backend (io_uring, epoll), in interleaved
# rounds. Per run: the client thread's CPU per request (its --json), the
# proxy's CPU per request over the steady window (/proc/PID/task/*/schedstat,
# as compare.sh's fixed-rate workloads), and with perf (if it counts
# tracepoints here) the client's system calls and context switches per
# request: counts, repeatable on a noisy machine.
#
#   Benchmarks/client_cost.sh [BIN_DIR] [RATE] [ROUNDS] [SECONDS]   (default .build/release 20000 3 5)
#   PROXY_ARGS='--threads 1' Benchmarks/client_cost.sh              (extra proxy flags)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec python3 - "$here" "${1:-.build/release}" "${2:-20000}" "${3:-3}" "${4:-5}" "${PROXY_ARGS:-}" <<'PY'
import json, os, shlex, shutil, socket, statistics, subprocess, sys, tempfile, time
here, bins, rate, rounds, seconds, proxy_args = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
sys.path.insert(0, here)
from fixed_rate import schedstat_ns
from perf_counts import read_counts

def port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def wait_listening(p, process):
    for _ in range(200):
        if process.poll() is not None: sys.exit(f"client_cost.sh: a server exited: {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", p), 0.2).close(); return
        except OSError: time.sleep(0.05)
    sys.exit("client_cost.sh: a server did not listen")

work = tempfile.mkdtemp(prefix="client-cost-")
perf = shutil.which("perf")
processes = []
try:
    main_port, proxy_port = port(), port()
    processes.append(subprocess.Popen([f"{bins}/duplicator-testserver", "-l", f"127.0.0.1:{main_port}", "-q"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    wait_listening(main_port, processes[-1])
    proxy = subprocess.Popen([f"{bins}/duplicator", "-l", f"127.0.0.1:{proxy_port}", "-f", f"127.0.0.1:{main_port}",
                              "--log-level", "warning", *shlex.split(proxy_args)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes.append(proxy)
    wait_listening(proxy_port, proxy)
    rows = {"io_uring": [], "epoll": []}
    for round_index in range(rounds):
        for backend in (["io_uring", "epoll"] if round_index % 2 == 0 else ["epoll", "io_uring"]):
            counts = os.path.join(work, f"perf.{backend}.{round_index}")
            command = [f"{bins}/duplicator-testclient", "-a", f"127.0.0.1:{proxy_port}", "-d", str(seconds),
                       "--rate", f"{rate:g}", "--json", "--backend", backend]
            if perf:
                command = [perf, "stat", "-x,", "-o", counts, "-e", "raw_syscalls:sys_enter,context-switches", "--"] + command
            client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            time.sleep(1.0)
            started, before = time.monotonic(), schedstat_ns([proxy.pid])
            time.sleep(seconds - 1.5)
            after, window = schedstat_ns([proxy.pid]), time.monotonic() - started
            result = json.loads([l for l in client.communicate(timeout=seconds + 30)[0].splitlines() if l.startswith("{")][-1])
            proxy_us = (after - before) / 1000 / (result["rps"] * window)
            row = {"rps": result["rps"], "client": result["client_cpu_us_per_req"], "proxy": proxy_us,
                   "ratio": result["client_cpu_us_per_req"] / proxy_us, "p50": result["p50_us"], "p99": result["p99_us"],
                   "backend": result["backend"]}
            if perf and os.path.exists(counts):
                for name, value in read_counts(counts, "client_cost.sh").items():
                    row[name] = value / max(1, result["requests"])
            rows[backend].append(row)
            print(f"round {round_index + 1} {backend:8} {row['rps']:9,.0f} req/s  client {row['client']:5.1f} us/req"
                  f"  proxy {proxy_us:5.1f} us/req  client/proxy {row['ratio']:.2f}  p50 {row['p50']:.0f} p99 {row['p99']:.0f} us"
                  + (f"  syscalls/req {row['sys_enter']:.2f}  switches/req {row['context-switches']:.2f}" if 'sys_enter' in row else ""),
                  flush=True)
    print(f"\nper request, ranges over {rounds} rounds at {rate:g} requests/s (proxy: duplicator {proxy_args or '(defaults)'}):")
    for backend, runs in rows.items():
        def span(key, digits=1):
            values = [run[key] for run in runs if key in run]
            return f"{min(values):.{digits}f}-{max(values):.{digits}f} (median {statistics.median(values):.{digits}f})" if values else "-"
        print(f"  {backend:8} client CPU us {span('client')}, proxy CPU us {span('proxy')}, client/proxy {span('ratio', 2)},"
              f" client syscalls {span('sys_enter', 2)}, client context switches {span('context-switches', 2)}")
finally:
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(timeout=10)
    shutil.rmtree(work, ignore_errors=True)
PY
