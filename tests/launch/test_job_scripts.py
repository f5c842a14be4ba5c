"""Each system's generated batch script, run end to end on this machine: the site launcher
replaced by the local ``mpiexec -n 2`` (``HPCFLOW_LAUNCHER``) and its module lines skipped
(``HPCFLOW_SKIP_SETUP``). The first run trains until SIGUSR1 reaches the ranks (as Slurm's
``--signal`` sends it to the tasks) and checkpoints; the same script submitted again resumes
and stops by itself at ``train.walltime``, counted from the job's start."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import clean_env, mpiexec

ROOT = Path(__file__).resolve().parents[2]
SUBMIT = ROOT / "launch" / "submit.py"
TINY = """\
lattice: {shape: [4, 4], group: U1}
action: {beta: 1.0}
model: {layers: 8, bins: 4, dtype: float64, net: {hidden: [4]}}
train: {batch_size: 4, steps: 100000, log_every: 1, eval_every: 0, checkpoint_every: 100000,
        plot: false, lr: 0.01}
"""
EXT = {"aurora": "pbs", "polaris": "pbs", "perlmutter": "slurm", "frontier": "slurm"}


def write_script(tmp_path: Path, system: str) -> Path:
    """Submit with fake qsub/sbatch (they only print a job id): the script is written."""
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("qsub", "sbatch"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 1\n")
        (bin_dir / tool).chmod(0o755)
    run_dir = tmp_path / "run"
    env = {**clean_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    # walltime 70 s - margin 45 s: 25 s of the job for training, counted from its start
    cmd = [sys.executable, str(SUBMIT), "--system", system, "--project", "P", "--config",
           str(config), "--run-dir", str(run_dir), "--walltime", "00:01:10", "--margin", "45",
           "--backend", "mpi", "--device", "cpu", "--python", sys.executable,
           "--venv", str(Path(sys.executable).parents[1]), "--queue", "debug"]
    if system == "frontier":
        cmd[cmd.index("debug")] = "batch"
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    return run_dir / f"job-{system}-train.{EXT[system]}"


def start_job(script: Path) -> subprocess.Popen:
    env = {**clean_env(), "HPCFLOW_SKIP_SETUP": "1", "HPCFLOW_LAUNCHER": f"{mpiexec()} -n 2",
           "OMP_NUM_THREADS": "1"}
    env.pop("MASTER_ADDR", None)
    return subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


def ranks_of(job: subprocess.Popen) -> list[psutil.Process]:
    """The Python ranks under the job's launcher."""
    procs = psutil.Process(job.pid).children(recursive=True)
    return [p for p in procs if "hpcflow" in " ".join(p.cmdline()) and "python" in p.name()]


def metric_lines(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def signal_after_steps(job: subprocess.Popen, run_dir: Path, steps: int, timeout: float):
    """SIGUSR1 to every rank once ``steps`` steps are logged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job.poll() is None:
        if len(metric_lines(run_dir)) >= steps:
            for proc in ranks_of(job):
                proc.send_signal(signal.SIGUSR1)
            return
        time.sleep(0.2)
    job.kill()
    pytest.fail(f"the job did not train in time:\n{job.communicate()[0]}")


def steps_of_checkpoints(run_dir: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt"))


@pytest.mark.parametrize("system", sorted(EXT))
def test_script_trains_checkpoints_on_signal_and_resumes(tmp_path, system):
    script = write_script(tmp_path, system)
    run_dir = script.parent
    job = start_job(script)
    try:
        signal_after_steps(job, run_dir, 3, timeout=20)
        out, _ = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 0, out
    assert "stopped at step" in out and "(signal SIGUSR1)" in out, out
    first = steps_of_checkpoints(run_dir)
    assert first and first[-1] >= 3, out
    # The same script again (a chained resubmission): resumes, stops at its walltime.
    t0 = time.monotonic()
    job = start_job(script)
    out, _ = job.communicate(timeout=90)
    assert job.returncode == 0, out
    assert f"resuming from {run_dir / 'checkpoints'}" in out and f"at step {first[-1]}" in out
    assert "(walltime)" in out, out
    assert time.monotonic() - t0 < 25 + 10  # the margin left the job its time to exit
    assert steps_of_checkpoints(run_dir)[-1] > first[-1]
    steps = [r["step"] for r in metric_lines(run_dir)]
    assert steps == list(range(1, len(steps) + 1))  # the step count continues, no gap
    assert (run_dir / "logs" / "rank-00001.log").exists()
