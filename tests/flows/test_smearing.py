"""The learned stout-smearing layer: its log-determinant against the autograd Jacobian in
Lie-algebra coordinates, invertibility, gauge covariance, the identity at zero parameters."""

import pytest
import torch

from hpcflow.flows.smearing import StoutSmearing
from hpcflow.lattice.algebra import algebra_basis, algebra_exp
from hpcflow.lattice.groups import gauge_transform, get_group, random_gauge

F64 = torch.float64


def layer_with(group, shape, scale, seed=0):
    layer = StoutSmearing(group, shape)
    with torch.no_grad():  # far from zero, up to the edge of the allowed range
        layer.p.copy_(scale * torch.randn(layer.p.shape, generator=torch.Generator().manual_seed(
            seed), dtype=F64))
    return layer


@pytest.mark.parametrize("name, shape", [("U1", (2, 2)), ("U1", (2, 2, 2)), ("SU2", (2, 2)),
                                         ("SU2", (2, 2, 2)), ("SU3", (2, 2))])
@pytest.mark.parametrize("scale", [0.5, 3.0])
def test_logdet_equals_the_autograd_jacobian(name, shape, scale):
    """J_ab = d coord_a(U'(v) U'(0)^dag) / d v_b at v = 0 over every link and generator,
    U(v) = exp(v.T) U; slogdet(J) equals the reported log-determinant."""
    g = get_group(name)
    basis = algebra_basis(g)
    nd = len(shape)
    links = g.random((1, nd, *shape), generator=torch.Generator().manual_seed(1))
    layer = layer_with(g, shape, scale)
    out, logdet = layer(links)
    n_links = nd * torch.Size(shape).numel()
    n_gen = basis.shape[0]

    def coords(v):
        x = torch.einsum("lc,cij->lij", v.view(n_links, n_gen).to(basis.dtype), basis)
        moved = algebra_exp(x, g).view(1, nd, *shape, g.nc, g.nc) @ links
        new, _ = layer(moved)
        rel = (new @ out.conj().transpose(-1, -2)).reshape(n_links, g.nc, g.nc)
        anti = 0.5 * (rel - rel.conj().transpose(-1, -2))
        return torch.einsum("aij,lij->la", basis.conj(), anti).real.reshape(-1)

    jac = torch.autograd.functional.jacobian(coords, torch.zeros(n_links * n_gen, dtype=F64))
    sign, value = torch.linalg.slogdet(jac)
    assert sign > 0
    assert torch.allclose(value, logdet[0], atol=1e-9), (value, logdet)


@pytest.mark.parametrize("name", ["U1", "SU2", "SU3"])
def test_zero_parameters_are_the_identity(name):
    g = get_group(name)
    links = g.random((2, 2, 4, 4), generator=torch.Generator().manual_seed(0))
    out, logdet = StoutSmearing(g, (4, 4))(links)
    assert torch.equal(out, links) and torch.equal(logdet, torch.zeros(2, dtype=F64))


@pytest.mark.parametrize("name", ["U1", "SU3"])
def test_sampling_without_autograd_equals_the_graph_path_and_keeps_the_input(name):
    """Without autograd the layer updates one copy of the links in place."""
    g = get_group(name)
    links = g.random((2, 3, 4, 4, 2), generator=torch.Generator().manual_seed(1))
    before = links.clone()
    layer = layer_with(g, (4, 4, 2), 3.0)
    out, logdet = layer(links)
    with torch.no_grad():
        out_ng, logdet_ng = layer(links)
    assert torch.equal(links, before)
    assert torch.equal(out_ng, out.detach()) and torch.equal(logdet_ng, logdet.detach())


@pytest.mark.parametrize("name", ["U1", "SU3"])
def test_gauge_covariant_and_logdet_invariant(name):
    g = get_group(name)
    shape = (4, 2, 2)
    gen = torch.Generator().manual_seed(2)
    links = g.random((2, 3, *shape), generator=gen)
    omega = random_gauge(g, 2, shape, generator=gen)
    layer = layer_with(g, shape, 2.0)
    out, ld = layer(links)
    out2, ld2 = layer(gauge_transform(links, omega, g))
    assert torch.allclose(out2, gauge_transform(out, omega, g), atol=1e-12)
    assert torch.allclose(ld, ld2, atol=1e-10)


