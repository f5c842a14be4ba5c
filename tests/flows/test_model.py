"""The U(1) flow: invertibility, log-determinants against autograd, gauge invariance,
normalization, and that every link moves."""

import math

import pytest
import torch

from hpcflow import build_model, load_config
from hpcflow.app.config import mask_schedule
from hpcflow.lattice.groups import gauge_transform, random_gauge
from tests.helpers import perturb, su_basis

CONFIGS = {
    2: ["lattice.shape=[4, 4]", "lattice.group=U1", "action.beta=2.0"],
    3: ["lattice.shape=[4, 4, 4]", "lattice.group=U1", "action.beta=1.0"],
    4: ["lattice.shape=[4, 4, 4, 4]", "lattice.group=U1", "action.beta=0.7",
        "model.net.hidden=[8]", "model.net.conv=factorized", "model.net.rank=4"],
}


def make_flow(nd, *extra, scale=0.02, seed=0):
    """A float64 flow whose networks are randomized (a new flow is the identity map)."""
    cfg = load_config(None, CONFIGS[nd] + ["model.dtype=float64", *extra])
    torch.manual_seed(seed)
    model = build_model(cfg)
    perturb(model, scale)
    return cfg, model


def _angles_fn(model):
    def f(theta):
        x = theta
        for layer in model.layers:
            x, _ = layer(x)
        return x
    return f


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_round_trip(nd):
    """inverse(forward(z)) == z and the log-determinants cancel."""
    _, model = make_flow(nd)
    z = model.prior(range(3), seed=1, stream=1)
    u, logdet = model(z)
    z2, logdet_inv = model.inverse(u)
    assert (u - z).abs().max() > 1e-3  # the flow is not the identity
    assert torch.allclose(z2, z, atol=1e-10)
    assert torch.allclose(logdet + logdet_inv, torch.zeros_like(logdet), atol=1e-9)


@pytest.mark.parametrize("nd, extra, scale", [(2, (), 0.05), (2, ("model.multi_update=2",), 0.05),
                                              (3, (), 0.02), (4, (), 0.02)])
def test_logdet_equals_autograd_jacobian(nd, extra, scale):
    """log|det J| of the whole flow equals slogdet of the autograd Jacobian in angle
    coordinates (every link angle of the lattice as one vector). The random networks are kept
    mild: a 12-layer 3D flow with scale 0.05 composes to a Jacobian of condition number ~1e18,
    where no slogdet is meaningful (each layer alone still matches)."""
    _, model = make_flow(nd, *extra, scale=scale)
    z = model.prior(range(1), seed=2, stream=1)
    theta = model.link_transform.to_internal(z)
    _, logdet = model(z)
    f = _angles_fn(model)
    jac = torch.autograd.functional.jacobian(f, theta, vectorize=True)
    n = theta.numel()
    sign, logabs = torch.linalg.slogdet(jac.reshape(n, n))
    assert sign.item() == 1.0
    assert logabs.item() == pytest.approx(logdet.item(), abs=1e-9)
    assert abs(logdet.item()) > 1e-2  # a non-trivial Jacobian


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_log_prob_gauge_invariant_and_equals_sample_log_q(nd):
    _, model = make_flow(nd)
    u, log_q = model.sample(3, seed=3)
    assert torch.allclose(model.log_prob(u), log_q, atol=1e-9)
    g = torch.Generator().manual_seed(nd)
    omega = random_gauge(model.group, 3, model.shape, generator=g)
    u2 = gauge_transform(u, omega, model.group)
    assert torch.allclose(model.log_prob(u2), log_q, atol=1e-8)
    assert log_q.abs().max() > 1e-3


def test_new_flow_is_identity():
    cfg = load_config(None, CONFIGS[2] + ["model.dtype=float64"])
    model = build_model(cfg)
    z = model.prior(range(2), seed=0, stream=1)
    u, logdet = model(z)
    assert torch.allclose(u, z, atol=1e-12) and logdet.abs().max() < 1e-12


