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


def _coverage(rows, keys, offset, causal, left, right):
    """None (hidden), 'full' or 'partial': how much of `rows` queries against `keys` keys the
    causal mask and the window (-1: unbounded) leave visible when row r's diagonal is key
    r + offset (memattn_dist's rule, src/dist/layout.cpp)."""
    if rows <= 0 or keys <= 0:
        return None
    bounded_right = causal or right >= 0
    reach = 0 if causal else right
    first, last = 0, rows - 1
    if bounded_right:
        first = max(first, -(offset + reach))
    if left >= 0:
        last = min(last, keys - 1 - offset + left)
    if first > last:
        return None
    all_left = left < 0 or rows - 1 + offset - left <= 0
    all_right = not bounded_right or offset + reach >= keys - 1
    return "full" if all_left and all_right else "partial"


class _Layout:
    """Chunk bounds: queries split evenly; keys evenly, or under a causal mask at the diagonal of
    their query chunk's first row. Each block pair is hidden (skipped), full or partial, and
    computed top-left aligned with the global diagonal as its diagonal offset."""

    def __init__(self, seq_q, seq_k, ranks, placement, causal, align, window=(-1, -1),
                 diagonal_offset=0):
        self.ranks, self.per_rank, self.causal = ranks, 2 if placement == "zigzag" else 1, causal
        self.window = window
        n = ranks * self.per_rank
        self.q_bounds, self.k_bounds = _even_bounds(seq_q, n), _even_bounds(seq_k, n)
        self.diag = (seq_k - seq_q if align == "bottom_right" else 0) + diagonal_offset
        if causal:
            for c in range(1, n):
                self.k_bounds[c] = min(max(self.q_bounds[c] + self.diag, 0), seq_k)

    def chunks(self, rank):
        return [rank] if self.per_rank == 1 else [rank, 2 * self.ranks - 1 - rank]

    def q_chunk(self, c):
        return self.q_bounds[c], self.q_bounds[c + 1] - self.q_bounds[c]

    def k_chunk(self, c):
        return self.k_bounds[c], self.k_bounds[c + 1] - self.k_bounds[c]

    def local_k(self, rank):
        return sum(self.k_chunk(c)[1] for c in self.chunks(rank))

    def pairs(self, rank, owner):
        """_Pair of every visible pair of this rank's query chunks and owner's key chunks, in a
        fixed order."""
        q_off = 0
        for qc in self.chunks(rank):
            q_start, nq = self.q_chunk(qc)
            k_off = 0
            for kc in self.chunks(owner):
                k_start, nk = self.k_chunk(kc)
                offset = q_start - k_start + self.diag
                coverage = _coverage(nq, nk, offset, self.causal, *self.window)
                if coverage is not None:
                    yield _Pair(q_off, nq, k_off, nk, k_start, coverage == "partial", offset)
                k_off += nk
            q_off += nq


class _Pair:
    """A visible block pair: local query rows q_off:q_off+nq, the owner's local keys
    k_off:k_off+nk (global keys from k_start), computed top-left with `offset` as the diagonal
    offset; a partial pair keeps the causal mask and the window."""

    def __init__(self, q_off, nq, k_off, nk, k_start, partial, offset):
        self.q, self.k = slice(q_off, q_off + nq), slice(k_off, k_off + nk)
        self.columns = slice(k_start, k_start + nk)
        self.partial, self.offset = partial, offset

    def cut(self, t):
        """The pair's view of a [B|1, H|1, local Sq|1, global Sk|1] mask, bias or dbias."""
        if t is None:
            return None
        if t.shape[2] != 1:
            t = t[:, :, self.q]
        return t if t.shape[3] == 1 else t[:, :, :, self.columns]

    def options(self, opts, layout, mask, bias):
        """memattn's keyword arguments for this pair."""
        left, right = layout.window
        bounded = self.partial and (left >= 0 or right >= 0)
        return dict(opts, causal=self.partial and layout.causal, align="top_left",
                    window=(left, right) if bounded else None, diagonal_offset=self.offset,
                    mask=self.cut(mask), bias=self.cut(bias))


def local_slices(seq_q, ranks, rank, *, seq_k=None, placement="contiguous", causal=False,
                 align="top_left", diagonal_offset=0):
    """The global (start, length) ranges of queries and of keys that `rank` holds, in the order
    its local tensors store them: ([(q_start, q_len), ...], [(k_start, k_len), ...])."""
    layout = _Layout(seq_q, seq_q if seq_k is None else seq_k, ranks, placement, causal, align,
                     diagonal_offset=diagonal_offset)
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


def _forward(q, k, v, mask, bias, layout, ring, opts):
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
        for p in layout.pairs(ring.rank, owner):
            part, part_lse = _attention(q[:, p.q], held[0][:, p.k], held[1][:, p.k],
                                        return_lse=True, **p.options(opts, layout, mask, bias))
            rows = acc[:, p.q]
            _, lse = _merge([rows, part.float()], [acc_lse[:, :, p.q], part_lse], out=rows,
                            return_lse=True)
            acc_lse[:, :, p.q] = lse
        ring.wait()
        if step + 1 < ring.size:
            held = incoming
    return acc.to(q.dtype), acc_lse


