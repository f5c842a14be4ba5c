"""SU(N) spectral flow: conjugation-equivariant maps of an open loop through its eigen-angles.

An open loop ``W = V diag(exp(i phi)) V^dagger`` is mapped to ``W' = V diag(exp(i phi')) V^dagger``
with ``phi' = g(phi | params)`` a permutation-equivariant bijection of the eigen-angles
(arXiv:2008.05456, Boyda et al., "Sampling using SU(N) gauge equivariant flows"; docs/physics.md,
"SU(N) spectral flow"; docs/physics.md, "SU(N) spectral transform"). Because ``V`` is kept,
``h(Omega W Omega^dagger) = Omega h(W) Omega^dagger``, and the link update only needs
``W' W^dagger = V diag(exp(i (phi' - phi))) V^dagger``, which does not depend on the phases of the
eigenvectors. The log-Jacobian with respect to the Haar measure is (Weyl integration formula)

    log J = log|det d phi'_{1..N-1} / d phi_{1..N-1}| + log H(phi') - log H(phi),
    H(phi) = prod_{i<j} |exp(i phi_i) - exp(i phi_j)|^2.

Pieces, top to bottom:

- :func:`unitary_eig`: eigen-decomposition with orthonormal ``V`` from one batched Hermitian
  ``eigh`` and a hand-written backward whose eigenvalue gaps are clamped (stable at centre
  elements and at the identity);
- :func:`su2_spectral`: SU(2), one angle ``theta in [0, pi]``, ``interval_rqs`` with fixed ends;
- :func:`su3_spectral`: SU(3), the canonical cell mapped to the unit square ``(w, r)`` and two
  coupling steps of ``interval_rqs`` whose parameters are short trigonometric series in the
  other coordinate, constrained so that the map is differentiable at the centre elements;
- :class:`SUNTransform`: the :class:`~hpcflow.flows.transforms.LinkTransform` for SU(2) and SU(3).
"""

from __future__ import annotations

import functools
import math

import torch

from ..lattice.groups import SUN, Group
from .splines import interval_rqs, n_params_interval
from .transforms import LinkTransform

__all__ = [
    "SUNTransform",
    "from_eig",
    "n_params_su2",
    "n_params_su3",
    "sorted_angles",
    "su2_spectral",
    "su3_cell",
    "su3_from_cell",
    "su3_spectral",
    "unitary_eig",
]

_TWO_PI = 2.0 * math.pi


# ------------------------------------------------------------------------------------------------
# Eigen-decomposition
# ------------------------------------------------------------------------------------------------


def _hermitian_of(w: torch.Tensor) -> torch.Tensor:
    """A Hermitian matrix with the eigenvectors of the unitary ``w: [..., N, N]`` (N = 2, 3).

    ``H = (e^{-i a} W - e^{i a} W^dagger) / 2i`` has eigenvalues ``sin(phi_k - a)``. Two of them
    coincide although ``phi_i != phi_j`` iff ``phi_i + phi_j = pi + 2a (mod 2 pi)``, which for
    ``det W = 1`` means: N = 2, ``a = pi/2``; N = 3, ``W`` has the eigenvalue ``z_a = -e^{-2ia}``.
    N = 2 takes ``a = 0``. N = 3 takes, per matrix, the ``a in {0, pi/3, 2 pi/3}`` with the largest
    ``|det(z_a - W)| = |z^3 - t z^2 + conj(t) z - 1|`` (``t = tr W``). The three ``z_a`` are 120
    degrees apart and three eigenvalues with zero angle sum cannot all sit near different ones,
    so no spurious degeneracy remains: every gap of ``H`` is at least half the corresponding
    gap ``|lambda_i - lambda_j|`` of ``W`` (measured on a 1000^2 grid of the eigen-angle torus;
    exactly equal for N = 2).
    """
    n = w.shape[-1]
    wd = w.conj().transpose(-1, -2)
    if n == 2:
        return (w - wd) / 2j
    t = w.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None]
    a = torch.arange(3, dtype=w.real.dtype, device=w.device) * (math.pi / 3.0)
    z = -torch.polar(torch.ones_like(a), -2.0 * a)
    char = ((z - t) * z + t.conj()) * z - 1.0
    best = char.abs().argmax(dim=-1)
    phase = torch.polar(torch.ones_like(best, dtype=a.dtype), -a[best])[..., None, None]
    return (phase * w - phase.conj() * wd) / 2j


