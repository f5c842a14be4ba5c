"""The Lie algebra of U(1) and SU(N): orthonormal basis, projection, exponential, kinetic energy.

Conventions: traceless anti-Hermitian matrices (for U(1), ``i R``), inner product
``<A, B> = Re tr(A^dag B) = -Re tr(A B)``, orthonormal basis ``T_a`` (:func:`algebra_basis`:
``i/sqrt(2)`` times the generalized Gell-Mann matrices, ``T = i`` for U(1)). Used by the HMC
force and integrators (``hpcflow.updates.hmc``) and by the Lie-algebra Jacobian tests of the
flows. Layout: algebra elements ``[..., Nc, Nc]`` complex.
"""

from __future__ import annotations

import math

import torch

from .groups import Group

__all__ = ["algebra_basis", "algebra_exp", "kinetic_energy", "project_algebra"]

def algebra_basis(group: Group, *, dtype=torch.complex128, device=None) -> torch.Tensor:
    """Orthonormal basis ``T_a`` of the Lie algebra: ``[n_gen, Nc, Nc]``.

    Anti-Hermitian, traceless for SU(N), ``Re tr(T_a^dag T_b) = delta_ab``. U(1): ``[[i]]``.
    SU(N), ``n_gen = N^2 - 1``: ``i (E_jk + E_kj)/sqrt 2``, ``(E_jk - E_kj)/sqrt 2`` for ``j < k``
    and ``i (E_00 + ... + E_{l-1,l-1} - l E_ll)/sqrt(l (l + 1))`` for ``l = 1 .. N-1``
    (``i/sqrt 2`` times the generalized Gell-Mann matrices).
    """
    n = group.nc
    if n == 1:
        return torch.full((1, 1, 1), 1j, dtype=dtype, device=device)
    basis = []
    for j in range(n):
        for k in range(j + 1, n):
            sym = torch.zeros(n, n, dtype=dtype)
            sym[j, k] = sym[k, j] = 1j / math.sqrt(2)
            anti = torch.zeros(n, n, dtype=dtype)
            anti[j, k], anti[k, j] = 1 / math.sqrt(2), -1 / math.sqrt(2)
            basis += [sym, anti]
    for l in range(1, n):
        diag = torch.zeros(n, dtype=dtype)
        diag[:l] = 1.0
        diag[l] = -l
        basis.append(torch.diag(diag) * (1j / math.sqrt(l * (l + 1))))
    return torch.stack(basis).to(device)


def project_algebra(m: torch.Tensor, group: Group | None = None) -> torch.Tensor:
    """``Pi(M)``: the traceless anti-Hermitian part ``(M - M^dag)/2 - tr(M - M^dag)/(2 Nc)``.

    This is the orthogonal projection onto the algebra for ``<A, B> = Re tr(A^dag B)``, so
    ``Re tr(T_a^dag M) = Re tr(T_a^dag Pi(M))`` for every generator. U(1) (``Nc = 1``):
    ``i Im M``. ``[..., Nc, Nc] -> [..., Nc, Nc]`` (``Nc`` from the shape; ``group`` is not
    needed).
    """
    nc = m.shape[-1]
    a = 0.5 * (m - m.conj().transpose(-1, -2))
    if nc > 1:
        tr = a.diagonal(dim1=-2, dim2=-1).sum(-1) / nc
        a = a - tr[..., None, None] * torch.eye(nc, dtype=a.dtype, device=a.device)
    return a


def algebra_exp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Group element ``exp(X)`` of algebra elements ``X: [..., Nc, Nc]``.

    Closed forms where they exist (both exact to round-off, checked against
    ``torch.linalg.matrix_exp`` in the tests, and several times faster on batches of small
    matrices): U(1) the elementwise exponential of ``i theta``; SU(2)
    ``exp(X) = cos(t) I + (sin(t)/t) X`` with ``t^2 = -tr(X^2)/2``; SU(3) Cayley-Hamilton
    (:func:`_exp_su3`). SU(N), N >= 4: ``torch.linalg.matrix_exp``.
    ``exp(-X) = exp(X)^{-1}`` to round-off, as reversibility needs.
    """
    n = group.nc
    if n == 1:
        return torch.exp(x)
    if n == 2:
        t2 = (-0.5 * _trace_of_product(x, x).real).clamp_min(0.0)
        # Taylor series near t = 0 keep the gradient finite there (sqrt has none at 0)
        small = t2 < 1e-6
        t = torch.sqrt(torch.where(small, torch.ones_like(t2), t2))
        cos = torch.where(small, 1 - t2 / 2 + t2 * t2 / 24, torch.cos(t))[..., None, None]
        sinc = torch.where(small, 1 - t2 / 6 + t2 * t2 / 120, torch.sin(t) / t)[..., None, None]
        return cos * torch.eye(2, dtype=x.dtype, device=x.device) + sinc * x
    if n == 3:
        return _exp_su3(x)
    return torch.linalg.matrix_exp(x)


def _trace_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``tr(A B)`` without forming ``A B``: ``[..., n, n] x [..., n, n] -> [...]``."""
    return (a * b.transpose(-1, -2)).sum((-1, -2))


