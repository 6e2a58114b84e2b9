"""A cluster on one machine (docs/OPERATIONS.md, "A cluster"): deploy/cluster/up
starts three nodes and nginx in front; every request naming a run goes to
the node that owns it.

  * 30 runs, three workers each, uploaded through the front by six client
    threads: every run's answers are those of a single node fed the same
    batches in the same order per run (byte for byte but for created_ms);
  * the runs are spread over all three nodes, each run on one node only;
  * GET /v1/runs through the front is the single node's list, page by page;
  * /metrics on the front is a JSON 404;
  * export/import moves a run from one node to another with the same answers;
  * a node killed: the other nodes' runs are served as before, the list
    names it in "unavailable", and its runs get a JSON 503 with Retry-After,
    an upload included, which is stored nowhere.

Skipped (with the reason) only when nginx or its njs module is missing.
"""

import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
import unittest

from bnstat_testlib import Daemon, TestCaseMixin, get, request, request_raw, with_query

HERE = os.path.dirname(os.path.abspath(__file__))
CLUSTER = os.path.join(HERE, "..", "..", "deploy", "cluster")
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
NJS = os.environ.get("NJS_MODULE", "/usr/lib/nginx/modules/ngx_http_js_module.so")

RUNS = ["run-%02d" % i for i in range(30)]
WORKERS = ("w0", "w1", "w2")
STEPS = 6
LAYERS = (("stem.bn", 3), ("head.bn", 2))
CLIENTS = 6
NODE_ARGS = ("--history-full-steps", "3")   # some buckets too


def make_doc(rng, run_i, worker, step):
    layers = {}
    for name, c in LAYERS:
        layers[name] = {"count": rng.choice([4, 8]),
                        "mean": [rng.gauss(run_i, 1.0) for _ in range(c)],
                        "var": [rng.uniform(0.5, 2.0) for _ in range(c)],
                        "ema_mean": [rng.gauss(run_i, 1.0) for _ in range(c)],
                        "ema_var": [rng.uniform(0.5, 2.0) for _ in range(c)]}
    return {"worker": worker, "step": step, "seq": 0, "layers": layers}


def batches():
    """Per run, its batches in the order they are uploaded."""
    rng = random.Random(1616)
    return {run: [make_doc(rng, i, w, step) for step in range(1, STEPS + 1) for w in WORKERS]
            for i, run in enumerate(RUNS)}


def reads(run):
    base = "/v1/runs/" + run
    return [(base + "/stats", None), (base + "/stats", {"window": 4}),
            (base + "/compare", None), (base + "/compare", {"ema": "sim", "momentum": "0.1"}),
            (base + "/series", {"layer": "stem.bn", "channel": 2}),
            (base + "/drift", {"points": 1000}), (base + "/domains", None)]


