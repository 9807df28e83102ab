// memattn's public C++ API: exact attention whose extra memory does not grow with n^2.
#pragma once

#include <cstddef>

#include "memattn/allocator.hpp"
#include "memattn/error.hpp"
#include "memattn/targets.hpp"
#include "memattn/types.hpp"

namespace memattn {

// Exact number of workspace bytes forward() needs for these operands and options (the algorithm,
// chunk sizes and thread count they resolve to). Validates like forward(); throws the same errors.
size_t workspace_bytes(const Tensor& q, const Tensor& k, const Tensor& v, const Options& options);

// out[b, i, h, :] = sum_j softmax_j(scale * q[b,i,h,:] . k[b,j,g,:] + bias - inf*masked) v[b,j,g,:]
// with g = h / (heads_q / heads_kv). lse (optional, f32 [batch, heads_q, seq_q]) receives
// log sum_j exp(s_ij). A fully masked row gives out = 0 and lse = -inf. Every argument is checked
// before anything is written; on error out and lse are untouched.
void forward(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, const Tensor* lse,
             const Options& options, Workspace workspace = {});

}  // namespace memattn
