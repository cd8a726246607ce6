// Paged attention on the CPU: query rows read their keys and values straight out of the block
// table, so nothing is gathered or padded. A row is one query token with its own causal
// length: a decode token, or one token of a short prefill chunk.
//
//   q            [R, H, D]            float32 rows, grouped by request
//   k/v_cache    [NB, BS, KVH, D + E] float32, float16 or int8 (widened in registers), one
//                                     layer; int8 heads carry their fp32 scale in E = 4 bytes
//   block_tables [N, MB]              int64, one per request
//   row_starts   [N + 1]              int64: request i owns rows row_starts[i] .. row_starts[i+1]
//   seq_lens     [R]                  int64, keys each row attends to
//   out          [R, H, D]            float32
//
// Tasks are (request, kv head, tile of up to kRowTile rows): the G = H / KVH query heads of
// every row in the tile share each key and value load. A lone row (a decode) keeps its
// accumulators in registers and sums the lanes of 16 dot products per head together; a tile of
// several rows transposes 32 keys at a time, so each dot product is a chain of broadcast FMAs
// with no horizontal step (2.2x fewer instructions per key at 8 rows of 3 heads). Either way a
// row's arithmetic depends only on how many rows its request has in the step, never on the rest
// of the batch or the thread count.
// Shared by the paged_attention op (paged_attention.cpp) and the fused decode step
// (decode_step.cpp).
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <limits>
#include <vector>

#include "vec_math.h"

namespace chatfleet::attn {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline __m512 load16(const int8_t* p) {
  const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(codes));
}

// An int8 head is D codes and then its scale (value = code * scale), so a head is read from
// one place and a block stays one contiguous run of bytes. What it holds is the head rotated
// by the normalized Hadamard matrix (`rotate`): keys carry a few channels many times larger
// than the rest, and one scale per head would leave the others a handful of levels; rotated,
// every channel is a mix of all of them. Queries are rotated alike, so q . k is unchanged,
// and outputs (sums of rotated values) are rotated back (the matrix is its own inverse).
template <typename T>
constexpr bool kScaled = std::is_same_v<T, int8_t>;
template <typename T>
constexpr int64_t head_stride(int64_t D) {
  return kScaled<T> ? D + static_cast<int64_t>(sizeof(float)) : D;
}
template <typename T>
inline float head_scale(const T* head, int64_t D) {
  if constexpr (kScaled<T>) {
    float s;
    std::memcpy(&s, head + D, sizeof s);
    return s;
  } else {
    return 1.f;
  }
}

// A decode asks for each key's K and V heads this many keys before its scores reach them, into
// L2: a request's blocks sit anywhere in the cache, so the hardware prefetcher cannot run
// ahead across a block boundary, and one block ahead into L1 was too late and too narrow (L1
// holds few misses in flight): past the L3, attention waited on memory about as long as it
// computed. The values pass then finds them in L2, and asks again a block or two ahead in
// case a long context has pushed them out.
constexpr int64_t kPrefetchKeys = 32;

// Asks for the lines of the head of `bytes` at p (into L2).
inline void prefetch_head(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) _mm_prefetch(c + off, _MM_HINT_T1);
  if (bytes % 64 != 0) _mm_prefetch(c + bytes - 1, _MM_HINT_T1);  // an int8 head's scale
}

// x <- H x / sqrt(D), H the D x D Hadamard matrix (Sylvester's order); D is 64 or 128.
inline void rotate(float* x, int64_t D) {
  __m512 r[8];
  const int64_t V = D / 16;
  for (int64_t v = 0; v < V; ++v) r[v] = _mm512_loadu_ps(x + 16 * v);
  const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  const __mmask16 upper[4] = {0xAAAA, 0xCCCC, 0xF0F0, 0xFF00};  // lanes with bit s set
  for (int b = 0; b < 4; ++b) {  // butterflies within a vector: lanes l and l ^ s, s = 2^b
    const __m512i partner = _mm512_xor_si512(lane, _mm512_set1_epi32(1 << b));
    const __m512 sign = _mm512_mask_blend_ps(upper[b], _mm512_set1_ps(1.f), _mm512_set1_ps(-1.f));
    for (int64_t v = 0; v < V; ++v)  // low lane: x_l + x_partner; high lane: x_partner - x_l
      r[v] = _mm512_fmadd_ps(r[v], sign, _mm512_permutexvar_ps(partner, r[v]));
  }
  for (int64_t s = 1; s < V; s *= 2)  // and across vectors
    for (int64_t v = 0; v < V; ++v)
      if (!(v & s)) {
        const __m512 a = r[v], b = r[v + s];
        r[v] = _mm512_add_ps(a, b);
        r[v + s] = _mm512_sub_ps(a, b);
      }
  const __m512 norm = _mm512_set1_ps(1.f / std::sqrt(static_cast<float>(D)));
  for (int64_t v = 0; v < V; ++v) _mm512_storeu_ps(x + 16 * v, _mm512_mul_ps(r[v], norm));
}

