// Test support for the memattn tool: scratch directories, an independent .npy writer, running the tool.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::cli_test {

// A fresh directory under $TMPDIR (or /tmp), removed with everything in it on destruction.
class ScratchDir {
 public:
  ScratchDir();
  ~ScratchDir();
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;
  std::string path(const std::string& name) const { return dir_ + "/" + name; }
  const std::string& dir() const { return dir_; }
  std::vector<std::string> names() const;  // the entries, sorted

 private:
  std::string dir_;
};

// An array as the test owns it: element bytes in C order, or in Fortran order when `fortran`.
struct Array {
  DType dtype = DType::f32;
  std::vector<int64_t> shape;
  bool fortran = false;
  std::vector<std::byte> bytes;

  int64_t numel() const;
  Tensor tensor();  // a view with the strides of its order
  static Array zeros(DType dtype, std::vector<int64_t> shape, bool fortran = false);
  // Standard normal values (u8: 0/1, about 70% ones), rounded to the dtype, from `seed`.
  static Array random(DType dtype, std::vector<int64_t> shape, uint32_t seed, bool fortran = false);
  // An i32 or i64 C-order array holding `values` (offsets, lengths, block tables).
  static Array integers(DType dtype, std::vector<int64_t> shape, const std::vector<int64_t>& values);
};

// The .npy descr numpy writes for a dtype ("|b1" for a bool mask when `as_bool`).
std::string descr_of(DType dtype, bool as_bool = false);

// Writes `a` as a .npy file of format `version` (1, 2 or 3) with this test's own code, so that the
// tool's reader is checked against an independent writer.
void write_npy(const std::string& path, const Array& a, int version = 1, bool as_bool = false);
// Checks (gtest EXPECTs) that the tool's output `path` is a C-order array of want's dtype and
// shape whose bytes equal want's.
void expect_output(const std::string& path, const Array& want);
// The .npy bytes of a file with this header dict and raw payload, for malformed files.
std::string npy_bytes(const std::string& dict, size_t payload_bytes, int version = 1);
void write_file(const std::string& path, const std::string& bytes);
std::string read_file(const std::string& path);

struct ToolResult {
  int exit_code = -1;
  std::string out, err;
};
// Runs the memattn binary with `args` in directory `cwd`; `env` adds NAME=VALUE entries.
ToolResult run_tool(const std::vector<std::string>& args, const std::string& cwd = ".",
                    const std::vector<std::string>& env = {});

// Runs `argv` (argv[0] an absolute path) like run_tool: for launchers such as mpirun.
ToolResult run_program(const std::vector<std::string>& argv, const std::string& cwd = ".",
                       const std::vector<std::string>& env = {});

// Runs the memattn binary with `args` in `dir` and expects it to fail: `exit_code`, nothing on
// stdout, each of `parts` in stderr, and exactly `files` in `dir` afterwards (no output or
// temporary file left behind).
void expect_failure(const ScratchDir& dir, const std::vector<std::string>& args, int exit_code,
                    const std::vector<std::string>& parts, std::vector<std::string> files);

// Starts the memattn binary with `args` in `cwd`, its stdout and stderr discarded; returns its pid.
int start_tool(const std::vector<std::string>& args, const std::string& cwd);

// /usr/bin/python3 with numpy importable, else "".
std::string python_with_numpy();

// The parameter list of a `memattn run` suite: every forward case, then every backward case with
// `backward` set, each once as it is and once through the progress split (name + "_progress",
// MEMATTN_FORCE_PROGRESS=1). Case has `name`, `backward` and `force_progress`.
template <typename Case>
std::vector<Case> with_progress_variants(const std::vector<Case>& forward, const std::vector<Case>& backward) {
  std::vector<Case> all;
  for (const std::vector<Case>* cases : {&forward, &backward})
    for (Case c : *cases) {
      c.backward = cases == &backward;
      all.push_back(c);
      c.name += "_progress", c.force_progress = true;
      all.push_back(c);
    }
  return all;
}

}  // namespace memattn::cli_test
