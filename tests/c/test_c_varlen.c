/* Tests of variable-length batches through the C API, compiled as C: each packed sequence against a
 * naive reference in double and bitwise against its own dense call (forward and backward), i32 and
 * i64 offsets, and the offset errors with their messages and outputs left untouched. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "c_api_fixture.h"
#include "memattn/memattn.h"

enum { B = 3, TQ = 7, TK = 13, H = 2, HK = 1, E = 4 };
static int32_t cu_q32[B + 1] = {0, 3, 3, 7}; /* sequence 1 has no queries */
static int32_t cu_k32[B + 1] = {0, 5, 7, 13};
static int64_t cu_q64[B + 1], cu_k64[B + 1];

static float pq[TQ * H * E], pk[TK * HK * E], pv[TK * HK * E], pdout[TQ * H * E];
static float pout[TQ * H * E], plse[H * TQ], pdq[TQ * H * E], pdk[TK * HK * E], pdv[TK * HK * E];
static memattn_tensor vq, vk, vv, vdout, vout, vlse, vdq, vdk, vdv, vcu_q, vcu_k;

static void make_varlen(void) {
  for (int i = 0; i < TQ * H * E; ++i) pq[i] = sinf(0.7f * (float)i), pdout[i] = cosf(0.3f * (float)i);
  for (int i = 0; i < TK * HK * E; ++i) pk[i] = cosf(1.3f * (float)i), pv[i] = sinf(0.9f * (float)i + 1.0f);
  for (int b = 0; b <= B; ++b) cu_q64[b] = cu_q32[b], cu_k64[b] = cu_k32[b];
  vq = TENSOR(pq, MEMATTN_F32, 1, TQ, H, E);
  vk = TENSOR(pk, MEMATTN_F32, 1, TK, HK, E);
  vv = TENSOR(pv, MEMATTN_F32, 1, TK, HK, E);
  vdout = TENSOR(pdout, MEMATTN_F32, 1, TQ, H, E);
  vout = TENSOR(pout, MEMATTN_F32, 1, TQ, H, E);
  vlse = TENSOR(plse, MEMATTN_F32, 1, H, TQ);
  vdq = TENSOR(pdq, MEMATTN_F32, 1, TQ, H, E);
  vdk = TENSOR(pdk, MEMATTN_F32, 1, TK, HK, E);
  vdv = TENSOR(pdv, MEMATTN_F32, 1, TK, HK, E);
  vcu_q = TENSOR(cu_q32, MEMATTN_I32, B + 1);
  vcu_k = TENSOR(cu_k32, MEMATTN_I32, B + 1);
}

static memattn_options varlen_options(void) {
  memattn_options o = memattn_options_default();
  o.causal = 1;
  o.align = MEMATTN_ALIGN_BOTTOM_RIGHT;
  o.cu_seqlens_q = &vcu_q;
  o.cu_seqlens_k = &vcu_k;
  return o;
}

/* Query row i of sequence b, head h, in double: causal bottom-right over the sequence's keys. */
static void reference_row(int b, int i, int h, double* o) {
  const int q0 = cu_q32[b], k0 = cu_k32[b], sq = cu_q32[b + 1] - q0, sk = cu_k32[b + 1] - k0;
  double s[TK], m = -INFINITY, l = 0;
  const int last = i + sk - sq; /* the row's last visible key */
  for (int j = 0; j <= last && j < sk; ++j) {
    double d = 0;
    for (int c = 0; c < E; ++c) d += (double)pq[((q0 + i) * H + h) * E + c] * pk[(k0 + j) * E + c];
    s[j] = d * (double)(float)(1.0 / sqrt((double)E));
    m = s[j] > m ? s[j] : m;
  }
  for (int c = 0; c < E; ++c) o[c] = 0;
  for (int j = 0; j <= last && j < sk; ++j) l += exp(s[j] - m);
  for (int j = 0; j <= last && j < sk; ++j)
    for (int c = 0; c < E; ++c) o[c] += exp(s[j] - m) / l * pv[(k0 + j) * E + c];
}

