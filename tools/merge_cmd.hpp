// `memattn merge`: attention results over disjoint key sets, from .npy (out, lse) pairs, into one.
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace memattn::tool {

struct MergeConfig {
  std::vector<std::string> outs, lses;  // the parts, in merge order: out_p and lse_p paths
  std::string out, lse;                 // outputs; lse: "" when not wanted
  int threads = 0;                      // 0: all that OpenMP offers
};

// Adds the `merge` subcommand to `app`; parsing fills `c`.
CLI::App* add_merge_command(CLI::App& app, MergeConfig& c);

// Runs it and returns the exit code: 0, 1 (an unusable file, or the library refused the call), 2
// (the parts do not pair up, or an output path is an input). On any error no output file exists.
int merge_main(const MergeConfig& c);

}  // namespace memattn::tool
