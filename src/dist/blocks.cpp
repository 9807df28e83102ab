// Strided-view helpers of the ring: one element walk over two views of the same shape.
#include "dist/blocks.hpp"

#include <cstring>

#include "common/half.hpp"
#include "common/memory.hpp"

namespace memattn::dist::detail {
namespace {

// Element (a, b, c, d) of t, for t of ndim <= 4 aligned to the last dimensions.
struct Walk {
  char* base;
  int64_t strides[4] = {0, 0, 0, 0};
  int64_t bytes;
  explicit Walk(const Tensor& t)
      : base(static_cast<char*>(t.data)), bytes(int64_t(dtype_size(t.dtype))) {
    for (int d = 0; d < t.ndim; ++d) strides[4 - t.ndim + d] = t.strides[d];
  }
  char* at(int64_t a, int64_t b, int64_t c, int64_t d) const {
    return base + (a * strides[0] + b * strides[1] + c * strides[2] + d * strides[3]) * bytes;
  }
};

// fn(src element, dst element) for every element of src's shape (dst has the same).
template <typename Fn>
void for_each_pair(const Tensor& src, const Tensor& dst, Fn&& fn) {
  int64_t shape[4] = {1, 1, 1, 1};
  for (int d = 0; d < src.ndim; ++d) shape[4 - src.ndim + d] = src.shape[d];
  const Walk s(src), t(dst);
  for (int64_t a = 0; a < shape[0]; ++a)
    for (int64_t b = 0; b < shape[1]; ++b)
      for (int64_t c = 0; c < shape[2]; ++c)
        for (int64_t d = 0; d < shape[3]; ++d) fn(s.at(a, b, c, d), t.at(a, b, c, d));
}

float load(DType dt, const char* p) {
  switch (dt) {
    case DType::bf16: {
      bf16 x;
      std::memcpy(&x, p, sizeof x);
      return to_float(x);
    }
    case DType::f16: {
      f16 x;
      std::memcpy(&x, p, sizeof x);
      return to_float(x);
    }
    default: {
      float x;
      std::memcpy(&x, p, sizeof x);
      return x;
    }
  }
}

void save(DType dt, float value, char* p) {
  switch (dt) {
    case DType::bf16: {
      const bf16 x = to_bf16(value);
      std::memcpy(p, &x, sizeof x);
      return;
    }
    case DType::f16: {
      const f16 x = to_f16(value);
      std::memcpy(p, &x, sizeof x);
      return;
    }
    default:
      std::memcpy(p, &value, sizeof value);
  }
}

}  // namespace

Tensor slice(const Tensor& t, int dim, int64_t start, int64_t length) {
  Tensor s = t;
  if (length > 0)
    s.data = static_cast<char*>(t.data) + start * t.strides[dim] * int64_t(dtype_size(t.dtype));
  s.shape[dim] = length;
  return s;
}

Tensor dense(void* data, DType dtype, const std::array<int64_t, 4>& shape) {
  return Tensor::contiguous(data, dtype, {shape[0], shape[1], shape[2], shape[3]});
}

size_t f32_bytes(std::initializer_list<int64_t> dims) {
  size_t n = sizeof(float);
  for (int64_t d : dims) n = memattn::detail::checked_mul(n, size_t(d));
  return n;
}

void copy(const Tensor& src, const Tensor& dst) {
  if (src.dtype == dst.dtype) {  // bytes as they are: packing K/V keeps them exact
    const size_t es = dtype_size(src.dtype);
    for_each_pair(src, dst, [es](const char* s, char* d) { std::memcpy(d, s, es); });
    return;
  }
  for_each_pair(src, dst, [&](const char* s, char* d) { save(dst.dtype, load(src.dtype, s), d); });
}

void accumulate(const Tensor& src, const Tensor& acc) {
  for_each_pair(src, acc, [&](const char* s, char* d) {
    float a;
    std::memcpy(&a, d, sizeof a);
    a += load(src.dtype, s);
    std::memcpy(d, &a, sizeof a);
  });
}

}  // namespace memattn::dist::detail
