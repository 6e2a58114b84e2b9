"""The dashboard in a real browser (docs/API.md, "Dashboard"): headless
Chromium driven by Selenium against a bnstatd filled by a real PyTorch
training loop through the Python client (BNStatsReporter), two workers and
two domains, and a snapshot.

  * every view (runs, a run's drift, a channel, domains, snapshots) loads
    with no error in the browser's console, and a screenshot of each is
    saved (in $BNSTAT_SCREENSHOTS, else a temporary directory named in the
    output);
  * the heatmap has one row per layer, in the model's order; the value the
    page shows on hover for a cell is /drift's for that layer and step, for
    the worker EMA and window auto (the defaults), the simulated EMA at
    another momentum and another metric, and another worker's EMA as the
    reference; a click opens that layer's channel view at that step; the
    per-layer table holds /stats' batch noise and batch size;
  * the channel view plots exactly /series' points (batch, worker EMA, the
    simulated EMA at each momentum asked, precise), for the mean and the
    variance;
  * the domains view's shift table is /shift's; a snapshot downloads as
    JSON and as safetensors;
  * while the run trains on, the run and channel views follow it, asking
    only for the steps after the last one they hold (from=);
  * with a token file the page loads without a token, its API calls are
    refused (401, said in words, the token form shown) until a token is
    given; a read token cannot create a snapshot (403), an admin token can.

Skipped, saying why, when /usr/bin/chromium, /usr/bin/chromedriver or the
selenium module (Debian: chromium chromium-driver python3-selenium) or
PyTorch are missing.

Run:
  BNSTATD=/path/to/bnstatd BNSTAT_FIXTURES=tests/fixtures \\
  PYTHONPATH=tests/integration /usr/bin/python3 tests/integration/test_dashboard.py -v
"""

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse

SYSTEM_PYTHON = "/usr/bin/python3"
_REEXEC_MARK = "BNSTAT_TORCH_REEXEC"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    _TORCH_ERROR = None
except ImportError as e:          # not for this interpreter
    torch = None
    _TORCH_ERROR = "%s: %s" % (sys.executable, e)

if (torch is None and __name__ == "__main__" and not os.environ.get(_REEXEC_MARK)
        and os.path.realpath(sys.executable) != os.path.realpath(SYSTEM_PYTHON)
        and os.access(SYSTEM_PYTHON, os.X_OK)):
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[_REEXEC_MARK] = "1"
    os.execv(SYSTEM_PYTHON, [SYSTEM_PYTHON, os.path.abspath(sys.argv[0])] + sys.argv[1:])

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    _SELENIUM_ERROR = None
except ImportError as e:
    webdriver = None
    _SELENIUM_ERROR = "the selenium module (python3-selenium): %s" % e

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                "clients", "python"))
from bnstat_testlib import Daemon  # noqa: E402

RUN = "dash-run"
STEPS = 60
WAIT = 15.0   # seconds at most for anything the page does


def missing():
    """Why the browser test cannot run here, or None."""
    why = []
    for path, pkg in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            why.append("%s (%s)" % (path, pkg))
    if webdriver is None:
        why.append(_SELENIUM_ERROR)
    if torch is None:
        why.append("PyTorch (%s)" % _TORCH_ERROR)
    return ("needs " + ", ".join(why)) if why else None


if torch is not None:
    class Net(nn.Module):
        """Three conv + BatchNorm2d and one BatchNorm1d: four layers in model order."""

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.stem_bn = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
            self.block_bn = nn.BatchNorm2d(16)
            self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
            self.out_bn = nn.BatchNorm2d(16)
            self.fc = nn.Linear(16, 16, bias=False)
            self.head_bn = nn.BatchNorm1d(16)
            self.cls = nn.Linear(16, 4)

        def forward(self, x):
            x = F.relu(self.stem_bn(self.conv1(x)))
            x = F.relu(self.block_bn(self.conv2(x)))
            x = F.relu(self.out_bn(self.conv3(x)))
            x = F.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.cls(F.relu(self.head_bn(self.fc(x))))

