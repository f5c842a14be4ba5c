"""Hybrid Monte Carlo: algebra, force, integrators, chain bookkeeping, and agreement with the
exact 2D results (docs/physics.md, "Exact results")."""

import io
import math

import numpy as np
import pytest
import torch

from hpcflow.estimators import binned_error
from hpcflow.lattice.action import GaugeAction, force
from hpcflow.lattice.algebra import algebra_basis, algebra_exp, kinetic_energy, project_algebra
from hpcflow.lattice.exact import (
    su2_2d_plaquette,
    sun_2d_plaquette_infinite_volume,
    u1_2d_plaquette,
)
from hpcflow.lattice.groups import gauge_transform, get_group, random_gauge
from hpcflow.lattice.observables import average_plaquette
from hpcflow.updates.hmc import HMC, integrate
from tests.helpers import GROUPS, SHAPES, random_links

pytestmark = pytest.mark.usefixtures("one_thread")


def _coords(x, basis):
    """Algebra coordinates ``Re tr(T_a^dag X)``: ``[..., Nc, Nc] -> [..., n_gen]``."""
    return torch.einsum("aij,...ij->...a", basis.conj(), x).real


def _random_algebra(group, shape, generator):
    basis = algebra_basis(group)
    p = torch.randn(*shape, basis.shape[0], generator=generator, dtype=torch.float64)
    return torch.einsum("...a,aij->...ij", p.to(basis.dtype), basis)


# ------------------------------------------------------------------------------ Lie algebra


@pytest.mark.parametrize("name", ["U1", "SU2", "SU3", "SU4"])
def test_basis_is_orthonormal_traceless_antihermitian(name):
    group = get_group(name)
    t = algebra_basis(group)
    n_gen = 1 if name == "U1" else group.nc**2 - 1
    assert t.shape == (n_gen, group.nc, group.nc)
    gram = torch.einsum("aij,bij->ab", t.conj(), t)
    assert torch.allclose(gram, torch.eye(n_gen, dtype=gram.dtype), atol=1e-15)
    assert torch.allclose(t, -t.conj().transpose(-1, -2))
    if name != "U1":
        assert t.diagonal(dim1=-2, dim2=-1).sum(-1).abs().max() < 1e-15


@pytest.mark.parametrize("name", ["U1", "SU2", "SU3", "SU4"])
def test_projection_is_orthogonal_onto_algebra(name):
    """``Re tr(T_a^dag M) = Re tr(T_a^dag Pi(M))`` for a general complex M; ``Pi`` idempotent."""
    group = get_group(name)
    g = torch.Generator().manual_seed(1)
    m = torch.randn(5, group.nc, group.nc, 2, generator=g, dtype=torch.float64)
    m = torch.view_as_complex(m)
    basis = algebra_basis(group)
    pm = project_algebra(m, group)
    assert torch.allclose(_coords(m, basis), _coords(pm, basis), atol=1e-14)
    assert torch.allclose(project_algebra(pm, group), pm, atol=1e-15)
    rebuilt = torch.einsum("...a,aij->...ij", _coords(pm, basis).to(m.dtype), basis)
    assert torch.allclose(rebuilt, pm, atol=1e-14)


@pytest.mark.parametrize("name", ["U1", "SU2", "SU3", "SU4"])
@pytest.mark.parametrize("scale", [0.0, 1e-9, 1e-3, 0.3, 2.0, 30.0])
def test_algebra_exp_matches_matrix_exp(name, scale):
    group = get_group(name)
    x = scale * _random_algebra(group, (200,), torch.Generator().manual_seed(2))
    u = algebra_exp(x, group)
    assert torch.allclose(u, torch.linalg.matrix_exp(x), atol=1e-13 * max(1.0, scale), rtol=0)
    eye = torch.eye(group.nc, dtype=u.dtype)
    assert torch.allclose(u @ u.conj().transpose(-1, -2), eye, atol=1e-13 * max(1.0, scale))
    assert torch.allclose(algebra_exp(-x, group) @ u, eye, atol=1e-13 * max(1.0, scale))


def test_su3_exp_at_degenerate_eigenvalues():
    """Cayley-Hamilton's ``theta = 0`` edge: two equal eigenvalues of ``X`` (rotated)."""
    group = get_group("SU3")
    a = torch.tensor([1e-10, 0.3, -1.7, 2.9], dtype=torch.float64)
    d = torch.diag_embed(torch.stack([a, a, -2 * a], -1)).to(torch.complex128) * 1j
    v = group.random((4,), generator=torch.Generator().manual_seed(3))
    x = v @ d @ v.conj().transpose(-1, -2)
    assert torch.allclose(algebra_exp(x, group), torch.linalg.matrix_exp(x), atol=1e-13)


