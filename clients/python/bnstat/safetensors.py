"""Pure-Python safetensors encoding and decoding (standard library only).

The format (https://github.com/huggingface/safetensors): an 8-byte
little-endian unsigned header length N, N bytes of JSON header, then the raw
little-endian tensor data. The header maps each tensor name to
``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the
first data byte) and may hold ``"__metadata__"``, a map of strings.

bnstat uses it for binary uploads (``encode_upload``) and for snapshot
exports (``decode``).
"""

import json
import struct

__all__ = ["DTYPES", "encode", "decode", "encode_upload"]

# safetensors dtype -> (struct code, item size)
DTYPES = {
    "F64": ("d", 8),
    "F32": ("f", 4),
    "I64": ("q", 8),
    "I32": ("i", 4),
}

_ALIGN = 8


def _pack_values(values, dtype):
    """Little-endian bytes of a flat sequence (or of bytes already packed)."""
    if isinstance(values, (bytes, bytearray, memoryview)):
        return bytes(values)
    code, _ = DTYPES[dtype]
    return struct.pack("<%d%s" % (len(values), code), *values)


def encode(tensors, metadata=None):
    """Encode tensors to safetensors bytes.

    tensors: an ordered mapping name -> (dtype, shape, values), where dtype
    is one of DTYPES, shape a list of ints and values either a flat sequence
    of numbers or the little-endian bytes of the data. The data is laid out
    contiguously in the mapping's order. metadata: an optional mapping of
    strings. Returns bytes; the header is padded with spaces to 8 bytes so
    that the data is aligned.
    """
    header = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name, (dtype, shape, values) in tensors.items():
        if name == "__metadata__":
            raise ValueError("a tensor cannot be named __metadata__")
        if dtype not in DTYPES:
            raise ValueError("unsupported dtype %r" % (dtype,))
        data = _pack_values(values, dtype)
        n = 1
        for d in shape:
            n *= int(d)
        if len(data) != n * DTYPES[dtype][1]:
            raise ValueError("tensor %s: %d bytes for shape %r of %s"
                             % (name, len(data), list(shape), dtype))
        header[name] = {"dtype": dtype, "shape": [int(d) for d in shape],
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % _ALIGN)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def decode(buf):
    """Decode safetensors bytes.

    Returns (tensors, metadata): tensors maps name -> (dtype, shape, values)
    with values a tuple of Python numbers (doubles for F32/F64, exact), in
    file order; metadata is the ``__metadata__`` dict (or {}). Raises
    ValueError on a malformed file.
    """
    buf = memoryview(buf)
    if len(buf) < 8:
        raise ValueError("safetensors: shorter than its 8-byte header length")
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if hlen > len(buf) - 8:
        raise ValueError("safetensors: header length %d exceeds the file" % hlen)
    try:
        header = json.loads(bytes(buf[8:8 + hlen]).decode("utf-8"))
    except ValueError as e:
        raise ValueError("safetensors: the header is not JSON: %s" % e)
    if not isinstance(header, dict):
        raise ValueError("safetensors: the header is not a JSON object")
    data = buf[8 + hlen:]
    metadata = header.pop("__metadata__", None) or {}
    tensors = {}
    for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
        dtype = info.get("dtype")
        if dtype not in DTYPES:
            raise ValueError("safetensors: tensor %s has unsupported dtype %r" % (name, dtype))
        begin, end = info["data_offsets"]
        shape = list(info["shape"])
        code, size = DTYPES[dtype]
        n = 1
        for d in shape:
            n *= d
        if not 0 <= begin <= end <= len(data) or end - begin != n * size:
            raise ValueError("safetensors: tensor %s has bad data_offsets %r"
                             % (name, [begin, end]))
        tensors[name] = (dtype, shape, struct.unpack_from("<%d%s" % (n, code), data, begin))
    return tensors, metadata


def encode_upload(worker, step, seq, layers, domain=None, var_kind=None, float_dtype="F32"):
    """The binary (safetensors) form of a bnstat upload.

    layers maps a layer name to a dict with "count" (int) and, unless the
    count is 0, "mean"/"var" (and optionally "ema_mean"/"ema_var") as
    little-endian bytes of float_dtype ("F32" or "F64") or sequences of
    numbers. Returns bytes.
    """
    _, size = DTYPES[float_dtype]
    tensors = {}
    for name, layer in layers.items():
        tensors[name + ".count"] = ("I64", [], [int(layer["count"])])
        for key in ("mean", "var", "ema_mean", "ema_var"):
            values = layer.get(key)
            if values is None:
                continue
            n = len(values) // size if isinstance(values, (bytes, bytearray)) else len(values)
            tensors["%s.%s" % (name, key)] = (float_dtype, [n], values)
    metadata = {"worker": worker, "step": int(step), "seq": int(seq),
                "domain": domain if domain is not None else "default",
                "var_kind": var_kind if var_kind is not None else "unbiased"}
    return encode(tensors, metadata)

