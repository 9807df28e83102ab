"""memattn: exact softmax attention whose extra memory does not grow with the sequence length.

Operands are numpy arrays or CPU torch tensors laid out [batch, seq, heads, head_dim] with any
strides; memattn reads and writes them in place and never copies them. Errors from the library
arrive as ValueError, TypeError (wrong dtype) or MemoryError with the library's message and its
error code name in `.code`. torch is never imported here: `import memattn.torch` for the
torch.nn integration.
"""
import functools
import numbers

from . import _memattn
from . import _tensors as _t

__version__ = _memattn.__version__

__all__ = ["attention", "attention_backward", "attention_with_kvcache", "merge", "workspace_bytes",
           "backward_workspace_bytes", "supported_targets", "selected_target", "tile_family",
           "backward_tile_family",
           "__version__"]


def _check_type(value, name, types, expected):
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise TypeError(f"{name} must be {expected}, got {value!r}")


def _window_bound(value, name):
    if value is None:
        return -1
    _check_type(value, name, (numbers.Integral,), "an int >= 0, -1 or None (unbounded)")
    return int(value)


def _offsets(kind, value, name):
    """Offsets, lengths or a block table as an operand: an int32/int64 array or tensor as it is
    (never copied), or a (nested) list/tuple of ints as a new int64 array of the call's kind."""
    if value is None or not isinstance(value, (list, tuple)):
        return value
    if kind == _t.TORCH:
        torch = _t._torch()
        return torch.tensor(value, dtype=torch.int64)
    np = _t._numpy()
    if np is None:
        import numpy as np
    return np.asarray(value, dtype=np.int64)


def _max_seqlen(value, name):
    if value is None:
        return 0
    _check_type(value, name, (numbers.Integral,), "None (computed) or an int >= 1")
    return int(value)


def _varlen(kind, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k):
    """(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) for _options, or None (dense)."""
    if cu_seqlens_q is None and cu_seqlens_k is None and max_seqlen_q is None and max_seqlen_k is None:
        return None
    return (_offsets(kind, cu_seqlens_q, "cu_seqlens_q"), _offsets(kind, cu_seqlens_k, "cu_seqlens_k"),
            _max_seqlen(max_seqlen_q, "max_seqlen_q"), _max_seqlen(max_seqlen_k, "max_seqlen_k"))


def _options(kind, causal, align, window, mask, bias, scale, algorithm, num_threads, target,
             softcap=0.0, alibi_slopes=None, sinks=None, varlen=None, diagonal_offset=0):
    """The extension's Options for one call (mask, bias, ALiBi slopes, sinks and cu_seqlens are
    viewed, never copied); varlen: _varlen()'s tuple or None."""
    _check_type(align, "align", (str,), "'top_left' or 'bottom_right'")
    _check_type(algorithm, "algorithm", (str,),
                "one of 'auto', 'naive', 'sequential', 'chunked', 'flash'")
    _check_type(num_threads, "num_threads", (numbers.Integral,), "an int (0: the default)")
    _check_type(softcap, "softcap", (numbers.Real,), "a float >= 0 (0: off)")
    _check_type(diagonal_offset, "diagonal_offset", (numbers.Integral,),
                "an int (0: the alignment's diagonal)")
    if target is not None:
        _check_type(target, "target", (str,), "None or a name from memattn.supported_targets()")
    left = right = -1
    if window is not None:
        if isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2:
            raise TypeError(f"window must be None or a pair (left, right), each an int >= 0 or "
                            f"None/-1 for unbounded; got {window!r}")
        left = _window_bound(window[0], "window[0] (left)")
        right = _window_bound(window[1], "window[1] (right)")
    flags = (bool(causal), align, left, right, None if scale is None else float(scale), algorithm,
             _t.default_threads(kind, int(num_threads)), target, float(softcap), int(diagonal_offset))
    if mask is None and bias is None and alibi_slopes is None and sinks is None and varlen is None:
        return _plain_options(*flags)
    cu_q, cu_k, max_q, max_k = varlen if varlen is not None else (None, None, 0, 0)
    operands = [None if x is None else _t.operand(x, name)
                for x, name in ((mask, "mask"), (bias, "bias"), (alibi_slopes, "alibi_slopes"),
                                (sinks, "sinks"), (cu_q, "cu_seqlens_q"), (cu_k, "cu_seqlens_k"))]
    return _make_options(*flags, *operands, max_q, max_k)


