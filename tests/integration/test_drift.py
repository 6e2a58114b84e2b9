"""GET /v1/runs/{run}/drift (docs/API.md, "Drift"): per layer and step, the
metrics /compare gives at that step, merged into points by their maximum.

Every value is checked against /compare at the same step (itself checked
against exact references in test_compare_*.py and test_history.py), one
step also directly against the formulas of docs/API.md "Comparison"
computed here with 50-digit decimals from the uploaded values.
"""

import decimal
import math
import random
import unittest

from bnstat_testlib import Daemon, TestCaseMixin, rel_err

REL = 1e-12
STEPS = 120
LAYERS = {"bn1": 3, "bn2": 2}


def make_docs():
    rng = random.Random(12)
    docs = []
    for step in range(1, STEPS + 1):
        if step % 13 == 7:
            continue                       # a step without data
        for w in ("w0", "w1"):
            layers = {}
            for name, c in LAYERS.items():
                layer = {"count": rng.choice([8, 16]),
                         "mean": [rng.gauss(0.0, 1.0) for _ in range(c)],
                         "var": [rng.uniform(0.5, 2.0) for _ in range(c)]}
                # w0 reports bn2's EMA only on even steps
                if not (w == "w0" and name == "bn2" and step % 2):
                    layer["ema_mean"] = [rng.gauss(0.0, 1.0) for _ in range(c)]
                    layer["ema_var"] = [rng.uniform(0.5, 2.0) for _ in range(c)]
                layers[name] = layer
            docs.append({"worker": w, "step": step, "seq": 0, "layers": layers})
    return docs


def kl_ref(mp, vp, me, ve):
    D = decimal.Decimal
    with decimal.localcontext() as ctx:
        ctx.prec = 50
        eps = D("1e-5")
        vp, ve = D(vp) + eps, D(ve) + eps
        mean_err = abs(D(me) - D(mp)) / vp.sqrt()
        var_err = abs((ve / vp).ln())
        kl = ((ve / vp).ln() + (vp + (D(mp) - D(me)) ** 2) / ve - 1) / 2
        return float(mean_err), float(var_err), float(kl)


