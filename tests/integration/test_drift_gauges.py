"""The drift gauges of /metrics (docs/OPERATIONS.md, "Monitoring";
docs/DESIGN.md, "Drift gauges"): per run and domain,
bnstat_ema_drift_kl and bnstat_ema_drift_worst_kl{layer} are the overall
and the worst layer's kl of /compare?window=auto at the newest step with a
worker EMA (its default worker, the first by name), bnstat_batch_noise the
mean over layers of /stats?window=auto's batch_noise at that step (the
latest step without EMAs). The values equal those replies and a float64
reference from the raw batches; a new worst layer replaces the old series;
a run without EMAs has batch noise only; a restart recomputes everything
stored; a run deleted, or expired by retain-runs-days, loses its series for
good.

Every wait polls /metrics until a condition holds, with a deadline.
"""

import random
import sqlite3
import time
import unittest

import numpy as np

from bnstat_testlib import Daemon, TestCaseMixin
from ops_testlib import parse_prometheus

EPS = 1e-5
RUN, NOEMA, MARKER = "dg.A-1", "dg.noema", "dg.marker"
LAYERS = {"l1.bn": 5, "l2.bn": 3, "l3.bn": 4}   # name -> channels
KL, WORST, NOISE = "bnstat_ema_drift_kl", "bnstat_ema_drift_worst_kl", "bnstat_batch_noise"
DEADLINE = 30.0


class Raw:
    """What was uploaded, to compute references from: (domain, layer) ->
    step -> [(count, mean, unbiased var)], and the EMAs (domain, worker, step)
    -> {layer: (mean, var)}."""

    def __init__(self):
        self.batches = {}
        self.emas = {}

    def doc(self, rng, domain, worker, step, seq, ema=None, count=16):
        layers = {}
        for name, c in LAYERS.items():
            mean = [rng.gauss(0.01 * step * (i + 1), 1.0) for i in range(c)]
            var = [rng.uniform(0.5, 2.0) for _ in range(c)]
            layers[name] = {"count": count, "mean": mean, "var": var}
            self.batches.setdefault((domain, name), {}).setdefault(step, []).append(
                (count, np.array(mean), np.array(var)))
            if ema is not None:
                em, ev = ema(name, c)
                layers[name]["ema_mean"], layers[name]["ema_var"] = em, ev
                self.emas.setdefault((domain, worker, step), {})[name] = (
                    np.array(em), np.array(ev))
        d = {"worker": worker, "step": step, "seq": seq, "layers": layers}
        if domain != "default":
            d["domain"] = domain
        return d

    def window(self, domain, step, min_batches=100):
        """window=auto's width at step: the fewest steps ending there with
        min_batches batches (the most any layer merged per step), else all."""
        steps = sorted({s for (dom, _), per in self.batches.items() if dom == domain
                        for s in per if s <= step}, reverse=True)
        total = 0
        for s in steps:
            total += max(len(self.batches[(domain, n)].get(s, [])) for n in LAYERS)
            if total >= min_batches:
                return step - s + 1
        return step - steps[-1] + 1

    def precise(self, domain, layer, step, width):
        """Pooled population mean and variance, the batch means, over (step - width, step]."""
        rows = [b for s, bs in self.batches[(domain, layer)].items()
                if step - width < s <= step for b in bs]
        n = np.array([r[0] for r in rows], dtype=float)
        means = np.array([r[1] for r in rows])
        m2 = np.array([r[2] * (r[0] - 1) for r in rows])
        total = n.sum()
        mu = (n[:, None] * means).sum(axis=0) / total
        m2_all = m2.sum(axis=0) + (n[:, None] * (means - mu) ** 2).sum(axis=0)
        return mu, m2_all / total, means

    def batch_noise(self, domain, layer, step, width):
        _, pvar, means = self.precise(domain, layer, step, width)
        return float(np.mean(np.sqrt(means.var(axis=0, ddof=1) / pvar)))

    def kl(self, domain, worker, layer, step, width):
        mp, vp, _ = self.precise(domain, layer, step, width)
        me, ve = self.emas[(domain, worker, step)][layer]
        vpe, vee = vp + EPS, ve + EPS
        diff = me - mp
        return float(np.mean((np.log(vee / vpe) + (vpe + diff * diff) / vee - 1) / 2))


