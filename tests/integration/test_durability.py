"""Durability: a 2xx upload survives SIGKILL, and nothing is counted twice.

docs/API.md, "Upload": a 2xx reply means the batch is durable; killing the
daemon right after (even with SIGKILL) loses nothing and counts nothing twice.

Eight threads upload 400 distinct batches over keep-alive connections. Each
batch answered 200 (duplicate:false) is "acknowledged". The daemon is then
killed (after the last reply, or in the middle of the load) or stopped with
SIGTERM while uploads are in flight, and restarted on the same database.
The statistics read after the restart must be exactly those of the
acknowledged batches plus, for a request that was in flight when the
process died, possibly that batch too -- once. Which in-flight batches made
it is learned afterwards by resending them (duplicate:true = it was there).
"""

import http.client
import random
import threading
import time
import unittest

from bnstat_testlib import (Daemon, Session, TestCaseMixin, b64_f64, encode_doc, exact_merge,
                            is_json_int)

N_THREADS = 8
N_BATCHES = 400
STEPS = 5
LAYERS = {"conv1.bn": 8, "layer1.0.bn1": 4}
REL = 1e-12


class Batch:
    def __init__(self, idx, worker, step, seq, doc, refs):
        self.idx, self.worker, self.step, self.seq = idx, worker, step, seq
        self.doc = doc
        self.refs = refs       # layer -> (count, means, vars, var_kind) as uploaded


def make_batches(seed):
    rng = random.Random(seed)
    mus = {name: [rng.choice((-1, 1)) * rng.uniform(1.0, 3.0) for _ in range(c)]
           for name, c in LAYERS.items()}
    out = []
    for i in range(N_BATCHES):
        t, j = i % N_THREADS, i // N_THREADS
        worker, step, seq = "w%d" % t, 1 + j % STEPS, j // STEPS
        kind = "biased" if i % 7 == 0 else "unbiased"
        layers, refs = {}, {}
        for name in LAYERS:
            count = rng.randint(2, 256)
            means = [m + rng.gauss(0.0, 0.3) for m in mus[name]]
            vars_ = [rng.uniform(0.2, 3.0) for _ in mus[name]]
            refs[name] = (count, means, vars_, kind)
            if i % 2:
                layers[name] = {"count": count, "mean": b64_f64(means), "var": b64_f64(vars_)}
            else:
                layers[name] = {"count": count, "mean": means, "var": vars_}
        doc = {"worker": worker, "step": step, "seq": seq, "layers": layers}
        if kind == "biased":
            doc["var_kind"] = "biased"
        out.append(Batch(i, worker, step, seq, doc, refs))
    return out


ACKED, DUPLICATE, REJECTED, UNKNOWN = "acked", "duplicate", "rejected", "unknown"


class Load:
    """N_THREADS uploaders, thread t sending batches t, t+8, ... in order.

    outcome[idx] is ACKED, DUPLICATE, (REJECTED, status, body) or UNKNOWN (no
    reply: the request may or may not have reached the daemon); a batch a
    thread never got to has no entry. A thread stops at its first UNKNOWN or
    503.
    """

    def __init__(self, port, run, batches):
        self.port, self.run, self.batches = port, run, batches
        self.outcome = {}
        self.cond = threading.Condition()
        self.acked = 0
        self.threads = [threading.Thread(target=self._work, args=(t,), daemon=True)
                        for t in range(N_THREADS)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def join(self, timeout=60):
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self.threads)

    def wait_acked(self, n, timeout=60):
        with self.cond:
            return self.cond.wait_for(lambda: self.acked >= n or
                                      len(self.outcome) == len(self.batches), timeout)

    def _record(self, idx, what):
        with self.cond:
            self.outcome[idx] = what
            if what == ACKED:
                self.acked += 1
            self.cond.notify_all()

    def _work(self, t):
        sess = Session(self.port, timeout=30)
        try:
            for b in self.batches[t::N_THREADS]:
                try:
                    st, body, _ = sess.post_batch(self.run, b.doc)
                except (OSError, http.client.HTTPException, ValueError):
                    self._record(b.idx, UNKNOWN)
                    return
                if st == 200 and body == {"accepted": True, "duplicate": False, "layers": 2}:
                    self._record(b.idx, ACKED)
                elif st == 200 and isinstance(body, dict) and body.get("duplicate") is True:
                    self._record(b.idx, DUPLICATE)
                else:
                    self._record(b.idx, (REJECTED, st, body))
                    if st == 503:
                        return
        finally:
            sess.close()

    def by_outcome(self):
        acked = [b for b in self.batches if self.outcome.get(b.idx) == ACKED]
        unknown = [b for b in self.batches if self.outcome.get(b.idx) == UNKNOWN]
        unsent = [b for b in self.batches if b.idx not in self.outcome]
        odd = {i: o for i, o in self.outcome.items() if o not in (ACKED, UNKNOWN)}
        return acked, unknown, unsent, odd


