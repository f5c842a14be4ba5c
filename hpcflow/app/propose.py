"""Proposals of every sampler kind, the same way for training, evaluation and sampling.

A flow proposes ``U = f(z)`` from Haar-random ``z`` with ``log w = -S(U) - log q(U)``; a
non-equilibrium trajectory (annealing, stochastic flow) proposes its final configuration with
``log w = -W``. Proposal ``i`` of stream ``(seed, stream, step)`` depends on those numbers
only, whatever the batch or the rank that draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputFileError
from ..flows.model import GaugeFlow, KeptContexts
from ..flows.prior import STREAM_SAMPLE, haar_prior
from ..flows.stochastic import StochasticFlow
from ..io.samples import open_samples
from ..lattice.action import GaugeAction
from ..lattice.random import stream_keys

__all__ = ["Proposals", "StartEnsemble", "path_log_prob", "propose"]


@dataclass
class Proposals:
    """A batch of proposals: ``links [B, Nd, *L, Nc, Nc]``; ``log_q``, ``action``,
    ``log_weight`` ``[B]`` (detached; ``log_q`` NaN for trajectories); ``objective [B]`` with
    its autograd graph when training (its batch mean is the loss whose gradient is followed);
    ``inverse_error [B]`` for path gradients."""

    links: torch.Tensor
    log_q: torch.Tensor
    action: torch.Tensor
    log_weight: torch.Tensor
    objective: torch.Tensor | None = None
    inverse_error: torch.Tensor | None = None


class StartEnsemble:
    """Equilibrium configurations that non-equilibrium trajectories start from: the Markov-chain
    states of a samples file (reference chain or flow samples; the stored configurations of one
    that keeps only its thinned chain) at ``beta``, read lazily."""

    def __init__(self, path: str | Path, group: str, shape, beta: float):
        self.path = Path(path)
        with open_samples(self.path) as s:
            a = s.attrs
            if (a["group"], tuple(a["lattice_shape"])) != (group, tuple(shape)):
                raise InputFileError(self.path, f"holds {a['group']} {list(a['lattice_shape'])}"
                                     f", the sampler needs {group} {list(shape)}")
            if not np.isclose(a["beta"], beta, rtol=1e-12, atol=0):
                raise InputFileError(self.path, f"is an ensemble at beta = {a['beta']}, "
                                     f"sampler.beta_start is {beta}")
            # positions in ``links`` of the ensemble: the chain's states, or (a file that
            # stores only the thinned chain) every stored configuration
            self.states = (np.asarray(s.mcmc_state) if s.store == "all" and s.m == s.n
                           else np.arange(s.m))
        if len(self.states) == 0:
            raise InputFileError(self.path, "holds no configurations")

    def __len__(self) -> int:
        return len(self.states)

    def links(self, indices, *, seed: int, stream: int, step: int, dtype, device):
        """Start configurations of trajectories ``indices``: state ``i mod N`` for the sampling
        stream (in order), a random state from ``(seed, stream, step, i)`` otherwise."""
        if stream == STREAM_SAMPLE:
            rows = [int(i) % len(self) for i in indices]
        else:
            rows = [int(np.random.SeedSequence([seed, stream, step, int(i)]).generate_state(1)[0])
                    % len(self) for i in indices]
        with open_samples(self.path) as s:
            u = s.links[self.states[rows]]
        return torch.from_numpy(np.asarray(u)).to(device=device, dtype=dtype)


def path_log_prob(model: GaugeFlow, links: torch.Tensor, contexts: KeptContexts | None = None
                  ) -> torch.Tensor:
    """``log q(U)`` by the inverse pass with the parameters held fixed: ``[B]``.

    Differentiating ``log q_theta'(f_theta(z)) + S(f_theta(z))`` at ``theta' = theta`` gives the
    path gradient of the reverse KL (Vaitl et al. 2022, arXiv:2207.08219): gradients reach the
    parameters only through the sample ``U = f_theta(z)``, not through the score
    ``d log q_theta / d theta`` at fixed ``U``, whose mean is zero. ``contexts``: from
    :meth:`GaugeFlow.forward_keeping_contexts` when ``links`` is its output (the inverse pass
    then takes the context networks' values and backward from the forward pass).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        return model.inverse(links, contexts)[1]
    finally:
        for p in params:
            p.requires_grad_(True)


def propose(model: GaugeFlow | StochasticFlow, action: GaugeAction, indices, *, seed: int,
            stream: int, step: int = 0, train: bool = False, path: bool = False,
            start: StartEnsemble | None = None, backward_scale: float | None = None
            ) -> Proposals:
    """Proposals ``indices`` of stream ``(seed, stream, step)`` (module docstring).

    ``train``: keep the autograd graph of ``objective`` (flows: ``log q + S``, with ``path``
    the path-gradient form; stochastic flows: the flow layers' own work); ``start``: the
    equilibrium ensemble of trajectories with ``beta_0 > 0`` (Haar-random links otherwise);
    ``backward_scale`` (with ``train``): back-propagate ``backward_scale * objective.sum()``
    here, into the parameters' ``.grad`` (stochastic flows: one layer group at a time, see
    :meth:`StochasticFlow.forward`), and return the objective detached.
    """
    if isinstance(model, GaugeFlow):
        z = model.prior(indices, seed=seed, stream=stream, step=step)
        with torch.set_grad_enabled(train):
            contexts = None
            if train and path:
                u, logdet, contexts = model.forward_keeping_contexts(z)
            else:
                u, logdet = model(z)
            log_q, s = -logdet, action(u)
            objective = inverse_error = None
            if train:
                objective = (path_log_prob(model, u, contexts) if path else log_q) + s
                if path:
                    inverse_error = (objective - s - log_q).detach()
                if backward_scale is not None:
                    # to the parameters only: nothing else needs a gradient (the path
                    # gradient's first layer keeps a leaf of the prior for its inverse pass,
                    # which would otherwise get one, through its whole context network)
                    trained = [p for p in model.parameters() if p.requires_grad]
                    (objective.sum() * backward_scale).backward(inputs=trained or None)
                    objective = objective.detach()
        return Proposals(u.detach(), log_q.detach(), s.detach(), (-s - log_q).detach(),
                         objective, inverse_error)
    if start is None:
        u0 = haar_prior(model.group, model.shape, indices, seed=seed, stream=stream, step=step,
                        dtype=model.complex_dtype, device=model.device)
    else:
        u0 = start.links(indices, seed=seed, stream=stream, step=step,
                         dtype=model.complex_dtype, device=model.device)
    # one Philox key per trajectory: (seed, stream, step) folded into one stream number
    keys = stream_keys(seed, (stream << 32) + step, indices, device=model.device)
    with torch.set_grad_enabled(train):
        u, work, objective = model(u0, keys, train=train,
                                   backward_scale=backward_scale if train else None)
    s = action(u).detach()
    return Proposals(u, torch.full_like(work, float("nan")), s, -work,
                     objective if train else None)
