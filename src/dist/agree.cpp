// Collective error agreement: MPI_Allreduce finds the lowest failing rank, which broadcasts its
// error.
#include "dist/agree.hpp"

#include <new>

#include "api/validate.hpp"
#include "memattn/error.hpp"

namespace memattn::dist::detail {

void agree(MPI_Comm comm, const std::function<void()>& check) {
  int rank = 0, size = 1;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  int code = 0;
  std::string message;
  try {
    check();
  } catch (const Error& e) {
    code = int(e.code());
    message = e.what();
  } catch (const std::bad_alloc&) {
    code = int(ErrorCode::out_of_memory);
    message = "out of memory";
  }
  int first = code ? rank : size;
  MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == size) return;
  int header[2] = {code, int(message.size())};
  MPI_Bcast(header, 2, MPI_INT, first, comm);
  message.resize(size_t(header[1]));
  MPI_Bcast(message.data(), header[1], MPI_CHAR, first, comm);
  throw Error(ErrorCode(header[0]), memattn::detail::cat("rank ", first, ": ", message));
}

void expect_same_everywhere(MPI_Comm comm, const std::vector<Agreed>& values) {
  const int n = int(values.size());
  std::vector<int64_t> lo(n), hi(n);
  for (int i = 0; i < n; ++i) lo[i] = hi[i] = values[i].value;
  MPI_Allreduce(MPI_IN_PLACE, lo.data(), n, MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(MPI_IN_PLACE, hi.data(), n, MPI_INT64_T, MPI_MAX, comm);
  for (int i = 0; i < n; ++i)
    if (lo[i] != hi[i])
      throw Error(ErrorCode::invalid_argument,
                  memattn::detail::cat("ranks disagree on ", values[i].name, ": values range from ",
                                       lo[i], " to ", hi[i], "; every rank must pass the same"));
}

}  // namespace memattn::dist::detail
