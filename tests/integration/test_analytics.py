"""window=auto, the precision of an estimate and BN-adapt (docs/API.md,
"window=auto", "Precision", "Adapting to a target domain").

The run is made of raw samples drawn here; every expected value is computed
from those samples with numpy in float64 (two-pass pooled mean and variance,
batch means, their sample variance), independently of how the daemon merges:
the daemon only ever sees each batch's count, mean and unbiased variance.
"""

import json
import math
import unittest

import numpy as np

from bnstat_testlib import Daemon, TestCaseMixin

REL = 1e-11
STEPS = 40
CHANNELS = {"bn1": 3, "bn2": 2}   # bn1 channel 2 is constant: sigma_p^2 = 0


def sample(rng, layer, step, domain, count):
    """count raw values per channel, shape (channels, count)."""
    c = CHANNELS[layer]
    shift = 3.0 if domain == "tgt" else 0.0
    x = np.empty((c, count))
    for ch in range(c):
        if layer == "bn1" and ch == 2:
            x[ch] = 0.5
        else:
            x[ch] = rng.normal(shift + 0.05 * step * (ch + 1), 1.0 + 0.5 * ch, count)
    return x


class Run:
    """What was uploaded: raw samples per (domain, layer, step), per batch."""

    def __init__(self):
        self.raw = {}      # (domain, layer) -> step -> [samples (channels, count)]
        self.docs = []

    def add(self, rng, domain, worker, step, counts, ema=False):
        layers = {}
        for layer, count in counts.items():
            if count == 0:
                layers[layer] = {"count": 0}
                continue
            x = sample(rng, layer, step, domain, count)
            self.raw.setdefault((domain, layer), {}).setdefault(step, []).append(x)
            entry = {"count": count, "mean": x.mean(axis=1).tolist(),
                     "var": x.var(axis=1, ddof=1).tolist()}
            if ema:
                entry["ema_mean"] = (x.mean(axis=1) + 0.3).tolist()
                entry["ema_var"] = (x.var(axis=1) * 1.2 + 0.01).tolist()
            layers[layer] = entry
        doc = {"worker": worker, "step": step, "seq": 0, "layers": layers}
        if domain != "default":
            doc["domain"] = domain
        self.docs.append(doc)

    def batches(self, domain, lo, hi, layer):
        """The batches (sample arrays) of layer in domain with lo < step <= hi."""
        by_step = self.raw.get((domain, layer), {})
        return [x for s in sorted(by_step) if lo < s <= hi for x in by_step[s]]

    def step_batches(self, domain, step):
        """What window=auto counts at a step: the most batches any layer has there."""
        return max(len(self.raw.get((domain, layer), {}).get(step, [])) for layer in CHANNELS)

    def auto_window(self, domain, step, min_batches):
        """The smallest window ending at step with min_batches, or all history."""
        have, first = 0, None
        for s in range(step, -1, -1):
            b = self.step_batches(domain, s)
            if b == 0:
                continue
            have += b
            first = s
            if have >= min_batches:
                break
        return step - first + 1 if first is not None else 1

    def stats(self, domain, lo, hi, layer, target_se=0.01):
        """Reference stats of a layer over (lo, hi]: pooled mean/var, precision."""
        xs = self.batches(domain, lo, hi, layer)
        if not xs:
            return None
        pooled = np.concatenate(xs, axis=1)
        ref = {"count": pooled.shape[1], "batches": len(xs),
               "mean": pooled.mean(axis=1), "var": pooled.var(axis=1)}
        k = len(xs)
        if k < 2:
            ref["batch_noise"] = ref["mean_se"] = ref["batches_for"] = None
            return ref
        means = np.array([x.mean(axis=1) for x in xs])     # (k, channels)
        s2 = means.var(axis=0, ddof=1)
        used = ref["var"] > 0
        noise = float(np.mean(np.sqrt(s2[used] / ref["var"][used])))
        ref["batch_noise"] = noise
        ref["mean_se"] = float(np.mean(np.sqrt(s2[used] / k) / np.sqrt(ref["var"][used])))
        ref["batches_for"] = math.ceil((noise / target_se) ** 2)
        return ref


