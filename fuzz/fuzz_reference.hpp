// fp64 attention forward and backward on the stored values, with per-element error bounds derived from their magnitudes.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fuzz_input.hpp"

namespace fuzz {

using Index = std::array<int64_t, 4>;
constexpr bool kValueSumsBeyondF32 = false;  // see reference_row

// The index of a [B|1, H|1, Sq|1, Sk|1] operand that (b, h, i, j) reads.
inline Index broadcast_index(const Operand& op, int64_t b, int64_t h, int64_t i, int64_t j) {
  const auto& s = op.view.shape;
  return {s[0] == 1 ? 0 : b, s[1] == 1 ? 0 : h, s[2] == 1 ? 0 : i, s[3] == 1 ? 0 : j};
}

inline bool visible(const Problem& p, int64_t b, int64_t h, int64_t i, int64_t j) {
  const memattn::Options& o = p.options;
  const int64_t diag = o.align == memattn::Align::bottom_right ? i + p.Sk - p.Sq : i;
  if (o.causal && j > diag) return false;
  if (o.window_left >= 0 && diag - j > o.window_left) return false;
  if (o.window_right >= 0 && j - diag > o.window_right) return false;
  return !p.mask.present || p.mask.get(broadcast_index(p.mask, b, h, i, j)) != 0;
}

// What the library's f32 scores (f64 for f64 inputs) are computed from, as the docs state.
inline double resolved_scale(const Problem& p) {
  const double s = p.options.scale ? *p.options.scale : 1.0 / std::sqrt(double(p.D));
  return p.dtype == DType::f64 ? s : double(float(s));
}
inline double accumulation_roundoff(const Problem& p) { return p.dtype == DType::f64 ? 0x1p-53 : 0x1p-24; }
// Unit roundoff of products the kernels may take in the input dtype (P and dS rounded to bf16/f16).
inline double product_roundoff(const Problem& p) {
  return p.dtype == DType::bf16 || p.dtype == DType::f16 ? unit_roundoff(p.dtype) : 0.0;
}
// exp is flushed to 0 below -87 on the f32 paths: each dropped weight is at most e^-87.
inline double flushed_weight(const Problem& p) { return p.dtype == DType::f64 ? 0.0 : 1.7e-38; }
inline double absolute_floor(const Problem& p) {
  return p.dtype == DType::f64 ? 1e-300 : 0x1p-124 + (p.dtype == DType::f16 ? 0x1p-24 : 0.0);
}

// One query row (b, h, i): probabilities, score errors and the expected outputs with their bounds.
struct RowReference {
  bool checked = false;   // inputs finite and within f32 range: compare
  bool empty = true;      // no visible key, or every visible score -inf: out = +0, lse = -inf exactly
  bool no_visible = true; // nothing is read at all, so this holds even with NaN in q
  std::vector<double> p, score_error;  // per key; 0 where not visible
  double lse = -INFINITY, lse_tol = 0;
  std::vector<double> o, o_tol;
};

inline double abs_dot(const Operand& a, const Index& ia, const Operand& b, const Index& ib, int64_t n) {
  double s = 0;
  for (int64_t d = 0; d < n; ++d) s += std::fabs(a.get({ia[0], ia[1], ia[2], d}) * b.get({ib[0], ib[1], ib[2], d}));
  return s;
}

inline RowReference reference_row(const Problem& p, int64_t b, int64_t h, int64_t i) {
  RowReference r;
  const int64_t g = h / (p.Hq / p.Hkv);
  const double scale = resolved_scale(p), u = accumulation_roundoff(p);
  const bool f64 = p.dtype == DType::f64;
  r.p.assign(size_t(p.Sk), 0.0), r.score_error.assign(size_t(p.Sk), 0.0);
  r.o.assign(size_t(p.Dv), 0.0), r.o_tol.assign(size_t(p.Dv), 0.0);
  bool finite = true;
  double q_max = 0;
  for (int64_t d = 0; d < p.D; ++d) {
    finite &= std::isfinite(p.q.get({b, i, h, d}));
    q_max = std::max(q_max, std::fabs(p.q.get({b, i, h, d})));
  }
  std::vector<double> s(size_t(p.Sk), -INFINITY), conditioning(size_t(p.Sk), 0.0);
  double m = -INFINITY, v_max = 0;
  // The library keeps q * scale (flash) or q . k (naive) in f32 (f64 for f64 inputs), so scores
  // beyond that range are not compared (issue 10 names it: scale 1e20 with q ~ 1e20 overflows the
  // pre-scaled query; likewise scale 0 with q . k ~ 1e76 gives 0 * inf = NaN, not the mean of v).
  const double limit = f64 ? 1e300 : 1e37;
  bool in_range = q_max * std::fabs(scale) < limit;
  for (int64_t j = 0; j < p.Sk; ++j) {
    if (!visible(p, b, h, i, j)) continue;
    r.no_visible = false;
    double dot = 0;
    for (int64_t d = 0; d < p.D; ++d) dot += p.q.get({b, i, h, d}) * p.k.get({b, j, g, d});
    conditioning[size_t(j)] = std::fabs(scale) * abs_dot(p.q, {b, i, h}, p.k, {b, j, g}, p.D);
    const double bias = p.bias.present ? p.bias.get(broadcast_index(p.bias, b, h, i, j)) : 0.0;
    s[size_t(j)] = scale * dot + bias;
    for (int64_t d = 0; d < p.D; ++d) finite &= std::isfinite(p.k.get({b, j, g, d}));
    for (int64_t d = 0; d < p.Dv; ++d) {
      finite &= std::isfinite(p.v.get({b, j, g, d}));
      v_max = std::max(v_max, std::fabs(p.v.get({b, j, g, d})));
    }
    finite &= std::isfinite(bias) || bias == -INFINITY;
    const double unscaled = abs_dot(p.q, {b, i, h}, p.k, {b, j, g}, p.D);
    in_range &= std::max(conditioning[size_t(j)], unscaled) * double(p.D + 2) < limit && std::fabs(bias) < limit;
    if (s[size_t(j)] != -INFINITY) r.empty = false;  // NaN scores too
    m = std::max(m, s[size_t(j)]);
  }
  // Known limitation (fuzz/README.md, "value sums beyond f32"): every algorithm sums unnormalised
  // weights (up to 1 each) times v in f32, so out overflows once Sk max|v| passes FLT_MAX although
  // the exact result (a mean of v) is finite. Such rows are not compared until that is fixed.
  const bool value_sum_in_range = kValueSumsBeyondF32 || f64 || double(p.Sk) * v_max < 3.4e38;
  r.checked = finite && in_range && value_sum_in_range;
  if (r.empty || !r.checked) return r;
  double sum = 0;
  for (int64_t j = 0; j < p.Sk; ++j) sum += r.p[size_t(j)] = std::exp(s[size_t(j)] - m);
  double weighted_error = 0;  // sum_k p_k E_k
  for (int64_t j = 0; j < p.Sk; ++j) {
    r.p[size_t(j)] /= sum;
    if (r.p[size_t(j)] == 0) continue;
    // q.k rounds like a D-term sum of |q||k|; |s| and |m| bound the rounding of the bias addition and
    // of s - m in the exponent.
    // A score error e moves its weight by a factor up to e^(2e): expm1 keeps the bound honest where
    // e is not small (scores ~1e9 in f32 carry errors ~100; the softmax is then ill-conditioned).
    const double e = u * ((double(p.D) + 2) * conditioning[size_t(j)] + std::fabs(s[size_t(j)]) + std::fabs(m));
    r.score_error[size_t(j)] = 0.5 * std::expm1(2 * e);
    weighted_error += r.p[size_t(j)] * r.score_error[size_t(j)];
  }
  r.lse = m + std::log(sum);
  const double log_sk = 1 + std::log2(double(p.Sk));
  r.lse_tol = 2 * weighted_error + 16 * 0x1p-24 * (log_sk + std::fabs(r.lse)) + flushed_weight(p) * double(p.Sk);
  const double u_out = unit_roundoff(p.dtype), per_term = product_roundoff(p) + 16 * u * log_sk;
  for (int64_t d = 0; d < p.Dv; ++d) {
    double o = 0, abs_pv = 0, error_pv = 0;
    for (int64_t j = 0; j < p.Sk; ++j) {
      if (r.p[size_t(j)] == 0) continue;
      const double vj = p.v.get({b, j, g, d});
      o += r.p[size_t(j)] * vj;
      abs_pv += r.p[size_t(j)] * std::fabs(vj);
      error_pv += r.p[size_t(j)] * r.score_error[size_t(j)] * std::fabs(vj);
    }
    r.o[size_t(d)] = o;
    r.o_tol[size_t(d)] = u_out * std::fabs(o) + per_term * abs_pv + 2 * (error_pv + weighted_error * abs_pv) +
                         flushed_weight(p) * double(p.Sk) * v_max + absolute_floor(p);
  }
  return r;
}

inline std::string where(const char* what, int64_t b, int64_t h, int64_t i, int64_t d, double got, double want,
                         double tol) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s[b=%lld h=%lld i=%lld d=%lld] = %.9g, fp64 reference %.9g, bound %.3g", what,
                (long long)b, (long long)h, (long long)i, (long long)d, got, want, tol);
  return buf;
}

