"""Variable-length batches (cu_seqlens) through the Python API: each packed sequence against the
float64 reference (rule of docs/api.md) and bitwise against its own dense call, forward and
backward, numpy and torch, int32/int64/list offsets, and the offset errors with their messages."""
import re

import numpy as np
import pytest

import memattn
from conftest import as_kind, assert_accurate, baseline, randn, reference, to64, visible

LENGTHS = [([0, 5, 0, 1, 0], [3, 5, 2, 0, 4]), ([1, 1, 1], [1, 1, 1]), ([9, 2, 30], [9, 40, 17])]


def packed(rng, lq, lk, hq=4, hkv=2, d=8, dv=6, dtype="f32"):
    tq, tk = sum(lq), sum(lk)
    return (randn(rng, (1, tq, hq, d), dtype), randn(rng, (1, tk, hkv, d), dtype),
            randn(rng, (1, tk, hkv, dv), dtype), randn(rng, (1, tq, hq, dv), dtype))


def offsets(lengths, dtype=np.int32):
    return np.concatenate([[0], np.cumsum(lengths)]).astype(dtype)


@pytest.mark.parametrize("lq, lk", LENGTHS)
@pytest.mark.parametrize("dtype", ["f32", "f16"])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
def test_forward_matches_reference_and_dense(rng, lq, lk, dtype, align):
    q, k, v, _ = packed(rng, lq, lk, dtype=dtype)
    cq, ck = offsets(lq), offsets(lk, np.int64)
    args = [as_kind(x, "numpy", dtype) for x in (q, k, v)]
    out, lse = memattn.attention(*args, causal=True, align=align, cu_seqlens_q=cq, cu_seqlens_k=ck,
                                 return_lse=True)
    assert out.shape == (1, sum(lq), 4, 6) and lse.shape == (1, 4, sum(lq))
    for b in range(len(lq)):
        rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        dense_out, dense_lse = memattn.attention(args[0][:, rq], args[1][:, rk], args[2][:, rk], causal=True,
                                                 align=align, return_lse=True)
        np.testing.assert_array_equal(out[:, rq], dense_out)
        np.testing.assert_array_equal(lse[:, :, rq], dense_lse)
        if lk[b] == 0 or lq[b] == 0:  # no keys: out = 0, lse = -inf (the reference has no keys to reduce)
            assert np.all(out[:, rq] == 0) and np.all(lse[:, :, rq] == -np.inf)
            continue
        vis = visible(lq[b], lk[b], True, align)
        ref_out, ref_lse = reference(q[:, rq], k[:, rk], v[:, rk], vis)
        assert_accurate(out[:, rq], ref_out, baseline(q[:, rq], k[:, rk], v[:, rk], vis, None, None, dtype),
                        dtype, f"sequence {b}")
        np.testing.assert_allclose(lse[:, :, rq], ref_lse, rtol=2e-4, atol=2e-4)


def test_list_offsets_and_max_seqlen(rng):
    lq, lk = [2, 0, 3], [4, 1, 0]
    q, k, v, _ = packed(rng, lq, lk)
    args = [x.astype(np.float32) for x in (q, k, v)]
    want = memattn.attention(*args, cu_seqlens_q=offsets(lq), cu_seqlens_k=offsets(lk))
    got = memattn.attention(*args, cu_seqlens_q=[0, 2, 2, 5], cu_seqlens_k=(0, 4, 5, 5),
                            max_seqlen_q=3, max_seqlen_k=4)
    np.testing.assert_array_equal(got, want)
    assert memattn.workspace_bytes(*args, cu_seqlens_q=[0, 2, 2, 5], cu_seqlens_k=[0, 4, 5, 5]) >= 0


def test_alibi_slopes_per_sequence(rng):
    """[sequences, heads_q] slopes (FlashAttention's varlen ALiBi): sequence b takes row b."""
    lq, lk = [3, 0, 5], [4, 2, 6]
    q, k, v, _ = packed(rng, lq, lk)
    args = [x.astype(np.float32) for x in (q, k, v)]
    cq, ck = offsets(lq), offsets(lk)
    slopes = (np.arange(12, dtype=np.float32).reshape(3, 4) + 1) / 16
    out = memattn.attention(*args, causal=True, cu_seqlens_q=cq, cu_seqlens_k=ck, alibi_slopes=slopes)
    for b in range(3):
        rq, rk = slice(cq[b], cq[b + 1]), slice(ck[b], ck[b + 1])
        want = memattn.attention(args[0][:, rq], args[1][:, rk], args[2][:, rk], causal=True, alibi_slopes=slopes[b])
        np.testing.assert_array_equal(out[:, rq], want)
    with pytest.raises(ValueError, match=re.escape("expected [4] or [3,4] ([heads_q] or [sequences, heads_q])")):
        memattn.attention(*args, cu_seqlens_q=cq, cu_seqlens_k=ck, alibi_slopes=slopes[:2])


