"""Exact 2D results (hpcflow/lattice/exact.py) against independent routes.

Every check compares with something computed another way: published numbers (docs/physics.md),
closed forms, Weyl-formula integrals over eigen-angles, direct integrals over plaquette angles
with the constraint ``sum_x phi_x = 2 pi Q``, finite differences of ``log Z``, and limits.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import integrate, special

from hpcflow.lattice.exact import (
    exact_log_z,
    exact_plaquette,
    exact_topological_susceptibility,
    su2_2d_log_z,
    su2_2d_plaquette,
    sun_2d_plaquette_infinite_volume,
    sun_log_z_one_plaquette,
    u1_2d_log_z,
    u1_2d_plaquette,
    u1_2d_topological_susceptibility,
    wilson_loop_2d_infinite_volume,
)

TWO_PI = 2.0 * math.pi


def derivative(f, x: float, h: float) -> float:
    """Fourth-order central difference (error ~h^4): only here, never in the module."""
    return (f(x - 2 * h) - 8 * f(x - h) + 8 * f(x + h) - f(x + 2 * h)) / (12 * h)


def chi_infinite_volume(beta: float) -> float:
    """``int (phi/2pi)^2 e^{beta cos phi} / int e^{beta cos phi}`` by adaptive quadrature."""

    def w(p):
        return math.exp(beta * (math.cos(p) - 1.0))

    opts = dict(epsabs=0.0, epsrel=1e-13, limit=200)
    num = integrate.quad(lambda p: (p / TWO_PI) ** 2 * w(p), 0.0, math.pi, **opts)[0]
    return num / integrate.quad(w, 0.0, math.pi, **opts)[0]


# ----------------------------------------------------------------------------- known values


def test_u1_reference_values_L8_beta2():
    # docs/physics.md, "Exact results"
    assert u1_2d_log_z(2.0, 64) == pytest.approx(52.7355867, abs=5e-8)
    assert u1_2d_plaquette(2.0, 64) == pytest.approx(0.6977746580, abs=5e-11)
    assert special.iv(1, 2.0) / special.iv(0, 2.0) == pytest.approx(0.6977746580, abs=5e-11)
    # flat d theta measure: add 2 V log(2 pi) (stated in docs/physics.md); just the bookkeeping
    assert u1_2d_log_z(2.0, 64) + 128 * math.log(TWO_PI) > 52.7355867


@pytest.mark.parametrize("beta", [0.3, 2.0, 10.0, 20.0])
@pytest.mark.parametrize("volume", [4096, 16384])
def test_large_volume_limits_u1_su2(beta, volume):
    """Finite-V formulas reach I_1/I_0 (U(1)) and I_2/I_1 (SU(2)) once (I_1/I_0)^V is tiny."""
    assert u1_2d_plaquette(beta, volume) == pytest.approx(
        special.ive(1, beta) / special.ive(0, beta), rel=1e-13
    )
    assert su2_2d_plaquette(beta, volume) == pytest.approx(
        special.ive(2, beta) / special.ive(1, beta), rel=1e-13
    )


@pytest.mark.parametrize("beta", [1e-3, 0.7, 3.0, 25.0])
def test_one_plaquette_closed_forms(beta):
    # SU(2): z = 2 I_1(beta)/beta; SU(1) is trivial: z = e^beta, <P> = 1
    assert sun_log_z_one_plaquette(2, beta) == pytest.approx(
        math.log(2.0 * special.ive(1, beta) / beta) + beta, rel=1e-13, abs=1e-14
    )
    assert sun_log_z_one_plaquette(1, beta) == pytest.approx(beta, rel=1e-13)
    assert sun_2d_plaquette_infinite_volume(1, beta) == pytest.approx(1.0, rel=1e-12)
    # the q-sum over SU(2) determinants and the k-sum over SU(2) irreps agree at large V
    assert sun_2d_plaquette_infinite_volume(2, beta) == pytest.approx(
        su2_2d_plaquette(beta, 64 * 64), rel=1e-12
    )


# ----------------------------------------------------------------------------- Weyl integrals


def weyl_one_plaquette(n: int, beta: float, points: int) -> tuple[float, float]:
    """``log z`` and ``<(1/N) Re tr U>`` of SU(N) by the Weyl integration formula.

    ``int dU f = (1/N!) int prod_{i<N} dtheta_i/2pi |Delta(e^{i theta})|^2 f``,
    ``theta_N = -sum_{i<N} theta_i``. The integrand is smooth and periodic, so the uniform grid
    (rectangle rule) converges exponentially in ``points``.
    """
    theta = TWO_PI * np.arange(points) / points - math.pi
    grids = np.meshgrid(*([theta] * (n - 1)), indexing="ij")
    angles = [g.ravel() for g in grids]
    angles.append(-np.sum(angles, axis=0))
    a = np.stack(angles)
    z = np.exp(1j * a)
    haar = np.ones(a.shape[1])
    for i in range(n):
        for j in range(i + 1, n):
            haar *= np.abs(z[i] - z[j]) ** 2
    re_tr = np.cos(a).sum(axis=0)
    w = haar * np.exp((beta / n) * (re_tr - n))  # scaled by e^{-beta}
    log_z = beta + math.log(w.mean() / math.factorial(n))
    return log_z, float(np.sum(w * re_tr / n) / np.sum(w))


@pytest.mark.parametrize(
    "n, beta, points",
    [(2, 0.4, 128), (2, 4.0, 128), (2, 30.0, 256), (3, 0.4, 96), (3, 3.0, 96), (3, 12.0, 128),
     (3, 40.0, 192), (4, 2.0, 40), (4, 8.0, 48)],
)
def test_sun_one_plaquette_against_weyl_integral(n, beta, points):
    log_z, plaq = weyl_one_plaquette(n, beta, points)
    assert sun_log_z_one_plaquette(n, beta) == pytest.approx(log_z, rel=1e-12, abs=1e-12)
    assert sun_2d_plaquette_infinite_volume(n, beta) == pytest.approx(plaq, rel=1e-11, abs=1e-13)


def test_weyl_grid_is_converged():
    """The grids above are fine enough: doubling them changes nothing at 1e-13."""
    for n, beta, points in [(3, 40.0, 192), (4, 8.0, 48)]:
        coarse = weyl_one_plaquette(n, beta, points)
        fine = weyl_one_plaquette(n, beta, points + points // 2)
        assert coarse == pytest.approx(fine, rel=1e-13, abs=1e-14)


# ----------------------------------------------------------------------------- analytic derivatives


@pytest.mark.parametrize("beta", [0.5, 2.5, 9.0])
def test_plaquettes_are_derivatives_of_log_z(beta):
    h = 1e-3 * beta
    for volume in (1, 3, 16, 4096):
        fd = derivative(lambda b, v=volume: u1_2d_log_z(b, v), beta, h) / volume
        assert u1_2d_plaquette(beta, volume) == pytest.approx(fd, rel=1e-9)
        fd = derivative(lambda b, v=volume: su2_2d_log_z(b, v), beta, h) / volume
        assert su2_2d_plaquette(beta, volume) == pytest.approx(fd, rel=1e-9)
    for n in (2, 3, 4):
        fd = derivative(lambda b, n=n: sun_log_z_one_plaquette(n, b), beta, h)
        assert sun_2d_plaquette_infinite_volume(n, beta) == pytest.approx(fd, rel=1e-9)


# ----------------------------------------------------------------------------- U(1), tiny volumes


@pytest.mark.parametrize("beta", [0.6, 1.7, 3.5])
def test_u1_volumes_one_and_two(beta):
    # V = 1: the single plaquette U1 U2 U1^-1 U2^-1 is the identity: Z = e^beta, <cos> = 1, Q = 0
    assert u1_2d_log_z(beta, 1) == pytest.approx(beta, rel=1e-14)
    assert u1_2d_plaquette(beta, 1) == pytest.approx(1.0, rel=1e-13)
    assert u1_2d_topological_susceptibility(beta, 1) == 0.0
    # V = 2: phi_2 = -phi_1, so Z = I_0(2 beta), <cos> = I_1(2 beta)/I_0(2 beta), Q = 0
    assert u1_2d_log_z(beta, 2) == pytest.approx(math.log(special.iv(0, 2 * beta)), rel=1e-13)
    assert u1_2d_plaquette(beta, 2) == pytest.approx(
        special.iv(1, 2 * beta) / special.iv(0, 2 * beta), rel=1e-13
    )
    assert u1_2d_topological_susceptibility(beta, 2) == 0.0


@pytest.mark.parametrize("beta", [0.6, 1.7, 3.5])
def test_u1_three_plaquettes_by_direct_integration(beta):
    """V = 3: phi_3 = 2 pi Q - phi_1 - phi_2 in (-pi, pi], so with a = phi_1, b = phi_2

    Z = (2pi)^-2 int da db exp(beta (cos a + cos b + cos(a + b))), Q = +-1 iff |a + b| > pi.
    """
    m = 160  # periodic smooth integrand: the rectangle rule converges exponentially
    a = TWO_PI * np.arange(m) / m - math.pi
    aa, bb = np.meshgrid(a, a, indexing="ij")
    s = np.cos(aa) + np.cos(bb) + np.cos(aa + bb)
    w = np.exp(beta * (s - 3.0))
    assert u1_2d_log_z(beta, 3) == pytest.approx(3 * beta + math.log(w.mean()), rel=1e-12)
    assert u1_2d_plaquette(beta, 3) == pytest.approx(np.sum(w * s / 3) / np.sum(w), rel=1e-12)

    def f(b, a):
        return math.exp(beta * (math.cos(a) + math.cos(b) + math.cos(a + b) - 3.0))

    # Q != 0 region, a > 0 half (the a < 0 half is its mirror image)
    p_q1 = integrate.dblquad(f, 0.0, math.pi, lambda a: math.pi - a, math.pi,
                             epsabs=0.0, epsrel=1e-12)[0]
    q2 = 2.0 * p_q1 / (TWO_PI**2 * w.mean())
    assert u1_2d_topological_susceptibility(beta, 3) == pytest.approx(q2 / 3, rel=1e-9)


@pytest.mark.parametrize("beta", [0.8, 2.0])
def test_u1_four_plaquettes_by_convolution(beta):
    """V = 4 (L = 2): the sum S of four plaquette angles must be 2 pi Q with Q in {-1, 0, 1};

    Z = 2pi sum_Q g4(2 pi Q), g4 = g*g*g*g on the real line, g = e^{beta cos}/2pi on (-pi, pi].
    """
    opts = dict(epsabs=0.0, epsrel=1e-12, limit=200)

    def g(p):
        return math.exp(beta * (math.cos(p) - 1.0)) / TWO_PI

    def g2(s):
        lo, hi = max(-math.pi, s - math.pi), min(math.pi, s + math.pi)
        return integrate.quad(lambda t: g(t) * g(s - t), lo, hi, **opts)[0] if hi > lo else 0.0

    g4_0 = 2.0 * integrate.quad(lambda u: g2(u) ** 2, 0.0, TWO_PI, **opts)[0]
    g4_1 = integrate.quad(lambda u: g2(u) * g2(TWO_PI - u), 0.0, TWO_PI, **opts)[0]
    z = TWO_PI * (g4_0 + 2.0 * g4_1)
    assert u1_2d_log_z(beta, 4) == pytest.approx(4 * beta + math.log(z), rel=1e-10)
    q2 = 2.0 * g4_1 / (g4_0 + 2.0 * g4_1)
    assert u1_2d_topological_susceptibility(beta, 4) == pytest.approx(q2 / 4, rel=1e-8)


def test_su2_single_plaquette_lattice_by_direct_integration():
    """V = 1 (1x1 torus): P = U1 U2 U1^-1 U2^-1. With U2 ~ diag(e^{i t}, e^{-i t}) (Weyl density
    (2/pi) sin^2 t) and U1 Haar, (1/2) tr P = cos^2 t + sin^2 t * n, n uniform on [-1, 1]."""
    for beta in (0.7, 3.0):

        def w(n, t, beta=beta):
            u = math.cos(t) ** 2 + math.sin(t) ** 2 * n
            return (2 / math.pi) * math.sin(t) ** 2 * 0.5 * math.exp(beta * (u - 1.0))

        def wu(n, t, beta=beta):
            return w(n, t) * (math.cos(t) ** 2 + math.sin(t) ** 2 * n)

        z = integrate.dblquad(w, 0.0, math.pi, -1.0, 1.0, epsabs=0.0, epsrel=1e-12)[0]
        num = integrate.dblquad(wu, 0.0, math.pi, -1.0, 1.0, epsabs=0.0, epsrel=1e-12)[0]
        assert su2_2d_log_z(beta, 1) == pytest.approx(beta + math.log(z), rel=1e-11)
        assert su2_2d_plaquette(beta, 1) == pytest.approx(num / z, rel=1e-10)


# ----------------------------------------------------------------------------- chi_t limits


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0, 20.0])
def test_u1_susceptibility_infinite_volume_limit(beta):
    assert u1_2d_topological_susceptibility(beta, 128 * 128) == pytest.approx(
        chi_infinite_volume(beta), rel=1e-11
    )


def test_u1_susceptibility_grows_with_volume_and_falls_with_beta():
    beta = 2.0
    chi = [u1_2d_topological_susceptibility(beta, v) for v in (3, 4, 5, 8, 16, 32, 64, 4096)]
    assert all(np.diff(chi) > 0)
    assert chi[-1] <= chi_infinite_volume(beta) * (1 + 1e-12)
    betas = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0]
    chi_b = [u1_2d_topological_susceptibility(b, 4096) for b in betas]
    assert all(np.diff(chi_b) < 0)
    # frozen topology: at V = 16, beta = 20 tunnelling costs ~2 pi^2 beta/V ~ 25
    assert 0.0 <= u1_2d_topological_susceptibility(20.0, 16) < 1e-8


# ----------------------------------------------------------------------------- stability


BETAS = [0.05, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0]


@pytest.mark.parametrize("volume", [1, 64, 4096, 128 * 128, 10**6])
def test_finite_and_monotone_at_large_volume_and_beta(volume):
    for log_z, plaq in ((u1_2d_log_z, u1_2d_plaquette), (su2_2d_log_z, su2_2d_plaquette)):
        lz = np.array([log_z(b, volume) for b in BETAS])
        p = np.array([plaq(b, volume) for b in BETAS])
        assert np.all(np.isfinite(lz)) and np.all(np.isfinite(p))
        assert np.all((p > 0) & (p <= 1 + 1e-13))
        # d log Z / d beta = V <P> > 0 and d<P>/d beta = V Var(P) >= 0
        assert np.all(np.diff(lz) > 0)
        assert np.all(np.diff(p) >= -1e-14) if volume == 1 else np.all(np.diff(p) > 0)
    chi = np.array([u1_2d_topological_susceptibility(b, volume) for b in BETAS])
    assert np.all(np.isfinite(chi)) and np.all(chi >= 0)


@pytest.mark.parametrize("n", [3, 4])
def test_sun_finite_and_monotone_at_large_beta(n):
    betas = BETAS + [100.0, 200.0]
    p = np.array([sun_2d_plaquette_infinite_volume(n, b) for b in betas])
    lz = np.array([sun_log_z_one_plaquette(n, b) for b in betas])
    assert np.all(np.isfinite(p)) and np.all(np.isfinite(lz))
    assert np.all(np.diff(p) > 0) and np.all(np.diff(lz) > 0)
    # weak coupling: 1 - <P> -> (N^2 - 1)/(2 beta) (Gaussian fluctuations of N^2 - 1 modes)
    assert 1 - p[-1] == pytest.approx((n * n - 1) / (2 * 200.0), rel=0.05)


def test_sun_refuses_ill_conditioned_determinants():
    with pytest.raises(ValueError, match="too large"):
        sun_2d_plaquette_infinite_volume(8, 1000.0)


# ----------------------------------------------------------------------------- dispatchers


def test_dispatchers_2d():
    assert exact_plaquette("U1", [8, 8], 2.0) == u1_2d_plaquette(2.0, 64)
    assert exact_plaquette("SU2", (4, 6), 1.3) == su2_2d_plaquette(1.3, 24)
    assert exact_plaquette("SU3", [8, 8], 5.0) == sun_2d_plaquette_infinite_volume(3, 5.0)
    assert exact_log_z("U1", [8, 8], 2.0) == u1_2d_log_z(2.0, 64)
    assert exact_log_z("SU2", [8, 8], 2.0) == su2_2d_log_z(2.0, 64)
    assert exact_log_z("SU3", [8, 8], 2.0) is None
    assert exact_topological_susceptibility("U1", [6, 6], 1.5) == (
        u1_2d_topological_susceptibility(1.5, 36)
    )
    assert exact_topological_susceptibility("SU2", [6, 6], 1.5) is None


@pytest.mark.parametrize("shape", [[4, 4, 4], (4, 4, 4, 4), [8, 8, 8, 16]])
@pytest.mark.parametrize("group", ["U1", "SU2", "SU3"])
def test_dispatchers_return_none_beyond_2d(group, shape):
    assert exact_plaquette(group, shape, 2.0) is None
    assert exact_log_z(group, shape, 2.0) is None
    assert exact_topological_susceptibility(group, shape, 2.0) is None


def test_wilson_loop_is_plaquette_to_the_area():
    p = u1_2d_plaquette(2.0, 4096)
    assert wilson_loop_2d_infinite_volume(p, 6) == pytest.approx(p**6, rel=1e-15)
    assert wilson_loop_2d_infinite_volume(p, 0) == 1.0


@pytest.mark.parametrize(
    "call",
    [
        lambda: u1_2d_log_z(0.0, 4),
        lambda: u1_2d_plaquette(-1.0, 4),
        lambda: u1_2d_plaquette(float("nan"), 4),
        lambda: u1_2d_topological_susceptibility(float("inf"), 4),
        lambda: su2_2d_log_z(1.0, 0),
        lambda: su2_2d_plaquette(1.0, 2.5),
        lambda: u1_2d_log_z(1.0, True),
        lambda: sun_log_z_one_plaquette(0, 1.0),
        lambda: sun_2d_plaquette_infinite_volume(3, 0.0),
        lambda: wilson_loop_2d_infinite_volume(1.5, 2),
        lambda: wilson_loop_2d_infinite_volume(0.5, -1),
        lambda: exact_plaquette("SU1", [4, 4], 1.0),
        lambda: exact_plaquette("O3", [4, 4], 1.0),
        lambda: exact_plaquette("U1", [4, 0], 1.0),
        lambda: exact_plaquette("U1", [], 1.0),
        lambda: exact_log_z("U1", [4, 4], -2.0),
        lambda: exact_topological_susceptibility("U1", [4, 4, 4], 0.0),
    ],
)
def test_invalid_input_raises(call):
    with pytest.raises(ValueError):
        call()
