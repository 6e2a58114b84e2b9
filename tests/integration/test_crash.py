"""Crash test: kill -9 at random moments under load; every batch counted once.

docs/API.md, "Upload": a 2xx means durable, a batch is identified by
(run, domain, worker, step, seq), and resending an identity already stored
answers 200 "duplicate": true without counting it again.

Eight threads upload batches with unique identities (worker w<t>, steps and
seqs counting up) over keep-alive connections. The main thread kills the
daemon with SIGKILL whenever the number of acknowledged uploads reaches a
random target (seeded RNG, the seed printed), KILLS times or more, and
restarts it on the same database and port. A thread whose request got no
reply sends that batch again after the restart, until it is answered 200:
"duplicate": false (it had not been stored) or true (it had, before the
kill). After every restart each thread also resends a batch it already had
acknowledged, which must answer "duplicate": true (a lost acknowledged batch
would answer false). Once every thread has all its batches acknowledged the
statistics of the whole run must be exactly those of the batches sent, each
once: per layer count and batches equal, mean and var equal to a numpy
float64 reference from the batches as sent, to 1e-12 relative (the merge's
rounding in arrival order). Count and batches see any batch counted twice
or lost exactly; the means would too for a typical batch, which moves them
by far more than the tolerance (the test checks that it does).

Size: BNSTAT_CRASH_BATCHES per thread (default 60) and BNSTAT_CRASH_KILLS
(default 24); BNSTAT_CRASH_SEED picks the seed (default: random, printed).
    BNSTAT_CRASH_BATCHES=1000 BNSTAT_CRASH_KILLS=300 python3 test_crash.py -v
runs a longer campaign (docs/TESTING.md, "Crash test").
"""

import http.client
import os
import random
import sys
import threading
import time
import unittest

import numpy as np

from bnstat_testlib import Daemon, Session, TestCaseMixin, b64_f64

N_THREADS = 8
BATCHES = int(os.environ.get("BNSTAT_CRASH_BATCHES", "60"))
KILLS = int(os.environ.get("BNSTAT_CRASH_KILLS", "24"))
SEED = int(os.environ.get("BNSTAT_CRASH_SEED", str(random.SystemRandom().randrange(1 << 30))))
SEQS = 3                     # batches per worker and step
LAYERS = {"conv1.bn": 6, "layer1.0.bn1": 3, "fc.bn": 1}
REL = 1e-12
RUN = "crash"
DEADLINE = 20.0 + BATCHES * 0.5 + KILLS * 3.0   # seconds for the whole load, generous


class Batch:
    def __init__(self, rng, t, j, mus):
        self.worker, self.step, self.seq = "w%d" % t, 1 + j // SEQS, j % SEQS
        self.kind = "biased" if rng.random() < 0.2 else "unbiased"
        self.layers = {}
        layers = {}
        for name, c in LAYERS.items():
            count = rng.randint(2, 300)
            means = [m + rng.gauss(0.0, 0.5) for m in mus[name]]
            vars_ = [rng.uniform(0.1, 2.0) for _ in range(c)]
            self.layers[name] = (count, means, vars_)
            if rng.random() < 0.5:
                layers[name] = {"count": count, "mean": b64_f64(means), "var": b64_f64(vars_)}
            else:
                layers[name] = {"count": count, "mean": means, "var": vars_}
        self.doc = {"worker": self.worker, "step": self.step, "seq": self.seq,
                    "layers": layers}
        if self.kind == "biased":
            self.doc["var_kind"] = "biased"


def make_batches(rng):
    mus = {name: [rng.choice((-1, 1)) * rng.uniform(1.0, 3.0) for _ in range(c)]
           for name, c in LAYERS.items()}
    return [[Batch(rng, t, j, mus) for j in range(BATCHES)] for t in range(N_THREADS)]


def reference(batches):
    """Per layer (count, batches, mean, population var) in numpy float64."""
    out = {}
    flat = [b for per in batches for b in per]
    for name in LAYERS:
        n = np.array([b.layers[name][0] for b in flat], dtype=np.float64)
        m = np.array([b.layers[name][1] for b in flat], dtype=np.float64)
        v = np.array([b.layers[name][2] for b in flat], dtype=np.float64)
        m2_each = np.array([(b.layers[name][0] - (0 if b.kind == "biased" else 1))
                            for b in flat], dtype=np.float64)[:, None] * v
        total = n.sum()
        mean = (n[:, None] * m).sum(axis=0) / total
        m2 = m2_each.sum(axis=0) + (n[:, None] * (m - mean) ** 2).sum(axis=0)
        out[name] = {"count": int(n.sum()), "batches": len(flat), "mean": mean,
                     "var": m2 / total, "n": n, "m": m}
    return out


