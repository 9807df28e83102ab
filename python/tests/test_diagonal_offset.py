"""diagonal_offset through memattn.attention and attention_backward: causal and window around the
moved diagonal against the float64 reference (autograd for the gradients), and its errors."""
import numpy as np
import pytest

import memattn
from conftest import as_kind, assert_accurate, baseline, randn, reference, reference_grads, visible

SHAPE = (1, 9, 13, 2, 1, 16, 16)
BANDS = {"causal": {"causal": True}, "window": {"window": (2, 1)},
         "causal_window": {"causal": True, "window": (3, None)}}


def operands(rng, dtype):
    b, sq, sk, hq, hkv, d, dv = SHAPE
    return [randn(rng, (b, s, h, w), dtype) for s, h, w in ((sq, hq, d), (sk, hkv, d), (sk, hkv, dv))]


@pytest.mark.parametrize("offset", [-5, 0, 7])
@pytest.mark.parametrize("align", ["top_left", "bottom_right"])
@pytest.mark.parametrize("band", sorted(BANDS))
def test_forward_and_backward_match_reference(rng, band, align, offset):
    q, k, v = operands(rng, "f32")
    dout = randn(rng, (SHAPE[0], SHAPE[1], SHAPE[3], SHAPE[6]), "f32")
    flags = dict(BANDS[band], align=align, diagonal_offset=offset)
    vis = visible(SHAPE[1], SHAPE[2], flags.get("causal", False), align, flags.get("window"),
                  diagonal_offset=offset)
    ref, _ = reference(q, k, v, vis)
    out, lse = memattn.attention(q, k, v, return_lse=True, **flags)
    assert_accurate(out, ref, baseline(q, k, v, vis, None, None, "f32"), "f32")
    grads = memattn.attention_backward(q, k, v, out, dout, lse, **flags)
    want = reference_grads(q, k, v, dout, vis, dtype="f64")
    base = reference_grads(q, k, v, dout, vis, dtype="f32")
    for name, got, w, b in zip(("dq", "dk", "dv"), grads, want, base):
        assert_accurate(got, w, b, "f32", name, k=3.0)


def test_torch_operands_and_workspace(rng):
    torch = pytest.importorskip("torch")
    q, k, v = (as_kind(x, "torch", "f32") for x in operands(rng, "f32"))
    out = memattn.attention(q, k, v, causal=True, diagonal_offset=-3)
    vis = visible(SHAPE[1], SHAPE[2], True, diagonal_offset=-3)
    ref, _ = reference(*(x.numpy().astype(np.float64) for x in (q, k, v)), vis)
    assert isinstance(out, torch.Tensor)
    assert np.allclose(out.numpy(), ref, atol=1e-5)
    assert memattn.workspace_bytes(q, k, v, causal=True, diagonal_offset=-3) >= 0


def test_errors(rng):
    q, k, v = operands(rng, "f32")
    with pytest.raises(ValueError, match=r"diagonal_offset must be in \[-2\^62, 2\^62\], got 4611686018427387905"):
        memattn.attention(q, k, v, causal=True, diagonal_offset=2 ** 62 + 1)
    with pytest.raises(TypeError, match="diagonal_offset must be an int"):
        memattn.attention(q, k, v, diagonal_offset=1.5)
