// A run's output .npy files: computed in memory, written under temporary names, renamed together.
#pragma once

#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::tool {

// All-or-nothing outputs. add() creates `path.tmp-XXXXXX` beside each target at once (so that an
// unwritable directory fails before any computation); commit() writes and renames them all. Until
// commit() succeeds nothing exists under a target name: the destructor removes the temporaries,
// and SIGINT, SIGTERM or SIGHUP remove them too before the process ends. One set at a time.
class OutputFiles {
 public:
  OutputFiles();
  ~OutputFiles();
  OutputFiles(const OutputFiles&) = delete;
  OutputFiles& operator=(const OutputFiles&) = delete;

  // A C-order array of `shape` to compute into (zero-filled), to be saved as `path`.
  // Throws std::runtime_error naming the path when its temporary cannot be created.
  Tensor add(const std::string& path, DType dtype, const std::vector<int64_t>& shape);

  // Writes every array and renames each temporary to its target. On failure removes the
  // temporaries and the targets already renamed, and throws std::runtime_error naming the file.
  void commit();

 private:
  struct File {
    std::string path, temp;
    int fd = -1;
    std::unique_ptr<std::byte[]> bytes;  // the .npy header, then the data
    size_t size = 0;
  };
  std::vector<File> files_;
  void remove_temporaries();
};

// True when paths a and b name one file (links included), or would once the missing one exists.
bool same_file(const std::string& a, const std::string& b);

// The exit code of a file command: 2 with `usage_problem` (a command line that cannot work: an
// output that is an input, unpaired parts) when it is not empty; else runs `work`, 0 when it
// returns, 1 with its message when it throws. Every message is one line on stderr after `command`.
int run_file_command(const char* command, const std::string& usage_problem, const std::function<void()>& work);

}  // namespace memattn::tool
