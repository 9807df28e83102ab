"""memattn.tile_family: the family per dtype spelling, algorithm, target and MEMATTN_FAMILY, its
errors (also raised by attention() itself), and that a call runs the family reported (its output
is bitwise that of the call forced onto that family, and not that of the others)."""
import numpy as np
import pytest

import memattn
from conftest import as_kind, assert_accurate, baseline, randn, reference, visible

FAMILIES = ["f32_fma", "bf16_dot", "amx_bf16", "amx_bf16_emulated"]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch):
    """The library's own choices: no target or family forced from outside."""
    monkeypatch.delenv("MEMATTN_FAMILY", raising=False)
    monkeypatch.delenv("MEMATTN_TARGET", raising=False)


def runs(family, dtype="bf16", target=None):
    """Can MEMATTN_FAMILY=family run inputs of dtype here (the planner says so, or refuses)?"""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MEMATTN_FAMILY", family)
        try:
            return memattn.tile_family(dtype, target=target) == family
        except ValueError as e:
            assert e.code == "unsupported", e
            return False


def amx_usable():
    return runs("amx_bf16")


@pytest.mark.parametrize("spelling", ["f32", np.float32, np.dtype("float32"), "f16", np.float16])
def test_f32_and_f16_run_the_f32_gemm(spelling):
    assert memattn.tile_family(spelling) == "f32_fma"
    for target in memattn.supported_targets():
        assert memattn.tile_family(spelling, target=target, algorithm="flash") == "f32_fma"


def test_torch_dtypes():
    torch = pytest.importorskip("torch")
    assert memattn.tile_family(torch.float32) == "f32_fma"
    assert memattn.tile_family(torch.bfloat16) == memattn.tile_family("bf16")
    assert memattn.tile_family(torch.float64) == "none"


def test_bf16_on_the_bf16_dot_target():
    if "avx512_bf16" not in memattn.supported_targets():
        pytest.skip("this CPU has no AVX-512 BF16 (no avx512_bf16 target)")
    want = "amx_bf16" if amx_usable() else "bf16_dot"
    assert memattn.tile_family("bf16", target="avx512_bf16") == want
    first = memattn.supported_targets()[0]  # avx512_bf16 only where vdpbf16ps outpaces the FMA
    assert memattn.tile_family("bf16") == ("amx_bf16" if amx_usable() else
                                           "bf16_dot" if first == "avx512_bf16" else "f32_fma")


@pytest.mark.parametrize("target", ["avx512", "avx2"])
def test_bf16_on_targets_without_the_dot_product(target):
    if target not in memattn.supported_targets():
        pytest.skip(f"this CPU does not run {target}")
    assert memattn.tile_family("bf16", target=target) == ("amx_bf16" if amx_usable() else "f32_fma")


@pytest.mark.parametrize("algorithm", ["naive", "sequential", "chunked"])
def test_reference_algorithms_run_none(algorithm, monkeypatch):
    for dtype in ("f32", "bf16", "f16", "f64"):
        assert memattn.tile_family(dtype, algorithm=algorithm) == "none"
    monkeypatch.setenv("MEMATTN_FAMILY", "bogus")  # read by flash calls only
    assert memattn.tile_family("f32", algorithm=algorithm) == "none"


def test_forced_family(monkeypatch):
    monkeypatch.setenv("MEMATTN_FAMILY", "amx_bf16_emulated")
    assert memattn.tile_family("bf16") == "amx_bf16_emulated"
    q = np.ones((1, 4, 2, 8), np.float32)
    for call in (lambda: memattn.tile_family("f32"), lambda: memattn.attention(q, q, q)):
        with pytest.raises(ValueError, match=r"^MEMATTN_FAMILY: amx_bf16_emulated cannot run this "
                                             r"call \(dtype f32, target ") as info:
            call()
        assert info.value.code == "unsupported"
    monkeypatch.setenv("MEMATTN_FAMILY", "f32_fma")
    assert memattn.tile_family("bf16") == "f32_fma"
    monkeypatch.setenv("MEMATTN_FAMILY", "")  # empty: as if unset
    assert memattn.tile_family("f32") == "f32_fma"


def test_unknown_family_names_the_choices(monkeypatch):
    monkeypatch.setenv("MEMATTN_FAMILY", "bogus")
    q = np.ones((1, 4, 2, 8), np.float32)
    out = np.full((1, 4, 2, 8), 3.0, np.float32)
    for call in (lambda: memattn.tile_family("bf16"), lambda: memattn.attention(q, q, q, out=out),
                 lambda: memattn.workspace_bytes(q, q, q)):
        with pytest.raises(ValueError, match=r"^MEMATTN_FAMILY: expected f32_fma, bf16_dot, "
                                             r"amx_bf16 or amx_bf16_emulated, got bogus$") as info:
            call()
        assert info.value.code == "invalid_argument"
    assert np.all(out == 3.0)


