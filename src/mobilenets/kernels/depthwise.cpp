// Depthwise convolution (one k x k filter per channel, stride s, padding (k - 1) / 2, no bias) on
// channels-last maps, forward and backward, for training on the CPU.
//
// A depthwise layer does k * k multiply-adds per value of its map, too few for a matrix unit, and
// oneDNN's training kernels for it run far below the vector units' rate (its bf16 backward most of
// all). Here the work is done V channels at a time (one vector register) on blocks of up to 8
// pixels of a row held in registers, each pixel read once for all the taps it meets. The forward and
// the input's gradient are the same row operation, a sum of shifted rows times a tap's weights: the
// input's gradient gathers, for each input pixel, the output pixels its taps reached (split by phase
// at stride 2), so no two threads write the same value. The filter's gradient is summed in float
// over about 256 outputs and in double across them. Maps are bf16 or float, filters and sums float;
// channels past the last multiple of V take a plain loop. Strides 1 and 2, k = 1, 3, 5 or 7.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

namespace {

#ifdef __AVX512F__
constexpr int64_t V = 16;  // channels a step: one register
#else
constexpr int64_t V = 8;  // AVX2's
#endif
typedef float vf __attribute__((vector_size(V * 4)));
typedef uint32_t vu __attribute__((vector_size(V * 4)));
typedef uint16_t vh __attribute__((vector_size(V * 2)));

inline vf vload(const float* p) { vf v; std::memcpy(&v, p, sizeof v); return v; }
inline vf vload(const uint16_t* p) {
#ifdef __AVX512F__
  return (vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
#else
  vh h; std::memcpy(&h, p, sizeof h);
  vu u = __builtin_convertvector(h, vu) << 16;
  vf v; std::memcpy(&v, &u, sizeof v); return v;
#endif
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline void vstore(uint16_t* p, vf v) {  // round to nearest even, NaN kept NaN
#ifdef __AVX512BF16__
  _mm256_storeu_si256((__m256i*)p, (__m256i)_mm512_cvtneps_pbh((__m512)v));
#else
  vu u; std::memcpy(&u, &v, sizeof u);
  vu r = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  vu nan = (vu)(v != v);
  r = (r & ~nan) | (nan & 0x7FC0u);
  vh h = __builtin_convertvector(r, vh);
  std::memcpy(p, &h, sizeof h);
#endif
}
inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const uint16_t* p, int64_t i) {
  uint32_t u = uint32_t(p[i]) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline void st(float* p, int64_t i, float v) { p[i] = v; }
inline void st(uint16_t* p, int64_t i, float v) {
  uint32_t u; std::memcpy(&u, &v, 4);
  uint16_t r = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  p[i] = (v != v) ? uint16_t(0x7FC0) : r;
}

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

struct Geometry {
  int64_t N, C, H, W, OH, OW, k, s, p;
  Geometry(const at::Tensor& x, int64_t k, int64_t s)
      : N(x.size(0)), C(x.size(1)), H(x.size(2)), W(x.size(3)), OH((x.size(2) - 1) / s + 1),
        OW((x.size(3) - 1) / s + 1), k(k), s(s), p((k - 1) / 2) {}
};

// The filter as k * k rows of C floats (tap-major): a tap's weights for consecutive channels.
std::vector<float> taps_of(const at::Tensor& weight, int64_t C, int64_t kk) {
  const float* w = weight.data_ptr<float>();
  std::vector<float> t(kk * C);
  for (int64_t c = 0; c < C; ++c)
    for (int64_t q = 0; q < kk; ++q) t[q * C + c] = w[c * kk + q];
  return t;
}

constexpr int kMaxTerms = 7, kMaxTaps = 7;  // rows of a filter, taps of a row

// One row's share of an output row: out[t] += sum over m < count of src[t * step + off + m] * w[m].
template <typename T>
struct RowTerm { const T* src; int64_t off; int count; const float* w[kMaxTaps]; };

// out[t * out_step + i] for i < P, V channels from c, from nt rows (src) of M taps each (weights wv),
// output t + i reading source pixel (t + i) * S + off + m. Each source pixel is read once for all the
// taps it meets. CHECK: pixels outside the source row count as zero (the outputs at the row's edges).
template <int P, int S, int M, bool CHECK, typename T>
inline void block(const vf (*wv)[M], const T* const* src, int nt, int64_t off, int64_t c, int64_t C, int64_t len,
                  T* out, int64_t out_step, int64_t t) {
  vf acc[P] = {};
  const int64_t q0 = t * S + off;
  for (int r = 0; r < nt; ++r) {
#pragma GCC unroll 32
    for (int q = 0; q < (P - 1) * S + M; ++q) {
      if (CHECK && (q0 + q < 0 || q0 + q >= len)) continue;
      const vf v = vload(src[r] + (q0 + q) * C + c);
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        const int d = q - m;
        if (d >= 0 && d % S == 0 && d / S < P) acc[d / S] += v * wv[r][m];
      }
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < P; ++i) vstore(out + (t + i) * out_step * C + c, acc[i]);
}

// A whole output row, V channels at a time: 8, 4, then 1 output at a time where every tap's pixel
// exists, one at a time with checks at the edges. Every term has M taps and the same offset.
template <int S, int M, typename T>
void row_blocks(const std::vector<RowTerm<T>>& terms, int64_t C, int64_t len, T* out, int64_t out_step, int64_t n) {
  const int64_t off = terms.front().off;
  const int64_t lo = std::min(n, std::max<int64_t>(0, -floor_div(off, S)));  // every tap's pixel exists in [lo, hi)
  const int64_t hi = std::max(lo, std::min(n, floor_div(len - M - off, S) + 1));
  const int nt = int(terms.size());
  const T* src[kMaxTerms];
  for (int r = 0; r < nt; ++r) src[r] = terms[r].src;
  vf wv[kMaxTerms][M];  // this step's weights, local: the output's stores cannot change them
  for (int64_t c = 0; c + V <= C; c += V) {
    for (int r = 0; r < nt; ++r)
      for (int m = 0; m < M; ++m) wv[r][m] = vload(terms[r].w[m] + c);
    for (int64_t t = 0; t < lo; ++t) block<1, S, M, true>(wv, src, nt, off, c, C, len, out, out_step, t);
    int64_t t = lo;
    for (; t + 8 <= hi; t += 8) block<8, S, M, false>(wv, src, nt, off, c, C, len, out, out_step, t);
    for (; t + 4 <= hi; t += 4) block<4, S, M, false>(wv, src, nt, off, c, C, len, out, out_step, t);
    for (; t < hi; ++t) block<1, S, M, false>(wv, src, nt, off, c, C, len, out, out_step, t);
    for (t = hi; t < n; ++t) block<1, S, M, true>(wv, src, nt, off, c, C, len, out, out_step, t);
  }
}

template <int S, typename T>
void row_blocks_any(const std::vector<RowTerm<T>>& terms, int64_t C, int64_t len, T* out, int64_t out_step, int64_t n) {
  switch (terms.front().count) {
    case 1: return row_blocks<S, 1>(terms, C, len, out, out_step, n);
    case 2: return row_blocks<S, 2>(terms, C, len, out, out_step, n);
    case 3: return row_blocks<S, 3>(terms, C, len, out, out_step, n);
    case 4: return row_blocks<S, 4>(terms, C, len, out, out_step, n);
    case 5: return row_blocks<S, 5>(terms, C, len, out, out_step, n);
    case 6: return row_blocks<S, 6>(terms, C, len, out, out_step, n);
    default: return row_blocks<S, 7>(terms, C, len, out, out_step, n);
  }
}

// out[t * out_step] = the sum of the row terms for t in [0, n), pixels of C channels; the source rows
// have len pixels, and output t reads source pixel t * step + off + m. The terms of a row share their
// offset and count, as the callers make them.
template <typename T>
void row_sum(const std::vector<RowTerm<T>>& terms, int64_t C, int64_t len, int64_t step, T* out, int64_t out_step,
             int64_t n) {
  if (terms.empty()) {  // no tap reaches this row (dx at stride 2 with a 1x1 filter)
    for (int64_t t = 0; t < n; ++t)
      for (int64_t c = 0; c < C; ++c) st(out, t * out_step * C + c, 0.f);
    return;
  }
  TORCH_CHECK(terms.size() <= kMaxTerms, "at most 7 rows");
  for (const auto& r : terms)
    TORCH_CHECK(r.off == terms.front().off && r.count == terms.front().count, "row terms differ");
  step == 1 ? row_blocks_any<1>(terms, C, len, out, out_step, n) : row_blocks_any<2>(terms, C, len, out, out_step, n);
  for (int64_t t = 0; t < n && C % V; ++t)  // the channels past the last multiple of V
    for (int64_t c = C / V * V; c < C; ++c) {
      float acc = 0.f;
      for (const auto& r : terms)
        for (int m = 0; m < r.count; ++m) {
          const int64_t q = t * step + r.off + m;
          if (q >= 0 && q < len) acc += ld(r.src, q * C + c) * r.w[m][c];
        }
      st(out, t * out_step * C + c, acc);
    }
}

// y[n, oh, ow] = sum over taps (i, j) of x[n, oh * s + i - p, ow * s + j - p] * w[i, j]
template <typename T>
void forward_impl(const T* x, const std::vector<float>& w, T* y, const Geometry& g) {
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t r0, int64_t r1) {
    std::vector<RowTerm<T>> terms;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      terms.clear();
      for (int64_t i = 0; i < g.k; ++i) {
        const int64_t ih = oh * g.s + i - g.p;
        if (ih < 0 || ih >= g.H) continue;
        RowTerm<T> term{x + (n * g.H + ih) * g.W * g.C, -g.p, int(g.k), {}};
        for (int64_t j = 0; j < g.k; ++j) term.w[j] = w.data() + (i * g.k + j) * g.C;
        terms.push_back(term);
      }
      row_sum(terms, g.C, g.W, g.s, y + r * g.OW * g.C, 1, g.OW);
    }
  });
}

