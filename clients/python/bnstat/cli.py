"""Command line of bnstat: python3 -m bnstat [--url URL] COMMAND ...

Prints aligned tables (or the server's JSON with --json); on failure prints
the server's error to stderr and exits 1.
"""

import argparse
import datetime
import json
import os
import sys

from .client import DEFAULT_URL, BnstatError, Client

# --- formatting --------------------------------------------------------------


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "%.6g" % v
    return str(v)


def _is_number(s):
    try:
        float(s)
        return True
    except ValueError:
        return s == "-"


def table(headers, rows, out=None):
    """Print rows (lists of values) under headers, columns aligned: text left,
    numbers right."""
    out = out or sys.stdout
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    numeric = [bool(cells) and all(_is_number(row[i]) for row in cells) for i in range(len(headers))]

    def line(values):
        parts = [(v.rjust(w) if num else v.ljust(w))
                 for v, w, num in zip(values, widths, numeric)]
        return "  ".join(parts).rstrip()

    out.write(line(list(headers)) + "\n")
    for row in cells:
        out.write(line(row) + "\n")


def summary3(values):
    """(min, mean, max) of a list of numbers, or Nones."""
    if not values:
        return None, None, None
    return min(values), sum(values) / len(values), max(values)


def iso_ms(ms):
    if ms is None:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000.0, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def steps_range(steps):
    if not steps:
        return "-"
    return "%s..%s" % (steps.get("min"), steps.get("max"))


# --- commands ----------------------------------------------------------------


def cmd_runs(c, a):
    """Every run (from --prefix, after --after), page after page; with --limit
    one page, and where the next one starts on stderr."""
    if a.limit is not None:
        doc = c.runs(prefix=a.prefix, limit=a.limit, after=a.after)
    else:
        doc = {"runs": list(c.iter_runs(prefix=a.prefix, after=a.after))}
    if a.json:
        return doc
    table(["run", "batches", "layers", "domains", "workers", "steps", "created"],
          [[r.get("name"), r.get("batches"), r.get("layers"), r.get("domains"), r.get("workers"),
            steps_range(r.get("steps")), iso_ms(r.get("created_ms"))] for r in doc.get("runs", [])])
    if doc.get("next") is not None:
        print("bnstat: more runs follow: --after %s" % doc["next"], file=sys.stderr)


def cmd_run(c, a):
    doc = c.run(a.name)
    if a.json:
        return doc
    print("run %s: %s batches, steps %s, created %s"
          % (doc.get("name"), doc.get("batches"), steps_range(doc.get("steps")),
             iso_ms(doc.get("created_ms"))))
    print()
    table(["layer", "channels"], [[l.get("name"), l.get("channels")] for l in doc.get("layers", [])])
    print()
    table(["domain", "batches", "steps"],
          [[d.get("name"), d.get("batches"), d.get("steps")] for d in doc.get("domains", [])])
    print()
    table(["worker", "batches", "last_step"],
          [[w.get("name"), w.get("batches"), w.get("last_step")] for w in doc.get("workers", [])])


def _layer_rows(layers, with_noise=True):
    rows = []
    for name, l in layers.items():
        mean = summary3(l.get("mean") or [])
        var = summary3(l.get("var") or [])
        row = [name, l.get("channels", len(l.get("mean") or [])), l.get("count"), l.get("batches")]
        if with_noise:
            row += [l.get(k) for k in _PRECISION]
        rows.append(row + list(mean) + list(var))
    return rows


_LAYER_HEADERS = ["layer", "channels", "count", "batches"]
_PRECISION = ["batch_noise", "mean_se", "batches_for"]


def _window_head(doc):
    """'window 13 (auto, min_batches 100)' or 'window 1'."""
    if doc.get("window") == "auto":     # series, drift, momentum: a window per step
        return "window auto (min_batches %s)" % doc.get("min_batches")
    if doc.get("requested_window") == "auto":
        return "window %s (auto, min_batches %s)" % (doc.get("window"), doc.get("min_batches"))
    return "window %s" % doc.get("window")


def _print_estimate(head, doc):
    """A precise estimate (stats or snapshot): its head line, its layers with
    their precision, and on stderr the layers short of the target."""
    if doc.get("prior") is not None:
        head += "  prior %s (weight %s)" % (doc["prior"], doc.get("prior_weight"))
    print(head)
    table(_LAYER_HEADERS + _PRECISION + _SUMMARY_HEADERS, _layer_rows(doc.get("layers", {})))
    note = _precision_note(doc.get("layers", {}), doc.get("target_se"))
    if note:
        print("bnstat: " + note, file=sys.stderr)


