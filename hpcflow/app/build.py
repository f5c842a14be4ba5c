"""From a configuration to the library's objects: the action, the sampler, a trained sampler.

The public API of the package (re-exported by ``hpcflow``): ``build_action(cfg)``,
``build_model(cfg)`` (the sampler of ``sampler.kind``: a :class:`~hpcflow.flows.model.GaugeFlow`
or a :class:`~hpcflow.flows.stochastic.StochasticFlow`), ``load_model(run_dir)``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import ConfigError, InputFileError
from ..flows.model import GaugeFlow, build_flow
from ..flows.smearing import StoutSchedule, StoutSmearing, first_order_rho
from ..flows.stochastic import OnLinks, StochasticFlow, power_protocol
from ..io.checkpoint import load_checkpoint, load_latest_checkpoint
from ..kernels import fused_kernels_error
from ..lattice.action import GaugeAction
from ..lattice.algebra import algebra_basis
from ..lattice.groups import get_group
from ..masks import build_schedule
from .config import Config, config_from_dict, mask_schedule
from .optim import ParameterAverage

__all__ = ["build_action", "build_model", "fused_kernel", "load_model", "model_from_checkpoint",
           "protocol", "read_checkpoint", "restore_average"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


def build_action(cfg: Config) -> GaugeAction:
    """The target action of a configuration: a callable ``links [B, Nd, *L, Nc, Nc] -> [B]``."""
    return GaugeAction(get_group(cfg.lattice.group), cfg.action.beta, cfg.action.c1)


def build_model(cfg: Config) -> GaugeFlow | StochasticFlow:
    """The untrained sampler of a configuration: a flow (the identity map, ``log q = 0``), an
    annealing protocol, or a stochastic flow whose flow layers start as the identity (coupling
    layers) or at their first-order step (stout layers, ``sampler.init``)."""
    if cfg.sampler.kind == "flow":
        return _flow(cfg, mask_schedule(cfg))
    s = cfg.sampler
    group = get_group(cfg.lattice.group)
    layers, positions = [], []
    if s.kind == "snf":
        n_layers = s.layers or s.steps
        # evenly over the steps, the last one right before the last updates
        positions = [-(-(i + 1) * s.steps // n_layers) for i in range(n_layers)]
        if s.layer == "stout":
            first = s.init == "first_order" or (s.init == "auto" and s.beta_start == 0)
            init = 1.0 if first else 0.0
            betas = protocol(cfg)
            basis = algebra_basis(group)
            shared = (StoutSchedule(len(cfg.lattice.shape), [p / s.steps for p in positions],
                                    s.knots, init=init) if s.knots else None)
            layers = [StoutSmearing(group, cfg.lattice.shape, schedule=shared, index=i,
                                    rho_unit=first_order_rho(basis, betas[p] - betas[p - 1]),
                                    init=init)
                      for i, p in enumerate(positions)]
        else:
            m = cfg.model
            schedule = build_schedule(cfg.lattice.shape, m.masks, layers=n_layers,
                                      active_shapes=m.active_loops, feature_shapes=m.features,
                                      multi_update=m.multi_update, require_coverage=False)
            flow = _flow(cfg, schedule)
            layers = [OnLinks(layer, flow.link_transform) for layer in flow.layers]
    return StochasticFlow(group, cfg.lattice.shape, protocol(cfg), sweeps=s.sweeps,
                          overrelax=s.overrelax, layers=layers, positions=positions)


def protocol(cfg: Config) -> list[float]:
    """``[beta_0, ..., beta_n]`` of ``sampler`` (``beta_n = action.beta``)."""
    s = cfg.sampler
    return power_protocol(s.beta_start, cfg.action.beta, s.steps, s.power)


def fused_kernel(choice: str, key: str = "distributed.splines") -> bool:
    """``distributed.splines`` or ``distributed.kernels`` (``key``) resolved: whether the flow
    asks for the fused C++ kernels for CPU tensors (:mod:`hpcflow.kernels`). ``auto``: yes;
    the kernels are built at their first use on a CPU (never on a GPU run or in compiled
    layers), and where they cannot be, the flow runs tensor operations with one warning saying
    why; ``fused``: built now, a :class:`ConfigError` naming ``key`` where they cannot be;
    ``torch``: no."""
    if choice == "torch":
        return False
    if choice == "fused":
        error = fused_kernels_error()
        if error is not None:
            raise ConfigError(key, f"the fused CPU kernels cannot be built here ({error}); use "
                              "auto or torch")
    return True


def _flow(cfg: Config, schedule) -> GaugeFlow:
    m, d = cfg.model, cfg.distributed
    flow = build_flow(get_group(cfg.lattice.group), schedule, transform=m.transform,
                      bins=m.bins, hidden=m.net.hidden, kernel_size=m.net.kernel_size,
                      activation=m.net.activation, conv=m.net.conv, rank=m.net.rank,
                      dtype=DTYPES[m.dtype], eig=m.eig,
                      fused=fused_kernel(d.splines, "distributed.splines"),
                      fused_kernels=fused_kernel(d.kernels, "distributed.kernels"))
    return flow.compile_layers() if d.compile else flow


def restore_average(average: ParameterAverage, ckpt: dict) -> None:
    """Take over checkpoint ``ckpt``'s saved parameter average (``train.ema``; its names and
    shapes checked by :meth:`ParameterAverage.load_state_dict`): a mismatch is an
    :class:`InputFileError` naming the checkpoint. Used on resume and by :func:`load_model`."""
    try:
        average.load_state_dict(ckpt["average"])
    except ValueError as err:
        raise InputFileError(ckpt["path"], err.args[0]) from None


def load_model(run_dir: str | Path, *, device: str | torch.device | None = None
               ) -> GaugeFlow | StochasticFlow:
    """The trained sampler of a run directory, from its newest complete checkpoint: its
    parameters' moving average where training kept one (``train.ema``), else its parameters.

    Returns the model in eval mode with ``model.config`` and ``model.checkpoint_step`` set.
    """
    run_dir = Path(run_dir)
    ckpt = load_latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise InputFileError(run_dir, "no complete checkpoint in checkpoints/ (train first)")
    model = model_from_checkpoint(ckpt)
    if device is not None:
        model = model.to(device)
    return model


def read_checkpoint(source: str | Path) -> dict:
    """The checkpoint ``source`` names: a checkpoint file, or a run directory's newest
    complete one; an :class:`InputFileError` naming ``source`` when there is none."""
    source = Path(source)
    if source.is_dir():
        ckpt = load_latest_checkpoint(source / "checkpoints")
        if ckpt is None:
            raise InputFileError(source, "no complete checkpoint in checkpoints/ (train first)")
        return ckpt
    try:
        return load_checkpoint(source)
    except FileNotFoundError:
        raise InputFileError(source, "no such run directory or checkpoint file") from None
    except (OSError, ValueError) as err:
        raise InputFileError(source, str(err)) from None


def model_from_checkpoint(ckpt: dict) -> GaugeFlow | StochasticFlow:
    """The sampler checkpoint ``ckpt`` holds, on the CPU in eval mode: its parameters' moving
    average where training kept one (``train.ema``), else its parameters; ``model.config`` and
    ``model.checkpoint_step`` set."""
    cfg = config_from_dict(ckpt["config"])
    model = build_model(cfg)
    model.load_state_dict(ckpt["model"])
    if ckpt.get("average"):
        # by parameter, not through load_state_dict: a parameter shared by several layers (a
        # stochastic flow's stout schedule, sampler.knots) has one entry in the average but
        # one per layer in the state dict, and the raw copies would win
        average = ParameterAverage.of(model)
        restore_average(average, ckpt)
        average.copy_to_parameters()
    model.eval()
    model.config = cfg
    model.checkpoint_step = int(ckpt["step"])
    return model
