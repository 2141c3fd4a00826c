#!/usr/bin/env python3
"""Resident memory of the duplicator holding many idle sessions.

Starts an echo testserver (main) and, with --mirror, a second one (a mirror),
then the duplicator in front of them, opens N client connections through it, sends one line on each and
reads it back (so every session is established end to end), and reports the
proxy's VmRSS before and after, and per session. Loopback only; everything it
starts is stopped at the end.

    Benchmarks/idle_sessions.py [-n 9900] [--mirror] [--bin-dir .build/release]
"""
import argparse
import os
import resource
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_listening(port, seconds=10):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--sessions", type=int, default=9_900)
    parser.add_argument("--mirror", action="store_true", help="also copy to one mirror")
    parser.add_argument("--bin-dir", default=os.environ.get("DUPLICATOR_BIN_DIR", ".build/release"))
    arguments = parser.parse_args()
    bin_dir = os.path.join(ROOT, arguments.bin_dir)
    # Each session holds 2 descriptors in the proxy (3 with the mirror), 1 in
    # this script and 1 in each server: the hard limit bounds N (raising it
    # needs CAP_SYS_RESOURCE, which a container may not have).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = (3 if arguments.mirror else 2) * arguments.sessions + 100
    if hard != resource.RLIM_INFINITY and needed > hard:
        raise SystemExit(f"{arguments.sessions} sessions need {needed} descriptors in the proxy; "
                         f"the hard limit is {hard} (ulimit -Hn): use fewer, or raise it")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    processes = []
    try:
        main_port, mirror_port, proxy_port = free_port(), free_port(), free_port()
        for port in [main_port] + ([mirror_port] if arguments.mirror else []):
            processes.append(subprocess.Popen([f"{bin_dir}/duplicator-testserver", "-l", f"127.0.0.1:{port}", "-q"],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            wait_listening(port)
        command = [f"{bin_dir}/duplicator",
                   "-l", f"127.0.0.1:{proxy_port}", "-f", f"127.0.0.1:{main_port}", "--threads", "1",
                   "--max-sessions", str(max(16384, arguments.sessions + 100)), "--log-level", "warning"]
        if arguments.mirror:
            command += ["-m", f"127.0.0.1:{mirror_port}"]
        proxy = subprocess.Popen(command)
        processes.append(proxy)
        wait_listening(proxy_port)
        time.sleep(0.5)
        before = status_kib(proxy.pid, "VmRSS")
        clients = []
        for index in range(arguments.sessions):
            client = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
            client.sendall(b"x\n")
            clients.append(client)
            if len(clients) % 500 == 0:  # read the echoes in batches: every session is live
                for waiting in clients[-500:]:
                    assert waiting.recv(2) == b"x\n"
        for waiting in clients[len(clients) - len(clients) % 500:]:
            assert waiting.recv(2) == b"x\n"
        time.sleep(1)
        after = status_kib(proxy.pid, "VmRSS")
        locked = status_kib(proxy.pid, "VmPin") or status_kib(proxy.pid, "VmLck")
        pool_bytes = 1024 * 16384
        print(f"sessions: {arguments.sessions} idle{' with 1 mirror' if arguments.mirror else ''}")
        print(f"proxy VmRSS: {before / 1024:.1f} MiB at start, {after / 1024:.1f} MiB with the sessions, "
              f"{(after - before) * 1024 / arguments.sessions:.0f} bytes per session")
        print(f"registered pool: {pool_bytes / 1048576:.0f} MiB (pinned: {locked / 1024:.1f} MiB); "
              f"RSS beyond the pool: {(after * 1024 - pool_bytes) / 1048576:.1f} MiB")
        for client in clients:
            client.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    sys.exit(main())
