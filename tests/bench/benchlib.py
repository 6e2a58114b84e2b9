"""What the Python benchmarks in tests/bench share (standard library only)."""

import base64
import os
import socket
import struct
import tempfile


def b64_f32(values):
    """An upload array in the base64 form of docs/API.md, little-endian f32."""
    return {"dtype": "f32", "b64": base64.b64encode(struct.pack("<%df" % len(values),
                                                                  *values)).decode()}


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def add_db_args(ap):
    """--db, --no-fill and --tmpdir: a benchmark that fills a database and measures it."""
    ap.add_argument("--db", help="database file (kept); with --no-fill, measure it as it is")
    ap.add_argument("--no-fill", action="store_true")
    ap.add_argument("--tmpdir", default=os.environ.get("TMPDIR", "/tmp"))


def db_paths(args, prefix):
    """The run's temporary directory (prefix + random, in --tmpdir) and its database file
    (--db, else one in that directory); --no-fill without --db is refused."""
    if args.no_fill and not args.db:
        raise SystemExit("--no-fill needs --db")
    tmp = tempfile.mkdtemp(prefix=prefix, dir=args.tmpdir)
    return tmp, args.db or os.path.join(tmp, "bench.db")
