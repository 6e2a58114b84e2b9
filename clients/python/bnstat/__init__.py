"""bnstat: the Python client of bnstatd (exact, shared BatchNorm statistics).

    from bnstat import Client, BNStatsReporter, BNStatsHooks, precise_bn, load_snapshot

Client and the safetensors helpers need only the standard library; the
reporter and precise_bn import torch when they are used.
"""

from .client import DEFAULT_URL, BnstatError, Client
from .hooks import BNStatsHooks
from .precise import LoadResult, bn_adapt, load_snapshot, precise_bn, state_dict_from_snapshot
from .reporter import BNStatsReporter

__version__ = "0.1.0"

__all__ = ["Client", "BnstatError", "DEFAULT_URL", "BNStatsReporter", "BNStatsHooks",
           "precise_bn", "bn_adapt", "load_snapshot", "state_dict_from_snapshot", "LoadResult",
           "__version__"]
