// The block-quantized linear layer's building blocks (format described in qlinear.cpp), shared
// by the qlinear op and the fused decode step (decode_step.cpp).
#pragma once

#include <c10/util/Half.h>
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "vec_math.h"

namespace chatfleet::ql {


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
inline void prepare_row(const float* x, int64_t K, const Prologue& pro, float* out) {
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
// block and dx * sum(Q) for the weights' zero points, per block and per 16-wide half (for
// weights with a scale and zero per half block).
struct QuantizedRows {
  std::vector<int8_t> hi, lo;
  std::vector<float> dx, dxs, dxh;
  int64_t K = 0, nb = 0;
};

inline void quantize_row(const float* x, int64_t m, QuantizedRows& q) {
  const __m512i half = _mm512_set1_epi32(128);
  for (int64_t b = 0; b < q.nb; ++b) {
    const int64_t off = m * q.K + b * kBlock;
    const __m512 v[2] = {_mm512_loadu_ps(x + b * kBlock), _mm512_loadu_ps(x + b * kBlock + 16)};
    const float amax =
        _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
    const float d = amax / kMaxCode;
    const __m512 inv = _mm512_set1_ps(d > 0.0f ? 1.0f / d : 0.0f);
    int32_t sum = 0;
    for (int h = 0; h < 2; ++h) {
      const __m512i code = _mm512_cvtps_epi32(_mm512_mul_ps(v[h], inv));
      const __m512i high = _mm512_srai_epi32(_mm512_add_epi32(code, half), 8);
      const __m512i low = _mm512_sub_epi32(code, _mm512_slli_epi32(high, 8));
      const int32_t half_sum = _mm512_reduce_add_epi32(code);
      q.dxh[(m * q.nb + b) * 2 + h] = d * static_cast<float>(half_sum);
      sum += half_sum;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q.hi.data() + off + 16 * h),
                       _mm512_cvtsepi32_epi8(high));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q.lo.data() + off + 16 * h),
                       _mm512_cvtsepi32_epi8(low));
    }
    q.dx[m * q.nb + b] = d;
    q.dxs[m * q.nb + b] = d * static_cast<float>(sum);
  }
}

// Rows [first, last) of x [*, ld] through the prologue into q (row: room for q.K floats).
inline void quantize_rows(const float* x, int64_t ld, const Prologue& pro, int64_t first,
                          int64_t last, QuantizedRows& q, float* row) {
  for (int64_t m = first; m < last; ++m) {
    prepare_row(x + m * ld, q.K, pro, row);
    quantize_row(row, m, q);
  }
}

struct PackedWeight {
  // As many vectors per (tile, block) as bits per code, so a packed tensor's dim 2 is its
  // width. 8-bit: [N/16, K/32, 8, 16, 4]; 4-bit: [N/16, K/32, 4, 16, 4]; 5- and 6-bit: the
  // 4-bit layout, then a vector per higher bit (64 bytes: 8 x uint64, one bit per byte of
  // code vector j; the plane of bit 4, then of bit 5)
  const uint8_t* codes;
  const c10::Half* scales;  // [N/16, K/32, 16]; 6-bit: [N/16, K/32, 2, 16], per 16-wide half
  const c10::Half* zeros;
};

// 6-bit weights (GGUF Q6_K's codes, whose scales cover 16 values) carry a scale and zero per
// 16-wide half of each block.
inline int halves_of(int bits) { return bits == 6 ? 2 : 1; }

// One output tile's weights: its first block's codes, scales and zeros, and its index.
struct Tile {
  const uint8_t* codes;
  const c10::Half* scales;
  const c10::Half* zeros;
  int64_t t;
  // Ask for the weights ahead of the reads: where one pass covers every row, the matmul
  // waits on memory; with more, the later passes find the weights in cache.
  bool prefetch = false;
};

inline __m512 load_half16(const c10::Half* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

// The 8 code vectors of one (tile, block). 4-bit codes come two per byte: vector j (j < 4)
// in the low nibbles and vector j + 4 in the high nibbles of packed vector j. 5- and 6-bit
// codes add bits 4 and 5 from bit planes: 64 bits per code vector, a byte mask each.
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
    for (int p = 0; p < kBits - 4; ++p) {
      const uint64_t* plane = reinterpret_cast<const uint64_t*>(v + 4 + p);
      const __m512i bit = _mm512_set1_epi8(static_cast<char>(0x10 << p));
      for (int j = 0; j < 8; ++j)
        wv[j] = _mm512_mask_add_epi8(wv[j], _cvtu64_mask64(plane[j]), wv[j], bit);
    }
  }
}

