"""Link representations and loop transforms, one per group family.

A coupling layer (``coupling.py``) is written once for every group; what differs between U(1)
and SU(N) lives here, behind four operations:

- ``to_internal`` / ``from_internal``: public links ``[B, Nd, *L, Nc, Nc]`` <-> the internal form
  the flow works on (U(1): angles ``[B, Nd, *L]``; SU(N): the matrices themselves);
- ``loop_features``: gauge-invariant channels of a frozen loop (docs/physics.md, "Frozen loops");
- ``transform``: the conjugation-equivariant map ``h(W | params)`` of an active open loop, with
  its log-Jacobian with respect to the Haar measure;
- ``update_link``: ``U' = W' W^dagger U`` (for angles ``theta' = theta + phi' - phi``).
"""

from __future__ import annotations

import math

import torch

from ..lattice.groups import U1, Algebra, Angles, Group
from .splines import circular_rqs, n_params_circular, n_params_ncp, ncp_mixture

__all__ = ["LinkTransform", "U1Transform"]


class LinkTransform:
    """Interface of the group-specific parts of a gauge-equivariant coupling layer."""

    group: Group
    algebra: Algebra
    n_params: int
    n_features: int

    def to_internal(self, links: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def from_internal(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loop_features(self, w: torch.Tensor) -> torch.Tensor:
        """Gauge-invariant features of loops ``w: [B, *L, *E] -> [B, n_features, *L]``."""
        raise NotImplementedError

    def transform(self, w, params, *, inverse: bool = False):
        """``(w', log J)`` for open loops ``w: [B, n, *E]`` and ``params: [B, n, n_params]``;
        ``log J: [B, n]`` is the log-Jacobian of the map applied (Haar measure)."""
        raise NotImplementedError

    def update_link(self, u, w_old, w_new):
        """``U' = W' W^dagger U`` for links ``u: [B, n, *E]``."""
        raise NotImplementedError


class U1Transform(LinkTransform):
    """U(1) on angles: ``phi' = RQS(phi | NN) + bias mod 2 pi`` (talk: "Rational quadratic
    spline with bias"), or a mixture of non-compact projections (arXiv:2003.06413).

    The Haar measure of U(1) is ``d phi / 2 pi``, so ``log J = log d phi' / d phi``.
    ``fused``: splines by the fused C++ kernel on CPUs (:mod:`hpcflow.kernels`; same map to
    rounding).
    """

    group = U1()
    algebra = Angles()
    n_features = 2

    def __init__(self, kind: str = "spline", bins: int = 8, *, fused: bool = False):
        if kind not in ("spline", "ncp"):
            raise ValueError(f"unknown U(1) transform {kind!r}; expected spline or ncp")
        self.kind = kind
        self.fused = bool(fused)
        self.n_params = n_params_circular(bins) if kind == "spline" else n_params_ncp(bins)

    def to_internal(self, links):
        return U1.angle(links)

    def from_internal(self, x):
        return U1.from_angle(x)

    def loop_features(self, w):
        return torch.stack([torch.cos(w), torch.sin(w)], dim=1)

    def transform(self, w, params, *, inverse=False):
        if self.kind == "spline":
            return circular_rqs(w, params, inverse=inverse, fused=self.fused)
        return ncp_mixture(w, params, inverse=inverse)

    def update_link(self, u, w_old, w_new):
        return torch.remainder(u + (w_new - w_old), 2 * math.pi)
