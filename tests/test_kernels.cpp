// The SIMD kernels' documented bounds, per target: the softmax step's exp within 2 ulp of the
// exact value on [-87, 0], exactly 0 for -inf, NaN kept; and the GEMM tile against a plain loop.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "cpu/kernels.hpp"

using namespace memattn::detail;

TEST(Kernels, SoftmaxExpWithinTwoUlp) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    const size_t ld = kPadFloats, keys = 4096;
    std::vector<float> st(keys * ld);
    for (size_t t = 0; t < keys; ++t)
      for (size_t q = 0; q < ld; ++q) st[t * ld + q] = -87.0f * float(t * ld + q) / float(keys * ld);
    st[0] = 0.0f;  // the running max is 0 in every lane
    for (size_t q = 0; q < ld; ++q) st[q] = 0.0f;
    const std::vector<float> x = st;
    std::vector<float> mx(ld, -INFINITY), sum(ld, 0.0f), alpha(ld);
    k->softmax_step(st.data(), keys, ld, 1.0f, mx.data(), sum.data(), alpha.data());
    double worst = 0;
    for (size_t i = 0; i < st.size(); ++i) {
      const double exact = std::exp(double(x[i]));
      const double ulp = std::nextafter(float(exact), INFINITY) - float(exact);
      worst = std::max(worst, std::fabs(st[i] - exact) / ulp);
    }
    EXPECT_LE(worst, 2.0);
  }
}

TEST(Kernels, SoftmaxMaskedAndNaN) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    const size_t ld = kPadFloats;
    std::vector<float> st(2 * ld, -INFINITY);
    st[0] = 1.5f;                                          // lane 0: one visible score
    st[1] = std::numeric_limits<float>::quiet_NaN();      // lane 1: NaN, nothing else visible
    std::vector<float> mx(ld, -INFINITY), sum(ld, 0.0f), alpha(ld);
    k->softmax_step(st.data(), 2, ld, 1.0f, mx.data(), sum.data(), alpha.data());
    EXPECT_EQ(st[0], 1.0f);
    EXPECT_EQ(st[ld], 0.0f);
    EXPECT_TRUE(std::isnan(st[1]));
    EXPECT_TRUE(std::isnan(sum[1]));
    EXPECT_EQ(sum[2], 0.0f);     // fully masked lane stays empty
    EXPECT_EQ(mx[2], -INFINITY);
    EXPECT_EQ(alpha[2], 1.0f);
  }
}

TEST(Kernels, GemmTileEdgesMatchPlainLoop) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    for (size_t m : {1, 5, 6, 7, 13})
      for (size_t n : {16, 48, 64, 80})
        for (size_t kk : {1, 3, 17}) {
          std::vector<float> a(m * kk), b(kk * n), c(m * n, 1.0f), ref(m * n, 1.0f);
          for (size_t i = 0; i < a.size(); ++i) a[i] = float(int(i % 5) - 2);
          for (size_t i = 0; i < b.size(); ++i) b[i] = float(int(i % 7) - 3);
          for (size_t i = 0; i < m; ++i)
            for (size_t j = 0; j < n; ++j)
              for (size_t p = 0; p < kk; ++p) ref[i * n + j] += a[i * kk + p] * b[p * n + j];
          k->gemm({a.data(), kk, 1, b.data(), n, c.data(), n, m, n, kk, true});
          EXPECT_EQ(c, ref) << "m " << m << " n " << n << " k " << kk;  // small integers: exact
        }
  }
}

