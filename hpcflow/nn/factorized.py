"""Factorized periodic convolutions on Nd-dimensional lattices (any Nd >= 1).

"Factorized convolutions" (D. Boyda, Lattice 2021; used in the flows of arXiv:2305.02402): write
the kernel ``W: [C_out, C_in, k_0, ..., k_{Nd-1}]`` as a low-rank tensor decomposition and apply
the factors one after the other. Fewer parameters and multiplications, and no 4D convolution is
needed. See the decomposition review arXiv:1906.06196.

CP (canonical polyadic), rank R:

    W[o, c, j_0, ..., j_{Nd-1}] = sum_r U_out[o, r] * K_0[r, j_0] * ... * K_{Nd-1}[r, j_{Nd-1}]
                                             * U_in[r, c]

applied as a 1x1 convolution ``C_in -> R``, a depthwise periodic 1D convolution along each lattice
axis, and a 1x1 convolution ``R -> C_out`` (with the bias). Cost per site
``C_in R + R (k_0 + ... + k_{Nd-1}) + R C_out`` instead of ``C_in C_out k_0 ... k_{Nd-1}``.

Tucker, ranks (R_in, R_out):

    W[o, c, j] = sum_{q, p} U_out[o, q] * G[q, p, j] * U_in[p, c]

applied as a 1x1 convolution ``C_in -> R_in``, a full periodic ``ConvNd`` core ``R_in -> R_out``,
and a 1x1 convolution ``R_out -> C_out`` (with the bias).

Layout: ``x: [B, C_in, L_0, ..., L_{Nd-1}] -> [B, C_out, L_0, ..., L_{Nd-1}]``, periodic "same"
convolution with the same convention as ``hpcflow.nn.conv``. Each class's ``full_weight()``
returns the reconstructed kernel W, so ``ConvNd`` with that weight and the same bias gives the same
output.

Initialization: factor variances are chosen so the reconstructed kernel has the variance of
PyTorch's default convolution init with fan-in ``C_in * prod(k)`` (``1 / (3 fan_in)``), i.e.
the factorized layer starts at the same scale as the full one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from hpcflow.kernels import REAL, applies
from hpcflow.nn.conv import (
    ConvNd,
    _asked,
    check_input,
    check_positive_ints,
    kernel_tuple,
    mix_rows,
)


def tucker_ranks(rank: int | Sequence[int]) -> tuple[int, int]:
    """Validate a Tucker rank (an int, or a pair ``(R_in, R_out)``) and return the pair."""
    ranks = (rank, rank) if not isinstance(rank, Sequence) else tuple(rank)
    if len(ranks) != 2:
        raise ValueError(f"rank={rank!r} must be a positive integer or a pair (R_in, R_out)")
    for value in ranks:
        check_positive_ints(rank=value)
    return ranks


def _uniform_(tensor: torch.Tensor, bound: float) -> None:
    nn.init.uniform_(tensor, -bound, bound)


def channel_mix(
    weight: torch.Tensor, x: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """1x1 convolution: ``weight: [C_out, C_in]``, ``x: [B, C_in, *L] -> [B, C_out, *L]``.

    One batched product of the weight (expanded, not copied) with each sample's ``[C_in, V]``
    (``baddbmm`` with the bias): as fast as ``conv1d`` over the flattened lattice on a CPU
    (float32: ~2x faster at these sizes), ~2x faster than ``matmul`` (which transposes ``x``
    into one plain product), and ~4 operator calls each way instead of conv1d's ~20 (issue 19).
    """
    b, c_in, *lattice = x.shape
    out = _ChannelMix.apply(x.flatten(2), weight, bias)
    return out.view(b, weight.shape[0], *lattice)


class _ChannelMix(torch.autograd.Function):
    """The product of :func:`channel_mix` on ``flat: [B, C_in, V]``, ``[B, C_out, V]``.

    Saves the same tensors whether or not the weight is frozen: ``torch.bmm`` saves each
    operand only when the other needs a gradient, and activation checkpointing of the path
    gradient's inverse pass (run frozen, recomputed thawed: ``train.recompute_layers``) refuses
    saved tensors that differ between the two passes (it stopped every path-gradient training
    of a factorized network with ``recompute_layers``). The backward forms only the gradients
    the running pass asks for (:func:`hpcflow.nn.conv._asked`), with differentiable operations
    (second derivatives work)."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
        ctx.save_for_backward(flat, weight)
        ctx.tensor_inputs = (True, True, bias is not None)
        w = weight.expand(flat.shape[0], -1, -1)
        return torch.bmm(w, flat) if bias is None else torch.baddbmm(bias.view(1, -1, 1), w,
                                                                      flat)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        flat, weight = ctx.saved_tensors
        need_x, need_w, need_b = (_asked(ctx, i) for i in range(3))
        g_x = torch.bmm(weight.t().expand(g.shape[0], -1, -1), g) if need_x else None
        g_w = torch.bmm(g, flat.transpose(1, 2)).sum(0) if need_w else None
        return g_x, g_w, g.sum((0, 2)) if need_b else None


