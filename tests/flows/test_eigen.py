"""The closed-form SU(2)/SU(3) eigen-decomposition (hpcflow.lattice.eigen) against the batched
``eigh`` route, and the spectral flow with either.

Checked: the same eigenvalues as ``eigh``, ``V diag(exp(i phi)) V^dagger = W`` and ``V`` unitary
(float64 to 1e-12, float32 to 1e-5) on Haar-random matrices, at exact degeneracies (centre
elements, two equal eigenvalues, eigenvalues ``phi_i + phi_j = pi`` that the Hermitian route must
not confuse), near them (1e-6 ... 1e-12) and far below rounding of them (down to where the square
of the Hermitian part underflows); gradcheck of gauge-invariant outputs through the
written-out backward; equal gradients of both methods wherever the eigenvalue gaps are above the
backward's clamp; the SU(N) transform and whole SU(2)/SU(3) flows equal between methods to 1e-10.
"""

import math

import pytest
import torch

from hpcflow import build_model, load_config
from hpcflow.flows.spectral import SUNTransform, from_eig, sorted_angles, unitary_eig
from hpcflow.lattice.eigen import closed_form_eig, eigh_eig
from hpcflow.lattice.groups import SUN
from tests.helpers import perturb, su_basis

C128 = torch.complex128
F64 = torch.float64
GROUPS = [pytest.param(2, id="SU2"), pytest.param(3, id="SU3")]
DTYPES = [pytest.param(torch.complex128, 1e-12, id="float64"),
          pytest.param(torch.complex64, 1e-5, id="float32")]
CLOSE = (1e-6, 1e-8, 1e-10, 1e-12)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _algebra(n: int, count: int, g: torch.Generator) -> torch.Tensor:
    """Random anti-Hermitian traceless ``X: [count, n, n]``, N(0, 1) coefficients in su_basis."""
    basis = su_basis(n)
    coeff = torch.randn(count, basis.shape[0], generator=g, dtype=F64).to(C128)
    return torch.einsum("kc,cij->kij", coeff, basis)


def _with_angles(angles: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """``Omega diag(exp(i angles)) Omega^dagger`` for Haar ``Omega``: ``[M, n] -> [M, n, n]``."""
    omega = SUN(angles.shape[-1]).random((angles.shape[0],), generator=g)
    return omega @ torch.diag_embed(torch.polar(torch.ones_like(angles), angles)).to(C128) \
        @ omega.mH


def _degenerate(n: int, seed: int, per_case: int = 20) -> torch.Tensor:
    """Matrices ``[M, n, n]`` (complex128) at and near degenerate eigenvalues:
    the centre elements ``z 1`` and ``z exp(eps X)``; for SU(3) also two equal eigenvalues
    ``diag(e^{ia}, e^{ia}, e^{-2ia})`` and pairs split by ``eps``, conjugated by Haar unitaries,
    and ``phi_i + phi_j = pi`` (equal eigenvalues of ``(W - W^dagger)/2i``, not of ``W``)."""
    g = _gen(seed)
    mats = []
    for k in range(n):
        z = complex(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n))
        mats.append(z * torch.eye(n, dtype=C128)[None])
        for eps in CLOSE:
            mats.append(z * torch.matrix_exp(eps * _algebra(n, per_case, g)))
    if n == 3:
        a = (2 * torch.rand(per_case, generator=g, dtype=F64) - 1) * math.pi
        for eps in (0.0, *CLOSE):
            split = eps * torch.randn(per_case, generator=g, dtype=F64)
            mats.append(_with_angles(torch.stack([a + split, a, -2 * a - split], -1), g))
        b = (2 * torch.rand(per_case, generator=g, dtype=F64) - 1) * math.pi
        mats.append(_with_angles(torch.stack([b, math.pi - b, -math.pi * torch.ones_like(b)],
                                             -1), g))
    return torch.cat(mats)


def _eigenvalue_distance(phi_a: torch.Tensor, phi_b: torch.Tensor) -> torch.Tensor:
    """Largest distance of an eigenvalue ``exp(i phi_a)`` to the nearest ``exp(i phi_b)`` and
    back: ``[...]`` (the spectra compared as sets, in any order)."""
    la = torch.polar(torch.ones_like(phi_a), phi_a)
    lb = torch.polar(torch.ones_like(phi_b), phi_b)
    d = (la[..., :, None] - lb[..., None, :]).abs()
    return torch.maximum(d.amin(-1).amax(-1), d.amin(-2).amax(-1))


def _check_decomposition(w: torch.Tensor, tol: float) -> None:
    n = w.shape[-1]
    phi, v = closed_form_eig(w)
    phi_ref, _ = eigh_eig(w)
    assert phi.dtype == w.real.dtype and v.dtype == w.dtype
    assert torch.isfinite(phi).all() and torch.isfinite(torch.view_as_real(v)).all()
    assert (phi.abs() <= math.pi).all()
    assert (from_eig(phi, v) - w).abs().max() < tol
    assert (v.mH @ v - torch.eye(n, dtype=w.dtype)).abs().max() < tol
    assert _eigenvalue_distance(phi, phi_ref).max() < tol


