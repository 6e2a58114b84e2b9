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
    doc = c.runs()
    if a.json:
        return doc
    table(["run", "batches", "layers", "domains", "workers", "steps", "created"],
          [[r.get("name"), r.get("batches"), r.get("layers"), r.get("domains"), r.get("workers"),
            steps_range(r.get("steps")), iso_ms(r.get("created_ms"))] for r in doc.get("runs", [])])


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
            row.append(l.get("batch_noise"))
        rows.append(row + list(mean) + list(var))
    return rows


_LAYER_HEADERS = ["layer", "channels", "count", "batches"]
_SUMMARY_HEADERS = ["mean.min", "mean.avg", "mean.max", "var.min", "var.avg", "var.max"]


def cmd_stats(c, a):
    doc = c.stats(a.run, step=a.step, window=a.window, domain=a.domain, estimator=a.estimator,
                  layers=a.layer)
    if a.json:
        return doc
    print("run %s  domain %s  step %s  window %s  estimator %s"
          % (doc.get("run"), doc.get("domain"), doc.get("step"), doc.get("window"),
             doc.get("estimator")))
    table(_LAYER_HEADERS + ["batch_noise"] + _SUMMARY_HEADERS, _layer_rows(doc.get("layers", {})))


_COMPARE_FIELDS = ["mean_err", "mean_err_max", "var_err", "var_err_max", "kl", "kl_max"]


def cmd_compare(c, a):
    doc = c.compare(a.run, step=a.step, window=a.window, domain=a.domain, ema=a.ema,
                    momentum=a.momentum, worker=a.worker, layers=a.layer)
    if a.json:
        return doc
    head = ["%s %s" % (k, doc[k]) for k in ("run", "domain", "step", "window", "ema", "momentum",
                                             "worker") if doc.get(k) is not None]
    if head:
        print("  ".join(head))
    rows = [[name] + [m.get(f) for f in _COMPARE_FIELDS]
            for name, m in (doc.get("layers") or {}).items()]
    if isinstance(doc.get("overall"), dict):
        rows.append(["overall"] + [doc["overall"].get(f) for f in _COMPARE_FIELDS])
    table(["layer"] + _COMPARE_FIELDS, rows)


def cmd_series(c, a):
    doc = c.series(a.run, a.layer, channel=a.channel, domain=a.domain, from_step=a.from_step,
                   to_step=a.to_step, window=a.window, momentum=a.momentum, worker=a.worker)
    if a.json:
        return doc
    cols = [k for k in ("step", "batch_mean", "batch_var", "precise_mean", "precise_var",
                        "ema_mean", "ema_var", "sim_mean", "sim_var") if isinstance(doc.get(k), list)]
    n = len(doc.get("step") or [])
    table(cols, [[doc[k][i] if i < len(doc[k]) else None for k in cols] for i in range(n)])


def cmd_momentum(c, a):
    doc = c.momentum(a.run, momenta=a.momenta, from_step=a.from_step, to_step=a.to_step,
                     domain=a.domain, window=a.window, points=a.points)
    if a.json:
        return doc
    head = ["%s %s" % (k, doc[k]) for k in ("run", "domain", "window", "steps")
            if doc.get(k) is not None]
    if head:
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
    return c.health()


def cmd_snapshot_create(c, a):
    doc = c.snapshot_create(a.run, a.label, step=a.step, window=a.window, domain=a.domain,
                            estimator=a.estimator)
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
    print("snapshot %s  step %s  window %s  domain %s  estimator %s  created %s"
          % tuple(doc.get(k) for k in ("label", "step", "window", "domain", "estimator", "created")))
    table(_LAYER_HEADERS + _SUMMARY_HEADERS, _layer_rows(doc.get("layers", {}), with_noise=False))


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


def _window_args(p, estimator=True):
    p.add_argument("--step", type=int, help="the window's last step (default: the latest)")
    p.add_argument("--window", type=int, help="steps in the window (server default 1)")
    p.add_argument("--domain", help='domain (default "default"; "*" pools all)')
    if estimator:
        p.add_argument("--estimator", choices=["population", "mean_of_batch_var"])


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

    s = sub.add_parser("runs", help="list runs")
    s.set_defaults(func=cmd_runs)
    s = sub.add_parser("run", help="one run: layers, domains, workers")
    s.add_argument("name")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("stats", help="precise statistics per layer")
    s.add_argument("run")
    _window_args(s)
    s.add_argument("--layer", action="append", help="only this layer (repeatable)")
    s.set_defaults(func=cmd_stats)
    s = sub.add_parser("compare", help="EMA against the precise statistics per layer")
    s.add_argument("run")
    _window_args(s, estimator=False)
    s.add_argument("--ema", choices=["worker", "sim"])
    s.add_argument("--momentum", type=float, help="for --ema sim (server default 0.1)")
    s.add_argument("--worker", help="whose EMA (default: the first by name)")
    s.add_argument("--layer", action="append", help="only this layer (repeatable)")
    s.set_defaults(func=cmd_compare)
    s = sub.add_parser("series", help="one channel's statistics per step")
    s.add_argument("run")
    s.add_argument("--layer", required=True)
    s.add_argument("--channel", type=int)
    s.add_argument("--domain")
    s.add_argument("--from", dest="from_step", type=int)
    s.add_argument("--to", dest="to_step", type=int)
    s.add_argument("--window", type=int)
    s.add_argument("--momentum", type=float)
    s.add_argument("--worker")
    s.set_defaults(func=cmd_series)
    s = sub.add_parser("momentum", help="which EMA momentum follows the precise statistics best")
    s.add_argument("run")
    s.add_argument("--momenta", help="comma list (server default 0.3,0.1,0.03,0.01,0.003,0.001)")
    s.add_argument("--domain")
    s.add_argument("--from", dest="from_step", type=int)
    s.add_argument("--to", dest="to_step", type=int)
    s.add_argument("--window", help="steps of the precise window (server default 1)")
    s.add_argument("--points", type=int, help="steps averaged at most (server default 200)")
    s.set_defaults(func=cmd_momentum)

    s = sub.add_parser("domains", help="a run's domains")
    s.add_argument("run")
    s.set_defaults(func=cmd_domains)
    s = sub.add_parser("health", help="GET /healthz")
    s.set_defaults(func=cmd_health)

    snap = sub.add_parser("snapshot", help="create, list, show, export snapshots")
    ssub = snap.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND")
    ssub.required = True
    s = ssub.add_parser("create", help="freeze the precise statistics under a label")
    s.add_argument("run")
    s.add_argument("label")
    _window_args(s)
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
    return p


def main(argv=None):
    a = parser().parse_args(argv)
    client = Client(a.url, token=a.token, timeout=a.timeout, retries=a.retries, cafile=a.cacert)
    try:
        doc = a.func(client, a)
    except BnstatError as e:
        print("bnstat: error: %s" % e, file=sys.stderr)
        return 1
    except OSError as e:
        print("bnstat: error: %s" % e, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if doc is not None:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0
