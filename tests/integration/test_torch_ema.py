"""The simulated EMA against a real PyTorch BatchNorm2d (docs/API.md, "Comparison": the simulated EMA).

A torch.nn.BatchNorm2d(8) in train mode (momentum 0.1) sees one batch per
step, of varying N, H and W, for 120 steps. Each step the test uploads the
batch's per-channel mean and unbiased variance (computed in float64 from the
input), count = N*H*W, and the module's running_mean/running_var after the
batch as the worker EMA. Then:

  * series ema_mean/ema_var give back exactly what was sent (the float32
    running statistics as float64), for f32 base64, f64 base64 and plain JSON
    numbers;
  * series sim_mean/sim_var with momentum 0.1 (the daemon's replay of the
    pooled batch statistics) equal the module's running_mean/running_var at
    every step to 1e-5 relative (float32 rounding in PyTorch is the only
    difference).

PyTorch is Debian's, installed for /usr/bin/python3 only: when `import torch`
fails here and that interpreter has it, the script re-executes itself with it;
with no PyTorch anywhere the tests are skipped.

Run:
  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \
  PYTHONPATH=tests/integration python3 tests/integration/test_torch_ema.py -v
"""

import os
import subprocess
import sys
import unittest

SYSTEM_PYTHON = "/usr/bin/python3"
_REEXEC_MARK = "BNSTAT_TORCH_REEXEC"

try:
    import torch
    _TORCH_ERROR = None
except ImportError as e:          # not for this interpreter
    torch = None
    _TORCH_ERROR = "%s: %s" % (sys.executable, e)


def _system_python_has_torch():
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    try:
        return subprocess.run([SYSTEM_PYTHON, "-c", "import torch"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


if (torch is None and __name__ == "__main__" and not os.environ.get(_REEXEC_MARK)
        and os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)):
    if _system_python_has_torch():
        sys.stdout.flush()
        sys.stderr.flush()
        os.environ[_REEXEC_MARK] = "1"
        os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(sys.argv[0])] + sys.argv[1:])
    _TORCH_ERROR += "; %s has no torch either" % SYSTEM_PYTHON

from bnstat_testlib import (Daemon, Session, TestCaseMixin, b64_f32, b64_f64,  # noqa: E402
                            f32_round)

C = 8
MOMENTUM = 0.1
STEPS = 120
REL_SIM = 1e-5


def encode(values, enc):
    if enc == "f32":
        return b64_f32(values)
    if enc == "f64":
        return b64_f64(values)
    return list(values)