# ------------------------------------------------------------------------------ force


@pytest.mark.parametrize("c1", [0.0, -1 / 12])
@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("name", GROUPS)
def test_force_is_gradient_of_action(name, nd, c1):
    """``Re tr(T_a^dag F) = dS/domega_a`` at ``omega = 0`` for ``U(omega) = exp(omega.T) U``,
    every link and generator (autograd of :class:`GaugeAction`), and the directional derivative
    ``d/dt S(exp(t X) U) = sum Re tr(F^dag X)`` along a random algebra direction ``X``.
    SHAPES has extent-2 axes, where a rectangle passes a link twice."""
    g = torch.Generator().manual_seed(10 * nd + (c1 != 0))
    group, links = random_links(name, SHAPES[nd], generator=g)
    action = GaugeAction(group, beta=1.7, c1=c1)
    basis = algebra_basis(group)
    f = force(links, action)
    assert f.shape == links.shape

    omega = torch.zeros(*links.shape[:-2], basis.shape[0], dtype=torch.float64,
                        requires_grad=True)
    x = torch.einsum("...a,aij->...ij", omega.to(basis.dtype), basis)
    grad, = torch.autograd.grad(action(torch.linalg.matrix_exp(x) @ links).sum(), omega)
    assert torch.allclose(_coords(f, basis), grad, atol=1e-8 * (1.0 + grad.abs().max()), rtol=0)

    direction = _random_algebra(group, links.shape[:-2], g)
    t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    s = action(torch.linalg.matrix_exp(t * direction) @ links)
    ds = torch.stack([torch.autograd.grad(s[b], t, retain_graph=True)[0] for b in range(2)])
    expect = (f.conj() * direction).real.flatten(1).sum(1)
    assert torch.allclose(ds, expect, atol=1e-8 * (1.0 + ds.abs().max()), rtol=0)


def test_force_matches_finite_difference_of_action():
    """Central differences of ``S(exp(t X) U)`` with one Richardson step (error ``O(h^4)``),
    independent of autograd: SU(3) 4D with rectangles."""
    g = torch.Generator().manual_seed(4)
    group, links = random_links("SU3", SHAPES[4], generator=g)
    action = GaugeAction(group, beta=2.3, c1=-1 / 12)
    direction = _random_algebra(group, links.shape[:-2], g)

    def central(h):
        sp = action(algebra_exp(h * direction, group) @ links)
        sm = action(algebra_exp(-h * direction, group) @ links)
        return (sp - sm) / (2 * h)

    fd = (4 * central(5e-4) - central(1e-3)) / 3
    expect = (force(links, action).conj() * direction).real.flatten(1).sum(1)
    assert torch.allclose(fd, expect, rtol=1e-8, atol=0)


def test_force_is_gauge_covariant():
    """``F(Omega o U)_mu(x) = Omega(x) F_mu(x) Omega(x)^dag`` (the action is invariant)."""
    g = torch.Generator().manual_seed(5)
    group, links = random_links("SU3", SHAPES[3], generator=g)
    omega = random_gauge(group, 2, SHAPES[3], generator=g)
    action = GaugeAction(group, beta=2.0, c1=-0.331)
    f1 = force(gauge_transform(links, omega, group), action)
    om = omega.unsqueeze(1)
    f0 = om @ force(links, action) @ om.conj().transpose(-1, -2)
    assert torch.allclose(f1, f0, atol=1e-12)


# ------------------------------------------------------------------------------ integrators


def _md_setup(name, nd, seed, batch=3):
    g = torch.Generator().manual_seed(seed)
    group, links = random_links(name, SHAPES[nd], batch=batch, generator=g)
    momenta = _random_algebra(group, links.shape[:-2], g)
    return group, links, momenta


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
@pytest.mark.parametrize("name,nd", [("U1", 2), ("SU2", 3), ("SU3", 4)])
def test_integrator_is_reversible(name, nd, integrator):
    """Forward trajectory, negate the momenta, run again: back at the start (1e-10)."""
    group, links, p0 = _md_setup(name, nd, seed=nd)
    action = GaugeAction(group, beta=2.0, c1=-1 / 12)
    eps = torch.tensor([0.05, 0.1, 0.2], dtype=torch.float64)  # one step size per chain
    u1, p1 = integrate(links, p0, lambda u: force(u, action), eps, 8, group, integrator)
    assert (u1 - links).abs().max() > 0.1  # it did move
    u2, p2 = integrate(u1, -p1, lambda u: force(u, action), eps, 8, group, integrator)
    assert torch.allclose(u2, links, atol=1e-10, rtol=0)
    assert torch.allclose(p2, -p0, atol=1e-10, rtol=0)


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_energy_violation_scales_as_step_size_squared(integrator):
    """Fixed trajectory length 1: halving ``eps`` divides ``|dH|`` by 4 (2nd-order schemes)."""
    group, links, p0 = _md_setup("SU2", 3, seed=7, batch=4)
    action = GaugeAction(group, beta=2.0)
    h0 = kinetic_energy(p0) + action(links)
    dh = []
    for n in (8, 16, 32):
        u, p = integrate(links, p0, lambda u: force(u, action), 1.0 / n, n, group, integrator)
        dh.append((kinetic_energy(p) + action(u) - h0).abs())
    for coarse, fine in zip(dh[:-1], dh[1:], strict=True):
        ratio = coarse / fine
        assert torch.all((ratio > 3.5) & (ratio < 4.5)), ratio


