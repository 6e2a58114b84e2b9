"""Shared helpers for bnstat's Python tests (Python 3 standard library only).

The integration tests (tests/integration) and the client tests
(clients/python/tests, through bnstatd_fixture.py) both start their daemons
with the Daemon class below, so that there is one way to run bnstatd in a test.

What is here:
  * BNSTATD / fixtures_dir(): where the daemon binary and the data fixtures are,
    from the environment (BNSTATD, BNSTAT_FIXTURES);
  * Daemon: runs the real bnstatd on 127.0.0.1, port 0, with a database in a
    private temporary directory; start, stop (SIGTERM, exit 0 asserted), kill
    (SIGKILL), restart on the same database (and, with keep_port=True, on the
    same port), cleanup that always happens, and a failure when the daemon's
    stderr holds a sanitizer report;
  * request()/post_batch()/get(): HTTP on http.client, returning
    (status, parsed JSON body, headers); HTTPS when given an ssl context
    (Daemon(..., tls_ca=CERT) does that for its own shortcuts);
  * run_bnstatd(): run the binary once (--help, --test-config, a start that
    must fail) and return its exit status and output;
  * exact references: samples drawn from random.Random(seed), their two-pass
    population mean/variance computed exactly with integers/fractions, batches
    (count, mean, unbiased var) made from them, and the exact merge of
    batches as uploaded (doubles taken at face value).

Nothing in the references is computed the way the daemon computes it: sums
are exact (integer/Fraction arithmetic), rounded to a double once at the end.
"""

import atexit
import base64
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from fractions import Fraction

HOST = "127.0.0.1"


# --------------------------------------------------------------------------
# environment

def _require_env(name, what):
    value = os.environ.get(name)
    if not value:
        sys.stderr.write(
            "bnstat tests: environment variable %s is not set.\n"
            "Set it to %s, e.g.\n"
            "  BNSTATD=$PWD/src/bnstatd BNSTAT_FIXTURES=$PWD/tests/fixtures \\\n"
            "  PYTHONPATH=tests/integration python3 %s -v\n"
            % (name, what, sys.argv[0] or "tests/integration/test_api.py"))
        sys.exit(1)
    return value


BNSTATD = _require_env("BNSTATD", "the bnstatd binary to test")
if not (os.path.isfile(BNSTATD) and os.access(BNSTATD, os.X_OK)):
    sys.stderr.write("bnstat tests: BNSTATD=%s is not an executable file\n"
                     % BNSTATD)
    sys.exit(1)


def fixtures_dir():
    """The fixtures directory (env BNSTAT_FIXTURES); exits 1 when unset or missing."""
    d = _require_env("BNSTAT_FIXTURES", "the tests/fixtures directory")
    if not os.path.isdir(d):
        sys.stderr.write("bnstat tests: BNSTAT_FIXTURES=%s is not a directory\n" % d)
        sys.exit(1)
    return d


# --------------------------------------------------------------------------
# the daemon

class DaemonError(Exception):
    pass


# The first line of a report of AddressSanitizer, LeakSanitizer,
# UndefinedBehaviorSanitizer or ThreadSanitizer (only in sanitized builds,
# see docs/TESTING.md).
SANITIZER_REPORT = re.compile(r"ERROR: (Address|Leak)Sanitizer|WARNING: ThreadSanitizer|"
                              r"ERROR: ThreadSanitizer|: runtime error: ")


_live_daemons = set()


@atexit.register
def _cleanup_all():
    # Last resort: a test that forgot close() (or crashed) leaves nothing behind.
    for d in list(_live_daemons):
        try:
            d.close()
        except Exception:
            pass


