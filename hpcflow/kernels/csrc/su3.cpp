// SU(3)'s eigen-angle map fused: hpcflow/flows/spectral.py `su3_spectral` (forward direction)
// and its backward, one pass over the elements on the CPU.
//
// Per element: the sorted zero-sum angles (x, y, z), the canonical cell's pairs
// W = (w, 1 - w), R = (r, 1 - r), the coefficient table [A_m, B_m] gathered from the free
// parameters, the two coupling steps w' = RQS(w | a(r)), r' = RQS(r | b(w')) evaluated from the
// nearer end of [0, 1] (rqs.h), the Haar log-Jacobian from the ratios of the pairs and the
// sinc factors of the gaps, and the angles of (w', r') in the input's order
// (arXiv:2008.05456; docs/physics.md, "SU(N) spectral transform"). The backward recomputes the
// element and applies the chain rule of each step in reverse; no intermediate is stored.
//
// Why: the tensor path is ~280 operations forward and ~400 autograd operations backward per
// call on tiny tensors, about half of an SU(3) training step's operator calls (issue 19).
//
// Registered as torch.ops.hpcflow.su3_spectral / su3_spectral_backward (CPU, float32/float64).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

#include "rqs.h"

namespace {

using hpcflow_kernels::Element;
using hpcflow_kernels::Spec;
using hpcflow_kernels::cotangent_divisor;
using hpcflow_kernels::kMaxBins;
using hpcflow_kernels::kTwoPi;
using hpcflow_kernels::make_spec;
using hpcflow_kernels::readable;

constexpr int64_t kMaxModes = 8;
constexpr int64_t kMaxP1 = 3 * kMaxBins + 1;
constexpr double kPi = 3.141592653589793238462643383279502884;
// log J = ld_w + ld_r + sum_k kWeight[k] log f_k over the 18 factors (spectral.py `_su3_log_j`)
constexpr double kWeight[18] = {7, 2, 2, 2, 2, 2, 2, 2, 2, -2, -2, -2, -2, -2, -2, 2, 2, 2};

// Where the coefficient table comes from (spectral.py `_tables`): full[j] = ext[slots[j]],
// ext = [params, tied_0, tied_1, tied_2], tied_c = sum_m params[dk[m]] tied[m, c].
template <typename T>
struct Tables {
  const int64_t* slots;  // [2 modes (3K + 1)]
  const int64_t* dk;     // [modes]
  const T* tied;         // [modes, 3]
  int64_t n_params, modes, p1;
};

// The sort of three angles with their source indices (ascending; ties keep their order).
template <typename T>
inline void sort3(T* v, int64_t* perm) {
  for (int i = 1; i < 3; ++i) {
    for (int j = i; j > 0 && v[j] < v[j - 1]; --j) {
      std::swap(v[j], v[j - 1]);
      std::swap(perm[j], perm[j - 1]);
    }
  }
}

// One coupling step of the pair X = (x, 1 - x) on [0, 1]: the spline from the nearer end
// (spectral.py `_interval_map`; the reflected spline's parameters are the widths, heights
// and slopes in reverse order).
template <typename T>
struct Step {
  Element<T> e;
  T prob[2 * kMaxBins];
  T pref[kMaxP1];
  bool flip;
  T yy, ld;

  static int64_t reflected(int64_t j, int64_t k) {
    if (j < k) return k - 1 - j;
    if (j < 2 * k) return 3 * k - 1 - j;
    return 5 * k - j;
  }

  // X -> Y = (y, 1 - y); params: the spline's 3K + 1 parameters
  void run(const T* x, const T* params, const Spec& sp, bool with_sigmoid, T* y) {
    const int64_t k = sp.k;
    flip = x[1] < x[0];
    for (int64_t j = 0; j <= 3 * k; ++j) pref[j] = params[flip ? reflected(j, k) : j];
    Element<T>::softmax(pref, prob, k);
    e.locate(flip ? x[1] : x[0], pref, prob, sp, with_sigmoid);
    yy = e.value();
    ld = e.logdet();
    y[flip ? 1 : 0] = yy;
    y[flip ? 0 : 1] = T(1) - yy;
  }