# ------------------------------------------------------------------------------ the chain


def test_momenta_are_unit_gaussians_in_the_basis():
    """``p_a ~ N(0, 1)``, so ``<K> = n_gen/2`` per link; ``K = -(1/2) sum tr P^2``."""
    group = get_group("SU3")
    hmc = HMC(group, GaugeAction(group, 1.0), (8, 8), batch_size=8, seed=3)
    p = hmc._momenta()
    c = _coords(p, algebra_basis(group))  # 8192 numbers: 4 sigma bounds below
    assert abs(c.mean()) < 0.045 and abs(c.var() - 1) < 0.065
    k = kinetic_energy(p)
    trace_p2 = (p @ p).diagonal(dim1=-2, dim2=-1).sum(-1).real.flatten(1).sum(1)
    assert torch.allclose(k, -0.5 * trace_p2, atol=1e-10)
    assert torch.allclose(k, 0.5 * c.square().flatten(1).sum(1), atol=1e-10)


def test_chain_depends_only_on_its_seed():
    """Chain 1 of a batch with seed 5 is the single chain with seed 6 (fixed step size)."""
    group = get_group("SU2")
    action = GaugeAction(group, 2.0)
    kw = dict(n_steps=4, step_size=0.2, start="hot")
    pair = HMC(group, action, (4, 3), batch_size=2, seed=5, **kw)
    single = HMC(group, action, (4, 3), batch_size=1, seed=6, **kw)
    assert torch.equal(pair.links[1:], single.links)
    for (u2, a2, d2), (u1, a1, d1) in zip(pair.sample(4), single.sample(4), strict=True):
        assert torch.equal(u2[1:], u1) and torch.equal(a2[1:], a1) and torch.equal(d2[1:], d1)
    assert not torch.equal(pair.links[0], pair.links[1])


def test_per_chain_tuning_keeps_chains_independent():
    """With ``per_chain=True`` even the tuned step size of chain 1 depends on its seed alone."""
    group = get_group("U1")
    action = GaugeAction(group, 1.5)
    pair = HMC(group, action, (4, 4), batch_size=2, n_steps=3, seed=20)
    single = HMC(group, action, (4, 4), batch_size=1, n_steps=3, seed=21)
    pair.thermalize(6, per_chain=True)
    single.thermalize(6, per_chain=True)
    assert torch.equal(pair.step_size[1:], single.step_size)
    assert torch.equal(pair.links[1:], single.links)
    assert pair.step_size[0] != pair.step_size[1]


def test_float32_chain_stays_in_group():
    group = get_group("SU3")
    hmc = HMC(group, GaugeAction(group, 5.0), (3, 3, 3), batch_size=2, n_steps=4,
              step_size=0.1, dtype=torch.float32)
    for links, accepted, dh in hmc.sample(3):
        assert links.dtype == torch.complex64 and dh.dtype == torch.float32
        assert accepted.dtype == torch.bool
    eye = torch.eye(3, dtype=torch.complex64)
    assert torch.allclose(links @ links.conj().transpose(-1, -2), eye, atol=1e-5)
    assert accepted.any() and torch.all(dh.abs() < 1.0)


def test_state_dict_resumes_exactly():
    group = get_group("SU3")
    action = GaugeAction(group, 3.0, c1=-1 / 12)
    hmc = HMC(group, action, (3, 2, 3), batch_size=2, n_steps=3, seed=11)
    hmc.thermalize(3)
    buf = io.BytesIO()
    torch.save(hmc.state_dict(), buf)
    first = [tuple(t.clone() for t in out) for out in hmc.sample(3)]

    other = HMC(group, action, (3, 2, 3), batch_size=2, n_steps=3, seed=99, start="cold")
    buf.seek(0)
    other.load_state_dict(torch.load(buf))
    assert torch.equal(other.step_size, hmc.step_size)
    second = list(other.sample(3))
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y)
    with pytest.raises(ValueError, match="config.beta"):
        HMC(group, GaugeAction(group, 1.0), (3, 2, 3), batch_size=2).load_state_dict(
            hmc.state_dict())


