"""memattn.distributed.ring_attention over torch.distributed (gloo), in 2 spawned processes: the
gathered forward and gradients against the float64 reference (the accuracy rule), with sliding
windows, diagonal offsets and mask/bias slices too, a training step equal to the single-process
one, determinism, and one rank's bad argument failing both ranks."""
import os
import tempfile

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

if not dist.is_available():
    pytest.skip("this torch has no torch.distributed", allow_module_level=True)
import torch.multiprocessing as mp  # noqa: E402

import memattn  # noqa: E402
import memattn.distributed as md  # noqa: E402  (a broken build must fail, not skip)
import memattn.torch as mtorch  # noqa: E402
from torch_support import assert_accurate, naive_sdpa, reference_sdpa  # noqa: E402

WORLD = 2


def _rows(t, ranges):
    """This rank's rows (dim 1) of a global [B, S, H, D] tensor, in local order."""
    return torch.cat([t[:, s:s + n] for s, n in ranges], dim=1)


def _gather(local, ranges, seq):
    """Every rank's rows at their global positions (dim 1), on every rank."""
    full = torch.zeros((local.shape[0], seq, *local.shape[2:]), dtype=torch.float64)
    at = 0
    for s, n in ranges:
        full[:, s:s + n] = local[:, at:at + n].double()
        at += n
    dist.all_reduce(full)  # each element is nonzero on its owner only
    return full


def _local_leaves(q, k, v, q_ranges, k_ranges):
    """This rank's q, k, v rows as leaf tensors that collect gradients."""
    return tuple(_rows(t, r).requires_grad_()
                 for t, r in ((q, q_ranges), (k, k_ranges), (v, k_ranges)))


def _bhsd(t):
    return t.transpose(1, 2)


def _check_accuracy(rank, dtype, causal, placement, seq, hq, hkv):
    gen = torch.Generator().manual_seed(7)
    q, k, v, dout = (torch.randn(2, seq, h, 16, generator=gen).to(dtype)
                     for h in (hq, hkv, hkv, hq))
    q_ranges, k_ranges = md.local_slices(seq, WORLD, rank, placement=placement, causal=causal)
    lq, lk, lv = _local_leaves(q, k, v, q_ranges, k_ranges)
    out = md.ring_attention(lq, lk, lv, causal=causal, placement=placement)
    out.backward(_rows(dout, q_ranges))
    got = {"out": _gather(out.detach(), q_ranges, seq), "dq": _gather(lq.grad, q_ranges, seq),
           "dk": _gather(lk.grad, k_ranges, seq), "dv": _gather(lv.grad, k_ranges, seq)}
    what = f"{dtype} causal={causal} {placement} seq={seq} heads={hq}/{hkv}"
    refs = {}
    for name, fn in (("ref", reference_sdpa), ("base", naive_sdpa)):
        xs = [_bhsd(t).detach().clone().requires_grad_() for t in (q, k, v)]
        o = fn(*xs, is_causal=causal, enable_gqa=True)
        o.backward(_bhsd(dout).to(o.dtype))
        refs[name] = {"out": _bhsd(o.detach()), "dq": _bhsd(xs[0].grad), "dk": _bhsd(xs[1].grad),
                      "dv": _bhsd(xs[2].grad)}
    for name, k_rule in (("out", 2.0), ("dq", 3.0), ("dk", 3.0), ("dv", 3.0)):
        assert_accurate(f"{name} {what}", got[name].to(dtype), refs["ref"][name],
                        refs["base"][name], k_rule)


def _band(seq, causal, window, offset):
    """Which keys each query sees under causal and the window around diagonal i + offset."""
    i, j = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
    keep = torch.ones(seq, seq, dtype=torch.bool)
    left, right = window
    if causal:
        keep &= j <= i + offset
    if left >= 0:
        keep &= j >= i + offset - left
    if right >= 0:
        keep &= j <= i + offset + right
    return keep


