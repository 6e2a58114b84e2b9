"""A full disk and a damaged database while the daemon runs
(docs/OPERATIONS.md, "A full disk", "A damaged database"; docs/API.md,
"Errors", "Health").

The tests that always run use tests/bnstatd_fault, the daemon linked with
the fault-injecting SQLite VFS of tests/faultvfs.c and driven through its
control file ($BNSTAT_FAULT_VFS, docs/TESTING.md "Disk faults"): writes
fail with SQLITE_FULL, SQLITE_IOERR_WRITE or SQLITE_CORRUPT from a chosen
moment on. Where the test may mount one (root), a real tmpfs of a few MiB
is filled up too; elsewhere that test is skipped with the reason.

Checked: uploads and the other writes get 503 read_only or
database_damaged (never a 2xx for what was not stored), /healthz fails
with the reason, /metrics shows the state, GETs go on, the log says what
happened and where to look, writing resumes when space returns (also
after a start on a full disk), and after recovery every batch is stored
exactly once: the same counts and means as a daemon that never failed.
"""

import errno

from ops_testlib import *  # noqa: F401,F403 (the helpers and the modules they import)
from ops_testlib import parse_prometheus, sample

FAULT_BINARY = os.environ.get("BNSTATD_FAULT") or os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(BNSTATD))), "tests", "bnstatd_fault")

RUN = "disk"
C = 8


def batch(worker, step):
    rng = random.Random("%s/%d" % (worker, step))
    layers = {"bn%d" % i: layer(C, mean0=float(i), count=16, rng=rng)[0] for i in range(2)}
    return doc(step, worker=worker, layers=layers)


