// memattn::merge against attention over the whole key set: forward() on random key slices (empty,
// single-key, fully masked rows) merged back, checked against Ref64 and the unsplit forward; part
// order, threads, strides, in-place, empty parts that are never read, NaN, and every error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "fault_support.hpp"
#include "support.hpp"

using namespace mt;
using memattn::ErrorCode;

namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

// A problem whose causal / window / mask visibility is also written out as one u8 mask over all
// keys, so that forward() on a slice of the keys sees exactly that slice of the visibility.
struct Split {
  Case whole;
  Buf visible;
  std::vector<int64_t> cuts;  // part p holds keys [cuts[p], cuts[p + 1])
  std::vector<Buf> outs, lses;

  Split(Shape s, DType dt, uint64_t seed, std::vector<int64_t> cut_points)
      : whole(s, dt, seed),
        visible(DType::u8, {s.B, s.Hq, s.Sq, s.Sk}),
        cuts(std::move(cut_points)) {}

  // Fills `visible` from the whole problem's options and runs forward() on every part.
  void run_parts(DType part_dtype) {
    const RefProblem p = whole.problem();
    const Shape& s = whole.s;
    int64_t n = 0;
    for (int64_t b = 0; b < s.B; ++b)
      for (int64_t h = 0; h < s.Hq; ++h)
        for (int64_t i = 0; i < s.Sq; ++i)
          for (int64_t j = 0; j < s.Sk; ++j) visible.set(n++, ref_visible(p, b, h, i, j));
    for (size_t part = 0; part + 1 < cuts.size(); ++part) {
      const int64_t j0 = cuts[part], keys = cuts[part + 1] - j0;
      memattn::Options o;
      o.scale = whole.options.scale;
      const Tensor mask =
          Tensor::strided(static_cast<uint8_t*>(visible.data()) + j0, DType::u8,
                          {s.B, s.Hq, s.Sq, keys}, {s.Hq * s.Sq * s.Sk, s.Sq * s.Sk, s.Sk, 1});
      o.mask = &mask;
      outs.emplace_back(part_dtype, std::vector<int64_t>{s.B, s.Sq, s.Hq, s.Dv});
      lses.emplace_back(DType::f32, std::vector<int64_t>{s.B, s.Hq, s.Sq});
      Tensor lse = lses.back().view();
      memattn::forward(whole.q.view(), key_slice(whole.k, j0, keys), key_slice(whole.v, j0, keys),
                       outs.back().view(), &lse, o);
      poison_empty_rows(outs.back(), lses.back());
    }
  }

  static Tensor key_slice(Buf& t, int64_t j0, int64_t keys) {
    Tensor v = t.view();
    v.data = static_cast<char*>(v.data) + j0 * v.strides[1] * int64_t(memattn::dtype_size(t.dtype));
    v.shape[1] = keys;
    return v;
  }

  // Rows of a part that saw no key get NaN: merge must not read them.
  void poison_empty_rows(Buf& out, const Buf& lse) const {
    const Shape& s = whole.s;
    for_each_row(s, [&](int64_t b, int64_t i, int64_t h) {
      if (lse.get(lse_offset(s, b, h, i)) != -kInf) return;
      for (int64_t c = 0; c < s.Dv; ++c) out.set(out_row_offset(s, b, i, h) + c, NAN);
    });
  }

  std::vector<Tensor> views(std::vector<Buf>& bufs, const std::vector<size_t>& order) const {
    std::vector<Tensor> r;
    for (size_t p : order) r.push_back(bufs[p].view());
    return r;
  }
  std::vector<size_t> in_order() const {
    std::vector<size_t> r(outs.size());
    for (size_t p = 0; p < r.size(); ++p) r[p] = p;
    return r;
  }
  // The parts merged in `order` into new buffers of `out_dtype`.
  std::pair<Buf, Buf> merged(DType out_dtype, const std::vector<size_t>& order, int threads = 0) {
    const Shape& s = whole.s;
    Buf out(out_dtype, {s.B, s.Sq, s.Hq, s.Dv}), lse(DType::f32, {s.B, s.Hq, s.Sq});
    Tensor lse_view = lse.view();
    memattn::merge(views(outs, order), views(lses, order), out.view(), &lse_view, {threads});
    return {std::move(out), std::move(lse)};
  }
};

std::string lse_failure(const Buf& got, const std::vector<double>& ref, double tolerance) {
  for (int64_t r = 0; r < got.numel(); ++r) {
    const double g = got.get(r), w = ref[size_t(r)];
    const bool ok =
        w == -kInf ? g == -kInf : std::fabs(g - w) <= tolerance * std::max(1.0, std::fabs(w));
    if (!ok)
      return "lse[" + std::to_string(r) + "] = " + std::to_string(g) + ", ref " + std::to_string(w);
  }
  return "";
}

// Largest |x| of a buffer, NaN ignored.
double max_abs(const Buf& b) {
  double m = 0;
  for (double x : b.values()) m = std::isnan(x) ? m : std::max(m, std::fabs(x));
  return m;
}

struct SplitCase {
  DType dtype;
  Shape shape;
  std::vector<int64_t> cuts;  // empty: random cuts into 1..6 parts
  bool causal = false;
  memattn::Align align = memattn::Align::top_left;
  int64_t window_left = -1;
  bool random_mask = false;
};

