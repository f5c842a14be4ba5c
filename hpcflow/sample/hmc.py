"""Hybrid Monte Carlo for U(1) and SU(N) lattice gauge theory in any dimension.

The conventional Markov chain that the flows are validated against in 3D/4D, where no exact
answer exists (PHYSICS.md, "Exact results"). One trajectory (Duane, Kennedy, Pendleton, Roweth,
Phys. Lett. B 195 (1987) 216; Gattringer & Lang, "Quantum Chromodynamics on the Lattice",
ch. 8):

1. draw momenta ``P_mu(x)`` in the Lie algebra with density ``~ exp(-K(P))``;
2. integrate Hamilton's equations of ``H = K(P) + S(U)`` for ``n_steps`` steps of size ``eps``
   with a reversible, volume-preserving integrator (leapfrog, or Omelyan's 2nd-order minimum-norm
   scheme: Omelyan, Mryglod, Folk, Comput. Phys. Commun. 151 (2003) 272);
3. accept the end point with probability ``min(1, exp(-dH))``, ``dH = H_end - H_start``,
   otherwise keep the old links. The chain is exact for any ``eps``; ``eps`` only sets the rate.

Conventions (all in this file)
------------------------------
- Algebra: traceless anti-Hermitian matrices (for U(1), ``i R``), inner product
  ``<A, B> = Re tr(A^dag B) = -Re tr(A B)``, orthonormal basis ``T_a`` (:func:`algebra_basis`:
  ``i/sqrt(2)`` times the generalized Gell-Mann matrices, ``T = i`` for U(1)).
- Momenta ``P = sum_a p_a T_a``, ``p_a ~ N(0, 1)`` independently on every link, so
  ``K = (1/2) sum_a p_a^2 = (1/2) sum_ij |P_ij|^2 = -(1/2) tr P^2`` (summed over links).
- Coordinates around ``U``: ``U(omega) = exp(sum_a omega_a T_a) U`` (left multiplication).
  Hamilton's equations: ``dU/dt = P U``, ``dP/dt = -F`` with the force
  ``F = sum_a T_a dS/domega_a``. The integrators update ``U <- exp(eps P) U``.
- Force of ``S = -(beta/Nc) sum_x [c0 sum Re tr P + c1 sum Re tr R]`` (``c0 = 1 - 8 c1``,
  :class:`~hpcflow.lattice.action.GaugeAction`): ``F_mu(x) = (beta/Nc) Pi(U_mu(x) A_mu(x))``
  with ``A`` the staple sum (:func:`staples`) and ``Pi(M) = (M - M^dag)/2 - tr(M - M^dag)/(2 Nc)``
  the traceless anti-Hermitian part (``i Im M`` for U(1)).

Layouts: ``links, momenta, forces, staples: [B, Nd, L_0, ..., L_{Nd-1}, Nc, Nc]`` complex
(``Nc = 1`` for U(1)); energies, ``dH``, acceptance, step sizes: ``[B]``.

Randomness: chain ``b`` draws every random number (hot start, momenta, accept/reject) from its own
``torch.Generator`` seeded from the integer ``seed + b``, so at a given step size chain ``b`` of a
batch equals the single chain run with seed ``seed + b``: the batch dimension is only
vectorization. Step-size tuning (thermalization only) uses the batch-mean acceptance by default,
which couples the chains' step sizes; ``thermalize(..., per_chain=True)`` tunes every chain on
its own acceptance instead, so that a chain depends on its seed alone, at the price of a noisier
step size.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ..lattice.action import GaugeAction
from ..lattice.groups import Group, get_group
from ..lattice.loops import Path, loops_of_shape, path_product, reroot

__all__ = [
    "HMC",
    "INTEGRATORS",
    "OMELYAN_LAMBDA",
    "algebra_basis",
    "algebra_exp",
    "binned_mean_error",
    "chain_seed",
    "force",
    "integrate",
    "kinetic_energy",
    "project_algebra",
    "staple_paths",
    "staples",
]

#: Omelyan, Mryglod, Folk (2003), 2nd-order minimum-norm scheme (Takaishi & de Forcrand 2006).
OMELYAN_LAMBDA = 0.1931833
INTEGRATORS = ("leapfrog", "omelyan")

ForceFn = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------- Lie algebra


def algebra_basis(group: Group, *, dtype=torch.complex128, device=None) -> torch.Tensor:
    """Orthonormal basis ``T_a`` of the Lie algebra: ``[n_gen, Nc, Nc]``.

    Anti-Hermitian, traceless for SU(N), ``Re tr(T_a^dag T_b) = delta_ab``. U(1): ``[[i]]``.
    SU(N), ``n_gen = N^2 - 1``: ``i (E_jk + E_kj)/sqrt 2``, ``(E_jk - E_kj)/sqrt 2`` for ``j < k``
    and ``i (E_00 + ... + E_{l-1,l-1} - l E_ll)/sqrt(l (l + 1))`` for ``l = 1 .. N-1``
    (``i/sqrt 2`` times the generalized Gell-Mann matrices).
    """
    n = group.nc
    if n == 1:
        return torch.full((1, 1, 1), 1j, dtype=dtype, device=device)
    basis = []
    for j in range(n):
        for k in range(j + 1, n):
            sym = torch.zeros(n, n, dtype=dtype)
            sym[j, k] = sym[k, j] = 1j / math.sqrt(2)
            anti = torch.zeros(n, n, dtype=dtype)
            anti[j, k], anti[k, j] = 1 / math.sqrt(2), -1 / math.sqrt(2)
            basis += [sym, anti]
    for l in range(1, n):
        diag = torch.zeros(n, dtype=dtype)
        diag[:l] = 1.0
        diag[l] = -l
        basis.append(torch.diag(diag) * (1j / math.sqrt(l * (l + 1))))
    return torch.stack(basis).to(device)


def project_algebra(m: torch.Tensor, group: Group) -> torch.Tensor:
    """``Pi(M)``: the traceless anti-Hermitian part ``(M - M^dag)/2 - tr(M - M^dag)/(2 Nc)``.

    This is the orthogonal projection onto the algebra for ``<A, B> = Re tr(A^dag B)``, so
    ``Re tr(T_a^dag M) = Re tr(T_a^dag Pi(M))`` for every generator. U(1): ``i Im M``.
    ``[..., Nc, Nc] -> [..., Nc, Nc]``.
    """
    a = 0.5 * (m - m.conj().transpose(-1, -2))
    if group.nc > 1:
        tr = a.diagonal(dim1=-2, dim2=-1).sum(-1) / group.nc
        a = a - tr[..., None, None] * torch.eye(group.nc, dtype=a.dtype, device=a.device)
    return a


def algebra_exp(x: torch.Tensor, group: Group) -> torch.Tensor:
    """Group element ``exp(X)`` of algebra elements ``X: [..., Nc, Nc]``.

    Closed forms where they exist (both exact to round-off, checked against
    ``torch.linalg.matrix_exp`` in the tests, and several times faster on batches of small
    matrices): U(1) the elementwise exponential of ``i theta``; SU(2)
    ``exp(X) = cos(t) I + (sin(t)/t) X`` with ``t^2 = -tr(X^2)/2``; SU(3) Cayley-Hamilton
    (:func:`_exp_su3`). SU(N), N >= 4: ``torch.linalg.matrix_exp``.
    ``exp(-X) = exp(X)^{-1}`` to round-off, as reversibility needs.
    """
    n = group.nc
    if n == 1:
        return torch.exp(x)
    if n == 2:
        t = torch.sqrt((-0.5 * _trace_of_product(x, x).real).clamp_min(0.0))
        cos = torch.cos(t)[..., None, None]
        sinc = torch.sinc(t / math.pi)[..., None, None]  # sin(t)/t, = 1 at t = 0
        return cos * torch.eye(2, dtype=x.dtype, device=x.device) + sinc * x
    if n == 3:
        return _exp_su3(x)
    return torch.linalg.matrix_exp(x)


def _trace_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``tr(A B)`` without forming ``A B``: ``[..., n, n] x [..., n, n] -> [...]``."""
    return (a * b.transpose(-1, -2)).sum((-1, -2))


