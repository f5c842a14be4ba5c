"""Gauge-invariant observables: plaquette, Wilson loops, Polyakov loops, the 2D U(1) topological
charge and the 4D clover charge, and :func:`measure`, the set every sampler stores per
configuration.

All take ``links: [B, Nd, *L, Nc, Nc]`` and return one value per configuration ``[B]``
(docs/physics.md, "Exact results" for the conventions of the topological charge).
"""

from __future__ import annotations

import itertools
import math

import torch

from .action import loop_density
from .groups import Group
from .loops import closed_loop_trace, path_product, plaquette_path

__all__ = [
    "average_plaquette",
    "wilson_loop",
    "wilson_loop_path",
    "polyakov_loop",
    "topological_charge",
    "clover_field_strength",
    "clover_charge",
    "measure",
    "measured_names",
    "OBSERVABLES",
]


def average_plaquette(links: torch.Tensor, group: Group) -> torch.Tensor:
    """``<(1/Nc) Re tr P>`` over sites and planes: ``[B]``."""
    return loop_density(links, group, "plaquette").flatten(1).mean(1)


def wilson_loop_path(mu: int, nu: int, r: int, t: int):
    """The ``r x t`` rectangle ``+mu^r +nu^t -mu^r -nu^t``."""
    return ((mu, 1),) * r + ((nu, 1),) * t + ((mu, -1),) * r + ((nu, -1),) * t


def wilson_loop(links: torch.Tensor, group: Group, r: int, t: int) -> torch.Tensor:
    """``<(1/Nc) Re tr W(r x t)>`` averaged over sites and all ordered planes ``mu != nu``
    (side ``r`` along ``mu``): ``[B]``."""
    nd = links.shape[1]
    vals = [
        closed_loop_trace(links, wilson_loop_path(mu, nu, r, t), group).real.flatten(1).mean(1)
        for mu, nu in itertools.permutations(range(nd), 2)
    ]
    return torch.stack(vals, 0).mean(0) / group.nc


def polyakov_loop(links: torch.Tensor, group: Group, axis: int = 0) -> torch.Tensor:
    """``(1/Nc) tr prod_t U_axis(x + t e_axis)`` averaged over the other sites: ``[B]`` complex."""
    length = links.shape[2 + axis]
    line = wilson_loop_path(axis, axis, length, 0)[:length]
    return closed_loop_trace(links, line, group).flatten(1).mean(1) / group.nc


def topological_charge(links: torch.Tensor, group: Group) -> torch.Tensor:
    """2D U(1) charge ``Q = (1/2 pi) sum_x arg P_01(x)``, ``arg`` in ``(-pi, pi]``: ``[B]``.

    An integer up to round-off on any configuration (the plaquette angles sum to a multiple of
    2 pi on the torus).
    """
    if links.shape[1] != 2 or group.nc != 1:
        raise ValueError("the topological charge is defined here for 2D U(1) only")
    plaq = closed_loop_trace(links, plaquette_path(0, 1), group)
    return torch.angle(plaq).flatten(1).sum(1) / (2 * math.pi)


def _clover_leaves(mu: int, nu: int):
    """The four plaquettes of the ``(mu, nu)`` plane that touch ``x``, each walked
    counter-clockwise from ``x``."""
    return (((mu, 1), (nu, 1), (mu, -1), (nu, -1)),
            ((nu, 1), (mu, -1), (nu, -1), (mu, 1)),
            ((mu, -1), (nu, -1), (mu, 1), (nu, 1)),
            ((nu, -1), (mu, 1), (nu, 1), (mu, -1)))


def clover_field_strength(links: torch.Tensor, group: Group, mu: int, nu: int) -> torch.Tensor:
    """Clover field strength ``A_{mu nu}(x) = (C - C^dag) / 8`` (traceless part for SU(N)),
    ``C`` the sum of the four leaves at ``x``: ``[B, *L, Nc, Nc]``, anti-Hermitian, with
    ``F_{mu nu} = -i A_{mu nu} = a^2 G_{mu nu} + O(a^4)``."""
    clover = None
    for leaf in _clover_leaves(mu, nu):
        w = path_product(links, leaf, group)
        clover = w if clover is None else clover + w
    a = (clover - clover.conj().transpose(-1, -2)) / 8
    if group.nc > 1:
        eye = torch.eye(group.nc, dtype=a.dtype, device=a.device)
        a = a - (torch.diagonal(a, dim1=-2, dim2=-1).sum(-1) / group.nc)[..., None, None] * eye
    return a


def clover_charge(links: torch.Tensor, group: Group) -> torch.Tensor:
    """4D field-theoretic topological charge with the clover ``F`` (no smoothing): ``[B]``.

    ``Q = (1 / 32 pi^2) sum_x eps_{mu nu rho sigma} tr F_{mu nu} F_{rho sigma}
    = -(1 / 4 pi^2) sum_x Re tr (A_01 A_23 - A_02 A_13 + A_03 A_12)`` (Di Vecchia, Fabricius,
    Rossi, Veneziano, Nucl. Phys. B192 (1981) 392; clover form of Bilson-Thompson, Leinweber,
    Williams, hep-lat/0203008). Not an integer on rough configurations: renormalization or
    gradient-flow smoothing is the user's next step; a U(1) configuration of constant fluxes
    ``n_01``, ``n_23`` gives ``n_01 n_23`` up to ``O(1 / (L_0 L_1))`` (tests).
    """
    if links.shape[1] != 4:
        raise ValueError("the clover charge is defined for 4D lattices")
    pairs = (((0, 1), (2, 3), 1.0), ((0, 2), (1, 3), -1.0), ((0, 3), (1, 2), 1.0))
    total = None
    for (a, b), (c, d), sign in pairs:
        fa = clover_field_strength(links, group, a, b)
        fc = clover_field_strength(links, group, c, d)
        term = sign * (fa * fc.transpose(-1, -2)).sum((-1, -2)).real.flatten(1).sum(1)
        total = term if total is None else total + term
    return -total / (4 * math.pi**2)


OBSERVABLES = ("plaquette", "wilson_1x2", "wilson_2x2", "polyakov_abs", "topological_charge",
               "q_squared")
"""Names :func:`measure` can return (the charge and its square only where one is defined)."""


def measured_names(group: Group, nd: int) -> tuple[str, ...]:
    """The names :func:`measure` returns for ``group`` in ``nd`` dimensions."""
    charge = nd == 4 or (nd == 2 and group.nc == 1)
    return OBSERVABLES if charge else OBSERVABLES[:4]


def measure(links: torch.Tensor, group: Group) -> dict[str, torch.Tensor]:
    """The observables every sampler stores per configuration: name -> ``[B]`` float.

    ``plaquette``, ``wilson_1x2``, ``wilson_2x2`` (all planes), ``polyakov_abs`` (``|P|``
    along axis 0); ``topological_charge`` and ``q_squared``: the exact 2D U(1) charge, or the
    clover charge in 4D (:func:`clover_charge`); none in 3D or for SU(N) in 2D.
    """
    nd = links.shape[1]
    out = {"plaquette": average_plaquette(links, group),
           "wilson_1x2": wilson_loop(links, group, 1, 2),
           "wilson_2x2": wilson_loop(links, group, 2, 2),
           "polyakov_abs": polyakov_loop(links, group, axis=0).abs()}
    q = None
    if nd == 2 and group.nc == 1:
        q = topological_charge(links, group)
    elif nd == 4:
        q = clover_charge(links, group)
    if q is not None:
        out["topological_charge"] = q
        out["q_squared"] = q**2
    return out
