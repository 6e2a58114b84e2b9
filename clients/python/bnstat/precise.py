"""PreciseBN through bnstatd: the distributed replacement of fvcore's update_bn_stats.

precise_bn() runs a fixed model over num_iters batches on every rank, sends
each BatchNorm input's exact per-batch statistics (float64) to the daemon,
which merges all ranks' batches exactly; rank 0 freezes the result as a
snapshot and every rank loads the same snapshot into running_mean and
running_var. load_snapshot() and state_dict_from_snapshot() load a snapshot
made any other way. torch is imported only inside the functions.
"""

import collections
import logging
import time
import warnings

from . import _bn
from . import safetensors
from .client import BnstatError, Client

__all__ = ["precise_bn", "bn_adapt", "load_snapshot", "state_dict_from_snapshot", "LoadResult"]

log = logging.getLogger("bnstat")

LoadResult = collections.namedtuple("LoadResult", ["loaded", "missing"])
LoadResult.__doc__ = """What load_snapshot() did: loaded, the BatchNorm layers whose
running_mean/running_var were set; missing, the model's BatchNorm layers (with
running statistics) that the snapshot does not hold (left unchanged)."""


def _default_forward(model, batch):
    import torch

    if isinstance(batch, (list, tuple)):
        batch = batch[0]
    elif isinstance(batch, dict):
        raise TypeError("precise_bn: the loader yields dicts; pass forward=lambda model, batch: ...")
    device = next((p.device for p in model.parameters()), None)
    if device is not None and isinstance(batch, torch.Tensor):
        batch = batch.to(device)
    model(batch)


def _sleep_until(deadline, delay):
    time.sleep(max(0.0, min(delay, deadline - time.monotonic())))


def _batches_at(client, run, step, domain):
    """The most batches a layer holds at step (0 when none)."""
    try:
        st = client.stats(run, step=step, window=1, domain=domain)
    except BnstatError as e:
        if e.status != 404:
            raise
        return 0
    return max((layer["batches"] for layer in st["layers"].values()), default=0)


def _wait_for_batches(client, run, step, domain, expected, deadline):
    """Poll /stats?step= until one layer holds `expected` batches."""
    delay = 0.05
    got = 0
    while True:
        got = _batches_at(client, run, step, domain)
        if got >= expected:
            if got > expected:
                warnings.warn("precise_bn: step %d of run %s holds %d batches, more than the %d "
                              "expected (another job uploaded at this step?)"
                              % (step, run, got, expected))
            return got
        if time.monotonic() >= deadline:
            raise TimeoutError("precise_bn: only %d of %d batches (num_iters x world_size) reached "
                               "run %s at step %d in time; did every rank run precise_bn with the "
                               "same step?" % (got, expected, run, step))
        _sleep_until(deadline, delay)
        delay = min(delay * 1.5, 1.0)


def _wait_for_snapshot(client, run, label, deadline):
    delay = 0.05
    while True:
        try:
            return client.snapshot(run, label)
        except BnstatError as e:
            if e.status != 404:
                raise
        if time.monotonic() >= deadline:
            raise TimeoutError("precise_bn: snapshot %s of run %s did not appear in time (rank 0 "
                               "creates it once every rank's batches are in)" % (label, run))
        _sleep_until(deadline, delay)
        delay = min(delay * 1.5, 1.0)


def _precision_reached(layers, target_se):
    """True when every layer's mean_se is at most target_se (docs/API.md,
    "Precision"): a layer with two or more batches and mean_se null has no
    channel with a variance (its mean is exact); one batch is never enough."""
    for layer in layers.values():
        se = layer.get("mean_se")
        if se is None:
            if layer.get("batches", 0) < 2:
                return False
        elif se > target_se:
            return False
    return bool(layers)


def _decide(client, run, step, domain, expected, target_se, deadline):
    """Rank 0 at a checkpoint: once exactly `expected` batches are in (no
    rank goes on before the decision), whether every layer reached target_se."""
    got = _wait_for_batches(client, run, step, domain, expected, deadline)
    if got != expected:
        raise RuntimeError("precise_bn: step %d of run %s holds %d batches at a checkpoint where "
                           "%d were expected; early stopping needs this step to itself"
                           % (step, run, got, expected))
    st = client.stats(run, step=step, window=1, domain=domain, target_se=target_se)
    return _precision_reached(st["layers"], target_se)


