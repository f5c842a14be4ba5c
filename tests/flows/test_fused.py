"""The fused C++ spline kernel (hpcflow/kernels/csrc/rqs.cpp) against the splines' tensor
operations, and its selection by ``distributed.splines``.

The kernel is built by torch's extension loader the first time a test asks for it (~15 s, then
cached). It must build wherever the suite runs (a C++ compiler is part of the install, see
README.md): a failure here is a failure, not a skip.
"""

import math
import os
import time
import warnings

import pytest
import torch
from torch.utils import cpp_extension

from hpcflow import load_config
from hpcflow.app import build as build_module
from hpcflow.errors import ConfigError
from hpcflow.flows.splines import circular_rqs, interval_rqs
from hpcflow.kernels import (
    STALE_LOCK_S,
    _reason,
    _remove_stale_lock,
    build_folder,
    fused_kernels_error,
    library_name,
)
from tests.helpers import flows_by_mode

F64 = torch.float64
TWO_PI = 2.0 * math.pi


def test_the_kernel_builds_and_loads():
    assert fused_kernels_error() is None
    assert hasattr(torch.ops.hpcflow, "rqs_forward")


def _case(circular: bool, n: int, k: int, dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    params = 2.0 * torch.randn(n, 3 * k + 1, generator=gen, dtype=dtype)
    if circular:
        special = torch.tensor([0.0, -0.0, 1e-15, -1e-15, TWO_PI, TWO_PI - 1e-12, -7.0, 1e3],
                               dtype=dtype)
        x = torch.cat([special, 3 * TWO_PI * torch.rand(n - 8, generator=gen, dtype=dtype) - 5])
        return x, params, {}
    lower, upper = 0.0, math.pi
    special = torch.tensor([lower, upper, 1e-15, upper - 1e-15, -1e-12, upper + 1e-12],
                           dtype=dtype)
    x = torch.cat([special, upper * torch.rand(n - 6, generator=gen, dtype=dtype)])
    return x, params, {"lower": lower, "upper": upper}


def _run(circular, x, params, kw, *, inverse, fused, cotangents):
    x = x.clone().requires_grad_(True)
    params = params.clone().requires_grad_(True)
    fn = circular_rqs if circular else interval_rqs
    out, logdet = fn(x, params, inverse=inverse, fused=fused, **kw)
    g_x, g_p = torch.autograd.grad((out, logdet), (x, params), cotangents)
    return out.detach(), logdet.detach(), g_x, g_p


def _circle(a, b):
    return (torch.remainder(a - b + math.pi, TWO_PI) - math.pi).abs()


@pytest.mark.parametrize("k", [1, 3, 8, 17])
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("circular", [True, False])
def test_fused_kernel_equals_the_tensor_operations_in_float64(circular, inverse, k):
    """Outputs, log-derivatives and the gradients of both with respect to the input and every
    parameter (random cotangents), special points included (0, -0, 2 pi, windings, the
    interval's ends and round-off outside it), equal the `_RQS` path to rounding: 1e-9
    relative (random parameters reach slopes of ~1e-7, so gradients of the inverse of ~1e7 that
    amplify the rounding of either evaluation order)."""
    x, params, kw = _case(circular, 500, k, F64, seed=10 + k)
    gen = torch.Generator().manual_seed(k)
    cot = (torch.randn(500, generator=gen, dtype=F64), torch.randn(500, generator=gen, dtype=F64))
    ref = _run(circular, x, params, kw, inverse=inverse, fused=False, cotangents=cot)
    got = _run(circular, x, params, kw, inverse=inverse, fused=True, cotangents=cot)
    out_err = _circle(got[0], ref[0]) if circular else (got[0] - ref[0]).abs()
    assert out_err.max() < 1e-12
    for a, b in zip(got[1:], ref[1:], strict=True):
        assert torch.isfinite(a).all()
        assert ((a - b).abs() / (1.0 + b.abs())).max() < 1e-9


@pytest.mark.parametrize("circular", [True, False])
def test_fused_kernel_in_float32_is_as_accurate_as_the_tensor_operations(circular):
    """float32: outputs and log-derivatives as close to the float64 map as those of the tensor
    operations in float32 (random parameters with slopes down to ~1e-7 make some elements
    ill-conditioned in float32 either way)."""
    x, params, kw = _case(circular, 2000, 8, F64, seed=3)
    fn = circular_rqs if circular else interval_rqs

    def errors(fused, inverse):
        out64, ld64 = fn(x, params, inverse=inverse, **kw)
        out32, ld32 = fn(x.float(), params.float(), inverse=inverse, fused=fused, **kw)
        assert out32.dtype == ld32.dtype == torch.float32
        err = _circle(out32.double(), out64) if circular else (out32.double() - out64).abs()
        return err.max().item(), (ld32.double() - ld64).abs().max().item()

    for inverse in (False, True):
        (out_f, ld_f), (out_t, ld_t) = errors(True, inverse), errors(False, inverse)
        assert out_f <= 2 * out_t + 1e-6 and out_f < 1e-4
        assert ld_f <= 2 * ld_t + 1e-5


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("circular", [True, False])
def test_fused_backward_passes_gradcheck(circular, inverse):
    """Full gradcheck (finite differences) of both outputs in the input and every parameter,
    with unequal minimal widths and heights."""
    k = 4
    gen = torch.Generator().manual_seed(5)
    p = (2.0 * torch.randn(7, 3 * k + 1, generator=gen, dtype=F64)).requires_grad_(True)
    if circular:
        x = torch.tensor([0.1, 0.9, 1.7, 2.9, 3.6, 4.8, 6.1], dtype=F64, requires_grad=True)

        def f(xx, q):
            out, logdet = circular_rqs(xx, q, inverse=inverse, min_width=2e-3, min_height=1e-2,
                                       fused=True)
            return torch.cos(out), torch.sin(out), logdet
    else:
        x = torch.tensor([0.05, 0.3, 0.9, 1.2, 2.2, 2.8, 3.0], dtype=F64, requires_grad=True)

        def f(xx, q):
            return interval_rqs(xx, q, lower=0.0, upper=math.pi, inverse=inverse,
                                min_width=2e-3, min_height=1e-2, fused=True)

    assert torch.autograd.gradcheck(f, (x, p), eps=1e-6, atol=1e-6)


def test_fused_kernel_broadcasts_handles_empty_one_output_strided_cotangents_not_second_order():
    k = 4
    gen = torch.Generator().manual_seed(8)
    p = torch.randn(3 * k + 1, generator=gen, dtype=F64)
    theta = TWO_PI * torch.rand(3, 4, generator=gen, dtype=F64)
    a, la = circular_rqs(theta, p, fused=True)
    b, lb = circular_rqs(theta, p)
    assert a.shape == (3, 4) and torch.allclose(a, b, atol=1e-12) and torch.allclose(la, lb)
    empty, _ = circular_rqs(theta.flatten()[:0], p.expand(0, 3 * k + 1), fused=True)
    assert empty.shape == (0,)
    # only one output used: the other's cotangent is None in the backward
    x = theta.clone().requires_grad_(True)
    q = p.expand(3, 4, -1).clone().requires_grad_(True)
    (g_only_ld,) = torch.autograd.grad(circular_rqs(x, q, fused=True)[1].sum(), q)
    (g_ref,) = torch.autograd.grad(circular_rqs(x, q)[1].sum(), q)
    assert torch.allclose(g_only_ld, g_ref, atol=1e-10)
    # cotangents read in place (broadcast along the last axis: the backward of a sum over it)
    # and copied (transposed)
    w = torch.randn(4, 3, generator=gen, dtype=F64)
    for fused_ in (True, False):
        out, logdet = circular_rqs(x, q, fused=fused_)
        loss = (torch.cos(out).t() * w).sum() + (logdet.sum(-1) ** 2).sum()
        grads = torch.autograd.grad(loss, (x, q))
        if fused_:
            got = grads
    for a, b in zip(got, grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    _, logdet = circular_rqs(x, q, fused=True)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.autograd.grad(logdet.sum(), q, create_graph=True)


@pytest.mark.parametrize("group, shape", [("U1", [4, 4]), ("U1", [4, 4, 4]), ("SU2", [4, 4]),
                                          ("SU3", [4, 4])])
def test_a_flow_with_fused_splines_equals_one_with_tensor_operations(group, shape):
    """The whole flow (float64): samples, log q and the gradient of every parameter agree to
    1e-10 with the fused kernel and without it (U(1) circular splines; SU(N) interval splines
    in the spectral maps). Random networks of a moderate scale: a wilder flow (log-derivatives
    of ~100 per layer) amplifies the per-layer agreement of ~1e-15 exponentially."""
    over = [f"lattice.group={group}", f"lattice.shape={shape}", "action.beta=1.0",
            "model.dtype=float64", "model.net.hidden=[4]"]
    flows = flows_by_mode(over, "distributed.splines")
    z = flows["torch"].prior(range(3), seed=1, stream=0, step=0)
    results = {}
    for mode, flow in flows.items():
        u, logdet = flow(z)
        grads = torch.autograd.grad(logdet.sum() + u.real.sum(), list(flow.parameters()))
        results[mode] = (u.detach(), logdet.detach(), grads)
    (u0, l0, g0), (u1, l1, g1) = results["torch"], results["fused"]
    assert (l0 - l0.mean()).abs().max() > 1e-3  # a non-trivial flow
    assert (u0 - u1).abs().max() < 1e-10
    assert (l0 - l1).abs().max() < 1e-10
    for a, b in zip(g0, g1, strict=True):
        assert ((a - b).abs() / (1.0 + b.abs())).max() < 1e-9
    assert flows["fused"].link_transform.fused and not flows["torch"].link_transform.fused


def test_splines_key_resolves_and_explains_a_failed_build(monkeypatch):
    """``fused`` where the kernel cannot be built: one ConfigError naming the key and the
    reason; ``auto``: the flow asks for the kernel, and its first spline on a CPU tensor falls
    back to the tensor operations with one warning saying why; ``torch``: never tries."""
    from hpcflow import kernels

    assert build_module.fused_kernel("torch") is False
    assert build_module.fused_kernel("auto") is True
    assert build_module.fused_kernel("fused") is True
    monkeypatch.setattr(build_module, "fused_kernels_error", lambda: "RuntimeError: no compiler")
    with pytest.raises(ConfigError, match=r"distributed\.splines.*no compiler"):
        build_module.fused_kernel("fused")
    assert build_module.fused_kernel("auto") is True
    monkeypatch.setattr(kernels, "fused_kernels_error", lambda: "RuntimeError: no compiler")
    gen = torch.Generator().manual_seed(13)
    theta = TWO_PI * torch.rand(20, generator=gen, dtype=F64)
    p = torch.randn(20, 13, generator=gen, dtype=F64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out, logdet = circular_rqs(theta, p, fused=True)
    assert any("no compiler" in str(w.message) and "distributed.splines" in str(w.message)
               for w in caught)
    want = circular_rqs(theta, p)
    assert torch.equal(out, want[0]) and torch.equal(logdet, want[1])
    with pytest.raises(ConfigError, match="distributed.splines"):
        load_config(None, ["lattice.shape=[4, 4]", "action.beta=1.0", "distributed.splines=cuda"])


def test_a_failed_build_is_explained_by_its_informative_line():
    text = ("Error building extension 'hpcflow_rqs': [1/2] c++ -MMD rqs.cpp\nFAILED: rqs.o\n"
            "/bin/sh: 1: /opt/none/c++: not found\nninja: build stopped: subcommand failed.")
    assert _reason(text) == "/bin/sh: 1: /opt/none/c++: not found"
    assert _reason("first\nlast line") == "last line"
    assert len(_reason("x" * 500)) == 200


@pytest.mark.parametrize("inverse", [False, True])
def test_fused_kernel_on_another_interval_with_unequal_minima(inverse):
    """An interval that does not start at 0 and unequal minimal widths, heights and slopes:
    the same map and gradients as the tensor operations (float64)."""
    gen = torch.Generator().manual_seed(11)
    k, n = 6, 400
    x = -1.5 + 3.5 * torch.rand(n, generator=gen, dtype=F64)
    params = 2.0 * torch.randn(n, 3 * k + 1, generator=gen, dtype=F64)
    cot = (torch.randn(n, generator=gen, dtype=F64), torch.randn(n, generator=gen, dtype=F64))
    kw = {"lower": -1.5, "upper": 2.0, "min_width": 2e-3, "min_height": 1e-2, "min_slope": 5e-3}
    results = []
    for fused in (False, True):
        xx, pp = x.clone().requires_grad_(True), params.clone().requires_grad_(True)
        out, logdet = interval_rqs(xx, pp, inverse=inverse, fused=fused, **kw)
        results.append((out, logdet, *torch.autograd.grad((out, logdet), (xx, pp), cot)))
    for a, b in zip(*results, strict=True):
        assert ((a.detach() - b.detach()).abs() / (1.0 + b.detach().abs())).max() < 1e-9


def test_fused_kernel_runs_on_several_threads_with_the_same_result():
    """Built with OpenMP: ``at::parallel_for`` splits the elements over torch's threads, and
    the result does not depend on their number (each element is computed alone)."""
    gen = torch.Generator().manual_seed(12)
    n, k = 20000, 8
    x = TWO_PI * torch.rand(n, generator=gen)
    params = torch.randn(n, 3 * k + 1, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = torch.ops.hpcflow.rqs_forward(x, params, k, 0.0, TWO_PI, 1e-3, 1e-3, 1e-3, False,
                                            True)
        torch.set_num_threads(2)
        two = torch.ops.hpcflow.rqs_forward(x, params, k, 0.0, TWO_PI, 1e-3, 1e-3, 1e-3, False,
                                            True)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)
    library = build_folder(cpp_extension) / f"{library_name()}.so"
    assert b"GOMP_parallel" in library.read_bytes()  # linked against OpenMP's runtime


def test_a_lock_left_by_a_killed_build_is_removed(monkeypatch, tmp_path):
    """torch's loader would wait for ever on a lock file left by a killed build: one older than
    STALE_LOCK_S is removed with a warning, a recent one (a build in progress) is kept."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    lock = build_folder(cpp_extension) / "lock"
    lock.write_text("")
    _remove_stale_lock(cpp_extension)
    assert lock.exists()
    old = time.time() - 2 * STALE_LOCK_S
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match="interrupted build"):
        _remove_stale_lock(cpp_extension)
    assert not lock.exists()


def test_a_built_kernel_loads_without_the_build_lock(tmp_path):
    """Once built, a new process loads the library directly: a lock file in the build folder
    (left by a rank killed at start-up, or a build in progress elsewhere) does not make it
    wait (torch's loader would wait for ever: a killed test rank once hung the suite)."""
    import subprocess
    import sys

    assert fused_kernels_error() is None  # built
    lock = build_folder(cpp_extension) / "lock"
    lock.write_text("")
    try:
        res = subprocess.run(
            [sys.executable, "-c", "from hpcflow.kernels import fused_kernels_error as f; "
             "print(f())"], capture_output=True, text=True, timeout=120)
    finally:
        lock.unlink(missing_ok=True)
    assert res.returncode == 0 and res.stdout.strip() == "None", res.stderr
