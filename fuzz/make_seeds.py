#!/usr/bin/python3
"""Writes the seed corpora of fuzz/corpus/: decoder inputs for fuzz_forward and fuzz_c_api, .npy files (numpy's own) for fuzz_npy."""
import io
import os
import random
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def write(harness, name, data):
    os.makedirs(os.path.join(HERE, "corpus", harness), exist_ok=True)
    with open(os.path.join(HERE, "corpus", harness, name), "wb") as f:
        f.write(data)


def decoder_seeds():
    # FuzzedDataProvider takes integers from the end and the value fills from both ends, so plain
    # patterns and seeded random strings of a few lengths reach every decoder field; libFuzzer does the rest.
    rng = random.Random(10)
    seeds = {"empty": b"", "zeros64": bytes(64), "ones64": b"\xff" * 64, "mid64": b"\x80" * 64}
    for n in (16, 48, 96, 160, 256):
        for i in range(3):
            seeds[f"random{n}_{i}"] = bytes(rng.randrange(256) for _ in range(n))
    for harness in ("fuzz_forward", "fuzz_c_api"):
        for name, data in seeds.items():
            write(harness, name, data)


def npy_bytes(array, version=None):
    buf = io.BytesIO()
    if version is None:
        np.save(buf, array)
    else:
        np.lib.format.write_array(buf, array, version=version)
    return buf.getvalue()


def npy_seeds():
    # The first byte picks what the reader is asked for: 0 q/k/v (float, 4-D), 1 mask (u8, 4-D), 2 anything.
    rng = np.random.default_rng(10)
    q = rng.standard_normal((1, 3, 2, 4)).astype(np.float32)
    files = {
        "f32_4d": (0, npy_bytes(q)),
        "f16_fortran": (0, npy_bytes(np.asfortranarray(q.astype(np.float16)))),
        "f64_4d": (0, npy_bytes(q.astype(np.float64))),
        "f32_empty": (0, npy_bytes(np.zeros((1, 0, 2, 4), np.float32))),
        "bool_mask": (1, npy_bytes(rng.random((1, 1, 3, 3)) < 0.5)),
        "u8_mask": (1, npy_bytes((rng.random((1, 2, 3, 3)) < 0.5).astype(np.uint8))),
        "f32_1d": (2, npy_bytes(np.arange(5, dtype=np.float32))),
        "f32_5d": (2, npy_bytes(np.zeros((1, 1, 1, 1, 2), np.float32))),
        "f32_scalar": (2, npy_bytes(np.float32(1.5).reshape(()))),
        "v2_header": (0, npy_bytes(q, version=(2, 0))),
        "v3_header": (2, npy_bytes(q, version=(3, 0))),
        "int32": (2, npy_bytes(np.arange(6, dtype=np.int32))),
        "big_endian": (0, npy_bytes(q.astype(">f4"))),
    }
    files["truncated"] = (0, files["f32_4d"][1][:-5])
    files["bad_magic"] = (2, b"\x93NUMPX" + files["f32_1d"][1][6:])
    for name, (expect, data) in files.items():
        write("fuzz_npy", name + ".npy", bytes([expect]) + data)


if __name__ == "__main__":
    decoder_seeds()
    npy_seeds()
    sys.exit(0)
