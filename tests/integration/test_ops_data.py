"""Operations (docs/OPERATIONS.md), the data kept: DELETE of a run and
retention (retain-steps), for one run and for many.
"""

from ops_testlib import *  # noqa: F401,F403 (the helpers and the modules they import)


def sim_reference(rows, a=0.1):
    """PyTorch's running stats over per-step (mean, unbiased var) rows."""
    m, v = 0.0, 1.0
    for xm, xv in rows:
        m = (1 - a) * m + a * xm
        v = (1 - a) * v + a * xv
    return m, v


class TestDeleteRun(TestCaseMixin, unittest.TestCase):

    STEPS = 100        # > 64 steps with data: the simulated EMA caches a checkpoint

    def fill(self, d, run, seed, mean0):
        rng = random.Random(seed)
        rows = []
        s = Session(d.port)
        try:
            for step in range(1, self.STEPS + 1):
                l, mean, var = layer(3, mean0=mean0, count=32, ema=True, rng=rng)
                st, body, _ = s.post_batch(run, doc(step, layers={"bn": l}))
                self.assertEqual((st, body.get("duplicate")), (200, False), body)
                rows.append((mean, var))
        finally:
            s.close()
        return rows

    def test_delete_removes_everything_and_a_new_run_starts_clean(self):
        d = Daemon()
        self.addCleanup(d.close)
        d.start()
        self.fill(d, "del", 1, 5.0)
        # warm the simulated-EMA cache of the old run
        st, old_cmp, _ = d.get("/v1/runs/del/compare", {"ema": "sim", "step": self.STEPS})
        self.assertEqual(st, 200, old_cmp)
        st, old_series, _ = d.get("/v1/runs/del/series", {"layer": "bn", "channel": 0})
        self.assertEqual(st, 200, old_series)
        st, snap, _ = d.request("POST", "/v1/runs/del/snapshots", json.dumps({"label": "s"}),
                                {"Content-Type": "application/json"})
        self.assertEqual(st, 201, snap)
        self.assertEqual(d.get("/v1/runs")[1]["runs"][0]["name"], "del")

        st, body, _ = d.request("DELETE", "/v1/runs/del")
        self.assertEqual((st, body), (200, {"run": "del", "deleted": True}))
        for path in ("/v1/runs/del", "/v1/runs/del/stats", "/v1/runs/del/snapshots",
                     "/v1/runs/del/snapshots/s", "/v1/runs/del/domains",
                     "/v1/runs/del/compare?ema=sim", "/v1/runs/del/series?layer=bn&channel=0"):
            with self.subTest(path=path):
                self.assertError(d.get(path), 404, "not_found")
        self.assertEqual(d.get("/v1/runs")[1]["runs"], [])
        self.assertError(d.request("DELETE", "/v1/runs/del"), 404, "not_found")
        self.assertError(d.request("DELETE", "/v1/runs/never"), 404, "not_found")
        self.assertError(d.request("DELETE", "/v1/runs/bad%20name"), 422)
        _, metrics, _ = d.get_raw("/metrics")
        self.assertNotIn(b'run="del"', metrics)
        self.assertIn(b"\nbnstat_runs 0\n", metrics)

        # the same name again, with other data and the same batch identities:
        # accepted as new (not duplicates, not conflicts)
        new_rows = self.fill(d, "del", 2, -3.0)
        twin_rows = self.fill(d, "twin", 2, -3.0)   # made after: never had a cache
        self.assertEqual(new_rows, twin_rows)
        st, info, _ = d.get("/v1/runs/del")
        self.assertEqual(info["batches"], self.STEPS, info)
        st, snaps, _ = d.get("/v1/runs/del/snapshots")
        self.assertEqual((st, snaps.get("snapshots")), (200, []), "a snapshot survived")
        for step in (1, 64, self.STEPS):
            st, a, _ = d.stats("del", step=step)
            st2, b, _ = d.stats("twin", step=step)
            self.assertEqual(st, 200, a)
            self.assertEqual(a["layers"]["bn"]["batches"], 1, "stale statistics at step %d" % step)
            a.pop("run"), b.pop("run")
            self.assertEqual(a, b, "step %d differs from the same data in a fresh run" % step)
        for params in ({"ema": "sim", "step": self.STEPS}, {"ema": "sim", "step": 80},
                       {"ema": "sim", "step": self.STEPS, "momentum": 0.1}):
            with self.subTest(compare=params):
                st, a, _ = d.get("/v1/runs/del/compare", params)
                st2, b, _ = d.get("/v1/runs/twin/compare", params)
                self.assertEqual((st, st2), (200, 200), (a, b))
                a.pop("run"), b.pop("run")
                self.assertEqual(a, b, "compare ema=sim on the re-created run is contaminated "
                                 "by the deleted run's replay cache")
        st, a, _ = d.get("/v1/runs/del/series", {"layer": "bn", "channel": 0})
        st2, b, _ = d.get("/v1/runs/twin/series", {"layer": "bn", "channel": 0})
        self.assertEqual(a["sim_mean"], b["sim_mean"])
        self.assertEqual(a["sim_var"], b["sim_var"])
        ref_m, ref_v = sim_reference([(m[0], v[0]) for m, v in new_rows])
        self.assertRelClose(a["sim_mean"][-1], ref_m, 1e-9, "sim_mean at the last step")
        self.assertRelClose(a["sim_var"][-1], ref_v, 1e-9, "sim_var at the last step")
        d.stop()


