"""Bounded history (docs/API.md, "History: per-step, then buckets").

One run of steps 1..299 (no data at steps s % 11 == 5), two layers (3 and 2
channels), workers w0 (every step, a second batch when s % 7 == 2), w1 (about
half the steps, biased variances when s % 4 == 0) and w2 (every 13th step,
one layer), most of them reporting ema_mean/ema_var; uploaded to a daemon
with --history-full-steps 20. Once it has caught up (L = 299, H = 20):

  * steps 1..200 are in two width-100 buckets, stored at 100 and 200;
  * steps 201..270 in seven width-10 buckets, stored at 210, 220, ..., 270;
  * steps 271..299 are kept per step;

so that bucketed_through is 270. Where a step belongs is derived here from the
tier rule of the doc (entry_of), never from a reply.

Every expected number is computed from the batches as uploaded: pooled
statistics, windows, batch noise and the mean of batch variances exactly with
Fractions (and, for whole-bucket windows, also from the raw samples with
bnstat_testlib.raw_reference); the simulated EMA by a plain loop over the
per-step pooled values (PyTorch's update from mean 0 and variance 1); the
comparison metrics with 50-digit Decimals from the formulas of "Comparison".

The SIGKILL tests run daemons of their own: one killed right after uploads and
shortly after restarts; one that stored the run per step (--history-full-steps
0) and is restarted with a horizon, so that every bucket is formed after the
start, and killed while it does that.

Run:
  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \
  PYTHONPATH=tests/integration python3 tests/integration/test_history.py -v
"""

import math
import random
import time
import unittest
from decimal import Decimal, getcontext
from fractions import Fraction

from bnstat_testlib import (Daemon, RawLayerBatch, Session, TestCaseMixin, b64_f64,
                            is_json_int, raw_reference)

getcontext().prec = 50

H = 20                     # --history-full-steps of the daemons here
LAST = 299                 # the run's latest step
RUN = "hist"
REL = 1e-12                # exact merges and replays, to ~1e-12 relative
MET_REL = 1e-9             # comparison metrics (logs, sqrt of exact values)
MET_ABS = 1e-12
EPS = 1e-5
D_EPS = Decimal(EPS)
METRICS = ("mean_err", "mean_err_max", "var_err", "var_err_max", "kl", "kl_max")
POLL_TIMEOUT = 20.0        # seconds to wait for the daemon to catch up

# layer -> (base means, sigmas) per channel; means drift with the step
LAYERS = {"bn1": ([2.0, -1.0, 0.5], [1.0, 0.5, 0.05]),
          "bn2": ([5.0, 0.25], [2.0, 0.3])}
COUNTS = (2, 3, 4, 6, 9, 16, 25)
WORKERS = ("w0", "w1", "w2")

HIST_ARGS = ("--history-full-steps", str(H), "--synchronous", "normal")


# --------------------------------------------------------------------------
# where a step is stored

