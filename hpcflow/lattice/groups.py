"""Gauge groups U(1) and SU(N) behind one interface.

Group elements are complex matrices with the colour indices last: ``[..., Nc, Nc]``; U(1) is the
``Nc = 1`` case, so that every public tensor of the project has the layout
``links: [B, Nd, L_0, ..., L_{Nd-1}, Nc, Nc]`` (docs/physics.md, "Lattice and fields").
U(1) overrides the matrix operations with elementwise ones (a 1x1 product is a scalar product).

The loop walker (``loops.py``) only needs ``mul``, ``dagger`` and ``elem_dims``; the
:class:`Angles` algebra lets the same walker build U(1) loops on angles and :class:`Counts`
count active links on loops (masks), so one walker serves every use.
"""

from __future__ import annotations

import math
import re

import torch

__all__ = [
    "Algebra",
    "Angles",
    "Counts",
    "Group",
    "U1",
    "SUN",
    "get_group",
    "haar_unitary",
    "gauge_transform",
    "random_gauge",
]


class Algebra:
    """The operations a path walker needs: an associative product and an inverse.

    ``elem_dims`` is the number of trailing tensor dimensions of one element
    (2 for matrices ``[Nc, Nc]``, 0 for scalars such as U(1) angles).
    """

    elem_dims: int = 2
    linear: bool = False
    """Whether a path product is a linear function of the links (U(1) angles: a signed sum),
    so that a table of paths is a matrix (:func:`hpcflow.lattice.loops.loop_matrix`)."""

    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def dagger(self, a: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extend(self, flat: torch.Tensor) -> torch.Tensor:
        """Links ``[B, n, *E]`` -> ``[B, 2 n + 1, *E]``: the links, their daggers and the unit
        element, the array that :func:`hpcflow.lattice.loops.table_product` gathers from (a
        backward step reads ``n + i``, a padding step ``2 n``; no per-step ``where``)."""
        raise NotImplementedError

    def reduce_steps(self, links: torch.Tensor) -> torch.Tensor:
        """Ordered product along axis 1 of step-major ``[B, len, n, *E]`` (no daggers):
        ``[B, n, *E]``. ``unbind``, not indexing: each step is a contiguous slice, and the
        backward stacks the steps' gradients once (the backward of each ``links[:, s]`` would
        fill a zero tensor of the whole gather: ~25% of an SU(3) 4^4 training step)."""
        steps = links.unbind(1)
        out = steps[0]
        for step in steps[1:]:
            out = self.mul(out, step)
        return out


class Angles(Algebra):
    """U(1) on angles: the product of phases is the sum of angles; the inverse is the negative."""

    elem_dims = 0
    linear = True

    def mul(self, a, b):
        return a + b

    def dagger(self, a):
        return -a

    def extend(self, flat):
        return torch.cat([flat, -flat, flat.new_zeros(flat.shape[0], 1)], dim=1)

    def reduce_steps(self, links):
        return links.sum(1)


class Counts(Algebra):
    """Indicator fields: a path 'product' counts how many marked links it crosses.

    Both orientations of a link count once, so the inverse is the identity map.
    """

    elem_dims = 0

    def mul(self, a, b):
        return a + b

    def dagger(self, a):
        return a

    def extend(self, flat):
        return torch.cat([flat, flat, flat.new_zeros(flat.shape[0], 1)], dim=1)

    def reduce_steps(self, links):
        return links.sum(1)


class Group(Algebra):
    """A compact matrix group acting on ``[..., Nc, Nc]`` complex tensors.

    Subclasses: :class:`U1`, :class:`SUN`. Instances are stateless and compare by name.
    """

    name: str = ""
    nc: int = 1

    # ------------------------------------------------------------------ basic algebra
    def mul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Matrix product ``a @ b`` of ``[..., Nc, Nc]`` tensors (broadcasting)."""
        return a @ b

    def dagger(self, a: torch.Tensor) -> torch.Tensor:
        """Hermitian conjugate ``a^dagger``: ``[..., Nc, Nc] -> [..., Nc, Nc]``."""
        return a.conj().transpose(-1, -2)

    def extend(self, flat: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(self.nc, dtype=flat.dtype, device=flat.device)
        return torch.cat([flat, self.dagger(flat),
                          eye.expand(flat.shape[0], 1, self.nc, self.nc)], dim=1)

    def trace(self, a: torch.Tensor) -> torch.Tensor:
        """Trace over colour: ``[..., Nc, Nc] -> [...]`` (complex)."""
        return a.diagonal(dim1=-2, dim2=-1).sum(-1)

    def identity(self, shape, *, dtype=torch.complex128, device=None) -> torch.Tensor:
        """The unit element broadcast to ``[*shape, Nc, Nc]``."""
        eye = torch.eye(self.nc, dtype=dtype, device=device)
        return eye.expand(*shape, self.nc, self.nc).clone()

    # ------------------------------------------------------------------ sampling, projection
    def random(self, shape, *, generator=None, dtype=torch.complex128, device=None):
        """Haar-distributed elements ``[*shape, Nc, Nc]`` (exact, see subclasses)."""
        return self.from_noise(self.noise(shape, generator=generator, dtype=dtype, device=device))

    noise_kind: str | None = None
    """What :meth:`noise` draws: ``"uniform"`` in (0, 1) or standard ``"normal"`` numbers (the
    counter-based prior, :func:`hpcflow.flows.prior.prior_noise`, draws the same kind; a group
    that says neither has no such prior)."""

    def noise(self, shape, *, generator=None, dtype=torch.complex128, device=None):
        """The random numbers behind :meth:`random` (real tensor, group-specific layout).

        Split from :meth:`from_noise` so that noise can come from many small per-sample
        streams while the linear algebra runs once on the whole batch.
        """
        raise NotImplementedError

    def from_noise(self, noise: torch.Tensor) -> torch.Tensor:
        """Haar-distributed elements from :meth:`noise` output."""
        raise NotImplementedError

    def project(self, a: torch.Tensor) -> torch.Tensor:
        """Nearest group element (in Frobenius norm) to a matrix ``[..., Nc, Nc]``."""
        raise NotImplementedError

    def __eq__(self, other) -> bool:
        return isinstance(other, Group) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class U1(Group):
    """U(1): phases ``exp(i theta)`` stored as ``[..., 1, 1]`` complex tensors.

    Products, inverses and traces are elementwise; ``angle``/``from_angle`` convert to and from
    the angle representation the U(1) flows use inside.
    """

    noise_kind = "uniform"

    name = "U1"
    nc = 1

    def mul(self, a, b):
        return a * b

    def dagger(self, a):
        return a.conj()

    def trace(self, a):
        return a[..., 0, 0]

    def noise(self, shape, *, generator=None, dtype=torch.complex128, device=None):
        """Uniform numbers on ``[0, 1)``, ``[*shape]``."""
        return torch.rand(*shape, generator=generator, dtype=_real_dtype(dtype), device=device)

    def from_noise(self, noise):
        """Uniform angles ``2 pi u``: the normalized Haar measure of U(1)."""
        return self.from_angle(2 * math.pi * noise)

    def project(self, a):
        return a / a.abs().clamp_min(torch.finfo(a.real.dtype).tiny)

    @staticmethod
    def angle(a: torch.Tensor) -> torch.Tensor:
        """``[..., 1, 1]`` complex -> ``[...]`` angle in ``(-pi, pi]``."""
        return torch.angle(a[..., 0, 0])

    @staticmethod
    def from_angle(theta: torch.Tensor) -> torch.Tensor:
        """``[...]`` real angle -> ``[..., 1, 1]`` complex phase."""
        return torch.polar(torch.ones_like(theta), theta)[..., None, None]


class SUN(Group):
    """SU(N), N >= 2: special unitary ``N x N`` matrices."""

    noise_kind = "normal"

    def __init__(self, n: int):
        if n < 2:
            raise ValueError(f"SU(N) needs N >= 2, got N = {n}")
        self.nc = n
        self.name = f"SU{n}"

    def noise(self, shape, *, generator=None, dtype=torch.complex128, device=None):
        """Standard normal numbers ``[*shape, N, N, 2]`` (real and imaginary parts)."""
        n = self.nc
        real = _real_dtype(dtype)
        return torch.randn(*shape, n, n, 2, generator=generator, dtype=real, device=device)

    def from_noise(self, noise):
        """Exact Haar sampling (docs/physics.md, "Haar sampling of SU(N)").

        QR of a complex Gaussian matrix, phases of ``diag(R)`` moved into ``Q`` (without this
        the result is not Haar), then division by one N-th root of ``det Q``.
        Returns ``[*shape, N, N]``.
        """
        q = _haar_from_gaussian(noise)
        # QR returns column-major matrices; row-major keeps later batched products fast.
        return _divide_det_root(q).contiguous()

    def project(self, a):
        """Closest SU(N) matrix: unitary polar factor ``U S V^dagger``-style via SVD, then
        the determinant phase removed by an N-th root."""
        u, _, vh = torch.linalg.svd(a)
        return _divide_det_root(u @ vh)


def haar_unitary(n: int, shape, *, generator=None, dtype=torch.complex128, device=None):
    """Haar-distributed U(N) matrices ``[*shape, n, n]`` (Mezzadri, math-ph/0609050).

    QR of a complex Gaussian matrix with the phases of ``diag(R)`` moved into ``Q``.
    """
    real = _real_dtype(dtype)
    noise = torch.randn(*shape, n, n, 2, generator=generator, dtype=real, device=device)
    return _haar_from_gaussian(noise)


def _haar_from_gaussian(noise: torch.Tensor) -> torch.Tensor:
    """``[..., n, n, 2]`` standard normals -> Haar U(n) ``[..., n, n]`` (QR with phase fix)."""
    z = torch.complex(noise[..., 0], noise[..., 1]) / math.sqrt(2.0)
    q, r = torch.linalg.qr(z)
    d = r.diagonal(dim1=-2, dim2=-1)
    return q * (d / d.abs()).unsqueeze(-2)


def _divide_det_root(q: torch.Tensor) -> torch.Tensor:
    """Map ``U(N)`` to ``SU(N)``: ``q / det(q)^(1/N)`` with the principal root."""
    n = q.shape[-1]
    phase = torch.angle(torch.linalg.det(q)) / n
    return q * torch.polar(torch.ones_like(phase), -phase)[..., None, None]


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dtype, dtype)


def get_group(name: str) -> Group:
    """Group from its configuration name: ``"U1"``, ``"SU2"``, ``"SU3"``, ``"SU<N>"``.

    Raises ``ValueError`` naming the accepted forms for anything else.
    """
    if name == "U1":
        return U1()
    m = re.fullmatch(r"SU(\d+)", str(name))
    if m and int(m.group(1)) >= 2:
        return SUN(int(m.group(1)))
    raise ValueError(f"unknown gauge group {name!r}; expected 'U1' or 'SU<N>' with N >= 2")


def random_gauge(group: Group, batch: int, shape, *, generator=None,
                 dtype=torch.complex128, device=None) -> torch.Tensor:
    """Random gauge transformation ``Omega: [batch, *L, Nc, Nc]``, Haar at every site."""
    return group.random((batch, *shape), generator=generator, dtype=dtype, device=device)


def gauge_transform(links: torch.Tensor, omega: torch.Tensor, group: Group) -> torch.Tensor:
    """Apply ``U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu)^dagger`` (docs/physics.md, Gauge symmetry).

    links: ``[B, Nd, *L, Nc, Nc]``; omega: ``[B, *L, Nc, Nc]``. Returns the transformed links.
    """
    nd = links.shape[1]
    out = []
    for mu in range(nd):
        omega_fwd = torch.roll(omega, -1, dims=1 + mu)  # Omega(x + mu)
        out.append(group.mul(group.mul(omega, links[:, mu]), group.dagger(omega_fwd)))
    return torch.stack(out, dim=1)
