"""The path walker: explicit formulas, gauge symmetry, loop families and their counts."""

import itertools
import math

import pytest
import torch

from hpcflow.lattice.groups import Angles, gauge_transform, get_group, random_gauge
from hpcflow.lattice.loops import (
    LOOP_SHAPES,
    closed_loop_trace,
    link_offsets,
    loop_matrix,
    loops_of_shape,
    path_indices,
    path_product,
    path_table,
    reroot,
    reverse,
    table_product,
)
from tests.helpers import GROUPS, SHAPES, random_links


def _site_link(links, b, mu, x, shape):
    """U_mu(x) read by explicit periodic indexing (no roll), [Nc, Nc]."""
    idx = tuple(xi % li for xi, li in zip(x, shape, strict=True))
    return links[(b, mu, *idx)]


def _explicit(links, group, steps, x, shape):
    """Walk a list of (+-mu) steps by hand from site x with Python integer arithmetic."""
    x = list(x)
    w = torch.eye(group.nc, dtype=links.dtype)
    for mu, s in steps:
        if s > 0:
            w = w @ _site_link(links, 0, mu, x, shape)
            x[mu] += 1
        else:
            x[mu] -= 1
            w = w @ _site_link(links, 0, mu, x, shape).conj().T
    return w


def _e(nd, *pairs):
    v = [0] * nd
    for mu, k in pairs:
        v[mu] += k
    return v


def _add(x, v):
    return [a + b for a, b in zip(x, v, strict=True)]


@pytest.mark.parametrize("name", GROUPS)
def test_loops_match_handwritten_formulas(name):
    """Plaquette, rectangle, chair, crown at one site equal products written out by hand."""
    shape = (3, 4, 5, 3)
    group, links = random_links(name, shape, batch=1, generator=torch.Generator().manual_seed(7))
    nd = 4
    x = [1, 2, 3, 0]
    U = lambda mu, y: _site_link(links, 0, mu, y, shape)  # noqa: E731
    D = lambda mu, y: U(mu, y).conj().T  # noqa: E731
    mu, nu, rho = 1, 3, 2
    m, n, r = _e(nd, (mu, 1)), _e(nd, (nu, 1)), _e(nd, (rho, 1))
    # P_{mu nu}(x) = U_mu(x) U_nu(x+mu) U_mu(x+nu)^dag U_nu(x)^dag
    plaq = U(mu, x) @ U(nu, _add(x, m)) @ D(mu, _add(x, n)) @ D(nu, x)
    # 2x1 rectangle, long side mu
    rect = (U(mu, x) @ U(mu, _add(x, m)) @ U(nu, _add(x, _e(nd, (mu, 2))))
            @ D(mu, _add(x, _e(nd, (mu, 1), (nu, 1)))) @ D(mu, _add(x, n)) @ D(nu, x))
    # chair +mu +nu -mu +rho -nu -rho
    chair = (U(mu, x) @ U(nu, _add(x, m)) @ D(mu, _add(x, n)) @ U(rho, _add(x, n))
             @ D(nu, _add(x, r)) @ D(rho, x))
    # crown +mu +nu +rho -mu -nu -rho
    crown = (U(mu, x) @ U(nu, _add(x, m)) @ U(rho, _add(x, _e(nd, (mu, 1), (nu, 1))))
             @ D(mu, _add(x, _e(nd, (nu, 1), (rho, 1)))) @ D(nu, _add(x, r)) @ D(rho, x))
    paths = {
        "plaq": ((mu, 1), (nu, 1), (mu, -1), (nu, -1)),
        "rect": ((mu, 1), (mu, 1), (nu, 1), (mu, -1), (mu, -1), (nu, -1)),
        "chair": ((mu, 1), (nu, 1), (mu, -1), (rho, 1), (nu, -1), (rho, -1)),
        "crown": ((mu, 1), (nu, 1), (rho, 1), (mu, -1), (nu, -1), (rho, -1)),
    }
    expected = {"plaq": plaq, "rect": rect, "chair": chair, "crown": crown}
    for key, path in paths.items():
        w = path_product(links, path, group)[(0, *x)]
        assert torch.allclose(w, expected[key], atol=1e-12), key


