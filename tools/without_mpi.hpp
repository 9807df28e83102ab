// The answer of the MPI commands (bench --dist, run --mpi) in a memattn built without MPI.
#pragma once

#include <cstdio>

namespace memattn::tool {

inline int without_mpi(const char* command) {
  std::fprintf(stderr,
               "%s: this memattn was built without MPI (install Open MPI, e.g. Debian's libopenmpi-dev "
               "openmpi-bin, and configure again)\n",
               command);
  return 1;
}

}  // namespace memattn::tool
