"""Measuring while sampling and the store policy (sample.store / sample.thin): observables
stored by the ranks equal those of the stored configurations, the policies agree on everything
but the links, kill -9 then resume with each policy, sampling a run elsewhere (--device,
--seed, --set), and the free-space refusal."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hpcflow import load_config
from hpcflow.app.chains import run_chain
from hpcflow.app.sample import run_sampling
from hpcflow.app.store import plan_store, stored_rows
from hpcflow.app.train import Trainer
from hpcflow.errors import HpcflowError
from hpcflow.io.checkpoint import load_latest_checkpoint
from hpcflow.io.samples import open_samples
from hpcflow.lattice.groups import get_group
from hpcflow.lattice.observables import measure
from tests.helpers import TINY_FLOW, clean_env, kill_two_ranks_at, mpiexec, run_ctx

ROOT = Path(__file__).resolve().parents[2]
TINY = TINY_FLOW
SCALARS = ("log_q", "action", "log_weight", "mcmc_state", "accepted")
ANNEAL_SU3 = ["lattice.shape=[4, 2, 2, 2]", "lattice.group=SU3", "action.beta=1.0",
              "sampler.kind=annealing", "sampler.steps=2"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("run")
    Trainer(load_config(None, TINY), run_ctx(path)).run()
    return path


def sample_cmd(run_dir, out, n, *extra, ranks=1, batch=8):
    cmd = [sys.executable, "-m", "mpi4py", "-m", "hpcflow", "sample", str(run_dir), "--n",
           str(n), "--batch-size", str(batch), "--out", str(out), *extra]
    return [mpiexec(), "-n", str(ranks), *cmd] if ranks > 1 else cmd


def run_sample(*args, **kwargs):
    return subprocess.run(sample_cmd(*args, **kwargs), env=clean_env(), timeout=300,
                          capture_output=True, text=True)


def read(path):
    with open_samples(path) as s:
        out = {k: np.asarray(getattr(s, k)) for k in SCALARS}
        out.update({f"obs/{k}": s.observable(k) for k in s.observable_names})
        out["links"], out["links_row"] = s.links[:], s.links_row
        return out, dict(s.attrs)


def test_plan_and_rows():
    """``auto`` stores everything within the budget, else the chain thinned to fit."""
    p = plan_store("auto", 10, 1.0, n_total=1000, config_bytes=10**6, n_observables=4)
    assert (p.store, p.thin) == ("all", 10)
    p = plan_store("auto", 10, 1.0, n_total=10**5, config_bytes=10**6, n_observables=4)
    assert (p.store, p.thin) == ("chain", 100)
    assert p.total_bytes([10**5]) == 10**5 * p.row_bytes + 1000 * 10**6
    p = plan_store("chain", 3, 1.0, n_total=10, config_bytes=8, n_observables=0)
    assert p.row_bytes == 8 + 8 + 8 + 8 + 1
    assert list(stored_rows(4, 8, "chain", 3)) == [5, 8, 11]
    assert list(stored_rows(4, 3, "all", 3)) == [4, 5, 6]
    assert len(stored_rows(0, 9, "none", 3)) == 0


def test_observables_measured_on_the_ranks_equal_the_stored_configurations(tmp_path):
    """SU(3) 4D annealing, 2 ranks: every stored observable (plaquette, Wilson loops,
    Polyakov loop, clover charge) equals the one recomputed from the stored links to 1e-12;
    with ``store: chain`` the links are the chain's every third state, the rest identical."""
    cfg = tmp_path / "su3.yaml"
    cfg.write_text("{}\n")
    outs = {}
    for store in ("all", "chain"):
        outs[store] = tmp_path / store
        res = subprocess.run(
            [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "hpcflow", "sample",
             str(cfg), "--n", "16", "--batch-size", "3", "--out", str(outs[store]),
             *[x for kv in ANNEAL_SU3 for x in ("--set", kv)], "--set", f"sample.store={store}",
             "--set", "sample.thin=3"], env=clean_env(), timeout=300, capture_output=True,
            text=True)
        assert res.returncode == 0, res.stderr
    a, attrs = read(outs["all"] / "samples.h5")
    c, cattrs = read(outs["chain"] / "samples.h5")
    assert (attrs["store"], cattrs["store"], cattrs["thin"]) == ("all", "chain", 3)
    group = get_group("SU3")
    fresh = measure(torch.from_numpy(a["links"]), group)
    assert set(fresh) == {k[4:] for k in a if k.startswith("obs/")}
    for k, v in fresh.items():
        assert np.abs(v.double().numpy() - a[f"obs/{k}"]).max() <= 1e-12, k
    for k in a:
        if k not in ("links", "links_row"):
            assert np.array_equal(a[k], c[k], equal_nan=a[k].dtype.kind == "f"), k
    # each rank's chain (8 rows) keeps its state after rows 2 and 5: rows of the joined file
    state = a["mcmc_state"]
    want = np.array([state[r] for off in (0, 8) for r in (off + 2, off + 5)])
    assert np.array_equal(c["links_row"], want)
    assert np.array_equal(c["links"], a["links"][want])
    recomputed = measure(torch.from_numpy(c["links"]), group)
    for k, v in recomputed.items():
        assert np.abs(v.double().numpy() - a[f"obs/{k}"][want]).max() <= 1e-12, k