LAYERS = ["stem_bn", "block_bn", "out_bn", "head_bn"]


class Trainer:
    """One worker's model, optimizer and data, trained a few steps at a time."""

    def __init__(self, seed):
        torch.manual_seed(0)
        self.model = Net()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)
        self.g = torch.Generator().manual_seed(seed)
        self.step = 0

    def train(self, client, worker, steps, domain="default", shift=0.0):
        from bnstat import BNStatsReporter
        self.model.train()
        with BNStatsReporter(self.model, client, RUN, worker=worker, domain=domain,
                             start_step=self.step) as rep:
            for _ in range(steps):
                y = torch.randint(0, 4, (16,), generator=self.g)
                x = torch.randn(16, 3, 8, 8, generator=self.g) + y.view(-1, 1, 1, 1) * 0.5
                x = x + 1.0 + shift
                loss = F.cross_entropy(self.model(x), y)
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                rep.step()
                self.step += 1
        return self.step - 1


def make_browser():
    o = webdriver.ChromeOptions()
    o.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--disable-extensions", "--no-first-run",
              "--disable-background-networking", "--disable-component-update"):
        o.add_argument(a)
    o.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(CHROMEDRIVER), options=o)
    drv.set_page_load_timeout(WAIT)
    drv.set_script_timeout(WAIT)
    return drv


def wait_for(what, cond, timeout=WAIT, interval=0.05):
    """cond() until it is true (returned) or timeout seconds have passed (AssertionError)."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(interval)


class BrowserCase(unittest.TestCase):
    """A daemon, a browser and helpers; subclasses fill the daemon."""

    daemon_args = ()

    @classmethod
    def setUpClass(cls):
        why = missing()
        if why:
            raise unittest.SkipTest(why)
        torch.set_num_threads(1)
        cls.d = Daemon("--synchronous", "normal", *cls.daemon_args)
        cls.addClassCleanup(cls.d.close)
        cls.d.start()
        cls.shots = os.environ.get("BNSTAT_SCREENSHOTS") or tempfile.mkdtemp(
            prefix="bnstat-dashboard-")
        os.makedirs(cls.shots, exist_ok=True)
        cls.fill()
        cls.drv = make_browser()
        cls.addClassCleanup(cls.drv.quit)

    def js(self, script, *args):
        return self.drv.execute_script(script, *args)

    def console(self):
        return self.drv.get_log("browser")

    def open(self, fragment):
        """Load the page at #fragment afresh and wait until its view has loaded."""
        self.console()                                 # forget what came before
        self.drv.get("about:blank")
        self.drv.get(self.d.url + "/ui/" + fragment)
        wait_for("the view of %s" % fragment, lambda: self.js("return document.body.dataset.ready"))

    def shot(self, name):
        path = os.path.join(self.shots, name + ".png")
        self.drv.save_screenshot(path)
        return path

    def assertNoConsoleError(self, allowed=()):
        errors = [e["message"] for e in self.console() if e["level"] in ("SEVERE", "ERROR")
                  and not any(a in e["message"] for a in allowed)]
        self.assertEqual(errors, [], "errors in the browser's console")

    def api(self, path, token=None, **params):
        q = urllib.parse.urlencode([(k, v) for k, v in params.items() if v is not None],
                                   doseq=True)
        h = {"Authorization": "Bearer " + token} if token else None
        st, body, _ = self.d.get(path + ("?" + q if q else ""), headers=h)
        self.assertEqual(st, 200, body)
        return body

    def requests_made(self):
        return self.js("return performance.getEntriesByType('resource').map(e => e.name)")