# --------------------------------------------------------------------------
# retention


class TestRetention(TestCaseMixin, unittest.TestCase):
    N = 50
    C = 512
    LAYERS = ("a.bn", "b.bn")

    def upload_steps(self, daemons, first, last, snapshot_at=None):
        sessions = [Session(d.port) for d in daemons]
        try:
            for step in range(first, last + 1):
                rng = random.Random(step)
                layers = {}
                for name in self.LAYERS:
                    l, mean, var = layer(self.C, mean0=1.0, count=64, rng=rng,
                                         ema=(name == "a.bn" and step % 10 == 0))
                    layers[name] = l
                    if name == "a.bn":
                        self.rows[step] = (mean[0], var[0])
                for s in sessions:
                    st, body, _ = s.post_batch("ret", doc(step, layers=layers))
                    self.assertEqual(st, 200, "step %d: %r" % (step, body))
                if step == snapshot_at:
                    st, body, _ = daemons[0].request(
                        "POST", "/v1/runs/ret/snapshots",
                        json.dumps({"label": "s100", "step": step, "window": 10}),
                        {"Content-Type": "application/json"})
                    self.assertEqual(st, 201, body)
        finally:
            for s in sessions:
                s.close()

    def gone(self, d, step):
        st, body, _ = d.stats("ret", step=step)
        if st not in (200, 404):
            self.fail("stats at step %d: %r %r" % (step, st, body))
        return st == 404

    def test_retention(self):
        self.rows = {}
        d = Daemon("--retain-steps", str(self.N), "--synchronous", "normal")
        base = Daemon("--synchronous", "normal")
        for x in (d, base):
            self.addCleanup(x.close)
            x.start()
        self.upload_steps([d, base], 1, 300, snapshot_at=100)
        st, snap, _ = d.get("/v1/runs/ret/snapshots/s100")
        self.assertEqual(st, 200, snap)
        # warm the simulated-EMA cache (checkpoints every 64 steps) before the pass
        d.get("/v1/runs/ret/series", {"layer": "a.bn", "channel": 0})
        d.get("/v1/runs/ret/compare", {"ema": "sim"})

        # steps <= 300 - N disappear within one retention period (10 s)
        wait_until(lambda: self.gone(d, 300 - self.N), 25, 0.2, "retention of step 250")
        for step in (1, 100, 249, 250):
            self.assertTrue(self.gone(d, step), "step %d still has statistics" % step)
        for step in (251, 300):
            st, body, _ = d.stats("ret", step=step)
            self.assertEqual((st, body["layers"]["a.bn"]["batches"]), (200, 1), body)
        st, body, _ = d.stats("ret", step=300, window=self.N)
        self.assertEqual(body["layers"]["b.bn"]["batches"], self.N)
        st, info, _ = d.get("/v1/runs/ret")
        self.assertEqual(info["steps"], {"min": 301 - self.N, "max": 300}, info)
        self.assertEqual(info["batches"], self.N, info)
        d.wait_log(r"event=retention\b.*rows_dropped=", 5)
        # the baseline kept everything
        st, body, _ = base.stats("ret", step=1)
        self.assertEqual(st, 200, body)

        # uploads below the horizon are refused; above it, late ones are fine
        for step in (1, 250):
            self.assertError(d.post_batch("ret", doc(step, worker="late",
                                                     layers={"a.bn": layer(self.C)[0]})),
                             422, "invalid_value", "step", what="step %d" % step)
        # the snapshot taken at step 100 is still served, unchanged
        st, snap2, _ = d.get("/v1/runs/ret/snapshots/s100")
        self.assertEqual((st, snap2), (200, snap))

        # the simulated EMA is the replay of what is stored, whatever was cached
        sim_params = {"layer": "a.bn", "channel": 0}
        st, series1, _ = d.get("/v1/runs/ret/series", sim_params)
        st, cmp1, _ = d.get("/v1/runs/ret/compare", {"ema": "sim"})
        self.assertEqual(series1["step"], list(range(301 - self.N, 301)))
        ref_m, ref_v = sim_reference([self.rows[s] for s in range(301 - self.N, 301)])
        self.assertRelClose(series1["sim_mean"][-1], ref_m, 1e-9, "sim_mean after retention")
        self.assertRelClose(series1["sim_var"][-1], ref_v, 1e-9, "sim_var after retention")
        # worker EMAs of the retained steps are served
        ema = dict(zip(series1["step"], series1["ema_mean"]))
        self.assertIsNotNone(ema[260])
        self.assertIsNone(ema[261])

        d.stop()
        base.stop()
        # worker EMAs of dropped steps go with them (series can only show steps with statistics)
        con = sqlite3.connect(d.db)
        try:
            old_emas = con.execute("SELECT count(*) FROM emas WHERE step <= ?",
                                   (300 - self.N,)).fetchone()[0]
            min_agg = con.execute("SELECT min(step) FROM aggs").fetchone()[0]
            min_batch = con.execute("SELECT min(step) FROM batches").fetchone()[0]
        finally:
            con.close()
        self.assertEqual(old_emas, 0)
        self.assertEqual((min_agg, min_batch), (301 - self.N, 301 - self.N))

        size_ret = db_size_after_checkpoint(d.db)
        size_all = db_size_after_checkpoint(base.db)
        data_all = 300 * len(self.LAYERS) * self.C * 5 * 8
        self.assertGreater(size_all, data_all, "the baseline does not hold the data?")
        self.assertLess(size_ret, size_all * 0.35,
                        "with --retain-steps %d the database is %d bytes, without %d"
                        % (self.N, size_ret, size_all))

        # after a restart (empty cache) the same answers, bit for bit
        d.restart()
        st, series2, _ = d.get("/v1/runs/ret/series", sim_params)
        st, cmp2, _ = d.get("/v1/runs/ret/compare", {"ema": "sim"})
        self.assertEqual(series2, series1, "the series differs after a restart (stale cache)")
        self.assertEqual(cmp2, cmp1, "compare ema=sim differs after a restart (stale cache)")

        # 300 more steps: the file stays bounded
        self.upload_steps([d], 301, 600)
        d.stop()
        d.restart()
        wait_until(lambda: self.gone(d, 600 - self.N), 25, 0.2, "retention of step 550")
        self.assertFalse(self.gone(d, 601 - self.N))
        d.stop()
        size_ret2 = db_size_after_checkpoint(d.db)
        self.assertLess(size_ret2, size_ret * 1.5,
                        "the database grew from %d to %d bytes with retention on"
                        % (size_ret, size_ret2))


