#!/usr/bin/env python3
"""Storage of a whole run: bytes per step with bounded history.

Starts bnstatd on a fresh database in a temporary directory, uploads a run
of --steps steps (--layers layers of --channels channels, --workers
workers each reporting its own float32 EMA, one batch per worker and step,
float32 statistics as training sends them), waits until the daemon has
bucketed everything that is due, stops it and reports, as counts that no
machine noise moves:

  * stored entries per layer (per-step rows and buckets) against the steps;
  * the run's `bytes` (GET /v1/runs/{run}: its stored arrays) and the
    database file, per channel;
  * those per-channel figures scaled to a ResNet-50 run (26,560 channels)
    of the same steps and workers: the pages of the tables that hold
    arrays scale with the channels, the rest of the file (batch
    identities, indexes) does not and is added as measured.

The stored arrays are linear in the channel count (per entry: 5 doubles
per channel for the aggregate, 2 floats per channel per worker EMA, 2
doubles per channel per kept momentum at a bucket end), so the per-channel
figure of a small shape is the one of a large one; the rows of larger
layers (up to 2,048 channels, 80 KB) spill into overflow pages, which
waste a little more than the 512-channel rows measured here.

Usage:
  tests/bench/bench_history.py --bnstatd src/bnstatd [--steps 100000]
      [--layers 1] [--channels 32] [--workers 8] [--history-full-steps 5000]
      [--conns 8] [--keep]
"""

import argparse
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import b64_f32, free_port

RESNET50_CHANNELS = 26560


class Client:
    def __init__(self, port):
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def request(self, method, path, body=None):
        for attempt in range(3):
            try:
                self.conn.request(method, path, body=body,
                                  headers={"Content-Type": "application/json"} if body else {})
                r = self.conn.getresponse()
                data = r.read()
                return r.status, json.loads(data) if data else None
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                if attempt == 2:
                    raise


def upload(args, port, jobs, errors, body_bytes):
    c = Client(port)
    rng = random.Random(len(jobs))
    while True:
        try:
            worker, step = jobs.pop()
        except IndexError:
            return
        layers = {}
        for l in range(args.layers):
            mean = [rng.gauss(0.0, 1.0) for _ in range(args.channels)]
            var = [rng.uniform(0.5, 2.0) for _ in range(args.channels)]
            ema_m = [rng.gauss(0.0, 1.0) for _ in range(args.channels)]
            ema_v = [rng.uniform(0.5, 2.0) for _ in range(args.channels)]
            layers["layer%d.bn" % l] = {"count": 200704, "mean": b64_f32(mean),
                                        "var": b64_f32(var), "ema_mean": b64_f32(ema_m),
                                        "ema_var": b64_f32(ema_v)}
        doc = {"worker": "rank%d" % worker, "step": step, "seq": 0, "layers": layers}
        data = json.dumps(doc).encode()
        body_bytes.append(len(data))
        st, body = c.request("POST", "/v1/runs/bench/batches", data)
        if st != 200:
            errors.append((st, body))
            return


def proc_write_bytes(pid):
    """Bytes the process caused to be written to storage (/proc/PID/io)."""
    with open("/proc/%d/io" % pid) as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def file_split(db):
    """(bytes of the pages of the tables holding arrays, bytes of every other page).

    The array tables grow with the channel count; the rest (batch identities,
    indexes, the schema, free pages) with the number of uploads and rows only.
    Reads SQLite's dbstat table (Debian's SQLite has it).
    """
    import sqlite3
    con = sqlite3.connect(db)
    try:
        total = con.execute("PRAGMA page_count").fetchone()[0] * \
            con.execute("PRAGMA page_size").fetchone()[0]
        arrays = con.execute("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name IN"
                             " ('aggs', 'emas', 'sim_states')").fetchone()[0]
    finally:
        con.close()
    return arrays, total - arrays


