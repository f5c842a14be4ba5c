"""Exact results for 2D lattice gauge theory: the truth oracles
(docs/physics.md, "Exact results").

Conventions: periodic 2D lattice ``L_0 x L_1`` with ``V = L_0 L_1`` plaquettes, product of
normalized Haar measures, Wilson action ``S = -(beta/Nc) sum_P Re tr P`` (U(1):
``-beta sum_P cos theta_P``). On the torus every plaquette sum is a character expansion
(Wiese; Rusakov; Gross-Witten for one plaquette):

    Z = sum_r a_r(beta)^V,      a_r = (1/d_r) int dU exp(-S_P(U)) chi_r(U)^*,

with ``d_r^(2 - 2 genus) = 1`` on the torus. U(1): ``a_n = I_n(beta)``; SU(2):
``a_k = 2 I_k(beta)/beta`` (``k = 2j + 1``); SU(N), one plaquette (the infinite-volume limit):
``z = sum_q det[I_{q+i-j}(beta/N)]``. For U(1) in 2D see also arXiv:2101.08176.

Numerics (float64 only, numpy/scipy only): every sum is taken in log space with exponentially
scaled Bessel functions (``scipy.special.ive``), terms are added until they fall below
``1e-17`` of the leading one (hard cap on the number of terms), and derivatives in beta are
analytic (Bessel recurrences, Jacobi's formula), never finite differences. Invalid input raises
``ValueError``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import special

from .groups import get_group

__all__ = [
    "u1_2d_log_z",
    "u1_2d_plaquette",
    "u1_2d_topological_susceptibility",
    "su2_2d_log_z",
    "su2_2d_plaquette",
    "sun_log_z_one_plaquette",
    "sun_2d_plaquette_infinite_volume",
    "wilson_loop_2d_infinite_volume",
    "exact_plaquette",
    "exact_log_z",
    "exact_topological_susceptibility",
]

_LOG_REL_TOL = math.log(1e-17)  # stop a series once a term is below 1e-17 of the largest
_MAX_TERMS = 1_000_000  # hard cap for the vectorised Bessel sums
_MAX_SLOW_TERMS = 100_000  # hard cap where each term costs a quadrature or a determinant
_BLOCK = 64
_MAX_COND_EPS = 1e-7  # SU(N): refuse when cond(Bessel matrix) * eps exceeds this
_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------- validation


def _check_beta(beta) -> float:
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}") from None
    if not (math.isfinite(b) and b > 0.0):
        raise ValueError(f"beta must be a finite number > 0, got {beta!r}")
    return b


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


# ----------------------------------------------------------------------------- series helpers


def _adaptive_log_terms(
    log_term: Callable[[np.ndarray], np.ndarray], start: int, max_terms: int = _MAX_TERMS
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``k = start, start + 1, ...`` and ``log t_k`` until ``t_k < 1e-17 max_j t_j``.

    The series used here decrease monotonically in ``k`` (Bessel functions of growing order), so
    the first term below the threshold ends the sum; the omitted tail then decays faster than
    geometrically. ``log_term`` is evaluated on blocks of indices (vectorised).
    """
    ks: list[np.ndarray] = []
    logs: list[np.ndarray] = []
    running_max = -math.inf
    k0 = start
    while k0 - start < max_terms:
        k = np.arange(k0, min(k0 + _BLOCK, start + max_terms))
        with np.errstate(divide="ignore"):
            lt = np.asarray(log_term(k), dtype=np.float64)
        lt = np.where(np.isnan(lt), -math.inf, lt)
        # running maximum including the current block, element by element
        cum_max = np.maximum.accumulate(np.maximum(lt, running_max))
        below = lt < cum_max + _LOG_REL_TOL
        if below.any():
            stop = int(np.argmax(below))
            ks.append(k[:stop])
            logs.append(lt[:stop])
            break
        ks.append(k)
        logs.append(lt)
        running_max = float(cum_max[-1])
        k0 += _BLOCK
    k_all = np.concatenate(ks)
    log_all = np.concatenate(logs)
    if k_all.size == 0 or not np.isfinite(log_all[0]):
        raise FloatingPointError("leading term of an exact series is not finite")
    return k_all, log_all