// A bound of inf * 0 (NaN) or inf says nothing, and one past the f32 range means intermediates the
// f32 paths may overflow: such magnitudes are beyond what this reference can judge.
inline bool judgeable(const Problem& p, double bound) {
  return std::isfinite(bound) && (p.dtype == DType::f64 || bound < 3.4e38);
}

// Every row of the forward against the reference; returns the rows for the backward check.
inline std::vector<RowReference> check_forward_against_reference(const Problem& p) {
  check(p.Hkv > 0 && p.Hq % p.Hkv == 0, "forward accepted heads_q not a multiple of heads_kv");
  check(p.v.view.shape == Index{p.B, p.Sk, p.Hkv, p.Dv}, "forward accepted a v whose shape does not match k");
  std::vector<RowReference> rows;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t i = 0; i < p.Sq; ++i) {
        RowReference r = reference_row(p, b, h, i);
        const double lse = p.lse.present ? p.lse.get({b, h, i}) : 0.0;
        for (int64_t d = 0; d < p.Dv; ++d) {
          const double o = p.out.get({b, i, h, d});
          if (r.no_visible || (r.empty && r.checked))
            check(o == 0 && !std::signbit(o), where("fully masked out", b, h, i, d, o, 0, 0));
          else if (r.checked && judgeable(p, r.o_tol[size_t(d)]))
            check(std::fabs(o - r.o[size_t(d)]) <= r.o_tol[size_t(d)],
                  where("out", b, h, i, d, o, r.o[size_t(d)], r.o_tol[size_t(d)]));
        }
        if (p.lse.present && (r.no_visible || (r.empty && r.checked)))
          check(lse == -INFINITY, where("fully masked lse", b, h, i, 0, lse, -INFINITY, 0));
        else if (p.lse.present && r.checked && std::isinf(float(r.lse)))  // lse is f32, even for f64 inputs
          check(lse == double(float(r.lse)), where("lse beyond f32 range", b, h, i, 0, lse, r.lse, 0));
        else if (p.lse.present && r.checked && judgeable(p, r.lse_tol))
          check(std::fabs(lse - r.lse) <= r.lse_tol, where("lse", b, h, i, 0, lse, r.lse, r.lse_tol));
        rows.push_back(std::move(r));
      }
  return rows;
}

