"""BNStatsReporter: stream every BatchNorm layer's batch statistics during training.

    reporter = BNStatsReporter(model, client, run="exp1", worker="rank0")
    for x, y in loader:
        loss = crit(model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        reporter.step()
    reporter.close()

Per forward, a forward pre-hook on each BatchNorm module in training mode
computes the input's per-channel count, mean and variance on its device
(_bn.device_stats). step() — called once per optimizer step, after
optimizer.step() — packs them with each module's running_mean/running_var
(its EMA after this batch) into one tensor copied to the host without
waiting (_pack) and hands it to a background thread, which waits for the
copy, forms one upload per forward (micro-batch) and sends it: the training
thread never waits for the device nor for the network (docs/PERFORMANCE.md,
"The reporter's cost"). torch is imported only when a reporter is created.
"""

import copy
import logging
import math
import queue
import threading
import time

from . import _bn
from .client import BnstatError, Client

__all__ = ["BNStatsReporter"]

log = logging.getLogger("bnstat")

_STOP = object()

_VALUE_KEYS = ("mean", "var", "ema_mean", "ema_var")  # in the order the server checks them


def _first_nonfinite(values):
    """The index of the first NaN or infinite value of a 1-D tensor or
    sequence (None: all finite, or no values)."""
    if values is None:
        return None
    if hasattr(values, "isfinite") and hasattr(values, "nonzero"):  # a torch tensor
        bad = (~values.detach().isfinite()).reshape(-1).nonzero()
        return int(bad[0]) if bad.numel() else None
    for i, v in enumerate(values):
        if not math.isfinite(float(v)):
            return i
    return None


