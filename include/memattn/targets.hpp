// Which SIMD targets memattn can run here, and which one a call would use.
#pragma once

#include <string>
#include <vector>

#include "memattn/types.hpp"

namespace memattn {

// Targets this build has kernels for and this CPU runs, fastest first (e.g. avx512, avx2, sse4, emu128).
std::vector<std::string> supported_targets();
// The target forward() uses with these options (Options.target, else MEMATTN_TARGET, else the best).
std::string selected_target(const Options& options = {});

}  // namespace memattn
