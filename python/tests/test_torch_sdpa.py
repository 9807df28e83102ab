"""memattn.torch.scaled_dot_product_attention against a float64 reference: values, grads, errors."""

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import pytest

torch = pytest.importorskip("torch")
import memattn.torch as mt  # noqa: E402  (a broken build must fail, not skip)

from torch_support import (assert_accurate, naive_sdpa, random_keep_mask,  # noqa: E402
                           reference_sdpa)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@dataclass
class Case:
    name: str
    batch: Tuple[int, ...]
    hq: int
    lq: int
    sk: int
    e: int = 8
    ev: int = 8
    hkv: Optional[int] = None  # None: hq
    kv_batch: Optional[Tuple[int, ...]] = None  # None: batch
    mask: Optional[str] = None  # "bool" or "float"
    mask_shape: Tuple[int, ...] = ()
    is_causal: bool = False
    scale: Optional[float] = None
    enable_gqa: bool = False


CASES = [
    Case("plain", (2,), 2, 9, 13, 16, 16),
    Case("no_batch_dims", (), 3, 5, 7),
    Case("two_batch_dims", (2, 3), 2, 4, 6),
    Case("ev_ne_e", (2,), 2, 6, 10, 16, 5),
    Case("bool_mask_full", (2,), 2, 7, 11, mask="bool", mask_shape=(2, 2, 7, 11)),
    Case("bool_mask_2d", (2, 3), 2, 7, 11, mask="bool", mask_shape=(7, 11)),
    Case("bool_mask_per_batch", (2,), 2, 7, 11, mask="bool", mask_shape=(2, 1, 7, 11)),
    Case("float_mask_full", (2,), 2, 7, 11, mask="float", mask_shape=(2, 2, 7, 11)),
    Case("float_mask_1d", (2,), 2, 7, 11, mask="float", mask_shape=(11,)),
    Case("float_mask_rank3", (2, 3), 2, 7, 11, mask="float", mask_shape=(1, 7, 11)),
    Case("float_mask_inner_batch", (2, 3), 2, 5, 9, mask="float", mask_shape=(3, 1, 1, 9)),
    Case("float_mask_key_broadcast", (2,), 2, 7, 11, mask="float", mask_shape=(7, 1)),
    Case("causal_square", (2,), 2, 9, 9, is_causal=True),
    Case("causal_l_lt_s", (2,), 2, 5, 12, is_causal=True),
    Case("causal_l_gt_s", (2,), 2, 12, 5, is_causal=True),
    Case("gqa", (2,), 4, 6, 9, hkv=2, enable_gqa=True),
    Case("gqa_float_mask", (2,), 6, 6, 9, hkv=2, enable_gqa=True, mask="float",
         mask_shape=(6, 6, 9)),
    Case("gqa_causal", (1,), 4, 7, 7, hkv=1, enable_gqa=True, is_causal=True),
    Case("one_kv_head_broadcast", (2,), 3, 6, 9, hkv=1),
    Case("scale_bool_mask", (2,), 2, 7, 11, mask="bool", mask_shape=(7, 11), scale=0.3),
    Case("kv_batch_broadcast", (2, 3), 2, 5, 8, kv_batch=(3,)),
]


def make_inputs(case: Case, dtype, seed: int):
    """q, k, v (and the mask) in `dtype`, PyTorch layout, plus float64 leaf copies of each."""
    g = torch.Generator().manual_seed(seed)
    hkv = case.hq if case.hkv is None else case.hkv
    kv_batch = case.batch if case.kv_batch is None else case.kv_batch
    shapes = [(*case.batch, case.hq, case.lq, case.e), (*kv_batch, hkv, case.sk, case.e),
              (*kv_batch, hkv, case.sk, case.ev)]
    qkv = [torch.randn(s, generator=g).to(dtype).requires_grad_() for s in shapes]
    mask = None
    if case.mask == "bool":
        mask = random_keep_mask(case.mask_shape, g)
    elif case.mask == "float":
        mask = (2 * torch.randn(case.mask_shape, generator=g)).to(dtype)
        mask.requires_grad_(case.mask_shape[-1] != 1)  # a key-broadcast bias has gradient 0
    leaves = [t for t in (*qkv, mask) if t is not None and t.requires_grad]
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    return qkv, mask, leaves, leaves64, g


def kwargs_of(case: Case):
    return dict(is_causal=case.is_causal, scale=case.scale, enable_gqa=case.enable_gqa)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).split(".")[-1])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_matches_float64_reference(case, dtype):
    (q, k, v), mask, leaves, leaves64, g = make_inputs(case, dtype, seed=len(case.name))
    out = mt.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs_of(case))

    args64 = leaves64[:3] + ([leaves64[3]] if len(leaves64) > 3 else [mask])
    ref = reference_sdpa(*args64, **kwargs_of(case))
    base = naive_sdpa(q, k, v, mask, **kwargs_of(case))
    assert out.dtype == dtype
    assert_accurate("out", out, ref.detach(), base.detach())

    dout = torch.randn(out.shape, generator=g).to(dtype)
    grads = torch.autograd.grad(out, leaves, dout)
    ref_grads = torch.autograd.grad(ref, leaves64, dout.double())
    base_grads = torch.autograd.grad(base, leaves, dout)
    for name, got, r, b in zip(("dq", "dk", "dv", "dmask"), grads, ref_grads, base_grads):
        assert_accurate(name, got, r, b, k=3.0)


