// Fused rational-quadratic splines (circular with bias, and on an interval), forward and
// backward, one pass over the elements on the CPU.
//
// The same maps as hpcflow/flows/splines.py (`_RQS`, `_Local`, `_solve_xi`), written per
// element: the softmax of the widths and heights, the knots by a running sum, the softplus
// slopes, the bin search, the spline of Durkan et al. 2019 (arXiv:1906.04032, eqs. 4-5 and
// appendix A for the inverse) and, for the backward, the chain rule of `_Local.vjp` followed by
// the adjoints of the knots, the softmax and the softplus. The backward recomputes the element's
// spline from its input and parameters instead of saving intermediates.
//
// Why: an eager spline call issues ~40 tensor operations forward and ~95 backward, each a
// pass over memory and a dispatch (issue 19); here each is one operator call.
//
// Registered as torch.ops.hpcflow.rqs_forward / rqs_backward (CPU, float32 and float64).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

namespace {

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
};

template <typename T>
void forward_kernel(const T* x, const T* p, T* out, T* logdet, T* prob, int64_t n,
                    int64_t n_params, const Spec& sp) {
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    Element<T> e;
    for (int64_t i = begin; i < end; ++i) {
      const T* pi = p + i * n_params;
      T* probi = prob + i * 2 * sp.k;
      Element<T>::softmax(pi, probi, sp.k);
      e.locate(x[i], pi, probi, sp, false);
      T y;
      T ld = e.logdet();
      if (sp.inverse) {  // torch.lerp(x0, x1, xi), its two-sided form
        y = e.xi < T(0.5) ? e.x0 + e.xi * e.w : e.x1 - e.omx * e.w;
        ld = -ld;
        if (sp.circular) y = wrap(y);
      } else {  // torch.lerp(y0, y1, r)
        y = e.r < T(0.5) ? e.y0 + e.r * e.h : e.y1 - (T(1) - e.r) * e.h;
        if (sp.circular) y = wrap(y + pi[3 * sp.k]);
      }
      out[i] = y;
      logdet[i] = ld;
    }
  });
}

template <typename T>
void backward_kernel(const T* x, const T* p, const T* prob, const T* g_out, int64_t out_div,
                     const T* g_logdet, int64_t logdet_div, T* g_x, T* g_p, int64_t n,
                     int64_t n_params, const Spec& sp) {
  const int64_t k = sp.k;
  const T span = static_cast<T>(sp.upper - sp.lower);
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    Element<T> e;
    T gk[6];
    for (int64_t i = begin; i < end; ++i) {
      const T* pi = p + i * n_params;
      T* gpi = g_p + i * n_params;
      const T* probi = prob + i * 2 * k;
      e.locate(x[i], pi, probi, sp, true);
      const T go = g_out[i / out_div], gl = g_logdet[i / logdet_div];
      T gin;
      if (sp.inverse) {
        // x = F^-1(y): dx/dy = 1 / F', dx/dknots = -dF/dknots / F'; log J = -log F'(x)
        gin = (go - gl * e.dlogdet_dx()) / (e.m * e.q * e.q);
        e.vjp(-gin, -gl, gk);
      } else {
        gin = e.vjp(go, gl, gk);
      }
      // a point a round-off outside the interval is the end point, with its end slope (as
      // splines.py: the clamp removes round-off, not the derivative)
      g_x[i] = gin;
      for (int64_t j = 0; j < n_params; ++j) gpi[j] = 0;
      // knots -> bin fractions -> softmax inputs, for the widths (row 0) and heights (row 1):
      // knot_j = lower + span * sum_{i<j} frac_i (1 <= j <= K-1; knot_0, knot_K fixed)
      for (int row = 0; row < 2; ++row) {
        const T* pr = probi + row * k;
        const T scale = T(1) - static_cast<T>(k) * static_cast<T>(row == 0 ? sp.mw : sp.mh);
        const T g_lo = gk[2 * row], g_hi = gk[2 * row + 1];  // knots idx and idx + 1
        // g_frac_i = span * (sum of the interior knots' cotangents at j > i)
        T dot = 0;
        T* gu = gpi + row * k;
        for (int64_t fi = 0; fi < k; ++fi) {
          T tail = 0;
          if (e.idx > fi && e.idx <= k - 1) tail += g_lo;
          if (e.idx + 1 > fi && e.idx + 1 <= k - 1) tail += g_hi;
          const T g_prob = span * tail * scale;
          gu[fi] = g_prob;
          dot += g_prob * pr[fi];
        }
        for (int64_t fi = 0; fi < k; ++fi) gu[fi] = pr[fi] * (gu[fi] - dot);
      }
      // slopes: d_j = ms + softplus(z_j); circular d_K = d_0
      auto add_slope = [&](int64_t j, T g) {
        gpi[2 * k + ((sp.circular && j == k) ? 0 : j)] += g;
      };
      add_slope(e.idx, gk[4] * e.sig0);
      add_slope(e.idx + 1, gk[5] * e.sig1);
      if (sp.circular) gpi[3 * k] = sp.inverse ? -gin : go;
    }
  });
}

