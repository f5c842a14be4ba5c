"""Wilson action (with rectangle term) and observables."""

import itertools
import math

import pytest
import torch

from hpcflow.lattice.action import GaugeAction, action_density
from hpcflow.lattice.groups import U1, gauge_transform, get_group, random_gauge
from hpcflow.lattice.observables import (
    average_plaquette,
    polyakov_loop,
    topological_charge,
    wilson_loop,
)
from tests.helpers import GROUPS, SHAPES, random_links


@pytest.mark.parametrize("c1", [0.0, -1 / 12])
@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("name", GROUPS)
def test_action_gauge_invariant(name, nd, c1):
    g = torch.Generator().manual_seed(nd)
    group, links = random_links(name, SHAPES[nd], generator=g)
    omega = random_gauge(group, 2, SHAPES[nd], generator=g)
    action = GaugeAction(group, beta=2.5, c1=c1)
    s1, s2 = action(links), action(gauge_transform(links, omega, group))
    assert s1.shape == (2,)
    assert torch.allclose(s1, s2, atol=1e-10)


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_u1_wilson_action_is_minus_beta_sum_cos(nd):
    """U(1): S = -beta sum_x sum_{mu<nu} cos(theta_mu(x) + theta_nu(x+mu) - ...)."""
    shape = SHAPES[nd]
    group, links = random_links("U1", shape, generator=torch.Generator().manual_seed(5))
    theta = U1.angle(links)
    expect = torch.zeros(2, dtype=torch.float64)
    for mu, nu in itertools.combinations(range(nd), 2):
        tp = (theta[:, mu] + torch.roll(theta[:, nu], -1, 1 + mu)
              - torch.roll(theta[:, mu], -1, 1 + nu) - theta[:, nu])
        expect += torch.cos(tp).flatten(1).sum(1)
    assert torch.allclose(GaugeAction(group, 1.7)(links), -1.7 * expect, atol=1e-12)


@pytest.mark.parametrize("name", GROUPS)
def test_action_on_unit_configuration(name):
    """Cold start: S = -beta V (c0 n_plaq + c1 n_rect), c0 = 1 - 8 c1."""
    group = get_group(name)
    shape = (3, 4, 2, 3)
    links = group.identity((1, 4, *shape))
    vol = math.prod(shape)
    c1 = -0.331
    s = GaugeAction(group, 3.0, c1)(links)
    assert s.item() == pytest.approx(-3.0 * vol * ((1 - 8 * c1) * 6 + c1 * 12))


def test_action_density_sums_to_action():
    group, links = random_links("SU3", SHAPES[3], generator=torch.Generator().manual_seed(2))
    dens = action_density(links, group, 5.5, c1=-1 / 12)
    assert dens.shape == (2, *SHAPES[3])
    assert torch.allclose(dens.flatten(1).sum(1), GaugeAction(group, 5.5, -1 / 12)(links))


def test_plaquette_equals_one_by_one_wilson_loop():
    group, links = random_links("SU2", SHAPES[4], generator=torch.Generator().manual_seed(3))
    assert torch.allclose(average_plaquette(links, group), wilson_loop(links, group, 1, 1))
    vol = math.prod(SHAPES[4])
    s = GaugeAction(group, 1.0)(links)
    assert torch.allclose(average_plaquette(links, group), -s / (vol * 6))


def test_wilson_loop_of_abelian_constant_field():
    """U(1) with theta_0 = a x_1 (a constant field strength through the 0-1 plane): an
    R x T loop in that plane has angle -a R T; its average over planes follows."""
    shape = (8, 8)
    a = 2 * math.pi / 8  # commensurate with the torus so the field is periodic in x_1
    x1 = torch.arange(8, dtype=torch.float64)
    theta = torch.zeros(1, 2, *shape, dtype=torch.float64)
    theta[0, 0] = a * x1[None, :]
    links = U1.from_angle(theta)
    for r, t in [(1, 1), (2, 1), (2, 3)]:
        w = wilson_loop(links, U1(), r, t)
        assert w.item() == pytest.approx(math.cos(a * r * t), abs=1e-12)


def test_polyakov_loop_of_constant_field():
    group = get_group("SU3")
    u = group.random((1,), generator=torch.Generator().manual_seed(0))[0]
    shape = (4, 3, 3)
    links = u.expand(1, 3, *shape, 3, 3).clone()
    for axis, length in enumerate(shape):
        expect = torch.trace(torch.linalg.matrix_power(u, length)) / 3
        assert torch.allclose(polyakov_loop(links, group, axis=axis), expect[None], atol=1e-12)


def test_polyakov_loop_gauge_invariant():
    g = torch.Generator().manual_seed(4)
    group, links = random_links("SU2", SHAPES[3], generator=g)
    omega = random_gauge(group, 2, SHAPES[3], generator=g)
    p1 = polyakov_loop(links, group, axis=1)
    p2 = polyakov_loop(gauge_transform(links, omega, group), group, axis=1)
    assert torch.allclose(p1, p2, atol=1e-12)


