"""The fused SU(3) eigen-angle map (hpcflow/kernels/csrc/su3.cpp) against the tensor path of
:func:`hpcflow.flows.spectral.su3_spectral`: values, log-Jacobians and gradients, at generic
angles and at the degenerate ones (identity, centre elements, two equal eigenvalues)."""

import math

import pytest
import torch

from hpcflow.flows.spectral import n_params_su3, su3_spectral
from hpcflow.kernels import MAX_MODES, fused_kernels_error

F64 = torch.float64
THIRD = 2.0 * math.pi / 3.0
BINS, MODES = 8, 2


def _angles(n: int, seed: int, dtype=F64) -> torch.Tensor:
    """``n`` zero-sum (mod 2 pi) triples in (-pi, pi], then the degenerate ones: the centre
    elements, two equal angles, eigen-angle pi, a small but not vanishing spread."""
    gen = torch.Generator().manual_seed(seed)
    a = (2.0 * torch.rand(n, 2, generator=gen, dtype=F64) - 1.0) * math.pi
    phi = torch.cat([a, -a.sum(-1, keepdim=True)], -1)
    phi = math.pi - torch.remainder(math.pi - phi, 2.0 * math.pi)
    special = torch.tensor([
        [THIRD, THIRD, THIRD],  # exp(2 pi i / 3) 1: w = 1, r = 1
        [-THIRD, -THIRD, -THIRD],  # w = 1, r = 0
        [0.3, 0.3, -0.6],  # r = 1
        [0.4, -0.2, -0.2],  # r = 0
        [math.pi, -math.pi / 2, -math.pi / 2],
        [math.pi, math.pi, 0.0],  # sum 2 pi
        [-math.pi / 3, -math.pi / 3, 2 * math.pi / 3],
        [1e-3, -2e-3, 1e-3],
    ], dtype=F64)
    return torch.cat([phi, special]).to(dtype)


def _run(phi, params, fused, seed=5):
    x = phi.clone().requires_grad_(True)
    p = params.clone().requires_grad_(True)
    y, log_j = su3_spectral(x, p, bins=BINS, modes=MODES, fused=fused)
    gen = torch.Generator().manual_seed(seed)
    gy = torch.randn(y.shape, generator=gen, dtype=y.dtype)
    gl = torch.randn(log_j.shape, generator=gen, dtype=y.dtype)
    g_x, g_p = torch.autograd.grad((y, log_j), (x, p), (gy, gl))
    return y.detach(), log_j.detach(), g_x, g_p


def test_the_operator_is_built():
    assert fused_kernels_error() is None
    assert hasattr(torch.ops.hpcflow, "su3_spectral")


@pytest.mark.parametrize("scale", [0.0, 0.3, 1.5])
def test_fused_map_equals_the_tensor_path_in_float64(scale):
    phi = _angles(400, seed=1)
    gen = torch.Generator().manual_seed(2)
    params = scale * torch.randn(phi.shape[0], n_params_su3(BINS, MODES), generator=gen,
                                 dtype=F64)
    ref, got = _run(phi, params, False), _run(phi, params, True)
    assert (ref[0] - got[0]).abs().max() < 1e-12
    assert (ref[1] - got[1]).abs().max() < 1e-11
    for a, b in zip(ref[2:], got[2:], strict=True):
        assert torch.isfinite(b).all()
        assert ((a - b).abs() / (1.0 + a.abs())).max() < 1e-8
    if scale == 0.0:  # zero parameters: the identity (angles mod 2 pi)
        assert (torch.exp(1j * got[0]) - torch.exp(1j * phi)).abs().max() < 1e-12
        assert got[1].abs().max() < 1e-12
    else:
        assert got[1].abs().max() > 0.1  # a non-trivial map


@pytest.mark.parametrize("fused", [False, True])
def test_gradient_near_the_identity_agrees_with_finite_differences(fused):
    """A spread of 1e-8 around the identity: the chain through ``r = (y - x) / (z - x)`` divides
    by the spread and the cotangent of ``w'`` is ~1/w; the gradient along both zero-sum
    directions matches central differences to 1e-4 (relative), by the kernel and by the tensor
    path (whose spline backward once summed the knots' cotangents from the fixed knot 0 and
    lost ~20% here to the cancellation of that knot's ~1/w cotangent)."""
    gen = torch.Generator().manual_seed(3)
    params = 0.5 * torch.randn(1, n_params_su3(BINS, MODES), generator=gen, dtype=F64)
    gy, gl = torch.randn(1, 3, generator=gen, dtype=F64), torch.randn(1, generator=gen, dtype=F64)

    def loss(x, fused):
        y, log_j = su3_spectral(x, params, bins=BINS, modes=MODES, fused=fused)
        return (y * gy).sum() + (log_j * gl).sum()

    spread = 1e-8
    base = torch.tensor([[0.7 * spread, -spread, 0.3 * spread]], dtype=F64)
    x = base.clone().requires_grad_(True)
    loss(x, fused).backward()
    h = 1e-3 * spread
    for d in ([1.0, -1.0, 0.0], [0.0, 1.0, -1.0]):
        d = torch.tensor([d], dtype=F64)
        fd = (loss(base + h * d, False) - loss(base - h * d, False)) / (2 * h)
        assert abs((x.grad * d).sum() - fd) < 1e-4 * (1.0 + fd.abs())