def _precision_note(layers, target_se):
    """A line saying which layers have not reached target_se, or None."""
    short = [(n, l) for n, l in layers.items()
             if l.get("mean_se") is not None and l["mean_se"] > (target_se or 0.01)]
    if not short:
        return None
    worst = max(short, key=lambda x: x[1]["batches_for"] or 0)
    return ("%d of %d layers have mean_se above %g; %s needs %s batches (has %s)"
            % (len(short), len(layers), target_se or 0.01, worst[0], worst[1].get("batches_for"),
               worst[1].get("batches")))
_SUMMARY_HEADERS = ["mean.min", "mean.avg", "mean.max", "var.min", "var.avg", "var.max"]


def cmd_stats(c, a):
    doc = c.stats(a.run, step=a.step, window=a.window, domain=a.domain, estimator=a.estimator,
                  layers=a.layer, min_batches=a.min_batches, target_se=a.target_se,
                  prior=a.prior, prior_weight=a.prior_weight)
    if a.json:
        return doc
    _print_estimate("run %s  domain %s  step %s  %s  estimator %s" % (
        doc.get("run"), doc.get("domain"), doc.get("step"), _window_head(doc),
        doc.get("estimator")), doc)


_COMPARE_FIELDS = ["mean_err", "mean_err_max", "var_err", "var_err_max", "kl", "kl_max"]


def _precise_arg(a):
    """The precise= of --snapshot / --against-worker / --precise (None: the window)."""
    if a.snapshot is not None:
        return "snapshot:" + a.snapshot
    if a.against_worker is not None:
        return "worker:" + a.against_worker
    return a.precise


def _worst_first(items, field, top=None):
    """(name, metrics) pairs sorted by metrics[field], largest first (None last);
    the first `top` of them when top is given."""
    ranked = sorted(items, key=lambda it: (it[1].get(field) is None, -(it[1].get(field) or 0.0)))
    return ranked[:top] if top is not None else ranked


def cmd_compare(c, a):
    precise = _precise_arg(a)
    doc = c.compare(a.run, step=a.step, window=a.window, domain=a.domain, ema=a.ema,
                    momentum=a.momentum, worker=a.worker, layers=a.layer, precise=precise,
                    min_batches=a.min_batches, target_se=a.target_se)
    if a.json:
        return doc
    head = ["%s %s" % (k, doc[k]) for k in ("run", "domain", "step") if doc.get(k) is not None]
    if doc.get("window") is not None:
        head.append(_window_head(doc))
    head += ["%s %s" % (k, doc[k]) for k in ("ema", "momentum", "worker", "precise")
             if doc.get(k) is not None]
    print("  ".join(head))
    snap = doc.get("snapshot")
    if isinstance(snap, dict):
        print("snapshot %s: step %s  window %s  domain %s  estimator %s  created %s"
              % tuple(snap.get(k) for k in ("label", "step", "window", "domain", "estimator",
                                            "created")))
    # against a reference, the worst layers first; --sort layer keeps the
    # server's order, the order of the layers' first upload (the model's)
    sort = a.sort or ("kl" if precise not in (None, "window") else "layer")
    items = list((doc.get("layers") or {}).items())
    if sort != "layer":
        items = _worst_first(items, sort, a.top)
    elif a.top is not None:
        items = items[:a.top]
    # against the window, its batches and precision beside the metrics
    extra = ["batches", "mean_se"] if any("mean_se" in m for _, m in items) else []
    rows = [[name] + [m.get(f) for f in _COMPARE_FIELDS + extra] for name, m in items]
    if isinstance(doc.get("overall"), dict):
        rows.append(["overall"] + [doc["overall"].get(f) for f in _COMPARE_FIELDS]
                    + [None] * len(extra))
    table(["layer"] + _COMPARE_FIELDS + extra, rows)
    if doc.get("no_ema"):
        print("no EMA to compare: %s" % ", ".join(doc["no_ema"]))


