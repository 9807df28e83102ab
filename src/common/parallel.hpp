// parallel_items: one OpenMP region over independent work items, one workspace slice per thread.
#pragma once

#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "plan/plan.hpp"

namespace memattn::detail {

// True in a child forked after this process ran an OpenMP region: libgomp's thread pool does not
// survive fork(), and the child's first parallel region would hang, so such a child runs its
// items on plain threads started per call instead (the results do not depend on the threads).
bool in_forked_child();

// The items on nw - 1 threads started here plus the caller's, taking items in turn. A thread that
// cannot be started leaves its share to the others (at worst the caller runs them all).
template <typename Fn>
void run_items_on_threads(int64_t items, int nw, char* base, size_t slice_bytes, Fn& fn) {
  std::atomic<int64_t> next{0};
  const auto work = [&](int w) {
    char* slice = base + size_t(w) * slice_bytes;
    for (int64_t it; (it = next.fetch_add(1)) < items;) fn(it, slice);
  };
  std::vector<std::thread> extra;
  extra.reserve(size_t(nw));
  try {
    for (int w = 1; w < nw; ++w) extra.emplace_back(work, w);
  } catch (const std::system_error&) {
  }
  work(0);
  for (std::thread& t : extra) t.join();
}

// Runs fn(item, worker_slice) for item in [0, items) on up to `workers` OpenMP threads, each with
// its own `slice_bytes` slice of the workspace. Items are independent and each is computed whole by
// one thread, so the result does not depend on the thread count or on which thread runs which item.
template <typename Fn>
void parallel_for_items(int64_t items, int workers, void* workspace, size_t slice_bytes, Fn&& fn) {
  const int nw = int(std::min<int64_t>(workers, items));
  char* base = static_cast<char*>(workspace);
  if (nw <= 1) {
    for (int64_t it = 0; it < items; ++it) fn(it, base);
    return;
  }
  if (in_forked_child()) return run_items_on_threads(items, nw, base, slice_bytes, fn);
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
