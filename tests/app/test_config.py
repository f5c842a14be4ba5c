"""Configuration: defaults, YAML-typed overrides, and refusals that name the key."""

import pytest

from hpcflow import ConfigError, InputFileError, load_config
from hpcflow.app.config import apply_overrides

MINIMAL = ["lattice.shape=[8, 8]", "lattice.group=U1", "action.beta=2.0"]


def test_minimal_config_gets_defaults():
    cfg = load_config(None, MINIMAL)
    assert cfg.lattice.shape == [8, 8] and cfg.lattice.nd == 2 and cfg.lattice.volume == 64
    assert cfg.action.beta == 2.0 and cfg.action.c1 == 0.0
    assert cfg.train.batch_size > 0 and cfg.distributed.backend == "auto"
    assert cfg.model.multi_update == 1 and cfg.model.active_loops == ["plaquette"]


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lattice: {shape: [4, 4, 4], group: SU3}\naction: {beta: 5}\n")
    cfg = load_config(path, ["action.beta=6.5", "train.seed=7", "lattice.shape=[6,6,6]"])
    assert cfg.action.beta == 6.5 and isinstance(cfg.action.beta, float)
    assert cfg.train.seed == 7 and cfg.lattice.shape == [6, 6, 6]


def test_resolved_yaml_round_trips(tmp_path):
    cfg = load_config(None, MINIMAL + ["model.masks=[{directions: [0], steps: [0, 1], width: 4}, "
                                       "{directions: [1], steps: [1, 0], width: 2}]"])
    path = tmp_path / "resolved.yaml"
    path.write_text(cfg.to_yaml())
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    "override, key",
    [
        ("lattice.shape=[8]", "lattice.shape"),
        ("lattice.shape=[8, 8, 8, 8, 8]", "lattice.shape"),
        ("lattice.shape=[8, 0]", "lattice.shape"),
        ("lattice.shape=[8, -2]", "lattice.shape"),
        ("lattice.shape=eight", "lattice.shape"),
        ("lattice.shape=[8, 8.5]", r"lattice.shape\[1\]"),
        ("lattice.group=SO3", "lattice.group"),
        ("lattice.group=SU1", "lattice.group"),
        ("lattice.group=3", "lattice.group"),
        ("action.beta=-1", "action.beta"),
        ("action.beta=.inf", "action.beta"),
        ("action.beta=abc", "action.beta"),
        ("train.steps=1.5", "train.steps"),
        ("train.batch_size=0", "train.batch_size"),
        ("train.seed=true", "train.seed"),
        ("train.max_inverse_error=-1", "train.max_inverse_error"),
        ("train.ema=1", "train.ema"),
        ("train.ema=-0.5", "train.ema"),
        ("distributed.backend=nccl", "distributed.backend"),
        ("distributed.device=tpu", "distributed.device"),
        ("model.multi_update=0", "model.multi_update"),
        ("model.features=[hexagon]", r"model.features\[0\]"),
        ("model.masks=[{directions: [0], stepz: [1, 0]}]", r"model.masks\[0\].stepz"),
        ("train.pretrain={shape: [4, 4]}", "train.pretrain.steps"),
        ("train.pretrain={steps: 10}", "train.pretrain.shape"),
        ("train.pretrain={shape: [4, 0], steps: 10}", "train.pretrain.shape"),
        ("train.pretrain={shape: [4, 4, 4], steps: 10}", "train.pretrain.shape"),
        ("train.pretrain={shape: [3, 3], steps: 10}", "train.pretrain.shape"),  # width-4 masks
        ("train.pretrain.steps=-1", "train.pretrain.steps"),
        ("lattice.colour=3", "lattice.colour"),
        ("trian.steps=3", "trian"),
        ("lattice=3", "lattice"),
    ],
)
def test_bad_values_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=f"config key '{key}'"):
        load_config(None, MINIMAL + [override])


@pytest.mark.parametrize("missing", ["lattice.shape", "lattice.group", "action.beta"])
def test_required_keys(missing):
    overrides = [o for o in MINIMAL if not o.startswith(missing)]
    with pytest.raises(ConfigError, match=missing):
        load_config(None, overrides)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides({}, ["action.beta"])
    with pytest.raises(ConfigError, match="action.beta"):
        apply_overrides({"action": {"beta": 1}}, ["action.beta.x=2"])


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputFileError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lattice: [unclosed\n")
    with pytest.raises(InputFileError, match="bad.yaml"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(InputFileError, match="scalar.yaml"):
        load_config(scalar)


def test_pretrain_stage_configuration():
    """``train.pretrain``: the first stage trains the same model on the smaller lattice at
    a constant rate; a stochastic flow has no first stage."""
    from hpcflow.app.config import pretrain_config

    cfg = load_config(None, MINIMAL + ["train.pretrain={shape: [4, 4], steps: 30}",
                                       "train.init_from=elsewhere", "train.batch_size=32"])
    small = pretrain_config(cfg)
    assert small.lattice.shape == [4, 4] and small.model == cfg.model
    assert (small.train.steps, small.train.schedule, small.train.eval_every) == (30, "constant", 0)
    assert small.train.pretrain.steps == 0 and small.train.init_from == "elsewhere"
    assert small.train.batch_size == 32 and small.action == cfg.action
    assert pretrain_config(load_config(None, MINIMAL)) is None
    with pytest.raises(ConfigError, match="config key 'train.pretrain'.*snf"):
        load_config(None, MINIMAL + ["train.pretrain={shape: [4, 4], steps: 30}",
                                     "sampler.kind=snf"])
