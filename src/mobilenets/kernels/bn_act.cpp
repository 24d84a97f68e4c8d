// Training batch norm fused with its activation on channels-last maps (rows of C channels).
//
// PyTorch runs BN's statistics, its normalisation, the activation and each of their gradients as
// passes of their own over the map. Here the forward reads the map twice and writes it once, the
// backward reads the map and its gradient twice and writes once: the activation's gradient is
// recomputed from BN's input inside BN's own passes. Sums are taken in float over blocks of rows and
// in double across blocks; the variance from sums shifted by the first pixel.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

using f32p = float* __restrict;
using cf32p = const float* __restrict;

inline float ld(const float* p, int64_t i) { return p[i]; }
inline float ld(const uint16_t* p, int64_t i) {
  uint32_t u = uint32_t(p[i]) << 16; float f; std::memcpy(&f, &u, 4); return f;
}
inline void st(float* p, int64_t i, float v) { p[i] = v; }
inline void st(uint16_t* p, int64_t i, float v) {  // round to nearest even, NaN kept NaN
  uint32_t u; std::memcpy(&u, &v, 4);
  uint16_t r = uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  p[i] = (v != v) ? uint16_t(0x7FC0) : r;
}

enum Act : int64_t { kClamp = 0, kHardSwish = 1 };  // clamp(lo, hi): ReLU6, ReLU, none

template <int64_t A>
inline float act(float z, float lo, float hi) {
  if constexpr (A == kClamp) return std::min(std::max(z, lo), hi);
  else return z * std::min(std::max(z + 3.f, 0.f), 6.f) * (1.f / 6.f);
}
template <int64_t A>
inline float act_grad(float z, float lo, float hi) {  // as PyTorch's hardtanh / hardswish backward
  if constexpr (A == kClamp) return (z > lo && z < hi) ? 1.f : 0.f;
  else return z < -3.f ? 0.f : (z <= 3.f ? z * (1.f / 3.f) + 0.5f : 1.f);
}

// One row (pixel) of each pass; C contiguous channels, vectorised by the compiler.
template <typename T>
void row_stats(const T* __restrict x, cf32p shift, f32p s, f32p q, int64_t C) {
  for (int64_t c = 0; c < C; ++c) { float v = ld(x, c) - shift[c]; s[c] += v; q[c] += v * v; }
}
template <int64_t A, typename T>
void row_forward(const T* __restrict x, T* __restrict y, cf32p scale, cf32p offset, float lo, float hi, int64_t C) {
  for (int64_t c = 0; c < C; ++c) st(y, c, act<A>(ld(x, c) * scale[c] + offset[c], lo, hi));
}
template <int64_t A, typename T>
void row_grad_sums(const T* __restrict x, const T* __restrict g, cf32p scale, cf32p offset, cf32p mean,
                   float lo, float hi, f32p s, f32p q, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    float xv = ld(x, c), z = xv * scale[c] + offset[c], gv = ld(g, c);
    float gm = gv * act_grad<A>(z, lo, hi);
    s[c] += gm; q[c] += gm * (xv - mean[c]);
  }
}
template <int64_t A, typename T>
void row_backward(const T* __restrict x, const T* __restrict g, T* __restrict dx, cf32p scale, cf32p offset,
                  cf32p ka, cf32p kb, cf32p kd, float lo, float hi, int64_t C) {
  for (int64_t c = 0; c < C; ++c) {
    float xv = ld(x, c), z = xv * scale[c] + offset[c], gv = ld(g, c);
    float gm = gv * act_grad<A>(z, lo, hi);
    st(dx, c, gm * ka[c] + xv * kb[c] + kd[c]);
  }
}

constexpr int64_t kBlock = 256;  // rows summed in float before they go into the double totals
constexpr int64_t kWide = 256;  // narrow maps are walked G rows at a time, G * C >= kWide where M allows

