"""HTTP client of bnstatd (standard library only).

One Client talks to one daemon. Every method returns the server's JSON reply
as parsed Python objects (dicts, lists, floats that round-trip the server's
doubles exactly), or raises BnstatError.

Retries: connection errors, timeouts and 5xx replies are retried with
exponential backoff (honouring Retry-After). That is safe for every request
the client makes: GETs have no effect, an upload is identified by
(run, domain, worker, step, seq), so the server answers a retried upload
"duplicate": true and counts it once, and a retried snapshot creation answers
200 with the snapshot it created the first time. A deletion retried after the
first attempt took effect finds nothing left to delete: 404, which
delete_snapshot(missing_ok=True) takes as done.
"""

import array
import base64
import email.utils
import http.client
import json
import logging
import random
import ssl
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from . import safetensors

__all__ = ["Client", "BnstatError", "DEFAULT_URL"]

DEFAULT_URL = "http://127.0.0.1:8650"

log = logging.getLogger("bnstat")

_LAYER_KEYS = ("count", "mean", "var", "ema_mean", "ema_var")
_FLOAT = {"f32": ("f", "<f4", "F32"), "f64": ("d", "<f8", "F64")}


class BnstatError(Exception):
    """An error answered by bnstatd, or the server could not be reached.

    status: the HTTP status (None when no reply came: connection refused,
    timeout, after the retries ran out); code, message, path: the fields of
    the server's JSON error (path may be None); body: the whole parsed error
    reply (or the raw text when it was not JSON, or None); nonfinite: for an
    upload refused because a value is NaN or infinite, the server's account
    of the first such value, {"worker", "step", "layer", "field", "channel"}
    (field one of mean, var, ema_mean, ema_var), else None.
    """

    def __init__(self, status, code, message, path=None, body=None, url=None):
        self.status = status
        self.code = code
        self.message = message
        self.path = path
        self.body = body
        self.url = url
        super().__init__(str(self))

    @property
    def nonfinite(self):
        e = self.body.get("error") if isinstance(self.body, dict) else None
        nf = e.get("nonfinite") if isinstance(e, dict) else None
        return nf if isinstance(nf, dict) and isinstance(nf.get("layer"), str) else None

    def __str__(self):
        head = "HTTP %d %s" % (self.status, self.code) if self.status else self.code
        where = " at %s" % self.path if self.path else ""
        return "%s%s: %s" % (head, where, self.message)


def _float_bytes(values, dtype, what):
    """Little-endian f32/f64 bytes of a 1-D sequence, array, ndarray or tensor."""
    code, npdtype, _ = _FLOAT[dtype]
    if hasattr(values, "detach") and hasattr(values, "cpu"):  # a torch tensor
        t = values.detach().cpu()
        if str(t.dtype) not in ("torch.float32", "torch.float64"):
            t = t.double()
        values = t.contiguous().numpy()
    if hasattr(values, "astype") and hasattr(values, "tobytes"):  # a numpy array
        if values.ndim != 1:
            raise ValueError("%s must be 1-D, not of shape %r" % (what, tuple(values.shape)))
        return values.astype(npdtype, copy=False).tobytes()
    if isinstance(values, (bytes, bytearray, memoryview, str)):
        raise TypeError("%s must be a sequence of numbers, not %s" % (what, type(values).__name__))
    if isinstance(values, array.array) and values.typecode == code and sys.byteorder == "little":
        return values.tobytes()
    floats = [float(v) for v in values]
    try:
        return struct.pack("<%d%s" % (len(floats), code), *floats)
    except (OverflowError, struct.error) as e:
        raise ValueError("%s: %s (a value is out of float32 range; use dtype='f64')" % (what, e))


def _encode_layers(layers, dtype):
    """layers -> {name: {"count": int, key: bytes}} after validating the keys."""
    if dtype not in _FLOAT:
        raise ValueError("dtype must be 'f32' or 'f64', not %r" % (dtype,))
    out = {}
    for name, layer in layers.items():
        unknown = set(layer) - set(_LAYER_KEYS)
        if unknown:
            raise ValueError("layer %s: unknown keys %s (expected %s)"
                             % (name, sorted(unknown), ", ".join(_LAYER_KEYS)))
        if "count" not in layer:
            raise ValueError("layer %s has no count" % name)
        count = layer["count"]
        if hasattr(count, "item"):
            count = count.item()
        if isinstance(count, bool) or int(count) != count:
            raise ValueError("layer %s: count must be an integer, not %r" % (name, count))
        enc = {"count": int(count)}
        for key in _LAYER_KEYS[1:]:
            if layer.get(key) is not None:
                enc[key] = _float_bytes(layer[key], dtype, "layers.%s.%s" % (name, key))
        out[name] = enc
    return out


