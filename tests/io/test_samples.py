"""HDF5 sample files: round trip, crash safety, resume checks, master file of virtual datasets,
and detection of missing, truncated or corrupt files (docs/file-format.md)."""

import dataclasses
import os
import shutil
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch

from hpcflow import InputFileError
from hpcflow._version import __version__
from hpcflow.io import samples as storage
from hpcflow.io.samples import (
    MASTER_NAME,
    SampleHeader,
    ShardWriter,
    open_samples,
    shard_path,
    write_master,
)

HEADER = SampleHeader(group="SU2", lattice_shape=(2, 3), beta=2.5,
                      config="lattice:\n  shape: [2, 3]\n", seed=7, checkpoint_step=100)


def make_batch(n, start=0, *, seed=0, header=HEADER):
    """``n`` rows with recognisable content; ``mcmc_state`` indexes the shard (offset
    ``start``): proposal i is accepted when i is even."""
    rng = np.random.default_rng(seed)
    shape = (n, *header.links_shape())
    links = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    log_q = rng.normal(size=n)
    action = rng.normal(size=n)
    idx = start + np.arange(n)
    accepted = idx % 2 == 0
    state = np.where(accepted, idx, idx - 1)
    return {"links": links, "log_q": log_q, "action": action, "log_weight": -action - log_q,
            "mcmc_state": state, "accepted": accepted}


def concat(*batches):
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def assert_rows_equal(ss, expected, rtol=0.0):
    assert ss.n == len(expected["action"])
    np.testing.assert_allclose(ss.links[:], expected["links"], rtol=rtol)
    for name in ("log_q", "action", "log_weight", "mcmc_state", "accepted"):
        np.testing.assert_array_equal(getattr(ss, name), expected[name])


def write_shard(directory, rank, world_size, batches, **kw):
    with ShardWriter(directory, HEADER, rank=rank, world_size=world_size, **kw) as w:
        for b in batches:
            w.append(b)
        return w.n_written


# ---------------------------------------------------------------------------------- one shard
@pytest.mark.parametrize("links_dtype", ["complex128", "complex64"])
def test_round_trip_all_datasets_and_attributes(tmp_path, links_dtype):
    batch = make_batch(5)
    write_shard(tmp_path, 0, 1, [batch], links_dtype=links_dtype)
    path = shard_path(tmp_path, 0)
    assert path.name == "shard-r00000.h5"
    with open_samples(path) as ss:
        a = ss.attrs
        assert a["format"] == "hpcflow-samples" and a["format_version"] == 3
        assert a["sampler"] == "flow" and a["log_z_start"] == 0.0
        assert (a["group"], a["nc"], a["lattice_shape"], a["beta"]) == ("SU2", 2, (2, 3), 2.5)
        assert a["config"] == HEADER.config
        assert (a["rank"], a["world_size"], a["seed"], a["checkpoint_step"]) == (0, 1, 7, 100)
        assert a["hpcflow_version"] == __version__ and a["n_written"] == 5
        assert ss.links.dtype == np.dtype(links_dtype)
        assert ss.links.shape == (5, 2, 2, 3, 2, 2)
        assert_rows_equal(ss, batch, rtol=1e-6 if links_dtype == "complex64" else 0.0)
    # The on-disk types of docs/file-format.md, readable by plain h5py.
    with h5py.File(path, "r") as f:
        assert {k: f[k].dtype.name for k in f} == {
            "links": links_dtype, "log_q": "float64", "action": "float64",
            "log_weight": "float64", "mcmc_state": "int64", "accepted": "bool",
            "links_row": "int64"}


def test_torch_tensors_are_accepted(tmp_path):
    batch = make_batch(3)
    tbatch = {k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}
    tbatch["links"] = tbatch["links"].conj().conj()  # a view with the conj bit handled
    write_shard(tmp_path, 0, 1, [tbatch])
    with open_samples(shard_path(tmp_path, 0)) as ss:
        assert_rows_equal(ss, batch)


