"""Non-equilibrium sampling against the conventional chains, three studies:

    python perf/bench_annealing.py volume      [--sizes 4 6 8] [--beta 1.0] [--flow-seconds 120]
    python perf/bench_annealing.py topology    [--size 16] [--beta 6.0] [--minutes 5]
                                               [--flow-seconds 120] [--beta-start 3]
    python perf/bench_annealing.py equilibrium [--size 4] [--beta-start 5.6] [--beta 5.7]

``volume``: U(1) in 3D at ``L = 4, 6, 8``: the protocol length ``n`` for ESS 0.5 (annealing
from Haar, one heat-bath sweep per step, found by doubling ``n`` and interpolating
``log ESS``, which falls like ``var(W) ~ V/n``), and the cost per effective sample there.
With ``--flow-seconds S`` the same scan for the stochastic normalizing flow with shared stout
layers (``sampler.knots``): at each ``n`` it trains for ``S`` seconds, starting from the
schedule trained at the previous point (the smearing is local, so it does not depend on the
volume, and its parameters count units of each layer's first-order step, so they do not depend
on ``n`` either; the first point starts from the first-order layers, ``sampler.init``), then
draws the trajectories; its training seconds are reported next to the cost; the Adam rate is
``--flow-lr`` at every ``n``. A scan stops at ESS 0.5, at ``--max-steps``
(``--flow-max-steps``), or after two points whose ESS fell. ``--resume`` keeps the rows of an
earlier output file and measures only the missing ones.

``topology``: 2D U(1) (default 16x16 at beta = 6, where local updates freeze the topological
charge): the integrated autocorrelation time of ``Q`` and the CPU seconds per independent
sample of ``Q`` (``2 tau_int`` chain steps) for the heat-bath chain, HMC, and the independence
Metropolis chain over annealing trajectories from Haar; with ``--flow-seconds`` the same over
an SNF's trajectories (its training counted), with ``--beta-start`` over trajectories annealed
from a heat-bath ensemble at that coupling (its cost counted); ``<Q^2>/V`` of each next to the
exact value.

``equilibrium``: SU(3) in 4D from an equilibrium ensemble at ``beta_0`` (a heat-bath chain,
written and read as a samples file) to ``beta`` (``5.6 -> 5.7``): ESS and seconds per
effective sample against ``n``, and the heat-bath chain at ``beta`` as the reference; with
``--snf`` an SNF with shared stout layers at each ``n`` (trained ``--flow-seconds``, or the
first-order layers as they start).

Each prints a table and writes ``perf/out/annealing-<study>.json`` or ``--out`` (and a plot for
volume).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import resource
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
from hpcflow.app.train import Trainer  # noqa: E402
from hpcflow.distributed import NoneComm  # noqa: E402
from hpcflow.estimators import (  # noqa: E402
    chain_mean,
    ess,
    independence_metropolis,
    integrated_autocorrelation_time,
    reweighted_mean,
)
from hpcflow.flows.smearing import StoutSchedule  # noqa: E402
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
    out = Path(args.out or "perf/out/annealing-volume.json")
    rows = _resumed_rows(out, args.beta) if args.resume and out.exists() else []
    done = {(r["L"], r["sampler"]) for r in rows}
    # the schedule trained last, and its steps: each SNF point starts there
    trained = {"p": None, "steps": None}
    for r in rows:
        if r["sampler"] == "snf":
            trained.update(p=torch.tensor(r["scan"][-1]["p"], dtype=torch.float64),
                           steps=r["scan"][-1]["steps"])
    for i, size in enumerate(args.sizes):
        base = [f"lattice.shape=[{size},{size},{size}]", "lattice.group=U1",
                f"action.beta={args.beta}"]
        n_traj = _per_size(args.trajectories, i)
        if not args.no_annealing and (size, "annealing") not in done:
            scan = _scan(size, _per_size(args.start_steps, i), args.max_steps,
                         functools.partial(_anneal_point, base, n_traj=n_traj), "annealing")
            rows.append(_volume_row(size, "annealing", scan))
        seconds = _per_size(args.flow_seconds, i)
        if seconds > 0 and (size, "snf") not in done:
            scan = _scan(size, _per_size(args.flow_start_steps, i),
                         args.flow_max_steps or args.max_steps,
                         functools.partial(_snf_point, base, n_traj=n_traj, trained=trained,
                                           seconds=seconds, batch=_per_size(args.flow_batch, i),
                                           args=args), "snf")
            rows.append(_volume_row(size, "snf", scan, sum(s["train_s"] for s in scan)))
        rows.sort(key=lambda r: (r["L"], r["sampler"]))
        _write_volume(args, rows)  # after every size: a stopped run keeps what it measured
    print_table(rows, [("L", "L", "d"), ("volume", "V", "d"), ("sampler", "sampler", ""),
                       ("steps_ess_0.5", "steps for ESS 0.5", ".0f"),
                       ("s_per_eff_sample", "s per effective sample", ".4f"),
                       ("train_s", "training s (whole scan)", ".0f"),
                       ("s_for_1000_eff", "s for 1000 eff. samples, training incl.", ".0f")])
    _plot_volume(rows, Path(args.out or "perf/out/annealing-volume.json").with_suffix(".png"))


def _write_volume(args, rows: list[dict]) -> None:
    write_json(args.out or "perf/out/annealing-volume.json", {
        "machine": machine(), "beta": args.beta, "trajectories": args.trajectories,
        "flow_seconds": args.flow_seconds, "flow_batch": args.flow_batch,
        "flow_knots": args.flow_knots, "flow_lr": args.flow_lr, "rows": rows})


def _resumed_rows(path: Path, beta: float) -> list[dict]:
    """The rows of an earlier volume output at the same ``beta``; exits naming the file
    otherwise."""
    try:
        data = json.loads(path.read_text())
        rows, old_beta = data["rows"], data["beta"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--resume: {path} is not a volume study's output ({e!r})") from None
    if old_beta != beta:
        raise SystemExit(f"--resume: {path} holds beta = {old_beta}, this run has {beta}")
    return rows


def _per_size(values: list, i: int):
    """One value for every size, or one per size."""
    return values[min(i, len(values) - 1)]


def _volume_row(size: int, sampler: str, scan: list[dict], train_s: float = 0.0) -> dict:
    """One size and sampler; where no point reached ESS 0.5 the steps are ``None`` and the
    cost is the best measured."""
    if any(s["ess"] >= 0.5 for s in scan):
        n_half, cost = _interpolate(scan, 0.5)
    else:
        n_half, cost = None, min(s["s_per_traj"] / max(s["ess"], 1e-12) for s in scan)
    return {"L": size, "volume": size**3, "sampler": sampler, "steps_ess_0.5": n_half,
            "s_per_eff_sample": cost, "train_s": train_s,
            "s_for_1000_eff": train_s + 1000 * cost, "scan": scan}


def _scan(size: int, n: int, max_steps: int, point, name: str) -> list[dict]:
    """``point(n)`` for ``n`` doubling from ``n`` until ESS >= 0.5, ``max_steps``, or two
    points in a row whose ESS fell."""
    scan = []
    while True:
        scan.append({"steps": n, **point(n)})
        s = scan[-1]
        print(f"L={size} {name} n={n}: ESS {s['ess']:.3f}, var W {s['var_w']:.3f}, "
              f"{s['s_per_traj'] * 1e3:.1f} ms/traj", file=sys.stderr, flush=True)
        fell = len(scan) >= 3 and scan[-1]["ess"] < scan[-2]["ess"] < scan[-3]["ess"]
        if s["ess"] >= 0.5 or n >= max_steps or fell:
            return scan
        n *= 2


def _anneal_point(base: list[str], n: int, *, n_traj: int) -> dict:
    lw, seconds, _ = anneal([*base, f"sampler.steps={n}"], n_traj)
    return {"ess": ess(lw), "var_w": float(lw.var()), "s_per_traj": seconds / len(lw),
            "trajectories": len(lw)}


def _snf_point(base: list[str], n: int, *, n_traj: int, trained: dict, seconds: float,
               batch: int, args) -> dict:
    """Train the shared-stout SNF with ``n`` steps for ``seconds`` at ``batch`` (starting from
    ``trained["p"]`` when set: in units of the first-order step it carries over to any ``n``;
    ``trained`` is replaced by the schedule trained here), then draw ``n_traj`` trajectories."""
    cfg, model, rec = train_stout(base, n, seconds, batch=batch, knots=args.flow_knots,
                                  lr=args.flow_lr, p_init=trained["p"])
    lw, draw_s, _ = draw_trajectories(model, build_action(cfg), n_traj, 256,
                                      seed=cfg.train.seed)
    trained.update(p=torch.tensor(rec["p"], dtype=torch.float64), steps=n)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"ess": ess(lw), "var_w": float(lw.var()), "s_per_traj": draw_s / len(lw),
            "trajectories": len(lw), "peak_rss_gib": peak, **rec}


def train_stout(overrides: list[str], steps: int, seconds: float, *, batch: int, knots: int,
                lr: float, p_init: torch.Tensor | None = None):
    """A stochastic normalizing flow of ``steps`` protocol steps with shared stout layers
    (``sampler.knots``) trained for ``seconds`` (at least two optimizer steps) in this
    process, from ``p_init [K, Nd, 2]`` when given: ``(config, model in eval mode,
    record)``; the record holds ``train_s``,
    ``opt_steps``, the Adam rate ``lr``, the losses (mean work) and the trained ``p`` (units
    of the first-order step: the same rate fits every ``steps``)."""
    cfg = load_config(None, [*overrides, f"sampler.steps={steps}", "sampler.kind=snf",
                             "sampler.layer=stout", f"sampler.knots={knots}",
                             f"train.batch_size={batch}",
                             f"train.lr={lr}", "train.steps=1000000", "train.eval_every=0"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunContext(NoneComm(device="cpu"), tmp, terminal=False))
        (schedule,) = [m for m in trainer.model.modules() if isinstance(m, StoutSchedule)]
        if p_init is not None:
            with torch.no_grad():
                schedule.p.copy_(p_init)
        t0 = time.perf_counter()
        losses = []
        while time.perf_counter() - t0 < seconds or len(losses) < 2:
            losses.append(trainer.train_step()["loss"])
        train_s = time.perf_counter() - t0
    return cfg, trainer.model.eval(), {"train_s": train_s, "opt_steps": len(losses), "lr": lr,
                                       "losses": losses, "p": schedule.p.detach().tolist()}


def _interpolate(scan: list[dict], target: float) -> tuple[float, float]:
    """Steps where ESS reaches ``target`` (log ESS linear in 1/n between the bracketing
    points; the first point when it is already above), and seconds per effective sample
    there. At least one point of ``scan`` reaches ``target``."""
    above = [s for s in scan if s["ess"] >= target]
    below = [s for s in scan if s["ess"] < target]
    if not below:
        return float(above[0]["steps"]), above[0]["s_per_traj"] / above[0]["ess"]
    a, b = below[-1], above[0]
    x0, x1 = 1.0 / a["steps"], 1.0 / b["steps"]
    y0, y1 = math.log(a["ess"]), math.log(b["ess"])
    x = x0 + (math.log(target) - y0) * (x1 - x0) / (y1 - y0)
    n = 1.0 / x
    per_step = b["s_per_traj"] / b["steps"]
    return n, per_step * n / target


def _plot_volume(rows: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    style = {"annealing": "-", "snf": "--"}
    colors = {}
    for r in rows:
        color = colors.setdefault(r["L"], f"C{len(colors)}")
        axes[0].semilogy([s["steps"] for s in r["scan"]], [s["ess"] for s in r["scan"]],
                         "o" + style[r["sampler"]], color=color,
                         label=f"L = {r['L']}, {r['sampler']}")
    axes[0].axhline(0.5, color="0.6", lw=0.8)
    axes[0].set_xscale("log")
    axes[0].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[0].set_xlabel("protocol steps n")
    axes[0].set_ylabel("ESS")
    axes[0].legend(fontsize=7)
    for sampler, ls in style.items():
        sel = [r for r in rows if r["sampler"] == sampler and r["steps_ess_0.5"] is not None]
        if not sel:
            continue
        v = [r["volume"] for r in sel]
        axes[1].loglog(v, [r["steps_ess_0.5"] for r in sel], "o" + ls, color="C0",
                       label=f"{sampler}: steps for ESS 0.5")
        axes[1].loglog(v, [r["s_per_eff_sample"] for r in sel], "s" + ls, color="C1",
                       label=f"{sampler}: s per effective sample")
    axes[1].xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    axes[1].set_xlabel("volume V = L^3")
    axes[1].legend(fontsize=7)
    fig.suptitle("U(1) 3D beta = 1 from Haar: heat-bath annealing (solid), SNF with stout "
                 "layers (dashed)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


# ---------------------------------------------------------------------------------- topology
def topology(args) -> None:
    shape = (args.size, args.size)
    base = [f"lattice.shape=[{args.size},{args.size}]", "lattice.group=U1",
            f"action.beta={args.beta}"]
    group = get_group("U1")
    budget = args.minutes * 60
    rows = []

    def row(name, q, seconds, steps, weights=None):
        # anticorrelation is not credited (as in chain_mean); a frozen Q: tau infinite
        tau = (max(integrated_autocorrelation_time(q).tau, 0.5) if np.ptp(np.round(q)) > 0
               else math.inf)
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
    while time.perf_counter() - t0 < budget or len(qs) < args.probe:
        links, _, _ = hmc.trajectory()
        qs.append(float(topological_charge(links, group)[0]))
    row("HMC (10 steps)", np.array(qs), time.perf_counter() - t0, len(qs))

    def imh_row(name, lw, q, seconds):
        """Independence Metropolis over trajectories; ``seconds``: everything they cost."""
        state, _, _, _ = independence_metropolis(lw, np.random.default_rng(0).random(len(lw)))
        row(name, q[state], seconds, len(lw))
        rows[-1]["ess"] = ess(lw)
        rows[-1]["chi_reweighted"] = reweighted_mean(q**2 / math.prod(shape), lw).value

    charge = functools.partial(topological_charge, group=group)
    # independence Metropolis over annealing trajectories from Haar
    lw, seconds, q = anneal([*base, f"sampler.steps={args.steps}"], args.trajectories,
                            observable=charge)
    imh_row(f"annealing {args.steps} steps, IMH", lw, q, seconds)
    # the same protocol with trained stout layers (a stochastic normalizing flow)
    if args.flow_seconds > 0:
        cfg_f, model, rec = train_stout(base, args.steps, args.flow_seconds, batch=args.flow_batch,
                                        knots=args.flow_knots, lr=args.flow_lr)
        lw, seconds, q = draw_trajectories(model, build_action(cfg_f), args.trajectories, 256,
                                           seed=cfg_f.train.seed, observable=charge)
        imh_row(f"SNF {args.steps} steps, IMH (training counted)", lw, q,
                seconds + rec["train_s"])
        rows[-1].update(train_s=rec["train_s"], opt_steps=rec["opt_steps"], lr=rec["lr"])
    # from an equilibrium ensemble at beta_start (a heat-bath chain that does not freeze
    # there), annealed to beta: every trajectory's start decorrelated, the ensemble's cost
    # counted
    if args.beta_start > 0:
        with tempfile.TemporaryDirectory() as tmp:
            cfg0 = load_config(None, [*base, f"action.beta={args.beta_start}",
                                      "heatbath.thermalization=200", "heatbath.overrelax=1",
                                      f"heatbath.save_every={args.save_every}"], model=False)
            ens = Path(tmp) / "ensemble"
            t0 = time.perf_counter()
            run_chain(cfg0, "heatbath", ens, RunContext(NoneComm(device="cpu"), tmp,
                                                        terminal=False),
                      n_total=args.trajectories)
            ens_s = time.perf_counter() - t0
            start = StartEnsemble(ens / "samples.h5", "U1", shape, args.beta_start)
            over = [*base, f"sampler.steps={args.from_steps}",
                    f"sampler.beta_start={args.beta_start}", f"sampler.start={ens / 'samples.h5'}"]
            lw, seconds, q = anneal(over, args.trajectories, start=start, observable=charge)
            imh_row(f"{args.beta_start} -> {args.beta} annealing {args.from_steps} steps from a "
                    f"heat-bath ensemble, IMH (ensemble counted)", lw, q, seconds + ens_s)
            rows[-1]["ensemble_s"] = ens_s
            if args.flow_seconds > 0:  # the same with trained stout layers
                cfg_f, model, rec = train_stout(over, args.from_steps, args.flow_seconds,
                                                batch=args.flow_batch, knots=args.flow_knots,
                                                lr=args.flow_lr)
                lw, seconds, q = draw_trajectories(model, build_action(cfg_f), args.trajectories,
                                                   256, seed=cfg_f.train.seed, start=start,
                                                   observable=charge)
                imh_row(f"{args.beta_start} -> {args.beta} SNF {args.from_steps} steps from the "
                        f"same ensemble, IMH (ensemble and training counted)", lw, q,
                        seconds + ens_s + rec["train_s"])
                rows[-1].update(ensemble_s=ens_s, train_s=rec["train_s"],
                                opt_steps=rec["opt_steps"], lr=rec["lr"])
    chi_exact = exact.u1_2d_topological_susceptibility(args.beta, math.prod(shape))
    print(f"2D U(1) {args.size}x{args.size} beta {args.beta}: exact chi_t = {chi_exact:.6f}")
    print_table(rows, [("sampler", "sampler", ""), ("steps", "chain steps", "d"),
                       ("s_per_step", "s/step", ".4f"), ("tau_int_q", "tau_int(Q)", ".1f"),
                       ("s_per_indep_q", "s per indep. Q", ".3f"),
                       ("distinct_q", "distinct Q", "d"), ("chi", "<Q^2>/V", ".5f"),
                       ("chi_err", "+-", ".5f")])
    write_json(args.out or "perf/out/annealing-topology.json", {
        "machine": machine(), "shape": list(shape), "beta": args.beta, "minutes": args.minutes,
        "chi_exact": chi_exact, "rows": rows})


def _chain_steps_within(budget: float, run, probe: int) -> int:
    """Time the chain on ``probe`` and ``2 probe`` rows (the difference leaves out the
    thermalization; where it is lost in the noise, the longer run's time per row), then run as
    many rows as fit in ``budget``."""
    t0 = time.perf_counter()
    run(probe)
    t1 = time.perf_counter()
    run(2 * probe)
    short, long = t1 - t0, time.perf_counter() - t1
    per_row = (long - short) / probe if long > 1.5 * short else long / (2 * probe)
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
        def row(name, lw, seconds, plaq, train_s=0.0):
            e, p = ess(lw), reweighted_mean(plaq, lw)
            return {"sampler": name, "ess": e, "var_w": float(lw.var()),
                    "s_per_traj": seconds / len(lw), "s_per_eff": seconds / len(lw) / max(e, 1e-12),
                    "train_s": train_s, "plaquette": p.value, "plaquette_err": p.error}

        def plaquette(u):
            return average_plaquette(u, group)

        for n in args.steps:
            over = [*base, f"action.beta={args.beta}", f"sampler.steps={n}",
                    f"sampler.beta_start={args.beta_start}", f"sampler.start={ens / 'samples.h5'}"]
            rows.append(row(f"{args.beta_start} -> {args.beta}, {n} steps",
                            *anneal(over, args.ensemble, batch=64, start=start,
                                    observable=plaquette)))
            if not args.snf:
                continue
            if args.flow_seconds > 0:
                cfg, model, rec = train_stout(over, n, args.flow_seconds, batch=args.flow_batch,
                                              knots=args.flow_knots, lr=args.flow_lr)
            else:  # the first-order layers as they start
                cfg = load_config(None, [*over, "sampler.kind=snf", "sampler.layer=stout",
                                         f"sampler.knots={args.flow_knots}"])
                model, rec = build_model(cfg), {"train_s": 0.0}
            lw, seconds, plaq = draw_trajectories(model, build_action(cfg), args.ensemble, 64,
                                                  seed=cfg.train.seed, start=start,
                                                  observable=plaquette)
            rows.append({**row(f"snf, {n} steps", lw, seconds, plaq, rec["train_s"]),
                         "opt_steps": rec.get("opt_steps", 0), "p": rec.get("p")})
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
        tau = max(integrated_autocorrelation_time(plaq).tau, 0.5)  # as chain_mean
        rows.append({"sampler": f"heat-bath chain at {args.beta}", "ess": 1 / (2 * tau),
                     "var_w": math.nan, "train_s": 0.0,
                     "s_per_traj": ref_s / args.reference,
                     "s_per_eff": 2 * tau * ref_s / args.reference, "plaquette": est.value,
                     "plaquette_err": est.error})
    print(f"SU(3) {args.size}^4: ensemble of {args.ensemble} at beta {args.beta_start} in "
          f"{ens_s:.0f} s (heat bath, {args.thermalization} thermalization sweeps, every "
          f"{args.save_every}th sweep kept)")
    print_table(rows, [("sampler", "sampler", ""), ("ess", "ESS (or 1/2tau)", ".3f"),
                       ("var_w", "var W", ".3f"), ("train_s", "train s", ".0f"),
                       ("s_per_traj", "s/trajectory (or sweep)", ".4f"),
                       ("s_per_eff", "s per effective sample", ".4f"),
                       ("plaquette", "<P>", ".5f"), ("plaquette_err", "+-", ".5f")])
    write_json(args.out or "perf/out/annealing-equilibrium.json", {
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
    v.add_argument("--trajectories", type=int, nargs="+", default=[1024],
                   help="per point (one value, or one per size)")
    v.add_argument("--start-steps", type=int, nargs="+", default=[25],
                   help="first n of the annealing scan (one value, or one per size)")
    v.add_argument("--max-steps", type=int, default=3200)
    v.add_argument("--no-annealing", action="store_true", help="only the flow scan")
    v.add_argument("--resume", action="store_true",
                   help="keep the rows of the output file; measure only the missing ones")
    v.add_argument("--flow-seconds", type=float, nargs="+", default=[0.0],
                   help="training seconds per point of the SNF scan, one value or one per "
                        "size (0: no SNF scan)")
    v.add_argument("--flow-start-steps", type=int, nargs="+", default=[25],
                   help="first n of the SNF scan (one value, or one per size)")
    v.add_argument("--flow-batch", type=int, nargs="+", default=[64],
                   help="training batch (one value, or one per size)")
    v.add_argument("--flow-knots", type=int, default=5)
    v.add_argument("--flow-lr", type=float, default=0.02,
                   help="Adam rate (the parameters count first-order steps: any n)")
    v.add_argument("--flow-max-steps", type=int, default=0,
                   help="largest n of the SNF scan (default --max-steps); training time per "
                        "optimizer step grows like V n batch")
    v.add_argument("--out", help="JSON path (default perf/out/annealing-volume.json; plot "
                                 "next to it)")
    t = sub.add_parser("topology")
    t.add_argument("--size", type=int, default=16)
    t.add_argument("--beta", type=float, default=6.0)
    t.add_argument("--minutes", type=float, default=5.0, help="budget of each chain")
    t.add_argument("--steps", type=int, default=200, help="annealing protocol steps")
    t.add_argument("--trajectories", type=int, default=1024)
    t.add_argument("--probe", type=int, default=50)
    t.add_argument("--flow-seconds", type=float, default=0.0,
                   help="train an SNF (shared stout layers) this long and add its row")
    t.add_argument("--flow-batch", type=int, default=64)
    t.add_argument("--flow-lr", type=float, default=0.02,
                   help="Adam rate (the parameters count first-order steps: any n)")
    t.add_argument("--flow-knots", type=int, default=5)
    t.add_argument("--beta-start", type=float, default=0.0,
                   help="add annealing from a heat-bath ensemble at this coupling")
    t.add_argument("--from-steps", type=int, default=50,
                   help="protocol steps from --beta-start")
    t.add_argument("--save-every", type=int, default=2,
                   help="sweeps between the ensemble's configurations")
    t.add_argument("--out", help="JSON path (default perf/out/annealing-topology.json)")
    e = sub.add_parser("equilibrium")
    e.add_argument("--size", type=int, default=4)
    e.add_argument("--beta-start", type=float, default=5.6)
    e.add_argument("--beta", type=float, default=5.7)
    e.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 40])
    e.add_argument("--ensemble", type=int, default=256)
    e.add_argument("--thermalization", type=int, default=200)
    e.add_argument("--save-every", type=int, default=5)
    e.add_argument("--reference", type=int, default=1000)
    e.add_argument("--snf", action="store_true",
                   help="add an SNF (shared stout layers) at each --steps")
    e.add_argument("--flow-seconds", type=float, default=0.0,
                   help="train each SNF this long (0: the first-order layers untrained)")
    e.add_argument("--flow-batch", type=int, default=16)
    e.add_argument("--flow-lr", type=float, default=0.02)
    e.add_argument("--flow-knots", type=int, default=2)
    e.add_argument("--out", help="JSON path (default perf/out/annealing-equilibrium.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    {"volume": volume, "topology": topology, "equilibrium": equilibrium}[args.study](args)


if __name__ == "__main__":
    main()
