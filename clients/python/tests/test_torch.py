"""Tests of BNStatsReporter, precise_bn and load_snapshot against a real
bnstatd (env BNSTATD). Skipped when torch is not importable.

    BNSTATD=$PWD/src/bnstatd PYTHONPATH=clients/python \
        /usr/bin/python3 clients/python/tests/test_torch.py -v
"""

import contextlib
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
import warnings

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
# The reporter's statistics: a float64 computation to float32 rounding (on a
# CPU, BatchNorm's kernel sums in float64 and rounds once; docs/PERFORMANCE.md).
F32_ROUNDING = 2.0 ** -22

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


class HostSyncError(AssertionError):
    """A call that waits for the device ran on the training thread."""


@contextlib.contextmanager
def no_host_sync():
    """Make every call that copies a tensor to the host or waits for the
    device raise on this thread (other threads, the reporter's background
    one, go on): Tensor.cpu, .item, .tolist, .numpy, float()/int()/bool() of
    a tensor, .to(a CPU device) without non_blocking, torch.cuda.synchronize;
    where CUDA exists, torch.cuda.set_sync_debug_mode("error") as well."""
    owner = threading.get_ident()
    patched = []

    def guard(holder, attr, allowed=None):
        orig = getattr(holder, attr)

        def wrapper(*args, **kwargs):
            if threading.get_ident() == owner and not (allowed and allowed(*args, **kwargs)):
                raise HostSyncError("%s on the training thread" % attr)
            return orig(*args, **kwargs)

        setattr(holder, attr, wrapper)
        patched.append((holder, attr, orig))

    def to_keeps_device(self, *args, **kwargs):
        if kwargs.get("non_blocking") or (len(args) > 1 and isinstance(args[-1], bool)
                                          and args[-1]):
            return True
        targets = list(args) + [kwargs.get("device")]
        return not any(isinstance(t, (str, torch.device)) and torch.device(t).type == "cpu"
                       for t in targets if isinstance(t, (str, torch.device)))

    for attr in ("cpu", "item", "tolist", "numpy", "__float__", "__int__", "__bool__"):
        guard(torch.Tensor, attr)
    guard(torch.Tensor, "to", to_keeps_device)
    guard(torch.cuda, "synchronize")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
        for holder, attr, orig in reversed(patched):
            setattr(holder, attr, orig)


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


