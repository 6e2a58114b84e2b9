"""Moving a run (docs/API.md, "Moving a run"): GET /v1/runs/{run}/export and
POST /v1/runs/{run}/import.

A run with buckets, worker EMAs (float and double), two domains, layers
created in an order that is not their names' order, and snapshots is
exported from one daemon and imported into a fresh one, under the same name
and under another; every answer there is the exporting daemon's, byte for
byte, and so are the answers after both take the same new batches. A retry
of an old batch answers duplicate on the new node, a conflicting resend 409.
Refusals: an existing run (409), malformed files (4xx, nothing stored), a
token without the admin role (403).
"""

import base64
import copy
import json
import os
import random
import shutil
import struct
import tempfile
import unittest

from bnstat_testlib import Daemon, TestCaseMixin

STEPS = 90
LAYERS = (("zeta", 3), ("alpha", 2))   # created in this order: layer order is not by name
WORKERS = ("w1", "w0")
DOMAINS = ("default", "target")


def f32(x):
    return struct.unpack("f", struct.pack("f", x))[0]


def make_doc(rng, worker, step, domain, seq=0):
    layers = {}
    for name, c in LAYERS:
        layer = {"count": rng.choice([8, 16]),
                 "mean": [rng.gauss(0.0, 1.0) for _ in range(c)],
                 "var": [rng.uniform(0.5, 2.0) for _ in range(c)]}
        if step % 7 != 3:
            conv = f32 if step % 3 == 0 else float    # float32 EMAs are kept as floats
            layer["ema_mean"] = [conv(rng.gauss(0.0, 1.0)) for _ in range(c)]
            layer["ema_var"] = [conv(rng.uniform(0.5, 2.0)) for _ in range(c)]
        layers[name] = layer
    return {"worker": worker, "step": step, "seq": seq, "domain": domain, "layers": layers}


# (path suffix, query) of every answer compared
def reads(run):
    base = "/v1/runs/" + run
    out = [(base, None), (base + "/domains", None), (base + "/snapshots", None)]
    for dom in DOMAINS:
        out += [
            (base + "/stats", {"domain": dom}),
            (base + "/stats", {"domain": dom, "window": 40}),
            (base + "/stats", {"domain": dom, "window": "auto", "min_batches": 30}),
            (base + "/stats", {"domain": dom, "step": 20, "window": 5,
                               "estimator": "mean_of_batch_var"}),
            (base + "/compare", {"domain": dom}),
            (base + "/compare", {"domain": dom, "worker": "w1", "window": 10}),
            (base + "/compare", {"domain": dom, "ema": "sim", "momentum": "0.1"}),
            (base + "/series", {"domain": dom, "layer": "zeta", "channel": 1}),
            (base + "/series", {"domain": dom, "layer": "alpha", "channel": 0,
                                "ema": "sim", "momentum": "0.01"}),
            (base + "/drift", {"domain": dom, "points": 10000}),
            (base + "/drift", {"domain": dom, "window": 5, "points": 10000}),
        ]
    out += [(base + "/stats", {"domain": "*"}),
            (base + "/shift", {"source": "target", "target": "default"}),
            (base + "/snapshots/auto", None), (base + "/snapshots/adapt", None),
            (base + "/snapshots/final", None)]
    return out


