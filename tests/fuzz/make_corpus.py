#!/usr/bin/env python3
"""Write the seeds of tests/fuzz/corpus/ that come from the fixtures.

Each target's directory holds the fixtures' inputs of its parser (named
fx-*), written by this script, and hand-written seeds (seed-*), committed
as they are, and regression seeds of bugs the fuzzers found (crash-*).
Run it from the top of the source tree after the fixtures change, then
commit what changed (docs/TESTING.md, "Fuzzing"):

    python3 tests/fuzz/make_corpus.py
"""
import glob
import os
import re
import shutil

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(TOP, "tests", "fixtures")
CORPUS = os.path.join(TOP, "tests", "fuzz", "corpus")


def clear(target):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    for p in glob.glob(os.path.join(d, "fx-*")):
        os.remove(p)
    return d


def put(d, name, data):
    with open(os.path.join(d, "fx-" + name), "wb") as f:
        f.write(data)


def main():
    # JSON uploads: every valid and invalid fixture body
    d = clear("json")
    bodies = []
    for kind in ("valid", "invalid"):
        for p in sorted(glob.glob(os.path.join(FIX, kind, "*.json"))):
            data = open(p, "rb").read()
            bodies.append(data)
            put(d, kind + "-" + os.path.basename(p), data)
    # safetensors uploads
    d = clear("safetensors")
    for kind in ("valid", "invalid"):
        for p in sorted(glob.glob(os.path.join(FIX, "safetensors", kind, "*.safetensors"))):
            put(d, kind + "-" + os.path.basename(p), open(p, "rb").read())
    # base64: every b64 text of the JSON fixtures
    d = clear("base64")
    seen = set()
    for body in bodies:
        for m in re.finditer(rb'"b64"\s*:\s*"([^"]*)"', body):
            seen.add(m.group(1))
    for i, b in enumerate(sorted(seen)):
        put(d, "%03d" % i, b)
    # request targets: the request line of each query fixture
    d = clear("query")
    for p in sorted(glob.glob(os.path.join(FIX, "query", "*", "request"))):
        line = open(p, "rb").read().split(b"\n")[0]
        target = line.split(b" ", 1)[1] if b" " in line else line
        put(d, os.path.basename(os.path.dirname(p)), target)
    # config: the example file installed with the daemon
    d = clear("config")
    shutil.copyfile(os.path.join(TOP, "systemd", "bnstatd.conf"), os.path.join(d, "fx-bnstatd.conf"))


if __name__ == "__main__":
    main()
