"""memattn.attention_backward against torch autograd through the float64 reference, with the
same-precision autograd gradients as the baseline of the accuracy rule (k = 3, as the C++ tests)."""
import numpy as np
import pytest

import memattn
from conftest import as_kind, assert_accurate, randn, reference_grads, to64, visible

pytest.importorskip("torch")

CASES = {
    "plain": ((2, 7, 9, 2, 2, 16, 16), {}),
    "causal_bottom_right_gqa": ((1, 9, 12, 4, 2, 8, 6), {"causal": True, "align": "bottom_right"}),
    "window_mask": ((1, 12, 12, 2, 1, 8, 8), {"window": (2, 3), "mask": (1, 2, 12, 12)}),
    "bias_full": ((2, 5, 8, 2, 2, 8, 8), {"bias": (2, 2, 5, 8)}),
    "bias_broadcast_2d": ((2, 6, 7, 2, 1, 8, 8), {"bias": (6, 7), "causal": True}),
    "bias_per_head": ((1, 6, 7, 3, 3, 8, 4), {"bias": (1, 3, 1, 7), "scale": 0.5}),
}


def check_backward(rng, kind, dtype, shape, options, algorithm="auto"):
    b, sq, sk, hq, hkv, d, dv = shape
    q, k, v = (randn(rng, (b, s, h, w), dtype) for s, h, w in ((sq, hq, d), (sk, hkv, d), (sk, hkv, dv)))
    dout = randn(rng, (b, sq, hq, dv), dtype)
    mask = rng.random(options["mask"]) < 0.7 if "mask" in options else None
    bias = randn(rng, options["bias"], "f32") if "bias" in options else None
    flags = {key: options[key] for key in ("causal", "align", "window", "scale") if key in options}
    vis = visible(sq, sk, flags.get("causal", False), flags.get("align", "top_left"),
                  flags.get("window"), mask)

    ref = reference_grads(q, k, v, dout, vis, bias, flags.get("scale"), "f64")
    base = reference_grads(q, k, v, dout, vis, bias, flags.get("scale"), dtype)

    args = [as_kind(x, kind, dtype) for x in (q, k, v)]
    if mask is not None:
        flags["mask"] = as_kind(mask.astype(np.float64), kind, "f32") != 0
    if bias is not None:
        flags["bias"] = as_kind(bias, kind, "f32")
    out, lse = memattn.attention(*args, return_lse=True, algorithm=algorithm, **flags)
    grads = memattn.attention_backward(*args, out, as_kind(dout, kind, dtype), lse,
                                       bias_grad=bias is not None, algorithm=algorithm, **flags)
    assert len(grads) == (4 if bias is not None else 3)
    for name, got, want, baseline, like in zip(("dq", "dk", "dv", "dbias"), grads, ref, base,
                                               args + [flags.get("bias")]):
        assert type(got) is type(like) and tuple(got.shape) == tuple(like.shape)
        assert got.dtype == like.dtype, name
        assert_accurate(got, want, baseline, dtype, what=name, k=3.0)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_backward_matches_autograd(rng, kind, case):
    check_backward(rng, kind, "f32", *CASES[case])


@pytest.mark.parametrize("case", ["plain", "bias_broadcast_2d"])
def test_backward_bf16(rng, case):
    check_backward(rng, "torch", "bf16", *CASES[case])


def test_backward_naive_algorithm(rng):
    check_backward(rng, "numpy", "f32", *CASES["window_mask"], algorithm="naive")


def test_backward_writes_given_gradients_in_place(rng):
    q, k, v = (randn(rng, (1, 5, 2, 8)).astype(np.float32) for _ in range(3))
    bias = np.zeros((5, 5), np.float32)
    out, lse = memattn.attention(q, k, v, bias=bias, return_lse=True)
    given = [np.full((1, 5, 2, 8), np.nan, np.float32) for _ in range(3)] + [np.full((5, 5), np.nan, np.float32)]
    result = memattn.attention_backward(q, k, v, out, np.ones_like(out), lse, bias=bias,
                                        dq=given[0], dk=given[1], dv=given[2], dbias=given[3],
                                        bias_grad=True)
    assert all(r is g for r, g in zip(result, given))
    assert not any(np.isnan(g).any() for g in given)


def test_backward_of_torch_bool_mask_and_thread_default(rng):
    """torch operands with num_threads=0 use torch's thread count; results equal numpy's."""
    import torch
    q, k, v = (randn(rng, (1, 6, 2, 8)) for _ in range(3))
    mask = rng.random((6, 6)) < 0.6
    np_out = memattn.attention(*(x.astype(np.float32) for x in (q, k, v)), mask=mask)
    t_out = memattn.attention(*(torch.from_numpy(x).float() for x in (q, k, v)),
                              mask=torch.from_numpy(mask))
    assert np.array_equal(np_out, to64(t_out).astype(np.float32))


def test_backward_ways_agree_bitwise_and_the_knob_is_checked(rng, monkeypatch):
    """MEMATTN_BACKWARD=fused|passes: the f32 flash backward's two ways give the same bits; another
    value raises before anything is written."""
    q, k, v = (randn(rng, (2, 40, 4, 16)).astype(np.float32) for _ in range(3))
    dout = randn(rng, (2, 40, 4, 16)).astype(np.float32)
    out, lse = memattn.attention(q, k, v, causal=True, return_lse=True)
    grads = {}
    for way in ("passes", "fused"):
        monkeypatch.setenv("MEMATTN_BACKWARD", way)
        grads[way] = memattn.attention_backward(q, k, v, out, dout, lse, causal=True)
    for a, b in zip(grads["passes"], grads["fused"]):
        assert np.array_equal(a.view(np.uint32), b.view(np.uint32))
    monkeypatch.setenv("MEMATTN_BACKWARD", "both")
    dq = np.full_like(q, np.nan)
    with pytest.raises(ValueError, match=r"^MEMATTN_BACKWARD: expected fused or passes, got both") as info:
        memattn.attention_backward(q, k, v, out, dout, lse, causal=True, dq=dq)
    assert info.value.code == "invalid_argument"
    assert np.isnan(dq).all()