def test_normalization_of_untrained_flow():
    """E_q[1/q] = integral of the Haar measure = 1: mean of exp(-log q) within its error."""
    _, model = make_flow(2, scale=0.05, seed=4)
    _, log_q = model.sample(4000, seed=5, batch_size=1000)
    w = torch.exp(-log_q)
    mean, err = w.mean().item(), w.std().item() / math.sqrt(len(w))
    assert log_q.std() > 0.05  # the check is not trivial
    assert abs(mean - 1.0) < 4 * err


@pytest.mark.parametrize("nd", [2, 3, 4])
def test_every_link_is_changed(nd):
    """Numerically, every link of the lattice moves under the flow (none frozen forever)."""
    _, model = make_flow(nd)
    z = model.prior(range(2), seed=6, stream=1)
    u, _ = model(z)
    moved = (u - z).abs().amax(dim=(-1, -2))  # [B, Nd, *L]
    assert moved.min() > 1e-8


def test_sampling_in_batches_matches_one_batch():
    _, model = make_flow(2)
    u1, lq1 = model.sample(10, seed=7)
    u2, lq2 = model.sample(10, seed=7, batch_size=3)
    assert torch.allclose(u1, u2, atol=1e-13) and torch.allclose(lq1, lq2, atol=1e-12)
    assert not u1.requires_grad


def test_float32_flow_runs():
    cfg = load_config(None, CONFIGS[2])
    model = build_model(cfg)
    u, log_q = model.sample(4, seed=0)
    assert u.dtype == torch.complex64 and log_q.dtype == torch.float32


@pytest.mark.parametrize("group, shape", [("SU2", "[4, 4]"), ("SU3", "[4, 4]"),
                                          ("SU2", "[4, 4, 4]"), ("SU3", "[4, 4, 4]"),
                                          ("SU2", "[4, 4, 4, 4]"), ("SU3", "[4, 4, 4, 4]")])
