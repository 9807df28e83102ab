// Layouts of TESTPLAN sections B and C: GQA/MQA against repeated K/V (31), every operand in
// non-contiguous layouts and packed qkv/kv buffers (33), every operand flush against PROT_NONE
// guard pages (36).
#include <gtest/gtest.h>

#include <array>
#include <limits>
#include <numeric>

#include "support.hpp"

using namespace mt;
using memattn::Algorithm;
using memattn::Align;

namespace {

const DType kDtypes[] = {DType::f32, DType::bf16, DType::f16, DType::f64};
const double kNaN = std::numeric_limits<double>::quiet_NaN();

// A strided placement of a 3-D or 4-D operand inside a larger buffer: logical dims stored in
// `order` (outermost first), each dim padded, the last dim read with `step`, `flip` read backwards.
struct Layout {
  const char* name;
  std::array<int, 4> order{0, 1, 2, 3};
  std::array<int64_t, 4> pad_before{}, pad_after{};
  int64_t step = 1;
  int flip = -1;
};

// src's values at `layout` in a NaN-filled (u8: 1-filled) buffer.
Embedded place(const Buf& src, const Layout& layout) {
  const int n = int(src.shape.size());
  std::array<int64_t, 4> ext{}, stride{};
  for (int d = 0; d < n; ++d)
    ext[d] =
        src.shape[size_t(d)] * (d == n - 1 ? layout.step : 1) + layout.pad_before[d] + layout.pad_after[d];
  int64_t total = 1;
  for (int k = n - 1; k >= 0; --k) {
    const int d = layout.order[size_t(k)];
    stride[d] = total;
    total *= std::max<int64_t>(ext[d], 1);
  }
  Embedded e{Buf(src.dtype, {total}), Tensor{}};
  e.storage.fill(src.dtype == DType::u8 ? 1.0 : kNaN);
  e.view = e.storage.view();
  e.view.ndim = n;
  int64_t offset = 0;
  for (int d = 0; d < n; ++d) {
    e.view.shape[d] = src.shape[size_t(d)];
    e.view.strides[d] = stride[d] * (d == n - 1 ? layout.step : 1);
    offset += layout.pad_before[d] * stride[d];
  }
  if (layout.flip >= 0) {
    offset += (e.view.shape[layout.flip] - 1) * e.view.strides[layout.flip];
    e.view.strides[layout.flip] = -e.view.strides[layout.flip];
  }
  e.view.data = e.storage.bytes.data() + offset * int64_t(memattn::dtype_size(src.dtype));
  copy_to_view(src, e.view);
  return e;
}

// The layouts of case 33 for an operand of `ndim` dims whose dim 2 holds `heads` (0: no heads).
std::vector<Layout> layouts_for(int ndim, int64_t heads) {
  std::vector<Layout> l;
  if (ndim == 4) {
    l.push_back({"swap dims 1 and 2 (BHSD)", {0, 2, 1, 3}});
    if (heads)
      l.push_back({"slot 1 of a packed qkv buffer", {0, 1, 2, 3}, {0, 0, heads, 0}, {0, 0, heads, 0}});
    l.push_back({"head-dim slice of a wider buffer", {0, 1, 2, 3}, {0, 0, 0, 2}, {0, 0, 0, 3}});
    l.push_back({"last-dim stride 2", {0, 1, 2, 3}, {}, {}, 2});
    l.push_back({"dim 1 reversed (negative stride)", {0, 1, 2, 3}, {}, {}, 1, 1});
    l.push_back({"every dim padded", {0, 1, 2, 3}, {1, 1, 1, 1}, {1, 2, 1, 2}});
  } else {
    l.push_back({"[B, Sq, H] storage", {0, 2, 1}});
    l.push_back({"last-dim stride 2", {0, 1, 2}, {}, {}, 2});
    l.push_back({"dim 2 reversed (negative stride)", {0, 1, 2}, {}, {}, 1, 2});
    l.push_back({"every dim padded", {0, 1, 2}, {1, 1, 1}, {2, 1, 2}});
  }
  return l;
}

}  // namespace