class Uploader(threading.Thread):
    """One worker's batches, in order, each until answered 200; and a resend of an
    acknowledged batch after each restart, which must be a duplicate."""

    def __init__(self, test, t, batches, rng):
        super().__init__(daemon=True, name="uploader-%d" % t)
        self.test, self.t, self.batches, self.rng = test, t, batches, rng
        self.acked = []            # indexes of batches answered 200
        self.fresh = 0             # answered duplicate: false
        self.was_stored = 0        # unanswered before a kill, then duplicate: true
        self.resent_dups = 0       # acknowledged, resent, duplicate: true
        self.problems = []
        self.done = threading.Event()
        self._sess = None
        self._gen = 0

    def _post(self, doc):
        """(status, body), or None when there was no reply (the daemon died)."""
        port = self.test.wait_up()
        if port is None:
            return None
        try:
            if self._sess is None:
                self._sess = Session(port, timeout=15)
            st, body, _ = self._sess.post_batch(RUN, doc)
            return st, body
        except (OSError, http.client.HTTPException):
            self._close()
            return None

    def _close(self):
        if self._sess is not None:
            self._sess.close()
            self._sess = None

    def _send_until_answered(self, b):
        """The batch, again and again until a 200: True if it was a duplicate."""
        unanswered = False
        while not self.test.stopping.is_set():
            r = self._post(b.doc)
            if r is None:
                unanswered = True
                self.test.wait_change(self._gen_seen())
                continue
            st, body = r
            if st == 503:  # the writer's queue is full: try again once it drains
                self.test.wait_change(self._gen_seen(), 0.05)
                continue
            if st != 200 or not isinstance(body, dict) or body.get("accepted") is not True:
                self.problems.append("%s step %d seq %d: %r %r"
                                     % (b.worker, b.step, b.seq, st, body))
                return None
            dup = body.get("duplicate")
            if dup is True and not unanswered:
                self.problems.append("%s step %d seq %d: first answer is a duplicate"
                                     % (b.worker, b.step, b.seq))
            return dup
        return None

    def _gen_seen(self):
        return self.test.generation

    def run(self):
        try:
            for i, b in enumerate(self.batches):
                dup = self._send_until_answered(b)
                if dup is None:
                    return
                self.acked.append(i)
                if dup:
                    self.was_stored += 1
                else:
                    self.fresh += 1
                self._resend_after_restart()
            self.done.set()
            # keep the load on (duplicates) until the kills are over
            while not self.test.stopping.is_set():
                self._resend_after_restart(force=True)
        finally:
            self._close()

    def _resend_after_restart(self, force=False):
        gen = self.test.generation
        if not self.acked or (gen == self._gen and not force):
            return
        self._gen = gen
        b = self.batches[self.rng.choice(self.acked)]
        r = self._post(b.doc)
        if r is None:
            self.test.wait_change(gen)
            return
        st, body = r
        if st == 503:
            return
        if st != 200 or not isinstance(body, dict) or body.get("duplicate") is not True:
            self.problems.append("acknowledged %s step %d seq %d resent: %r %r (lost?)"
                                 % (b.worker, b.step, b.seq, st, body))
        else:
            self.resent_dups += 1