def rank_spread(c, run, step=None, domain=None, reference=None, all_pairs=False, layers=None,
                sort="kl"):
    """How far apart the workers' EMAs are, layer by layer, at one step.

    Compares worker EMAs pairwise with compare(precise="worker:REF",
    worker=W): every worker against `reference` (default the first worker of
    the run by name), or with all_pairs every pair (the later name's EMA
    against the earlier one's). Without step, the latest step (of the first
    pair that answers) is used for every pair. Returns a dict: run, domain,
    step, reference (None with all_pairs), "layers": {name: {metric: the
    maximum over the pairs, "pairs": how many compared it, "worst": [ref, W]
    with the largest `sort` metric}}, "pairs": [{"reference", "worker",
    "layers", "overall"}] and "skipped": [{"reference", "worker", "error"}]
    for pairs the server could not compare (no EMA at that step: 404).
    Raises BnstatError when the reference is not a worker of the run, or
    when no pair could be compared (the last pair's error).
    """
    workers = sorted(w["name"] for w in (c.run(run).get("workers") or []))
    if all_pairs:
        pairs = [(x, y) for i, x in enumerate(workers) for y in workers[i + 1:]]
        reference = None
    else:
        if reference is None and workers:
            reference = workers[0]
        if reference not in workers:
            raise BnstatError(None, "unknown_worker", "run %s has no worker %s (workers: %s)"
                              % (run, reference, ", ".join(workers) or "none"))
        pairs = [(reference, w) for w in workers if w != reference]
    out = {"run": run, "domain": domain or "default", "step": step, "reference": reference,
           "layers": {}, "pairs": [], "skipped": []}
    error = None
    for ref, w in pairs:
        try:
            doc = c.compare(run, step=out["step"], domain=domain, worker=w,
                            precise="worker:" + ref, layers=layers)
        except BnstatError as e:
            if e.status != 404 or e.path not in ("precise", "worker", "step"):
                raise
            error = e
            out["skipped"].append({"reference": ref, "worker": w, "error": str(e)})
            continue
        out["step"] = doc.get("step")
        out["domain"] = doc.get("domain", out["domain"])
        lays = doc.get("layers") or {}
        out["pairs"].append({"reference": ref, "worker": w, "layers": len(lays),
                             "overall": doc.get("overall") or {}})
        for name, m in lays.items():
            agg = out["layers"].get(name)
            if agg is None:
                agg = out["layers"][name] = dict(m, pairs=0, worst=[ref, w])
            else:
                if (m.get(sort) or 0.0) > (agg.get(sort) or 0.0):
                    agg["worst"] = [ref, w]
                for f in _COMPARE_FIELDS:
                    if m.get(f) is not None and (agg.get(f) is None or m[f] > agg[f]):
                        agg[f] = m[f]
            agg["pairs"] += 1
    if not out["pairs"] and out["skipped"]:
        raise error  # nothing compared at all: the server's reason, not an empty table
    return out


def cmd_ranks(c, a):
    sort = a.sort or "kl"
    doc = rank_spread(c, a.run, step=a.step, domain=a.domain, reference=a.reference,
                      all_pairs=a.all_pairs, layers=a.layer, sort=sort)
    if a.json:
        return doc
    who = "all pairs" if a.all_pairs else "reference %s" % doc["reference"]
    print("run %s  domain %s  step %s  %s  (%d pairs compared; per layer the maximum over them)"
          % (doc["run"], doc["domain"], doc["step"], who, len(doc["pairs"])))

    # the pair with the largest metric: the worker alone against one
    # reference, worker/reference with all pairs (names hold no "/")
    def pair(ref, w):
        return "%s/%s" % (w, ref) if a.all_pairs else w

    items = _worst_first(doc["layers"].items(), sort, a.top)
    table(["layer", "pairs"] + _COMPARE_FIELDS + ["worst"],
          [[name, m["pairs"]] + [m.get(f) for f in _COMPARE_FIELDS] + [pair(*m["worst"])]
           for name, m in items])
    if doc["pairs"]:
        print()
        ranked = _worst_first([(p, p["overall"]) for p in doc["pairs"]], sort)
        table(["worker", "reference", "layers"] + _COMPARE_FIELDS,
              [[p["worker"], p["reference"], p["layers"]] + [o.get(f) for f in _COMPARE_FIELDS]
               for p, o in ranked])
    for sk in doc["skipped"]:
        print("not compared: %s against %s (%s)" % (sk["worker"], sk["reference"], sk["error"]))


