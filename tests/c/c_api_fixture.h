/* The C API tests' fixture: the CHECK counters, one attention problem and its naive reference. */
#ifndef MEMATTN_TESTS_C_API_FIXTURE_H
#define MEMATTN_TESTS_C_API_FIXTURE_H

#include <stdint.h>

#include "memattn/memattn.h"

extern int g_passed, g_failed;
/* Counts the outcome; on failure prints what failed and memattn_last_error(). Returns ok. */
int check(int ok, const char* what, const char* file, int line);
#define CHECK(cond) check((cond) != 0, #cond, __FILE__, __LINE__)

/* One problem: causal bottom-right, a mask with one fully masked row, a per-head bias, GQA (2 query
 * heads share 1 kv head), seq_q != seq_k and head_dim_v != head_dim, so that any index mix-up
 * shows. */
enum { SQ = 5, SK = 7, HQ = 2, HKV = 1, D = 8, DV = 6, MASKED_ROW = 3 };
#define SCALE 0.4f /* the softmax scale the problem passes in its options */

extern float q[SQ * HQ * D], k[SK * HKV * D], v[SK * HKV * DV], dout[SQ * HQ * DV];
extern float bias[HQ * SQ * SK];
extern uint8_t mask[SQ * SK];
extern float out[SQ * HQ * DV], lse[HQ * SQ], dq[SQ * HQ * D], dk[SK * HKV * D],
    dv[SK * HKV * DV], dbias[HQ * SQ * SK];
extern memattn_tensor tq, tk, tv, tdout, tbias, tmask, tout, tlse, tdq, tdk, tdv, tdbias;
extern const memattn_workspace kNoWorkspace;

memattn_tensor contiguous(void* data, memattn_dtype dtype, int ndim, const int64_t* shape);
/* A row-major tensor over `data` with the shape given as the remaining arguments. */
#define TENSOR(data, dtype, ...)                                                        \
  contiguous((data), (dtype), (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), \
             (int64_t[]){__VA_ARGS__})

/* Fills the inputs and makes the tensors above; problem_options() are the problem's options. */
void make_problem(void);
memattn_options problem_options(void);

/* The expected results, computed by compute_reference() in double from the inputs. */
struct Reference {
  double out[SQ * HQ * DV], lse[HQ * SQ], dq[SQ * HQ * D], dk[SK * HKV * D], dv[SK * HKV * DV],
      dbias[HQ * SQ * SK];
};
extern struct Reference ref;
void compute_reference(void);

/* Whether got matches want to within the tolerance the fixture justifies; prints the worst error
 * under `what` when not. */
int close_to(const float* got, const double* want, int n, const char* what);

#endif /* MEMATTN_TESTS_C_API_FIXTURE_H */
