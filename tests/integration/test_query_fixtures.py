"""Table-driven query tests over the data fixtures in $BNSTAT_FIXTURES/query.

Each case is a directory <case>/ with three files (tests/fixtures/README.md,
"Query fixtures"):

  setup    one request a line, "METHOD PATH JSON-BODY": the uploads (and
           snapshots) to make first; each must succeed (2xx)
  request  "METHOD PATH?QUERY" on the first line; the body, if any, on the
           lines after it
  expect   JSON: {"status": S, "body": B, "subset": bool, "rel": r}

The reply must have status S and a JSON body matching B: with subset, every
key of an object in B must be in the reply with a matching value (keys not
in B are not looked at); without it, objects must have exactly B's keys.
Arrays match element by element and must have B's length. Integers, strings,
booleans and null must be equal; a number of B that is not an integer must
be matched within the relative error r (0: the same double, bit for bit).

Cases whose request is a GET and whose setup files are the same share one
daemon holding that setup (a GET changes nothing); any other request gets a
fresh daemon of its own, so that no case depends on another. The fixture
set is read when the tests run.
"""

import json
import math
import os
import unittest

from bnstat_testlib import Daemon, TestCaseMixin, fixtures_dir

QUERY_FIXTURES = os.path.join(fixtures_dir(), "query")


def load_case(d):
    """(setup [(method, path, body bytes)], (method, path, body or None), expect)."""
    setup = []
    with open(os.path.join(d, "setup"), encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(None, 2)
            if len(parts) < 2:
                raise ValueError("%s/setup:%d: expected 'METHOD PATH [BODY]'" % (d, n))
            setup.append((parts[0], parts[1],
                          parts[2].encode("utf-8") if len(parts) == 3 else None))
    with open(os.path.join(d, "request"), encoding="utf-8") as f:
        first, _, rest = f.read().partition("\n")
    method, path = first.split()
    body = rest.strip().encode("utf-8") or None
    with open(os.path.join(d, "expect"), encoding="utf-8") as f:
        expect = json.load(f)
    for key in ("status", "body"):
        if key not in expect:
            raise ValueError("%s/expect has no %r" % (d, key))
    return setup, (method, path, body), expect


def is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def mismatch(got, want, subset, rel, where="body"):
    """None when got matches want, else a message naming the first difference."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return "%s: %r is not an object" % (where, got)
        if not subset and set(got) != set(want):
            return "%s: keys %s, expected %s" % (where, sorted(got), sorted(want))
        for k, w in want.items():
            if k not in got:
                return "%s: no key %r in %r" % (where, k, sorted(got))
            m = mismatch(got[k], w, subset, rel, "%s.%s" % (where, k))
            if m:
                return m
        return None
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return "%s: %r, expected %d elements" % (where, got, len(want))
        for i, (g, w) in enumerate(zip(got, want)):
            m = mismatch(g, w, subset, rel, "%s[%d]" % (where, i))
            if m:
                return m
        return None
    if isinstance(want, float):
        if not is_number(got):
            return "%s: %r, expected the number %r" % (where, got, want)
        if rel == 0:
            ok = float(got) == want
        else:
            ok = math.isclose(float(got), want, rel_tol=rel, abs_tol=rel * 1e-3)
        return None if ok else "%s: %r, expected %r (rel %g)" % (where, got, want, rel)
    if type(got) is not type(want) or got != want:
        return "%s: %r, expected %r" % (where, got, want)
    return None


class TestQueryFixtures(TestCaseMixin, unittest.TestCase):

    def test_cases(self):
        names = sorted(n for n in os.listdir(QUERY_FIXTURES)
                       if os.path.isdir(os.path.join(QUERY_FIXTURES, n)))
        self.assertGreaterEqual(len(names), 15, "too few cases under %s" % QUERY_FIXTURES)
        shared = {}   # setup -> daemon holding it, for GET requests
        try:
            for name in names:
                with self.subTest(case=name):
                    setup, request, expect = load_case(os.path.join(QUERY_FIXTURES, name))
                    if request[0] == "GET":
                        key = tuple(setup)
                        if key not in shared:
                            shared[key] = self.start_with(name, setup)
                        self.check(name, shared[key], request, expect)
                    else:
                        with self.start_with(name, setup) as daemon:
                            self.check(name, daemon, request, expect)
                            daemon.stop()
            for daemon in shared.values():
                daemon.stop()
        finally:
            for daemon in shared.values():
                daemon.close()

    def start_with(self, name, setup):
        daemon = Daemon()
        try:
            daemon.start()
            for n, (m, p, b) in enumerate(setup, 1):
                st, reply, _ = daemon.request(m, p, b, {"Content-Type": "application/json"})
                self.assertTrue(200 <= st < 300, "%s: setup line %d (%s %s): %r %r"
                                % (name, n, m, p, st, reply))
        except BaseException:
            daemon.close()
            raise
        return daemon

    def check(self, name, daemon, request, expect):
        method, path, body = request
        headers = {"Content-Type": "application/json"} if body is not None else None
        st, reply, _ = daemon.request(method, path, body, headers)
        self.assertEqual(st, expect["status"], "%s: %s %s: status %r, body %r"
                         % (name, method, path, st, reply))
        m = mismatch(reply, expect["body"], expect.get("subset", True), expect.get("rel", 0))
        self.assertIsNone(m, "%s: %s %s: %s" % (name, method, path, m))


if __name__ == "__main__":
    unittest.main()