def _backward(q, k, v, mask, bias, out, lse, dout, layout, ring, opts, bias_grad):
    dq = torch.zeros(q.shape, dtype=torch.float32)
    dbias = torch.zeros(bias.shape, dtype=torch.float32) if bias_grad else None
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
        for p in layout.pairs(ring.rank, owner):
            pdq, pdk, pdv, *pdbias = _attention_backward(
                q[:, p.q], held[0][:, p.k], held[1][:, p.k], out[:, p.q], dout[:, p.q],
                lse[:, :, p.q], bias_grad=bias_grad, **p.options(opts, layout, mask, bias))
            dq[:, p.q] += pdq.float()
            grads[0][:, p.k] += pdk.float()
            grads[1][:, p.k] += pdv.float()
            if bias_grad:
                p.cut(dbias).add_(pdbias[0].float())
        if ring.size > 1:  # on to the next rank, or home to the owner after the last step
            ring.send(grads, _Ring.GRADS)
        ring.wait()
        if ring.size > 1:
            grads = incoming_grads
        if step + 1 < ring.size:
            held = incoming
    return (dq.to(q.dtype), grads[0].to(k.dtype), grads[1].to(v.dtype),
            None if dbias is None else dbias.to(bias.dtype))


class _RingFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, bias, mask, layout, ring, opts):
        out, lse = _forward(q, k, v, mask, bias, layout, ring, opts)
        ctx.save_for_backward(q, k, v, bias, mask, out, lse)
        ctx.layout, ctx.ring, ctx.opts = layout, ring, opts
        ctx.mark_non_differentiable(lse)
        return out, lse

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, bias, mask, out, lse = ctx.saved_tensors
        bias_grad = bias is not None and ctx.needs_input_grad[3]
        dq, dk, dv, dbias = _backward(q, k, v, mask, bias, out, lse, dout.contiguous(), ctx.layout,
                                      ctx.ring, ctx.opts, bias_grad)
        return dq, dk, dv, dbias, None, None, None, None


def _window(window):
    """(left, right) with -1 for unbounded, from None or a pair of ints / None."""
    if window is None:
        return -1, -1
    if isinstance(window, (str, bytes)) or not hasattr(window, "__len__") or len(window) != 2:
        raise ValueError(f"window must be None or a pair (left, right), each an int >= 0 or "
                         f"None/-1 for unbounded; got {window!r}")
    bounds = tuple(-1 if w is None else w for w in window)
    if any(not isinstance(w, int) or isinstance(w, bool) or w < -1 for w in bounds):
        raise ValueError(f"window bounds must be ints >= -1 or None, got {window!r}")
    return bounds


def _check_slice(t, name, q, local_seq_q, seq_k):
    """A mask or bias slice: [B|1, Hq|1, local Sq|1, global Sk|1] CPU tensor."""
    want = (q.shape[0], q.shape[2], local_seq_q, seq_k)
    if not isinstance(t, torch.Tensor) or t.dim() != 4 or t.device.type != "cpu" or any(
            s not in (w, 1) for s, w in zip(t.shape, want)):
        shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be this rank's slice, a 4-D CPU tensor [B={want[0]}|1, "
                         f"H={want[1]}|1, local seq_q={want[2]}|1, global seq_k={want[3]}|1] (its "
                         f"query rows against every global key), got {shape}")


def ring_attention(q, k, v, group=None, causal=False, *, align="top_left", scale=None,
                   placement="contiguous", return_lse=False, num_threads=0, window=None,
                   mask=None, bias=None, diagonal_offset=0):
    """Attention of this rank's queries over the whole sequence held by the ranks of `group` (the
    default group when None; gloo on CPU), collectively. q [B, Sq_local, Hq, d], k, v
    [B, Sk_local, Hkv, d|dv]: CPU tensors (float32, bfloat16 or float16) holding this rank's slices
    in local_slices() order for `placement` ('contiguous': rank r holds chunk r of R; 'zigzag':
    chunks r and 2R-1-r of 2R, which balances a causal mask). The global lengths are the sums of
    the local ones. Returns out [B, Sq_local, Hq, dv] (q's dtype), or (out, lse) with return_lse
    (lse float32 [B, Hq, Sq_local]); differentiable in q, k, v (and bias). causal, align, window
    (left, right) and diagonal_offset act on the global sequence as in memattn.attention; block
    pairs they hide entirely are skipped. mask and bias are this rank's slices: its query rows (in
    local order) against every global key, [B|1, Hq|1, Sq_local|1, Sk_global|1]; the bias's
    gradient is that slice's. If any rank's arguments are wrong, every rank raises the same
    ValueError, naming the lowest failing rank."""
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
        if not isinstance(diagonal_offset, int) or isinstance(diagonal_offset, bool):
            raise ValueError(f"diagonal_offset must be an int, got {diagonal_offset!r}")
        layout = _Layout(int(lengths[0]), int(lengths[1]), ring.size, placement, causal, align,
                         _window(window), diagonal_offset)
        want_q = sum(layout.q_chunk(c)[1] for c in layout.chunks(ring.rank))
        want_k = layout.local_k(ring.rank)
        if q.shape[1] != want_q or k.shape[1] != want_k or v.shape[1] != want_k:
            raise ValueError(
                f"local lengths q {q.shape[1]}, k {k.shape[1]}, v {v.shape[1]} do not match this "
                f"rank's slices of the global seq_q {int(lengths[0])} / seq_k {int(lengths[1])} "
                f"under {placement} placement (q {want_q}, k and v {want_k}; see local_slices())")
        for name, t in (("mask", mask), ("bias", bias)):
            if t is not None:
                _check_slice(t, name, q, want_q, int(lengths[1]))
    except ValueError as e:
        error = e
    _agree(group, error)
    opts = {"align": align, "scale": scale, "num_threads": num_threads}
    out, lse = _RingFunction.apply(q, k, v, bias, mask, layout, ring, opts)
    return (out, lse) if return_lse else out
