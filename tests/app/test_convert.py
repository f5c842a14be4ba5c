"""hpcflow export / import: a sample file's chain out as ILDG or NERSC files and back in,
bit-exact, analyzable and usable as a sampler's starting ensemble; bad input refused."""

import subprocess
import sys

import numpy as np
import pytest

from hpcflow.io.lime import scan_records
from hpcflow.io.samples import open_samples
from tests.helpers import clean_env

SU3 = ["lattice.shape=[4, 2, 2, 2]", "lattice.group=SU3", "action.beta=1.0",
       "sampler.kind=annealing", "sampler.steps=2"]


def hpcflow(*args, check=True):
    res = subprocess.run([sys.executable, "-m", "hpcflow", *map(str, args)], env=clean_env(),
                         capture_output=True, text=True, timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def sets(items):
    return [x for kv in items for x in ("--set", kv)]


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """SU(3) annealing proposals, stored in full and as the thinned chain."""
    root = tmp_path_factory.mktemp("convert")
    cfg = root / "c.yaml"
    cfg.write_text("{}\n")
    for store in ("all", "chain"):
        hpcflow("sample", cfg, "--n", 9, "--batch-size", 3, "--out", root / store,
                *sets(SU3), "--set", f"sample.store={store}", "--set", "sample.thin=2")
    return root


@pytest.mark.parametrize("fmt", ["ildg", "nersc"])
def test_export_then_import_is_bit_exact(samples, tmp_path, fmt):
    hpcflow("export", samples / "all", "--format", fmt, "-o", tmp_path / "x")
    files = sorted((tmp_path / "x").iterdir())
    assert len(files) == 9
    hpcflow("import", *files, "-o", tmp_path / "back", "--beta", 1.0)
    with open_samples(samples / "all") as a, open_samples(tmp_path / "back") as b:
        assert b.attrs["sampler"] == "imported" and b.n == 9
        assert np.array_equal(b.links[:], a.mcmc_links())  # the chain's states, in order
        for name in a.observable_names:
            assert np.allclose(b.observable(name), a.observable(name)[a.mcmc_state],
                               rtol=0, atol=1e-12), name
    report = hpcflow("analyze", tmp_path / "back").stdout
    assert "plaquette" in report and "imported" in report


def test_export_of_a_thinned_chain_and_single_precision(samples, tmp_path):
    hpcflow("export", samples / "chain", "--format", "ildg", "-o", tmp_path / "x", "--single")
    files = sorted((tmp_path / "x").iterdir())
    with open_samples(samples / "chain") as s:
        assert len(files) == s.m == 4  # rows 1, 3, 5, 7 of the one chain
        stored = s.links[:]
    hpcflow("import", *files, "-o", tmp_path / "back")  # beta recorded by hpcflow's ILDG files
    with open_samples(tmp_path / "back") as b:
        assert b.attrs["beta"] == 1.0
        assert np.array_equal(b.links[:], stored.astype(np.complex64).astype(np.complex128))


def test_imported_configurations_start_a_sampler(samples, tmp_path):
    """An imported ensemble at beta = 1 is the start of annealing to beta = 1.2."""
    hpcflow("export", samples / "all", "--format", "nersc", "-o", tmp_path / "x")
    hpcflow("import", *sorted((tmp_path / "x").iterdir()), "-o", tmp_path / "ens", "--beta", 1.0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("{}\n")
    over = [s for s in SU3 if not s.startswith("action")] + [
        "action.beta=1.2", "sampler.beta_start=1.0",
        f"sampler.start={tmp_path / 'ens' / 'samples.h5'}"]
    hpcflow("sample", cfg, "--n", 4, "--batch-size", 2, "--out", tmp_path / "s", *sets(over))
    with open_samples(tmp_path / "s") as s:
        assert s.n == 4 and np.isnan(s.attrs["log_z_start"])


def test_bad_input_is_refused(samples, tmp_path):
    res = hpcflow("export", samples / "all", "--format", "ildg", "-o", tmp_path / "x", check=False)
    assert res.returncode == 0
    victim = sorted((tmp_path / "x").iterdir())[0]
    binary = next(r for r in scan_records(victim) if r.type == "ildg-binary-data")
    data = bytearray(victim.read_bytes())
    data[binary.offset + binary.length // 2] ^= 0x10  # a bit of the binary data
    victim.write_bytes(bytes(data))
    res = hpcflow("import", victim, "-o", tmp_path / "bad", "--beta", 1, check=False)
    assert res.returncode == 2 and victim.name in res.stderr and "checksum" in res.stderr.lower()
    assert not list((tmp_path / "bad").glob("*.h5"))  # no partial shard left behind
    good = sorted((tmp_path / "x").iterdir())[1:3]  # a bad file after good ones
    res = hpcflow("import", *good, victim, "-o", tmp_path / "bad2", "--beta", 1, check=False)
    assert res.returncode == 2 and victim.name in res.stderr
    assert not list((tmp_path / "bad2").glob("*.h5"))
    u1 = tmp_path / "u1.yaml"
    u1.write_text("{}\n")
    hpcflow("sample", u1, "--n", 2, "--out", tmp_path / "u1", *sets(
        ["lattice.shape=[2, 2, 2, 2]", "lattice.group=U1", "action.beta=1.0",
         "sampler.kind=annealing", "sampler.steps=1"]))
    res = hpcflow("export", tmp_path / "u1", "--format", "ildg", "-o", tmp_path / "y", check=False)
    assert res.returncode == 2 and "U1" in res.stderr, res.stderr
