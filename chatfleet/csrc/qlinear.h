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

#include "tiles.h"
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

// A block's exact dot from the dots of x's high and low bytes: 256 * hi + lo (within int32,
// as tile_pass bounds it).
inline __m512i combine(__m512i hi, __m512i lo) {
  return _mm512_add_epi32(_mm512_slli_epi32(hi, 8), lo);
}

// acc + one block's share of 16 outputs: dx * s * dot + dx * sum(Q) * z.
inline __m512 add_block(__m512 acc, __m512i dot, __m512 s, __m512 z, float dx, float dxs) {
  const __m512 blk = _mm512_mul_ps(_mm512_cvtepi32_ps(dot), s);
  acc = _mm512_fmadd_ps(blk, _mm512_set1_ps(dx), acc);
  return _mm512_fmadd_ps(z, _mm512_set1_ps(dxs), acc);
}

// A block's scales and zeros, one per output row and 16-wide half of the block.
struct HalfScales {
  __m512 s0, s1, z0, z1;
  HalfScales(const c10::Half* scales, const c10::Half* zeros)
      : s0(load_half16(scales)), s1(load_half16(scales + kTile)), z0(load_half16(zeros)),
        z1(load_half16(zeros + kTile)) {}
};

// The same with the two halves' dots, scales and zeros (dxh: dx * sum(Q) per half).
inline __m512 add_halves(__m512 acc, __m512i d0, __m512i d1, const HalfScales& hs, float dx,
                         const float* dxh) {
  const __m512 blk = _mm512_fmadd_ps(_mm512_cvtepi32_ps(d1), hs.s1,
                                     _mm512_mul_ps(_mm512_cvtepi32_ps(d0), hs.s0));
  acc = _mm512_fmadd_ps(blk, _mm512_set1_ps(dx), acc);
  acc = _mm512_fmadd_ps(hs.z0, _mm512_set1_ps(dxh[0]), acc);
  return _mm512_fmadd_ps(hs.z1, _mm512_set1_ps(dxh[1]), acc);
}

// Rows [m0, m0 + rows) of output tile t (plus the residual) from their accumulators.
inline void store_rows(const __m512* acc, int rows, int64_t m0, int64_t t, const Output& out) {
  for (int i = 0; i < rows; ++i) {
    const int64_t at = (m0 + i) * out.N + t * kTile;
    __m512 r = acc[i];
    if (out.residual != nullptr) r = _mm512_add_ps(r, _mm512_loadu_ps(out.residual + at));
    _mm512_storeu_ps(out.y + at, r);
  }
}

// One block's 8 code vectors, a scale and zero per 16-wide half, into acc for rows
// [m0, m0 + kRows): one VPDPBUSD chain per half and byte of x (four chains, as below).
template <int kRows>
inline void half_block_pass(const __m512i* wv, const c10::Half* scales, const c10::Half* zeros,
                            const QuantizedRows& q, int64_t b, int64_t m0, __m512* acc) {
  const HalfScales hs(scales, zeros);
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
    acc[i] = add_halves(acc[i], combine(dh0, dl0), combine(dh1, dl1), hs, q.dx[m * q.nb + b],
                        q.dxh.data() + (m * q.nb + b) * 2);
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
      const __m512i dot = combine(_mm512_add_epi32(dh0, dh1), _mm512_add_epi32(dl0, dl1));
      acc[i] = add_block(acc[i], dot, sv, zv, q.dx[m * nb + b], q.dxs[m * nb + b]);
    }
  }
  store_rows(acc, kRows, m0, t, out);
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

// Output tile t of w (bits-bit codes, nb blocks); with `wide`, its codes widened to 8 bits
// there, for passes that would each widen them again (the same codes, so the same results).
inline Tile tile_of(const PackedWeight& w, int64_t nb, int bits, int64_t t, bool prefetch,
                    __m512i* wide) {
  const int halves = halves_of(bits);
  const int64_t tile_bytes = nb * kBlock * kTile * bits / 8;
  Tile tile{w.codes + t * tile_bytes, w.scales + t * nb * kTile * halves,
            w.zeros + t * nb * kTile * halves, t, prefetch};
  if (wide != nullptr && bits != 8) {
    if (bits == 6) widen<6>(tile.codes, nb, wide);
    else if (bits == 5) widen<5>(tile.codes, nb, wide);
    else widen<4>(tile.codes, nb, wide);
    tile.codes = reinterpret_cast<const uint8_t*>(wide);
  }
  return tile;
}

