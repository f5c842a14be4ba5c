"""``hpcflow train --dry-run`` (figures, nothing written) and the walltime counted from the
job's start (``HPCFLOW_JOB_START``, set by the batch scripts of launch/)."""

import json
import subprocess
import sys
import time

from hpcflow.app.config import load_config
from hpcflow.app.train import JOB_START_ENV, Trainer, format_dry_run, job_elapsed
from tests.helpers import TINY_U1, clean_env, run_ctx


def test_dry_run_prints_figures_and_writes_nothing(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("lattice: {shape: [4, 4], group: U1}\naction: {beta: 1.0}\n"
                      "model: {layers: 8, net: {hidden: [4]}, bins: 4}\n"
                      "train: {batch_size: 16, micro_batch_size: 4, eval_batch_size: 32}\n")
    cmd = [sys.executable, "-m", "hpcflow", "train", str(config), "--dry-run", "--json",
           "--ranks", "2", "--set", "distributed.device=cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**clean_env(), "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert (r["global_batch"], r["ranks"], r["local_batch"], r["micro_batch"]) == (16, 2, 8, 4)
    assert r["micro_batches_per_step"] == 2 and r["parameters"] > 0
    assert r["per_rank_bytes"] >= r["base_bytes"] > 0 and r["per_sample_bytes"] >= 0
    assert r["step_s"] > 0 and r["steps_per_hour"] > 0
    assert sorted(q.name for q in tmp_path.iterdir()) == ["tiny.yaml"]  # nothing written
    lines = "\n".join(format_dry_run(r))
    assert "peak memory per rank (estimate)" in lines and "steps per hour" in lines
    bad = subprocess.run(cmd[:-2] + ["--ranks", "3"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path, env=clean_env())
    assert bad.returncode == 2 and "does not split evenly over 3 ranks" in bad.stderr


def test_job_elapsed():
    assert job_elapsed({}) == 0.0
    assert job_elapsed({JOB_START_ENV: "nonsense"}) == 0.0
    assert job_elapsed({JOB_START_ENV: "1000"}, now=1100.0) == 100.0
    assert job_elapsed({JOB_START_ENV: "2000"}, now=1100.0) == 0.0  # clock skew: ignored


def test_walltime_counts_from_the_job_start(tmp_path, monkeypatch):
    """A job that started 100 s ago with train.walltime 103 s has 3 s left, less than the
    trainer's own margin: it stops after one step, with its checkpoint."""
    monkeypatch.setenv(JOB_START_ENV, str(time.time() - 100))
    cfg = load_config(None, [*TINY_U1, "train.walltime=103"])
    result = Trainer(cfg, run_ctx(tmp_path)).run()
    assert (result.reason, result.step) == ("walltime", 1)
    assert (tmp_path / "checkpoints" / "step-00000001.pt").exists()
