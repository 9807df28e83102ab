"""memattn.attention against the float64 reference: every mask option, GQA, dv != d, every
dtype and algorithm, numpy and torch, and the lse."""
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

import memattn
from conftest import as_kind, assert_accurate, baseline, randn, reference, to64, visible

# (batch, seq_q, seq_k, heads_q, heads_kv, d, dv) and the options of each case.
CASES = {
    "plain": ((2, 7, 9, 2, 2, 16, 16), {}),
    "causal_top_left": ((1, 9, 13, 2, 2, 8, 8), {"causal": True}),
    "causal_bottom_right": ((1, 13, 9, 2, 2, 8, 8), {"causal": True, "align": "bottom_right"}),
    "window": ((1, 17, 17, 1, 1, 8, 8), {"window": (3, 2)}),
    "window_left_only_causal": ((1, 17, 20, 1, 1, 8, 8),
                                {"causal": True, "window": (4, None), "align": "bottom_right"}),
    "mask": ((2, 6, 11, 2, 1, 8, 8), {"mask": (2, 1, 6, 11)}),
    "mask_2d": ((1, 6, 11, 3, 3, 8, 8), {"mask": (6, 11)}),
    "bias": ((2, 5, 8, 4, 2, 8, 8), {"bias": (1, 4, 5, 8)}),
    "bias_mask_causal": ((1, 8, 8, 2, 2, 8, 8), {"bias": (8, 8), "mask": (1, 1, 1, 8),
                                                 "causal": True}),
    "gqa_dv": ((2, 5, 6, 6, 2, 12, 5), {"scale": 0.3}),
    "mqa_long": ((1, 3, 70, 4, 1, 32, 32), {}),
    # seq_q <= 16 against 4500 keys: the decode items (a GQA group per item, 3 key splits merged).
    "decode_split": ((1, 4, 4500, 8, 2, 16, 16), {"causal": True, "align": "bottom_right"}),
}

KIND_DTYPES = [("numpy", "f32"), ("numpy", "f16"), ("torch", "f32"), ("torch", "f16"),
               ("torch", "bf16")]


def make_operands(rng, shape, dtype, options):
    """float64 operands (exact in dtype) for a case; mask/bias options become arrays."""
    b, sq, sk, hq, hkv, d, dv = shape
    q, k, v = (randn(rng, (b, s, h, w), dtype) for s, h, w in ((sq, hq, d), (sk, hkv, d), (sk, hkv, dv)))
    options = dict(options)
    if "mask" in options:
        options["mask"] = rng.random(options["mask"]) < 0.7
    if "bias" in options:
        options["bias"] = randn(rng, options["bias"], "f32")
    return q, k, v, options


def check_forward(rng, kind, dtype, shape, options, algorithm="auto"):
    if kind == "torch":
        pytest.importorskip("torch")
    q, k, v, options = make_operands(rng, shape, dtype, options)
    vis = visible(shape[1], shape[2], options.get("causal", False), options.get("align", "top_left"),
                  options.get("window"), options.get("mask"))
    bias, scale = options.get("bias"), options.get("scale")
    ref, ref_lse = reference(q, k, v, vis, bias, scale, exact_scale=dtype == "f64")
    base = baseline(q, k, v, vis, bias, scale, dtype)
    call = dict(options)
    if "mask" in call:
        call["mask"] = as_kind(call["mask"].astype(np.float64), kind, "f32") != 0
    if "bias" in call:
        call["bias"] = as_kind(call["bias"], kind, "f32")
    out, lse = memattn.attention(as_kind(q, kind, dtype), as_kind(k, kind, dtype), as_kind(v, kind, dtype),
                                 return_lse=True, algorithm=algorithm, **call)
    assert type(out) is type(lse)
    assert_accurate(out, ref, base, dtype)
    lse = to64(lse)
    assert lse.shape == ref_lse.shape
    assert np.array_equal(lse == -np.inf, ref_lse == -np.inf), "fully masked rows must give -inf"
    finite = ref_lse != -np.inf
    tolerance = (1e-5 if dtype in ("f32", "f64") else 2e-4) * np.maximum(1, np.abs(ref_lse[finite]))
    assert np.all(np.abs(lse[finite] - ref_lse[finite]) <= tolerance)
    return out


