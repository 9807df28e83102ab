/* Tests of the score modifiers through the C API, compiled as C: options.softcap, alibi_slopes,
 * sinks and diagonal_offset in memattn_forward against a double-precision definition written here,
 * dsinks from memattn_backward_ex against finite differences of that definition, and their errors. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "c_api_fixture.h"
#include "memattn/memattn.h"

static const double kCap = 1.5;
static float slopes[HQ] = {0.5f, 0.125f};
static float sinks[HQ] = {0.75f, -0.5f};
/* options.diagonal_offset of the definition: the causal and ALiBi diagonal moves by it. */
static long diagonal_offset = 0;

/* out and lse of the fixture's problem (mask, bias, causal bottom-right, GQA) with the softcap,
 * ALiBi and sinks, in double, from sink logits `s`; returns sum(out * dout). */
static double definition(const double* s, double* out_ref, double* lse_ref) {
  const long diag = SK - SQ + diagonal_offset;
  double loss = 0;
  for (int h = 0; h < HQ; ++h)
    for (int i = 0; i < SQ; ++i) {
      double score[SK], m = s[h];
      int seen[SK];
      for (int j = 0; j < SK; ++j) {
        seen[j] = j <= i + diag && mask[i * SK + j] != 0;
        if (!seen[j]) continue;
        double d = 0;
        for (int c = 0; c < D; ++c) d += (double)q[(i * HQ + h) * D + c] * (double)k[j * D + c];
        double x = kCap * tanh((double)SCALE * d / kCap);
        x -= (double)slopes[h] * fabs((double)(i + diag - j));
        score[j] = x + (double)bias[(h * SQ + i) * SK + j];
        if (score[j] > m) m = score[j];
      }
      double sum = exp(s[h] - m), o[DV] = {0};
      for (int j = 0; j < SK; ++j)
        if (seen[j]) sum += exp(score[j] - m);
      for (int j = 0; j < SK; ++j)
        if (seen[j])
          for (int c = 0; c < DV; ++c) o[c] += exp(score[j] - m) / sum * (double)v[j * DV + c];
      for (int c = 0; c < DV; ++c) {
        if (out_ref) out_ref[(i * HQ + h) * DV + c] = o[c];
        loss += o[c] * (double)dout[(i * HQ + h) * DV + c];
      }
      if (lse_ref) lse_ref[h * SQ + i] = m + log(sum);
    }
  return loss;
}

static memattn_options modified_options(memattn_tensor* tslopes, memattn_tensor* tsinks) {
  memattn_options o = problem_options();
  *tslopes = TENSOR(slopes, MEMATTN_F32, HQ);
  *tsinks = TENSOR(sinks, MEMATTN_F32, HQ);
  o.softcap = kCap;
  o.alibi_slopes = tslopes;
  o.sinks = tsinks;
  return o;
}

static void test_forward_and_dsinks(void) {
  memattn_tensor tslopes, tsinks;
  for (int alg = MEMATTN_ALGORITHM_NAIVE; alg <= MEMATTN_ALGORITHM_FLASH; alg += MEMATTN_ALGORITHM_FLASH - 1) {
    memattn_options o = modified_options(&tslopes, &tsinks);
    o.algorithm = (memattn_algorithm)alg;
    const double s[HQ] = {sinks[0], sinks[1]};
    double out_ref[SQ * HQ * DV], lse_ref[HQ * SQ];
    definition(s, out_ref, lse_ref);
    CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
    CHECK(close_to(out, out_ref, SQ * HQ * DV, "out with softcap, alibi and sinks"));
    CHECK(close_to(lse, lse_ref, HQ * SQ, "lse with sinks"));
    /* The fixture's fully masked row sees only the sink: out 0, lse = sink. */
    for (int h = 0; h < HQ; ++h) CHECK(lse[h * SQ + MASKED_ROW] == sinks[h]);

    float dsinks[HQ] = {NAN, NAN};
    memattn_tensor tdsinks = TENSOR(dsinks, MEMATTN_F32, HQ);
    CHECK(memattn_backward_ex(&tq, &tk, &tv, &tout, &tdout, &tlse, &tdq, &tdk, &tdv, &o, NULL, &tdsinks,
                              kNoWorkspace) == MEMATTN_OK);
    double fd[HQ];
    for (int h = 0; h < HQ; ++h) {
      double up[HQ] = {s[0], s[1]}, down[HQ] = {s[0], s[1]};
      up[h] += 1e-6, down[h] -= 1e-6;
      fd[h] = (definition(up, NULL, NULL) - definition(down, NULL, NULL)) / 2e-6;
    }
    for (int h = 0; h < HQ; ++h) {
      const int ok = fabs(dsinks[h] - fd[h]) <= 1e-5 * fmax(1.0, fabs(fd[h]));
      if (!ok) fprintf(stderr, "dsinks[%d] = %.9g, finite differences %.9g\n", h, dsinks[h], fd[h]);
      CHECK(ok);
    }
  }
}

