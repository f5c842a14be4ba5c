"""Heat bath and over-relaxation: single-link distributions against the exact conditional
densities, the staples of a checkerboard half, microcanonical reflections, chains against the
exact 2D plaquettes and against HMC in 3D/4D, and the bookkeeping (batch independence,
determinism, argument checks)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from hpcflow.estimators import binned_error
from hpcflow.lattice.action import GaugeAction, staple
from hpcflow.lattice.exact import (
    su2_2d_plaquette,
    sun_2d_plaquette_infinite_volume,
    u1_2d_plaquette,
)
from hpcflow.lattice.groups import get_group
from hpcflow.lattice.observables import average_plaquette
from hpcflow.lattice.random import stream_keys
from hpcflow.updates import heatbath as hb
from hpcflow.updates.hmc import HMC

N_DRAW = 20_000  # single-link samples per goodness-of-fit test
P_MIN = 1e-3  # KS p-value threshold (fixed keys: the tests are deterministic)
EVEN_SHAPES = {2: (4, 2), 3: (2, 4, 2), 4: (2, 2, 4, 2)}  # extent 2: a staple passes twice


pytestmark = pytest.mark.usefixtures("one_thread")


def _rng(n: int, seed: int = 0, dtype=torch.float64) -> hb.LinkRandom:
    """Random numbers of ``n`` links: one configuration with ``n`` sites."""
    return hb.LinkRandom(stream_keys(seed, 99, [0]), torch.arange(n), sweep=seed, dtype=dtype)


def _wrap(theta: torch.Tensor) -> torch.Tensor:
    return torch.remainder(theta + math.pi, 2 * math.pi) - math.pi


def _trace_cdf(alpha: float):
    """CDF in ``theta = arccos(a0)`` of ``sqrt(1 - a0^2) exp(alpha a0) da0``, i.e. of
    ``sin^2(theta) exp(alpha (cos(theta) - 1)) dtheta`` on ``[0, pi]`` (trapezoid rule on a
    fine grid: error ~1e-10)."""
    grid = np.linspace(0.0, math.pi, 200_001)
    density = np.sin(grid) ** 2 * np.exp(alpha * (np.cos(grid) - 1.0))
    cdf = integrate.cumulative_trapezoid(density, grid, initial=0.0)
    cdf /= cdf[-1]
    return lambda theta: np.interp(theta, grid, cdf)


def _su2_random(n: int, seed: int) -> torch.Tensor:
    return get_group("SU2").random((n,), generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ quaternions


def test_quaternion_convention_and_projection():
    """``a0 + i a.sigma`` is SU(2) for unit ``a``; the projection is orthogonal onto the span
    (``Re tr(r M) = Re tr(r P(M))`` for SU(2) ``r``) and the product matches the matrices'."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(50, 4, generator=g, dtype=torch.float64)
    a = a / a.norm(dim=-1, keepdim=True)
    b = torch.randn(50, 4, generator=g, dtype=torch.float64)
    ma, mb = hb.quaternion_to_matrix(a), hb.quaternion_to_matrix(b)
    eye = torch.eye(2, dtype=torch.complex128)
    assert torch.allclose(ma @ ma.mH, eye, atol=1e-14)
    assert torch.allclose(torch.linalg.det(ma), torch.ones(50, dtype=torch.complex128))
    assert torch.allclose(hb.quaternion_to_matrix(hb.quaternion_mul(a, b)), ma @ mb, atol=1e-14)
    assert torch.allclose(hb.quaternion_from_matrix(mb), b, atol=1e-15)
    m = torch.view_as_complex(torch.randn(50, 2, 2, 2, generator=g, dtype=torch.float64))
    pm = hb.quaternion_to_matrix(hb.quaternion_from_matrix(m))
    tr = (ma @ m).diagonal(dim1=-2, dim2=-1).sum(-1).real
    assert torch.allclose(tr, (ma @ pm).diagonal(dim1=-2, dim2=-1).sum(-1).real, atol=1e-14)
    # a sum of SU(2) matrices is k times SU(2), k = sqrt(det)
    s = _su2_random(6, 1).sum(0)
    k = hb.quaternion_from_matrix(s).norm()
    assert torch.allclose(torch.linalg.det(s).real.sqrt(), k)
    assert torch.allclose(hb.quaternion_to_matrix(hb.quaternion_from_matrix(s)), s, atol=1e-14)


