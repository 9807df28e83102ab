// Helpers for the error, fault and memory tests: a test Allocator hooked into memattn (counts
// calls, outstanding and peak bytes, fails the k-th allocation on request) and expect_error, which
// checks the ErrorCode, the message and that sentinel-filled outputs come through untouched.
#pragma once

#include <gtest/gtest.h>

#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "memattn/memattn.hpp"
#include "support.hpp"

namespace mt {

class TestAllocator {
 public:
  // Installs itself for the lifetime of the object and restores the previous allocator after.
  TestAllocator() { previous_ = memattn::set_allocator({&allocate, &deallocate, this}); }
  ~TestAllocator() { memattn::set_allocator(previous_); }
  TestAllocator(const TestAllocator&) = delete;
  TestAllocator& operator=(const TestAllocator&) = delete;

  // The k-th allocation from now on (1-based) returns null; 0 disables the fault.
  void fail_at(int64_t k) {
    reset();
    fail_at_ = k;
  }
  // Starts a new measurement: call count and peak restart from the bytes held now.
  void reset() {
    calls_ = 0;
    allocations_ = 0;
    peak_ = outstanding_.load();
    const std::lock_guard<std::mutex> lock(mutex_);
    requested_.clear();
  }
  int64_t allocations() const { return allocations_; }  // successful ones since reset()
  // Bytes asked for by each call since reset(), failed ones included, in call order.
  std::vector<size_t> requested() const {
    const std::lock_guard<std::mutex> lock(mutex_);
    return requested_;
  }
  size_t outstanding() const { return outstanding_; }   // bytes held now
  size_t peak() const { return peak_; }                 // most bytes held at once since reset()

 private:
  static void* allocate(size_t bytes, size_t alignment, void* ctx) {
    auto* self = static_cast<TestAllocator*>(ctx);
    {
      const std::lock_guard<std::mutex> lock(self->mutex_);
      self->requested_.push_back(bytes);
    }
    if (++self->calls_ == self->fail_at_) return nullptr;
    void* p = nullptr;
    if (posix_memalign(&p, std::max(alignment, sizeof(void*)), bytes) != 0) return nullptr;
    ++self->allocations_;
    const size_t now = self->outstanding_ += bytes;
    size_t seen = self->peak_.load();
    while (now > seen && !self->peak_.compare_exchange_weak(seen, now)) {
    }
    return p;
  }
  static void deallocate(void* p, size_t bytes, void* ctx) {
    static_cast<TestAllocator*>(ctx)->outstanding_ -= bytes;
    free(p);
  }

  memattn::Allocator previous_;
  std::atomic<int64_t> calls_{0}, allocations_{0}, fail_at_{0};
  std::atomic<size_t> outstanding_{0}, peak_{0};
  mutable std::mutex mutex_;
  std::vector<size_t> requested_;
};

// Fills each output with a sentinel and remembers its bytes; unchanged() says whether any moved.
class Untouched {
 public:
  explicit Untouched(std::vector<Buf*> outputs) : outputs_(std::move(outputs)) {
    for (Buf* b : outputs_) {
      b->fill(-7.25);  // exact in every float dtype, and never a plausible attention output
      before_.push_back(b->bytes);
    }
  }
  bool unchanged() const {
    for (size_t i = 0; i < outputs_.size(); ++i)
      if (outputs_[i]->bytes != before_[i]) return false;
    return true;
  }

 private:
  std::vector<Buf*> outputs_;
  std::vector<std::vector<unsigned char>> before_;
};

// Runs `call`, which must throw memattn::Error with `code` and a message containing every string
// of `parts` (the argument's name, the expected and the given value), leaving `outputs` untouched.
// Returns the message.
template <typename Call>
std::string expect_error(Call&& call, memattn::ErrorCode code, const std::vector<std::string>& parts,
                         std::vector<Buf*> outputs = {}) {
  const Untouched guard(std::move(outputs));
  std::string message;
  try {
    call();
    ADD_FAILURE() << "expected memattn::Error " << int(code) << ", but the call succeeded";
  } catch (const memattn::Error& e) {
    message = e.what();
    EXPECT_EQ(int(e.code()), int(code)) << message;
    for (const std::string& part : parts)
      EXPECT_NE(message.find(part), std::string::npos)
          << "message \"" << message << "\" lacks \"" << part << "\"";
  }
  EXPECT_TRUE(guard.unchanged()) << "an output was written before the error";
  return message;
}

// The operands of one forward call, initialised from a Case; tests replace the one under test.
struct Call {
  Tensor q, k, v, out, lse;
  memattn::Options options;
  explicit Call(Case& c)
      : q(c.q.view()), k(c.k.view()), v(c.v.view()), out(c.out.view()), lse(c.lse.view()),
        options(c.options) {}
  void forward() const { memattn::forward(q, k, v, out, &lse, options); }
  size_t workspace_bytes() const { return memattn::workspace_bytes(q, k, v, options); }
};

// forward() must fail with `code` and `parts` leaving the Case's out and lse untouched; when the
// bad argument is an input or an option, workspace_bytes() (which validates the same) must too.
enum class Sizing { fails_too, not_involved };
inline void expect_call_error(Case& c, const Call& call, memattn::ErrorCode code,
                              const std::vector<std::string>& parts, Sizing sizing = Sizing::fails_too) {
  expect_error([&] { call.forward(); }, code, parts, {&c.out, &c.lse});
  if (sizing == Sizing::fails_too) expect_error([&] { (void)call.workspace_bytes(); }, code, parts);
}

}  // namespace mt
