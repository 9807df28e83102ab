// Test support for the backward pass: the reference gradients (fp64, 80-bit and same-precision),
// finite differences, and the forward-then-backward case with its accuracy check.
#include "support_backward.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace mt {
namespace {

// Offset of (b, h, i, j) in a row-major [B|1, H|1, Sq|1, Sk|1] array.
int64_t bias_offset(const std::vector<int64_t>& sh, int64_t b, int64_t h, int64_t i, int64_t j) {
  const int64_t idx[4] = {b, h, i, j};
  int64_t off = 0;
  for (int d = 0; d < 4; ++d) off = off * sh[size_t(d)] + (sh[size_t(d)] == 1 ? 0 : idx[d]);
  return off;
}

int64_t numel(const std::vector<int64_t>& sh) {
  int64_t n = 1;
  for (int64_t d : sh) n *= d;
  return n;
}

// The naive backward in `Real`: `rs` rounds scores, `rp` the intermediates P, dP and dS, `acc`
// every accumulation step, `ro` the gradients and `rb` dbias.
template <typename Real, typename RS, typename RP, typename RA, typename RO, typename RB>
RefGrads backward_pass(const RefProblem& p, const std::vector<double>& dout, RS rs, RP rp, RA acc,
                       RO ro, RB rb) {
  const Shape& s = p.s;
  const int64_t group = s.Hkv ? s.Hq / s.Hkv : 1;
  std::vector<Real> dq(size_t(s.B * s.Sq * s.Hq * s.D)), dk(size_t(s.B * s.Sk * s.Hkv * s.D)),
      dv(size_t(s.B * s.Sk * s.Hkv * s.Dv)), db(p.bias.empty() ? 0 : size_t(numel(p.bias_shape))),
      dsinks(p.sinks.size());
  // capd: d(capped score)/d(scaled score) = 1 - tanh^2, 1 without a softcap.
  std::vector<Real> sc(size_t(s.Sk)), pr(size_t(s.Sk)), dp(size_t(s.Sk)), capd(size_t(s.Sk), Real(1));
  std::vector<char> vis(size_t(s.Sk));
  const auto Q = [&](int64_t b, int64_t i, int64_t h, int64_t c) { return Real(p.q[size_t(((b * s.Sq + i) * s.Hq + h) * s.D + c)]); };
  const auto K = [&](int64_t b, int64_t j, int64_t g, int64_t c) { return Real(p.k[size_t(((b * s.Sk + j) * s.Hkv + g) * s.D + c)]); };
  const auto V = [&](int64_t b, int64_t j, int64_t g, int64_t c) { return Real(p.v[size_t(((b * s.Sk + j) * s.Hkv + g) * s.Dv + c)]); };
  const auto dO = [&](int64_t b, int64_t i, int64_t h, int64_t c) { return Real(dout[size_t(((b * s.Sq + i) * s.Hq + h) * s.Dv + c)]); };
  const Real scale = Real(p.scale);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t i = 0; i < s.Sq; ++i) {
        const int64_t g = h / group;
        Real m = -std::numeric_limits<Real>::infinity();
        bool any = false, nan = false;
        for (int64_t j = 0; j < s.Sk; ++j) {
          vis[size_t(j)] = ref_visible(p, b, h, i, j);
          if (!vis[size_t(j)]) continue;
          any = true;
          Real d = 0;
          for (int64_t c = 0; c < s.D; ++c) d = acc(d + Q(b, i, h, c) * K(b, j, g, c));
          const Real scaled = acc(scale * d);
          if (p.softcap > 0) {
            const Real t = std::tanh(scaled / Real(p.softcap));
            capd[size_t(j)] = rp(acc(Real(1) - t * t));
          }
          Real x = modified_score(p, b, h, i, j, scaled, acc);
          if (!p.bias.empty()) x = acc(x + Real(p.bias[size_t(bias_offset(p.bias_shape, b, h, i, j))]));
          sc[size_t(j)] = rs(x);
          nan |= std::isnan(sc[size_t(j)]);
          if (sc[size_t(j)] > m) m = sc[size_t(j)];
        }
        if (!any) continue;
        // The sink joins the denominator (shifted by the larger of it and the max).
        const bool sink = !p.sinks.empty();
        const Real sink_logit = sink ? Real(p.sinks[size_t(h)]) : Real(0);
        Real shift = std::isinf(m) && m < 0 ? Real(0) : m;
        if (sink && (sink_logit > m || (std::isinf(m) && m < 0))) shift = sink_logit;
        Real l = 0;
        for (int64_t j = 0; j < s.Sk; ++j)
          if (vis[size_t(j)]) l = acc(l + acc(std::exp(sc[size_t(j)] - shift)));
        if (l == 0 && !nan) continue;  // every visible score -inf: fully masked, no gradient
        if (sink) l = acc(l + acc(std::exp(sink_logit - shift)));
        Real rowsum = 0;
        for (int64_t j = 0; j < s.Sk; ++j) {
          if (!vis[size_t(j)]) continue;
          pr[size_t(j)] = rp(acc(acc(std::exp(sc[size_t(j)] - shift)) / l));
          Real d = 0;
          for (int64_t c = 0; c < s.Dv; ++c) d = acc(d + dO(b, i, h, c) * V(b, j, g, c));
          dp[size_t(j)] = rp(d);
          rowsum = acc(rowsum + pr[size_t(j)] * dp[size_t(j)]);
        }
        // dL/dsink = -P_sink * D, D = sum_j P dP (= dO . O).
        if (sink) dsinks[size_t(h)] = acc(dsinks[size_t(h)] - acc(std::exp(sink_logit - shift) / l) * rowsum);
        for (int64_t j = 0; j < s.Sk; ++j) {
          if (!vis[size_t(j)]) continue;
          const Real ds = rp(acc(pr[size_t(j)] * acc(dp[size_t(j)] - rowsum)));
          const Real ds_raw = rp(acc(ds * capd[size_t(j)]));  // back through the softcap
          for (int64_t c = 0; c < s.D; ++c) {
            Real& q_grad = dq[size_t(((b * s.Sq + i) * s.Hq + h) * s.D + c)];
            q_grad = acc(q_grad + acc(scale * ds_raw) * K(b, j, g, c));
            Real& k_grad = dk[size_t(((b * s.Sk + j) * s.Hkv + g) * s.D + c)];
            k_grad = acc(k_grad + acc(scale * ds_raw) * Q(b, i, h, c));
          }
          for (int64_t c = 0; c < s.Dv; ++c) {
            Real& v_grad = dv[size_t(((b * s.Sk + j) * s.Hkv + g) * s.Dv + c)];
            v_grad = acc(v_grad + pr[size_t(j)] * dO(b, i, h, c));
          }
          if (!db.empty()) {
            Real& bias_grad = db[size_t(bias_offset(p.bias_shape, b, h, i, j))];
            bias_grad = acc(bias_grad + ds);
          }
        }
      }
  RefGrads r;
  for (auto [from, to] : {std::pair{&dq, &r.dq}, std::pair{&dk, &r.dk}, std::pair{&dv, &r.dv}})
    for (Real x : *from) to->push_back(double(ro(x)));
  for (Real x : db) r.dbias.push_back(double(rb(x)));
  for (Real x : dsinks) r.dsinks.push_back(double(x));
  return r;
}

