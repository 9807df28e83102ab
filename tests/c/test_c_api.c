/* Tests of the C API, compiled as C: results against a naive attention in double, every status
 * code with its memattn_last_error message, and outputs left byte-for-byte untouched on error. */
#define _POSIX_C_SOURCE 200112L /* setenv, unsetenv */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "c_api_fixture.h"
#include "memattn/memattn.h"

#ifndef EXPECTED_VERSION
#error "EXPECTED_VERSION (the CMake project version) must be defined by tests/c/CMakeLists.txt"
#endif

static void test_forward_matches_reference(void) {
  const memattn_algorithm algorithms[] = {MEMATTN_ALGORITHM_AUTOMATIC, MEMATTN_ALGORITHM_NAIVE,
                                          MEMATTN_ALGORITHM_SEQUENTIAL, MEMATTN_ALGORITHM_CHUNKED,
                                          MEMATTN_ALGORITHM_FLASH};
  for (size_t a = 0; a < sizeof algorithms / sizeof *algorithms; ++a) {
    memattn_options o = problem_options();
    o.algorithm = algorithms[a];
    memset(out, 0xFF, sizeof out); /* NaN: an element left unwritten fails close_to */
    memset(lse, 0xFF, sizeof lse);
    CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
    CHECK(close_to(out, ref.out, SQ * HQ * DV, "out"));
    CHECK(close_to(lse, ref.lse, HQ * SQ, "lse"));
    for (int h = 0; h < HQ; ++h) /* the masked row: exactly +0 (and lse -inf, by close_to) */
      for (int e = 0; e < DV; ++e) {
        const float x = out[(MASKED_ROW * HQ + h) * DV + e];
        CHECK(x == 0.0f && !signbit(x));
      }
  }
}

static void test_backward_matches_reference(void) {
  const memattn_algorithm algorithms[] = {MEMATTN_ALGORITHM_AUTOMATIC, MEMATTN_ALGORITHM_NAIVE};
  for (size_t a = 0; a < sizeof algorithms / sizeof *algorithms; ++a) {
    memattn_options o = problem_options();
    o.algorithm = algorithms[a];
    CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
    float* gradients[] = {dq, dk, dv, dbias}; /* NaN: an element left unwritten fails close_to */
    size_t sizes[] = {sizeof dq, sizeof dk, sizeof dv, sizeof dbias};
    for (int i = 0; i < 4; ++i) memset(gradients[i], 0xFF, sizes[i]);
    CHECK(memattn_backward(&tq, &tk, &tv, &tout, &tdout, &tlse, &tdq, &tdk, &tdv, &o, &tdbias,
                           kNoWorkspace) == MEMATTN_OK);
    CHECK(close_to(dq, ref.dq, SQ * HQ * D, "dq"));
    CHECK(close_to(dk, ref.dk, SK * HKV * D, "dk"));
    CHECK(close_to(dv, ref.dv, SK * HKV * DV, "dv"));
    CHECK(close_to(dbias, ref.dbias, HQ * SQ * SK, "dbias"));
  }
}

/* ---- Errors: status, message, and outputs as they were ---- */

static void fill_outputs(void) {
  float* outputs[] = {out, lse, dq, dk, dv, dbias};
  size_t sizes[] = {sizeof out, sizeof lse, sizeof dq, sizeof dk, sizeof dv, sizeof dbias};
  for (int i = 0; i < 6; ++i) memset(outputs[i], 0xA5, sizes[i]);
}

static int outputs_untouched(void) {
  const unsigned char* outputs[] = {(void*)out, (void*)lse, (void*)dq,
                                    (void*)dk,  (void*)dv,  (void*)dbias};
  size_t sizes[] = {sizeof out, sizeof lse, sizeof dq, sizeof dk, sizeof dv, sizeof dbias};
  for (int i = 0; i < 6; ++i)
    for (size_t b = 0; b < sizes[i]; ++b)
      if (outputs[i][b] != 0xA5) return 0;
  return 1;
}

