// Python operands as memattn::Tensor views (see operands.hpp). numpy arrays are read here in C++
// because doing it in Python (__array_interface__, stride arithmetic) cost ~3 us per operand.
#include "operands.hpp"

#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;
using memattn::DType, memattn::ErrorCode, memattn::Tensor;

namespace memattn_python {
namespace {

[[noreturn]] void fail(ErrorCode code, const std::string& message) { throw memattn::Error(code, message); }

void check_rank(size_t ndim, const char* name) {
  if (ndim > 4)
    fail(ErrorCode::invalid_argument,
         std::string(name) + ": expected at most 4 dimensions, got " + std::to_string(ndim));
}

// numpy's one-character type codes (dtype.char) of the element types memattn reads. dtype.char and
// dtype.byteorder sit where both numpy 1 and 2 keep them, unlike dtype.itemsize and dtype.num.
std::optional<DType> numpy_dtype(char code) {
  switch (code) {
    case 'f': return DType::f32;
    case 'e': return DType::f16;
    case 'd': return DType::f64;
    case '?':  // bool: one byte, 0 or 1
    case 'B': return DType::u8;
    case 'i': return DType::i32;  // cu_seqlens offsets
    case 'q': return DType::i64;
    case 'l': return sizeof(long) == 8 ? DType::i64 : DType::i32;
    default: return std::nullopt;
  }
}

Tensor numpy_tensor(const py::array& a, const char* name, Access access) {
  const py::dtype dt = a.dtype();
  const std::optional<DType> dtype = numpy_dtype(dt.char_());
  constexpr char swapped = std::endian::native == std::endian::little ? '>' : '<';
  if (!dtype || dt.byteorder() == swapped)
    fail(ErrorCode::wrong_dtype,
         std::string(name) + ": numpy dtype " + std::string(py::str(py::handle(dt))) +
             " is not supported; expected float32, float16, float64 (bool or uint8 for a mask, int32 "
             "or int64 for cu_seqlens)" +
             (dtype ? " in native byte order" : ""));
  if (access == Access::write && !a.writeable())
    fail(ErrorCode::invalid_argument,
         std::string(name) + ": the array is read-only; memattn writes its result there");
  check_rank(size_t(a.ndim()), name);
  Tensor t;
  t.data = const_cast<void*>(a.data());  // writability was checked above where it matters
  t.dtype = *dtype;
  t.ndim = int(a.ndim());
  const int64_t element = int64_t(memattn::dtype_size(*dtype));
  std::string bytes;
  bool whole_elements = true;
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = a.shape(i);
    t.strides[i] = a.strides(i) / element;
    whole_elements = whole_elements && a.strides(i) % element == 0;
    bytes += (i ? ", " : "") + std::to_string(a.strides(i));
  }
  if (!whole_elements)
    fail(ErrorCode::invalid_argument,
         std::string(name) + ": byte strides (" + bytes + ") are not multiples of the element size " +
             std::to_string(element) + "; memattn needs element strides and does not copy");
  return t;
}

DType parse_dtype(const std::string& given, const char* name) {
  for (DType d : {DType::f32, DType::bf16, DType::f16, DType::f64, DType::u8, DType::i32, DType::i64})
    if (given == memattn::dtype_name(d)) return d;
  fail(ErrorCode::wrong_dtype, std::string(name) + ": dtype '" + given +
                                   "' is not a memattn dtype; expected one of f32, bf16, f16, f64, u8, i32, i64");
}

// (data address, dtype name, shape, strides in elements), as memattn/_tensors.py describes a
// torch tensor; the caller keeps the tensor alive for the duration of the call.
Tensor descriptor_tensor(py::handle operand, const char* name) {
  using Descriptor = std::tuple<uintptr_t, std::string, std::vector<int64_t>, std::vector<int64_t>>;
  Descriptor d;
  try {
    d = operand.cast<Descriptor>();
  } catch (const py::cast_error&) {
    fail(ErrorCode::invalid_argument, std::string(name) + ": expected a numpy.ndarray or a descriptor "
                                                          "(address, dtype, shape, strides)");
  }
  const auto& [address, dtype, shape, strides] = d;
  check_rank(shape.size(), name);
  if (strides.size() != shape.size())
    fail(ErrorCode::invalid_argument, std::string(name) + ": " + std::to_string(shape.size()) +
                                          " dimensions but " + std::to_string(strides.size()) + " strides");
  Tensor t;
  t.data = reinterpret_cast<void*>(address);
  t.dtype = parse_dtype(dtype, name);
  t.ndim = int(shape.size());
  for (int i = 0; i < t.ndim; ++i) {
    t.shape[i] = shape[size_t(i)];
    t.strides[i] = strides[size_t(i)];
  }
  return t;
}

}  // namespace

Tensor to_tensor(py::handle operand, const char* name, Access access, Rank rank) {
  Tensor t = py::isinstance<py::array>(operand)
                 ? numpy_tensor(py::reinterpret_borrow<py::array>(operand), name, access)
                 : descriptor_tensor(operand, name);
  bool empty = false;
  for (int i = 0; i < t.ndim; ++i) empty = empty || t.shape[i] == 0;
  if (empty) {
    // Nothing is read or written; numpy gives empty arrays all-zero strides, which the library's
    // self-overlap check would refuse on an output. Row-major strides describe the same nothing.
    int64_t step = 1;
    for (int i = t.ndim - 1; i >= 0; --i) {
      t.strides[i] = step;
      step *= std::max<int64_t>(t.shape[i], 1);
    }
  }
  if (rank == Rank::broadcast && t.ndim < 4) {
    const int missing = 4 - t.ndim;
    for (int i = 3; i >= 0; --i) {
      t.shape[i] = i >= missing ? t.shape[i - missing] : 1;
      t.strides[i] = i >= missing ? t.strides[i - missing] : 0;
    }
    t.ndim = 4;
  }
  return t;
}

}  // namespace memattn_python
