// Decode-time paged attention on the CPU: one query token per request reads its keys and
// values straight out of the block table, so nothing is gathered or padded.
//
//   q            [B, H, D]            float32, one token per request
//   k/v_cache    [NB, BS, KVH, D]     float32, one layer's cache
//   block_tables [B, MB]              int64
//   seq_lens     [B]                  int64, keys each request attends to
//   out          [B, H, D]
//
// Work is split over requests; the G = H / KVH query heads of a kv head share every key and
// value load. Each task reduces in a fixed order, so a request's result does not depend on the
// rest of the batch.
#include <ATen/Parallel.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

// scores[g * stride + t] = scale * <q_g, k_t> for the keys of one block, G query heads.
inline void block_scores(const float* q, const float* k, int64_t n_keys, int64_t key_stride,
                         int64_t G, int64_t D, float scale, float* scores, int64_t stride) {
#if defined(__AVX512F__)
  if (D % 16 == 0 && D <= 128 && G <= 8) {
    for (int64_t t = 0; t < n_keys; ++t) {
      const float* kt = k + t * key_stride;
      for (int64_t g = 0; g < G; ++g) {
        __m512 acc = _mm512_setzero_ps();
        for (int64_t d = 0; d < D; d += 16)
          acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * D + d), _mm512_loadu_ps(kt + d), acc);
        scores[g * stride + t] = scale * _mm512_reduce_add_ps(acc);
      }
    }
    return;
  }
#endif
  for (int64_t t = 0; t < n_keys; ++t) {
    const float* kt = k + t * key_stride;
    for (int64_t g = 0; g < G; ++g) {
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += q[g * D + d] * kt[d];
      scores[g * stride + t] = scale * s;
    }
  }
}

// acc[g] += sum_t p[g * stride + t] * v_t over the keys of one block.
inline void block_values(const float* p, const float* v, int64_t n_keys, int64_t key_stride,
                         int64_t G, int64_t D, int64_t stride, float* acc) {
  for (int64_t t = 0; t < n_keys; ++t) {
    const float* vt = v + t * key_stride;
    for (int64_t g = 0; g < G; ++g) {
      const float w = p[g * stride + t];
      float* a = acc + g * D;
#if defined(__AVX512F__)
      if (D % 16 == 0) {
        const __m512 wv = _mm512_set1_ps(w);
        for (int64_t d = 0; d < D; d += 16)
          _mm512_storeu_ps(a + d, _mm512_fmadd_ps(wv, _mm512_loadu_ps(vt + d),
                                                  _mm512_loadu_ps(a + d)));
        continue;
      }
#endif
      for (int64_t d = 0; d < D; ++d) a[d] += w * vt[d];
    }
  }
}

#if defined(__AVX512F__)
// e^x for x <= 0 (softmax after subtracting the max): range reduction x = n ln2 + r,
// |r| <= ln2 / 2, degree-6 Taylor polynomial (relative error < 4e-7), then scale by 2^n.
inline __m512 exp_nonpositive(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.f / 720);
  for (float c : {1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}
#endif

// s[t] <- exp(s[t] - max(s)); returns the sum (the caller folds 1/sum into the output).
inline float softmax_unnormalized(float* s, int64_t len) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < len; ++t) mx = s[t] > mx ? s[t] : mx;
  float sum = 0.f;
  int64_t t = 0;
#if defined(__AVX512F__)
  __m512 vsum = _mm512_setzero_ps();
  const __m512 vmx = _mm512_set1_ps(mx);
  for (; t + 16 <= len; t += 16) {
    const __m512 e = exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(s + t), vmx));
    _mm512_storeu_ps(s + t, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  sum = _mm512_reduce_add_ps(vsum);
#endif
  for (; t < len; ++t) {
    s[t] = std::exp(s[t] - mx);
    sum += s[t];
  }
  return sum;
}

}  // namespace

torch::Tensor paged_decode(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                           torch::Tensor block_tables, torch::Tensor seq_lens, double scale) {
  TORCH_CHECK(q.scalar_type() == torch::kFloat32 && k_cache.scalar_type() == torch::kFloat32 &&
                  v_cache.scalar_type() == torch::kFloat32,
              "paged_decode: float32 only");
  TORCH_CHECK(block_tables.scalar_type() == torch::kInt64 && seq_lens.scalar_type() == torch::kInt64,
              "paged_decode: int64 block tables and lengths");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_decode: contiguous cache");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  seq_lens = seq_lens.contiguous();
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t BS = k_cache.size(1), KVH = k_cache.size(2);
  const int64_t G = H / KVH, MB = block_tables.size(1);
  const int64_t key_stride = KVH * D;  // consecutive slots of one kv head
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* sl = seq_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  const float fscale = static_cast<float>(scale);

  // One task per request, all heads together: a slot's K (or V) row for every kv head is one
  // contiguous run of KVH * D floats, so each cache line is read once.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> scores;
    std::vector<float> acc(H * D);
    std::vector<float> inv_sum(H);
    for (int64_t b = begin; b < end; ++b) {
      const int64_t len = sl[b];
      scores.resize(H * len);
      for (int64_t start = 0; start < len; start += BS) {
        const int64_t n = std::min(BS, len - start);
        const float* kb = kp + bt[b * MB + start / BS] * BS * KVH * D;
        for (int64_t h = 0; h < KVH; ++h)
          block_scores(qp + (b * H + h * G) * D, kb + h * D, n, key_stride, G, D, fscale,
                       scores.data() + h * G * len + start, len);
      }
      for (int64_t g = 0; g < H; ++g) inv_sum[g] = 1.f / softmax_unnormalized(scores.data() + g * len, len);
      std::fill(acc.begin(), acc.end(), 0.f);
      for (int64_t start = 0; start < len; start += BS) {
        const int64_t n = std::min(BS, len - start);
        const float* vb = vp + bt[b * MB + start / BS] * BS * KVH * D;
        for (int64_t h = 0; h < KVH; ++h)
          block_values(scores.data() + h * G * len + start, vb + h * D, n, key_stride, G, D, len,
                       acc.data() + h * G * D);
      }
      for (int64_t g = 0; g < H; ++g) {
        float* o = op + (b * H + g) * D;
        for (int64_t d = 0; d < D; ++d) o[d] = acc[g * D + d] * inv_sum[g];
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode, "paged attention for one query token per request");
}
