"""GET /v1/runs a page at a time and DELETE /v1/runs/{run}/snapshots/{label}
(docs/API.md, "Runs" and "Deleting a snapshot"), end to end.

  * 2,500 runs paged through with limit and next: every run exactly once, in
    byte order, with the counts of its upload; the pages' sizes; the default
    limit of 1000 and the last page without next;
  * prefixes are literal: '_' and '%' are no wildcards (a LIKE would match
    them), a prefix of a whole name, an empty prefix, after= the last name;
  * bad parameters: 400/422 naming the parameter;
  * deleting a snapshot: 204 without a body, 404 after, the label created
    again with other parameters, other snapshots and the run untouched, and
    the deletion still there after SIGKILL and a restart.

The expected names are sorted here by Python (bytes order), not read back
from the daemon. Run:

  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \
  PYTHONPATH=tests/integration python3 tests/integration/test_runs_pages.py -v
"""

import queue
import threading
import unittest

from bnstat_testlib import Daemon, Session, TestCaseMixin, encode_doc, with_query

N_RUNS = 2500


def upload(step, mean=1.0):
    return {"worker": "w0", "step": step, "seq": 0,
            "layers": {"bn": {"count": 4, "mean": [mean, -mean], "var": [1.0, 2.0]}}}


def upload_all(port, items, threads=8):
    """POST every (run, doc) of items from a few keep-alive connections at once
    (the writer commits them in groups); fails on any reply but 200."""
    work = queue.Queue()
    for it in items:
        work.put(it)
    errors = []

    def worker():
        s = Session(port)
        try:
            while True:
                try:
                    run, doc = work.get_nowait()
                except queue.Empty:
                    return
                st, body, _ = s.post_batch(run, doc)
                if st != 200:
                    errors.append((run, st, body))
        finally:
            s.close()

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise AssertionError("uploads refused: %r" % errors[:5])


