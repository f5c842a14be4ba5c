"""Collectives per training step, counted on every backend available here: a plain step makes
ONE (gradients, per-sample log weights and stop votes in one allreduce); a replica check
(``distributed.check_every``), an evaluation or a checkpoint adds one each. Counted both at
the communicator's primitives and at the library underneath (tests/app/mpi_count.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hpcflow.distributed import available_backends
from tests.helpers import clean_env, mpiexec

WORKER = Path(__file__).resolve().with_name("mpi_count.py")
MULTI = [b for b in ("mpi", "torch", "horovod") if available_backends()[b] == "ok"]


def counts(run_dir: Path, backend: str, ranks: int) -> list[dict]:
    cmd = [sys.executable, "-m", "mpi4py", str(WORKER), str(run_dir), backend]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    res = subprocess.run(cmd, env={**clean_env(), "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    return [json.loads((run_dir / f"counts-r{r}.json").read_text()) for r in range(ranks)]


def test_one_process_makes_no_collective(tmp_path):
    (c,) = counts(tmp_path, "none", 1)
    assert c["size"] == 1
    for run in ("plain", "check", "eval"):
        assert len(c[run]) == 6
        assert all(it["method"] == it["wire"] == 0 for it in c[run]), c[run]


@pytest.mark.parametrize("backend", MULTI)
def test_two_ranks_make_at_most_two_collectives_per_step(tmp_path, backend):
    """Plain steps: 1 collective (library calls too); with ``check_every: 1``: 2; a step with
    an evaluation or a checkpoint: 1 more for each. The same on both ranks."""
    for c in counts(tmp_path, backend, 2):
        assert c["size"] == 2
        for run, extra in (("plain", 0), ("check", 1)):
            assert len(c[run]) == 6
            for it in c[run]:
                assert it["method"] == it["wire"] == 1 + extra <= 2, (run, it)
        for it in c["eval"]:
            n = 1 + (it["step"] % 2 == 0) + (it["step"] % 3 == 0)
            assert it["method"] == it["wire"] == n, it
