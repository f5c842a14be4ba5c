"""Real multi-process tests: ``mpiexec -n 2`` runs tests/dist/mpi_worker.py for each backend.

Properties: allreduce_mean_ equals the mean computed in one process and is bitwise identical
on both ranks, and sums that ride along come back summed; the replica check passes identical
ranks and repairs a drifted one; allgather concatenates unequal lengths in rank order;
broadcasts of tensors, objects, a model and optimizer state; reductions keep their types; an
exception on one rank ends the whole job quickly (no hang); abort_all ends it with the chosen
status.

The Horovod cases run in the normal suite and FAIL (never skip) when Horovod is missing:
``bash launch/install_horovod.sh .venv`` builds it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from .mpi_worker import rank_inputs

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("mpi_worker.py")
BACKENDS = ["mpi", "torch", "horovod"]
_LAUNCHER_PREFIXES = ("PMI_", "MPI_LOCAL", "HYDRA_", "OMPI_", "PALS_", "SLURM_")


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.exists() else shutil.which("mpiexec")
    if not found:
        pytest.fail("no mpiexec: `pip install mpich` (make install does) or load an MPI module")
    return found


def require_backend(backend: str) -> None:
    if backend == "horovod" and importlib.util.find_spec("horovod") is None:
        pytest.fail("horovod is not installed; build it with `bash launch/install_horovod.sh "
                    ".venv` (about 8 minutes on 2 cores). This test fails rather than skips.")


def run_mpi(args: list[str], *, runner: bool = True, timeout: float = 90.0):
    """``mpiexec -n 2 python [-m mpi4py] mpi_worker.py ARGS``; returns (rc, stderr, seconds).

    ``runner=False`` starts plain ``python`` so that only hpcflow's own abort hook stands
    between an exception and a hang."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    cmd = [mpiexec(), "-n", "2", sys.executable, *(["-m", "mpi4py"] if runner else []),
           str(WORKER), *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(args)}: no result after {timeout} s (hang)\n{out}\n{err}")
    return proc.returncode, out + err, time.monotonic() - t0


_results: dict[str, list[dict]] = {}


