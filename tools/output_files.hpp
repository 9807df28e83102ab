// A run's output .npy files: computed in memory, written under temporary names, renamed together.
#pragma once

#include <cstddef>
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

}  // namespace memattn::tool
