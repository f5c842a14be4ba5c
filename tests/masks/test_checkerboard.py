"""Generalized checkerboard: the formula site by site, validation, default patterns."""

import itertools

import pytest

from hpcflow.masks import MaskError, MaskPattern, check_pattern, default_patterns, link_mask


@pytest.mark.parametrize(
    "shape, directions, steps, width, offset",
    [
        ((8, 4), [0], [0, 1], 4, 1),
        ((4, 6, 2), [1, 2], [1, 2, 3], 2, 1),
        ((4, 8, 4), [1], [1, 2, 2], 4, 3),
        ((4, 4, 4, 8), [0, 3], [1, 3, 2, 1], 4, 2),
    ],
)
def test_link_mask_is_the_formula(shape, directions, steps, width, offset):
    """active[mu, x] iff mu in directions and (sum steps x + offset) % width == 0."""
    active = link_mask(shape, directions, steps, width, offset)
    assert active.shape == (len(shape), *shape)
    for mu in range(len(shape)):
        for x in itertools.product(*(range(n) for n in shape)):
            phase = (sum(s * xi for s, xi in zip(steps, x, strict=True)) + offset) % width
            assert bool(active[(mu, *x)]) == (mu in directions and phase == 0)


@pytest.mark.parametrize(
    "pattern, field, words",
    [
        (MaskPattern([0], [0, 1], 4), "m[1].steps", ["3 steps"]),
        (MaskPattern([], [0, 1, 1], 4), "m[1].directions", ["at least one"]),
        (MaskPattern([3], [0, 1, 1], 4), "m[1].directions", ["0..2"]),
        (MaskPattern([1, 1], [0, 1, 1], 4), "m[1].directions", ["distinct"]),
        (MaskPattern([1], [0, 1, 1], 0), "m[1].width", ["positive"]),
        # L_2 = 6 is not a multiple of 4: the phase would jump across the boundary.
        (MaskPattern([1], [1, 0, 1], 4), "m[1].steps",
         ["steps[2] * L_2 = 1 * 6", "width 4", "lattice [4, 4, 6]"]),
        (MaskPattern([1], [2, 0, 2], 4), "m[1].steps", ["divisor 2"]),
    ],
)
def test_check_pattern_refuses_naming_the_field(pattern, field, words):
    with pytest.raises(MaskError) as err:
        check_pattern((4, 4, 6), pattern, "m[1]")
    assert err.value.field == field
    for w in words:
        assert w in str(err.value)


def test_seed_patterns_are_valid_on_multiples_of_four():
    for dirs, steps in ([1, 2], [1, 0, 0]), ([2], [1, 0, 0]), ([2], [1, 2, 0]), ([1], [1, 2, 2]):
        check_pattern((4, 8, 12), MaskPattern(dirs, steps, 4), "m")


@pytest.mark.parametrize("shape", [(4, 8), (8, 4, 12), (4, 4, 4, 8)])
def test_default_patterns(shape):
    """One pattern per direction: stripe (step 1), checkerboard (step 2), lines along mu."""
    pats = default_patterns(shape)
    nd = len(shape)
    assert [p.directions for p in pats] == [[mu] for mu in range(nd)]
    for mu, p in enumerate(pats):
        check_pattern(shape, p, f"m[{mu}]")
        assert p.width == 4 and p.steps[mu] == 0 and p.steps[(mu + 1) % nd] == 1
        assert sorted(p.steps) == sorted([0, 1] + [2] * (nd - 2))
    if nd == 2:  # the stripes of arXiv:2101.08176
        assert [p.steps for p in pats] == [[0, 1], [1, 0]]


@pytest.mark.parametrize("shape, width", [((6, 6), 3), ((6, 6, 6), 3), ((6, 6, 6, 6), 3),
                                          ((5, 5), 5), ((4, 4, 2), 2), ((2, 2, 2, 2), 2),
                                          ((8, 6, 4), 2), ((3, 3, 3), 3)])
def test_default_patterns_fit_other_lattices(shape, width):
    """Extents that are not multiples of 4 get the widest stripe pattern that fits, else the
    width-2 checkerboard; every plaquette holds at most one active link."""
    from hpcflow.masks import loop_counts

    pats = default_patterns(shape)
    assert [p.directions for p in pats] == [[mu] for mu in range(len(shape))]
    for i, p in enumerate(pats):
        check_pattern(shape, p, f"m[{i}]")
        assert p.width == width
        active = link_mask(shape, p.directions, p.steps, p.width)
        assert int(loop_counts(active, "plaquette").max()) <= 1


@pytest.mark.parametrize("shape", [(1, 4), (4, 4, 1), (4, 1, 4, 4)])
def test_default_patterns_refuse_lattices_no_mask_fits(shape):
    with pytest.raises(MaskError, match="no default mask fits") as err:
        default_patterns(shape)
    assert err.value.field == "shape"