class BNStatsReporter:
    """Report batch statistics and the EMA of every BatchNorm layer of model.

    model: the torch module, also wrapped in DistributedDataParallel,
    DataParallel or torch.compile; its BatchNorm modules (BatchNorm1d/2d/3d,
    SyncBatchNorm) are hooked, and those in training mode at a forward are
    reported, named as in the unwrapped model ("layer1.0.bn1", never
    "module.layer1.0.bn1"). client: a bnstat Client (or any object with its upload()
    signature). run, worker, domain: as in the upload (worker e.g.
    f"rank{rank}"). every: report every N-th step only (steps whose number is
    a multiple of N; the others cost nothing). start_step: the number of
    optimizer steps already taken (when resuming from a checkpoint).
    queue_size: uploads that may wait for the background thread; when it is
    full, step() blocks up to block_timeout seconds, then drops the upload
    and counts it in .dropped (training is never held up for longer).
    dtype: the upload encoding ("f32", the compact default of Client, or
    "f64"); None: the client's. merge_micro_batches: see below.

    Steps: the batch statistics of a forward are reported at step = the
    number of step() calls before it (plus start_step), i.e. the model version
    that produced them, with seq 0 (and 1, 2, ... when step(n) names the same
    step again).

    Gradient accumulation: several forwards before one step() are the
    micro-batches of that step. Each is reported as its own batch, seq 0, 1,
    2, ..., and the server merges them exactly; every one carries the
    module's EMA at step() (the server keeps the highest seq's). A new
    micro-batch starts when a module runs again since the last one began, so
    a module shared within one forward has its second input counted in the
    next seq: every input is counted once. With merge_micro_batches=True the
    micro-batches of a step are merged here instead (the same count, mean
    and unbiased variance in float64 as one batch holding them all) into one
    upload per step. On the steps `every` skips nothing is computed.

    Health: at start the background thread asks the daemon's /healthz (with
    a 5 s timeout, no retry) and logs a warning when it does not answer;
    training goes on and uploads wait in the queue. A queue half full logs
    one warning (again only after it has emptied), and close() logs a summary
    line: sent, retried (uploads that needed a retry), dropped, refused.

    Non-finite statistics: the server refuses an upload holding a NaN or
    infinite batch statistic or EMA (most often a mixed-precision overflow).
    The reporter then logs one error per layer that has one, the first time
    only, naming the layer, step and what to check, counts the upload in
    .failed and .nonfinite and goes on: training is never interrupted, and
    the uploads resume as soon as the values are finite again (a layer's EMA,
    once NaN, stays so until the module's running statistics are reset).
    """

    def __init__(self, model, client, run, worker, every=1, domain="default", queue_size=64,
                 start_step=0, dtype=None, block_timeout=5.0, merge_micro_batches=False):
        if every < 1:
            raise ValueError("every must be >= 1, not %r" % (every,))
        self.client = client
        self.run = run
        self.worker = worker
        self.every = int(every)
        self.domain = domain
        self.dtype = dtype
        self.block_timeout = block_timeout
        self.merge_micro_batches = bool(merge_micro_batches)
        self._modules = _bn.bn_modules(model)
        if not self._modules:
            raise ValueError("the model has no BatchNorm module to report")
        self._step = int(start_step)
        self._last = (None, -1)  # (step, seq) of the last upload
        self._micro = []  # per forward since the last step(): {name: (count, mean, biased var)}
        self._handles = []
        self._observing = True  # until remove_hooks()
        self._hook_for_step()
        self._queue = queue.Queue(maxsize=max(1, int(queue_size)))
        self._abandon = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self.sent = 0          # uploads the server accepted
        self.duplicates = 0    # of which it had already (a retry after a lost reply)
        self.dropped = 0       # uploads given up: queue full, or close() timed out
        self.failed = 0        # uploads the server refused (4xx) or that could not be encoded
        self.nonfinite = 0     # of which refused for a NaN or infinite value
        self.nonfinite_layers = set()  # layers reported (and logged) with one
        self.retried = 0       # uploads that were sent again after a failed attempt
        self.healthy = None    # the start's health check: True, False, None (not done)
        self.last_error = None
        self._backlog_warned = False
        self._thread = threading.Thread(target=self._worker, name="bnstat-reporter", daemon=True)
        self._thread.start()

    # -- hooks --------------------------------------------------------------

    def _hook_for_step(self):
        """Hook the modules when the coming step is an every-th one, unhook
        them otherwise: on the steps `every` skips the model runs without
        any hook (a module with a hook takes PyTorch's slower call path)."""
        want = self._observing and self._step % self.every == 0
        if want and not self._handles:
            self._handles = [m.register_forward_pre_hook(self._hook(name))
                             for name, m in self._modules]
        elif not want and self._handles:
            for h in self._handles:
                h.remove()
            self._handles = []

    def _hook(self, name):
        def pre_hook(module, inputs):
            if (not module.training or self._step % self.every != 0
                    or _bn.reporting_paused()):
                return None
            if not self._micro or name in self._micro[-1]:
                self._micro.append({})  # the next forward (micro-batch) begins
            self._micro[-1][name] = _bn.device_stats(inputs[0])
            return None

        return pre_hook

    # -- the training side -----------------------------------------------------

    @property
    def step_count(self):
        """The step the next forward's statistics will be reported at."""
        return self._step

    def discard(self):
        """Forget the statistics gathered since the last step() without
        reporting them or advancing the step (e.g. after a forward that failed
        half-way, or a batch that is skipped)."""
        self._micro = []

    def step(self, step=None):
        """Mark an optimizer step: report the batch statistics gathered since
        the previous step() with every module's current EMA, then advance.

        step: the number of this step, when the caller counts steps itself
        (default: the reporter's own count). Returns True when the step's
        uploads (one per micro-batch, or one merged) were queued, False when
        nothing was reported (not an every-th step, no BatchNorm forward in
        training mode, or the queue stayed full).
        """
        if self._closed:
            raise RuntimeError("bnstat: BNStatsReporter.step() after close()")
        if step is not None:
            self._step = int(step)
        s = self._step
        micro, self._micro = self._micro, []
        self._step = s + 1
        self._hook_for_step()
        if s % self.every != 0 or not micro:
            return False
        packed = self._pack(micro)
        parts = [list(range(len(micro)))] if self.merge_micro_batches else \
            [[i] for i in range(len(micro))]
        queued = True
        for part in parts:
            seq = self._last[1] + 1 if self._last[0] == s else 0
            self._last = (s, seq)
            queued = self._enqueue(s, seq, (packed, part)) and queued
        return queued

    def _pack(self, micro):
        """The step's statistics and EMAs as one float64 tensor on its way to
        the host, without waiting for it (docs/PERFORMANCE.md, "The
        reporter's cost"): one torch.cat on the device (a copy, so later
        in-place updates of the running buffers do not change it), and on a
        GPU one non_blocking copy into pinned memory (PyTorch's caching host
        allocator reuses the buffers) with an event the background thread
        waits for. Returns (tensor, event or None, ema layout, micro-batch
        layouts)."""
        import torch

        pieces, offset = [], 0
        emas = []  # (name, channels, dtype, offset)
        for name, m in self._modules:
            if m.running_mean is not None and m.running_var is not None:
                c = m.running_mean.numel()
                emas.append((name, c, m.running_mean.dtype, offset))
                pieces += [m.running_mean.detach().reshape(-1), m.running_var.detach().reshape(-1)]
                offset += 2 * c
        layouts = []  # per micro-batch: {name: (count, channels, offset) or None (unused)}
        for pending in micro:
            layout = {}
            for name, m in self._modules:
                stats = pending.get(name)
                if stats is None:
                    if m.training:
                        layout[name] = None
                    continue
                count, mean, var = stats
                layout[name] = (count, mean.numel(), offset)
                pieces += [mean, var]
                offset += 2 * mean.numel()
            layouts.append(layout)
        device = pieces[0].device if pieces else None
        if any(p.device != device for p in pieces):  # a model split across devices
            pieces = [p.to(device, non_blocking=True) for p in pieces]
        flat = torch.cat(pieces).to(torch.float64) if pieces else \
            torch.zeros(0, dtype=torch.float64)
        event = None
        if device is not None and device.type == "cuda":
            host = torch.empty(flat.shape, dtype=flat.dtype, pin_memory=True)
            host.copy_(flat, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            flat = host
        return flat, event, emas, layouts

    @staticmethod
    def _unpack(packed, part, merge):
        """{layer: {"count", "mean", "var", "ema_mean", "ema_var"}} of the
        micro-batches part of a _pack()ed step (merged in float64 when there
        are several), on the background thread."""
        flat, event, emas, layouts = packed
        if event is not None:
            event.synchronize()  # this thread waits for the copy, never training
        ema = {name: {"ema_mean": flat[o:o + c].to(dt), "ema_var": flat[o + c:o + 2 * c].to(dt)}
               for name, c, dt, o in emas}
        layers = {}
        for name in dict.fromkeys(n for i in part for n in layouts[i]):
            got = [layouts[i].get(name) for i in part]
            stats = [(n, flat[o:o + c], flat[o + c:o + 2 * c] * (n / (n - 1) if n > 1 else
                                                                  float("nan")))
                     for n, c, o in (g for g in got if g is not None)]  # var: unbiased
            if not stats:
                layers[name] = {"count": 0}  # unused in this batch
                continue
            merged = _bn.merge_stats(stats) if len(stats) > 1 else stats[0]
            if merged is None:
                layers[name] = {"count": 0}
                continue
            count, mean, var = merged
            layers[name] = dict({"count": count, "mean": mean, "var": var}, **ema.get(name, {}))
        return layers

    def _enqueue(self, s, seq, packed):
        try:
            self._queue.put((s, seq, packed), timeout=self.block_timeout)
        except queue.Full:
            with self._lock:
                self.dropped += 1
                n = self.dropped
            if n == 1 or n % 100 == 0:
                log.warning("bnstat: upload queue full for %.1fs; dropped the statistics of "
                            "step %d (%d dropped so far)", self.block_timeout or 0.0, s, n)
            return False
        waiting = self._queue.qsize()
        if not self._backlog_warned and waiting >= max(2, self._queue.maxsize // 2):
            self._backlog_warned = True
            log.warning("bnstat: %d of %d uploads are waiting for bnstatd (%s): it is slow "
                        "or unreachable%s; training goes on, and step() drops uploads once "
                        "the queue is full", waiting, self._queue.maxsize,
                        getattr(self.client, "url", "the client"),
                        " (last error: %s)" % self.last_error if self.last_error else "")
        return True

    # -- the background thread ---------------------------------------------------

    def _check_health(self):
        """Ask the daemon's /healthz once, quickly: a wrong URL or a hung
        daemon is said at once instead of at the first upload's timeout."""
        if not hasattr(self.client, "health"):
            return
        probe = self.client
        if isinstance(probe, Client):
            probe = copy.copy(probe)
            probe.timeout = min(probe.timeout or 5.0, 5.0)
            probe.retries = 0
        try:
            doc = probe.health()
        except Exception as e:  # never let the check stop the reporter
            self.healthy = False
            log.warning("bnstat: bnstatd at %s does not answer its health check (%s); "
                        "training goes on, the uploads wait and are retried, and close() "
                        "says how many were sent", getattr(probe, "url", "?"), e)
            return
        self.healthy = not isinstance(doc, dict) or doc.get("status", "ok") == "ok"
        if not self.healthy:
            log.warning("bnstat: bnstatd at %s answers its health check with %r",
                        getattr(probe, "url", "?"), doc)

    def _worker(self):
        self._check_health()
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._abandon.is_set():
                    with self._lock:
                        self.dropped += 1
                    continue
                s, seq, (packed, part) = item
                try:
                    layers = self._unpack(packed, part, self.merge_micro_batches)
                except Exception as e:  # never let a conversion kill the thread
                    with self._lock:
                        self.failed += 1
                        self.last_error = e
                    log.error("bnstat: statistics of step %d seq %d unreadable: %r", s, seq, e)
                    continue
                self._send(s, seq, layers)
            finally:
                self._queue.task_done()
                if self._queue.unfinished_tasks == 0:
                    self._backlog_warned = False  # warn again when it backs up again

    def _send(self, step, seq, layers):
        kwargs = {"domain": self.domain, "var_kind": "unbiased"}
        if self.dtype is not None:
            kwargs["dtype"] = self.dtype
        delay = 0.5
        outage = False
        while True:
            try:
                reply = self.client.upload(self.run, self.worker, step, seq, layers, **kwargs)
            except BnstatError as e:
                if e.status is not None and e.status < 500:
                    with self._lock:
                        self.failed += 1
                        self.last_error = e
                    if e.nonfinite is not None:
                        self._refused_nonfinite(step, seq, layers, e)
                    else:
                        log.warning("bnstat: upload of step %d seq %d refused: %s", step, seq, e)
                    return
                # The server is down or overloaded: keep this batch and retry
                # (the identity makes a repeat harmless) until close() gives up.
                if not outage:
                    log.warning("bnstat: upload of step %d failed (%s); retrying", step, e)
                    outage = True
                    with self._lock:
                        self.retried += 1
                self.last_error = e
                if self._abandon.wait(delay):
                    with self._lock:
                        self.dropped += 1
                    return
                delay = min(delay * 2, 10.0)
            except Exception as e:  # a bug or an unencodable value: do not kill the thread
                with self._lock:
                    self.failed += 1
                    self.last_error = e
                log.error("bnstat: upload of step %d seq %d failed: %r", step, seq, e)
                return
            else:
                with self._lock:
                    self.sent += 1
                    if reply and reply.get("duplicate"):
                        self.duplicates += 1
                if outage:
                    log.warning("bnstat: uploads resumed at step %d", step)
                return

    def _refused_nonfinite(self, step, seq, layers, err):
        """The server refused the upload of step for a NaN or infinity: log
        each layer that holds one the first time only (the server names the
        first such value; the others are found here), loudly, since every
        upload of the run is lost while it lasts."""
        found = {}
        try:
            for name, entry in layers.items():
                for key in _VALUE_KEYS:
                    i = _first_nonfinite(entry.get(key))
                    if i is not None:
                        found[name] = (key, i)
                        break
        except Exception:  # never let the account of a refusal stop the reporter
            found = {}
        nf = err.nonfinite
        # the server's, also when the value was finite here (beyond float32's range, say)
        found.setdefault(nf["layer"], (nf.get("field"), nf.get("channel")))
        with self._lock:
            self.nonfinite += 1
            new = sorted(n for n in found if n not in self.nonfinite_layers)
            self.nonfinite_layers.update(new)
        for name in new:
            field, channel = found[name]
            log.error(
                "bnstat: BatchNorm layer %s has a non-finite %s (channel %s) at step %d "
                "(run %s, worker %s): bnstatd refuses uploads holding NaN or infinity, so "
                "the statistics of these steps are lost. Most likely a mixed-precision (AMP) "
                "overflow: check the autocast region and the GradScaler (inf/NaN gradients "
                "skipped steps, a loss scale that keeps growing) and the inputs of this "
                "layer; a running_mean/running_var that is NaN stays so until reset. "
                "Logged once per layer; reporter.counters['nonfinite'] counts the refused "
                "uploads.", name, field, channel, step, self.run, self.worker)
        if not new:
            log.debug("bnstat: upload of step %d seq %d refused: %s", step, seq, err)

    # -- the end -------------------------------------------------------------------

    @property
    def counters(self):
        """{"sent", "duplicates", "retried", "dropped", "failed", "nonfinite",
        "queued"} ("retried": uploads sent again after a failed attempt;
        "nonfinite": of the failed, those refused for a NaN or infinity)."""
        with self._lock:
            return {"sent": self.sent, "duplicates": self.duplicates, "retried": self.retried,
                    "dropped": self.dropped, "failed": self.failed, "nonfinite": self.nonfinite,
                    "queued": self._queue.unfinished_tasks}

    def flush(self, timeout=None):
        """Wait until every queued upload is done; True unless timeout ran out.
        Wakes as the last one ends (the queue's condition, no polling)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                done.wait(left)
        return True

    def remove_hooks(self):
        """Stop observing the model (close() does it too); add_hooks()
        resumes."""
        self._observing = False
        self._hook_for_step()

    def add_hooks(self):
        """Observe the model again after remove_hooks()."""
        if self._closed:
            raise RuntimeError("bnstat: BNStatsReporter.add_hooks() after close()")
        self._observing = True
        self._hook_for_step()

    def close(self, timeout=60.0):
        """Remove the hooks, send what is queued (waiting up to timeout
        seconds, None: forever), stop the thread; returns counters. Uploads
        still unsent after the timeout are dropped and counted. Logs one
        summary line: a warning when an upload was dropped or refused, else
        at info level."""
        if self._closed:
            return self.counters
        self._closed = True
        self.remove_hooks()
        done = self.flush(timeout)
        if not done:
            log.warning("bnstat: %d uploads not sent within %.0fs of close(); dropping them",
                        self._queue.unfinished_tasks, timeout)
            self._abandon.set()
        self._queue.put(_STOP)
        self._thread.join(None if done else 30.0)
        c = self.counters
        lost = c["dropped"] + c["failed"] + c["queued"]
        (log.warning if lost else log.info)(
            "bnstat: reporter of run %s worker %s closed: %d uploads sent, %d retried, "
            "%d dropped, %d refused%s", self.run, self.worker, c["sent"], c["retried"],
            c["dropped"], c["failed"], ", %d never sent" % c["queued"] if c["queued"] else "")
        return c

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.remove_hooks()
        except Exception:
            pass
