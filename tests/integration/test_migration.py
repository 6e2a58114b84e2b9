"""A database written by an older bnstatd opens, migrates and answers the same.

tests/fixtures/schema5/bnstat.db was written by the schema-5 daemon (the
release before bounded history) and expect.json holds the replies that
daemon gave (tests/fixtures/schema5/generate.py made both). The current
daemon opens a copy, migrates it on start (docs/OPERATIONS.md, "The
database"), and must give the same answers, before and after it has merged
the old steps into buckets, and go on accepting uploads.
"""

import importlib.util
import json
import os
import shutil
import time
import unittest

from bnstat_testlib import Daemon, TestCaseMixin, fixtures_dir, rel_err

FIXTURE = os.path.join(fixtures_dir(), "schema5")
REL = 1e-12
_spec = importlib.util.spec_from_file_location("generate", os.path.join(FIXTURE, "generate.py"))
generate = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate)
# fields the schema-5 daemon did not have (docs/API.md, "History")
NEW_FIELDS = {"requested_window", "resolution", "sim_error_bound", "bytes",
              "bucketed_through",
              # docs/API.md, "Precision"
              "target_se", "batches", "batch_noise", "mean_se", "batches_for"}


def same(test, got, want, where):
    if isinstance(want, dict):
        test.assertIsInstance(got, dict, where)
        for k, v in want.items():
            test.assertIn(k, got, "%s: %s missing" % (where, k))
            same(test, got[k], v, "%s.%s" % (where, k))
        extra = set(got) - set(want) - NEW_FIELDS
        test.assertFalse(extra, "%s: unexpected fields %s" % (where, sorted(extra)))
    elif isinstance(want, list):
        test.assertEqual(len(got), len(want), where)
        for i, (g, w) in enumerate(zip(got, want)):
            same(test, g, w, "%s[%d]" % (where, i))
    elif isinstance(want, float) and isinstance(got, (int, float)):
        test.assertLessEqual(rel_err(got, want), REL, "%s: %r, expected %r" % (where, got, want))
    else:
        test.assertEqual(got, want, where)


class TestMigration(TestCaseMixin, unittest.TestCase):

    def setUp(self):
        with open(os.path.join(FIXTURE, "expect.json")) as f:
            self.expect = json.load(f)
        self.d = Daemon("--history-full-steps", "20")
        self.addCleanup(self.d.close)
        shutil.copy(os.path.join(FIXTURE, "bnstat.db"), self.d.db)
        self.d.start()

    def answers_match(self, when):
        for q, want in sorted(self.expect.items()):
            if "/series" in q and when == "bucketed":
                continue  # one point per bucket now: checked below
            st, body, _ = self.d.request("GET", q)
            self.assertEqual(st, 200, "%s %s: %s" % (when, q, body))
            same(self, body, want, "%s %s" % (when, q))

    def test_migrates_and_answers_the_same(self):
        log = "\n".join(self.d.log_lines())
        self.assertRegex(log, r"event=migrated version=6 name=0006_history")
        self.assertRegex(log, r"event=listening .*schema=9")
        # the daemon buckets the old steps on start: steps <= 60 - 20
        deadline = time.monotonic() + 20
        while True:
            st, run, _ = self.d.request("GET", "/v1/runs/old")
            self.assertEqual(st, 200, run)
            dom = {x["name"]: x for x in run["domains"]}
            if dom["default"]["bucketed_through"] == 40:
                break
            self.assertLess(time.monotonic(), deadline,
                            "old steps not bucketed: %r" % (run["domains"],))
            time.sleep(0.05)
        self.assertGreater(run["bytes"], 0, "bytes of a migrated run")
        # every recorded answer: windows of whole buckets or inside the horizon
        self.answers_match("bucketed")
        # series inside the horizon keep their points; older ones are buckets
        for q, want in self.expect.items():
            if "/series" not in q:
                continue
            st, body, _ = self.d.request("GET", q)
            self.assertEqual(st, 200, body)
            same(self, body, want, q)
            self.assertTrue(all(r == 1 for r in body["resolution"]), q)
        st, body, _ = self.d.get("/v1/runs/old/series", {"layer": "bn1", "channel": 0})
        self.assertEqual(st, 200, body)
        self.assertEqual(body["step"][:4], [10, 20, 30, 40])
        self.assertEqual(body["resolution"][:5], [10, 10, 10, 10, 1])
        # the migrated run takes new uploads, refuses new batches in buckets
        doc = {"worker": "w0", "step": 61, "seq": 0,
               "layers": {"bn1": {"count": 8, "mean": [0.0, 1.0, 2.0], "var": [1.0, 1.0, 1.0]}}}
        st, body, _ = self.d.post_batch("old", doc)
        self.assertEqual((st, body.get("duplicate")), (200, False), body)
        doc["step"], doc["worker"] = 12, "w9"
        st, body, _ = self.d.post_batch("old", doc)
        self.assertError((st, body, None), 409, "step_compacted")
        # a retry of batches the old daemon stored is still a retry, in a bucket or not
        for doc in (d for d in generate.docs() if d["step"] in (5, 45)):
            st, body, _ = self.d.post_batch("old", doc)
            self.assertEqual((st, body.get("duplicate")), (200, True), (doc["step"], body))
        self.d.stop()
        self.d.restart()
        self.answers_match("restarted")


if __name__ == "__main__":
    unittest.main()
