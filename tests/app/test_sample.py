"""hpcflow sample / analyze: resumable shards under MPI, kill -9 safety, missing shards."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcflow import load_config
from hpcflow.app.train import Trainer
from hpcflow.io.samples import open_samples
from tests.helpers import clean_env, mpiexec, run_ctx

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "lattice.shape=[4, 4]", "lattice.group=U1", "action.beta=1.0",
    "model.layers=8", "model.net.hidden=[4]", "model.bins=4", "model.dtype=float64",
    "train.batch_size=16", "train.steps=10", "train.eval_every=0", "train.plot=false",
    "train.lr=0.01",
]
DATASETS = ("links", "log_q", "action", "log_weight", "mcmc_state", "accepted")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    Trainer(load_config(None, TINY), run_ctx(path)).run()
    return path


def sample_cmd(run_dir, out, n, ranks=1, batch=8):
    cmd = [sys.executable, "-m", "mpi4py", "-m", "hpcflow", "sample", str(run_dir), "--n",
           str(n), "--batch-size", str(batch), "--out", str(out)]
    return [mpiexec(), "-n", str(ranks), *cmd] if ranks > 1 else cmd


def run_sample(*args, **kwargs):
    subprocess.run(sample_cmd(*args, **kwargs), check=True, env=clean_env(), timeout=300)


def read_all(path):
    with open_samples(path) as s:
        data = {k: np.asarray(getattr(s, k)) if k != "links" else s.links[:] for k in DATASETS}
        return data, s.attrs


def test_samples_are_consistent_and_extend_exactly(run_dir, tmp_path):
    run_sample(run_dir, tmp_path / "a", 40)
    run_sample(run_dir, tmp_path / "b", 24)
    run_sample(run_dir, tmp_path / "b", 40)
    a, attrs = read_all(tmp_path / "a" / "samples.h5")
    b, _ = read_all(tmp_path / "b" / "samples.h5")
    for k in DATASETS:
        assert np.array_equal(a[k], b[k]), k
    assert attrs["n_written"] == 40 and attrs["checkpoint_step"] == 10
    assert np.allclose(a["log_weight"], -a["action"] - a["log_q"])
    # the chain: state i is a proposal <= i that was accepted, and it changes only on accepts
    st = a["mcmc_state"]
    assert np.all(st <= np.arange(40)) and np.all(a["accepted"][st])
    assert np.array_equal(st[1:] != st[:-1], a["accepted"][1:])


def test_two_ranks_kill_minus_nine_then_resume(run_dir, tmp_path):
    """Kill -9 of `mpiexec -n 2 hpcflow sample` at random moments, then the same command:
    files open, counts agree, nothing duplicated or lost, equal to an uninterrupted run."""
    n = 3000
    ref = tmp_path / "ref"
    run_sample(run_dir, ref, n, ranks=2)
    out = tmp_path / "killed"
    rng = np.random.default_rng(12345)
    kills = 0
    for delay in rng.uniform(0.0, 1.0, size=3):
        proc = subprocess.Popen(sample_cmd(run_dir, out, n, ranks=2), env=clean_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 60  # wait until both ranks write, then a random moment
        while time.time() < deadline and proc.poll() is None and not all(
                (out / f"shard-r0000{r}.h5").exists() for r in (0, 1)):
            time.sleep(0.01)
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and both ranks at once
            kills += 1
        proc.wait(timeout=60)
        for shard in sorted(out.glob("shard-r*.h5")):  # every file opens, counts agree
            with _open_when_released(shard) as f:
                nw = int(f.attrs["n_written"])
                assert all(f[k].shape[0] >= nw for k in DATASETS)
    assert kills >= 2, "the sampler finished too fast to be interrupted"
    res = subprocess.run(sample_cmd(run_dir, out, n, ranks=2), env=clean_env(), capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    a, _ = read_all(ref / "samples.h5")
    b, attrs = read_all(out / "samples.h5")
    assert attrs["n_written"] == n
    for k in DATASETS:
        assert np.array_equal(a[k], b[k]), k


def _open_when_released(path, timeout=20.0):
    """Open a shard once the killed ranks are gone (their HDF5 file locks go with them)."""
    deadline = time.time() + timeout
    while True:
        try:
            return h5py.File(path, "r")
        except BlockingIOError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def test_missing_or_truncated_shard_is_reported(run_dir, tmp_path):
    out = tmp_path / "s"
    run_sample(run_dir, out, 30, ranks=2)
    shard = out / "shard-r00001.h5"
    moved = tmp_path / "elsewhere.h5"
    shard.rename(moved)
    res = subprocess.run([sys.executable, "-m", "hpcflow", "analyze", str(out / "samples.h5")],
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    assert res.returncode == 2 and "shard-r00001.h5" in res.stderr
    assert "Traceback" not in res.stderr
    data = moved.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    res = subprocess.run([sys.executable, "-m", "hpcflow", "analyze", str(out / "samples.h5")],
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    assert res.returncode == 2 and "shard-r00001.h5" in res.stderr


def test_analyze_reports_estimates_and_exact_values(run_dir, tmp_path):
    out = tmp_path / "s"
    run_sample(run_dir, out, 200, batch=50)
    res = subprocess.run([sys.executable, "-m", "hpcflow", "analyze", str(out), "--json"],
                         capture_output=True, text=True, env=clean_env(), timeout=120)
    assert res.returncode == 0, res.stderr
    import json

    result = json.loads(res.stdout)
    assert result["n"] == 200 and result["kind"] == "flow"
    plaq = result["observables"]["plaquette"]
    assert plaq["chain"]["error"] > 0 and plaq["reweighted"]["error"] > 0
    assert result["exact"]["plaquette"] == pytest.approx(0.4463, abs=0.01)  # 2D U(1), beta=1
    assert 0 < result["ess"] <= 1 and 0 <= result["acceptance"]["value"] <= 1
