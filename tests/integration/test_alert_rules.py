"""The example Prometheus alert rules, deploy/prometheus/bnstat-rules.yml
(docs/OPERATIONS.md, "Monitoring"): promtool accepts them (check rules) and
their unit tests pass (test rules, deploy/prometheus/bnstat-rules.test.yml);
every metric they read is one bnstatd serves; the rules shown in
docs/OPERATIONS.md are the file's.

promtool comes with Debian's prometheus package, which the README's test
command installs: without it this test fails rather than skips.
"""

import os
import re
import shutil
import subprocess
import unittest

from bnstat_testlib import Daemon
from ops_testlib import SRCDIR, parse_prometheus

RULES_DIR = os.path.join(SRCDIR, "deploy", "prometheus")
RULES = os.path.join(RULES_DIR, "bnstat-rules.yml")
RULES_TEST = os.path.join(RULES_DIR, "bnstat-rules.test.yml")
OPERATIONS = os.path.join(SRCDIR, "docs", "OPERATIONS.md")


def promtool(*args):
    exe = shutil.which("promtool")
    if exe is None:
        raise AssertionError("promtool is not installed (Debian package prometheus); the "
                             "alert rules cannot be checked without it")
    # test rules resolves rule_files against its working directory
    r = subprocess.run([exe] + list(args), cwd=RULES_DIR, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, universal_newlines=True, timeout=120)
    return r.returncode, r.stdout


class TestAlertRules(unittest.TestCase):

    def test_promtool_check_rules(self):
        rc, out = promtool("check", "rules", RULES)
        self.assertEqual(rc, 0, "promtool check rules:\n" + out)
        self.assertIn("SUCCESS", out)

    def test_promtool_test_rules(self):
        rc, out = promtool("test", "rules", RULES_TEST)
        self.assertEqual(rc, 0, "promtool test rules:\n" + out)
        self.assertIn("SUCCESS", out)

    def test_the_unit_tests_exercise_every_alert(self):
        with open(RULES) as f:
            alerts = set(re.findall(r"^\s*- alert: (\w+)$", f.read(), re.M))
        with open(RULES_TEST) as f:
            tested = set(re.findall(r"^\s*alertname: (\w+)$", f.read(), re.M))
        self.assertTrue(alerts)
        self.assertEqual(alerts - tested, set(), "alerts without a promtool unit test")

    def test_rules_read_only_metrics_bnstatd_serves(self):
        with open(RULES) as f:
            exprs = re.findall(r"^\s*expr: (.*)$", f.read(), re.M)
        names = {n for e in exprs for n in re.findall(r"\b(bnstat_[a-z0-9_]+)", e)}
        self.assertTrue(names)
        d = Daemon()
        self.addCleanup(d.close)
        d.start()
        st, raw, _ = d.get_raw("/metrics")
        self.assertEqual(st, 200)
        served = parse_prometheus(raw.decode("utf-8"))
        self.assertEqual(names - set(served), set(), "rules read metrics /metrics lacks")
        d.stop()

    def test_the_docs_show_the_file(self):
        with open(OPERATIONS) as f:
            doc = f.read()
        m = re.search(r"deploy/prometheus/bnstat-rules\.yml.*?```yaml\n(.*?)```", doc, re.S)
        self.assertIsNotNone(m, "docs/OPERATIONS.md shows no rules after naming the file")
        with open(RULES) as f:
            rules = f.read()
        self.assertIn(m.group(1), rules, "the rules in docs/OPERATIONS.md are not the file's")


if __name__ == "__main__":
    unittest.main()
