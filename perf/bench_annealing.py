"""Non-equilibrium sampling against the conventional chains, three studies:

    python perf/bench_annealing.py volume      [--sizes 4 6 8] [--beta 1.0]
    python perf/bench_annealing.py topology    [--size 16] [--beta 6.0] [--minutes 5]
    python perf/bench_annealing.py equilibrium [--size 4] [--beta-start 5.6] [--beta 5.7]

``volume``: U(1) in 3D at ``L = 4, 6, 8``: the protocol length ``n`` for ESS 0.5 (annealing
from Haar, one heat-bath sweep per step, found by doubling ``n`` and interpolating
``log ESS``, which falls like ``var(W) ~ V/n``), and the cost per effective sample there.

``topology``: 2D U(1) (default 16x16 at beta = 6, where local updates freeze the topological
charge): the integrated autocorrelation time of ``Q`` and the CPU seconds per independent
sample of ``Q`` (``2 tau_int`` chain steps) for the heat-bath chain, HMC, and the independence
Metropolis chain over annealing trajectories; ``<Q^2>/V`` of each next to the exact value.

``equilibrium``: SU(3) in 4D from an equilibrium ensemble at ``beta_0`` (a heat-bath chain,
written and read as a samples file) to ``beta`` (``5.6 -> 5.7``): ESS and seconds per
effective sample against ``n``, and the heat-bath chain at ``beta`` as the reference.

Each prints a table and writes ``perf/out/annealing-<study>.json`` (and a plot for volume).
"""

from __future__ import annotations

import argparse
import math
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
from hpcflow.app.propose import StartEnsemble  # noqa: E402
from hpcflow.distributed import NoneComm  # noqa: E402
from hpcflow.estimators import (  # noqa: E402
    chain_mean,
    ess,
    independence_metropolis,
    integrated_autocorrelation_time,
    reweighted_mean,
)
from hpcflow.io.samples import open_samples  # noqa: E402
from hpcflow.lattice import exact  # noqa: E402
from hpcflow.lattice.groups import get_group  # noqa: E402
from hpcflow.lattice.observables import average_plaquette, topological_charge  # noqa: E402
from hpcflow.updates.hmc import HMC  # noqa: E402


def anneal(overrides: list[str], n: int, batch: int = 256, start=None, observable=None):
    """``n`` annealing trajectories: log weights, seconds, and ``observable(links)`` if given."""
    cfg = load_config(None, ["sampler.kind=annealing", *overrides])
    return draw_trajectories(build_model(cfg), build_action(cfg), n, batch, seed=cfg.train.seed,
                             start=start, observable=observable)


# ------------------------------------------------------------------------------------ volume
def volume(args) -> None:
    rows = []
    for size in args.sizes:
        base = [f"lattice.shape=[{size},{size},{size}]", "lattice.group=U1",
                f"action.beta={args.beta}"]
        scan, n = [], args.start_steps
        while True:
            lw, seconds, _ = anneal([*base, f"sampler.steps={n}"], args.trajectories)
            scan.append({"steps": n, "ess": ess(lw), "var_w": float(lw.var()),
                         "s_per_traj": seconds / len(lw)})
            print(f"L={size} n={n}: ESS {scan[-1]['ess']:.3f}, var W "
                  f"{scan[-1]['var_w']:.3f}, {scan[-1]['s_per_traj'] * 1e3:.1f} ms/traj",
                  file=sys.stderr, flush=True)
            if scan[-1]["ess"] >= 0.5 or n >= args.max_steps:
                break
            n *= 2
        n_half, cost = _interpolate(scan, 0.5)
        rows.append({"L": size, "volume": size**3, "steps_ess_0.5": n_half,
                     "s_per_eff_sample": cost, "scan": scan})
    print_table(rows, [("L", "L", "d"), ("volume", "V", "d"),
                       ("steps_ess_0.5", "steps for ESS 0.5", ".0f"),
                       ("s_per_eff_sample", "s per effective sample", ".4f")])
    write_json("perf/out/annealing-volume.json", {"machine": machine(), "beta": args.beta,
                                                  "trajectories": args.trajectories,
                                                  "rows": rows})
    _plot_volume(rows)


def _interpolate(scan: list[dict], target: float) -> tuple[float, float]:
    """Steps where ESS reaches ``target`` (log ESS linear in 1/n between the bracketing
    points), and seconds per effective sample there."""
    above = [s for s in scan if s["ess"] >= target]
    below = [s for s in scan if s["ess"] < target]
    if not above or not below:
        s = above[0] if above else scan[-1]
        return float(s["steps"]), s["s_per_traj"] / max(s["ess"], 1e-12)
    a, b = below[-1], above[0]
    x0, x1 = 1.0 / a["steps"], 1.0 / b["steps"]
    y0, y1 = math.log(a["ess"]), math.log(b["ess"])
    x = x0 + (math.log(target) - y0) * (x1 - x0) / (y1 - y0)
    n = 1.0 / x
    per_step = b["s_per_traj"] / b["steps"]
    return n, per_step * n / target


