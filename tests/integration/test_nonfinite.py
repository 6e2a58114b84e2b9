"""Uploads refused for a NaN or infinite value (docs/API.md, "Non-finite
values"; docs/OPERATIONS.md, "Monitoring"): the 422 names the step, layer,
channel and worker, in the message and in error.nonfinite; the counter
bnstat_refused_nonfinite_total{run} counts them per run, in both upload
forms, and nothing else; the log line is written the 1st, 10th, 100th, ...
time per run and layer; deleting a run removes its series.
"""

import json
import math
import re
import shutil
import struct
import subprocess
import unittest

from bnstat_testlib import Daemon, TestCaseMixin, b64_f32, b64_f64
from ops_testlib import parse_prometheus, sample

C = 20
LAYER = "layer3.0.bn2"
FAMILY = "bnstat_refused_nonfinite_total"


def values(bad_at=None, bad=math.nan):
    v = [0.5 + i for i in range(C)]
    if bad_at is not None:
        v[bad_at] = bad
    return v


def json_doc(step, field=None, channel=None, bad=math.nan, worker="rank3", layer=LAYER):
    """An upload of one layer with an EMA, base64 f32 (f64 for the EMA); a
    non-finite value at field[channel] when field is given."""
    entry = {"count": 8}
    for key, enc in (("mean", b64_f32), ("var", b64_f32), ("ema_mean", b64_f64),
                     ("ema_var", b64_f64)):
        entry[key] = enc(values(channel if key == field else None, bad))
    return {"worker": worker, "step": step, "seq": 0, "layers": {layer: entry}}


