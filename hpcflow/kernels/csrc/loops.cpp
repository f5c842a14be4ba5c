// Fused loop products: the ordered products of many lattice paths read from the links through a
// gather table, forward and backward, in one pass on the CPU.
//
// The same map as hpcflow/lattice/loops.py `table_product` of the extended links
// `[U, U^dagger, 1]` (`Algebra.extend`), read from the links themselves: a table entry t < M
// reads U[t], M <= t < 2M reads U[t - M]^dagger, t = 2M is the unit element (padding), where
// M = n_links. Matrices (`[B, M, N, N]` complex, N <= 4): the path's ordered product; angles
// (`[B, M]` real, U(1)): the signed sum.
//
// Why: the tensor operations extend the links (a copy of twice their size), gather
// `len x rows` matrices, multiply step by step through batched 3x3 `bmm`, and the backward
// scatters into a zero-filled copy of the extension: ~70% of an SU(3) 4^4 training step, and
// ~20 operator calls per loop family forward and backward (issue 19). Here: one call each way.
//
// With `trace`, the kernel returns tr W per path (`[B, rows]`, complex) and takes its cotangent
// g: G = g 1 inside the backward, no `[B, rows, N, N]` tensor either way (the frozen loops of a
// context network are read by their traces only).
//
// Backward of W = M_1 ... M_L with cotangent G (torch's convention for complex tensors, as for
// `matmul`: grad A = G B^H, grad B = A^H G): grad M_s = (M_1 ... M_{s-1})^H G (M_{s+1} ... M_L)^H;
// a dagger step M_s = U^H gives grad U = (grad M_s)^H. The backward recomputes the products
// from the links (nothing saved but the links) and runs one batch element per task, so that
// the accumulation into the links' gradient needs no atomics. The cotangent is read with its
// strides as given (autograd hands over transposed or expanded views; torch's dispatcher
// resolves a lazy conjugation or negation before a custom operator runs).
//
// Registered as torch.ops.hpcflow.loop_product / loop_product_backward (CPU; float32, float64,
// complex64, complex128).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kMaxSteps = 64;

// ---------------------------------------------------------------------------------- matrices
template <typename C, int N>
struct Mat {
  C a[N * N];
};

template <typename C, int N>
inline Mat<C, N> identity() {
  Mat<C, N> m;
  for (int i = 0; i < N * N; ++i) m.a[i] = C(0);
  for (int i = 0; i < N; ++i) m.a[i * N + i] = C(1);
  return m;
}

template <typename C, int N>
inline Mat<C, N> load(const C* p, bool dagger) {
  Mat<C, N> m;
  if (dagger) {
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) m.a[i * N + j] = std::conj(p[j * N + i]);
  } else {
    for (int i = 0; i < N * N; ++i) m.a[i] = p[i];
  }
  return m;
}

template <typename C, int N>
inline Mat<C, N> adjoint(const Mat<C, N>& x, C scale) {  // scale x^H
  Mat<C, N> r;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) r.a[i * N + j] = scale * std::conj(x.a[j * N + i]);
  return r;
}

template <typename C, int N>
inline Mat<C, N> mul(const Mat<C, N>& x, const Mat<C, N>& y) {  // x y
  Mat<C, N> r;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      C s = x.a[i * N] * y.a[j];
      for (int k = 1; k < N; ++k) s += x.a[i * N + k] * y.a[k * N + j];
      r.a[i * N + j] = s;
    }
  return r;
}

template <typename C, int N>
inline Mat<C, N> mul_h_left(const Mat<C, N>& x, const Mat<C, N>& y) {  // x^H y
  Mat<C, N> r;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      C s = std::conj(x.a[i]) * y.a[j];
      for (int k = 1; k < N; ++k) s += std::conj(x.a[k * N + i]) * y.a[k * N + j];
      r.a[i * N + j] = s;
    }
  return r;
}

