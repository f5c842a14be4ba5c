// Fused rational-quadratic splines (circular with bias, and on an interval), forward and
// backward, one pass over the elements on the CPU.
//
// The same maps as hpcflow/flows/splines.py, per element (rqs.h). The backward recomputes the
// element's spline from its input and parameters instead of saving intermediates.
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

#include "rqs.h"

namespace {

using hpcflow_kernels::Element;
using hpcflow_kernels::Spec;
using hpcflow_kernels::cotangent_divisor;
using hpcflow_kernels::make_spec;
using hpcflow_kernels::readable;
using hpcflow_kernels::wrap;

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
      } else {
        y = e.value();
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
      e.param_vjp(probi, gk, sp, gpi);
      if (sp.circular) gpi[3 * k] = sp.inverse ? -gin : go;
    }
  });
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
