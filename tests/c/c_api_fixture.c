/* The C API tests' fixture: the CHECK counters, one attention problem and its naive reference. */
#include "c_api_fixture.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

int g_passed, g_failed;

int check(int ok, const char* what, const char* file, int line) {
  if (ok) {
    ++g_passed;
  } else {
    ++g_failed;
    fprintf(stderr, "%s:%d: CHECK failed: %s\n  last error: %s\n", file, line, what,
            memattn_last_error());
  }
  return ok;
}

float q[SQ * HQ * D], k[SK * HKV * D], v[SK * HKV * DV], dout[SQ * HQ * DV];
float bias[HQ * SQ * SK];
uint8_t mask[SQ * SK];
float out[SQ * HQ * DV], lse[HQ * SQ], dq[SQ * HQ * D], dk[SK * HKV * D], dv[SK * HKV * DV],
    dbias[HQ * SQ * SK];
memattn_tensor tq, tk, tv, tdout, tbias, tmask, tout, tlse, tdq, tdk, tdv, tdbias;
const memattn_workspace kNoWorkspace = {NULL, 0};

memattn_tensor contiguous(void* data, memattn_dtype dtype, int ndim, const int64_t* shape) {
  memattn_tensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.dtype = dtype;
  t.ndim = ndim;
  int64_t stride = 1;
  for (int i = ndim - 1; i >= 0; --i) {
    t.shape[i] = shape[i];
    t.strides[i] = stride;
    stride *= shape[i];
  }
  return t;
}

void make_problem(void) {
  for (int i = 0; i < SQ * HQ * D; ++i) q[i] = sinf(0.37f * i + 0.1f);
  for (int i = 0; i < SK * HKV * D; ++i) k[i] = cosf(0.23f * i);
  for (int i = 0; i < SK * HKV * DV; ++i) v[i] = sinf(0.51f * i + 1.0f);
  for (int i = 0; i < SQ * HQ * DV; ++i) dout[i] = cosf(0.29f * i + 0.5f);
  for (int i = 0; i < HQ * SQ * SK; ++i) bias[i] = 0.3f * sinf(1.3f * i);
  for (int i = 0; i < SQ; ++i)
    for (int j = 0; j < SK; ++j) mask[i * SK + j] = i != MASKED_ROW && (i + 2 * j) % 5 != 0;
  tq = TENSOR(q, MEMATTN_F32, 1, SQ, HQ, D);
  tk = TENSOR(k, MEMATTN_F32, 1, SK, HKV, D);
  tv = TENSOR(v, MEMATTN_F32, 1, SK, HKV, DV);
  tdout = TENSOR(dout, MEMATTN_F32, 1, SQ, HQ, DV);
  tbias = TENSOR(bias, MEMATTN_F32, 1, HQ, SQ, SK);
  tmask = TENSOR(mask, MEMATTN_U8, 1, 1, SQ, SK);
  tout = TENSOR(out, MEMATTN_F32, 1, SQ, HQ, DV);
  tlse = TENSOR(lse, MEMATTN_F32, 1, HQ, SQ);
  tdq = TENSOR(dq, MEMATTN_F32, 1, SQ, HQ, D);
  tdk = TENSOR(dk, MEMATTN_F32, 1, SK, HKV, D);
  tdv = TENSOR(dv, MEMATTN_F32, 1, SK, HKV, DV);
  tdbias = TENSOR(dbias, MEMATTN_F32, 1, HQ, SQ, SK);
}

memattn_options problem_options(void) {
  memattn_options o = memattn_options_default();
  o.has_scale = 1;
  o.scale = SCALE;
  o.causal = 1;
  o.align = MEMATTN_ALIGN_BOTTOM_RIGHT;
  o.mask = &tmask;
  o.bias = &tbias;
  return o;
}

struct Reference ref;

/* The same problem the naive way, in double: forward, then the gradients by the chain rule. */
void compute_reference(void) {
  memset(&ref, 0, sizeof ref);
  for (int h = 0; h < HQ; ++h) {
    const int g = h / (HQ / HKV);
    for (int i = 0; i < SQ; ++i) {
      const float* qi = &q[(i * HQ + h) * D];
      const float* doi = &dout[(i * HQ + h) * DV];
      double p[SK], max = -INFINITY, sum = 0;
      for (int j = 0; j < SK; ++j) {
        p[j] = -INFINITY;
        if (j > i + SK - SQ || !mask[i * SK + j]) continue;
        double s = 0;
        for (int d = 0; d < D; ++d) s += (double)qi[d] * k[(j * HKV + g) * D + d];
        p[j] = (double)SCALE * s + bias[(h * SQ + i) * SK + j];
        max = fmax(max, p[j]);
      }
      if (max == -INFINITY) { /* fully masked row: out = 0, lse = -inf, no gradient */
        ref.lse[h * SQ + i] = -INFINITY;
        continue;
      }
      for (int j = 0; j < SK; ++j) sum += p[j] = exp(p[j] - max);
      ref.lse[h * SQ + i] = max + log(sum);
      double dp[SK], rowdot = 0; /* dp_j = dout_i . v_j; rowdot = sum_j p_j dp_j */
      for (int j = 0; j < SK; ++j) {
        p[j] /= sum;
        dp[j] = 0;
        for (int e = 0; e < DV; ++e) {
          ref.out[(i * HQ + h) * DV + e] += p[j] * v[(j * HKV + g) * DV + e];
          dp[j] += (double)doi[e] * v[(j * HKV + g) * DV + e];
        }
        rowdot += p[j] * dp[j];
      }
      for (int j = 0; j < SK; ++j) {
        const double ds = p[j] * (dp[j] - rowdot); /* dLoss / d(score_ij) */
        ref.dbias[(h * SQ + i) * SK + j] = ds;
        for (int d = 0; d < D; ++d) {
          ref.dq[(i * HQ + h) * D + d] += SCALE * ds * k[(j * HKV + g) * D + d];
          ref.dk[(j * HKV + g) * D + d] += SCALE * ds * qi[d];
        }
        for (int e = 0; e < DV; ++e) ref.dv[(j * HKV + g) * DV + e] += p[j] * doi[e];
      }
    }
  }
}

/* f32 inputs and f32 accumulation over at most 8 products of O(1) values, exp within 2 ulp: about
 * 20 roundings of u = 6e-8 at most, 1.2e-6 (1e-7 measured). 2e-6 relative to max(1, |ref|) still
 * fails any wrong index, transposition, scale or missed mask (errors of order 0.01 or more). */
int close_to(const float* got, const double* want, int n, const char* what) {
  double worst = 0;
  for (int i = 0; i < n; ++i) {
    if (isinf(want[i]) && got[i] == want[i]) continue;
    worst = fmax(worst, fabs(got[i] - want[i]) / fmax(1.0, fabs(want[i])));
    if (isnan(got[i])) worst = INFINITY;
  }
  if (worst > 2e-6) fprintf(stderr, "%s: worst relative error %.3g\n", what, worst);
  return worst <= 2e-6;
}
