"""EMA versus precise statistics (docs/API.md, "Comparison", "Series", "Domains"): compare, series, domains, shift.

Every expected number is computed here from the values as uploaded:

  * per-step pooled statistics and precise windows exactly, with Fractions
    (Chan's merge is not used: mean = sum(n*m)/N, M2 = sum(M2_b + n*(m_b-mean)^2));
  * the simulated EMA by a plain loop r = a*x + (1-a)*r over those pooled
    values (x = mean and the unbiased M2/(n-1)), from 0 and 1, first step of
    the run in the domain, steps without data skipped;
  * the comparison metrics with 50-digit Decimal arithmetic from the formulas
    of docs/API.md, "Comparison" (eps = 1e-5).

The simulated EMA is served through a cache of replay checkpoints (every 64
steps with data), which late uploads must invalidate; runs here are longer than
200 steps and the queries are ordered so that checkpoints exist when a late
upload lands, both with a warm cache and after a restart.

Run:
  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \
  PYTHONPATH=tests/integration python3 tests/integration/test_compare.py -v
"""

import math
import random
import threading
import unittest
import zlib
from decimal import Decimal, getcontext
from fractions import Fraction

from bnstat_testlib import (Daemon, Session, TestCaseMixin, b64_f32, b64_f64, f32_round, get,
                            is_json_int)

getcontext().prec = 50

EPS = 1e-5
D_EPS = Decimal(EPS)      # the double 1e-5, exactly
REL = 1e-12               # merges and replays: exact to ~1e-12 relative
MET_REL = 1e-9            # metrics: logs/sqrt of values exact to ~1e-15
MET_ABS = 1e-12
METRICS = ("mean_err", "mean_err_max", "var_err", "var_err_max", "kl", "kl_max")

# layer -> (base means, sigmas) per channel; the mean drifts with the step so
# that an EMA lags behind the precise statistics (the paper's Figure 1).
LAYERS = {
    "bn1": ([4.0, -2.5, 0.75], [1.5, 0.3, 0.01]),   # sigma 0.01: eps matters
    "bn2": ([10.0, 1.0], [2.0, 0.5]),
}
DOMAIN_SHIFT = {"default": (0.0, 1.0), "fpn.p4": (1.0, 1.3), "fpn.p5": (-0.5, 0.8)}
COUNTS = (2, 3, 8, 17, 256, 1000, 4096, 50000)


# --------------------------------------------------------------------------
# the reference model: what was uploaded, and what it implies

class Model:
    """Everything uploaded to one run, as decoded doubles, and references."""

    def __init__(self):
        self.channels = {name: len(v[0]) for name, v in LAYERS.items()}
        self.data = {}       # layer -> step -> [(domain, count, mean, var, kind)]
        self.emas = {}       # (domain, layer, step) -> {worker: (seq, mean, var)}
        self.batches = {}    # domain -> number of batch identities
        self.domain_steps = {}   # domain -> set of steps with data (any layer)
        self._memo = {}

    # -- recording -----------------------------------------------------------

    def add(self, domain, worker, step, seq, layers, kind):
        """layers: name -> (count, mean, var, ema or None), values as decoded."""
        self._memo.clear()
        self.batches[domain] = self.batches.get(domain, 0) + 1
        for name, (count, mean, var, ema) in layers.items():
            if count > 0:
                self.data.setdefault(name, {}).setdefault(step, []).append(
                    (domain, count, list(mean), list(var), kind))
                self.domain_steps.setdefault(domain, set()).add(step)
            if ema is not None:
                slot = self.emas.setdefault((domain, name, step), {})
                if worker not in slot or slot[worker][0] < seq:
                    slot[worker] = (seq, list(ema[0]), list(ema[1]))

    # -- exact pooled statistics ---------------------------------------------

    def entries(self, domain, layer, lo, hi):
        """Batches of `layer` with lo < step <= hi in domain (None: all)."""
        by_step = self.data.get(layer, {})
        if hi - lo <= len(by_step):
            keys = (s for s in range(lo + 1, hi + 1) if s in by_step)
        else:
            keys = (s for s in by_step if lo < s <= hi)
        return [e for s in keys for e in by_step[s] if domain is None or e[0] == domain]

    def steps(self, domain, layer):
        """Steps with data for the layer, ascending."""
        key = ("steps", domain, layer)
        if key not in self._memo:
            self._memo[key] = sorted(
                s for s, lst in self.data.get(layer, {}).items()
                if any(domain is None or e[0] == domain for e in lst))
        return self._memo[key]

    def _step_set(self, domain, layer):
        key = ("stepset", domain, layer)
        if key not in self._memo:
            self._memo[key] = set(self.steps(domain, layer))
        return self._memo[key]

    def latest(self, domain):
        if domain is None:
            return max(max(v) for v in self.domain_steps.values())
        return max(self.domain_steps[domain])

    @staticmethod
    def pool(entries, channels):
        """Exact (N, [(mean, M2)] per channel) of batches, as Fractions."""
        n_tot = sum(e[1] for e in entries)
        out = []
        for c in range(channels):
            mean = sum(Fraction(e[2][c]) * e[1] for e in entries) / n_tot
            m2 = Fraction(0)
            for _, n, m, v, kind in entries:
                m2 += Fraction(v[c]) * (n if kind == "biased" else n - 1)
                d = Fraction(m[c]) - mean
                m2 += n * d * d
            out.append((mean, m2))
        return n_tot, out

    def step_pooled(self, domain, layer, step):
        key = ("pool", domain, layer, step)
        if key not in self._memo:
            self._memo[key] = self.pool(self.entries(domain, layer, step - 1, step),
                                        self.channels[layer])
        return self._memo[key]

    def precise(self, domain, layer, step, window, estimator="population"):
        """(mean list, var list) of the window (step-window, step], or None."""
        key = ("precise", domain, layer, step, window, estimator)
        if key not in self._memo:
            self._memo[key] = self._precise(domain, layer, step, window, estimator)
        return self._memo[key]

    def _precise(self, domain, layer, step, window, estimator):
        if window == 1 and estimator == "population":
            if step not in self.data.get(layer, {}) or not self.steps(domain, layer) or \
                    step not in self._step_set(domain, layer):
                return None
            n_tot, ch = self.step_pooled(domain, layer, step)
            return [float(m) for m, _ in ch], [float(m2 / n_tot) for _, m2 in ch]
        ents = self.entries(domain, layer, step - window, step)
        if not ents:
            return None
        c_n = self.channels[layer]
        if estimator == "population":
            n_tot, ch = self.pool(ents, c_n)
            return [float(m) for m, _ in ch], [float(m2 / n_tot) for _, m2 in ch]
        k = len(ents)
        means, variances = [], []
        for c in range(c_n):
            means.append(float(sum(Fraction(e[2][c]) for e in ents) / k))
            uv = Fraction(0)
            for _, n, _, v, kind in ents:
                uv += Fraction(v[c]) * n / (n - 1) if kind == "biased" else Fraction(v[c])
            variances.append(float(uv / k))
        return means, variances

    # -- simulated EMA -----------------------------------------------------------

    def sim(self, domain, layer, a):
        """{step: (means, vars)} after each step with data, PyTorch's update."""
        key = ("sim", domain, layer, a)
        if key in self._memo:
            return self._memo[key]
        c_n = self.channels[layer]
        rm, rv = [0.0] * c_n, [1.0] * c_n
        out = {}
        for s in self.steps(domain, layer):
            n_tot, ch = self.step_pooled(domain, layer, s)
            for c in range(c_n):
                x = float(ch[c][0])
                xv = float(ch[c][1] / (n_tot - 1)) if n_tot > 1 else 0.0
                rm[c] = a * x + (1.0 - a) * rm[c]
                rv[c] = a * xv + (1.0 - a) * rv[c]
            out[s] = (list(rm), list(rv))
        self._memo[key] = out
        return out

    def sim_at(self, domain, layer, a, step):
        sim = self.sim(domain, layer, a)
        before = [s for s in sim if s <= step]
        if not before:
            c_n = self.channels[layer]
            return [0.0] * c_n, [1.0] * c_n
        return sim[max(before)]

    # -- worker EMA ---------------------------------------------------------------

    def ema(self, domain, layer, step, worker=None):
        """(worker, mean, var) the layer's EMA at step: that worker's (highest
        seq) or, worker None, the first by name that reported one; or None."""
        slot = self.emas.get((domain, layer, step), {})
        if worker is None:
            if not slot:
                return None
            worker = min(slot)
        if worker not in slot:
            return None
        _, m, v = slot[worker]
        return worker, m, v

    def first_ema_worker(self, domain, step):
        names = [w for (d, _, s), slot in self.emas.items() if d == domain and s == step
                 for w in slot]
        return min(names) if names else None


