"""hpcflow sample / analyze: resumable shards under MPI, kill -9 safety, missing shards; the
chains of several ranks analyzed as replicas (AR(1) series of known tau_int)."""

import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hpcflow import load_config
from hpcflow.app import analyze
from hpcflow.app.train import Trainer
from hpcflow.estimators import chain_mean, independence_metropolis
from hpcflow.io.samples import SampleHeader, ShardWriter, open_samples, write_master
from tests.helpers import (
    TINY_FLOW,
    ar1,
    clean_env,
    kill_two_ranks_at,
    mpiexec,
    run_ctx,
    sigma_mean_replicas,
    tau_true,
)

ROOT = Path(__file__).resolve().parents[2]
TINY = TINY_FLOW
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
    def every_file_opens_and_counts_agree():
        for shard in sorted(out.glob("shard-r*.h5")):
            with _open_when_released(shard) as f:
                nw = int(f.attrs["n_written"])
                assert all(f[k].shape[0] >= nw for k in DATASETS)

    delays = np.random.default_rng(12345).uniform(0.0, 1.0, size=3)
    kills = kill_two_ranks_at(sample_cmd(run_dir, out, n, ranks=2), out, delays,
                              after_each=every_file_opens_and_counts_agree)
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
    assert result["replicas"] == plaq["chain"]["replicas"] == 1  # one rank: one chain
    assert result["exact"]["plaquette"] == pytest.approx(0.4463, abs=0.01)  # 2D U(1), beta=1
    assert 0 < result["ess"] <= 1 and 0 <= result["acceptance"]["value"] <= 1
    with open_samples(out / "samples.h5") as s:
        lw = np.asarray(s.log_weight[:], dtype=np.float64)
    assert result["log_weight_var"] == pytest.approx(lw.var(ddof=1), rel=1e-12)


# ------------------------------------------------------------------- chains of ranks as replicas
def write_series_shards(directory, series, sampler="heatbath", seed=0):
    """One shard per entry of ``series`` (``[N_r]`` each) and ``samples.h5``, the series
    stored as the measured plaquette of each row (no configurations: ``store: none``). A Markov
    chain (``mcmc_state = i``), or for ``sampler="flow"`` an independence-Metropolis chain
    over random log weights. Returns each rank's chain of the series, ``x[mcmc_state]``."""
    header = SampleHeader("U1", (2, 2), 1.0, sampler=sampler, store="none",
                          observables=("plaquette",))
    rng = np.random.default_rng(seed)
    chains = []
    for rank, x in enumerate(series):
        m = len(x)
        if sampler == "flow":
            lw = rng.normal(size=m)
            state, accepted, _, _ = independence_metropolis(lw, rng.random(m))
        else:
            lw, state, accepted = np.full(m, np.nan), np.arange(m), np.ones(m, bool)
        with ShardWriter(directory, header, rank=rank, world_size=len(series), fsync=False) as w:
            w.append({"log_q": np.zeros(m) if sampler == "flow" else lw,
                      "action": np.zeros(m), "log_weight": lw, "mcmc_state": state,
                      "accepted": accepted, "observables": {"plaquette": x}})
        chains.append(x[state])
    write_master(directory, len(series))
    return chains


def test_chains_of_two_ranks_are_analyzed_as_replicas(tmp_path):
    """Two ranks' heat-bath-like chains, each an AR(1) series (rho = 0.8, tau_int = 4.5) of its
    own, 6000 and 4000 steps: ``hpcflow analyze``'s chain estimate has the exact tau_int and
    error of the mean within a few of its stated errors, for several seeds."""
    rho, lengths = 0.8, (6000, 4000)
    n = sum(lengths)
    sigma = sigma_mean_replicas(rho, lengths)
    for seed in range(3):
        rng = np.random.default_rng([7, seed])
        series = [ar1(rho, m, rng) for m in lengths]
        write_series_shards(tmp_path / str(seed), series)
        result = analyze.analyze_file(tmp_path / str(seed))
        chain = result["observables"]["plaquette"]["chain"]
        assert result["replicas"] == chain["replicas"] == 2
        assert result["chain_lengths"] == list(lengths) and chain["n"] == n
        assert abs(chain["tau_int"] - tau_true(rho)) < 3 * chain["tau_error"]
        assert abs(chain["error"] / sigma - 1) < 3 * np.sqrt((chain["window"] + 0.5) / n)
        assert abs(chain["value"]) < 4 * chain["error"]
        expected = chain_mean(series)
        assert chain["value"] == pytest.approx(expected.value, rel=1e-9, abs=1e-12)
        assert chain["error"] == pytest.approx(expected.error, rel=1e-6)
        assert chain["tau_int"] == pytest.approx(expected.tau_int, rel=1e-6)
        assert "replicas" in analyze.format_report(result)


def test_flow_chains_of_two_ranks_split_at_the_shard_offsets(tmp_path):
    """Independence-Metropolis chains of two ranks: the chain estimate is that of the two
    chains ``x[mcmc_state]`` of the shards as replicas, not of their concatenation; the
    reweighted estimate is the plain one over all rows."""
    rng = np.random.default_rng(3)
    series = [rng.normal(size=m) for m in (700, 500)]
    chains = write_series_shards(tmp_path, series, sampler="flow", seed=4)
    result = analyze.analyze_file(tmp_path / "samples.h5")
    chain = result["observables"]["plaquette"]["chain"]
    expected = chain_mean(chains)
    assert chain["replicas"] == 2
    assert chain["value"] == pytest.approx(expected.value, rel=1e-9)
    assert chain["error"] == pytest.approx(expected.error, rel=1e-6)
    assert chain["q_value"] == pytest.approx(expected.q_value, rel=1e-6)
    with open_samples(tmp_path) as s:
        lw, accepted = s.log_weight, s.accepted
    rew = analyze.reweighted_mean(np.concatenate(series), lw)
    got = result["observables"]["plaquette"]["reweighted"]
    assert (got["value"], got["error"]) == pytest.approx((rew.value, rew.error), rel=1e-9)
    acc = chain_mean([accepted[1:700], accepted[701:]])
    assert result["acceptance"]["value"] == pytest.approx(acc.value)
    assert result["acceptance"]["replicas"] == 2
    # a single shard is one replica
    one = analyze.analyze_file(tmp_path / "shard-r00001.h5")
    assert one["replicas"] == 1 and one["observables"]["plaquette"]["chain"]["q_value"] is None


def test_ranks_whose_chains_disagree_are_reported(tmp_path):
    """Two ranks' AR(1) chains around means 6 sigma apart: hpcflow analyze warns."""
    rng = np.random.default_rng(11)
    shift = 3 * sigma_mean_replicas(0.8, (3000,))
    write_series_shards(tmp_path, [ar1(0.8, 3000, rng) + shift, ar1(0.8, 3000, rng) - shift])
    with pytest.warns(RuntimeWarning, match="plaquette: the means of the 2 chains disagree"):
        result = analyze.analyze_file(tmp_path)
    assert result["observables"]["plaquette"]["chain"]["q_value"] < 1e-3