def strip_created(doc):
    if isinstance(doc, dict):
        return {k: strip_created(v) for k, v in doc.items() if k not in ("created_ms", "created")}
    if isinstance(doc, list):
        return [strip_created(v) for v in doc]
    return doc


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class TestCluster(TestCaseMixin, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        if not os.access(NGINX, os.X_OK):
            raise unittest.SkipTest("nginx is not installed (%s): apt-get install nginx-light"
                                    % NGINX)
        if not os.path.exists(NJS):
            raise unittest.SkipTest("nginx's njs module is not installed (%s): apt-get install "
                                    "libnginx-mod-http-js" % NJS)
        cls.deadline = time.monotonic() + 80
        cls.dir = tempfile.mkdtemp(prefix="bnstat-cluster-")
        cls.addClassCleanup(shutil.rmtree, cls.dir, True)
        cls.addClassCleanup(cls.down)
        for attempt in range(3):   # the free port may be taken in between
            cls.port = free_port()
            r = subprocess.run([os.path.join(CLUSTER, "up"), "3", str(cls.port), cls.dir, "--"]
                               + list(NODE_ARGS), capture_output=True, text=True, timeout=60)
            if r.returncode == 0:
                break
            cls.down()
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "http://127.0.0.1:%d" % cls.port, r.stdout
        cls.nodes = {}
        with open(os.path.join(cls.dir, "nodes")) as f:
            for line in f:
                name, addr = line.split()
                cls.nodes[name] = int(addr.rsplit(":", 1)[1])
        for k in (1, 2, 3):
            assert os.path.exists(os.path.join(cls.dir, "node-%d.pid" % k))
        assert os.path.exists(os.path.join(cls.dir, "nginx.pid"))

        cls.ref = Daemon(*NODE_ARGS)
        cls.addClassCleanup(cls.ref.close)
        cls.ref.start()
        cls.docs = batches()
        for run in RUNS:
            for doc in cls.docs[run]:
                st, body, _ = cls.ref.post_batch(run, doc)
                assert st == 200, body

        # several clients at once, each run's batches in its order
        errors = []

        def client(runs):
            try:
                for run in runs:
                    for doc in cls.docs[run]:
                        st, body, _ = request(cls.port, "POST", "/v1/runs/%s/batches" % run,
                                              json.dumps(doc),
                                              {"Content-Type": "application/json"})
                        if st != 200:
                            errors.append((run, st, body))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(RUNS[i::CLIENTS],))
                   for i in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors, errors[:3]
        cls.owner = {}
        for name, port in cls.nodes.items():
            st, doc, _ = get(port, "/v1/runs")
            assert st == 200, doc
            for r in doc["runs"]:
                assert r["name"] not in cls.owner, "%s on two nodes" % r["name"]
                cls.owner[r["name"]] = name
        # the drift metrics and buckets of both sides settled
        for run in RUNS:
            cls.wait_same(run)

    @classmethod
    def down(cls):
        subprocess.run([os.path.join(CLUSTER, "down"), cls.dir], capture_output=True,
                       timeout=60)

    @classmethod
    def wait_same(cls, run, port=None):
        port = port or cls.port
        while True:
            a = strip_created(get(port, "/v1/runs/" + run)[1])
            b = strip_created(cls.ref.get("/v1/runs/" + run)[1])
            if a == b:
                return
            if time.monotonic() > cls.deadline:
                raise AssertionError("%s: %r != %r" % (run, a, b))
            time.sleep(0.05)

    def raw(self, port, path, params=None):
        st, raw, _ = request_raw(port, "GET", with_query(path, params))
        return st, raw

    def assert_same(self, run, port=None):
        port = port or self.port
        for path, params in reads(run):
            want = self.raw(self.ref.port, path, params)
            got = self.raw(port, path, params)
            self.assertEqual(want[0], 200, (path, params, want[1][:200]))
            self.assertEqual(got, want, "%s %r" % (path, params))

    def test_1_answers_equal_a_single_node(self):
        for run in RUNS:
            with self.subTest(run=run):
                self.assert_same(run)

    def test_1_spread_over_every_node(self):
        self.assertEqual(sorted(self.owner), RUNS)
        counts = {n: list(self.owner.values()).count(n) for n in self.nodes}
        self.assertTrue(all(c > 0 for c in counts.values()), counts)

    def test_1_list_and_pages(self):
        st, doc, _ = get(self.port, "/v1/runs")
        self.assertEqual(st, 200)
        want = self.ref.get("/v1/runs")[1]
        self.assertEqual(strip_created(doc), strip_created(want))
        for params in ({"limit": 7}, {"limit": 4, "prefix": "run-1"}, {"limit": 30}):
            pages, ref_pages, after = [], [], None
            for walk, out in ((lambda p: get(self.port, "/v1/runs", p)[1], pages),
                              (lambda p: self.ref.get("/v1/runs", p)[1], ref_pages)):
                after = None
                for _ in range(20):
                    p = dict(params, **({"after": after} if after else {}))
                    page = walk(p)
                    out.append(strip_created(page))
                    after = page.get("next")
                    if after is None:
                        break
            self.assertEqual(pages, ref_pages, params)
        st, doc, _ = get(self.port, "/v1/runs", {"limit": 0})
        self.assertError((st, doc, {}), 422, "invalid_value", "limit", what="limit=0")

    def test_1_snapshots_and_delete_through_the_front(self):
        run = RUNS[-1]
        ctype = {"Content-Type": "application/json"}
        body = json.dumps({"label": "eval", "window": 4})
        st, front, _ = request(self.port, "POST", "/v1/runs/%s/snapshots" % run, body, ctype)
        self.assertEqual(st, 201, front)
        st, ref, _ = self.ref.request("POST", "/v1/runs/%s/snapshots" % run, body, ctype)
        self.assertEqual(st, 201, ref)
        self.assertEqual(strip_created(front), strip_created(ref))
        for params in (None, {"format": "safetensors", "dtype": "f64"}):
            st, raw = self.raw(self.port, "/v1/runs/%s/snapshots/eval" % run, params)
            self.assertEqual(st, 200)
            want = self.raw(self.ref.port, "/v1/runs/%s/snapshots/eval" % run, params)[1]
            if params:   # the tensors; the header holds the creation time
                n, m = (struct.unpack("<Q", x[:8])[0] for x in (raw, want))
                self.assertEqual(raw[8 + n:], want[8 + m:])
            else:
                self.assertEqual(strip_created(json.loads(raw)), strip_created(json.loads(want)))
        st, _, _ = request(self.port, "DELETE", "/v1/runs/%s/snapshots/eval" % run)
        self.assertEqual(st, 204)
        # a run deleted through the front is gone from its node
        st, body, _ = request(self.port, "POST", "/v1/runs/gone/batches",
                              json.dumps(make_doc(random.Random(2), 0, "w0", 1)), ctype)
        self.assertEqual(st, 200, body)
        st, body, _ = request(self.port, "DELETE", "/v1/runs/gone")
        self.assertEqual((st, body), (200, {"run": "gone", "deleted": True}))
        for port in self.nodes.values():
            self.assertEqual(get(port, "/v1/runs/gone")[0], 404)

    def test_1_dashboard_through_the_front(self):
        # the page and its assets name no run: any live node serves them, as one node does
        st, _, hdrs = request_raw(self.port, "GET", "/")
        self.assertEqual(st, 302)
        self.assertEqual(hdrs["Location"], "/ui/")
        for path in ("/ui/", "/ui/app.js", "/ui/vendor/dygraphs/dygraph.min.js"):
            want = request_raw(self.ref.port, "GET", path)
            got = request_raw(self.port, "GET", path)
            self.assertEqual(want[0], 200, path)
            self.assertEqual((got[0], got[1]), (want[0], want[1]), path)
            self.assertEqual(got[2]["Content-Security-Policy"],
                             want[2]["Content-Security-Policy"], path)
            self.assertEqual(got[2]["Content-Type"], want[2]["Content-Type"], path)
        st, _, _ = request_raw(self.port, "GET", "/ui/nowhere.js")
        self.assertEqual(st, 404)

    def test_1_metrics_on_the_front(self):
        st, doc, hdrs = get(self.port, "/metrics")
        self.assertError((st, doc, hdrs), 404, "not_found", what="front /metrics")
        self.assertIn("scrape", doc["error"]["message"])
        st, text = self.raw(self.nodes["node-1"], "/metrics")
        self.assertEqual(st, 200)

    def test_2_move_a_run(self):
        # from node-1 to node-3; test_3 kills node-2
        run = next(r for r in RUNS if self.owner[r] == "node-1")
        src, dst = "node-1", "node-3"
        type(self).moved = run
        st, raw = self.raw(self.nodes[src], "/v1/runs/%s/export" % run)
        self.assertEqual(st, 200)
        before = {(p, json.dumps(q)): self.raw(self.nodes[src], p, q) for p, q in reads(run)}
        before["run"] = self.raw(self.nodes[src], "/v1/runs/" + run)
        st, body, _ = request(self.nodes[dst], "POST", "/v1/runs/%s/import" % run, raw,
                              {"Content-Type": "application/json"})
        self.assertEqual(st, 201, body)
        st, body, _ = request(self.nodes[dst], "POST", "/v1/runs/%s/import" % run, raw,
                              {"Content-Type": "application/json"})
        self.assertError((st, body, {}), 409, "conflict", what="a second import")
        deadline = time.monotonic() + 20
        while self.raw(self.nodes[dst], "/v1/runs/" + run) != before["run"]:
            self.assertLess(time.monotonic(), deadline, "the moved run's drift metrics")
            time.sleep(0.05)
        after = {(p, json.dumps(q)): self.raw(self.nodes[dst], p, q) for p, q in reads(run)}
        after["run"] = self.raw(self.nodes[dst], "/v1/runs/" + run)
        self.assertEqual(after, before)
        # the old copy goes; the import stays a copy on a node the hash does not name
        st, body, _ = request(self.nodes[src], "DELETE", "/v1/runs/" + run)
        self.assertEqual(st, 200, body)

    def test_3_a_node_down(self):
        victim = "node-2"
        with open(os.path.join(self.dir, "%s.pid" % victim)) as f:
            pid = int(f.read())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.nodes[victim]), 0.5).close()
            except OSError:
                break
            self.assertLess(time.monotonic(), deadline, "the killed node still listens")
            time.sleep(0.05)
        moved = getattr(self, "moved", None)   # on node-3 now, where the front does not look
        lost = sorted(r for r, n in self.owner.items() if n == victim)
        kept = sorted(r for r, n in self.owner.items() if n != victim and r != moved)
        for run in kept:
            with self.subTest(run=run):
                self.assert_same(run)
        st, doc, _ = get(self.port, "/v1/runs")
        self.assertEqual(st, 200, doc)
        self.assertEqual(doc.get("unavailable"), [victim])
        self.assertEqual([r["name"] for r in doc["runs"]],
                         sorted(r for r, n in self.owner.items() if n != victim))
        for run in lost:
            for method, path, body in (("GET", "/v1/runs/%s/stats" % run, None),
                                       ("GET", "/v1/runs/%s" % run, None),
                                       ("POST", "/v1/runs/%s/batches" % run,
                                        json.dumps(make_doc(random.Random(3), 0, "w9", 99)))):
                with self.subTest(run=run, method=method, path=path):
                    st, reply, hdrs = request(self.port, method, path, body,
                                              {"Content-Type": "application/json"})
                    self.assertError((st, reply, hdrs), 503, "unavailable",
                                     what="%s %s on a down node" % (method, path))
                    self.assertTrue(hdrs.get("Retry-After"), "503 without Retry-After")
        # the refused uploads were not stored on another node
        for name, port in self.nodes.items():
            if name == victim:
                continue
            st, doc, _ = get(port, "/v1/runs")
            self.assertFalse(set(r["name"] for r in doc["runs"]) & set(lost),
                             "a down node's run was stored on %s" % name)


    def test_4_no_open_front_without_tokens(self):
        d = tempfile.mkdtemp(prefix="bnstat-cluster-open-")
        self.addCleanup(shutil.rmtree, d, True)
        r = subprocess.run([os.path.join(CLUSTER, "up"), "1", str(free_port()), d,
                            "--host", "0.0.0.0"], capture_output=True, text=True, timeout=30)
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("token-file", r.stderr)
        self.assertEqual([f for f in os.listdir(d) if f.endswith(".pid")], [])

    def test_4_tokens_through_the_front(self):
        d = tempfile.mkdtemp(prefix="bnstat-cluster-tok-")
        self.addCleanup(shutil.rmtree, d, True)
        tok = "front-admin-%016x" % random.Random().getrandbits(64)
        with open(os.path.join(d, "tokens"), "w") as f:
            f.write("%s admin\n" % tok)
        port = free_port()
        r = subprocess.run([os.path.join(CLUSTER, "up"), "2", str(port), os.path.join(d, "c"),
                            "--token-file", os.path.join(d, "tokens")],
                           capture_output=True, text=True, timeout=60)
        self.addCleanup(subprocess.run, [os.path.join(CLUSTER, "down"), os.path.join(d, "c")],
                        capture_output=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.dumps(make_doc(random.Random(1), 0, "w0", 1))
        ctype = {"Content-Type": "application/json"}
        st, body, hdrs = request(port, "POST", "/v1/runs/t/batches", doc, ctype)
        self.assertError((st, body, hdrs), 401, "unauthorized", what="no token via the front")
        auth = dict(ctype, Authorization="Bearer " + tok)
        st, body, _ = request(port, "POST", "/v1/runs/t/batches", doc, auth)
        self.assertEqual(st, 200, body)
        for path in ("/v1/runs", "/v1/runs/t/stats"):
            st, body, hdrs = get(port, path)
            self.assertError((st, body, hdrs), 401, "unauthorized", what=path + " no token")
            self.assertTrue((hdrs.get("WWW-Authenticate") or "").startswith("Bearer"), path)
            st, body, _ = get(port, path, headers=auth)
            self.assertEqual(st, 200, body)
        for log in ("access.log", "error.log", "node-1.log", "node-2.log"):
            with open(os.path.join(d, "c", log), errors="replace") as f:
                self.assertNotIn(tok, f.read(), "the token is in " + log)

    def test_4_unit_refuses_open_listen_without_tokens(self):
        unit = os.path.join(CLUSTER, "bnstatd@.service")
        with open(unit) as f:
            pre = [line.split("=", 1)[1].strip() for line in f
                   if line.startswith("ExecStartPre=")]
        self.assertEqual(len(pre), 1)
        self.assertTrue(pre[0].startswith("/bin/sh -c '") and pre[0].endswith("'"))
        d = tempfile.mkdtemp(prefix="bnstat-unit-")
        self.addCleanup(shutil.rmtree, d, True)
        script = (pre[0][len("/bin/sh -c '"):-1].replace("$$", "$")
                  .replace("/etc/bnstat/%i.conf", os.path.join(d, "n.conf")))
        for conf, ok in (("", True), ("listen = 127.0.0.1:9000\n", True),
                         ("listen = [::1]:9000\n", True),
                         ("listen = 10.0.0.5:8650\n", False),
                         ("listen = 0.0.0.0:8650\ntoken-file = /etc/bnstat/tokens\n", True),
                         ("listen = 127.0.0.1:1\nlisten = 0.0.0.0:8650\n", False)):
            with self.subTest(conf=conf):
                with open(os.path.join(d, "n.conf"), "w") as f:
                    f.write(conf)
                r = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True)
                self.assertEqual(r.returncode == 0, ok, r.stderr)


if __name__ == "__main__":
    unittest.main()
