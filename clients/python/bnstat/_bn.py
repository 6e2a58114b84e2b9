"""BatchNorm helpers shared by the reporter and precise_bn (torch imported lazily).

Nothing here imports torch at module level: `import bnstat` must work
without it.
"""

import contextlib
import threading

_state = threading.local()


# The attribute through which a wrapper holds the model it wraps, and so the
# prefix it adds to every name: DistributedDataParallel and DataParallel
# ("module."), torch.compile's OptimizedModule ("_orig_mod.").
_WRAPPERS = {"DistributedDataParallel": "module", "DataParallel": "module",
             "OptimizedModule": "_orig_mod"}


def unwrap(model):
    """(the model inside every DDP/DataParallel/torch.compile wrapper of
    model, the prefix those wrappers add to its names: "", "module.",
    "module._orig_mod.", ...)."""
    prefix = ""
    while True:
        attr = _WRAPPERS.get(type(model).__name__)
        inner = getattr(model, attr, None) if attr else None
        if inner is None:
            return model, prefix
        model, prefix = inner, prefix + attr + "."


def strip_wrappers(name):
    """name without the leading "module." and "_orig_mod." components that
    wrappers add (a snapshot stored by a client that did not strip them)."""
    while True:
        for head in ("module.", "_orig_mod."):
            if name.startswith(head):
                name = name[len(head):]
                break
        else:
            return name


def bn_modules(model):
    """[(name, module)] of every torch.nn.modules.batchnorm._BatchNorm in model
    (BatchNorm1d/2d/3d, SyncBatchNorm, the lazy variants), in module order,
    named as in the model inside its wrappers (unwrap): the same names for
    model, DDP(model) and torch.compile(model)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    inner, _ = unwrap(model)
    return [(name, m) for name, m in inner.named_modules() if isinstance(m, _BatchNorm)]


def batch_stats(x):
    """(count, mean, var) of a BatchNorm input x of shape (N, C, ...):
    count = numel // C elements per channel (as fvcore counts them), mean and
    the unbiased variance per channel, computed in float64 (tensors of shape
    [C] on x's device)."""
    import torch

    if x.dim() < 2:
        raise ValueError("a BatchNorm input needs a batch and a channel dimension, "
                         "not shape %r" % (tuple(x.shape),))
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    dims = [0] + list(range(2, x.dim()))
    with torch.no_grad():
        var, mean = torch.var_mean(x.detach().double(), dim=dims, unbiased=True)
    return count, mean, var


def device_stats(x):
    """(count, mean, biased var) of a BatchNorm input x of shape (N, C, ...)
    for the reporter, on the training thread: computed where x lives with
    the kernel BatchNorm's own forward uses to collect them
    (torch.batch_norm_update_stats, without running buffers), no copy to
    the host, about a quarter of var_mean's cost on a CPU
    (docs/PERFORMANCE.md, "The reporter's cost"). mean and var are [C]
    tensors of x's float type or float64 (float32 at least: half and
    bfloat16 inputs are widened, so the sums are never accumulated in
    less), equal to a float64 computation to float32 rounding on a CPU
    (where the kernel accumulates contiguous (N, C, ...) inputs in float64;
    the others are summed here in float64). The unbiased variance is
    var * count / (count - 1), formed by the caller in float64."""
    import torch

    if x.dim() < 2:
        raise ValueError("a BatchNorm input needs a batch and a channel dimension, "
                         "not shape %r" % (tuple(x.shape),))
    channels = x.shape[1]
    count = x.numel() // channels if channels else 0
    with torch.no_grad():
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        if x.is_cuda or (x.dim() > 2 and x.is_contiguous()):
            mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
            return count, mean, var
        # (N, C) and channels-last inputs: the CPU kernel sums those in
        # float32; two passes in float64 instead (they are small or rare).
        dims = [0] + list(range(2, x.dim()))
        shape = (1, channels) + (1,) * (x.dim() - 2)
        mean = torch.mean(x, dims, dtype=torch.float64)
        centre = mean.to(x.dtype)
        m2 = torch.sum((x - centre.view(shape)).square_(), dims, dtype=torch.float64)
        delta = mean - centre  # sum (x - c)^2 = sum (x - mean)^2 + n (mean - c)^2
        return count, mean, (m2 - delta * delta * count) / max(count, 1)


def merge_stats(parts):
    """(count, mean, unbiased var) of the union of several batches' (count,
    mean, unbiased var), per channel in float64 (Chan et al.'s pairwise
    update): what batch_stats gives for the batches concatenated. Parts with
    count 0 are left out; None when every part is empty."""
    parts = [p for p in parts if p[0] > 0]
    if not parts:
        return None
    n, mean, var = parts[0]
    m2 = var * (n - 1)
    for nb, mb, vb in parts[1:]:
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + vb * (nb - 1) + delta * delta * (n * nb / total)
        n = total
    return n, mean, (m2 / (n - 1) if n > 1 else m2 * float("nan"))


def reporting_paused():
    """True while a precise_bn pass (on this thread) runs: reporters ignore it."""
    return getattr(_state, "paused", 0) > 0


@contextlib.contextmanager
def pause_reporting():
    """Make BNStatsReporter hooks of this thread ignore forwards (precise_bn)."""
    _state.paused = getattr(_state, "paused", 0) + 1
    try:
        yield
    finally:
        _state.paused -= 1
