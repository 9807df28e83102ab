// Options of `memattn bench`: what the sweep covers, parsed and validated from the command line.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "memattn/types.hpp"

namespace memattn::tool {

enum class Direction { forward, backward };
inline const char* direction_name(Direction d) { return d == Direction::forward ? "forward" : "backward"; }

struct Config {
  std::vector<Direction> directions{Direction::forward};
  std::vector<int64_t> n{512, 1024, 2048, 4096, 8192, 16384}, d{64, 128}, batch{1}, heads{8};
  std::vector<int64_t> causal{0, 1}, threads{1, 2};
  std::vector<DType> dtypes{DType::f32, DType::bf16};
  std::vector<Algorithm> algorithms{Algorithm::flash};
  int64_t reps = 0;          // 0: as many calls as fill min_seconds, at least 3
  double min_seconds = 0.3;  // per point, after the warm-up call
  bool json = false, peak_only = false;
  std::vector<std::string> targets{""};  // "": the library's choice (MEMATTN_TARGET, else the best)
};

// A bad command line: the message names the option and the value.
struct UsageError {
  std::string message;
};

// argv excludes "memattn bench"; throws UsageError. --help is handled by the caller.
Config parse_bench_options(int argc, char** argv);

// The option summary, to `to`; returns the exit code (0 for stdout, 2 for stderr).
int bench_usage(FILE* to);

}  // namespace memattn::tool