def test_sun_flow_round_trip_and_gauge_invariance(group, shape):
    """SU(N) flows (spectral transforms of open loops): log_prob inverts sample's log q and is
    gauge invariant, in 2D, 3D and 4D; the links stay in SU(N)."""
    extra = ["model.net.hidden=[4]", "model.dtype=float64"]
    if shape.count(",") == 3:
        extra += ["model.net.conv=factorized", "model.net.rank=4"]
    cfg = load_config(None, [f"lattice.shape={shape}", f"lattice.group={group}",
                             "action.beta=2.0", *extra])
    torch.manual_seed(0)
    model = build_model(cfg)
    perturb(model, 0.02)
    u, log_q = model.sample(2, seed=1)
    assert log_q.abs().max() > 1e-3
    assert torch.allclose(model.log_prob(u), log_q, atol=1e-9)
    omega = random_gauge(model.group, 2, model.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(model.log_prob(gauge_transform(u, omega, model.group)), log_q,
                          atol=1e-9)
    eye = torch.eye(model.group.nc, dtype=u.dtype)
    assert torch.allclose(u @ u.conj().transpose(-1, -2), eye.expand_as(u), atol=1e-12)
    assert torch.allclose(torch.linalg.det(u), torch.ones_like(u[..., 0, 0]), atol=1e-12)


@pytest.mark.parametrize("nc", [2, 3])
def test_sun_logdet_equals_lie_algebra_jacobian_whole_flow(nc):
    """2D SU(N) on 4x4, every layer: log|det J| of the flow (relative to the Haar measure)
    equals slogdet of the autograd Jacobian in Lie-algebra coordinates of all 32 links at once:
    ``J_ab = d/dv_b coord_a(f(exp(v.T) U) f(U)^dagger)`` at ``v = 0`` (32 (N^2-1) square), to
    1e-8. (The same check passed for 3D SU(3) on 4^3, 1536 x 1536, in a one-off run.)"""
    cfg = load_config(None, ["lattice.shape=[4, 4]", f"lattice.group=SU{nc}", "action.beta=2.0",
                             "model.net.hidden=[4]", "model.dtype=float64"])
    torch.manual_seed(1)
    model = build_model(cfg)
    perturb(model, 0.1)
    basis = su_basis(nc)  # [N^2 - 1, N, N]
    na = basis.shape[0]
    z = model.prior(range(1), seed=8, stream=1)  # [1, 2, 4, 4, N, N]
    fz, logdet = model(z)

    def coords(v):  # v: [2 * 4 * 4 * na] -> the same, through the whole flow
        x = torch.einsum("...c,cij->...ij", v.reshape(*z.shape[1:-2], na).to(basis.dtype), basis)
        out, _ = model(torch.matrix_exp(x).unsqueeze(0) @ z)
        a = out[0] @ fz[0].mH
        return torch.einsum("aij,...ij->...a", basis.conj(), 0.5 * (a - a.mH)).real.reshape(-1)

    n = z[0, ..., 0, 0].numel() * na
    jac = torch.autograd.functional.jacobian(coords, torch.zeros(n, dtype=torch.float64),
                                             vectorize=True)
    sign, logabs = torch.linalg.slogdet(jac)
    assert sign.item() == 1.0
    assert abs(logdet.item()) > 0.1  # a non-trivial map
    assert logabs.item() == pytest.approx(logdet.item(), abs=1e-8)


def test_float32_sun_flow_warns_and_float64_is_the_default():
    base = ["lattice.shape=[4, 4]", "lattice.group=SU2", "action.beta=1.0", "model.net.hidden=[4]"]
    with pytest.warns(UserWarning, match="model.dtype: float64"):
        load_config(None, base + ["model.dtype=float32"])
    assert load_config(None, base).model.dtype == "float64"
    assert load_config(None, base + ["lattice.group=U1"]).model.dtype == "float32"


# two active directions per layer: parameter rows of both directions and both updates
TWO_DIRECTIONS = ("model.masks=[{directions: [0, 1], steps: [1, 1, 1], width: 4}, "
                  "{directions: [2], steps: [1, 1, 1], width: 4}]")


@pytest.mark.parametrize("nd, extra", [(2, ("model.multi_update=2",)), (3, ()), (4, ()),
                                       (2, ("lattice.group=SU2", "model.multi_update=2")),
                                       (2, ("model.net.conv=tucker",)),
                                       (3, (TWO_DIRECTIONS, "model.multi_update=2"))])
def test_context_at_active_sites_equals_full_network(nd, extra):
    """Each coupling layer runs its context network's last layer at the sites of its active
    links only: the parameters every active link receives in update ``k`` equal the whole
    network's output channels ``(k * D + d) * P`` to ``(k * D + d + 1) * P`` at the link's site
    (``d``: its direction), for full, CP-factorized and Tucker networks, one or two updates."""
    from hpcflow.flows.coupling import GaugeCoupling
    from hpcflow.flows.model import plan_from_layer
    from hpcflow.lattice.loops import path_indices

    cfg, model = make_flow(nd, *extra, scale=0.3)
    schedule = mask_schedule(cfg)
    links = model.link_transform.to_internal(model.prior(range(2), seed=3, stream=1))
    lt = model.link_transform
    assert max(len(layer.directions) for layer in model.layers) == (2 if extra[:1] == (
        TWO_DIRECTIONS,) else 1)
    for layer, masks in zip(model.layers, schedule.layers, strict=True):
        assert layer.head_at and layer.n_sites < math.prod(layer.lattice)
        flat = links.reshape(2, -1, *links.shape[2 + len(layer.lattice):])
        extended = lt.algebra.extend(flat)
        reader = layer._reader(flat)  # U(1): loop matrices
        params = layer._context(extended if reader == "gather" else flat, reader)
        volume = math.prod(layer.lattice)
        # the whole network's output at every site
        full = layer.net[-1](_body(layer, extended)).reshape(2, -1, lt.n_params, volume)
        # a network whose last module cannot run at a few sites: whole output, then the sites
        other = GaugeCoupling(plan_from_layer(masks), lt, torch.nn.Sequential(*layer.net,
                                                                              torch.nn.Identity()))
        assert not other.head_at
        torch.testing.assert_close(
            other._context(extended if reader == "gather" else flat, reader), params,
            rtol=0, atol=1e-12)
        dirs = len(layer.directions)
        for k in range(layer.n_updates):
            got = params.index_select(1, getattr(layer, f"update_params_{k}"))
            want = []
            for a in masks.updates[k]:
                site = path_indices(a.path, layer.lattice, a.sites)[0][:, 0] - a.mu * volume
                want.append(full[:, k * dirs + layer.directions.index(a.mu), :, site]
                            .transpose(1, 2))
            torch.testing.assert_close(got, torch.cat(want, 1), rtol=0, atol=1e-12)
            assert got.abs().max() > 1e-3


def _body(layer, extended):
    """The context network's input, through every layer but the last."""
    lt = layer.link_transform
    b, volume = extended.shape[0], math.prod(layer.lattice)
    from hpcflow.lattice.loops import table_product

    w = table_product(extended, layer.feature_table, lt.algebra)
    f = lt.loop_features(w.view(b, len(layer.feature_paths), volume, *w.shape[2:]))
    h = f.transpose(1, 2).masked_fill(layer.feature_off, 0.0).reshape(b, -1, *layer.lattice)
    for module in list(layer.net)[:-1]:
        h = module(h)
    return h


@pytest.mark.parametrize("nd, extra", [(2, ("model.multi_update=2",)), (3, ()), (4, ()),
                                       (2, ("lattice.group=SU2", "model.multi_update=2",
                                            "model.net.hidden=[4]")),
                                       (2, ("lattice.group=SU3", "model.net.hidden=[4]")),
                                       (2, ("model.net.conv=tucker",)),
                                       (3, (TWO_DIRECTIONS, "model.multi_update=2"))])
def test_path_gradient_with_reused_contexts_equals_full_inverse_pass(nd, extra):
    """The path gradient's inverse pass takes the context networks' values and backward from
    the forward pass (:meth:`GaugeFlow.forward_keeping_contexts`): the objective ``log q(U) +
    S(U)`` and the gradient of every parameter equal those of the full inverse pass (float64),
    for U(1) in 2D/3D/4D, SU(2), SU(3), Tucker heads, one or two updates and two directions."""
    from hpcflow import build_action
    from hpcflow.app.propose import path_log_prob

    cfg, model = make_flow(nd, *extra, scale=0.02)
    action = build_action(cfg)
    z = model.prior(range(3), seed=4, stream=1)

    def run(reuse):
        model.zero_grad()
        if reuse:
            u, _, contexts = model.forward_keeping_contexts(z)
            assert len(contexts.layers) == len(model.layers) and contexts.output is u
        else:
            (u, _), contexts = model(z), None
        objective = path_log_prob(model, u, contexts) + action(u)
        objective.sum().backward()
        return objective.detach(), [p.grad.clone() for p in model.parameters()]

    (want, want_grads), (got, got_grads) = run(False), run(True)
    assert (want - want.mean()).abs().max() > 1e-3  # a non-trivial flow
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    scale = max(g.abs().max() for g in want_grads)
    assert scale > 1e-3
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10 * scale)


