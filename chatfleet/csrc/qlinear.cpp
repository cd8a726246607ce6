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
// Every output element is computed by the same instruction sequence whatever M is or where
// its row sits in the batch: results are batch-invariant bit for bit.
#include <torch/extension.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "vec_math.h"

namespace {

constexpr int kBlock = 32;
constexpr int kTile = 16;
constexpr int kRowsPerPass = 4;  // rows of x sharing one load of a weight block
// 127 * 256: the largest code whose bytes (hi, lo) both stay in -128..127.
constexpr float kMaxCode = 32512.0f;
// Below this many multiply-adds per thread, waking another thread costs more than it saves.
constexpr int64_t kMinMacsPerThread = 1 << 15;

// What happens to a row of x before it is quantized (fusing the op that feeds the matmul).
struct Prologue {
  const float* norm_weight = nullptr;  // RMSNorm with this weight, or
  float eps = 0.0f;
  bool swiglu = false;                 // x = [gate | up] (2K wide) -> silu(gate) * up
};

// One row of the matmul input, after the prologue, into out[K].
void prepare_row(const float* x, int64_t K, const Prologue& pro, float* out) {
  if (pro.swiglu) {
    for (int64_t k = 0; k < K; k += 16) {
      const __m512 g = _mm512_loadu_ps(x + k), u = _mm512_loadu_ps(x + K + k);
      const __m512 sig = _mm512_div_ps(
          _mm512_set1_ps(1.0f), _mm512_add_ps(_mm512_set1_ps(1.0f), chatfleet::exp_ps(_mm512_sub_ps(
                                                                        _mm512_setzero_ps(), g))));
      _mm512_storeu_ps(out + k, _mm512_mul_ps(_mm512_mul_ps(g, sig), u));
    }
  } else if (pro.norm_weight != nullptr) {
    __m512 ss = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
      const __m512 v = _mm512_loadu_ps(x + k);
      ss = _mm512_fmadd_ps(v, v, ss);
    }
    const float inv_rms = 1.0f / std::sqrt(_mm512_reduce_add_ps(ss) / K + pro.eps);
    const __m512 r = _mm512_set1_ps(inv_rms);
    for (int64_t k = 0; k < K; k += 16)
      _mm512_storeu_ps(out + k, _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + k), r),
                                              _mm512_loadu_ps(pro.norm_weight + k)));
  } else {
    std::memcpy(out, x, K * sizeof(float));
  }
}

// Quantized activations: 16-bit codes Q = round(x / dx) per 32-wide block, split into signed
// bytes Q = 256 * hi + lo (lo in -128..127) so that VPDPBUSD can take both halves; dx per
// block and dx * sum(Q) for the weights' zero points.
struct QuantizedRows {
  std::vector<int8_t> hi, lo;
  std::vector<float> dx, dxs;
  int64_t K = 0, nb = 0;
};

void quantize_row(const float* x, int64_t m, QuantizedRows& q) {
  const __m512i half = _mm512_set1_epi32(128);
  for (int64_t b = 0; b < q.nb; ++b) {
    const int64_t off = m * q.K + b * kBlock;
    const __m512 v[2] = {_mm512_loadu_ps(x + b * kBlock), _mm512_loadu_ps(x + b * kBlock + 16)};
    const float amax =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    const float d = amax / kMaxCode;
    const __m512 inv = _mm512_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
    __m512i sum = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      const __m512i code = _mm512_cvtps_epi32(_mm512_mul_ps(v[h], inv));
      const __m512i high = _mm512_srai_epi32(_mm512_add_epi32(code, half), 8);
      const __m512i low = _mm512_sub_epi32(code, _mm512_slli_epi32(high, 8));
      sum = _mm512_add_epi32(sum, code);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q.hi.data() + off + 16 * h),
                       _mm512_cvtsepi32_epi8(high));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q.lo.data() + off + 16 * h),
                       _mm512_cvtsepi32_epi8(low));
    }
    q.dx[m * q.nb + b] = d;
    q.dxs[m * q.nb + b] = d * static_cast<float>(_mm512_reduce_add_epi32(sum));
  }
}

struct PackedWeight {
  const uint8_t* codes;     // 8-bit: [N/16, K/32, 8, 16, 4]; 4-bit: [N/16, K/32, 4, 16, 4]
  const c10::Half* scales;  // [N/16, K/32, 16]
  const c10::Half* zeros;
};

inline __m512 load_half16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The 8 code vectors of one (tile, block). 4-bit codes come two per byte: vector j (j < 4)
// in the low nibbles and vector j + 4 in the high nibbles of packed vector j.
template <int kBits>
inline void load_codes(const uint8_t* p, __m512i* wv) {
  const __m512i* v = reinterpret_cast<const __m512i*>(p);
  if constexpr (kBits == 8) {
    for (int j = 0; j < 8; ++j) wv[j] = _mm512_load_si512(v + j);
  } else {
    const __m512i mask = _mm512_set1_epi8(0x0F);
    for (int j = 0; j < 4; ++j) {
      const __m512i packed = _mm512_load_si512(v + j);
      wv[j] = _mm512_and_si512(packed, mask);
      wv[j + 4] = _mm512_and_si512(_mm512_srli_epi16(packed, 4), mask);
    }
  }
}

struct Output {
  float* y;                // [M, N]
  const float* residual;   // [M, N] added to the result, or nullptr
  int64_t N;
};