class TestDrift(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--history-full-steps", "30")
        cls.d.start()
        cls.docs = make_docs()
        for doc in cls.docs:
            st, body, _ = cls.d.post_batch("dr", doc)
            assert st == 200, body
        # bucketed: steps <= 120 - 30, rounded down to 10
        cls.d.wait_bucketed("dr", 90)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def drift(self, **params):
        st, body, _ = self.d.get("/v1/runs/dr/drift", params)
        self.assertEqual(st, 200, body)
        return body

    def check_against_compare(self, body, compare_params, what):
        self.assertEqual(body["layer_order"], ["bn1", "bn2"], what)
        for i, step in enumerate(body["step"]):
            st, cmp, _ = self.d.get("/v1/runs/dr/compare", dict(compare_params, step=step))
            per_layer = {}
            for name in LAYERS:
                got = [body["layers"][name][m][i] for m in ("mean_err", "var_err", "kl")]
                if st == 200 and name in cmp["layers"]:
                    want = [cmp["layers"][name][m] for m in ("mean_err", "var_err", "kl")]
                    for g, w in zip(got, want):
                        self.assertIsNotNone(g, "%s step %d %s" % (what, step, name))
                        self.assertLessEqual(rel_err(g, w), REL,
                                             "%s step %d %s: %r vs %r" % (what, step, name,
                                                                         got, want))
                    per_layer[name] = got
                else:
                    self.assertEqual(got, [None] * 3, "%s step %d %s: no EMA" % (what, step, name))
            for j, m in enumerate(("mean_err", "var_err", "kl")):
                o = body["overall"][m][i]
                if per_layer:
                    want = sum(v[j] for v in per_layer.values()) / len(per_layer)
                    self.assertLessEqual(rel_err(o, want), REL, "%s overall %s" % (what, m))
                else:
                    self.assertIsNone(o, what)

    def test_worker_window_1_every_entry(self):
        body = self.drift(worker="w0", points=100000)
        self.assertEqual(body["stride"], 1)
        st, series, _ = self.d.get("/v1/runs/dr/series", {"layer": "bn1", "channel": 0})
        self.assertEqual(body["step"], series["step"], "one point per stored entry")
        self.assertEqual(body["resolution"], series["resolution"])
        self.assertEqual(body["resolution"][:9], [10] * 9)
        self.check_against_compare(body, {"worker": "w0"}, "worker w0")

    def test_first_worker_and_window(self):
        body = self.drift(window=5, points=100000, **{"from": 95})
        self.assertEqual(body["step"][0], 95)
        # without worker=: the first worker by name at each step, as /compare takes it
        self.check_against_compare(body, {"window": 5}, "window 5")

    def test_sim(self):
        for a in ("0.1", "0.2"):
            body = self.drift(ema="sim", momentum=a, points=100000, **{"from": 91})
            self.check_against_compare(body, {"ema": "sim", "momentum": a}, "sim " + a)
            for i, step in enumerate(body["step"]):
                st, cmp, _ = self.d.get("/v1/runs/dr/compare", {"ema": "sim", "momentum": a,
                                                                 "step": step})
                self.assertLessEqual(abs(body["sim_error_bound"][i] - cmp["sim_error_bound"]),
                                     1e-15)
            if a == "0.1":
                self.assertEqual(set(body["sim_error_bound"]), {0.0})
            else:
                self.assertGreater(min(body["sim_error_bound"]), 0.0)

    def test_points_keep_the_maximum(self):
        full = self.drift(worker="w0", points=100000)
        body = self.drift(worker="w0", points=7)
        n = len(full["step"])
        k = body["stride"]
        self.assertEqual(k, -(-n // 7))
        groups = [list(range(g, min(g + k, n))) for g in range(0, n, k)]
        self.assertEqual(body["step"], [full["step"][g[-1]] for g in groups])
        self.assertEqual(body["resolution"], [sum(full["resolution"][i] for i in g)
                                              for g in groups])
        for name in LAYERS:
            for m in ("mean_err", "var_err", "kl"):
                vals = full["layers"][name][m]
                want = []
                for g in groups:
                    present = [vals[i] for i in g if vals[i] is not None]
                    want.append(max(present) if present else None)
                self.assertEqual(body["layers"][name][m], want, "%s %s" % (name, m))

    def test_one_step_against_the_formulas(self):
        step = 100                      # per step: window 1 is that step's batches
        body = self.drift(worker="w1", points=100000, **{"from": step, "to": step})
        self.assertEqual(body["step"], [step])
        for name, c in LAYERS.items():
            batches = [d["layers"][name] for d in self.docs if d["step"] == step]
            ema = [d["layers"][name] for d in self.docs
                   if d["step"] == step and d["worker"] == "w1"][0]
            F = decimal.Decimal
            with decimal.localcontext() as ctx:
                ctx.prec = 50
                n = sum(b["count"] for b in batches)
                sums = [0.0] * 3
                for ch in range(c):
                    mean = sum(F(b["mean"][ch]) * b["count"] for b in batches) / n
                    m2 = sum(F(b["var"][ch]) * (b["count"] - 1) +
                             b["count"] * (F(b["mean"][ch]) - mean) ** 2 for b in batches)
                    r = kl_ref(mean, m2 / n, ema["ema_mean"][ch], ema["ema_var"][ch])
                    sums = [s + x for s, x in zip(sums, r)]
            for j, m in enumerate(("mean_err", "var_err", "kl")):
                self.assertLessEqual(rel_err(body["layers"][name][m][0], sums[j] / c), 1e-9,
                                     "%s %s" % (name, m))

    def test_errors(self):
        for params, status, path in (({"ema": "x"}, 422, "ema"),
                                     ({"domain": "*"}, 422, "domain"),
                                     ({"from": 5, "to": 3}, 422, "from"),
                                     ({"points": 0}, 422, "points"),
                                     ({"window": "Auto"}, 400, "window"),
                                     ({"min_batches": "5"}, 400, "min_batches"),
                                     ({"domain": "nope"}, 404, "domain")):
            self.assertError(self.d.get("/v1/runs/dr/drift", params), status, path=path,
                             what=repr(params))
        self.assertError(self.d.get("/v1/runs/nope/drift"), 404)
        body = self.drift(ema="sim", domain="*", points=3)
        self.assertEqual(len(body["step"]), 3)


if __name__ == "__main__":
    unittest.main()
