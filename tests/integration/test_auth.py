"""Bearer tokens and roles (docs/OPERATIONS.md, "Authentication"; docs/API.md: roles
ingest, read and admin when a token file is configured).

  * the matrix: every endpoint x (no header, a malformed header, unknown
    tokens, each role) -> 401 (with WWW-Authenticate: Bearer) / 403 / success
    (204 for an admin's DELETE of a snapshot);
    admin implies ingest and read; /healthz is open; a refused request
    stores nothing;
  * tokens never appear in the daemon's log output;
  * SIGHUP re-reads the token file: a good file swaps the tokens, a broken
    one keeps the old tokens and logs an error naming file:line;
  * token file errors at start exit 2 naming file:line (and never echo a
    token);
  * without a token file only loopback clients are served: the startup log
    says so, and (when this machine lets us create network namespaces) a
    client on another address gets 403.
"""

import http.client
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

from bnstat_testlib import Daemon, TestCaseMixin, b64_f64, run_bnstatd


def make_token(prefix):
    return "%s-%s" % (prefix, secrets.token_hex(12))


def upload(step, seq=0, worker="w0", domain=None, channels=4, ema=True):
    layer = {"count": 16, "mean": [0.1 * (i + step) for i in range(channels)],
             "var": b64_f64([1.0 + 0.01 * i for i in range(channels)])}
    if ema:
        layer["ema_mean"] = [0.05 * i for i in range(channels)]
        layer["ema_var"] = [0.9] * channels
    doc = {"worker": worker, "step": step, "seq": seq, "layers": {"bn": layer}}
    if domain is not None:
        doc["domain"] = domain
    return doc


def bearer(token):
    return {"Authorization": "Bearer " + token}


class TokenDaemonMixin(TestCaseMixin):
    """Helpers for a daemon whose requests carry tokens."""

    def call(self, method, path, token=None, body=None, headers=None):
        h = dict(headers or {})
        if token is not None:
            h.update(bearer(token))
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        st, raw, hdrs = self.d.request_raw(method, path, body, h)
        return st, raw, hdrs

    def assertLogHasNoToken(self, tokens, d=None):
        d = d or self.d
        text = "\n".join(d.log_lines())
        for t in tokens:
            self.assertNotIn(t, text, "a token appears in the daemon's log output")
            # a token split by quoting or truncated to its first 12 characters is a leak too
            self.assertNotIn(t[:12], text, "the start of a token appears in the log output")


