"""PyTorch front end of memattn: differentiable scaled_dot_product_attention, MultiheadAttention."""

import math
from typing import Optional, Tuple

import torch

from . import attention as _memattn_attention
from . import attention_backward as _memattn_attention_backward

__all__ = ["scaled_dot_product_attention", "attention", "varlen_attention", "MultiheadAttention",
           "CUSTOM_OP_AVAILABLE"]

_FLOATING = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _empty_in_layout_of(ref: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor of `shape` whose dimensions lie in memory in the order of `ref`'s.

    Outputs and gradients then share their input's layout, so the transposes that convert between
    PyTorch's [B, H, L, E] and memattn's [B, L, H, E] stay views on both sides.
    """
    order = sorted(range(ref.dim()), key=lambda i: -abs(ref.stride(i)))  # stable: ties keep order
    storage = ref.new_empty([shape[i] for i in order], dtype=dtype)
    return storage.permute([order.index(i) for i in range(ref.dim())])


def _forward(q, k, v, mask, bias, causal: bool, scale: Optional[float], softcap: float = 0.0,
             alibi_slopes=None, sinks=None):
    """memattn's forward on [B, L, H, E] operands: (out [B, L, H, Ev], lse f32 [B, H, L])."""
    out = _empty_in_layout_of(q, (*q.shape[:3], v.shape[3]), q.dtype)
    # algorithm "auto" resolves to flash for f32/bf16/f16 and to chunked for f64.
    return _memattn_attention(q, k, v, causal=causal, mask=mask, bias=bias, scale=scale,
                              return_lse=True, out=out, softcap=softcap,
                              alibi_slopes=alibi_slopes, sinks=sinks)


def _backward(q, k, v, out, lse, dout, mask, bias, causal: bool, scale: Optional[float],
              bias_grad: bool, softcap: float = 0.0, alibi_slopes=None, sinks=None,
              sinks_grad: bool = False):
    """memattn's backward: (dq, dk, dv, dbias or None, dsinks or None), each in its operand's
    layout and dtype."""
    dq = _empty_in_layout_of(q, q.shape, q.dtype)
    dk = _empty_in_layout_of(k, k.shape, k.dtype)
    dv = _empty_in_layout_of(v, v.shape, v.dtype)
    dbias = _empty_in_layout_of(bias, bias.shape, bias.dtype) if bias_grad else None
    dsinks = torch.empty(sinks.shape, dtype=torch.float32) if sinks_grad else None
    # The flash backward takes f32/bf16/f16 only; f64 (gradcheck) goes through the naive one.
    algorithm = "naive" if q.dtype == torch.float64 else "auto"
    grads = _memattn_attention_backward(
        q, k, v, out, dout, lse, causal=causal, align="top_left", window=None, mask=mask,
        bias=bias, scale=scale, algorithm=algorithm, num_threads=0, dq=dq, dk=dk, dv=dv,
        bias_grad=bias_grad, dbias=dbias, softcap=softcap, alibi_slopes=alibi_slopes,
        sinks=sinks, dsinks=dsinks)
    return (*grads[:3], dbias, dsinks)


class _AttentionFunction(torch.autograd.Function):
    """Autograd for memattn on [B, L, H, E] operands; saves out and lse, never the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias, causal, scale, softcap, alibi_slopes, sinks):
        out, lse = _forward(q, k, v, mask, bias, causal, scale, softcap, alibi_slopes, sinks)
        ctx.save_for_backward(q, k, v, out, lse, mask, bias, alibi_slopes, sinks)
        ctx.causal, ctx.scale, ctx.softcap = causal, scale, softcap
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, mask, bias, alibi_slopes, sinks = ctx.saved_tensors
        bias_grad = bias is not None and ctx.needs_input_grad[4]
        sinks_grad = sinks is not None and ctx.needs_input_grad[9]
        dq, dk, dv, dbias, dsinks = _backward(q, k, v, out, lse, dout, mask, bias, ctx.causal,
                                              ctx.scale, bias_grad, ctx.softcap, alibi_slopes,
                                              sinks, sinks_grad)
        return dq, dk, dv, None, dbias, None, None, None, None, dsinks


class _VarlenFunction(torch.autograd.Function):
    """Autograd for memattn's variable-length batches: packed [1, total, H, E] operands and their
    cu_seqlens (FlashAttention's flash_attn_varlen_func); saves out and lse, not the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, align, scale):
        flags = dict(causal=causal, align=align, scale=scale, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k,
                     max_seqlen_q=max_q, max_seqlen_k=max_k)
        out = _empty_in_layout_of(q, (*q.shape[:3], v.shape[3]), q.dtype)
        out, lse = _memattn_attention(q, k, v, return_lse=True, out=out, **flags)
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
        ctx.flags = flags
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
        flags = dict(ctx.flags, cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
        algorithm = "naive" if q.dtype == torch.float64 else "auto"
        dq, dk, dv = _memattn_attention_backward(q, k, v, out, dout.contiguous(), lse,
                                                 algorithm=algorithm, **flags)
        return dq, dk, dv, None, None, None, None, None, None, None


def varlen_attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q=None, max_seqlen_k=None,
                     causal=False, align="top_left", scale=None) -> torch.Tensor:
    """Differentiable attention over a variable-length batch: q [1, total_q, Hq, E], k, v
    [1, total_k, Hkv, E|Ev] packed along dim 1; sequence b is query rows cu_seqlens_q[b] ..
    cu_seqlens_q[b+1] against key rows cu_seqlens_k[b] .. cu_seqlens_k[b+1] (int32/int64 tensors
    of batch + 1 offsets). Causal and window per sequence; returns out [1, total_q, Hq, Ev].
    Gradients reach q, k and v (memattn.attention_backward)."""
    for name, cu in (("cu_seqlens_q", cu_seqlens_q), ("cu_seqlens_k", cu_seqlens_k)):
        if not isinstance(cu, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (int32 or int64), got {type(cu).__name__}")
    return _VarlenFunction.apply(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                 causal, align, scale)[0]


def _torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


# torch.library.custom_op (torch >= 2.4) lets torch.compile trace through memattn: the op is opaque
# to the compiler, its fake implementation gives the output shapes and strides, and its autograd
# formula calls a second opaque op for the gradients.
CUSTOM_OP_AVAILABLE = _torch_version() >= (2, 4) and hasattr(torch.library, "custom_op")

if CUSTOM_OP_AVAILABLE:
    @torch.library.custom_op("memattn::attention", mutates_args=())
    def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: Optional[torch.Tensor], bias: Optional[torch.Tensor], causal: bool,
                      scale: Optional[float], softcap: float, alibi_slopes: Optional[torch.Tensor],
                      sinks: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        return tuple(_forward(q, k, v, mask, bias, causal, scale, softcap, alibi_slopes, sinks))

    @_attention_op.register_fake
    def _(q, k, v, mask, bias, causal, scale, softcap, alibi_slopes, sinks):
        out = _empty_in_layout_of(q, (*q.shape[:3], v.shape[3]), q.dtype)
        return out, q.new_empty((q.shape[0], q.shape[2], q.shape[1]), dtype=torch.float32)

    @torch.library.custom_op("memattn::attention_backward", mutates_args=())
    def _attention_backward_op(
            q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
            lse: torch.Tensor, dout: torch.Tensor, mask: Optional[torch.Tensor],
            bias: Optional[torch.Tensor], causal: bool, scale: Optional[float],
            bias_grad: bool, softcap: float, alibi_slopes: Optional[torch.Tensor],
            sinks: Optional[torch.Tensor], sinks_grad: bool
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        dq, dk, dv, dbias, dsinks = _backward(q, k, v, out, lse, dout, mask, bias, causal, scale,
                                              bias_grad, softcap, alibi_slopes, sinks, sinks_grad)
        # An op cannot return None: empty tensors stand for the gradients not requested.
        return (dq, dk, dv, dbias if bias_grad else q.new_empty(0),
                dsinks if sinks_grad else q.new_empty(0))

    @_attention_backward_op.register_fake
    def _(q, k, v, out, lse, dout, mask, bias, causal, scale, bias_grad, softcap, alibi_slopes,
          sinks, sinks_grad):
        return (_empty_in_layout_of(q, q.shape, q.dtype), _empty_in_layout_of(k, k.shape, k.dtype),
                _empty_in_layout_of(v, v.shape, v.dtype),
                _empty_in_layout_of(bias, bias.shape, bias.dtype) if bias_grad
                else q.new_empty(0),
                sinks.new_empty(sinks.shape, dtype=torch.float32) if sinks_grad
                else q.new_empty(0))

    def _setup_context(ctx, inputs, output):
        q, k, v, mask, bias, causal, scale, softcap, alibi_slopes, sinks = inputs
        out, lse = output
        ctx.save_for_backward(q, k, v, out, lse, mask, bias, alibi_slopes, sinks)
        ctx.causal, ctx.scale, ctx.softcap = causal, scale, softcap
        ctx.mark_non_differentiable(lse)

    def _attention_op_backward(ctx, dout, _dlse):
        q, k, v, out, lse, mask, bias, alibi_slopes, sinks = ctx.saved_tensors
        bias_grad = bias is not None and ctx.needs_input_grad[4]
        sinks_grad = sinks is not None and ctx.needs_input_grad[9]
        dq, dk, dv, dbias, dsinks = _attention_backward_op(
            q, k, v, out, lse, dout, mask, bias, ctx.causal, ctx.scale, bias_grad, ctx.softcap,
            alibi_slopes, sinks, sinks_grad)
        return (dq, dk, dv, None, dbias if bias_grad else None, None, None, None, None,
                dsinks if sinks_grad else None)

    _attention_op.register_autograd(_attention_op_backward, setup_context=_setup_context)
    _attention_bshd_impl = _attention_op
else:
    _attention_bshd_impl = _AttentionFunction.apply


def _attention_bshd(q, k, v, mask=None, bias=None, causal=False, scale=None, softcap=0.0,
                    alibi_slopes=None, sinks=None) -> torch.Tensor:
    """Differentiable memattn attention on [B, L, H, E] operands; returns out [B, L, H, Ev].

    mask: bool, True = attend; bias: float, added to the scores; both broadcastable as
    [B|1, H|1, L|1, S|1]. Gradients reach q, k, v, the bias and the sinks.
    """
    return _attention_bshd_impl(q, k, v, mask, bias, causal, scale, float(softcap), alibi_slopes,
                                sinks)[0]


def attention(query, key, value, *, causal=False, scale=None, softcap=0.0, alibi_slopes=None,
              sinks=None):
    """Differentiable memattn attention with score modifiers, on memattn's own layout:
    query [B, L, H, E], key [B, S, Hkv, E], value [B, S, Hkv, Ev] -> [B, L, H, Ev] (H a multiple
    of Hkv; causal is top-left). softcap > 0 caps the scaled scores as softcap * tanh(s / softcap)
    (Gemma 2); alibi_slopes: float32 [H] or [B, H], adds -slope * |i - j| (no gradient); sinks:
    float32 [H], one logit per head in each row's softmax denominator (gpt-oss), differentiable.
    """
    _check_operands(query, key, value)
    for name, t in (("alibi_slopes", alibi_slopes), ("sinks", sinks)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be None or a torch.Tensor, got {type(t).__name__}")
    if alibi_slopes is not None and alibi_slopes.requires_grad:
        raise ValueError("alibi_slopes requires grad, but memattn gives ALiBi slopes no gradient; "
                         "pass alibi_slopes.detach()")
    return _attention_bshd(query, key, value, None, None, bool(causal),
                           None if scale is None else float(scale), softcap, alibi_slopes, sinks)


def _check_operands(query, key, value):
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.device.type != "cpu":
            raise ValueError(f"{name} is on {t.device}; memattn runs on CPU tensors only")
        if t.dtype not in _FLOATING:
            raise TypeError(f"{name}.dtype must be one of float32, float16, bfloat16, float64, "
                            f"got {t.dtype}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have at least 2 dims ([..., seq, dim]), got shape "
                             f"{tuple(t.shape)}")
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"query, key and value must have the same dtype, got {query.dtype}, "
                        f"{key.dtype} and {value.dtype}")


def _heads_for_memattn(hq: int, hkv: int, enable_gqa: bool) -> None:
    """Accepts the head counts PyTorch accepts; query head h reads kv head h // (hq / hkv)."""
    if hq == hkv or (hkv == 1 and not enable_gqa):  # one kv head broadcasts, as matmul would
        return
    if not enable_gqa:
        raise ValueError(f"query has {hq} heads but key/value have {hkv}; pass enable_gqa=True "
                         "for grouped-query attention")
    if hq % hkv != 0:
        raise ValueError(f"enable_gqa: query heads ({hq}) must be a multiple of key/value heads "
                         f"({hkv})")


def _flatten_batch(t: torch.Tensor, batch, b: int) -> torch.Tensor:
    """[*batch|1s, x, y, z] -> [b, x, y, z]: a view unless the batch dims have no common stride.

    reshape copies only then (a broadcast over some batch dims but not others, or permuted batch
    dims); that copy is of an input and, being differentiable, keeps autograd intact.
    """
    t = t.reshape((1,) * (len(batch) + 3 - t.dim()) + tuple(t.shape))
    if all(n == 1 for n in t.shape[:-3]):
        return t.reshape(1, *t.shape[-3:])
    return t.expand(*batch, *t.shape[-3:]).reshape(b, *t.shape[-3:])


def _attn_mask_for_memattn(attn_mask, query, batch, b, target):
    """PyTorch's attn_mask as memattn's (mask, bias) [B|1, H|1, L|1, S|1]; a view where possible."""
    if attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask.dtype must be bool (True = attend) or floating (added to the "
                        f"scores), got {attn_mask.dtype}")
    try:
        fits = torch.broadcast_shapes(attn_mask.shape, target) == torch.Size(target)
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)} is not broadcastable to the "
                         f"attention shape {tuple(target)}")
    m = _flatten_batch(attn_mask, batch, b)
    if m.dtype == torch.bool:
        return m, None
    if m.dtype == torch.float64 and query.dtype != torch.float64:
        m = m.to(query.dtype)  # memattn takes an f64 bias with f64 inputs only; PyTorch casts too
    return None, m


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """torch.nn.functional.scaled_dot_product_attention (PyTorch 2.5 semantics) through memattn.

    query [..., H, L, E], key [..., Hkv, S, E], value [..., Hkv, S, Ev] -> [..., H, L, Ev];
    the leading dims broadcast. attn_mask: bool (True = attend) or float (added to the scores),
    broadcastable to [..., H, L, S]. is_causal: query i sees keys j <= i (top-left). scale: None
    is 1/sqrt(E). enable_gqa: H a multiple of Hkv, head h reads kv head h // (H / Hkv).
    Deviations: dropout_p must be 0; a row with no visible key gives 0 (PyTorch gives NaN).
    """
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p must be 0.0: memattn does not implement attention dropout "
                         f"(got {dropout_p})")
    if is_causal and attn_mask is not None:
        raise ValueError("attn_mask must be None when is_causal=True (as in PyTorch); fold the "
                         "causal mask into attn_mask or drop it")
    _check_operands(query, key, value)
    rank = max(query.dim(), key.dim(), value.dim())
    nd = max(rank, 3)  # [H, L, E] needs at least 3 dims; a 2-D input is one head
    q, k, v = (t.reshape((1,) * (nd - t.dim()) + tuple(t.shape)) for t in (query, key, value))
    (hq, lq, e), (hk, sk, ek), (hv, sv, ev) = q.shape[-3:], k.shape[-3:], v.shape[-3:]
    if ek != e:
        raise ValueError(f"key's last dim ({ek}) must equal query's ({e})")
    if (hv, sv) != (hk, sk):
        raise ValueError(f"value's heads and seq ({hv}, {sv}) must equal key's ({hk}, {sk})")
    _heads_for_memattn(hq, hk, enable_gqa)
    try:
        batch = tuple(torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3]))
    except RuntimeError as err:
        raise ValueError(f"the batch dims of query {tuple(query.shape)}, key {tuple(key.shape)} "
                         f"and value {tuple(value.shape)} do not broadcast") from err
    b = math.prod(batch)
    q4, k4, v4 = (_flatten_batch(t, batch, b) for t in (q, k, v))
    mask = bias = None
    if attn_mask is not None:
        mask, bias = _attn_mask_for_memattn(attn_mask, query, batch, b, (*batch, hq, lq, sk))
    out = _attention_bshd(q4.transpose(1, 2), k4.transpose(1, 2), v4.transpose(1, 2), mask, bias,
                          bool(is_causal), None if scale is None else float(scale))
    return out.transpose(1, 2).reshape((*batch, hq, lq, ev)[-rank:])


from ._torch_mha import MultiheadAttention  # noqa: E402  (it builds on _attention_bshd above)