def _exp_su3(x: torch.Tensor) -> torch.Tensor:
    """``exp(X)`` for traceless anti-Hermitian 3x3 ``X`` by Cayley-Hamilton
    (Morningstar & Peardon, Phys. Rev. D 69 (2004) 054501, sec. III).

    With the Hermitian traceless ``Q = -i X``: ``exp(i Q) = f0 I + f1 Q + f2 Q^2``,
    ``c0 = det Q = tr(Q^3)/3``, ``c1 = tr(Q^2)/2``, ``c0max = 2 (c1/3)^(3/2)``,
    ``theta = arccos(|c0|/c0max)``, ``u = sqrt(c1/3) cos(theta/3)``, ``w = sqrt(c1) sin(theta/3)``,
    ``f_j = h_j / (9 u^2 - w^2)`` with ``xi0(w) = sin(w)/w`` and
    ``h0 = (u^2 - w^2) e^{2iu} + e^{-iu} [8 u^2 cos w + 2 i u (3 u^2 + w^2) xi0]``,
    ``h1 = 2 u e^{2iu} - e^{-iu} [2 u cos w - i (3 u^2 - w^2) xi0]``,
    ``h2 = e^{2iu} - e^{-iu} [cos w + 3 i u xi0]``; for ``c0 < 0``:
    ``f_j(c0) = (-1)^j f_j(-c0)^*``. ``9 u^2 - w^2 >= 2 c1``: only ``Q = 0`` needs its limit
    ``(f0, f1, f2) = (1, i, -1/2)``.
    """
    q = -1j * x
    q2 = q @ q
    c1 = 0.5 * q2.diagonal(dim1=-2, dim2=-1).sum(-1).real
    c0 = _trace_of_product(q2, q).real / 3.0
    tiny = torch.finfo(c1.dtype).tiny ** 0.5
    safe = c1 > tiny
    c1s = torch.where(safe, c1, torch.ones_like(c1))
    c0max = 2.0 * (c1s / 3.0) ** 1.5
    theta = torch.arccos((c0.abs() / c0max).clamp(max=1.0))
    u = torch.sqrt(c1s / 3.0) * torch.cos(theta / 3.0)
    w = torch.sqrt(c1s) * torch.sin(theta / 3.0)
    u2, w2 = u * u, w * w
    xi0 = torch.sinc(w / math.pi)
    cos_w = torch.cos(w)
    e2iu = torch.polar(torch.ones_like(u), 2.0 * u)
    emiu = torch.polar(torch.ones_like(u), -u)
    h0 = (u2 - w2) * e2iu + emiu * torch.complex(8 * u2 * cos_w, 2 * u * (3 * u2 + w2) * xi0)
    h1 = 2 * u * e2iu - emiu * torch.complex(2 * u * cos_w, -(3 * u2 - w2) * xi0)
    h2 = e2iu - emiu * torch.complex(cos_w, 3 * u * xi0)
    den = 9 * u2 - w2
    neg = c0 < 0
    f = []
    for j, (h, limit) in enumerate(((h0, 1.0), (h1, 1j), (h2, -0.5))):
        fj = h / den
        fj = torch.where(neg, (-1) ** j * fj.conj(), fj)
        f.append(torch.where(safe, fj, torch.full_like(fj, limit)))
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    return f[0][..., None, None] * eye + f[1][..., None, None] * q + f[2][..., None, None] * q2


def kinetic_energy(momenta: torch.Tensor) -> torch.Tensor:
    """``K = (1/2) sum_links sum_ij |P_ij|^2 = -(1/2) sum_links tr P^2``:
    ``[B, Nd, *L, Nc, Nc] -> [B]`` real."""
    return 0.5 * (momenta.real.square() + momenta.imag.square()).flatten(1).sum(1)

