"""Defaults: a configuration with only a lattice and an action trains, on any lattice some mask
fits (6x6, 6^3, 6^4 need other masks than the width-4 ones), with SU(N) in float64."""

import math

import pytest

from hpcflow import load_config
from hpcflow.app.metrics import read_metrics
from hpcflow.app.train import Trainer
from tests.helpers import run_ctx

SHORT = ["train.eval_every=0", "train.plot=false", "train.log_every=1", "distributed.threads=1"]


def minimal(shape, group, *extra):
    return load_config(None, [f"lattice.shape={list(shape)}", f"lattice.group={group}",
                              "action.beta=1.0", *SHORT, *extra])


@pytest.mark.parametrize("shape", [(6, 6), (6, 6, 6), (6, 6, 6, 6)])
def test_default_masks_train_on_lattices_of_six(tmp_path, shape):
    cfg = minimal(shape, "U1", "train.steps=2", "train.batch_size=2")
    assert {p.width for p in cfg.model.masks} == {3}
    result = Trainer(cfg, run_ctx(tmp_path)).run()
    assert result.step == 2 and math.isfinite(result.last["loss"])


def test_defaults_depend_on_group_and_dimension():
    su3_4d = minimal((4, 4, 4, 4), "SU3")
    assert su3_4d.model.dtype == "float64" and su3_4d.model.features == ["plaquette"]
    assert su3_4d.model.net.conv == "factorized"
    u1_2d = minimal((8, 8), "U1")
    assert u1_2d.model.dtype == "float32" and u1_2d.model.features == ["plaquette", "rectangle"]
    assert u1_2d.model.net.conv == "full" and [p.width for p in u1_2d.model.masks] == [4, 4]
    # explicit choices are kept
    assert minimal((8, 8), "SU2", "model.dtype=float32").model.dtype == "float32"


@pytest.mark.parametrize("group, shape", [("U1", (8, 8)), ("SU2", (4, 4)), ("SU3", (4, 4)),
                                          ("U1", (2, 2, 2, 2)), ("SU3", (2, 2, 2, 2))])
def test_minimal_config_loss_falls(tmp_path, group, shape):
    """The defaults (lr, optimizer, nets) learn: mean loss of the last 4 of 16 steps below that
    of the first 4, by more than the batch noise."""
    cfg = minimal(shape, group, "train.steps=16", "train.batch_size=16")
    Trainer(cfg, run_ctx(tmp_path)).run()
    loss = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    first, last = sum(loss[:4]) / 4, sum(loss[-4:]) / 4
    assert last < first, loss
