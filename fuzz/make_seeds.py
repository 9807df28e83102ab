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
        for name, data in mode_seeds().items():
            # fuzz_c_api reads its own choices first, from the end: no corruption (0), its operand
            # and value, and the failing allocator (1: off); then the problem as fuzz_forward does.
            write(harness, name, data if harness == "fuzz_forward" else data + bytes([1, 0, 0, 0]))


class Encoder:
    """The bytes FuzzedDataProvider hands back as the given fields: it takes integers from the end of
    the input, one byte per field of a range under 256, so fields are listed in decoding order and
    the input is their reverse."""

    def __init__(self):
        self.taken = []

    def field(self, value, low=0):
        self.taken.append(value - low)
        return self

    def u32(self, value):
        self.taken += [value >> 24 & 255, value >> 16 & 255, value >> 8 & 255, value & 255]
        return self

    def data(self):
        return bytes(reversed(self.taken))


def dense(e, dtype=0, batch=2, sq=3, sk=5, hkv=1, group=2, d=4, dv=4, lse=True, causal=0, align=0, backward=False):
    """fuzz_input.hpp's decode_dense for a valid call: plain layouts, no mask, bias or scale, one
    thread against three, the library's workspace; values of magnitude 1."""
    e.field(dtype)
    for value, low in ((batch, 1), (sq, 1), (sk, 1), (hkv, 1), (group, 1), (d, 1), (dv, 1)):
        e.field(value, low)
    e.field(0).field(1).field(1)  # no perturbation, v matches k, not packed
    for _ in range(4):  # q, k, v, out: row-major, no padding
        e.field(0)
    e.field(1).field(int(lse))  # out does not alias q; lse
    if lse:
        e.field(0)
    e.field(causal).field(align).field(0).field(0).field(0)  # windows unbounded, scale unset
    e.field(0).field(0).field(0).field(0).field(0)  # automatic algorithm and chunks, 1 thread, best target
    e.field(0).field(0).field(0).field(0)  # no mask, no bias, library workspace, aligned
    e.field(int(backward))
    if backward:
        for _ in range(4):  # dout, dq, dk, dv
            e.field(0)
    for seed in range(4 if backward else 3):  # q, k, v (dout) values: seed, exponent 0, no specials
        e.u32(0x9E3779B1 * (seed + 1) & 0xFFFFFFFF).field(0).field(0)
    return e


def modifiers(e, softcap=None, alibi=None, sinks=None, dsinks=False, heads_q=2, batch=2):
    """fuzz_modes.hpp's decode_modifiers: softcap (index into kSoftcaps), alibi and sinks (shape
    kind, then per-entry indices into kSlopes / kSinks)."""
    e.field((softcap is not None) | (alibi is not None) << 1 | (sinks is not None) << 2 | dsinks << 3)
    if softcap is not None:
        e.field(softcap)
    if alibi is not None:
        kind, values = alibi
        e.field(kind).field(0)
        for v in values[: heads_q * (batch if kind in (4, 5) else 1)]:
            e.field(v)
    if sinks is not None:
        e.field(0).field(0)
        for v in sinks[:heads_q]:
            e.field(v)
    if dsinks:
        e.field(0)
    return e


