"""Benchmark the loop walker: all plaquettes and the Wilson action.

Cases (issue "Foundation"): SU(3) on 8^4, batch 16, complex64; U(1) on 64x64, batch 256.
Each case runs in its own processes: one for the times, one for the CPU peak memory, started
with ``MALLOC_MMAP_THRESHOLD_`` low so that every tensor is its own mapping and the resident-set
high-water mark follows the live tensors. Prints a table and writes JSON.

    python perf/bench_loops.py [--device cpu|cuda] [--repeats 10] [--out perf/out/bench_loops.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, peak_memory_mb, print_table, time_it, write_json  # noqa: E402

CASES = [
    {"group": "SU3", "shape": [8, 8, 8, 8], "batch": 16, "dtype": "complex64"},
    {"group": "U1", "shape": [64, 64], "batch": 256, "dtype": "complex64"},
    {"group": "U1", "shape": [64, 64], "batch": 256, "dtype": "complex128"},
    {"group": "SU2", "shape": [8, 8, 8, 8], "batch": 16, "dtype": "complex64"},
]


def run_case(case: dict, device: str, repeats: int, memory: bool) -> list[dict]:
    from hpcflow.lattice.action import GaugeAction, loop_density
    from hpcflow.lattice.groups import get_group

    dev = torch.device(device)
    group = get_group(case["group"])
    dtype = getattr(torch, case["dtype"])
    shape = case["shape"]
    gen = torch.Generator(device=dev).manual_seed(0)
    links = group.random((case["batch"], len(shape), *shape), generator=gen, dtype=dtype,
                         device=dev)
    action = GaugeAction(group, beta=1.0)
    ops = {
        "all plaquettes": lambda: loop_density(links, group, "plaquette"),
        "Wilson action": lambda: action(links),
    }
    out = []
    with torch.no_grad():
        for name, fn in ops.items():
            if memory:
                mem, how = peak_memory_mb(fn, dev)
                out.append({"peak_extra_mb": mem, "memory_method": how})
            else:
                t = time_it(fn, dev, repeats=repeats)
                out.append({**case, "op": name, "device": device,
                            "input_mb": links.numel() * links.element_size() / 2**20,
                            "configs_per_s": case["batch"] / (t["median_ms"] / 1e3), **t})
    return out


def _child(cmd: list[str], env) -> list[dict]:
    res = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default="perf/out/bench_loops.json")
    p.add_argument("--case", type=int, help=argparse.SUPPRESS)  # child process: one case
    p.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case is not None:
        print(json.dumps(run_case(CASES[args.case], args.device, args.repeats, args.memory)))
        return
    rows = []
    for i in range(len(CASES)):
        child = [sys.executable, __file__, "--case", str(i), "--device", args.device,
                 "--repeats", str(args.repeats)]
        times = _child(child, os.environ)
        mems = _child(child + ["--memory"], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        rows += [{**t, **m} for t, m in zip(times, mems, strict=True)]
    for r in rows:
        r["case"] = f"{r['group']} {'x'.join(map(str, r['shape']))} B={r['batch']} {r['dtype']}"
    print_table(rows, [("case", "case", ""), ("op", "op", ""),
                       ("median_ms", "median ms", ".1f"), ("min_ms", "min ms", ".1f"),
                       ("configs_per_s", "configs/s", ".0f"), ("input_mb", "links MB", ".1f"),
                       ("peak_extra_mb", "peak extra MB", ".1f")])
    path = write_json(args.out, {"benchmark": "loops", "machine": machine(), "results": rows})
    print(f"\nwritten {path}")


if __name__ == "__main__":
    main()
