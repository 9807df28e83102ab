// Fork detection for parallel_items: a pthread_atfork child handler set up once, at load time.
#include <pthread.h>

#include <atomic>

#include "common/parallel.hpp"

namespace memattn::detail {
namespace {

std::atomic<bool> g_forked{false};

// Registered from this translation unit, which the library always links (parallel_items calls
// in_forked_child), so the handler is in place before any memattn call can fork.
const bool g_registered = [] {
  return pthread_atfork(nullptr, nullptr, [] { g_forked.store(true, std::memory_order_relaxed); }) == 0;
}();

}  // namespace

bool in_forked_child() { return g_forked.load(std::memory_order_relaxed); }

}  // namespace memattn::detail
