/* Tests of memattn_tile_family, compiled as C: the family per dtype, target and algorithm, the
 * MEMATTN_FAMILY override and its errors (NULL and memattn_last_error here, a status from
 * memattn_forward), and that a bf16 call runs the family reported (bitwise its forced run). */
#define _POSIX_C_SOURCE 200112L /* setenv, unsetenv */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_api_fixture.h"
#include "memattn/memattn.h"

/* Is `got` the string `want`? NULL is not. */
static int is(const char* got, const char* want) { return got != NULL && strcmp(got, want) == 0; }

static int last_error_has(const char* part) { return strstr(memattn_last_error(), part) != NULL; }

static int has_target(const char* name) {
  char targets[256];
  snprintf(targets, sizeof targets, "%s", memattn_supported_targets());
  for (char* t = strtok(targets, ","); t; t = strtok(NULL, ","))
    if (strcmp(t, name) == 0) return 1;
  return 0;
}

static memattn_options with(const char* target, memattn_algorithm algorithm) {
  memattn_options o = memattn_options_default();
  o.target = target;
  o.algorithm = algorithm;
  return o;
}

/* AMX is usable here exactly when MEMATTN_FAMILY=amx_bf16 runs bf16 (the planner prefers it). */
static int amx_usable(void) {
  setenv("MEMATTN_FAMILY", "amx_bf16", 1);
  const int usable = memattn_tile_family(MEMATTN_BF16, NULL) != NULL;
  unsetenv("MEMATTN_FAMILY");
  return usable;
}

static void test_plain_choices(int amx) {
  CHECK(is(memattn_tile_family(MEMATTN_F32, NULL), "f32_fma"));
  const memattn_options defaults = memattn_options_default();
  CHECK(is(memattn_tile_family(MEMATTN_F32, &defaults), "f32_fma"));
  CHECK(is(memattn_tile_family(MEMATTN_F16, NULL), "f32_fma"));
  if (has_target("avx512_bf16")) {
    const memattn_options o = with("avx512_bf16", MEMATTN_ALGORITHM_FLASH);
    CHECK(is(memattn_tile_family(MEMATTN_BF16, &o), amx ? "amx_bf16" : "bf16_dot"));
  } else {
    printf("skipped: bf16 on avx512_bf16 (this CPU has no AVX-512 BF16)\n");
  }
  const char* plain_targets[] = {"avx512", "avx2"}; /* no bf16 dot kernels */
  for (int i = 0; i < 2; ++i)
    if (has_target(plain_targets[i])) {
      const memattn_options o = with(plain_targets[i], MEMATTN_ALGORITHM_AUTOMATIC);
      CHECK(is(memattn_tile_family(MEMATTN_BF16, &o), amx ? "amx_bf16" : "f32_fma"));
    }
  const memattn_algorithm reference[] = {MEMATTN_ALGORITHM_NAIVE, MEMATTN_ALGORITHM_SEQUENTIAL,
                                         MEMATTN_ALGORITHM_CHUNKED};
  for (int i = 0; i < 3; ++i) {
    const memattn_options o = with(NULL, reference[i]);
    CHECK(is(memattn_tile_family(MEMATTN_BF16, &o), "none"));
    CHECK(is(memattn_tile_family(MEMATTN_F64, &o), "none"));
  }
  CHECK(is(memattn_tile_family(MEMATTN_F64, NULL), "none")); /* automatic: chunked for f64 */
}

static void test_errors(void) {
  CHECK(memattn_tile_family((memattn_dtype)99, NULL) == NULL &&
        last_error_has("dtype: expected one of MEMATTN_F32 (0)") && last_error_has("got 99"));
  CHECK(memattn_tile_family(MEMATTN_U8, NULL) == NULL &&
        last_error_has("dtype: expected one of f32, bf16, f16, f64, got u8"));
  CHECK(memattn_tile_family(MEMATTN_I64, NULL) == NULL &&
        last_error_has("dtype: expected one of f32, bf16, f16, f64, got i64"));
  memattn_options o = with("nope", MEMATTN_ALGORITHM_AUTOMATIC);
  CHECK(memattn_tile_family(MEMATTN_F32, &o) == NULL &&
        last_error_has("target: 'nope' is not a SIMD target"));
  o = with(NULL, (memattn_algorithm)42);
  CHECK(memattn_tile_family(MEMATTN_F32, &o) == NULL &&
        last_error_has("options.algorithm: expected one of MEMATTN_ALGORITHM_AUTOMATIC (0)"));
  o = with(NULL, MEMATTN_ALGORITHM_FLASH);
  CHECK(memattn_tile_family(MEMATTN_F64, &o) == NULL &&
        last_error_has("algorithm: flash takes f32, bf16 or f16 inputs, got f64"));
}

