// The rational-quadratic spline of one element, shared by the fused kernels: the circular and
// interval splines (rqs.cpp) and SU(3)'s eigen-angle map (su3.cpp). The same maps as
// hpcflow/flows/splines.py (`_RQS`, `_Local`, `_solve_xi`), written per element: the softmax of
// the widths and heights, the knots by a running sum, the softplus slopes, the bin search, the
// spline of Durkan et al. 2019 (arXiv:1906.04032, eqs. 4-5 and appendix A for the inverse) and,
// for the backward, the chain rule of `_Local.vjp` followed by the adjoints of the knots, the
// softmax and the softplus.

#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace hpcflow_kernels {

constexpr int64_t kMaxBins = 64;
constexpr double kTwoPi = 6.283185307179586476925286766559;

struct Spec {
  int64_t k;
  double lower, upper, mw, mh, ms;
  bool inverse, circular;
  double shift;  // log(expm1(1 - ms)): zero parameters give the slope 1
};

template <typename T>
inline T wrap(T t) {
  // theta mod 2 pi in [0, 2 pi), as splines.py `_wrap` (torch.remainder, then 2 pi -> 0)
  const T two_pi = static_cast<T>(kTwoPi);
  T r = std::fmod(t, two_pi);
  if (r != 0 && r < 0) r += two_pi;
  return r >= two_pi ? r - two_pi : r;
}

template <typename T>
inline T softplus(T z) {  // torch's F.softplus (beta 1, threshold 20)
  return z > T(20) ? z : std::log1p(std::exp(z));
}

// One element's spline: the normalised bin fractions, the knots and the local quantities.
template <typename T>
struct Element {
  T xk[kMaxBins + 1], yk[kMaxBins + 1];  // knots
  int64_t idx;
  T point;
  T sig0, sig1;  // sigmoid(z) of the two slopes' softplus (backward)
  // local (splines.py `_Local`)
  T x0, x1, y0, y1, d0, d1, w, h, s, xi, omx, om, c, den, sxi, r, m, q;

  // softmax of the widths (row 0) and heights (row 1) into prob [2, K]
  static void softmax(const T* p, T* prob, int64_t k) {
    for (int row = 0; row < 2; ++row) {
      const T* u = p + row * k;
      T* out = prob + row * k;
      T mx = u[0];
      for (int64_t i = 1; i < k; ++i) mx = std::max(mx, u[i]);
      T sum = 0;
      for (int64_t i = 0; i < k; ++i) {
        out[i] = std::exp(u[i] - mx);
        sum += out[i];
      }
      const T inv_sum = T(1) / sum;
      for (int64_t i = 0; i < k; ++i) out[i] *= inv_sum;
    }
  }

  // knot_j = lower + span * sum_{i<j} (min + (1 - K min) prob_i), knot_K = upper
  void knots(const T* prob, const Spec& sp) {
    const int64_t k = sp.k;
    const T span = static_cast<T>(sp.upper - sp.lower);
    const T lower = static_cast<T>(sp.lower);
    for (int row = 0; row < 2; ++row) {
      const T* pr = prob + row * k;
      T* kn = row == 0 ? xk : yk;
      const T mmin = static_cast<T>(row == 0 ? sp.mw : sp.mh);
      const T scale = T(1) - static_cast<T>(k) * mmin;
      T acc = 0;
      kn[0] = lower;
      for (int64_t i = 0; i + 1 < k; ++i) {
        acc += mmin + scale * pr[i];
        kn[i + 1] = span * acc + lower;
      }
      kn[k] = static_cast<T>(sp.upper);
    }
  }

  // the slope d_j = ms + softplus(z_j + log(expm1(1 - ms))) (circular: d_K = d_0), and
  // sigmoid of its argument
  static T slope(const T* p, int64_t j, const Spec& sp, T* sig) {
    const int64_t src = (sp.circular && j == sp.k) ? 0 : j;
    const T z = p[2 * sp.k + src] + static_cast<T>(sp.shift);
    if (sig != nullptr) *sig = T(1) / (T(1) + std::exp(-z));
    return static_cast<T>(sp.ms) + softplus(z);
  }

  // the bin of the element and its local quantities (`prob`: the softmax of its params)
  void locate(T x, const T* p, const T* prob, const Spec& sp, bool with_sigmoid) {
    knots(prob, sp);
    const int64_t k = sp.k;
    if (sp.circular) {
      point = sp.inverse ? wrap(x - p[3 * k]) : wrap(x);
    } else {
      point = std::min(std::max(x, static_cast<T>(sp.lower)), static_cast<T>(sp.upper));
    }
    const T* row = sp.inverse ? yk : xk;
    idx = 0;
    for (int64_t j = 1; j < k; ++j) idx += point >= row[j];
    x0 = xk[idx]; x1 = xk[idx + 1];
    y0 = yk[idx]; y1 = yk[idx + 1];
    d0 = slope(p, idx, sp, with_sigmoid ? &sig0 : nullptr);
    d1 = slope(p, idx + 1, sp, with_sigmoid ? &sig1 : nullptr);
    w = x1 - x0;
    h = y1 - y0;
    s = h / w;
    xi = sp.inverse ? solve_xi() : std::min(std::max((point - x0) / w, T(0)), T(1));
    omx = T(1) - xi;
    om = xi * omx;
    c = d0 + d1 - T(2) * s;
    den = s + c * om;
    sxi = s * xi;
    r = (d0 * om + sxi * xi) / den;
    m = d1 * xi * xi + d0 * omx * omx + T(2) * s * om;
    q = s / den;
  }

