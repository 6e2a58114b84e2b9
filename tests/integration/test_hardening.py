"""Parsing that hostile input must not get around (docs/API.md, "Names";
docs/OPERATIONS.md, "Options and the config file", "Authentication").

  * a run, worker or domain name made only of dots is refused with the
    name error, in the upload path and in the upload body;
  * a token file whose long comment ends in a token line holds no such
    token (the line is read whole);
  * %00 in the path is 400 invalid_name, never a shorter path.
"""

import os
import shutil
import tempfile
import unittest
import urllib.parse

from bnstat_testlib import Daemon, TestCaseMixin, b64_f64


def upload(worker="w0", domain=None, step=1):
    layer = {"count": 16, "mean": [0.1, 0.2], "var": b64_f64([1.0, 1.1])}
    doc = {"worker": worker, "step": step, "seq": 0, "layers": {"bn": layer}}
    if domain is not None:
        doc["domain"] = domain
    return doc


class DotNames(TestCaseMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def test_dot_names_refused(self):
        good_status = self.d.post_batch("r1", upload())[0]
        self.assertIn(good_status, (200, 201, 202))
        for name in (".", "..", "..."):
            # %2E keeps the client's URL normalisation from removing the segment
            status, body, _ = self.d.post_batch(name.replace(".", "%2E"), upload())
            self.assertEqual(status, 422, (name, body))
            self.assertEqual(body["error"]["code"], "invalid_value", name)
            for field in ("worker", "domain"):
                status, body, _ = self.d.post_batch("r1", upload(**{field: name}))
                self.assertEqual(status, 422, (field, name, body))
                self.assertEqual(body["error"]["code"], "invalid_value")
        # dots among other characters stay fine
        status = self.d.post_batch("r.1", upload(worker="w.0", domain="a..b"))[0]
        self.assertIn(status, (200, 201, 202))


class LongTokenLines(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="bnstat-hardening.")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_long_comment_holds_no_token(self):
        path = os.path.join(self.tmp, "tokens")
        good = "good-0123456789abcdef"
        with open(path, "w") as f:
            f.write("# " + "x" * 1021 + "EVILtokenEVILtoken99 admin\n")
            f.write(good + " read\n")
        os.chmod(path, 0o600)
        with Daemon("--token-file", path) as d:
            d.start()
            status = d.get_raw("/v1/runs",
                               headers={"Authorization": "Bearer EVILtokenEVILtoken99"})[0]
            self.assertEqual(status, 401)
            status = d.get_raw("/v1/runs", headers={"Authorization": "Bearer " + good})[0]
            self.assertEqual(status, 200)


class NulBytes(TestCaseMixin, unittest.TestCase):
    TOKEN = "nul-0123456789abcdef"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="bnstat-hardening.")
        cls.addClassCleanup(shutil.rmtree, cls.tmp, True)
        path = os.path.join(cls.tmp, "tokens")
        with open(path, "w") as f:
            f.write(cls.TOKEN + " admin\n")
        os.chmod(path, 0o600)
        cls.d = Daemon("--token-file", path)
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        auth = {"Authorization": "Bearer " + cls.TOKEN}
        status = cls.d.post_batch("r", upload(), headers=auth)[0]
        assert status in (200, 201, 202), status

    def test_nul_in_path(self):
        auth = {"Authorization": "Bearer " + self.TOKEN}
        self.assertEqual(self.d.get_raw("/v1/runs/r/stats", headers=auth)[0], 200)
        for path in ("/v1/runs/r%00x/stats", "/v1/runs/r/stats%00", "/v1/runs/r%00"):
            status, body, _ = self.d.request("GET", path, headers=auth)
            self.assertEqual(status, 400, (path, body))
            self.assertEqual(body["error"]["code"], "invalid_name", path)


class Numbers(TestCaseMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        status = cls.d.post_batch("r", upload())[0]
        assert status in (200, 201, 202), status

    def compare(self, momentum):
        return self.d.request("GET", "/v1/runs/r/compare?ema=sim&momentum=" +
                              urllib.parse.quote(momentum, safe=""))

    def test_momentum_grammar(self):
        for bad in ("0x1p-3", "inf", "nan", "+0.5", " 0.5", "0.5 ", ".5", "5.", "1e",
                    "1e999", "", "0,5", "1e+"):
            status, body, _ = self.compare(bad)
            self.assertEqual(status, 400, (bad, body))
            self.assertEqual(body["error"]["code"], "invalid_parameter", bad)
            self.assertEqual(body["error"]["path"], "momentum", bad)
            self.assertTrue(body["error"]["message"].startswith(
                "parameter momentum must be a number, got"), body)
        for out_of_range in ("1e-320", "0", "-0.5", "1.5", "2E0"):
            status, body, _ = self.compare(out_of_range)
            if out_of_range == "1e-320":
                self.assertNotEqual(status, 400, (out_of_range, body))
            else:
                self.assertEqual(status, 422, (out_of_range, body))
        for good in ("0.5", "5e-1", "1", "1E0", "0.01"):
            status, body, _ = self.compare(good)
            self.assertNotEqual(status, 400, (good, body))
            self.assertNotEqual(status, 422, (good, body))

    def test_integer_grammar(self):
        for bad in ("+3", " 3", "\t3", "0x10", "3.0", "1e2"):
            status, body, _ = self.d.request("GET", "/v1/runs/r/stats?window=" +
                                             urllib.parse.quote(bad, safe=""))
            self.assertEqual(status, 400, (bad, body))
            self.assertEqual(body["error"]["code"], "invalid_parameter", bad)
            self.assertTrue(body["error"]["message"].startswith(
                "parameter window must be an integer, got"), body)


if __name__ == "__main__":
    unittest.main()
