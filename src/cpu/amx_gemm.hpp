// AMX bf16 products on whole tiles and the operand packing around them: the flash forward's AMX
// family and the flash backward's AMX products share them (amx_gemm.cpp).
#pragma once

#include <cstddef>
#include <cstdint>

#include "cpu/amx_tiles.hpp"

namespace memattn::detail {

// Every operand is cut into whole tiles: 16 rows, and 32 bf16 (one 64-byte tile row) along the
// reduction. Tails are zero-padded, which adds exact zeros to every sum.
constexpr size_t kAmxTileRows = 16, kAmxTileDepth = 32;
inline size_t pad_tile_rows(size_t n) { return (n + kAmxTileRows - 1) / kAmxTileRows * kAmxTileRows; }
inline size_t pad_tile_depth(size_t n) { return (n + kAmxTileDepth - 1) / kAmxTileDepth * kAmxTileDepth; }

// Every tile a full palette-1 tile (16 rows of 64 bytes): what tile_gemm expects to be configured.
TileConfig full_tiles();

// C[m_tiles*16 x n_tiles*16] (+)= A B over k_blocks*32: A tile (i, kb) at a + 16 i a_row + 64 kb
// (rows of bf16), B tile (kb, j) at b + 16 kb b_row + 64 j (rows of bf16 pairs), C rows of f32 at
// c + r ldc, of which only rows < c_rows may be touched (the last tile row goes through bounce).
struct TileGemm {
  const uint8_t* a;
  ptrdiff_t a_row;
  const uint8_t* b;
  ptrdiff_t b_row;
  float* c;
  size_t ldc, c_rows;
  float* bounce;
  size_t m_tiles, n_tiles, k_blocks;
  bool accumulate;  // false: C = A B
};

// On Ops = AmxHardware or AmxEmulated, with full_tiles() configured on the calling thread.
template <typename Ops>
void tile_gemm(const TileGemm& g);

// The A operand of P V from the driver's transposed probabilities: p[r * p_row + t] =
// bf16(st[t * ld + r]) rounded to nearest even (NaN stays NaN) for r < rows (a multiple of 16, at
// most ld) and t < keys, zero for keys up to the next multiple of 32. `vector` takes the AVX-512
// version, which gives the same bits, and may be true only where pack_probability_rows_vector().
void pack_probability_rows(const float* st, size_t ld, size_t keys, size_t rows, uint16_t* p, size_t p_row,
                           bool vector);
bool pack_probability_rows_vector();

// B operand pairs of 16 bf16 rows (rows[r] null: a zero row): qt[m * ld + r] = the 32 bits of
// rows[r][2m] (low) and rows[r][2m + 1] (high) for m < depth / 2 (depth a multiple of 32), zero
// past `dim`; nothing past a row's dim elements is read. The AVX-512 transposition where
// pack_query_pairs_vector(), else scalar: the same bits.
void pack_query_pairs(const uint16_t* const rows[16], size_t dim, size_t depth, uint32_t* qt, size_t ld);
bool pack_query_pairs_vector();

}  // namespace memattn::detail
