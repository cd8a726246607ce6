// Every decoder layer of a decode-only step in one call and one OpenMP parallel region.
//
// The unfused path makes ~6 calls per layer from Python (four qlinear, RoPE + KV write,
// attention): at batch 1 each call streams 0.2-2 MB of weights in tens of microseconds, and
// the memory bus idles through the Python glue and the fork/join between them (measured: ~10
// GB/s per call against ~18 GB/s for a long read). Here the threads stay in one parallel
// region for the whole step and meet at barriers between phases, so weight reads follow one
// another back to back.
//
// Each phase calls the very functions of the unfused ops (qlinear.h, attention.h) on the same
// data, so the result equals the unfused path bit for bit (tests/model/test_fused_decode.py).
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <vector>

#include "attention.h"
#include "qlinear.h"

namespace {

namespace ql = chatfleet::ql;

namespace attn = chatfleet::attn;

using ql::share;

struct Weight {
  ql::PackedWeight packed;
  int bits;
  int64_t n_tiles;
  int64_t tile_mask = 0;  // row buckets on AMX tiles (qlinear.h, tile_use)
  ql::TileUse amx = ql::TileUse::kNone;  // for this step's row count
};

Weight weight_of(const at::Tensor& codes, const at::Tensor& scales, const at::Tensor& zeros) {
  TORCH_CHECK(codes.dtype() == at::kByte && codes.dim() == 5 && codes.is_contiguous() &&
                  reinterpret_cast<uintptr_t>(codes.data_ptr()) % 64 == 0,
              "decode_layers: bad packed weight");
  TORCH_CHECK(scales.dtype() == at::kHalf && zeros.dtype() == at::kHalf &&
                  scales.is_contiguous() && zeros.is_contiguous(),
              "decode_layers: scales and zeros must be contiguous fp16");
  return {{codes.data_ptr<uint8_t>(), scales.data_ptr<c10::Half>(), zeros.data_ptr<c10::Half>()},
          static_cast<int>(codes.size(2)),  // vectors per block = bits per code
          codes.size(0)};
}

template <typename T>
void run_layers(at::Tensor& h, const std::vector<Weight>& w, const std::vector<float*>& norms,
                const std::vector<at::Tensor>& kv_caches,
                const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& slots,
                const at::Tensor& block_tables, const at::Tensor& seq_lens, int64_t H, float eps,
                float scale, int nt) {
  const int64_t L = static_cast<int64_t>(kv_caches.size());
  const int64_t M = h.size(0), E = h.size(1);
  const int64_t NB = kv_caches[0].size(1), BS = kv_caches[0].size(2);
  const int64_t KVH = kv_caches[0].size(3), D = cos.size(1), G = H / KVH;
  const int64_t HS = attn::head_stride<T>(D);
  TORCH_CHECK(kv_caches[0].size(4) == HS, "decode_layers: cache heads and head_dim differ");
  const int64_t W_qkv = (H + 2 * KVH) * D, I = w[2].n_tiles * ql::kTile / 2;
  const int64_t MB = block_tables.size(1);
  const attn::Kernels<T> fns = attn::pick<T>(G, D);
  TORCH_CHECK(fns.row != nullptr, "decode_layers: unsupported head_dim / group size");
  std::vector<float> qkv(M * W_qkv), q(M * H * D), att(M * H * D), gu(M * 2 * I);
  // One quantized input per width, so no thread rewrites what another still reads.
  ql::QuantizedRows q_e, q_a, q_i;
  const bool tiles = std::any_of(w.begin(), w.end(), [](const Weight& x) {
    return x.amx != ql::TileUse::kNone;
  });
  ql::resize(q_e, M, E, tiles);
  ql::resize(q_a, M, H * D, tiles);
  ql::resize(q_i, M, I, tiles);
  float* hp = h.data_ptr<float>();
  const float *cp = cos.data_ptr<float>(), *sp = sin.data_ptr<float>();
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t* bt = block_tables.data_ptr<int64_t>();
  const int64_t* sl = seq_lens.data_ptr<int64_t>();
  const int64_t cache_elems = NB * BS * KVH * HS;

#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num(), n = omp_get_num_threads();
    const auto rows = share(M, tid, n);
    std::vector<float> row(std::max({E, H * D, I})), scores;
    // x [M, ld] -> prologue -> qx (rows split), then y = qx @ W^T (+ residual) (tiles split).
    auto linear = [&](const float* x, int64_t ld, ql::QuantizedRows& qx,
                      const ql::Prologue& pro, const Weight& wt, float* y,
                      const float* residual) {
      const auto tiles = share(wt.n_tiles, tid, n);
      ql::quantize_rows(x, ld, pro, rows.first, rows.second, qx, row.data());
#pragma omp barrier
      const ql::Output out{y, residual, wt.n_tiles * ql::kTile};
      ql::run_tiles(wt.packed, qx, M, wt.bits, tiles.first, tiles.second, out, wt.amx);
#pragma omp barrier
    };
    for (int64_t l = 0; l < L; ++l) {
      const Weight* lw = w.data() + 4 * l;
      T* kc = reinterpret_cast<T*>(kv_caches[l].data_ptr());
      T* vc = kc + cache_elems;
      ql::Prologue attn_norm{norms[2 * l], eps, false};
      linear(hp, E, q_e, attn_norm, lw[0], qkv.data(), nullptr);
      for (int64_t m = rows.first; m < rows.second; ++m) {  // RoPE, K/V into the cache
        const float* r = qkv.data() + m * W_qkv;
        const float *c = cp + m * D, *s = sp + m * D;
        for (int64_t hh = 0; hh < H; ++hh)
          attn::rope_head<float>(r + hh * D, c, s, D, q.data() + (m * H + hh) * D);
        T* kdst = kc + slot[m] * KVH * HS;
        T* vdst = vc + slot[m] * KVH * HS;
        for (int64_t hh = 0; hh < KVH; ++hh)
          attn::store_kv_head<T>(r + (H + hh) * D, r + (H + KVH + hh) * D, c, s, D,
                                 kdst + hh * HS, vdst + hh * HS);
      }
#pragma omp barrier
      // Rows take as long as their contexts, which differ (a batch's oldest requests first),
      // so they go to whichever thread is free (a row comes out the same whichever takes it).
      // A request's kv heads sit side by side in its cache blocks: one thread takes them all,
      // unless there are fewer requests than threads.
      const int64_t tasks = M * KVH, per = M >= n ? KVH : 1;
      const int64_t chunk = ql::chunk_of(tasks / per, n) * per;
#pragma omp for schedule(dynamic)  // ends with a barrier
      for (int64_t first = 0; first < tasks; first += chunk) {
        for (int64_t i = first; i < std::min(first + chunk, tasks); ++i) {
          const int64_t m = i / KVH, hh = i % KVH;
          const attn::Task task{q.data() + (m * H + hh * G) * D, bt + m * MB, sl[m], BS,
                                KVH * HS, hh * HS, scale, att.data() + (m * H + hh * G) * D};
          fns.row(task, kc, vc, scores);
        }
      }
      linear(att.data(), H * D, q_a, ql::Prologue{}, lw[1], hp, hp);
      ql::Prologue ffn_norm{norms[2 * l + 1], eps, false};
      linear(hp, E, q_e, ffn_norm, lw[2], gu.data(), nullptr);
      ql::Prologue swiglu{nullptr, 0.0f, true};
      linear(gu.data(), 2 * I, q_i, swiglu, lw[3], hp, hp);
    }
  }
}