class TestExportImport(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        args = ("--history-full-steps", "30")
        cls.a = Daemon(*args)
        cls.b = Daemon(*args)
        for d in (cls.a, cls.b):
            cls.addClassCleanup(d.close)
            d.start()
        cls.rng = random.Random(16)
        cls.docs = []
        for step in range(1, STEPS + 1):
            for dom in DOMAINS:
                if dom == "target" and step % 4:
                    continue
                for w in WORKERS:
                    cls.docs.append(make_doc(cls.rng, w, step, dom))
        for doc in cls.docs:
            st, body, _ = cls.a.post_batch("ex", doc)
            assert st == 200, body
        cls.a.wait_bucketed("ex", 60)
        cls.a.wait_drift("ex", STEPS - 1)
        for body in ({"label": "final"},
                     {"label": "auto", "window": "auto", "min_batches": 40, "domain": "target"},
                     {"label": "adapt", "domain": "target", "prior": "default",
                      "prior_weight": 0.25, "window": 20}):
            st, raw, _ = cls.a.request("POST", "/v1/runs/ex/snapshots", json.dumps(body),
                                       {"Content-Type": "application/json"})
            assert st == 201, raw
        st, raw, hdrs = cls.a.request_raw("GET", "/v1/runs/ex/export")
        assert st == 200, raw[:300]
        cls.export_headers = hdrs
        cls.file = raw
        cls.addClassCleanup(lambda: None)

    def import_file(self, d, run, body):
        return d.request("POST", "/v1/runs/%s/import" % run, body,
                         {"Content-Type": "application/json"})

    def imported(self, run):
        """Import the file into b as run (once), and wait for its drift metrics."""
        st, _, _ = self.b.get("/v1/runs/" + run)
        if st == 404:
            st, body, _ = self.import_file(self.b, run, self.file)
            self.assertEqual(st, 201, body)
            self.assertEqual(body, {"run": run, "imported": True})
        # the drift metrics are the writer's to compute again (as the exporting node kept them)
        st, info, _ = self.a.get("/v1/runs/ex")
        for dom in info["domains"]:
            self.b.wait_drift(run, dom["drift_through"], domain=dom["name"])
        return run

    def answers(self, d, run, name_as=None):
        out = {}
        for path, params in reads(run):
            st, raw, _ = d.get_raw(path, params)
            key = (path.replace(run, "{run}", 1), json.dumps(params, sort_keys=True))
            if name_as is not None:
                raw = raw.replace(b'"run":"%s"' % run.encode(),
                                  b'"run":"%s"' % name_as.encode())
                raw = raw.replace(b'"name":"%s"' % run.encode(),
                                  b'"name":"%s"' % name_as.encode())
            out[key] = (st, raw)
        if name_as is None:  # the file's metadata names the run
            st, raw, _ = d.get_raw(
                "/v1/runs/%s/snapshots/final" % run, {"format": "safetensors", "dtype": "f64"})
            out["safetensors"] = (st, raw)
        return out

    def assert_same_answers(self, run_b, run_a="ex"):
        want = self.answers(self.a, run_a)
        got = self.answers(self.b, run_b, name_as=run_a if run_b != run_a else None)
        self.assertGreaterEqual(len(got), len(reads(run_b)))
        for key in got:
            self.assertEqual(want[key][0], 200, "%r: %r" % (key, want[key][1][:300]))
            self.assertEqual(got[key], want[key], "%r differs after the move" % (key,))

    def test_file_format(self):
        doc = json.loads(self.file)
        self.assertIn("application/json", self.export_headers.get("Content-Type", ""))
        self.assertEqual((doc["format"], doc["version"], doc["run"]), ("bnstat-run", 1, "ex"))
        t = doc["tables"]
        self.assertEqual([r[1] for r in t["layers"]["rows"]], ["zeta", "alpha"])
        self.assertEqual(sorted(r[1] for r in t["domains"]["rows"]), sorted(DOMAINS))
        self.assertEqual(len(t["batches"]["rows"]), len(self.docs))
        widths = {r[t["aggs"]["columns"].index("width")] for r in t["aggs"]["rows"]}
        self.assertIn(1, widths)
        self.assertTrue(widths - {1}, "the run has buckets")
        self.assertTrue(t["sim_states"]["rows"], "kept replay states are carried")
        self.assertEqual(len(t["snapshots"]["rows"]), 3)
        data = base64.b64decode(t["aggs"]["rows"][0][-1])
        self.assertEqual(len(data) % 40, 0)

    def test_same_name_identical(self):
        self.assert_same_answers(self.imported("ex"))

    def test_other_name_identical(self):
        self.assert_same_answers(self.imported("ex-moved"), "ex")

    def test_export_of_import_is_the_file(self):
        run = self.imported("ex")
        st, raw, _ = self.b.request_raw("GET", "/v1/runs/%s/export" % run)
        self.assertEqual(st, 200)
        a, b = json.loads(self.file), json.loads(raw)
        # the file's ids are each store's own: compare the rows with ids resolved
        self.assertEqual(resolve(a), resolve(b))

    def test_retries_after_the_move(self):
        run = self.imported("ex-retry")
        for d in (self.a, self.b):
            name = "ex" if d is self.a else run
            st, body, _ = d.post_batch(name, self.docs[5])
            self.assertEqual((st, body.get("duplicate")), (200, True), body)
            clash = copy.deepcopy(self.docs[5])
            clash["layers"]["zeta"]["mean"][0] += 1.0
            st, body, _ = d.post_batch(name, clash)
            self.assertEqual(st, 409, body)

    def test_uploads_go_on_after_the_move(self):
        # a fresh pair of runs, so that the other tests' answers stay put
        st, body, _ = self.import_file(self.a, "ex-on-a", self.file)
        self.assertEqual(st, 201, body)
        run = self.imported("ex-on-b")
        rng = random.Random(5)
        new = [make_doc(rng, w, step, "default")
               for step in range(STEPS + 1, STEPS + 26) for w in WORKERS]
        new.append(make_doc(rng, "w9", STEPS + 20, "default"))  # a late upload
        for doc in new:
            for d, name in ((self.a, "ex-on-a"), (self.b, run)):
                st, body, _ = d.post_batch(name, doc)
                self.assertEqual(st, 200, body)
        for d, name in ((self.a, "ex-on-a"), (self.b, run)):
            d.wait_bucketed(name, 80)
            d.wait_drift(name, STEPS + 24)
        want = self.answers(self.a, "ex-on-a", name_as="x")
        got = self.answers(self.b, run, name_as="x")
        for key in want:
            self.assertEqual(want[key][0], 200, "%r: %r" % (key, want[key][1][:300]))
            self.assertEqual(got[key], want[key], "%r differs" % (key,))

    # -- refusals -----------------------------------------------------------------

    def test_existing_run_is_refused(self):
        run = self.imported("ex")
        before = self.answers(self.b, run)
        st, body, _ = self.import_file(self.b, run, self.file)
        self.assertError((st, body, {}), 409, "conflict", what="import over a run")
        self.assertEqual(self.answers(self.b, run), before)

    def test_missing_run_export_is_404(self):
        st, body, _ = self.a.get("/v1/runs/no-such-run/export")
        self.assertError((st, body, {}), 404, "not_found", what="export of no run")

    def malformed(self):
        doc = json.loads(self.file)
        t = doc["tables"]
        cases = []

        def case(name, status, mutate):
            d = copy.deepcopy(doc)
            mutate(d)
            cases.append((name, status, json.dumps(d).encode()))

        cases.append(("not json", 400, self.file[:len(self.file) // 2]))
        case("format", 422, lambda d: d.update(format="other"))
        case("version", 422, lambda d: d.update(version=2))
        case("a table missing", 400, lambda d: d["tables"].pop("aggs"))
        case("an unknown table", 422, lambda d: d["tables"].update(extra=t["runs"]))
        case("columns", 422, lambda d: d["tables"]["aggs"]["columns"].reverse())
        case("short row", 400, lambda d: d["tables"]["emas"]["rows"][0].pop())
        case("a string for an int", 400,
             lambda d: d["tables"]["aggs"]["rows"][3].__setitem__(1, "7"))
        case("null name", 400, lambda d: d["tables"]["layers"]["rows"][0].__setitem__(1, None))
        case("bad base64", 422, lambda d: d["tables"]["aggs"]["rows"][-1].__setitem__(-1, "@@"))
        case("two runs", 422, lambda d: d["tables"]["runs"]["rows"].append([1, 2]))
        # the writer's checks: lengths, references, constraints
        case("short data", 422, lambda d: d["tables"]["aggs"]["rows"][-1].__setitem__(
            -1, base64.b64encode(b"\0" * 8).decode()))
        case("short hash", 422, lambda d: d["tables"]["batches"]["rows"][-1].__setitem__(
            4, base64.b64encode(b"\0" * 8).decode()))
        case("dangling layer", 422,
             lambda d: d["tables"]["aggs"]["rows"][-1].__setitem__(2, 999999))
        case("dangling snapshot", 422,
             lambda d: d["tables"]["snapshot_layers"]["rows"][-1].__setitem__(0, 999999))
        case("a repeated batch", 422, lambda d: d["tables"]["batches"]["rows"].append(
            d["tables"]["batches"]["rows"][-1]))
        case("a repeated layer id", 422, lambda d: d["tables"]["layers"]["rows"].append(
            [d["tables"]["layers"]["rows"][0][0], "other", 3]))
        case("zero channels", 422,
             lambda d: d["tables"]["layers"]["rows"][0].__setitem__(2, 0))
        return cases

    def test_malformed_files_store_nothing(self):
        st, before, _ = self.b.get("/v1/runs")
        self.assertEqual(st, 200)
        for name, status, body in self.malformed():
            with self.subTest(case=name):
                st, reply, _ = self.import_file(self.b, "bad-file", body)
                self.assertEqual(st, status, "%s: %r" % (name, reply))
                self.assertIn("error", reply)
                self.assertIn("code", reply["error"])
                st, _, _ = self.b.get("/v1/runs/bad-file")
                self.assertEqual(st, 404, "%s: a refused import stored the run" % name)
        st, after, _ = self.b.get("/v1/runs")
        self.assertEqual([r["name"] for r in after["runs"]],
                         [r["name"] for r in before["runs"]])
        self.assertTrue(self.b.running)

    def test_file_larger_than_max_body(self):
        limit = len(self.file) // 2
        d = Daemon("--max-body", str(limit))
        self.addCleanup(d.close)
        d.start()
        st, body, _ = self.import_file(d, "big", self.file)
        self.assertError((st, body, {}), 413, "payload_too_large", what="import past max-body")
        for doc in self.docs:
            st, body, _ = d.post_batch("big", doc)
            self.assertEqual(st, 200, body)
        st, body, _ = d.get("/v1/runs/big/export")
        self.assertError((st, body, {}), 413, "payload_too_large", what="export past max-body")
        self.assertIn("max-body", body["error"]["message"])

    def test_admin_role(self):
        tmp = tempfile.mkdtemp(prefix="bnstat-export-")
        self.addCleanup(shutil.rmtree, tmp, True)
        tokens = os.path.join(tmp, "tokens")
        with open(tokens, "w") as f:
            f.write("tok-read-0123456789 read\ntok-ingest-0123456789 ingest,read\n"
                    "tok-admin-0123456789 admin\n")
        d = Daemon("--token-file", tokens)
        self.addCleanup(d.close)
        d.start()
        for tok in ("tok-read-0123456789", "tok-ingest-0123456789"):
            h = {"Authorization": "Bearer " + tok, "Content-Type": "application/json"}
            st, body, _ = d.request("POST", "/v1/runs/r/import", self.file, h)
            self.assertError((st, body, {}), 403, "forbidden", what="import with " + tok)
            st, body, _ = d.request("GET", "/v1/runs/r/export", None, h)
            self.assertError((st, body, {}), 403, "forbidden", what="export with " + tok)
        h = {"Authorization": "Bearer tok-admin-0123456789", "Content-Type": "application/json"}
        st, body, _ = d.request("POST", "/v1/runs/r/import", self.file, h)
        self.assertEqual(st, 201, body)
        st, raw, _ = d.request_raw("GET", "/v1/runs/r/export", None, h)
        self.assertEqual(st, 200)
        self.assertEqual(resolve(json.loads(raw)), resolve(json.loads(self.file)))


def resolve(doc):
    """The file's tables with every id replaced by what it names, for comparing two files."""
    t = doc["tables"]
    names = {}
    for table in ("domains", "layers", "snapshots"):
        cols = t[table]["columns"]
        key = cols.index("label") if "label" in cols else cols.index("name")
        names[table] = {r[0]: r[key] for r in t[table]["rows"]}
    refs = {"domain": "domains", "layer": "layers", "snapshot": "snapshots"}
    out = {}
    for table, v in t.items():
        rows = []
        for r in v["rows"]:
            row = []
            for col, x in zip(v["columns"], r):
                if col == "id":
                    continue
                if col in refs and table != "snapshots":
                    x = names[refs[col]][x]
                row.append(x)
            rows.append(row)
        out[table] = (v["columns"], rows)
    return out


if __name__ == "__main__":
    unittest.main()
