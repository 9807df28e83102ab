// What a call's num_threads = 0 ("all that OpenMP offers") resolves to, and the machine's processors.
#pragma once

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

namespace memattn::detail {

// omp_get_max_threads(), except inside a caller's active OpenMP parallel region, where it is 1: that
// team already holds the cores, and with nesting enabled (max active levels > 1, or an
// OMP_NUM_THREADS list) each of its T threads would otherwise start a team of its own, T x
// (max_threads - 1) extra threads (measured: 6 extra for T = 2 and OMP_NUM_THREADS=4). An explicit
// num_threads is honoured as given.
inline int default_threads() { return omp_get_active_level() > 0 ? 1 : std::max(1, omp_get_max_threads()); }

// The machine's processors, not those this process may run on nor the call's threads: the plans
// that read it (rows per forward item, the backward's way) then give the same bits under any
// affinity mask and thread count.
inline int64_t machine_processors() {
  static const int64_t n = std::max(1L, sysconf(_SC_NPROCESSORS_CONF));
  return n;
}

}  // namespace memattn::detail
