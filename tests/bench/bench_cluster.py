#!/usr/bin/env python3
"""The front's cost: uploads through nginx (deploy/cluster) against straight to the
node behind it, same run, same load, interleaved (docs/PERFORMANCE.md, "A cluster").

    make bench-cluster
    tests/bench/bench_cluster.py --bnstatd src/bnstatd [--seconds S] [--pairs P]
        [--conns C] [--channels N] [--layers L]

`deploy/cluster/up 1` starts one node and nginx in front of it. Cells
alternate: direct, front, direct, front, ...; in each, C client threads
(one keep-alive connection each, workers w0..w(C-1)) upload one run's
batches, steps advancing (every worker on a step, then the next), for S
seconds. Per cell: uploads/s, and the CPU of bnstatd and of nginx (master
and workers, from /proc) per upload. The clients run on the same machine
and take CPU too: compare the two targets, not the absolute figures with
the C ingest bench. Prints a Markdown table.
"""

import argparse
import base64
import http.client
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import free_port  # noqa: E402

CLUSTER = os.path.join(HERE, "..", "..", "deploy", "cluster")
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            with open("/proc/%d/stat" % pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])   # utime, stime
        except OSError:
            pass
    return total / TICK


def children(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except OSError:
                pass
    return out


def b64_f32(values):
    return {"dtype": "f32", "b64": base64.b64encode(struct.pack("<%df" % len(values),
                                                                  *values)).decode()}


def bodies(layers, channels, n=8):
    rng = random.Random(7)
    out = []
    for _ in range(n):
        doc = {}
        for i in range(layers):
            doc["layer%02d.bn" % i] = {
                "count": 1024,
                "mean": b64_f32([rng.gauss(0, 1) for _ in range(channels)]),
                "var": b64_f32([rng.uniform(0.5, 2) for _ in range(channels)])}
        out.append(doc)
    return out


class Load:
    """C workers uploading steps of one run to a port; steps go on across cells."""

    def __init__(self, conns, variants):
        self.conns = conns
        self.variants = variants
        self.step = 0
        self.lock = threading.Lock()

    def cell(self, port, seconds):
        done = [0] * self.conns
        errors = []
        barrier = threading.Barrier(self.conns)
        stop = time.monotonic() + seconds

        def worker(w):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            step = self.step
            try:
                while time.monotonic() < stop:
                    step += 1
                    doc = {"worker": "w%d" % w, "step": step, "seq": 0,
                           "layers": self.variants[(step + w) % len(self.variants)]}
                    body = json.dumps(doc)
                    conn.request("POST", "/v1/runs/bench/batches", body,
                                 {"Content-Type": "application/json"})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        errors.append(r.status)
                        return
                    done[w] += 1
                    barrier.wait(60)   # every worker on a step, then the next
            except threading.BrokenBarrierError:
                pass
            finally:
                barrier.abort()
                conn.close()
                with self.lock:
                    self.step = max(self.step, step)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(self.conns)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise SystemExit("uploads refused: %r" % errors[:5])
        return sum(done)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bnstatd", default=os.environ.get("BNSTATD", "src/bnstatd"))
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--layers", type=int, default=20)
    ap.add_argument("--channels", type=int, default=256)
    a = ap.parse_args()
    os.environ["BNSTATD"] = os.path.abspath(a.bnstatd)   # for deploy/cluster/up

    d = tempfile.mkdtemp(prefix="bnstat-bench-cluster-")
    port = free_port()
    try:
        r = subprocess.run([os.path.join(CLUSTER, "up"), "1", str(port), d],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise SystemExit("up failed: " + r.stderr)
        with open(os.path.join(d, "nodes")) as f:
            node_port = int(f.read().split()[1].rsplit(":", 1)[1])
        with open(os.path.join(d, "node-1.pid")) as f:
            node_pid = int(f.read())
        with open(os.path.join(d, "nginx.pid")) as f:
            nginx_pid = int(f.read())
        nginx_pids = [nginx_pid] + children(nginx_pid)
        variants = bodies(a.layers, a.channels)
        size = len(json.dumps({"worker": "w0", "step": 1, "seq": 0, "layers": variants[0]}))
        load = Load(a.conns, variants)
        load.cell(node_port, 1.0)   # warm up: the run, the layers
        rows = []
        for i in range(2 * a.pairs):
            target, p = (("direct", node_port) if i % 2 == 0 else ("nginx", port))
            c0, n0, t0 = cpu_seconds([node_pid]), cpu_seconds(nginx_pids), time.monotonic()
            n = load.cell(p, a.seconds)
            t1 = time.monotonic()
            c1, n1 = cpu_seconds([node_pid]), cpu_seconds(nginx_pids)
            rows.append((target, n / (t1 - t0), 1e3 * (c1 - c0) / n, 1e3 * (n1 - n0) / n))
            sys.stderr.write("%s: %.0f uploads/s\n" % (target, rows[-1][1]))
        print("`%s` (%d layers x %d channels, %d-byte JSON bodies, %d connections, "
              "%.0f s cells, interleaved; %s, %d cores)\n"
              % (" ".join(["bench_cluster.py"] + [x for x in sys.argv[1:]
                                                  if x != a.bnstatd and x != "--bnstatd"]), a.layers, a.channels, size,
                 a.conns, a.seconds, os.uname().machine, os.cpu_count()))
        print("| cell | target | uploads/s | bnstatd CPU ms/upload | nginx CPU ms/upload |")
        print("|--:|---|--:|--:|--:|")
        for i, (target, rate, cn, cx) in enumerate(rows):
            print("| %d | %s | %.0f | %.3f | %.3f |" % (i + 1, target, rate, cn, cx))
        for target in ("direct", "nginx"):
            rs = [r for r in rows if r[0] == target]
            print("| mean | %s | %.0f | %.3f | %.3f |"
                  % (target, sum(r[1] for r in rs) / len(rs), sum(r[2] for r in rs) / len(rs),
                     sum(r[3] for r in rs) / len(rs)))
    finally:
        subprocess.run([os.path.join(CLUSTER, "down"), d], capture_output=True, timeout=60)
        shutil.rmtree(d, True)


if __name__ == "__main__":
    main()
