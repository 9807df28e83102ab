"""memattn.torch.MultiheadAttention against torch.nn.MultiheadAttention: state, values, grads."""

import copy
import inspect

import pytest

torch = pytest.importorskip("torch")
import memattn.torch as mt  # noqa: E402  (a broken build must fail, not skip)

from torch_support import assert_accurate, random_keep_mask  # noqa: E402

E, HEADS, N, L, S = 16, 2, 3, 5, 7
TORCH_MHA_TAKES_IS_CAUSAL = ("is_causal" in
                             inspect.signature(torch.nn.MultiheadAttention.forward).parameters)

# name: (constructor kwargs, self-attention?, attn_mask kind, key_padding_mask kind, is_causal)
CONFIGS = {
    "self_attention": ({}, True, None, None, False),
    "cross_kdim_vdim": (dict(kdim=12, vdim=10), False, None, None, False),
    "no_bias": (dict(bias=False), False, None, None, False),
    "kpm_bool": ({}, False, None, "bool", False),
    "kpm_float": ({}, False, None, "float", False),
    "attn_bool_2d": ({}, False, "bool2", None, False),
    "attn_float_2d": ({}, False, "float2", None, False),
    "attn_bool_3d": ({}, False, "bool3", None, False),
    "attn_float_3d": ({}, False, "float3", None, False),
    "bool_attn_bool_kpm": ({}, False, "bool3", "bool", False),
    "float_attn_bool_kpm": ({}, False, "float2", "bool", False),
    "bool_attn_float_kpm": ({}, False, "bool2", "float", False),
    "float_attn_float_kpm": ({}, False, "float3", "float", False),
    "causal_hint": ({}, True, "causal", None, True),
    "causal_hint_with_kpm": ({}, True, "causal", "bool", True),
    "add_bias_kv_masks": (dict(add_bias_kv=True), False, "bool2", "bool", False),
    "add_zero_attn_masks": (dict(add_zero_attn=True), False, "float3", "bool", False),
    "bias_kv_zero_attn_kdim": (dict(add_bias_kv=True, add_zero_attn=True, kdim=12, vdim=10),
                               False, "float2", "float", False),
}


def random_float_mask(shape, g):
    """Multiples of 1/64, so that sums of two masks are exact in float32 as in float64."""
    return torch.randn(shape, generator=g).mul(64).round().div(64)


def make_attn_mask(kind, g):
    """nn.MultiheadAttention's attn_mask: bool True = NOT allowed, float added; 2-D or 3-D."""
    if kind is None:
        return None
    if kind == "causal":
        return torch.ones(L, L, dtype=torch.bool).triu(1)
    shape = (L, S) if kind.endswith("2") else (N * HEADS, L, S)
    return ~random_keep_mask(shape, g) if kind.startswith("bool") else random_float_mask(shape, g)


def make_key_padding_mask(kind, g, s):
    if kind is None:
        return None
    if kind == "bool":
        padded = torch.zeros(N, s, dtype=torch.bool)
        for b in range(N):
            padded[b, s - b:] = True  # sequence b has b padding keys at its end
        return padded
    return random_float_mask((N, s), g)


def as_documented_float_mask(attn_mask, key_padding_mask, s):
    """The documented meaning of the two masks (True = -inf, floats added) as one 3-D float
    attn_mask, for torch versions whose MultiheadAttention cannot merge a float key_padding_mask."""
    def as_float(m):
        return torch.zeros(m.shape).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m

    merged = as_float(key_padding_mask).view(N, 1, 1, s).expand(N, HEADS, L, s)
    if attn_mask is not None:
        attn = as_float(attn_mask)
        merged = merged + (attn.view(N, HEADS, L, s) if attn.dim() == 3 else attn)
    return merged.reshape(N * HEADS, L, s)


def build(config, batch_first, dtype):
    ctor, self_attn, attn_kind, kpm_kind, is_causal = CONFIGS[config]
    torch.manual_seed(len(config))
    theirs = torch.nn.MultiheadAttention(E, HEADS, batch_first=batch_first, **ctor)
    ours = mt.MultiheadAttention(E, HEADS, batch_first=batch_first, **ctor)
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(1)
    s = L if self_attn else S

    def seq(length, dim):
        shape = (N, length, dim) if batch_first else (length, N, dim)
        return torch.randn(shape, generator=g)

    if self_attn:
        inputs = [seq(L, E)]
    else:
        inputs = [seq(L, E), seq(S, ctor.get("kdim", E)), seq(S, ctor.get("vdim", E))]
    attn_mask, kpm = make_attn_mask(attn_kind, g), make_key_padding_mask(kpm_kind, g, s)
    our_kwargs = dict(attn_mask=attn_mask, key_padding_mask=kpm, is_causal=is_causal)
    their_kwargs = dict(attn_mask=attn_mask, key_padding_mask=kpm)
    if TORCH_MHA_TAKES_IS_CAUSAL:
        their_kwargs["is_causal"] = is_causal
    if kpm_kind == "float" and attn_kind is not None and not TORCH_MHA_TAKES_IS_CAUSAL:
        their_kwargs.update(attn_mask=as_documented_float_mask(attn_mask, kpm, s),
                            key_padding_mask=None)
    return ours.to(dtype), theirs, [x.to(dtype) for x in inputs], our_kwargs, their_kwargs, g