class Daemon:
    """One bnstatd on 127.0.0.1:0 with a database in its own temp directory.

    d = Daemon("--max-body", "4096").start(); ... d.stop(); d.start(); ...
    d.close() kills a running process and removes the directory; it is safe
    to call more than once and is also run at interpreter exit.

    Keyword options (all optional):
      env       extra environment variables for the process (dict)
      prefix    argv words before the binary (e.g. ["ip", "netns", "exec", NS])
      host      the address given to --listen (default 127.0.0.1; the HTTP
                shortcuts always connect to 127.0.0.1)
      tls_ca    a PEM CA/certificate file: the shortcuts speak HTTPS and
                verify the server with it (start the daemon with --tls-cert)
      ready_file  look for event=listening in this file instead of stderr
                (for --log-file)
      keep_port a restart listens on the port of the previous start (a
                client keeps its URL across a restart), retrying while the
                old socket is still held
      scheme    of url (default https with tls_ca, else http)
      binary    the daemon to run (default $BNSTATD; the disk-fault tests run
                tests/bnstatd_fault, docs/TESTING.md)
    """

    START_TIMEOUT = 15.0
    STOP_TIMEOUT = 30.0

    def __init__(self, *args, env=None, prefix=None, host=None, tls_ca=None, ready_file=None,
                 keep_port=False, scheme=None, binary=None):
        self.binary = binary or BNSTATD
        self.args = [str(a) for a in args]
        self.env = dict(env or {})
        self.prefix = [str(a) for a in (prefix or [])]
        self.host = host or HOST
        self.tls_ca = tls_ca
        self.ssl_context = ssl.create_default_context(cafile=tls_ca) if tls_ca else None
        self.ready_file = ready_file
        self.keep_port = keep_port
        self.scheme = scheme or ("https" if tls_ca else "http")
        self._last_port = 0
        self._sanitizer_checked = 0      # log lines already scanned for reports
        self.tmpdir = tempfile.mkdtemp(prefix="bnstat-it-")
        self.db = os.path.join(self.tmpdir, "test.db")
        self.proc = None
        self.port = None
        self.starts = 0
        self._log = []
        self._lock = threading.Lock()
        self._reader = None
        _live_daemons.add(self)

    # -- lifecycle --------------------------------------------------------

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self):
        """The base URL of the running daemon, e.g. http://127.0.0.1:41234."""
        return "%s://%s:%d" % (self.scheme, HOST, self.port)

    def start(self, timeout=START_TIMEOUT):
        """Start (or restart, on the same database); wait for event=listening."""
        if self.running:
            raise DaemonError("bnstatd is already running (pid %d)" % self.proc.pid)
        listen_port = self._last_port if self.keep_port else 0
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self._start_once(listen_port, max(0.1, deadline - time.monotonic()))
            except DaemonError:
                # Only a restart on a fixed port is retried: the previous
                # process's socket may be held for a moment after its death.
                if listen_port == 0 or time.monotonic() >= deadline:
                    raise
                time.sleep(0.1)

    def _start_once(self, listen_port, timeout):
        self._reap()
        cmd = self.prefix + [self.binary, "--db", self.db, "--listen",
                             "%s:%d" % (self.host, listen_port)] + self.args
        self.starts += 1
        with self._lock:
            self._log.append("---- start #%d: %s" % (self.starts, " ".join(cmd)))
        env = None
        if self.env:
            env = dict(os.environ)
            env.update(self.env)
        ready_offset = 0
        if self.ready_file is not None and os.path.exists(self.ready_file):
            ready_offset = os.path.getsize(self.ready_file)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=env)
        self.proc = proc
        self.port = None
        found = []
        ready = threading.Event()

        def read_stderr():
            # Keep draining stderr for the whole life of the process, so that
            # the daemon never blocks on a full pipe.
            for raw in proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                with self._lock:
                    self._log.append(line)
                if not found and "event=listening" in line:
                    m = re.search(r"(?:^|\s)port=(\d+)(?:\s|$)", line)
                    if m:
                        found.append(int(m.group(1)))
                        ready.set()
            ready.set()  # EOF: the process is gone

        self._reader = threading.Thread(target=read_stderr, daemon=True,
                                        name="bnstatd-stderr-%d" % proc.pid)
        self._reader.start()
        if self.ready_file is None:
            ready.wait(timeout)
        else:
            self._wait_ready_file(proc, ready_offset, timeout, found)
        if not found:
            rc = proc.poll()
            self._kill_quietly()
            raise DaemonError("bnstatd did not report event=listening with a port within "
                              "%.0fs (exit status %r)\n%s" % (timeout, rc, self.log_tail()))
        self.port = found[0]
        if self.port <= 0:
            self._kill_quietly()
            raise DaemonError("bnstatd reported port %d" % self.port)
        self._last_port = self.port
        return self

    def _wait_ready_file(self, proc, offset, timeout, found):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with open(self.ready_file, "rb") as f:
                    f.seek(offset)
                    text = f.read().decode("utf-8", "replace")
            except FileNotFoundError:
                text = ""
            for line in text.splitlines():
                m = re.search(r"event=listening\b.*?(?:^|\s)port=(\d+)(?:\s|$)", line)
                if m:
                    found.append(int(m.group(1)))
                    return
            time.sleep(0.02)

    def send_signal(self, sig):
        """Send sig to the running process."""
        if not self.running:
            raise DaemonError("bnstatd is not running")
        self.proc.send_signal(sig)

    def wait_drift(self, run, through, domain="default", timeout=20.0):
        """Wait until the writer has kept the drift metrics of every entry of
        the run's domain up to step `through` (`drift_through` of GET
        /v1/runs/{run}, docs/API.md "Runs"); AssertionError after timeout
        seconds."""
        deadline = time.monotonic() + timeout
        while True:
            st, doc, _ = self.get("/v1/runs/" + run)
            doms = {d["name"]: d for d in doc.get("domains", [])} if st == 200 else {}
            if doms.get(domain, {}).get("drift_through") == through:
                return
            if time.monotonic() >= deadline:
                raise AssertionError("run %s: drift metrics not kept through %d within %.0fs: %r"
                                     % (run, through, timeout, doc))
            time.sleep(0.05)

    def wait_bucketed(self, run, through, domain="default", timeout=20.0):
        """Wait until the run's domain is bucketed through step `through`
        (GET /v1/runs/{run}, docs/API.md "History"); AssertionError after
        timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            st, doc, _ = self.get("/v1/runs/" + run)
            doms = {d["name"]: d for d in doc.get("domains", [])} if st == 200 else {}
            if doms.get(domain, {}).get("bucketed_through") == through:
                return
            if time.monotonic() >= deadline:
                raise AssertionError("run %s not bucketed through %d within %.0fs: %r"
                                     % (run, through, timeout, doc))
            time.sleep(0.05)

    def wait_log(self, pattern, timeout=10.0, start=0):
        """Wait until a stderr line at index >= start matches the regex pattern;
        return (index, line), or raise AssertionError after timeout seconds."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log_lines()
            for i in range(start, len(lines)):
                if rx.search(lines[i]):
                    return i, lines[i]
            if time.monotonic() >= deadline:
                raise AssertionError("no log line matching %r within %.0fs\n%s"
                                     % (pattern, timeout, self.log_tail()))
            time.sleep(0.02)

    def wait_bucketed(self, run, through, timeout=20.0):
        """Wait until the first domain of run has bucketed every step <= through
        (GET /v1/runs/{run}), or raise AssertionError after timeout seconds."""
        deadline = time.monotonic() + timeout
        while True:
            st, body, _ = self.get("/v1/runs/%s" % run)
            if st == 200 and body["domains"][0].get("bucketed_through") == through:
                return
            if time.monotonic() >= deadline:
                raise AssertionError("%s not bucketed through %d within %.0fs: %r"
                                     % (run, through, timeout, body))
            time.sleep(0.05)

    def restart(self, timeout=START_TIMEOUT):
        """Start again on the same database (the previous process must be gone)."""
        return self.start(timeout)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM and wait; raise AssertionError unless the exit status is 0."""
        if self.proc is None:
            raise DaemonError("bnstatd was never started")
        rc = self.terminate(timeout)
        if rc != 0:
            raise AssertionError("bnstatd exited with status %r after SIGTERM (expected 0)\n%s"
                                 % (rc, self.log_tail()))
        return rc

    def terminate(self, timeout=STOP_TIMEOUT):
        """Send SIGTERM and wait for the exit; returns the exit status.

        A daemon still running after `timeout` seconds is killed and
        AssertionError raised: a graceful stop must end.
        """
        if self.running:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._kill_quietly()
            raise AssertionError("bnstatd did not exit within %.0fs of SIGTERM\n%s"
                                 % (timeout, self.log_tail()))
        self._reap()
        self.assert_no_sanitizer_report()
        return rc

    def kill(self):
        """SIGKILL and wait; returns the exit status (-9)."""
        if self.proc is None:
            raise DaemonError("bnstatd was never started")
        if self.running:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(10)
        self._reap()
        self.assert_no_sanitizer_report()
        return rc

    def close(self):
        """Kill a running process, stop the log reader, remove the temp dir;
        then raise AssertionError if the daemon's stderr holds a sanitizer
        report (so that the test that owns the daemon fails)."""
        try:
            self._kill_quietly()
        finally:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            _live_daemons.discard(self)
        self.assert_no_sanitizer_report()

    def assert_no_sanitizer_report(self):
        """Raise AssertionError if a sanitizer (ASan, LSan, UBSan, TSan) wrote
        a report on the daemon's stderr. Reports are checked once: a second
        call after a failure does not raise again."""
        lines = self.log_lines()
        start = self._sanitizer_checked
        self._sanitizer_checked = len(lines)
        for i in range(start, len(lines)):
            if SANITIZER_REPORT.search(lines[i]):
                raise AssertionError("bnstatd wrote a sanitizer report:\n%s"
                                     % "\n".join(lines[i:i + 60]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _kill_quietly(self):
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    def _reap(self):
        if self._reader is not None:
            self._reader.join(5)
            self._reader = None
        if self.proc is not None and self.proc.stderr is not None and self.proc.poll() is not None:
            try:
                self.proc.stderr.close()
            except OSError:
                pass

    # -- logs ------------------------------------------------------------

    def log_lines(self):
        with self._lock:
            return list(self._log)

    def log_tail(self, n=40):
        lines = self.log_lines()[-n:]
        return "---- bnstatd stderr (last %d lines) ----\n%s" % (len(lines), "\n".join(lines))

    # -- HTTP shortcuts ---------------------------------------------------

    def request(self, method, path, body=None, headers=None, timeout=30):
        return request(self.port, method, path, body, headers, timeout,
                       ssl_context=self.ssl_context)

    def request_raw(self, method, path, body=None, headers=None, timeout=30):
        return request_raw(self.port, method, path, body, headers, timeout,
                           ssl_context=self.ssl_context)

    def get(self, path, params=None, timeout=30, headers=None):
        return get(self.port, path, params, timeout, headers=headers,
                   ssl_context=self.ssl_context)

    def get_raw(self, path, params=None, timeout=30, headers=None):
        return request_raw(self.port, "GET", with_query(path, params), headers=headers,
                           timeout=timeout, ssl_context=self.ssl_context)

    def post_batch(self, run, doc, headers=None, timeout=30):
        return post_batch(self.port, run, doc, headers, timeout, ssl_context=self.ssl_context)

    def stats(self, run, timeout=30, **params):
        return get(self.port, "/v1/runs/%s/stats" % run, params, timeout,
                   ssl_context=self.ssl_context)


def instrumented(path):
    """A sanitizer build: its shadow memory and quarantine make RSS no measure of ours."""
    with open(path, "rb") as f:
        data = f.read()
    return b"__asan_init" in data or b"__tsan_init" in data


def daemon_has_option(option):
    """Does this bnstatd know a command-line option (e.g. "--token-file")?"""
    try:
        p = run_bnstatd("--help", timeout=10)
    except AssertionError:
        return False
    return re.search(r"(^|\s)%s(\s|=|$)" % re.escape(option), p.stdout + p.stderr,
                     re.M) is not None


def run_bnstatd(*args, timeout=15, env=None):
    """Run bnstatd once with args (for --help, --version, --test-config or a
    start that must fail) and wait for it: a subprocess.CompletedProcess with
    text stdout/stderr. A process still running after timeout seconds is
    killed and AssertionError raised."""
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    try:
        return subprocess.run([BNSTATD] + [str(a) for a in args], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                              timeout=timeout, universal_newlines=True, errors="replace")
    except subprocess.TimeoutExpired as e:
        raise AssertionError("bnstatd %s still running after %.0fs\nstdout: %s\nstderr: %s"
                             % (" ".join(map(str, args)), timeout, e.stdout, e.stderr))


# --------------------------------------------------------------------------
# HTTP

def _reject_constant(name):
    raise ValueError("non-standard JSON constant %s in a reply" % name)


def parse_json_bytes(raw):
    """Strict JSON parse of a reply body (NaN/Infinity are not JSON)."""
    return json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)


def with_query(path, params):
    """path + '?' + urlencoded params; list values repeat the key (layer=a&layer=b)."""
    if not params:
        return path
    items = []
    for k, v in params.items():
        if isinstance(v, (list, tuple)):
            items.extend((k, str(x)) for x in v)
        else:
            items.append((k, str(v)))
    return path + "?" + urllib.parse.urlencode(items)


def connection(port, timeout=30, ssl_context=None):
    """An http.client connection to 127.0.0.1:port (HTTPS with ssl_context)."""
    if ssl_context is not None:
        return http.client.HTTPSConnection(HOST, port, timeout=timeout, context=ssl_context)
    return http.client.HTTPConnection(HOST, port, timeout=timeout)


def request_raw(port, method, path, body=None, headers=None, timeout=30, ssl_context=None):
    """One request on a fresh connection: (status, raw body bytes, headers)."""
    conn = connection(port, timeout, ssl_context)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, raw, resp.headers
    finally:
        conn.close()


def request(port, method, path, body=None, headers=None, timeout=30, ssl_context=None):
    """One request: (status, parsed JSON body or None when empty, headers).

    A non-empty body that is not strict JSON raises AssertionError: every
    reply of the API is JSON.
    """
    status, raw, hdrs = request_raw(port, method, path, body, headers, timeout, ssl_context)
    return status, _parse_reply(status, raw, method, path), hdrs


def _parse_reply(status, raw, method, path):
    if not raw:
        return None
    try:
        return parse_json_bytes(raw)
    except ValueError as e:
        raise AssertionError("%s %s -> %d with a body that is not JSON (%s): %r"
                             % (method, path, status, e, raw[:300]))


def get(port, path, params=None, timeout=30, headers=None, ssl_context=None):
    return request(port, "GET", with_query(path, params), headers=headers, timeout=timeout,
                   ssl_context=ssl_context)


def encode_doc(doc):
    if isinstance(doc, (bytes, bytearray)):
        return bytes(doc)
    if isinstance(doc, str):
        return doc.encode("utf-8")
    # allow_nan=False: a test never sends NaN by accident as a bare literal.
    return json.dumps(doc, allow_nan=False).encode("utf-8")


def post_batch(port, run, doc, headers=None, timeout=30, ssl_context=None):
    """POST an upload (dict, str or bytes) as JSON: (status, body, headers)."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return request(port, "POST", "/v1/runs/%s/batches" % run, encode_doc(doc), h, timeout,
                   ssl_context=ssl_context)


