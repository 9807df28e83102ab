"""memattn.merge: attention on random slices of the keys merged back, against the float64
reference of the whole; stacked parts, in place, narrower outputs, zero parts, errors."""
import numpy as np
import pytest

import memattn
from conftest import as_kind, assert_accurate, baseline, randn, reference, to64, visible

KIND_DTYPES = [("numpy", "f32"), ("numpy", "f16"), ("numpy", "f64"), ("torch", "f32"),
               ("torch", "bf16"), ("torch", "f16")]


def split_parts(rng, kind, dtype, shape=(2, 7, 13, 4, 2, 8, 6), causal=True, cuts=None):
    """q, k, v, the visibility and forward's (out, lse) on each slice of the keys."""
    if kind == "torch":
        pytest.importorskip("torch")
    b, sq, sk, hq, hkv, d, dv = shape
    q, k, v = (randn(rng, (b, s, h, w), dtype) for s, h, w in ((sq, hq, d), (sk, hkv, d), (sk, hkv, dv)))
    mask = rng.random((sq, sk)) < 0.7
    mask[2] = False  # a row no part sees
    vis = visible(sq, sk, causal, "bottom_right", None, mask)
    if cuts is None:
        cuts = sorted([0, sk, *rng.integers(0, sk + 1, size=rng.integers(0, 5))])
    tq, tk, tv = (as_kind(x, kind, dtype) for x in (q, k, v))
    tvis = as_kind(vis.astype(np.float64), kind, "f32") != 0
    algorithm = "chunked" if dtype == "f64" else "auto"
    parts = [memattn.attention(tq, tk[:, j0:j1], tv[:, j0:j1], mask=tvis[..., j0:j1],
                               return_lse=True, algorithm=algorithm)
             for j0, j1 in zip(cuts[:-1], cuts[1:])]
    return q, k, v, vis, [p[0] for p in parts], [p[1] for p in parts]


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@pytest.mark.parametrize("trial", range(3))
def test_merge_of_key_slices_matches_the_reference(rng, kind, dtype, trial):
    q, k, v, vis, outs, lses = split_parts(rng, kind, dtype, causal=trial != 1)
    out, lse = memattn.merge(outs, lses, return_lse=True)
    assert type(out) is type(outs[0]) and out.dtype == outs[0].dtype
    ref, ref_lse = reference(q, k, v, vis, exact_scale=dtype == "f64")
    if dtype == "f64":  # the weights carry the float32 lses' rounding, 2^-24 |lse|
        slack = 4 * 2.0**-24 * np.max(np.abs(ref_lse[np.isfinite(ref_lse)]), initial=1.0)
        assert np.max(np.abs(to64(out) - ref)) <= slack * np.max(np.abs(ref))
    else:
        assert_accurate(out, ref, baseline(q, k, v, vis, None, None, dtype), dtype)
    lse = to64(lse)
    assert np.array_equal(lse == -np.inf, ref_lse == -np.inf)
    finite = ref_lse != -np.inf
    tolerance = (1e-5 if dtype in ("f32", "f64") else 2e-4) * np.maximum(1, np.abs(ref_lse[finite]))
    assert np.all(np.abs(lse[finite] - ref_lse[finite]) <= tolerance)
    assert np.all(to64(out)[:, 2] == 0), "a row no part sees gives 0"


def test_empty_and_single_key_parts_and_threads(rng):
    *_, outs, lses = split_parts(rng, "numpy", "f32", shape=(1, 9, 6, 2, 1, 8, 8),
                                 cuts=[0, 0, 1, 1, 2, 3, 6, 6])
    for part, lse in zip(outs, lses):  # rows that saw no key: never read
        part[np.transpose(lse, (0, 2, 1)) == -np.inf] = np.nan
    one = memattn.merge(outs, lses, num_threads=1)
    assert np.all(np.isfinite(one))
    for threads in (2, 3):
        assert memattn.merge(outs, lses, num_threads=threads).tobytes() == one.tobytes()