def _exp_su3(x: torch.Tensor) -> torch.Tensor:
    """``exp(X)`` for traceless anti-Hermitian 3x3 ``X`` by Cayley-Hamilton
    (Morningstar & Peardon, Phys. Rev. D 69 (2004) 054501, sec. III).

    With the Hermitian traceless ``Q = -i X``: ``exp(i Q) = f0 I + f1 Q + f2 Q^2``,
    ``c0 = det Q = tr(Q^3)/3``, ``c1 = tr(Q^2)/2``, ``c0max = 2 (c1/3)^(3/2)``,
    ``theta = arccos(|c0|/c0max)``, ``u = sqrt(c1/3) cos(theta/3)``, ``w = sqrt(c1) sin(theta/3)``,
    ``f_j = h_j / (9 u^2 - w^2)`` with ``xi0(w) = sin(w)/w`` and
    ``h0 = (u^2 - w^2) e^{2iu} + e^{-iu} [8 u^2 cos w + 2 i u (3 u^2 + w^2) xi0]``,
    ``h1 = 2 u e^{2iu} - e^{-iu} [2 u cos w - i (3 u^2 - w^2) xi0]``,
    ``h2 = e^{2iu} - e^{-iu} [cos w + 3 i u xi0]``; for ``c0 < 0``:
    ``f_j(c0) = (-1)^j f_j(-c0)^*``. ``9 u^2 - w^2 >= 2 c1``: only ``Q = 0`` needs its limit
    ``(f0, f1, f2) = (1, i, -1/2)``.
    """
    q = -1j * x
    q2 = q @ q
    c1 = 0.5 * q2.diagonal(dim1=-2, dim2=-1).sum(-1).real
    c0 = _trace_of_product(q2, q).real / 3.0
    tiny = torch.finfo(c1.dtype).tiny ** 0.5
    safe = c1 > tiny
    c1s = torch.where(safe, c1, torch.ones_like(c1))
    c0max = 2.0 * (c1s / 3.0) ** 1.5
    theta = torch.arccos((c0.abs() / c0max).clamp(max=1.0))
    u = torch.sqrt(c1s / 3.0) * torch.cos(theta / 3.0)
    w = torch.sqrt(c1s) * torch.sin(theta / 3.0)
    u2, w2 = u * u, w * w
    xi0 = torch.sinc(w / math.pi)
    cos_w = torch.cos(w)
    e2iu = torch.polar(torch.ones_like(u), 2.0 * u)
    emiu = torch.polar(torch.ones_like(u), -u)
    h0 = (u2 - w2) * e2iu + emiu * torch.complex(8 * u2 * cos_w, 2 * u * (3 * u2 + w2) * xi0)
    h1 = 2 * u * e2iu - emiu * torch.complex(2 * u * cos_w, -(3 * u2 - w2) * xi0)
    h2 = e2iu - emiu * torch.complex(cos_w, 3 * u * xi0)
    den = 9 * u2 - w2
    neg = c0 < 0
    f = []
    for j, (h, limit) in enumerate(((h0, 1.0), (h1, 1j), (h2, -0.5))):
        fj = h / den
        fj = torch.where(neg, (-1) ** j * fj.conj(), fj)
        f.append(torch.where(safe, fj, torch.full_like(fj, limit)))
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    return f[0][..., None, None] * eye + f[1][..., None, None] * q + f[2][..., None, None] * q2


