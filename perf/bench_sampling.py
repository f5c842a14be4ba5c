"""Sampling throughput: proposals per second with and without HDF5 writing, 1 and 2 ranks.

For each configuration, every rank generates its share of the proposals in batches (flow
forward pass without autograd, action, independence Metropolis), once without writing and once
through ``hpcflow.app.sample.run_sampling`` (shards + master file, fsync after each batch).
The flow is a randomized untrained one of the configuration: the cost does not depend on the
training. The script re-launches itself under ``mpiexec -n 2`` for the 2-rank figures.

    python perf/bench_sampling.py [--configs ...] [--n 4096] [--batch 512] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

DEFAULT = ["configs/u1_2d.yaml", "configs/u1_3d.yaml", "configs/u1_4d.yaml"]


def generate_only(model, action, mine: range, batch: int) -> None:
    """Everything ``run_sampling`` does for this rank's proposals, except the writing."""
    from hpcflow.app.sample import metropolis_uniforms
    from hpcflow.estimators import independence_metropolis
    from hpcflow.flows.prior import STREAM_SAMPLE

    state_lw, state_idx = None, -1
    for lo in range(0, len(mine), batch):
        idx = mine[lo: lo + batch]
        with torch.no_grad():
            u, logdet = model(model.prior(idx, seed=0, stream=STREAM_SAMPLE))
            lw = (-action(u).double() + logdet.double()).cpu().numpy()
        _, _, state_lw, last = independence_metropolis(
            lw, metropolis_uniforms(0, idx), state_log_weight=state_lw,
            state_index=state_idx - lo)
        state_idx = int(last) + lo
        u.cpu().numpy()  # the copy the writer makes too


def worker(configs: list[str], n: int, batch: int, device: str = "cpu") -> list[dict]:
    from hpcflow import build_action, build_model, load_config
    from hpcflow.app.context import RunContext
    from hpcflow.app.sample import run_sampling
    from hpcflow.distributed import make_communicator

    rows = []
    for path in configs:
        cfg = load_config(path, [f"distributed.device={device}"])
        comm = make_communicator(cfg.distributed.backend, cfg.distributed.device,
                                 cfg.distributed.threads)
        ctx = RunContext(comm, terminal=False)
        torch.manual_seed(0)
        model = build_model(cfg).to(comm.device)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        model.checkpoint_step = 0
        action = build_action(cfg)
        mine = ctx.share(n)

        generate_only(model, action, mine, batch)  # warm-up
        comm.barrier()
        t0 = time.perf_counter()
        generate_only(model, action, mine, batch)
        comm.barrier()
        t_gen = time.perf_counter() - t0
        out = Path(tempfile.mkdtemp(prefix="hpcflow-bench-")) if comm.is_root else None
        out = comm.broadcast_object(str(out) if out else None)
        comm.barrier()
        t0 = time.perf_counter()
        run_sampling(model, cfg, out, ctx, n_total=n, batch_size=batch)
        t_write = time.perf_counter() - t0
        if comm.is_root:
            shutil.rmtree(out, ignore_errors=True)
            rows.append({"config": path, "lattice": "x".join(map(str, cfg.lattice.shape)),
                         "group": cfg.lattice.group, "ranks": comm.size, "n": n,
                         "device": str(comm.device),
                         "batch": batch, "gen_s": t_gen, "write_s": t_write,
                         "gen_per_s": n / t_gen, "write_per_s": n / t_write,
                         "overhead": t_write / t_gen - 1.0})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT)
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "xpu", "auto"])
    p.add_argument("--out", default="perf/out/bench_sampling.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        rows = worker(args.configs, args.n, args.batch, args.device)
        if rows:
            Path(args.worker).write_text(json.dumps(rows))
        return
    rows = []
    mpiexec = str(Path(sys.executable).parent / "mpiexec")
    for ranks in args.ranks:
        with tempfile.TemporaryDirectory() as tmp:
            result = Path(tmp) / "rows.json"
            cmd = [sys.executable, "-m", "mpi4py", __file__, "--worker", str(result),
                   "--n", str(args.n), "--batch", str(args.batch), "--device", args.device,
                   "--configs", *args.configs]
            if ranks > 1:
                cmd = [mpiexec if os.path.exists(mpiexec) else "mpiexec", "-n", str(ranks),
                       *cmd]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
            subprocess.run(cmd, check=True, env=env)
            rows += json.loads(result.read_text())
    print_table(rows, [("config", "config", ""), ("ranks", "ranks", "d"), ("n", "n", "d"),
                       ("gen_per_s", "generate/s", ".0f"), ("write_per_s", "with HDF5/s", ".0f"),
                       ("overhead", "write overhead", ".1%")])
    worst = max(r["overhead"] for r in rows)
    print(f"\nlargest writing overhead: {worst:.1%} (target: at most 10%)")
    path = write_json(args.out, {"benchmark": "sampling", "machine": machine(), "results": rows,
                                 "max_overhead": float(np.max([r["overhead"] for r in rows]))})
    print(f"written {path}")


if __name__ == "__main__":
    main()
