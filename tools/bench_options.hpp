// Options of `memattn bench`: what the sweep covers, declared on its CLI11 subcommand.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bench_decode.hpp"
#include "memattn/types.hpp"

namespace CLI {
class App;
}

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
  int64_t key_chunk = 0;     // Options::key_chunk of every call (0: the planner's)
  int64_t query_chunk = 0;   // Options::query_chunk of every call (0: the planner's)
  double min_seconds = 0.3;  // per point, after the warm-up call
  bool json = false, peak_only = false;
  bool decode = false;        // --decode: the decode sweep below instead
  DecodeConfig decode_sweep;  // filled from the options given, else the decode defaults
  std::vector<std::string> targets{""};  // "": the library's choice (MEMATTN_TARGET, else the best)
  bool dist = false;                     // --dist: ring attention across mpirun's ranks instead
  std::string placement = "zigzag";      // with --dist: contiguous or zigzag
};

// Adds the `bench` subcommand to `app`; parsing fills `c` (list options: the first use replaces the
// default, commas and later uses add values, duplicates dropped). A bad value, or an unknown
// MEMATTN_TARGET, is a CLI::ValidationError naming the option, the value and what was expected.
CLI::App* add_bench_command(CLI::App& app, Config& c);

}  // namespace memattn::tool
