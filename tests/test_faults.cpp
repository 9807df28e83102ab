// API faults, TESTPLAN cases 13 and 14 for every algorithm: a caller workspace one byte short is
// refused with the exact sizes, a misaligned one of the queried size works bitwise and allocates
// nothing; an allocator that fails the k-th allocation gives out_of_memory, leaks nothing, leaves
// the outputs untouched and the library usable. The ASan build of `make test` adds LSan to this.
#include <gtest/gtest.h>

#include <atomic>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "fault_support.hpp"
#include "support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::ErrorCode;
using memattn::Workspace;

namespace {

struct Variant {
  Algorithm algorithm;
  DType dtype;
};
// Every algorithm, in f32 and in the reference algorithms' f64, with bf16 for the default path.
constexpr Variant kVariants[] = {
    {Algorithm::naive, DType::f32},      {Algorithm::sequential, DType::f32},
    {Algorithm::chunked, DType::f32},    {Algorithm::flash, DType::f32},
    {Algorithm::flash, DType::bf16},     {Algorithm::automatic, DType::f16},
    {Algorithm::naive, DType::f64},      {Algorithm::chunked, DType::f64},
};

std::string describe(const Variant& v) {
  return std::string(memattn::algorithm_name(v.algorithm)) + " " + memattn::dtype_name(v.dtype);
}

// A masked, causal, GQA problem whose chunk sizes leave remainders; automatic chunks when asked.
Case make_case(const Variant& v, bool automatic_chunks = false) {
  Case c(Shape{2, 37, 45, 4, 2, 24, 20}, v.dtype, 29);
  c.options.algorithm = v.algorithm;
  c.options.causal = true;
  c.options.align = memattn::Align::bottom_right;
  if (!automatic_chunks) {
    c.options.query_chunk = 8;
    c.options.key_chunk = 16;
  }
  return c;
}

struct Outputs {
  std::vector<unsigned char> out, lse;
  bool operator==(const Outputs&) const = default;
};
Outputs outputs(const Case& c) { return {c.out.bytes, c.lse.bytes}; }

void forward_with(Case& c, Workspace ws) {
  Tensor lse = c.lse.view();
  memattn::forward(c.q.view(), c.k.view(), c.v.view(), c.out.view(), &lse, c.options, ws);
}

}  // namespace

TEST(Faults, fault_workspace_too_small) {
  for (const Variant& variant : kVariants)
    for (bool automatic : {false, true}) {
      SCOPED_TRACE(describe(variant) + (automatic ? " automatic chunks" : " chunks 8/16"));
      Case c = make_case(variant, automatic);
      TestAllocator allocator;
      const size_t need = Call(c).workspace_bytes();
      EXPECT_EQ(allocator.allocations(), 0) << "workspace_bytes allocated";
      ASSERT_GT(need, 0u);
      c.run();
      const Outputs want = outputs(c);

      std::vector<unsigned char> ws(need + 128, 0xA5);  // room to misalign, and a canary tail
      expect_error([&] { forward_with(c, Workspace{ws.data(), need - 1}); }, ErrorCode::workspace_too_small,
                   {"workspace too small: need " + std::to_string(need) + " bytes, got " +
                    std::to_string(need - 1)},
                   {&c.out, &c.lse});
      expect_error([&] { forward_with(c, Workspace{ws.data(), 0}); }, ErrorCode::workspace_too_small,
                   {"need " + std::to_string(need) + " bytes, got 0"}, {&c.out, &c.lse});

      for (size_t misalign : {size_t(0), size_t(1), size_t(3), size_t(63)}) {
        SCOPED_TRACE("workspace at +" + std::to_string(misalign) + " bytes");
        std::fill(ws.begin(), ws.end(), 0xA5);
        unsigned char* base = ws.data() + (64 - reinterpret_cast<uintptr_t>(ws.data()) % 64) % 64 + misalign;
        c.out.fill(-7.25);
        allocator.reset();
        forward_with(c, Workspace{base, need});
        EXPECT_EQ(allocator.allocations(), 0) << "allocated despite a caller workspace";
        EXPECT_TRUE(outputs(c) == want) << "differs from the run with an internal workspace";
        // The library stays inside the bytes it asked for.
        for (unsigned char* p = ws.data(); p < base; ++p) ASSERT_EQ(*p, 0xA5) << "wrote before the workspace";
        for (unsigned char* p = base + need; p < ws.data() + ws.size(); ++p)
          ASSERT_EQ(*p, 0xA5) << "wrote past the workspace";
      }
    }
}