@pytest.mark.parametrize("lq, lk", LENGTHS)
def test_backward_matches_dense_torch(lq, lk):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    q, k, v, dout = packed(rng, lq, lk)
    t = [torch.tensor(x, dtype=torch.float32) for x in (q, k, v, dout)]
    cq, ck = torch.tensor(offsets(lq)), torch.tensor(offsets(lk, np.int64))
    out, lse = memattn.attention(*t[:3], causal=True, align="bottom_right", cu_seqlens_q=cq,
                                 cu_seqlens_k=ck, return_lse=True)
    dq, dk, dv = memattn.attention_backward(*t[:3], out, t[3], lse, causal=True, align="bottom_right",
                                            cu_seqlens_q=cq, cu_seqlens_k=ck)
    for b in range(len(lq)):
        rq, rk = slice(int(cq[b]), int(cq[b + 1])), slice(int(ck[b]), int(ck[b + 1]))
        args = (t[0][:, rq], t[1][:, rk], t[2][:, rk])
        o, l = memattn.attention(*args, causal=True, align="bottom_right", return_lse=True)
        g = memattn.attention_backward(*args, o, t[3][:, rq], l, causal=True, align="bottom_right")
        assert torch.equal(dq[:, rq], g[0]) and torch.equal(dk[:, rk], g[1]) and torch.equal(dv[:, rk], g[2])
        if lq[b] == 0:
            assert torch.all(dk[:, rk] == 0) and torch.all(dv[:, rk] == 0)


@pytest.mark.parametrize("change, message", [
    (lambda cq, ck: cq.__setitem__(0, 1), "cu_seqlens_q[0]=1 must be 0"),
    (lambda cq, ck: cq.__setitem__(2, 9), "cu_seqlens_q[3]=7 < cu_seqlens_q[2]=9"),
    (lambda cq, ck: ck.__setitem__(3, 6), "cu_seqlens_k[3]=6 (the last entry) must equal the key total"),
])
def test_offset_errors_leave_out_untouched(rng, change, message):
    lq, lk = [3, 0, 4], [2, 2, 3]
    q, k, v, _ = packed(rng, lq, lk)
    cq, ck = offsets(lq), offsets(lk)
    change(cq, ck)
    out = np.full((1, 7, 4, 6), 7.0, dtype=np.float32)
    with pytest.raises(ValueError, match=re.escape(message)) as e:
        memattn.attention(*(x.astype(np.float32) for x in (q, k, v)), cu_seqlens_q=cq, cu_seqlens_k=ck,
                          out=out)
    assert e.value.code == "invalid_argument"
    assert np.all(out == 7.0)


def test_other_errors(rng):
    q, k, v, _ = packed(rng, [3, 4], [2, 5])
    args = [x.astype(np.float32) for x in (q, k, v)]
    with pytest.raises(ValueError, match="max_seqlen_q=3 is smaller than sequence 1's length 4"):
        memattn.attention(*args, cu_seqlens_q=[0, 3, 7], cu_seqlens_k=[0, 2, 7], max_seqlen_q=3)
    with pytest.raises(ValueError, match="cu_seqlens_q is set but cu_seqlens_k is null"):
        memattn.attention(*args, cu_seqlens_q=[0, 3, 7])
    with pytest.raises(TypeError, match="cu_seqlens_k: dtype must be i32 or i64, got f32"):
        memattn.attention(*args, cu_seqlens_q=[0, 3, 7], cu_seqlens_k=np.array([0, 2, 7], np.float32))
    with pytest.raises(ValueError, match="cu_seqlens_q has 3 entries but cu_seqlens_k has 2"):
        memattn.attention(*args, cu_seqlens_q=[0, 3, 7], cu_seqlens_k=[0, 7])
    with pytest.raises(ValueError, match="mask: not supported with cu_seqlens"):
        memattn.attention(*args, cu_seqlens_q=[0, 3, 7], cu_seqlens_k=[0, 2, 7],
                          mask=np.ones((1, 1, 7, 7), bool))


@pytest.mark.parametrize("dtype", ["f64", "f32"])
def test_torch_varlen_attention_autograd(dtype):
    """memattn.torch.varlen_attention's gradients: gradcheck in float64 (through the naive
    backward), and per sequence against autograd through the float64 reference in float32."""
    torch = pytest.importorskip("torch")
    import memattn.torch as mt
    from conftest import reference_grads
    rng = np.random.default_rng(11)
    lq, lk = [2, 0, 5], [3, 4, 6]
    q, k, v, dout = packed(rng, lq, lk, hq=2, hkv=1, d=4, dv=3)
    tdt = torch.float64 if dtype == "f64" else torch.float32
    leaves = [torch.tensor(x, dtype=tdt, requires_grad=True) for x in (q, k, v)]
    cq, ck = torch.tensor(offsets(lq)), torch.tensor(offsets(lk))
    if dtype == "f64":
        assert torch.autograd.gradcheck(
            lambda a, b, c: mt.varlen_attention(a, b, c, cq, ck, causal=True, align="bottom_right"),
            tuple(leaves))
        return
    out = mt.varlen_attention(*leaves, cq, ck, causal=True, align="bottom_right")
    (out * torch.tensor(dout, dtype=tdt)).sum().backward()
    for b in range(len(lq)):
        rq, rk = slice(int(cq[b]), int(cq[b + 1])), slice(int(ck[b]), int(ck[b + 1]))
        if lq[b] == 0:
            assert torch.all(leaves[1].grad[:, rk] == 0) and torch.all(leaves[2].grad[:, rk] == 0)
            continue
        vis = visible(lq[b], lk[b], True, "bottom_right")
        ref = reference_grads(q[:, rq], k[:, rk], v[:, rk], dout[:, rq], vis)
        base = reference_grads(q[:, rq], k[:, rk], v[:, rk], dout[:, rq], vis, dtype="f32")
        for got, r, bs, name in zip((leaves[0].grad[:, rq], leaves[1].grad[:, rk], leaves[2].grad[:, rk]),
                                    ref, base, ("dq", "dk", "dv")):
            assert_accurate(got, r, bs, "f32", f"{name} of sequence {b}", k=3.0)
