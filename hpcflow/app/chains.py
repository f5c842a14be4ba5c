"""``hpcflow mcmc`` (and ``hpcflow hmc``): the conventional reference chains, one chain per rank,
written in the sample-file format of the samplers (``log_q`` and ``log_weight`` NaN,
``mcmc_state[i] = i``), every row measured, the configurations that ``sample.store`` keeps
(``chain``: every ``thin``-th row).

``heatbath``: heat-bath sweeps with ``heatbath.overrelax`` over-relaxation sweeps each
(:mod:`hpcflow.updates.heatbath`; the pure-gauge reference: it decorrelates faster than HMC);
``hmc``: Hybrid Monte Carlo (:mod:`hpcflow.updates.hmc`), which also takes the rectangle term.
Chain ``r`` draws its random numbers from its own stream of ``train.seed``.

Resumable: after each batch of rows is appended, the chain's full state (links, counters,
tuned step size, generator state) is saved next to the shard (``<algorithm>-state-r<rank>.pt``,
atomic). A run that was interrupted between the two replays the missing updates from the saved
state without writing them again, so the output equals that of an uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..flows.prior import haar_prior, sample_seed
from ..io.atomic import atomic_path
from ..io.samples import ShardWriter, write_master
from ..lattice.observables import measured_names
from ..lattice.random import stream_keys
from ..updates.heatbath import update_sweep
from ..updates.hmc import HMC
from .build import build_action
from .context import RunContext
from .sample import measure_numpy, sample_header, store_plan
from .store import prepare_store, stored_rows

__all__ = ["ALGORITHMS", "STREAM_HEATBATH", "STREAM_HMC", "run_chain"]

STREAM_HMC = 5
STREAM_HEATBATH = 7
ALGORITHMS = ("heatbath", "hmc")


class _Heatbath:
    """One heat-bath chain: ``step()`` is a heat-bath sweep and its over-relaxation sweeps."""

    def __init__(self, cfg, rank: int, device):
        self.group = build_action(cfg).group
        self.beta = cfg.action.beta
        self.overrelax = cfg.heatbath.overrelax
        self.keys = stream_keys(cfg.train.seed, STREAM_HEATBATH, [rank], device=device)
        shape = tuple(cfg.lattice.shape)
        if cfg.heatbath.start == "cold":
            self.links = self.group.identity((1, len(shape), *shape), device=device)
        else:
            self.links = haar_prior(self.group, shape, [rank], seed=cfg.train.seed,
                                    stream=STREAM_HEATBATH, device=device)
        self.sweeps = 0

    def step(self) -> tuple[torch.Tensor, bool]:
        self.links = update_sweep(self.links, self.group, self.beta, self.keys, self.sweeps,
                                  self.overrelax)
        self.sweeps += 1
        return self.links, True

    def thermalize(self, n: int) -> str:
        for _ in range(n):
            self.step()
        return f"thermalized {n} heat-bath sweeps ({self.overrelax} over-relaxation each)"

    def state_dict(self) -> dict:
        return {"links": self.links.cpu(), "sweeps": self.sweeps}

    def load_state_dict(self, state: dict) -> None:
        self.links = state["links"].to(self.links.device)
        self.sweeps = int(state["sweeps"])


class _HMC:
    """One HMC chain: ``step()`` is a trajectory."""

    def __init__(self, cfg, rank: int, device):
        h = cfg.hmc
        action = build_action(cfg)
        seed = sample_seed(cfg.train.seed, STREAM_HMC, rank) % 2**62
        self.chain = HMC(action.group, action, cfg.lattice.shape, n_steps=h.n_steps,
                         step_size=h.step_size, integrator=h.integrator,
                         target_acceptance=h.target_acceptance, start=h.start, seed=seed,
                         device=device)

    def step(self) -> tuple[torch.Tensor, bool]:
        links, accepted, _ = self.chain.trajectory()
        return links, bool(accepted[0])

    def thermalize(self, n: int) -> str:
        info = self.chain.thermalize(n)
        late = info["accept_prob"][len(info["accept_prob"]) // 2:]
        return (f"thermalized {n} trajectories, step size "
                f"{info['step_size'].mean().item():.4f}, acceptance {late.mean().item():.3f}")

    def state_dict(self) -> dict:
        return self.chain.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.chain.load_state_dict(state)


def run_chain(cfg, algorithm: str, out_dir: str | Path, ctx: RunContext, *, n_total: int,
              rows_per_write: int = 16) -> dict:
    """Run this rank's chain until its share of ``n_total`` configurations is written; rank 0
    then joins the shards. Returns this rank's rows and seconds."""
    comm = ctx.comm
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    section = cfg.heatbath if algorithm == "heatbath" else cfg.hmc
    chain = (_Heatbath if algorithm == "heatbath" else _HMC)(cfg, comm.rank, comm.device)
    action = build_action(cfg)
    names = measured_names(action.group, len(cfg.lattice.shape))
    plan = store_plan(cfg, n_total, "complex128", len(names))
    header = sample_header(cfg, -1, algorithm, plan=plan, observables=names)
    n_mine = len(ctx.share(n_total))
    prepare_store(plan, ctx, out_dir, n_total)
    t0 = time.perf_counter()
    state_file = out_dir / f"{algorithm}-state-r{comm.rank:05d}.pt"
    with ShardWriter(out_dir, header, rank=comm.rank, world_size=comm.size) as writer:
        done = writer.n_written
        if state_file.exists():
            saved = torch.load(state_file, map_location="cpu", weights_only=True)
            chain.load_state_dict(saved["chain"] if "chain" in saved else saved["hmc"])
            for _ in range((done - int(saved["rows"])) * section.save_every):
                chain.step()  # replay rows written before the state was saved
        else:
            ctx.log.info(chain.thermalize(section.thermalization))
        progress = ctx.progress(n_total, initial=done * comm.size, desc=algorithm, unit="cfg")
        while done < n_mine:
            rows = {k: [] for k in ("links", "action", "accepted")}
            for _ in range(min(rows_per_write, n_mine - done)):
                acc = False
                for _ in range(section.save_every):
                    links, accepted = chain.step()
                    acc |= accepted
                rows["links"].append(links[0].cpu())
                rows["action"].append(float(action(links)[0]))
                rows["accepted"].append(acc)
            k = len(rows["links"])
            nan = np.full(k, np.nan)
            links = torch.stack(rows["links"])
            keep = stored_rows(done, k, plan.store, plan.thin)
            writer.append({"links": links[torch.from_numpy(keep - done)], "links_row": keep,
                           "log_q": nan, "action": np.array(rows["action"]), "log_weight": nan,
                           "mcmc_state": np.arange(done, done + k, dtype=np.int64),
                           "accepted": np.array(rows["accepted"]),
                           "observables": measure_numpy(links, action.group)})
            done = writer.n_written
            with atomic_path(state_file) as tmp:
                torch.save({"chain": chain.state_dict(), "rows": done}, tmp)
            progress.update(k * comm.size)
        progress.close()
    ctx.on_root(write_master, out_dir, comm.size)
    return {"rows": done, "seconds": time.perf_counter() - t0}