def run(module, inputs, kwargs, dout):
    """Output and gradients (inputs, then every parameter by name) of sum(out * dout)."""
    leaves = [x.detach().requires_grad_() for x in inputs]
    q, k, v = leaves * 3 if len(leaves) == 1 else leaves
    out, weights = module(q, k, v, need_weights=False, **kwargs)
    assert weights is None
    names = [f"input{i}" for i in range(len(leaves))] + [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(out, leaves + list(module.parameters()), dout.to(out.dtype))
    return out.detach(), dict(zip(names, grads))


def cast(kwargs, dtype):
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
            for k, v in kwargs.items()}


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch_first", "seq_first"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torch_multihead_attention(config, batch_first):
    ours, theirs, inputs, our_kwargs, their_kwargs, g = build(config, batch_first, torch.float32)
    shape = (N, L, E) if batch_first else (L, N, E)
    dout = torch.randn(shape, generator=g, dtype=torch.float64)
    out, grads = run(ours, inputs, our_kwargs, dout)
    base, base_grads = run(theirs, inputs, their_kwargs, dout)
    theirs64 = copy.deepcopy(theirs).double()
    ref, ref_grads = run(theirs64, [x.double() for x in inputs],
                         cast(their_kwargs, torch.float64), dout)
    assert_accurate("out", out, ref, base)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        assert_accurate(f"d{name}", grads[name], ref_grads[name], base_grads[name], k=3.0)

    ours64 = copy.deepcopy(ours).double()
    out64, grads64 = run(ours64, [x.double() for x in inputs], cast(our_kwargs, torch.float64),
                         dout)
    torch.testing.assert_close(out64, ref, rtol=1e-10, atol=1e-12)
    for name in ref_grads:
        torch.testing.assert_close(grads64[name], ref_grads[name], rtol=1e-10, atol=1e-12)


def test_unbatched_inputs():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, HEADS, kdim=12, vdim=10)
    ours = mt.MultiheadAttention(E, HEADS, kdim=12, vdim=10)
    ours.load_state_dict(theirs.state_dict())
    g = torch.Generator().manual_seed(4)
    q = torch.randn(L, E, generator=g)
    k, v = torch.randn(S, 12, generator=g), torch.randn(S, 10, generator=g)
    kpm = torch.zeros(S, dtype=torch.bool)
    kpm[-2:] = True
    attn_mask = torch.randn(HEADS, L, S, generator=g)
    kwargs = dict(key_padding_mask=kpm, attn_mask=attn_mask, need_weights=False)
    out = ours(q, k, v, **kwargs)[0]
    ref = theirs.double()(q.double(), k.double(), v.double(), key_padding_mask=kpm,
                          attn_mask=attn_mask.double(), need_weights=False)[0]
    base = theirs.float()(q, k, v, **kwargs)[0]
    assert out.shape == (L, E)
    assert_accurate("out", out, ref, base)


def test_state_dict_round_trip():
    theirs = torch.nn.MultiheadAttention(E, HEADS, kdim=12, vdim=10, add_bias_kv=True)
    ours = mt.MultiheadAttention(E, HEADS, kdim=12, vdim=10, add_bias_kv=True)
    assert isinstance(ours, torch.nn.MultiheadAttention)
    result = ours.load_state_dict(theirs.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    fresh = torch.nn.MultiheadAttention(E, HEADS, kdim=12, vdim=10, add_bias_kv=True)
    fresh.load_state_dict(ours.state_dict(), strict=True)  # and back


def test_dropout_is_inactive_in_eval_mode():
    torch.manual_seed(0)
    theirs = torch.nn.MultiheadAttention(E, HEADS, dropout=0.5).eval()
    ours = mt.MultiheadAttention(E, HEADS, dropout=0.5).eval()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(L, N, E)
    ref = theirs.double()(x.double(), x.double(), x.double(), need_weights=False)[0]
    assert_accurate("out", ours(x, x, x, need_weights=False)[0], ref,
                    theirs.float()(x, x, x, need_weights=False)[0])


def _mha(**kwargs):
    return mt.MultiheadAttention(E, HEADS, **kwargs)


X = torch.randn(L, N, E)


@pytest.mark.parametrize("call, error, match", [
    (lambda: _mha()(X, X, X), ValueError,
     "never forms the attention weights: call it with need_weights=False"),
    (lambda: _mha(dropout=0.1).train()(X, X, X, need_weights=False), ValueError,
     r"has no attention dropout.*dropout=0\.0 or call it in eval mode"),
    (lambda: _mha()(X, X, X, need_weights=False, is_causal=True), ValueError,
     "attn_mask must be given too"),
    (lambda: _mha()(X, X, X, need_weights=False, attn_mask=torch.zeros(L, L + 1)), ValueError,
     r"attn_mask shape \(5, 6\) must be \(5, 5\) or \(batch \* num_heads = 6, 5, 5\)"),
    (lambda: _mha()(X, X, X, need_weights=False, key_padding_mask=torch.zeros(N, L + 1)),
     ValueError, r"key_padding_mask shape \(3, 6\) must be \(batch, source length\) = \(3, 5\)"),
    (lambda: _mha()(X, X, X, need_weights=False, attn_mask=torch.zeros(L, L, dtype=torch.int64)),
     TypeError, "only bool .* and floating .* masks are supported"),
    (lambda: _mha()(X, X[0], X, need_weights=False), ValueError,
     "must all be 3-D .* or 2-D"),
])
def test_documented_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()
