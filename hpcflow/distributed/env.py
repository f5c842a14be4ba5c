"""What the launcher tells a process: its rank, the number of ranks, its place on the node.

Pure functions of an environment mapping (``os.environ`` by default), so that they can be tested
with fake environments and run *before* MPI is initialized. That matters: importing ``mpi4py``
calls ``MPI_Init``, which on some login nodes (Cray MPICH) aborts a process that was not started
by a launcher, so :func:`hpcflow.distributed.make_communicator` first asks
:func:`launched_by_mpi` and only then imports MPI.

Launchers and the variables they set (first match wins):

==================  ===============================  ==========================================
launcher            rank / size                      local rank / local size
==================  ===============================  ==========================================
Open MPI            ``OMPI_COMM_WORLD_RANK/SIZE``    ``OMPI_COMM_WORLD_LOCAL_RANK/LOCAL_SIZE``
PALS (Aurora)       ``PALS_RANKID``, ``PMI_SIZE``    ``PALS_LOCAL_RANKID``, ``PALS_LOCAL_SIZE``
MPICH Hydra, PMI    ``PMI_RANK``, ``PMI_SIZE``       ``MPI_LOCALRANKID`` or ``PMI_LOCAL_RANK``,
                                                     ``MPI_LOCALNRANKS`` or ``PMI_LOCAL_SIZE``
Slurm ``srun``      ``SLURM_PROCID``,                ``SLURM_LOCALID``,
                    ``SLURM_STEP_NUM_TASKS``         ``SLURM_STEP_TASKS_PER_NODE``
torchrun            ``RANK``, ``WORLD_SIZE``         ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``
==================  ===============================  ==========================================

Slurm is recognised only inside a job *step* (``SLURM_STEP_ID`` set, i.e. under ``srun``): the
batch script itself also carries ``SLURM_PROCID=0`` and ``SLURM_NTASKS=<all tasks>``, and a
plain ``python`` there is one process, not rank 0 of many.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "LaunchInfo",
    "launch_info",
    "launched_by_mpi",
    "device_index",
    "threads_per_rank",
    "GPU_AFFINITIES",
]

MPI_LAUNCHERS = ("openmpi", "pals", "mpich", "slurm")
"""Launchers whose processes can initialize MPI together (``srun`` through Slurm's PMI)."""

GPU_AFFINITIES = ("modulo", "reverse")
"""``modulo``: GPU ``local_rank % n``. ``reverse``: GPU ``n - 1 - local_rank % n``, the Polaris
convention: ``--cpu-bind depth -d 16`` puts local rank 0 on cores 0-15, which sit next to GPU 3."""


@dataclass(frozen=True)
class LaunchInfo:
    """Where this process sits in the job, as its launcher reports it.

    ``launcher`` is one of ``openmpi``, ``pals``, ``mpich``, ``slurm``, ``torchrun`` or ``none``
    (a process started on its own: rank 0 of 1).
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launcher: str = "none"


def _int(env: Mapping[str, str], *names: str) -> int | None:
    """The first of ``names`` present in ``env`` with an integer value."""
    for name in names:
        value = env.get(name)
        if value is not None and value.strip().lstrip("-").isdigit():
            return int(value)
    return None


def _slurm_tasks_on_node(env: Mapping[str, str]) -> int | None:
    """Tasks of this step on this node from ``SLURM_STEP_TASKS_PER_NODE`` (e.g. ``4(x2),3``).

    The list is per node in node order; ``SLURM_NODEID`` picks this node's entry.
    """
    spec = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            return None
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    node = _int(env, "SLURM_NODEID") or 0
    return counts[node] if node < len(counts) else counts[-1]


def launch_info(env: Mapping[str, str] | None = None) -> LaunchInfo:
    """Rank, size, local rank and local size from the launcher's environment variables.

    Missing values default to rank 0 of 1 and local rank 0 of ``local_rank + 1``. The MPI-based
    communicators take the local rank from MPI itself (shared-memory groups), so these values
    matter only before MPI is initialized (choosing the backend) and for ``torchrun``.
    """
    env = os.environ if env is None else env

    def info(launcher, rank, size, local_rank, local_size) -> LaunchInfo:
        size = size if size and size > 0 else 1
        rank = rank if rank is not None and 0 <= rank < size else 0
        local_rank = local_rank if local_rank is not None and local_rank >= 0 else 0
        local_size = local_size if local_size and local_size > local_rank else local_rank + 1
        return LaunchInfo(rank, size, local_rank, local_size, launcher)

    if "OMPI_COMM_WORLD_RANK" in env or "OMPI_COMM_WORLD_SIZE" in env:
        return info(
            "openmpi",
            _int(env, "OMPI_COMM_WORLD_RANK"),
            _int(env, "OMPI_COMM_WORLD_SIZE"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
            _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"),
        )
    if "PALS_RANKID" in env:
        return info(
            "pals",
            _int(env, "PALS_RANKID"),
            _int(env, "PMI_SIZE", "PALS_SIZE"),
            _int(env, "PALS_LOCAL_RANKID", "PMI_LOCAL_RANK"),
            _int(env, "PALS_LOCAL_SIZE", "PMI_LOCAL_SIZE"),
        )
    if "PMI_RANK" in env or "PMI_SIZE" in env:
        return info(
            "mpich",
            _int(env, "PMI_RANK"),
            _int(env, "PMI_SIZE"),
            _int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK"),
            _int(env, "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"),
        )
    if "SLURM_PROCID" in env and ("SLURM_STEP_ID" in env or "SLURM_STEPID" in env):
        return info(
            "slurm",
            _int(env, "SLURM_PROCID"),
            _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS", "SLURM_NPROCS"),
            _int(env, "SLURM_LOCALID"),
            _slurm_tasks_on_node(env),
        )
    if "WORLD_SIZE" in env and "RANK" in env and "MASTER_ADDR" in env:
        return info(
            "torchrun",
            _int(env, "RANK"),
            _int(env, "WORLD_SIZE"),
            _int(env, "LOCAL_RANK"),
            _int(env, "LOCAL_WORLD_SIZE"),
        )
    return LaunchInfo()


def launched_by_mpi(env: Mapping[str, str] | None = None) -> bool:
    """Whether an MPI launcher (``mpiexec``, ``mpirun``, PALS, ``srun``) started this process.

    True even for ``mpiexec -n 1``: MPI is then safe to initialize. A process started by
    ``torchrun`` or on its own gives False.
    """
    return launch_info(env).launcher in MPI_LAUNCHERS


def device_index(local_rank: int, n_devices: int, affinity: str = "modulo") -> int:
    """The accelerator this rank should use among the ``n_devices`` it can see.

    ``modulo`` (default): ``local_rank % n_devices``; ranks beyond the device count share devices
    round-robin. ``reverse``: ``n_devices - 1 - local_rank % n_devices`` (Polaris, see
    :data:`GPU_AFFINITIES`). When the launcher already hides all but one device per rank
    (``CUDA_VISIBLE_DEVICES``, ``ZE_AFFINITY_MASK``, ``--gpu-bind=closest``), ``n_devices`` is 1
    and the answer is 0 either way.
    """
    if n_devices < 1:
        raise ValueError(f"no devices to choose from (n_devices = {n_devices})")
    if affinity not in GPU_AFFINITIES:
        choices = ", ".join(GPU_AFFINITIES)
        raise ValueError(f"GPU affinity must be one of {choices}, got {affinity!r}")
    i = local_rank % n_devices
    return n_devices - 1 - i if affinity == "reverse" else i


def threads_per_rank(
    requested: int,
    local_size: int,
    *,
    env: Mapping[str, str] | None = None,
    cpu_count: int | None = None,
    affinity_count: int | None = None,
) -> int | None:
    """CPU threads torch should use on this rank; ``None``: leave torch's default.

    - ``requested > 0`` (``distributed.threads``): exactly that.
    - ``OMP_NUM_THREADS`` set: ``None``; torch already follows it, and the launch scripts set it.
    - the launcher bound this rank to a subset of the cores (``--cpu-bind``,
      ``--cpus-per-task``): ``None``; torch's default already counts only those cores.
    - otherwise the ranks of a node would each start one thread per core and fight over them
      (``mpiexec -n 2`` on 2 cores runs 4 threads): split the cores, ``cores // local_size``.

    ``cpu_count`` (all cores) and ``affinity_count`` (cores this process may use) default to
    ``os.cpu_count()`` and ``len(os.sched_getaffinity(0))``.
    """
    env = os.environ if env is None else env
    if requested > 0:
        return requested
    if env.get("OMP_NUM_THREADS"):
        return None
    cpu_count = cpu_count if cpu_count is not None else os.cpu_count() or 1
    if affinity_count is None:
        try:
            affinity_count = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # not Linux
            affinity_count = cpu_count
    if affinity_count < cpu_count or local_size <= 1:
        return None
    return max(1, affinity_count // local_size)
