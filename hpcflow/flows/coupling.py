"""The gauge-equivariant coupling layer, written once for every group.

For each active link ``U = U_mu(x)`` and one of its active loops, re-rooted as an open loop
``W = U S`` that starts with the link (``S``: frozen links only), the layer maps
``W -> W' = h(W | I)`` with a conjugation-equivariant ``h`` whose parameters come from a context
network ``I`` of frozen loops, and sets ``U' = W' W^dagger U`` so that ``U' S = W'``
(docs/physics.md, "Gauge-equivariant coupling layer"; arXiv:2003.06413, arXiv:2305.02402).
``U -> W`` is a right translation, so ``log|det J| = sum_active log J_h(W)``.

Multi-update (talk: "Update link several times using all active plaquettes"): the layer runs
``K`` updates in sequence; in update ``k`` every active link moves once, through its ``k``-th
active loop. Frozen loops contain no active link, so the context is computed once per layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from ..kernels import MAX_STEPS, loop_product, loops_apply
from ..lattice.loops import Path, loop_matrix, path_indices, path_table, table_product
from .transforms import LinkTransform

__all__ = ["Assignment", "CouplingPlan", "GaugeCoupling"]

# The most links for which a layer keeps its U(1) loop tables as dense matrices: a product
# then does ``n_links / len`` times the gather's arithmetic, which pays while the operations'
# overhead dominates (8x8 in 2D and 4^3 in 3D: 128 and 192 links; a 4^4 lattice, 1024 links,
# was 2x slower per step with matrices and would have kept ~870 MB of them). Larger lattices
# gather (``table_product``).
MAX_MATRIX_LINKS = 512


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
    Every loop the layer reads is tabulated once at construction (:func:`path_table`): the
    frozen loops of the context at every site, masked where they hold an active link, and the
    active loops of each update. A loop family then costs one gather and ``len - 1`` products
    for the whole batch (:func:`table_product`), whatever the number of loop shapes, and all
    active links of an update move together in one transform call and one ``index_copy``.
    For U(1) on small lattices (``MAX_MATRIX_LINKS``), a loop is a signed sum of link
    angles and each table is kept as a matrix instead (:func:`loop_matrix`): one matrix product
    per loop family, forward and backward. With ``fused_loops``, CPU tensors elsewhere read each
    loop family from the links by the fused kernel (:func:`hpcflow.kernels.loop_product`):
    one operator call forward and one backward, no extension of the links, no gather.
    """

    def __init__(self, plan: CouplingPlan, link_transform: LinkTransform, net: nn.Module, *,
                 fused_loops: bool = False):
        super().__init__()
        self.link_transform = link_transform
        self.net = net
        self.directions = plan.directions
        self.n_updates = len(plan.updates)
        self.feature_paths = [path for path, _ in plan.features]
        lattice = _lattice_shape(plan)
        self.lattice = lattice
        volume = math.prod(lattice)
        # Tables are buffers: they follow the module to its device; not saved in checkpoints.
        self._buffer("feature_table", path_table(self.feature_paths, lattice))
        self.n_links = n_links = len(lattice) * volume
        self.linear = link_transform.algebra.linear and n_links <= MAX_MATRIX_LINKS
        dtype = next(iter(net.parameters()), torch.empty(0)).dtype
        if self.linear:
            self._buffer("feature_matrix", loop_matrix(self.feature_table, n_links, dtype))
        self._buffer("feature_off", torch.stack([~s.reshape(volume) for _, s in plan.features])
                     .view(1, len(plan.features), 1, volume))
        # Update k: active loops of every assignment, the links they move, their parameters.
        links, sites = [], []
        for k, update in enumerate(plan.updates):
            links.append([path_indices(a.path, lattice, a.sites)[0][:, 0] for a in update])
            # the first step of each active loop is the active link itself
            sites.append([i - a.mu * volume for i, a in zip(links[k], update, strict=True)])
            self._buffer(f"update_table_{k}", path_table([a.path for a in update], lattice,
                                                         [a.sites for a in update]))
            if self.linear:
                self._buffer(f"update_matrix_{k}",
                             loop_matrix(getattr(self, f"update_table_{k}"), n_links, dtype))
            self._buffer(f"update_links_{k}", torch.cat(links[k]))
        # The context is needed at the active links' sites only: the network's last layer runs
        # there (``forward_at``: a quarter or half of the lattice, most of its multiplications).
        wanted = torch.unique(torch.cat([torch.cat(s) for s in sites])) if sites else \
            torch.zeros(0, dtype=torch.long)
        self.n_sites = len(wanted)
        head = net[-1] if isinstance(net, nn.Sequential) and len(net) else None
        self.head_at = hasattr(head, "forward_at") and len(wanted) > 0
        self._buffer("head_index", head.site_index(lattice, wanted) if self.head_at else wanted)
        position = torch.full((volume,), -1, dtype=torch.long)
        position[wanted] = torch.arange(len(wanted))
        for k, update in enumerate(plan.updates):
            # parameter row: position of the site * K * D + k * D + d
            self._buffer(f"update_params_{k}", torch.cat([
                position[site] * self.n_updates * len(self.directions)
                + k * len(self.directions) + self.directions.index(a.mu)
                for a, site in zip(update, sites[k], strict=True)]))
        # the fused loop kernel walks at most MAX_STEPS steps per loop (longer: gather)
        widths = [self.feature_table.shape[1]] + [
            getattr(self, f"update_table_{k}").shape[1] for k in range(self.n_updates)]
        self.fused_loops = bool(fused_loops) and max(widths) <= MAX_STEPS

    def _buffer(self, name: str, value: torch.Tensor) -> None:
        self.register_buffer(name, value, persistent=False)

    def _reader(self, x: torch.Tensor) -> str:
        """How this layer reads its loops of the links ``x: [B, Nd V, *E]``: ``"matrix"``, by
        the loop matrices: U(1) on a small lattice (``self.linear``), CPU tensors, and float32
        products in full precision (the products compute the angles themselves: TF32 or
        bfloat16 products, allowed by ``torch.set_float32_matmul_precision``, would cost ~1e-3
        in every angle and the flow's invertibility); ``"fused"``, by the fused loop kernel
        (``fused_loops`` and :func:`loops_apply`: CPU, not compiled); else ``"gather"``, the
        tables gather the extended links."""
        if self.linear and x.device.type == "cpu" and (
                x.dtype == torch.float64 or _exact_float32_products()):
            return "matrix"
        return "fused" if self.fused_loops and loops_apply(x) else "gather"

    def _loops(self, extended: torch.Tensor, reader: str, k: int | None = None,
               trace: bool = False) -> torch.Tensor:
        """The frozen loops of the context (``k`` None) or the active loops of update ``k``:
        ``[B, rows, *E]``, by ``reader`` (:meth:`_reader`) from the links themselves
        ``[B, Nd V, *E]`` (``"matrix"``, ``"fused"``) or from the extended links
        ``[B, 2 Nd V + 1, *E]`` (``"gather"``); ``trace`` (fused matrices only): their
        traces ``[B, rows]``."""
        kind, suffix = ("feature", "") if k is None else ("update", f"_{k}")
        if reader == "matrix":  # one product, no matmul wrapper
            return torch.mm(extended, getattr(self, f"{kind}_matrix{suffix}"))
        table = getattr(self, f"{kind}_table{suffix}")
        if reader == "fused":
            return loop_product(extended, table, trace)
        return table_product(extended, table, self.link_transform.algebra)

    def _context(self, extended: torch.Tensor, reader: str) -> torch.Tensor:
        """Transform parameters ``[B, S * K * len(directions), P]`` from the frozen loops of
        the links (extended where ``reader``, :meth:`_reader`, gathers), at the ``S`` sites of
        the active links (row ``(s * K + k) * D + d``: the ``s``-th of those sites, update
        ``k``, direction ``directions[d]``)."""
        lt = self.link_transform
        b, volume = extended.shape[0], math.prod(self.lattice)
        n_feat = len(self.feature_paths)
        if reader == "fused" and hasattr(lt, "trace_features"):  # SU(N): traces suffice
            t = self._loops(extended, reader, trace=True)  # [B, F * V]
            f = lt.trace_features(t.view(b, n_feat, volume))
        else:
            w = self._loops(extended, reader)  # [B, F * V, *E]
            f = lt.loop_features(w.view(b, n_feat, volume, *w.shape[2:]))
        f = f.transpose(1, 2).masked_fill(self.feature_off, 0.0)  # [B, F, C, V]
        h = f.reshape(b, -1, *self.lattice)
        if self.head_at:
            for module in list(self.net)[:-1]:
                h = module(h)
            out = self.net[-1].forward_at(h, self.head_index)  # [B, S, K * D * P]
        else:
            out = self.net(h).reshape(b, -1, volume).transpose(1, 2).index_select(
                1, self.head_index)
        return out.reshape(b, -1, lt.n_params)

    def forward(self, x: torch.Tensor, keep: list | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x -> (x', log|det J|)``; ``log|det J|: [B]``. ``keep`` (a list, eager layers
        only): append the layer's context ``(extended links, parameters)``, with its autograd
        graph, for an inverse pass at the output (:meth:`inverse`'s ``context``)."""
        if keep is not None:
            return self._run(x, inverse=False, keep=keep)
        return (self._compiled or self._run)(x, inverse=False)

    def inverse(self, x: torch.Tensor, context: tuple | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x' -> (x, log|det J^-1|)``: the updates in reverse order, each inverted.

        ``context``: what :meth:`forward` kept at the preimage of ``x'`` (path gradients: the
        inverse pass at the forward pass's own output). The frozen links are the same on both
        sides, so the context network need not run again: its values are taken over and its
        backward is that of the forward pass's graph (:class:`_ReusedContext`)."""
        if context is not None:
            return self._run(x, inverse=True, context=context)
        return (self._compiled or self._run)(x, inverse=True)

    _compiled = None

    @property
    def is_compiled(self) -> bool:
        """Whether :meth:`compile_maps` was called (the maps then keep no intermediates)."""
        return self._compiled is not None

    def compile_maps(self, **options) -> None:
        """Run the layer's maps through ``torch.compile(fullgraph=True, dynamic=False)`` from
        now on: one graph per direction and batch shape, no graph breaks (so no host
        synchronization inside a layer). ``options``: inductor settings. The generated CPU
        loops run on one thread (``cpp.threads = 1``; library calls such as convolutions keep
        torch's threads): with torch 2.13 a multi-threaded generated backward kernel of these
        layers crashed (segmentation fault) with 2 threads on a CPU."""
        _trace_cached_tables_quietly()
        self._compiled = torch.compile(self._run, fullgraph=True, dynamic=False,
                                       options={"cpp.threads": 1, **options})

    def _run(self, x, *, inverse: bool, keep: list | None = None, context: tuple | None = None):
        lt = self.link_transform
        shape = x.shape
        flat = x.reshape(shape[0], -1, *shape[2 + len(self.lattice):])
        reader = self._reader(flat)
        extended = lt.algebra.extend(flat) if reader == "gather" else flat
        if context is not None:
            params = _ReusedContext.apply(extended, context)
        elif keep is not None:
            # the first layer's input (the prior) carries no graph; the inverse pass needs the
            # context's derivative there too (the training backward then also forms this
            # leaf's gradient: one layer's input gradient, unused)
            source = extended if extended.requires_grad else extended.detach().requires_grad_()
            params = self._context(source, reader)
            keep.append((source, params))
        else:
            params = self._context(extended, reader)
        logdet = None
        order = range(self.n_updates - 1, -1, -1) if inverse else range(self.n_updates)
        for n, k in enumerate(order):
            # Every loop of update k is read from the links before the update: no active loop
            # holds another link of the layer, so all of them move at once.
            if n > 0:
                extended = lt.algebra.extend(flat) if reader == "gather" else flat
            links = getattr(self, f"update_links_{k}")
            w = self._loops(extended, reader, k)
            p = params.index_select(1, getattr(self, f"update_params_{k}"))
            w_new, log_j = lt.transform(w, p, inverse=inverse)
            flat = flat.index_copy(1, links, lt.update_link(flat.index_select(1, links), w, w_new))
            log_j = log_j.sum(-1)
            logdet = log_j if logdet is None else logdet + log_j
        if logdet is None:
            logdet = x.new_zeros(shape[0], dtype=params.dtype)
        return flat.reshape(shape), logdet


class _ReusedContext(torch.autograd.Function):
    """The context parameters of a coupling layer taken over from the forward pass, for the
    inverse pass of path gradients at the forward pass's output.

    A layer leaves its frozen links unchanged, so the inverse pass at ``x' = f(x)`` reads the
    same frozen loops as the forward pass at ``x``, and its context network would compute the
    same parameters (to rounding: the inverse pass's links are the forward's recomputed).
    ``forward(extended, (extended_fwd, params_fwd))`` returns ``params_fwd``'s values; the
    backward is the vector-Jacobian product of the forward pass's context graph,
    ``d params_fwd / d extended_fwd`` (input gradient only: no weight gradient is formed). It
    runs inside the training backward before that graph is freed: the forward's context feeds
    the sample, and the inverse pass's graph hangs off the sample. This skips the frozen
    loops, the loop features and the whole network's forward in the inverse pass (path
    gradients, arXiv:2207.08219; the idea of reusing the forward pass's work is that of the
    fast path gradients of Vaitl et al., ICLR 2024, arXiv:2403.15881).
    """

    @staticmethod
    def forward(ctx, extended, source):
        ctx.source = source  # not saved tensors: a graph of the forward pass, used as such
        return source[1].detach()

    @staticmethod
    @once_differentiable  # the VJP is first order: a second derivative through it raises
    def backward(ctx, grad):
        extended_fwd, params_fwd = ctx.source
        (g,) = torch.autograd.grad(params_fwd, extended_fwd, grad, retain_graph=True)
        return g, None


@torch.compiler.assume_constant_result
def _exact_float32_products() -> bool:
    """Whether float32 matrix products run in full precision (``torch.set_float32_matmul_precision
    ("highest")``, the default); a constant of a compiled graph (dynamo cannot trace the query,
    which returns a string: a compiled float32 U(1) layer stopped there). Where the precision
    was set through torch's newer per-backend settings, the legacy query raises; then the CPU
    (oneDNN) matmul setting decides, or the generic one where that is ``"none"``."""
    try:
        return torch.get_float32_matmul_precision() == "highest"
    except RuntimeError:
        cpu = torch.backends.mkldnn.matmul.fp32_precision
        return (torch.backends.fp32_precision if cpu == "none" else cpu) in ("ieee", "none")


def _trace_cached_tables_quietly() -> None:
    """The SU(N) maps read constant tables from ``functools.lru_cache``d pure functions of
    (dtype, device, mode); dynamo traces through them, which is exact here, but warns once per
    function ("silent incorrectness is a potential risk"). Register them as safe to trace
    (torch's own allow-list, used for einops; nothing happens where torch lacks it)."""
    from torch._dynamo import utils

    allow = getattr(utils, "allow_lru_cache_wrapper_trace_without_warning", None)
    if allow is None:
        return
    from ..lattice import eigen
    from . import spectral

    for module in (eigen, spectral):
        for obj in vars(module).values():
            if callable(obj) and hasattr(obj, "cache_info"):
                allow(obj)


def _lattice_shape(plan: CouplingPlan) -> tuple[int, ...]:
    for update in plan.updates:
        for a in update:
            return tuple(a.sites.shape)
    return tuple(plan.features[0][1].shape)
