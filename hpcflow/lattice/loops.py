"""The one path walker: closed and open Wilson loops of any shape, in any dimension.

A path is a tuple of steps ``(mu, sign)``: ``(mu, +1)`` walks the link ``U_mu(x)`` from ``x`` to
``x + mu``; ``(mu, -1)`` walks ``U_mu(x - mu)^dagger`` back to ``x - mu``. The matrix of a path
based at ``x`` is the ordered product of its links (docs/physics.md, "Loops"). The walker
evaluates the path at every base site at once with ``torch.roll``
(docs/physics.md, "Counting active links on loops"), for any
:class:`~hpcflow.lattice.groups.Algebra`: SU(N) matrices, U(1) angles, or the indicator counts
the masks use.

Loop families (one representative per geometric loop and base site, every plane and orientation):

=========== ============================== ============================
name        path                           loops per site
=========== ============================== ============================
plaquette   ``+mu +nu -mu -nu``            ``Nd (Nd-1) / 2``
rectangle   ``+mu +mu +nu -mu -mu -nu``    ``Nd (Nd-1)`` (long side mu)
chair       ``+a +nu -a +b -nu -b``        ``4 Nd C(Nd-1, 2)``
crown       ``+a +b +c -a -b -c``          ``4 C(Nd, 3)``
=========== ============================== ============================

Chairs are two plaquettes that share the link ``U_nu(x)`` and are bent by 90 degrees
(``a = +-mu``, ``b = +-rho``); crowns are the four hexagons of each 3-cube (each avoids one pair
of opposite corners). Talk: Boyda, Lattice 2021, "Frozen loops"; arXiv:2305.02402.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from .groups import Algebra

__all__ = [
    "Loop",
    "LOOP_SHAPES",
    "loops_of_shape",
    "link_offsets",
    "path_product",
    "path_indices",
    "path_table",
    "loop_matrix",
    "table_product",
    "closed_loop_trace",
    "reroot",
    "reverse",
    "shift",
    "plaquette_path",
]

Step = tuple[int, int]
Path = tuple[Step, ...]

LOOP_SHAPES = ("plaquette", "rectangle", "chair", "crown")


@dataclass(frozen=True)
class Loop:
    """A named loop family: ``path`` evaluated at every base site of the lattice."""

    shape: str
    path: Path

    @property
    def label(self) -> str:
        steps = " ".join(f"{'+' if s > 0 else '-'}{mu}" for mu, s in self.path)
        return f"{self.shape}[{steps}]"


def plaquette_path(mu: int, nu: int) -> Path:
    """``P_{mu nu}``: ``+mu +nu -mu -nu``."""
    return ((mu, 1), (nu, 1), (mu, -1), (nu, -1))


def _rectangle_path(mu: int, nu: int) -> Path:
    return ((mu, 1), (mu, 1), (nu, 1), (mu, -1), (mu, -1), (nu, -1))


def _chair_path(a: Step, nu: int, b: Step) -> Path:
    (ma, sa), (mb, sb) = a, b
    return ((ma, sa), (nu, 1), (ma, -sa), (mb, sb), (nu, -1), (mb, -sb))


def _crown_path(a: Step, b: Step, c: Step) -> Path:
    return (a, b, c, (a[0], -a[1]), (b[0], -b[1]), (c[0], -c[1]))


def loops_of_shape(shape: str, nd: int) -> list[Loop]:
    """Every loop of one family on an ``nd``-dimensional lattice, one per geometric loop
    and base site (see the module table). Raises ``ValueError`` for an unknown shape."""
    dirs = range(nd)
    if shape == "plaquette":
        paths = [plaquette_path(mu, nu) for mu, nu in itertools.combinations(dirs, 2)]
    elif shape == "rectangle":
        paths = [_rectangle_path(mu, nu) for mu, nu in itertools.permutations(dirs, 2)]
    elif shape == "chair":
        paths = [
            _chair_path((mu, sm), nu, (rho, sr))
            for nu in dirs
            for mu, rho in itertools.combinations([d for d in dirs if d != nu], 2)
            for sm in (1, -1)
            for sr in (1, -1)
        ]
    elif shape == "crown":
        paths = []
        for mu, nu, rho in itertools.combinations(dirs, 3):
            # The hexagon +a +b +c -a -b -c from x avoids the corners x+b and x+a+c; three
            # choices of b cover three diagonals of the cube, the fourth (x, x+mu+nu+rho) is
            # the hexagon based at x+mu, written with a negative step.
            paths.append(_crown_path((nu, 1), (mu, 1), (rho, 1)))
            paths.append(_crown_path((mu, 1), (nu, 1), (rho, 1)))
            paths.append(_crown_path((mu, 1), (rho, 1), (nu, 1)))
            paths.append(_crown_path((nu, 1), (mu, -1), (rho, 1)))
    else:
        raise ValueError(f"unknown loop shape {shape!r}; expected one of {LOOP_SHAPES}")
    return [Loop(shape, p) for p in paths]


def link_offsets(path: Path, nd: int) -> Iterator[tuple[int, int, tuple[int, ...]]]:
    """Walk a path from the origin: yield ``(mu, sign, y)`` for each step, where ``y`` is the
    offset of the site at which the traversed link ``U_mu(x + y)`` is stored.

    This is the single walker every loop computation in the project goes through.
    """
    y = [0] * nd
    for mu, sign in path:
        if sign > 0:
            yield mu, 1, tuple(y)
            y[mu] += 1
        else:
            y[mu] -= 1
            yield mu, -1, tuple(y)


def shift(field: torch.Tensor, y, dims=None) -> torch.Tensor:
    """``f(x + y)`` for every ``x`` (docs/physics.md: a shift is ``roll(f, -1)``).

    ``dims``: the lattice axes of ``field``, one per entry of ``y``; default: the last
    ``len(y)`` axes (site masks and counts ``[..., *L]``).
    """
    if dims is None:
        dims = tuple(range(field.dim() - len(y), field.dim()))
    pairs = [(-yi, d) for yi, d in zip(y, dims, strict=True) if yi != 0]
    if not pairs:
        return field
    shifts, dims = zip(*pairs, strict=True)
    return torch.roll(field, shifts=shifts, dims=dims)


def path_product(links: torch.Tensor, path: Path, algebra: Algebra) -> torch.Tensor:
    """Ordered product of a path's links at every base site.

    links: ``[B, Nd, *L, *E]`` where ``E`` are the ``algebra.elem_dims`` element dimensions
    (``[Nc, Nc]`` for matrices, none for angles or counts).
    Returns ``W: [B, *L, *E]`` with ``W(x)`` the path matrix based at ``x``.
    """
    nd = links.shape[1]
    lattice_dims = tuple(range(1, 1 + nd))  # after selecting one direction
    out = None
    for mu, sign, y in link_offsets(path, nd):
        u = shift(links[:, mu], y, lattice_dims)
        if sign < 0:
            u = algebra.dagger(u)
        out = u if out is None else algebra.mul(out, u)
    return out


def path_indices(path: Path, shape, sites: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat link indices of a path based at each of ``sites`` (for :func:`path_table`).

    Links ``[B, Nd, *L, *E]`` flattened to ``[B, Nd * V, *E]`` (``V = prod(L)``): the link
    ``U_mu(y)`` sits at ``mu * V + flat(y)``. ``sites``: bool ``[*L]`` (default: every site,
    in flat order). Returns ``(index [n, len] int64, backward [n, len] bool)`` for the ``n``
    selected base sites; ``backward`` marks the steps walked as ``U^dagger``. The walk is
    :func:`link_offsets`, as for :func:`path_product`.
    """
    shape = tuple(shape)
    nd, volume = len(shape), math.prod(shape)
    coords = torch.stack(torch.meshgrid(*[torch.arange(n) for n in shape], indexing="ij"),
                         dim=-1).reshape(volume, nd)
    if sites is not None:
        coords = coords[sites.reshape(volume)]
    strides = torch.tensor([math.prod(shape[d + 1:]) for d in range(nd)])
    extents = torch.tensor(shape)
    index, backward = [], []
    for mu, sign, y in link_offsets(path, nd):
        flat = (torch.remainder(coords + torch.tensor(y), extents) * strides).sum(-1)
        index.append(mu * volume + flat)
        backward.append(torch.full((len(coords),), sign < 0))
    return torch.stack(index, dim=1), torch.stack(backward, dim=1)


