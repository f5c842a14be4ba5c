"""Benchmark: 4D periodic convolutions for the context networks of the flows.

Compares, for 4D shapes typical of the flows (forward, forward+backward, peak memory):

- ``ours``: ``hpcflow.nn.ConvNd(4, ...)``, the whole kernel in ONE dense 3D convolution to
  ``k0 * C_out`` channels with L0 folded into the batch, then shifted sums along L0;
- ``per_kernel_slice``: L0 folded into the batch, ``k0`` separate ``nn.Conv3d(circular)`` calls
  (one per kernel slice), each output rolled along L0 and summed;
- ``slice_loop``: frame by frame, ``k0 * L0`` calls of ``nn.Conv3d(circular)`` on 3D slices, the
  construction of the public conv4d repositories (Boyda, Lattice 2021, "Convolutional layer in
  4D" lists them);
- ``cp_rR``: ``hpcflow.nn.CPConvNd`` at ranks 4, 8, 16 ("Factorized convolutions"), and
  ``tucker_r8`` (``TuckerConvNd``) for reference.

Timing: after warm-up, every variant runs once per round, rounds repeated ``--repeats`` times
(interleaved, so load from other processes hits all variants alike); medians are reported.
"fwd" is a forward under ``torch.no_grad`` (sampling); "fwd+bwd" a forward with autograd plus the
backward of a fixed random cotangent (training). Peak memory: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the process RSS high-water mark during one
forward+backward minus the RSS before it (the mark is reset through ``/proc/self/clear_refs``;
``resource.getrusage(...).ru_maxrss`` where that is not possible), each variant in a fresh
subprocess, i.e. memory beyond the input and the parameters. The three dense variants do the
same arithmetic; their rate (GFLOP/s of forward+backward, 2 per multiply-add of the dense
kernel) is printed next to that of a large float32 GEMM at the same thread count: where the
baselines already run at GEMM speed, no implementation can be many times faster than them.

Usage: ``python perf/bench_conv.py [--device cpu] [--repeats 15] [--threads N] [--out FILE]``.
Prints a markdown table and writes JSON (default ``perf/out/bench_conv.json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hpcflow.nn import ConvNd, CPConvNd, TuckerConvNd  # noqa: E402

# (label, batch, lattice, C_in, C_out, k)
SHAPES = [
    ("flow layer 16->16", 8, (8, 8, 8, 8), 16, 16, 3),
    ("SU(3) 4D default context 24->32", 4, (8, 8, 8, 8), 24, 32, 3),
    # configs/su3_4d.yaml: 4^4 lattice, train.batch_size 64, model.net.hidden [32, 32]
    ("su3_4d.yaml hidden layer 32->32", 64, (4, 4, 4, 4), 32, 32, 3),
    # configs/u1_4d.yaml with model.net.conv = full: 4^4 lattice, batch 32, hidden [16, 16]
    ("u1_4d.yaml full conv 16->16", 32, (4, 4, 4, 4), 16, 16, 3),
]
DENSE = ("ours", "per_kernel_slice", "slice_loop")  # same arithmetic: the full 4D kernel
VARIANTS = ["ours", "per_kernel_slice", "slice_loop", "cp_r4", "cp_r8", "cp_r16", "tucker_r8"]


class PerKernelSliceConv4d(nn.Module):
    """L0 folded into the batch; one Conv3d per kernel slice i < k0; roll along L0; sum."""

    def __init__(self, c_in: int, c_out: int, k: int, **factory) -> None:
        super().__init__()
        self.k = k
        self.convs = nn.ModuleList(
            nn.Conv3d(
                c_in, c_out, k, padding=k // 2, padding_mode="circular", bias=i == 0, **factory
            )
            for i in range(k)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, l0, *rest = x.shape
        xf = x.transpose(1, 2).reshape(b * l0, c, *rest)
        out = None
        for i, conv in enumerate(self.convs):
            y = torch.roll(conv(xf).view(b, l0, -1, *rest), self.k // 2 - i, 1)
            out = y if out is None else out + y
        return out.transpose(1, 2)


class SliceLoopConv4d(PerKernelSliceConv4d):
    """Frame by frame: output slice n = sum_i Conv3d_i(x[:, :, n + i - k0//2]); k0 * L0 calls."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        l0 = x.shape[2]
        frames = []
        for n in range(l0):
            acc = None
            for i, conv in enumerate(self.convs):
                y = conv(x[:, :, (n + i - self.k // 2) % l0])
                acc = y if acc is None else acc + y
            frames.append(acc)
        return torch.stack(frames, 2)


def build(variant: str, c_in: int, c_out: int, k: int, device: str) -> nn.Module:
    factory = {"device": device}
    if variant == "ours":
        return ConvNd(4, c_in, c_out, k, **factory)
    if variant == "per_kernel_slice":
        return PerKernelSliceConv4d(c_in, c_out, k, **factory)
    if variant == "slice_loop":
        return SliceLoopConv4d(c_in, c_out, k, **factory)
    if variant.startswith("cp_r"):
        return CPConvNd(4, c_in, c_out, k, rank=int(variant[4:]), **factory)
    if variant.startswith("tucker_r"):
        return TuckerConvNd(4, c_in, c_out, k, rank=int(variant[8:]), **factory)
    raise ValueError(f"unknown variant {variant!r}")


@torch.no_grad()
def share_weights(ours: ConvNd, baseline: PerKernelSliceConv4d) -> None:
    """Give a baseline the kernel of ``ours`` (slice i of the first axis to conv i)."""
    for i, conv in enumerate(baseline.convs):
        conv.weight.copy_(ours.weight[:, :, i])
    baseline.convs[0].bias.copy_(ours.bias)


def check_baselines(device: str) -> float:
    """The baselines compute the same function as ours (small float64 case)."""
    torch.manual_seed(0)
    ours = ConvNd(4, 3, 2, 3, device=device, dtype=torch.float64)
    x = torch.randn(2, 3, 5, 4, 3, 6, device=device, dtype=torch.float64)
    err = 0.0
    for cls in (PerKernelSliceConv4d, SliceLoopConv4d):
        base = cls(3, 2, 3, device=device, dtype=torch.float64)
        share_weights(ours, base)
        err = max(err, (base(x) - ours(x)).abs().max().item())
    return err


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def inputs(shape_index: int, device: str, seed: int = 0):
    _, batch, lattice, c_in, c_out, _ = SHAPES[shape_index]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, c_in, *lattice, generator=gen).to(device).requires_grad_()
    cotangent = torch.randn(batch, c_out, *lattice, generator=gen).to(device)
    return x, cotangent


def time_once(module: nn.Module, x: torch.Tensor, cotangent: torch.Tensor, device: str):
    """(forward under no_grad, forward+backward) wall times in seconds."""
    sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        module(x)
    sync(device)
    t1 = time.perf_counter()
    module(x).backward(cotangent)
    sync(device)
    t2 = time.perf_counter()
    module.zero_grad(set_to_none=True)
    x.grad = None
    return t1 - t0, t2 - t1


def dense_gflop(batch: int, lattice, c_in: int, c_out: int, k: int) -> float:
    """Floating-point work (GFLOP, 2 per multiply-add) of one forward of a dense 4D kernel;
    forward+backward (input and weight gradients) is three times that."""
    return 2e-9 * batch * math.prod(lattice) * k ** len(lattice) * c_in * c_out


def gemm_gflops(device: str, n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-multiply rate (GFLOP/s) at the current thread count: a reference
    for the rates of the dense convolutions."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2e-9 * n ** 3 / min(times)


def worker_memory(variant: str, shape_index: int, device: str) -> dict:
    """Peak memory of one forward+backward, measured in this (fresh) process."""
    _, _, _, c_in, c_out, k = SHAPES[shape_index]
    module = build(variant, c_in, c_out, k, device)
    x, cotangent = inputs(shape_index, device)
    torch.randn(1 << 16).sum()  # start the thread pool before the baseline
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        module(x).backward(cotangent)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        return {"peak_mb": peak / 2**20, "method": "cuda"}
    try:  # reset the RSS high-water mark (Linux), so import-time peaks do not hide ours
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
        module(x).backward(cotangent)
        return {"peak_mb": (_status_kib("VmHWM") - base) / 1024, "method": "VmHWM"}
    except OSError:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        module(x).backward(cotangent)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        return {"peak_mb": (peak - base) / 1024, "method": "ru_maxrss"}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def measure_memory(variant: str, shape_index: int, args) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--shape-index",
        str(shape_index),
        "--device",
        args.device,
        "--threads",
        str(args.threads),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--out", default="perf/out/bench_conv.json")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--shape-index", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.worker:
        print(json.dumps(worker_memory(args.worker, args.shape_index, args.device)))
        return

    variants = args.variants.split(",")
    err = check_baselines(args.device)
    print(f"baselines vs ours, max |diff| (float64): {err:.1e}")
    peak = gemm_gflops(args.device)
    print(f"float32 GEMM 2048^3 at {args.threads} thread(s): {peak:.0f} GFLOP/s")
    results = []
    methods = set()
    for si, (label, batch, lattice, c_in, c_out, k) in enumerate(SHAPES):
        torch.manual_seed(0)
        modules = {v: build(v, c_in, c_out, k, args.device) for v in variants}
        x, cotangent = inputs(si, args.device)
        fwd = {v: [] for v in variants}
        both = {v: [] for v in variants}
        for rep in range(args.warmup + args.repeats):
            for v, m in modules.items():
                tf, tb = time_once(m, x, cotangent, args.device)
                if rep >= args.warmup:
                    fwd[v].append(tf)
                    both[v].append(tb)
        for v in variants:
            results.append(
                {
                    "variant": v,
                    "shape": label,
                    "batch": batch,
                    "lattice": list(lattice),
                    "c_in": c_in,
                    "c_out": c_out,
                    "k": k,
                    "fwd_ms": 1e3 * statistics.median(fwd[v]),
                    "fwd_bwd_ms": 1e3 * statistics.median(both[v]),
                    "fwd_bwd_ms_min": 1e3 * min(both[v]),
                }
            )
            if v in DENSE:
                work = 3 * dense_gflop(batch, lattice, c_in, c_out, k)
                results[-1]["fwd_bwd_gflops"] = work / statistics.median(both[v])
            mem = measure_memory(v, si, args)
            results[-1]["peak_mb"] = mem["peak_mb"]
            methods.add(mem["method"])

    for r in results:
        ours = next(q for q in results if q["shape"] == r["shape"] and q["variant"] == "ours")
        r["speedup_vs_ours"] = ours["fwd_bwd_ms"] / r["fwd_bwd_ms"]
    mem = {"cuda": "CUDA allocator", "VmHWM": "RSS growth", "ru_maxrss": "RSS growth"}
    mem = "/".join(sorted({mem[m] for m in methods}))
    print(f"\n| variant | shape | fwd ms | fwd+bwd ms | peak MB ({mem}) | speed-up vs ours "
          f"| fwd+bwd GFLOP/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        shape = f"{r['shape']}: B={r['batch']}, {'x'.join(map(str, r['lattice']))}, k={r['k']}"
        rate = f"{r['fwd_bwd_gflops']:.0f}" if "fwd_bwd_gflops" in r else "-"
        print(
            f"| {r['variant']} | {shape} | {r['fwd_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
            f"{r['peak_mb']:.0f} | {r['speedup_vs_ours']:.2f}x | {rate} |"
        )

    targets = {}
    for label, *_ in SHAPES:
        t = {r["variant"]: r["fwd_bwd_ms"] for r in results if r["shape"] == label}
        entry = {}
        if {"ours", "per_kernel_slice"} <= t.keys():
            entry["ours_vs_per_kernel_slice"] = t["per_kernel_slice"] / t["ours"]
        if {"ours", "slice_loop"} <= t.keys():
            entry["ours_vs_slice_loop"] = t["slice_loop"] / t["ours"]
        if {"ours", "cp_r8"} <= t.keys():
            entry["cp_r8_vs_ours"] = t["ours"] / t["cp_r8"]
        targets[label] = entry
        print(f"{label}: " + ", ".join(f"{key} {val:.2f}x" for key, val in entry.items()))
    print("targets: ours_vs_per_kernel_slice >= 1.3, cp_r8_vs_ours >= 3")

    report = {
        "benchmark": "bench_conv",
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "device": args.device,
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "timing": (
            f"median of {args.repeats} interleaved rounds after {args.warmup} warm-up rounds; "
            "fwd under no_grad, fwd+bwd = forward with autograd + backward of a random cotangent"
        ),
        "memory_method": {
            "cuda": "torch.cuda.max_memory_allocated minus allocated before one fwd+bwd",
            "VmHWM": "RSS high-water mark (VmHWM, reset via /proc/self/clear_refs) minus RSS "
            "before one fwd+bwd, fresh subprocess per variant and shape",
            "ru_maxrss": "growth of resource.getrusage(RUSAGE_SELF).ru_maxrss over one fwd+bwd, "
            "fresh subprocess per variant and shape",
        }[methods.pop() if len(methods) == 1 else "VmHWM"],
        "baseline_max_abs_diff_float64": err,
        "gemm_gflops": peak,
        "results": results,
        "targets": targets,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