def _log_ive(order, x: float) -> np.ndarray:
    """``log(I_order(x) e^{-x})`` for ``x > 0`` (``-inf`` where the scaled Bessel underflows)."""
    with np.errstate(divide="ignore"):
        return np.log(special.ive(order, x))


def _symmetric_weights(k: np.ndarray) -> np.ndarray:
    """Multiplicity 1 for ``k = 0`` and 2 for ``k > 0``: the series are even in ``k``."""
    return np.where(k == 0, 1.0, 2.0)


# ----------------------------------------------------------------------------- U(1) and SU(2)


def _bessel_power_sum(beta: float, volume: int, start: int, symmetric: bool):
    """``sum_k m_k ive(k, beta)^V`` over ``k >= start``.

    ``symmetric``: the full sum runs over ``k in Z`` and is even in ``k`` (U(1)), so ``m_k = 1``
    for ``k = 0`` and 2 otherwise; else ``m_k = 1`` (SU(2), ``k >= 1``).

    Returns ``(k, log_a, log_w, log_rest)``: ``log_a = log ive(k, beta)``, normalized weights
    ``w_k`` (multiplicity included), and ``log_rest = log sum_k m_k (a_k/a_start)^V`` so that the
    log of the sum is ``V log_a[0] + log_rest``. Keeping the O(1) part ``log_rest`` separate
    spares the leading weight the cancellation of two numbers of size ``V |log a|``.
    """
    k, _ = _adaptive_log_terms(lambda j: volume * _log_ive(j, beta), start)
    log_a = _log_ive(k, beta)
    log_rel = volume * (log_a - log_a[0])
    mult = _symmetric_weights(k) if symmetric else np.ones(k.shape)
    log_rest = float(special.logsumexp(log_rel, b=mult))
    return k, log_a, log_rel + np.log(mult) - log_rest, log_rest


# ----------------------------------------------------------------------------- U(1)


def u1_2d_log_z(beta: float, volume: int) -> float:
    """``log Z`` of 2D U(1) Wilson gauge theory on a periodic lattice with ``V`` plaquettes.

    ``Z = sum_{n in Z} I_n(beta)^V`` with the normalized Haar measure
    (docs/physics.md, "Exact results"; arXiv:2101.08176). With the flat ``d theta`` measure
    add ``2 V log(2 pi)``.
    Example (docs/physics.md): ``L = 8, beta = 2 -> 52.7355867``.
    """
    beta = _check_beta(beta)
    volume = _check_int("volume", volume, 1)
    _, log_a, _, log_rest = _bessel_power_sum(beta, volume, 0, symmetric=True)
    return volume * (beta + float(log_a[0])) + log_rest


def u1_2d_plaquette(beta: float, volume: int) -> float:
    """``<cos theta_P>`` of 2D U(1) at finite volume ``V``.

    ``<cos theta_P> = (1/V) d ln Z/d beta = sum_n I_n' I_n^(V-1) / sum_n I_n^V`` with
    ``I_n' = (I_{n-1} + I_{n+1})/2 = I_{n+1} + (n/beta) I_n`` (``n >= 0``; docs/physics.md). The
    second form has no cancellation. Tends to ``I_1(beta)/I_0(beta)`` as ``V -> inf``.
    """
    beta = _check_beta(beta)
    volume = _check_int("volume", volume, 1)
    n, _, log_w, _ = _bessel_power_sum(beta, volume, 0, symmetric=True)
    ratio = special.ive(n + 1, beta) / special.ive(n, beta) + n / beta
    return float(np.sum(np.exp(log_w) * ratio))


