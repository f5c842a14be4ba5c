"""Bad input through the command line: one line on stderr that names the key, file or pip
extra, exit status 2, no traceback, and nothing written that looks complete."""

import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from hpcflow.cli import main
from tests.helpers import TINY_U1, clean_env, mpiexec

ROOT = Path(__file__).resolve().parents[2]


def sets(*items):
    return [a for item in items for a in ("--set", item)]


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return code, lines, out


def one_line(capsys, needle, *argv):
    code, lines, _ = run_main(capsys, *argv)
    assert code == 2, lines
    assert len(lines) == 1 and needle in lines[0], lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lattice: {shape: [4, 4], group: U1}\naction: {beta: 1.0}\n"
                    "train: {steps: 2, batch_size: 4, plot: false, eval_every: 0}\n")
    return path


# The ones the issue found ------------------------------------------------------------------
def test_su4_with_a_flow(capsys, config, tmp_path):
    one_line(capsys, "lattice.group", "train", str(config), "-o", str(tmp_path / "r"),
             *sets("lattice.group=SU4"))
    assert not (tmp_path / "r").exists()


def test_su4_reference_chain_needs_no_flow(capsys, config, tmp_path):
    """SU(4) has no flow, but its reference chain runs: the model section is not checked."""
    code, lines, _ = run_main(capsys, "hmc", str(config), "-o", str(tmp_path / "h"), "--n", "1",
                              *sets("lattice.group=SU4", "hmc.thermalization=0",
                                    "hmc.n_steps=1"))
    assert code == 0, lines


def test_ncp_with_su2(capsys, config, tmp_path):
    one_line(capsys, "model.transform", "train", str(config), "-o", str(tmp_path / "r"),
             *sets("lattice.group=SU2", "model.transform=ncp"))