/* MEMATTN_FAMILY: the forced family, or the error memattn_forward also returns. */
static void test_forced_family(void) {
  const memattn_options o = problem_options();
  char message[1024];

  setenv("MEMATTN_FAMILY", "amx_bf16_emulated", 1);
  CHECK(is(memattn_tile_family(MEMATTN_BF16, NULL), "amx_bf16_emulated"));
  CHECK(memattn_tile_family(MEMATTN_F32, NULL) == NULL &&
        last_error_has("MEMATTN_FAMILY: amx_bf16_emulated cannot run this call (dtype f32, target "));
  snprintf(message, sizeof message, "%s", memattn_last_error());
  memset(out, 0xA5, sizeof out);
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_UNSUPPORTED &&
        strcmp(memattn_last_error(), message) == 0 && ((unsigned char*)out)[0] == 0xA5);
  const memattn_options naive = with(NULL, MEMATTN_ALGORITHM_NAIVE);
  CHECK(is(memattn_tile_family(MEMATTN_F32, &naive), "none")); /* read by flash calls only */

  setenv("MEMATTN_FAMILY", "bogus", 1);
  CHECK(memattn_tile_family(MEMATTN_BF16, NULL) == NULL &&
        strcmp(memattn_last_error(), "MEMATTN_FAMILY: expected f32_fma, bf16_dot, amx_bf16 or "
                                     "amx_bf16_emulated, got bogus") == 0);
  snprintf(message, sizeof message, "%s", memattn_last_error());
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) ==
            MEMATTN_INVALID_ARGUMENT &&
        strcmp(memattn_last_error(), message) == 0 && ((unsigned char*)out)[0] == 0xA5);
  size_t bytes = 0;
  CHECK(memattn_workspace_bytes(&tq, &tk, &tv, &o, &bytes) == MEMATTN_INVALID_ARGUMENT &&
        strcmp(memattn_last_error(), message) == 0);

  setenv("MEMATTN_FAMILY", "", 1); /* empty: as if unset */
  CHECK(is(memattn_tile_family(MEMATTN_F32, NULL), "f32_fma"));
  unsetenv("MEMATTN_FAMILY");
}

/* A bf16 problem large enough that the families' roundings show in out or lse. */
enum { N_Q = 24, N_K = 150, DIM = 64 };
static uint16_t bq[N_Q * DIM], bk[N_K * DIM], bv[N_K * DIM], bout[N_Q * DIM];
static float blse[N_Q];

