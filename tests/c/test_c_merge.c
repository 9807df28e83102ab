/* Tests of memattn_merge, compiled as C: the fixture's problem computed on slices of its keys and
 * merged back against its naive reference, zero parts, in place, and the errors with outputs left
 * byte-for-byte untouched. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "c_api_fixture.h"
#include "memattn/memattn.h"

enum { PARTS = 3 };
static const int kCuts[PARTS + 1] = {0, 3, 3, SK}; /* part 1 has no key */

static uint8_t visible[SQ * SK]; /* the fixture's mask and its causal bottom-right diagonal */
static float part_out[PARTS][SQ * HQ * DV], part_lse[PARTS][HQ * SQ];
static memattn_tensor touts[PARTS], tlses[PARTS];

/* Attention over keys [kCuts[p], kCuts[p + 1]) with the problem's scale, bias and visibility. */
static void run_parts(void) {
  for (int i = 0; i < SQ; ++i)
    for (int j = 0; j < SK; ++j) visible[i * SK + j] = mask[i * SK + j] && j <= i + SK - SQ;
  for (int p = 0; p < PARTS; ++p) {
    const int j0 = kCuts[p], n = kCuts[p + 1] - kCuts[p];
    memattn_tensor ks = tk, vs = tv, ms = TENSOR(visible + j0, MEMATTN_U8, 1, 1, SQ, SK),
                   bs = tbias;
    ks.data = k + j0 * HKV * D;
    vs.data = v + j0 * HKV * DV;
    bs.data = bias + j0;
    ks.shape[1] = vs.shape[1] = n;
    ms.shape[3] = bs.shape[3] = n;
    memattn_options o = memattn_options_default();
    o.has_scale = 1;
    o.scale = SCALE;
    o.mask = &ms;
    o.bias = &bs;
    touts[p] = TENSOR(part_out[p], MEMATTN_F32, 1, SQ, HQ, DV);
    tlses[p] = TENSOR(part_lse[p], MEMATTN_F32, 1, HQ, SQ);
    CHECK(memattn_forward(&tq, &ks, &vs, &touts[p], &tlses[p], &o, kNoWorkspace) == MEMATTN_OK);
  }
  memset(part_out[1], 0xFF, sizeof part_out[1]); /* NaN: the empty part must not be read */
}

static int masked_row_is_zero(void) {
  int ok = 1;
  for (int h = 0; h < HQ; ++h)
    for (int e = 0; e < DV; ++e) {
      const float x = out[(MASKED_ROW * HQ + h) * DV + e];
      ok = ok && x == 0.0f && !signbit(x);
    }
  return ok;
}

static void test_merge_matches_reference(void) {
  memset(out, 0xFF, sizeof out);
  memset(lse, 0xFF, sizeof lse);
  CHECK(memattn_merge(touts, tlses, PARTS, &tout, &tlse) == MEMATTN_OK);
  CHECK(close_to(out, ref.out, SQ * HQ * DV, "merged out"));
  CHECK(close_to(lse, ref.lse, HQ * SQ, "merged lse"));
  CHECK(masked_row_is_zero());
  CHECK(memattn_merge(touts, tlses, PARTS, &tout, NULL) == MEMATTN_OK); /* lse is optional */
  CHECK(close_to(out, ref.out, SQ * HQ * DV, "merged out without lse"));
}

static void test_zero_parts(void) {
  memset(out, 0xFF, sizeof out);
  memset(lse, 0xFF, sizeof lse);
  CHECK(memattn_merge(NULL, NULL, 0, &tout, &tlse) == MEMATTN_OK);
  int ok = 1;
  for (int i = 0; i < SQ * HQ * DV; ++i) ok = ok && out[i] == 0.0f && !signbit(out[i]);
  for (int i = 0; i < HQ * SQ; ++i) ok = ok && isinf(lse[i]) && lse[i] < 0;
  CHECK(ok);
}

