"""/compare and /drift with precise=snapshot:LABEL and precise=worker:NAME
(docs/API.md, "Comparing with a snapshot or a worker").

Every value is checked against numpy float64 computed here from the batches
and EMAs this test uploads: the snapshot's window merged from the raw
batches (population and mean_of_batch_var), the simulated EMA replayed step
by step, and the comparison metrics of docs/API.md "Comparison". A worker
compared with itself gives exactly 0; a snapshot of another domain is a
reference like any other; unknown labels and workers are 404s naming
`precise`.
"""

import math
import random
import time
import unittest

import numpy as np

from bnstat_testlib import Daemon, TestCaseMixin, encode_doc

EPS = 1e-5
REL = 1e-9         # metrics: logs and square roots of values exact to ~1e-15
ABS = 1e-12
STEPS = 40
LAYERS = {"bn1": 3, "bn2": 2, "bn3": 4}
BN3_FROM = 6       # bn3 has data (and EMAs) from this step on
METRICS = ("mean_err", "mean_err_max", "var_err", "var_err_max", "kl", "kl_max")


def no_data(step):
    return step % 11 == 5


def make_docs():
    """(domain, worker, step, layers) uploads; EMAs drift on their own per worker."""
    rng = random.Random(74)
    docs = []
    ema = {}
    for domain, workers, shift in (("default", ("w0", "w1", "w2"), 0.0),
                                   ("target", ("w0", "w3"), 1.5)):
        for step in range(1, STEPS + 1):
            if no_data(step):
                continue
            for w in workers:
                layers = {}
                for name, c in LAYERS.items():
                    if name == "bn3" and step < BN3_FROM:
                        continue
                    layer = {"count": rng.choice([4, 16, 50]),
                             "mean": [shift + rng.gauss(0.1 * step, 1.0) for _ in range(c)],
                             "var": [rng.uniform(0.5, 2.0) for _ in range(c)]}
                    m, v = ema.get((domain, w, name), ([0.0] * c, [1.0] * c))
                    m = [0.9 * a + 0.1 * b for a, b in zip(m, layer["mean"])]
                    v = [0.9 * a + 0.1 * b for a, b in zip(v, layer["var"])]
                    ema[(domain, w, name)] = (m, v)
                    # w2 reports bn2's EMA on even steps only
                    if not (w == "w2" and name == "bn2" and step % 2):
                        layer["ema_mean"], layer["ema_var"] = list(m), list(v)
                    layers[name] = layer
                docs.append({"worker": w, "step": step, "seq": 0, "domain": domain,
                             "layers": layers})
    return docs


# --------------------------------------------------------------------------
# numpy references

class Ref:
    def __init__(self, docs):
        self.docs = docs

    def batches(self, domain, layer, lo, hi):
        return [d["layers"][layer] for d in self.docs
                if (domain is None or d["domain"] == domain) and lo < d["step"] <= hi
                and layer in d["layers"]]

    def population(self, domain, layer, lo, hi):
        bs = self.batches(domain, layer, lo, hi)
        n = np.array([b["count"] for b in bs], dtype=np.float64)[:, None]
        m = np.array([b["mean"] for b in bs], dtype=np.float64)
        v = np.array([b["var"] for b in bs], dtype=np.float64)
        total = n.sum()
        mean = (n * m).sum(axis=0) / total
        m2 = (v * (n - 1) + n * (m - mean) ** 2).sum(axis=0)
        return mean, m2 / total

    def mean_of_batch_var(self, domain, layer, lo, hi):
        bs = self.batches(domain, layer, lo, hi)
        return (np.mean([b["mean"] for b in bs], axis=0),
                np.mean([b["var"] for b in bs], axis=0))

    def ema(self, domain, worker, layer, step):
        for d in self.docs:
            if d["domain"] == domain and d["worker"] == worker and d["step"] == step:
                lay = d["layers"].get(layer)
                if lay is not None and "ema_mean" in lay:
                    return np.array(lay["ema_mean"]), np.array(lay["ema_var"])
        return None

    def sim(self, domain, layer, step, a):
        c = LAYERS[layer]
        r_m, r_v = np.zeros(c), np.ones(c)
        for s in range(1, step + 1):
            bs = self.batches(domain, layer, s - 1, s)
            if not bs:
                continue
            mean, var = self.population(domain, layer, s - 1, s)
            n = sum(b["count"] for b in bs)
            r_m = (1 - a) * r_m + a * mean
            r_v = (1 - a) * r_v + a * var * n / (n - 1)
        return r_m, r_v