// The model's half of a fused step, checked and gathered once: each linear's packed weight
// and each norm. Converting and checking every weight tensor on each call was a visible share
// of a one-stream step; a step now passes only what changes.
class DecodeLayers {
 public:
  // weights: per layer qkv, o, gate_up, down as (codes, scales, zeros); norms: per layer
  // attn_norm, ffn_norm [E] fp32.
  DecodeLayers(std::vector<at::Tensor> weights, std::vector<at::Tensor> norms, int64_t num_heads,
               double eps)
      : weights_(std::move(weights)), norms_(std::move(norms)), num_heads_(num_heads),
        eps_(static_cast<float>(eps)) {
    const size_t L = norms_.size() / 2;
    TORCH_CHECK(L > 0 && norms_.size() == 2 * L && weights_.size() == 12 * L,
                "DecodeLayers: 12 weight tensors and 2 norms per layer");
    for (size_t i = 0; i < 4 * L; ++i)
      w_.push_back(weight_of(weights_[3 * i], weights_[3 * i + 1], weights_[3 * i + 2]));
    for (auto& nw : norms_) {
      TORCH_CHECK(nw.scalar_type() == at::kFloat && nw.is_contiguous() &&
                      nw.numel() == norms_[0].numel(),
                  "DecodeLayers: norm weights [E] fp32");
      norm_ptrs_.push_back(nw.data_ptr<float>());
    }
  }