def test_reference_chain_thinned(tmp_path):
    """The heat-bath chain with ``store: chain``: observables every row, links every 2nd."""
    cfg = load_config(None, ["lattice.shape=[4, 4]", "lattice.group=SU2", "action.beta=2.0",
                             "heatbath.thermalization=2", "sample.store=chain",
                             "sample.thin=2"], model=False)
    run_chain(cfg, "heatbath", tmp_path / "hb", run_ctx(tmp_path / "hb"), n_total=7)
    with open_samples(tmp_path / "hb") as s:
        assert s.n == 7 and list(s.links_row) == [1, 3, 5]
        p = measure(torch.from_numpy(s.links[:]), get_group("SU2"))["plaquette"]
        assert np.abs(p.numpy() - s.observable("plaquette")[[1, 3, 5]]).max() <= 1e-12
        assert np.array_equal(s.mcmc_state, np.arange(7))


@pytest.mark.parametrize("store", ["all", "chain", "none"])
def test_kill_minus_nine_then_resume_each_store_policy(run_dir, tmp_path, store):
    """Kill -9 of `mpiexec -n 2 hpcflow sample` at random moments, then the same command:
    equal to an uninterrupted run in every dataset, with each store policy."""
    n = 1200
    extra = ("--set", f"sample.store={store}", "--set", "sample.thin=7")
    ref = tmp_path / "ref"
    assert run_sample(run_dir, ref, n, *extra, ranks=2).returncode == 0
    out = tmp_path / "killed"
    delays = np.random.default_rng(7).uniform(0.0, 0.8, size=2)
    kills = kill_two_ranks_at(sample_cmd(run_dir, out, n, *extra, ranks=2), out, delays)
    assert kills >= 1, "the sampler finished too fast to be interrupted"
    res = run_sample(run_dir, out, n, *extra, ranks=2)
    assert res.returncode == 0, res.stderr
    a, attrs = read(ref / "samples.h5")
    b, battrs = read(out / "samples.h5")
    assert battrs["n_written"] == n and battrs["store"] == store
    assert len(a["links"]) == {"all": n, "chain": 2 * (n // 2 // 7), "none": 0}[store]
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind in "fc"), k


def _set_device_in_checkpoint(run: Path, device: str) -> None:
    """Pretend the run was trained on ``device`` (the checkpoint's copy of the config)."""
    ckpt_dir = run / "checkpoints"
    path = sorted(ckpt_dir.glob("step-*.pt"))[-1]
    data = torch.load(path, map_location="cpu", weights_only=True)
    data["config"]["distributed"]["device"] = device
    torch.save(data, path)
    assert load_latest_checkpoint(ckpt_dir)["config"]["distributed"]["device"] == device


def test_a_run_trained_on_xpu_samples_here_with_device_cpu(run_dir, tmp_path):
    """The cluster case: the run's config says xpu; --device cpu samples it here, equal to
    the same run's samples; --seed draws other proposals; --set may not change the model."""
    import shutil

    run = tmp_path / "xpu-run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("samples"))
    assert run_sample(run_dir, tmp_path / "here", 24).returncode == 0
    _set_device_in_checkpoint(run, "xpu")
    res = run_sample(run, tmp_path / "refused", 24)
    assert res.returncode == 2 and "distributed.device" in res.stderr, res.stderr
    res = run_sample(run, tmp_path / "cpu", 24, "--device", "cpu")
    assert res.returncode == 0, res.stderr
    a, _ = read(tmp_path / "here" / "samples.h5")
    b, attrs = read(tmp_path / "cpu" / "samples.h5")
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind in "fc"), k
    assert "device: cpu" in attrs["config"]
    res = run_sample(run, tmp_path / "seed", 24, "--device", "cpu", "--seed", "99")
    assert res.returncode == 0, res.stderr
    c, cattrs = read(tmp_path / "seed" / "samples.h5")
    assert cattrs["seed"] == 99 and not np.array_equal(a["action"], c["action"])
    res = run_sample(run, tmp_path / "bad", 24, "--device", "cpu", "--set",
                     "lattice.shape=[8, 8]")
    assert res.returncode == 2 and "lattice.shape" in res.stderr, res.stderr
    assert not (tmp_path / "bad").exists()


