// `memattn run`: attention on .npy files, forward and optionally backward.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "memattn/types.hpp"

namespace CLI {
class App;
}

namespace memattn::tool {

struct RunConfig {
  std::string q, k, v, mask, bias;  // input .npy paths; mask, bias: "" when not given
  std::string alibi_slopes, sinks;  // f32 score-modifier inputs; "" when not given
  std::string out, lse;             // output .npy paths; lse: "" when not wanted
  bool backward = false;
  std::string dout, dq, dk, dv;  // with backward: dout input, gradient outputs
  bool causal = false;
  Align align = Align::top_left;
  int64_t window_left = -1, window_right = -1;
  std::optional<double> scale;  // used exactly with f64 inputs, rounded to float otherwise
  double softcap = 0;           // > 0: scores capped as softcap * tanh(s / softcap)
  Algorithm algorithm = Algorithm::automatic;
  int threads = 0;  // 0: all that OpenMP offers
};

// Adds the `run` subcommand to `app`; parsing fills `c` (bad values are CLI11 errors naming the
// option, the value and what was expected).
CLI::App* add_run_command(CLI::App& app, RunConfig& c);

// Runs it and returns the exit code: 0, 1 (an unusable file, or the library refused the call), 2 (an
// output path is an input or another output). On any error no output file exists afterwards.
int run_main(const RunConfig& c);

}  // namespace memattn::tool