@pytest.mark.parametrize("kind,dtype", KIND_DTYPES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_reference(rng, kind, dtype, case):
    shape, options = CASES[case]
    out = check_forward(rng, kind, dtype, shape, options)
    assert str(out.dtype).endswith({"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[dtype])


@pytest.mark.parametrize("algorithm", ["naive", "sequential", "chunked", "flash"])
@pytest.mark.parametrize("case", ["bias_mask_causal", "gqa_dv", "window"])
def test_every_algorithm(rng, algorithm, case):
    check_forward(rng, "numpy", "f32", *CASES[case], algorithm=algorithm)


@pytest.mark.parametrize("algorithm", ["naive", "sequential", "chunked"])
def test_float64_reference_algorithms(rng, algorithm):
    check_forward(rng, "numpy", "f64", *CASES["bias_mask_causal"], algorithm=algorithm)


def test_random_shapes_and_options(rng):
    """Many random problems, each with a random mix of every option."""
    for _ in range(25):
        hkv = int(rng.integers(1, 3))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 40)), int(rng.integers(1, 40)),
                 hkv * int(rng.integers(1, 3)), hkv, int(rng.integers(1, 70)), int(rng.integers(1, 40)))
        _, sq, sk, hq = shape[:4]
        options = {}
        if rng.random() < 0.5:
            options["causal"] = True
        if rng.random() < 0.5:
            options["align"] = "bottom_right"
        if rng.random() < 0.3:
            options["window"] = (int(rng.integers(0, 8)), None if rng.random() < 0.5 else int(rng.integers(0, 8)))
        if rng.random() < 0.3:
            options["mask"] = (1, hq, sq, sk)
        if rng.random() < 0.3:
            options["bias"] = (shape[0], 1, 1, sk)
        check_forward(rng, "numpy", "f32", shape, options)


def test_fully_masked_rows_are_zero(rng):
    """bottom_right with seq_q > seq_k leaves the first rows with no key: out 0, lse -inf."""
    q, k, v = (np.asarray(randn(rng, (1, s, 1, 8)), dtype=np.float32) for s in (6, 2, 2))
    out, lse = memattn.attention(q, k, v, causal=True, align="bottom_right", return_lse=True)
    assert np.all(out[0, :4] == 0) and not np.any(np.signbit(out[0, :4]))
    assert np.all(lse[0, 0, :4] == -np.inf) and np.all(np.isfinite(lse[0, 0, 4:]))


def test_empty_sequences():
    q = np.zeros((1, 0, 2, 8), np.float32)
    out = memattn.attention(q, q, q)
    assert out.shape == (1, 0, 2, 8)
    k = np.zeros((1, 0, 2, 8), np.float32)
    out, lse = memattn.attention(np.ones((1, 3, 2, 8), np.float32), k, k, return_lse=True)
    assert np.all(out == 0) and np.all(lse == -np.inf)


def test_results_do_not_depend_on_thread_count(rng):
    q, k, v = (randn(rng, (2, 150, 4, 32)).astype(np.float32) for _ in range(3))
    one = memattn.attention(q, k, v, causal=True, num_threads=1)
    two = memattn.attention(q, k, v, causal=True, num_threads=2)
    assert np.array_equal(one, two)


def test_info_functions():
    targets = memattn.supported_targets()
    assert isinstance(targets, list) and targets and all(isinstance(t, str) for t in targets)
    assert memattn.selected_target() in targets
    assert memattn.selected_target(targets[-1]) == targets[-1]
    cmake = (pathlib.Path(__file__).parents[2] / "CMakeLists.txt").read_text()
    assert memattn.__version__ == re.search(r"project\(memattn VERSION ([0-9.]+)", cmake).group(1)
    q = np.zeros((1, 64, 2, 16), np.float32)
    assert memattn.workspace_bytes(q, q, q, algorithm="naive") >= 64 * 64 * 4
    assert memattn.backward_workspace_bytes(q, q, q, bias_grad=True, bias=np.zeros((64, 64), np.float32)) > 0


@pytest.mark.parametrize("target", memattn.supported_targets())
def test_every_target(rng, target):
    q, k, v, _ = make_operands(rng, (1, 9, 33, 2, 1, 24, 24), "f32", {})
    vis = visible(9, 33, causal=True)
    ref = reference(q, k, v, vis)[0]
    out = memattn.attention(*(x.astype(np.float32) for x in (q, k, v)), causal=True, target=target)
    assert_accurate(out, ref, baseline(q, k, v, vis, None, None, "f32"), "f32")


def test_import_does_not_import_torch():
    """memattn works without torch: importing it must not pull torch in."""
    code = "import sys, memattn; assert 'torch' not in sys.modules, 'memattn imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))


def test_import_needs_no_numpy():
    """`import memattn` works where numpy is absent (blocked here): numpy is needed only by
    callers that pass numpy arrays, who have it."""
    code = ("import sys; sys.modules['numpy'] = None\n"  # any `import numpy` now fails
            "import memattn; assert memattn.supported_targets() and memattn.__version__\n"
            "try:\n    memattn.attention([1.0], [1.0], [1.0])\nexcept TypeError as e:\n"
            "    assert 'numpy.ndarray or a torch.Tensor' in str(e), e\n"
            "else:\n    sys.exit('a list was accepted')\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ))
