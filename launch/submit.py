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
class Queue:
    """One queue (PBS) or partition (Frontier) and what it accepts; ``auto``: whether
    ``--queue`` may default to it."""

    name: str
    min_nodes: int
    max_nodes: int
    max_hours: float
    auto: bool = True

    def fits(self, nodes: int, seconds: int) -> bool:
        return self.min_nodes <= nodes <= self.max_nodes and seconds <= self.max_hours * 3600

    def __str__(self) -> str:
        return f"{self.name}: {self.min_nodes}-{self.max_nodes} nodes, <= {self.max_hours:g} h"


@dataclass(frozen=True)
class System:
    scheduler: str  # pbs | slurm
    ranks_per_node: int
    backend: str
    device: str
    queues: tuple[Queue, ...]  # the facility's published limits (launch/README.md)
    setup: str
    launcher: str  # the MPI launch prefix; {ranks} and {nodes} are filled in

    @property
    def extension(self) -> str:
        return self.scheduler


SYSTEMS = {
    # launch/README.md says where each value comes from; none was run on the machine.
    "aurora": System(
        "pbs", 12, "torch", "xpu",
        (Queue("debug", 1, 2, 1), Queue("debug-scaling", 1, 31, 1), Queue("prod", 1, 10624, 24)),
        "module load frameworks",
        'mpiexec -n {ranks} -ppn "$RANKS_PER_NODE" --cpu-bind="$CPU_BIND"',
    ),
    "polaris": System(
        "pbs", 4, "torch", "cuda",
        (Queue("debug", 1, 2, 1), Queue("debug-scaling", 1, 10, 1), Queue("prod", 10, 496, 24),
         Queue("preemptable", 1, 10, 72, auto=False), Queue("demand", 1, 56, 1, auto=False)),
        "module use /soft/modulefiles\nmodule load conda\nconda activate base",
        'mpiexec -n {ranks} -ppn "$RANKS_PER_NODE" --cpu-bind depth -d 16',
    ),
    "perlmutter": System(
        "slurm", 4, "torch", "cuda",
        (Queue("debug", 1, 8, 0.5), Queue("regular", 1, 1792, 48)),
        "module load pytorch",
        "srun -N {nodes} -n {ranks} --ntasks-per-node=4 --gpus-per-node=4 --cpus-per-task=32",
    ),
    "frontier": System(
        "slurm", 8, "torch", "cuda",
        (Queue("batch", 1, 91, 2), Queue("batch", 92, 183, 6), Queue("batch", 184, 9408, 12),
         Queue("extended", 1, 64, 24)),
        "module load PrgEnv-gnu rocm craype-accel-amd-gfx90a",
        "srun -N {nodes} -n {ranks} --ntasks-per-node=8 -c7 --gpus-per-task=1 "
        "--gpu-bind=closest",
    ),
}
NEEDS_PYTHON = {"frontier"}  # no site module with torch: --venv or --setup is required


def seconds_of(walltime: str) -> int:
    """``HH:MM:SS`` in seconds."""
    h, m, s = (int(x) for x in walltime.split(":"))
    return 3600 * h + 60 * m + s


