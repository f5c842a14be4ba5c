"""Benchmark the gradient all-reduce of each communicator backend.

For flat float32 and float64 buffers of 1e3..1e7 elements, at 2 ranks (``--ranks``), times

- ``collective``: the bare sum over ranks of the buffer (what the library itself costs);
- ``allreduce_mean_``: the call the trainer makes every step, i.e. the collective plus packing,
  the division by the number of ranks, and the cross-rank consistency check (a hash of the
  result and a 2-element MAX-allreduce, see ``hpcflow/dist/comm.py``).

Each rank takes the median over repeats, the table shows the slowest rank. ``algbw`` is buffer
bytes / time. The script starts itself under ``mpiexec`` once per backend (mpi, torch, and
horovod when importable), prints a table and writes JSON.

    python perf/bench_allreduce.py [--ranks 2] [--backends mpi,torch,horovod]
        [--device cpu|cuda] [--repeats 10] [--out perf/out/bench_allreduce.json]

On one machine all ranks share its memory bus and cores, so these numbers measure software
overheads (packing, staging, library latency), not a network. ``--device cuda`` needs one GPU
per rank for torch/horovod (NCCL refuses two ranks on one GPU); the mpi backend stages GPU
buffers through host memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import machine, print_table, write_json  # noqa: E402

SIZES = [10**3, 10**4, 10**5, 10**6, 10**7]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--backends", default="mpi,torch,horovod",
                   help="comma-separated; horovod is left out when not importable")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "xpu"])
    p.add_argument("--sizes", default=",".join(str(s) for s in SIZES))
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=str(HERE / "out" / "bench_allreduce.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)  # backend, inside mpiexec
    p.add_argument("--rows-out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ inside mpiexec
def worker(args: argparse.Namespace) -> int:
    from hpcflow.distributed import make_communicator

    comm = make_communicator(args.worker, args.device, threads=1)
    rows = []
    for dtype in (torch.float32, torch.float64):
        for n in (int(float(s)) for s in args.sizes.split(",")):
            buf = torch.randn(n, dtype=dtype, device=comm.device)
            # Fewer repeats for the big buffers: a 1e7 float64 sum moves 80 MB per rank.
            repeats = args.repeats if n < 10**6 else max(3, args.repeats // 3)
            wire = buf.to(comm._wire)
            timed = {
                "collective": lambda wire=wire: comm._allreduce_(wire, "sum"),
                "allreduce_mean_": lambda buf=buf: comm.allreduce_mean_([buf]),
            }
            for op, fn in timed.items():
                for _ in range(2):
                    fn()
                times = []
                for _ in range(repeats):
                    comm.barrier()
                    _sync(comm.device)
                    t0 = time.perf_counter()
                    fn()
                    _sync(comm.device)
                    times.append(time.perf_counter() - t0)
                slowest = comm.allreduce_max(statistics.median(times))
                rows.append({
                    "backend": comm.backend, "op": op, "dtype": str(dtype).removeprefix("torch."),
                    "n": n, "mb": n * buf.element_size() / 2**20, "ranks": comm.size,
                    "device": str(comm.device.type), "median_ms": 1e3 * slowest,
                    "algbw_gb_s": n * buf.element_size() / slowest / 1e9, "repeats": repeats,
                    "library": getattr(comm, "library", comm.backend),
                })
    if comm.is_root and args.rows_out:
        Path(args.rows_out).write_text(json.dumps(rows))
    comm.close()
    return 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


# --------------------------------------------------------------------------------- the driver
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    mpiexec = Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if not mpiexec:
        sys.exit("bench_allreduce: no mpiexec (pip install mpi4py mpich)")
    backends = [b for b in args.backends.split(",") if b]
    if "horovod" in backends and importlib.util.find_spec("horovod") is None:
        print("horovod not importable: skipped (bash launch/install_horovod.sh .venv)")
        backends.remove("horovod")
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            out = Path(tmp) / f"{backend}.json"
            cmd = [mpiexec, "-n", str(args.ranks), sys.executable, "-m", "mpi4py",
                   str(Path(__file__).resolve()), "--worker", backend, "--rows-out", str(out),
                   "--device", args.device, "--sizes", args.sizes,
                   "--repeats", str(args.repeats)]
            print(f"running {backend} at {args.ranks} ranks ...", flush=True)
            done = subprocess.run(cmd, env=env, timeout=1200)
            if done.returncode != 0 or not out.exists():
                print(f"{backend}: failed (exit status {done.returncode})", file=sys.stderr)
                continue
            rows += json.loads(out.read_text())
    if not rows:
        return 1
    print_table(rows, [("backend", "backend", ""), ("library", "library", ""),
                       ("op", "op", ""), ("dtype", "dtype", ""), ("n", "elements", ".0e"),
                       ("mb", "MB", ".3f"), ("median_ms", "median ms", ".3f"),
                       ("algbw_gb_s", "algbw GB/s", ".3f")])
    path = write_json(args.out, {"benchmark": "bench_allreduce", "machine": machine(),
                                 "ranks": args.ranks, "device": args.device, "results": rows})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
