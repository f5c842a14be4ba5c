"""The non-equilibrium samplers and the heat-bath chain through the command line: 2 ranks
reproduce 1 process, kill -9 then resume changes nothing, a protocol can start from an
equilibrium ensemble, and the reference chain is resumable."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hpcflow.app.metrics import read_metrics
from hpcflow.io.samples import open_samples
from tests.helpers import clean_env, kill_two_ranks_at, mpiexec

ROOT = Path(__file__).resolve().parents[2]
DATASETS = ("links", "log_q", "action", "log_weight", "mcmc_state", "accepted")
ANNEAL = ["lattice.shape=[4,4]", "lattice.group=U1", "action.beta=1.5", "sampler.kind=annealing",
          "sampler.steps=12", "distributed.threads=1"]
SNF = ["lattice.shape=[4,4]", "lattice.group=SU2", "action.beta=1.5", "sampler.kind=snf",
       "sampler.steps=4", "model.net.hidden=[4]", "train.steps=8", "train.batch_size=8",
       "train.eval_every=4", "train.eval_batch_size=16", "train.checkpoint_every=2",
       "train.log_every=1", "train.plot=false", "train.deterministic=true",
       "distributed.threads=1", "train.lr=0.01"]


def hpcflow(*args, ranks=1, overrides=(), **kw):
    cmd = [sys.executable, "-m", "mpi4py", "-m", "hpcflow", *args]
    for item in overrides:
        cmd += ["--set", item]
    if ranks > 1:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    return cmd


def run(cmd, timeout=300):
    res = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=timeout,
                         cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def config_file(tmp_path, items):
    """A YAML file of ``key=value`` overrides (``hpcflow sample CONFIG`` takes no --set)."""
    data = {}
    for item in items:
        key, value = item.split("=", 1)
        node = data
        *head, last = key.split(".")
        for part in head:
            node = node.setdefault(part, {})
        node[last] = value
    path = tmp_path / "cfg.yaml"
    path.write_text("\n".join(_yaml(data)) + "\n")
    return path


def _yaml(data, indent=""):
    for k, v in data.items():
        if isinstance(v, dict):
            yield f"{indent}{k}:"
            yield from _yaml(v, indent + "  ")
        else:
            yield f"{indent}{k}: {v}"


def read_all(path):
    with open_samples(path) as s:
        return {k: np.asarray(getattr(s, k)) if k != "links" else s.links[:]
                for k in DATASETS}, s.attrs


def same_files(a, b):
    da, _ = read_all(a)
    db, _ = read_all(b)
    for k in DATASETS:
        assert np.array_equal(da[k], db[k], equal_nan=k != "accepted"), k


def test_annealing_two_ranks_reproduce_one_process(tmp_path):
    cfg = config_file(tmp_path, ANNEAL)
    run(hpcflow("sample", str(cfg), "--n", "24", "--batch-size", "5", "--out",
                str(tmp_path / "one")))
    run(hpcflow("sample", str(cfg), "--n", "24", "--batch-size", "7", "--out",
                str(tmp_path / "two"), ranks=2))
    one, attrs = read_all(tmp_path / "one")
    assert attrs["sampler"] == "annealing" and np.isnan(one["log_q"]).all()
    two, _ = read_all(tmp_path / "two")
    # the same trajectories (rank-split and batch-independent); each rank runs its own chain
    for r in (0, 1):
        rows = np.arange(r, 24, 2)
        with open_samples(tmp_path / "two" / f"shard-r0000{r}.h5") as s:
            assert np.array_equal(s.links[:], one["links"][rows])
            assert np.array_equal(s.log_weight, one["log_weight"][rows])


def test_annealing_kill_minus_nine_then_resume(tmp_path):
    cfg = config_file(tmp_path, [*ANNEAL, "sampler.steps=60"])
    n = 400
    ref = tmp_path / "ref"
    run(hpcflow("sample", str(cfg), "--n", str(n), "--batch-size", "8", "--out", str(ref),
                ranks=2))
    out = tmp_path / "killed"
    kills = kill_two_ranks_at(hpcflow("sample", str(cfg), "--n", str(n), "--batch-size", "8",
                                      "--out", str(out), ranks=2), out, (0.3, 1.0), cwd=ROOT)
    assert kills >= 1, "the sampler finished too fast to be interrupted"
    run(hpcflow("sample", str(cfg), "--n", str(n), "--batch-size", "8", "--out", str(out),
                ranks=2))
    same_files(ref / "samples.h5", out / "samples.h5")


def _train_series(run_dir):
    keep = ("step", "loss", "ess", "grad_norm", "eval_ess", "eval_acceptance")
    return [{k: r.get(k) for k in keep} for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def test_snf_training_two_ranks_and_kill_minus_nine(tmp_path):
    """A stochastic flow trains the same on 1 and 2 ranks (to round-off), and a run killed
    mid-training resumes to identical metrics and samples."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    run(hpcflow("train", str(empty), "-o", str(one), overrides=SNF))
    run(hpcflow("train", str(empty), "-o", str(two), overrides=SNF, ranks=2))
    a, b = _train_series(one), _train_series(two)
    assert len(a) == len(b) == 8
    for ra, rb in zip(a, b, strict=True):
        for k, v in ra.items():
            if v is not None:
                assert abs(v - rb[k]) <= 1e-9 * max(1.0, abs(v)), (k, v, rb[k])
    proc = subprocess.Popen(hpcflow("train", str(empty), "-o", str(killed), overrides=SNF),
                            env=clean_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        path = killed / "metrics.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait(timeout=60)
    run(hpcflow("train", str(empty), "-o", str(killed), overrides=SNF))
    assert _train_series(killed) == a
    for d in (one, killed):
        run(hpcflow("sample", str(d), "--n", "6", "--batch-size", "3"))
    same_files(one / "samples" / "samples.h5", killed / "samples" / "samples.h5")
    _, attrs = read_all(one / "samples" / "samples.h5")
    assert attrs["sampler"] == "snf" and attrs["checkpoint_step"] == 8


def test_heatbath_chain_resumes_and_feeds_a_protocol(tmp_path):
    """`hpcflow mcmc` (heat bath): killed and resumed, the chain is the uninterrupted one; its
    output is the equilibrium ensemble a protocol from beta_start starts from."""
    base = ["lattice.shape=[4,4]", "lattice.group=SU2", "action.beta=1.0", "sample.n_samples=60",
            "heatbath.thermalization=5", "distributed.threads=1"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    ref, out = tmp_path / "ref", tmp_path / "out"
    run(hpcflow("mcmc", str(empty), "-o", str(ref), overrides=base))
    _, attrs = read_all(ref / "samples.h5")
    assert attrs["sampler"] == "heatbath" and attrs["n_written"] == 60
    run(hpcflow("mcmc", str(empty), "-o", str(out), "--n", "23", overrides=base))
    run(hpcflow("mcmc", str(empty), "-o", str(out), overrides=base))  # continues to 60
    same_files(ref / "samples.h5", out / "samples.h5")
    cfg = config_file(tmp_path, [*base[:2], "action.beta=1.2", "sampler.kind=annealing",
                                 "sampler.steps=5", "sampler.beta_start=1.0",
                                 f"sampler.start={ref / 'samples.h5'}"])
    run(hpcflow("sample", str(cfg), "--n", "16", "--out", str(tmp_path / "s")))
    res = run([sys.executable, "-m", "hpcflow", "analyze", str(tmp_path / "s"), "--json"])
    report = json.loads(res.stdout)
    assert report["kind"] == "annealing" and report["log_z_relative"]


@pytest.mark.parametrize("bad, needle", [
    ("sampler.beta_start=1.3", "beta = 1.0"),           # the ensemble is at another coupling
    ("lattice.shape=[6,6]", "[4, 4]"),                  # another lattice
])
def test_a_start_ensemble_that_does_not_fit_is_refused(tmp_path, bad, needle):
    base = ["lattice.shape=[4,4]", "lattice.group=U1", "action.beta=1.0", "sample.n_samples=4",
            "heatbath.thermalization=1", "distributed.threads=1"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("{}\n")
    run(hpcflow("mcmc", str(empty), "-o", str(tmp_path / "ens"), overrides=base))
    items = [*base[:2], "action.beta=1.5", "sampler.kind=annealing", "sampler.steps=2",
             "sampler.beta_start=1.0", f"sampler.start={tmp_path / 'ens' / 'samples.h5'}", bad]
    cfg = config_file(tmp_path, items)
    res = subprocess.run([sys.executable, "-m", "hpcflow", "sample", str(cfg), "--out",
                          str(tmp_path / "s")], capture_output=True, text=True, env=clean_env(),
                         cwd=ROOT, timeout=120)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