def test_fused_map_passes_gradcheck():
    phi = _angles(6, seed=4)[:6]
    gen = torch.Generator().manual_seed(5)
    params = 0.4 * torch.randn(6, n_params_su3(BINS, MODES), generator=gen, dtype=F64)
    phi.requires_grad_(True)
    params.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x, p: su3_spectral(x, p, bins=BINS, modes=MODES, fused=True), (phi, params))


def test_fused_map_in_float32_is_as_accurate_as_the_tensor_path():
    phi = _angles(300, seed=6)
    gen = torch.Generator().manual_seed(7)
    params = 0.5 * torch.randn(phi.shape[0], n_params_su3(BINS, MODES), generator=gen,
                               dtype=F64)
    exact = _run(phi, params, False)
    errors = {}
    for fused in (False, True):
        got = _run(phi.float(), params.float(), fused)
        errors[fused] = [(a.double() - b).abs().max().item()
                         for a, b in zip(got, exact, strict=True)]
    for e_fused, e_torch in zip(errors[True], errors[False], strict=True):
        assert e_fused < 3.0 * e_torch + 1e-4


def test_inverse_of_the_fused_map_and_other_modes():
    """The inverse runs on the tensor path (with the fused splines) and undoes the fused
    forward map; ``modes`` beyond the kernel's limit falls back to the tensor path."""
    phi = _angles(50, seed=8)
    gen = torch.Generator().manual_seed(9)
    params = 0.5 * torch.randn(phi.shape[0], n_params_su3(BINS, MODES), generator=gen,
                               dtype=F64)
    y, log_j = su3_spectral(phi, params, bins=BINS, modes=MODES, fused=True)
    back, log_j_inv = su3_spectral(y, params, bins=BINS, modes=MODES, fused=True, inverse=True)
    assert (torch.exp(1j * back) - torch.exp(1j * phi)).abs().max() < 1e-10
    assert (log_j + log_j_inv).abs().max() < 1e-10
    modes = MAX_MODES + 1
    p = 0.1 * torch.randn(phi.shape[0], n_params_su3(BINS, modes), generator=gen, dtype=F64)
    a = su3_spectral(phi, p, bins=BINS, modes=modes, fused=True)
    b = su3_spectral(phi, p, bins=BINS, modes=modes, fused=False)
    assert all((u - v).abs().max() < 1e-12 for u, v in zip(a, b, strict=True))


def test_fused_map_broadcasts_reads_strided_cotangents_and_is_first_order():
    phi = _angles(20, seed=10).reshape(4, 7, 3)
    gen = torch.Generator().manual_seed(11)
    params = 0.5 * torch.randn(4, 1, n_params_su3(BINS, MODES), generator=gen, dtype=F64)
    grads = {}
    for fused in (False, True):
        x = phi.clone().requires_grad_(True)
        p = params.clone().requires_grad_(True)
        y, log_j = su3_spectral(x, p, bins=BINS, modes=MODES, fused=fused)
        # log J summed per row (an expanded cotangent), y[..., 0] only (a strided one)
        loss = log_j.sum(-1).pow(2).sum() + y[..., 0].sum()
        grads[fused] = torch.autograd.grad(loss, (x, p))
        # log J alone: the cotangent of y is None
        g_only = torch.autograd.grad(su3_spectral(x, p, bins=BINS, modes=MODES,
                                                  fused=fused)[1].sum(), x)[0]
        grads[fused] += (g_only,)
    for a, b in zip(grads[False], grads[True], strict=True):
        assert ((a - b).abs() / (1.0 + a.abs())).max() < 1e-8
    empty = su3_spectral(phi[:0], params[:0], bins=BINS, modes=MODES, fused=True)
    assert empty[0].shape == (0, 7, 3) and empty[1].shape == (0, 7)
    x = phi.clone().requires_grad_(True)
    _, log_j = su3_spectral(x, params, bins=BINS, modes=MODES, fused=True)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.autograd.grad(log_j.sum(), x, create_graph=True)


def test_the_operator_checks_its_tables_and_threads_agree():
    from hpcflow.flows.spectral import _tables

    phi = _angles(3000, seed=12)
    gen = torch.Generator().manual_seed(13)
    params = 0.5 * torch.randn(phi.shape[0], n_params_su3(BINS, MODES), generator=gen,
                               dtype=F64)
    t = _tables(BINS, MODES, F64, phi.device, False)
    spec = (BINS, MODES, 1e-3, 1e-3, 1e-3)
    bad = t.slots.clone()
    bad[3] = params.shape[-1] + 3
    with pytest.raises(RuntimeError, match="slots entry"):
        torch.ops.hpcflow.su3_spectral(phi, params, bad, t.d_k, t.tied, *spec)
    longer = torch.cat([params, params[:, :1]], -1)  # one more: would read a constraint's slot
    with pytest.raises(RuntimeError, match="params.shape"):
        torch.ops.hpcflow.su3_spectral(phi, longer, t.slots, t.d_k, t.tied, *spec)
    for fused in (False, True):
        with pytest.raises(ValueError, match="n_params_su3"):
            su3_spectral(phi, longer, bins=BINS, modes=MODES, fused=fused)
    with pytest.raises(RuntimeError, match=r"phi must be \[\.\.\., 3\]"):
        torch.ops.hpcflow.su3_spectral(phi[:, :2].contiguous(), params, t.slots, t.d_k, t.tied,
                                       *spec)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run(phi, params, True)
        torch.set_num_threads(4)
        four = _run(phi, params, True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, four, strict=True))