class TestAuthMatrix(TokenDaemonMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="bnstat-auth-")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        cls.tokens = {"ingest": make_token("ing"), "read": make_token("rea"),
                      "admin": make_token("adm"), "ingest,read": make_token("inr")}
        cls.token_file = os.path.join(cls.tmp, "tokens")
        with open(cls.token_file, "w") as f:
            f.write("# bnstat tokens\n\n")
            for role, tok in cls.tokens.items():
                f.write("%s %s\n" % (tok, role))
        cls.d = Daemon("--token-file", cls.token_file)
        cls.addClassCleanup(cls.d.close)
        cls.d.start()

    def setUp(self):
        self.admin = self.tokens["admin"]

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    def must(self, method, path, token, body=None, status=(200,)):
        st, raw, _ = self.call(method, path, token, body)
        self.assertIn(st, status, "%s %s: %r %r" % (method, path, st, raw[:300]))
        return json.loads(raw) if raw.strip() and raw[:1] in b"{[" else raw

    def test_startup_log_counts_tokens(self):
        _, line = self.d.wait_log(r"event=auth\b", 5)
        self.assertIn("tokens=4", line)
        self.assertNotIn("loopback-only", line)

    def test_matrix(self):
        adm = self.admin
        # fixtures, made with the admin token: two domains with EMAs, a snapshot,
        # runs that the allowed DELETEs remove, and a victim the refused ones must not.
        for step in (1, 2, 3):
            self.must("POST", "/v1/runs/m/batches", adm, upload(step))
            self.must("POST", "/v1/runs/m/batches", adm, upload(step, domain="d2"))
        self.must("POST", "/v1/runs/m/snapshots", adm, {"label": "snap"}, (201,))
        self.must("POST", "/v1/runs/m/snapshots", adm, {"label": "del-admin"}, (201,))
        roles = {"ingest": {"ingest"}, "read": {"read"}, "admin": {"ingest", "read", "admin"},
                 "ingest,read": {"ingest", "read"}}
        for name in roles:
            self.must("POST", "/v1/runs/gone-%s/batches" % name.replace(",", "-"), adm,
                      upload(1))
        self.must("POST", "/v1/runs/victim/batches", adm, upload(1))
        batches_before = self.must("GET", "/v1/runs/m", adm)["batches"]

        endpoints = [
            ("POST", "/v1/runs/m/batches", "ingest"),
            ("GET", "/v1/runs", "read"),
            ("GET", "/v1/runs/m", "read"),
            ("GET", "/v1/runs/m/stats", "read"),
            ("GET", "/v1/runs/m/compare", "read"),
            ("GET", "/v1/runs/m/series?layer=bn&channel=0", "read"),
            ("GET", "/v1/runs/m/domains", "read"),
            ("GET", "/v1/runs/m/shift?source=d2&target=default", "read"),
            ("GET", "/v1/runs/m/snapshots", "read"),
            ("GET", "/v1/runs/m/snapshots/snap", "read"),
            ("GET", "/metrics", "read"),
            ("POST", "/v1/runs/m/snapshots", "admin"),
            ("GET", "/v1/runs/m/export", "admin"),
            ("DELETE", "/v1/runs/{victim}", "admin"),
            ("DELETE", "/v1/runs/m/snapshots/{snap}", "admin"),
            ("GET", "/healthz", None),
        ]
        unknown = make_token("unk")
        real = self.tokens["read"]
        anonymous = [
            ("no header", {}),
            ("Basic scheme", {"Authorization": "Basic dXNlcjpwYXNzd29yZA=="}),
            ("empty bearer", {"Authorization": "Bearer "}),
            ("bare token", {"Authorization": real}),
            ("unknown token", bearer(unknown)),
            ("token prefix", bearer(real[:-1])),
            ("token plus a byte", bearer(real + "x")),
        ]
        seq = [100]
        allowed_uploads = 0

        def body_for(method, path, case):
            seq[0] += 1
            if path.endswith("/batches"):
                return upload(4, seq=seq[0], worker="matrix")
            if method == "POST":
                return {"label": "lbl-%d" % seq[0]}
            return None

        for method, path, need in endpoints:
            for case, headers in anonymous:
                with self.subTest(endpoint="%s %s" % (method, path), auth=case):
                    p = path.replace("{victim}", "victim").replace("{snap}", "snap")
                    st, raw, hdrs = self.call(method, p, None, body_for(method, p, case), headers)
                    if need is None:
                        self.assertEqual(st, 200, raw[:300])
                        continue
                    self.assertError((st, json.loads(raw), hdrs), 401, "unauthorized",
                                     what="%s %s with %s" % (method, p, case))
                    self.assertRegex(hdrs.get("WWW-Authenticate") or "", r"^Bearer\b",
                                     "401 without a WWW-Authenticate: Bearer header")
            for role, tok in self.tokens.items():
                with self.subTest(endpoint="%s %s" % (method, path), token=role):
                    allowed = need is None or need in roles[role]
                    p = path.replace("{victim}", "gone-" + role.replace(",", "-")
                                     if allowed else "victim")
                    p = p.replace("{snap}", "del-" + role if allowed else "snap")
                    st, raw, hdrs = self.call(method, p, tok, body_for(method, p, role))
                    if allowed:
                        expect = (201 if (method == "POST" and "snapshots" in p) else
                                  204 if (method == "DELETE" and "snapshots" in p) else 200)
                        self.assertEqual(st, expect, "%s %s with the %s token: %r %r"
                                         % (method, p, role, st, raw[:300]))
                        if p.endswith("/batches"):
                            allowed_uploads += 1
                    else:
                        self.assertError((st, json.loads(raw), hdrs), 403, "forbidden",
                                         what="%s %s with the %s token" % (method, p, role))
                        self.assertIsNone(hdrs.get("WWW-Authenticate"),
                                          "a 403 (known token, wrong role) is not a 401")

        # refused requests stored nothing; allowed ones did what they say
        info = self.must("GET", "/v1/runs/m", adm)
        self.assertEqual(info["batches"], batches_before + allowed_uploads,
                         "refused uploads must store nothing")
        labels = sorted(s["label"] for s in self.must("GET", "/v1/runs/m/snapshots", adm)
                        ["snapshots"])
        self.assertEqual(len(labels), 2, "only the admin's snapshot POST (and the fixture) "
                         "may have created a snapshot, and only the admin's DELETE removed "
                         "one: %r" % labels)
        self.assertIn("snap", labels, "a refused DELETE removed a snapshot")
        self.must("GET", "/v1/runs/victim", adm)   # never deleted by a refused DELETE
        self.must("GET", "/v1/runs/gone-admin", adm, status=(404,))
        for role in ("ingest", "read", "ingest-read"):
            self.must("GET", "/v1/runs/gone-%s" % role, adm)
        self.assertLogHasNoToken(list(self.tokens.values()) + [unknown])

    def test_scheme_is_case_insensitive(self):
        # RFC 7235: the auth scheme is case-insensitive.
        st, raw, _ = self.call("GET", "/v1/runs", None,
                               headers={"Authorization": "bearer " + self.tokens["read"]})
        self.assertEqual(st, 200, raw[:300])

    def test_keep_alive_connection_does_not_inherit_authorization(self):
        # One connection: an authorized request, then one without a header.
        conn = http.client.HTTPConnection("127.0.0.1", self.d.port, timeout=10)
        try:
            conn.request("GET", "/v1/runs", headers=bearer(self.tokens["read"]))
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 200)
            conn.request("GET", "/v1/runs")
            r = conn.getresponse()
            r.read()
            self.assertEqual(r.status, 401)
        finally:
            conn.close()


