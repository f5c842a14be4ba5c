"""Loop masks for ANY link mask (talk: "Algorithm for Loop mask").

For every loop family of :func:`~hpcflow.lattice.loops.loops_of_shape` (shape, orientation) and
every base site, count the active links the loop runs through (a link walked twice counts
twice). Loop ``j`` of a family based at ``x`` is

* frozen (``count == 0``): a gauge-invariant input of the context network;
* an active candidate (``count == 1``): it may update its one active link;
* unusable (``count >= 2``): updating through it would cancel active links out.

Three ways to count, kept in agreement by :func:`cross_check` (the tests call it):

* :func:`loop_counts` (production): walk the indicator field of the active links with the one
  path walker and the :class:`~hpcflow.lattice.groups.Counts` algebra;
* :func:`loop_counts_split` (the talk's method): one sample per active link, each with a single
  active link, walk them all, sum over the samples;
* :func:`loops_touching_active` (the talk's NaN trick): 0 on frozen links, NaN on active ones,
  walked with the additive :class:`~hpcflow.lattice.groups.Angles` algebra; a loop is NaN iff it
  touches an active link.

Active-loop assignment (docs/physics.md, "Gauge-equivariant coupling layer"): a candidate loop,
re-rooted with :func:`~hpcflow.lattice.loops.reroot` so that it starts with its active link, is
an open loop ``W = U S`` with ``S`` made of frozen links only. :func:`candidate_loops` lists them,
:func:`assign_active_loops` gives every active link ``multi_update`` different ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..lattice.groups import Angles, Counts
from ..lattice.loops import (
    Loop,
    Path,
    link_offsets,
    loops_of_shape,
    path_product,
    reroot,
    shift,
)

__all__ = [
    "FROZEN",
    "ACTIVE",
    "UNUSABLE",
    "loop_counts",
    "loop_counts_split",
    "loops_touching_active",
    "cross_check",
    "classify",
    "class_totals",
    "ActiveLoop",
    "FrozenLoop",
    "candidate_loops",
    "candidates_per_link",
    "assign_active_loops",
]

FROZEN, ACTIVE, UNUSABLE = 0, 1, 2


def _loops(shape: str, nd: int, loops: list[Loop] | None) -> list[Loop]:
    return loops_of_shape(shape, nd) if loops is None else loops


def loop_counts(active: torch.Tensor, shape: str, loops: list[Loop] | None = None) -> torch.Tensor:
    """Active links on every loop of a family: ``active: [Nd, *L]`` bool -> ``[n_loops, *L]``
    int8, row ``j`` for ``loops[j]`` (default ``loops_of_shape(shape, Nd)``) at every base site.

    The indicator field is walked with the one path walker and :class:`Counts`.
    """
    nd = active.shape[0]
    loops = _loops(shape, nd, loops)
    out = torch.zeros((len(loops), *active.shape[1:]), dtype=torch.int8)
    indicator = active.to(torch.int8)[None]
    used = active.flatten(1).any(1).tolist()
    for j, loop in enumerate(loops):
        # A loop that walks no direction with an active link counts 0: skip its walk.
        if any(used[mu] for mu, _ in loop.path):
            out[j] = path_product(indicator, loop.path, Counts())[0]
    return out


def loop_counts_split(active: torch.Tensor, shape: str, loops: list[Loop] | None = None,
                      chunk: int = 256) -> torch.Tensor:
    """The talk's split-and-sum count: ``[n_loops, *L]`` int64.

    The active link mask is split into samples that hold one active link each (a batch of
    one-hot indicator fields, ``chunk`` at a time to bound memory), every loop is walked on every
    sample, and the samples are summed.
    """
    nd = active.shape[0]
    loops = _loops(shape, nd, loops)
    links = active.nonzero()  # [n_active, 1 + Nd]: (mu, x_0, ..., x_{Nd-1})
    out = torch.zeros((len(loops), *active.shape[1:]), dtype=torch.int64)
    for lo in range(0, links.shape[0], chunk):
        idx = links[lo:lo + chunk]
        samples = torch.zeros((idx.shape[0], *active.shape), dtype=torch.int8)
        samples[(torch.arange(idx.shape[0]), *idx.unbind(1))] = 1
        for j, loop in enumerate(loops):
            out[j] += path_product(samples, loop.path, Counts()).sum(0, dtype=torch.int64)
    return out


def loops_touching_active(active: torch.Tensor, shape: str,
                          loops: list[Loop] | None = None) -> torch.Tensor:
    """The talk's NaN trick: ``[n_loops, *L]`` bool, true where the loop touches an active link.

    A float field, 0 on frozen links and NaN on active ones, walked with the additive
    :class:`Angles` algebra: NaN propagates through every sum, so a loop is NaN iff it crosses
    at least one active link.
    """
    nd = active.shape[0]
    field = torch.zeros(active.shape, dtype=torch.float64)
    field[active] = float("nan")
    rows = [path_product(field[None], loop.path, Angles())[0].isnan()
            for loop in _loops(shape, nd, loops)]
    if not rows:
        return torch.zeros((0, *active.shape[1:]), dtype=torch.bool)
    return torch.stack(rows)


def cross_check(active: torch.Tensor, shape: str, chunk: int = 256) -> torch.Tensor:
    """Count one family in the three ways and raise ``AssertionError`` where they disagree.

    Returns the production counts of :func:`loop_counts`. Costs one walk per active link: meant
    for tests and small lattices.
    """
    fast = loop_counts(active, shape).to(torch.int64)
    split = loop_counts_split(active, shape, chunk=chunk)
    touched = loops_touching_active(active, shape)
    if not torch.equal(fast, split):
        n = int((fast != split).sum())
        raise AssertionError(f"{shape}: walker and split-and-sum counts differ at {n} loops")
    if not torch.equal(fast > 0, touched):
        n = int(((fast > 0) != touched).sum())
        raise AssertionError(f"{shape}: walker counts and the NaN trick differ at {n} loops")
    return fast


def class_totals(counts: torch.Tensor) -> tuple[int, int, int]:
    """Numbers of (frozen, active-candidate, unusable) loops in a count tensor."""
    n = counts.numel()
    n_frozen = n - int(torch.count_nonzero(counts))
    n_single = n - int(torch.count_nonzero(counts - 1))
    return n_frozen, n_single, n - n_frozen - n_single


def classify(counts: torch.Tensor) -> torch.Tensor:
    """Loop classes ``FROZEN`` (0 active links), ``ACTIVE`` (1), ``UNUSABLE`` (>= 2); same shape."""
    return counts.clamp(max=UNUSABLE).to(torch.int8)


# ------------------------------------------------------------------ active-loop assignment
@dataclass(frozen=True, eq=False)
class ActiveLoop:
    """Active links of direction ``mu`` at ``sites`` (bool ``[*L]``), each updated through the
    open loop ``path`` based at its own site.

    ``path`` starts with ``(mu, +1)`` (the active link) and the rest of it crosses frozen links
    only. It is the closed loop ``source`` re-rooted at its step ``step``; ``offset`` is the
    link's site relative to the base of the closed loop (:func:`~hpcflow.lattice.loops.reroot`).
    """

    path: Path
    source: Loop
    step: int
    offset: tuple[int, ...]
    sites: torch.Tensor

    @property
    def mu(self) -> int:
        return self.path[0][0]

    @property
    def shape(self) -> str:
        return self.source.shape

    @property
    def links(self) -> torch.Tensor:
        """The updated links as a bool mask ``[Nd, *L]`` (only row ``mu`` can be true)."""
        out = torch.zeros((len(self.offset), *self.sites.shape), dtype=torch.bool)
        out[self.mu] = self.sites
        return out

    def closed_bases(self) -> torch.Tensor:
        """Base sites ``x - offset`` of the closed loops used: bool ``[*L]``."""
        return shift(self.sites, self.offset)


class FrozenLoop(NamedTuple):
    """A frozen loop family: ``loop`` at the base sites ``sites`` (bool ``[*L]``) where it
    crosses no active link, so that it is a valid gauge-invariant context input."""

    loop: Loop
    sites: torch.Tensor


def candidate_loops(active: torch.Tensor, counts: torch.Tensor,
                    loops: list[Loop]) -> list[ActiveLoop]:
    """Every (closed loop, step) whose loop holds exactly one active link, at that step.

    active: ``[Nd, *L]`` bool; counts: ``[n_loops, *L]`` from :func:`loop_counts` for ``loops``.
    For the link ``U_mu(x)`` at step ``i`` (link offset ``o`` from the loop's base) the closed loop
    is based at ``x - o``; it is a candidate iff the link is active and that loop's count is 1,
    which makes the link its only active link. ``sites`` of the result marks those ``x``; empty
    candidates are dropped. Order: loops based at the link's own site first (as in
    arXiv:2101.08176, where a link is updated through the plaquette based at its site), then by
    loop and step.
    """
    nd = active.shape[0]
    single = torch.eq(counts, torch.ones_like(counts))
    used = active.flatten(1).any(1).tolist()
    out = []
    for j, loop in enumerate(loops):
        for i, (mu, _sign, y) in enumerate(link_offsets(loop.path, nd)):
            if not used[mu]:
                continue
            sites = active[mu] & shift(single[j], tuple(-v for v in y))
            if sites.any():
                path, offset = reroot(loop.path, i, nd)
                out.append(ActiveLoop(path=path, source=loop, step=i, offset=offset, sites=sites))
    return sorted(out, key=lambda a: any(a.offset))


def candidates_per_link(active: torch.Tensor, candidates: list[ActiveLoop]) -> torch.Tensor:
    """Number of candidate loops of every link: ``[Nd, *L]`` int64 (0 on frozen links)."""
    n = torch.zeros(active.shape, dtype=torch.int64)
    for c in candidates:
        n[c.mu] += c.sites
    return n


def assign_active_loops(active: torch.Tensor, candidates: list[ActiveLoop],
                        multi_update: int) -> list[list[ActiveLoop]]:
    """Give every active link ``multi_update`` different active loops, one per update ``k``.

    Returns ``updates[k]``: a list of :class:`ActiveLoop` whose ``sites`` partition the active
    links (every active link appears exactly once per ``k``); a link takes its candidates in the
    order of ``candidates``, the ``k``-th one in update ``k``. Raises ``ValueError`` if an active
    link has fewer than ``multi_update`` candidates (callers check first and name the key).
    """
    # filled[k][mu]: links of direction mu that already have their loop for update k.
    filled = [torch.zeros(active.shape, dtype=torch.bool) for _ in range(multi_update)]
    updates: list[list[ActiveLoop]] = [[] for _ in range(multi_update)]
    for c in candidates:
        left = c.sites
        for k in range(multi_update):
            take = left & ~filled[k][c.mu]
            if take.any():
                filled[k][c.mu] |= take
                left = left & ~take
                updates[k].append(ActiveLoop(path=c.path, source=c.source, step=c.step,
                                             offset=c.offset, sites=take))
    for k in range(multi_update):
        if not torch.equal(filled[k], active):
            raise ValueError(f"an active link has fewer than multi_update = {multi_update} "
                             f"candidate loops")
    return updates
