// Test support: host buffers in any dtype, seeded fills, the fp64 reference (Ref64), the
// same-precision naive baseline (Base_dt) and the FlashAttention accuracy rule of TESTPLAN.md.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "memattn/memattn.hpp"

namespace mt {

using memattn::DType;
using memattn::Tensor;

// Rounds a double to the nearest value representable in `dt` (f64: unchanged, u8: 0/1).
double round_to(DType dt, double x);
// Half the distance from 1 to the next value of `dt` (2^-24 for f32).
double unit_roundoff(DType dt);

// A contiguous host buffer of `dtype` elements with a 4-D (or 3-D) logical shape; get/set convert
// through double. view() is the row-major Tensor over it.
struct Buf {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;

  Buf() = default;
  Buf(DType dt, std::vector<int64_t> shape);
  int64_t numel() const;
  double get(int64_t i) const;
  void set(int64_t i, double x);
  void* data() { return bytes.data(); }
  Tensor view();
  std::vector<double> values() const;  // all elements as double, row-major
  void fill(double x);
};

// Seeded fills; values are rounded to the buffer's dtype as they are stored.
void fill_randn(Buf& b, uint64_t seed, double sigma = 1.0);
void fill_uniform_int(Buf& b, uint64_t seed, int lo, int hi);

struct Shape {
  int64_t B = 1, Sq = 1, Sk = 1, Hq = 1, Hkv = 1, D = 16, Dv = 16;
};

// The attention problem as plain values: q [B,Sq,Hq,D], k [B,Sk,Hkv,D], v [B,Sk,Hkv,Dv]
// row-major; mask/bias as [B|1,H|1,Sq|1,Sk|1] with their own shapes.
struct RefProblem {
  Shape s;
  std::vector<double> q, k, v;
  double scale = 0;  // as the library resolves it (a float unless the inputs are f64)
  bool causal = false;
  memattn::Align align = memattn::Align::top_left;
  int64_t window_left = -1, window_right = -1;
  int64_t diagonal_offset = 0;
  std::vector<double> mask;  // empty: none; else 0 = masked
  std::vector<int64_t> mask_shape;
  std::vector<double> bias;  // empty: none
  std::vector<int64_t> bias_shape;
  // Score modifiers (docs/api.md): the cap (0: off, as the library resolves it), ALiBi slopes
  // ([Hq] or [B, Hq] row-major; empty: none) and one sink logit per query head (empty: none).
  double softcap = 0;
  std::vector<double> alibi_slopes;
  bool alibi_per_batch = false;
  std::vector<double> sinks;
};

// Key index of query 0's diagonal under p's alignment and diagonal offset (docs/api.md).
inline int64_t ref_diagonal(const RefProblem& p) {
  return (p.align == memattn::Align::bottom_right ? p.s.Sk - p.s.Sq : 0) + p.diagonal_offset;
}

// The definition of the score modifiers (docs/api.md) on the scaled score x of query row i against
// key j of (b, h): softcap * tanh(x / softcap), then ALiBi's -slope * |i + diag - j|, in `Real`
// with each step rounded by `acc`; the bias comes after.
template <typename Real, typename RA>
Real modified_score(const RefProblem& p, int64_t b, int64_t h, int64_t i, int64_t j, Real x, RA acc) {
  if (p.softcap > 0) x = acc(Real(p.softcap) * std::tanh(x / Real(p.softcap)));
  if (!p.alibi_slopes.empty()) {
    const int64_t diag = ref_diagonal(p);
    const double slope = p.alibi_slopes[size_t((p.alibi_per_batch ? b * p.s.Hq : 0) + h)];
    x = acc(x - Real(slope) * Real(std::llabs(i + diag - j)));
  }
  return x;
}

struct RefResult {
  std::vector<double> out;  // [B,Sq,Hq,Dv]
  std::vector<double> lse;  // [B,Hq,Sq]
};

// Naive attention in fp64 on the exact values: Ref64.
RefResult reference64(const RefProblem& p);
// The same in 80-bit long double: the reference for f64 outputs, whose baseline is Ref64.
RefResult reference_extended(const RefProblem& p);
// Naive attention in the precision of `dt` as TESTPLAN.md's Base_dt: f32 materialises S, softmax
// and P V in f32; bf16/f16 round S and P to the dtype, accumulate P V in f32, round the output.
RefResult baseline(const RefProblem& p, DType dt);

// The operands of a forward call, built from a Shape in one dtype with seeded randn fills.
struct Case {
  Shape s;
  DType dtype = DType::f32;
  Buf q, k, v, out;
  Buf lse;
  std::optional<Buf> mask, bias;
  std::optional<Buf> alibi, sinks;  // f32 score-modifier operands
  memattn::Options options;
  Tensor mask_view, bias_view, alibi_view, sinks_view;

  Case(Shape s, DType dt, uint64_t seed = 1, double sigma = 1.0);
  void set_mask(std::vector<int64_t> shape, const std::vector<uint8_t>& values);
  void set_bias(std::vector<int64_t> shape, DType dt, const std::vector<double>& values);
  // ALiBi slopes of shape [Hq] or [B, Hq]; sink logits [Hq] (f32, stored as given).
  void set_alibi(std::vector<int64_t> shape, const std::vector<double>& values);
  void set_sinks(const std::vector<double>& values);
  RefProblem problem() const;     // the exact values and options as a RefProblem
  void run();                     // forward into out and lse with options
  std::vector<double> out_values() const { return out.values(); }
};

// TESTPLAN.md's primary rule: err <= k * max|base - ref| + floor(dtype), plus NaN parity.
// Returns an empty string on pass, else a description of the failure.
std::string accuracy_failure(const std::vector<double>& got, const std::vector<double>& ref,
                             const std::vector<double>& base, DType out_dtype, double k = 2.0,
                             double abs_slack = 0.0);

// Runs `c` and checks out against Ref64 and Base_dt with the primary rule; gtest assertion.
void expect_accurate(Case& c, double k = 2.0);

}  // namespace mt