@pytest.mark.parametrize("call,error,message,code", [
    (lambda: memattn.tile_family("float32"), TypeError, r"dtype: dtype 'float32' is not a memattn dtype; expected one of f32, bf16, f16, f64, u8", "wrong_dtype"),
    (lambda: memattn.tile_family("u8"), TypeError, r"dtype: expected one of f32, bf16, f16, f64, got u8", "wrong_dtype"),
    (lambda: memattn.tile_family(np.int16), TypeError, r"dtype: numpy dtype int16 is not supported", "wrong_dtype"),
    (lambda: memattn.tile_family(np.int32), TypeError, r"dtype: expected one of f32, bf16, f16, f64, got i32", "wrong_dtype"),
    (lambda: memattn.tile_family(3), TypeError, r"dtype must be a memattn dtype name .* got 3", None),
    (lambda: memattn.tile_family("f32", target="nope"), ValueError, r"target: 'nope' is not a SIMD target", "invalid_argument"),
    (lambda: memattn.tile_family("f32", target=3), TypeError, r"target must be None or a name", None),
    (lambda: memattn.tile_family("f32", algorithm="fast"), ValueError, r"algorithm must be one of", "invalid_argument"),
    (lambda: memattn.tile_family("f64", algorithm="flash"), ValueError, r"flash takes f32, bf16 or f16 inputs, got f64", "unsupported"),
    (lambda: memattn.tile_family("f32", num_threads=-1), ValueError, r"num_threads must be 0 \(all\) or > 0, got -1", "invalid_argument"),
])
def test_errors(call, error, message, code):
    with pytest.raises(error, match=message) as info:
        call()
    if code is not None:
        assert info.value.code == code


def test_unknown_target_in_the_environment(monkeypatch):
    monkeypatch.setenv("MEMATTN_TARGET", "nope")
    with pytest.raises(ValueError, match=r"MEMATTN_TARGET: 'nope' is not a SIMD target"):
        memattn.tile_family("f32")


@pytest.mark.parametrize("target", [None] + memattn.supported_targets())
def test_reported_family_is_the_one_that_runs(rng, monkeypatch, target):
    """The default call is bitwise the call forced onto the reported family, and not the calls
    forced onto the others (amx_bf16 and its exact emulation agree); all are accurate. bf16
    operands need torch (numpy has no bfloat16)."""
    torch = pytest.importorskip("torch")
    q = randn(rng, (1, 40, 2, 64), "bf16")
    k, v = randn(rng, (1, 150, 1, 64), "bf16"), randn(rng, (1, 150, 1, 64), "bf16")
    tq, tk, tv = (as_kind(x, "torch", "bf16") for x in (q, k, v))
    ref, _ = reference(q, k, v, visible(40, 150))
    base = baseline(q, k, v, visible(40, 150), None, None, "bf16")

    def bits(x):  # raw bits: -0.0 differs from 0.0
        return x.view(torch.int16 if x.dtype == torch.bfloat16 else torch.int32)

    def run(family):
        monkeypatch.setenv("MEMATTN_FAMILY", family or "")  # "": the library's choice
        return memattn.attention(tq, tk, tv, return_lse=True, target=target)

    reported = memattn.tile_family("bf16", target=target)
    plain = run(None)
    ran = [f for f in FAMILIES if runs(f, target=target)]
    assert reported in ran and "f32_fma" in ran and "amx_bf16_emulated" in ran
    for family in ran:
        out, lse = run(family)
        assert_accurate(out, ref, base, "bf16", what=f"out on {family}")
        same = bits(out).equal(bits(plain[0])) and bits(lse).equal(bits(plain[1]))
        amx_twins = reported.startswith("amx_bf16") and family.startswith("amx_bf16")
        if family == reported:
            assert same, f"the default call did not run {family}"
        elif amx_twins:
            assert same, f"{family} and {reported} differ"
        else:
            assert not same, f"{family} gives the default call's bits, yet {reported} was reported"


def operand(dtype, seq, dim):
    """A [1, seq, 1, dim] torch tensor of `dtype` ('bf16' or 'f32')."""
    torch = pytest.importorskip("torch")
    return torch.zeros(1, seq, 1, dim, dtype={"bf16": torch.bfloat16, "f32": torch.float32}[dtype])


@pytest.mark.parametrize("dim", [64, 48])
def test_backward_family(dim):
    """AMX for bf16 head dims that are multiples of 32 where usable, else the bf16 dot products on
    avx512_bf16, else f32; f32 inputs run f32 and the naive algorithm none; decode shapes (at most 8
    query rows per kv head) f32, whose scores are dot products as in their forward."""
    q, k, v = operand("bf16", 9, dim), operand("bf16", 7, dim), operand("bf16", 7, 32)
    dot = "avx512_bf16" in memattn.supported_targets()
    target = "avx512_bf16" if dot else None
    want = ("amx_bf16" if amx_usable() and dim % 32 == 0 else "bf16_dot" if dot else "f32_fma")
    assert memattn.backward_tile_family(q, k, v, target=target) == want
    assert memattn.backward_tile_family(operand("bf16", 8, dim), k, v, target=target) == "f32_fma"
    f32 = [operand("f32", 5, dim), operand("f32", 7, dim), operand("f32", 7, 32)]
    assert memattn.backward_tile_family(*f32) == "f32_fma"
    assert memattn.backward_tile_family(q, k, v, algorithm="naive") == "none"


def test_backward_family_errors(monkeypatch):
    q, v = operand("bf16", 5, 64), operand("bf16", 7, 64)
    with pytest.raises(ValueError) as e:
        memattn.backward_tile_family(q, operand("bf16", 7, 48), v)
    assert "k" in str(e.value)
    monkeypatch.setenv("MEMATTN_FAMILY", "bogus")
    with pytest.raises(ValueError, match="MEMATTN_FAMILY"):
        memattn.backward_tile_family(q, operand("bf16", 7, 64), v)
