#!/usr/bin/env python3
"""Write and submit an hpcflow batch job for one of the supported systems.

    launch/submit.py --system aurora --nodes 2 --walltime 01:00:00 --project MYPROJ \\
        --queue debug --config configs/su3_4d.yaml --run-dir runs/su3 [--dry-run]

Fills the template ``launch/<system>.pbs|slurm`` (site facts: scheduler directives, ranks per
node, CPU/GPU binding, communication environment) with the job's values, writes it to
``RUN_DIR/job-<system>-<command>.<pbs|slurm>`` and submits it with ``qsub``/``sbatch``.
``--dry-run`` prints the script and the submission line and touches nothing.

Inside the job every rank runs::

    python -m mpi4py -m hpcflow train CONFIG -o RUN_DIR \\
        --set distributed.backend=torch --set distributed.device=xpu|cuda

``python -m mpi4py`` turns an exception on any rank into ``MPI_Abort`` (no hung job).
Training resumes from the newest checkpoint in RUN_DIR, so the same script can simply be
submitted again; ``--repeat K`` submits K jobs chained with ``afterany`` dependencies.

``--system local`` runs ``launch/local.sh`` (mpiexec on this machine) instead.
Standard library only: it runs with any Python 3 on a login node.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class System:
    scheduler: str  # pbs | slurm
    ranks_per_node: int
    backend: str
    device: str
    queue: str
    setup: str
    launcher: str  # the MPI launch prefix; {ranks} and {nodes} are filled in

    @property
    def extension(self) -> str:
        return self.scheduler


SYSTEMS = {
    # launch/README.md.
    "aurora": System(
        "pbs", 12, "torch", "xpu", "prod",
        "module load frameworks",
        'mpiexec -n {ranks} -ppn "$RANKS_PER_NODE" --cpu-bind="$CPU_BIND"',
    ),
    "polaris": System(
        "pbs", 4, "torch", "cuda", "prod",
        "module use /soft/modulefiles\nmodule load conda\nconda activate base",
        'mpiexec -n {ranks} -ppn "$RANKS_PER_NODE" --cpu-bind depth -d 16',
    ),
    "perlmutter": System(
        "slurm", 4, "torch", "cuda", "regular",
        "module load pytorch",
        "srun -N {nodes} -n {ranks} --ntasks-per-node=4 --gpus-per-node=4 --cpus-per-task=32",
    ),
    "frontier": System(
        "slurm", 8, "torch", "cuda", "batch",
        "module load PrgEnv-gnu rocm craype-accel-amd-gfx90a\n"
        "# torch (ROCm build) and mpi4py built against cray-mpich must be importable: --venv",
        "srun -N {nodes} -n {ranks} -c7 --gpus-per-task=1 --gpu-bind=closest",
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="launch/submit.py",
        description="Write and submit an hpcflow batch job (PBS: Aurora, Polaris; Slurm: "
        "Perlmutter, Frontier; or mpiexec on this machine).",
        epilog="Arguments after `--` are passed to the hpcflow command, e.g. "
        "`-- --set train.steps=20000`.",
    )
    p.add_argument("--system", required=True, choices=[*SYSTEMS, "local"])
    p.add_argument("--nodes", type=int, default=1, help="compute nodes (default 1)")
    p.add_argument("--walltime", default="01:00:00", help="HH:MM:SS (default 01:00:00)")
    p.add_argument("--project", help="allocation to charge (-A); required on clusters")
    p.add_argument("--queue", help="queue / QOS / partition (default per system)")
    p.add_argument("--config", help="YAML configuration (required for train)")
    p.add_argument("--run-dir", required=True, help="run directory (checkpoints, metrics)")
    p.add_argument("--command", choices=["train", "sample"], default="train")
    p.add_argument("--job-name", help="default hpcflow-COMMAND")
    p.add_argument("--backend", help="distributed.backend (default per system: torch)")
    p.add_argument("--device", help="distributed.device (default per system)")
    p.add_argument("--setup", help="shell lines that make python, torch and mpi4py available "
                   "(default per system, e.g. `module load frameworks` on Aurora)")
    p.add_argument("--venv", help="virtual environment to activate after the setup lines")
    p.add_argument("--python", default="python", help="python inside the job (default python)")
    p.add_argument("--repeat", type=int, default=1,
                   help="submit K chained jobs (afterany): each resumes where the last stopped")
    p.add_argument("--ranks", type=int, default=2, help="--system local only: MPI ranks")
    p.add_argument("--dry-run", action="store_true",
                   help="print the batch script and the submission line; submit nothing")
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    args = p.parse_args(argv)
    args.extra = extra
    if not re.fullmatch(r"\d{1,3}:[0-5]\d:[0-5]\d", args.walltime):
        p.error(f"--walltime must look like HH:MM:SS, got {args.walltime!r}")
    if args.nodes < 1 or args.repeat < 1 or args.ranks < 1:
        p.error("--nodes, --repeat and --ranks must be positive")
    if args.system != "local" and not args.project:
        p.error(f"--project is required for --system {args.system}")
    if args.command == "train" and not args.config:
        p.error("--config is required for --command train")
    return args


def hpcflow_args(args: argparse.Namespace, backend: str, device: str) -> list[str]:
    """The hpcflow command line (after ``-m hpcflow``), with absolute paths: batch jobs start
    in another directory."""
    run_dir = str(Path(args.run_dir).resolve())
    if args.command == "train":
        cmd = ["train", str(Path(args.config).resolve()), "-o", run_dir,
               "--set", f"distributed.backend={backend}", "--set", f"distributed.device={device}"]
    else:  # sample reuses the run's resolved configuration, distributed section included
        cmd = ["sample", run_dir]
    return cmd + args.extra


def render(args: argparse.Namespace) -> tuple[str, str, Path]:
    """(batch script text, the launch line inside it, where the script goes)."""
    system = SYSTEMS[args.system]
    run_dir = Path(args.run_dir).resolve()
    script = run_dir / f"job-{args.system}-{args.command}.{system.extension}"
    backend = args.backend or system.backend
    device = args.device or system.device
    ranks = args.nodes * system.ranks_per_node
    launch = system.launcher.format(ranks=ranks, nodes=args.nodes)
    command = [args.python, "-m", "mpi4py", "-m", "hpcflow", *hpcflow_args(args, backend, device)]
    launch_line = launch + " \\\n  " + " ".join(shlex.quote(c) for c in command)
    setup = args.setup if args.setup is not None else system.setup
    if args.venv:
        setup += f"\nsource {shlex.quote(str(Path(args.venv).resolve()))}/bin/activate"
    values = {
        "job_name": args.job_name or f"hpcflow-{args.command}",
        "project": args.project,
        "queue": args.queue or system.queue,
        "nodes": str(args.nodes),
        "walltime": args.walltime,
        "setup": setup,
        "launch": launch_line,
        "script": str(script),
        "log_dir": str(run_dir / "logs"),
    }
    text = (HERE / f"{args.system}.{system.extension}").read_text()
    text = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)
    return text, launch_line, script


def submit_commands(system: System, script: Path, repeat: int) -> list[list[str]]:
    """qsub/sbatch lines for ``repeat`` chained jobs; ``{prev}`` stands for the job id of the
    one before."""
    cmds = []
    for i in range(repeat):
        if system.scheduler == "pbs":
            dep = ["-W", "depend=afterany:{prev}"] if i else []
            cmds.append(["qsub", *dep, str(script)])
        else:
            dep = ["--dependency=afterany:{prev}"] if i else []
            cmds.append(["sbatch", "--parsable", *dep, str(script)])
    return cmds


def run_local(args: argparse.Namespace) -> int:
    backend = args.backend or "auto"
    device = args.device or "auto"
    cmd = ["bash", str(HERE / "local.sh"), "-n", str(args.ranks)]
    cmd += ["--dry-run"] if args.dry_run else []
    cmd += hpcflow_args(args, backend, device)
    if args.dry_run:
        print("# launch (dry run):")
        sys.stdout.flush()
    return subprocess.call(cmd)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.system == "local":
        return run_local(args)
    system = SYSTEMS[args.system]
    text, launch_line, script = render(args)
    cmds = submit_commands(system, script, args.repeat)
    # PBS writes the job's log into the directory qsub runs in: run it from RUN_DIR/logs.
    log_dir = script.parent / "logs"
    if args.dry_run:
        print(f"# ---- {script} (dry run: not written) ----")
        print(text, end="")
        print("# ---- launch line ----")
        print(launch_line)
        print(f"# ---- submit (from {log_dir}) ----")
        for i, cmd in enumerate(cmds):  # job i+1 waits for job i
            print(" ".join(c.replace("{prev}", f"<id of job {i}>") for c in cmd))
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)
    script.write_text(text)
    script.chmod(0o755)
    print(f"wrote {script}")
    prev = ""
    for cmd in cmds:
        cmd = [c.replace("{prev}", prev) for c in cmd]
        print("+ " + " ".join(cmd))
        out = subprocess.run(cmd, cwd=log_dir, check=True, capture_output=True, text=True)
        prev = out.stdout.strip().split(";")[0]  # sbatch --parsable: "id[;cluster]"
        print(prev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
