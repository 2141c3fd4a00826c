#!/usr/bin/env python3
"""Reload soak and latency (docs/reload.md): a duplicator with --config in
front of an echo main, reloaded with SIGHUP `RELOADS` times through mirror
sets of two echo mirrors (added, removed, resampled), with a few sessions
every 10 reloads; prints RSS and descriptors along the way. Then the time from
SIGHUP to the first session on the new configuration: a mirror is added, and
clients connect back to back until that mirror sees one.

    scripts/reload_soak.py [TOOLS_DIR] [RELOADS]    (default .build/release, 1000)

Loopback only; every process it starts is stopped at the end.
"""
import os, signal, socket, subprocess, sys, tempfile, threading, time

tools = sys.argv[1] if len(sys.argv) > 1 else ".build/release"
reloads = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
backend = os.environ.get("BACKEND", "auto")
work = tempfile.mkdtemp(prefix="reload-soak-")
procs = []

def port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Mirror:
    """An echo server recording when each connection arrived."""
    def __init__(self):
        self.sock = socket.socket(); self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0)); self.sock.listen(1024); self.port = self.sock.getsockname()[1]
        self.accepted = []
        threading.Thread(target=self.loop, daemon=True).start()
    def loop(self):
        while True:
            try: c, _ = self.sock.accept()
            except OSError: return
            self.accepted.append(time.monotonic())
            threading.Thread(target=self.echo, args=(c,), daemon=True).start()
    def echo(self, c):
        try:
            while True:
                d = c.recv(65536)
                if not d: break
                c.sendall(d)
        except OSError: pass
        c.close()

def session(p):
    with socket.create_connection(("127.0.0.1", p), timeout=5) as c:
        c.sendall(b"x" * 100 + b"\n"); got = b""
        while len(got) < 101:
            d = c.recv(4096)
            if not d: break
            got += d
        assert got == b"x" * 100 + b"\n", got

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])

def fds(pid): return len(os.listdir(f"/proc/{pid}/fd"))

main_port = port()
procs.append(subprocess.Popen([f"{tools}/duplicator-testserver", "-l", f"127.0.0.1:{main_port}", "-q"]))
a, b = Mirror(), Mirror()
config = f"{work}/duplicator.yaml"
log = f"{work}/stderr.log"
sets = [[f"127.0.0.1:{a.port}"], [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}@50%"], [f"127.0.0.1:{b.port}"], []]
def write(mirrors):
    with open(config + ".new", "w") as f:
        f.write(f"forward: 127.0.0.1:{main_port}\nmirror-linger: 200ms\nmirror: [{', '.join(repr(m) for m in mirrors)}]\n")
    os.rename(config + ".new", config)
write(sets[0])
proxy_port = port()
proxy = subprocess.Popen([f"{tools}/duplicator", "-l", f"127.0.0.1:{proxy_port}", "--config", config, "--threads", "2",
                          "--backend", backend], stderr=open(log, "w"))
procs.append(proxy)
try:
    for _ in range(100):
        try: socket.create_connection(("127.0.0.1", proxy_port), 1).close(); break
        except OSError: time.sleep(0.1)
    def reload_lines(): return sum(1 for l in open(log) if "SIGHUP: " in l)
    def reload(mirrors):
        before = reload_lines(); write(mirrors); proxy.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while reload_lines() == before:
            if time.monotonic() > deadline: sys.exit("no reload line in 10 s")
            time.sleep(0.001)
    for i in range(5): session(proxy_port)
    time.sleep(0.5)
    print(f"reloads 0: RSS {rss_kib(proxy.pid)} KiB, {fds(proxy.pid)} descriptors", flush=True)
    start = time.monotonic()
    for i in range(1, reloads + 1):
        reload(sets[i % len(sets)])
        if i % 10 == 0:
            for _ in range(3): session(proxy_port)
        if i in (10, 100, 250, 500, 750) or i == reloads:
            time.sleep(0.5)  # mirrors lingering after their sessions close
            print(f"reloads {i}: RSS {rss_kib(proxy.pid)} KiB, {fds(proxy.pid)} descriptors "
                  f"({(time.monotonic() - start) / i * 1000:.2f} ms per reload with its wait)", flush=True)
    failed = sum(1 for l in open(log) if "SIGHUP: " in l and "reloaded" not in l)
    print(f"{reloads} reloads, {failed} refused")

    # SIGHUP -> first session on the new configuration.
    latencies = []
    for trial in range(20):
        reload([])
        for _ in range(3): session(proxy_port)
        write([f"127.0.0.1:{a.port}"])
        seen = len(a.accepted)
        t0 = time.monotonic(); proxy.send_signal(signal.SIGHUP)
        while len(a.accepted) == seen:
            session(proxy_port)
            if time.monotonic() - t0 > 10: sys.exit("the new mirror saw no session in 10 s")
        latencies.append((a.accepted[seen] - t0) * 1000)
        while reload_lines() < 2 * (trial + 1) + reloads: time.sleep(0.001)
    latencies.sort()
    print(f"SIGHUP -> first session at the new mirror, 20 trials: median {latencies[10]:.2f} ms, "
          f"min {latencies[0]:.2f} ms, max {latencies[-1]:.2f} ms")
finally:
    for p in procs: p.send_signal(signal.SIGTERM)
    for p in procs:
        try: p.wait(10)
        except subprocess.TimeoutExpired: p.kill()
