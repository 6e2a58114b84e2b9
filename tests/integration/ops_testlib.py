"""What the operations tests (tests/integration/test_ops_*.py) share: documents
to upload, a thread that waits for a request, a lock that holds the database,
a Prometheus text parser, the expected command-line options, a self-signed
certificate maker. See docs/OPERATIONS.md for what is tested.
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
    "log-level", "header-timeout", "body-min-rate", "body-memory-max", "integrity-check",
    "disk-free-warn-mb",
    "ui-dir",
}


def help_options():
    r = run_bnstatd("--help")
    names = re.findall(r"^\s+--([a-z][a-z0-9-]*)\s", r.stdout, re.M)
    return set(names) - {"config", "test-config", "help", "version"}


