"""Exact sequence-parallel (ring) attention over torch.distributed, differentiable.

Each rank of a process group holds a slice of q, k, v along the sequence ([batch, seq, heads,
head_dim], memattn's layout); K/V blocks travel around the ring with isend/irecv, overlapped with
memattn's kernels on the block in hand, and each rank merges its per-block (out, lse) partials
exactly with memattn.merge. The backward sends dK/dV accumulators around the ring with their block
back to the owner and recomputes probabilities from the global lse. The chunking is memattn_dist's
(C++ memattn::dist::local_slices, docs/distributed.md), so results do not depend on message timing
and are bitwise identical run to run for a fixed rank count.
"""
import torch
import torch.distributed as dist

from . import attention as _attention
from . import attention_backward as _attention_backward
from . import merge as _merge

__all__ = ["ring_attention", "local_slices"]

PLACEMENTS = ("contiguous", "zigzag")


def _even_bounds(length, n):
    return [(length // n) * c + min(c, length % n) for c in range(n + 1)]


class _Layout:
    """Chunk bounds: queries split evenly; keys evenly, or under a causal mask at the diagonal of
    their query chunk's first row, so that a block pair is fully visible, hidden, or shares its
    diagonal with `align`."""

    def __init__(self, seq_q, seq_k, ranks, placement, causal, align):
        self.ranks, self.per_rank, self.causal = ranks, 2 if placement == "zigzag" else 1, causal
        n = ranks * self.per_rank
        self.q_bounds, self.k_bounds = _even_bounds(seq_q, n), _even_bounds(seq_k, n)
        if causal:
            diag = seq_k - seq_q if align == "bottom_right" else 0
            for c in range(1, n):
                self.k_bounds[c] = min(max(self.q_bounds[c] + diag, 0), seq_k)

    def chunks(self, rank):
        return [rank] if self.per_rank == 1 else [rank, 2 * self.ranks - 1 - rank]

    def q_chunk(self, c):
        return self.q_bounds[c], self.q_bounds[c + 1] - self.q_bounds[c]

    def k_chunk(self, c):
        return self.k_bounds[c], self.k_bounds[c + 1] - self.k_bounds[c]

    def local_k(self, rank):
        return sum(self.k_chunk(c)[1] for c in self.chunks(rank))

    def visibility(self, qc, kc):
        """None (hidden: skip the compute), 'full' or 'diagonal' (keep the causal mask)."""
        if self.q_chunk(qc)[1] == 0 or self.k_chunk(kc)[1] == 0:
            return None
        if not self.causal or kc < qc:
            return "full"
        return "diagonal" if kc == qc else None

    def pairs(self, rank, owner):
        """(local query offset, rows, local key offset in owner's block, keys, causal) of every
        visible pair of this rank's query chunks and owner's key chunks, in a fixed order."""
        q_off = 0
        for qc in self.chunks(rank):
            nq = self.q_chunk(qc)[1]
            k_off = 0
            for kc in self.chunks(owner):
                nk = self.k_chunk(kc)[1]
                vis = self.visibility(qc, kc)
                if vis is not None:
                    yield q_off, nq, k_off, nk, vis == "diagonal"
                k_off += nk
            q_off += nq


def local_slices(seq_q, ranks, rank, *, seq_k=None, placement="contiguous", causal=False,
                 align="top_left"):
    """The global (start, length) ranges of queries and of keys that `rank` holds, in the order
    its local tensors store them: ([(q_start, q_len), ...], [(k_start, k_len), ...])."""
    layout = _Layout(seq_q, seq_q if seq_k is None else seq_k, ranks, placement, causal, align)
    return ([layout.q_chunk(c) for c in layout.chunks(rank)],
            [layout.k_chunk(c) for c in layout.chunks(rank)])


class _Ring:
    """The group's ring: neighbours as global ranks, and one step's nonblocking messages."""

    def __init__(self, group):
        self.group = group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        self.requests = []

    def _global(self, r):
        if self.group is None or self.group is dist.group.WORLD:
            return r
        c10d = dist.distributed_c10d  # get_global_rank is public from torch 2.0 on
        return (getattr(c10d, "get_global_rank", None) or c10d._get_global_rank)(self.group, r)

    def owner_at(self, step):
        return (self.rank - step) % self.size

    # Messages between two ranks with one tag match in posting order; K/V and their gradients are
    # posted in different orders (gradients leave after the compute), so each has its own tag.
    KV, GRADS = 1, 2

    def send(self, tensors, tag):
        to = self._global((self.rank + 1) % self.size)
        self.requests += [dist.isend(t, to, group=self.group, tag=tag) for t in tensors]

    def receive(self, tensors, tag):
        src = self._global((self.rank - 1) % self.size)
        self.requests += [dist.irecv(t, src, group=self.group, tag=tag) for t in tensors]

    def wait(self):
        for r in self.requests:
            r.wait()
        self.requests = []


def _agree(group, error):
    """Every rank raises the error of the lowest failing rank (ValueError), or none fails."""
    errors = [None] * dist.get_world_size(group)
    dist.all_gather_object(errors, None if error is None else str(error), group=group)
    for rank, message in enumerate(errors):
        if message is not None:
            raise ValueError(f"rank {rank}: {message}")


def _empty_block(like, rows):
    return like.new_empty((like.shape[0], rows, *like.shape[2:]))


def _forward(q, k, v, layout, ring, opts):
    b, hq, dv = q.shape[0], q.shape[2], v.shape[3]
    acc = torch.zeros((b, q.shape[1], hq, dv), dtype=torch.float32)
    acc_lse = torch.full((b, hq, q.shape[1]), float("-inf"), dtype=torch.float32)
    held = (k.contiguous(), v.contiguous())
    for step in range(ring.size):
        owner = ring.owner_at(step)
        if step + 1 < ring.size:  # the next block arrives while this one is computed
            rows = layout.local_k(ring.owner_at(step + 1))
            incoming = (_empty_block(k, rows), _empty_block(v, rows))
            ring.receive(incoming, _Ring.KV)
            ring.send(held, _Ring.KV)
        for q_off, nq, k_off, nk, causal in layout.pairs(ring.rank, owner):
            part, part_lse = _attention(q[:, q_off:q_off + nq], held[0][:, k_off:k_off + nk],
                                        held[1][:, k_off:k_off + nk], causal=causal,
                                        return_lse=True, **opts)
            rows = acc[:, q_off:q_off + nq]
            _, lse = _merge([rows, part.float()], [acc_lse[:, :, q_off:q_off + nq], part_lse],
                            out=rows, return_lse=True)
            acc_lse[:, :, q_off:q_off + nq] = lse
        ring.wait()
        if step + 1 < ring.size:
            held = incoming
    return acc.to(q.dtype), acc_lse


def _backward(q, k, v, out, lse, dout, layout, ring, opts):
    dq = torch.zeros(q.shape, dtype=torch.float32)
    held = (k.contiguous(), v.contiguous())
    grads = (torch.zeros(k.shape, dtype=torch.float32), torch.zeros(v.shape, dtype=torch.float32))
    for step in range(ring.size):
        owner = ring.owner_at(step)
        rows = layout.local_k(ring.owner_at(step + 1))  # after the last step: this rank's own
        incoming_grads = (grads[0].new_empty((k.shape[0], rows, *k.shape[2:])),
                          grads[1].new_empty((v.shape[0], rows, *v.shape[2:])))
        if ring.size > 1:
            ring.receive(incoming_grads, _Ring.GRADS)
        if step + 1 < ring.size:
            incoming = (_empty_block(k, rows), _empty_block(v, rows))
            ring.receive(incoming, _Ring.KV)
            ring.send(held, _Ring.KV)
        for q_off, nq, k_off, nk, causal in layout.pairs(ring.rank, owner):
            qs = slice(q_off, q_off + nq)
            ks = slice(k_off, k_off + nk)
            pdq, pdk, pdv = _attention_backward(
                q[:, qs], held[0][:, ks], held[1][:, ks], out[:, qs], dout[:, qs],
                lse[:, :, qs], causal=causal, **opts)
            dq[:, qs] += pdq.float()
            grads[0][:, ks] += pdk.float()
            grads[1][:, ks] += pdv.float()
        if ring.size > 1:  # on to the next rank, or home to the owner after the last step
            ring.send(grads, _Ring.GRADS)
        ring.wait()
        if ring.size > 1:
            grads = incoming_grads
        if step + 1 < ring.size:
            held = incoming
    return dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype)


class _RingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, layout, ring, opts):
        out, lse = _forward(q, k, v, layout, ring, opts)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.layout, ctx.ring, ctx.opts = layout, ring, opts
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, out, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, out, lse, dout.contiguous(), ctx.layout, ctx.ring,
                               ctx.opts)
        return dq, dk, dv, None, None, None


