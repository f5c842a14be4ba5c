"""Independent reference for periodic convolutions: a sum over all kernel offsets of
``torch.roll``-shifted inputs (no folding, no padding, no torch convolution)."""

import itertools

import torch


def roll_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
    """``x: [B, C_in, *L]``, ``weight: [C_out, C_in, *k]`` -> ``[B, C_out, *L]`` with
    ``out[b, o, n] = bias[o] + sum_{c, j} weight[o, c, j] x[b, c, (n + j - k//2) mod L]``."""
    ks = weight.shape[2:]
    dims = tuple(range(2, 2 + len(ks)))
    offsets = list(itertools.product(*(range(k) for k in ks)))
    # roll by k//2 - j puts x[n + j - k//2] at site n
    shifted = torch.stack(
        [
            torch.roll(x, tuple(k // 2 - j for k, j in zip(ks, js, strict=True)), dims)
            for js in offsets
        ],
        dim=-1,
    )  # [B, C_in, *L, K]
    out = torch.einsum("bc...k,ock->bo...", shifted, weight.flatten(2))
    if bias is not None:
        out = out + bias.view(-1, *([1] * len(ks)))
    return out
