// TESTPLAN 34 and 35, 64-bit index arithmetic: operands in sparse mappings (MAP_NORESERVE, only
// the pages written are ever backed) at element offsets past 2^31 and 2^32, and key dimensions of
// more than 2^31 elements, with a few KiB of real memory; checked against the same problem at low
// offsets and against Ref64.
#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "support_backward.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

constexpr int64_t k2Pow31 = int64_t(1) << 31;

// Anonymous memory reserved but not committed: untouched pages cost nothing.
class SparseMapping {
 public:
  explicit SparseMapping(size_t bytes)
      : bytes_(bytes),
        data_(mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                   0)) {}
  ~SparseMapping() {
    if (ok()) munmap(data_, bytes_);
  }
  SparseMapping(const SparseMapping&) = delete;
  SparseMapping& operator=(const SparseMapping&) = delete;
  bool ok() const { return data_ != MAP_FAILED; }
  void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 private:
  size_t bytes_;
  void* data_;
};

// Element strides of a placement: the dims listed in `far` get the given strides, the others are
// packed row-major (last fastest) into one block that every far stride must exceed.
using FarDims = std::vector<std::pair<int, int64_t>>;

// Dim `head` of b at a stride past 2^31 elements and dim `batch` past all of its heads: with 2
// heads, batch 1 starts past 2^32 and (batch 1, head 1) near 3 * 2^31.
FarDims batch_and_head_far(const Buf& b, int batch, int head) {
  const int64_t head_stride = k2Pow31 + 4096;
  return {{batch, b.shape[size_t(head)] * head_stride}, {head, head_stride}};
}
// Dim `seq` (extent n >= 2) at a stride that puts its last index just past 2^31 elements.
FarDims seq_far(int seq, int64_t n) { return {{seq, k2Pow31 / (n - 1) + 1}}; }

// A copy of `b` in its own sparse mapping at the strides of `far`; view.data is null when the
// mapping could not be made (reason says why).
struct SparseCopy {
  std::unique_ptr<SparseMapping> map;
  Tensor view;
  std::string reason;

  SparseCopy(const Buf& b, const FarDims& far) {
    const int n = int(b.shape.size());
    std::vector<int64_t> strides(size_t(n), 0);
    int64_t block = 1, last = 0;
    for (int d = n - 1; d >= 0; --d) {
      const auto it = std::find_if(far.begin(), far.end(), [d](const auto& f) { return f.first == d; });
      if (it != far.end()) continue;
      strides[size_t(d)] = block;
      block *= b.shape[size_t(d)];
    }
    for (const auto& [d, stride] : far) {
      EXPECT_GE(stride, block) << "far stride within the packed block";
      strides[size_t(d)] = stride;
    }
    for (int d = 0; d < n; ++d) last += (b.shape[size_t(d)] - 1) * strides[size_t(d)];
    const size_t es = memattn::dtype_size(b.dtype);
    map = std::make_unique<SparseMapping>(size_t(last + 1) * es);
    if (!map->ok()) {
      reason = "mmap of " + std::to_string(map->bytes() >> 20) + " MiB (MAP_NORESERVE) failed";
      return;
    }
    view.data = map->data();
    view.dtype = b.dtype;
    view.ndim = n;
    for (int d = 0; d < n; ++d) {
      view.shape[size_t(d)] = b.shape[size_t(d)];
      view.strides[size_t(d)] = strides[size_t(d)];
    }
    copy_to_view(b, view);
  }
  bool ok() const { return view.data != nullptr; }
  Buf read(const Buf& like) const {
    Buf got(like.dtype, like.shape);
    copy_from_view(view, got);
    return got;
  }
};

// The placements of TESTPLAN 34, each operand by its own dims: q, k, v, out, dout and the
// gradients [B, S, H, D]; lse [B, H, S]; bias and dbias [B, H, Sq, Sk].
struct Placement {
  const char* name;
  std::function<FarDims(const Buf&)> bshd, lse, bias;
};
const Placement kPlacements[] = {
    {"batch past 2^32, head past 2^31", [](const Buf& b) { return batch_and_head_far(b, 0, 2); },
     [](const Buf& b) { return batch_and_head_far(b, 0, 1); },
     [](const Buf& b) { return batch_and_head_far(b, 0, 1); }},
    {"last sequence index past 2^31", [](const Buf& b) { return seq_far(1, b.shape[1]); },
     [](const Buf& b) { return seq_far(2, b.shape[2]); },
     [](const Buf& b) { return seq_far(3, b.shape[3]); }},
};

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64};

// Every algorithm that takes `dt` (flash on every SIMD target), as (algorithm, target) pairs.
std::vector<std::pair<Algorithm, std::string>> runs_for(DType dt, std::vector<Algorithm> algorithms) {
  std::vector<std::pair<Algorithm, std::string>> r;
  for (Algorithm a : algorithms) {
    if (a == Algorithm::flash && dt == DType::f64) continue;
    if (a != Algorithm::flash) r.emplace_back(a, "");
    else
      for (const std::string& t : memattn::supported_targets()) r.emplace_back(a, t);
  }
  return r;
}

