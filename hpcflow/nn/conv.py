"""Periodic ("circular") convolutions on Nd-dimensional lattices, one interface for every Nd.

Layout everywhere: input ``x: [B, C_in, L_0, ..., L_{Nd-1}]``, kernel
``weight: [C_out, C_in, k_0, ..., k_{Nd-1}]``, output ``[B, C_out, L_0, ..., L_{Nd-1}]`` ("same"
size, periodic boundary conditions, odd kernel sizes only, cross-correlation as in PyTorch):

    out[b, o, n] = bias[o] + sum_{c, j} weight[o, c, j] * x[b, c, (n + j - k // 2) mod L]

Nd = 1, 2, 3 call PyTorch's native convolutions after circular padding (exactly what
``torch.nn.ConvNd(padding_mode='circular')`` does). PyTorch has no 4D convolution, so Nd >= 4 uses
"convolution layer in 4D is sum of convolution layers in 3D" (D. Boyda, Lattice 2021, slide
"Convolutional layer in 4D"; used for the 4D flows of arXiv:2305.02402), in its fast form
(see docs/physics.md, "4D convolution from 3D convolutions"):

1. fold the first lattice axis into the batch: ``[B, C_in, L_0, *R] -> [B*L_0, C_in, *R]`` (one
   copy, into channels-last memory, where the CPU convolution is ~25% faster);
2. apply the WHOLE kernel in one (Nd-1)-dimensional convolution with ``k_0 * C_out`` output
   channels (channel ``i * C_out + o`` holds kernel slice ``weight[o, :, i]``);
3. shift slice ``i`` along ``L_0`` by ``i - k_0 // 2`` and sum over ``i``.

There is no loop over lattice slices, only ``k_0`` cheap additions of shifted views, written
straight into the contiguous output. The same
construction works on top of any (Nd-1)-dimensional convolution, so it recurses for Nd > 4 and
can be forced for Nd = 2, 3 (``fold=True``) to check it against the native convolutions.

Output at a few sites only (``ConvNd.forward_at``): a coupling layer reads its context network's
last layer at the sites of its active links only (a quarter or half of the lattice), and that
layer carries most of the network's multiplications (its output has ``n_params`` channels
per update and direction). There the convolution is one gather of the input at the kernel's
stencil of each wanted site (:func:`stencil_table`) and one matrix product (:func:`mix_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_NATIVE_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def check_positive_ints(**values) -> None:
    """Raise ``ValueError`` naming the first argument that is not a positive integer."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} must be a positive integer")


def kernel_tuple(kernel_size: int | Sequence[int], nd: int) -> tuple[int, ...]:
    """Validate ``kernel_size`` (an odd int, or a sequence of ``nd`` odd ints) and expand it."""
    if isinstance(kernel_size, int):
        ks = (kernel_size,) * nd
    else:
        ks = tuple(kernel_size)
        if len(ks) != nd:
            raise ValueError(f"kernel_size={kernel_size!r} must have {nd} entries for Nd={nd}")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0:
            raise ValueError(
                f"kernel_size={kernel_size!r}: periodic 'same' convolutions need odd positive "
                "kernel sizes"
            )
    return ks


