"""Operations (docs/OPERATIONS.md): the config file and flags, TLS,
limits, graceful shutdown, /metrics, DELETE of a run, retention, sd_notify,
the systemd unit and the log file. Authentication is in test_auth.py; the
durability of uploads across SIGKILL/SIGTERM under load in test_durability.py.

Optional tools: openssl (TLS tests; skipped without it), promtool (the
/metrics text is also checked by it when it is installed), systemd-analyze
(verify of the unit). The unit is taken from env BNSTAT_UNIT, or from
systemd/bnstatd.service beside the build's src/ directory.
"""

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import stat
import subprocess
import tempfile
import threading
import time
import unittest

from bnstat_testlib import (BNSTATD, HOST, Daemon, Session, TestCaseMixin, b64_f64,
                            raw_exchange, request_raw, run_bnstatd)

SRCDIR = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))


# --------------------------------------------------------------------------
# helpers

def layer(channels, mean0=0.0, count=16, ema=False, rng=None):
    rng = rng or random.Random(channels)
    mean = [mean0 + rng.gauss(0.0, 1.0) for _ in range(channels)]
    var = [rng.uniform(0.5, 2.0) for _ in range(channels)]
    d = {"count": count, "mean": b64_f64(mean), "var": b64_f64(var)}
    if ema:
        d["ema_mean"] = b64_f64([m * 0.9 for m in mean])
        d["ema_var"] = b64_f64([v * 1.1 for v in var])
    return d, mean, var


def doc(step, seq=0, worker="w0", layers=None, channels=4, domain=None):
    if layers is None:
        layers = {"bn": layer(channels, rng=random.Random(step * 1000 + seq))[0]}
    d = {"worker": worker, "step": step, "seq": seq, "layers": layers}
    if domain is not None:
        d["domain"] = domain
    return d


def padded(d, size):
    text = json.dumps(d)
    assert len(text) <= size, (len(text), size)
    return (text + " " * (size - len(text))).encode()


def free_port():
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Async(threading.Thread):
    """fn() on a thread; .result or .error afterwards."""

    def __init__(self, fn):
        super().__init__(daemon=True)
        self.fn, self.result, self.error = fn, None, None
        self.start()

    def run(self):
        try:
            self.result = self.fn()
        except Exception as e:       # reported by the test that joins
            self.error = e

    def outcome(self, timeout=30):
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("request still running after %.0fs" % timeout)
        if self.error is not None:
            raise AssertionError("request failed: %r" % (self.error,))
        return self.result


class WriteLock:
    """Hold SQLite's write lock on a database (BEGIN IMMEDIATE) so that the
    daemon's writer blocks in its own BEGIN; release() lets it go. bnstatd's
    busy timeout is 10 s: release well before that."""

    def __init__(self, db):
        self.con = sqlite3.connect(db, timeout=10, isolation_level=None)
        self.con.execute("BEGIN IMMEDIATE")

    def release(self):
        if self.con is not None:
            self.con.execute("ROLLBACK")
            self.con.close()
            self.con = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False


def db_size_after_checkpoint(db):
    """Size of db + wal once the WAL is checkpointed into the file (daemon stopped)."""
    con = sqlite3.connect(db, isolation_level=None)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        con.close()
    wal = db + "-wal"
    return os.path.getsize(db) + (os.path.getsize(wal) if os.path.exists(wal) else 0)