@pytest.mark.parametrize("nd, extra", [(2, ("model.multi_update=2",)), (3, ()),
                                       (4, ("lattice.shape=[2, 2, 4, 4]",)),
                                       (3, (TWO_DIRECTIONS, "model.multi_update=2"))])
def test_u1_loop_matrices_equal_the_gathered_loops(nd, extra, monkeypatch):
    """U(1) layers keep their loop tables as matrices (one product per loop family) where they
    fit: samples, log q, the path-gradient objective and every parameter's gradient equal
    those of layers that gather the extended links (``MAX_MATRIX_LINKS = 0``), float64."""
    from hpcflow import build_action
    from hpcflow.app.propose import path_log_prob
    from hpcflow.flows import coupling

    cfg, model = make_flow(nd, *extra)
    monkeypatch.setattr(coupling, "MAX_MATRIX_LINKS", 0)
    _, gathering = make_flow(nd, *extra)
    gathering.load_state_dict(model.state_dict())
    assert all(layer.linear for layer in model.layers)
    assert not any(layer.linear for layer in gathering.layers)
    action = build_action(cfg)
    z = model.prior(range(3), seed=5, stream=1)

    def run(flow):
        flow.zero_grad()
        u, logdet = flow(z)
        back, inv_logdet = flow.inverse(u.detach())
        u2, _, contexts = flow.forward_keeping_contexts(z)
        (path_log_prob(flow, u2, contexts) + action(u2) - logdet).sum().backward()
        return (u, logdet, back, inv_logdet), [p.grad.clone() for p in flow.parameters()]

    (got, got_grads), (want, want_grads) = run(model), run(gathering)
    assert (want[1] - want[1].mean()).abs().max() > 1e-3  # a non-trivial flow
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=0, atol=1e-10)
    scale = max(g.abs().max() for g in want_grads)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-10 * scale)


