"""Typed, validated configuration: YAML files plus ``--set key=value`` overrides.

Each section is a dataclass with defaults; the loader walks the type hints, so a section is
declared once. This module is the only code that knows configuration keys: :func:`load_config`
builds, resolves (group- and lattice-dependent defaults) and validates a whole configuration,
turning every error of the library underneath (a mask that cannot be exact, a transform that a
group lacks) into a :class:`ConfigError` that names the dotted key. The rest of the code takes
typed arguments. ``docs/config.md`` is generated from these classes (:func:`config_reference`).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import ConfigError, InputFileError
from ..lattice.groups import get_group
from ..masks import MaskError, MaskPattern, Schedule, build_schedule, default_patterns
from ..updates.heatbath import check_lattice

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
    "HeatbathConfig",
    "SamplerConfig",
    "PretrainConfig",
    "load_config",
    "config_from_dict",
    "apply_overrides",
    "check_resumable",
    "pretrain_config",
    "config_reference",
    "sampling_config",
    "mask_schedule",
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
        try:
            get_group(self.group)
        except ValueError:
            raise ConfigError(f"{key}.group", f"expected U1 or SU<N> (N >= 2), "
                                              f"got {self.group!r}") from None

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
class NetConfig:
    """``model.net``: the context CNN of every coupling layer (periodic padding)."""

    hidden: list[int] = field(default_factory=lambda: [32, 32])
    """Hidden channel counts, one convolution each."""
    kernel_size: int = 3
    """Odd kernel extent along every lattice axis."""
    activation: Literal["tanh", "gelu", "relu", "silu", "leaky_relu"] = "tanh"
    """Nonlinearity between the convolutions."""
    conv: Literal["auto", "full", "factorized", "tucker"] = "auto"
    """``full``: dense ConvNd (4D from 3D convolutions); ``factorized``: CP (a 1x1
    convolution to ``rank`` channels, one depthwise 1D convolution per axis, 1x1 out);
    ``tucker``. ``auto``: full up to 3D, factorized in 4D (a dense 3^4 kernel over the
    loop features makes a 4D flow ~100x larger and slower)."""
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
    lattice and group (resolved when the configuration is loaded)."""

    layers: int = 0
    """Number of coupling layers; 0: one full cycle of every pattern over its offsets."""
    masks: list[MaskPattern] = field(default_factory=list)
    """Patterns ``{directions, steps, width}`` cycled over the layers: layer i uses pattern
    ``i % P`` with offset ``(i // P) % width``. Empty: one pattern per link direction, stripes
    with a checkerboard, of the first width of 4, 3, 5, 6, ... that fits the lattice, else the
    width-2 checkerboard (resolved at load time)."""
    active_loops: list[str] = field(default_factory=lambda: ["plaquette"])
    """Loop shapes whose open loops update the active links."""
    features: list[str] = field(default_factory=list)
    """Frozen loop shapes fed to the context network. Empty: by dimension, ``[plaquette,
    rectangle]`` in 2D, ``[plaquette, rectangle, chair]`` in 3D, ``[plaquette]`` in 4D (every
    4D shape costs ~1 GB per SU(3) training sample, plaquettes alone ~60 MB)."""
    multi_update: int = 1
    """Sequential updates of each active link per layer, each through another active loop."""
    transform: Literal["spline", "ncp"] = "spline"
    """U(1) loop transform: circular rational-quadratic spline with bias, or NCP mixture."""
    eig: Literal["closed", "eigh"] = "closed"
    """SU(2)/SU(3) eigen-decomposition in the spectral maps: closed forms (elementwise
    operations only) or batched ``torch.linalg.eigh`` (the reference; slow for tiny matrices on
    GPUs, with open support problems on XPUs). Same maps to rounding."""
    bins: int = 8
    """Spline bins (or NCP mixture components)."""
    net: NetConfig = field(default_factory=NetConfig)
    dtype: Literal["auto", "float32", "float64"] = "auto"
    """Precision of the flow's parameters and arithmetic. ``auto``: float32 for U(1), float64
    for SU(N) (float32 spectral flows lose their inverse after training, perf/RESULTS.md)."""

    def check(self, key: str) -> None:
        _positive(self.layers, f"{key}.layers", allow_zero=True)
        _positive(self.bins, f"{key}.bins")
        self.net.check(f"{key}.net")
        _positive(self.multi_update, f"{key}.multi_update")
        # loop shapes and masks are checked where they are used: mask_schedule()


