#!/usr/bin/env python3
"""The dashboard's run view in a real browser: how long until the drift
heatmap is painted.

Fills a run of --steps steps of ResNet-50-shaped statistics (the 53
BatchNorm layers of tests/bench/bench_model.c, 26,560 channels) from
--workers workers, one batch per worker and step, each with its EMA (the
running statistics a PyTorch BatchNorm with momentum 0.1 would hold,
float32), as safetensors bodies; --synchronous normal, every step kept.

Then restarts the daemon (no replay state in memory) and, --reps times,
loads http://.../ui/#/run/RUN in headless Chromium (1400 x 1000) and reads
the Performance API: the time from the navigation's start to the frame
that paints the heatmap (the page's mark "bnstat:heatmap"), and of it the
/drift request's own duration; then switches the view to the simulated EMA
at momentum 0.1 and times from the switch ("bnstat:view") to its heatmap.
The first repetition is the cold one (a fresh daemon).

Usage:
  tests/bench/bench_dashboard.py --bnstatd src/bnstatd [--steps 10000]
      [--workers 1] [--reps 3] [--window auto] [--db FILE [--no-fill]] [--tmpdir DIR]
"""

import argparse
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))
from bench_momentum import procs, resnet50, start, stop  # noqa: E402
from benchlib import add_db_args, db_paths  # noqa: E402
from bnstat.safetensors import encode_upload  # noqa: E402

RUN = "bench-dashboard"
MOMENTUM = np.float32(0.1)


def fill(args, c, layers):
    rng = np.random.default_rng(7)
    base = [(rng.standard_normal(ch).astype(np.float32),
             rng.uniform(0.5, 2.0, ch).astype(np.float32)) for _, ch, _ in layers]
    ema = {(w, name): [np.zeros(ch, np.float32), np.ones(ch, np.float32)]
           for w in range(args.workers) for name, ch, _ in layers}
    noise = np.random.default_rng(100)
    t0 = time.monotonic()
    for step in range(args.steps):
        drift = np.float32(0.001 * step)
        for w in range(args.workers):
            up = {}
            for (name, ch, count), (m, v) in zip(layers, base):
                mean = m + drift + noise.standard_normal(1).astype(np.float32)[0] * np.float32(0.05)
                var = v * np.float32(1.0 + 0.5 * np.sin(step / 500.0))
                e = ema[(w, name)]
                e[0] = MOMENTUM * mean + (np.float32(1) - MOMENTUM) * e[0]
                e[1] = MOMENTUM * var + (np.float32(1) - MOMENTUM) * e[1]
                up[name] = {"count": count, "mean": mean.tobytes(), "var": var.tobytes(),
                            "ema_mean": e[0].tobytes(), "ema_var": e[1].tobytes()}
            st, reply = c.request("POST", "/v1/runs/%s/batches" % RUN,
                                  encode_upload("rank%d" % w, step, 0, up))
            if st != 200:
                raise SystemExit("upload step %d: %d %r" % (step, st, reply))
        if step % 1000 == 999:
            print("filled %d steps (%.0f s)" % (step + 1, time.monotonic() - t0), file=sys.stderr)
    return time.monotonic() - t0


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000"):
        o.add_argument(a)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    drv.set_page_load_timeout(900)
    drv.set_script_timeout(900)
    return drv


def marks(drv, name):
    return drv.execute_script("return performance.getEntriesByName(arguments[0])"
                              ".map(e => e.startTime)", name)


def wait_marks(drv, name, n, timeout=1800):
    deadline = time.monotonic() + timeout
    while True:
        m = marks(drv, name)
        if len(m) >= n:
            return m
        if time.monotonic() > deadline:
            raise SystemExit("no %s mark after %d s" % (name, timeout))
        time.sleep(0.05)


def measure(drv, url, window):
    """(ms to the heatmap's paint, ms of /drift, ms from the switch to sim to its paint)."""
    q = "" if window == "auto" else "?window=" + window
    drv.get("about:blank")
    drv.get(url + "/ui/#/run/" + RUN + q)
    first = wait_marks(drv, "bnstat:heatmap", 1)[0]
    drift = drv.execute_script(
        "return performance.getEntriesByType('resource').filter(e => e.name.includes('/drift?'))"
        ".map(e => e.duration)")[0]
    drv.execute_script("location.hash = '#/run/%s?ema=sim&momentum=0.1%s'"
                       % (RUN, "" if window == "auto" else "&window=" + window))
    heat = wait_marks(drv, "bnstat:heatmap", 2)
    view = marks(drv, "bnstat:view")
    return first, drift, heat[1] - view[-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bnstatd", required=True)
    ap.add_argument("--steps", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--window", default="auto",
                    help="the view's precise window (the page's default: auto)")
    add_db_args(ap)
    args = ap.parse_args()
    layers = resnet50()
    tmp, db = db_paths(args, "bench-dashboard-")
    log = open(os.path.join(tmp, "bnstatd.log"), "w")
    drv = None
    try:
        if not args.no_fill:
            proc, c = start(args, db, log)
            secs = fill(args, c, layers)
            print("fill: %d steps x %d workers in %.0f s" % (args.steps, args.workers, secs),
                  file=sys.stderr)
            stop(proc)
        proc, c = start(args, db, log)
        drv = browser()
        url = "http://127.0.0.1:%d" % c.port
        print("run view of %d steps x %d layers x %d workers, window %s (%s)"
              % (args.steps, len(layers), args.workers, args.window, time.strftime("%Y-%m-%d")))
        print("| repetition | heatmap painted, ms from navigation | of it /drift, ms |"
              " switch to simulated EMA, ms |")
        print("|---|--:|--:|--:|")
        for i in range(args.reps):
            first, drift, sim = measure(drv, url, args.window)
            print("| %s | %.0f | %.0f | %.0f |" % ("1 (cold daemon)" if i == 0 else str(i + 1),
                                                 first, drift, sim), flush=True)
        stop(proc)
    finally:
        if drv is not None:
            drv.quit()
        for p in procs:
            if p.poll() is None:
                p.kill()
        log.close()
        if not args.db:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("log in %s" % log.name, file=sys.stderr)


if __name__ == "__main__":
    main()