def _await_decision(client, run, step, domain, expected, label, deadline):
    """Other ranks at a checkpoint: rank 0 either created the snapshot (stop)
    or sent its next batch (go on): the same answer for every rank."""
    delay = 0.05
    while True:
        try:
            return "stop", client.snapshot(run, label)
        except BnstatError as e:
            if e.status != 404:
                raise
        got = _batches_at(client, run, step, domain)
        if got > expected:
            return "go", None
        if time.monotonic() >= deadline:
            raise TimeoutError("precise_bn: rank 0 did not decide at the checkpoint of %d batches "
                               "of run %s step %d in time" % (expected, run, step))
        _sleep_until(deadline, delay)
        delay = min(delay * 1.5, 1.0)


def precise_bn(model, loader, client, run, step, num_iters=200, rank=0, world_size=1,
               domain="default", label=None, timeout=600.0, forward=None, target_se=None,
               check_every=10, prior=None, prior_weight=None, include_frozen=False):
    """Recompute every BatchNorm layer's population statistics exactly, over
    all ranks, and load them into running_mean / running_var.

    model (also wrapped in DDP, DataParallel or torch.compile: the layers are
    named as in the unwrapped model) is put in training mode, except its
    frozen BatchNorm modules (below), each module's mode restored at the end,
    and run under torch.no_grad() on num_iters batches of loader; a forward
    pre-hook takes each BatchNorm input's count, mean and unbiased variance in
    float64, uploaded exactly (f64) as worker f"rank{rank}", seq = batch
    index, at `step` (the model version; use a step no other upload of this
    run and domain uses, e.g. the number of optimizer steps taken). The
    module buffers are not used and are restored after the pass, so momentum
    does not matter. Rank 0 then waits until num_iters * world_size batches
    are in (at least one layer must run in every batch), creates the snapshot
    `label` (default f"precise-bn-{step}", or f"precise-bn-{domain}-{step}"
    for another domain) with the population estimator over step, window 1;
    the other ranks wait for that snapshot. Every rank loads it: all ranks
    end with identical statistics. timeout: seconds to wait for the others.
    forward(model, batch): how to run a batch (default: model(batch[0]) for
    a tuple or list, model(batch) otherwise, moved to the model's device).

    Each loader must yield at least num_iters batches (as fvcore requires).
    BatchNorm layers without running statistics (track_running_stats=False)
    are left alone.

    Frozen layers: when the model is in training mode, its BatchNorm modules
    in eval mode are frozen (as in detection fine-tuning) and left alone, as
    fvcore's update_bn_stats does: they stay in eval mode during the pass
    (normalising with their running statistics, as in training), are not
    uploaded and keep their buffers; a warning lists them. include_frozen=
    True recomputes them too. A model in eval mode as a whole (model.eval())
    has no frozen layer: all its BatchNorm layers are recomputed.

    Returns the snapshot (the server's JSON); its layers'
    mean_se and batches_for say how precise the estimate is.

    target_se: stop early, after a multiple of check_every batches per rank,
    once every layer's mean_se (the standard error of the precise mean in
    units of sigma, docs/API.md "Precision") is at most target_se; num_iters
    is then the most batches a rank runs. Every rank stops at the same
    iteration: at each checkpoint every rank waits until all ranks' batches
    of that checkpoint are in, rank 0 alone asks the server and either
    creates the snapshot (stop) or sends its next batch (go on), and the
    others read that from the server. A loader may then be shorter than
    num_iters only if the target is reached before it ends.

    prior, prior_weight: freeze BN-adapted statistics instead, domain's
    mixed with prior_weight of the prior domain's at the same step
    (docs/API.md, "Adapting to a target domain"); see bn_adapt().
    """
    import torch

    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError("precise_bn: rank %r is not in [0, world_size=%r)" % (rank, world_size))
    if num_iters < 1:
        raise ValueError("precise_bn: num_iters must be >= 1")
    if target_se is not None and not target_se > 0:
        raise ValueError("precise_bn: target_se must be > 0")
    if check_every < 1:
        raise ValueError("precise_bn: check_every must be >= 1")
    if (prior is None) != (prior_weight is None):
        raise ValueError("precise_bn: prior and prior_weight go together")
    forward = forward or _default_forward
    if label is None:
        label = ("precise-bn-%d" % step if domain in (None, "default")
                 else "precise-bn-%s-%d" % (domain, step))
    bns = [(n, m) for n, m in _bn.bn_modules(model) if m.running_mean is not None]
    if not bns:
        raise ValueError("precise_bn: the model has no BatchNorm module with running statistics")
    frozen = []
    if model.training and not include_frozen:
        frozen = [(n, m) for n, m in bns if not m.training]
        bns = [(n, m) for n, m in bns if m.training]
        if frozen:
            warnings.warn("precise_bn: left %d frozen BatchNorm layers (in eval mode) as they "
                          "are: %s; include_frozen=True recomputes them too"
                          % (len(frozen), ", ".join(n for n, _ in frozen)))
        if not bns:
            raise ValueError("precise_bn: every BatchNorm layer of the model is frozen (in eval "
                             "mode); include_frozen=True recomputes them")
    worker = "rank%d" % rank

    current = {}

    def hook_for(name):
        def pre_hook(module, inputs):
            if name in current:
                raise RuntimeError("precise_bn: BatchNorm module %r ran twice in one forward; "
                                   "its statistics would mix two inputs" % name)
            current[name] = _bn.batch_stats(inputs[0])

        return pre_hook

    modes = [(m, m.training) for m in model.modules()]
    saved = []
    with torch.no_grad():
        for _, m in bns:
            saved.append((m, [(attr, getattr(m, attr).clone()) for attr in
                              ("running_mean", "running_var", "num_batches_tracked")
                              if getattr(m, attr, None) is not None]))
    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in bns]
    t0 = time.monotonic()
    deadline = None
    snap = None
    sent = 0
    try:
        model.train()
        for _, m in frozen:
            m.eval()  # a frozen layer normalises with its running statistics, as in training
        it = iter(loader)
        with torch.no_grad(), _bn.pause_reporting():
            for i in range(num_iters):
                try:
                    batch = next(it)
                except StopIteration:
                    raise ValueError("precise_bn: the loader stopped after %d batches; num_iters "
                                     "is %d" % (i, num_iters)) from None
                current.clear()
                forward(model, batch)
                layers = {}
                for name, _ in bns:
                    if name in current:
                        count, mean, var = current[name]
                        layers[name] = {"count": count, "mean": mean.cpu(), "var": var.cpu()}
                    else:
                        layers[name] = {"count": 0}
                client.upload(run, worker, step, i, layers, domain=domain, var_kind="unbiased",
                              dtype="f64")
                sent = i + 1
                if target_se is None or sent % check_every != 0 or sent == num_iters:
                    continue
                deadline = time.monotonic() + timeout
                expected = sent * world_size
                if rank == 0:
                    if _decide(client, run, step, domain, expected, target_se, deadline):
                        snap = _create(client, run, label, step, domain, target_se, prior,
                                       prior_weight)
                        break
                else:
                    verdict, snap = _await_decision(client, run, step, domain, expected, label,
                                                    deadline)
                    if verdict == "stop":
                        break
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for m, buffers in saved:
                for attr, value in buffers:
                    getattr(m, attr).copy_(value)
        for m, mode in modes:
            m.training = mode
    log.info("bnstat: precise_bn rank %d sent %d batches in %.2fs%s", rank, sent,
             time.monotonic() - t0,
             " (target_se %g reached)" % target_se if snap is not None else "")

    if snap is None:
        deadline = time.monotonic() + timeout
        if rank == 0:
            _wait_for_batches(client, run, step, domain, num_iters * world_size, deadline)
            snap = _create(client, run, label, step, domain, target_se, prior, prior_weight)
        else:
            snap = _wait_for_snapshot(client, run, label, deadline)
    if target_se is not None and not _precision_reached(snap.get("layers", {}), target_se):
        log.warning("bnstat: precise_bn stopped at num_iters=%d before every layer reached "
                    "target_se %g; see the snapshot's mean_se and batches_for", num_iters,
                    target_se)
    _load(model, _tensors_from(snap), only={n for n, _ in bns})
    return snap