def test_refuses_when_the_files_would_not_fit(tmp_path, monkeypatch):
    """Expected bytes above the free space: one message naming the sizes, no file written."""
    import hpcflow.app.store as store_module
    from hpcflow.app.build import build_model

    class Usage:
        free = 10_000

    monkeypatch.setattr(store_module.shutil, "disk_usage", lambda path: Usage)
    cfg = load_config(None, ANNEAL_SU3)
    model = build_model(cfg)
    model.checkpoint_step = 0
    out = tmp_path / "out"
    with pytest.raises(HpcflowError, match=r"needs .* but the file system .* has 10 kB free"):
        run_sampling(model, cfg, out, run_ctx(out), n_total=64, batch_size=8)
    assert not list(out.glob("*.h5"))


def test_shard_layout_on_disk(run_dir, tmp_path):
    """A plain h5py reader finds the documented datasets of format_version 3."""
    assert run_sample(run_dir, tmp_path / "s", 10, "--set", "sample.store=chain",
                      "--set", "sample.thin=4").returncode == 0
    with h5py.File(tmp_path / "s" / "shard-r00000.h5", "r") as f:
        assert f.attrs["format_version"] == 3 and f.attrs["store"] == "chain"
        assert f.attrs["links_written"] == 2 and f["links"].shape[0] == 2
        assert set(f["obs"]) == {"plaquette", "wilson_1x2", "wilson_2x2", "polyakov_abs",
                                 "topological_charge", "q_squared"}
        assert f["obs/plaquette"].shape == (10,) and list(f["links_row"][:]) == list(
            f["mcmc_state"][[3, 7]])


def test_a_proposal_drawn_alone_equals_the_same_in_a_batch(run_dir):
    """What a resumed ``store: chain`` run relies on when the chain's state was not stored:
    proposal ``k`` drawn again on its own is bitwise the one drawn in a batch (a flow and an
    annealing trajectory)."""
    from hpcflow.app.build import build_action, build_model, load_model
    from hpcflow.app.propose import propose
    from hpcflow.flows.prior import STREAM_SAMPLE

    anneal = load_config(None, ["lattice.shape=[4, 4]", "lattice.group=SU2", "action.beta=1.0",
                                "sampler.kind=annealing", "sampler.steps=3"])
    flow = load_model(run_dir)
    for model, cfg in ((flow, flow.config), (build_model(anneal), anneal)):
        action = build_action(cfg)
        with torch.no_grad():
            batch = propose(model, action, range(8), seed=3, stream=STREAM_SAMPLE)
            alone = propose(model, action, [5], seed=3, stream=STREAM_SAMPLE)
        assert torch.equal(alone.links[0], batch.links[5])
        assert torch.equal(alone.log_weight[0], batch.log_weight[5])