def test_masks_plot_without_matplotlib(capsys, config, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    line = one_line(capsys, "pip install 'hpcflow[plot]'", "masks", str(config), "--plot",
                    str(tmp_path / "m.png"))
    assert "matplotlib" in line and not (tmp_path / "m.png").exists()


# Ten and more of our own --------------------------------------------------------------------
@pytest.mark.parametrize("override, key", [
    ("model.masks=[{directions: [0, 1], steps: [1, 1], width: 4}]", "model.masks[0]"),
    ("model.masks=[{directions: [0], steps: [0, 3], width: 8}]", "model.masks[0].steps"),
    ("model.masks=[{directions: [0], steps: [0, 1], width: 4}]", "model.masks"),
    ("model.multi_update=3", "model.multi_update"),
    ("model.features=[crown]", "model.features[0]"),
    ("model.active_loops=[]", "model.active_loops"),
    ("model.layers=3", "model.layers"),
    ("lattice.shape=[4, 1]", "lattice.shape"),
    ("train.walltime=soon", "train.walltime"),
    ("train.milestones=[0.9, 0.5]", "train.milestones"),
    ("model.net.kernel_size=2", "model.net.kernel_size"),
    ("distributed.device=cuda", "distributed.device"),
    ("hmc.target_acceptance=1.5", "hmc.target_acceptance"),
    ("sample.batch_size=0", "sample.batch_size"),
    ("sampler.knots=-1", "sampler.knots"),
    ("sampler={kind: snf, steps: 4, knots: 5}", "sampler.knots"),
    ("sampler={kind: snf, steps: 4, layers: 5}", "sampler.layers"),
    ("sampler={kind: snf, layer: coupling, knots: 2}", "sampler.knots"),
    ("sampler={kind: snf, init: random}", "sampler.init"),
])
def test_bad_config_values(capsys, config, tmp_path, override, key):
    one_line(capsys, f"config key '{key}'", "train", str(config), "-o", str(tmp_path / "r"),
             "--set", override)
    assert not (tmp_path / "r").exists()


def test_config_file_that_is_a_folder(capsys, tmp_path):
    one_line(capsys, str(tmp_path), "train", str(tmp_path))


def test_config_that_is_not_a_mapping(capsys, tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    one_line(capsys, "list.yaml", "check", str(path))


def test_sample_without_a_run(capsys, tmp_path):
    one_line(capsys, "no such run directory", "sample", str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    one_line(capsys, "no complete checkpoint", "sample", str(tmp_path / "empty"))


def test_analyze_a_file_that_is_not_samples(capsys, tmp_path):
    one_line(capsys, "missing.h5", "analyze", str(tmp_path / "missing.h5"))
    (tmp_path / "text.h5").write_text("not hdf5")
    one_line(capsys, "text.h5", "analyze", str(tmp_path / "text.h5"))
    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = [1, 2, 3]
    one_line(capsys, "foreign.h5", "analyze", str(tmp_path / "foreign.h5"))


def test_broken_yaml_is_one_line_with_its_place(capsys, tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("lattice: {shape: [4, 4], group: U1\naction: {beta: 1.0}\n")
    line = one_line(capsys, "broken.yaml", "train", str(path), "-o", str(tmp_path / "r"))
    assert "line 2, column 7" in line and "flow mapping from line 1, column 10" in line
    path.write_text("lattice:\n  shape: [4, 4]\n   group: U1\n")
    assert "line 3, column 4" in one_line(capsys, "broken.yaml", "check", str(path))
    assert not (tmp_path / "r").exists()


def test_counts_must_be_positive(capsys, config, tmp_path):
    one_line(capsys, "--n", "hmc", str(config), "-o", str(tmp_path / "h"), "--n", "0")
    one_line(capsys, "--n", "check", str(config), "--n", "-3")
    assert not (tmp_path / "h").exists()


@pytest.fixture
def empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("{}\n")
    return str(path)


def test_resume_with_another_lattice(capsys, tmp_path, empty):
    run = tmp_path / "r"
    assert main(["train", empty, "-o", str(run), *sets(*TINY_U1, "train.steps=2")]) == 0
    capsys.readouterr()
    one_line(capsys, "cannot resume", "train", empty, "-o", str(run),
             *sets(*TINY_U1, "train.steps=4", "lattice.shape=[8, 8]"))


def test_init_from_nothing_or_another_model(capsys, tmp_path, empty):
    run = tmp_path / "r"
    one_line(capsys, "missing", "train", empty, "-o", str(run),
             *sets(*TINY_U1, f"train.init_from={tmp_path / 'missing'}"))
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    # with a first stage, which starts from init_from: no empty RUN_DIR/pretrain either
    one_line(capsys, "missing", "train", empty, "-o", str(run),
             *sets(*TINY_U1, "lattice.shape=[8, 8]", "train.pretrain={shape: [4, 4], steps: 2}",
                   f"train.init_from={tmp_path / 'missing'}"))
    assert not (run / "pretrain").exists() and not (run / "config.yaml").exists()
    assert main(["train", empty, "-o", str(run), *sets(*TINY_U1, "train.steps=2")]) == 0
    capsys.readouterr()
    one_line(capsys, "train.init_from", "train", empty, "-o", str(tmp_path / "s"),
             *sets(*TINY_U1, "model.bins=6", f"train.init_from={run}"))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    one_line(capsys, "junk.pt", "train", empty, "-o", str(tmp_path / "j"),
             *sets(*TINY_U1, f"train.init_from={tmp_path / 'junk.pt'}"))


def test_resume_a_stochastic_flow_with_other_knots(capsys, tmp_path, empty):
    """The knots set the parameters' shapes: a clear refusal, not a state-dict error."""
    run = tmp_path / "r"
    snf = (*TINY_U1, "sampler.kind=snf", "sampler.steps=4", "sampler.knots=2")
    assert main(["train", empty, "-o", str(run), *sets(*snf, "train.steps=2")]) == 0
    capsys.readouterr()
    line = one_line(capsys, "cannot resume", "train", empty, "-o", str(run),
                    *sets(*snf, "train.steps=4", "sampler.knots=3"))
    assert "sampler.knots" in line


def test_two_ranks_one_message_for_a_batch_that_does_not_split(tmp_path, empty):
    """Found after the ranks started: every rank stops, the message is printed once."""
    cmd = [mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", "-m", "hpcflow", "train", empty,
           "-o", str(tmp_path / "r"), *sets(*TINY_U1, "train.batch_size=7")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env=clean_env())
    assert res.returncode == 2
    lines = [ln for ln in res.stderr.splitlines() if "train.batch_size" in ln]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr


def test_protocol_that_does_not_change_the_coupling():
    """beta_start equal to action.beta: nothing to anneal, refused naming the key."""
    from hpcflow import load_config
    from hpcflow.errors import ConfigError

    with pytest.raises(ConfigError, match="sampler.beta_start"):
        load_config(None, ["lattice.shape=[4,4]", "lattice.group=U1", "action.beta=2.0",
                           "sampler.kind=annealing", "sampler.beta_start=2.0",
                           "sampler.start=x.h5"])