  // cotangents of Y and ld -> add to those of X and of the parameters
  void backward(const T* gy, T g_ld, const Spec& sp, T* gx, T* g_params) const {
    const T g_yy = flip ? gy[1] - gy[0] : gy[0] - gy[1];
    T gk[6];
    gx[flip ? 1 : 0] += e.vjp(g_yy, g_ld, gk);
    T gp[kMaxP1];
    e.param_vjp(prob, gk, sp, gp);
    const int64_t k = sp.k;
    for (int64_t j = 0; j <= 3 * k; ++j) g_params[flip ? reflected(j, k) : j] += gp[j];
  }
};

// torch.sinc and its derivative (0 at 0, as torch's backward)
template <typename T>
inline T sinc(T x) {
  const T px = static_cast<T>(kPi) * x;
  return x == T(0) ? T(1) : std::sin(px) / px;
}

template <typename T>
inline T dsinc(T x) {
  const T px = static_cast<T>(kPi) * x;
  return x == T(0) ? T(0) : (px * std::cos(px) - std::sin(px)) / (px * x);
}

// One element: the map and everything its backward needs.
template <typename T>
struct Map {
  int64_t perm[3];
  T s[3];                // sorted zero-sum angles
  T gap[2], span;
  bool small;            // span too small to divide: r = 1/2 (the identity)
  T W[2], R[2], Wn[2], Rn[2];
  std::vector<T> full, g_full;  // [2, modes, 3K + 1]: A_m then B_m, and its cotangent
  const T tiny = std::sqrt(std::numeric_limits<T>::min());  // spectral.py `_safe_div`'s limit
  T coef[kMaxP1];        // a(r), then b(w') (the second step reuses it)
  T basis[2][kMaxModes];  // cos(pi m r), sin(pi max(m, 1/2) w')
  Step<T> step_w, step_r;
  T X[6], Xn[6], f[18];  // old and new pairs, the factors of log J
  bool limit[6];         // the ratio of an old value that vanishes: the map's slope

  // the tables sized for this map (on the heap: a worker thread's stack may be small)
  Map(int64_t modes, int64_t p1) : full(2 * modes * p1), g_full(2 * modes * p1) {}

  T freq(int64_t m, int step) const {
    const double mm = step == 0 ? static_cast<double>(m) : std::max(static_cast<double>(m), 0.5);
    return static_cast<T>(kPi * mm);
  }

  // phi[3], params[P] -> out[3] (in phi's order), returns log J
  T run(const T* phi, const T* params, const Tables<T>& tb, const Spec& sp, bool with_sigmoid,
        T* out) {
    const int64_t p1 = tb.p1, modes = tb.modes;
    const T two_pi = static_cast<T>(kTwoPi);
    // sorted_angles: the zero-sum representative, sorted
    for (int i = 0; i < 3; ++i) {
      s[i] = phi[i];
      perm[i] = i;
    }
    sort3(s, perm);
    T n = std::nearbyint((s[0] + s[1] + s[2]) * static_cast<T>(1.0 / kTwoPi));
    n = std::min(std::max(n, T(-1)), T(1));
    if (n == T(1)) s[2] -= two_pi;
    if (n == T(-1)) s[0] += two_pi;
    sort3(s, perm);
    // the cell's pairs (spectral.py `_su3_cell_pairs`)
    gap[0] = s[1] - s[0];
    gap[1] = s[2] - s[1];
    span = gap[0] + gap[1];
    const T c1 = static_cast<T>(1.0 / kTwoPi);
    W[0] = std::min(std::max(span * c1, T(0)), T(1));
    W[1] = std::min(std::max(T(1) + span * (-c1), T(0)), T(1));
    small = span <= tiny;
    R[0] = small ? T(0.5) : gap[0] / span;
    R[1] = small ? T(0.5) : gap[1] / span;
    // the coefficient table
    T tied[3] = {0, 0, 0};
    for (int64_t m = 0; m < modes; ++m) {
      for (int c = 0; c < 3; ++c) tied[c] += params[tb.dk[m]] * tb.tied[3 * m + c];
    }
    for (int64_t j = 0; j < 2 * modes * p1; ++j) {
      const int64_t src = tb.slots[j];
      full[j] = src < tb.n_params ? params[src] : tied[src - tb.n_params];
    }
    // step 1: w' = RQS(w | a(r)), a = sum_m A_m cos(pi m r)
    for (int64_t m = 0; m < modes; ++m) basis[0][m] = std::cos(R[0] * freq(m, 0));
    series(0, modes, p1);
    step_w.run(W, coef, sp, with_sigmoid, Wn);
    // step 2: r' = RQS(r | b(w')), b = sum_m B_m sin(pi max(m, 1/2) w')
    for (int64_t m = 0; m < modes; ++m) basis[1][m] = std::sin(Wn[0] * freq(m, 1));
    series(1, modes, p1);
    step_r.run(R, coef, sp, with_sigmoid, Rn);
    // log J (spectral.py `_su3_log_j`)
    pairs(W, R, X);
    pairs(Wn, Rn, Xn);
    const T lds[3] = {step_w.ld, step_r.ld, step_w.ld};
    for (int i = 0; i < 6; ++i) {
      limit[i] = X[i] <= tiny;
      f[i] = limit[i] ? std::exp(lds[i / 2]) : Xn[i] / X[i];
    }
    const T gaps[6] = {Wn[0] * Rn[0], Wn[0] * Rn[1], Wn[0], W[0] * R[0], W[0] * R[1], W[0]};
    for (int i = 0; i < 6; ++i) {
      const T t = std::abs(gaps[i] - T(0.5));
      f[6 + i] = sinc(T(0.5) - t);
      f[12 + i] = t + T(0.5);
    }
    T log_j = 0;
    for (int i = 0; i < 18; ++i) log_j += std::log(f[i]) * static_cast<T>(kWeight[i]);
    log_j += step_w.ld + step_r.ld;
    // su3_from_cell, then the sort undone
    for (int i = 0; i < 3; ++i) out[perm[i]] = Wn[0] * (cell0(i) + Rn[0] * cell1(i));
    return log_j;
  }