@pytest.mark.parametrize("batch_dims", [(), (2,), (2, 1, 3)])
def test_leading_dims_and_rank2_inputs(batch_dims):
    g = torch.Generator().manual_seed(7)
    q = torch.randn(*batch_dims, 6, 8, generator=g)  # no head dim: [..., L, E], as matmul takes it
    k, v = torch.randn(*batch_dims, 9, 8, generator=g), torch.randn(*batch_dims, 9, 4, generator=g)
    out = mt.scaled_dot_product_attention(q, k, v)
    ref = reference_sdpa(q, k, v)
    assert out.shape == ref.shape
    assert_accurate("out", out, ref, naive_sdpa(q, k, v))


def test_output_is_pytorch_layout_and_inputs_are_not_copied(monkeypatch):
    seen = {}

    def spy(q, k, v, **kwargs):
        seen.update(q=q, k=k, v=v, **kwargs)
        return real(q, k, v, **kwargs)

    real = mt._memattn_attention
    monkeypatch.setattr(mt, "_memattn_attention", spy)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.randn(7)
    out = mt.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.is_contiguous() and out.shape == (2, 3, 5, 8)
    for name, t in (("q", q), ("k", k), ("v", v), ("bias", mask)):
        assert seen[name].data_ptr() == t.data_ptr(), f"{name} was copied"
    assert seen["bias"].shape == (1, 1, 1, 7) and seen["q"].shape == (2, 5, 3, 8)


def test_fully_masked_row_gives_zero_not_nan():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g, requires_grad=True) for _ in range(3))
    keep = random_keep_mask((4, 4), g)
    keep[2] = False  # query 2 may see no key: PyTorch's math path gives NaN, memattn 0
    out = mt.scaled_dot_product_attention(q, k, v, attn_mask=keep)
    assert torch.equal(out[:, :, 2], torch.zeros(1, 2, 8))
    rows = [0, 1, 3]
    ref = reference_sdpa(q, k, v, keep)
    assert_accurate("out", out[:, :, rows], ref[:, :, rows].detach(),
                    naive_sdpa(q, k, v, keep)[:, :, rows].detach())
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert torch.equal(q.grad[:, :, 2], torch.zeros(1, 2, 8))  # the empty row has no gradient


def torch_own_sdpa():
    """PyTorch's own attention: F.scaled_dot_product_attention (>= 2.0) or 1.13's private one."""
    F = torch.nn.functional
    if hasattr(F, "scaled_dot_product_attention"):
        return lambda q, k, v, mask, causal: F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal)
    if hasattr(F, "_scaled_dot_product_attention"):  # torch 1.13: bool masks, returns (out, w)
        return lambda q, k, v, mask, causal: F._scaled_dot_product_attention(
            q, k, v, mask, 0.0, False, causal)[0]
    return None


@pytest.mark.skipif(torch_own_sdpa() is None,
                    reason="this torch has no scaled_dot_product_attention")
@pytest.mark.parametrize("variant", ["bool_mask", "causal", "float_mask"])
def test_agrees_with_torch_own_sdpa(variant):
    if variant == "float_mask" and not hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        pytest.skip("torch 1.13's private attention takes boolean masks only")
    g = torch.Generator().manual_seed(11)
    q, k, v = (torch.randn(2, 3, 10, 16, generator=g) for _ in range(3))
    mask = {"bool_mask": random_keep_mask((2, 3, 10, 10), g), "causal": None,
            "float_mask": torch.randn(3, 1, 10, generator=g)}[variant]
    causal = variant == "causal"
    theirs = torch_own_sdpa()(q, k, v, mask, causal)
    ours = mt.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    ref = reference_sdpa(q, k, v, mask, causal)
    assert_accurate("torch's own", theirs, ref, naive_sdpa(q, k, v, mask, causal))
    assert_accurate("memattn", ours, ref, theirs)  # at most twice torch's own error + rounding


@pytest.mark.parametrize("variant", ["plain", "causal", "float_mask", "bool_mask_gqa"])
def test_gradcheck_float64(variant):
    g = torch.Generator().manual_seed(5)
    hkv = 1 if variant == "bool_mask_gqa" else 2
    q = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, hkv, 7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, hkv, 7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    inputs, kwargs = [q, k, v], {}
    if variant == "causal":
        kwargs["is_causal"] = True
    elif variant == "float_mask":
        inputs.append(torch.randn(2, 1, 5, 7, generator=g, dtype=torch.float64,
                                  requires_grad=True))
    elif variant == "bool_mask_gqa":
        inputs.append(random_keep_mask((5, 7), g))
        kwargs["enable_gqa"] = True

    def f(q, k, v, mask=None):
        return mt.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)

    assert torch.autograd.gradcheck(f, tuple(inputs), eps=1e-6, atol=1e-8, rtol=1e-6)


