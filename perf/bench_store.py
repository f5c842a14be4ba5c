"""What storing costs: bytes per proposal and proposals per second for each store policy.

One process, the annealing sampler of a configuration (its cost does not depend on training),
drawn through ``hpcflow.app.sample.run_sampling`` (measurement on the rank, independence
Metropolis, shard + samples.h5, fsync after each batch) with ``sample.store`` all, chain
(``--thin``) and none; bytes per proposal are the shards' sizes on disk over the proposals.
A draw without any writing gives the floor.

    python perf/bench_store.py [--config configs/snf_su3_4d.yaml] [--n 256] [--batch 32]
        [--steps 5] [--thin 10] [--out perf/out/bench_store.json]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch  # noqa: E402
from common import draw_trajectories, machine, print_table, write_json  # noqa: E402

from hpcflow.app.build import build_action, build_model  # noqa: E402
from hpcflow.app.config import load_config  # noqa: E402
from hpcflow.app.context import RunContext  # noqa: E402
from hpcflow.app.sample import run_sampling  # noqa: E402
from hpcflow.distributed import NoneComm  # noqa: E402


def one_policy(cfg_path: str, store: str, args) -> dict:
    """Sample ``args.n`` proposals with ``store`` into a temporary folder: sizes and rate."""
    cfg = load_config(cfg_path, [f"sampler.steps={args.steps}", "sampler.kind=annealing",
                                 f"sample.store={store}", f"sample.thin={args.thin}"])
    model = build_model(cfg)
    model.checkpoint_step = 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    try:
        ctx = RunContext(NoneComm(device="cpu"), tmp, terminal=False)
        t0 = time.perf_counter()
        res = run_sampling(model, cfg, tmp, ctx, n_total=args.n, batch_size=args.batch)
        seconds = time.perf_counter() - t0
        shard_bytes = sum(p.stat().st_size for p in tmp.glob("shard-r*.h5"))
        master_bytes = (tmp / "samples.h5").stat().st_size
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"store": store, "thin": res["thin"] if store == "chain" else "-",
            "bytes_per_proposal": shard_bytes / args.n, "master_bytes": master_bytes,
            "proposals_per_s": args.n / seconds, "seconds": seconds}


def no_writing(cfg_path: str, args) -> dict:
    """The same proposals drawn without measuring or writing."""
    cfg = load_config(cfg_path, [f"sampler.steps={args.steps}", "sampler.kind=annealing"])
    model = build_model(cfg)
    _, seconds, _ = draw_trajectories(model, build_action(cfg), args.n, args.batch,
                                      seed=cfg.train.seed)
    return {"store": "(no file)", "thin": "-", "bytes_per_proposal": 0.0, "master_bytes": 0,
            "proposals_per_s": args.n / seconds, "seconds": seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/snf_su3_4d.yaml")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5, help="protocol steps per trajectory")
    p.add_argument("--thin", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="perf/out/bench_store.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [no_writing(args.config, args)]
    rows += [one_policy(args.config, store, args) for store in ("all", "chain", "none")]
    print_table(rows, [("store", "store", ""), ("thin", "thin", ""),
                       ("bytes_per_proposal", "bytes/proposal", ".0f"),
                       ("proposals_per_s", "proposals/s", ".2f"), ("seconds", "s", ".1f")])
    out = write_json(args.out, {"machine": machine(), "config": args.config,
                                "args": vars(args), "rows": rows})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
