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
  const void* a;  // float, or bf16 for Kernels::gemm_bf16
  size_t a_row, a_col;
  const void* b;
  size_t ldb;
  float* c;
  size_t ldc;
  size_t m, n, k;
  bool accumulate;  // false: C = A B
};

// Scores of a few query rows as dot products (Kernels::dot_scores): st[t * ldst + r] = k_t . q_r
// for keys t < keys and rows r < rows, d a multiple of kPadFloats. Key row t is at k + t * k_row
// elements (f32, or bf16 widened exactly as read when k_bf16), query row r at q + r * q_row.
struct DotScoresArgs {
  const void* k;
  size_t k_row;
  bool k_bf16;
  size_t keys;
  const float* q;
  size_t q_row, rows, d;
  float* st;
  size_t ldst;
};

// One key chunk of a decode item's kv heads walked a few keys at a time (Kernels::walk_scores,
// walk_values): every head's rows of those keys before the next keys', so a BSHD cache, whose
// key rows hold all heads side by side, is read almost in address order. Per head the keys' rows
// lie k_row (v_row) elements apart from k (v), the chunk's first key's; its rows x d queries q
// (row pitch d), its scores and weights st[t * ldst + r], its accumulators acc[r * ldacc + c];
// d and dv multiples of kPadFloats.
struct WalkHead {
  const void* k;  // f32, or bf16 widened exactly as read when kv_bf16
  const void* v;
  const float* q;
  float* st;
  float* acc;
  const void* k_next;  // the next page's first rows (paged caches; see WalkArgs::ahead)
  const void* v_next;
};
struct WalkArgs {
  const WalkHead* heads;
  size_t n_heads;
  size_t k_row, v_row;
  bool kv_bf16;
  size_t keys, rows, d, dv, ldst, ldacc;
  // As key t is read, the rows of key t + ahead are asked into L2 (software prefetch): at the
  // walk's pitch from k (v) while t + ahead < ahead_end (possibly past the chunk), then those of
  // key t + ahead - ahead_end from k_next (v_next) while that is below next_keys.
  size_t ahead, ahead_end, next_keys;
};

struct Bf16DotKernels;

// Which operand of Kernels::gemm_bf16 holds bf16 elements.
enum class Bf16Operand { a, b };

struct Kernels {
  const char* name;  // "avx512_bf16", "avx512", "avx2", "sse4", "scalar", "neon", ...
  int64_t hwy_target;
  const Bf16DotKernels* bf16;  // vdpbf16ps kernels for bf16 inputs ("avx512_bf16" only), or null

  void (*gemm)(const GemmArgs& g);
  // gemm with one operand in bf16, widened exactly to f32 as it is read (the f32 products and
  // sums of gemm on widened copies, the same bits): a bf16 cache read in place by f32 queries.
  void (*gemm_bf16)(const GemmArgs& g, Bf16Operand bf16_operand);
  // Scores as dot products, for calls of few queries, whose rows would fill few of the GEMM's
  // lanes (4 of 16 for a group of 4 query heads and one new query): per (key, row) a vector of
  // partial sums (lane l: the elements kk = l mod lanes, in increasing kk), summed by a tree fixed
  // per vector width. The bits differ between targets of different widths (scalar: one chain).
  void (*dot_scores)(const DotScoresArgs& g);
  // The scores of a walk, each summed as dot_scores sums it, and its P V: acc += st[t][r] v_t in
  // key order by fused multiply-adds, as gemm accumulates: the same bits as those two.
  void (*walk_scores)(const WalkArgs& g);
  void (*walk_values)(const WalkArgs& g);
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
  // dst[j * ldd + i] += src[i * lds + j] for i < rows, j < cols: a tile added in transposed.
  void (*add_transposed)(const float* src, size_t lds, size_t rows, size_t cols, float* dst, size_t ldd);
};

// P V of one key chunk as a transposed product, (P V)^T = V^T P^T, whose rows are the dim_v value
// columns and whose lanes are the rows' queries, added into acc transposed; or as acc += P V, whose
// lanes are value columns padded to pad(dim_v). The transposed product wastes the padding of the
// rows instead, plus the transposed add: it is chosen when its products, `overhead` (a fraction)
// more for the add, are fewer. At full query chunks that is dim_v off a multiple of 16, where the
// padded product spent up to twice the products (dim_v = 17: 32 columns). Zen 4, n = 2048, 8
// heads, 1 thread: f32 d = 17 went from 52 to 42 ms, 65 from 127 to 114, 129 from 251 to 211, 241
// from 473 to 411; multiples of 16 ran as fast either way (64: 113 against 117 ms transposed), so
// f32 takes overhead 0. The bf16 product does twice the work per instruction, so the add weighs
// twice as much: multiples of 16 ran 3-17% slower transposed, 129 and 191 10-15% slower, 17 to 49
// 3-10% faster; bf16 takes overhead 1/4 (transposed for dim_v 1-12, 17-25, 33-38 and 49-51).
inline bool values_transposed(size_t rows, size_t dv, double overhead) {
  return double(dv * pad_floats(rows)) * (1.0 + overhead) < double(rows * pad_floats(dv));
}

// The transposed P V in blocks of kValueBlock value columns, which bounds pvt at 48 x
// pad(query_chunk) floats whatever dim_v (24 KiB at 128 queries, still in L1 when it is added
// into acc); 48 is a multiple of every target's tile rows. product(c0, m) writes rows c0 .. c0 + m
// of (P V)^T to pvt (m x ldt).
constexpr size_t kValueBlock = 48;
template <typename Product>
void accumulate_transposed(const Kernels& kern, size_t dv, size_t rows, float* pvt, size_t ldt, float* acc,
                           size_t ld_acc, Product product) {
  for (size_t c0 = 0; c0 < dv; c0 += kValueBlock) {
    const size_t m = dv - c0 < kValueBlock ? dv - c0 : kValueBlock;
    product(c0, m);
    kern.add_transposed(pvt, ldt, m, rows, acc + c0, ld_acc);
  }
}

// Does copying a chunk's f32 value rows into the worker's slice, once per query tile, beat the
// P V product reading them in place at their BSHD row pitch? Decided from CPUID, so every run on a
// CPU takes the same path (the bits are the same either way). Yes on a Sapphire Rapids class Xeon
// (45-52% -> 56-60% of the FMA peak, f32 d = 128, 1 thread) and on Zen 5 (a wash at d = 128, the
// copy 8% ahead at d = 64, sampled); no on Zen 4 (AMD family 19h with AVX-512), which splits each
// 512-bit store in two: sampled kernel time per unit of softmax work, n = 4096, 1 thread, two
// alternating runs each, 9.96 / 8.79 copied against 8.50 / 8.17 in place at d = 64 and 15.96 /
// 16.52 against 14.62 / 14.65 at d = 128 (the copy was 20% of the kernel's samples).
bool value_copy_pays();

// Targets compiled into this build that this CPU runs, best first.
const std::vector<const Kernels*>& available_kernels();
// The kernels for `name` (or, when null, MEMATTN_TARGET or else the best available); throws
// invalid_argument naming the choices when the name is unknown here.
const Kernels& select_kernels(const char* name);

}  // namespace memattn::detail