static uint16_t to_bf16(float x) { /* round to nearest even; the values here are finite */
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

/* out and lse of the bf16 problem, with MEMATTN_FAMILY = family (NULL: unset), into the buffers. */
static int run_bf16(const char* family, uint16_t* out_bits, float* lse_values) {
  if (family) setenv("MEMATTN_FAMILY", family, 1);
  else unsetenv("MEMATTN_FAMILY");
  const memattn_tensor q_ = TENSOR(bq, MEMATTN_BF16, 1, N_Q, 1, DIM),
                       k_ = TENSOR(bk, MEMATTN_BF16, 1, N_K, 1, DIM),
                       v_ = TENSOR(bv, MEMATTN_BF16, 1, N_K, 1, DIM),
                       o_ = TENSOR(bout, MEMATTN_BF16, 1, N_Q, 1, DIM),
                       l_ = TENSOR(blse, MEMATTN_F32, 1, 1, N_Q);
  const memattn_options o = memattn_options_default();
  const int ok = memattn_forward(&q_, &k_, &v_, &o_, &l_, &o, kNoWorkspace) == MEMATTN_OK;
  memcpy(out_bits, bout, sizeof bout);
  memcpy(lse_values, blse, sizeof blse);
  unsetenv("MEMATTN_FAMILY");
  return ok;
}

/* The default bf16 call is bitwise the call forced onto the reported family, and differs from the
 * calls forced onto every other family that runs here (they round and sum differently), except
 * amx_bf16 and its exact emulation, which agree bitwise. */
static void test_reported_family_runs(void) {
  for (int i = 0; i < N_Q * DIM; ++i) bq[i] = to_bf16(sinf(0.71f * i + 0.3f));
  for (int i = 0; i < N_K * DIM; ++i) bk[i] = to_bf16(cosf(0.43f * i));
  for (int i = 0; i < N_K * DIM; ++i) bv[i] = to_bf16(sinf(0.19f * i + 2.0f));
  static uint16_t plain_out[N_Q * DIM], forced_out[N_Q * DIM];
  static float plain_lse[N_Q], forced_lse[N_Q];
  const char* reported = memattn_tile_family(MEMATTN_BF16, NULL);
  CHECK(reported != NULL && run_bf16(NULL, plain_out, plain_lse));
  if (!reported) return;
  const char* families[] = {"f32_fma", "bf16_dot", "amx_bf16", "amx_bf16_emulated"};
  int ran = 0;
  for (int f = 0; f < 4; ++f) {
    setenv("MEMATTN_FAMILY", families[f], 1);
    const int runs = memattn_tile_family(MEMATTN_BF16, NULL) != NULL;
    unsetenv("MEMATTN_FAMILY");
    if (!runs) continue;
    ++ran;
    CHECK(run_bf16(families[f], forced_out, forced_lse));
    const int same = memcmp(plain_out, forced_out, sizeof plain_out) == 0 &&
                     memcmp(plain_lse, forced_lse, sizeof plain_lse) == 0;
    const int amx_twins = strncmp(reported, "amx_bf16", 8) == 0 && strncmp(families[f], "amx_bf16", 8) == 0;
    if (strcmp(families[f], reported) == 0) CHECK(same);
    else if (!amx_twins) CHECK(!same);
    for (int i = 0; i < N_Q; ++i) CHECK(fabsf(forced_lse[i] - plain_lse[i]) < 1e-2f);
  }
  CHECK(ran >= 2); /* f32_fma and amx_bf16_emulated run bf16 anywhere */
}

/* memattn_backward_tile_family: AMX for bf16 head dims that are multiples of 32 where AMX is
 * usable, the bf16 dot products on avx512_bf16 otherwise, f32 for f32, none for naive; NULL and a
 * message naming the operand for a bad one. */
static void test_backward_family(int amx) {
  const memattn_tensor q64 = TENSOR(bq, MEMATTN_BF16, 1, N_Q, 1, DIM), k64 = TENSOR(bk, MEMATTN_BF16, 1, N_K, 1, DIM),
                       q48 = TENSOR(bq, MEMATTN_BF16, 1, N_Q, 1, 48), k48 = TENSOR(bk, MEMATTN_BF16, 1, N_K, 1, 48);
  const int dot = has_target("avx512_bf16");
  const memattn_options on_dot = with(dot ? "avx512_bf16" : NULL, MEMATTN_ALGORITHM_AUTOMATIC);
  CHECK(is(memattn_backward_tile_family(&q64, &k64, &k64, &on_dot), amx ? "amx_bf16" : dot ? "bf16_dot" : "f32_fma"));
  CHECK(is(memattn_backward_tile_family(&q48, &k48, &k64, &on_dot), dot ? "bf16_dot" : "f32_fma"));
  CHECK(is(memattn_backward_tile_family(&tq, &tk, &tv, NULL), "f32_fma"));
  /* decode-shaped: a group of 1 row scores by dot products on the f32 products, as its forward */
  const memattn_tensor q1 = TENSOR(bq, MEMATTN_BF16, 1, 1, 1, DIM);
  CHECK(is(memattn_backward_tile_family(&q1, &k64, &k64, &on_dot), "f32_fma"));
  const memattn_options naive = with(NULL, MEMATTN_ALGORITHM_NAIVE);
  CHECK(is(memattn_backward_tile_family(&q64, &k64, &k64, &naive), "none"));
  CHECK(memattn_backward_tile_family(&q64, &tk, &k64, NULL) == NULL && last_error_has("k"));
  CHECK(memattn_backward_tile_family(&q64, NULL, &k64, NULL) == NULL && last_error_has("k"));
}

int main(void) {
  unsetenv("MEMATTN_FAMILY");
  unsetenv("MEMATTN_TARGET");
  make_problem();
  const int amx = amx_usable();
  test_plain_choices(amx);
  test_errors();
  test_forced_family();
  test_reported_family_runs();
  test_backward_family(amx);
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed != 0;
}