class _UnitaryEig(torch.autograd.Function):
    """``W -> (phi, V)`` with ``W = V diag(exp(i phi)) V^dagger``; backward written out.

    Backward, for tangent perturbations ``dW = W X`` (``X`` anti-Hermitian; the only directions
    in which a group element moves), with ``Y = V^dagger X V``, ``lambda = exp(i phi)``,
    ``K = V^dagger dL/dV``: ``d phi_i = Im Y_ii`` and ``dV = V C``,
    ``C_ij = lambda_i Y_ij / (lambda_j - lambda_i)`` (i != j). Then
    ``dL/dW = W V N V^dagger`` with ``N_ii = i dL/dphi_i`` and
    ``N_ij = -lambda_j (K - K^dagger)_ij / (2 (lambda_j - lambda_i))``.
    ``(K - K^dagger)_ij`` vanishes with ``lambda_j - lambda_i`` for every loss that depends on
    ``V`` only through ``V f(phi) V^dagger`` (the spectral flow), so the quotient is bounded; it is
    evaluated as ``conj(d) / max(|d|^2, eps)``: the gap is clamped at ``sqrt(eps)`` (1.5e-8 in
    float64, 3.5e-4 in float32) where rounding of ``K`` would otherwise be amplified without
    bound (NaN at exact degeneracy). Inside the clamp the off-diagonal gradient is damped by
    ``|d|^2 / eps``; under Haar measure that region has probability ~ eps^(3/2).
    The phase of each eigenvector (``C_ii``) is left out: the flow does not depend on it.
    """

    generate_vmap_rule = True  # so that jacobian(..., vectorize=True) works through it

    @staticmethod
    def forward(w):
        _, v = torch.linalg.eigh(_hermitian_of(w))
        # Rayleigh quotients: the eigenvalues of W for the orthonormal eigenvectors from eigh
        lam = (v.conj().transpose(-1, -2) @ w @ v).diagonal(dim1=-2, dim2=-1)
        return torch.angle(lam), v

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output)

    @staticmethod
    def backward(ctx, g_phi, g_v):
        phi, v = ctx.saved_tensors
        lam = torch.polar(torch.ones_like(phi), phi)
        vh = v.conj().transpose(-1, -2)
        n_mat = torch.zeros_like(v)
        if g_v is not None:
            k = vh @ g_v
            skew = 0.5 * (k - k.conj().transpose(-1, -2))
            gap = lam[..., None, :] - lam[..., :, None]  # gap_ij = lambda_j - lambda_i
            eps = torch.finfo(phi.dtype).eps
            inv_gap = gap.conj() / (gap.real**2 + gap.imag**2).clamp_min(eps)  # 0 on the diagonal
            n_mat = -lam[..., None, :] * inv_gap * skew
        if g_phi is not None:
            n_mat = n_mat + torch.diag_embed(1j * g_phi.to(v.dtype))
        return v @ (lam[..., :, None] * n_mat) @ vh