// s[t] <- exp(s[t] - max(s)); returns the sum (the caller folds 1/sum into the output).
inline float softmax_unnormalized(float* s, int64_t len) {
  __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(s + t));
  float mx = _mm512_reduce_max_ps(vmax);
  for (; t < len; ++t) mx = s[t] > mx ? s[t] : mx;
  __m512 vsum = _mm512_setzero_ps();
  const __m512 vmx = _mm512_set1_ps(mx);
  for (t = 0; t + 16 <= len; t += 16) {
    const __m512 e = chatfleet::exp_ps(_mm512_sub_ps(_mm512_loadu_ps(s + t), vmx));
    _mm512_storeu_ps(s + t, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  float sum = _mm512_reduce_add_ps(vsum);
  for (; t < len; ++t) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  return sum;
}

// s[t] *= by[t]
inline void scale_by(float* s, const float* by, int64_t len) {
  int64_t t = 0;
  for (; t + 16 <= len; t += 16)
    _mm512_storeu_ps(s + t, _mm512_mul_ps(_mm512_loadu_ps(s + t), _mm512_loadu_ps(by + t)));
  for (; t < len; ++t) s[t] *= by[t];
}

struct Task {
  const float* q;         // [G, D] query heads of this kv head
  const int64_t* table;   // block ids of the request
  int64_t len;            // keys to attend to
  int64_t block_size;
  int64_t slot_stride;    // elements between consecutive slots (KVH * D)
  int64_t head_offset;    // elements from a slot's start to this kv head
  float scale;
  float* out;             // [G, D]
};

// Lane sums of four vectors, partly: 128-bit block b of the result holds, at position j, the
// sum of a_j's four lanes in block b. Six shuffles and three adds for four dot products, where
// a full horizontal sum costs about eight operations for one.
inline __m512 hsum4_partial(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  const __m512 x01 = _mm512_add_ps(_mm512_unpacklo_ps(a0, a1), _mm512_unpackhi_ps(a0, a1));
  const __m512 x23 = _mm512_add_ps(_mm512_unpacklo_ps(a2, a3), _mm512_unpackhi_ps(a2, a3));
  const __m512d p = _mm512_castps_pd(x01), q = _mm512_castps_pd(x23);
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(p, q)),
                       _mm512_castpd_ps(_mm512_unpackhi_pd(p, q)));
}

// Finishes four hsum4_partial results: lanes 4j .. 4j + 3 of the result are y_j's totals.
inline __m512 hsum_blocks(__m512 y0, __m512 y1, __m512 y2, __m512 y3) {
  const __m512 v01 =
      _mm512_add_ps(_mm512_shuffle_f32x4(y0, y1, 0x44), _mm512_shuffle_f32x4(y0, y1, 0xEE));
  const __m512 v23 =
      _mm512_add_ps(_mm512_shuffle_f32x4(y2, y3, 0x44), _mm512_shuffle_f32x4(y2, y3, 0xEE));
  return _mm512_add_ps(_mm512_shuffle_f32x4(v01, v23, 0x88),
                       _mm512_shuffle_f32x4(v01, v23, 0xDD));
}