class DurabilityTest(TestCaseMixin, unittest.TestCase):

    def setUp(self):
        self.d = Daemon()
        self.addCleanup(self.d.close)
        self.d.start()

    # -- reading and checking ----------------------------------------------

    def fetch(self, run):
        """Everything the checks look at, read now (before any resend)."""
        out = {}
        for est in ("population", "mean_of_batch_var"):
            for s in range(1, STEPS + 1):
                out[(s, 1, est)] = self.d.stats(run, step=s, window=1, estimator=est)[:2]
            out[(STEPS, STEPS, est)] = self.d.stats(run, step=STEPS, window=STEPS,
                                                    estimator=est)[:2]
        out["run"] = self.d.get("/v1/runs/%s" % run)[:2]
        return out

    def fetch_raw(self, run):
        paths = ["/v1/runs/%s/stats?step=%d&estimator=%s" % (run, s, e)
                 for s in range(1, STEPS + 1) for e in ("population", "mean_of_batch_var")]
        paths.append("/v1/runs/%s/stats?window=%d" % (run, STEPS))
        paths.append("/v1/runs/%s" % run)
        return [(p,) + self.d.request_raw("GET", p)[:2] for p in paths]

    def check(self, fetched, present, what):
        """fetched (from fetch()) holds exactly the batches `present`, once each."""
        st, info = fetched["run"]
        self.assertEqual(st, 200, "%s: run: %r" % (what, info))
        self.assertEqual(info["batches"], len(present),
                         "%s: the run holds %r batches, expected %d"
                         % (what, info["batches"], len(present)))
        for key, (st, body) in fetched.items():
            if key == "run":
                continue
            step, window, est = key
            sel = [b for b in present if step - window < b.step <= step]
            w = "%s: step %d window %d %s" % (what, step, window, est)
            if not sel:
                self.assertEqual(st, 404, "%s: expected 404 (no data), got %r %r" % (w, st, body))
                continue
            self.assertEqual(st, 200, "%s: %r" % (w, body))
            self.assertEqual(set(body["layers"]), set(LAYERS), w)
            for name, c in LAYERS.items():
                ref = exact_merge([b.refs[name] for b in sel])
                got = body["layers"][name]
                self.assertTrue(is_json_int(got["batches"]) and is_json_int(got["count"]), got)
                self.assertEqual(got["batches"], len(sel),
                                 "%s %s: %d batches stored, %d expected (lost or doubled)"
                                 % (w, name, got["batches"], len(sel)))
                self.assertEqual(got["count"], ref["count"], "%s %s count" % (w, name))
                pre = "pop_" if est == "population" else "mbv_"
                what_layer = "%s %s" % (w, name)
                self.assertAllRelClose(got["mean"], ref[pre + "mean"], REL, what_layer + " mean")
                self.assertAllRelClose(got["var"], ref[pre + "var"], REL, what_layer + " var")

    def resend(self, run, batches, expect_duplicate, what):
        present = []
        for b in batches:
            st, body, _ = self.d.post_batch(run, b.doc)
            self.assertEqual(st, 200, "%s: resend of batch %d: %r %r" % (what, b.idx, st, body))
            if expect_duplicate is not None:
                self.assertIs(body.get("duplicate"), expect_duplicate,
                              "%s: resend of batch %d (%s step %d seq %d): %r"
                              % (what, b.idx, b.worker, b.step, b.seq, body))
            if body.get("duplicate") is True:
                present.append(b)
        return present

    def recover_and_check(self, run, load, batches, rejected_must_be_absent=()):
        """After a restart: stats == acked + whichever in-flight batches made
        it; every acked is a duplicate when resent; afterwards all are there."""
        acked, unknown, unsent, odd = load.by_outcome()
        fetched = self.fetch(run)
        # which in-flight batches are stored? a resend tells (and adds the others)
        present_unknown = self.resend(run, unknown, None, "in flight at the stop")
        self.check(fetched, acked + present_unknown, "after restart")
        # the acknowledged ones: all duplicates, and resending them changes nothing
        raw_before = self.fetch_raw(run)
        self.resend(run, acked, True, "acknowledged")
        self.assertEqual(self.fetch_raw(run), raw_before,
                         "resending acknowledged batches changed the statistics")
        self.resend(run, list(rejected_must_be_absent), False, "refused before the stop")
        self.resend(run, unsent, False, "never sent")
        self.check(self.fetch(run), batches, "after resending everything")
        return acked, unknown, unsent, odd

    # -- the tests -------------------------------------------------------------

    def test_reads_during_load_see_whole_acknowledged_batches(self):
        # Readers polling while 8 writers upload: every reply is a consistent
        # snapshot (each batch carries both layers, so both layers always
        # show the same number of batches), never goes backwards, and
        # includes every batch acknowledged before the read began.
        run = "dur-read"
        batches = make_batches(4)
        load = Load(self.d.port, run, batches)
        problems = []
        stop = threading.Event()

        def reader():
            last = 0
            while not stop.is_set():
                with load.cond:
                    acked_before = load.acked
                st, body, _ = self.d.stats(run, step=STEPS, window=STEPS)
                if st == 404 and acked_before == 0:
                    continue
                if st != 200:
                    problems.append("stats answered %r %r" % (st, body))
                    return
                k = {name: body["layers"][name]["batches"] for name in LAYERS
                     if name in body["layers"]}
                if len(k) != len(LAYERS) or len(set(k.values())) != 1:
                    problems.append("layers disagree on the batches merged: %r" % k)
                    return
                n = k["conv1.bn"]
                if n < acked_before:
                    problems.append("read %d batches after %d were acknowledged"
                                    % (n, acked_before))
                    return
                if n < last:
                    problems.append("batches went from %d back to %d" % (last, n))
                    return
                last = n

        readers = [threading.Thread(target=reader, daemon=True) for _ in range(2)]
        for t in readers:
            t.start()
        load.start()
        finished = load.join(90)
        stop.set()
        for t in readers:
            t.join(30)
        self.assertTrue(finished, "uploads did not finish")
        self.assertEqual(problems, [])
        acked, unknown, unsent, odd = load.by_outcome()
        self.assertEqual((len(acked), len(unknown), len(unsent), odd), (N_BATCHES, 0, 0, {}))
        self.check(self.fetch(run), batches, "after the load")

    def test_sigkill_right_after_the_last_reply(self):
        run = "dur-a"
        batches = make_batches(1)
        load = Load(self.d.port, run, batches).start()
        self.assertTrue(load.join(90), "uploads did not finish")
        self.d.kill()
        acked, unknown, unsent, odd = load.by_outcome()
        self.assertEqual((len(acked), len(unknown), len(unsent), odd), (N_BATCHES, 0, 0, {}),
                         "without a kill every upload must be acknowledged")
        self.d.restart()
        self.check(self.fetch(run), batches, "after SIGKILL and restart")
        before = self.fetch_raw(run)
        self.resend(run, batches, True, "resent after restart")
        self.assertEqual(self.fetch_raw(run), before, "resending changed the statistics")
        self.d.stop()

    def test_sigkill_in_the_middle_of_the_load(self):
        run = "dur-b"
        batches = make_batches(2)
        load = Load(self.d.port, run, batches).start()
        self.assertTrue(load.wait_acked(N_BATCHES * 3 // 8, 60), "uploads too slow")
        self.d.kill()
        self.assertTrue(load.join(60), "uploaders hang after the kill")
        acked, unknown, unsent, odd = load.by_outcome()
        self.assertEqual(odd, {}, "no upload may be refused or be a duplicate before the kill")
        self.assertGreaterEqual(len(acked), N_BATCHES * 3 // 8)
        self.assertLess(len(acked), N_BATCHES, "the kill came after the whole load; "
                        "the test did not test anything in flight")
        self.d.restart()
        self.recover_and_check(run, load, batches)
        self.d.stop()

    def test_sigterm_with_uploads_in_flight(self):
        run = "dur-c"
        batches = make_batches(3)
        load = Load(self.d.port, run, batches).start()
        self.assertTrue(load.wait_acked(N_BATCHES // 4, 60), "uploads too slow")
        with load.cond:
            at_signal = len(load.outcome)
        rc = self.d.terminate(timeout=30)
        self.assertTrue(load.join(60), "uploaders hang after SIGTERM")
        self.assertEqual(rc, 0, "bnstatd exit status after SIGTERM\n" + self.d.log_tail())
        acked, unknown, unsent, odd = load.by_outcome()
        refused = []
        for idx, o in odd.items():
            # the only acceptable refusal while stopping is 503 (not stored)
            self.assertTrue(o[0] == REJECTED and o[1] == 503,
                            "batch %d during SIGTERM: %r" % (idx, o))
            refused.append(batches[idx])
        self.assertGreaterEqual(len(acked), N_BATCHES // 4)
        self.assertLess(at_signal, N_BATCHES, "the load was over before SIGTERM; "
                        "the test did not test anything in flight")
        self.d.restart()
        self.recover_and_check(run, load, batches, refused)
        self.d.stop()


    def test_sigterm_does_not_wait_for_idle_connections(self):
        # A client that keeps an idle keep-alive connection (a connection
        # pool, a dashboard) has nothing in flight: a graceful stop has
        # nothing to wait for and should be prompt.
        run = "dur-idle"
        doc = make_batches(5)[0].doc
        sess = Session(self.d.port)
        self.addCleanup(sess.close)
        st, body, _ = sess.post_batch(run, doc)
        self.assertEqual(st, 200, body)
        t0 = time.monotonic()
        rc = self.d.terminate(timeout=30)
        took = time.monotonic() - t0
        self.assertEqual(rc, 0, self.d.log_tail())
        self.assertLess(took, 5.0, "SIGTERM with one idle keep-alive connection open and no "
                        "request in flight took %.1f s to exit" % took)
        self.d.restart()
        self.resend(run, [make_batches(5)[0]], True, "acknowledged before SIGTERM")

    def test_snapshot_survives_sigkill_and_later_uploads(self):
        # A 201 for a snapshot is as durable as a 200 for an upload, and a
        # snapshot never changes afterwards.
        run = "dur-snap"
        batches = make_batches(6)
        for b in batches[:40]:
            st, body, _ = self.d.post_batch(run, b.doc)
            self.assertEqual(st, 200, body)
        st, created, _ = self.d.request("POST", "/v1/runs/%s/snapshots" % run,
                                        encode_doc({"label": "frozen"}))
        self.assertEqual(st, 201, created)
        self.d.kill()
        self.d.restart()
        st, after, _ = self.d.get("/v1/runs/%s/snapshots/frozen" % run)
        self.assertEqual(st, 200, after)
        self.assertEqual(after, created)
        # uploads at the snapshot's step and later ones leave it as it was
        for b in batches[40:]:
            st, body, _ = self.d.post_batch(run, b.doc)
            self.assertEqual(st, 200, body)
        st, retry, _ = self.d.request("POST", "/v1/runs/%s/snapshots" % run,
                                      encode_doc({"label": "frozen"}))
        self.assertEqual(st, 200, retry)
        self.assertEqual(retry, created)
        self.d.kill()
        self.d.restart()
        st, final, _ = self.d.get("/v1/runs/%s/snapshots/frozen" % run)
        self.assertEqual((st, final), (200, created))

if __name__ == "__main__":
    unittest.main()
