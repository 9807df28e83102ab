// AMX bf16 products on whole tiles (a 2 x 2 tile GEMM: 4 C tiles fed by 2 A and 2 B tiles) and
// the operand packing around them, shared by the flash forward's AMX family and the flash
// backward's AMX products. The packing also has AVX-512 versions (function target attributes,
// chosen at run time), which give the same bits as the portable ones.
#include "cpu/amx_gemm.hpp"

#include <algorithm>
#include <utility>

#include "common/half.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
// GCC 12 warns of uninitialised __Y inside its own AVX-512 headers when they are used from target
// attribute functions (a known false positive of _mm512_undefined_*).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#define MEMATTN_AMX_PACK_AVX512 1
#endif

namespace memattn::detail {
namespace {

// The tile registers: C(i, j) = 2 i + j for the 2 x 2 accumulators, A(i) = 4 + i, B(j) = 6 + j.
constexpr int kC = 0, kA = 4, kB = 6;
constexpr ptrdiff_t kRowBytes = kAmxColsb;  // one tile row: 16 f32 or 32 bf16

}  // namespace

TileConfig full_tiles() {
  TileConfig cfg;
  for (TileShape& t : cfg.tile) t = {uint8_t(kAmxRows), uint16_t(kAmxColsb)};
  return cfg;
}

namespace {

// Calls f(std::integral_constant<int, I>) for I = 0 .. N-1: tile numbers must be constants.
template <int N, typename F>
void unroll(F&& f) {
  [&]<int... I>(std::integer_sequence<int, I...>) { (f(std::integral_constant<int, I>{}), ...); }(
      std::make_integer_sequence<int, N>{});
}

const uint8_t* a_tile(const TileGemm& g, size_t i, size_t kb) {
  return g.a + ptrdiff_t(i * kAmxTileRows) * g.a_row + ptrdiff_t(kb) * kRowBytes;
}
const uint8_t* b_tile(const TileGemm& g, size_t kb, size_t j) {
  return g.b + ptrdiff_t(kb * kAmxTileRows) * g.b_row + ptrdiff_t(j) * kRowBytes;
}

template <typename Ops, int T>
void load_c(const TileGemm& g, size_t ti, size_t tj) {
  if (!g.accumulate) return Ops::template zero<T>();
  const size_t r0 = ti * kAmxTileRows;
  float* c = g.c + r0 * g.ldc + tj * kAmxTileRows;
  if (r0 + kAmxTileRows <= g.c_rows) return Ops::template load<T>(c, ptrdiff_t(g.ldc * sizeof(float)));
  const size_t rows = g.c_rows - r0;
  for (size_t r = 0; r < kAmxTileRows; ++r)
    if (r < rows) std::copy_n(c + r * g.ldc, kAmxTileRows, g.bounce + r * kAmxTileRows);
    else std::fill_n(g.bounce + r * kAmxTileRows, kAmxTileRows, 0.0f);
  Ops::template load<T>(g.bounce, kRowBytes);
}

template <typename Ops, int T>
void store_c(const TileGemm& g, size_t ti, size_t tj) {
  const size_t r0 = ti * kAmxTileRows;
  float* c = g.c + r0 * g.ldc + tj * kAmxTileRows;
  if (r0 + kAmxTileRows <= g.c_rows) return Ops::template store<T>(c, ptrdiff_t(g.ldc * sizeof(float)));
  Ops::template store<T>(g.bounce, kRowBytes);
  for (size_t r = 0; r < g.c_rows - r0; ++r) std::copy_n(g.bounce + r * kAmxTileRows, kAmxTileRows, c + r * g.ldc);
}

// One MB x NB block of C tiles at tile (i0, j0), held in tiles for the whole reduction.
template <typename Ops, int MB, int NB>
void gemm_block(const TileGemm& g, size_t i0, size_t j0) {
  unroll<MB>([&](auto i) {
    unroll<NB>([&](auto j) { load_c<Ops, kC + 2 * decltype(i)::value + decltype(j)::value>(g, i0 + i, j0 + j); });
  });
  for (size_t kb = 0; kb < g.k_blocks; ++kb) {
    unroll<MB>([&](auto i) { Ops::template load<kA + decltype(i)::value>(a_tile(g, i0 + i, kb), g.a_row); });
    unroll<NB>([&](auto j) { Ops::template load<kB + decltype(j)::value>(b_tile(g, kb, j0 + j), g.b_row); });
    unroll<MB>([&](auto i) {
      unroll<NB>([&](auto j) {
        constexpr int I = decltype(i)::value, J = decltype(j)::value;
        Ops::template dpbf16ps<kC + 2 * I + J, kA + I, kB + J>();
      });
    });
  }
  unroll<MB>([&](auto i) {
    unroll<NB>([&](auto j) { store_c<Ops, kC + 2 * decltype(i)::value + decltype(j)::value>(g, i0 + i, j0 + j); });
  });
}

}  // namespace

template <typename Ops>
void tile_gemm(const TileGemm& g) {
  for (size_t i = 0; i < g.m_tiles; i += 2)
    for (size_t j = 0; j < g.n_tiles; j += 2) {
      const bool two_rows = i + 1 < g.m_tiles, two_cols = j + 1 < g.n_tiles;
      if (two_rows && two_cols) gemm_block<Ops, 2, 2>(g, i, j);
      else if (two_rows) gemm_block<Ops, 2, 1>(g, i, j);
      else if (two_cols) gemm_block<Ops, 1, 2>(g, i, j);
      else gemm_block<Ops, 1, 1>(g, i, j);
    }
}

template void tile_gemm<AmxHardware>(const TileGemm&);
template void tile_gemm<AmxEmulated>(const TileGemm&);

namespace {

void pack_probability_rows_portable(const float* st, size_t ld, size_t keys, size_t rows, uint16_t* p, size_t p_row) {
  for (size_t t0 = 0; t0 < keys; t0 += kAmxTileDepth) {
    const size_t t1 = std::min(t0 + kAmxTileDepth, keys);
    for (size_t r = 0; r < rows; ++r) {
      uint16_t* dst = p + r * p_row;
      for (size_t t = t0; t < t1; ++t) dst[t] = to_bf16(st[t * ld + r]).bits;
      std::fill(dst + t1, dst + t0 + kAmxTileDepth, uint16_t(0));
    }
  }
}

#ifdef MEMATTN_AMX_PACK_AVX512
#define MEMATTN_AVX512F __attribute__((target("avx512f")))
#define MEMATTN_AVX512BW __attribute__((target("avx512f,avx512bw")))

// to_bf16 on 16 lanes, the bits in the low half of each 32-bit lane: nearest even by adding
// 0x7fff plus the lowest kept bit, NaN quieted instead (bit 6 of the bf16).
MEMATTN_AVX512F inline __m512i bf16_lanes(__m512 x) {
  const __m512i u = _mm512_castps_si512(x), high = _mm512_srli_epi32(u, 16);
  const __m512i bias = _mm512_add_epi32(_mm512_and_si512(high, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fff));
  const __m512i rounded = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_or_epi32(rounded, nan, high, _mm512_set1_epi32(0x40));
}

// v[k] lane j -> v[j] lane k for a 16 x 16 block of 32-bit values: 32-bit then 64-bit interleaves
// within 128-bit lanes, then a 4 x 4 transposition of the 128-bit lanes.
MEMATTN_AVX512F inline void transpose_16x16(__m512i v[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  // v[4g + c], 128-bit lane L: rows 4g .. 4g+3 of column 4L + c.
  for (int i = 0; i < 16; i += 4) {
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i x0 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0x44);
    const __m512i x1 = _mm512_shuffle_i32x4(v[c], v[4 + c], 0xee);
    const __m512i x2 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0x44);
    const __m512i x3 = _mm512_shuffle_i32x4(v[8 + c], v[12 + c], 0xee);
    t[c] = _mm512_shuffle_i32x4(x0, x2, 0x88);
    t[4 + c] = _mm512_shuffle_i32x4(x0, x2, 0xdd);
    t[8 + c] = _mm512_shuffle_i32x4(x1, x3, 0x88);
    t[12 + c] = _mm512_shuffle_i32x4(x1, x3, 0xdd);
  }
  std::copy_n(t, 16, v);
}

// Rows r0 .. r0+15 of key t as bf16 lanes; zero past the keys.
MEMATTN_AVX512F inline __m512i key_lanes(const float* st, size_t ld, size_t keys, size_t t, size_t r0) {
  return t < keys ? bf16_lanes(_mm512_loadu_ps(st + t * ld + r0)) : _mm512_setzero_si512();
}

// Per block of 32 keys and 16 rows: keys 2k and 2k+1 of the 16 rows as 32-bit pairs in v[k], then
// transposed, so that v[j] holds row j's 32 keys: one 64-byte store per P row.
MEMATTN_AVX512F void pack_probability_rows_avx512(const float* st, size_t ld, size_t keys, size_t rows, uint16_t* p,
                                                  size_t p_row) {
  for (size_t t0 = 0; t0 < keys; t0 += kAmxTileDepth)
    for (size_t r0 = 0; r0 < rows; r0 += kAmxTileRows) {
      __m512i v[16];
      for (size_t k = 0; k < 16; ++k)
        v[k] = _mm512_or_si512(key_lanes(st, ld, keys, t0 + 2 * k, r0),
                               _mm512_slli_epi32(key_lanes(st, ld, keys, t0 + 2 * k + 1, r0), 16));
      transpose_16x16(v);
      for (size_t j = 0; j < 16; ++j) _mm512_storeu_si512(p + (r0 + j) * p_row + t0, v[j]);
    }
}

// Q^T pairs for 16 rows at a time: a row's bf16 pairs (2m, 2m+1) are its 32-bit word m, so the
// pairs are the 32-bit transposition of the rows. rows[r] null: a zero row. Masked loads stop at
// column `dim`, so nothing past a row is read.
MEMATTN_AVX512BW void pack_query_pairs_avx512(const uint16_t* const rows[16], size_t dim, size_t depth,
                                              uint32_t* qt, size_t ld) {
  for (size_t m0 = 0; m0 < depth / 2; m0 += 16) {
    const size_t c0 = 2 * m0, n = dim > c0 ? std::min<size_t>(dim - c0, 32) : 0;
    const __mmask32 keep = n == 32 ? ~__mmask32(0) : (__mmask32(1) << n) - 1;
    __m512i v[16];
    for (size_t r = 0; r < 16; ++r)
      v[r] = rows[r] != nullptr ? _mm512_maskz_loadu_epi16(keep, rows[r] + c0) : _mm512_setzero_si512();
    transpose_16x16(v);
    for (size_t j = 0; j < 16; ++j) _mm512_storeu_si512(qt + (m0 + j) * ld, v[j]);
  }
}
#endif

}  // namespace

