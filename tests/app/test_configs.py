"""Every shipped configuration loads, and its model builds (cluster-sized ones: the config and
the whole mask schedule only, which is where a lattice/pattern mismatch would show)."""

from pathlib import Path

import pytest
import torch

from hpcflow import build_action, build_model, load_config
from hpcflow.app.config import mask_schedule
from hpcflow.app.propose import propose

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").glob("*.yaml"))
CLUSTER = sorted(p.relative_to(ROOT).as_posix()
                 for p in (ROOT / "configs" / "cluster").glob("*.yaml"))


def test_the_expected_configurations_ship():
    names = {Path(c).stem for c in CONFIGS}
    assert {"demo", "u1_2d", "u1_3d", "u1_4d", "su2_2d", "su2_3d", "su3_2d", "su3_4d"} <= names
    assert len(CLUSTER) >= 2


@pytest.mark.parametrize("path", CONFIGS)
def test_small_config_builds_and_samples(path):
    cfg = load_config(ROOT / path)
    model = build_model(cfg)
    assert cfg.train.steps > 0 and cfg.sample.n_samples > 0
    if cfg.sampler.kind == "flow":
        u, log_w = model.sample(1, seed=0)
    elif cfg.sampler.beta_start > 0:
        return  # starts from an equilibrium ensemble that `hpcflow mcmc` writes first
    else:  # one annealing / stochastic-flow trajectory, a short protocol
        cfg.sampler.steps = 2
        model = build_model(cfg)
        p = propose(model, build_action(cfg), range(1), seed=0, stream=0)
        u, log_w = p.links, p.log_weight
    assert u.shape[1:1 + len(cfg.lattice.shape) + 1] == (len(cfg.lattice.shape),
                                                         *cfg.lattice.shape)
    assert torch.isfinite(log_w).all()


@pytest.mark.parametrize("path", CLUSTER)
def test_cluster_config_loads_and_masks_cover_the_lattice(path):
    cfg = load_config(ROOT / path)
    schedule = mask_schedule(cfg)
    assert len(schedule.layers) == cfg.model.layers
    assert int(schedule.coverage.min()) > 0