def kinetic_energy(momenta: torch.Tensor) -> torch.Tensor:
    """``K = (1/2) sum_links sum_ij |P_ij|^2 = -(1/2) sum_links tr P^2``:
    ``[B, Nd, *L, Nc, Nc] -> [B]`` real."""
    return 0.5 * (momenta.real.square() + momenta.imag.square()).flatten(1).sum(1)


# --------------------------------------------------------------------------------- force


@functools.cache
def staple_paths(nd: int, shape: str) -> tuple[tuple[Path, ...], ...]:
    """Open staple paths of one loop family, per link direction: ``paths[mu]``.

    Every loop of the family (:func:`~hpcflow.lattice.loops.loops_of_shape`) is re-rooted at
    each of its steps along ``mu`` (:func:`~hpcflow.lattice.loops.reroot`, which reverses the loop
    for a backward step: ``Re tr W^dag = Re tr W``) so that it reads ``+mu, rest``; ``rest`` runs
    from ``x + mu`` back to ``x``. Summing over all steps is the product rule, so a loop that
    passes a link twice (small lattices) is handled as well.
    """
    out: list[list[Path]] = [[] for _ in range(nd)]
    for loop in loops_of_shape(shape, nd):
        for i in range(len(loop.path)):
            new, _ = reroot(loop.path, i, nd)
            out[new[0][0]].append(new[1:])
    return tuple(tuple(p) for p in out)


