"""Operations (docs/OPERATIONS.md), the daemon at work: limits, graceful
shutdown and /metrics (also checked by promtool when it is installed).
Authentication is in test_auth.py; the durability of uploads across
SIGKILL/SIGTERM under load in test_durability.py.
"""

from ops_testlib import *  # noqa: F401,F403 (the helpers and the modules they import)


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


if __name__ == "__main__":
    unittest.main()
