// Reproducer: a .npy descr '<i999999999' makes numpy_name() in tools/npy.cpp overflow int (UBSan: signed integer overflow).
#include <cstdio>
#include <string>
#include "npy.hpp"
int main() {
  std::string dict = "{'descr': '<i999999999', 'fortran_order': False, 'shape': (1,), }";
  dict.append(64 - 10 - dict.size() % 64 - 1, ' ').push_back('\n');
  const std::string file = std::string("\x93NUMPY\x01\x00", 8) + char(dict.size() & 255) + char(dict.size() >> 8) + dict + "abcd";
  const char* path = "descr_size_overflow.npy";
  std::FILE* f = std::fopen(path, "wb");
  std::fwrite(file.data(), 1, file.size(), f);
  std::fclose(f);
  try {
    memattn::tool::read_npy(path, {{memattn::DType::f32}, -1, ""});
  } catch (const memattn::tool::NpyError& e) { std::printf("NpyError: %s\n", e.what()); }
}
