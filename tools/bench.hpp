// `memattn bench`: attention throughput sweep against the machine's peak measured in the same run.
#pragma once

#include "bench_options.hpp"

namespace memattn::tool {

// Runs the sweep `c` describes. Returns the process exit code (1: some points failed).
int bench_main(const Config& c);

}  // namespace memattn::tool
