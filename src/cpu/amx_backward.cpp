// The flash backward's bf16 products on AMX tiles: partial row tiles through zero-padded copies,
// score tiles transposed into bf16 rows (the same rounding as the dot products' pairs).
#include "cpu/amx_backward.hpp"

#include <algorithm>

#include "cpu/amx_gemm.hpp"

namespace memattn::detail {
namespace {

const uint8_t* bytes(const uint16_t* p) { return reinterpret_cast<const uint8_t*>(p); }

}  // namespace

template <typename Ops>
void amx_rows_times_pairs(const uint16_t* a, size_t a_row, const uint16_t* b_pairs, size_t ld, float* c, size_t n,
                          size_t depth, const AmxBackwardScratch& s) {
  const size_t whole = n / kAmxTileRows * kAmxTileRows;
  TileGemm g{bytes(a),  ptrdiff_t(a_row * 2), bytes(b_pairs),        ptrdiff_t(ld * 4), c, ld, whole, s.c,
             whole / kAmxTileRows, ld / kAmxTileRows, depth / kAmxTileDepth, false};
  if (whole > 0) tile_gemm<Ops>(g);
  if (whole == n) return;
  // The last rows from a whole-tile copy: a tile load reads 16 rows, past n the operand may end.
  for (size_t r = 0; r < kAmxTileRows; ++r) {
    uint16_t* dst = s.a + r * depth;
    if (whole + r < n) std::copy_n(a + (whole + r) * a_row, depth, dst);
    else std::fill_n(dst, depth, uint16_t(0));
  }
  g.a = bytes(s.a), g.a_row = ptrdiff_t(depth * 2);
  g.c = c + whole * ld, g.c_rows = n - whole, g.m_tiles = 1;
  tile_gemm<Ops>(g);
}

template <typename Ops>
void amx_lane_gradient(const float* tile, size_t ld, size_t n, size_t lanes, uint16_t* r_pairs, size_t ldr,
                       float* acc, const AmxBackwardScratch& s) {
  const size_t depth = pad_tile_depth(n), rows = pad_tile_rows(lanes);
  std::fill(r_pairs + (n + 1) / 2 * ldr * 2, r_pairs + depth / 2 * ldr * 2, uint16_t(0));
  pack_probability_rows(tile, ld, n, rows, s.rows, depth, pack_probability_rows_vector());
  const TileGemm g{bytes(s.rows), ptrdiff_t(depth * 2), bytes(r_pairs), ptrdiff_t(ldr * 4), acc, ldr, lanes, s.c,
                   rows / kAmxTileRows, ldr / kAmxTileRows, depth / kAmxTileDepth, true};
  tile_gemm<Ops>(g);
}

AmxTileScope::AmxTileScope(TileFamily family) : family_(family) {
  if (family_ == TileFamily::amx_bf16) AmxHardware::configure(full_tiles());
  if (family_ == TileFamily::amx_bf16_emulated) AmxEmulated::configure(full_tiles());
}

AmxTileScope::~AmxTileScope() {
  if (family_ == TileFamily::amx_bf16) AmxHardware::release();
  if (family_ == TileFamily::amx_bf16_emulated) AmxEmulated::release();
}

template void amx_rows_times_pairs<AmxHardware>(const uint16_t*, size_t, const uint16_t*, size_t, float*, size_t,
                                                size_t, const AmxBackwardScratch&);
template void amx_rows_times_pairs<AmxEmulated>(const uint16_t*, size_t, const uint16_t*, size_t, float*, size_t,
                                                size_t, const AmxBackwardScratch&);
template void amx_lane_gradient<AmxHardware>(const float*, size_t, size_t, size_t, uint16_t*, size_t, float*,
                                             const AmxBackwardScratch&);
template void amx_lane_gradient<AmxEmulated>(const float*, size_t, size_t, size_t, uint16_t*, size_t, float*,
                                             const AmxBackwardScratch&);

}  // namespace memattn::detail
