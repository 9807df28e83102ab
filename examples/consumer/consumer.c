/* Consumer of an installed memattn through its C API: one attention call checked against naive. */
#include <math.h>
#include <stdio.h>

#include "memattn/memattn.h"

enum { SQ = 3, SK = 5, H = 2, D = 4 }; /* [batch 1, seq, heads H, head_dim D], row-major */

static memattn_tensor bshd(float* data, int64_t seq) {
  memattn_tensor t = {data, MEMATTN_F32, 4, {1, seq, H, D}, {seq * H * D, H * D, D, 1}};
  return t;
}

int main(void) {
  float q[SQ * H * D], k[SK * H * D], v[SK * H * D], out[SQ * H * D];
  for (int i = 0; i < SQ * H * D; ++i) q[i] = sinf(0.3f * i);
  for (int i = 0; i < SK * H * D; ++i) {
    k[i] = cosf(0.7f * i);
    v[i] = sinf(0.5f * i + 1);
  }
  const memattn_tensor tq = bshd(q, SQ), tk = bshd(k, SK), tv = bshd(v, SK), tout = bshd(out, SQ);
  const memattn_options options = memattn_options_default(); /* scale 1/sqrt(D), no mask */
  const memattn_workspace none = {NULL, 0};
  if (memattn_forward(&tq, &tk, &tv, &tout, NULL, &options, none) != MEMATTN_OK) {
    fprintf(stderr, "memattn: %s\n", memattn_last_error());
    return 1;
  }

  /* softmax(q k^T / sqrt(D)) v in double */
  double worst = 0;
  for (int h = 0; h < H; ++h)
    for (int i = 0; i < SQ; ++i) {
      double s[SK], max = -INFINITY, sum = 0;
      for (int j = 0; j < SK; ++j) {
        s[j] = 0;
        for (int d = 0; d < D; ++d) s[j] += (double)q[(i * H + h) * D + d] * k[(j * H + h) * D + d];
        s[j] /= sqrt(D);
        max = fmax(max, s[j]);
      }
      for (int j = 0; j < SK; ++j) sum += s[j] = exp(s[j] - max);
      for (int d = 0; d < D; ++d) {
        double o = 0;
        for (int j = 0; j < SK; ++j) o += s[j] / sum * v[(j * H + h) * D + d];
        worst = fmax(worst, fabs(o - out[(i * H + h) * D + d]));
      }
    }
  printf("memattn %s, C API: max |memattn - naive| = %.2e\n", memattn_version(), worst);
  return worst < 1e-5 ? 0 : 1;
}