bool pack_query_pairs_vector() {
#ifdef MEMATTN_AMX_PACK_AVX512
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return has;
#else
  return false;
#endif
}

bool pack_probability_rows_vector() {
#ifdef MEMATTN_AMX_PACK_AVX512
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

void pack_probability_rows(const float* st, size_t ld, size_t keys, size_t rows, uint16_t* p, size_t p_row,
                           bool vector) {
#ifdef MEMATTN_AMX_PACK_AVX512
  if (vector) return pack_probability_rows_avx512(st, ld, keys, rows, p, p_row);
#endif
  (void)vector;
  pack_probability_rows_portable(st, ld, keys, rows, p, p_row);
}

void pack_query_pairs(const uint16_t* const rows[16], size_t dim, size_t depth, uint32_t* qt, size_t ld) {
#ifdef MEMATTN_AMX_PACK_AVX512
  if (pack_query_pairs_vector()) return pack_query_pairs_avx512(rows, dim, depth, qt, ld);
#endif
  for (size_t m = 0; m < depth / 2; ++m)
    for (size_t r = 0; r < 16; ++r) {
      const uint16_t lo = rows[r] != nullptr && 2 * m < dim ? rows[r][2 * m] : 0;
      const uint16_t hi = rows[r] != nullptr && 2 * m + 1 < dim ? rows[r][2 * m + 1] : 0;
      qt[m * ld + r] = uint32_t(lo) | uint32_t(hi) << 16;
    }
}

}  // namespace memattn::detail
