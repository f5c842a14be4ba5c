"""Stochastic normalizing flow against plain annealing at the same wall time, training included.

    python perf/bench_snf.py --config configs/snf_u1_3d.yaml --minutes 10 [--eval 4096]
                             [--threads 2] [--set KEY=VALUE ...]

1. The stochastic flow of the configuration trains for ``--minutes`` (its whole budget:
   ``train.walltime``), then draws ``--eval`` trajectories: ESS, log Z, acceptance of
   independence Metropolis, trajectories per second.
2. Plain annealing (the same protocol, flow layers off) draws ``--eval`` trajectories; with
   ``--annealing-steps N ...`` also at other protocol lengths (``--annealing-eval``
   trajectories each), since annealing's best length is not the flow's: the ratios below
   are taken against the best annealing row.
3. Effective samples per second, ESS x trajectories / seconds: the flow's with its training
   time counted (``train + sampling``), and without (sampling only); annealing's over its
   sampling. At the same wall time ``T`` annealing delivers ``ESS_a x rate_a x T`` effective
   samples, the flow ``ESS_f x rate_f x (T - T_train)``; the ratio is printed for
   ``T = T_train + T_eval`` (the run itself), for ``T`` = 10 minutes, and for long runs.
4. The heat-bath chain of ``hpcflow mcmc`` at the same coupling (``--reference`` saved sweeps):
   plaquette, ``1 / (2 tau_int)`` of the plaquette as its ESS per sweep, sweeps per second.
   The plaquettes of all three agree within errors when everything is right.

``--minutes 0`` skips the flow (annealing and the chain only). Prints a table, writes
``snf-<config>.json`` (into ``--out-dir``, default ``perf/out``) and a plot of the training
curve.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import draw_trajectories, machine, print_table, write_json  # noqa: E402

from hpcflow import build_action, build_model, load_config  # noqa: E402
from hpcflow.app.chains import run_chain  # noqa: E402
from hpcflow.app.context import RunContext  # noqa: E402
from hpcflow.app.metrics import read_metrics  # noqa: E402
from hpcflow.app.propose import StartEnsemble  # noqa: E402
from hpcflow.app.train import Trainer  # noqa: E402
from hpcflow.distributed import NoneComm  # noqa: E402
from hpcflow.estimators import (  # noqa: E402
    chain_mean,
    ess,
    independence_metropolis,
    integrated_autocorrelation_time,
    log_z_estimate,
    reweighted_mean,
)
from hpcflow.io.samples import open_samples  # noqa: E402
from hpcflow.lattice.groups import get_group  # noqa: E402
from hpcflow.lattice.observables import average_plaquette  # noqa: E402


def draw(cfg, model, n: int, batch: int) -> dict:
    """``n`` trajectories of the sampling stream: log weights, seconds, IMH acceptance."""
    action = build_action(cfg)
    s = cfg.sampler
    start = (StartEnsemble(s.start, cfg.lattice.group, cfg.lattice.shape, s.beta_start)
             if s.beta_start > 0 else None)
    group = get_group(cfg.lattice.group)
    lw, seconds, plaq = draw_trajectories(model, action, n, batch, seed=cfg.train.seed,
                                          start=start,
                                          observable=lambda u: average_plaquette(u, group))
    plaq = reweighted_mean(plaq, lw)
    uniforms = np.random.default_rng(0).random(n)
    _, accepted, _, _ = independence_metropolis(lw, uniforms)
    lz = log_z_estimate(lw)
    return {"n": n, "seconds": seconds, "rate": n / seconds, "ess": ess(lw),
            "log_z": lz.value, "log_z_error": lz.error, "acceptance": float(accepted[1:].mean()),
            "mean_work": float(-lw.mean()), "var_work": float(lw.var()),
            "plaquette": plaq.value, "plaquette_err": plaq.error}


def reference_chain(cfg, sweeps: int, threads: int) -> dict:
    """The heat-bath chain (``heatbath.overrelax`` over-relaxation sweeps per sweep) at the
    same coupling: plaquette with its error, seconds per sweep, ``1 / (2 tau_int)`` of the
    plaquette as its ESS per sweep (thermalization not counted)."""
    group = get_group(cfg.lattice.group)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(NoneComm(device="cpu", threads=threads), tmp, terminal=False)
        t0 = time.perf_counter()
        run_chain(cfg, "heatbath", Path(tmp) / "hb", ctx, n_total=sweeps)
        seconds = time.perf_counter() - t0
        with open_samples(Path(tmp) / "hb" / "samples.h5") as f:
            plaq = average_plaquette(torch.from_numpy(f.links[:]), group).double().numpy()
    est = chain_mean(plaq)
    tau = integrated_autocorrelation_time(plaq).tau
    per_sweep = seconds / (sweeps * cfg.heatbath.save_every + cfg.heatbath.thermalization)
    return {"sampler": "heat-bath chain", "n": sweeps, "seconds": seconds,
            "rate": 1 / (per_sweep * cfg.heatbath.save_every), "ess": 1 / (2 * max(tau, 0.5)),
            "log_z": math.nan, "log_z_error": math.nan, "acceptance": math.nan,
            "mean_work": math.nan, "var_work": math.nan,
            "plaquette": est.value, "plaquette_err": est.error}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--eval", type=int, default=4096)
    p.add_argument("--batch", type=int, default=512, help="trajectories per sampling batch")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--reference", type=int, default=1000,
                   help="heat-bath chain length (saved sweeps) for the reference; 0: none")
    p.add_argument("--out-dir", help="run folder and JSON (emptied first; default perf/out)")
    p.add_argument("--annealing-steps", type=int, nargs="*", default=[],
                   help="also run annealing with these protocol lengths")
    p.add_argument("--annealing-eval", type=int, default=0,
                   help="trajectories of each --annealing-steps row (default --eval)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    name = Path(args.config).stem
    out = Path(args.out_dir or f"perf/out/snf-{name}")
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(args.config, args.overrides + [
        f"train.walltime={max(args.minutes, 0.01) * 60}", "train.eval_every=0",
        "train.log_every=1",
        "train.plot=true"])
    if cfg.sampler.kind != "snf":
        raise SystemExit(f"{args.config}: sampler.kind must be snf")

    rows, flow = [], None
    if args.minutes > 0:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, RunContext(NoneComm(device="cpu", threads=args.threads),
                                          out / "run"))
        result = trainer.run()
        train_s = time.perf_counter() - t0
        with (trainer.average.applied() if trainer.average is not None
              else contextlib.nullcontext()):
            flow = draw(cfg, trainer.model.eval(), args.eval, args.batch)  # train.ema: average
        rows.append({"sampler": "snf", "steps": cfg.sampler.steps,
                     "layers": len(trainer.model.layers), "train_s": train_s,
                     "opt_steps": result.step, **flow,
                     "eff_per_s": flow["ess"] * flow["n"] / (train_s + flow["seconds"]),
                     "eff_per_s_sampling": flow["ess"] * flow["rate"]})
    ann_cfg = load_config(args.config, args.overrides + ["sampler.kind=annealing"])
    ann = draw(ann_cfg, build_model(ann_cfg), args.eval, args.batch)
    rows.append({"sampler": "annealing", "steps": cfg.sampler.steps, "layers": 0,
                 "train_s": 0.0, "opt_steps": 0, **ann, "eff_per_s": ann["ess"] * ann["rate"],
                 "eff_per_s_sampling": ann["ess"] * ann["rate"]})
    for n in args.annealing_steps:
        other_cfg = load_config(args.config, args.overrides + ["sampler.kind=annealing",
                                                               f"sampler.steps={n}"])
        other = draw(other_cfg, build_model(other_cfg), args.annealing_eval or args.eval,
                     args.batch)
        rows.append({"sampler": "annealing", "steps": n, "layers": 0, "train_s": 0.0,
                     "opt_steps": 0, **other, "eff_per_s": other["ess"] * other["rate"],
                     "eff_per_s_sampling": other["ess"] * other["rate"]})
    best_ann = max((r for r in rows if r["sampler"] == "annealing"),
                   key=lambda r: r["eff_per_s"])
    eff_ann = best_ann["eff_per_s"]
    if args.reference:
        ref = reference_chain(ann_cfg, args.reference, args.threads)
        eff_ref = ref["ess"] * ref["rate"]
        rows.append({"steps": 0, "layers": 0, "train_s": 0.0, "opt_steps": 0, **ref,
                     "eff_per_s": eff_ref, "eff_per_s_sampling": eff_ref})
    print(f"{cfg.lattice.group} {'x'.join(map(str, cfg.lattice.shape))} beta "
          f"{cfg.sampler.beta_start} -> {cfg.action.beta}, {cfg.sampler.steps} steps, "
          f"{args.threads} threads, {args.minutes} min budget")
    print_table(rows, [("sampler", "sampler", ""), ("steps", "steps", "d"),
                       ("layers", "layers", "d"),
                       ("opt_steps", "opt steps", "d"), ("train_s", "train s", ".0f"),
                       ("n", "n", "d"), ("ess", "ESS", ".3f"), ("acceptance", "accept", ".3f"),
                       ("log_z", "log Z", ".4f"), ("log_z_error", "+-", ".4f"),
                       ("plaquette", "<P>", ".5f"), ("plaquette_err", "+-", ".5f"),
                       ("mean_work", "<W>", ".3f"), ("var_work", "var W", ".3f"),
                       ("rate", "traj/s", ".1f"), ("eff_per_s", "eff/s (all)", ".2f"),
                       ("eff_per_s_sampling", "eff/s (sampling)", ".2f")])
    ratio = ratio_10 = ratio_long = math.nan
    if flow is not None and eff_ann > 0:
        snf = rows[0]
        ratio = snf["eff_per_s"] / eff_ann
        ratio_long = snf["eff_per_s_sampling"] / eff_ann
        # a 10-minute budget: the flow samples for what its training leaves, annealing throughout
        ratio_10 = ratio_long * max(600.0 - snf["train_s"], 0.0) / 600.0
        print(f"effective samples per second, snf / annealing ({best_ann['steps']} steps, "
              f"the best annealing row): {ratio:.2f} over this run "
              f"(training included), {ratio_10:.2f} in a 10-minute budget (training "
              f"included), {ratio_long:.2f} for long runs (sampling only)")
    metrics = out / "run" / "metrics.jsonl"
    curve = ([{k: r.get(k) for k in ("step", "time", "loss", "ess")}
              for r in read_metrics(metrics)] if metrics.exists() else [])
    json_path = (Path(args.out_dir) if args.out_dir else Path("perf/out")) / f"snf-{name}.json"
    write_json(json_path, {
        "machine": machine(), "config": args.config, "overrides": args.overrides,
        "minutes": args.minutes, "threads": args.threads, "rows": rows,
        "annealing_steps_compared": best_ann["steps"], "ratio": ratio,
        "ratio_10_minutes": ratio_10, "ratio_sampling_only": ratio_long, "training_curve": curve})
    print(f"training curve: {out / 'run' / 'training.png'}; {json_path}"
          if flow is not None else str(json_path))


if __name__ == "__main__":
    main()
