"""Context networks: periodic CNNs over the lattice that feed the coupling layers of a flow.

``build_context_net`` returns a module ``x: [B, C_in, *L] -> [B, C_out, *L]`` (``*L`` the extents
``L_0, ..., L_{Nd-1}``): convolution, activation, ..., convolution, with periodic padding and
"same" output size in every layer. The convolutions are full (``ConvNd``; 4D as one folded 3D
convolution, D. Boyda, Lattice 2021, "Convolutional layer in 4D") or factorized (``CPConvNd`` /
``TuckerConvNd``, "Factorized convolutions"), as in arXiv:2305.02402.

The last layer starts with zero output (its kernel / output factor and bias are zero), so the
transformation parameters a coupling layer derives from the context are exactly those of the
identity map and a new flow starts at the identity, while gradients still reach that layer.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hpcflow.nn.conv import ConvNd, check_positive_ints, kernel_tuple
from hpcflow.nn.factorized import CPConvNd, TuckerConvNd, tucker_ranks

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
}
CONVS = ("full", "factorized", "tucker")


def build_context_net(
    nd: int,
    in_channels: int,
    out_channels: int,
    hidden: Sequence[int] = (32, 32),
    kernel_size: int | Sequence[int] = 3,
    activation: str = "gelu",
    conv: str = "full",
    rank: int | Sequence[int] = 8,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    lattice: Sequence[int] | None = None,
    fused: bool = False,
) -> nn.Sequential:
    """Periodic CNN ``[B, in_channels, *L] -> [B, out_channels, *L]`` on an Nd-dimensional lattice.

    Layers: ``len(hidden) + 1`` convolutions ``in_channels -> hidden[0] -> ... -> out_channels``
    with ``activation`` between them (none after the last). ``conv``: ``"full"`` (``ConvNd``),
    ``"factorized"`` (``CPConvNd`` of rank ``rank``) or ``"tucker"`` (``TuckerConvNd``, ``rank``
    an int or ``(R_in, R_out)``). ``kernel_size``: odd int or one odd int per axis.
    ``dtype``/``device``: of the parameters (default: torch's defaults). ``lattice``: the
    extents ``L`` when known (full convolutions then pad by one precomputed gather; any other
    input size still works). ``fused``: the depthwise factors of ``"factorized"``
    convolutions by the fused CPU kernel (:class:`CPConvNd`). The last layer outputs exactly
    zero at initialization.
    """
    check_positive_ints(nd=nd, in_channels=in_channels, out_channels=out_channels)
    if isinstance(hidden, int | str) or not isinstance(hidden, Sequence):
        raise ValueError(f"hidden={hidden!r} must be a sequence of positive integers")
    for h in hidden:
        check_positive_ints(hidden=h)
    hidden = tuple(hidden)
    kernel_size = kernel_tuple(kernel_size, nd)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} must be one of {sorted(ACTIVATIONS)}")
    if conv not in CONVS:
        raise ValueError(f"conv={conv!r} must be one of {list(CONVS)}")
    if conv == "tucker":
        rank = tucker_ranks(rank)
    else:
        check_positive_ints(rank=rank)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype={dtype!r} must be a floating-point torch.dtype or None")

    factory = {"dtype": dtype, "device": device}
    widths = (in_channels, *hidden, out_channels)
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if conv == "full":
            layer = ConvNd(nd, c_in, c_out, kernel_size, lattice=lattice, **factory)
        elif conv == "factorized":
            layer = CPConvNd(nd, c_in, c_out, kernel_size, rank=rank, fused=fused, **factory)
        else:
            layer = TuckerConvNd(nd, c_in, c_out, kernel_size, rank=rank, **factory)
        layers.append(layer)
        if i < len(widths) - 2:
            layers.append(ACTIVATIONS[activation]())
    layers[-1].zero_()
    return nn.Sequential(*layers)
