"""Hostile clients must not take the service down (docs/OPERATIONS.md,
"Limits and hostile clients"):

  * a request whose headers trickle in is closed at header-timeout, and a
    body that trickles in below body-min-rate is closed too;
  * 1,100 trickling connections from five addresses that reconnect when
    closed leave /healthz answering a sixth address within 2 s;
  * request bodies in flight stay within body-memory-max: a new upload past
    it gets 503 with Retry-After before its body is read, and the daemon's
    RSS stays under the budget plus a fixed overhead;
  * a chunked upload that goes on past max-body is cut off within a margin
    of 1 MiB (the connection is closed: libmicrohttpd 0.9.75 cannot send a
    reply before the upload ends);
  * a request with 1,000 query parameters, a long URL or large headers gets a
    JSON 414/431 at once.

Every client connects to 127.0.0.1 only; several source addresses come from
binding client sockets to 127.0.0.2, 127.0.0.3, ... Every wait is bounded.
"""

import json
import os
import selectors
import socket
import time
import unittest

from bnstat_testlib import BNSTATD, Daemon, TestCaseMixin, instrumented

MiB = 1 << 20


def connect(port, src="127.0.0.1", timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def read_reply(s, timeout):
    """(status, headers dict, body bytes) of one reply on s; None if the
    connection closes or times out before a whole reply arrives."""
    s.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        want = int(headers.get("content-length", "0"))
        while len(body) < want:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(lines[0].split()[1]), headers, body
    except (socket.timeout, ConnectionError):
        return None


def closed_by_peer(s, timeout):
    """True once the peer closes s (EOF or reset) within timeout seconds."""
    s.settimeout(timeout)
    try:
        while True:
            if not s.recv(65536):
                return True
    except ConnectionError:
        return True
    except socket.timeout:
        return False


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pid)


def healthz(port, src, timeout):
    """Seconds /healthz took from source address src, or None past timeout."""
    t0 = time.monotonic()
    try:
        s = connect(port, src, timeout)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        r = read_reply(s, max(0.01, timeout - (time.monotonic() - t0)))
        s.close()
    except OSError:
        return None
    if r is None or r[0] != 200:
        return None
    return time.monotonic() - t0


