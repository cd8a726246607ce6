// Decode-time paged attention on the CPU: one query token per request reads its keys and
// values straight out of the block table, so nothing is gathered or padded.
//
//   q            [B, H, D]            float32, one token per request
//   k/v_cache    [NB, BS, KVH, D]     float32 or float16 (converted in registers), one layer
//   block_tables [B, MB]              int64
//   seq_lens     [B]                  int64, keys each request attends to
//   out          [B, H, D]            float32
//
// One task per (request, kv head): its G = H / KVH query heads share every key and value
// load, and their accumulators stay in registers. A task runs start to end on one thread in
// a fixed order, so a request's result does not depend on the rest of the batch.
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "vec_math.h"

namespace {

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
inline __m512 load16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// s[t] <- exp(s[t] - max(s)); returns the sum (the caller folds 1/sum into the output).
inline float softmax_unnormalized(float* s, int64_t len) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t t = 0; t < len; ++t) mx = s[t] > mx ? s[t] : mx;
  __m512 vsum = _mm512_setzero_ps();
  const __m512 vmx = _mm512_set1_ps(mx);
  int64_t t = 0;
  for (; t + 16 <= len; t += 16) {
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

// One (request, kv head): scores for all keys, softmax, then the weighted sum of values.
template <typename T, int G, int D>
void attend(const Task& task, const T* k_cache, const T* v_cache, std::vector<float>& scores) {
  constexpr int V = D / 16;
  const int64_t len = task.len, bs = task.block_size;
  scores.resize(G * len);
  float* s = scores.data();
  {
    __m512 qv[G][V];
    for (int g = 0; g < G; ++g)
      for (int v = 0; v < V; ++v)
        qv[g][v] = _mm512_mul_ps(_mm512_loadu_ps(task.q + g * D + 16 * v),
                                 _mm512_set1_ps(task.scale));
    for (int64_t start = 0; start < len; start += bs) {
      const int64_t n = std::min(bs, len - start);
      const T* kb = k_cache + task.table[start / bs] * bs * task.slot_stride + task.head_offset;
      for (int64_t t = 0; t < n; ++t) {
        __m512 kv[V];
        for (int v = 0; v < V; ++v) kv[v] = load16(kb + t * task.slot_stride + 16 * v);
        for (int g = 0; g < G; ++g) {
          __m512 acc = _mm512_mul_ps(qv[g][0], kv[0]);
          for (int v = 1; v < V; ++v) acc = _mm512_fmadd_ps(qv[g][v], kv[v], acc);
          s[g * len + start + t] = _mm512_reduce_add_ps(acc);
        }
      }
    }
  }
  float inv[G];
  for (int g = 0; g < G; ++g) inv[g] = 1.f / softmax_unnormalized(s + g * len, len);
  __m512 acc[G][V];
  for (int g = 0; g < G; ++g)
    for (int v = 0; v < V; ++v) acc[g][v] = _mm512_setzero_ps();
  for (int64_t start = 0; start < len; start += bs) {
    const int64_t n = std::min(bs, len - start);
    const T* vb = v_cache + task.table[start / bs] * bs * task.slot_stride + task.head_offset;
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
}

template <typename T>
using AttendFn = void (*)(const Task&, const T*, const T*, std::vector<float>&);

// The (G, D) instantiation for this model shape; nullptr when unsupported.
template <typename T>
AttendFn<T> pick(int64_t G, int64_t D) {
#define CHATFLEET_CASE(g)                              \
  case g:                                              \
    return D == 64 ? attend<T, g, 64> : attend<T, g, 128>;
  if (D != 64 && D != 128) return nullptr;
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
      return nullptr;
  }
#undef CHATFLEET_CASE
}

// Below this many keys in the whole batch, waking a second thread costs more than it saves.
constexpr int64_t kMinKeysPerThread = 2048;

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
         const at::Tensor& block_tables, const at::Tensor& seq_lens, float scale,
         int64_t num_threads, at::Tensor& out) {
  const int64_t B = q.size(0), H = q.size(1), D = q.size(2);
  const int64_t BS = k_cache.size(1), KVH = k_cache.size(2), G = H / KVH;
  const int64_t MB = block_tables.size(1);
  const AttendFn<T> fn = pick<T>(G, D);
  TORCH_CHECK(fn != nullptr, "paged_decode: unsupported head_dim / group size ", D, " / ", G);
  const float* qp = q.data_ptr<float>();
  const T* kp = reinterpret_cast<const T*>(k_cache.data_ptr());
  const T* vp = reinterpret_cast<const T*>(v_cache.data_ptr());
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* sl = seq_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  int64_t total_keys = 0;
  for (int64_t b = 0; b < B; ++b) total_keys += sl[b];
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min(num_threads, total_keys / kMinKeysPerThread)));
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> scores;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < B * KVH; ++i) {
      const int64_t b = i / KVH, h = i % KVH;
      const Task task{qp + (b * H + h * G) * D, bt + b * MB, sl[b],  BS, KVH * D, h * D, scale,
                      op + (b * H + h * G) * D};
      fn(task, kp, vp, scores);
    }
  }
}

}  // namespace