# --------------------------------------------------------------------------
# metrics reference (Decimal, 50 digits)

def cmp_ref(me, ve, mp, vp):
    """The comparison metrics (docs/API.md, "Comparison") of an estimate (me, ve) against a reference (mp, vp)."""
    merr, verr, kls = [], [], []
    for a, b, c, d in zip(me, ve, mp, vp):
        vpe = Decimal(d) + D_EPS
        vee = Decimal(b) + D_EPS
        diff = Decimal(a) - Decimal(c)
        lr = (vee / vpe).ln()
        merr.append(abs(diff) / vpe.sqrt())
        verr.append(abs(lr))
        # KL(N(mp, vp+eps) || N(me, ve+eps))
        kls.append((lr + (vpe + diff * diff) / vee - 1) / 2)
    n = len(merr)
    return {"mean_err": sum(merr) / n, "mean_err_max": max(merr),
            "var_err": sum(verr) / n, "var_err_max": max(verr),
            "kl": sum(kls) / n, "kl_max": max(kls)}


def overall_ref(per_layer):
    vals = list(per_layer.values())
    out = {}
    for k in METRICS:
        xs = [v[k] for v in vals]
        out[k] = max(xs) if k.endswith("_max") else sum(xs) / len(xs)
    return out


# --------------------------------------------------------------------------
# generating and uploading data

def encode(values, enc):
    if enc == "f64":
        return b64_f64(values)
    if enc == "f32":
        return b64_f32(values)
    return list(values)


def decoded(values, enc):
    return [f32_round(x) for x in values] if enc == "f32" else list(values)


def mu_of(layer, c, step, domain):
    base, sig = LAYERS[layer]
    shift, scale = DOMAIN_SHIFT[domain]
    return base[c] + 0.004 * step * (1 + c) + shift, sig[c] * scale


def make_layer(rng, layer, step, domain, count, with_ema):
    """One layer of one upload: (doc entry, model entry)."""
    c_n = len(LAYERS[layer][0])
    if count == 0:
        return {"count": 0}, (0, None, None, None)
    mean, var, em, ev = [], [], [], []
    for c in range(c_n):
        mu, sig = mu_of(layer, c, step, domain)
        mean.append(mu + rng.gauss(0.0, sig / math.sqrt(count)))
        var.append(sig * sig * rng.uniform(0.5, 1.5))
        em.append(mu + rng.gauss(0.0, 0.5 * sig))
        ev.append(sig * sig * rng.uniform(0.4, 2.0))
    enc = rng.choice(("numbers", "numbers", "f64", "f32"))
    mean, var = decoded(mean, enc), decoded(var, enc)
    doc = {"count": count, "mean": encode(mean, enc), "var": encode(var, enc)}
    ema = None
    if with_ema:
        eenc = rng.choice(("numbers", "f64", "f32"))
        em, ev = decoded(em, eenc), decoded(ev, eenc)
        doc["ema_mean"] = encode(em, eenc)
        doc["ema_var"] = encode(ev, eenc)
        ema = (em, ev)
    return doc, (count, mean, var, ema)


def make_upload(rng, model, domain, worker, step, seq, layer_counts, with_ema):
    """An upload doc; records it in the model. layer_counts: {layer: count}."""
    kind = "biased" if rng.random() < 0.2 else "unbiased"
    layers_doc, layers_model = {}, {}
    for name, count in layer_counts.items():
        layers_doc[name], layers_model[name] = make_layer(rng, name, step, domain, count,
                                                          with_ema and count > 0)
    doc = {"worker": worker, "step": step, "seq": seq, "layers": layers_doc}
    if domain != "default":
        doc["domain"] = domain
    if kind == "biased":
        doc["var_kind"] = "biased"
    model.add(domain, worker, step, seq, layers_model, kind)
    return doc


def gen_run(rng, model, last_step, b_last):
    """Uploads of a long run, in upload order.

    Domain "default": steps 0..last_step except s % 11 == 5 and 150..159
    (no data at all there); w0 every step (seq 0, and seq 1 when s % 7 == 2,
    uploaded before seq 0 when s % 14 == 9), w1 at about 40% of the steps;
    bn2 unused (count 0) in w0's seq 0 when s % 39 == 30. w0 reports an EMA
    when s % 3 != 0, w1 when s is even. Domain "fpn.p4": steps s % 4 == 3 up
    to b_last, bn1 only, w0 with an EMA.
    """
    docs = []
    for s in range(last_step + 1):
        if s % 11 != 5 and not 150 <= s < 160:
            n2 = 0 if s % 39 == 30 else rng.choice(COUNTS)
            d0 = make_upload(rng, model, "default", "w0", s, 0,
                             {"bn1": rng.choice(COUNTS), "bn2": n2}, s % 3 != 0)
            w0 = [d0]
            if s % 7 == 2:
                d1 = make_upload(rng, model, "default", "w0", s, 1,
                                 {"bn1": rng.choice(COUNTS), "bn2": rng.choice(COUNTS)},
                                 s % 3 != 0)
                w0 = [d1, d0] if s % 14 == 9 else [d0, d1]
            docs.extend(w0)
            if rng.random() < 0.4:
                docs.append(make_upload(rng, model, "default", "w1", s, 0,
                                        {"bn1": rng.choice(COUNTS), "bn2": rng.choice(COUNTS)},
                                        s % 2 == 0))
        if s % 4 == 3 and s <= b_last:
            docs.append(make_upload(rng, model, "fpn.p4", "w0", s, 0,
                                    {"bn1": rng.choice(COUNTS)}, True))
    return docs