class CrashTest(TestCaseMixin, unittest.TestCase):

    def setUp(self):
        self.d = Daemon(keep_port=True)
        self.addCleanup(self.d.close)
        self.cond = threading.Condition()
        self.up = False
        self.generation = 0
        self.stopping = threading.Event()

    # -- what the uploaders wait on --------------------------------------

    def wait_up(self, timeout=60.0):
        """The port once the daemon is up (None when the test is stopping)."""
        with self.cond:
            ok = self.cond.wait_for(lambda: self.up or self.stopping.is_set(), timeout)
            if not ok:
                raise AssertionError("the daemon did not come back within %.0fs" % timeout)
            return None if self.stopping.is_set() else self.d.port

    def wait_change(self, gen, timeout=0.5):
        """Until the daemon was restarted after generation gen (bounded)."""
        with self.cond:
            self.cond.wait_for(lambda: self.generation != gen or self.stopping.is_set(),
                               timeout)

    def acked_total(self):
        return sum(len(u.acked) for u in self.uploaders)

    def start_daemon(self):
        self.d.start()
        deadline = time.monotonic() + 30
        while True:   # /healthz: the store is open and the server answers
            try:
                st, _, _ = self.d.get("/healthz", timeout=5)
                if st == 200:
                    break
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError("no /healthz 200 within 30 s\n" + self.d.log_tail())
            with self.cond:
                self.cond.wait(0.02)
        with self.cond:
            self.up = True
            self.generation += 1
            self.cond.notify_all()

    def kill_daemon(self):
        with self.cond:
            self.up = False
        self.assertEqual(self.d.kill(), -9)

    # -- the test ----------------------------------------------------------

    def test_kill_9_under_load_counts_every_batch_once(self):
        print("test_crash: seed %d (BNSTAT_CRASH_SEED=%d to repeat), %d threads x %d batches, "
              ">= %d kills" % (SEED, SEED, N_THREADS, BATCHES, KILLS), file=sys.stderr)
        rng = random.Random(SEED)
        batches = make_batches(rng)
        ref = reference(batches)
        total = N_THREADS * BATCHES
        self.uploaders = [Uploader(self, t, batches[t], random.Random(rng.random()))
                          for t in range(N_THREADS)]
        self.start_daemon()
        for u in self.uploaders:
            u.start()
        started = time.monotonic()
        kills = 0
        # kill targets spread over the load, then more while only resends are left
        step_max = max(2, 2 * total // (KILLS + KILLS // 2))
        try:
            while kills < KILLS or not all(u.done.is_set() for u in self.uploaders):
                self.assertLess(time.monotonic() - started, DEADLINE,
                                "the load did not finish: %d of %d acknowledged, %d kills"
                                % (self.acked_total(), total, kills))
                problems = [p for u in self.uploaders for p in u.problems]
                self.assertEqual(problems, [])
                target = self.acked_total() + rng.randint(1, step_max)
                if kills >= KILLS:
                    target = total + 1   # no more kills: wait for the rest
                while self.acked_total() < min(target, total) and \
                        not all(u.done.is_set() for u in self.uploaders):
                    if time.monotonic() - started > DEADLINE:
                        break
                    with self.cond:
                        self.cond.wait(0.005)
                if kills >= KILLS:
                    continue
                self.kill_daemon()
                kills += 1
                self.start_daemon()
        finally:
            self.stopping.set()
            with self.cond:
                self.cond.notify_all()
            for u in self.uploaders:
                u.join(30)
        self.assertFalse(any(u.is_alive() for u in self.uploaders), "an uploader hangs")
        problems = [p for u in self.uploaders for p in u.problems]
        self.assertEqual(problems, [])
        self.assertEqual(self.acked_total(), total)
        self.assertGreaterEqual(kills, KILLS)
        fresh = sum(u.fresh for u in self.uploaders)
        stored = sum(u.was_stored for u in self.uploaders)
        dups = sum(u.resent_dups for u in self.uploaders)
        print("test_crash: %d kills, %d batches: %d stored on the first answer, %d found "
              "stored when resent after a kill, %d acknowledged ones resent as duplicates"
              % (kills, total, fresh, stored, dups), file=sys.stderr)
        self.assertEqual(fresh + stored, total)
        self.assertGreater(dups, 0)

        # a last kill and restart: the statistics are on disk
        self.kill_daemon()
        self.start_daemon()
        st, info, _ = self.d.get("/v1/runs/" + RUN)
        self.assertEqual(st, 200, info)
        self.assertEqual(info["batches"], total)
        steps = 1 + (BATCHES - 1) // SEQS
        st, body, _ = self.d.get("/v1/runs/%s/stats" % RUN, {"step": steps, "window": steps})
        self.assertEqual(st, 200, body)
        self.assertEqual(set(body["layers"]), set(LAYERS))
        for name, r in ref.items():
            got = body["layers"][name]
            self.assertEqual(got["count"], r["count"], name)
            self.assertEqual(got["batches"], r["batches"], name)
            self.assertAllRelClose(got["mean"], list(r["mean"]), REL, name + " mean")
            self.assertAllRelClose(got["var"], list(r["var"]), REL, name + " var")
            # count and batches see any batch counted twice or lost, exactly;
            # the mean's tolerance too, for a typical batch (the median one)
            shift = np.abs(r["n"][:, None] * (r["m"] - r["mean"])) / (r["count"] + r["n"][:, None])
            typical = np.median(shift.max(axis=1)) / np.abs(r["mean"]).max()
            self.assertGreater(typical, 1000 * REL, name)


if __name__ == "__main__":
    unittest.main()