@pytest.mark.parametrize("name", ["U1", "SU2", "SU3"])
def test_the_map_is_invertible(name):
    """Every half is a contraction around the identity (|rho| |A| < 1): the fixed-point
    iteration U = exp(rho Pi(U A)) U' recovers the input, half by half in reverse order."""
    g = get_group(name)
    shape = (4, 4)
    links = g.random((3, 2, *shape), generator=torch.Generator().manual_seed(5))
    layer = layer_with(g, shape, 5.0)  # rho at the edge of its range
    out, _ = layer(links)
    from hpcflow.lattice.algebra import project_algebra
    from hpcflow.updates.heatbath import staple_at

    rho = layer.rho()
    flat = out.reshape(3, -1, g.nc, g.nc).clone()
    for mu in reversed(range(2)):
        for parity in (1, 0):
            sites, a = staple_at(flat.view_as(out), mu, parity, g)
            rows = sites + mu * 16
            target = flat.index_select(1, rows)
            u = target
            for _ in range(200):
                u = algebra_exp(rho[mu, parity] * project_algebra(u @ a), g) @ target
            flat = flat.index_copy(1, rows, u)
    assert torch.allclose(flat.view_as(links), links, atol=1e-10)


def test_logdet_series_is_exact_at_the_largest_m():
    """``G(M)`` by the adaptive series equals the block-exponential ``exp([[-M, 1], [0, 0]])``
    (its upper right block is ``sum (-M)^k / (k + 1)!``) at |M| up to the largest ``rho_max``
    allows; the fixed 10-term series of before was off by up to 1e-4 there."""
    from hpcflow.flows.smearing import _structure, series_terms, stout_logdet
    from hpcflow.lattice.algebra import project_algebra

    g = get_group("SU3")
    basis = algebra_basis(g)
    f, prod = _structure(basis)
    gen = torch.Generator().manual_seed(3)
    w = 6 * g.random((256,), generator=gen)  # a 4D staple sum of aligned staples: |W| = 6
    rho = torch.full((256,), 0.95 / 6, dtype=F64)
    x = -rho[:, None] * torch.einsum("akl,...kl->...a", basis.conj(), project_algebra(w)).real
    m = torch.einsum("abc,...c->...ab", f, x)
    n = m.shape[-1]
    block = torch.zeros(256, 2 * n, 2 * n, dtype=F64)
    block[:, :n, :n], block[:, :n, n:] = -m, torch.eye(n, dtype=F64)
    gm = torch.linalg.matrix_exp(block)[:, :n, n:]
    d = torch.einsum("abij,...ji->...ab", prod, w).real
    want = torch.linalg.slogdet(torch.eye(n, dtype=F64) - rho[:, None, None] * (gm @ d))[1]
    got = stout_logdet(w, rho, basis)
    assert m.flatten(1).norm(dim=1).max() > 2.0 and series_terms(0.0) == 1
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
    assert (stout_logdet(w, rho, basis, terms=10) - want).abs().max() > 1e-8


@pytest.mark.parametrize("knots", [1, 2, 5])
def test_hat_weights_interpolate_linearly(knots):
    """Rows sum to one, a knot's own time picks it alone, and a linear function of the knot
    positions is reproduced exactly at any time in between."""
    from hpcflow.flows.smearing import hat_weights

    times = torch.linspace(0, 1, 23, dtype=F64)
    w = hat_weights(times.tolist(), knots)
    assert w.shape == (23, knots) and torch.allclose(w.sum(1), torch.ones(23, dtype=F64))
    if knots > 1:
        grid = torch.linspace(0, 1, knots, dtype=F64)
        assert torch.allclose(hat_weights(grid.tolist(), knots), torch.eye(knots, dtype=F64))
        assert torch.allclose(w @ (3 * grid - 1), 3 * times - 1)
    with pytest.raises(ValueError, match="times"):
        hat_weights([1.5], knots)