// ---- The same matmul on AMX tiles ------------------------------------------------------
// Per block (per 16-wide half where weights carry a scale per half), TDPBSUD multiplies 16
// rows of x's high bytes, and of its low bytes (A: read in place, one row of x per tile row),
// by the block's 8-bit codes (B: the packed layout is B's, vector j its row j), giving the
// exact int32 dots the VNNI chains give. They go through memory into the same float steps
// (combine, add_block / add_halves) in the same order, so every output equals the VNNI pass's
// bit for bit, and which rows share a step still changes nothing.
//
//   x rows m0..m0+15, block b        codes of tile t, block b         dots (int32)
//   hi: [16 x 32 bytes] stride K  .  B: [8 rows x (16 lanes x 4)]  ->  [16 rows x 16 lanes]
constexpr int kTileRows = 16;

// Tile registers: the dots of half h in 2h (high bytes) and 2h + 1 (low bytes); A in 4 and 5,
// B in 6. A dot covers kBlock / kH values of K: a quarter as many rows of B (4 bytes a lane).
template <int kH>
tiles::Config tile_config() {
  constexpr int width = kBlock / kH;
  tiles::Config c;
  for (int r = 0; r < 2 * kH; ++r) {
    c.rows[r] = kTileRows;
    c.colsb[r] = kTile * 4;
  }
  c.rows[4] = c.rows[5] = kTileRows;
  c.colsb[4] = c.colsb[5] = width;
  c.rows[6] = width / 4;
  c.colsb[6] = kTile * 4;
  return c;
}

// Half h of a block: its two dots for the group's 16 rows, into dots[2h] and dots[2h + 1].
template <class T, int kH, int h>
inline void tile_dots(const uint8_t* codes, const int8_t* hi, const int8_t* lo, int64_t K,
                      int32_t (*dots)[kTileRows][kTile]) {
  constexpr int width = kBlock / kH;
  T::template zero<2 * h>();
  T::template zero<2 * h + 1>();
  T::template load<4>(hi + h * width, K);
  T::template load<5>(lo + h * width, K);
  T::template load<6>(codes + h * width * kTile, kTile * 4);
  T::template dot<2 * h, 4, 6>();
  T::template dot<2 * h + 1, 5, 6>();
  T::template store<2 * h>(dots[2 * h], kTile * 4);
  T::template store<2 * h + 1>(dots[2 * h + 1], kTile * 4);
}

// Rows [m0, m0 + rows) (rows <= 16; q holds rows up to m0 + 16) against one output tile of
// 8-bit codes. Rows past `rows` are multiplied too and dropped.
template <class T, int kH>
void tile_group(const Tile& w, const QuantizedRows& q, int64_t m0, int rows, const Output& out) {
  const int64_t nb = q.nb, K = q.K;
  alignas(64) int32_t dots[2 * kH][kTileRows][kTile];
  __m512 acc[kTileRows];
  for (auto& a : acc) a = _mm512_setzero_ps();
  for (int64_t b = 0; b < nb; ++b) {
    const int8_t* hi = q.hi.data() + m0 * K + b * kBlock;
    const int8_t* lo = q.lo.data() + m0 * K + b * kBlock;
    const uint8_t* codes = w.codes + b * kBlock * kTile;
    tile_dots<T, kH, 0>(codes, hi, lo, K, dots);
    if constexpr (kH == 2) {
      tile_dots<T, kH, 1>(codes, hi, lo, K, dots);
      const HalfScales hs(w.scales + b * 2 * kTile, w.zeros + b * 2 * kTile);
      for (int i = 0; i < rows; ++i) {
        const int64_t m = m0 + i;
        const auto d = [&](int r) { return _mm512_load_si512(dots[r][i]); };
        acc[i] = add_halves(acc[i], combine(d(0), d(1)), combine(d(2), d(3)), hs,
                            q.dx[m * nb + b], q.dxh.data() + (m * nb + b) * 2);
      }
    } else {
      const __m512 sv = load_half16(w.scales + b * kTile), zv = load_half16(w.zeros + b * kTile);
      for (int i = 0; i < rows; ++i) {
        const int64_t m = m0 + i;
        const __m512i dot =
            combine(_mm512_load_si512(dots[0][i]), _mm512_load_si512(dots[1][i]));
        acc[i] = add_block(acc[i], dot, sv, zv, q.dx[m * nb + b], q.dxs[m * nb + b]);
      }
    }
  }
  store_rows(acc, rows, m0, w.t, out);
}

