"""Reference walkers for the mask tests, independent of ``torch.roll`` and of the path walker.

``brute_counts`` walks one loop link by link in plain Python with modular arithmetic;
``links_on_path`` does the same walk for many base sites at once with numpy index arithmetic.
"""

import itertools

import numpy as np


def brute_counts(active, path, shape):
    """Active links on ``path`` at every base site: nested loops, ``active[mu][x]`` lookups.

    active: numpy bool ``[Nd, *L]``; returns numpy int ``[*L]``.
    """
    out = np.zeros(shape, dtype=np.int64)
    for x in itertools.product(*(range(n) for n in shape)):
        y = list(x)
        count = 0
        for mu, sign in path:
            if sign > 0:
                count += int(active[(mu, *(yi % n for yi, n in zip(y, shape, strict=True)))])
                y[mu] += 1
            else:
                y[mu] -= 1
                count += int(active[(mu, *(yi % n for yi, n in zip(y, shape, strict=True)))])
        out[x] = count
    return out


def links_on_path(path, sites, shape):
    """The links an open or closed path crosses from each base site.

    sites: numpy int ``[n, Nd]``. Returns a list over the steps of ``(mu, idx)`` with ``idx`` an
    int array ``[n, Nd]``: the site of the link ``U_mu`` crossed at that step.
    """
    y = np.array(sites, dtype=np.int64)
    dims = np.array(shape)
    out = []
    for mu, sign in path:
        if sign > 0:
            out.append((mu, y % dims))
            y = y.copy()
            y[:, mu] += 1
        else:
            y = y.copy()
            y[:, mu] -= 1
            out.append((mu, y % dims))
    return out


def active_on_path(active, path, sites, shape):
    """``[n_steps, n]`` bool: whether the link of each step (from each site) is active."""
    return np.stack([active[(mu, *idx.T)] for mu, idx in links_on_path(path, sites, shape)])
