"""The flow: Haar prior followed by gauge-equivariant coupling layers, built from a config.

``U = f(z)``, ``z ~ Haar``; ``log q(U) = log r(z) - log|det J_f(z)| = -log|det J_f(z)|``
(the prior is uniform with respect to the normalized Haar measure). ``log_prob`` runs the
inverse pass, so it accepts any configuration (an HMC one, say) and is gauge invariant.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..lattice.groups import Group, get_group
from .coupling import Assignment, CouplingPlan, GaugeCoupling
from .prior import STREAM_SAMPLE, haar_prior
from .transforms import LinkTransform, make_link_transform

__all__ = ["GaugeFlow", "build_model", "plan_from_layer"]

_DTYPES = {
    "float32": (torch.float32, torch.complex64),
    "float64": (torch.float64, torch.complex128),
}


class GaugeFlow(nn.Module):
    """Prior + coupling layers; public links ``[B, Nd, *L, Nc, Nc]`` complex."""

    def __init__(self, group: Group, shape: Sequence[int], link_transform: LinkTransform,
                 layers: Sequence[GaugeCoupling], dtype: torch.dtype = torch.float32):
        super().__init__()
        self.group = group
        self.shape = tuple(shape)
        self.link_transform = link_transform
        self.layers = nn.ModuleList(layers)
        self.real_dtype = dtype
        self.complex_dtype = torch.complex64 if dtype == torch.float32 else torch.complex128
        self.recompute = False
        """Recompute each layer's forward in the backward pass instead of keeping its
        intermediates (activation checkpointing): memory of one layer instead of all, at the
        price of a second forward pass (``train.recompute_layers``)."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior links ``z -> (U, log|det J|)``, ``log|det J|: [B]``."""
        return self._through(z, list(self.layers))

    def inverse(self, links: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``U -> (z, log|det J^-1|)``."""
        return self._through(links, [layer.inverse for layer in reversed(self.layers)])

    def _through(self, links: torch.Tensor, maps) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply layer maps ``x -> (x', log|det|)`` in order to public links; sum the log-dets.
        With ``recompute`` and autograd on (training; the inverse pass of path gradients),
        each map is activation-checkpointed."""
        x = self.link_transform.to_internal(links)
        logdet = torch.zeros(links.shape[0], dtype=self.real_dtype, device=links.device)
        recompute = self.recompute and torch.is_grad_enabled()
        for fn in maps:
            x, ld = checkpoint(fn, x, use_reentrant=False) if recompute else fn(x)
            logdet = logdet + ld
        return self.link_transform.from_internal(x), logdet

    def log_prob(self, links: torch.Tensor) -> torch.Tensor:
        """``log q(U)`` with respect to the normalized Haar measure: ``[B]``."""
        links = links.to(device=self.device, dtype=self.complex_dtype)
        return self.inverse(links)[1]

    def prior(self, indices, *, seed: int, stream: int, step: int = 0) -> torch.Tensor:
        """Haar prior links for sample ``indices`` of stream ``(seed, stream, step)``."""
        return haar_prior(self.group, self.shape, indices, seed=seed, stream=stream, step=step,
                          dtype=self.complex_dtype, device=self.device)

    def sample(self, n: int, *, seed: int = 0, stream: int = STREAM_SAMPLE, start: int = 0,
               step: int = 0, batch_size: int | None = None):
        """Draw samples ``start .. start+n-1`` of a stream without autograd graphs.

        Returns ``(U [n, Nd, *L, Nc, Nc], log_q [n])``.
        """
        batch_size = batch_size or n
        out_u, out_lq = [], []
        with torch.no_grad():
            for lo in range(start, start + n, batch_size):
                hi = min(lo + batch_size, start + n)
                u, logdet = self(self.prior(range(lo, hi), seed=seed, stream=stream, step=step))
                out_u.append(u)
                out_lq.append(-logdet)
        return torch.cat(out_u), torch.cat(out_lq)


def plan_from_layer(layer) -> CouplingPlan:
    """Convert a mask layer of :func:`hpcflow.masks.build_schedule` into a coupling plan."""
    updates = tuple(
        tuple(Assignment(mu=a.mu, path=a.path, sites=a.sites) for a in update)
        for update in layer.updates
    )
    features = tuple((f.loop.path, f.sites) for f in layer.features)
    return CouplingPlan(updates=updates, features=features,
                        directions=tuple(layer.pattern.directions))


def build_model(cfg) -> GaugeFlow:
    """An untrained flow for a configuration (CONTRACTS.md: ``hpcflow.build_model``).

    The last layer of every context network starts at zero, so a new flow is the identity map
    and its ``log q`` is exactly zero.
    """
    from ..masks import build_schedule
    from ..nn import build_context_net

    group = get_group(cfg.lattice.group)
    shape = tuple(cfg.lattice.shape)
    m = cfg.model
    real, _ = _DTYPES[m.dtype]
    if group.name != "U1" and real == torch.float32:
        warnings.warn(
            f"model.dtype float32 with {group.name}: a trained float32 spectral flow can lose its "
            f"inverse (NaN or biased log q, perf/RESULTS.md 'Known problem'); use model.dtype: "
            f"float64 for SU(N)", stacklevel=2)
    link_transform = make_link_transform(group, m.transform, m.bins)
    schedule = build_schedule(shape, m, key="model")
    layers = []
    for layer in schedule.layers:
        plan = plan_from_layer(layer)
        in_ch = link_transform.n_features * len(plan.features)
        out_ch = len(plan.updates) * len(plan.directions) * link_transform.n_params
        net = build_context_net(
            len(shape), in_ch, out_ch, hidden=tuple(m.net.hidden), kernel_size=m.net.kernel_size,
            activation=m.net.activation, conv=m.net.conv, rank=m.net.rank, dtype=real,
        )
        layers.append(GaugeCoupling(plan, link_transform, net))
    return GaugeFlow(group, shape, link_transform, layers, dtype=real)