def depthwise_periodic_conv1d(h: torch.Tensor, kernel: torch.Tensor, axis: int,
                              fused: bool = False) -> torch.Tensor:
    """Periodic 1D convolution of each channel along one lattice axis.

    ``h: [B, R, L_0, ..., L_{Nd-1}]``, ``kernel: [R, k]`` (odd k), ``axis`` in ``0..Nd-1``:
    ``out[b, r, ..., n, ...] = sum_j kernel[r, j] * h[b, r, ..., (n + j - k//2) mod L_axis, ...]``.
    ``fused``: on CPUs (float32/float64, not traced by ``torch.compile``), by the fused C++
    kernel (``hpcflow/kernels/csrc/conv.cpp``: one operator call forward, two backward, every
    derivative order), where it builds; the same map to rounding.
    """
    if fused and kernel.dtype == h.dtype and applies(h, REAL, "the factorized convolutions"):
        return _FusedDepthwise.apply(h, kernel, axis)
    return _DepthwisePeriodic.apply(h, kernel, axis)


def _depthwise_forward(h: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
    # k multiply-adds of shifted views, each shift split into its two contiguous pieces: no
    # padding copy, no transposes, any kernel size against any extent
    r, k = kernel.shape
    d = 2 + axis
    n = h.shape[d]
    p = k // 2
    scale = kernel.view(r, k, *([1] * (h.dim() - 2)))  # column j broadcasts over [R, *L]
    out = h * scale[:, p]
    for j in range(k):
        s = (j - p) % n
        if j == p:
            continue
        out.narrow(d, 0, n - s).addcmul_(h.narrow(d, s, n - s), scale[:, j])
        if s:
            out.narrow(d, n - s, s).addcmul_(h.narrow(d, 0, s), scale[:, j])
    return out


class _DepthwisePeriodic(torch.autograd.Function):
    """Autograd for ``depthwise_periodic_conv1d`` without the zero-filled slice gradients that
    the plain composition of views would produce. Backward: ``grad_h`` is the same convolution
    with the flipped kernel; ``grad_kernel[r, j] = sum g[b, r, n] h[b, r, n + j - k//2]``. Both
    use differentiable ops, so double backward works."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, kernel: torch.Tensor, axis: int) -> torch.Tensor:
        ctx.save_for_backward(h, kernel)
        ctx.axis = axis
        return _depthwise_forward(h, kernel, axis)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        h, kernel = ctx.saved_tensors
        axis = ctx.axis
        grad_h = grad_kernel = None
        if ctx.needs_input_grad[0]:
            grad_h = _DepthwisePeriodic.apply(g, kernel.flip(1), axis)
        if ctx.needs_input_grad[1]:
            k = kernel.shape[1]
            dims = [0, *range(2, h.dim())]
            columns = []
            d, n = 2 + axis, h.shape[2 + axis]
            for j in range(k):  # h shifted by j - k//2 along the axis: two pieces, no copy
                s = (j - k // 2) % n
                column = (g.narrow(d, 0, n - s) * h.narrow(d, s, n - s)).sum(dims)
                if s:
                    column = column + (g.narrow(d, n - s, s) * h.narrow(d, 0, s)).sum(dims)
                columns.append(column)
            grad_kernel = torch.stack(columns, 1)
        return grad_h, grad_kernel, None


class _FusedDepthwise(torch.autograd.Function):
    """``depthwise_periodic_conv1d`` by ``torch.ops.hpcflow.depthwise_periodic`` (``flip``: with
    the kernel read backwards). Backward: the input's gradient is the same map with the flipped
    kernel, the kernel's gradient :class:`_FusedKernelGrad`; both differentiable again (double
    backward as the tensor path)."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, kernel: torch.Tensor, axis: int,
                flip: bool = False) -> torch.Tensor:
        # the inputs themselves are saved (a contiguous copy would cut the graph of a
        # higher derivative); the operator reads contiguous data
        ctx.save_for_backward(h, kernel)
        ctx.axis, ctx.flip = axis, flip
        return torch.ops.hpcflow.depthwise_periodic(h.contiguous(), kernel.contiguous(), axis, flip)

    @staticmethod
    def backward(ctx, g: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        h, kernel = ctx.saved_tensors
        grad_h = grad_kernel = None
        if ctx.needs_input_grad[0]:  # the flipped kernel, read backwards by the kernel
            grad_h = _FusedDepthwise.apply(g, kernel, ctx.axis, not ctx.flip)
        if ctx.needs_input_grad[1]:
            grad_kernel = _FusedKernelGrad.apply(g, h, kernel.shape[1], ctx.axis)
            if ctx.flip:  # the forward read kernel[:, k - 1 - j]
                grad_kernel = grad_kernel.flip(1)
        return grad_h, grad_kernel, None, None


class _FusedKernelGrad(torch.autograd.Function):
    """``grad_kernel[r, j] = sum g[b, r, n] h[b, r, n + j - k//2]`` by
    ``torch.ops.hpcflow.depthwise_periodic_kernel_grad``; its derivatives are convolutions:
    ``d/dg`` is ``h`` convolved with the cotangent ``c: [R, k]``, ``d/dh`` is ``g`` convolved
    with ``c`` flipped."""

    @staticmethod
    def forward(ctx, g: torch.Tensor, h: torch.Tensor, k: int, axis: int) -> torch.Tensor:
        ctx.save_for_backward(g, h)
        ctx.axis = axis
        return torch.ops.hpcflow.depthwise_periodic_kernel_grad(g.contiguous(), h.contiguous(), k,
                                                                axis)

    @staticmethod
    def backward(ctx, c: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None,
                                                 None, None]:
        g, h = ctx.saved_tensors
        grad_g = grad_h = None
        if ctx.needs_input_grad[0]:
            grad_g = _FusedDepthwise.apply(h, c, ctx.axis)
        if ctx.needs_input_grad[1]:
            grad_h = _FusedDepthwise.apply(g, c, ctx.axis, True)
        return grad_g, grad_h, None, None


class CPConvNd(nn.Module):
    """CP-factorized periodic convolution, ``x: [B, C_in, *L] -> [B, C_out, *L]`` (any Nd).

    Parameters: ``weight_in: [R, C_in]``, ``axis_kernels[a]: [R, k_a]`` for each lattice axis a,
    ``weight_out: [C_out, R]``, ``bias: [C_out]``. Forward = 1x1 (C_in -> R), a depthwise periodic
    1D convolution along every axis, 1x1 (R -> C_out) + bias (module docstring; Boyda,
    Lattice 2021, "Factorized convolutions"). ``fused``: the depthwise convolutions by the
    fused CPU kernel (:func:`depthwise_periodic_conv1d`).
    """

    def __init__(
        self,
        nd: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        rank: int = 8,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        fused: bool = False,
    ) -> None:
        super().__init__()
        check_positive_ints(nd=nd, in_channels=in_channels, out_channels=out_channels, rank=rank)
        self.nd, self.in_channels, self.out_channels = nd, in_channels, out_channels
        self.rank = rank
        self.fused = bool(fused)  # the depthwise factors by the fused CPU kernel
        self.kernel_size = kernel_tuple(kernel_size, nd)
        factory = {"dtype": dtype, "device": device}
        self.weight_in = nn.Parameter(torch.empty(rank, in_channels, **factory))
        self.axis_kernels = nn.ParameterList(
            [nn.Parameter(torch.empty(rank, k, **factory)) for k in self.kernel_size]
        )
        self.weight_out = nn.Parameter(torch.empty(out_channels, rank, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Var(U_in) = 1/C_in, Var(K_a) = 1/k_a, Var(U_out) = 1/(3R): the reconstructed kernel has
        the variance of ``ConvNd``'s default init."""
        _uniform_(self.weight_in, math.sqrt(3 / self.in_channels))
        for kernel, k in zip(self.axis_kernels, self.kernel_size, strict=True):
            _uniform_(kernel, math.sqrt(3 / k))
        _uniform_(self.weight_out, 1 / math.sqrt(self.rank))
        if self.bias is not None:
            _uniform_(self.bias, 1 / math.sqrt(self.in_channels * math.prod(self.kernel_size)))

    @torch.no_grad()
    def zero_(self) -> CPConvNd:
        """Make the output exactly zero (``weight_out`` and bias zero); gradients still reach
        ``weight_out``."""
        self.weight_out.zero_()
        if self.bias is not None:
            self.bias.zero_()
        return self

    def full_weight(self) -> torch.Tensor:
        """Reconstructed kernel ``W: [C_out, C_in, k_0, ..., k_{Nd-1}]``."""
        spatial = torch.ones(self.rank, dtype=self.weight_in.dtype, device=self.weight_in.device)
        for kernel in self.axis_kernels:  # outer product over axes: [R, k_0, ..., k_a]
            shape = (self.rank, *([1] * (spatial.dim() - 1)), -1)
            spatial = spatial.unsqueeze(-1) * kernel.view(shape)
        return torch.einsum("or,rc,r...->oc...", self.weight_out, self.weight_in, spatial)

    def _rank_space(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.kernel_size, type(self).__name__)
        h = channel_mix(self.weight_in, x)  # [B, R, *L]
        for axis, kernel in enumerate(self.axis_kernels):
            h = depthwise_periodic_conv1d(h, kernel, axis, self.fused)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, C_in, *L] -> [B, C_out, *L]``."""
        return channel_mix(self.weight_out, self._rank_space(x), self.bias)  # [B, C_out, *L]

    def site_index(self, shape: Sequence[int], sites: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward_at` needs: the flat ``sites`` themselves."""
        return sites.clone()

    def forward_at(self, x: torch.Tensor, sites: torch.Tensor) -> torch.Tensor:
        """The output at ``sites`` only, site-major ``[B, S, C_out]`` (the last 1x1 mixing,
        the largest factor when ``C_out >> R``, runs at those sites only)."""
        h = self._rank_space(x)
        return mix_rows(h.reshape(h.shape[0], self.rank, -1).transpose(1, 2), self.weight_out,
                        self.bias, sites)

    def extra_repr(self) -> str:
        return (
            f"nd={self.nd}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, rank={self.rank}, bias={self.bias is not None}"
        )


class TuckerConvNd(nn.Module):
    """Tucker-factorized periodic convolution, ``x: [B, C_in, *L] -> [B, C_out, *L]`` (any Nd).

    Parameters: ``weight_in: [R_in, C_in]``, ``core`` (a bias-free ``ConvNd`` ``R_in -> R_out``,
    ``core.weight: [R_out, R_in, *k]``), ``weight_out: [C_out, R_out]``, ``bias: [C_out]``.
    ``rank`` is an int (R_in = R_out) or a pair ``(R_in, R_out)``.
    """

    def __init__(
        self,
        nd: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        rank: int | tuple[int, int] = 8,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints(nd=nd, in_channels=in_channels, out_channels=out_channels)
        ranks = tucker_ranks(rank)
        self.nd, self.in_channels, self.out_channels = nd, in_channels, out_channels
        self.rank = ranks
        factory = {"dtype": dtype, "device": device}
        self.weight_in = nn.Parameter(torch.empty(ranks[0], in_channels, **factory))
        self.core = ConvNd(nd, ranks[0], ranks[1], kernel_size, bias=False, **factory)
        self.kernel_size = self.core.kernel_size
        self.weight_out = nn.Parameter(torch.empty(out_channels, ranks[1], **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Var(U_in) = 1/C_in, Var(G) = 1/(R_in prod k), Var(U_out) = 1/(3 R_out): the
        reconstructed kernel has the variance of ``ConvNd``'s default init."""
        fan_core = self.rank[0] * math.prod(self.kernel_size)
        _uniform_(self.weight_in, math.sqrt(3 / self.in_channels))
        _uniform_(self.core.weight, math.sqrt(3 / fan_core))
        _uniform_(self.weight_out, 1 / math.sqrt(self.rank[1]))
        if self.bias is not None:
            _uniform_(self.bias, 1 / math.sqrt(self.in_channels * math.prod(self.kernel_size)))

    @torch.no_grad()
    def zero_(self) -> TuckerConvNd:
        """Make the output exactly zero (``weight_out`` and bias zero)."""
        self.weight_out.zero_()
        if self.bias is not None:
            self.bias.zero_()
        return self

    def full_weight(self) -> torch.Tensor:
        """Reconstructed kernel ``W: [C_out, C_in, k_0, ..., k_{Nd-1}]``."""
        return torch.einsum("oq,qp...,pc->oc...", self.weight_out, self.core.weight, self.weight_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, C_in, *L] -> [B, C_out, *L]``."""
        check_input(x, self.in_channels, self.kernel_size, type(self).__name__)
        h = self.core(channel_mix(self.weight_in, x))  # [B, R_out, *L]
        return channel_mix(self.weight_out, h, self.bias)

    def site_index(self, shape: Sequence[int], sites: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward_at` needs: the :func:`stencil_table` of the core at ``sites``."""
        return self.core.site_index(shape, sites)

    def forward_at(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The output at the sites of ``index`` only, site-major ``[B, S, C_out]``: the core
        and the last 1x1 mixing run there only."""
        check_input(x, self.in_channels, self.kernel_size, type(self).__name__)
        h = self.core.forward_at(channel_mix(self.weight_in, x), index)  # [B, S, R_out]
        return mix_rows(h, self.weight_out, self.bias)

    def extra_repr(self) -> str:
        return (
            f"nd={self.nd}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, rank={self.rank}, bias={self.bias is not None}"
        )