def test_loop_matrices_only_at_full_float32_precision():
    """The loop matrices compute the angles by a float32 product: where reduced-precision
    products are allowed (TF32, ``set_float32_matmul_precision("high")``) the layers gather
    instead, so that log q and invertibility keep full float32 accuracy; float64 always uses
    them."""
    cfg = load_config(None, CONFIGS[2] + ["model.dtype=float32"])
    torch.manual_seed(0)
    model = build_model(cfg)
    perturb(model, 0.02)
    z = model.prior(range(2), seed=6, stream=1)
    x32 = torch.zeros(2, 32)
    layer = model.layers[0]
    before = torch.get_float32_matmul_precision()
    try:
        assert layer._reader(x32) == "matrix"
        torch.set_float32_matmul_precision("high")
        assert layer._reader(x32) != "matrix" and layer._reader(x32.double()) == "matrix"
        u_high, ld_high = model(z)
    finally:
        torch.set_float32_matmul_precision(before)
    u, ld = model(z)
    torch.testing.assert_close(ld_high, ld, rtol=0, atol=1e-4)
    torch.testing.assert_close(u_high, u, rtol=0, atol=1e-5)


def test_contexts_are_not_kept_when_recomputed_or_without_autograd_and_misuse_raises():
    """Activation-checkpointed layers keep no intermediates, and without autograd there is no
    graph: ``forward_keeping_contexts`` returns ``None`` for the contexts (the inverse pass then
    runs the networks itself) and the same sample (compiled layers:
    ``tests/flows/test_compile.py``). Contexts given with other links than their pass's output,
    or with parameters that require gradients, raise instead of silently giving wrong
    numbers."""
    from hpcflow.app.propose import path_log_prob

    _, model = make_flow(2)
    z = model.prior(range(2), seed=5, stream=1)
    u, logdet, contexts = model.forward_keeping_contexts(z)
    with pytest.raises(ValueError, match="freeze the parameters"):
        model.inverse(u, contexts)
    with pytest.raises(ValueError, match="pass that output itself"):
        path_log_prob(model, u.detach().clone(), contexts)
    path_log_prob(model, u, contexts).sum().backward()  # the right use works
    with torch.no_grad():
        u2, logdet2, kept = model.forward_keeping_contexts(z)
    assert kept is None and torch.equal(u2, u.detach())
    model.recompute = True
    u3, _, kept = model.forward_keeping_contexts(z)
    assert kept is None and torch.equal(u3.detach(), u.detach())