class TestTokenReload(TokenDaemonMixin, unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bnstat-auth-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.path = os.path.join(self.tmp, "tokens")

    def write(self, text):
        # in place, as an editor would; the daemon reads the file only on SIGHUP
        with open(self.path, "w") as f:
            f.write(text)

    def hup(self):
        start = len(self.d.log_lines())
        self.d.send_signal(signal.SIGHUP)
        return self.d.wait_log(r"event=sighup\b", 10, start)[1]

    def status(self, token):
        return self.call("GET", "/v1/runs", token)[0]

    def test_sighup_swaps_tokens_and_keeps_them_on_a_broken_file(self):
        a, b, c, ing = (make_token("aaa"), make_token("bbb"), make_token("ccc"),
                        make_token("iii"))
        short = "shortTOK" + secrets.token_hex(2)     # 12 characters: too short
        self.write("%s read\n" % a)
        self.d = Daemon("--token-file", self.path)
        self.addCleanup(self.d.close)
        self.d.start()
        self.assertEqual(self.status(a), 200)
        self.assertEqual(self.status(b), 401)

        # a good file: the new tokens replace the old ones
        self.write("# rotated\n%s read\n%s ingest\n" % (b, ing))
        line = self.hup()
        self.assertRegex(line, r"action=reload_tokens tokens=2\b")
        self.assertEqual(self.status(a), 401, "the old token still works after SIGHUP")
        self.assertEqual(self.status(b), 200, "the new token does not work after SIGHUP")
        self.assertEqual(self.status(ing), 403)

        # broken files: the tokens in force stay, an error names file:line
        broken = [
            ("%s read\n%s read\n" % (c, short), 2),
            ("%s read\n%s reader\n" % (c, make_token("ddd")), 2),
            ("%s\n" % c, 1),
            ("# nothing\n", None),
        ]
        for text, lineno in broken:
            with self.subTest(file=text.replace(c, "C")):
                self.write(text)
                line = self.hup()
                self.assertIn("level=error", line)
                self.assertIn("result=kept_old", line)
                if lineno is not None:
                    self.assertIn("%s:%d" % (self.path, lineno), line)
                self.assertEqual(self.status(b), 200, "a broken file dropped the tokens in force")
                self.assertEqual(self.status(c), 401, "a token of a refused file was taken")
        os.unlink(self.path)
        line = self.hup()
        self.assertIn("result=kept_old", line)
        self.assertEqual(self.status(b), 200)
        self.assertTrue(self.d.running)
        self.d.stop()
        self.assertLogHasNoToken([a, b, c, ing, short])

    def test_token_file_errors_at_start_exit_2_with_file_and_line(self):
        good = make_token("ggg")
        cases = [
            ("short token", "# tokens\n%s read\n%s ingest\n" % (good, "tooShort123"), 3),
            ("unknown role", "%s read\n%s writer\n" % (good, make_token("xxx")), 2),
            ("no role", "\n%s\n" % make_token("yyy"), 2),
            ("empty role list", "%s ,\n" % make_token("zzz"), 1),
            ("trailing junk", "%s read extra\n" % make_token("jjj"), 1),
        ]
        db = os.path.join(self.tmp, "x.db")
        for name, text, lineno in cases:
            for test_config in (False, True):
                with self.subTest(case=name, test_config=test_config):
                    self.write(text)
                    args = ["--token-file", self.path, "--db", db, "--listen", "127.0.0.1:0"]
                    if test_config:
                        args.append("--test-config")
                    r = run_bnstatd(*args)
                    self.assertEqual(r.returncode, 2, "%s: exit %r\n%s" % (name, r.returncode,
                                                                        r.stderr))
                    self.assertIn("%s:%d" % (self.path, lineno), r.stderr)
                    for tok in re.findall(r"\S{16,}", text):
                        self.assertNotIn(tok, r.stderr + r.stdout,
                                         "the error message echoes a token")
        for name, text in (("no token at all", "# only a comment\n\n"),):
            self.write(text)
            r = run_bnstatd("--token-file", self.path, "--db", db, "--listen", "127.0.0.1:0")
            self.assertEqual(r.returncode, 2, r.stderr)
            self.assertIn(self.path, r.stderr)
        r = run_bnstatd("--token-file", os.path.join(self.tmp, "missing"), "--db", db,
                        "--listen", "127.0.0.1:0")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("missing", r.stderr)
        self.assertFalse(os.path.exists(db), "a start refused for its token file created the db")


class TestLoopbackOnly(TestCaseMixin, unittest.TestCase):

    def test_without_token_file_the_log_says_loopback_only(self):
        d = Daemon()
        self.addCleanup(d.close)
        d.start()
        _, line = d.wait_log(r"event=auth\b", 5)
        self.assertIn("tokens=none", line)
        self.assertIn("access=loopback-only", line)
        # loopback clients need no token
        st, body, _ = d.get("/v1/runs")
        self.assertEqual(st, 200, body)
        d.stop()


CLIENT = r"""
import http.client, json, sys
host, port, method, path, token = sys.argv[1:6]
h = {"Content-Type": "application/json"}
if token != "-":
    h["Authorization"] = "Bearer " + token
body = sys.argv[6].encode() if len(sys.argv) > 6 else None
c = http.client.HTTPConnection(host, int(port), timeout=10)
c.request(method, path, body=body, headers=h)
r = c.getresponse()
print(json.dumps({"status": r.status, "body": r.read().decode("utf-8", "replace")}))
"""


class TestNonLoopbackClient(TestCaseMixin, unittest.TestCase):
    """Two network namespaces made for this test, joined by a veth pair with
    10.x addresses: bnstatd in one, the client in the other. Skipped where
    namespaces cannot be created."""

    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise unittest.SkipTest("needs root and iproute2 (ip) for network namespaces")
        n = os.getpid() % 100000
        cls.ns_srv, cls.ns_cli = "bnst-s%d" % n, "bnst-c%d" % n
        veth_s, veth_c = "bnsv%ds" % n, "bnsv%dc" % n
        octet = 16 + n % 200
        cls.srv_addr, cli_addr = "10.231.%d.1" % octet, "10.231.%d.2" % octet
        r = subprocess.run(["ip", "netns", "add", cls.ns_srv], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True)
        if r.returncode != 0:
            raise unittest.SkipTest("ip netns add is not permitted here: %s" % r.stdout.strip())
        cls.addClassCleanup(subprocess.run, ["ip", "netns", "del", cls.ns_srv],
                            stderr=subprocess.DEVNULL)
        steps = [
            ["ip", "netns", "add", cls.ns_cli],
            ["ip", "link", "add", veth_s, "type", "veth", "peer", "name", veth_c],
            ["ip", "link", "set", veth_s, "netns", cls.ns_srv],
            ["ip", "link", "set", veth_c, "netns", cls.ns_cli],
            ["ip", "-n", cls.ns_srv, "addr", "add", cls.srv_addr + "/30", "dev", veth_s],
            ["ip", "-n", cls.ns_cli, "addr", "add", cli_addr + "/30", "dev", veth_c],
            ["ip", "-n", cls.ns_srv, "link", "set", veth_s, "up"],
            ["ip", "-n", cls.ns_cli, "link", "set", veth_c, "up"],
            ["ip", "-n", cls.ns_srv, "link", "set", "lo", "up"],
        ]
        for i, cmd in enumerate(steps):
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               universal_newlines=True)
            if i == 0 and r.returncode == 0:
                cls.addClassCleanup(subprocess.run, ["ip", "netns", "del", cls.ns_cli],
                                    stderr=subprocess.DEVNULL)
            if r.returncode != 0:
                raise unittest.SkipTest("cannot set up the namespaces (%s): %s"
                                        % (" ".join(cmd), r.stdout.strip()))

    def client(self, port, method, path, token=None, body=None):
        cmd = ["ip", "netns", "exec", self.ns_cli, sys.executable, "-c", CLIENT,
               self.srv_addr, str(port), method, path, token or "-"]
        if body is not None:
            cmd.append(json.dumps(body))
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               universal_newlines=True, timeout=30)
            if r.returncode == 0:
                out = json.loads(r.stdout)
                return out["status"], out["body"]
            if time.monotonic() > deadline:   # the veth may take a moment to come up
                self.fail("client in %s failed: %s" % (self.ns_cli, r.stderr))
            time.sleep(0.2)

    def server(self, *args):
        d = Daemon(*args, prefix=["ip", "netns", "exec", self.ns_srv], host=self.srv_addr)
        self.addCleanup(d.close)
        d.start()
        return d

    def test_non_loopback_client_without_token_file_is_403(self):
        d = self.server()
        st, body = self.client(d.port, "GET", "/healthz")
        self.assertEqual(st, 200, body)
        for method, path, doc in (("GET", "/v1/runs", None), ("GET", "/metrics", None),
                                  ("POST", "/v1/runs/r/batches", upload(1)),
                                  ("GET", "/ui/", None), ("GET", "/", None)):
            with self.subTest(path=path):
                st, body = self.client(d.port, method, path, body=doc)
                self.assertEqual(st, 403, body)
                self.assertEqual(json.loads(body)["error"]["code"], "forbidden")
        d.stop()

    def test_non_loopback_client_with_token_is_served(self):
        tmp = tempfile.mkdtemp(prefix="bnstat-auth-")
        self.addCleanup(shutil.rmtree, tmp, True)
        tok = make_token("net")
        path = os.path.join(tmp, "tokens")
        with open(path, "w") as f:
            f.write("%s ingest,read\n" % tok)
        d = self.server("--token-file", path)
        st, body = self.client(d.port, "POST", "/v1/runs/r/batches", tok, upload(1))
        self.assertEqual(st, 200, body)
        st, body = self.client(d.port, "GET", "/v1/runs", tok)
        self.assertEqual(st, 200, body)
        st, body = self.client(d.port, "GET", "/v1/runs")
        self.assertEqual(st, 401, body)
        # the dashboard's page needs no token (a browser's navigation sends none)
        st, body = self.client(d.port, "GET", "/ui/")
        self.assertEqual(st, 200, body)
        self.assertIn("<html", body)
        d.stop()


if __name__ == "__main__":
    unittest.main()
