"""End-to-end tests of bnstatd's HTTP API (docs/API.md) against exact references.

Every expected number is computed here from the raw samples (or from the
values as uploaded) with exact integer/Fraction arithmetic, never from a
reply of the daemon. Run:

  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \
  PYTHONPATH=tests/integration python3 tests/integration/test_api.py -v
"""

import http.client
import json
import math
import random
import threading
import unittest

from bnstat_testlib import (Daemon, RawLayerBatch, TestCaseMixin, b64_f32, b64_f64,
                            exact_merge, f32_round, is_json_int, raw_exchange, raw_reference,
                            rel_err, split_http_reply)

REL = 1e-12          # the contract: exact merge to ~1e-12 relative


def layer_doc(count, mean, var, enc="numbers", ema=None):
    """One layer of an upload; enc is "numbers", "f64" or "f32"."""
    conv = {"numbers": list, "f64": b64_f64, "f32": b64_f32}[enc]
    d = {"count": count, "mean": conv(mean), "var": conv(var)}
    if ema is not None:
        d["ema_mean"] = conv(ema[0])
        d["ema_var"] = conv(ema[1])
    return d


def upload_doc(worker, step, seq, layers, domain=None, var_kind=None):
    d = {"worker": worker, "step": step, "seq": seq, "layers": layers}
    if domain is not None:
        d["domain"] = domain
    if var_kind is not None:
        d["var_kind"] = var_kind
    return d


def raw_upload(worker, step, seq, raw_layers, enc="numbers", biased=False, domain=None):
    """An upload made of RawLayerBatch objects {layer: RawLayerBatch}."""
    layers = {}
    for name, rb in raw_layers.items():
        layers[name] = layer_doc(rb.count, rb.mean, rb.var_biased if biased else rb.var, enc)
    return upload_doc(worker, step, seq, layers, domain=domain,
                      var_kind="biased" if biased else None)


class DaemonTest(TestCaseMixin, unittest.TestCase):
    """One daemon for the class; each test uses its own run names."""

    daemon_args = ()

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon(*cls.daemon_args)
        cls.addClassCleanup(cls.d.close)
        cls.d.start()

    def tearDown(self):
        # A test that killed the daemon by accident must not take the rest down silently.
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    # -- helpers -----------------------------------------------------------

    def post_ok(self, run, doc, duplicate=False, layers=None):
        st, body, _ = self.d.post_batch(run, doc)
        self.assertEqual(st, 200, "upload to %s: %r %r" % (run, st, body))
        self.assertIs(body.get("accepted"), True, body)
        self.assertIs(body.get("duplicate"), duplicate, body)
        n = len(doc["layers"]) if layers is None else layers
        self.assertEqual(body.get("layers"), n, body)
        self.assertTrue(is_json_int(body.get("layers")), body)
        return body

    def stats_ok(self, run, **params):
        st, body, _ = self.d.stats(run, **params)
        self.assertEqual(st, 200, "stats %s %r: %r %r" % (run, params, st, body))
        return body

    def check_layer(self, got, ref, channels, estimator="population", rel=REL, what=""):
        """A /stats layer entry against raw_reference()/exact_merge() output."""
        for key in ("channels", "count", "batches"):
            self.assertTrue(is_json_int(got.get(key)), "%s: %s=%r is not a JSON integer"
                            % (what, key, got.get(key)))
        self.assertEqual(got["channels"], channels, what)
        self.assertEqual(got["count"], ref["count"], what)
        self.assertEqual(got["batches"], ref["batches"], what)
        pre = "pop_" if estimator == "population" else "mbv_"
        self.assertAllRelClose(got["mean"], ref[pre + "mean"], rel, what + ".mean")
        self.assertAllRelClose(got["var"], ref[pre + "var"], rel, what + ".var")
        if "nbs_min" in ref:
            bs = got.get("batch_size")
            self.assertIsInstance(bs, dict, what)
            self.assertTrue(is_json_int(bs.get("min")) and is_json_int(bs.get("max")),
                            "%s: batch_size %r" % (what, bs))
            self.assertEqual(bs["min"], ref["nbs_min"], what)
            self.assertEqual(bs["max"], ref["nbs_max"], what)
            self.assertRelClose(bs["mean"], ref["count"] / ref["batches"], 1e-15,
                                what + ".batch_size.mean")
        if "batch_noise" in ref:
            self.assertIn("batch_noise", got, what)
            if ref["batch_noise"] is None:
                self.assertIsNone(got["batch_noise"], what + ".batch_noise with 1 batch")
            else:
                self.assertRelClose(got["batch_noise"], ref["batch_noise"], REL,
                                    what + ".batch_noise")


def make_channels(rng, c):
    mus = [rng.choice((-1, 1)) * rng.uniform(0.5, 3.0) for _ in range(c)]
    sigmas = [rng.uniform(0.2, 2.0) for _ in range(c)]
    return mus, sigmas


# name -> (channels, elements per sample: the H*W of BatchNorm2d)
E2E_LAYERS = {"conv1.bn": (8, 4), "layer1.0.bn1": (4, 2), "layer2.0.downsample.1": (3, 1)}


