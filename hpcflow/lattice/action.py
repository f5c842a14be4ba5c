"""Lattice gauge actions: Wilson plaquette action with an optional 2x1 rectangle term.

``S(U) = -(beta / Nc) sum_x [c0 sum_{mu<nu} Re tr P_{mu nu}(x) + c1 sum_R Re tr R(x)]``,
``c0 = 1 - 8 c1`` (PHYSICS.md, "Action and target"); ``c1 = 0`` is the Wilson action, for U(1)
``-beta sum cos theta_P``. Lüscher-Weisz tree level: ``c1 = -1/12``; Iwasaki: ``c1 = -0.331``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .groups import Group
from .loops import closed_loop_trace, loops_of_shape

__all__ = ["loop_density", "action_density", "GaugeAction"]


def loop_density(links: torch.Tensor, group: Group, shape: str) -> torch.Tensor:
    """``(1/Nc) Re tr W(x)`` for every loop of one family: ``[B, Nd, *L, Nc, Nc] -> [B, n, *L]``
    with ``n`` the number of loops of that family per site (e.g. 6 plaquettes in 4D)."""
    nd = links.shape[1]
    traces = [closed_loop_trace(links, lp.path, group).real for lp in loops_of_shape(shape, nd)]
    return torch.stack(traces, dim=1) / group.nc


def action_density(links: torch.Tensor, group: Group, beta: float, c1: float = 0.0):
    """Action per site ``s(x)``, with ``S = sum_x s(x)``: ``[B, Nd, *L, Nc, Nc] -> [B, *L]``."""
    s = (1.0 - 8.0 * c1) * loop_density(links, group, "plaquette").sum(1)
    if c1 != 0.0:
        s = s + c1 * loop_density(links, group, "rectangle").sum(1)
    return -beta * s


@dataclass(frozen=True)
class GaugeAction:
    """The target's action as a callable: ``links [B, Nd, *L, Nc, Nc] -> S [B]`` (real).

    ``exp(-S)`` is the target density with respect to the normalized Haar measure.
    """

    group: Group
    beta: float
    c1: float = 0.0

    def __call__(self, links: torch.Tensor) -> torch.Tensor:
        density = action_density(links, self.group, self.beta, self.c1)
        return density.flatten(1).sum(1)
