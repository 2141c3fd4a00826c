#!/usr/bin/env python3
"""Hostile load: what stalled readers, slow readers and slowloris clients cost a
well-behaved client of the proxy, side by side with haproxy and nginx's stream
module under the same load.

Topology (all 127.0.0.1): an echo main (duplicator-testserver), one echo mirror
for the duplicator, and in front of main one proxy at a time:

    duplicator  default flags (threads = CPUs, --max-memory 1GiB of 16 KiB slots)
                and one mirror, plus --metrics to read the pool's slots in use
    haproxy     mode tcp, nbthread 1, `timeout client` / `timeout server` set
    nginx       stream, 1 worker, `proxy_timeout` set to the same

For each proxy, each hostile mode (stall, slow-read, slowloris) and each N, a
run starts N hostile connections (`duplicator-testclient --hostile MODE`),
waits until every connect has completed or failed, then at least --settle
seconds and until the proxy's CPU drops under a quarter of a core (the replies
have moved as far as they go), at most --settle-max; then measures the seed's
well-behaved client (10 connections, 1 KiB messages, closed loop) for
--duration seconds, sampling the proxy's RSS and open descriptors from /proc
(the whole process tree: nginx's master and worker). "alone" is the same client
with no hostile connections. The configurations are interleaved: for each
(mode, N) every proxy runs back to back, in an order rotated per round, so
each ratio compares runs made seconds apart on this shared, noisy machine.

Kernel memory: a stalled reply waits in socket buffers first (on loopback the
proxy's send buffer towards a client that does not read grows to about 1.4 MB
while the machine's TCP memory is below tcp_mem's low mark), and only the rest
in the proxy. N x --request-bytes x 2 (the mirror's copy) is what the machine's
TCP sockets may hold at once; a guard stops the hostile clients of a run early
(and says so) before tcp_mem's pressure mark, since the machine is shared.

Everything it starts is stopped at exit, also on failure or Ctrl-C. Helpers
(process groups, free ports, /proc) come from compare.py.

    Benchmarks/hostile.sh                          # default: N = 500,2000,4000, 1 round, 5 s, 256 KiB
    Benchmarks/hostile.sh -n 500 -r 1 -d 3         # quicker
    Benchmarks/hostile.sh --modes stall --proxies duplicator,haproxy
"""

import argparse
import datetime
import json
import os
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (the helpers of the side-by-side comparison)
from compare import LOOPBACK, log, number  # noqa: E402

ROOT = compare.ROOT
MODES = ["stall", "slow-read", "slowloris"]
PROXIES = ["duplicator", "haproxy", "nginx"]
PROXY_TITLES = {
    "duplicator": "duplicator (default flags, 1 mirror)",
    "haproxy": "haproxy (nbthread 1, timeout client/server {timeout})",
    "nginx": "nginx stream (1 worker, proxy_timeout {timeout})",
}


# ---------------------------------------------------------------- /proc

def tree_memory_and_descriptors(root):
    """(VmRSS in KiB, open descriptors) summed over `root` and its descendants."""
    rss_kib, descriptors = 0, 0
    for pid in compare.process_tree(root, compare.read_process_table()):
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        rss_kib += int(line.split()[1])
                        break
            descriptors += len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
    return rss_kib, descriptors


def kernel_tcp_mib():
    """Memory of all TCP sockets of the machine (/proc/net/sockstat, in pages)."""
    try:
        with open("/proc/net/sockstat") as handle:
            for line in handle:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError):
        pass
    return None


def kernel_tcp_pressure_mib():
    """tcp_mem's pressure threshold (its middle value) in MiB: above it the kernel
    shrinks every TCP socket's buffers on the machine."""
    try:
        with open("/proc/sys/net/ipv4/tcp_mem") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)
    except (OSError, ValueError, IndexError):
        return None


def pool_slots_in_use(metrics_port):
    """duplicator_pool_slots_in_use from the proxy's /metrics, or None."""
    if not metrics_port:
        return None
    try:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{metrics_port}/metrics", timeout=3) as response:
            for line in response.read().decode(errors="replace").splitlines():
                if line.startswith("duplicator_pool_slots_in_use"):
                    return int(float(line.split()[-1]))
    except (OSError, ValueError):
        pass
    return None


# ---------------------------------------------------------------- the proxies