// gemm_bf16 reads one operand as bf16 and widens it as it goes: the same bits as gemm on the
// widened copy, with either operand, strided A (the transposed use) included.
TEST(Kernels, GemmBf16OperandMatchesWidenedCopy) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    for (size_t m : {1, 4, 7})
      for (size_t n : {16, 48})
        for (size_t kk : {1, 5, 33}) {
          std::vector<uint16_t> a16(m * kk), b16(kk * n);
          std::vector<float> a(m * kk), b(kk * n), af(m * kk), bf(kk * n);
          const auto widen = [](uint16_t bits) {
            const uint32_t u = uint32_t(bits) << 16;
            float f;
            std::memcpy(&f, &u, 4);
            return f;
          };
          for (size_t i = 0; i < a.size(); ++i) a16[i] = uint16_t(0x3f00u + (i * 37) % 211), af[i] = widen(a16[i]);
          for (size_t i = 0; i < b.size(); ++i) b16[i] = uint16_t(0xbe80u + (i * 53) % 197), bf[i] = widen(b16[i]);
          for (size_t i = 0; i < a.size(); ++i) a[i] = std::sin(float(i));
          for (size_t i = 0; i < b.size(); ++i) b[i] = std::cos(float(i));
          for (bool transposed_a : {false, true}) {
            // A (m x kk) read at a[i * a_row + p * a_col]: rows, or columns of a kk x m matrix.
            const size_t a_row = transposed_a ? 1 : kk, a_col = transposed_a ? m : 1;
            std::vector<float> want(m * n, 0.5f), got(m * n, 0.5f);
            k->gemm({af.data(), a_row, a_col, b.data(), n, want.data(), n, m, n, kk, true});
            k->gemm_bf16({a16.data(), a_row, a_col, b.data(), n, got.data(), n, m, n, kk, true}, Bf16Operand::a);
            EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4)) << "A bf16, m " << m << " n " << n << " k " << kk;
            k->gemm({a.data(), a_row, a_col, bf.data(), n, want.data(), n, m, n, kk, false});
            k->gemm_bf16({a.data(), a_row, a_col, b16.data(), n, got.data(), n, m, n, kk, false}, Bf16Operand::b);
            EXPECT_EQ(0, std::memcmp(want.data(), got.data(), want.size() * 4)) << "B bf16, m " << m << " n " << n << " k " << kk;
          }
        }
  }
}

// Kernels::dot_scores: every score the same bits whatever tile it is computed in (alone, or among
// other keys and rows: the backward recomputes the forward's scores in other tiles), within the
// dot product's error bound of the exact value, bf16 keys the bits of their widened copies, and
// no lane past `rows` written.
TEST(Kernels, DotScoresSameBitsInAnyTile) {
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    for (size_t d : {16, 128, 256}) {
      const size_t keys = 11, rows = 7, k_row = d + 24, q_row = d + 8, ldst = 16;
      std::vector<float> key(keys * k_row, NAN), q(rows * q_row, NAN);
      std::vector<uint16_t> key16(keys * k_row);
      std::vector<float> widened(keys * k_row, NAN);
      for (size_t t = 0; t < keys; ++t)
        for (size_t c = 0; c < d; ++c) {
          key[t * k_row + c] = std::sin(float(t * 131 + c)) * 3.0f;
          key16[t * k_row + c] = uint16_t(0x3e00u + (t * 977 + c * 31) % 0x0200u) | ((c % 3 == 0) ? 0x8000u : 0u);
          const uint32_t u = uint32_t(key16[t * k_row + c]) << 16;
          std::memcpy(&widened[t * k_row + c], &u, 4);
        }
      for (size_t r = 0; r < rows; ++r)
        for (size_t c = 0; c < d; ++c) q[r * q_row + c] = std::cos(float(r * 71 + c)) * 2.0f;
      std::vector<float> all(keys * ldst, -7.0f);
      k->dot_scores({key.data(), k_row, false, keys, q.data(), q_row, rows, d, all.data(), ldst});
      for (size_t t = 0; t < keys; ++t)
        for (size_t r = 0; r < ldst; ++r) {
          if (r >= rows) {
            EXPECT_EQ(all[t * ldst + r], -7.0f) << "lane " << r << " past the rows written";
            continue;
          }
          float one = 0.0f;
          k->dot_scores({key.data() + t * k_row, k_row, false, 1, q.data() + r * q_row, q_row, 1, d, &one, 1});
          EXPECT_EQ(0, std::memcmp(&one, &all[t * ldst + r], 4)) << "key " << t << " row " << r << " d " << d;
          double exact = 0, magnitude = 0;
          for (size_t c = 0; c < d; ++c) {
            exact += double(key[t * k_row + c]) * double(q[r * q_row + c]);
            magnitude += std::fabs(double(key[t * k_row + c]) * double(q[r * q_row + c]));
          }
          EXPECT_LE(std::fabs(double(one) - exact), double(d) * 0x1p-24 * magnitude) << "key " << t << " row " << r;
        }
      std::vector<float> from16(keys * ldst), from32(keys * ldst);
      k->dot_scores({key16.data(), k_row, true, keys, q.data(), q_row, rows, d, from16.data(), ldst});
      k->dot_scores({widened.data(), k_row, false, keys, q.data(), q_row, rows, d, from32.data(), ldst});
      EXPECT_EQ(0, std::memcmp(from16.data(), from32.data(), from16.size() * 4)) << "bf16 keys, d " << d;
    }
  }
}

