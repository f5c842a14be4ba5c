"""Per-rank logs: one of two ranks dies of an exception mid-training; its message is found in
the job's output (what rank 0's terminal shows under mpiexec/srun), in rank 0's log, in
``logs/first-error.log`` and in that rank's own log, with its traceback."""

import subprocess
import sys

from tests.helpers import clean_env, mpiexec

WORKER = """\
import sys
from hpcflow import cli
from hpcflow.app.train import Trainer

original = Trainer.train_step


def failing_step(self):
    if self.comm.rank == 1 and self.step == 2:
        raise RuntimeError("rank one ran into a wall at step 2")
    return original(self)


Trainer.train_step = failing_step
sys.exit(cli.main(sys.argv[1:]))
"""
TINY = [
    "lattice.shape=[4, 4]", "lattice.group=U1", "action.beta=1.0", "model.layers=8",
    "model.net.hidden=[4]",
    "model.bins=4", "train.batch_size=4", "train.steps=50", "train.eval_every=0",
    "train.plot=false", "distributed.backend=mpi", "distributed.device=cpu",
]


def test_error_of_one_rank_reaches_rank_0_and_its_log(tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    run = tmp_path / "run"
    sets = [a for kv in TINY for a in ("--set", kv)]
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(worker), "train",
           str(tmp_path / "none.yaml"), "-o", str(run), *sets]
    (tmp_path / "none.yaml").write_text("{}\n")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                       env={**clean_env(), "OMP_NUM_THREADS": "1"})
    out = p.stdout + p.stderr
    message = "rank one ran into a wall at step 2"
    assert p.returncode != 0
    assert message in out  # the job's output
    rank0 = (run / "logs" / "rank-00000.log").read_text()
    assert f"ERROR from rank 1: uncaught exception: RuntimeError: {message}" in rank0
    rank1 = (run / "logs" / "rank-00001.log").read_text()
    assert f"rank 1/2 train ERROR uncaught exception: RuntimeError: {message}" in rank1
    assert "Traceback" in rank1 and "failing_step" in rank1
    first = (run / "logs" / "first-error.log").read_text()
    assert first.count("\n") == 1 and "rank 1/2" in first and message in first
