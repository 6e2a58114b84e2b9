"""BatchNorm helpers shared by the reporter and precise_bn (torch imported lazily).

Nothing here imports torch at module level: `import bnstat` must work
without it.
"""

import contextlib
import threading

_state = threading.local()


def bn_modules(model):
    """[(name, module)] of every torch.nn.modules.batchnorm._BatchNorm in model
    (BatchNorm1d/2d/3d, SyncBatchNorm, the lazy variants), in module order."""
    from torch.nn.modules.batchnorm import _BatchNorm

    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]


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
