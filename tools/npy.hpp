// .npy files (format versions 1.0, 2.0, 3.0): a reader that validates everything, and the writer's header.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::tool {

// A file that cannot be used as asked; what() names the file, what was expected and what was found.
struct NpyError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// What the caller accepts from a file: these dtypes, and `rank` dimensions (-1: any) whose meaning
// `dims` states for messages (e.g. "[batch, seq, heads, dim]").
struct NpyExpect {
  std::initializer_list<DType> dtypes;
  int rank = -1;
  const char* dims = "";
};

// An array read from a .npy file, memory-mapped (or read into memory when mapping fails or the data
// offset is not a multiple of the element size). Move-only; the data lives as long as the array.
class NpyArray {
 public:
  NpyArray(NpyArray&&) noexcept;
  NpyArray& operator=(NpyArray&&) noexcept;
  ~NpyArray();

  const std::string& path() const { return path_; }
  const std::string& descr() const { return descr_; }  // as the header spells it, e.g. "<f4"
  DType dtype() const { return dtype_; }                // "|b1" and "|u1" are both DType::u8
  const std::vector<int64_t>& shape() const { return shape_; }
  bool fortran_order() const { return fortran_order_; }
  const void* data() const { return data_; }  // null when the array has no elements
  // The array as a memattn view (rank <= 4): C order or Fortran order is only a matter of strides.
  Tensor tensor() const;

 private:
  friend NpyArray read_npy(const std::string& path, const NpyExpect& expect);
  NpyArray() = default;
  std::string path_, descr_;
  DType dtype_ = DType::f32;
  std::vector<int64_t> shape_;
  bool fortran_order_ = false;
  const void* data_ = nullptr;
  void* mapping_ = nullptr;  // munmap'ed on destruction
  size_t mapping_bytes_ = 0;
  std::unique_ptr<std::byte[]> copy_;
};

// Reads and validates `path`: magic, version, header length, header dict syntax and keys, dtype
// against `expect`, rank, and data size against the file size. Throws NpyError.
NpyArray read_npy(const std::string& path, const NpyExpect& expect);

// The .npy descr of a dtype ("<f4", "<f2", "<f8", "|u1", "<i4", "<i8"); throws std::invalid_argument for bf16,
// which numpy does not have.
const char* npy_descr(DType dtype);

// The header of a C-order array in the oldest version that holds it (1.0, else 2.0): magic,
// version, length and dict, padded so that the data after it starts at a multiple of 64 bytes.
std::string npy_header(DType dtype, const std::vector<int64_t>& shape);

}  // namespace memattn::tool