def staples(links: torch.Tensor, group: Group, c1: float = 0.0) -> torch.Tensor:
    """Staple sums ``A_mu(x)``: ``[B, Nd, *L, Nc, Nc] -> [B, Nd, *L, Nc, Nc]``.

    ``A_mu(x) = c0 sum (plaquette staples) + c1 sum (rectangle staples)``, ``c0 = 1 - 8 c1``,
    each staple the product of the rest of a re-rooted loop (:func:`staple_paths`) evaluated
    from ``x + mu`` by the path walker. Defining property (cf. Gattringer & Lang ch. 8):
    ``d/dt S(exp(t X) U)|_0 = -(beta/Nc) sum_{x,mu} Re tr(X_mu(x) U_mu(x) A_mu(x))``.
    """
    nd = links.shape[1]
    families = [("plaquette", 1.0 - 8.0 * c1)]
    if c1 != 0.0:
        families.append(("rectangle", c1))
    out = []
    for mu in range(nd):
        acc = 0.0
        for shape, coef in families:
            fam = sum(path_product(links, path, group) for path in staple_paths(nd, shape)[mu])
            acc = acc + (fam if coef == 1.0 else coef * fam)
        out.append(torch.roll(acc, -1, dims=1 + mu))  # evaluate at x + mu
    return torch.stack(out, dim=1)


def force(links: torch.Tensor, action: GaugeAction) -> torch.Tensor:
    """HMC force ``F_mu(x) = (beta/Nc) Pi(U_mu(x) A_mu(x))`` (module docstring):
    ``[B, Nd, *L, Nc, Nc] -> [B, Nd, *L, Nc, Nc]`` algebra elements with
    ``Re tr(T_a^dag F) = dS/domega_a``, ``U(omega) = exp(sum_a omega_a T_a) U``."""
    group = action.group
    a = staples(links, group, action.c1)
    return (action.beta / group.nc) * project_algebra(group.mul(links, a), group)


# --------------------------------------------------------------------------------- integrators


def _broadcast_eps(step_size, links: torch.Tensor) -> torch.Tensor:
    """Step size ``float`` or ``[B]`` -> ``[B, 1, ..., 1]`` for the link layout."""
    eps = torch.as_tensor(step_size, dtype=links.real.dtype, device=links.device)
    if eps.ndim == 0:
        return eps
    return eps.reshape(-1, *([1] * (links.ndim - 1)))