class TestTorchBatchNorm(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if torch is None:
            raise unittest.SkipTest("PyTorch is not available (%s)" % _TORCH_ERROR)
        torch.set_num_threads(1)
        cls.d = Daemon("--synchronous", "normal")
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        cls.runs = {}
        for run, ema_enc, stat_enc, seed in (("torch-f32", "f32", "numbers", 1),
                                             ("torch-f64", "numbers", "f64", 2),
                                             ("torch-b64f64", "f64", "numbers", 3)):
            cls.runs[run] = cls.train(run, ema_enc, stat_enc, seed)

    @classmethod
    def train(cls, run, ema_enc, stat_enc, seed):
        """Train-mode forward passes; upload each batch; return what PyTorch had."""
        gen = torch.Generator().manual_seed(seed)
        bn = torch.nn.BatchNorm2d(C, momentum=MOMENTUM)
        bn.train()
        shift = torch.arange(1, C + 1, dtype=torch.float32).view(1, C, 1, 1)
        scale = torch.linspace(0.2, 3.0, C).view(1, C, 1, 1)
        record = {"steps": [], "running_mean": [], "running_var": [], "count": []}
        session = Session(cls.d.port)
        try:
            for i in range(STEPS):
                step = 3 * i + (i % 2)          # steps with gaps: skipped by the replay
                n = int(torch.randint(1, 17, (1,), generator=gen))
                h = int(torch.randint(3, 9, (1,), generator=gen))
                w = int(torch.randint(2, 8, (1,), generator=gen))
                if n * h * w < 2:
                    n = 2
                drift = 1.0 + 0.01 * i
                x = torch.randn(n, C, h, w, generator=gen) * scale + shift * drift
                with torch.no_grad():
                    bn(x)
                x64 = x.double()
                mean = x64.mean(dim=(0, 2, 3)).tolist()
                var = x64.var(dim=(0, 2, 3), unbiased=True).tolist()
                rm = bn.running_mean.detach().double().tolist()   # float32 values, exactly
                rv = bn.running_var.detach().double().tolist()
                assert bn.running_mean.dtype == torch.float32
                assert all(f32_round(v) == v for v in rm + rv)
                doc = {"worker": "rank0", "step": step, "seq": 0, "layers": {"bn": {
                    "count": n * h * w, "mean": encode(mean, stat_enc),
                    "var": encode(var, stat_enc), "ema_mean": encode(rm, ema_enc),
                    "ema_var": encode(rv, ema_enc)}}}
                st, body, _ = session.post_batch(run, doc)
                if st != 200:
                    raise AssertionError("upload %s step %d: %r %r" % (run, step, st, body))
                record["steps"].append(step)
                record["running_mean"].append(rm)
                record["running_var"].append(rv)
                record["count"].append(n * h * w)
        finally:
            session.close()
        return record

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    def series(self, run, channel, **params):
        st, body, _ = self.d.get("/v1/runs/%s/series" % run,
                                 dict(params, layer="bn", channel=channel))
        self.assertEqual(st, 200, "series %s channel %d: %r" % (run, channel, body))
        return body

    def test_premise_batch_sizes_vary(self):
        for rec in self.runs.values():
            self.assertGreater(len(set(rec["count"])), 20)
            self.assertGreaterEqual(len(rec["steps"]), 100)

    def test_worker_ema_comes_back_exactly(self):
        for run, rec in self.runs.items():
            for ch in range(C):
                body = self.series(run, ch, momentum="0.1")
                self.assertEqual(body["step"], rec["steps"], run)
                want_m = [r[ch] for r in rec["running_mean"]]
                want_v = [r[ch] for r in rec["running_var"]]
                self.assertEqual(body["ema_mean"], want_m, "%s channel %d ema_mean" % (run, ch))
                self.assertEqual(body["ema_var"], want_v, "%s channel %d ema_var" % (run, ch))
                # and the named worker gives the same
                body = self.series(run, ch, worker="rank0", **{"from": rec["steps"][50]})
                self.assertEqual(body["ema_mean"], want_m[50:], run)

    def test_simulated_ema_equals_pytorch_running_stats(self):
        for run, rec in self.runs.items():
            for ch in range(C):
                body = self.series(run, ch, momentum="0.1")
                self.assertEqual(body["step"], rec["steps"], run)
                for i, step in enumerate(rec["steps"]):
                    what = "%s channel %d step %d" % (run, ch, step)
                    self.assertRelClose(body["sim_mean"][i], rec["running_mean"][i][ch], REL_SIM,
                                        what + " sim_mean vs running_mean")
                    self.assertRelClose(body["sim_var"][i], rec["running_var"][i][ch], REL_SIM,
                                        what + " sim_var vs running_var")

    def test_simulated_ema_through_compare_and_cache(self):
        # compare (whole-layer replays take checkpoints) and series afterwards,
        # from steps past a checkpoint: still PyTorch's numbers
        run, rec = "torch-f32", self.runs["torch-f32"]
        for step in (rec["steps"][-1], rec["steps"][90], rec["steps"][70]):
            for ema in ("sim", "worker"):
                st, body, _ = self.d.get("/v1/runs/%s/compare" % run,
                                         {"ema": ema, "step": step, "momentum": "0.1"})
                self.assertEqual(st, 200, body)
            # the worker EMA and the simulated one are the same EMA here:
            # their metrics against the precise statistics agree
            sim = self.d.get("/v1/runs/%s/compare" % run, {"ema": "sim", "step": step})[1]
            wrk = self.d.get("/v1/runs/%s/compare" % run, {"ema": "worker", "step": step})[1]
            for k in ("mean_err", "var_err", "mean_err_max", "var_err_max"):
                self.assertAlmostEqual(sim["overall"][k], wrk["overall"][k],
                                       delta=1e-3 * abs(wrk["overall"][k]) + 1e-6,
                                       msg="%s at step %d" % (k, step))
        for frm_i in (10, 60, 63, 64, 65, 66, 100):
            body = self.series(run, 3, momentum="0.1", **{"from": rec["steps"][frm_i]})
            self.assertEqual(body["step"], rec["steps"][frm_i:])
            for j, i in enumerate(range(frm_i, STEPS)):
                self.assertRelClose(body["sim_mean"][j], rec["running_mean"][i][3], REL_SIM,
                                    "sim_mean at step %d" % rec["steps"][i])
                self.assertRelClose(body["sim_var"][j], rec["running_var"][i][3], REL_SIM,
                                    "sim_var at step %d" % rec["steps"][i])

    def test_other_momentum_is_not_pytorch(self):
        # the check above is not vacuous: momentum 0.01 is far from what the module had
        rec = self.runs["torch-f64"]
        body = self.series("torch-f64", 0, momentum="0.01")
        last = rec["running_mean"][-1][0]
        self.assertGreater(abs(body["sim_mean"][-1] - last) / abs(last), 0.05)


if __name__ == "__main__":
    unittest.main()
