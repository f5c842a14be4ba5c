"""The prior: Haar-uniform links, drawn from per-sample random streams.

Every prior sample is a deterministic function of ``(seed, stream, index)``: its own
``torch.Generator`` is seeded from ``numpy.random.SeedSequence([seed, stream, index])``
(collision-free seeding, never ``seed * (rank + 1)``). So a batch split over any
number of ranks, or a run resumed after a crash, draws exactly the same configurations.
The density is ``log r = 0`` with respect to the normalized Haar measure (docs/physics.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..lattice.groups import Group

__all__ = ["STREAM_TRAIN", "STREAM_SAMPLE", "STREAM_EVAL", "sample_seed", "haar_prior"]

# Stream tags keep training, evaluation and sampling draws independent for one master seed.
STREAM_TRAIN = 1
STREAM_EVAL = 2
STREAM_SAMPLE = 3


def sample_seed(seed: int, stream: int, index: int, step: int = 0) -> int:
    """A 63-bit generator seed for sample ``index`` of ``step`` in ``stream``."""
    state = np.random.SeedSequence([seed, stream, step, index]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


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
    """Haar-random links ``[len(indices), Nd, *shape, Nc, Nc]``, sample ``i`` from the noise of
    its own stream ``(seed, stream, step, indices[i])``, drawn on the CPU so that the numbers do
    not depend on the device or on how the batch is split."""
    nd = len(shape)
    gens = [torch.Generator().manual_seed(sample_seed(seed, stream, int(i), step))
            for i in indices]
    noise = [group.noise((nd, *shape), dtype=dtype, generator=g) for g in gens]
    if not noise:
        return torch.empty(0, nd, *shape, group.nc, group.nc, dtype=dtype, device=device)
    # The noise is per sample; the linear algebra runs once for the batch, on the device.
    return group.from_noise(torch.stack(noise).to(device))
