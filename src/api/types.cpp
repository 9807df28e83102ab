// Out-of-line helpers of the public value types.
#include <algorithm>
#include <limits>

#include "api/validate.hpp"
#include "memattn/types.hpp"

namespace memattn {

const char* dtype_name(DType d) {
  switch (d) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::f64: return "f64";
    case DType::u8: return "u8";
    case DType::i32: return "i32";
    case DType::i64: return "i64";
  }
  return "unknown";
}

size_t dtype_size(DType d) {
  switch (d) {
    case DType::f32: return 4;
    case DType::bf16:
    case DType::f16: return 2;
    case DType::f64: return 8;
    case DType::u8: return 1;
    case DType::i32: return 4;
    case DType::i64: return 8;
  }
  return 1;
}

const char* algorithm_name(Algorithm a) {
  switch (a) {
    case Algorithm::automatic: return "automatic";
    case Algorithm::naive: return "naive";
    case Algorithm::sequential: return "sequential";
    case Algorithm::chunked: return "chunked";
    case Algorithm::flash: return "flash";
  }
  return "unknown";
}

static void check_ndim(size_t n) {
  if (n < 1 || n > 4)
    throw Error(ErrorCode::invalid_argument,
                "shape: expected 1 to 4 dimensions, got " + std::to_string(n));
}

Tensor Tensor::contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape) {
  check_ndim(shape.size());
  Tensor t;
  t.data = data;
  t.dtype = dtype;
  t.ndim = int(shape.size());
  std::copy(shape.begin(), shape.end(), t.shape.begin());
  int64_t stride = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    t.strides[i] = stride;
    // A saturated stride makes validation report the overflow instead of wrapping here.
    if (__builtin_mul_overflow(stride, std::max<int64_t>(t.shape[i], 1), &stride))
      stride = std::numeric_limits<int64_t>::max();
  }
  return t;
}

Tensor Tensor::strided(void* data, DType dtype, std::initializer_list<int64_t> shape,
                       std::initializer_list<int64_t> strides) {
  check_ndim(shape.size());
  if (strides.size() != shape.size())
    throw Error(ErrorCode::invalid_argument, "strides: expected " + std::to_string(shape.size()) +
                                                 " values (one per dimension), got " +
                                                 std::to_string(strides.size()));
  Tensor t = contiguous(data, dtype, shape);
  std::copy(strides.begin(), strides.end(), t.strides.begin());
  return t;
}

int64_t Tensor::numel() const {
  int64_t n = 1;
  // A hand-built Tensor may carry any ndim; never read past the four stored dims.
  for (int i = 0; i < std::clamp(ndim, 0, 4); ++i)
    if (__builtin_mul_overflow(n, shape[i], &n)) return std::numeric_limits<int64_t>::max();
  return n;
}

}  // namespace memattn
