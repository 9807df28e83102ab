// Temporary-then-rename output files, removed on error and on termination signals.
#include "output_files.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits.h>
#include <stdexcept>

#include "npy.hpp"

namespace memattn::tool {
namespace {

// The temporaries a signal handler removes: plain arrays, since a handler may only call
// async-signal-safe functions (unlink, raise) and read lock-free flags.
constexpr int kMaxTemps = 16;
char g_temps[kMaxTemps][PATH_MAX];
volatile std::sig_atomic_t g_temp_live[kMaxTemps];
constexpr int kSignals[] = {SIGINT, SIGTERM, SIGHUP};
struct sigaction g_previous[3];

void remove_temps_and_die(int sig) {
  for (int i = 0; i < kMaxTemps; ++i)
    if (g_temp_live[i]) ::unlink(g_temps[i]);
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// Defers the three signals for a scope, so that a temporary never exists unregistered and the
// renames of a commit happen all or none.
class SignalsDeferred {
 public:
  SignalsDeferred() {
    sigset_t set;
    sigemptyset(&set);
    for (int sig : kSignals) sigaddset(&set, sig);
    ::pthread_sigmask(SIG_BLOCK, &set, &previous_);
  }
  ~SignalsDeferred() { ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr); }

 private:
  sigset_t previous_;
};

std::runtime_error file_error(const std::string& path, const std::string& what) {
  return std::runtime_error(path + ": " + what + ": " + std::strerror(errno));
}

bool write_all(int fd, const std::byte* p, size_t n) {
  while (n) {
    const ssize_t put = ::write(fd, p, n);
    if (put < 0 && errno == EINTR) continue;
    if (put <= 0) return false;
    p += put, n -= size_t(put);
  }
  return true;
}

}  // namespace

OutputFiles::OutputFiles() {
  struct sigaction sa {};
  sa.sa_handler = remove_temps_and_die;
  sigemptyset(&sa.sa_mask);
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &sa, &g_previous[i]);
}

OutputFiles::~OutputFiles() {
  remove_temporaries();
  for (int i = 0; i < 3; ++i) ::sigaction(kSignals[i], &g_previous[i], nullptr);
}

void OutputFiles::remove_temporaries() {
  for (size_t i = 0; i < files_.size(); ++i) {
    File& f = files_[i];
    if (f.fd >= 0) ::close(f.fd), f.fd = -1;
    if (!f.temp.empty()) ::unlink(f.temp.c_str()), f.temp.clear();
    g_temp_live[i] = 0;
  }
}

Tensor OutputFiles::add(const std::string& path, DType dtype, const std::vector<int64_t>& shape) {
  if (files_.size() == kMaxTemps) throw std::logic_error("OutputFiles: too many outputs");
  const size_t slot = files_.size();
  File& f = files_.emplace_back();
  f.path = path;
  const std::string header = npy_header(dtype, shape);
  size_t count = 1;
  for (int64_t d : shape) count *= size_t(d);
  f.size = header.size() + count * dtype_size(dtype);
  f.bytes.reset(new std::byte[f.size]());
  std::memcpy(f.bytes.get(), header.data(), header.size());

  std::string temp = path + ".tmp-XXXXXX";
  if (temp.size() >= PATH_MAX) throw std::runtime_error(path + ": path too long");
  {
    const SignalsDeferred deferred;
    std::memcpy(g_temps[slot], temp.c_str(), temp.size() + 1);
    f.fd = ::mkstemp(g_temps[slot]);
    if (f.fd < 0) throw file_error(path, "cannot create a temporary file beside it");
    g_temp_live[slot] = 1;
  }
  f.temp = g_temps[slot];
  const mode_t mask = ::umask(0);  // mkstemp makes 0600; the output gets what a plain create would
  ::umask(mask);
  ::fchmod(f.fd, 0666 & ~mask);

  Tensor t;
  t.data = f.bytes.get() + header.size();  // headers are multiples of 64 bytes: data stays aligned
  t.dtype = dtype;
  t.ndim = int(shape.size());
  int64_t step = 1;
  for (int i = t.ndim - 1; i >= 0; --i)
    t.shape[size_t(i)] = shape[size_t(i)], t.strides[size_t(i)] = step, step *= shape[size_t(i)];
  return t;
}

void OutputFiles::commit() {
  const SignalsDeferred deferred;
  for (File& f : files_) {
    if (!write_all(f.fd, f.bytes.get(), f.size)) throw file_error(f.temp, "cannot write");
    const int fd = f.fd;
    f.fd = -1;
    if (::close(fd) != 0) throw file_error(f.temp, "cannot write");
  }
  for (size_t i = 0; i < files_.size(); ++i) {
    File& f = files_[i];
    if (::rename(f.temp.c_str(), f.path.c_str()) != 0) {
      const std::runtime_error error = file_error(f.path, "cannot rename " + f.temp + " to it");
      for (size_t j = 0; j < i; ++j) ::unlink(files_[j].path.c_str());
      throw error;
    }
    g_temp_live[i] = 0;
    f.temp.clear();
  }
}

bool same_file(const std::string& a, const std::string& b) {
  namespace fs = std::filesystem;
  std::error_code ec1, ec2;
  if (fs::equivalent(a, b, ec1)) return true;  // both exist: hard links and symlinks included
  // Either may not exist yet: compare the absolute paths with what exists of them resolved.
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, ec1), ec1);
  const fs::path cb = fs::weakly_canonical(fs::absolute(b, ec2), ec2);
  return !ec1 && !ec2 && ca == cb;
}

int run_file_command(const char* command, const std::string& usage_problem, const std::function<void()>& work) {
  if (!usage_problem.empty()) {
    std::fprintf(stderr, "%s: %s\n", command, usage_problem.c_str());
    return 2;
  }
  try {
    work();
    return 0;
  } catch (const std::exception& e) {  // the file or the library says what and where
    std::fprintf(stderr, "%s: %s\n", command, e.what());
    return 1;
  }
}

}  // namespace memattn::tool
