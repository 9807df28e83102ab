// libFuzzer harness of the .npy reader behind `memattn run`: arbitrary bytes as a file, then the array as a memattn operand.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "fuzz_input.hpp"
#include "npy.hpp"

namespace {

using memattn::DType;
using memattn::Tensor;
using memattn::tool::NpyArray;
using memattn::tool::NpyError;
using memattn::tool::NpyExpect;

// An anonymous in-memory file holding `bytes`, opened by path as `memattn run` opens its inputs.
struct MemoryFile {
  int fd;
  std::string path;
  MemoryFile(const void* bytes, size_t size) : fd(memfd_create("fuzz.npy", MFD_CLOEXEC)) {
    fuzz::check(fd >= 0 && ::write(fd, bytes, size) == ssize_t(size), "cannot make the in-memory file");
    path = "/proc/self/fd/" + std::to_string(fd);
  }
  ~MemoryFile() { ::close(fd); }
};

// What `memattn run` asks of each file, and a reader that takes anything.
const NpyExpect kExpectations[] = {
    {{DType::f32, DType::f16, DType::f64}, 4, "[batch, seq, heads, dim]"},
    {{DType::u8}, 4, "[batch|1, heads_q|1, seq_q|1, seq_k|1]"},
    {{DType::f32, DType::f16, DType::f64, DType::u8}, -1, ""},  // bf16 has no .npy descr: no caller asks for it
};

size_t data_bytes(const NpyArray& a) {
  const auto& s = a.shape();
  return std::accumulate(s.begin(), s.end(), size_t(1), [](size_t n, int64_t d) { return n * size_t(d); }) *
         fuzz::element_bytes(a.dtype());
}

// A valid array: its data is the file's tail, its view is C or Fortran order, it survives a
// write-and-read-back, and a 4-D float array goes through forward() as q, k and v.
void check_array(const NpyArray& a, const NpyExpect& expect, const uint8_t* file, size_t size) {
  bool accepted = false;
  for (DType t : expect.dtypes) accepted |= t == a.dtype();
  fuzz::check(accepted, "read_npy returned a dtype the caller did not accept");
  fuzz::check(expect.rank < 0 || int(a.shape().size()) == expect.rank, "read_npy returned the wrong rank");
  const size_t bytes = data_bytes(a);
  fuzz::check((a.data() == nullptr) == (bytes == 0), "data is null exactly when the array is empty");
  fuzz::check(bytes <= size && (bytes == 0 || std::memcmp(a.data(), file + size - bytes, bytes) == 0),
              "the array's data is not the file's last bytes");
  if (a.shape().size() > 4) {
    try {
      (void)a.tensor();
      fuzz::fail("tensor() of an array of more than 4 dims");
    } catch (const NpyError&) {
    }
    return;
  }
  const Tensor t = a.tensor();
  int64_t span = 1;
  for (int d = 0; d < t.ndim; ++d) span += (t.shape[size_t(d)] - 1) * t.strides[size_t(d)];
  fuzz::check(bytes == 0 || size_t(span) * fuzz::element_bytes(t.dtype) == bytes, "tensor() strides do not span the data");

  const std::string header = memattn::tool::npy_header(a.dtype(), a.shape());
  std::string copy = header + std::string(static_cast<const char*>(a.data()), bytes);
  const MemoryFile again(copy.data(), copy.size());
  const NpyArray b = memattn::tool::read_npy(again.path, expect);
  fuzz::check(b.shape() == a.shape() && b.dtype() == a.dtype() && !b.fortran_order() &&
                  (bytes == 0 || std::memcmp(a.data(), b.data(), bytes) == 0),
              "npy_header's file does not read back as the same array");

  if (t.ndim != 4 || t.dtype == DType::u8 || a.shape()[0] * a.shape()[1] * a.shape()[2] * a.shape()[3] > 4096) return;
  std::vector<unsigned char> out(bytes + 1, fuzz::kPoison);
  Tensor o = Tensor::contiguous(bytes ? out.data() : nullptr, t.dtype, {t.shape[0], t.shape[1], t.shape[2], t.shape[3]});
  try {
    memattn::Options options;
    options.num_threads = 1;
    memattn::forward(t, t, t, o, nullptr, options);
  } catch (const memattn::Error&) {
    fuzz::check(std::all_of(out.begin(), out.end(), [](unsigned char c) { return c == fuzz::kPoison; }),
                "a refused forward touched its output");
  }
}


}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const NpyExpect& expect = kExpectations[data[0] % std::size(kExpectations)];
  const uint8_t* file = data + 1;
  const MemoryFile input(file, size - 1);
  try {
    const NpyArray a = memattn::tool::read_npy(input.path, expect);
    check_array(a, expect, file, size - 1);
  } catch (const NpyError& e) {
    fuzz::check(std::strstr(e.what(), input.path.c_str()) == e.what(), "an NpyError that does not start with the file's name");
  } catch (const std::exception& e) {
    fuzz::fail(std::string("read_npy threw something other than NpyError: ") + e.what());
  }
  return 0;
}
