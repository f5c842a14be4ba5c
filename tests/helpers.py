"""Shared test helpers: small lattices for every dimension, random links."""

import torch

from hpcflow.lattice.groups import get_group

# Unequal extents catch axis mix-ups; small enough for SU(3) in 4D.
SHAPES = {2: (4, 3), 3: (3, 4, 2), 4: (2, 3, 2, 3)}
GROUPS = ("U1", "SU2", "SU3")


def random_links(group_name, shape, batch=2, *, generator=None, dtype=torch.complex128):
    """Haar-random links ``[batch, Nd, *shape, Nc, Nc]``."""
    group = get_group(group_name)
    return group, group.random((batch, len(shape), *shape), generator=generator, dtype=dtype)