class TestDashboard(BrowserCase):

    @classmethod
    def fill(cls):
        from bnstat import Client
        client = Client(cls.d.url)
        cls.w0, cls.w1 = Trainer(1), Trainer(2)
        cls.w0.train(client, "rank0", STEPS)
        cls.w1.train(client, "rank1", STEPS)
        # the last steps also see batches of another domain (brighter images),
        # from an evaluation worker
        ev = Trainer(4)
        ev.step = STEPS - 8
        ev.train(client, "eval0", 8, domain="shifted", shift=1.5)
        client.snapshot_create(RUN, "final", window="auto")

    def heat_cell(self, row, col):
        """Hover cell (row, col) of the heatmap; the tooltip's layer, step and value."""
        cv = self.drv.find_element(By.ID, "heatmap")
        g = self.js("const c = arguments[0], r = c.getBoundingClientRect();"
                    "return [r.width, r.height, +c.dataset.colWidth, +c.dataset.rowHeight,"
                    " c.width];", cv)
        width, height, cw, rh, pixels = g
        scale = width / pixels
        x = (col + 0.5) * cw * scale - width / 2
        y = (row + 0.5) * rh - height / 2
        ActionChains(self.drv).move_to_element_with_offset(cv, int(round(x)), int(round(y))) \
            .perform()
        tip = wait_for("the tooltip of cell %d,%d" % (row, col), lambda: self.js(
            "const t = document.getElementById('heat-tip');"
            "return t.hidden ? null : [t.dataset.layer, +t.dataset.step, t.dataset.value];"))
        return tip[0], tip[1], (None if tip[2] == "" else float(tip[2]))

    def check_cells(self, drift, metric, cells):
        steps = drift["step"]
        for row, col in cells:
            layer, step, value = self.heat_cell(row, col)
            self.assertEqual(layer, drift["layer_order"][row])
            self.assertEqual(step, steps[col])
            self.assertEqual(value, drift["layers"][layer][metric][col],
                             "%s at step %d" % (layer, step))

    def test_views_load_without_console_errors(self):
        runfrag = "#/run/" + RUN
        checks = [
            ("runs", "#/", "#runs-table tr[data-run='%s']" % RUN),
            ("run", runfrag, "#heatmap[data-rows]"),
            ("channel", runfrag + "/channel", "#mean-plot canvas"),
            ("domains", runfrag + "/domains", "#shift-table tr[data-layer]"),
            ("snapshots", runfrag + "/snapshots", "#snapshots-table tr[data-label='final']"),
        ]
        for name, frag, selector in checks:
            with self.subTest(view=name):
                self.open(frag)
                self.assertEqual(self.js("return document.body.dataset.view"), name)
                self.assertTrue(self.drv.find_elements(By.CSS_SELECTOR, selector), selector)
                self.assertFalse(self.drv.find_element(By.ID, "error").is_displayed(),
                                 self.drv.find_element(By.ID, "error").text)
                # nothing was asked of another host
                for url in self.requests_made():
                    self.assertTrue(url.startswith(self.d.url + "/"), url)
                self.assertNoConsoleError()
                self.assertTrue(os.path.getsize(self.shot(name)) > 0)
        print("screenshots in %s" % self.shots, file=sys.stderr)

    def test_root_redirects_to_the_page(self):
        self.console()
        self.drv.get(self.d.url + "/")
        wait_for("the page", lambda: self.js("return document.body.dataset.ready"))
        self.assertEqual(urllib.parse.urlparse(self.drv.current_url).path, "/ui/")
        self.assertNoConsoleError()

    def test_runs_list(self):
        self.open("#/")
        run = self.api("/v1/runs/" + RUN)
        row = "#runs-table tr[data-run='%s']" % RUN
        # one read of the row (the view redraws it every 2 s), once its bytes are in
        cells, stored = wait_for("the run's bytes", lambda: self.js(
            "const r = document.querySelector(arguments[0]);"
            "const b = r && r.querySelector(\"td[data-field='bytes']\").dataset.value;"
            "return b ? [[...r.querySelectorAll('td')].map(td => td.textContent), +b] : null;",
            row))
        self.assertEqual(cells[0], RUN)
        self.assertEqual(int(cells[1]), run["steps"]["max"])
        self.assertEqual([int(c) for c in cells[2:6]],
                         [len(run["workers"]), len(run["layers"]), len(run["domains"]),
                          run["batches"]])
        self.assertEqual(stored, run["bytes"])
        # a prefix that matches nothing lists nothing
        self.open("#/?prefix=zz")
        self.assertFalse(self.drv.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]"))

    def test_heatmap_rows_hover_and_click(self):
        self.open("#/run/" + RUN)
        cv = self.drv.find_element(By.ID, "heatmap")
        run = self.api("/v1/runs/" + RUN)
        self.assertEqual([l["name"] for l in run["layers"]], LAYERS)
        self.assertEqual(int(cv.get_attribute("data-rows")), len(LAYERS))
        self.assertEqual(self.js("return [...document.querySelectorAll('.heat-label')]"
                                 ".map(e => e.textContent)"), LAYERS)
        width = int(cv.get_attribute("width"))
        drift = self.api("/v1/runs/%s/drift" % RUN, domain="default", ema="worker",
                         window="auto", points=width)
        self.assertEqual(drift["layer_order"], LAYERS)
        self.assertEqual(int(cv.get_attribute("data-cols")), len(drift["step"]))
        n = len(drift["step"])
        self.check_cells(drift, "kl", [(0, 0), (1, n // 2), (3, n - 2), (2, 7)])
        # the per-layer table: /stats' batch noise and batch size, the latest value
        stats = self.api("/v1/runs/%s/stats" % RUN, domain="default", window="auto")
        for layer in LAYERS:
            sel = "#layers-table tr[data-layer='%s'] td[data-field='%%s']" % layer
            got = self.js("return document.querySelector(arguments[0]).dataset.value",
                          sel % "batch_noise")
            self.assertEqual(float(got), stats["layers"][layer]["batch_noise"])
            got = self.js("return document.querySelector(arguments[0]).dataset.value",
                          sel % "batch_size")
            self.assertEqual(float(got), stats["layers"][layer]["batch_size"]["mean"])
        self.assertNoConsoleError()
        # a click opens the channel view at that layer and step
        layer, step, _ = self.heat_cell(1, n // 2)
        ActionChains(self.drv).click().perform()
        wait_for("the channel view", lambda: self.js("return document.body.dataset.view")
                 == "channel")
        frag = urllib.parse.urlparse(self.drv.current_url).fragment
        q = dict(urllib.parse.parse_qsl(frag.split("?", 1)[1]))
        self.assertEqual((q["layer"], int(q["step"])), (layer, step))

    def test_heatmap_other_choices(self):
        # the simulated EMA at momentum 0.05, metric var_err
        self.open("#/run/%s?metric=var_err&ema=sim&momentum=0.05" % RUN)
        width = int(self.drv.find_element(By.ID, "heatmap").get_attribute("width"))
        drift = self.api("/v1/runs/%s/drift" % RUN, domain="default", ema="sim", momentum="0.05",
                         window="auto", points=width)
        self.check_cells(drift, "var_err", [(0, 3), (3, len(drift["step"]) - 1)])
        # rank1's EMA against rank0's
        self.open("#/run/%s?metric=mean_err&ref=worker:rank0&worker=rank1" % RUN)
        drift = self.api("/v1/runs/%s/drift" % RUN, domain="default", ema="worker",
                         precise="worker:rank0", worker="rank1", points=width)
        self.check_cells(drift, "mean_err", [(2, 10), (0, len(drift["step"]) // 3)])
        # the snapshot as the reference
        self.open("#/run/%s?ref=snapshot:final" % RUN)
        drift = self.api("/v1/runs/%s/drift" % RUN, domain="default", ema="worker",
                         precise="snapshot:final", points=width)
        self.check_cells(drift, "kl", [(1, 5)])
        self.assertNoConsoleError()

    def test_channel_points_equal_series(self):
        layer, channel = "block_bn", 3
        self.open("#/run/%s/channel?layer=%s&channel=%d&momenta=0.1,0.01&window=auto"
                  % (RUN, layer, channel))
        self.assertNoConsoleError()
        got = {}
        for g in ("mean", "vari"):
            got[g] = self.js(
                "const g = window.bnstatGraphs[arguments[0]], rows = [];"
                "for (let i = 0; i < g.numRows(); i++) {"
                "  const r = []; for (let j = 0; j < g.numColumns(); j++) r.push(g.getValue(i, j));"
                "  rows.push(r); }"
                "return [g.getLabels(), rows];", g)
        series = [self.api("/v1/runs/%s/series" % RUN, layer=layer, channel=channel,
                           domain="default", window="auto", momentum=m, points=1000)
                  for m in ("0.1", "0.01")]
        a = series[0]
        self.assertEqual(len(a["step"]), STEPS)
        for g, what in (("mean", "mean"), ("vari", "var")):
            labels, rows = got[g]
            self.assertEqual(labels[:3], ["step", "batch", "worker EMA"])
            self.assertEqual(len(rows), len(a["step"]))
            for i, row in enumerate(rows):
                want = [a["step"][i], a["batch_" + what][i], a["ema_" + what][i],
                        series[0]["sim_" + what][i], series[1]["sim_" + what][i],
                        a["precise_" + what][i]]
                self.assertEqual(row, want, "%s row %d" % (what, i))
        # a drag zooms into what is held: nothing is fetched again (every step
        # is held), and the variance follows the mean's range
        asked = len([u for u in self.requests_made() if "/series?" in u])
        plot = self.drv.find_element(By.CSS_SELECTOR, "#mean-plot canvas")
        ActionChains(self.drv).move_to_element_with_offset(plot, -200, 0).click_and_hold() \
            .move_by_offset(200, 0).release().perform()
        lo, hi = wait_for("the zoom", lambda: self.js(
            "const g = window.bnstatGraphs.mean; return g.isZoomed() ? g.xAxisRange() : null"))
        self.assertLess(hi - lo, STEPS / 2)
        self.assertEqual(self.js("return window.bnstatGraphs.vari.xAxisRange()"), [lo, hi])
        self.assertEqual(len([u for u in self.requests_made() if "/series?" in u]), asked)
        self.assertNoConsoleError()

    def test_channel_zoom_fetches_detail_once(self):
        # 20 points for the run's 60 steps: each merges 3; a zoom fetches its range in detail
        layer, channel = "out_bn", 2
        self.open("#/run/%s/channel?layer=%s&channel=%d&momenta=0.1&points=20"
                  % (RUN, layer, channel))
        rows = lambda: self.js(
            "const g = window.bnstatGraphs.mean, rows = [];"
            "for (let i = 0; i < g.numRows(); i++) rows.push([g.getValue(i, 0), g.getValue(i, 1)]);"
            "return rows;")
        coarse = self.api("/v1/runs/%s/series" % RUN, layer=layer, channel=channel,
                          window="auto", momentum="0.1", points=20, domain="default")
        self.assertEqual(coarse["stride"], 3)
        self.assertEqual(rows(), [list(x) for x in zip(coarse["step"], coarse["batch_mean"])])
        plot = self.drv.find_element(By.CSS_SELECTOR, "#mean-plot canvas")
        ActionChains(self.drv).move_to_element_with_offset(plot, -100, 0).click_and_hold() \
            .move_by_offset(250, 0).release().perform()
        detail = wait_for("the zoomed range's request", lambda: [
            dict(urllib.parse.parse_qsl(urllib.parse.urlparse(u).query))
            for u in self.requests_made() if "/series?" in u and "to=" in u])
        self.assertEqual(len(detail), 1, detail)
        lo, hi = int(detail[0]["from"]), int(detail[0]["to"])
        fine = self.api("/v1/runs/%s/series" % RUN, layer=layer, channel=channel, window="auto",
                        momentum="0.1", points=20, domain="default", **{"from": lo, "to": hi})
        self.assertEqual(fine["stride"], 1)
        want = [list(x) for x in zip(fine["step"], fine["batch_mean"])]
        got = wait_for("the detail in the chart", lambda: (lambda r: r if [x for x in r if lo <= x[0] <= hi] == want else None)(rows()))
        # outside the range the coarse points stay
        self.assertEqual([x for x in got if x[0] < lo or x[0] > hi],
                         [list(x) for x in zip(coarse["step"], coarse["batch_mean"])
                          if x[0] < fine["step"][0] or x[0] > fine["step"][-1]])
        self.assertNoConsoleError()

    def test_domains_shift(self):
        self.open("#/run/%s/domains" % RUN)
        doms = self.api("/v1/runs/%s/domains" % RUN)
        self.assertEqual(sorted(d["name"] for d in doms["domains"]), ["default", "shifted"])
        for d in doms["domains"]:
            got = self.js("return document.querySelector(\"#domains-table tr[data-domain='\" + "
                          "arguments[0] + \"'] td[data-field='batches']\").dataset.value",
                          d["name"])
            self.assertEqual(int(got), d["batches"])
        shift = self.api("/v1/runs/%s/shift" % RUN, source="default", target="shifted",
                         window="auto")
        for layer in LAYERS:
            for m in ("mean_err", "var_err", "kl"):
                got = self.js("return document.querySelector(\"#shift-table tr[data-layer='\" +"
                              " arguments[0] + \"'] td[data-field='\" + arguments[1] + \"']\")"
                              ".dataset.value", layer, m)
                self.assertEqual(float(got), shift["layers"][layer][m])
        self.assertNoConsoleError()

    def test_snapshot_downloads(self):
        self.open("#/run/%s/snapshots" % RUN)
        self.js("window.__saved = []; const orig = URL.createObjectURL;"
                "URL.createObjectURL = (b) => { window.__saved.push([b.type, b.size]);"
                " return orig(b); };")
        for cls in ("dl-json", "dl-st"):
            self.drv.find_element(By.CSS_SELECTOR,
                                  "tr[data-label='final'] button." + cls).click()
        saved = wait_for("two downloads", lambda: (lambda s: s if len(s) == 2 else None)(
            self.js("return window.__saved")))
        self.assertEqual(saved[0][0], "application/json")
        self.assertEqual(saved[1][0], "application/octet-stream")
        snap = self.api("/v1/runs/%s/snapshots/final" % RUN)
        self.assertEqual(set(snap["layers"]), set(LAYERS))
        urls = self.requests_made()
        self.assertTrue(any(u.endswith("/snapshots/final?format=safetensors") for u in urls), urls)
        self.assertNoConsoleError()

    def test_zz_live_follow(self):
        from bnstat import Client
        client = Client(self.d.url)
        for view, frag, last_sel in (
                ("run", "#/run/" + RUN, "run-summary"),
                ("channel", "#/run/%s/channel?layer=out_bn&channel=1" % RUN, "series-info")):
            with self.subTest(view=view):
                self.open(frag)
                before = int(self.js("return document.getElementById(arguments[0])"
                                     ".dataset.lastStep", last_sel))
                last = self.w0.train(client, "rank0", 3)
                self.assertGreater(last, before)
                wait_for("the %s view to show step %d" % (view, last), lambda: self.js(
                    "return document.getElementById(arguments[0]).dataset.lastStep",
                    last_sel) == str(last))
                what = "drift" if view == "run" else "series"
                asked = [u for u in self.requests_made() if "/%s?" % what in u]
                q = [dict(urllib.parse.parse_qsl(urllib.parse.urlparse(u).query)) for u in asked]
                # the whole run once (per momentum for /series), then only what is new
                whole = [x for x in q if "from" not in x]
                self.assertEqual(len(whole), 1 if view == "run" else 2, q)
                self.assertEqual(q[:len(whole)], whole)
                for m in set(x.get("momentum") for x in q):   # one request per momentum
                    after = [int(x["from"]) for x in q[len(whole):] if x.get("momentum") == m]
                    self.assertTrue(after, "nothing asked after the first load")
                    self.assertEqual(after[0], before + 1, q)
                    self.assertEqual(after, sorted(set(after)), q)
                self.assertNoConsoleError()


class TestDashboardTokens(BrowserCase):
    READ = "read-" + "5" * 20
    ADMIN = "admin-" + "7" * 20

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="bnstat-dash-tok-")
        path = os.path.join(cls.tmp, "tokens")
        with open(path, "w") as f:
            f.write("%s read\n%s admin\n" % (cls.READ, cls.ADMIN))
        cls.daemon_args = ("--token-file", path)
        super().setUpClass()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def fill(cls):
        from bnstat import Client
        Trainer(3).train(Client(cls.d.url, token=cls.ADMIN), "rank0", 10)

    def give_token(self, token):
        before = self.js("return document.body.dataset.ready")
        box = self.drv.find_element(By.ID, "token-input")
        box.clear()
        box.send_keys(token)
        self.drv.find_element(By.ID, "token-submit").click()
        wait_for("the view again", lambda: self.js("return document.body.dataset.ready")
                 != before)

    def test_refused_until_a_token_is_given(self):
        self.open("#/")
        err = self.drv.find_element(By.ID, "error")
        self.assertTrue(err.is_displayed())
        self.assertEqual(err.get_attribute("data-status"), "401")
        self.assertIn("asks for a token", err.text)
        self.assertTrue(self.drv.find_element(By.ID, "token-box").is_displayed())
        self.assertFalse(self.drv.find_elements(By.CSS_SELECTOR, "#runs-table tr[data-run]"))
        self.assertNoConsoleError(allowed=("401",))
        self.shot("token-asked")
        self.give_token(self.READ)
        wait_for("the run listed", lambda: self.drv.find_elements(
            By.CSS_SELECTOR, "#runs-table tr[data-run='%s']" % RUN))
        self.assertFalse(self.drv.find_element(By.ID, "error").is_displayed())
        # the token is in the tab's sessionStorage, never in a URL
        self.assertEqual(self.js("return sessionStorage.getItem('bnstat.token')"), self.READ)
        for url in self.requests_made():
            self.assertNotIn(self.READ, url)
        self.assertNotIn(self.READ, self.drv.current_url)
        # the same tab keeps it: another view needs no new token
        self.drv.get(self.d.url + "/ui/#/run/" + RUN)
        wait_for("the run view", lambda: self.js("return document.body.dataset.ready"))
        self.assertFalse(self.drv.find_element(By.ID, "error").is_displayed())
        self.assertNoConsoleError(allowed=("401",))

        # a snapshot needs the admin role: 403 in words, then the admin token
        self.open("#/run/%s/snapshots" % RUN)
        self.drv.find_element(By.ID, "snap-label").send_keys("by-ui")
        self.drv.find_element(By.ID, "snap-create").click()
        status = wait_for("the refusal", lambda: self.js(
            "return document.getElementById('snapshot-status').dataset.status"))
        self.assertEqual(status, "403")
        self.assertIn("may not do this (403)",
                      self.drv.find_element(By.ID, "snapshot-status").text)
        self.assertNoConsoleError(allowed=("403",))
        self.js("sessionStorage.setItem('bnstat.token', arguments[0])", self.ADMIN)
        self.open("#/run/%s/snapshots" % RUN)
        self.drv.find_element(By.ID, "snap-label").send_keys("by-ui")
        self.drv.find_element(By.ID, "snap-create").click()
        wait_for("the snapshot stored", lambda: self.js(
            "return document.getElementById('snapshot-status').dataset.created") == "by-ui")
        snap = self.api("/v1/runs/%s/snapshots/by-ui" % RUN, token=self.READ)
        self.assertEqual(set(snap["layers"]), set(LAYERS))
        self.assertNoConsoleError()


if __name__ == "__main__":
    unittest.main()
