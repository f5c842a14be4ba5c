"""Command line: ``hpcflow <command>`` (README.md, "Command line").

A thin layer: it parses the arguments, loads the configuration and calls the application
(``hpcflow.app``) inside a run context. It is also the error boundary: a
:class:`~hpcflow.errors.HpcflowError` ends the command with one message and exit status 2; under
MPI, any other exception on one rank aborts every rank instead of leaving the others hanging.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

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
    p.add_argument("--dry-run", action="store_true",
                   help="validate, run one micro-batch forward and backward on the device, "
                        "print parameters, memory per sample and per rank, time per step; "
                        "write nothing")
    p.add_argument("--ranks", type=int,
                   help="--dry-run: plan for this many ranks (default: the ranks running)")
    p.add_argument("--json", action="store_true", help="--dry-run: print the figures as JSON")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="draw proposals (flow samples or annealing / stochastic-"
                                      "flow trajectories), independence Metropolis, HDF5 shards")
    p.add_argument("run_dir", metavar="RUN_DIR|CONFIG",
                   help="a run directory with checkpoints, or the configuration of a sampler "
                        "without parameters (sampler.kind: annealing)")
    p.add_argument("--n", type=int, help="proposals in all (default: sample.n_samples)")
    p.add_argument("--batch-size", type=int, help="proposals per batch on each rank")
    p.add_argument("--out", help="output folder (default: RUN_DIR/samples)")
    p.add_argument("--complex64", action="store_true", help="store links in complex64")
    _add_override_args(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="a sample file's Markov chain as ILDG or NERSC files")
    p.add_argument("path", metavar="SAMPLES.h5", help="samples.h5, a shard, or a folder")
    p.add_argument("--format", required=True, choices=("ildg", "nersc"), dest="fmt")
    p.add_argument("-o", "--output", dest="out", required=True, metavar="DIR")
    p.add_argument("--every", type=int, default=1,
                   help="every k-th chain state (or stored configuration)")
    p.add_argument("--single", action="store_true", help="32-bit floats (default 64-bit)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("import", help="ILDG or NERSC configurations into an hpcflow sample "
                                      "file (to analyze, or to start a sampler from)")
    p.add_argument("files", nargs="+", metavar="FILE", help="one configuration per file")
    p.add_argument("-o", "--output", dest="out", required=True, metavar="DIR")
    p.add_argument("--beta", type=float, help="the coupling (required unless recorded)")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("analyze", help="observables with errors, acceptance, ESS, log Z")
    p.add_argument("path", metavar="SAMPLES.h5", help="samples.h5, a shard, or a folder")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--device", choices=("cpu", "cuda", "xpu"), default="cpu",
                   help="where to measure files without stored observables (format 1, 2)")
    p.set_defaults(func=cmd_analyze)

    for name, text in (("mcmc", "conventional reference chain (one per rank): heat bath "
                                "(default) or HMC, same HDF5 format"),
                       ("hmc", "HMC reference chain (one per rank): hpcflow mcmc "
                               "--algorithm hmc")):
        p = sub.add_parser(name, help=text)
        _add_config_args(p)
        p.add_argument("-o", "--output", dest="out", required=True, metavar="DIR",
                       help="output folder")
        p.add_argument("--n", type=int, help="configurations in all (default: "
                                             "sample.n_samples)")
        _add_run_args(p)
        if name == "mcmc":
            p.add_argument("--algorithm", choices=("heatbath", "hmc"), default="heatbath",
                           help="heatbath (with heatbath.overrelax over-relaxation sweeps; "
                                "Wilson action) or hmc")
            p.set_defaults(func=cmd_mcmc)
        else:
            p.set_defaults(func=cmd_mcmc, algorithm="hmc")

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


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """``--device`` and ``--seed``: where and with which random streams a run draws."""
    p.add_argument("--device", choices=("auto", "cpu", "cuda", "xpu"),
                   help="device of every rank (sets distributed.device)")
    p.add_argument("--seed", type=int, help="seed of the random streams (sets train.seed)")


def _add_set_arg(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="KEY=VALUE", help=help_text)


def _add_override_args(p: argparse.ArgumentParser) -> None:
    _add_run_args(p)
    _add_set_arg(p, "override a key of the run's configuration, e.g. --set sample.store=chain")


def _overrides(args) -> list[str]:
    """``--set`` values, then ``--device`` and ``--seed`` as the keys they set."""
    out = list(getattr(args, "overrides", []))
    if getattr(args, "device", None):
        out.append(f"distributed.device={args.device}")
    if getattr(args, "seed", None) is not None:
        out.append(f"train.seed={args.seed}")
    return out


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="YAML configuration file")
    _add_set_arg(p, "override a config key with a YAML value, e.g. --set action.beta=3.0")


# ---------------------------------------------------------------------------------- commands
def _positive(value: int, flag: str) -> int:
    if value < 1:
        raise HpcflowError(f"{flag} must be a positive integer, got {value}")
    return value


def cmd_info(args) -> int:
    from .app.info import info_rows
    from .distributed import launch_info

    if launch_info().rank != 0:
        return 0
    rows = info_rows()
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def cmd_train(args) -> int:
    from .app.config import load_config
    from .app.context import run_context
    from .app.train import Trainer, prepare_training

    cfg = load_config(args.config, args.overrides)
    if args.dry_run:
        return _train_dry_run(cfg, args)
    run_dir = Path(args.run_dir or Path("runs") / Path(args.config).stem)
    with run_context(cfg.distributed, "train", run_dir) as ctx:
        if args.profile:  # the steps of this lattice, from a fresh start (no first stage)
            from .app.profile import profile_training

            profile_training(Trainer(cfg, ctx), run_dir / "profile")
            return 0
        trainer, started = prepare_training(cfg, ctx)
        if trainer is None:  # the first stage (train.pretrain) stopped early
            return 0
        n = sum(p.numel() for p in trainer.params)
        ctx.log.info(f"{cfg.lattice.group} {'x'.join(map(str, cfg.lattice.shape))} "
                     f"beta={cfg.action.beta}: {len(trainer.model.layers)} layers, {n} "
                     f"parameters, {ctx.size} rank(s) ({ctx.comm.backend}), device "
                     f"{ctx.device}, run dir {run_dir}")
        last = trainer.run(started=started).last
        if last:
            msg = f"step {trainer.step}: loss {last['loss']:+.4f}, batch ESS {last['ess']:.4f}"
            if last.get("eval_ess") is not None:
                msg += (f", eval ESS {last['eval_ess']:.4f}, acceptance "
                        f"{last['eval_acceptance']:.3f}, log Z {last['eval_log_z']:.4f}")
            ctx.log.info(msg)
    return 0


def _train_dry_run(cfg, args) -> int:
    """``hpcflow train CONFIG --dry-run``: :func:`hpcflow.app.train.dry_run` on every rank,
    rank 0 prints."""
    from .app.context import run_context
    from .app.train import dry_run, format_dry_run

    ranks = _positive(args.ranks, "--ranks") if args.ranks is not None else None
    with run_context(cfg.distributed, "train") as ctx:
        report = dry_run(cfg, ctx, ranks)
        if ctx.is_root:
            if args.json:
                print(json.dumps(report))
            else:
                for line in format_dry_run(report):
                    ctx.log.info(line)
    return 0


def cmd_sample(args) -> int:
    from .app.build import build_model, load_model
    from .app.config import load_config, sampling_config
    from .app.context import run_context
    from .app.sample import run_sampling

    run_dir = Path(args.run_dir)
    overrides = _overrides(args)
    if run_dir.is_file():  # a configuration: only a sampler without parameters needs none
        cfg = load_config(run_dir, overrides)
        model = build_model(cfg)
        if any(True for _ in model.parameters()):
            raise HpcflowError(f"sampler.kind {cfg.sampler.kind} has parameters: train it "
                               f"(hpcflow train {run_dir} -o RUN_DIR), then sample RUN_DIR")
        model.config, model.checkpoint_step = cfg, 0
        run_dir = Path("runs") / run_dir.stem
    elif not run_dir.is_dir():
        raise InputFileError(run_dir, "no such run directory or configuration file")
    else:
        model = load_model(run_dir)
        cfg = sampling_config(model.config, overrides)
    n = _positive(args.n if args.n is not None else cfg.sample.n_samples, "--n")
    batch = _positive(args.batch_size if args.batch_size is not None else cfg.sample.batch_size,
                      "--batch-size")
    out = Path(args.out) if args.out else run_dir / "samples"
    with run_context(cfg.distributed, "sample", out) as ctx:
        res = run_sampling(model.to(ctx.device), cfg, out, ctx, n_total=n, batch_size=batch,
                           links_dtype="complex64" if args.complex64 else "complex128")
        total = ctx.comm.allreduce_sum(float(res["accepted"]))
        ctx.log.info(f"{n} proposals from step {model.checkpoint_step} on {ctx.size} rank(s) "
                     f"in {res['seconds']:.1f} s, acceptance {total / n:.3f}; "
                     f"{out / 'samples.h5'}")
    return 0


def cmd_analyze(args) -> int:
    from .app.analyze import analyze_file, format_report

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyze_file(args.path, device=args.device)
    notes = list(dict.fromkeys(str(w.message) for w in caught))
    if args.json:
        result["notes"] = notes
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
        for note in notes:
            print(f"note: {note}")
    return 0


def cmd_export(args) -> int:
    from .app.convert import export_chain

    try:
        paths = export_chain(args.path, args.fmt, args.out,
                             every=_positive(args.every, "--every"),
                             precision="single" if args.single else "double")
    except ValueError as exc:  # a group or lattice the format cannot hold
        raise HpcflowError(f"{args.path}: {exc}") from None
    print(f"{len(paths)} {args.fmt.upper()} files in {args.out}")
    return 0


def cmd_import(args) -> int:
    from .app.convert import import_configurations

    path = import_configurations(args.files, args.out, beta=args.beta)
    print(f"{len(args.files)} configurations in {path}")
    return 0


def cmd_mcmc(args) -> int:
    from .app.chains import run_chain
    from .app.config import check_updates, load_config
    from .app.context import run_context

    cfg = load_config(args.config, _overrides(args), model=False)
    if args.algorithm == "heatbath":
        check_updates(cfg, "hpcflow mcmc --algorithm heatbath")
    n = _positive(args.n if args.n is not None else cfg.sample.n_samples, "--n")
    with run_context(cfg.distributed, args.command, args.out) as ctx:
        res = run_chain(cfg, args.algorithm, args.out, ctx, n_total=n)
        ctx.log.info(f"{n} configurations ({args.algorithm}) on {ctx.size} chain(s) in "
                     f"{res['seconds']:.1f} s; {args.out}/samples.h5")
    return 0


def cmd_masks(args) -> int:
    from .app.config import load_config
    from .app.masks import describe_masks
    from .distributed import launch_info

    text = describe_masks(load_config(args.config, args.overrides), args.plot)
    if launch_info().rank == 0:
        print(text)
    return 0


def cmd_check(args) -> int:
    from .app.check import run_check
    from .app.config import load_config
    from .app.context import run_context

    cfg = load_config(args.config, args.overrides, model=False)
    n = _positive(args.n, "--n")
    with run_context(cfg.distributed, "check") as ctx:
        return run_check(cfg, n, ctx)


def main(argv: list[str] | None = None) -> int:
    from .distributed import launch_info

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *rest, **kw: f"hpcflow: warning: {message}\n"
    try:
        return int(args.func(args) or 0)
    except HpcflowError as exc:
        # Before the ranks talk, input errors are found identically on every rank: say it once.
        if launch_info().rank == 0:
            print(f"hpcflow {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:  # `hpcflow masks ... | head`: the reader left, nothing to say
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"hpcflow {args.command}: interrupted", file=sys.stderr)
        return 130