def default_margin(walltime_s: int) -> int:
    """Seconds before the scheduler's limit at which the trainer stops (and Slurm warns):
    5% of the walltime, at least one minute, at most ten."""
    return min(600, max(60, walltime_s // 20))


def pick_queue(system: System, nodes: int, walltime_s: int, queue: str | None) -> str:
    """``queue`` checked against the system's queue table, or the first queue that accepts
    ``nodes`` for ``walltime_s``. Raises ``ValueError`` with the table when none does."""
    table = "; ".join(str(q) for q in system.queues)
    if queue is None:
        for q in system.queues:
            if q.auto and q.fits(nodes, walltime_s):
                return q.name
        raise ValueError(f"no queue takes {nodes} node(s) for {walltime_s} s ({table}); "
                         f"change --nodes or --walltime, or give --queue")
    known = [q for q in system.queues if q.name == queue]
    if known and not any(q.fits(nodes, walltime_s) for q in known):
        rules = "; ".join(str(q) for q in known)
        raise ValueError(f"queue {queue} does not take {nodes} node(s) for {walltime_s} s "
                         f"({rules}); the queues: {table}")
    if not known:
        print(f"submit.py: warning: queue {queue!r} is not in the table for this system; its "
              f"limits are not checked", file=sys.stderr)
    return queue


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
    p.add_argument("--margin", type=int,
                   help="seconds before the walltime at which training stops with its final "
                        "checkpoint (and Slurm sends SIGUSR1); default 5%% of the walltime, "
                        "60-600 s")
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
    check_cluster_args(p, args)
    return args


def check_cluster_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Walltime margin, queue rules and the Python environment of ``--system``."""
    walltime_s = seconds_of(args.walltime)
    args.margin = default_margin(walltime_s) if args.margin is None else args.margin
    if not 0 <= args.margin < walltime_s:
        p.error(f"--margin must be between 0 and the walltime ({walltime_s} s)")
    if args.system == "local":
        return
    system = SYSTEMS[args.system]
    try:
        args.queue = pick_queue(system, args.nodes, walltime_s, args.queue)
    except ValueError as exc:
        p.error(str(exc))
    if args.system in NEEDS_PYTHON and not (args.venv or args.setup):
        p.error(f"--system {args.system}: the site modules have no PyTorch; give --venv (torch "
                f"for ROCm and mpi4py built against cray-mpich) or --setup")


def hpcflow_args(args: argparse.Namespace, backend: str, device: str,
                 walltime: bool = False) -> list[str]:
    """The hpcflow command line (after ``-m hpcflow``), with absolute paths: batch jobs start
    in another directory. ``walltime``: pass the job's walltime minus ``--margin`` as
    ``train.walltime`` (counted from ``$HPCFLOW_JOB_START``, the job's start)."""
    run_dir = str(Path(args.run_dir).resolve())
    if args.command == "train":
        cmd = ["train", str(Path(args.config).resolve()), "-o", run_dir,
               "--set", f"distributed.backend={backend}", "--set", f"distributed.device={device}"]
        if walltime:
            cmd += ["--set", f"train.walltime={seconds_of(args.walltime) - args.margin}"]
    else:  # sample reuses the run's resolved configuration, distributed section included
        cmd = ["sample", run_dir]
    return cmd + args.extra


PROLOGUE = """\
# The job's clock starts here: train.walltime counts from HPCFLOW_JOB_START, so the start-up
# (modules, imports, model build) is part of it and the final checkpoint lands in time.
HPCFLOW_JOB_START="$(date +%s)"
export HPCFLOW_JOB_START
set -eo pipefail
# HPCFLOW_SKIP_SETUP=1 skips the site's module/environment lines (tests on another machine).
if [[ -z "${{HPCFLOW_SKIP_SETUP:-}}" ]]; then
  :
{setup}
fi
set -u  # only now: `conda activate` and some module files read unset variables
"""

LAUNCH = """\
# HPCFLOW_LAUNCHER replaces the site launcher (e.g. `mpiexec -n 2` to try this script elsewhere).
if [[ -n "${{HPCFLOW_LAUNCHER:-}}" ]]; then
  read -r -a launcher <<<"$HPCFLOW_LAUNCHER"
else
  launcher=({launcher})
fi
echo "hpcflow: {nodes} node(s) x {rpn} ranks, job {job_id}, $(date), launcher: ${{launcher[*]}}"
"${{launcher[@]}}" \\
  {command}
"""

RENDEZVOUS = """\
# torch.distributed rendezvous on the high-speed network: the IPv4 address of this node's
# {iface} (the batch script runs on the job's first node, where rank 0 runs). Unset (no {iface},
# e.g. a local try) hpcflow uses the host name. MASTER_ADDR set before the job wins.
if [[ -z "${{MASTER_ADDR:-}}" ]]; then
  hsn_addr="$(ip -4 -o addr show dev {iface} 2>/dev/null | awk '{{print $4}}' | cut -d/ -f1 \\
    | head -n 1 || true)"
  if [[ -n "$hsn_addr" ]]; then export MASTER_ADDR="$hsn_addr"; fi
fi
"""


def render(args: argparse.Namespace) -> tuple[str, str, Path]:
    """(batch script text, the launch block inside it, where the script goes)."""
    system = SYSTEMS[args.system]
    run_dir = Path(args.run_dir).resolve()
    script = run_dir / f"job-{args.system}-{args.command}.{system.extension}"
    backend = args.backend or system.backend
    device = args.device or system.device
    ranks = args.nodes * system.ranks_per_node
    command = [args.python, "-m", "mpi4py", "-m", "hpcflow",
               *hpcflow_args(args, backend, device, walltime=True)]
    job_id = "${PBS_JOBID:-?}" if system.scheduler == "pbs" else "${SLURM_JOB_ID:-?}"
    launch = LAUNCH.format(launcher=system.launcher.format(ranks=ranks, nodes=args.nodes),
                           nodes=args.nodes, rpn=system.ranks_per_node, job_id=job_id,
                           command=" ".join(shlex.quote(c) for c in command))
    setup = args.setup if args.setup is not None else system.setup
    if args.venv:
        setup += f"\nsource {shlex.quote(str(Path(args.venv).resolve()))}/bin/activate"
    values = {
        "job_name": args.job_name or f"hpcflow-{args.command}",
        "project": args.project,
        "queue": args.queue,
        "nodes": str(args.nodes),
        "walltime": args.walltime,
        "margin": str(args.margin),
        "prologue": PROLOGUE.format(setup=setup),
        "rendezvous": RENDEZVOUS.format(iface="hsn0"),
        "launch": launch,
        "script": str(script),
        "log_dir": str(run_dir / "logs"),
    }
    text = (HERE / f"{args.system}.{system.extension}").read_text()
    text = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)
    return text, launch, script


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
        print("# ---- launch ----")
        print(launch_line, end="")
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
