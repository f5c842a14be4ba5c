"""Command line: ``hpcflow <command>`` (CONTRACTS.md, "Command line").

This is the error boundary of the application: a :class:`~hpcflow.errors.HpcflowError` ends the
command with one message and a non-zero status; under MPI, any other exception on one rank
aborts every rank instead of leaving the others hanging.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

from ._version import __version__
from .errors import HpcflowError, InputFileError

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpcflow",
        description="Gauge-equivariant normalizing flows for lattice gauge theory (2D-4D).",
    )
    parser.add_argument("--version", action="version", version=f"hpcflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="versions, devices, MPI / Horovod / torch.distributed")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("train", help="train a flow; resumes from RUN_DIR's newest checkpoint")
    _add_config_args(p)
    p.add_argument("-o", "--output", dest="run_dir", metavar="RUN_DIR",
                   help="run directory (default: runs/<config name>)")
    p.add_argument("--profile", action="store_true",
                   help="profile a few steps with torch.profiler instead of training")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw proposals from a trained flow, independence "
                                      "Metropolis, HDF5 shards")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory with checkpoints")
    p.add_argument("--n", type=int, help="proposals in all (default: sample.n_samples)")
    p.add_argument("--batch-size", type=int, help="proposals per batch on each rank")
    p.add_argument("--out", help="output folder (default: RUN_DIR/samples)")
    p.add_argument("--complex64", action="store_true", help="store links in complex64")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("analyze", help="observables with errors, acceptance, ESS, log Z")
    p.add_argument("path", metavar="SAMPLES.h5", help="samples.h5, a shard, or a folder")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("masks", help="validate and describe the masking pattern of every layer")
    _add_config_args(p)
    p.add_argument("--plot", metavar="FILE", help="draw 2D slices of the layers to a PNG file")
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser(
        "check",
        help="physics smoke run: Haar sampling, gauge invariance, exact values for a config",
    )
    _add_config_args(p)
    p.add_argument("--n", type=int, default=256, help="Haar configurations in all ranks")
    p.set_defaults(func=cmd_check)
    return parser


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML configuration file")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key with a YAML value, e.g. --set action.beta=3.0",
    )


# ---------------------------------------------------------------------------------- commands
def cmd_info(args) -> int:
    import numpy
    import torch

    world = _world()
    rank, size = (world.Get_rank(), world.Get_size()) if world else (0, 1)
    if rank != 0:
        return 0
    rows = [
        ("hpcflow", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("numpy", numpy.__version__),
        ("h5py", _version_of("h5py")),
        ("scipy", _version_of("scipy")),
        ("mpi4py", _version_of("mpi4py")),
        ("MPI library", _mpi_library()),
        ("MPI ranks", str(size)),
        ("horovod", _horovod_status()),
        ("torch.distributed", _torch_distributed_status()),
        ("CPU threads (torch)", f"{torch.get_num_threads()} of {os.cpu_count()} cores"),
        ("CUDA", _cuda_status()),
        ("XPU", _xpu_status()),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_train(args) -> int:
    from pathlib import Path

    from .config import load_config
    from .dist import install_abort_hook, make_communicator
    from .train.trainer import Trainer

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    comm = make_communicator(cfg.distributed)
    install_abort_hook(comm)
    trainer = Trainer(cfg, run_dir, comm)
    if args.profile:
        from .train.profile import profile_training

        profile_training(trainer, run_dir / "profile")
        return 0
    if comm.is_root:
        n = sum(p.numel() for p in trainer.params)
        print(f"hpcflow train: {cfg.lattice.group} {'x'.join(map(str, cfg.lattice.shape))} "
              f"beta={cfg.action.beta}: {len(trainer.model.layers)} layers, {n} parameters, "
              f"{comm.size} rank(s) ({comm.backend}), device {comm.device}, run dir {run_dir}",
              flush=True)
    result = trainer.run()
    if comm.is_root:
        last = result.last
        if last:
            msg = f"step {result.step}: loss {last['loss']:+.4f}, batch ESS {last['ess']:.4f}"
            if last.get("eval_ess") is not None:
                msg += (f", eval ESS {last['eval_ess']:.4f}, acceptance "
                        f"{last['eval_acceptance']:.3f}, log Z {last['eval_log_z']:.4f}")
            print(f"hpcflow train: {msg}", flush=True)
    comm.close()
    return 0


def cmd_sample(args) -> int:
    from pathlib import Path

    from . import load_model
    from .dist import install_abort_hook, make_communicator
    from .sample.sampler import run_sampling

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise InputFileError(run_dir, "no such run directory")
    model = load_model(run_dir)
    cfg = model.config
    comm = make_communicator(cfg.distributed)
    install_abort_hook(comm)
    model = model.to(comm.device)
    n = args.n if args.n is not None else cfg.sample.n_samples
    batch = args.batch_size if args.batch_size is not None else cfg.sample.batch_size
    if n < 1 or batch < 1:
        raise HpcflowError(f"--n and --batch-size must be positive, got {n} and {batch}")
    out = Path(args.out) if args.out else run_dir / "samples"
    res = run_sampling(model, cfg, out, comm, n_total=n, batch_size=batch,
                       links_dtype="complex64" if args.complex64 else "complex128")
    total = comm.allreduce_sum(float(res["accepted"]))
    if comm.is_root:
        print(f"hpcflow sample: {n} proposals from step {model.checkpoint_step} on {comm.size} "
              f"rank(s) in {res['seconds']:.1f} s, acceptance {total / max(n, 1):.3f}; "
              f"{out / 'samples.h5'}")
    comm.close()
    return 0


def cmd_analyze(args) -> int:
    import json

    from .analysis.report import analyze_file, format_report

    result = analyze_file(args.path)
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


def cmd_masks(args) -> int:
    from .config import load_config
    from .masks import run_masks_command

    cfg = load_config(args.config, args.overrides)
    text = run_masks_command(cfg, args.plot)
    world = _world()
    if world is None or world.Get_rank() == 0:
        print(text)
    return 0


def cmd_check(args) -> int:
    """Physics smoke run: everything the lattice core promises, on the config's lattice."""
    import numpy as np
    import torch

    from . import build_action
    from .config import load_config
    from .lattice import exact
    from .lattice.groups import gauge_transform, get_group, random_gauge
    from .lattice.observables import average_plaquette

    cfg = load_config(args.config, args.overrides)
    if args.n < 1:
        raise HpcflowError(f"--n must be a positive integer, got {args.n}")
    world = _world()
    rank, size = (world.Get_rank(), world.Get_size()) if world else (0, 1)
    group = get_group(cfg.lattice.group)
    shape = tuple(cfg.lattice.shape)
    nd = len(shape)
    action = build_action(cfg)

    # Each rank draws its share from its own stream of one master seed.
    seed = np.random.SeedSequence(cfg.train.seed).spawn(size)[rank].generate_state(1)[0]
    gen = torch.Generator().manual_seed(int(seed))
    n_local = args.n // size + (1 if rank < args.n % size else 0)
    t0 = time.perf_counter()
    plaq_sum, plaq_sq, unitarity, gauge_dev = 0.0, 0.0, 0.0, 0.0
    for start in range(0, n_local, 64):
        b = min(64, n_local - start)
        links = group.random((b, nd, *shape), generator=gen)
        eye = torch.eye(group.nc, dtype=links.dtype)
        unitarity = max(unitarity, (group.mul(links, group.dagger(links)) - eye).abs().max().item())
        omega = random_gauge(group, b, shape, generator=gen)
        s = action(links)
        s2 = action(gauge_transform(links, omega, group))
        gauge_dev = max(gauge_dev, ((s2 - s).abs() / s.abs().clamp_min(1.0)).max().item())
        p = average_plaquette(links, group)
        plaq_sum += p.sum().item()
        plaq_sq += (p**2).sum().item()
    stats = np.array([plaq_sum, plaq_sq, n_local, unitarity, gauge_dev], dtype=np.float64)
    if world is not None:
        from mpi4py import MPI

        total = np.empty_like(stats)
        world.Allreduce(stats[:3].copy(), total[:3], op=MPI.SUM)
        world.Allreduce(stats[3:].copy(), total[3:], op=MPI.MAX)
        stats = total
    elapsed = time.perf_counter() - t0
    if rank != 0:
        return 0

    n = stats[2]
    mean = stats[0] / n
    err = math.sqrt(max(stats[1] / n - mean**2, 0.0) / max(n - 1, 1))
    cold = action(group.identity((1, nd, *shape)))
    n_plaq = cfg.lattice.volume * nd * (nd - 1) // 2
    dims = "x".join(map(str, shape))
    print(f"hpcflow check: {group.name} on {dims}, beta = {cfg.action.beta}, "
          f"{int(n)} Haar configurations on {size} rank(s), {elapsed:.2f} s")
    rows = [
        ("unitarity, max |U U^dag - 1|", f"{stats[3]:.2e}", "< 1e-12", stats[3] < 1e-12),
        ("gauge invariance of S, max rel. dev.", f"{stats[4]:.2e}", "< 1e-10", stats[4] < 1e-10),
        ("cold start S / (-beta n_plaq)", f"{cold.item() / (-cfg.action.beta * n_plaq):.12f}",
         "1 (Wilson)", cfg.action.c1 != 0 or abs(cold.item() / (-cfg.action.beta * n_plaq) - 1)
         < 1e-12),
        ("Haar <(1/Nc) Re tr P>", f"{mean:+.5f} +- {err:.5f}", "0", abs(mean) < 5 * err + 1e-12),
    ]
    ok = all(r[3] for r in rows)
    for label, value, expect, good in rows:
        print(f"  {label:<40} {value:>24}   expect {expect:<10} {'ok' if good else 'FAILED'}")
    beta = cfg.action.beta
    extra = [
        ("exact <(1/Nc) Re tr P> at beta", exact.exact_plaquette(group.name, shape, beta)),
        ("exact log Z (normalized Haar)", exact.exact_log_z(group.name, shape, beta)),
        ("exact chi_t = <Q^2>/V",
         exact.exact_topological_susceptibility(group.name, shape, beta)),
    ]
    for label, value in extra:
        text = f"{value:.10f}" if value is not None else "none known"
        print(f"  {label:<40} {text:>24}")
    return 0 if ok else 1


