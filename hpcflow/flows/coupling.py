"""The gauge-equivariant coupling layer, written once for every group.

For each active link ``U = U_mu(x)`` and one of its active loops, re-rooted as an open loop
``W = U S`` that starts with the link (``S``: frozen links only), the layer maps
``W -> W' = h(W | I)`` with a conjugation-equivariant ``h`` whose parameters come from a context
network ``I`` of frozen loops, and sets ``U' = W' W^dagger U`` so that ``U' S = W'``
(PHYSICS.md, "Gauge-equivariant coupling layer"; arXiv:2003.06413, arXiv:2305.02402).
``U -> W`` is a right translation, so ``log|det J| = sum_active log J_h(W)``.

Multi-update (talk: "Update link several times using all active plaquettes"): the layer runs
``K`` updates in sequence; in update ``k`` every active link moves once, through its ``k``-th
active loop. Frozen loops contain no active link, so the context is computed once per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..lattice.loops import Path, path_product
from .transforms import LinkTransform

__all__ = ["Assignment", "CouplingPlan", "GaugeCoupling"]


@dataclass(frozen=True)
class Assignment:
    """Active links of direction ``mu`` at ``sites`` (bool ``[*L]``) all updated through the
    open loop ``path`` (starting with ``(mu, +1)``) based at their own site."""

    mu: int
    path: Path
    sites: torch.Tensor


@dataclass(frozen=True)
class CouplingPlan:
    """What one coupling layer needs from the masks.

    ``updates[k]``: the assignments of update ``k``; each active link appears in exactly one
    assignment per update, and no active loop contains another active link of the layer.
    ``features``: frozen loops ``(path, sites)``, with ``sites`` (bool ``[*L]``) the base sites
    where the loop contains no active link (elsewhere the feature is zero).
    ``directions``: the link directions that may be active (parameters are made for these).
    """

    updates: tuple[tuple[Assignment, ...], ...]
    features: tuple[tuple[Path, torch.Tensor], ...]
    directions: tuple[int, ...]


class GaugeCoupling(nn.Module):
    """One coupling layer: context from frozen loops, transform of active loops, link update.

    Works on the internal link form ``x: [B, Nd, *L, *E]`` of ``link_transform`` (U(1): angles).
    """

    def __init__(self, plan: CouplingPlan, link_transform: LinkTransform, net: nn.Module):
        super().__init__()
        self.link_transform = link_transform
        self.net = net
        self.directions = plan.directions
        self.n_updates = len(plan.updates)
        self.updates = [[(a.mu, a.path) for a in update] for update in plan.updates]
        self.feature_paths = [path for path, _ in plan.features]
        # Masks are buffers: they follow the module to its device and into checkpoints.
        for k, update in enumerate(plan.updates):
            for i, a in enumerate(update):
                self.register_buffer(f"sites_{k}_{i}", a.sites.clone(), persistent=False)
        for j, (_, sites) in enumerate(plan.features):
            self.register_buffer(f"feature_sites_{j}", sites.clone(), persistent=False)

    def _sites(self, k: int, i: int) -> torch.Tensor:
        return getattr(self, f"sites_{k}_{i}")

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """Transform parameters ``[B, K, len(directions), P, *L]`` from the frozen loops."""
        lt = self.link_transform
        feats = []
        for j, path in enumerate(self.feature_paths):
            w = path_product(x, path, lt.algebra)
            sites = getattr(self, f"feature_sites_{j}").to(w.dtype if w.is_floating_point()
                                                            else w.real.dtype)
            feats.append(lt.loop_features(w) * sites)
        h = torch.cat(feats, dim=1)
        out = self.net(h)
        b, lattice = out.shape[0], out.shape[2:]
        return out.reshape(b, self.n_updates, len(self.directions), lt.n_params, *lattice)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x -> (x', log|det J|)``; ``log|det J|: [B]``."""
        return self._run(x, inverse=False)

    def inverse(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x' -> (x, log|det J^-1|)``: the updates in reverse order, each inverted."""
        return self._run(x, inverse=True)

    def _run(self, x, *, inverse: bool):
        lt = self.link_transform
        params = self.context(x)
        logdet = x.new_zeros(x.shape[0], dtype=params.dtype)
        order = range(self.n_updates - 1, -1, -1) if inverse else range(self.n_updates)
        for k in order:
            # Every loop of update k is read from the links before the update: no active loop
            # holds another link of the layer, so the order inside an update is irrelevant.
            new_links = list(x.unbind(1))
            for i, (mu, path) in enumerate(self.updates[k]):
                sites = self._sites(k, i)
                w = path_product(x, path, lt.algebra)[:, sites]
                p = params[:, k, self.directions.index(mu)].movedim(1, -1)[:, sites]
                w_new, log_j = lt.transform(w, p, inverse=inverse)
                u = new_links[mu].clone()
                u[:, sites] = lt.update_link(u[:, sites], w, w_new)
                new_links[mu] = u
                logdet = logdet + log_j.sum(-1)
            x = torch.stack(new_links, dim=1)
        return x, logdet
