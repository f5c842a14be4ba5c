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

- :func:`unitary_eig`: eigen-decomposition with orthonormal ``V`` in closed form
  (:mod:`hpcflow.lattice.eigen`; a batched Hermitian ``eigh`` on request) and a hand-written
  backward whose eigenvalue gaps are clamped (stable at centre elements and at the identity);
- :func:`su2_spectral`: SU(2), one angle ``theta in [0, pi]``, ``interval_rqs`` with fixed ends;
- :func:`su3_spectral`: SU(3), the canonical cell mapped to the unit square ``(w, r)`` and two
  coupling steps of ``interval_rqs`` whose parameters are short trigonometric series in the
  other coordinate, constrained so that the map is differentiable at the centre elements;
- :class:`SUNTransform`: the :class:`~hpcflow.flows.transforms.LinkTransform` for SU(2) and SU(3).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

from ..kernels import COMPLEX, MAX_BINS, MAX_MODES, REAL, applies
from ..lattice.eigen import closed_form_eig, eigh_eig, in_inference_mode
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


_EIG_METHODS = {"closed": closed_form_eig, "eigh": eigh_eig}


class _UnitaryEig(torch.autograd.Function):
    """``(W, method) -> (phi, V)`` with ``W = V diag(exp(i phi)) V^dagger``; backward written out.

    Forward: :func:`~hpcflow.lattice.eigen.closed_form_eig` (``method="closed"``) or
    :func:`~hpcflow.lattice.eigen.eigh_eig` (``"eigh"``). The backward below uses only
    ``(phi, V)``, so it serves both; for the losses of the flow it does not depend on which
    orthonormal eigenvectors the forward chose, except inside the gap clamp described below
    (there the damped gradient, an approximation either way, depends on the basis chosen in a
    nearly degenerate eigenspace, so the two methods differ).

    Backward, for tangent perturbations ``dW = W X`` (``X`` anti-Hermitian; the only directions
    in which a group element moves), with ``Y = V^dagger X V``, ``lambda = exp(i phi)``,
    ``K = V^dagger dL/dV``: ``d phi_i = Im Y_ii`` and ``dV = V C``,
    ``C_ij = lambda_i Y_ij / (lambda_j - lambda_i)`` (i != j). Then ``dL/dW = V F V^dagger``
    with ``F_ii = i lambda_i dL/dphi_i`` and, with ``d_ij = lambda_j - lambda_i`` and
    ``|lambda| = 1``, ``F_ij = (K - K^dagger)_ij / (2 conj(d_ij))``.
    ``(K - K^dagger)_ij`` vanishes with ``d_ij`` for every loss that depends on
    ``V`` only through ``V f(phi) V^dagger`` (the spectral flow), so the quotient is bounded; it is
    evaluated as ``d / max(|d|^2, eps)``: the gap is clamped at ``sqrt(eps)`` (1.5e-8 in
    float64, 3.5e-4 in float32) where rounding of ``K`` would otherwise be amplified without
    bound (NaN at exact degeneracy). Inside the clamp the off-diagonal gradient is damped by
    ``|d|^2 / eps``; under Haar measure that region has probability ~ eps^(3/2).
    The phase of each eigenvector (``C_ii``) is left out: the flow does not depend on it.
    Products are ``bmm`` of the flattened batch: one kernel each.
    """

    generate_vmap_rule = True  # so that jacobian(..., vectorize=True) works through it

    @staticmethod
    def forward(w, method, fused):
        if fused:  # csrc/eig.cpp: su3_eig in one pass (the same algorithm and results)
            return torch.ops.hpcflow.su3_eig(w.contiguous())
        return _EIG_METHODS[method](w)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*output)

    @staticmethod
    def backward(ctx, g_phi, g_v):
        phi, v = ctx.saved_tensors
        n = v.shape[-1]
        vf = v.reshape(-1, n, n)
        vh = vf.mH
        phi = phi.reshape(-1, n)
        ilam = torch.polar(torch.ones_like(phi), phi + math.pi / 2)  # i lambda
        if g_phi is None:
            f = torch.zeros_like(vf)
        else:
            f = torch.diag_embed(ilam * g_phi.reshape(phi.shape))
        if g_v is not None:
            k = torch.bmm(vh, g_v.reshape(-1, n, n))
            gap = ilam[:, None, :] - ilam[:, :, None]  # i d_ij, 0 on the diagonal
            den = gap.abs().square().clamp_min(torch.finfo(phi.dtype).eps)
            f = torch.addcdiv(f, (k - k.mT.conj_physical()) * gap, den, value=-0.5j)
        return torch.bmm(torch.bmm(vf, f), vh).view(v.shape), None, None


