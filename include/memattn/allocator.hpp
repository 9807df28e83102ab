// The hook through which memattn takes all of its own memory (counting, arenas, fault injection).
#pragma once

#include <cstddef>

namespace memattn {

// allocate returns null on failure (memattn then throws ErrorCode::out_of_memory); memory is
// returned to deallocate with the same size. The pair is process-wide and must be thread-safe.
struct Allocator {
  void* (*allocate)(size_t bytes, size_t alignment, void* context) = nullptr;
  void (*deallocate)(void* ptr, size_t bytes, void* context) = nullptr;
  void* context = nullptr;
};

// Installs `a` (or the default aligned new/delete when both function pointers are null) and
// returns the previous one. Safe to call while other threads run memattn calls: each buffer is
// returned to the allocator that gave it, whichever is installed by then.
Allocator set_allocator(const Allocator& a);

}  // namespace memattn
