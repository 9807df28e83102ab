"""Score modifiers (softcap, ALiBi slopes, attention sinks) through memattn.attention,
attention_backward and memattn.torch.attention, against their definition written here in torch
float64 (autograd for the gradients), with the same-precision definition as the accuracy rule's
baseline; and their errors."""
import numpy as np
import pytest

import memattn
from conftest import as_kind, assert_accurate, randn, to64, visible

torch = pytest.importorskip("torch")


def definition(q, k, v, vis, softcap=0.0, slopes=None, sinks=None, align="top_left"):
    """docs/api.md's definition on torch tensors [B, S, H, d]: s = scale q.k, capped, minus
    slope * |i + diag - j|, masked; a sink logit per head joins the denominator. (out, lse)."""
    b, sq, hq, d = q.shape
    sk = k.shape[1]
    group = hq // k.shape[2]
    scale = float(np.float32(1 / np.sqrt(d))) if q.dtype != torch.float64 else 1 / np.sqrt(d)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k.repeat_interleave(group, 2)) * scale
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    if slopes is not None:
        diag = sk - sq if align == "bottom_right" else 0
        dist = (torch.arange(sq)[:, None] + diag - torch.arange(sk)[None, :]).abs().to(s.dtype)
        per_head = slopes.to(s.dtype).reshape((1 if slopes.dim() == 1 else b, hq, 1, 1))
        s = s - per_head * dist
    s = torch.where(torch.from_numpy(vis), s, torch.tensor(float("-inf"), dtype=s.dtype))
    if sinks is not None:
        sink_col = sinks.to(s.dtype).reshape(1, hq, 1, 1).expand(b, hq, sq, 1)
        s = torch.cat([s, sink_col], dim=-1)
    lse = torch.logsumexp(s, dim=-1)
    p = torch.exp(s - torch.where(torch.isinf(lse), torch.zeros_like(lse), lse)[..., None])
    if sinks is not None:
        p = p[..., :-1]
    out = torch.einsum("bhqk,bkhd->bqhd", p, v.repeat_interleave(group, 2))
    return out, lse


SHAPE = (2, 9, 13, 4, 2, 16, 16)
MODS = {
    "softcap": {"softcap": 1.5},
    "alibi": {"alibi": (4,)},
    "alibi_per_batch": {"alibi": (2, 4)},
    "sinks": {"sinks": True},
    "all": {"softcap": 2.0, "alibi": (4,), "sinks": True},
}


def operands(rng, dtype, mods):
    b, sq, sk, hq, hkv, d, dv = SHAPE
    q, k, v = (randn(rng, (b, s, h, w), dtype, 1.5) for s, h, w in ((sq, hq, d), (sk, hkv, d), (sk, hkv, dv)))
    dout = randn(rng, (b, sq, hq, dv), dtype)
    slopes = (0.5 ** np.arange(1, 1 + np.prod(mods["alibi"]))).reshape(mods["alibi"]).astype(np.float32) \
        if "alibi" in mods else None
    sinks = rng.normal(0.5, 1.0, hq).astype(np.float32) if mods.get("sinks") else None
    return q, k, v, dout, slopes, sinks


def check(got, want, base, dtype, what):
    """The accuracy rule for f32 and bf16; f64 (whose baseline is the reference itself) within
    1e-12 relative, dsinks (float32 whatever the inputs) within its rounding."""
    if dtype == "f64":
        tol = 2.0 ** -23 if what == "dsinks" else 1e-12
        np.testing.assert_allclose(to64(got), want, rtol=tol, atol=tol * np.max(np.abs(want)), err_msg=what)
    else:
        assert_accurate(got, want, base, dtype, what=what, k=3.0)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("dtype,algorithm", [("f32", "auto"), ("f32", "naive"), ("bf16", "auto"),
                                             ("f64", "naive")])
@pytest.mark.parametrize("mods", sorted(MODS))
def test_forward_and_backward_match_the_definition(rng, kind, dtype, algorithm, mods):
    if kind == "numpy" and dtype == "bf16":
        pytest.skip("numpy has no bfloat16")
    m = MODS[mods]
    q, k, v, dout, slopes, sinks = operands(rng, dtype, m)
    vis = visible(SHAPE[1], SHAPE[2], True, "bottom_right")
    tdt = {"f32": torch.float32, "bf16": torch.bfloat16, "f64": torch.float64}[dtype]

    def run_definition(t):
        leaves = [torch.tensor(x, dtype=t, requires_grad=True) for x in (q, k, v)]
        tsinks = None if sinks is None else torch.tensor(sinks, dtype=t, requires_grad=True)
        out, lse = definition(*leaves, vis, m.get("softcap", 0.0),
                              None if slopes is None else torch.tensor(slopes), tsinks, "bottom_right")
        (out * torch.tensor(dout, dtype=t)).sum().backward()
        grads = [to64(x.grad) for x in leaves] + ([to64(tsinks.grad)] if tsinks is not None else [])
        return to64(out), to64(lse), grads

    ref_out, ref_lse, ref_grads = run_definition(torch.float64)
    base_out, _, base_grads = run_definition(tdt if dtype != "f64" else torch.float64)

    args = [as_kind(x, kind, dtype) for x in (q, k, v)]
    extra = {"softcap": m.get("softcap", 0.0), "causal": True, "align": "bottom_right",
             "algorithm": algorithm}
    if slopes is not None:
        extra["alibi_slopes"] = as_kind(slopes, kind, "f32")
    if sinks is not None:
        extra["sinks"] = as_kind(sinks, kind, "f32")
    out, lse = memattn.attention(*args, return_lse=True, **extra)
    check(out, ref_out, base_out, dtype, "out")
    finite = np.isfinite(ref_lse)
    np.testing.assert_allclose(to64(lse)[finite], ref_lse[finite], rtol=1e-2 if dtype == "bf16" else 1e-5,
                               atol=1e-2 if dtype == "bf16" else 1e-5)
    grads = memattn.attention_backward(*args, out, as_kind(dout, kind, dtype), lse,
                                       sinks_grad=sinks is not None, **extra)
    assert len(grads) == 3 + (sinks is not None)
    for name, got, want, base in zip(("dq", "dk", "dv", "dsinks"), grads, ref_grads, base_grads):
        check(got, want, base, "f32" if name == "dsinks" and dtype != "f64" else dtype, name)


