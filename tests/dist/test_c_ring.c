/* The C entry points of memattn_dist, compiled as C and run under mpirun: the C fixture's problem
 * (GQA, seq_q != seq_k, causal bottom-right, a mask with a fully masked row, a per-head bias) cut
 * into each rank's zigzag slices (the mask and bias: its query rows against every key), forward
 * and backward (dbias through memattn_ring_backward_ex) checked against its naive double
 * reference, and a NULL tensor on one rank failing every rank alike. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "c_api_fixture.h"
#include "memattn/memattn_dist.h"

static int rank, ranks;
static memattn_ring_options options;
static memattn_ring_slices mine;

/* This rank's rows of a [1, seq, heads, dim] array (`keys`: its key slices, else its query ones).
 */
static void take_rows(const float* global, float* local, int width, int keys) {
  int64_t at = 0;
  for (int c = 0; c < mine.count; ++c) {
    const memattn_range r = keys ? mine.k[c] : mine.q[c];
    memcpy(local + at * width, global + r.start * width,
           (size_t)(r.length * width) * sizeof(float));
    at += r.length;
  }
}

/* This rank's query rows of a [1, heads, SQ, SK] mask or bias (elements of `size` bytes). */
static void take_query_rows(const void* global, void* local, int heads, size_t size) {
  int64_t at = 0;
  for (int c = 0; c < mine.count; ++c) {
    const memattn_range r = mine.q[c];
    for (int h = 0; h < heads; ++h)
      memcpy((char*)local + (size_t)((h * mine.seq_q + at) * SK) * size,
             (const char*)global + (size_t)((h * SQ + r.start) * SK) * size, (size_t)(r.length * SK) * size);
    at += r.length;
  }
}

/* close_to() on this rank's rows of the [HQ, SQ, SK] reference dbias. */
static int dbias_rows_close(const float* local) {
  static double want[HQ * SQ * SK];
  static float got[HQ * SQ * SK];
  int n = 0, at = 0;
  for (int c = 0; c < mine.count; ++c) {
    const memattn_range r = mine.q[c];
    for (int64_t i = 0; i < r.length; ++i, ++at)
      for (int h = 0; h < HQ; ++h)
        for (int j = 0; j < SK; ++j, ++n) {
          want[n] = ref.dbias[(h * SQ + r.start + i) * SK + j];
          got[n] = local[(h * mine.seq_q + at) * SK + j];
        }
  }
  return close_to(got, want, n, "ring dbias");
}

/* close_to() on this rank's rows of a [1, seq, heads, dim] reference (lse: [heads, seq] rows). */
static int rows_close(const float* local, const double* global, int width, int keys, int lse_heads,
                      const char* what) {
  static double want[SK * HQ * D];
  static float got[SK * HQ * D];
  int n = 0, at = 0;
  for (int c = 0; c < mine.count; ++c) {
    const memattn_range r = keys ? mine.k[c] : mine.q[c];
    for (int64_t i = 0; i < r.length; ++i, ++at)
      for (int e = 0; e < width; ++e, ++n) {
        if (lse_heads) { /* lse: element e is head e of query row i */
          want[n] = global[e * SQ + r.start + i];
          got[n] = local[e * mine.seq_q + at];
        } else {
          want[n] = global[(r.start + i) * width + e];
          got[n] = local[at * width + e];
        }
      }
  }
  return close_to(got, want, n, what);
}

