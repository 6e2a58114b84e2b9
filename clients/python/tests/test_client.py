"""Tests of bnstat.Client, the safetensors encoder and the command line
against a real bnstatd (env BNSTATD). Standard library only (numpy is used
when present, for one test).

    BNSTATD=$PWD/src/bnstatd PYTHONPATH=clients/python \
        python3 clients/python/tests/test_client.py -v
"""

import array
import base64
import http.server
import json
import math
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from fractions import Fraction

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the bnstat package of this tree
from bnstatd_fixture import Daemon, bnstatd_path, daemon_has_option  # noqa: E402

bnstatd_path()  # exit 1 with a clear message when BNSTATD is unset

from bnstat import BnstatError, Client  # noqa: E402
from bnstat import safetensors as st  # noqa: E402

PYTHONPATH = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def exact_population(batches):
    """Exact (Fraction) population mean and biased variance per channel of
    batches given as (count, means, unbiased vars), rounded once to floats."""
    C = len(batches[0][1])
    out_m, out_v = [], []
    for c in range(C):
        n = 0
        s = Fraction(0)
        for count, m, _ in batches:
            n += count
            s += count * Fraction(m[c])
        mean = s / n
        m2 = Fraction(0)
        for count, m, v in batches:
            m2 += Fraction(v[c]) * (count - 1) + count * (Fraction(m[c]) - mean) ** 2
        out_m.append(float(mean))
        out_v.append(float(m2 / n))
    return out_m, out_v


def close(a, b, rel=1e-12):
    return all(abs(x - y) <= rel * max(1.0, abs(x), abs(y)) for x, y in zip(a, b)) and len(a) == len(b)


def compare_metrics(ema_mean, ema_var, ref_mean, ref_var, eps=1e-5):
    """docs/API.md "Comparison": per layer the mean and the maximum over channels."""
    per = {"mean_err": [], "var_err": [], "kl": []}
    for em, ev, pm, pv in zip(ema_mean, ema_var, ref_mean, ref_var):
        pv, ev = pv + eps, ev + eps
        per["mean_err"].append(abs(em - pm) / math.sqrt(pv))
        per["var_err"].append(abs(math.log(ev / pv)))
        per["kl"].append(0.5 * (math.log(ev / pv) + (pv + (pm - em) ** 2) / ev - 1))
    out = {}
    for k, v in per.items():
        out[k] = sum(v) / len(v)
        out[k + "_max"] = max(v)
    return out


# the EMAs of run "ranks" (CliTests) and "ref" (ServerTests): worker -> layer -> (mean, var)
RANK_EMAS = {
    "rank0": {"conv.bn": ([0.5, -1.0], [1.0, 0.25]), "head.bn": ([2.0], [4.0])},
    "rank1": {"conv.bn": ([0.7, -1.1], [1.2, 0.25]), "head.bn": ([2.5], [3.0])},
    "rank2": {"conv.bn": ([0.1, -0.2], [0.9, 0.5]), "head.bn": ([2.1], [4.1])},
}
RANK_BATCHES = {"conv.bn": (16, [0.4, -0.9], [1.1, 0.3]), "head.bn": (8, [2.2], [3.5])}


def upload_ranks(c, run):
    """Step 5 of `run`: one batch per worker with RANK_EMAS; returns the
    snapshot "s" of that step (the reference's values)."""
    for w, emas in sorted(RANK_EMAS.items()):
        layers = {}
        for name, (count, mean, var) in RANK_BATCHES.items():
            layers[name] = {"count": count, "mean": [m + 0.01 * len(w) for m in mean],
                            "var": var, "ema_mean": emas[name][0], "ema_var": emas[name][1]}
        c.upload(run, w, 5, 0, layers, dtype="f64")
    return c.snapshot_create(run, "s", step=5)


# --------------------------------------------------------------------------
# a tiny safetensors reader, independent of bnstat.safetensors


def read_safetensors(buf):
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    data = buf[8 + n:]
    meta = header.pop("__metadata__", {})
    sizes = {"F32": ("f", 4), "F64": ("d", 8), "I64": ("q", 8)}
    tensors = {}
    spans = []
    for name, info in header.items():
        code, size = sizes[info["dtype"]]
        b, e = info["data_offsets"]
        count = 1
        for d in info["shape"]:
            count *= d
        assert e - b == count * size, (name, info)
        tensors[name] = (info["dtype"], info["shape"],
                         list(struct.unpack("<%d%s" % (count, code), data[b:e])))
        spans.append((b, e))
    spans.sort()
    # contiguous, no holes, covering all the data
    pos = 0
    for b, e in spans:
        assert b == pos, spans
        pos = e
    assert pos == len(data), (pos, len(data))
    return n, meta, tensors


# --------------------------------------------------------------------------
# a scripted HTTP server, for retries and headers


class FakeServer:
    """Answers from a script: a list of (status, headers, body) consumed in
    order (the last one repeats); records (method, path, headers, body)."""

    def __init__(self, script):
        self.script = list(script)
        self.requests = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                fake.requests.append((self.command, self.path, dict(self.headers), body))
                status, headers, reply = fake.next(self)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_POST = _any

            def log_message(self, *a):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d" % self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def next(self, handler):
        item = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if callable(item):
            return item(handler)
        return item

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


OK = (200, {"Content-Type": "application/json"},
      b'{"accepted":true,"duplicate":false,"layers":1}')


def error_reply(status, code, message, path=None, headers=None):
    e = {"status": status, "code": code, "message": message}
    if path:
        e["path"] = path
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return (status, h, json.dumps({"error": e}).encode())


LAYER = {"bn": {"count": 4, "mean": [1.0, 2.0], "var": [2.0, 0.5]}}


# --------------------------------------------------------------------------


class ServerTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon().start()
        cls.c = Client(cls.d.url, retries=2, backoff=0.05)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def test_upload_and_stats_exact(self):
        c = self.c
        r = c.upload("exact", "rank0", 100, 0, {"bn": {"count": 4, "mean": [1.0, 2.0],
                                                      "var": [2.0, 0.5]}}, dtype="f64")
        self.assertEqual(r, {"accepted": True, "duplicate": False, "layers": 1})
        # array('d') input, and a layer unused in this batch (count 0, no arrays)
        r = c.upload("exact", "rank1", 100, 0, {
            "bn": {"count": 4, "mean": array.array("d", [3.0, 2.0]), "var": (2.0, 0.5)},
            "head": {"count": 0}}, dtype="f64")
        self.assertFalse(r["duplicate"])
        s = c.stats("exact")
        self.assertEqual(s["step"], 100)
        bn = s["layers"]["bn"]
        self.assertEqual((bn["count"], bn["batches"], bn["channels"]), (8, 2, 2))
        self.assertEqual(bn["mean"], [2.0, 2.0])
        self.assertEqual(bn["var"], [2.5, 0.375])
        self.assertNotIn("head", s["layers"])
        # parameters reach the server
        s = c.stats("exact", step=100, window=1, domain="default",
                    estimator="mean_of_batch_var", layers="bn")
        self.assertEqual(s["estimator"], "mean_of_batch_var")
        self.assertEqual(s["layers"]["bn"]["var"], [2.0, 0.5])

    def test_f32_default_rounds_and_f64_is_exact(self):
        third = 1.0 / 3.0
        self.c.upload("f32", "w", 1, 0, {"bn": {"count": 10, "mean": [third], "var": [third]}})
        self.c.upload("f32", "w", 2, 0, {"bn": {"count": 10, "mean": [third], "var": [third]}},
                      dtype="f64")
        s1 = self.c.stats("f32", step=1)["layers"]["bn"]
        s2 = self.c.stats("f32", step=2)["layers"]["bn"]
        self.assertEqual(s1["mean"], [f32(third)])
        self.assertEqual(s2["mean"], [third])
        self.assertEqual(s2["var"], [third * 9 / 10])

    def test_duplicate_is_counted_once_whatever_the_encoding(self):
        c = self.c
        lay = {"bn": {"count": 5, "mean": [0.5, -1.25], "var": [1.5, 0.25],
                      "ema_mean": [0.1, 0.2], "ema_var": [1.0, 1.0]}}
        self.assertFalse(c.upload("dup", "w", 3, 0, lay)["duplicate"])
        self.assertTrue(c.upload("dup", "w", 3, 0, lay)["duplicate"])
        # 0.5 etc. are exact in float32: the f64 form is the same content
        lay64 = dict(lay)
        lay64["bn"] = dict(lay["bn"], ema_mean=[f32(0.1), f32(0.2)])
        self.assertTrue(c.upload("dup", "w", 3, 0, lay64, dtype="f64")["duplicate"])
        s = c.stats("dup")["layers"]["bn"]
        self.assertEqual((s["batches"], s["count"]), (1, 5))
        self.assertEqual(c.run("dup")["batches"], 1)

    def test_conflict_409(self):
        self.c.upload("conflict", "w", 1, 0, LAYER)
        other = {"bn": {"count": 4, "mean": [1.0, 2.5], "var": [2.0, 0.5]}}
        with self.assertRaises(BnstatError) as cm:
            self.c.upload("conflict", "w", 1, 0, other)
        e = cm.exception
        self.assertEqual((e.status, e.code), (409, "conflict"))
        self.assertEqual(e.body["error"]["status"], 409)
        self.assertEqual(self.c.stats("conflict")["layers"]["bn"]["mean"], [1.0, 2.0])

    def test_errors_carry_the_server_error(self):
        bad = {"bn": {"count": 4, "mean": [1.0, 2.0], "var": [2.0, -0.5]}}
        with self.assertRaises(BnstatError) as cm:
            self.c.upload("errors", "w", 1, 0, bad)
        e = cm.exception
        self.assertEqual(e.status, 422)
        self.assertEqual(e.code, "invalid_value")
        # the path names the field in the form that was sent
        self.assertEqual(e.path, "bn.var[1]" if self.c.binary_supported else "layers.bn.var[1]")
        with self.assertRaises(BnstatError) as cm:
            Client(self.c.url, binary=False).upload("errors", "w", 1, 0, bad)
        self.assertEqual(cm.exception.path, "layers.bn.var[1]")
        self.assertTrue(e.message)
        self.assertEqual(e.body["error"]["code"], "invalid_value")
        self.assertIn("422", str(e))
        self.assertIn(e.path, str(e))
        # nothing stored: the run does not exist
        with self.assertRaises(BnstatError) as cm:
            self.c.run("errors")
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "not_found"))
        # a NaN travels in base64 (or safetensors) and is refused by the
        # server, which says where it is; other errors have no such account
        self.assertIsNone(e.nonfinite)
        for binary in (False, True):
            with self.assertRaises(BnstatError) as cm:
                Client(self.c.url, binary=binary).upload(
                    "errors", "w", 7, 0, {"bn": {"count": 4, "mean": [0.0, 1.0],
                                                 "var": [1.0, float("-inf")]}})
            self.assertEqual((cm.exception.status, cm.exception.code), (422, "invalid_value"))
            self.assertEqual(cm.exception.nonfinite, {"worker": "w", "step": 7, "layer": "bn",
                                                      "field": "var", "channel": 1})
            self.assertIn("non-finite var at step 7, layer bn, channel 1", str(cm.exception))
        # an unknown layer in stats
        self.c.upload("errors2", "w", 1, 0, LAYER)
        with self.assertRaises(BnstatError) as cm:
            self.c.stats("errors2", layers=["bn", "nope"])
        self.assertEqual(cm.exception.status, 404)
        # caught on the client: a typo in a layer key, a 2-D value
        with self.assertRaises(ValueError):
            self.c.upload("errors", "w", 1, 0, {"bn": {"count": 4, "mean": [1.0], "vars": [1.0]}})
        with self.assertRaises(ValueError):
            self.c.upload("errors", "w", 1, 0, {"bn": {"count": 4.5, "mean": [1.0], "var": [1.0]}})

    def test_unreachable_server(self):
        c = Client("http://127.0.0.1:1", retries=1, backoff=0.01, timeout=2)
        with self.assertRaises(BnstatError) as cm:
            c.runs()
        self.assertIsNone(cm.exception.status)
        self.assertEqual(cm.exception.code, "unreachable")

    def test_numpy_inputs(self):
        try:
            import numpy as np
        except ImportError:
            self.skipTest("numpy is not installed")
        self.c.upload("np", "w", 1, 0, {"bn": {"count": np.int64(4),
                                                "mean": np.array([1.0, 2.0], dtype=np.float32),
                                                "var": np.array([2.0, 0.5])}})
        self.assertEqual(self.c.stats("np")["layers"]["bn"]["mean"], [1.0, 2.0])
        with self.assertRaises(ValueError):
            self.c.upload("np", "w", 2, 0, {"bn": {"count": 4, "mean": np.zeros((2, 1)),
                                                    "var": np.ones(2)}})

    def test_runs_and_run(self):
        self.c.upload("listed", "rank0", 7, 0, LAYER)
        names = [r["name"] for r in self.c.runs()["runs"]]
        self.assertIn("listed", names)
        run = self.c.run("listed")
        self.assertEqual(run["workers"], [{"name": "rank0", "batches": 1, "last_step": 7}])
        self.assertEqual(run["layers"], [{"name": "bn", "channels": 2}])

    def test_runs_pages_and_iter_runs(self):
        c = self.c
        names = ["pg_%02d" % i for i in range(23)] + ["pgX0", "pg-0", "pg0"]
        for i, n in enumerate(names):
            c.upload(n, "w", i + 1, 0, LAYER)
        mine = sorted((n for n in names if n.startswith("pg_")), key=lambda n: n.encode())
        page = c.runs(prefix="pg_", limit=10)
        self.assertEqual([r["name"] for r in page["runs"]], mine[:10])
        self.assertEqual(page["next"], mine[9])
        page = c.runs(prefix="pg_", limit=10, after=page["next"])
        self.assertEqual([r["name"] for r in page["runs"]], mine[10:20])
        page = c.runs(prefix="pg_", limit=10, after=page["next"])
        self.assertEqual([r["name"] for r in page["runs"]], mine[20:])
        self.assertNotIn("next", page)
        for limit in (1, 7, 23, 1000, None):
            with self.subTest(limit=limit):
                got = list(c.iter_runs(prefix="pg_", limit=limit))
                self.assertEqual([r["name"] for r in got], mine)
        self.assertEqual([r["steps"]["max"] for r in c.iter_runs(prefix="pg_", limit=5)],
                         [names.index(n) + 1 for n in mine])
        # '_' is a character, not a wildcard: pgX0, pg-0 and pg0 are not under "pg_"
        self.assertEqual([r["name"] for r in c.iter_runs(prefix="pg", limit=4)],
                         sorted(names, key=lambda n: n.encode()))
        self.assertEqual([r["name"] for r in c.iter_runs(prefix="pg_", after="pg_20")],
                         ["pg_21", "pg_22"])
        self.assertEqual(c.runs(prefix="pg%")["runs"], [])
        for bad, status in (({"limit": 0}, 422), ({"limit": 10001}, 422), ({"limit": "x"}, 400),
                            ({"prefix": "p" * 129}, 422)):
            with self.subTest(bad=bad):
                with self.assertRaises(BnstatError) as cm:
                    c.runs(**bad)
                self.assertEqual(cm.exception.status, status)
                self.assertEqual(cm.exception.path, list(bad)[0])

    def test_delete_snapshot(self):
        c = self.c
        c.upload("snapdel", "w", 1, 0, {"bn": {"count": 4, "mean": [1.0, 2.0], "var": [2.0, 0.5]}},
                 dtype="f64")
        c.upload("snapdel", "w", 2, 0, {"bn": {"count": 4, "mean": [5.0, 6.0], "var": [1.0, 1.0]}},
                 dtype="f64")
        self.assertEqual(c.snapshot_create("snapdel", "final", step=1)["step"], 1)
        c.snapshot_create("snapdel", "other", step=2)
        self.assertIs(c.delete_snapshot("snapdel", "final"), True)
        with self.assertRaises(BnstatError) as cm:
            c.snapshot("snapdel", "final")
        self.assertEqual((cm.exception.status, cm.exception.path), (404, "label"))
        with self.assertRaises(BnstatError) as cm:
            c.delete_snapshot("snapdel", "final")
        self.assertEqual((cm.exception.status, cm.exception.path), (404, "label"))
        self.assertIs(c.delete_snapshot("snapdel", "final", missing_ok=True), False)
        with self.assertRaises(BnstatError) as cm:   # an unknown run is an error all the same
            c.delete_snapshot("no-such-run", "final", missing_ok=True)
        self.assertEqual((cm.exception.status, cm.exception.path), (404, "run"))
        # the label again, at the step that would have been a conflict
        again = c.snapshot_create("snapdel", "final", step=2)
        self.assertEqual((again["step"], again["layers"]["bn"]["mean"]), (2, [5.0, 6.0]))
        self.assertEqual(sorted(s["label"] for s in c.snapshots("snapdel")["snapshots"]),
                         ["final", "other"])

    def test_snapshots(self):
        c = self.c
        c.upload("snap", "w", 1, 0, {"bn": {"count": 4, "mean": [1.0, 2.0], "var": [2.0, 0.5]}})
        c.upload("snap", "w", 2, 0, {"bn": {"count": 2, "mean": [0.1, 0.2], "var": [0.3, 0.4]}},
                 dtype="f64")
        snap = c.snapshot_create("snap", "latest")  # nothing explicit: resolved by the server
        self.assertEqual((snap["label"], snap["step"], snap["window"]), ("latest", 2, 1))
        self.assertEqual(snap["layers"]["bn"]["mean"], [0.1, 0.2])
        # more data at a later step does not change a plain retry
        c.upload("snap", "w", 3, 0, LAYER)
        again = c.snapshot_create("snap", "latest")
        self.assertEqual(again, snap)
        with self.assertRaises(BnstatError) as cm:
            c.snapshot_create("snap", "latest", step=3)
        self.assertEqual(cm.exception.status, 409)
        both = c.snapshot_create("snap", "both", step=2, window=2, domain="default",
                                 estimator="population")
        m, v = exact_population([(4, [1.0, 2.0], [2.0, 0.5]), (2, [0.1, 0.2], [0.3, 0.4])])
        self.assertTrue(close(both["layers"]["bn"]["mean"], m), both)
        self.assertTrue(close(both["layers"]["bn"]["var"], v), both)
        self.assertEqual(c.snapshot("snap", "both"), both)
        labels = sorted(s["label"] for s in c.snapshots("snap")["snapshots"])
        self.assertEqual(labels, ["both", "latest"])
        with self.assertRaises(BnstatError) as cm:
            c.snapshot("snap", "nope")
        self.assertEqual(cm.exception.status, 404)
        # the safetensors export holds the same numbers
        for dtype, conv in (("f64", float), ("f32", f32)):
            n, meta, tensors = read_safetensors(c.snapshot_safetensors("snap", "both", dtype))
            self.assertEqual(tensors["bn.running_mean"][2], [conv(x) for x in both["layers"]["bn"]["mean"]])
            self.assertEqual(tensors["bn.running_var"][2], [conv(x) for x in both["layers"]["bn"]["var"]])
            self.assertEqual(tensors["bn.running_mean"][0], dtype.upper())
            decoded, meta2 = st.decode(c.snapshot_safetensors("snap", "both", dtype))
            self.assertEqual(list(decoded["bn.running_var"][2]), tensors["bn.running_var"][2])

    def test_compare_series_domains(self):
        c = self.c
        a = 0.1
        rm, rv = [0.0, 0.0], [1.0, 1.0]
        for step in range(1, 6):
            mean = [0.5 * step, -1.0 + step]
            var = [1.0 + 0.1 * step, 2.0]           # unbiased, count 4
            rm = [a * m + (1 - a) * r for m, r in zip(mean, rm)]
            rv = [a * v + (1 - a) * r for v, r in zip(var, rv)]
            c.upload("cmp", "w0", step, 0, {"bn": {"count": 4, "mean": mean, "var": var,
                                                    "ema_mean": list(rm), "ema_var": list(rv)}},
                     dtype="f64")
        c.upload("cmp", "w0", 5, 0, {"bn": {"count": 4, "mean": [9.0, 9.0], "var": [1.0, 1.0]}},
                 domain="other", dtype="f64")
        # the worker EMA reported equals the simulated one here, so both compare alike
        worker = c.compare("cmp", step=5, ema="worker", window=1)
        sim = c.compare("cmp", step=5, ema="sim", momentum=a, window=1)
        # the client's compare defaults to window=auto: 5 batches < 100, all history
        auto = c.compare("cmp", step=5)
        self.assertEqual((auto["requested_window"], auto["window"]), ("auto", 5))
        self.assertEqual(auto["layers"]["bn"]["batches"], 5)
        self.assertEqual(c.compare("cmp", step=5, window=None)["requested_window"], 1)
        self.assertEqual(worker["worker"], "w0")
        for key in ("mean_err", "var_err", "kl"):
            self.assertTrue(close([worker["layers"]["bn"][key]], [sim["layers"]["bn"][key]], 1e-9), key)
            self.assertEqual(worker["overall"][key], worker["layers"]["bn"][key])
        # mean_err by hand: |ema - precise| / sqrt(precise var + eps), precise var biased
        pv = [v * 3 / 4 for v in (1.5, 2.0)]
        ref = [abs(e - p) / math.sqrt(q + 1e-5) for e, p, q in zip(rm, (2.5, 4.0), pv)]
        self.assertTrue(close([worker["layers"]["bn"]["mean_err"]], [sum(ref) / 2], 1e-9))
        self.assertTrue(close([worker["layers"]["bn"]["mean_err_max"]], [max(ref)], 1e-9))
        ser = c.series("cmp", "bn", channel=1, momentum=a)
        self.assertEqual(ser["step"], [1, 2, 3, 4, 5])
        self.assertTrue(close([ser["sim_mean"][-1]], [rm[1]], 1e-12))
        self.assertTrue(close([ser["sim_var"][-1]], [rv[1]], 1e-12))
        self.assertEqual(ser["ema_mean"][-1], rm[1])
        doms = {d["name"]: d for d in c.domains("cmp")["domains"]}
        self.assertEqual(doms["default"]["steps"], 5)
        self.assertEqual(doms["other"]["batches"], 1)

    def test_compare_and_drift_with_a_reference(self):
        c = self.c
        snap = upload_ranks(c, "ref")
        # against the snapshot: its own mean and var are the reference
        doc = c.compare("ref", precise="snapshot:s", worker="rank1")
        self.assertEqual((doc["precise"], doc["snapshot"]["label"], doc["worker"]),
                         ("snapshot:s", "s", "rank1"))
        for name, (mean, var) in RANK_EMAS["rank1"].items():
            want = compare_metrics(mean, var, snap["layers"][name]["mean"],
                                   snap["layers"][name]["var"])
            for k, v in want.items():
                self.assertTrue(close([doc["layers"][name][k]], [v], 1e-9), (name, k))
        # against another worker, and a worker against itself
        doc = c.compare("ref", precise="worker:rank0", worker="rank2", layers="head.bn")
        self.assertEqual(list(doc["layers"]), ["head.bn"])
        want = compare_metrics(*(RANK_EMAS["rank2"]["head.bn"] + RANK_EMAS["rank0"]["head.bn"]))
        self.assertTrue(close([doc["layers"]["head.bn"]["kl"]], [want["kl"]], 1e-9))
        doc = c.compare("ref", precise="worker:rank0", worker="rank0")
        self.assertEqual({v for m in doc["layers"].values() for v in m.values()}, {0.0})
        # drift: the same numbers at every step (one here)
        dr = c.drift("ref", precise="snapshot:s", worker="rank1", points=10)
        self.assertEqual(dr["step"], [5])
        cmp = c.compare("ref", precise="snapshot:s", worker="rank1")
        for name in RANK_EMAS["rank1"]:
            self.assertEqual(dr["layers"][name]["kl"], [cmp["layers"][name]["kl"]])
        dr = c.drift("ref", precise="worker:rank0", worker="rank0", from_step=0, to_step=9)
        self.assertEqual(dr["overall"]["kl"], [0.0])
        # the server's errors name precise
        for call in (lambda: c.compare("ref", precise="snapshot:nope"),
                     lambda: c.drift("ref", precise="worker:nobody", worker="rank0")):
            with self.assertRaises(BnstatError) as cm:
                call()
            self.assertEqual((cm.exception.status, cm.exception.path), (404, "precise"))
        with self.assertRaises(BnstatError) as cm:
            c.compare("ref", precise="snapshot:s", window=2)
        self.assertEqual((cm.exception.status, cm.exception.path), (400, "window"))

    def test_momentum(self):
        c = self.c
        means = [[0.5 * s, 1.0 - 0.2 * s] for s in range(1, 9)]
        for step, mean in enumerate(means, 1):
            c.upload("mom", "w0", step, 0, {"bn": {"count": 4, "mean": mean, "var": [1.5, 2.0]}},
                     dtype="f64")

        def kl_at(a, upto, window):
            # the simulated EMA from 0/1, the precise window (biased var), kl per channel
            rm, rv = [0.0, 0.0], [1.0, 1.0]
            for mean in means[:upto]:
                rm = [a * m + (1 - a) * r for m, r in zip(mean, rm)]
                rv = [a * v + (1 - a) * r for v, r in zip((1.5, 2.0), rv)]
            win = means[max(0, upto - window):upto]
            ks = []
            for ch in range(2):
                pm = sum(m[ch] for m in win) / len(win)
                pv = sum((3 / 4 * v + (m[ch] - pm) ** 2) for m, v in
                         zip(win, [(1.5, 2.0)[ch]] * len(win))) / len(win) + 1e-5
                ev = rv[ch] + 1e-5
                ks.append(0.5 * (math.log(ev / pv) + (pv + (pm - rm[ch]) ** 2) / ev - 1))
            return sum(ks) / 2

        doc = c.momentum("mom", momenta=[0.5, 0.05], window=2, points=3)
        self.assertEqual(doc["step"], [1, 4, 8])
        self.assertEqual(doc["window"], 2)
        for m, a in zip(doc["momenta"], (0.5, 0.05)):
            self.assertEqual(m["momentum"], a)
            self.assertEqual(m["effective_window"], 1 / a)
            want = sum(kl_at(a, s, 2) for s in (1, 4, 8)) / 3
            self.assertTrue(close([m["kl"]], [want], 1e-9), (m, want))
            self.assertEqual(m["layers"]["bn"], m["kl"])
        self.assertEqual(doc["best"], min(doc["momenta"], key=lambda m: m["kl"])["momentum"])
        # a string list, a range, the server's defaults
        doc = c.momentum("mom", momenta="0.1", from_step=3, to_step=5)
        self.assertEqual((doc["step"], doc["best"]), ([3, 4, 5], 0.1))
        self.assertEqual(len(c.momentum("mom")["momenta"]), 6)
        with self.assertRaises(BnstatError) as e:
            c.momentum("mom", momenta=[0.1, 2])
        self.assertEqual((e.exception.status, e.exception.path), (422, "momenta"))

    def test_unknown_runs_raise_the_server_error(self):
        # an unknown run is the server's 404, carried by BnstatError
        for call in (lambda: self.c.compare("no-such-run"),
                     lambda: self.c.compare("no-such-run", ema="sim", momentum=0.01),
                     lambda: self.c.series("no-such-run", "bn", channel=0, from_step=1, to_step=5),
                     lambda: self.c.domains("no-such-run")):
            with self.assertRaises(BnstatError) as cm:
                call()
            self.assertEqual(cm.exception.status, 404)
            self.assertEqual(cm.exception.code, "not_found")
            self.assertTrue(cm.exception.message)

    def test_binary_auto_falls_back_or_uses_safetensors(self):
        lay = {"bn": {"count": 6, "mean": [0.25, 0.5], "var": [1.0, 2.0],
                      "ema_mean": [0.0, 0.125], "ema_var": [1.0, 1.5]}}
        auto = Client(self.d.url, binary="auto")
        r = auto.upload("bin", "w", 1, 0, lay)
        self.assertTrue(r["accepted"])
        self.assertIn(auto.binary_supported, (True, False))
        self.assertTrue(auto.upload("bin", "w", 1, 0, lay)["duplicate"])
        self.assertEqual(self.c.stats("bin")["layers"]["bn"]["mean"], [0.25, 0.5])
        strict = Client(self.d.url, binary=True, retries=0)
        try:
            r = strict.upload("bin", "w", 2, 0, lay, dtype="f64")
        except BnstatError as e:
            self.assertEqual(e.status, 415)  # this server has no binary uploads yet
            return
        # the server takes safetensors: the JSON form of the same batch is a duplicate
        self.assertFalse(r["duplicate"])
        self.assertTrue(self.c.upload("bin", "w", 2, 0, lay)["duplicate"])
        s = self.c.stats("bin", step=2)["layers"]["bn"]
        self.assertEqual((s["count"], s["mean"]), (6, [0.25, 0.5]))

    def test_restart_in_the_middle_of_an_upload_loop(self):
        # One client uploads 300 batches (30 steps x 10 seqs) while the daemon
        # is SIGKILLed and restarted on the same port and database: every
        # upload ends accepted, none is lost, none is counted twice.
        c = Client(self.d.url, retries=8, backoff=0.05, timeout=5)
        n = 300
        done = []
        errors = []
        progress = threading.Event()

        def batch(i):
            return {"bn": {"count": 3 + i % 4, "mean": [i * 0.25, -i * 0.5],
                           "var": [1.0 + (i % 3) * 0.5, 2.0]}}

        killed = threading.Event()

        def loop():
            try:
                for i in range(n):
                    done.append(c.upload("restart", "rank0", i // 10, i % 10, batch(i)))
                    if i == 100:
                        progress.set()
                    if 100 <= i < 200:
                        killed.wait(0.002)  # leave the main thread time to kill
                    elif i == 200:
                        killed.wait(30)  # and make sure it happened mid-loop
            except Exception as e:  # recorded, asserted below
                errors.append(e)
                progress.set()

        retries = []

        class Count(logging.Handler):
            def emit(self, record):
                retries.append(record.getMessage())

        handler = Count()
        logging.getLogger("bnstat").addHandler(handler)
        logging.getLogger("bnstat").setLevel(logging.INFO)
        self.addCleanup(logging.getLogger("bnstat").removeHandler, handler)
        t = threading.Thread(target=loop)
        t.start()
        self.assertTrue(progress.wait(30))
        self.d.kill()
        at_kill = len(done)
        killed.set()
        time.sleep(0.3)
        self.d.start()
        t.join(60)
        self.assertFalse(t.is_alive())
        self.assertEqual(errors, [])
        self.assertEqual(len(done), n)
        self.assertLess(at_kill, n - 50)
        self.assertTrue(any("retry" in m for m in retries), retries)
        self.assertTrue(all(r["accepted"] for r in done))
        self.assertEqual(self.c.run("restart")["batches"], n)
        for s in range(n // 10):
            got = self.c.stats("restart", step=s)["layers"]["bn"]
            items = [batch(i)["bn"] for i in range(s * 10, s * 10 + 10)]
            m, v = exact_population([(b["count"], b["mean"], b["var"]) for b in items])
            self.assertEqual(got["batches"], 10, "step %d" % s)
            self.assertEqual(got["count"], sum(b["count"] for b in items))
            self.assertTrue(close(got["mean"], m) and close(got["var"], v), (s, got, m, v))


class FakeServerTests(unittest.TestCase):
    def test_retries_5xx_honouring_retry_after_and_sends_the_token(self):
        fake = FakeServer([error_reply(503, "unavailable", "queue full", headers={"Retry-After": "1"}),
                           error_reply(500, "internal", "oops"), OK])
        try:
            c = Client(fake.url, token="s3cret", retries=3, backoff=0.01, binary=False)
            t0 = time.monotonic()
            r = c.upload("r", "w", 1, 0, LAYER)
            elapsed = time.monotonic() - t0
        finally:
            fake.close()
        self.assertEqual(r["accepted"], True)
        self.assertEqual(len(fake.requests), 3)
        self.assertGreaterEqual(elapsed, 0.95)  # Retry-After: 1 was honoured
        bodies = {req[3] for req in fake.requests}
        self.assertEqual(len(bodies), 1)  # the same batch each time
        for method, path, headers, body in fake.requests:
            self.assertEqual((method, path), ("POST", "/v1/runs/r/batches"))
            self.assertEqual(headers.get("Authorization"), "Bearer s3cret")
            self.assertEqual(headers.get("Content-Type"), "application/json")
        doc = json.loads(fake.requests[0][3])
        self.assertEqual(doc["layers"]["bn"]["mean"]["dtype"], "f32")
        self.assertEqual(struct.unpack("<2f", base64.b64decode(doc["layers"]["bn"]["mean"]["b64"])),
                         (1.0, 2.0))

    def test_4xx_is_not_retried_and_retries_run_out(self):
        fake = FakeServer([error_reply(422, "invalid_value", "bad", "layers.bn.var[0]")])
        try:
            c = Client(fake.url, retries=3, backoff=0.01)
            with self.assertRaises(BnstatError) as cm:
                c.upload("r", "w", 1, 0, LAYER)
            self.assertEqual(len(fake.requests), 1)
            self.assertEqual(cm.exception.path, "layers.bn.var[0]")
            fake.script = [error_reply(503, "unavailable", "busy")]
            with self.assertRaises(BnstatError) as cm:
                c.upload("r", "w", 1, 0, LAYER)
            self.assertEqual(cm.exception.status, 503)
            self.assertEqual(len(fake.requests), 1 + 4)
        finally:
            fake.close()

    def test_iter_runs_follows_next(self):
        def page(names, nxt=None):
            doc = {"runs": [{"name": n} for n in names]}
            if nxt is not None:
                doc["next"] = nxt
            return (200, {"Content-Type": "application/json"}, json.dumps(doc).encode())

        fake = FakeServer([page(["a", "b"], "b"), page(["c", "d"], "d"), page(["e"])])
        try:
            got = [r["name"] for r in Client(fake.url).iter_runs(prefix="x_y", limit=2)]
        finally:
            fake.close()
        self.assertEqual(got, ["a", "b", "c", "d", "e"])
        self.assertEqual([req[1] for req in fake.requests],
                         ["/v1/runs?prefix=x_y&limit=2", "/v1/runs?prefix=x_y&limit=2&after=b",
                          "/v1/runs?prefix=x_y&limit=2&after=d"])
        fake = FakeServer([page([])])
        try:
            c = Client(fake.url)
            self.assertEqual(list(c.iter_runs()), [])
            self.assertEqual(c.runs(), {"runs": []})
        finally:
            fake.close()
        self.assertEqual([req[1] for req in fake.requests], ["/v1/runs", "/v1/runs"])

    def test_non_json_error_reply(self):
        fake = FakeServer([(404, {"Content-Type": "text/plain"}, b"nothing here")])
        try:
            with self.assertRaises(BnstatError) as cm:
                Client(fake.url).runs()
        finally:
            fake.close()
        self.assertEqual((cm.exception.status, cm.exception.code), (404, "http_error"))
        self.assertEqual(cm.exception.message, "nothing here")

    def test_auto_binary_remembers_415(self):
        def answer(handler):
            if handler.headers.get("Content-Type") == "application/octet-stream":
                return error_reply(415, "unsupported_media_type", "no binary here")
            return OK

        fake = FakeServer([answer])
        try:
            c = Client(fake.url, binary="auto")
            c.upload("r", "w", 1, 0, LAYER)
            c.upload("r", "w", 1, 1, LAYER)
            types = [req[2].get("Content-Type") for req in fake.requests]
        finally:
            fake.close()
        self.assertEqual(types, ["application/octet-stream", "application/json",
                                 "application/json"])
        self.assertIs(c.binary_supported, False)

    def test_binary_body_is_valid_safetensors(self):
        fake = FakeServer([OK])
        try:
            c = Client(fake.url, binary=True)
            c.upload("r", "rank3", 12, 4, {
                "layer1.bn": {"count": 200704, "mean": [0.5, -1.0, 3.0], "var": [1.0, 2.0, 0.25],
                              "ema_mean": [0.0, 0.1, 0.2], "ema_var": [1.0, 1.0, 1.0]},
                "head.bn": {"count": 0}}, domain="p3")
            c.upload("r", "rank3", 12, 5, {"x": {"count": 2, "mean": [1 / 3], "var": [0.1]}},
                     dtype="f64", var_kind="biased")
        finally:
            fake.close()
        body = fake.requests[0][3]
        self.assertEqual(fake.requests[0][2]["Content-Type"], "application/octet-stream")
        n, meta, tensors = read_safetensors(body)
        self.assertEqual((8 + n) % 8, 0)  # data aligned
        self.assertEqual(meta, {"worker": "rank3", "step": "12", "seq": "4", "domain": "p3",
                                "var_kind": "unbiased"})
        self.assertEqual(tensors["layer1.bn.count"], ("I64", [], [200704]))
        self.assertEqual(tensors["head.bn.count"], ("I64", [], [0]))
        self.assertNotIn("head.bn.mean", tensors)
        self.assertEqual(tensors["layer1.bn.mean"], ("F32", [3], [0.5, -1.0, 3.0]))
        self.assertEqual(tensors["layer1.bn.var"], ("F32", [3], [1.0, 2.0, 0.25]))
        self.assertEqual(tensors["layer1.bn.ema_mean"][2], [0.0, f32(0.1), f32(0.2)])
        self.assertEqual(set(tensors), {"layer1.bn.count", "layer1.bn.mean", "layer1.bn.var",
                                        "layer1.bn.ema_mean", "layer1.bn.ema_var", "head.bn.count"})
        n, meta, tensors = read_safetensors(fake.requests[1][3])
        self.assertEqual(meta["var_kind"], "biased")
        self.assertEqual(meta["domain"], "default")
        self.assertEqual(tensors["x.mean"], ("F64", [1], [1 / 3]))
        # the package's own decoder agrees
        t2, m2 = st.decode(fake.requests[1][3])
        self.assertEqual(m2, meta)
        self.assertEqual(t2["x.var"], ("F64", [1], (0.1,)))


class CliTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon().start()
        c = Client(cls.d.url)
        c.upload("cli", "rank0", 10, 0, {"conv.bn": {"count": 4, "mean": [1.0, 2.0], "var": [2.0, 0.5]},
                                         "head.bn1d": {"count": 8, "mean": [0.5], "var": [4.0]}},
                 dtype="f64")
        c.upload("cli", "rank1", 10, 0, {"conv.bn": {"count": 4, "mean": [3.0, 2.0], "var": [2.0, 0.5]},
                                         "head.bn1d": {"count": 8, "mean": [-0.5], "var": [4.0]}},
                 dtype="f64")
        c.snapshot_create("cli", "s0", step=10)
        cls.snap = upload_ranks(c, "ranks")
        cls.tmp = tempfile.mkdtemp(prefix="bnstat-cli-")

    @classmethod
    def tearDownClass(cls):
        cls.d.close()
        import shutil
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def cli(self, *args, env=None):
        e = dict(os.environ, PYTHONPATH=PYTHONPATH, BNSTAT_URL=self.d.url)
        e.update(env or {})
        p = subprocess.run([sys.executable, "-m", "bnstat"] + list(args), env=e,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
        return p.returncode, p.stdout.decode(), p.stderr.decode()

    def assertAligned(self, lines):
        """Every row has a cell per header, and in each column every cell
        starts where the header starts (text) or ends where it ends (numbers)."""
        head = [(m.start(), m.end()) for m in re.finditer(r"\S+", lines[0])]
        self.assertGreater(len(lines), 1)
        rows = [[(m.start(), m.end()) for m in re.finditer(r"\S+", line)] for line in lines[1:]]
        for cells in rows:
            self.assertEqual(len(cells), len(head), "\n".join(lines))
        for i, (hs, he) in enumerate(head):
            left = all(cells[i][0] == hs for cells in rows)
            right = all(cells[i][1] == he for cells in rows)
            self.assertTrue(left or right, "column %d is not aligned:\n%s" % (i, "\n".join(lines)))
        self.assertTrue(all(cells[0][0] == head[0][0] for cells in rows))

    def test_stats_table(self):
        rc, out, err = self.cli("stats", "cli", "--step", "10")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertIn("step 10", lines[0])
        self.assertEqual(lines[1].split()[:5], ["layer", "channels", "count", "batches", "batch_noise"])
        self.assertAligned(lines[1:])
        row = {l.split()[0]: l.split() for l in lines[2:]}
        self.assertEqual(row["conv.bn"][1:4], ["2", "8", "2"])
        self.assertEqual(row["head.bn1d"][1:4], ["1", "16", "2"])
        rc, out, _ = self.cli("stats", "cli", "--layer", "head.bn1d", "--estimator",
                              "mean_of_batch_var")
        self.assertEqual(rc, 0)
        self.assertNotIn("conv.bn", out)

    def test_auto_window_precision_and_prior(self):
        c = Client(self.d.url)
        for step in (1, 2, 3):
            for w, m in (("rank0", 1.0), ("rank1", 2.0)):
                c.upload("cli-adapt", w, step, 0,
                         {"bn": {"count": 4, "mean": [m * step, 0.5], "var": [1.0, 2.0],
                                 "ema_mean": [1.0, 0.5], "ema_var": [1.0, 2.0]}}, dtype="f64")
        c.upload("cli-adapt", "rank0", 3, 0, {"bn": {"count": 4, "mean": [7.0, 1.0],
                                                     "var": [3.0, 2.0]}},
                 domain="tgt", dtype="f64")
        # stats: auto by default, the window and the precision columns shown
        rc, out, err = self.cli("stats", "cli-adapt", "--min-batches", "3")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertIn("window 2 (auto, min_batches 3)", lines[0])
        self.assertEqual(lines[1].split()[4:7], ["batch_noise", "mean_se", "batches_for"])
        self.assertAligned(lines[1:])
        ref = c.stats("cli-adapt", window="auto", min_batches=3)["layers"]["bn"]
        self.assertEqual(lines[2].split()[6], str(ref["batches_for"]))
        self.assertIn("mean_se above 0.01", err)      # 4 batches are far from the target
        rc, out, err = self.cli("stats", "cli-adapt", "--window", "1")
        self.assertIn("window 1 ", out.splitlines()[0] + " ")
        rc, _, err = self.cli("stats", "cli-adapt", "--window", "0")
        self.assertNotEqual(rc, 0)
        self.assertIn("or auto", err)
        # compare: auto by default
        rc, out, err = self.cli("compare", "cli-adapt")
        self.assertEqual(rc, 0, err)
        self.assertIn("(auto, min_batches 100)", out.splitlines()[0])
        self.assertIn("mean_se", out.splitlines()[1])
        # BN-adapt through the CLI, and a snapshot of it
        rc, out, err = self.cli("--json", "stats", "cli-adapt", "--domain", "tgt", "--window",
                                "1", "--prior", "default", "--prior-weight", "0.5")
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        self.assertEqual(doc["layers"]["bn"]["mean"], [0.5 * 7.0 + 0.5 * 4.5, 0.5 * 1.0 + 0.25])
        rc, out, err = self.cli("snapshot", "create", "cli-adapt", "adapt", "--domain", "tgt",
                                "--window", "1", "--prior", "default", "--prior-weight", "0.5")
        self.assertEqual(rc, 0, err)
        rc, out, err = self.cli("snapshot", "show", "cli-adapt", "adapt")
        self.assertEqual(rc, 0, err)
        self.assertIn("prior default (weight 0.5)", out.splitlines()[0])
        rc, out, err = self.cli("--json", "snapshot", "create", "cli-adapt", "auto", "--window",
                                "auto", "--min-batches", "4")
        self.assertEqual(rc, 0, err)
        snap = json.loads(out)
        self.assertEqual((snap["requested_window"], snap["window"]), ("auto", 2))

    def test_runs_run_and_snapshots(self):
        rc, out, err = self.cli("runs")
        self.assertEqual(rc, 0, err)
        self.assertAligned(out.splitlines())
        self.assertIn("cli", out)
        rc, out, err = self.cli("run", "cli")
        self.assertEqual(rc, 0, err)
        self.assertIn("rank1", out)
        rc, out, err = self.cli("snapshot", "create", "cli", "s1", "--step", "10")
        self.assertEqual(rc, 0, err)
        self.assertIn("snapshot s1", out)
        rc, out, err = self.cli("snapshot", "list", "cli")
        self.assertEqual(rc, 0, err)
        self.assertAligned(out.splitlines())
        self.assertRegex(out, r"s1\s+10\s+1\s+default\s+population")
        self.assertRegex(out, r"s0\s+10\s+1\s+default\s+population")
        rc, out, err = self.cli("snapshot", "show", "cli", "s1")
        self.assertEqual(rc, 0, err)
        self.assertAligned(out.splitlines()[1:])
        path = os.path.join(self.tmp, "s1.json")
        rc, out, err = self.cli("snapshot", "export", "cli", "s1", "-o", path)
        self.assertEqual(rc, 0, err)
        with open(path) as f:
            doc = json.load(f)
        self.assertEqual(doc["layers"]["conv.bn"]["var"], [2.5, 0.375])
        path = os.path.join(self.tmp, "s1.safetensors")
        rc, out, err = self.cli("snapshot", "export", "cli", "s1", "-o", path, "--format",
                                "safetensors", "--dtype", "f64")
        self.assertEqual(rc, 0, err)
        with open(path, "rb") as f:
            _, _, tensors = read_safetensors(f.read())
        self.assertEqual(tensors["conv.bn.running_var"], ("F64", [2], [2.5, 0.375]))
        rc, out, err = self.cli("--json", "snapshot", "list", "cli")
        self.assertEqual(rc, 0, err)
        self.assertEqual(sorted(s["label"] for s in json.loads(out)["snapshots"]), ["s0", "s1"])

    def test_runs_pages_and_snapshot_delete(self):
        c = Client(self.d.url)
        for n in ("cpg_a", "cpg_b", "cpg_c", "cpgXd"):
            c.upload(n, "w", 1, 0, LAYER)
        rc, out, err = self.cli("runs", "--prefix", "cpg_")
        self.assertEqual(rc, 0, err)
        self.assertEqual([l.split()[0] for l in out.splitlines()[1:]], ["cpg_a", "cpg_b", "cpg_c"])
        self.assertEqual(err, "")
        rc, out, err = self.cli("runs", "--prefix", "cpg_", "--limit", "2")
        self.assertEqual(rc, 0, err)
        self.assertAligned(out.splitlines())
        self.assertEqual([l.split()[0] for l in out.splitlines()[1:]], ["cpg_a", "cpg_b"])
        self.assertIn("--after cpg_b", err)
        rc, out, err = self.cli("--json", "runs", "--prefix", "cpg_", "--limit", "2", "--after",
                                "cpg_b")
        self.assertEqual(rc, 0, err)
        self.assertEqual([r["name"] for r in json.loads(out)["runs"]], ["cpg_c"])
        self.assertNotIn("next", json.loads(out))
        rc, out, err = self.cli("--json", "runs", "--prefix", "cpg", "--after", "cpg_a")
        self.assertEqual(rc, 0, err)
        self.assertEqual([r["name"] for r in json.loads(out)["runs"]], ["cpg_b", "cpg_c"])
        rc, out, err = self.cli("runs", "--limit", "0")
        self.assertEqual(rc, 1)
        self.assertIn("limit", err)

        c.upload("cdel", "w", 1, 0, LAYER)
        c.snapshot_create("cdel", "gone")
        rc, out, err = self.cli("snapshot", "delete", "cdel", "gone")
        self.assertEqual(rc, 0, err)
        self.assertEqual(out, "deleted snapshot gone of run cdel\n")
        self.assertEqual(c.snapshots("cdel")["snapshots"], [])
        rc, out, err = self.cli("snapshot", "delete", "cdel", "gone")
        self.assertEqual(rc, 1)
        self.assertIn("404", err)
        rc, out, err = self.cli("--json", "snapshot", "delete", "cdel", "gone", "--missing-ok")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out), {"run": "cdel", "label": "gone", "deleted": False})

    def test_compare_table_or_error(self):
        rc, out, err = self.cli("compare", "cli", "--step", "10")
        if rc == 0:  # the server has compare: one row per layer plus overall
            lines = out.splitlines()
            start = 1 if not lines[0].startswith("layer") else 0
            self.assertAligned(lines[start:])
            self.assertEqual(lines[-1].split()[0], "overall")
        else:
            self.assertEqual(rc, 1)
            self.assertIn("bnstat: error:", err)

    def rows(self, out, first):
        """The table starting at the line whose first word is `first`: {row name: cells}."""
        lines = out.splitlines()
        start = [i for i, l in enumerate(lines) if l.split()[:1] == [first]][0]
        end = start + 1
        while end < len(lines) and lines[end].strip():
            end += 1
        self.assertAligned(lines[start:end])
        return [l.split() for l in lines[start + 1:end]]

    def test_compare_with_a_snapshot_worst_first(self):
        rc, out, err = self.cli("compare", "ranks", "--snapshot", "s", "--worker", "rank2")
        self.assertEqual(rc, 0, err)
        self.assertIn("precise snapshot:s", out.splitlines()[0])
        self.assertIn("snapshot s: step 5", out)
        rows = self.rows(out, "layer")
        want = {name: compare_metrics(mean, var, self.snap["layers"][name]["mean"],
                                      self.snap["layers"][name]["var"])
                for name, (mean, var) in RANK_EMAS["rank2"].items()}
        worst_first = sorted(want, key=lambda n: -want[n]["kl"])
        self.assertEqual([r[0] for r in rows], worst_first + ["overall"])
        for r in rows[:-1]:
            self.assertTrue(close([float(r[5])], [want[r[0]]["kl"]], 1e-5), r)
        rc, out, err = self.cli("compare", "ranks", "--snapshot", "s", "--worker", "rank2",
                                "--top", "1", "--sort", "mean_err")
        self.assertEqual(rc, 0, err)
        rows = self.rows(out, "layer")
        self.assertEqual([r[0] for r in rows],
                         [max(want, key=lambda n: want[n]["mean_err"]), "overall"])
        rc, out, err = self.cli("compare", "ranks", "--snapshot", "nope")
        self.assertEqual(rc, 1)
        self.assertIn("404", err)
        self.assertIn("precise", err)

    def expected_spread(self, pairs):
        """{layer: {metric: max over pairs, "worst": pair by kl}} from RANK_EMAS."""
        out = {}
        for ref, w in pairs:
            for name in RANK_BATCHES:
                m = compare_metrics(*(RANK_EMAS[w][name] + RANK_EMAS[ref][name]))
                agg = out.setdefault(name, dict(m, worst=(ref, w)))
                if m["kl"] > agg["kl"]:
                    agg["worst"] = (ref, w)
                for k, v in m.items():
                    agg[k] = max(agg[k], v)
        return out

    def test_ranks_against_a_reference_and_all_pairs(self):
        rc, out, err = self.cli("ranks", "ranks")
        self.assertEqual(rc, 0, err)
        self.assertIn("reference rank0", out.splitlines()[0])
        self.assertIn("step 5", out.splitlines()[0])
        want = self.expected_spread([("rank0", "rank1"), ("rank0", "rank2")])
        rows = self.rows(out, "layer")
        self.assertEqual([r[0] for r in rows], sorted(want, key=lambda n: -want[n]["kl"]))
        for r in rows:
            w = want[r[0]]
            self.assertEqual(r[1], "2")
            self.assertTrue(close([float(x) for x in r[2:8]],
                                  [w[k] for k in ("mean_err", "mean_err_max", "var_err",
                                                  "var_err_max", "kl", "kl_max")], 1e-5), r)
            self.assertEqual(r[8], w["worst"][1])
        pairs = self.rows(out, "worker")
        self.assertEqual(sorted(p[:3] for p in pairs),
                         [["rank1", "rank0", "2"], ["rank2", "rank0", "2"]])
        rc, out, err = self.cli("ranks", "ranks", "--all-pairs")
        self.assertEqual(rc, 0, err)
        want = self.expected_spread([("rank0", "rank1"), ("rank0", "rank2"), ("rank1", "rank2")])
        self.assertEqual({r[0]: r[8] for r in self.rows(out, "layer")},
                         {n: "%s/%s" % (w["worst"][1], w["worst"][0]) for n, w in want.items()})
        rc, out, err = self.cli("--json", "ranks", "ranks", "--all-pairs")
        self.assertEqual(rc, 0, err)
        doc = json.loads(out)
        all_pairs = [("rank0", "rank1"), ("rank0", "rank2"), ("rank1", "rank2")]
        self.assertEqual([(p["reference"], p["worker"]) for p in doc["pairs"]], all_pairs)
        want = self.expected_spread(all_pairs)
        for name, w in want.items():
            got = doc["layers"][name]
            self.assertEqual(got["pairs"], 3)
            self.assertEqual(tuple(got["worst"]), w["worst"])
            for k in ("mean_err", "mean_err_max", "var_err", "var_err_max", "kl", "kl_max"):
                self.assertTrue(close([got[k]], [w[k]], 1e-9), (name, k))
        rc, out, err = self.cli("ranks", "ranks", "--reference", "rank1", "--layer", "head.bn")
        self.assertEqual(rc, 0, err)
        self.assertEqual([r[0] for r in self.rows(out, "layer")], ["head.bn"])
        rc, out, err = self.cli("ranks", "ranks", "--reference", "nobody")
        self.assertEqual(rc, 1)
        self.assertIn("no worker nobody", err)

    def test_momentum_table(self):
        rc, out, err = self.cli("momentum", "cli", "--momenta", "0.5,0.1")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertIn("steps 1", lines[0])
        self.assertEqual(lines[1].split(), ["momentum", "effective_window", "kl", "best"])
        # numbers end where their header ends; best is text, left-aligned
        ends = [m.end() for m in re.finditer(r"\S+", lines[1])]
        starts = [m.start() for m in re.finditer(r"\S+", lines[1])]
        for line in lines[2:]:
            cells = list(re.finditer(r"\S+", line))
            self.assertEqual([m.end() for m in cells[:3]], ends[:3], out)
            self.assertEqual(cells[3].start(), starts[3], out)
        rows = {l.split()[0]: l.split() for l in lines[2:]}
        self.assertEqual(sorted(rows), ["0.1", "0.5"])
        self.assertEqual((rows["0.5"][1], rows["0.1"][1]), ("2", "10"))
        # one momentum is marked best: the one with the lower kl
        best = min(rows.values(), key=lambda r: float(r[2]))
        self.assertEqual(best[3], "*")
        self.assertEqual([r[3] for r in rows.values()].count("*"), 1)
        rc, out, err = self.cli("momentum", "cli", "--momenta", "0")
        self.assertEqual(rc, 1)
        self.assertIn("momenta", err)

    def test_errors_exit_1_with_the_server_message(self):
        rc, out, err = self.cli("stats", "no-such-run")
        self.assertEqual(rc, 1)
        self.assertIn("404", err)
        self.assertIn("no-such-run", err)  # the server's message names the run
        rc, out, err = self.cli("--url", "http://127.0.0.1:1", "--retries", "0", "runs")
        self.assertEqual(rc, 1)
        self.assertIn("cannot reach", err)
        rc, out, err = self.cli("snapshot", "create", "cli", "s0", "--step", "9")
        self.assertEqual(rc, 1)
        self.assertIn("409", err)
        self.assertIn("exists", err)


    def test_url_without_a_scheme_is_a_usage_error(self):
        t0 = time.monotonic()
        rc, out, err = self.cli("--url", "127.0.0.1:8651", "runs")
        self.assertEqual(rc, 2, err)
        self.assertIn("--url", err)
        self.assertIn("http://HOST:PORT", err)
        self.assertNotIn("cannot reach", err)
        self.assertLess(time.monotonic() - t0, 20)  # no retries
        with self.assertRaises(ValueError):
            Client("127.0.0.1:8651")

    def test_a_closed_pipe_ends_quietly(self):
        # enough rows that the reader is gone before the writer is done
        c = Client(self.d.url, binary=False)
        c.upload("pipe", "w", 1, 0, {"bn%04d" % i: {"count": 4, "mean": [1.0] * 8,
                                                     "var": [2.0] * 8} for i in range(1500)})
        e = dict(os.environ, PYTHONPATH=PYTHONPATH, BNSTAT_URL=self.d.url)
        p = subprocess.run(["/bin/sh", "-c", '"$0" -m bnstat stats pipe --step 1 | head -n 2',
                            sys.executable], env=e, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=60)
        self.assertEqual(len(p.stdout.splitlines()), 2)
        self.assertEqual(p.stderr.decode(), "")  # no BrokenPipeError traceback

    def test_health_line_and_compare_ema_help(self):
        rc, out, err = self.cli("health")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"^bnstatd at http://127\.0\.0\.1:\d+: ok, schema \d+, "
                              r"\d+ uploads waiting for the writer\n$")
        rc, out, err = self.cli("--json", "health")
        self.assertEqual(json.loads(out)["status"], "ok")
        rc, out, err = self.cli("compare", "--help")
        self.assertEqual(rc, 0, err)
        ema = re.search(r"--ema \{worker,sim\}\s+(.*?)\n\s+--", out, re.S)
        self.assertIsNotNone(ema, out)
        self.assertIn("simulates", ema.group(1))

    def test_tables_list_layers_in_model_order(self):
        # the order of the first upload, whatever the encoding, not by name
        names = ["stem.bn", "layer1.0.bn1", "layer1.0.bn2", "fc.bn", "a.bn"]
        for run, binary in (("order-json", False), ("order-st", True)):
            c = Client(self.d.url, binary=binary)
            c.upload(run, "w", 1, 0, {n: {"count": 4, "mean": [float(i)], "var": [1.0]}
                                      for i, n in enumerate(names[1:])})
            # a later upload with a new layer first: it comes after the others
            c.upload(run, "w", 2, 0, {n: {"count": 4, "mean": [0.5], "var": [1.0]}
                                      for n in names})
            self.assertEqual([l["name"] for l in c.run(run)["layers"]], names[1:] + names[:1])
            rc, out, err = self.cli("run", run)
            self.assertEqual(rc, 0, err)
            listed = [l.split()[0] for l in out.split("\n\n")[1].splitlines()[1:]]
            self.assertEqual(listed, names[1:] + names[:1])
            for args in (["stats", run, "--step", "2", "--window", "2"],
                         ["compare", run, "--ema", "sim", "--step", "2", "--window", "2"]):
                rc, out, err = self.cli(*args)
                self.assertEqual(rc, 0, err)
                rows = [l.split()[0] for l in out.splitlines()[2:]]
                self.assertEqual([r for r in rows if r != "overall"], names[1:] + names[:1],
                                 out)


class AuthAndTlsTests(unittest.TestCase):
    """Bearer tokens and HTTPS, when this bnstatd has them."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bnstat-auth-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    @unittest.skipUnless(daemon_has_option("--token-file"), "this bnstatd has no --token-file")
    def test_bearer_tokens_and_roles(self):
        tokens = {"ingest": "ingest-" + "1" * 24, "read": "read-" + "2" * 24,
                  "admin": "admin-" + "3" * 24}
        path = os.path.join(self.tmp, "tokens")
        with open(path, "w") as f:
            f.write("# test tokens\n")
            for role, token in tokens.items():
                f.write("%s %s\n" % (token, role))
        os.chmod(path, 0o600)
        with Daemon("--token-file", path) as d:
            d.start()
            with self.assertRaises(BnstatError) as cm:
                Client(d.url, retries=0).runs()
            self.assertEqual((cm.exception.status, cm.exception.code), (401, "unauthorized"))
            ingest = Client(d.url, token=tokens["ingest"])
            self.assertTrue(ingest.upload("auth", "w", 1, 0, LAYER)["accepted"])
            with self.assertRaises(BnstatError) as cm:
                ingest.stats("auth")
            self.assertEqual(cm.exception.status, 403)
            reader = Client(d.url, token=tokens["read"])
            self.assertEqual(reader.stats("auth")["layers"]["bn"]["count"], 4)
            with self.assertRaises(BnstatError) as cm:
                reader.upload("auth", "w", 1, 1, LAYER)
            self.assertEqual(cm.exception.status, 403)
            admin = Client(d.url, token=tokens["admin"])
            self.assertEqual(admin.snapshot_create("auth", "s")["step"], 1)
            for who in (reader, ingest):
                with self.assertRaises(BnstatError) as cm:
                    who.delete_snapshot("auth", "s")
                self.assertEqual((cm.exception.status, cm.exception.code), (403, "forbidden"))
            self.assertEqual(reader.snapshot("auth", "s")["label"], "s")
            self.assertIs(admin.delete_snapshot("auth", "s"), True)
            self.assertEqual(reader.snapshots("auth")["snapshots"], [])
            env = dict(os.environ, PYTHONPATH=PYTHONPATH, BNSTAT_URL=d.url)
            cmd = [sys.executable, "-m", "bnstat", "stats", "auth"]
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.assertEqual(p.returncode, 1)
            self.assertIn("401", p.stderr.decode())
            env["BNSTAT_TOKEN"] = tokens["read"]
            p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.assertEqual(p.returncode, 0, p.stderr.decode())

    @unittest.skipUnless(daemon_has_option("--tls-cert") and shutil.which("openssl"),
                         "this bnstatd has no --tls-cert, or no openssl to make a certificate")
    def test_https_with_a_self_signed_certificate(self):
        cert = os.path.join(self.tmp, "cert.pem")
        key = os.path.join(self.tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=bnstat",
                        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with Daemon("--tls-cert", cert, "--tls-key", key, scheme="https") as d:
            d.start()
            c = Client(d.url, cafile=cert)
            self.assertTrue(c.upload("tls", "w", 1, 0, LAYER)["accepted"])
            self.assertEqual(c.stats("tls")["layers"]["bn"]["mean"], [1.0, 2.0])
            t0 = time.monotonic()
            with self.assertRaises(BnstatError) as cm:
                Client(d.url, retries=5, backoff=0.5).runs()  # the certificate is not trusted
            self.assertEqual(cm.exception.code, "tls_error")
            self.assertLess(time.monotonic() - t0, 0.5)  # not retried
            env = dict(os.environ, PYTHONPATH=PYTHONPATH)
            p = subprocess.run([sys.executable, "-m", "bnstat", "--url", d.url, "--cacert", cert,
                                "runs"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            self.assertEqual(p.returncode, 0, p.stderr.decode())
            self.assertIn("tls", p.stdout.decode())


if __name__ == "__main__":
    unittest.main()