def _make_options(causal, align, left, right, scale, algorithm, num_threads, target, softcap,
                  diagonal_offset, mask=None, bias=None, alibi_slopes=None, sinks=None, cu_seqlens_q=None,
                  cu_seqlens_k=None, max_seqlen_q=0, max_seqlen_k=0):
    return _memattn.Options(causal=causal, align=align, window_left=left, window_right=right,
                            mask=mask, bias=bias, scale=scale, algorithm=algorithm,
                            num_threads=num_threads, target=target, softcap=softcap,
                            alibi_slopes=alibi_slopes, sinks=sinks, cu_seqlens_q=cu_seqlens_q,
                            cu_seqlens_k=cu_seqlens_k, max_seqlen_q=max_seqlen_q,
                            max_seqlen_k=max_seqlen_k, diagonal_offset=diagonal_offset)


# Options without operands (mask, bias, slopes, sinks) point at nothing the caller owns and are
# never modified, so calls with the same flags share one (building it costs ~3 us, a sixth of a
# small call).
_plain_options = functools.lru_cache(maxsize=64)(_make_options)


def _array_or_none(value):
    """value for the kind check: lists and tuples (converted later) take no part in it."""
    return None if isinstance(value, (list, tuple)) else value


def _check_rank4(q, k, v):
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise ValueError(f"q, k, v must be 4-D [batch, seq, heads, head_dim]; got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def attention(q, k, v, *, causal=False, align="top_left", window=None, mask=None, bias=None,
              scale=None, algorithm="auto", return_lse=False, num_threads=0, out=None,
              target=None, softcap=0.0, sinks=None, alibi_slopes=None, cu_seqlens_q=None,
              cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, diagonal_offset=0):
    """softmax(scale * q k^T + bias, masked) v, exactly, for q [B, Sq, Hq, d], k [B, Sk, Hkv, d],
    v [B, Sk, Hkv, dv] (Hq a multiple of Hkv). Returns out [B, Sq, Hq, dv] (q's dtype; `out` itself
    when given), or (out, lse) with return_lse, lse float32 [B, Hq, Sq]. The GIL is released while
    the kernel runs. f32 q may read k and v held in float16 or bfloat16 (a KV cache), with the
    same bits as the float32 call on them widened. Score modifiers (docs/api.md): softcap > 0 caps
    the scaled scores as softcap * tanh(s / softcap); alibi_slopes (float32 [Hq] or [B, Hq]) adds
    -slope * |i + diag - j|; sinks (float32 [Hq]) adds one logit per head to each row's softmax
    denominator (lse includes it). diagonal_offset moves the diagonal of causal, window and ALiBi:
    query i's diagonal is key i + diag + diagonal_offset (diag 0 for align="top_left",
    Sk - Sq for "bottom_right").

    Variable-length batches: cu_seqlens_q and cu_seqlens_k (both; int32/int64 arrays or lists of
    batch + 1 offsets from 0 to the token totals) with q [1, total_q, Hq, d], k and v
    [1, total_k, Hkv, d]; sequence b is query rows cu_seqlens_q[b]:cu_seqlens_q[b+1] against key
    rows cu_seqlens_k[b]:cu_seqlens_k[b+1], causal and window per sequence; mask and bias are not
    supported. max_seqlen_q/k (None: computed) must not be smaller than the longest sequence."""
    kind = _t.common_kind({"q": q, "k": k, "v": v, "mask": mask, "bias": bias, "out": out,
                           "alibi_slopes": alibi_slopes, "sinks": sinks,
                           "cu_seqlens_q": _array_or_none(cu_seqlens_q),
                           "cu_seqlens_k": _array_or_none(cu_seqlens_k)})
    options = _options(kind, causal, align, window, mask, bias, scale, algorithm, num_threads,
                       target, softcap, alibi_slopes, sinks,
                       _varlen(kind, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k),
                       diagonal_offset)
    _check_rank4(q, k, v)
    if out is None:
        out = _t.empty(kind, (q.shape[0], q.shape[1], q.shape[2], v.shape[3]), q)
    lse = _t.empty_f32(kind, (q.shape[0], q.shape[2], q.shape[1])) if return_lse else None
    _memattn.forward(_t.operand(q, "q"), _t.operand(k, "k"), _t.operand(v, "v"),
                     _t.operand(out, "out"), None if lse is None else _t.operand(lse, "lse"),
                     options)
    return (out, lse) if return_lse else out