  // h [M, E] fp32: the hidden states of M decode tokens (one per request), updated through
  // every layer and returned. kv_caches: per layer [2, NB, BS, KVH, D] (D + 4 in int8: codes
  // then a scale); cos/sin [M, D]; slots [M]; block_tables [M, MB]; seq_lens [M] (keys each
  // token attends to).
  at::Tensor run(at::Tensor h, const std::vector<at::Tensor>& kv_caches, at::Tensor cos,
                 at::Tensor sin, at::Tensor slots, at::Tensor block_tables, at::Tensor seq_lens,
                 double scale, int64_t num_threads) const {
    TORCH_CHECK(kv_caches.size() == norms_.size() / 2, "decode_layers: a cache per layer");
    TORCH_CHECK(h.scalar_type() == at::kFloat && cos.scalar_type() == at::kFloat &&
                    sin.scalar_type() == at::kFloat && h.size(1) == norms_[0].numel(),
                "decode_layers: fp32 activations of the model's width");
    TORCH_CHECK(slots.scalar_type() == at::kLong && block_tables.scalar_type() == at::kLong &&
                    seq_lens.scalar_type() == at::kLong,
                "decode_layers: int64 slots, block tables and lengths");
    for (const auto& kv : kv_caches)
      TORCH_CHECK(kv.is_contiguous() && kv.dim() == 5 &&
                      kv.scalar_type() == kv_caches[0].scalar_type(),
                  "decode_layers: contiguous [2, NB, BS, KVH, D] caches of one dtype");
    h = h.contiguous().clone();
    cos = cos.contiguous();
    sin = sin.contiguous();
    slots = slots.contiguous();
    block_tables = block_tables.contiguous();
    seq_lens = seq_lens.contiguous();
    const int nt = static_cast<int>(std::max<int64_t>(1, num_threads));
    std::vector<Weight> tiled;  // a copy only where some matmul may take tiles
    if (any_tiles_) {
      tiled = w_;
      for (auto& wt : tiled) wt.amx = ql::tile_use(wt.tile_mask, h.size(0), emulate_tiles_);
    }
    const std::vector<Weight>& w = any_tiles_ ? tiled : w_;
    const float s = static_cast<float>(scale);
    const auto dtype = kv_caches[0].scalar_type();
    if (dtype == at::kFloat) {
      run_layers<float>(h, w, norm_ptrs_, kv_caches, cos, sin, slots, block_tables, seq_lens,
                        num_heads_, eps_, s, nt);
    } else if (dtype == at::kHalf) {
      run_layers<c10::Half>(h, w, norm_ptrs_, kv_caches, cos, sin, slots, block_tables,
                            seq_lens, num_heads_, eps_, s, nt);
    } else {
      TORCH_CHECK(dtype == at::kChar, "decode_layers: fp32, fp16 or int8 cache");
      run_layers<int8_t>(h, w, norm_ptrs_, kv_caches, cos, sin, slots, block_tables, seq_lens,
                         num_heads_, eps_, s, nt);
    }
    return h;
  }

  // Per linear (qkv, o, gate_up, down of each layer), the row buckets its matmuls run on AMX
  // tiles, as the qlinear op takes them; emulate: on the tiles' software copy.
  void set_tiles(const std::vector<int64_t>& masks, bool emulate) {
    TORCH_CHECK(masks.size() == w_.size(), "decode_layers: a tile mask per linear");
    const bool any = std::any_of(masks.begin(), masks.end(), [](int64_t m) { return m != 0; });
    TORCH_CHECK(!any || emulate || chatfleet::tiles::ready(),
                "decode_layers: this CPU (or this process) cannot use AMX tiles");
    for (size_t i = 0; i < w_.size(); ++i) w_[i].tile_mask = masks[i];
    any_tiles_ = any;
    emulate_tiles_ = emulate;
  }

 private:
  std::vector<at::Tensor> weights_, norms_;  // held so the pointers below stay valid
  std::vector<Weight> w_;
  std::vector<float*> norm_ptrs_;
  int64_t num_heads_;
  float eps_;
  bool any_tiles_ = false, emulate_tiles_ = false;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  py::class_<DecodeLayers>(m, "DecodeLayers")
      .def(py::init<std::vector<at::Tensor>, std::vector<at::Tensor>, int64_t, double>())
      .def("run", &DecodeLayers::run, "all decoder layers of a decode-only step, fused",
           py::call_guard<py::gil_scoped_release>())
      .def("set_tiles", &DecodeLayers::set_tiles, "per linear, the row buckets on AMX tiles");
}
