"""memattn.attention_with_kvcache: paged caches (page sizes 1, 3, 16, 256, pages shuffled, unused
rows NaN) and dense ones against the float64 reference on each sequence's gathered keys and
attention() on them (bitwise for a dense cache), numpy and torch, and its errors."""
import re

import numpy as np
import pytest

import memattn
from conftest import assert_accurate, baseline, randn, reference, visible


def paged_cache(rng, lens, page, hkv=2, d=8, dv=6, dtype=np.float32):
    """(k_seq, v_seq, k_cache, v_cache, table): per-sequence keys and their pages."""
    k_seq = [randn(rng, (1, n, hkv, d)) for n in lens]
    v_seq = [randn(rng, (1, n, hkv, dv)) for n in lens]
    pages = [-(-n // page) for n in lens]
    order = rng.permutation(sum(pages) + 2)
    k_cache = np.full((len(order), page, hkv, d), np.nan, dtype)
    v_cache = np.full((len(order), page, hkv, dv), np.nan, dtype)
    table = np.full((len(lens), max(pages) + 1), -1, np.int32)
    used = 0
    for b, n in enumerate(lens):
        for p in range(pages[b]):
            slot = order[used]
            used += 1
            table[b, p] = slot
            rows = slice(p * page, min(n, (p + 1) * page))
            k_cache[slot, : rows.stop - rows.start] = k_seq[b][0, rows]
            v_cache[slot, : rows.stop - rows.start] = v_seq[b][0, rows]
    return k_seq, v_seq, k_cache, v_cache, table


@pytest.mark.parametrize("page", [1, 3, 16, 256])
@pytest.mark.parametrize("sq", [1, 2, 4])
def test_paged_matches_reference_and_dense(rng, page, sq):
    lens = [5, 0, 40, 300]
    k_seq, v_seq, k_cache, v_cache, table = paged_cache(rng, lens, page)
    q = randn(rng, (len(lens), sq, 4, 8))
    out, lse = memattn.attention_with_kvcache(q.astype(np.float32), k_cache, v_cache, np.array(lens, np.int64),
                                              table, return_lse=True)
    from_lists = memattn.attention_with_kvcache(q.astype(np.float32), k_cache, v_cache, lens, table.tolist())
    np.testing.assert_array_equal(out, from_lists)
    for b, n in enumerate(lens):
        args = (q[b:b + 1].astype(np.float32), k_seq[b].astype(np.float32), v_seq[b].astype(np.float32))
        if n == 0:
            assert np.all(out[b] == 0) and np.all(lse[b] == -np.inf)
            continue
        vis = visible(sq, n, True, "bottom_right")
        ref, ref_lse = reference(q[b:b + 1], k_seq[b], v_seq[b], vis)
        assert_accurate(out[b:b + 1], ref, baseline(q[b:b + 1], k_seq[b], v_seq[b], vis, None, None, "f32"), "f32",
                        f"sequence {b}")
        np.testing.assert_allclose(lse[b:b + 1], ref_lse, rtol=2e-4, atol=2e-4)
        # attention() on the gathered keys: the same result up to the order of the key chunks.
        dense = memattn.attention(*args, causal=True, align="bottom_right")
        np.testing.assert_allclose(out[b:b + 1], dense, rtol=1e-5, atol=1e-6)


def test_dense_cache_torch_bitwise():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    lens = [3, 9, 0]
    q = torch.tensor(randn(rng, (3, 2, 4, 8)), dtype=torch.float32)
    k_cache = torch.full((3, 12, 2, 8), float("nan"))
    v_cache = torch.full((3, 12, 2, 8), float("nan"))
    for b, n in enumerate(lens):
        k_cache[b, :n] = torch.tensor(randn(rng, (n, 2, 8)))
        v_cache[b, :n] = torch.tensor(randn(rng, (n, 2, 8)))
    out = memattn.attention_with_kvcache(q, k_cache, v_cache, torch.tensor(lens, dtype=torch.int32))
    for b, n in enumerate(lens):
        want = memattn.attention(q[b:b + 1], k_cache[b:b + 1, :n], v_cache[b:b + 1, :n], causal=True,
                                 align="bottom_right")
        assert torch.equal(out[b:b + 1], want)


def test_errors(rng):
    _, _, k_cache, v_cache, table = paged_cache(rng, [4, 6], 4)
    q = randn(rng, (2, 1, 4, 8)).astype(np.float32)
    out = np.full((2, 1, 4, 6), 7.0, np.float32)
    bad = table.copy()
    bad[1, 0] = 99
    with pytest.raises(ValueError, match=re.escape("block_table[1][0]=99 is not a page of k_cache")):
        memattn.attention_with_kvcache(q, k_cache, v_cache, [4, 6], bad, out=out)
    assert np.all(out == 7.0)
    with pytest.raises(ValueError, match=re.escape("seqlens_k[0]=13 exceeds the 12 keys")):
        memattn.attention_with_kvcache(q, k_cache, v_cache, [13, 6], table, out=out)
    with pytest.raises(ValueError, match=re.escape("seqlens_k[1]=-2 must be >= 0")):
        memattn.attention_with_kvcache(q, k_cache, v_cache, [4, -2], table, out=out)
    with pytest.raises(TypeError, match="seqlens_k: dtype must be i32 or i64, got f32"):
        memattn.attention_with_kvcache(q, k_cache, v_cache, np.array([4, 6], np.float32), table, out=out)
    assert np.all(out == 7.0)


@pytest.mark.parametrize("page", [0, 16])
def test_score_modifiers_match_attention(rng, page):
    """softcap, ALiBi and sinks through the cache match attention() with them on each sequence's
    gathered keys, up to the order of the key chunks."""
    lens = [5, 0, 40]
    k_seq, v_seq, k_cache, v_cache, table = paged_cache(rng, lens, page or 64)
    if page == 0:
        k_cache = np.full((len(lens), 48, 2, 8), np.nan, np.float32)
        v_cache = np.full((len(lens), 48, 2, 6), np.nan, np.float32)
        for b, n in enumerate(lens):
            k_cache[b, :n], v_cache[b, :n] = k_seq[b][0], v_seq[b][0]
    q = randn(rng, (len(lens), 2, 4, 8)).astype(np.float32)
    slopes = np.array([0.5, 0.25, 0.125, 0.0625], np.float32)
    sinks = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    mods = dict(softcap=4.0, alibi_slopes=slopes, sinks=sinks)
    out, lse = memattn.attention_with_kvcache(q, k_cache, v_cache, lens, table if page else None,
                                              return_lse=True, **mods)
    # Slopes per sequence ([batch, heads_q]): sequence b takes row b.
    per_batch = slopes[None, :] * np.array([[1.0], [2.0], [0.5]], np.float32)
    out_pb = memattn.attention_with_kvcache(q, k_cache, v_cache, lens, table if page else None,
                                            softcap=4.0, alibi_slopes=per_batch, sinks=sinks)
    for b, n in enumerate(lens):
        want, want_lse = memattn.attention(q[b:b + 1], k_seq[b].astype(np.float32), v_seq[b].astype(np.float32),
                                           causal=True, align="bottom_right", return_lse=True, **mods)
        np.testing.assert_allclose(out[b:b + 1], want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(lse[b:b + 1], want_lse, rtol=1e-6, atol=1e-6)
        want_pb = memattn.attention(q[b:b + 1], k_seq[b].astype(np.float32), v_seq[b].astype(np.float32),
                                    causal=True, align="bottom_right", softcap=4.0, alibi_slopes=per_batch[b],
                                    sinks=sinks)
        np.testing.assert_allclose(out_pb[b:b + 1], want_pb, rtol=1e-5, atol=1e-6)
    # The sinks took part: without them every row's lse is lower.
    plain = memattn.attention_with_kvcache(q, k_cache, v_cache, lens, table if page else None,
                                           return_lse=True, softcap=4.0, alibi_slopes=slopes)[1]
    assert np.all(plain < lse)


def test_f32_queries_on_low_precision_cache(rng):
    """An f16 (numpy) or bf16 (torch) KV cache read by f32 queries: the same bits as the f32 call on
    the widened cache, through attention() and attention_with_kvcache()."""
    q = randn(rng, (2, 3, 4, 16)).astype(np.float32)
    k = randn(rng, (2, 40, 2, 16)).astype(np.float16)
    v = randn(rng, (2, 40, 2, 16)).astype(np.float16)
    got = memattn.attention(q, k, v, causal=True, align="bottom_right")
    want = memattn.attention(q, k.astype(np.float32), v.astype(np.float32), causal=True, align="bottom_right")
    np.testing.assert_array_equal(got, want)
    lens = [17, 40]
    np.testing.assert_array_equal(memattn.attention_with_kvcache(q, k, v, lens),
                                  memattn.attention_with_kvcache(q, k.astype(np.float32), v.astype(np.float32), lens))
    with pytest.raises(TypeError, match="forward only"):
        memattn.attention_backward(q, k, v, got, got, np.zeros((2, 4, 3), np.float32))
    torch = pytest.importorskip("torch")
    tq, tk, tv = torch.tensor(q), torch.tensor(k).to(torch.bfloat16), torch.tensor(v).to(torch.bfloat16)
    assert torch.equal(memattn.attention(tq, tk, tv), memattn.attention(tq, tk.float(), tv.float()))