def results(backend: str, tmp_path_factory) -> list[dict]:
    """Both ranks' outputs of the ``collectives`` scenario, run once per backend."""
    require_backend(backend)
    if backend not in _results:
        out = tmp_path_factory.mktemp(f"collectives-{backend}")
        rc, log, _ = run_mpi([backend, "collectives", str(out)])
        assert rc == 0, f"worker failed under mpiexec ({backend}):\n{log}"
        _results[backend] = [torch.load(out / f"rank{r}.pt", weights_only=False)
                             for r in range(2)]
    return _results[backend]


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (torch.equal would call -0.0 and 0.0 equal)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().view(-1).view(torch.uint8),
                       b.contiguous().view(-1).view(torch.uint8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_and_layout(backend, tmp_path_factory):
    r0, r1 = results(backend, tmp_path_factory)
    assert [r0["rank"], r1["rank"]] == [0, 1]
    assert r0["size"] == r1["size"] == 2
    assert [r0["local_rank"], r1["local_rank"]] == [0, 1]
    assert r0["local_size"] == 2 and r0["device"] == "cpu" and r0["backend"] == backend


def test_auto_under_mpiexec_is_mpi(tmp_path_factory):
    r0, r1 = results("mpi", tmp_path_factory)
    assert r0["auto"] == r1["auto"] == "mpi"
    assert r1["launch"].launcher == "mpich" and r1["launch"].rank == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_allreduce_mean_matches_one_process_and_is_identical(backend, tmp_path_factory):
    r0, r1 = results(backend, tmp_path_factory)
    x0, x1 = rank_inputs(0), rank_inputs(1)
    # Mixed list: the buffer is float64, so even the float32 tensor is averaged in float64.
    for a, b, got0, got1 in zip(x0["mean"], x1["mean"], r0["mean"], r1["mean"], strict=True):
        ref = ((a.to(torch.complex128 if a.is_complex() else torch.float64)
                + b.to(torch.complex128 if b.is_complex() else torch.float64)) / 2).to(a.dtype)
        assert bits_equal(got0, got1), "ranks disagree"
        assert bits_equal(got0, ref)
        assert got0.shape == a.shape
    assert bits_equal(r0["mean"][0], torch.stack([x0["mean"][0], x1["mean"][0]]).mean(0))
    for a, b, got0, got1 in zip(x0["mean32"], x1["mean32"], r0["mean32"], r1["mean32"],
                                strict=True):
        assert bits_equal(got0, got1) and bits_equal(got0, (a + b) / 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sums_ride_with_the_mean(backend, tmp_path_factory):
    """``allreduce_mean_(tensors, sums=s)``: the float64 sums come back summed (not divided),
    and they make the buffer float64, so the float32 means are exact float64 means rounded."""
    r0, r1 = results(backend, tmp_path_factory)
    x0, x1 = rank_inputs(0), rank_inputs(1)
    (s0, m0), (s1, m1) = r0["with_sums"], r1["with_sums"]
    assert bits_equal(s0, s1) and bits_equal(s0, x0["sums"] + x1["sums"])
    for a, b, got0, got1 in zip(x0["mean32"], x1["mean32"], m0, m1, strict=True):
        wide = torch.complex128 if a.is_complex() else torch.float64
        ref = ((a.to(wide) + b.to(wide)) / 2).to(a.dtype)
        assert bits_equal(got0, got1) and bits_equal(got0, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_allgather_unequal_lengths_in_rank_order(backend, tmp_path_factory):
    r0, r1 = results(backend, tmp_path_factory)
    x0, x1 = rank_inputs(0), rank_inputs(1)
    for a, b, got0, got1 in zip(x0["gather"], x1["gather"], r0["gather"], r1["gather"],
                                strict=True):
        ref = torch.cat([a.reshape(-1, *a.shape[1:]) if a.dim() else a.reshape(1),
                         b.reshape(-1, *b.shape[1:]) if b.dim() else b.reshape(1)])
        assert bits_equal(got0, ref) and bits_equal(got1, ref)
    assert r0["gather"][0].shape == (3, 3)  # 1 + 2 rows


@pytest.mark.parametrize("backend", BACKENDS)
def test_broadcast_tensors_and_objects(backend, tmp_path_factory):
    r0, r1 = results(backend, tmp_path_factory)
    src = rank_inputs(1)["bcast"]  # root=1
    for r in (r0, r1):
        assert all(bits_equal(g, s) for g, s in zip(r["bcast"], src, strict=True))
        obj = r["object"]
        assert obj["step"] == 7 and obj["name"] == "rank0" and obj["nested"] == [0, {}]
        assert torch.equal(obj["rng"], torch.arange(4))


@pytest.mark.parametrize("backend", BACKENDS)
def test_reductions_keep_types(backend, tmp_path_factory):
    for r in results(backend, tmp_path_factory):
        assert r["sum_int"] == 3 and isinstance(r["sum_int"], int)
        assert r["sum_float"] == 0.75 and isinstance(r["sum_float"], float)
        assert isinstance(r["sum_np"], np.ndarray) and r["sum_np"].tolist() == [1.0, 3.0]
        assert r["sum_bool"].tolist() == [2, 1]
        assert r["max_tensor"].tolist() == [1.0, 0.0]
        assert r["max_np_int"] == 10 and isinstance(r["max_np_int"], np.integer)


@pytest.mark.parametrize("backend", BACKENDS)
def test_model_gradients_and_optimizer_state(backend, tmp_path_factory):
    r0, r1 = results(backend, tmp_path_factory)
    # Rebuild what the worker did: rank 0's initial weights, each rank's batch.
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    grads = []
    for r in (0, 1):
        torch.manual_seed(r)
        torch.nn.Linear(3, 2)  # same draws as the worker before its batch
        x = torch.randn(4, 3, dtype=torch.float64)
        model.zero_grad()
        model(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for i, (g0, g1) in enumerate(zip(*grads, strict=True)):
        assert bits_equal(r0["grads"][i], r1["grads"][i])
        assert torch.allclose(r0["grads"][i], (g0 + g1) / 2, rtol=1e-14, atol=0)
    for key in r0["model"]:
        assert bits_equal(r0["model"][key], r1["model"][key])
    assert bits_equal(r0["opt_exp_avg"], r1["opt_exp_avg"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_replica_check_finds_and_repairs_a_drifted_rank(backend, tmp_path_factory):
    """Identical replicas pass; after rank 1 drifts by one ulp both ranks see the mismatch,
    and rank 1 ends with rank 0's parameters, bit for bit."""
    r0, r1 = results(backend, tmp_path_factory)
    assert r0["replicas_agree"] and r1["replicas_agree"]
    assert not r0["replicas_drifted"] and not r1["replicas_drifted"]
    assert r0["repairs"] == r1["repairs"] == 1
    for key in r0["model"]:
        assert bits_equal(r1["repaired_model"][key], r0["model"][key])
        assert bits_equal(r0["repaired_model"][key], r0["model"][key])


@pytest.mark.parametrize("backend", BACKENDS)
def test_exception_on_one_rank_stops_the_job(backend, tmp_path):
    require_backend(backend)
    rc, log, seconds = run_mpi([backend, "fail", str(tmp_path)], runner=False, timeout=60)
    assert rc != 0
    assert seconds < 30, f"took {seconds:.1f} s to stop"
    assert "boom on rank 1" in log and "rank 1 of 2; aborting all ranks" in log


def test_abort_all_ends_every_rank_with_its_status(tmp_path):
    rc, log, seconds = run_mpi(["mpi", "abort_all", str(tmp_path)], runner=False, timeout=60)
    assert rc == 3 and seconds < 30
    assert "[rank 1] hpcflow train: error: checkpoint unreadable on rank 1" in log