at::Tensor paged_decode(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                        at::Tensor block_tables, at::Tensor seq_lens, double scale,
                        int64_t num_threads) {
  TORCH_CHECK(q.scalar_type() == at::kFloat, "paged_decode: float32 queries");
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "paged_decode: K/V dtypes differ");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && seq_lens.scalar_type() == at::kLong,
              "paged_decode: int64 block tables and lengths");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_decode: contiguous cache");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  seq_lens = seq_lens.contiguous();
  auto out = at::empty_like(q);
  if (k_cache.scalar_type() == at::kFloat) {
    run<float>(q, k_cache, v_cache, block_tables, seq_lens, scale, num_threads, out);
  } else {
    TORCH_CHECK(k_cache.scalar_type() == at::kHalf, "paged_decode: float32 or float16 cache");
    run<c10::Half>(q, k_cache, v_cache, block_tables, seq_lens, scale, num_threads, out);
  }
  return out;
}

namespace {

template <typename T>
inline T cast_to(float v) { return static_cast<T>(v); }

// Rotate-half RoPE of one head (HF layout: pairs i and i + D/2) from src into dst.
template <typename T>
inline void rope_head(const float* src, const float* cos, const float* sin, int64_t D, T* dst) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    dst[i] = cast_to<T>(src[i] * cos[i] - src[i + half] * sin[i]);
    dst[i + half] = cast_to<T>(src[i + half] * cos[i + half] + src[i] * sin[i + half]);
  }
}

template <typename T>
void rope_store(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                const at::Tensor& slots, at::Tensor& k_cache, at::Tensor& v_cache, int64_t H,
                at::Tensor& q_out) {
  const int64_t T_ = qkv.size(0), KVH = k_cache.size(2), D = k_cache.size(3);
  const int64_t width = qkv.size(1);
  const float* x = qkv.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  T* kc = reinterpret_cast<T*>(k_cache.data_ptr());
  T* vc = reinterpret_cast<T*>(v_cache.data_ptr());
  float* q = q_out.data_ptr<float>();
  for (int64_t t = 0; t < T_; ++t) {
    const float* row = x + t * width;
    const float *c = cp + t * D, *s = sp + t * D;
    for (int64_t h = 0; h < H; ++h) rope_head<float>(row + h * D, c, s, D, q + (t * H + h) * D);
    T* kdst = kc + slot[t] * KVH * D;
    T* vdst = vc + slot[t] * KVH * D;
    for (int64_t h = 0; h < KVH; ++h) {
      rope_head<T>(row + (H + h) * D, c, s, D, kdst + h * D);
      for (int64_t d = 0; d < D; ++d) vdst[h * D + d] = cast_to<T>(row[(H + KVH + h) * D + d]);
    }
  }
}

}  // namespace

// qkv [T, (H + 2 KVH) D] fp32 straight from the fused projection; cos/sin [T, D] for each
// token's position; slots [T]. Writes RoPE'd K and V into the caches ([NB, BS, KVH, D], fp32
// or fp16) and returns RoPE'd queries [T, H, D]: one pass instead of ~10 eager ops.
at::Tensor rope_write_kv(at::Tensor qkv, at::Tensor cos, at::Tensor sin, at::Tensor slots,
                         at::Tensor k_cache, at::Tensor v_cache, int64_t num_heads) {
  TORCH_CHECK(qkv.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat &&
                  sin.scalar_type() == at::kFloat,
              "rope_write_kv: float32 activations");
  TORCH_CHECK(slots.scalar_type() == at::kLong, "rope_write_kv: int64 slots");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "rope_write_kv: contiguous");
  qkv = qkv.contiguous();
  cos = cos.contiguous();
  sin = sin.contiguous();
  slots = slots.contiguous();
  const int64_t D = k_cache.size(3), KVH = k_cache.size(2);
  TORCH_CHECK(qkv.size(1) == (num_heads + 2 * KVH) * D, "rope_write_kv: qkv width");
  auto q = at::empty({qkv.size(0), num_heads, D}, qkv.options());
  if (k_cache.scalar_type() == at::kFloat) {
    rope_store<float>(qkv, cos, sin, slots, k_cache, v_cache, num_heads, q);
  } else {
    TORCH_CHECK(k_cache.scalar_type() == at::kHalf, "rope_write_kv: float32 or float16 cache");
    rope_store<c10::Half>(qkv, cos, sin, slots, k_cache, v_cache, num_heads, q);
  }
  return q;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_decode", &paged_decode, "paged attention for one query token per request",
        py::call_guard<py::gil_scoped_release>());
  m.def("rope_write_kv", &rope_write_kv, "RoPE on q/k and K/V cache write, fused",
        py::call_guard<py::gil_scoped_release>());
}