def ddp_worker(url, run, rank, world, init, out):
    """One rank of a DDP job (gloo): the reporter and precise_bn get the DDP
    model itself; writes its buffers, the snapshot's state dict keys (for the
    DDP model) and, on rank 0, the trained weights."""
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        model = make_model()
        ddp = nn.parallel.DistributedDataParallel(model)
        client = Client(url, retries=5, backoff=0.05)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
        with BNStatsReporter(ddp, client, run, "rank%d" % rank) as rep:
            for b in make_data(200 + rank, n=3, offset=1.0):
                loss = ddp(b).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                rep.step()
        ddp.eval()
        trained = copy.deepcopy(model.state_dict())
        snap = precise_bn(ddp, make_data(300 + rank), client, run, step=3, rank=rank,
                          world_size=world, timeout=60, num_iters=NUM_ITERS)
        sd = state_dict_from_snapshot(snap, model=ddp)
        with open(out, "w") as f:
            json.dump({"counters": rep.counters, "keys": sorted(sd),
                       "buffers": {k: v.double().tolist() for k, v in model.state_dict().items()
                                   if k.endswith(("running_mean", "running_var"))}}, f)
        if rank == 0:
            torch.save(trained, out + ".pt")
    finally:
        dist.destroy_process_group()


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

    def test_precise_bn_leaves_frozen_layers_alone_unless_asked(self):
        # Detection-style fine-tuning: the model trains, bn2 is frozen (eval
        # mode). As fvcore's update_bn_stats, precise_bn recomputes the others
        # only, with bn2 normalising by its running statistics as in training.
        data = make_data(31)
        model = make_model()
        with torch.no_grad():
            model.bn2.running_mean.fill_(40.0)  # a frozen layer's own statistics
            model.bn2.running_var.fill_(3.0)
        model.train()
        model.bn2.eval()
        before = {k: v.clone() for k, v in model.bn2.state_dict().items()}
        ref_model = copy.deepcopy(model)
        seen = self.record_inputs(ref_model)
        with torch.no_grad():
            for b in data:
                ref_model(b)    # the same modes: bn2 frozen
        with self.assertWarns(UserWarning) as cm:
            snap = precise_bn(model, data, self.client, "frozen", step=1, num_iters=NUM_ITERS)
        self.assertIn("1 frozen BatchNorm layers", str(cm.warning))
        self.assertIn("bn2", str(cm.warning))
        self.assertIn("include_frozen=True", str(cm.warning))
        self.assertEqual(sorted(snap["layers"]), ["bn3", "head_bn", "seq_bn"])
        self.assertEqual(sorted(seen), ["bn3", "head_bn", "seq_bn"])
        for k, v in model.bn2.state_dict().items():     # buffers and mode kept
            self.assertTrue(torch.equal(v, before[k]), k)
        self.assertFalse(model.bn2.training)
        self.assertTrue(model.training and model.bn3.training)
        for name, xs in seen.items():
            x = torch.cat(xs, 1)
            mod = getattr(model, name)
            assert_rel(self, mod.running_mean, x.mean(1), what=name)
            assert_rel(self, mod.running_var, x.var(1, unbiased=False), what=name)

        # include_frozen: bn2 too, in training mode during the pass, then eval again
        ref = exact_stats(model, data)
        precise_bn(model, data, self.client, "frozen", step=2, num_iters=NUM_ITERS,
                   include_frozen=True)
        self.assertFalse(model.bn2.training)
        for name, (mean, var) in ref.items():
            assert_rel(self, getattr(model, name).running_mean, mean, what=name)
            assert_rel(self, getattr(model, name).running_var, var, what=name)
        # a model in eval mode as a whole has no frozen layer
        whole = make_model().eval()
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            snap = precise_bn(whole, data, self.client, "frozen", step=3, num_iters=NUM_ITERS)
        self.assertEqual(len(snap["layers"]), 4)
        # every layer frozen: nothing to do, said at once
        allfrozen = make_model().train()
        for m in allfrozen.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        with self.assertRaises(ValueError) as cm2, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            precise_bn(allfrozen, data, self.client, "frozen", step=4, num_iters=NUM_ITERS)
        self.assertIn("include_frozen", str(cm2.exception))

    def test_wrapper_prefixes_are_stripped_on_the_way_in_and_matched_on_the_way_out(self):
        class OptimizedModule(nn.Module):  # torch.compile's wrapper (torch >= 2) holds _orig_mod
            def __init__(self, mod):
                super().__init__()
                self._orig_mod = mod

            def forward(self, x):
                return self._orig_mod(x)

        model = make_model()
        wrapped = nn.DataParallel(OptimizedModule(model))  # no GPU: runs the module itself
        cap = CaptureClient()
        with BNStatsReporter(wrapped, cap, "wrapped", "w") as rep:
            self.train(wrapped, rep, 2)
        self.assertEqual(sorted(cap.uploads[0]["layers"]), ["bn2", "bn3", "head_bn", "seq_bn"])
        snap = precise_bn(wrapped, make_data(41, n=2), self.client, "wrapped", step=2,
                          num_iters=2)
        self.assertEqual(sorted(snap["layers"]), ["bn2", "bn3", "head_bn", "seq_bn"])
        # the state dict fits the model it is made for: the wrapped one, or the plain one
        sd = state_dict_from_snapshot(snap, model=wrapped)
        self.assertEqual(sorted(sd), sorted("module._orig_mod.%s.%s" % (n, b)
                                            for n in ("bn2", "bn3", "head_bn", "seq_bn")
                                            for b in ("running_mean", "running_var")))
        self.assertEqual(wrapped.load_state_dict(sd, strict=False).unexpected_keys, [])
        self.assertIn("bn2.running_mean", state_dict_from_snapshot(snap, model=model))
        self.assertIn("bn2.running_mean", state_dict_from_snapshot(snap))
        # a snapshot stored with the prefixes (by a client that kept them) loads into either
        c = Client(self.d.url, dtype="f64")
        layers = {"module." + n: {"count": 8, "mean": [float(i)] * ch, "var": [2.0] * ch}
                  for i, (n, ch) in enumerate((("bn3", 3), ("bn2", 4), ("seq_bn", 4),
                                               ("head_bn", 5)))}
        c.upload("prefixed", "w", 1, 0, layers)
        c.snapshot_create("prefixed", "s", step=1)
        for target in (make_model(), nn.DataParallel(make_model())):
            res = load_snapshot(target, c, "prefixed", "s")
            self.assertEqual(sorted(res.loaded), ["bn2", "bn3", "head_bn", "seq_bn"])
            inner = getattr(target, "module", target)
            self.assertEqual(inner.bn2.running_mean.tolist(), [1.0] * 4)
            self.assertEqual(inner.head_bn.running_var.tolist(), [1.75] * 5)  # 2 * 7/8
        sd = state_dict_from_snapshot(c, "prefixed", "s")
        self.assertIn("seq_bn.running_var", sd)

    def test_ddp_two_ranks_report_and_precise_bn_under_the_plain_names(self):
        outs = [os.path.join(self.d.tmpdir, "ddp-rank%d.json" % r) for r in range(2)]
        init = "file://" + os.path.join(self.d.tmpdir, "ddp-init")
        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=ddp_worker, args=(self.d.url, "ddp", r, 2, init, outs[r]))
                 for r in (1, 0)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
            self.assertEqual(p.exitcode, 0)
        res = []
        for path in outs:
            with open(path) as f:
                res.append(json.load(f))
        self.assertEqual(res[0]["buffers"], res[1]["buffers"])
        names = ["bn2", "bn3", "head_bn", "seq_bn"]
        self.assertEqual(sorted(l["name"] for l in self.client.run("ddp")["layers"]), names)
        self.assertEqual(res[0]["keys"], sorted("module.%s.%s" % (n, b) for n in names
                                                for b in ("running_mean", "running_var")))
        for r in res:
            self.assertEqual((r["counters"]["sent"], r["counters"]["dropped"]), (3, 0))
        workers = {w["name"]: w["batches"] for w in self.client.run("ddp")["workers"]}
        self.assertEqual(workers, {"rank0": 3 + NUM_ITERS, "rank1": 3 + NUM_ITERS})
        # exact: the pooled statistics of both ranks' data through the trained weights
        trained = make_model()
        trained.load_state_dict(torch.load(outs[0] + ".pt"))
        ref = exact_stats(trained, make_data(300) + make_data(301))
        for name, (mean, var) in ref.items():
            assert_rel(self, f64(res[0]["buffers"][name + ".running_mean"]), mean, what=name)
            assert_rel(self, f64(res[0]["buffers"][name + ".running_var"]), var, what=name)
        plain = make_model()
        res_load = load_snapshot(plain, self.client, "ddp", "precise-bn-3")
        self.assertEqual(sorted(res_load.loaded), names)
        self.assertEqual(plain.bn2.running_mean.double().tolist(),
                         res[0]["buffers"]["bn2.running_mean"])

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

    def test_the_training_thread_never_waits_for_the_device(self):
        # Every host copy and device wait is made to raise on the training
        # thread; with the reporter attached (micro-batches, merged or not,
        # and every=2), training runs and the uploads are exact all the same.
        with no_host_sync():
            self.assertRaises(HostSyncError, torch.ones(1).cpu)  # the guard is on
            self.assertRaises(HostSyncError, torch.ones(1).to, "cpu")
            self.assertRaises(HostSyncError, float, torch.ones(1))
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        for device, merge, every in [(d, m, e) for d in devices for m in (False, True)
                                     for e in (1, 2)]:
            model = make_model().to(device)
            ref_model = copy.deepcopy(model).cpu()
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            data = [b.to(device) for b in make_data(17, n=8, offset=1.0)]
            cap = CaptureClient()
            rep = BNStatsReporter(model, cap, "nosync", "rank0", every=every,
                                  merge_micro_batches=merge)
            with no_host_sync():
                for k in range(0, len(data), 2):  # two micro-batches per step
                    for b in data[k:k + 2]:
                        model(b).pow(2).mean().backward()
                    opt.step()
                    opt.zero_grad()
                    rep.step()
            rep.close()
            what = "%s merge=%s every=%d" % (device, merge, every)
            self.assertEqual(rep.counters["sent"], (4 // every) * (1 if merge else 2), what)
            ref_opt = torch.optim.SGD(ref_model.parameters(), lr=0.01)
            for k in range(0, len(data), 2):
                batches = [b.cpu() for b in data[k:k + 2]]
                got = [u for u in cap.uploads if u["step"] == k // 2]
                if (k // 2) % every == 0:
                    wants = [exact_stats(ref_model, batches)] if merge else \
                        [exact_stats(ref_model, [b]) for b in batches]
                    self.assertEqual(len(got), len(wants), what)
                    for u, want in zip(got, wants):
                        for name, (mean, var_biased) in want.items():
                            layer = u["layers"][name]
                            n = layer["count"]
                            assert_rel(self, layer["mean"], mean, F32_ROUNDING, what + name)
                            assert_rel(self, layer["var"], var_biased * n / (n - 1),
                                       F32_ROUNDING, what + name)
                for b in batches:
                    ref_model(b).pow(2).mean().backward()
                ref_opt.step()
                ref_opt.zero_grad()

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
                assert_rel(self, got["mean"], mean, F32_ROUNDING, "%s step %d mean" % (name, k))
                assert_rel(self, got["var"], var_biased * n / (n - 1), F32_ROUNDING, name)
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

    def test_reporter_hooks_only_the_steps_it_reports(self):
        # On the steps `every` skips the modules carry no hook at all (the
        # model runs PyTorch's plain call path); remove_hooks/add_hooks.
        model = make_model()
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        cap = CaptureClient()
        rep = BNStatsReporter(model, cap, "hooks", "w", every=3, start_step=1)
        hooked = []
        for _ in range(7):  # steps 1..7
            hooked.append(any(m._forward_pre_hooks for m in bns))
            model(make_data(3, n=1)[0])
            rep.step()
        self.assertEqual(hooked, [False, False, True, False, False, True, False])
        rep.remove_hooks()
        rep.step()  # step 8; step 9 is an every-th step, but not observed
        self.assertFalse(any(m._forward_pre_hooks for m in bns))
        rep.add_hooks()
        self.assertTrue(all(len(m._forward_pre_hooks) == 1 for m in bns))
        model(make_data(3, n=1)[0])
        rep.step()
        rep.close()
        self.assertEqual([u["step"] for u in cap.uploads], [3, 6, 9])
        self.assertFalse(any(m._forward_pre_hooks for m in bns))

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

    def record_inputs(self, model):
        """{name: [float64 input of each training-mode call, as (C, n)]} of
        model's BatchNorm modules, filled by hooks of the test's own."""
        seen = {}
        for name, mod in model.named_modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                def hook(module, inputs, name=name):
                    if module.training:
                        x = inputs[0].detach().double()
                        seen.setdefault(name, []).append(
                            x.transpose(0, 1).reshape(x.shape[1], -1))
                self.addCleanup(mod.register_forward_pre_hook(hook).remove)
        return seen

    def test_gradient_accumulation_reports_each_micro_batch_or_merges_them(self):
        # Three forwards (micro-batches) per optimizer step, every=2: each
        # micro-batch is its own seq, the server merges them exactly; with
        # merge_micro_batches one upload per step holds the same statistics.
        accum, steps = 3, 4
        for merge in (False, True):
            run = "accum-merged" if merge else "accum"
            model = make_model()
            seen = self.record_inputs(model)
            cap = CaptureClient()
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            batches = make_data(21, n=steps * accum, offset=1.0)
            inputs, emas = [], []
            for up in (cap, self.client):
                if up is self.client:
                    model = make_model()
                    seen = self.record_inputs(model)
                    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
                rep = BNStatsReporter(model, up, run, "rank0", every=2, dtype="f64",
                                      merge_micro_batches=merge)
                for k in range(steps):
                    opt.zero_grad()
                    for j in range(accum):
                        (model(batches[k * accum + j]).pow(2).mean() / accum).backward()
                    opt.step()
                    self.assertEqual(rep.step(), k % 2 == 0)  # no RuntimeError, every step
                    if up is cap:
                        emas.append({n: m.running_mean.clone() for n, m in model.named_modules()
                                     if isinstance(m, nn.modules.batchnorm._BatchNorm)})
                c = rep.close()
                self.assertEqual((c["dropped"], c["failed"]), (0, 0), c)
                inputs.append(seen)
            # the same training twice: the same inputs, bit for bit
            for name in inputs[0]:
                for a, b in zip(inputs[0][name], inputs[1][name]):
                    self.assertTrue(torch.equal(a, b), name)
            per_step = 1 if merge else accum
            self.assertEqual([(u["step"], u["seq"]) for u in cap.uploads],
                             [(k, q) for k in (0, 2) for q in range(per_step)])
            for u in cap.uploads:  # every seq carries the module's EMA after the step
                for name, ema in emas[u["step"]].items():
                    self.assertTrue(torch.equal(u["layers"][name]["ema_mean"], ema), name)
            seen = inputs[0]
            for k in (0, 2):
                st = self.client.stats(run, step=k, window=1)
                for name, xs in seen.items():
                    # the inputs of the step's micro-batches (skipped steps: none recorded
                    # by the reporter, but the test's hooks saw them all)
                    x = torch.cat(xs[k * accum:(k + 1) * accum], 1)
                    layer = st["layers"][name]
                    self.assertEqual(layer["batches"], per_step, name)
                    self.assertEqual(layer["count"], x.shape[1], name)
                    assert_rel(self, f64(layer["mean"]), x.mean(1), F32_ROUNDING, name)
                    assert_rel(self, f64(layer["var"]), x.var(1, unbiased=False), F32_ROUNDING,
                               name)
                    if merge:
                        got = [u for u in cap.uploads if u["step"] == k][0]["layers"][name]
                        assert_rel(self, got["var"], x.var(1, unbiased=True), F32_ROUNDING, name)
            run_doc = self.client.run(run)
            self.assertEqual(run_doc["steps"], {"min": 0, "max": 2})
            self.assertEqual(run_doc["batches"], 2 * per_step)
            # the layers in model order (the order of the first upload)
            self.assertEqual([l["name"] for l in run_doc["layers"]],
                             ["bn3", "bn2", "seq_bn", "head_bn"])

    def test_reporter_counts_each_input_of_a_shared_layer_once(self):
        class Twice(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(3, 3)
                self.first_bn = nn.BatchNorm1d(3)
                self.shared_bn = nn.BatchNorm1d(3)

            def forward(self, x):
                return self.shared_bn(self.lin(self.shared_bn(self.first_bn(x))))

        torch.manual_seed(4)
        for merge in (False, True):
            twice = Twice()
            seen = self.record_inputs(twice)
            cap = CaptureClient()
            with BNStatsReporter(twice, cap, "twice", "w", merge_micro_batches=merge) as rep:
                twice(torch.randn(4, 3) + 2.0)  # shared_bn runs twice: no error
                rep.step()
                twice(torch.randn(4, 3))
                rep.discard()                   # forgets that forward
                twice(torch.randn(4, 3))
                twice(torch.randn(4, 3))        # two forwards before step(): two micro-batches
                rep.step()
            self.assertEqual(len(seen["shared_bn"]), 8)
            got = {}
            for u in cap.uploads:
                for name, layer in u["layers"].items():
                    if layer["count"]:
                        got.setdefault((u["step"], name), []).append(layer)
            for step, calls in ((0, slice(0, 2)), (1, slice(4, 8))):
                for name in ("first_bn", "shared_bn"):
                    x = torch.cat(seen[name][calls] if name == "shared_bn"
                                  else seen[name][calls.start // 2:calls.stop // 2], 1)
                    layers = got[(step, name)]
                    self.assertEqual(len(layers), 1 if merge else x.shape[1] // 4, name)
                    self.assertEqual(sum(l["count"] for l in layers), x.shape[1])
                    close = dict(rtol=F32_ROUNDING, atol=1e-12)
                    if merge:
                        torch.testing.assert_close(layers[0]["mean"], x.mean(1), **close)
                        torch.testing.assert_close(layers[0]["var"], x.var(1), **close)
                    else:
                        for l, part in zip(layers, x.split(4, 1)):
                            torch.testing.assert_close(l["mean"], part.mean(1), **close)
                            torch.testing.assert_close(l["var"], part.var(1), **close)
            seqs = [(u["step"], u["seq"]) for u in cap.uploads]
            self.assertEqual(seqs, [(0, 0), (1, 0)] if merge else
                             [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)])

    def test_hooks_follow_the_global_step_of_a_framework(self):
        # A framework's loop: accumulate_grad_batches=2, resumed at global
        # step 10; the callback gets the global step after every batch.
        from bnstat import BNStatsHooks

        model = make_model()
        cap = CaptureClient()
        hooks = BNStatsHooks(cap, "hooks", every=1)
        hooks.on_train_begin(model, global_step=10, rank=3)
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        global_step = 10
        for i, b in enumerate(make_data(61, n=6, offset=1.0)):
            model(b).pow(2).mean().backward()
            if i % 2 == 1:
                opt.step()
                opt.zero_grad()
                global_step += 1
            self.assertEqual(hooks.on_batch_end(global_step), True if i % 2 else None)
        counters = hooks.on_train_end()
        self.assertEqual(counters["sent"], 6)
        self.assertEqual([(u["worker"], u["step"], u["seq"]) for u in cap.uploads],
                         [("rank3", k, q) for k in (10, 11, 12) for q in (0, 1)])
        with self.assertRaises(RuntimeError):
            hooks.on_batch_end(13)

        # the example callbacks around them, with stand-ins for the two libraries
        import types
        examples = os.path.join(os.path.dirname(HERE), "examples")
        sys.path.insert(0, examples)
        self.addCleanup(sys.path.remove, examples)
        stubs = {"lightning": types.ModuleType("lightning"),
                 "lightning.pytorch": types.ModuleType("lightning.pytorch"),
                 "transformers": types.ModuleType("transformers")}
        stubs["lightning.pytorch"].Callback = object
        stubs["transformers"].TrainerCallback = object
        for name, mod in stubs.items():
            self.assertNotIn(name, sys.modules)
            sys.modules[name] = mod
            self.addCleanup(sys.modules.pop, name)
        import integrations

        ns = types.SimpleNamespace
        cap = CaptureClient()
        cb = integrations.lightning_callback(cap, "pl")
        trainer = ns(global_step=0, global_rank=1)
        cb.on_train_start(trainer, model)
        for i, b in enumerate(make_data(62, n=4, offset=1.0)):
            model(b)
            trainer.global_step += i % 2   # the optimizer steps every second batch
            cb.on_train_batch_end(trainer, model, None, b, i)
        cb.on_train_end(trainer, model)
        self.assertEqual([(u["worker"], u["step"], u["seq"]) for u in cap.uploads],
                         [("rank1", 0, 0), ("rank1", 0, 1), ("rank1", 1, 0), ("rank1", 1, 1)])
        cap = CaptureClient()
        cb = integrations.hf_callback(cap, "hf", merge_micro_batches=True)
        state, args = ns(global_step=5), ns(process_index=0)
        cb.on_train_begin(args, state, None, model=model)
        for k in range(2):
            model(make_data(63 + k, n=1, offset=1.0)[0])
            model(make_data(65 + k, n=1, offset=1.0)[0])
            state.global_step += 1
            cb.on_step_end(args, state, None)
        cb.on_train_end(args, state, None)
        self.assertEqual([(u["worker"], u["step"], u["seq"], u["layers"]["bn2"]["count"])
                          for u in cap.uploads], [("rank0", 5, 0, 2 * BATCH * 36),
                                                  ("rank0", 6, 0, 2 * BATCH * 36)])

    def keep_log(self, level=logging.INFO):
        """The bnstat logger's records from now on, in a list."""
        records = []

        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record)

        logger = logging.getLogger("bnstat")
        handler = Keep(level)
        old_level = logger.level
        logger.addHandler(handler)
        logger.setLevel(level)
        self.addCleanup(logger.setLevel, old_level)
        self.addCleanup(logger.removeHandler, handler)
        return records

    def wait_for(self, what, cond, timeout=20.0):
        deadline = time.monotonic() + timeout
        while not cond():
            self.assertLess(time.monotonic(), deadline, "no %s within %.0fs" % (what, timeout))
            time.sleep(0.01)

    def test_reporter_says_at_once_when_the_daemon_does_not_answer_and_sums_up(self):
        records = self.keep_log()
        model = make_model()
        # a port nobody listens on: the health check fails, training goes on
        client = Client("http://127.0.0.1:1", retries=0, backoff=0.05, timeout=2)
        rep = BNStatsReporter(model, client, "nobody", "rank0", queue_size=8)
        self.wait_for("health warning", lambda: rep.healthy is False)
        msgs = [r.getMessage() for r in records if r.levelno == logging.WARNING]
        self.assertTrue(any("http://127.0.0.1:1 does not answer its health check" in m
                            and "training goes on" in m for m in msgs), msgs)
        self.train(model, rep, 2)  # nothing raises
        c = rep.close(timeout=0.5)
        self.assertEqual(c["sent"], 0)
        self.assertGreaterEqual(c["retried"], 1)
        self.assertEqual(c["dropped"], 2)
        last = records[-1]
        self.assertEqual(last.levelno, logging.WARNING)
        self.assertIn("reporter of run nobody worker rank0 closed: 0 uploads sent, 1 retried, "
                      "2 dropped, 0 refused", last.getMessage())
        # a daemon that answers: healthy, and the summary at info level
        records.clear()
        with BNStatsReporter(model, self.client, "somebody", "rank0") as rep:
            self.train(model, rep, 3)
        self.assertTrue(rep.healthy)
        self.assertEqual([r.levelno for r in records], [logging.INFO])
        self.assertIn("closed: 3 uploads sent, 0 retried, 0 dropped, 0 refused",
                      records[0].getMessage())

    def test_reporter_warns_once_when_its_queue_backs_up(self):
        records = self.keep_log(logging.WARNING)
        release = threading.Event()

        class Slow(CaptureClient):
            url = "http://slow"

            def upload(self, *a, **kw):
                release.wait(30)
                return super().upload(*a, **kw)

        model = make_model()
        slow = Slow()
        rep = BNStatsReporter(model, slow, "slow", "rank0", queue_size=6)
        x = make_data(51, n=1)[0]
        for k in range(5):   # the thread holds one, the queue the others
            model(x)
            self.assertTrue(rep.step())
        backlog = [r.getMessage() for r in records]
        self.assertEqual(len(backlog), 1, backlog)
        self.assertIn("of 6 uploads are waiting for bnstatd (http://slow)", backlog[0])
        release.set()
        self.assertTrue(rep.flush(30))
        c = rep.close()
        self.assertEqual((c["sent"], c["dropped"]), (5, 0))
        self.assertEqual(len(records), 1, [r.getMessage() for r in records])

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
        errors = [r.getMessage() for r in records if r.levelno >= logging.WARNING
                  and " closed: " not in r.getMessage()]  # close()'s summary aside
        self.assertEqual(len(errors), 3, errors)  # once per layer, not once per step
        self.assertTrue(all(r.levelno == logging.ERROR for r in records
                            if r.levelno >= logging.WARNING and " closed: " not in r.getMessage()))
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
        errors = [r.getMessage() for r in records if r.levelno >= logging.WARNING
                  and " closed: " not in r.getMessage()]
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
                assert_rel(self, f64(layer["mean"]), mean, F32_ROUNDING, name)
                assert_rel(self, f64(layer["var"]), var, F32_ROUNDING, name)
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
