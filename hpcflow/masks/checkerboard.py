"""Link masks: the generalized checkerboard (talk: "Algorithm for masking pattern").

Every site has a phase ``phase(x) = (sum_nu steps[nu] * x_nu + offset) mod width``; moving one
site along ``nu`` changes it by ``steps[nu]``. The link ``U_mu(x)`` is active iff
``mu in directions`` and ``phase(x) == 0`` (PHYSICS.md, "Masks"). The pattern is well defined on
the periodic lattice only if the phase returns to itself around every axis:
``steps[nu] * L_nu % width == 0``.

:func:`default_patterns` gives one pattern per link direction ``mu``: a stripe along the next
axis (step 1), a checkerboard over the remaining axes (step 2) and whole lines of active links
along ``mu`` (step 0), width 4. In 2D these are the stripes of arXiv:2101.08176; in 3D and 4D
the checkerboard keeps every plaquette at no more than one active link (ALGORITHMS.md,
"Counting active links on loops").
"""

from __future__ import annotations

import math

import torch

from ..config import MaskPattern
from ..errors import ConfigError

__all__ = ["DEFAULT_WIDTH", "link_phase", "link_mask", "check_pattern", "default_patterns",
           "pattern_label"]

DEFAULT_WIDTH = 4


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


def check_pattern(shape, pattern: MaskPattern, key: str) -> None:
    """Refuse a pattern that is not a valid generalized checkerboard on ``shape``.

    Raises :class:`ConfigError` naming ``{key}.directions``, ``{key}.steps`` or ``{key}.width``
    (``key`` like ``model.masks[1]``) for: an empty or out-of-range or repeated direction list,
    the wrong number of steps, ``width < 1``, a phase that does not wrap around the torus
    (``steps[nu] * L_nu % width != 0``), and steps whose common divisor with the width is > 1
    (then the offsets that are not multiples of it would give layers without active links).
    """
    nd = len(shape)
    dirs = list(pattern.directions)
    if not dirs:
        raise ConfigError(f"{key}.directions",
                          f"expected at least one link direction in 0..{nd - 1}, got []")
    bad = [mu for mu in dirs if not 0 <= mu < nd]
    if bad:
        raise ConfigError(f"{key}.directions",
                          f"directions must lie in 0..{nd - 1} for Nd = {nd}, got {dirs}")
    if len(set(dirs)) != len(dirs):
        raise ConfigError(f"{key}.directions", f"expected distinct directions, got {dirs}")
    if pattern.width < 1:
        raise ConfigError(f"{key}.width", f"expected a positive integer, got {pattern.width}")
    steps = list(pattern.steps)
    if len(steps) != nd:
        raise ConfigError(f"{key}.steps",
                          f"expected {nd} steps (one per lattice axis, Nd = {nd}), got {steps}")
    w = pattern.width
    for nu, (step, extent) in enumerate(zip(steps, shape, strict=True)):
        if step * extent % w:
            raise ConfigError(
                f"{key}.steps",
                f"pattern not consistent on the periodic lattice: steps[{nu}] * L_{nu} = "
                f"{step} * {extent} = {step * extent} is not a multiple of {key}.width = {w} "
                f"(lattice.shape = {list(shape)}); every axis needs "
                f"steps[nu] * L_nu % width == 0",
            )
    g = math.gcd(w, *steps)
    if g > 1:
        raise ConfigError(
            f"{key}.steps",
            f"steps {steps} and {key}.width = {w} share the divisor {g}: the phase only takes "
            f"multiples of {g}, so the layers with offsets that are not multiples of {g} would "
            f"have no active link; use steps whose gcd with the width is 1",
        )


def default_patterns(shape) -> list[MaskPattern]:
    """The default patterns of an ``Nd``-dimensional lattice, one per link direction.

    Pattern ``mu``: ``directions = [mu]``, width 4, ``steps[mu] = 0`` (a whole line of links
    along ``mu``), ``steps[(mu + 1) % Nd] = 1`` (the stripe), ``steps = 2`` on every other axis
    (the checkerboard). Every plaquette then holds at most one active link, and every active link
    has ``2 (Nd - 1)`` active plaquettes, so ``multi_update`` up to ``2 (Nd - 1)`` works.
    2D: ``[0], [0, 1]`` and ``[1], [1, 0]`` (arXiv:2101.08176); 3D: ``[0], [0, 1, 2]``,
    ``[1], [2, 0, 1]``, ``[2], [1, 2, 0]``; 4D: ``[0], [0, 1, 2, 2]``, ...

    Every extent must be a multiple of 4; anything else raises :class:`ConfigError` naming
    ``lattice.shape``.
    """
    shape = list(shape)
    nd = len(shape)
    if nd < 2 or any(extent % DEFAULT_WIDTH for extent in shape):
        raise ConfigError(
            "lattice.shape",
            f"the default masks (width {DEFAULT_WIDTH}) need Nd >= 2 and every extent a "
            f"multiple of {DEFAULT_WIDTH}, got {shape}; choose such a lattice or give "
            f"model.masks explicitly",
        )
    patterns = []
    for mu in range(nd):
        steps = [2] * nd
        steps[mu] = 0
        steps[(mu + 1) % nd] = 1
        patterns.append(MaskPattern(directions=[mu], steps=steps, width=DEFAULT_WIDTH))
    return patterns


def pattern_label(pattern: MaskPattern) -> str:
    """``dirs=[0] steps=[0, 1] w=4``: one line for tables and plot titles."""
    return f"dirs={list(pattern.directions)} steps={list(pattern.steps)} w={pattern.width}"
