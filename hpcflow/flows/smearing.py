"""A learned stout-smearing layer: the few-parameter flow layer of stochastic normalizing flows.

One layer visits the ``2 Nd`` checkerboard halves of the links (direction ``mu``, parity of
``sum_{nu != mu} x_nu``: the sets the heat bath updates together, whose links share no staple)
and moves every link of a half along the gradient of its own part of the Wilson action,

    U -> U' = exp(-rho Pi(U A)) U,        rho = rho_max tanh(p_{mu, parity} rho_1 / rho_max),

with ``A`` the staple sum (frozen: no link of the half is in another's staple) and ``Pi`` the
projection onto the Lie algebra: a stout-smearing step (Morningstar & Peardon, Phys. Rev. D 69
(2004) 054501), i.e. an Euler step of the gradient flow, with one learned ``rho`` per half. It
is gauge covariant (``U A`` transforms by conjugation), so ``log q`` stays gauge invariant.

Jacobian (Haar measure, left-invariant coordinates ``U(omega) = exp(omega.T) U``), per link,
with ``W = U A``, ``X = -rho Pi(W)``, ``M = ad_X`` and ``D_ab = Re tr(T_a^dag T_b W)``::

    J = exp(M) (1 - rho G(M) D),        G(M) = (1 - exp(-M)) / M = sum_k (-M)^k / (k + 1)!,

and ``det exp(M) = 1`` (``ad_X`` is antisymmetric), so ``log det J = log det(1 - rho G(M) D)``.
U(1): ``M = 0``, ``D = |A| cos(theta + arg A)``, ``log J = log(1 - rho |A| cos(...))``.
Since ``|D| <= |W| <= 2 (Nd - 1)`` and ``|G| <= 1``, ``|rho| < 1 / (2 (Nd - 1))`` keeps every
``J`` positive definite and the map a bijection: ``rho_max`` is 0.95 of that bound.

**Units of the parameters and the first-order start.** Each layer's step size is
``rho = rho_max tanh(p rho_1 / rho_max)``: ``p`` counts units of ``rho_1``
(:func:`first_order_rho`), the step that makes the layer carry its protocol step's change of
coupling ``dbeta`` to first order. At ``beta -> 0`` (Haar links), with ``c = (1/N) Re tr sum_a
T_a^dag T_a`` (``(N^2 - 1)/N`` for SU(N), 1 for U(1)) and ``S_1 = -(1/N) sum_P Re tr P``:
``log|det J| = -rho c sum Re tr(U A) + O(rho^2)``, the sum over the ``2 Nd`` halves counts every
plaquette four times (once in each half of both its directions), so ``log|det J| = 4 c N rho S_1
+ O(rho^2)``, and the step's work ``dbeta S_1 - log|det J| + beta (S_1(U') - S_1(U))`` loses its
linear dependence on the configuration for ``rho_1 = dbeta / (4 c N)``; what is left is
``O(beta rho)`` (the action change of the smearing) and ``O(rho^2)``. Measured (perf/RESULTS.md):
SU(3) 4^4 at beta = 1, 50 steps, no training: ``var W`` 0.02 against 1.66 for annealing. Since
``rho_1 ~ 1/n``, ``p`` is of order one for every protocol length and one learning rate fits all
``n``; ``p = 1`` (``sampler.init: first_order``) or ``p = 0`` (``identity``: the layer starts as
the identity map) at construction.

A protocol of many layers may share its parameters (:class:`StoutSchedule`): ``p`` of every
half becomes a piecewise-linear function of the protocol time with a few knots, so that every
layer's gradient trains the same few numbers. Each layer then gets the summed signal of its
neighbours instead of its own noisy one (the optimal ``rho`` varies smoothly along a protocol),
which trains the U(1) 3D and 4D flows in one to three minutes on two CPU cores (perf/RESULTS.md).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..lattice.algebra import algebra_basis, algebra_exp, project_algebra
from ..lattice.groups import Group
from ..updates.heatbath import staple_at

__all__ = ["StoutSchedule", "StoutSmearing", "first_order_rho", "hat_weights", "series_terms",
           "stout_logdet"]


def _structure(basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``F[a, b, c] = coord_a([T_c, T_b])`` (so ``ad_X = F . x``) and the products
    ``P[a, b] = T_a^dag T_b``: ``[n, n, n]`` real and ``[n, n, Nc, Nc]`` complex."""
    dag = basis.conj().transpose(-1, -2)
    comm = torch.einsum("cij,bjk->cbik", basis, basis) - torch.einsum("bij,cjk->cbik", basis,
                                                                       basis)
    f = torch.einsum("aji,cbij->abc", dag, comm).real  # Re tr(T_a^dag [T_c, T_b])
    return f, torch.einsum("aij,bjk->abik", dag, basis)