def test_append_in_several_batches(tmp_path):
    b1, b2, b3 = make_batch(3, 0, seed=1), make_batch(4, 3, seed=2), make_batch(2, 7, seed=3)
    with ShardWriter(tmp_path, HEADER) as w:
        assert w.n_written == 0
        assert w.append(b1) == 3
        assert w.append(make_batch(0, 3)) == 3  # empty batch: nothing changes
        assert w.append(b2) == 7
    with ShardWriter(tmp_path, HEADER) as w:  # resume
        assert w.n_written == 7
        w.append(b3)
    with open_samples(shard_path(tmp_path, 0)) as ss:
        assert_rows_equal(ss, concat(b1, b2, b3))
        np.testing.assert_array_equal(ss.mcmc_links(), ss.links[ss.mcmc_state])


def test_bad_batches_are_refused(tmp_path):
    with ShardWriter(tmp_path, HEADER) as w:
        bad = make_batch(2)
        bad["links"] = bad["links"][:, :1]
        with pytest.raises(ValueError, match="links"):
            w.append(bad)
        bad = make_batch(2)
        bad["mcmc_state"] = np.array([0, 5])  # points past the rows
        with pytest.raises(ValueError, match="mcmc_state"):
            w.append(bad)
        bad = make_batch(2)
        del bad["accepted"]
        with pytest.raises(ValueError, match="accepted"):
            w.append(bad)
        assert w.n_written == 0


def test_lazy_rows_indexing(tmp_path):
    batch = make_batch(6)
    write_shard(tmp_path, 0, 1, [batch])
    ref = batch["links"]
    with open_samples(shard_path(tmp_path, 0)) as ss:
        L = ss.links
        np.testing.assert_array_equal(L[-1], ref[-1])
        np.testing.assert_array_equal(L[4:1:-2], ref[4:1:-2])
        np.testing.assert_array_equal(L[1:100:2], ref[1:100:2])  # clipped to n
        np.testing.assert_array_equal(L[[5, 0, 0, 3]], ref[[5, 0, 0, 3]])
        np.testing.assert_array_equal(L[ref[:, 0, 0, 0, 0, 0].real > 0],
                                      ref[ref[:, 0, 0, 0, 0, 0].real > 0])
        np.testing.assert_array_equal(L[2:4, 1, ..., 0, 0], ref[2:4, 1, ..., 0, 0])
        np.testing.assert_array_equal(np.concatenate(list(L.iter_batches(4))), ref)
        with pytest.raises(IndexError):
            L[6]
        np.testing.assert_array_equal(np.concatenate(list(ss.iter_mcmc_links(4))),
                                      ref[batch["mcmc_state"]])


def test_hmc_style_file_with_nan_log_q(tmp_path):
    header = SampleHeader(group="U1", lattice_shape=(4, 4), beta=1.0, checkpoint_step=-1)
    batch = make_batch(4, header=header)
    batch["log_q"] = np.full(4, np.nan)
    batch["log_weight"] = np.full(4, np.nan)
    batch["mcmc_state"] = np.arange(4)
    with ShardWriter(tmp_path, header) as w:
        w.append(batch)
    write_master(tmp_path, 1)
    with open_samples(tmp_path) as ss:  # a folder means its samples.h5
        assert ss.is_master and ss.n == 4 and np.isnan(ss.log_q).all()
        np.testing.assert_array_equal(ss.links[:], batch["links"])


def test_header_from_config():
    from hpcflow.app.config import config_from_dict
    from hpcflow.app.sample import sample_header

    cfg = config_from_dict({"lattice": {"shape": [4, 4, 4], "group": "SU3"},
                            "action": {"beta": 5.5}, "train": {"seed": 3}})
    h = sample_header(cfg, checkpoint_step=12)
    assert (h.group, h.nc, h.lattice_shape, h.beta, h.seed) == ("SU3", 3, (4, 4, 4), 5.5, 3)
    assert "SU3" in h.config and h.links_shape() == (3, 4, 4, 4, 3, 3)