TEST(Layout, num_gqa_ratios) {
  // Hq / Hkv = 1, 2, 3, 7 and Hq (MQA), odd Hq = 9: bitwise equal to MHA on repeated K/V.
  for (const auto& [hq, hkv] :
       {std::pair{9, 9}, std::pair{14, 7}, std::pair{9, 3}, std::pair{14, 2}, std::pair{9, 1}})
    for (DType dt : kDtypes) {
      const Shape s{2, 11, 19, hq, hkv, 12, 10};
      Case gqa(s, dt, 301), mha(Shape{2, 11, 19, hq, hq, 12, 10}, dt, 301);
      const int64_t group = hq / hkv;
      for (const auto& [from, to, dim] : {std::tuple{&gqa.k, &mha.k, s.D}, std::tuple{&gqa.v, &mha.v, s.Dv}})
        for (int64_t bj = 0; bj < s.B * s.Sk; ++bj)
          for (int64_t h = 0; h < hq; ++h)
            for (int64_t x = 0; x < dim; ++x)
              to->set((bj * hq + h) * dim + x, from->get((bj * hkv + h / group) * dim + x));
      mha.q = gqa.q;
      const std::vector<double> bias = randn_values(size_t(hq * s.Sq * s.Sk), 302);
      for (Case* c : {&gqa, &mha}) {
        c->set_bias({1, hq, s.Sq, s.Sk}, dt, bias);
        c->options.query_chunk = 4;
        c->options.key_chunk = 8;
      }
      for (Algorithm alg : algorithms_for(dt)) {
        gqa.options.algorithm = mha.options.algorithm = alg;
        gqa.run();
        mha.run();
        EXPECT_EQ(bitwise_difference(gqa.out, mha.out), "") << describe(gqa);
        EXPECT_EQ(bitwise_difference(gqa.lse, mha.lse), "") << describe(gqa);
      }
      SCOPED_TRACE(describe(gqa));
      expect_accurate_all(gqa);
    }
}

TEST(Layout, lay_noncontiguous_all_operands) {
  const Shape s{2, 11, 19, 4, 2, 12, 10};
  for (DType dt : kDtypes) {
    Case c(s, dt, 311);
    c.options.query_chunk = 4;
    c.options.key_chunk = 8;
    c.set_mask({s.B, 1, s.Sq, s.Sk}, random_mask(size_t(s.B * s.Sq * s.Sk), 312, 0.8));
    c.set_bias({s.B, s.Hq, s.Sq, s.Sk}, dt, randn_values(size_t(s.B * s.Hq * s.Sq * s.Sk), 313));
    struct Operand {
      const char* name;
      Buf* buf;
      int64_t heads;
    };
    const Operand operands[] = {{"q", &c.q, s.Hq},     {"k", &c.k, s.Hkv}, {"v", &c.v, s.Hkv},
                                {"out", &c.out, s.Hq}, {"lse", &c.lse, 0}, {"mask", &*c.mask, 0},
                                {"bias", &*c.bias, 0}};
    for (Algorithm alg : algorithms_for(dt)) {
      c.options.algorithm = alg;
      c.run();
      const Buf want_out = c.out, want_lse = c.lse;
      for (size_t which = 0; which < std::size(operands); ++which)
        for (const Layout& layout :
             layouts_for(int(operands[which].buf->shape.size()), operands[which].heads)) {
          const Operand& op = operands[which];
          SCOPED_TRACE(std::string(op.name) + " in layout " + layout.name + ": " + describe(c));
          Embedded placed = place(*op.buf, layout);
          Tensor q = c.q.view(), k = c.k.view(), v = c.v.view(), out = c.out.view(), lse = c.lse.view();
          memattn::Options o = c.options;
          Tensor mask = c.mask_view, bias = c.bias_view;
          o.mask = &mask;
          o.bias = &bias;
          Tensor* slot[] = {&q, &k, &v, &out, &lse, &mask, &bias};
          *slot[which] = placed.view;
          c.out.fill(kNaN);
          c.lse.fill(kNaN);
          memattn::forward(q, k, v, out, &lse, o);
          Buf got_out = c.out, got_lse = c.lse;
          if (op.buf == &c.out) copy_from_view(placed.view, got_out);
          if (op.buf == &c.lse) copy_from_view(placed.view, got_lse);
          EXPECT_EQ(bitwise_difference(got_out, want_out), "");
          EXPECT_EQ(bitwise_difference(got_lse, want_lse), "");
        }
    }
    SCOPED_TRACE(describe(c));
    expect_accurate_all(c);
  }
}