def unitary_eig(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of SU(2) or SU(3) matrices, differentiable and stable at degeneracy.

    ``w: [..., N, N]`` (complex, unitary, det 1) -> ``phi: [..., N]`` real in ``(-pi, pi]`` and
    ``V: [..., N, N]`` unitary with ``w = V diag(exp(i phi)) V^dagger``.

    Why this route: ``V`` comes from ``torch.linalg.eigh`` of a Hermitian matrix with the same
    eigenvectors (batched on CPU and GPU, orthonormal by construction, ~3x faster than
    ``torch.linalg.eig`` on CPU for 3x3), ``phi`` from the Rayleigh quotients. Autograd through
    ``eigh`` would divide by gaps of the Hermitian spectrum and return inf/NaN at centre elements
    and at the identity, so the backward is written out for the unitary matrix with clamped gaps
    (see :class:`_UnitaryEig`). Eigenvector phases are arbitrary; the flow never depends on them.
    """
    n = w.shape[-1]
    if n not in (2, 3):
        raise ValueError(f"unitary_eig: supports N = 2 and 3, got N = {n}")
    return _UnitaryEig.apply(w)


def from_eig(phi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``V diag(exp(i phi)) V^dagger``: ``phi [..., N]``, ``v [..., N, N]`` -> ``[..., N, N]``."""
    lam = torch.polar(torch.ones_like(phi), phi).to(v.dtype)
    return (v * lam[..., None, :]) @ v.conj().transpose(-1, -2)


# ------------------------------------------------------------------------------------------------
# Eigen-angle bookkeeping
# ------------------------------------------------------------------------------------------------


def sorted_angles(phi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted zero-sum representative of the eigen-angles of an SU(N) matrix (N = 2, 3).

    ``phi: [..., N]`` in ``(-pi, pi]`` with ``sum phi = 2 pi n``, ``n in {-1, 0, 1}``
    (docs/physics.md, "SU(N) spectral transform"): ``2 pi n`` is taken from the largest angle
    (``n = 1``) or given to the smallest (``n = -1``), then the angles are sorted.
    Returns ``s: [..., N]`` ascending with ``s[..., k] = phi[..., perm[..., k]] mod 2 pi``,
    ``sum s = 0`` (up to rounding) and ``s[-1] - s[0] <= 2 pi``, and ``perm: [..., N]`` (int64).
    """
    s, perm = torch.sort(phi, dim=-1)
    n = torch.round(s.sum(-1, keepdim=True) / _TWO_PI).clamp(-1.0, 1.0)
    shift = torch.zeros_like(s)
    shift[..., -1:] -= _TWO_PI * (n > 0).to(s.dtype)
    shift[..., :1] += _TWO_PI * (n < 0).to(s.dtype)
    s, again = torch.sort(s + shift, dim=-1)
    return s, perm.gather(-1, again)


def _unsort(s: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """Inverse of the sort in :func:`sorted_angles`: ``out[perm[k]] = s[k]``."""
    return torch.zeros_like(s).scatter(-1, perm, s)


def su3_cell(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Canonical cell of SU(3) -> unit square (docs/physics.md, "SU(N) spectral transform").

    ``s = (x, y, z): [..., 3]`` from :func:`sorted_angles`. Returns ``w = (z - x) / 2 pi`` and
    ``r = (y - x) / (z - x)`` (``= 3 y / (4 pi w) + 1/2`` on the zero-sum plane, written as a
    ratio of gaps so that ``r`` near 0 and 1 keeps its relative precision), both ``[...]`` in
    ``[0, 1]``; ``r = 1/2`` at the identity (``w = 0``), where it is undefined.
    Corners: ``w = 0`` is the identity; ``w = 1, r = 0`` and ``w = 1, r = 1`` are the centre
    elements ``exp(+-2 pi i / 3) 1``. Edges ``r = 0``, ``r = 1``, ``w = 1``: two equal eigenvalues.
    Area element on the plane: ``d phi_1 d phi_2 = (4 pi^2 / 3) w dw dr``.
    """
    x, y, z = s.unbind(-1)
    span = z - x
    pos = span > 0
    w = _clamp01(span / _TWO_PI)
    r = torch.where(pos, (y - x) / torch.where(pos, span, torch.ones_like(span)), 0.5)
    return w, _clamp01(r)


def su3_from_cell(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`su3_cell`: ``y = (4 pi / 3) w (r - 1/2)``, ``z = -y/2 + pi w``,
    ``x = -y/2 - pi w``; returns ``(x, y, z): [..., 3]``, sorted, zero sum."""
    y = (4.0 * math.pi / 3.0) * w * (r - 0.5)
    return torch.stack([-0.5 * y - math.pi * w, y, -0.5 * y + math.pi * w], dim=-1)


def _clamp01(x: torch.Tensor) -> torch.Tensor:
    """Clamp rounding out of [0, 1] without zeroing the gradient (a straight-through clamp)."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


# ------------------------------------------------------------------------------------------------
# Interval splines evaluated from the nearer end
# ------------------------------------------------------------------------------------------------


def _reflect(params: torch.Tensor, bins: int) -> torch.Tensor:
    """``interval_rqs`` parameters of the reflected map ``u -> upper - f(upper - u)``: widths,
    heights and the K+1 slopes in reverse order (the rational-quadratic interpolant of
    reflected knots and slopes is the reflected interpolant)."""
    k = bins
    return torch.cat([params[..., :k].flip(-1), params[..., k : 2 * k].flip(-1),
                      params[..., 2 * k :].flip(-1)], dim=-1)


def _interval_map(
    x: torch.Tensor, params: torch.Tensor, upper: float, inverse: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``interval_rqs`` on ``[0, upper]`` returning ``(y, upper - y, log dy/dx)``.

    Points in the upper half are mapped through the reflected spline
    (``upper - y = g(upper - x)``), so that ``upper - y`` keeps its relative precision next to
    ``upper`` as ``y`` does next to 0: the Weyl ratios below divide such small distances.
    """
    bins = (params.shape[-1] - 1) // 3
    x, params = torch.broadcast_tensors(x[..., None], params.to(x.dtype))
    x = x[..., 0]
    flip = x > 0.5 * upper
    xx = torch.where(flip, upper - x, x)
    pp = torch.where(flip[..., None], _reflect(params, bins), params)
    yy, ld = interval_rqs(xx, pp, lower=0.0, upper=upper, inverse=inverse)
    return torch.where(flip, upper - yy, yy), torch.where(flip, yy, upper - yy), ld


# ------------------------------------------------------------------------------------------------
# Weyl-density ratios, written to survive degenerate eigenvalues
# ------------------------------------------------------------------------------------------------


def _ratio(new: torch.Tensor, old: torch.Tensor, logd: torch.Tensor) -> torch.Tensor:
    """``new / old`` for a 1D map ``f`` with ``f(0) = 0``, ``new = f(old)``, ``old >= 0``.

    Where ``old`` vanishes (to sqrt(tiny)) the limit ``f'(0) = exp(logd)`` is returned, so the
    Weyl ratio ``H(phi') / H(phi)`` stays finite (and right) at degenerate eigenvalues.
    """
    ok = old > torch.finfo(old.dtype).tiny ** 0.5
    return torch.where(ok, new / torch.where(ok, old, torch.ones_like(old)), torch.exp(logd))


def _weight(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / (a + b)`` for ``a, b >= 0``, and 1/2 where both vanish."""
    s = a + b
    ok = s > torch.finfo(s.dtype).tiny ** 0.5
    return torch.where(ok, a / torch.where(ok, s, torch.ones_like(s)), 0.5)


def _log_g(a: torch.Tensor) -> torch.Tensor:
    """``log G(a)`` with ``sin(pi a) = pi a (1 - a) G(a)``; ``G`` is smooth and positive on [0, 1].

    With ``b = min(a, 1 - a)``: ``G = sinc(b) / (1 - b)``, ``sinc(b) = sin(pi b) / (pi b)``.
    """
    b = torch.minimum(a, 1.0 - a).clamp(0.0, 0.5)
    return torch.log(torch.sinc(b)) - torch.log1p(-b)


def _log_sin_ratio(rho: torch.Tensor, sig: torch.Tensor, a_new: torch.Tensor,
                   a: torch.Tensor) -> torch.Tensor:
    """``log(sin(pi a') / sin(pi a))`` from ``rho = a'/a``, ``sig = (1 - a')/(1 - a)``."""
    return torch.log(rho) + torch.log(sig) + _log_g(a_new) - _log_g(a)


# ------------------------------------------------------------------------------------------------
# SU(2)
# ------------------------------------------------------------------------------------------------


def n_params_su2(bins: int) -> int:
    """Parameters of :func:`su2_spectral`: one ``interval_rqs`` with ``bins`` bins, ``3K + 1``."""
    return n_params_interval(bins)


def su2_spectral(
    phi: torch.Tensor, params: torch.Tensor, *, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral map of SU(2): ``theta' = RQS(theta)`` on ``[0, pi]`` with fixed end points.

    Eigenvalues ``exp(+- i theta)``, ``theta in [0, pi]`` (``theta = 0``: identity, ``pi``: minus
    identity); Haar density ``H = 4 sin^2 theta``, so
    ``log J = log d theta'/d theta + 2 log(sin theta' / sin theta)``.

    Args:
        phi: ``[..., 2]`` eigen-angles (any order, from :func:`unitary_eig`).
        params: ``[..., 3K + 1]`` the ``interval_rqs`` parameters; zero gives the identity.
        inverse: apply the inverse map (``phi`` are then the angles of ``W'``).

    Returns:
        ``phi': [..., 2]`` in the order of ``phi`` (eigenvector ``k`` keeps its index) and
        ``log J: [...]`` of the map applied (for the inverse, minus the forward one at the
        preimage).
    """
    s, perm = sorted_angles(phi)
    theta = math.pi * _clamp01((s[..., 1] - s[..., 0]) / _TWO_PI)
    theta_new, comp_new, ld = _interval_map(theta, params, math.pi, inverse)
    if inverse:  # theta_new is the preimage
        log_j = -_su2_log_j(theta_new, comp_new, theta, math.pi - theta, -ld)
    else:
        log_j = _su2_log_j(theta, math.pi - theta, theta_new, comp_new, ld)
    return _unsort(torch.stack([-theta_new, theta_new], dim=-1), perm), log_j


def _su2_log_j(theta, comp, theta_new, comp_new, ld):
    """Forward ``log J`` of ``theta -> theta_new``; ``comp = pi - theta``, ``ld`` the log-slope."""
    rho = _ratio(theta_new, theta, ld)
    sig = _ratio(comp_new, comp, ld)
    return ld + 2.0 * _log_sin_ratio(rho, sig, theta_new / math.pi, theta / math.pi)


# ------------------------------------------------------------------------------------------------
# SU(3)
# ------------------------------------------------------------------------------------------------


def n_params_su3(bins: int, modes: int) -> int:
    """Parameters of :func:`su3_spectral`: ``2 modes (3 bins + 1) - modes - 1``.

    Two coupling steps of ``interval_rqs`` (``3K + 1`` parameters each) as series of ``modes``
    functions of the other coordinate, less the ``modes + 1`` coefficients fixed by smoothness
    at the centre elements (see :func:`su3_spectral`).
    """
    return 2 * modes * n_params_interval(bins) - modes - 1


@functools.lru_cache(maxsize=32)
def _free_slots(bins: int, modes: int) -> torch.Tensor:
    """Indices into the full coefficient table ``[2, modes, 3K + 1]`` (flattened) that are read
    from ``params``; the others are zero or tied (see :func:`_su3_coefficients`)."""
    d0, dk = 2 * bins, 3 * bins
    free = torch.ones(2, modes, 3 * bins + 1, dtype=torch.bool)
    free[0, 1:, d0] = False  # step 1: slope at w = 0 independent of r
    free[1, 0, d0] = False  # step 2: end slopes at w' = 1 tied to step 1
    free[1, 0, dk] = False
    return free.flatten().nonzero().squeeze(-1)


def _su3_coefficients(params: torch.Tensor, bins: int, modes: int):
    """``params [..., n_params_su3] -> (A, B)``, each ``[..., modes, 3K + 1]``.

    ``A_m``: coefficients of ``cos(pi m r)`` for step 1, with ``A_m[d_0] = 0`` for m >= 1.
    ``B_m``: coefficients of ``psi_m(w')`` for step 2, with ``B_0[d_0] = a(r=0)[d_K]`` and
    ``B_0[d_K] = a(r=1)[d_K]`` (``d_0``, ``d_K``: the first and last knot-slope slots).
    """
    p1 = n_params_interval(bins)
    full = params.new_zeros(*params.shape[:-1], 2 * modes * p1)
    full = full.index_copy(-1, _free_slots(bins, modes).to(params.device), params)
    a, b = full.unflatten(-1, (2, modes, p1)).unbind(-3)
    d0, dk = 2 * bins, 3 * bins
    sign = torch.tensor([(-1.0) ** m for m in range(modes)], dtype=a.dtype, device=a.device)
    b = b.clone()
    b[..., 0, d0] = a[..., :, dk].sum(-1)  # a(0)[d_K]: cos(0) = 1
    b[..., 0, dk] = (a[..., :, dk] * sign).sum(-1)  # a(1)[d_K]: cos(pi m) = (-1)^m
    return a, b


def _series(t: torch.Tensor, coeff: torch.Tensor, first_step: bool) -> torch.Tensor:
    """Spline parameters ``[..., 3K + 1]`` at ``t [...]`` from ``coeff [..., modes, 3K + 1]``.

    Step 1: ``sum_m A_m cos(pi m t)``; step 2: ``B_0 sin(pi t / 2) + sum_{m>=1} B_m sin(pi m t)``
    (zero at ``t = 0``, equal to ``B_0`` at ``t = 1``).
    """
    m = torch.arange(coeff.shape[-2], dtype=t.dtype, device=t.device)
    if first_step:
        basis = torch.cos(math.pi * m * t[..., None])
    else:
        basis = torch.sin(math.pi * torch.clamp(m, min=0.5) * t[..., None])
    return (basis[..., :, None] * coeff.to(t.dtype)).sum(-2)


def su3_spectral(
    phi: torch.Tensor, params: torch.Tensor, *, bins: int, modes: int, inverse: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral map of SU(3) on the canonical cell (arXiv:2008.05456; docs/physics.md).

    The sorted zero-sum angles ``(x, y, z)`` become ``(w, r)`` in the unit square
    (:func:`su3_cell`), transformed by two coupling steps of ``interval_rqs`` on [0, 1] with
    fixed end points, whose parameters are fixed series in the other coordinate with
    coefficients from ``params`` (all from the context network; no network inside):

        w' = RQS(w | a(r)),   a(t) = sum_{m<M} A_m cos(pi m t),
        r' = RQS(r | b(w')),  b(t) = B_0 sin(pi t / 2) + sum_{1<=m<M} B_m sin(pi m t),

    ``A_m, B_m in R^{3K+1}``, ``M = modes``. Fixed end points keep the edges of the cell
    (two equal eigenvalues) and its corners (centre elements) in place. Three constraints make
    the map differentiable at the centre elements, where a conjugation-equivariant map must be
    locally a multiple of the identity on the Lie algebra:

    - identity (``w = 0``): ``b(0) = 0`` (``r`` is kept) and the slope ``d_0`` of the ``w``
      spline does not depend on ``r`` (``A_m[d_0] = 0``, m >= 1);
    - ``exp(-2 pi i/3) 1`` (``w = 1, r = 0``): slope of ``w`` at 1 given ``r = 0`` = slope of
      ``r`` at 0 given ``w' = 1``: ``B_0[d_0] = a(0)[d_K]``;
    - ``exp(2 pi i/3) 1`` (``w = 1, r = 1``): ``B_0[d_K] = a(1)[d_K]``.

    ``params`` holds the free coefficients in the order of the table ``[A_0..A_{M-1},
    B_0..B_{M-1}]`` with the ``M + 1`` constrained entries left out:
    ``P = 2 M (3K + 1) - M - 1`` (:func:`n_params_su3`). The result is mapped back to angles
    and the sort is undone, so the map is permutation-equivariant. With
    ``H = 64 sin^2(pi w r) sin^2(pi w (1 - r)) sin^2(pi w)`` and area element ``w dw dr``:

        log J = log dw'/dw + log dr'/dr + log(w'/w) + log H(phi') - log H(phi),

    every ``sin`` ratio built from ``w'/w``, ``(1-w')/(1-w)``, ``r'/r``, ``(1-r')/(1-r)`` so that
    it stays finite and accurate at the edges.

    Args:
        phi: ``[..., 3]`` eigen-angles (any order, from :func:`unitary_eig`).
        params: ``[..., n_params_su3(bins, modes)]``; zero gives the identity.
        bins, modes: spline bins ``K`` and series length ``M``.
        inverse: apply the inverse map.

    Returns:
        ``phi': [..., 3]`` in the order of ``phi`` and ``log J: [...]`` of the map applied.
    """
    s, perm = sorted_angles(phi)
    w, r = su3_cell(s)
    coeff_w, coeff_r = _su3_coefficients(params.to(w.dtype), bins, modes)
    if inverse:
        w_new, r_new = w, r
        r, r_c, ld_r = _interval_map(r_new, _series(w_new, coeff_r, False), 1.0, True)
        w, w_c, ld_w = _interval_map(w_new, _series(r, coeff_w, True), 1.0, True)
        log_j = -_su3_log_j(w, r, w_c, r_c, w_new, r_new, 1.0 - w_new, 1.0 - r_new, -ld_w, -ld_r)
        return _unsort(su3_from_cell(w, r), perm), log_j
    w_new, w_new_c, ld_w = _interval_map(w, _series(r, coeff_w, True), 1.0, False)
    r_new, r_new_c, ld_r = _interval_map(r, _series(w_new, coeff_r, False), 1.0, False)
    log_j = _su3_log_j(w, r, 1.0 - w, 1.0 - r, w_new, r_new, w_new_c, r_new_c, ld_w, ld_r)
    return _unsort(su3_from_cell(w_new, r_new), perm), log_j


def _su3_log_j(w, r, w_c, r_c, w_new, r_new, w_new_c, r_new_c, ld_w, ld_r):
    """Forward ``log J`` of ``(w, r) -> (w_new, r_new)``; ``*_c = 1 - *``, ``ld_*`` the forward
    log-slopes.

    The three gaps ``(y - x, z - y, z - x) / 2 pi`` are ``(w r, w (1 - r), w)`` and their
    complements ``1 - w r = (1 - w) + w (1 - r)``, ``1 - w (1 - r) = (1 - w) + w r``, ``1 - w``;
    each ratio new/old is a product or a convex combination of the four 1D ratios.
    """
    rho_w = _ratio(w_new, w, ld_w)
    sig_w = _ratio(w_new_c, w_c, ld_w)
    rho_r = _ratio(r_new, r, ld_r)
    sig_r = _ratio(r_new_c, r_c, ld_r)
    lam_a = _weight(w_c, w * r_c)
    lam_b = _weight(w_c, w * r)
    log_h = (
        _log_sin_ratio(rho_w * rho_r, lam_a * sig_w + (1.0 - lam_a) * rho_w * sig_r,
                       w_new * r_new, w * r)
        + _log_sin_ratio(rho_w * sig_r, lam_b * sig_w + (1.0 - lam_b) * rho_w * rho_r,
                         w_new * r_new_c, w * r_c)
        + _log_sin_ratio(rho_w, sig_w, w_new, w)
    )
    return ld_w + ld_r + torch.log(rho_w) + 2.0 * log_h


# ------------------------------------------------------------------------------------------------
# The link transform
# ------------------------------------------------------------------------------------------------


class SUNTransform(LinkTransform):
    """SU(N) spectral link transform, N = 2 or 3 (docs/physics.md, "SU(N) spectral flow").

    ``h(W | params) = V diag(exp(i g(phi | params))) V^dagger`` for ``W = V diag(exp(i phi))
    V^dagger``, with ``g`` = :func:`su2_spectral` or :func:`su3_spectral`; conjugation- and
    permutation-equivariant, log-Jacobian with respect to the Haar measure.

    Internal form: the matrices themselves (``to_internal``/``from_internal`` are identities),
    so ``algebra`` is the group. Parameters per active loop:
    ``n_params = 3 bins + 1`` (SU(2)) or ``2 modes (3 bins + 1) - modes - 1`` (SU(3)).
    Features per frozen loop (``n_features = 2 (N - 1)``):
    ``[Re tr W, Im tr W, ..., Re tr W^{N-1}, Im tr W^{N-1}] / N``, gauge invariant and enough
    to fix the spectrum of an SU(N) matrix.
    """

    def __init__(self, group: Group, bins: int = 8, *, modes: int = 2):
        if not isinstance(group, SUN) or group.nc not in (2, 3):
            raise ValueError(f"SUNTransform supports SU(2) and SU(3), got {group!r}")
        if bins < 1 or modes < 1:
            raise ValueError(f"SUNTransform: need bins >= 1 and modes >= 1, got {bins}, {modes}")
        self.group = group
        self.algebra = group
        self.nc = group.nc
        self.bins = bins
        self.modes = modes
        self.n_features = 2 * (group.nc - 1)
        self.n_params = n_params_su2(bins) if group.nc == 2 else n_params_su3(bins, modes)

    def to_internal(self, links: torch.Tensor) -> torch.Tensor:
        return links

    def from_internal(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def loop_features(self, w: torch.Tensor) -> torch.Tensor:
        """``w: [B, *L, N, N] -> [B, 2 (N - 1), *L]``: ``Re, Im tr W^k / N``, k = 1..N-1."""
        feats, p = [], w
        for k in range(1, self.nc):
            if k > 1:
                p = p @ w
            t = p.diagonal(dim1=-2, dim2=-1).sum(-1) / self.nc
            feats += [t.real, t.imag]
        return torch.stack(feats, dim=1)

    def spectral(
        self, phi: torch.Tensor, params: torch.Tensor, *, inverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The eigen-angle map ``phi [..., N] -> (phi' [..., N], log J [...])``."""
        if self.nc == 2:
            return su2_spectral(phi, params, inverse=inverse)
        return su3_spectral(phi, params, bins=self.bins, modes=self.modes, inverse=inverse)

    def transform(self, w, params, *, inverse=False):
        """``w: [B, n, N, N]``, ``params: [B, n, n_params]`` -> ``(w' [B, n, N, N], log J [B, n])``.

        ``log J`` is the log-Jacobian of the map applied with respect to the Haar measure.
        """
        phi, v = unitary_eig(w)
        phi_new, log_j = self.spectral(phi, params, inverse=inverse)
        return from_eig(phi_new, v), log_j

    def update_link(self, u, w_old, w_new):
        """``U' = W' W^dagger U`` so that ``U' S = W'`` for ``W = U S``."""
        return w_new @ w_old.conj().transpose(-1, -2) @ u