@functools.lru_cache(maxsize=16)
def _leggauss(nodes: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(nodes)


def _u1_theta_rule(beta: float, n_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes ``phi`` on ``[0, phi_c]`` and weights including ``e^{beta(cos-1)}/pi``.

    ``phi_c = min(pi, pi sqrt(40/beta))`` drops the range where
    ``e^{beta (cos phi - 1)} <= e^{-2 beta phi^2/pi^2} < e^{-80}``. The integrands used with this
    rule are entire, so it converges exponentially; the node count covers ``cos(n phi)`` up to
    ``n_max``.
    """
    cut = min(math.pi, math.pi * math.sqrt(40.0 / beta))
    x, w = _leggauss(200 + int(math.ceil(2.0 * n_max * cut)))
    phi = 0.5 * cut * (x + 1.0)
    return phi, 0.5 * cut * w * np.exp(beta * (np.cos(phi) - 1.0)) / math.pi


def _u1_theta_moments(n: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(a_n, b_n) e^{-beta}`` for integers ``n >= 0``, where (integrands even in ``phi``)

    ``a_n = (1/2pi) int_{-pi}^{pi} (phi/2pi) sin(n phi) e^{beta cos phi} dphi``,
    ``b_n = (1/2pi) int_{-pi}^{pi} (phi/2pi)^2 cos(n phi) e^{beta cos phi} dphi``.

    1D Gauss-Legendre quadrature (``_u1_theta_rule``). QUADPACK's oscillatory rule
    (``scipy.integrate.quad(weight="cos")``) was tried first and raised round-off warnings for
    the high-``n`` terms at the accuracy needed here; this rule agrees with 40-digit quadrature
    to ~1e-16 of ``b_0`` for ``beta`` in [0.1, 1000] and ``n <= 150``.
    """
    n = np.asarray(n)
    phi, weight = _u1_theta_rule(beta, int(np.max(n, initial=0)))
    t = phi / _TWO_PI
    a = np.empty(n.shape)
    b = np.empty(n.shape)
    for lo in range(0, n.size, 4096):  # bounded memory: [4096, nodes] at a time
        arg = n[lo : lo + 4096].astype(np.float64)[:, None] * phi[None, :]
        a[lo : lo + 4096] = np.sin(arg) @ (t * weight)
        b[lo : lo + 4096] = np.cos(arg) @ (t * t * weight)
    return a, b


def u1_2d_topological_susceptibility(beta: float, volume: int) -> float:
    """``chi_t = <Q^2>/V`` of 2D U(1) at finite volume, ``Q = (1/2pi) sum_x arg P_01(x)``.

    Derivation (character expansion with a theta term, cf. arXiv:2101.08176): the plaquette
    angles ``phi_x = arg P_01(x)`` in ``(-pi, pi]`` are independent Haar angles constrained by
    ``sum_x phi_x = 2 pi Q``, i.e. weighted by ``sum_n exp(i n sum_x phi_x)``. Hence

        Z(theta) = <exp(i theta Q)> Z = sum_n f_n(theta)^V,
        f_n(theta) = (1/2pi) int_{-pi}^{pi} dphi exp(beta cos phi + i (n + theta/2pi) phi),

    ``f_n(0) = I_n``, ``f_n'(0) = -a_n``, ``f_n''(0) = -b_n`` (see ``_u1_theta_moments``), and

        <Q^2> = -Z''(0)/Z(0) = sum_n [V I_n^(V-1) b_n - V (V-1) I_n^(V-2) a_n^2] / sum_n I_n^V.

    ``a_n, b_n`` come from 1D quadrature. For ``V <= 2`` the answer is exactly 0 (``V = 1``: the
    single plaquette is the identity; ``V = 2``: ``phi_2 = -phi_1``), which the Fourier sum above
    reaches only slowly (``a_n, b_n ~ 1/n``), so it is returned directly. As ``V -> inf``,
    ``chi_t -> b_0/I_0 = int (phi/2pi)^2 e^{beta cos phi} / int e^{beta cos phi}``.

    At small ``V`` and large ``beta``, ``chi_t`` is exponentially small (tunnelling costs
    ``~ 2 pi^2 beta / V``) and comes out as a difference of O(1/beta) terms: its absolute error is
    ~1e-16 ``chi_inf``, its relative error can be large; negative round-off is clipped to 0.
    """
    beta = _check_beta(beta)
    volume = _check_int("volume", volume, 1)
    if volume <= 2:
        return 0.0
    _, log_a, _, log_rest = _bessel_power_sum(beta, volume, 0, symmetric=True)
    log_a0 = float(log_a[0])
    phi, weight = _u1_theta_rule(beta, 0)
    b0 = float(np.sum((phi / _TWO_PI) ** 2 * weight))
    a_max = float(np.sum((phi / _TWO_PI) * weight))  # >= |a_n| for every n
    c = (volume - 1) * a_max * a_max
    log_target = _LOG_REL_TOL + math.log(b0) - log_a0
    # log Z e^{-V beta} = V log I_0 + log_rest; with r_n = I_n/I_0 term n of chi_t is
    # (I_n b_n - (V-1) a_n^2) r_n^(V-2) e^{-log_rest} / I_0^2

    def log_bound(k):
        # |b_n| <= b_0, |a_n| <= a_max: term n is at most this (all scaled by e^{-beta})
        log_i = _log_ive(k, beta)
        return ((volume - 2) * (log_i - log_a0) + np.log(np.exp(log_i) * b0 + c)
                - log_rest - 2.0 * log_a0)

    n_stop = _MAX_SLOW_TERMS
    for start in range(1, _MAX_SLOW_TERMS, _BLOCK):
        k = np.arange(start, min(start + _BLOCK, _MAX_SLOW_TERMS))
        with np.errstate(divide="ignore"):
            small = log_bound(k) < log_target
        if small.any():
            n_stop = int(k[np.argmax(small)])
            break
    n = np.arange(n_stop)
    i_n = special.ive(n, beta)
    a_n, b_n = _u1_theta_moments(n, beta)
    with np.errstate(divide="ignore"):
        scale = np.exp((volume - 2) * (np.log(i_n) - log_a0) - log_rest - 2.0 * log_a0)
    terms = _symmetric_weights(n) * scale * (i_n * b_n - (volume - 1) * a_n * a_n)
    # <Q^2> >= 0: a negative sum is round-off of an exponentially small result
    return max(float(np.sum(terms)), 0.0)


# ----------------------------------------------------------------------------- SU(2)


def su2_2d_log_z(beta: float, volume: int) -> float:
    """``log Z`` of 2D SU(2) Wilson gauge theory, ``V`` plaquettes, normalized Haar measure.

    ``Z = sum_{k>=1} (2 I_k(beta)/beta)^V`` (docs/physics.md): ``2 I_k/beta`` is the character
    coefficient of the ``k``-dimensional irrep of ``exp((beta/2) tr U)`` divided by ``k``.
    """
    beta = _check_beta(beta)
    volume = _check_int("volume", volume, 1)
    _, log_a, _, log_rest = _bessel_power_sum(beta, volume, 1, symmetric=False)
    return volume * (beta + math.log(2.0 / beta) + float(log_a[0])) + log_rest


def su2_2d_plaquette(beta: float, volume: int) -> float:
    """``<(1/2) tr P>`` of 2D SU(2) at finite volume: ``(1/V) d ln Z / d beta``.

    ``d/dbeta log(2 I_k/beta) = I_k'/I_k - 1/beta = I_{k+1}/I_k + (k - 1)/beta`` (recurrence
    ``I_k' = I_{k+1} + (k/beta) I_k``; no cancellation). Tends to ``I_2/I_1`` as ``V -> inf``.
    """
    beta = _check_beta(beta)
    volume = _check_int("volume", volume, 1)
    k, _, log_w, _ = _bessel_power_sum(beta, volume, 1, symmetric=False)
    ratio = special.ive(k + 1, beta) / special.ive(k, beta) + (k - 1) / beta
    return float(np.sum(np.exp(log_w) * ratio))


# ----------------------------------------------------------------------------- SU(N), one plaquette


def _sun_matrices(n: int, q: np.ndarray, x: float, shift: int = 0) -> np.ndarray:
    """Scaled Bessel matrices ``ive(q + i - j + shift, x)``: ``[len(q), n, n]``."""
    idx = np.arange(n)
    orders = q[:, None, None] + (idx[:, None] - idx[None, :])[None] + shift
    return special.ive(orders, x)


def _sun_series(n: int, beta: float):
    """Terms ``det[I_{q+i-j}(beta/N)] e^{-beta}`` for ``q >= 0`` (even in ``q``: transpose).

    The determinants are Toeplitz minors of the totally positive sequence ``I_m(x)``
    (generating function ``exp(x (t + 1/t)/2)``), hence positive; a non-positive value can only
    be round-off of a negligible term and ends the series.
    """
    x = beta / n
    # For large beta/N the Bessel matrix approaches a smooth Gaussian kernel and becomes
    # ill-conditioned; compared with 60-digit arithmetic the error of log z is ~cond * eps / 20.
    cond = float(np.linalg.cond(_sun_matrices(n, np.zeros(1, dtype=int), x)[0]))
    if not cond * np.finfo(np.float64).eps <= _MAX_COND_EPS:
        raise ValueError(
            f"beta = {beta} is too large for the SU({n}) Bessel-determinant formula in float64 "
            f"(condition number {cond:.1e}); it is accurate to <~1e-9 for SU(3) up to beta ~ 1e4, "
            f"SU(4) up to ~1e3, SU(5) up to ~300, SU(8) up to ~100"
        )

    def log_det(q):
        sign, logabs = np.linalg.slogdet(_sun_matrices(n, q, x))
        return np.where(sign > 0, logabs, -math.inf)

    q, log_t = _adaptive_log_terms(log_det, 0, _MAX_SLOW_TERMS)
    mult = _symmetric_weights(q)
    log_s = float(special.logsumexp(log_t, b=mult))
    return q, log_t + np.log(mult) - log_s, log_s


def sun_log_z_one_plaquette(n: int, beta: float) -> float:
    """``log z(beta)``, ``z = int_{SU(N)} dU exp((beta/N) Re tr U)``, normalized Haar measure.

    ``z = sum_{q in Z} det[I_{q+i-j}(beta/N)]_{i,j=1..N}`` (docs/physics.md): the U(N) one-plaquette
    integral of Gross-Witten/Bars, ``det[I_{i-j}]``, with ``(det U)^q`` inserted to restrict to
    SU(N). Computed as ``beta + log sum_q det[ive_{q+i-j}(beta/N)]``. ``N = 1`` gives ``beta``.
    """
    n = _check_int("n", n, 1)
    beta = _check_beta(beta)
    _, _, log_s = _sun_series(n, beta)
    return beta + log_s


def sun_2d_plaquette_infinite_volume(n: int, beta: float) -> float:
    """``<(1/N) Re tr P>`` of 2D SU(N) in infinite volume: ``d ln z / d beta``.

    Jacobi's formula: ``d det M_q/dx = det M_q tr(M_q^{-1} M_q')`` with ``x = beta/N``,
    ``(M_q)_{ij} = I_{q+i-j}(x)``, ``(M_q')_{ij} = (I_{q+i-j-1} + I_{q+i-j+1})/2``, so
    ``<(1/N) Re tr P> = (1/N) sum_q w_q tr(M_q^{-1} M_q')`` with ``w_q = det M_q / z``.
    The ``e^x`` scale of ``ive`` cancels in the trace. docs/physics.md: finite-size corrections are
    negligible for ``V >= 64``.
    """
    n = _check_int("n", n, 1)
    beta = _check_beta(beta)
    x = beta / n
    q, log_w, _ = _sun_series(n, beta)
    m = _sun_matrices(n, q, x)
    dm = 0.5 * (_sun_matrices(n, q, x, -1) + _sun_matrices(n, q, x, +1))
    traces = np.trace(np.linalg.solve(m, dm), axis1=-2, axis2=-1)
    return float(np.sum(np.exp(log_w) * traces) / n)


def wilson_loop_2d_infinite_volume(plaquette: float, area: int) -> float:
    """``<W(A)> = <P>^A`` in 2D infinite volume, ``A`` = area in plaquettes (docs/physics.md).

    ``plaquette`` is the normalized plaquette ``<(1/Nc) Re tr P>``, in ``[-1, 1]``.
    """
    try:
        p = float(plaquette)
    except (TypeError, ValueError):
        raise ValueError(f"plaquette must be a number in [-1, 1], got {plaquette!r}") from None
    if not (math.isfinite(p) and -1.0 <= p <= 1.0):
        raise ValueError(f"plaquette must be a number in [-1, 1], got {plaquette!r}")
    area = _check_int("area", area, 0)
    return p**area


# ----------------------------------------------------------------------------- dispatchers


def _parse_group(group: str) -> int:
    """``Nc`` of a group name (``ValueError`` for anything :func:`get_group` refuses)."""
    return get_group(str(group)).nc


def _volume_2d(shape: Sequence[int]) -> int | None:
    """Number of plaquettes ``L_0 L_1`` of a 2D lattice shape; ``None`` for other dimensions."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ValueError(f"shape must be a list of lattice extents, got {shape!r}") from None
    if not dims:
        raise ValueError("shape must name at least one lattice extent, got an empty shape")
    for d in dims:
        _check_int("every lattice extent in shape", d, 1)
    if len(dims) != 2:
        return None
    return int(dims[0]) * int(dims[1])


def exact_plaquette(group: str, shape: Sequence[int], beta: float) -> float | None:
    """Exact ``<(1/Nc) Re tr P>`` where one exists, else ``None``.

    2D: ``"U1"`` and ``"SU2"`` at the finite volume ``V = L_0 L_1``; ``"SU<N>"`` with ``N >= 3``
    the infinite-volume value (docs/physics.md: accurate for ``V >= 64``; an approximation below).
    3D/4D: ``None`` (no exact answer; compare with a Markov chain instead).
    """
    nc = _parse_group(group)
    beta = _check_beta(beta)
    volume = _volume_2d(shape)
    if volume is None:
        return None
    if nc == 1:
        return u1_2d_plaquette(beta, volume)
    if nc == 2:
        return su2_2d_plaquette(beta, volume)
    return sun_2d_plaquette_infinite_volume(nc, beta)


def exact_log_z(group: str, shape: Sequence[int], beta: float) -> float | None:
    """Exact ``log Z`` (normalized Haar measure) for U(1) and SU(2) in 2D, else ``None``."""
    nc = _parse_group(group)
    beta = _check_beta(beta)
    volume = _volume_2d(shape)
    if volume is None or nc > 2:
        return None
    if nc == 1:
        return u1_2d_log_z(beta, volume)
    return su2_2d_log_z(beta, volume)


def exact_topological_susceptibility(
    group: str, shape: Sequence[int], beta: float
) -> float | None:
    """Exact ``chi_t = <Q^2>/V`` for U(1) in 2D at finite volume, else ``None``."""
    nc = _parse_group(group)
    beta = _check_beta(beta)
    volume = _volume_2d(shape)
    if volume is None or nc != 1:
        return None
    return u1_2d_topological_susceptibility(beta, volume)
