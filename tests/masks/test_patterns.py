"""Known patterns: the 2D stripes of arXiv:2101.08176 and the four 3D examples of the talk.

Expected values are worked out by hand in the comments; ``V`` is the number of sites, ``p`` the
phase of the base site ``x`` of a loop.
"""

import pytest
import torch

from hpcflow.lattice.loops import loops_of_shape
from hpcflow.masks import MaskError, MaskPattern, build_layer, link_mask
from hpcflow.masks.checkerboard import link_phase
from hpcflow.masks.loopmask import class_totals, cross_check, loop_counts


@pytest.mark.parametrize("mu", [0, 1])
@pytest.mark.parametrize("stripe", [0, 1, 2, 3])
def test_2d_stripes_of_the_tutorial(mu, stripe):
    """Links of direction mu active where x_nu = s mod 4: the frozen plaquettes are the double
    stripes x_nu = s+1, s+2 mod 4 and the active plaquettes the single stripe x_nu = s.

    P_01(x) holds U_mu(x) and U_mu(x + nu): count [x_nu = s] + [x_nu + 1 = s], so it is frozen
    at x_nu = s+1, s+2, holds one active link at x_nu = s and s-1; the link at x takes the
    plaquette based at x (its own site) as in the tutorial; the stripe s-1 stays unused.
    """
    shape = (8, 12)
    nu = 1 - mu
    steps = [0, 0]
    steps[nu] = 1
    # The pattern's phase (x_nu + offset) % 4 == 0 puts the stripe at x_nu = -offset mod 4.
    pattern = MaskPattern([mu], steps, 4)
    layer = build_layer(shape, pattern, (-stripe) % 4)
    coord = torch.arange(shape[nu]).view([-1, 1] if nu == 0 else [1, -1]).expand(shape)
    rel = (coord - stripe) % 4
    assert torch.equal(layer.active[mu], rel == 0)
    assert not layer.active[nu].any()
    (frozen,) = layer.frozen_features["plaquette"]
    assert torch.equal(frozen.sites, (rel == 1) | (rel == 2))  # double stripes
    (update,) = layer.active_loops["plaquette"]
    (loop,) = update
    assert torch.equal(loop.closed_bases(), rel == 0)  # single stripe
    assert torch.equal(loop.sites, layer.active[mu])
    assert layer.candidates["plaquette"] == (2, 2)
    counts = cross_check(layer.active, "plaquette")[0]
    assert torch.equal(counts == 1, (rel == 0) | (rel == 3))


# --------------------------------------------------------------------------- talk, 3D examples
SHAPE_3D = (4, 8, 4)
V = 4 * 8 * 4


def _plaquette_planes(counts):
    """Per plane (mu, nu) of loops_of_shape('plaquette', 3): [(0,1), (0,2), (1,2)]."""
    return dict(zip([(0, 1), (0, 2), (1, 2)], counts, strict=True))


def _build(dirs, steps, multi_update=1):
    return build_layer(SHAPE_3D, MaskPattern(dirs, steps, 4), 0, multi_update=multi_update,
                       key="patterns[0]")


