"""Shared test helpers: random operands, the float64 reference attention (numpy, or torch for
autograd gradients), the same-precision naive baseline and the project's accuracy rule."""
import zlib

import numpy as np
import pytest

# Unit roundoff of each output dtype.
UNIT = {"f32": 2.0**-24, "f16": 2.0**-11, "bf16": 2.0**-8, "f64": 2.0**-53}


def round_to(x, dtype):
    """x (float64 numpy) rounded to `dtype` ('f64', 'f32', 'f16', 'bf16') and back to float64."""
    if dtype == "f64":
        return np.asarray(x, dtype=np.float64)
    if dtype == "f16":
        return np.asarray(x).astype(np.float16).astype(np.float64)
    x32 = np.asarray(x, dtype=np.float32)
    if dtype == "f32":
        return x32.astype(np.float64)
    # bf16: round the float32 bit pattern to its top 16 bits, to nearest even.
    bits = x32.view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    return rounded.view(np.float32).astype(np.float64)


def randn(rng, shape, dtype="f32", sigma=1.0):
    """Normal values already rounded to `dtype`, as float64 (exactly representable in dtype)."""
    return round_to(rng.standard_normal(shape) * sigma, dtype)


NUMPY_DTYPES = {"f32": np.float32, "f16": np.float16, "f64": np.float64}


def as_kind(x, kind, dtype):
    """float64 values (exact in dtype) as a numpy array or torch tensor of `dtype`."""
    if kind == "numpy":
        return x.astype(NUMPY_DTYPES[dtype])
    import torch
    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16,
              "f64": torch.float64}
    return torch.from_numpy(np.ascontiguousarray(x)).to(dtypes[dtype])


