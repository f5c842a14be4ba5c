"""Context networks built from periodic convolutions."""

import pytest
import torch

from hpcflow.nn import build_context_net
from hpcflow.nn.context import ACTIVATIONS

SHAPES = {2: (4, 5), 3: (4, 3, 5), 4: (3, 4, 2, 5)}


@pytest.mark.parametrize("nd", [2, 3, 4])
@pytest.mark.parametrize("conv", ["full", "factorized", "tucker"])
def test_output_shape_and_zero_at_init(nd, conv):
    """[B, C_in, *L] -> [B, C_out, *L]; the output is exactly zero at init (flow = identity)."""
    torch.manual_seed(0)
    net = build_context_net(nd, 3, 5, hidden=(4, 6), conv=conv, rank=3)
    y = net(torch.randn(2, 3, *SHAPES[nd]))
    assert y.shape == (2, 5, *SHAPES[nd])
    assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("conv", ["full", "factorized"])
def test_dtype_and_device(dtype, conv):
    """Parameters and output follow the requested dtype and device."""
    net = build_context_net(4, 2, 3, hidden=(4,), conv=conv, dtype=dtype, device="cpu")
    assert all(p.dtype == dtype and p.device.type == "cpu" for p in net.parameters())
    assert net(torch.randn(1, 2, 3, 3, 3, 3, dtype=dtype)).dtype == dtype


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_runs_on_cuda():
    """Same network on a GPU gives the CPU result."""
    torch.manual_seed(1)
    net = build_context_net(4, 2, 3, hidden=(4,), dtype=torch.float64)
    with torch.no_grad():
        net[-1].weight.normal_()
    x = torch.randn(2, 2, 4, 3, 4, 5, dtype=torch.float64)
    y_gpu = net.to("cuda")(x.to("cuda")).cpu()
    assert torch.allclose(net.to("cpu")(x), y_gpu, atol=1e-10)


@pytest.mark.parametrize("conv", ["full", "factorized", "tucker"])
def test_gradient_flows(conv):
    """At init only the last layer gets a gradient; after one step every layer does."""
    torch.manual_seed(2)
    net = build_context_net(3, 2, 2, hidden=(4, 4), conv=conv, activation="tanh", rank=2)
    x = torch.randn(2, 2, 4, 3, 5)
    target = torch.randn(2, 2, 4, 3, 5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):
        opt.zero_grad()
        ((net(x) - target) ** 2).mean().backward()
        opt.step()
    opt.zero_grad()
    ((net(x) - target) ** 2).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_activations(activation):
    """Every named activation builds and runs."""
    net = build_context_net(2, 1, 1, hidden=(3,), activation=activation)
    assert net(torch.randn(1, 1, 4, 4)).shape == (1, 1, 4, 4)


def test_no_hidden_layers():
    """hidden=() is a single convolution in -> out, zero at init."""
    net = build_context_net(4, 2, 3, hidden=())
    assert len(net) == 1 and torch.count_nonzero(net(torch.randn(1, 2, 3, 3, 3, 3))) == 0


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"nd": 0}, "nd"),
        ({"in_channels": -1}, "in_channels"),
        ({"out_channels": 2.0}, "out_channels"),
        ({"hidden": 8}, "hidden"),
        ({"hidden": (8, 0)}, "hidden"),
        ({"kernel_size": 4}, "kernel_size"),
        ({"activation": "swish"}, "activation"),
        ({"conv": "separable"}, "conv"),
        ({"conv": "factorized", "rank": 0}, "rank"),
        ({"conv": "tucker", "rank": (2, 3, 4)}, "rank"),
        ({"dtype": torch.int32}, "dtype"),
    ],
)
def test_invalid_arguments_raise(kwargs, name):
    """Bad arguments fail with a ValueError that names the argument."""
    args = {"nd": 4, "in_channels": 2, "out_channels": 2} | kwargs
    with pytest.raises(ValueError, match=name):
        build_context_net(**args)