def _create(client, run, label, step, domain, target_se, prior, prior_weight):
    return client.snapshot_create(run, label, step=step, window=1, domain=domain,
                                  estimator="population", target_se=target_se, prior=prior,
                                  prior_weight=prior_weight)


def bn_adapt(model, loader, client, run, step, domain, prior_weight, prior="default",
             num_iters=20, **kwargs):
    """BN-adapt (Schneider et al. 2020, covariate shift adaptation): run
    num_iters batches of the target domain through model as precise_bn()
    does, uploaded under `domain` (the target's name) at `step`, and load the
    snapshot that mixes, per channel, prior_weight of the prior (source)
    domain's precise statistics at that same step with the rest of the
    target's: mean = w*mean_prior + (1-w)*mean_target, likewise var
    (docs/API.md, "Adapting to a target domain"). The prior must hold
    batches at `step` (e.g. a precise_bn() of the source domain at that step).
    One call per rank under DDP, as precise_bn(). kwargs go to precise_bn
    (rank, world_size, label, timeout, forward, target_se, ...). Returns the
    snapshot; the label defaults to f"bn-adapt-{domain}-{step}"."""
    if not 0.0 <= prior_weight <= 1.0:
        raise ValueError("bn_adapt: prior_weight must be in [0, 1]")
    if domain == prior:
        raise ValueError("bn_adapt: the target domain is the prior domain (%s)" % domain)
    kwargs.setdefault("label", "bn-adapt-%s-%d" % (domain, step))
    return precise_bn(model, loader, client, run, step, num_iters=num_iters, domain=domain,
                      prior=prior, prior_weight=prior_weight, **kwargs)


