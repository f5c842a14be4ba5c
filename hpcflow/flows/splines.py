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


def _knots(u: torch.Tensor, lower: float, upper: float, min_bin: float) -> torch.Tensor:
    """Knot positions [..., K+1] from unnormalised bin sizes u [..., K].

    Bin fractions `min_bin + (1 - K min_bin) softmax(u)`; knots `lower + (upper - lower) cumsum`.
    The end knots are set to `lower` and `upper` exactly, so every point of the interval falls in
    a bin and the bin sizes used later are differences of these knots (consistent to the last bit).
    """
    k = u.shape[-1]
    frac = min_bin + (1.0 - k * min_bin) * torch.softmax(u, dim=-1)
    inner = lower + (upper - lower) * torch.cumsum(frac[..., :-1], dim=-1)
    lo = torch.full_like(u[..., :1], lower)
    hi = torch.full_like(u[..., :1], upper)
    return torch.cat([lo, inner, hi], dim=-1)


def _slopes(u: torch.Tensor, min_slope: float) -> torch.Tensor:
    """Knot slopes `min_d + softplus(u + log(expm1(1 - min_d)))`: equal to 1 at u = 0."""
    return min_slope + F.softplus(u + math.log(math.expm1(1.0 - min_slope)))


def _bin_index(x: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Bin k with knots[k] <= x < knots[k+1], clamped to [0, K-1]; x [...], knots [..., K+1].

    Counting interior knots <= x is a searchsorted that is clamped by construction (x at or
    beyond the last knot lands in the last bin) and needs no contiguous memory.
    """
    return (x.unsqueeze(-1) >= knots[..., 1:-1]).sum(dim=-1, keepdim=True)


def _clamp(x: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Clamp the value but keep d/dx = 1: the clamps here only remove round-off, and a zero
    gradient there would contradict the reported log-derivative."""
    return x + (x.clamp(lo, hi) - x).detach()


def _take(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return torch.gather(t, -1, idx).squeeze(-1)


def _rqs(
    x: torch.Tensor,
    xk: torch.Tensor,
    yk: torch.Tensor,
    d: torch.Tensor,
    inverse: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monotone rational-quadratic spline through knots (xk, yk) with knot slopes d.

    x [...] inside [xk_0, xk_K] (forward) or [yk_0, yk_K] (inverse); xk, yk, d [..., K+1].
    In bin k, with `w = xk_{k+1} - xk_k`, `h = yk_{k+1} - yk_k`, `s = h / w`, `xi = (x - xk_k) / w`
    and `den = s + (d_{k+1} + d_k - 2 s) xi (1 - xi)` (Durkan et al. 2019, eqs. 4 and 5):
        y = yk_k + h (s xi^2 + d_k xi (1 - xi)) / den,
        log y' = 2 log s + log(d_{k+1} xi^2 + 2 s xi (1 - xi) + d_k (1 - xi)^2) - 2 log den.
    The inverse solves `a xi^2 + b xi + c = 0` (Durkan et al. 2019, appendix A) for the root
    `xi = 2c / (-b - sqrt(b^2 - 4ac)) = (-b + sqrt(b^2 - 4ac)) / (2a)`. The first form cancels
    when b < 0 (near the top of a bin whose end slope exceeds 2 s; in float32 that cost 1e-4 in
    round trips), the second when b > 0, so each is used where it does not cancel.
    Returns (out, logdet) of the map applied.
    """
    idx = _bin_index(x, yk if inverse else xk)
    x0, x1 = _take(xk, idx), _take(xk, idx + 1)
    y0, y1 = _take(yk, idx), _take(yk, idx + 1)
    d0, d1 = _take(d, idx), _take(d, idx + 1)
    w, h = x1 - x0, y1 - y0
    s = h / w
    curv = d1 + d0 - 2.0 * s

    if inverse:
        dy = x - y0
        a = h * (s - d0) + dy * curv
        b = h * d0 - dy * curv
        c = -s * dy
        sq = torch.sqrt((b * b - 4.0 * a * c).clamp_min(0.0))
        # both branches are evaluated: the unused denominator is replaced by 1 so that it
        # cannot put NaN into the gradient. With b >= 0, -b - sq < 0 (c = 0 only if D = 0, and
        # then b = h d_k > 0); with b < 0, a > 0 because the root lies in [0, 1].
        pos = b >= 0
        one = torch.ones_like(b)
        xi_pos = 2.0 * c / torch.where(pos, -b - sq, one)
        xi_neg = (sq - b) / torch.where(pos, one, 2.0 * a)
        xi = _clamp(torch.where(pos, xi_pos, xi_neg), 0.0, 1.0)
    else:
        xi = _clamp((x - x0) / w, 0.0, 1.0)

    om = xi * (1.0 - xi)
    den = s + curv * om
    logdet = (
        2.0 * torch.log(s)
        + torch.log(d1 * xi * xi + 2.0 * s * om + d0 * (1.0 - xi) ** 2)
        - 2.0 * torch.log(den)
    )
    if inverse:
        return torch.lerp(x0, x1, xi), -logdet
    # lerp returns the knots exactly at xi = 0 and 1, so end points stay fixed to the last bit
    return torch.lerp(y0, y1, (s * xi * xi + d0 * om) / den), logdet


def _wrap(theta: torch.Tensor) -> torch.Tensor:
    """theta mod 2 pi in [0, 2 pi). `remainder` of a tiny negative number rounds to exactly 2 pi,
    which is the same point of the circle as 0."""
    t = torch.remainder(theta, _TWO_PI)
    return torch.where(t >= _TWO_PI, t - _TWO_PI, t)


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
    theta, params = _broadcast(theta, params)
    xk = _knots(params[..., :k], 0.0, _TWO_PI, min_width)
    yk = _knots(params[..., k : 2 * k], 0.0, _TWO_PI, min_height)
    d = _slopes(params[..., 2 * k : 3 * k], min_slope)
    bias = params[..., 3 * k]
    d = torch.cat([d, d[..., :1]], dim=-1)

    if inverse:
        out, logdet = _rqs(_wrap(theta - bias), xk, yk, d, inverse=True)
        return _wrap(out), logdet
    out, logdet = _rqs(_wrap(theta), xk, yk, d, inverse=False)
    return _wrap(out + bias), logdet


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

    Returns:
        out: [...] in [lower, upper], dtype of x.
        logdet: [...] log d out / d in of the map applied.
    """
    name = "interval_rqs"
    if not lower < upper:
        raise ValueError(f"{name}: need lower < upper, got lower={lower}, upper={upper}")
    k = _n_bins(params.shape[-1], 1, name)
    _check_minima(k, min_width, min_height, min_slope, name)
    x, params = _broadcast(x, params)
    xk = _knots(params[..., :k], lower, upper, min_width)
    yk = _knots(params[..., k : 2 * k], lower, upper, min_height)
    d = _slopes(params[..., 2 * k :], min_slope)
    # the output needs no clamp: lerp between two knots with xi in [0, 1] stays between them
    return _rqs(_clamp(x, lower, upper), xk, yk, d, inverse=inverse)


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
