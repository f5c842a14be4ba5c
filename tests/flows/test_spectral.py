"""Properties of the SU(N) spectral flow in hpcflow.flows.spectral (float64 throughout).

Checked: the eigen-decomposition and its gradients (also at degenerate eigenvalues),
conjugation and permutation equivariance, invertibility, the log-Jacobian against autograd in
Lie-algebra coordinates (docs/physics.md recipe) and its limits on the edges of the SU(3) cell,
the identity at zero parameters, the link update, gauge-invariant features, the Haar normalization
of exp(log J), constants cached in inference mode, and one coupling layer.
"""

import math

import pytest
import torch

from hpcflow.flows.spectral import (
    SUNTransform,
    from_eig,
    sorted_angles,
    su3_cell,
    su3_from_cell,
    unitary_eig,
)
from hpcflow.lattice.groups import SUN, U1
from tests.helpers import perturb, su_basis

C128 = torch.complex128
F64 = torch.float64
GROUPS = [pytest.param(2, id="SU2"), pytest.param(3, id="SU3")]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(lt: SUNTransform, shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, lt.n_params, generator=_gen(seed), dtype=F64)


def _near_degenerate(n: int, seed: int) -> torch.Tensor:
    """Centre elements ``z 1`` exactly and times ``exp(eps X)`` for eps from 1e-3 to 1e-12, and
    (SU(3)) two equal eigenvalues exactly and nearly: ``[M, n, n]``."""
    g = torch.Generator().manual_seed(seed)
    basis = su_basis(n)
    centres = [torch.polar(torch.tensor(1.0, dtype=F64), torch.tensor(2 * math.pi * k / n,
                                                                      dtype=F64))
               for k in range(n)]
    mats = []
    for z in centres:
        mats.append(z * torch.eye(n, dtype=C128))
        for eps in (1e-3, 1e-6, 1e-9, 1e-12):
            v = torch.randn(basis.shape[0], generator=g, dtype=F64).to(C128)
            mats.append(z * torch.matrix_exp(eps * torch.einsum("c,cij->ij", v, basis)))
    if n == 3:
        omega = SUN(3).random((4,), generator=g)
        for a, eps in ((0.7, 0.0), (2.0, 1e-9), (-2.5, 1e-7), (math.pi, 1e-8)):
            ang = torch.tensor([a + eps, a, -2 * a - eps], dtype=F64)
            mats.append(torch.diag(torch.polar(torch.ones_like(ang), ang)))
        mats[-4:] = [o @ m @ o.mH for o, m in zip(omega, mats[-4:], strict=True)]
    return torch.stack(mats)


def _test_matrices(n: int, count: int, seed: int) -> torch.Tensor:
    """Haar-random matrices followed by the near-degenerate ones: ``[M, n, n]``."""
    return torch.cat([SUN(n).random((count,), generator=_gen(seed)), _near_degenerate(n, seed)])


# ------------------------------------------------------------------------------------------------
# Eigen-decomposition
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", GROUPS)
def test_unitary_eig_reconstructs_with_orthonormal_vectors(n):
    """W = V diag(exp(i phi)) V^dagger with V unitary, also at and near centre elements."""
    w = _test_matrices(n, 500, seed=1)
    phi, v = unitary_eig(w)
    eye = torch.eye(n, dtype=C128)
    assert (from_eig(phi, v) - w).abs().max() < 1e-13
    assert (v.mH @ v - eye).abs().max() < 1e-13
    assert ((phi > -math.pi - 1e-15) & (phi <= math.pi + 1e-15)).all()


@pytest.mark.parametrize("n", GROUPS)
def test_sorted_angles_zero_sum_canonical(n):
    """sorted_angles: ascending, zero sum, spread <= 2 pi, same eigenvalues as phi."""
    phi, _ = unitary_eig(_test_matrices(n, 2000, seed=2))
    s, perm = sorted_angles(phi)
    assert (s.diff(dim=-1) >= 0).all()
    assert s.sum(-1).abs().max() < 1e-13
    assert (s[..., -1] - s[..., 0]).max() <= 2 * math.pi + 1e-13
    def eig(a):
        return torch.polar(torch.ones_like(a), a)

    assert (eig(s) - eig(phi.gather(-1, perm))).abs().max() < 1e-13