def series_terms(norm: float, tol: float = 1e-17, cap: int = 60) -> int:
    """Terms ``K`` of ``G(M) = sum_k (-M)^k / (k + 1)!`` for which the tail after them,
    bounded by ``a^K / (K + 1)! e^a`` with ``a = norm >= |M|`` (any submultiplicative norm),
    is below ``tol`` relative: 1 at ``M = 0``, ~10 at ``|M| ~ 0.3``, ~30 at ``|M| ~ 3``."""
    k, bound = 1, norm * math.exp(norm) / 2
    while bound > tol and k < cap:
        k += 1
        bound *= norm / (k + 1)
    return k


def stout_logdet(w: torch.Tensor, rho: torch.Tensor, basis: torch.Tensor,
                 terms: int | None = None, structure=None) -> torch.Tensor:
    """``log det J`` of ``U -> exp(-rho Pi(U A)) U`` at fixed ``A`` (module docstring).

    w: ``U A``, ``[..., Nc, Nc]``; rho: broadcastable to ``[...]``; basis: the algebra basis
    ``[n, Nc, Nc]``. Returns ``[...]``. ``G(M)`` by its power series in Horner form, with
    ``terms`` terms; by default as many as the largest ``|M|`` of the batch needs for a tail
    below 1e-17 (:func:`series_terms`; the Frobenius norm bounds the spectral one).
    ``structure``: ``_structure(basis)``, computed once by the caller that calls often.
    """
    rho = torch.as_tensor(rho, dtype=w.real.dtype, device=w.device)
    n = basis.shape[0]
    if n == 1:  # U(1): M = 0
        d = (basis.conj()[0, 0, 0] * basis[0, 0, 0] * w[..., 0, 0]).real
        return torch.log1p(-rho * d)
    f, prod = _structure(basis) if structure is None else structure
    x = -rho[..., None] * torch.einsum("akl,...kl->...a", basis.conj(), project_algebra(w)).real
    m = torch.einsum("abc,...c->...ab", f, x).contiguous()
    d = torch.einsum("abij,...ji->...ab", prod, w).real.contiguous()
    if terms is None:
        with torch.no_grad():
            terms = series_terms(float(m.flatten(-2).norm(dim=-1).max()) if m.numel() else 0.0)
    # Horner on G D itself: G D = D - M/2 (D - M/3 (... (D - M D / terms))), one fused
    # multiply-add per term (baddbmm) instead of a product, a division and a subtraction
    lead = m.shape[:-2]
    m3, d3 = m.reshape(-1, n, n), d.expand(m.shape).reshape(-1, n, n)
    gd = d3
    for k in range(terms, 1, -1):
        gd = torch.baddbmm(d3, m3, gd, alpha=-1.0 / k)
    eye = torch.eye(n, dtype=m.dtype, device=m.device)
    return torch.linalg.slogdet(eye - rho[..., None, None] * gd.reshape(*lead, n, n))[1]


def first_order_rho(basis: torch.Tensor, dbeta: float) -> float:
    """``rho_1 = dbeta / (4 c N)``: the stout step that carries a change ``dbeta`` of the Wilson
    coupling to first order at ``beta -> 0`` (module docstring), with ``c = (1/N) Re tr sum_a
    T_a^dag T_a`` of the orthonormal algebra basis ``[n, N, N]`` (``(N^2 - 1)/N`` for SU(N), 1
    for U(1)). Negative for a falling coupling, 0 for none."""
    nc = basis.shape[-1]
    casimir = float(torch.einsum("aij,aji->", basis.conj().transpose(-1, -2), basis).real) / nc
    return float(dbeta) / (4 * casimir * nc)