// How many rows to take as one: short rows leave the vector loop too little to do.
int64_t row_group(int64_t M, int64_t C) {
  int64_t g = 1;
  while (g * C < kWide && M % (2 * g) == 0) g *= 2;
  return g;
}
std::vector<float> tiled(const std::vector<float>& v, int64_t g) {
  std::vector<float> out(v.size() * g);
  for (int64_t i = 0; i < g; ++i) std::copy(v.begin(), v.end(), out.begin() + i * v.size());
  return out;
}
std::vector<float> tiled(const float* v, int64_t C, int64_t g) { return tiled(std::vector<float>(v, v + C), g); }
// Folds sums over a G-row group back to C channels.
std::vector<double> folded(const std::vector<double>& v, int64_t C) {
  std::vector<double> out(C, 0.0);
  for (size_t i = 0; i < v.size(); ++i) out[i % C] += v[i];
  return out;
}

// Per-channel totals of two row sums over all M rows, each thread into its own.
template <typename F>
void channel_sums(int64_t M, int64_t C, const F& row, std::vector<double>& s1, std::vector<double>& s2) {
  const int nt = at::get_num_threads();
  std::vector<double> part1(nt * C, 0.0), part2(nt * C, 0.0);
  at::parallel_for(0, (M + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
    const int t = at::get_thread_num();
    std::vector<float> a(C), q(C);
    for (int64_t b = b0; b < b1; ++b) {
      std::fill(a.begin(), a.end(), 0.f);
      std::fill(q.begin(), q.end(), 0.f);
      for (int64_t r = b * kBlock, r1 = std::min(M, (b + 1) * kBlock); r < r1; ++r) row(r, a.data(), q.data());
      for (int64_t c = 0; c < C; ++c) { part1[t * C + c] += a[c]; part2[t * C + c] += q[c]; }
    }
  });
  s1.assign(C, 0.0); s2.assign(C, 0.0);
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < C; ++c) { s1[c] += part1[t * C + c]; s2[c] += part2[t * C + c]; }
}

template <int64_t A, typename T>
std::vector<at::Tensor> forward_impl(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                     double eps, double lo, double hi) {
  const int64_t C = x.size(1), M = x.numel() / C, G = row_group(M, C), W = G * C, R = M / G;
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  // Shifted sums (by the first pixel) keep the variance exact for maps far from zero mean.
  std::vector<float> shift(C);
  for (int64_t c = 0; c < C; ++c) shift[c] = ld(xp, c);
  const std::vector<float> shift_g = tiled(shift, G);
  std::vector<double> s1, s2;
  channel_sums(R, W, [&](int64_t r, float* a, float* q) { row_stats(xp + r * W, shift_g.data(), a, q, W); }, s1, s2);
  s1 = folded(s1, C); s2 = folded(s2, C);
  auto opts = weight.options().dtype(at::kFloat);
  at::Tensor mean = at::empty({C}, opts), var = at::empty({C}, opts), invstd = at::empty({C}, opts);
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  std::vector<float> scale(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {
    double m1 = s1[c] / M, v = std::max(s2[c] / M - m1 * m1, 0.0);
    double mu = shift[c] + m1, is = 1.0 / std::sqrt(v + eps);
    mean.data_ptr<float>()[c] = float(mu); var.data_ptr<float>()[c] = float(v);
    invstd.data_ptr<float>()[c] = float(is);
    scale[c] = float(w[c] * is); offset[c] = float(b[c] - mu * w[c] * is);
  }
  const std::vector<float> scale_g = tiled(scale, G), offset_g = tiled(offset, G);
  at::Tensor y = at::empty_like(x);
  T* yp = reinterpret_cast<T*>(y.data_ptr());
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      row_forward<A>(xp + r * W, yp + r * W, scale_g.data(), offset_g.data(), float(lo), float(hi), W);
  });
  return {y, mean, var, invstd};
}