def test_su3_cell_round_trip_and_corners():
    """su3_from_cell inverts su3_cell on the cell; corners are the centre elements."""
    phi, _ = unitary_eig(SUN(3).random((1000,), generator=_gen(3)))
    s, _ = sorted_angles(phi)
    w, r = su3_cell(s)
    assert ((w >= 0) & (w <= 1) & (r >= 0) & (r <= 1)).all()
    assert (su3_from_cell(w, r) - s).abs().max() < 1e-13
    corners = su3_from_cell(torch.tensor([0.0, 1.0, 1.0], dtype=F64),
                            torch.tensor([0.5, 0.0, 1.0], dtype=F64))
    third = 2 * math.pi / 3
    expected = torch.tensor([[0, 0, 0], [-third, -third, 2 * third],
                             [-2 * third, third, third]], dtype=F64)
    assert torch.allclose(corners, expected, atol=1e-14)


@pytest.mark.parametrize("n", GROUPS)
def test_gradients_finite_at_and_near_degeneracy(n):
    """d/dv and d/dparams of Re tr(M h(exp(v.T) W)) + log J are finite at the identity, at centre
    elements, at exactly and nearly equal eigenvalues; and where the gap is far above the clamp
    (eps = 1e-3) the gradient in v equals a central finite difference."""
    lt = SUNTransform(SUN(n), bins=6)
    w0 = _near_degenerate(n, seed=4)
    basis = su_basis(n)
    m = torch.randn(n, n, generator=_gen(5), dtype=F64).to(C128)
    params = _params(lt, (w0.shape[0],), seed=6).requires_grad_(True)

    def loss(v):
        w = torch.matrix_exp(torch.einsum("kc,cij->kij", v.to(C128), basis)) @ w0
        w_new, log_j = lt.transform(w, params)
        return ((m * w_new).sum((-2, -1)).real + log_j).sum()

    v = torch.zeros(w0.shape[0], basis.shape[0], dtype=F64, requires_grad=True)
    loss(v).backward()
    assert torch.isfinite(v.grad).all() and torch.isfinite(params.grad).all()
    # finite differences on the matrices 0.001 away from a centre element (index 1 of each group)
    rows = [1 + 5 * k for k in range(n)]
    h = 1e-6
    with torch.no_grad():
        for row in rows:
            for c in range(basis.shape[0]):
                dv = torch.zeros_like(v)
                dv[row, c] = h
                fd = (loss(v + dv) - loss(v - dv)) / (2 * h)
                assert fd.item() == pytest.approx(v.grad[row, c].item(), abs=1e-5, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# The spectral map
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", GROUPS)
def test_conjugation_equivariance(n):
    """h(Omega W Omega^dagger) = Omega h(W) Omega^dagger and log J is unchanged."""
    g = SUN(n)
    lt = SUNTransform(g, bins=8)
    w = _test_matrices(n, 200, seed=7)
    omega = g.random((w.shape[0],), generator=_gen(8))
    params = _params(lt, (w.shape[0],), seed=9)
    w_new, log_j = lt.transform(w, params)
    w_rot, log_j_rot = lt.transform(omega @ w @ omega.mH, params)
    assert (w_rot - omega @ w_new @ omega.mH).abs().max() < 1e-12
    assert (log_j_rot - log_j).abs().max() < 1e-9


@pytest.mark.parametrize("n", GROUPS)
def test_permutation_equivariance_of_angle_map(n):
    """Permuting the eigen-angles permutes the output angles and leaves log J unchanged."""
    lt = SUNTransform(SUN(n), bins=8)
    phi, _ = unitary_eig(SUN(n).random((300,), generator=_gen(10)))
    params = _params(lt, (300,), seed=11)
    out, log_j = lt.spectral(phi, params)
    for perm in [[1, 0]] if n == 2 else [[2, 0, 1], [1, 0, 2], [0, 2, 1]]:
        out_p, log_j_p = lt.spectral(phi[..., perm], params)
        diff = torch.polar(torch.ones_like(out_p), out_p) - torch.polar(torch.ones_like(out_p),
                                                                        out[..., perm])
        assert diff.abs().max() < 1e-12
        assert (log_j_p - log_j).abs().max() < 1e-10


@pytest.mark.parametrize("n", GROUPS)
def test_round_trip(n):
    """inverse(forward(W)) = W to 1e-10 and the log-Jacobians cancel, for Haar-random W and W at
    or near the identity and the centre elements; forward(inverse(W')) = W' as well.
    Parameters N(0, 0.5^2) give log J in about [-13, 5]: wilder maps contract some regions so
    much that rounding of W' alone, amplified by the inverse, exceeds 1e-10."""
    lt = SUNTransform(SUN(n), bins=8)
    w = _test_matrices(n, 2000, seed=12)
    params = _params(lt, (w.shape[0],), seed=13, scale=0.5)
    w_new, log_j = lt.transform(w, params)
    w_back, log_j_inv = lt.transform(w_new, params, inverse=True)
    assert (w_new - w).abs().max() > 0.1  # not the identity map
    assert (w_back - w).abs().max() < 1e-10
    assert (log_j + log_j_inv).abs().max() < 1e-8
    assert torch.isfinite(log_j).all()
    w_fwd, _ = lt.transform(lt.transform(w, params, inverse=True)[0], params)
    assert (w_fwd - w).abs().max() < 1e-10


@pytest.mark.parametrize("n", GROUPS)
def test_log_j_equals_lie_algebra_jacobian(n):
    """log J = slogdet of J_ab = d/dv_b coord_a(h(exp(v.T) W) h(W)^dagger) at v = 0, with
    coord_a(A) = Re tr(T_a^dagger (A - A^dagger)/2) (docs/physics.md), to 1e-8. Through autograd
    this also checks the backward of unitary_eig."""
    g = SUN(n)
    lt = SUNTransform(g, bins=8)
    basis = su_basis(n)
    gram = torch.einsum("aij,bij->ab", basis.conj(), basis).real
    assert torch.allclose(gram, torch.eye(basis.shape[0], dtype=F64), atol=1e-15)
    ws = torch.cat([g.random((6,), generator=_gen(14)), _near_degenerate(n, seed=15)[[1, 6]]])
    for k, w in enumerate(ws):
        params = _params(lt, (), seed=16 + k)
        hw, log_j = lt.transform(w, params)

        def coords(v, w=w, params=params, hw=hw):
            x = torch.matrix_exp(torch.einsum("c,cij->ij", v.to(C128), basis))
            a = lt.transform(x @ w, params)[0] @ hw.mH
            return torch.einsum("aij,ij->a", basis.conj(), 0.5 * (a - a.mH)).real

        jac = torch.autograd.functional.jacobian(coords, torch.zeros(basis.shape[0], dtype=F64),
                                                 vectorize=True)
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign.item() == 1.0
        assert logabs.item() == pytest.approx(log_j.item(), abs=1e-8)


@pytest.mark.parametrize("n", GROUPS)
def test_locally_scalar_at_centre_elements(n):
    """Near a centre element z 1 the map is z exp(X) -> z exp(c X + O(X^2)) with one c for
    every direction X (a conjugation-equivariant map is differentiable there only if it is
    locally a multiple of the identity on the Lie algebra; SU(3) ties its spline slopes so);
    hence log J -> (N^2 - 1) log c = log J(z 1), independent of the direction of approach."""
    lt = SUNTransform(SUN(n), bins=8)
    params = _params(lt, (), seed=31, scale=0.5)
    basis = su_basis(n)
    x = torch.einsum("kc,cij->kij", torch.randn(64, basis.shape[0], generator=_gen(32),
                                                dtype=F64).to(C128), basis)
    eps = 1e-8  # random splines are steep: log J moves by up to ~700 eps here, linearly in eps
    for k in range(n):
        z = torch.polar(torch.tensor(1.0, dtype=F64), torch.tensor(2 * math.pi * k / n, dtype=F64))
        _, log_j0 = lt.transform(z * torch.eye(n, dtype=C128), params)
        w_new, log_j = lt.transform(z * torch.matrix_exp(eps * x), params)
        assert (log_j - log_j0).abs().max() < 1e-4
        c = math.exp(log_j0.item() / (n * n - 1))
        assert abs(math.log(c)) > 0.02  # not the identity map: c eps |x| differs from eps |x|
        assert (w_new / z - torch.matrix_exp(c * eps * x)).abs().max() < 1e-10


@pytest.mark.parametrize("inverse", [False, True])
def test_su3_log_j_continuous_onto_edges_and_corners(inverse):
    """On the edges of the canonical cell (two equal eigenvalues: r = 0, r = 1, w = 1) and at its
    corners (identity, centre elements) the Weyl ratios are 0/0 and take their limits, the slopes
    of the 1D maps (at the centre elements for 1 - w r and 1 - w (1 - r) too, through the tied end
    slopes). log J there equals log J 1e-11 inside the cell to 1e-7 (its derivative reaches ~600
    here), so the limits are the right ones."""
    lt = SUNTransform(SUN(3), bins=8)
    params = _params(lt, (), seed=33, scale=0.5)
    edge = torch.tensor([[0.0, 0.5], [0.6, 0.0], [0.6, 1.0], [1.0, 0.3], [1.0, 0.0], [1.0, 1.0]],
                        dtype=F64)
    step = torch.tensor([[1, 0], [0, 1], [0, -1], [-1, 0], [-1, 1], [-1, -1]], dtype=F64)

    def log_j(cell):
        phi = su3_from_cell(cell[:, 0], cell[:, 1])
        phi = torch.remainder(phi + math.pi, 2 * math.pi) - math.pi  # an SU(3) spectrum
        return lt.spectral(phi, params, inverse=inverse)[1]

    at, inside = log_j(edge), log_j(edge + 1e-11 * step)
    assert torch.isfinite(at).all()
    assert (at - inside).abs().max() < 1e-7


def test_constants_made_in_inference_mode_stay_out_of_autograd():
    """The spectral maps cache small constant tensors per dtype and device; the first call may
    come under torch.inference_mode (sampling), whose tensors autograd refuses to save. A later
    differentiated transform must not receive them."""
    import hpcflow.flows.spectral
    import hpcflow.lattice.eigen

    for module in (hpcflow.flows.spectral, hpcflow.lattice.eigen):
        for obj in vars(module).values():
            if hasattr(obj, "cache_clear"):
                obj.cache_clear()
    for n in (2, 3):
        lt = SUNTransform(SUN(n), bins=4)
        w = SUN(n).random((6,), generator=_gen(34))
        params = _params(lt, (6,), seed=35)
        with torch.inference_mode():
            for inverse in (False, True):
                lt.transform(w, params, inverse=inverse)
        w.requires_grad_(True)
        params.requires_grad_(True)
        for inverse in (False, True):
            w_new, log_j = lt.transform(w, params, inverse=inverse)
            (w_new.real.sum() + log_j.sum()).backward()
        assert torch.isfinite(torch.view_as_real(w.grad)).all()
        assert torch.isfinite(params.grad).all()


@pytest.mark.parametrize("n", GROUPS)
def test_transform_traces_into_one_graph(n):
    """torch.compile(fullgraph=True) captures the transform, forward and inverse, without a
    graph break (``GaugeFlow.compile_layers`` needs that; the caches of constant tensors must
    not query state that Dynamo cannot trace), and the captured graph gives eager's numbers."""
    lt = SUNTransform(SUN(n), bins=4)
    w = SUN(n).random((3, 4), generator=_gen(36))
    params = _params(lt, (3, 4), seed=37)
    for inverse in (False, True):
        compiled = torch.compile(lambda w, p, inverse=inverse: lt.transform(w, p, inverse=inverse),
                                 fullgraph=True, backend="eager")
        for a, b in zip(compiled(w, params), lt.transform(w, params, inverse=inverse), strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("n", GROUPS)
def test_zero_params_give_identity(n):
    """Zero parameters: h(W) = W and log J = 0, also at degenerate W."""
    lt = SUNTransform(SUN(n), bins=8)
    w = _test_matrices(n, 300, seed=20)
    w_new, log_j = lt.transform(w, torch.zeros(w.shape[0], lt.n_params, dtype=F64))
    assert (w_new - w).abs().max() < 1e-13
    assert log_j.abs().max() < 1e-12


@pytest.mark.parametrize("n", GROUPS)
def test_haar_normalization(n):
    """For W ~ Haar, E[exp(log J)] = 1: h is a bijection of the group, so
    int J_h dmu = mu(h(G)) = 1. Checked to 5 standard errors, and also under the inverse map."""
    g = SUN(n)
    lt = SUNTransform(g, bins=8)
    count = 40_000
    w = g.random((count,), generator=_gen(21))
    params = _params(lt, (), seed=22, scale=0.7)
    for inverse in (False, True):
        _, log_j = lt.transform(w, params, inverse=inverse)
        jac = torch.exp(log_j)
        err = jac.std() / math.sqrt(count)
        assert log_j.std() > 0.2  # a map far from measure preserving
        assert abs(jac.mean().item() - 1.0) < 5 * err.item()


@pytest.mark.parametrize("n", GROUPS)
def test_update_link(n):
    """U' = W' W^dagger U gives U' S = W' for W = U S, and U' stays in SU(N)."""
    g = SUN(n)
    lt = SUNTransform(g, bins=8)
    u, s = g.random((2, 50, 4), generator=_gen(23))
    w = u @ s
    w_new, _ = lt.transform(w, _params(lt, (50, 4), seed=24))
    u_new = lt.update_link(u, w, w_new)
    eye = torch.eye(n, dtype=C128)
    assert (u_new @ s - w_new).abs().max() < 1e-13
    assert (u_new.mH @ u_new - eye).abs().max() < 1e-13
    assert (torch.linalg.det(u_new) - 1).abs().max() < 1e-13


@pytest.mark.parametrize("n", GROUPS)
def test_loop_features_shape_and_gauge_invariance(n):
    """loop_features: [B, *L, N, N] -> [B, 2 (N - 1), *L], invariant under W -> Omega W Omega^dag,
    equal to Re/Im tr W^k / N."""
    g = SUN(n)
    lt = SUNTransform(g)
    w = g.random((3, 4, 5), generator=_gen(25))
    omega = g.random((3, 4, 5), generator=_gen(26))
    f = lt.loop_features(w)
    assert f.shape == (3, 2 * (n - 1), 4, 5) and f.dtype == F64
    assert (lt.loop_features(omega @ w @ omega.mH) - f).abs().max() < 1e-14
    tr = torch.linalg.matrix_power(w, n - 1).diagonal(dim1=-2, dim2=-1).sum(-1) / n
    # SU(3): tr W^2 from tr W alone (trace_features), exact on the group to rounding
    assert torch.allclose(f[:, -2], tr.real, rtol=0, atol=1e-14)
    assert torch.allclose(f[:, -1], tr.imag, rtol=0, atol=1e-14)


def test_constructor_and_parameter_counts():
    """n_params = 3K + 1 (SU(2)), 2 M (3K + 1) - M - 1 (SU(3)); other groups are refused."""
    assert SUNTransform(SUN(2), bins=8).n_params == 25
    assert SUNTransform(SUN(3), bins=8).n_params == 2 * 2 * 25 - 3
    assert SUNTransform(SUN(3), bins=8, modes=3).n_params == 2 * 3 * 25 - 4
    assert SUNTransform(SUN(3), bins=4, modes=1).n_params == 2 * 13 - 2
    assert SUNTransform(SUN(3)).n_features == 4
    with pytest.raises(ValueError, match="SU\\(2\\) and SU\\(3\\)"):
        SUNTransform(SUN(4))
    with pytest.raises(ValueError):
        SUNTransform(U1())


def test_float32_round_trip():
    """complex64 matrices work and round-trip to float32 accuracy."""
    lt = SUNTransform(SUN(3), bins=8)
    w = SUN(3).random((500,), generator=_gen(27), dtype=torch.complex64)
    params = _params(lt, (500,), seed=28, scale=0.3).float()
    w_new, log_j = lt.transform(w, params)
    assert w_new.dtype == torch.complex64 and log_j.dtype == torch.float32
    w_back, log_j_inv = lt.transform(w_new, params, inverse=True)
    assert (w_back - w).abs().max() < 1e-3
    assert (log_j + log_j_inv).abs().max() < 1e-2


# ------------------------------------------------------------------------------------------------
# In a coupling layer
# ------------------------------------------------------------------------------------------------


def test_coupling_layer_su3_invertible_and_gauge_invariant():
    """One GaugeCoupling with SUNTransform on a 4x4 SU(3) lattice: the inverse undoes it, the
    output is gauge covariant and log|det J| is gauge invariant."""
    from hpcflow.flows.coupling import GaugeCoupling
    from hpcflow.flows.model import plan_from_layer
    from hpcflow.lattice.groups import gauge_transform, random_gauge
    from hpcflow.masks import build_schedule
    from hpcflow.nn import build_context_net

    g = SUN(3)
    lt = SUNTransform(g, bins=4, modes=2)
    shape = (4, 4)
    schedule = build_schedule(shape, layers=1, multi_update=2, require_coverage=False)
    plan = plan_from_layer(schedule.layers[0])
    torch.manual_seed(0)
    net = build_context_net(2, lt.n_features * len(plan.features),
                            len(plan.updates) * len(plan.directions) * lt.n_params,
                            hidden=(4,), dtype=F64)
    perturb(net, 0.3)
    layer = GaugeCoupling(plan, lt, net)
    u = g.random((2, 2, *shape), generator=_gen(29))
    u_new, logdet = layer(u)
    u_back, logdet_inv = layer.inverse(u_new)
    assert (u_new - u).abs().max() > 0.1
    assert (u_back - u).abs().max() < 1e-10
    assert (logdet + logdet_inv).abs().max() < 1e-9
    omega = random_gauge(g, 2, shape, generator=_gen(30))
    u_rot_new, logdet_rot = layer(gauge_transform(u, omega, g))
    assert (u_rot_new - gauge_transform(u_new, omega, g)).abs().max() < 1e-12
    assert (logdet_rot - logdet).abs().max() < 1e-9


@pytest.mark.parametrize("dtype", [C128, torch.complex64])
def test_fused_su3_eig_equals_the_closed_form(dtype):
    """The fused kernel (csrc/eig.cpp) runs :func:`su3_eig`'s algorithm: the same angles and
    eigenvectors to rounding, also at and near degenerate eigenvalues, and the same gradients
    through :func:`unitary_eig` (whose backward needs only the outputs)."""
    from hpcflow.flows.spectral import from_eig
    from hpcflow.kernels import fused_kernels_error
    from hpcflow.lattice.eigen import su3_eig

    assert fused_kernels_error() is None
    g = SUN(3)
    w = torch.cat([g.random((64,), generator=_gen(31)), _near_degenerate(3, seed=32)]).to(dtype)
    p0, v0 = su3_eig(w)
    p1, v1 = torch.ops.hpcflow.su3_eig(w)
    tol = 1e-13 if dtype == C128 else 1e-5
    assert (torch.polar(torch.ones_like(p0), p0 - p1) - 1).abs().max() < tol  # pi = -pi
    # eigenvectors: equal where the eigenvalues are apart (the random matrices); in a nearly
    # degenerate eigenspace any orthonormal basis is right to eps / gap, so there the two must
    # be unitary and reconstruct W
    assert (v0[:64] - v1[:64]).abs().max() < 100 * tol
    eye = torch.eye(3, dtype=dtype)
    assert (v1.mH @ v1 - eye).abs().max() < tol
    assert (v1 @ torch.diag_embed(torch.polar(torch.ones_like(p1), p1).to(dtype)) @ v1.mH
            - w).abs().max() < 100 * tol
    grads = []  # of the random matrices: near degeneracy the gap clamp's damped gradient
    for fused in (False, True):  # depends on the basis chosen (see _UnitaryEig)
        x = w[:64].to(C128).clone().requires_grad_(True)
        phi, v = unitary_eig(x, fused=fused)
        out = from_eig(1.3 * phi, v)
        grads.append(torch.autograd.grad(out.real.sum() + phi.sum(), x)[0])
    assert (grads[0] - grads[1]).abs().max() < 1e-8
    with pytest.raises(RuntimeError, match="contiguous complex"):
        torch.ops.hpcflow.su3_eig(w.real.contiguous())
