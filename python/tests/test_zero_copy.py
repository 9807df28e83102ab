"""Zero copy: strided views are described by their own memory (same data pointer, element
strides) and give bitwise the result of their contiguous copies; out= is written in place."""
import numpy as np
import pytest

import memattn
from memattn import _memattn, _tensors
from conftest import randn


def views(base):
    """(name, view) pairs holding the values of `base` ([2, 10, 3, 16] f32) laid out in the ways
    users have them."""
    bhsd = np.ascontiguousarray(base.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    wide = np.zeros((2, 10, 3, 40), np.float32)
    wide[..., 5:21] = base
    packed = np.zeros((2, 10, 3, 3, 16), np.float32)  # [B, S, qkv, H, D]
    packed[:, :, 1] = base
    reversed_seq = np.ascontiguousarray(base[:, ::-1])[:, ::-1]
    every_other = np.zeros((2, 10, 3, 32), np.float32)
    every_other[..., ::2] = base
    return [("bshd", base), ("bhsd_transposed", bhsd), ("head_dim_slice", wide[..., 5:21]),
                  ("packed_qkv", packed[:, :, 1]), ("negative_seq_stride", reversed_seq),
                  ("last_dim_stride_2", every_other[..., ::2])]


def test_descriptor_points_at_the_callers_memory(rng):
    for name, view in views(randn(rng, (2, 10, 3, 16)).astype(np.float32)):
        address, dtype, shape, strides = _memattn.inspect_operand(view, name)
        assert address == view.__array_interface__["data"][0], name
        assert (dtype, shape) == ("f32", view.shape)
        assert strides == tuple(s // 4 for s in view.strides), name


def test_torch_descriptor_points_at_the_callers_memory():
    torch = pytest.importorskip("torch")
    t = torch.arange(2 * 3 * 5 * 8, dtype=torch.float32).reshape(2, 3, 5, 8).transpose(1, 2)[..., 2:6]
    assert _memattn.inspect_operand(_tensors.operand(t, "q")) == (t.data_ptr(), "f32", (2, 5, 3, 4), t.stride())
    mask = torch.ones(5, 7, dtype=torch.bool)
    assert _memattn.inspect_operand(_tensors.operand(mask, "mask"), broadcast=True) == (
        mask.data_ptr(), "u8", (1, 1, 5, 7), (0, 0, 7, 1))


@pytest.mark.parametrize("role", ["q", "k", "v"])
def test_strided_inputs_give_the_contiguous_result(rng, role):
    operands = {name: randn(rng, (2, 10, 3, 16)).astype(np.float32) for name in ("q", "k", "v")}
    expected = memattn.attention(**operands, causal=True)
    for name, view in views(operands[role]):
        assert name == "bshd" or not view.flags.c_contiguous
        got = memattn.attention(**dict(operands, **{role: view}), causal=True)
        assert np.array_equal(got, expected), f"{role} as {name}"


def test_zero_and_broadcast_strides_on_inputs(rng):
    one = randn(rng, (1, 6, 1, 8)).astype(np.float32)
    broadcast = np.broadcast_to(one, (3, 6, 2, 8))  # strides 0 over batch and heads
    assert broadcast.strides[0] == 0 and not broadcast.flags.writeable
    got = memattn.attention(broadcast, broadcast, broadcast)
    assert np.array_equal(got, memattn.attention(*(np.ascontiguousarray(broadcast),) * 3))


def test_out_is_written_in_place_with_any_layout(rng):
    q = randn(rng, (2, 7, 3, 8)).astype(np.float32)
    expected = memattn.attention(q, q, q)
    storage = np.full((2, 3, 7, 8), np.nan, np.float32)
    out = storage.transpose(0, 2, 1, 3)  # a BHSD buffer seen as BSHD
    returned = memattn.attention(q, q, q, out=out)
    assert returned is out and np.shares_memory(storage, returned)
    assert np.array_equal(storage.transpose(0, 2, 1, 3), expected)


def test_torch_out_is_written_in_place(rng):
    torch = pytest.importorskip("torch")
    q = torch.from_numpy(randn(rng, (1, 5, 2, 8)).astype(np.float32))
    out = torch.full((1, 2, 5, 8), float("nan")).transpose(1, 2)
    pointer = out.data_ptr()
    returned = memattn.attention(q, q, q, out=out)
    assert returned is out and returned.data_ptr() == pointer
    assert torch.equal(out, memattn.attention(q, q, q))


def test_torch_strided_views_and_mask_are_not_copied(rng):
    torch = pytest.importorskip("torch")
    qkv = torch.from_numpy(randn(rng, (2, 9, 3, 2, 8)).astype(np.float32))  # packed [B, S, 3, H, D]
    q, k, v = qkv.unbind(2)
    mask = torch.from_numpy(rng.random((9, 9)) < 0.5)
    got = memattn.attention(q, k, v, mask=mask)
    want = memattn.attention(q.contiguous(), k.contiguous(), v.contiguous(), mask=mask.contiguous().to(torch.uint8))
    assert torch.equal(got, want)


def test_mask_and_bias_with_fewer_dims_are_broadcast(rng):
    q = randn(rng, (2, 6, 2, 8)).astype(np.float32)
    bias = randn(rng, (6, 6)).astype(np.float32)
    mask = rng.random(6) < 0.7
    full = memattn.attention(q, q, q, bias=np.broadcast_to(bias, (2, 2, 6, 6)),
                             mask=np.broadcast_to(mask, (2, 2, 6, 6)))
    assert np.array_equal(memattn.attention(q, q, q, bias=bias, mask=mask), full)
    assert np.array_equal(memattn.attention(q, q, q, bias=bias[None], mask=mask.astype(np.uint8)), full)