class Tricklers:
    """n connections spread over source addresses srcs, each sending one
    byte of an endless request header every `every` seconds and opened
    again (at most every `every` seconds) once the server closes it."""

    REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Trickle: " + b"a" * 100000

    def __init__(self, port, srcs, n, every=1.0):
        self.port, self.srcs, self.every = port, srcs, every
        self.sel = selectors.DefaultSelector()
        self.slots = [None] * n          # [socket, bytes sent, next send, src]
        self.next_open = [0.0] * n
        self.closed_by_server = 0
        self.opened = 0

    def _open(self, i, now):
        src = self.srcs[i % len(self.srcs)]
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((src, 0))
        s.connect_ex(("127.0.0.1", self.port))
        self.slots[i] = [s, 0, now + self.every * (i % 10) / 10, src]
        self.sel.register(s, selectors.EVENT_READ, i)
        self.opened += 1

    def _drop(self, i, now):
        s = self.slots[i][0]
        self.sel.unregister(s)
        s.close()
        self.slots[i] = None
        self.next_open[i] = now + self.every
        self.closed_by_server += 1

    def step(self, seconds):
        """Drive every connection for `seconds`."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if now >= end:
                return
            for i, slot in enumerate(self.slots):
                if slot is None:
                    if now >= self.next_open[i]:
                        self._open(i, now)
                elif now >= slot[2]:
                    try:
                        slot[0].send(self.REQUEST[slot[1]:slot[1] + 1])
                        slot[1] += 1
                    except BlockingIOError:
                        pass
                    except OSError:
                        self._drop(i, now)
                        continue
                    slot[2] = now + self.every
            for key, _ in self.sel.select(timeout=min(0.05, max(0.0, end - now))):
                i = key.data
                try:
                    data = key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(i, time.monotonic())

    def close(self):
        for slot in self.slots:
            if slot is not None:
                slot[0].close()
        self.sel.close()


class Deadlines(TestCaseMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon("--header-timeout", "2", "--body-min-rate", "1000", "--timeout", "60")
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def test_trickled_headers_are_closed_at_the_deadline(self):
        s = connect(self.d.port)
        t0 = time.monotonic()
        closed = False
        # one byte every 0.5 s: never idle for `timeout`, never done
        for i in range(20):
            try:
                s.send(b"GET /healthz HTTP/1.1\r\nX-A: aaaaaaaaaaaaaaaaaaaaaaa"[i:i + 1])
            except OSError:
                closed = True
                break
            if closed_by_peer(s, 0.5):
                closed = True
                break
        took = time.monotonic() - t0
        s.close()
        self.assertTrue(closed, "a trickling request was still open after %.1f s" % took)
        self.assertLess(took, 2 + 1.5, "closed after %.1f s, header-timeout is 2" % took)
        self.d.wait_log(r"event=connections_closed .*header_timeout=[1-9]")

    def test_trickled_body_is_closed_below_the_minimum_rate(self):
        s = connect(self.d.port)
        s.sendall(b"POST /v1/runs/slow/batches HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n")
        t0 = time.monotonic()
        closed = False
        for _ in range(40):          # 10 bytes every 0.25 s: 40 B/s, below 1000
            try:
                s.send(b" " * 10)
            except OSError:
                closed = True
                break
            if closed_by_peer(s, 0.25):
                closed = True
                break
        took = time.monotonic() - t0
        s.close()
        self.assertTrue(closed, "a body at 40 B/s was still read after %.1f s" % took)
        self.assertLess(took, 2 + 1.5, "closed after %.1f s" % took)
        self.d.wait_log(r"event=connections_closed .*body_too_slow=[1-9]")

    def test_a_prompt_request_is_not_cut(self):
        # a whole request in one go, and an idle keep-alive past header-timeout
        s = connect(self.d.port)
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_reply(s, 5)[0], 200)
        self.assertFalse(closed_by_peer(s, 3.0), "an idle keep-alive was closed early")
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertEqual(read_reply(s, 5)[0], 200)
        s.close()


class Slowloris(unittest.TestCase):
    """The defaults, 1,100 trickling connections from five addresses."""

    def test_healthz_answers_a_sixth_address(self):
        d = Daemon()
        d.start()
        t = Tricklers(d.port, ["127.0.0.%d" % i for i in range(2, 7)], 1100)
        try:
            t.step(2.0)                # all of them opened and trickling
            worst = 0.0
            end = time.monotonic() + 12.0   # past the default header-timeout (10 s)
            while time.monotonic() < end:
                took = healthz(d.port, "127.0.0.7", 2.0)
                self.assertIsNotNone(took, "/healthz from a sixth address did not answer "
                                     "within 2 s under %d trickling connections"
                                     % len(t.slots))
                worst = max(worst, took)
                t.step(0.5)
            # the deadline closed the trickling connections that had a slot
            self.assertGreater(t.closed_by_server, 1100, (t.closed_by_server, t.opened))
            d.wait_log(r"event=connections_closed header_timeout=[1-9]", timeout=5)
        finally:
            t.close()
            d.close()
        print("slowloris: worst /healthz %.3f s, %d connections opened, %d closed by the "
              "server" % (worst, t.opened, t.closed_by_server))


    def test_slots_kept_for_quiet_addresses(self):
        # no per-address limit: one address tries to take all 64 slots
        d = Daemon("--max-connections", "64", "--max-connections-per-ip", "0")
        d.start()
        t = Tricklers(d.port, ["127.0.0.2"], 100)
        try:
            t.step(1.5)
            for _ in range(3):
                took = healthz(d.port, "127.0.0.3", 2.0)
                self.assertIsNotNone(took, "/healthz from another address did not answer "
                                     "within 2 s with one address holding the slots")
                t.step(0.3)
            d.wait_log(r"event=connections_refused reason=reserve refused=[1-9]")
        finally:
            t.close()
            d.close()


class BodyMemory(TestCaseMixin, unittest.TestCase):
    def test_uploads_past_the_budget_get_503_before_their_body(self):
        body_max = 8 * MiB
        budget = 3 * body_max + 4096    # three bodies (and their NULs), not four
        d = Daemon("--max-body", str(body_max), "--body-memory-max", str(budget))
        d.start()
        held = []
        try:
            base = rss_bytes(d.proc.pid)
            head = (b"POST /v1/runs/big/batches HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % body_max)
            # three bodies of 8 MiB less a byte, sent and stalled: the budget is full
            for _ in range(3):
                s = connect(d.port, timeout=10)
                s.sendall(head + b" " * (body_max - 1))
                held.append(s)
            s = connect(d.port)
            s.sendall(head)          # no body: the refusal must come before it
            r = read_reply(s, 5)
            s.close()
            self.assertIsNotNone(r, "no reply to an upload past body-memory-max")
            status, headers, body = r
            self.assertEqual(status, 503, body)
            self.assertEqual(headers.get("retry-after"), "1")
            self.assertEqual(json.loads(body)["error"]["code"], "unavailable")
            grown = rss_bytes(d.proc.pid) - base
            if not instrumented(BNSTATD):   # shadow memory is no measure of ours
                self.assertLess(grown, budget + 16 * MiB, "RSS grew by %d MiB" % (grown >> 20))
            # a finished (here: abandoned) upload gives its share back
            held.pop().close()
            end = time.monotonic() + 10
            while True:
                s = connect(d.port)
                s.sendall(head)
                r = read_reply(s, 0.5)  # an accepted upload waits for its body
                s.close()
                if r is None:
                    break
                self.assertEqual(r[0], 503)
                self.assertLess(time.monotonic(), end, "the budget was never given back")
            print("body-memory: RSS %d MiB over the idle daemon with %d MiB of bodies held"
                  % (grown >> 20, (3 * body_max) >> 20))
        finally:
            for s in held:
                s.close()
            d.close()


class OversizedChunked(TestCaseMixin, unittest.TestCase):
    def test_chunked_upload_is_cut_off_past_max_body(self):
        d = Daemon("--max-body", "65536")
        d.start()
        try:
            s = connect(d.port)
            s.sendall(b"POST /v1/runs/e/batches HTTP/1.1\r\nHost: x\r\n"
                      b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n%s\r\n" % (4096, b"y" * 4096)
            sent, t0, cut = 0, time.monotonic(), False
            s.settimeout(0.5)
            while time.monotonic() - t0 < 5.0:
                try:
                    sent += s.send(chunk)
                except (socket.timeout, BlockingIOError):
                    if closed_by_peer(s, 0.1):
                        cut = True
                        break
                except OSError:
                    cut = True
                    break
            took = time.monotonic() - t0
            s.close()
            self.assertTrue(cut, "%d MiB sent in %.1f s and still read" % (sent >> 20, took))
            self.assertLess(sent, 32 * MiB, "%d bytes were taken before the cut" % sent)
            d.wait_log(r"event=upload_too_large .*limit=65536")
            print("chunked: cut after %.2f s, %d KiB sent (kernel buffers included)"
                  % (took, sent >> 10))
        finally:
            d.close()


class RequestSize(TestCaseMixin, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.d = Daemon()
        cls.d.start()

    @classmethod
    def tearDownClass(cls):
        cls.d.close()

    def exchange(self, request):
        s = connect(self.d.port)
        s.sendall(request)
        r = read_reply(s, 2.0)
        s.close()
        self.assertIsNotNone(r, "no reply within 2 s to %r..." % request[:60])
        return r[0], json.loads(r[2]), r[1]

    def test_many_query_parameters(self):
        for n in (65, 1000, 1500):
            q = "&".join("p%d=1" % i for i in range(n)).encode()
            r = self.exchange(b"GET /v1/runs/r/stats?" + q + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            self.assertError(r, 414, "uri_too_long", what="%d parameters" % n)
        # 64 are still parsed (and refused one by one as unknown parameters)
        q = "&".join("p%d=1" % i for i in range(64)).encode()
        st = self.exchange(b"GET /v1/runs/r/stats?" + q + b" HTTP/1.1\r\nHost: x\r\n\r\n")[0]
        self.assertNotIn(st, (414, 431))

    def test_long_url_and_large_headers(self):
        r = self.exchange(b"GET /v1/runs/r/stats?x=" + b"a" * 60000 + b" HTTP/1.1\r\n\r\n")
        self.assertError(r, 414, "uri_too_long")
        r = self.exchange(b"GET /healthz HTTP/1.1\r\nX-A: " + b"b" * 60000 + b"\r\n\r\n")
        self.assertError(r, 431, "headers_too_large")
        r = self.exchange(b"GET /healthz HTTP/1.1\r\n" +
                          b"".join(b"X-%d: 1\r\n" % i for i in range(1000)) + b"\r\n")
        self.assertError(r, 431, "headers_too_large")


if __name__ == "__main__":
    unittest.main()
