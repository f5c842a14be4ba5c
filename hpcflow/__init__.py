"""hpcflow: gauge-equivariant normalizing flows for U(1) and SU(N) lattice gauge theory in
2, 3 and 4 dimensions (Boyda, Lattice 2021; arXiv:2305.02402).

Public API (CONTRACTS.md, "Python API")::

    cfg = hpcflow.load_config("configs/u1_2d.yaml", overrides=["action.beta=3.0"])
    model = hpcflow.build_model(cfg)        # untrained flow for that configuration
    model = hpcflow.load_model("runs/u1")   # trained flow, newest complete checkpoint
    U, log_q = model.sample(256)            # U: [256, Nd, *L, Nc, Nc] complex; log_q: [256]
    log_q2 = model.log_prob(U)              # inverse pass; gauge invariant
    S = hpcflow.build_action(cfg)(U)        # [256]
"""

from ._version import __version__
from .config import Config, load_config
from .errors import ConfigError, HpcflowError, InputFileError
from .lattice.action import GaugeAction
from .lattice.groups import get_group

__all__ = [
    "__version__",
    "Config",
    "ConfigError",
    "HpcflowError",
    "InputFileError",
    "build_action",
    "build_model",
    "load_config",
    "load_model",
]


def build_action(cfg: Config) -> GaugeAction:
    """The target action of a configuration: a callable ``links [B, Nd, *L, Nc, Nc] -> [B]``."""
    return GaugeAction(get_group(cfg.lattice.group), cfg.action.beta, cfg.action.c1)


def build_model(cfg: Config):
    """An untrained flow for a configuration (identity map, ``log q = 0``)."""
    from .flows.model import build_model as _build

    return _build(cfg)


def load_model(run_dir, *, device=None):
    """The trained flow of a run directory, from its newest complete checkpoint.

    Returns the model in eval mode with ``model.config`` and ``model.checkpoint_step`` set.
    """
    from pathlib import Path

    from .config import config_from_dict
    from .flows.model import build_model as _build
    from .train.checkpoint import load_latest_checkpoint

    run_dir = Path(run_dir)
    ckpt = load_latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise InputFileError(run_dir, "no complete checkpoint in checkpoints/ (train first)")
    cfg = config_from_dict(ckpt["config"])
    model = _build(cfg)
    model.load_state_dict(ckpt["model"])
    if device is not None:
        model = model.to(device)
    model.eval()
    model.config = cfg
    model.checkpoint_step = int(ckpt["step"])
    return model
