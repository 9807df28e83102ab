/* Tests of memattn_attention_with_kvcache, compiled as C: a paged cache (pages of 3 keys, handed
 * out out of order, unused rows NaN) and a dense one, each sequence bitwise equal to
 * memattn_forward on its own keys, the cache in bf16 read by f32 queries (the same bits as the f32
 * cache of the widened values), ALiBi slopes per sequence, and a bad page index refused with out
 * left untouched. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "c_api_fixture.h"
#include "memattn/memattn.h"

enum { B = 2, SQ_ = 2, H = 2, HK = 1, E = 4, PAGE = 3, PAGES = 6, MAX_PAGES = 3, MAX_SEQ = 8 };
static int32_t lens[B] = {7, 4};
static int32_t table[B * MAX_PAGES] = {4, 0, 2, 5, 1, -1}; /* sequence 1 uses pages 5 and 1 */

static float cq[B * SQ_ * H * E], keys[B][MAX_SEQ * HK * E], values[B][MAX_SEQ * HK * E];
static float kpages[PAGES * PAGE * HK * E], vpages[PAGES * PAGE * HK * E];
static float kdense[B * MAX_SEQ * HK * E], vdense[B * MAX_SEQ * HK * E];
static float cout_[B * SQ_ * H * E], clse[B * H * SQ_];

static void make_cache(void) {
  for (int i = 0; i < B * SQ_ * H * E; ++i) cq[i] = sinf(0.37f * (float)i);
  memset(kpages, 0xFF, sizeof kpages); /* NaN: rows no sequence owns must not be read */
  memset(vpages, 0xFF, sizeof vpages);
  memset(kdense, 0xFF, sizeof kdense);
  memset(vdense, 0xFF, sizeof vdense);
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < lens[b]; ++t)
      for (int e = 0; e < HK * E; ++e) {
        keys[b][t * E + e] = cosf(0.71f * (float)(b * 100 + t * E + e));
        values[b][t * E + e] = sinf(0.53f * (float)(b * 100 + t * E + e) + 0.5f);
        const int page = table[b * MAX_PAGES + t / PAGE], row = page * PAGE + t % PAGE;
        kpages[row * E + e] = keys[b][t * E + e];
        vpages[row * E + e] = values[b][t * E + e];
        kdense[(b * MAX_SEQ + t) * E + e] = keys[b][t * E + e];
        vdense[(b * MAX_SEQ + t) * E + e] = values[b][t * E + e];
      }
}

static memattn_options kv_options(void) {
  memattn_options o = memattn_options_default();
  o.causal = 1;
  o.align = MEMATTN_ALIGN_BOTTOM_RIGHT;
  o.key_chunk = PAGE; /* the chunks the paged call plans, so the dense calls match bit for bit */
  return o;
}

