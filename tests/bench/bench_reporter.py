#!/usr/bin/env python3
"""The training-time cost of BNStatsReporter: step time with it / without.

One process trains a model (SGD, random weights, synthetic data) in blocks of
--block-steps steps; each block runs in one of three conditions: no reporter,
a reporter at every=1, a reporter at every=10 (both stay alive for the whole
run, sending to a bnstatd started on this machine; a condition's hooks are
attached only during its blocks). The blocks come in --pairs rounds of one
block per condition, the order rotating from round to round, so that the
machine's noise (other processes on shared cores) falls on all conditions
alike. A block is timed from its first step to the end of its last
step(), as the training loop sees it; then (untimed) its reporter's queue
is emptied so that no upload of one block runs in the next. So the
background thread's work (conversion, encoding, HTTP) and the daemon's are
counted where they overlap the block's own steps (they compete for the same
cores), all but the last upload's.

Per round, ratio = block time with the reporter / the adjacent round's block
without; reported: the geometric mean of the ratios with a 95 % confidence
interval (Student's t on the logarithms), and the median step time.

Models: "small", the SmallCNN of clients/python/examples/train_and_precise_bn.py
(batch 32 of 3x16x16, four BatchNorm layers), and "resnet18", torchvision's
ResNet-18 (random weights, 10 classes, batch 16 of 3x64x64, 20 BatchNorm
layers; Debian's python3-torchvision).

Usage:
  /usr/bin/python3 tests/bench/bench_reporter.py --bnstatd src/bnstatd
      [--models small,resnet18] [--pairs 50] [--block-steps N] [--threads 1]
"""

import argparse
import math
import os
import platform
import shutil
import signal
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "clients", "python"))
sys.path.insert(0, os.path.join(ROOT, "clients", "python", "examples"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bnstat import BNStatsReporter, Client  # noqa: E402
from train_and_precise_bn import SmallCNN, Synthetic, spawn_bnstatd  # noqa: E402


def t_quantile(p, dof):
    """Student's t quantile (Cornish-Fisher expansion around the normal one;
    within 1e-3 of the exact value for dof >= 10)."""
    z = statistics.NormalDist().inv_cdf(p)
    return (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2))


def make(model_name):
    """(model, an endless iterator of (x, y) batches)."""
    torch.manual_seed(0)
    if model_name == "small":
        return SmallCNN(), iter(Synthetic(0, batch=32))
    if model_name == "resnet18":
        import torchvision

        g = torch.Generator().manual_seed(0)
        data = [(torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, 10, (16,), generator=g))
                for _ in range(4)]

        def cycle():
            while True:
                yield from data

        return torchvision.models.resnet18(num_classes=10), cycle()
    raise SystemExit("unknown model %r" % model_name)


BLOCK_STEPS = {"small": 100, "resnet18": 10}


def bench(model_name, url, a):
    model, data = make(model_name)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    client = Client(url)
    run = "bench-%s-%d" % (model_name, os.getpid())
    reps = {"every=1": BNStatsReporter(model, client, run, "every1", every=1),
            "every=10": BNStatsReporter(model, client, run, "every10", every=10)}
    for rep in reps.values():
        rep.remove_hooks()

    def block(cond):
        rep = reps.get(cond)
        if rep is not None:
            rep.add_hooks()
        steps = []
        t0 = time.perf_counter()
        for _ in range(a.block_steps or BLOCK_STEPS[model_name]):
            s = time.perf_counter()
            x, y = next(data)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if rep is not None:
                rep.step()
            steps.append(time.perf_counter() - s)
        t = time.perf_counter() - t0
        if rep is not None:
            rep.flush()
            rep.remove_hooks()
        return t, steps

    conds = ["off", "every=1", "every=10"]
    for c in conds:  # warm-up: allocator, caches, the daemon's first run
        block(c)
    times = {c: [] for c in conds}
    step_times = {c: [] for c in conds}
    for i in range(a.pairs):
        order = conds[i % 3:] + conds[:i % 3]
        for c in order:
            t, st = block(c)
            times[c].append(t)
            step_times[c] += st
    counters = {c: r.close() for c, r in reps.items()}
    rows = []
    for c in conds[1:]:
        logs = [math.log(on / off) for on, off in zip(times[c], times["off"])]
        m = statistics.fmean(logs)
        half = t_quantile(0.975, len(logs) - 1) * statistics.stdev(logs) / math.sqrt(len(logs))
        rows.append((c, math.exp(m), math.exp(m - half), math.exp(m + half),
                     statistics.median(step_times[c]) * 1e3, counters[c]))
    return statistics.median(step_times["off"]) * 1e3, rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bnstatd", required=True, help="the bnstatd binary to start")
    p.add_argument("--models", default="small,resnet18")
    p.add_argument("--pairs", type=int, default=50, help="rounds of one block per condition")
    p.add_argument("--block-steps", type=int, default=None,
                   help="steps per block, a multiple of 10 (default: small 100, resnet18 10)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch.set_num_threads (1: a core left for the daemon, as in the tests)")
    a = p.parse_args()
    if a.pairs < 2 or (a.block_steps is not None and a.block_steps < 1):
        raise SystemExit("--pairs must be >= 2 and --block-steps >= 1")
    torch.set_num_threads(a.threads)
    proc, url, tmpdir = spawn_bnstatd(a.bnstatd)
    try:
        print("# BNStatsReporter overhead\n")
        print("`%s`\n" % " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:]))
        print("%s, %d CPUs, Python %s, torch %s, torch threads %d, %d rounds of blocks "
              "of %s steps, bnstatd on this machine\n" % (
                  platform.platform(), os.cpu_count(), platform.python_version(),
                  torch.__version__, a.threads, a.pairs,
                  a.block_steps or ", ".join("%d (%s)" % (v, k) for k, v in BLOCK_STEPS.items())))
        print("| model | reporter | step ms (median) | ratio | 95 % CI | uploads sent |")
        print("|---|---|--:|--:|--:|--:|")
        for name in a.models.split(","):
            base, rows = bench(name, url, a)
            print("| %s | off | %.2f | 1 | | |" % (name, base))
            for c, ratio, lo, hi, ms, cnt in rows:
                print("| %s | %s | %.2f | %.4f | %.4f – %.4f | %d |"
                      % (name, c, ms, ratio, lo, hi, cnt["sent"]))
            sys.stdout.flush()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