def test_fully_masked_rows_give_the_sink():
    q, k, v = (np.ones((1, 4, 2, 8), np.float32) for _ in range(3))
    sinks = np.array([0.25, -1.0], np.float32)
    out, lse = memattn.attention(q, k[:, :2], v[:, :2], causal=True, align="bottom_right",
                                 sinks=sinks, return_lse=True)
    # Rows 0 and 1 see no key (seq_q 4 > seq_k 2): out 0 and lse = the sink.
    assert np.all(out[:, :2] == 0)
    np.testing.assert_array_equal(lse[0, :, :2], np.repeat(sinks[:, None], 2, axis=1))


def test_errors_name_the_argument(rng):
    q = randn(rng, (1, 3, 2, 8)).astype(np.float32)
    for kwargs, message, exc in [
        ({"softcap": -1.0}, "softcap must be finite and >= 0 (0: off), got -1", ValueError),
        ({"softcap": float("nan")}, "softcap must be finite and >= 0 (0: off), got nan", ValueError),
        ({"sinks": np.zeros(3, np.float32)}, "sinks: shape [3] expected [2] ([heads_q])", ValueError),
        ({"sinks": np.zeros(2, np.float64)}, "sinks: dtype must be f32, got f64", TypeError),
        ({"alibi_slopes": np.array([1.0, np.inf], np.float32)},
         "alibi_slopes: values must be finite, got inf at [1]", ValueError),
    ]:
        out = np.full((1, 3, 2, 8), 7.0, np.float32)
        with pytest.raises(exc, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                           .replace(")", r"\)")):
            memattn.attention(q, q, q, out=out, **kwargs)
        assert np.all(out == 7.0), "out written before the error"
    with pytest.raises(TypeError, match="softcap must be a float"):
        memattn.attention(q, q, q, softcap="1")
    out, lse = memattn.attention(q, q, q, return_lse=True)
    with pytest.raises(ValueError, match="sinks_grad=True .* needs sinks"):
        memattn.attention_backward(q, q, q, out, out, lse, sinks_grad=True)


def test_torch_autograd_gradcheck():
    """memattn.torch.attention: gradients of q, k, v and the sinks by gradcheck (float64, the
    naive backward) with a softcap and ALiBi slopes."""
    import memattn.torch as mt
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 5, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
    k = torch.randn(1, 6, 1, 4, dtype=torch.float64, generator=g, requires_grad=True)
    v = torch.randn(1, 6, 1, 3, dtype=torch.float64, generator=g, requires_grad=True)
    sinks = torch.tensor([0.3, -0.4], dtype=torch.float32, requires_grad=True)
    slopes = torch.tensor([0.5, 0.25], dtype=torch.float32)

    def f(q, k, v, sinks):
        return mt.attention(q, k, v, causal=True, softcap=1.5, alibi_slopes=slopes, sinks=sinks)

    assert torch.autograd.gradcheck(lambda q, k, v: f(q, k, v, sinks.detach()), (q, k, v))
    # The sinks are float32 (memattn's dtype for them), too coarse for finite differences: their
    # gradient is checked against the definition's autograd.
    out = f(q, k, v, sinks)
    s64 = sinks.detach().double().requires_grad_()
    ref, _ = definition(q, k, v, visible(5, 6, True), 1.5, slopes, s64)
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(sinks.grad.double(), s64.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="alibi_slopes requires grad"):
        mt.attention(q, k, v, alibi_slopes=slopes.clone().requires_grad_())


def test_torch_autograd_f32_matches_the_definition():
    import memattn.torch as mt
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 7, 4, 16, generator=g, requires_grad=True)
    k = torch.randn(2, 9, 2, 16, generator=g, requires_grad=True)
    v = torch.randn(2, 9, 2, 16, generator=g, requires_grad=True)
    sinks = torch.tensor([0.3, -0.4, 1.0, 0.0], requires_grad=True)
    slopes = torch.tensor([[0.5, 0.25, 0.125, 0.0625], [0.4, 0.2, 0.1, 0.05]])
    out = mt.attention(q, k, v, softcap=2.0, alibi_slopes=slopes, sinks=sinks)
    out.sum().backward()
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v, sinks)]
    ref, _ = definition(*leaves[:3], visible(7, 9), 2.0, slopes, leaves[3])
    ref.sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    for got, want in zip((q, k, v, sinks), leaves):
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=1e-4, atol=1e-4)
