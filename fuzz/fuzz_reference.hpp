// fp64 attention forward and backward on the stored values, with per-element error bounds derived from their magnitudes.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fuzz_modes.hpp"

namespace fuzz {

using Index = std::array<int64_t, 4>;
constexpr bool kValueSumsBeyondF32 = false;  // see reference_row

// The index of a [B|1, H|1, Sq|1, Sk|1] operand that (b, h, i, j) reads.
inline Index broadcast_index(const Operand& op, int64_t b, int64_t h, int64_t i, int64_t j) {
  const auto& s = op.view.shape;
  return {s[0] == 1 ? 0 : b, s[1] == 1 ? 0 : h, s[2] == 1 ? 0 : i, s[3] == 1 ? 0 : j};
}

// The diagonal of row i of a sequence: causal, window and ALiBi distances are taken from it, with
// the sequence's own lengths.
inline int64_t diagonal(const Problem& p, const Sequence& s, int64_t i) {
  return p.options.align == memattn::Align::bottom_right ? i + s.len_k() - s.len_q : i;
}

inline bool visible(const Problem& p, const Sequence& s, int64_t b, int64_t h, int64_t i, int64_t j) {
  const memattn::Options& o = p.options;
  const int64_t diag = diagonal(p, s, i);
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
inline double resolved_softcap(const Problem& p) {
  return p.dtype == DType::f64 ? p.options.softcap : double(float(p.options.softcap));
}
// ALiBi's slope of (sequence b, head h): one per head, or one per batch entry and head.
inline double slope(const Problem& p, int64_t b, int64_t h) {
  const Operand& a = p.alibi;
  return a.view.ndim == 1 ? a.get({h, 0, 0, 0}) : a.get({a.view.shape[0] == 1 ? 0 : b, h, 0, 0});
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
  // Per key under a softcap: 1 - tanh^2 of the scaled score (the backward's chain rule) and its error.
  std::vector<double> cap_slope, cap_slope_error;
  double p_sink = 0, sink_error = 0;   // the sink's share of the softmax and its weight's error
  double empty_lse = -INFINITY;        // the lse of an empty row: -inf, or the head's sink
  double lse = -INFINITY, lse_tol = 0;
  std::vector<double> o, o_tol;
};

inline double abs_dot(const Operand& a, const Index& ia, const Operand& b, const Index& ib, int64_t n) {
  double s = 0;
  for (int64_t d = 0; d < n; ++d) s += std::fabs(a.get({ia[0], ia[1], ia[2], d}) * b.get({ib[0], ib[1], ib[2], d}));
  return s;
}

// Row i of query head h of sequence `seq` (the b-th): its keys are seq.keys, in k's and v's rows.
inline RowReference reference_row(const Problem& p, const Sequence& seq, int64_t b, int64_t h, int64_t i) {
  RowReference r;
  const int64_t g = h / (p.Hq / p.Hkv), Sk = seq.len_k();
  const Index qi{seq.q_batch, seq.q_row + i, h, 0};
  const auto key = [&](int64_t j) { return Index{seq.keys[size_t(j)][0], seq.keys[size_t(j)][1], g, 0}; };
  const double scale = resolved_scale(p), cap = resolved_softcap(p), u = accumulation_roundoff(p);
  const bool f64 = p.dtype == DType::f64;
  r.p.assign(size_t(Sk), 0.0), r.score_error.assign(size_t(Sk), 0.0);
  r.cap_slope.assign(size_t(Sk), 1.0), r.cap_slope_error.assign(size_t(Sk), 0.0);
  r.o.assign(size_t(p.Dv), 0.0), r.o_tol.assign(size_t(p.Dv), 0.0);
  if (p.sinks.present) r.empty_lse = p.sinks.get({h, 0, 0, 0});
  bool finite = true;
  double q_max = 0;
  for (int64_t d = 0; d < p.D; ++d) {
    finite &= std::isfinite(p.q.get({qi[0], qi[1], h, d}));
    q_max = std::max(q_max, std::fabs(p.q.get({qi[0], qi[1], h, d})));
  }
  std::vector<double> s(size_t(Sk), -INFINITY), modifier_error(size_t(Sk), 0.0);
  double m = -INFINITY, v_max = 0;
  // The library keeps q * scale (flash) or q . k (naive) in f32 (f64 for f64 inputs), so scores
  // beyond that range are not compared (issue 10 names it: scale 1e20 with q ~ 1e20 overflows the
  // pre-scaled query; likewise scale 0 with q . k ~ 1e76 gives 0 * inf = NaN, not the mean of v).
  const double limit = f64 ? 1e300 : 1e37;
  bool in_range = q_max * std::fabs(scale) < limit;
  for (int64_t j = 0; j < Sk; ++j) {
    if (!visible(p, seq, b, h, i, j)) continue;
    r.no_visible = false;
    const Index kj = key(j);
    double dot = 0;
    for (int64_t d = 0; d < p.D; ++d) dot += p.q.get({qi[0], qi[1], h, d}) * p.k.get({kj[0], kj[1], g, d});
    const double conditioning = std::fabs(scale) * abs_dot(p.q, qi, p.k, kj, p.D);
    // q.k rounds like a D-term sum of |q||k| (and the scale folded in).
    double error = u * (double(p.D) + 2) * conditioning, sj = scale * dot;
    if (cap > 0) {
      // cap tanh(x / cap) is 1-Lipschitz in x and within +-cap: the score's error passes through at
      // most whole (with the division's rounding), then tanh (2 ulp) and the product round.
      const double t = std::tanh(sj / cap), passed = error + 2 * u * std::fabs(sj);
      const double t_error = passed / cap + 4 * u * std::fabs(t);
      r.cap_slope[size_t(j)] = 1 - t * t;
      r.cap_slope_error[size_t(j)] = std::min(1.0, t_error * (2 * std::fabs(t) + t_error) + 2 * u);
      sj = cap * t;
      error = std::min(passed, 2 * cap) + 5 * u * std::fabs(sj);
    }
    if (p.alibi.present) {
      // slope * distance rounds once (the distance is an exact small integer), its sum once more.
      const double term = -slope(p, b, h) * double(std::llabs(diagonal(p, seq, i) - j));
      sj += term;
      error += u * (std::fabs(term) + std::fabs(sj));
      in_range &= std::fabs(term) < limit;
    }
    modifier_error[size_t(j)] = error;
    const double bias = p.bias.present ? p.bias.get(broadcast_index(p.bias, b, h, i, j)) : 0.0;
    s[size_t(j)] = sj + bias;
    for (int64_t d = 0; d < p.D; ++d) finite &= std::isfinite(p.k.get({kj[0], kj[1], g, d}));
    for (int64_t d = 0; d < p.Dv; ++d) {
      finite &= std::isfinite(p.v.get({kj[0], kj[1], g, d}));
      v_max = std::max(v_max, std::fabs(p.v.get({kj[0], kj[1], g, d})));
    }
    finite &= std::isfinite(bias) || bias == -INFINITY;
    const double unscaled = abs_dot(p.q, qi, p.k, kj, p.D);
    in_range &= std::max(conditioning, unscaled) * double(p.D + 2) < limit && std::fabs(bias) < limit;
    if (s[size_t(j)] != -INFINITY) r.empty = false;  // NaN scores too
    m = std::max(m, s[size_t(j)]);
  }
  // Known limitation (fuzz/README.md, "value sums beyond f32"): every algorithm sums unnormalised
  // weights (up to 1 each) times v in f32, so out overflows once Sk max|v| passes FLT_MAX although
  // the exact result (a mean of v) is finite. Such rows are not compared until that is fixed.
  const bool value_sum_in_range = kValueSumsBeyondF32 || f64 || double(Sk) * v_max < 3.4e38;
  r.checked = finite && in_range && value_sum_in_range;
  if (r.empty || !r.checked) return r;
  // A sink joins the denominator as a key without a value; the reference normalises by the larger
  // of it and the scores' maximum m (the library by m, or through logaddexp past exp's range).
  const double sink = r.empty_lse, top = std::max(m, sink);
  double sum = p.sinks.present ? std::exp(sink - top) : 0.0;
  for (int64_t j = 0; j < Sk; ++j) sum += r.p[size_t(j)] = std::exp(s[size_t(j)] - top);
  double weighted_error = 0, key_mass = 0;  // sum_k p_k E_k, sum_k p_k
  for (int64_t j = 0; j < Sk; ++j) {
    r.p[size_t(j)] /= sum;
    if (r.p[size_t(j)] == 0) continue;
    // |s| and |m| bound the rounding of the bias addition and of s - m in the exponent.
    // A score error e moves its weight by a factor up to e^(2e): expm1 keeps the bound honest where
    // e is not small (scores ~1e9 in f32 carry errors ~100; the softmax is then ill-conditioned).
    const double e = modifier_error[size_t(j)] + u * (std::fabs(s[size_t(j)]) + std::fabs(m));
    r.score_error[size_t(j)] = 0.5 * std::expm1(2 * e);
    weighted_error += r.p[size_t(j)] * r.score_error[size_t(j)];
    key_mass += r.p[size_t(j)];
  }
  // The sink's weight exp(sink - m) rounds in its argument like a score's; the normalisation of
  // out is off by the keys' own weighted error (the whole of it past exp's range, where the library
  // rescales the keys' sum by exp(row lse - lse)) plus the sink's.
  double normalisation_error = weighted_error;
  if (p.sinks.present) {
    r.p_sink = std::exp(sink - top) / sum;
    r.sink_error = 0.5 * std::expm1(2 * u * (std::fabs(sink) + std::fabs(m)));
    normalisation_error = (key_mass > 0 ? weighted_error / key_mass : 0.0) + r.p_sink * r.sink_error;
    weighted_error += r.p_sink * r.sink_error;
  }
  r.lse = top + std::log(sum);
  const double log_sk = 1 + std::log2(double(Sk));
  r.lse_tol = 2 * weighted_error + 16 * 0x1p-24 * (log_sk + std::fabs(r.lse)) + flushed_weight(p) * double(Sk);
  const double u_out = unit_roundoff(p.dtype), per_term = product_roundoff(p) + 16 * u * log_sk;
  for (int64_t d = 0; d < p.Dv; ++d) {
    double o = 0, abs_pv = 0, error_pv = 0;
    for (int64_t j = 0; j < Sk; ++j) {
      if (r.p[size_t(j)] == 0) continue;
      const Index kj = key(j);
      const double vj = p.v.get({kj[0], kj[1], g, d});
      o += r.p[size_t(j)] * vj;
      abs_pv += r.p[size_t(j)] * std::fabs(vj);
      error_pv += r.p[size_t(j)] * r.score_error[size_t(j)] * std::fabs(vj);
    }
    r.o[size_t(d)] = o;
    r.o_tol[size_t(d)] = u_out * std::fabs(o) + per_term * abs_pv + 2 * (error_pv + normalisation_error * abs_pv) +
                         flushed_weight(p) * double(Sk) * v_max + absolute_floor(p);
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
  const Index& ks = p.k.view.shape;
  check(p.v.view.shape == Index{ks[0], ks[1], p.Hkv, p.Dv}, "forward accepted a v whose shape does not match k");
  std::vector<RowReference> rows;
  for (size_t b = 0; b < p.sequences.size(); ++b) {
    const Sequence& seq = p.sequences[b];
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t i = 0; i < seq.len_q; ++i) {
        RowReference r = reference_row(p, seq, int64_t(b), h, i);
        const int64_t row = seq.q_row + i;
        const double lse = p.lse.present ? p.lse.get({seq.q_batch, h, row}) : 0.0;
        for (int64_t d = 0; d < p.Dv; ++d) {
          const double o = p.out.get({seq.q_batch, row, h, d});
          if (r.no_visible || (r.empty && r.checked))
            check(o == 0 && !std::signbit(o), where("fully masked out", int64_t(b), h, i, d, o, 0, 0));
          else if (r.checked && judgeable(p, r.o_tol[size_t(d)]))
            check(std::fabs(o - r.o[size_t(d)]) <= r.o_tol[size_t(d)],
                  where("out", int64_t(b), h, i, d, o, r.o[size_t(d)], r.o_tol[size_t(d)]));
        }
        // An empty row's lse is exactly -inf, or its head's sink (an f32 value, stored as is).
        if (p.lse.present && (r.no_visible || (r.empty && r.checked)))
          check(lse == r.empty_lse, where("fully masked lse", int64_t(b), h, i, 0, lse, r.empty_lse, 0));
        else if (p.lse.present && r.checked && std::isinf(float(r.lse)))  // lse is f32, even for f64 inputs
          check(lse == double(float(r.lse)), where("lse beyond f32 range", int64_t(b), h, i, 0, lse, r.lse, 0));
        else if (p.lse.present && r.checked && judgeable(p, r.lse_tol))
          check(std::fabs(lse - r.lse) <= r.lse_tol, where("lse", int64_t(b), h, i, 0, lse, r.lse, r.lse_tol));
        rows.push_back(std::move(r));
      }
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
  // The longest sequence's rows and keys: how many terms any gradient element sums.
  int64_t Sq = 0, Sk = 0;
  for (const Sequence& seq : p.sequences) Sq = std::max(Sq, seq.len_q), Sk = std::max(Sk, seq.len_k());
  const double terms = 1 + std::log2(double(std::max({Sq * p.Hq, Sk, p.Dv, p.D, int64_t(1)}) * 4));
  double magnitude = 1;
  for (const Operand* op : {&p.q, &p.k, &p.v, &p.dout})
    for_each_index(op->view, [&](const Index& i) { magnitude = std::max(magnitude, std::fabs(op->get(i))); });
  const double floor = absolute_floor(p) + (p.dtype == DType::f64 ? 0.0 : flushed_weight(p) * double(Sq * p.Hq * Sk) *
                                                                            std::pow(magnitude, 3) * (1 + std::fabs(scale)));
  std::vector<double> ds(size_t(p.Hq)), ds_tol(ds.size());  // dsinks
  size_t row = 0;
  for (size_t b = 0; b < p.sequences.size(); ++b) {
    const Sequence& seq = p.sequences[b];
    for (int64_t h = 0; h < p.Hq; ++h)
      for (int64_t i = 0; i < seq.len_q; ++i) {
        const RowReference& r = rows[row++];
        if (r.empty) continue;
        const int64_t g = h / (p.Hq / p.Hkv), qb = seq.q_batch, qr = seq.q_row + i;
        double D = 0, abs_D = 0, weighted_error = r.p_sink * r.sink_error;
        for (int64_t d = 0; d < p.Dv; ++d) {
          D += p.dout.get({qb, qr, h, d}) * r.o[size_t(d)];
          abs_D += std::fabs(p.dout.get({qb, qr, h, d})) * ((u_mix * terms + u_out) * std::fabs(r.o[size_t(d)]) + r.o_tol[size_t(d)]);
        }
        for (int64_t j = 0; j < seq.len_k(); ++j) weighted_error += r.p[size_t(j)] * r.score_error[size_t(j)];
        // P is rebuilt from the f32 lse: relative error about u_f32 |lse| beside the score errors.
        const auto rebuilt_error = [&](double P, double score_error) {
          return P * std::expm1(2 * score_error + 2 * weighted_error + 16 * 0x1p-24 * (1 + std::fabs(r.lse)));
        };
        // dsinks[h] = -sum_rows P_sink D, summed in f64: the errors of P_sink and D, then f32's rounding.
        ds[size_t(h)] -= r.p_sink * D;
        ds_tol[size_t(h)] += rebuilt_error(r.p_sink, r.sink_error) * std::fabs(D) + r.p_sink * abs_D;
        for (int64_t j = 0; j < seq.len_k(); ++j) {
          const double P = r.p[size_t(j)];
          if (P == 0) continue;
          const int64_t kb = seq.keys[size_t(j)][0], kr = seq.keys[size_t(j)][1];
          const double eP = rebuilt_error(P, r.score_error[size_t(j)]);
          double dP = 0;
          for (int64_t d = 0; d < p.Dv; ++d) {
            const double dO = p.dout.get({qb, qr, h, d});
            dP += dO * p.v.get({kb, kr, g, d});
            dv[flat(vs, kb, kr, g, d)] += P * dO;
            dv_tol[flat(vs, kb, kr, g, d)] += (eP + u_mix * terms * P) * std::fabs(dO);
          }
          const double dS = P * (dP - D);
          const double edS = eP * std::fabs(dP - D) + P * (u_mix * terms * 16 * abs_dot(p.dout, {qb, qr, h}, p.v, {kb, kr, g}, p.Dv) + abs_D);
          const double dS_tol = edS + u_mix * terms * 16 * std::fabs(dS);
          // Through a softcap dq and dk take dS (1 - tanh^2), with that factor's own error; dbias takes
          // dS, as the bias is added after the cap.
          const double slope = r.cap_slope[size_t(j)], dS_raw = dS * slope;
          const double dS_raw_tol = dS_tol * slope + std::fabs(dS) * r.cap_slope_error[size_t(j)] + u * std::fabs(dS_raw);
          for (int64_t d = 0; d < p.D; ++d) {
            const double kd = p.k.get({kb, kr, g, d}), qd = p.q.get({qb, qr, h, d});
            dq[flat(qs, qb, qr, h, d)] += scale * dS_raw * kd;
            dq_tol[flat(qs, qb, qr, h, d)] += std::fabs(scale) * dS_raw_tol * std::fabs(kd);
            dk[flat(ks, kb, kr, g, d)] += scale * dS_raw * qd;
            dk_tol[flat(ks, kb, kr, g, d)] += std::fabs(scale) * dS_raw_tol * std::fabs(qd);
          }
          if (p.dbias.present) {
            const Index bi = broadcast_index(p.bias, int64_t(b), h, i, j);
            db[flat(bs, bi[0], bi[1], bi[2], bi[3])] += dS;
            db_tol[flat(bs, bi[0], bi[1], bi[2], bi[3])] += dS_tol;
          }
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
  if (p.dsinks.present)  // [heads_q]: flat index h
    for (int64_t h = 0; h < p.Hq; ++h) {
      const double bound = ds_tol[size_t(h)] + (0x1p-24 + u) * std::fabs(ds[size_t(h)]) + floor + 0x1p-150, x = p.dsinks.get({h, 0, 0, 0});
      if (judgeable(p, bound)) check(std::fabs(x - ds[size_t(h)]) <= bound, where("dsinks", 0, h, 0, 0, x, ds[size_t(h)], bound));
    }
}

}  // namespace fuzz