# ------------------------------------------------------------------------------ single links


@pytest.mark.parametrize("kappa", [0.0, 0.01, 1.0, 20.0, 300.0])
def test_u1_heatbath_is_von_mises(kappa):
    """``theta + arg A`` of the new link is von Mises with ``kappa = beta |A|`` (KS test)."""
    beta = 2.0
    phase = torch.tensor(2.1, dtype=torch.float64)
    staples = torch.polar(torch.tensor(kappa / beta, dtype=torch.float64), phase).expand(N_DRAW)
    new = hb.u1_heatbath(staples.clone(), beta, _rng(N_DRAW, seed=int(kappa * 100)))
    assert torch.allclose(new.abs(), torch.ones(N_DRAW, dtype=torch.float64))
    psi = _wrap(torch.angle(new) + phase).numpy()
    cdf = stats.uniform(-math.pi, 2 * math.pi).cdf if kappa == 0 else stats.vonmises(kappa).cdf
    assert stats.kstest(psi, cdf).pvalue > P_MIN


def test_von_mises_attempt_matches_best_fisher():
    """The stable form of the attempt against Best & Fisher's own: the proposal is the
    wrapped-Cauchy inverse CDF of ``u0``, and the decision is ``u1 <= c exp(1 - c)`` with
    ``c = kappa (r - cos theta)``, ``r = (1 + rho^2)/(2 rho)``."""
    n = 4001
    kappa = torch.tensor([0.3, 2.0, 40.0], dtype=torch.float64)[:, None].expand(3, n)
    u0 = torch.linspace(1e-4, 1 - 1e-4, n, dtype=torch.float64).expand(3, n)
    u1 = torch.rand(3, n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    u = torch.stack([u0.reshape(-1), u1.reshape(-1)], -1)
    theta, ok = hb._von_mises_attempt(kappa.reshape(-1), u)
    theta, ok = theta.view(3, n), ok.view(3, n)
    tau = 1 + torch.sqrt(1 + 4 * kappa**2)
    rho = (tau - torch.sqrt(2 * tau)) / (2 * kappa)
    s = (1 - rho) / (1 + rho)
    cdf = 0.5 + torch.atan(torch.tan(theta / 2) / s) / math.pi
    assert torch.allclose(cdf, u0, atol=1e-12)
    c = kappa * ((1 + rho**2) / (2 * rho) - torch.cos(theta))
    bound = c * torch.exp(1 - c)
    clear = (u1 - bound).abs() > 1e-10
    assert torch.equal(ok[clear], (u1 <= bound)[clear])
    assert 0.3 < ok.double().mean() < 1.0


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1.0, 1.99, 2.01, 6.0, 40.0, 400.0])
def test_su2_trace_density(alpha):
    """``a0`` against ``sqrt(1 - a0^2) exp(alpha a0)`` (KS on ``arccos a0``), on both sides of
    the Creutz / Kennedy-Pendleton switch."""
    a = torch.full((N_DRAW,), alpha, dtype=torch.float64)
    a0 = hb.su2_trace_sample(a, _rng(N_DRAW, seed=int(alpha * 100) + 1))
    assert a0.abs().max() <= 1.0
    theta = np.arccos(a0.numpy())
    assert stats.kstest(theta, _trace_cdf(alpha)).pvalue > P_MIN


