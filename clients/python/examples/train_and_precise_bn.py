#!/usr/bin/env python3
"""Train a small CNN with the bnstat reporter on, run PreciseBN through the
daemon, and compare the model's EMA statistics with the precise ones.

    PYTHONPATH=clients/python /usr/bin/python3 clients/python/examples/train_and_precise_bn.py \
        --spawn ./src/bnstatd                    # starts (and stops) its own bnstatd
    ... --url http://127.0.0.1:8650 --run ex1    # or uses a running one
    ... --ranks 2                                # two DDP ranks (gloo, CPU), no SyncBN
    ... --adapt-weight 0.5                       # then BN-adapt to a shifted domain

With --ranks N the model trains as N processes of torch DistributedDataParallel
(each rank its own data shard and its own BatchNorm EMA, as without SyncBN),
every rank reports as worker rank{r}, and precise_bn runs on every rank.

The comparison follows docs/API.md of bnstat ("Comparison"), per channel with
eps = 1e-5, averaged over channels (and the maximum over channels):
    mean_err = |mu_ema - mu_p| / sqrt(var_p + eps)
    var_err  = |ln((var_ema + eps) / (var_p + eps))|
    kl       = KL(N(mu_p, var_p + eps) || N(mu_ema, var_ema + eps))
It is computed here, client-side (the server's /compare answers the same
question from what the reporter uploaded, where the server has it).
"""

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bnstat import BNStatsReporter, BnstatError, Client, bn_adapt, precise_bn  # noqa: E402

EPS = 1e-5
CLASSES = 10
SHIFT, SCALE = 1.5, 1.8  # the "shifted" domain of --adapt-weight: brighter, more contrast


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.conv3 = nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32, 32, bias=False)
        self.head_bn = nn.BatchNorm1d(32)
        self.fc2 = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(F.relu(self.head_bn(self.fc1(x))))


class Synthetic:
    """Images of CLASSES fixed random patterns, noise and a per-image
    brightness shift (so that inputs are not centred), endless."""

    def __init__(self, seed, batch=32, shift=0.0, scale=1.0):
        g = torch.Generator().manual_seed(1234)  # the same patterns for every split
        self.patterns = torch.randn(CLASSES, 3, 16, 16, generator=g)
        self.g = torch.Generator().manual_seed(seed)
        self.batch = batch
        self.shift, self.scale = shift, scale  # a covariate shift (another "domain")

    def __iter__(self):
        return self

    def __next__(self):
        y = torch.randint(0, CLASSES, (self.batch,), generator=self.g)
        x = self.patterns[y] + 2.5 * torch.randn(self.batch, 3, 16, 16, generator=self.g)
        x = x + 2.0 + 0.5 * torch.randn(self.batch, 1, 1, 1, generator=self.g)
        return self.scale * x + self.shift, y


