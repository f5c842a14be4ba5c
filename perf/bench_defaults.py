"""What a minimal configuration (only a lattice and an action) costs: seconds per training step
at the default global batch, peak memory, and the loss after a few minutes.

    python perf/bench_defaults.py [--minutes 3] [--threads 2] [--cases U1:8,8 SU3:4,4,4,4 ...]

Each case trains in its own process (so that peak memory is its own) with the defaults of
``hpcflow.app.config`` and ``train.walltime`` as the budget. Prints a table, writes
``perf/out/defaults.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

CASES = ["U1:8,8", "SU2:8,8", "SU3:8,8", "U1:4,4,4,4", "SU2:4,4,4,4", "SU3:4,4,4,4"]


def worker(case: str, seconds: float, threads: int) -> dict:
    from hpcflow import load_config
    from hpcflow.app.context import RunContext
    from hpcflow.app.metrics import read_metrics
    from hpcflow.app.train import Trainer
    from hpcflow.distributed import NoneComm

    group, shape = case.split(":")
    cfg = load_config(None, [f"lattice.shape=[{shape}]", f"lattice.group={group}",
                             "action.beta=1.0", f"train.walltime={seconds}", "train.eval_every=0",
                             "train.plot=false", "train.log_every=1"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunContext(NoneComm(device="cpu", threads=threads), tmp,
                                          terminal=False))
        t0 = time.perf_counter()
        trainer.run()
        wall = time.perf_counter() - t0
        rec = read_metrics(Path(tmp) / "metrics.jsonl")
    loss = [r["loss"] for r in rec]
    k = max(1, min(5, len(loss) // 3))
    return {"case": case, "group": group, "lattice": shape.replace(",", "x"),
            "batch": cfg.train.batch_size, "layers": len(trainer.model.layers),
            "params": sum(p.numel() for p in trainer.params), "dtype": cfg.model.dtype,
            "features": ",".join(cfg.model.features), "conv": cfg.model.net.conv,
            "steps": len(rec), "wall_s": wall,
            "s_per_step": sum(r["step_time"] for r in rec[1:]) / max(1, len(rec) - 1),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "loss_first": sum(loss[:k]) / k, "loss_last": sum(loss[-k:]) / k}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", nargs="+", default=CASES)
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.minutes * 60, args.threads)))
        return
    rows = []
    for case in args.cases:
        out = subprocess.run([sys.executable, __file__, "--worker", case, "--minutes",
                              str(args.minutes), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{case}: {rows[-1]['s_per_step']:.2f} s/step", file=sys.stderr, flush=True)
    print_table(rows, [("group", "group", ""), ("lattice", "lattice", ""),
                       ("batch", "batch", "d"), ("layers", "layers", "d"),
                       ("params", "params", "d"), ("features", "features", ""),
                       ("conv", "conv", ""), ("s_per_step", "s/step", ".2f"),
                       ("peak_gb", "peak GB", ".2f"), ("steps", "steps", "d"),
                       ("loss_first", "loss first", ".3f"), ("loss_last", "loss last", ".3f")])
    write_json("perf/out/defaults.json", {"machine": machine(), "threads": args.threads,
                            "minutes": args.minutes, "rows": rows})


if __name__ == "__main__":
    main()