def ring_attention(q, k, v, group=None, causal=False, *, align="top_left", scale=None,
                   placement="contiguous", return_lse=False, num_threads=0):
    """Attention of this rank's queries over the whole sequence held by the ranks of `group` (the
    default group when None; gloo on CPU), collectively. q [B, Sq_local, Hq, d], k, v
    [B, Sk_local, Hkv, d|dv]: CPU tensors (float32, bfloat16 or float16) holding this rank's slices
    in local_slices() order for `placement` ('contiguous': rank r holds chunk r of R; 'zigzag':
    chunks r and 2R-1-r of 2R, which balances a causal mask). The global lengths are the sums of
    the local ones. Returns out [B, Sq_local, Hq, dv] (q's dtype), or (out, lse) with return_lse
    (lse float32 [B, Hq, Sq_local]); differentiable in q, k, v. If any rank's arguments are wrong,
    every rank raises the same ValueError, naming the lowest failing rank."""
    ring = _Ring(group)
    error = None
    try:  # every rank must reach the collectives below, whatever it was given
        lengths = torch.tensor([q.shape[1], k.shape[1]], dtype=torch.int64)
    except (AttributeError, IndexError, TypeError):
        lengths = torch.zeros(2, dtype=torch.int64)
        error = ValueError("q and k must be 4-D CPU torch.Tensors [batch, seq, heads, dim]")
    dist.all_reduce(lengths, group=group)
    try:
        if error is not None:
            raise error
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {PLACEMENTS}, got {placement!r}")
        if align not in ("top_left", "bottom_right"):
            raise ValueError(f"align must be 'top_left' or 'bottom_right', got {align!r}")
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.device.type != "cpu":
                raise ValueError(f"{name} must be a 4-D CPU torch.Tensor [batch, seq, heads, dim]")
        layout = _Layout(int(lengths[0]), int(lengths[1]), ring.size, placement, causal, align)
        want_q = sum(layout.q_chunk(c)[1] for c in layout.chunks(ring.rank))
        want_k = layout.local_k(ring.rank)
        if q.shape[1] != want_q or k.shape[1] != want_k or v.shape[1] != want_k:
            raise ValueError(
                f"local lengths q {q.shape[1]}, k {k.shape[1]}, v {v.shape[1]} do not match this "
                f"rank's slices of the global seq_q {int(lengths[0])} / seq_k {int(lengths[1])} "
                f"under {placement} placement (q {want_q}, k and v {want_k}; see local_slices())")
    except ValueError as e:
        error = e
    _agree(group, error)
    opts = {"align": align, "scale": scale, "num_threads": num_threads}
    out, lse = _RingFunction.apply(q, k, v, layout, ring, opts)
    return (out, lse) if return_lse else out
