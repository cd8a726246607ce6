// Inverse-CDF draws from softmax(logits / T), a row at a time, with top-k, top-p and min-p,
// without the [rows, vocab] tensors that torch's division, softmax, sort and cumsum each
// allocate and write (on a CPU those passes over a batch cost more than the draw needs, a
// sort most of all; see sampler.py and benchmarks/sampler_cost.py).
//
// Row r draws the first token t with sum(p[0..t]) > u_r * sum(p), p = exp((x - max x) / T),
// x row rows[r] of the logits, p zeroed for a -inf logit (masked) and for the tokens
// truncation drops: in descending p, those at rank top_k or beyond, those with the mass of the
// tokens before them at top_p or more, and those with p below min_p * max p (the first is
// always kept): sampler.apply_truncation's rule, with equal p ranked in token order.
#include <omp.h>
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <utility>
#include <vector>

#include "vec_math.h"

namespace {

// Tokens per partial sum: a draw walks the sums, then the entries of one chunk.
constexpr int64_t kChunk = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

float row_max(const float* x, int64_t V) {
  __m512 vm = _mm512_set1_ps(kNegInf);
  int64_t i = 0;
  for (; i + 16 <= V; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
  float m = _mm512_reduce_max_ps(vm);
  for (; i < V; ++i) m = std::max(m, x[i]);
  return m;
}

// p[j] for j in [b, e) into p, returning their sum.
float chunk_weights(const float* x, int64_t b, int64_t e, float m, float inv_t, float* p) {
  const __m512 vm = _mm512_set1_ps(m), vt = _mm512_set1_ps(inv_t);
  const __m512 ninf = _mm512_set1_ps(kNegInf);
  __m512 acc = _mm512_setzero_ps();
  int64_t j = b;
  for (; j + 16 <= e; j += 16) {
    const __m512 v = _mm512_loadu_ps(x + j);
    // exp_ps clamps its argument, so a masked entry is zeroed explicitly.
    const __mmask16 live = _mm512_cmp_ps_mask(v, ninf, _CMP_NEQ_OQ);
    const __m512 w =
        _mm512_maskz_mov_ps(live, chatfleet::exp_ps(_mm512_mul_ps(_mm512_sub_ps(v, vm), vt)));
    _mm512_storeu_ps(p + j, w);
    acc = _mm512_add_ps(acc, w);
  }
  float s = _mm512_reduce_add_ps(acc);
  for (; j < e; ++j) {
    p[j] = x[j] == kNegInf ? 0.0f : std::exp((x[j] - m) * inv_t);
    s += p[j];
  }
  return s;
}

struct Truncation {
  int64_t top_k;  // <= 0: all
  double top_p;   // 1: all
  float min_p;    // 0: all
  bool any(int64_t V) const { return (top_k > 0 && top_k < V) || top_p < 1.0 || min_p > 0.0f; }
};

// Tokens are ranked by bucketing their weights' bits, from the top: first by sign, exponent and
// three mantissa bits (weights in (0, 1] have keys up to 0x3F8; a bucket spans a factor of at
// most 1.125), then the bucket where the kept prefix ends by the next eight bits; only the
// tokens of that last bucket are sorted.
inline uint32_t bits_of(float w) {
  uint32_t bits;
  std::memcpy(&bits, &w, 4);
  return bits;
}
inline int coarse_key(float w) { return static_cast<int>(bits_of(w) >> 20); }
inline int fine_key(float w) { return static_cast<int>((bits_of(w) >> 12) & 0xFF); }
constexpr int kCoarseBuckets = (0x3F800000 >> 20) + 1;
constexpr int kFineBuckets = 256;

struct Scratch {
  std::vector<float> p;
  std::vector<double> sums;
  std::vector<int64_t> count, members;
  std::vector<double> mass;
  std::vector<std::pair<float, int64_t>> edge;  // (-p, token): sorted, descending p
};

struct Walk {  // the tokens ranked so far, all kept, and their weight
  int64_t ranked = 0;
  double before = 0.0;
};

// The bucket (by `key`) in which the kept prefix ends, over `members` (every token when null):
// buckets above it are kept whole and counted into `walk`.
template <typename Key>
int edge_bucket(const float* p, int64_t V, const std::vector<int64_t>* members, Key key,
                int buckets, int64_t k, double mass_limit, Walk& walk, Scratch& w) {
  w.count.assign(buckets, 0);
  w.mass.assign(buckets, 0.0);
  auto add = [&](int64_t j) {
    if (p[j] <= 0.0f) return;
    const int b = key(p[j]);
    ++w.count[b];
    w.mass[b] += p[j];
  };
  if (members != nullptr) {
    for (const int64_t j : *members) add(j);
  } else {
    for (int64_t j = 0; j < V; ++j) add(j);
  }
  int edge = buckets - 1;
  for (; edge > 0; --edge) {
    if (w.count[edge] == 0) continue;
    if (walk.ranked + w.count[edge] >= k || walk.before + w.mass[edge] >= mass_limit) break;
    walk.ranked += w.count[edge];
    walk.before += w.mass[edge];
  }
  return edge;
}

// Zeroes p[j] for the tokens `t` drops (p holds the row's weights, max 1, summing to total).
void truncate(float* p, int64_t V, double total, const Truncation& t, Scratch& w) {
  const int64_t k = t.top_k > 0 ? std::min(t.top_k, V) : V;
  const double mass_limit = t.top_p * total;
  Walk walk;
  const int coarse = edge_bucket(p, V, nullptr, coarse_key, kCoarseBuckets, k, mass_limit, walk, w);
  w.members.clear();
  for (int64_t j = 0; j < V; ++j)
    if (p[j] > 0.0f && coarse_key(p[j]) == coarse) w.members.push_back(j);
  const int fine = edge_bucket(p, V, &w.members, fine_key, kFineBuckets, k, mass_limit, walk, w);
  w.edge.clear();
  for (const int64_t j : w.members) {
    if (fine_key(p[j]) == fine) w.edge.push_back({-p[j], j});
    else if (fine_key(p[j]) < fine) p[j] = 0.0f;
  }
  std::sort(w.edge.begin(), w.edge.end());
  for (const auto& [neg, j] : w.edge) {  // the first token ranked is always kept
    const bool kept = walk.ranked == 0 || (walk.ranked < k && walk.before < mass_limit);
    if (!kept) p[j] = 0.0f;
    ++walk.ranked;
    walk.before -= neg;
  }
  for (int64_t j = 0; j < V; ++j)  // below the edge bucket, or under min-p (never the max)
    if (p[j] > 0.0f && (coarse_key(p[j]) < coarse || p[j] < t.min_p)) p[j] = 0.0f;
}

int64_t draw(const float* x, int64_t V, float inv_t, const Truncation& trunc, double u,
             Scratch& w) {
  std::vector<float>& p = w.p;
  std::vector<double>& sums = w.sums;
  const float m = row_max(x, V);
  if (m == kNegInf) return 0;  // every token masked: nothing to draw from
  const int64_t chunks = (V + kChunk - 1) / kChunk;
  p.resize(V);
  sums.resize(chunks);
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    sums[c] = chunk_weights(x, c * kChunk, std::min(V, (c + 1) * kChunk), m, inv_t, p.data());
    total += sums[c];
  }
  if (trunc.any(V)) {
    truncate(p.data(), V, total, trunc, w);
    total = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      float sum = 0.0f;
      for (int64_t j = c * kChunk; j < std::min(V, (c + 1) * kChunk); ++j) sum += p[j];
      sums[c] = sum;
      total += sum;
    }
  }
  const double target = u * total;
  double below = 0.0;  // the weight of the chunks before c
  for (int64_t c = 0; c < chunks; ++c) {
    if (below + sums[c] <= target) {
      below += sums[c];
      continue;
    }
    int64_t last = -1;
    for (int64_t j = c * kChunk; j < std::min(V, (c + 1) * kChunk); ++j) {
      if (p[j] <= 0.0f) continue;
      last = j;
      below += p[j];
      if (below > target) return j;
    }
    // The chunk's vector sum crossed the target and its entries added one by one fell short
    // by a rounding: its last drawable token.
    if (last >= 0) return last;
  }
  // Rounding past the last chunk: the most likely token.
  const int64_t best = std::find(x, x + V, m) - x;
  return best < V ? best : 0;
}

}  // namespace