// How far ahead of its reads a pass over a weight stream asks for it. The hardware
// prefetchers alone leave a one-row matmul short of the rate a plain read streams at.
constexpr int64_t kPrefetchAhead = 8192;

// Block b's codes, and the line holding its scales and zeros, into L2.
template <int64_t kBlockBytes>
inline void prefetch_block(const uint8_t* codes, const c10::Half* scales,
                           const c10::Half* zeros, int64_t b, int halves) {
  const char* p = reinterpret_cast<const char*>(codes + b * kBlockBytes);
  for (int64_t o = 0; o < kBlockBytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T1);
  _mm_prefetch(reinterpret_cast<const char*>(scales + b * kTile * halves), _MM_HINT_T1);
  _mm_prefetch(reinterpret_cast<const char*>(zeros + b * kTile * halves), _MM_HINT_T1);
}

struct Output {
  float* y;                // [M, N]
  const float* residual;   // [M, N] added to the result, or nullptr
  int64_t N;
};

// One block's 8 code vectors, a scale and zero per 16-wide half, into acc for rows
// [m0, m0 + kRows): one VPDPBUSD chain per half and byte of x (four chains, as below).
template <int kRows>
inline void half_block_pass(const __m512i* wv, const c10::Half* scales, const c10::Half* zeros,
                            const QuantizedRows& q, int64_t b, int64_t m0, __m512* acc) {
  const __m512 s0 = load_half16(scales), s1 = load_half16(scales + kTile);
  const __m512 z0 = load_half16(zeros), z1 = load_half16(zeros + kTile);
  for (int i = 0; i < kRows; ++i) {
    const int64_t m = m0 + i;
    const int32_t* xh = reinterpret_cast<const int32_t*>(q.hi.data() + m * q.K + b * kBlock);
    const int32_t* xl = reinterpret_cast<const int32_t*>(q.lo.data() + m * q.K + b * kBlock);
    __m512i dh0 = _mm512_setzero_si512(), dh1 = dh0, dl0 = dh0, dl1 = dh0;
    for (int j = 0; j < 4; ++j) {  // vectors 0..3: columns 0..15; 4..7: columns 16..31
      dh0 = _mm512_dpbusd_epi32(dh0, wv[j], _mm512_set1_epi32(xh[j]));
      dl0 = _mm512_dpbusd_epi32(dl0, wv[j], _mm512_set1_epi32(xl[j]));
      dh1 = _mm512_dpbusd_epi32(dh1, wv[j + 4], _mm512_set1_epi32(xh[j + 4]));
      dl1 = _mm512_dpbusd_epi32(dl1, wv[j + 4], _mm512_set1_epi32(xl[j + 4]));
    }
    const __m512 d0 = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(dh0, 8), dl0));
    const __m512 d1 = _mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_slli_epi32(dh1, 8), dl1));
    const __m512 blk = _mm512_fmadd_ps(d1, s1, _mm512_mul_ps(d0, s0));
    const float* dxh = q.dxh.data() + (m * q.nb + b) * 2;
    acc[i] = _mm512_fmadd_ps(blk, _mm512_set1_ps(q.dx[m * q.nb + b]), acc[i]);
    acc[i] = _mm512_fmadd_ps(z0, _mm512_set1_ps(dxh[0]), acc[i]);
    acc[i] = _mm512_fmadd_ps(z1, _mm512_set1_ps(dxh[1]), acc[i]);
  }
}

