// Closed-form eigen-decomposition of SU(3) matrices, one pass over the matrices on the CPU: the
// algorithm of hpcflow/lattice/eigen.py `su3_eig` (forward only; the backward is the written-out
// one of hpcflow/flows/spectral.py `_UnitaryEig`, which needs only the outputs), per matrix:
//   1. the rotation e^{-ia}, a in {0, pi/3, 2 pi/3}, of the largest |det(z_a - W)|, and the
//      traceless Hermitian Q of e^{-ia} W scaled to tr Q^2 = 6 (times 6^(-1/3));
//   2. its best-separated eigenvalue from mu^3 - 3 mu - 2 c = 0, c = tr(q^3), and that
//      eigenvalue's eigenvector as the longest cross product of two rows of q - mu 1;
//   3. an orthonormal basis of the complement and the 2x2 problem in it, solved by a rotation
//      by the half angle;
//   4. the angles from the Rayleigh quotients v_k^dagger W v_k.
// Why: as tensor operations ~70 small operations on [M, 3, 3] tensors per call, ~6 ms for
// M = 4096 on one thread against ~2.4 here (issue 19).
//
// Registered as torch.ops.hpcflow.su3_eig (CPU; complex64, complex128).

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/complex.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace {

constexpr double kPi = 3.141592653589793238462643383279502884;

template <typename T>
using Cx = c10::complex<T>;

template <typename T>
inline T abs2(Cx<T> z) {
  return z.real() * z.real() + z.imag() * z.imag();
}

// a x b without conjugation (torch.linalg.cross)
template <typename T>
inline void cross(const Cx<T>* a, const Cx<T>* b, Cx<T>* out) {
  out[0] = a[1] * b[2] - a[2] * b[1];
  out[1] = a[2] * b[0] - a[0] * b[2];
  out[2] = a[0] * b[1] - a[1] * b[0];
}

template <typename T>
inline T norm3(const Cx<T>* a) {
  return std::sqrt(abs2(a[0]) + abs2(a[1]) + abs2(a[2]));
}

// The closed form's constants (eigen.py `_constants`), computed in double once per call:
// z_a = -e^{-2ia} and the phases e^{-ia}, a = 0, pi/3, 2 pi/3, and the scalings of q and mu.
template <typename T>
struct Constants {
  T z_re[3], z_im[3];
  Cx<T> phase[3];
  T q_scale, mu_scale, floor;

  Constants() {
    for (int a = 0; a < 3; ++a) {
      const double ang = a * kPi / 3.0;
      z_re[a] = static_cast<T>(-std::cos(-2.0 * ang));
      z_im[a] = static_cast<T>(-std::sin(-2.0 * ang));
      phase[a] = Cx<T>(static_cast<T>(std::cos(-ang)), static_cast<T>(std::sin(-ang)));
    }
    q_scale = static_cast<T>(std::pow(6.0, -1.0 / 6.0));
    mu_scale = static_cast<T>(2.0 * std::pow(6.0, -1.0 / 3.0));
    floor = std::sqrt(std::numeric_limits<T>::min());
  }
};

// x: one matrix [3, 3] row-major -> phi[3], v[3, 3] (columns: eigenvectors)
template <typename T>
void eig_one(const Cx<T>* x, const Constants<T>& cn, T* phi, Cx<T>* v) {
  using C = Cx<T>;
  // 1. the rotation: Re(t conj z_a) - 1; the largest |.| (first on ties)
  const C t = x[0] + x[4] + x[8];
  int best_a = 0;
  T best_char = -1;
  for (int a = 0; a < 3; ++a) {
    const T ch = std::abs(T(-1) + t.real() * cn.z_re[a] + t.imag() * cn.z_im[a]);
    if (ch > best_char) {
      best_char = ch;
      best_a = a;
    }
  }
  C k[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) k[3 * i + j] = x[3 * i + j] * cn.phase[best_a];
  C kk[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) kk[3 * i + j] = k[3 * i + j] - std::conj(k[3 * j + i]);  // 2i H
  const C mean = (kk[0] + kk[4] + kk[8]) / T(3);
  kk[0] -= mean;
  kk[4] -= mean;
  kk[8] -= mean;  // 2i Q
  T n2 = 0;
  for (int i = 0; i < 9; ++i) n2 += abs2(kk[i]);
  const T norm = std::max(std::sqrt(n2), cn.floor);
  const C scale(T(0), norm * cn.q_scale);
  C q[9];
  for (int i = 0; i < 9; ++i) q[i] = kk[i] / scale;  // Q 6^(-1/3), tr Q^2 = 6
  // 2. the isolated eigenvalue: tr(q^3) = Re sum_ij (q^2)_ij conj(q_ij)
  T cubic = 0;
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      C s = q[3 * i] * q[j];
      s += q[3 * i + 1] * q[3 + j];
      s += q[3 * i + 2] * q[6 + j];
      cubic += s.real() * q[3 * i + j].real() + s.imag() * q[3 * i + j].imag();
    }
  const T mu = std::copysign(
      std::cos(std::acos(std::min(std::abs(cubic), T(1))) / T(3)) * cn.mu_scale, cubic);
  C a[9];
  for (int i = 0; i < 9; ++i) a[i] = q[i];
  a[0] -= mu;
  a[4] -= mu;
  a[8] -= mu;
  // its eigenvector: the longest of the rows' cross products r_k x r_{k+1} (first on ties)
  C g[9];
  for (int r = 0; r < 3; ++r) cross(a + 3 * r, a + 3 * ((r + 1) % 3), g + 3 * r);
  int best = 0;
  T longest = norm3(g);
  for (int r = 1; r < 3; ++r) {
    const T nr = norm3(g + 3 * r);
    if (nr > longest) {
      longest = nr;
      best = r;
    }
  }
  C vv[3];
  for (int j = 0; j < 3; ++j) vv[j] = g[3 * best + j] / longest;
  // 3. the complement: conj(u_1) = v x e_m (m: the smallest |v_m|, first on ties), normalized;
  // conj(u_2) = v x u_1
  int m = 0;
  T smallest = std::abs(vv[0]);  // |v_j| as torch's abs (a tie broken alike)
  for (int j = 1; j < 3; ++j) {
    const T aj = std::abs(vv[j]);
    if (aj < smallest) {
      smallest = aj;
      m = j;
    }
  }
  C e[3] = {C(0), C(0), C(0)};
  e[m] = C(1);
  C u1c[3], u2c[3], u1[3];
  cross(vv, e, u1c);
  const T n1 = norm3(u1c);
  for (int j = 0; j < 3; ++j) {
    u1c[j] /= n1;
    u1[j] = std::conj(u1c[j]);
  }
  cross(vv, u1, u2c);
  // B = U^dagger q U with U^dagger rows (u1c, u2c): B_rs = sum_ij uc_ri q_ij conj(uc_sj)
  C qu[3][2];  // q U
  for (int i = 0; i < 3; ++i) {
    C s0 = q[3 * i] * std::conj(u1c[0]), s1 = q[3 * i] * std::conj(u2c[0]);
    for (int j = 1; j < 3; ++j) {
      s0 += q[3 * i + j] * std::conj(u1c[j]);
      s1 += q[3 * i + j] * std::conj(u2c[j]);
    }
    qu[i][0] = s0;
    qu[i][1] = s1;
  }
  C b[2][2];
  const C* ucr[2] = {u1c, u2c};
  for (int r = 0; r < 2; ++r)
    for (int s = 0; s < 2; ++s) {
      C acc = ucr[r][0] * qu[0][s];
      acc += ucr[r][1] * qu[1][s];
      acc += ucr[r][2] * qu[2][s];
      b[r][s] = acc;
    }
  const T d = b[0][0].real() * T(0.5) + b[1][1].real() * T(-0.5);
  const T b_re = b[0][1].real(), b_im = -b[0][1].imag();
  const T half = std::atan2(std::hypot(b_re, b_im), d) * T(0.5);
  const T cs = std::cos(half);
  const C sn = c10::polar(std::sin(half), std::atan2(b_im, b_re));
  // V^T rows: (cos u_1 + sin u_2, -conj(sin) u_1 + cos u_2, v), u_i = conj(u_ic)
  C vt[9];
  for (int j = 0; j < 3; ++j) {
    const C u1j = std::conj(u1c[j]), u2j = std::conj(u2c[j]);
    vt[j] = cs * u1j + sn * u2j;
    vt[3 + j] = -std::conj(sn) * u1j + cs * u2j;
    vt[6 + j] = vv[j];
  }
  // 4. phi_k = arg(sum_i conj(vt_ki) (vt x^T)_ki)
  for (int kr = 0; kr < 3; ++kr) {
    C r(0);
    for (int i = 0; i < 3; ++i) {
      C xv = vt[3 * kr] * x[3 * i];
      xv += vt[3 * kr + 1] * x[3 * i + 1];
      xv += vt[3 * kr + 2] * x[3 * i + 2];
      r += std::conj(vt[3 * kr + i]) * xv;
    }
    phi[kr] = std::atan2(r.imag(), r.real());
  }
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v[3 * i + j] = vt[3 * j + i];
}

