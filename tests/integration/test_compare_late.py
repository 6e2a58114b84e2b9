"""Late uploads (a batch landing below a run's newest step) against the
simulated EMA's replay checkpoints (docs/API.md, "Comparison"): every answer
after a late upload equals a full replay, with a warm cache and after a
restart. References as in test_compare_long_run.py (compare_testlib.py).

Run:
  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \
  PYTHONPATH=tests/integration python3 tests/integration/test_compare_late.py -v
"""

import unittest

from compare_testlib import *  # noqa: F401,F403 (the model, the references, CompareMixin)


class TestLateUploads(CompareMixin, unittest.TestCase):
    """Batches that land below the latest step after checkpoints were cached."""

    MOMENTA = (0.1, 0.01)

    def setUp(self):
        self.d = Daemon("--synchronous", "normal")
        self.addCleanup(self.d.close)
        self.d.start()
        self.rng = random.Random(zlib.crc32(self.id().encode()))
        self.model = Model()
        docs = gen_run(random.Random(4242), self.model, 299, 299)
        upload_all(self.d, "late", docs)

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    def snapshot(self, domains=("default", "*", "fpn.p4")):
        """Series sim values (checked against the reference) of a few channels."""
        out = {}
        for dom in domains:
            for a in self.MOMENTA:
                for layer, ch in (("bn1", 0), ("bn1", 2), ("bn2", 1)):
                    if dom == "fpn.p4" and layer == "bn2":
                        continue
                    b = self.check_series("late", self.model, dom, layer, ch, a=a,
                                          check_ema=False)
                    out[(dom, a, layer, ch)] = dict(zip(b["step"], zip(b["sim_mean"],
                                                                       b["sim_var"])))
        return out

    def warm(self, steps=(None, 250, 130)):
        """Whole-layer replays: checkpoints every 64 steps, checked on the way."""
        for dom in ("default", "*", "fpn.p4"):
            for a in self.MOMENTA:
                for step in steps:
                    if step is not None and self.model.precise(
                            None if dom == "*" else dom, "bn1", step, 1) is None:
                        continue
                    self.check_compare("late", self.model, dom, step=step, ema="sim", a=a)

    def late(self, domain, step, worker, layers=("bn1", "bn2")):
        doc = make_upload(self.rng, self.model, domain, worker, step, 0,
                          {l: self.rng.choice(COUNTS) for l in layers}, False)
        st, body, _ = self.d.post_batch("late", doc)
        self.assertEqual(st, 200, body)
        self.assertFalse(body["duplicate"])

    def check_after(self, before, late_step, changed_domains, changed_layers=("bn1", "bn2")):
        """Every series value: equal to the reference; bit-identical before
        late_step; changed from `before` at and after it where the data did."""
        after = self.snapshot()
        for key, vals in after.items():
            dom = key[0]
            old = before[key]
            for s, v in vals.items():
                if s < late_step:
                    self.assertEqual(v, old.get(s), "%r at step %d changed" % (key, s))
            if dom in changed_domains and key[2] in changed_layers:
                later = [s for s in vals if s >= late_step and s in old]
                self.assertTrue(later)
                self.assertNotEqual(vals[later[0]], old[later[0]],
                                    "%r: the late batch changed nothing at step %d (bad test?)"
                                    % (key, later[0]))
                if key[1] == 0.01:   # with 0.1 the change fades below a double by the end
                    self.assertNotEqual(vals[later[-1]], old[later[-1]],
                                        "%r: unchanged at the end" % (key,))
            else:
                self.assertEqual(vals, old, "%r: another domain's late batch changed it"
                                 % (key,))
        return after

    def compare_everywhere(self, steps=(None, 299, 250, 200, 130, 70, 64, 20, 12)):
        for dom in ("default", "*", "fpn.p4"):
            for a in self.MOMENTA:
                for step in steps:
                    if step is not None and self.model.precise(
                            None if dom == "*" else dom, "bn1", step, 1) is None:
                        continue
                    self.check_compare("late", self.model, dom, step=step, ema="sim", a=a)

    def test_late_uploads_with_a_warm_cache(self):
        m = self.model
        self.assertNotIn(5, m.steps("default", "bn1"))
        self.assertIn(10, m.steps("default", "bn1"))
        self.warm()
        before = self.snapshot()
        self.warm()            # and again: everything served from checkpoints

        # 1. a new batch into an old step that has data (step 10 of 300)
        self.late("default", 10, "late0")
        # the first reads after it resume from late ranges: series from 250 first
        self.check_series("late", m, "default", "bn1", 0, frm=250, check_ema=False)
        self.check_series("late", m, "*", "bn1", 2, a=0.01, frm=200, check_ema=False)
        self.compare_everywhere()
        before = self.check_after(before, 10, ("default", "*"))

        # 2. into a step that had no data at all before (5)
        self.warm()
        self.late("default", 5, "late1")
        self.assertIn(5, m.steps("default", "bn1"))
        self.compare_everywhere()
        before = self.check_after(before, 5, ("default", "*"))

        # 3. between checkpoints: a query below it first resumes from a valid
        # checkpoint and leaves the stale ones above; they must not be used
        self.warm()
        self.late("default", 160, "late2")
        self.check_compare("late", m, "default", step=100, ema="sim", a=0.1)
        self.check_compare("late", m, "*", step=100, ema="sim", a=0.1)
        self.check_series("late", m, "default", "bn1", 0, frm=200, check_ema=False)
        self.compare_everywhere()
        before = self.check_after(before, 160, ("default", "*"))

        # 4. into the other domain: fpn.p4 and * change, default does not
        self.warm()
        self.late("fpn.p4", 7, "late3", layers=("bn1",))
        self.compare_everywhere()
        before = self.check_after(before, 7, ("fpn.p4", "*"), ("bn1",))

        # 4b. the first batch of a new domain, below the run's latest step:
        # only the pooled domain * changes
        self.warm()
        self.late("fpn.p5", 50, "late4")
        self.compare_everywhere(steps=(None, 299, 130, 64))
        before = self.check_after(before, 50, ("*",))

        # 5. an in-order upload after the latest step (not late) is seen too
        self.warm()
        self.late("default", 300, "w0")
        self.compare_everywhere(steps=(None, 300, 299, 250))
        after = self.snapshot()
        self.assertIn(300, after[("default", 0.1, "bn1", 0)])
        # and another worker at that same latest step (not late either)
        self.warm(steps=(None, 300))
        self.late("default", 300, "w1")
        self.compare_everywhere(steps=(None, 300, 250))
        after2 = self.snapshot()
        key = ("default", 0.01, "bn1", 0)
        self.assertNotEqual(after2[key][300], after[key][300])
        self.assertEqual(after2[key][299], after[key][299])

    def test_late_uploads_concurrent_with_queries(self):
        """Queries that take and use checkpoints while late batches land."""
        m = self.model
        self.warm(steps=(None,))
        stop = threading.Event()
        bad = []
        port = self.d.port

        def query_loop(k):
            i = 0
            while not stop.is_set():
                dom = ("default", "*")[(i + k) % 2]
                a = ("0.1", "0.01")[(i // 2) % 2]
                step = (None, 250, 130, 299)[(i // 4) % 4]
                params = {"domain": dom, "ema": "sim", "momentum": a}
                if step is not None:
                    params["step"] = step
                st, body, _ = get(port, "/v1/runs/late/compare", params)
                if st != 200:
                    bad.append((params, st, body))
                st, body, _ = get(port, "/v1/runs/late/series",
                                  {"layer": "bn1", "channel": 0, "domain": dom, "momentum": a,
                                   "from": 200})
                if st != 200:
                    bad.append(("series", st, body))
                i += 1

        threads = [threading.Thread(target=query_loop, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        try:
            rng = random.Random(77)
            for j in range(16):
                step = rng.randrange(0, 290)
                self.late("default", step, "conc%d" % j)
                stop.wait(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertEqual(bad, [])
        # whatever checkpoints were taken meanwhile, the answers are the final state's
        self.compare_everywhere(steps=(None, 299, 250, 200, 130, 64))
        self.snapshot(domains=("default", "*"))
        self.compare_everywhere(steps=(None, 250, 130))

    def test_late_uploads_after_restart(self):
        m = self.model
        self.warm()
        before = self.snapshot()
        self.d.stop()
        self.d.restart()
        # the cache is empty: a late write first, then the first replays
        self.late("default", 10, "late0")
        self.compare_everywhere()
        before = self.check_after(before, 10, ("default", "*"))
        # the same queries again, now from the checkpoints they left
        self.compare_everywhere()
        # a late write over the new checkpoints, and another restart
        self.late("default", 40, "late1")
        self.late("fpn.p4", 41, "late1", layers=("bn1",))
        self.d.stop()
        self.d.restart()
        self.check_series("late", m, "*", "bn1", 0, frm=100, check_ema=False)
        self.compare_everywhere()
        self.check_after(before, 40, ("default", "*", "fpn.p4"))

if __name__ == "__main__":
    unittest.main()