class TestRunsPages(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--synchronous", "normal")
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        # names of every shape the alphabet allows, so that byte order matters:
        # '-' < '.' < digits < upper case < '_' < lower case
        names = ["run%04d" % i for i in range(N_RUNS - 12)]
        names += ["p_x", "p_y", "pXx", "p-x", "p.x", "p", "px", "p%", "a_b", "aab", "Z", "z"]
        names.remove("p%")            # not a valid name: stands for a '%' no run can hold
        names.append("p.x.y")
        assert len(names) == N_RUNS and len(set(names)) == N_RUNS
        cls.steps = {n: 1 + i % 7 for i, n in enumerate(names)}
        upload_all(cls.d.port, [(n, upload(cls.steps[n])) for n in names])
        cls.names = sorted(names, key=lambda n: n.encode())

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    def runs(self, **params):
        st, body, _ = self.d.get(with_query("/v1/runs", params))
        self.assertEqual(st, 200, body)
        return body

    def names_of(self, **params):
        body = self.runs(**params)
        return [r["name"] for r in body["runs"]], body.get("next")

    def walk(self, **params):
        """Every page of params, following next; the pages' runs."""
        pages, after = [], None
        while True:
            p = dict(params)
            if after is not None:
                p["after"] = after
            body = self.runs(**p)
            pages.append(body["runs"])
            if "next" not in body:
                return pages
            self.assertEqual(body["next"], body["runs"][-1]["name"])
            after = body["next"]
            self.assertLess(len(pages), N_RUNS, "next never ends")

    def test_paging_through_every_run(self):
        for limit in (1000, 333, 2500, 2499):
            with self.subTest(limit=limit):
                pages = self.walk(limit=limit)
                sizes = [len(p) for p in pages]
                full, rest = divmod(N_RUNS, limit)
                self.assertEqual(sizes, [limit] * full + ([rest] if rest else []))
                got = [r for p in pages for r in p]
                self.assertEqual([r["name"] for r in got], self.names)
        for r in got:
            self.assertEqual((r["batches"], r["layers"], r["domains"], r["workers"]),
                             (1, 1, 1, 1), r)
            step = self.steps[r["name"]]
            self.assertEqual(r["steps"], {"min": step, "max": step}, r)

    def test_default_limit_is_1000(self):
        names, nxt = self.names_of()
        self.assertEqual(names, self.names[:1000])
        self.assertEqual(nxt, self.names[999])
        names, nxt = self.names_of(after=nxt)
        self.assertEqual(names, self.names[1000:2000])
        names, nxt = self.names_of(after=nxt)
        self.assertEqual(names, self.names[2000:])
        self.assertIsNone(nxt, "the last page has no next")

    def test_a_page_that_ends_at_the_last_run_has_no_next(self):
        names, nxt = self.names_of(after=self.names[-4], limit=3)
        self.assertEqual(names, self.names[-3:])
        self.assertIsNone(nxt)
        names, nxt = self.names_of(after=self.names[-1])
        self.assertEqual((names, nxt), ([], None))
        names, nxt = self.names_of(after="zzz", limit=1)
        self.assertEqual((names, nxt), ([], None))

    def test_prefixes_are_literal(self):
        def expect(prefix):
            return [n for n in self.names if n.startswith(prefix)]

        cases = ["p", "p_", "p.", "p.x", "pX", "px", "p%", "%", "_", "a_", "run00", "run2",
                 "run2487", "Z", "z", "q", "p.x.y", "p.x.y.z"]
        for prefix in cases:
            with self.subTest(prefix=prefix):
                pages = self.walk(prefix=prefix, limit=2)
                self.assertEqual([r["name"] for p in pages for r in p], expect(prefix))
        # what a LIKE 'p_%' or '%' would have matched instead
        self.assertEqual(self.names_of(prefix="p_")[0], ["p_x", "p_y"])
        self.assertEqual(self.names_of(prefix="%")[0], [])
        self.assertEqual(self.names_of(prefix="_")[0], [])
        self.assertEqual(len(self.names_of(prefix="run", limit=10000)[0]), N_RUNS - 12)
        # an empty prefix is none
        self.assertEqual(self.names_of(prefix="", limit=5)[0], self.names[:5])

    def test_prefix_with_after(self):
        self.assertEqual(self.names_of(prefix="p", after="p")[0],
                         ["p-x", "p.x", "p.x.y", "pXx", "p_x", "p_y", "px"])
        self.assertEqual(self.names_of(prefix="p", after="p.x", limit=2),
                         (["p.x.y", "pXx"], "pXx"))
        self.assertEqual(self.names_of(prefix="p", after="a")[0][:2], ["p", "p-x"])
        self.assertEqual(self.names_of(prefix="p", after="px"), ([], None))
        self.assertEqual(self.names_of(prefix="p", after="q"), ([], None))

    def test_bad_parameters_name_the_parameter(self):
        cases = [({"limit": "0"}, 422, "invalid_value", "limit"),
                 ({"limit": "-5"}, 422, "invalid_value", "limit"),
                 ({"limit": "10001"}, 422, "invalid_value", "limit"),
                 ({"limit": "x"}, 400, "invalid_parameter", "limit"),
                 ({"limit": ""}, 400, "invalid_parameter", "limit"),
                 ({"limit": "1e3"}, 400, "invalid_parameter", "limit"),
                 ({"limit": " 5"}, 400, "invalid_parameter", "limit"),
                 ({"prefix": "p" * 129}, 422, "invalid_value", "prefix"),
                 ({"after": "a" * 129}, 422, "invalid_value", "after")]
        for params, status, code, path in cases:
            with self.subTest(params=params):
                self.assertError(self.d.get(with_query("/v1/runs", params)), status, code, path)
        self.assertEqual(len(self.runs(limit=10000)["runs"]), N_RUNS)
        self.assertEqual(len(self.runs(prefix="p" * 128)["runs"]), 0)


class TestDeleteSnapshot(TestCaseMixin, unittest.TestCase):

    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.close)
        self.d.start()

    def must(self, method, path, doc=None, status=200):
        st, body, hdrs = self.d.request(method, path, encode_doc(doc) if doc else None,
                                        {"Content-Type": "application/json"} if doc else None)
        self.assertEqual(st, status, "%s %s: %r" % (method, path, body))
        return body, hdrs

    def test_delete_then_create_again(self):
        d = self.d
        for step, mean in ((1, 1.0), (2, 3.0)):
            self.assertEqual(d.post_batch("r", upload(step, mean))[0], 200)
        first, _ = self.must("POST", "/v1/runs/r/snapshots", {"label": "final", "step": 1}, 201)
        self.assertEqual(first["layers"]["bn"]["mean"], [1.0, -1.0])
        self.must("POST", "/v1/runs/r/snapshots", {"label": "keep", "step": 2}, 201)
        # immutable while it exists: other parameters are a conflict
        self.assertError(d.request("POST", "/v1/runs/r/snapshots",
                                   encode_doc({"label": "final", "step": 2}),
                                   {"Content-Type": "application/json"}),
                         409, "conflict", "label")

        st, raw, hdrs = d.request_raw("DELETE", "/v1/runs/r/snapshots/final")
        self.assertEqual((st, raw), (204, b""))
        self.assertIsNone(hdrs.get("Content-Type"))
        self.assertError(d.get("/v1/runs/r/snapshots/final"), 404, "not_found", "label")
        self.assertError(d.request("DELETE", "/v1/runs/r/snapshots/final"), 404, "not_found",
                         "label")
        self.assertError(d.request("DELETE", "/v1/runs/nope/snapshots/final"), 404,
                         "not_found", "run")
        self.assertError(d.request("DELETE", "/v1/runs/r/snapshots/b%21d"), 422,
                         "invalid_value", "label")
        self.assertError(d.request("DELETE", "/v1/runs/b%21d/snapshots/final"), 422,
                         "invalid_value", "run")
        st, _, hdrs = d.request("PUT", "/v1/runs/r/snapshots/keep")
        self.assertEqual((st, hdrs.get("Allow")), (405, "GET, DELETE"))
        listed, _ = self.must("GET", "/v1/runs/r/snapshots")
        self.assertEqual([s["label"] for s in listed["snapshots"]], ["keep"])
        self.assertEqual(self.must("GET", "/v1/runs/r")[0]["batches"], 2, "the run is untouched")

        # the label again, with what was a conflict before
        again, _ = self.must("POST", "/v1/runs/r/snapshots", {"label": "final", "step": 2}, 201)
        self.assertEqual((again["step"], again["layers"]["bn"]["mean"]), (2, [3.0, -3.0]))

        # durable once answered: a SIGKILL right after the 204 loses nothing
        st, raw, _ = d.request_raw("DELETE", "/v1/runs/r/snapshots/keep")
        self.assertEqual(st, 204, raw)
        d.kill()
        d.start()
        self.assertError(d.get("/v1/runs/r/snapshots/keep"), 404, "not_found", "label")
        got, _ = self.must("GET", "/v1/runs/r/snapshots/final")
        self.assertEqual(got["layers"], again["layers"])
        listed, _ = self.must("GET", "/v1/runs/r/snapshots")
        self.assertEqual([s["label"] for s in listed["snapshots"]], ["final"])
        d.stop()

    def test_deleting_the_run_after_its_snapshot(self):
        d = self.d
        self.assertEqual(d.post_batch("gone", upload(1))[0], 200)
        self.must("POST", "/v1/runs/gone/snapshots", {"label": "s"}, 201)
        st, _, _ = d.request_raw("DELETE", "/v1/runs/gone/snapshots/s")
        self.assertEqual(st, 204)
        self.must("DELETE", "/v1/runs/gone")
        self.assertError(d.request("DELETE", "/v1/runs/gone/snapshots/s"), 404, "not_found",
                         "run")
        d.stop()


if __name__ == "__main__":
    unittest.main()