class Session:
    """A keep-alive connection for many requests (one per thread)."""

    def __init__(self, port, timeout=30):
        self.conn = http.client.HTTPConnection(HOST, port, timeout=timeout)

    def post_batch(self, run, doc):
        self.conn.request("POST", "/v1/runs/%s/batches" % run, body=encode_doc(doc),
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        if resp.will_close:
            self.conn.close()
        return resp.status, _parse_reply(resp.status, raw, "POST", run), resp.headers

    def close(self):
        self.conn.close()


def raw_exchange(port, data, timeout=10, shutdown_write=False):
    """Send raw bytes on a fresh socket and read until the peer closes or the
    timeout passes; returns (status or None, the bytes received).

    For requests http.client cannot make (a lying Content-Length)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    got = b""
    try:
        try:
            s.sendall(data)
            if shutdown_write:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may answer and close before reading everything
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except OSError:
                break
            if not chunk:
                break
            got += chunk
            head, sep, rest = got.partition(b"\r\n\r\n")
            if sep:
                m = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
                if m and len(rest) >= int(m.group(1)):
                    break
    finally:
        s.close()
    m = re.match(rb"HTTP/1\.[01] (\d{3}) ", got)
    return (int(m.group(1)) if m else None), got


def split_http_reply(raw):
    """(headers text, parsed JSON body or None) of a raw HTTP reply."""
    head, _, body = raw.partition(b"\r\n\r\n")
    return head.decode("latin-1"), (parse_json_bytes(body) if body.strip() else None)


# --------------------------------------------------------------------------
# encodings of value arrays

def b64_f64(values):
    return {"dtype": "f64", "b64": base64.b64encode(struct.pack("<%dd" % len(values),
                                                                *values)).decode("ascii")}


def b64_f32(values):
    return {"dtype": "f32", "b64": base64.b64encode(struct.pack("<%df" % len(values),
                                                                *values)).decode("ascii")}


def f32_round(x):
    """x rounded to the nearest float32, as a Python float."""
    return struct.unpack("<f", struct.pack("<f", x))[0]


# --------------------------------------------------------------------------
# exact arithmetic

def exact_moments(xs):
    """Exact (N, mean, M2) of the doubles xs as (int, Fraction, Fraction).

    Two passes, in integers: every double is a / 2**E for a common E, so
    mean = A / (N 2**E) and M2 = sum((a N - A)**2) / (N**2 2**(2E)).
    """
    n = len(xs)
    if n == 0:
        raise ValueError("no samples")
    ratios = [float(x).as_integer_ratio() for x in xs]
    e = max(d.bit_length() - 1 for _, d in ratios)   # denominators are powers of two
    ints = [p << (e - (d.bit_length() - 1)) for p, d in ratios]
    total = sum(ints)
    m2 = sum((a * n - total) ** 2 for a in ints)
    scale = 1 << e
    return n, Fraction(total, n * scale), Fraction(m2, n * n * scale * scale)


def exact_population(xs):
    """Exact population (mean, var = M2/N) of the samples xs, as Fractions."""
    n, mean, m2 = exact_moments(xs)
    return mean, m2 / n


def batch_from_samples(xs):
    """(count, mean, unbiased var) of one channel's samples; the two values are
    the exact ones rounded once to doubles."""
    n, mean, m2 = exact_moments(xs)
    if n < 2:
        raise ValueError("an unbiased variance needs 2 samples")
    return n, float(mean), float(m2 / (n - 1))


def gen_samples(rng, n, mu, sigma):
    return [rng.gauss(mu, sigma) for _ in range(n)]


class RawLayerBatch:
    """One layer of one batch: per-channel raw samples, all of one count."""

    def __init__(self, samples):
        self.samples = samples                      # [channel][sample]
        self.count = len(samples[0])
        assert all(len(s) == self.count for s in samples)
        exact = [exact_moments(s) for s in samples]
        self.exact_mean = [m for _, m, _ in exact]
        self.exact_m2 = [m2 for _, _, m2 in exact]
        self.mean = [float(m) for m in self.exact_mean]
        self.var = [float(m2 / (self.count - 1)) for m2 in self.exact_m2]          # unbiased
        self.var_biased = [float(m2 / self.count) for m2 in self.exact_m2]

    @classmethod
    def generate(cls, rng, count, mus, sigmas):
        return cls([gen_samples(rng, count, mu, sg) for mu, sg in zip(mus, sigmas)])


def raw_reference(layer_batches):
    """Exact references over a list of RawLayerBatch of one layer.

    Returns a dict with per channel lists (floats, each the exact value
    rounded once):
      pop_mean, pop_var       population mean and M2/N over all raw samples
      mbv_mean, mbv_var       unweighted mean of the batch means / of the
                              unbiased batch variances (exact batch values)
      batch_noise             mean over channels of sqrt(s2 / pop_var), s2 the
                              sample variance (k-1) of the exact batch means;
                              None with fewer than 2 batches
    and count (sum of counts), batches, nbs_min, nbs_max.
    """
    k = len(layer_batches)
    channels = len(layer_batches[0].samples)
    pop_mean, pop_var, mbv_mean, mbv_var, noise = [], [], [], [], []
    for c in range(channels):
        allx = [x for b in layer_batches for x in b.samples[c]]
        m, v = exact_population(allx)
        pop_mean.append(float(m))
        pop_var.append(float(v))
        bm = [b.exact_mean[c] for b in layer_batches]
        bv = [b.exact_m2[c] / (b.count - 1) for b in layer_batches]
        mbv_mean.append(float(sum(bm) / k))
        mbv_var.append(float(sum(bv) / k))
        if k >= 2:
            mm = sum(bm) / k
            s2 = sum((x - mm) ** 2 for x in bm) / (k - 1)
            noise.append(math.sqrt(float(s2 / v)))
    counts = [b.count for b in layer_batches]
    return {
        "pop_mean": pop_mean, "pop_var": pop_var,
        "mbv_mean": mbv_mean, "mbv_var": mbv_var,
        "batch_noise": (math.fsum(noise) / channels) if k >= 2 else None,
        "count": sum(counts), "batches": k,
        "nbs_min": min(counts), "nbs_max": max(counts),
    }


def exact_merge(batches):
    """Exact merge of uploaded batches, values taken at face value as doubles.

    batches: list of (count, means, vars, var_kind) with var_kind "unbiased"
    or "biased"; count 0 entries are skipped. Returns a dict of per-channel
    floats pop_mean, pop_var (M2/N), mbv_mean, mbv_var and ints count,
    batches; or None when nothing is merged.
    """
    used = [b for b in batches if b[0] > 0]
    if not used:
        return None
    channels = len(used[0][1])
    total_n = sum(b[0] for b in used)
    k = len(used)
    out = {"pop_mean": [], "pop_var": [], "mbv_mean": [], "mbv_var": [],
           "count": total_n, "batches": k}
    for c in range(channels):
        s = sum(Fraction(b[0]) * Fraction(b[1][c]) for b in used)
        mean = s / total_n
        m2 = Fraction(0)
        uvar = Fraction(0)
        for n, means, vars_, kind in used:
            v = Fraction(vars_[c])
            if kind == "biased":
                m2 += v * n
                uvar += v * n / (n - 1) if n > 1 else 0
            else:
                m2 += v * (n - 1)
                uvar += v
            d = Fraction(means[c]) - mean
            m2 += n * d * d
        out["pop_mean"].append(float(mean))
        out["pop_var"].append(float(m2 / total_n))
        out["mbv_mean"].append(float(sum(Fraction(b[1][c]) for b in used) / k))
        out["mbv_var"].append(float(uvar / k))
    return out


def rel_err(got, ref):
    """|got - ref| / |ref| computed exactly (0 when both are 0; inf when only ref is)."""
    g, r = Fraction(got), Fraction(ref)
    if r == 0:
        return 0.0 if g == 0 else math.inf
    return float(abs(g - r) / abs(r))


def is_json_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


class TestCaseMixin:
    """Assertions shared by the test files (mix into unittest.TestCase)."""

    def assertRelClose(self, got, ref, rel, what=""):
        self.assertIsInstance(got, (int, float), "%s: %r is not a number" % (what, got))
        self.assertFalse(isinstance(got, bool), what)
        err = rel_err(got, ref)
        self.assertLessEqual(err, rel, "%s: got %r, expected %r (relative error %.3g > %.1g)"
                             % (what, got, ref, err, rel))

    def assertAllRelClose(self, got, ref, rel, what=""):
        self.assertIsInstance(got, list, "%s: %r is not a list" % (what, got))
        self.assertEqual(len(got), len(ref), "%s: length %d, expected %d"
                         % (what, len(got), len(ref)))
        for i, (g, r) in enumerate(zip(got, ref)):
            self.assertRelClose(g, r, rel, "%s[%d]" % (what, i))

    def assertError(self, reply, status, code=None, path=None, what=""):
        """reply = (status, body, headers): an error reply of the contract's shape."""
        st, body, _ = reply
        self.assertEqual(st, status, "%s: HTTP status %r, expected %d; body %r"
                         % (what, st, status, body))
        self.assertIsInstance(body, dict, "%s: error body %r is not an object" % (what, body))
        self.assertIn("error", body, what)
        e = body["error"]
        self.assertIsInstance(e, dict, what)
        self.assertEqual(e.get("status"), status, "%s: error.status %r" % (what, e.get("status")))
        self.assertTrue(is_json_int(e.get("status")), what)
        self.assertIsInstance(e.get("message"), str, what)
        self.assertTrue(e.get("message"), "%s: empty error.message" % what)
        if code is not None:
            self.assertEqual(e.get("code"), code, "%s: error %r" % (what, e))
        if path is not None:
            self.assertEqual(e.get("path"), path, "%s: error %r" % (what, e))
        return e