// ---- Helpers of the numerics, mask, layout, shape and determinism tests (TESTPLAN B, C, D) ----
namespace mt {

// The algorithms that accept inputs of `dt`: all four, less flash for f64.
std::vector<memattn::Algorithm> algorithms_for(DType dt);
// Zero-trust check (benchdnn): more than `fraction` of the values are exactly 0.
bool mostly_zero(const std::vector<double>& values, double fraction = 0.9);
// "" when both buffers hold the same bytes, else the first differing element and both values.
std::string bitwise_difference(const Buf& got, const Buf& want);
// Do elements [first, first + count) of a and b hold the same bytes?
bool same_bytes(const Buf& a, const Buf& b, int64_t first, int64_t count);

// Seeded plain values for masks and biases: n draws of N(mean, sigma^2); n bytes, 1 with
// probability `keep`.
std::vector<double> randn_values(size_t n, uint64_t seed, double mean = 0, double sigma = 1);
std::vector<uint8_t> random_mask(size_t n, uint64_t seed, double keep);
// dtype, algorithm, shape and the options that shape the computation, for failure messages.
std::string describe(const Case& c);

// Element-wise copies between a contiguous Buf and a strided view of the same dtype and shape.
void copy_to_view(const Buf& src, const Tensor& dst);
void copy_from_view(const Tensor& src, Buf& dst);

// `src` copied into the middle of a larger buffer (`storage`): each dim gets `before` elements in
// front and `after` behind, all holding `pad`; view is src's place in it.
struct Embedded {
  Buf storage;
  Tensor view;
};
Embedded embed(const Buf& src, double pad, int64_t before = 1, int64_t after = 2);

// Does query row i of (b, h) see key j under p's causal, window and boolean masks (as Ref64)?
bool ref_visible(const RefProblem& p, int64_t b, int64_t h, int64_t i, int64_t j);
// First element of out row (b, i, h) in a contiguous [B, Sq, Hq, Dv] buffer; lse element (b, h, i).
inline int64_t out_row_offset(const Shape& s, int64_t b, int64_t i, int64_t h) {
  return ((b * s.Sq + i) * s.Hq + h) * s.Dv;
}
inline int64_t lse_offset(const Shape& s, int64_t b, int64_t h, int64_t i) {
  return (b * s.Hq + h) * s.Sq + i;
}
// Calls fn(b, i, h) for every output row of s.
template <typename Fn>
void for_each_row(const Shape& s, Fn&& fn) {
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t i = 0; i < s.Sq; ++i)
      for (int64_t h = 0; h < s.Hq; ++h) fn(b, i, h);
}

// `bytes` of read-write memory flush against a PROT_NONE page: the span starts right after one
// (Guard::before) or ends right before one (Guard::after); the other side is guarded too, one page
// away at most. Any access beyond the span on the flush side faults (SIGSEGV).
enum class Guard { before, after };
class GuardedBytes {
 public:
  GuardedBytes(size_t bytes, Guard flush);
  ~GuardedBytes();
  GuardedBytes(const GuardedBytes&) = delete;
  GuardedBytes& operator=(const GuardedBytes&) = delete;
  void* data() const { return data_; }

 private:
  void* map_ = nullptr;
  size_t map_bytes_ = 0;
  void* data_ = nullptr;
};

// A copy of `b` in its own guarded span (kept alive by `spans`), as a view like b.view().
using GuardedSpans = std::vector<std::unique_ptr<GuardedBytes>>;
Tensor guarded_copy(GuardedSpans& spans, const Buf& b, Guard flush);

// Runs c's forward with every operand (q, k, v, out, lse, mask, bias) copied into its own guarded
// span, then copies out and lse back into c.
void run_guarded(Case& c, Guard flush);

// TESTPLAN's per-element conditioning check (oneDNN's floor, tightened), which catches errors
// that cancellation hides from the max-norm rule: for every finite element
// |O - O64| <= u_out |O64| + (u_p + 16 u_acc (1 + log2 Sk + |L64|)) sum_k p_k |V_k|, where |L64|
// stands for the magnitude of the row's scores (each carries an error of about u_acc |s|) and
// u_p is one rounding of P to a bf16/f16 input dtype for the P V product (as Base_dt does and
// the bf16 dot-product instructions require); u_p = 0 for f32 and f64.
std::string conditioning_failure(const std::vector<double>& got, const RefProblem& p,
                                 const RefResult& ref, DType out_dtype);

// Runs `c` with every algorithm for its dtype, flash on every supported SIMD target (out
// pre-filled with NaN, so unwritten rows fail), plainly or guarded, and checks each output
// against one Ref64 and Base_dt with the primary rule (k, plus abs_slack for the
// adversarial-magnitude cases 24/25), NaN parity, the zero-trust check and, outside the
// adversarial cases (abs_slack 0), the per-element conditioning check.
void expect_accurate_all(Case& c, double k = 2.0, double abs_slack = 0.0,
                         std::optional<Guard> guard = std::nullopt);

}  // namespace mt

namespace mt {

// Sets (value non-null) or unsets (null) an environment variable for the scope, then restores it.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value) setenv(name, value, 1);
    else unsetenv(name);
  }
  ~ScopedEnv() {
    if (old_) setenv(name_, old_->c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace mt
