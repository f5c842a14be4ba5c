"""Command line: ``hpcflow <command>`` (CONTRACTS.md, "Command line").

This is the error boundary of the application: a :class:`~hpcflow.errors.HpcflowError` ends the
command with one message and a non-zero status; under MPI, any other exception on one rank
aborts every rank instead of leaving the others hanging.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import sys
import time
import warnings

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

    p = sub.add_parser("hmc", help="conventional HMC reference chain (one per rank), same "
                                   "HDF5 format")
    _add_config_args(p)
    p.add_argument("-o", "--output", dest="out", required=True, metavar="DIR",
                   help="output folder")
    p.add_argument("--n", type=int, help="configurations in all (default: sample.n_samples)")
    p.set_defaults(func=cmd_hmc)

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

    from .dist import available_backends, launch_info

    info = launch_info()
    if info.rank != 0:
        return 0
    backends = ", ".join(f"{k}: {v}" for k, v in available_backends().items())
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
        ("launcher", f"{info.launcher or 'none'}, rank {info.rank} of {info.size}"),
        ("hpcflow backends", backends),
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

    cfg = load_config(args.config, args.overrides)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    with _communicator(cfg, "train") as comm:
        return _train(cfg, run_dir, comm, args.profile)


def _train(cfg, run_dir, comm, profile: bool) -> int:
    from .train.trainer import Trainer

    trainer = Trainer(cfg, run_dir, comm)
    if profile:
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
    return 0


def cmd_sample(args) -> int:
    from pathlib import Path

    from . import load_model

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise InputFileError(run_dir, "no such run directory")
    model = load_model(run_dir)
    with _communicator(model.config, "sample") as comm:
        return _sample(model, args, run_dir, comm)


def _sample(model, args, run_dir, comm) -> int:
    from pathlib import Path

    from .sample.sampler import run_sampling

    cfg = model.config
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
    return 0


def cmd_analyze(args) -> int:
    import json

    from .analysis.report import analyze_file, format_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyze_file(args.path)
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if args.json:
        result["notes"] = notes
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
        for note in notes:
            print(f"note: {note}")
    return 0


def cmd_hmc(args) -> int:
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    n = args.n if args.n is not None else cfg.sample.n_samples
    if n < 1:
        raise HpcflowError(f"--n must be a positive integer, got {n}")
    with _communicator(cfg, "hmc") as comm:
        from .sample.hmc_run import run_hmc

        res = run_hmc(cfg, args.out, comm, n_total=n)
        if comm.is_root:
            print(f"hpcflow hmc: {n} configurations on {comm.size} chain(s) in "
                  f"{res['seconds']:.1f} s (step size {res['step_size']:.4f}); "
                  f"{args.out}/samples.h5")
    return 0


def cmd_masks(args) -> int:
    from .config import load_config
    from .masks import run_masks_command

    cfg = load_config(args.config, args.overrides)
    text = run_masks_command(cfg, args.plot)
    from .dist import launch_info

    if launch_info().rank == 0:
        print(text)
    return 0


def cmd_check(args) -> int:
    """Physics smoke run: everything the lattice core promises, on the config's lattice."""
    from .config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.n < 1:
        raise HpcflowError(f"--n must be a positive integer, got {args.n}")
    with _communicator(cfg, "check") as comm:
        return _check(cfg, args.n, comm)


def _check(cfg, n_total: int, comm) -> int:
    import numpy as np
    import torch

    from . import build_action
    from .lattice import exact
    from .lattice.groups import gauge_transform, get_group, random_gauge
    from .lattice.observables import average_plaquette

    rank, size = comm.rank, comm.size
    group = get_group(cfg.lattice.group)
    shape = tuple(cfg.lattice.shape)
    nd = len(shape)
    action = build_action(cfg)

    # Each rank draws its share from its own stream of one master seed.
    seed = np.random.SeedSequence(cfg.train.seed).spawn(size)[rank].generate_state(1)[0]
    gen = torch.Generator().manual_seed(int(seed))
    n_local = n_total // size + (1 if rank < n_total % size else 0)
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
    stats = np.concatenate([
        comm.allreduce_sum(np.array([plaq_sum, plaq_sq, n_local], dtype=np.float64)),
        comm.allreduce_max(np.array([unitarity, gauge_dev], dtype=np.float64))])
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
@contextlib.contextmanager
def _communicator(cfg, command: str):
    """The run's communicator; an input error met after the ranks started talking ends every
    rank (a plain return on one rank would leave the others waiting in a collective)."""
    from .dist import abort_all, install_abort_hook, make_communicator

    comm = make_communicator(cfg.distributed)
    install_abort_hook(comm)
    try:
        yield comm
    except HpcflowError as exc:
        if comm.size > 1:
            abort_all(comm, f"hpcflow {command}: error: {exc}", exc.exit_code)
        raise
    finally:
        comm.close()


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


def _launch_rank() -> int:
    from .dist import launch_info

    return launch_info().rank


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HpcflowError as exc:
        # Before the ranks talk, input errors are found identically on every rank: say it once.
        if _launch_rank() == 0:
            print(f"hpcflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"hpcflow {args.command}: interrupted", file=sys.stderr)
        return 130