class FaultDaemonMixin(TestCaseMixin):

    def setUp(self):
        if not (os.path.isfile(FAULT_BINARY) and os.access(FAULT_BINARY, os.X_OK)):
            self.fail("%s is not built: `make tests/bnstatd_fault` (or set BNSTATD_FAULT)"
                      % FAULT_BINARY)
        self.tmp = tempfile.mkdtemp(prefix="bnstat-faults-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.ctl = os.path.join(self.tmp, "fault")
        self.fault("off")

    def fault(self, line):
        """Arm the VFS (`full`, `ioerr`, `corrupt`, with `after=N`) or `off`."""
        tmp = self.ctl + ".new"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.rename(tmp, self.ctl)      # a new inode: the VFS sees the change at once

    def daemon(self, *args):
        d = Daemon(*args, binary=FAULT_BINARY, env={"BNSTAT_FAULT_VFS": self.ctl})
        self.addCleanup(d.close)
        return d

    def health(self, d):
        st, body, hdrs = d.get("/healthz")
        return st, body, hdrs

    def wait_writable(self, d, timeout=10):
        return wait_until(lambda: self.health(d)[0] == 200, timeout, 0.05,
                          "/healthz 200 (writable again)")

    def state_metric(self, d):
        st, text, _ = d.get_raw("/metrics")
        self.assertEqual(st, 200, text)
        fams = parse_prometheus(text.decode())
        states = {s: sample(fams, "bnstat_database_state", state=s)
                  for s in ("writable", "read_only", "damaged")}
        self.assertEqual(sum(states.values()), 1, states)
        return [s for s, v in states.items() if v == 1][0], fams

    def assertRefused(self, reply, code, what=""):
        """A write refused because the database cannot be written."""
        self.assertError(reply, 503, code, what=what)
        retry = reply[2].get("Retry-After")
        self.assertEqual(retry, "5" if code == "read_only" else "60", what)

    def assertSameTotals(self, d, ref, step, window):
        st, got, _ = d.stats(RUN, step=step, window=window)
        st2, want, _ = ref.stats(RUN, step=step, window=window)
        self.assertEqual((st, st2), (200, 200), (got, want))
        for name, w in want["layers"].items():
            g = got["layers"][name]
            self.assertEqual((g["count"], g["batches"]), (w["count"], w["batches"]), name)
            for key in ("mean", "var"):
                for a, b in zip(g[key], w[key]):
                    self.assertRelClose(a, b, 1e-12, "%s %s" % (name, key))


class TestFullDisk(FaultDaemonMixin, unittest.TestCase):

    def test_full_disk_refuses_writes_serves_reads_and_recovers(self):
        d = self.daemon()
        d.start()
        sent = [(w, step) for step in range(1, 6) for w in ("w0", "w1")]
        for w, step in sent:
            st, body, _ = d.post_batch(RUN, batch(w, step))
            self.assertEqual((st, body.get("duplicate")), (200, False), body)
        st, before, _ = d.stats(RUN, step=5, window=5)
        self.assertEqual(st, 200, before)
        st, snap, _ = d.request("POST", "/v1/runs/%s/snapshots" % RUN,
                                json.dumps({"label": "s1"}), {"Content-Type": "application/json"})
        self.assertEqual(st, 201, snap)

        self.fault("full")
        refused = [("w0", 6), ("w1", 6)]
        for w, step in refused:
            self.assertRefused(d.post_batch(RUN, batch(w, step)), "read_only", "upload")
        d.wait_log(r"level=error event=database_read_only .*error=\"database or disk is full\""
                   r".*action=refusing_writes reads=served.*OPERATIONS\.md, A full disk")
        # the other writes too, and before any of them is queued
        self.assertRefused(d.request("POST", "/v1/runs/%s/snapshots" % RUN,
                                     json.dumps({"label": "s2"}),
                                     {"Content-Type": "application/json"}),
                           "read_only", "snapshot")
        self.assertRefused(d.request("DELETE", "/v1/runs/%s/snapshots/s1" % RUN), "read_only",
                           "snapshot delete")
        self.assertRefused(d.request("DELETE", "/v1/runs/%s" % RUN), "read_only", "run delete")
        st, body, hdrs = self.health(d)
        self.assertEqual(st, 503, body)
        self.assertEqual((body["status"], body["writable"]), ("read_only", False), body)
        self.assertEqual(body["error"]["code"], "read_only", body)
        self.assertIn("disk is full", body["error"]["message"])
        self.assertEqual(hdrs.get("Retry-After"), "5")
        state, _ = self.state_metric(d)
        self.assertEqual(state, "read_only")
        # logged once, not once per refusal (a full disk may hold the log too)
        self.assertEqual(sum("event=database_read_only" in line for line in d.log_lines()), 1)
        self.assertFalse([line for line in d.log_lines() if "event=request_failed" in line])
        # reads go on, unchanged
        st, now, _ = d.stats(RUN, step=5, window=5)
        self.assertEqual((st, now), (200, before))
        st, s1, _ = d.get("/v1/runs/%s/snapshots/s1" % RUN)
        self.assertEqual((st, s1), (200, snap))
        self.assertEqual(d.get("/v1/runs/%s" % RUN)[1]["batches"], len(sent))

        # still full: it stays read-only through the write probes (every 2 s)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 2.5:
            self.assertEqual(self.health(d)[0], 503)
            time.sleep(0.25)

        # space returns: writable again within a probe period or two
        self.fault("off")
        self.wait_writable(d, 10)
        d.wait_log(r"event=database_writable .*read_only_seconds=")
        self.assertEqual(self.state_metric(d)[0], "writable")
        # everything again: what was acknowledged is a duplicate, the refused ones are new
        for w, step in sent + refused:
            st, body, _ = d.post_batch(RUN, batch(w, step))
            self.assertEqual(st, 200, body)
            self.assertEqual(body["duplicate"], (w, step) in sent, (w, step, body))
        ref = Daemon("--synchronous", "normal")
        self.addCleanup(ref.close)
        ref.start()
        for w, step in sent + refused:
            self.assertEqual(ref.post_batch(RUN, batch(w, step))[0], 200)
        self.assertSameTotals(d, ref, 6, 6)
        d.stop()
        ref.stop()

    def test_a_start_on_a_full_disk_serves_reads(self):
        d = self.daemon()
        d.start()
        for step in (1, 2):
            self.assertEqual(d.post_batch(RUN, batch("w0", step))[0], 200)
        d.kill()                      # as after a crash on a full disk
        self.fault("full")
        d.start()                     # starts, read-only, instead of exiting
        d.wait_log(r"event=database_read_only .*during=start")
        st, body, _ = self.health(d)
        self.assertEqual((st, body["status"]), (503, "read_only"), body)
        st, body, _ = d.stats(RUN, step=2, window=2)
        self.assertEqual((st, body["layers"]["bn0"]["batches"]), (200, 2), body)
        self.assertRefused(d.post_batch(RUN, batch("w0", 3)), "read_only")
        self.fault("off")
        self.wait_writable(d, 10)
        st, body, _ = d.post_batch(RUN, batch("w0", 3))
        self.assertEqual((st, body["duplicate"]), (200, False), body)
        self.assertEqual(d.get("/v1/runs/%s" % RUN)[1]["batches"], 3)
        d.stop()

    def test_write_errors_under_concurrent_uploads_lose_nothing(self):
        """Four workers upload while writes start failing part-way through
        group commits (SQLITE_IOERR_WRITE after a few WAL frames) and later
        work again; each retries a refused upload until it is taken. No
        upload is acknowledged twice or lost: the totals are those of a
        daemon that never failed, and no retry of a refused upload finds
        it stored already."""
        d = self.daemon("--synchronous", "normal")
        d.start()
        workers, steps = ("w0", "w1", "w2", "w3"), 30
        progress = {"acked": 0, "refused": 0}
        lock = threading.Lock()
        errors = []

        def upload(w):
            s = Session(d.port)
            try:
                for step in range(1, steps + 1):
                    deadline = time.monotonic() + 30
                    while True:
                        st, body, _ = s.post_batch(RUN, batch(w, step))
                        if st == 200:
                            if body["duplicate"]:
                                errors.append("%s step %d: stored although refused" % (w, step))
                            with lock:
                                progress["acked"] += 1
                            break
                        if st != 503 or body["error"]["code"] not in ("read_only",
                                                                       "unavailable"):
                            errors.append("%s step %d: %r %r" % (w, step, st, body))
                            return
                        with lock:
                            progress["refused"] += 1
                        if time.monotonic() > deadline:
                            errors.append("%s step %d: refused for 30 s" % (w, step))
                            return
                        time.sleep(0.05)
            finally:
                s.close()

        threads = [threading.Thread(target=upload, args=(w,), daemon=True) for w in workers]
        for t in threads:
            t.start()
        wait_until(lambda: progress["acked"] >= 20, 30, 0.01, "20 uploads acknowledged")
        self.fault("ioerr after=7")
        wait_until(lambda: self.health(d)[0] == 503, 10, 0.01, "read-only after write errors")
        self.assertEqual(self.health(d)[1]["error"]["code"], "read_only")
        wait_until(lambda: progress["refused"] >= 4, 10, 0.01, "uploads refused")
        self.fault("off")
        for t in threads:
            t.join(60)
            self.assertFalse(t.is_alive(), "an uploader is stuck")
        self.assertEqual(errors, [])
        self.assertEqual(progress["acked"], len(workers) * steps)
        d.wait_log(r"event=database_read_only .*error=\"disk I/O error\"")
        d.wait_log(r"event=database_writable")
        self.assertEqual(d.get("/v1/runs/%s" % RUN)[1]["batches"], len(workers) * steps)

        ref = Daemon("--synchronous", "normal")
        self.addCleanup(ref.close)
        ref.start()
        s = Session(ref.port)
        try:
            for step in range(1, steps + 1):
                for w in workers:
                    self.assertEqual(s.post_batch(RUN, batch(w, step))[0], 200)
        finally:
            s.close()
        self.assertSameTotals(d, ref, steps, steps)
        d.stop()
        d.start()                     # and all of it is on disk
        self.assertSameTotals(d, ref, steps, steps)
        d.stop()
        ref.stop()

    def test_failing_checkpoints_are_logged_once(self):
        """The database file cannot grow, the WAL still takes commits: every
        commit past 256 WAL pages wakes a checkpoint that fails. Logged at
        error once, then at debug, and once more when one succeeds."""
        d = self.daemon("--log-level", "debug", "--synchronous", "normal")
        d.start()
        big = layer(32768, count=16, rng=random.Random(7))[0]   # 1.3 MB a step: 20 pages
        self.fault("full file=db")
        s = Session(d.port)
        try:
            for step in range(1, 31):
                st, body, _ = s.post_batch(RUN, doc(step, layers={"bn": big}))
                self.assertEqual(st, 200, body)      # the WAL takes them
            d.wait_log(r"level=debug event=checkpoint_failed .*failed=[2-9]", 10)
            errors = [line for line in d.log_lines()
                      if "level=error event=checkpoint_failed" in line]
            self.assertEqual(len(errors), 1, errors)
            self.assertIn('error="database or disk is full"', errors[0])
            self.assertEqual(self.health(d)[0], 200)
            self.fault("off")
            for step in range(31, 34):
                self.assertEqual(s.post_batch(RUN, doc(step, layers={"bn": big}))[0], 200)
            d.wait_log(r"level=info event=checkpoint_recovered by=\w+ failed=([2-9]|[1-9]\d+) ",
                       10)
        finally:
            s.close()
        self.assertEqual(d.get("/v1/runs/%s" % RUN)[1]["batches"], 33)
        d.stop()

    def test_low_space_is_warned(self):
        # a threshold above any disk here: the warning comes at start
        d = Daemon("--disk-free-warn-mb", str(1 << 24))
        self.addCleanup(d.close)
        d.start()
        d.wait_log(r"level=warn event=disk_low db=.* free_bytes=\d+ warn_bytes=%d "
                   r".*OPERATIONS\.md, A full disk" % ((1 << 24) << 20))
        _, fams = self.state_metric(d)
        free = sample(fams, "bnstat_disk_free_bytes")
        self.assertGreater(free, 0)
        self.assertEqual(sample(fams, "bnstat_disk_free_warn_bytes"), (1 << 24) << 20)
        self.assertLess(free, (1 << 24) << 20)
        d.stop()


class TestDamagedAtRunTime(FaultDaemonMixin, unittest.TestCase):

    def test_corruption_refuses_writes_until_a_restart(self):
        d = self.daemon()
        d.start()
        for step in (1, 2, 3):
            self.assertEqual(d.post_batch(RUN, batch("w0", step))[0], 200)
        st, before, _ = d.stats(RUN, step=3, window=3)
        self.fault("corrupt")
        self.assertRefused(d.post_batch(RUN, batch("w0", 4)), "database_damaged", "upload")
        d.wait_log(r"level=error event=database_damaged .*error=\"database disk image is "
                   r"malformed\" .*action=refusing_writes reads=served .*OPERATIONS\.md, "
                   r"A damaged database")
        self.assertRefused(d.request("DELETE", "/v1/runs/%s" % RUN), "database_damaged")
        st, body, hdrs = self.health(d)
        self.assertEqual(st, 503, body)
        self.assertEqual((body["status"], body["writable"]), ("damaged", False), body)
        self.assertEqual(body["error"]["code"], "database_damaged")
        self.assertIn("malformed", body["error"]["message"])
        self.assertEqual(self.state_metric(d)[0], "damaged")
        # the pages that are damaged give a 500, not an answer made of them
        st, body, _ = d.get("/v1/runs")
        self.assertIn(st, (200, 500), body)
        # the fault gone (as after a disk is replaced), it stays damaged: no probe
        # undoes damage, and reads are served
        self.fault("off")
        t0 = time.monotonic()
        while time.monotonic() - t0 < 3.0:
            self.assertEqual(self.health(d)[0], 503)
            time.sleep(0.25)
        self.assertRefused(d.post_batch(RUN, batch("w0", 4)), "database_damaged")
        st, now, _ = d.stats(RUN, step=3, window=3)
        self.assertEqual((st, now), (200, before))
        # a restart on a sound file (here: the same, the damage was only injected)
        d.stop()
        d.start()
        self.assertEqual(self.health(d)[0], 200)
        st, body, _ = d.post_batch(RUN, batch("w0", 4))
        self.assertEqual((st, body["duplicate"]), (200, False), body)
        d.stop()


class TestTmpfsFullDisk(TestCaseMixin, unittest.TestCase):
    """A real full disk: a tmpfs of 24 MiB, filled up beside the database."""

    SIZE_MB = 24

    def setUp(self):
        self.mnt = tempfile.mkdtemp(prefix="bnstat-tmpfs-")
        self.addCleanup(shutil.rmtree, self.mnt, True)
        if shutil.which("mount") is None:
            raise unittest.SkipTest("cannot mount a tmpfs here: no mount command")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm" % self.SIZE_MB, "tmpfs",
                            self.mnt], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           universal_newlines=True)
        if r.returncode != 0:
            raise unittest.SkipTest("cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                                    "mount exited %d: %s" % (r.returncode, r.stdout.strip()))
        self.addCleanup(subprocess.run, ["umount", "-l", self.mnt])

    def fill(self, path):
        """Write path until the file system is full; its size."""
        chunk = b"\0" * (1 << 16)
        n = 0
        with open(path, "wb", buffering=0) as f:
            try:
                while True:
                    n += f.write(chunk)
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC, e)
        return n

    def test_a_full_tmpfs(self):
        d = Daemon("--disk-free-warn-mb", "8", "--synchronous", "normal")
        self.addCleanup(d.close)
        d.db = os.path.join(self.mnt, "bnstat.db")
        d.start()
        acked = []
        for step in range(1, 11):
            st, body, _ = d.post_batch(RUN, batch("w0", step))
            self.assertEqual(st, 200, body)
            acked.append(step)
        filler = os.path.join(self.mnt, "filler")
        self.assertGreater(self.fill(filler), 0)
        # the WAL may still have room for a few: upload until the disk says no
        step = 10
        refused = None
        while refused is None and step < 400:
            step += 1
            st, body, hdrs = d.post_batch(RUN, batch("w0", step))
            if st == 200:
                acked.append(step)
            else:
                self.assertError((st, body, hdrs), 503, "read_only")
                refused = step
        self.assertIsNotNone(refused, "400 uploads fit on a full disk?")
        d.wait_log(r"event=database_read_only .*error=\"database or disk is full\"")
        d.wait_log(r"level=warn event=disk_low .*warn_bytes=%d" % (8 << 20), 15)
        st, text, _ = d.get_raw("/metrics")
        fams = parse_prometheus(text.decode())
        self.assertEqual(sample(fams, "bnstat_database_state", state="read_only"), 1)
        self.assertLess(sample(fams, "bnstat_disk_free_bytes"), 8 << 20)
        st, body, _ = d.stats(RUN, step=acked[-1], window=len(acked))
        self.assertEqual((st, body["layers"]["bn0"]["batches"]), (200, len(acked)), body)

        # kill -9 on the full disk, and start again: read-only, reads served
        d.kill()
        d.start()
        st, body, _ = d.get("/healthz")
        self.assertEqual((st, body.get("status")), (503, "read_only"), body)
        st, body, _ = d.stats(RUN, step=acked[-1], window=len(acked))
        self.assertEqual((st, body["layers"]["bn0"]["batches"]), (200, len(acked)), body)
        self.assertError(d.post_batch(RUN, batch("w0", refused)), 503, "read_only")

        # space returns
        os.unlink(filler)
        wait_until(lambda: d.get("/healthz")[0] == 200, 10, 0.05, "writable after space returned")
        for s in acked + [refused]:
            st, body, _ = d.post_batch(RUN, batch("w0", s))
            self.assertEqual(st, 200, body)
            self.assertEqual(body["duplicate"], s in acked, (s, body))
        st, body, _ = d.stats(RUN, step=refused, window=refused)
        self.assertEqual(body["layers"]["bn0"]["batches"], len(acked) + 1, body)
        # the writer looks at the free space every 10 s: back above the warning
        d.wait_log(r"level=info event=disk_ok .*warn_bytes=%d" % (8 << 20), 15)
        self.assertEqual(body["layers"]["bn0"]["count"], 16 * (len(acked) + 1), body)
        d.stop()


if __name__ == "__main__":
    unittest.main()
