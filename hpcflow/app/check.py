"""``hpcflow check``: a physics smoke run of the lattice core on a configuration's lattice.

Haar configurations (each from its own stream, spread over the ranks) are checked for
unitarity and gauge invariance of the action, the cold start for the Wilson normalization, the
Haar plaquette for zero; the exact 2D values are printed beside them where they exist.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch

from ..flows.prior import haar_prior
from ..lattice import exact
from ..lattice.groups import gauge_transform, get_group, random_gauge
from ..lattice.observables import average_plaquette
from .build import build_action
from .context import RunContext

__all__ = ["STREAM_CHECK", "run_check"]

STREAM_CHECK = 6


def run_check(cfg, n_total: int, ctx: RunContext) -> int:
    """Run the checks on ``n_total`` Haar configurations; rank 0 prints the table. Returns 0
    when every check passes, 1 otherwise."""
    group = get_group(cfg.lattice.group)
    shape = tuple(cfg.lattice.shape)
    nd = len(shape)
    action = build_action(cfg)
    mine = ctx.share(n_total)
    t0 = time.perf_counter()
    plaq_sum, plaq_sq, unitarity, gauge_dev = 0.0, 0.0, 0.0, 0.0
    eye = torch.eye(group.nc, dtype=torch.complex128)
    for lo in range(0, len(mine), 64):
        idx = mine[lo:lo + 64]
        links = haar_prior(group, shape, idx, seed=cfg.train.seed, stream=STREAM_CHECK)
        gen = torch.Generator().manual_seed(int(idx[0]))
        unitarity = max(unitarity, (group.mul(links, group.dagger(links)) - eye).abs().max().item())
        omega = random_gauge(group, len(idx), shape, generator=gen)
        s = action(links)
        s2 = action(gauge_transform(links, omega, group))
        gauge_dev = max(gauge_dev, ((s2 - s).abs() / s.abs().clamp_min(1.0)).max().item())
        p = average_plaquette(links, group)
        plaq_sum += p.sum().item()
        plaq_sq += (p**2).sum().item()
    comm = ctx.comm
    stats = np.concatenate([
        comm.allreduce_sum(np.array([plaq_sum, plaq_sq, len(mine)], dtype=np.float64)),
        comm.allreduce_max(np.array([unitarity, gauge_dev], dtype=np.float64))])
    elapsed = time.perf_counter() - t0
    if not ctx.is_root:
        return 0

    n = stats[2]
    mean = stats[0] / n
    err = math.sqrt(max(stats[1] / n - mean**2, 0.0) / max(n - 1, 1))
    cold = action(group.identity((1, nd, *shape))).item()
    n_plaq = cfg.lattice.volume * nd * (nd - 1) // 2
    ratio = cold / (-cfg.action.beta * n_plaq)
    print(f"hpcflow check: {group.name} on {'x'.join(map(str, shape))}, beta = "
          f"{cfg.action.beta}, {int(n)} Haar configurations on {ctx.size} rank(s), "
          f"{elapsed:.2f} s")
    rows = [
        ("unitarity, max |U U^dag - 1|", f"{stats[3]:.2e}", "< 1e-12", stats[3] < 1e-12),
        ("gauge invariance of S, max rel. dev.", f"{stats[4]:.2e}", "< 1e-10", stats[4] < 1e-10),
        ("cold start S / (-beta n_plaq)", f"{ratio:.12f}", "1 (Wilson)",
         cfg.action.c1 != 0 or abs(ratio - 1) < 1e-12),
        ("Haar <(1/Nc) Re tr P>", f"{mean:+.5f} +- {err:.5f}", "0", abs(mean) < 5 * err + 1e-12),
    ]
    for label, value, expect, good in rows:
        print(f"  {label:<40} {value:>24}   expect {expect:<10} {'ok' if good else 'FAILED'}")
    beta = cfg.action.beta
    for label, value in (
        ("exact <(1/Nc) Re tr P> at beta", exact.exact_plaquette(group.name, shape, beta)),
        ("exact log Z (normalized Haar)", exact.exact_log_z(group.name, shape, beta)),
        ("exact chi_t = <Q^2>/V", exact.exact_topological_susceptibility(group.name, shape, beta)),
    ):
        text = f"{value:.10f}" if value is not None else "none known"
        print(f"  {label:<40} {text:>24}")
    return 0 if all(r[3] for r in rows) else 1