static void test_matches_dense_forward(int paged) {
  memattn_tensor tq_ = TENSOR(cq, MEMATTN_F32, B, SQ_, H, E), to_ = TENSOR(cout_, MEMATTN_F32, B, SQ_, H, E),
                 tl = TENSOR(clse, MEMATTN_F32, B, H, SQ_), tlens = TENSOR(lens, MEMATTN_I32, B),
                 ttable = TENSOR(table, MEMATTN_I32, B, MAX_PAGES);
  memattn_tensor tk_ = paged ? TENSOR(kpages, MEMATTN_F32, PAGES, PAGE, HK, E) : TENSOR(kdense, MEMATTN_F32, B, MAX_SEQ, HK, E);
  memattn_tensor tv_ = paged ? TENSOR(vpages, MEMATTN_F32, PAGES, PAGE, HK, E) : TENSOR(vdense, MEMATTN_F32, B, MAX_SEQ, HK, E);
  const memattn_options o = kv_options();
  memset(cout_, 0xFF, sizeof cout_);
  size_t bytes = 0;
  CHECK(memattn_kvcache_workspace_bytes(&tq_, &tk_, &tv_, &tlens, paged ? &ttable : NULL, &o, &bytes) == MEMATTN_OK);
  CHECK(memattn_attention_with_kvcache(&tq_, &tk_, &tv_, &tlens, paged ? &ttable : NULL, &to_, &tl, &o, kNoWorkspace) ==
        MEMATTN_OK);
  for (int b = 0; b < B; ++b) {
    float want[SQ_ * H * E], want_lse[H * SQ_];
    memattn_tensor dq_ = TENSOR(cq + b * SQ_ * H * E, MEMATTN_F32, 1, SQ_, H, E),
                   dk_ = TENSOR(keys[b], MEMATTN_F32, 1, lens[b], HK, E),
                   dv_ = TENSOR(values[b], MEMATTN_F32, 1, lens[b], HK, E),
                   dout_ = TENSOR(want, MEMATTN_F32, 1, SQ_, H, E), dl = TENSOR(want_lse, MEMATTN_F32, 1, H, SQ_);
    CHECK(memattn_forward(&dq_, &dk_, &dv_, &dout_, &dl, &o, kNoWorkspace) == MEMATTN_OK);
    CHECK(memcmp(want, cout_ + b * SQ_ * H * E, sizeof want) == 0);
    CHECK(memcmp(want_lse, clse + b * H * SQ_, sizeof want_lse) == 0);
  }
}

static void test_bad_page_leaves_out_untouched(void) {
  int32_t bad[B * MAX_PAGES];
  memcpy(bad, table, sizeof bad);
  bad[2] = PAGES;
  memattn_tensor tq_ = TENSOR(cq, MEMATTN_F32, B, SQ_, H, E), to_ = TENSOR(cout_, MEMATTN_F32, B, SQ_, H, E),
                 tlens = TENSOR(lens, MEMATTN_I32, B), ttable = TENSOR(bad, MEMATTN_I32, B, MAX_PAGES),
                 tk_ = TENSOR(kpages, MEMATTN_F32, PAGES, PAGE, HK, E), tv_ = TENSOR(vpages, MEMATTN_F32, PAGES, PAGE, HK, E);
  const memattn_options o = kv_options();
  float before[B * SQ_ * H * E];
  memset(cout_, 0xA5, sizeof cout_);
  memcpy(before, cout_, sizeof before);
  CHECK(memattn_attention_with_kvcache(&tq_, &tk_, &tv_, &tlens, &ttable, &to_, NULL, &o, kNoWorkspace) ==
        MEMATTN_INVALID_ARGUMENT);
  CHECK(strstr(memattn_last_error(), "block_table[0][2]=6 is not a page of k_cache (num_pages 6)") != NULL);
  CHECK(memcmp(before, cout_, sizeof before) == 0);
}

/* f32 queries against the paged cache held in bf16 (each value's top 16 bits): the same bits as the
 * f32 call on those values widened back to f32. */