static void expect_failure(memattn_status got, memattn_status want, const char* const* needles,
                           const char* call, const char* file, int line) {
  char what[512];
  snprintf(what, sizeof what, "%s gives %s, expected %s", call, memattn_status_name(got),
           memattn_status_name(want));
  check(got == want, what, file, line);
  for (; *needles; ++needles) {
    snprintf(what, sizeof what, "%s: last error \"%s\" contains \"%s\"", call, memattn_last_error(),
             *needles);
    check(strstr(memattn_last_error(), *needles) != NULL, what, file, line);
  }
  snprintf(what, sizeof what, "%s leaves every output byte untouched", call);
  check(outputs_untouched(), what, file, line);
}
/* The call must fail with `status`, its message must contain each of the strings after it. */
#define EXPECT_FAILURE(call, status, ...)                                  \
  do {                                                                     \
    fill_outputs();                                                        \
    const char* needles_[] = {__VA_ARGS__, NULL};                          \
    expect_failure((call), (status), needles_, #call, __FILE__, __LINE__);           \
  } while (0)

static memattn_status forward_with(const memattn_tensor* q_, const memattn_tensor* k_,
                                   const memattn_tensor* out_, const memattn_tensor* lse_,
                                   const memattn_options* o) {
  return memattn_forward(q_, k_, &tv, out_, lse_, o, kNoWorkspace);
}

static memattn_status backward_with(const memattn_tensor* lse_, const memattn_tensor* dq_,
                                    const memattn_tensor* dbias_, const memattn_options* o,
                                    memattn_workspace w) {
  return memattn_backward(&tq, &tk, &tv, &tout, &tdout, lse_, dq_, &tdk, &tdv, o, dbias_, w);
}

static void test_null_pointers(void) {
  const memattn_options o = problem_options();
  size_t bytes = 12345;
  EXPECT_FAILURE(forward_with(NULL, &tk, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT, "q: null");
  EXPECT_FAILURE(forward_with(&tq, NULL, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT, "k: null");
  EXPECT_FAILURE(forward_with(&tq, &tk, NULL, &tlse, &o), MEMATTN_INVALID_ARGUMENT, "out: null");
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &tlse, NULL), MEMATTN_INVALID_ARGUMENT,
                 "options: null");
  EXPECT_FAILURE(backward_with(NULL, &tdq, &tdbias, &o, kNoWorkspace), MEMATTN_INVALID_ARGUMENT,
                 "lse: null");
  EXPECT_FAILURE(backward_with(&tlse, NULL, &tdbias, &o, kNoWorkspace), MEMATTN_INVALID_ARGUMENT,
                 "dq: null");
  EXPECT_FAILURE(memattn_workspace_bytes(&tq, &tk, &tv, &o, NULL), MEMATTN_INVALID_ARGUMENT,
                 "bytes: null");
  EXPECT_FAILURE(memattn_backward_workspace_bytes(&tq, &tk, NULL, &o, 1, &bytes),
                 MEMATTN_INVALID_ARGUMENT, "v: null");
  CHECK(bytes == 12345);
  EXPECT_FAILURE(memattn_set_allocator(NULL, NULL), MEMATTN_INVALID_ARGUMENT, "allocator: null");
}

/* MEMATTN_BACKWARD=fused|passes: the f32 flash backward's two ways give the same bits; another
 * value fails before any write. */
static void test_backward_ways(void) {
  memattn_options o = problem_options();
  o.algorithm = MEMATTN_ALGORITHM_FLASH;
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
  static float want_dq[SQ * HQ * D], want_dk[SK * HKV * D], want_dv[SK * HKV * DV];
  setenv("MEMATTN_BACKWARD", "passes", 1);
  CHECK(backward_with(&tlse, &tdq, NULL, &o, kNoWorkspace) == MEMATTN_OK);
  memcpy(want_dq, dq, sizeof dq), memcpy(want_dk, dk, sizeof dk), memcpy(want_dv, dv, sizeof dv);
  setenv("MEMATTN_BACKWARD", "fused", 1);
  CHECK(backward_with(&tlse, &tdq, NULL, &o, kNoWorkspace) == MEMATTN_OK);
  CHECK(memcmp(want_dq, dq, sizeof dq) == 0 && memcmp(want_dk, dk, sizeof dk) == 0 &&
        memcmp(want_dv, dv, sizeof dv) == 0);
  setenv("MEMATTN_BACKWARD", "both", 1);
  EXPECT_FAILURE(backward_with(&tlse, &tdq, NULL, &o, kNoWorkspace), MEMATTN_INVALID_ARGUMENT,
                 "MEMATTN_BACKWARD: expected fused or passes, got both");
  unsetenv("MEMATTN_BACKWARD");
}

static void test_enums_out_of_range(void) {
  memattn_options o = problem_options();
  memattn_tensor bad = tq;
  bad.dtype = (memattn_dtype)99;
  EXPECT_FAILURE(forward_with(&bad, &tk, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT, "q.dtype",
                 "MEMATTN_F32 (0)", "MEMATTN_I64 (6)", "got 99");
  bad = tlse;
  bad.dtype = (memattn_dtype)-1;
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &bad, &o), MEMATTN_INVALID_ARGUMENT, "lse.dtype",
                 "got -1");
  bad = tmask;
  bad.dtype = (memattn_dtype)7;
  o.mask = &bad;
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT,
                 "options.mask.dtype", "got 7");
  o = problem_options();
  o.algorithm = (memattn_algorithm)42;
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT,
                 "options.algorithm", "MEMATTN_ALGORITHM_AUTOMATIC (0)",
                 "MEMATTN_ALGORITHM_FLASH (4)", "got 42");
  o = problem_options();
  o.align = (memattn_align)7;
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT,
                 "options.align", "MEMATTN_ALIGN_TOP_LEFT (0)", "MEMATTN_ALIGN_BOTTOM_RIGHT (1)",
                 "got 7");
  o = problem_options();
  bad = tdbias;
  bad.dtype = (memattn_dtype)99;
  EXPECT_FAILURE(backward_with(&tlse, &tdq, &bad, &o, kNoWorkspace), MEMATTN_INVALID_ARGUMENT,
                 "dbias.dtype", "got 99");
}

