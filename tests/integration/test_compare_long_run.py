"""EMA versus precise statistics over a long run (docs/API.md, "Comparison", "Series", "Domains"): compare, series, domains, shift.

Every expected number is computed here from the values as uploaded:

  * per-step pooled statistics and precise windows exactly, with Fractions
    (Chan's merge is not used: mean = sum(n*m)/N, M2 = sum(M2_b + n*(m_b-mean)^2));
  * the simulated EMA by a plain loop r = a*x + (1-a)*r over those pooled
    values (x = mean and the unbiased M2/(n-1)), from 0 and 1, first step of
    the run in the domain, steps without data skipped;
  * the comparison metrics with 50-digit Decimal arithmetic from the formulas
    of docs/API.md, "Comparison" (eps = 1e-5).

The simulated EMA is served through a cache of replay checkpoints (every 64
steps with data), which late uploads must invalidate; runs here are longer than
200 steps and the queries are ordered so that checkpoints exist when a late
upload lands, both with a warm cache and after a restart.

Run:
  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \
  PYTHONPATH=tests/integration python3 tests/integration/test_compare_long_run.py -v
"""
import unittest

from compare_testlib import *  # noqa: F401,F403 (the model, the references, CompareMixin)


class TestLongRun(CompareMixin, unittest.TestCase):
    """A 320-step run in two domains (read only; a few tests use runs of their own)."""

    RUN = "long"

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--synchronous", "normal")
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        cls.model = Model()
        docs = gen_run(random.Random(20240917), cls.model, 319, 303)
        cls.n_docs = len(docs)
        upload_all(cls.d, cls.RUN, docs)

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    # -- the simulated EMA ---------------------------------------------------

    def test_sim_series_domain_default_and_cache(self):
        m, run = self.model, self.RUN
        self.assertGreater(len(m.steps("default", "bn1")), 200)
        # cold: no checkpoints yet
        first = self.check_series(run, m, "default", "bn1", 0)
        # a whole-layer replay takes checkpoints every 64 steps with data
        self.check_compare(run, m, "default", ema="sim", a=0.1)
        again = self.check_series(run, m, "default", "bn1", 0)
        self.assertEqual(first, again, "the same series twice gave other bits")
        for ch in range(3):
            self.check_series(run, m, "default", "bn1", ch)
        # ranges that resume from a checkpoint, and ones that end early
        for frm, to in ((100, None), (200, None), (64, 64), (130, 300), (None, 70),
                        (250, 260), (150, 159), (318, 319)):
            self.check_series(run, m, "default", "bn1", 2, frm=frm, to=to)
            self.check_series(run, m, "default", "bn2", 1, frm=frm, to=to)
        # compare at many steps, after and between the checkpoints
        for step in (319, 318, 70, 64, 65, 130, 131, 200, 256, 257, 300, 5, 0):
            if m.precise("default", "bn1", step, 1) is None:
                continue
            self.check_compare(run, m, "default", step=step, ema="sim", a=0.1)
        for step in (319, 200, 100):
            self.check_compare(run, m, "default", step=step, ema="sim", a=0.1)   # twice

    def test_sim_series_domain_star(self):
        m, run = self.model, self.RUN
        # steps 27, 151, 155, 159 have data only in fpn.p4: pooled over domains they count
        star_steps = m.steps(None, "bn1")
        for s in (27, 151, 155, 159):
            self.assertIn(s, star_steps)
            self.assertNotIn(s, m.steps("default", "bn1"))
        for a in (0.1, 1.0, 0.01):
            self.check_series(run, m, "*", "bn1", 1, a=a)
            self.check_compare(run, m, "*", ema="sim", a=a)
            self.check_series(run, m, "*", "bn1", 1, a=a)
            self.check_series(run, m, "*", "bn1", 0, a=a, frm=180, to=310)
            for step in (300, 155, 90, 27):
                self.check_compare(run, m, "*", step=step, ema="sim", a=a)
            self.check_series(run, m, "*", "bn2", 0, a=a, frm=140)

    def test_sim_series_other_domain_starts_at_its_first_step(self):
        m, run = self.model, self.RUN
        self.assertEqual(m.steps("fpn.p4", "bn1")[0], 3)
        for a in (0.1, 0.5):
            self.check_series(run, m, "fpn.p4", "bn1", 2, a=a)
            self.check_compare(run, m, "fpn.p4", ema="sim", a=a)
            self.check_compare(run, m, "fpn.p4", step=7, ema="sim", a=a)
            self.check_series(run, m, "fpn.p4", "bn1", 0, a=a, frm=200)
        # bn2 never had data in fpn.p4: an empty series, not an error
        body = self.series(run, "bn2", 0, domain="fpn.p4")
        self.assertEqual(body["step"], [])
        self.assertEqual(body["sim_mean"], [])

    def test_momentum_one_is_the_last_pooled_batch(self):
        # with momentum 1 the EMA is the last step's pooled mean and unbiased
        # variance: compare against the population var M2/n gives var_err = ln(n/(n-1))
        m, run = self.model, self.RUN
        body = self.check_compare(run, m, "default", step=301, ema="sim", a=1.0)
        self.assertLess(body["layers"]["bn1"]["mean_err_max"], 1e-9)
        self.assertGreater(body["layers"]["bn1"]["var_err"], 0.0)
        # and a window over several steps is not the last step alone
        body = self.check_compare(run, m, "default", step=301, window=30, ema="sim", a=1.0)
        self.assertGreater(body["layers"]["bn1"]["mean_err_max"], 1e-3)

    def test_compare_sim_metrics(self):
        m, run = self.model, self.RUN
        for a in (0.1, 1.0, 0.01, 0.5):
            for est in ("population", "mean_of_batch_var"):
                for window in (1, 5):
                    self.check_compare(run, m, "default", ema="sim", a=a, est=est, window=window)
                    self.check_compare(run, m, "default", step=222, ema="sim", a=a, est=est,
                                       window=window)
        # a step without data whose window has some (150..159 is a gap): the
        # EMA is the one after the last step with data; and past the latest step
        for a in (0.1, 0.01):
            self.check_compare(run, m, "default", step=155, window=10, ema="sim", a=a)
            self.check_compare(run, m, "default", step=400, window=90, ema="sim", a=a)
            self.check_compare(run, m, "*", step=158, window=5, ema="sim", a=a)
        # a layer filter, and the default domain when none is given
        self.check_compare(run, m, "default", ema="sim", layers=["bn2"], send_domain=False)
        # a step where bn2 has no data (w0 left it unused, no w1): bn2 is left out
        s = next(s for s in range(320) if s % 39 == 30 and
                 m.precise("default", "bn2", s, 1) is None and
                 m.precise("default", "bn1", s, 1) is not None)
        body = self.check_compare(run, m, "default", step=s, ema="sim")
        self.assertEqual(sorted(body["layers"]), ["bn1"])
        # the metrics really depend on the momentum (the checks are not vacuous)
        b1 = self.get_ok("/v1/runs/long/compare", ema="sim", momentum="0.1")
        b2 = self.get_ok("/v1/runs/long/compare", ema="sim", momentum="0.01")
        self.assertGreater(abs(b1["overall"]["kl"] - b2["overall"]["kl"]), 1e-6)

    def test_keras_momentum_conversion(self):
        # Keras: moving = moving * 0.99 + batch * (1 - 0.99) is PyTorch momentum 0.01
        m, run = self.model, self.RUN
        steps = m.steps("default", "bn2")
        rm, rv = 0.0, 1.0
        keras = {}
        for s in steps:
            n_tot, ch = m.step_pooled("default", "bn2", s)
            rm = rm * 0.99 + float(ch[0][0]) * (1 - 0.99)
            rv = rv * 0.99 + float(ch[0][1] / (n_tot - 1)) * (1 - 0.99)
            keras[s] = (rm, rv)
        body = self.series(run, "bn2", 0, momentum="0.01")
        self.assertEqual(body["step"], steps)
        self.assertEqual(body["momentum"], 0.01)
        for i, s in enumerate(steps):
            self.assertRelClose(body["sim_mean"][i], keras[s][0], 1e-10, "sim_mean at %d" % s)
            self.assertRelClose(body["sim_var"][i], keras[s][1], 1e-10, "sim_var at %d" % s)
        # the Keras decay itself is not a PyTorch momentum: 0.99 is a different EMA
        body99 = self.series(run, "bn2", 0, momentum="0.99")
        self.assertGreater(abs(body99["sim_mean"][-1] - keras[steps[-1]][0]), 1e-3)
        self.check_compare(run, m, "default", ema="sim", a=0.01)

    # -- the worker EMA --------------------------------------------------------

    def test_compare_worker_ema(self):
        m, run = self.model, self.RUN
        # latest step 319: 319 % 3 != 0 so w0 reported; odd so w1 did not
        body = self.check_compare(run, m, "default", ema="worker", send_domain=False)
        self.assertEqual(body["worker"], "w0")
        self.check_compare(run, m, "default", ema="worker", window=5)
        # w0 and w1 both reported: the first by name is w0; w1 on request
        both = [s for s in range(320) if s % 6 in (2, 4) and "w1" in
                m.emas.get(("default", "bn1", s), {})]
        self.assertTrue(both)
        for s in both[:4]:
            body = self.check_compare(run, m, "default", step=s, ema="worker")
            self.assertEqual(body["worker"], "w0")
            body = self.check_compare(run, m, "default", step=s, ema="worker", worker="w1")
            self.assertEqual(body["worker"], "w1")
            self.check_compare(run, m, "default", step=s, ema="worker", worker="w1",
                               est="mean_of_batch_var", window=3)
        # only w1 reported (s % 3 == 0, even): the first by name is w1
        only_w1 = [s for s in range(0, 320, 6) if "w1" in m.emas.get(("default", "bn1", s), {})]
        self.assertTrue(only_w1)
        for s in only_w1[:3]:
            body = self.check_compare(run, m, "default", step=s, ema="worker")
            self.assertEqual(body["worker"], "w1")
        # w0 sent two batches (seq 0 and 1) at one step, seq 1 sometimes first:
        # its EMA there is the one of seq 1
        two = [s for s in range(320) if s % 7 == 2 and s % 3 != 0 and
               m.precise("default", "bn1", s, 1) is not None][:8]
        self.assertTrue(any(s % 14 == 9 for s in two) and any(s % 14 == 2 for s in two))
        for s in two:
            self.check_compare(run, m, "default", step=s, ema="worker", worker="w0")
        # the worker EMA of the other domain
        self.check_compare(run, m, "fpn.p4", ema="worker")
        self.check_compare(run, m, "fpn.p4", step=11, ema="worker", window=4)

    def test_compare_worker_ema_errors(self):
        m, run = self.model, self.RUN
        # no worker reported an EMA at an odd multiple of 3 without w1's EMA
        s = next(s for s in range(3, 320, 6) if m.precise("default", "bn1", s, 1) is not None
                 and not any(m.emas.get(("default", l, s)) for l in LAYERS))
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": s}), 404,
                         what="no EMA at step %d" % s)
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": s, "ema": "worker"}),
                         404)
        # the named worker reported none there (w1 is absent at odd steps)
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": 319, "worker": "w1"}),
                         404)
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": 319, "worker": "nobody"}),
                         404)
        # an EMA belongs to one domain
        self.assertError(self.d.get("/v1/runs/long/compare", {"domain": "*"}), 422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"domain": "*", "ema": "worker"}),
                         422)
        # other parameter errors
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "momentum": "0"}),
                         422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "momentum": "1.5"}),
                         422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "bogus"}), 422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"domain": "nope", "ema": "sim"}),
                         404)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "step": 155}), 404,
                         what="a window without data")
        self.assertError(self.d.get("/v1/runs/nope/compare", {"ema": "sim"}), 404)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "layer": "bnX"}),
                         404)

    # Finite, valid uploads whose statistics do not fit a double: a worker
    # EMA mean of 1e160 (d^2 = 1e320 in the KL), and a domain whose mean is
    # 1e160 (pooled with "default" over *, M2 overflows). Replies must still
    # be well-formed: a 200 with the finite values right; a value that is
    # infinite has no JSON number (null, or a huge finite number, is fine).
    HUGE_DOCS = (
        {"worker": "w0", "step": 5, "seq": 0, "layers": {"bn": {
            "count": 4, "mean": [1.0, 2.0], "var": [1.0, 0.5],
            "ema_mean": [1e160, 2.5], "ema_var": [1.0, 0.25]}}},
        {"worker": "w0", "step": 5, "seq": 0, "domain": "far", "layers": {"bn": {
            "count": 4, "mean": [1e160, 2.0], "var": [1.0, 0.5]}}},
    )
    HUGE_P = ([1.0, 2.0], [0.75, 0.375])          # population var = 3/4 of unbiased

    def huge_run(self):
        for doc in self.HUGE_DOCS:
            st, body, _ = self.d.post_batch("huge", doc)
            self.assertEqual(st, 200, body)

    def check_maybe_infinite(self, body, ref, what):
        self.assertIsInstance(body, dict, what)
        for k in METRICS:
            r = float(ref[k])
            if math.isinf(r):
                self.assertTrue(body.get(k) is None or (isinstance(body[k], float)
                                                        and body[k] >= 1e300),
                                "%s.%s: %r for an infinite value" % (what, k, body.get(k)))
            else:
                self.assertMetric(body.get(k), ref[k], "%s.%s" % (what, k))

    def test_compare_metric_overflow(self):
        self.huge_run()
        st, body, _ = self.d.get("/v1/runs/huge/compare", {"ema": "worker"})
        self.assertEqual(st, 200, "compare, worker EMA mean 1e160: %r %r" % (st, body))
        ref = cmp_ref([1e160, 2.5], [1.0, 0.25], *self.HUGE_P)
        self.check_maybe_infinite(body["layers"]["bn"], ref, "compare layers.bn")
        self.check_maybe_infinite(body["overall"], ref, "compare overall")

    def test_shift_metric_overflow(self):
        self.huge_run()
        st, body, _ = self.d.get("/v1/runs/huge/shift", {"source": "far", "target": "default"})
        self.assertEqual(st, 200, "shift from a domain with mean 1e160: %r %r" % (st, body))
        ref = cmp_ref([1e160, 2.0], [0.75, 0.375], *self.HUGE_P)
        self.check_maybe_infinite(body["layers"]["bn"], ref, "shift layers.bn")

    def test_series_overflow_keeps_arrays_parallel(self):
        # pooled over *, channel 0 has means 1 and 1e160: M2/n overflows
        self.huge_run()
        st, body, _ = self.d.get("/v1/runs/huge/series",
                                 {"layer": "bn", "channel": 0, "domain": "*"})
        self.assertEqual(st, 200, body)
        self.assertEqual(body["step"], [5])
        for key in ("batch_mean", "batch_var", "precise_mean", "precise_var", "ema_mean",
                    "ema_var", "sim_mean", "sim_var"):
            self.assertEqual(len(body[key]), 1, "series %s: %r (the arrays must stay "
                             "parallel to step)" % (key, body[key]))
        self.assertRelClose(body["batch_mean"][0], 5e159, REL, "batch_mean")
        for key in ("batch_var", "precise_var", "sim_var"):
            v = body[key][0]
            self.assertTrue(v is None or (isinstance(v, float) and v >= 1e300),
                            "series %s: %r for an infinite variance" % (key, v))
        # the finite channel is unaffected
        st, body, _ = self.d.get("/v1/runs/huge/series",
                                 {"layer": "bn", "channel": 1, "domain": "*"})
        self.assertEqual(st, 200, body)
        self.assertRelClose(body["batch_var"][0], 0.375, REL, "channel 1 batch_var")

    # -- series ------------------------------------------------------------------

    def test_series_batch_precise_and_ema(self):
        m, run = self.model, self.RUN
        for window in (1, 5):
            self.check_series(run, m, "default", "bn1", 2, window=window)
            self.check_series(run, m, "default", "bn2", 0, window=window, frm=40, to=120)
            self.check_series(run, m, "*", "bn1", 0, window=window, frm=20, to=170)
            self.check_series(run, m, "fpn.p4", "bn1", 1, window=window)
        # the worker named: only its EMA, null elsewhere
        self.check_series(run, m, "default", "bn1", 1, worker="w1")
        self.check_series(run, m, "default", "bn2", 1, worker="w0", window=3)
        body = self.check_series(run, m, "default", "bn1", 0, worker="nobody")
        self.assertTrue(all(v is None for v in body["ema_mean"]))
        # domain *: no worker EMA at all
        body = self.check_series(run, m, "*", "bn2", 1)
        self.assertTrue(all(v is None for v in body["ema_var"]))
        # from/to are inclusive and may name steps without data
        body = self.check_series(run, m, "default", "bn1", 0, frm=15, to=27)
        self.assertEqual(body["step"][0], 15)
        self.assertNotIn(16, body["step"])
        self.assertEqual(body["step"][-1], 26)
        body = self.check_series(run, m, "default", "bn1", 0, frm=319, to=319)
        self.assertEqual(body["step"], [319])
        body = self.series(run, "bn1", 0, **{"from": 500})
        self.assertEqual(body["step"], [])
        # sanity of the reply's other fields
        body = self.series(run, "bn1", 2, window=4, momentum="0.25", domain="default")
        self.assertEqual((body["run"], body["layer"], body["channel"], body["domain"],
                          body["window"], body["momentum"]),
                         (run, "bn1", 2, "default", 4, 0.25))

    def test_series_downsampling(self):
        m, run = self.model, self.RUN
        full = self.check_series(run, m, "default", "bn1", 0, window=5)
        n = len(full["step"])
        for key, val, frm in (("points", 7, None), ("points", 50, None), ("points", 1, None),
                              ("points", 10, 100), ("stride", 10, None), ("stride", 7, 33),
                              ("points", 100000, None), ("stride", 1, None)):
            params = {key: val, "window": 5}
            if frm is not None:
                params["from"] = frm
            what = "series %r" % params
            body = self.series(run, "bn1", 0, **params)
            idx0 = 0 if frm is None else next(i for i, s in enumerate(full["step"]) if s >= frm)
            avail = n - idx0
            got = body["step"]
            # points merge consecutive entries (docs/API.md, "History"): groups of k
            k = body["stride"]
            self.assertGreaterEqual(k, 1, what)
            if key == "stride":
                self.assertEqual(k, val, what)
            groups = [list(range(g, min(g + k, avail))) for g in range(0, avail, k)]
            pos = [grp[-1] for grp in groups]
            self.assertEqual(got, [full["step"][idx0 + p] for p in pos],
                             what + ": a point sits at the last entry it merges")
            self.assertEqual(got[-1], full["step"][-1], what + ": the last entry is a point")
            self.assertEqual(body["resolution"], [len(g) for g in groups], what)
            if key == "points":
                self.assertLessEqual(len(got), val, what)
            for arr in ("precise_mean", "precise_var", "sim_mean", "sim_var"):
                # (a window that starts elsewhere may merge in another order)
                self.assertAllRelClose(body[arr], [full[arr][idx0 + p] for p in pos], REL,
                                       "%s: %s at the points' last entries" % (what, arr))
            for arr in ("ema_mean", "ema_var"):
                self.assertEqual(body[arr], [full[arr][idx0 + p] for p in pos],
                                 "%s: %s at the points' last entries" % (what, arr))
            # batch statistics: the exact pool of the merged entries
            for i, grp in enumerate(groups):
                lo = full["step"][idx0 + grp[0]] - 1
                hi = full["step"][idx0 + grp[-1]]
                n_tot, chans = m.pool(m.entries("default", "bn1", lo, hi), m.channels["bn1"])
                mean, m2 = chans[0]
                self.assertRelClose(body["batch_mean"][i], float(mean), REL, what)
                self.assertRelClose(body["batch_var"][i], float(m2 / n_tot), REL, what)

    def test_series_errors(self):
        path = "/v1/runs/long/series"
        g = self.d.get
        self.assertError(g(path, {"channel": 0}), 400, what="no layer")
        self.assertError(g(path, {"layer": ["bn1", "bn2"], "channel": 0}), 400,
                         what="two layers")
        self.assertError(g(path, {"layer": "bn1"}), 400, what="no channel")
        self.assertError(g(path, {"layer": "bn1", "channel": "x"}), 400, what="channel x")
        self.assertError(g(path, {"layer": "bnX", "channel": 0}), 404, what="unknown layer")
        self.assertError(g(path, {"layer": "bn1", "channel": 3}), 422, what="channel 3 of 3")
        self.assertError(g(path, {"layer": "bn2", "channel": 2}), 422, what="channel 2 of 2")
        self.assertError(g(path, {"layer": "bn1", "channel": -1}), 422, what="channel -1")
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "from": 10, "to": 9}), 422,
                         what="from > to")
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "0"}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "1.5"}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "-0.1"}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "abc"}), 400)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "window": 0}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "domain": "nope"}), 404,
                         what="unknown domain")
        self.assertError(g("/v1/runs/nope/series", {"layer": "bn1", "channel": 0}), 404)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "points": 0}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "stride": 0}), 422)
        # from == to is fine
        st, body, _ = g(path, {"layer": "bn1", "channel": 0, "from": 10, "to": 10})
        self.assertEqual(st, 200, body)

    # -- domains and shift ---------------------------------------------------------

    def test_domains(self):
        m = self.model
        body = self.get_ok("/v1/runs/long/domains")
        self.assertEqual(body["run"], "long")
        names = [d["name"] for d in body["domains"]]
        self.assertEqual(names, sorted(m.batches), "domains, by name")
        for dd in body["domains"]:
            name = dd["name"]
            for key in ("layers", "steps", "batches", "elements"):
                self.assertTrue(is_json_int(dd.get(key)), "%s.%s=%r" % (name, key, dd.get(key)))
            self.assertEqual(dd["batches"], m.batches[name], name)
            self.assertEqual(dd["steps"], len(m.domain_steps[name]), name)
            layers = [l for l in LAYERS if m.steps(name, l)]
            self.assertEqual(dd["layers"], len(layers), name)
            elements = sum(e[1] for l in LAYERS for e in m.entries(name, l, -1, 10 ** 9))
            self.assertEqual(dd["elements"], elements, name)
        self.assertEqual(sum(d["batches"] for d in body["domains"]), self.n_docs)
        self.assertError(self.d.get("/v1/runs/nope/domains"), 404)

    def shift_ref(self, source, target, step, window, est):
        m = self.model
        per = {}
        s = None if source == "*" else source
        t = None if target == "*" else target
        for name in sorted(LAYERS):
            e = m.precise(s, name, step, window, est)
            p = m.precise(t, name, step, window, est)
            if e is None or p is None:
                continue
            per[name] = cmp_ref(e[0], e[1], p[0], p[1])
        return per, overall_ref(per)

    def check_shift(self, source, target, step=None, window=1, est="population"):
        params = {"source": source, "target": target, "window": window, "estimator": est}
        if step is not None:
            params["step"] = step
        what = "shift %r" % params
        body = self.get_ok("/v1/runs/long/shift", **params)
        m = self.model
        if step is None:
            step = min(m.latest(None if source == "*" else source),
                       m.latest(None if target == "*" else target))
        per, overall = self.shift_ref(source, target, step, window, est)
        self.assertEqual((body["source"], body["target"], body["step"], body["window"],
                          body["estimator"]), (source, target, step, window, est), what)
        self.assertEqual(sorted(body["layers"]), sorted(per), what)
        for name in per:
            self.assertMetrics(body["layers"][name], per[name], "%s layers.%s" % (what, name))
        self.assertMetrics(body["overall"], overall, what + " overall")
        return body

    def test_shift(self):
        m = self.model
        self.assertEqual(m.latest("fpn.p4"), 303)
        self.assertEqual(m.latest("default"), 319)
        # default step: the lower of the two latest steps (303), both orders
        body = self.check_shift("fpn.p4", "default")
        self.assertEqual(sorted(body["layers"]), ["bn1"])   # bn2 has no data in fpn.p4
        self.check_shift("default", "fpn.p4")
        self.check_shift("fpn.p4", "default", step=203, window=20)
        self.check_shift("fpn.p4", "default", step=303, window=40, est="mean_of_batch_var")
        self.check_shift("fpn.p4", "*", step=111, window=8)
        # source is the estimate, target the reference: the two differ
        a = self.get_ok("/v1/runs/long/shift", source="fpn.p4", target="default")
        b = self.get_ok("/v1/runs/long/shift", source="default", target="fpn.p4")
        self.assertGreater(abs(a["overall"]["kl"] - b["overall"]["kl"]), 1e-6)
        self.assertGreater(abs(a["overall"]["mean_err"] - b["overall"]["mean_err"]), 1e-6)
        # errors
        self.assertError(self.d.get("/v1/runs/long/shift", {"source": "default"}), 400)
        self.assertError(self.d.get("/v1/runs/long/shift", {"target": "default"}), 400)
        self.assertError(self.d.get("/v1/runs/long/shift",
                                    {"source": "nope", "target": "default"}), 404)
        self.assertError(self.d.get("/v1/runs/long/shift",
                                    {"source": "fpn.p4", "target": "default", "step": 5}), 404,
                         what="no data in fpn.p4 at step 5")


# --------------------------------------------------------------------------

if __name__ == "__main__":
    unittest.main()