def _window_for(window, precise):
    """The window to send: the compare helpers' default "auto" is left out
    when a snapshot or a worker is the reference (there is no window then)."""
    if window == "auto" and precise not in (None, "window"):
        return None
    return window


def _retry_after(headers):
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


class Client:
    """A client of one bnstatd.

    url: the daemon's base URL, http://HOST:PORT or https://HOST:PORT (a URL
    without a scheme raises ValueError: "127.0.0.1:8650" would otherwise be
    taken for a scheme "127.0.0.1"). token: sent as "Authorization: Bearer TOKEN"
    when set. timeout: seconds per HTTP attempt. retries: how many times a
    request is sent again after a connection error, a timeout or a 5xx reply
    (0: never); the n-th retry waits backoff * 2**(n-1) seconds (plus up to
    25% jitter, at most max_backoff), or the server's Retry-After when that is
    longer. dtype: the default float encoding of uploads, "f32" (compact
    base64 float32; values are rounded to float32) or "f64" (exact).
    binary: "auto" (the default: safetensors uploads, falling back to JSON for
    good once the server answers 415), False (JSON uploads) or True
    (safetensors uploads; a server without them answers 415, raised as
    BnstatError). cafile: a PEM file of
    the CA (or the self-signed certificate) to trust for an https:// URL;
    ssl_context: an ssl.SSLContext to use instead.
    """

    def __init__(self, url=DEFAULT_URL, token=None, timeout=30.0, retries=5, backoff=0.2,
                 binary="auto", dtype="f32", max_backoff=30.0, cafile=None, ssl_context=None):
        if dtype not in _FLOAT:
            raise ValueError("dtype must be 'f32' or 'f64', not %r" % (dtype,))
        if binary not in (False, True, "auto"):
            raise ValueError("binary must be False, True or 'auto', not %r" % (binary,))
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("the bnstatd URL must be http://HOST:PORT or https://HOST:PORT, "
                             "not %r" % (url,))
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.dtype = dtype
        self.binary = binary
        # "auto": None until the server has answered a binary upload.
        self.binary_supported = None
        handlers = []
        if ssl_context is None and cafile is not None:
            ssl_context = ssl.create_default_context(cafile=cafile)
        if ssl_context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=ssl_context))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self):
        return "Client(%r)" % self.url

    # -- transport -----------------------------------------------------------

    def _url(self, path, params):
        url = self.url + path
        if params:
            items = []
            for k, v in params.items():
                if v is None:
                    continue
                if isinstance(v, (list, tuple)):
                    items.extend((k, str(x)) for x in v)
                else:
                    items.append((k, str(v)))
            if items:
                url += "?" + urllib.parse.urlencode(items)
        return url

    def _delay(self, attempt, retry_after):
        delay = min(self.max_backoff, self.backoff * (2 ** attempt))
        delay *= 1.0 + 0.25 * random.random()
        if retry_after is not None:
            delay = max(delay, min(retry_after, 60.0))
        return delay

    def request(self, method, path, params=None, body=None, content_type=None,
                accept="application/json"):
        """Send a request with retries; returns (status, headers, raw body bytes).

        A reply of 4xx raises BnstatError at once; 5xx replies, connection
        errors and timeouts are retried, then raised.
        """
        url = self._url(path, params)
        headers = {"Accept": accept, "User-Agent": "bnstat-python/0.1"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        if self.token:
            headers["Authorization"] = "Bearer " + self.token
        attempt = 0
        while True:
            req = urllib.request.Request(url, data=body, method=method, headers=headers)
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    return resp.status, resp.headers, resp.read()
            except urllib.error.HTTPError as e:
                try:
                    raw = e.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
                finally:
                    e.close()
                err = self._error(e.code, raw, url)
                if e.code < 500 or attempt >= self.retries:
                    raise err from None
                delay = self._delay(attempt, _retry_after(e.headers))
                log.info("bnstat: %s %s answered %s; retry %d/%d in %.2fs",
                         method, path, e.code, attempt + 1, self.retries, delay)
            except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
                reason = getattr(e, "reason", None) or e
                if isinstance(reason, ssl.SSLCertVerificationError):
                    raise BnstatError(None, "tls_error", "cannot verify %s: %s (pass cafile=)"
                                      % (self.url, reason), url=url) from None
                if attempt >= self.retries:
                    raise BnstatError(None, "unreachable", "cannot reach %s: %s (after %d attempts)"
                                      % (self.url, reason, attempt + 1), url=url) from None
                delay = self._delay(attempt, None)
                log.info("bnstat: %s %s failed (%s); retry %d/%d in %.2fs",
                         method, path, reason, attempt + 1, self.retries, delay)
            time.sleep(delay)
            attempt += 1

    @staticmethod
    def _error(status, raw, url):
        try:
            doc = json.loads(raw.decode("utf-8"))
        except ValueError:
            text = raw.decode("utf-8", "replace").strip()
            return BnstatError(status, "http_error", text or http.client.responses.get(status, ""),
                               body=text or None, url=url)
        e = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(e, dict):
            return BnstatError(status, "http_error", str(doc), body=doc, url=url)
        return BnstatError(e.get("status", status), e.get("code", "http_error"),
                           e.get("message", ""), e.get("path"), doc, url)

    def _json(self, method, path, params=None, doc=None):
        body = None
        ctype = None
        if doc is not None:
            body = json.dumps(doc, allow_nan=False, separators=(",", ":")).encode("utf-8")
            ctype = "application/json"
        _, _, raw = self.request(method, path, params, body, ctype)
        return json.loads(raw.decode("utf-8")) if raw else None

    @staticmethod
    def _run(run):
        return "/v1/runs/" + urllib.parse.quote(str(run), safe="")

    # -- uploads ---------------------------------------------------------------

    def upload(self, run, worker, step, seq, layers, domain=None, var_kind=None, dtype=None):
        """Upload one batch's statistics; returns the reply
        {"accepted": True, "duplicate": bool, "layers": N}.

        layers maps a BatchNorm layer name to dict(count=, mean=, var=,
        ema_mean=, ema_var=): count the elements per channel (0: the layer was
        unused, mean/var may then be left out), the others per-channel
        sequences, array.array, numpy arrays or torch tensors (ema_* optional,
        both or neither). var_kind: "unbiased" (server default) or "biased".
        dtype: "f32" or "f64", default the client's. A retry of the same
        batch (same identity and content) answers duplicate: True.
        """
        dtype = dtype or self.dtype
        enc = _encode_layers(layers, dtype)
        if self.binary is True or (self.binary == "auto" and self.binary_supported is not False):
            body = safetensors.encode_upload(worker, step, seq, enc, domain, var_kind,
                                             _FLOAT[dtype][2])
            try:
                _, _, raw = self.request("POST", self._run(run) + "/batches", body=body,
                                         content_type="application/octet-stream")
            except BnstatError as e:
                if e.status != 415 or self.binary is True:
                    raise
                log.info("bnstat: %s does not take binary uploads; using JSON", self.url)
                self.binary_supported = False
            else:
                self.binary_supported = True
                return json.loads(raw.decode("utf-8"))
        doc = {"worker": worker, "step": step, "seq": seq}
        if domain is not None:
            doc["domain"] = domain
        if var_kind is not None:
            doc["var_kind"] = var_kind
        jl = {}
        for name, layer in enc.items():
            out = {"count": layer["count"]}
            for key in _LAYER_KEYS[1:]:
                if key in layer:
                    out[key] = {"dtype": dtype, "b64": base64.b64encode(layer[key]).decode("ascii")}
            jl[name] = out
        doc["layers"] = jl
        return self._json("POST", self._run(run) + "/batches", doc=doc)

    # -- reads -----------------------------------------------------------------

    def health(self):
        """GET /healthz."""
        return self._json("GET", "/healthz")

    def runs(self, prefix=None, limit=None, after=None):
        """GET /v1/runs: one page {"runs": [summary, ...], "next": name}, by name.

        prefix: only runs whose names start with it (literally: "_" and "%" are
        no wildcards). limit: at most this many (server default 1000, at most
        10000). after: only names after it, the "next" of the previous page;
        "next" is absent on the last page. iter_runs() follows the pages.
        """
        return self._json("GET", "/v1/runs", {"prefix": prefix, "limit": limit, "after": after})

    def iter_runs(self, prefix=None, limit=None, after=None):
        """Every run whose name starts with prefix (and comes after `after`),
        by name: a generator of run summaries that asks for one page of
        `limit` runs at a time."""
        while True:
            doc = self.runs(prefix=prefix, limit=limit, after=after)
            runs = doc.get("runs", [])
            for r in runs:
                yield r
            after = doc.get("next")
            if after is None or not runs:
                return

    def run(self, name):
        """GET /v1/runs/{name}: the run's summary with layers, domains, workers."""
        return self._json("GET", self._run(name))

    def delete_run(self, name):
        """DELETE /v1/runs/{name} (docs/API.md, "Deleting a run"; not every server version has it)."""
        return self._json("DELETE", self._run(name))

    def stats(self, run, step=None, window=None, domain=None, estimator=None, layers=None,
              min_batches=None, target_se=None, prior=None, prior_weight=None):
        """GET /v1/runs/{run}/stats: the precise estimate over the window
        ending at step (default the latest), with each layer's mean_se and
        batches_for (for target_se, server default 0.01). window: a number of
        steps (server default 1) or "auto" (the smallest window of min_batches
        batches, server default 100). prior, prior_weight: BN-adapt, mix
        prior_weight of the prior domain's statistics over the same steps
        (docs/API.md, "Adapting to a target domain"). layers: a name or a list."""
        if isinstance(layers, str):
            layers = [layers]
        return self._json("GET", self._run(run) + "/stats",
                          {"step": step, "window": window, "min_batches": min_batches,
                           "domain": domain, "estimator": estimator, "layer": layers,
                           "target_se": target_se, "prior": prior,
                           "prior_weight": prior_weight})

    def compare(self, run, step=None, window="auto", domain=None, ema=None, momentum=None,
                worker=None, layers=None, precise=None, min_batches=None, target_se=None):
        """GET /v1/runs/{run}/compare: EMA against the precise estimate per layer
        (mean_err, var_err, kl and their *_max, and against a window its
        batches, mean_se and batches_for) and "overall". ema: "worker" (server
        default) or "sim" with momentum. window defaults to "auto" here (the
        smallest window holding min_batches batches): a one-step window
        compares an EMA with the noise of a few batches; window=None asks for
        the server's default (1). precise: what the EMA is compared with:
        None or "window" (the window of step/window/domain), "snapshot:LABEL"
        (a stored snapshot, of any domain) or "worker:NAME" (that worker's EMA
        at the same step; with ema="worker" name the other one with worker=).
        With a snapshot or a worker there is no window (the default "auto" is
        then not sent; an explicit one is refused by the server, docs/API.md
        "Comparing with a snapshot or a worker"); the reply then names the
        reference ("precise", "snapshot") and lists the reference's layers
        without an EMA under "no_ema"."""
        if isinstance(layers, str):
            layers = [layers]
        return self._json("GET", self._run(run) + "/compare",
                          {"step": step, "window": _window_for(window, precise),
                           "min_batches": min_batches, "domain": domain, "ema": ema,
                           "momentum": momentum, "worker": worker, "layer": layers,
                           "precise": precise, "target_se": target_se})

    def drift(self, run, from_step=None, to_step=None, domain=None, ema=None, momentum=None,
              worker=None, window="auto", points=None, precise=None, min_batches=None):
        """GET /v1/runs/{run}/drift: per layer, the metrics of compare() at every
        step of [from_step, to_step] ("step", "layers": {name: {"mean_err",
        "var_err", "kl"}: arrays, None where there is no value}, "overall"),
        at most `points` points (each the maximum over its steps). window as
        for compare() ("auto" by default: each step's own smallest window of
        min_batches). precise as for compare(): with "snapshot:LABEL" every
        step is compared with the snapshot, with "worker:NAME" with that
        worker's EMA at the step."""
        return self._json("GET", self._run(run) + "/drift",
                          {"from": from_step, "to": to_step, "domain": domain, "ema": ema,
                           "momentum": momentum, "worker": worker,
                           "window": _window_for(window, precise), "min_batches": min_batches,
                           "points": points, "precise": precise})

    def series(self, run, layer, channel=None, domain=None, from_step=None, to_step=None,
               window=None, momentum=None, worker=None, min_batches=None):
        """GET /v1/runs/{run}/series: per step of [from_step, to_step], parallel
        arrays step, batch_mean/var, precise_mean/var, ema_mean/var, sim_mean/var
        of one channel of one layer. window: the precise window at each step, a
        number (server default 1) or "auto" (each step's smallest window of
        min_batches batches)."""
        return self._json("GET", self._run(run) + "/series",
                          {"layer": layer, "channel": channel, "domain": domain,
                           "from": from_step, "to": to_step, "window": window,
                           "min_batches": min_batches, "momentum": momentum,
                           "worker": worker})

    def momentum(self, run, momenta=None, from_step=None, to_step=None, domain=None,
                 window=None, points=None, min_batches=None):
        """GET /v1/runs/{run}/momentum: for each momentum (a list of numbers, or
        the server's default 0.3 ... 0.001), the mean kl between the EMA
        simulated at it and the precise window over the steps of [from_step,
        to_step] (at most `points` of them), per layer and overall, and
        "best": the momentum with the lowest overall kl. window: the server's
        default is "auto" here (each step's smallest window of min_batches)."""
        if momenta is not None and not isinstance(momenta, str):
            momenta = ",".join(repr(float(m)) for m in momenta)
        return self._json("GET", self._run(run) + "/momentum",
                          {"momenta": momenta, "from": from_step, "to": to_step,
                           "domain": domain, "window": window, "points": points,
                           "min_batches": min_batches})

    def domains(self, run):
        """GET /v1/runs/{run}/domains."""
        return self._json("GET", self._run(run) + "/domains")

    def metrics(self):
        """GET /metrics: the Prometheus text."""
        _, _, raw = self.request("GET", "/metrics", accept="text/plain")
        return raw.decode("utf-8")

    # -- snapshots ---------------------------------------------------------------

    def snapshot_create(self, run, label, step=None, window=None, domain=None, estimator=None,
                        min_batches=None, prior=None, prior_weight=None, target_se=None):
        """POST /v1/runs/{run}/snapshots; returns the snapshot. Only the fields
        given here are sent (the server resolves the others when it creates
        it), so that a retry or a second call with the same arguments answers
        the stored snapshot; other explicit values give 409. window may be
        "auto" (with min_batches); prior and prior_weight freeze BN-adapted
        statistics (docs/API.md, "Snapshots")."""
        doc = {"label": label}
        for key, value in (("step", step), ("window", window), ("domain", domain),
                           ("estimator", estimator), ("min_batches", min_batches),
                           ("prior", prior), ("prior_weight", prior_weight),
                           ("target_se", target_se)):
            if value is not None:
                doc[key] = value
        return self._json("POST", self._run(run) + "/snapshots", doc=doc)

    def snapshots(self, run):
        """GET /v1/runs/{run}/snapshots: {"run", "snapshots": [...]} (no layers)."""
        return self._json("GET", self._run(run) + "/snapshots")

    def snapshot(self, run, label):
        """GET /v1/runs/{run}/snapshots/{label}: the snapshot with its layers
        ({name: {"count", "mean", "var", ...}}; the values are the server's
        doubles, exactly)."""
        return self._json("GET", self._run(run) + "/snapshots/" + urllib.parse.quote(label, safe=""))

    def delete_snapshot(self, run, label, missing_ok=False):
        """DELETE /v1/runs/{run}/snapshots/{label} (role admin): the snapshot is
        gone once this returns (the server answers after the commit) and the
        label may be created again. Returns True when this call deleted it.
        An unknown label raises BnstatError 404, or returns False with
        missing_ok=True: a retry of a deletion whose reply was lost finds the
        label gone, so pass missing_ok=True where that is what you want."""
        try:
            self.request("DELETE",
                         self._run(run) + "/snapshots/" + urllib.parse.quote(label, safe=""))
        except BnstatError as e:
            if missing_ok and e.status == 404 and e.path == "label":
                return False
            raise
        return True

    def snapshot_safetensors(self, run, label, dtype="f32"):
        """The snapshot as safetensors bytes: {layer}.running_mean and
        {layer}.running_var, F32 (or F64 with dtype="f64")."""
        if dtype not in _FLOAT:
            raise ValueError("dtype must be 'f32' or 'f64', not %r" % (dtype,))
        _, _, raw = self.request(
            "GET", self._run(run) + "/snapshots/" + urllib.parse.quote(label, safe=""),
            {"format": "safetensors", "dtype": dtype}, accept="application/octet-stream")
        return raw