def spawn_bnstatd(path):
    """Start bnstatd on a temp database and a free port; returns (proc, url, tmpdir)."""
    tmpdir = tempfile.mkdtemp(prefix="bnstat-example-")
    proc = subprocess.Popen([path, "--db", os.path.join(tmpdir, "example.db"),
                             "--listen", "127.0.0.1:0"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    port = []
    ready = threading.Event()

    def read():
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace")
            m = re.search(r"event=listening .*?\bport=(\d+)", line)
            if m and not port:
                port.append(int(m.group(1)))
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(15)
    if not port:
        proc.kill()
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise SystemExit("could not start %s" % path)
    return proc, "http://127.0.0.1:%d" % port[0], tmpdir


def compare(ema_mean, ema_var, p_mean, p_var):
    """The comparison metrics (docs/API.md, "Comparison") per channel -> (mean, max) of each."""
    me, ve, kl = [], [], []
    for mu_e, v_e, mu_p, v_p in zip(ema_mean, ema_var, p_mean, p_var):
        se, sp = v_e + EPS, v_p + EPS
        me.append(abs(mu_e - mu_p) / math.sqrt(sp))
        ve.append(abs(math.log(se / sp)))
        kl.append(0.5 * (math.log(se / sp) + (sp + (mu_p - mu_e) ** 2) / se - 1.0))
    return {"mean_err": (sum(me) / len(me), max(me)), "var_err": (sum(ve) / len(ve), max(ve)),
            "kl": (sum(kl) / len(kl), max(kl))}


def accuracy(model, seed, batches=10, shift=0.0, scale=1.0):
    model.eval()
    data = Synthetic(seed, batch=256, shift=shift, scale=scale)
    right = total = 0
    with torch.no_grad():
        for _ in range(batches):
            x, y = next(data)
            right += (model(x).argmax(1) == y).sum().item()
            total += len(y)
    return right / total


def train(rank, world, a, url):
    """Train on this rank (DDP when world > 1), report, run PreciseBN; rank 0
    returns (ema, snapshot, accuracies, reporter counters)."""
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)                     # the same initial weights on every rank
    client = Client(url)
    model = SmallCNN()
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.SGD(net.parameters(), lr=a.lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=a.lr, total_steps=a.steps)
    data = Synthetic(seed=1 + 1000 * rank, batch=a.batch)
    t0 = time.time()
    # The two lines of the integration: a reporter, and step() after each optimizer step.
    with BNStatsReporter(model, client, a.run, worker="rank%d" % rank) as reporter:
        net.train()
        for step in range(a.steps):
            x, y = next(data)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            reporter.step()
            if rank == 0 and (step % 100 == 0 or step == a.steps - 1):
                print("step %4d  loss %.4f" % (step, loss.item()))
    if rank == 0:
        print("trained %d steps in %.1fs; reporter: %s"
              % (a.steps, time.time() - t0, reporter.counters))
    acc_ema = accuracy(model, seed=99)
    ema = {n: (m.running_mean.double().tolist(), m.running_var.double().tolist())
           for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    t0 = time.time()
    snap = precise_bn(model, Synthetic(seed=2 + 1000 * rank, batch=a.batch), client, a.run,
                      step=a.steps, num_iters=a.precise_iters, rank=rank, world_size=world,
                      target_se=a.target_se)
    acc_precise = accuracy(model, seed=99)
    if rank == 0:
        got = max(l["batches"] for l in snap["layers"].values())
        print("precise_bn: %d ranks in %.1fs -> snapshot %s (%d batches per layer%s)"
              % (world, time.time() - t0, snap["label"], got,
                 ", stopped at target_se %g" % a.target_se
                 if got < a.precise_iters * world else ""))
    if a.adapt_weight is not None:
        # BN-adapt to a shifted domain: a few of its batches, mixed with the source statistics
        acc_before = accuracy(model, seed=99, shift=SHIFT, scale=SCALE)
        adapted = bn_adapt(model, Synthetic(seed=3 + 1000 * rank, batch=a.batch, shift=SHIFT,
                                            scale=SCALE),
                           client, a.run, step=a.steps, domain="shifted",
                           prior_weight=a.adapt_weight, num_iters=a.adapt_iters, rank=rank,
                           world_size=world)
        acc_after = accuracy(model, seed=99, shift=SHIFT, scale=SCALE)
        if rank == 0:
            print("bn_adapt: snapshot %s (prior weight %g, %d target batches): accuracy on the "
                  "shifted domain %.3f with the source statistics, %.3f adapted"
                  % (adapted["label"], a.adapt_weight, a.adapt_iters * world, acc_before,
                     acc_after))
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return ema, snap, (acc_ema, acc_precise)


def _rank_main(rank, world, a, url, port):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    train(rank, world, a, url)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=os.environ.get("BNSTAT_URL", "http://127.0.0.1:8650"))
    p.add_argument("--spawn", metavar="PATH", help="start this bnstatd on a temp database")
    p.add_argument("--run", default="example-%d" % int(time.time()))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precise-iters", type=int, default=100)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--ranks", type=int, default=1, help="DDP processes (gloo, CPU)")
    p.add_argument("--adapt-weight", type=float,
                   help="then BN-adapt to a shifted domain with this prior weight (e.g. 0.5)")
    p.add_argument("--adapt-iters", type=int, default=20, help="target batches per rank")
    p.add_argument("--target-se", type=float,
                   help="precise_bn stops early once every layer's mean_se reaches this")
    a = p.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(1)  # small tensors: more threads only spin
    proc = tmpdir = None
    if a.spawn:
        proc, a.url, tmpdir = spawn_bnstatd(a.spawn)
        print("started %s at %s" % (a.spawn, a.url))
    try:
        client = Client(a.url)
        client.health()
        if a.ranks > 1:
            import torch.multiprocessing as mp
            # ranks 1.. in their own processes, rank 0 here
            port = free_port()
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_rank_main, args=(r, a.ranks, a, a.url, port))
                     for r in range(1, a.ranks)]
            for pr in procs:
                pr.start()
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(port)
            ema, snap, (acc_ema, acc_precise) = train(0, a.ranks, a, a.url)
            for pr in procs:
                pr.join()
                if pr.exitcode != 0:
                    raise SystemExit("a rank failed (exit %s)" % pr.exitcode)
        else:
            ema, snap, (acc_ema, acc_precise) = train(0, 1, a, a.url)

        fields = ["mean_err", "mean_err_max", "var_err", "var_err_max", "kl", "kl_max"]
        rows = []
        for name, (em, ev) in ema.items():
            layer = snap["layers"][name]
            c = compare(em, ev, layer["mean"], layer["var"])
            rows.append([name, str(len(em))] + ["%.4g" % c[f.replace("_max", "")][f.endswith("_max")]
                                                for f in fields])
        overall = ["overall", ""]
        for i, f in enumerate(fields):
            vals = [float(r[2 + i]) for r in rows]
            overall.append("%.4g" % (max(vals) if f.endswith("_max") else sum(vals) / len(vals)))
        rows.append(overall)
        head = ["layer", "channels"] + fields
        widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
        print("\nrank 0's EMA (running_mean/var after training) against PreciseBN (step %d):"
              % a.steps)
        for r in [head] + rows:
            print("  ".join(r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i])
                            for i in range(len(head))))
        print("\naccuracy on held-out data: EMA statistics %.3f, precise statistics %.3f"
              % (acc_ema, acc_precise))
        try:
            server = client.compare(a.run, step=a.steps - 1, worker="rank0")
            print("server /compare (rank0's EMA at step %d vs the window=auto of %d steps): "
                  "overall %s" % (a.steps - 1, server["window"],
                                  {k: round(v, 4) for k, v in server["overall"].items()}))
        except BnstatError as e:
            print("(server compare not available: %s)" % e.message)
        if proc is None:
            print("\nmore: python3 -m bnstat --url %s stats %s --step %d" % (a.url, a.run, a.steps))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
            proc.stderr.close()
            shutil.rmtree(tmpdir, ignore_errors=True)


if __name__ == "__main__":
    main()
