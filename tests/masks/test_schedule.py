"""Layer schedules: coverage, the invariants that make a coupling layer exact, refusals."""

import numpy as np
import pytest
import torch

from hpcflow.masks import MaskError, MaskPattern, build_schedule
from tests.masks.walk import active_on_path

SHAPES = {2: (4, 8), 3: (4, 4, 8), 4: (4, 4, 4, 4)}


def check_invariants(schedule):
    """The invariants stated in ``hpcflow.masks.schedule``, checked with numpy index
    arithmetic (no torch.roll, no path walker)."""
    shape = schedule.shape
    coverage = torch.zeros_like(schedule.coverage)
    for layer in schedule.layers:
        act = layer.active.numpy()
        assert set(layer.active_loops) == set(schedule.active_shapes)
        for shape_name, updates in layer.active_loops.items():
            assert len(updates) == schedule.multi_update
            loops_of_link = {}
            for update in updates:
                seen = torch.zeros_like(layer.active, dtype=torch.int64)
                for a in update:
                    assert a.path[0] == (a.mu, 1) and a.source.shape == shape_name
                    sites = a.sites.nonzero().numpy()
                    on = active_on_path(act, a.path, sites, shape)
                    # Its own link first, then frozen links only: W = U S with S frozen, so no
                    # other link updated in this layer sits on the loop.
                    assert on[0].all() and not on[1:].any()
                    seen += a.links
                    for x in sites:
                        loops_of_link.setdefault((a.mu, *x), []).append(a.path)
                # Exactly one loop per active link and update.
                assert torch.equal(seen, layer.active.long())
            # Different loops for different updates.
            assert all(len(set(p)) == len(p) == schedule.multi_update
                       for p in loops_of_link.values())
            assert len(loops_of_link) == int(layer.active.sum())
        for f in layer.features:
            assert f.loop.shape in schedule.feature_shapes
            sites = f.sites.nonzero().numpy()
            assert len(sites) and not active_on_path(act, f.loop.path, sites, shape).any()
        n = sum(len(u) for u in layer.active_loops.values())
        for update in layer.updates:
            for a in update:
                coverage += a.links
        assert len(layer.updates) == n
    assert torch.equal(coverage, schedule.coverage)
    assert bool((schedule.coverage > 0).all())


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_default_schedule_covers_every_link(nd):
    """One full cycle (Nd patterns x 4 offsets) updates every link exactly once."""
    sched = build_schedule(SHAPES[nd])
    assert len(sched.layers) == 4 * nd
    assert sched.active_shapes == ("plaquette",)
    assert sched.feature_shapes == (("plaquette", "rectangle") if nd == 2 else
                                    ("plaquette", "rectangle", "chair", "crown"))
    assert bool((sched.coverage == 1).all())
    for layer in sched.layers:
        assert layer.active_fraction == pytest.approx(1 / (4 * nd))
        assert layer.candidates["plaquette"] == (2 * (nd - 1), 2 * (nd - 1))
        # Every plaquette holds at most one active link.
        _, _, unusable = layer.loop_classes("plaquette")
        assert unusable == 0
    check_invariants(sched)


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_default_schedule_multi_update_two(nd):
    sched = build_schedule(SHAPES[nd], multi_update=2)
    assert bool((sched.coverage == 2).all())
    check_invariants(sched)


def test_schedule_with_several_shapes_and_layers():
    sched = build_schedule((4, 4, 4), layers=14, active_shapes=["plaquette", "rectangle"],
                           multi_update=2, feature_shapes=["plaquette", "chair"])
    assert len(sched.layers) == 14 and [la.index for la in sched.layers] == list(range(14))
    assert [(la.pattern_index, la.offset) for la in sched.layers[11:]] == [(2, 3), (0, 0),
                                                                          (1, 0)]
    assert set(sched.layers[0].frozen_features) == {"plaquette", "chair"}
    # Layers 0, 1 reappear as 12, 13: coverage 2 shapes x 2 updates, twice for those links.
    assert int(sched.coverage.min()) == 4 and int(sched.coverage.max()) == 8
    check_invariants(sched)


def test_user_patterns_and_widths():
    """Patterns of different widths: the cycle is P * max(width); width 2 repeats offsets."""
    masks = [MaskPattern([0], [0, 1], 4), MaskPattern([1], [1, 0], 2)]
    sched = build_schedule((4, 8), masks)
    assert [(la.pattern_index, la.offset) for la in sched.layers] == [
        (0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 0), (0, 3), (1, 1)]
    assert sched.layers[5].active is sched.layers[1].active  # built once, shared
    assert bool((sched.coverage[0] == 1).all()) and bool((sched.coverage[1] == 2).all())
    check_invariants(sched)


