"""GET /v1/runs/{run}/momentum (docs/API.md, "Momentum advisor").

Every number of a reply is compared with a replay done here in numpy
float64 from the uploaded batches alone: the per-step pooled statistics,
the simulated EMA of each momentum (PyTorch's update from mean 0, var 1),
the precise window ending at each sampled entry, the kl of docs/API.md
"Comparison" per channel averaged over channels, then over the sampled
entries (per layer), and over layers then entries (overall).
"""

import random
import unittest

import numpy as np

from bnstat_testlib import Daemon, TestCaseMixin, rel_err

REL = 1e-10
EPS = 1e-5
STEPS = 150
LAYERS = {"bn1": 3, "bn2": 2}
DEFAULT_MOMENTA = [0.3, 0.1, 0.03, 0.01, 0.003, 0.001]


def make_docs(seed, steps, domains=("default",)):
    rng = random.Random(seed)
    docs = []
    for step in range(1, steps + 1):
        if step % 17 == 5:
            continue                       # a step without data
        for domain in domains:
            if domain != "default" and step % 3:
                continue
            for w in ("w0", "w1"):
                layers = {}
                for name, c in LAYERS.items():
                    if name == "bn2" and step % 11 == 3:
                        continue           # bn2 unused at this step
                    drift = 0.02 * step
                    layers[name] = {"count": rng.choice([8, 16, 40]),
                                    "mean": [rng.gauss(drift, 1.0) for _ in range(c)],
                                    "var": [rng.uniform(0.5, 2.0) + drift for _ in range(c)]}
                doc = {"worker": w, "step": step, "seq": 0, "layers": layers}
                if domain != "default":
                    doc["domain"] = domain
                docs.append(doc)
    return docs


