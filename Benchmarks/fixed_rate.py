"""The fixed-rate workloads of compare.sh: what a request costs below saturation.

10 connections x 1 KiB, open loop at 5 000, 20 000 or 50 000 requests/s
(`duplicator-testclient --rate`), every proxy at its defaults: duplicator with
as many workers as CPUs (`--threads` unset) and 0, 1 or 4 mirrors, haproxy
with its default thread count, nginx's stream module with its default one
worker. Also the duplicator and haproxy pinned to one thread (dup0, haproxy),
to see what a second worker costs at a rate one can carry.

The proxy's CPU is read from /proc/PID/task/*/schedstat (nanoseconds on CPU,
every thread of the process tree) over a steady window: from `WARMUP_S` after
the client starts to `TAIL_S` before it ends, so connection set-up and
teardown are not in it; divided by the requests the client completed in that
window (its rate times the window: an open loop that keeps up completes what
it sends). The client's own CPU per request is its thread's over the run."""

import json
import os
import subprocess
import time

RATES = {"rate5k": 5000.0, "rate20k": 20000.0, "rate50k": 50000.0}
CONNECTIONS, SIZE = 10, 1024
CONFIGS = ["direct", "dup0-defaults", "dup1-defaults", "dup4-defaults", "haproxy-defaults", "nginx-defaults",
           "dup0", "haproxy"]
TITLES = {
    "dup0-defaults": "duplicator, 0 mirrors (defaults: a worker per CPU)",
    "dup1-defaults": "duplicator, 1 mirror (defaults)",
    "dup4-defaults": "duplicator, 4 mirrors (defaults)",
    "haproxy-defaults": "haproxy (mode tcp, defaults: a thread per CPU)",
    "nginx-defaults": "nginx stream (defaults: 1 worker)",
}
WARMUP_S, TAIL_S = 1.0, 0.5


def workloads():
    return {name: (CONNECTIONS, SIZE, list(CONFIGS),
                   f"fixed rate {rate:,.0f} requests/s: 10 connections, 1 KiB, open loop, proxies at their defaults")
            for name, rate in RATES.items()}


def mirrors_of(kind):
    """(mirrors, default threads?) of a duplicator configuration."""
    base, _, rest = kind.partition("-")
    return int(base[3:]), rest == "defaults"


