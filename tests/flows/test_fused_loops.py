"""The fused C++ loop kernel (hpcflow/kernels/csrc/loops.cpp) against the gathered loops of
``table_product``, and its selection by ``distributed.kernels``.

The kernel is part of the library of the spline kernel (built on first use, ~20 s, then
cached); it must build wherever the suite runs, so a failure here is a failure, not a skip.
"""

import warnings

import pytest
import torch

from hpcflow import build_action, kernels, load_config
from hpcflow.app import build as build_module
from hpcflow.app.propose import path_log_prob
from hpcflow.errors import ConfigError
from hpcflow.kernels import fused_kernels_error, loop_product, loops_apply
from hpcflow.lattice.groups import Angles, get_group
from hpcflow.lattice.loops import LOOP_SHAPES, loops_of_shape, path_table, table_product
from hpcflow.nn.factorized import CPConvNd
from tests.helpers import flows_by_mode

SHAPE = (3, 4, 2)  # unequal extents, one of 2: paths crossing a link twice


def _table(seed: int, shape=SHAPE) -> torch.Tensor:
    """Every loop family of ``shape`` at a random subset of base sites (rows of different
    lengths: the shorter padded with the unit element), plus rows of padding only."""
    gen = torch.Generator().manual_seed(seed)
    paths = [loop.path for name in LOOP_SHAPES for loop in loops_of_shape(name, len(shape))]
    sites = [torch.rand(shape, generator=gen) < 0.5 for _ in paths]
    table = path_table(paths, shape, sites)
    n_links = len(shape) * torch.tensor(shape).prod().item()
    pad = torch.full((3, table.shape[1]), 2 * n_links, dtype=torch.long)
    return torch.cat([table, pad]).t().contiguous().t()  # step-major, as path_table stores


def _links(name: str, batch: int, dtype, seed: int) -> tuple[torch.Tensor, object]:
    gen = torch.Generator().manual_seed(seed)
    n_links = len(SHAPE) * 24
    if name == "angles":
        return 7.0 * torch.randn(batch, n_links, generator=gen, dtype=dtype), Angles()
    group = get_group(name)
    return group.random((batch, n_links), generator=gen, dtype=dtype), group


@pytest.fixture(autouse=True)
def _loaded():
    """Every test may call the operators directly: load them first (a failure here fails)."""
    assert fused_kernels_error() is None


def test_the_loop_kernel_loads():
    assert fused_kernels_error() is None
    assert hasattr(torch.ops.hpcflow, "loop_product")


@pytest.mark.parametrize("name, dtype", [("SU3", torch.complex128), ("SU2", torch.complex128),
                                         ("U1", torch.complex128), ("angles", torch.float64)])
def test_loop_kernel_equals_the_gathered_products_and_their_gradients(name, dtype):
    """Values and the vector-Jacobian product against ``table_product`` of the extended links
    (float64): every loop family, padded rows, a dagger step, a link crossed twice."""
    table = _table(1)
    links, algebra = _links(name, 3, dtype, 2)
    assert loops_apply(links)
    a = links.clone().requires_grad_()
    b = links.clone().requires_grad_()
    want = table_product(algebra.extend(a), table, algebra)
    got = loop_product(b, table)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-13
    eye = torch.eye(3, dtype=dtype)[:want.shape[-1], :want.shape[-1]] if want.dim() == 4 else \
        torch.zeros((), dtype=dtype)
    assert torch.equal(got[:, -3:], eye.expand_as(got[:, -3:]))  # padding only: the unit
    cot = torch.randn(want.shape, dtype=dtype, generator=torch.Generator().manual_seed(3))
    cot[:, ::3] = 0  # rows skipped by the backward (a context's masked loops)
    (ga,) = torch.autograd.grad(want, a, cot)
    (gb,) = torch.autograd.grad(got, b, cot)
    assert ga.abs().max() > 0.1
    assert (ga - gb).abs().max() < 1e-12


@pytest.mark.parametrize("name", ["SU3", "SU2"])
def test_loop_kernel_traces_equal_the_traces_of_the_products(name):
    """``trace=True`` returns ``tr W`` ``[B, rows]`` and takes its cotangent: values and
    gradients equal those of the full products' traces."""
    table = _table(12)
    links, _ = _links(name, 2, torch.complex128, 13)
    a = links.clone().requires_grad_()
    b = links.clone().requires_grad_()
    want = loop_product(a, table).diagonal(0, -2, -1).sum(-1)
    got = loop_product(b, table, trace=True)
    assert got.shape == want.shape == (2, table.shape[0])
    assert (got - want).abs().max() < 1e-13
    cot = torch.randn(want.shape, dtype=want.dtype, generator=torch.Generator().manual_seed(14))
    (ga,) = torch.autograd.grad(want, a, cot)
    (gb,) = torch.autograd.grad(got, b, cot)
    assert ga.abs().max() > 0.1 and (ga - gb).abs().max() < 1e-12
    assert torch.autograd.gradcheck(lambda u: loop_product(u, table, trace=True),
                                    (links[:1].clone().requires_grad_(),))