def _bn_buffers(model):
    return {n: m for n, m in _bn.bn_modules(model) if m.running_mean is not None}


def _model_name(modules, name):
    """The name of the model's layer that snapshot layer `name` is: itself,
    or without the wrapper prefixes a client stored it with ("module.bn1"
    for "bn1"); None when neither is a layer of the model."""
    if name in modules:
        return name
    bare = _bn.strip_wrappers(name)
    return bare if bare in modules else None


def _tensors_from(source, run=None, label=None, fmt="json"):
    """{layer: (mean list, var list)} from a Client, a snapshot dict or safetensors bytes."""
    if isinstance(source, Client) or (hasattr(source, "snapshot") and not isinstance(source, dict)):
        if run is None or label is None:
            raise ValueError("run and label are needed to fetch a snapshot")
        if fmt == "safetensors":
            source = source.snapshot_safetensors(run, label, dtype="f64")
        elif fmt == "json":
            source = source.snapshot(run, label)
        else:
            raise ValueError("format must be 'json' or 'safetensors', not %r" % (fmt,))
    if isinstance(source, (bytes, bytearray, memoryview)):
        tensors, _ = safetensors.decode(source)
        out = {}
        for key, (_, _, values) in tensors.items():
            for suffix, idx in ((".running_mean", 0), (".running_var", 1)):
                if key.endswith(suffix):
                    out.setdefault(key[:-len(suffix)], [None, None])[idx] = list(values)
        for name, (mean, var) in out.items():
            if mean is None or var is None:
                raise ValueError("the safetensors export lacks %s.running_%s"
                                 % (name, "mean" if mean is None else "var"))
        return {k: tuple(v) for k, v in out.items()}
    if isinstance(source, dict) and isinstance(source.get("layers"), dict):
        return {name: (layer["mean"], layer["var"]) for name, layer in source["layers"].items()}
    raise TypeError("expected a Client, a snapshot (dict) or safetensors bytes, not %s"
                    % type(source).__name__)