def metrics(ema, ref):
    (em, ev), (pm, pv) = ema, ref
    pv, ev = pv + EPS, ev + EPS
    mean_err = np.abs(em - pm) / np.sqrt(pv)
    var_err = np.abs(np.log(ev / pv))
    kl = 0.5 * (np.log(ev / pv) + (pv + (pm - em) ** 2) / ev - 1)
    return {"mean_err": mean_err.mean(), "mean_err_max": mean_err.max(),
            "var_err": var_err.mean(), "var_err_max": var_err.max(),
            "kl": kl.mean(), "kl_max": kl.max()}


class PreciseRefMixin(TestCaseMixin):

    def close(self, got, want, what):
        self.assertIsNotNone(got, what)
        self.assertLessEqual(abs(got - want), ABS + REL * abs(want),
                             "%s: got %r, expected %r" % (what, got, want))

    def check_layers(self, body, want, what):
        """want: {layer: metrics}; also the overall means and maxima."""
        self.assertEqual(sorted(body["layers"]), sorted(want), what)
        for name, w in want.items():
            for m in METRICS:
                self.close(body["layers"][name][m], w[m], "%s %s %s" % (what, name, m))
        for m in METRICS:
            vals = [w[m] for w in want.values()]
            agg = max(vals) if m.endswith("_max") else sum(vals) / len(vals)
            self.close(body["overall"][m], agg, "%s overall %s" % (what, m))