def check_input(
    x: torch.Tensor, in_channels: int, kernel_size: tuple[int, ...], owner: str
) -> None:
    """Raise a ValueError unless ``x`` is ``[B, in_channels, *L]`` with every ``k // 2 <= L``."""
    nd = len(kernel_size)
    if x.dim() != nd + 2 or x.shape[1] != in_channels:
        raise ValueError(
            f"{owner} (Nd={nd}) expects input [B, {in_channels}, L_0..L_{nd - 1}], "
            f"got {list(x.shape)}"
        )
    if any(k // 2 > n for k, n in zip(kernel_size, x.shape[2:], strict=True)):
        raise ValueError(
            f"kernel_size={kernel_size} wraps more than once around extents {list(x.shape[2:])}"
        )


def periodic_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, fold: bool = False,
    pad_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Periodic "same" convolution of ``x: [B, C_in, *L]`` with ``weight: [C_out, C_in, *k]``.

    Returns ``[B, C_out, *L]``. Nd = ``weight.dim() - 2``; native for Nd <= 3 unless ``fold``,
    folded (module docstring) otherwise. ``pad_index``: the table of :func:`pad_table` for the
    (native) convolution's lattice, which pads by one gather instead of ``2 Nd + 1`` copies.
    """
    nd = weight.dim() - 2
    if nd in _NATIVE_CONV and not fold:
        return _native_periodic_conv(x, weight, bias, pad_index)
    return _folded_periodic_conv(x, weight, bias, pad_index)


def _native_periodic_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    pad_index: torch.Tensor | None = None,
) -> torch.Tensor:
    ks = weight.shape[2:]
    pads = tuple(k // 2 for k in ks)
    if pad_index is not None and _split_backward(x):
        return _PeriodicConv.apply(x, weight, bias, pad_index, pads)
    x = circular_pad(x, pads) if pad_index is None else gather_pad(x, pad_index, pads)
    return _NATIVE_CONV[len(ks)](x, weight, bias)


def _split_backward(x: torch.Tensor) -> bool:
    """Whether :class:`_PeriodicConv` runs the convolution: float32 on a CPU, eager, batches of
    more than one sample (where torch's CPU convolution is oneDNN's; a single sample with a
    small kernel goes to torch's own kernel in contiguous memory, where channels-last adds
    copies). Elsewhere (GPUs, float64, compiled graphs, one sample) the padded native
    convolution and its autograd node, which the measurements behind :class:`_PeriodicConv` do
    not cover."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and x.shape[0] > 1
            and not torch.compiler.is_compiling())


