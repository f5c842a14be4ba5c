// Depthwise periodic 1D convolution along one lattice axis, the middle factor of the CP
// (canonical polyadic) convolutions of hpcflow/nn/factorized.py, in one pass on the CPU.
//
// h: [B, R, *L] viewed as [B, R, P, L_axis, Q] (P, Q: the extents before and after the axis),
// kernel: [R, k] (odd k, c = k / 2):
//   out[b, r, p, n, q] = sum_j kernel[r, j] h[b, r, p, (n + j - c) mod L, q]
// (with `flip`, kernel[r, k - 1 - j]: the input's gradient, without a flipped copy)
//   kernel_grad(g, h)[r, j] = sum_{b, p, n, q} g[b, r, p, n, q] h[b, r, p, (n + j - c) mod L, q]
// The input's gradient is the same convolution with the flipped kernel, and every derivative of
// either map is one of the two again (hpcflow/nn/factorized.py `_FusedDepthwise`), so the
// tensor path's double backward is kept.
//
// Why: as tensor operations each shift is two narrowed multiply-adds, ~20 operator calls a
// forward and ~50 a backward per axis; ~40% of the operator calls of an SU(3) 4^4 flow with
// factorized convolutions (issue 19). Here: one call forward, two backward.
//
// Registered as torch.ops.hpcflow.depthwise_periodic / depthwise_periodic_kernel_grad (CPU;
// float32, float64; the kernel's gradient accumulates in double).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace {

struct Layout {
  int64_t batch, rank, pre, len, post;
};

Layout check(const at::Tensor& h, const at::Tensor& kernel, int64_t axis, int64_t k) {
  TORCH_CHECK(h.device().is_cpu() && h.is_contiguous() && h.dim() >= 3,
              "depthwise_periodic: h must be a contiguous CPU [B, R, *L]");
  TORCH_CHECK(axis >= 0 && axis < h.dim() - 2, "depthwise_periodic: axis out of range");
  TORCH_CHECK(k >= 1 && k % 2 == 1, "depthwise_periodic: the kernel size must be odd");
  if (kernel.defined()) {
    TORCH_CHECK(kernel.is_contiguous() && kernel.dim() == 2 && kernel.size(0) == h.size(1) &&
                    kernel.scalar_type() == h.scalar_type(),
                "depthwise_periodic: kernel must be a contiguous [R, k] of h's dtype");
  }
  Layout l{h.size(0), h.size(1), 1, h.size(2 + axis), 1};
  TORCH_CHECK(l.len > 0, "depthwise_periodic: the lattice extent along the axis must be > 0");
  for (int64_t d = 2; d < 2 + axis; ++d) l.pre *= h.size(d);
  for (int64_t d = 3 + axis; d < h.dim(); ++d) l.post *= h.size(d);
  return l;
}

// index[n * k + j] = (n + j - c) mod L, in [0, L): the source row of tap j at position n
std::vector<int64_t> taps(int64_t k, int64_t len) {
  std::vector<int64_t> index(len * k);
  for (int64_t n = 0; n < len; ++n)
    for (int64_t j = 0; j < k; ++j) index[n * k + j] = (((n + j - k / 2) % len) + len) % len;
  return index;
}

// One task per (b, r): the kernel row is read once and no index is divided per line. Lines
// along the last axis (post = 1) are summed tap by tap in registers; otherwise each tap adds
// a row of `post` contiguous values.
template <typename T>
void conv_kernel(const T* h, const T* kernel, T* out, const Layout& l, int64_t k, bool flip) {
  const std::vector<int64_t> index = taps(k, l.len);
  const int64_t* ix = index.data();
  const int64_t plane = l.len * l.post, block = l.pre * plane;
  at::parallel_for(0, l.batch * l.rank, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> wk(k);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = i % l.rank;
      for (int64_t j = 0; j < k; ++j) wk[j] = kernel[r * k + (flip ? k - 1 - j : j)];
      for (int64_t p = 0; p < l.pre; ++p) {
        const T* src = h + i * block + p * plane;
        T* dst = out + i * block + p * plane;
        if (l.post == 1) {
          for (int64_t n = 0; n < l.len; ++n) {
            T s = T(0);
            for (int64_t j = 0; j < k; ++j) s += wk[j] * src[ix[n * k + j]];
            dst[n] = s;
          }
          continue;
        }
        for (int64_t n = 0; n < l.len; ++n) {
          T* o = dst + n * l.post;
          for (int64_t q = 0; q < l.post; ++q) o[q] = T(0);
          for (int64_t j = 0; j < k; ++j) {
            const T* x = src + ix[n * k + j] * l.post;
            const T wj = wk[j];
            for (int64_t q = 0; q < l.post; ++q) o[q] += wj * x[q];
          }
        }
      }
    }
  });
}