def make_run():
    rng = np.random.default_rng(7)
    run = Run()
    for step in range(STEPS):
        if step % 9 == 4:
            continue                                    # no data at all
        run.add(rng, "default", "w0", step, {"bn1": int(rng.integers(4, 40)),
                                             "bn2": 0 if step % 5 == 1 else 16}, ema=True)
        if step % 3 != 0:
            run.add(rng, "default", "w1", step, {"bn1": 8, "bn2": int(rng.integers(2, 30))})
        if step >= 30 and step % 2 == 0:
            run.add(rng, "tgt", "w0", step, {"bn1": 12, "bn2": 12}, ema=True)
    return run


class TestAnalytics(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.d.start()
        cls.model = make_run()
        for doc in cls.model.docs:
            st, body, _ = cls.d.post_batch("an", doc)
            assert st == 200, body

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def get_ok(self, path, **params):
        st, body, _ = self.d.get(path, params)
        self.assertEqual(st, 200, "%s %r: %r" % (path, params, body))
        return body

    def check_layer(self, got, ref, what, mixed=None):
        self.assertEqual(got["count"], ref["count"], what)
        self.assertEqual(got["batches"], ref["batches"], what)
        mean, var = (ref["mean"], ref["var"]) if mixed is None else mixed
        for c in range(len(mean)):
            self.assertRelClose(got["mean"][c], float(mean[c]), REL, "%s mean[%d]" % (what, c))
            if var[c] == 0:
                self.assertLess(abs(got["var"][c]), 1e-15, "%s var[%d]" % (what, c))
            else:
                self.assertRelClose(got["var"][c], float(var[c]), REL, "%s var[%d]" % (what, c))
        self.check_precision(got, ref, what)

    def check_precision(self, got, ref, what):
        if ref["batch_noise"] is None:
            for key in ("batch_noise", "mean_se", "batches_for"):
                self.assertIsNone(got[key], "%s %s" % (what, key))
            return
        self.assertRelClose(got["batch_noise"], ref["batch_noise"], REL, what + " batch_noise")
        self.assertRelClose(got["mean_se"], ref["mean_se"], REL, what + " mean_se")
        self.assertEqual(got["batches_for"], ref["batches_for"], what + " batches_for")

    # -- window=auto ---------------------------------------------------------

    def test_auto_picks_the_smallest_window_with_min_batches(self):
        for step in (39, 33, 13, 3):
            for min_batches in (1, 2, 5, 17, 100):
                what = "step %d min_batches %d" % (step, min_batches)
                params = {"step": step, "window": "auto"}
                if min_batches != 100:
                    params["min_batches"] = min_batches
                body = self.get_ok("/v1/runs/an/stats", **params)
                window = self.model.auto_window("default", step, min_batches)
                self.assertEqual(body["window"], window, what)
                self.assertEqual(body["requested_window"], "auto", what)
                self.assertEqual(body["min_batches"], min_batches, what)
                for layer in CHANNELS:
                    ref = self.model.stats("default", step - window, step, layer)
                    if ref is None:
                        self.assertNotIn(layer, body["layers"], what)
                        continue
                    self.check_layer(body["layers"][layer], ref, "%s %s" % (what, layer))

    def test_auto_counts_the_busiest_layer(self):
        # step 11: bn2 unused by w0 (step % 5 == 1), w1 sends both: bn1 has 2
        # batches, bn2 one; the step counts 2
        self.assertEqual(self.model.step_batches("default", 11), 2)
        body = self.get_ok("/v1/runs/an/stats", step=11, window="auto", min_batches=2)
        self.assertEqual(body["window"], 1)
        self.assertEqual(body["layers"]["bn1"]["batches"], 2)
        self.assertEqual(body["layers"]["bn2"]["batches"], 1)

    def test_auto_with_fewer_batches_takes_all_history(self):
        body = self.get_ok("/v1/runs/an/stats", step=39, window="auto")
        self.assertEqual(body["window"], 40)   # steps 0..39: fewer than 100 batches
        ref = self.model.stats("default", -1, 39, "bn1")
        self.assertLess(ref["batches"], 100)
        self.check_layer(body["layers"]["bn1"], ref, "all history")
        tgt = self.get_ok("/v1/runs/an/stats", domain="tgt", window="auto")
        self.assertEqual(tgt["step"], 38)
        self.assertEqual(tgt["window"], 9)     # from step 30, tgt's first
        self.check_layer(tgt["layers"]["bn2"], self.model.stats("tgt", 29, 38, "bn2"), "tgt")

    def test_auto_in_compare_matches_stats(self):
        for step in (39, 23):
            stats = self.get_ok("/v1/runs/an/stats", step=step, window="auto", min_batches=6)
            cmp = self.get_ok("/v1/runs/an/compare", step=step, window="auto", min_batches=6,
                              worker="w0")
            self.assertEqual(cmp["window"], stats["window"])
            self.assertEqual(cmp["requested_window"], "auto")
            for layer, got in cmp["layers"].items():
                for key in ("batches", "batch_noise", "mean_se", "batches_for"):
                    self.assertEqual(got[key], stats["layers"][layer][key], layer + " " + key)
            # the same numeric window gives the same metrics
            fixed = self.get_ok("/v1/runs/an/compare", step=step, window=stats["window"],
                                worker="w0")
            self.assertEqual(fixed["overall"], cmp["overall"])

    def test_auto_in_drift_and_series_matches_compare_and_stats(self):
        drift = self.get_ok("/v1/runs/an/drift", window="auto", min_batches=7, worker="w0")
        self.assertEqual(drift["window"], "auto")
        self.assertEqual(drift["min_batches"], 7)
        checked = 0
        for i, step in enumerate(drift["step"]):
            st, cmp, _ = self.d.get("/v1/runs/an/compare", {"step": step, "window": "auto",
                                                            "min_batches": 7, "worker": "w0"})
            if st != 200:
                continue
            for layer, got in cmp["layers"].items():
                # the same window, pooled in another order: equal to rounding
                self.assertRelClose(drift["layers"][layer]["kl"][i], got["kl"], 1e-12,
                                    "step %d %s" % (step, layer))
                checked += 1
        self.assertGreater(checked, 40)
        series = self.get_ok("/v1/runs/an/series", layer="bn2", channel=1, window="auto",
                             min_batches=7, **{"from": 5})
        self.assertEqual(series["window"], "auto")
        for i, step in enumerate(series["step"]):
            stats = self.get_ok("/v1/runs/an/stats", step=step, window="auto", min_batches=7,
                                layer="bn2")
            self.assertRelClose(series["precise_mean"][i], stats["layers"]["bn2"]["mean"][1],
                                1e-12, "step %d" % step)
            self.assertRelClose(series["precise_var"][i], stats["layers"]["bn2"]["var"][1],
                                1e-12, "step %d" % step)

    def test_auto_in_shift_takes_the_source_window(self):
        sh = self.get_ok("/v1/runs/an/shift", source="tgt", target="default", window="auto",
                         min_batches=3)
        src = self.get_ok("/v1/runs/an/stats", domain="tgt", step=sh["step"], window="auto",
                          min_batches=3)
        self.assertEqual((sh["requested_window"], sh["window"]), ("auto", src["window"]))

    def test_window_parameter_errors(self):
        self.assertError(self.d.get("/v1/runs/an/stats", {"window": "2", "min_batches": "5"}),
                         400, "invalid_parameter", "min_batches")
        self.assertError(self.d.get("/v1/runs/an/stats", {"window": "auto", "min_batches": "0"}),
                         422, "invalid_value", "min_batches")
        reply = self.d.get("/v1/runs/an/compare", {"window": "Auto"})
        self.assertError(reply, 400, "invalid_parameter", "window")
        self.assertIn("auto", reply[1]["error"]["message"])
        for path in ("drift", "series"):
            self.assertError(self.d.get("/v1/runs/an/" + path,
                                        {"window": "auto", "min_batches": "x", "layer": "bn1",
                                         "channel": "0"}),
                             400, "invalid_parameter", "min_batches", path)

    def test_compare_defaults_to_the_newest_step_with_an_ema(self):
        # a PreciseBN pass after training: a later step with batches and no EMA
        for step in (1, 2, 3):
            st, body, _ = self.d.post_batch("pbn", {"worker": "w0", "step": step, "seq": 0,
                                                   "layers": {"bn": {"count": 4,
                                                                     "mean": [float(step)],
                                                                     "var": [1.0],
                                                                     "ema_mean": [0.5],
                                                                     "ema_var": [1.0]}}})
            self.assertEqual(st, 200, body)
        st, body, _ = self.d.post_batch("pbn", {"worker": "w0", "step": 4, "seq": 0,
                                               "layers": {"bn": {"count": 4, "mean": [9.0],
                                                                 "var": [1.0]}}})
        self.assertEqual(st, 200, body)
        st, snap, _ = self.post_snapshot_to("pbn", {"label": "p", "step": 4})
        self.assertEqual(st, 201, snap)
        self.assertEqual(self.get_ok("/v1/runs/pbn/compare")["step"], 3)
        self.assertEqual(self.get_ok("/v1/runs/pbn/compare", precise="snapshot:p")["step"], 3)
        self.assertEqual(self.get_ok("/v1/runs/pbn/compare", ema="sim")["step"], 4)
        self.assertEqual(self.get_ok("/v1/runs/pbn/stats")["step"], 4)
        reply = self.d.get("/v1/runs/pbn/compare", {"step": "4"})
        self.assertError(reply, 404, "not_found", "step")
        self.assertIn("the newest step with one is 3", reply[1]["error"]["message"])

    # -- precision -----------------------------------------------------------

    def test_precision_fields(self):
        for target in (0.01, 0.2, 1e-4):
            body = self.get_ok("/v1/runs/an/stats", step=39, window=12, target_se=target)
            self.assertEqual(body["target_se"], target)
            for layer in CHANNELS:
                ref = self.model.stats("default", 27, 39, layer, target_se=target)
                self.check_layer(body["layers"][layer], ref, "%s target %g" % (layer, target))
        # the constant channel is left out: with only it, there is no value
        one = self.get_ok("/v1/runs/an/stats", step=38, window=1, domain="tgt")
        self.check_precision(one["layers"]["bn1"], self.model.stats("tgt", 37, 38, "bn1"),
                             "one batch")
        self.assertIsNone(one["layers"]["bn1"]["mean_se"])

    def test_precision_in_compare(self):
        cmp = self.get_ok("/v1/runs/an/compare", step=39, window=12, target_se=0.05,
                          worker="w0")
        self.assertEqual(cmp["target_se"], 0.05)
        for layer in cmp["layers"]:
            ref = self.model.stats("default", 27, 39, layer, target_se=0.05)
            self.assertEqual(cmp["layers"][layer]["batches"], ref["batches"])
            self.check_precision(cmp["layers"][layer], ref, "compare " + layer)

    def test_target_se_errors(self):
        for value, status, code in (("0", 422, "invalid_value"), ("-1", 422, "invalid_value"),
                                    ("x", 400, "invalid_parameter")):
            for path in ("stats", "compare"):
                self.assertError(self.d.get("/v1/runs/an/" + path, {"target_se": value}),
                                 status, code, "target_se", path + " " + value)

    # -- BN-adapt --------------------------------------------------------------

    def test_prior_mixes_per_channel(self):
        for alpha in (0.0, 0.25, 1.0):
            body = self.get_ok("/v1/runs/an/stats", domain="tgt", step=38, window=9,
                               prior="default", prior_weight=alpha)
            self.assertEqual(body["prior"], "default")
            self.assertEqual(body["prior_weight"], alpha)
            for layer in CHANNELS:
                ref = self.model.stats("tgt", 29, 38, layer)
                src = self.model.stats("default", 29, 38, layer)
                mixed = (alpha * src["mean"] + (1 - alpha) * ref["mean"],
                         alpha * src["var"] + (1 - alpha) * ref["var"])
                got = body["layers"][layer]
                self.check_layer(got, ref, "alpha %g %s" % (alpha, layer), mixed)
                self.assertEqual(got["prior_count"], src["count"])
                self.assertEqual(got["prior_batches"], src["batches"])

    def test_prior_weight_0_and_1_are_the_plain_statistics(self):
        plain_tgt = self.get_ok("/v1/runs/an/stats", domain="tgt", step=38, window=9)
        plain_src = self.get_ok("/v1/runs/an/stats", domain="default", step=38, window=9)
        zero = self.get_ok("/v1/runs/an/stats", domain="tgt", step=38, window=9,
                           prior="default", prior_weight=0)
        one = self.get_ok("/v1/runs/an/stats", domain="tgt", step=38, window=9,
                          prior="default", prior_weight=1)
        for layer in CHANNELS:
            self.assertEqual(zero["layers"][layer]["mean"], plain_tgt["layers"][layer]["mean"])
            self.assertEqual(zero["layers"][layer]["var"], plain_tgt["layers"][layer]["var"])
            self.assertEqual(one["layers"][layer]["mean"], plain_src["layers"][layer]["mean"])
            self.assertEqual(one["layers"][layer]["var"], plain_src["layers"][layer]["var"])

    def test_prior_with_auto_uses_the_target_window(self):
        body = self.get_ok("/v1/runs/an/stats", domain="tgt", window="auto", min_batches=3,
                           prior="default", prior_weight=0.5)
        self.assertEqual(body["window"], 5)     # tgt steps 34, 36, 38
        src = self.model.stats("default", 33, 38, "bn1")
        self.assertEqual(body["layers"]["bn1"]["prior_batches"], src["batches"])

    def test_prior_errors(self):
        base = {"domain": "tgt", "step": "38"}
        cases = (
            ({"prior": "default"}, 400, "missing_field", "prior_weight"),
            ({"prior_weight": "0.5"}, 400, "invalid_parameter", "prior_weight"),
            ({"prior": "default", "prior_weight": "1.5"}, 422, "invalid_value", "prior_weight"),
            ({"prior": "default", "prior_weight": "-0.1"}, 422, "invalid_value", "prior_weight"),
            ({"prior": "default", "prior_weight": "x"}, 400, "invalid_parameter",
             "prior_weight"),
            ({"prior": "nope", "prior_weight": "0.5"}, 404, "not_found", "prior"),
            ({"prior": "bad name!", "prior_weight": "0.5"}, 422, "invalid_value", "prior"),
        )
        for extra, status, code, path in cases:
            self.assertError(self.d.get("/v1/runs/an/stats", dict(base, **extra)), status, code,
                             path, repr(extra))
        # the prior has no batch in (4, 5]... tgt has none before step 30
        self.assertError(self.d.get("/v1/runs/an/stats", {"step": "5", "prior": "tgt",
                                                          "prior_weight": "0.5"}),
                         404, "no_data", "prior")

    # -- snapshots ---------------------------------------------------------------

    def post_snapshot(self, body):
        return self.post_snapshot_to("an", body)

    def post_snapshot_to(self, run, body):
        return self.d.request("POST", "/v1/runs/%s/snapshots" % run, json.dumps(body),
                              {"Content-Type": "application/json"})

    def snapshot(self, body, status=201):
        st, reply, _ = self.post_snapshot(body)
        self.assertEqual(st, status, reply)
        return reply

    def test_snapshot_with_auto_precision_and_prior(self):
        made = self.snapshot({"label": "auto7", "window": "auto", "min_batches": 7,
                              "target_se": 0.05})
        stats = self.get_ok("/v1/runs/an/stats", window="auto", min_batches=7, target_se=0.05)
        self.assertEqual(made["requested_window"], "auto")
        self.assertEqual(made["min_batches"], 7)
        self.assertEqual(made["target_se"], 0.05)
        self.assertEqual((made["step"], made["window"]), (stats["step"], stats["window"]))
        for layer, got in made["layers"].items():
            for key in ("mean", "var", "count", "batches", "batch_noise", "mean_se",
                        "batches_for"):
                self.assertEqual(got[key], stats["layers"][layer][key], layer + " " + key)
        # read back: the same, and a retry is the same snapshot
        st, back, _ = self.d.get("/v1/runs/an/snapshots/auto7")
        self.assertEqual(back["layers"], made["layers"])
        self.assertEqual(self.snapshot({"label": "auto7", "window": "auto", "min_batches": 7},
                                       200)["layers"], made["layers"])
        self.snapshot({"label": "auto7", "window": "auto"}, 409)    # min_batches 100
        self.snapshot({"label": "auto7", "window": stats["window"]}, 409)

        mixed = self.snapshot({"label": "adapt", "domain": "tgt", "step": 38, "window": 9,
                               "prior": "default", "prior_weight": 0.25})
        ref = self.get_ok("/v1/runs/an/stats", domain="tgt", step=38, window=9,
                          prior="default", prior_weight=0.25)
        self.assertEqual((mixed["prior"], mixed["prior_weight"]), ("default", 0.25))
        for layer, got in mixed["layers"].items():
            self.assertEqual(got["mean"], ref["layers"][layer]["mean"])
            self.assertEqual(got["var"], ref["layers"][layer]["var"])
            self.assertEqual(got["mean_se"], ref["layers"][layer]["mean_se"])
        self.snapshot({"label": "adapt", "prior": "default", "prior_weight": 0.5}, 409)
        self.snapshot({"label": "adapt"}, 200)

    def test_snapshot_body_errors(self):
        cases = (
            ({"label": "e", "window": "soon"}, 422, "invalid_value", "window"),
            ({"label": "e", "min_batches": 5}, 422, "invalid_value", "min_batches"),
            ({"label": "e", "window": "auto", "min_batches": 0}, 422, "invalid_value",
             "min_batches"),
            ({"label": "e", "prior": "default"}, 400, "missing_field", "prior_weight"),
            ({"label": "e", "prior_weight": 0.5}, 422, "invalid_value", "prior_weight"),
            ({"label": "e", "prior": "default", "prior_weight": 2}, 422, "invalid_value",
             "prior_weight"),
            ({"label": "e", "prior": "default", "prior_weight": "0.5"}, 400, "wrong_type",
             "prior_weight"),
            ({"label": "e", "prior": "nope", "prior_weight": 0.5}, 404, "not_found", "prior"),
            ({"label": "e", "step": 5, "prior": "tgt", "prior_weight": 0.5}, 404, "no_data",
             "prior"),
            ({"label": "e", "target_se": 0}, 422, "invalid_value", "target_se"),
        )
        for body, status, code, path in cases:
            self.assertError(self.post_snapshot(body), status,
                             code, path, repr(body))
        self.assertError(self.d.get("/v1/runs/an/snapshots/e"), 404)


class TestAutoOverBuckets(TestCaseMixin, unittest.TestCase):
    """window=auto over bucketed history counts whole entries (docs/API.md, "History")."""

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--history-full-steps", "10")
        cls.d.start()
        rng = np.random.default_rng(3)
        cls.model = Run()
        for step in range(60):
            for worker in ("w0", "w1"):
                cls.model.add(rng, "default", worker, step, {"bn1": 10, "bn2": 6})
        for doc in cls.model.docs:
            st, body, _ = cls.d.post_batch("bk", doc)
            assert st == 200, body
        cls.d.wait_bucketed("bk", 40)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def test_auto_takes_whole_buckets(self):
        # steps 41..59 are kept per step (2 batches each), 0..40 in buckets of 10
        # ending at 10, 20, 30, 40 (20 batches each) and step 0 (2); all history
        # is what window=60 covers (step 0 sits in the coarsest tier's entry)
        st, whole, _ = self.d.get("/v1/runs/bk/stats", {"window": "60"})
        self.assertEqual(whole["layers"]["bn1"]["batches"], 120)
        for min_batches, window in ((4, 2), (38, 19), (39, 29), (58, 29), (59, 39),
                                    (98, 49), (99, 59), (118, 59), (119, whole["window"]),
                                    (1000, whole["window"])):
            st, body, _ = self.d.get("/v1/runs/bk/stats", {"window": "auto",
                                                           "min_batches": min_batches})
            self.assertEqual(st, 200, body)
            self.assertEqual(body["window"], window, "min_batches %d" % min_batches)
            ref = self.model.stats("default", max(59 - window, -1), 59, "bn1")
            got = body["layers"]["bn1"]
            self.assertEqual(got["batches"], ref["batches"])
            self.assertGreaterEqual(got["batches"], min(min_batches, 120))
            for c in range(2):
                self.assertRelClose(got["mean"][c], float(ref["mean"][c]), REL)
                self.assertRelClose(got["var"][c], float(ref["var"][c]), REL)


if __name__ == "__main__":
    unittest.main()