static void test_errors_of_the_library(void) {
  const memattn_options o = problem_options();
  memattn_tensor bad = TENSOR(k, MEMATTN_F32, 1, SK, HKV, D - 1);
  EXPECT_FAILURE(forward_with(&tq, &bad, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT,
                 "q.shape[-1] (8) != k.shape[-1] (7)");
  bad = tq; /* ndim is an int C may set to anything: validated, never used to index */
  bad.ndim = 99;
  EXPECT_FAILURE(forward_with(&bad, &tk, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT,
                 "q, k, v must have the same rank");
  bad = tlse;
  bad.ndim = -1;
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &bad, &o), MEMATTN_INVALID_ARGUMENT,
                 "lse: expected 3 dimensions, got -1");
  /* 2^40 x 2^40 broadcast elements: zero strides keep the memory small, the count overflows. */
  bad = tq;
  bad.shape[0] = bad.shape[1] = (int64_t)1 << 40;
  bad.strides[0] = bad.strides[1] = 0;
  EXPECT_FAILURE(forward_with(&bad, &tk, &tout, &tlse, &o), MEMATTN_SIZE_OVERFLOW,
                 "q: tensor size overflows int64");
  bad = TENSOR(q, MEMATTN_F32, 1, SQ, HQ, DV); /* out over q's memory */
  float q_before[sizeof q / sizeof *q];
  memcpy(q_before, q, sizeof q);
  EXPECT_FAILURE(forward_with(&tq, &tk, &bad, &tlse, &o), MEMATTN_ALIASING, "out", "q");
  CHECK(memcmp(q, q_before, sizeof q) == 0);
  bad = TENSOR(lse, MEMATTN_F16, 1, HQ, SQ);
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &bad, &o), MEMATTN_WRONG_DTYPE,
                 "lse: dtype must be f32, got f16");
  bad = TENSOR(dq, MEMATTN_BF16, 1, SQ, HQ, D);
  EXPECT_FAILURE(backward_with(&tlse, &bad, &tdbias, &o, kNoWorkspace), MEMATTN_WRONG_DTYPE,
                 "dq: dtype must be f32, got bf16");
  memattn_options target = o;
  target.target = "no-such-target";
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &tlse, &target), MEMATTN_INVALID_ARGUMENT,
                 "'no-such-target' is not a SIMD target");
  memattn_options sequential = o;
  sequential.algorithm = MEMATTN_ALGORITHM_SEQUENTIAL;
  EXPECT_FAILURE(backward_with(&tlse, &tdq, &tdbias, &sequential, kNoWorkspace),
                 MEMATTN_UNSUPPORTED, "backward supports naive and flash", "sequential");

  /* f64 inputs take the reference algorithms only. */
  static double q64[SQ * HQ * D], k64[SK * HKV * D], v64[SK * HKV * DV], out64[SQ * HQ * DV];
  const memattn_tensor tq64 = TENSOR(q64, MEMATTN_F64, 1, SQ, HQ, D),
                       tk64 = TENSOR(k64, MEMATTN_F64, 1, SK, HKV, D),
                       tv64 = TENSOR(v64, MEMATTN_F64, 1, SK, HKV, DV),
                       tout64 = TENSOR(out64, MEMATTN_F64, 1, SQ, HQ, DV);
  memattn_options flash = memattn_options_default();
  flash.algorithm = MEMATTN_ALGORITHM_FLASH;
  memset(out64, 0xA5, sizeof out64);
  EXPECT_FAILURE(memattn_forward(&tq64, &tk64, &tv64, &tout64, NULL, &flash, kNoWorkspace),
                 MEMATTN_UNSUPPORTED, "flash", "f64");
  for (size_t b = 0; b < sizeof out64; ++b) CHECK(((unsigned char*)out64)[b] == 0xA5);
}

