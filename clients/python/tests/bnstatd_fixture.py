"""A bnstatd for the client tests: a temp database, port 0, restartable on the
same port (so that a client keeps its URL across a restart).

The binary comes from the environment variable BNSTATD (required).
"""

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

HOST = "127.0.0.1"


def bnstatd_path():
    path = os.environ.get("BNSTATD")
    if not path:
        sys.stderr.write(
            "bnstat client tests: set BNSTATD to the bnstatd binary to test against, e.g.\n"
            "  BNSTATD=/work/build/src/bnstatd PYTHONPATH=clients/python "
            "/usr/bin/python3 %s\n" % (sys.argv[0] or "clients/python/tests/test_client.py"))
        sys.exit(1)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        sys.stderr.write("bnstat client tests: BNSTATD=%s is not an executable file\n" % path)
        sys.exit(1)
    return path


_live = set()


@atexit.register
def _cleanup():
    for d in list(_live):
        d.close()


def daemon_has_option(option):
    """Does this bnstatd know a command-line option (e.g. "--token-file")?"""
    try:
        out = subprocess.run([bnstatd_path(), "--help"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, timeout=10).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return False
    return re.search(r"(^|\s)%s(\s|=|$)" % re.escape(option), out, re.M) is not None


class Daemon:
    """d = Daemon().start(); d.url; d.kill(); d.start() (same db and port); d.close()."""

    def __init__(self, *args, scheme="http"):
        self.binary = bnstatd_path()
        self.scheme = scheme
        self.args = [str(a) for a in args]
        self.tmpdir = tempfile.mkdtemp(prefix="bnstat-client-test-")
        self.db = os.path.join(self.tmpdir, "x.db")
        self.proc = None
        self.port = 0
        self.log = []
        self._reader = None
        _live.add(self)

    @property
    def url(self):
        return "%s://%s:%d" % (self.scheme, HOST, self.port)

    def start(self, timeout=30.0):
        """Start on the same database; on the previous port once it has one."""
        deadline = time.monotonic() + timeout
        while True:
            if self._start_once(deadline):
                return self
            if time.monotonic() >= deadline:
                raise RuntimeError("bnstatd did not start:\n" + "\n".join(self.log[-20:]))
            time.sleep(0.1)  # the old port may still be held for a moment

    def _start_once(self, deadline):
        cmd = [self.binary, "--db", self.db, "--listen", "%s:%d" % (HOST, self.port)] + self.args
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        found = []
        ready = threading.Event()

        def read():
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                self.log.append(line)
                if not found and "event=listening" in line:
                    m = re.search(r"(?:^|\s)port=(\d+)(?:\s|$)", line)
                    if m:
                        found.append(int(m.group(1)))
                        ready.set()
            ready.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        ready.wait(max(0.1, deadline - time.monotonic()))
        if not found:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self._reader.join(5)
            proc.stderr.close()
            return False
        self.proc = proc
        self.port = found[0]
        return True

    def kill(self):
        """SIGKILL (no chance to flush anything) and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        self._reap()

    def stop(self):
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(30)
        self._reap()
        return rc

    def _reap(self):
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self.proc is not None:
            self.proc.stderr.close()
        self.proc = None

    def close(self):
        try:
            self.kill()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            _live.discard(self)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
