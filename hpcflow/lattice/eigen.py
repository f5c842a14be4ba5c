"""Eigen-decomposition of SU(2) and SU(3) matrices: closed forms, and a batched ``eigh`` route.

Both return, for ``w: [..., N, N]`` (complex64 or complex128, unitary, ``det w = 1``), the
eigen-angles ``phi: [..., N]`` in ``[-pi, pi]`` and a unitary ``V: [..., N, N]`` with
``w = V diag(exp(i phi)) V^dagger``. The eigenvector phases, the order of the eigenpairs and the
basis of a degenerate eigenspace are arbitrary (and differ between the routes).

- :func:`su2_eig`: ``W = a_0 1 + i a.sigma``; angles ``+-theta``, ``theta = atan2(|a|, a_0)``,
  eigenvectors from the polar angles of the unit vector ``a / |a|`` (the identity at ``a = 0``).
- :func:`su3_eig`: the closed-form (trigonometric) eigen-solution of a traceless Hermitian 3x3
  matrix with the eigenvectors of ``W`` (Smith, Commun. ACM 4, 168 (1961); Kopp,
  Int. J. Mod. Phys. C 19, 523 (2008), arXiv:physics/0610206), one eigenvector from the
  adjugate, the other two by deflation to a 2x2 problem, the angles from Rayleigh quotients.
- :func:`eigh_eig`: the same Hermitian matrix diagonalized by ``torch.linalg.eigh`` (LAPACK /
  cuSOLVER), kept as the reference and fallback.

The closed forms use no LAPACK call and no data-dependent branch (nothing that synchronizes a
GPU), and are written as few, batched operations: on a GPU every operation is a kernel launch,
and at small batches their number, not their size, sets the time (issue 19). Matrices are
flattened to ``[M, N, N]`` so that products are single ``bmm`` calls; per-component
arithmetic and Python loops over components are avoided. No autograd rule here:
differentiating the closed forms by plain autograd divides by eigenvalue gaps (inf/NaN at the
identity and at the centre elements); ``hpcflow.flows.spectral.unitary_eig`` wraps these
functions with a written-out backward.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch

__all__ = ["closed_form_eig", "eigh_eig", "hermitian_of", "in_inference_mode", "su2_eig", "su3_eig"]


def hermitian_of(w: torch.Tensor) -> torch.Tensor:
    """A Hermitian matrix with the eigenvectors of the unitary ``w: [..., N, N]`` (N = 2, 3).

    ``H = (e^{-i a} W - e^{i a} W^dagger) / 2i`` has eigenvalues ``sin(phi_k - a)``. Two of them
    coincide although ``phi_i != phi_j`` iff ``phi_i + phi_j = pi + 2a (mod 2 pi)``, which for
    ``det W = 1`` means: N = 2, ``a = pi/2``; N = 3, ``W`` has the eigenvalue ``z_a = -e^{-2ia}``.
    N = 2 takes ``a = 0``; N = 3 the ``a`` of :func:`_su3_rotation`.
    """
    if w.shape[-1] == 2:
        return (w - w.mH) / 2j
    cw = w * _su3_rotation(w.reshape(-1, 3, 3)).view(*w.shape[:-2], 1, 1)
    return (cw - cw.mH) / 2j


def _su3_rotation(x: torch.Tensor) -> torch.Tensor:
    """``e^{-i a}: [M]`` for SU(3) matrices ``x: [M, 3, 3]``: the ``a in {0, pi/3, 2 pi/3}``
    with the largest ``|det(z_a - W)|``, ``z_a = -e^{-2ia}``.

    With ``z_a^3 = -1`` (so ``z_a^2 = -conj(z_a)``) and ``t = tr W``,
    ``det(z - W) = z^3 - t z^2 + conj(t) z - 1 = 2 (Re(t conj z) - 1)``: one affine map of
    ``(Re t, Im t)`` for all three ``a`` at once. The three ``z_a`` are 120 degrees apart and
    three eigenvalues with zero angle sum cannot all sit near different ones, so no spurious
    degeneracy remains in :func:`hermitian_of`: every gap of ``H`` is at least half the
    corresponding gap ``|lambda_i - lambda_j|`` of ``W`` (measured on a 1000^2 grid of the
    eigen-angle torus; exactly equal for N = 2).
    """
    c = _constants(x.dtype, x.device, in_inference_mode())
    t = torch.view_as_real(x.diagonal(0, -2, -1).sum(-1))  # [M, 2]
    char = torch.addmm(c.minus_one, t, c.z_a)  # Re(t conj z_a) - 1: [M, 3]
    return c.phase[char.abs().argmax(-1)]


def eigh_eig(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``w: [..., N, N] -> (phi [..., N], V [..., N, N])`` by ``torch.linalg.eigh`` of
    :func:`hermitian_of` and Rayleigh quotients ``phi_k = arg(v_k^dagger W v_k)``."""
    _, v = torch.linalg.eigh(hermitian_of(w))
    return torch.angle((v.conj() * (w @ v)).sum(-2)), v


