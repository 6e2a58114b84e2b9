#!/usr/bin/env python3
"""The momentum advisor over a long run: GET /v1/runs/{run}/momentum.

Fills a run of --steps steps of ResNet-50-shaped statistics (the 53
BatchNorm layers of tests/bench/bench_model.c, 26,560 channels) from
--workers workers, one batch per worker and step, every worker on its own
connection and all of them at one step at a time (a barrier between
steps, as in training); safetensors bodies of float32 statistics with a
slow drift, no EMAs (the advisor reads none). The daemon keeps every step
(--history-full-steps at least --steps) with --synchronous normal.

Then restarts the daemon on the same database (so that no replay state
sits in its memory) and times, --reps times each, one request at a time:

  * momentum                       the defaults: six momenta, window auto
                                   (100 batches: ceil(100 / workers) steps), 200 points
  * momentum?window=1              a one-step window
  * momentum?momenta=0.1           one momentum

and reports the median and the largest wall time, the daemon's CPU time
and its peak resident memory (VmHWM, since the restart).

Usage:
  tests/bench/bench_momentum.py --bnstatd src/bnstatd [--steps 10000]
      [--workers 8] [--reps 3] [--db FILE [--no-fill]] [--tmpdir DIR]
"""

import argparse
import http.client
import json
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "clients", "python"))
from bench_history import free_port  # noqa: E402
from benchlib import add_db_args, db_paths  # noqa: E402
from bnstat.safetensors import encode_upload  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
procs = []  # every daemon started, killed on the way out if still running
RUN = "bench-momentum"


class Conn:
    """One kept-alive connection to the daemon."""

    def __init__(self, port, timeout=900):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def request(self, method, path, body=None):
        headers = {"Content-Type": "application/octet-stream"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        data = r.read()
        return r.status, json.loads(data) if data else None


def resnet50():
    """[(name, channels, count)] from bench_model.c's table (count = 32·H·W)."""
    with open(os.path.join(HERE, "bench_model.c")) as f:
        rows = re.findall(r'\{ "([^"]+)", (\d+), (\d+), 0, 0 \}', f.read())
    layers = [(name, int(c), 32 * int(r) * int(r)) for name, c, r in rows]
    assert len(layers) == 53 and sum(c for _, c, _ in layers) == 26560, len(layers)
    return layers


def start(args, db, log):
    port = free_port()
    cmd = [args.bnstatd, "--db", db, "--listen", "127.0.0.1:%d" % port, "--synchronous",
           "normal", "--history-full-steps", str(max(args.steps, 5000))]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    procs.append(proc)
    deadline = time.monotonic() + 60
    c = Conn(port)
    while True:
        try:
            st, _ = c.request("GET", "/healthz")
            if st == 200:
                return proc, c
        except (OSError, http.client.HTTPException):
            c.conn.close()
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("bnstatd did not start (see %s)" % log.name)
        time.sleep(0.1)


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    if proc.wait(timeout=300) != 0:
        raise SystemExit("bnstatd exited %d" % proc.returncode)


def fill(args, port, layers):
    barrier = threading.Barrier(args.workers)
    errors = []
    rng = np.random.default_rng(7)
    base = [(rng.standard_normal(c).astype(np.float32),
             rng.uniform(0.5, 2.0, c).astype(np.float32)) for _, c, _ in layers]

    def worker(w):
        c = Conn(port)
        noise = np.random.default_rng(100 + w)
        for step in range(args.steps):
            drift = np.float32(0.001 * step)
            up = {}
            for (name, ch, count), (m, v) in zip(layers, base):
                jitter = noise.standard_normal(1).astype(np.float32)[0] * np.float32(0.05)
                up[name] = {"count": count, "mean": (m + drift + jitter).tobytes(),
                            "var": (v * np.float32(1.0 + 0.5 * math.sin(step / 500.0))).tobytes()}
            body = encode_upload("rank%d" % w, step, 0, up)
            st, reply = c.request("POST", "/v1/runs/%s/batches" % RUN, body)
            if st != 200:
                errors.append((w, step, st, reply))
                barrier.abort()
                return
            if step % 1000 == 999 and w == 0:
                print("filled %d steps" % (step + 1), file=sys.stderr)
            try:
                barrier.wait()
            except threading.BrokenBarrierError:
                return

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(args.workers)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit("upload failed: %r" % (errors[0],))
    return time.monotonic() - t0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_hwm_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bnstatd", required=True)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    add_db_args(ap)
    args = ap.parse_args()
    layers = resnet50()
    tmp, db = db_paths(args, "bench-momentum-")
    if not args.no_fill:
        need = args.steps * 26560 * 5 * 8 * 2.2
        free = shutil.disk_usage(os.path.dirname(os.path.abspath(db))).free
        if free < need:
            raise SystemExit("needs about %.1f GB free next to %s, has %.1f GB"
                             % (need / 1e9, db, free / 1e9))
    log = open(os.path.join(tmp, "bnstatd.log"), "w")
    try:
        if not args.no_fill:
            proc, c = start(args, db, log)
            secs = fill(args, c.port, layers)
            print("fill: %d steps x %d workers in %.0f s" % (args.steps, args.workers, secs),
                  file=sys.stderr)
            stop(proc)
        proc, c = start(args, db, log)
        queries = [("momentum (defaults: 6 momenta, window auto, 200 points)", {}),
                   ("momentum?window=1", {"window": 1}),
                   ("momentum?momenta=0.1", {"momenta": "0.1"})]
        print("| query | median s | max s | server CPU s (median) |")
        print("|---|--:|--:|--:|")
        for what, params in queries:
            path = "/v1/runs/%s/momentum?" % RUN + "&".join(
                "%s=%s" % kv for kv in params.items())
            walls, cpus = [], []
            for _ in range(args.reps):
                c0, t0 = cpu_seconds(proc.pid), time.monotonic()
                st, body = c.request("GET", path)
                walls.append(time.monotonic() - t0)
                cpus.append(cpu_seconds(proc.pid) - c0)
                if st != 200:
                    raise SystemExit("%s: %d %r" % (path, st, body))
            print("| `%s` | %.2f | %.2f | %.2f |" % (what, statistics.median(walls), max(walls),
                                                   statistics.median(cpus)))
            if not params:
                print("  steps %d, best %r, kl %s" % (
                    body["steps"], body["best"],
                    ", ".join("%g: %.4g" % (m["momentum"], m["kl"]) for m in body["momenta"])),
                    file=sys.stderr)
        print("\npeak resident memory of the daemon since its restart: %.0f MB"
              % vm_hwm_mb(proc.pid))
        stop(proc)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
