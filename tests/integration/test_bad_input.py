"""Table-driven upload tests over the data fixtures (jansson-style layout).

  $BNSTAT_FIXTURES/invalid/<name>.json   an upload that must be refused
  $BNSTAT_FIXTURES/invalid/<name>.expect "<status> <code> <path>"; path "-"
                                         means no path (absent or empty)
  $BNSTAT_FIXTURES/valid/<name>.json     an upload that must be accepted

Every invalid fixture is POSTed as it is (the bytes of the file) to
/v1/runs/r1/batches of a daemon that already holds valid data for r1, and
must leave r1 byte-for-byte unchanged. Every valid fixture must be accepted
into a run of its own. The fixture set is read when the tests run.
"""

import glob
import json
import os
import random
import re
import unittest

from bnstat_testlib import (Daemon, RawLayerBatch, TestCaseMixin, b64_f64, fixtures_dir,
                            is_json_int)

FIXTURES = fixtures_dir()
RUN = "r1"

# Read back after the bad uploads; every one must be byte-for-byte the same.
WATCHED = [
    "/v1/runs",
    "/v1/runs/r1",
    "/v1/runs/r1/stats",
    "/v1/runs/r1/stats?estimator=mean_of_batch_var",
    "/v1/runs/r1/stats?domain=*&window=1000",
    "/v1/runs/r1/stats?domain=fpn.p3",
    "/v1/runs/r1/stats?step=9",
]


def read_expect(path):
    """(status, code, path or None) from a .expect file."""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    parts = text.split(None, 2)
    if len(parts) != 3 or not parts[0].isdigit():
        raise ValueError("%s: expected '<status> <code> <path>', got %r" % (path, text))
    status, code, epath = int(parts[0]), parts[1], parts[2]
    return status, code, (None if epath == "-" else epath)


def seed_uploads():
    """Valid data for r1: the layer shapes the fixtures use (conv1.bn: 4
    channels, layer1.0.bn1: 3), two domains, two steps, a worker name no
    fixture uses."""
    rng = random.Random(11)
    docs = []
    for step in (9, 10):
        for seq in range(2):
            for domain in ("default", "fpn.p3"):
                layers = {}
                for name, c, n in (("conv1.bn", 4, 64), ("layer1.0.bn1", 3, 32)):
                    rb = RawLayerBatch.generate(rng, n, [0.5 * i - 1 for i in range(c)], [1.0] * c)
                    layers[name] = {"count": rb.count, "mean": rb.mean, "var": b64_f64(rb.var)}
                doc = {"worker": "seed-worker", "step": step, "seq": seq, "layers": layers}
                if domain != "default":
                    doc["domain"] = domain
                docs.append(doc)
    return docs


def run_name_for(fixture):
    name = re.sub(r"[^A-Za-z0-9._-]", "_", fixture)[:120]
    return "valid-" + name


class TestFixtures(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        for doc in seed_uploads():
            st, body, _ = cls.d.post_batch(RUN, doc)
            if st != 200 or body.get("duplicate") is not False:
                raise AssertionError("seeding r1 failed: %r %r" % (st, body))

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    def snapshot(self):
        out = {}
        for path in WATCHED:
            st, raw, _ = self.d.request_raw("GET", path)
            out[path] = (st, raw)
        return out

    def test_invalid_fixtures_are_refused_and_change_nothing(self):
        files = sorted(glob.glob(os.path.join(FIXTURES, "invalid", "*.json")))
        self.assertTrue(files, "no invalid fixtures under %s" % FIXTURES)
        before = self.snapshot()
        for path, (st, raw) in before.items():
            self.assertEqual(st, 200, "%s before the bad uploads: %r" % (path, raw[:300]))
        for f in files:
            name = os.path.basename(f)[:-len(".json")]
            with self.subTest(fixture=name):
                exp_file = f[:-len(".json")] + ".expect"
                self.assertTrue(os.path.exists(exp_file), "%s has no .expect file" % name)
                status, code, epath = read_expect(exp_file)
                with open(f, "rb") as fh:
                    body = fh.read()
                reply = self.d.post_batch(RUN, body)
                e = self.assertError(reply, status, code, what=name)
                if epath is None:
                    self.assertIn(e.get("path", ""), ("", None),
                                  "%s: expected no error.path, got %r" % (name, e))
                else:
                    self.assertEqual(e.get("path"), epath, "%s: error %r" % (name, e))
        after = self.snapshot()
        for path in WATCHED:
            with self.subTest(read_back=path):
                self.assertEqual(after[path], before[path],
                                 "%s changed after the invalid uploads" % path)
        # No identity was recorded either: most fixtures name worker rank0,
        # step 10, seq 0; a valid batch of that identity is new, not a retry.
        st, body, _ = self.d.post_batch(RUN, {"worker": "rank0", "step": 10, "seq": 0, "layers": {
            "conv1.bn": {"count": 8, "mean": [0.5, -1.25, 0, 2], "var": [1, 0.25, 3.5, 0]}}})
        self.assertEqual((st, body), (200, {"accepted": True, "duplicate": False, "layers": 1}))

    def test_expect_files_have_a_fixture(self):
        for f in sorted(glob.glob(os.path.join(FIXTURES, "invalid", "*.expect"))):
            with self.subTest(expect=os.path.basename(f)):
                self.assertTrue(os.path.exists(f[:-len(".expect")] + ".json"),
                                "%s has no .json" % f)
                read_expect(f)

    def test_valid_fixtures_are_accepted(self):
        files = sorted(glob.glob(os.path.join(FIXTURES, "valid", "*.json")))
        self.assertTrue(files, "no valid fixtures under %s" % FIXTURES)
        for f in files:
            name = os.path.basename(f)[:-len(".json")]
            with self.subTest(fixture=name):
                with open(f, "rb") as fh:
                    body = fh.read()
                run = run_name_for(name)
                try:
                    n_layers = len(json.loads(body)["layers"])
                except (ValueError, KeyError, TypeError):
                    n_layers = None   # JSON Python cannot read the same way; skip the count
                st, reply, _ = self.d.post_batch(run, body)
                self.assertEqual(st, 200, "%s: %r" % (name, reply))
                self.assertIs(reply.get("accepted"), True, reply)
                self.assertIs(reply.get("duplicate"), False, reply)
                self.assertTrue(is_json_int(reply.get("layers")), reply)
                if n_layers is not None:
                    self.assertEqual(reply["layers"], n_layers, reply)
                st, reply, _ = self.d.post_batch(run, body)
                self.assertEqual(st, 200, "%s resent: %r" % (name, reply))
                self.assertIs(reply.get("duplicate"), True, "%s resent: %r" % (name, reply))
                st, reply, _ = self.d.get("/v1/runs/%s" % run)
                self.assertEqual(st, 200, "%s: run not listed: %r" % (name, reply))
                self.assertEqual(reply.get("batches"), 1, reply)


if __name__ == "__main__":
    unittest.main()