def test_shared_schedule_is_the_chain_rule_of_per_layer_parameters():
    """Stout layers sharing a StoutSchedule act exactly as independent layers holding the
    interpolated parameters, and the schedule's gradient is the per-layer gradients pulled back
    through the interpolation weights (sum_i w_ik dL/dp_i): a wrong weight, index or missing
    layer fails."""
    from hpcflow.flows.smearing import StoutSchedule

    g = get_group("SU2")
    shape = (4, 4)
    times = [0.2, 0.4, 0.6, 0.8, 1.0]
    schedule = StoutSchedule(2, times, 3)
    with torch.no_grad():
        schedule.p.copy_(torch.randn(3, 2, 2, generator=torch.Generator().manual_seed(4),
                                     dtype=F64))
    shared = [StoutSmearing(g, shape, schedule=schedule, index=i) for i in range(5)]
    alone = [StoutSmearing(g, shape) for _ in range(5)]
    for i, layer in enumerate(alone):
        with torch.no_grad():
            layer.p.copy_(schedule(i))
    links = g.random((2, 2, *shape), generator=torch.Generator().manual_seed(6))

    def run(layers):
        u, total = links, 0.0
        for layer in layers:
            u, logdet = layer(u)
            total = total + logdet.sum() + u.real.square().sum()
        return u, total

    u1, l1 = run(shared)
    u2, l2 = run(alone)
    assert torch.allclose(u1, u2, atol=1e-12) and torch.allclose(l1, l2, atol=1e-10)
    (g_shared,) = torch.autograd.grad(l1, [schedule.p])
    g_layers = torch.stack(torch.autograd.grad(l2, [layer.p for layer in alone]))
    want = torch.einsum("ik,imp->kmp", schedule.weights, g_layers)
    assert torch.allclose(g_shared, want, atol=1e-9)
    assert sum(p.numel() for layer in shared for p in layer.parameters()) == 5 * 12
    assert len(list(torch.nn.ModuleList(shared).parameters())) == 1


def test_first_order_rho_constants():
    """rho_1 = dbeta / (4 c N): c = (N^2 - 1)/N for SU(N), 1 for U(1)."""
    from hpcflow.flows.smearing import first_order_rho

    for name, want in (("U1", 0.1 / 4), ("SU2", 0.1 / 12), ("SU3", 0.1 / 32)):
        assert abs(first_order_rho(algebra_basis(get_group(name)), 0.1) - want) < 1e-15
    assert first_order_rho(algebra_basis(get_group("SU3")), -0.1) == -0.1 / 32


@pytest.mark.parametrize("name, shape", [("U1", (4, 4, 4)), ("SU2", (4, 4, 4)),
                                         ("SU3", (4, 4, 4))])
def test_first_order_layer_cancels_the_linear_work(name, shape):
    """From Haar links, a step 0 -> dbeta followed by the layer at p = 1 (units of rho_1): the
    work ``dbeta S_1(U) + dbeta (S_1(U') - S_1(U)) - log|det J|`` keeps only O(dbeta^2) of the
    configuration dependence. Its variance is < 3% of annealing's ``dbeta^2 var S_1``
    (measured 0.001-0.13%); a constant off by 2x either way leaves >= 25%."""
    from hpcflow.flows.smearing import first_order_rho
    from hpcflow.lattice.action import GaugeAction

    g = get_group(name)
    dbeta = 0.05
    layer = StoutSmearing(g, shape, rho_unit=first_order_rho(algebra_basis(g), dbeta), init=1.0)
    links = g.random((64, len(shape), *shape), generator=torch.Generator().manual_seed(2))
    s1 = GaugeAction(g, 1.0)
    with torch.no_grad():
        out, logdet = layer(links)
        annealing = dbeta * s1(links)
        work = annealing + dbeta * (s1(out) - s1(links)) - logdet
    ratio = float(work.var() / annealing.var())
    print(f"{name}: var ratio {ratio:.4f}")
    assert ratio < 0.03


def test_state_dicts_from_before_the_units_load_with_their_meaning():
    """A version-1 state dict (no rho_unit; rho = rho_max tanh(p)) loads with rho_unit =
    rho_max, so its layers act as they did; a current one without the key is refused."""
    g = get_group("SU2")
    old = StoutSmearing(g, (4, 4))
    with torch.no_grad():
        old.p.fill_(0.3)
    state = old.state_dict()
    del state["rho_unit"]
    state._metadata[""]["version"] = 1
    new = StoutSmearing(g, (4, 4), rho_unit=0.001)
    new.load_state_dict(state)
    assert float(new.rho_unit) == new.rho_max
    assert torch.allclose(new.rho(), new.rho_max * torch.tanh(torch.full((2, 2), 0.3,
                                                                         dtype=F64)))
    state._metadata[""]["version"] = 2
    with pytest.raises(RuntimeError, match="rho_unit"):
        StoutSmearing(g, (4, 4)).load_state_dict(state)
