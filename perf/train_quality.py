"""Training quality within a time budget: train a configuration from scratch with
``train.walltime`` as the budget, then measure ESS, log Z and acceptance on a large fresh batch.

    python perf/train_quality.py --config configs/u1_2d.yaml --minutes 10 [--eval 4096]

Prints a table, writes JSON (with the whole ESS curve) and a PNG of the training curves to
``perf/out/quality-<config>/``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

from hpcflow import load_config  # noqa: E402
from hpcflow.app.context import RunContext  # noqa: E402
from hpcflow.app.metrics import read_metrics  # noqa: E402
from hpcflow.app.train import prepare_training  # noqa: E402
from hpcflow.distributed import NoneComm  # noqa: E402
from hpcflow.lattice import exact  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--eval", type=int, default=4096, help="fresh samples for the final ESS")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out-dir")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    name = Path(args.config).stem
    out = Path(args.out_dir or f"perf/out/quality-{name}")
    shutil.rmtree(out, ignore_errors=True)
    cfg = load_config(args.config, args.overrides + [
        f"train.walltime={args.minutes * 60}", f"train.eval_batch_size={args.eval}"])
    t0 = time.perf_counter()
    comm = NoneComm(device=cfg.distributed.device, threads=args.threads)  # --set distributed.device
    # with train.pretrain, the first stage on the smaller lattice counts in the ten minutes
    trainer, started = prepare_training(cfg, RunContext(comm, out / "run"))
    if trainer is None:
        raise SystemExit("the walltime ran out in the first stage (train.pretrain)")
    result = trainer.run(started=started)
    train_s = time.perf_counter() - t0
    final = trainer.evaluate()
    exact_lz = exact.exact_log_z(cfg.lattice.group, cfg.lattice.shape, cfg.action.beta)
    row = {"config": args.config, "lattice": "x".join(map(str, cfg.lattice.shape)),
           "group": cfg.lattice.group, "beta": cfg.action.beta, "steps": result.step,
           "stopped": result.reason, "train_s": train_s, "eval_n": args.eval,
           "ess": final["eval_ess"], "acceptance": final["eval_acceptance"],
           "log_z": final["eval_log_z"], "exact_log_z": exact_lz}
    print_table([row], [("config", "config", ""), ("lattice", "lattice", ""),
                        ("steps", "steps", "d"), ("train_s", "train s", ".0f"),
                        ("ess", f"ESS ({args.eval})", ".3f"), ("acceptance", "accept", ".3f"),
                        ("log_z", "log Z", ".4f")])
    curve = [{k: r.get(k) for k in ("step", "time", "loss", "ess", "eval_ess")}
             for r in read_metrics(out / "run" / "metrics.jsonl")]
    path = write_json(out / "quality.json", {"benchmark": "train_quality", "machine": machine(),
                                             "config": cfg.to_dict(), "result": row,
                                             "curve": curve})
    print(f"\nwritten {path} and {out / 'run' / 'training.png'}")


if __name__ == "__main__":
    main()
