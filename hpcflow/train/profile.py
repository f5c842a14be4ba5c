"""``hpcflow train --profile``: a few training steps under ``torch.profiler``.

Writes a Chrome trace per rank (``RUN_DIR/profile/trace-rNNNNN.json``, open it in Perfetto or
chrome://tracing) and prints the operations that took the most time on rank 0. Nothing is
checkpointed: the run directory's training state is untouched.
"""

from __future__ import annotations

from pathlib import Path

from torch.profiler import ProfilerActivity, profile, record_function

__all__ = ["profile_training"]


def profile_training(trainer, out_dir: str | Path, *, warmup: int = 2, steps: int = 5,
                     top: int = 25) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    activities = [ProfilerActivity.CPU]
    if trainer.comm.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for _ in range(warmup):
        trainer.train_step()
    with profile(activities=activities, record_shapes=True, profile_memory=True) as prof:
        for _ in range(steps):
            with record_function("hpcflow.train_step"):
                trainer.train_step()
    path = out_dir / f"trace-r{trainer.comm.rank:05d}.json"
    prof.export_chrome_trace(str(path))
    if trainer.comm.is_root:
        sort = "cuda_time_total" if trainer.comm.device.type == "cuda" else "cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=top))
        print(f"hpcflow train --profile: {steps} steps after {warmup} warm-up steps; "
              f"trace written to {path}")
    return path
