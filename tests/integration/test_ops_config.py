"""Operations (docs/OPERATIONS.md), the daemon's setup: the config file and
flags, TLS, sd_notify, the systemd unit and the log file.

Optional tools: openssl (TLS tests; skipped without it), systemd-analyze
(verify of the unit). The unit is taken from env BNSTAT_UNIT, or from
systemd/bnstatd.service beside the build's src/ directory.
"""

from ops_testlib import *  # noqa: F401,F403 (the helpers and the modules they import)


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
            "log-level": "warn", "history-full-steps": "250", "sim-momenta": "0.1,0.01",
            "open-steps-mb": "64", "retain-runs-days": "90", "metrics-interval-ms": "250",
            "header-timeout": "7", "body-min-rate": "100", "body-memory-max": "33554432",
            "integrity-check": "off", "disk-free-warn-mb": "300", "ui-dir": self.tmp,
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
            ("momentum above 1", "sim-momenta = 0.1,1.5", "sim-momenta"),
            ("momentum zero", "sim-momenta = 0", "sim-momenta"),
            ("momenta trailing comma", "sim-momenta = 0.1,", "sim-momenta"),
            ("momenta not numbers", "sim-momenta = fast", "sim-momenta"),
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