def start_proxy(kind, processes, bins, workdir, main_port, mirror_port, timeout):
    """(process, port, metrics port or None)."""
    if kind == "duplicator":
        metrics_port = compare.free_port()

        def argv(port):
            return [bins["duplicator"], "-l", f"{LOOPBACK}:{port}", "-f", f"{LOOPBACK}:{main_port}",
                    "-m", f"{LOOPBACK}:{mirror_port}", "--metrics", f"{LOOPBACK}:{metrics_port}",
                    "--log-level", "warning"]
        process, port = compare.start_with_free_port(processes, kind, argv)
        return process, port, metrics_port

    if kind == "haproxy":
        def argv(port):
            return compare.haproxy_argv(workdir, port, main_port, maxconn=9000, timeout=timeout)
        process, port = compare.start_with_free_port(processes, kind, argv)
        return process, port, None

    if kind == "nginx":
        def argv(port):
            return compare.nginx_argv(workdir, port, main_port, worker_connections=20000, rlimit_nofile=40000,
                                      listen_options=" backlog=4096", server_lines=f"\n        proxy_timeout {timeout};")
        process, port = compare.start_with_free_port(processes, kind, argv)
        return process, port, None

    raise ValueError(kind)


# ---------------------------------------------------------------- the hostile clients

class HostileRun:
    """One `duplicator-testclient --hostile` process; its per-second lines are
    read on a thread, its JSON result when it is stopped."""

    def __init__(self, bins, port, mode, connections, arguments, lifetime_s):
        command = [bins["duplicator-testclient"], "-a", f"{LOOPBACK}:{port}", "--hostile", mode,
                   "-p", str(connections), "-d", str(lifetime_s), "--json",
                   "--hostile-request-bytes", str(arguments.request_bytes)]
        if arguments.receive_buffer_bytes and mode != "slowloris":
            command += ["--receive-buffer-bytes", str(arguments.receive_buffer_bytes)]
        self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, start_new_session=True)
        RUNNING_CLIENTS.add(self.process)
        self.connections = connections
        self.progress = {}
        self.stderr_tail = []
        self.reader = threading.Thread(target=self._read_progress, daemon=True)
        self.reader.start()
        # The guard: every stalled reply sits in kernel socket buffers (the proxy's
        # send buffer towards the client grows to about 1.4 MB on loopback), and this
        # machine is shared. Past the limit the hostile clients are stopped early.
        self.kernel_limit_mib = arguments.kernel_tcp_max_mib
        self.kernel_peak_mib = kernel_tcp_mib() or 0
        self.stopped_by_guard = False
        self.guarding = True
        self.guard = threading.Thread(target=self._guard_kernel_memory, daemon=True)
        self.guard.start()

    def _guard_kernel_memory(self):
        while self.guarding and self.process.poll() is None:
            mib = kernel_tcp_mib() or 0
            self.kernel_peak_mib = max(self.kernel_peak_mib, mib)
            if self.kernel_limit_mib and mib > self.kernel_limit_mib and not self.stopped_by_guard:
                self.stopped_by_guard = True
                log(f"  kernel TCP memory {mib:.0f} MiB > {self.kernel_limit_mib:.0f} MiB: stopping the hostile clients")
                try:
                    os.killpg(self.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)

    def _read_progress(self):
        for line in self.process.stderr:
            if line.startswith("hostile "):
                self.progress = dict(field.split("=", 1) for field in line.split()[1:] if "=" in field)
            else:
                self.stderr_tail = (self.stderr_tail + [line.strip()])[-3:]

    def wait_ready(self, timeout_s):
        """True when every connect has completed or failed (or the time ran out:
        False). Connects that never complete are part of the result too."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            progress = self.progress
            if progress and progress.get("waiting") == "0" and progress.get("connecting") == "0":
                return True
            time.sleep(0.1)
        return False

    def stop(self):
        """SIGTERM (it prints its result), then the result as a dict."""
        self.guarding = False
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            stdout, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            stdout, _ = self.process.communicate()
        RUNNING_CLIENTS.discard(self.process)
        self.reader.join(timeout=2)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        if not lines:
            return {"error": f"no result (exit {self.process.returncode}): {' | '.join(self.stderr_tail)}",
                    "stopped_by_guard": self.stopped_by_guard}
        result = json.loads(lines[-1])
        result["stopped_by_guard"] = self.stopped_by_guard
        return result


RUNNING_CLIENTS = set()


def kill_clients():
    for process in list(RUNNING_CLIENTS):
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        RUNNING_CLIENTS.discard(process)
    client = compare.CURRENT_CLIENT[0]
    if client and client.poll() is None:
        client.kill()


# ---------------------------------------------------------------- measuring

def run_well_behaved(bins, port, duration_s, proxy_pid):
    """The seed client for `duration_s`, with the proxy's RSS and descriptors
    sampled every half second meanwhile; returns (client result, peak RSS KiB,
    peak descriptors)."""
    outcome = {}

    def client():
        try:
            outcome["result"] = compare.run_client(bins, port, 10, 1024, duration_s)
        except (RuntimeError, subprocess.TimeoutExpired) as error:
            outcome["error"] = str(error)
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    peak_rss, peak_fds = tree_memory_and_descriptors(proxy_pid)
    while thread.is_alive():
        thread.join(timeout=0.5)
        rss, fds = tree_memory_and_descriptors(proxy_pid)
        peak_rss, peak_fds = max(peak_rss, rss), max(peak_fds, fds)
    return outcome, peak_rss, peak_fds


def wait_until_released(proxy_pid, baseline_fds, timeout_s, kernel_limit_mib):
    """Waits until the proxy is back near its idle descriptor count (the hostile
    sessions' ends reached it) and the machine's TCP memory is under half the
    guard's limit (so the next run starts clean); returns the seconds it took,
    None if it did not."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        _, fds = tree_memory_and_descriptors(proxy_pid)
        kernel = kernel_tcp_mib() or 0
        if fds <= baseline_fds + 4 and (not kernel_limit_mib or kernel < kernel_limit_mib / 2):
            return time.monotonic() - started
        time.sleep(0.25)
    return None


def settle(proxy_pid, arguments):
    """Waits at least --settle seconds, then until the proxy's CPU over the last
    second is under a quarter of a core (the replies that the stalled clients will
    never read have been moved as far as they go: what is measured then is the
    steady state, not the proxy catching up), at most --settle-max seconds.
    Slow readers and slowloris keep a proxy busy for good; they reach the maximum.
    Returns (seconds waited, whether the proxy went quiet)."""
    started = time.monotonic()
    time.sleep(arguments.settle)
    before = compare.tree_cpu_ticks(proxy_pid)
    while time.monotonic() - started < max(arguments.settle, arguments.settle_max):
        time.sleep(1.0)
        now = compare.tree_cpu_ticks(proxy_pid)
        if (now - before) / compare.CLOCK_TICKS < 0.25:
            return time.monotonic() - started, True
        before = now
    return time.monotonic() - started, False


def measure_cell(bins, kind, proxy, mode, count, arguments):
    process, port, metrics_port = proxy
    record = {"proxy": kind, "mode": mode, "n": count}
    hostile = None
    if mode != "alone":
        lifetime = arguments.ramp_timeout + arguments.settle + arguments.duration + 60
        hostile = HostileRun(bins, port, mode, count, arguments, lifetime)
        ramp_started = time.monotonic()
        record["ready"] = hostile.wait_ready(arguments.ramp_timeout)
        record["ramp_s"] = time.monotonic() - ramp_started
        record["settle_s"], record["quiet"] = settle(process.pid, arguments)
        record["hostile_progress"] = dict(hostile.progress)
    record["pool_in_use_before"] = pool_slots_in_use(metrics_port)
    record["kernel_tcp_mib"] = kernel_tcp_mib()
    outcome, peak_rss, peak_fds = run_well_behaved(bins, port, arguments.duration, process.pid)
    record["pool_in_use"] = pool_slots_in_use(metrics_port)
    record["kernel_tcp_mib"] = max(filter(None, [record["kernel_tcp_mib"], kernel_tcp_mib(),
                                                 hostile.kernel_peak_mib if hostile else None]), default=None)
    record["rss_mib"] = peak_rss / 1024
    record["fds"] = peak_fds
    result = outcome.get("result", {})
    record["client_error"] = outcome.get("error")
    record["rps"] = result.get("rps", 0.0)
    record["requests"] = result.get("requests", 0)
    record["p99_us"] = result.get("p99_us") if result.get("requests", 0) else None
    record["errors"] = result.get("errors")
    record["connections_established"] = result.get("connections_established")
    if hostile:
        record["hostile"] = hostile.stop()
        record["kernel_tcp_mib"] = max(record["kernel_tcp_mib"] or 0, hostile.kernel_peak_mib)
    return record


# ---------------------------------------------------------------- the report

def median(values):
    return compare.median(values)


def summarize(runs, proxies, cells):
    """One row per (mode, N, proxy): medians across rounds; "vs alone" is the
    median of per-round ratios to the same proxy's alone run."""
    alone = {(run["round"], run["proxy"]): run["rps"] for run in runs if run["mode"] == "alone"}
    rows = []
    for mode, count in cells:
        for kind in proxies:
            mine = [run for run in runs if run["proxy"] == kind and run["mode"] == mode and run["n"] == count]
            if not mine:
                continue
            ratios = [run["rps"] / alone[(run["round"], kind)] for run in mine
                      if alone.get((run["round"], kind))]
            hostile = [run.get("hostile", {}) for run in mine]
            rows.append({
                "mode": mode, "n": count, "proxy": kind,
                "rps": median([run["rps"] for run in mine]),
                "rps_rounds": [run["rps"] for run in sorted(mine, key=lambda run: run["round"])],
                "vs_alone": median(ratios),
                "p99_us": median([run["p99_us"] for run in mine]),
                "rss_mib": median([run["rss_mib"] for run in mine]),
                "fds": median([run["fds"] for run in mine]),
                "pool_in_use": median([run["pool_in_use"] for run in mine]),
                "kernel_tcp_mib": median([run["kernel_tcp_mib"] for run in mine]),
                "opened": median([h.get("opened") for h in hostile]),
                "ended": median([None if "opened" not in h else
                                 h["refused"] + h["connect_failures"] + h["reset"] + h["closed_by_peer"]
                                 for h in hostile]),
                "connecting": median([h.get("connecting_at_end") for h in hostile]),
                "client_errors": sum(run["errors"] or 0 for run in mine),
                "guarded": sum(1 for h in hostile if h.get("stopped_by_guard")),
                "settle_s": median([run.get("settle_s") for run in mine]),
                "busy": sum(1 for run in mine if run["mode"] != "alone" and not run.get("quiet")),
                "well_connections": median([run["connections_established"] for run in mine]),
                "short": sum(1 for run in mine if (run["connections_established"] or 0) < 10),
            })
    return rows


def markdown_table(rows, timeout):
    lines = ["| hostile clients | proxy | well-behaved req/s | vs alone | p99 ms | well-behaved conns "
             "| proxy RSS MiB | proxy fds | pool slots in use | hostile opened / ended / still connecting "
             "| kernel TCP MiB (peak) | settled s | req/s per round |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for row in rows:
        hostile = "none (alone)" if row["mode"] == "alone" else f"{number(row['n'])} {row['mode']}"
        title = PROXY_TITLES[row["proxy"]].format(timeout=timeout).split(" (")[0]
        notes = []
        if row["client_errors"]:
            notes.append(f"{row['client_errors']} client errors")
        if row["guarded"]:
            notes.append(f"hostile clients stopped early by the kernel-memory guard in {row['guarded']} runs")
        if notes:
            title += " (" + ", ".join(notes) + ")"
        hostile_counts = "–" if row["mode"] == "alone" else (
            f"{number(row['opened'])} / {number(row['ended'])} / {number(row['connecting'])}")
        lines.append("| " + " | ".join([
            hostile, title, number(row["rps"]), number(row["vs_alone"], 2),
            number(None if row["p99_us"] is None else row["p99_us"] / 1000, 1),
            f"{number(row['well_connections'])} of 10",
            number(row["rss_mib"], 1), number(row["fds"]), number(row["pool_in_use"]),
            hostile_counts, number(row["kernel_tcp_mib"]),
            "–" if row["mode"] == "alone" else number(row["settle_s"], 0) + ("*" if row["busy"] else ""),
            " / ".join(number(value) for value in row["rps_rounds"]),
        ]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main

def parse_arguments(argv):
    parser = argparse.ArgumentParser(
        prog="hostile.sh",
        description="A well-behaved client's requests/s and p99 through the proxy, alone and beside N stalled "
                    "readers, slow readers and slowloris clients; the duplicator beside haproxy and nginx.")
    parser.add_argument("-n", "--counts", default="500,2000,4000",
                        help="comma-separated numbers of hostile connections (default 500,2000,4000)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    parser.add_argument("--proxies", default=",".join(PROXIES), help="comma-separated, of: " + ", ".join(PROXIES))
    parser.add_argument("-r", "--rounds", type=int, default=1, help="rounds (default 1)")
    parser.add_argument("-d", "--duration", type=float, default=5.0,
                        help="seconds of well-behaved load per run (default 5)")
    parser.add_argument("--settle", type=float, default=2.0,
                        help="seconds at least between the last hostile connect and the measurement (default 2)")
    parser.add_argument("--settle-max", type=float, default=12.0,
                        help="and at most, while the proxy still uses more than a quarter of a core (default 12)")
    parser.add_argument("--ramp-timeout", type=float, default=30.0,
                        help="the longest wait for the hostile connects to complete (default 30 s)")
    parser.add_argument("--request-bytes", type=int, default=256 << 10,
                        help="stall and slow-read request size; the echo reply is as large (default 256 KiB: "
                             "through the duplicator each hostile session puts about twice this into kernel "
                             "socket buffers, the mirror's copy included, and 4000 x 1 MiB would take the "
                             "machine's TCP memory past the kernel's limits)")
    parser.add_argument("--receive-buffer-bytes", type=int, default=0,
                        help="SO_RCVBUF of each stalled and slow reader, set before it connects (a small window, "
                             "as slow-read attacks offer; default 0: the system's autotuned default)")
    parser.add_argument("--timeout", default="30s",
                        help="haproxy's timeout client/server and nginx's proxy_timeout (default 30s, "
                             "longer than a run: they protect by buffers, not by cutting)")
    parser.add_argument("--kernel-tcp-max-mib", type=float, default=None,
                        help="stop a run's hostile clients early when the machine's TCP sockets hold more than this "
                             "(/proc/net/sockstat), so a shared machine never reaches the kernel's TCP memory "
                             "pressure (default: 90%% of tcp_mem's pressure threshold; 0: no limit)")
    parser.add_argument("--bin-dir", default=os.environ.get("DUPLICATOR_BIN_DIR", ".build/release"),
                        help="where duplicator, duplicator-testserver and duplicator-testclient are "
                             "(default: $DUPLICATOR_BIN_DIR or .build/release)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures to FILE")
    arguments = parser.parse_args(argv)
    try:
        arguments.counts = [int(text) for text in arguments.counts.split(",") if text.strip()]
    except ValueError:
        parser.error("--counts: expected comma-separated whole numbers")
    if not arguments.counts or any(count < 1 for count in arguments.counts):
        parser.error("--counts: each must be at least 1")
    arguments.modes = [text.strip() for text in arguments.modes.split(",") if text.strip()]
    arguments.proxies = [text.strip() for text in arguments.proxies.split(",") if text.strip()]
    for mode in arguments.modes:
        if mode not in MODES:
            parser.error(f"unknown mode '{mode}' ({', '.join(MODES)})")
    for kind in arguments.proxies:
        if kind not in PROXIES:
            parser.error(f"unknown proxy '{kind}' ({', '.join(PROXIES)})")
    if arguments.kernel_tcp_max_mib is None:
        pressure = kernel_tcp_pressure_mib()
        arguments.kernel_tcp_max_mib = 0.9 * pressure if pressure else 0
    if arguments.rounds < 1 or arguments.duration <= 0 or arguments.settle < 0:
        parser.error("--rounds must be at least 1, --duration positive and --settle not negative")
    return arguments


def main(argv):
    arguments = parse_arguments(argv)
    bin_dir = arguments.bin_dir if os.path.isabs(arguments.bin_dir) else os.path.join(ROOT, arguments.bin_dir)
    bins = {name: os.path.join(bin_dir, name)
            for name in ("duplicator", "duplicator-testserver", "duplicator-testclient")}
    for name, path in bins.items():
        if not os.access(path, os.X_OK):
            log(f"error: {path} not found; build with `swift build -c release` (or --bin-dir)")
            return 2
    # Thousands of connections on each side: descriptors for every process started here.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    needed = 3 * max(arguments.counts) + 200  # the duplicator: client, main and mirror per session
    if hard < needed:
        log(f"warning: the descriptor limit {hard} is below the {needed} that {max(arguments.counts)} "
            f"hostile connections through the duplicator need")

    workdir = tempfile.mkdtemp(prefix="duplicator-hostile-")
    processes = compare.Processes(workdir)

    def on_signal(number_, _frame):
        log(f"stopping (signal {number_})")
        kill_clients()
        processes.stop_all()
        sys.exit(130)
    for signal_number in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signal_number, on_signal)

    machine = compare.machine_description(bins)
    command_line = "Benchmarks/hostile.sh " + " ".join(shlex.quote(arg) for arg in argv)
    log(f"{machine['date']}, kernel {machine['kernel']}, {machine['cpu']} x {machine['cores']}, "
        f"commit {machine['commit']} (binaries built {machine['binaries']}); logs in {workdir}")

    proxies_wanted = list(arguments.proxies)
    for kind in ("haproxy", "nginx"):
        reason = compare.peer_missing(kind)
        if reason and kind in proxies_wanted:
            log(f"skipping {kind}: {reason}")
            proxies_wanted.remove(kind)

    cells = [("alone", 0)] + [(mode, count) for count in arguments.counts for mode in arguments.modes]
    runs = []
    try:
        servers = {}
        for name in ("echo-main", "echo-mirror"):
            process, port = compare.start_with_free_port(
                processes, name, lambda port: [bins["duplicator-testserver"], "-l", f"{LOOPBACK}:{port}", "-q"])
            servers[name] = port
        proxies = {}
        for kind in proxies_wanted:
            try:
                proxies[kind] = start_proxy(kind, processes, bins, workdir, servers["echo-main"],
                                            servers["echo-mirror"], arguments.timeout)
            except compare.StartError as error:
                log(f"skipping {kind}: did not start: {error}")
        kinds = [kind for kind in proxies_wanted if kind in proxies]
        # A short warm-up, and each proxy's idle descriptor count to wait for between runs.
        baseline_fds = {}
        for kind in kinds:
            try:
                compare.run_client(bins, proxies[kind][1], 10, 1024, 1.0)
            except (RuntimeError, subprocess.TimeoutExpired) as error:
                log(f"  warm-up of {kind} failed: {error}")
            time.sleep(0.5)
            baseline_fds[kind] = tree_memory_and_descriptors(proxies[kind][0].pid)[1]

        log(f"== {len(cells)} loads x {', '.join(kinds)}; {arguments.rounds} round(s) of {arguments.duration:g} s")
        for round_index in range(arguments.rounds):
            for cell_index, (mode, count) in enumerate(cells):
                shift = (round_index + cell_index) % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    process = proxies[kind][0]
                    if process.poll() is not None:
                        log(f"  {kind} exited (status {process.returncode}); no more runs of it")
                        continue
                    run = measure_cell(bins, kind, proxies[kind], mode, count, arguments)
                    run["round"] = round_index + 1
                    released = wait_until_released(process.pid, baseline_fds[kind], 30,
                                                   arguments.kernel_tcp_max_mib)
                    run["released_s"] = released
                    runs.append(run)
                    hostile = run.get("hostile", {})
                    log(f"  round {run['round']} {mode:>9s} {count:5d} {kind:10s} {run['rps']:9,.0f} req/s"
                        f"  p99 {number(None if run['p99_us'] is None else run['p99_us'] / 1000, 1):>7s} ms"
                        f"  rss {run['rss_mib']:7.1f} MiB  fds {run['fds']:6d}"
                        f"  pool {number(run['pool_in_use']):>5s}"
                        + (f"  hostile opened {hostile.get('opened')} reset {hostile.get('reset')}"
                           f" closed {hostile.get('closed_by_peer')} refused {hostile.get('refused')}"
                           f" connecting {hostile.get('connecting_at_end')}"
                           f" ramp {run.get('ramp_s', 0):.1f} s settle {run.get('settle_s', 0):.1f} s"
                           f"{'' if run.get('quiet') else ' (proxy still busy)'}" if hostile else "")
                        + (f"  client: {run['client_error']}" if run["client_error"] else "")
                        + ("" if released is not None else "  (not released within 30 s)"))
    finally:
        kill_clients()
        processes.stop_all()

    rows = summarize(runs, kinds, cells)
    table = markdown_table(rows, arguments.timeout)
    print(f"\nCommand: `{command_line}`  \n"
          f"Date: {machine['date']}; kernel {machine['kernel']}; CPU: {machine['cpu']}, {machine['cores']} cores; "
          f"duplicator commit {machine['commit']}, binaries built {machine['binaries']}  \n"
          f"Peers: {machine['peers']}; {arguments.rounds} round(s) of {arguments.duration:g} s per run, "
          f"interleaved; medians across rounds; request {arguments.request_bytes} bytes. \"settled s\": seconds "
          f"from the last hostile connect to the measurement; * the proxy still used more than a quarter of a "
          f"core then.\n\n{table}\n", flush=True)
    if arguments.json:
        with open(arguments.json, "w") as handle:
            json.dump({"machine": machine, "command": command_line, "runs": runs}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