// dx[n, ih, iw] = sum over taps (i, j) of dy[n, oh, ow] * w[i, j], where oh * s + i - p = ih and
// ow * s + j - p = iw. The input pixels of one phase (iw = ph + s * t) take the same taps at
// consecutive output pixels (ow = t + (ph + p - j) / s).
template <typename T>
void input_grad_impl(const T* dy, const std::vector<float>& w, T* dx, const Geometry& g) {
  at::parallel_for(0, g.N * g.H, 1, [&](int64_t r0, int64_t r1) {
    std::vector<RowTerm<T>> terms;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.H, ih = r % g.H;
      for (int64_t ph = 0; ph < std::min(g.s, g.W); ++ph) {
        // the taps of this phase, j = ph + p - s * ow_offset: ascending offsets, descending j
        int64_t j0 = g.k - 1;
        while (j0 >= 0 && ((ph + g.p - j0) % g.s + g.s) % g.s != 0) --j0;
        terms.clear();
        for (int64_t i = 0; i < g.k && j0 >= 0; ++i) {
          const int64_t th = ih + g.p - i;
          if (th < 0 || th % g.s != 0 || th / g.s >= g.OH) continue;
          RowTerm<T> term{dy + (n * g.OH + th / g.s) * g.OW * g.C, (ph + g.p - j0) / g.s, 0, {}};
          for (int64_t j = j0; j >= 0; j -= g.s) term.w[term.count++] = w.data() + (i * g.k + j) * g.C;
          terms.push_back(term);
        }
        row_sum(terms, g.C, g.OW, 1, dx + (r * g.W + ph) * g.C, g.s, (g.W - ph + g.s - 1) / g.s);
      }
    }
  });
}

