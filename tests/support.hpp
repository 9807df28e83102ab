// Test support: host buffers in any dtype, seeded fills, the fp64 reference (Ref64), the
// same-precision naive baseline (Base_dt) and the FlashAttention accuracy rule of TESTPLAN.md.
#pragma once

#include <cstdint>
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
  double scale = 0;  // as the library resolves it (a float)
  bool causal = false;
  memattn::Align align = memattn::Align::top_left;
  int64_t window_left = -1, window_right = -1;
  std::vector<double> mask;  // empty: none; else 0 = masked
  std::vector<int64_t> mask_shape;
  std::vector<double> bias;  // empty: none
  std::vector<int64_t> bias_shape;
};

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
  memattn::Options options;
  Tensor mask_view, bias_view;

  Case(Shape s, DType dt, uint64_t seed = 1, double sigma = 1.0);
  void set_mask(std::vector<int64_t> shape, const std::vector<uint8_t>& values);
  void set_bias(std::vector<int64_t> shape, DType dt, const std::vector<double>& values);
  RefProblem problem() const;     // the exact values and options as a RefProblem
  void run();                     // forward into out and lse with options
  std::vector<double> out_values() const { return out.values(); }
};

// TESTPLAN.md's primary rule: err <= k * max|base - ref| + floor(dtype), plus NaN parity.
// Returns an empty string on pass, else a description of the failure.
std::string accuracy_failure(const std::vector<double>& got, const std::vector<double>& ref,
                             const std::vector<double>& base, DType out_dtype, double k = 2.0);

// Runs `c` and checks out against Ref64 and Base_dt with the primary rule; gtest assertion.
void expect_accurate(Case& c, double k = 2.0);

}  // namespace mt
