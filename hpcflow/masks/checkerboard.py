"""Link masks: the generalized checkerboard (talk: "Algorithm for masking pattern").

Every site has a phase ``phase(x) = (sum_nu steps[nu] * x_nu + offset) mod width``; moving one
site along ``nu`` changes it by ``steps[nu]``. The link ``U_mu(x)`` is active iff
``mu in directions`` and ``phase(x) == 0`` (docs/physics.md, "Masks"). The pattern is well
defined on the periodic lattice only if the phase returns to itself around every axis:
``steps[nu] * L_nu % width == 0``.

:func:`default_patterns` gives one pattern per link direction ``mu``: a stripe along the next
axis (step 1), a checkerboard over the remaining axes (step 2) and whole lines of active links
along ``mu`` (step 0), with the first of the widths 4, 3, 5, 6, ... that fits the lattice and keeps
every plaquette at no more than one active link, else the width-2 checkerboard (steps 1 on every
other axis). In 2D these are the stripes of arXiv:2101.08176.

Errors are :class:`MaskError` (a ``ValueError``) carrying the name of the argument at fault
(``patterns[1].steps``, ``multi_update``, ...), so that an application can name its own key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .loopmask import loop_counts

__all__ = ["MaskError", "MaskPattern", "check_pattern", "default_patterns", "link_mask",
           "link_phase", "pattern_label"]


class MaskError(ValueError):
    """A mask argument that cannot give an exact coupling layer; ``field`` names the argument
    (``shape``, ``patterns[i].steps``, ``active_shapes[0]``, ``multi_update``, ``layers``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


@dataclass
class MaskPattern:
    """One generalized checkerboard (talk: "Algorithm for masking pattern").

    A link ``(x, mu)`` is active iff ``mu in directions`` and
    ``(sum_nu steps[nu] * x_nu + offset) mod width == 0``; the layers cycle the offset.
    """

    directions: list[int] = field(default_factory=list)
    """Link directions that may be active."""
    steps: list[int] = field(default_factory=list)
    """Phase change per step along each lattice axis (one entry per axis)."""
    width: int = 2
    """Period of the phase; a layer is active at one of ``width`` offsets."""


def link_phase(shape, steps, width: int, offset: int = 0) -> torch.Tensor:
    """``phase(x) = (sum_nu steps[nu] * x_nu + offset) mod width`` at every site: ``[*L]`` int64."""
    phase = torch.full(tuple(shape), offset, dtype=torch.int64)
    for nu, (step, extent) in enumerate(zip(steps, shape, strict=True)):
        if step:
            view = [1] * len(shape)
            view[nu] = extent
            phase = phase + step * torch.arange(extent).view(view)
    return torch.remainder(phase, width)


def link_mask(shape, directions, steps, width: int, offset: int = 0) -> torch.Tensor:
    """Active links of one generalized checkerboard: bool ``[Nd, *L]``.

    ``active[mu, x]`` is true iff ``mu in directions`` and ``phase(x) == 0``. The pattern is not
    validated here (see :func:`check_pattern`).
    """
    at_zero = link_phase(shape, steps, width, offset) == 0
    active = torch.zeros((len(shape), *shape), dtype=torch.bool)
    for mu in set(directions):
        active[mu] = at_zero
    return active


def check_pattern(shape, pattern: MaskPattern, key: str = "pattern") -> None:
    """Refuse a pattern that is not a valid generalized checkerboard on ``shape``.

    Raises :class:`MaskError` with field ``{key}.directions``, ``{key}.steps`` or
    ``{key}.width`` (``key`` like ``patterns[1]``) for: an empty or out-of-range or repeated
    direction list, the wrong number of steps, ``width < 1``, a phase that does not wrap
    around the torus (``steps[nu] * L_nu % width != 0``), and steps whose common divisor with
    the width is > 1 (then the offsets that are not multiples of it would give layers without
    active links).
    """
    nd = len(shape)
    dirs = list(pattern.directions)
    if not dirs:
        raise MaskError(f"{key}.directions",
                          f"expected at least one link direction in 0..{nd - 1}, got []")
    bad = [mu for mu in dirs if not 0 <= mu < nd]
    if bad:
        raise MaskError(f"{key}.directions",
                          f"directions must lie in 0..{nd - 1} for Nd = {nd}, got {dirs}")
    if len(set(dirs)) != len(dirs):
        raise MaskError(f"{key}.directions", f"expected distinct directions, got {dirs}")
    if pattern.width < 1:
        raise MaskError(f"{key}.width", f"expected a positive integer, got {pattern.width}")
    steps = list(pattern.steps)
    if len(steps) != nd:
        raise MaskError(f"{key}.steps",
                          f"expected {nd} steps (one per lattice axis, Nd = {nd}), got {steps}")
    w = pattern.width
    for nu, (step, extent) in enumerate(zip(steps, shape, strict=True)):
        if step * extent % w:
            raise MaskError(
                f"{key}.steps",
                f"pattern not consistent on the periodic lattice: steps[{nu}] * L_{nu} = "
                f"{step} * {extent} = {step * extent} is not a multiple of the width {w} "
                f"(lattice {list(shape)}); every axis needs "
                f"steps[nu] * L_nu % width == 0",
            )
    g = math.gcd(w, *steps)
    if g > 1:
        raise MaskError(
            f"{key}.steps",
            f"steps {steps} and width {w} share the divisor {g}: the phase only takes "
            f"multiples of {g}, so the layers with offsets that are not multiples of {g} would "
            f"have no active link; use steps whose gcd with the width is 1",
        )


def _stripe_patterns(nd: int, width: int) -> list[MaskPattern]:
    """Pattern ``mu``: ``directions = [mu]``, ``steps[mu] = 0`` (a whole line of links along
    ``mu``), ``steps[mu + 1] = 1`` (the stripe), ``2`` on the other axes (the checkerboard)."""
    out = []
    for mu in range(nd):
        steps = [2] * nd
        steps[mu] = 0
        steps[(mu + 1) % nd] = 1
        out.append(MaskPattern(directions=[mu], steps=steps, width=width))
    return out


def _checkerboard_patterns(nd: int) -> list[MaskPattern]:
    """Width-2 checkerboards: pattern ``mu`` activates ``U_mu(x)`` where
    ``sum_{nu != mu} x_nu`` is even (no two active links share a plaquette)."""
    return [MaskPattern(directions=[mu], steps=[0 if nu == mu else 1 for nu in range(nd)],
                        width=2) for mu in range(nd)]


def _fits(shape, patterns: list[MaskPattern]) -> bool:
    """Consistent on the torus, and every plaquette holds at most one active link."""
    try:
        for p in patterns:
            check_pattern(shape, p)
    except MaskError:
        return False
    return all(int(loop_counts(link_mask(shape, p.directions, p.steps, p.width), "plaquette")
                   .max()) <= 1 for p in patterns)


def default_patterns(shape) -> list[MaskPattern]:
    """The default patterns of a lattice, one per link direction (module docstring).

    Tries the stripe-plus-checkerboard patterns of width 4 (every extent a multiple of 4: the
    defaults of earlier versions), then widths 3, 5, 6, ... up to the largest extent, then the
    width-2 checkerboard; takes the first that fits (:func:`_fits`). Every active link then
    has ``2 (Nd - 1)`` active plaquettes. Raises :class:`MaskError` (field ``shape``) when none
    fits, e.g. a lattice with an extent of 1.
    """
    shape = [int(x) for x in shape]
    nd = len(shape)
    widths = [4, 3] + list(range(5, max(shape) + 1))
    candidates = [_stripe_patterns(nd, w) for w in widths] + [_checkerboard_patterns(nd)]
    for patterns in candidates:
        if _fits(shape, patterns):
            return patterns
    raise MaskError("shape", f"no default mask fits the lattice {shape}; give the patterns "
                             f"explicitly")


def pattern_label(pattern: MaskPattern) -> str:
    """``dirs=[0] steps=[0, 1] w=4``: one line for tables and plot titles."""
    return f"dirs={list(pattern.directions)} steps={list(pattern.steps)} w={pattern.width}"