class TestEndToEnd(DaemonTest):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        rng = random.Random(20240611)
        cls.params = {name: make_channels(rng, c) for name, (c, _) in E2E_LAYERS.items()}
        # 4 workers x 6 batches at one step (a PreciseBN pass), varying batch sizes.
        cls.uploads = []          # (doc, {layer: RawLayerBatch})
        for w in range(4):
            for seq in range(6):
                nbs = rng.choice((2, 3, 5, 8, 13, 16))
                raw = {name: RawLayerBatch.generate(rng, nbs * hw, *cls.params[name])
                       for name, (_, hw) in E2E_LAYERS.items()}
                enc = "f64" if (w + seq) % 2 else "numbers"
                biased = (w == 3 and seq % 2 == 0)
                cls.uploads.append((raw_upload("rank%d" % w, 1000, seq, raw, enc, biased), raw))
        cls.replies = [None] * len(cls.uploads)

        def worker(w):
            for i, (doc, _) in enumerate(cls.uploads):
                if doc["worker"] == "rank%d" % w:
                    cls.replies[i] = cls.d.post_batch("e2e", doc)

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        cls.refs = {name: raw_reference([raw[name] for _, raw in cls.uploads])
                    for name in E2E_LAYERS}

    def test_concurrent_uploads_accepted(self):
        for (doc, _), reply in zip(self.uploads, self.replies):
            self.assertIsNotNone(reply, "an upload thread did not finish")
            st, body, _ = reply
            self.assertEqual(st, 200, body)
            self.assertEqual(body, {"accepted": True, "duplicate": False, "layers": 3})

    def test_population_matches_two_pass_reference(self):
        body = self.stats_ok("e2e")
        self.assertEqual(body["run"], "e2e")
        self.assertEqual(body["domain"], "default")
        self.assertEqual(body["step"], 1000)
        self.assertTrue(is_json_int(body["step"]) and is_json_int(body["window"]))
        self.assertEqual(body["window"], 1)
        self.assertEqual(body["estimator"], "population")
        self.assertEqual(set(body["layers"]), set(E2E_LAYERS))
        for name, (c, _) in E2E_LAYERS.items():
            self.check_layer(body["layers"][name], self.refs[name], c, what=name)

    def test_mean_of_batch_var_matches_reference(self):
        body = self.stats_ok("e2e", estimator="mean_of_batch_var", step=1000)
        self.assertEqual(body["estimator"], "mean_of_batch_var")
        self.assertEqual(set(body["layers"]), set(E2E_LAYERS))
        for name, (c, _) in E2E_LAYERS.items():
            ref = dict(self.refs[name])
            del ref["batch_noise"]
            self.check_layer(body["layers"][name], ref, c, "mean_of_batch_var", what=name)
            # the two estimators really differ on this data (the check is not vacuous)
            self.assertGreater(rel_err(ref["mbv_var"][0], ref["pop_var"][0]), 1e-6)

    def test_any_split_gives_the_same_population_stats(self):
        # The same raw samples, cut into 3 batches of other sizes, in reverse
        # order, by one worker: the population statistics must not change.
        rng = random.Random(7)
        docs = [{} for _ in range(3)]
        for name in E2E_LAYERS:
            c = E2E_LAYERS[name][0]
            per_ch = [[x for _, raw in reversed(self.uploads) for x in raw[name].samples[ch]]
                      for ch in range(c)]
            n = len(per_ch[0])
            cuts = sorted(rng.sample(range(2, n - 2), 2))
            bounds = [0, cuts[0], cuts[1], n]
            for i in range(3):
                rb = RawLayerBatch([s[bounds[i]:bounds[i + 1]] for s in per_ch])
                docs[i][name] = layer_doc(rb.count, rb.mean, rb.var, "f64")
        for i, layers in enumerate(docs):
            self.post_ok("e2e-resplit", upload_doc("solo", 1000, i, layers))
        body = self.stats_ok("e2e-resplit")
        first = self.stats_ok("e2e")
        for name, (c, _) in E2E_LAYERS.items():
            got = body["layers"][name]
            self.assertEqual(got["batches"], 3)
            self.assertEqual(got["count"], self.refs[name]["count"])
            self.assertAllRelClose(got["mean"], self.refs[name]["pop_mean"], REL, name)
            self.assertAllRelClose(got["var"], self.refs[name]["pop_var"], REL, name)
            self.assertAllRelClose(got["mean"], first["layers"][name]["mean"], 2 * REL, name)
            self.assertAllRelClose(got["var"], first["layers"][name]["var"], 2 * REL, name)

    def test_layer_filter(self):
        body = self.stats_ok("e2e", layer="layer1.0.bn1")
        self.assertEqual(list(body["layers"]), ["layer1.0.bn1"])
        self.check_layer(body["layers"]["layer1.0.bn1"], self.refs["layer1.0.bn1"], 4,
                         what="filtered")
        body = self.stats_ok("e2e", layer=["conv1.bn", "layer2.0.downsample.1"])
        self.assertEqual(set(body["layers"]), {"conv1.bn", "layer2.0.downsample.1"})
        body = self.stats_ok("e2e", layer=["conv1.bn", "conv1.bn"])
        self.assertEqual(set(body["layers"]), {"conv1.bn"})
        self.assertError(self.d.stats("e2e", layer="conv2.bn"), 404, what="unknown layer")
        self.assertError(self.d.stats("e2e", layer=["conv1.bn", "nope"]), 404,
                         what="one unknown layer among known ones")

    def test_layer_filter_url_escaping(self):
        # layer names travel in the query string; a percent-encoded '.' is the same name
        st, body, _ = self.d.request("GET", "/v1/runs/e2e/stats?layer=conv1%2Ebn")
        self.assertEqual(st, 200, body)
        self.assertEqual(list(body["layers"]), ["conv1.bn"])