// Rows [m0, m0 + kRows) of x against output tile t (16 output rows).
template <int kBits, int kRows>
void tile_pass(const PackedWeight& w, const QuantizedRows& q, int64_t t, int64_t m0,
               const Output& out) {
  constexpr int64_t kBlockBytes = kBlock * kTile * kBits / 8;
  const int64_t nb = q.nb;
  const uint8_t* codes = w.codes + t * nb * kBlockBytes;
  const c10::Half* scales = w.scales + t * nb * kTile;
  const c10::Half* zeros = w.zeros + t * nb * kTile;
  __m512 acc[kRows];
  for (int i = 0; i < kRows; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    __m512i wv[8];
    load_codes<kBits>(codes + b * kBlockBytes, wv);
    const __m512 sv = load_half16(scales + b * kTile);
    const __m512 zv = load_half16(zeros + b * kTile);
    for (int i = 0; i < kRows; ++i) {
      const int64_t m = m0 + i;
      const int32_t* xh = reinterpret_cast<const int32_t*>(q.hi.data() + m * q.K + b * kBlock);
      const int32_t* xl = reinterpret_cast<const int32_t*>(q.lo.data() + m * q.K + b * kBlock);
      // Four independent VPDPBUSD chains (a single chain would stall on its latency).
      __m512i dh0 = _mm512_setzero_si512(), dh1 = dh0, dl0 = dh0, dl1 = dh0;
      for (int j = 0; j < 8; j += 2) {
        dh0 = _mm512_dpbusd_epi32(dh0, wv[j], _mm512_set1_epi32(xh[j]));
        dl0 = _mm512_dpbusd_epi32(dl0, wv[j], _mm512_set1_epi32(xl[j]));
        dh1 = _mm512_dpbusd_epi32(dh1, wv[j + 1], _mm512_set1_epi32(xh[j + 1]));
        dl1 = _mm512_dpbusd_epi32(dl1, wv[j + 1], _mm512_set1_epi32(xl[j + 1]));
      }
      // |dot| <= 32 * 255 * 32512 < 2^31: exact in int32.
      const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(_mm512_add_epi32(dh0, dh1), 8),
                                           _mm512_add_epi32(dl0, dl1));
      const __m512 blk = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), sv);
      acc[i] = _mm512_fmadd_ps(blk, _mm512_set1_ps(q.dx[m * nb + b]), acc[i]);
      acc[i] = _mm512_fmadd_ps(zv, _mm512_set1_ps(q.dxs[m * nb + b]), acc[i]);
    }
  }
  for (int i = 0; i < kRows; ++i) {
    const int64_t at = (m0 + i) * out.N + t * kTile;
    __m512 r = acc[i];
    if (out.residual != nullptr) r = _mm512_add_ps(r, _mm512_loadu_ps(out.residual + at));
    _mm512_storeu_ps(out.y + at, r);
  }
}

using PassFn = void (*)(const PackedWeight&, const QuantizedRows&, int64_t, int64_t,
                        const Output&);
template <int kBits>
constexpr PassFn kPasses[kRowsPerPass + 1] = {nullptr, tile_pass<kBits, 1>, tile_pass<kBits, 2>,
                                              tile_pass<kBits, 3>, tile_pass<kBits, 4>};

}  // namespace

// y = prologue(x) @ W^T (+ residual).
//   x [M, K] fp32 (or [M, 2K] with swiglu); w [N/16, K/32, 8 or 4, 16, 4] uint8 (8- or
//   4-bit codes); s, z [N/16, K/32, 16] fp16; residual [M, N] fp32 or None -> y [M, N] fp32.
at::Tensor qlinear(at::Tensor x, at::Tensor w, at::Tensor s, at::Tensor z, int64_t num_threads,
                   c10::optional<at::Tensor> norm_weight, double eps, bool swiglu,
                   c10::optional<at::Tensor> residual) {
  TORCH_CHECK(x.dtype() == at::kFloat && x.dim() == 2, "x must be 2-D fp32");
  TORCH_CHECK(w.dtype() == at::kByte && w.dim() == 5 && w.is_contiguous(), "bad packed weight");
  TORCH_CHECK(w.size(2) == 8 || w.size(2) == 4, "packed weight: 8- or 4-bit codes");
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
  auto y = at::empty({M, N}, x.options());
  if (M == 0) return y;
  QuantizedRows q;
  q.K = K;
  q.nb = nb;
  q.hi.resize(M * K);
  q.lo.resize(M * K);
  q.dx.resize(M * nb);
  q.dxs.resize(M * nb);
  {
    std::vector<float> row(K);
    const float* xp = x.data_ptr<float>();
    for (int64_t m = 0; m < M; ++m) {
      prepare_row(xp + m * x.size(1), K, pro, row.data());
      quantize_row(row.data(), m, q);
    }
  }
  const PackedWeight pw{w.data_ptr<uint8_t>(), s.data_ptr<c10::Half>(), z.data_ptr<c10::Half>()};
  const PassFn* passes = w.size(2) == 8 ? kPasses<8> : kPasses<4>;
  const Output out{y.data_ptr<float>(), res.defined() ? res.data_ptr<float>() : nullptr, N};
  // Threads split the output tiles: each reads its slice of W once per pass over the rows.
  const int threads = static_cast<int>(
      std::max<int64_t>(1, std::min(num_threads, M * N * K / kMinMacsPerThread)));
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < N / kTile; ++t) {
    for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
      const int rows = static_cast<int>(std::min<int64_t>(kRowsPerPass, M - m0));
      passes[rows](pw, q, t, m0, out);
    }
  }
  return y;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qlinear", &qlinear, "block-quantized linear (8-bit W, 16-bit x), fused prologue",
        py::call_guard<py::gil_scoped_release>());
}