  // coef = sum_m basis[step][m] * table[step, m, :]
  void series(int step, int64_t modes, int64_t p1) {
    for (int64_t j = 0; j < p1; ++j) coef[j] = 0;
    for (int64_t m = 0; m < modes; ++m) {
      const T* row = full.data() + (step * modes + m) * p1;
      for (int64_t j = 0; j < p1; ++j) coef[j] += basis[step][m] * row[j];
    }
  }

  // [(w, 1 - w), (r, 1 - r), (w (1 - r) + (1 - w), w r + (1 - w))]
  static void pairs(const T* w, const T* r, T* x) {
    x[0] = w[0];
    x[1] = w[1];
    x[2] = r[0];
    x[3] = r[1];
    x[4] = w[0] * r[1] + w[1];
    x[5] = w[0] * r[0] + w[1];
  }

  // (x, y, z) / w = cell0 + r cell1 (su3_from_cell)
  static T cell0(int i) {
    const T third = static_cast<T>(kTwoPi / 3.0);
    return i == 2 ? T(2) * third : -third;
  }
  static T cell1(int i) {
    const T third = static_cast<T>(kTwoPi / 3.0);
    return i == 1 ? T(2) * third : -third;
  }

  // cotangents of out[3] and log J -> of phi[3] and params[P] (after run with the sigmoids)
  void backward(const T* g_out, T g_lj, const Tables<T>& tb, const Spec& sp, T* g_phi,
                T* g_params) {
    const int64_t p1 = tb.p1, modes = tb.modes;
    T gW[2] = {0, 0}, gR[2] = {0, 0}, gWn[2] = {0, 0}, gRn[2] = {0, 0};
    // su3_from_cell after the sort
    for (int i = 0; i < 3; ++i) {
      const T g = g_out[perm[i]];
      gWn[0] += g * (cell0(i) + Rn[0] * cell1(i));
      gRn[0] += g * Wn[0] * cell1(i);
    }
    // log J
    T g_ldw = g_lj, g_ldr = g_lj;
    T gX[6], gXn[6];
    for (int i = 0; i < 6; ++i) {
      const T gf = g_lj * static_cast<T>(kWeight[i]) / f[i];
      if (limit[i]) {
        (i / 2 == 1 ? g_ldr : g_ldw) += gf * f[i];
        gX[i] = gXn[i] = 0;
      } else {
        gXn[i] = gf / X[i];
        gX[i] = -gf * Xn[i] / (X[i] * X[i]);
      }
    }
    T g_gaps[6];
    const T gaps[6] = {Wn[0] * Rn[0], Wn[0] * Rn[1], Wn[0], W[0] * R[0], W[0] * R[1], W[0]};
    for (int i = 0; i < 6; ++i) {
      const T d = gaps[i] - T(0.5);
      const T sign = d > T(0) ? T(1) : (d < T(0) ? T(-1) : T(0));
      const T t = std::abs(d);
      const T g_sinc = g_lj * static_cast<T>(kWeight[6 + i]) / f[6 + i];
      const T g_comp = g_lj * static_cast<T>(kWeight[12 + i]) / f[12 + i];
      g_gaps[i] = (g_comp - g_sinc * dsinc(T(0.5) - t)) * sign;
    }
    pairs_backward(Wn, Rn, gXn, g_gaps, gWn, gRn);
    pairs_backward(W, R, gX, g_gaps + 3, gW, gR);
    // step 2 and its series b(w')
    std::fill(g_full.begin(), g_full.end(), T(0));
    T g_coef[kMaxP1];
    for (int64_t j = 0; j < p1; ++j) g_coef[j] = 0;
    step_r.backward(gRn, g_ldr, sp, gR, g_coef);
    for (int64_t m = 0; m < modes; ++m) {
      const T* row = full.data() + (modes + m) * p1;
      T* g_row = g_full.data() + (modes + m) * p1;
      T dot = 0;
      for (int64_t j = 0; j < p1; ++j) {
        g_row[j] = g_coef[j] * basis[1][m];
        dot += g_coef[j] * row[j];
      }
      const T fr = freq(m, 1);
      gWn[0] += dot * fr * std::cos(Wn[0] * fr);
    }
    // step 1 and its series a(r)
    for (int64_t j = 0; j < p1; ++j) g_coef[j] = 0;
    step_w.backward(gWn, g_ldw, sp, gW, g_coef);
    for (int64_t m = 0; m < modes; ++m) {
      const T* row = full.data() + m * p1;
      T* g_row = g_full.data() + m * p1;
      T dot = 0;
      for (int64_t j = 0; j < p1; ++j) {
        g_row[j] = g_coef[j] * basis[0][m];
        dot += g_coef[j] * row[j];
      }
      const T fr = freq(m, 0);
      gR[0] -= dot * fr * std::sin(R[0] * fr);
    }
    // the cell's pairs (the clamp of W passes its gradient: a straight-through clamp)
    const T c1 = static_cast<T>(1.0 / kTwoPi);
    T g_span = (gW[0] - gW[1]) * c1;
    T g_gap[2] = {0, 0};
    if (!small) {
      g_gap[0] = gR[0] / span;
      g_gap[1] = gR[1] / span;
      g_span -= (gR[0] * gap[0] + gR[1] * gap[1]) / (span * span);
    }
    g_gap[0] += g_span;
    g_gap[1] += g_span;
    const T g_s[3] = {-g_gap[0], g_gap[0] - g_gap[1], g_gap[1]};
    for (int i = 0; i < 3; ++i) g_phi[perm[i]] = g_s[i];
    // the coefficient table -> the free parameters
    for (int64_t j = 0; j < tb.n_params; ++j) g_params[j] = 0;
    T g_tied[3] = {0, 0, 0};
    for (int64_t j = 0; j < 2 * modes * p1; ++j) {
      const int64_t src = tb.slots[j];
      if (src < tb.n_params) {
        g_params[src] += g_full[j];
      } else {
        g_tied[src - tb.n_params] += g_full[j];
      }
    }
    for (int64_t m = 0; m < modes; ++m) {
      for (int c = 0; c < 3; ++c) g_params[tb.dk[m]] += g_tied[c] * tb.tied[3 * m + c];
    }
  }