// One (request, kv head): scores for all keys, softmax, then the weighted sum of values.
// Scores go 16 keys at a time: four keys' vectors stay in registers for all G heads, and the
// lane sums of 16 dot products per head are done together (hsum4_partial, hsum_blocks).
template <typename T, int G, int D>
void attend(const Task& task, const T* k_cache, const T* v_cache, std::vector<float>& scores) {
  constexpr int V = D / 16;
  const int64_t len = task.len, bs = task.block_size;
  constexpr int64_t head_bytes = head_stride<T>(D) * static_cast<int64_t>(sizeof(T));
  scores.resize((G + kScaled<T>) * len);
  float* s = scores.data();
  float* v_scales = s + G * len;  // int8: each key's value scale
  {
    alignas(64) float q[G][D];
    for (int g = 0; g < G; ++g)
      for (int v = 0; v < V; ++v)
        _mm512_store_ps(q[g] + 16 * v, _mm512_mul_ps(_mm512_loadu_ps(task.q + g * D + 16 * v),
                                                     _mm512_set1_ps(task.scale)));
    if constexpr (kScaled<T>)
      for (int g = 0; g < G; ++g) rotate(q[g], D);
    const T* key[16];
    alignas(64) float k_scales[16];
    for (int64_t start = 0; start < len; start += 16) {
      const int64_t n = std::min<int64_t>(16, len - start);
      {  // walk the block table without a division per key
        int64_t b = start / bs, j = start % bs;
        for (int64_t t = 0; t < n; ++t) {
          key[t] = k_cache + (task.table[b] * bs + j) * task.slot_stride + task.head_offset;
          if (++j == bs) j = 0, ++b;
        }
        for (int64_t t = n; t < 16; ++t) key[t] = key[n - 1];  // computed, never stored
        if constexpr (kScaled<T>) {
          for (int64_t t = 0; t < 16; ++t) k_scales[t] = head_scale(key[t], D);
          for (int64_t t = 0; t < n; ++t)
            v_scales[start + t] = head_scale(v_cache + (key[t] - k_cache), D);
        }
        int64_t nb = (start + kPrefetchKeys) / bs, nj = (start + kPrefetchKeys) % bs;
        for (int64_t t = 0; t < 16 && start + kPrefetchKeys + t < len; ++t) {
          const int64_t at = (task.table[nb] * bs + nj) * task.slot_stride + task.head_offset;
          prefetch_head(k_cache + at, head_bytes);
          prefetch_head(v_cache + at, head_bytes);
          if (++nj == bs) nj = 0, ++nb;
        }
      }
      __m512 y[G][4];
      for (int grp = 0; grp < 4; ++grp) {
        __m512 kv[4][V];
        for (int j = 0; j < 4; ++j)
          for (int v = 0; v < V; ++v) kv[j][v] = load16(key[4 * grp + j] + 16 * v);
        for (int g = 0; g < G; ++g) {
          __m512 a[4];
          for (int j = 0; j < 4; ++j) {
            a[j] = _mm512_mul_ps(_mm512_load_ps(q[g]), kv[j][0]);
            for (int v = 1; v < V; ++v)
              a[j] = _mm512_fmadd_ps(_mm512_load_ps(q[g] + 16 * v), kv[j][v], a[j]);
          }
          y[g][grp] = hsum4_partial(a[0], a[1], a[2], a[3]);
        }
      }
      const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1);
      for (int g = 0; g < G; ++g) {
        __m512 dots = hsum_blocks(y[g][0], y[g][1], y[g][2], y[g][3]);
        if constexpr (kScaled<T>) dots = _mm512_mul_ps(dots, _mm512_load_ps(k_scales));
        _mm512_mask_storeu_ps(s + g * len + start, mask, dots);
      }
    }
  }
  float inv[G];
  for (int g = 0; g < G; ++g) inv[g] = 1.f / softmax_unnormalized(s + g * len, len);
  if constexpr (kScaled<T>)  // weights times value scales: the values are then codes alone
    for (int g = 0; g < G; ++g) scale_by(s + g * len, v_scales, len);
  __m512 acc[G][V];
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < V; ++v) acc[g][v] = _mm512_setzero_ps();
  const int64_t ahead = (kPrefetchKeys + bs - 1) / bs;
  for (int64_t start = 0; start < len; start += bs) {
    const int64_t n = std::min(bs, len - start);
    const T* vb = v_cache + task.table[start / bs] * bs * task.slot_stride + task.head_offset;
    if (start + ahead * bs < len) {
      const T* nb =
          v_cache + task.table[start / bs + ahead] * bs * task.slot_stride + task.head_offset;
      for (int64_t t = 0; t < std::min(bs, len - start - ahead * bs); ++t)
        prefetch_head(nb + t * task.slot_stride, head_bytes);
    }
    for (int64_t t = 0; t < n; ++t) {
      __m512 vv[V];
      for (int v = 0; v < V; ++v) vv[v] = load16(vb + t * task.slot_stride + 16 * v);
      for (int g = 0; g < G; ++g) {
        const __m512 p = _mm512_set1_ps(s[g * len + start + t]);
        for (int v = 0; v < V; ++v) acc[g][v] = _mm512_fmadd_ps(p, vv[v], acc[g][v]);
      }
    }
  }
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < V; ++v)
      _mm512_storeu_ps(task.out + g * D + 16 * v, _mm512_mul_ps(acc[g][v], _mm512_set1_ps(inv[g])));
  if constexpr (kScaled<T>)
    for (int g = 0; g < G; ++g) rotate(task.out + g * D, D);
}