class Reference:
    """The same answers from the raw batches, in float64."""

    def __init__(self, docs, domain="default"):
        # per layer: {step: (n, mean[c], m2[c])}, pooled over the step's batches
        self.pooled = {name: {} for name in LAYERS}
        self.k = {}      # step -> layer -> batches: what window=auto counts
        for doc in docs:
            if domain != "*" and doc.get("domain", "default") != domain:
                continue
            for name, l in doc["layers"].items():
                n = l["count"]
                m = np.array(l["mean"], dtype=np.float64)
                m2 = np.array(l["var"], dtype=np.float64) * (n - 1)
                self.pooled[name].setdefault(doc["step"], []).append((n, m, m2))
                by_layer = self.k.setdefault(doc["step"], {})
                by_layer[name] = by_layer.get(name, 0) + 1
        for name, by_step in self.pooled.items():
            for step, parts in by_step.items():
                self.pooled[name][step] = self.pool(parts)
        self.entries = sorted({s for by_step in self.pooled.values() for s in by_step})

    @staticmethod
    def pool(parts):
        n = sum(p[0] for p in parts)
        mean = sum(p[0] * p[1] for p in parts) / n
        m2 = sum(p[2] + p[0] * (p[1] - mean) ** 2 for p in parts)
        return n, mean, m2

    def sample(self, lo, hi, points):
        e = [s for s in self.entries if lo <= s <= hi]
        if len(e) <= points:
            return e
        if points == 1:
            return [e[-1]]
        return [e[j * (len(e) - 1) // (points - 1)] for j in range(points)]

    def sim(self, name, a, upto):
        """The simulated EMA of layer name at momentum a after each of its steps <= upto."""
        c = LAYERS[name]
        rm, rv = np.zeros(c), np.ones(c)
        out = {}
        for step in sorted(self.pooled[name]):
            if step > upto:
                break
            n, mean, m2 = self.pooled[name][step]
            rm = a * mean + (1 - a) * rm
            rv = a * (m2 / (n - 1)) + (1 - a) * rv
            out[step] = (rm, rv)
        return out

    def auto_window(self, step, min_batches):
        """window=auto (docs/API.md): the smallest window ending at step with
        min_batches batches, a step counting its busiest layer's; or all history."""
        have, oldest = 0, self.entries[0]
        for s in reversed([e for e in self.entries if e <= step]):
            have += max(self.k[s].values())
            oldest = s
            if have >= min_batches:
                break
        return step - oldest + 1

    def window(self, name, step, w):
        if isinstance(w, tuple):
            w = self.auto_window(step, w[1])
        parts = [v for s, v in self.pooled[name].items() if step - w < s <= step]
        n, mean, m2 = self.pool(parts)
        return mean, m2 / n

    @staticmethod
    def kl(me, ve, mp, vp):
        vp, ve = vp + EPS, ve + EPS
        return float(np.mean(0.5 * (np.log(ve / vp) + (vp + (mp - me) ** 2) / ve - 1.0)))

    def advise(self, momenta, lo, hi, points, w):
        steps = self.sample(lo, hi, points)
        out = []
        for a in momenta:
            per_layer, per_step = {}, {s: [] for s in steps}
            for name in LAYERS:
                sim = self.sim(name, a, steps[-1])
                vals = []
                for s in steps:
                    if s not in self.pooled[name]:
                        continue
                    mp, vp = self.window(name, s, w)
                    k = self.kl(sim[s][0], sim[s][1], mp, vp)
                    vals.append(k)
                    per_step[s].append(k)
                if vals:
                    per_layer[name] = sum(vals) / len(vals)
            overall = [sum(v) / len(v) for v in per_step.values() if v]
            out.append({"momentum": a, "kl": sum(overall) / len(overall), "layers": per_layer})
        return steps, out


class MomentumCase(TestCaseMixin):
    RUN = "mo"

    def advise(self, **params):
        st, body, _ = self.d.get("/v1/runs/%s/momentum" % self.RUN, params)
        self.assertEqual(st, 200, body)
        return body

    def check(self, body, ref, momenta, lo=0, hi=10**9, points=200, w=("auto", 100), what=""):
        """w: a number of steps, or ("auto", min_batches), the default."""
        steps, want = ref.advise(momenta, lo, hi, points, w)
        self.assertEqual(body["step"], steps, what)
        self.assertEqual(body["steps"], len(steps), what)
        if isinstance(w, tuple):
            self.assertEqual((body["window"], body["min_batches"]), w, what)
        else:
            self.assertEqual(body["window"], w, what)
        self.assertEqual([m["momentum"] for m in body["momenta"]], momenta, what)
        for got, exp in zip(body["momenta"], want):
            a = exp["momentum"]
            self.assertEqual(got["effective_window"], 1.0 / a)
            self.assertLessEqual(rel_err(got["kl"], exp["kl"]), REL,
                                 "%s momentum %r: %r vs %r" % (what, a, got["kl"], exp["kl"]))
            self.assertEqual(sorted(got["layers"]), sorted(exp["layers"]), what)
            for name, k in exp["layers"].items():
                self.assertLessEqual(rel_err(got["layers"][name], k), REL,
                                     "%s momentum %r layer %s" % (what, a, name))
        best = min(want, key=lambda m: m["kl"])["momentum"]
        self.assertEqual(body["best"], best, what)


class TestMomentum(MomentumCase, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.d.start()
        cls.docs = make_docs(3, STEPS, domains=("default", "aux"))
        for doc in cls.docs:
            st, body, _ = cls.d.post_batch(cls.RUN, doc)
            assert st == 200, body
        cls.ref = Reference(cls.docs)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def test_defaults(self):
        body = self.advise()
        self.assertEqual(body["run"], self.RUN)
        self.assertEqual(body["domain"], "default")
        self.assertEqual(body["points"], 200)
        self.assertEqual(body["layer_order"], ["bn1", "bn2"])
        self.assertEqual(set(m["sim_error_bound"] for m in body["momenta"]), {0.0})
        self.check(body, self.ref, DEFAULT_MOMENTA, what="defaults")

    def test_windows(self):
        # 1 step, a few, and wider than the whole run (the window's stacks turn over)
        for w in (3, 40, 1000):
            body = self.advise(window=w, momenta="0.2,0.05")
            self.check(body, self.ref, [0.2, 0.05], w=w, what="window %d" % w)

    def test_points_keep_the_last_step(self):
        for points in (1, 2, 7, 50):
            body = self.advise(points=points, window=4, momenta="0.1,0.01")
            self.assertEqual(len(body["step"]), points)
            self.assertEqual(body["step"][-1], self.ref.entries[-1])
            self.check(body, self.ref, [0.1, 0.01], points=points, w=4,
                       what="points %d" % points)

    def test_auto_windows(self):
        # every sampled step's own smallest window of min_batches batches
        for mb in (1, 5, 23):
            body = self.advise(window="auto", min_batches=mb, momenta="0.2,0.02")
            self.check(body, self.ref, [0.2, 0.02], w=("auto", mb), what="auto %d" % mb)
        self.assertNotEqual(self.ref.auto_window(100, 5), self.ref.auto_window(100, 23))

    def test_one_momentum(self):
        body = self.advise(momenta="0.07")
        self.assertEqual(len(body["momenta"]), 1)
        self.assertEqual(body["best"], 0.07)
        self.check(body, self.ref, [0.07], what="one momentum")

    def test_range_resumes_from_checkpoints(self):
        # a range starting later resumes each momentum from its latest replay
        # state: 0.1 and 0.03 from those the store keeps every 64 steps
        # (sim-momenta), 0.3 from the checkpoints a /compare left, 0.2 from
        # the start of the run
        st, _, _ = self.d.get("/v1/runs/mo/compare", {"ema": "sim", "momentum": "0.3",
                                                      "step": STEPS})
        self.assertEqual(st, 200)
        for lo, hi in ((100, STEPS), (70, 120), (130, 130)):
            body = self.advise(momenta="0.1,0.2,0.03,0.3", window=6,
                               **{"from": lo, "to": hi})
            self.assertEqual(body["step"][0], min(s for s in self.ref.entries if s >= lo))
            self.check(body, self.ref, [0.1, 0.2, 0.03, 0.3], lo=lo, hi=hi, w=6,
                       what="from %d to %d" % (lo, hi))

    def test_domains(self):
        for domain in ("aux", "*"):
            ref = Reference(self.docs, domain)
            body = self.advise(domain=domain, momenta="0.1,0.3", window=2)
            self.assertEqual(body["domain"], domain)
            self.check(body, ref, [0.1, 0.3], w=2, what="domain " + domain)

    def test_bad_momenta(self):
        for bad, status in (("0", 422), ("1.5", 422), ("-0.1", 422), ("abc", 400),
                            ("", 400), ("0.1,,0.2", 400), ("0.1,", 400), ("0.1,0.10", 422),
                            ("0.1;0.2", 400), ("0." + "1" * 80, 400), (",".join(["0.5"] + ["0.%d" % i for i in
                                                                  range(1, 17)]), 422)):
            st, body, _ = self.d.get("/v1/runs/mo/momentum", {"momenta": bad})
            self.assertEqual(st, status, (bad, body))
            self.assertEqual(body["error"]["path"], "momenta", bad)

    def test_bad_parameters(self):
        for params, status, path in (({"points": "0"}, 422, "points"),
                                     ({"window": "0"}, 422, "window"),
                                     ({"window": "x"}, 400, "window"),
                                     ({"from": "9", "to": "3"}, 422, "from"),
                                     ({"domain": "no such"}, 422, "domain")):
            st, body, _ = self.d.get("/v1/runs/mo/momentum", params)
            self.assertEqual(st, status, (params, body))
            self.assertEqual(body["error"]["path"], path, params)

    def test_not_found(self):
        st, body, _ = self.d.get("/v1/runs/nosuch/momentum")
        self.assertEqual(st, 404, body)
        st, body, _ = self.d.get("/v1/runs/mo/momentum", {"domain": "other"})
        self.assertEqual((st, body["error"]["path"]), (404, "domain"), body)
        st, body, _ = self.d.get("/v1/runs/mo/momentum", {"from": 1000})
        self.assertEqual(st, 404, body)


class TestMomentumHistory(MomentumCase, unittest.TestCase):
    """Over bucketed history: exact at bucket ends for the kept momenta."""

    RUN = "mh"

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--history-full-steps", "30")
        cls.d.start()
        cls.docs = make_docs(5, 120)
        for doc in cls.docs:
            st, body, _ = cls.d.post_batch(cls.RUN, doc)
            assert st == 200, body
        cls.d.wait_bucketed(cls.RUN, 90)
        cls.ref = Reference(cls.docs)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def entries(self):
        """(step, width) of the stored entries: buckets of 10 up to 90, then steps."""
        out = []
        for s in self.ref.entries:
            if s <= 90:
                end = (s + 9) // 10 * 10
                if not out or out[-1][0] != end:
                    out.append((end, 10))
            else:
                out.append((s, 1))
        return out

    def test_kept_momenta_exact_at_bucket_ends(self):
        momenta = [0.3, 0.1, 0.03]
        body = self.advise(momenta="0.3,0.1,0.03", window=15)
        entries = self.entries()
        self.assertEqual(body["step"], [e for e, _ in entries])
        self.assertEqual(body["resolution"], [w for _, w in entries])
        for m in body["momenta"]:
            self.assertEqual(m["sim_error_bound"], 0.0)
        # the window ending at an entry holds the entries with a step in
        # (e - 15, e]: whole buckets, widened
        for got, a in zip(body["momenta"], momenta):
            per_layer, per_step = {}, {}
            for name in LAYERS:
                sim = self.ref.sim(name, a, 10**9)
                vals = []
                for e, _ in entries:
                    lo = min(s - w for s, w in entries if e - 15 < s <= e)
                    have = [s for s in self.ref.pooled[name] if lo < s <= e]
                    if not have or e not in {((s + 9) // 10 * 10 if s <= 90 else s)
                                             for s in self.ref.pooled[name]}:
                        continue
                    last = max(have)     # the bucket's state is the one after its last step
                    mp, vp = self.ref.window(name, e, e - lo)
                    k = self.ref.kl(sim[last][0], sim[last][1], mp, vp)
                    vals.append(k)
                    per_step.setdefault(e, []).append(k)
                per_layer[name] = sum(vals) / len(vals)
            overall = [sum(v) / len(v) for v in per_step.values()]
            self.assertLessEqual(rel_err(got["kl"], sum(overall) / len(overall)), REL, a)
            for name in LAYERS:
                self.assertLessEqual(rel_err(got["layers"][name], per_layer[name]), REL,
                                     (a, name))

    def test_per_step_range_is_exact(self):
        # the windows (s - 3, s] from step 94 on hold no bucket
        body = self.advise(momenta="0.1,0.01", window=3, **{"from": 94})
        self.check(body, self.ref, [0.1, 0.01], lo=94, w=3, what="from 94")

    def test_other_momenta_carry_a_bound(self):
        body = self.advise(momenta="0.1,0.05")
        bounds = [m["sim_error_bound"] for m in body["momenta"]]
        self.assertEqual(bounds[0], 0.0)
        self.assertEqual(bounds[1], 1.0, "a bucket replayed as one step")
        # inside the per-step horizon, far enough from the buckets, 0.05 is
        # close to the full replay again: its bound says by how much
        body = self.advise(momenta="0.05", **{"from": 110})
        self.assertGreater(body["momenta"][0]["sim_error_bound"], 0.0)
        self.assertLess(body["momenta"][0]["sim_error_bound"], 0.5)


if __name__ == "__main__":
    unittest.main()