static void test_forward_backward(void) {
  static float lq[SQ * HQ * D], lk[SK * HKV * D], lv[SK * HKV * DV], ldout[SQ * HQ * DV];
  static float lout[SQ * HQ * DV], llse[HQ * SQ], ldq[SQ * HQ * D], ldk[SK * HKV * D],
      ldv[SK * HKV * DV], lbias[HQ * SQ * SK], ldbias[HQ * SQ * SK];
  static uint8_t lmask[SQ * SK];
  take_rows(q, lq, HQ * D, 0);
  take_rows(k, lk, HKV * D, 1);
  take_rows(v, lv, HKV * DV, 1);
  take_rows(dout, ldout, HQ * DV, 0);
  take_query_rows(mask, lmask, 1, sizeof *mask);
  take_query_rows(bias, lbias, HQ, sizeof *bias);
  const int64_t nq = mine.seq_q, nk = mine.seq_k;
  const memattn_tensor tmask_ = TENSOR(lmask, MEMATTN_U8, 1, 1, nq, SK),
                       tbias_ = TENSOR(lbias, MEMATTN_F32, 1, HQ, nq, SK),
                       tdbias_ = TENSOR(ldbias, MEMATTN_F32, 1, HQ, nq, SK);
  options.attention.mask = &tmask_;
  options.attention.bias = &tbias_;
  const memattn_tensor tq_ = TENSOR(lq, MEMATTN_F32, 1, nq, HQ, D),
                       tk_ = TENSOR(lk, MEMATTN_F32, 1, nk, HKV, D),
                       tv_ = TENSOR(lv, MEMATTN_F32, 1, nk, HKV, DV),
                       tdout_ = TENSOR(ldout, MEMATTN_F32, 1, nq, HQ, DV),
                       tout_ = TENSOR(lout, MEMATTN_F32, 1, nq, HQ, DV),
                       tlse_ = TENSOR(llse, MEMATTN_F32, 1, HQ, nq),
                       tdq_ = TENSOR(ldq, MEMATTN_F32, 1, nq, HQ, D),
                       tdk_ = TENSOR(ldk, MEMATTN_F32, 1, nk, HKV, D),
                       tdv_ = TENSOR(ldv, MEMATTN_F32, 1, nk, HKV, DV);
  memset(lout, 0xFF, sizeof lout); /* NaN: rows left unwritten fail */
  CHECK(memattn_ring_forward(&tq_, &tk_, &tv_, &tout_, &tlse_, &options, MPI_COMM_WORLD) ==
        MEMATTN_OK);
  CHECK(rows_close(lout, ref.out, HQ * DV, 0, 0, "ring out"));
  CHECK(rows_close(llse, ref.lse, HQ, 0, 1, "ring lse"));
  memset(ldbias, 0xFF, sizeof ldbias);
  CHECK(memattn_ring_backward_ex(&tq_, &tk_, &tv_, &tout_, &tdout_, &tlse_, &tdq_, &tdk_, &tdv_, &tdbias_,
                                 &options, MPI_COMM_WORLD) == MEMATTN_OK);
  CHECK(rows_close(ldq, ref.dq, HQ * D, 0, 0, "ring dq"));
  CHECK(rows_close(ldk, ref.dk, HKV * D, 1, 0, "ring dk"));
  CHECK(rows_close(ldv, ref.dv, HKV * DV, 1, 0, "ring dv"));
  CHECK(dbias_rows_close(ldbias));
  options.attention.mask = options.attention.bias = NULL;
}

/* The last rank passes k = NULL: every rank gets MEMATTN_INVALID_ARGUMENT naming it, out untouched.
 */
static void test_null_tensor_on_one_rank(void) {
  static float lout[SQ * HQ * DV];
  memset(lout, 0xA5, sizeof lout);
  const memattn_tensor tq_ = TENSOR(q, MEMATTN_F32, 1, mine.seq_q, HQ, D),
                       tk_ = TENSOR(k, MEMATTN_F32, 1, mine.seq_k, HKV, D),
                       tv_ = TENSOR(v, MEMATTN_F32, 1, mine.seq_k, HKV, DV),
                       tout_ = TENSOR(lout, MEMATTN_F32, 1, mine.seq_q, HQ, DV);
  const memattn_status s = memattn_ring_forward(&tq_, rank == ranks - 1 ? NULL : &tk_, &tv_, &tout_,
                                                NULL, &options, MPI_COMM_WORLD);
  char want[64];
  snprintf(want, sizeof want, "rank %d: k: null pointer", ranks - 1);
  CHECK(s == MEMATTN_INVALID_ARGUMENT);
  CHECK(strncmp(memattn_last_error(), want, strlen(want)) == 0);
  int untouched = 1;
  for (size_t b = 0; b < sizeof lout; ++b)
    untouched = untouched && ((unsigned char*)lout)[b] == 0xA5;
  CHECK(untouched);
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &ranks);
  make_problem();
  compute_reference();
  options = memattn_ring_options_default();
  options.attention = problem_options();
  options.attention.mask = options.attention.bias = NULL;
  options.placement = MEMATTN_PLACEMENT_ZIGZAG;
  options.seq_q = SQ;
  options.seq_k = SK;
  CHECK(memattn_ring_local_slices(&options, ranks, rank, &mine) == MEMATTN_OK);
  test_forward_backward();
  test_null_tensor_on_one_rank();
  int failed = g_failed;
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  printf("rank %d: %d passed, %d failed\n", rank, g_passed, g_failed);
  MPI_Finalize();
  return failed != 0;
}