@dataclass
class PretrainConfig:
    """``train.pretrain``: a first training stage on a smaller lattice (volume transfer), in
    ``RUN_DIR/pretrain``, whose trained flow starts the training on ``lattice.shape``. Every
    layer is a translation-equivariant convolution and spline, so the small lattice's cheaper
    steps learn the local structure first. ``train.walltime`` covers both stages; a resumed run
    skips a finished first stage. U(1) 8x8 at beta = 2 in ten minutes on two ranks: sample ESS
    0.672 after 350 steps on 4x4 against 0.627 on 8x8 alone (perf/RESULTS.md)."""

    shape: list[int] = field(default_factory=list)
    """Extents of the smaller lattice, as many as ``lattice.shape``'s; ``[]``: no first
    stage. Its masks and loops must fit it as they fit ``lattice.shape``."""
    steps: int = 0
    """Optimizer steps on it, at the constant rate ``train.lr``, with the batch, seed and
    ``init_from`` of ``train``; no evaluations."""

    def check(self, key: str) -> None:
        _positive(self.steps, f"{key}.steps", allow_zero=True)
        if bool(self.shape) != bool(self.steps):
            raise ConfigError(f"{key}.shape" if self.steps else f"{key}.steps",
                              "give both train.pretrain.shape and train.pretrain.steps, or "
                              "neither")
        if any(x < 1 for x in self.shape):
            raise ConfigError(f"{key}.shape", f"expected positive extents, got {self.shape}")


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
    """multistep: factor applied to the rate at each milestone."""
    gradient: Literal["reparameterized", "path"] = "reparameterized"
    """Gradient estimator of the reverse KL. ``reparameterized``: backward through
    ``log q + S`` of the forward pass. ``path``: drop the score term, whose mean is zero but
    whose noise does not vanish as ``q -> p`` (Roeder et al. 2017, arXiv:1703.09194; for lattice
    flows Vaitl et al. 2022, arXiv:2207.08219): ``log q`` is re-evaluated at ``U = f(z)`` by the
    inverse pass with frozen parameters, which takes each layer's context network (values and
    backward) from the forward pass unless the layers are compiled or recomputed: ~1.5x the
    cost of a reparameterized step (2x with compiled or recomputed layers)."""
    amsgrad: bool = True
    """Adam with amsgrad (talk: long runs can go unstable with plain Adam)."""
    weight_decay: float = 0.0
    """Decoupled weight decay (AdamW) when positive."""
    grad_clip: float = 0.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    ema: float = 0.0
    """Decay per step of an exponential moving average of the parameters; 0: none, 0.99:
    an average over the last ~100 steps. Evaluations measure the averaged flow, checkpoints
    keep it next to the raw parameters (training continues from those) and ``hpcflow sample``
    draws from it. It settles the flow of a run that stops before its learning rate has
    decayed (``train.walltime``): in 2D U(1), ESS 0.57 against 0.49 at a fixed rate
    (perf/RESULTS.md)."""
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
    """Samples of each evaluation (GLOBAL, split over the ranks)."""
    checkpoint_every: int = 100
    """Steps between checkpoints (one is also written at the end and on a stop signal)."""
    keep_checkpoints: int = 3
    """Newest checkpoints kept; older ones are deleted."""
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
    init_from: str = ""
    """A run directory (its newest complete checkpoint) or a checkpoint file whose trained
    parameters (their moving average, where that run kept one) start this run instead of a
    random initialization; ``""``: none. Its ``lattice.group``, number of dimensions and
    ``model`` must equal this run's; ``lattice.shape``, ``action`` and every ``train`` key may
    differ (every layer is a translation-equivariant convolution and spline): a warm start at
    a new coupling, a new schedule on top of a finished run, or a larger volume. Only a fresh
    run uses it: a resumed run continues from its own checkpoint. The optimizer, the step count
    and the learning-rate schedule start afresh (``train.pretrain`` runs both stages in one
    command)."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    """A first stage on a smaller lattice (below)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms: bitwise reproducible runs and restarts."""
    tensorboard: bool = False
    """Mirror the metrics as TensorBoard scalars in RUN_DIR/tensorboard (needs tensorboard)."""
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
        if not 0 <= self.ema < 1:
            raise ConfigError(f"{key}.ema", f"expected a decay in [0, 1), got {self.ema}")
        for name in ("weight_decay", "grad_clip", "max_inverse_error"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{key}.{name}", "expected a non-negative number")
        for name in ("micro_batch_size", "eval_every", "max_bad_steps"):
            _positive(getattr(self, name), f"{key}.{name}", allow_zero=True)
        for name in ("log_every", "eval_batch_size", "checkpoint_every", "keep_checkpoints"):
            _positive(getattr(self, name), f"{key}.{name}")
        self.walltime_seconds(key)
        self.pretrain.check(f"{key}.pretrain")

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
    """``sample``: drawing and storing ensembles (``hpcflow sample``, the reference chains)."""

    n_samples: int = 4096
    """Default N for ``hpcflow sample``."""
    batch_size: int = 256
    """Proposals drawn per batch on each rank."""
    store: Literal["auto", "all", "chain", "none"] = "auto"
    """Configurations written by ``hpcflow sample`` and the reference chains (the observables
    of every proposal are always stored): ``all`` proposals; ``chain``: the Markov chain's
    state after every ``thin``-th step; ``none``; ``auto``: ``all`` when every proposal's links
    fit in ``max_store_gb``, else ``chain`` with ``thin`` raised until they fit."""
    thin: int = 10
    """Steps of the Markov chain per stored configuration with ``store: chain``."""
    max_store_gb: float = 2.0
    """Budget in GB (1e9 bytes), all ranks together, for the configurations of ``store:
    auto``."""

    def check(self, key: str) -> None:
        _positive(self.n_samples, f"{key}.n_samples")
        _positive(self.batch_size, f"{key}.batch_size")
        _positive(self.thin, f"{key}.thin")
        if not self.max_store_gb > 0:
            raise ConfigError(f"{key}.max_store_gb", f"expected a positive number, got "
                              f"{self.max_store_gb}")


@dataclass
class HMCConfig:
    """``hmc``: the HMC reference chain of ``hpcflow mcmc --algorithm hmc`` (``hpcflow hmc``;
    one chain per rank)."""

    n_steps: int = 10
    """Integrator steps per trajectory."""
    step_size: float = 0.1
    """Initial step size; tuned during thermalization to ``target_acceptance``, then fixed."""
    integrator: Literal["omelyan", "leapfrog"] = "omelyan"
    """Molecular-dynamics integrator (Omelyan's 2nd-order minimum-norm scheme or leapfrog)."""
    target_acceptance: float = 0.8
    """Mean Metropolis probability the step-size tuning aims at."""
    thermalization: int = 200
    """Trajectories before the first saved configuration (step size tuned meanwhile)."""
    save_every: int = 1
    """Trajectories between saved configurations."""
    start: Literal["hot", "cold"] = "hot"
    """Start from Haar-random links (hot) or the identity (cold)."""

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
class HeatbathConfig:
    """``heatbath``: the heat-bath reference chain of ``hpcflow mcmc --algorithm heatbath``
    (one chain per rank; Wilson action; even extents)."""

    overrelax: int = 1
    """Over-relaxation sweeps after each heat-bath sweep (they decorrelate faster and cost no
    random numbers)."""
    thermalization: int = 200
    """Heat-bath sweeps (each with its over-relaxation sweeps) before the first saved
    configuration."""
    save_every: int = 1
    """Sweeps between saved configurations."""
    start: Literal["hot", "cold"] = "hot"
    """Start from Haar-random links (hot) or the identity (cold)."""

    def check(self, key: str) -> None:
        _positive(self.overrelax, f"{key}.overrelax", allow_zero=True)
        _positive(self.thermalization, f"{key}.thermalization", allow_zero=True)
        _positive(self.save_every, f"{key}.save_every")


@dataclass
class SamplerConfig:
    """``sampler``: what draws the configurations. ``flow``: the normalizing flow of ``model``
    (trained by ``hpcflow train``); ``annealing``: non-equilibrium trajectories of exact
    heat-bath updates along a protocol ``beta_0 -> action.beta``, weighted by their work
    (nothing to train); ``snf``: the same with learned flow layers between the updates (a
    stochastic normalizing flow, trained by ``hpcflow train``; ``sampler.layer``)."""

    kind: Literal["flow", "annealing", "snf"] = "flow"
    """Which sampler (see above); annealing and snf need the Wilson action and even extents."""
    steps: int = 100
    """Protocol steps ``n`` (each: a change of beta, the flow layers placed there, updates)."""
    beta_start: float = 0.0
    """``beta_0`` of the protocol: 0 starts from Haar-random links (exact); a positive value
    starts from an equilibrium ensemble at that coupling, read from ``sampler.start``."""
    start: str = ""
    """Samples file (``samples.h5`` of ``hpcflow mcmc`` or ``hpcflow sample``) of the starting
    ensemble when ``beta_start > 0``; its Markov-chain states are used, in order."""
    power: float = 1.0
    """Protocol shape ``beta_k = beta_0 + (beta - beta_0) (k/n)^power``; 1 is linear."""
    sweeps: int = 1
    """Heat-bath sweeps per protocol step."""
    overrelax: int = 0
    """Over-relaxation sweeps after each heat-bath sweep."""
    layer: Literal["stout", "coupling"] = "stout"
    """snf: the flow layers. ``stout``: learned stout smearing, one coupling ``rho`` per
    checkerboard half of the links (``2 Nd`` parameters per layer, every link moved);
    ``coupling``: the gauge-equivariant coupling layers of ``model`` (masks, context networks,
    splines), cycling through its mask layers."""
    layers: int = 0
    """snf: flow layers, spread evenly over the steps (0: one after every step)."""
    knots: int = 0
    """snf with stout layers: 0 gives every layer its own ``2 Nd`` parameters; ``K >= 1``
    shares them: each half's parameter is a piecewise-linear function of the protocol time
    with ``K`` knots (``2 Nd K`` parameters in all), so every layer's gradient trains the same
    few numbers (far less gradient noise per parameter: trains in fewer optimizer steps).
    The parameters count units of each layer's first-order step (``sampler.init``), so one
    ``train.lr`` (0.01-0.02) fits every protocol length."""
    init: Literal["auto", "first_order", "identity"] = "auto"
    """snf with stout layers: the layers' start. ``first_order``: each carries its step's
    change of coupling to first order in ``beta`` (smearing ``rho = dbeta / (4 c N)``, ``c``
    the Casimir of the fundamental: ``(N^2 - 1)/N``, 1 for U(1)); exact as ``beta -> 0``,
    so an untrained SNF already beats annealing (SU(3) 4^4 at beta = 1: ``var W`` 0.02
    against 1.7) and training refines it. ``identity``: the layers start as the identity
    (an untrained SNF is annealing). ``auto``: ``first_order`` from Haar links
    (``beta_start`` 0), ``identity`` from an equilibrium ensemble, where the links are far from
    Haar and the first-order step overshoots many times (2D U(1) beta 3 -> 6: ``var W`` 32
    against 1.2 for the identity, perf/RESULTS.md). Coupling layers always start as the
    identity."""

    def check(self, key: str) -> None:
        for name in ("steps", "sweeps"):
            _positive(getattr(self, name), f"{key}.{name}")
        for name in ("overrelax", "layers", "knots"):
            _positive(getattr(self, name), f"{key}.{name}", allow_zero=True)
        if self.knots and self.layer != "stout":
            raise ConfigError(f"{key}.knots", f"shared parameters exist for stout layers only, "
                              f"got sampler.layer = {self.layer}")
        if self.layers > self.steps:
            raise ConfigError(f"{key}.layers", f"{self.layers} flow layers for {self.steps} "
                              "protocol steps: at most one per step")
        if self.knots > (self.layers or self.steps):
            raise ConfigError(f"{key}.knots", f"{self.knots} knots for "
                              f"{self.layers or self.steps} layers: a knot without a layer "
                              "near it would never train")
        if not (self.beta_start >= 0 and math.isfinite(self.beta_start)):
            raise ConfigError(f"{key}.beta_start", f"expected a coupling >= 0, "
                              f"got {self.beta_start}")
        if self.beta_start > 0 and not self.start:
            raise ConfigError(f"{key}.start", f"a protocol from beta_start = {self.beta_start} "
                              "needs an equilibrium ensemble at that coupling: the samples.h5 "
                              "of a reference chain (hpcflow mcmc)")
        if not (self.power > 0 and math.isfinite(self.power)):
            raise ConfigError(f"{key}.power", f"expected a positive number, got {self.power}")

    @property
    def needs_model(self) -> bool:
        return self.kind == "flow" or (self.kind == "snf" and self.layer == "coupling")


@dataclass
class DistributedConfig:
    """``distributed``: how ranks talk and which device each uses."""

    backend: Literal["auto", "none", "mpi", "torch", "horovod"] = "auto"
    """How ranks exchange data. ``auto``: none for one process, mpi (mpi4py) for several,
    torch under torchrun; ``torch``: torch.distributed (gloo, nccl, xccl); ``horovod``."""
    device: Literal["auto", "cpu", "cuda", "xpu"] = "auto"
    """Where each rank computes; ``auto``: cuda, else xpu, else cpu. One accelerator per rank,
    chosen from the local rank."""
    threads: int = 0
    """CPU threads per rank for torch; 0: the node's cores split over its ranks, or torch's
    default where OMP_NUM_THREADS is set or the launcher binds the ranks to cores."""
    check_every: int = 0
    """Training steps between checks that every rank holds bit-identical parameters and
    optimizer state (a hash, one tiny allreduce; a rank that differs gets rank 0's state,
    logged as a repair). Guards against ranks drifting apart silently: a reduction that gives
    ranks different last bits, a corrupted rank; they would train different models, and a
    restart from rank 0's checkpoint would not continue the run. 0: at checkpoints only (where
    the check is the barrier anyway, no extra collective); N: also every N steps, a second
    collective on those steps."""
    splines: Literal["auto", "fused", "torch"] = "auto"
    """How the flow's splines are evaluated on CPUs: ``fused``, the C++ kernels
    ``hpcflow/kernels/csrc/rqs.cpp`` and, for SU(3)'s whole eigen-angle map, ``su3.cpp`` (one
    operator call forward and one backward per spline or map; built
    by torch's extension loader on first use, ~10 s, then cached under
    ``TORCH_EXTENSIONS_DIR``; needs a C++ compiler); ``torch``, tensor operations; ``auto``,
    fused where it builds (at the first spline on a CPU: never for a run on a GPU or with
    ``compile``), else torch with a warning; ``fused``, refuse to start without it. Same maps
    to rounding: a run trained with one samples and resumes with another. GPU tensors and
    compiled layers use torch operations."""
    kernels: Literal["auto", "fused", "torch"] = "auto"
    """How the coupling layers form their loops (the products of links along the frozen and
    active loops), the depthwise factors of ``conv: factorized`` networks and SU(3)'s
    closed-form eigen-decompositions on CPUs: ``fused``, the C++ kernels
    ``hpcflow/kernels/csrc/loops.cpp``, ``conv.cpp`` and ``eig.cpp`` (one operator call forward
    and one or two backward per loop family or axis, one per eigen-decomposition; built with
    the spline kernel, the same library); ``torch``, tensor operations (extend the links by
    their daggers, gather, multiply step by step; shifted multiply-adds; the closed form as
    batched tensor algebra); ``auto`` and ``fused`` as for ``splines``. Same results to
    rounding. U(1) flows on lattices of at most 512 links read their loops by matrix products
    whatever this says."""
    compile: bool = False
    """Run each coupling layer through ``torch.compile`` (inductor; one graph per direction and
    batch shape, no graph breaks, so no host synchronization inside a layer). Same results to
    rounding, the first step of each shape pays the compilation (about 10-90 s on a CPU, cached
    by torch on disk afterwards); needs a C++ compiler on CPUs and Triton on GPUs. On CPUs the
    generated loops run on one thread (a torch 2.13 crash with more), so it pays there only with
    one thread per rank. Measured: perf/RESULTS.md, "Operations per step"."""
    tf32: bool = False
    """Allow TensorFloat-32 (10-bit mantissa) in float32 matrix products and convolutions on
    NVIDIA GPUs: faster, but ~5e-4 relative error per product in log q. Default: full
    float32."""

    def check(self, key: str) -> None:
        _positive(self.threads, f"{key}.threads", allow_zero=True)
        _positive(self.check_every, f"{key}.check_every", allow_zero=True)


@dataclass
class Config:
    """The whole run configuration. Only ``lattice`` and ``action`` must be given."""

    lattice: LatticeConfig = field(default_factory=LatticeConfig)
    action: ActionConfig = field(default_factory=ActionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    hmc: HMCConfig = field(default_factory=HMCConfig)
    heatbath: HeatbathConfig = field(default_factory=HeatbathConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def check(self, key: str = "") -> None:
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if hasattr(section, "check"):
                section.check(f.name)
        s = self.sampler
        if self.train.pretrain.steps and s.kind != "flow":
            raise ConfigError("train.pretrain", f"a first stage on a smaller lattice is for "
                              f"sampler.kind flow, not {s.kind}")
        if s.kind != "flow" and s.beta_start == self.action.beta:
            raise ConfigError("sampler.beta_start", f"a protocol from beta_start = "
                              f"{s.beta_start} to action.beta = {self.action.beta} does not "
                              "change the coupling: nothing to anneal")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


def _positive(value: int, key: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        expected = "a non-negative integer" if allow_zero else "a positive integer"
        raise ConfigError(key, f"expected {expected}, got {value}")


# ------------------------------------------------------------------------------------ loading
def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = (), *,
                model: bool | None = None) -> Config:
    """Read a YAML file, apply ``key=value`` overrides (values parsed as YAML), resolve the
    defaults and validate.

    ``path`` may be ``None`` to build from overrides alone. ``model``: resolve and validate the
    ``model`` section too; ``None``: when the sampler has flow layers (``sampler.kind`` flow or
    snf); the reference chains pass False.
    Raises :class:`InputFileError` for a missing or unreadable file and :class:`ConfigError`
    naming the key for everything else.
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
            raise InputFileError(path, f"not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(data, dict):
            raise InputFileError(path, "expected a mapping of sections at the top level")
    data = apply_overrides(data, overrides)
    return config_from_dict(data, model=model)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error in one line: the problem where it was found (1-based line and column)
    and what was being parsed, instead of its multi-line text with source excerpts."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if not problem or mark is None:
        return " ".join(str(exc).split())
    line = f"{problem} at {at(mark)}"
    context, context_mark = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context:
        line += f" ({context}" + (f" from {at(context_mark)})" if context_mark else ")")
    return line


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


def config_from_dict(data: dict[str, Any], *, model: bool | None = None) -> Config:
    """Build, resolve and validate a :class:`Config` from plain data (e.g. a checkpoint's
    copy); ``model`` as in :func:`load_config`."""
    cfg = _build(Config, data, "")
    cfg.check()
    if cfg.sampler.kind != "flow":
        check_updates(cfg, "sampler.kind")
    if cfg.sampler.needs_model if model is None else model:
        _resolve_model(cfg)
        if cfg.train.pretrain.steps:
            pretrain_config(cfg)  # the model fits the smaller lattice too
    return cfg


def pretrain_config(cfg: Config) -> Config | None:
    """The configuration of ``cfg``'s first training stage (``train.pretrain``), or ``None``
    when it has none: ``lattice.shape`` the smaller lattice, ``train.steps`` its steps at the
    constant rate ``train.lr``, no evaluations or plots, no further stage; everything else
    (the model, the batch, the seed, ``init_from``, the walltime) as in ``cfg``. A model that
    does not fit the smaller lattice is a :class:`ConfigError` naming ``train.pretrain.shape``.
    """
    pre = cfg.train.pretrain
    if not pre.steps:
        return None
    data = cfg.to_dict()
    if len(pre.shape) != cfg.lattice.nd:
        raise ConfigError("train.pretrain.shape", f"expected {cfg.lattice.nd} extents as "
                          f"lattice.shape {cfg.lattice.shape}, got {pre.shape}")
    data["lattice"]["shape"] = list(pre.shape)
    data["train"].update(steps=pre.steps, schedule="constant", eval_every=0, plot=False,
                         pretrain={})
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError("train.pretrain.shape", f"the model does not fit the lattice "
                          f"{pre.shape}: {exc.key}: {exc.expected}") from None


def check_updates(cfg: Config, why: str) -> None:
    """The exact local updates (heat bath, over-relaxation) need the Wilson action, even
    extents and U(1), SU(2) or SU(3); ``why`` names the key that asked for them."""
    if cfg.action.c1 != 0:
        raise ConfigError("action.c1", f"{why}: the heat bath and over-relaxation are written "
                          f"for the Wilson action (c1 = 0), got c1 = {cfg.action.c1}")
    if get_group(cfg.lattice.group).nc > 3:
        raise ConfigError("lattice.group", f"{why}: heat-bath updates exist for U1, SU2 and "
                          f"SU3, not {cfg.lattice.group}")
    try:
        check_lattice(cfg.lattice.shape)
    except ValueError as exc:
        raise ConfigError("lattice.shape", f"{why}: {exc}") from None


# Frozen-loop features of a flow by lattice dimension when model.features is empty.
DEFAULT_FEATURES = {2: ("plaquette", "rectangle"), 3: ("plaquette", "rectangle", "chair"),
                    4: ("plaquette",)}

# Library argument names of hpcflow.masks.build_schedule -> configuration keys.
_MASK_KEYS = {"shape": "lattice.shape", "patterns": "model.masks",
              "active_shapes": "model.active_loops", "feature_shapes": "model.features",
              "multi_update": "model.multi_update", "layers": "model.layers"}


def mask_schedule(cfg: Config, *, require_coverage: bool = True) -> Schedule:
    """The mask schedule of the flow of ``cfg``; a :class:`~hpcflow.masks.MaskError` becomes
    a :class:`ConfigError` naming the key (``model.masks[1].steps``, ``model.multi_update``)."""
    m = cfg.model
    try:
        return build_schedule(cfg.lattice.shape, m.masks or None, layers=m.layers,
                              active_shapes=m.active_loops, feature_shapes=m.features or None,
                              multi_update=m.multi_update, require_coverage=require_coverage)
    except MaskError as exc:
        head, _, rest = exc.field.partition("[")
        key = _MASK_KEYS.get(head, f"model.{head}") + (f"[{rest}" if rest else "")
        hint = "" if m.masks or head != "active_shapes" else " (with the default masks)"
        raise ConfigError(key, f"{exc}{hint}") from None


def _resolve_model(cfg: Config) -> None:
    """Group- and lattice-dependent defaults of ``model`` (dtype, masks), then the checks that
    need the group and the lattice: transform, loop shapes, masks, coverage."""
    group = get_group(cfg.lattice.group)
    m = cfg.model
    if group.nc > 3:
        raise ConfigError("lattice.group", f"flows exist for U1, SU2 and SU3, not "
                                           f"{group.name}; its reference chains run with "
                                           f"hpcflow hmc")
    if m.transform != "spline" and group.nc > 1:
        raise ConfigError("model.transform", f"{m.transform} exists for U(1) only; "
                                             f"{group.name} flows use spectral splines (spline)")
    if m.dtype == "auto":
        m.dtype = "float32" if group.nc == 1 else "float64"
    elif m.dtype == "float32" and group.nc > 1:
        warnings.warn(f"model.dtype float32 with {group.name}: a trained float32 spectral flow "
                      f"can lose its inverse (NaN or biased log q, perf/RESULTS.md); use "
                      f"model.dtype: float64 (the default for SU(N))", stacklevel=3)
    if not m.features:
        m.features = list(DEFAULT_FEATURES[cfg.lattice.nd])
    if m.net.conv == "auto":
        m.net.conv = "factorized" if cfg.lattice.nd == 4 else "full"
    if not m.masks:
        try:
            default_patterns(cfg.lattice.shape)
        except MaskError as exc:
            raise ConfigError("lattice.shape", f"{exc}: set model.masks") from None
    m.masks = mask_schedule(cfg).patterns


FIXED_WHEN_SAMPLING = ("lattice", "action", "model", "sampler")
"""Sections a trained run's sampling may not override (its model was trained for them);
``sampler.start``, the file of a starting ensemble, is the exception."""


def sampling_config(trained: Config, overrides) -> Config:
    """The configuration ``hpcflow sample RUN_DIR`` draws with: the run's, with ``overrides``
    (``--set``, ``--device``, ``--seed``) applied to what sampling may change (``sample``,
    ``distributed``, ``train.seed``, ``sampler.start``, ...). A run trained on another
    machine (``distributed.device: xpu``) samples here with ``--device cpu``."""
    if not overrides:
        return trained
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section = key.split(".", 1)[0]
        if section in FIXED_WHEN_SAMPLING and key != "sampler.start":
            raise ConfigError(key, "fixed by the trained model: sampling cannot change the "
                              f"{section} section (train a new run instead)")
    data = apply_overrides(trained.to_dict(), overrides)
    return config_from_dict(data)


def check_resumable(saved: dict[str, Any], cfg: Config, where: str, *,
                    transfer: bool = False) -> None:
    """Refuse to resume from a checkpoint whose lattice or model differ from ``cfg``'s (for a
    stochastic flow also the sampler keys that set its layers and parameters).

    ``saved``: the checkpoint's configuration (plain data, resolved by this version first, so
    that older checkpoints with defaults left empty compare equal). ``transfer``: the check of
    ``train.init_from``, where the lattice's extents may differ (not its dimensions)."""
    old = config_from_dict(saved).to_dict()
    new = cfg.to_dict()
    keys = {section: sorted(set(old[section]) | set(new[section]))
            for section in ("lattice", "model")}
    if "flow" not in (old["sampler"]["kind"], new["sampler"]["kind"]):
        keys["sampler"] = ["kind", "steps", "layer", "layers", "knots"]
    if transfer:
        keys["lattice"].remove("shape")
        old["lattice"]["dims"] = len(old["lattice"]["shape"])
        new["lattice"]["dims"] = len(new["lattice"]["shape"])
        keys["lattice"].append("dims")
    diffs = [f"{section}.{key}: {old[section].get(key)!r} in the checkpoint, "
             f"{new[section].get(key)!r} now"
             for section, names in keys.items() for key in names
             if old[section].get(key) != new[section].get(key)]
    if diffs and transfer:
        raise ConfigError("train.init_from", f"cannot start from {where}: it differs in keys "
                          f"that define the model ({'; '.join(diffs)})")
    if diffs:
        raise ConfigError(diffs[0].split(":")[0], f"cannot resume from {where}: the "
                          f"configuration changed in "
                          f"keys that define the model ({'; '.join(diffs)}); use a new run "
                          f"directory or the original values")


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



# ------------------------------------------------------------------------------ reference
def _field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass (the string literal after each field)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_name(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin in (list, tuple):
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(tp, "__name__", str(tp))


def config_reference() -> str:
    """``docs/config.md``: every key with its type, default and meaning, from the classes."""
    lines = ["# Configuration reference", "",
             "Generated from `hpcflow/app/config.py` by `make docs` "
             "(`hpcflow.app.config.config_reference()`); a test keeps it in step with the "
             "code. YAML files take these keys; `--set KEY=VALUE` overrides any of them with "
             "a YAML value. Only `lattice.shape`, `lattice.group` and `action.beta` are "
             "required.", ""]

    def section(cls, key: str) -> None:
        lines.extend([f"## `{key}`", "", " ".join((cls.__doc__ or "").split()).replace("``", "`"),
                      "",
                      "| key | type | default | meaning |", "| --- | --- | --- | --- |"])
        hints, docs, nested = typing.get_type_hints(cls), _field_docs(cls), []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if dataclasses.is_dataclass(tp):
                nested.append((tp, f"{key}.{f.name}"))
                lines.append(f"| `{key}.{f.name}` | section | | see below |")
                continue
            default = (f.default if f.default is not dataclasses.MISSING
                       else f.default_factory())  # type: ignore[misc]
            if isinstance(default, float) and math.isnan(default):
                default = "required"
            elif isinstance(default, list) and default and dataclasses.is_dataclass(default[0]):
                default = [dataclasses.asdict(d) for d in default]
            text = yaml.safe_dump(default, default_flow_style=True).strip()
            shown = "required" if default == "required" or key == "lattice" \
                else f"`{text.removesuffix('...').strip()}`"
            meaning = docs.get(f.name, "").replace("``", "`")
            lines.append(f"| `{key}.{f.name}` | {_type_name(tp)} | {shown} | {meaning} |")
        lines.append("")
        for cls2, key2 in nested:
            section(cls2, key2)

    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        section(hints[f.name], f.name)
    return "\n".join(lines).rstrip() + "\n"

