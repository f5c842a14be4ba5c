"""Gauge groups: exact Haar sampling, algebra, projection, eigen-decomposition."""


import pytest
import torch

from hpcflow.lattice.groups import SUN, U1, gauge_transform, get_group, haar_unitary

N_SAMPLES = 200_000


def _moments(u):
    tr = u.diagonal(dim1=-2, dim2=-1).sum(-1)
    return tr, (tr.abs() ** 2).mean().item()


@pytest.mark.parametrize("n", [2, 3])
def test_haar_su_n_moments(n):
    """SU(N) Haar: <|tr U|^2> = 1, <|tr U|^4> = 2, <(tr U)^N> = 1 (N > 1 tells SU from U)."""
    g = torch.Generator().manual_seed(n)
    u = SUN(n).random((N_SAMPLES,), generator=g)
    tr, m2 = _moments(u)
    assert m2 == pytest.approx(1.0, abs=0.015)
    assert (tr.abs() ** 4).mean().item() == pytest.approx(2.0, abs=0.06)
    trn = (tr**n).mean()
    assert trn.real.item() == pytest.approx(1.0, abs=0.05)
    assert abs(trn.imag.item()) < 0.05


@pytest.mark.parametrize("n", [2, 3])
def test_haar_u_n_differs_from_su_n(n):
    """U(N) Haar (before the determinant fix): <(tr U)^N> = 0, <|tr U|^2> = 1."""
    g = torch.Generator().manual_seed(10 + n)
    u = haar_unitary(n, (N_SAMPLES,), generator=g)
    tr, m2 = _moments(u)
    assert m2 == pytest.approx(1.0, abs=0.015)
    assert abs((tr**n).mean().item()) < 0.05


def test_haar_phase_fix_matters():
    """Without the phase fix, QR output is not Haar: <|tr U|^2> departs from 1."""
    g = torch.Generator().manual_seed(5)
    z = torch.randn(N_SAMPLES, 3, 3, dtype=torch.complex128, generator=g)
    q, _ = torch.linalg.qr(z)
    assert abs((q.diagonal(dim1=-2, dim2=-1).sum(-1).abs() ** 2).mean().item() - 1) > 0.1


@pytest.mark.parametrize("name", ["SU2", "SU3", "SU4"])
def test_su_n_unitary_and_unit_determinant(name):
    group = get_group(name)
    u = group.random((1000,), generator=torch.Generator().manual_seed(0))
    eye = torch.eye(group.nc, dtype=u.dtype)
    assert torch.allclose(group.mul(u, group.dagger(u)), eye.expand_as(u), atol=1e-12, rtol=0)
    assert torch.allclose(torch.linalg.det(u), torch.ones(1000, dtype=u.dtype), atol=1e-12)


def test_u1_haar_is_uniform_phase():
    """U(1): |U| = 1 and <U^k> = 0 for k = 1, 2, 3."""
    u = U1().random((N_SAMPLES,), generator=torch.Generator().manual_seed(1))[..., 0, 0]
    assert torch.allclose(u.abs(), torch.ones(N_SAMPLES, dtype=torch.float64), atol=1e-14)
    for k in (1, 2, 3):
        assert abs((u**k).mean().item()) < 0.01


def test_float32_sampling_dtype():
    u = SUN(3).random((10,), dtype=torch.complex64)
    assert u.dtype == torch.complex64


@pytest.mark.parametrize("name", ["U1", "SU2", "SU3"])
def test_projection_recovers_group_element(name):
    """project(U + small noise) is in the group and close to U; project(U) == U."""
    group = get_group(name)
    g = torch.Generator().manual_seed(2)
    u = group.random((50,), generator=g)
    assert torch.allclose(group.project(u), u, atol=1e-12)
    noisy = u + 1e-3 * torch.randn(u.shape, dtype=u.dtype, generator=g)
    p = group.project(noisy)
    eye = torch.eye(group.nc, dtype=u.dtype).expand_as(u)
    assert torch.allclose(group.mul(p, group.dagger(p)), eye, atol=1e-12)
    if group.nc > 1:
        assert torch.allclose(torch.linalg.det(p), torch.ones(50, dtype=u.dtype), atol=1e-12)
    assert (p - u).abs().max() < 1e-2


@pytest.mark.parametrize("bad", ["U2", "SU1", "SO3", "su3", ""])
def test_unknown_group_is_refused(bad):
    with pytest.raises(ValueError, match="gauge group"):
        get_group(bad)


def test_gauge_transform_is_a_group_action():
    """Omega2 o (Omega1 o U) == (Omega2 Omega1) o U, and the identity acts trivially."""
    group = SUN(2)
    g = torch.Generator().manual_seed(4)
    links = group.random((2, 2, 3, 4), generator=g)
    o1, o2 = group.random((2, 3, 4), generator=g), group.random((2, 3, 4), generator=g)
    lhs = gauge_transform(gauge_transform(links, o1, group), o2, group)
    rhs = gauge_transform(links, group.mul(o2, o1), group)
    assert torch.allclose(lhs, rhs, atol=1e-12)
    ident = group.identity((2, 3, 4))
    assert torch.allclose(gauge_transform(links, ident, group), links)