def integrate(
    links: torch.Tensor,
    momenta: torch.Tensor,
    force_fn: ForceFn,
    step_size,
    n_steps: int,
    group: Group,
    integrator: str = "omelyan",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Molecular dynamics trajectory of length ``n_steps * eps``: ``(U, P) -> (U', P')``.

    ``T_U(e): U <- exp(e P) U``; ``T_P(e): P <- P - e F(U)``.

    - ``"leapfrog"``: ``[T_P(eps/2) T_U(eps) T_P(eps/2)]^n``, ``n + 1`` force evaluations.
    - ``"omelyan"``: ``[T_P(l eps) T_U(eps/2) T_P((1-2l) eps) T_U(eps/2) T_P(l eps)]^n`` with
      ``l = 0.1931833`` (Omelyan, Mryglod, Folk 2003, 2nd-order minimum norm), ``2n + 1`` force
      evaluations. Both are time-reversible and volume-preserving with errors ``dH = O(eps^2)``;
      consecutive momentum updates are merged.

    links, momenta: ``[B, Nd, *L, Nc, Nc]``; ``step_size``: float or ``[B]`` (one per chain).
    """
    if integrator not in INTEGRATORS:
        raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
    eps = _broadcast_eps(step_size, links)
    u, p = links, momenta

    def move_u(e):
        return group.mul(algebra_exp(e * p, group), u)

    if integrator == "leapfrog":
        p = p - 0.5 * eps * force_fn(u)
        for i in range(n_steps):
            u = move_u(eps)
            p = p - (eps if i < n_steps - 1 else 0.5 * eps) * force_fn(u)
        return u, p
    lam = OMELYAN_LAMBDA
    p = p - lam * eps * force_fn(u)
    for i in range(n_steps):
        u = move_u(0.5 * eps)
        p = p - (1.0 - 2.0 * lam) * eps * force_fn(u)
        u = move_u(0.5 * eps)
        p = p - (2.0 * lam if i < n_steps - 1 else lam) * eps * force_fn(u)
    return u, p


# --------------------------------------------------------------------------------- statistics


def binned_mean_error(series, bin_size: int) -> tuple[float, float]:
    """Mean and its standard error from non-overlapping bins of ``bin_size`` trajectories.

    series: ``[T]`` or ``[T, C]`` (``C`` independent chains; each chain is binned along ``T``,
    a tail shorter than one bin is dropped). The error is ``std(bin means)/sqrt(n_bins)`` over
    all ``C * (T // bin_size)`` bins: valid once ``bin_size`` exceeds the autocorrelation time
    (increase it until the error stops growing).
    """
    x = np.asarray(series, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    n_per_chain = x.shape[0] // bin_size
    if bin_size < 1 or n_per_chain * x.shape[1] < 2:
        raise ValueError(f"need at least 2 bins: series {x.shape}, bin_size {bin_size}")
    bins = x[: n_per_chain * bin_size].reshape(n_per_chain, bin_size, -1).mean(1).ravel()
    return float(bins.mean()), float(bins.std(ddof=1) / math.sqrt(bins.size))


# --------------------------------------------------------------------------------- the chain


def chain_seed(seed: int) -> int:
    """64-bit generator seed of the chain with integer seed ``seed`` (numpy's SeedSequence
    hash, so that chains with neighbouring integer seeds get unrelated Mersenne-Twister
    states)."""
    return int(np.random.SeedSequence(int(seed)).generate_state(1, np.uint64)[0])


class _DualAveraging:
    """Step-size adaptation by dual averaging of ``log eps`` (Nesterov 2009; Hoffman & Gelman,
    JMLR 15 (2014) 1593, Alg. 5), one controller per chain (all fed the batch mean when the
    step size is shared).

    With ``a_t`` the Metropolis probability ``min(1, exp(-dH))`` of trajectory ``t``:
    ``H_t = (1 - 1/(t + t0)) H_{t-1} + (delta - a_t)/(t + t0)``,
    ``log eps_t = mu - sqrt(t)/gamma H_t``, ``log eps_bar_t = t^-k log eps_t + (1 - t^-k)
    log eps_bar_{t-1}``; the chain runs on ``eps_t``; ``eps_bar`` is the final step size.
    ``mu = log eps_0`` (the initial step size; Hoffman & Gelman use ``log 10 eps_0``).
    """

    def __init__(self, step_size: torch.Tensor, target: float, gamma=0.05, t0=10.0, kappa=0.75):
        self.mu = step_size.log()
        self.h_bar = torch.zeros_like(step_size)
        self.log_eps_bar = step_size.log()
        self.target, self.gamma, self.t0, self.kappa = target, gamma, t0, kappa
        self.t = 0

    def update(self, accept_prob: torch.Tensor) -> torch.Tensor:
        """Feed ``a_t: [B]``; returns the step size ``eps_t: [B]`` of the next trajectory."""
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        self.h_bar = (1.0 - eta) * self.h_bar + eta * (self.target - accept_prob)
        log_eps = self.mu - math.sqrt(self.t) / self.gamma * self.h_bar
        log_eps = log_eps.clamp(math.log(1e-6), math.log(10.0))  # keep exp(eps P) sane
        w = self.t ** (-self.kappa)
        self.log_eps_bar = w * log_eps + (1.0 - w) * self.log_eps_bar
        return log_eps.exp()

    def final(self) -> torch.Tensor:
        return self.log_eps_bar.exp()


class HMC:
    """``B`` independent HMC chains for ``exp(-S)`` on the Haar measure, vectorized over ``B``.

    Parameters
    ----------
    group: :class:`~hpcflow.lattice.groups.Group` or its name (``"U1"``, ``"SU3"``, ...).
    action: :class:`~hpcflow.lattice.action.GaugeAction` (Wilson, optional rectangles).
    shape: lattice extents ``(L_0, ..., L_{Nd-1})``, ``Nd >= 2``.
    batch_size: number of chains ``B``.
    n_steps, step_size: integrator steps per trajectory and initial step size ``eps`` (tuning
        changes ``eps`` during :meth:`thermalize`; ``n_steps`` stays fixed).
    integrator: ``"omelyan"`` (default) or ``"leapfrog"`` (:func:`integrate`).
    target_acceptance: mean Metropolis probability aimed at by the step-size tuning.
    start: ``"hot"`` (Haar-random), ``"cold"`` (identity) or a links tensor
        ``[B, Nd, *L, Nc, Nc]``.
    seed: chain ``b`` uses the integer seed ``seed + b`` (module docstring).
    reproject: project the proposal back onto the group after each trajectory
        (:meth:`Group.project`), so that round-off cannot accumulate over a long chain.
    dtype: real precision, ``torch.float64`` (links complex128) or ``torch.float32``.
    device: where the links, momenta and generators live.

    Use: ``hmc.thermalize(n)`` (with tuning), then ``for links, accepted, dh in hmc.sample(m)``.
    """

    def __init__(
        self,
        group: Group | str,
        action: GaugeAction,
        shape: Sequence[int],
        *,
        batch_size: int = 1,
        n_steps: int = 10,
        step_size: float = 0.1,
        integrator: str = "omelyan",
        target_acceptance: float = 0.8,
        start: str | torch.Tensor = "hot",
        seed: int = 0,
        reproject: bool = True,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
    ):
        self.group = get_group(group) if isinstance(group, str) else group
        if not isinstance(action, GaugeAction) or action.group != self.group:
            raise ValueError(f"action must be a GaugeAction of group {self.group.name}, "
                             f"got {action!r}")
        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) < 2 or min(self.shape) < 1:
            raise ValueError(f"shape must list >= 2 positive lattice extents, got {shape!r}")
        if integrator not in INTEGRATORS:
            raise ValueError(f"integrator must be one of {INTEGRATORS}, got {integrator!r}")
        if not (isinstance(n_steps, int) and n_steps >= 1):
            raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
        if not (isinstance(batch_size, int) and batch_size >= 1):
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if not step_size > 0:
            raise ValueError(f"step_size must be > 0, got {step_size!r}")
        if not 0.0 < target_acceptance < 1.0:
            raise ValueError(f"target_acceptance must be in (0, 1), got {target_acceptance!r}")
        real = {torch.complex128: torch.float64, torch.complex64: torch.float32}.get(dtype, dtype)
        if real not in (torch.float64, torch.float32):
            raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
        self.action = action
        self.nd = len(self.shape)
        self.batch_size = batch_size
        self.n_steps = n_steps
        self.integrator = integrator
        self.target_acceptance = float(target_acceptance)
        self.reproject = reproject
        self.real_dtype = real
        self.dtype = torch.complex128 if real == torch.float64 else torch.complex64
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.seed = int(seed)
        self.generators = [
            torch.Generator(device=self.device).manual_seed(chain_seed(self.seed + b))
            for b in range(batch_size)
        ]
        self.basis = algebra_basis(self.group, dtype=self.dtype, device=self.device)
        self.step_size = torch.full((batch_size,), float(step_size), dtype=real,
                                    device=self.device)
        self.n_trajectories = 0
        self.n_force_evals = 0
        self.links = self._initial_links(start)
        self._s = self.action(self.links)

    # ------------------------------------------------------------------ random numbers
    def _initial_links(self, start) -> torch.Tensor:
        lshape = (self.batch_size, self.nd, *self.shape)
        if isinstance(start, torch.Tensor):
            want = (*lshape, self.group.nc, self.group.nc)
            if tuple(start.shape) != want:
                raise ValueError(f"start links must have shape {want}, got {tuple(start.shape)}")
            return start.to(dtype=self.dtype, device=self.device).clone()
        if start == "cold":
            return self.group.identity(lshape, dtype=self.dtype, device=self.device)
        if start == "hot":
            noise = torch.stack([
                self.group.noise((self.nd, *self.shape), generator=g, dtype=self.dtype,
                                 device=self.device)
                for g in self.generators
            ])
            return self.group.from_noise(noise)
        raise ValueError(f"start must be 'hot', 'cold' or a links tensor, got {start!r}")

    def _momenta(self) -> torch.Tensor:
        """Gaussian momenta ``P = sum_a p_a T_a``, ``p_a ~ N(0, 1)``: ``[B, Nd, *L, Nc, Nc]``."""
        n_gen = self.basis.shape[0]
        p = torch.stack([
            torch.randn((self.nd, *self.shape, n_gen), generator=g, dtype=self.real_dtype,
                        device=self.device)
            for g in self.generators
        ])
        return torch.einsum("...a,aij->...ij", p.to(self.dtype), self.basis)

    def _uniform(self) -> torch.Tensor:
        return torch.stack([
            torch.rand((), generator=g, dtype=self.real_dtype, device=self.device)
            for g in self.generators
        ])

    # ------------------------------------------------------------------ one trajectory
    def _force(self, links: torch.Tensor) -> torch.Tensor:
        self.n_force_evals += 1
        return force(links, self.action)

    @torch.no_grad()
    def trajectory(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One HMC trajectory of every chain with the current step sizes.

        Returns ``(links [B, Nd, *L, Nc, Nc], accepted [B] bool, dH [B])``; ``links`` is the new
        state (a fresh tensor: the chain never modifies it in place).
        """
        p0 = self._momenta()
        u = self._uniform()
        h0 = kinetic_energy(p0) + self._s
        links, p1 = integrate(self.links, p0, self._force, self.step_size, self.n_steps,
                              self.group, self.integrator)
        if self.reproject:
            links = self.group.project(links)
        s1 = self.action(links)
        dh = kinetic_energy(p1) + s1 - h0
        accepted = u < torch.exp(-dh)  # exact Metropolis; a NaN dH is rejected
        keep = accepted.reshape(-1, *([1] * (links.ndim - 1)))
        self.links = torch.where(keep, links, self.links)
        self._s = torch.where(accepted, s1, self._s)
        self.n_trajectories += 1
        return self.links, accepted, dh

    # ------------------------------------------------------------------ runs
    def thermalize(self, n_trajectories: int, *, tune: bool = True,
                   per_chain: bool = False) -> dict:
        """Run ``n_trajectories`` trajectories to equilibrate; with ``tune`` adapt the step size
        by dual averaging (:class:`_DualAveraging`) so that the mean Metropolis probability
        reaches ``target_acceptance``, and fix it at the averaged value at the end. The
        statistic is the batch mean (one common step size; default) or, with ``per_chain``,
        each chain's own (module docstring, "Randomness"). ``n_steps`` stays fixed, so the
        trajectory length ``n_steps * eps`` changes with ``eps``. Tuning happens only here,
        never while sampling (an adapting chain does not keep ``exp(-S)`` stationary).

        Returns ``{"accept_prob": [T, B], "dH": [T, B], "step_size": [B]}`` (float64, CPU).
        """
        adapt = _DualAveraging(self.step_size, self.target_acceptance) if tune else None
        probs, dhs = [], []
        for _ in range(n_trajectories):
            _, _, dh = self.trajectory()
            prob = torch.exp(-dh).clamp(max=1.0).nan_to_num(0.0)
            probs.append(prob)
            dhs.append(dh)
            if adapt is not None:
                self.step_size = adapt.update(prob if per_chain else
                                              prob.mean().expand(self.batch_size))
        if adapt is not None and n_trajectories > 0:
            self.step_size = adapt.final()
        return {
            "accept_prob": _stack_cpu(probs, self.batch_size),
            "dH": _stack_cpu(dhs, self.batch_size),
            "step_size": self.step_size.detach().cpu().double().clone(),
        }

    def sample(self, n_trajectories: int) -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                             torch.Tensor]]:
        """Yield ``(links [B, Nd, *L, Nc, Nc], accepted [B], dH [B])`` after each of
        ``n_trajectories`` trajectories, at fixed step size."""
        for _ in range(n_trajectories):
            yield self.trajectory()

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue the chains exactly: links, step sizes, generator
        states (``[B, n_bytes]`` uint8) and counters, plus the configuration for checks."""
        return {
            "links": self.links.detach().cpu().clone(),
            "step_size": self.step_size.detach().cpu().clone(),
            "generator_states": torch.stack([g.get_state() for g in self.generators]),
            "n_trajectories": self.n_trajectories,
            "n_force_evals": self.n_force_evals,
            "config": {
                "group": self.group.name,
                "beta": float(self.action.beta),
                "c1": float(self.action.c1),
                "shape": list(self.shape),
                "batch_size": self.batch_size,
                "n_steps": self.n_steps,
                "integrator": self.integrator,
                "seed": self.seed,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`; refuses one of another group, lattice or batch size."""
        cfg = state["config"]
        for key, mine in (("group", self.group.name), ("shape", list(self.shape)),
                          ("batch_size", self.batch_size)):
            if cfg[key] != mine:
                raise ValueError(f"state_dict key 'config.{key}' is {cfg[key]!r}, this chain "
                                 f"has {mine!r}")
        for key in ("beta", "c1"):
            if cfg[key] != float(getattr(self.action, key)):
                raise ValueError(f"state_dict key 'config.{key}' is {cfg[key]!r}, this chain "
                                 f"has {getattr(self.action, key)!r}")
        self.links = state["links"].to(dtype=self.dtype, device=self.device).clone()
        self.step_size = state["step_size"].to(dtype=self.real_dtype, device=self.device).clone()
        for g, s in zip(self.generators, state["generator_states"], strict=True):
            g.set_state(s.clone())
        self.n_trajectories = int(state["n_trajectories"])
        self.n_force_evals = int(state.get("n_force_evals", 0))
        self._s = self.action(self.links)


def _stack_cpu(values: list[torch.Tensor], batch: int) -> torch.Tensor:
    if not values:
        return torch.zeros(0, batch, dtype=torch.float64)
    return torch.stack(values).detach().cpu().double()
