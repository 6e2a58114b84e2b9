"""The drift metrics the writer keeps per entry (docs/DESIGN.md, "Drift
metrics"): /drift's default question (a worker EMA against the entry's own
statistics, window 1) is answered from them, and the answer is the one the
query computes from the arrays, bit for bit.

The computed answer is asked for as window=auto&min_batches=1, which
selects the same rows (each entry alone, a bucket whole) through the path
that reads the arrays; the kept one is the default. A row overwritten in
the database shows that the default really reads the kept rows.
"""

import random
import sqlite3
import struct
import unittest

from bnstat_testlib import Daemon, TestCaseMixin

STEPS = 120
LAYERS = {"bn1": 3, "bn2": 2}
WORKERS = ("w0", "w1", "w2")


def make_doc(rng, worker, step, seq=0):
    layers = {}
    for name, c in LAYERS.items():
        layer = {"count": rng.choice([8, 16]),
                 "mean": [rng.gauss(0.0, 1.0) for _ in range(c)],
                 "var": [rng.uniform(0.5, 2.0) for _ in range(c)]}
        no_ema = (step % 11 == 5                          # nobody reports an EMA
                  or (worker == "w0" and step % 7 == 3)   # w1 is the first by name
                  or (worker == "w0" and name == "bn2" and step % 2))
        if not no_ema:
            if step % 3 == 0:   # float32 EMAs are kept as floats
                layer["ema_mean"] = [struct.unpack("f", struct.pack("f", rng.gauss(0, 1)))[0]
                                     for _ in range(c)]
                layer["ema_var"] = [struct.unpack("f", struct.pack("f", rng.uniform(0.5, 2)))[0]
                                    for _ in range(c)]
            else:
                layer["ema_mean"] = [rng.gauss(0.0, 1.0) for _ in range(c)]
                layer["ema_var"] = [rng.uniform(0.5, 2.0) for _ in range(c)]
        layers[name] = layer
    return {"worker": worker, "step": step, "seq": seq, "layers": layers}


class TestDriftKept(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--history-full-steps", "30")
        cls.d.start()
        cls.rng = random.Random(7)
        for step in range(1, STEPS + 1):
            if step % 13 == 7:
                continue                   # a step without data
            for w in WORKERS:
                st, body, _ = cls.d.post_batch("dk", make_doc(cls.rng, w, step))
                assert st == 200, body
        cls.d.wait_bucketed("dk", 90)
        # every entry below the latest step (120) has its row
        cls.d.wait_drift("dk", 119)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def drift(self, **params):
        st, body, _ = self.d.get("/v1/runs/dk/drift", dict({"points": 10000}, **params))
        self.assertEqual(st, 200, body)
        return body

    def assert_same(self, kept, computed, what, entries=30):
        self.assertGreaterEqual(len(kept["step"]), entries, what)
        for key in ("step", "resolution", "layer_order", "layers", "overall"):
            self.assertEqual(kept[key], computed[key], "%s: %s" % (what, key))

    def computed(self, **params):
        return self.drift(window="auto", min_batches=1, **params)

    def test_default_equals_computed(self):
        kept = self.drift()
        self.assertEqual(kept["window"], 1)
        self.assert_same(kept, self.computed(), "first worker by name")
        # buckets are entries too: one at 10, 20, ... 90
        self.assertIn(10, kept["resolution"])
        # steps where nobody has an EMA have no value
        i = kept["step"].index(104)
        self.assertIsNone(kept["overall"]["kl"][i])

    def test_every_entry_up_to_the_mark_has_its_row(self):
        # the query lists the entries up to drift_through from the rows alone
        entries = self.computed(**{"to": 119})["step"]
        db = sqlite3.connect(self.d.db, timeout=10)
        try:
            rows = [r[0] for r in db.execute(
                "SELECT step FROM drift_steps d JOIN runs r ON r.id = d.run_id"
                " WHERE r.name = 'dk' AND step <= 119 ORDER BY step")]
        finally:
            db.close()
        self.assertEqual(rows, entries)

    def test_named_workers_equal_computed(self):
        for w in WORKERS:
            self.assert_same(self.drift(worker=w), self.computed(worker=w), "worker " + w)

    def test_points_merge_the_same(self):
        a = self.drift(points=7)
        b = self.drift(points=7, window="auto", min_batches=1)
        for key in ("step", "resolution", "layers", "overall"):
            self.assertEqual(a[key], b[key], key)

    def test_late_upload_is_seen_at_once_and_kept_again(self):
        doc = make_doc(random.Random(99), "w0", 100, seq=1)
        doc["layers"]["bn1"]["ema_mean"] = [5.0, -5.0, 5.0]
        doc["layers"]["bn1"]["ema_var"] = [0.1, 0.1, 0.1]
        st, body, _ = self.d.post_batch("dk", doc)
        self.assertEqual(st, 200, body)
        before = self.drift(**{"from": 95, "to": 105})
        self.assert_same(before, self.computed(**{"from": 95, "to": 105}), "after a late upload",
                         entries=10)
        # w0's new EMA of bn1 at step 100 is far off: the metric shows it
        i = before["step"].index(100)
        self.assertGreater(before["layers"]["bn1"]["mean_err"][i], 3.0)
        self.d.wait_drift("dk", 119)
        self.assert_same(self.drift(), self.computed(), "kept again")

    def test_kept_rows_are_what_the_default_reads(self):
        # overwrite the row of step 105 with another value, from outside
        db = sqlite3.connect(self.d.db, timeout=10)
        try:
            (run_id,) = db.execute("SELECT id FROM runs WHERE name = 'dk'").fetchone()
            (lid,) = db.execute("SELECT id FROM layers WHERE run_id = ? AND name = 'bn1'",
                                (run_id,)).fetchone()
            row = db.execute("SELECT worker, data FROM drift_steps WHERE run_id = ? AND step = 105",
                             (run_id,)).fetchone()
            self.assertIsNotNone(row)
            self.assertEqual(row[0], "w0")
            fake = struct.pack("<qddd", lid, 123.0, 456.0, 789.0)
            db.execute("UPDATE drift_steps SET data = ? WHERE run_id = ? AND step = 105",
                       (fake, run_id))
            db.commit()
        finally:
            db.close()
        kept = self.drift(**{"from": 105, "to": 105})
        self.assertEqual(kept["layers"]["bn1"]["mean_err"], [123.0])
        self.assertEqual(kept["layers"]["bn1"]["kl"], [789.0])
        self.assertNotIn("bn2", kept["layers"])
        computed = self.computed(**{"from": 105, "to": 105})
        self.assertNotEqual(computed["layers"]["bn1"]["mean_err"], [123.0])
        # an upload at step 105 drops the row: the answer is computed again
        st, body, _ = self.d.post_batch("dk", make_doc(random.Random(3), "w2", 105, seq=1))
        self.assertEqual(st, 200, body)
        self.assert_same(self.drift(**{"from": 101, "to": 109}),
                         self.computed(**{"from": 101, "to": 109}), "row dropped", entries=8)


if __name__ == "__main__":
    unittest.main()