def wait_until(pred, timeout, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise AssertionError("%s not reached within %.1fs" % (what, timeout))
        time.sleep(interval)


def queue_depth(d):
    st, body, _ = d.get("/healthz")
    return body["queue"] if st == 200 else None


_cert_cache = {}


def make_cert(directory):
    """A self-signed EC certificate for IP 127.0.0.1 (cert.pem, key.pem) made
    with the openssl CLI; SkipTest without openssl."""
    if shutil.which("openssl") is None:
        raise unittest.SkipTest("openssl is not installed")
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", key, "-out", cert,
                        "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True, timeout=60)
    if r.returncode != 0:
        raise AssertionError("openssl req failed:\n" + r.stdout)
    return cert, key


# --------------------------------------------------------------------------
# Prometheus text format (version 0.0.4), parsed strictly

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_VALUE = re.compile(r"^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]Inf|NaN)$")


def _parse_labels(text, where):
    labels, i = {}, 0
    while i < len(text):
        m = re.compile(_LABEL + r'="').match(text, i)
        if not m:
            raise AssertionError("%s: bad label at %r" % (where, text[i:]))
        name = text[i:m.end() - 2]
        i = m.end()
        val = []
        while True:
            if i >= len(text):
                raise AssertionError("%s: unterminated label value" % where)
            c = text[i]
            if c == "\\":
                nxt = text[i + 1:i + 2]
                if nxt not in ("\\", '"', "n"):
                    raise AssertionError("%s: bad escape \\%s" % (where, nxt))
                val.append("\n" if nxt == "n" else nxt)
                i += 2
            elif c == '"':
                i += 1
                break
            elif c == "\n":
                raise AssertionError("%s: newline in a label value" % where)
            else:
                val.append(c)
                i += 1
        if name in labels:
            raise AssertionError("%s: label %s twice" % (where, name))
        if name.startswith("__"):
            raise AssertionError("%s: reserved label name %s" % (where, name))
        labels[name] = "".join(val)
        if i < len(text):
            if text[i] != ",":
                raise AssertionError("%s: expected ',' in labels at %r" % (where, text[i:]))
            i += 1
    return labels


def _float(v):
    return float(v.replace("Inf", "inf").replace("NaN", "nan"))


def parse_prometheus(text):
    """Families {name: {"type", "help", "samples": [(name, labels, value)]}},
    with AssertionError on anything promtool would refuse or lint, and on
    histograms whose buckets are not cumulative or do not end with +Inf ==
    _count."""
    assert text.endswith("\n"), "the exposition must end with a newline"
    fams, order, seen_series = {}, [], set()
    current = None
    for lineno, line in enumerate(text.split("\n")[:-1], 1):
        where = "line %d %r" % (lineno, line)
        if line == "":
            continue
        if line.startswith("#"):
            m = re.match(r"^# (HELP|TYPE) (" + _NAME + r") (.*)$", line)
            if not m:
                if re.match(r"^# (HELP|TYPE)\b", line):
                    raise AssertionError("%s: malformed HELP/TYPE" % where)
                continue                    # a plain comment
            kind, name, rest = m.groups()
            f = fams.setdefault(name, {"type": None, "help": None, "samples": []})
            if name not in order:
                order.append(name)
            if kind == "TYPE":
                if f["type"] is not None:
                    raise AssertionError("%s: second TYPE for %s" % (where, name))
                if f["samples"]:
                    raise AssertionError("%s: TYPE after samples of %s" % (where, name))
                if rest not in ("counter", "gauge", "histogram", "summary", "untyped"):
                    raise AssertionError("%s: unknown type %s" % (where, rest))
                f["type"] = rest
            else:
                if f["help"] is not None:
                    raise AssertionError("%s: second HELP for %s" % (where, name))
                f["help"] = rest
            continue
        m = re.match(r"^(" + _NAME + r")(?:\{(.*)\})? (\S+)(?: (-?\d+))?$", line)
        if not m:
            raise AssertionError("%s: not a sample line" % where)
        name, ltext, value, _ts = m.groups()
        if not _VALUE.match(value):
            raise AssertionError("%s: bad value %r" % (where, value))
        labels = _parse_labels(ltext or "", where)
        fam = name
        if fam not in fams or fams[fam]["type"] is None:
            for suffix in ("_bucket", "_sum", "_count"):
                base = name[:-len(suffix)]
                if name.endswith(suffix) and fams.get(base, {}).get("type") in ("histogram",
                                                                             "summary"):
                    fam = base
                    break
        if fam not in fams or fams[fam]["type"] is None:
            raise AssertionError("%s: sample of %s without a TYPE line before it" % (where, name))
        if current != fam and fams[fam]["samples"]:
            raise AssertionError("%s: samples of %s are not together" % (where, fam))
        current = fam
        key = (name, tuple(sorted(labels.items())))
        if key in seen_series:
            raise AssertionError("%s: duplicate series" % where)
        seen_series.add(key)
        fams[fam]["samples"].append((name, labels, _float(value)))
    for name, f in fams.items():
        if f["type"] is None:
            raise AssertionError("%s has HELP but no TYPE" % name)
        if not f["help"]:
            raise AssertionError("%s has no HELP text" % name)
        if f["type"] == "counter":
            if not name.endswith("_total"):
                raise AssertionError("counter %s does not end in _total" % name)
            for s in f["samples"]:
                if s[0] != name or not (s[2] >= 0):
                    raise AssertionError("counter %s: bad sample %r" % (name, s))
        if f["type"] == "histogram":
            _check_histogram(name, f["samples"])
    return fams


def _check_histogram(name, samples):
    groups = {}
    for sname, labels, value in samples:
        rest = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
        g = groups.setdefault(rest, {"buckets": [], "sum": None, "count": None})
        if sname == name + "_bucket":
            if "le" not in labels:
                raise AssertionError("%s: bucket without le" % name)
            g["buckets"].append((_float(labels["le"]), labels["le"], value))
        elif sname == name + "_sum":
            g["sum"] = value
        elif sname == name + "_count":
            g["count"] = value
        else:
            raise AssertionError("%s: unexpected sample %s" % (name, sname))
    if not groups:
        raise AssertionError("histogram %s has no samples" % name)
    for rest, g in groups.items():
        b = g["buckets"]
        if not b or b[-1][1] != "+Inf":
            raise AssertionError("%s%r: the last bucket is not le=\"+Inf\"" % (name, rest))
        for (le0, _, v0), (le1, _, v1) in zip(b, b[1:]):
            if not le1 > le0:
                raise AssertionError("%s: bucket bounds not increasing (%r, %r)" % (name, le0, le1))
            if v1 < v0:
                raise AssertionError("%s: buckets not cumulative (%r then %r)" % (name, v0, v1))
        if g["count"] is None or g["sum"] is None:
            raise AssertionError("%s: _count or _sum missing" % name)
        if g["count"] != b[-1][2]:
            raise AssertionError("%s: _count %r != +Inf bucket %r" % (name, g["count"], b[-1][2]))
    return groups


def sample(fams, name, **labels):
    """The value of one series (AssertionError when absent)."""
    fam = fams.get(name)
    if fam is None:
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name[:-len(suffix)] in fams:
                fam = fams[name[:-len(suffix)]]
    if fam is None:
        raise AssertionError("no metric %s" % name)
    for sname, l, v in fam["samples"]:
        if sname == name and l == labels:
            return v
    raise AssertionError("no series %s%r" % (name, labels))


# --------------------------------------------------------------------------
# the config file and flags

EXPECTED_OPTIONS = {
    "db", "listen", "threads", "max-body", "max-layers", "max-channels", "max-connections",
    "max-connections-per-ip", "timeout", "queue-max", "group-max", "synchronous",
    "retain-steps", "token-file", "tls-cert", "tls-key", "log-file", "replay-cache-mb",
    "log-level",
}


def help_options():
    r = run_bnstatd("--help")
    names = re.findall(r"^\s+--([a-z][a-z0-9-]*)\s", r.stdout, re.M)
    return set(names) - {"config", "test-config", "help", "version"}


class TestConfig(TestCaseMixin, unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bnstat-ops-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_version_and_help(self):
        for flag in ("--version", "-V"):
            r = run_bnstatd(flag)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertRegex(r.stdout, r"^bnstatd \d+\.\d+\.\d+\b")
        for flag in ("--help", "-h"):
            r = run_bnstatd(flag)
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertIn("Usage:", r.stdout)
            for opt in ("--config", "--test-config", "--help", "--version"):
                self.assertIn(opt, r.stdout)
        # every option this test knows is documented with its default
        self.assertLessEqual(EXPECTED_OPTIONS, help_options())
        r = run_bnstatd("--help")
        for opt in EXPECTED_OPTIONS:
            self.assertRegex(r.stdout, r"--%s\s.*\(default: [^)]*\)" % re.escape(opt))

    def test_test_config_accepts_every_key(self):
        cert, key = make_cert(self.tmp)
        tokens = self.write("tokens", "0123456789abcdef0123 read\n")
        values = {
            "db": os.path.join(self.tmp, "cfg.db"), "listen": "127.0.0.1:0", "threads": "3",
            "max-body": "123456", "max-layers": "7", "max-channels": "99",
            "max-connections": "50", "max-connections-per-ip": "9", "timeout": "17",
            "queue-max": "33", "group-max": "11", "synchronous": "normal",
            "retain-steps": "1000", "token-file": tokens, "tls-cert": cert, "tls-key": key,
            "log-file": os.path.join(self.tmp, "cfg.log"), "replay-cache-mb": "8",
            "log-level": "warn",
        }
        options = help_options()
        self.assertEqual(set(values), options,
                         "this test must set every option --help lists (new or removed option?)")
        lines = ["# every option", ""]
        for i, (k, v) in enumerate(sorted(values.items())):
            # both spellings of names, quoted and bare values, odd spacing
            name = k.replace("-", "_") if i % 2 else k
            val = '"%s"' % v if i % 3 == 0 else v
            lines.append("%s%s=  %s  " % ("  " if i % 4 == 0 else "", name, val))
        path = self.write("all.conf", "\n".join(lines) + "\n")
        for flag in ("-t", "--test-config"):
            r = run_bnstatd("-c", path, flag)
            self.assertEqual(r.returncode, 0, "exit %d\n%s%s" % (r.returncode, r.stdout, r.stderr))
            self.assertIn("configuration OK", r.stdout)
            self.assertIn("db=%s" % values["db"], r.stdout)
            self.assertIn("listen=127.0.0.1:0", r.stdout)
            self.assertIn("tokens=1", r.stdout)
            self.assertIn("tls=yes", r.stdout)
        # a check creates nothing
        self.assertFalse(os.path.exists(values["db"]), "--test-config created the database")
        self.assertFalse(os.path.exists(values["log-file"]), "--test-config created the log file")
        # --config=FILE works too
        r = run_bnstatd("--config=" + path, "-t")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_flags_win_over_the_file(self):
        path = self.write("live.conf", "\n".join([
            "# values the flags override: the daemon could not start with these",
            "db = /nonexistent-bnstat-dir/never.db",
            "listen = 203.0.113.1:1",
            "max-body = 2048",
            "# values in force",
            "threads = 3",
            "max-layers = 2",
            "max-channels = 8",
            "log-level = debug",
            "timeout = 1",
            "retain-steps = 5",
        ]) + "\n")
        d = Daemon("-c", path, "--max-body", "8192")
        self.addCleanup(d.close)
        d.start()
        _, line = d.wait_log(r"event=listening\b", 5)
        self.assertIn("threads=3", line)
        self.assertIn("db=%s" % d.db, line)
        self.assertIn("host=127.0.0.1", line)
        # max-body: the flag (8192), not the file (2048)
        st, body, _ = d.post_batch("cfg", padded(doc(1), 5000))
        self.assertEqual(st, 200, body)
        self.assertError(d.post_batch("cfg", padded(doc(1, 1), 9000)), 413, "payload_too_large")
        # max-layers and max-channels from the file
        three = {"l%d" % i: layer(2)[0] for i in range(3)}
        self.assertError(d.post_batch("cfg", doc(2, layers=three)), 422, "limit_exceeded")
        self.assertError(d.post_batch("cfg", doc(2, layers={"wide": layer(9)[0]})), 422,
                         "limit_exceeded")
        st, body, _ = d.post_batch("cfg", doc(2, layers={"wide8": layer(8)[0]}))
        self.assertEqual(st, 200, body)
        # log-level debug from the file
        d.wait_log(r"event=upload_queued\b", 5)
        # retain-steps 5 from the file
        for step in range(3, 11):
            st, body, _ = d.post_batch("cfg", doc(step))
            self.assertEqual(st, 200, body)
        self.assertError(d.post_batch("cfg", doc(5, 7)), 422, "invalid_value", "step")
        # timeout 1 from the file: an idle connection is closed
        s = socket.create_connection((HOST, d.port), timeout=10)
        try:
            t0 = time.monotonic()
            self.assertEqual(s.recv(100), b"")
            self.assertLess(time.monotonic() - t0, 5)
        finally:
            s.close()
        d.stop()

    def test_errors_name_file_and_line_and_exit_2(self):
        db = os.path.join(self.tmp, "err.db")
        head = "# a comment\n\nthreads = 4\n"       # the bad line is line 4
        cases = [
            ("unknown key", "bogus-key = 1", "bogus-key"),
            ("not a number", "max-body = 12x", "max-body"),
            ("below the minimum", "threads = 0", "threads"),
            ("above the maximum", "threads = 257", "threads"),
            ("negative", "max-layers = -5", "max-layers"),
            ("overflow", "timeout = 99999999999999999999999", "timeout"),
            ("bad synchronous", "synchronous = sometimes", "synchronous"),
            ("bad log level", "log-level = loud", "log-level"),
            ("listen without port", "listen = localhost", "listen"),
            ("listen port too big", "listen = 127.0.0.1:70000", "listen"),
            ("no equals sign", "just some words", "key = value"),
            ("empty db", "db = ", "db"),
        ]
        for name, line, needle in cases:
            path = self.write("bad.conf", head + line + "\nmax-body = 4096\n")
            for extra in ((), ("-t",)):
                with self.subTest(case=name, args=extra):
                    r = run_bnstatd("-c", path, "--db", db, "--listen", "127.0.0.1:0", *extra)
                    self.assertEqual(r.returncode, 2, "%s: exit %r\n%s" % (name, r.returncode,
                                                                        r.stderr))
                    self.assertIn("%s:4" % path, r.stderr, "the error must name file:line")
                    self.assertIn(needle, r.stderr)
                    self.assertNotIn("configuration OK", r.stdout)
        self.assertFalse(os.path.exists(db), "a refused configuration created the database")
        # a missing config file
        r = run_bnstatd("-c", os.path.join(self.tmp, "missing.conf"), "-t")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("missing.conf", r.stderr)
        # bad flags
        for args, needle in ((("--threads", "0"), "--threads"), (("--bogus", "1"), "--bogus"),
                             (("--max-body",), "--max-body"), (("stray",), "stray"),
                             (("--listen", "nope"), "listen")):
            with self.subTest(flags=args):
                r = run_bnstatd("--db", db, *args)
                self.assertEqual(r.returncode, 2, r.stderr)
                self.assertIn(needle, r.stderr)

    def test_tls_cert_and_key_go_together(self):
        cert = self.write("c.pem", "x\n")
        for args in (("--tls-cert", cert), ("--tls-key", cert)):
            for extra in ((), ("-t",)):
                with self.subTest(args=args + extra):
                    r = run_bnstatd("--db", os.path.join(self.tmp, "t.db"), "--listen",
                                    "127.0.0.1:0", *(args + extra))
                    self.assertEqual(r.returncode, 2, r.stderr)
                    self.assertIn("tls-key", r.stderr)
        path = self.write("tls.conf", "tls-cert = %s\n" % cert)
        r = run_bnstatd("-c", path, "-t")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("tls-key", r.stderr)

    def test_shipped_example_config_checks_ok(self):
        conf = os.path.join(SRCDIR, "systemd", "bnstatd.conf")
        if not os.path.exists(conf):
            self.skipTest("no systemd/bnstatd.conf in %s" % SRCDIR)
        r = run_bnstatd("-c", conf, "-t")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        # every option the example mentions (commented out or not) is a real one
        with open(conf) as f:
            named = set(re.findall(r"^#?\s*([a-z][a-z0-9_-]*)\s*=", f.read(), re.M))
        named = {n.replace("_", "-") for n in named}
        self.assertLessEqual(named, help_options(), "the example names unknown options")


# --------------------------------------------------------------------------
# TLS

class TestTLS(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="bnstat-tls-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.cert, cls.key = make_cert(cls.tmp)
        cls.d = Daemon("--tls-cert", cls.cert, "--tls-key", cls.key, tls_ca=cls.cert)
        cls.addClassCleanup(cls.d.close)
        cls.d.start()

    def test_upload_and_read_over_https(self):
        _, line = self.d.wait_log(r"event=listening\b", 5)
        self.assertIn("tls=yes", line)
        d0, mean, var = layer(4, rng=random.Random(7))
        st, body, _ = self.d.post_batch("tls", doc(1, layers={"bn": d0}))
        self.assertEqual(st, 200, body)
        self.assertEqual(body, {"accepted": True, "duplicate": False, "layers": 1})
        st, body, _ = self.d.stats("tls")
        self.assertEqual(st, 200, body)
        self.assertEqual(body["layers"]["bn"]["mean"], mean)
        self.assertEqual(body["layers"]["bn"]["count"], 16)
        st, raw, hdrs = self.d.get_raw("/metrics")
        self.assertEqual(st, 200)

    def test_plain_http_on_the_tls_port_fails(self):
        try:
            st, raw, _ = request_raw(self.d.port, "POST", "/v1/runs/plain/batches",
                                     json.dumps(doc(1)).encode(),
                                     {"Content-Type": "application/json"}, timeout=10)
        except (OSError, http.client.HTTPException):
            st = None
        self.assertNotEqual(st, 200, "a plain-HTTP upload to the HTTPS port was served")
        st, body, _ = self.d.get("/v1/runs/plain")
        self.assertEqual(st, 404, "a plain-HTTP upload was stored: %r" % (body,))
        self.assertTrue(self.d.running)

    def test_client_without_the_ca_refuses_the_server(self):
        ctx = ssl.create_default_context()      # system CAs only
        with self.assertRaises(ssl.SSLError):
            request_raw(self.d.port, "GET", "/healthz", timeout=10, ssl_context=ctx)

    def test_test_config_checks_the_tls_files(self):
        # --test-config must not call a configuration OK with which the daemon
        # cannot start, and an unusable TLS file is a configuration error
        # (exit 2), as an unusable token file, log file or config file is.
        garbage = os.path.join(self.tmp, "garbage2.pem")
        with open(garbage, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n")
        other = os.path.join(self.tmp, "other2.pem")
        r = subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-out", other],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        missing = os.path.join(self.tmp, "missing-key.pem")
        r = run_bnstatd("-t", "--tls-cert", self.cert, "--tls-key", self.key)
        self.assertEqual(r.returncode, 0, r.stderr)
        for name, key in (("garbage key", garbage), ("key of another certificate", other),
                          ("missing key file", missing)):
            with self.subTest(case=name):
                r = run_bnstatd("-t", "--tls-cert", self.cert, "--tls-key", key)
                self.assertEqual(r.returncode, 2, "bnstatd -t with a %s: exit %d\n%s%s"
                                 % (name, r.returncode, r.stdout, r.stderr))
                self.assertNotIn("configuration OK", r.stdout)
        with self.subTest(case="start with a missing key file"):
            r = run_bnstatd("--db", os.path.join(self.tmp, "m.db"), "--listen", "127.0.0.1:0",
                            "--tls-cert", self.cert, "--tls-key", missing)
            self.assertEqual(r.returncode, 2, "exit %d\n%s" % (r.returncode, r.stderr))

    def test_bad_key_fails_to_start_with_a_clear_message(self):
        garbage = os.path.join(self.tmp, "garbage.pem")
        with open(garbage, "w") as f:
            f.write("-----BEGIN PRIVATE KEY-----\nAAAAAAAAAAAA\n-----END PRIVATE KEY-----\n")
        other = os.path.join(self.tmp, "other.pem")
        r = subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                            "ec_paramgen_curve:prime256v1", "-out", other],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        self.assertEqual(r.returncode, 0, r.stdout)
        db = os.path.join(self.tmp, "bad.db")
        for name, key, needle in (("garbage key", garbage, "TLS"),
                                  ("key of another certificate", other, "TLS"),
                                  ("missing key file", os.path.join(self.tmp, "nope.pem"),
                                   "nope.pem")):
            with self.subTest(case=name):
                r = run_bnstatd("--db", db, "--listen", "127.0.0.1:0", "--tls-cert", self.cert,
                                "--tls-key", key, timeout=15)
                self.assertNotEqual(r.returncode, 0, "%s: bnstatd started" % name)
                self.assertIn(needle, r.stderr, "%s: unclear message:\n%s" % (name, r.stderr))
                self.assertNotIn("event=listening", r.stderr)


# --------------------------------------------------------------------------
# limits

class TestLimits(TestCaseMixin, unittest.TestCase):

    def daemon(self, *args):
        d = Daemon(*args)
        self.addCleanup(d.close)
        d.start()
        return d

    def test_body_layer_and_channel_limits(self):
        d = self.daemon("--max-body", "4096", "--max-layers", "3", "--max-channels", "16")
        st, body, _ = d.post_batch("lim", padded(doc(1), 4096))
        self.assertEqual(st, 200, body)
        self.assertError(d.post_batch("lim", padded(doc(1, 1), 4097)), 413, "payload_too_large")
        # chunked: no Content-Length, the server counts
        big = padded(doc(1, 2), 3 * 4096)
        conn = http.client.HTTPConnection(HOST, d.port, timeout=30)
        try:
            conn.request("POST", "/v1/runs/lim/batches",
                         body=iter([big[i:i + 1000] for i in range(0, len(big), 1000)]),
                         headers={"Content-Type": "application/json"}, encode_chunked=True)
            resp = conn.getresponse()
            raw = resp.read()
        finally:
            conn.close()
        self.assertEqual(resp.status, 413, raw)
        self.assertEqual(json.loads(raw)["error"]["code"], "payload_too_large")
        # a Content-Length over the limit is refused without the body being sent
        st, raw = raw_exchange(d.port, b"POST /v1/runs/lim/batches HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\n"
                               b"Content-Length: 5000000000\r\n\r\n", timeout=10)
        self.assertEqual(st, 413, raw[:300])
        # layers and channels
        four = {"l%d" % i: layer(2)[0] for i in range(4)}
        self.assertError(d.post_batch("lim", doc(2, layers=four)), 422, "limit_exceeded")
        self.assertError(d.post_batch("lim", doc(2, 1, layers={"w": layer(17)[0]})), 422,
                         "limit_exceeded")
        at = {"l%d" % i: layer(16)[0] for i in range(3)}
        st, body, _ = d.post_batch("lim", doc(3, layers=at))
        self.assertEqual(st, 200, body)
        st, body, _ = d.get("/v1/runs/lim")
        self.assertEqual(body["batches"], 2, "refused uploads stored something: %r" % body)

    def test_full_write_queue_is_503_with_retry_after(self):
        d = self.daemon("--queue-max", "1", "--log-level", "debug")
        st, body, _ = d.post_batch("q", doc(1, 0))
        self.assertEqual(st, 200, body)
        with WriteLock(d.db) as lock:
            n0 = len(d.log_lines())
            a = Async(lambda: d.post_batch("q", doc(1, 1)))
            d.wait_log(r"event=upload_queued\b", 10, n0)
            wait_until(lambda: queue_depth(d) == 0, 5, what="the writer taking upload A")
            n1 = len(d.log_lines())
            b = Async(lambda: d.post_batch("q", doc(1, 2)))
            d.wait_log(r"event=upload_queued\b", 10, n1)
            self.assertEqual(queue_depth(d), 1)
            # the queue is full: refused at once (not queued: that would wait for the lock)
            t0 = time.monotonic()
            try:
                c = d.post_batch("q", doc(1, 3), timeout=4)
            except OSError as e:
                self.fail("with the queue full an upload waited instead of a 503: %r" % (e,))
            self.assertLess(time.monotonic() - t0, 3, "a full queue must refuse, not wait")
            self.assertError(c, 503, "unavailable")
            retry = c[2].get("Retry-After")
            self.assertIsNotNone(retry, "503 without Retry-After")
            self.assertRegex(retry, r"^\d+$")
            self.assertIsNone(a.result, "upload A answered while the database was locked")
            lock.release()
        for name, t in (("A", a), ("B", b)):
            st, body, _ = t.outcome(30)
            self.assertEqual(st, 200, "queued upload %s: %r" % (name, body))
            self.assertEqual(body["duplicate"], False)
        st, body, _ = d.get("/v1/runs/q")
        self.assertEqual(body["batches"], 3, body)
        # the refused one was not stored: sending it again is new
        st, body, _ = d.post_batch("q", doc(1, 3))
        self.assertEqual((st, body.get("duplicate")), (200, False), body)

    def test_connections_per_ip(self):
        d = self.daemon("--max-connections-per-ip", "2")

        def get_on(s):
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data

        held = [socket.create_connection((HOST, d.port), timeout=5) for _ in range(2)]
        try:
            for s in held:
                self.assertTrue(get_on(s).startswith(b"HTTP/1.1 200"))
            extra = socket.create_connection((HOST, d.port), timeout=5)
            try:
                try:
                    got = get_on(extra)
                except OSError:
                    got = b""
                self.assertEqual(got, b"", "a third connection from one address was served")
            finally:
                extra.close()
            # the two held connections still work
            for s in held:
                self.assertTrue(get_on(s).startswith(b"HTTP/1.1 200"))
        finally:
            for s in held:
                s.close()
        # once they are closed, new connections are served again
        def served():
            try:
                return d.get("/healthz", timeout=5)[0] == 200
            except (OSError, http.client.HTTPException):
                return False     # the server has not yet seen the closes
        wait_until(served, 5, 0.1, what="service after closing the held connections")

    def test_idle_connection_timeout(self):
        d = self.daemon("--timeout", "1")
        # a kept-alive connection after one request
        s = socket.create_connection((HOST, d.port), timeout=10)
        s2 = socket.create_connection((HOST, d.port), timeout=10)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            first = s.recv(4096)
            self.assertTrue(first.startswith(b"HTTP/1.1 200"), first)
            # and a connection that sent half a request (slowloris)
            s2.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            t0 = time.monotonic()
            rest = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                rest += chunk
            took = time.monotonic() - t0
            self.assertLess(took, 5, "idle connection kept %.1fs with --timeout 1" % took)
            self.assertGreater(took, 0.5, "closed before the timeout")
            try:
                tail = s2.recv(4096)
            except OSError:
                tail = b""
            self.assertNotIn(b"200 OK", tail)
            self.assertLess(time.monotonic() - t0, 5)
        finally:
            s.close()
            s2.close()
        # an upload waiting for its commit longer than --timeout is not idle: answered
        self.assertEqual(d.post_batch("t", doc(1, 0))[0], 200)
        with WriteLock(d.db) as lock:
            a = Async(lambda: d.post_batch("t", doc(1, 1)))
            time.sleep(2.2)
            self.assertTrue(a.is_alive())
            lock.release()
        st, body, _ = a.outcome(20)
        self.assertEqual((st, body.get("duplicate")), (200, False), body)


# --------------------------------------------------------------------------
# graceful shutdown (what test_durability.py does not cover)

class TestShutdown(TestCaseMixin, unittest.TestCase):

    def test_sigterm_waits_for_an_upload_held_at_the_writer(self):
        d = Daemon("--log-level", "debug")
        self.addCleanup(d.close)
        d.start()
        st, body, _ = d.post_batch("gs", doc(1, 0))
        self.assertEqual(st, 200, body)
        lock = WriteLock(d.db)
        try:
            n0 = len(d.log_lines())
            a = Async(lambda: d.post_batch("gs", doc(1, 1), timeout=60))
            d.wait_log(r"event=upload_queued\b", 10, n0)
            wait_until(lambda: queue_depth(d) == 0, 5, what="the writer taking the upload")
            d.send_signal(signal.SIGTERM)
            d.wait_log(r"event=stopping\b.*signal=TERM", 5, n0)
            # no new connections while draining
            def refused():
                try:
                    socket.create_connection((HOST, d.port), timeout=2).close()
                    return False
                except ConnectionRefusedError:
                    return True
            wait_until(refused, 3, what="the listening socket closed after SIGTERM")
            time.sleep(0.3)
            self.assertTrue(d.running, "bnstatd exited with an upload in flight")
            self.assertTrue(a.is_alive(), "the upload was answered while its commit was blocked")
        finally:
            lock.release()
        st, body, _ = a.outcome(30)
        self.assertEqual((st, body), (200, {"accepted": True, "duplicate": False, "layers": 1}))
        rc = d.proc.wait(20)
        self.assertEqual(rc, 0, d.log_tail())
        d.wait_log(r"event=stopped\b", 2, n0)
        d.restart()
        st, body, _ = d.post_batch("gs", doc(1, 1))
        self.assertEqual((st, body.get("duplicate")), (200, True), "the acknowledged upload is lost")
        d.stop()

    def test_sigint_is_graceful_too(self):
        d = Daemon()
        self.addCleanup(d.close)
        d.start()
        st, body, _ = d.post_batch("gi", doc(1))
        self.assertEqual(st, 200, body)
        d.send_signal(signal.SIGINT)
        self.assertEqual(d.proc.wait(20), 0, d.log_tail())
        d.wait_log(r"event=stopping\b.*signal=INT", 2)
        d.restart()
        self.assertEqual(d.post_batch("gi", doc(1))[1]["duplicate"], True)
        d.stop()


# --------------------------------------------------------------------------
# /metrics

class TestMetrics(TestCaseMixin, unittest.TestCase):

    def scrape(self, d):
        st, raw, hdrs = d.get_raw("/metrics")
        self.assertEqual(st, 200, raw[:300])
        self.assertRegex(hdrs.get("Content-Type", ""), r"^text/plain; version=0\.0\.4")
        text = raw.decode("utf-8")
        return text, parse_prometheus(text)

    def test_text_format_and_counters(self):
        d = Daemon("--max-layers", "4", "--max-body", "65536")
        self.addCleanup(d.close)
        d.start()
        text0, m0 = self.scrape(d)
        outcomes = {l["outcome"] for _, l, _ in m0["bnstat_uploads_total"]["samples"]}
        for o in ("accepted", "duplicate", "invalid_value", "conflict", "malformed_json",
                  "wrong_type", "missing_field", "limit_exceeded", "payload_too_large",
                  "unavailable", "unauthorized", "forbidden"):
            self.assertIn(o, outcomes)
            self.assertEqual(sample(m0, "bnstat_uploads_total", outcome=o), 0)
        self.assertEqual(sample(m0, "bnstat_runs"), 0)
        for name in ("bnstat_received_bytes_total", "bnstat_commits_total",
                     "bnstat_commit_seconds", "bnstat_commit_batches", "bnstat_queue_depth",
                     "bnstat_database_bytes", "bnstat_run_last_step"):
            self.assertIn(name, m0)
        self.assertEqual(m0["bnstat_commit_seconds"]["type"], "histogram")

        sent = [0]

        def post(run, body, headers=None):
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
            sent[0] += len(body)
            return d.post_batch(run, body, headers)

        accepted = [("ma", doc(s)) for s in range(1, 6)] + [("mb", doc(7)), ("mb", doc(3))]
        for run, u in accepted:
            self.assertEqual(post(run, u)[0], 200)
        for run, u in accepted[:3]:
            self.assertEqual(post(run, u)[1]["duplicate"], True)
        bad_var = doc(9)
        bad_var["layers"]["bn"] = {"count": 4, "mean": [0.0] * 4, "var": [1.0, -1.0, 1.0, 1.0]}
        count_one = doc(9, 1)
        count_one["layers"]["bn"] = {"count": 1, "mean": [0.0] * 4, "var": [0.0] * 4}
        conflict = doc(1, layers={"bn": layer(4, mean0=50.0)[0]})
        no_worker = doc(9, 2)
        del no_worker["worker"]
        rejected = [
            ("invalid_value", lambda: post("ma", bad_var)),
            ("invalid_value", lambda: post("ma", count_one)),
            ("conflict", lambda: post("ma", conflict)),
            ("malformed_json", lambda: post("ma", b'{"worker": "w0", "step": ')),
            ("wrong_type", lambda: post("ma", dict(doc(9, 3), step="9"))),
            ("missing_field", lambda: post("ma", no_worker)),
            ("limit_exceeded", lambda: post("ma", doc(9, 4, layers={
                "l%d" % i: layer(2)[0] for i in range(5)}))),
        ]
        for code, fn in rejected:
            st, body, _ = fn()
            self.assertEqual(body["error"]["code"], code, body)
        # over --max-body by Content-Length: refused before the body is read
        st, raw = raw_exchange(d.port, b"POST /v1/runs/ma/batches HTTP/1.1\r\nHost: x\r\n"
                               b"Content-Type: application/json\r\n"
                               b"Content-Length: 70000\r\n\r\n", timeout=10)
        self.assertEqual(st, 413)

        text1, m1 = self.scrape(d)
        want = {"accepted": len(accepted), "duplicate": 3, "invalid_value": 2, "conflict": 1,
                "malformed_json": 1, "wrong_type": 1, "missing_field": 1, "limit_exceeded": 1,
                "payload_too_large": 1}
        got = {l["outcome"]: v for _, l, v in m1["bnstat_uploads_total"]["samples"]}
        for o, v in got.items():
            self.assertEqual(v, want.get(o, 0), "bnstat_uploads_total{outcome=%r}: %r, "
                             "expected %r" % (o, v, want.get(o, 0)))
        self.assertEqual(sample(m1, "bnstat_received_bytes_total")
                         - sample(m0, "bnstat_received_bytes_total"), sent[0],
                         "bytes received: not the sum of the request bodies")
        self.assertEqual(sample(m1, "bnstat_runs"), 2)
        self.assertEqual(sample(m1, "bnstat_run_last_step", run="ma"), 5)
        self.assertEqual(sample(m1, "bnstat_run_last_step", run="mb"), 7)
        ok = sample(m1, "bnstat_commits_total", result="ok")
        failed = sample(m1, "bnstat_commits_total", result="failed")
        self.assertGreaterEqual(ok, 1)
        self.assertEqual(failed, 0)
        self.assertEqual(sample(m1, "bnstat_commit_seconds_count"), ok + failed)
        self.assertEqual(sample(m1, "bnstat_commit_batches_count"), ok + failed)
        # every upload that reached the writer is one job: accepted, duplicates, the conflict
        self.assertEqual(sample(m1, "bnstat_commit_batches_sum"), len(accepted) + 3 + 1)
        self.assertEqual(sample(m1, "bnstat_queue_depth"), 0)
        self.assertGreater(sample(m1, "bnstat_database_bytes"), 0)

        # the gauges follow the database: another step, another run
        self.assertEqual(post("ma", doc(12))[0], 200)
        self.assertEqual(post("mc", doc(2))[0], 200)
        _, m2 = self.scrape(d)
        self.assertEqual(sample(m2, "bnstat_run_last_step", run="ma"), 12)
        self.assertEqual(sample(m2, "bnstat_runs"), 3)
        self.assertEqual(sample(m2, "bnstat_uploads_total", outcome="accepted"), len(accepted) + 2)


    def test_promtool_check_metrics(self):
        promtool = shutil.which("promtool")
        if promtool is None:
            self.skipTest("promtool is not installed (Debian package prometheus): the text "
                          "is checked by this file's own parser only")
        d = Daemon()
        self.addCleanup(d.close)
        d.start()
        texts = [self.scrape(d)[0]]
        self.assertEqual(d.post_batch("pt", doc(1))[0], 200)
        self.assertEqual(d.post_batch("pt", b"{")[0], 400)
        texts.append(self.scrape(d)[0])
        for text in texts:
            r = subprocess.run([promtool, "check", "metrics"], input=text,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True, timeout=60)
            self.assertEqual(r.returncode, 0, "promtool check metrics:\n" + r.stdout)
        d.stop()

    def test_parser_catches_bad_exposition(self):
        # the checks above are only as good as the parser: it refuses these
        good = ("# HELP h_seconds x\n# TYPE h_seconds histogram\n"
                'h_seconds_bucket{le="1"} 1\nh_seconds_bucket{le="+Inf"} 2\n'
                "h_seconds_sum 3\nh_seconds_count 2\n")
        parse_prometheus(good)
        for bad in (good.replace("h_seconds_count 2", "h_seconds_count 3"),
                    good.replace('{le="1"} 1', '{le="1"} 3'),
                    good.replace('le="+Inf"', 'le="5"'),
                    good.replace("# TYPE h_seconds histogram\n", ""),
                    good.replace("# HELP h_seconds x\n", ""),
                    good + "h_seconds_sum 4\n",
                    "# HELP c x\n# TYPE c counter\nc 1\n",
                    "# HELP a_total x\n# TYPE a_total counter\na_total{x=\"1} 1\n",
                    "# HELP a_total x\n# TYPE a_total counter\na_total one\n",
                    good.rstrip("\n")):
            with self.assertRaises(AssertionError, msg=bad):
                parse_prometheus(bad)


# --------------------------------------------------------------------------
# DELETE /v1/runs/{run}

def sim_reference(rows, a=0.1):
    """PyTorch's running stats over per-step (mean, unbiased var) rows."""
    m, v = 0.0, 1.0
    for xm, xv in rows:
        m = (1 - a) * m + a * xm
        v = (1 - a) * v + a * xv
    return m, v


class TestDeleteRun(TestCaseMixin, unittest.TestCase):

    STEPS = 100        # > 64 steps with data: the simulated EMA caches a checkpoint

    def fill(self, d, run, seed, mean0):
        rng = random.Random(seed)
        rows = []
        s = Session(d.port)
        try:
            for step in range(1, self.STEPS + 1):
                l, mean, var = layer(3, mean0=mean0, count=32, ema=True, rng=rng)
                st, body, _ = s.post_batch(run, doc(step, layers={"bn": l}))
                self.assertEqual((st, body.get("duplicate")), (200, False), body)
                rows.append((mean, var))
        finally:
            s.close()
        return rows

    def test_delete_removes_everything_and_a_new_run_starts_clean(self):
        d = Daemon()
        self.addCleanup(d.close)
        d.start()
        self.fill(d, "del", 1, 5.0)
        # warm the simulated-EMA cache of the old run
        st, old_cmp, _ = d.get("/v1/runs/del/compare", {"ema": "sim", "step": self.STEPS})
        self.assertEqual(st, 200, old_cmp)
        st, old_series, _ = d.get("/v1/runs/del/series", {"layer": "bn", "channel": 0})
        self.assertEqual(st, 200, old_series)
        st, snap, _ = d.request("POST", "/v1/runs/del/snapshots", json.dumps({"label": "s"}),
                                {"Content-Type": "application/json"})
        self.assertEqual(st, 201, snap)
        self.assertEqual(d.get("/v1/runs")[1]["runs"][0]["name"], "del")

        st, body, _ = d.request("DELETE", "/v1/runs/del")
        self.assertEqual((st, body), (200, {"run": "del", "deleted": True}))
        for path in ("/v1/runs/del", "/v1/runs/del/stats", "/v1/runs/del/snapshots",
                     "/v1/runs/del/snapshots/s", "/v1/runs/del/domains",
                     "/v1/runs/del/compare?ema=sim", "/v1/runs/del/series?layer=bn&channel=0"):
            with self.subTest(path=path):
                self.assertError(d.get(path), 404, "not_found")
        self.assertEqual(d.get("/v1/runs")[1]["runs"], [])
        self.assertError(d.request("DELETE", "/v1/runs/del"), 404, "not_found")
        self.assertError(d.request("DELETE", "/v1/runs/never"), 404, "not_found")
        self.assertError(d.request("DELETE", "/v1/runs/bad%20name"), 422)
        _, metrics, _ = d.get_raw("/metrics")
        self.assertNotIn(b'run="del"', metrics)
        self.assertIn(b"\nbnstat_runs 0\n", metrics)

        # the same name again, with other data and the same batch identities:
        # accepted as new (not duplicates, not conflicts)
        new_rows = self.fill(d, "del", 2, -3.0)
        twin_rows = self.fill(d, "twin", 2, -3.0)   # made after: never had a cache
        self.assertEqual(new_rows, twin_rows)
        st, info, _ = d.get("/v1/runs/del")
        self.assertEqual(info["batches"], self.STEPS, info)
        st, snaps, _ = d.get("/v1/runs/del/snapshots")
        self.assertEqual((st, snaps.get("snapshots")), (200, []), "a snapshot survived")
        for step in (1, 64, self.STEPS):
            st, a, _ = d.stats("del", step=step)
            st2, b, _ = d.stats("twin", step=step)
            self.assertEqual(st, 200, a)
            self.assertEqual(a["layers"]["bn"]["batches"], 1, "stale statistics at step %d" % step)
            a.pop("run"), b.pop("run")
            self.assertEqual(a, b, "step %d differs from the same data in a fresh run" % step)
        for params in ({"ema": "sim", "step": self.STEPS}, {"ema": "sim", "step": 80},
                       {"ema": "sim", "step": self.STEPS, "momentum": 0.1}):
            with self.subTest(compare=params):
                st, a, _ = d.get("/v1/runs/del/compare", params)
                st2, b, _ = d.get("/v1/runs/twin/compare", params)
                self.assertEqual((st, st2), (200, 200), (a, b))
                a.pop("run"), b.pop("run")
                self.assertEqual(a, b, "compare ema=sim on the re-created run is contaminated "
                                 "by the deleted run's replay cache")
        st, a, _ = d.get("/v1/runs/del/series", {"layer": "bn", "channel": 0})
        st2, b, _ = d.get("/v1/runs/twin/series", {"layer": "bn", "channel": 0})
        self.assertEqual(a["sim_mean"], b["sim_mean"])
        self.assertEqual(a["sim_var"], b["sim_var"])
        ref_m, ref_v = sim_reference([(m[0], v[0]) for m, v in new_rows])
        self.assertRelClose(a["sim_mean"][-1], ref_m, 1e-9, "sim_mean at the last step")
        self.assertRelClose(a["sim_var"][-1], ref_v, 1e-9, "sim_var at the last step")
        d.stop()


# --------------------------------------------------------------------------
# retention

class TestRetention(TestCaseMixin, unittest.TestCase):
    N = 50
    C = 512
    LAYERS = ("a.bn", "b.bn")

    def upload_steps(self, daemons, first, last, snapshot_at=None):
        sessions = [Session(d.port) for d in daemons]
        try:
            for step in range(first, last + 1):
                rng = random.Random(step)
                layers = {}
                for name in self.LAYERS:
                    l, mean, var = layer(self.C, mean0=1.0, count=64, rng=rng,
                                         ema=(name == "a.bn" and step % 10 == 0))
                    layers[name] = l
                    if name == "a.bn":
                        self.rows[step] = (mean[0], var[0])
                for s in sessions:
                    st, body, _ = s.post_batch("ret", doc(step, layers=layers))
                    self.assertEqual(st, 200, "step %d: %r" % (step, body))
                if step == snapshot_at:
                    st, body, _ = daemons[0].request(
                        "POST", "/v1/runs/ret/snapshots",
                        json.dumps({"label": "s100", "step": step, "window": 10}),
                        {"Content-Type": "application/json"})
                    self.assertEqual(st, 201, body)
        finally:
            for s in sessions:
                s.close()

    def gone(self, d, step):
        st, body, _ = d.stats("ret", step=step)
        if st not in (200, 404):
            self.fail("stats at step %d: %r %r" % (step, st, body))
        return st == 404

    def test_retention(self):
        self.rows = {}
        d = Daemon("--retain-steps", str(self.N), "--synchronous", "normal")
        base = Daemon("--synchronous", "normal")
        for x in (d, base):
            self.addCleanup(x.close)
            x.start()
        self.upload_steps([d, base], 1, 300, snapshot_at=100)
        st, snap, _ = d.get("/v1/runs/ret/snapshots/s100")
        self.assertEqual(st, 200, snap)
        # warm the simulated-EMA cache (checkpoints every 64 steps) before the pass
        d.get("/v1/runs/ret/series", {"layer": "a.bn", "channel": 0})
        d.get("/v1/runs/ret/compare", {"ema": "sim"})

        # steps <= 300 - N disappear within one retention period (10 s)
        wait_until(lambda: self.gone(d, 300 - self.N), 25, 0.2, "retention of step 250")
        for step in (1, 100, 249, 250):
            self.assertTrue(self.gone(d, step), "step %d still has statistics" % step)
        for step in (251, 300):
            st, body, _ = d.stats("ret", step=step)
            self.assertEqual((st, body["layers"]["a.bn"]["batches"]), (200, 1), body)
        st, body, _ = d.stats("ret", step=300, window=self.N)
        self.assertEqual(body["layers"]["b.bn"]["batches"], self.N)
        st, info, _ = d.get("/v1/runs/ret")
        self.assertEqual(info["steps"], {"min": 301 - self.N, "max": 300}, info)
        self.assertEqual(info["batches"], self.N, info)
        d.wait_log(r"event=retention\b.*rows_dropped=", 5)
        # the baseline kept everything
        st, body, _ = base.stats("ret", step=1)
        self.assertEqual(st, 200, body)

        # uploads below the horizon are refused; above it, late ones are fine
        for step in (1, 250):
            self.assertError(d.post_batch("ret", doc(step, worker="late",
                                                     layers={"a.bn": layer(self.C)[0]})),
                             422, "invalid_value", "step", what="step %d" % step)
        # the snapshot taken at step 100 is still served, unchanged
        st, snap2, _ = d.get("/v1/runs/ret/snapshots/s100")
        self.assertEqual((st, snap2), (200, snap))

        # the simulated EMA is the replay of what is stored, whatever was cached
        sim_params = {"layer": "a.bn", "channel": 0}
        st, series1, _ = d.get("/v1/runs/ret/series", sim_params)
        st, cmp1, _ = d.get("/v1/runs/ret/compare", {"ema": "sim"})
        self.assertEqual(series1["step"], list(range(301 - self.N, 301)))
        ref_m, ref_v = sim_reference([self.rows[s] for s in range(301 - self.N, 301)])
        self.assertRelClose(series1["sim_mean"][-1], ref_m, 1e-9, "sim_mean after retention")
        self.assertRelClose(series1["sim_var"][-1], ref_v, 1e-9, "sim_var after retention")
        # worker EMAs of the retained steps are served
        ema = dict(zip(series1["step"], series1["ema_mean"]))
        self.assertIsNotNone(ema[260])
        self.assertIsNone(ema[261])

        d.stop()
        base.stop()
        # worker EMAs of dropped steps go with them (series can only show steps with statistics)
        con = sqlite3.connect(d.db)
        try:
            old_emas = con.execute("SELECT count(*) FROM emas WHERE step <= ?",
                                   (300 - self.N,)).fetchone()[0]
            min_agg = con.execute("SELECT min(step) FROM aggs").fetchone()[0]
            min_batch = con.execute("SELECT min(step) FROM batches").fetchone()[0]
        finally:
            con.close()
        self.assertEqual(old_emas, 0)
        self.assertEqual((min_agg, min_batch), (301 - self.N, 301 - self.N))

        size_ret = db_size_after_checkpoint(d.db)
        size_all = db_size_after_checkpoint(base.db)
        data_all = 300 * len(self.LAYERS) * self.C * 5 * 8
        self.assertGreater(size_all, data_all, "the baseline does not hold the data?")
        self.assertLess(size_ret, size_all * 0.35,
                        "with --retain-steps %d the database is %d bytes, without %d"
                        % (self.N, size_ret, size_all))

        # after a restart (empty cache) the same answers, bit for bit
        d.restart()
        st, series2, _ = d.get("/v1/runs/ret/series", sim_params)
        st, cmp2, _ = d.get("/v1/runs/ret/compare", {"ema": "sim"})
        self.assertEqual(series2, series1, "the series differs after a restart (stale cache)")
        self.assertEqual(cmp2, cmp1, "compare ema=sim differs after a restart (stale cache)")

        # 300 more steps: the file stays bounded
        self.upload_steps([d], 301, 600)
        d.stop()
        d.restart()
        wait_until(lambda: self.gone(d, 600 - self.N), 25, 0.2, "retention of step 550")
        self.assertFalse(self.gone(d, 601 - self.N))
        d.stop()
        size_ret2 = db_size_after_checkpoint(d.db)
        self.assertLess(size_ret2, size_ret * 1.5,
                        "the database grew from %d to %d bytes with retention on"
                        % (size_ret, size_ret2))


class TestRetentionManyRuns(TestCaseMixin, unittest.TestCase):

    RUNS = 70           # more than the 64 runs one retention pass looks at

    def test_every_run_is_pruned(self):
        d = Daemon("--retain-steps", "2", "--synchronous", "normal")
        self.addCleanup(d.close)
        d.start()
        s = Session(d.port)
        try:
            for r in range(self.RUNS):
                for step in range(1, 6):
                    st, body, _ = s.post_batch("run%03d" % r, doc(step, channels=2))
                    self.assertEqual(st, 200, body)
        finally:
            s.close()
        # a restart runs a retention pass at once; passes every 10 s otherwise
        d.stop()
        d.start()

        def unpruned():
            return [r for r in range(self.RUNS) if d.stats("run%03d" % r, step=3)[0] != 404]
        deadline = time.monotonic() + 15
        left = unpruned()
        while left and time.monotonic() < deadline:
            time.sleep(0.25)
            left = unpruned()
        self.assertEqual(left, [], "runs whose steps <= max-2 were never dropped (of %d runs)"
                         % self.RUNS)
        for r in (0, self.RUNS - 1):
            st, body, _ = d.stats("run%03d" % r, step=4)
            self.assertEqual(st, 200, body)
        d.stop()


# --------------------------------------------------------------------------
# sd_notify

class TestNotify(TestCaseMixin, unittest.TestCase):

    def run_notify(self, bind_addr, env_value):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(bind_addr)
        sock.settimeout(15)
        port = free_port()
        seen = {}

        def waiter():
            try:
                seen["ready"] = sock.recv(4096).decode()
                # READY=1 comes after the socket listens: it must serve at once
                st, _, _ = request_raw(port, "GET", "/healthz", timeout=5)
                seen["healthz"] = st
            except Exception as e:
                seen["error"] = repr(e)

        t = threading.Thread(target=waiter, daemon=True)
        t.start()
        d = Daemon("--listen", "%s:%d" % (HOST, port), env={"NOTIFY_SOCKET": env_value})
        self.addCleanup(d.close)
        d.start()
        t.join(15)
        self.assertNotIn("error", seen, seen)
        self.assertIn("READY=1", seen.get("ready", "").split("\n"), seen)
        self.assertEqual(seen.get("healthz"), 200, "READY=1 before the daemon serves")
        d.send_signal(signal.SIGTERM)
        stopping = sock.recv(4096).decode()
        self.assertIn("STOPPING=1", stopping.split("\n"))
        self.assertEqual(d.proc.wait(20), 0)

    def test_ready_and_stopping(self):
        tmp = tempfile.mkdtemp(prefix="bnstat-notify-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "notify.sock")
        self.run_notify(path, path)

    def test_abstract_socket(self):
        name = "bnstat-notify-test-%d-%d" % (os.getpid(), random.randrange(1 << 30))
        self.run_notify("\0" + name, "@" + name)


# --------------------------------------------------------------------------
# the systemd unit

def unit_path():
    explicit = os.environ.get("BNSTAT_UNIT")
    if explicit:
        return explicit, True
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(BNSTATD))),
                        "systemd", "bnstatd.service"), False


def parse_unit(text):
    sections, cur = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        m = re.match(r"^\[(.+)\]$", line)
        if m:
            cur = sections.setdefault(m.group(1), [])
            continue
        k, _, v = line.partition("=")
        cur.append((k.strip(), v.strip()))
    return sections


class TestSystemdUnit(TestCaseMixin, unittest.TestCase):

    def setUp(self):
        path, explicit = unit_path()
        if not os.path.exists(path):
            if explicit:
                self.fail("BNSTAT_UNIT=%s does not exist" % path)
            self.skipTest("no built unit at %s (set BNSTAT_UNIT)" % path)
        self.path = path
        with open(path) as f:
            self.text = f.read()
        self.service = parse_unit(self.text).get("Service", [])

    def values(self, key):
        return [v for k, v in self.service if k == key]

    def test_unit_settings(self):
        self.assertNotIn("%bindir%", self.text)
        self.assertNotIn("%docdir%", self.text)
        for key, want in (("Type", "notify"), ("DynamicUser", "yes"),
                          ("StateDirectory", "bnstat"), ("ProtectSystem", "strict"),
                          ("PrivateTmp", "yes"), ("NoNewPrivileges", "yes"),
                          ("SystemCallArchitectures", "native")):
            self.assertEqual(self.values(key), [want], "%s= in %s" % (key, self.path))
        fams = " ".join(self.values("RestrictAddressFamilies")).split()
        self.assertTrue(fams, "no RestrictAddressFamilies=")
        # TCP over both IP versions, and AF_UNIX for sd_notify
        self.assertLessEqual({"AF_INET", "AF_INET6", "AF_UNIX"}, set(fams))
        exec_start = self.values("ExecStart")
        self.assertEqual(len(exec_start), 1)
        argv = exec_start[0].split()
        self.assertTrue(argv[0].startswith("/") and argv[0].endswith("/bnstatd"), argv)
        # ProtectSystem=strict: the database must live in the state directory
        if "--db" in argv:
            self.assertTrue(argv[argv.index("--db") + 1].startswith("/var/lib/bnstat/"), argv)
        self.assertTrue(any("-HUP" in v for v in self.values("ExecReload")),
                        "ExecReload should send SIGHUP")

    def test_systemd_analyze_verify(self):
        tool = shutil.which("systemd-analyze")
        if tool is None:
            self.skipTest("systemd-analyze is not installed")
        tmp = tempfile.mkdtemp(prefix="bnstat-unit-")
        self.addCleanup(shutil.rmtree, tmp, True)
        copy = os.path.join(tmp, "bnstatd.service")
        text = re.sub(r"(?m)^(ExecStart=)(\S+)", lambda m: m.group(1) + os.path.abspath(BNSTATD),
                      self.text)
        with open(copy, "w") as f:
            f.write(text)
        r = subprocess.run([tool, "verify", copy], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
        problems = [l for l in r.stdout.splitlines() if "bnstatd" in l]
        self.assertEqual(r.returncode, 0, r.stdout)
        self.assertEqual(problems, [], "systemd-analyze verify:\n" + r.stdout)


# --------------------------------------------------------------------------
# the log file

class TestLogFile(TestCaseMixin, unittest.TestCase):

    def read(self, path):
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def test_log_file_and_reopen_on_sighup(self):
        tmp = tempfile.mkdtemp(prefix="bnstat-log-")
        self.addCleanup(shutil.rmtree, tmp, True)
        path = os.path.join(tmp, "bnstatd.log")
        d = Daemon("--log-file", path, ready_file=path)
        self.addCleanup(d.close)
        d.start()
        text = self.read(path)
        self.assertRegex(text, r"(?m)^ts=\S+ level=info event=listening\b")
        self.assertEqual([l for l in d.log_lines() if "event=" in l], [],
                         "with --log-file, lines still go to stderr")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode) & 0o007, 0,
                         "the log file is readable by everyone")
        self.assertError(d.get("/v1/runs/before-rotate"), 404)
        wait_until(lambda: "run=before-rotate" in self.read(path), 5, what="line in the log file")

        os.rename(path, path + ".1")
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: os.path.exists(path) and "event=sighup" in self.read(path), 5,
                   what="a fresh log file after SIGHUP")
        self.assertError(d.get("/v1/runs/after-rotate"), 404)
        wait_until(lambda: "run=after-rotate" in self.read(path), 5, what="line in the new file")
        d.stop()
        new, old = self.read(path), self.read(path + ".1")
        self.assertIn("event=stopped", new)
        self.assertNotIn("event=listening", new)
        self.assertIn("run=before-rotate", old)
        self.assertNotIn("run=after-rotate", old)
        self.assertNotIn("event=sighup", old)
        # appends, never truncates: a restart adds to the same file
        d.start()
        d.stop()
        self.assertTrue(self.read(path).startswith(new))

    def test_unwritable_log_file_stops_the_start(self):
        tmp = tempfile.mkdtemp(prefix="bnstat-log-")
        self.addCleanup(shutil.rmtree, tmp, True)
        bad = os.path.join(tmp, "no-such-dir", "x.log")
        r = run_bnstatd("--db", os.path.join(tmp, "x.db"), "--listen", "127.0.0.1:0",
                        "--log-file", bad)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn(bad, r.stderr)


if __name__ == "__main__":
    unittest.main()
