// Collective error agreement: a failure on any rank becomes the same memattn::Error on every rank.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace memattn::dist::detail {

// Runs `check` on this rank, then agrees with every rank of `comm`: if `check` threw on any rank
// (memattn::Error, or std::bad_alloc as out_of_memory), every rank throws the error of the lowest
// failing rank, its message prefixed with "rank N: ". Collective; no data moves when all pass.
void agree(MPI_Comm comm, const std::function<void()>& check);

// A value every rank must hold identically, with its name for the error message.
struct Agreed {
  const char* name;
  int64_t value;
};
// Collectively checks that every rank passed the same values (in the same order); if not, every
// rank throws invalid_argument naming the first that differs and its smallest and largest values.
void expect_same_everywhere(MPI_Comm comm, const std::vector<Agreed>& values);

}  // namespace memattn::dist::detail
