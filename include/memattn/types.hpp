// Public value types of memattn: dtypes, strided tensor views, options and workspaces.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>

namespace memattn {

// Element types. f64 is accepted by the reference algorithms (naive, sequential, chunked) only;
// u8 is the element type of boolean masks (nonzero = attend); i32 and i64 are the element types
// of sequence descriptors (cu_seqlens).
enum class DType : uint8_t { f32, bf16, f16, f64, u8, i32, i64 };

const char* dtype_name(DType);
size_t dtype_size(DType);

// A strided view of caller memory; the library never owns or frees it.
// q, k, v, out: [batch, seq, heads, head_dim]; mask, bias: [batch|1, heads|1, seq_q|1, seq_k|1];
// lse: [batch, heads, seq_q] (ndim 3, f32). Strides are in elements, may be zero or negative on
// inputs; outputs must not overlap themselves.
struct Tensor {
  void* data = nullptr;
  DType dtype = DType::f32;
  int ndim = 4;
  std::array<int64_t, 4> shape{0, 0, 0, 0};
  std::array<int64_t, 4> strides{0, 0, 0, 0};

  // A row-major (last dimension fastest) view of `ndim` = shape.size() dimensions.
  static Tensor contiguous(void* data, DType dtype, std::initializer_list<int64_t> shape);
  // The same view with a new shape and explicit strides (both of size `ndim`).
  static Tensor strided(void* data, DType dtype, std::initializer_list<int64_t> shape,
                        std::initializer_list<int64_t> strides);
  int64_t numel() const;  // product of the shape; saturates at INT64_MAX on overflow
};

enum class Algorithm : uint8_t { automatic, naive, sequential, chunked, flash };
const char* algorithm_name(Algorithm);

// Where the diagonal of causal and sliding-window masks sits when seq_q != seq_k:
// top_left (PyTorch's is_causal): query i sees keys j <= i.
// bottom_right (FlashAttention >= 2.1): query i sees keys j <= i + seq_k - seq_q.
enum class Align : uint8_t { top_left, bottom_right };

struct Options {
  // unset: 1/sqrt(head_dim); any finite value (0, negative) is used as is: exactly with f64
  // inputs, rounded to float with f32, bf16 and f16 inputs (whose scores are f32).
  std::optional<double> scale;
  Algorithm algorithm = Algorithm::automatic;
  int64_t query_chunk = 0, key_chunk = 0;  // 0: chosen by the planner
  bool causal = false;                     // keys right of the diagonal are masked
  Align align = Align::top_left;           // diagonal of causal and of the window
  int64_t window_left = -1, window_right = -1;  // keys allowed at diag-left .. diag+right; -1: unbounded
  // Moves the diagonal of causal, window and ALiBi: query i's diagonal is key i + diag +
  // diagonal_offset, diag the alignment's (0 top_left, seq_k - seq_q bottom_right). It lets a
  // block of a longer sequence keep the mask it has there (ring attention). |value| <= 2^62.
  int64_t diagonal_offset = 0;
  const Tensor* mask = nullptr;  // u8, nonzero = attend; masked keys are never read
  const Tensor* bias = nullptr;  // f32/bf16/f16 (f64 with f64 inputs), added to the scaled scores
  // Score modifiers (docs/api.md, "Score modifiers"), applied in this order to scale * q.k:
  // softcap > 0: s = softcap * tanh(s / softcap) (Gemma 2, Grok); 0: off. Finite, >= 0.
  double softcap = 0;
  // f32 [heads_q] or [batch, heads_q] (FlashAttention's convention): s -= slope * |i + diag - j|,
  // diag the alignment's diagonal plus diagonal_offset (bottom_right reproduces FlashAttention's
  // ALiBi). Finite.
  const Tensor* alibi_slopes = nullptr;
  // f32 [heads_q] (gpt-oss): one logit per query head that joins the softmax denominator with no
  // value, so lse = log(sum_j exp(s_ij) + exp(sink_h)). Finite.
  const Tensor* sinks = nullptr;
  int num_threads = 0;           // 0: all that OpenMP offers
  // SIMD target of the flash kernels: null = the best this CPU supports, unless the environment
  // variable MEMATTN_TARGET names one; else one of the names supported_targets() lists.
  const char* target = nullptr;
  // Variable-length batches (FlashAttention's varlen convention), both given or neither: 1-D i32
  // or i64 offsets of batch + 1 entries, non-decreasing from 0 to the total token count. q is
  // then [1, total_q, heads_q, d], k and v [1, total_k, heads_kv, d], out [1, total_q, heads_q, dv],
  // lse [1, heads_q, total_q]; sequence b's queries are rows cu_seqlens_q[b] .. cu_seqlens_q[b+1]
  // and its keys rows cu_seqlens_k[b] .. cu_seqlens_k[b+1]. Causal, window and GQA apply per
  // sequence (the diagonal from its own lengths); mask and bias are rejected.
  const Tensor* cu_seqlens_q = nullptr;
  const Tensor* cu_seqlens_k = nullptr;
  // The longest sequence's length; 0: computed by memattn; a value below the actual is an error.
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
};

// Caller-provided scratch memory. With one, the compute path allocates nothing.
struct Workspace {
  void* data = nullptr;
  size_t bytes = 0;
};

}  // namespace memattn
