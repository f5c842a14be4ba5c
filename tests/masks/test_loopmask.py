"""Loop counts for any link mask: the walker against a brute-force enumeration, the talk's
split-and-sum and NaN-trick methods, classification, active-loop candidates and assignment."""

import numpy as np
import pytest
import torch

from hpcflow.lattice.loops import LOOP_SHAPES, loops_of_shape
from hpcflow.masks.loopmask import (
    ACTIVE,
    FROZEN,
    UNUSABLE,
    assign_active_loops,
    candidate_loops,
    candidates_per_link,
    class_totals,
    classify,
    cross_check,
    loop_counts,
    loop_counts_split,
    loops_touching_active,
)
from tests.masks.walk import active_on_path, brute_counts, links_on_path

# Unequal extents catch axis mix-ups; an extent 2 makes some loops cross a link twice.
SHAPES = {2: (5, 4), 3: (3, 4, 5), 4: (3, 2, 4, 3)}
DENSITIES = (0.1, 0.3, 0.6)


def _random_mask(shape, density, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((len(shape), *shape), generator=gen) < density


def _shapes(nd):
    return [s for s in LOOP_SHAPES if loops_of_shape(s, nd)]


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("density", DENSITIES)
def test_walker_counts_equal_brute_force(nd, density):
    """Every loop of every shape at every site: walker count == link-by-link enumeration."""
    shape = SHAPES[nd]
    active = _random_mask(shape, density, seed=nd * 100 + int(10 * density))
    act_np = active.numpy()
    for name in _shapes(nd):
        counts = loop_counts(active, name)
        loops = loops_of_shape(name, nd)
        assert counts.shape == (len(loops), *shape)
        for j, loop in enumerate(loops):
            np.testing.assert_array_equal(counts[j].numpy(), brute_counts(act_np, loop.path, shape),
                                          err_msg=f"{loop.label}")


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("density", DENSITIES)
def test_split_and_sum_and_nan_trick_agree(nd, density):
    """The talk's two methods give the walker's counts (split) and its support (NaN)."""
    shape = SHAPES[nd]
    active = _random_mask(shape, density, seed=7 + nd)
    for name in _shapes(nd):
        fast = loop_counts(active, name).long()
        # A small chunk exercises the batching of the one-hot samples.
        assert torch.equal(loop_counts_split(active, name, chunk=17), fast)
        assert torch.equal(loops_touching_active(active, name), fast > 0)
        assert torch.equal(cross_check(active, name), fast)


def test_cross_check_catches_a_disagreement(monkeypatch):
    import hpcflow.masks.loopmask as lm

    active = _random_mask((4, 4), 0.3, seed=1)
    monkeypatch.setattr(lm, "loop_counts", lambda a, s: torch.zeros((1, 4, 4), dtype=torch.int8))
    with pytest.raises(AssertionError, match="split-and-sum"):
        lm.cross_check(active, "plaquette")


def test_empty_and_full_masks():
    shape = (4, 4, 4)
    none = torch.zeros((3, *shape), dtype=torch.bool)
    for name in _shapes(3):
        assert not loop_counts(none, name).any()
        assert not loop_counts_split(none, name).any()
        assert not loops_touching_active(none, name).any()
    full = torch.ones((3, *shape), dtype=torch.bool)
    assert (loop_counts(full, "plaquette") == 4).all()
    assert (loop_counts(full, "crown") == 6).all()


def test_classify():
    counts = torch.tensor([0, 1, 2, 3, 6], dtype=torch.int8)
    assert classify(counts).tolist() == [FROZEN, ACTIVE, UNUSABLE, UNUSABLE, UNUSABLE]
    assert class_totals(counts) == (1, 1, 3)


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("name", ["plaquette", "rectangle"])
def test_candidates_are_open_loops_with_one_active_link(nd, name):
    """A candidate starts with its active link U_mu(x), (mu, +1), and crosses no other active
    link; every (loop, site, active link) with count 1 is a candidate exactly once."""
    shape = SHAPES[nd]
    active = _random_mask(shape, 0.2, seed=3 * nd)
    act_np = active.numpy()
    loops = loops_of_shape(name, nd)
    cands = candidate_loops(active, loop_counts(active, name), loops)
    assert [any(c.offset) for c in cands] == sorted(any(c.offset) for c in cands)
    for c in cands:
        assert c.path[0] == (c.mu, 1)
        sites = c.sites.nonzero().numpy()
        on = active_on_path(act_np, c.path, sites, shape)
        assert on[0].all() and not on[1:].any()
        # The closed loop at the recorded base holds exactly one active link.
        bases = c.closed_bases().nonzero().numpy()
        assert (active_on_path(act_np, c.source.path, bases, shape).sum(0) == 1).all()
    # Expected number per link, by brute force: loops with count 1 through that link.
    expect = np.zeros(act_np.shape, dtype=np.int64)
    for loop in loops:
        counts = brute_counts(act_np, loop.path, shape)
        for x in np.argwhere(counts == 1):
            for mu, idx in links_on_path(loop.path, x[None], shape):
                if act_np[(mu, *idx[0])]:
                    expect[(mu, *idx[0])] += 1
    np.testing.assert_array_equal(candidates_per_link(active, cands).numpy(), expect)


@pytest.mark.parametrize("multi_update", [1, 2, 3])
def test_assignment_partitions_active_links(multi_update):
    """Per update every active link has exactly one loop; its loops differ between updates."""
    shape = (4, 5, 4)
    active = torch.zeros((3, *shape), dtype=torch.bool)
    active[1, ::4, :, ::2] = True  # sparse enough for 4 usable plaquettes per active link
    loops = loops_of_shape("plaquette", 3)
    cands = candidate_loops(active, loop_counts(active, "plaquette"), loops)
    assert int(candidates_per_link(active, cands)[active].min()) == 4
    updates = assign_active_loops(active, cands, multi_update)
    assert len(updates) == multi_update
    seen = torch.zeros((multi_update, *active.shape), dtype=torch.int64)
    for k, update in enumerate(updates):
        for a in update:
            seen[k] += a.links
    assert torch.equal(seen, active.long().expand_as(seen))
    for mu, *site in active.nonzero().tolist():
        used = [(a.source, a.step) for update in updates for a in update
                if a.mu == mu and a.sites[tuple(site)]]
        assert len(used) == len(set(used)) == multi_update


def test_assignment_refuses_too_few_candidates():
    active = torch.zeros((2, 4, 4), dtype=torch.bool)
    active[0, :, 0] = True
    cands = candidate_loops(active, loop_counts(active, "plaquette"),
                            loops_of_shape("plaquette", 2))
    assert len(assign_active_loops(active, cands, 2)) == 2
    with pytest.raises(ValueError, match="multi_update = 3"):
        assign_active_loops(active, cands, 3)