static void test_workspace_too_small(void) {
  const memattn_options o = problem_options();
  static unsigned char workspace[1 << 20];
  size_t need = 0, need_backward = 0;
  CHECK(memattn_workspace_bytes(&tq, &tk, &tv, &o, &need) == MEMATTN_OK);
  CHECK(memattn_backward_workspace_bytes(&tq, &tk, &tv, &o, 1, &need_backward) == MEMATTN_OK);
  CHECK(need > 0 && need <= sizeof workspace && need_backward > 0 &&
        need_backward <= sizeof workspace);
  char message[128];
  snprintf(message, sizeof message, "need %zu bytes, got %zu", need, need - 1);
  const memattn_workspace short_one = {workspace, need - 1};
  EXPECT_FAILURE(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, short_one),
                 MEMATTN_WORKSPACE_TOO_SMALL, "workspace too small", message);
  snprintf(message, sizeof message, "need %zu bytes, got %zu", need_backward, need_backward - 1);
  const memattn_workspace short_backward = {workspace, need_backward - 1};
  EXPECT_FAILURE(backward_with(&tlse, &tdq, &tdbias, &o, short_backward),
                 MEMATTN_WORKSPACE_TOO_SMALL, "workspace too small", message);
  const memattn_workspace exact = {workspace, need};
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, exact) == MEMATTN_OK);
  CHECK(close_to(out, ref.out, SQ * HQ * DV, "out with a caller workspace"));
}

/* Allocators: one that counts what it hands out (and frees), one that always fails. */
typedef struct {
  int allocations, deallocations;
  size_t bytes;
} Counts;

static void* counting_allocate(size_t bytes, size_t alignment, void* context) {
  Counts* c = context;
  ++c->allocations;
  c->bytes += bytes;
  return aligned_alloc(alignment, (bytes + alignment - 1) / alignment * alignment);
}
static void counting_deallocate(void* p, size_t bytes, void* context) {
  (void)bytes;
  ++((Counts*)context)->deallocations;
  free(p);
}
static void* failing_allocate(size_t bytes, size_t alignment, void* context) {
  (void)bytes, (void)alignment;
  ++((Counts*)context)->allocations;
  return NULL;
}