class TestRetentionManyRuns(TestCaseMixin, unittest.TestCase):

    RUNS = 70           # more than the 64 runs one retention pass looks at

    def test_every_run_is_pruned(self):
        d = Daemon("--retain-steps", "2", "--synchronous", "normal")
        self.addCleanup(d.close)
        d.start()
        s = Session(d.port)
        try:
            for r in range(self.RUNS):
                for step in range(1, 6):
                    st, body, _ = s.post_batch("run%03d" % r, doc(step, channels=2))
                    self.assertEqual(st, 200, body)
        finally:
            s.close()
        # a restart runs a retention pass at once; passes every 10 s otherwise
        d.stop()
        d.start()

        def unpruned():
            return [r for r in range(self.RUNS) if d.stats("run%03d" % r, step=3)[0] != 404]
        deadline = time.monotonic() + 15
        left = unpruned()
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = unpruned()
        self.assertEqual(left, [], "runs whose steps <= max-2 were never dropped (of %d runs)"
                         % self.RUNS)
        for r in (0, self.RUNS - 1):
            st, body, _ = d.stats("run%03d" % r, step=4)
            self.assertEqual(st, 200, body)
        d.stop()


class TestRetainRunsDays(TestCaseMixin, unittest.TestCase):

    def test_runs_expire_after_their_last_upload(self):
        d = Daemon("--retain-runs-days", "30", "--synchronous", "normal")
        self.addCleanup(d.close)
        d.start()
        for run in ("stale", "fresh", "created-long-ago"):
            for step in (1, 2):
                st, body, _ = d.post_batch(run, doc(step, channels=2))
                self.assertEqual(st, 200, body)
        d.stop()
        # age the runs by hand: "stale" last uploaded 31 days ago; the other
        # one was created long ago but uploaded to today: it stays
        day_ms = 86400 * 1000
        con = sqlite3.connect(d.db, isolation_level=None)
        con.execute("UPDATE runs SET updated = updated - 31 * ? WHERE name = 'stale'", (day_ms,))
        con.execute("UPDATE runs SET created = created - 400 * ? WHERE name = 'created-long-ago'",
                    (day_ms,))
        con.close()
        d.start()    # a pass runs at once on start, then every 10 s
        deadline = time.monotonic() + 15
        while d.get("/v1/runs/stale")[0] != 404:
            self.assertLess(time.monotonic(), deadline, "the stale run was never expired")
            time.sleep(0.1)
        self.assertTrue(d.wait_log(r"event=run_expired run=stale retain_runs_days=30\b", 5))
        for run in ("fresh", "created-long-ago"):
            st, body, _ = d.get("/v1/runs/" + run)
            self.assertEqual(st, 200, body)
            self.assertEqual(body["batches"], 2)
        d.stop()