void check_split(const SplitCase& sc, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> cuts = sc.cuts;
  if (cuts.empty()) {
    cuts = {0, sc.shape.Sk};
    for (int n = int(rng() % 6); n > 0; --n)
      cuts.push_back(int64_t(rng() % uint64_t(sc.shape.Sk + 1)));
    std::sort(cuts.begin(), cuts.end());
  }
  Split sp(sc.shape, sc.dtype, seed, cuts);
  memattn::Options& o = sp.whole.options;
  o.causal = sc.causal;
  o.align = sc.align;
  o.window_left = sc.window_left;
  if (sc.random_mask) {  // row 0 of every head fully masked: a row empty in every part
    std::vector<uint8_t> m = random_mask(size_t(sc.shape.Sq * sc.shape.Sk), seed, 0.6);
    std::fill(m.begin(), m.begin() + sc.shape.Sk, 0);
    sp.whole.set_mask({1, 1, sc.shape.Sq, sc.shape.Sk}, m);
  }
  sp.whole.run();
  sp.run_parts(sc.dtype);
  const RefProblem p = sp.whole.problem();
  const bool f64 = sc.dtype == DType::f64;
  const RefResult ref = f64 ? reference_extended(p) : reference64(p);
  const RefResult base = f64 ? reference64(p) : baseline(p, sc.dtype);
  // f64 parts come with f32 lses: each weight exp(L_p - L) carries their rounding, 2^-24 |L|.
  double max_lse = 1;
  for (double x : ref.lse) max_lse = std::isfinite(x) ? std::max(max_lse, std::fabs(x)) : max_lse;
  const double slack = f64 ? 4 * 0x1p-24 * max_lse * max_abs(sp.whole.out) : 0.0;
  const std::string what = describe(sp.whole) + " seed " + std::to_string(seed) + " parts " +
                           std::to_string(cuts.size() - 1);

  const auto merged = sp.merged(sc.dtype, sp.in_order());
  const auto& out = merged.first;  // names a lambda below can capture (clang 14: no bindings)
  const auto& lse = merged.second;
  EXPECT_EQ(accuracy_failure(out.values(), ref.out, base.out, sc.dtype, 2.0, slack), "") << what;
  EXPECT_EQ(accuracy_failure(out.values(), ref.out, sp.whole.out_values(), sc.dtype, 2.0, slack),
            "")
      << what << " (against the unsplit forward)";
  const double lse_tol = sc.dtype == DType::bf16 || sc.dtype == DType::f16 ? 2e-4 : 1e-5;
  EXPECT_EQ(lse_failure(lse, ref.lse, lse_tol), "") << what;
  for_each_row(sc.shape, [&](int64_t b, int64_t i, int64_t h) {  // empty rows: exactly +0
    if (ref.lse[size_t(lse_offset(sc.shape, b, h, i))] != -kInf) return;
    for (int64_t c = 0; c < sc.shape.Dv; ++c) {
      const double x = out.get(out_row_offset(sc.shape, b, i, h) + c);
      ASSERT_TRUE(x == 0 && !std::signbit(x)) << what << " row " << b << "," << i << "," << h;
    }
  });

  // Another order rounds differently, within a few units of f32 per part; the same order is
  // bitwise the same for any thread count.
  std::vector<size_t> shuffled = sp.in_order();
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  const std::vector<double> other = sp.merged(sc.dtype, shuffled).first.values();
  const double tol =
      (2 * unit_roundoff(sc.dtype) + 8 * double(cuts.size()) * 0x1p-24) * max_abs(out);
  const std::vector<double> got = out.values();
  for (size_t e = 0; e < got.size(); ++e)
    ASSERT_LE(std::fabs(other[e] - got[e]), tol) << what << " element " << e << " in another order";
  for (int threads : {1, 2, 3, 7})
    EXPECT_EQ(bitwise_difference(sp.merged(sc.dtype, sp.in_order(), threads).first, out), "")
        << what << " threads " << threads;

  // f32 partials written once into a narrower output: the f32 result, rounded.
  if (sc.dtype == DType::f32)
    for (DType narrow : {DType::bf16, DType::f16})
      EXPECT_EQ(accuracy_failure(sp.merged(narrow, sp.in_order()).first.values(), ref.out,
                                 sp.whole.out_values(), narrow),
                "")
          << what << " into " << memattn::dtype_name(narrow);
}

}  // namespace

TEST(Merge, random_key_splits_match_the_unsplit_result) {
  for (DType dt : {DType::f32, DType::bf16, DType::f16, DType::f64})
    for (uint64_t seed = 1; seed <= 6; ++seed) {
      SplitCase sc{dt, Shape{2, 9, 23, 4, 2, 16, 12}};
      sc.causal = seed % 2 == 0;
      sc.align = seed % 3 == 0 ? memattn::Align::bottom_right : memattn::Align::top_left;
      sc.random_mask = seed % 3 == 1;
      sc.window_left = seed == 5 ? 4 : -1;
      check_split(sc, seed * 101 + uint64_t(dt));
    }
}

TEST(Merge, empty_and_single_key_parts) {
  // Parts: empty, one key, empty, one key, the rest; and every key alone.
  for (DType dt : {DType::f32, DType::bf16}) {
    check_split({dt, Shape{1, 7, 12, 2, 2, 8, 8}, {0, 0, 1, 1, 2, 12, 12}, true}, 7);
    std::vector<int64_t> each(13);
    for (int64_t j = 0; j <= 12; ++j) each[size_t(j)] = j;
    check_split({dt, Shape{1, 7, 12, 2, 1, 8, 8}, each, true, memattn::Align::bottom_right}, 8);
  }
  // seq_q > seq_k bottom-right: the first rows see no key in any part.
  check_split(
      {DType::f32, Shape{1, 9, 4, 1, 1, 8, 8}, {0, 2, 4}, true, memattn::Align::bottom_right}, 9);
}