TEST(Faults, fault_workspace_too_small_no_keys_needs_none) {
  // Sk = 0 needs no workspace at all: out = 0, lse = -inf without touching the allocator.
  Case c(Shape{2, 5, 0, 2, 2, 8, 8}, DType::f32);
  TestAllocator allocator;
  EXPECT_EQ(Call(c).workspace_bytes(), 0u);
  forward_with(c, Workspace{});
  EXPECT_EQ(allocator.allocations(), 0);
}

TEST(Faults, fault_alloc_failure) {
  for (const Variant& variant : kVariants)
    for (bool automatic : {false, true}) {
      SCOPED_TRACE(describe(variant) + (automatic ? " automatic chunks" : " chunks 8/16"));
      Case c = make_case(variant, automatic);
      TestAllocator allocator;
      c.run();
      const Outputs want = outputs(c);
      const int64_t total = allocator.allocations();
      ASSERT_GE(total, 1) << "nothing to fail: the call allocated nothing";
      ASSERT_EQ(allocator.outstanding(), 0u) << "leak after a successful call";
      for (int64_t k = 1; k <= total; ++k) {
        SCOPED_TRACE("allocation " + std::to_string(k) + " of " + std::to_string(total) + " fails");
        allocator.fail_at(k);
        const std::string message = expect_error([&] { c.run(); }, ErrorCode::out_of_memory,
                                                 {"failed to allocate ", " bytes for "}, {&c.out, &c.lse});
        const std::vector<size_t> asked = allocator.requested();
        ASSERT_EQ(int64_t(asked.size()), k) << "kept allocating after a failure";
        EXPECT_NE(message.find("failed to allocate " + std::to_string(asked.back()) + " bytes for "),
                  std::string::npos)
            << message;
        EXPECT_EQ(allocator.outstanding(), 0u) << "leak after a failed allocation";
        allocator.fail_at(0);
        c.run();
        EXPECT_TRUE(outputs(c) == want) << "the call after the failure differs";
        EXPECT_EQ(allocator.outstanding(), 0u);
      }
    }
}

TEST(Faults, fault_alloc_failure_names_the_workspace_and_its_size) {
  Case c = make_case({Algorithm::flash, DType::f32});
  TestAllocator allocator;
  allocator.fail_at(1);
  const size_t need = Call(c).workspace_bytes();
  expect_error([&] { c.run(); }, ErrorCode::out_of_memory,
               {"failed to allocate " + std::to_string(need) + " bytes for the forward workspace"},
               {&c.out, &c.lse});
}

TEST(Faults, fault_alloc_failure_allocator_hook_is_validated) {
  const memattn::Allocator half{[](size_t, size_t, void*) -> void* { return nullptr; }, nullptr, nullptr};
  expect_error([&] { memattn::set_allocator(half); }, ErrorCode::invalid_argument,
               {"allocator: allocate and deallocate must both be set or both be null"});
  // The refused hook was not installed: the library still allocates normally.
  Case c = make_case({Algorithm::naive, DType::f32});
  EXPECT_NO_THROW(c.run());
}

// A buffer goes back to the allocator that gave it, even when the caller installs another one
// while the call runs (issue 7: Python code may swap allocators beside calls in flight).
TEST(Faults, fault_allocator_swapped_during_a_call_frees_through_the_first) {
  struct Gate {
    std::atomic<int> taken{0}, freed{0};
    std::atomic<bool> release{false};
  };
  static Gate first, second;
  const memattn::Allocator blocking{
      [](size_t bytes, size_t alignment, void*) -> void* {
        ++first.taken;
        while (!first.release) std::this_thread::yield();  // hold the call inside its allocation
        return ::operator new(bytes, std::align_val_t(alignment));
      },
      [](void* p, size_t, void*) { ++first.freed, ::operator delete(p, std::align_val_t(64)); },
      nullptr};
  const memattn::Allocator counting{
      [](size_t bytes, size_t alignment, void*) -> void* {
        ++second.taken;
        return ::operator new(bytes, std::align_val_t(alignment));
      },
      [](void* p, size_t, void*) { ++second.freed, ::operator delete(p, std::align_val_t(64)); },
      nullptr};
  Case c = make_case({Algorithm::flash, DType::f32});
  const memattn::Allocator previous = memattn::set_allocator(blocking);
  std::thread call([&] { c.run(); });
  while (first.taken == 0) std::this_thread::yield();
  memattn::set_allocator(counting);  // swapped while the call holds the first allocator's memory
  first.release = true;
  call.join();
  memattn::set_allocator(previous);
  EXPECT_EQ(first.freed.load(), first.taken.load());
  EXPECT_EQ(second.freed.load(), second.taken.load());
}
