"""From a configuration to the library's objects: the action, the flow, a trained flow.

These are the public API of the package (re-exported by ``hpcflow``):
``build_action(cfg)``, ``build_model(cfg)``, ``load_model(run_dir)``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import InputFileError
from ..flows.model import GaugeFlow, build_flow
from ..io.checkpoint import load_latest_checkpoint
from ..lattice.action import GaugeAction
from ..lattice.groups import get_group
from .config import Config, config_from_dict, mask_schedule

__all__ = ["build_action", "build_model", "load_model"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_action(cfg: Config) -> GaugeAction:
    """The target action of a configuration: a callable ``links [B, Nd, *L, Nc, Nc] -> [B]``."""
    return GaugeAction(get_group(cfg.lattice.group), cfg.action.beta, cfg.action.c1)


def build_model(cfg: Config) -> GaugeFlow:
    """An untrained flow for a configuration (the identity map, ``log q = 0``)."""
    m = cfg.model
    return build_flow(get_group(cfg.lattice.group), mask_schedule(cfg), transform=m.transform,
                      bins=m.bins, hidden=m.net.hidden, kernel_size=m.net.kernel_size,
                      activation=m.net.activation, conv=m.net.conv, rank=m.net.rank,
                      dtype=DTYPES[m.dtype])


def load_model(run_dir: str | Path, *, device: str | torch.device | None = None) -> GaugeFlow:
    """The trained flow of a run directory, from its newest complete checkpoint.

    Returns the model in eval mode with ``model.config`` and ``model.checkpoint_step`` set.
    """
    run_dir = Path(run_dir)
    ckpt = load_latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise InputFileError(run_dir, "no complete checkpoint in checkpoints/ (train first)")
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    if device is not None:
        model = model.to(device)
    model.eval()
    model.config = cfg
    model.checkpoint_step = int(ckpt["step"])
    return model
