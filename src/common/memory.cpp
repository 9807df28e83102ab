// The process-wide allocator hook and the Buffer that draws from it.
#include "common/memory.hpp"

#include <mutex>
#include <new>
#include <string>

#include "memattn/allocator.hpp"
#include "memattn/error.hpp"

namespace memattn {
namespace {

void* default_allocate(size_t bytes, size_t alignment, void*) {
  return ::operator new(bytes, std::align_val_t(alignment), std::nothrow);
}
void default_deallocate(void* p, size_t, void*) { ::operator delete(p, std::align_val_t(detail::kAlign)); }

// Read and swapped under g_allocator_lock, so set_allocator may run beside calls in flight.
Allocator g_allocator{default_allocate, default_deallocate, nullptr};
std::mutex g_allocator_lock;

Allocator current_allocator() {
  std::lock_guard<std::mutex> hold(g_allocator_lock);
  return g_allocator;
}

}  // namespace

Allocator set_allocator(const Allocator& a) {
  if ((a.allocate == nullptr) != (a.deallocate == nullptr))
    throw Error(ErrorCode::invalid_argument,
                "allocator: allocate and deallocate must both be set or both be null");
  const Allocator next = a.allocate ? a : Allocator{default_allocate, default_deallocate, nullptr};
  std::lock_guard<std::mutex> hold(g_allocator_lock);
  const Allocator previous = g_allocator;
  g_allocator = next;
  return previous;
}

namespace detail {

void workspace_overflow() {
  throw Error(ErrorCode::size_overflow, "workspace size overflows size_t (tensor size overflows int64)");
}

Buffer::Buffer(size_t bytes, const char* what) : bytes_(bytes), from_(current_allocator()) {
  if (bytes == 0) return;
  data_ = from_.allocate(bytes, kAlign, from_.context);
  if (data_ == nullptr)
    throw Error(ErrorCode::out_of_memory,
                "failed to allocate " + std::to_string(bytes) + " bytes for " + what);
}

CallWorkspace::CallWorkspace(void* data, size_t bytes, size_t need, const char* what) {
  if ((data != nullptr || bytes != 0) && bytes < need)
    throw Error(ErrorCode::workspace_too_small, "workspace too small: need " + std::to_string(need) +
                                                    " bytes, got " + std::to_string(bytes));
  if (data == nullptr && bytes != 0)
    throw Error(ErrorCode::invalid_argument,
                "workspace: data is null but bytes is " + std::to_string(bytes));
  if (data == nullptr && need != 0) data = own_.emplace(need, what).data();
  aligned_ = reinterpret_cast<void*>(align_up(reinterpret_cast<uintptr_t>(data)));
}

Buffer::~Buffer() {
  if (data_) from_.deallocate(data_, bytes_, from_.context);
}

}  // namespace detail
}  // namespace memattn
