/* memattn's ring attention over MPI for C (library memattn_dist): the C++ memattn::dist calls
 * (memattn/dist.hpp) with C types; statuses and memattn_last_error() as in memattn/memattn.h. */
#ifndef MEMATTN_MEMATTN_DIST_H
#define MEMATTN_MEMATTN_DIST_H

#include <mpi.h>
#include <stdint.h>

#include "memattn/memattn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* How the global sequence is cut: R chunks, rank r holding chunk r (contiguous), or 2R chunks,
 * rank r holding chunks r and 2R-1-r in that order (zigzag: balanced under a causal mask). */
enum { MEMATTN_PLACEMENT_CONTIGUOUS = 0, MEMATTN_PLACEMENT_ZIGZAG = 1 };

/* Start from memattn_ring_options_default() and change fields: new fields may be added at the end.
 */
typedef struct memattn_ring_options {
  memattn_options attention; /* causal (either alignment), window, diagonal_offset, scale,
                                softcap, ALiBi, algorithm, threads, target, on global diagonals;
                                mask and bias are this rank's slices [B|1, H|1, local seq_q|1,
                                global seq_k|1]: its query rows (local order) against every
                                global key; sinks and cu_seqlens must stay NULL */
  int32_t placement;         /* MEMATTN_PLACEMENT_* */
  int64_t seq_q;             /* global query length */
  int64_t seq_k;             /* global key length; -1: seq_q */
} memattn_ring_options;

typedef struct memattn_range {
  int64_t start, length;
} memattn_range;

/* The global positions a rank holds, in the order its local tensors store them. */
typedef struct memattn_ring_slices {
  int32_t count; /* chunks held: 1 (contiguous) or 2 (zigzag) */
  memattn_range q[2], k[2];
  int64_t seq_q, seq_k; /* local lengths of q/out/dout/dq and of k/v/dk/dv */
} memattn_ring_slices;

/* memattn_options_default(), contiguous placement, seq_q = 0, seq_k = -1. */
memattn_ring_options memattn_ring_options_default(void);

/* The slices of `rank` among `ranks` (memattn::dist::local_slices). */
memattn_status memattn_ring_local_slices(const memattn_ring_options* options, int ranks, int rank,
                                         memattn_ring_slices* slices);

/* Collective over comm: exact attention on the gathered sequence, each rank writing its queries'
 * out and lse (nullable). If any rank's arguments are wrong, every rank returns the same status
 * with the same message, "rank N: ..." (N the lowest failing rank), and nothing is written. */
memattn_status memattn_ring_forward(const memattn_tensor* q, const memattn_tensor* k,
                                    const memattn_tensor* v, const memattn_tensor* out,
                                    const memattn_tensor* lse, const memattn_ring_options* options,
                                    MPI_Comm comm);

/* Collective over comm: the gradients of memattn_ring_forward from its out and lse. Errors as
 * for memattn_ring_forward. */
memattn_status memattn_ring_backward(const memattn_tensor* q, const memattn_tensor* k,
                                     const memattn_tensor* v, const memattn_tensor* out,
                                     const memattn_tensor* dout, const memattn_tensor* lse,
                                     const memattn_tensor* dq, const memattn_tensor* dk,
                                     const memattn_tensor* dv, const memattn_ring_options* options,
                                     MPI_Comm comm);

/* memattn_ring_backward plus dbias (nullable; options->attention.bias must be set): the gradient
 * of this rank's bias slice, in its shape and dtype. */
memattn_status memattn_ring_backward_ex(const memattn_tensor* q, const memattn_tensor* k,
                                        const memattn_tensor* v, const memattn_tensor* out,
                                        const memattn_tensor* dout, const memattn_tensor* lse,
                                        const memattn_tensor* dq, const memattn_tensor* dk,
                                        const memattn_tensor* dv, const memattn_tensor* dbias,
                                        const memattn_ring_options* options, MPI_Comm comm);

#ifdef __cplusplus
}
#endif

#endif /* MEMATTN_MEMATTN_DIST_H */
