// `memattn bench --dist`: ring attention across the ranks of mpirun (needs a build with MPI).
#pragma once

#include "bench_options.hpp"

namespace memattn::tool {

// Runs the points of `c` (dtype x d x heads x batch x n x causal x threads x direction) as ring
// attention with c.placement over MPI_COMM_WORLD; rank 0 prints one row per point. Returns the
// exit code: 1 if some point failed, or when this build has no MPI.
int bench_dist_main(const Config& c);

}  // namespace memattn::tool
