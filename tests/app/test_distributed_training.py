"""Data-parallel training under `mpiexec -n 2`: the numbers of one process, for every backend;
identical parameters on all ranks; a killed rank ends the job, and the run resumes exactly."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hpcflow.app.metrics import read_metrics
from tests.helpers import clean_env, mpiexec

HERE = Path(__file__).resolve().parent
WORKER = HERE / "mpi_train.py"


def run_worker(run_dir, backend, ranks, *extra, timeout=300):
    cmd = [sys.executable, "-m", "mpi4py", str(WORKER), str(run_dir), backend, *extra]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    return subprocess.run(cmd, env=clean_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("single")
    res = run_worker(path, "none", 1)
    assert res.returncode == 0, res.stderr
    return path


def _series(run_dir, key):
    return [r[key] for r in read_metrics(Path(run_dir) / "metrics.jsonl") if key in r]


@pytest.mark.parametrize("backend", ["mpi", "torch", "horovod"])
def test_two_ranks_reproduce_one_process(reference, tmp_path, backend):
    """Loss and ESS of the first 20 steps (and the evaluation ESS) agree to 1e-10 relative
    with one process on the same global batch and seed; parameters are identical on both
    ranks."""
    res = run_worker(tmp_path, backend, 2)
    assert res.returncode == 0, res.stdout + res.stderr
    for key in ("loss", "ess", "eval_ess", "eval_acceptance", "grad_norm"):
        ref, got = _series(reference, key), _series(tmp_path, key)
        assert len(ref) == len(got) > 0, key
        for a, b in zip(ref, got, strict=True):
            assert abs(a - b) <= 1e-10 * max(abs(a), 1e-300), (key, a, b)
    p0 = torch.load(tmp_path / "params-r0.pt", weights_only=True)
    p1 = torch.load(tmp_path / "params-r1.pt", weights_only=True)
    assert p0.keys() == p1.keys() and all(torch.equal(p0[k], p1[k]) for k in p0)
    ref = torch.load(reference / "params-r0.pt", weights_only=True)
    assert all(torch.allclose(p0[k], ref[k], rtol=1e-9, atol=1e-12) for k in p0)


def test_two_ranks_reproduce_one_process_through_a_first_stage(tmp_path):
    """``train.pretrain``: both stages on two ranks give one process's metrics and
    parameters (the first stage's on 4x4, the run's on 8x8 from its flow)."""
    stages = ["lattice.shape=[8, 8]", "train.pretrain={shape: [4, 4], steps: 6}",
              "train.steps=6"]
    for ranks, backend in ((1, "none"), (2, "mpi")):
        res = run_worker(tmp_path / str(ranks), backend, ranks, *stages)
        assert res.returncode == 0, res.stdout + res.stderr
    for run in ("pretrain", ""):
        for key in ("loss", "grad_norm"):
            ref, got = (_series(tmp_path / str(r) / run, key) for r in (1, 2))
            assert len(ref) == len(got) == 6, (run, key)
            assert all(abs(a - b) <= 1e-10 * abs(a) for a, b in zip(ref, got, strict=True))
    p1, p2 = (torch.load(tmp_path / r / "params-r0.pt", weights_only=True) for r in "12")
    assert all(torch.allclose(p1[k], p2[k], rtol=1e-9, atol=1e-12) for k in p1)


def test_killed_rank_ends_job_and_run_resumes(tmp_path):
    """SIGKILL of rank 1 mid-run: the job exits non-zero within 60 s; the same command again
    resumes from the last complete checkpoint and ends with the undisturbed parameters."""
    steps = ["train.steps=60"]
    ref = tmp_path / "ref"
    res = run_worker(ref, "mpi", 2, *steps)
    assert res.returncode == 0, res.stderr
    run = tmp_path / "run"
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(WORKER), str(run), "mpi",
           *steps]
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 15:
            break
        time.sleep(0.02)
    os.kill(int((run / "pid-r1").read_text()), signal.SIGKILL)
    t0 = time.time()
    rc = proc.wait(timeout=60)
    assert rc != 0 and time.time() - t0 < 60
    res = run_worker(run, "mpi", 2, *steps)
    assert res.returncode == 0, res.stderr
    a = torch.load(ref / "params-r0.pt", weights_only=True)
    b = torch.load(run / "params-r0.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _series(ref, "loss") == _series(run, "loss")


def test_two_ranks_reproduce_one_process_su3(tmp_path):
    """The same for an SU(3) flow (spectral transforms): 2 ranks give the single-process loss
    and ESS to 1e-10."""
    _one_and_two_ranks_agree(tmp_path, ("lattice.group=SU3", "train.steps=6",
                                         "train.eval_every=3"), ("loss", "ess", "eval_ess"))


def _one_and_two_ranks_agree(tmp_path, extra, keys):
    """Run the worker on 1 process and on 2 MPI ranks; the metrics ``keys`` agree to 1e-10
    relative. Returns the two run directories."""
    one, two = tmp_path / "one", tmp_path / "two"
    res = run_worker(one, "none", 1, *extra)
    assert res.returncode == 0, res.stderr
    res = run_worker(two, "mpi", 2, *extra)
    assert res.returncode == 0, res.stdout + res.stderr
    for key in keys:
        a, b = _series(one, key), _series(two, key)
        assert len(a) == len(b) > 0, key
        assert all(abs(x - y) <= 1e-10 * max(abs(x), 1e-300) for x, y in zip(a, b, strict=True))
    return one, two


def test_two_ranks_reproduce_one_process_path_gradient(tmp_path):
    """Path gradients (inverse pass per step, per-sample inverse errors gathered with the
    weights): 2 ranks give the single-process loss, ESS and gradient norm to 1e-10, and the
    same (round-off sized) inverse errors; the evaluations, of the parameters' moving average
    (``train.ema``), agree too."""
    one, two = _one_and_two_ranks_agree(
        tmp_path, ("train.gradient=path", "train.steps=8", "train.eval_every=4",
                   "train.ema=0.5"),
        ("loss", "ess", "grad_norm", "eval_ess"))
    a, b = _series(one, "inverse_error"), _series(two, "inverse_error")
    assert len(a) == len(b) > 0 and max(a + b) < 1e-9


@pytest.mark.parametrize("backend", ["mpi", "torch"])
def test_signal_to_one_rank_stops_both_after_the_same_step(tmp_path, backend):
    """SIGUSR1 to rank 1 alone: its vote rides in the step's one collective, both ranks stop
    after the same step, checkpoint it, and exit 0 with identical parameters."""
    run = tmp_path / "run"
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", str(WORKER), str(run), backend,
           "train.steps=100000", "train.checkpoint_every=100000", "train.eval_every=0"]
    proc = subprocess.Popen(cmd, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
                break
            time.sleep(0.05)
        os.kill(int((run / "pid-r1").read_text()), signal.SIGUSR1)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    saved = sorted(int(p.stem.split("-")[1]) for p in (run / "checkpoints").glob("step-*.pt"))
    assert saved == [steps[-1]] and steps[-1] >= 3
    p0 = torch.load(run / "params-r0.pt", weights_only=True)
    p1 = torch.load(run / "params-r1.pt", weights_only=True)
    assert all(torch.equal(p0[k], p1[k]) for k in p0)
