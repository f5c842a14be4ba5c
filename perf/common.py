"""Shared benchmark helpers: timing with warm-up, peak memory, a table and a JSON record."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device: torch.device, *, repeats: int = 10, warmup: int = 2) -> dict:
    """Median and spread of wall times (ms) of ``fn()`` after warm-up calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1e3 * (time.perf_counter() - t0))
    return {
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "max_ms": max(times),
        "repeats": repeats,
    }


def peak_memory_mb(fn, device: torch.device) -> tuple[float, str]:
    """Extra peak memory of one call of ``fn()`` in MB, and how it was measured.

    CUDA: ``max_memory_allocated`` above the memory in use before the call. CPU (Linux): the
    resident-set high-water mark is reset through ``/proc/self/clear_refs``, then the peak
    ``VmHWM`` during the call is compared with ``VmRSS`` before it.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20, "cuda_max_allocated"
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _proc_status_kb("VmRSS")
        fn()
        return (_proc_status_kb("VmHWM") - base) / 1024, "cpu_vmhwm_reset"
    except OSError:  # not Linux: the high-water mark can only grow
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, "cpu_maxrss"


def _proc_status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print ``rows`` with ``columns = [(key, header, format), ...]``."""
    cells = [[format(r[k], f) if f and r.get(k) is not None else str(r.get(k))
              for k, _, f in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h, _) in enumerate(columns)]
    print("  ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def write_json(path: str | Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def draw_trajectories(model, action, indices_n: int, batch: int, *, seed: int, start=None,
                      observable=None):
    """``indices_n`` proposals of the sampling stream in batches of ``batch`` (no gradients):
    ``(log_weight [n] float64, seconds, observable(links) [n] or None)`` as numpy arrays."""
    import numpy as np

    from hpcflow.app.propose import propose
    from hpcflow.flows.prior import STREAM_SAMPLE

    t0 = time.perf_counter()
    lw, obs = [], []
    with torch.no_grad():
        for lo in range(0, indices_n, batch):
            p = propose(model, action, range(lo, min(lo + batch, indices_n)), seed=seed,
                        stream=STREAM_SAMPLE, start=start)
            lw.append(p.log_weight.double().cpu().numpy())
            if observable is not None:
                obs.append(observable(p.links).double().cpu().numpy())
    return (np.concatenate(lw), time.perf_counter() - t0,
            np.concatenate(obs) if obs else None)