def entry_of(step, latest=LAST, horizon=H):
    """(end, width) of the stored entry holding `step` once the daemon has
    caught up: the widest aligned bucket (e - w, e], e a multiple of w, with
    latest - e >= t * horizon for w = 10^t; else the step itself (width 1)."""
    best = (step, 1)
    w, tier = 10, 1
    while w <= 10 ** 6:
        e = -(-step // w) * w
        if latest - e < tier * horizon:
            break          # ends grow and thresholds grow with the tier
        best = (e, w)
        w *= 10
        tier += 1
    return best


def expected_bucketed_through(latest=LAST, horizon=H):
    """The largest multiple of 10 <= latest - horizon (data starts at step 1)."""
    return (latest - horizon) // 10 * 10


def cover(lo, hi):
    """The smallest set of whole entries covering the window (lo, hi], as
    (lo', hi'), and the width of the entry at its oldest end."""
    e_old, w_old = entry_of(lo + 1)
    e_new, _ = entry_of(hi)
    new_lo = e_old - w_old
    return new_lo, e_new, entry_of(new_lo + 1)[1]


# --------------------------------------------------------------------------
# the uploaded run and its references

class Batch:
    """One layer of one accepted upload, as decoded doubles."""

    def __init__(self, worker, step, seq, count, mean, var, kind, raw):
        self.worker, self.step, self.seq = worker, step, seq
        self.count, self.mean, self.var, self.kind, self.raw = count, mean, var, kind, raw


class Model:
    def __init__(self, seed):
        rng = random.Random(seed)
        self.docs = []                                   # in upload order
        self.data = {name: {} for name in LAYERS}        # layer -> step -> [Batch]
        self.emas = {}       # (layer, worker) -> {step: (seq, mean, var)}, highest seq kept
        self._memo = {}
        c = lambda: rng.choice(COUNTS)                   # noqa: E731
        for s in range(1, LAST + 1):
            if s % 11 == 5:
                continue
            n2 = 0 if (s % 17 == 3 and s < 250) else c()
            d0 = self._upload(rng, "w0", s, 0, {"bn1": c(), "bn2": n2}, s % 3 != 0, False)
            group = [d0]
            if s % 7 == 2:
                d1 = self._upload(rng, "w0", s, 1, {"bn1": c(), "bn2": c()}, s % 3 != 0, False)
                group = [d1, d0] if s % 14 == 9 else [d0, d1]
            if s % 2 == 0 or s % 5 == 1:
                group.append(self._upload(rng, "w1", s, 0, {"bn1": c(), "bn2": c()},
                                          s % 2 == 0, s % 4 == 0))
            if s % 13 == 0:
                group.append(self._upload(rng, "w2", s, 0, {"bn1": c()}, True, False))
            self.docs.extend(group)

    def _upload(self, rng, worker, step, seq, counts, with_ema, biased):
        layers = {}
        for name, count in counts.items():
            if count == 0:
                layers[name] = {"count": 0}
                continue
            mus, sigmas = LAYERS[name]
            mu = [m + 0.01 * step * (ch + 1) for ch, m in enumerate(mus)]
            rb = RawLayerBatch.generate(rng, count, mu, sigmas)
            var = rb.var_biased if biased else rb.var
            enc = b64_f64 if (step + seq) % 3 == 0 else list
            entry = {"count": count, "mean": enc(rb.mean), "var": enc(var)}
            if with_ema:
                em = [m + rng.gauss(0.0, 0.3 * sg) for m, sg in zip(mu, sigmas)]
                ev = [sg * sg * rng.uniform(0.5, 1.5) for sg in sigmas]
                entry["ema_mean"], entry["ema_var"] = enc(em), enc(ev)
                slot = self.emas.setdefault((name, worker), {})
                if step not in slot or slot[step][0] < seq:
                    slot[step] = (seq, em, ev)
            layers[name] = entry
            self.data[name].setdefault(step, []).append(
                Batch(worker, step, seq, count, list(rb.mean), list(var),
                      "biased" if biased else "unbiased", rb))
        doc = {"worker": worker, "step": step, "seq": seq, "layers": layers}
        if biased:
            doc["var_kind"] = "biased"
        return doc

    # -- layout --------------------------------------------------------------

    def steps(self, layer):
        return sorted(self.data[layer])

    def entries(self, layer):
        """The stored entries (end, width) of a layer, in step order."""
        return sorted({entry_of(s) for s in self.data[layer]})

    def doc_at(self, step, worker=None):
        return next(d for d in self.docs if d["step"] == step and
                    (worker is None or d["worker"] == worker))

    # -- exact pooled statistics ----------------------------------------------

    def batches(self, layer, lo, hi):
        by_step = self.data[layer]
        return [b for s in sorted(by_step) if lo < s <= hi for b in by_step[s]]

    def pooled(self, layer, lo, hi):
        """Exact (N, [(mean, M2)] per channel) over (lo, hi], or None."""
        key = ("pool", layer, lo, hi)
        if key not in self._memo:
            bs = self.batches(layer, lo, hi)
            if not bs:
                self._memo[key] = None
            else:
                n_tot = sum(b.count for b in bs)
                out = []
                for ch in range(len(LAYERS[layer][0])):
                    mean = sum(Fraction(b.mean[ch]) * b.count for b in bs) / n_tot
                    m2 = Fraction(0)
                    for b in bs:
                        m2 += Fraction(b.var[ch]) * (b.count if b.kind == "biased"
                                                     else b.count - 1)
                        d = Fraction(b.mean[ch]) - mean
                        m2 += b.count * d * d
                    out.append((mean, m2))
                self._memo[key] = (n_tot, out)
        return self._memo[key]

    def window_ref(self, layer, lo, hi):
        """What /stats must give for (lo, hi]: both estimators, batch noise, sizes."""
        key = ("window", layer, lo, hi)
        if key in self._memo:
            return self._memo[key]
        bs = self.batches(layer, lo, hi)
        if not bs:
            self._memo[key] = None
            return None
        n_tot, ch_stats = self.pooled(layer, lo, hi)
        k = len(bs)
        ref = {"count": n_tot, "batches": k, "pop_mean": [], "pop_var": [],
               "mbv_mean": [], "mbv_var": [], "nbs_min": min(b.count for b in bs),
               "nbs_max": max(b.count for b in bs), "nbs_mean": float(Fraction(n_tot, k))}
        noise = []
        for ch, (mean, m2) in enumerate(ch_stats):
            pv = m2 / n_tot
            ref["pop_mean"].append(float(mean))
            ref["pop_var"].append(float(pv))
            bm = [Fraction(b.mean[ch]) for b in bs]
            uv = [Fraction(b.var[ch]) * b.count / (b.count - 1) if b.kind == "biased"
                  else Fraction(b.var[ch]) for b in bs]
            ref["mbv_mean"].append(float(sum(bm) / k))
            ref["mbv_var"].append(float(sum(uv) / k))
            if k >= 2 and pv > 0:
                mm = sum(bm) / k
                s2 = sum((x - mm) ** 2 for x in bm) / (k - 1)
                noise.append(math.sqrt(float(s2 / pv)))
        ref["batch_noise"] = (math.fsum(noise) / len(noise)) if (k >= 2 and noise) else None
        self._memo[key] = ref
        return ref

    def raw_ref(self, layer, lo, hi):
        """raw_reference() over the raw samples of the window's batches."""
        return raw_reference([b.raw for b in self.batches(layer, lo, hi)])

    def precise(self, layer, lo, hi, estimator="population"):
        ref = self.window_ref(layer, lo, hi)
        if ref is None:
            return None
        pre = "pop_" if estimator == "population" else "mbv_"
        return ref[pre + "mean"], ref[pre + "var"]

    # -- the simulated EMA ------------------------------------------------------

    @staticmethod
    def _replay(points, channels, a):
        """PyTorch's update over (key, N, [(mean, M2)]) points, from 0 and 1."""
        rm, rv = [0.0] * channels, [1.0] * channels
        out = {}
        for key, n_tot, ch_stats in points:
            for ch in range(channels):
                x = float(ch_stats[ch][0])
                xv = float(ch_stats[ch][1] / (n_tot - 1)) if n_tot > 1 else 0.0
                rm[ch] = a * x + (1.0 - a) * rm[ch]
                rv[ch] = a * xv + (1.0 - a) * rv[ch]
            out[key] = (list(rm), list(rv))
        return out

    def sim_exact(self, layer, a):
        """{step: (means, vars)} of the per-step replay (what a full replay gives)."""
        key = ("sim", layer, a)
        if key not in self._memo:
            pts = [(s,) + self.pooled(layer, s - 1, s) for s in self.steps(layer)]
            self._memo[key] = self._replay(pts, len(LAYERS[layer][0]), a)
        return self._memo[key]

    def sim_exact_at(self, layer, a, step):
        table = self.sim_exact(layer, a)
        before = [s for s in table if s <= step]
        return table[max(before)]

    def sim_coarse(self, layer, a):
        """{entry end: (means, vars)} of the replay of the stored entries: each
        bucket as one step of its pooled statistics."""
        key = ("coarse", layer, a)
        if key not in self._memo:
            pts = [(e,) + self.pooled(layer, e - w, e) for e, w in self.entries(layer)]
            self._memo[key] = self._replay(pts, len(LAYERS[layer][0]), a)
        return self._memo[key]

    def replayed_spread(self, layer, a, channel):
        """max - min of every value a replay of this channel starts from or
        takes in (initial state, per-step and bucket pooled values)."""
        ms, vs = [0.0], [1.0]
        for lo, hi in ([(s - 1, s) for s in self.steps(layer)] +
                       [(e - w, e) for e, w in self.entries(layer)]):
            n_tot, ch_stats = self.pooled(layer, lo, hi)
            ms.append(float(ch_stats[channel][0]))
            vs.append(float(ch_stats[channel][1] / (n_tot - 1)))
        return max(ms) - min(ms), max(vs) - min(vs)

    # -- worker EMAs --------------------------------------------------------------

    def ema_in(self, layer, worker, lo, hi):
        """That worker's last EMA of the layer in (lo, hi] (highest step, and
        there the highest seq): (mean, var), or None."""
        slot = self.emas.get((layer, worker), {})
        steps = [s for s in slot if lo < s <= hi]
        if not steps:
            return None
        _, m, v = slot[max(steps)]
        return m, v

    def first_ema_worker(self, lo, hi, layer=None):
        names = [w for w in WORKERS for name in ([layer] if layer else LAYERS)
                 if self.ema_in(name, w, lo, hi) is not None]
        return min(names) if names else None


_MODEL = None


def model():
    global _MODEL
    if _MODEL is None:
        _MODEL = Model(20250917)
    return _MODEL


# --------------------------------------------------------------------------
# comparison metrics (Decimal, 50 digits)

def cmp_ref(me, ve, mp, vp):
    merr, verr, kls = [], [], []
    for a, b, c, d in zip(me, ve, mp, vp):
        vpe = Decimal(d) + D_EPS
        vee = Decimal(b) + D_EPS
        diff = Decimal(a) - Decimal(c)
        lr = (vee / vpe).ln()
        merr.append(abs(diff) / vpe.sqrt())
        verr.append(abs(lr))
        kls.append((lr + (vpe + diff * diff) / vee - 1) / 2)   # KL(N_p || N_e)
    n = len(merr)
    return {"mean_err": sum(merr) / n, "mean_err_max": max(merr),
            "var_err": sum(verr) / n, "var_err_max": max(verr),
            "kl": sum(kls) / n, "kl_max": max(kls)}


def overall_ref(per_layer):
    vals = list(per_layer.values())
    return {k: (max(v[k] for v in vals) if k.endswith("_max")
                else sum(v[k] for v in vals) / len(vals)) for k in METRICS}


# --------------------------------------------------------------------------
# talking to the daemon

def upload(d, run, docs):
    """POST docs in order on one keep-alive connection; each must be new."""
    s = Session(d.port)
    try:
        for doc in docs:
            st, body, _ = s.post_batch(run, doc)
            if st != 200 or not isinstance(body, dict) or body.get("duplicate") is not False:
                raise AssertionError("upload %s step %d seq %d to %s: %r %r"
                                     % (doc["worker"], doc["step"], doc["seq"], run, st, body))
    finally:
        s.close()


def domain_entry(info, name="default"):
    for dom in info.get("domains") or ():
        if dom.get("name") == name:
            return dom
    raise AssertionError("no domain %r in %r" % (name, info))


def wait_caught_up(d, run, m, timeout=POLL_TIMEOUT):
    """Poll (bounded) until bucketed_through of the default domain is the
    expected one and the series of every layer show the expected entries;
    return the final GET /v1/runs/{run} body."""
    want = expected_bucketed_through()
    deadline = time.monotonic() + timeout
    last = None
    while True:
        st, body, _ = d.get("/v1/runs/%s" % run)
        last = (st, body)
        if st == 200 and domain_entry(body).get("bucketed_through") == want:
            break
        if time.monotonic() >= deadline or not d.running:
            raise AssertionError("bucketed_through of %s/default did not become %d within "
                                 "%.0f s (latest step %d, --history-full-steps %d); last "
                                 "GET /v1/runs/%s: %r\n%s"
                                 % (run, want, timeout, LAST, H, run, last, d.log_tail()))
        time.sleep(0.05)
    # the coarser tiers may be formed after the first one: wait for the layout too
    for layer in LAYERS:
        want_steps = [e for e, _ in m.entries(layer)]
        while True:
            st, sb, _ = d.get("/v1/runs/%s/series" % run, {"layer": layer, "channel": 0})
            if st == 200 and sb.get("step") == want_steps:
                break
            if time.monotonic() >= deadline or not d.running:
                raise AssertionError("series %s of %s: stored entries %r, expected %r "
                                     "(buckets at 100, 200 (width 100), 210..270 (width 10), "
                                     "then every step) within %.0f s\n%s"
                                     % (layer, run, sb.get("step") if st == 200 else (st, sb),
                                        want_steps, timeout, d.log_tail()))
            time.sleep(0.05)
    st, body, _ = d.get("/v1/runs/%s" % run)
    assert st == 200, (st, body)
    return body


# --------------------------------------------------------------------------
# assertions

class HistoryMixin(TestCaseMixin):

    def assertRelClose(self, got, ref, rel, what=""):
        if not (isinstance(got, float) and abs(got - ref) <= rel * abs(ref)):
            super().assertRelClose(got, ref, rel, what)

    def get_ok(self, path, d=None, **params):
        d = d or self.d
        st, body, _ = d.get(path, params)
        self.assertEqual(st, 200, "GET %s %r: %r %r" % (path, params, st, body))
        return body

    def stats_ok(self, d=None, run=RUN, **params):
        return self.get_ok("/v1/runs/%s/stats" % run, d, **params)

    def series_ok(self, layer, channel, d=None, run=RUN, **params):
        return self.get_ok("/v1/runs/%s/series" % run, d, layer=layer, channel=channel,
                           **params)

    def check_window_fields(self, body, step, window, what, bucketed=True):
        """step/window/requested_window/resolution of a reply for the request
        (step, window); returns the window used (lo, hi). bucketed=False: a
        daemon that never buckets (every window as asked, resolution 1)."""
        lo, hi, res = cover(step - window, step) if bucketed else (step - window, step, 1)
        for key in ("step", "window", "requested_window", "resolution"):
            self.assertTrue(is_json_int(body.get(key)), "%s: %s=%r is not a JSON integer"
                            % (what, key, body.get(key)))
        self.assertEqual((body["step"], body["window"], body["requested_window"],
                          body["resolution"]), (hi, hi - lo, window, res),
                         "%s: (step, window, requested_window, resolution) of the reply, "
                         "expected the covering entries (%d, %d]" % (what, lo, hi))
        return lo, hi

    def check_layer_stats(self, got, m, layer, lo, hi, estimator, what, raw=False, sizes=True):
        ref = m.window_ref(layer, lo, hi)
        self.assertIsNotNone(ref, what + ": no reference data (bad test)")
        self.assertIsInstance(got, dict, what)
        for key in ("channels", "count", "batches"):
            self.assertTrue(is_json_int(got.get(key)), "%s: %s=%r" % (what, key, got.get(key)))
        self.assertEqual(got["channels"], len(LAYERS[layer][0]), what)
        self.assertEqual(got["count"], ref["count"], what + ".count")
        self.assertEqual(got["batches"], ref["batches"], what + ".batches")
        pre = "pop_" if estimator == "population" else "mbv_"
        self.assertAllRelClose(got["mean"], ref[pre + "mean"], REL, what + ".mean")
        self.assertAllRelClose(got["var"], ref[pre + "var"], REL, what + ".var")
        if not sizes:          # a snapshot holds no batch sizes or batch noise
            return
        bs = got.get("batch_size")
        self.assertIsInstance(bs, dict, what + ".batch_size")
        self.assertEqual((bs.get("min"), bs.get("max")), (ref["nbs_min"], ref["nbs_max"]),
                         what + ".batch_size")
        self.assertRelClose(bs.get("mean"), ref["nbs_mean"], REL, what + ".batch_size.mean")
        if ref["batch_noise"] is None:
            self.assertIsNone(got.get("batch_noise"), what + ".batch_noise")
        else:
            self.assertRelClose(got.get("batch_noise"), ref["batch_noise"], REL,
                                what + ".batch_noise")
        if raw:
            # the same window from the raw samples (values rounded once)
            rr = m.raw_ref(layer, lo, hi)
            self.assertEqual((got["count"], got["batches"]), (rr["count"], rr["batches"]), what)
            self.assertAllRelClose(got["mean"], rr[pre + "mean"], REL, what + ".mean (raw)")
            self.assertAllRelClose(got["var"], rr[pre + "var"], REL, what + ".var (raw)")
            self.assertRelClose(got["batch_noise"], rr["batch_noise"], REL,
                                what + ".batch_noise (raw)")

    def check_stats(self, step, window, estimator="population", d=None, run=RUN, raw=False,
                    layers=tuple(LAYERS), bucketed=True):
        """/stats at (step, window): the fields and every layer against the
        reference over the covering window; returns the body."""
        m = model()
        what = "stats %s step=%d window=%d estimator=%s" % (run, step, window, estimator)
        body = self.stats_ok(d, run, step=step, window=window, estimator=estimator)
        lo, hi = self.check_window_fields(body, step, window, what, bucketed)
        self.assertEqual(body.get("estimator"), estimator, what)
        want = sorted(l for l in layers if m.window_ref(l, lo, hi) is not None)
        self.assertEqual(sorted(body.get("layers", {})), want, what + ": layers")
        for layer in want:
            self.check_layer_stats(body["layers"][layer], m, layer, lo, hi, estimator,
                                   "%s layers.%s over (%d, %d]" % (what, layer, lo, hi), raw)
        return body

    def assertMetric(self, got, ref, what):
        self.assertIsInstance(got, float, "%s: %r is not a JSON number" % (what, got))
        self.assertTrue(math.isfinite(got), what)
        ref_f = float(ref)
        self.assertLessEqual(abs(got - ref_f), MET_REL * abs(ref_f) + MET_ABS,
                             "%s: got %r, expected %r" % (what, got, ref_f))

    def assertMetrics(self, got, ref, what):
        self.assertIsInstance(got, dict, what)
        for k in METRICS:
            self.assertMetric(got.get(k), ref[k], "%s.%s" % (what, k))

    def check_series_entries(self, body, layer, channel, a, what):
        """An unmerged series: one point per stored entry, every array."""
        m = model()
        ents = m.entries(layer)
        n = len(ents)
        self.assertEqual(body.get("step"), [e for e, _ in ents], what + ": steps")
        self.assertEqual(body.get("resolution"), [w for _, w in ents], what + ": resolution")
        for key in ("batch_mean", "batch_var", "precise_mean", "precise_var", "ema_mean",
                    "ema_var", "sim_mean", "sim_var", "sim_error_bound"):
            self.assertEqual(len(body.get(key) or ()), n, "%s: %s not parallel to step"
                             % (what, key))
        for i, (e, w) in enumerate(ents):
            at = "%s at %d (width %d)" % (what, e, w)
            n_tot, ch = m.pooled(layer, e - w, e)
            self.assertRelClose(body["batch_mean"][i], float(ch[channel][0]), REL,
                                at + " batch_mean")
            self.assertRelClose(body["batch_var"][i], float(ch[channel][1] / n_tot), REL,
                                at + " batch_var (population M2/n)")
            # window 1 ending at a bucket end is widened to the bucket
            pm, pv = m.precise(layer, e - w, e)
            self.assertRelClose(body["precise_mean"][i], pm[channel], REL, at + " precise_mean")
            self.assertRelClose(body["precise_var"][i], pv[channel], REL, at + " precise_var")
            rm, rv = m.sim_exact_at(layer, a, e)
            self.assertRelClose(body["sim_mean"][i], rm[channel], REL, at + " sim_mean")
            self.assertRelClose(body["sim_var"][i], rv[channel], REL, at + " sim_var")
            self.assertEqual(body["sim_error_bound"][i], 0, at + " sim_error_bound")
            wk = m.first_ema_worker(e - w, e, layer)
            ema = m.ema_in(layer, wk, e - w, e) if wk else None
            if ema is None:
                self.assertIsNone(body["ema_mean"][i], at + " ema_mean")
                self.assertIsNone(body["ema_var"][i], at + " ema_var")
            else:
                # the worker EMA comes back exactly as sent
                self.assertEqual(body["ema_mean"][i], ema[0][channel],
                                 at + " ema_mean (%s's last in the entry)" % wk)
                self.assertEqual(body["ema_var"][i], ema[1][channel],
                                 at + " ema_var (%s's last in the entry)" % wk)


# --------------------------------------------------------------------------

class TestHistory(HistoryMixin, unittest.TestCase):
    """One daemon with --history-full-steps 20 and one uploaded run, shared."""

    @classmethod
    def setUpClass(cls):
        cls.m = model()
        cls.d = Daemon(*HIST_ARGS)
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        upload(cls.d, RUN, cls.m.docs)
        cls.info = wait_caught_up(cls.d, RUN, cls.m)

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    # the layout the whole file relies on
    def test_00_layout(self):
        m = self.m
        self.assertEqual(m.entries("bn1")[:9], [(100, 100), (200, 100)] +
                         [(e, 10) for e in range(210, 280, 10)])
        self.assertEqual([w for _, w in m.entries("bn1")[9:]], [1] * (len(m.entries("bn1")) - 9))
        self.assertEqual(m.entries("bn1")[9][0], 271)
        dom = domain_entry(self.info)
        self.assertEqual(dom.get("bucketed_through"), 270)
        self.assertEqual(dom.get("batches"), len(m.docs))
        self.assertEqual(self.info.get("batches"), len(m.docs))

    # 1 -------------------------------------------------------------------------

    WHOLE = ((100, 100), (200, 100), (200, 200), (250, 30), (260, 10), (270, 170),
             (290, 90), (299, 299), (210, 110))

    def test_01_stats_whole_buckets(self):
        for step, window in self.WHOLE:
            lo, hi, _ = cover(step - window, step)
            self.assertEqual((lo, hi), (step - window, step), "bad test: (%d, %d] cuts a bucket"
                             % (step - window, step))
            self.check_stats(step, window, "population", raw=True)
            self.check_stats(step, window, "mean_of_batch_var", raw=True)
        # the resolutions of a few of them, spelled out
        for step, window, res in ((100, 100, 100), (250, 30, 10), (290, 90, 10),
                                  (299, 299, 100), (270, 170, 100)):
            body = self.stats_ok(step=step, window=window)
            self.assertEqual((body["step"], body["window"], body["requested_window"],
                              body["resolution"]), (step, window, window, res))

    # 2 -------------------------------------------------------------------------

    CUT = ((255, 7, 260, 20, 10),      # (248, 255] -> (240, 260]
           (255, 1, 260, 10, 10),      # inside one 10-bucket
           (215, 3, 220, 10, 10),
           (150, 20, 200, 100, 100),   # inside the 100-bucket (100, 200]
           (205, 100, 210, 110, 100),  # (105, 205] -> (100, 210]
           (275, 10, 275, 15, 10),     # (265, 275] -> (260, 275]: only the old end is cut
           (100, 1, 100, 100, 100))    # window 1 at a bucket end: the whole bucket

    def test_02_stats_window_cutting_a_bucket(self):
        for step, window, r_step, r_window, res in self.CUT:
            self.assertEqual(cover(step - window, step), (r_step - r_window, r_step, res),
                             "bad test")
            for est in ("population", "mean_of_batch_var"):
                body = self.check_stats(step, window, est)
                self.assertEqual((body["step"], body["window"], body["requested_window"],
                                  body["resolution"]), (r_step, r_window, window, res))

    def test_02_snapshot_of_a_cut_window(self):
        # snapshots are windows too: widened like /stats, and the reply says so
        st, body, _ = self.d.request("POST", "/v1/runs/%s/snapshots" % RUN,
                                     b'{"label": "cut", "step": 255, "window": 7}',
                                     {"Content-Type": "application/json"})
        self.assertEqual(st, 201, body)
        st, stored, _ = self.d.get("/v1/runs/%s/snapshots/cut" % RUN)
        self.assertEqual(st, 200, stored)
        for what, b in (("POST reply", body), ("GET snapshots/cut", stored)):
            self.assertEqual((b.get("step"), b.get("window")), (260, 20),
                             "snapshot step=255 window=7, %s: %r" % (what, b))
            for layer in LAYERS:
                self.check_layer_stats(b["layers"][layer], self.m, layer, 240, 260,
                                       "population", "snapshot %s %s" % (what, layer),
                                       sizes=False)
        self.assertEqual((body.get("requested_window"), body.get("resolution")), (7, 10),
                         "POST snapshots step=255 window=7: requested_window and resolution "
                         "(docs/API.md, History, Windows: every reply of these endpoints "
                         "carries them): %r" % body)

    # 3 -------------------------------------------------------------------------

    def test_03_stats_inside_the_horizon(self):
        for step, window in ((299, 1), (299, 29), (285, 5), (290, 20), (281, 1), (279, 9),
                             (299, 19), (290, 10)):
            for est in ("population", "mean_of_batch_var"):
                body = self.check_stats(step, window, est)
                self.assertEqual((body["step"], body["window"], body["requested_window"],
                                  body["resolution"]), (step, window, window, 1))
        body = self.stats_ok()       # the defaults: the latest step, window 1
        self.assertEqual((body["step"], body["window"], body["requested_window"],
                          body["resolution"]), (LAST, 1, 1, 1))

    # 4 -------------------------------------------------------------------------

    def test_04_uploads_into_bucketed_steps(self):
        m = self.m
        views = [("/v1/runs/%s/stats" % RUN, {"step": 299, "window": 299}),
                 ("/v1/runs/%s/stats" % RUN, {"step": 255, "window": 7}),
                 ("/v1/runs/%s/series" % RUN, {"layer": "bn1", "channel": 1}),
                 ("/v1/runs/%s" % RUN, {})]
        before = [self.get_ok(p, **q) for p, q in views]
        # retries of accepted batches: in a 100-bucket, in 10-buckets, at a
        # bucket end, a biased one of w1, and one inside the horizon
        retries = [m.docs[0], m.doc_at(255), m.doc_at(270), m.doc_at(240, "w1"),
                   m.doc_at(212), m.doc_at(273)]
        for doc in retries:
            st, body, _ = self.d.post_batch(RUN, doc)
            what = "retry of %s step %d seq %d" % (doc["worker"], doc["step"], doc["seq"])
            self.assertEqual(st, 200, "%s: %r %r" % (what, st, body))
            self.assertEqual((body.get("accepted"), body.get("duplicate"), body.get("layers")),
                             (True, True, len(doc["layers"])), "%s: %r" % (what, body))
        # new batches at bucketed steps
        base = m.doc_at(255)
        news = [dict(base, seq=7),                       # a new seq of the same worker
                dict(base, worker="w9"),                 # a new worker
                dict(m.docs[0], seq=3),                  # in the 100-bucket (0, 100]
                dict(base, worker="w9", step=247),       # a step without data, < 270
                dict(base, worker="w9", step=270),       # the last bucketed step itself
                dict(base, worker="w9", step=0)]         # below every bucket
        for doc in news:
            reply = self.d.post_batch(RUN, doc)
            self.assertError(reply, 409, "step_compacted",
                             what="new batch %s step %d seq %d" % (doc["worker"], doc["step"],
                                                                    doc["seq"]))
        after = [self.get_ok(p, **q) for p, q in views]
        for (p, q), b, a in zip(views, before, after):
            self.assertEqual(a, b, "GET %s %r changed after refused/duplicate uploads" % (p, q))
        self.check_stats(299, 299)

    # 5 -------------------------------------------------------------------------

    def test_05_series_entries(self):
        for layer in LAYERS:
            for ch in range(len(LAYERS[layer][0])):
                body = self.series_ok(layer, ch, momentum="0.1")
                self.assertEqual(body.get("stride"), 1)
                self.check_series_entries(body, layer, ch, 0.1,
                                          "series %s[%d] momentum 0.1" % (layer, ch))
        # a window over several entries at every point
        body = self.series_ok("bn1", 2, window=30)
        ents = self.m.entries("bn1")
        for i, (e, w) in enumerate(ents):
            lo, hi, _ = cover(e - 30, e)
            pm, pv = self.m.precise("bn1", lo, hi)
            self.assertRelClose(body["precise_mean"][i], pm[2], REL,
                                "series window 30 precise_mean at %d over (%d, %d]" % (e, lo, hi))
            self.assertRelClose(body["precise_var"][i], pv[2], REL,
                                "series window 30 precise_var at %d over (%d, %d]" % (e, lo, hi))
        # a range from a bucket's first step to inside the horizon
        body = self.series_ok("bn2", 0, **{"from": 261, "to": 285})
        self.assertEqual(body["step"], [e for e, _ in self.m.entries("bn2") if 261 <= e <= 285])
        self.assertEqual(body["resolution"], [10] + [1] * (len(body["step"]) - 1))

    def test_05_series_merged_points(self):
        m = self.m
        for layer, ch in (("bn1", 0), ("bn2", 1)):
            full = self.series_ok(layer, ch)
            ents = m.entries(layer)
            ends = [e for e, _ in ents]
            for params in ({"points": 5}, {"points": 12}, {"stride": 3}, {"stride": 8},
                           {"points": 10000}):
                what = "series %s[%d] %r" % (layer, ch, params)
                body = self.series_ok(layer, ch, **params)
                stride = body.get("stride")
                self.assertTrue(is_json_int(stride), what)
                steps = body["step"]
                for key in ("resolution", "batch_mean", "batch_var", "precise_mean",
                            "precise_var", "ema_mean", "ema_var", "sim_mean", "sim_var",
                            "sim_error_bound"):
                    self.assertEqual(len(body[key]), len(steps), "%s: %s" % (what, key))
                for s in steps:
                    self.assertIn(s, ends, what + ": a point not at an entry's end")
                idx = [ends.index(s) for s in steps]
                self.assertEqual(idx, sorted(set(idx)), what)
                self.assertEqual(idx[-1], len(ents) - 1, what + ": the last entry")
                groups, prev = [], -1
                for i in idx:
                    groups.append(ents[prev + 1:i + 1])
                    prev = i
                sizes = [len(g) for g in groups]
                if "stride" in params:
                    self.assertEqual(stride, params["stride"], what)
                elif params["points"] >= len(ents):
                    self.assertEqual(stride, 1, what)
                    self.assertEqual(body, full, what)
                else:
                    self.assertGreater(stride, 1, what)
                    self.assertLessEqual(len(steps), params["points"] + 1, what)
                    self.assertGreaterEqual(len(steps), max(1, params["points"] // 2), what)
                self.assertTrue(all(sz <= stride for sz in sizes), "%s: %r" % (what, sizes))
                self.assertLessEqual(sum(1 for sz in sizes if sz != stride), 1,
                                     "%s: entries per point %r, stride %d" % (what, sizes, stride))
                for j, g in enumerate(groups):
                    lo, hi = g[0][0] - g[0][1], g[-1][0]
                    at = "%s point %d (entries %r)" % (what, steps[j], g)
                    n_tot, pc = m.pooled(layer, lo, hi)
                    self.assertRelClose(body["batch_mean"][j], float(pc[ch][0]), REL,
                                        at + " batch_mean")
                    self.assertRelClose(body["batch_var"][j], float(pc[ch][1] / n_tot), REL,
                                        at + " batch_var")
                    k = idx[j]
                    for key in ("precise_mean", "precise_var", "sim_mean", "sim_var"):
                        self.assertRelClose(body[key][j], full[key][k], REL,
                                            "%s %s (that of its last entry)" % (at, key))
                    for key in ("ema_mean", "ema_var", "sim_error_bound"):
                        self.assertEqual(body[key][j], full[key][k],
                                         "%s %s (that of its last entry)" % (at, key))
                    widths = sum(w for _, w in g)
                    res = body["resolution"][j]
                    self.assertTrue(is_json_int(res), at)
                    self.assertTrue(widths <= res <= hi - lo,
                                    "%s: resolution %r, the entries cover %d steps of (%d, %d]"
                                    % (at, res, widths, lo, hi))

    # 6 -------------------------------------------------------------------------

    def test_06_sim_exact_at_bucket_ends_and_horizon(self):
        m = self.m
        for a in (0.1, 0.01, 0.001):
            for layer in LAYERS:
                for ch in range(len(LAYERS[layer][0])):
                    body = self.series_ok(layer, ch, momentum=repr(a))
                    self.assertEqual(body.get("momentum"), a)
                    self.check_series_entries(body, layer, ch, a, "series %s[%d] momentum %r"
                                              % (layer, ch, a))
        # /compare ema=sim momentum 0.1: at a bucket (whole, and a cut window
        # widened to it) and inside the horizon
        for step, window in ((260, 10), (255, 1), (200, 100), (285, 1), (299, 29), (290, 90)):
            what = "compare ema=sim momentum=0.1 step=%d window=%d" % (step, window)
            body = self.get_ok("/v1/runs/%s/compare" % RUN, ema="sim", momentum="0.1",
                               step=step, window=window)
            lo, hi = self.check_window_fields(body, step, window, what)
            self.assertEqual(body.get("sim_error_bound"), 0, what + ": sim_error_bound")
            per = {}
            for layer in LAYERS:
                prec = m.precise(layer, lo, hi)
                me, ve = m.sim_exact_at(layer, 0.1, hi)
                per[layer] = cmp_ref(me, ve, prec[0], prec[1])
            self.assertEqual(sorted(body["layers"]), sorted(per), what)
            for layer in per:
                self.assertMetrics(body["layers"][layer], per[layer],
                                   "%s layers.%s" % (what, layer))
            self.assertMetrics(body["overall"], overall_ref(per), what + " overall")

    # 7 -------------------------------------------------------------------------

    def check_coarse_series(self, layer, ch, a, domain):
        """A momentum or domain without kept states: buckets replayed as one
        step, sim_error_bound (1 - a)^k after k exact steps, 1 at a bucket."""
        m = self.m
        what = "series %s[%d] momentum %r domain %s" % (layer, ch, a, domain)
        body = self.series_ok(layer, ch, momentum=repr(a), domain=domain)
        ents = m.entries(layer)
        self.assertEqual(body["step"], [e for e, _ in ents], what)
        coarse = m.sim_coarse(layer, a)
        sm, sv = m.replayed_spread(layer, a, ch)
        k = 0
        for i, (e, w) in enumerate(ents):
            at = "%s at %d (width %d)" % (what, e, w)
            k = 0 if w > 1 else k + 1
            bound = body["sim_error_bound"][i]
            self.assertIsInstance(bound, (int, float), at)
            self.assertTrue(0 < bound <= 1, "%s: sim_error_bound %r" % (at, bound))
            self.assertRelClose(bound, 1.0 if w > 1 else (1.0 - a) ** k, 1e-9,
                                at + " sim_error_bound")
            self.assertRelClose(body["sim_mean"][i], coarse[e][0][ch], REL,
                                at + " sim_mean (buckets replayed as one step)")
            self.assertRelClose(body["sim_var"][i], coarse[e][1][ch], REL,
                                at + " sim_var (buckets replayed as one step)")
            em, ev = m.sim_exact_at(layer, a, e)
            self.assertLessEqual(abs(body["sim_mean"][i] - em[ch]), bound * sm * (1 + 1e-9) + 1e-15,
                                 at + ": sim_mean off the exact replay by more than the bound")
            self.assertLessEqual(abs(body["sim_var"][i] - ev[ch]), bound * sv * (1 + 1e-9) + 1e-15,
                                 at + ": sim_var off the exact replay by more than the bound")
        if domain == "*":
            self.assertTrue(all(v is None for v in body["ema_mean"]), what + ": ema_mean")
        return body

    def test_07_sim_other_momentum(self):
        m = self.m
        a = 0.2
        k = len([s for s in m.steps("bn1") if 270 < s <= 290])
        self.assertEqual(k, len([s for s in m.steps("bn2") if 270 < s <= 290]))
        for step, window in ((290, 1), (290, 20), (299, 29)):
            what = "compare ema=sim momentum=0.2 step=%d window=%d" % (step, window)
            body = self.get_ok("/v1/runs/%s/compare" % RUN, ema="sim", momentum="0.2",
                               step=step, window=window)
            lo, hi = self.check_window_fields(body, step, window, what)
            bound = body.get("sim_error_bound")
            self.assertIsInstance(bound, float, what + ": sim_error_bound %r" % bound)
            self.assertTrue(math.isfinite(bound) and 0 < bound <= 1,
                            "%s: sim_error_bound %r" % (what, bound))
            kk = len([s for s in m.steps("bn1") if 270 < s <= hi])
            self.assertRelClose(bound, (1 - a) ** kk, 1e-9, what + ": sim_error_bound")
            per = {}
            for layer in LAYERS:
                prec = m.precise(layer, lo, hi)
                coarse = m.sim_coarse(layer, a)[max(e for e, _ in m.entries(layer) if e <= hi)]
                per[layer] = cmp_ref(coarse[0], coarse[1], prec[0], prec[1])
            for layer in per:
                for key in METRICS:
                    self.assertTrue(math.isfinite(body["layers"][layer][key]), what)
                self.assertMetrics(body["layers"][layer], per[layer],
                                   "%s layers.%s" % (what, layer))
            self.assertMetrics(body["overall"], overall_ref(per), what + " overall")
        # at a bucket end the bound is 1
        body = self.get_ok("/v1/runs/%s/compare" % RUN, ema="sim", momentum="0.2", step=260,
                           window=10)
        self.assertEqual(body.get("sim_error_bound"), 1, "compare momentum 0.2 at bucket 260")
        # the series, and domain * (no kept states even for a listed momentum)
        for layer, ch in (("bn1", 0), ("bn1", 2), ("bn2", 1)):
            self.check_coarse_series(layer, ch, a, "default")
            self.check_coarse_series(layer, ch, 0.1, "*")

    # 8 -------------------------------------------------------------------------

    def test_08_worker_ema_at_bucket_ends(self):
        m = self.m
        ends = [(e, w) for e, w in m.entries("bn1") if w > 1]
        seen_w2_missing = False
        for e, w in ends + [(290, 1), (299, 1)]:
            lo = e - w
            default = m.first_ema_worker(lo, e)
            self.assertEqual(default, "w0", "bad test")
            for worker in (None,) + WORKERS:
                wk = worker or default
                params = {"step": e, "window": 1, "ema": "worker"}
                if worker:
                    params["worker"] = worker
                what = "compare %r" % params
                per = {}
                for layer in LAYERS:
                    ema = m.ema_in(layer, wk, lo, e)
                    if ema is not None:
                        prec = m.precise(layer, lo, e)
                        per[layer] = cmp_ref(ema[0], ema[1], prec[0], prec[1])
                st, body, _ = self.d.get("/v1/runs/%s/compare" % RUN, params)
                if not per:
                    seen_w2_missing = True
                    self.assertError((st, body, None), 404,
                                     what=what + ": the worker reported no EMA in the entry")
                    continue
                self.assertEqual(st, 200, "%s: %r %r" % (what, st, body))
                self.check_window_fields(body, e, 1, what)
                self.assertEqual(body.get("worker"), wk, what)
                self.assertEqual(sorted(body["layers"]), sorted(per), what + ": layers")
                for layer in per:
                    self.assertMetrics(body["layers"][layer], per[layer],
                                       "%s layers.%s (%s's last EMA in (%d, %d])"
                                       % (what, layer, wk, lo, e))
                self.assertMetrics(body["overall"], overall_ref(per), what + " overall")
        self.assertTrue(seen_w2_missing, "bad test: w2 reported in every bucket")
        # a step inside a bucket reads the bucket's EMA (the window is widened to it)
        body = self.get_ok("/v1/runs/%s/compare" % RUN, step=255, ema="worker", worker="w1")
        self.check_window_fields(body, 255, 1, "compare ema=worker step=255")
        per = {}
        for layer in LAYERS:
            ema = m.ema_in(layer, "w1", 250, 260)
            prec = m.precise(layer, 250, 260)
            per[layer] = cmp_ref(ema[0], ema[1], prec[0], prec[1])
        for layer in per:
            self.assertMetrics(body["layers"][layer], per[layer], "step=255 layers." + layer)

    # 9 -------------------------------------------------------------------------

    def test_09_bytes(self):
        m = self.m
        full = Daemon("--history-full-steps", "0", "--synchronous", "normal")
        self.addCleanup(full.close)
        full.start()
        upload(full, RUN, m.docs)
        fb = self.get_ok("/v1/runs/%s" % RUN, full)
        self.assertIsNone(domain_entry(fb).get("bucketed_through"),
                          "--history-full-steps 0: bucketed_through %r" % domain_entry(fb))
        hb = self.get_ok("/v1/runs/%s" % RUN)
        for name, b in (("bucketed", hb), ("every step kept", fb)):
            self.assertTrue(is_json_int(b.get("bytes")), "%s: bytes %r" % (name, b.get("bytes")))
            self.assertGreater(b["bytes"], 0, name)
        self.assertLess(hb["bytes"], fb["bytes"],
                        "bytes of the bucketed run (%d) not below the same run with every step "
                        "kept (%d)" % (hb["bytes"], fb["bytes"]))
        # and with 0 nothing is ever bucketed: a cut window is not widened
        body = self.check_stats(255, 7, d=full, bucketed=False)
        self.assertEqual((body["step"], body["window"], body["requested_window"],
                          body["resolution"]), (255, 7, 7, 1), "--history-full-steps 0")
        sb = self.series_ok("bn1", 0, d=full)
        self.assertEqual(sb["step"], m.steps("bn1"))
        self.assertEqual(sb["resolution"], [1] * len(sb["step"]))
        self.assertEqual(self.series_ok("bn1", 0, d=full, momentum="0.2")["sim_error_bound"],
                         [0] * len(sb["step"]))
        st, body, _ = full.post_batch(RUN, dict(m.doc_at(255), worker="w9"))
        self.assertEqual(st, 200, body)

    def test_09_bytes_are_the_stored_arrays(self):
        """bytes is the sum of the run's blobs, after bucketing, EMAs and kept states."""
        import sqlite3
        for d in (self.d,):
            hb = self.get_ok("/v1/runs/%s" % RUN, d)
            con = sqlite3.connect("file:%s?mode=ro" % d.db, uri=True)
            try:
                (rid,) = con.execute("SELECT id FROM runs WHERE name = ?", (RUN,)).fetchone()
                total = sum(con.execute("SELECT coalesce(sum(length(data)), 0) FROM %s"
                                        " WHERE run_id = ?" % t, (rid,)).fetchone()[0]
                            for t in ("aggs", "emas", "sim_states"))
                kept = con.execute("SELECT count(*) FROM sim_states WHERE run_id = ?",
                                   (rid,)).fetchone()[0]
            finally:
                con.close()
            self.assertGreater(kept, 0, "no replay state kept")
            self.assertEqual(hb["bytes"], total, "bytes against the rows' blobs")

    # 10 ------------------------------------------------------------------------

    def replies(self):
        out = []
        for step, window in self.WHOLE + tuple((s, w) for s, w, _, _, _ in self.CUT):
            for est in ("population", "mean_of_batch_var"):
                out.append(self.stats_ok(step=step, window=window, estimator=est))
        for a in ("0.1", "0.01", "0.2"):
            for layer in LAYERS:
                out.append(self.series_ok(layer, 0, momentum=a))
            out.append(self.get_ok("/v1/runs/%s/compare" % RUN, ema="sim", momentum=a,
                                   step=260, window=10))
        out.append(self.get_ok("/v1/runs/%s/compare" % RUN, ema="worker", step=270))
        out.append(self.get_ok("/v1/runs/%s" % RUN))
        return out

    def test_10_restart_keeps_everything(self):
        before = self.replies()
        self.d.stop()
        self.d.restart()
        after = self.replies()
        self.assertEqual(len(after), len(before))
        for i, (b, a) in enumerate(zip(before, after)):
            self.assertEqual(a, b, "reply %d differs after a restart" % i)
        for step, window in self.WHOLE:
            self.check_stats(step, window)
        self.test_06_sim_exact_at_bucket_ends_and_horizon()
        st, body, _ = self.d.post_batch(RUN, self.m.doc_at(255))
        self.assertEqual((st, body.get("duplicate")), (200, True), body)


class TestHistoryCrash(HistoryMixin, unittest.TestCase):
    """SIGKILL while the daemon is bucketing: nothing lost, nothing counted twice."""

    CRASH_ARGS = ("--history-full-steps", str(H), "--sim-momenta", "0.1,0.05",
                  "--synchronous", "normal")

    def bucketed_through(self, d, run):
        st, body, _ = d.get("/v1/runs/%s" % run)
        self.assertEqual(st, 200, body)
        return domain_entry(body).get("bucketed_through")

    def kill_while_bucketing(self, d, run, waits):
        """Start d once per wait; SIGKILL it as soon as bucketed_through is
        seen to move (a pass just committed, the next one under way), or after
        `wait` seconds. Returns the values seen at the kills."""
        target = expected_bucketed_through()
        seen = []
        for wait in waits:
            d.restart()
            first = self.bucketed_through(d, run)
            deadline = time.monotonic() + wait
            cur = first
            while time.monotonic() < deadline and cur == first and cur != target:
                cur = self.bucketed_through(d, run)
            d.kill()
            seen.append(cur)
        return seen

    def check_recovered(self, d, run):
        """After the kills: everything equal to the reference, once."""
        m = model()
        info = wait_caught_up(d, run, m)
        self.assertEqual(domain_entry(info).get("batches"), len(m.docs))
        self.assertEqual(info.get("batches"), len(m.docs))
        # every stored entry on its own, the whole run, the horizon
        for e, w in m.entries("bn1"):
            self.check_stats(e, w, d=d, run=run)
        for step, window in ((299, 299), (299, 29), (270, 170), (255, 7)):
            self.check_stats(step, window, d=d, run=run)
            self.check_stats(step, window, "mean_of_batch_var", d=d, run=run)
        # the kept replay states were not lost: exact for the daemon's momenta
        for a in (0.1, 0.05):
            for layer in LAYERS:
                for ch in range(len(LAYERS[layer][0])):
                    body = self.series_ok(layer, ch, d=d, run=run, momentum=repr(a))
                    self.check_series_entries(body, layer, ch, a, "%s series %s[%d] momentum %r"
                                              % (run, layer, ch, a))
        # 0.03 is not among this daemon's --sim-momenta: inexact, with a bound
        body = self.series_ok("bn1", 0, d=d, run=run, momentum="0.03")
        self.assertTrue(all(0 < b <= 1 for b in body["sim_error_bound"]),
                        "momentum 0.03 not in --sim-momenta 0.1,0.05: %r"
                        % body["sim_error_bound"])
        # retries still answer duplicate; new batches at bucketed steps are refused
        half = len(m.docs) // 2
        for doc in (m.docs[0], m.docs[half - 1], m.docs[half], m.doc_at(255), m.docs[-1]):
            st, body, _ = d.post_batch(run, doc)
            self.assertEqual((st, body.get("duplicate")), (200, True),
                             "retry of %s step %d seq %d: %r %r"
                             % (doc["worker"], doc["step"], doc["seq"], st, body))
        self.assertError(d.post_batch(run, dict(m.doc_at(255), worker="w9")), 409,
                         "step_compacted")
        self.check_stats(299, 299, d=d, run=run)

    def test_11_kill9_during_bucketing(self):
        m = model()
        run = "crash"
        d = Daemon(*self.CRASH_ARGS)
        self.addCleanup(d.close)
        d.start()
        half = len(m.docs) // 2
        upload(d, run, m.docs[:half])
        d.kill()                              # right after the last 200
        d.restart()
        upload(d, run, m.docs[half:])
        d.kill()
        self.kill_while_bucketing(d, run, (0.0, 0.005, 0.02))
        d.restart()
        self.check_recovered(d, run)

    def test_11_kill9_during_a_long_bucketing_pass(self):
        # the whole run stored per step, then the daemon restarted with a
        # horizon: every bucket is formed in the background after the start
        m = model()
        run = "crash"
        d = Daemon("--history-full-steps", "0", "--synchronous", "normal")
        self.addCleanup(d.close)
        d.start()
        upload(d, run, m.docs)
        self.assertIsNone(self.bucketed_through(d, run))
        d.stop()
        d.args = list(self.CRASH_ARGS)
        self.kill_while_bucketing(d, run, (0.0, 0.5, 0.5, 0.5, 0.002, 0.5))
        d.restart()
        self.check_recovered(d, run)


if __name__ == "__main__":
    unittest.main()