Spec make_spec(int64_t k, double lower, double upper, double mw, double mh, double ms,
               bool inverse, bool circular) {
  TORCH_CHECK(k >= 1 && k <= kMaxBins, "rqs: bins must be in [1, ", kMaxBins, "], got ", k);
  return Spec{k, lower, upper, mw, mh, ms, inverse, circular, std::log(std::expm1(1.0 - ms))};
}

void check_inputs(const at::Tensor& x, const at::Tensor& params, const Spec& sp) {
  TORCH_CHECK(x.device().is_cpu() && params.device().is_cpu(), "rqs: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && params.is_contiguous(), "rqs: contiguous tensors only");
  TORCH_CHECK(params.scalar_type() == x.scalar_type(), "rqs: params and x differ in dtype");
  TORCH_CHECK(params.dim() == x.dim() + 1 && params.sizes().slice(0, x.dim()) == x.sizes(),
              "rqs: params must be [..., P] over x's shape");
  TORCH_CHECK(params.size(-1) == 3 * sp.k + 1, "rqs: params.shape[-1] must be 3K + 1");
}

// (out, logdet, prob): prob [..., 2, K] is the softmax of the widths and heights, kept by the
// caller for the backward
std::tuple<at::Tensor, at::Tensor, at::Tensor> rqs_forward(
    const at::Tensor& x, const at::Tensor& params, int64_t k, double lower, double upper,
    double mw, double mh, double ms, bool inverse, bool circular) {
  const Spec sp = make_spec(k, lower, upper, mw, mh, ms, inverse, circular);
  check_inputs(x, params, sp);
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor logdet = at::empty(x.sizes(), x.options());
  std::vector<int64_t> prob_shape(x.sizes().begin(), x.sizes().end());
  prob_shape.push_back(2);
  prob_shape.push_back(k);
  at::Tensor prob = at::empty(prob_shape, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rqs_forward", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), params.const_data_ptr<scalar_t>(),
                             out.mutable_data_ptr<scalar_t>(),
                             logdet.mutable_data_ptr<scalar_t>(),
                             prob.mutable_data_ptr<scalar_t>(), x.numel(), params.size(-1), sp);
  });
  return {out, logdet, prob};
}

// How a cotangent of x's shape is read in place: element i at data[i / div]. div = 1:
// contiguous; div = size(-1): broadcast along the last axis over contiguous leading axes (the
// backward of a sum over that axis, as a coupling layer sums its log-derivatives: no copy);
// 0: neither (rqs_backward reads a contiguous copy).
int64_t cotangent_divisor(const at::Tensor& t) {
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

at::Tensor readable(const at::Tensor& t) {
  return cotangent_divisor(t) > 0 ? t : t.contiguous();
}

// (g_x, g_params) for the cotangents of (out, logdet), of x's shape and dtype, any strides
std::tuple<at::Tensor, at::Tensor> rqs_backward(
    const at::Tensor& x, const at::Tensor& params, const at::Tensor& prob,
    const at::Tensor& g_out_in, const at::Tensor& g_logdet_in, int64_t k, double lower,
    double upper, double mw, double mh, double ms, bool inverse, bool circular) {
  const Spec sp = make_spec(k, lower, upper, mw, mh, ms, inverse, circular);
  check_inputs(x, params, sp);
  const at::Tensor g_out = readable(g_out_in), g_logdet = readable(g_logdet_in);
  const int64_t out_div = cotangent_divisor(g_out), logdet_div = cotangent_divisor(g_logdet);
  TORCH_CHECK(g_out.sizes() == x.sizes() && g_logdet.sizes() == x.sizes() &&
                  g_out.scalar_type() == x.scalar_type() &&
                  g_logdet.scalar_type() == x.scalar_type(),
              "rqs_backward: cotangents must be of x's shape and dtype");
  TORCH_CHECK(prob.is_contiguous() && prob.numel() == x.numel() * 2 * k &&
                  prob.scalar_type() == x.scalar_type(),
              "rqs_backward: prob must be the forward's contiguous [..., 2, K]");
  at::Tensor g_x = at::empty(x.sizes(), x.options());
  at::Tensor g_p = at::empty(params.sizes(), params.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "rqs_backward", [&] {
    backward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), params.const_data_ptr<scalar_t>(),
                              prob.const_data_ptr<scalar_t>(), g_out.const_data_ptr<scalar_t>(),
                              out_div, g_logdet.const_data_ptr<scalar_t>(), logdet_div,
                              g_x.mutable_data_ptr<scalar_t>(), g_p.mutable_data_ptr<scalar_t>(),
                              x.numel(), params.size(-1), sp);
  });
  return {g_x, g_p};
}

}  // namespace

TORCH_LIBRARY(hpcflow, m) {
  m.def("rqs_forward(Tensor x, Tensor params, int k, float lower, float upper, float mw, "
        "float mh, float ms, bool inverse, bool circular) -> (Tensor, Tensor, Tensor)");
  m.def("rqs_backward(Tensor x, Tensor params, Tensor prob, Tensor g_out, Tensor g_logdet, int k, "
        "float lower, float upper, float mw, float mh, float ms, bool inverse, "
        "bool circular) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hpcflow, CPU, m) {
  m.impl("rqs_forward", &rqs_forward);
  m.impl("rqs_backward", &rqs_backward);
}