static void test_allocators(void) {
  const memattn_options o = problem_options();
  size_t need = 0;
  CHECK(memattn_workspace_bytes(&tq, &tk, &tv, &o, &need) == MEMATTN_OK && need > 0);

  Counts counted = {0, 0, 0}, failed = {0, 0, 0};
  const memattn_allocator counting = {counting_allocate, counting_deallocate, &counted};
  const memattn_allocator failing = {failing_allocate, counting_deallocate, &failed};
  memattn_allocator original, replaced;
  CHECK(memattn_set_allocator(&counting, &original) == MEMATTN_OK);
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
  CHECK(counted.allocations == 1 && counted.deallocations == 1 && counted.bytes == need);

  CHECK(memattn_set_allocator(&failing, &replaced) == MEMATTN_OK);
  CHECK(replaced.allocate == counting_allocate && replaced.context == &counted);
  char message[128];
  snprintf(message, sizeof message, "failed to allocate %zu bytes", need);
  EXPECT_FAILURE(forward_with(&tq, &tk, &tout, &tlse, &o), MEMATTN_OUT_OF_MEMORY, message);
  EXPECT_FAILURE(backward_with(&tlse, &tdq, &tdbias, &o, kNoWorkspace), MEMATTN_OUT_OF_MEMORY,
                 "failed to allocate");
  CHECK(failed.allocations == 2 && failed.deallocations == 0);

  const memattn_allocator half = {failing_allocate, NULL, &failed};
  EXPECT_FAILURE(memattn_set_allocator(&half, NULL), MEMATTN_INVALID_ARGUMENT,
                 "allocate and deallocate must both be set or both be null");
  CHECK(memattn_set_allocator(&original, NULL) == MEMATTN_OK);
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
  CHECK(failed.allocations == 2 && counted.allocations == 1);
}

static void* last_error_of_new_thread(void* result) {
  *(int*)result = strcmp(memattn_last_error(), "") == 0;
  return NULL;
}

static void test_last_error_and_names(void) {
  const memattn_options o = problem_options();
  EXPECT_FAILURE(forward_with(NULL, &tk, &tout, &tlse, &o), MEMATTN_INVALID_ARGUMENT, "q: null");
  CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &o, kNoWorkspace) == MEMATTN_OK);
  CHECK(strstr(memattn_last_error(), "q: null") != NULL); /* a success leaves the message */
  int fresh = 0;
  pthread_t thread;
  CHECK(pthread_create(&thread, NULL, last_error_of_new_thread, &fresh) == 0);
  CHECK(pthread_join(thread, NULL) == 0 && fresh); /* per thread: another thread sees "" */

  const char* names[] = {"MEMATTN_OK",        "MEMATTN_INVALID_ARGUMENT", "MEMATTN_SIZE_OVERFLOW",
                         "MEMATTN_WORKSPACE_TOO_SMALL", "MEMATTN_ALIASING",
                         "MEMATTN_OUT_OF_MEMORY",       "MEMATTN_UNSUPPORTED",
                         "MEMATTN_WRONG_DTYPE"};
  for (int s = 0; s < 8; ++s) CHECK(strcmp(memattn_status_name((memattn_status)s), names[s]) == 0);
  CHECK(MEMATTN_OK == 0 && MEMATTN_INVALID_ARGUMENT == 1 && MEMATTN_SIZE_OVERFLOW == 2 &&
        MEMATTN_WORKSPACE_TOO_SMALL == 3 && MEMATTN_ALIASING == 4 && MEMATTN_OUT_OF_MEMORY == 5 &&
        MEMATTN_UNSUPPORTED == 6 && MEMATTN_WRONG_DTYPE == 7);
  CHECK(strcmp(memattn_status_name(MEMATTN_INTERNAL), "MEMATTN_INTERNAL") == 0);
  CHECK(strcmp(memattn_status_name((memattn_status)42), "unknown status") == 0);
  CHECK(strcmp(memattn_version(), EXPECTED_VERSION) == 0);

  /* Every listed target runs the problem. */
  char targets[256];
  snprintf(targets, sizeof targets, "%s", memattn_supported_targets());
  CHECK(targets[0] != '\0' && strchr(targets, ' ') == NULL);
  for (char* name = strtok(targets, ","); name; name = strtok(NULL, ",")) {
    memattn_options with_target = o;
    with_target.target = name;
    CHECK(memattn_forward(&tq, &tk, &tv, &tout, &tlse, &with_target, kNoWorkspace) == MEMATTN_OK);
    CHECK(close_to(out, ref.out, SQ * HQ * DV, name));
  }
}