def test_seed_a_two_directions_stripe():
    """directions=[1,2], steps=[1,0,0]: U_1, U_2 active at x_0 = 0 mod 4: fraction 2/3 * 1/4.

    P_01, P_02 hold the active links at x and x + e_0: one active link where x_0 = 0 or 3,
    frozen where x_0 = 1, 2. P_12 holds four links of the same x_0: count 4 at x_0 = 0 (unusable),
    frozen elsewhere. Plaquettes: frozen (V/2 + V/2 + 3V/4) / 3V = 7/12, one active link
    1/3, unusable 1/12; every active link has 2 usable plaquettes (in the (0, mu) plane).
    """
    layer = _build([1, 2], [1, 0, 0], multi_update=2)
    assert layer.active_fraction == pytest.approx(1 / 6)
    x0 = link_phase(SHAPE_3D, [1, 0, 0], 4)
    planes = _plaquette_planes(loop_counts(layer.active, "plaquette"))
    assert torch.equal(planes[0, 1], ((x0 == 0) | (x0 == 3)).to(torch.int8))
    assert torch.equal(planes[0, 2], planes[0, 1])
    assert torch.equal(planes[1, 2], 4 * (x0 == 0).to(torch.int8))
    assert layer.loop_classes("plaquette") == (7 * V // 4, V, V // 4)
    assert layer.candidates["plaquette"] == (2, 2)
    with pytest.raises(MaskError, match="multi_update"):
        _build([1, 2], [1, 0, 0], multi_update=3)


def test_seed_b_one_direction_stripe():
    """directions=[2], steps=[1,0,0]: U_2 at x_0 = 0 mod 4: fraction 1/12.

    P_01 frozen; P_02: one active link at x_0 = 0, 3, frozen at 1, 2; P_12 holds U_2(x) and
    U_2(x + e_1), same x_0: count 2 at x_0 = 0, frozen elsewhere. Frozen (V + V/2 + 3V/4)/3V
    = 3/4, one active link 1/6, unusable 1/12; 2 usable plaquettes per active link.
    """
    layer = _build([2], [1, 0, 0])
    assert layer.active_fraction == pytest.approx(1 / 12)
    assert layer.loop_classes("plaquette") == (9 * V // 4, V // 2, V // 4)
    assert layer.candidates["plaquette"] == (2, 2)


def test_seed_c_stripe_and_checkerboard():
    """directions=[2], steps=[1,2,0]: phase p = x_0 + 2 x_1 mod 4, U_2 at p = 0: fraction 1/12.

    P_01 frozen; P_02 holds U_2 at phases p, p+1 and P_12 at p, p+2: each one active link at
    half of the sites, frozen at the other half, never two. Frozen 2/3, one active link 1/3,
    unusable 0; 4 usable plaquettes per active link (multi_update up to 4).
    Rectangles (long side first): (0,2) holds U_2 at p, p+2: one active link at half the sites;
    (1,2) at p, p+4 = p: count 2 at a quarter; (2,0) at p, p, p+1, p+1: count 2 at half;
    (2,1) at p, p, p+2, p+2: count 2 at half; (0,1), (1,0) frozen. Frozen
    (2V + V/2 + 3V/4 + V/2 + V/2) / 6V = 17/24, one active link 2/24, unusable 5/24.
    """
    layer = _build([2], [1, 2, 0], multi_update=4)
    assert layer.active_fraction == pytest.approx(1 / 12)
    assert layer.loop_classes("plaquette") == (2 * V, V, 0)
    assert layer.candidates["plaquette"] == (4, 4)
    totals = class_totals(loop_counts(layer.active, "rectangle"))
    assert totals == (17 * V // 4, V // 2, 5 * V // 4)
    assert sum(totals) == 6 * V


def test_seed_d_checkerboard_along_the_active_direction():
    """directions=[1], steps=[1,2,2]: p = x_0 + 2 x_1 + 2 x_2 mod 4, U_1 at p = 0: 1/12.

    P_02 frozen; P_01 holds U_1 at p+1, p; P_12 at p, p+2: the same classes as example C.
    """
    layer = _build([1], [1, 2, 2], multi_update=4)
    assert layer.active_fraction == pytest.approx(1 / 12)
    assert layer.loop_classes("plaquette") == (2 * V, V, 0)
    assert layer.candidates["plaquette"] == (4, 4)
    planes = _plaquette_planes(loop_counts(layer.active, "plaquette"))
    assert not planes[0, 2].any()


@pytest.mark.parametrize("dirs, steps", [([1, 2], [1, 0, 0]), ([2], [1, 0, 0]),
                                         ([2], [1, 2, 0]), ([1], [1, 2, 2])])
def test_seed_examples_cross_checked_for_every_shape(dirs, steps):
    active = link_mask(SHAPE_3D, dirs, steps, 4, 1)
    for name in ("plaquette", "rectangle", "chair", "crown"):
        counts = cross_check(active, name)
        assert counts.shape[0] == len(loops_of_shape(name, 3))