class TestPreciseRef(PreciseRefMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.d.start()
        cls.docs = make_docs()
        cls.ref = Ref(cls.docs)
        for doc in cls.docs:
            st, body, _ = cls.d.post_batch("pr", doc)
            assert st == 200, body
        for snap in ({"label": "best", "step": 20, "window": 5},
                     {"label": "early", "step": 3, "window": 3},      # before bn3
                     {"label": "tgt", "step": 40, "window": 10, "domain": "target"},
                     {"label": "mobv", "step": 30, "window": 4,
                      "estimator": "mean_of_batch_var"}):
            st, body, _ = cls.d.request("POST", "/v1/runs/pr/snapshots", encode_doc(snap))
            assert st == 201, body

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def get(self, endpoint, **params):
        st, body, _ = self.d.get("/v1/runs/pr/" + endpoint, params)
        self.assertEqual(st, 200, "%s %r: %r" % (endpoint, params, body))
        return body

    # -- /compare with a snapshot ---------------------------------------------

    def test_snapshot_against_worker_emas(self):
        ref = {name: self.ref.population("default", name, 15, 20) for name in LAYERS}
        for step, worker in ((20, "w0"), (33, "w1"), (40, "w0")):
            body = self.get("compare", precise="snapshot:best", step=step, worker=worker)
            what = "best vs %s at %d" % (worker, step)
            self.assertEqual(body["precise"], "snapshot:best")
            snap = body["snapshot"]
            self.assertEqual((snap["label"], snap["step"], snap["window"], snap["domain"],
                              snap["estimator"]), ("best", 20, 5, "default", "population"))
            self.assertEqual((body["step"], body["domain"], body["ema"], body["worker"]),
                             (step, "default", "worker", worker))
            self.assertNotIn("window", body)
            self.assertNotIn("estimator", body)
            self.assertEqual(body["no_ema"], [])
            self.check_layers(body, {n: metrics(self.ref.ema("default", worker, n, step), ref[n])
                                     for n in LAYERS}, what)
        # without step=: the latest, with the first worker by name
        body = self.get("compare", precise="snapshot:best")
        self.assertEqual((body["step"], body["worker"]), (STEPS, "w0"))

    def test_snapshot_layers_only(self):
        # "early" has no bn3: bn3 is not compared, and not listed
        body = self.get("compare", precise="snapshot:early", step=20, worker="w1")
        self.assertEqual(body["no_ema"], [])
        ref = {n: self.ref.population("default", n, 0, 3) for n in ("bn1", "bn2")}
        self.check_layers(body, {n: metrics(self.ref.ema("default", "w1", n, 20), ref[n])
                                 for n in ref}, "early")
        # a layer of the snapshot without an EMA at that step is listed
        body = self.get("compare", precise="snapshot:best", step=21, worker="w2")
        self.assertEqual(body["no_ema"], ["bn2"])
        self.assertEqual(sorted(body["layers"]), ["bn1", "bn3"])
        # layer= narrows the comparison
        body = self.get("compare", precise="snapshot:best", step=21, worker="w2", layer="bn3")
        self.assertEqual(list(body["layers"]), ["bn3"])

    def test_snapshot_of_another_domain(self):
        ref = {n: self.ref.population("default", n, 15, 20) for n in LAYERS}
        body = self.get("compare", precise="snapshot:best", domain="target", worker="w3",
                        step=37)
        self.assertEqual((body["domain"], body["snapshot"]["domain"]), ("target", "default"))
        self.check_layers(body, {n: metrics(self.ref.ema("target", "w3", n, 37), ref[n])
                                 for n in LAYERS}, "target EMA vs default snapshot")
        ref = {n: self.ref.population("target", n, 30, 40) for n in LAYERS}
        body = self.get("compare", precise="snapshot:tgt", worker="w1", step=39)
        self.assertEqual((body["domain"], body["snapshot"]["domain"]), ("default", "target"))
        self.check_layers(body, {n: metrics(self.ref.ema("default", "w1", n, 39), ref[n])
                                 for n in LAYERS}, "default EMA vs target snapshot")

    def test_snapshot_keeps_its_estimator(self):
        body = self.get("compare", precise="snapshot:mobv", step=30, worker="w0")
        self.assertEqual(body["snapshot"]["estimator"], "mean_of_batch_var")
        ref = {n: self.ref.mean_of_batch_var("default", n, 26, 30) for n in LAYERS}
        self.check_layers(body, {n: metrics(self.ref.ema("default", "w0", n, 30), ref[n])
                                 for n in LAYERS}, "mobv")

    def test_sim_against_a_snapshot(self):
        ref = {n: self.ref.population("target", n, 30, 40) for n in LAYERS}
        for a in (0.1, 0.25):
            body = self.get("compare", precise="snapshot:tgt", ema="sim", momentum=a,
                            domain="target", step=37)
            self.assertEqual((body["ema"], body["sim_error_bound"]), ("sim", 0.0))
            self.assertNotIn("worker", body)
            self.check_layers(body, {n: metrics(self.ref.sim("target", n, 37, a), ref[n])
                                     for n in LAYERS}, "sim %g vs tgt" % a)
        # domain * pools every domain's batches per step
        body = self.get("compare", precise="snapshot:tgt", ema="sim", domain="*", step=37)
        self.check_layers(body, {n: metrics(self.ref.sim(None, n, 37, 0.1), ref[n])
                                 for n in LAYERS}, "sim of * vs tgt")
        # before bn3 has data the simulated EMA has none: listed
        body = self.get("compare", precise="snapshot:best", ema="sim", step=4)
        self.assertEqual(body["no_ema"], ["bn3"])

    # -- /compare with a worker -------------------------------------------------

    def test_worker_against_worker(self):
        for step in (30, 40):
            body = self.get("compare", precise="worker:w1", worker="w0", step=step)
            self.assertEqual((body["precise"], body["worker"], body["step"]),
                             ("worker:w1", "w0", step))
            self.assertNotIn("snapshot", body)
            self.assertNotIn("window", body)
            self.check_layers(body, {n: metrics(self.ref.ema("default", "w0", n, step),
                                                self.ref.ema("default", "w1", n, step))
                                     for n in LAYERS}, "w0 vs w1 at %d" % step)
        # in another domain, the same rule
        body = self.get("compare", precise="worker:w3", worker="w0", domain="target")
        self.assertEqual(body["step"], STEPS)
        self.check_layers(body, {n: metrics(self.ref.ema("target", "w0", n, STEPS),
                                            self.ref.ema("target", "w3", n, STEPS))
                                 for n in LAYERS}, "target w0 vs w3")

    def test_a_worker_against_itself_is_zero(self):
        body = self.get("compare", precise="worker:w2", worker="w2", step=22)
        self.assertEqual(sorted(body["layers"]), sorted(LAYERS))
        for name, m in list(body["layers"].items()) + [("overall", body["overall"])]:
            self.assertEqual([m[k] for k in METRICS], [0.0] * 6, name)

    def test_layers_either_worker_lacks(self):
        # w2 has no bn2 EMA at odd steps: as the reference, bn2 is not compared
        body = self.get("compare", precise="worker:w2", worker="w0", step=21)
        self.assertEqual((sorted(body["layers"]), body["no_ema"]), (["bn1", "bn3"], []))
        # as the EMA side, bn2 of the reference is listed
        body = self.get("compare", precise="worker:w0", worker="w2", step=21)
        self.assertEqual((sorted(body["layers"]), body["no_ema"]), (["bn1", "bn3"], ["bn2"]))
        self.check_layers(body, {n: metrics(self.ref.ema("default", "w2", n, 21),
                                            self.ref.ema("default", "w0", n, 21))
                                 for n in ("bn1", "bn3")}, "w2 vs w0 at 21")

    def test_sim_against_a_worker(self):
        body = self.get("compare", precise="worker:w1", ema="sim", momentum=0.1, step=29)
        self.assertEqual((body["precise"], body["ema"]), ("worker:w1", "sim"))
        self.check_layers(body, {n: metrics(self.ref.sim("default", n, 29, 0.1),
                                            self.ref.ema("default", "w1", n, 29))
                                 for n in LAYERS}, "sim vs w1")

    def test_window_is_the_default(self):
        for params in ({"step": 30, "window": 3}, {"step": 30}):
            plain = self.get("compare", **params)
            self.assertEqual(self.get("compare", precise="window", **params), plain)
            self.assertNotIn("precise", plain)

    # -- /drift ----------------------------------------------------------------

    def drift_steps(self, domain):
        return [s for s in range(1, STEPS + 1) if not no_data(s)]

    def check_drift(self, body, want_at, what):
        """want_at(step, layer) -> metrics or None (no value)."""
        steps = self.drift_steps(body["domain"])
        self.assertEqual((body["step"], body["stride"]), (steps, 1), what)
        present = [n for n in LAYERS if any(want_at(s, n) is not None for s in steps)]
        self.assertEqual(body["layer_order"], present, what)
        for i, step in enumerate(steps):
            vals = {}
            for name in present:
                w = want_at(step, name)
                for m in ("mean_err", "var_err", "kl"):
                    got = body["layers"][name][m][i]
                    if w is None:
                        self.assertIsNone(got, "%s %s at %d" % (what, name, step))
                    else:
                        self.close(got, w[m], "%s %s %s at %d" % (what, name, m, step))
                if w is not None:
                    vals[name] = w
            for m in ("mean_err", "var_err", "kl"):
                o = body["overall"][m][i]
                if vals:
                    self.close(o, sum(v[m] for v in vals.values()) / len(vals),
                               "%s overall %s at %d" % (what, m, step))
                else:
                    self.assertIsNone(o, what)

    def test_drift_against_a_snapshot(self):
        ref = {n: self.ref.population("default", n, 15, 20) for n in LAYERS}

        def want(step, name):
            ema = self.ref.ema("default", "w2", name, step)
            return metrics(ema, ref[name]) if ema is not None else None

        body = self.get("drift", precise="snapshot:best", worker="w2", points=1000)
        self.assertEqual(body["precise"], "snapshot:best")
        self.assertEqual(body["snapshot"]["step"], 20)
        self.assertNotIn("window", body)
        self.check_drift(body, want, "drift vs best")
        # the same numbers as /compare gives step by step
        for i, step in enumerate(body["step"][::7]):
            cmp = self.get("compare", precise="snapshot:best", worker="w2", step=step)
            for name, m in cmp["layers"].items():
                self.assertEqual(body["layers"][name]["kl"][i * 7], m["kl"])
        # a snapshot without bn3: bn3 has no value anywhere
        body = self.get("drift", precise="snapshot:early", worker="w0", points=1000)
        self.assertEqual(body["layer_order"], ["bn1", "bn2"])
        self.assertNotIn("bn3", body["layers"])

    def test_drift_sim_against_a_snapshot_of_the_domain(self):
        ref = {n: self.ref.population("target", n, 30, 40) for n in LAYERS}

        def want(step, name):
            if name == "bn3" and step < BN3_FROM:
                return None
            return metrics(self.ref.sim("target", name, step, 0.1), ref[name])

        body = self.get("drift", precise="snapshot:tgt", ema="sim", domain="target",
                        points=1000)
        self.check_drift(body, want, "sim drift vs tgt")
        self.assertEqual(set(body["sim_error_bound"]), {0.0})

    def test_drift_against_a_worker(self):
        def want(step, name):
            ema, ref = (self.ref.ema("default", w, name, step) for w in ("w0", "w2"))
            return metrics(ema, ref) if ema is not None and ref is not None else None

        body = self.get("drift", precise="worker:w2", worker="w0", points=1000)
        self.assertEqual((body["precise"], body["worker"]), ("worker:w2", "w0"))
        self.check_drift(body, want, "drift w0 vs w2")
        self.assertIsNone(body["layers"]["bn2"]["kl"][body["step"].index(21)])
        # a worker against itself: 0 wherever it has an EMA
        body = self.get("drift", precise="worker:w1", worker="w1", points=1000)
        for name in LAYERS:
            vals = [v for v in body["layers"][name]["kl"] if v is not None]
            self.assertTrue(vals and set(vals) == {0.0}, name)

    def test_drift_sim_against_a_worker(self):
        def want(step, name):
            ref = self.ref.ema("default", "w2", name, step)
            if ref is None:
                return None
            return metrics(self.ref.sim("default", name, step, 0.3), ref)

        body = self.get("drift", precise="worker:w2", ema="sim", momentum=0.3, points=1000,
                        **{"from": 10})
        self.assertEqual(body["step"][0], 10)
        # check_drift expects the whole range: compare the tail by hand
        for i, step in enumerate(body["step"]):
            for name in LAYERS:
                w = want(step, name)
                got = body["layers"][name]["var_err"][i]
                if w is None:
                    self.assertIsNone(got, "%s at %d" % (name, step))
                else:
                    self.close(got, w["var_err"], "%s at %d" % (name, step))

    # -- errors ------------------------------------------------------------------

    def test_errors(self):
        cases = [
            ({"precise": "snapshot:nope"}, 404, "precise"),
            ({"precise": "worker:nobody", "worker": "w0"}, 404, "precise"),
            # w3 sent batches in domain target only
            ({"precise": "worker:w3", "worker": "w0"}, 404, "precise"),
            ({"precise": "snapshot:"}, 400, "precise"),
            ({"precise": "worker:"}, 400, "precise"),
            ({"precise": "best"}, 400, "precise"),
            ({"precise": "snap:best"}, 400, "precise"),
            ({"precise": "window:3"}, 400, "precise"),
            ({"precise": "snapshot:b c"}, 400, "precise"),
            ({"precise": "snapshot:best", "window": "3"}, 400, "window"),
            ({"precise": "snapshot:best", "estimator": "population"}, 400, "estimator"),
            ({"precise": "worker:w1", "window": "1"}, 400, "window"),
            ({"precise": "worker:w1"}, 400, "worker"),
            ({"precise": "worker:w1", "ema": "sim", "domain": "*"}, 422, "domain"),
            ({"precise": "snapshot:best", "domain": "*"}, 422, "domain"),
            ({"precise": "snapshot:best", "domain": "nope"}, 404, "domain"),
        ]
        for endpoint in ("compare", "drift"):
            for params, status, path in cases:
                self.assertError(self.d.get("/v1/runs/pr/" + endpoint, params), status,
                                 path=path, what="%s %r" % (endpoint, params))
            self.assertError(self.d.get("/v1/runs/nope/" + endpoint,
                                        {"precise": "snapshot:best"}), 404, path="run")
        # the reference worker sent nothing at that step (a step without data)
        self.assertError(self.d.get("/v1/runs/pr/compare", {"precise": "worker:w1",
                                                             "worker": "w0", "step": 5}),
                         404, path="precise")
        # the EMA side has nothing at that step: as without a reference
        self.assertError(self.d.get("/v1/runs/pr/compare", {"precise": "snapshot:best",
                                                             "step": 5}), 404, path="step")
        self.assertError(self.d.get("/v1/runs/pr/compare", {"precise": "snapshot:best",
                                                             "worker": "w3", "step": 4}),
                         404, path="worker")
        self.assertError(self.d.get("/v1/runs/pr/compare", {"precise": "snapshot:best",
                                                             "layer": "fc"}), 404, path="layer")


class TestPreciseRefBucketed(PreciseRefMixin, unittest.TestCase):
    """Over bucketed history EMAs are kept at a bucket's last step: a step
    inside a bucket reads them there, for the reference worker as well."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--history-full-steps", "10")
        cls.d.start()
        cls.docs = [d for d in make_docs() if d["domain"] == "default"]
        cls.ref = Ref(cls.docs)
        for doc in cls.docs:
            st, body, _ = cls.d.post_batch("pb", doc)
            assert st == 200, body
        deadline = time.monotonic() + 20
        while True:
            st, run, _ = cls.d.get("/v1/runs/pb")
            if run["domains"][0]["bucketed_through"] == 30:
                break
            assert time.monotonic() < deadline, run["domains"]
            time.sleep(0.05)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def test_a_step_inside_a_bucket(self):
        st, body, _ = self.d.get("/v1/runs/pb/compare", {"precise": "worker:w1",
                                                          "worker": "w0", "step": 25})
        self.assertEqual(st, 200, body)
        self.assertEqual(body["step"], 30)
        # every step reports its EMA, so the bucket keeps the one of step 30
        self.check_layers(body, {n: metrics(self.ref.ema("default", "w0", n, 30),
                                            self.ref.ema("default", "w1", n, 30))
                                 for n in LAYERS}, "bucket")
        st, drift, _ = self.d.get("/v1/runs/pb/drift", {"precise": "worker:w1",
                                                         "worker": "w0"})
        self.assertEqual(st, 200, drift)
        i = drift["step"].index(30)
        self.assertEqual(drift["resolution"][i], 10)
        for n in LAYERS:
            self.assertEqual(drift["layers"][n]["kl"][i], body["layers"][n]["kl"])


if __name__ == "__main__":
    unittest.main()
