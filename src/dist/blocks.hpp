// Strided-view helpers of the ring: slices along the sequence, dense views, copies and f32 sums.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "memattn/types.hpp"

namespace memattn::dist::detail {

// The view of t's elements [start, start + length) along dimension `dim` (the sequence: 1 for
// q/k/v/out, 2 for lse).
Tensor slice(const Tensor& t, int dim, int64_t start, int64_t length);
// A row-major view of `shape` (ndim 4) over `data`.
Tensor dense(void* data, DType dtype, const std::array<int64_t, 4>& shape);
// Bytes of a dense f32 array of these dims; throws size_overflow past 64 bits.
size_t f32_bytes(std::initializer_list<int64_t> dims);
// dst = src element by element (same shape; f32, bf16 or f16 each), rounded to dst's dtype.
void copy(const Tensor& src, const Tensor& dst);
// acc += src element by element (same shape; acc f32, src f32, bf16 or f16).
void accumulate(const Tensor& src, const Tensor& acc);

}  // namespace memattn::dist::detail
