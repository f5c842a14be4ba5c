"""Launcher detection, device choice and threads from fake environments (no MPI needed)."""

import pytest

from hpcflow.distributed.env import (
    LaunchInfo,
    device_index,
    launch_info,
    launched_by_mpi,
    threads_per_rank,
)


def test_alone_is_rank_0_of_1():
    assert launch_info({}) == LaunchInfo(0, 1, 0, 1, "none")
    assert not launched_by_mpi({})


def test_mpich_hydra():
    env = {"PMI_RANK": "3", "PMI_SIZE": "8", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "4",
           "PMI_FD": "9"}
    assert launch_info(env) == LaunchInfo(3, 8, 1, 4, "mpich")
    assert launched_by_mpi(env)


def test_mpich_pmi_local_rank_variant():
    env = {"PMI_RANK": "5", "PMI_SIZE": "8", "PMI_LOCAL_RANK": "1", "PMI_LOCAL_SIZE": "4"}
    assert launch_info(env) == LaunchInfo(5, 8, 1, 4, "mpich")


def test_mpiexec_with_one_rank_is_still_mpi():
    env = {"PMI_RANK": "0", "PMI_SIZE": "1"}
    assert launched_by_mpi(env) and launch_info(env).size == 1


def test_open_mpi():
    env = {"OMPI_COMM_WORLD_RANK": "6", "OMPI_COMM_WORLD_SIZE": "8",
           "OMPI_COMM_WORLD_LOCAL_RANK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    assert launch_info(env) == LaunchInfo(6, 8, 2, 4, "openmpi")


def test_pals_on_aurora_wins_over_pmi():
    env = {"PALS_RANKID": "13", "PALS_LOCAL_RANKID": "1", "PALS_NODEID": "1",
           "PMI_RANK": "13", "PMI_SIZE": "24", "PMI_LOCAL_RANK": "1", "PMI_LOCAL_SIZE": "12"}
    assert launch_info(env) == LaunchInfo(13, 24, 1, 12, "pals")


def test_slurm_step():
    env = {"SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_STEP_ID": "0",
           "SLURM_STEP_NUM_TASKS": "16", "SLURM_NTASKS": "16", "SLURM_NODEID": "1",
           "SLURM_STEP_TASKS_PER_NODE": "8(x2)"}
    assert launch_info(env) == LaunchInfo(9, 16, 1, 8, "slurm")


def test_slurm_uneven_tasks_per_node():
    env = {"SLURM_PROCID": "8", "SLURM_LOCALID": "0", "SLURM_STEPID": "1",
           "SLURM_STEP_NUM_TASKS": "11", "SLURM_NODEID": "2",
           "SLURM_STEP_TASKS_PER_NODE": "4(x2),3"}
    assert launch_info(env) == LaunchInfo(8, 11, 0, 3, "slurm")


def test_slurm_batch_script_without_srun_is_one_process():
    # The batch shell has SLURM_PROCID=0 and SLURM_NTASKS=all tasks, but no step.
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "32", "SLURM_JOB_ID": "123"}
    assert launch_info(env) == LaunchInfo()
    assert not launched_by_mpi(env)


def test_torchrun_is_not_mpi():
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}
    assert launch_info(env) == LaunchInfo(1, 2, 1, 2, "torchrun")
    assert not launched_by_mpi(env)


def test_garbage_values_fall_back_safely():
    env = {"PMI_RANK": "x", "PMI_SIZE": ""}
    assert launch_info(env) == LaunchInfo(0, 1, 0, 1, "mpich")


@pytest.mark.parametrize("local_rank, expect", [(0, 3), (1, 2), (2, 1), (3, 0), (4, 3), (7, 0)])
def test_polaris_reverse_affinity(local_rank, expect):
    assert device_index(local_rank, 4, "reverse") == 3 - local_rank % 4 == expect


def test_default_affinity_is_modulo():
    assert [device_index(r, 12) for r in range(14)] == [*range(12), 0, 1]
    assert device_index(5, 1) == device_index(5, 1, "reverse") == 0  # one visible device


def test_device_index_rejects_nonsense():
    with pytest.raises(ValueError, match="no devices"):
        device_index(0, 0)
    with pytest.raises(ValueError, match="affinity"):
        device_index(0, 4, "polaris")


def test_threads():
    kw = {"cpu_count": 16, "affinity_count": 16}
    assert threads_per_rank(3, 4, env={}, **kw) == 3  # distributed.threads wins
    assert threads_per_rank(0, 4, env={}, **kw) == 4  # unbound ranks split the node
    assert threads_per_rank(0, 32, env={}, **kw) == 1
    assert threads_per_rank(0, 1, env={}, **kw) is None  # alone: torch's default
    assert threads_per_rank(0, 4, env={"OMP_NUM_THREADS": "2"}, **kw) is None
    assert threads_per_rank(0, 4, env={}, cpu_count=16, affinity_count=4) is None  # bound