class _PeriodicConv(torch.autograd.Function):
    """The native periodic convolution (Nd = 1, 2, 3) in channels-last memory, its backward in
    two products that each touch the lattice's ``V`` sites, not the padded ``V'``.

    ``forward(x [B, C_in, *L], weight, bias, pad_index, pads) -> [B, C_out, *L]``
    (channels-last): ``x`` is padded by one gather (:func:`gather_pad`) and convolved without
    padding, as before. The autograd node of that convolution forms the input gradient on the
    padded lattice, ``V' / V`` times the work (3.4x for a 3^3 kernel on 4^3), then folds the
    halo back; and oneDNN computes both gradients in one call several times slower in
    channels-last memory than the forward. Here instead:

    - weight and bias gradients: one ``convolution_backward`` asking for those only;
    - input gradient: the adjoint of a periodic cross-correlation is the periodic
      cross-correlation of the output gradient with the kernel mirrored and its channel axes
      swapped, ``w'[c, o, j] = w[o, c, k - 1 - j]``: one more periodic convolution, on ``V``
      sites, in channels-last memory.

    Each is formed only when the running backward asks for it (:func:`_asked`): the path
    gradient's reused contexts ask for the input gradient alone. The backward is made of
    differentiable operations (second derivatives work). It saves the input ``x``, not the
    padded one (``V' / V`` times larger), and pads it again for the weight gradient (one
    gather). Float32 on one CPU thread (perf/RESULTS.md): the ``u1_3d`` training step 1.18x
    faster than through torch's node, ``u1_2d`` 1.09x; the step's peak tensors 35% and 22%
    smaller."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                pad_index: torch.Tensor, pads: tuple[int, ...]) -> torch.Tensor:
        nd = weight.dim() - 2
        ctx.save_for_backward(x, weight, pad_index)
        ctx.pads = pads
        ctx.tensor_inputs = (True, True, bias is not None, True)
        return _NATIVE_CONV[nd](gather_pad(x, pad_index, pads, channels_last=True), weight, bias)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, weight, pad_index = ctx.saved_tensors
        nd = weight.dim() - 2
        need_weight = _asked(ctx, 1)
        need_bias = _asked(ctx, 2)
        g_x = g_weight = g_bias = None
        if need_weight or need_bias:
            x_padded = gather_pad(x, pad_index, ctx.pads, channels_last=True)
            _, g_weight, g_bias = torch.ops.aten.convolution_backward(
                g, x_padded, weight, [weight.shape[0]], [1] * nd, [0] * nd, [1] * nd, False,
                [0] * nd, 1, [False, need_weight, need_bias])
            # (1D: torch forms a weight gradient, of the wrong rank, even when not asked)
            g_weight, g_bias = (g_weight if need_weight else None), (g_bias if need_bias else None)
        if _asked(ctx, 0):
            mirrored = weight.flip(list(range(2, nd + 2))).transpose(0, 1)
            g_x = _NATIVE_CONV[nd](gather_pad(g, pad_index, ctx.pads, channels_last=True), mirrored)
        return g_x, g_weight, g_bias, None, None


def _folded_periodic_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
    pad_index: torch.Tensor | None = None,
) -> torch.Tensor:
    b, c_in, l0, *rest = x.shape
    c_out, _, k0, *k_rest = weight.shape
    # [B, C_in, L0, *R] -> [B*L0, C_in, *R], one copy into channels-last memory [B*L0, *R, C_in]
    # (the layout the CPU convolution runs fastest in; the conv output comes back in it too)
    xf = x.movedim(1, -1).reshape(b * l0, *rest, c_in).movedim(-1, 1)
    # [C_out, C_in, k0, *kR] -> [k0*C_out, C_in, *kR]: row i*C_out + o is slice weight[o, :, i]
    w = weight.movedim(2, 0).reshape(k0 * c_out, c_in, *k_rest)
    # the one dense (Nd-1)D convolution
    y = periodic_conv(xf, w, pad_index=pad_index).view(b, l0, k0, c_out, *rest)
    out = _ShiftSum.apply(y)  # [B, C_out, L0, *R]
    if bias is not None:
        out = out + bias.view(c_out, *([1] * (len(rest) + 1)))
    return out


def circular_pad(x: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """Periodic padding of the last ``len(pads)`` axes of ``x`` by ``pads[a]`` on both sides.

    ``[..., L_0, ..., L_{n-1}] -> [..., L_0 + 2 p_0, ..., L_{n-1} + 2 p_{n-1}]``, any n, any
    leading axes; needs ``p_a <= L_a``. Same values as ``F.pad(mode='circular')``, but it keeps
    the memory layout of ``x`` (channels-last stays channels-last, which the CPU convolution
    prefers), and its backward folds the halo back with a few adds instead of F.pad's chain of
    zero-filled slice gradients (~5x the forward).
    """
    pads = tuple(int(p) for p in pads)
    if not any(pads):
        return x
    return _CircularPad.apply(x, pads)


def _flat_site(coords: Sequence[torch.Tensor], shape: Sequence[int]) -> torch.Tensor:
    """Row-major flat index of the periodic lattice ``shape`` of integer coordinates (one
    tensor per axis, broadcast together; any values, wrapped mod ``L_a``)."""
    strides = [math.prod(shape[a + 1:]) for a in range(len(shape))]
    return sum(torch.remainder(c, n) * st for c, n, st in zip(coords, shape, strides, strict=True))


def pad_table(shape: Sequence[int], pads: Sequence[int]) -> torch.Tensor:
    """Flat source site of every site of the periodically padded lattice, for
    :func:`gather_pad`: ``[prod(L_a + 2 p_a)]`` int64 indices into ``[prod(L_a)]``."""
    grids = torch.meshgrid(*[torch.arange(-p, n + p) for n, p in zip(shape, pads, strict=True)],
                           indexing="ij")
    return _flat_site(grids, shape).reshape(-1)


def gather_pad(x: torch.Tensor, index: torch.Tensor, pads: Sequence[int],
               channels_last: bool = False) -> torch.Tensor:
    """:func:`circular_pad` by one gather along the flattened lattice (``index``: :func:`pad_table`
    of ``x``'s lattice): one operation forward, one index-add backward. The result is contiguous
    when ``x`` is and ``channels_last`` is False; otherwise channels-last, gathered as whole
    channel vectors from ``x`` in any memory layout."""
    b, c, *lattice = x.shape
    padded = [n + 2 * p for n, p in zip(lattice, pads, strict=True)]
    if x.is_contiguous() and not channels_last:
        return x.reshape(b, c, -1).index_select(2, index).view(b, c, *padded)
    # reshape (a view in the contiguous and channels-last layouts), not flatten: batched
    # gradients (vmap) have no batching rule for flatten
    rows = x.reshape(b, c, -1).transpose(1, 2).index_select(1, index)  # [B, V', C]
    return rows.reshape(b, *padded, c).movedim(-1, 1)


def stencil_table(shape: Sequence[int], kernel_size: Sequence[int],
                  sites: torch.Tensor) -> torch.Tensor:
    """Flat source site of every (wanted site, kernel offset) pair of a periodic convolution:
    ``[S * K]`` int64 indices into ``[prod(L_a)]``, site-major (``S = len(sites)``, flat site
    indices; ``K = prod(k_a)`` offsets in the row-major order of ``weight``'s kernel axes).
    Entry ``s * K + j`` is the site ``(n_s + j - k // 2) mod L`` that offset ``j`` reads for the
    output at ``n_s``."""
    shape = [int(n) for n in shape]
    coords = torch.unravel_index(sites, shape)
    offsets = torch.meshgrid(*[torch.arange(k) - k // 2 for k in kernel_size], indexing="ij")
    return _flat_site([c.view(-1, 1) + o.reshape(1, -1) for c, o in zip(coords, offsets,
                                                                         strict=True)],
                      shape).reshape(-1)


def mix_rows(x_cl: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
             index: torch.Tensor | None = None, k: int = 1) -> torch.Tensor:
    """``weight: [C_out, K * C]`` applied to rows of ``x_cl: [B, V, C]`` (any strides), plus
    ``bias: [C_out]`` -> ``[B, S, C_out]``: one matrix product over all ``B * S`` rows.

    ``index: [S * K]`` (:func:`stencil_table`, or flat sites with ``k = 1``) gathers row
    ``s`` as ``x_cl[b, index[s * K : (s + 1) * K], :]`` flattened; ``None`` takes the rows as
    they are (``S = V``, ``K = 1``)."""
    b, v, c = x_cl.shape
    n_sites = v if index is None else index.numel() // k
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    out = _RowProduct.apply(x_cl, index, weight, bias, k)
    return out.view(b, n_sites, weight.shape[0])


class _RowProduct(torch.autograd.Function):
    """The product of :func:`mix_rows`, ``[B * S, C_out]``.

    Saves ``x_cl`` (a view of an input the network keeps anyway), not the gathered rows
    ``[B, S, K * C]`` (``K * S / V`` times larger: 13x for 3D kernels at half the sites), and
    gathers them again in the backward when the weight needs a gradient. Saves the same tensors
    whether or not the parameters are frozen: ``torch.addmm`` saves its input only when the
    weight needs a gradient, and activation checkpointing of the path gradient's inverse pass
    (run frozen, recomputed thawed: ``train.recompute_layers``) refuses saved tensors that
    differ between the two passes."""

    @staticmethod
    def forward(ctx, x_cl: torch.Tensor, index: torch.Tensor | None, weight: torch.Tensor,
                bias: torch.Tensor, k: int) -> torch.Tensor:
        ctx.save_for_backward(x_cl, index, weight)
        ctx.k = k
        ctx.tensor_inputs = tuple(isinstance(a, torch.Tensor) for a in (x_cl, index, weight, bias))
        blocks = _row_blocks(x_cl, index)
        if len(blocks) == 1:
            return torch.addmm(bias, _rows(x_cl, index, k), weight.t())
        n_sites = index.numel() // k
        out = x_cl.new_empty(x_cl.shape[0] * n_sites, weight.shape[0])
        for s, e in blocks:  # each block's rows of the product written in place
            torch.addmm(bias, _rows(x_cl[s:e], index, k), weight.t(),
                        out=out[s * n_sites:e * n_sites])
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x_cl, index, weight = ctx.saved_tensors
        b, v, c = x_cl.shape
        need_x, need_weight, need_bias = (_asked(ctx, i) for i in (0, 2, 3))
        g_x = g_weight = None
        g_xs = []
        # sizes spelt out (batch 0); without a gather the rows are the input itself, one block
        n_rows, n_taps = (v, v) if index is None else (index.numel() // ctx.k, index.numel())
        for s, e in _row_blocks(x_cl, index):
            whole = e - s == b  # one block: no slices (the operation count of small batches)
            g_s = g if whole else g.view(b, n_rows, g.shape[-1])[s:e].reshape(-1, g.shape[-1])
            if need_weight:
                g_w = g_s.t() @ _rows(x_cl if whole else x_cl[s:e], index, ctx.k)
                g_weight = g_w if g_weight is None else g_weight + g_w
            if need_x:  # out of place: vmap
                g_rows = (g_s @ weight).view(e - s, n_taps, c)
                g_xs.append(g_rows if index is None else
                            x_cl.new_zeros(e - s, v, c).index_add(1, index, g_rows))
        if need_x:
            g_x = g_xs[0] if len(g_xs) == 1 else torch.cat(g_xs)
        return g_x, None, g_weight, g.sum(0) if need_bias else None, None


def _asked(ctx, i: int) -> bool:
    """Whether the backward pass now running uses the gradient of a custom function's input
    ``i``. ``ctx.needs_input_grad`` says only whether the input requires a gradient; a pass that
    asks for the gradient of some inputs only (``torch.autograd.grad(out, x)``: the path
    gradient's reused contexts ask for the input links', not the weights') would otherwise
    form and drop the others. torch's engine knows which nodes it will run (a private query,
    the one ``torch.autograd.graph.register_multi_grad_hook`` uses); without it, or outside
    the engine (or when compiled), every input that requires a gradient is taken as asked. The
    function's forward records ``ctx.tensor_inputs`` (which of its arguments are tensors: the
    node's edges)."""
    if not ctx.needs_input_grad[i]:
        return False
    if torch.compiler.is_compiling():  # traced backward: no engine to ask (compiled path)
        return True
    # the node's edges are those of its tensor inputs only (``ctx.tensor_inputs``, forward)
    node = ctx.next_functions[sum(ctx.tensor_inputs[:i])][0]
    will_run = getattr(torch._C, "_will_engine_execute_node", None)
    if node is None or will_run is None:
        return True
    try:
        return bool(will_run(node))
    except RuntimeError:
        return True


_ROW_BLOCK_BYTES = 1 << 20
"""Gathered rows of :func:`mix_rows` per block and thread on a CPU: the stencils of a few
samples at a time (half of a core's 2 MiB L2 cache), product and scatter done before the next
block is gathered, instead of one ``[B * S, K * C]`` matrix (3.5 MiB for ``u1_3d`` at batch 64)
written out and read back from memory in every pass (``u1_3d``'s step 10-20% faster on one
thread; the same values, the weight gradient summed over the blocks)."""


def _row_blocks(x_cl: torch.Tensor, index: torch.Tensor | None) -> list[tuple[int, int]]:
    """Sample ranges ``[(start, end)]`` of :class:`_RowProduct`'s blocks: the whole batch at
    once on GPUs (fewest launches), when compiled, without a gather (``index`` None) or when
    the rows fit in :data:`_ROW_BLOCK_BYTES` per torch thread; else as few blocks as keep
    within that (one sample per block where one sample exceeds it), of one size but the last."""
    b = x_cl.shape[0]
    if (index is None or x_cl.device.type != "cpu" or b < 2
            or torch.compiler.is_compiling()):
        return [(0, b)]
    per_sample = index.numel() * x_cl.shape[2] * x_cl.element_size()
    budget = _ROW_BLOCK_BYTES * max(1, torch.get_num_threads())
    n_blocks = -(-b // max(1, budget // max(1, per_sample)))
    size = -(-b // n_blocks)
    return [(s, min(b, s + size)) for s in range(0, b, size)]


def _rows(x_cl: torch.Tensor, index: torch.Tensor | None, k: int) -> torch.Tensor:
    """The rows of :func:`mix_rows` as one matrix ``[B * S, K * C]``."""
    b, v, c = x_cl.shape
    if index is None:
        return x_cl.reshape(b * v, c)
    return x_cl.index_select(1, index).reshape(b * (index.numel() // k), k * c)


def _memory_order(t: torch.Tensor) -> list[int]:
    """Axes of ``t`` from outermost to innermost in memory."""
    return sorted(range(t.dim()), key=lambda d: -t.stride(d))


def _empty_in_layout(
    like: torch.Tensor, shape: Sequence[int], order: Sequence[int] | None = None
) -> torch.Tensor:
    """Uninitialised tensor of ``shape`` (dtype and device of ``like``) with its axes laid out in
    memory in ``order`` (default: ``like``'s order), e.g. channels-last stays channels-last."""
    order = _memory_order(like) if order is None else order
    t = like.new_empty([shape[d] for d in order])
    return t.permute([list(order).index(d) for d in range(len(shape))])


class _CircularPad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, pads: tuple[int, ...]) -> torch.Tensor:
        ctx.pads = pads
        first = x.dim() - len(pads)
        shape = list(x.shape)
        for a, p in enumerate(pads):
            shape[first + a] += 2 * p
        out = _empty_in_layout(x, shape)
        core = out
        for a, p in enumerate(pads):
            core = core.narrow(first + a, p, x.shape[first + a])
        core.copy_(x)
        # fill the halos axis by axis, each over the full extent of the others (so corners too)
        for a, p in enumerate(pads):
            d, n = first + a, x.shape[first + a]
            if p:
                out.narrow(d, 0, p).copy_(out.narrow(d, n, p))  # left halo = right edge
                out.narrow(d, n + p, p).copy_(out.narrow(d, p, p))  # right halo = left edge
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:
        # the adjoint folds each halo back onto the edge it copies; differentiable ops only
        first = g.dim() - len(ctx.pads)
        for a, p in enumerate(ctx.pads):
            if p:
                d = first + a
                n = g.shape[d] - 2 * p
                shape = list(g.shape)
                shape[d] = n
                core = _empty_in_layout(g, shape)
                core.copy_(g.narrow(d, p, n))
                core.narrow(d, n - p, p).add_(g.narrow(d, 0, p))
                core.narrow(d, 0, p).add_(g.narrow(d, n + p, p))
                g = core
        return g, None


class _ShiftSum(torch.autograd.Function):
    """``y: [B, L0, k0, C, *R] -> out: [B, C, L0, *R]``, ``out[:, :, n] = sum_i y[:, n', i]``
    with ``n' = (n + i - k0//2) mod L0``.

    The "shift along the first axis and sum" step of the folded convolution, written straight
    into a contiguous output. Forward: ``k0`` in-place adds of shifted views (two pieces each; no
    rolls, no padding copy); backward: ``2 k0`` slice copies into a gradient with y's memory
    layout. Differentiable backward, so double backward works.
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor) -> torch.Tensor:
        b, l0, k0, c, *rest = y.shape
        ctx.y_shape, ctx.y_order = y.shape, _memory_order(y)
        p = k0 // 2
        out = y.new_empty(b, c, l0, *rest)
        acc = out.transpose(1, 2)  # [B, L0, C, *R] view of out
        acc.copy_(y[:, :, p])
        for i in range(k0):
            s = (i - p) % l0
            if i != p:
                acc[:, : l0 - s].add_(y[:, s:, i])
                acc[:, l0 - s :].add_(y[:, :s, i])
        return out

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        # grad_y[:, m, i] = g[:, :, (m - i + k0//2) mod L0]
        l0, k0 = ctx.y_shape[1], ctx.y_shape[2]
        gt = g.transpose(1, 2)  # [B, L0, C, *R]
        grad = _empty_in_layout(g, ctx.y_shape, ctx.y_order)
        for i in range(k0):
            s = (k0 // 2 - i) % l0
            grad[:, : l0 - s, i].copy_(gt[:, s:])
            grad[:, l0 - s :, i].copy_(gt[:, :s])
        return grad


class ConvNd(nn.Module):
    """Periodic "same" convolution on an Nd-dimensional lattice (any Nd >= 1).

    ``x: [B, C_in, L_0, ..., L_{Nd-1}] -> [B, C_out, L_0, ..., L_{Nd-1}]``.

    ``weight: [C_out, C_in, k_0, ..., k_{Nd-1}]`` (the standard PyTorch layout for every Nd) and
    ``bias: [C_out]`` are the parameters. Nd = 1, 2, 3 compute like
    ``torch.nn.Conv{Nd}d(padding=k//2, padding_mode='circular')``; Nd = 4 (and higher) use one
    dense 3D convolution to ``k_0 * C_out`` channels on the input with ``L_0`` folded into the
    batch, then shifted sums along ``L_0`` (module docstring; Boyda, Lattice 2021, "Convolutional
    layer in 4D"; arXiv:2305.02402). ``fold=True`` forces that construction for Nd = 2, 3.

    Initialization is PyTorch's default for convolutions with the full Nd-dimensional fan-in
    ``C_in * k_0 * ... * k_{Nd-1}``: weight and bias uniform in ``+-1/sqrt(fan_in)``.
    """

    def __init__(
        self,
        nd: int,
        in_channels: int,
        out_channels: int,
        kernel_size: int | Sequence[int] = 3,
        bias: bool = True,
        fold: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        lattice: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        check_positive_ints(nd=nd, in_channels=in_channels, out_channels=out_channels)
        self.nd = nd
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_tuple(kernel_size, nd)
        self.fold = bool(fold)
        factory = {"dtype": dtype, "device": device}
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels, *self.kernel_size, **factory)
        )
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.reset_parameters()
        # With the lattice known, the periodic padding is one gather from a precomputed table
        # (of the (Nd-1)D lattice that the folded convolution pads).
        self.lattice = None if lattice is None else tuple(lattice)
        index = None
        if self.lattice is not None:
            native = nd in _NATIVE_CONV and not self.fold
            axes = slice(0, nd) if native else slice(1, nd)
            if native or nd - 1 in _NATIVE_CONV:
                index = pad_table(self.lattice[axes], [k // 2 for k in self.kernel_size[axes]])
        self.register_buffer("pad_index", index, persistent=False)

    def reset_parameters(self) -> None:
        """PyTorch's default convolution init, with the full Nd-dimensional fan-in."""
        bound = 1.0 / math.sqrt(self.in_channels * math.prod(self.kernel_size))
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    @torch.no_grad()
    def zero_(self) -> ConvNd:
        """Make the output exactly zero (kernel and bias zero); gradients still reach ``weight``."""
        self.weight.zero_()
        if self.bias is not None:
            self.bias.zero_()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, C_in, *L] -> [B, C_out, *L]``."""
        check_input(x, self.in_channels, self.kernel_size, type(self).__name__)
        index = self.pad_index if self.lattice == tuple(x.shape[2:]) else None
        return periodic_conv(x, self.weight, self.bias, fold=self.fold, pad_index=index)

    def site_index(self, shape: Sequence[int], sites: torch.Tensor) -> torch.Tensor:
        """What :meth:`forward_at` needs to compute the output at ``sites`` (flat indices into
        the lattice ``shape``): the :func:`stencil_table` of the kernel, ``[S * K]``."""
        return stencil_table(shape, self.kernel_size, sites)

    def forward_at(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The output at a few sites, site-major: ``x: [B, C_in, *L]`` -> ``[B, S, C_out]``,
        equal to ``forward(x).flatten(2)[..., sites].transpose(1, 2)`` (``index``:
        :meth:`site_index` of ``sites``).

        One gather of the stencils ``[B, S, K * C_in]`` from the channels-last view of ``x``
        and one matrix product with ``weight`` as ``[C_out, K * C_in]``; ``S / V`` of the full
        convolution's multiplications. The backward gathers again instead of keeping the
        stencils (:func:`mix_rows`)."""
        check_input(x, self.in_channels, self.kernel_size, type(self).__name__)
        b, c = x.shape[:2]
        k = math.prod(self.kernel_size)
        w = self.weight.reshape(self.out_channels, c, k).transpose(1, 2)  # [C_out, K, C_in]
        return mix_rows(x.flatten(2).transpose(1, 2), w.reshape(self.out_channels, k * c),
                        self.bias, index, k)

    def extra_repr(self) -> str:
        return (
            f"nd={self.nd}, {self.in_channels}, {self.out_channels}, "
            f"kernel_size={self.kernel_size}, bias={self.bias is not None}, fold={self.fold}"
        )