def test_su2_trace_mixed_couplings_pit():
    """One batch with every element at its own ``alpha`` (both samplers at once, rejection
    rounds of mixed elements): the probability integral transforms are uniform."""
    alphas = [0.0, 0.4, 1.9, 2.1, 8.0, 80.0]
    a = torch.tensor(alphas, dtype=torch.float64).repeat(N_DRAW // len(alphas))
    a0 = hb.su2_trace_sample(a, _rng(a.numel(), seed=7)).numpy()
    pit = np.empty_like(a0)
    for i, alpha in enumerate(alphas):
        pit[i::len(alphas)] = _trace_cdf(alpha)(np.arccos(a0[i::len(alphas)]))
    assert stats.kstest(pit, "uniform").pvalue > P_MIN


def _direction_checks(v: np.ndarray) -> None:
    """Unit vectors ``[n, 3]`` uniform on the sphere: ``z`` and the azimuth uniform (KS)."""
    assert stats.kstest(v[:, 2], stats.uniform(-1, 2).cdf).pvalue > P_MIN
    phi = np.arctan2(v[:, 1], v[:, 0])
    assert stats.kstest(phi, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > P_MIN


@pytest.mark.parametrize("beta_k", [0.7, 5.0])
def test_su2_heatbath_conditional(beta_k):
    """``X = U Vhat`` of the new link: ``x0`` from ``exp(beta k x0)`` and the direction of
    ``(x1, x2, x3)`` uniform, for a staple ``A = k Vhat`` (not a multiple of 1)."""
    beta, k = 2.0, beta_k / 2.0
    vhat = _su2_random(1, 3)
    staples = (k * vhat).expand(N_DRAW, 2, 2).clone()
    u = hb.su2_heatbath(staples, beta, _rng(N_DRAW, seed=11))
    eye = torch.eye(2, dtype=torch.complex128)
    assert torch.allclose(u @ u.mH, eye, atol=1e-14)
    x = hb.quaternion_from_matrix(u @ vhat)
    assert torch.allclose(x.norm(dim=-1), torch.ones(N_DRAW, dtype=torch.float64))
    assert stats.kstest(np.arccos(x[:, 0].clamp(-1, 1).numpy()), _trace_cdf(beta_k)).pvalue \
        > P_MIN
    vec = x[:, 1:] / x[:, 1:].norm(dim=-1, keepdim=True)
    _direction_checks(vec.numpy())


@pytest.mark.parametrize("pair", [0, 2])
def test_su3_subgroup_step_conditional(pair):
    """One Cabibbo-Marinari step in the subgroup ``(i, j)``: with ``k Vhat`` the block of
    ``W = U A``, the new block is ``k r Vhat`` with ``x0 = tr(r Vhat)/2`` from
    ``exp((2 beta/3) k x0)`` and a uniform direction; rows/columns outside the block keep."""
    g = get_group("SU3")
    gen = torch.Generator().manual_seed(20 + pair)
    u = g.random((1,), generator=gen)
    a = g.random((6,), generator=gen).sum(0, keepdim=True)  # a generic staple sum
    i, j = hb.SU3_SUBGROUPS[pair]
    beta = 1.7
    w = u @ a
    block = hb._block_quaternion(w, i, j)
    k = block.norm().item()
    new = hb.su3_heatbath(u.expand(N_DRAW, 3, 3), a.expand(N_DRAW, 3, 3), beta,
                          _rng(N_DRAW, seed=30 + pair), subgroups=((i, j),))
    eye = torch.eye(3, dtype=torch.complex128)
    assert torch.allclose(new @ new.mH, eye, atol=1e-14)
    assert torch.allclose(torch.linalg.det(new), torch.ones(N_DRAW, dtype=torch.complex128))
    other = 3 - i - j
    assert torch.allclose(new[:, other], u[:, other].expand(N_DRAW, 3), atol=1e-14)
    x = hb._block_quaternion(new @ a, i, j) / k  # = r Vhat
    assert torch.allclose(x.norm(dim=-1), torch.ones(N_DRAW, dtype=torch.float64))
    alpha = 2.0 * beta * k / 3.0
    assert stats.kstest(np.arccos(x[:, 0].clamp(-1, 1).numpy()), _trace_cdf(alpha)).pvalue \
        > P_MIN
    _direction_checks((x[:, 1:] / x[:, 1:].norm(dim=-1, keepdim=True)).numpy())


def test_zero_staple_draws_haar():
    """``A = 0`` (no coupling): uniform U(1) angles and SU(2) ``a0`` with density
    ``sqrt(1 - a0^2)`` (Haar), no NaN."""
    z1 = hb.u1_heatbath(torch.zeros(N_DRAW, dtype=torch.complex128), 3.0, _rng(N_DRAW, 5))
    assert stats.kstest(torch.angle(z1).numpy(), stats.uniform(-math.pi, 2 * math.pi).cdf
                        ).pvalue > P_MIN
    z2 = hb.su2_heatbath(torch.zeros(N_DRAW, 2, 2, dtype=torch.complex128), 3.0, _rng(N_DRAW, 6))
    a0 = hb.quaternion_from_matrix(z2)[:, 0].numpy()
    assert stats.kstest(np.arccos(a0), _trace_cdf(0.0)).pvalue > P_MIN


# ------------------------------------------------------------------------------ staples


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("name", ["U1", "SU2", "SU3"])
def test_staples_of_a_half_match_the_library(name, nd):
    group = get_group(name)
    shape = EVEN_SHAPES[nd]
    links = group.random((2, nd, *shape), generator=torch.Generator().manual_seed(nd))
    for mu in range(nd):
        full = staple(links, mu, group).reshape(2, -1, group.nc, group.nc)
        for parity in (0, 1):
            sites, a = hb.staple_at(links, mu, parity, group)
            assert torch.equal(sites.sort().values, hb.parity_sites(shape, mu, parity))
            assert torch.allclose(a, full[:, sites], atol=1e-14, rtol=0)


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("name", ["U1", "SU3"])
def test_a_half_shares_no_staple(name, nd):
    """Replace every link of one checkerboard half at once: the action changes by exactly
    ``-(beta/Nc) sum Re tr((U' - U) A)`` with the old staples, which holds only if no staple of
    the half contains another link of the half."""
    group = get_group(name)
    shape = EVEN_SHAPES[nd]
    gen = torch.Generator().manual_seed(40 + nd)
    links = group.random((2, nd, *shape), generator=gen)
    action = GaugeAction(group, beta=1.3)
    volume = math.prod(shape)
    for mu in range(nd):
        for parity in (0, 1):
            sites, a = hb.staple_at(links, mu, parity, group)
            flat = links.reshape(2, nd, volume, group.nc, group.nc)
            old = flat[:, mu, sites]
            new_u = group.random(old.shape[:2], generator=gen)
            new = flat.clone()
            new[:, mu, sites] = new_u
            ds = action(new.view_as(links)) - action(links)
            tr = ((new_u - old) @ a).diagonal(dim1=-2, dim2=-1).sum(-1).real.sum(1)
            assert torch.allclose(ds, -(1.3 / group.nc) * tr, atol=1e-11, rtol=0)


# ------------------------------------------------------------------------------ over-relaxation


@pytest.mark.parametrize("name,nd", [("U1", 2), ("U1", 4), ("SU2", 3), ("SU2", 4), ("SU3", 2),
                                     ("SU3", 4)])
def test_overrelaxation_keeps_the_action(name, nd):
    group = get_group(name)
    shape = EVEN_SHAPES[nd] if nd < 4 else (4, 2, 2, 4)
    links = group.random((3, nd, *shape), generator=torch.Generator().manual_seed(nd))
    action = GaugeAction(group, beta=2.0)
    new = hb.overrelax_sweep(links, group)
    assert (new - links).abs().max() > 0.1  # it moved
    s0, s1 = action(links), action(new)
    assert torch.allclose(s1, s0, atol=1e-12 * max(1.0, s0.abs().max().item()), rtol=0)
    eye = torch.eye(group.nc, dtype=torch.complex128)
    assert torch.allclose(new @ new.mH, eye, atol=1e-14)


def test_single_link_reflections_are_involutions():
    """Twice the same reflection (same staple) is the identity; each keeps ``Re tr(U A)``."""
    gen = torch.Generator().manual_seed(8)
    n = 200
    u1 = get_group("U1").random((n,), generator=gen)[:, 0, 0]
    a1 = torch.view_as_complex(torch.randn(n, 2, generator=gen, dtype=torch.float64))
    r1 = hb.u1_overrelax(u1, a1)
    assert torch.allclose((r1 * a1).real, (u1 * a1).real, atol=1e-14)
    assert torch.allclose(hb.u1_overrelax(r1, a1), u1, atol=1e-14)

    u2 = _su2_random(n, 9)
    a2 = 1.7 * _su2_random(n, 10) + _su2_random(n, 11)
    r2 = hb.su2_overrelax(u2, a2)
    trace = lambda m: m.diagonal(dim1=-2, dim2=-1).sum(-1).real  # noqa: E731
    assert torch.allclose(trace(r2 @ a2), trace(u2 @ a2), atol=1e-13)
    assert torch.allclose(hb.su2_overrelax(r2, a2), u2, atol=1e-14)
    assert (r2 - u2).abs().max() > 0.1

    g3 = get_group("SU3")
    u3 = g3.random((n,), generator=gen)
    a3 = g3.random((n, 6), generator=gen).sum(1)
    for pair in hb.SU3_SUBGROUPS:
        once = hb.su3_overrelax(u3, a3, (pair,))
        assert torch.allclose(trace(once @ a3), trace(u3 @ a3), atol=1e-12)
        assert torch.allclose(hb.su3_overrelax(once, a3, (pair,)), u3, atol=1e-13)
    full = hb.su3_overrelax(u3, a3)
    assert torch.allclose(trace(full @ a3), trace(u3 @ a3), atol=1e-12)
    back = hb.su3_overrelax(full, a3, tuple(reversed(hb.SU3_SUBGROUPS)))
    assert torch.allclose(back, u3, atol=1e-13)


# ------------------------------------------------------------------------------ chains


def _chain(name, beta, shape, *, batch, n_therm, n_meas, n_overrelax, seed):
    """Hot start, ``n_therm + n_meas`` update sweeps; plaquettes ``[n_meas, batch]``."""
    group = get_group(name)
    links = group.random((batch, len(shape), *shape),
                         generator=torch.Generator().manual_seed(seed))
    keys = stream_keys(seed, 0, range(batch))
    plaq = []
    for sweep in range(n_therm + n_meas):
        links = hb.update_sweep(links, group, beta, keys, sweep, n_overrelax)
        if sweep >= n_therm:
            plaq.append(average_plaquette(links, group))
    return torch.stack(plaq).numpy()


CASES_2D = {
    # group, beta, exact <(1/Nc) Re tr P> on 8x8, chains, thermalization, measured sweeps
    "U1": ("U1", 2.0, lambda: u1_2d_plaquette(2.0, 64), 64, 15, 60),
    "SU2": ("SU2", 2.5, lambda: su2_2d_plaquette(2.5, 64), 64, 15, 50),
    "SU3": ("SU3", 4.0, lambda: sun_2d_plaquette_infinite_volume(3, 4.0), 32, 15, 40),
}


@pytest.mark.parametrize("n_overrelax", [0, 1])
@pytest.mark.parametrize("case", list(CASES_2D))
def test_plaquette_agrees_with_exact_2d_result(case, n_overrelax):
    """8x8, hot start: the plaquette within 3 binned standard errors of the exact value."""
    name, beta, exact, batch, n_therm, n_meas = CASES_2D[case]
    plaq = _chain(name, beta, (8, 8), batch=batch, n_therm=n_therm, n_meas=n_meas,
                  n_overrelax=n_overrelax, seed=2024 + n_overrelax)
    p, err = plaq.mean(), binned_error(plaq, 10)
    truth = exact()
    print(f"{case} (overrelax {n_overrelax}): <P> = {p:.5f} +- {err:.5f}, exact {truth:.5f}")
    assert err < 1.5e-3  # the comparison must have teeth
    assert abs(p - truth) < 3 * err


# HMC plaquettes of perf/RESULTS.md (long runs of hpcflow.updates.hmc): 3D U(1) 4^3, beta = 1,
# 20000 trajectories; 4D SU(3) 4^4, beta = 1, 16000 trajectories.
HMC_REFERENCE = {"U1": (0.47485, 0.00071), "SU3": (0.060119, 0.000059)}
CASES_HMC = {
    # group, shape, heat-bath chains, sweeps (therm, meas), HMC chains, trajectories, steps
    "U1": ("U1", (4, 4, 4), 32, (10, 40), 16, (20, 40), 8),
    "SU3": ("SU3", (4, 4, 4, 4), 32, (5, 8), 8, (8, 12), 4),
}


@pytest.mark.parametrize("case", list(CASES_HMC))
def test_plaquette_agrees_with_hmc(case):
    """3D U(1) 4^3 and 4D SU(3) 4^4 at beta = 1: a short heat-bath chain (with one
    over-relaxation sweep per heat-bath sweep) against a short HMC chain within 3 combined
    standard errors, and against the long HMC reference run within 3 of its own errors (the
    sharper test: a short HMC chain has errors of 1-2 %). Errors from bins of half a chain
    (heat bath) and from whole chains (HMC, whose autocorrelation is longer)."""
    name, shape, hb_batch, (hb_therm, hb_meas), hmc_batch, (n_therm, n_meas), steps = \
        CASES_HMC[case]
    plaq = _chain(name, 1.0, shape, batch=hb_batch, n_therm=hb_therm, n_meas=hb_meas,
                  n_overrelax=1, seed=7)
    p, err = plaq.mean(), binned_error(plaq, hb_meas // 2)

    group = get_group(name)
    hmc = HMC(group, GaugeAction(group, 1.0), shape, batch_size=hmc_batch, n_steps=steps,
              step_size=0.2, seed=3)
    hmc.thermalize(n_therm)
    ref = np.stack([average_plaquette(links, group).numpy() for links, _, _ in
                    hmc.sample(n_meas)])
    q, q_err = ref.mean(), binned_error(ref, n_meas)
    long, long_err = HMC_REFERENCE[case]
    print(f"{case}: heat bath {p:.5f} +- {err:.5f}, HMC {q:.5f} +- {q_err:.5f}, "
          f"long HMC {long} +- {long_err}")
    assert abs(p - q) < 3 * math.hypot(err, q_err)
    assert abs(p - long) < 3 * math.hypot(err, long_err)
    assert err < 0.01 * long  # 1 % of the value: a wrong factor in beta would show


# ------------------------------------------------------------------------------ bookkeeping


@pytest.mark.parametrize("name,shape", [("U1", (4, 2)), ("SU2", (2, 4, 2)),
                                        ("SU3", (2, 2, 2, 4))])
def test_batch_independence_and_determinism(name, shape):
    """Configuration b of a batch of 3 equals configuration b updated alone (its key, beta,
    sweep); the same call gives the same output; another sweep number or key does not."""
    group = get_group(name)
    links = group.random((3, len(shape), *shape), generator=torch.Generator().manual_seed(1))
    keys = stream_keys(5, 1, range(3))
    batch, alone = links, links[1:2]
    for sweep in range(2):
        batch = hb.update_sweep(batch, group, 1.3, keys, sweep, n_overrelax=1)
        alone = hb.update_sweep(alone, group, 1.3, keys[1:2], sweep, n_overrelax=1)
    assert torch.equal(batch[1:2], alone)
    again = hb.update_sweep(links, group, 1.3, keys, 0, n_overrelax=1)
    assert torch.equal(again, hb.update_sweep(links, group, 1.3, keys, 0, n_overrelax=1))
    first = hb.heatbath_sweep(links, group, 1.3, keys, 0)
    assert not torch.equal(hb.heatbath_sweep(links, group, 1.3, keys, 1), first)
    swapped = hb.heatbath_sweep(links[[1, 0, 2]], group, 1.3, keys[[1, 0, 2]], 0)
    assert torch.equal(swapped[[1, 0, 2]], first)
    assert not torch.equal(hb.heatbath_sweep(links, group, 1.3, keys[[1, 0, 2]], 0)[0],
                           first[0])


def test_configuration_groups_do_not_change_the_result(monkeypatch):
    """On CPUs the batch is updated in groups of configurations (cache-sized): one at a time
    gives the same links."""
    group = get_group("SU3")
    links = group.random((3, 2, 4, 2), generator=torch.Generator().manual_seed(6))
    keys = stream_keys(1, 2, range(3))
    betas = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    whole = hb.update_sweep(links, group, betas, keys, 4, n_overrelax=1)
    monkeypatch.setattr(hb, "_CPU_CHUNK_LINKS", 1)
    assert torch.equal(hb.update_sweep(links, group, betas, keys, 4, n_overrelax=1), whole)


def test_beta_per_configuration():
    """A ``[B]`` tensor of couplings: configuration b as updated alone with ``beta[b]``."""
    group = get_group("SU2")
    links = group.random((2, 2, 4, 4), generator=torch.Generator().manual_seed(2))
    keys = stream_keys(0, 0, range(2))
    betas = torch.tensor([0.5, 4.0], dtype=torch.float64)
    both = hb.heatbath_sweep(links, group, betas, keys, 3)
    for b in range(2):
        alone = hb.heatbath_sweep(links[b:b + 1], group, float(betas[b]), keys[b:b + 1], 3)
        assert torch.equal(both[b:b + 1], alone)


def test_single_precision_runs_and_stays_in_the_group():
    group = get_group("SU3")
    links = group.random((2, 2, 4, 4), dtype=torch.complex64,
                         generator=torch.Generator().manual_seed(3))
    keys = stream_keys(0, 0, range(2))
    for sweep in range(3):
        links = hb.update_sweep(links, group, 5.0, keys, sweep, n_overrelax=1)
    assert links.dtype == torch.complex64
    eye = torch.eye(3, dtype=torch.complex64)
    assert torch.allclose(links @ links.mH, eye, atol=1e-5)


def test_long_su3_run_stays_unitary():
    """Reunitarization: 40 sweeps of products keep ``U U^dag = 1`` and ``det U = 1`` to
    1e-14."""
    group = get_group("SU3")
    links = group.random((1, 2, 2, 2), generator=torch.Generator().manual_seed(4))
    keys = stream_keys(0, 0, [0])
    for sweep in range(40):
        links = hb.update_sweep(links, group, 6.0, keys, sweep, n_overrelax=3)
    eye = torch.eye(3, dtype=torch.complex128)
    assert torch.allclose(links @ links.mH, eye, atol=1e-14)
    assert torch.allclose(torch.linalg.det(links), torch.ones(1, dtype=torch.complex128),
                          atol=1e-14)


def test_argument_checks():
    hb.check_lattice((4, 2, 6))
    with pytest.raises(ValueError, match="L_1 = 3"):
        hb.check_lattice((4, 3))
    with pytest.raises(ValueError, match="L_2 = 5"):
        hb.check_lattice((2, 2, 5, 2))
    with pytest.raises(ValueError, match="dimension"):
        hb.check_lattice((2, 2, 2, 2, 2))
    u1 = get_group("U1")
    keys = stream_keys(0, 0, range(2))
    with pytest.raises(ValueError, match="L_0 = 5"):
        hb.heatbath_sweep(u1.random((2, 2, 5, 4)), u1, 1.0, keys, 0)
    su4 = get_group("SU4")
    with pytest.raises(ValueError, match="U1, SU2 and SU3"):
        hb.overrelax_sweep(su4.random((2, 2, 2, 2)), su4)
    links = u1.random((2, 2, 4, 4))
    with pytest.raises(ValueError, match="keys"):
        hb.heatbath_sweep(links, u1, 1.0, keys[:1], 0)
    with pytest.raises(ValueError, match="beta"):
        hb.heatbath_sweep(links, u1, -1.0, keys, 0)
    with pytest.raises(ValueError, match="sweep"):
        hb.heatbath_sweep(links, u1, 1.0, keys, 2**32)
    with pytest.raises(ValueError, match="n_overrelax"):
        hb.update_sweep(links, u1, 1.0, keys, 0, n_overrelax=-1)
    with pytest.raises(ValueError, match="must end in"):
        hb.heatbath_sweep(links, get_group("SU2"), 1.0, keys, 0)