// (phi [..., 3] real, V [..., 3, 3] complex) of w [..., 3, 3] complex
std::tuple<at::Tensor, at::Tensor> su3_eig(const at::Tensor& w) {
  TORCH_CHECK(w.device().is_cpu() && w.is_contiguous() && w.is_complex() && w.dim() >= 2 &&
                  w.size(-1) == 3 && w.size(-2) == 3,
              "su3_eig: w must be a contiguous complex CPU tensor [..., 3, 3]");
  std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end() - 1);
  at::Tensor phi = at::empty(shape, w.options().dtype(c10::toRealValueType(w.scalar_type())));
  at::Tensor v = at::empty(w.sizes(), w.options());
  const int64_t n = w.numel() / 9;
  AT_DISPATCH_COMPLEX_TYPES(w.scalar_type(), "su3_eig", [&] {
    using T = typename scalar_t::value_type;
    const scalar_t* x = w.const_data_ptr<scalar_t>();
    T* p = phi.mutable_data_ptr<T>();
    scalar_t* out = v.mutable_data_ptr<scalar_t>();
    const Constants<T> cn;
    at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) eig_one<T>(x + 9 * i, cn, p + 3 * i, out + 9 * i);
    });
  });
  return {phi, v};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(hpcflow, m) {
  m.def("su3_eig(Tensor w) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(hpcflow, CPU, m) {
  m.impl("su3_eig", &su3_eig);
}
