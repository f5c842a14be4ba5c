"""Gauge-invariant observables: plaquette, Wilson loops, Polyakov loops, 2D topological charge.

All take ``links: [B, Nd, *L, Nc, Nc]`` and return one value per configuration ``[B]``
(docs/physics.md, "Exact results" for the conventions of the topological charge).
"""

from __future__ import annotations

import itertools
import math

import torch

from .action import loop_density
from .groups import Group
from .loops import closed_loop_trace, plaquette_path

__all__ = [
    "average_plaquette",
    "wilson_loop",
    "wilson_loop_path",
    "polyakov_loop",
    "topological_charge",
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
