"""Typed, validated configuration: YAML files plus ``--set key=value`` overrides.

Each section is a dataclass with defaults; the loader walks the type hints, so a section is
declared once and validated everywhere (CONTRACTS.md, "Configuration keys"). Every error is a
:class:`ConfigError` naming the dotted key and what was expected. Validation happens once, here,
at the boundary; the rest of the code trusts the structures it receives.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, InputFileError

__all__ = [
    "Config",
    "LatticeConfig",
    "ActionConfig",
    "MaskPattern",
    "ModelConfig",
    "NetConfig",
    "TrainConfig",
    "SampleConfig",
    "DistributedConfig",
    "HMCConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
]


# ----------------------------------------------------------------------------------- sections
@dataclass
class LatticeConfig:
    """``lattice``: periodic hypercubic lattice and gauge group."""

    shape: list[int] = field(default_factory=list)
    """Extents ``[L_0, ..., L_{Nd-1}]``, Nd = 2, 3 or 4 (required)."""
    group: str = ""
    """``U1``, ``SU2``, ``SU3`` or ``SU<N>`` (required)."""

    def check(self, key: str) -> None:
        if not self.shape:
            raise ConfigError(f"{key}.shape", "is required: a list of 2 to 4 positive extents")
        if not 2 <= len(self.shape) <= 4 or any(x < 1 for x in self.shape):
            raise ConfigError(
                f"{key}.shape",
                f"expected 2 to 4 positive extents (Nd = 2, 3, 4), got {self.shape}",
            )
        if not self.group:
            raise ConfigError(f"{key}.group", "is required: U1, SU2, SU3 or SU<N>")
        m = re.fullmatch(r"SU(\d+)", self.group)
        if self.group != "U1" and not (m and int(m.group(1)) >= 2):
            raise ConfigError(f"{key}.group", f"expected U1 or SU<N> (N >= 2), got {self.group!r}")

    @property
    def nd(self) -> int:
        return len(self.shape)

    @property
    def volume(self) -> int:
        return math.prod(self.shape)


@dataclass
class ActionConfig:
    """``action``: Wilson gauge action ``-(beta/Nc) sum [c0 Re tr P + c1 Re tr R]``."""

    beta: float = math.nan
    """Coupling (required, > 0)."""
    c1: float = 0.0
    """Rectangle coefficient; 0 is the Wilson action, -1/12 Lüscher-Weisz, -0.331 Iwasaki."""

    def check(self, key: str) -> None:
        if math.isnan(self.beta):
            raise ConfigError(f"{key}.beta", "is required: a positive coupling")
        if not (self.beta > 0 and math.isfinite(self.beta)):
            raise ConfigError(f"{key}.beta", f"expected a finite positive number, got {self.beta}")


@dataclass
class MaskPattern:
    """One generalized checkerboard (talk: "Algorithm for masking pattern").

    A link ``(x, mu)`` is active iff ``mu in directions`` and
    ``(sum_nu steps[nu] * x_nu + offset) mod width == 0``; the layers cycle the offset.
    """

    directions: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    width: int = 2


@dataclass
class NetConfig:
    """``model.net``: the context CNN of every coupling layer (periodic padding)."""

    hidden: list[int] = field(default_factory=lambda: [32, 32])
    """Hidden channel counts, one convolution each."""
    kernel_size: int = 3
    """Odd kernel extent along every lattice axis."""
    activation: Literal["tanh", "gelu", "relu", "silu", "leaky_relu"] = "tanh"
    conv: Literal["full", "factorized", "tucker"] = "full"
    """``full``: dense ConvNd (4D from 3D convolutions); ``factorized``: CP; ``tucker``."""
    rank: int = 8
    """Rank of factorized (CP/Tucker) convolutions."""

    def check(self, key: str) -> None:
        for i, h in enumerate(self.hidden):
            _positive(h, f"{key}.hidden[{i}]")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ConfigError(f"{key}.kernel_size", f"expected an odd positive integer, "
                              f"got {self.kernel_size}")
        _positive(self.rank, f"{key}.rank")


@dataclass
class ModelConfig:
    """``model``: the flow's layers, masks and loops. Empty values take defaults for the
    lattice (see :func:`hpcflow.masks.default_patterns`)."""

    layers: int = 0
    """Number of coupling layers; 0: one full cycle of every pattern over its offsets."""
    masks: list[MaskPattern] = field(default_factory=list)
    """Patterns cycled over the layers: layer i uses pattern ``i % P`` with offset
    ``(i // P) % width``."""
    active_loops: list[str] = field(default_factory=lambda: ["plaquette"])
    """Loop shapes whose open loops update the active links."""
    features: list[str] = field(default_factory=list)
    """Frozen loop shapes fed to the context network; empty: every shape the lattice has."""
    multi_update: int = 1
    """Sequential updates of each active link per layer, each through another active loop."""
    transform: Literal["spline", "ncp"] = "spline"
    """U(1) loop transform: circular rational-quadratic spline with bias, or NCP mixture."""
    bins: int = 8
    """Spline bins (or NCP mixture components)."""
    net: NetConfig = field(default_factory=NetConfig)
    dtype: Literal["float32", "float64"] = "float32"
    """Precision of the flow's parameters and arithmetic."""

    def check(self, key: str) -> None:
        _positive(self.layers, f"{key}.layers", allow_zero=True)
        _positive(self.bins, f"{key}.bins")
        self.net.check(f"{key}.net")
        _positive(self.multi_update, f"{key}.multi_update")
        for name in ("active_loops", "features"):
            for i, shape in enumerate(getattr(self, name)):
                if shape not in ("plaquette", "rectangle", "chair", "crown"):
                    raise ConfigError(
                        f"{key}.{name}[{i}]",
                        f"expected plaquette, rectangle, chair or crown, got {shape!r}",
                    )
        for i, pat in enumerate(self.masks):
            _positive(pat.width, f"{key}.masks[{i}].width")


@dataclass
class TrainConfig:
    """``train``: reverse-KL training."""

    steps: int = 1000
    """Total optimizer steps; a resumed run continues to this number."""
    batch_size: int = 64
    """GLOBAL batch per step, summed over all ranks."""
    seed: int = 0
    """Master seed; results depend on it, not on the number of ranks."""
    lr: float = 1e-3
    """Initial learning rate."""
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
    """Learning-rate policy (talk: "Scheduler policy": several decreasing stages)."""
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.9])
    """multistep: fractions of ``steps`` at which the rate is multiplied by ``gamma``."""
    gamma: float = 0.3
    gradient: Literal["reparameterized", "path"] = "reparameterized"
    """Gradient estimator of the reverse KL. ``reparameterized``: backward through
    ``log q + S`` of the forward pass. ``path``: drop the score term, whose mean is zero but
    whose noise does not vanish as ``q -> p`` (Roeder et al. 2017, arXiv:1703.09194; for lattice
    flows Vaitl et al. 2022, arXiv:2206.09016): ``log q`` is re-evaluated at ``U = f(z)`` by the
    inverse pass with frozen parameters; about twice the cost of a step."""
    amsgrad: bool = True
    """Adam with amsgrad (talk: long runs can go unstable with plain Adam)."""
    weight_decay: float = 0.0
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    micro_batch_size: int = 0
    """Samples per forward/backward pass on a rank (gradient accumulation); 0: all at once."""
    recompute_layers: bool = False
    """Activation checkpointing: keep only each coupling layer's input and recompute the layer
    in the backward pass (memory of about one layer instead of all; ~1.5x the step time)."""
    log_every: int = 10
    """Steps between metrics.jsonl lines and progress updates."""
    eval_every: int = 100
    """Steps between evaluations on a larger batch (ESS, log Z, acceptance); 0 disables."""
    eval_batch_size: int = 1024
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    walltime: str | float = ""
    """Stop in time to checkpoint before this much wall time, ``HH:MM:SS`` or seconds."""
    max_bad_steps: int = 10
    """Consecutive bad steps (non-finite, or over ``max_inverse_error``) tolerated, each
    skipped, before the run stops."""
    max_inverse_error: float = 1.0
    """``gradient: path`` only: the largest ``|log q(forward) - log q(inverse)|`` (nats, any
    sample) a step may have. The path gradient is valid only if the inverse pass reproduces
    the forward map; a sharp float32 flow can lose it, and its path gradients then drive the
    loss up. Such a step is skipped and counted as bad. 0 disables the check."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bitwise reproducible runs and restarts."""
    tensorboard: bool = False
    plot: bool = True
    """Write loss/ESS/acceptance plots (PNG) at the end of training."""

    def check(self, key: str) -> None:
        _positive(self.steps, f"{key}.steps", allow_zero=True)
        _positive(self.batch_size, f"{key}.batch_size")
        _positive(self.seed, f"{key}.seed", allow_zero=True)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"{key}.lr", f"expected a positive learning rate, got {self.lr}")
        if sorted(self.milestones) != self.milestones or any(
                not 0 < m < 1 for m in self.milestones):
            raise ConfigError(f"{key}.milestones", "expected increasing fractions of train.steps "
                              f"between 0 and 1, got {self.milestones}")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"{key}.gamma", f"expected a factor in (0, 1], got {self.gamma}")
        for name in ("weight_decay", "grad_clip", "max_inverse_error"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name}", "expected a non-negative number")
        for name in ("micro_batch_size", "eval_every", "max_bad_steps"):
            _positive(getattr(self, name), f"{key}.{name}", allow_zero=True)
        for name in ("log_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
            _positive(getattr(self, name), f"{key}.{name}")
        self.walltime_seconds(key)

    def walltime_seconds(self, key: str = "train") -> float:
        """``walltime`` in seconds (``inf`` when unset)."""
        if isinstance(self.walltime, int | float):
            if self.walltime <= 0:
                raise ConfigError(f"{key}.walltime", f"expected a positive duration, "
                                  f"got {self.walltime}")
            return float(self.walltime)
        text = self.walltime.strip()
        if not text:
            return math.inf
        try:
            parts = [float(p) for p in text.split(":")]
        except ValueError:
            parts = []
        if not 1 <= len(parts) <= 3 or any(p < 0 for p in parts):
            raise ConfigError(f"{key}.walltime", f"expected HH:MM:SS or seconds, got {text!r}")
        seconds = 0.0
        for p in parts:
            seconds = 60 * seconds + p
        return seconds


@dataclass
class SampleConfig:
    """``sample``: drawing ensembles from a trained flow."""

    n_samples: int = 4096
    """Default N for ``hpcflow sample``."""
    batch_size: int = 256
    """Proposals drawn per batch on each rank."""

    def check(self, key: str) -> None:
        _positive(self.n_samples, f"{key}.n_samples")
        _positive(self.batch_size, f"{key}.batch_size")


@dataclass
class HMCConfig:
    """``hmc``: the conventional reference chain of ``hpcflow hmc`` (one chain per rank)."""

    n_steps: int = 10
    """Integrator steps per trajectory."""
    step_size: float = 0.1
    """Initial step size; tuned during thermalization to ``target_acceptance``, then fixed."""
    integrator: Literal["omelyan", "leapfrog"] = "omelyan"
    target_acceptance: float = 0.8
    thermalization: int = 200
    """Trajectories before the first saved configuration (step size tuned meanwhile)."""
    save_every: int = 1
    """Trajectories between saved configurations."""
    start: Literal["hot", "cold"] = "hot"

    def check(self, key: str) -> None:
        _positive(self.n_steps, f"{key}.n_steps")
        _positive(self.save_every, f"{key}.save_every")
        _positive(self.thermalization, f"{key}.thermalization", allow_zero=True)
        if not self.step_size > 0:
            raise ConfigError(f"{key}.step_size", f"expected a positive number, "
                              f"got {self.step_size}")
        if not 0 < self.target_acceptance < 1:
            raise ConfigError(f"{key}.target_acceptance", "expected a probability in (0, 1), "
                              f"got {self.target_acceptance}")


@dataclass
class DistributedConfig:
    """``distributed``: how ranks talk and which device each uses."""

    backend: Literal["auto", "none", "mpi", "torch", "horovod"] = "auto"
    device: Literal["auto", "cpu", "cuda", "xpu"] = "auto"
    threads: int = 0
    """CPU threads per rank for torch; 0: the node's cores split over its ranks, or torch's
    default where OMP_NUM_THREADS is set or the launcher binds the ranks to cores."""

    def check(self, key: str) -> None:
        _positive(self.threads, f"{key}.threads", allow_zero=True)


@dataclass
class Config:
    """The whole run configuration. Only ``lattice`` and ``action`` must be given."""

    lattice: LatticeConfig = field(default_factory=LatticeConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    hmc: HMCConfig = field(default_factory=HMCConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def check(self, key: str = "") -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "check"):
                section.check(f.name)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def _positive(value: int, key: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        expected = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(key, f"expected {expected}, got {value}")


# ------------------------------------------------------------------------------------ loading
def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML file, apply ``key=value`` overrides (values parsed as YAML), validate.

    ``path`` may be ``None`` to build from overrides alone. Raises :class:`InputFileError` for a
    missing or unreadable file and :class:`ConfigError` naming the key for everything else.
    """
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputFileError(path, f"cannot read configuration: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise InputFileError(path, f"not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise InputFileError(path, "expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides)
    return config_from_dict(data)


def apply_overrides(data: dict[str, Any], overrides) -> dict[str, Any]:
    """Return a copy of ``data`` with each ``a.b.c=value`` applied (YAML-typed value)."""
    out = _deep_copy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(item, "an override must look like KEY=VALUE, e.g. action.beta=3.0")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(key or item, "empty key in override")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(key, f"cannot parse value {raw!r} as YAML") from None
        node = out
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(".".join(parts[: i + 1]), "is not a section; cannot set a subkey")
            node = nxt
        node[parts[-1]] = value
    return out


def _deep_copy(data):
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain data (e.g. a checkpoint's copy)."""
    cfg = _build(Config, data, "")
    cfg.check()
    return cfg


def _build(cls, data, key: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(key, f"expected a mapping (section), got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in data:
        if name not in fields:
            where = f"{key}.{name}" if key else str(name)
            raise ConfigError(where, f"unknown key; expected one of {', '.join(fields)}")
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{key}.{name}" if key else name)
    return cls(**kwargs)


def _coerce(tp, value, key: str):
    """Check ``value`` against the type hint ``tp`` and convert where it is lossless."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(exc.expected)
        raise ConfigError(key, " or ".join(errors) + f", got {_describe(value)}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            raise ConfigError(key, f"expected one of {choices}, got {_describe(value)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        item_tp = args[0] if args else Any
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {_describe(value)}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in a section, not input


def _describe(value) -> str:
    return f"{value!r} ({type(value).__name__})" if value is not None else "nothing (null)"
