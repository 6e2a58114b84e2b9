"""What the Python benchmarks in tests/bench share (standard library only)."""

import base64
import socket
import struct


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