static uint16_t kpages16[PAGES * PAGE * HK * E], vpages16[PAGES * PAGE * HK * E];
static float kwide[PAGES * PAGE * HK * E], vwide[PAGES * PAGE * HK * E];
static void test_bf16_cache_with_f32_queries(void) {
  for (int i = 0; i < PAGES * PAGE * HK * E; ++i) {
    uint32_t kb, vb;
    memcpy(&kb, &kpages[i], 4), memcpy(&vb, &vpages[i], 4);
    kpages16[i] = (uint16_t)(kb >> 16), vpages16[i] = (uint16_t)(vb >> 16);
    kb = (uint32_t)kpages16[i] << 16, vb = (uint32_t)vpages16[i] << 16;
    memcpy(&kwide[i], &kb, 4), memcpy(&vwide[i], &vb, 4);
  }
  float mixed[B * SQ_ * H * E], wide[B * SQ_ * H * E];
  memattn_tensor tq_ = TENSOR(cq, MEMATTN_F32, B, SQ_, H, E), tlens = TENSOR(lens, MEMATTN_I32, B),
                 ttable = TENSOR(table, MEMATTN_I32, B, MAX_PAGES),
                 tk16 = TENSOR(kpages16, MEMATTN_BF16, PAGES, PAGE, HK, E), tv16 = TENSOR(vpages16, MEMATTN_BF16, PAGES, PAGE, HK, E),
                 tkw = TENSOR(kwide, MEMATTN_F32, PAGES, PAGE, HK, E), tvw = TENSOR(vwide, MEMATTN_F32, PAGES, PAGE, HK, E),
                 tm = TENSOR(mixed, MEMATTN_F32, B, SQ_, H, E), tw = TENSOR(wide, MEMATTN_F32, B, SQ_, H, E);
  const memattn_options o = kv_options();
  CHECK(memattn_attention_with_kvcache(&tq_, &tk16, &tv16, &tlens, &ttable, &tm, NULL, &o, kNoWorkspace) == MEMATTN_OK);
  CHECK(memattn_attention_with_kvcache(&tq_, &tkw, &tvw, &tlens, &ttable, &tw, NULL, &o, kNoWorkspace) == MEMATTN_OK);
  CHECK(memcmp(mixed, wide, sizeof mixed) == 0);
}

/* ALiBi slopes per sequence ([batch, heads_q], FlashAttention's convention): sequence b takes row
 * b, bitwise as memattn_forward on its own keys with that row as its [heads_q] slopes. */
static void test_per_sequence_alibi_slopes(void) {
  float slopes[B * H] = {0.5f, 0.25f, 0.125f, 1.5f};
  memattn_tensor tq_ = TENSOR(cq, MEMATTN_F32, B, SQ_, H, E), to_ = TENSOR(cout_, MEMATTN_F32, B, SQ_, H, E),
                 tlens = TENSOR(lens, MEMATTN_I32, B), ttable = TENSOR(table, MEMATTN_I32, B, MAX_PAGES),
                 tk_ = TENSOR(kpages, MEMATTN_F32, PAGES, PAGE, HK, E), tv_ = TENSOR(vpages, MEMATTN_F32, PAGES, PAGE, HK, E),
                 tslopes = TENSOR(slopes, MEMATTN_F32, B, H);
  memattn_options o = kv_options();
  o.alibi_slopes = &tslopes;
  memset(cout_, 0xFF, sizeof cout_);
  CHECK(memattn_attention_with_kvcache(&tq_, &tk_, &tv_, &tlens, &ttable, &to_, NULL, &o, kNoWorkspace) == MEMATTN_OK);
  for (int b = 0; b < B; ++b) {
    float want[SQ_ * H * E];
    memattn_tensor dq_ = TENSOR(cq + b * SQ_ * H * E, MEMATTN_F32, 1, SQ_, H, E),
                   dk_ = TENSOR(keys[b], MEMATTN_F32, 1, lens[b], HK, E),
                   dv_ = TENSOR(values[b], MEMATTN_F32, 1, lens[b], HK, E),
                   dout_ = TENSOR(want, MEMATTN_F32, 1, SQ_, H, E), row = TENSOR(slopes + b * H, MEMATTN_F32, H);
    memattn_options ob = kv_options();
    ob.alibi_slopes = &row;
    CHECK(memattn_forward(&dq_, &dk_, &dv_, &dout_, NULL, &ob, kNoWorkspace) == MEMATTN_OK);
    CHECK(memcmp(want, cout_ + b * SQ_ * H * E, sizeof want) == 0);
  }
}

int main(void) {
  make_cache();
  test_per_sequence_alibi_slopes();
  test_bf16_cache_with_f32_queries();
  test_matches_dense_forward(1);
  test_matches_dense_forward(0);
  test_bad_page_leaves_out_untouched();
  printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
