"""Distributed layer: launcher detection, device binding, and the communicator.

Everything that crosses between ranks goes through a :class:`Communicator` made by
:func:`make_communicator`::

    comm = make_communicator("auto", device="auto")   # binds the device, sets threads
    install_abort_hook(comm)                     # an exception on one rank stops all
    comm.broadcast_model_(model)                 # same start on every rank
    ...
    loss.backward()
    comm.allreduce_gradients_(model.parameters())   # one collective per step
    optimizer.step()
    comm.check_replicas_(model, optimizer)       # now and then: identical bits everywhere

Modules: :mod:`.env` (what the launcher says: rank, size, local rank; pure functions),
:mod:`.device` (device, threads and float32 precision per rank), :mod:`.comm` (the
interface and the backends none, mpi, torch, horovod).
"""

from .comm import (
    Communicator,
    HorovodComm,
    MPIComm,
    NoneComm,
    TorchComm,
    abort_all,
    available_backends,
    install_abort_hook,
    make_communicator,
)
from .device import (
    BackendError,
    select_device,
    set_deterministic,
    set_float32_precision,
    set_threads,
)
from .env import LaunchInfo, device_index, launch_info, launched_by_mpi, threads_per_rank

__all__ = [
    "BackendError",
    "Communicator",
    "NoneComm",
    "MPIComm",
    "TorchComm",
    "HorovodComm",
    "make_communicator",
    "install_abort_hook",
    "abort_all",
    "available_backends",
    "select_device",
    "set_deterministic",
    "set_float32_precision",
    "set_threads",
    "LaunchInfo",
    "launch_info",
    "launched_by_mpi",
    "device_index",
    "threads_per_rank",
]
