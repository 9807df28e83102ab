"""Every documented error: its Python type, its message (argument, expected, given), its .code,
and that outputs are untouched when a call fails."""
import numpy as np
import pytest

import memattn


def f32(*shape):
    return np.ones(shape, np.float32)


Q = f32(1, 4, 2, 8)


@pytest.mark.parametrize("call,error,message,code", [
    (lambda: memattn.attention(Q.astype(np.int16), Q, Q), TypeError, r"q: numpy dtype int16 is not supported; expected float32, float16, float64 \(bool or uint8 for a mask, int32 or int64 for cu_seqlens\)$", "wrong_dtype"),
    (lambda: memattn.attention(*(Q.astype(np.int32),) * 3), TypeError, r"q: dtype i32 is not supported; expected one of f32, bf16, f16", "wrong_dtype"),
    (lambda: memattn.attention(Q, Q.astype(np.float16), Q), TypeError,
         r"same dtype, or f32 q with k and v both bf16 or both f16 \(a KV cache\); got q=f32, k=f16, v=f32", "wrong_dtype"),
    (lambda: memattn.attention(Q, f32(1, 4, 2, 16), Q), ValueError, r"q.shape\[-1\] \(8\) != k.shape\[-1\] \(16\)", "invalid_argument"),
    (lambda: memattn.attention(f32(1, 4, 3, 8), Q, Q), ValueError, r"num_heads_q \(3\) must be a multiple of num_heads_kv \(2\)", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, f32(1, 5, 2, 8)), ValueError, r"v: seq 5 does not match k seq 4", "invalid_argument"),
    (lambda: memattn.attention(f32(4, 2, 8), Q, Q), ValueError, r"q, k, v must be 4-D .*got q \(4, 2, 8\)", None),
    (lambda: memattn.attention(Q, Q, Q, align="top-left"), ValueError, r"align must be one of 'top_left', 'bottom_right', got 'top-left'", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, align=1), TypeError, r"align must be 'top_left' or 'bottom_right', got 1", None),
    (lambda: memattn.attention(Q, Q, Q, algorithm="fast"), ValueError, r"algorithm must be one of 'auto', 'naive', 'sequential', 'chunked', 'flash', got 'fast'", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, window=3), TypeError, r"window must be None or a pair", None),
    (lambda: memattn.attention(Q, Q, Q, window=(-2, 0)), ValueError, r"window_left must be -1 \(unbounded\) or >= 0, got -2", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, num_threads=True), TypeError, r"num_threads must be an int \(0: the default\), got True", None),
    (lambda: memattn.attention(Q, Q, Q, window=(1.5, 0)), TypeError, r"window\[0\] \(left\) must be an int", None),
    (lambda: memattn.attention(Q, Q, Q, scale=float("nan")), ValueError, r"scale must be finite, got nan", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, num_threads=np.int64(-1)), ValueError, r"num_threads must be 0 \(all\) or > 0, got -1", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, target="avx9000"), ValueError, r"target: 'avx9000' is not a SIMD target", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, mask=f32(4, 4)), TypeError, r"mask: dtype must be u8 \(bool, nonzero = attend\), got f32", "wrong_dtype"),
    (lambda: memattn.attention(Q, Q, Q, mask=np.ones((1, 3, 4, 4), bool)), ValueError, r"mask shape \[1,3,4,4\] not broadcastable to \[B=1,H=2,Sq=4,Sk=4\]", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, mask=np.ones((1, 1, 1, 4, 4), bool)), ValueError, r"mask: expected at most 4 dimensions", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, bias=np.ones((4, 4), np.float64)), TypeError, r"bias: dtype must be one of f32, bf16, f16 \(f64 with f64 inputs\), got f64", "wrong_dtype"),
    (lambda: memattn.attention(Q.astype(np.float64), Q.astype(np.float64), Q.astype(np.float64), algorithm="flash"), ValueError, r"flash takes f32, bf16 or f16 inputs, got f64", "unsupported"),
    (lambda: memattn.attention(Q.astype(">f4"), Q, Q), TypeError, r"q: numpy dtype >f4 is not supported; .* in native byte order", "wrong_dtype"),
    (lambda: memattn.attention(np.zeros((1, 4, 2, 8), [("x", "f4"), ("tag", "u1")])["x"], Q, Q), ValueError, r"q: byte strides \(320, 80, 40, 5\) are not multiples of the element size 4", "invalid_argument"),
    (lambda: memattn.attention([[1.0]], Q, Q), TypeError, r"q: expected a numpy.ndarray or a torch.Tensor, got builtins.list", None),
    (lambda: memattn.attention(Q, Q, Q, out=f32(1, 4, 2, 7)), ValueError, r"out: shape \[1,4,2,7\] expected \[1,4,2,8\]", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, out=f32(1, 4, 2, 8).astype(np.float16)), TypeError, r"out: dtype must match q \(f32\), got f16", "wrong_dtype"),
    (lambda: memattn.attention(Q, Q, Q, out=np.broadcast_to(f32(1, 1, 1, 8), (1, 4, 2, 8))), ValueError, r"out: the array is read-only; memattn writes its result there", "invalid_argument"),
    (lambda: memattn.attention(Q, Q, Q, out=Q), ValueError, r"elements of out and q refer to a single memory location", "aliasing"),
    (lambda: memattn.attention_backward(Q, Q, Q, Q.copy(), Q, f32(1, 2, 4), bias_grad=True), ValueError, r"bias_grad=True \(or dbias\) needs bias", None),
    (lambda: memattn.attention_backward(Q, Q, Q, Q.copy(), Q, np.ones((1, 2, 4))), TypeError, r"lse: dtype must be f32, got f64", "wrong_dtype"),
    (lambda: memattn.attention_backward(Q, Q, Q, Q.copy(), Q, f32(1, 4, 2)), ValueError, r"lse: shape \[1,4,2\] expected \[1,2,4\]", "invalid_argument"),
    (lambda: memattn.attention_backward(Q, Q, Q, Q.copy(), Q, f32(1, 2, 4), dq=f32(1, 4, 2, 4)), ValueError, r"dq: shape \[1,4,2,4\] expected \[1,4,2,8\]", "invalid_argument"),
    (lambda: memattn.workspace_bytes(Q, Q, Q, algorithm="Flash"), ValueError, r"algorithm must be one of .* got 'Flash'", "invalid_argument"),
    (lambda: memattn.selected_target("nope"), ValueError, r"target: 'nope' is not a SIMD target this build runs on this CPU; expected one of", "invalid_argument"),
])
def test_error(call, error, message, code):
    with pytest.raises(error, match=message) as info:
        call()
    if code is not None:
        assert info.value.code == code


