// Test support for the backward pass: Ref64's analytic gradients, the same-precision naive
// backward (Base_dt), central finite differences, and a Case that runs forward then backward.
#pragma once

#include <optional>
#include <initializer_list>
#include <string>
#include <vector>

#include "support.hpp"

namespace mt {

// Gradients of loss = sum(out * dout), row-major like the operands: dq [B,Sq,Hq,D],
// dk [B,Sk,Hkv,D], dv [B,Sk,Hkv,Dv], dbias in the bias's own shape (empty without a bias).
struct RefGrads {
  std::vector<double> dq, dk, dv, dbias;
  std::vector<double> dsinks;  // [Hq] with sinks (empty without)
};

// Analytic gradients in fp64 on the exact values (Ref64's backward): P recomputed by a naive
// softmax; dS = P * (dP - rowsum(P * dP)); fully masked rows contribute nothing.
RefGrads reference_backward64(const RefProblem& p, const std::vector<double>& dout);
// The same in 80-bit long double: the reference for f64 gradients, whose baseline is Ref64.
RefGrads reference_backward_extended(const RefProblem& p, const std::vector<double>& dout);
// Base_dt's backward: f32 materialises S, P, dP and dS in f32 and accumulates in f32; bf16/f16
// also round S, P, dP and dS to the dtype; the gradients are rounded to the dtype (dbias to
// `bias_dt`).
RefGrads baseline_backward(const RefProblem& p, const std::vector<double>& dout, DType dt,
                           DType bias_dt);
// Central differences (f(x + h) - f(x - h)) / 2h of sum(reference64(p).out * dout), for every
// element of q, k, v, the bias and the sinks.
RefGrads finite_difference_grads(const RefProblem& p, const std::vector<double>& dout, double h);

// A Case with the backward's operands: dout (seeded randn), dq, dk, dv and, on request, dbias.
struct BackwardCase : Case {
  Buf dout, dq, dk, dv;
  std::optional<Buf> dbias;
  std::optional<Buf> dsinks;  // f32 [Hq], on request

  BackwardCase(Shape s, DType dt, uint64_t seed = 1, double sigma = 1.0);
  void request_dbias();  // dbias shaped and typed like the bias (set_bias first)
  void request_dsinks();  // dsinks [Hq] f32 (set_sinks first)
  // forward() into out and lse, then backward() into the gradients, with `options`.
  void run_both();
  // backward() alone, from the current out and lse.
  void run_backward(memattn::Workspace ws = {});
  RefGrads grads() const;  // the library's gradients as doubles
};

// How expect_backward_accurate judges a case.
struct GradCheck {
  double k = 3.0;          // TESTPLAN's k for dq, dk, dv, dbias (5 for the adversarial cases)
  double abs_slack = 0.0;  // added to every bound (1e-3 for the adversarial cases 24/25)
  // dbias over a key-broadcast bias is identically 0 (softmax is shift-invariant), so the rule
  // compares rounding noise with rounding noise; such cases bound |dbias| by this instead.
  std::optional<double> dbias_bound;
  bool expect_zeros = false;  // skip the zero-trust check (fully masked or single-key cases)
};

// Runs `c` (forward then backward, gradients pre-filled with NaN so unwritten elements fail) and
// checks dq, dk, dv (and dbias) against Ref64 with Base_dt's backward as the baseline: TESTPLAN's
// primary rule, NaN parity and the backward zero-trust check (at most 70% exact zeros).
void expect_backward_accurate(BackwardCase& c, const GradCheck& check = {});

// Error-analysis bound on |dbias| where the bias broadcasts over keys (exact value 0): per row,
// 4u (2 + |lse|) sum_c |dO_c| max_j |V_jc| (the lse rounding and the D = dO.O mismatch), summed
// over the rows reduced into one element; the largest over the elements.
double key_broadcast_dbias_bound(const BackwardCase& c);

// Runs c (dbias requested) on 1 thread, then on each of `threads`, and expects dq, dk, dv and
// dbias bitwise equal to the 1-thread run; `what` prefixes the failure messages.
void expect_same_bits_any_thread_count(BackwardCase& c, std::initializer_list<int> threads,
                                       const std::string& what = "");

}  // namespace mt