def tier_rows(steps, h):
    """Entries per layer the tier rule leaves for steps 1..steps (docs/API.md, "History")."""
    if h <= 0:
        return steps
    latest = steps
    ends = set()
    for s in range(1, steps + 1):
        width = 1
        for t in range(1, 7):
            w = 10 ** t
            e = -(-s // w) * w
            if latest - e >= t * h:
                width = w
        ends.add(-(-s // width) * width if width > 1 else ("s", s))
    return len(ends)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bnstatd", required=True)
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--history-full-steps", type=int, default=5000)
    ap.add_argument("--conns", type=int, default=8)
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory (database and log) and print it")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="bnstat-bench-history-")
    db = os.path.join(tmp, "bench.db")
    port = free_port()
    cmd = [args.bnstatd, "--db", db, "--listen", "127.0.0.1:%d" % port,
           "--history-full-steps", str(args.history_full_steps), "--synchronous", "normal",
           "--log-level", "warn"]
    log = open(os.path.join(tmp, "bnstatd.log"), "w")
    proc = subprocess.Popen(cmd, stderr=log)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    sys.exit("bnstatd did not start; see %s" % log.name)
                time.sleep(0.05)
        # steps in order, every worker of a step before the next (as training does)
        jobs = [(w, s) for s in range(args.steps, 0, -1) for w in range(args.workers)]
        errors, body_bytes = [], []
        t0 = time.monotonic()
        threads = [threading.Thread(target=upload, args=(args, port, jobs, errors, body_bytes))
                   for _ in range(args.conns)]
        for t in threads:
            t.start()
        last = time.monotonic()
        while any(t.is_alive() for t in threads):
            time.sleep(0.5)
            if time.monotonic() - last > 10:
                last = time.monotonic()
                done = args.steps * args.workers - len(jobs)
                sys.stderr.write("uploaded %d of %d (%.0f/s)\n" % (
                    done, args.steps * args.workers, done / (last - t0)))
        for t in threads:
            t.join()
        if errors:
            sys.exit("upload refused: %r" % (errors[:3],))
        upload_s = time.monotonic() - t0
        c = Client(port)
        want = (args.steps - args.history_full_steps) // 10 * 10
        deadline = time.monotonic() + 600
        while True:
            st, run = c.request("GET", "/v1/runs/bench")
            through = run["domains"][0]["bucketed_through"] if run["domains"] else None
            if args.history_full_steps <= 0 or want <= 0 or through == want:
                break
            if time.monotonic() > deadline:
                sys.exit("bucketing did not catch up: bucketed_through=%r, want %d" % (
                    through, want))
            time.sleep(0.2)
        entries = run["domains"][0]["steps"]
        run_bytes = run["bytes"]
        st, series = c.request("GET", "/v1/runs/bench/series?layer=layer0.bn&channel=0")
        written = proc_write_bytes(proc.pid)   # before the final checkpoint on stop
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        files = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)
                    if f.startswith("bench.db"))
        array_pages, other_pages = file_split(db)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    ch = args.layers * args.channels
    expected_rows = tier_rows(args.steps, args.history_full_steps)
    print("# bnstat bench_history\n")
    print("`%s`\n" % " ".join(sys.argv))
    print("| quantity | value |\n|---|--:|")
    print("| steps uploaded | %d |" % args.steps)
    print("| workers (each with its EMA) | %d |" % args.workers)
    print("| channels (layers x channels) | %d |" % ch)
    print("| history-full-steps | %d |" % args.history_full_steps)
    print("| uploads, seconds | %d, %.0f |" % (args.steps * args.workers, upload_s))
    print("| stored entries (distinct steps and buckets) | %d |" % entries)
    print("| entries the tier rule predicts | %d |" % expected_rows)
    print("| series points of one channel | %d |" % len(series["step"]))
    print("| run bytes (stored arrays) | %d |" % run_bytes)
    print("| database files after stop | %d |" % files)
    print("| run bytes per channel | %.0f |" % (run_bytes / ch))
    print("| database bytes per channel | %.0f |" % (files / ch))
    print("| pages of the array tables (aggs, emas, sim_states) | %d |" % array_pages)
    print("| every other page (identities, indexes, schema, free) | %d |" % other_pages)
    print("| run bytes per channel per entry | %.1f |" % (run_bytes / ch / entries))
    uploads = args.steps * args.workers
    mean_body = sum(body_bytes) / max(1, len(body_bytes))
    # a body's statistics as safetensors f32 would take: 4 arrays of floats + a count
    st_body = args.layers * (4 * 4 * args.channels + 8)
    print("| bytes written by bnstatd (write_bytes) per upload | %.0f |" % (written / uploads))
    print("| ... per byte of the JSON body (%.0f bytes) | %.2f |" % (mean_body,
                                                                    written / uploads / mean_body))
    print("| ... per byte of the same statistics as f32 safetensors (%d bytes) | %.2f |" % (
        st_body, written / uploads / st_body))
    print()
    gb = 1e9
    print("Scaled to ResNet-50 (%d channels), same steps and workers:\n" % RESNET50_CHANNELS)
    print("| measure | GB |\n|---|--:|")
    print("| stored arrays | %.1f |" % (run_bytes / ch * RESNET50_CHANNELS / gb))
    print("| database file: array pages scaled, the rest as measured | %.1f |" % (
        (array_pages / ch * RESNET50_CHANNELS + other_pages) / gb))
    per_step = (5 * 8 + args.workers * 2 * 8) * RESNET50_CHANNELS
    print("| every step kept, doubles (before bounded history) | %.1f |" % (
        per_step * args.steps / gb))
    if args.keep:
        print("\nkept: %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