def path_table(paths, shape, sites=None) -> torch.Tensor:
    """One gather table for many paths, for :func:`table_product`.

    ``paths``: a sequence of paths; ``sites``: for each path a bool ``[*L]`` of its base sites
    (default: every site). Rows are the paths' base sites in order (path 0's sites first, each
    in flat order); entry ``s`` of a row indexes the extended links
    ``[U, U^dagger, 1]`` of :meth:`Algebra.extend` (``[B, 2 Nd V + 1, *E]``): a forward step
    reads ``mu V + flat(y)``, a backward step the same plus ``Nd V``, and rows shorter than the
    longest path are padded with the unit element ``2 Nd V``. Returns int64 ``[rows, len]``,
    stored step-major (the transpose is contiguous: :func:`table_product` reads it without a
    copy).
    """
    shape = tuple(shape)
    n_links = len(shape) * math.prod(shape)
    sites = [None] * len(paths) if sites is None else list(sites)
    tables = [path_indices(p, shape, s) for p, s in zip(paths, sites, strict=True)]
    width = max(i.shape[1] for i, _ in tables)
    rows = []
    for index, backward in tables:
        row = index + n_links * backward.long()
        pad = torch.full((row.shape[0], width - row.shape[1]), 2 * n_links, dtype=torch.long)
        rows.append(torch.cat([row, pad], dim=1))
    return torch.cat(rows).t().contiguous().t()