@pytest.mark.parametrize("name", GROUPS)
@pytest.mark.parametrize("nd", [2, 3, 4])
def test_one_table_for_many_paths_equals_walker(name, nd):
    """:func:`path_table` + :func:`table_product`: paths of different lengths (padded with the
    unit element) and orientations in one gather from ``[U, U^dagger, 1]`` equal the walker at
    their sites, for matrices and angles (the coupling layers' loops, issue 19)."""
    shape = SHAPES[nd]
    gen = torch.Generator().manual_seed(12)
    group, links = random_links(name, shape, batch=2, generator=gen)
    theta = torch.rand((2, nd, *shape), generator=gen, dtype=torch.float64) * 6.3
    paths, sites = [], []
    for sh in LOOP_SHAPES:
        for loop in loops_of_shape(sh, nd):  # every family member, closed and open
            paths += [loop.path, loop.path[:3]]
            sites += [torch.rand(shape, generator=gen) < 0.5, torch.ones(shape, dtype=bool)]
    table = path_table(paths, shape, sites)
    assert table.shape == (sum(int(s.sum()) for s in sites), 6)
    for p, s in zip(paths, sites, strict=True):  # path_indices: the rows the table pads
        index, backward = path_indices(p, shape, s)
        assert index.shape == backward.shape == (int(s.sum()), len(p))
    w = table_product(group.extend(links.reshape(2, -1, group.nc, group.nc)), table, group)
    a = table_product(Angles().extend(theta.reshape(2, -1)), table, Angles())
    pairs = list(zip(paths, sites, strict=True))
    expected_w = torch.cat([path_product(links, p, group)[:, s] for p, s in pairs], dim=1)
    expected_a = torch.cat([path_product(theta, p, Angles())[:, s] for p, s in pairs], dim=1)
    assert torch.allclose(w, expected_w, atol=1e-12)
    assert torch.allclose(a, expected_a, atol=1e-12)
    # U(1): the same table as a matrix (signed link counts) gives the same angles
    m = loop_matrix(table, nd * math.prod(shape), torch.float64)
    assert torch.allclose(theta.reshape(2, -1) @ m, expected_a, atol=1e-12)


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_walker_matches_explicit_walk_everywhere(nd):
    """Every family member, at every site, equals the explicit integer-arithmetic walk."""
    shape = SHAPES[nd]
    group, links = random_links("SU2", shape, batch=1, generator=torch.Generator().manual_seed(8))
    for sh in LOOP_SHAPES:
        for loop in loops_of_shape(sh, nd):
            w = path_product(links, loop.path, group)[0]
            for x in itertools.product(*map(range, shape)):
                ref = _explicit(links, group, loop.path, x, shape)
                assert torch.allclose(w[x], ref, atol=1e-12), (loop.label, x)


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("name", GROUPS)
def test_closed_loops_gauge_invariant(name, nd):
    """tr W(x) of every loop is unchanged by a random gauge transformation."""
    g = torch.Generator().manual_seed(nd)
    group, links = random_links(name, SHAPES[nd], generator=g)
    omega = random_gauge(group, 2, SHAPES[nd], generator=g)
    links2 = gauge_transform(links, omega, group)
    for sh in LOOP_SHAPES:
        for loop in loops_of_shape(sh, nd):
            t1 = closed_loop_trace(links, loop.path, group)
            t2 = closed_loop_trace(links2, loop.path, group)
            assert torch.allclose(t1, t2, atol=1e-12), loop.label


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("name", ["SU2", "SU3"])
def test_open_loops_gauge_covariant(name, nd):
    """Re-rooted open loops transform as W(x) -> Omega(x) W(x) Omega(x)^dag."""
    g = torch.Generator().manual_seed(10 + nd)
    group, links = random_links(name, SHAPES[nd], generator=g)
    omega = random_gauge(group, 2, SHAPES[nd], generator=g)
    links2 = gauge_transform(links, omega, group)
    for sh in LOOP_SHAPES:
        for loop in loops_of_shape(sh, nd):
            for i in range(len(loop.path)):
                path, _ = reroot(loop.path, i, nd)
                w1 = path_product(links, path, group)
                w2 = path_product(links2, path, group)
                expect = group.mul(group.mul(omega, w1), group.dagger(omega))
                assert torch.allclose(w2, expect, atol=1e-12), (loop.label, i)