// a[j] += sum over ow in [lo, hi) of dy[ow] * x[ow * S + j - p], P outputs at a time, V channels
// from c: each pixel of x is read once for all the taps it meets. Returns where it stopped.
template <int P, int S, int K, typename T>
int64_t weight_block(vf (&a)[K], const T* dy, const T* x, int64_t c, int64_t C, int64_t lo, int64_t hi) {
  constexpr int64_t p = (K - 1) / 2;
  int64_t ow = lo;
  for (; ow + P <= hi; ow += P) {
    vf d[P];
#pragma GCC unroll 8
    for (int i = 0; i < P; ++i) d[i] = vload(dy + (ow + i) * C + c);
    const T* xs = x + (ow * S - p) * C + c;
#pragma GCC unroll 32
    for (int q = 0; q < (P - 1) * S + K; ++q) {
      const vf v = vload(xs + q * C);
#pragma GCC unroll 8
      for (int j = 0; j < K; ++j) {
        const int e = q - j;
        if (e >= 0 && e % S == 0 && e / S < P) a[j] += d[e / S] * v;
      }
    }
  }
  return ow;
}

// acc[j] += sum over ow of dy[ow] * x[ow * s + j - p], for one row of dy and one of x.
template <int S, int K, typename T>
void weight_row(const T* dy, const T* x, int64_t C, int64_t W, int64_t OW, float* acc) {
  constexpr int64_t p = (K - 1) / 2;
  const int64_t lo = std::min((p + S - 1) / S, OW);  // ow * S - p >= 0
  const int64_t hi = std::max(std::min(floor_div(W - K + p, S) + 1, OW), lo);  // ow * S + K - 1 - p < W
  const int64_t CV = C / V * V;
  for (int64_t c = 0; c < CV; c += V) {
    vf a[K] = {};
    auto edge = [&](int64_t ow) {
      const vf d = vload(dy + ow * C + c);
      for (int j = 0; j < K; ++j) {
        const int64_t iw = ow * S + j - p;
        if (iw >= 0 && iw < W) a[j] += d * vload(x + iw * C + c);
      }
    };
    for (int64_t ow = 0; ow < lo; ++ow) edge(ow);
    int64_t ow = weight_block<8, S, K>(a, dy, x, c, C, lo, hi);
    ow = weight_block<4, S, K>(a, dy, x, c, C, ow, hi);
    weight_block<1, S, K>(a, dy, x, c, C, ow, hi);
    for (ow = hi; ow < OW; ++ow) edge(ow);
    for (int j = 0; j < K; ++j) vstore(acc + j * C + c, vload(acc + j * C + c) + a[j]);
  }
  for (int64_t ow = 0; ow < OW && CV < C; ++ow)  // the channels past the last multiple of V
    for (int j = 0; j < K; ++j) {
      const int64_t iw = ow * S + j - p;
      if (iw < 0 || iw >= W) continue;
      for (int64_t c = CV; c < C; ++c) acc[j * C + c] += ld(dy, ow * C + c) * ld(x, iw * C + c);
    }
}