class TestWindowsAndDomains(DaemonTest):

    STEPS = (1, 2, 3, 5, 8, 13)

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        rng = random.Random(99)
        cls.mus, cls.sigmas = make_channels(rng, 3)
        # run "win": domain default; step 13 has a single batch
        cls.win = {}
        for s in cls.STEPS:
            nb = 1 if s == 13 else 2 + s % 2
            cls.win[s] = []
            for i in range(nb):
                rb = RawLayerBatch.generate(rng, rng.randint(4, 40), cls.mus, cls.sigmas)
                cls.win[s].append(rb)
                st, body, _ = cls.d.post_batch("win", raw_upload("w%d" % (i % 2), s, i // 2,
                                                                  {"bn": rb}, "f64"))
                assert st == 200, (st, body)
        # run "dom": default at steps 1-3, fpn.p3 at 2-5, fpn.p4 at 4; the same
        # worker/step/seq identities appear in several domains (distinct batches).
        cls.dom = {}
        plan = [("default", s) for s in (1, 2, 3)] + [("fpn.p3", s) for s in (2, 3, 4, 5)] + \
               [("fpn.p4", 4)]
        for domain, s in plan:
            shift = {"default": 0.0, "fpn.p3": 5.0, "fpn.p4": -7.0}[domain]
            for seq in range(2):
                rb = RawLayerBatch.generate(rng, rng.randint(4, 40),
                                            [m + shift for m in cls.mus], cls.sigmas)
                cls.dom.setdefault((domain, s), []).append(rb)
                st, body, _ = cls.d.post_batch("dom", raw_upload(
                    "w0", s, seq, {"bn": rb}, "f64",
                    domain=None if domain == "default" else domain))
                assert st == 200 and body["duplicate"] is False, (st, body)

    def expect_window(self, run, batches, step, window, domain=None, **params):
        q = dict(params)
        if step is not None:
            q["step"] = step
        if window is not None:
            q["window"] = window
        if domain is not None:
            q["domain"] = domain
        what = "%s %r" % (run, q)
        for est in ("population", "mean_of_batch_var"):
            body = self.stats_ok(run, estimator=est, **q)
            self.assertEqual(body["domain"], domain or "default", what)
            self.assertEqual(body["window"], window or 1, what)
            ref = raw_reference(batches)
            if est != "population":
                del ref["batch_noise"]
            self.check_layer(body["layers"]["bn"], ref, 3, est, what=what + " " + est)
        return body

    def test_window_selects_steps_in_half_open_interval(self):
        cases = [  # (step, window, steps included: S-W < step <= S)
            (13, 1, [13]), (13, 5, [13]), (13, 6, [8, 13]), (8, 3, [8]), (8, 4, [5, 8]),
            (5, 3, [3, 5]), (5, 5, [1, 2, 3, 5]), (3, 2, [2, 3]), (1, 1, [1]),
            (4, 2, [3]), (12, 5, [8]), (13, 13, list(self.STEPS)),
            (10 ** 6, 10 ** 6, list(self.STEPS)), (13, 12, [2, 3, 5, 8, 13]),
            (13, 2 ** 63 - 1, list(self.STEPS)), (2 ** 63 - 1, 2 ** 63 - 1, list(self.STEPS)),
        ]
        for step, window, steps in cases:
            with self.subTest(step=step, window=window):
                batches = [b for s in steps for b in self.win[s]]
                body = self.expect_window("win", batches, step, window)
                self.assertEqual(body["step"], step)

    def test_window_without_data_is_404(self):
        for step, window in ((4, 1), (0, 1), (12, 4), (100, 1), (7, 2), (100, 87)):
            with self.subTest(step=step, window=window):
                self.assertError(self.d.stats("win", step=step, window=window), 404,
                                 what="empty window (%d-%d, %d]" % (step, window, step))

    def test_default_step_is_latest_and_window_defaults_to_1(self):
        body = self.expect_window("win", self.win[13], None, None)
        self.assertEqual(body["step"], 13)
        body = self.expect_window("win", self.win[8], 8, None)
        self.assertEqual(body["step"], 8)
        body = self.expect_window("win", self.win[8] + self.win[13], None, 6)
        self.assertEqual(body["step"], 13)

    def test_domains_are_separate(self):
        for (domain, s), batches in self.dom.items():
            with self.subTest(domain=domain, step=s):
                self.expect_window("dom", batches, s, 1, domain)
        self.expect_window("dom", [b for s in (2, 3, 4, 5) for b in self.dom[("fpn.p3", s)]],
                           5, 4, "fpn.p3")

    def test_latest_step_is_per_domain(self):
        self.assertEqual(self.expect_window("dom", self.dom[("default", 3)], None, None)["step"], 3)
        body = self.expect_window("dom", self.dom[("fpn.p3", 5)], None, None, "fpn.p3")
        self.assertEqual(body["step"], 5)
        body = self.expect_window("dom", self.dom[("fpn.p4", 4)], None, None, "fpn.p4")
        self.assertEqual(body["step"], 4)
        body = self.expect_window("dom", self.dom[("fpn.p3", 5)], None, None, "*")
        self.assertEqual(body["step"], 5)

    def test_star_pools_all_domains(self):
        def pooled(steps):
            return [b for (dom, s), bs in sorted(self.dom.items()) if s in steps for b in bs]
        self.expect_window("dom", pooled({4}), 4, 1, "*")
        self.expect_window("dom", pooled({2, 3}), 3, 2, "*")
        self.expect_window("dom", pooled({1, 2, 3, 4, 5}), 5, 5, "*")
        # '*' sent literally rather than percent-encoded
        st, body, _ = self.d.request("GET", "/v1/runs/dom/stats?domain=*&step=4")
        self.assertEqual(st, 200, body)
        self.assertEqual(body["domain"], "*")
        ref = raw_reference(pooled({4}))
        self.check_layer(body["layers"]["bn"], ref, 3, what="literal *")

    def test_unknown_domain_is_404(self):
        self.assertError(self.d.stats("dom", domain="fpn.p9"), 404, what="unknown domain")
        # a domain of another run is unknown here
        self.assertError(self.d.stats("win", domain="fpn.p3"), 404, what="other run's domain")

    def test_run_description(self):
        st, body, _ = self.d.get("/v1/runs/dom")
        self.assertEqual(st, 200, body)
        self.assertEqual(body["name"], "dom")
        self.assertEqual(body["batches"], 16)
        self.assertEqual(body["steps"], {"min": 1, "max": 5})
        self.assertEqual(body["layers"], [{"name": "bn", "channels": 3}])
        doms = {d["name"]: d for d in body["domains"]}
        self.assertEqual(set(doms), {"default", "fpn.p3", "fpn.p4"})
        self.assertEqual({n: d["batches"] for n, d in doms.items()},
                         {"default": 6, "fpn.p3": 8, "fpn.p4": 2})
        self.assertEqual([(w["name"], w["batches"], w["last_step"]) for w in body["workers"]],
                         [("w0", 16, 5)])


