"""The flow: Haar prior followed by gauge-equivariant coupling layers, built from a config.

``U = f(z)``, ``z ~ Haar``; ``log q(U) = log r(z) - log|det J_f(z)| = -log|det J_f(z)|``
(the prior is uniform with respect to the normalized Haar measure). ``log_prob`` runs the
inverse pass, so it accepts any configuration (an HMC one, say) and is gauge invariant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..lattice.groups import Group
from ..masks import Schedule
from ..nn import build_context_net
from .coupling import Assignment, CouplingPlan, GaugeCoupling
from .prior import STREAM_SAMPLE, haar_prior
from .spectral import SUNTransform
from .transforms import LinkTransform, U1Transform

__all__ = ["GaugeFlow", "KeptContexts", "build_flow", "make_link_transform", "plan_from_layer"]


@dataclass(frozen=True)
class KeptContexts:
    """What :meth:`GaugeFlow.forward_keeping_contexts` keeps: per layer ``(extended links,
    parameters)`` with their autograd graph, and the pass's output links they belong to."""

    layers: list
    output: torch.Tensor


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

    def compile_layers(self, **options) -> GaugeFlow:
        """Compile every coupling layer's maps (:meth:`GaugeCoupling.compile_maps`; config key
        ``distributed.compile``). Results equal the eager ones to rounding; the first pass of
        each direction and batch shape pays the compilation (seconds to a minute on a CPU,
        cached on disk by torch afterwards)."""
        for layer in self.layers:
            layer.compile_maps(**options)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Prior links ``z -> (U, log|det J|)``, ``log|det J|: [B]``."""
        return self._through(z, list(self.layers))

    def inverse(self, links: torch.Tensor, contexts: KeptContexts | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``U -> (z, log|det J^-1|)``. ``contexts``: from :meth:`forward_keeping_contexts`,
        with ``links`` that pass's own output and the parameters frozen (the path gradient's
        inverse pass, :func:`hpcflow.app.propose.path_log_prob`): the context networks do not
        run again. Anything else raises ``ValueError`` (the contexts would be wrong silently)."""
        if contexts is None:
            return self._through(links, [layer.inverse for layer in reversed(self.layers)])
        if links is not contexts.output:
            raise ValueError("GaugeFlow.inverse: contexts belong to the forward pass whose "
                             "output they were kept with; pass that output itself")
        if any(p.requires_grad for p in self.parameters()):
            raise ValueError("GaugeFlow.inverse: reused contexts carry no parameter gradient; "
                             "freeze the parameters (path_log_prob) or pass no contexts")
        maps = [lambda x, f=layer.inverse, c=c: f(x, context=c)
                for layer, c in zip(reversed(self.layers), reversed(contexts.layers),
                                    strict=True)]
        return self._through(links, maps)

    def forward_keeping_contexts(self, z: torch.Tensor):
        """:meth:`forward` that also returns each layer's context with its autograd graph
        (:class:`KeptContexts`), for the inverse pass of path gradients at the output
        (:meth:`inverse`). ``None`` instead when the layers are compiled or recomputed
        (``recompute``) or autograd is off: no intermediates are kept; the inverse pass then
        runs the context networks itself. Returns ``(U, log|det J|, KeptContexts | None)``."""
        if (self.recompute or not torch.is_grad_enabled()
                or any(layer.is_compiled for layer in self.layers)):
            return (*self(z), None)
        kept: list = []
        u, logdet = self._through(z, [lambda x, f=layer: f(x, keep=kept)
                                      for layer in self.layers])
        return u, logdet, KeptContexts(kept, u)

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

    def sample(self, n: int, *, seed: int | None = None, stream: int = STREAM_SAMPLE,
               start: int = 0, step: int = 0, batch_size: int | None = None):
        """Draw samples ``start .. start+n-1`` of a stream without autograd graphs.

        ``seed=None``: a fresh random seed, so that two calls give two ensembles; a given seed
        reproduces its ensemble. Returns ``(U [n, Nd, *L, Nc, Nc], log_q [n])``.
        """
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
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


def make_link_transform(group: Group, kind: str = "spline", bins: int = 8,
                        eig: str = "closed", fused: bool = False,
                        fused_eig: bool = False) -> LinkTransform:
    """The transform family of a group: U(1) circular splines (``kind="spline"``) or NCP
    mixtures (``"ncp"``); SU(2)/SU(3) spectral splines with the eigen-decomposition ``eig``
    (``"closed"`` or ``"eigh"``). ``fused``: splines by the fused C++ kernels on CPUs
    (:mod:`hpcflow.kernels`); ``fused_eig``: SU(3)'s closed-form eigen-decomposition likewise.
    Other choices raise ``ValueError``."""
    if group.nc == 1:
        return U1Transform(kind, bins, fused=fused)
    if kind != "spline":
        raise ValueError(f"the {kind!r} transform exists for U(1) only; SU(N) flows use "
                         "spectral splines")
    return SUNTransform(group, bins, eig=eig, fused=fused, fused_eig=fused_eig)


def build_flow(group: Group, schedule: Schedule, *, transform: str = "spline", bins: int = 8,
               hidden: Sequence[int] = (32, 32), kernel_size: int = 3,
               activation: str = "tanh", conv: str = "full", rank: int = 8,
               dtype: torch.dtype = torch.float32, eig: str = "closed",
               fused: bool = False, fused_kernels: bool = False) -> GaugeFlow:
    """An untrained flow on the lattice of ``schedule`` (:func:`hpcflow.masks.build_schedule`):
    one coupling layer per mask layer, each with its context network
    (:func:`hpcflow.nn.build_context_net` with ``hidden``, ``kernel_size``, ``activation``,
    ``conv``, ``rank``); ``eig``: the SU(N) eigen-decomposition, ``fused``: the splines by the
    fused C++ kernel on CPUs (:func:`make_link_transform`), ``fused_kernels``: the coupling layers'
    loops (:class:`GaugeCoupling`), the depthwise factors of factorized convolutions
    (:class:`hpcflow.nn.factorized.CPConvNd`) and SU(3)'s closed-form eigen-decomposition by
    the fused C++ kernels on CPUs.
    The last layer of every context network starts at zero, so a new flow is the identity map
    and its ``log q`` is exactly zero.
    """
    shape = tuple(schedule.shape)
    link_transform = make_link_transform(group, transform, bins, eig, fused, fused_kernels)
    layers = []
    for layer in schedule.layers:
        plan = plan_from_layer(layer)
        in_ch = link_transform.n_features * len(plan.features)
        out_ch = len(plan.updates) * len(plan.directions) * link_transform.n_params
        net = build_context_net(len(shape), in_ch, out_ch, hidden=tuple(hidden),
                                kernel_size=kernel_size, activation=activation, conv=conv,
                                rank=rank, dtype=dtype, lattice=shape, fused=fused_kernels)
        layers.append(GaugeCoupling(plan, link_transform, net, fused_loops=fused_kernels))
    return GaugeFlow(group, shape, link_transform, layers, dtype=dtype)
