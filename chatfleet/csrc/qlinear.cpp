// Block-quantized linear layer for AVX-512 VNNI CPUs: y = x @ W^T with
//   W: 8-bit codes per 32-wide block along K, w = s * u + z  (u in 0..255, per-block s, z)
//   x: quantized on the fly per 32-wide block to 16 bits, x = dx * Q  (|Q| <= 32512)
// so one block contributes dx * (s * dot(u, Q) + z * sum(Q)), with dot(u, Q) exact in int32
// from VPDPBUSD (unsigned x signed bytes, 4 products per lane) over the two bytes of Q.
// NOTE: 8-bit activations (llama.cpp's Q8_1) moved this model's logits by up to ~1.2 and
// flipped greedy answers; 16-bit codes cost a second VPDPBUSD per weight vector and leave
// the result within float rounding of the fp32 matmul on the same weights.
//
// Packed weight layout, per tile of 16 output rows and per K block of 32 (512 bytes):
//   vector j (j = 0..7) holds, in lane l, the 4 codes u[n0 + l][32 kb + 4j .. 4j + 3]
//   so that VPDPBUSD with a broadcast of x[32 kb + 4j .. 4j + 3] yields 16 partial dots.
//   Narrower codes are held in fewer bytes (4 bits: two a byte; 5 and 6: and bit planes) and
//   widened to this layout as they are loaded (qlinear.h, load_codes).
// Every output element is computed by the same instruction sequence whatever M is or where
// its row sits in the batch: results are batch-invariant bit for bit. Where the CPU has AMX,
// the blocks' int32 dots can come from tiles instead (qlinear.h, the tile pass): the same
// integers through the same float steps, so the same bits.
#include <torch/extension.h>
#include <omp.h>

#include "qlinear.h"

using namespace chatfleet::ql;

// y = prologue(x) @ W^T (+ residual).
//   x [M, K] fp32 (or [M, 2K] with swiglu); w [N/16, K/32, V, 16, 4] uint8 (V: 8-, 6-, 5- or
//   4-bit codes, see qlinear.h); s, z [N/16, K/32, 16] fp16 (6-bit: [N/16, K/32, 2, 16]);
//   residual [M, N] fp32 or None -> y [M, N] fp32. tile_mask: the row buckets that run on AMX
//   tiles (qlinear.h, tile_use), the same bits; emulate_tiles: on their software copy.
at::Tensor qlinear(at::Tensor x, at::Tensor w, at::Tensor s, at::Tensor z, int64_t num_threads,
                   c10::optional<at::Tensor> norm_weight, double eps, bool swiglu,
                   c10::optional<at::Tensor> residual, int64_t tile_mask, bool emulate_tiles) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 2, "x must be 2-D fp32");
  TORCH_CHECK(w.dtype() == at::kByte && w.dim() == 5 && w.is_contiguous(), "bad packed weight");
  TORCH_CHECK(w.size(2) >= 4 && w.size(2) <= 8 && w.size(2) != 7,
              "packed weight: 8-, 6-, 5- or 4-bit codes");
  TORCH_CHECK(s.numel() == z.numel() && s.numel() == w.size(0) * w.size(1) * kTile *
                                                         (w.size(2) == 6 ? 2 : 1),
              "scales and zeros: one per output row and block (6-bit: per half block)");
  TORCH_CHECK(s.dtype() == at::kHalf && z.dtype() == at::kHalf, "scales and zeros must be fp16");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(w.data_ptr()) % 64 == 0, "weight must be 64B aligned");
  x = x.contiguous();
  const int64_t M = x.size(0), nb = w.size(1), K = nb * kBlock, N = w.size(0) * kTile;
  TORCH_CHECK(x.size(1) == (swiglu ? 2 * K : K), "x width does not match the packed weight");
  Prologue pro;
  at::Tensor norm;
  if (norm_weight.has_value()) {
    norm = norm_weight->contiguous();
    TORCH_CHECK(norm.dtype() == at::kFloat && norm.numel() == K, "norm weight must be [K] fp32");
    pro.norm_weight = norm.data_ptr<float>();
    pro.eps = static_cast<float>(eps);
  }
  pro.swiglu = swiglu;
  at::Tensor res;
  if (residual.has_value()) {
    res = residual->contiguous();
    TORCH_CHECK(res.dtype() == at::kFloat && res.size(0) == M && res.size(1) == N,
                "residual must be [M, N] fp32");
  }
  const TileUse amx = tile_use(tile_mask, M, emulate_tiles);
  TORCH_CHECK(amx != TileUse::kHardware || chatfleet::tiles::ready(),
              "qlinear: this CPU (or this process) cannot use AMX tiles");
  auto y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  QuantizedRows q;
  resize(q, M, K, amx != TileUse::kNone);
  const float* xp = x.data_ptr<float>();
  const int64_t ld = x.size(1), bits = w.size(2);  // vectors per block = bits per code
  const PackedWeight pw{w.data_ptr<uint8_t>(), s.data_ptr<c10::Half>(), z.data_ptr<c10::Half>()};
  const Output out{y.data_ptr<float>(), res.defined() ? res.data_ptr<float>() : nullptr, N};
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min(num_threads, M * N * K / kMinMacsPerThread)));
  // Threads quantize their share of the rows (a SwiGLU's exp above all is a sizeable part of a
  // many-row matmul; a few rows go before the threads start: the barrier would cost more), then
  // multiply output tiles, reading each tile's weights once per row pass. A few rows are bound
  // by reading W: each thread streams one contiguous slice. More are bound by arithmetic: the
  // tiles go to whichever thread is free (chunk_of), so a thread the machine slows holds up no
  // other (a tile comes out the same whichever thread computes it).
  const bool share_rows = M > kRowsPerPass;
  if (!share_rows) quantize_rows(xp, ld, pro, 0, M, q, std::vector<float>(K).data());
