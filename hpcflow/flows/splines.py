"""Elementwise bijections of the circle and of an interval, for coupling layers.

- `circular_rqs`: circular rational-quadratic spline plus a bias (rotation), a bijection of
  [0, 2 pi) (Durkan et al. 2019, arXiv:1906.04032; Rezende et al. 2020, arXiv:2002.02428). This is
  the U(1) link transform "Rational quadratic spline with bias" (docs/physics.md).
- `interval_rqs`: monotone rational-quadratic spline on [lower, upper] with fixed end points
  (SU(2) eigen-angle on [0, pi], SU(3) canonical-cell coordinates on [0, 1]).
- `ncp_mixture`: mixture of non-compact projections on [0, 2 pi) (Rezende et al. 2020; used for
  U(1) in arXiv:2003.06413 and for SU(N) eigen-angles in arXiv:2101.08176), kept for comparisons.

All are pure functions of (input, unnormalised parameters) and return `(out, logdet)`, where
`logdet` is the elementwise log-derivative of the map that was applied: d out / d in. With
`inverse=True` the inverse map is applied and `logdet` is the log-derivative of the inverse, i.e.
minus the forward log-derivative at the preimage. Parameters are cast to the dtype and device of
the input, broadcast against it, and may carry gradients (they usually come from a network).

Parameter counts per element (the last axis of `params`): `n_params_circular(K) = 3K + 1`,
`n_params_interval(K) = 3K + 1`, `n_params_ncp(M) = 3M + 1`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..kernels import MAX_BINS, REAL, applies

__all__ = [
    "circular_rqs",
    "interval_rqs",
    "ncp_mixture",
    "n_params_circular",
    "n_params_interval",
    "n_params_ncp",
]

_TWO_PI = 2.0 * math.pi


def n_params_circular(k: int) -> int:
    """Parameters per element of `circular_rqs` with `k` bins: k widths, k heights, k slopes,
    1 bias."""
    return 3 * k + 1


def n_params_interval(k: int) -> int:
    """Parameters per element of `interval_rqs` with `k` bins: k widths, k heights, k + 1 slopes."""
    return 3 * k + 1


def n_params_ncp(m: int) -> int:
    """Parameters per element of `ncp_mixture` with `m` components: m log-alphas, m betas,
    m mixture logits, 1 bias."""
    return 3 * m + 1


# ------------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------------


def _broadcast(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast params to x's dtype/device and broadcast x [...] against params [..., P]."""
    params = params.to(dtype=x.dtype, device=x.device)
    shape = torch.broadcast_shapes(x.shape, params.shape[:-1])
    return x.expand(shape), params.expand(*shape, params.shape[-1])


def _n_bins(n_params: int, extra: int, name: str) -> int:
    k, rest = divmod(n_params - extra, 3)
    if rest != 0 or k < 1:
        raise ValueError(
            f"{name}: params.shape[-1] = {n_params} is not 3K + {extra} for an integer K >= 1"
        )
    return k


def _check_minima(k: int, min_width: float, min_height: float, min_slope: float, name: str):
    # a bin of zero width or height would make its slope h / w infinite or zero
    if not (0.0 < min_width * k < 1.0 and 0.0 < min_height * k < 1.0):
        raise ValueError(f"{name}: need 0 < K * min_width < 1 and 0 < K * min_height < 1 (K={k})")
    if not 0.0 < min_slope < 1.0:
        raise ValueError(f"{name}: need 0 < min_slope < 1, got {min_slope}")