static void test_diagonal_offset(void) {
  memattn_tensor tslopes, tsinks;
  const long offsets[] = {-2, 3};
  CHECK(memattn_options_default().diagonal_offset == 0);
  for (int t = 0; t < 2; ++t) {
    diagonal_offset = offsets[t];
    memattn_options o = modified_options(&tslopes, &tsinks);
    o.diagonal_offset = diagonal_offset;
    const double s[HQ] = {sinks[0], sinks[1]};
    double out_ref[SQ * HQ * DV], lse_ref[HQ * SQ];
    definition(s, out_ref, lse_ref);
    CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
    CHECK(close_to(out, out_ref, SQ * HQ * DV, "out with a diagonal offset"));
    CHECK(close_to(lse, lse_ref, HQ * SQ, "lse with a diagonal offset"));
  }
  diagonal_offset = 0;
  memattn_options o = problem_options();
  o.diagonal_offset = ((int64_t)1 << 62) + 1;
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_INVALID_ARGUMENT);
  CHECK(strstr(memattn_last_error(), "diagonal_offset must be in [-2^62, 2^62], got 4611686018427387905") != NULL);
}

static void test_errors(void) {
  memattn_tensor tslopes, tsinks;
  memattn_options o = modified_options(&tslopes, &tsinks);
  o.softcap = -1;
  const float sentinel = 12345.0f;
  for (int i = 0; i < SQ * HQ * DV; ++i) out[i] = sentinel;
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_INVALID_ARGUMENT);
  CHECK(strstr(memattn_last_error(), "softcap must be finite and >= 0 (0: off), got -1") != NULL);
  int untouched = 1;
  for (int i = 0; i < SQ * HQ * DV; ++i) untouched &= out[i] == sentinel;
  CHECK(untouched);

  o = modified_options(&tslopes, &tsinks);
  memattn_tensor bad = TENSOR(slopes, MEMATTN_F32, 1);
  o.alibi_slopes = &bad;
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_INVALID_ARGUMENT);
  CHECK(strstr(memattn_last_error(), "alibi_slopes: shape [1] expected [2] or [1,2]") != NULL);

  o = problem_options(); /* no sinks: dsinks has nothing to differentiate */
  float dsinks[HQ];
  memattn_tensor tdsinks = TENSOR(dsinks, MEMATTN_F32, HQ);
  CHECK(memattn_backward_ex(&tq, &tk, &tv, &tout, &tdout, &tlse, &tdq, &tdk, &tdv, &o, NULL, &tdsinks,
                            kNoWorkspace) == MEMATTN_INVALID_ARGUMENT);
  CHECK(strstr(memattn_last_error(), "dsinks: a sinks gradient was requested but options.sinks is null") != NULL);

  /* The defaults leave every modifier off. */
  const memattn_options d = memattn_options_default();
  CHECK(d.softcap == 0 && d.alibi_slopes == NULL && d.sinks == NULL);
}

int main(void) {
  make_problem();
  test_forward_and_dsinks();
  test_diagonal_offset();
  test_errors();
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed != 0;
}