#pragma omp parallel num_threads(threads)
  {
    const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
    if (share_rows) {  // the same for every thread, so all of them reach the barrier
      std::vector<float> mine(K);
      const auto rows = share(M, tid, nt);
      quantize_rows(xp, ld, pro, rows.first, rows.second, q, mine.data());
#pragma omp barrier
    }
    const int64_t n_tiles = N / kTile;
    if (!share_rows) {
      const auto tiles = share(n_tiles, tid, nt);
      run_tiles(pw, q, M, static_cast<int>(bits), tiles.first, tiles.second, out, amx);
    } else {
      const int64_t chunk = chunk_of(n_tiles, nt);
#pragma omp for schedule(dynamic) nowait
      for (int64_t t = 0; t < n_tiles; t += chunk)
        run_tiles(pw, q, M, static_cast<int>(bits), t, std::min(t + chunk, n_tiles), out, amx);
    }
  }
  return y;
}

// Rows `ids` of W as fp32 [T, K], s * u + z as dequantizing the whole matrix gives them (an
// embedding lookup): 8- or 4-bit codes with a scale and zero per block. One call, where
// gathering the rows' lanes in torch takes a dozen small ops a step.
at::Tensor rows(at::Tensor w, at::Tensor s, at::Tensor z, at::Tensor ids) {
  TORCH_CHECK(w.dtype() == at::kByte && w.dim() == 5 && w.is_contiguous(), "bad packed weight");
  const int bits = static_cast<int>(w.size(2));
  TORCH_CHECK(bits == 8 || bits == 4, "rows: 8- or 4-bit codes");
  TORCH_CHECK(s.dtype() == at::kHalf && z.dtype() == at::kHalf && s.is_contiguous() &&
                  z.is_contiguous() && s.numel() == w.size(0) * w.size(1) * kTile &&
                  z.numel() == s.numel(),
              "rows: a scale and zero per output row and block");
  TORCH_CHECK(ids.dtype() == at::kLong && ids.dim() == 1, "rows: ids must be 1-D int64");
  ids = ids.contiguous();
  const int64_t T = ids.numel(), nb = w.size(1), K = nb * kBlock, N = w.size(0) * kTile;
  const int64_t block_bytes = kBlock * kTile * bits / 8;
  auto out = at::empty({T, K}, at::kFloat);
  const int64_t* id = ids.data_ptr<int64_t>();
  const uint8_t* codes = w.data_ptr<uint8_t>();
  const c10::Half* scales = s.data_ptr<c10::Half>();
  const c10::Half* zeros = z.data_ptr<c10::Half>();
  float* o = out.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK_INDEX(id[t] >= 0 && id[t] < N, "row ", id[t], " of a ", N, "-row weight");
    const int64_t tile = id[t] / kTile, lane = id[t] % kTile;
    for (int64_t b = 0; b < nb; ++b) {
      // Vector j holds, in lane `lane`, the row's codes of columns 4j..4j+3 (4 bits: vector j
      // in the low nibbles, j + 4 in the high ones), as qlinear.h lays them out.
      const uint8_t* v = codes + (tile * nb + b) * block_bytes + lane * 4;
      const int64_t at = (tile * nb + b) * kTile + lane;
      const float sc = static_cast<float>(scales[at]), zr = static_cast<float>(zeros[at]);
      float* row = o + t * K + b * kBlock;
      for (int j = 0; j < bits; ++j) {  // as many vectors a block as bits a code
        for (int c = 0; c < 4; ++c) {
          const uint8_t byte = v[j * kTile * 4 + c];
          if (bits == 8) {
            row[4 * j + c] = static_cast<float>(byte) * sc + zr;
          } else {
            row[4 * j + c] = static_cast<float>(byte & 0x0F) * sc + zr;
            row[4 * (j + 4) + c] = static_cast<float>(byte >> 4) * sc + zr;
          }
        }
      }
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qlinear", &qlinear, "block-quantized linear (8-bit W, 16-bit x), fused prologue",
        py::arg("x"), py::arg("w"), py::arg("s"), py::arg("z"), py::arg("num_threads"),
        py::arg("norm_weight"), py::arg("eps"), py::arg("swiglu"), py::arg("residual"),
        py::arg("tile_mask") = 0, py::arg("emulate_tiles") = false,
        py::call_guard<py::gil_scoped_release>());
  m.def("tiles_ready", &chatfleet::tiles::ready,
        "whether this process may run AMX tile instructions (asks Linux for them once)");
  m.def("rows", &rows, "rows of a block-quantized weight as fp32",
        py::call_guard<py::gil_scoped_release>());
}