def mode_seeds():
    """Seeds for the modes and options decoded after the dense layout (fuzz_modes.hpp), each a
    valid call, so the fuzzer starts from accepted varlen, KV cache and score-modifier calls."""
    seeds = {}
    # Dense calls with modifiers (then q's k/v dtype, dense mode, no max_seqlen): softcap 5, ALiBi
    # per head and per batch, sinks with dsinks, all three; forward and backward.
    seeds["softcap_backward"] = modifiers(dense(Encoder(), backward=True), softcap=2).field(0).field(0).field(0)
    seeds["alibi_causal"] = modifiers(dense(Encoder(), causal=1, align=1), alibi=(0, [0, 1])).field(0).field(0).field(0)
    seeds["alibi_per_batch_backward"] = (
        modifiers(dense(Encoder(), backward=True), alibi=(4, [0, 1, 2, 3])).field(0).field(0).field(0))
    seeds["sinks_dsinks_backward"] = (
        modifiers(dense(Encoder(), backward=True), sinks=[5, 7], dsinks=True).field(0).field(0).field(0))
    seeds["all_modifiers"] = (
        modifiers(dense(Encoder(), causal=1), softcap=3, alibi=(0, [2, 3]), sinks=[1, 9]).field(0).field(0).field(0))
    # f32 queries on a bf16 / f16 cache (k/v dtype choice 4 / 5), dense: k and v relaid, no max_seqlen.
    seeds["f32_q_bf16_kv"] = modifiers(dense(Encoder())).field(4).field(0).field(0).field(0).field(0)
    seeds["f32_q_f16_kv"] = modifiers(dense(Encoder())).field(5).field(0).field(0).field(0).field(0)

    def varlen(e, lengths, backward=False, lse=True, index_dtypes=(0, 1), max_seqlen=(0, 0)):
        """decode's mode and to_varlen, after the k/v dtype field: (queries, keys) per sequence,
        cu_seqlens dtypes (0: i32, 1: i64), max_seqlen choices (0: computed, 4: exact, 5: larger)."""
        e.field(1)  # mode: varlen
        for lq, lk in lengths:
            e.field(lq).field(lk)
        for _ in range(4 + lse + 4 * backward):  # q, k, v, out, lse, dout, dq, dk, dv
            e.field(0)
        e.field(0)  # no corruption
        e.field(index_dtypes[0]).field(0).field(index_dtypes[1]).field(0)
        return e.field(max_seqlen[0]).field(max_seqlen[1])

    seeds["varlen_causal"] = varlen(modifiers(dense(Encoder(), causal=1, align=1)).field(0), [(3, 5), (2, 4)])
    seeds["varlen_empty_sequence_backward"] = varlen(
        modifiers(dense(Encoder(), backward=True)).field(0), [(0, 3), (3, 0)], backward=True, max_seqlen=(4, 5))
    seeds["varlen_softcap_alibi_backward"] = varlen(
        modifiers(dense(Encoder(), causal=1, backward=True), softcap=2, alibi=(0, [0, 1])).field(0),
        [(3, 5), (1, 2)], backward=True)
    seeds["varlen_sinks"] = varlen(modifiers(dense(Encoder()), sinks=[3, 4]).field(0), [(2, 5), (3, 1)])

    def kvcache(e, lengths, page_size=None, kv=0, capacity_extra=1):
        """decode's k/v dtype and mode fields and to_kvcache: seqlens_k, a dense cache (no
        page_size) or pages, shuffled."""
        e.field(kv).field(2).field(int(page_size is not None))  # kv dtypes, mode: kvcache, paged
        if page_size is not None:
            e.field([1, 2, 3, 4, 5, 8, 16].index(page_size))
        for n in lengths:
            e.field(n)
        e.field(1)  # one block table entry more than needed
        if page_size is None:
            e.field(capacity_extra)
        e.field(0).field(1).field(0)  # no corruption, i64 seqlens_k, its layout
        e.field(1)  # one page more than needed
        if page_size is not None:
            e.u32(12345).field(0).field(0).field(0)  # shuffle, unused entries 1000, i32 block table, layout
        return e.field(0).field(0)  # k and v caches' layouts

    seeds["kvcache_dense"] = kvcache(modifiers(dense(Encoder(), causal=1, align=1)), [5, 2])
    seeds["kvcache_paged_4"] = kvcache(modifiers(dense(Encoder(), causal=1, align=1)), [5, 3], page_size=4)
    seeds["kvcache_paged_1_bf16"] = kvcache(modifiers(dense(Encoder())), [4, 0], page_size=1, kv=4)
    seeds["kvcache_paged_3_sinks_alibi"] = kvcache(
        modifiers(dense(Encoder(), causal=1, align=1), alibi=(0, [0, 2]), sinks=[3, 6]), [5, 4], page_size=3)
    seeds["kvcache_decode_f16_kv"] = kvcache(modifiers(dense(Encoder(), sq=1, sk=12)), [12, 7], page_size=5, kv=5)
    return {name: e.data() for name, e in seeds.items()}


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