def test_reroot_moves_the_chosen_link_first():
    """The re-rooted open loop at base + offset equals the cyclic rotation of the product,
    and starts with the chosen link (forwards even when the step was backwards)."""
    nd, shape = 3, (3, 4, 5)
    group, links = random_links("SU3", shape, batch=1, generator=torch.Generator().manual_seed(9))
    loop = loops_of_shape("chair", nd)[5]
    w = path_product(links, loop.path, group)[0]
    for i, (mu, sign, y) in enumerate(link_offsets(loop.path, nd)):
        path, base = reroot(loop.path, i, nd)
        assert base == y and path[0] == (mu, 1)
        w2 = path_product(links, path, group)[0]
        # same closed loop: equal traces (or conjugate traces for the reversed walk)
        t_orig = group.trace(w).roll(list(base), dims=(0, 1, 2))
        t_new = group.trace(w2)
        assert torch.allclose(t_new, t_orig if sign > 0 else t_orig.conj(), atol=1e-12)


def test_unit_configuration_gives_trace_nc():
    for name in GROUPS:
        group = get_group(name)
        links = group.identity((1, 3, 3, 3, 3))
        for sh in LOOP_SHAPES:
            for loop in loops_of_shape(sh, 3):
                tr = closed_loop_trace(links, loop.path, group)
                assert torch.allclose(tr, torch.full_like(tr, group.nc))


def test_u1_angle_walk_equals_phase_walk():
    """The Angles algebra walks U(1) loops as sums of angles, like the complex walk."""
    group, links = random_links("U1", (4, 3, 5), generator=torch.Generator().manual_seed(3))
    theta = group.angle(links)
    for loop in loops_of_shape("crown", 3) + loops_of_shape("rectangle", 3):
        a = path_product(theta, loop.path, Angles())
        c = path_product(links, loop.path, group)[..., 0, 0]
        assert torch.allclose(torch.polar(torch.ones_like(a), a), c, atol=1e-12)


# --------------------------------------------------------------------- loop family counting
def _canonical(path, nd):
    """Translation class of a closed loop as a set of undirected links (no wrap: Z^nd)."""
    edges = {(y, mu) for mu, _, y in link_offsets(path, nd)}
    low = min(y for y, _ in edges)
    return frozenset((tuple(a - b for a, b in zip(y, low, strict=True)), mu) for y, mu in edges)


def _classify(path, nd):
    """Geometric type of a closed, self-avoiding loop of 4 or 6 links, or None."""
    sites, x = [], [0] * nd
    for mu, s in path:
        x[mu] += s
        sites.append(tuple(x))
    if len(set(sites)) != len(path):
        return None
    dirs = [mu for mu, _ in path]
    span = sum(1 for d in range(nd) if max(y[d] for y in sites) > min(y[d] for y in sites))
    if len(path) == 4:
        return "plaquette"
    extent = sorted(max(y[d] for y in sites) - min(y[d] for y in sites) for d in range(nd))
    if span == 2:
        return "rectangle" if extent[-2:] == [1, 2] else None
    triples = [(dirs[i], dirs[(i + 1) % 6], dirs[(i + 2) % 6]) for i in range(6)]
    return "crown" if all(len(set(t)) == 3 for t in triples) else "chair"


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_loop_families_are_every_loop_exactly_once(nd):
    """Brute force: enumerate all closed walks of 4 and 6 steps on Z^nd, classify them by
    geometry; each family of loops_of_shape is exactly the set of translation classes."""
    steps = [(mu, s) for mu in range(nd) for s in (1, -1)]
    found = {sh: set() for sh in LOOP_SHAPES}
    for length in (4, 6):
        for path in itertools.product(steps, repeat=length):
            end = [0] * nd
            for mu, s in path:
                end[mu] += s
            if any(end):
                continue
            kind = _classify(path, nd)
            if kind is not None:
                found[kind].add(_canonical(path, nd))
    expected_counts = {
        "plaquette": nd * (nd - 1) // 2,
        "rectangle": nd * (nd - 1),
        "chair": 4 * nd * math.comb(nd - 1, 2),
        "crown": 4 * math.comb(nd, 3),
    }
    for sh in LOOP_SHAPES:
        family = [_canonical(lp.path, nd) for lp in loops_of_shape(sh, nd)]
        assert len(family) == len(set(family)) == expected_counts[sh], sh
        assert set(family) == found[sh], sh