def safetensors_doc(step, field=None, channel=None, bad=math.nan, worker="rank3", layer=LAYER):
    """The same upload as a safetensors body (F32 statistics, F64 EMA)."""
    tensors, data = {}, b""
    parts = [("count", "I64", [], struct.pack("<q", 8))]
    for key, dtype, fmt in (("mean", "F32", "f"), ("var", "F32", "f"), ("ema_mean", "F64", "d"),
                            ("ema_var", "F64", "d")):
        v = values(channel if key == field else None, bad)
        parts.append((key, dtype, [C], struct.pack("<%d%s" % (C, fmt), *v)))
    for key, dtype, shape, raw in parts:
        tensors["%s.%s" % (layer, key)] = {"dtype": dtype, "shape": shape,
                                           "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    tensors["__metadata__"] = {"worker": worker, "step": str(step), "seq": "0"}
    header = json.dumps(tensors).encode()
    return struct.pack("<Q", len(header)) + header + data


class TestNonFinite(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.stop()
        cls.d.close()

    def scrape(self):
        st, raw, _ = self.d.get_raw("/metrics")
        self.assertEqual(st, 200)
        return raw.decode("utf-8"), parse_prometheus(raw.decode("utf-8"))

    def counter(self, fams, run):
        """The run's count, None when it has no series."""
        for _, labels, v in fams[FAMILY]["samples"]:
            if labels == {"run": run}:
                return v
        return None

    def post_st(self, run, body):
        return self.d.request("POST", "/v1/runs/%s/batches" % run, body,
                              {"Content-Type": "application/octet-stream"})

    def marker(self, run):
        """Post an upload that logs request_rejected, and wait for its line:
        every line logged before it has then been read."""
        bad = json_doc(1)
        bad["layers"][LAYER]["var"] = [1.0] * (C - 1) + [-1.0]
        del bad["layers"][LAYER]["ema_mean"], bad["layers"][LAYER]["ema_var"]
        bad["layers"][LAYER]["mean"] = [0.0] * C
        start = len(self.d.log_lines())
        self.assertError(self.d.post_batch(run, bad), 422, "invalid_value",
                         "layers.%s.var[%d]" % (LAYER, C - 1))
        self.d.wait_log(r"event=request_rejected .*run=%s " % re.escape(run), start=start)

    def nonfinite_lines(self, run, layer=LAYER):
        return [l for l in self.d.log_lines()
                if "event=upload_nonfinite" in l and " run=%s " % run in l
                and " layer=%s " % layer in l]

    def test_refusals_are_counted_named_logged_and_deleted(self):
        d = self.d
        run, other, clean = "nf.A-1_x", "..odd-Run.name_", "nf-clean"
        _, m0 = self.scrape()
        self.assertEqual(m0[FAMILY]["type"], "counter")
        invalid0 = sample(m0, "bnstat_uploads_total", outcome="invalid_value")
        for r in (run, other, clean):
            self.assertIsNone(self.counter(m0, r))

        # accepted uploads count nothing
        self.assertEqual(d.post_batch(run, json_doc(1199))[0], 200)
        self.assertEqual(d.post_batch(clean, json_doc(1))[0], 200)

        # JSON (base64): NaN in var[17]
        e = self.assertError(d.post_batch(run, json_doc(1200, "var", 17)), 422, "invalid_value",
                             "layers.%s.var[17]" % LAYER)
        self.assertEqual(e["message"],
                         "non-finite var at step 1200, layer layer3.0.bn2, channel 17 "
                         "(worker rank3): NaN in the batch statistics (mixed-precision "
                         "overflow?)")
        self.assertEqual(e["nonfinite"], {"worker": "rank3", "step": 1200, "layer": LAYER,
                                          "field": "var", "channel": 17})
        # safetensors: +infinity in the EMA's variance, channel 3
        e = self.assertError(self.post_st(run, safetensors_doc(1201, "ema_var", 3, math.inf)),
                             422, "invalid_value", "%s.ema_var[3]" % LAYER)
        self.assertIn("non-finite ema_var at step 1201, layer layer3.0.bn2, channel 3 "
                      "(worker rank3): infinity in the running (EMA) statistics",
                      e["message"])
        self.assertEqual(e["nonfinite"], {"worker": "rank3", "step": 1201, "layer": LAYER,
                                          "field": "ema_var", "channel": 3})
        # safetensors, -infinity in the mean, for a run that has nothing stored
        e = self.assertError(self.post_st(other, safetensors_doc(5, "mean", 0, -math.inf,
                                                                 worker="rank0")),
                             422, "invalid_value", "%s.mean[0]" % LAYER)
        self.assertEqual(e["nonfinite"]["field"], "mean")
        self.assertIn("-infinity", e["message"])
        # a negative variance is refused too, but is not a non-finite value
        self.marker(run)

        text, m1 = self.scrape()
        self.assertEqual(self.counter(m1, run), 2)
        self.assertEqual(self.counter(m1, other), 1)
        self.assertIsNone(self.counter(m1, clean))
        # the odd name is its own label value, verbatim
        self.assertIn('%s{run="..odd-Run.name_"} 1\n' % FAMILY, text)
        self.assertEqual(sample(m1, "bnstat_uploads_total", outcome="invalid_value"),
                         invalid0 + 4)
        # the log names all of it, once per (run, layer) so far
        lines = self.nonfinite_lines(run)
        self.assertEqual(len(lines), 1, lines)
        for part in ("level=warn", "worker=rank3", "step=1200", "layer=layer3.0.bn2",
                     "field=var", "channel=17", "refused=1",
                     'path="layers.layer3.0.bn2.var[17]"'):
            self.assertIn(part, lines[0])
        # the daemon's stock line for a refusal is not written for these
        self.assertFalse([l for l in d.log_lines() if "event=request_rejected" in l
                          and "run=%s " % other in l])

        # a worker stuck on NaN: 12 more refusals of the layer, 14 in all,
        # are logged at the 10th only (and the 1st, above)
        for step in range(1202, 1214):
            self.assertEqual(d.post_batch(run, json_doc(step, "mean", 1))[0], 422)
        self.marker(run)
        lines = self.nonfinite_lines(run)
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("refused=10 ", lines[1])
        self.assertIn("step=1209 ", lines[1])
        # another layer of the same run is logged on its own
        self.assertEqual(d.post_batch(run, json_doc(1300, "ema_mean", 2, layer="fc.bn"))[0], 422)
        self.marker(run)
        self.assertEqual(len(self.nonfinite_lines(run, "fc.bn")), 1)
        _, m2 = self.scrape()
        self.assertEqual(self.counter(m2, run), 2 + 12 + 1)

        # what /metrics serves is valid to promtool, series included
        promtool = shutil.which("promtool")
        self.assertIsNotNone(promtool, "promtool is not installed (Debian package prometheus)")
        r = subprocess.run([promtool, "check", "metrics"], input=text, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
        self.assertEqual(r.returncode, 0, "promtool check metrics:\n" + r.stdout)

        # deleting a run removes its series, and only its
        self.assertEqual(d.request("DELETE", "/v1/runs/%s" % run)[0], 200)
        _, m3 = self.scrape()
        self.assertIsNone(self.counter(m3, run))
        self.assertEqual(self.counter(m3, other), 1)
        # a run with nothing stored: 404, and its series goes as well
        self.assertEqual(d.request("DELETE", "/v1/runs/%s" % other)[0], 404)
        _, m4 = self.scrape()
        self.assertIsNone(self.counter(m4, other))
        # counting starts again from nothing, and so does the log
        self.assertEqual(d.post_batch(run, json_doc(7, "var", 0))[0], 422)
        self.marker(run)
        _, m5 = self.scrape()
        self.assertEqual(self.counter(m5, run), 1)
        self.assertIn("refused=1 ", self.nonfinite_lines(run)[-1])

    def test_literal_nan_is_malformed_and_not_counted(self):
        # a bare NaN is not JSON: 400, and the daemon cannot tell which
        # field it was in, so it is not counted as a non-finite statistic
        run = "nf-literal"
        body = json.dumps({"worker": "w", "step": 1, "seq": 0,
                           "layers": {"bn": {"count": 2, "mean": [0.0], "var": [1.0]}}})
        body = body.replace("[0.0]", "[NaN]")
        self.assertError(self.d.post_batch(run, body), 400, "malformed_json")
        _, m = self.scrape()
        self.assertIsNone(self.counter(m, run))


if __name__ == "__main__":
    unittest.main()