# ------------------------------------------------------------------------------------------------
# The decomposition
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("n", GROUPS)
def test_closed_form_agrees_with_eigh_on_haar_matrices(n, dtype, tol):
    """Haar-random W: the eigenvalues of eigh, W = V diag(exp(i phi)) V^dagger, V unitary."""
    _check_decomposition(SUN(n).random((4000,), generator=_gen(1), dtype=dtype), tol)


@pytest.mark.parametrize("dtype, tol", DTYPES)
@pytest.mark.parametrize("n", GROUPS)
def test_closed_form_at_and_near_degeneracy(n, dtype, tol):
    """The same at the centre elements, at two equal eigenvalues, at phi_i + phi_j = pi and
    within 1e-6 ... 1e-12 of them (where eigenvectors are ill-conditioned but V stays unitary
    and the reconstruction exact to rounding)."""
    _check_decomposition(_degenerate(n, seed=2).to(dtype), tol)


@pytest.mark.parametrize("dtype, tol, scales", [
    pytest.param(C128, 1e-12, (1e-20, 1e-80, 1e-160, 1e-250), id="float64"),
    pytest.param(torch.complex64, 1e-5, (1e-18, 1e-22, 1e-26, 1e-30), id="float32")])
@pytest.mark.parametrize("n", GROUPS)
def test_closed_form_where_the_hermitian_part_underflows(n, dtype, tol, scales):
    """``W = z (1 + eps X)`` with ``eps`` far below rounding: at ``z = 1`` the Hermitian part has
    entries ``eps`` whose squares underflow. The SU(3) route normalizes it by its norm, clamped at
    ``sqrt(tiny)``, with no division by its largest entry first: every step must stay finite
    (an overflow there turns V into NaN), V unitary, W reconstructed."""
    g = _gen(14)
    mats = []
    for k in range(n):
        z = complex(math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n))
        for eps in scales:
            mats.append(z * (torch.eye(n, dtype=C128) + eps * _algebra(n, 20, g)))
    _check_decomposition(torch.cat(mats).to(dtype), tol)


def test_closed_form_angles_of_known_spectra():
    """SU(3) with prescribed angles (two equal, and generic): the sorted zero-sum angles are
    the prescribed ones to 1e-13; SU(2) at -1: theta = pi."""
    g = _gen(3)
    a = torch.linspace(-3.0, 3.0, 61, dtype=F64)
    for angles in (torch.stack([a, a, -2 * a], -1), torch.stack([a, 0.5 * a, -1.5 * a], -1)):
        angles = torch.remainder(angles + math.pi, 2 * math.pi) - math.pi
        expected, _ = sorted_angles(angles)
        s, _ = sorted_angles(closed_form_eig(_with_angles(angles, g))[0])
        assert (s - expected).abs().max() < 1e-13
    phi, v = closed_form_eig(-torch.eye(2, dtype=C128))
    assert phi.abs().tolist() == [math.pi, math.pi] and torch.equal(v, torch.eye(2, dtype=C128))


def test_closed_form_refuses_other_sizes():
    w = SUN(4).random((2,), generator=_gen(4))
    with pytest.raises(ValueError, match="N = 2 and 3"):
        closed_form_eig(w)
    with pytest.raises(ValueError, match="method"):
        unitary_eig(SUN(3).random((2,), generator=_gen(4)), method="eig")
    with pytest.raises(ValueError, match="eig must be"):
        SUNTransform(SUN(3), eig="lapack")


# ------------------------------------------------------------------------------------------------
# Gradients
# ------------------------------------------------------------------------------------------------


def _spectral_loss(lt: SUNTransform, w0: torch.Tensor, m: torch.Tensor):
    """``(v, params) -> sum_k Re tr(M h(exp(v_k.T) W0_k)) + log J_k``, a gauge-invariant use of
    the decomposition (the spectral map consumes only phi and V f(phi) V^dagger)."""
    basis = su_basis(w0.shape[-1])

    def loss(v, params):
        w = torch.matrix_exp(torch.einsum("kc,cij->kij", v.to(C128), basis)) @ w0
        w_new, log_j = lt.transform(w, params)
        return (m * w_new).sum((-2, -1)).real + log_j

    return loss