def cmd_series(c, a):
    doc = c.series(a.run, a.layer, channel=a.channel, domain=a.domain, from_step=a.from_step,
                   to_step=a.to_step, window=a.window, momentum=a.momentum, worker=a.worker,
                   min_batches=a.min_batches)
    if a.json:
        return doc
    cols = [k for k in ("step", "batch_mean", "batch_var", "precise_mean", "precise_var",
                        "ema_mean", "ema_var", "sim_mean", "sim_var") if isinstance(doc.get(k), list)]
    n = len(doc.get("step") or [])
    table(cols, [[doc[k][i] if i < len(doc[k]) else None for k in cols] for i in range(n)])


def cmd_momentum(c, a):
    doc = c.momentum(a.run, momenta=a.momenta, from_step=a.from_step, to_step=a.to_step,
                     domain=a.domain, window=a.window, points=a.points,
                     min_batches=a.min_batches)
    if a.json:
        return doc
    head = ["%s %s" % (k, doc[k]) for k in ("run", "domain") if doc.get(k) is not None]
    head.append(_window_head(doc))
    head += ["steps %s" % doc["steps"]] if doc.get("steps") is not None else []
    print("  ".join(head))
    rows = [[m.get("momentum"), m.get("effective_window"), m.get("kl"),
             "*" if m.get("momentum") == doc.get("best") else None]
            for m in doc.get("momenta") or []]
    table(["momentum", "effective_window", "kl", "best"], rows)


def cmd_domains(c, a):
    doc = c.domains(a.run)
    items = doc.get("domains") if isinstance(doc, dict) else None
    if a.json or not isinstance(items, list) or not all(isinstance(d, dict) for d in items):
        return doc
    keys = []
    for d in items:
        keys.extend(k for k in d if k not in keys and not isinstance(d[k], (dict, list)))
    table(keys, [[d.get(k) for k in keys] for d in items])


def cmd_health(c, a):
    doc = c.health()
    if a.json or not isinstance(doc, dict):
        return doc
    print("bnstatd at %s: %s, schema %s, %s uploads waiting for the writer"
          % (c.url, doc.get("status"), doc.get("schema"), doc.get("queue")))


def cmd_snapshot_create(c, a):
    doc = c.snapshot_create(a.run, a.label, step=a.step, window=a.window, domain=a.domain,
                            estimator=a.estimator, min_batches=a.min_batches,
                            prior=a.prior, prior_weight=a.prior_weight, target_se=a.target_se)
    if a.json:
        return doc
    print("snapshot %s: step %s window %s domain %s estimator %s, %d layers, created %s"
          % (doc.get("label"), doc.get("step"), doc.get("window"), doc.get("domain"),
             doc.get("estimator"), len(doc.get("layers") or {}), doc.get("created")))


def cmd_snapshot_list(c, a):
    doc = c.snapshots(a.run)
    if a.json:
        return doc
    table(["label", "step", "window", "domain", "estimator", "created"],
          [[s.get(k) for k in ("label", "step", "window", "domain", "estimator", "created")]
           for s in doc.get("snapshots", [])])


def cmd_snapshot_show(c, a):
    doc = c.snapshot(a.run, a.label)
    if a.json:
        return doc
    _print_estimate("snapshot %s  step %s  %s  domain %s  estimator %s  created %s" % (
        doc.get("label"), doc.get("step"), _window_head(doc), doc.get("domain"),
        doc.get("estimator"), doc.get("created")), doc)


def cmd_snapshot_delete(c, a):
    deleted = c.delete_snapshot(a.run, a.label, missing_ok=a.missing_ok)
    if a.json:
        return {"run": a.run, "label": a.label, "deleted": deleted}
    print("%s snapshot %s of run %s" % ("deleted" if deleted else "no", a.label, a.run))


def cmd_snapshot_export(c, a):
    if a.format == "safetensors":
        data = c.snapshot_safetensors(a.run, a.label, dtype=a.dtype)
        if a.output in (None, "-"):
            if sys.stdout.isatty():
                raise SystemExit("bnstat: refusing to write binary safetensors to a terminal; "
                                 "use -o FILE")
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
            return None
    else:
        doc = c.snapshot(a.run, a.label)
        data = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
        if a.output in (None, "-"):
            sys.stdout.write(data.decode("utf-8"))
            return None
    tmp = a.output + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, a.output)
    print("wrote %s (%d bytes, %s)" % (a.output, len(data), a.format), file=sys.stderr)


# --- arguments -----------------------------------------------------------------


def _window(s):
    """--window: a number of steps >= 1, or auto."""
    if s == "auto":
        return s
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError("a number of steps >= 1, or auto (got %r)" % s)
    return n


