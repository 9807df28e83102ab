// Scratch directories, random arrays, an independent .npy writer and a way to run the tool.
#include "cli_support.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <stdexcept>

#include <gtest/gtest.h>

#include "common/half.hpp"
#include "npy.hpp"

extern char** environ;

namespace memattn::cli_test {

namespace fs = std::filesystem;

ScratchDir::ScratchDir() {
  const char* tmp = std::getenv("TMPDIR");
  std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/memattn_cli_XXXXXX";
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  dir_ = tmpl;
}

ScratchDir::~ScratchDir() {
  std::error_code ec;
  fs::remove_all(dir_, ec);
}

std::vector<std::string> ScratchDir::names() const {
  std::vector<std::string> n;
  for (const auto& e : fs::directory_iterator(dir_)) n.push_back(e.path().filename().string());
  std::sort(n.begin(), n.end());
  return n;
}

int64_t Array::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

Tensor Array::tensor() {
  Tensor t;
  t.data = bytes.data();
  t.dtype = dtype;
  t.ndim = int(shape.size());
  int64_t step = 1;
  for (int i = 0; i < t.ndim; ++i) {
    const size_t d = size_t(fortran ? i : t.ndim - 1 - i);
    t.shape[d] = shape[d], t.strides[d] = step, step *= shape[d];
  }
  return t;
}

Array Array::zeros(DType dtype, std::vector<int64_t> shape, bool fortran) {
  Array a{dtype, std::move(shape), fortran, {}};
  a.bytes.resize(size_t(a.numel()) * dtype_size(dtype));
  return a;
}

Array Array::random(DType dtype, std::vector<int64_t> shape, uint32_t seed, bool fortran) {
  Array a = zeros(dtype, std::move(shape), fortran);
  std::mt19937 g{seed};
  std::normal_distribution<float> normal;
  std::bernoulli_distribution attend(0.7);
  for (size_t i = 0; i < size_t(a.numel()); ++i) {
    void* at = a.bytes.data() + i * dtype_size(dtype);
    switch (dtype) {
      case DType::f32: *static_cast<float*>(at) = normal(g); break;
      case DType::f64: *static_cast<double*>(at) = double(normal(g)); break;
      case DType::f16: *static_cast<uint16_t*>(at) = to_f16(normal(g)).bits; break;
      case DType::u8: *static_cast<uint8_t*>(at) = attend(g); break;
      default: throw std::invalid_argument("no random bf16 arrays: numpy has no bf16");
    }
  }
  return a;
}

Array Array::integers(DType dtype, std::vector<int64_t> shape, const std::vector<int64_t>& values) {
  Array a = zeros(dtype, std::move(shape));
  if (values.size() != size_t(a.numel())) throw std::invalid_argument("Array::integers: values do not fill the shape");
  for (size_t i = 0; i < values.size(); ++i)
    if (dtype == DType::i32) reinterpret_cast<int32_t*>(a.bytes.data())[i] = int32_t(values[i]);
    else if (dtype == DType::i64) reinterpret_cast<int64_t*>(a.bytes.data())[i] = values[i];
    else throw std::invalid_argument("Array::integers: dtype must be i32 or i64");
  return a;
}

std::string descr_of(DType dtype, bool as_bool) {
  switch (dtype) {
    case DType::f32: return "<f4";
    case DType::f16: return "<f2";
    case DType::f64: return "<f8";
    case DType::u8: return as_bool ? "|b1" : "|u1";
    case DType::i32: return "<i4";
    case DType::i64: return "<i8";
    default: throw std::invalid_argument("no .npy descr");
  }
}

void expect_output(const std::string& path, const Array& want) {
  const tool::NpyArray got = tool::read_npy(path, {{DType::f32, DType::f16, DType::f64}, -1, ""});
  EXPECT_EQ(got.dtype(), want.dtype) << path;
  EXPECT_FALSE(got.fortran_order()) << path;
  ASSERT_EQ(got.shape(), want.shape) << path;
  const size_t bytes = want.bytes.size();
  EXPECT_TRUE(bytes == 0 || std::memcmp(got.data(), want.bytes.data(), bytes) == 0) << path << " differs bitwise";
}

std::string npy_bytes(const std::string& dict, size_t payload_bytes, int version) {
  const size_t preamble = version == 1 ? 10 : 12;
  std::string header = dict;
  while ((preamble + header.size() + 1) % 64) header += ' ';
  header += '\n';
  std::string s = "\x93NUMPY";
  s += char(version), s += char(0);
  for (size_t i = 0; i < preamble - 8; ++i) s += char(header.size() >> (8 * i) & 0xff);
  return s + header + std::string(payload_bytes, '\0');
}

void write_npy(const std::string& path, const Array& a, int version, bool as_bool) {
  std::ostringstream dict;
  dict << "{'descr': '" << descr_of(a.dtype, as_bool) << "', 'fortran_order': " << (a.fortran ? "True" : "False")
       << ", 'shape': (";
  for (size_t i = 0; i < a.shape.size(); ++i) dict << (i ? ", " : "") << a.shape[i];
  dict << (a.shape.size() == 1 ? ",), }" : "), }");
  std::string bytes = npy_bytes(dict.str(), 0, version);
  bytes.append(reinterpret_cast<const char*>(a.bytes.data()), a.bytes.size());
  write_file(path, bytes);
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  if (!f) throw std::runtime_error("cannot write " + path);
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

ToolResult run_tool(const std::vector<std::string>& args, const std::string& cwd, const std::vector<std::string>& env) {
  std::vector<std::string> program{MEMATTN_TOOL_PATH};
  program.insert(program.end(), args.begin(), args.end());
  return run_program(program, cwd, env);
}

ToolResult run_program(const std::vector<std::string>& args, const std::string& cwd, const std::vector<std::string>& env) {
  char out_path[] = "/tmp/memattn_cli_out_XXXXXX", err_path[] = "/tmp/memattn_cli_err_XXXXXX";
  const int out_fd = ::mkstemp(out_path), err_fd = ::mkstemp(err_path);
  std::vector<std::string> env_strings(env);
  for (char** e = environ; *e; ++e) env_strings.emplace_back(*e);
  std::vector<char*> argv, envp;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  for (const std::string& e : env_strings) envp.push_back(const_cast<char*>(e.c_str()));
  argv.push_back(nullptr), envp.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    if (::chdir(cwd.c_str()) != 0) ::_exit(127);
    ::dup2(out_fd, 1), ::dup2(err_fd, 2);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ::close(out_fd), ::close(err_fd);
  ToolResult r{WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status), read_file(out_path), read_file(err_path)};
  ::unlink(out_path), ::unlink(err_path);
  return r;
}

void expect_failure(const ScratchDir& dir, const std::vector<std::string>& args, int exit_code,
                    const std::vector<std::string>& parts, std::vector<std::string> files) {
  const ToolResult r = run_tool(args, dir.dir());
  EXPECT_EQ(r.exit_code, exit_code) << r.err;
  EXPECT_EQ(r.out, "");
  for (const std::string& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "'" << p << "' not in: " << r.err;
  std::sort(files.begin(), files.end());
  EXPECT_EQ(dir.names(), files) << "an output or temporary file was left behind";
}

int start_tool(const std::vector<std::string>& args, const std::string& cwd) {
  std::vector<char*> argv{const_cast<char*>(MEMATTN_TOOL_PATH)};
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (::chdir(cwd.c_str()) != 0) ::_exit(127);
    ::dup2(null, 1), ::dup2(null, 2);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

std::string python_with_numpy() {
  const std::string python = "/usr/bin/python3";
  if (::access(python.c_str(), X_OK) != 0) return "";
  return std::system((python + " -c 'import numpy' 2>/dev/null").c_str()) == 0 ? python : "";
}

}  // namespace memattn::cli_test