def _check_masks(rank, causal, placement, window, offset):
    """Window, diagonal offset, a mask and a bias slice per rank, forward and backward (dbias of
    each rank's rows) against the float64 reference on the gathered problem, with the
    single-process memattn call of the same options as the baseline (as dist_run_mpi does): its
    flash backward already spends most of the rule's budget against torch's naive f32 here."""
    seq, h = 13, 2
    gen = torch.Generator().manual_seed(17)
    q, k, v, dout = (torch.randn(1, seq, h, 16, generator=gen) for _ in range(4))
    bias = torch.randn(1, h, seq, seq, generator=gen)
    # Random keys hidden, but each row keeps its diagonal key so that no row is empty.
    mask = (torch.rand(1, 1, seq, seq, generator=gen) < 0.8) | torch.eye(seq, dtype=torch.bool)
    q_ranges, k_ranges = md.local_slices(seq, WORLD, rank, placement=placement, causal=causal,
                                         diagonal_offset=offset)
    lq, lk, lv = _local_leaves(q, k, v, q_ranges, k_ranges)
    rows = torch.cat([torch.arange(s, s + n) for s, n in q_ranges])
    lbias = bias[:, :, rows].clone().requires_grad_()
    out = md.ring_attention(lq, lk, lv, causal=causal, placement=placement, window=window,
                            mask=mask[:, :, rows], bias=lbias, diagonal_offset=offset)
    out.backward(_rows(dout, q_ranges))
    dbias = torch.zeros(1, h, seq, seq, dtype=torch.float64)
    dbias[:, :, rows] = lbias.grad.double()
    dist.all_reduce(dbias)
    got = {"out": _gather(out.detach(), q_ranges, seq), "dq": _gather(lq.grad, q_ranges, seq),
           "dk": _gather(lk.grad, k_ranges, seq), "dv": _gather(lv.grad, k_ranges, seq),
           "dbias": dbias}
    keep = mask & _band(seq, causal, window, offset)
    what = f"causal={causal} {placement} window={window} offset={offset}"
    xs = [_bhsd(t).detach().clone().requires_grad_() for t in (q, k, v)]
    b = bias.double().requires_grad_()
    o = reference_sdpa(*xs, attn_mask=b.masked_fill(~keep, float("-inf")))
    o.backward(_bhsd(dout).double())
    refs = {"ref": {"out": _bhsd(o.detach()), "dq": _bhsd(xs[0].grad), "dk": _bhsd(xs[1].grad),
                    "dv": _bhsd(xs[2].grad), "dbias": b.grad}}
    flags = dict(causal=causal, window=window, diagonal_offset=offset, mask=mask, bias=bias)
    single, lse = memattn.attention(q, k, v, return_lse=True, **flags)
    grads = memattn.attention_backward(q, k, v, single, dout, lse, bias_grad=True, **flags)
    refs["base"] = dict(zip(("out", "dq", "dk", "dv", "dbias"), (single, *grads)))
    for name, k_rule in (("out", 2.0), ("dq", 3.0), ("dk", 3.0), ("dv", 3.0), ("dbias", 3.0)):
        assert_accurate(f"{name} {what}", got[name].float(), refs["ref"][name],
                        refs["base"][name], k_rule)


class _Block(torch.nn.Module):
    """Projections to q, k, v and back around one causal attention."""

    def __init__(self, attend):
        super().__init__()
        torch.manual_seed(3)
        self.qkv, self.proj = torch.nn.Linear(16, 3 * 16), torch.nn.Linear(16, 16)
        self.attend = attend

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = self.qkv(x).view(b, s, 3, 2, 8).unbind(2)
        return self.proj(self.attend(q, k, v).reshape(b, s, 16))