def attention_backward(q, k, v, out, dout, lse, *, causal=False, align="top_left", window=None,
                       mask=None, bias=None, scale=None, algorithm="auto", num_threads=0, dq=None,
                       dk=None, dv=None, bias_grad=False, dbias=None, target=None, softcap=0.0,
                       sinks=None, alibi_slopes=None, sinks_grad=False, dsinks=None,
                       cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                       max_seqlen_k=None, diagonal_offset=0):
    """Gradients of attention() given dout = dLoss/dout, recomputed from q, k, v, out and lse (the
    forward's outputs for the same arguments, score modifiers included). Returns (dq, dk, dv)
    shaped and typed like q, k, v, then dbias when bias_grad=True or dbias is given (the bias's own
    shape and dtype, summed over its broadcast dimensions), then dsinks when sinks_grad=True or
    dsinks is given (float32 [Hq]). Given dq, dk, dv, dbias, dsinks are written in place and
    returned. ALiBi slopes get no gradient. cu_seqlens_q/k and max_seqlen_q/k: a varlen call, and
    diagonal_offset, as attention()'s."""
    kind = _t.common_kind({"q": q, "k": k, "v": v, "out": out, "dout": dout, "lse": lse,
                           "mask": mask, "bias": bias, "dq": dq, "dk": dk, "dv": dv,
                           "dbias": dbias, "alibi_slopes": alibi_slopes, "sinks": sinks,
                           "dsinks": dsinks, "cu_seqlens_q": _array_or_none(cu_seqlens_q),
                           "cu_seqlens_k": _array_or_none(cu_seqlens_k)})
    options = _options(kind, causal, align, window, mask, bias, scale, algorithm, num_threads,
                       target, softcap, alibi_slopes, sinks,
                       _varlen(kind, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k),
                       diagonal_offset)
    _check_rank4(q, k, v)
    want_dbias = bool(bias_grad) or dbias is not None
    if want_dbias and bias is None:
        raise ValueError("bias_grad=True (or dbias) needs bias: there is no bias to differentiate")
    dq = _t.empty(kind, q.shape, q) if dq is None else dq
    dk = _t.empty(kind, k.shape, k) if dk is None else dk
    dv = _t.empty(kind, v.shape, v) if dv is None else dv
    if want_dbias and dbias is None:
        dbias = _t.empty(kind, bias.shape, bias)
    want_dsinks = bool(sinks_grad) or dsinks is not None
    if want_dsinks and sinks is None:
        raise ValueError("sinks_grad=True (or dsinks) needs sinks: there are no sinks to "
                         "differentiate")
    if want_dsinks and dsinks is None:
        dsinks = _t.empty_f32(kind, (q.shape[2],))
    _memattn.backward(
        _t.operand(q, "q"), _t.operand(k, "k"), _t.operand(v, "v"), _t.operand(out, "out"),
        _t.operand(dout, "dout"), _t.operand(lse, "lse"), _t.operand(dq, "dq"),
        _t.operand(dk, "dk"), _t.operand(dv, "dv"),
        _t.operand(dbias, "dbias") if want_dbias else None, options,
        _t.operand(dsinks, "dsinks") if want_dsinks else None)
    return (dq, dk, dv) + ((dbias,) if want_dbias else ()) + ((dsinks,) if want_dsinks else ())


def attention_with_kvcache(q, k_cache, v_cache, seqlens_k, block_table=None, *, causal=True,
                           align="bottom_right", window=None, scale=None, return_lse=False,
                           num_threads=0, out=None, target=None, softcap=0.0, sinks=None,
                           alibi_slopes=None, diagonal_offset=0):
    """Attention of new queries q [B, Sq, Hq, d] against a key/value cache: sequence b's first
    seqlens_k[b] keys. With block_table (int32/int64 [B, max_pages]) k_cache and v_cache are
    pages [num_pages, page_size, Hkv, d|dv] and key t of sequence b is row t % page_size of page
    block_table[b][t // page_size]; without it they are [B, max_seq, Hkv, d|dv]. causal defaults to
    True with the new queries as the last Sq positions (align="bottom_right"). seqlens_k and
    block_table may be int32/int64 arrays or tensors (read in place) or lists. Returns out
    [B, Sq, Hq, dv], or (out, lse) with return_lse. The GIL is released while it runs. softcap,
    sinks, alibi_slopes and diagonal_offset as attention()'s (from each sequence's own diagonal)."""
    kind = _t.common_kind({"q": q, "k_cache": k_cache, "v_cache": v_cache, "out": out,
                           "seqlens_k": _array_or_none(seqlens_k),
                           "block_table": _array_or_none(block_table),
                           "alibi_slopes": alibi_slopes, "sinks": sinks})
    options = _options(kind, causal, align, window, None, None, scale, "auto", num_threads, target,
                       softcap, alibi_slopes, sinks, diagonal_offset=diagonal_offset)
    seqlens_k = _offsets(kind, seqlens_k, "seqlens_k")
    block_table = _offsets(kind, block_table, "block_table")
    _check_rank4(q, k_cache, v_cache)
    if out is None:
        out = _t.empty(kind, (q.shape[0], q.shape[1], q.shape[2], v_cache.shape[3]), q)
    lse = _t.empty_f32(kind, (q.shape[0], q.shape[2], q.shape[1])) if return_lse else None
    _memattn.attention_with_kvcache(
        _t.operand(q, "q"), _t.operand(k_cache, "k_cache"), _t.operand(v_cache, "v_cache"),
        _t.operand(seqlens_k, "seqlens_k"),
        None if block_table is None else _t.operand(block_table, "block_table"),
        _t.operand(out, "out"), None if lse is None else _t.operand(lse, "lse"), options)
    return (out, lse) if return_lse else out