static void test_in_place(void) {
  static float saved_out[SQ * HQ * DV], saved_lse[HQ * SQ];
  memcpy(saved_out, part_out[2], sizeof saved_out);
  memcpy(saved_lse, part_lse[2], sizeof saved_lse);
  CHECK(memattn_merge(touts, tlses, PARTS, &touts[2], &tlses[2]) == MEMATTN_OK);
  CHECK(close_to(part_out[2], ref.out, SQ * HQ * DV, "in-place out"));
  CHECK(close_to(part_lse[2], ref.lse, HQ * SQ, "in-place lse"));
  memcpy(part_out[2], saved_out, sizeof saved_out);
  memcpy(part_lse[2], saved_lse, sizeof saved_lse);
}

/* ---- Errors: status, message, and out and lse as they were ---- */

static int untouched(void) {
  const unsigned char* bytes[] = {(const void*)out, (const void*)lse};
  const size_t sizes[] = {sizeof out, sizeof lse};
  for (int i = 0; i < 2; ++i)
    for (size_t b = 0; b < sizes[i]; ++b)
      if (bytes[i][b] != 0xA5) return 0;
  return 1;
}

static void expect_failure(memattn_status got, memattn_status want, const char* needle,
                           const char* call, int line) {
  char what[512];
  snprintf(what, sizeof what, "%s gives %s, expected %s", call, memattn_status_name(got),
           memattn_status_name(want));
  check(got == want, what, __FILE__, line);
  snprintf(what, sizeof what, "%s: last error \"%s\" contains \"%s\"", call, memattn_last_error(),
           needle);
  check(strstr(memattn_last_error(), needle) != NULL, what, __FILE__, line);
  snprintf(what, sizeof what, "%s leaves out and lse untouched", call);
  check(untouched(), what, __FILE__, line);
}
#define EXPECT_FAILURE(call, status, needle)                    \
  do {                                                          \
    memset(out, 0xA5, sizeof out);                              \
    memset(lse, 0xA5, sizeof lse);                              \
    expect_failure((call), (status), (needle), #call, __LINE__); \
  } while (0)

static void test_errors(void) {
  EXPECT_FAILURE(memattn_merge(NULL, tlses, PARTS, &tout, &tlse), MEMATTN_INVALID_ARGUMENT,
                 "outs: null pointer");
  EXPECT_FAILURE(memattn_merge(touts, NULL, PARTS, &tout, &tlse), MEMATTN_INVALID_ARGUMENT,
                 "lses: null pointer");
  EXPECT_FAILURE(memattn_merge(touts, tlses, PARTS, NULL, &tlse), MEMATTN_INVALID_ARGUMENT,
                 "out: null pointer");
  memattn_tensor bad[PARTS];
  memcpy(bad, tlses, sizeof bad);
  bad[2].dtype = (memattn_dtype)99;
  EXPECT_FAILURE(memattn_merge(touts, bad, PARTS, &tout, &tlse), MEMATTN_INVALID_ARGUMENT,
                 "lses[2].dtype: expected one of MEMATTN_F32 (0)");
  bad[2].dtype = MEMATTN_F16;
  EXPECT_FAILURE(memattn_merge(touts, bad, PARTS, &tout, &tlse), MEMATTN_WRONG_DTYPE,
                 "lses[2]: dtype must be f32, got f16");
  memcpy(bad, touts, sizeof bad);
  bad[1].shape[3] = DV - 1;
  EXPECT_FAILURE(memattn_merge(bad, tlses, PARTS, &tout, &tlse), MEMATTN_INVALID_ARGUMENT,
                 "outs[1]: shape [1,5,2,5] expected [1,5,2,6]");
  EXPECT_FAILURE(memattn_merge(touts, tlses, PARTS, &tout, &touts[0]), MEMATTN_INVALID_ARGUMENT,
                 "lse: expected 3 dimensions, got 4");
  memattn_tensor over = TENSOR(out, MEMATTN_F32, 1, HQ, SQ); /* lse on top of out */
  EXPECT_FAILURE(memattn_merge(touts, tlses, PARTS, &tout, &over), MEMATTN_ALIASING,
                 "some elements of out and lse refer to a single memory location");
}

int main(void) {
  make_problem();
  compute_reference();
  run_parts();
  test_merge_matches_reference();
  test_zero_parts();
  test_in_place();
  test_errors();
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed != 0;
}
