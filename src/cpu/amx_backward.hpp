// The flash backward's bf16 products on AMX tiles (TDPBF16PS): the operands of the bf16 dot
// products (flash_backward_tile.hpp) multiplied by amx_gemm's tile GEMM.
#pragma once

#include <cstddef>
#include <cstdint>

#include "api/params.hpp"

namespace memattn::detail {

struct AmxBackwardScratch {
  uint16_t* rows;  // pad16(lanes) x pad32(n): a score tile transposed into bf16 rows
  uint16_t* a;     // 16 x depth: the last rows of an A operand, zero-padded to a whole tile
  float* c;        // 16 x 16: a C tile that crosses the end of its rows
};

// c[i * ld + j] = sum_e a[i * a_row + e] * B(e, j) for i < n, j < ld (a multiple of 16), e < depth
// (a multiple of 32): B(e, j) the bf16 at b_pairs[((e / 2) * ld + j) * 2 + e % 2]. Reads no row of
// `a` past n. Tiles configured by AmxTileScope.
template <typename Ops>
void amx_rows_times_pairs(const uint16_t* a, size_t a_row, const uint16_t* b_pairs, size_t ld, float* c, size_t n,
                          size_t depth, const AmxBackwardScratch& s);

// acc[l * ldr + j] += sum_{i < n} bf16(tile[i * ld + l]) * R(i, j) for l < lanes (at most ld) and
// j < ldr (a multiple of 16): the tile rounded to nearest even, R(i, j) the bf16 at
// r_pairs[((i / 2) * ldr + j) * 2 + i % 2]. The pairs of rows from n up to the next multiple of 32
// are set to zero first: they meet the tile's zero padding, and a stale Inf there would give NaN.
template <typename Ops>
void amx_lane_gradient(const float* tile, size_t ld, size_t n, size_t lanes, uint16_t* r_pairs, size_t ldr,
                       float* acc, const AmxBackwardScratch& s);

// The calling thread's tiles configured for amx_gemm while it lives, on the hardware or the
// emulation by `family`; nothing for the other families.
class AmxTileScope {
 public:
  explicit AmxTileScope(TileFamily family);
  ~AmxTileScope();
  AmxTileScope(const AmxTileScope&) = delete;
  AmxTileScope& operator=(const AmxTileScope&) = delete;

 private:
  const TileFamily family_;
};

}  // namespace memattn::detail