def closed_form_eig(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`su2_eig` or :func:`su3_eig` by the size of ``w: [..., N, N]``."""
    n = w.shape[-1]
    if n == 2:
        return su2_eig(w)
    if n == 3:
        return su3_eig(w)
    raise ValueError(f"closed_form_eig: supports N = 2 and 3, got N = {n}")


def in_inference_mode() -> bool:
    """Whether tensors made now are inference tensors, which autograd refuses to save: a key of
    the caches of constant tensors here and in :mod:`hpcflow.flows.spectral`. ``False`` while
    ``torch.compile`` traces (it cannot trace the query, and its graphs make the constants)."""
    return not torch.compiler.is_compiling() and torch.is_inference_mode_enabled()


class _Constants(NamedTuple):
    """Small constant tensors of the closed forms, made once per dtype and device (a tensor
    built from Python numbers on every call is an operation, and a host-to-device copy)."""

    z_a: torch.Tensor  # [2, 3] real: (Re z_a, Im z_a), z_a = -e^{-2ia}, a = 0, pi/3, 2 pi/3
    minus_one: torch.Tensor  # [3] real
    phase: torch.Tensor  # [3] complex: e^{-ia}
    eye: torch.Tensor  # [3, 3] complex
    half_gap: torch.Tensor  # [8, 3] real: B [2, 2] complex -> (Re(B00 - B11)/2, Re B01, -Im B01)
    su2_sign: torch.Tensor  # [4] real: W + sign * conj(flip(W)) = 2 (alpha, beta, ...)
    floor: float  # sqrt(tiny)


@functools.lru_cache(maxsize=32)
def _constants(dtype: torch.dtype, device: torch.device, inference: bool) -> _Constants:
    real = torch.zeros((), dtype=dtype).real.dtype
    a = torch.arange(3, dtype=torch.float64) * (math.pi / 3.0)
    z = -torch.polar(torch.ones_like(a), -2.0 * a)
    half_gap = torch.zeros(8, 3)
    half_gap[0, 0], half_gap[6, 0], half_gap[2, 1], half_gap[3, 2] = 0.5, -0.5, 1.0, -1.0

    def put(t, dt):
        return t.to(dtype=dt, device=device)

    return _Constants(
        z_a=put(torch.stack([z.real, z.imag]), real),
        minus_one=put(-torch.ones(3), real),
        phase=put(torch.polar(torch.ones_like(a), -a), dtype),
        eye=put(torch.eye(3), dtype),
        half_gap=put(half_gap, real),
        su2_sign=put(torch.tensor([1.0, -1.0, -1.0, 1.0]), real),
        floor=math.sqrt(torch.finfo(real).tiny),
    )


# ------------------------------------------------------------------------------------------------
# SU(2)
# ------------------------------------------------------------------------------------------------


def su2_eig(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form eigen-decomposition of SU(2): ``w: [..., 2, 2] -> (phi [..., 2], V)``.

    With ``W = a_0 1 + i a.sigma``, ``2 (a_0 + i a_3) = W_00 + conj W_11`` and
    ``2 (a_2 + i a_1) = W_01 - conj W_10`` (the projection onto SU(2)'s real form; the common
    factor 2 drops out of every angle below), the eigenvalues are ``a_0 +- i |a|``:
    ``phi = (theta, -theta)``, ``theta = atan2(|a|, a_0)`` in ``[0, pi]`` (``atan2`` keeps full
    precision near ``theta = 0`` and ``pi``, where ``acos(Re tr W / 2)`` loses half the digits;
    ``|a| = hypot(rho, a_3)`` cannot underflow). The ``+1`` eigenvector of ``a.sigma / |a|`` in
    polar angles ``a = |a| (sin t cos f, sin t sin f, cos t)`` is
    ``(p, q) = (cos(t/2), e^{if} sin(t/2))`` with ``t = atan2(rho, a_3)``,
    ``rho e^{if} = a_1 + i a_2 = i conj(W_01 - conj W_10) / 2``: accurate to rounding at every
    ``a`` (no cancellation, no branch). The other column is ``(-conj q, p)``, so
    ``V = [[p, -conj q], [q, p]]`` is in SU(2); at ``a = 0`` (``W = +-1``, every vector is an
    eigenvector) ``t = 0`` and ``V = 1``.
    """
    batch = w.shape[:-2]
    c = _constants(w.dtype, w.device, in_inference_mode())
    x = w.reshape(-1, 4)
    s = torch.addcmul(x, x.flip(-1).conj_physical(), c.su2_sign)  # 2 (a0 + i a3, a2 + i a1, ...)
    a0, a3 = torch.view_as_real(s)[:, 0].unbind(-1)
    beta = s[:, 1]
    rho = beta.abs()
    half = torch.atan2(rho, a3) * 0.5
    p = torch.cos(half)
    q = torch.polar(torch.sin(half), math.pi / 2 - beta.angle())
    theta = torch.atan2(torch.hypot(rho, a3), a0)
    v = torch.stack([p, q.conj_physical().neg(), q, p], -1).view(*batch, 2, 2)
    return torch.stack([theta, -theta], -1).view(*batch, 2), v


# ------------------------------------------------------------------------------------------------
# SU(3)
# ------------------------------------------------------------------------------------------------


def su3_eig(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form eigen-decomposition of SU(3): ``w: [..., 3, 3] -> (phi [..., 3], V)``.

    Why this route, and not the roots of ``lambda^3 - t lambda^2 + conj(t) lambda - 1``
    (``t = tr W``) on the unit circle: a root of a polynomial with rounded coefficients moves by
    ``eps^(1/k)`` at a k-fold root, so near the identity and the centre elements (triple roots)
    the angles would carry errors of ``eps^(1/3)`` (6e-6 in float64). Instead the traceless
    Hermitian ``Q = H - tr(H)/3``, ``H`` = :func:`hermitian_of` (same eigenvectors, no spurious
    degeneracies), is built from the matrix entries, so near ``W = z 1`` it is small with
    absolute errors ``eps``, and is scaled to ``tr Q^2 = 6`` (then ``p = 1`` below), times
    ``6^(-1/3)`` so that ``tr(q^3) = det(Q) / 2`` (``q`` = the scaled matrix); then:

    1. ``mu^3 - 3 mu - 2 c = 0`` with ``c = det(Q)/2 = tr(q^3)`` (Smith 1961, ``p = 1``).
       Only the best-separated eigenvalue is taken from it: the largest, ``2 cos(psi/3)``,
       ``cos psi = c``, if ``c >= 0``; the smallest (the same formula for ``-Q``) if ``c < 0``.
       Its derivative in ``cos psi`` is bounded (1/9 at ``psi = 0``), so it is accurate to
       rounding even where the other two nearly coincide (where the trigonometric formula gives
       them only to ``sqrt(eps)``).
    2. Its eigenvector: the longest column of the adjugate of ``A = q - mu 1`` (rank 2, every
       column proportional to the null vector), all three at once as the cross products of
       the row pairs of ``A`` (Kopp 2008). Both gaps of this eigenvalue are at least half the
       spread of the (scaled, order-one) spectrum, so the vector is accurate to rounding.
    3. Deflation: an orthonormal basis ``(u_1, u_2)`` of its complement
       (``u_1 = conj(v x e_m)``, ``e_m`` the basis vector of the smallest ``|v_m|``, so
       ``|v x e_m|^2 = 1 - |v_m|^2 >= 2/3``; ``u_2 = conj(v x u_1)``), the 2x2 Hermitian
       ``B = U^dagger q U`` and its eigenvectors as a rotation by the half angle
       ``atan2(|b|, d) / 2``, ``d = (B_00 - B_11)/2``, ``b = B_01 = |b| e^{if}``:
       ``(cos, e^{-if} sin)`` (no cancellation, no branch). The columns are orthonormal by
       construction, so ``V`` is unitary to rounding at any gap, and an eigenvector of the
       near-degenerate pair has the error ``eps / gap`` that any backward-stable method has
       (the reconstruction error stays at ``eps``). A 2x2 ``B`` proportional to 1 (two equal
       eigenvalues) keeps ``(u_1, u_2)``.
    4. ``phi_k = arg(v_k^dagger W v_k)`` (Rayleigh quotients: second-order accurate).

    No scaling by the largest entry is needed against underflow: where ``|Q|^2`` underflows,
    ``W`` is within ``sqrt(tiny)`` of ``z 1`` (the gaps of ``H`` bound those of ``W``), the
    norm is clamped there, every step stays finite, and any unitary ``V`` reconstructs ``W``.

    Returns ``phi = (pair, pair, isolated)`` in ``[-pi, pi]`` and ``V`` with those columns.
    """
    batch = w.shape[:-2]
    c = _constants(w.dtype, w.device, in_inference_mode())
    x = w.reshape(-1, 3, 3)
    cw = x * _su3_rotation(x).view(-1, 1, 1)
    k = cw - cw.conj_physical().mT  # 2i H
    diag = k.diagonal(0, -2, -1)
    diag -= diag.mean(-1, keepdim=True)  # 2i Q
    norm = _norm(k, (-3, -2, -1)).clamp_min(c.floor)
    q = k / (norm * (1j * 6.0 ** (-1.0 / 6.0))).view(-1, 1, 1)  # Q 6^(-1/3), tr Q^2 = 6

    # 1. the isolated eigenvalue (of q: mu 6^(-1/3)); tr(q^3) = Re sum_ij (q^2)_ij conj(q_ij)
    cubic = (torch.view_as_real(torch.bmm(q, q)) * torch.view_as_real(q)).sum((-3, -2, -1))
    mu = torch.copysign(torch.cos(cubic.abs().clamp_max(1.0).acos() / 3.0)
                        * (2.0 * 6.0 ** (-1.0 / 3.0)), cubic)
    # 2. its eigenvector: the rows r_k x r_{k+1} of g (rows r of A) are the columns k + 2 of
    # adj(A) (cyclic k)
    a = torch.addcmul(q, mu.view(-1, 1, 1), c.eye, value=-1.0)
    g = torch.linalg.cross(a, a.roll(-1, 1))
    longest, best = _norm(g, (-2, -1)).max(-1)
    v = g.gather(1, best.view(-1, 1, 1).expand(-1, 1, 3)) / longest.view(-1, 1, 1)  # [M, 1, 3]
    # 3. the complement as the rows of conj(U) = (conj u_1, conj u_2): [M, 2, 3], and the 2x2
    # problem B = U^dagger q U in it; (d, Re b, -Im b) by one product with a constant
    u1c = torch.linalg.cross(v, c.eye[v.abs().argmin(-1)])
    u1c = u1c / _norm(u1c, (-2, -1))[..., None]
    uc = torch.cat([u1c, torch.linalg.cross(v, u1c.conj_physical())], 1)
    u = uc.mH  # [M, 3, 2]: columns u_1, u_2
    b = torch.bmm(uc, torch.bmm(q, u))
    d, b_re, b_im = torch.mm(torch.view_as_real(b).view(-1, 8), c.half_gap).unbind(-1)
    half = torch.atan2(torch.hypot(b_re, b_im), d) * 0.5
    cos, sin = torch.cos(half), torch.polar(torch.sin(half), torch.atan2(b_im, b_re))
    rot = torch.stack([cos, sin, sin.conj_physical().neg(), cos], -1).view(-1, 2, 2)  # R^T
    vt = torch.cat([torch.bmm(rot, uc.conj()), v], 1)  # V^T, rows (y, z, v): [M, 3, 3]
    # 4. Rayleigh quotients v_k^dagger W v_k = sum_i conj(V^T)_ki (V^T W^T)_ki
    phi = torch.angle((vt.conj_physical() * torch.bmm(vt, x.mT)).sum(-1))
    return phi.view(*batch, 3), vt.mT.view(*batch, 3, 3)


def _norm(z: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """2-norm of the complex ``z`` over ``dims`` of its real view ``[..., 2]`` (``-1``: real and
    imaginary parts): on CPUs ``vector_norm`` of a complex tensor is ten times slower."""
    return torch.linalg.vector_norm(torch.view_as_real(z), dim=dims)