/* A decode call (4 queries, 4 : 2 heads against 5000 keys: the grouped items with 3 key splits
 * merged) agrees with the same call on the dense items (an explicit query_chunk), and its lse with
 * the dense lse, within f32 rounding of the different summation order. */
static void test_decode_items_match_dense(void) {
  enum { DSQ = 4, DSK = 5000, DHQ = 4, DHKV = 2, DD = 16 };
  static float dq_[DSQ * DHQ * DD], dk_[DSK * DHKV * DD], dv_[DSK * DHKV * DD];
  static float o_split[DSQ * DHQ * DD], o_dense[DSQ * DHQ * DD], l_split[DHQ * DSQ], l_dense[DHQ * DSQ];
  uint32_t seed = 12345;
  float* fills[] = {dq_, dk_, dv_};
  const size_t sizes[] = {DSQ * DHQ * DD, DSK * DHKV * DD, DSK * DHKV * DD};
  for (int f = 0; f < 3; ++f)
    for (size_t i = 0; i < sizes[f]; ++i) {
      seed = seed * 1664525u + 1013904223u;
      fills[f][i] = (float)(seed >> 8) / 16777216.0f * 2.0f - 1.0f;
    }
  const memattn_tensor q_t = TENSOR(dq_, MEMATTN_F32, 1, DSQ, DHQ, DD), k_t = TENSOR(dk_, MEMATTN_F32, 1, DSK, DHKV, DD),
                       v_t = TENSOR(dv_, MEMATTN_F32, 1, DSK, DHKV, DD);
  const memattn_tensor os = TENSOR(o_split, MEMATTN_F32, 1, DSQ, DHQ, DD), od = TENSOR(o_dense, MEMATTN_F32, 1, DSQ, DHQ, DD);
  const memattn_tensor ls = TENSOR(l_split, MEMATTN_F32, 1, DHQ, DSQ), ld = TENSOR(l_dense, MEMATTN_F32, 1, DHQ, DSQ);
  memattn_options o = memattn_options_default();
  o.causal = 1;
  o.align = MEMATTN_ALIGN_BOTTOM_RIGHT;
  CHECK(memattn_forward(&q_t, &k_t, &v_t, &os, &ls, &o, kNoWorkspace) == MEMATTN_OK);
  o.query_chunk = DSQ;
  CHECK(memattn_forward(&q_t, &k_t, &v_t, &od, &ld, &o, kNoWorkspace) == MEMATTN_OK);
  float worst = 0.0f, worst_lse = 0.0f;
  for (int i = 0; i < DSQ * DHQ * DD; ++i) worst = fmaxf(worst, fabsf(o_split[i] - o_dense[i]));
  for (int i = 0; i < DHQ * DSQ; ++i) worst_lse = fmaxf(worst_lse, fabsf(l_split[i] - l_dense[i]));
  CHECK(worst <= 1e-5f);
  CHECK(worst_lse <= 1e-5f);
}

int main(void) {
  CHECK(strcmp(memattn_last_error(), "") == 0); /* no call has failed yet */
  make_problem();
  compute_reference();
  test_forward_matches_reference();
  test_backward_matches_reference();
  test_null_pointers();
  test_backward_ways();
  test_enums_out_of_range();
  test_errors_of_the_library();
  test_workspace_too_small();
  test_allocators();
  test_last_error_and_names();
  test_decode_items_match_dense();
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed != 0;
}