TEST(Layout, lay_noncontiguous_packed_qkv) {
  // q, k and v as the three slots of one [B, S, 3, H, D] buffer, and k, v as the two slots of a
  // [B, S, 2, H, D] buffer: interleaved views that share no element are accepted and give the bits
  // of the contiguous run.
  const Shape s{2, 13, 13, 3, 3, 8, 8};
  for (DType dt : kDtypes) {
    Case c(s, dt, 331);
    c.options.query_chunk = 4;
    c.options.key_chunk = 8;
    c.options.causal = true;
    for (int64_t slots : {3, 2}) {
      Buf packed(dt, {s.B, s.Sq, slots, s.Hq, s.D});
      packed.fill(kNaN);
      const int64_t es = int64_t(memattn::dtype_size(dt));
      const auto slot = [&](int64_t index) {
        return Tensor::strided(static_cast<char*>(packed.data()) + index * s.Hq * s.D * es, dt,
                               {s.B, s.Sq, s.Hq, s.D},
                               {s.Sq * slots * s.Hq * s.D, slots * s.Hq * s.D, s.D, 1});
      };
      const Tensor q = slots == 3 ? slot(0) : c.q.view(), k = slot(slots - 2), v = slot(slots - 1);
      if (slots == 3) copy_to_view(c.q, q);
      copy_to_view(c.k, k);
      copy_to_view(c.v, v);
      for (Algorithm alg : algorithms_for(dt)) {
        c.options.algorithm = alg;
        c.run();
        const Buf want = c.out;
        c.out.fill(kNaN);
        Tensor out = c.out.view();
        memattn::forward(q, k, v, out, nullptr, c.options);
        EXPECT_EQ(bitwise_difference(c.out, want), "") << slots << " slots: " << describe(c);
      }
    }
  }
}

TEST(Layout, rob_guard_pages) {
  // SIMD tails: odd D and Dv, odd S, chunk remainders; every operand flush against PROT_NONE.
  struct Problem {
    Shape s;
    int64_t query_chunk, key_chunk;
    bool causal, mask, bias;
  };
  const Problem problems[] = {{{1, 13, 29, 2, 1, 7, 9}, 4, 8, false, true, true},
                              {{2, 5, 67, 3, 3, 33, 17}, 0, 0, true, false, false},
                              {{1, 1, 1, 1, 1, 1, 1}, 0, 0, false, false, true},
                              {{1, 17, 17, 2, 2, 3, 5}, 16, 16, true, true, false},
                              {{1, 9, 70, 1, 1, 129, 31}, 8, 64, false, false, true}};
  for (const Problem& p : problems)
    for (DType dt : kDtypes)
      for (Guard where : {Guard::before, Guard::after}) {
        const Shape& s = p.s;
        Case c(s, dt, 321);
        c.options.query_chunk = p.query_chunk;
        c.options.key_chunk = p.key_chunk;
        c.options.causal = p.causal;
        c.options.align = Align::bottom_right;
        if (p.mask) c.set_mask({s.B, 1, s.Sq, s.Sk}, random_mask(size_t(s.B * s.Sq * s.Sk), 322, 0.8));
        if (p.bias) c.set_bias({1, s.Hq, s.Sq, s.Sk}, dt, randn_values(size_t(s.Hq * s.Sq * s.Sk), 323));
        SCOPED_TRACE(describe(c) + (where == Guard::before ? " guard before" : " guard after"));
        expect_accurate_all(c, 2.0, 0.0, where);
      }
}