def loop_matrix(table: torch.Tensor, n_links: int, dtype: torch.dtype) -> torch.Tensor:
    """The paths of a :func:`path_table` as a matrix, for algebras whose product is a sum
    (``Algebra.linear``, U(1) angles): ``[n_links, n]`` with entry ``(l, i)`` the number of
    times path ``i`` crosses link ``l`` forward minus backward, so that
    ``flat @ loop_matrix(...)`` (``flat: [B, n_links]``) equals :func:`table_product` of the
    extended links: one matrix product forward and one backward instead of a gather, a sum and
    their backwards (issue 19). Dense: ``n_links * n`` entries."""
    rows = torch.arange(table.shape[0]).unsqueeze(1).expand_as(table)
    forward, backward = table < n_links, (table >= n_links) & (table < 2 * n_links)
    out = torch.zeros(n_links, table.shape[0], dtype=dtype)
    ones = torch.ones((), dtype=dtype)
    out.index_put_((table[forward], rows[forward]), ones.expand(int(forward.sum())),
                   accumulate=True)
    out.index_put_((table[backward] - n_links, rows[backward]), -ones.expand(int(backward.sum())),
                   accumulate=True)
    return out


def table_product(extended: torch.Tensor, table: torch.Tensor, algebra: Algebra) -> torch.Tensor:
    """Ordered products of many paths by one gather from extended links.

    ``extended: [B, 2 Nd V + 1, *E]`` (:meth:`Algebra.extend` of ``[B, Nd V, *E]``);
    ``table: [n, len]`` (:func:`path_table`). Returns ``[B, n, *E]``, equal to
    :func:`path_product` at the tabulated base sites. Daggers and padding are read, not
    computed, so a path costs one gather and ``len - 1`` products for the whole batch.
    """
    links = extended.index_select(1, table.t().reshape(-1))  # step-major: [B, len * n, *E]
    return algebra.reduce_steps(links.view(extended.shape[0], table.shape[1], table.shape[0],
                                           *extended.shape[2:]))


def closed_loop_trace(links: torch.Tensor, path: Path, group) -> torch.Tensor:
    """``tr W(x)`` of a closed path at every base site: ``[B, Nd, *L, Nc, Nc] -> [B, *L]``."""
    return group.trace(path_product(links, path, group))


def reverse(path: Path) -> Path:
    """The same loop walked backwards (its matrix is the dagger of the original)."""
    return tuple((mu, -s) for mu, s in reversed(path))


def reroot(path: Path, i: int, nd: int) -> tuple[Path, tuple[int, ...]]:
    """Re-root a closed path so that its step ``i`` comes first, walked forwards.

    Returns ``(new_path, base)``: ``new_path`` starts with ``(mu, +1)`` for the link of step
    ``i`` and ``base`` is that link's site relative to the old base (so the open loop of the
    link ``U_mu(x)`` is ``path_product(links, new_path)`` evaluated at ``x``). If step ``i`` is
    a backward step, the loop is reversed first (docs/physics.md: ``W = U S``).
    """
    offsets = list(link_offsets(path, nd))
    mu, sign, base = offsets[i]
    if sign > 0:
        new = path[i:] + path[:i]
    else:
        rev = reverse(path)
        j = len(path) - 1 - i
        new = rev[j:] + rev[:j]
    return new, base