constexpr int64_t kBlock = 256;  // outputs summed in float before they go into the double totals

// dw[i, j] = sum over n, oh, ow of dy[n, oh, ow] * x[n, oh * s + i - p, ow * s + j - p]
template <typename T, int K>
std::vector<double> weight_grad_impl(const T* dy, const T* x, const Geometry& g) {
  const int64_t C = g.C, KC = K * K * C;
  const int nt = at::get_num_threads();
  std::vector<double> part(nt * KC, 0.0);
  at::parallel_for(0, g.N * g.OH, 1, [&](int64_t r0, int64_t r1) {
    double* total = part.data() + at::get_thread_num() * KC;
    std::vector<float> acc(KC, 0.f);
    int64_t summed = 0;  // outputs in acc since it went into total
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / g.OH, oh = r % g.OH;
      for (int64_t i = 0; i < K; ++i) {
        const int64_t ih = oh * g.s + i - g.p;
        if (ih < 0 || ih >= g.H) continue;
        const T* dyr = dy + r * g.OW * C;
        const T* xr = x + (n * g.H + ih) * g.W * C;
        float* out = acc.data() + i * K * C;
        g.s == 1 ? weight_row<1, K>(dyr, xr, C, g.W, g.OW, out) : weight_row<2, K>(dyr, xr, C, g.W, g.OW, out);
      }
      summed += g.OW;
      if (summed >= kBlock || r + 1 == r1) {
        for (int64_t q = 0; q < KC; ++q) total[q] += acc[q];
        std::fill(acc.begin(), acc.end(), 0.f);
        summed = 0;
      }
    }
  });
  std::vector<double> sum(KC, 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t q = 0; q < KC; ++q) sum[q] += part[t * KC + q];
  return sum;
}