def _broadcast_to(x: torch.Tensor, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`_broadcast` that issues no operation when the shapes and dtype already agree (the
    coupling layers' case: every operation counts at small batches)."""
    if params.dtype == x.dtype and params.device == x.device and params.shape[:-1] == x.shape:
        return x, params
    return _broadcast(x, params)


def _wrap(theta: torch.Tensor) -> torch.Tensor:
    """theta mod 2 pi in [0, 2 pi). `remainder` of a tiny negative number rounds to exactly 2 pi,
    which is the same point of the circle as 0."""
    t = torch.remainder(theta, _TWO_PI)
    return torch.where(t >= _TWO_PI, t - _TWO_PI, t)


class _Local:
    """The spline in the bin of each element (Durkan et al. 2019, eqs. 4-5).

    From the bin's knots ``g [..., 3, 2]`` (rows x, y, slope; columns the bin's two ends) and the
    position ``xi`` in the bin: ``w = x1 - x0``, ``h = y1 - y0``, ``s = h / w``,
    ``den = s + c xi (1 - xi)`` with ``c = d0 + d1 - 2 s``,
    ``y = y0 + h r`` with ``r = (s xi^2 + d0 xi (1 - xi)) / den``,
    ``log dy/dx = log m + 2 log(s / den)`` with ``m = d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2``.
    Written with fused multiply-adds and no scalar temporaries: every operation counts at small
    batches (issue 19). The quantities are kept for the backward (:meth:`vjp`).
    """

    def __init__(self, point: torch.Tensor, g: torch.Tensor, inverse: bool):
        x0, x1, y0, y1, d0, d1 = g.flatten(-2).unbind(-1)
        self.x0, self.x1, self.y0, self.y1, self.d0, self.d1 = x0, x1, y0, y1, d0, d1
        self.w = x1 - x0
        self.h = y1 - y0
        self.s = self.h / self.w
        # the position in the bin: of the input (forward), of the preimage (inverse)
        self.xi = xi = (_solve_xi(point, self) if inverse else
                        ((point - x0) / self.w).clamp(0.0, 1.0))
        self.omx = 1.0 - xi
        self.om = xi * self.omx
        self.c = torch.add(d0 + d1, self.s, alpha=-2.0)
        self.den = torch.addcmul(self.s, self.c, self.om)
        self.sxi = self.s * xi
        self.r = torch.addcmul(d0 * self.om, self.sxi, xi) / self.den
        self.m = torch.addcmul(torch.addcmul(d1 * xi * xi, d0 * self.omx, self.omx), self.s,
                               self.om, value=2.0)
        self.q = self.s / self.den

    SAVED = ("xi", "h", "s", "w", "omx", "om", "c", "den", "sxi", "r", "m", "q", "d0", "d1")

    def saved(self) -> tuple[torch.Tensor, ...]:
        """What the backward needs (through ``ctx.save_for_backward``, so that saved-tensor
        hooks such as activation checkpointing see it)."""
        return tuple(getattr(self, name) for name in self.SAVED)

    @classmethod
    def restored(cls, tensors) -> _Local:
        loc = cls.__new__(cls)
        for name, t in zip(cls.SAVED, tensors, strict=True):
            setattr(loc, name, t)
        return loc

    def value(self) -> torch.Tensor:
        """The output ``y`` (lerp returns the knots exactly at r = 0 and 1: end points stay
        fixed to the last bit)."""
        return torch.lerp(self.y0, self.y1, self.r)

    def logdet(self) -> torch.Tensor:
        """``log dy/dx``."""
        return torch.log(self.m * self.q * self.q)

    def vjp(self, gy: torch.Tensor, gl: torch.Tensor):
        """Reverse mode of ``(x, knots) -> (y, log dy/dx)`` for cotangents ``gy``, ``gl``:
        ``(g_x, g_knots [..., 3, 2])``, the chain rule written out node by node (``xi = (x - x0)
        / w``, ``s = h / w``; each line the adjoint of one quantity of the forward)."""
        xi, omx, om, s, d0, d1 = self.xi, self.omx, self.om, self.s, self.d0, self.d1
        g_r = gy * self.h
        g_n = g_r / self.den
        gl2 = gl + gl
        g_den = torch.addcmul(gl2, g_r, self.r) / (-self.den)
        g_m = gl / self.m
        g_s = torch.addcmul(torch.addcmul(gl2 / s + g_den, g_n * xi, xi), om, g_m - g_den,
                            value=2.0)
        g_c = g_den * om
        g_om = torch.addcmul(torch.addcmul(g_den * self.c, g_n, d0), g_m, s, value=2.0)
        g_xi = torch.addcmul(torch.addcmul(g_om * (omx - xi), g_n, self.sxi, value=2.0),
                             g_m, d1 * xi - d0 * omx, value=2.0)
        g_d0 = torch.addcmul(torch.addcmul(g_c, g_n, om), g_m * omx, omx)
        g_d1 = torch.addcmul(g_c, g_m * xi, xi)
        g_sw = g_s / self.w
        g_h = torch.addcmul(g_sw, gy, self.r)
        g_x = g_xi / self.w
        g_w = -torch.addcmul(g_x * xi, g_sw, s)
        g_knots = torch.stack([-(g_x + g_w), g_w, gy - g_h, g_h, g_d0, g_d1], dim=-1)
        return g_x, g_knots.reshape(*g_knots.shape[:-1], 3, 2)

    def dlogdet_dx(self) -> torch.Tensor:
        """``d log(dy/dx) / dx = (m' / m - 2 den' / den) / w`` (primes: d/dxi)."""
        xi, omx = self.xi, self.omx
        dm = torch.addcmul(self.d1 * xi - self.d0 * omx, self.s, omx - xi)
        dden = self.c * (omx - xi)
        return (dm / self.m - dden / self.den) * 2.0 / self.w


def _solve_xi(y: torch.Tensor, loc: _Local) -> torch.Tensor:
    """The position ``xi`` in the bin with ``y(xi) = y`` (Durkan et al. 2019, appendix A).

    ``a xi^2 + b xi + c = 0``; the root ``2c / (-b - sqrt(D)) = (-b + sqrt(D)) / (2a)``: the first
    form cancels when b < 0 (near the top of a bin whose end slope exceeds 2 s; in float32 that
    cost 1e-4 in round trips), the second when b > 0, so each is used where it does not cancel.
    Both are evaluated; the unused denominator is replaced by 1 (with b >= 0, -b - sqrt(D) < 0;
    with b < 0, a > 0 because the root lies in [0, 1]).
    """
    h, s, d0 = loc.h, loc.s, loc.d0
    curv = torch.add(d0 + loc.d1, s, alpha=-2.0)
    dy = y - loc.y0
    a = torch.addcmul(h * (s - d0), dy, curv)
    b = torch.addcmul(h * d0, dy, curv, value=-1.0)
    c = -s * dy
    sq = torch.sqrt(torch.addcmul(b * b, a, c, value=-4.0).clamp_min(0.0))
    pos = b >= 0
    xi = torch.where(pos, (c + c) / torch.where(pos, -b - sq, 1.0),
                     (sq - b) / torch.where(pos, 1.0, a + a))
    return xi.clamp(0.0, 1.0)


class _RQS(torch.autograd.Function):
    """Rational-quadratic spline from unnormalised parameters, forward or inverse, with a
    hand-written backward (docs/physics.md, "Circular rational-quadratic spline with bias").

    One function for both families: ``circular`` (``3K + 1`` parameters: widths, heights, K
    slopes with ``d_K = d_0``, a bias; input and output mod 2 pi) and interval (``3K + 1``:
    widths, heights, K + 1 slopes; ends fixed). The backward is the chain rule written out
    (:meth:`_Local.vjp`) and, for the inverse, the implicit-function theorem at the preimage:
    a few dozen elementwise operations instead of the ~150 that autograd records through the
    same formulas (issue 19: on a GPU every operation is a kernel launch).
    """

    @staticmethod
    def forward(ctx, x, params, k, lower, upper, mins, inverse, circular):
        mw, mh, ms = mins
        span = upper - lower
        # softmax written out: torch.softmax over a last axis of ~8 runs ~8x slower on CPUs
        e = params[..., :2 * k].reshape(*params.shape[:-1], 2, k)
        e = torch.exp(e - e.amax(-1, keepdim=True))
        p = e / e.sum(-1, keepdim=True)  # [..., 2, K]
        if mw == mh:
            frac = mw + (1.0 - k * mw) * p
        else:
            frac = torch.stack([mw + (1.0 - k * mw) * p[..., 0, :],
                                mh + (1.0 - k * mh) * p[..., 1, :]], dim=-2)
        # end knots exactly `lower` and `upper`: every point falls in a bin, and bin sizes are
        # differences of these knots (consistent to the last bit)
        knots = span * F.pad(torch.cumsum(frac[..., :-1], dim=-1), (1, 1))
        if lower != 0.0:
            knots = knots + lower
        knots[..., -1].fill_(upper)
        n_slopes = k if circular else k + 1
        z = params[..., 2 * k:2 * k + n_slopes] + math.log(math.expm1(1.0 - ms))
        d = ms + F.softplus(z)
        if circular:
            d = torch.cat([d, d[..., :1]], dim=-1)
        table = torch.cat([knots, d.unsqueeze(-2)], dim=-2)  # [..., 3, K + 1]
        if circular:
            point = _wrap(x - params[..., 3 * k]) if inverse else _wrap(x)
        else:
            point = x.clamp(lower, upper)
        # bin: the number of interior knots <= point (a clamped searchsorted, no copies)
        idx = (point.unsqueeze(-1) >= table[..., int(inverse), 1:-1]).sum(-1, keepdim=True)
        ends = torch.cat([idx, idx + 1], dim=-1).unsqueeze(-2).expand(*idx.shape[:-1], 3, 2)
        g = table.gather(-1, ends)  # [..., 3, 2]
        loc = _Local(point, g, inverse)
        if inverse:
            out, logdet = torch.lerp(loc.x0, loc.x1, loc.xi), -loc.logdet()
        else:
            out, logdet = loc.value(), loc.logdet()
        if circular:
            out = _wrap(out) if inverse else _wrap(out + params[..., 3 * k])
        ctx.save_for_backward(ends, p, torch.sigmoid(z), *loc.saved())
        ctx.meta = (k, span, mw, mh, inverse, circular, table.shape)
        return out, logdet

    @staticmethod
    def backward(ctx, g_out, g_logdet):
        if torch.is_grad_enabled():  # create_graph: this backward is first order only
            raise RuntimeError(
                "circular_rqs / interval_rqs: second derivatives are not implemented (the "
                "backward is written out, first order, from intermediates saved without a "
                "graph); differentiate without create_graph=True")
        ends, p, sig, *saved = ctx.saved_tensors
        k, span, mw, mh, inverse, circular, table_shape = ctx.meta
        loc = _Local.restored(saved)
        g_out = torch.zeros_like(loc.xi) if g_out is None else g_out
        g_logdet = torch.zeros_like(loc.xi) if g_logdet is None else g_logdet
        if inverse:
            # x = F^-1(y): dx/dy = 1 / F', dx/dknots = -dF/dknots / F'; log J = -log F'(x)
            g_in = torch.addcmul(g_out, g_logdet, loc.dlogdet_dx(), value=-1.0) / (
                loc.m * loc.q * loc.q)
            _, g_knots = loc.vjp(-g_in, -g_logdet)
        else:
            g_in, g_knots = loc.vjp(g_out, g_logdet)
        g_table = p.new_zeros(table_shape).scatter_add(-1, ends, g_knots)
        # knots = lower + span * [0, C_1 .. C_{K-1}, 1] with C_j = sum_{i<j} frac_i: fraction i
        # moves the interior knots j > i, g_frac_i = span * sum_{i<j<K} g_knot_j, summed from
        # the top (a running sum from knot 0 would carry the cotangent of that fixed knot and
        # cancel it by rounding: eps times a cotangent that near the SU(3) identity is ~1/w)
        tail = g_table[..., :2, 1:k].flip(-1).cumsum(-1).flip(-1)
        g_frac = span * F.pad(tail, (0, 1))
        scale = (1.0 - k * mw) if mw == mh else torch.tensor(
            [[1.0 - k * mw], [1.0 - k * mh]], dtype=p.dtype, device=p.device)
        g_p = g_frac * scale
        g_u = p * (g_p - (g_p * p).sum(-1, keepdim=True))
        g_d = g_table[..., 2, :]
        if circular:
            g_d = g_d[..., :k] + F.pad(g_d[..., k:], (0, k - 1))
        parts = [g_u.reshape(*g_u.shape[:-2], 2 * k), g_d * sig]
        if circular:
            parts.append((-g_in if inverse else g_out).unsqueeze(-1))
        return g_in, torch.cat(parts, dim=-1), None, None, None, None, None, None


class _FusedRQS(torch.autograd.Function):
    """`_RQS` by the fused C++ kernel (:mod:`hpcflow.kernels`, ``csrc/rqs.cpp``): one
    operator call forward, one backward; the same maps and derivatives to rounding. Saves the
    input, the parameters and the softmax of the widths and heights ``[..., 2, K]``."""

    @staticmethod
    def forward(ctx, x, params, k, lower, upper, mins, inverse, circular):
        x, params = x.contiguous(), params.contiguous()
        spec = (k, lower, upper, *mins, inverse, circular)
        out, logdet, prob = torch.ops.hpcflow.rqs_forward(x, params, *spec)
        ctx.save_for_backward(x, params, prob)
        ctx.spec = spec
        return out, logdet

    @staticmethod
    def backward(ctx, g_out, g_logdet):
        if torch.is_grad_enabled():  # create_graph: first order only, as _RQS
            raise RuntimeError(
                "circular_rqs / interval_rqs: second derivatives are not implemented (the fused "
                "kernel's backward is first order); differentiate without create_graph=True")
        x, params, prob = ctx.saved_tensors
        g_out = torch.zeros_like(x) if g_out is None else g_out
        g_logdet = torch.zeros_like(x) if g_logdet is None else g_logdet
        g_x, g_params = torch.ops.hpcflow.rqs_backward(x, params, prob, g_out, g_logdet,
                                                       *ctx.spec)
        return g_x, g_params, None, None, None, None, None, None


def _spline(x, params, k, lower, upper, mins, inverse, circular, fused):
    """`_FusedRQS` where ``fused`` and the kernel applies (CPU, float32/float64, at most
    ``MAX_BINS`` bins, not traced by ``torch.compile``, which fuses the operations of `_RQS`
    itself) and builds (the first such call builds it), else `_RQS`; a kernel that cannot be
    built is said once (a warning with the reason)."""
    if fused and k <= MAX_BINS and applies(x, REAL, "the splines", "distributed.splines"):
        return _FusedRQS.apply(x, params, k, lower, upper, mins, inverse, circular)
    return _RQS.apply(x, params, k, lower, upper, mins, inverse, circular)


# ------------------------------------------------------------------------------------------------
# Public transforms
# ------------------------------------------------------------------------------------------------


def circular_rqs(
    theta: torch.Tensor,
    params: torch.Tensor,
    *,
    inverse: bool = False,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_slope: float = 1e-3,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Circular rational-quadratic spline with bias, a bijection of the circle [0, 2 pi).

    Rezende et al. 2020 (arXiv:2002.02428), with the spline of Durkan et al. 2019
    (arXiv:1906.04032); the recipe is
    docs/physics.md, "Circular rational-quadratic spline with bias".

    Args:
        theta: [...] angles, any real values (reduced mod 2 pi first).
        params: [..., 3K+1] unnormalised, broadcast against theta:
            `params[..., 0:K]` widths `uw`, `[K:2K]` heights `uh`, `[2K:3K]` slopes `ud`,
            `[3K]` bias `b`.
            Bins `w = min_width + (1 - K min_width) softmax(uw)` (fractions of 2 pi), likewise the
            heights; knot slopes `d_k = min_slope + softplus(ud_k + log(expm1(1 - min_slope)))`,
            k = 0..K-1, and `d_K = d_0` so the derivative is continuous across 0 = 2 pi.
        inverse: apply the inverse map.
        fused: evaluate CPU tensors with the fused C++ kernel (:mod:`hpcflow.kernels`; built
            on first use; where it cannot be, tensor operations and a warning); the same map to
            rounding.

    Forward: `phi = (RQS(theta mod 2 pi) + b) mod 2 pi`.
    Inverse: `theta = RQS^-1((phi - b) mod 2 pi)`.
    Zero params give the identity.

    Returns:
        out: [...] in [0, 2 pi), dtype of theta.
        logdet: [...] log d out / d in of the map applied (for the inverse: minus the forward
            log-derivative at the preimage).
    """
    name = "circular_rqs"
    k = _n_bins(params.shape[-1], 1, name)
    _check_minima(k, min_width, min_height, min_slope, name)
    theta, params = _broadcast_to(theta, params)
    return _spline(theta, params, k, 0.0, _TWO_PI, (min_width, min_height, min_slope), inverse,
                   True, fused)


def interval_rqs(
    x: torch.Tensor,
    params: torch.Tensor,
    *,
    lower: float,
    upper: float,
    inverse: bool = False,
    min_width: float = 1e-3,
    min_height: float = 1e-3,
    min_slope: float = 1e-3,
    fused: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline on [lower, upper] with fixed end points.

    Durkan et al. 2019 (arXiv:1906.04032), without the linear tails: the map sends lower -> lower
    and upper -> upper and is a bijection of [lower, upper]. Used for the SU(2) eigen-angle on
    [0, pi] and the SU(3) canonical-cell coordinates on [0, 1]
    (docs/physics.md, "SU(N) spectral transform").

    Args:
        x: [...] points of [lower, upper]; values outside by round-off are clamped to the interval
            (they are treated as the end point, and the end slope is reported).
        params: [..., 3K+1] unnormalised, broadcast against x:
            `params[..., 0:K]` widths, `[K:2K]` heights, `[2K:3K+1]` the K+1 knot slopes (both end
            slopes are free). Same normalisation as `circular_rqs`; zero params give the identity.
        lower, upper: the interval, lower < upper.
        inverse: apply the inverse map.
        fused: as for `circular_rqs`.

    Returns:
        out: [...] in [lower, upper], dtype of x.
        logdet: [...] log d out / d in of the map applied.
    """
    name = "interval_rqs"
    if not lower < upper:
        raise ValueError(f"{name}: need lower < upper, got lower={lower}, upper={upper}")
    k = _n_bins(params.shape[-1], 1, name)
    _check_minima(k, min_width, min_height, min_slope, name)
    x, params = _broadcast_to(x, params)
    # the output needs no clamp: lerp between two knots with xi in [0, 1] stays between them
    return _spline(x, params, k, float(lower), float(upper), (min_width, min_height, min_slope),
                   inverse, False, fused)


def _ncp_eval(
    theta: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, rho: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture of NCPs without bias: value and derivative at theta [...] in [0, 2 pi].

    alpha, beta, rho [..., M]. With `u = (theta - pi) / 2`:
        g_i = pi + 2 atan2(alpha_i sin u + beta_i cos u, cos u),
        g_i' = alpha_i / (cos^2 u + (alpha_i sin u + beta_i cos u)^2).
    This is `pi + 2 atan(alpha tan u + beta)` written without the poles of tan (cos u >= 0 on
    [0, 2 pi]), so g_i(0) = 0 and g_i(2 pi) = 2 pi exactly and g_i'(0) = 1 / alpha_i.
    """
    u = (0.5 * (theta - math.pi)).unsqueeze(-1)
    su, cu = torch.sin(u), torch.cos(u)
    num = alpha * su + beta * cu
    g = math.pi + 2.0 * torch.atan2(num, cu)
    dg = alpha / (cu * cu + num * num)
    return (rho * g).sum(-1), (rho * dg).sum(-1)


def _ncp_solve(
    y: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, rho: torch.Tensor
) -> torch.Tensor:
    """Solve g(theta) = y on [0, 2 pi] for the increasing NCP mixture g (no autograd).

    Newton steps from theta = y, safeguarded as in `rtsafe` (Numerical Recipes, sec. 9.4): every
    evaluation shrinks a bracket [lo, hi] around the root, and a Newton step that would leave
    the bracket or shrink less than half as much as the step before is replaced by bisection.
    So it converges at least like bisection and quadratically near the root. An element stops
    moving when its residual is at round-off level or its Newton step is below the float
    spacing near 2 pi.
    """
    tol = 4.0 * torch.finfo(y.dtype).eps * _TWO_PI
    lo, hi, x = torch.zeros_like(y), torch.full_like(y, _TWO_PI), y.clone()
    dx_old = torch.full_like(y, _TWO_PI)
    for _ in range(200):  # bisection alone needs ~55 steps in float64, this ~2x that at worst
        g, dg = _ncp_eval(x, alpha, beta, rho)
        f = g - y
        done = f.abs() <= tol * dg.clamp_min(1.0)
        if done.all():
            break
        below = f < 0
        lo = torch.where(below, x, lo)
        hi = torch.where(below, hi, x)
        newton = x - f / dg
        use_newton = (newton > lo) & (newton < hi) & (2.0 * (newton - x).abs() <= dx_old)
        x_new = torch.where(use_newton, newton, 0.5 * (lo + hi))
        dx_old = (x_new - x).abs()
        x = torch.where(done, x, x_new)
    return x


def ncp_mixture(
    theta: torch.Tensor,
    params: torch.Tensor,
    *,
    inverse: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixture of non-compact projections with bias, a bijection of the circle [0, 2 pi).

    The non-compact projection of Rezende et al. 2020 (arXiv:2002.02428), mixed convexly as in
    Kanwar et al. 2020 (arXiv:2003.06413) and Boyda et al. 2021 (arXiv:2101.08176). Each
    component is written to fix 0 and 2 pi, so the mixture is monotone with fixed end points:
        g(theta) = sum_i rho_i [pi + 2 atan(alpha_i tan((theta - pi) / 2) + beta_i)],
        phi = (g(theta mod 2 pi) + b) mod 2 pi.
    The inverse subtracts b and solves g(theta) = y by Newton's method safeguarded by bisection
    (`_ncp_solve`); one more Newton step from the (detached) root carries the gradients with
    respect to y and params (implicit-function theorem), so the inverse is differentiable.

    Args:
        theta: [...] angles, any real values (reduced mod 2 pi first).
        params: [..., 3M+1] unnormalised, broadcast against theta: `[0:M]` log alpha,
            `[M:2M]` beta, `[2M:3M]` mixture logits (rho = softmax), `[3M]` bias b.
            Zero params give the identity (alpha = 1, beta = 0).
        inverse: apply the inverse map.

    Returns:
        out: [...] in [0, 2 pi); logdet: [...] log d out / d in of the map applied.
    """
    m = _n_bins(params.shape[-1], 1, "ncp_mixture")
    theta, params = _broadcast(theta, params)
    alpha = torch.exp(params[..., :m])
    beta = params[..., m : 2 * m]
    rho = torch.softmax(params[..., 2 * m : 3 * m], dim=-1)
    bias = params[..., 3 * m]

    if not inverse:
        g, dg = _ncp_eval(_wrap(theta), alpha, beta, rho)
        return _wrap(g + bias), torch.log(dg)

    y = _wrap(theta - bias)
    with torch.no_grad():
        root = _ncp_solve(y.detach(), alpha.detach(), beta.detach(), rho.detach())
    g, dg = _ncp_eval(root, alpha, beta, rho)
    x = root - (g - y) / dg
    # evaluated again at x (equal to root in value) so that the log-derivative also carries
    # its dependence on params through the preimage
    return _wrap(x), -torch.log(_ncp_eval(x, alpha, beta, rho)[1])