// Copies of several operands; the first failure's reason, or "".
std::string first_failure(std::initializer_list<const SparseCopy*> copies) {
  for (const SparseCopy* c : copies)
    if (!c->ok()) return c->reason;
  return "";
}

}  // namespace

// TESTPLAN 34, forward: every operand (q, k, v, out, lse, bias) with batch 1 past 2^32 elements
// and head 1 past 2^31, or with its last sequence index past 2^31; dense and decode items, every
// algorithm and SIMD target: bitwise the same problem at low offsets, and within the rule of Ref64.
TEST(HugeSizes, lay_large_index_64bit) {
  const Shape s{2, 13, 21, 2, 2, 16, 12};
  for (DType dt : kDtypes)
    for (const Placement& place : kPlacements) {
      Case c(s, dt, 501);
      c.options.causal = true;
      c.options.key_chunk = 8;
      c.set_bias({2, 2, s.Sq, s.Sk}, dt, randn_values(size_t(4 * s.Sq * s.Sk), 502));
      SparseCopy q(c.q, place.bshd(c.q)), k(c.k, place.bshd(c.k)), v(c.v, place.bshd(c.v)),
          out(c.out, place.bshd(c.out)), lse(c.lse, place.lse(c.lse)), bias(*c.bias, place.bias(*c.bias));
      const std::string why = first_failure({&q, &k, &v, &out, &lse, &bias});
      if (!why.empty()) GTEST_SKIP() << why;
      const RefProblem p = c.problem();
      const RefResult ref = dt == DType::f64 ? reference_extended(p) : reference64(p);
      const RefResult base = baseline(p, dt);
      memattn::Options o = c.options;
      o.bias = &bias.view;
      for (int64_t query_chunk : {0, 4})  // 0: 13 queries take the decode items
        for (const auto& [alg, target] : runs_for(dt, algorithms_for(dt))) {
          c.options.query_chunk = o.query_chunk = query_chunk;
          c.options.algorithm = o.algorithm = alg;
          c.options.target = o.target = target.empty() ? nullptr : target.c_str();
          SCOPED_TRACE(std::string(place.name) + ": " + describe(c));
          c.run();
          memattn::forward(q.view, k.view, v.view, out.view, &lse.view, o);
          const Buf got = out.read(c.out);
          EXPECT_EQ(bitwise_difference(got, c.out), "");
          EXPECT_EQ(bitwise_difference(lse.read(c.lse), c.lse), "");
          EXPECT_EQ(accuracy_failure(got.values(), ref.out, base.out, dt), "");
        }
    }
}

// TESTPLAN 34, backward: q, k, v, out, dout, lse, bias and every gradient (dq, dk, dv, dbias)
// placed as in the forward case; naive and flash on every SIMD target: bitwise the gradients of the
// same problem at low offsets, and within the rule of Ref64's.
TEST(HugeSizes, lay_large_index_64bit_backward) {
  const Shape s{2, 13, 21, 2, 2, 16, 12};
  for (DType dt : kDtypes)
    for (const Placement& place : kPlacements) {
      BackwardCase c(s, dt, 511);
      c.options.causal = true;
      c.options.query_chunk = 4;
      c.options.key_chunk = 8;
      c.set_bias({2, 2, s.Sq, s.Sk}, dt, randn_values(size_t(4 * s.Sq * s.Sk), 512));
      c.request_dbias();
      c.run();  // out and lse at low offsets, copied below
      SparseCopy q(c.q, place.bshd(c.q)), k(c.k, place.bshd(c.k)), v(c.v, place.bshd(c.v)),
          out(c.out, place.bshd(c.out)), dout(c.dout, place.bshd(c.dout)), lse(c.lse, place.lse(c.lse)),
          bias(*c.bias, place.bias(*c.bias)), dq(c.dq, place.bshd(c.dq)), dk(c.dk, place.bshd(c.dk)),
          dv(c.dv, place.bshd(c.dv)), dbias(*c.dbias, place.bias(*c.dbias));
      const std::string why = first_failure({&q, &k, &v, &out, &dout, &lse, &bias, &dq, &dk, &dv, &dbias});
      if (!why.empty()) GTEST_SKIP() << why;
      const RefProblem p = c.problem();
      const std::vector<double> dout_values = c.dout.values();
      const RefGrads ref = dt == DType::f64 ? reference_backward_extended(p, dout_values)
                                            : reference_backward64(p, dout_values);
      const RefGrads base = baseline_backward(p, dout_values, dt, dt);
      memattn::Options o = c.options;
      o.bias = &bias.view;
      for (const auto& [alg, target] : runs_for(dt, {Algorithm::naive, Algorithm::flash})) {
        c.options.algorithm = o.algorithm = alg;
        c.options.target = o.target = target.empty() ? nullptr : target.c_str();
        SCOPED_TRACE(std::string(place.name) + ": " + describe(c));
        c.run_backward();
        memattn::backward(q.view, k.view, v.view, out.view, dout.view, lse.view, dq.view, dk.view, dv.view, o,
                          &dbias.view);
        const struct {
          const char* name;
          const SparseCopy& got;
          const Buf& want;
          const std::vector<double>& ref;
          const std::vector<double>& base;
        } grads[] = {{"dq", dq, c.dq, ref.dq, base.dq},
                     {"dk", dk, c.dk, ref.dk, base.dk},
                     {"dv", dv, c.dv, ref.dv, base.dv},
                     {"dbias", dbias, *c.dbias, ref.dbias, base.dbias}};
        for (const auto& g : grads) {
          const Buf got = g.got.read(g.want);
          EXPECT_EQ(bitwise_difference(got, g.want), "") << g.name;
          EXPECT_EQ(accuracy_failure(got.values(), g.ref, g.base, dt, 3.0), "") << g.name;
        }
      }
    }
}