constexpr int kRowTile = 8;  // rows per task: 8 x 3 heads = 24 query vectors per key tile

// In-place 16x16 transpose: r[i][j] -> r[j][i].
inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  // Per 128-bit lane k: t[4i + 0/1/2/3] -> columns 4k + 0/1/2/3 of rows 4i .. 4i + 3.
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Gather lane k of r[j], r[4 + j], r[8 + j], r[12 + j]: column 4k + j of all 16 rows.
  for (int j = 0; j < 4; ++j) {
    const __m512 u0 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0x88);
    const __m512 u1 = _mm512_shuffle_f32x4(r[j], r[4 + j], 0xDD);
    const __m512 u2 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0x88);
    const __m512 u3 = _mm512_shuffle_f32x4(r[8 + j], r[12 + j], 0xDD);
    t[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
    t[8 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
    t[4 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
    t[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
  }
  for (int i = 0; i < 16; ++i) r[i] = t[i];
}

struct TileTask {
  const float* q;         // [rows, H, D]: the tile's first row, head 0
  const int64_t* table;   // block ids of the request
  const int64_t* lens;    // [rows] keys each row attends to
  int64_t rows;
  int64_t H;
  int64_t block_size;
  int64_t slot_stride;    // elements between consecutive slots (KVH * D)
  int64_t head_offset;    // elements from a slot's start to this kv head
  int64_t kv_head;
  float scale;
  float* out;             // [rows, H, D]
};

struct TileScratch {
  std::vector<float> q, s, o, k, v;
};

// Several rows of one request and one kv head. Query vector m is (row m / G, head m % G).
template <typename T, int G, int D>
void attend_tile(const TileTask& task, const T* k_cache, const T* v_cache, TileScratch& w) {
  // Scores are computed for QB query vectors x KB keys at a time: 12 accumulators, and each
  // broadcast query element feeds two FMAs, so the loads (2 keys + 6 broadcasts per 12 FMAs)
  // stay under the FMA ports' rate.
  constexpr int V = D / 16, QB = 6, KB = 32;
  const int64_t M = task.rows * G, MP = (M + QB - 1) / QB * QB, bs = task.block_size;
  int64_t max_len = 0;
  for (int64_t r = 0; r < task.rows; ++r) max_len = std::max(max_len, task.lens[r]);
  const int64_t L = (max_len + KB - 1) / KB * KB;
  w.q.assign(MP * D, 0.f);
  w.s.resize(MP * L);
  w.o.assign(M * D, 0.f);
  w.k.resize(D * KB);
  w.v.resize(16 * D);
  for (int64_t m = 0; m < M; ++m) {
    const float* src = task.q + ((m / G) * task.H + task.kv_head * G + m % G) * D;
    for (int64_t d = 0; d < D; ++d) w.q[m * D + d] = src[d] * task.scale;
    if constexpr (kScaled<T>) rotate(w.q.data() + m * D, D);
  }
  // Offsets of up to KB consecutive keys from `start` (a multiple of 16), walking the block
  // table without a division per key.
  int64_t offs[KB];
  auto key_offsets = [&](int64_t start, int64_t n) {
    int64_t b = start / bs, j = start % bs;
    for (int64_t t = 0; t < n; ++t) {
      offs[t] = (task.table[b] * bs + j) * task.slot_stride + task.head_offset;
      if (++j == bs) j = 0, ++b;
    }
  };
  // Scores: kt[d][0..KB] holds dimension d of KB keys (transposed 16 at a time), so q . k for
  // KB keys is a chain of D broadcast FMAs per 16 keys.
  float* kt = w.k.data();
  alignas(64) float k_scales[KB] = {};
  for (int64_t start = 0; start < L; start += KB) {
    const int64_t n = std::min<int64_t>(KB, max_len - start);
    key_offsets(start, n);
    if constexpr (kScaled<T>)
      for (int64_t t = 0; t < n; ++t) k_scales[t] = head_scale(k_cache + offs[t], D);
    for (int half = 0; half < KB / 16; ++half)
      for (int c = 0; c < V; ++c) {
        __m512 r[16];
        for (int t = 0; t < 16; ++t) {
          const int64_t key = 16 * half + t;
          r[t] = key < n ? load16(k_cache + offs[key] + 16 * c) : _mm512_setzero_ps();
        }
        transpose16(r);
        for (int i = 0; i < 16; ++i) _mm512_storeu_ps(kt + (16 * c + i) * KB + 16 * half, r[i]);
      }
    for (int64_t m0 = 0; m0 < MP; m0 += QB) {
      __m512 a0[QB], a1[QB];
      for (int j = 0; j < QB; ++j) a0[j] = a1[j] = _mm512_setzero_ps();
      const float* qb = w.q.data() + m0 * D;
      for (int d = 0; d < D; ++d) {
        const __m512 k0 = _mm512_loadu_ps(kt + d * KB), k1 = _mm512_loadu_ps(kt + d * KB + 16);
        for (int j = 0; j < QB; ++j) {
          const __m512 b = _mm512_set1_ps(qb[j * D + d]);
          a0[j] = _mm512_fmadd_ps(b, k0, a0[j]);
          a1[j] = _mm512_fmadd_ps(b, k1, a1[j]);
        }
      }
      if constexpr (kScaled<T>)
        for (int j = 0; j < QB; ++j) {
          a0[j] = _mm512_mul_ps(a0[j], _mm512_load_ps(k_scales));
          a1[j] = _mm512_mul_ps(a1[j], _mm512_load_ps(k_scales + 16));
        }
      for (int j = 0; j < QB; ++j) {
        _mm512_storeu_ps(w.s.data() + (m0 + j) * L + start, a0[j]);
        _mm512_storeu_ps(w.s.data() + (m0 + j) * L + start + 16, a1[j]);
      }
    }
  }
  float inv[kRowTile * G];
  for (int64_t m = 0; m < M; ++m)
    inv[m] = 1.f / softmax_unnormalized(w.s.data() + m * L, task.lens[m / G]);
  // Values: each query vector's output accumulates over its keys in order.
  float* vt = w.v.data();
  for (int64_t start = 0; start < max_len; start += 16) {
    const int64_t n = std::min<int64_t>(16, max_len - start);
    key_offsets(start, n);
    for (int64_t t = 0; t < n; ++t) {
      const __m512 sv = _mm512_set1_ps(head_scale(v_cache + offs[t], D));
      for (int c = 0; c < V; ++c) {
        const __m512 x = load16(v_cache + offs[t] + 16 * c);
        _mm512_storeu_ps(vt + t * D + 16 * c, kScaled<T> ? _mm512_mul_ps(x, sv) : x);
      }
    }
    // A row's G heads at once: G x V independent accumulator chains keep the FMA units busy
    // (one head alone would wait on FMA latency).
    for (int64_t r = 0; r < task.rows; ++r) {
      const int64_t tn = std::min<int64_t>(n, task.lens[r] - start);
      if (tn <= 0) continue;
      const float* p = w.s.data() + r * G * L + start;
      float* o = w.o.data() + r * G * D;
      __m512 acc[G][V];
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < V; ++c) acc[g][c] = _mm512_loadu_ps(o + g * D + 16 * c);
      for (int64_t t = 0; t < tn; ++t) {
        __m512 vv[V];
        for (int c = 0; c < V; ++c) vv[c] = _mm512_loadu_ps(vt + t * D + 16 * c);
        for (int g = 0; g < G; ++g) {
          const __m512 pt = _mm512_set1_ps(p[g * L + t]);
          for (int c = 0; c < V; ++c) acc[g][c] = _mm512_fmadd_ps(pt, vv[c], acc[g][c]);
        }
      }
      for (int g = 0; g < G; ++g)
        for (int c = 0; c < V; ++c) _mm512_storeu_ps(o + g * D + 16 * c, acc[g][c]);
    }
  }
  for (int64_t m = 0; m < M; ++m) {
    float* dst = task.out + ((m / G) * task.H + task.kv_head * G + m % G) * D;
    const __m512 scale = _mm512_set1_ps(inv[m]);
    for (int c = 0; c < V; ++c)
      _mm512_storeu_ps(dst + 16 * c,
                       _mm512_mul_ps(_mm512_loadu_ps(w.o.data() + m * D + 16 * c), scale));
    if constexpr (kScaled<T>) rotate(dst, D);
  }
}

template <typename T>
struct Kernels {
  void (*row)(const Task&, const T*, const T*, std::vector<float>&);
  void (*tile)(const TileTask&, const T*, const T*, TileScratch&);
};

// The (G, D) instantiations for this model shape; nullptr members when unsupported.
template <typename T>
Kernels<T> pick(int64_t G, int64_t D) {
#define CHATFLEET_CASE(g)                                                         \
  case g:                                                                         \
    return D == 64 ? Kernels<T>{attend<T, g, 64>, attend_tile<T, g, 64>}          \
                   : Kernels<T>{attend<T, g, 128>, attend_tile<T, g, 128>};
  if (D != 64 && D != 128) return {nullptr, nullptr};
  switch (G) {
    CHATFLEET_CASE(1)
    CHATFLEET_CASE(2)
    CHATFLEET_CASE(3)
    CHATFLEET_CASE(4)
    CHATFLEET_CASE(5)
    CHATFLEET_CASE(6)
    CHATFLEET_CASE(7)
    CHATFLEET_CASE(8)
    default:
      return {nullptr, nullptr};
  }
#undef CHATFLEET_CASE
}



inline void store16(float* p, __m512 v) { _mm512_storeu_ps(p, v); }
inline void store16(c10::Half* p, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p),
                      _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Rotate-half RoPE of one head (HF layout: pairs i and i + D/2) from src into dst.
// NOTE: explicit FMAs, not a loop left to the compiler: its choice of contractions depends on
// where the loop is inlined, and the fused decode step must round exactly like the unfused op.
template <typename T>
inline void rope_head(const float* src, const float* cos, const float* sin, int64_t D, T* dst) {
  const int64_t half = D / 2;
  TORCH_CHECK(half % 16 == 0, "rope: head_dim must be a multiple of 32");
  for (int64_t i = 0; i < half; i += 16) {
    const __m512 x0 = _mm512_loadu_ps(src + i), x1 = _mm512_loadu_ps(src + half + i);
    const __m512 c0 = _mm512_loadu_ps(cos + i), c1 = _mm512_loadu_ps(cos + half + i);
    const __m512 s0 = _mm512_loadu_ps(sin + i), s1 = _mm512_loadu_ps(sin + half + i);
    store16(dst + i, _mm512_fnmadd_ps(x1, s0, _mm512_mul_ps(x0, c0)));
    store16(dst + half + i, _mm512_fmadd_ps(x0, s1, _mm512_mul_ps(x1, c1)));
  }
}

// One head into the cache (widths are multiples of 16, checked by rope_head). int8: the head
// as given (already rotated) in codes round(x * 127 / max|x|), then the scale max|x| / 127.
template <typename T>
inline void store_head(const float* src, int64_t D, T* dst) {
  if constexpr (kScaled<T>) {
    __m512 top = _mm512_setzero_ps();
    for (int64_t d = 0; d < D; d += 16)
      top = _mm512_max_ps(top, _mm512_abs_ps(_mm512_loadu_ps(src + d)));
    const float mx = _mm512_reduce_max_ps(top), scale = mx / 127.f;
    const __m512 inv = _mm512_set1_ps(mx > 0.f ? 127.f / mx : 0.f);
    for (int64_t d = 0; d < D; d += 16) {
      const __m512i q = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(src + d), inv));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + d), _mm512_cvtsepi32_epi8(q));
    }
    std::memcpy(dst + D, &scale, sizeof scale);
  } else {
    for (int64_t d = 0; d < D; d += 16) store16(dst + d, _mm512_loadu_ps(src + d));
  }
}

// One token's kv head into the cache: RoPE'd key, value as it is.
template <typename T>
inline void store_kv_head(const float* k, const float* v, const float* cos, const float* sin,
                          int64_t D, T* k_dst, T* v_dst) {
  if constexpr (kScaled<T>) {  // RoPE'd, rotated, then quantized
    TORCH_CHECK(D == 64 || D == 128, "store_kv_head: int8 heads of 64 or 128");
    alignas(64) float head[128];
    rope_head<float>(k, cos, sin, D, head);
    rotate(head, D);
    store_head<T>(head, D, k_dst);
    std::memcpy(head, v, D * sizeof(float));
    rotate(head, D);
    store_head<T>(head, D, v_dst);
  } else {
    rope_head<T>(k, cos, sin, D, k_dst);
    store_head<T>(v, D, v_dst);
  }
}

}  // namespace chatfleet::attn