template <typename C, int N>
inline Mat<C, N> mul_h_right(const Mat<C, N>& x, const Mat<C, N>& y) {  // x y^H
  Mat<C, N> r;
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) {
      C s = x.a[i * N] * std::conj(y.a[j * N]);
      for (int k = 1; k < N; ++k) s += x.a[i * N + k] * std::conj(y.a[j * N + k]);
      r.a[i * N + j] = s;
    }
  return r;
}

struct Table {
  const int64_t* data;
  int64_t rows, steps, s_row, s_step, n_links;
  int64_t at(int64_t row, int64_t step) const { return data[row * s_row + step * s_step]; }
};

// A cotangent read in place, any strides.
template <typename T>
struct Grad {
  const T* data;
  int64_t s0, s1, s2, s3;
  T at(int64_t b, int64_t row, int64_t i = 0, int64_t j = 0) const {
    return data[b * s0 + row * s1 + i * s2 + j * s3];
  }
};

template <typename C, int N>
void matrix_forward(const C* links, const Table& t, C* out, int64_t batch, bool trace) {
  const int64_t m = t.n_links, e = N * N;
  at::parallel_for(0, batch * t.rows, 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / t.rows, row = i % t.rows;
      const C* u = links + b * m * e;
      Mat<C, N> acc = identity<C, N>();
      bool first = true;
      for (int64_t s = 0; s < t.steps; ++s) {
        const int64_t j = t.at(row, s);
        if (j == 2 * m) continue;
        const bool dagger = j >= m;
        const Mat<C, N> x = load<C, N>(u + (dagger ? j - m : j) * e, dagger);
        acc = first ? x : mul(acc, x);
        first = false;
      }
      if (trace) {
        C tr = acc.a[0];
        for (int k = 1; k < N; ++k) tr += acc.a[k * N + k];
        out[i] = tr;
      } else {
        for (int k = 0; k < e; ++k) out[i * e + k] = acc.a[k];
      }
    }
  });
}

template <typename C, int N>
void matrix_backward(const C* links, const Table& t, const Grad<C>& grad, C* g_links,
                     int64_t batch, bool trace) {
  const int64_t m = t.n_links, e = N * N;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    Mat<C, N> step[kMaxSteps], prefix[kMaxSteps];
    int64_t index[kMaxSteps];
    for (int64_t b = begin; b < end; ++b) {
      const C* u = links + b * m * e;
      C* gu = g_links + b * m * e;
      for (int64_t row = 0; row < t.rows; ++row) {
        // the cotangent first: a row with a zero cotangent (a frozen loop masked out of the
        // context) contributes nothing and is skipped
        Mat<C, N> g = identity<C, N>();  // the cotangent (not read in trace mode)
        const C gt = trace ? grad.at(b, row) : C(0);
        bool zero = trace ? gt == C(0) : true;
        if (!trace) {
          for (int r = 0; r < N; ++r)
            for (int c = 0; c < N; ++c) {
              g.a[r * N + c] = grad.at(b, row, r, c);
              zero = zero && g.a[r * N + c] == C(0);
            }
        }
        if (zero) continue;
        int64_t n = 0;  // the path's steps, padding left out
        for (int64_t s = 0; s < t.steps; ++s) {
          const int64_t j = t.at(row, s);
          if (j == 2 * m) continue;
          index[n] = j;
          step[n] = load<C, N>(u + (j >= m ? j - m : j) * e, j >= m);
          ++n;
        }
        if (n == 0) continue;
        prefix[0] = step[0];  // P_s = M_1 ... M_s, s < n - 1 (the last one is not needed)
        for (int64_t s = 1; s + 1 < n; ++s) prefix[s] = mul(prefix[s - 1], step[s]);
        Mat<C, N> suffix;  // M_{s+1} ... M_L (for s < n - 1)
        for (int64_t s = n - 1; s >= 0; --s) {
          // G_s = P_{s-1}^H G S^H, P_{s-1} = M_1 ... M_{s-1}, S = M_{s+1} ... M_L; the unit
          // matrices at the ends are skipped, and for a trace G = g 1: G_s = g (S P_{s-1})^H
          Mat<C, N> gs;
          if (trace) {
            if (s > 0 && s < n - 1) {
              gs = adjoint(mul(suffix, prefix[s - 1]), gt);
            } else if (s > 0) {
              gs = adjoint(prefix[s - 1], gt);
            } else if (s < n - 1) {
              gs = adjoint(suffix, gt);
            } else {
              gs = identity<C, N>();
              for (int k = 0; k < N; ++k) gs.a[k * N + k] = gt;
            }
          } else {
            gs = s < n - 1 ? mul_h_right(g, suffix) : g;
            if (s > 0) gs = mul_h_left(prefix[s - 1], gs);
          }
          const int64_t j = index[s];
          if (j < m) {
            C* dst = gu + j * e;
            for (int k = 0; k < e; ++k) dst[k] += gs.a[k];
          } else {
            C* dst = gu + (j - m) * e;
            for (int r = 0; r < N; ++r)
              for (int c = 0; c < N; ++c) dst[r * N + c] += std::conj(gs.a[c * N + r]);
          }
          if (s > 0) suffix = s == n - 1 ? step[s] : mul(step[s], suffix);
        }
      }
    }
  });
}