# --------------------------------------------------------------------------
# sd_notify


class TestDamagedDatabase(TestCaseMixin, unittest.TestCase):
    """A damaged file is refused at start, before anything is written to it
    (docs/OPERATIONS.md, "A damaged database")."""

    PAGE = 65536       # the page size bnstatd gives a new database

    def test_a_damaged_file_is_refused_and_left_as_it_was(self):
        d = Daemon()
        d.start()
        s = Session(d.port)
        try:
            for step in range(1, 201):
                l, _, _ = layer(64, count=32, ema=True, rng=random.Random(step))
                st, body, _ = s.post_batch("dmg", doc(step, layers={"bn": l}))
                self.assertEqual(st, 200, body)
        finally:
            s.close()
        d.stop()
        db = d.db
        size = os.path.getsize(db)
        self.assertGreater(size, 8 * self.PAGE)
        # 256 bytes over the header of a page in the middle: a b-tree page no longer
        with open(db, "r+b") as f:
            f.seek((size // self.PAGE // 2) * self.PAGE)
            f.write(b"\xff" * 256)
        with open(db, "rb") as f:
            before = f.read()
        r = run_bnstatd("--db", db, "--listen", "127.0.0.1:0")
        self.assertNotEqual(r.returncode, 0, r.stderr)
        self.assertIn("is damaged (PRAGMA quick_check:", r.stderr)
        self.assertIn("event=integrity_check result=damaged", r.stderr)
        with open(db, "rb") as f:
            self.assertEqual(f.read(), before, "the damaged file was written to")
        # integrity-check = off is the operator's choice to start anyway
        r = run_bnstatd("--db", db, "--integrity-check", "off", "-t")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run_bnstatd("--db", db, "--integrity-check", "maybe", "-t")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("integrity-check must be quick or off", r.stderr)

    def test_a_sound_file_passes_and_says_so(self):
        d = Daemon()
        d.start()
        d.wait_log(r"event=integrity_check result=ok seconds=")
        d.stop()


if __name__ == "__main__":
    unittest.main()