template <typename T>
std::vector<double> weight_grad(const T* dy, const T* x, const Geometry& g) {
  switch (g.k) {
    case 1: return weight_grad_impl<T, 1>(dy, x, g);
    case 3: return weight_grad_impl<T, 3>(dy, x, g);
    case 5: return weight_grad_impl<T, 5>(dy, x, g);
    case 7: return weight_grad_impl<T, 7>(dy, x, g);
    default: TORCH_CHECK(false, "depthwise kernel sizes 1, 3, 5, 7 only");
  }
}

void check(const at::Tensor& x, const at::Tensor& weight, int64_t stride) {
  TORCH_CHECK(x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast), "x: a channels-last 4-D map");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, "x: float or bfloat16");
  TORCH_CHECK(weight.scalar_type() == at::kFloat && weight.dim() == 4 && weight.size(0) == x.size(1) &&
              weight.size(1) == 1 && weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1 &&
              weight.size(2) <= 7, "weight: float (C, 1, k, k), k = 1, 3, 5 or 7");
  TORCH_CHECK(stride == 1 || stride == 2, "stride 1 or 2");
}

}  // namespace

// x: channels-last (N, C, H, W), bf16 or float; weight: float (C, 1, k, k). Returns y, laid out and typed as x.
at::Tensor depthwise_forward(at::Tensor x, at::Tensor weight, int64_t stride) {
  check(x, weight, stride);
  const Geometry g(x, weight.size(2), stride);
  const auto w = taps_of(weight.contiguous(), g.C, g.k * g.k);
  at::Tensor y = at::empty({g.N, g.C, g.OH, g.OW}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  if (x.scalar_type() == at::kBFloat16)
    forward_impl(reinterpret_cast<const uint16_t*>(x.data_ptr()), w, reinterpret_cast<uint16_t*>(y.data_ptr()), g);
  else
    forward_impl(x.data_ptr<float>(), w, y.data_ptr<float>(), g);
  return y;
}

// dy: the gradient of y, laid out and typed as x. Returns the gradients of x (as x) and of weight (as weight).
std::vector<at::Tensor> depthwise_backward(at::Tensor dy, at::Tensor x, at::Tensor weight, int64_t stride) {
  check(x, weight, stride);
  const Geometry g(x, weight.size(2), stride);
  TORCH_CHECK(dy.scalar_type() == x.scalar_type() && dy.is_contiguous(at::MemoryFormat::ChannelsLast) &&
              dy.size(0) == g.N && dy.size(1) == g.C && dy.size(2) == g.OH && dy.size(3) == g.OW,
              "dy: laid out and typed as x, the output's size");
  const int64_t kk = g.k * g.k;
  const auto w = taps_of(weight.contiguous(), g.C, kk);
  at::Tensor dx = at::empty_like(x);
  std::vector<double> dw;
  if (x.scalar_type() == at::kBFloat16) {
    const auto* dyp = reinterpret_cast<const uint16_t*>(dy.data_ptr());
    input_grad_impl(dyp, w, reinterpret_cast<uint16_t*>(dx.data_ptr()), g);
    dw = weight_grad(dyp, reinterpret_cast<const uint16_t*>(x.data_ptr()), g);
  } else {
    input_grad_impl(dy.data_ptr<float>(), w, dx.data_ptr<float>(), g);
    dw = weight_grad(dy.data_ptr<float>(), x.data_ptr<float>(), g);
  }
  at::Tensor dweight = at::empty_like(weight);  // the parameter's strides (DDP wants them)
  if (dweight.stride(0) != kk || dweight.stride(2) != g.k || dweight.stride(3) != 1)  // (c, i, j) order
    dweight = at::empty({g.C, 1, g.k, g.k}, weight.options());
  float* d = dweight.data_ptr<float>();
  for (int64_t c = 0; c < g.C; ++c)
    for (int64_t q = 0; q < kk; ++q) d[c * kk + q] = float(dw[q * g.C + c]);
  return {dx, dweight};
}

// Operators in the build's own namespace (TORCH_EXTENSION_NAME, the build's name): the build compiles
// ATen's headers only, not PyTorch's whole C++ API and Python bindings (half the build's time).
#define MOBILENETS_OPERATORS(ns, m) TORCH_LIBRARY(ns, m)
MOBILENETS_OPERATORS(TORCH_EXTENSION_NAME, m) {
  m.def("depthwise_forward", &depthwise_forward);
  m.def("depthwise_backward", &depthwise_backward);
}
