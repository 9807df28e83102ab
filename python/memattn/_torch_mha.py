"""memattn.torch.MultiheadAttention: torch.nn.MultiheadAttention whose attention core is memattn."""

import torch
import torch.nn.functional as F

from .torch import _attention_bshd


def _check_mask_dtype(name: str, mask: torch.Tensor) -> None:
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name}: only bool (True = not allowed) and floating (added) masks are "
                        f"supported, got {mask.dtype}")


def _merge_masks(attn_mask, key_padding_mask, dtype):
    """nn.MultiheadAttention's masks, as [N|1, H|1, L|1, S] views, as memattn's (mask, bias).

    Both are in the "True = not allowed" convention. The larger boolean one becomes memattn's mask
    (negated: True = attend, so masked keys are never read); a second boolean one becomes a -inf
    bias, float ones are added into the bias. Only a sum of two masks is materialised, as PyTorch's
    own merge does.
    """
    parts = [m for m in (attn_mask, key_padding_mask) if m is not None]
    bool_parts = [m for m in parts if m.dtype == torch.bool]
    float_parts = [m.to(dtype) for m in parts if m.dtype != torch.bool]
    float_parts += [torch.zeros(m.shape, dtype=dtype).masked_fill_(m, float("-inf"))
                    for m in bool_parts[1:]]
    mask = ~bool_parts[0] if bool_parts else None
    bias = None
    for part in float_parts:
        bias = part if bias is None else bias + part
    return mask, bias


def _pad_key_column(mask):
    """One more key column that every query may see (False / 0), for bias_k or the zero key."""
    return None if mask is None else F.pad(mask, (0, 1))


class MultiheadAttention(torch.nn.MultiheadAttention):
    """torch.nn.MultiheadAttention (same constructor, parameters and state dict) run by memattn.

    forward follows nn.MultiheadAttention's semantics, with three deviations: need_weights must be
    False (memattn never forms the attention weights), dropout must be 0 while training (memattn
    has no attention dropout), and a query that may see no key gives 0 where PyTorch gives NaN.
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            raise ValueError("memattn.torch.MultiheadAttention never forms the attention weights: "
                             "call it with need_weights=False")
        if self.training and self.dropout > 0.0:
            raise ValueError(f"memattn.torch.MultiheadAttention has no attention dropout: "
                             f"construct it with dropout=0.0 or call it in eval mode "
                             f"(dropout={self.dropout})")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal=True is a hint that attn_mask is the causal mask, so "
                             "attn_mask must be given too (as in nn.MultiheadAttention)")
        batched = query.dim() == 3
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"query, key and value must all be 3-D (batched) or 2-D (unbatched), "
                             f"got {query.dim()}, {key.dim()} and {value.dim()} dims")
        if query.shape[-1] != self.embed_dim:
            raise ValueError(f"query's embedding dim ({query.shape[-1]}) must be embed_dim "
                             f"({self.embed_dim})")
        seq_first = batched and not self.batch_first
        if not batched:  # [seq, E] -> [1, seq, E]
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)

        def batch_first(t):  # [seq, N, ..] <-> [N, seq, ..]: a view
            return t.transpose(0, 1) if seq_first else t

        heads, head_dim = self.num_heads, self.head_dim
        # Projected in the caller's layout, then viewed as memattn's [N, seq, heads, head_dim].
        q, k, v = (batch_first(t.unflatten(2, (heads, head_dim)))
                   for t in self._in_projection(query, key, value))
        n, lq, sk = q.shape[0], q.shape[1], k.shape[1]
        extra_keys = [(self.bias_k, self.bias_v)] if self.bias_k is not None else []
        if self.add_zero_attn:
            extra_keys.append((k.new_zeros(1, 1, self.embed_dim),) * 2)
        for key_row, value_row in extra_keys:  # one more key at the end of every sequence
            k = torch.cat([k, key_row.view(1, 1, heads, head_dim).expand(n, 1, -1, -1)], dim=1)
            v = torch.cat([v, value_row.view(1, 1, heads, head_dim).expand(n, 1, -1, -1)], dim=1)
        causal = bool(is_causal) and key_padding_mask is None  # PyTorch trusts the hint then
        mask = bias = None
        if not causal:
            mask, bias = self._memattn_masks(attn_mask, key_padding_mask, n, lq, sk,
                                             len(extra_keys), q.dtype)
        out = _attention_bshd(q, k, v, mask, bias, causal)
        # out follows q's layout, so back to the caller's [.., seq, .., E] is a view again.
        out = self.out_proj(batch_first(out).flatten(2))
        return (out if batched else out.squeeze(0)), None

    def _in_projection(self, query, key, value):
        e = self.embed_dim
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.split(e)
        if self._qkv_same_embed_dim:
            weights = self.in_proj_weight.split(e)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        return tuple(F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def _memattn_masks(self, attn_mask, key_padding_mask, n, lq, sk, extra_keys, dtype):
        """Checks the masks' shapes as nn.MultiheadAttention does, then merges them for memattn."""
        heads = self.num_heads
        if attn_mask is not None:
            _check_mask_dtype("attn_mask", attn_mask)
            if attn_mask.dim() == 2 and attn_mask.shape == (lq, sk):
                attn_mask = attn_mask.reshape(1, 1, lq, sk)
            elif attn_mask.dim() == 3 and attn_mask.shape == (n * heads, lq, sk):
                attn_mask = attn_mask.reshape(n, heads, lq, sk)
            else:
                raise ValueError(f"attn_mask shape {tuple(attn_mask.shape)} must be ({lq}, {sk}) "
                                 f"or (batch * num_heads = {n * heads}, {lq}, {sk})")
        if key_padding_mask is not None:
            _check_mask_dtype("key_padding_mask", key_padding_mask)
            if key_padding_mask.shape != (n, sk):
                raise ValueError(f"key_padding_mask shape {tuple(key_padding_mask.shape)} must be "
                                 f"(batch, source length) = ({n}, {sk})")
            key_padding_mask = key_padding_mask.reshape(n, 1, 1, sk)
        for _ in range(extra_keys):
            attn_mask, key_padding_mask = map(_pad_key_column, (attn_mask, key_padding_mask))
        return _merge_masks(attn_mask, key_padding_mask, dtype)