double loss(const RefProblem& p, const std::vector<double>& dout) {
  const RefResult r = reference64(p);
  double l = 0;
  for (size_t i = 0; i < dout.size(); ++i) l += r.out[i] * dout[i];
  return l;
}

}  // namespace

RefGrads reference_backward64(const RefProblem& p, const std::vector<double>& dout) {
  const auto id = [](double x) { return x; };
  return backward_pass<double>(p, dout, id, id, id, id, id);
}

RefGrads reference_backward_extended(const RefProblem& p, const std::vector<double>& dout) {
  const auto id = [](long double x) { return x; };
  return backward_pass<long double>(p, dout, id, id, id, id, id);
}

RefGrads baseline_backward(const RefProblem& p, const std::vector<double>& dout, DType dt,
                           DType bias_dt) {
  const auto id = [](double x) { return x; };
  const auto f32 = [](double x) { return double(float(x)); };
  const auto bias_round = [bias_dt](double x) { return round_to(bias_dt, x); };
  if (dt == DType::f64) return reference_backward64(p, dout);
  if (dt == DType::f32) return backward_pass<double>(p, dout, id, id, f32, f32, bias_round);
  const auto lowp = [dt](double x) { return round_to(dt, x); };
  return backward_pass<double>(p, dout, lowp, lowp, f32, lowp, bias_round);
}

