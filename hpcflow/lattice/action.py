"""Lattice gauge actions, their staples and their force.

``S(U) = -(beta / Nc) sum_x [c0 sum_{mu<nu} Re tr P_{mu nu}(x) + c1 sum_R Re tr R(x)]``,
``c0 = 1 - 8 c1`` (docs/physics.md, "Action and target"); ``c1 = 0`` is the Wilson action, for
U(1) ``-beta sum cos theta_P``. Lüscher-Weisz tree level: ``c1 = -1/12``; Iwasaki: ``c1 = -0.331``.

Staples: ``A_mu(x)`` with ``d/dt S(exp(t X) U)|_0 = -(beta/Nc) sum_{x,mu} Re tr(X_mu(x) U_mu(x)
A_mu(x))``, so that the part of the action that holds the link ``U_mu(x)`` is
``-(beta/Nc) Re tr(U_mu(x) A_mu(x))`` (Wilson action; the heat bath and over-relaxation of
``hpcflow.updates`` rely on this). The HMC force is ``F = (beta/Nc) Pi(U A)`` with ``Pi`` the
projection onto the Lie algebra (Gattringer & Lang, "Quantum Chromodynamics on the Lattice",
ch. 8).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .algebra import project_algebra
from .groups import Group
from .loops import Path, closed_loop_trace, loops_of_shape, path_product, reroot

__all__ = ["GaugeAction", "action_density", "force", "loop_density", "staple", "staple_paths",
           "staples"]


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


@functools.cache
def staple_paths(nd: int, shape: str) -> tuple[tuple[Path, ...], ...]:
    """Open staple paths of one loop family, per link direction: ``paths[mu]``.

    Every loop of the family (:func:`~hpcflow.lattice.loops.loops_of_shape`) is re-rooted at
    each of its steps along ``mu`` (:func:`~hpcflow.lattice.loops.reroot`, which reverses the loop
    for a backward step: ``Re tr W^dag = Re tr W``) so that it reads ``+mu, rest``; ``rest`` runs
    from ``x + mu`` back to ``x``. Summing over all steps is the product rule, so a loop that
    passes a link twice (small lattices) is handled as well.
    """
    out: list[list[Path]] = [[] for _ in range(nd)]
    for loop in loops_of_shape(shape, nd):
        for i in range(len(loop.path)):
            new, _ = reroot(loop.path, i, nd)
            out[new[0][0]].append(new[1:])
    return tuple(tuple(p) for p in out)


def staple(links: torch.Tensor, mu: int, group: Group, c1: float = 0.0) -> torch.Tensor:
    """Staple sum ``A_mu(x)`` of the links of one direction: ``[B, Nd, *L, Nc, Nc] ->
    [B, *L, Nc, Nc]`` (module docstring). ``c0 sum (plaquette staples) + c1 sum (rectangle
    staples)``, each staple the rest of a re-rooted loop (:func:`staple_paths`) walked from
    ``x + mu`` by the one path walker."""
    nd = links.shape[1]
    families = [("plaquette", 1.0 - 8.0 * c1)] + ([("rectangle", c1)] if c1 != 0.0 else [])
    acc = 0.0
    for shape, coef in families:
        fam = sum(path_product(links, path, group) for path in staple_paths(nd, shape)[mu])
        acc = acc + (fam if coef == 1.0 else coef * fam)
    return torch.roll(acc, -1, dims=1 + mu)  # the rest of the loop starts at x + mu


def staples(links: torch.Tensor, group: Group, c1: float = 0.0) -> torch.Tensor:
    """Staple sums of every direction: ``[B, Nd, *L, Nc, Nc] -> [B, Nd, *L, Nc, Nc]``."""
    return torch.stack([staple(links, mu, group, c1) for mu in range(links.shape[1])], dim=1)


def force(links: torch.Tensor, action: GaugeAction) -> torch.Tensor:
    """HMC force ``F_mu(x) = (beta/Nc) Pi(U_mu(x) A_mu(x))``: ``[B, Nd, *L, Nc, Nc] ->
    [B, Nd, *L, Nc, Nc]`` algebra elements with ``Re tr(T_a^dag F) = dS/domega_a``,
    ``U(omega) = exp(sum_a omega_a T_a) U``."""
    group = action.group
    a = staples(links, group, action.c1)
    return (action.beta / group.nc) * project_algebra(group.mul(links, a), group)
