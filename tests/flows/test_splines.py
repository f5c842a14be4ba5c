"""Properties of the elementwise circle and interval bijections in hpcflow.flows.splines.

Numbers are compared in float64 unless a test is about float32. Random parameters are drawn as
N(0, 2^2), which reaches slopes down to ~1e-6: a round trip x -> y -> x then cannot beat
(rounding of y) / y'(x), so that direction is checked relative to the local condition number,
and the well-conditioned direction y -> x -> y absolutely.
"""

import functools
import math

import pytest
import torch

from hpcflow.flows.splines import (
    circular_rqs,
    interval_rqs,
    n_params_circular,
    n_params_interval,
    n_params_ncp,
    ncp_mixture,
)

TWO_PI = 2.0 * math.pi
F64 = torch.float64
ULP = torch.finfo(F64).eps

# (map, number of parameters for k bins / components); all are bijections of the circle. The
# circular spline twice: as tensor operations and by the fused C++ kernel (tests/flows/
# test_fused.py compares the two directly).
CIRCLE_MAPS = [
    pytest.param(circular_rqs, n_params_circular, id="circular_rqs"),
    pytest.param(functools.partial(circular_rqs, fused=True), n_params_circular,
                 id="circular_rqs_fused"),
    pytest.param(ncp_mixture, n_params_ncp, id="ncp_mixture"),
]
INTERVALS = [(0.0, math.pi), (0.0, 1.0), (-1.5, 2.0)]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _params(n: int, n_par: int, seed: int, dtype=F64, scale: float = 2.0) -> torch.Tensor:
    return scale * torch.randn(n, n_par, generator=_gen(seed), dtype=dtype)


def _circ_dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance on the circle, in [0, pi]."""
    return (torch.remainder(a - b + math.pi, TWO_PI) - math.pi).abs()


def _angles(n: int, seed: int, dtype=F64) -> torch.Tensor:
    """Uniform angles plus the delicate ones: exactly 0, -0, next to 0 and to 2 pi on both sides,
    2 pi itself, tiny negatives (remainder rounds them to exactly 2 pi) and far-away windings."""
    special = torch.tensor(
        [0.0, -0.0, 1e-300, 1e-15, 1e-9, -1e-20, -1e-15, TWO_PI, TWO_PI - 1e-15,
         TWO_PI - 1e-9, TWO_PI + 1e-12, math.pi, -7.0, 1e4],
        dtype=dtype,
    )  # fmt: skip
    uniform = TWO_PI * torch.rand(n - special.numel(), generator=_gen(seed), dtype=dtype)
    return torch.cat([special, uniform])


def _autograd_logderiv(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log d out/d x from autograd, logdet reported by fn) for an elementwise map fn."""
    x = x.clone().requires_grad_(True)
    out, logdet = fn(x)
    (grad,) = torch.autograd.grad(out.sum(), x)
    return torch.log(grad), logdet.detach()


