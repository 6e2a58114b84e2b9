"""The bnstatd of the client tests: tests/integration/bnstat_testlib.py's
Daemon (a temp database, port 0, cleanup at exit), restartable on the same
port so that a client keeps its URL across a restart.

The daemon is started the same way for the integration tests and the client
tests; this module only finds bnstat_testlib (on PYTHONPATH, as `make check`
sets it, or in this source tree) and sets the client tests' defaults.
The binary comes from the environment variable BNSTATD (required).
"""

import os
import sys

_TESTLIB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            os.pardir, os.pardir, os.pardir, "tests", "integration")
try:
    import bnstat_testlib
except ImportError:
    sys.path.append(os.path.normpath(_TESTLIB_DIR))
    import bnstat_testlib

daemon_has_option = bnstat_testlib.daemon_has_option


def bnstatd_path():
    """The bnstatd under test (env BNSTATD; bnstat_testlib exits 1 when it
    is unset or not executable)."""
    return bnstat_testlib.BNSTATD


class Daemon(bnstat_testlib.Daemon):
    """d = Daemon().start(); d.url; d.kill(); d.start() (same db and port); d.close()."""

    START_TIMEOUT = 30.0

    def __init__(self, *args, **kw):
        kw.setdefault("keep_port", True)
        super().__init__(*args, **kw)