def _parts(value, name):
    """A sequence of parts as a list: a list or tuple, or any iterable such as a stacked array,
    whose items are views (never copies)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise TypeError(f"{name} must be a sequence of arrays (one per part), got {value!r}")
    return list(value)


def merge(outs, lses, *, out=None, return_lse=False, num_threads=0):
    """The exact attention result over the union of disjoint key sets from each set's (out, lse)
    pair, as attention(..., return_lse=True) returns them: lse = log sum_p exp(lses[p]) and
    out = sum_p exp(lses[p] - lse) * outs[p], row by row, parts in the order given.

    outs: parts [B, Sq, H, dv], all of one dtype; lses: float32 [B, H, Sq], one per part. Returns
    out (a new array of the parts' dtype, or `out` itself when given: any float dtype for float32
    / float16 / bfloat16 parts, so float32 partials can be written once as bfloat16), or
    (out, lse) with return_lse. Parts whose lse is -inf are not read; rows where every part is
    -inf (and all rows when there are no parts, which needs `out`) give out = 0, lse = -inf.
    `out` may be one of the parts (merge in place). The GIL is released while it runs."""
    outs, lses = _parts(outs, "outs"), _parts(lses, "lses")
    operands = {f"outs[{i}]": x for i, x in enumerate(outs)}
    operands.update({f"lses[{i}]": x for i, x in enumerate(lses)})
    operands["out"] = out
    kind = _t.common_kind(operands)
    _check_type(num_threads, "num_threads", (numbers.Integral,), "an int (0: the default)")
    if out is None:
        if not outs:
            raise ValueError("merge of no parts needs out= (it gives the result's shape and dtype)")
        out = _t.empty(kind, tuple(outs[0].shape), outs[0])
    if return_lse and len(out.shape) != 4:
        raise ValueError(f"out must be 4-D [batch, seq_q, heads, head_dim_v]; got {tuple(out.shape)}")
    lse = _t.empty_f32(kind, (out.shape[0], out.shape[2], out.shape[1])) if return_lse else None
    _memattn.merge([_t.operand(x, f"outs[{i}]") for i, x in enumerate(outs)],
                   [_t.operand(x, f"lses[{i}]") for i, x in enumerate(lses)],
                   _t.operand(out, "out"), None if lse is None else _t.operand(lse, "lse"),
                   _t.default_threads(kind, int(num_threads)))
    return (out, lse) if return_lse else out


def workspace_bytes(q, k, v, *, causal=False, align="top_left", window=None, mask=None, bias=None,
                    scale=None, algorithm="auto", num_threads=0, target=None, softcap=0.0,
                    sinks=None, alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                    max_seqlen_q=None, max_seqlen_k=None, diagonal_offset=0):
    """Exact scratch bytes attention() allocates for these operands and options (validated as
    attention() would)."""
    kind = _t.common_kind({"q": q, "k": k, "v": v, "mask": mask, "bias": bias,
                           "alibi_slopes": alibi_slopes, "sinks": sinks,
                           "cu_seqlens_q": _array_or_none(cu_seqlens_q),
                           "cu_seqlens_k": _array_or_none(cu_seqlens_k)})
    options = _options(kind, causal, align, window, mask, bias, scale, algorithm, num_threads,
                       target, softcap, alibi_slopes, sinks,
                       _varlen(kind, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k),
                       diagonal_offset)
    return _memattn.workspace_bytes(_t.operand(q, "q"), _t.operand(k, "k"),
                                    _t.operand(v, "v"), options)


def backward_workspace_bytes(q, k, v, bias_grad=False, *, causal=False, align="top_left",
                             window=None, mask=None, bias=None, scale=None, algorithm="auto",
                             num_threads=0, target=None, softcap=0.0, sinks=None,
                             alibi_slopes=None, cu_seqlens_q=None, cu_seqlens_k=None,
                             max_seqlen_q=None, max_seqlen_k=None, diagonal_offset=0):
    """Exact scratch bytes attention_backward() allocates for these operands and options."""
    kind = _t.common_kind({"q": q, "k": k, "v": v, "mask": mask, "bias": bias,
                           "alibi_slopes": alibi_slopes, "sinks": sinks,
                           "cu_seqlens_q": _array_or_none(cu_seqlens_q),
                           "cu_seqlens_k": _array_or_none(cu_seqlens_k)})
    options = _options(kind, causal, align, window, mask, bias, scale, algorithm, num_threads,
                       target, softcap, alibi_slopes, sinks,
                       _varlen(kind, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k),
                       diagonal_offset)
    return _memattn.backward_workspace_bytes(_t.operand(q, "q"), _t.operand(k, "k"),
                                             _t.operand(v, "v"), options, bool(bias_grad))


def backward_tile_family(q, k, v, *, algorithm="auto", target=None, num_threads=0):
    """The tile family attention_backward() runs its products on for these operands on this
    machine: 'f32_fma', 'bf16_dot', 'amx_bf16' (bf16, head dims multiples of 32, AMX usable) or
    'amx_bf16_emulated' (MEMATTN_FAMILY), or 'none' for the naive algorithm. Checks q, k, v as
    attention_backward() does and raises what it would."""
    kind = _t.common_kind({"q": q, "k": k, "v": v})
    options = _options(kind, False, "top_left", None, None, None, None, algorithm, num_threads,
                       target)
    return _memattn.backward_tile_family(_t.operand(q, "q"), _t.operand(k, "k"), _t.operand(v, "v"),
                                         options)


def supported_targets():
    """SIMD targets this build runs on this CPU, fastest first (e.g. ['avx512', 'avx2', ...])."""
    return list(_memattn.supported_targets())


def selected_target(target=None):
    """The target a call with this `target` option would use (None: MEMATTN_TARGET or the best)."""
    return _memattn.selected_target(target)


def _dtype_operand(dtype):
    """(operand, kind): an empty operand of `dtype`, whose dtype the extension reads as it reads
    any operand's (same spellings, same errors): a memattn name ('f32', 'bf16', 'f16', 'f64') as
    a descriptor, a numpy dtype or scalar type as an empty array, a torch dtype as an empty
    tensor's descriptor. Nothing is imported: a numpy or torch dtype exists only once the caller
    has imported its module."""
    if isinstance(dtype, str):
        return (0, dtype, (0,), (1,)), _t.NUMPY
    torch = _t._torch()
    if torch is not None and isinstance(dtype, torch.dtype):
        return _t.operand(torch.empty(0, dtype=dtype), "dtype"), _t.TORCH
    np = _t._numpy()
    if np is not None and (isinstance(dtype, np.dtype) or
                           (isinstance(dtype, type) and issubclass(dtype, np.generic))):
        return np.empty(0, dtype), _t.NUMPY
    raise TypeError(f"dtype must be a memattn dtype name ('f32', 'bf16', 'f16', 'f64'), a numpy "
                    f"dtype or a torch dtype, got {dtype!r}")


def tile_family(dtype, *, algorithm="auto", target=None, num_threads=0):
    """The tile family attention() runs for inputs of `dtype` with these options on this machine:
    'f32_fma', 'bf16_dot', 'amx_bf16' or 'amx_bf16_emulated' (MEMATTN_FAMILY), or 'none' when
    `algorithm` resolves to a reference algorithm. dtype: 'f32', 'bf16', 'f16', 'f64', a numpy
    dtype (np.float32, q.dtype) or a torch dtype (torch.bfloat16). Raises what such a call would
    (an unknown target, a MEMATTN_FAMILY that is no family or cannot run this dtype)."""
    operand, kind = _dtype_operand(dtype)
    options = _options(kind, False, "top_left", None, None, None, None, algorithm, num_threads,
                       target)
    return _memattn.tile_family(operand, options)