RefGrads finite_difference_grads(const RefProblem& p, const std::vector<double>& dout, double h) {
  RefGrads g;
  RefProblem x = p;
  const auto diff = [&](std::vector<double>& values, std::vector<double>& grad) {
    for (size_t e = 0; e < values.size(); ++e) {
      const double keep = values[e];
      values[e] = keep + h;
      const double up = loss(x, dout);
      values[e] = keep - h;
      const double down = loss(x, dout);
      values[e] = keep;
      grad.push_back((up - down) / (2 * h));
    }
  };
  diff(x.q, g.dq);
  diff(x.k, g.dk);
  diff(x.v, g.dv);
  diff(x.bias, g.dbias);
  diff(x.sinks, g.dsinks);
  return g;
}

BackwardCase::BackwardCase(Shape sh, DType dt, uint64_t seed, double sigma)
    : Case(sh, dt, seed, sigma), dout(dt, {sh.B, sh.Sq, sh.Hq, sh.Dv}), dq(dt, {sh.B, sh.Sq, sh.Hq, sh.D}),
      dk(dt, {sh.B, sh.Sk, sh.Hkv, sh.D}), dv(dt, {sh.B, sh.Sk, sh.Hkv, sh.Dv}) {
  fill_randn(dout, seed * 7 + 5, 1.0);
}

void BackwardCase::request_dbias() { dbias.emplace(bias->dtype, bias->shape); }

void BackwardCase::request_dsinks() { dsinks.emplace(DType::f32, sinks->shape); }

void BackwardCase::run_both() {
  run();
  run_backward();
}

void BackwardCase::run_backward(memattn::Workspace ws) {
  Tensor dbias_view, dsinks_view;
  if (dbias) dbias_view = dbias->view();
  if (dsinks) dsinks_view = dsinks->view();
  memattn::backward(q.view(), k.view(), v.view(), out.view(), dout.view(), lse.view(), dq.view(),
                    dk.view(), dv.view(), options, dbias ? &dbias_view : nullptr, ws,
                    dsinks ? &dsinks_view : nullptr);
}

RefGrads BackwardCase::grads() const {
  return {dq.values(), dk.values(), dv.values(), dbias ? dbias->values() : std::vector<double>{},
          dsinks ? dsinks->values() : std::vector<double>{}};
}

