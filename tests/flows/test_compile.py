"""The compiled path (issue 19): `GaugeFlow.compile_layers` equals the eager flow.

Compiled on this machine's CPU backend (inductor, C++): forward, inverse and the gradients of
a training loss agree with eager to rounding in float64, and every layer compiles to one graph
per direction without graph breaks (`fullgraph=True` raises on a break, so a host
synchronization inside a layer would fail here).
"""

import subprocess
import sys
from pathlib import Path

import torch

from hpcflow import build_action, build_model, load_config
from tests.helpers import TINY_U1, perturb


def test_compiled_layers_equal_eager():
    """With two threads: torch 2.13's multi-threaded generated backward crashed these layers
    (a segmentation fault), which `compile_maps` avoids by generating single-threaded loops."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _compare_compiled_with_eager()
    finally:
        torch.set_num_threads(threads)


def _eager_and_compiled(cfg):
    """The flow of ``cfg`` with perturbed parameters, eager and with compiled layers."""
    torch.manual_seed(0)
    eager = build_model(cfg)
    perturb(eager, 0.05)
    compiled = build_model(cfg)
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_layers()
    return eager, compiled


def _compare_compiled_with_eager():
    cfg = load_config(None, TINY_U1)
    eager, compiled = _eager_and_compiled(cfg)
    action = build_action(cfg)
    z = eager.prior(range(3), seed=1, stream=1)

    def run(model):
        u, logdet = model(z)
        back, logdet_inv = model.inverse(u.detach())
        loss = (action(u) - logdet).mean() + logdet_inv.square().mean()
        grads = torch.autograd.grad(loss, list(model.parameters()))
        return u, logdet, back, logdet_inv, grads

    a, b = run(eager), run(compiled)
    for x, y in zip(a[:4], b[:4], strict=True):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-10)
    for x, y in zip(a[4], b[4], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(b[2], z, rtol=0, atol=1e-10)  # and it still inverts
    # compiled layers keep no intermediates: the path gradient's inverse runs the networks
    assert compiled.forward_keeping_contexts(z)[2] is None


def test_config_key_compiles_the_layers():
    """``distributed.compile: true`` builds the flow with compiled layer maps; off by default."""
    assert all(not layer.is_compiled for layer in build_model(load_config(None, TINY_U1)).layers)
    model = build_model(load_config(None, TINY_U1 + ["distributed.compile=true"]))
    assert all(layer.is_compiled for layer in model.layers)


def test_compiled_float32_u1_layers_equal_eager():
    """A float32 U(1) flow on a small lattice reads its loops by matrix products, chosen by the
    float32 matmul precision: that choice is a constant of the compiled graph (asking torch for
    the precision inside the graph stopped dynamo; `configs/u1_2d.yaml` with
    `distributed.compile: true` failed at its first step)."""
    eager, compiled = _eager_and_compiled(load_config(None, [*TINY_U1, "model.dtype=float32"]))
    z = eager.prior(range(3), seed=1, stream=1)
    assert all(layer._reader(z.flatten(1)) == "matrix" for layer in eager.layers)
    (u0, l0), (u1, l1) = eager(z), compiled(z)
    torch.testing.assert_close(u1, u0, rtol=0, atol=1e-5)
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-4)


def test_exact_float32_products_reads_the_newer_precision_settings():
    """Once the matmul precision is set through torch's per-backend settings, the legacy query
    raises; the loop reader's choice then follows the CPU (oneDNN) setting. In a subprocess:
    the settings are global to a process."""
    code = ("import torch\n"
            "from hpcflow.flows.coupling import _exact_float32_products as exact\n"
            "torch.backends.mkldnn.matmul.fp32_precision = 'bf16'\n"
            "a = exact()\n"
            "torch.backends.mkldnn.matmul.fp32_precision = 'ieee'\n"
            "print(a, exact())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.split() == ["False", "True"]