def _window_args(p, estimator=True, default="auto", precision=True):
    p.add_argument("--step", type=int, help="the window's last step (default: the latest)")
    p.add_argument("--window", type=_window, default=default,
                   help="steps in the window, or auto: the smallest window holding "
                        "--min-batches batches (default: %s)" % default)
    p.add_argument("--min-batches", type=int,
                   help="with --window auto: the batches to hold (server default 100)")
    p.add_argument("--domain", help='domain (default "default"; "*" pools all)')
    if estimator:
        p.add_argument("--estimator", choices=["population", "mean_of_batch_var"])
    if precision:
        p.add_argument("--target-se", type=float,
                       help="the mean_se that batches_for aims at (server default 0.01)")


def _prior_args(p):
    p.add_argument("--prior", help="BN-adapt: mix this (source) domain's statistics in")
    p.add_argument("--prior-weight", type=float,
                   help="with --prior: its weight in [0, 1] (required with --prior)")


def parser():
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "bnstat"
    if prog in ("__main__.py", "-c", ""):
        prog = "python3 -m bnstat"
    p = argparse.ArgumentParser(
        prog=prog,
        description="Query bnstatd: exact BatchNorm population statistics (PreciseBN).")
    p.add_argument("--url", default=os.environ.get("BNSTAT_URL") or DEFAULT_URL,
                   help="daemon URL (env BNSTAT_URL; default %(default)s)")
    p.add_argument("--token", default=os.environ.get("BNSTAT_TOKEN"),
                   help="bearer token (env BNSTAT_TOKEN)")
    p.add_argument("--cacert", default=os.environ.get("BNSTAT_CACERT"),
                   help="CA or self-signed certificate (PEM) for https (env BNSTAT_CACERT)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=2, help="retries on connection errors and 5xx")
    p.add_argument("--json", action="store_true", help="print the server's JSON reply")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    s = sub.add_parser("runs", help="list runs, by name")
    s.add_argument("--prefix", help="only runs whose names start with this (literally)")
    s.add_argument("--limit", type=int,
                   help="one page of at most this many runs (default: every run)")
    s.add_argument("--after", help="only runs after this name (a page's next)")
    s.set_defaults(func=cmd_runs)
    s = sub.add_parser("run", help="one run: layers, domains, workers")
    s.add_argument("name")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("stats", help="precise statistics per layer, with their precision")
    s.add_argument("run")
    _window_args(s)
    _prior_args(s)
    s.add_argument("--layer", action="append", help="only this layer (repeatable)")
    s.set_defaults(func=cmd_stats)
    s = sub.add_parser("compare", help="EMA against the precise statistics per layer",
                       description="The EMA against the precise statistics of a window "
                       "(default), a snapshot (--snapshot) or another worker's EMA "
                       "(--against-worker), per layer; against a reference the worst "
                       "layers (by --sort, default kl) come first.")
    s.add_argument("run")
    _window_args(s, estimator=False)
    s.add_argument("--ema", choices=["worker", "sim"],
                   help="the EMA compared: worker (the default), the running statistics a "
                   "worker uploaded with its batches (--worker says whose), or sim, the EMA "
                   "the server simulates from the batches with --momentum")
    s.add_argument("--momentum", type=float, help="for --ema sim (server default 0.1)")
    s.add_argument("--worker", help="whose EMA (default: the first by name)")
    s.add_argument("--layer", action="append", help="only this layer (repeatable)")
    ref = s.add_mutually_exclusive_group()
    ref.add_argument("--snapshot", metavar="LABEL",
                     help="compare with this snapshot (precise=snapshot:LABEL)")
    ref.add_argument("--against-worker", metavar="NAME",
                     help="compare with this worker's EMA at the same step (precise=worker:NAME)")
    ref.add_argument("--precise", help="the precise= value as the server takes it")
    s.add_argument("--sort", choices=["layer"] + _COMPARE_FIELDS,
                   help="order of the layers, largest first (default: kl against a snapshot "
                   "or a worker, else layer: the model's order)")
    s.add_argument("--top", type=int, metavar="N", help="only the first N layers")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("ranks", help="how far apart the workers' EMAs are, per layer",
                       description="Each worker's EMA against a reference worker's at one "
                       "step (or every pair with --all-pairs); per layer the maximum over "
                       "the workers of each metric, the worst layers first, then each "
                       "worker's overall metrics.")
    s.add_argument("run")
    s.add_argument("--step", type=int, help="the step (default: the latest)")
    s.add_argument("--domain", help='domain (default "default")')
    who = s.add_mutually_exclusive_group()
    who.add_argument("--reference", metavar="NAME",
                     help="the worker the others are compared with (default: the first by name)")
    who.add_argument("--all-pairs", action="store_true", help="compare every pair of workers")
    s.add_argument("--layer", action="append", help="only this layer (repeatable)")
    s.add_argument("--sort", choices=_COMPARE_FIELDS, help="order, largest first (default kl)")
    s.add_argument("--top", type=int, metavar="N", help="only the first N layers")
    s.set_defaults(func=cmd_ranks)
    s = sub.add_parser("series", help="one channel's statistics per step")
    s.add_argument("run")
    s.add_argument("--layer", required=True)
    s.add_argument("--channel", type=int)
    s.add_argument("--domain")
    s.add_argument("--from", dest="from_step", type=int)
    s.add_argument("--to", dest="to_step", type=int)
    s.add_argument("--window", type=_window, default="auto",
                   help="the precise window at each step, or auto (default)")
    s.add_argument("--min-batches", type=int, help="with --window auto (server default 100)")
    s.add_argument("--momentum", type=float)
    s.add_argument("--worker")
    s.set_defaults(func=cmd_series)
    s = sub.add_parser("momentum", help="which EMA momentum follows the precise statistics best")
    s.add_argument("run")
    s.add_argument("--momenta", help="comma list (server default 0.3,0.1,0.03,0.01,0.003,0.001)")
    s.add_argument("--domain")
    s.add_argument("--from", dest="from_step", type=int)
    s.add_argument("--to", dest="to_step", type=int)
    s.add_argument("--window", type=_window, default="auto",
                   help="steps of the precise window, or auto (default)")
    s.add_argument("--min-batches", type=int, help="with --window auto (server default 100)")
    s.add_argument("--points", type=int, help="steps averaged at most (server default 200)")
    s.set_defaults(func=cmd_momentum)

    s = sub.add_parser("domains", help="a run's domains")
    s.add_argument("run")
    s.set_defaults(func=cmd_domains)
    s = sub.add_parser("health", help="GET /healthz")
    s.set_defaults(func=cmd_health)

    snap = sub.add_parser("snapshot", help="create, list, show, export, delete snapshots")
    ssub = snap.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND")
    ssub.required = True
    s = ssub.add_parser("create", help="freeze the precise statistics under a label")
    s.add_argument("run")
    s.add_argument("label")
    _window_args(s, default=None)
    _prior_args(s)
    s.set_defaults(func=cmd_snapshot_create)
    s = ssub.add_parser("list", help="a run's snapshots")
    s.add_argument("run")
    s.set_defaults(func=cmd_snapshot_list)
    s = ssub.add_parser("show", help="a snapshot's layers")
    s.add_argument("run")
    s.add_argument("label")
    s.set_defaults(func=cmd_snapshot_show)
    s = ssub.add_parser("export", help="write a snapshot to a file (JSON or safetensors)")
    s.add_argument("run")
    s.add_argument("label")
    s.add_argument("-o", "--output", help="file to write (default: stdout)")
    s.add_argument("--format", choices=["json", "safetensors"], default="json")
    s.add_argument("--dtype", choices=["f32", "f64"], default="f32",
                   help="float type of the safetensors export")
    s.set_defaults(func=cmd_snapshot_export)
    s = ssub.add_parser("delete", help="delete a snapshot (role admin); the label is free again")
    s.add_argument("run")
    s.add_argument("label")
    s.add_argument("--missing-ok", action="store_true",
                   help="a label that is not there is no error")
    s.set_defaults(func=cmd_snapshot_delete)
    return p


def main(argv=None):
    p = parser()
    a = p.parse_args(argv)
    try:
        client = Client(a.url, token=a.token, timeout=a.timeout, retries=a.retries,
                        cafile=a.cacert)
    except ValueError as e:
        p.error("--url: %s" % e)  # a usage error (exit 2), not an unreachable server
    try:
        doc = a.func(client, a)
        if doc is not None:
            json.dump(doc, sys.stdout, indent=1)
            sys.stdout.write("\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (| head): not an error of ours; stdout is
        # pointed at /dev/null so that the exit's flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except BnstatError as e:
        print("bnstat: error: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("bnstat: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