// Output tiles [t0, t1) for all M rows of q on tiles T (the hardware, or its software copy).
template <class T, int kH>
void run_tiles_amx(const PackedWeight& w, const QuantizedRows& q, int64_t M, int bits, int64_t t0,
                   int64_t t1, const Output& out) {
  thread_local std::vector<__m512i> wide;
  wide.resize(q.nb * 8);
  T::configure(tile_config<kH>());
  for (int64_t t = t0; t < t1; ++t) {
    const Tile tile = tile_of(w, q.nb, bits, t, false, wide.data());
    for (int64_t m0 = 0; m0 < M; m0 += kTileRows)
      tile_group<T, kH>(tile, q, m0, static_cast<int>(std::min<int64_t>(kTileRows, M - m0)), out);
  }
  T::release();  // the thread's tile state back to its initial (small) state
}

enum class TileUse { kNone, kHardware, kEmulated };

// Bit i of a weight's tile mask set: matmuls of bucket i of the matmul plan (1, 2, 4, ...,
// 512 rows and more; model/matmul_plan.py) run on AMX tiles, or on their software copy.
inline TileUse tile_use(int64_t mask, int64_t M, bool emulate) {
  int bucket = 0;
  while (bucket < 9 && (int64_t{1} << bucket) < M) ++bucket;
  if (((mask >> bucket) & 1) == 0) return TileUse::kNone;
  return emulate ? TileUse::kEmulated : TileUse::kHardware;
}

// Output tiles [t0, t1) for all rows of q: every pass over the rows reads a weight block once.
// Codes narrower than a byte are widened once per tile where more than one pass reads them.
inline void run_tiles(const PackedWeight& w, const QuantizedRows& q, int64_t M, int bits,
                      int64_t t0, int64_t t1, const Output& out, TileUse use = TileUse::kNone) {
  const int halves = halves_of(bits);
  if (use != TileUse::kNone) {
    using Hw = tiles::Hardware;
    using Sw = tiles::Emulated;
    const bool hw = use == TileUse::kHardware;
    auto run = halves == 2 ? (hw ? run_tiles_amx<Hw, 2> : run_tiles_amx<Sw, 2>)
                           : (hw ? run_tiles_amx<Hw, 1> : run_tiles_amx<Sw, 1>);
    return run(w, q, M, bits, t0, t1, out);
  }
  const bool widen_once = bits != 8 && M > kRowsPerPass;
  const PassFn* passes = passes_for(widen_once ? 8 : bits, halves);
  thread_local std::vector<__m512i> wide;
  if (widen_once) wide.resize(q.nb * 8);
  for (int64_t t = t0; t < t1; ++t) {
    const Tile tile =
        tile_of(w, q.nb, bits, t, M <= kRowsPerPass, widen_once ? wide.data() : nullptr);
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

// Work handed out to whichever thread is free goes in chunks of this many items, about eight a
// thread: enough that one slowed thread holds up no other, few enough to cost nothing to take.
inline int64_t chunk_of(int64_t items, int threads) {
  return std::max<int64_t>(1, items / (8 * threads));
}

// Room for M rows of K inputs; for the tile pass, codes for whole groups of tile rows (it
// reads the rows past M and drops their results).
inline void resize(QuantizedRows& q, int64_t M, int64_t K, bool tile_groups = false) {
  q.K = K;
  q.nb = K / kBlock;
  const int64_t padded = tile_groups ? (M + kTileRows - 1) / kTileRows * kTileRows : M;
  q.hi.resize(padded * K);
  q.lo.resize(padded * K);
  q.dx.resize(M * q.nb);
  q.dxs.resize(M * q.nb);
  q.dxh.resize(M * q.nb * 2);
}

}  // namespace chatfleet::ql
