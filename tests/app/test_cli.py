"""Command line: commands run, bad input gives one message naming the key or file."""

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import clean_env, mpiexec

ROOT = Path(__file__).resolve().parents[2]


def run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "hpcflow", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=clean_env())


def test_info_lists_versions_and_devices():
    res = run("info")
    assert res.returncode == 0, res.stderr
    for word in ("torch", "numpy", "h5py", "mpi4py", "MPI library", "horovod", "CUDA", "XPU"):
        assert word in res.stdout


def test_check_runs_on_demo_config():
    res = run("check", "configs/demo.yaml", "--n", "64")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAILED" not in res.stdout
    assert "0.69" in res.stdout  # exact finite-volume plaquette of 2D U(1) at beta = 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["check", "configs/demo.yaml", "--set", "lattice.shape=[8]"], "lattice.shape"),
        (["check", "configs/demo.yaml", "--set", "lattice.group=SO3"], "lattice.group"),
        (["check", "configs/demo.yaml", "--set", "bogus.key=1"], "bogus"),
        (["check", "configs/demo.yaml", "--set", "action.beta"], "KEY=VALUE"),
        (["check", "does/not/exist.yaml"], "does/not/exist.yaml"),
    ],
)
def test_bad_input_one_clear_message(args, needle):
    res = run(*args)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_unknown_command_is_refused():
    res = run("frobnicate")
    assert res.returncode == 2 and "invalid choice" in res.stderr


def test_check_under_mpiexec_two_ranks():
    """The smoke run spreads its samples over 2 ranks and reports once."""
    res = subprocess.run(
        [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "hpcflow", "check",
         "configs/demo.yaml", "--n", "32"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("hpcflow check:") == 1
    assert "32 Haar configurations on 2 rank(s)" in res.stdout
