// The paged attention op and the fused RoPE + KV write (kernels in attention.h).
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention.h"

namespace {

using namespace chatfleet::attn;

// Below this many key-row pairs per thread, waking another thread costs more than it saves:
// a pair is ~40 ns of work (all kv heads), a fork to spinning workers a few microseconds.
constexpr int64_t kMinKeysPerThread = 512;

struct Work {
  int64_t request, first_row, rows, kv_head;
};

template <typename T>
void run(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
         const at::Tensor& block_tables, const at::Tensor& row_starts, const at::Tensor& seq_lens,
         float scale, int64_t num_threads, at::Tensor& out) {
  const int64_t H = q.size(1), D = q.size(2);
  const int64_t BS = k_cache.size(1), KVH = k_cache.size(2), G = H / KVH;
  const int64_t HS = head_stride<T>(D);
  TORCH_CHECK(k_cache.size(3) == HS, "paged_attention: cache heads of ", k_cache.size(3),
              " elements, queries of ", D);
  const int64_t N = block_tables.size(0), MB = block_tables.size(1);
  const Kernels<T> fns = pick<T>(G, D);
  TORCH_CHECK(fns.row != nullptr, "paged_attention: unsupported head_dim / group size ", D, " / ",
              G);
  const float* qp = q.data_ptr<float>();
  const T* kp = reinterpret_cast<const T*>(k_cache.data_ptr());
  const T* vp = reinterpret_cast<const T*>(v_cache.data_ptr());
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* rs = row_starts.data_ptr<int64_t>();
  const int64_t* sl = seq_lens.data_ptr<int64_t>();
  float* op = out.data_ptr<float>();
  std::vector<Work> work;
  int64_t total_keys = 0;
  for (int64_t i = 0; i < N; ++i)
    for (int64_t r = rs[i]; r < rs[i + 1]; r += kRowTile) {
      const int64_t rows = std::min<int64_t>(kRowTile, rs[i + 1] - r);
      for (int64_t h = 0; h < KVH; ++h) work.push_back({i, r, rows, h});
      total_keys += sl[r + rows - 1] * rows;  // key-row pairs, as if each row ran alone
    }
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min(num_threads, total_keys / kMinKeysPerThread)));
  const int64_t num_work = static_cast<int64_t>(work.size());
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> scores;
    TileScratch scratch;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < num_work; ++i) {
      const Work& wk = work[i];
      const int64_t h = wk.kv_head, r = wk.first_row;
      // NOTE: a request with one row (a decode) always takes the register path and one with
      // several always the tile path, so its result never depends on the batch around it.
      if (rs[wk.request + 1] - rs[wk.request] == 1) {
        const Task task{qp + (r * H + h * G) * D, bt + wk.request * MB, sl[r], BS, KVH * HS,
                        h * HS, scale, op + (r * H + h * G) * D};
        fns.row(task, kp, vp, scores);
      } else {
        const TileTask task{qp + r * H * D, bt + wk.request * MB, sl + r, wk.rows, H, BS,
                            KVH * HS, h * HS, h, scale, op + r * H * D};
        fns.tile(task, kp, vp, scratch);
      }
    }
  }
}

}  // namespace

at::Tensor paged_attention(at::Tensor q, at::Tensor k_cache, at::Tensor v_cache,
                           at::Tensor block_tables, at::Tensor row_starts, at::Tensor seq_lens,
                           double scale, int64_t num_threads) {
  TORCH_CHECK(q.scalar_type() == at::kFloat, "paged_attention: float32 queries");
  TORCH_CHECK(k_cache.scalar_type() == v_cache.scalar_type(), "paged_attention: K/V dtypes differ");
  TORCH_CHECK(block_tables.scalar_type() == at::kLong && seq_lens.scalar_type() == at::kLong &&
                  row_starts.scalar_type() == at::kLong,
              "paged_attention: int64 block tables, row starts and lengths");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(),
              "paged_attention: contiguous cache");
  TORCH_CHECK(row_starts.numel() == block_tables.size(0) + 1, "paged_attention: row_starts size");
  q = q.contiguous();
  block_tables = block_tables.contiguous();
  row_starts = row_starts.contiguous();
  seq_lens = seq_lens.contiguous();
  TORCH_CHECK(row_starts[-1].item<int64_t>() == q.size(0) && seq_lens.numel() == q.size(0),
              "paged_attention: one length per row, rows covered by row_starts");
  auto out = at::empty_like(q);
  if (k_cache.scalar_type() == at::kFloat) {
    run<float>(q, k_cache, v_cache, block_tables, row_starts, seq_lens, scale, num_threads, out);
  } else if (k_cache.scalar_type() == at::kHalf) {
    run<c10::Half>(q, k_cache, v_cache, block_tables, row_starts, seq_lens, scale, num_threads,
                   out);
  } else {
    TORCH_CHECK(k_cache.scalar_type() == at::kChar, "paged_attention: fp32, fp16 or int8 cache");
    run<int8_t>(q, k_cache, v_cache, block_tables, row_starts, seq_lens, scale, num_threads, out);
  }
  return out;
}

namespace {

using namespace chatfleet::attn;

template <typename T>
void rope_store(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                const at::Tensor& slots, at::Tensor& k_cache, at::Tensor& v_cache, int64_t H,
                at::Tensor& q_out) {
  const int64_t T_ = qkv.size(0), KVH = k_cache.size(2), D = cos.size(1);
  const int64_t width = qkv.size(1), HS = head_stride<T>(D);
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
    T* kdst = kc + slot[t] * KVH * HS;
    T* vdst = vc + slot[t] * KVH * HS;
    for (int64_t h = 0; h < KVH; ++h)
      store_kv_head<T>(row + (H + h) * D, row + (H + KVH + h) * D, c, s, D, kdst + h * HS,
                       vdst + h * HS);
  }
}

}  // namespace

// qkv [T, (H + 2 KVH) D] fp32 straight from the fused projection; cos/sin [T, D] for each
// token's position; slots [T]. Writes RoPE'd K and V into the caches ([NB, BS, KVH, D] in
// fp32 or fp16, [NB, BS, KVH, D + 4] in int8: codes then a scale) and returns RoPE'd queries
// [T, H, D]: one pass instead of ~10 eager ops.
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
  const int64_t D = cos.size(1), KVH = k_cache.size(2);
  TORCH_CHECK(qkv.size(1) == (num_heads + 2 * KVH) * D, "rope_write_kv: qkv width");
  auto q = at::empty({qkv.size(0), num_heads, D}, qkv.options());
  if (k_cache.scalar_type() == at::kFloat) {
    rope_store<float>(qkv, cos, sin, slots, k_cache, v_cache, num_heads, q);
  } else if (k_cache.scalar_type() == at::kHalf) {
    rope_store<c10::Half>(qkv, cos, sin, slots, k_cache, v_cache, num_heads, q);
  } else {
    TORCH_CHECK(k_cache.scalar_type() == at::kChar, "rope_write_kv: fp32, fp16 or int8 cache");
    rope_store<int8_t>(qkv, cos, sin, slots, k_cache, v_cache, num_heads, q);
  }
  return q;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention", &paged_attention, "paged attention for query rows grouped by request",
        py::call_guard<py::gil_scoped_release>());
  m.def("rope_write_kv", &rope_write_kv, "RoPE on q/k and K/V cache write, fused",
        py::call_guard<py::gil_scoped_release>());
}
