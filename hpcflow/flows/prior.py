"""The prior: Haar-uniform links, drawn on the target device from counter-based random numbers.

Every prior sample is a pure function of ``(seed, stream, step, index)``: one Philox4x32-10 key
is hashed from ``(seed, stream, step)`` (:func:`prior_key`) and the sample index sits in the
counter (:func:`hpcflow.lattice.random.indexed_uniform`). So a batch split over any number of
ranks, drawn in any order, or a run resumed after a crash, draws exactly the same
configurations, on any device: the noise is integer arithmetic in torch, created where the
links are needed, with no per-sample generator and no copy from the host.
The density is ``log r = 0`` with respect to the normalized Haar measure (docs/physics.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..lattice.groups import Group
from ..lattice.random import derive_key, indexed_normal, indexed_uniform

__all__ = [
    "STREAM_TRAIN",
    "STREAM_SAMPLE",
    "STREAM_EVAL",
    "PRIOR_TAG",
    "sample_seed",
    "prior_key",
    "prior_noise",
    "haar_prior",
]

# Stream tags keep training, evaluation and sampling draws independent for one master seed.
STREAM_TRAIN = 1
STREAM_EVAL = 2
STREAM_SAMPLE = 3
# Domain tag of the prior's keys (ASCII "HAAR"): other users of derive_key get other keys.
PRIOR_TAG = 0x48414152


def sample_seed(seed: int, stream: int, index: int, step: int = 0) -> int:
    """A 63-bit ``torch.Generator`` seed for item ``index`` of ``step`` in ``stream`` (the HMC
    chains seed their generators with it; the prior no longer does)."""
    state = np.random.SeedSequence([seed, stream, step, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def prior_key(seed: int, stream: int, step: int = 0) -> tuple[int, int]:
    """The Philox key (two 32-bit words) of the prior draws of ``(seed, stream, step)``:
    :func:`hpcflow.lattice.random.derive_key` with the tag :data:`PRIOR_TAG`."""
    return derive_key(seed, stream, step, tag=PRIOR_TAG)


def _index_tensor(indices, device) -> torch.Tensor:
    """Sample indices ``[B]`` (``int64``) on ``device``: a ``range`` is made there directly;
    lists and arrays are checked (``0 <= i < 2^63``) and copied once; a tensor is trusted."""
    if isinstance(indices, torch.Tensor):
        return indices.to(device=device, dtype=torch.int64).reshape(-1)
    if isinstance(indices, range):
        if len(indices) and min(indices[0], indices[-1]) < 0:
            raise ValueError(f"sample indices must be >= 0, got {indices!r}")
        return torch.arange(indices.start, indices.stop, indices.step, dtype=torch.int64,
                            device=device)
    idx = np.asarray([int(i) for i in indices], dtype=np.int64).reshape(-1)
    if idx.size and idx.min() < 0:
        raise ValueError(f"sample indices must be >= 0, got {idx.tolist()!r}")
    return torch.from_numpy(idx).to(device)


def prior_noise(
    group: Group,
    shape: Sequence[int],
    indices: Sequence[int] | range | torch.Tensor,
    *,
    seed: int,
    stream: int,
    step: int = 0,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The noise of :func:`haar_prior`: ``[len(indices), *N]`` on ``device``, where
    ``group.noise((Nd, *shape), dtype=dtype)`` has shape ``N`` (U(1): uniforms in ``(0, 1)``,
    ``[Nd, *L]``; SU(N): standard normals ``[Nd, *L, Nc, Nc, 2]``) and the same real dtype.

    Sample ``b`` is drawn under :func:`prior_key` ``(seed, stream, step)`` with counter index
    ``indices[b]`` (:func:`hpcflow.lattice.random.indexed_uniform`): it depends on nothing else.
    """
    template = group.noise((len(shape), *shape), dtype=dtype, device="meta")  # shape only
    draw = {"uniform": indexed_uniform, "normal": indexed_normal}.get(group.noise_kind)
    if draw is None:
        raise TypeError(f"haar_prior knows uniform and normal noise, not that of {group!r}")
    idx = _index_tensor(indices, device)
    return draw(prior_key(seed, stream, step), idx, template.shape, dtype=template.dtype)


def haar_prior(
    group: Group,
    shape: Sequence[int],
    indices: Sequence[int] | range,
    *,
    seed: int,
    stream: int,
    step: int = 0,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Haar-random links ``[len(indices), Nd, *shape, Nc, Nc]`` on ``device``: sample ``i`` is
    ``group.from_noise`` of the noise of ``(seed, stream, step, indices[i])``
    (:func:`prior_noise`), so the numbers do not depend on how the batch is split or ordered,
    nor (beyond the rounding of ``log``/``cos``/``sin``) on the device."""
    noise = prior_noise(group, shape, indices, seed=seed, stream=stream, step=step, dtype=dtype,
                        device=device)
    if noise.shape[0] == 0:
        return torch.empty(0, len(shape), *shape, group.nc, group.nc, dtype=dtype, device=device)
    return group.from_noise(noise)