class TestIdentityAndConflicts(DaemonTest):

    MEAN = [0.5, -1.25, 3.0, 0.125]
    VAR = [1.0, 0.25, 3.5, 2.0]

    def base(self, run, **kw):
        doc = upload_doc("w0", 7, 0, {"a.bn": layer_doc(16, self.MEAN, self.VAR)})
        doc.update(kw)
        return doc

    def snapshot(self, run):
        out = []
        for path in ("/v1/runs/%s/stats" % run,
                     "/v1/runs/%s/stats?estimator=mean_of_batch_var" % run,
                     "/v1/runs/%s/stats?domain=*&window=100" % run, "/v1/runs/%s" % run):
            st, raw, _ = self.d.request_raw("GET", path)
            out.append((path, st, raw))
        return out

    def test_retry_is_duplicate_and_changes_nothing(self):
        run = "dup"
        self.post_ok(run, self.base(run))
        before = self.snapshot(run)
        self.assertEqual([st for _, st, _ in before], [200] * 4)
        same_content = {
            "identical": self.base(run),
            "f64 base64": upload_doc("w0", 7, 0, {"a.bn": layer_doc(16, self.MEAN, self.VAR,
                                                                    "f64")}),
            "f32 base64 of f32-exact values": upload_doc(
                "w0", 7, 0, {"a.bn": layer_doc(16, self.MEAN, self.VAR, "f32")}),
            "mixed encodings": upload_doc("w0", 7, 0, {"a.bn": {
                "count": 16, "mean": b64_f64(self.MEAN), "var": self.VAR}}),
            "explicit defaults": self.base(run, domain="default", var_kind="unbiased"),
            "other spelling": ('{"layers":{"a.bn":{"var":[1e0,25e-2,3.50,2],'
                               '"mean":[5E-1,-1.25000,3,0.125],"count":16}},'
                               '"seq":0,"step":7,"worker":"w0"}'),
        }
        for name, doc in same_content.items():
            with self.subTest(variant=name):
                st, body, _ = self.d.post_batch(run, doc)
                self.assertEqual((st, body), (200, {"accepted": True, "duplicate": True,
                                                    "layers": 1}))
        self.assertEqual(self.snapshot(run), before, "a retry changed what is stored")

    def test_same_identity_different_content_is_409(self):
        run = "conflict"
        self.post_ok(run, self.base(run))
        before = self.snapshot(run)
        ulp = list(self.MEAN)
        ulp[2] = math.nextafter(ulp[2], math.inf)
        conflicting = {
            "mean one ulp off": upload_doc("w0", 7, 0, {"a.bn": layer_doc(16, ulp, self.VAR)}),
            "var differs": upload_doc("w0", 7, 0, {"a.bn": layer_doc(
                16, self.MEAN, self.VAR[:3] + [2.5])}),
            "count differs": upload_doc("w0", 7, 0, {"a.bn": layer_doc(17, self.MEAN, self.VAR)}),
            "var_kind differs": self.base(run, var_kind="biased"),
            "extra layer": upload_doc("w0", 7, 0, {"a.bn": layer_doc(16, self.MEAN, self.VAR),
                                                   "b.bn": layer_doc(16, [1.0], [1.0])}),
            "f32 rounding changes the values": upload_doc("w0", 7, 0, {"a.bn": layer_doc(
                16, [0.1, -1.25, 3.0, 0.125], self.VAR, "f32")}),
            "ema added": upload_doc("w0", 7, 0, {"a.bn": layer_doc(
                16, self.MEAN, self.VAR, ema=([0.0] * 4, [1.0] * 4))}),
        }
        for name, doc in conflicting.items():
            with self.subTest(variant=name):
                self.assertError(self.d.post_batch(run, doc), 409, what=name)
        self.assertEqual(self.snapshot(run), before, "a conflicting upload changed the run")
        # the original content is still recognised as a retry
        self.post_ok(run, self.base(run), duplicate=True)

    def test_concurrent_retries_count_once(self):
        # eight clients send the same batch at the same moment: exactly one is
        # new, the others are duplicates, and it is merged once
        run = "dup-race"
        replies = self.race(run, [self.base(run)] * 8)
        self.assertEqual([r[0] for r in replies], [200] * 8, replies)
        self.assertEqual(sorted(r[1]["duplicate"] for r in replies), [False] + [True] * 7,
                         [r[1] for r in replies])
        got = self.stats_ok(run)["layers"]["a.bn"]
        self.assertEqual((got["batches"], got["count"]), (1, 16))
        self.assertEqual(self.d.get("/v1/runs/%s" % run)[1]["batches"], 1)

    def race(self, run, docs):
        """POST every doc at the same moment, one thread each; the replies."""
        barrier = threading.Barrier(len(docs))
        replies = [None] * len(docs)

        def send(i):
            barrier.wait(10)
            replies[i] = self.d.post_batch(run, docs[i])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(docs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertTrue(all(r is not None for r in replies), replies)
        return replies

    def test_concurrent_conflicting_uploads(self):
        # one identity, eight different contents at once: one wins, seven get
        # 409, and the stored statistics are the winner's
        run = "conflict-race"
        docs = [upload_doc("w0", 7, 0, {"a.bn": layer_doc(16, [float(i)] * 4, self.VAR)})
                for i in range(8)]
        replies = self.race(run, docs)
        statuses = sorted(r[0] for r in replies)
        self.assertEqual(statuses, [200] + [409] * 7, [r[:2] for r in replies])
        winner = [i for i, r in enumerate(replies) if r[0] == 200][0]
        got = self.stats_ok(run)["layers"]["a.bn"]
        self.assertEqual((got["batches"], got["mean"]), (1, [float(winner)] * 4))

    def test_concurrent_first_uploads_of_a_layer(self):
        # eight new batches name a new layer with 1..8 channels at once: the
        # first one fixes the channel count, the seven others get 422
        run = "chan-race"
        docs = [upload_doc("w%d" % i, 7, 0, {"n.bn": layer_doc(16, [1.0] * (i + 1),
                                                                [1.0] * (i + 1))})
                for i in range(8)]
        replies = self.race(run, docs)
        self.assertEqual(sorted(r[0] for r in replies), [200] + [422] * 7,
                         [r[:2] for r in replies])
        winner = [i for i, r in enumerate(replies) if r[0] == 200][0]
        st, body, _ = self.d.get("/v1/runs/%s" % run)
        self.assertEqual(body["layers"], [{"name": "n.bn", "channels": winner + 1}])
        self.assertEqual(body["batches"], 1)
        self.assertEqual([w["name"] for w in body["workers"]], ["w%d" % winner])

    def test_f32_exactness_premise(self):
        # the duplicate test relies on these values being exact in float32
        self.assertEqual([f32_round(x) for x in self.MEAN + self.VAR], self.MEAN + self.VAR)
        self.assertNotEqual(f32_round(0.1), 0.1)

    def test_identity_is_run_domain_worker_step_seq(self):
        run = "ident"
        self.post_ok(run, self.base(run))
        for name, doc in {
            "other seq": self.base(run, seq=1),
            "other step": self.base(run, step=8),
            "other worker": self.base(run, worker="w1"),
            "other domain": self.base(run, domain="d2"),
        }.items():
            with self.subTest(variant=name):
                self.post_ok(run, doc, duplicate=False)
        self.post_ok("ident-other-run", self.base(run), duplicate=False)
        body = self.stats_ok(run, step=7)
        # default domain, step 7: (w0,0), (w0,1), (w1,0) -- three batches of equal content
        got = body["layers"]["a.bn"]
        self.assertEqual((got["batches"], got["count"]), (3, 48))
        self.assertAllRelClose(got["mean"], self.MEAN, 0.0, "mean of identical batches")
        ref = exact_merge([(16, self.MEAN, self.VAR, "unbiased")] * 3)
        self.assertAllRelClose(got["var"], ref["pop_var"], REL, "var")
        st, body, _ = self.d.get("/v1/runs/%s" % run)
        self.assertEqual(st, 200)
        self.assertEqual(body["batches"], 5)

    def test_channel_count_change_is_422_and_stores_nothing(self):
        run = "chan"
        self.post_ok(run, self.base(run))
        before = self.snapshot(run)
        # "0fresh.bn" sorts before "a.bn": a new layer (and a new domain and
        # worker) that would be created before the bad layer is looked at.
        bad = upload_doc("w-new", 7, 5, {
            "0fresh.bn": layer_doc(8, [1.0, 2.0], [0.5, 0.5]),
            "a.bn": layer_doc(16, self.MEAN + [1.0], self.VAR + [1.0])}, domain="newdom")
        e = self.assertError(self.d.post_batch(run, bad), 422, "invalid_value",
                             what="5 channels for a 4-channel layer")
        self.assertTrue(str(e.get("path", "")).startswith("layers.a.bn"), e)
        fewer = upload_doc("w-new", 7, 6, {"a.bn": layer_doc(16, self.MEAN[:3], self.VAR[:3],
                                                             "f64")})
        self.assertError(self.d.post_batch(run, fewer), 422, "invalid_value",
                         what="3 channels for a 4-channel layer")
        zero = upload_doc("w-new", 7, 7, {"a.bn": layer_doc(0, [0.0] * 3, [0.0] * 3)})
        self.assertError(self.d.post_batch(run, zero), 422, "invalid_value",
                         what="count 0 with arrays of the wrong length")
        self.assertEqual(self.snapshot(run), before, "a refused upload changed the run")
        self.assertError(self.d.stats(run, domain="newdom"), 404, what="domain of a refused batch")
        self.assertError(self.d.stats(run, domain="*", layer="0fresh.bn"), 404,
                         what="layer of a refused batch")
        # the refused identity was not recorded: a corrected upload is new
        good = upload_doc("w-new", 7, 5, {"0fresh.bn": layer_doc(8, [1.0, 2.0], [0.5, 0.5]),
                                          "a.bn": layer_doc(16, self.MEAN, self.VAR)},
                          domain="newdom")
        self.post_ok(run, good, duplicate=False)
        body = self.stats_ok(run, domain="newdom")
        self.assertEqual(body["layers"]["0fresh.bn"]["channels"], 2)


class TestUploadSemantics(DaemonTest):

    def test_count_zero_layer_merges_nothing(self):
        run = "zero"
        rng = random.Random(5)
        a1 = RawLayerBatch.generate(rng, 16, [1.0, -2.0], [1.0, 0.5])
        b1 = RawLayerBatch.generate(rng, 16, [1.0, -2.0], [1.0, 0.5])
        b2 = RawLayerBatch.generate(rng, 8, [1.0, -2.0], [1.0, 0.5])
        b3 = RawLayerBatch.generate(rng, 4, [1.0, -2.0], [1.0, 0.5])
        self.post_ok(run, raw_upload("w0", 3, 0, {"L1": a1, "L2": b1}))
        before = self.stats_ok(run, layer="L1")
        self.post_ok(run, upload_doc("w0", 3, 1, {"L1": {"count": 0},
                                                  "L2": layer_doc(b2.count, b2.mean, b2.var)}))
        self.post_ok(run, upload_doc("w0", 3, 2, {
            "L1": {"count": 0, "mean": [0.0, 0.0], "var": b64_f64([0.0, 0.0])},
            "L2": layer_doc(b3.count, b3.mean, b3.var, "f64")}))
        body = self.stats_ok(run)
        self.assertEqual(body["layers"]["L1"], before["layers"]["L1"])
        self.check_layer(body["layers"]["L1"], raw_reference([a1]), 2, what="L1")
        self.check_layer(body["layers"]["L2"], raw_reference([b1, b2, b3]), 2, what="L2")
        mbv = self.stats_ok(run, estimator="mean_of_batch_var")
        ref = raw_reference([a1])
        self.assertEqual(mbv["layers"]["L1"]["batches"], 1)
        self.assertAllRelClose(mbv["layers"]["L1"]["var"], ref["mbv_var"], REL, "L1 mbv var")
        # a batch whose only layer is unused is accepted and adds nothing
        self.post_ok(run, upload_doc("w1", 3, 0, {"L2": {"count": 0}}))
        self.assertEqual(self.stats_ok(run), body)
        # ... and a later step holding only unused layers has no data: the
        # latest step (the default) stays 3
        self.post_ok(run, upload_doc("w1", 9, 0, {"L2": {"count": 0}}))
        self.post_ok(run, upload_doc("w1", 10, 0, {"L1": {"count": 0, "mean": [0.0, 0.0],
                                                          "var": [0.0, 0.0]}}))
        self.assertEqual(self.stats_ok(run), body)
        self.assertEqual(self.stats_ok(run, domain="*")["step"], 3)
        self.assertError(self.d.stats(run, step=10, window=7), 404, what="window of unused layers")

    def test_round_trip_of_doubles_and_integers(self):
        # One biased batch of count 8: M2 = v*8 and var = M2/8 are exact in
        # binary, so every value must come back bit for bit.
        mean = [0.1, 1 / 3, -2 / 3, 1e-300, 123456789.12345679, -5e-324,
                1.7976931348623157e308, 2.5, -0.0]
        var = [0.1, 1 / 3, 1e-300, 5e-324, 7.0, 1e300, 0.0, 2.220446049250313e-16, 3.0]
        self.post_ok("rt", upload_doc("w0", 1, 0, {"x.bn": layer_doc(8, mean, var, "f64")},
                                      var_kind="biased"))
        got = self.stats_ok("rt")["layers"]["x.bn"]
        self.assertEqual(got["mean"], mean)
        self.assertEqual(got["var"], var)
        # unbiased, mean_of_batch_var: mean and var come back as sent
        self.post_ok("rt-u", upload_doc("w0", 1, 0, {"x.bn": layer_doc(8, mean, var)}))
        got = self.stats_ok("rt-u", estimator="mean_of_batch_var")["layers"]["x.bn"]
        self.assertEqual(got["mean"], mean)
        self.assertEqual(got["var"], var)

    def test_resnet50_sized_upload_round_trips(self):
        # 53 BatchNorm layers, 26,560 channels (ResNet-50), base64 f64; one
        # biased batch of count 256 (a power of two), so every statistic
        # comes back bit for bit.
        names = [("bn1", 64)]
        for li, (blocks, width) in enumerate(((3, 64), (4, 128), (6, 256), (3, 512)), 1):
            for b in range(blocks):
                for k, c in ((1, width), (2, width), (3, 4 * width)):
                    names.append(("layer%d.%d.bn%d" % (li, b, k), c))
            names.append(("layer%d.0.downsample.1" % li, 4 * width))
        self.assertEqual((len(names), sum(c for _, c in names)), (53, 26560))
        rng = random.Random(50)
        values = {n: ([rng.gauss(0, 1) for _ in range(c)], [rng.uniform(0, 2) for _ in range(c)])
                  for n, c in names}
        doc = upload_doc("rank0", 1, 0, {n: layer_doc(256, m, v, "f64")
                                          for n, (m, v) in values.items()}, var_kind="biased")
        self.post_ok("resnet50", doc)
        body = self.stats_ok("resnet50")
        self.assertEqual(len(body["layers"]), 53)
        for n, c in names:
            got = body["layers"][n]
            self.assertEqual((got["channels"], got["count"]), (c, 256), n)
            self.assertEqual(got["mean"], values[n][0], n)
            self.assertEqual(got["var"], values[n][1], n)

    def test_counts_stay_exact_integers(self):
        # a count sum past 2**53 is not a double; the reply must keep it exact
        c1, c2 = 2 ** 52 + 1, 2 ** 52 + 2
        self.post_ok("bigcount", upload_doc("w0", 1, 0, {"x.bn": layer_doc(c1, [1.0], [2.0])}))
        self.post_ok("bigcount", upload_doc("w0", 1, 1, {"x.bn": layer_doc(c2, [1.0], [2.0])}))
        st, raw, _ = self.d.request_raw("GET", "/v1/runs/bigcount/stats")
        self.assertEqual(st, 200)
        got = json.loads(raw)["layers"]["x.bn"]
        self.assertTrue(is_json_int(got["count"]), raw)
        self.assertEqual(got["count"], c1 + c2)
        self.assertIn(b'"count":%d' % (c1 + c2), raw.replace(b" ", b""))
        self.assertEqual((got["batch_size"]["min"], got["batch_size"]["max"]), (c1, c2))

    def test_large_mean_stays_exact(self):
        # |mean| = 1e6, std 1: E[x^2]-E[x]^2 in doubles is off by ~1e-4 relative
        # here (and is garbage in float32). The variance tolerance is 1e-9:
        # a Chan-Golub-LeVeque merge in doubles lands within ~3e-11 of the
        # exact merge, because the running mean itself only has ~1e-10 of
        # absolute resolution at 1e6 (ulp(1e6) = 1.16e-10).
        rng = random.Random(1234)
        mus = [1e6, -1e6, 1e6 + 0.37, 3e6]
        raws, uploads = [], []
        for i in range(40):
            rb = RawLayerBatch.generate(rng, rng.randint(8, 64), mus, [1.0] * 4)
            raws.append(rb)
            uploads.append((rb.count, rb.mean, rb.var, "unbiased"))
            self.post_ok("bigmean", upload_doc("w%d" % (i % 3), 1, i, {"bn": layer_doc(
                rb.count, rb.mean, rb.var, "f64" if i % 2 else "numbers")}))
        got = self.stats_ok("bigmean")["layers"]["bn"]
        merged = exact_merge(uploads)
        raw = raw_reference(raws)
        self.assertEqual(got["count"], merged["count"])
        self.assertAllRelClose(got["mean"], merged["pop_mean"], REL, "mean vs uploaded")
        self.assertAllRelClose(got["mean"], raw["pop_mean"], REL, "mean vs raw samples")
        self.assertAllRelClose(got["var"], merged["pop_var"], 1e-9, "var vs uploaded")
        self.assertAllRelClose(got["var"], raw["pop_var"], 1e-9, "var vs raw samples")
        for v in got["var"]:
            self.assertTrue(0.5 < v < 2.0, got["var"])
        mbv = self.stats_ok("bigmean", estimator="mean_of_batch_var")["layers"]["bn"]
        self.assertAllRelClose(mbv["mean"], raw["mbv_mean"], REL, "mbv mean")
        self.assertAllRelClose(mbv["var"], raw["mbv_var"], REL, "mbv var")

    def test_rejected_upload_creates_no_run(self):
        self.assertError(self.d.post_batch("ghost", upload_doc(
            "w0", 1, 0, {"x.bn": layer_doc(8, [1.0], [-1.0])})), 422, "invalid_value",
            what="negative variance")
        self.assertError(self.d.post_batch("ghost", b'{"worker": "w0", "step": '), 400,
                         "malformed_json", what="truncated JSON")
        self.assertError(self.d.get("/v1/runs/ghost"), 404, what="run of refused uploads")
        st, body, _ = self.d.get("/v1/runs")
        self.assertEqual(st, 200)
        self.assertNotIn("ghost", [r["name"] for r in body["runs"]])

    def test_malformed_bodies(self):
        good = json.dumps(upload_doc("w0", 1, 0, {"x.bn": layer_doc(8, [1.0], [1.0])})).encode()
        cases = {
            "empty": b"",
            "whitespace only": b"   \n",
            "trailing garbage": good + b" x",
            "two documents": good + good,
            "not UTF-8": good.replace(b'"w0"', b'"w\xff"'),
            "NUL inside": good[:10] + b"\x00" + good[10:],
            "unterminated string": b'{"worker": "w0',
        }
        for name, body in cases.items():
            with self.subTest(case=name):
                self.assertError(self.d.post_batch("malformed", body), 400, "malformed_json",
                                 what=name)
        self.assertError(self.d.get("/v1/runs/malformed"), 404, what="run of malformed uploads")

    def test_out_of_range_integers_are_refused(self):
        for name, text in {
            "step 2**64": '{"worker":"w0","step":18446744073709551616,"seq":0,"layers":'
                          '{"x.bn":{"count":8,"mean":[1],"var":[1]}}}',
            "seq 2**63": '{"worker":"w0","step":1,"seq":9223372036854775808,"layers":'
                         '{"x.bn":{"count":8,"mean":[1],"var":[1]}}}',
            "count 2**63": '{"worker":"w0","step":1,"seq":0,"layers":'
                           '{"x.bn":{"count":9223372036854775808,"mean":[1],"var":[1]}}}',
            "mean 1e400": '{"worker":"w0","step":1,"seq":0,"layers":'
                          '{"x.bn":{"count":8,"mean":[1e400],"var":[1]}}}',
        }.items():
            with self.subTest(case=name):
                st, body, _ = self.d.post_batch("range", text)
                self.assertIn(st, (400, 422), "%s: %r %r" % (name, st, body))
                self.assertError((st, body, None), st, what=name)
        self.assertError(self.d.get("/v1/runs/range"), 404, what="run of refused uploads")

    def test_bad_run_names_in_url(self):
        doc = upload_doc("w0", 1, 0, {"x.bn": layer_doc(8, [1.0], [1.0])})
        for run in ("bad!name", "a" * 129, "sp%20ace", "%2A"):
            with self.subTest(run=run):
                st, body, _ = self.d.post_batch(run, doc)
                self.assertIn(st, (400, 404, 422), body)
                self.assertError((st, body, None), st)
        self.post_ok("a" * 128, doc)


class TestReadEndpoints(DaemonTest):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.plan = []   # (run, domain, worker, step, seq, layers)
        for run, spec in (("meta", [("default", "w0", 5, 0), ("default", "w0", 5, 1),
                                    ("default", "w1", 6, 0), ("fpn.p3", "w1", 9, 0),
                                    ("fpn.p3", "w2", 7, 0)]),
                          ("meta2", [("default", "w9", 42, 0)])):
            for domain, worker, step, seq in spec:
                layers = {"conv1.bn": layer_doc(16, [1.0, 2.0, 3.0], [1.0, 1.0, 1.0])}
                if worker == "w1":
                    layers["fc.bn"] = layer_doc(4, [0.0] * 5, [2.0] * 5, "f64")
                doc = upload_doc(worker, step, seq, layers,
                                 domain=None if domain == "default" else domain)
                st, body, _ = cls.d.post_batch(run, doc)
                assert st == 200, body
                st, body, _ = cls.d.post_batch(run, doc)   # a retry: counted once
                assert st == 200 and body["duplicate"], body

    def test_empty_run_segment_and_hostile_run_names(self):
        # an empty run segment is no resource at all
        st, body, _ = self.d.get("/v1/runs//stats")
        self.assertEqual((st, body["error"]["code"]), (404, "not_found"), body)
        # a run name carrying a newline (decoded from %0A) cannot forge log lines
        n0 = len(self.d.log_lines())
        st, body, _ = self.d.get("/v1/runs/x%0Ats=2024-01-01T00:00:00.000Z%20level=error%20event=forged/stats")
        self.assertEqual(st, 422, body)
        # the log is read by another thread: wait (bounded) for the refusal
        first, _ = self.d.wait_log(r"event=request_rejected", start=n0)
        new = self.d.log_lines()[first:]
        self.assertFalse([l for l in new if l.startswith("ts=2024") or "forged" in l], new)

    def test_runs_list(self):
        st, body, hdrs = self.d.get("/v1/runs")
        self.assertEqual(st, 200, body)
        self.assertTrue(hdrs.get("Content-Type", "").startswith("application/json"), hdrs)
        runs = {r["name"]: r for r in body["runs"]}
        self.assertEqual(set(runs), {"meta", "meta2"})
        self.assertEqual(runs["meta"]["batches"], 5)
        self.assertEqual(runs["meta"]["steps"], {"min": 5, "max": 9})
        self.assertEqual(runs["meta2"]["batches"], 1)
        self.assertEqual(runs["meta2"]["steps"], {"min": 42, "max": 42})

    def test_run_details(self):
        st, body, _ = self.d.get("/v1/runs/meta")
        self.assertEqual(st, 200, body)
        self.assertEqual(body["name"], "meta")
        self.assertEqual(body["batches"], 5)
        self.assertEqual(body["steps"], {"min": 5, "max": 9})
        self.assertEqual(sorted((l["name"], l["channels"]) for l in body["layers"]),
                         [("conv1.bn", 3), ("fc.bn", 5)])
        self.assertEqual(sorted((d["name"], d["batches"]) for d in body["domains"]),
                         [("default", 3), ("fpn.p3", 2)])
        self.assertEqual(sorted((w["name"], w["batches"], w["last_step"]) for w in body["workers"]),
                         [("w0", 2, 5), ("w1", 2, 9), ("w2", 1, 7)])
        for w in body["workers"]:
            self.assertTrue(is_json_int(w["batches"]) and is_json_int(w["last_step"]), w)

    def test_not_found(self):
        # (/ is the dashboard's redirect: test_ui_static.py)
        for path in ("/v1/runs/nope", "/v1/runs/nope/stats", "/v1/nothing", "/nowhere",
                     "/v1/runs/meta/nothing", "/v1/runs/meta/stats/extra"):
            with self.subTest(path=path):
                self.assertError(self.d.get(path), 404, what=path)

    def test_bad_query_parameters(self):
        for params in ({"step": "abc"}, {"step": "-1"}, {"window": "0"}, {"window": "x"},
                       {"estimator": "ema"}, {"step": "1.5"}, {"domain": "bad!dom"},
                       {"window": str(2 ** 63)}, {"step": str(2 ** 64)}, {"step": ""}):
            with self.subTest(params=params):
                st, body, _ = self.d.stats("meta", **params)
                self.assertIn(st, (400, 422), body)
                self.assertError((st, body, None), st, what=repr(params))

    def test_method_not_allowed(self):
        for method, path in (("GET", "/v1/runs/meta/batches"), ("PUT", "/v1/runs/meta/batches"),
                             ("POST", "/v1/runs/meta/stats"), ("POST", "/healthz"),
                             ("POST", "/v1/runs"), ("PATCH", "/v1/runs/meta")):
            with self.subTest(method=method, path=path):
                body = b"{}" if method in ("POST", "PUT", "PATCH") else None
                self.assertError(self.d.request(method, path, body), 405,
                                 what="%s %s" % (method, path))
        st, body, _ = self.d.get("/v1/runs/meta")
        self.assertEqual(body["batches"], 5, "a refused method changed the run")

    def test_method_not_allowed_has_allow_header(self):
        # RFC 9110 15.5.6: a 405 response MUST carry Allow with the methods
        # the resource supports.
        for method, path, allowed in (("GET", "/v1/runs/meta/batches", "POST"),
                                      ("POST", "/v1/runs/meta/stats", "GET")):
            with self.subTest(method=method, path=path):
                st, _, hdrs = self.d.request(method, path, b"{}" if method == "POST" else None)
                self.assertEqual(st, 405)
                allow = hdrs.get("Allow")
                self.assertIsNotNone(allow, "405 without an Allow header")
                self.assertIn(allowed, [m.strip() for m in allow.split(",")])

    def test_connection_reusable_after_errors(self):
        # An error answered before the body was read must not leave the body
        # in the stream to be taken for the next request (here a smuggled
        # GET /healthz inside a refused PUT's body).
        smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        for method, path, body in (("PUT", "/v1/runs/meta/batches", smuggled),
                                   ("POST", "/v1/runs/meta/stats", smuggled),
                                   ("POST", "/nope", smuggled),
                                   ("POST", "/v1/runs/meta/batches", b"{bad json"),
                                   ("POST", "/v1/runs/meta/batches", b'{"worker": 1}')):
            with self.subTest(method=method, path=path):
                conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=10)
                try:
                    conn.request(method, path, body=body,
                                 headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    first = resp.read()
                    self.assertIn(resp.status, (400, 404, 405), first)
                    conn.request("GET", "/v1/runs/meta")
                    resp = conn.getresponse()
                    second = resp.read()
                finally:
                    conn.close()
                self.assertEqual(resp.status, 200, second)
                self.assertEqual(json.loads(second).get("name"), "meta", second)

    def test_healthz(self):
        st, body, hdrs = self.d.get("/healthz")
        self.assertEqual(st, 200, body)
        self.assertEqual(body.get("status"), "ok", body)
        self.assertTrue(hdrs.get("Content-Type", "").startswith("application/json"), hdrs)


class TestBodyLimit(DaemonTest):

    LIMIT = 4096
    after = 0
    daemon_args = ("--max-body", str(LIMIT))

    def padded(self, seq, size):
        text = json.dumps(upload_doc("w0", 1, seq, {"x.bn": layer_doc(8, [1.0, 2.0], [1.0, 1.0])}))
        self.assertLess(len(text), size)
        return (text + " " * (size - len(text))).encode()

    def test_body_at_limit_is_accepted_over_is_413(self):
        self.post_ok("lim", self.padded(0, self.LIMIT), layers=1)
        for size in (self.LIMIT + 1, 3 * self.LIMIT, 200000):
            with self.subTest(size=size):
                self.assertError(self.d.post_batch("lim", self.padded(10 + size % 97, size)),
                                 413, what="%d-byte body" % size)
        # chunked: no Content-Length, the server has to count
        big = self.padded(1, 3 * self.LIMIT)
        chunks = [big[i:i + 1000] for i in range(0, len(big), 1000)]
        conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=30)
        try:
            conn.request("POST", "/v1/runs/lim/batches", body=iter(chunks),
                         headers={"Content-Type": "application/json"}, encode_chunked=True)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        self.assertEqual(resp.status, 413, raw)
        self.assertEqual(json.loads(raw)["error"]["status"], 413)
        self.assertHealthyAndUnchanged()

    def test_huge_content_length_refused_without_reading(self):
        # Content-Length far above the limit and no body at all: the answer
        # must come from the header alone, at once.
        req = (b"POST /v1/runs/lim2/batches HTTP/1.1\r\nHost: 127.0.0.1\r\n"
               b"Content-Type: application/json\r\nContent-Length: 1000000000000\r\n\r\n")
        st, raw = raw_exchange(self.d.port, req, timeout=10)
        self.assertEqual(st, 413, raw[:500])
        _, body = split_http_reply(raw)
        self.assertEqual(body["error"]["status"], 413)
        self.assertHealthyAndUnchanged()

    def assertHealthyAndUnchanged(self):
        st, body, _ = self.d.get("/healthz")
        self.assertEqual(st, 200, body)
        # only the at-limit body (seq 0) may ever have been stored
        st, body, _ = self.d.get("/v1/runs/lim")
        if st == 200:
            self.assertEqual(body["batches"], 1, body)
        self.assertError(self.d.get("/v1/runs/lim2"), 404, what="run of a 413 upload")
        TestBodyLimit.after += 1
        self.post_ok("lim-after", self.padded(100 + TestBodyLimit.after, 300), layers=1)


