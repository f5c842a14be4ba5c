"""``hpcflow hmc``: the conventional reference chain, one HMC chain per rank, written in the
sample-file format of the flows (``log_q`` and ``log_weight`` NaN, ``mcmc_state[i] = i``).

Resumable: after each batch of rows is appended, the chain's full state (links, tuned step size,
generator state) is saved next to the shard (``hmc-state-r<rank>.pt``, atomic). A run that was
interrupted between the two replays the missing trajectories from the saved state without
writing them again, so the output equals that of an uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..flows.prior import sample_seed
from ..io.atomic import atomic_path
from ..io.samples import ShardWriter, write_master
from ..updates.hmc import HMC
from .build import build_action
from .context import RunContext
from .sample import sample_header

__all__ = ["STREAM_HMC", "run_hmc"]

STREAM_HMC = 5


def _state_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"hmc-state-r{rank:05d}.pt"


def run_hmc(cfg, out_dir: str | Path, ctx: RunContext, *, n_total: int,
            rows_per_write: int = 16) -> dict:
    """Run this rank's chain until its share of ``n_total`` configurations is written."""
    comm = ctx.comm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    h = cfg.hmc
    action = build_action(cfg)
    seed = sample_seed(cfg.train.seed, STREAM_HMC, comm.rank) % 2**62
    chain = HMC(action.group, action, cfg.lattice.shape, n_steps=h.n_steps,
                step_size=h.step_size, integrator=h.integrator,
                target_acceptance=h.target_acceptance, start=h.start, seed=seed,
                device=comm.device)
    header = sample_header(cfg, -1)
    n_mine = len(ctx.share(n_total))
    t0 = time.perf_counter()
    state_file = _state_path(out_dir, comm.rank)
    with ShardWriter(out_dir, header, rank=comm.rank, world_size=comm.size) as writer:
        done = writer.n_written
        if state_file.exists():
            saved = torch.load(state_file, map_location="cpu", weights_only=True)
            chain.load_state_dict(saved["hmc"])
            for _ in range((done - int(saved["rows"])) * h.save_every):
                chain.trajectory()  # replay rows written before the state was saved
        else:
            info = chain.thermalize(h.thermalization)
            ctx.log.info(f"thermalized {h.thermalization} trajectories, step size "
                         f"{info['step_size'].mean().item():.4f}, acceptance "
                         f"{info['accept_prob'][len(info['accept_prob']) // 2:].mean().item():.3f}")
        while done < n_mine:
            rows = {k: [] for k in ("links", "action", "accepted")}
            for _ in range(min(rows_per_write, n_mine - done)):
                acc = torch.zeros(1, dtype=torch.bool)
                for _ in range(h.save_every):
                    links, accepted, _ = chain.trajectory()
                    acc |= accepted.cpu()
                rows["links"].append(links[0].cpu())
                rows["action"].append(float(action(links)[0]))
                rows["accepted"].append(bool(acc[0]))
            k = len(rows["links"])
            nan = np.full(k, np.nan)
            writer.append({"links": torch.stack(rows["links"]), "log_q": nan,
                           "action": np.array(rows["action"]), "log_weight": nan,
                           "mcmc_state": np.arange(done, done + k, dtype=np.int64),
                           "accepted": np.array(rows["accepted"])})
            done = writer.n_written
            _save_state(state_file, chain, done)
    ctx.on_root(write_master, out_dir, comm.size)
    return {"rows": done, "seconds": time.perf_counter() - t0,
            "step_size": float(chain.step_size.mean())}


def _save_state(path: Path, chain: HMC, rows: int) -> None:
    with atomic_path(path) as tmp:
        torch.save({"hmc": chain.state_dict(), "rows": rows}, tmp)