def schedstat_ns(pids):
    """Nanoseconds on CPU of every thread of `pids` (live processes only)."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                    total += int(handle.read().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total


def measure(compare, bins, kind, process, port, duration_s, rate, server_pids, client_backend):
    """One open-loop client run; CPU of the proxy tree and of the echo servers over the steady window."""
    command = [bins["duplicator-testclient"], "-a", f"{compare.LOOPBACK}:{port}", "-p", str(CONNECTIONS),
               "-s", str(SIZE), "-d", str(duration_s), "--rate", f"{rate:g}", "--json", "--backend", client_backend]
    proxy_pids = compare.process_tree(process.pid, compare.read_process_table()) if process else []
    client = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    compare.CURRENT_CLIENT[0] = client
    # Short runs (--quick) keep the same proportions.
    scale = min(1.0, duration_s / (WARMUP_S + TAIL_S + 2.0))
    try:
        time.sleep(WARMUP_S * scale)
        start = time.monotonic()
        proxy_before, servers_before = schedstat_ns(proxy_pids), schedstat_ns(server_pids)
        time.sleep(duration_s - (WARMUP_S + TAIL_S) * scale)
        proxy_after, servers_after = schedstat_ns(proxy_pids), schedstat_ns(server_pids)
        window_s = time.monotonic() - start
        stdout, stderr = client.communicate(timeout=duration_s + 60)
    except subprocess.TimeoutExpired:
        client.kill()
        client.communicate()
        raise
    finally:
        compare.CURRENT_CLIENT[0] = None
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"testclient exited {client.returncode} without a result: {stderr.strip()[-300:]}")
    result = json.loads(lines[-1])
    requests_in_window = result.get("rps", 0.0) * window_s
    per_request = (lambda ns: None if requests_in_window <= 0 else ns / 1000 / requests_in_window)
    return {
        "config": kind,
        "rps": result.get("rps", 0.0),
        "rate": rate,
        "requests": result.get("requests", 0),
        "errors": result.get("errors", 0),
        "connections_established": result.get("connections_established", CONNECTIONS),
        "p50_us": result.get("p50_us"),
        "p99_us": result.get("p99_us"),
        "p999_us": result.get("p999_us"),
        "p9999_us": result.get("p9999_us"),
        "client_cpu_us_per_req": result.get("client_cpu_us_per_req"),
        "client_backend": result.get("backend"),
        "window_s": window_s,
        "proxy_cpu_us_per_req": per_request(proxy_after - proxy_before) if process else None,
        "servers_cpu_us_per_req": per_request(servers_after - servers_before),
    }


def summarize(compare, runs, configs):
    by_round = {}
    for run in runs:
        by_round.setdefault(run["round"], {})[run["config"]] = run

    def ratio(config, other, field):
        values = []
        for round_runs in by_round.values():
            mine, theirs = round_runs.get(config), round_runs.get(other)
            if mine and theirs and mine.get(field) and theirs.get(field):
                values.append(mine[field] / theirs[field])
        return compare.median(values)

    rows = []
    for config in configs:
        mine = sorted((run for run in runs if run["config"] == config), key=lambda run: run["round"])
        if not mine:
            continue
        client_vs_proxy = [run["client_cpu_us_per_req"] / run["proxy_cpu_us_per_req"] for run in mine
                           if run.get("proxy_cpu_us_per_req") and run.get("client_cpu_us_per_req")]
        rows.append({
            "config": config,
            "rps": compare.median([run["rps"] for run in mine]),
            "proxy_cpu_us_per_req": compare.median([run["proxy_cpu_us_per_req"] for run in mine]),
            "proxy_cpu_rounds": [run["proxy_cpu_us_per_req"] for run in mine],
            "vs_haproxy": ratio(config, "haproxy-defaults", "proxy_cpu_us_per_req"),
            "vs_dup0": ratio(config, "dup0-defaults", "proxy_cpu_us_per_req"),
            "p50_us": compare.median([run["p50_us"] for run in mine]),
            "p99_us": compare.median([run["p99_us"] for run in mine]),
            "p999_us": compare.median([run["p999_us"] for run in mine]),
            "p99_vs_dup0": ratio(config, "dup0-defaults", "p99_us"),
            "client_cpu_us_per_req": compare.median([run["client_cpu_us_per_req"] for run in mine]),
            "client_vs_proxy": compare.median(client_vs_proxy),
            "servers_cpu_us_per_req": compare.median([run["servers_cpu_us_per_req"] for run in mine]),
            "errors": sum(run["errors"] for run in mine),
        })
    return rows


def table(compare, rows):
    number = compare.number
    lines = ["| configuration | requests/s | proxy CPU us/req | CPU vs haproxy | CPU vs 0 mirrors | p50 us | p99 us "
             "| p99.9 us | p99 vs 0 mirrors | client CPU us/req | client / proxy CPU | proxy CPU us/req per round |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        title = compare.CONFIG_TITLES[row["config"]]
        if row["errors"]:
            title += f" ({row['errors']} errors)"
        direct = row["config"] == "direct"
        lines.append("| " + " | ".join([
            title, number(row["rps"]),
            "–" if direct else number(row["proxy_cpu_us_per_req"], 1),
            "–" if direct else number(row["vs_haproxy"], 2),
            "–" if direct else number(row["vs_dup0"], 2),
            number(row["p50_us"]), number(row["p99_us"]), number(row["p999_us"]),
            "–" if direct else number(row["p99_vs_dup0"], 2),
            number(row["client_cpu_us_per_req"], 1),
            "–" if direct else number(row["client_vs_proxy"], 2),
            "–" if direct else " / ".join(number(value, 1) for value in row["proxy_cpu_rounds"]),
        ]) + " |")
    return "\n".join(lines)