def unitary_eig(w: torch.Tensor, method: str = "closed", fused: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of SU(2) or SU(3) matrices, differentiable and stable at degeneracy.

    ``w: [..., N, N]`` (complex, unitary, det 1) -> ``phi: [..., N]`` real in ``[-pi, pi]`` and
    ``V: [..., N, N]`` unitary with ``w = V diag(exp(i phi)) V^dagger``.

    ``method="closed"`` (default): closed forms, a few dozen batched operations
    (:func:`~hpcflow.lattice.eigen.su2_eig`, :func:`~hpcflow.lattice.eigen.su3_eig`; no LAPACK
    or cuSOLVER call, which for batches of tiny matrices is slow on GPUs and missing on some
    accelerators). ``method="eigh"``: ``torch.linalg.eigh`` of a Hermitian matrix with the same
    eigenvectors and Rayleigh quotients (:func:`~hpcflow.lattice.eigen.eigh_eig`), kept as the
    reference. Both reconstruct ``w`` to rounding, also at and near the centre elements.
    Autograd through either would divide by eigenvalue gaps and return inf/NaN at centre
    elements and at the identity, so the backward is written out for the unitary matrix with
    clamped gaps (see :class:`_UnitaryEig`). Eigenvector phases, the order of the eigenpairs and
    the basis of a degenerate eigenspace are arbitrary (and differ between the methods); the flow
    depends on none of them. ``fused``: SU(3)'s closed form by the fused C++ kernel on CPUs
    (``csrc/eig.cpp``, the same algorithm: one operator call instead of ~70).
    """
    n = w.shape[-1]
    if n not in (2, 3):
        raise ValueError(f"unitary_eig: supports N = 2 and 3, got N = {n}")
    if method not in _EIG_METHODS:
        raise ValueError(f"unitary_eig: method must be one of {sorted(_EIG_METHODS)}, "
                         f"got {method!r}")
    fused = (fused and n == 3 and method == "closed"
             and applies(w, COMPLEX, "the eigen-decompositions"))
    return _UnitaryEig.apply(w, method, fused)


def from_eig(phi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``V diag(exp(i phi)) V^dagger``: ``phi [..., N]``, ``v [..., N, N]`` -> ``[..., N, N]``."""
    return _FromEig.apply(phi, v)


class _FromEig(torch.autograd.Function):
    """:func:`from_eig` with its backward written out (autograd's would copy every conjugated
    operand). With ``Lambda = diag(exp(i phi))``, ``G = dL/dW'``:
    ``dL/dV = G V conj(Lambda) + G^dagger V Lambda``,
    ``dL/dphi_k = Im(conj(lambda_k) (V^dagger G V)_kk)``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(phi, v):
        n = v.shape[-1]
        vf = v.reshape(-1, n, n)
        return torch.bmm(vf * _phases(phi, v), vf.mH).view(v.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, g):
        phi, v = ctx.saved_tensors
        n = v.shape[-1]
        vf, gf = v.reshape(-1, n, n), g.reshape(-1, n, n)
        lam = _phases(phi, v)
        gv = torch.bmm(gf, vf) * lam.conj_physical()
        g_phi = g_v = None
        if ctx.needs_input_grad[0]:
            g_phi = (vf.conj_physical() * gv).sum(-2).imag.to(phi.dtype).reshape(phi.shape)
        if ctx.needs_input_grad[1]:
            g_v = torch.addcmul(gv, torch.bmm(gf.mH, vf), lam).view(v.shape)
        return g_phi, g_v


def _phases(phi: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``exp(i phi): [M, 1, N]`` in the dtype of ``v``."""
    return torch.exp(phi * 1j).to(v.dtype).reshape(-1, 1, v.shape[-1])


# ------------------------------------------------------------------------------------------------
# Constants
# ------------------------------------------------------------------------------------------------


class _Constants(NamedTuple):
    """Small constant tensors of the spectral maps, made once per dtype and device: a tensor
    built from Python numbers is an operation (on a GPU a host-to-device copy) on every call."""

    half: torch.Tensor  # 0.5 (0-dim): fallbacks of the 0/0 ratios
    edge: dict  # N -> [N]: 2k/(N-1) - 1 (sorted_angles)
    cell: tuple  # [3] each: (x, y, z) / w = c_0 + r c_1 (su3_from_cell)
    unit_pair: tuple  # [2] each: (g, 1 - g) = c_0 + c_1 2 pi g (su3_cell, su2_spectral)
    su2_sign: torch.Tensor  # [2]: (-theta, theta) from theta
    su2_log_j: torch.Tensor  # [6]: weights of the logs in _su2_log_j
    su3_log_j: torch.Tensor  # [18]: weights of the logs in _su3_log_j


@functools.lru_cache(maxsize=32)
def _constants(dtype: torch.dtype, device: torch.device, inference: bool) -> _Constants:
    # ``inference`` keys the cache (see hpcflow.lattice.eigen.in_inference_mode)
    def put(values):
        return torch.tensor(values, dtype=torch.float64).to(dtype=dtype, device=device)

    third = 2.0 * math.pi / 3.0
    return _Constants(
        half=put(0.5),
        edge={2: put([-1.0, 1.0]), 3: put([-1.0, 0.0, 1.0])},
        cell=(put([-third, -third, 2.0 * third]), put([-third, 2.0 * third, -third])),
        unit_pair=(put([0.0, 1.0]), put([1.0 / _TWO_PI, -1.0 / _TWO_PI])),
        su2_sign=put([-1.0, 1.0]),
        su2_log_j=put([2.0, 2.0, 2.0, -2.0, -2.0, 2.0]),
        su3_log_j=put([7.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, -2.0, -2.0, -2.0,
                       -2.0, -2.0, -2.0, 2.0, 2.0, 2.0]),
    )


def _const(x: torch.Tensor) -> _Constants:
    return _constants(x.dtype, x.device, in_inference_mode())


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
    n = torch.round(s.detach().sum(-1, keepdim=True) * (1.0 / _TWO_PI)).clamp(-1.0, 1.0)
    # the angle k that moves has edge_k = 2k/(N-1) - 1 = n: relu(n edge) is 1 there, else 0
    s = torch.addcmul(s, n, torch.relu(n * _const(s).edge[s.shape[-1]]), value=-_TWO_PI)
    s, again = torch.sort(s, dim=-1)
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
    w, r = _su3_cell_pairs(s)
    return w[..., 0], r[..., 0]


def _su3_cell_pairs(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`su3_cell` as pairs ``W = (w, 1 - w)``, ``R = (r, 1 - r)``, each ``[..., 2]``.

    The spline maps and the Weyl ratios below need each coordinate and its distance to 1 with
    relative precision: ``1 - r = (z - y) / (z - x)`` is a ratio of gaps too.
    """
    c = _const(s)
    gaps = s[..., 1:] - s[..., :-1]  # (y - x, z - y)
    span = gaps.sum(-1, keepdim=True)  # z - x
    w = _clamp01(torch.addcmul(c.unit_pair[0], span, c.unit_pair[1]))  # (w, 1 - w)
    return w, _safe_div(gaps, span, c.half)


def su3_from_cell(w: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`su3_cell`: ``y = (4 pi / 3) w (r - 1/2)``, ``z = -y/2 + pi w``,
    ``x = -y/2 - pi w``; returns ``(x, y, z): [..., 3]``, sorted, zero sum.

    Written as ``w (c_0 + r c_1)`` with constant ``c_0, c_1`` (whose entries sum to 0)."""
    c0, c1 = _const(w).cell
    return w[..., None] * torch.addcmul(c0, r[..., None], c1)


def _clamp01(x: torch.Tensor) -> torch.Tensor:
    """Clamp rounding out of [0, 1] without zeroing the gradient (a straight-through clamp)."""
    return x + (x.clamp(0.0, 1.0) - x).detach()


def _safe_div(num: torch.Tensor, den: torch.Tensor, limit) -> torch.Tensor:
    """``num / den`` where ``den > sqrt(tiny)``, and ``limit`` (the value of the ratio as ``den``
    vanishes) elsewhere; the division never sees a zero, so neither branch's gradient is NaN."""
    small = den <= torch.finfo(den.dtype).tiny ** 0.5
    return torch.where(small, limit, num / (den + small))


# ------------------------------------------------------------------------------------------------
# Interval splines evaluated from the nearer end
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _reflection(bins: int, device: torch.device, inference: bool) -> torch.Tensor:
    """Index table ``[2, 3K + 1]``: row 0 the identity, row 1 the reflected spline's parameter
    order."""
    k = bins
    rev = [*range(k - 1, -1, -1), *range(2 * k - 1, k - 1, -1), *range(3 * k, 2 * k - 1, -1)]
    return torch.tensor([list(range(3 * k + 1)), rev], device=device)


@functools.lru_cache(maxsize=32)
def _pair_tables(upper: float, dtype: torch.dtype, device: torch.device,
                 inference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``offset, sign: [2, 2]`` with ``offset[f] + y sign[f] = (y, upper - y)`` for ``f = 0`` and
    ``(upper - y, y)`` for ``f = 1``."""
    def put(values):
        return torch.tensor(values, dtype=torch.float64).to(dtype=dtype, device=device)

    return put([[0.0, upper], [upper, 0.0]]), put([[1.0, -1.0], [-1.0, 1.0]])


def _interval_map(
    x: torch.Tensor, params: torch.Tensor, upper: float, inverse: bool, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``interval_rqs`` on ``[0, upper]`` for the pair ``x = (x, upper - x): [..., 2]``, returning
    the pair ``(y, upper - y): [..., 2]`` and ``log dy/dx: [...]``.

    Points in the upper half are mapped through the reflected spline
    (``upper - y = g(upper - x)``; its ``interval_rqs`` parameters are the widths, heights and
    the K+1 slopes in reverse order), so that ``upper - y`` keeps its relative precision next
    to ``upper`` as ``y`` does next to 0: the Weyl ratios below divide such small distances.
    ``fused``: evaluate the spline with the fused kernel (:func:`interval_rqs`).
    """
    inference = in_inference_mode()
    index = _reflection((params.shape[-1] - 1) // 3, params.device, inference)
    offset, sign = _pair_tables(upper, x.dtype, x.device, inference)
    near, flip = x.min(-1)  # the nearer end: flip = 1 where upper - x < x
    if params.shape[:-1] != near.shape:
        shape = torch.broadcast_shapes(near.shape, params.shape[:-1])
        near, flip = near.expand(shape), flip.expand(shape)
        params = params.expand(*shape, params.shape[-1])
    yy, ld = interval_rqs(near, params.to(x.dtype).gather(-1, index[flip]), lower=0.0,
                          upper=upper, inverse=inverse, fused=fused)
    # (yy, upper - yy), or (upper - yy, yy) where flipped
    return torch.addcmul(offset[flip], yy[..., None], sign[flip]), ld


# ------------------------------------------------------------------------------------------------
# Weyl-density ratios, written to survive degenerate eigenvalues
# ------------------------------------------------------------------------------------------------
#
# For a gap a in [0, 1] (a fraction of 2 pi; pi for SU(2)) mapped to a', the Haar density needs
# log(sin(pi a') / sin(pi a)) = log(a'/a) + log((1 - a')/(1 - a)) + log G(a') - log G(a), with
# sin(pi a) = pi a (1 - a) G(a); G is smooth and positive on [0, 1]: with b = min(a, 1 - a),
# G = sinc(b) / (1 - b). The ratios a'/a and (1 - a')/(1 - a) come from the 1D maps (their limit
# at a = 0 is the slope exp(log d)), so log J stays finite (and right) at degenerate eigenvalues.
# All logs of one log J are taken at once: log J = ld + sum_k c_k log(f_k) over a stack of
# positive factors f_k with constant weights c_k.


def _ratios(new: torch.Tensor, old: torch.Tensor, ld: torch.Tensor) -> torch.Tensor:
    """``new / old`` for 1D maps ``f`` with ``f(0) = 0``, ``new = f(old)``, ``old >= 0`` of shape
    ``[..., m, 2]`` (pairs ``(x, upper - x)`` of ``m`` maps); where ``old`` vanishes the limit
    ``f'(0) = exp(ld)``, ``ld: [..., m]`` the log-slopes."""
    return _safe_div(new, old, ld.exp()[..., None])


def _g_factors(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sinc(b), 1 - b)``, ``b = min(a, 1 - a) = 1/2 - |a - 1/2|``: ``G(a) = sinc(b) / (1 - b)``
    (``a`` in [0, 1]; ``b`` needs only absolute precision, ``G`` is smooth)."""
    t = (a - 0.5).abs()
    return torch.sinc(0.5 - t), t + 0.5


# ------------------------------------------------------------------------------------------------
# SU(2)
# ------------------------------------------------------------------------------------------------


def n_params_su2(bins: int) -> int:
    """Parameters of :func:`su2_spectral`: one ``interval_rqs`` with ``bins`` bins, ``3K + 1``."""
    return n_params_interval(bins)


def su2_spectral(
    phi: torch.Tensor, params: torch.Tensor, *, inverse: bool = False, fused: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Spectral map of SU(2): ``theta' = RQS(theta)`` on ``[0, pi]`` with fixed end points.

    Eigenvalues ``exp(+- i theta)``, ``theta in [0, pi]`` (``theta = 0``: identity, ``pi``: minus
    identity); Haar density ``H = 4 sin^2 theta``, so
    ``log J = log d theta'/d theta + 2 log(sin theta' / sin theta)``.

    Args:
        phi: ``[..., 2]`` eigen-angles (any order, from :func:`unitary_eig`).
        params: ``[..., 3K + 1]`` the ``interval_rqs`` parameters; zero gives the identity.
        inverse: apply the inverse map (``phi`` are then the angles of ``W'``).
        fused: the spline by the fused C++ kernel on CPUs (:func:`interval_rqs`).

    Returns:
        ``phi': [..., 2]`` in the order of ``phi`` (eigenvector ``k`` keeps its index) and
        ``log J: [...]`` of the map applied (for the inverse, minus the forward one at the
        preimage).
    """
    c = _const(phi)
    s, perm = sorted_angles(phi)
    # (theta, pi - theta) / pi = c_0 + (y - x) c_1, theta = (y - x) / 2
    theta = math.pi * _clamp01(torch.addcmul(c.unit_pair[0], (s * c.su2_sign).sum(-1, True),
                                             c.unit_pair[1]))
    theta_new, ld = _interval_map(theta, params, math.pi, inverse, fused)
    if inverse:  # theta_new is the preimage
        log_j = -_su2_log_j(theta_new, theta, -ld)
    else:
        log_j = _su2_log_j(theta, theta_new, ld)
    return _unsort(theta_new[..., :1] * c.su2_sign, perm), log_j


def _su2_log_j(theta: torch.Tensor, theta_new: torch.Tensor, ld: torch.Tensor) -> torch.Tensor:
    """Forward ``log J`` of ``theta -> theta_new``, both pairs ``(theta, pi - theta)``; ``ld`` the
    log-slope: ``ld + 2 log(sin theta' / sin theta)`` (see "Weyl-density ratios" above)."""
    ratio = _ratios(theta_new, theta, ld)  # (theta'/theta, (pi - theta')/(pi - theta))
    sinc, comp = _g_factors(torch.stack([theta_new[..., 0], theta[..., 0]], -1) / math.pi)
    factors = torch.cat([ratio, sinc, comp], -1)
    return (factors.log() * _const(ld).su2_log_j).sum(-1) + ld


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


class _Tables(NamedTuple):
    slots: torch.Tensor  # [2 modes (3K + 1)]: index into cat([params, 0, tied_0, tied_1])
    d_k: torch.Tensor  # [modes]: index of A_m[d_K] in params
    tied: torch.Tensor  # [modes, 3]: A_m[d_K] -> (0, a(r=0)[d_K], a(r=1)[d_K])


@functools.lru_cache(maxsize=32)
def _tables(bins: int, modes: int, dtype: torch.dtype, device: torch.device,
            inference: bool) -> _Tables:
    """Where every entry of the coefficient table ``[2, modes, 3K + 1]`` (flattened) comes from
    (see :func:`_su3_coefficients`)."""
    p1 = n_params_interval(bins)
    d0, dk = 2 * bins, 3 * bins
    free = torch.ones(2, modes, p1, dtype=torch.bool)
    free[0, 1:, d0] = False  # step 1: slope at w = 0 independent of r
    free[1, 0, d0] = False  # step 2: end slopes at w' = 1 tied to step 1
    free[1, 0, dk] = False
    n = int(free.sum())
    slots = torch.full((2, modes, p1), n, dtype=torch.long)  # n: the zero
    slots[free] = torch.arange(n)
    slots[1, 0, d0], slots[1, 0, dk] = n + 1, n + 2
    tied = torch.tensor([[0.0, 1.0, (-1.0) ** m] for m in range(modes)], dtype=torch.float64)
    return _Tables(slots.flatten().to(device), slots[0, :, dk].contiguous().to(device),
                   tied.to(dtype=dtype, device=device))


def _su3_coefficients(params: torch.Tensor, bins: int, modes: int):
    """``params [..., n_params_su3] -> (A, B)``, each ``[..., modes, 3K + 1]``.

    ``A_m``: coefficients of ``cos(pi m r)`` for step 1, with ``A_m[d_0] = 0`` for m >= 1.
    ``B_m``: coefficients of ``psi_m(w')`` for step 2, with ``B_0[d_0] = a(r=0)[d_K]`` and
    ``B_0[d_K] = a(r=1)[d_K]`` (``d_0``, ``d_K``: the first and last knot-slope slots).
    The table is one gather from ``params`` extended by ``(0, a(0)[d_K], a(1)[d_K])``.
    """
    t = _tables(bins, modes, params.dtype, params.device, in_inference_mode())
    tied = (params.index_select(-1, t.d_k)[..., None] * t.tied).sum(-2)
    ext = torch.cat([params, tied], -1)
    # gather with a broadcast index: on CPUs several times faster than index_select on the last axis
    full = ext.gather(-1, t.slots.expand(*ext.shape[:-1], -1))
    a, b = full.unflatten(-1, (2, modes, n_params_interval(bins))).unbind(-3)
    return a, b


@functools.lru_cache(maxsize=32)
def _frequencies(modes: int, dtype: torch.dtype, device: torch.device,
                 inference: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``[modes]`` each: ``pi m`` (step 1) and ``pi max(m, 1/2)`` (step 2)."""
    m = torch.arange(modes, dtype=torch.float64)
    return tuple((math.pi * x).to(dtype=dtype, device=device) for x in (m, m.clamp(min=0.5)))


def _series(t: torch.Tensor, coeff: torch.Tensor, first_step: bool) -> torch.Tensor:
    """Spline parameters ``[..., 3K + 1]`` at ``t [...]`` from ``coeff [..., modes, 3K + 1]``.

    Step 1: ``sum_m A_m cos(pi m t)``; step 2: ``B_0 sin(pi t / 2) + sum_{m>=1} B_m sin(pi m t)``
    (zero at ``t = 0``, equal to ``B_0`` at ``t = 1``).
    """
    cos_freq, sin_freq = _frequencies(coeff.shape[-2], t.dtype, t.device, in_inference_mode())
    arg = t[..., None] * (cos_freq if first_step else sin_freq)
    basis = torch.cos(arg) if first_step else torch.sin(arg)
    return (basis[..., :, None] * coeff.to(t.dtype)).sum(-2)


def su3_spectral(
    phi: torch.Tensor, params: torch.Tensor, *, bins: int, modes: int, inverse: bool = False,
    fused: bool = False,
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
    it stays finite and accurate at the edges. Each coordinate travels with its distance to 1,
    as the pair ``(w, 1 - w)`` or ``(r, 1 - r)``.

    Args:
        phi: ``[..., 3]`` eigen-angles (any order, from :func:`unitary_eig`).
        params: ``[..., n_params_su3(bins, modes)]``; zero gives the identity.
        bins, modes: spline bins ``K`` and series length ``M``.
        inverse: apply the inverse map.
        fused: on CPUs, the forward map as one fused C++ operator each way
            (:class:`_FusedSU3Spectral`, ``csrc/su3.cpp``), the inverse with the fused splines
            (:func:`interval_rqs`); the same maps to rounding.

    Returns:
        ``phi': [..., 3]`` in the order of ``phi`` and ``log J: [...]`` of the map applied.
    """
    if params.shape[-1] != n_params_su3(bins, modes):
        raise ValueError(f"su3_spectral: params.shape[-1] must be n_params_su3({bins}, {modes}) = "
                         f"{n_params_su3(bins, modes)}, got {params.shape[-1]}")
    if fused and not inverse and _su3_fused_applies(phi, bins, modes):
        if params.shape[:-1] != phi.shape[:-1]:
            params = params.expand(*phi.shape[:-1], params.shape[-1])
        return _FusedSU3Spectral.apply(phi, params.to(phi.dtype), bins, modes)
    s, perm = sorted_angles(phi)
    w, r = _su3_cell_pairs(s)
    coeff_w, coeff_r = _su3_coefficients(params.to(s.dtype), bins, modes)
    if inverse:
        w_new, r_new = w, r
        r, ld_r = _interval_map(r_new, _series(w_new[..., 0], coeff_r, False), 1.0, True, fused)
        w, ld_w = _interval_map(w_new, _series(r[..., 0], coeff_w, True), 1.0, True, fused)
        log_j = -_su3_log_j(w, r, w_new, r_new, -ld_w, -ld_r)
        return _unsort(su3_from_cell(w[..., 0], r[..., 0]), perm), log_j
    w_new, ld_w = _interval_map(w, _series(r[..., 0], coeff_w, True), 1.0, False, fused)
    r_new, ld_r = _interval_map(r, _series(w_new[..., 0], coeff_r, False), 1.0, False, fused)
    log_j = _su3_log_j(w, r, w_new, r_new, ld_w, ld_r)
    return _unsort(su3_from_cell(w_new[..., 0], r_new[..., 0]), perm), log_j


# interval_rqs's bin minima, which _interval_map uses (its defaults)
_SPLINE_MINS = tuple(interval_rqs.__kwdefaults__[key]
                     for key in ("min_width", "min_height", "min_slope"))


def _su3_fused_applies(phi: torch.Tensor, bins: int, modes: int) -> bool:
    """Whether the fused kernel takes this map: within its sizes, and :func:`applies`."""
    return (bins <= MAX_BINS and modes <= MAX_MODES
            and applies(phi, REAL, "the splines", "distributed.splines"))


class _FusedSU3Spectral(torch.autograd.Function):
    """The forward :func:`su3_spectral` as the fused C++ kernel (:mod:`hpcflow.kernels`,
    ``csrc/su3.cpp``): the sort, the cell, the coefficient table, both coupling splines, the
    log-Jacobian and the unsort per element, one operator call forward and one backward (which
    recomputes the element) instead of ~280 and ~400. Saves ``phi`` and ``params`` only. First
    order, as the splines."""

    @staticmethod
    def forward(ctx, phi, params, bins, modes):
        phi, params = phi.contiguous(), params.contiguous()
        t = _tables(bins, modes, phi.dtype, phi.device, in_inference_mode())
        ctx.spec = (bins, modes, *_SPLINE_MINS)
        ctx.save_for_backward(phi, params, t.slots, t.d_k, t.tied)
        return torch.ops.hpcflow.su3_spectral(phi, params, t.slots, t.d_k, t.tied, *ctx.spec)

    @staticmethod
    def backward(ctx, g_phi, g_log_j):
        if torch.is_grad_enabled():  # create_graph: first order only, as the splines
            raise RuntimeError(
                "su3_spectral: second derivatives are not implemented (the fused kernel's "
                "backward is first order); differentiate without create_graph=True or set "
                "distributed.splines: torch")
        phi, params, slots, d_k, tied = ctx.saved_tensors
        g_phi = torch.zeros_like(phi) if g_phi is None else g_phi
        g_log_j = phi.new_zeros(phi.shape[:-1]) if g_log_j is None else g_log_j
        g_x, g_p = torch.ops.hpcflow.su3_spectral_backward(phi, params, slots, d_k, tied, g_phi,
                                                           g_log_j, *ctx.spec)
        return g_x, g_p, None, None


def _su3_log_j(w, r, w_new, r_new, ld_w, ld_r):
    """Forward ``log J`` of ``(w, r) -> (w_new, r_new)``, all pairs ``(x, 1 - x): [..., 2]``;
    ``ld_w, ld_r: [...]`` the forward log-slopes of the two maps.

    The three gaps ``(y - x, z - y, z - x) / 2 pi`` are ``a = (w r, w (1 - r), w)`` and their
    complements ``1 - w r = (1 - w) + w (1 - r)``, ``1 - w (1 - r) = (1 - w) + w r``, ``1 - w``,
    sums of non-negative terms (relative precision everywhere). The six ratios new/old of
    ``w, 1 - w, r, 1 - r, 1 - w r, 1 - w (1 - r)`` (``rho_w, sig_w, rho_r, sig_r, sig_1, sig_2``)
    give every gap ratio: ``w r`` -> ``rho_w rho_r``, ``w (1 - r)`` -> ``rho_w sig_r``, so

        log J = ld_w + ld_r + 7 log rho_w + 2 log(sig_w rho_r sig_r sig_1 sig_2)
                + 2 sum_k log(G(a'_k) / G(a_k)).

    Where an old value vanishes its ratio is the limit, the slope of its map: ``exp(ld_r)`` for
    ``r`` and ``1 - r``, ``exp(ld_w)`` for ``w`` and ``1 - w``, and ``exp(ld_w)`` for
    ``1 - w r`` and ``1 - w (1 - r)`` too: these vanish only at the centre elements
    (``w = 1``, ``r = 1`` or 0), where ``rho_w = 1`` and the tied end slopes of
    :func:`su3_spectral` give ``ld_w = ld_r``, so that the ratio, a convex combination of
    ``sig_w`` and ``rho_w sig_r`` (or ``rho_w rho_r``) nearby, tends to ``exp(ld_w)``.
    """
    (x, gaps), (x_new, gaps_new) = _su3_gap_pairs(w, r), _su3_gap_pairs(w_new, r_new)
    ratio = _ratios(x_new, x, torch.stack([ld_w, ld_r, ld_w], -1))  # [..., 3, 2]
    sinc, comp = _g_factors(torch.cat([gaps_new, gaps], -1))
    factors = torch.cat([ratio.flatten(-2), sinc, comp], -1)
    return (factors.log() * _const(ld_w).su3_log_j).sum(-1) + (ld_w + ld_r)


def _su3_gap_pairs(w: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(w, 1 - w), (r, 1 - r), (1 - w r, 1 - w (1 - r))]: [..., 3, 2]`` and the gaps
    ``(w r, w (1 - r), w): [..., 3]`` of the pairs ``w, r``."""
    w_, w_c = (x[..., None] for x in w.unbind(-1))
    wr = w_ * r
    return torch.stack([w, r, wr.flip(-1) + w_c], -2), torch.cat([wr, w_], -1)


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
    to fix the spectrum of an SU(N) matrix. ``eig``: the ``method`` of :func:`unitary_eig`
    (``"closed"`` or ``"eigh"``; the flow agrees between them to rounding). ``fused``: the
    splines and SU(3)'s eigen-angle map by the fused C++ kernels on CPUs
    (:mod:`hpcflow.kernels`; same map to rounding; ``distributed.splines``); ``fused_eig``:
    SU(3)'s closed-form eigen-decomposition likewise (``distributed.kernels``).
    """

    def __init__(self, group: Group, bins: int = 8, *, modes: int = 2, eig: str = "closed",
                 fused: bool = False, fused_eig: bool = False):
        if not isinstance(group, SUN) or group.nc not in (2, 3):
            raise ValueError(f"SUNTransform supports SU(2) and SU(3), got {group!r}")
        if bins < 1 or modes < 1:
            raise ValueError(f"SUNTransform: need bins >= 1 and modes >= 1, got {bins}, {modes}")
        if eig not in _EIG_METHODS:
            raise ValueError(f"SUNTransform: eig must be one of {sorted(_EIG_METHODS)}, "
                             f"got {eig!r}")
        self.eig = eig
        self.fused = bool(fused)
        self.fused_eig = bool(fused_eig)
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
        """``w: [B, *L, N, N] -> [B, 2 (N - 1), *L]``: ``Re, Im tr W^k / N``, k = 1..N-1
        (:meth:`trace_features` of ``tr W``)."""
        return self.trace_features(w.diagonal(0, -2, -1).sum(-1))

    def trace_features(self, t: torch.Tensor) -> torch.Tensor:
        """:meth:`loop_features` from the traces ``t = tr W: [B, *L]`` (complex) alone: for
        SU(3), ``tr W^2 = (tr W)^2 - 2 conj(tr W)`` (the characteristic polynomial of a special
        unitary matrix, whose second invariant ``tr adj W = tr W^dagger``), so no matrix
        product is needed (the fused loop kernel hands over traces only)."""
        t = t.unsqueeze(-1)  # [B, *L, 1]
        if self.nc == 3:
            t = torch.cat([t, t * t - 2.0 * t.conj()], -1)
        return torch.view_as_real(t).flatten(-2).movedim(-1, 1) * (1.0 / self.nc)

    def spectral(
        self, phi: torch.Tensor, params: torch.Tensor, *, inverse: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The eigen-angle map ``phi [..., N] -> (phi' [..., N], log J [...])``."""
        if self.nc == 2:
            return su2_spectral(phi, params, inverse=inverse, fused=self.fused)
        return su3_spectral(phi, params, bins=self.bins, modes=self.modes, inverse=inverse,
                            fused=self.fused)

    def transform(self, w, params, *, inverse=False):
        """``w: [B, n, N, N]``, ``params: [B, n, n_params]`` -> ``(w' [B, n, N, N], log J [B, n])``.

        ``log J`` is the log-Jacobian of the map applied with respect to the Haar measure.
        """
        phi, v = unitary_eig(w, self.eig, fused=self.fused_eig)
        phi_new, log_j = self.spectral(phi, params, inverse=inverse)
        return from_eig(phi_new, v), log_j

    def update_link(self, u, w_old, w_new):
        """``U' = W' W^dagger U`` so that ``U' S = W'`` for ``W = U S``."""
        if not u.shape == w_old.shape == w_new.shape:
            return w_new @ w_old.mH @ u

        def flat(x):
            return x.reshape(-1, self.nc, self.nc)

        return torch.bmm(torch.bmm(flat(w_new), flat(w_old).mH), flat(u)).view(u.shape)
