// The flash backward's element-wise kernels, compiled once per Highway target (foreach_target)
// and matched at run time to the target of the forward's GEMM kernels.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "cpu/flash_backward_kernels_hwy.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include <cmath>
#include <string>
#include <vector>

#include "hwy/highway.h"
#include "hwy/contrib/math/math-inl.h"

#include "api/validate.hpp"
#include "cpu/flash_backward_kernels.hpp"

HWY_BEFORE_NAMESPACE();
namespace memattn::detail {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::ScalableTag<float>;
using VF = hn::Vec<DF>;

// One vector of the recomputation: p = exp((s - shift) - corr) into s, dS = p * (dP - D) into dp.
// s - shift is exact for the row's large scores (Sterbenz), so the correction is not lost to a
// rounding at the lse's magnitude. NaN is kept (IEEE, as Ref64) and never enters Highway's Exp,
// whose float-to-int step is a plain C++ cast (undefined for NaN) on the emu128/scalar targets.
HWY_INLINE void ProbAndDscore(DF d, float* s, float* dp, VF shift, VF corr, VF dsum) {
  const VF x = hn::Sub(hn::Sub(hn::LoadU(d, s), shift), corr);
  const auto nan = hn::IsNaN(x);
  const VF p = hn::IfThenElse(nan, x, hn::Exp(d, hn::IfThenZeroElse(nan, x)));
  hn::StoreU(p, d, s);
  hn::StoreU(hn::Mul(p, hn::Sub(hn::LoadU(d, dp), dsum)), d, dp);
}

void ProbsDscores(float* st, float* dpt, size_t keys, size_t ld, const float* shift,
                  const float* corr, const float* dsum) {
  const DF d;
  const size_t L = hn::Lanes(d);
  for (size_t r = 0; r < ld; r += L) {
    const VF sh = hn::LoadU(d, shift + r), c = hn::LoadU(d, corr + r), dd = hn::LoadU(d, dsum + r);
    for (size_t t = 0; t < keys; ++t) {
      ProbAndDscore(d, st + t * ld + r, dpt + t * ld + r, sh, c, dd);
    }
  }
}

void ProbsDscoresRows(float* s, float* dpm, size_t rows, size_t ld, const float* shift,
                      const float* corr, const float* dsum) {
  const DF d;
  const size_t L = hn::Lanes(d);
  for (size_t r = 0; r < rows; ++r) {
    const VF sh = hn::Set(d, shift[r]), c = hn::Set(d, corr[r]), dd = hn::Set(d, dsum[r]);
    for (size_t t = 0; t < ld; t += L) {
      ProbAndDscore(d, s + r * ld + t, dpm + r * ld + t, sh, c, dd);
    }
  }
}

void Scale(float* x, size_t n, float s) {
  const DF d;
  const VF vs = hn::Set(d, s);
  for (size_t i = 0; i < n; i += hn::Lanes(d)) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), vs), d, x + i);
}

extern const BackwardKernels kBackwardKernels;
const BackwardKernels kBackwardKernels = {HWY_TARGET, &ProbsDscores, &ProbsDscoresRows, &Scale};

}  // namespace HWY_NAMESPACE
}  // namespace memattn::detail
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace memattn::detail {

const BackwardKernels& backward_kernels(const Kernels& forward) {
  static const std::vector<const BackwardKernels*> compiled = [] {
    std::vector<const BackwardKernels*> l;
#define MEMATTN_HWY_TARGET(ns) l.push_back(&ns::kBackwardKernels);
#include "cpu/hwy_targets.inc"
    return l;
  }();
  for (const BackwardKernels* k : compiled)
    if (k->hwy_target == forward.hwy_target) return *k;
  fail(ErrorCode::unsupported, std::string("target: no backward kernels for the SIMD target '") +
                                   forward.name + "'");
}

}  // namespace memattn::detail
#endif  // HWY_ONCE
