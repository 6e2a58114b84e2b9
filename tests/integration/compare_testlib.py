"""What the EMA-versus-precise tests (tests/integration/test_compare_*.py)
share: the model that generates runs, the exact references (Fractions for
pooled statistics and windows, a plain loop for the simulated EMA, 50-digit
Decimals for the comparison metrics) and CompareMixin's checks of replies
against them. See test_compare_long_run.py for what the references are.
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
PRECISION = ("batches", "batch_noise", "mean_se", "batches_for")

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
        # the precise side's precision (docs/API.md, "Precision"; test_analytics.py
        # checks the values) beside the metrics
        self.assertEqual(set(got) - set(PRECISION), set(METRICS),
                         "%s: fields %r" % (what, sorted(got)))
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