def upload_all(d, run, docs, threads=1):
    """POST docs in order (threads > 1: round-robin over keep-alive sessions)."""
    errors = []

    def post(chunk):
        s = Session(d.port)
        try:
            for doc in chunk:
                st, body, _ = s.post_batch(run, doc)
                if st != 200 or body.get("duplicate") is not False:
                    errors.append((st, body, doc["worker"], doc["step"], doc["seq"]))
        finally:
            s.close()

    if threads == 1:
        post(docs)
    else:
        ts = [threading.Thread(target=post, args=(docs[i::threads],)) for i in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(120)
    if errors:
        raise AssertionError("uploads refused: %r" % errors[:5])


# --------------------------------------------------------------------------
# assertions

class CompareMixin(TestCaseMixin):

    def assertRelClose(self, got, ref, rel, what=""):
        # float arithmetic is enough at 1e-12 (its own error is ~1e-16)
        if not (isinstance(got, float) and abs(got - ref) <= rel * abs(ref)):
            super().assertRelClose(got, ref, rel, what)

    def get_ok(self, path, **params):
        st, body, _ = self.d.get(path, params)
        self.assertEqual(st, 200, "GET %s %r: %r %r" % (path, params, st, body))
        return body

    def assertMetric(self, got, ref, what):
        self.assertIsInstance(got, float, "%s: %r is not a JSON number" % (what, got))
        ref_f = float(ref)
        self.assertTrue(math.isfinite(got), what)
        tol = MET_REL * abs(ref_f) + MET_ABS
        self.assertLessEqual(abs(got - ref_f), tol, "%s: got %r, expected %r (diff %.3g)"
                             % (what, got, ref_f, abs(got - ref_f)))

    def assertMetrics(self, got, ref, what):
        self.assertIsInstance(got, dict, what)
        self.assertEqual(set(got), set(METRICS), "%s: fields %r" % (what, sorted(got)))
        for k in METRICS:
            self.assertMetric(got[k], ref[k], "%s.%s" % (what, k))

    def compare_ref(self, model, domain, step, window, est, ema, a=0.1, worker=None,
                    layers=None):
        """Reference compare reply: (layers dict, overall, worker used)."""
        dom = None if domain == "*" else domain
        per = {}
        if ema == "worker" and worker is None:
            worker = model.first_ema_worker(dom, step)
        for name in sorted(layers or LAYERS):
            prec = model.precise(dom, name, step, window, est)
            if prec is None:
                continue
            if ema == "sim":
                me, ve = model.sim_at(dom, name, a, step)
            else:
                e = model.ema(dom, name, step, worker)
                if e is None:
                    continue
                _, me, ve = e
            per[name] = cmp_ref(me, ve, prec[0], prec[1])
        return per, overall_ref(per) if per else None, worker

    def check_compare(self, run, model, domain="default", step=None, window=1,
                      est="population", ema="sim", a=0.1, worker=None, layers=None,
                      send_domain=True):
        params = {"window": window, "estimator": est, "ema": ema}
        if send_domain:
            params["domain"] = domain
        if step is not None:
            params["step"] = step
        if ema == "sim":
            params["momentum"] = repr(a)
        if worker is not None:
            params["worker"] = worker
        if layers is not None:
            params["layer"] = list(layers)
        what = "compare %s %r" % (run, params)
        body = self.get_ok("/v1/runs/%s/compare" % run, **params)
        rstep = model.latest(None if domain == "*" else domain) if step is None else step
        per, overall, wk = self.compare_ref(model, domain, rstep, window, est, ema, a, worker,
                                            layers)
        self.assertEqual(body.get("run"), run, what)
        self.assertEqual(body.get("domain"), domain, what)
        self.assertEqual(body.get("step"), rstep, what)
        self.assertTrue(is_json_int(body.get("step")), what)
        self.assertEqual(body.get("window"), window, what)
        self.assertEqual(body.get("estimator"), est, what)
        self.assertEqual(body.get("ema"), ema, what)
        if ema == "sim":
            self.assertEqual(body.get("momentum"), a, what)
        else:
            self.assertEqual(body.get("worker"), wk, what)
        self.assertTrue(per, "%s: the reference has no layer (bad test)" % what)
        self.assertEqual(sorted(body["layers"]), sorted(per), what + ": layers")
        for name in per:
            self.assertMetrics(body["layers"][name], per[name], "%s layers.%s" % (what, name))
        self.assertMetrics(body["overall"], overall, what + " overall")
        return body

    def series(self, run, layer, channel, **params):
        params = dict(params, layer=layer, channel=channel)
        return self.get_ok("/v1/runs/%s/series" % run, **params)

    def check_series(self, run, model, domain, layer, channel, a=0.1, window=1, frm=None,
                     to=None, worker=None, extra=None, check_ema=True):
        """One series reply against the references, every array at every step."""
        params = {"domain": domain, "window": window, "momentum": repr(a)}
        if frm is not None:
            params["from"] = frm
        if to is not None:
            params["to"] = to
        if worker is not None:
            params["worker"] = worker
        params.update(extra or {})
        what = "series %s %s[%d] %r" % (run, layer, channel, params)
        body = self.series(run, layer, channel, **params)
        dom = None if domain == "*" else domain
        steps = [s for s in model.steps(dom, layer)
                 if (frm is None or s >= frm) and (to is None or s <= to)]
        self.assertEqual(body.get("step"), steps, what + ": steps")
        for key in ("batch_mean", "batch_var", "precise_mean", "precise_var", "ema_mean",
                    "ema_var", "sim_mean", "sim_var"):
            self.assertEqual(len(body.get(key, ())), len(steps), "%s: %s length" % (what, key))
        sim = model.sim(dom, layer, a)
        for i, s in enumerate(steps):
            at = "%s at step %d" % (what, s)
            n_tot, ch = model.step_pooled(dom, layer, s)
            self.assertRelClose(body["batch_mean"][i], float(ch[channel][0]), REL,
                                at + " batch_mean")
            self.assertRelClose(body["batch_var"][i], float(ch[channel][1] / n_tot), REL,
                                at + " batch_var")
            pm, pv = model.precise(dom, layer, s, window)
            self.assertRelClose(body["precise_mean"][i], pm[channel], REL, at + " precise_mean")
            self.assertRelClose(body["precise_var"][i], pv[channel], REL, at + " precise_var")
            self.assertRelClose(body["sim_mean"][i], sim[s][0][channel], REL, at + " sim_mean")
            self.assertRelClose(body["sim_var"][i], sim[s][1][channel], REL, at + " sim_var")
            if check_ema:
                e = None if dom is None else model.ema(dom, layer, s, worker)
                if e is None:
                    self.assertIsNone(body["ema_mean"][i], at + " ema_mean")
                    self.assertIsNone(body["ema_var"][i], at + " ema_var")
                else:
                    # the worker EMA comes back exactly as sent
                    self.assertEqual(body["ema_mean"][i], e[1][channel], at + " ema_mean")
                    self.assertEqual(body["ema_var"][i], e[2][channel], at + " ema_var")
        return body


# --------------------------------------------------------------------------

class TestLongRun(CompareMixin, unittest.TestCase):
    """A 320-step run in two domains (read only; a few tests use runs of their own)."""

    RUN = "long"

    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--synchronous", "normal")
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        cls.model = Model()
        docs = gen_run(random.Random(20240917), cls.model, 319, 303)
        cls.n_docs = len(docs)
        upload_all(cls.d, cls.RUN, docs)

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    # -- the simulated EMA ---------------------------------------------------

    def test_sim_series_domain_default_and_cache(self):
        m, run = self.model, self.RUN
        self.assertGreater(len(m.steps("default", "bn1")), 200)
        # cold: no checkpoints yet
        first = self.check_series(run, m, "default", "bn1", 0)
        # a whole-layer replay takes checkpoints every 64 steps with data
        self.check_compare(run, m, "default", ema="sim", a=0.1)
        again = self.check_series(run, m, "default", "bn1", 0)
        self.assertEqual(first, again, "the same series twice gave other bits")
        for ch in range(3):
            self.check_series(run, m, "default", "bn1", ch)
        # ranges that resume from a checkpoint, and ones that end early
        for frm, to in ((100, None), (200, None), (64, 64), (130, 300), (None, 70),
                        (250, 260), (150, 159), (318, 319)):
            self.check_series(run, m, "default", "bn1", 2, frm=frm, to=to)
            self.check_series(run, m, "default", "bn2", 1, frm=frm, to=to)
        # compare at many steps, after and between the checkpoints
        for step in (319, 318, 70, 64, 65, 130, 131, 200, 256, 257, 300, 5, 0):
            if m.precise("default", "bn1", step, 1) is None:
                continue
            self.check_compare(run, m, "default", step=step, ema="sim", a=0.1)
        for step in (319, 200, 100):
            self.check_compare(run, m, "default", step=step, ema="sim", a=0.1)   # twice

    def test_sim_series_domain_star(self):
        m, run = self.model, self.RUN
        # steps 27, 151, 155, 159 have data only in fpn.p4: pooled over domains they count
        star_steps = m.steps(None, "bn1")
        for s in (27, 151, 155, 159):
            self.assertIn(s, star_steps)
            self.assertNotIn(s, m.steps("default", "bn1"))
        for a in (0.1, 1.0, 0.01):
            self.check_series(run, m, "*", "bn1", 1, a=a)
            self.check_compare(run, m, "*", ema="sim", a=a)
            self.check_series(run, m, "*", "bn1", 1, a=a)
            self.check_series(run, m, "*", "bn1", 0, a=a, frm=180, to=310)
            for step in (300, 155, 90, 27):
                self.check_compare(run, m, "*", step=step, ema="sim", a=a)
            self.check_series(run, m, "*", "bn2", 0, a=a, frm=140)

    def test_sim_series_other_domain_starts_at_its_first_step(self):
        m, run = self.model, self.RUN
        self.assertEqual(m.steps("fpn.p4", "bn1")[0], 3)
        for a in (0.1, 0.5):
            self.check_series(run, m, "fpn.p4", "bn1", 2, a=a)
            self.check_compare(run, m, "fpn.p4", ema="sim", a=a)
            self.check_compare(run, m, "fpn.p4", step=7, ema="sim", a=a)
            self.check_series(run, m, "fpn.p4", "bn1", 0, a=a, frm=200)
        # bn2 never had data in fpn.p4: an empty series, not an error
        body = self.series(run, "bn2", 0, domain="fpn.p4")
        self.assertEqual(body["step"], [])
        self.assertEqual(body["sim_mean"], [])

    def test_momentum_one_is_the_last_pooled_batch(self):
        # with momentum 1 the EMA is the last step's pooled mean and unbiased
        # variance: compare against the population var M2/n gives var_err = ln(n/(n-1))
        m, run = self.model, self.RUN
        body = self.check_compare(run, m, "default", step=301, ema="sim", a=1.0)
        self.assertLess(body["layers"]["bn1"]["mean_err_max"], 1e-9)
        self.assertGreater(body["layers"]["bn1"]["var_err"], 0.0)
        # and a window over several steps is not the last step alone
        body = self.check_compare(run, m, "default", step=301, window=30, ema="sim", a=1.0)
        self.assertGreater(body["layers"]["bn1"]["mean_err_max"], 1e-3)

    def test_compare_sim_metrics(self):
        m, run = self.model, self.RUN
        for a in (0.1, 1.0, 0.01, 0.5):
            for est in ("population", "mean_of_batch_var"):
                for window in (1, 5):
                    self.check_compare(run, m, "default", ema="sim", a=a, est=est, window=window)
                    self.check_compare(run, m, "default", step=222, ema="sim", a=a, est=est,
                                       window=window)
        # a step without data whose window has some (150..159 is a gap): the
        # EMA is the one after the last step with data; and past the latest step
        for a in (0.1, 0.01):
            self.check_compare(run, m, "default", step=155, window=10, ema="sim", a=a)
            self.check_compare(run, m, "default", step=400, window=90, ema="sim", a=a)
            self.check_compare(run, m, "*", step=158, window=5, ema="sim", a=a)
        # a layer filter, and the default domain when none is given
        self.check_compare(run, m, "default", ema="sim", layers=["bn2"], send_domain=False)
        # a step where bn2 has no data (w0 left it unused, no w1): bn2 is left out
        s = next(s for s in range(320) if s % 39 == 30 and
                 m.precise("default", "bn2", s, 1) is None and
                 m.precise("default", "bn1", s, 1) is not None)
        body = self.check_compare(run, m, "default", step=s, ema="sim")
        self.assertEqual(sorted(body["layers"]), ["bn1"])
        # the metrics really depend on the momentum (the checks are not vacuous)
        b1 = self.get_ok("/v1/runs/long/compare", ema="sim", momentum="0.1")
        b2 = self.get_ok("/v1/runs/long/compare", ema="sim", momentum="0.01")
        self.assertGreater(abs(b1["overall"]["kl"] - b2["overall"]["kl"]), 1e-6)

    def test_keras_momentum_conversion(self):
        # Keras: moving = moving * 0.99 + batch * (1 - 0.99) is PyTorch momentum 0.01
        m, run = self.model, self.RUN
        steps = m.steps("default", "bn2")
        rm, rv = 0.0, 1.0
        keras = {}
        for s in steps:
            n_tot, ch = m.step_pooled("default", "bn2", s)
            rm = rm * 0.99 + float(ch[0][0]) * (1 - 0.99)
            rv = rv * 0.99 + float(ch[0][1] / (n_tot - 1)) * (1 - 0.99)
            keras[s] = (rm, rv)
        body = self.series(run, "bn2", 0, momentum="0.01")
        self.assertEqual(body["step"], steps)
        self.assertEqual(body["momentum"], 0.01)
        for i, s in enumerate(steps):
            self.assertRelClose(body["sim_mean"][i], keras[s][0], 1e-10, "sim_mean at %d" % s)
            self.assertRelClose(body["sim_var"][i], keras[s][1], 1e-10, "sim_var at %d" % s)
        # the Keras decay itself is not a PyTorch momentum: 0.99 is a different EMA
        body99 = self.series(run, "bn2", 0, momentum="0.99")
        self.assertGreater(abs(body99["sim_mean"][-1] - keras[steps[-1]][0]), 1e-3)
        self.check_compare(run, m, "default", ema="sim", a=0.01)

    # -- the worker EMA --------------------------------------------------------

    def test_compare_worker_ema(self):
        m, run = self.model, self.RUN
        # latest step 319: 319 % 3 != 0 so w0 reported; odd so w1 did not
        body = self.check_compare(run, m, "default", ema="worker", send_domain=False)
        self.assertEqual(body["worker"], "w0")
        self.check_compare(run, m, "default", ema="worker", window=5)
        # w0 and w1 both reported: the first by name is w0; w1 on request
        both = [s for s in range(320) if s % 6 in (2, 4) and "w1" in
                m.emas.get(("default", "bn1", s), {})]
        self.assertTrue(both)
        for s in both[:4]:
            body = self.check_compare(run, m, "default", step=s, ema="worker")
            self.assertEqual(body["worker"], "w0")
            body = self.check_compare(run, m, "default", step=s, ema="worker", worker="w1")
            self.assertEqual(body["worker"], "w1")
            self.check_compare(run, m, "default", step=s, ema="worker", worker="w1",
                               est="mean_of_batch_var", window=3)
        # only w1 reported (s % 3 == 0, even): the first by name is w1
        only_w1 = [s for s in range(0, 320, 6) if "w1" in m.emas.get(("default", "bn1", s), {})]
        self.assertTrue(only_w1)
        for s in only_w1[:3]:
            body = self.check_compare(run, m, "default", step=s, ema="worker")
            self.assertEqual(body["worker"], "w1")
        # w0 sent two batches (seq 0 and 1) at one step, seq 1 sometimes first:
        # its EMA there is the one of seq 1
        two = [s for s in range(320) if s % 7 == 2 and s % 3 != 0 and
               m.precise("default", "bn1", s, 1) is not None][:8]
        self.assertTrue(any(s % 14 == 9 for s in two) and any(s % 14 == 2 for s in two))
        for s in two:
            self.check_compare(run, m, "default", step=s, ema="worker", worker="w0")
        # the worker EMA of the other domain
        self.check_compare(run, m, "fpn.p4", ema="worker")
        self.check_compare(run, m, "fpn.p4", step=11, ema="worker", window=4)

    def test_compare_worker_ema_errors(self):
        m, run = self.model, self.RUN
        # no worker reported an EMA at an odd multiple of 3 without w1's EMA
        s = next(s for s in range(3, 320, 6) if m.precise("default", "bn1", s, 1) is not None
                 and not any(m.emas.get(("default", l, s)) for l in LAYERS))
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": s}), 404,
                         what="no EMA at step %d" % s)
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": s, "ema": "worker"}),
                         404)
        # the named worker reported none there (w1 is absent at odd steps)
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": 319, "worker": "w1"}),
                         404)
        self.assertError(self.d.get("/v1/runs/long/compare", {"step": 319, "worker": "nobody"}),
                         404)
        # an EMA belongs to one domain
        self.assertError(self.d.get("/v1/runs/long/compare", {"domain": "*"}), 422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"domain": "*", "ema": "worker"}),
                         422)
        # other parameter errors
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "momentum": "0"}),
                         422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "momentum": "1.5"}),
                         422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "bogus"}), 422)
        self.assertError(self.d.get("/v1/runs/long/compare", {"domain": "nope", "ema": "sim"}),
                         404)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "step": 155}), 404,
                         what="a window without data")
        self.assertError(self.d.get("/v1/runs/nope/compare", {"ema": "sim"}), 404)
        self.assertError(self.d.get("/v1/runs/long/compare", {"ema": "sim", "layer": "bnX"}),
                         404)

    # Finite, valid uploads whose statistics do not fit a double: a worker
    # EMA mean of 1e160 (d^2 = 1e320 in the KL), and a domain whose mean is
    # 1e160 (pooled with "default" over *, M2 overflows). Replies must still
    # be well-formed: a 200 with the finite values right; a value that is
    # infinite has no JSON number (null, or a huge finite number, is fine).
    HUGE_DOCS = (
        {"worker": "w0", "step": 5, "seq": 0, "layers": {"bn": {
            "count": 4, "mean": [1.0, 2.0], "var": [1.0, 0.5],
            "ema_mean": [1e160, 2.5], "ema_var": [1.0, 0.25]}}},
        {"worker": "w0", "step": 5, "seq": 0, "domain": "far", "layers": {"bn": {
            "count": 4, "mean": [1e160, 2.0], "var": [1.0, 0.5]}}},
    )
    HUGE_P = ([1.0, 2.0], [0.75, 0.375])          # population var = 3/4 of unbiased

    def huge_run(self):
        for doc in self.HUGE_DOCS:
            st, body, _ = self.d.post_batch("huge", doc)
            self.assertEqual(st, 200, body)

    def check_maybe_infinite(self, body, ref, what):
        self.assertIsInstance(body, dict, what)
        for k in METRICS:
            r = float(ref[k])
            if math.isinf(r):
                self.assertTrue(body.get(k) is None or (isinstance(body[k], float)
                                                        and body[k] >= 1e300),
                                "%s.%s: %r for an infinite value" % (what, k, body.get(k)))
            else:
                self.assertMetric(body.get(k), ref[k], "%s.%s" % (what, k))

    def test_compare_metric_overflow(self):
        self.huge_run()
        st, body, _ = self.d.get("/v1/runs/huge/compare", {"ema": "worker"})
        self.assertEqual(st, 200, "compare, worker EMA mean 1e160: %r %r" % (st, body))
        ref = cmp_ref([1e160, 2.5], [1.0, 0.25], *self.HUGE_P)
        self.check_maybe_infinite(body["layers"]["bn"], ref, "compare layers.bn")
        self.check_maybe_infinite(body["overall"], ref, "compare overall")

    def test_shift_metric_overflow(self):
        self.huge_run()
        st, body, _ = self.d.get("/v1/runs/huge/shift", {"source": "far", "target": "default"})
        self.assertEqual(st, 200, "shift from a domain with mean 1e160: %r %r" % (st, body))
        ref = cmp_ref([1e160, 2.0], [0.75, 0.375], *self.HUGE_P)
        self.check_maybe_infinite(body["layers"]["bn"], ref, "shift layers.bn")

    def test_series_overflow_keeps_arrays_parallel(self):
        # pooled over *, channel 0 has means 1 and 1e160: M2/n overflows
        self.huge_run()
        st, body, _ = self.d.get("/v1/runs/huge/series",
                                 {"layer": "bn", "channel": 0, "domain": "*"})
        self.assertEqual(st, 200, body)
        self.assertEqual(body["step"], [5])
        for key in ("batch_mean", "batch_var", "precise_mean", "precise_var", "ema_mean",
                    "ema_var", "sim_mean", "sim_var"):
            self.assertEqual(len(body[key]), 1, "series %s: %r (the arrays must stay "
                             "parallel to step)" % (key, body[key]))
        self.assertRelClose(body["batch_mean"][0], 5e159, REL, "batch_mean")
        for key in ("batch_var", "precise_var", "sim_var"):
            v = body[key][0]
            self.assertTrue(v is None or (isinstance(v, float) and v >= 1e300),
                            "series %s: %r for an infinite variance" % (key, v))
        # the finite channel is unaffected
        st, body, _ = self.d.get("/v1/runs/huge/series",
                                 {"layer": "bn", "channel": 1, "domain": "*"})
        self.assertEqual(st, 200, body)
        self.assertRelClose(body["batch_var"][0], 0.375, REL, "channel 1 batch_var")

    # -- series ------------------------------------------------------------------

    def test_series_batch_precise_and_ema(self):
        m, run = self.model, self.RUN
        for window in (1, 5):
            self.check_series(run, m, "default", "bn1", 2, window=window)
            self.check_series(run, m, "default", "bn2", 0, window=window, frm=40, to=120)
            self.check_series(run, m, "*", "bn1", 0, window=window, frm=20, to=170)
            self.check_series(run, m, "fpn.p4", "bn1", 1, window=window)
        # the worker named: only its EMA, null elsewhere
        self.check_series(run, m, "default", "bn1", 1, worker="w1")
        self.check_series(run, m, "default", "bn2", 1, worker="w0", window=3)
        body = self.check_series(run, m, "default", "bn1", 0, worker="nobody")
        self.assertTrue(all(v is None for v in body["ema_mean"]))
        # domain *: no worker EMA at all
        body = self.check_series(run, m, "*", "bn2", 1)
        self.assertTrue(all(v is None for v in body["ema_var"]))
        # from/to are inclusive and may name steps without data
        body = self.check_series(run, m, "default", "bn1", 0, frm=15, to=27)
        self.assertEqual(body["step"][0], 15)
        self.assertNotIn(16, body["step"])
        self.assertEqual(body["step"][-1], 26)
        body = self.check_series(run, m, "default", "bn1", 0, frm=319, to=319)
        self.assertEqual(body["step"], [319])
        body = self.series(run, "bn1", 0, **{"from": 500})
        self.assertEqual(body["step"], [])
        # sanity of the reply's other fields
        body = self.series(run, "bn1", 2, window=4, momentum="0.25", domain="default")
        self.assertEqual((body["run"], body["layer"], body["channel"], body["domain"],
                          body["window"], body["momentum"]),
                         (run, "bn1", 2, "default", 4, 0.25))

    def test_series_downsampling(self):
        m, run = self.model, self.RUN
        full = self.check_series(run, m, "default", "bn1", 0, window=5)
        n = len(full["step"])
        for key, val, frm in (("points", 7, None), ("points", 50, None), ("points", 1, None),
                              ("points", 10, 100), ("stride", 10, None), ("stride", 7, 33),
                              ("points", 100000, None), ("stride", 1, None)):
            params = {key: val, "window": 5}
            if frm is not None:
                params["from"] = frm
            what = "series %r" % params
            body = self.series(run, "bn1", 0, **params)
            idx0 = 0 if frm is None else next(i for i, s in enumerate(full["step"]) if s >= frm)
            avail = n - idx0
            got = body["step"]
            self.assertEqual(got[0], full["step"][idx0], what + ": first point")
            self.assertEqual(got[-1], full["step"][-1], what + ": the last point is kept")
            pos = [full["step"].index(s) - idx0 for s in got]
            k = pos[1] - pos[0] if len(pos) > 1 else avail
            self.assertGreaterEqual(k, 1, what)
            if key == "stride":
                self.assertEqual(k, val, what)
            expected = list(range(0, avail, k))
            if expected[-1] != avail - 1:
                expected.append(avail - 1)
            self.assertEqual(pos, expected, what + ": every k-th point and the last")
            if key == "points":
                if val >= avail:
                    self.assertEqual(len(got), avail, what)
                else:
                    self.assertLessEqual(len(got), val + 1, what)
                    self.assertGreaterEqual(len(got), max(1, val // 2), what)
            for arr in ("batch_mean", "batch_var", "precise_mean", "precise_var",
                        "sim_mean", "sim_var"):
                # (a window that starts elsewhere may merge in another order)
                self.assertAllRelClose(body[arr], [full[arr][idx0 + p] for p in pos], REL,
                                       "%s: %s at the kept points" % (what, arr))
            for arr in ("ema_mean", "ema_var"):
                self.assertEqual(body[arr], [full[arr][idx0 + p] for p in pos],
                                 "%s: %s at the kept points" % (what, arr))

    def test_series_errors(self):
        path = "/v1/runs/long/series"
        g = self.d.get
        self.assertError(g(path, {"channel": 0}), 400, what="no layer")
        self.assertError(g(path, {"layer": ["bn1", "bn2"], "channel": 0}), 400,
                         what="two layers")
        self.assertError(g(path, {"layer": "bn1"}), 400, what="no channel")
        self.assertError(g(path, {"layer": "bn1", "channel": "x"}), 400, what="channel x")
        self.assertError(g(path, {"layer": "bnX", "channel": 0}), 404, what="unknown layer")
        self.assertError(g(path, {"layer": "bn1", "channel": 3}), 422, what="channel 3 of 3")
        self.assertError(g(path, {"layer": "bn2", "channel": 2}), 422, what="channel 2 of 2")
        self.assertError(g(path, {"layer": "bn1", "channel": -1}), 422, what="channel -1")
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "from": 10, "to": 9}), 422,
                         what="from > to")
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "0"}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "1.5"}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "-0.1"}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "momentum": "abc"}), 400)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "window": 0}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "domain": "nope"}), 404,
                         what="unknown domain")
        self.assertError(g("/v1/runs/nope/series", {"layer": "bn1", "channel": 0}), 404)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "points": 0}), 422)
        self.assertError(g(path, {"layer": "bn1", "channel": 0, "stride": 0}), 422)
        # from == to is fine
        st, body, _ = g(path, {"layer": "bn1", "channel": 0, "from": 10, "to": 10})
        self.assertEqual(st, 200, body)

    # -- domains and shift ---------------------------------------------------------

    def test_domains(self):
        m = self.model
        body = self.get_ok("/v1/runs/long/domains")
        self.assertEqual(body["run"], "long")
        names = [d["name"] for d in body["domains"]]
        self.assertEqual(names, sorted(m.batches), "domains, by name")
        for dd in body["domains"]:
            name = dd["name"]
            for key in ("layers", "steps", "batches", "elements"):
                self.assertTrue(is_json_int(dd.get(key)), "%s.%s=%r" % (name, key, dd.get(key)))
            self.assertEqual(dd["batches"], m.batches[name], name)
            self.assertEqual(dd["steps"], len(m.domain_steps[name]), name)
            layers = [l for l in LAYERS if m.steps(name, l)]
            self.assertEqual(dd["layers"], len(layers), name)
            elements = sum(e[1] for l in LAYERS for e in m.entries(name, l, -1, 10 ** 9))
            self.assertEqual(dd["elements"], elements, name)
        self.assertEqual(sum(d["batches"] for d in body["domains"]), self.n_docs)
        self.assertError(self.d.get("/v1/runs/nope/domains"), 404)

    def shift_ref(self, source, target, step, window, est):
        m = self.model
        per = {}
        s = None if source == "*" else source
        t = None if target == "*" else target
        for name in sorted(LAYERS):
            e = m.precise(s, name, step, window, est)
            p = m.precise(t, name, step, window, est)
            if e is None or p is None:
                continue
            per[name] = cmp_ref(e[0], e[1], p[0], p[1])
        return per, overall_ref(per)

    def check_shift(self, source, target, step=None, window=1, est="population"):
        params = {"source": source, "target": target, "window": window, "estimator": est}
        if step is not None:
            params["step"] = step
        what = "shift %r" % params
        body = self.get_ok("/v1/runs/long/shift", **params)
        m = self.model
        if step is None:
            step = min(m.latest(None if source == "*" else source),
                       m.latest(None if target == "*" else target))
        per, overall = self.shift_ref(source, target, step, window, est)
        self.assertEqual((body["source"], body["target"], body["step"], body["window"],
                          body["estimator"]), (source, target, step, window, est), what)
        self.assertEqual(sorted(body["layers"]), sorted(per), what)
        for name in per:
            self.assertMetrics(body["layers"][name], per[name], "%s layers.%s" % (what, name))
        self.assertMetrics(body["overall"], overall, what + " overall")
        return body

    def test_shift(self):
        m = self.model
        self.assertEqual(m.latest("fpn.p4"), 303)
        self.assertEqual(m.latest("default"), 319)
        # default step: the lower of the two latest steps (303), both orders
        body = self.check_shift("fpn.p4", "default")
        self.assertEqual(sorted(body["layers"]), ["bn1"])   # bn2 has no data in fpn.p4
        self.check_shift("default", "fpn.p4")
        self.check_shift("fpn.p4", "default", step=203, window=20)
        self.check_shift("fpn.p4", "default", step=303, window=40, est="mean_of_batch_var")
        self.check_shift("fpn.p4", "*", step=111, window=8)
        # source is the estimate, target the reference: the two differ
        a = self.get_ok("/v1/runs/long/shift", source="fpn.p4", target="default")
        b = self.get_ok("/v1/runs/long/shift", source="default", target="fpn.p4")
        self.assertGreater(abs(a["overall"]["kl"] - b["overall"]["kl"]), 1e-6)
        self.assertGreater(abs(a["overall"]["mean_err"] - b["overall"]["mean_err"]), 1e-6)
        # errors
        self.assertError(self.d.get("/v1/runs/long/shift", {"source": "default"}), 400)
        self.assertError(self.d.get("/v1/runs/long/shift", {"target": "default"}), 400)
        self.assertError(self.d.get("/v1/runs/long/shift",
                                    {"source": "nope", "target": "default"}), 404)
        self.assertError(self.d.get("/v1/runs/long/shift",
                                    {"source": "fpn.p4", "target": "default", "step": 5}), 404,
                         what="no data in fpn.p4 at step 5")