def _plot_volume(rows: list[dict]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for r in rows:
        axes[0].semilogy([s["steps"] for s in r["scan"]], [s["ess"] for s in r["scan"]], "o-",
                         label=f"L = {r['L']}")
    axes[0].axhline(0.5, color="0.6", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_xlabel("protocol steps n")
    axes[0].set_ylabel("ESS")
    axes[0].legend()
    v = [r["volume"] for r in rows]
    axes[1].loglog(v, [r["steps_ess_0.5"] for r in rows], "o-", label="steps for ESS 0.5")
    axes[1].loglog(v, [r["s_per_eff_sample"] for r in rows], "s-",
                   label="s per effective sample")
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set_xlabel("volume V = L^3")
    axes[1].legend()
    fig.suptitle("U(1) 3D, annealing from Haar with heat-bath updates")
    fig.tight_layout()
    Path("perf/out").mkdir(parents=True, exist_ok=True)
    fig.savefig("perf/out/annealing-volume.png", dpi=100)


# ---------------------------------------------------------------------------------- topology
def topology(args) -> None:
    shape = (args.size, args.size)
    base = [f"lattice.shape=[{args.size},{args.size}]", "lattice.group=U1",
            f"action.beta={args.beta}"]
    group = get_group("U1")
    budget = args.minutes * 60
    rows = []

    def row(name, q, seconds, steps, weights=None):
        tau = integrated_autocorrelation_time(q).tau if np.ptp(q) > 0 else math.inf
        chi = chain_mean(q**2 / math.prod(shape))
        rows.append({"sampler": name, "steps": steps, "seconds": seconds,
                     "s_per_step": seconds / steps, "tau_int_q": tau,
                     "s_per_indep_q": 2 * tau * seconds / steps, "chi": chi.value,
                     "chi_err": chi.error, "distinct_q": int(len(np.unique(np.round(q))))})

    # heat-bath chain (one configuration, over-relaxation as configured)
    cfg = load_config(None, [*base, "heatbath.thermalization=200", "heatbath.overrelax=1"],
                      model=False)
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(NoneComm(device="cpu"), tmp, terminal=False)
        t0 = time.perf_counter()
        n_hb = _chain_steps_within(budget, lambda n: run_chain(
            cfg, "heatbath", Path(tmp) / f"hb{n}", ctx, n_total=n), args.probe)
        with open_samples(Path(tmp) / f"hb{n_hb}" / "samples.h5") as s:
            q = topological_charge(torch.from_numpy(s.links[:]), group).numpy()
        row("heat bath (+1 OR)", q, time.perf_counter() - t0, n_hb)
    # HMC chain
    action = build_action(cfg)
    hmc = HMC(group, action, shape, n_steps=10, step_size=0.1, seed=1)
    t0 = time.perf_counter()
    hmc.thermalize(200)
    qs = []
    while time.perf_counter() - t0 < budget:
        links, _, _ = hmc.trajectory()
        qs.append(float(topological_charge(links, group)[0]))
    row("HMC (10 steps)", np.array(qs), time.perf_counter() - t0, len(qs))
    # independence Metropolis over annealing trajectories
    lw, seconds, q = anneal([*base, f"sampler.steps={args.steps}"], args.trajectories,
                            observable=lambda u: topological_charge(u, group))
    state, _, _, _ = independence_metropolis(lw, np.random.default_rng(0).random(len(lw)))
    row(f"annealing {args.steps} steps, IMH", q[state], seconds, len(lw))
    rows[-1]["ess"] = ess(lw)
    rows[-1]["chi_reweighted"] = reweighted_mean(q**2 / math.prod(shape), lw).value
    chi_exact = exact.u1_2d_topological_susceptibility(args.beta, math.prod(shape))
    print(f"2D U(1) {args.size}x{args.size} beta {args.beta}: exact chi_t = {chi_exact:.6f}")
    print_table(rows, [("sampler", "sampler", ""), ("steps", "chain steps", "d"),
                       ("s_per_step", "s/step", ".4f"), ("tau_int_q", "tau_int(Q)", ".1f"),
                       ("s_per_indep_q", "s per indep. Q", ".3f"),
                       ("distinct_q", "distinct Q", "d"), ("chi", "<Q^2>/V", ".5f"),
                       ("chi_err", "+-", ".5f")])
    write_json("perf/out/annealing-topology.json", {
        "machine": machine(), "shape": list(shape), "beta": args.beta, "minutes": args.minutes,
        "chi_exact": chi_exact, "rows": rows})


def _chain_steps_within(budget: float, run, probe: int) -> int:
    """Run the chain for ``probe`` rows to time it, then for as many as fit in ``budget``."""
    t0 = time.perf_counter()
    run(probe)
    per_row = (time.perf_counter() - t0) / probe
    n = max(probe, int(budget / per_row))
    run(n)
    return n


# ------------------------------------------------------------------------------- equilibrium
def equilibrium(args) -> None:
    shape = [args.size] * 4
    base = [f"lattice.shape={shape}", "lattice.group=SU3"]
    group = get_group("SU3")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ens = Path(tmp) / "ensemble"
        cfg0 = load_config(None, [*base, f"action.beta={args.beta_start}",
                                  f"heatbath.thermalization={args.thermalization}",
                                  f"heatbath.save_every={args.save_every}",
                                  "heatbath.overrelax=1"], model=False)
        ctx = RunContext(NoneComm(device="cpu"), tmp, terminal=False)
        t0 = time.perf_counter()
        run_chain(cfg0, "heatbath", ens, ctx, n_total=args.ensemble)
        ens_s = time.perf_counter() - t0
        start = StartEnsemble(ens / "samples.h5", "SU3", shape, args.beta_start)
        for n in args.steps:
            lw, seconds, plaq = anneal(
                [*base, f"action.beta={args.beta}", f"sampler.steps={n}",
                 f"sampler.beta_start={args.beta_start}",
                 f"sampler.start={ens / 'samples.h5'}"], args.ensemble, batch=64, start=start,
                observable=lambda u: average_plaquette(u, group))
            e = ess(lw)
            p = reweighted_mean(plaq, lw)
            rows.append({"sampler": f"{args.beta_start} -> {args.beta}, {n} steps",
                         "ess": e, "s_per_traj": seconds / len(lw),
                         "s_per_eff": seconds / len(lw) / max(e, 1e-12), "plaquette": p.value,
                         "plaquette_err": p.error})
        # reference: the heat-bath chain at beta
        cfg1 = load_config(None, [*base, f"action.beta={args.beta}",
                                  f"heatbath.thermalization={args.thermalization}",
                                  "heatbath.overrelax=1"], model=False)
        t0 = time.perf_counter()
        run_chain(cfg1, "heatbath", Path(tmp) / "ref", ctx, n_total=args.reference)
        ref_s = time.perf_counter() - t0
        with open_samples(Path(tmp) / "ref" / "samples.h5") as s:
            plaq = average_plaquette(torch.from_numpy(s.links[:]), group).numpy()
        est = chain_mean(plaq)
        tau = integrated_autocorrelation_time(plaq).tau
        rows.append({"sampler": f"heat-bath chain at {args.beta}", "ess": 1 / (2 * tau),
                     "s_per_traj": ref_s / args.reference,
                     "s_per_eff": 2 * tau * ref_s / args.reference, "plaquette": est.value,
                     "plaquette_err": est.error})
    print(f"SU(3) {args.size}^4: ensemble of {args.ensemble} at beta {args.beta_start} in "
          f"{ens_s:.0f} s (heat bath, {args.thermalization} thermalization sweeps, every "
          f"{args.save_every}th sweep kept)")
    print_table(rows, [("sampler", "sampler", ""), ("ess", "ESS (or 1/2tau)", ".3f"),
                       ("s_per_traj", "s/trajectory (or sweep)", ".4f"),
                       ("s_per_eff", "s per effective sample", ".4f"),
                       ("plaquette", "<P>", ".5f"), ("plaquette_err", "+-", ".5f")])
    write_json("perf/out/annealing-equilibrium.json", {
        "machine": machine(), "size": args.size, "beta_start": args.beta_start,
        "beta": args.beta, "ensemble": args.ensemble, "ensemble_seconds": ens_s,
        "rows": rows})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    sub = p.add_subparsers(dest="study", required=True)
    v = sub.add_parser("volume")
    v.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 8])
    v.add_argument("--beta", type=float, default=1.0)
    v.add_argument("--trajectories", type=int, default=1024)
    v.add_argument("--start-steps", type=int, default=25)
    v.add_argument("--max-steps", type=int, default=3200)
    t = sub.add_parser("topology")
    t.add_argument("--size", type=int, default=16)
    t.add_argument("--beta", type=float, default=6.0)
    t.add_argument("--minutes", type=float, default=5.0, help="budget of each chain")
    t.add_argument("--steps", type=int, default=200, help="annealing protocol steps")
    t.add_argument("--trajectories", type=int, default=1024)
    t.add_argument("--probe", type=int, default=50)
    e = sub.add_parser("equilibrium")
    e.add_argument("--size", type=int, default=4)
    e.add_argument("--beta-start", type=float, default=5.6)
    e.add_argument("--beta", type=float, default=5.7)
    e.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 40])
    e.add_argument("--ensemble", type=int, default=256)
    e.add_argument("--thermalization", type=int, default=200)
    e.add_argument("--save-every", type=int, default=5)
    e.add_argument("--reference", type=int, default=1000)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"volume": volume, "topology": topology, "equilibrium": equilibrium}[args.study](args)


if __name__ == "__main__":
    main()