void expect_backward_accurate(BackwardCase& c, const GradCheck& check) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  for (Buf* g : {&c.dq, &c.dk, &c.dv}) g->fill(nan);
  if (c.dbias) c.dbias->fill(nan);
  if (c.dsinks) c.dsinks->fill(nan);
  c.run_both();
  const RefProblem p = c.problem();
  const std::vector<double> dout = c.dout.values();
  const RefGrads ref = c.dtype == DType::f64 ? reference_backward_extended(p, dout)
                                             : reference_backward64(p, dout);
  const DType bias_dt = c.bias ? c.bias->dtype : c.dtype;
  const RefGrads base = baseline_backward(p, dout, c.dtype, bias_dt);
  const RefGrads got = c.grads();
  const struct {
    const char* name;
    const std::vector<double>& got;
    const std::vector<double>& ref;
    const std::vector<double>& base;
    DType dtype;
  } checks[] = {{"dq", got.dq, ref.dq, base.dq, c.dtype},
                {"dk", got.dk, ref.dk, base.dk, c.dtype},
                {"dv", got.dv, ref.dv, base.dv, c.dtype}};
  for (const auto& x : checks)
    EXPECT_EQ(accuracy_failure(x.got, x.ref, x.base, x.dtype, check.k, check.abs_slack), "")
        << x.name << ": " << describe(c);
  if (c.dbias && check.dbias_bound) {
    for (size_t i = 0; i < got.dbias.size(); ++i)
      EXPECT_LE(std::fabs(got.dbias[i]), *check.dbias_bound) << "dbias[" << i << "]: " << describe(c);
  } else if (c.dbias) {
    EXPECT_EQ(accuracy_failure(got.dbias, ref.dbias, base.dbias, bias_dt, check.k, check.abs_slack), "")
        << "dbias: " << describe(c);
  }
  if (c.dsinks) {
    EXPECT_EQ(accuracy_failure(got.dsinks, ref.dsinks, base.dsinks, DType::f32, check.k, check.abs_slack), "")
        << "dsinks: " << describe(c);
  }
  if (check.expect_zeros) return;
  std::vector<double> all = got.dq;
  all.insert(all.end(), got.dk.begin(), got.dk.end());
  all.insert(all.end(), got.dv.begin(), got.dv.end());
  EXPECT_FALSE(mostly_zero(all, 0.7))
      << "mistrusted: over 70% of the gradients are exactly 0; fix the inputs of " << describe(c);
}

double key_broadcast_dbias_bound(const BackwardCase& c) {
  const RefProblem p = c.problem();
  const RefResult fwd = reference64(p);
  const Shape& s = p.s;
  const std::vector<double> dout = c.dout.values();
  const int64_t group = s.Hkv ? s.Hq / s.Hkv : 1;
  const double u = std::ldexp(1.0, -24);
  std::vector<double> sums(size_t(numel(p.bias_shape)), 0.0);
  for (int64_t b = 0; b < s.B; ++b)
    for (int64_t h = 0; h < s.Hq; ++h)
      for (int64_t i = 0; i < s.Sq; ++i) {
        const double lse = fwd.lse[size_t(lse_offset(s, b, h, i))];
        if (std::isinf(lse)) continue;
        double row = 0;
        for (int64_t c2 = 0; c2 < s.Dv; ++c2) {
          double vmax = 0;
          for (int64_t j = 0; j < s.Sk; ++j)
            vmax = std::max(vmax, std::fabs(p.v[size_t(((b * s.Sk + j) * s.Hkv + h / group) * s.Dv + c2)]));
          row += std::fabs(dout[size_t(out_row_offset(s, b, i, h) + c2)]) * vmax;
        }
        sums[size_t(bias_offset(p.bias_shape, b, h, i, 0))] += 4 * u * (2 + std::fabs(lse)) * row;
      }
  return *std::max_element(sums.begin(), sums.end());
}

void expect_same_bits_any_thread_count(BackwardCase& c, std::initializer_list<int> threads,
                                       const std::string& what) {
  c.options.num_threads = 1;
  c.run_both();
  const Buf want[] = {c.dq, c.dk, c.dv, *c.dbias};
  for (int t : threads) {
    c.options.num_threads = t;
    c.run_both();
    const Buf* got[] = {&c.dq, &c.dk, &c.dv, &*c.dbias};
    for (int i = 0; i < 4; ++i)
      EXPECT_EQ(bitwise_difference(*got[i], want[i]), "") << what << "threads " << t << " output " << i;
  }
}

}  // namespace mt