def _qkv(hq=2, hkv=2, e=8, ek=8, dtype=torch.float32):
    return (torch.randn(1, hq, 4, e, dtype=dtype), torch.randn(1, hkv, 5, ek, dtype=dtype),
            torch.randn(1, hkv, 5, 8, dtype=dtype))


@pytest.mark.parametrize("call, error, match", [
    (lambda: mt.scaled_dot_product_attention(*_qkv(), dropout_p=0.1), ValueError,
     r"dropout_p must be 0\.0.*does not implement attention dropout"),
    (lambda: mt.scaled_dot_product_attention(*_qkv(), attn_mask=torch.ones(4, 5, dtype=torch.bool),
                                             is_causal=True), ValueError,
     "attn_mask must be None when is_causal=True"),
    (lambda: mt.scaled_dot_product_attention(*_qkv(hq=4, hkv=2)), ValueError,
     r"query has 4 heads but key/value have 2; pass enable_gqa=True"),
    (lambda: mt.scaled_dot_product_attention(*_qkv(hq=3, hkv=2), enable_gqa=True), ValueError,
     r"query heads \(3\) must be a multiple of key/value heads \(2\)"),
    (lambda: mt.scaled_dot_product_attention(*_qkv(ek=6)), ValueError,
     r"key's last dim \(6\) must equal query's \(8\)"),
    (lambda: mt.scaled_dot_product_attention(*_qkv(), attn_mask=torch.zeros(4, 6)), ValueError,
     r"attn_mask shape \(4, 6\) is not broadcastable to the attention shape \(1, 2, 4, 5\)"),
    (lambda: mt.scaled_dot_product_attention(*_qkv(),
                                             attn_mask=torch.ones(4, 5, dtype=torch.int32)),
     TypeError, "attn_mask.dtype must be bool"),
    (lambda: mt.scaled_dot_product_attention(torch.randn(1, 2, 4, 8, dtype=torch.float64),
                                             *_qkv()[1:]), TypeError, "must have the same dtype"),
    (lambda: mt.scaled_dot_product_attention(*(t.int() for t in _qkv())), TypeError,
     r"query\.dtype must be one of float32"),
    (lambda: mt.scaled_dot_product_attention(torch.randn(8), torch.randn(8), torch.randn(8)),
     ValueError, "at least 2 dims"),
])
def test_documented_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_float64_mask_with_float32_inputs_is_cast_like_pytorch():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=g) for _ in range(3))
    mask = torch.randn(4, 4, generator=g, dtype=torch.float64)
    out = mt.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert_accurate("out", out, reference_sdpa(q, k, v, mask), naive_sdpa(q, k, v, mask))


def _torch_at_least(major, minor):
    return tuple(int(x) for x in torch.__version__.split(".")[:2] if x.isdigit()) >= (major, minor)


@pytest.mark.skipif(not _torch_at_least(2, 4),
                    reason="torch.library.custom_op and torch.compile tracing need torch >= 2.4")
def test_custom_op_traces_under_torch_compile():
    assert mt.CUSTOM_OP_AVAILABLE and hasattr(torch.ops.memattn, "attention")
    g = torch.Generator().manual_seed(13)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.randn(6, 6, generator=g, requires_grad=True)
    args = (q.detach().transpose(1, 2), k.detach().transpose(1, 2), v.detach().transpose(1, 2),
            None, mask.detach().view(1, 1, 6, 6), False, None)
    torch.library.opcheck(torch.ops.memattn.attention.default, args)

    def f(q, k, v, mask):
        return mt.scaled_dot_product_attention(q, k, v, attn_mask=mask).square().sum()

    eager_loss = f(q, k, v, mask)
    eager_grads = torch.autograd.grad(eager_loss, (q, k, v, mask))
    compiled_loss = torch.compile(f, fullgraph=True)(q, k, v, mask)
    compiled_grads = torch.autograd.grad(compiled_loss, (q, k, v, mask))
    torch.testing.assert_close(compiled_loss, eager_loss)
    for c, e in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(c, e)
    ref = reference_sdpa(q, k, v, mask).square().sum()
    assert math.isclose(compiled_loss.item(), ref.item(), rel_tol=1e-5)

    theirs = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    ours = mt.MultiheadAttention(16, 2, batch_first=True)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 6, 16, generator=g)
    causal = torch.ones(6, 6, dtype=torch.bool).triu(1)
    compiled = torch.compile(ours, fullgraph=True)(x, x, x, attn_mask=causal, need_weights=False)[0]
    torch.testing.assert_close(compiled, theirs(x, x, x, attn_mask=causal, need_weights=False)[0])