# ------------------------------------------------------------------------------------------------
# Circle maps: circular_rqs (and ncp_mixture where the property is shared)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
@pytest.mark.parametrize("k", [1, 3, 8])
def test_circle_round_trip(fn, n_par, k):
    """inverse(forward(theta)) = theta mod 2 pi and forward(inverse(phi)) = phi, and the two
    log-derivatives cancel, for random params and angles including 0, +-ulp and 2 pi."""
    n = 2000
    p = _params(n, n_par(k), seed=k)
    theta = _angles(n, seed=100 + k)
    phi, ld = fn(theta, p)
    back, ild = fn(phi, p, inverse=True)
    # x -> y -> x, relative to the local condition number 1 / y'(x)
    cond = torch.exp(-ld).clamp_min(1.0)
    assert (_circ_dist(back, theta) / cond).max() < 1e-10
    # the inverse reports minus the forward log-derivative at its own output
    assert (fn(back, p)[1] + ild).abs().max() < 1e-10

    phi = _angles(n, seed=200 + k)
    theta, ild = fn(phi, p, inverse=True)
    again, ld = fn(theta, p)
    assert _circ_dist(again, phi).max() < 1e-10
    assert (ld + ild).abs().max() < 1e-10


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("k", [1, 4, 8])
def test_circle_logdet_matches_autograd(fn, n_par, inverse, k):
    """The reported log-derivative equals log d out / d in from autograd, forward and inverse."""
    n = 2000
    p = _params(n, n_par(k), seed=10 + k)
    x = _angles(n, seed=20 + k)
    auto, logdet = _autograd_logderiv(lambda t: fn(t, p, inverse=inverse), x)
    assert torch.isfinite(logdet).all()
    assert (auto - logdet).abs().max() < 1e-10


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_circle_identity_at_zero_params(fn, n_par, inverse, k):
    """Zero parameters give the identity map (theta mod 2 pi) with log-derivative 0."""
    theta = _angles(500, seed=k)
    out, logdet = fn(theta, torch.zeros(n_par(k), dtype=F64), inverse=inverse)
    assert _circ_dist(out, theta).max() < 1e-12
    assert logdet.abs().max() < 1e-12


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
@pytest.mark.parametrize("inverse", [False, True])
def test_circle_bias_is_a_rotation(fn, n_par, inverse):
    """Params with only the bias b set rotate the circle: theta -> theta + b mod 2 pi (inverse:
    theta - b), with log-derivative 0."""
    k, n = 6, 1000
    bias = torch.tensor([0.3, -2.0, 4.0, 7.5, -1e-17, TWO_PI], dtype=F64).repeat(n // 6 + 1)[:n]
    p = torch.zeros(n, n_par(k), dtype=F64)
    p[:, -1] = bias
    theta = _angles(n, seed=3)
    out, logdet = fn(theta, p, inverse=inverse)
    expected = theta - bias if inverse else theta + bias
    assert _circ_dist(out, expected).max() < 1e-12
    assert logdet.abs().max() < 1e-12


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
@pytest.mark.parametrize("inverse", [False, True])
def test_circle_continuous_across_zero(fn, n_par, inverse):
    """Value and slope are continuous across 0 = 2 pi: f(2 pi - eps) and f(eps) approach f(0) on
    the circle within eps times the local slope, and log f'(2 pi - eps), log f'(eps) approach
    log f'(0) (the slope at 2 pi is the slope at 0, so the map is C^1 on the circle)."""
    k, n, eps = 8, 2000, 1e-12
    p = _params(n, n_par(k), seed=7)
    y_zero, ld_zero = fn(torch.zeros(n, dtype=F64), p, inverse=inverse)
    for x in (TWO_PI - eps, eps):
        y, ld = fn(torch.full((n,), x, dtype=F64), p, inverse=inverse)
        # mean value theorem: |f(x) - f(0)| = eps f'(xi) for some xi between them
        slope = torch.maximum(ld, ld_zero).exp()
        assert (_circ_dist(y, y_zero) <= 2 * eps * slope + 1e-14).all()
        assert (ld - ld_zero).abs().max() < 1e-4


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_circle_output_range(fn, n_par, dtype):
    """Outputs lie in [0, 2 pi) for every input, including the ones that round to 2 pi."""
    k = 4
    theta = _angles(3000, seed=5, dtype=dtype)
    # biases that put outputs on top of 0 and 2 pi
    p = _params(theta.numel(), n_par(k), seed=6, dtype=dtype)
    p[::3, -1] = -theta[::3]
    p[1::3, -1] = TWO_PI - theta[1::3]
    two_pi = torch.tensor(TWO_PI, dtype=dtype)
    for inverse in (False, True):
        out, logdet = fn(theta, p, inverse=inverse)
        assert out.dtype == dtype and logdet.dtype == dtype
        assert (out >= 0).all() and (out < two_pi).all()
        assert torch.isfinite(logdet).all()


def test_circular_rqs_float32_million():
    """float32 on 1e6 random inputs: no NaN/inf, outputs in [0, 2 pi), round trip to ~1e-4
    (x -> y -> x relative to the condition number 1 / y'), and the inverse log-derivative is
    minus the forward one at its output (to 1e-2: in float32 the preimage is rounded to ~5e-7,
    which moves xi by up to 1e-4 in the narrowest bins, 2 pi * min_width wide)."""
    n, k = 1_000_000, 8
    p = _params(n, n_params_circular(k), seed=11, dtype=torch.float32)
    theta = TWO_PI * torch.rand(n, generator=_gen(12), dtype=torch.float32) - 1.0
    phi, ld = circular_rqs(theta, p)
    back, ild = circular_rqs(phi, p, inverse=True)
    for t in (phi, ld, back, ild):
        assert torch.isfinite(t).all()
    assert (phi >= 0).all() and (phi < torch.tensor(TWO_PI, dtype=torch.float32)).all()
    cond = torch.exp(-ld).clamp_min(1.0)
    assert (_circ_dist(back, theta) / cond).max() < 1e-4
    again, ld_back = circular_rqs(back, p)
    assert _circ_dist(again, phi).max() < 1e-4
    assert (ld_back + ild).abs().max() < 1e-2


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
def test_circle_map_has_degree_one(fn, n_par):
    """The map is a bijection of the circle: on a fine grid the steps f(theta_{i+1}) - f(theta_i)
    (mod 2 pi), wrapping around at the end, are all positive and add up to exactly one turn."""
    k, n_maps, n_grid = 5, 8, 2048
    p = _params(n_maps, n_par(k), seed=21)[:, None, :]
    grid = torch.arange(n_grid, dtype=F64) * (TWO_PI / n_grid)
    for inverse in (False, True):
        out, _ = fn(grid, p, inverse=inverse)  # [n_maps, n_grid]
        steps = torch.remainder(torch.diff(out, dim=-1, append=out[:, :1]), TWO_PI)
        assert (steps > 0).all()
        assert (steps.sum(-1) - TWO_PI).abs().max() < 1e-9


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
def test_circle_pushforward_is_normalised(fn, n_par):
    """The pushforward of the uniform density integrates to one: the means of f' = exp(logdet)
    over uniform theta, and of (f^-1)' over uniform phi, are 1 (midpoint rule on a fine grid;
    params ~ N(0, 1) so that the grid resolves the steepest bins)."""
    k, n_maps, n_grid = 5, 8, 8192
    p = _params(n_maps, n_par(k), seed=22, scale=1.0)[:, None, :]
    grid = (torch.arange(n_grid, dtype=F64) + 0.5) * (TWO_PI / n_grid)
    for inverse in (False, True):
        _, logdet = fn(grid, p, inverse=inverse)
        assert logdet.abs().max() > 1.0  # far from the identity
        assert (torch.exp(logdet).mean(-1) - 1.0).abs().max() < 5e-4


@pytest.mark.parametrize("fn, n_par", CIRCLE_MAPS)
def test_circle_param_gradients_match_finite_differences(fn, n_par):
    """Gradients with respect to the parameters (what training uses) agree with finite
    differences, forward and inverse, for value and log-derivative."""
    k = 3
    p = _params(6, n_par(k), seed=31).requires_grad_(True)
    theta = torch.tensor([0.0, 0.4, 1.7, 3.0, 4.4, 6.0], dtype=F64)
    for inverse in (False, True):

        def f(q, inverse=inverse):
            out, logdet = fn(theta, q, inverse=inverse)
            # cos/sin: smooth on the circle, so the wrap at 2 pi does not spoil differences
            return torch.cos(out), torch.sin(out), logdet

        assert torch.autograd.gradcheck(f, (p,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_circular_rqs_broadcasts_and_checks_arguments():
    """One parameter vector serves a batch of angles of any shape; parameters are cast to the
    angles' dtype; bad arguments are rejected with a message that names the function."""
    k = 4
    p = _params(1, n_params_circular(k), seed=41)[0]
    theta = _angles(60, seed=42).reshape(3, 4, 5)
    out, logdet = circular_rqs(theta, p)
    assert out.shape == logdet.shape == (3, 4, 5)
    one, _ = circular_rqs(theta[1, 2, 3], p)
    assert one == out[1, 2, 3]
    # parameters follow the data's dtype (float32 network output, float64 angles)
    out32, _ = circular_rqs(theta, p.float())
    assert out32.dtype == F64 and _circ_dist(out32, out).max() < 1e-5
    with pytest.raises(ValueError, match="circular_rqs"):
        circular_rqs(theta, torch.zeros(3 * k, dtype=F64))
    with pytest.raises(ValueError, match="circular_rqs"):
        circular_rqs(theta, p, min_width=1.0 / k)
    with pytest.raises(ValueError, match="interval_rqs"):
        interval_rqs(theta, p, lower=1.0, upper=1.0)


# ------------------------------------------------------------------------------------------------
# Interval spline
# ------------------------------------------------------------------------------------------------


def _interval_points(n: int, lower: float, upper: float, seed: int) -> torch.Tensor:
    span = upper - lower
    special = torch.tensor(
        [lower, upper, lower + 1e-15 * span, upper - 1e-15 * span, lower + 0.5 * span],
        dtype=F64,
    )
    uniform = lower + span * torch.rand(n - special.numel(), generator=_gen(seed), dtype=F64)
    return torch.cat([special, uniform])


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
@pytest.mark.parametrize("lower, upper", INTERVALS)
@pytest.mark.parametrize("k", [1, 2, 5, 8])
def test_interval_round_trip(fused, lower, upper, k):
    """inverse(forward(x)) = x (relative to the condition number) and forward(inverse(y)) = y,
    with cancelling log-derivatives, for random params."""
    spline = functools.partial(interval_rqs, fused=fused)
    n = 2000
    p = _params(n, n_params_interval(k), seed=50 + k)
    x = _interval_points(n, lower, upper, seed=60 + k)
    y, ld = spline(x, p, lower=lower, upper=upper)
    back, ild = spline(y, p, lower=lower, upper=upper, inverse=True)
    cond = torch.exp(-ld).clamp_min(1.0)
    assert ((back - x).abs() / cond).max() < 1e-10
    assert (spline(back, p, lower=lower, upper=upper)[1] + ild).abs().max() < 1e-10
    back, ild = spline(x, p, lower=lower, upper=upper, inverse=True)
    again, ld = spline(back, p, lower=lower, upper=upper)
    assert (again - x).abs().max() < 1e-10
    assert (ld + ild).abs().max() < 1e-10


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
@pytest.mark.parametrize("lower, upper", INTERVALS)
@pytest.mark.parametrize("inverse", [False, True])
def test_interval_logdet_matches_autograd(fused, lower, upper, inverse):
    """The reported log-derivative equals log d out / d in from autograd."""
    spline = functools.partial(interval_rqs, fused=fused)
    k, n = 6, 2000
    p = _params(n, n_params_interval(k), seed=71)
    x = _interval_points(n, lower, upper, seed=72)
    auto, logdet = _autograd_logderiv(
        lambda t: spline(t, p, lower=lower, upper=upper, inverse=inverse), x
    )
    assert (auto - logdet).abs().max() < 1e-10


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
@pytest.mark.parametrize("lower, upper", INTERVALS)
@pytest.mark.parametrize("inverse", [False, True])
def test_interval_fixed_end_points_and_monotone(fused, lower, upper, inverse):
    """lower -> lower and upper -> upper exactly; on a sorted grid the map strictly increases and
    stays inside [lower, upper]."""
    spline = functools.partial(interval_rqs, fused=fused)
    k, n_maps = 7, 8
    p = _params(n_maps, n_params_interval(k), seed=81)[:, None, :]
    ends = torch.tensor([lower, upper], dtype=F64)
    out, _ = spline(ends, p, lower=lower, upper=upper, inverse=inverse)
    # forward: exact (lerp hits the knots); inverse: the quadratic solve may cost an ulp or two
    assert (out - ends).abs().max() <= (0.0 if not inverse else 4 * ULP * (upper - lower))
    grid = torch.linspace(lower, upper, 2001, dtype=F64)
    out, _ = spline(grid, p, lower=lower, upper=upper, inverse=inverse)
    assert (torch.diff(out, dim=-1) > 0).all()
    assert (out >= lower).all() and (out <= upper).all()


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
@pytest.mark.parametrize("lower, upper", INTERVALS)
@pytest.mark.parametrize("inverse", [False, True])
def test_interval_identity_at_zero_params(fused, lower, upper, inverse):
    """Zero parameters give the identity with log-derivative 0."""
    spline = functools.partial(interval_rqs, fused=fused)
    x = _interval_points(500, lower, upper, seed=91)
    out, logdet = spline(
        x, torch.zeros(n_params_interval(4), dtype=F64), lower=lower, upper=upper, inverse=inverse
    )
    assert (out - x).abs().max() < 1e-12
    assert logdet.abs().max() < 1e-12


@pytest.mark.parametrize("fused", [False, True], ids=["torch", "fused"])
@pytest.mark.parametrize("lower, upper", INTERVALS)
@pytest.mark.parametrize("inverse", [False, True])
def test_interval_clamps_round_off_outside(fused, lower, upper, inverse):
    """Inputs a round-off outside [lower, upper] are clamped: the output is the end point and the
    log-derivative is the (finite) end slope, not NaN, also for autograd."""
    spline = functools.partial(interval_rqs, fused=fused)
    k, n = 5, 10
    p = _params(n, n_params_interval(k), seed=101)
    span = upper - lower
    x = torch.tensor([lower - 1e-13 * span, upper + 1e-13 * span] * (n // 2), dtype=F64)
    ends = torch.tensor([lower, upper] * (n // 2), dtype=F64)
    out, logdet = spline(x, p, lower=lower, upper=upper, inverse=inverse)
    out_end, logdet_end = spline(ends, p, lower=lower, upper=upper, inverse=inverse)
    assert (out == out_end).all()
    assert (out - ends).abs().max() <= 4 * ULP * (upper - lower)
    assert torch.isfinite(logdet).all()
    assert (logdet == logdet_end).all()
    # the clamp only removes round-off: autograd still sees the end slope, not zero
    auto, logdet = _autograd_logderiv(
        lambda t: spline(t, p, lower=lower, upper=upper, inverse=inverse), x
    )
    assert (auto - logdet).abs().max() < 1e-10


def test_interval_end_slopes_are_free():
    """The K+1 slope parameters include both end slopes: the derivative at lower is set by the
    first slope parameter and at upper by the last, independently."""
    k = 3
    p = torch.zeros(2, n_params_interval(k), dtype=F64)
    p[0, 2 * k] = 1.5  # slope at lower only
    p[1, -1] = -2.0  # slope at upper only
    ends = torch.tensor([0.0, 1.0], dtype=F64)
    _, logdet = interval_rqs(ends, p[:, None, :], lower=0.0, upper=1.0)
    slope = 1e-3 + torch.nn.functional.softplus(
        torch.tensor([1.5, -2.0], dtype=F64) + math.log(math.expm1(1.0 - 1e-3))
    )
    assert torch.allclose(logdet[0], torch.stack([slope[0].log(), torch.tensor(0.0, dtype=F64)]))
    assert torch.allclose(logdet[1], torch.stack([torch.tensor(0.0, dtype=F64), slope[1].log()]))


def test_interval_param_gradients_match_finite_differences():
    """Gradients with respect to the parameters agree with finite differences."""
    k = 3
    p = _params(5, n_params_interval(k), seed=111).requires_grad_(True)
    x = torch.tensor([0.05, 0.3, 1.2, 2.2, 3.0], dtype=F64)
    for inverse in (False, True):
        assert torch.autograd.gradcheck(
            lambda q, inverse=inverse: interval_rqs(
                x, q, lower=0.0, upper=math.pi, inverse=inverse
            ),
            (p,),
            eps=1e-6,
            atol=1e-6,
            fast_mode=True,
        )


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("circular", [True, False])
def test_hand_written_backward_matches_finite_differences_in_input_and_params(inverse, circular):
    """The splines' backward is written by hand (issue 19: a few dozen operations instead of
    autograd's ~150): both outputs, with respect to the input and every parameter, in full
    (not fast-mode) gradcheck, with unequal minimal widths and heights."""
    k = 4
    p = _params(7, 3 * k + 1, seed=5).requires_grad_(True)
    if circular:
        x = torch.tensor([0.1, 0.9, 1.7, 2.9, 3.6, 4.8, 6.1], dtype=F64, requires_grad=True)

        def f(xx, q):
            out, logdet = circular_rqs(xx, q, inverse=inverse, min_width=2e-3, min_height=1e-2)
            return torch.cos(out), torch.sin(out), logdet
    else:
        x = torch.tensor([0.05, 0.3, 0.9, 1.2, 2.2, 2.8, 3.0], dtype=F64, requires_grad=True)

        def f(xx, q):
            return interval_rqs(xx, q, lower=0.0, upper=math.pi, inverse=inverse,
                                min_width=2e-3, min_height=1e-2)

    assert torch.autograd.gradcheck(f, (x, p), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("inverse", [False, True])
def test_second_derivative_through_a_spline_raises(inverse):
    """The spline's backward is written out and first order only: asking for a graph of the
    gradient (a second derivative) raises instead of giving a gradient that silently misses
    the spline's second-order terms; first derivatives work as before."""
    gen = torch.Generator().manual_seed(3)
    x = (2 * math.pi * torch.rand(5, generator=gen, dtype=torch.float64)).requires_grad_()
    params = torch.randn(5, 3 * 4 + 1, generator=gen, dtype=torch.float64, requires_grad=True)
    _, logdet = circular_rqs(x, params, inverse=inverse)
    with pytest.raises(RuntimeError, match="second derivatives are not implemented"):
        torch.autograd.grad(logdet.sum(), params, create_graph=True, retain_graph=True)
    (g,) = torch.autograd.grad(logdet.sum(), params)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