# --------------------------------------------------------------------------

class TestLateUploads(CompareMixin, unittest.TestCase):
    """Batches that land below the latest step after checkpoints were cached."""

    MOMENTA = (0.1, 0.01)

    def setUp(self):
        self.d = Daemon("--synchronous", "normal")
        self.addCleanup(self.d.close)
        self.d.start()
        self.rng = random.Random(zlib.crc32(self.id().encode()))
        self.model = Model()
        docs = gen_run(random.Random(4242), self.model, 299, 299)
        upload_all(self.d, "late", docs)

    def tearDown(self):
        if not self.d.running:
            self.fail("bnstatd is no longer running\n" + self.d.log_tail())

    def snapshot(self, domains=("default", "*", "fpn.p4")):
        """Series sim values (checked against the reference) of a few channels."""
        out = {}
        for dom in domains:
            for a in self.MOMENTA:
                for layer, ch in (("bn1", 0), ("bn1", 2), ("bn2", 1)):
                    if dom == "fpn.p4" and layer == "bn2":
                        continue
                    b = self.check_series("late", self.model, dom, layer, ch, a=a,
                                          check_ema=False)
                    out[(dom, a, layer, ch)] = dict(zip(b["step"], zip(b["sim_mean"],
                                                                       b["sim_var"])))
        return out

    def warm(self, steps=(None, 250, 130)):
        """Whole-layer replays: checkpoints every 64 steps, checked on the way."""
        for dom in ("default", "*", "fpn.p4"):
            for a in self.MOMENTA:
                for step in steps:
                    if step is not None and self.model.precise(
                            None if dom == "*" else dom, "bn1", step, 1) is None:
                        continue
                    self.check_compare("late", self.model, dom, step=step, ema="sim", a=a)

    def late(self, domain, step, worker, layers=("bn1", "bn2")):
        doc = make_upload(self.rng, self.model, domain, worker, step, 0,
                          {l: self.rng.choice(COUNTS) for l in layers}, False)
        st, body, _ = self.d.post_batch("late", doc)
        self.assertEqual(st, 200, body)
        self.assertFalse(body["duplicate"])

    def check_after(self, before, late_step, changed_domains, changed_layers=("bn1", "bn2")):
        """Every series value: equal to the reference; bit-identical before
        late_step; changed from `before` at and after it where the data did."""
        after = self.snapshot()
        for key, vals in after.items():
            dom = key[0]
            old = before[key]
            for s, v in vals.items():
                if s < late_step:
                    self.assertEqual(v, old.get(s), "%r at step %d changed" % (key, s))
            if dom in changed_domains and key[2] in changed_layers:
                later = [s for s in vals if s >= late_step and s in old]
                self.assertTrue(later)
                self.assertNotEqual(vals[later[0]], old[later[0]],
                                    "%r: the late batch changed nothing at step %d (bad test?)"
                                    % (key, later[0]))
                if key[1] == 0.01:   # with 0.1 the change fades below a double by the end
                    self.assertNotEqual(vals[later[-1]], old[later[-1]],
                                        "%r: unchanged at the end" % (key,))
            else:
                self.assertEqual(vals, old, "%r: another domain's late batch changed it"
                                 % (key,))
        return after

    def compare_everywhere(self, steps=(None, 299, 250, 200, 130, 70, 64, 20, 12)):
        for dom in ("default", "*", "fpn.p4"):
            for a in self.MOMENTA:
                for step in steps:
                    if step is not None and self.model.precise(
                            None if dom == "*" else dom, "bn1", step, 1) is None:
                        continue
                    self.check_compare("late", self.model, dom, step=step, ema="sim", a=a)

    def test_late_uploads_with_a_warm_cache(self):
        m = self.model
        self.assertNotIn(5, m.steps("default", "bn1"))
        self.assertIn(10, m.steps("default", "bn1"))
        self.warm()
        before = self.snapshot()
        self.warm()            # and again: everything served from checkpoints

        # 1. a new batch into an old step that has data (step 10 of 300)
        self.late("default", 10, "late0")
        # the first reads after it resume from late ranges: series from 250 first
        self.check_series("late", m, "default", "bn1", 0, frm=250, check_ema=False)
        self.check_series("late", m, "*", "bn1", 2, a=0.01, frm=200, check_ema=False)
        self.compare_everywhere()
        before = self.check_after(before, 10, ("default", "*"))

        # 2. into a step that had no data at all before (5)
        self.warm()
        self.late("default", 5, "late1")
        self.assertIn(5, m.steps("default", "bn1"))
        self.compare_everywhere()
        before = self.check_after(before, 5, ("default", "*"))

        # 3. between checkpoints: a query below it first resumes from a valid
        # checkpoint and leaves the stale ones above; they must not be used
        self.warm()
        self.late("default", 160, "late2")
        self.check_compare("late", m, "default", step=100, ema="sim", a=0.1)
        self.check_compare("late", m, "*", step=100, ema="sim", a=0.1)
        self.check_series("late", m, "default", "bn1", 0, frm=200, check_ema=False)
        self.compare_everywhere()
        before = self.check_after(before, 160, ("default", "*"))

        # 4. into the other domain: fpn.p4 and * change, default does not
        self.warm()
        self.late("fpn.p4", 7, "late3", layers=("bn1",))
        self.compare_everywhere()
        before = self.check_after(before, 7, ("fpn.p4", "*"), ("bn1",))

        # 4b. the first batch of a new domain, below the run's latest step:
        # only the pooled domain * changes
        self.warm()
        self.late("fpn.p5", 50, "late4")
        self.compare_everywhere(steps=(None, 299, 130, 64))
        before = self.check_after(before, 50, ("*",))

        # 5. an in-order upload after the latest step (not late) is seen too
        self.warm()
        self.late("default", 300, "w0")
        self.compare_everywhere(steps=(None, 300, 299, 250))
        after = self.snapshot()
        self.assertIn(300, after[("default", 0.1, "bn1", 0)])
        # and another worker at that same latest step (not late either)
        self.warm(steps=(None, 300))
        self.late("default", 300, "w1")
        self.compare_everywhere(steps=(None, 300, 250))
        after2 = self.snapshot()
        key = ("default", 0.01, "bn1", 0)
        self.assertNotEqual(after2[key][300], after[key][300])
        self.assertEqual(after2[key][299], after[key][299])

    def test_late_uploads_concurrent_with_queries(self):
        """Queries that take and use checkpoints while late batches land."""
        m = self.model
        self.warm(steps=(None,))
        stop = threading.Event()
        bad = []
        port = self.d.port

        def query_loop(k):
            i = 0
            while not stop.is_set():
                dom = ("default", "*")[(i + k) % 2]
                a = ("0.1", "0.01")[(i // 2) % 2]
                step = (None, 250, 130, 299)[(i // 4) % 4]
                params = {"domain": dom, "ema": "sim", "momentum": a}
                if step is not None:
                    params["step"] = step
                st, body, _ = get(port, "/v1/runs/late/compare", params)
                if st != 200:
                    bad.append((params, st, body))
                st, body, _ = get(port, "/v1/runs/late/series",
                                  {"layer": "bn1", "channel": 0, "domain": dom, "momentum": a,
                                   "from": 200})
                if st != 200:
                    bad.append(("series", st, body))
                i += 1

        threads = [threading.Thread(target=query_loop, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        try:
            rng = random.Random(77)
            for j in range(16):
                step = rng.randrange(0, 290)
                self.late("default", step, "conc%d" % j)
                stop.wait(0.02)
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        self.assertEqual(bad, [])
        # whatever checkpoints were taken meanwhile, the answers are the final state's
        self.compare_everywhere(steps=(None, 299, 250, 200, 130, 64))
        self.snapshot(domains=("default", "*"))
        self.compare_everywhere(steps=(None, 250, 130))

    def test_late_uploads_after_restart(self):
        m = self.model
        self.warm()
        before = self.snapshot()
        self.d.stop()
        self.d.restart()
        # the cache is empty: a late write first, then the first replays
        self.late("default", 10, "late0")
        self.compare_everywhere()
        before = self.check_after(before, 10, ("default", "*"))
        # the same queries again, now from the checkpoints they left
        self.compare_everywhere()
        # a late write over the new checkpoints, and another restart
        self.late("default", 40, "late1")
        self.late("fpn.p4", 41, "late1", layers=("bn1",))
        self.d.stop()
        self.d.restart()
        self.check_series("late", m, "*", "bn1", 0, frm=100, check_ema=False)
        self.compare_everywhere()
        self.check_after(before, 40, ("default", "*", "fpn.p4"))


if __name__ == "__main__":
    unittest.main()