def test_loop_kernel_reads_transposed_and_conjugated_cotangents():
    """Autograd hands over cotangents as views (transposed, conjugated by torch's lazy bit,
    expanded): the backward reads them as they are, with the same result as a contiguous
    copy."""
    table = _table(15)
    links, _ = _links("SU3", 2, torch.complex128, 16)
    n = links.shape[1]
    base = torch.randn(2, table.shape[0], 3, 3, dtype=torch.complex128)
    for view in (base.mT, base.conj(), base.mH, base[:1].expand(2, -1, -1, -1)):
        got = torch.ops.hpcflow.loop_product_backward(view, links, table, n, False)
        want = torch.ops.hpcflow.loop_product_backward(view.resolve_conj().contiguous(), links,
                                                       table, n, False)
        assert torch.equal(got, want)
    t = torch.randn(2, table.shape[0], dtype=torch.complex128).conj()
    assert torch.equal(torch.ops.hpcflow.loop_product_backward(t, links, table, n, True),
                       torch.ops.hpcflow.loop_product_backward(t.resolve_conj(), links, table,
                                                               n, True))


@pytest.mark.parametrize("name, dtype", [("SU3", torch.complex128), ("angles", torch.float64)])
def test_loop_kernel_passes_gradcheck_and_refuses_second_derivatives(name, dtype):
    table = _table(4)
    links, _ = _links(name, 1, dtype, 5)
    x = links.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda u: loop_product(u, table), (x,))
    out = loop_product(x, table)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.autograd.grad(out.abs().sum(), x, create_graph=True)


@pytest.mark.parametrize("name, dtype", [("SU3", torch.complex64), ("angles", torch.float32)])
def test_loop_kernel_in_single_precision_is_as_accurate_as_the_tensor_operations(name, dtype):
    table = _table(6)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    links, algebra = _links(name, 2, wide, 7)
    exact = table_product(algebra.extend(links), table, algebra)
    low = links.to(dtype)
    err_kernel = (loop_product(low, table).to(wide) - exact).abs().max()
    err_torch = (table_product(algebra.extend(low), table, algebra).to(wide) - exact).abs().max()
    assert err_kernel <= 2 * err_torch + 1e-6


def test_loop_kernel_runs_on_several_threads_with_the_same_result():
    """The forward splits (batch element, row) pairs and the backward batch elements over
    torch's threads; the result does not depend on their number."""
    table = _table(8)
    links, _ = _links("SU3", 6, torch.complex128, 9)
    cot = torch.randn(6, table.shape[0], 3, 3, dtype=torch.complex128)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append((torch.ops.hpcflow.loop_product(links, table, links.shape[1], False),
                            torch.ops.hpcflow.loop_product_backward(cot, links, table,
                                                                    links.shape[1], False)))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_loop_kernel_reads_conjugated_links_and_empty_batches_and_tables():
    """Links with torch's lazy conjugation bit (``u.conj()``) are read as their values (the
    dispatcher resolves the bit before the operator runs). An empty batch or table gives an
    empty result and gradient."""
    table = _table(17)
    links, group = _links("SU3", 2, torch.complex128, 18)
    conj = links.conj()
    assert conj.is_conj() and conj.is_contiguous()
    want = table_product(group.extend(conj.resolve_conj()), table, group)
    assert (loop_product(conj, table) - want).abs().max() < 1e-13
    direct = torch.ops.hpcflow.loop_product(conj, table, links.shape[1], False)
    assert (direct - want).abs().max() < 1e-13
    for x, t in ((links[:0], table), (links, table[:0])):
        x = x.clone().requires_grad_()
        out = loop_product(x, t)
        assert out.shape == (x.shape[0], t.shape[0], 3, 3)
        (g,) = torch.autograd.grad(out.abs().sum(), x, allow_unused=True) if out.numel() else (
            torch.zeros_like(x),)
        assert g.shape == x.shape and not g.abs().any()


def test_layers_whose_loops_are_too_long_for_the_kernel_gather(monkeypatch):
    """A loop longer than the kernel walks (``MAX_STEPS``) keeps the layer on the gather."""
    from hpcflow.flows import coupling

    over = ["lattice.group=SU2", "lattice.shape=[4, 4]", "action.beta=1.0",
            "model.dtype=float64", "model.net.hidden=[4]"]
    assert all(layer.fused_loops for layer in flows_by_mode(over, "distributed.kernels",
                                                            ("fused",))["fused"].layers)
    monkeypatch.setattr(coupling, "MAX_STEPS", 3)
    flow = flows_by_mode(over, "distributed.kernels", ("fused",))["fused"]
    assert not any(layer.fused_loops for layer in flow.layers)