def test_starts_and_argument_checks():
    group = get_group("SU2")
    action = GaugeAction(group, 1.0)
    cold = HMC(group, action, (2, 2, 2), start="cold", batch_size=2)
    assert torch.equal(cold.links, group.identity((2, 3, 2, 2, 2)))
    hot = HMC("SU2", action, (2, 2, 2), start="hot", batch_size=2)
    eye = torch.eye(2, dtype=torch.complex128)
    assert torch.allclose(hot.links @ hot.links.conj().transpose(-1, -2), eye, atol=1e-14)
    with pytest.raises(ValueError, match="integrator"):
        HMC(group, action, (4, 4), integrator="rk4")
    with pytest.raises(ValueError, match="GaugeAction"):
        HMC(get_group("SU3"), action, (4, 4))
    with pytest.raises(ValueError, match="start"):
        HMC(group, action, (4, 4), start="warm")


def test_binned_error_of_several_chains_sees_autocorrelation():
    """AR(1) with ``rho = 0.8`` in 4 chains: ``tau_int = (1 + rho)/(2 (1 - rho)) = 4.5``, so
    binned errors grow to ``sqrt(2 tau_int) = 3`` times the naive one; independent data stay
    at 1."""
    rng = np.random.default_rng(0)
    n, chains, rho = 20000, 4, 0.8
    noise = rng.standard_normal((n, chains))
    x = np.empty_like(noise)
    x[0] = noise[0] / math.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + noise[t]
    x *= math.sqrt(1 - rho**2)  # unit variance
    naive = 1 / math.sqrt(n * chains)
    assert binned_error(noise, 100) / naive == pytest.approx(1.0, rel=0.15)
    assert binned_error(x, 200) / naive == pytest.approx(3.0, rel=0.15)
    with pytest.raises(ValueError):
        binned_error(x[:10, :1], 10)


# ------------------------------------------------------------------------------ physics


def _run(name, beta, shape, *, batch, n_therm, n_sample, seed, n_steps=10, bin_size=10):
    """Thermalize with tuning, sample; binned plaquette and ``<exp(-dH)>``, acceptance."""
    group = get_group(name)
    hmc = HMC(group, GaugeAction(group, beta), shape, batch_size=batch, n_steps=n_steps,
              step_size=0.1, seed=seed)
    hmc.thermalize(n_therm)
    eps = hmc.step_size.clone()
    plaq, expdh, acc = [], [], []
    for links, accepted, dh in hmc.sample(n_sample):
        plaq.append(average_plaquette(links, group))
        expdh.append(torch.exp(-dh))
        acc.append(accepted.double())
    assert torch.equal(hmc.step_size, eps)  # no tuning while sampling
    plaq, expdh = torch.stack(plaq).numpy(), torch.stack(expdh).numpy()
    return ((plaq.mean(), binned_error(plaq, bin_size)),
            (expdh.mean(), binned_error(expdh, bin_size)), torch.stack(acc).mean().item())


CASES = {
    # group, beta, shape, exact <(1/Nc) Re tr P>, chains, thermalization, samples
    "U1": ("U1", 2.0, (8, 8), lambda: u1_2d_plaquette(2.0, 64), 64, 100, 300),
    "SU2": ("SU2", 2.5, (8, 8), lambda: su2_2d_plaquette(2.5, 64), 32, 100, 200),
    "SU3": ("SU3", 4.0, (8, 8), lambda: sun_2d_plaquette_infinite_volume(3, 4.0), 32, 60, 140),
}


@pytest.mark.parametrize("case", list(CASES))
def test_plaquette_agrees_with_exact_2d_result(case):
    """HMC plaquette within 3 binned standard errors of the exact 2D value; Creutz equality
    ``<exp(-dH)> = 1`` within 3 errors; tuned acceptance near the 0.8 target."""
    name, beta, shape, exact, batch, n_therm, n_sample = CASES[case]
    (p, p_err), (c, c_err), acc = _run(name, beta, shape, batch=batch, n_therm=n_therm,
                                       n_sample=n_sample, seed=2024)
    truth = exact()
    print(f"{case}: <P> = {p:.5f} +- {p_err:.5f}, exact {truth:.5f}; "
          f"<exp(-dH)> = {c:.4f} +- {c_err:.4f}; acceptance {acc:.3f}")
    assert p_err < 2e-3  # the comparison below must have teeth
    assert abs(p - truth) < 3 * p_err
    assert abs(c - 1) < 3 * c_err
    assert 0.65 < acc < 0.95