# ------------------------------------------------------------------------------ crash & resume
def test_crash_before_count_update_is_truncated_on_reopen(tmp_path, monkeypatch):
    b1, b2 = make_batch(3, 0, seed=1), make_batch(4, 3, seed=2)
    w = ShardWriter(tmp_path, HEADER)
    w.append(b1)

    def crash(self, n, m):
        raise KeyboardInterrupt("killed between the rows and their count")

    monkeypatch.setattr(ShardWriter, "_set_n_written", crash)
    with pytest.raises(KeyboardInterrupt):
        w.append(b2)
    w.close()
    monkeypatch.undo()

    path = shard_path(tmp_path, 0)
    with h5py.File(path, "r") as f:  # the rows are there, uncounted
        assert f.attrs["n_written"] == 3 and f["links"].shape[0] == 7
    with open_samples(path) as ss:  # readers see only the complete rows
        assert_rows_equal(ss, b1)
    with ShardWriter(tmp_path, HEADER) as w:  # resume cuts them off and continues
        assert w.n_written == 3
        with h5py.File(path, "r") as f:
            assert all(f[k].shape[0] == 3 for k in f)
        w.append(b2)
    with open_samples(path) as ss:
        assert_rows_equal(ss, concat(b1, b2))


def test_killed_process_leaves_an_openable_shard(tmp_path):
    """A real process death (os._exit, no close) after rows were written but not counted."""
    b1 = make_batch(3, 0, seed=1)
    write_shard(tmp_path, 0, 1, [b1])
    path = shard_path(tmp_path, 0)
    script = textwrap.dedent(f"""
        import os, h5py, numpy as np
        f = h5py.File({str(path)!r}, "r+")
        for name in f:
            f[name].resize(5, axis=0)
        f["links"][3:5] = 9.0
        f["action"][3:5] = 9.0
        f.flush()
        os._exit(1)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert res.returncode == 1, res.stderr
    with open_samples(path) as ss:
        assert_rows_equal(ss, b1)
    with ShardWriter(tmp_path, HEADER) as w:
        assert w.n_written == 3
        w.append(make_batch(2, 3, seed=5))
    with open_samples(path) as ss:
        assert ss.n == 5 and not (ss.action == 9.0).any()


@pytest.mark.parametrize("change", [
    {"beta": 2.6}, {"seed": 8}, {"checkpoint_step": 101}, {"lattice_shape": (2, 4)},
    {"group": "SU3"}, {"world_size": 2}, {"links_dtype": "complex64"},
])
def test_resume_with_other_attributes_is_refused(tmp_path, change):
    write_shard(tmp_path, 0, 1, [make_batch(2)])
    kw = dict(change)
    world_size = kw.pop("world_size", 1)
    links_dtype = kw.pop("links_dtype", "complex128")
    header = dataclasses.replace(HEADER, **kw)
    with pytest.raises(InputFileError) as err:
        ShardWriter(tmp_path, header, world_size=world_size, links_dtype=links_dtype)
    msg = str(err.value)
    assert "shard-r00000.h5" in msg
    key = "links" if "links_dtype" in change else next(iter(change))
    assert key in msg


def test_resume_false_refuses_existing_shard(tmp_path):
    write_shard(tmp_path, 0, 1, [make_batch(2)])
    with pytest.raises(InputFileError, match="shard-r00000.h5.*exists"):
        ShardWriter(tmp_path, HEADER, resume=False)


def test_config_text_may_differ_on_resume(tmp_path):
    write_shard(tmp_path, 0, 1, [make_batch(2)])
    header = dataclasses.replace(HEADER, config="other: 1\n")
    with ShardWriter(tmp_path, header) as w:
        assert w.n_written == 2


# ------------------------------------------------------------------------------------ master
def two_shards(directory):
    b0 = [make_batch(3, 0, seed=1), make_batch(2, 3, seed=2)]
    b1 = [make_batch(4, 0, seed=3)]
    write_shard(directory, 0, 2, b0)
    write_shard(directory, 1, 2, b1)
    return concat(*b0), concat(*b1)


def test_master_reads_the_concatenation(tmp_path):
    r0, r1 = two_shards(tmp_path)
    path = write_master(tmp_path, 2)
    assert path == tmp_path / MASTER_NAME
    with open_samples(path) as ss:
        assert ss.is_master and ss.n == 9
        a = ss.attrs
        assert (a["rank"], a["world_size"], a["n_written"], a["beta"]) == (-1, 2, 9, 2.5)
        assert ss.shard_files == ["shard-r00000.h5", "shard-r00001.h5"]
        np.testing.assert_array_equal(ss.shard_n_written, [5, 4])
        np.testing.assert_array_equal(ss.chain_starts, [0, 5])
        np.testing.assert_array_equal(ss.links[:], np.concatenate([r0["links"], r1["links"]]))
        for name in ("log_q", "action", "log_weight", "accepted"):
            np.testing.assert_array_equal(getattr(ss, name), np.concatenate([r0[name], r1[name]]))
        # mcmc_state indexes the joined links: shard 1's states are shifted by 5
        np.testing.assert_array_equal(
            ss.mcmc_state, np.concatenate([r0["mcmc_state"], r1["mcmc_state"] + 5]))
        np.testing.assert_array_equal(
            ss.mcmc_links(), np.concatenate([r0["links"][r0["mcmc_state"]],
                                             r1["links"][r1["mcmc_state"]]]))
    with h5py.File(path, "r") as f:  # virtual datasets with relative source names
        assert f["links"].is_virtual
        assert {s.file_name for s in f["links"].virtual_sources()} == {
            "shard-r00000.h5", "shard-r00001.h5"}


def test_master_uses_only_counted_rows(tmp_path, monkeypatch):
    r0, r1 = two_shards(tmp_path)
    with h5py.File(shard_path(tmp_path, 1), "r+") as f:  # uncounted rows of a crash
        for name in f:
            f[name].resize(6, axis=0)
    with open_samples(write_master(tmp_path, 2)) as ss:
        assert ss.n == 9
        np.testing.assert_array_equal(ss.action, np.concatenate([r0["action"], r1["action"]]))


def test_empty_shards_make_an_empty_master(tmp_path):
    write_shard(tmp_path, 0, 2, [])
    write_shard(tmp_path, 1, 2, [])
    with open_samples(write_master(tmp_path, 2)) as ss:
        assert ss.n == 0 and ss.links.shape == (0, 2, 2, 3, 2, 2) and ss.action.shape == (0,)


def test_moved_folder_keeps_master_readable(tmp_path, monkeypatch):
    src = tmp_path / "run" / "samples"
    r0, r1 = two_shards(src)
    write_master(src, 2)
    dst = tmp_path / "elsewhere" / "moved"
    dst.parent.mkdir()
    shutil.move(src, dst)
    monkeypatch.chdir(tmp_path)  # neither the old folder nor the new one
    with open_samples(dst / MASTER_NAME) as ss:
        np.testing.assert_array_equal(ss.links[:], np.concatenate([r0["links"], r1["links"]]))


def test_missing_shard_is_named(tmp_path):
    two_shards(tmp_path)
    write_master(tmp_path, 2)
    os.remove(shard_path(tmp_path, 1))
    with h5py.File(tmp_path / MASTER_NAME, "r") as f:  # why the check exists: HDF5 is silent
        assert np.isnan(f["action"][5:]).all()
    with pytest.raises(InputFileError, match="shard-r00001.h5.*missing"):
        write_master(tmp_path, 2)
    with pytest.raises(InputFileError, match="shard-r00001.h5.*missing"):
        open_samples(tmp_path / MASTER_NAME)
    with pytest.raises(InputFileError, match="shard-r00000.h5.*rank 0 of 2, expected rank 0 of 3"):
        write_master(tmp_path, 3)  # shards of another world size
    fresh = tmp_path / "fresh"
    write_shard(fresh, 0, 2, [make_batch(2)])  # rank 1 never wrote anything
    with pytest.raises(InputFileError, match="shard-r00001.h5.*missing"):
        write_master(fresh, 2)


def test_truncated_datasets_are_named(tmp_path):
    two_shards(tmp_path)
    write_master(tmp_path, 2)
    with h5py.File(shard_path(tmp_path, 0), "r+") as f:  # fewer rows than n_written
        f["action"].resize(2, axis=0)
    for call in (lambda: write_master(tmp_path, 2), lambda: open_samples(tmp_path)):
        with pytest.raises(InputFileError, match="shard-r00000.h5.*'action'.*truncated"):
            call()


def test_truncated_file_is_named(tmp_path):
    two_shards(tmp_path)
    write_master(tmp_path, 2)
    path = shard_path(tmp_path, 1)
    size = path.stat().st_size
    with open(path, "r+b") as fh:
        fh.truncate(size // 3)
    for call in (lambda: write_master(tmp_path, 2), lambda: open_samples(tmp_path)):
        with pytest.raises(InputFileError, match="shard-r00001.h5"):
            call()


def test_shard_changed_after_master_is_detected(tmp_path):
    two_shards(tmp_path)
    write_master(tmp_path, 2)
    with ShardWriter(tmp_path, HEADER, rank=1, world_size=2) as w:  # resumed afterwards
        w.append(make_batch(2, 4))
    with pytest.raises(InputFileError, match="shard-r00001.h5.*6 complete rows.*4"):
        open_samples(tmp_path / MASTER_NAME)
    with open_samples(write_master(tmp_path, 2)) as ss:  # rewriting the master fixes it
        assert ss.n == 11


def test_shards_from_different_runs_are_not_joined(tmp_path):
    write_shard(tmp_path, 0, 2, [make_batch(2)])
    other = dataclasses.replace(HEADER, seed=99)
    with ShardWriter(tmp_path, other, rank=1, world_size=2) as w:
        w.append(make_batch(2))
    with pytest.raises(InputFileError, match="shard-r00001.h5.*'seed'"):
        write_master(tmp_path, 2)


def test_half_written_master_is_never_visible(tmp_path, monkeypatch):
    two_shards(tmp_path)
    real_body = storage._write_master_body

    def body_then_crash(f, *args):
        real_body(f, *args)
        f.flush()
        raise KeyboardInterrupt("killed while writing the master")

    monkeypatch.setattr(storage, "_write_master_body", body_then_crash)
    with pytest.raises(KeyboardInterrupt):
        write_master(tmp_path, 2)
    assert not (tmp_path / MASTER_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard-r00000.h5", "shard-r00001.h5"]

    monkeypatch.undo()
    write_master(tmp_path, 2)
    before = (tmp_path / MASTER_NAME).read_bytes()
    monkeypatch.setattr(storage, "_write_master_body", body_then_crash)
    with pytest.raises(KeyboardInterrupt):
        write_master(tmp_path, 2)
    assert (tmp_path / MASTER_NAME).read_bytes() == before  # the old master is untouched


# --------------------------------------------------------------------------- not sample files
def test_garbage_file_gives_input_file_error(tmp_path):
    path = shard_path(tmp_path, 0)
    path.write_bytes(os.urandom(4096))
    with pytest.raises(InputFileError, match="shard-r00000.h5.*HDF5"):
        open_samples(path)
    with pytest.raises(InputFileError, match="shard-r00000.h5"):
        ShardWriter(tmp_path, HEADER)
    with pytest.raises(InputFileError, match="nothing.h5.*no such file"):
        open_samples(tmp_path / "nothing.h5")


def test_foreign_or_newer_hdf5_file_is_refused(tmp_path):
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(InputFileError, match="foreign.h5.*not an hpcflow sample file"):
        open_samples(foreign)
    write_shard(tmp_path, 0, 1, [make_batch(1)])
    with h5py.File(shard_path(tmp_path, 0), "r+") as f:
        f.attrs["format_version"] = 4
    with pytest.raises(InputFileError, match="format_version 4.*newer"):
        open_samples(shard_path(tmp_path, 0))


@pytest.mark.parametrize("finite_log_q, kind", [(True, "flow"), (False, "hmc")])
def test_version_1_files_still_read(tmp_path, finite_log_q, kind):
    """A file of format_version 1 (no sampler, no log_z_start) opens; the sampler is inferred
    from log_q as version 1 readers did."""
    batch = make_batch(3)
    if not finite_log_q:
        batch["log_q"] = np.full(3, np.nan)
    write_shard(tmp_path, 0, 1, [batch])
    with h5py.File(shard_path(tmp_path, 0), "r+") as f:
        f.attrs["format_version"] = 1
        del f.attrs["sampler"], f.attrs["log_z_start"]
    write_master(tmp_path, 1)
    for path in (shard_path(tmp_path, 0), tmp_path / "samples.h5"):
        with open_samples(path) as ss:
            assert ss.attrs["sampler"] == kind and ss.attrs["log_z_start"] == 0.0
            assert ss.weighted == finite_log_q and ss.n == 3