def to64(x):
    """A result (numpy array or torch tensor of any float dtype) as float64 numpy."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    import torch
    return x.detach().to(torch.float64).numpy()


def visible(sq, sk, causal=False, align="top_left", window=None, mask=None, diagonal_offset=0):
    """Which keys each query sees, [B|1, H|1, Sq, Sk] bool, as docs/api.md defines it."""
    i = np.arange(sq)[:, None]
    j = np.arange(sk)[None, :]
    diag = i + (sk - sq if align == "bottom_right" else 0) + diagonal_offset
    vis = np.ones((sq, sk), dtype=bool)
    if causal:
        vis &= j <= diag
    if window is not None:
        left, right = (-1 if w is None else w for w in window)
        if left >= 0:
            vis &= j >= diag - left
        if right >= 0:
            vis &= j <= diag + right
    vis = vis[None, None]
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        vis = vis & m.reshape((1,) * (4 - m.ndim) + m.shape)
    return vis


class _Numpy:
    """The few array operations the reference needs, for numpy."""
    einsum, exp, log, where = np.einsum, np.exp, np.log, np.where

    @staticmethod
    def repeat_heads(x, group):
        return np.repeat(x, group, axis=2)

    @staticmethod
    def rowmax(x):
        return x.max(-1, keepdims=True)

    @staticmethod
    def constant(x):
        return x

    @staticmethod
    def rowsum(x):
        return x.sum(-1, keepdims=True)


class _Torch:
    """The same operations for torch (for autograd through the reference)."""

    def __init__(self):
        import torch
        self.torch = torch
        self.einsum, self.exp, self.log, self.where = torch.einsum, torch.exp, torch.log, torch.where

    @staticmethod
    def repeat_heads(x, group):
        return x.repeat_interleave(group, dim=2)

    @staticmethod
    def rowmax(x):
        return x.amax(-1, keepdim=True)

    @staticmethod
    def constant(x):
        """The row maximum is a shift the softmax cancels: no gradient flows through it."""
        return x.detach()

    @staticmethod
    def rowsum(x):
        return x.sum(-1, keepdim=True)


def library_scale(d, scale, exact=False):
    """The scale memattn applies (1/sqrt(d) when unset): exact for float64 inputs (exact=True),
    rounded to float32 for the others, whose scores are float32."""
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    return float(scale) if exact else float(np.float32(scale))


def reference(q, k, v, vis, bias=None, scale=None, xp=None, exact_scale=False):
    """softmax(scale q k^T + bias over visible keys) v and lse, in the precision of the inputs
    (float64 for the reference); fully masked rows give 0 and -inf. q [B,Sq,Hq,d] etc."""
    xp = xp or _Numpy
    group = q.shape[2] // k.shape[2] if k.shape[2] else 1
    scale = library_scale(q.shape[3], scale, exact_scale)
    s = xp.einsum("bqhd,bkhd->bhqk", q, xp.repeat_heads(k, group)) * scale
    if bias is not None:
        s = s + bias.reshape((1,) * (4 - bias.ndim) + tuple(bias.shape))
    neg_inf = float("-inf")
    vis = vis if xp is _Numpy else xp.torch.from_numpy(vis)
    s = xp.where(vis, s, neg_inf)
    m = xp.constant(xp.rowmax(s))
    m = xp.where(m == neg_inf, 0.0, m)
    p = xp.exp(s - m)
    total = xp.rowsum(p)
    safe = xp.where(total == 0, 1.0, total)
    out = xp.einsum("bhqk,bkhd->bqhd", p / safe, xp.repeat_heads(v, group))
    with np.errstate(divide="ignore"):
        lse = (xp.log(total) + m)[..., 0]
    return out, lse


def reference_grads(q, k, v, dout, vis, bias=None, scale=None, dtype="f64"):
    """Gradients of sum(reference(...) * dout) by torch autograd, computed in `dtype`
    ('f64': the reference; 'f32', 'bf16': the naive same-precision baseline). Returns float64
    numpy dq, dk, dv, dbias (None without bias)."""
    torch = pytest.importorskip("torch")
    tdt = {"f64": torch.float64, "f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    leaves = [torch.tensor(x, dtype=tdt, requires_grad=True) for x in (q, k, v)]
    tbias = None if bias is None else torch.tensor(bias, dtype=tdt, requires_grad=True)
    out, _ = reference(*leaves, vis, tbias, scale, xp=_Torch())
    (out * torch.tensor(dout, dtype=tdt)).sum().backward()
    grads = [to64(t.grad) for t in leaves]
    grads.append(None if tbias is None else to64(tbias.grad))
    return grads


def baseline(q, k, v, vis, bias, scale, dtype):
    """Naive attention in the operands' precision: f32 scores, softmax and P V (f64 for f64);
    for f16/bf16 the scores and probabilities are also rounded to the dtype."""
    if dtype == "f64":
        return reference(q, k, v, vis, bias, scale, exact_scale=True)[0]
    f32 = np.float32
    group = q.shape[2] // k.shape[2]
    scale = f32(library_scale(q.shape[3], scale))
    s = np.einsum("bqhd,bkhd->bhqk", q.astype(f32), np.repeat(k, group, axis=2).astype(f32)) * scale
    if bias is not None:
        s = s + bias.reshape((1,) * (4 - bias.ndim) + bias.shape).astype(f32)
    s = round_to(np.where(vis, s, -np.inf), dtype).astype(f32)
    m = s.max(-1, keepdims=True)
    p = np.exp(s - np.where(m == -np.inf, f32(0), m))
    total = p.sum(-1, keepdims=True)
    p = round_to(p / np.where(total == 0, f32(1), total), dtype).astype(f32)
    return round_to(np.einsum("bhqk,bkhd->bqhd", p, np.repeat(v, group, axis=2).astype(f32)), dtype)


def accuracy_bound(ref, base, dtype, k=2.0):
    """The project's rule (docs/api.md): k * max|base - ref| + the output dtype's rounding floor."""
    floor = 2 * np.max(np.abs(round_to(ref + 0.3, dtype) - 0.3 - ref), initial=0.0)
    floor += 4 * UNIT[dtype] * np.max(np.abs(ref), initial=0.0)
    return k * np.max(np.abs(base - ref), initial=0.0) + floor


def assert_accurate(got, ref, base, dtype, what="out", k=2.0):
    got = to64(got)
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    assert np.array_equal(np.isnan(got), np.isnan(ref)), f"{what}: NaN where the reference has none"
    err = np.max(np.abs(got - ref), initial=0.0)
    bound = accuracy_bound(ref, base, dtype, k)
    assert err <= bound, f"{what}: max error {err:.3g} > bound {bound:.3g} ({dtype})"


@pytest.fixture
def rng(request):
    """A generator seeded from the test's name, so every test has its own reproducible data."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
