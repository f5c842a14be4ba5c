"""The untrained stochastic flow: work variance against the multiple of the first-order step.

    python perf/bench_first_order.py --config configs/snf_su3_4d.yaml [--steps 10 50]
                                     [--factors 0 0.8 1 1.2] [--n 256] [--batch 64]
                                     [--set KEY=VALUE ...]

For each protocol length ``--steps`` and each factor ``f`` of ``--factors``: the stochastic
flow of the configuration with its stout layers set to ``f`` first-order steps (every
parameter ``p = f``; ``f = 0`` is plain annealing, ``f = 1`` what ``sampler.init:
first_order`` builds; ``hpcflow.flows.smearing.first_order_rho``), no training, draws ``--n``
trajectories of the sampling stream: mean and variance of the work, ESS, trajectories per
second. Prints a table and writes ``perf/out/first-order-<config>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import draw_trajectories, machine, print_table, write_json  # noqa: E402

from hpcflow import build_action, build_model, load_config  # noqa: E402
from hpcflow.estimators import ess  # noqa: E402


def at_factor(cfg, factor: float):
    """The sampler of ``cfg`` (an snf with stout layers) with every parameter set to
    ``factor`` (units of each layer's first-order step)."""
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(factor)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--steps", type=int, nargs="+", help="protocol lengths (default: the "
                   "configuration's)")
    p.add_argument("--factors", type=float, nargs="+", default=[0.0, 1.0])
    p.add_argument("--n", type=int, default=256, help="trajectories per point")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", help="JSON path (default perf/out/first-order-<config>.json)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = load_config(args.config, args.overrides)
    if base.sampler.kind != "snf" or base.sampler.layer != "stout":
        raise SystemExit(f"{args.config}: needs sampler.kind snf with sampler.layer stout")
    rows = []
    for steps in args.steps or [base.sampler.steps]:
        cfg = load_config(args.config, [*args.overrides, f"sampler.steps={steps}"])
        for factor in args.factors:
            lw, seconds, _ = draw_trajectories(at_factor(cfg, factor), build_action(cfg),
                                               args.n, args.batch, seed=cfg.train.seed)
            rows.append({"steps": steps, "factor": factor, "n": args.n,
                         "mean_work": float(-lw.mean()), "var_work": float(lw.var()),
                         "ess": ess(lw), "rate": args.n / seconds})
            print_table(rows[-1:], [("steps", "steps", "d"), ("factor", "x rho_1", ".2f"),
                                    ("n", "n", "d"), ("mean_work", "<W>", ".4f"),
                                    ("var_work", "var W", ".4f"), ("ess", "ESS", ".3f"),
                                    ("rate", "traj/s", ".1f")])
    print(f"{base.lattice.group} {'x'.join(map(str, base.lattice.shape))} beta "
          f"{base.sampler.beta_start} -> {base.action.beta}, {args.threads} threads")
    print_table(rows, [("steps", "steps", "d"), ("factor", "x rho_1", ".2f"), ("n", "n", "d"),
                       ("mean_work", "<W>", ".4f"), ("var_work", "var W", ".4f"),
                       ("ess", "ESS", ".3f"), ("rate", "traj/s", ".1f")])
    out = args.out or f"perf/out/first-order-{Path(args.config).stem}.json"
    write_json(out, {"machine": machine(), "config": args.config, "overrides": args.overrides,
                     "threads": args.threads, "rows": rows})
    print(out)


if __name__ == "__main__":
    main()