def test_loop_kernel_rejects_bad_tables_and_links():
    links, _ = _links("SU3", 1, torch.complex128, 10)
    with pytest.raises(RuntimeError, match=r"table entries must lie in \[0, 2 n_links\]"):
        torch.ops.hpcflow.loop_product(links, torch.tensor([[2 * links.shape[1] + 1]]),
                                       links.shape[1], False)
    with pytest.raises(RuntimeError, match="complex"):
        torch.ops.hpcflow.loop_product(links.real.contiguous(), _table(1), links.shape[1], False)
    assert not loops_apply(torch.zeros(2, 5, 5, 5, dtype=torch.complex128))  # N > 4
    assert not loops_apply(torch.zeros(2, 5, dtype=torch.int64))


@pytest.mark.parametrize("group, shape", [("U1", [4, 4, 4]), ("SU2", [4, 4, 4]),
                                          ("SU3", [4, 4]), ("SU2", [2, 2, 4, 4])])
def test_a_flow_with_fused_loops_equals_one_with_gathered_loops(group, shape, monkeypatch):
    """The whole flow (float64), ``distributed.kernels=fused`` against ``torch``: samples,
    log q, the inverse, the path-gradient objective (whose inverse pass takes the context's
    derivative through the kernel's backward) and every parameter's gradient to 1e-10. U(1)
    without its loop matrices (``MAX_MATRIX_LINKS = 0``: production lattices); in 4D the
    context networks are factorized (the depthwise convolutions by csrc/conv.cpp)."""
    from hpcflow.flows import coupling

    monkeypatch.setattr(coupling, "MAX_MATRIX_LINKS", 0)
    over = [f"lattice.group={group}", f"lattice.shape={shape}", "action.beta=1.0",
            "model.dtype=float64", "model.net.hidden=[4]", "model.multi_update=2"]
    flows = flows_by_mode(over, "distributed.kernels")
    action = build_action(load_config(None, over))
    z = flows["torch"].prior(range(3), seed=1, stream=0, step=0)
    readers = {}
    results = {}
    for mode, flow in flows.items():
        x = flow.link_transform.to_internal(z)
        readers[mode] = flow.layers[0]._reader(x.reshape(3, -1, *x.shape[2 + len(shape):]))
        u, logdet = flow(z)
        u2, _, contexts = flow.forward_keeping_contexts(z)
        objective = (path_log_prob(flow, u2, contexts) + action(u2) - logdet).sum()
        grads = torch.autograd.grad(objective, list(flow.parameters()))
        results[mode] = (u.detach(), logdet.detach(), grads)
    assert readers == {"torch": "gather", "fused": "fused"}
    cp = [m for m in flows["fused"].modules() if isinstance(m, CPConvNd)]
    assert len(cp) > 0 if len(shape) == 4 else not cp
    assert all(m.fused for m in cp)
    assert not any(getattr(m, "fused", False) for m in flows["torch"].modules())
    if group != "U1":  # SU(3)'s eigen-decomposition by csrc/eig.cpp too (SU(2): closed form)
        assert flows["fused"].link_transform.fused_eig
        assert not flows["torch"].link_transform.fused_eig
    (u0, l0, g0), (u1, l1, g1) = results["torch"], results["fused"]
    assert (l0 - l0.mean()).abs().max() > 1e-3  # a non-trivial flow
    for a, b in ((u0, u1), (l0, l1)):
        assert (a - b).abs().max() < 1e-10
    # the inverses of the same sample (each flow's own sample differs by rounding, and the
    # inverse of this random SU(3) flow magnifies an input change ~2000x: its round trip is
    # good to ~8e-10 either way)
    b0, b1 = (flows[mode].inverse(u0)[0].detach() for mode in ("torch", "fused"))
    assert (b0 - b1).abs().max() < 1e-10
    assert max((b - z).abs().max() for b in (b0, b1)) < 1e-8
    for a, b in zip(g0, g1, strict=True):
        assert ((a - b).abs() / (1.0 + b.abs())).max() < 1e-9


def test_loops_key_resolves_and_explains_a_failed_build(monkeypatch):
    """``distributed.kernels: fused`` where the kernels cannot be built: one ConfigError naming
    the key and the reason; ``auto``: the layers fall back to gathering with one warning."""
    assert build_module.fused_kernel("torch", "distributed.kernels") is False
    assert build_module.fused_kernel("auto", "distributed.kernels") is True
    monkeypatch.setattr(build_module, "fused_kernels_error", lambda: "RuntimeError: no compiler")
    with pytest.raises(ConfigError, match=r"distributed\.kernels.*no compiler"):
        build_module.fused_kernel("fused", "distributed.kernels")
    monkeypatch.setattr(kernels, "fused_kernels_error", lambda: "RuntimeError: no compiler")
    links, _ = _links("SU3", 1, torch.complex128, 11)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not loops_apply(links)
    assert any("no compiler" in str(w.message) and "distributed.kernels" in str(w.message)
               for w in caught)
    with pytest.raises(ConfigError, match="distributed.kernels"):
        load_config(None, ["lattice.shape=[4, 4]", "action.beta=1.0", "distributed.kernels=gpu"])