// TESTPLAN 35: keys and values of more than 2^31 elements (seq_k * heads_kv * head_dim = 2^31 +
// 1024) in sparse mappings, read only at their last keys (causal bottom-right with a window), whose
// rows sit at element offsets near 2^31; every algorithm and SIMD target, against Ref64 of the
// same problem on those keys alone. The backward has no such case: its dk and dv would have to be
// written whole (2^31 elements each). Then the xformers uint16-overflow shapes, forward and
// backward: seq_q = 2^16 + 1 with 4 keys, its transpose, and 300 heads.
TEST(HugeSizes, lay_dims_near_int32_limits) {
  const int64_t seq_k = (int64_t(1) << 21) + 1, window = 6;
  const Shape near{1, 3, window + 3, 4, 4, 256, 256};  // the keys the queries see
  for (DType dt : {DType::f32, DType::bf16}) {
    Case c(near, dt, 521);
    c.options.causal = true;
    c.options.align = Align::bottom_right;
    c.options.window_left = window;
    const size_t bytes = size_t(seq_k * near.Hkv * near.D) * memattn::dtype_size(dt);
    SparseMapping k_map(bytes), v_map(bytes);
    if (!k_map.ok() || !v_map.ok())
      GTEST_SKIP() << "mmap of 2 x " << (bytes >> 20) << " MiB (MAP_NORESERVE) failed";
    ASSERT_GT(seq_k * near.Hkv * near.D, k2Pow31);
    Tensor big_k = Tensor::contiguous(k_map.data(), dt, {1, seq_k, near.Hkv, near.D});
    Tensor big_v = Tensor::contiguous(v_map.data(), dt, {1, seq_k, near.Hkv, near.Dv});
    for (auto [big, small] : {std::pair{&big_k, &c.k}, std::pair{&big_v, &c.v}}) {
      Tensor tail = *big;  // the last near.Sk keys hold the small problem's
      const int64_t first = seq_k - near.Sk;
      tail.data = static_cast<char*>(big->data) + first * big->strides[1] * int64_t(memattn::dtype_size(dt));
      tail.shape[1] = near.Sk;
      copy_to_view(*small, tail);
    }
    const RefProblem p = c.problem();
    const RefResult ref = reference64(p), base = baseline(p, dt);
    for (const auto& [alg, target] : runs_for(dt, algorithms_for(dt))) {
      c.options.algorithm = alg;
      c.options.target = target.empty() ? nullptr : target.c_str();
      SCOPED_TRACE(describe(c) + " with seq_k " + std::to_string(seq_k));
      c.out.fill(std::numeric_limits<double>::quiet_NaN());
      Tensor out = c.out.view(), lse = c.lse.view();
      memattn::forward(c.q.view(), big_k, big_v, out, &lse, c.options);
      EXPECT_EQ(accuracy_failure(c.out.values(), ref.out, base.out, dt), "");
      for (int64_t x = 0; x < c.lse.numel(); ++x) {  // TESTPLAN 32's lse bound
        const double want = ref.lse[size_t(x)];
        const double tol = dt == DType::f32 ? 1e-5 * std::max(1.0, std::fabs(want)) : 2e-4;
        EXPECT_LE(std::fabs(c.lse.get(x) - want), tol);
      }
    }
  }
  for (const Shape& s : {Shape{1, (1 << 16) + 1, 4, 1, 1, 8, 8}, Shape{1, 4, (1 << 16) + 1, 1, 1, 8, 8},
                         Shape{1, 5, 7, 300, 300, 8, 8}}) {
    Case fwd(s, DType::f32, 531);
    SCOPED_TRACE(describe(fwd));
    expect_accurate_all(fwd);
    BackwardCase bwd(s, DType::f32, 532);
    for (Algorithm alg : {Algorithm::naive, Algorithm::flash}) {
      bwd.options.algorithm = alg;
      expect_backward_accurate(bwd);
    }
  }
}
