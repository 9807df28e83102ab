// Library-internal allocation through the user's Allocator hook, and workspace carving.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "memattn/allocator.hpp"

namespace memattn::detail {

constexpr size_t kAlign = 64;  // one cache line; also the widest SIMD register
inline size_t align_up(size_t n) { return (n + kAlign - 1) & ~(kAlign - 1); }

[[noreturn]] void workspace_overflow();
// Workspace-size arithmetic that throws ErrorCode::size_overflow instead of wrapping.
inline size_t checked_mul(size_t a, size_t b) {
  size_t r;
  if (__builtin_mul_overflow(a, b, &r)) workspace_overflow();
  return r;
}
inline size_t checked_add(size_t a, size_t b) {
  size_t r;
  if (__builtin_add_overflow(a, b, &r)) workspace_overflow();
  return r;
}

// Owns `bytes` from the allocator installed when it was made, and gives them back to that same
// allocator even if the caller installs another one meanwhile; throws ErrorCode::out_of_memory
// naming `what`.
class Buffer {
 public:
  Buffer(size_t bytes, const char* what);
  ~Buffer();
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data() const { return data_; }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
  Allocator from_;
};

// The workspace of one call: the caller's (checked against `need`) or one Buffer of `need` bytes
// from the allocator; aligned() is 64-byte aligned (`need` includes kAlign bytes of slack for it).
class CallWorkspace {
 public:
  CallWorkspace(void* data, size_t bytes, size_t need, const char* what);
  void* aligned() const { return aligned_; }

 private:
  std::optional<Buffer> own_;
  void* aligned_ = nullptr;
};

// Hands out 64-byte-aligned slices of a workspace in order. Built on a null base it only counts,
// so one layout function both sizes a workspace (planner) and carves it (kernel).
class Carver {
 public:
  explicit Carver(void* base = nullptr) : base_(reinterpret_cast<uintptr_t>(base)) {}
  template <typename T>
  T* take(size_t count) {
    const uintptr_t at = base_ + used_;
    used_ = checked_add(used_, checked_add(checked_mul(count, sizeof(T)), kAlign - 1) & ~(kAlign - 1));
    return base_ ? reinterpret_cast<T*>(at) : nullptr;
  }
  size_t used() const { return used_; }

 private:
  uintptr_t base_;
  size_t used_ = 0;
};

}  // namespace memattn::detail
