"""The open steps' memory stays within its budget (docs/OPERATIONS.md, "Memory").

1,000 runs are open at once: the writer is held (a foreign write lock on the
database) while 1,000 uploads, each the first step of its own run, queue
up, and then commits them in one group. Without a bound the writer would
cache the aggregate of every one of them (40 bytes per channel each: 410 MB
here); with --open-steps-mb 32 it writes them early past 32 MiB. The
daemon's peak RSS (VmHWM) must stay under its RSS before the uploads plus
the budget plus what the queued uploads themselves hold (their bodies and
decoded arrays) plus a fixed allowance; every upload must be stored.
"""

import base64
import os
import socket
import struct
import threading
import time
import unittest

from bnstat_testlib import (BNSTATD, HOST, Daemon, TestCaseMixin, encode_doc, instrumented,
                            split_http_reply)
from ops_testlib import WriteLock

RUNS = 1000
LAYERS = 20
CHANNELS = 512
BUDGET_MB = 32
FIXED_MB = 64   # SQLite caches, thread stacks, allocator slack


def vm_kb(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


def f32(values):
    return {"dtype": "f32", "b64": base64.b64encode(struct.pack("<%df" % len(values),
                                                                  *values)).decode()}


def upload_bytes(run, k):
    mean = f32([0.001 * (k % 97) + 0.01 * c for c in range(CHANNELS)])
    var = f32([1.0 + 0.001 * c for c in range(CHANNELS)])
    doc = {"worker": "w0", "step": 1, "seq": 0,
           "layers": {"l%d.bn" % l: {"count": 64, "mean": mean, "var": var}
                      for l in range(LAYERS)}}
    body = encode_doc(doc)
    head = ("POST /v1/runs/%s/batches HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json"
            "\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % (run, HOST, len(body)))
    return head.encode() + body, len(body)


class TestOpenStepsBudget(TestCaseMixin, unittest.TestCase):

    def test_one_thousand_runs_open_at_once(self):
        d = Daemon("--open-steps-mb", BUDGET_MB, "--group-max", 2000, "--queue-max", 2000,
                   "--max-connections", 2000, "--max-connections-per-ip", 0)
        self.addCleanup(d.close)
        d.start()
        st, body, _ = d.post_batch("warm", {"worker": "w0", "step": 1, "seq": 0, "layers": {
            "l0.bn": {"count": 64, "mean": [0.0] * CHANNELS, "var": [1.0] * CHANNELS}}})
        self.assertEqual(st, 200, body)
        base_kb = vm_kb(d.proc.pid, "VmRSS")
        socks, body_len = [], 0
        # the write lock lives on a thread of its own, held at most 5 s: the
        # writer's busy timeout is 10 s, and sending 1,000 uploads may take
        # longer than that on a slow (sanitizer) build
        locked, done = threading.Event(), threading.Event()

        def hold():
            lock = WriteLock(d.db)
            locked.set()
            done.wait(5.0)
            lock.release()
        holder = threading.Thread(target=hold)
        holder.start()
        try:
            self.assertTrue(locked.wait(10), "could not take the write lock")
            for k in range(RUNS):
                data, body_len = upload_bytes("run%04d" % k, k)
                s = socket.create_connection((HOST, d.port), timeout=60)
                s.sendall(data)
                socks.append(s)
            # until every upload is decoded and queued at the writer, or the lock is gone
            while holder.is_alive():
                st, text, _ = d.get_raw("/metrics")
                depth = [l for l in text.decode().splitlines()
                         if l.startswith("bnstat_queue_depth ")]
                if depth and int(float(depth[0].split()[1])) >= RUNS - 1:
                    break
                time.sleep(0.05)
        finally:
            done.set()
            holder.join()
        replies = []
        for s in socks:
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
            s.close()
            head, _ = split_http_reply(b"".join(chunks))
            replies.append(int(head.split(" ", 2)[1]) if head.startswith("HTTP/") else None)
        statuses = replies
        self.assertEqual(statuses.count(200), RUNS, sorted(set(statuses)))
        hwm_kb = vm_kb(d.proc.pid, "VmHWM")
        ch = LAYERS * CHANNELS
        queued_mb = RUNS * (body_len + ch * 2 * 8) / 2**20   # bodies and decoded mean/var
        unbounded_mb = RUNS * ch * 40 / 2**20
        bound_mb = base_kb / 1024 + BUDGET_MB + queued_mb + FIXED_MB
        self.assertLess(bound_mb, base_kb / 1024 + queued_mb + unbounded_mb,
                        "the bound must be one an unbounded cache would break")
        # the plain build (make check) holds the bound; in the sanitizer builds
        # only that nothing is lost is checked
        if not instrumented(BNSTATD):
            self.assertLess(
                hwm_kb / 1024, bound_mb,
                "peak RSS %.0f MB over budget: base %.0f + open steps %d + queued %.0f"
                " + fixed %d (unbounded the cache alone would take %.0f MB)"
                % (hwm_kb / 1024, base_kb / 1024, BUDGET_MB, queued_mb, FIXED_MB,
                   unbounded_mb))
        # and nothing was lost on the way: every run holds its batch
        for k in (0, 1, RUNS // 2, RUNS - 1):
            st, body, _ = d.get("/v1/runs/run%04d/stats" % k)
            self.assertEqual(st, 200, body)
            self.assertEqual(len(body["layers"]), LAYERS)
            self.assertEqual(body["layers"]["l3.bn"]["count"], 64)


if __name__ == "__main__":
    unittest.main()
