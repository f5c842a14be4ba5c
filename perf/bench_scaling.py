"""Data-parallel scaling: step time and allreduce share at 1 and 2 ranks, weak and strong,
for each backend; plus an alpha-beta model of the ring allreduce extrapolating weak-scaling
efficiency to 1024 Aurora nodes (12288 ranks).

Weak scaling keeps the batch per rank fixed (global batch grows with the ranks); strong scaling
keeps the global batch fixed. One torch thread per rank. Efficiency: weak ``t(1) / t(P)``,
strong ``t(1) / (P t(P))``.

    python perf/bench_scaling.py [--configs configs/u1_2d.yaml configs/u1_4d.yaml]
        [--batch-per-rank 32] [--steps 8] [--backends mpi torch horovod]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, print_table, write_json  # noqa: E402

DEFAULT = ["configs/u1_2d.yaml", "configs/u1_4d.yaml"]

# Assumptions of the extrapolation (stated in the output): Aurora node = 6 GPUs x 2 tiles =
# 12 ranks, 8 Slingshot-11 NICs of 25 GB/s each per node; a ring allreduce over P ranks moves
# 2 (P-1)/P of the buffer through each rank and needs 2 (P-1) latency-bound steps. A
# hierarchical (node-local then inter-node) allreduce, which oneCCL uses, replaces 2 (P-1) by
# about 2 (12 - 1) + 2 (nodes - 1) latency steps.
AURORA = {"ranks_per_node": 12, "node_bandwidth_GBps": 200.0, "alpha_s": 10e-6}


def worker(config: str, backend: str, batch: int, steps: int, out: Path) -> None:
    from hpcflow import load_config
    from hpcflow.app.context import RunContext
    from hpcflow.app.train import Trainer
    from hpcflow.distributed import make_communicator

    cfg = load_config(config, [f"distributed.backend={backend}", f"train.batch_size={batch}",
                               "train.eval_every=0", "train.plot=false", "distributed.threads=1"])
    comm = make_communicator(cfg.distributed.backend, cfg.distributed.device,
                             cfg.distributed.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = comm.broadcast_object(tmp if comm.is_root else None)
        trainer = Trainer(cfg, RunContext(comm, run_dir, terminal=False))
        reduce_time = [0.0]
        original = comm.allreduce_gradients_

        def timed(*args, **kwargs):  # the step's one collective (gradients, log weights, votes)
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            reduce_time[0] += time.perf_counter() - t0
            return out

        comm.allreduce_gradients_ = timed
        for _ in range(2):  # warm-up
            trainer.train_step()
        comm.barrier()
        reduce_time[0] = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        comm.barrier()
        step_s = (time.perf_counter() - t0) / steps
        n_params = sum(p.numel() for p in trainer.params)
        elem = trainer.params[0].element_size()
        comm.barrier()
    times = comm.allgather(torch.tensor([step_s, reduce_time[0] / steps], dtype=torch.float64))
    if comm.is_root:
        t = times.reshape(comm.size, 2).max(0).values.tolist()
        out.write_text(json.dumps({"step_s": t[0], "allreduce_s": t[1], "params": n_params,
                                   "bytes_per_param": elem}))
    comm.close()


def run(config, backend, ranks, batch, steps) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        cmd = [sys.executable, "-m", "mpi4py", __file__, "--worker", config, backend, str(batch),
               str(steps), str(out)]
        if ranks > 1:
            mpiexec = Path(sys.executable).parent / "mpiexec"
            cmd = [str(mpiexec) if mpiexec.exists() else "mpiexec", "-n", str(ranks), *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def ring_allreduce_s(n_bytes: float, ranks: int, *, alpha: float, bandwidth: float,
                     ranks_per_node: int) -> float:
    """Hierarchical ring allreduce time: latency steps inside and across nodes, bandwidth term
    ``2 (P-1)/P n / B_rank`` with the node bandwidth shared by its ranks."""
    if ranks <= 1:
        return 0.0
    nodes = max(1, ranks // ranks_per_node)
    latency_steps = 2 * (min(ranks, ranks_per_node) - 1) + 2 * (nodes - 1)
    per_rank_bw = bandwidth / min(ranks, ranks_per_node)
    return latency_steps * alpha + 2 * (ranks - 1) / ranks * n_bytes / per_rank_bw


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        config, backend, batch, steps, out = sys.argv[2:7]
        worker(config, backend, int(batch), int(steps), Path(out))
        return
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=DEFAULT)
    p.add_argument("--backends", nargs="+", default=["mpi", "torch", "horovod"])
    p.add_argument("--batch-per-rank", type=int, default=32)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", default="perf/out/bench_scaling.json")
    args = p.parse_args()
    rows = []
    for config in args.configs:
        b = args.batch_per_rank
        one = run(config, "none", 1, b, args.steps)
        one_strong = run(config, "none", 1, 2 * b, args.steps)
        for backend in args.backends:
            try:
                weak = run(config, backend, 2, 2 * b, args.steps)
            except subprocess.CalledProcessError:
                print(f"{backend}: not available, skipped", file=sys.stderr)
                continue
            rows.append({"config": config, "backend": backend, "params": one["params"],
                         "batch_per_rank": b, "t1_s": one["step_s"], "t2_s": weak["step_s"],
                         "allreduce_s": weak["allreduce_s"],
                         "allreduce_share": weak["allreduce_s"] / weak["step_s"],
                         "weak_eff": one["step_s"] / weak["step_s"],
                         "strong_eff": one_strong["step_s"] / (2 * weak["step_s"])})
    print_table(rows, [("config", "config", ""), ("backend", "backend", ""),
                       ("params", "params", "d"), ("t1_s", "1 rank s/step", ".3f"),
                       ("t2_s", "2 ranks s/step", ".3f"), ("allreduce_s", "allreduce s", ".4f"),
                       ("allreduce_share", "share", ".1%"), ("weak_eff", "weak eff.", ".3f"),
                       ("strong_eff", "strong eff.", ".3f")])
    model = []
    for r in rows:
        if r["backend"] != "mpi":
            continue
        n_bytes = r["params"] * 4  # float32 gradients in production
        for compute_s, label in ((r["t1_s"], "CPU step measured here"),
                                 (0.05, "assumed 50 ms accelerator step")):
            for nodes in (1, 16, 128, 1024):
                ranks = nodes * AURORA["ranks_per_node"]
                t_ar = ring_allreduce_s(n_bytes, ranks, alpha=AURORA["alpha_s"],
                                        bandwidth=AURORA["node_bandwidth_GBps"] * 1e9,
                                        ranks_per_node=AURORA["ranks_per_node"])
                model.append({"config": r["config"], "compute": label, "nodes": nodes,
                              "ranks": ranks, "allreduce_ms": 1e3 * t_ar,
                              "weak_eff": compute_s / (compute_s + t_ar)})
    print("\nAlpha-beta model of weak scaling on Aurora (assumptions in the JSON):")
    print_table(model, [("config", "config", ""), ("compute", "compute per step", ""),
                        ("nodes", "nodes", "d"), ("ranks", "ranks", "d"),
                        ("allreduce_ms", "allreduce ms", ".3f"), ("weak_eff", "weak eff.", ".4f")])
    assumptions = dict(AURORA, gradient_dtype="float32", algorithm="hierarchical ring",
                       overlap="none (allreduce after the whole backward)",
                       compute="the per-step compute does not change with the rank count")
    path = write_json(args.out, {"benchmark": "scaling", "machine": machine(), "results": rows,
                                 "model": model, "assumptions": assumptions})
    print(f"\nwritten {path}")
    if rows:
        print(f"smallest 2-rank weak-scaling efficiency: {min(r['weak_eff'] for r in rows):.3f}"
              f" (target 0.9); model at 1024 nodes: "
              f"{min((m['weak_eff'] for m in model if m['nodes'] == 1024), default=math.nan):.4f}")


if __name__ == "__main__":
    main()