  // `pairs` backward: the cotangents of x[6] and of the gaps (w r, w (1 - r), w) -> gw, gr
  static void pairs_backward(const T* w, const T* r, const T* gx, const T* g_gaps, T* gw,
                             T* gr) {
    gw[0] += gx[0] + gx[4] * r[1] + gx[5] * r[0];
    gw[1] += gx[1] + gx[4] + gx[5];
    gr[0] += gx[2] + gx[5] * w[0];
    gr[1] += gx[3] + gx[4] * w[0];
    gw[0] += g_gaps[0] * r[0] + g_gaps[1] * r[1] + g_gaps[2];
    gr[0] += g_gaps[0] * w[0];
    gr[1] += g_gaps[1] * w[0];
  }
};

struct Args {
  Spec sp;
  int64_t modes, p1, n_params, n;
};

Args check(const at::Tensor& phi, const at::Tensor& params, const at::Tensor& slots,
           const at::Tensor& dk, const at::Tensor& tied, int64_t bins, int64_t modes,
           double mw, double mh, double ms) {
  TORCH_CHECK(modes >= 1 && modes <= kMaxModes, "su3_spectral: modes must be in [1, ",
              kMaxModes, "], got ", modes);
  const Spec sp = make_spec(bins, 0.0, 1.0, mw, mh, ms, false, false);
  TORCH_CHECK(phi.device().is_cpu() && params.device().is_cpu() && slots.device().is_cpu() &&
                  dk.device().is_cpu() && tied.device().is_cpu(),
              "su3_spectral: CPU tensors only");
  TORCH_CHECK(phi.is_contiguous() && params.is_contiguous() && slots.is_contiguous() &&
                  dk.is_contiguous() && tied.is_contiguous(),
              "su3_spectral: contiguous tensors only");
  TORCH_CHECK(params.scalar_type() == phi.scalar_type() && tied.scalar_type() == phi.scalar_type(),
              "su3_spectral: phi, params and tied differ in dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && dk.scalar_type() == at::kLong,
              "su3_spectral: slots and dk must be int64");
  TORCH_CHECK(phi.dim() >= 1 && phi.size(-1) == 3, "su3_spectral: phi must be [..., 3]");
  TORCH_CHECK(params.dim() == phi.dim() &&
                  params.sizes().slice(0, phi.dim() - 1) == phi.sizes().slice(0, phi.dim() - 1),
              "su3_spectral: params must be [..., P] over phi's leading shape");
  const int64_t p1 = 3 * bins + 1, n_params = params.size(-1);
  TORCH_CHECK(n_params == 2 * modes * p1 - modes - 1, "su3_spectral: params.shape[-1] must be ",
              "2 modes (3 bins + 1) - modes - 1 = ", 2 * modes * p1 - modes - 1, ", got ",
              n_params);
  TORCH_CHECK(slots.dim() == 1 && slots.numel() == 2 * modes * p1,
              "su3_spectral: slots must be [2 modes (3 bins + 1)]");
  TORCH_CHECK(dk.dim() == 1 && dk.numel() == modes && tied.dim() == 2 && tied.size(0) == modes &&
                  tied.size(1) == 3,
              "su3_spectral: dk must be [modes] and tied [modes, 3]");
  const int64_t* s = slots.const_data_ptr<int64_t>();
  for (int64_t j = 0; j < slots.numel(); ++j) {
    TORCH_CHECK(s[j] >= 0 && s[j] < n_params + 3, "su3_spectral: slots entry ", s[j],
                " outside [0, ", n_params + 3, ")");
  }
  const int64_t* d = dk.const_data_ptr<int64_t>();
  for (int64_t m = 0; m < modes; ++m) {
    TORCH_CHECK(d[m] >= 0 && d[m] < n_params, "su3_spectral: dk entry ", d[m], " outside [0, ",
                n_params, ")");
  }
  return Args{sp, modes, p1, n_params, phi.numel() / 3};
}

// The checked tables as the element code reads them
template <typename T>
Tables<T> tables_of(const at::Tensor& slots, const at::Tensor& dk, const at::Tensor& tied,
                    const Args& a) {
  return Tables<T>{slots.const_data_ptr<int64_t>(), dk.const_data_ptr<int64_t>(),
                   tied.const_data_ptr<T>(), a.n_params, a.modes, a.p1};
}

// (phi', log J): phi [..., 3] eigen-angles, params [..., P] (spectral.py `n_params_su3`)
std::tuple<at::Tensor, at::Tensor> su3_spectral(
    const at::Tensor& phi, const at::Tensor& params, const at::Tensor& slots,
    const at::Tensor& dk, const at::Tensor& tied, int64_t bins, int64_t modes, double mw,
    double mh, double ms) {
  const Args a = check(phi, params, slots, dk, tied, bins, modes, mw, mh, ms);
  at::Tensor out = at::empty(phi.sizes(), phi.options());
  at::Tensor log_j = at::empty(phi.sizes().slice(0, phi.dim() - 1), phi.options());
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "su3_spectral", [&] {
    const Tables<scalar_t> tb = tables_of<scalar_t>(slots, dk, tied, a);
    const scalar_t* x = phi.const_data_ptr<scalar_t>();
    const scalar_t* p = params.const_data_ptr<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    scalar_t* lj = log_j.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.n, 256, [&](int64_t begin, int64_t end) {
      Map<scalar_t> map(a.modes, a.p1);
      for (int64_t i = begin; i < end; ++i) {
        lj[i] = map.run(x + 3 * i, p + a.n_params * i, tb, a.sp, false, y + 3 * i);
      }
    });
  });
  return {out, log_j};
}

