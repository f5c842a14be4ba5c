"""``hpcflow train --profile``: a few training steps under ``torch.profiler``.

Writes a Chrome trace per rank (``RUN_DIR/profile/trace-rNNNNN.json``, open it in Perfetto or
chrome://tracing) and prints the operations that took the most time on rank 0. Nothing is
checkpointed: the run directory's training state is untouched.

The table is computed from the exported trace, not with ``prof.key_averages()``: for a real
flow (some 10^5 operator events per step) the profiler's own Python-side event tree takes many
minutes to build, while one pass over the trace's events takes seconds.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["profile_training", "summarize_trace", "format_summary"]

# trace event categories that are host operators and device kernels
_HOST = ("cpu_op",)
_DEVICE = ("kernel", "gpu_memcpy", "gpu_memset")


def summarize_trace(events: list[dict], steps: int = 1) -> list[dict]:
    """Per-operator totals of complete (``"ph": "X"``) trace events, per step.

    Self time = an event's duration minus that of the events nested directly inside it on the
    same thread (time-ordered stack). Host operators (``cpu_op``) and device kernels are
    summarized separately (``kind`` ``"cpu"`` / ``"device"``).

    Returns rows ``{"name", "kind", "calls", "self_ms", "total_ms"}`` (per step), sorted by
    self time, largest first.
    """
    rows: dict[tuple[str, str], dict] = defaultdict(
        lambda: {"calls": 0, "self_us": 0.0, "total_us": 0.0})
    by_thread: dict[tuple, list[dict]] = defaultdict(list)
    for e in events:
        if e.get("ph") != "X" or "dur" not in e:
            continue
        cat = e.get("cat")
        kind = "cpu" if cat in _HOST else "device" if cat in _DEVICE else None
        if kind is not None:
            by_thread[(kind, e.get("pid"), e.get("tid"))].append(e)
    for (kind, _, _), evs in by_thread.items():
        evs.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[list] = []          # [end time, row key, self time so far]
        for e in evs:
            while stack and stack[-1][0] <= e["ts"]:
                _close(rows, stack.pop())
            if stack:
                stack[-1][2] -= e["dur"]
            key = (e["name"], kind)
            rows[key]["calls"] += 1
            rows[key]["total_us"] += e["dur"]
            stack.append([e["ts"] + e["dur"], key, float(e["dur"])])
        while stack:
            _close(rows, stack.pop())
    out = [{"name": name, "kind": kind, "calls": r["calls"] / steps,
            "self_ms": r["self_us"] / steps / 1e3, "total_ms": r["total_us"] / steps / 1e3}
           for (name, kind), r in rows.items()]
    return sorted(out, key=lambda r: -r["self_ms"])


def _close(rows, entry) -> None:
    _, key, self_us = entry
    rows[key]["self_us"] += self_us


def format_summary(rows: list[dict], top: int = 25) -> str:
    """A text table of the ``top`` rows of each kind of :func:`summarize_trace`."""
    lines = []
    for kind, title in (("cpu", "Self CPU"), ("device", "Self device")):
        sel = [r for r in rows if r["kind"] == kind][:top]
        if not sel:
            continue
        total = sum(r["self_ms"] for r in rows if r["kind"] == kind)
        width = max(len(r["name"]) for r in sel)
        width = min(max(width, 10), 70)
        lines.append(f"{'operator':<{width}}  {'calls/step':>10}  {title + ' ms/step':>18}  "
                     f"{'%':>5}  {'total ms/step':>13}")
        for r in sel:
            share = 100.0 * r["self_ms"] / total if total > 0 else 0.0
            lines.append(f"{r['name'][:width]:<{width}}  {r['calls']:>10.0f}  "
                         f"{r['self_ms']:>18.3f}  {share:>5.1f}  {r['total_ms']:>13.3f}")
        ncalls = sum(r["calls"] for r in rows if r["kind"] == kind)
        lines.append(f"{kind} operators per step: {ncalls:.0f}; self time per step "
                     f"{total:.1f} ms (profiler overhead included)")
        lines.append("")
    return "\n".join(lines)


def profile_training(trainer, out_dir: str | Path, *, warmup: int = 2, steps: int = 5,
                     top: int = 25) -> Path:
    """Profile ``steps`` training steps after ``warmup`` unprofiled ones; see module docstring."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if trainer.comm.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for _ in range(warmup):
        trainer.train_step()
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(steps):
            with record_function("hpcflow.train_step"):
                trainer.train_step()
    path = out_dir / f"trace-r{trainer.comm.rank:05d}.json"
    prof.export_chrome_trace(str(path))
    if trainer.comm.is_root:
        with open(path) as fh:
            events = json.load(fh).get("traceEvents", [])
        print(format_summary(summarize_trace(events, steps), top))
        print(f"hpcflow train --profile: {steps} steps after {warmup} warm-up steps; "
              f"trace written to {path}", flush=True)
    return path
