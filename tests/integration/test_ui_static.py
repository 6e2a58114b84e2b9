"""The dashboard's files as bnstatd serves them (docs/API.md, "Dashboard").

  * GET / and /ui redirect to /ui/; /ui/ is index.html; every file the
    page names (its scripts, styles, icon and the system's dygraphs) is
    served with its Content-Type, Cache-Control, the page's
    Content-Security-Policy and X-Content-Type-Options: nosniff;
  * what is not a file of the page is the API's JSON 404: an unknown name,
    a type the page does not use, "..", "%2e%2e", a hidden file, a
    directory, a symbolic link leading out of ui-dir; a NUL is the API's
    400; ui-dir empty serves no dashboard at all;
  * with a token file the page and its files need no token while the API
    still does.

Run:
  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \\
  PYTHONPATH=tests/integration python3 tests/integration/test_ui_static.py -v
"""

import json
import os
import re
import shutil
import socket
import tempfile
import unittest

from bnstat_testlib import Daemon, request_raw

SRC_UI = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "ui")
DYGRAPHS = "/usr/share/javascript/dygraphs"
CSP = "default-src 'self'"


def raw_get(port, path):
    """GET path as written (no normalisation by a client library): (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


class TestStatic(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        # a copy of ui/ with a symbolic link out of it, and one inside it
        cls.tmp = tempfile.mkdtemp(prefix="bnstat-ui-")
        cls.ui = os.path.join(cls.tmp, "ui")
        shutil.copytree(SRC_UI, cls.ui)
        cls.secret = os.path.join(cls.tmp, "secret.js")
        with open(cls.secret, "w") as f:
            f.write("the secret\n")
        os.symlink(cls.secret, os.path.join(cls.ui, "out.js"))
        os.symlink("app.js", os.path.join(cls.ui, "inside.js"))
        os.mkdir(os.path.join(cls.ui, "sub.js"))
        with open(os.path.join(cls.ui, "notes.txt"), "w") as f:
            f.write("not a type of the page\n")
        cls.d = Daemon("--ui-dir", cls.ui)
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def assertJson404(self, path):
        st, h, body = raw_get(self.d.port, path)
        self.assertEqual(st, 404, "%s: %r" % (path, body[:200]))
        self.assertEqual(h.get("content-type"), "application/json", path)
        self.assertEqual(json.loads(body)["error"]["code"], "not_found", path)
        self.assertNotIn(b"the secret", body)

    def test_redirects(self):
        for path in ("/", "/ui"):
            st, h, body = raw_get(self.d.port, path)
            self.assertEqual(st, 302, path)
            self.assertEqual(h.get("location"), "/ui/", path)
            self.assertEqual(body, b"")

    def test_index_and_every_file_it_names(self):
        st, h, body = raw_get(self.d.port, "/ui/")
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "text/html; charset=utf-8")
        with open(os.path.join(SRC_UI, "index.html"), "rb") as f:
            self.assertEqual(body, f.read())
        html = body.decode()
        # no inline script or style, nothing from another host
        self.assertNotRegex(html, r"<script(?![^>]*\bsrc=)")
        self.assertNotRegex(html, r"<style|\sstyle=|\son[a-z]+=")
        self.assertNotRegex(html, r"(src|href)=\"(https?:)?//")
        names = re.findall(r"(?:src|href)=\"([^\"#]+)\"", html)
        self.assertIn("vendor/dygraphs/dygraph.min.js", names)
        types = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".svg": "image/svg+xml", ".html": "text/html; charset=utf-8"}
        # and the modules app.js imports
        modules = set()
        for js in os.listdir(SRC_UI):
            if js.endswith(".js"):
                with open(os.path.join(SRC_UI, js)) as f:
                    modules |= set(re.findall(r"from '\./([a-z]+\.js)'", f.read()))
        self.assertIn("heatmap.js", modules)
        for name in sorted(set(names) | modules):
            with self.subTest(name=name):
                st, h, body = raw_get(self.d.port, "/ui/" + name)
                self.assertEqual(st, 200, name)
                self.assertEqual(h["content-type"], types[os.path.splitext(name)[1]])
                self.assertEqual(h["x-content-type-options"], "nosniff")
                self.assertTrue(h["content-security-policy"].startswith(CSP))
                self.assertIn(h["cache-control"], ("no-cache", "public, max-age=86400"))
                src = (os.path.join(DYGRAPHS, name[len("vendor/dygraphs/"):])
                       if name.startswith("vendor/") else os.path.join(SRC_UI, name))
                with open(src, "rb") as f:
                    self.assertEqual(body, f.read())

    def test_head(self):
        st, body, h = request_raw(self.d.port, "HEAD", "/ui/app.js")
        self.assertEqual(st, 200)
        self.assertEqual(body, b"")
        self.assertEqual(int(h["Content-Length"]), os.path.getsize(os.path.join(SRC_UI, "app.js")))

    def test_what_is_not_a_file_of_the_page(self):
        for path in ("/ui/nope.js", "/ui/notes.txt", "/ui/app", "/ui/sub.js", "/ui/vendor/",
                     "/ui/../src/main.c", "/ui/..%2f..%2fetc%2fpasswd", "/ui/%2e%2e/secret.js",
                     "/ui/vendor/dygraphs/../../../../etc/passwd",
                     "/ui/vendor/dygraphs/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
                     "/ui/.hidden.js", "/ui//app.js", "/ui/app.js/", "/ui/out.js",
                     "/ui/vendor/dygraphs/nope.js", "/uix", "/ui/a%20b.js"):
            with self.subTest(path=path):
                self.assertJson404(path)
        # a link that stays inside is followed
        st, _, body = raw_get(self.d.port, "/ui/inside.js")
        self.assertEqual(st, 200)
        with open(os.path.join(SRC_UI, "app.js"), "rb") as f:
            self.assertEqual(body, f.read())
        # a NUL is refused as in any path of the API
        st, h, body = raw_get(self.d.port, "/ui/app.js%00.png")
        self.assertEqual(st, 400)
        self.assertEqual(json.loads(body)["error"]["code"], "invalid_name")
        # other methods
        st, body, h = request_raw(self.d.port, "POST", "/ui/app.js", body=b"{}")
        self.assertEqual(st, 405)
        self.assertEqual(h["Allow"], "GET, HEAD")

    def test_api_replies_carry_nosniff(self):
        st, _, h = request_raw(self.d.port, "GET", "/v1/runs")
        self.assertEqual(st, 200)
        self.assertEqual(h["X-Content-Type-Options"], "nosniff")


class TestNoDashboard(unittest.TestCase):
    def test_empty_ui_dir_serves_none(self):
        d = Daemon("--ui-dir", "")
        self.addCleanup(d.close)
        d.start()
        st, h, body = raw_get(d.port, "/ui/")
        self.assertEqual(st, 404)
        self.assertEqual(json.loads(body)["error"]["code"], "not_found")
        for p in ("/ui/app.js", "/ui/vendor/dygraphs/dygraph.min.js"):
            st, _, _ = raw_get(d.port, p)
            self.assertEqual(st, 404, p)


class TestDefaultFromTheBuildTree(unittest.TestCase):
    def test_auto_serves_the_source_tree(self):
        # bnstatd of the build tree, without --ui-dir: the source tree's ui/
        d = Daemon()
        self.addCleanup(d.close)
        d.start()
        st, h, body = raw_get(d.port, "/ui/")
        self.assertEqual(st, 200, body[:200])
        self.assertIn(b"app.js", body)
        d.wait_log(r"event=ui dir=\S+/ui path=/ui/")

    def test_a_dir_without_the_page_is_logged(self):
        tmp = tempfile.mkdtemp(prefix="bnstat-ui-empty-")
        self.addCleanup(shutil.rmtree, tmp, True)
        d = Daemon("--ui-dir", tmp)
        self.addCleanup(d.close)
        d.start()
        d.wait_log(r"level=warn event=ui dir=%s index=missing" % re.escape(tmp))
        st, _, _ = raw_get(d.port, "/ui/")
        self.assertEqual(st, 404)


class TestWithTokens(unittest.TestCase):
    def test_page_without_token_api_with_one(self):
        tmp = tempfile.mkdtemp(prefix="bnstat-ui-tok-")
        self.addCleanup(shutil.rmtree, tmp, True)
        tok = "read-0123456789abcdef"
        path = os.path.join(tmp, "tokens")
        with open(path, "w") as f:
            f.write("%s read\n" % tok)
        d = Daemon("--token-file", path)
        self.addCleanup(d.close)
        d.start()
        for p in ("/ui/", "/ui/app.js", "/ui/vendor/dygraphs/dygraph.min.js"):
            st, _, _ = raw_get(d.port, p)
            self.assertEqual(st, 200, p)
        st, _, body = raw_get(d.port, "/")
        self.assertEqual(st, 302)
        st, _, body = raw_get(d.port, "/ui/nope.js")
        self.assertEqual(st, 404)
        st, body, h = request_raw(d.port, "GET", "/v1/runs")
        self.assertEqual(st, 401)
        st, body, h = request_raw(d.port, "GET", "/v1/runs",
                                  headers={"Authorization": "Bearer " + tok})
        self.assertEqual(st, 200)


if __name__ == "__main__":
    unittest.main()