class TestLayerAndChannelLimits(DaemonTest):

    daemon_args = ("--max-layers", "3", "--max-channels", "16")

    def test_limits(self):
        def layers(prefix, n, c):
            return {"%s%d.bn" % (prefix, i): layer_doc(8, [1.0] * c, [1.0] * c)
                    for i in range(n)}
        # at the limits: accepted
        self.post_ok("lims", upload_doc("w0", 1, 0, layers("a", 3, 16)))
        # over them (new layer names, so no channel count is fixed yet): refused
        for name, doc in {"4 layers": upload_doc("w0", 1, 1, layers("b", 4, 1)),
                          "17 channels": upload_doc("w0", 1, 2, layers("c", 1, 17)),
                          "17 channels base64": upload_doc("w0", 1, 3, {"d.bn": layer_doc(
                              8, [1.0] * 17, [1.0] * 17, "f64")})}.items():
            with self.subTest(case=name):
                st, body, _ = self.d.post_batch("lims", doc)
                self.assertIn(st, (413, 422), "%s: %r %r" % (name, st, body))
                self.assertError((st, body, None), st, what=name)
        st, body, _ = self.d.get("/v1/runs/lims")
        self.assertEqual(body["batches"], 1, body)
        self.assertEqual(sorted(l["name"] for l in body["layers"]), ["a0.bn", "a1.bn", "a2.bn"])


if __name__ == "__main__":
    unittest.main()