def state_dict_from_snapshot(client_or_snapshot, run=None, label=None, model=None, dtype=None,
                             device=None, format="json"):
    """A state dict {f"{layer}.running_mean": tensor, f"{layer}.running_var":
    tensor} that model.load_state_dict(sd, strict=False) takes.

    client_or_snapshot: a Client (then run and label say which snapshot;
    format "json", exact doubles, or "safetensors", the F64 export), a
    snapshot dict as Client.snapshot() returns it, or safetensors bytes from
    Client.snapshot_safetensors(). With model, each tensor takes the dtype
    and device of that module's buffer, the keys are model's own (with the
    "module." of a DDP model), and a layer that is not a BatchNorm module of
    model raises ValueError, as load_snapshot does; otherwise dtype (default
    torch.float32) and device (default CPU), and the keys are the layer names
    without wrapper prefixes. Snapshot layers match with or without the
    prefixes of DDP, DataParallel and torch.compile ("module.", "_orig_mod.").
    """
    import torch

    values = _tensors_from(client_or_snapshot, run, label, format)
    modules = _bn_buffers(model) if model is not None else None
    prefix = _bn.unwrap(model)[1] if model is not None else ""
    sd = {}
    for name, (mean, var) in values.items():
        if modules is not None:
            name, m = _check_layer(modules, name, len(mean), len(var))
            name = prefix + name
            kw = {"dtype": m.running_mean.dtype, "device": m.running_mean.device}
        else:
            name = _bn.strip_wrappers(name)
            kw = {"dtype": dtype or torch.float32, "device": device}
        # Through float64 first: one rounding, from the server's doubles.
        sd[name + ".running_mean"] = torch.tensor(mean, dtype=torch.float64).to(**kw)
        sd[name + ".running_var"] = torch.tensor(var, dtype=torch.float64).to(**kw)
    return sd


def _check_layer(modules, name, n_mean, n_var):
    """(the model's name of snapshot layer name, its module), after checking
    that it is one of modules with n_mean (n_var) channels; else ValueError."""
    own = _model_name(modules, name)
    m = modules.get(own) if own is not None else None
    if m is None:
        names = sorted(modules)
        hint = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise ValueError("snapshot layer %r is not a BatchNorm module (with running statistics) "
                         "of the model; its BatchNorm modules are: %s" % (name, hint or "none"))
    shape = tuple(m.running_mean.shape)
    if shape != (n_mean,) or tuple(m.running_var.shape) != (n_var,):
        raise ValueError("snapshot layer %r has %d channels; the model's %s has running_mean of "
                         "shape %r" % (name, n_mean, type(m).__name__, shape))
    return own, m


def _load(model, values, only=None):
    """Set the buffers of model's layers from values {snapshot name: (mean,
    var)}; only: the model's layers to set (the others are left alone)."""
    import torch

    modules = _bn_buffers(model)
    if only is not None:
        values = {name: v for name, v in values.items()
                  if _model_name(modules, name) in only or _model_name(modules, name) is None}
        modules = {n: m for n, m in modules.items() if n in only}
    checked = [_check_layer(modules, name, len(mean), len(var)) + (mean, var)
               for name, (mean, var) in values.items()]  # all checked before any change
    with torch.no_grad():
        for _, m, mean, var in checked:
            m.running_mean.copy_(torch.tensor(mean, dtype=torch.float64))
            m.running_var.copy_(torch.tensor(var, dtype=torch.float64))
    loaded = sorted(name for name, _, _, _ in checked)
    missing = sorted(set(modules) - set(loaded))
    if missing:
        log.warning("bnstat: the snapshot has no statistics for %d BatchNorm layers (left "
                    "unchanged): %s", len(missing), ", ".join(missing[:8]))
    return LoadResult(loaded, missing)


def load_snapshot(model, client, run, label, format="json"):
    """Set running_mean/running_var of model's BatchNorm modules from the
    snapshot `label` of `run` (exact doubles rounded once to the buffers'
    dtype). model may be wrapped in DDP, DataParallel or torch.compile, and
    the snapshot's layers match with or without those wrappers' prefixes.
    Raises ValueError, before changing anything, when a snapshot layer
    is not a BatchNorm module of model or its channel count differs; the
    model's BatchNorm layers the snapshot lacks are left as they are.
    client may also be a snapshot dict or safetensors bytes (run and label
    are then ignored). Returns LoadResult(loaded, missing)."""
    return _load(model, _tensors_from(client, run, label, format))
