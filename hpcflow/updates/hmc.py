"""Hybrid Monte Carlo for U(1) and SU(N) lattice gauge theory in any dimension.

A conventional Markov chain that the samplers are validated against in 3D/4D, where no exact
answer exists. One trajectory (Duane, Kennedy, Pendleton, Roweth, Phys. Lett. B 195 (1987) 216;
Gattringer & Lang, "Quantum Chromodynamics on the Lattice", ch. 8):

1. draw momenta ``P_mu(x)`` in the Lie algebra with density ``~ exp(-K(P))``;
2. integrate Hamilton's equations of ``H = K(P) + S(U)`` for ``n_steps`` steps of size ``eps``
   with a reversible, volume-preserving integrator (leapfrog, or Omelyan's 2nd-order minimum-norm
   scheme: Omelyan, Mryglod, Folk, Comput. Phys. Commun. 151 (2003) 272);
3. accept the end point with probability ``min(1, exp(-dH))``, ``dH = H_end - H_start``,
   otherwise keep the old links. The chain is exact for any ``eps``; ``eps`` only sets the rate.

Conventions: momenta ``P = sum_a p_a T_a``, ``p_a ~ N(0, 1)`` independently on every link
(basis of :mod:`hpcflow.lattice.algebra`), so ``K = (1/2) sum_a p_a^2``. Coordinates around
``U``: ``U(omega) = exp(sum_a omega_a T_a) U``. Hamilton's equations: ``dU/dt = P U``,
``dP/dt = -F`` with the force :func:`hpcflow.lattice.action.force`. The integrators update
``U <- exp(eps P) U``.

Layouts: ``links, momenta, forces: [B, Nd, L_0, ..., L_{Nd-1}, Nc, Nc]`` complex (``Nc = 1`` for
U(1)); energies, ``dH``, acceptance, step sizes: ``[B]``.

Randomness: chain ``b`` draws every random number (hot start, momenta, accept/reject) from its own
``torch.Generator`` seeded from the integer ``seed + b``, so at a given step size chain ``b`` of a
batch equals the single chain run with seed ``seed + b``: the batch dimension is only
vectorization. Step-size tuning (thermalization only) uses the batch-mean acceptance by default,
which couples the chains' step sizes; ``thermalize(..., per_chain=True)`` tunes every chain on
its own acceptance instead, so that a chain depends on its seed alone, at the price of a noisier
step size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from ..lattice.action import GaugeAction, force
from ..lattice.algebra import algebra_basis, algebra_exp, kinetic_energy
from ..lattice.groups import Group, get_group

__all__ = ["HMC", "INTEGRATORS", "OMELYAN_LAMBDA", "chain_seed", "integrate"]

#: Omelyan, Mryglod, Folk (2003), 2nd-order minimum-norm scheme (Takaishi & de Forcrand 2006).
OMELYAN_LAMBDA = 0.1931833
INTEGRATORS = ("leapfrog", "omelyan")

ForceFn = Callable[[torch.Tensor], torch.Tensor]

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