// dq, dk, dv (and dbias) against fp64, when every row was compared and dout is finite.
inline void check_backward_against_reference(const Problem& p, const std::vector<RowReference>& rows) {
  bool all = true;
  for (const RowReference& r : rows) all &= r.checked || r.empty;
  for_each_index(p.dout.view, [&](const Index& i) { all &= std::fabs(p.dout.get(i)) < 1e30; });
  if (!all) return;
  const Index qs = p.q.view.shape, ks = p.k.view.shape, vs = p.v.view.shape;
  const auto flat = [](const Index& s, int64_t a, int64_t b, int64_t c, int64_t d) {
    return size_t(((a * s[1] + b) * s[2] + c) * s[3] + d);
  };
  std::vector<double> dq(size_t(p.q.view.numel())), dq_tol(dq.size()), dk(size_t(p.k.view.numel())),
      dk_tol(dk.size()), dv(size_t(p.v.view.numel())), dv_tol(dv.size());
  const Index bs = p.bias.present ? p.bias.view.shape : Index{1, 1, 1, 1};
  std::vector<double> db(size_t(bs[0] * bs[1] * bs[2] * bs[3])), db_tol(db.size());
  const double scale = resolved_scale(p), u = accumulation_roundoff(p);
  const double u_mix = std::max(u, product_roundoff(p)), u_out = unit_roundoff(p.dtype);
  const double terms = 1 + std::log2(double(std::max({p.Sq * p.Hq, p.Sk, p.Dv, p.D, int64_t(1)}) * 4));
  double magnitude = 1;
  for (const Operand* op : {&p.q, &p.k, &p.v, &p.dout})
    for_each_index(op->view, [&](const Index& i) { magnitude = std::max(magnitude, std::fabs(op->get(i))); });
  const double floor = absolute_floor(p) + (p.dtype == DType::f64 ? 0.0 : flushed_weight(p) * double(p.Sq * p.Hq * p.Sk) *
                                                                            std::pow(magnitude, 3) * (1 + std::fabs(scale)));
  size_t row = 0;
  for (int64_t b = 0; b < p.B; ++b)
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t i = 0; i < p.Sq; ++i) {
        const RowReference& r = rows[row++];
        if (r.empty) continue;
        const int64_t g = h / (p.Hq / p.Hkv);
        double D = 0, abs_D = 0, weighted_error = 0;
        for (int64_t d = 0; d < p.Dv; ++d) {
          D += p.dout.get({b, i, h, d}) * r.o[size_t(d)];
          abs_D += std::fabs(p.dout.get({b, i, h, d})) * ((u_mix * terms + u_out) * std::fabs(r.o[size_t(d)]) + r.o_tol[size_t(d)]);
        }
        for (int64_t j = 0; j < p.Sk; ++j) weighted_error += r.p[size_t(j)] * r.score_error[size_t(j)];
        for (int64_t j = 0; j < p.Sk; ++j) {
          const double P = r.p[size_t(j)];
          if (P == 0) continue;
          // P is rebuilt from the f32 lse: relative error about u_f32 |lse| beside the score errors.
          const double eP = P * std::expm1(2 * r.score_error[size_t(j)] + 2 * weighted_error + 16 * 0x1p-24 * (1 + std::fabs(r.lse)));
          double dP = 0;
          for (int64_t d = 0; d < p.Dv; ++d) {
            const double dO = p.dout.get({b, i, h, d});
            dP += dO * p.v.get({b, j, g, d});
            dv[flat(vs, b, j, g, d)] += P * dO;
            dv_tol[flat(vs, b, j, g, d)] += (eP + u_mix * terms * P) * std::fabs(dO);
          }
          const double dS = P * (dP - D);
          const double edS = eP * std::fabs(dP - D) + P * (u_mix * terms * 16 * abs_dot(p.dout, {b, i, h}, p.v, {b, j, g}, p.Dv) + abs_D);
          const double dS_tol = edS + u_mix * terms * 16 * std::fabs(dS);
          for (int64_t d = 0; d < p.D; ++d) {
            const double kd = p.k.get({b, j, g, d}), qd = p.q.get({b, i, h, d});
            dq[flat(qs, b, i, h, d)] += scale * dS * kd;
            dq_tol[flat(qs, b, i, h, d)] += std::fabs(scale) * dS_tol * std::fabs(kd);
            dk[flat(ks, b, j, g, d)] += scale * dS * qd;
            dk_tol[flat(ks, b, j, g, d)] += std::fabs(scale) * dS_tol * std::fabs(qd);
          }
          if (p.dbias.present) {
            const Index bi = broadcast_index(p.bias, b, h, i, j);
            db[flat(bs, bi[0], bi[1], bi[2], bi[3])] += dS;
            db_tol[flat(bs, bi[0], bi[1], bi[2], bi[3])] += dS_tol;
          }
        }
      }
  const auto compare = [&](const char* name, const Operand& got, const std::vector<double>& want,
                           const std::vector<double>& tol) {
    const Index s = got.view.shape;
    for_each_index(got.view, [&](const Index& i) {
      const size_t f = flat(s, i[0], i[1], i[2], i[3]);
      // Each gradient is rounded to its own dtype (dbias may differ from the inputs' dtype):
      // its unit roundoff, half its smallest subnormal, and f16's overflow at 65520.
      const DType dt = got.view.dtype;
      if (dt == DType::f16 && std::fabs(want[f]) >= 65504) return;
      // An f32 dbias beside f64 inputs rounds values below 2^-149 to zero (a fuzzed 3.5e-144 gave 0).
      const double subnormal = dt == DType::f16    ? 0x1p-25
                               : dt == DType::bf16 ? 0x1p-134
                               : dt == DType::f32  ? 0x1p-150
                                                   : 0.0;
      const double bound = tol[f] + (unit_roundoff(dt) + u) * std::fabs(want[f]) + floor + subnormal, x = got.get(i);
      // A bound past the dtype's largest finite value lets the rounding of cancelling terms
      // (f16 dq of -0.02 from terms near 1e13, bound 9e13) exceed what the dtype can store, so
      // the overflow to +-inf is within it.
      const double largest = dt == DType::f16 ? 65504.0 : dt == DType::bf16 ? 0x1.fep127 : 0x1.fffffep127;
      if (std::isinf(x) && bound >= largest) return;
      if (judgeable(p, bound))
        check(std::fabs(x - want[f]) <= bound, where(name, i[0], i[2], i[1], i[3], x, want[f], bound));
    });
  };
  compare("dq", p.dq, dq, dq_tol), compare("dk", p.dk, dk, dk_tol), compare("dv", p.dv, dv, dv_tol);
  if (p.dbias.present) compare("dbias", p.dbias, db, db_tol);
}

}  // namespace fuzz