template <int64_t A, typename T>
std::vector<at::Tensor> backward_impl(const at::Tensor& g, const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias, const at::Tensor& mean, const at::Tensor& invstd,
                                      double lo, double hi) {
  const int64_t C = x.size(1), M = x.numel() / C, G = row_group(M, C), W = G * C, R = M / G;
  const T* xp = reinterpret_cast<const T*>(x.data_ptr());
  const T* gp = reinterpret_cast<const T*>(g.data_ptr());
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  const float* mu = mean.data_ptr<float>();
  const float* is = invstd.data_ptr<float>();
  std::vector<float> scale(C), offset(C), ka(C), kb(C), kd(C);
  for (int64_t c = 0; c < C; ++c) { scale[c] = w[c] * is[c]; offset[c] = b[c] - mu[c] * scale[c]; }
  const std::vector<float> scale_g = tiled(scale, G), offset_g = tiled(offset, G), mean_g = tiled(mu, C, G);
  // The activation's gradient at z, recomputed from x as the forward had it.
  std::vector<double> sg, sgx;
  channel_sums(R, W, [&](int64_t r, float* a, float* q) {
    row_grad_sums<A>(xp + r * W, gp + r * W, scale_g.data(), offset_g.data(), mean_g.data(), float(lo), float(hi), a, q, W);
  }, sg, sgx);
  sg = folded(sg, C); sgx = folded(sgx, C);
  auto opts = weight.options().dtype(at::kFloat);
  at::Tensor dw = at::empty({C}, opts), db = at::empty({C}, opts);
  for (int64_t c = 0; c < C; ++c) {  // dx = a * (gm - mean(gm) - xhat * mean(gm * xhat)), a = w * invstd
    double inv = is[c], k = sgx[c] * inv * inv / M, mg = sg[c] / M, a = double(w[c]) * inv;
    dw.data_ptr<float>()[c] = float(sgx[c] * inv); db.data_ptr<float>()[c] = float(sg[c]);
    ka[c] = float(a); kb[c] = float(-a * k); kd[c] = float(-a * mg + a * k * mu[c]);
  }
  const std::vector<float> ka_g = tiled(ka, G), kb_g = tiled(kb, G), kd_g = tiled(kd, G);
  at::Tensor dx = at::empty_like(x);
  T* dp = reinterpret_cast<T*>(dx.data_ptr());
  at::parallel_for(0, R, 64, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      row_backward<A>(xp + r * W, gp + r * W, dp + r * W, scale_g.data(), offset_g.data(), ka_g.data(), kb_g.data(),
                   kd_g.data(), float(lo), float(hi), W);
  });
  return {dx, dw, db};
}

}  // namespace

// x: channels-last (N, C, H, W) in bf16 or float; weight, bias: float (C). Returns y, mean, biased var, invstd.
std::vector<at::Tensor> bn_act_forward(at::Tensor x, at::Tensor weight, at::Tensor bias, double eps, int64_t kind,
                                       double lo, double hi) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (kind == kHardSwish)
    return bf16 ? forward_impl<kHardSwish, uint16_t>(x, weight, bias, eps, lo, hi)
                : forward_impl<kHardSwish, float>(x, weight, bias, eps, lo, hi);
  return bf16 ? forward_impl<kClamp, uint16_t>(x, weight, bias, eps, lo, hi)
              : forward_impl<kClamp, float>(x, weight, bias, eps, lo, hi);
}

// g: the gradient of y, laid out as x. Returns the gradients of x, weight and bias.
std::vector<at::Tensor> bn_act_backward(at::Tensor g, at::Tensor x, at::Tensor weight, at::Tensor bias,
                                        at::Tensor mean, at::Tensor invstd, int64_t kind, double lo, double hi) {
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  if (kind == kHardSwish)
    return bf16 ? backward_impl<kHardSwish, uint16_t>(g, x, weight, bias, mean, invstd, lo, hi)
                : backward_impl<kHardSwish, float>(g, x, weight, bias, mean, invstd, lo, hi);
  return bf16 ? backward_impl<kClamp, uint16_t>(g, x, weight, bias, mean, invstd, lo, hi)
              : backward_impl<kClamp, float>(g, x, weight, bias, mean, invstd, lo, hi);
}

// Operators in the build's own namespace (TORCH_EXTENSION_NAME, the build's name): the build compiles
// ATen's headers only, not PyTorch's whole C++ API and Python bindings (half the build's time).
#define MOBILENETS_OPERATORS(ns, m) TORCH_LIBRARY(ns, m)
MOBILENETS_OPERATORS(TORCH_EXTENSION_NAME, m) {
  m.def("bn_act_forward", &bn_act_forward);
  m.def("bn_act_backward", &bn_act_backward);
}
