"""Benchmark the HMC reference chain: trajectories and force evaluations per second.

Cases: U(1) 2D 16x16, SU(3) 4D 4^4 and 8^4, each with a batch of 1 and 16 chains, complex128,
Omelyan integrator with 10 steps (21 force evaluations, 20 link exponentials, one
re-projection and two actions per trajectory). ``traj/s`` counts batched trajectories (every
chain advances once); ``chain-traj/s`` multiplies by the batch; ``force/s`` is one batched
force evaluation (:func:`hpcflow.updates.hmc.force`). Prints a table and writes JSON.

    python perf/bench_hmc.py [--device cpu|cuda] [--threads N] [--repeats 3] [--quick]
                             [--out perf/out/bench_hmc.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, time_it, write_json  # noqa: E402

CASES = [
    {"group": "U1", "shape": [16, 16], "beta": 2.0, "batch": 1},
    {"group": "U1", "shape": [16, 16], "beta": 2.0, "batch": 16},
    {"group": "SU3", "shape": [4, 4, 4, 4], "beta": 6.0, "batch": 1},
    {"group": "SU3", "shape": [4, 4, 4, 4], "beta": 6.0, "batch": 16},
    {"group": "SU3", "shape": [8, 8, 8, 8], "beta": 6.0, "batch": 1},
    {"group": "SU3", "shape": [8, 8, 8, 8], "beta": 6.0, "batch": 16},
]
N_STEPS = 10


def run_case(case: dict, device: str, repeats: int) -> dict:
    from hpcflow.lattice.action import GaugeAction
    from hpcflow.lattice.groups import get_group
    from hpcflow.updates.hmc import HMC, force

    dev = torch.device(device)
    group = get_group(case["group"])
    action = GaugeAction(group, case["beta"])
    hmc = HMC(group, action, case["shape"], batch_size=case["batch"], n_steps=N_STEPS,
              step_size=0.05, integrator="omelyan", start="hot", seed=0, device=dev)
    n_numbers = case["batch"] * hmc.links[0].numel()
    big = n_numbers > 1_000_000  # SU(3) 8^4 x 16: fewer repeats
    reps, warm = (max(1, repeats // 2), 1) if big else (repeats, 1)
    with torch.no_grad():
        t_force = time_it(lambda: force(hmc.links, action), dev, repeats=3 * reps, warmup=warm)
        evals0 = hmc.n_force_evals
        t_traj = time_it(hmc.trajectory, dev, repeats=reps, warmup=warm)
        per_traj = (hmc.n_force_evals - evals0) // (reps + warm)
    traj_s = 1e3 / t_traj["median_ms"]
    return {
        **case,
        "case": f"{case['group']} {'x'.join(map(str, case['shape']))} B={case['batch']}",
        "device": device,
        "n_steps": N_STEPS,
        "force_evals_per_traj": per_traj,
        "traj_ms": t_traj["median_ms"],
        "traj_per_s": traj_s,
        "chain_traj_per_s": traj_s * case["batch"],
        "force_ms": t_force["median_ms"],
        "force_per_s": 1e3 / t_force["median_ms"],
        "force_share": per_traj * t_force["median_ms"] / t_traj["median_ms"],
        "timing_traj": t_traj,
        "timing_force": t_force,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--quick", action="store_true", help="skip the 8^4 cases")
    p.add_argument("--out", default="perf/out/bench_hmc.json")
    args = p.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    cases = [c for c in CASES if not (args.quick and c["shape"][0] == 8)]
    rows = []
    for case in cases:
        rows.append(run_case(case, args.device, args.repeats))
        r = rows[-1]
        print(f"  {r['case']}: {r['traj_ms']:.1f} ms/trajectory", flush=True)
    print()
    print_table(rows, [("case", "case", ""), ("traj_ms", "ms/traj", ".1f"),
                       ("traj_per_s", "traj/s", ".3g"), ("chain_traj_per_s", "chain-traj/s", ".3g"),
                       ("force_ms", "ms/force", ".2f"), ("force_per_s", "force/s", ".3g"),
                       ("force_share", "force share", ".2f")])
    path = write_json(args.out, {"benchmark": "hmc", "machine": machine(),
                                 "integrator": "omelyan", "dtype": "complex128",
                                 "results": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