def test_stacked_parts_in_place_and_given_outputs(rng):
    *_, outs, lses = split_parts(rng, "numpy", "f32", cuts=[0, 4, 9, 13])
    want, want_lse = memattn.merge(outs, lses, return_lse=True)
    got = memattn.merge(np.stack(outs), np.stack(lses))  # an array of parts: iterated as views
    assert got.tobytes() == want.tobytes()
    out = np.full(np.array(want.shape)[[0, 2, 1, 3]], np.nan, np.float32).transpose(0, 2, 1, 3)
    assert memattn.merge(outs, lses, out=out) is out and out.tobytes() == want.tobytes()
    running, running_lse = outs[0], lses[0]  # accumulate into the first part
    result = memattn.merge(outs, lses, out=running, return_lse=True)
    assert result[0] is running
    assert running.tobytes() == want.tobytes()
    assert result[1].tobytes() == want_lse.tobytes()


def test_float32_parts_into_narrower_outputs(rng):
    q, k, v, vis, outs, lses = split_parts(rng, "numpy", "f32")
    want = memattn.merge(outs, lses)
    half = memattn.merge(outs, lses, out=np.empty(want.shape, np.float16))
    assert np.array_equal(half, want.astype(np.float16))  # the float32 result, rounded once
    torch = pytest.importorskip("torch")
    bf16 = memattn.merge([torch.from_numpy(x) for x in outs], [torch.from_numpy(x) for x in lses],
                         out=torch.empty(want.shape, dtype=torch.bfloat16))
    assert torch.equal(bf16, torch.from_numpy(want).to(torch.bfloat16))


def test_zero_parts():
    out, lse = memattn.merge([], [], out=np.full((1, 3, 2, 4), np.nan, np.float32), return_lse=True)
    assert np.all(out == 0) and not np.any(np.signbit(out))
    assert lse.shape == (1, 2, 3) and np.all(lse == -np.inf)
    with pytest.raises(ValueError, match=r"merge of no parts needs out="):
        memattn.merge([], [])


OUT = np.ones((1, 4, 2, 8), np.float32)
LSE = np.zeros((1, 2, 4), np.float32)


@pytest.mark.parametrize("call,error,message,code", [
    (lambda o: memattn.merge([OUT, OUT], [LSE], out=o), ValueError, r"outs and lses must have the same length \(one lse per part\); got 2 outs and 1 lses", "invalid_argument"),
    (lambda o: memattn.merge([OUT, OUT[..., :4]], [LSE, LSE], out=o), ValueError, r"outs\[1\]: shape \[1,4,2,4\] expected \[1,4,2,8\]", "invalid_argument"),
    (lambda o: memattn.merge([OUT, OUT.astype(np.float16)], [LSE, LSE], out=o), TypeError, r"outs\[1\]: dtype must match outs\[0\] \(f32\), got f16", "wrong_dtype"),
    (lambda o: memattn.merge([OUT], [LSE.astype(np.float64)], out=o), TypeError, r"lses\[0\]: dtype must be f32, got f64", "wrong_dtype"),
    (lambda o: memattn.merge([OUT], [LSE.astype(np.int16)], out=o), TypeError, r"lses\[0\]: numpy dtype int16 is not supported", "wrong_dtype"),
    (lambda o: memattn.merge([OUT], [LSE.astype(np.int32)], out=o), TypeError, r"lses\[0\]: dtype must be f32, got i32", "wrong_dtype"),
    (lambda o: memattn.merge([OUT.astype(np.float64)], [LSE], out=o), TypeError, r"out: dtype f32 cannot receive parts of dtype f64; expected f64", "wrong_dtype"),
    (lambda o: memattn.merge([OUT], [LSE], out=o, num_threads=-1), ValueError, r"num_threads must be 0 \(all\) or > 0, got -1", "invalid_argument"),
    (lambda o: memattn.merge([o[:, ::-1]], [LSE], out=o), ValueError, r"some elements of out and outs\[0\] refer to a single memory location.*in place, out must be the very same view", "aliasing"),
])
def test_errors_leave_out_untouched(call, error, message, code):
    out = np.full(OUT.shape, 7.25, np.float32)
    with pytest.raises(error, match=message) as info:
        call(out)
    assert info.value.code == code
    assert np.all(out == 7.25)


def test_python_level_errors():
    with pytest.raises(TypeError, match=r"outs must be a sequence of arrays"):
        memattn.merge(3, [LSE])
    with pytest.raises(TypeError, match=r"outs\[0\]: expected a numpy.ndarray or a torch.Tensor"):
        memattn.merge([[1.0]], [LSE])
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"all arrays of one call must be numpy arrays or all torch tensors; outs\[0\] is a numpy.ndarray but lses\[0\] is a torch.Tensor"):
        memattn.merge([OUT], [torch.from_numpy(LSE)])
