// The per-SIMD-target kernel table of the flash path and its run-time selection.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::detail {

// Every f32 tile the kernels read or write has a row length that is a multiple of kPadFloats, so
// one build serves vectors of 4, 8 or 16 lanes with no column tails.
constexpr size_t kPadFloats = 16;
inline size_t pad_floats(size_t n) { return (n + kPadFloats - 1) / kPadFloats * kPadFloats; }

// C[m x n] (+)= A[m x k] B[k x n], n a multiple of kPadFloats. A is read element by element
// (broadcast) at a[i * a_row + kk * a_col], so it may be any strided view, e.g. a transposed tile;
// B and C are row-major with leading dimensions ldb, ldc (multiples of kPadFloats).
struct GemmArgs {
  const float* a;
  size_t a_row, a_col;
  const float* b;
  size_t ldb;
  float* c;
  size_t ldc;
  size_t m, n, k;
  bool accumulate;  // false: C = A B
};

struct Bf16DotKernels;

struct Kernels {
  const char* name;  // "avx512_bf16", "avx512", "avx2", "sse4", "scalar", "neon", ...
  int64_t hwy_target;
  const Bf16DotKernels* bf16;  // vdpbf16ps kernels for bf16 inputs ("avx512_bf16" only), or null

  void (*gemm)(const GemmArgs& g);
  // The online-softmax step for one key chunk of a transposed score tile st[keys][ld] (ld lanes =
  // query rows, a multiple of kPadFloats), scores first multiplied by `scale`: per lane, the new max over the chunk (NaN scores
  // ignored for the max), alpha = exp(old max - new max) (1 when equal), st <- exp(st - new max)
  // (NaN kept, -inf -> 0), row_sum <- row_sum * alpha + column sum. Updates row_max/row_sum,
  // writes alpha.
  void (*softmax_step)(float* st, size_t keys, size_t ld, float scale, float* row_max, float* row_sum,
                       float* alpha);
  // x[i][0..cols) *= alpha[i] for rows whose alpha is not 1; cols a multiple of kPadFloats.
  void (*scale_rows)(float* x, size_t ld, size_t rows, size_t cols, const float* alpha);
  // dst[0..n) = src[0..n) converted to f32; returns false if any value is NaN or infinite.
  bool (*to_f32)(const void* src, DType dtype, float* dst, size_t n);
  // Are x[r * row_stride + c] finite for all r < rows, c < n?
  bool (*all_finite)(const float* x, size_t row_stride, size_t rows, size_t n);
};

// Targets compiled into this build that this CPU runs, best first.
const std::vector<const Kernels*>& available_kernels();
// The kernels for `name` (or, when null, MEMATTN_TARGET or else the best available); throws
// invalid_argument naming the choices when the name is unknown here.
const Kernels& select_kernels(const char* name);

}  // namespace memattn::detail
