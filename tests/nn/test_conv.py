"""ConvNd: periodic "same" convolutions for any Nd; 4D (and 5D) from one folded lower-D conv."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hpcflow.nn.conv import ConvNd, circular_pad, periodic_conv
from tests.nn.reference import roll_conv

F64 = torch.float64


def random_layer(nd, c_in, c_out, k, **kwargs):
    """A layer with a random, non-constant float64 kernel and bias."""
    layer = ConvNd(nd, c_in, c_out, k, dtype=F64, **kwargs)
    with torch.no_grad():
        layer.weight.copy_(torch.randn_like(layer.weight))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn_like(layer.bias))
    return layer


@pytest.mark.parametrize("k", [1, 3, 5, (3, 1, 5, 3)])
@pytest.mark.parametrize("c_in, c_out", [(1, 1), (3, 2), (2, 5)])
def test_4d_equals_roll_reference(k, c_in, c_out):
    """4D folded conv == sum over all kernel offsets of rolled inputs, to 1e-12 (unequal L)."""
    torch.manual_seed(0)
    layer = random_layer(4, c_in, c_out, k)
    x = torch.randn(2, c_in, 6, 5, 4, 7, dtype=F64)
    ref = roll_conv(x, layer.weight, layer.bias)
    assert torch.allclose(layer(x), ref, rtol=0, atol=1e-12)


def test_5d_equals_roll_reference():
    """The folding recurses: 5D = one 4D conv = one 3D conv, still exact."""
    torch.manual_seed(1)
    layer = random_layer(5, 2, 3, 3)
    x = torch.randn(1, 2, 3, 4, 3, 2, 3, dtype=F64)
    assert torch.allclose(layer(x), roll_conv(x, layer.weight, layer.bias), rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_folded_3d_equals_torch_conv3d_circular(k):
    """The same construction one dimension lower (2D conv + shifts) == nn.Conv3d(circular)."""
    torch.manual_seed(2)
    layer = random_layer(3, 3, 4, k, fold=True)
    ref = nn.Conv3d(3, 4, k, padding=k // 2, padding_mode="circular", dtype=F64)
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
    x = torch.randn(2, 3, 6, 5, 7, dtype=F64)
    assert torch.allclose(layer(x), ref(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("nd, torch_conv", [(2, nn.Conv2d), (3, nn.Conv3d)])
@pytest.mark.parametrize("fold", [False, True])
def test_native_and_folded_equal_torch_circular(nd, torch_conv, fold):
    """ConvNd(Nd=2, 3) == torch.nn.ConvNd(padding_mode='circular'), natively and folded."""
    torch.manual_seed(3)
    layer = random_layer(nd, 2, 3, 3, fold=fold)
    ref = torch_conv(2, 3, 3, padding=1, padding_mode="circular", dtype=F64)
    with torch.no_grad():
        ref.weight.copy_(layer.weight)
        ref.bias.copy_(layer.bias)
    x = torch.randn(2, 2, *(5, 4, 3)[:nd], dtype=F64)
    assert torch.allclose(layer(x), ref(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_translation_equivariance(nd):
    """conv(roll(x)) == roll(conv(x)) for any lattice translation (periodic boundaries)."""
    torch.manual_seed(4)
    layer = random_layer(nd, 2, 3, 3)
    x = torch.randn(2, 2, *(5, 4, 3, 6)[:nd], dtype=F64)
    shifts, dims = (2, -1, 1, 4)[:nd], tuple(range(2, 2 + nd))
    lhs = layer(torch.roll(x, shifts, dims))
    rhs = torch.roll(layer(x), shifts, dims)
    assert torch.allclose(lhs, rhs, rtol=0, atol=1e-12)


def test_4d_gradcheck():
    """Custom backward passes (shift-sum, circular pad) agree with finite differences."""
    torch.manual_seed(5)
    x = torch.randn(1, 2, 3, 2, 3, 2, dtype=F64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, 1, 3, dtype=F64, requires_grad=True)
    b = torch.randn(2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(periodic_conv, (x, w, b))
    assert torch.autograd.gradgradcheck(periodic_conv, (x, w, b))


def test_circular_pad_equals_torch_and_gradcheck():
    """circular_pad == F.pad(mode='circular'); its folded-halo backward is exact."""
    torch.manual_seed(6)
    x = torch.randn(2, 3, 5, 4, 6, dtype=F64, requires_grad=True)
    ref = F.pad(x, (1, 1, 0, 0, 2, 2), mode="circular")
    assert torch.equal(circular_pad(x, (2, 0, 1)), ref)
    assert torch.autograd.gradcheck(lambda t: circular_pad(t, (2, 1, 1)), (x,))
    y = torch.randn(1, 2, 3, 2, 4, 3, dtype=F64, requires_grad=True)  # 4 padded axes
    assert torch.autograd.gradcheck(lambda t: circular_pad(t, (1, 0, 2, 1)), (y,))


def test_circular_pad_keeps_channels_last():
    """A channels-last input is padded (and its gradient returned) in channels-last memory."""
    x = torch.randn(2, 3, 5, 4, 6).contiguous(memory_format=torch.channels_last_3d)
    x.requires_grad_()
    xp = circular_pad(x, (1, 2, 1))
    assert xp.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(xp, F.pad(x, (1, 1, 2, 2, 1, 1), mode="circular"))
    xp.backward(torch.ones_like(xp))
    assert x.grad.is_contiguous(memory_format=torch.channels_last_3d)


def test_weight_layout_and_init_fan_in():
    """weight is [C_out, C_in, k0, k1, k2, k3]; init bound 1/sqrt(C_in * k^4) (full 4D fan-in)."""
    layer = ConvNd(4, 6, 5, 3)
    assert layer.weight.shape == (5, 6, 3, 3, 3, 3)
    bound = 1 / (6 * 81) ** 0.5
    assert layer.weight.abs().max() <= bound
    assert layer.weight.abs().max() > 0.9 * bound  # uniform fills the interval


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"kernel_size": 2}, "kernel_size"),
        ({"kernel_size": (3, 3, 4, 3)}, "kernel_size"),
        ({"kernel_size": (3, 3)}, "kernel_size"),
        ({"in_channels": 0}, "in_channels"),
        ({"nd": 0}, "nd"),
    ],
)
def test_invalid_arguments_raise(kwargs, name):
    """Bad configuration fails at construction with a message naming the argument."""
    args = {"nd": 4, "in_channels": 2, "out_channels": 2, "kernel_size": 3} | kwargs
    with pytest.raises(ValueError, match=name):
        ConvNd(**args)


def test_bad_input_raises():
    """Wrong rank/channels, or a kernel that wraps around the lattice twice, are refused."""
    layer = ConvNd(4, 2, 2, 5)
    with pytest.raises(ValueError, match="expects input"):
        layer(torch.randn(1, 3, 4, 4, 4, 4))
    with pytest.raises(ValueError, match="wraps"):
        layer(torch.randn(1, 2, 4, 4, 1, 4))


@pytest.mark.parametrize("nd, fold", [(1, False), (2, False), (3, False), (3, True), (4, False)])
def test_gather_padding_equals_copy_padding(nd, fold):
    """A convolution that knows its lattice pads by one gather from a table (issue 19: one
    operation instead of 2 Nd + 1 copies); values and gradients equal the copying pad, for
    contiguous and channels-last inputs (the folded 4D convolution pads channels-last)."""
    from hpcflow.nn.conv import circular_pad, gather_pad, pad_table

    lattice = (5, 4, 3, 4)[:nd]
    torch.manual_seed(nd)
    known = ConvNd(nd, 3, 4, 3, fold=fold, dtype=torch.float64, lattice=lattice)
    plain = ConvNd(nd, 3, 4, 3, fold=fold, dtype=torch.float64)
    plain.load_state_dict(known.state_dict())
    x = torch.randn(2, 3, *lattice, dtype=torch.float64, requires_grad=True)
    a, b = known(x), plain(x)
    assert known.pad_index is not None
    torch.testing.assert_close(a, b, rtol=0, atol=1e-13)
    ga = torch.autograd.grad(a.square().sum(), (x, known.weight))
    gb = torch.autograd.grad(b.square().sum(), (x, plain.weight))
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)
    pads = (1,) * nd
    for t in (x, x.movedim(1, -1).contiguous().movedim(-1, 1)):
        assert torch.equal(gather_pad(t, pad_table(lattice, pads), pads), circular_pad(t, pads))
    other = torch.randn(1, 3, *(n + 1 for n in lattice), dtype=torch.float64)
    torch.testing.assert_close(known(other), plain(other), rtol=0, atol=1e-13)  # other sizes


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_split_backward_convolution_is_exact(nd):
    """The CPU float32 convolution's own node (channels-last, weight gradient alone, input
    gradient as the mirrored periodic convolution) against the padded native convolution:
    gradcheck and gradgradcheck in float64 through the node itself, and in float32 ConvNd's
    values and gradients against torch.nn.ConvNd(padding_mode='circular')."""
    from hpcflow.nn.conv import _PeriodicConv, pad_table

    lattice = (4, 3, 5)[:nd]
    torch.manual_seed(10 + nd)
    index, pads = pad_table(lattice, (1,) * nd), (1,) * nd
    x = torch.randn(2, 3, *lattice, dtype=F64, requires_grad=True)
    w = torch.randn(2, 3, *(3,) * nd, dtype=F64, requires_grad=True)
    b = torch.randn(2, dtype=F64, requires_grad=True)

    def node(x, w, b):
        return _PeriodicConv.apply(x, w, b, index, pads)

    torch.testing.assert_close(node(x, w, b), periodic_conv(x, w, b), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(node, (x, w, b))
    assert torch.autograd.gradgradcheck(node, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: node(x, w, None), (x, w))  # no bias

    layer = ConvNd(nd, 3, 4, 3, lattice=lattice)  # float32, CPU: through the node
    ref = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[nd - 1](3, 4, 3, padding=1,
                                                    padding_mode="circular")
    ref.load_state_dict(layer.state_dict())
    x32 = torch.randn(5, 3, *lattice, requires_grad=True)
    out, expected = layer(x32), ref(x32)
    assert out.grad_fn.name() == "_PeriodicConvBackward"
    # one sample: torch's own contiguous-memory kernel, through the native node
    assert layer(x32[:1]).grad_fn.name() != "_PeriodicConvBackward"
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (x32, layer.weight, layer.bias))
    refs = torch.autograd.grad(expected.square().sum(), (x32, ref.weight, ref.bias))
    for u, v in zip(grads, refs, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-4)


def test_split_backward_forms_only_the_gradients_asked_for():
    """The path gradient's reused contexts ask for the input gradient alone: then no weight
    gradient is formed (no ``convolution_backward``), and the input gradient is one
    convolution; asked for the weight alone, no second convolution runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Calls(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    layer = ConvNd(3, 3, 4, 3, lattice=(4, 4, 4))
    x = torch.randn(2, 3, 4, 4, 4, requires_grad=True)
    for wanted, backward_ops in (((x,), {"aten.convolution": 1}),
                                 ((layer.weight,), {"aten.convolution_backward": 1})):
        out = layer(x).square().sum()
        with Calls() as calls:
            torch.autograd.grad(out, wanted)
        found = {n: calls.names.count(n) for n in ("aten.convolution", "aten.convolution_backward")}
        assert found == {"aten.convolution": 0, "aten.convolution_backward": 0, **backward_ops}


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_split_backward_bias_alone_and_batched_gradients(nd, monkeypatch):
    """Review: the node's gradient of the bias alone (1D: torch's weight gradient came back,
    of the wrong rank, though not asked for) and batched gradients (``is_grads_batched``, as
    ``torch.autograd.functional.jacobian(vectorize=True)``) equal those of torch's node."""
    import hpcflow.nn.conv as conv

    lattice = (4, 6, 3)[:nd]
    torch.manual_seed(20 + nd)
    layer = ConvNd(nd, 3, 4, 3, lattice=lattice)
    x = torch.randn(2, 3, *lattice, requires_grad=True)
    vectors = torch.randn(5, 2, 4, *lattice)

    def gradients():
        out = layer(x)
        assert (out.grad_fn.name() == "_PeriodicConvBackward") == conv._split_backward(x)
        (g_bias,) = torch.autograd.grad(out.square().sum(), layer.bias)
        batched = torch.autograd.grad(layer(x), (x, layer.weight), vectors,
                                      is_grads_batched=True)
        return g_bias, *batched

    results = [gradients()]
    monkeypatch.setattr(conv, "_split_backward", lambda x: False)  # torch's node
    results.append(gradients())
    for u, v in zip(*results, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
