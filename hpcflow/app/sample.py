"""``hpcflow sample``: proposals (a flow's samples, or the final configurations of
non-equilibrium trajectories) and independence Metropolis, one HDF5 shard per rank.

Rank ``r`` of ``R`` handles the proposals with global index ``r, r + R, r + 2R, ...`` (the one
rank-split rule, :meth:`~hpcflow.app.context.RunContext.share`); proposal
``k`` is the flow applied to prior sample ``k`` of the stream ``(train.seed, sample)``, and its
Metropolis uniform comes from its own stream too. So the set of proposals depends on the seed
and on ``N`` only, a shard grows consistently when ``N`` grows, and an interrupted run continues
exactly where its shard ends: the chain state is read back from the last complete row.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..errors import HpcflowError
from ..estimators import independence_metropolis
from ..flows.prior import STREAM_SAMPLE
from ..io.samples import SampleHeader, ShardWriter, open_samples, write_master
from .build import build_action
from .context import RunContext
from .propose import StartEnsemble, propose

__all__ = ["STREAM_ACCEPT", "metropolis_uniforms", "run_sampling", "sample_header"]

STREAM_ACCEPT = 4


def sample_header(cfg, checkpoint_step: int, sampler: str | None = None) -> SampleHeader:
    """The header of a sample set drawn with ``cfg`` (``checkpoint_step`` -1 without a model;
    ``sampler`` default ``cfg.sampler.kind``)."""
    kind = sampler or cfg.sampler.kind
    start = cfg.sampler.beta_start if kind in ("annealing", "snf") else 0.0
    return SampleHeader(group=cfg.lattice.group, lattice_shape=tuple(cfg.lattice.shape),
                        beta=cfg.action.beta, config=cfg.to_yaml(), seed=cfg.train.seed,
                        checkpoint_step=checkpoint_step, sampler=kind,
                        log_z_start=0.0 if start == 0 else float("nan"))


def metropolis_uniforms(seed: int, indices) -> np.ndarray:
    """The accept/reject uniform of each global proposal index, from its own stream."""
    return np.array([np.random.default_rng([seed, STREAM_ACCEPT, int(k)]).random()
                     for k in indices], dtype=np.float64)


def run_sampling(model, cfg, out_dir: str | Path, ctx: RunContext, *, n_total: int,
                 batch_size: int, links_dtype: str = "complex128") -> dict:
    """Draw this rank's proposals in batches, run its chain, append to its shard; rank 0 then
    writes ``samples.h5``. Returns a summary (rows, acceptance, time) of this rank."""
    out_dir = Path(out_dir)
    seed = cfg.train.seed
    header = sample_header(cfg, model.checkpoint_step)
    action = build_action(cfg)
    sc = cfg.sampler
    start = (StartEnsemble(sc.start, cfg.lattice.group, cfg.lattice.shape, sc.beta_start)
             if sc.kind != "flow" and sc.beta_start > 0 else None)
    comm = ctx.comm
    mine = ctx.share(n_total)
    t0 = time.perf_counter()
    with ShardWriter(out_dir, header, rank=comm.rank, world_size=comm.size,
                     links_dtype=links_dtype) as writer:
        done = writer.n_written
        if done > len(mine):
            raise HpcflowError(
                f"{writer.path} holds {done} rows but this rank's share of --n {n_total} is "
                f"{len(mine)}; use at least the --n of the earlier run or another --out")
        state_lw, state_idx = _chain_state(writer.path, done)
        progress = ctx.progress(n_total, initial=done * comm.size, desc="sample", unit="cfg")
        accepted_total = 0
        for lo in range(done, len(mine), batch_size):
            idx = mine[lo: min(lo + batch_size, len(mine))]
            with torch.no_grad():
                p = propose(model, action, idx, seed=seed, stream=STREAM_SAMPLE, start=start)
            lw = p.log_weight.double().cpu().numpy()
            uniforms = metropolis_uniforms(seed, idx)
            # Indices relative to this batch's first row; the carried-in state is negative.
            state, acc, state_lw, last = independence_metropolis(
                lw, uniforms, state_log_weight=state_lw, state_index=state_idx - lo)
            state_idx = int(last) + lo
            writer.append({"links": p.links.cpu(), "log_q": p.log_q.double().cpu(),
                           "action": p.action.double().cpu(), "log_weight": lw,
                           "mcmc_state": state + lo, "accepted": acc})
            accepted_total += int(acc.sum())
            progress.update(len(idx) * comm.size)
        rows = writer.n_written
    elapsed = time.perf_counter() - t0
    progress.close()
    ctx.on_root(write_master, out_dir, comm.size)
    return {"rows": rows, "accepted": accepted_total, "seconds": elapsed}


def _chain_state(path: Path, done: int) -> tuple[float | None, int]:
    """Log-weight and index of the chain state after the last complete row of a shard."""
    if done == 0:
        return None, -1
    with open_samples(path) as s:
        idx = int(s.mcmc_state[done - 1])
        return float(s.log_weight[idx]), idx