@pytest.mark.parametrize(
    "shape, kwargs, field, words",
    [
        # Direction 1 is in no pattern.
        ((4, 8), {"patterns": [MaskPattern([0], [0, 1], 4)]}, "patterns",
         ["32 of 64 links are never updated", "direction 1: 32 links, in no pattern"]),
        # Too few layers for a full cycle of the defaults.
        ((4, 8), {"layers": 6}, "layers",
         ["direction 0: 8 links", "offsets [0, 1, 2] of 0..3", "full cycle of 8"]),
        ((4, 8), {"multi_update": 3}, "multi_update", ["need 3 active plaquettes", "only 2"]),
        ((4, 4, 4, 4), {"multi_update": 7}, "multi_update", ["only 6"]),
        # Two directions in one pattern: every plaquette of an active link holds two.
        ((4, 4), {"patterns": [MaskPattern([0, 1], [1, 1], 4)]}, "patterns[0]",
         ["no plaquette with exactly one active link"]),
        ((4, 6), {"patterns": [MaskPattern([0], [1, 2], 4), MaskPattern([1], [0, 1], 4)]},
         "patterns[1].steps", ["not consistent", "1 * 6"]),
        ((1, 8), {}, "shape", ["no default mask fits"]),
        ((4, 8), {"feature_shapes": ["chair"]}, "feature_shapes[0]", ["Nd = 2"]),
        ((4, 8), {"active_shapes": ["crown"]}, "active_shapes[0]", ["Nd = 2"]),
        ((4, 8), {"active_shapes": []}, "active_shapes", ["at least one"]),
        ((4, 8), {"feature_shapes": ["plaquette", "plaquette"]}, "feature_shapes",
         ["distinct"]),
    ],
)
def test_refusals_name_the_argument(shape, kwargs, field, words):
    with pytest.raises(MaskError) as err:
        build_schedule(shape, **kwargs)
    assert err.value.field == field
    for w in words:
        assert w in str(err.value)


def test_frozen_features_match_a_recount():
    """Frozen sites of each feature are exactly the base sites with zero active links."""
    sched = build_schedule((4, 4, 4))
    layer = sched.layers[4]
    act = layer.active.numpy()
    for f in layer.features:
        every = np.argwhere(np.ones(sched.shape, dtype=bool))
        n_on = active_on_path(act, f.loop.path, every, sched.shape).sum(0)
        np.testing.assert_array_equal(f.sites.numpy().reshape(-1), n_on == 0)


def _same_layer(a, b):
    assert (a.pattern_index, a.offset) == (b.pattern_index, b.offset)
    assert torch.equal(a.active, b.active)
    assert a.candidates == b.candidates
    assert list(a.active_loops) == list(b.active_loops)
    for s in a.active_loops:
        for ua, ub in zip(a.active_loops[s], b.active_loops[s], strict=True):
            assert [(x.path, x.source, x.step, x.offset) for x in ua] == \
                [(x.path, x.source, x.step, x.offset) for x in ub]
            assert all(torch.equal(x.sites, y.sites) for x, y in zip(ua, ub, strict=True))
    assert [f.loop for f in a.features] == [f.loop for f in b.features]
    assert all(torch.equal(f.sites, g.sites) for f, g in zip(a.features, b.features, strict=True))


@pytest.mark.parametrize("nd, multi_update", [(2, 2), (3, 1), (4, 2)])
def test_translated_layers_equal_fresh_builds(nd, multi_update):
    """The schedule builds one offset per pattern and translates it; every layer must equal
    the layer built directly from its pattern and offset."""
    from hpcflow.masks import build_layer

    sched = build_schedule(SHAPES[nd], multi_update=multi_update,
                           active_shapes=["plaquette", "rectangle"] if nd == 2 else ["plaquette"])
    for layer in sched.layers:
        fresh = build_layer(sched.shape, layer.pattern, layer.offset,
                            active_shapes=sched.active_shapes, feature_shapes=sched.feature_shapes,
                            multi_update=multi_update, index=layer.index,
                            pattern_index=layer.pattern_index)
        _same_layer(layer, fresh)


def test_pattern_without_an_invertible_step_is_built_afresh():
    """steps [2, 3], width 6: no single step is invertible mod 6 (no translation along one
    axis), yet the pattern is valid (gcd 1); every offset is then built directly."""
    from hpcflow.masks.schedule import translation

    masks = [MaskPattern([0], [2, 3], 6), MaskPattern([1], [3, 2], 6)]
    assert translation(masks[0], (6, 6), 0, 1) is None
    sched = build_schedule((6, 6), masks)
    assert len(sched.layers) == 12
    assert bool((sched.coverage == 1).all())
    check_invariants(sched)


def test_partial_schedule_when_coverage_is_not_required():
    sched = build_schedule((4, 8), layers=1, require_coverage=False)
    assert len(sched.layers) == 1
    assert int(sched.coverage.sum()) == int(sched.layers[0].active.sum()) == 8
