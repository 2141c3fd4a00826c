#!/usr/bin/env python3
"""The longest gap in accepted connections while duplicator hands its
listeners to a new process (--handover-socket), under a load of short
connections: docs/handover.md.

Starts duplicator-testserver (echo) as main, duplicator in front of it, and
CONNECTORS threads that each connect, send a line, read it back and close,
one connection after another. Every HANDOVER_INTERVAL seconds a new
duplicator is started with the same --handover-socket; it takes the
listeners over and the old one drains and exits. Prints, for the time around
the handovers (from the new process's start to one second after it serves)
and for the rest of the run: connections, errors, the longest time between
two connections completing, and the slowest connection (connect to echo).

    scripts/handover_gap.py [--backend io_uring|epoll] [--handovers 5] [--interval 2] [--connectors 4]
"""
import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default=".build/release")
    parser.add_argument("--backend", default="io_uring")
    parser.add_argument("--threads", default="2",
                        help="worker threads, or a comma-separated list: one per process in turn (e.g. 2,3,1)")
    parser.add_argument("--handovers", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--connectors", type=int, default=4)
    args = parser.parse_args()

    thread_counts = args.threads.split(",")
    directory = tempfile.mkdtemp(prefix="handover-gap-")
    main_port, port = free_port(), free_port()
    sock_path = os.path.join(directory, "handover.sock")
    server = subprocess.Popen([os.path.join(args.build, "duplicator-testserver"), "-l", f"127.0.0.1:{main_port}", "--quiet"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    processes = []

    def start(generation):
        log = os.path.join(directory, f"duplicator-{generation}.log")
        process = subprocess.Popen([os.path.join(args.build, "duplicator"), "-l", f"127.0.0.1:{port}",
                                    "-f", f"127.0.0.1:{main_port}", "--backend", args.backend,
                                    "--threads", thread_counts[generation % len(thread_counts)], "--handover-socket", sock_path,
                                    "--drain-timeout", "10s"],
                                   stdout=subprocess.DEVNULL, stderr=open(log, "w"))
        ok = wait_for(lambda: "listening on" in open(log).read() or process.poll() is not None, 20)
        if not ok or process.poll() is not None:
            sys.exit(f"duplicator {generation} did not start: {open(log).read()}")
        processes.append((process, log))

    try:
        start(0)
        stop = threading.Event()
        records = []  # (start, end) of each connection that completed
        errors = []
        lock = threading.Lock()

        def connector(index):
            serial = 0
            while not stop.is_set():
                serial += 1
                payload = f"{index}-{serial}\n".encode()
                began = time.monotonic()
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
                        connection.sendall(payload)
                        connection.shutdown(socket.SHUT_WR)
                        received = b""
                        while True:
                            part = connection.recv(4096)
                            if not part:
                                break
                            received += part
                    if received != payload:
                        raise RuntimeError(f"got {received!r}")
                    with lock:
                        records.append((began, time.monotonic()))
                except Exception as error:  # noqa: BLE001 - every failure is counted
                    with lock:
                        errors.append((began, repr(error)))

        threads = [threading.Thread(target=connector, args=(index,)) for index in range(args.connectors)]
        for thread in threads:
            thread.start()
        time.sleep(args.interval)
        windows = []
        for generation in range(1, args.handovers + 1):
            began = time.monotonic()
            start(generation)
            windows.append((began, time.monotonic() + 1.0))
            time.sleep(args.interval)
        stop.set()
        for thread in threads:
            thread.join()
        old_status = [process.wait(timeout=30) for process, _ in processes[:-1]]

        def inside(moment):
            return any(low <= moment <= high for low, high in windows)

        # Gaps over every connection, each counted where it ends.
        ends = sorted(end for _, end in records)
        gaps = [(b - a, b) for a, b in zip(ends, ends[1:])]

        def summary(name, around):
            chosen = [r for r in records if inside(r[1]) == around]
            gap = max((g for g, end in gaps if inside(end) == around), default=0.0)
            slowest = max((end - begin for begin, end in chosen), default=0.0)
            print(f"{name}: {len(chosen)} connections, longest gap between two completing {gap * 1000:.1f} ms, "
                  f"slowest connection {slowest * 1000:.1f} ms")

        print(f"backend {args.backend}, {args.threads} threads, {args.connectors} connectors, {args.handovers} handovers "
              f"every {args.interval} s; errors: {len(errors)}; old processes' exit statuses: {old_status}")
        for moment, error in errors[:5]:
            print(f"  error at {moment - records[0][0]:.3f} s: {error}")
        summary("around the handovers", True)
        summary("the rest of the run ", False)
        took = [open(log).read().count("took over") for _, log in processes[1:]]
        print(f"handovers confirmed: {sum(took)} of {args.handovers}")
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=20)
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