// Rows [m0, m0 + kRows) of x against one output tile (16 output rows), its codes held in
// kBits bits, with kH scales and zeros per block.
template <int kBits, int kH, int kRows>
void tile_pass(const Tile& w, const QuantizedRows& q, int64_t m0, const Output& out) {
  constexpr int64_t kBlockBytes = kBlock * kTile * kBits / 8;  // 4 vectors + planes
  constexpr int64_t kAhead = kPrefetchAhead / kBlockBytes;
  const int64_t nb = q.nb, t = w.t;
  const uint8_t* codes = w.codes;
  const c10::Half* scales = w.scales;
  const c10::Half* zeros = w.zeros;
  __m512 acc[kRows];
  for (int i = 0; i < kRows; ++i) acc[i] = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    // kAhead blocks on: into the next tile at its end (a thread's tiles are contiguous).
    if (w.prefetch) prefetch_block<kBlockBytes>(codes, scales, zeros, b + kAhead, kH);
    __m512i wv[8];
    load_codes<kBits>(codes + b * kBlockBytes, wv);
    if constexpr (kH == 2) {
      half_block_pass<kRows>(wv, scales + b * 2 * kTile, zeros + b * 2 * kTile, q, b, m0, acc);
      continue;
    }
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

using PassFn = void (*)(const Tile&, const QuantizedRows&, int64_t, const Output&);
template <int kBits, int kH>
constexpr PassFn kPasses[kRowsPerPass + 1] = {nullptr, tile_pass<kBits, kH, 1>,
                                              tile_pass<kBits, kH, 2>, tile_pass<kBits, kH, 3>,
                                              tile_pass<kBits, kH, 4>};

inline const PassFn* passes_for(int bits, int halves) {
  if (halves == 2) return bits == 8 ? kPasses<8, 2> : kPasses<6, 2>;
  return bits == 8 ? kPasses<8, 1> : bits == 5 ? kPasses<5, 1> : kPasses<4, 1>;
}

// A tile's nb blocks of kBits-bit codes written out as 8-bit ones (8 vectors a block).
template <int kBits>
void widen(const uint8_t* codes, int64_t nb, __m512i* out) {
  constexpr int64_t kBlockBytes = kBlock * kTile * kBits / 8;
  for (int64_t b = 0; b < nb; ++b) load_codes<kBits>(codes + b * kBlockBytes, out + 8 * b);
}

// Output tiles [t0, t1) for all rows of q: every pass over the rows reads a weight block once.
// Codes narrower than a byte are widened once per tile, into a buffer the passes read, where
// more than one pass would each widen them (the same codes, so the same results).
inline void run_tiles(const PackedWeight& w, const QuantizedRows& q, int64_t M, int bits,
                      int64_t t0, int64_t t1, const Output& out) {
  const int halves = halves_of(bits);
  const int64_t nb = q.nb, tile_bytes = nb * kBlock * kTile * bits / 8;
  const bool widen_once = bits != 8 && M > kRowsPerPass;
  const PassFn* passes = passes_for(widen_once ? 8 : bits, halves);
  thread_local std::vector<__m512i> wide;
  if (widen_once) wide.resize(nb * 8);
  for (int64_t t = t0; t < t1; ++t) {
    Tile tile{w.codes + t * tile_bytes, w.scales + t * nb * kTile * halves,
              w.zeros + t * nb * kTile * halves, t, M <= kRowsPerPass};
    if (widen_once) {
      if (bits == 6) widen<6>(tile.codes, nb, wide.data());
      else if (bits == 5) widen<5>(tile.codes, nb, wide.data());
      else widen<4>(tile.codes, nb, wide.data());
      tile.codes = reinterpret_cast<const uint8_t*>(wide.data());
    }
    for (int64_t m0 = 0; m0 < M; m0 += kRowsPerPass) {
      const int rows = static_cast<int>(std::min<int64_t>(kRowsPerPass, M - m0));
      passes[rows](tile, q, m0, out);
    }
  }
}

// [begin, end) of n items for thread tid of nt: contiguous, sizes differ by at most one.
inline std::pair<int64_t, int64_t> share(int64_t n, int tid, int nt) {
  const int64_t base = n / nt, extra = n % nt;
  const int64_t begin = tid * base + std::min<int64_t>(tid, extra);
  return {begin, begin + base + (tid < extra ? 1 : 0)};
}

// Room for M rows of K inputs.
inline void resize(QuantizedRows& q, int64_t M, int64_t K) {
  q.K = K;
  q.nb = K / kBlock;
  q.hi.resize(M * K);
  q.lo.resize(M * K);
  q.dx.resize(M * q.nb);
  q.dxs.resize(M * q.nb);
  q.dxh.resize(M * q.nb * 2);
}

}  // namespace chatfleet::ql
