// An Allocator that counts the bytes memattn holds: current and peak since the last reset.
#pragma once

#include <atomic>
#include <cstddef>
#include <new>

#include "memattn/allocator.hpp"

namespace memattn::tool {

struct CountingAllocator {
  std::atomic<size_t> current{0}, peak{0};

  static void* allocate(size_t bytes, size_t alignment, void* ctx) {
    auto* self = static_cast<CountingAllocator*>(ctx);
    void* p = ::operator new(bytes, std::align_val_t(alignment), std::nothrow);
    if (p) {
      const size_t now = self->current += bytes;
      size_t seen = self->peak.load();
      while (now > seen && !self->peak.compare_exchange_weak(seen, now)) {
      }
    }
    return p;
  }
  static void deallocate(void* p, size_t bytes, void* ctx) {
    static_cast<CountingAllocator*>(ctx)->current -= bytes;
    ::operator delete(p, std::align_val_t(64));
  }
  Allocator hook() { return Allocator{&allocate, &deallocate, this}; }
  void reset_peak() { peak = current.load(); }
};

}  // namespace memattn::tool