static void test_varlen_forward_and_backward(memattn_dtype offsets) {
  memattn_options o = varlen_options();
  if (offsets == MEMATTN_I64) {
    vcu_q = TENSOR(cu_q64, MEMATTN_I64, B + 1);
    vcu_k = TENSOR(cu_k64, MEMATTN_I64, B + 1);
  }
  memset(pout, 0xFF, sizeof pout);
  CHECK(memattn_forward(&vq, &vk, &vv, &vout, &vlse, &o, kNoWorkspace) == MEMATTN_OK);
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < cu_q32[b + 1] - cu_q32[b]; ++i)
      for (int h = 0; h < H; ++h) {
        double want[E];
        reference_row(b, i, h, want);
        for (int c = 0; c < E; ++c)
          CHECK(fabs(pout[((cu_q32[b] + i) * H + h) * E + c] - want[c]) < 1e-5);
      }
  memset(pdq, 0xFF, sizeof pdq);
  memset(pdk, 0xFF, sizeof pdk);
  CHECK(memattn_backward(&vq, &vk, &vv, &vout, &vdout, &vlse, &vdq, &vdk, &vdv, &o, NULL, kNoWorkspace) ==
        MEMATTN_OK);
  /* Each sequence bitwise equal to its own dense call; sequence 1 (no queries): dk = dv = 0. */
  for (int b = 0; b < B; ++b) {
    const int q0 = cu_q32[b], k0 = cu_k32[b], sq = cu_q32[b + 1] - q0, sk = cu_k32[b + 1] - k0;
    float dout_[TQ * H * E], dlse[H * TQ], ddq[TQ * H * E], ddk[TK * HK * E], ddv[TK * HK * E];
    memattn_tensor tq_ = TENSOR(pq + q0 * H * E, MEMATTN_F32, 1, sq, H, E),
                   tk_ = TENSOR(pk + k0 * E, MEMATTN_F32, 1, sk, HK, E),
                   tv_ = TENSOR(pv + k0 * E, MEMATTN_F32, 1, sk, HK, E),
                   tdo = TENSOR(pdout + q0 * H * E, MEMATTN_F32, 1, sq, H, E),
                   to_ = TENSOR(dout_, MEMATTN_F32, 1, sq, H, E), tl = TENSOR(dlse, MEMATTN_F32, 1, H, sq),
                   tdq_ = TENSOR(ddq, MEMATTN_F32, 1, sq, H, E), tdk_ = TENSOR(ddk, MEMATTN_F32, 1, sk, HK, E),
                   tdv_ = TENSOR(ddv, MEMATTN_F32, 1, sk, HK, E);
    memattn_options d = memattn_options_default();
    d.causal = 1;
    d.align = MEMATTN_ALIGN_BOTTOM_RIGHT;
    CHECK(memattn_forward(&tq_, &tk_, &tv_, &to_, &tl, &d, kNoWorkspace) == MEMATTN_OK);
    CHECK(memcmp(dout_, pout + q0 * H * E, sizeof(float) * (size_t)(sq * H * E)) == 0);
    CHECK(memattn_backward(&tq_, &tk_, &tv_, &to_, &tdo, &tl, &tdq_, &tdk_, &tdv_, &d, NULL, kNoWorkspace) ==
          MEMATTN_OK);
    CHECK(memcmp(ddq, pdq + q0 * H * E, sizeof(float) * (size_t)(sq * H * E)) == 0);
    CHECK(memcmp(ddk, pdk + k0 * E, sizeof(float) * (size_t)(sk * E)) == 0);
    CHECK(memcmp(ddv, pdv + k0 * E, sizeof(float) * (size_t)(sk * E)) == 0);
    if (sq == 0)
      for (int j = 0; j < sk * E; ++j) CHECK(pdk[k0 * E + j] == 0.0f && pdv[k0 * E + j] == 0.0f);
  }
  vcu_q = TENSOR(cu_q32, MEMATTN_I32, B + 1);
  vcu_k = TENSOR(cu_k32, MEMATTN_I32, B + 1);
}

/* The call fails with `status` and a message containing `part`; out and lse keep their bytes. */
static void expect_varlen_error(const memattn_options* o, memattn_status status, const char* part) {
  float out_before[TQ * H * E], lse_before[H * TQ];
  memset(pout, 0xA5, sizeof pout);
  memset(plse, 0xA5, sizeof plse);
  memcpy(out_before, pout, sizeof pout);
  memcpy(lse_before, plse, sizeof plse);
  CHECK(memattn_forward(&vq, &vk, &vv, &vout, &vlse, o, kNoWorkspace) == status);
  if (!CHECK(strstr(memattn_last_error(), part) != NULL)) printf("  expected: %s\n", part);
  CHECK(memcmp(out_before, pout, sizeof pout) == 0 && memcmp(lse_before, plse, sizeof plse) == 0);
}

static void test_varlen_errors(void) {
  int32_t bad[B + 1] = {0, 3, 2, 7};
  memattn_tensor tbad = TENSOR(bad, MEMATTN_I32, B + 1);
  memattn_options o = varlen_options();
  o.cu_seqlens_q = &tbad;
  expect_varlen_error(&o, MEMATTN_INVALID_ARGUMENT, "cu_seqlens_q[2]=2 < cu_seqlens_q[1]=3");
  bad[2] = 3;
  bad[3] = 6;
  expect_varlen_error(&o, MEMATTN_INVALID_ARGUMENT, "cu_seqlens_q[3]=6 (the last entry) must equal");
  o = varlen_options();
  o.max_seqlen_k = 5;
  expect_varlen_error(&o, MEMATTN_INVALID_ARGUMENT, "max_seqlen_k=5 is smaller than sequence 2's length 6");
  o = varlen_options();
  o.cu_seqlens_k = NULL;
  expect_varlen_error(&o, MEMATTN_INVALID_ARGUMENT, "cu_seqlens_q is set but cu_seqlens_k is null");
  o = varlen_options();
  memattn_tensor wrong = vcu_k;
  wrong.dtype = (memattn_dtype)9;
  o.cu_seqlens_k = &wrong;
  expect_varlen_error(&o, MEMATTN_INVALID_ARGUMENT, "options.cu_seqlens_k.dtype: expected one of");
  wrong.dtype = MEMATTN_F32;
  expect_varlen_error(&o, MEMATTN_WRONG_DTYPE, "cu_seqlens_k: dtype must be i32 or i64, got f32");
}

int main(void) {
  make_varlen();
  test_varlen_forward_and_backward(MEMATTN_I32);
  test_varlen_forward_and_backward(MEMATTN_I64);
  test_varlen_errors();
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