// One task per r (the sums over b, p, n, q run in a fixed order: the same result for any
// number of threads), accumulated in double; along the last axis (post = 1) the k taps are k
// independent sums over the lines.
template <typename T>
void kernel_grad_kernel(const T* g, const T* h, T* out, const Layout& l, int64_t k) {
  const std::vector<int64_t> index = taps(k, l.len);
  const int64_t* ix = index.data();
  const int64_t plane = l.len * l.post;
  at::parallel_for(0, l.rank, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> acc(k);
    for (int64_t r = begin; r < end; ++r) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t b = 0; b < l.batch; ++b)
        for (int64_t p = 0; p < l.pre; ++p) {
          const int64_t i = (b * l.rank + r) * l.pre + p;
          const T* gi = g + i * plane;
          const T* hi = h + i * plane;
          if (l.post == 1) {
            for (int64_t n = 0; n < l.len; ++n) {
              const double gn = static_cast<double>(gi[n]);
              for (int64_t j = 0; j < k; ++j) acc[j] += gn * hi[ix[n * k + j]];
            }
            continue;
          }
          for (int64_t j = 0; j < k; ++j) {
            double s = 0.0;
            for (int64_t n = 0; n < l.len; ++n) {
              const T* a = gi + n * l.post;
              const T* x = hi + ix[n * k + j] * l.post;
              for (int64_t q = 0; q < l.post; ++q) s += static_cast<double>(a[q]) * x[q];
            }
            acc[j] += s;
          }
        }
      for (int64_t j = 0; j < k; ++j) out[r * k + j] = static_cast<T>(acc[j]);
    }
  });
}

at::Tensor depthwise_periodic(const at::Tensor& h, const at::Tensor& kernel, int64_t axis,
                              bool flip) {
  const int64_t k = kernel.size(-1);
  const Layout l = check(h, kernel, axis, k);
  at::Tensor out = at::empty(h.sizes(), h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "depthwise_periodic", [&] {
    conv_kernel<scalar_t>(h.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(),
                          out.mutable_data_ptr<scalar_t>(), l, k, flip);
  });
  return out;
}

at::Tensor depthwise_periodic_kernel_grad(const at::Tensor& g, const at::Tensor& h, int64_t k,
                                          int64_t axis) {
  const Layout l = check(h, at::Tensor(), axis, k);
  TORCH_CHECK(g.is_contiguous() && g.sizes() == h.sizes() && g.scalar_type() == h.scalar_type(),
              "depthwise_periodic_kernel_grad: g must be contiguous, of h's shape and dtype");
  at::Tensor out = at::empty({l.rank, k}, h.options());
  AT_DISPATCH_FLOATING_TYPES(h.scalar_type(), "depthwise_periodic_kernel_grad", [&] {
    kernel_grad_kernel<scalar_t>(g.const_data_ptr<scalar_t>(), h.const_data_ptr<scalar_t>(),
                                 out.mutable_data_ptr<scalar_t>(), l, k);
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hpcflow, m) {
  m.def("depthwise_periodic(Tensor h, Tensor kernel, int axis, bool flip) -> Tensor");
  m.def("depthwise_periodic_kernel_grad(Tensor g, Tensor h, int k, int axis) -> Tensor");
}

TORCH_LIBRARY_IMPL(hpcflow, CPU, m) {
  m.impl("depthwise_periodic", &depthwise_periodic);
  m.impl("depthwise_periodic_kernel_grad", &depthwise_periodic_kernel_grad);
}
