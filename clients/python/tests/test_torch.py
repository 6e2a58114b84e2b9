"""Tests of BNStatsReporter, precise_bn and load_snapshot against a real
bnstatd (env BNSTATD). Skipped when torch is not importable.

    BNSTATD=/work/build/src/bnstatd PYTHONPATH=clients/python \
        /usr/bin/python3 clients/python/tests/test_torch.py -v
"""

import copy
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the bnstat package of this tree
from bnstatd_fixture import Daemon, bnstatd_path  # noqa: E402

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:  # pragma: no cover - exercised where torch is missing
    torch = None

from bnstat import BnstatError, BNStatsReporter, Client  # noqa: E402
from bnstat import bn_adapt, load_snapshot, precise_bn, state_dict_from_snapshot  # noqa: E402

NUM_ITERS = 6
BATCH = 8

if torch is not None:
    torch.set_num_threads(1)

    class Net(nn.Module):
        """BatchNorm3d, BatchNorm2d, BatchNorm1d on 3-D and on 2-D input."""

        def __init__(self):
            super().__init__()
            self.conv3 = nn.Conv3d(2, 3, 3, padding=1)
            self.bn3 = nn.BatchNorm3d(3)
            self.conv2 = nn.Conv2d(12, 4, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(4)
            self.seq_bn = nn.BatchNorm1d(4, momentum=0.3)
            self.fc = nn.Linear(4, 5)
            self.head_bn = nn.BatchNorm1d(5)

        def forward(self, x):  # x: (N, 2, 4, 6, 6)
            n = x.shape[0]
            x = F.relu(self.bn3(self.conv3(x)))
            x = F.relu(self.bn2(self.conv2(x.reshape(n, 12, 6, 6))))
            s = self.seq_bn(x.flatten(2))  # (N, 4, 36)
            return self.head_bn(self.fc(s.mean(2)))

    def make_model():
        torch.manual_seed(0)
        return Net()

    def make_data(seed, n=NUM_ITERS, offset=40.0):
        """n batches whose values sit far from 0 (|mean| >> std): where
        E[x^2]-E[x]^2 in float32 breaks down."""
        g = torch.Generator().manual_seed(seed)
        return [offset + 0.5 * torch.randn(BATCH, 2, 4, 6, 6, generator=g) for _ in range(n)]

    def exact_stats(model, batches):
        """Per BN layer (mean, biased var) in float64 of all its inputs over
        the batches, the model in train mode (on a copy)."""
        m = copy.deepcopy(model).train()
        seen = {}
        hooks = []
        for name, mod in m.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                def hook(module, inputs, name=name):
                    x = inputs[0].detach().double()
                    seen.setdefault(name, []).append(x.transpose(0, 1).reshape(x.shape[1], -1))
                hooks.append(mod.register_forward_pre_hook(hook))
        with torch.no_grad():
            for b in batches:
                m(b)
        for h in hooks:
            h.remove()
        out = {}
        for name, xs in seen.items():
            x = torch.cat(xs, 1)
            out[name] = (x.mean(1), x.var(1, unbiased=False))
        return out

    def f64(values):
        return torch.tensor(values, dtype=torch.float64)

    def assert_rel(tc, got, want, rel=1e-5, what=""):
        got = got.double()
        want = want.double()
        err = ((got - want).abs() / want.abs().clamp_min(1e-12)).max().item()
        tc.assertLessEqual(err, rel, "%s: relative error %.3g\n%s\n%s" % (what, err, got, want))


class CaptureClient:
    """A fake client that keeps what the reporter sends."""

    def __init__(self):
        self.uploads = []

    def upload(self, run, worker, step, seq, layers, domain=None, var_kind=None, dtype=None):
        self.uploads.append({"run": run, "worker": worker, "step": step, "seq": seq,
                             "layers": layers, "domain": domain, "var_kind": var_kind})
        return {"accepted": True, "duplicate": False, "layers": len(layers)}


def rank_worker(url, run, rank, world, out, **kwargs):
    model = make_model()
    model.eval()
    data = make_data(100 + rank, n=kwargs.get("num_iters", NUM_ITERS))
    client = Client(url, retries=5, backoff=0.05)
    kwargs.setdefault("num_iters", NUM_ITERS)
    snap = precise_bn(model, data, client, run, step=50, rank=rank, world_size=world,
                      timeout=60, **kwargs)
    with open(out, "w") as f:
        json.dump({"label": snap["label"],
                   "buffers": {k: v.double().tolist() for k, v in model.state_dict().items()
                               if k.endswith(("running_mean", "running_var"))}}, f)


@unittest.skipIf(torch is None, "torch is not importable")
class TorchTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon().start()
        cls.client = Client(cls.d.url, retries=5, backoff=0.05)

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    # -- precise_bn ------------------------------------------------------------

    def test_precise_bn_is_exact_and_load_snapshot_matches(self):
        model = make_model()
        data = make_data(1)
        # some training first, so that the EMA is not the answer
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        for b in make_data(2, n=3):
            loss = model(b).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        ref = exact_stats(model, data)
        tracked = model.bn2.num_batches_tracked.clone()
        snap = precise_bn(model, data, self.client, "pbn", step=3, num_iters=NUM_ITERS)
        self.assertEqual(snap["label"], "precise-bn-3")
        self.assertFalse(any(m.training for m in model.modules()))  # mode restored
        self.assertTrue(torch.equal(model.bn2.num_batches_tracked, tracked))
        for name in ("bn3", "bn2", "seq_bn", "head_bn"):
            mod = getattr(model, name)
            self.assertEqual(snap["layers"][name]["batches"], NUM_ITERS)
            assert_rel(self, mod.running_mean, ref[name][0], what=name + ".running_mean")
            assert_rel(self, mod.running_var, ref[name][1], what=name + ".running_var")
            # the snapshot itself is exact to ~1e-12 (float64 all along)
            assert_rel(self, f64(snap["layers"][name]["mean"]), ref[name][0], 1e-10, name)
            assert_rel(self, f64(snap["layers"][name]["var"]), ref[name][1], 1e-10, name)
        self.assertGreater(model.bn3.running_mean.abs().min().item(), 1.0)  # the hard case

        # the same outputs as a model whose buffers were set from the exact statistics
        exact = copy.deepcopy(model)
        with torch.no_grad():
            for name, (mean, var) in ref.items():
                getattr(exact, name).running_mean.copy_(mean)
                getattr(exact, name).running_var.copy_(var)
        fresh = copy.deepcopy(model)
        for mod in fresh.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
        res = load_snapshot(fresh, self.client, "pbn", "precise-bn-3")
        self.assertEqual(sorted(res.loaded), ["bn2", "bn3", "head_bn", "seq_bn"])
        self.assertEqual(res.missing, [])
        x = make_data(7, n=1)[0]
        with torch.no_grad():
            want = exact.eval()(x)
            for m in (model, fresh):
                torch.testing.assert_close(m.eval()(x), want, rtol=1e-5, atol=1e-5)

        # state dicts: from the client (JSON), the snapshot dict, safetensors bytes
        sd = state_dict_from_snapshot(self.client, "pbn", "precise-bn-3", model=model)
        self.assertEqual(set(sd), {"%s.%s" % (n, b) for n in ("bn3", "bn2", "seq_bn", "head_bn")
                                   for b in ("running_mean", "running_var")})
        self.assertEqual(sd["bn2.running_var"].dtype, torch.float32)
        other = copy.deepcopy(fresh)
        for mod in other.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.reset_running_stats()
        result = other.load_state_dict(sd, strict=False)
        self.assertEqual(result.unexpected_keys, [])
        for k, v in sd.items():
            self.assertTrue(torch.equal(other.state_dict()[k], v), k)
            self.assertTrue(torch.equal(fresh.state_dict()[k], v), k)
        sd_json = state_dict_from_snapshot(snap, dtype=torch.float64)
        sd_st = state_dict_from_snapshot(
            self.client.snapshot_safetensors("pbn", "precise-bn-3", dtype="f64"),
            dtype=torch.float64)
        sd_st2 = state_dict_from_snapshot(self.client, "pbn", "precise-bn-3",
                                          dtype=torch.float64, format="safetensors")
        for k in sd:
            self.assertTrue(torch.equal(sd_json[k], sd_st[k]), k)
            self.assertTrue(torch.equal(sd_json[k], sd_st2[k]), k)
            self.assertTrue(torch.equal(sd_json[k].float(), sd[k]), k)

    def test_load_snapshot_refuses_a_foreign_layer_or_shape(self):
        model = make_model()
        precise_bn(model, make_data(3, n=2), self.client, "foreign", step=1, num_iters=2)

        class Other(nn.Module):
            def __init__(self, c):
                super().__init__()
                self.bn3 = nn.BatchNorm3d(c)

        for bad, word in ((Other(3), "not a BatchNorm module"), (make_model(), None)):
            if word is None:  # a model whose bn2 has another channel count
                bad.bn2 = nn.BatchNorm2d(7)
                word = "channels"
            before = {k: v.clone() for k, v in bad.state_dict().items()}
            with self.assertRaises(ValueError) as cm:
                load_snapshot(bad, self.client, "foreign", "precise-bn-1")
            self.assertIn(word, str(cm.exception))
            for k, v in bad.state_dict().items():  # nothing changed
                self.assertTrue(torch.equal(v, before[k]), k)
        self.assertIn("'seq_bn'", str(error_for_missing_layer(self.client, "foreign")))
        with self.assertRaises(BnstatError) as cm:
            load_snapshot(make_model(), self.client, "foreign", "no-such-label")
        self.assertEqual(cm.exception.status, 404)

    def test_two_ranks_end_identical_and_pooled_exact(self):
        # Two processes forked from this one (no second torch import), each
        # with its own data, as two ranks of a job would be.
        outs = [os.path.join(self.d.tmpdir, "rank%d.json" % r) for r in range(2)]
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=rank_worker, args=(self.d.url, "ranks", r, 2, outs[r]))
                 for r in (1, 0)]  # rank 1 first: rank 0 must wait for it anyway
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            self.assertEqual(p.exitcode, 0)
        res = []
        for path in outs:
            with open(path) as f:
                res.append(json.load(f))
        self.assertEqual(res[0], res[1])  # identical, to the last bit
        ref = exact_stats(make_model(), make_data(100) + make_data(101))
        for name, (mean, var) in ref.items():
            assert_rel(self, f64(res[0]["buffers"][name + ".running_mean"]), mean,
                       what=name)
            assert_rel(self, f64(res[0]["buffers"][name + ".running_var"]), var,
                       what=name)
        st = self.client.stats("ranks", step=50)
        self.assertEqual({l["batches"] for l in st["layers"].values()}, {2 * NUM_ITERS})
        workers = {w["name"]: w["batches"] for w in self.client.run("ranks")["workers"]}
        self.assertEqual(workers, {"rank0": NUM_ITERS, "rank1": NUM_ITERS})

    def run_ranks(self, run, world, **kwargs):
        outs = [os.path.join(self.d.tmpdir, "%s-rank%d.json" % (run, r)) for r in range(world)]
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=rank_worker, args=(self.d.url, run, r, world, outs[r]),
                             kwargs=kwargs) for r in reversed(range(world))]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            self.assertEqual(p.exitcode, 0)
        res = []
        for path in outs:
            with open(path) as f:
                res.append(json.load(f))
        return res

    def test_precise_bn_stops_at_target_se_on_every_rank_at_once(self):
        # a target that about 8 batches per layer reach, from the noise of 24
        pilot = self.run_ranks("se-pilot", 2, num_iters=12)
        st = self.client.stats("se-pilot", step=50)
        target = max(l["batch_noise"] for l in st["layers"].values()) / math.sqrt(8)
        res = self.run_ranks("se-stop", 2, num_iters=30, target_se=target, check_every=2)
        self.assertEqual(res[0], res[1])            # identical, to the last bit
        self.assertEqual(pilot[0]["label"], "precise-bn-50")
        workers = {w["name"]: w["batches"] for w in self.client.run("se-stop")["workers"]}
        self.assertEqual(workers["rank0"], workers["rank1"])   # stopped at the same iteration
        n = workers["rank0"]
        self.assertLess(n, 30)
        self.assertEqual(n % 2, 0)
        snap = self.client.snapshot("se-stop", "precise-bn-50")
        self.assertEqual(snap["target_se"], target)
        for name, layer in snap["layers"].items():
            self.assertEqual(layer["batches"], 2 * n, name)   # no batch past the decision
            self.assertLessEqual(layer["mean_se"], target, name)
        # and not earlier: the checkpoint before had a layer above the target
        if n > 2:
            self.run_ranks("se-before", 2, num_iters=n - 2)
            before = self.client.stats("se-before", step=50, target_se=target)
            self.assertTrue(any(l["mean_se"] > target for l in before["layers"].values()))

    def test_bn_adapt_mixes_the_target_domain_with_the_prior(self):
        model = make_model()
        precise_bn(model, make_data(7), self.client, "adapt", step=9, num_iters=NUM_ITERS)
        src = self.client.stats("adapt", step=9)
        adapted = make_model()
        snap = bn_adapt(adapted, make_data(8, offset=45.0), self.client, "adapt", step=9,
                        domain="shifted", prior_weight=0.75, num_iters=4)
        self.assertEqual(snap["label"], "bn-adapt-shifted-9")
        self.assertEqual((snap["domain"], snap["prior"], snap["prior_weight"]),
                         ("shifted", "default", 0.75))
        tgt = exact_stats(make_model(), make_data(8, n=4, offset=45.0))
        sd = adapted.state_dict()
        for name, (mean, var) in tgt.items():
            want_mean = 0.75 * f64(src["layers"][name]["mean"]) + 0.25 * mean
            want_var = 0.75 * f64(src["layers"][name]["var"]) + 0.25 * var
            assert_rel(self, sd[name + ".running_mean"], want_mean, what=name)
            assert_rel(self, sd[name + ".running_var"], want_var, what=name)
        with self.assertRaises(ValueError):
            bn_adapt(make_model(), make_data(8), self.client, "adapt", step=9, domain="default",
                     prior_weight=0.5)

    def test_precise_bn_short_loader(self):
        with self.assertRaises(ValueError) as cm:
            precise_bn(make_model(), make_data(4, n=2), self.client, "short", step=0,
                       num_iters=3)
        self.assertIn("stopped after 2", str(cm.exception))

    # -- the reporter ---------------------------------------------------------------

    def train(self, model, reporter, steps, seed=5, after_step=None):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        batches = make_data(seed, n=steps, offset=1.0)
        for i, b in enumerate(batches):
            loss = model(b).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            reporter.step()
            if after_step:
                after_step(i)
        return batches

    def test_reporter_sends_batch_stats_and_the_module_ema(self):
        model = make_model()
        model.head_bn.momentum = None  # cumulative average: reported as the module holds it
        cap = CaptureClient()
        buffers = []
        with BNStatsReporter(model, cap, "rep", "rank0") as rep:
            batches = self.train(model, rep, 8, after_step=lambda i: buffers.append(
                {k: v.clone() for k, v in model.state_dict().items()}))
        self.assertEqual([u["step"] for u in cap.uploads], list(range(8)))
        self.assertEqual({u["seq"] for u in cap.uploads}, {0})
        self.assertEqual(rep.counters["sent"], 8)
        # the batch statistics are those of each forward's inputs
        ref_model = make_model()
        opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)
        for k, b in enumerate(batches):
            ref = exact_stats(ref_model, [b])
            for name, (mean, var_biased) in ref.items():
                got = cap.uploads[k]["layers"][name]
                n = got["count"]
                assert_rel(self, got["mean"], mean, 1e-9, "%s step %d mean" % (name, k))
                assert_rel(self, got["var"], var_biased * n / (n - 1), 1e-9, name)
                self.assertTrue(torch.equal(got["ema_mean"], buffers[k][name + ".running_mean"]))
                self.assertTrue(torch.equal(got["ema_var"], buffers[k][name + ".running_var"]))
            loss = ref_model(b).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.assertEqual(cap.uploads[0]["layers"]["bn2"]["count"], BATCH * 36)
        self.assertEqual(cap.uploads[0]["layers"]["seq_bn"]["count"], BATCH * 36)
        self.assertEqual(cap.uploads[0]["layers"]["head_bn"]["count"], BATCH)
        # PyTorch's EMA is reproduced from the reported batch statistics
        for name, momentum in (("bn3", 0.1), ("bn2", 0.1), ("seq_bn", 0.3), ("head_bn", None)):
            rm = torch.zeros_like(cap.uploads[0]["layers"][name]["mean"])
            rv = torch.ones_like(rm)
            for k, u in enumerate(cap.uploads):
                a = momentum if momentum is not None else 1.0 / (k + 1)
                rm = (1 - a) * rm + a * u["layers"][name]["mean"]
                rv = (1 - a) * rv + a * u["layers"][name]["var"]
                assert_rel(self, u["layers"][name]["ema_mean"], rm, 1e-4, name)
                assert_rel(self, u["layers"][name]["ema_var"], rv, 1e-4, name)

    def test_reporter_every_and_unused_layers(self):
        class Branchy(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.BatchNorm1d(3)
                self.b = nn.BatchNorm1d(3)
                self.frozen = nn.BatchNorm1d(3)
                self.use_b = False

            def forward(self, x):
                y = self.frozen(self.a(x))
                return self.b(y) if self.use_b else y

        torch.manual_seed(1)
        model = Branchy()
        model.frozen.eval()  # not in training mode: not reported
        cap = CaptureClient()
        rep = BNStatsReporter(model, cap, "rep2", "w", every=2, domain="p3")
        for i in range(7):
            model.use_b = i % 4 == 0
            model(torch.randn(4, 3))
            self.assertEqual(rep.step(), i % 2 == 0)
        rep.close()
        self.assertEqual([u["step"] for u in cap.uploads], [0, 2, 4, 6])
        self.assertEqual({u["domain"] for u in cap.uploads}, {"p3"})
        for u in cap.uploads:
            self.assertNotIn("frozen", u["layers"])
            self.assertEqual(u["layers"]["a"]["count"], 4)
            self.assertEqual(u["layers"]["b"]["count"], 4 if u["step"] % 4 == 0 else 0)
            if u["step"] % 4:
                self.assertEqual(u["layers"]["b"], {"count": 0})
        with self.assertRaises(RuntimeError):
            rep.step()  # closed

    def test_reporter_refuses_a_layer_called_twice(self):
        class Twice(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(3, 3)
                self.shared_bn = nn.BatchNorm1d(3)

            def forward(self, x):
                return self.shared_bn(self.lin(self.shared_bn(x)))

        cap = CaptureClient()
        twice = Twice()
        with BNStatsReporter(twice, cap, "twice", "w"):
            with self.assertRaises(RuntimeError) as cm:
                twice(torch.randn(4, 3))
            self.assertIn("'shared_bn'", str(cm.exception))
            self.assertIn("ran a second time", str(cm.exception))
        # two forwards without step() in between are refused the same way
        model = make_model()
        with BNStatsReporter(model, cap, "twice2", "w") as rep:
            x = make_data(9, n=1)[0]
            model(x)
            with self.assertRaises(RuntimeError) as cm:
                model(x)
            self.assertIn("'bn3'", str(cm.exception))
            rep.step()
            model(x)  # fine again after step()
            rep.discard()  # or after discard(), which reports nothing
            model(x)
            rep.step()
        self.assertEqual([u["step"] for u in cap.uploads if u["run"] == "twice2"], [0, 1])

    def test_reporter_logs_non_finite_statistics_once_per_layer_and_goes_on(self):
        # Three BatchNorm layers, each on its own 3 inputs. From step 3 on,
        # b's and c's inputs hold an infinity, which makes their batch
        # statistics and then their EMAs NaN: the server refuses every upload
        # until step 13, when the inputs are clean and b and c's running
        # statistics are reset. At step 14 a's input goes bad, for good.
        class Three(nn.Module):
            def __init__(self):
                super().__init__()
                self.a = nn.BatchNorm1d(3)
                self.b = nn.BatchNorm1d(3)
                self.c = nn.BatchNorm1d(3)

            def forward(self, x):
                return self.a(x[:, 0:3]) + self.b(x[:, 3:6]) + self.c(x[:, 6:9])

        torch.manual_seed(3)
        model = Three().train()
        client = Client(self.d.url, retries=2, backoff=0.05)
        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)

        handler = Keep(logging.DEBUG)
        logger = logging.getLogger("bnstat")
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        self.addCleanup(logger.setLevel, old_level)
        self.addCleanup(logger.removeHandler, handler)

        steps = 16
        with BNStatsReporter(model, client, "nf-rep", "rank0") as rep:
            for step in range(steps):
                x = torch.randn(BATCH, 9)
                if 3 <= step <= 12:
                    x[2, 4] = float("inf")   # b, channel 1
                    x[5, 8] = float("-inf")  # c, channel 2
                if step == 13:
                    model.b.reset_running_stats()
                    model.c.reset_running_stats()
                if step >= 14:
                    x[0, 0] = float("nan")   # a, channel 0
                with torch.no_grad():
                    model(x)
                rep.step()  # never raises: training goes on
                rep.flush(30)
            c = rep.counters
        self.assertEqual((c["sent"], c["failed"], c["nonfinite"], c["dropped"]),
                         (4, 12, 12, 0), c)
        self.assertEqual(rep.nonfinite_layers, {"a", "b", "c"})
        errors = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
        self.assertEqual(len(errors), 3, errors)  # once per layer, not once per step
        self.assertTrue(all(r.levelno == logging.ERROR for r in records
                            if r.levelno >= logging.WARNING))
        # b is the one the server names (first by name), c is found here;
        # both at step 3, and a at step 14
        for msg, layer, what, step in zip(errors, ("b", "c", "a"),
                                          ("mean (channel 1)", "mean (channel 2)",
                                           "mean (channel 0)"),
                                          (3, 3, 14)):
            self.assertIn("BatchNorm layer %s has a non-finite %s at step %d " % (layer, what, step),
                          msg)
            for part in ("run nf-rep", "worker rank0", "mixed-precision (AMP)", "GradScaler"):
                self.assertIn(part, msg)
        # the server counted them for the run, and stored the clean steps
        metrics = client.metrics()
        self.assertIn('bnstat_refused_nonfinite_total{run="nf-rep"} 12\n', metrics)
        run = client.run("nf-rep")
        self.assertEqual((run["batches"], run["steps"]), (4, {"min": 0, "max": 13}))
        # an account that names a value finite here (f32 overflow, say) is the server's
        err = BnstatError(422, "invalid_value", "non-finite var", "layers.x.var[0]",
                          {"error": {"nonfinite": {"worker": "w", "step": 5, "layer": "x",
                                                   "field": "var", "channel": 0}}})

        class Refusing(CaptureClient):
            def upload(self, *a, **kw):
                raise err

        records.clear()
        with BNStatsReporter(model, Refusing(), "nf-rep2", "rank0") as rep2:
            for _ in range(3):
                with torch.no_grad():
                    model(torch.randn(BATCH, 9))
                model.a.reset_running_stats()
                rep2.step()
        self.assertEqual(rep2.counters["nonfinite"], 3)
        errors = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("BatchNorm layer x has a non-finite var (channel 0) at step 0 ", errors[0])

    def test_reporter_end_to_end_with_a_daemon_restart(self):
        # The daemon is SIGKILLed after step 14 and comes back (same port and
        # database) a second later, while training goes on: the reporter's
        # thread retries, and every step ends on the server exactly once.
        model = make_model()
        client = Client(self.d.url, retries=1, backoff=0.05, timeout=5)
        sent = []
        steps = 40
        restarted = threading.Event()
        warnings_seen = []

        class Keep(logging.Handler):
            def emit(self, record):
                warnings_seen.append(record.getMessage())

        handler = Keep(logging.WARNING)
        logging.getLogger("bnstat").addHandler(handler)
        self.addCleanup(logging.getLogger("bnstat").removeHandler, handler)

        def restart_later():
            time.sleep(1.0)
            self.d.start()
            restarted.set()

        def after(i):
            sent.append({k: v.clone() for k, v in model.state_dict().items()})
            if i == 14:
                rep.flush(10)
                self.d.kill()
                threading.Thread(target=restart_later, daemon=True).start()
            if i == 30:
                self.assertTrue(restarted.wait(30))

        with BNStatsReporter(model, client, "e2e", "rank0", dtype="f64") as rep:
            batches = self.train(model, rep, steps, after_step=after)
            # precise_bn while the reporter is attached: the reporter ignores it
            snap = precise_bn(model, make_data(11, n=3), client, "e2e", step=steps,
                              num_iters=3)
        self.assertTrue(any("retrying" in w for w in warnings_seen), warnings_seen)
        c = rep.counters
        self.assertEqual((c["sent"], c["dropped"], c["failed"], c["queued"]), (steps, 0, 0, 0), c)
        self.assertEqual(snap["step"], steps)
        run = self.client.run("e2e")
        self.assertEqual(run["batches"], steps + 3)
        self.assertEqual(run["steps"], {"min": 0, "max": steps})
        workers = {w["name"]: w["batches"] for w in run["workers"]}
        self.assertEqual(workers, {"rank0": steps + 3})  # precise_bn's worker is rank0 too
        ref_model = make_model()
        opt = torch.optim.SGD(ref_model.parameters(), lr=0.01, momentum=0.9)
        for k, b in enumerate(batches):
            st = self.client.stats("e2e", step=k)
            ref = exact_stats(ref_model, [b])
            for name, (mean, var) in ref.items():
                layer = st["layers"][name]
                self.assertEqual(layer["batches"], 1, "step %d %s" % (k, name))
                assert_rel(self, f64(layer["mean"]), mean, 1e-9, name)
                assert_rel(self, f64(layer["var"]), var, 1e-9, name)
            loss = ref_model(b).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        # the worker EMA the server stored is the module's, where the server can say
        try:
            series = self.client.series("e2e", "bn2", channel=1, from_step=0, to_step=steps - 1)
        except BnstatError as e:
            if e.status != 404:
                raise
            series = None  # no series endpoint on this server yet
        if series is not None and series.get("ema_mean"):
            self.assertEqual(series["step"], list(range(steps)))
            for k in range(steps):
                self.assertEqual(series["ema_mean"][k], sent[k]["bn2.running_mean"][1].item())
                self.assertEqual(series["ema_var"][k], sent[k]["bn2.running_var"][1].item())


def error_for_missing_layer(client, run):
    """The error load_snapshot raises for a model lacking a snapshot layer."""
    model = make_model()
    del model.seq_bn
    model.seq_bn = nn.Identity()
    try:
        load_snapshot(model, client, run, "precise-bn-1")
    except ValueError as e:
        return e
    return None


if __name__ == "__main__":
    bnstatd_path()  # exit 1 with a clear message when BNSTATD is unset
    unittest.main()