@pytest.mark.parametrize("n", GROUPS)
def test_gradcheck_gauge_invariant_outputs(n):
    """gradcheck (float64, generic points) of the closed-form route through the written-out
    backward: sorted eigen-angles, the transformed matrix and log J, in Lie-algebra coordinates
    ``W = exp(v.T) W0`` and in the spline parameters."""
    lt = SUNTransform(SUN(n), bins=4)
    w0 = SUN(n).random((3,), generator=_gen(5))
    basis = su_basis(n)
    params = 0.5 * torch.randn(3, lt.n_params, generator=_gen(6), dtype=F64)
    v = 0.1 * torch.randn(3, basis.shape[0], generator=_gen(7), dtype=F64)

    def outputs(v, params):
        w = torch.matrix_exp(torch.einsum("kc,cij->kij", v.to(C128), basis)) @ w0
        phi, _ = unitary_eig(w)
        w_new, log_j = lt.transform(w, params)
        return sorted_angles(phi)[0], torch.view_as_real(w_new), log_j

    assert torch.autograd.gradcheck(outputs, (v.requires_grad_(), params.requires_grad_()),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("n", GROUPS)
def test_gradients_equal_between_methods(n):
    """d/dv and d/dparams of a gauge-invariant loss agree between the closed form and eigh on
    Haar-random matrices and near degeneracies whose gaps exceed the backward's clamp
    (sqrt(eps) = 1.5e-8): the backward does not depend on the eigenvectors chosen. Inside the
    clamp (and at exact degeneracy, where log J is not differentiable) it does, for either
    method; there both are only finite."""
    g = _gen(8)
    haar = SUN(n).random((300,), generator=g)
    z = torch.polar(torch.tensor(1.0, dtype=F64), torch.tensor(2 * math.pi / n, dtype=F64))
    near = [z * torch.matrix_exp(eps * _algebra(n, 20, g)) for eps in (1e-3, 1e-6)]
    if n == 3:
        a = (2 * torch.rand(20, generator=g, dtype=F64) - 1) * math.pi
        near.append(_with_angles(torch.stack([a + 1e-6, a, -2 * a - 1e-6], -1), g))
    inside = _degenerate(n, seed=9, per_case=2)
    m = torch.randn(n, n, generator=g, dtype=F64).to(C128)
    for w0, tol in ((haar, 1e-9), (torch.cat(near), 1e-7), (inside, None)):
        grads = {}
        for method in ("closed", "eigh"):
            lt = SUNTransform(SUN(n), bins=8, eig=method)
            params = torch.randn(w0.shape[0], lt.n_params, generator=_gen(10), dtype=F64)
            v = torch.zeros(w0.shape[0], n * n - 1, dtype=F64, requires_grad=True)
            params.requires_grad_(True)
            _spectral_loss(lt, w0, m)(v, params).sum().backward()
            grads[method] = torch.cat([v.grad, params.grad], -1)
        assert torch.isfinite(grads["closed"]).all()
        if tol is not None:
            scale = grads["eigh"].abs().amax(-1, keepdim=True).clamp_min(1.0)
            assert ((grads["closed"] - grads["eigh"]).abs() / scale).max() < tol


# ------------------------------------------------------------------------------------------------
# The transform and the flow
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", GROUPS)
def test_transform_equal_between_methods(n):
    """SUNTransform.transform, forward and inverse: W' and log J equal to 1e-10 (float64)
    with either decomposition, on Haar-random and (near-)degenerate matrices."""
    w = torch.cat([SUN(n).random((2000,), generator=_gen(11)), _degenerate(n, seed=12)])
    closed, eigh = SUNTransform(SUN(n), bins=8), SUNTransform(SUN(n), bins=8, eig="eigh")
    params = 0.5 * torch.randn(w.shape[0], closed.n_params, generator=_gen(13), dtype=F64)
    for inverse in (False, True):
        w_c, log_j_c = closed.transform(w, params, inverse=inverse)
        w_e, log_j_e = eigh.transform(w, params, inverse=inverse)
        assert (w_c - w_e).abs().max() < 1e-10
        assert (log_j_c - log_j_e).abs().max() < 1e-10


def _tiny_flow(nc: int):
    """A float64 SU(N) flow on a 2^4 lattice (su3_4d.yaml's layout, small networks), with
    randomized networks (a new flow is the identity)."""
    cfg = load_config(None, ["lattice.shape=[2, 2, 2, 2]", f"lattice.group=SU{nc}",
                             "action.beta=1.0", "model.layers=8", "model.bins=4",
                             "model.net.hidden=[4]", "model.net.conv=factorized",
                             "model.net.rank=4", "model.dtype=float64"])
    torch.manual_seed(0)
    model = build_model(cfg)
    perturb(model, 0.1)
    return model


def _set_eig(model, method: str) -> None:
    for lt in {id(layer.link_transform): layer.link_transform for layer in model.layers}.values():
        lt.eig = method


@pytest.mark.parametrize("nc", [2, 3])
def test_gauge_flow_equal_between_methods(nc):
    """A 4D SU(N) GaugeFlow: forward, inverse, log-determinants and the parameter gradient of
    a reverse-KL-like loss agree between the closed form and eigh (1e-10; gradients 1e-9
    relative)."""
    model = _tiny_flow(nc)
    z = model.prior(range(2), seed=1, stream=1)
    out = {}
    for method in ("closed", "eigh"):
        _set_eig(model, method)
        model.zero_grad()
        u, logdet = model(z)
        z_back, logdet_inv = model.inverse(u.detach())
        (u.real.sum() - logdet.sum()).backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        out[method] = (u, logdet, z_back, logdet_inv, grad)
    u, logdet, z_back, logdet_inv, grad = out["closed"]
    assert logdet.abs().min() > 0.1  # a non-trivial map
    assert (z_back - z).abs().max() < 1e-10
    for a, b in zip(out["closed"][:4], out["eigh"][:4], strict=True):
        assert (a - b).abs().max() < 1e-10
    assert (grad - out["eigh"][4]).abs().max() < 1e-9 * grad.abs().max()