// Kernels::walk_scores and walk_values: every head's scores the bits of dot_scores on that head
// alone, and its P V the bits of gemm (gemm_bf16 for a bf16 cache) adding the chunk at once, for
// row groups of 1 to 8 rows, key counts off the walk's steps, and the rows asked for ahead
// anywhere from inside the chunk to past it; no lane past `rows` written.
TEST(Kernels, WalkMatchesDotScoresAndGemm) {
  const auto widen = [](uint16_t bits) {
    const uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  };
  for (const Kernels* k : available_kernels()) {
    SCOPED_TRACE(k->name);
    for (bool bf16 : {false, true})
      for (size_t heads : {1, 3})
        for (size_t rows : {1, 3, 4, 5, 8})
          for (size_t ahead : {1, 6, 40}) {
            const size_t keys = 13, d = 32, dv = 48, ldst = 16, ldacc = 48, k_row = heads * d, v_row = heads * dv;
            std::vector<float> kf(keys * k_row), vf(keys * v_row);
            std::vector<uint16_t> k16(kf.size()), v16(vf.size());
            for (size_t i = 0; i < kf.size(); ++i) k16[i] = uint16_t(0x3e00u + (i * 977) % 0x0300u), kf[i] = bf16 ? widen(k16[i]) : std::sin(float(i));
            for (size_t i = 0; i < vf.size(); ++i) v16[i] = uint16_t(0xbe00u + (i * 131) % 0x0300u), vf[i] = bf16 ? widen(v16[i]) : std::cos(float(i));
            std::vector<float> q(heads * rows * d), st(heads * keys * ldst, -7.0f), want_st(st), acc(heads * rows * ldacc);
            for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(float(i) * 0.37f) * 2.0f;
            for (size_t i = 0; i < acc.size(); ++i) acc[i] = std::cos(float(i) * 0.11f);
            std::vector<float> want_acc(acc);
            std::vector<WalkHead> wh(heads);
            for (size_t h = 0; h < heads; ++h) {
              const void* kh = bf16 ? static_cast<const void*>(k16.data() + h * d) : kf.data() + h * d;
              const void* vh = bf16 ? static_cast<const void*>(v16.data() + h * dv) : vf.data() + h * dv;
              wh[h] = {kh, vh, q.data() + h * rows * d, st.data() + h * keys * ldst, acc.data() + h * rows * ldacc, kh, vh};
              k->dot_scores({kh, k_row, bf16, keys, q.data() + h * rows * d, d, rows, d, want_st.data() + h * keys * ldst, ldst});
            }
            const WalkArgs a{wh.data(), heads, k_row, v_row, bf16, keys, rows, d, dv, ldst, ldacc, ahead, keys, keys};
            k->walk_scores(a);
            EXPECT_EQ(0, std::memcmp(st.data(), want_st.data(), st.size() * 4))
                << "scores: bf16 " << bf16 << " heads " << heads << " rows " << rows << " ahead " << ahead;
            k->walk_values(a);
            for (size_t h = 0; h < heads; ++h) {
              const GemmArgs g{want_st.data() + h * keys * ldst, 1, ldst,
                               bf16 ? static_cast<const void*>(v16.data() + h * dv) : vf.data() + h * dv, v_row,
                               want_acc.data() + h * rows * ldacc, ldacc, rows, dv, keys, true};
              if (bf16) k->gemm_bf16(g, Bf16Operand::b);
              else k->gemm(g);
            }
            EXPECT_EQ(0, std::memcmp(acc.data(), want_acc.data(), acc.size() * 4))
                << "P V: bf16 " << bf16 << " heads " << heads << " rows " << rows << " ahead " << ahead;
          }
  }
}