# ----------------------------------------------------------------------------------- helpers
def _world():
    """MPI_COMM_WORLD when this process was started by an MPI launcher with several ranks."""
    launched = any(
        v in os.environ
        for v in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PALS_RANKID", "SLURM_PROCID",
                  "MPI_LOCALNRANKS", "HYDRA_CONTROL_FD")
    )
    if not launched:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        return None
    comm = MPI.COMM_WORLD
    return comm if comm.Get_size() > 1 else None


def _version_of(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return getattr(mod, "__version__", "installed")


def _mpi_library() -> str:
    try:
        from mpi4py import MPI
    except ImportError:
        return "not available (pip install mpi4py mpich)"
    return MPI.Get_library_version().strip().splitlines()[0]


def _horovod_status() -> str:
    try:
        import horovod  # noqa: F401
        import horovod.torch as hvd
    except ImportError:
        return "not installed (launch/install_horovod.sh)"
    except Exception as exc:  # a broken build shows up here, e.g. an ABI mismatch with torch
        return f"installed but unusable: {exc}"
    built = [name for name, fn in (("MPI", hvd.mpi_built), ("Gloo", hvd.gloo_built)) if fn()]
    return f"{horovod.__version__} (controllers: {', '.join(built) or 'none'})"


def _torch_distributed_status() -> str:
    import torch.distributed as dist

    if not dist.is_available():
        return "not available"
    backends = [
        name
        for name, fn in (
            ("gloo", dist.is_gloo_available),
            ("nccl", dist.is_nccl_available),
            ("mpi", dist.is_mpi_available),
            ("xccl", getattr(dist, "is_xccl_available", lambda: False)),
        )
        if fn()
    ]
    return "backends: " + (", ".join(backends) or "none")


def _cuda_status() -> str:
    import torch

    if not torch.cuda.is_available():
        return "none"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    return f"{torch.cuda.device_count()} device(s): {', '.join(sorted(names))}"


def _xpu_status() -> str:
    import torch

    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        return "none"
    return f"{xpu.device_count()} device(s)"


def _abort_on_exception(world) -> None:
    """Under MPI, an uncaught exception on any rank aborts the whole job (no hang)."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        previous(exc_type, exc, tb)
        sys.stderr.flush()
        world.Abort(1)

    sys.excepthook = hook


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    world = _world()
    if world is not None:
        _abort_on_exception(world)
    try:
        return int(args.func(args) or 0)
    except HpcflowError as exc:
        # Input errors are found identically on every rank: say it once.
        if world is None or world.Get_rank() == 0:
            print(f"hpcflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hpcflow {args.command}: interrupted", file=sys.stderr)
        return 130