  T solve_xi() const {  // splines.py `_solve_xi`: the root that does not cancel
    const T curv = d0 + d1 - T(2) * s;
    const T dy = point - y0;
    const T a = h * (s - d0) + dy * curv;
    const T b = h * d0 - dy * curv;
    const T cc = -s * dy;
    const T sq = std::sqrt(std::max(b * b - T(4) * a * cc, T(0)));
    const T root = b >= 0 ? (cc + cc) / (-b - sq) : (sq - b) / (a + a);
    return std::min(std::max(root, T(0)), T(1));
  }

  T logdet() const { return std::log(m * q * q); }

  // the forward map's value, torch.lerp(y0, y1, r) in its two-sided form
  T value() const { return r < T(0.5) ? y0 + r * h : y1 - (T(1) - r) * h; }

  T dlogdet_dx() const {
    const T dm = d1 * xi - d0 * omx + s * (omx - xi);
    const T dden = c * (omx - xi);
    return (dm / m - dden / den) * T(2) / w;
  }

  // `_Local.vjp`: cotangents (gy, gl) -> g_x and the knots' cotangents
  // gk = (g_x0, g_x1, g_y0, g_y1, g_d0, g_d1)
  T vjp(T gy, T gl, T* gk) const {
    const T g_r = gy * h;
    const T g_n = g_r / den;
    const T gl2 = gl + gl;
    const T g_den = (gl2 + g_r * r) / (-den);
    const T g_m = gl / m;
    const T g_s = gl2 / s + g_den + g_n * xi * xi + T(2) * om * (g_m - g_den);
    const T g_c = g_den * om;
    const T g_om = g_den * c + g_n * d0 + T(2) * g_m * s;
    const T g_xi = g_om * (omx - xi) + T(2) * g_n * sxi + T(2) * g_m * (d1 * xi - d0 * omx);
    const T g_d0 = g_c + g_n * om + g_m * omx * omx;
    const T g_d1 = g_c + g_m * xi * xi;
    const T g_sw = g_s / w;
    const T g_h = g_sw + gy * r;
    const T g_x = g_xi / w;
    const T g_w = -(g_x * xi + g_sw * s);
    gk[0] = -(g_x + g_w);
    gk[1] = g_w;
    gk[2] = gy - g_h;
    gk[3] = g_h;
    gk[4] = g_d0;
    gk[5] = g_d1;
    return g_x;
  }

  // The knots' cotangents ``gk`` (from ``vjp``) -> the cotangents of the element's parameters
  // ``gp[3K + 1]`` (every entry written; a circular spline's bias entry is left 0 for the
  // caller): knots -> bin fractions -> softmax inputs, and the softplus slopes. ``prob``: the
  // softmax of the element's widths and heights; ``locate`` ran with ``with_sigmoid``.
  void param_vjp(const T* prob, const T* gk, const Spec& sp, T* gp) const {
    const int64_t k = sp.k;
    const T span = static_cast<T>(sp.upper - sp.lower);
    for (int64_t j = 0; j <= 3 * k; ++j) gp[j] = 0;
    // knot_j = lower + span * sum_{i<j} frac_i (1 <= j <= K-1; knot_0, knot_K fixed), for the
    // widths (row 0) and heights (row 1)
    for (int row = 0; row < 2; ++row) {
      const T* pr = prob + row * k;
      const T scale = T(1) - static_cast<T>(k) * static_cast<T>(row == 0 ? sp.mw : sp.mh);
      const T g_lo = gk[2 * row], g_hi = gk[2 * row + 1];  // knots idx and idx + 1
      // g_frac_i = span * (sum of the interior knots' cotangents at j > i)
      T dot = 0;
      T* gu = gp + row * k;
      for (int64_t fi = 0; fi < k; ++fi) {
        T tail = 0;
        if (idx > fi && idx <= k - 1) tail += g_lo;
        if (idx + 1 > fi && idx + 1 <= k - 1) tail += g_hi;
        const T g_prob = span * tail * scale;
        gu[fi] = g_prob;
        dot += g_prob * pr[fi];
      }
      for (int64_t fi = 0; fi < k; ++fi) gu[fi] = pr[fi] * (gu[fi] - dot);
    }
    // slopes: d_j = ms + softplus(z_j); circular d_K = d_0
    gp[2 * k + ((sp.circular && idx == k) ? 0 : idx)] += gk[4] * sig0;
    gp[2 * k + ((sp.circular && idx + 1 == k) ? 0 : idx + 1)] += gk[5] * sig1;
  }
};

inline Spec make_spec(int64_t k, double lower, double upper, double mw, double mh, double ms,
                      bool inverse, bool circular) {
  TORCH_CHECK(k >= 1 && k <= kMaxBins, "rqs: bins must be in [1, ", kMaxBins, "], got ", k);
  return Spec{k, lower, upper, mw, mh, ms, inverse, circular, std::log(std::expm1(1.0 - ms))};
}

// How a cotangent of x's shape is read in place: element i at data[i / div]. div = 1:
// contiguous; div = size(-1): broadcast along the last axis over contiguous leading axes (the
// backward of a sum over that axis, as a coupling layer sums its log-derivatives: no copy);
// 0: neither (rqs_backward reads a contiguous copy).
inline int64_t cotangent_divisor(const at::Tensor& t) {
  if (t.is_contiguous()) return 1;
  const int64_t d = t.dim();
  if (d == 0 || t.stride(d - 1) != 0) return 0;
  int64_t expected = 1;
  for (int64_t a = d - 2; a >= 0; --a) {
    if (t.size(a) != 1 && t.stride(a) != expected) return 0;
    expected *= t.size(a);
  }
  return std::max<int64_t>(t.size(d - 1), 1);
}

inline at::Tensor readable(const at::Tensor& t) {
  return cotangent_divisor(t) > 0 ? t : t.contiguous();
}

}  // namespace hpcflow_kernels