// ------------------------------------------------------------------------------------ angles
template <typename T>
void angle_forward(const T* links, const Table& t, T* out, int64_t batch) {
  const int64_t m = t.n_links;
  at::parallel_for(0, batch * t.rows, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / t.rows, row = i % t.rows;
      const T* u = links + b * m;
      T acc = 0;
      for (int64_t s = 0; s < t.steps; ++s) {
        const int64_t j = t.at(row, s);
        if (j < m) acc += u[j];
        else if (j < 2 * m) acc -= u[j - m];
      }
      out[i] = acc;
    }
  });
}

template <typename T>
void angle_backward(const Table& t, const Grad<T>& grad, T* g_links, int64_t batch) {
  const int64_t m = t.n_links;
  at::parallel_for(0, batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* gu = g_links + b * m;
      for (int64_t row = 0; row < t.rows; ++row) {
        const T g = grad.at(b, row);
        if (g == T(0)) continue;
        for (int64_t s = 0; s < t.steps; ++s) {
          const int64_t j = t.at(row, s);
          if (j < m) gu[j] += g;
          else if (j < 2 * m) gu[j - m] -= g;
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------- checks
Table check_table(const at::Tensor& links, const at::Tensor& table, int64_t n_links) {
  TORCH_CHECK(table.dim() == 2 && table.scalar_type() == at::kLong && table.device().is_cpu(),
              "loop_product: table must be a CPU int64 [rows, steps]");
  TORCH_CHECK(table.size(1) <= kMaxSteps, "loop_product: at most 64 steps per path");
  TORCH_CHECK(links.device().is_cpu() && links.is_contiguous() && links.dim() >= 2 &&
                  links.size(1) == n_links,
              "loop_product: links must be contiguous CPU [B, n_links, *E]");
  const Table t{table.const_data_ptr<int64_t>(), table.size(0), table.size(1), table.stride(0),
                table.stride(1), n_links};
  for (int64_t row = 0; row < t.rows; ++row)  // a plain pass: no operator calls
    for (int64_t s = 0; s < t.steps; ++s) {
      const int64_t j = t.at(row, s);
      TORCH_CHECK(j >= 0 && j <= 2 * n_links,
                  "loop_product: table entries must lie in [0, 2 n_links]");
    }
  return t;
}

bool is_matrix(const at::Tensor& links) {
  if (links.dim() == 2) {
    TORCH_CHECK(!links.is_complex(), "loop_product: angles [B, n_links] must be real");
    return false;
  }
  TORCH_CHECK(links.dim() == 4 && links.size(2) == links.size(3) && links.size(2) >= 1 &&
                  links.size(2) <= 4 && links.is_complex(),
              "loop_product: matrices must be complex [B, n_links, N, N] with N <= 4");
  return true;
}

template <typename F>
void by_size(int64_t n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    default: f(std::integral_constant<int, 4>{}); break;
  }
}

template <typename T>
Grad<T> read_grad(const at::Tensor& grad) {
  std::vector<int64_t> st(grad.strides().begin(), grad.strides().end());
  st.resize(4, 0);
  return Grad<T>{grad.const_data_ptr<T>(), st[0], st[1], st[2], st[3]};
}

at::Tensor loop_product(const at::Tensor& links, const at::Tensor& table, int64_t n_links,
                        bool trace) {
  const Table t = check_table(links, table, n_links);
  const int64_t batch = links.size(0);
  if (!is_matrix(links)) {
    TORCH_CHECK(!trace, "loop_product: trace is for matrices");
    at::Tensor out = at::empty({batch, t.rows}, links.options());
    AT_DISPATCH_FLOATING_TYPES(links.scalar_type(), "loop_product", [&] {
      angle_forward<scalar_t>(links.const_data_ptr<scalar_t>(), t,
                              out.mutable_data_ptr<scalar_t>(), batch);
    });
    return out;
  }
  const int64_t n = links.size(2);
  at::Tensor out = trace ? at::empty({batch, t.rows}, links.options())
                         : at::empty({batch, t.rows, n, n}, links.options());
  AT_DISPATCH_COMPLEX_TYPES(links.scalar_type(), "loop_product", [&] {
    by_size(n, [&](auto size) {
      matrix_forward<scalar_t, decltype(size)::value>(
          links.const_data_ptr<scalar_t>(), t, out.mutable_data_ptr<scalar_t>(), batch, trace);
    });
  });
  return out;
}

at::Tensor loop_product_backward(const at::Tensor& grad, const at::Tensor& links,
                                 const at::Tensor& table, int64_t n_links, bool trace) {
  const Table t = check_table(links, table, n_links);
  const int64_t batch = links.size(0);
  const bool matrix = is_matrix(links);
  const int64_t dims = matrix && !trace ? 4 : 2;
  TORCH_CHECK(grad.scalar_type() == links.scalar_type() && grad.dim() == dims &&
                  grad.size(0) == batch && grad.size(1) == t.rows &&
                  (dims == 2 || (grad.size(2) == links.size(2) && grad.size(3) == links.size(3))),
              "loop_product_backward: grad must be the forward's shape and dtype");
  at::Tensor g_links = at::zeros(links.sizes(), links.options());
  if (!matrix) {
    TORCH_CHECK(!trace, "loop_product: trace is for matrices");
    AT_DISPATCH_FLOATING_TYPES(links.scalar_type(), "loop_product_backward", [&] {
      angle_backward<scalar_t>(t, read_grad<scalar_t>(grad),
                               g_links.mutable_data_ptr<scalar_t>(), batch);
    });
    return g_links;
  }
  AT_DISPATCH_COMPLEX_TYPES(links.scalar_type(), "loop_product_backward", [&] {
    by_size(links.size(2), [&](auto size) {
      matrix_backward<scalar_t, decltype(size)::value>(
          links.const_data_ptr<scalar_t>(), t, read_grad<scalar_t>(grad),
          g_links.mutable_data_ptr<scalar_t>(), batch, trace);
    });
  });
  return g_links;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hpcflow, m) {
  m.def("loop_product(Tensor links, Tensor table, int n_links, bool trace) -> Tensor");
  m.def("loop_product_backward(Tensor grad, Tensor links, Tensor table, int n_links, "
        "bool trace) -> Tensor");
}

TORCH_LIBRARY_IMPL(hpcflow, CPU, m) {
  m.impl("loop_product", &loop_product);
  m.impl("loop_product_backward", &loop_product_backward);
}