class TestDriftGauges(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--metrics-interval-ms", "100")
        cls.addClassCleanup(cls.d.close)
        cls.d.start()

    def post(self, run, doc):
        st, body, _ = self.d.post_batch(run, doc)
        self.assertEqual(st, 200, body)

    def scrape(self):
        st, raw, _ = self.d.get_raw("/metrics")
        self.assertEqual(st, 200)
        return parse_prometheus(raw.decode("utf-8"))

    @staticmethod
    def series(fams, family, run, domain=None):
        """[(labels, value)] of the family's samples of run (and domain)."""
        return [(l, v) for _, l, v in fams[family]["samples"]
                if l["run"] == run and (domain is None or l["domain"] == domain)]

    def wait_metrics(self, cond, what):
        """Scrape until cond(families) is true; the families then."""
        deadline = time.monotonic() + DEADLINE
        while True:
            fams = self.scrape()
            if cond(fams):
                return fams
            if time.monotonic() >= deadline:
                raise AssertionError("within %.0fs: %s\n%s" % (DEADLINE, what,
                                                                self.d.log_tail()))
            time.sleep(0.02)

    def expected(self, run, domain, ema_step):
        """The gauges (run, domain) should show, from /compare and /stats
        themselves at ema_step, the newest step with a worker EMA (None: there
        is none, /stats at the latest step): {family: [(labels, value)]}."""
        q = {"window": "auto"}
        if domain != "default":
            q["domain"] = domain
        if ema_step is not None:
            q["step"] = str(ema_step)
        want = {KL: [], WORST: [], NOISE: []}
        labels = {"run": run, "domain": domain}
        if ema_step is not None:
            st, cmp, _ = self.d.get("/v1/runs/%s/compare" % run, q)
            self.assertEqual(st, 200, cmp)
            by_kl = {n: v["kl"] for n, v in cmp["layers"].items()}
            worst = max(by_kl, key=by_kl.get)
            want[KL] = [(labels, cmp["overall"]["kl"])]
            want[WORST] = [(dict(labels, layer=worst), by_kl[worst])]
        st, stats, _ = self.d.get("/v1/runs/%s/stats" % run, q)
        self.assertEqual(st, 200, stats)
        noises = [l["batch_noise"] for l in stats["layers"].values()]
        want[NOISE] = [(labels, sum(noises) / len(noises))]
        return want, stats["step"]

    def wait_gauges(self, run, domain, ema_step, what):
        """Wait until the gauges of (run, domain) are what /compare and /stats
        answer now; returns the families and the step of /stats."""
        want, step = self.expected(run, domain, ema_step)
        fams = self.wait_metrics(
            lambda f: all(self.series(f, fam, run, domain) == want[fam] for fam in want), what)
        return fams, step

    def check_drift(self, raw, fams, step, worst_expected):
        """The gauges of RUN/default against the float64 reference at step."""
        width = raw.window("default", step)
        # /compare's default step is the newest with a worker EMA: the gauge's
        st, cmp, _ = self.d.get("/v1/runs/%s/compare" % RUN, {"window": "auto"})
        self.assertEqual((st, cmp.get("step")), (200, step), cmp)
        st, cmp, _ = self.d.get("/v1/runs/%s/compare" % RUN,
                                {"window": "auto", "step": str(step)})
        self.assertEqual(st, 200, cmp)
        self.assertEqual(cmp["worker"], "rank0")   # the first by name at that step
        self.assertEqual(cmp["window"], width)
        [(_, kl)] = self.series(fams, KL, RUN, "default")
        ref = {n: raw.kl("default", "rank0", n, step, width) for n in LAYERS}
        self.assertRelClose(kl, sum(ref.values()) / len(ref), 1e-9, "overall kl")
        [(labels, worst)] = self.series(fams, WORST, RUN, "default")
        self.assertEqual(labels["layer"], worst_expected)
        self.assertEqual(labels["layer"], max(ref, key=ref.get))
        self.assertRelClose(worst, ref[worst_expected], 1e-9, "worst kl")
        [(_, noise)] = self.series(fams, NOISE, RUN, "default")
        ref_noise = [raw.batch_noise("default", n, step, width) for n in LAYERS]
        self.assertRelClose(noise, sum(ref_noise) / len(ref_noise), 1e-9, "batch noise")
        return kl, labels["layer"], noise

    def test_gauges_follow_compare_and_stats(self):
        rng = random.Random(8650)
        raw, noema, marker = Raw(), Raw(), Raw()
        fams = self.scrape()
        for fam in (KL, WORST, NOISE):
            self.assertEqual(fams[fam]["type"], "gauge")
            self.assertEqual(self.series(fams, fam, RUN), [])

        # RUN, domain default: steps 1..30, two workers twice a step; both
        # report EMAs up to step 28 (rank1's far off), none after; rank0's
        # EMA of l2.bn is off the most.
        def ema_off(off):
            return lambda name, c: ([0.01 * (i + 1) * 28 + off * (name == "l2.bn") + 0.1
                                     for i in range(c)], [1.2] * c)
        for step in range(1, 31):
            for worker, off in (("rank1", 3.0), ("rank0", 0.7)):
                for seq in (0, 1):
                    ema = ema_off(off) if step <= 28 and seq == 0 else None
                    self.post(RUN, raw.doc(rng, "default", worker, step, seq, ema))
        # domain val of the same run, and another run: no EMA at all
        for step in range(1, 11):
            for seq in range(3):
                self.post(RUN, raw.doc(rng, "val", "rank0", step, seq))
                self.post(NOEMA, noema.doc(rng, "default", "rank0", step, seq))

        fams, step = self.wait_gauges(RUN, "default", 28, "the gauges of %s" % RUN)
        self.assertEqual(step, 28)
        kl, layer, noise = self.check_drift(raw, fams, 28, "l2.bn")
        # rank1's EMA is not the one the gauge compares
        st, cmp1, _ = self.d.get("/v1/runs/%s/compare" % RUN,
                                 {"step": "28", "window": "auto", "worker": "rank1"})
        self.assertEqual(st, 200, cmp1)
        self.assertNotEqual(cmp1["overall"]["kl"], kl)

        # without EMAs: batch noise at the latest step, no drift
        for run, domain, r in ((NOEMA, "default", noema), (RUN, "val", raw)):
            fams, step = self.wait_gauges(run, domain, None,
                                          "the gauges of %s/%s" % (run, domain))
            self.assertEqual(step, 10)
            self.assertEqual(self.series(fams, KL, run, domain), [])
            self.assertEqual(self.series(fams, WORST, run, domain), [])
            [(_, v)] = self.series(fams, NOISE, run, domain)
            ref = [r.batch_noise(domain, n, 10, r.window(domain, 10)) for n in LAYERS]
            self.assertRelClose(v, sum(ref) / len(ref), 1e-9, "%s/%s batch noise" % (run, domain))

        # a restart computes what is stored again, to the same values
        self.d.stop()
        self.d.restart()
        fams = self.wait_metrics(lambda f: self.series(f, KL, RUN, "default") and
                                 self.series(f, NOISE, NOEMA), "the gauges after a restart")
        self.assertEqual(self.series(fams, KL, RUN, "default"),
                         [({"run": RUN, "domain": "default"}, kl)])
        self.assertEqual(self.series(fams, WORST, RUN, "default")[0][0]["layer"], layer)
        self.assertEqual(self.series(fams, NOISE, RUN, "default")[0][1], noise)

        # step 31: rank0's EMA of l3.bn is off the most now; the l2.bn series goes
        for seq in range(4):
            ema = (lambda name, c: ([0.31 * (i + 1) + 9.0 * (name == "l3.bn")
                                     for i in range(c)], [1.1] * c)) if seq == 0 else None
            self.post(RUN, raw.doc(rng, "default", "rank0", 31, seq, ema))
        fams, step = self.wait_gauges(RUN, "default", 31, "the gauges of %s at step 31" % RUN)
        self.assertEqual(step, 31)
        self.assertEqual([s for s in fams[WORST]["samples"] if s[1]["run"] == RUN],
                         [(WORST, {"run": RUN, "domain": "default", "layer": "l3.bn"},
                           self.series(fams, WORST, RUN)[0][1])])
        self.check_drift(raw, fams, 31, "l3.bn")

        # DELETE: the run's series are gone at once, and stay gone
        st, body, _ = self.d.request("DELETE", "/v1/runs/%s" % RUN)
        self.assertEqual(st, 200, body)
        fams = self.scrape()
        for fam in (KL, WORST, NOISE):
            self.assertEqual(self.series(fams, fam, RUN), [], fam)
        # a pass that began after the deletion: the one that computes the marker run
        for seq in range(2):
            self.post(MARKER, marker.doc(rng, "default", "rank0", 1, seq))
        fams = self.wait_metrics(lambda f: self.series(f, NOISE, MARKER), "the marker run")
        for fam in (KL, WORST, NOISE):
            self.assertEqual(self.series(fams, fam, RUN), [], fam)
        self.assertTrue(self.series(fams, NOISE, NOEMA))
        self.d.stop()


class TestExpiredRun(unittest.TestCase):
    """A run expired by retain-runs-days loses its series as a deleted one does."""

    def test_expired_run_has_no_series(self):
        d = Daemon("--retain-runs-days", "30", "--metrics-interval-ms", "100")
        self.addCleanup(d.close)
        d.start()
        rng, raw = random.Random(3), Raw()
        ema = lambda name, c: ([0.5] * c, [1.5] * c)   # noqa: E731
        for run in ("old", "young"):
            for seq in range(3):
                st, body, _ = d.post_batch(run, raw.doc(rng, "default", "rank0", 1, seq, ema))
                self.assertEqual(st, 200, body)
        d.stop()
        # "old" last uploaded 31 days ago: expired by the pass that runs on start
        con = sqlite3.connect(d.db, isolation_level=None)
        con.execute("UPDATE runs SET updated = updated - 31 * 86400000 WHERE name = 'old'")
        con.close()
        d.start()
        d.wait_log(r"event=run_expired run=old\b", DEADLINE)
        deadline = time.monotonic() + DEADLINE
        while True:     # the first pass after the start reaches "young" (after "old")
            st, raw_text, _ = d.get_raw("/metrics")
            fams = parse_prometheus(raw_text.decode("utf-8"))
            runs = {l["run"] for fam in (KL, WORST, NOISE) for _, l, _ in fams[fam]["samples"]}
            if "young" in runs and len(fams[WORST]["samples"]) >= 1:
                break
            self.assertLess(time.monotonic(), deadline, "the gauges of run young never came")
            time.sleep(0.02)
        self.assertNotIn("old", runs)
        d.stop()


if __name__ == "__main__":
    unittest.main()