// (g_phi, g_params) for the cotangents of (phi', log J), any strides
std::tuple<at::Tensor, at::Tensor> su3_spectral_backward(
    const at::Tensor& phi, const at::Tensor& params, const at::Tensor& slots,
    const at::Tensor& dk, const at::Tensor& tied, const at::Tensor& g_out_in,
    const at::Tensor& g_log_j_in, int64_t bins, int64_t modes, double mw, double mh,
    double ms) {
  const Args a = check(phi, params, slots, dk, tied, bins, modes, mw, mh, ms);
  const at::Tensor g_out = readable(g_out_in), g_log_j = readable(g_log_j_in);
  TORCH_CHECK(g_out.sizes() == phi.sizes() && g_out.scalar_type() == phi.scalar_type() &&
                  g_log_j.sizes() == phi.sizes().slice(0, phi.dim() - 1) &&
                  g_log_j.scalar_type() == phi.scalar_type(),
              "su3_spectral_backward: cotangents must be of the outputs' shapes and dtype");
  const int64_t out_div = cotangent_divisor(g_out), lj_div = cotangent_divisor(g_log_j);
  at::Tensor g_phi = at::empty(phi.sizes(), phi.options());
  at::Tensor g_params = at::empty(params.sizes(), params.options());
  AT_DISPATCH_FLOATING_TYPES(phi.scalar_type(), "su3_spectral_backward", [&] {
    const Tables<scalar_t> tb = tables_of<scalar_t>(slots, dk, tied, a);
    const scalar_t* x = phi.const_data_ptr<scalar_t>();
    const scalar_t* p = params.const_data_ptr<scalar_t>();
    const scalar_t* go = g_out.const_data_ptr<scalar_t>();
    const scalar_t* gl = g_log_j.const_data_ptr<scalar_t>();
    scalar_t* gx = g_phi.mutable_data_ptr<scalar_t>();
    scalar_t* gp = g_params.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, a.n, 256, [&](int64_t begin, int64_t end) {
      Map<scalar_t> map(a.modes, a.p1);
      scalar_t y[3], g[3];
      for (int64_t i = begin; i < end; ++i) {
        const scalar_t* pi = p + a.n_params * i;
        map.run(x + 3 * i, pi, tb, a.sp, true, y);
        for (int c = 0; c < 3; ++c) g[c] = go[(3 * i + c) / out_div];
        map.backward(g, gl[i / lj_div], tb, a.sp, gx + 3 * i, gp + a.n_params * i);
      }
    });
  });
  return {g_phi, g_params};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hpcflow, m) {
  m.def("su3_spectral(Tensor phi, Tensor params, Tensor slots, Tensor dk, Tensor tied, int bins, "
        "int modes, float mw, float mh, float ms) -> (Tensor, Tensor)");
  m.def("su3_spectral_backward(Tensor phi, Tensor params, Tensor slots, Tensor dk, Tensor tied, "
        "Tensor g_out, Tensor g_log_j, int bins, int modes, float mw, float mh, float ms) -> "
        "(Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hpcflow, CPU, m) {
  m.impl("su3_spectral", &su3_spectral);
  m.impl("su3_spectral_backward", &su3_spectral_backward);
}