def hat_weights(times, knots: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Piecewise-linear interpolation weights ``[len(times), knots]``: row ``i`` holds the
    weights of the knots ``0, 1/(K-1), ..., 1`` at ``times[i]`` in ``[0, 1]`` (two neighbours,
    summing to 1; ``knots = 1``: all ones, one shared value)."""
    t = torch.as_tensor(list(times), dtype=dtype)
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        raise ValueError(f"protocol times must lie in [0, 1], got {t.tolist()}")
    if knots < 1:
        raise ValueError(f"knots must be >= 1, got {knots}")
    if knots == 1:
        return torch.ones(t.numel(), 1, dtype=dtype)
    grid = torch.linspace(0, 1, knots, dtype=dtype)
    return (1 - (t[:, None] - grid[None, :]).abs() * (knots - 1)).clamp(min=0)


class StoutSchedule(nn.Module):
    """The parameters of every stout layer of a protocol, shared (module docstring).

    nd: lattice dimension; times: ``[n_layers]`` protocol times ``position / steps`` of the
    layers, in ``[0, 1]``; knots: ``K >= 1``. Parameters ``p [K, Nd, 2]``, all ``init`` at
    construction (1: the first-order layers, 0: the identity; module docstring); ``self(i)`` is
    layer ``i``'s ``p [Nd, 2]``, interpolated linearly in time between the knots.
    """

    def __init__(self, nd: int, times, knots: int, dtype: torch.dtype = torch.float64,
                 init: float = 0.0):
        super().__init__()
        self.p = nn.Parameter(torch.full((knots, nd, 2), float(init), dtype=dtype))
        self.register_buffer("weights", hat_weights(times, knots, dtype), persistent=False)

    def forward(self, index: int) -> torch.Tensor:
        return torch.einsum("k,kmp->mp", self.weights[index], self.p)


class StoutSmearing(nn.Module):
    """One learned stout-smearing layer over all links (module docstring).

    group, shape: the lattice (even extents); ``links [B, Nd, *L, Nc, Nc] -> (links',
    log|det J| [B])``. Parameters: ``p [Nd, 2]`` (one ``rho`` per checkerboard half), all
    ``init`` at construction (0: the identity map); or, with ``schedule`` (a
    :class:`StoutSchedule` shared by the layers of a protocol), none of its own: ``p =
    schedule(index)``. rho_unit: ``rho_1`` of the layer's step (:func:`first_order_rho`, saved
    with the parameters), so that ``rho = rho_max tanh(p rho_1 / rho_max)``; ``None``:
    ``rho_max`` (``rho = rho_max tanh(p)``, the convention of checkpoints written before the
    units existed, which load with it).
    """

    # 2: the rho_unit buffer (version 1 state dicts meant rho = rho_max tanh(p))
    _version = 2

    def __init__(self, group: Group, shape, dtype: torch.dtype = torch.float64,
                 schedule: StoutSchedule | None = None, index: int = 0,
                 rho_unit: float | None = None, init: float = 0.0):
        super().__init__()
        self.group = group
        self.shape = tuple(shape)
        nd = len(self.shape)
        self.rho_max = 0.95 / (2 * (nd - 1))
        # a shared schedule is registered in every layer: .to() moves it, parameters() and the
        # optimizer see it once (state_dict repeats it under each layer's name)
        self.schedule, self.index = schedule, int(index)
        self.p = (nn.Parameter(torch.full((nd, 2), float(init), dtype=dtype))
                  if schedule is None else None)
        unit = self.rho_max if rho_unit is None else float(rho_unit)
        if not math.isfinite(unit) or unit == 0:
            raise ValueError(f"rho_unit must be finite and non-zero, got {rho_unit}")
        self.register_buffer("rho_unit", torch.tensor(unit, dtype=dtype))
        complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
        self.register_buffer("basis", algebra_basis(group, dtype=complex_dtype),
                             persistent=False)
        f, prod = _structure(self.basis) if group.nc > 1 else (None, None)
        self.register_buffer("structure_f", f, persistent=False)
        self.register_buffer("structure_prod", prod, persistent=False)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if local_metadata.get("version", 1) < 2 and prefix + "rho_unit" not in state_dict:
            state_dict[prefix + "rho_unit"] = torch.tensor(self.rho_max,
                                                           dtype=self.rho_unit.dtype)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def rho(self) -> torch.Tensor:
        """``rho = rho_max tanh(p rho_1 / rho_max)``: ``[Nd, 2]``."""
        p = self.p if self.schedule is None else self.schedule(self.index)
        return self.rho_max * torch.tanh(p * (self.rho_unit / self.rho_max))

    def forward(self, links: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g = self.group
        batch, nd, nc = links.shape[0], links.shape[1], g.nc
        volume = math.prod(self.shape)
        rho = self.rho()
        logdet = links.new_zeros(batch, dtype=rho.dtype)
        flat = links.reshape(batch, nd * volume, nc, nc)  # link (mu, x) at mu * V + x
        # without autograd (sampling) one copy of the links is updated in place; with it every
        # half makes a new tensor, as the graph needs
        inplace = not torch.is_grad_enabled()
        if inplace:
            flat = flat.clone()
        for mu in range(nd):
            for parity in (0, 1):
                sites, a = staple_at(flat.view_as(links), mu, parity, g)
                rows = sites + mu * volume
                u = flat.index_select(1, rows)
                w = g.mul(u, a)
                r = rho[mu, parity]
                logdet = logdet + stout_logdet(
                    w, r, self.basis, structure=(self.structure_f, self.structure_prod)).sum(1)
                new = g.mul(algebra_exp(-r * project_algebra(w), g), u)
                flat = (flat.index_copy_(1, rows, new) if inplace
                        else flat.index_copy(1, rows, new))
        return flat.view_as(links), logdet