def test_out_of_memory_is_memory_error_and_out_is_untouched():
    # 2^20 x 2^20 keys with stride-0 inputs: the naive algorithm's 4 TiB of scores cannot exist.
    x = np.broadcast_to(np.zeros((1, 1, 1, 1), np.float32), (1, 2**20, 1, 1))
    assert memattn.workspace_bytes(x, x, x, algorithm="naive") > 2**40
    out = np.full((1, 2**20, 1, 1), 7.0, np.float32)
    with pytest.raises(MemoryError, match=r"failed to allocate \d+ bytes for the forward workspace") as info:
        memattn.attention(x, x, x, algorithm="naive", out=out)
    assert info.value.code == "out_of_memory"
    assert np.all(out == 7.0)


def test_failed_call_leaves_out_untouched():
    out = np.full((1, 4, 2, 8), 3.0, np.float32)
    with pytest.raises(ValueError):
        memattn.attention(Q, Q, Q, out=out, mask=np.ones((2, 2, 4, 4), bool))
    assert np.all(out == 3.0)


def test_torch_errors():
    torch = pytest.importorskip("torch")
    t = torch.ones(1, 4, 2, 8)
    with pytest.raises(TypeError, match=r"q is a torch.Tensor but k is a numpy.ndarray"):
        memattn.attention(t, Q, t)
    with pytest.raises(TypeError, match=r"q is a numpy.ndarray but mask is a torch.Tensor"):
        memattn.attention(Q, Q, Q, mask=torch.ones(4, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match=r"k: torch dtype torch.int16 is not supported"):
        memattn.attention(t, t.short(), t)
    with pytest.raises(TypeError, match=r"q, k, v must have the same dtype, or f32 q with k and v both bf16 or both f16 \(a KV cache\); got q=f32, k=i64"):
        memattn.attention(t, t.long(), t)
    with pytest.raises(TypeError, match=r"mask: dtype must be u8 .* got f32"):
        memattn.attention(t, t, t, mask=torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"lazy negation or conjugation"):
        memattn.attention(t, t, torch._neg_view(t))
    with pytest.raises(ValueError, match=r"q: expected a strided \(dense\) tensor"):
        memattn.attention(t.to_sparse(), t, t)
    with pytest.raises(TypeError, match=r"both bf16 or both f16 \(a KV cache\); got q=bf16, k=f32, v=bf16") as info:
        memattn.attention(t.bfloat16(), t, t.bfloat16())
    assert info.value.code == "wrong_dtype"
