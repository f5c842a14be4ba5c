"""``hpcflow sample``: proposals (a flow's samples, or the final configurations of
non-equilibrium trajectories) and independence Metropolis, one HDF5 shard per rank.

Rank ``r`` of ``R`` handles the proposals with global index ``r, r + R, r + 2R, ...`` (the one
rank-split rule, :meth:`~hpcflow.app.context.RunContext.share`); proposal
``k`` is the flow applied to prior sample ``k`` of the stream ``(train.seed, sample)``, and its
Metropolis uniform comes from its own stream too. So the set of proposals depends on the seed
and on ``N`` only, a shard grows consistently when ``N`` grows, and an interrupted run continues
exactly where its shard ends: the chain state is read back from the last complete row.

Each rank measures its proposals as it draws them (:func:`~hpcflow.lattice.observables.measure`)
and stores the measurements with the per-proposal scalars; ``sample.store`` decides which
configurations are written as well (every proposal, every ``thin``-th state of the chain, or
none: :mod:`hpcflow.app.store`). With ``store: chain`` a resumed run needs the links of the
chain's current state: the stored copy, or the proposal drawn again (it depends on its index
only).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import HpcflowError
from ..estimators import independence_metropolis
from ..flows.prior import STREAM_SAMPLE
from ..io.samples import SampleHeader, ShardWriter, open_samples, write_master
from ..lattice.groups import get_group
from ..lattice.observables import measure, measured_names
from .build import build_action
from .context import RunContext
from .propose import StartEnsemble, propose
from .store import StorePlan, plan_store, prepare_store, stored_rows

__all__ = ["STREAM_ACCEPT", "measure_numpy", "metropolis_uniforms", "run_sampling",
           "sample_header", "store_plan"]

STREAM_ACCEPT = 4


def sample_header(cfg, checkpoint_step: int, sampler: str | None = None, *,
                  plan: StorePlan | None = None, observables=()) -> SampleHeader:
    """The header of a sample set drawn with ``cfg`` (``checkpoint_step`` -1 without a model;
    ``sampler`` default ``cfg.sampler.kind``; ``plan`` the store policy, default all)."""
    kind = sampler or cfg.sampler.kind
    start = cfg.sampler.beta_start if kind in ("annealing", "snf") else 0.0
    return SampleHeader(group=cfg.lattice.group, lattice_shape=tuple(cfg.lattice.shape),
                        beta=cfg.action.beta, config=cfg.to_yaml(), seed=cfg.train.seed,
                        checkpoint_step=checkpoint_step, sampler=kind,
                        log_z_start=0.0 if start == 0 else float("nan"),
                        store=plan.store if plan else "all", thin=plan.thin if plan else 1,
                        observables=tuple(observables))


def store_plan(cfg, n_total: int, links_dtype: str, n_observables: int) -> StorePlan:
    """The store policy of ``cfg.sample`` for ``n_total`` configurations."""
    shape = cfg.lattice.shape
    nc = get_group(cfg.lattice.group).nc
    config_bytes = len(shape) * math.prod(shape) * nc * nc * np.dtype(links_dtype).itemsize
    sc = cfg.sample
    return plan_store(sc.store, sc.thin, sc.max_store_gb, n_total=n_total,
                      config_bytes=config_bytes, n_observables=n_observables)


def metropolis_uniforms(seed: int, indices) -> np.ndarray:
    """The accept/reject uniform of each global proposal index, from its own stream."""
    return np.array([np.random.default_rng([seed, STREAM_ACCEPT, int(k)]).random()
                     for k in indices], dtype=np.float64)


def measure_numpy(links: torch.Tensor, group) -> dict[str, np.ndarray]:
    """:func:`~hpcflow.lattice.observables.measure` as float64 numpy arrays ``[B]``."""
    with torch.no_grad():
        return {k: v.double().cpu().numpy() for k, v in measure(links, group).items()}


def run_sampling(model, cfg, out_dir: str | Path, ctx: RunContext, *, n_total: int,
                 batch_size: int, links_dtype: str = "complex128") -> dict:
    """Draw this rank's proposals in batches, measure them, run its chain, append to its shard
    (the configurations that ``sample.store`` keeps); rank 0 then writes ``samples.h5``.
    Returns a summary (rows, acceptance, time) of this rank."""
    out_dir = Path(out_dir)
    seed = cfg.train.seed
    action = build_action(cfg)
    group = action.group
    names = measured_names(group, len(cfg.lattice.shape))
    plan = store_plan(cfg, n_total, links_dtype, len(names))
    header = sample_header(cfg, model.checkpoint_step, plan=plan, observables=names)
    sc = cfg.sampler
    start = (StartEnsemble(sc.start, cfg.lattice.group, cfg.lattice.shape, sc.beta_start)
             if sc.kind != "flow" and sc.beta_start > 0 else None)
    comm = ctx.comm
    mine = ctx.share(n_total)
    prepare_store(plan, ctx, out_dir, n_total)

    def draw(idx):
        with torch.no_grad():
            return propose(model, action, idx, seed=seed, stream=STREAM_SAMPLE, start=start)

    t0 = time.perf_counter()
    with ShardWriter(out_dir, header, rank=comm.rank, world_size=comm.size,
                     links_dtype=links_dtype) as writer:
        done = writer.n_written
        if done > len(mine):
            raise HpcflowError(
                f"{writer.path} holds {done} rows but this rank's share of --n {n_total} is "
                f"{len(mine)}; use at least the --n of the earlier run or another --out")
        state_lw, state_idx = _chain_state(writer.path, done)
        state_links = None
        if plan.store == "chain" and done:  # the state's links: stored, or drawn again
            state_links = _state_links(writer.path, state_idx, lambda i: draw([mine[i]]).links)
        progress = ctx.progress(n_total, initial=done * comm.size, desc="sample", unit="cfg")
        accepted_total = 0
        for lo in range(done, len(mine), batch_size):
            idx = mine[lo: min(lo + batch_size, len(mine))]
            p = draw(idx)
            lw = p.log_weight.double().cpu().numpy()
            uniforms = metropolis_uniforms(seed, idx)
            # Indices relative to this batch's first row; the carried-in state is negative.
            state, acc, state_lw, last = independence_metropolis(
                lw, uniforms, state_log_weight=state_lw, state_index=state_idx - lo)
            state_idx = int(last) + lo
            rows = {"log_q": p.log_q.double().cpu(), "action": p.action.double().cpu(),
                    "log_weight": lw, "mcmc_state": state + lo, "accepted": acc,
                    "observables": measure_numpy(p.links, group)}
            if plan.store == "all":
                rows["links"] = p.links.cpu()
            elif plan.store == "chain":
                rows["links"], rows["links_row"], state_links = _chain_links(
                    p.links, state + lo, lo, plan.thin, state_links)
            writer.append(rows)
            accepted_total += int(acc.sum())
            progress.update(len(idx) * comm.size)
        rows = writer.n_written
    elapsed = time.perf_counter() - t0
    progress.close()
    ctx.on_root(write_master, out_dir, comm.size)
    return {"rows": rows, "accepted": accepted_total, "seconds": elapsed,
            "store": plan.store, "thin": plan.thin}


def _chain_links(links: torch.Tensor, state: np.ndarray, lo: int, thin: int,
                 state_links: torch.Tensor | None):
    """Configurations of ``store: chain`` for one batch: the chain state after every row
    ``r`` with ``(r + 1) % thin == 0``. ``links [b, ...]`` are the batch's proposals (rows
    ``lo ..``), ``state [b]`` the chain state (a row) after each; ``state_links [1, ...]`` the
    links of the state carried in from earlier rows. Returns the configurations, their rows and
    the links of the state after the batch."""
    keep = stored_rows(lo, len(state), "chain", thin) - lo
    picked = []
    for i in keep:
        r = int(state[i])
        picked.append(links[r - lo: r - lo + 1] if r >= lo else state_links)
    last = int(state[-1])
    state_links = links[last - lo: last - lo + 1].clone() if last >= lo else state_links
    if not picked:
        return None, None, state_links
    return torch.cat(picked).cpu(), state[keep], state_links


def _state_links(path: Path, row: int, redraw) -> torch.Tensor:
    """Links ``[1, ...]`` of shard row ``row``: its stored copy, or ``redraw(row)`` (proposals
    depend on their index only, so drawing one again gives the same configuration)."""
    with open_samples(path) as s:
        try:
            return torch.from_numpy(s.links_of_rows([row]))
        except KeyError:
            pass
    return redraw(row)


def _chain_state(path: Path, done: int) -> tuple[float | None, int]:
    """Log-weight and index of the chain state after the last complete row of a shard."""
    if done == 0:
        return None, -1
    with open_samples(path) as s:
        idx = int(s.mcmc_state[done - 1])
        return float(s.log_weight[idx]), idx
