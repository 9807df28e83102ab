"""Torch test helpers: float64 attention reference, same-precision baseline, accuracy rule."""

import math

import torch

# Unit roundoff of each dtype (half an ulp at 1).
UNIT_ROUNDOFF = {torch.float64: 2.0 ** -53, torch.float32: 2.0 ** -24,
                 torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}


def causal_keep(lq: int, sk: int) -> torch.Tensor:
    """PyTorch's is_causal (top-left): query i sees keys j <= i; True = attend."""
    return torch.ones(lq, sk, dtype=torch.bool).tril()


def _scores_and_values(q, k, v, attn_mask, is_causal, scale, enable_gqa):
    """scale * q k^T (+ float mask, -inf where masked) and the values, on PyTorch's layout."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        group = q.shape[-3] // k.shape[-3]
        k, v = k.repeat_interleave(group, dim=-3), v.repeat_interleave(group, dim=-3)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        attn_mask = causal_keep(q.shape[-2], k.shape[-2])
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = scores + attn_mask.to(scores.dtype)
    return scores, v


def reference_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """softmax(q k^T * scale + mask) v in float64 on the exact input values; differentiable."""
    q, k, v = q.double(), k.double(), v.double()
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask.double()
    scores, v = _scores_and_values(q, k, v, attn_mask, is_causal, scale, enable_gqa)
    return torch.softmax(scores, dim=-1) @ v


def naive_sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, enable_gqa=False):
    """The naive computation in the inputs' precision (the accuracy rule's baseline).

    f32: scores, softmax and P V in f32. f16/bf16: f32 arithmetic, but the scores and the
    probabilities are rounded to the dtype, and so is the output (torch 1.13 has no reduced
    precision CPU matmul); autograd rounds the gradients at the same points.
    """
    dt = q.dtype
    q32, k32, v32 = q.float(), k.float(), v.float()
    scores, v32 = _scores_and_values(q32, k32, v32, attn_mask, is_causal, scale, enable_gqa)
    probs = torch.softmax(scores.to(dt).float(), dim=-1).to(dt).float()
    return (probs @ v32).to(dt)


def accuracy_floor(ref64: torch.Tensor, dtype: torch.dtype) -> float:
    """Rounding noise of `dtype` at the reference's magnitude (docs/api.md's floor(O))."""
    if ref64.numel() == 0:
        return 0.0
    shifted = (ref64 + 0.3).to(dtype).double() - 0.3 - ref64
    return 2 * shifted.abs().max().item() + 4 * UNIT_ROUNDOFF[dtype] * ref64.abs().max().item()


def max_error(x: torch.Tensor, ref64: torch.Tensor) -> float:
    return (x.double() - ref64).abs().max().item() if ref64.numel() else 0.0


def assert_accurate(name: str, got, ref64, base, k: float = 2.0) -> None:
    """docs/api.md's rule: err(got) <= k * err(naive same-precision) + floor, against float64.

    k = 2 for outputs and 3 for gradients (the project's test plan).
    """
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    assert got.dtype == base.dtype, f"{name}: dtype {got.dtype} != {base.dtype}"
    assert not torch.isnan(got).any(), f"{name}: NaN"
    err, base_err = max_error(got, ref64), max_error(base, ref64)
    bound = k * base_err + accuracy_floor(ref64, got.dtype)
    assert err <= bound, (f"{name}: error {err:.3e} > {k} * baseline {base_err:.3e} + floor "
                          f"= {bound:.3e}")


def random_keep_mask(shape, generator, p_keep: float = 0.7) -> torch.Tensor:
    """A random boolean mask (True = attend) whose key 0 is always visible: no row is empty."""
    keep = torch.rand(shape, generator=generator) < p_keep
    keep[..., 0] = True
    return keep
