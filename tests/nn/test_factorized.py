"""CP / Tucker factorized periodic convolutions."""

import itertools
import math

import pytest
import torch

from hpcflow.nn.conv import ConvNd
from hpcflow.nn.factorized import CPConvNd, TuckerConvNd, depthwise_periodic_conv1d
from tests.nn.reference import roll_conv

F64 = torch.float64
SHAPES = {2: (5, 4), 3: (5, 4, 3), 4: (4, 3, 5, 3)}


def randomize_(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
    return module


def full_equivalent(layer):
    """A ConvNd whose kernel is the layer's reconstructed kernel, with the same bias."""
    conv = ConvNd(layer.nd, layer.in_channels, layer.out_channels, layer.kernel_size, dtype=F64)
    with torch.no_grad():
        conv.weight.copy_(layer.full_weight())
        conv.bias.copy_(layer.bias)
    return conv


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("cls", [CPConvNd, TuckerConvNd])
def test_factorized_equals_full_conv_with_reconstructed_kernel(nd, cls):
    """Factorized layer == full ConvNd whose kernel is the reconstructed (CP / Tucker) kernel."""
    torch.manual_seed(nd)
    k = (3, 1, 5, 3)[:nd]
    layer = randomize_(cls(nd, 3, 4, k, rank=5, dtype=F64))
    x = torch.randn(2, 3, *SHAPES[nd], dtype=F64)
    assert torch.allclose(layer(x), full_equivalent(layer)(x), rtol=0, atol=1e-12)


def test_cp_full_weight_is_the_cp_formula():
    """full_weight[o, c, j] == sum_r U_out[o, r] prod_a K_a[r, j_a] U_in[r, c], entry by entry."""
    torch.manual_seed(7)
    layer = randomize_(CPConvNd(3, 2, 3, (3, 1, 5), rank=4, dtype=F64))
    w = layer.full_weight()
    assert w.shape == (3, 2, 3, 1, 5)
    for o, c, j0, j1, j2 in itertools.product(range(3), range(2), range(3), range(1), range(5)):
        expected = sum(
            layer.weight_out[o, r]
            * layer.axis_kernels[0][r, j0]
            * layer.axis_kernels[1][r, j1]
            * layer.axis_kernels[2][r, j2]
            * layer.weight_in[r, c]
            for r in range(4)
        )
        assert torch.allclose(w[o, c, j0, j1, j2], expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_depthwise_conv1d_equals_reference_and_gradcheck(axis, fused):
    """Depthwise periodic 1D conv == roll reference with a diagonal kernel; exact gradients and
    second derivatives, as tensor operations and by the fused CPU kernel (csrc/conv.cpp)."""
    torch.manual_seed(8)
    h = torch.randn(2, 3, 5, 4, 2, dtype=F64, requires_grad=True)
    kernel = torch.randn(3, 5, dtype=F64, requires_grad=True)  # k = 5 wraps around L = 2 and 4
    ks = [1, 1, 1]
    ks[axis] = 5
    w = torch.zeros(3, 3, *ks, dtype=F64)
    for r in range(3):
        w[r, r] = kernel[r].detach().view(ks)

    def conv(a, b):
        return depthwise_periodic_conv1d(a, b, axis, fused)

    assert torch.allclose(conv(h, kernel), roll_conv(h, w), atol=1e-12)
    assert torch.autograd.gradcheck(conv, (h, kernel))
    assert torch.autograd.gradgradcheck(conv, (h, kernel))
    # non-contiguous inputs: the fused operator reads copies, the graph keeps the inputs
    ht = h.detach().transpose(2, 4).contiguous().transpose(2, 4).requires_grad_()
    kt = kernel.detach().t().contiguous().t().requires_grad_()
    assert not ht.is_contiguous() and not kt.is_contiguous()
    assert torch.autograd.gradgradcheck(conv, (ht, kt))


def test_fused_depthwise_conv_refuses_an_empty_axis_and_reads_lazy_negations():
    from hpcflow.kernels import fused_kernels_error

    assert fused_kernels_error() is None
    h, k = torch.randn(2, 3, 4, 5, dtype=F64), torch.randn(3, 3, dtype=F64)
    lazy = torch._neg_view(h)
    assert lazy.is_neg()  # resolved by torch's dispatcher before the operator reads it
    assert torch.equal(torch.ops.hpcflow.depthwise_periodic(lazy, k, 1, False),
                       torch.ops.hpcflow.depthwise_periodic(-h, k, 1, False))
    with pytest.raises(RuntimeError, match="extent along the axis must be > 0"):
        torch.ops.hpcflow.depthwise_periodic(torch.zeros(1, 2, 0, 3, dtype=F64),
                                             torch.ones(2, 1, dtype=F64), 0, False)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fused_depthwise_conv_equals_the_tensor_operations(dtype):
    """The fused kernel against the tensor path at a factorized network's sizes (4D, k = 3,
    every axis; a transposed input): values and both gradients, to rounding (float32: the
    kernel's gradient accumulates in double, so closer)."""
    from hpcflow.kernels import fused_kernels_error

    assert fused_kernels_error() is None
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(4, 8, 4, 3, 5, 4, generator=gen, dtype=dtype).transpose(2, 5)
    kernel = torch.randn(8, 3, generator=gen, dtype=dtype)
    tol = 1e-12 if dtype == F64 else 2e-5
    for axis in range(4):
        out = {}
        for fused in (False, True):
            a, b = h.clone().requires_grad_(), kernel.clone().requires_grad_()
            y = depthwise_periodic_conv1d(a, b, axis, fused)
            cot = torch.randn(y.shape, generator=torch.Generator().manual_seed(axis), dtype=dtype)
            out[fused] = (y, *torch.autograd.grad(y, (a, b), cot))
        for x, z in zip(out[False], out[True], strict=True):
            assert (x - z).abs().max() <= tol * (1 + x.abs().max())


def test_cp_4d_translation_equivariance_and_gradcheck():
    """CP conv commutes with lattice translations; gradients match finite differences."""
    torch.manual_seed(9)
    layer = randomize_(CPConvNd(4, 2, 2, 3, rank=3, dtype=F64))
    x = torch.randn(1, 2, 3, 4, 3, 2, dtype=F64, requires_grad=True)
    shifts, dims = (1, -2, 2, 1), (2, 3, 4, 5)
    assert torch.allclose(layer(torch.roll(x, shifts, dims)), torch.roll(layer(x), shifts, dims))
    assert torch.autograd.gradcheck(layer, (x,))


def test_cp_parameter_count():
    """CP stores C_in R + R sum(k) + R C_out (+ C_out bias) numbers, not C_in C_out prod(k)."""
    layer = CPConvNd(4, 16, 16, 3, rank=8)
    assert sum(p.numel() for p in layer.parameters()) == 16 * 8 + 8 * 4 * 3 + 8 * 16 + 16


@pytest.mark.parametrize("cls", [CPConvNd, TuckerConvNd])
def test_init_scale_matches_full_conv(cls):
    """The reconstructed kernel starts at the full layer's scale: Var = 1/(3 C_in prod k)."""
    torch.manual_seed(10)
    layer = cls(3, 32, 32, 3, rank=64, dtype=F64)
    var = layer.full_weight().var().item()
    assert 0.5 < var * 3 * 32 * 27 < 2


@pytest.mark.parametrize("cls", [CPConvNd, TuckerConvNd])
@pytest.mark.parametrize("rank", [0, (4,), 2.5])
def test_invalid_rank_raises(cls, rank):
    """A rank that is not a positive integer is refused with a message naming rank."""
    with pytest.raises(ValueError, match="rank"):
        cls(4, 2, 2, 3, rank=rank)


@pytest.mark.parametrize("kind", ["full", "full-folded", "cp", "tucker"])
@pytest.mark.parametrize("nd", [2, 3, 4])
def test_output_at_sites_equals_full_output(kind, nd):
    """``forward_at`` (the coupling layers read their context network's last layer at the
    active links' sites only) equals the full output at those sites, site-major, in values and
    in the gradients of the input and of every parameter; any set of sites, any order, an
    asymmetric kernel."""
    from hpcflow.nn.conv import ConvNd

    lattice = (4, 3, 5, 4)[:nd]
    kernel = (3, 1, 5, 3)[:nd]
    torch.manual_seed(nd)
    if kind == "cp":
        layer = CPConvNd(nd, 3, 5, kernel, rank=4, dtype=torch.float64)
    elif kind == "tucker":
        layer = TuckerConvNd(nd, 3, 5, kernel, rank=(4, 2), dtype=torch.float64)
    else:
        layer = ConvNd(nd, 3, 5, kernel, fold=kind == "full-folded", dtype=torch.float64,
                       lattice=lattice)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    volume = math.prod(lattice)
    sites = torch.randperm(volume)[: volume // 3 + 1]
    x = torch.randn(2, 3, *lattice, dtype=torch.float64, requires_grad=True)
    full = layer(x).reshape(2, 5, volume)[:, :, sites].transpose(1, 2)
    at = layer.forward_at(x, layer.site_index(lattice, sites))
    assert at.shape == (2, len(sites), 5)
    torch.testing.assert_close(at, full, rtol=0, atol=1e-12)
    w = torch.randn_like(at)
    inputs = (x, *layer.parameters())
    for u, v in zip(torch.autograd.grad((at * w).sum(), inputs),
                    torch.autograd.grad((full * w).sum(), inputs), strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-11)


def test_output_at_sites_keeps_no_stencil_copy_and_handles_no_site():
    """The stencil product keeps only the input for its backward (the gathered stencils are
    ``K S / V`` times larger: 13.5x for a 3D kernel at half the sites), double backward works,
    and an empty site list gives an empty output."""
    from hpcflow.nn.conv import ConvNd

    lattice = (4, 4, 4)
    layer = ConvNd(3, 3, 5, 3, dtype=torch.float64, lattice=lattice)
    sites = torch.arange(0, 64, 2)
    index = layer.site_index(lattice, sites)
    x = torch.randn(8, 3, *lattice, dtype=torch.float64, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(
            lambda t: saved.append(t.numel() if t.is_floating_point() else 0) or t, lambda t: t):
        out = layer.forward_at(torch.tanh(x), index)
    assert max(saved) == x.numel()  # the input (a view of it), never [8, 32 * 27, 3]
    torch.autograd.gradcheck(lambda t: layer.forward_at(t, index), (x,))
    torch.autograd.gradgradcheck(lambda t: layer.forward_at(t, index), (x,))
    assert out.shape == (8, 32, 5)
    empty = layer.forward_at(x, layer.site_index(lattice, torch.zeros(0, dtype=torch.long)))
    assert empty.shape == (8, 0, 5)


@pytest.mark.parametrize("conv", ["full", "cp", "tucker"])
def test_head_forms_no_weight_gradient_when_only_the_input_is_asked(conv, monkeypatch):
    """A backward that asks for the input's gradient only (``torch.autograd.grad(out, x)``:
    the path gradient's reused contexts) forms no weight gradient in the head's product: the
    full convolution does not gather its stencils again (the weight gradient's only use of
    them); the input gradient is the same as that of a full backward."""
    from hpcflow.nn import conv as conv_module

    torch.manual_seed(0)
    layer = {"full": lambda: ConvNd(2, 4, 5, 3, dtype=torch.float64, lattice=(6, 6)),
             "cp": lambda: CPConvNd(2, 4, 5, 3, rank=3, dtype=torch.float64),
             "tucker": lambda: TuckerConvNd(2, 4, 5, 3, rank=(3, 2), dtype=torch.float64)}[conv]()
    randomize_(layer)
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    sites = torch.tensor([0, 5, 17, 35])
    index = layer.site_index((6, 6), sites)
    calls = []
    rows = conv_module._rows
    monkeypatch.setattr(conv_module, "_rows", lambda *a: calls.append(1) or rows(*a))
    out = layer.forward_at(x, index)
    g = torch.randn_like(out)
    n_forward = len(calls)
    (only_x,) = torch.autograd.grad(out, x, g, retain_graph=True)
    assert len(calls) == n_forward  # nothing gathered for a weight gradient
    out.backward(g)
    assert all(p.grad is not None for p in layer.parameters())
    assert len(calls) > n_forward  # a full backward forms the weight gradient
    torch.testing.assert_close(only_x, x.grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("budget", [1, 50_000, 1 << 40])
def test_output_at_sites_in_blocks_of_samples_equals_one_product(budget, monkeypatch):
    """On a CPU the stencil product runs a few samples at a time (the gathered rows of a
    block within ``_ROW_BLOCK_BYTES``): values, the input's and the weights' gradients,
    an input-only backward, second derivatives and batched gradients (vmap) equal those of
    one product over the whole batch; the blocks cover the batch in order."""
    from hpcflow.nn import conv as conv_module

    torch.manual_seed(1)
    lattice = (4, 4, 4)
    layer = randomize_(ConvNd(3, 3, 5, 3, dtype=F64, lattice=lattice))
    index = layer.site_index(lattice, torch.arange(1, 64, 2))
    x = torch.randn(7, 3, *lattice, dtype=F64, requires_grad=True)

    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the budget is per thread

    def run(block_bytes):
        monkeypatch.setattr(conv_module, "_ROW_BLOCK_BYTES", block_bytes)
        out = layer.forward_at(x, index)
        g = torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)
        (only_x,) = torch.autograd.grad(out, x, g, retain_graph=True)
        grads = torch.autograd.grad(out, (x, *layer.parameters()), g)
        rows = conv_module._row_blocks(x.movedim(1, -1).reshape(7, 64, 3), index)
        return out.detach(), only_x, grads, rows

    ref_out, ref_x, ref_grads, ref_rows = run(1 << 60)
    out, only_x, grads, rows = run(budget)
    assert ref_rows == [(0, 7)]
    assert rows[0][0] == 0 and rows[-1][1] == 7
    assert all(a[1] == b[0] for a, b in itertools.pairwise(rows))
    row_bytes = index.numel() * 3 * 8
    assert all((e - s) * row_bytes <= budget or e - s == 1 for s, e in rows)
    assert len(rows) == {1: 7, 50_000: 4, 1 << 40: 1}[budget]
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-13)
    torch.testing.assert_close(only_x, ref_x, rtol=0, atol=1e-13)
    for a, b in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    small = x[:3].detach().requires_grad_()
    torch.autograd.gradcheck(lambda t: layer.forward_at(t, index), (small,))
    torch.autograd.gradgradcheck(lambda t: layer.forward_at(t, index), (small,))
    out = layer.forward_at(small, index)
    basis = torch.eye(out.numel(), dtype=F64)[:5].view(5, *out.shape)
    (batched,) = torch.autograd.grad(out, small, basis, is_grads_batched=True, retain_graph=True)
    for i in range(5):
        (one,) = torch.autograd.grad(out, small, basis[i], retain_graph=True)
        torch.testing.assert_close(batched[i], one, rtol=0, atol=1e-13)
    empty = x[:0].detach().requires_grad_()  # batch 0: gradients of the right shapes
    out = layer.forward_at(empty, index)
    assert out.shape == (0, 32, 5)
    grads = torch.autograd.grad(out.sum(), (empty, layer.weight))
    assert grads[0].shape == empty.shape and not grads[1].any()