def _training_step(model, x, y, sum_over_ranks):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = ((model(x) - y) ** 2).sum()
    loss.backward()
    if sum_over_ranks:  # each rank's loss covers its own tokens: sum the gradients
        for p in model.parameters():
            dist.all_reduce(p.grad)
    opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _check_training_step(rank):
    gen = torch.Generator().manual_seed(11)
    x, y = torch.randn(2, 21, 16, generator=gen), torch.randn(2, 21, 16, generator=gen)
    q_ranges, _ = md.local_slices(21, WORLD, rank, placement="zigzag", causal=True)
    ring = _Block(lambda q, k, v: md.ring_attention(q, k, v, causal=True, placement="zigzag"))
    got = _training_step(ring, _rows(x, q_ranges), _rows(y, q_ranges), sum_over_ranks=True)
    single = _Block(lambda q, k, v: _bhsd(mtorch.scaled_dot_product_attention(
        _bhsd(q), _bhsd(k), _bhsd(v), is_causal=True)))
    want = _training_step(single, x, y, sum_over_ranks=False)
    # Both runs are float32 and differ only in the order of the attention's sums (the ring merges
    # per-block partials, the single-process kernel runs over all keys): a few ulps, far below what
    # a wrong gradient (a missing block, a wrong lse) would move the weights.
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _check_determinism(rank):
    gen = torch.Generator().manual_seed(5)
    q, k, v = (torch.randn(1, 17, 2, 16, generator=gen) for _ in range(3))
    q_ranges, k_ranges = md.local_slices(17, WORLD, rank, placement="zigzag", causal=True)
    runs = []
    for _ in range(2):
        lq, lk, lv = _local_leaves(q, k, v, q_ranges, k_ranges)
        out = md.ring_attention(lq, lk, lv, causal=True, placement="zigzag")
        out.sum().backward()
        runs.append([out.detach(), lq.grad, lk.grad, lv.grad])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def _check_explicit_group(rank):
    """A group given explicitly (here the reversed ranks [1, 0]: group rank 0 is global rank 1)
    gives that group's ring, with each rank's slices by its rank in the group."""
    group = dist.new_group([1, 0])
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(1, 15, 2, 16, generator=gen) for _ in range(3))
    group_rank = dist.get_rank(group)
    q_ranges, k_ranges = md.local_slices(15, WORLD, group_rank, placement="zigzag", causal=True)
    lq, lk, lv = _local_leaves(q, k, v, q_ranges, k_ranges)
    out = md.ring_attention(lq, lk, lv, group=group, causal=True, placement="zigzag")
    want = reference_sdpa(_bhsd(q), _bhsd(k), _bhsd(v), is_causal=True)
    base = naive_sdpa(_bhsd(q), _bhsd(k), _bhsd(v), is_causal=True)
    full = torch.zeros(1, 15, 2, 16, dtype=torch.float64)
    at = 0
    for s, n in q_ranges:
        full[:, s:s + n] = out[:, at:at + n].detach().double()
        at += n
    dist.all_reduce(full)
    assert_accurate("out with an explicit group", full.float(), _bhsd(want), _bhsd(base))


def _check_bad_argument(rank):
    q = k = torch.randn(1, 8, 2, 16)
    v = torch.randn(1, 8 - (rank == 1), 2, 16)  # v's rows must match k's
    with pytest.raises(ValueError, match=r"^rank 1: local lengths q 8, k 8, v 7 do not match"):
        md.ring_attention(q, k, v)
    # Rank 1 passes the mask of every query instead of its own rows.
    mask = torch.ones(1, 1, 16 if rank == 1 else 8, 16, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"^rank 1: mask must be this rank's slice, a 4-D CPU "
                                         r"tensor \[B=1\|1, H=2\|1, local seq_q=8\|1, global "
                                         r"seq_k=16\|1\]"):
        md.ring_attention(q, k, q, mask=mask)


def _worker(rank, init_file, checks):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for check, args in checks:
            globals()[check](rank, *args)
    finally:
        dist.destroy_process_group()


def _spawn(checks):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "rendezvous"), checks), nprocs=WORLD, join=True)


def test_ring_attention_matches_the_reference_in_two_processes():
    _spawn([("_check_accuracy", args) for args in (
        (torch.float32, False, "contiguous", 13, 2, 2),
        (torch.float32, True, "zigzag", 13, 4, 2),
        (torch.float32, True, "contiguous", 13, 2, 1),
        (torch.bfloat16, True, "zigzag", 13, 2, 2),
    )])


def test_windows_offsets_and_mask_bias_slices_in_two_processes():
    _spawn([("_check_masks", args) for args in (
        (False, "contiguous", (3, 2), 0),
        (True, "zigzag", (4, -1), 0),
        (True, "zigzag", (5, -1), 2),
        (False, "contiguous", (2, 2), -2),
        (False, "zigzag", (-1, 1), 3),
    )])


def test_training_step_determinism_groups_and_errors_in_two_processes():
    _spawn([("_check_training_step", ()), ("_check_determinism", ()), ("_check_explicit_group", ()),
            ("_check_bad_argument", ())])