def test_topological_charge_is_integer_and_detects_instanton():
    """Random fields give integer Q; a unit-charge field (uniform flux 2 pi / V) gives Q = 1."""
    group, links = random_links("U1", (6, 6), batch=50, generator=torch.Generator().manual_seed(1))
    q = topological_charge(links, group)
    assert torch.allclose(q, q.round(), atol=1e-10)
    assert q.abs().max() > 0  # random fields carry charge
    # Uniform flux F = 2 pi / (L0 L1) per plaquette, realised with a transition function on
    # the boundary: theta_1(x0, x1) = F x0 * ... (standard construction).
    L = 6
    f = 2 * math.pi / (L * L)
    theta = torch.zeros(1, 2, L, L, dtype=torch.float64)
    x0 = torch.arange(L, dtype=torch.float64)
    theta[0, 1] = f * x0[:, None]                   # theta_1(x) = F x0
    theta[0, 0, L - 1, :] = -f * L * torch.arange(L, dtype=torch.float64)  # closes the torus
    links = U1.from_angle(theta)
    assert topological_charge(links, U1()).item() == pytest.approx(1.0, abs=1e-10)
    plaq = average_plaquette(links, U1())
    assert plaq.item() == pytest.approx(math.cos(f), abs=1e-12)


def test_topological_charge_refuses_other_theories():
    group, links = random_links("SU2", (4, 4))
    with pytest.raises(ValueError, match="2D U"):
        topological_charge(links, group)


def _constant_fluxes(n01: int, n23: int, shape) -> torch.Tensor:
    """U(1) links ``[1, 4, *L, 1, 1]`` with ``n01`` flux quanta through every (0, 1) plane and
    ``n23`` through every (2, 3) plane, spread evenly over the plaquettes."""
    theta = torch.zeros(4, *shape, dtype=torch.float64)
    x = torch.meshgrid(*[torch.arange(n, dtype=torch.float64) for n in shape], indexing="ij")
    for (a, b), n in (((0, 1), n01), ((2, 3), n23)):
        area = shape[a] * shape[b]
        theta[b] = 2 * math.pi * n * x[a] / area
        theta[a] = torch.where(x[a] == shape[a] - 1, -2 * math.pi * n * x[b] / shape[b], 0.0)
    return torch.exp(1j * theta)[None, ..., None, None]


@pytest.mark.parametrize("n01, n23", [(1, 1), (2, -1), (0, 3), (-1, -2)])
def test_clover_charge_of_constant_fluxes(n01, n23):
    """Q = n01 n23 up to the clover's O(1 / area) (sin of the plaquette angle for the angle)."""
    from hpcflow.lattice.observables import clover_charge

    shape = (6, 6, 6, 6)
    q = clover_charge(_constant_fluxes(n01, n23, shape), U1()).item()
    t01, t23 = 2 * math.pi * n01 / 36, 2 * math.pi * n23 / 36
    expect = math.prod(shape) * math.sin(t01) * math.sin(t23) / (4 * math.pi**2)
    assert q == pytest.approx(expect, abs=1e-12)
    assert abs(q - n01 * n23) <= 0.1 * abs(n01 * n23)


@pytest.mark.parametrize("name", ["U1", "SU2", "SU3"])
def test_clover_charge_gauge_invariant_and_odd_under_reflection(name):
    from hpcflow.lattice.observables import clover_charge

    g = torch.Generator().manual_seed(5)
    group, links = random_links(name, (4, 2, 2, 4), generator=g)
    omega = random_gauge(group, 2, (4, 2, 2, 4), generator=g)
    q = clover_charge(links, group)
    assert torch.allclose(q, clover_charge(gauge_transform(links, omega, group), group),
                          atol=1e-10)
    # swapping lattice axes 1 and 2 (and those link directions) is a reflection: Q -> -Q
    swapped = links.transpose(3, 4)[:, [0, 2, 1, 3]]
    assert torch.allclose(average_plaquette(swapped, group), average_plaquette(links, group))
    assert torch.allclose(clover_charge(swapped, group), -q, atol=1e-10)
    assert q.abs().max() > 1e-3  # a rough configuration has a non-zero clover charge


def test_su2_embedding_doubles_the_u1_charge():
    """diag(e^{i theta}, e^{-i theta}) carries twice the U(1) field's tr F F."""
    from hpcflow.lattice.observables import clover_charge

    u = _constant_fluxes(1, 1, (6, 6, 4, 4))[..., 0, 0]
    su2 = torch.zeros(*u.shape, 2, 2, dtype=torch.complex128)
    su2[..., 0, 0], su2[..., 1, 1] = u, u.conj()
    q1 = clover_charge(u[..., None, None], U1())
    assert torch.allclose(clover_charge(su2, get_group("SU2")), 2 * q1, atol=1e-12)


def test_measure_names():
    from hpcflow.lattice.observables import measure, measured_names

    for name, shape in (("U1", (4, 4)), ("SU2", (4, 4)), ("U1", (2, 2, 2)),
                        ("SU3", (2, 2, 2, 2))):
        group, links = random_links(name, shape, generator=torch.Generator().manual_seed(1))
        out = measure(links, group)
        assert tuple(out) == measured_names(group, len(shape))
        assert all(v.shape == (2,) and v.dtype == torch.float64 for v in out.values())
