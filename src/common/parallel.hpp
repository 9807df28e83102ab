// parallel_items: one OpenMP region over independent work items, one workspace slice per thread.
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <utility>

#include "plan/plan.hpp"

namespace memattn::detail {

// True in a child forked after this process ran an OpenMP region: libgomp's thread pool does not
// survive fork(), and the child's first parallel region would hang, so such a child runs serially
// (the results do not depend on the thread count).
bool in_forked_child();

// Runs fn(item, worker_slice) for item in [0, items) on up to `workers` OpenMP threads, each with
// its own `slice_bytes` slice of the workspace. Items are independent and each is computed whole by
// one thread, so the result does not depend on the thread count or on which thread runs which item.
template <typename Fn>
void parallel_for_items(int64_t items, int workers, void* workspace, size_t slice_bytes, Fn&& fn) {
  const int nw = int(std::min<int64_t>(workers, items));
  char* base = static_cast<char*>(workspace);
  if (nw <= 1 || in_forked_child()) {
    for (int64_t it = 0; it < items; ++it) fn(it, base);
    return;
  }
#pragma omp parallel num_threads(nw)
  {
    char* slice = base + size_t(omp_get_thread_num()) * slice_bytes;
#pragma omp for schedule(dynamic, 1)
    for (int64_t it = 0; it < items; ++it) fn(it, slice);
  }
}

// The forward algorithms' loop: work_items(p) items on workers(p) threads.
template <typename Fn>
void parallel_items(const Params& p, void* workspace, size_t slice_bytes, Fn&& fn) {
  parallel_for_items(work_items(p), workers(p), workspace, slice_bytes, std::forward<Fn>(fn));
}

}  // namespace memattn::detail