// logits [N, V] fp32; rows [R] int64 (rows of logits); temperatures [R] fp32 (> 0); top_k [R]
// int64 (<= 0: all), top_p [R] fp64, min_p [R] fp32; uniforms [R] fp64 in [0, 1)
// -> tokens [R] int64.
at::Tensor sample_rows(at::Tensor logits, at::Tensor rows, at::Tensor temperatures,
                       at::Tensor top_k, at::Tensor top_p, at::Tensor min_p, at::Tensor uniforms,
                       int64_t num_threads) {
  TORCH_CHECK(logits.scalar_type() == at::kFloat && logits.dim() == 2, "logits: [N, V] fp32");
  TORCH_CHECK(rows.scalar_type() == at::kLong && top_k.scalar_type() == at::kLong &&
                  temperatures.scalar_type() == at::kFloat && min_p.scalar_type() == at::kFloat &&
                  top_p.scalar_type() == at::kDouble && uniforms.scalar_type() == at::kDouble,
              "rows, top_k int64; temperatures, min_p fp32; top_p, uniforms fp64");
  const int64_t R = rows.numel();
  for (const auto* t : {&temperatures, &top_k, &top_p, &min_p, &uniforms})
    TORCH_CHECK(t->numel() == R, "one temperature, top_k, top_p, min_p and uniform a row");
  logits = logits.contiguous();
  const int64_t N = logits.size(0), V = logits.size(1);
  rows = rows.contiguous();
  temperatures = temperatures.contiguous();
  top_k = top_k.contiguous();
  top_p = top_p.contiguous();
  min_p = min_p.contiguous();
  uniforms = uniforms.contiguous();
  const int64_t* rp = rows.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK(rp[r] >= 0 && rp[r] < N, "row out of range");
  auto tokens = at::empty({R}, rows.options());
  int64_t* out = tokens.data_ptr<int64_t>();
  const float* xp = logits.data_ptr<float>();
  const float *tp = temperatures.data_ptr<float>(), *mp = min_p.data_ptr<float>();
  const double *pp = top_p.data_ptr<double>(), *up = uniforms.data_ptr<double>();
  const int64_t* kp = top_k.data_ptr<int64_t>();
  const int threads = static_cast<int>(std::max<int64_t>(1, std::min(num_threads, R)));
#pragma omp parallel num_threads(threads)
  {
    Scratch w;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < R; ++r)
      out[r] = draw(xp + rp[r] * V, V, 1.0f / tp[r], Truncation{kp[r], pp[r], mp[r]}, up[r], w);
  }
  return tokens;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sample_rows", &sample_rows, "inverse-CDF draws from softmax(logits / T), per row",
        py::call_guard<py::gil_scoped_release>());
}
