"""Layer schedules: the masks of every coupling layer, built and validated.

Layer ``i`` uses pattern ``p = i % P`` of the ``P`` patterns with offset ``(i // P) % width_p``;
the default number of layers, ``P * max(width)``, is one full cycle in which every pattern
meets each of its offsets. Per layer the schedule holds the active
links, the active loops that update them and the frozen loops that feed the context network.

Invariants that make the coupling layer exact (docs/physics.md, "Gauge-equivariant coupling layer"),
checked by the tests on every default schedule:

* every active loop holds exactly one active link of its layer (its own), so ``W = U S`` with
  ``S`` frozen: the active loops of the links updated together never contain another link the
  layer updates, and the Jacobian is diagonal over the active links;
* per active-loop shape and update ``k < multi_update`` every active link has exactly one active
  loop, and a link's loops differ between updates;
* every frozen feature (:class:`FrozenLoop`) crosses no active link at the sites it is used, so
  the context is unchanged by the layer and the same in the forward and the inverse pass;
* every link is updated in at least one layer (``Schedule.coverage > 0``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..lattice.loops import LOOP_SHAPES, loops_of_shape, shift
from .checkerboard import MaskError, MaskPattern, check_pattern, default_patterns, link_mask
from .loopmask import (
    ActiveLoop,
    FrozenLoop,
    assign_active_loops,
    candidate_loops,
    candidates_per_link,
    class_totals,
    loop_counts,
)

__all__ = ["LayerMask", "Schedule", "build_layer", "build_schedule", "shapes_for", "translation",
           "translate_layer"]


def shapes_for(nd: int) -> tuple[str, ...]:
    """Loop shapes that exist on an ``nd``-dimensional lattice (chair, crown need ``nd >= 3``)."""
    return tuple(s for s in LOOP_SHAPES if nd >= 3 or s in ("plaquette", "rectangle"))


@dataclass
class LayerMask:
    """The masks of one coupling layer.

    ``active``: bool ``[Nd, *L]``, the links this layer updates.
    ``active_loops[shape][k]``: the :class:`ActiveLoop` of update ``k`` for that shape; their
    ``sites`` partition the active links. ``frozen_features[shape]``: :class:`FrozenLoop`
    ``(loop, sites)`` for every loop of that shape frozen at one site at least.
    ``candidates[shape]``: (min, max) number of usable active loops per active link.
    """

    index: int
    pattern_index: int
    pattern: MaskPattern
    offset: int
    active: torch.Tensor
    active_loops: dict[str, list[list[ActiveLoop]]]
    frozen_features: dict[str, list[FrozenLoop]]
    candidates: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Per feature shape: bool [n_loops, *L] frozen sites of every loop; the FrozenLoop sites
    # are views of its rows (kept so that a translated layer needs one roll per shape).
    _frozen: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def nd(self) -> int:
        return self.active.shape[0]

    @property
    def multi_update(self) -> int:
        return max((len(v) for v in self.active_loops.values()), default=0)

    @property
    def active_fraction(self) -> float:
        return self.active.float().mean().item()

    @property
    def updates(self) -> list[list[ActiveLoop]]:
        """The update steps in the order a coupling layer runs them: for each ``k``, for each
        active-loop shape; in each step every active link moves once."""
        return [self.active_loops[s][k] for k in range(self.multi_update)
                for s in self.active_loops]

    def loop_classes(self, shape: str) -> tuple[int, int, int]:
        """Numbers of (frozen, active-candidate, unusable) loops of a shape over every
        orientation and base site (recounted: meant for reports)."""
        return class_totals(loop_counts(self.active, shape))

    @property
    def features(self) -> list[FrozenLoop]:
        """All frozen features of the layer, shape by shape."""
        return [f for shape in self.frozen_features for f in self.frozen_features[shape]]


@dataclass
class Schedule:
    """Every layer's masks; ``coverage``: int64 ``[Nd, *L]``, updates of each link in all
    layers (``len(active_shapes) * multi_update`` per layer in which it is active)."""

    shape: tuple[int, ...]
    layers: list[LayerMask]
    coverage: torch.Tensor
    patterns: list[MaskPattern]
    active_shapes: tuple[str, ...]
    feature_shapes: tuple[str, ...]
    multi_update: int


def build_layer(shape, pattern: MaskPattern, offset: int, *, active_shapes=("plaquette",),
                feature_shapes=None, multi_update: int = 1, index: int = 0,
                pattern_index: int = 0, key: str = "patterns[0]") -> LayerMask:
    """The masks of one layer for a pattern (assumed valid, see ``check_pattern``) and offset.

    Raises :class:`MaskError` with field ``key`` if an active link has no active loop of some
    shape and ``multi_update`` if it has fewer than ``multi_update`` of them.
    """
    shape = tuple(shape)
    nd = len(shape)
    feature_shapes = shapes_for(nd) if feature_shapes is None else tuple(feature_shapes)
    active = link_mask(shape, pattern.directions, pattern.steps, pattern.width, offset)
    where = f"layer {index} (pattern {pattern_index}, offset {offset})"
    counts, loops_by_shape = {}, {}
    for s in dict.fromkeys((*active_shapes, *feature_shapes)):
        loops_by_shape[s] = loops_of_shape(s, nd)
        counts[s] = loop_counts(active, s, loops_by_shape[s])

    active_loops, candidates = {}, {}
    for s in active_shapes:
        cands = candidate_loops(active, counts[s], loops_by_shape[s])
        have = candidates_per_link(active, cands)[active]
        lo, hi = (int(have.min()), int(have.max())) if have.numel() else (0, 0)
        candidates[s] = (lo, hi)
        if have.numel() and lo < multi_update:
            n_short = int((have < multi_update).sum())
            link = _first_link(active, candidates_per_link(active, cands) < multi_update)
            if lo == 0:
                raise MaskError(
                    key,
                    f"{where}: {n_short} active links (e.g. {link}) have no {s} with exactly one "
                    f"active link, so they cannot be updated; every {s} through them holds "
                    f"another active link: change the pattern (fewer directions, other steps) or "
                    f"the active_loops",
                )
            raise MaskError(
                "multi_update",
                f"{multi_update} sequential updates need {multi_update} active {s}s per active "
                f"link, but in {where} {n_short} active links (e.g. {link}) have only {lo}; "
                f"lower multi_update to {lo} or choose another pattern",
            )
        active_loops[s] = assign_active_loops(active, cands, multi_update)

    frozen_features, stacks = {}, {}
    for s in feature_shapes:
        stacks[s] = torch.logical_not(counts[s])  # count == 0 (faster than == on int8)
        keep = (counts[s].flatten(1).amin(1) == 0).tolist()
        frozen_features[s] = [FrozenLoop(loop, stacks[s][j])
                              for j, loop in enumerate(loops_by_shape[s]) if keep[j]]
    return LayerMask(index=index, pattern_index=pattern_index, pattern=pattern, offset=offset,
                     active=active, active_loops=active_loops, frozen_features=frozen_features,
                     candidates=candidates, _frozen=stacks)


def translation(pattern: MaskPattern, shape, offset_from: int, offset_to: int):
    """A lattice translation ``t`` with ``mask(offset_to)(x) = mask(offset_from)(x + t)``, i.e.
    ``sum_nu steps[nu] t_nu = offset_to - offset_from (mod width)``; ``None`` if no axis step is
    invertible modulo the width (then the layer is built afresh)."""
    w = pattern.width
    for nu, step in enumerate(pattern.steps):
        if math.gcd(step, w) == 1:
            t = [0] * len(shape)
            t[nu] = (offset_to - offset_from) * pow(step, -1, w) % w
            return tuple(t)
    return None


def translate_layer(layer: LayerMask, t, *, offset: int, index: int) -> LayerMask:
    """The masks of ``layer`` moved by the lattice translation ``t``: every site mask ``m``
    becomes ``m(x + t)``. Counts, candidates and the greedy assignment commute with
    translations, so this equals building the translated pattern afresh (tested)."""
    nd = layer.nd
    move = lambda m: shift(m, t)  # noqa: E731
    active_loops = {
        s: [[dataclasses.replace(a, sites=move(a.sites)) for a in update] for update in updates]
        for s, updates in layer.active_loops.items()
    }
    stacks = {s: move(st) for s, st in layer._frozen.items()}
    loops = {s: {loop: j for j, loop in enumerate(loops_of_shape(s, nd))}
             for s in layer.frozen_features}
    frozen_features = {
        s: [FrozenLoop(f.loop, stacks[s][loops[s][f.loop]]) for f in feats]
        for s, feats in layer.frozen_features.items()
    }
    return LayerMask(index=index, pattern_index=layer.pattern_index, pattern=layer.pattern,
                     offset=offset, active=move(layer.active), active_loops=active_loops,
                     frozen_features=frozen_features, candidates=dict(layer.candidates),
                     _frozen=stacks)


def _first_link(active: torch.Tensor, where: torch.Tensor) -> str:
    idx = (active & where).nonzero()
    if not idx.numel():
        return "none"
    mu, *x = idx[0].tolist()
    return f"U_{mu}(x={x})"


def _check_shapes(names, nd: int, key: str) -> tuple[str, ...]:
    if not names:
        raise MaskError(key, "expected at least one loop shape, e.g. [plaquette]")
    for i, s in enumerate(names):
        if s not in LOOP_SHAPES:
            raise MaskError(f"{key}[{i}]", f"expected one of {', '.join(LOOP_SHAPES)}, got {s!r}")
        if s not in shapes_for(nd):
            raise MaskError(f"{key}[{i}]", f"a {s} needs three lattice directions; this "
                                           f"lattice has Nd = {nd}")
    if len(set(names)) != len(names):
        raise MaskError(key, f"expected distinct loop shapes, got {list(names)}")
    return tuple(names)


def build_schedule(shape, patterns: list[MaskPattern] | None = None, *, layers: int = 0,
                   active_shapes=("plaquette",), feature_shapes=None, multi_update: int = 1,
                   require_coverage: bool = True) -> Schedule:
    """All layer masks of a flow on the lattice ``shape``.

    ``layers``: number of layers, 0 for one full cycle (``P * max(width)``); ``patterns``:
    the mask patterns, ``None`` (or empty) for :func:`default_patterns`; ``active_shapes``: the
    loop shapes that update links; ``feature_shapes``: frozen-loop shapes for the context,
    ``None`` for every shape the lattice has; ``multi_update``: sequential updates per active
    link and layer. Raises :class:`MaskError` (field ``shape``, ``patterns[i]...``,
    ``active_shapes``, ``feature_shapes``, ``multi_update`` or ``layers``) for every choice
    that cannot be exact or leaves links that are never updated (``require_coverage=False``
    lets a test or a study build fewer layers than a full cycle).
    """
    shape = tuple(int(x) for x in shape)
    nd = len(shape)
    active_shapes = _check_shapes(list(active_shapes), nd, "active_shapes")
    feature_shapes = (_check_shapes(list(feature_shapes), nd, "feature_shapes")
                      if feature_shapes else shapes_for(nd))
    if multi_update < 1:
        raise MaskError("multi_update", f"expected a positive integer, got {multi_update}")
    if layers < 0:
        raise MaskError("layers", f"expected a non-negative integer, got {layers}")
    if patterns:
        patterns = list(patterns)
        for i, p in enumerate(patterns):
            check_pattern(shape, p, f"patterns[{i}]")
        pattern_key = "patterns[{}]"
    else:
        patterns = default_patterns(shape)
        pattern_key = "active_shapes"  # the defaults are fine; the loop shapes are not
    n_pat = len(patterns)
    full_cycle = n_pat * max(p.width for p in patterns)
    n_layers = layers or full_cycle

    # Coverage first: it needs only the link masks, and an uncovered link is the likelier error.
    schedule = [(i % n_pat, (i // n_pat) % patterns[i % n_pat].width) for i in range(n_layers)]
    ever = _ever_active(shape, patterns, schedule)
    if require_coverage and not bool(ever.all()):
        _refuse_uncovered(shape, patterns, schedule, full_cycle, ever, layers)

    # Layers of one pattern differ by their offset, i.e. by a lattice translation: build the
    # first offset of each pattern, move it for the others (4x fewer walks with width 4).
    built: dict[tuple[int, int], LayerMask] = {}
    first: dict[int, LayerMask] = {}
    out = []
    for i, (p, offset) in enumerate(schedule):
        if (p, offset) not in built:
            t = translation(patterns[p], shape, first[p].offset, offset) if p in first else None
            if t is not None:
                built[p, offset] = translate_layer(first[p], t, offset=offset, index=i)
            else:
                built[p, offset] = build_layer(
                    shape, patterns[p], offset, active_shapes=active_shapes,
                    feature_shapes=feature_shapes, multi_update=multi_update,
                    index=i, pattern_index=p, key=pattern_key.format(p))
                first.setdefault(p, built[p, offset])
        out.append(dataclasses.replace(built[p, offset], index=i))

    per_layer = len(active_shapes) * multi_update
    coverage = torch.zeros((nd, *shape), dtype=torch.int64)
    for layer in out:
        coverage += per_layer * layer.active
    return Schedule(shape=shape, layers=out, coverage=coverage, patterns=patterns,
                    active_shapes=active_shapes, feature_shapes=feature_shapes,
                    multi_update=multi_update)


def _ever_active(shape, patterns, schedule) -> torch.Tensor:
    """Links active in at least one of the ``(pattern, offset)`` layers: bool ``[Nd, *L]``."""
    ever = torch.zeros((len(shape), *shape), dtype=torch.bool)
    for p, offset in set(schedule):
        pat = patterns[p]
        ever |= link_mask(shape, pat.directions, pat.steps, pat.width, offset)
    return ever


def _refuse_uncovered(shape, patterns, schedule, full_cycle, ever, layers):
    """Raise a MaskError that says how many links are never updated and why."""
    nd = len(shape)
    missing = ~ever
    parts = []
    for mu in range(nd):
        n = int(missing[mu].sum())
        if not n:
            continue
        users = [i for i, p in enumerate(patterns) if mu in p.directions]
        if not users:
            parts.append(f"direction {mu}: {n} links, in no pattern's directions")
            continue
        used = {p: sorted({o for q, o in schedule if q == p}) for p in users}
        detail = "; ".join(f"pattern {p} meets offsets {used[p]} of 0..{patterns[p].width - 1}"
                           for p in users)
        parts.append(f"direction {mu}: {n} links ({detail})")
    msg = (f"{int(missing.sum())} of {missing.numel()} links are never updated in "
           f"{len(schedule)} layers: " + "; ".join(parts))
    if layers and layers < full_cycle:
        n_pat = len(patterns)
        cycle = [(i % n_pat, (i // n_pat) % patterns[i % n_pat].width) for i in range(full_cycle)]
        if bool(_ever_active(shape, patterns, cycle).all()):
            raise MaskError("layers", f"{msg}; use at least the full cycle of "
                                      f"{full_cycle} layers (or 0 for one cycle)")
    raise MaskError("patterns", f"{msg}; add patterns (or directions) that make those "
                                      f"links active")