def test_reverse_is_dagger():
    group, links = random_links("SU3", (3, 3), generator=torch.Generator().manual_seed(1))
    path = loops_of_shape("rectangle", 2)[1].path
    w, wr = path_product(links, path, group), path_product(links, reverse(path), group)
    assert torch.allclose(torch.roll(wr, 0), group.dagger(w), atol=1e-12)


def test_plaquette_counts_per_dimension():
    assert [len(loops_of_shape("plaquette", nd)) for nd in (2, 3, 4)] == [1, 3, 6]
    with pytest.raises(ValueError, match="loop shape"):
        loops_of_shape("hexagon", 3)


@pytest.mark.parametrize("name", GROUPS)
def test_table_product_gradient_equals_walker(name):
    """The gradient of the one-gather product (steps unbound from a step-major gather, whose
    backward stacks them once) equals the walker's, for matrices and angles."""
    shape = SHAPES[3]
    gen = torch.Generator().manual_seed(13)
    group, links = random_links(name, shape, batch=2, generator=gen)
    paths = [loop.path for sh in LOOP_SHAPES for loop in loops_of_shape(sh, 3)]
    table = path_table(paths, shape)
    for algebra, x in ((group, links), (Angles(), torch.rand((2, 3, *shape), generator=gen,
                                                             dtype=torch.float64) * 6.3)):
        x = x.clone().requires_grad_(True)
        flat = x.reshape(2, -1, *x.shape[2 + len(shape):])
        got = table_product(algebra.extend(flat), table, algebra)
        want = torch.cat([path_product(x, p, algebra).flatten(1, len(shape))
                          for p in paths], dim=1)
        weight = torch.randn(got.shape, generator=gen, dtype=torch.float64)
        g1, = torch.autograd.grad((got.real * weight).sum(), x)
        g2, = torch.autograd.grad((want.real * weight).sum(), x)
        torch.testing.assert_close(g1, g2, rtol=0, atol=1e-11)


@pytest.mark.parametrize("nd", [2, 3])
def test_loop_matrix_counts_links_with_sign_including_repeats(nd):
    """On a lattice of extent 2 a long loop crosses a link twice (forward and back, or twice
    forward through the periodic boundary): the matrix holds the net count, and its product
    equals the walker's angle and gradient."""
    shape = (2,) * nd
    gen = torch.Generator().manual_seed(21)
    paths = [loop.path for sh in LOOP_SHAPES for loop in loops_of_shape(sh, nd)]
    table = path_table(paths, shape)
    n_links = nd * math.prod(shape)
    m = loop_matrix(table, n_links, torch.float64)
    assert m.shape == (n_links, table.shape[0])
    assert set(m.unique().tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    theta = (torch.rand((2, nd, *shape), generator=gen, dtype=torch.float64) * 6.3
             ).requires_grad_(True)
    got = theta.reshape(2, -1) @ m
    want = torch.cat([path_product(theta, p, Angles()).flatten(1, nd) for p in paths], dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    weight = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    g1, = torch.autograd.grad((got * weight).sum(), theta)
    g2, = torch.autograd.grad((want * weight).sum(), theta)
    torch.testing.assert_close(g1, g2, rtol=0, atol=1e-12)
