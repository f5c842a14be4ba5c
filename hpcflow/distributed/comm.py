"""The communicator: the one place where ranks exchange data.

Training is data-parallel: every rank holds the whole flow, draws its share of the global batch,
and the ranks average their gradients once per step, so that every rank applies the same update
and the parameters stay identical. The rest of hpcflow only calls the methods of
:class:`Communicator` and never asks which library is underneath:

=============  ===========================================================================
backend        what carries the data
=============  ===========================================================================
``none``       nothing: one process (:class:`NoneComm`)
``mpi``        mpi4py on NumPy views of CPU buffers (:class:`MPIComm`); GPU data is staged
               through host memory
``torch``      ``torch.distributed``: gloo on CPU, nccl on CUDA/ROCm, xccl on Intel XPU
               (:class:`TorchComm`); the rendezvous goes through MPI, so ``mpiexec``/``srun``
               alone starts a job (no ``torchrun``)
``horovod``    ``horovod.torch`` (:class:`HorovodComm`); build it with
               ``launch/install_horovod.sh``
=============  ===========================================================================

``distributed.backend = auto`` (:func:`make_communicator`) means ``none`` for one process and
``mpi`` for several: MPI works wherever ``mpiexec`` does, with no second rendezvous and no
device-specific library. On GPU clusters choose ``torch`` (nccl/xccl keep gradients on the
device and use the vendor's collectives); the scripts in ``launch/`` do.

Costs and guarantees of :meth:`Communicator.allreduce_mean_`, the call made every step:

- one collective per call: all tensors are packed into one flat buffer (float64 if any input is
  float64 or complex128, else float32), reduced, and unpacked. Thousands of small per-tensor
  collectives would each pay the network latency. Whatever else a step must exchange rides in
  the same buffer (``sums=``, summed rather than averaged): the trainer sends every sample's
  log weight and its stop votes with the gradients, so that a training step makes ONE
  collective (hpcflow/app/train.py);
- float64 in, float64 sums: no precision is lost to the transport.

Bitwise identical replicas: no MPI, NCCL, gloo or Horovod document promises that a sum reduced
in a tree or a ring comes out bit-for-bit the same on every rank (in practice it does). Ranks
whose parameters drift apart would silently train different models, and a restart from rank
0's checkpoint would not continue what the others computed. :meth:`Communicator.check_replicas_`
hashes the parameters and optimizer state (one pass over them) and compares the hashes with one
2-element MAX-allreduce; if any rank differs, rank 0's state is broadcast and
:attr:`Communicator.repairs` counts it. The trainer checks at every checkpoint, where the check
is also the barrier that makes the ranks wait for rank 0's file, and every
``distributed.check_every`` steps.
"""

from __future__ import annotations

import atexit
import os
import socket
import sys
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import torch

from .device import BackendError, select_device, set_threads
from .env import launch_info, launched_by_mpi

__all__ = [
    "Communicator",
    "NoneComm",
    "MPIComm",
    "TorchComm",
    "HorovodComm",
    "make_communicator",
    "install_abort_hook",
    "abort_all",
    "available_backends",
]

_HOROVOD_HINT = (
    "build it into the environment with `bash launch/install_horovod.sh [VENV]` "
    "(README.md, 'Horovod'), or choose the torch or mpi backend"
)


# ------------------------------------------------------------------------------ flat buffers
def _float_buffer_dtype(tensors: list[torch.Tensor]) -> torch.dtype:
    """float64 if any tensor carries float64 precision, else float32 (half types widen)."""
    for t in tensors:
        if not (t.is_floating_point() or t.is_complex()):
            raise TypeError(f"allreduce_mean_ averages floating tensors, got {t.dtype}")
    wide = any(t.dtype in (torch.float64, torch.complex128) for t in tensors)
    return torch.float64 if wide else torch.float32


def _real_view(t: torch.Tensor) -> torch.Tensor:
    """A complex tensor ``[...]`` as its real view ``[..., 2]``; a real tensor as it is."""
    return torch.view_as_real(t) if t.is_complex() else t


def _pack_floats(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """All elements of ``tensors`` in one new 1-D buffer ``[sum numel (x2 if complex)]``."""
    dtype = _float_buffer_dtype(tensors)
    return torch.cat([_real_view(t.detach()).reshape(-1).to(device, dtype) for t in tensors])


@torch.no_grad()
def _unpack_floats_(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy ``flat`` back into ``tensors`` (inverse of :func:`_pack_floats`), casting back."""
    offset = 0
    for t in tensors:
        target = _real_view(t)
        n = target.numel()
        target.copy_(flat[offset : offset + n].view(target.shape))
        offset += n


def _as_bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of ``t`` as a 1-D uint8 tensor (a copy only if ``t`` is not contiguous)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _pack_bytes(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """Raw bytes of all ``tensors``, any dtypes, in one 1-D uint8 buffer (for broadcasts)."""
    return torch.cat([_as_bytes(t).to(device) for t in tensors])


@torch.no_grad()
def _unpack_bytes_(buf: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel() * t.element_size()
        # clone: a view into the middle of ``buf`` may be misaligned for ``t.dtype``.
        chunk = buf[offset : offset + n].clone().view(t.dtype).view(t.shape)
        t.copy_(chunk)
        offset += n


def _rows_as_bytes(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t: [n, *rest]`` as ``[n, row_bytes]`` uint8 and ``rest``; a 0-d tensor counts as
    ``[1]``."""
    t = t.detach().reshape(1) if t.dim() == 0 else t.detach()
    rest = tuple(t.shape[1:])
    row_bytes = t.element_size()
    for d in rest:
        row_bytes *= d
    return _as_bytes(t).view(t.shape[0], row_bytes), rest


def _rows_from_bytes(rows: torch.Tensor, dtype: torch.dtype, rest: tuple[int, ...]):
    """Inverse of :func:`_rows_as_bytes`: ``[N, row_bytes]`` uint8 to ``[N, *rest]``."""
    return rows.contiguous().reshape(-1).view(dtype).view(rows.shape[0], *rest)


#: 64-bit words hashed with one weight vector (8 MiB of weights per device, made once)
_FP_CHUNK = 1 << 20
_fp_weights: dict[str, torch.Tensor] = {}


def _fp_weight_vector(device: torch.device) -> torch.Tensor:
    """``[_FP_CHUNK]`` fixed random odd int64 weights on ``device`` (the same on every rank)."""
    w = _fp_weights.get(str(device))
    if w is None:
        gen = torch.Generator().manual_seed(0x5EED_F1A7)
        w = torch.randint(-(1 << 63), (1 << 63) - 1, (_FP_CHUNK,), generator=gen,
                          dtype=torch.int64) | 1
        _fp_weights[str(device)] = w = w.to(device)
    return w


def _words(t: torch.Tensor) -> torch.Tensor:
    """The bits of ``t`` as 64-bit words ``[ceil(bytes / 8)]`` (int64), zero-padded."""
    b = _as_bytes(t)
    pad = -b.numel() % 8
    if pad or b.storage_offset() % 8:
        b = torch.cat([b, b.new_zeros(pad)])  # a new, aligned buffer
    return b.view(torch.int64)


def _chunk_multiplier(k: int) -> int:
    """An odd 64-bit multiplier for the ``k``-th chunk (a Weyl sequence), as a signed int."""
    m = ((k + 1) * 0x9E3779B97F4A7C15 % (1 << 64)) | 1
    return m - (1 << 64) if m >= 1 << 63 else m


def _fingerprint(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """``[h, ~h]`` (int64, on the first tensor's device) with ``h`` a 64-bit hash of the bits
    of ``tensors`` (any dtypes and devices, in order).

    Each tensor's bytes are read as 64-bit words ``b_i`` (zero-padded) in chunks of
    ``_FP_CHUNK``; ``h = sum_k m_k sum_i w_i b_ki mod 2^64`` with fixed random odd weights
    ``w_i`` and odd chunk multipliers ``m_k``. A difference in one word changes ``h`` (an odd
    weight times a nonzero difference is nonzero mod 2^64); several differences (the last-bit
    differences of differently ordered sums, a sign) cancel only with probability ~2^-64.
    A MAX-allreduce of ``[h, ~h]`` yields ``[max h, ~min h]``; all ranks agree iff
    ``max h == min h``. (``~h`` rather than ``-h``: no overflow at -2^63.)
    """
    h = None
    k = 0
    for t in tensors:
        words = _words(t)
        w = _fp_weight_vector(words.device)
        for lo in range(0, words.numel(), _FP_CHUNK):
            part = words[lo:lo + _FP_CHUNK]
            # int64 arithmetic wraps modulo 2^64; a Python int multiplier needs no device copy
            s = (part * w[:part.numel()]).sum() * _chunk_multiplier(k)
            h = s if h is None else h + s.to(h.device)
            k += 1
    if h is None:
        h = torch.zeros((), dtype=torch.int64)
    return torch.stack([h, torch.bitwise_not(h)])


def _agree(fp: torch.Tensor) -> bool:
    """After the MAX-allreduce of :func:`_fingerprint`: did every rank hold the same hash?"""
    return bool(fp[0] == torch.bitwise_not(fp[1]))


def _state_tensors(module: torch.nn.Module, optimizer=None) -> list[torch.Tensor]:
    """Parameters and buffers of ``module``, then the tensors of ``optimizer``'s state (by
    parameter index and state name): what must be identical on every rank."""
    tensors = list(module.state_dict().values())
    if optimizer is not None:
        state = optimizer.state_dict()["state"]
        for index in sorted(state):
            tensors += [v for _, v in sorted(state[index].items())
                        if isinstance(v, torch.Tensor)]
    return tensors


# ---------------------------------------------------------------------------- the interface
class Communicator(ABC):
    """What a rank may ask of the others. Every method is collective: all ranks call it, in
    the same order, with tensors of the same shapes and dtypes (except :meth:`allgather`'s
    first dimension), or the job deadlocks.

    Attributes: ``backend`` (name), ``rank`` (0..size-1), ``size`` (ranks in the job),
    ``local_rank``/``local_size`` (on this node), ``device`` (where this rank computes),
    ``repairs`` (how often :meth:`check_replicas_` found ranks that differed and broadcast rank
    0's state).

    Tensors may live on any device; backends move them where their library needs them.
    """

    backend: str = "?"

    def __init__(self) -> None:
        self.rank = 0
        self.size = 1
        self.local_rank = 0
        self.local_size = 1
        self.device = torch.device("cpu")
        self.repairs = 0

    # -- backend primitives, on tensors that live on ``self._wire`` --------------------------
    @property
    def _wire(self) -> torch.device:
        """Where buffers must live for the library underneath (host memory for MPI)."""
        return self.device

    @abstractmethod
    def _allreduce_(self, t: torch.Tensor, op: str) -> None:
        """In-place ``op`` (``sum``/``max``) over ranks of a contiguous tensor on ``_wire``."""

    @abstractmethod
    def _broadcast_(self, buf: torch.Tensor, root: int) -> None:
        """In-place broadcast of a contiguous 1-D uint8 tensor on ``_wire``."""

    @abstractmethod
    def _allgather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows: [n_r, row_bytes]`` uint8 on ``_wire`` -> ``[sum_r n_r, row_bytes]``, rank
        order; ``row_bytes`` is the same on all ranks (checked before)."""

    @abstractmethod
    def broadcast_object(self, obj: Any = None, root: int = 0) -> Any:
        """Rank ``root``'s ``obj`` (picklable plain Python, tensors, e.g. a checkpoint dict) on
        every rank; other ranks' ``obj`` is ignored. Move tensors to the CPU first: they arrive
        on the device they were pickled from."""

    @abstractmethod
    def barrier(self) -> None:
        """Return once every rank has called it."""

    @abstractmethod
    def abort(self, code: int = 1) -> None:
        """Stop every rank of the job now, with exit status ``code``. Does not return."""

    def close(self) -> None:
        """Release the backend (end of the program; the object is unusable afterwards)."""
        return None

    # -- the public collectives ---------------------------------------------------------------
    @property
    def is_root(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0

    def allreduce_mean_(self, tensors: Iterable[torch.Tensor], *,
                        sums: torch.Tensor | None = None) -> torch.Tensor | None:
        """Replace each tensor by its mean over ranks, in place, with ONE collective.

        ``tensors``: floating or complex tensors of any shapes, on one device (gradients).
        ``sums``: an optional floating tensor (any shape) whose SUM over ranks is returned,
        reduced in the same collective: what else a step exchanges travels without a second
        latency. The sum runs in float64 if any input is float64/complex128, else float32; each
        tensor gets the mean cast back to its dtype. Integer tensors raise ``TypeError``: a mean
        of integers is not an integer. With one rank nothing moves and ``sums`` is returned as
        given.
        """
        tensors = list(tensors)
        parts = tensors + ([sums] if sums is not None else [])
        _float_buffer_dtype(parts)  # the same TypeError with one rank as with several
        if self.size == 1 or not parts:
            return sums
        home = parts[0].device
        # Pack where the tensors live, then move one buffer (one host copy for MPI + GPU).
        flat = _pack_floats(parts, home).to(self._wire)
        self._allreduce_(flat, "sum")
        n_mean = flat.numel() - (_real_view(sums).numel() if sums is not None else 0)
        flat[:n_mean].div_(self.size)
        flat = flat.to(home)
        _unpack_floats_(flat[:n_mean], tensors)
        if sums is None:
            return None
        out = torch.empty_like(sums)
        _unpack_floats_(flat[n_mean:], [out])
        return out

    def allreduce_gradients_(self, parameters: Iterable[torch.Tensor], *,
                             sums: torch.Tensor | None = None) -> torch.Tensor | None:
        """Average ``p.grad`` over ranks for every parameter that requires a gradient; the sum
        over ranks of ``sums`` rides in the same collective and is returned
        (:meth:`allreduce_mean_`).

        A parameter without a gradient on this rank gets zeros, so that all ranks pack the same
        buffer (a rank whose batch did not reach some layer still takes part).
        """
        grads = []
        for p in parameters:
            if not p.requires_grad:
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        return self.allreduce_mean_(grads, sums=sums)

    def check_replicas_(self, module: torch.nn.Module, optimizer=None, root: int = 0,
                        extra: Sequence[torch.Tensor] = ()) -> bool:
        """Whether every rank holds bit-identical parameters and buffers of ``module``, state
        of ``optimizer`` and ``extra`` tensors (e.g. a parameter average): one hash pass over
        them and one 2-element MAX-allreduce (module docstring). If not, rank ``root``'s are
        broadcast to all, :attr:`repairs` is counted and False returned. Also a barrier: no
        rank returns before every rank called it."""
        if self.size == 1:
            return True
        extra = list(extra)
        fp = _fingerprint(_state_tensors(module, optimizer) + extra).to(self._wire)
        self._allreduce_(fp, "max")
        if _agree(fp):
            return True
        self.repairs += 1
        self.broadcast_model_(module, root)
        if optimizer is not None:
            self.broadcast_optimizer_(optimizer, root)
        self.broadcast_(extra, root)
        return False

    def allreduce_sum(self, x):
        """Sum over ranks of ``x``: a Python number, a NumPy array or a tensor (any shape);
        returns the same kind, shape and device (bool sums become int64 counts). For metrics:
        ``loss_sum, n = comm.allreduce_sum(np.array([loss_sum, n]))``."""
        return self._reduce(x, "sum")

    def allreduce_max(self, x):
        """Elementwise maximum over ranks of ``x`` (as :meth:`allreduce_sum`)."""
        return self._reduce(x, "max")

    def allgather(self, tensor: torch.Tensor) -> torch.Tensor:
        """All ranks' ``tensor: [n_r, *rest]`` concatenated along dim 0 in rank order:
        ``[sum_r n_r, *rest]`` on this rank's device. ``n_r`` may differ between ranks (0 too);
        ``rest`` and dtype may not. A 0-d tensor counts as ``[1]``. Any dtype."""
        rows, rest = _rows_as_bytes(tensor)
        if self.size == 1:
            return _rows_from_bytes(rows, tensor.dtype, rest).clone()
        meta = torch.tensor([rows.shape[1], -rows.shape[1]], dtype=torch.int64, device=self._wire)
        self._allreduce_(meta, "max")
        if int(meta[0] + meta[1]) != 0:
            raise ValueError(
                f"allgather: rank {self.rank} has rows of shape {list(rest)} ({tensor.dtype}); "
                "all ranks must agree on every dimension but the first and on the dtype"
            )
        out = self._allgather_rows(rows.to(self._wire))
        return _rows_from_bytes(out, tensor.dtype, rest).to(tensor.device)

    def broadcast_(self, tensors: Iterable[torch.Tensor], root: int = 0) -> None:
        """Overwrite ``tensors`` (any shapes and dtypes, same on all ranks) with rank
        ``root``'s values, in place, with one collective on their packed bytes."""
        tensors = list(tensors)
        if self.size == 1 or not tensors:
            return
        home = tensors[0].device
        buf = _pack_bytes(tensors, home).to(self._wire)
        self._broadcast_(buf, root)
        if self.rank != root:
            _unpack_bytes_(buf.to(home), tensors)

    def broadcast_model_(self, module: torch.nn.Module, root: int = 0) -> None:
        """Make parameters and buffers of ``module`` equal to rank ``root``'s (start of
        training: every rank must begin from the same weights)."""
        self.broadcast_(module.state_dict().values(), root)

    def broadcast_optimizer_(self, optimizer: torch.optim.Optimizer, root: int = 0) -> None:
        """Give every rank rank ``root``'s optimizer state (moments, step counts) through its
        ``state_dict``; this works for every optimizer and backend alike."""
        state = self.broadcast_object(optimizer.state_dict() if self.rank == root else None, root)
        if self.rank != root:
            optimizer.load_state_dict(state)

    # -- helpers ----------------------------------------------------------------------------
    def _reduce(self, x, op: str):
        if isinstance(x, torch.Tensor):
            t = x.detach()
            kind = "tensor"
        elif isinstance(x, np.ndarray | np.generic):
            t = torch.from_numpy(np.array(x))
            kind = "numpy"
        elif isinstance(x, bool | int | float | complex):
            # Python floats are doubles: keep them so (torch.tensor(1.5) would be float32).
            wide = {float: torch.float64, complex: torch.complex128}.get(type(x))
            t = torch.tensor(x, dtype=wide)
            kind = type(x)
        else:
            raise TypeError(f"cannot reduce a {type(x).__name__}; give a number, array or tensor")
        if self.size == 1:
            out = t.clone()
        else:
            dtype = t.dtype
            wire_dtype = dtype
            if dtype == torch.bool:  # counted (sum) or or-ed (max) as integers
                wire_dtype = torch.uint8 if op == "max" else torch.int64
            out = t.to(self._wire, wire_dtype, copy=True).contiguous()
            self._allreduce_(out, op)
            if dtype == torch.bool and op == "max":
                out = out.bool()
        if kind == "tensor":
            return out.to(x.device)
        if kind == "numpy":
            arr = out.cpu().numpy()
            return arr if isinstance(x, np.ndarray) else arr[()]
        value = out.item()
        return kind(value) if kind is not bool or op == "max" else int(value)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rank={self.rank}, size={self.size}, "
            f"local_rank={self.local_rank}/{self.local_size}, device={self.device})"
        )

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed stream must not keep us from aborting
            pass


#: seconds between the last write and MPI_Abort: the launcher forwards our output through a
#: pipe, and the abort kills the forwarding processes (a message was lost now and then without)
ABORT_DRAIN_S = 1.0


def _flush_before_abort() -> None:
    _flush()
    time.sleep(ABORT_DRAIN_S)


def _abort_world(world, code: int) -> None:
    """``MPI_Abort`` on the mpi4py communicator ``world`` (or nothing when ``None``), then end
    this process whatever happened. MPI_Abort is a "best attempt": MPICH's returned now and then
    on a loaded node, and the caller went on to print its message a second time (a CI failure);
    mpi4py raises instead where the library reports an error. Never returns, never raises."""
    _flush_before_abort()
    try:
        if world is not None:
            world.Abort(code)
    finally:
        os._exit(code)


# ------------------------------------------------------------------------------------- none
class NoneComm(Communicator):
    """One process: collectives return their input (a copy where a new object is returned)."""

    backend = "none"

    def __init__(self, device: str = "auto", threads: int = 0, *, gpu_affinity: str = "modulo"):
        super().__init__()
        self.device = select_device(device, 0, affinity=gpu_affinity)
        set_threads(threads, 1)

    def _allreduce_(self, t, op):  # pragma: no cover - size 1 never reaches the wire
        pass

    def _broadcast_(self, buf, root):  # pragma: no cover
        pass

    def _allgather_rows(self, rows):  # pragma: no cover
        return rows

    def broadcast_object(self, obj=None, root=0):
        return obj

    def barrier(self) -> None:
        pass

    def abort(self, code: int = 1) -> None:
        _flush()
        os._exit(code)


# -------------------------------------------------------------------------------------- mpi
def _import_mpi(purpose: str):
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise BackendError(
            "backend", f"{purpose} needs mpi4py, which is not importable ({exc}); install it with "
            "`pip install mpi4py` (plus `pip install mpich` where no site MPI exists)"
        ) from None
    return MPI


def _node_layout(world) -> tuple[int, int]:
    """Local rank and ranks on this node, from MPI's shared-memory split (launcher-neutral)."""
    MPI = _import_mpi("hpcflow.distributed")
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=world.Get_rank())
    try:
        return node.Get_rank(), node.Get_size()
    finally:
        node.Free()


class MPIComm(Communicator):
    """mpi4py on NumPy views of contiguous CPU buffers (CUDA/XPU data is copied through host
    memory: no CUDA-aware MPI is assumed). Works under any ``mpiexec``/``srun``; a process
    started alone is rank 0 of 1 (singleton MPI)."""

    backend = "mpi"

    def __init__(self, device: str = "auto", threads: int = 0, *, gpu_affinity: str = "modulo",
                 comm=None):
        super().__init__()
        MPI = _import_mpi("distributed.backend=mpi")
        self._MPI = MPI
        self._comm = comm if comm is not None else MPI.COMM_WORLD
        self._ops = {"sum": MPI.SUM, "max": MPI.MAX}
        self.rank, self.size = self._comm.Get_rank(), self._comm.Get_size()
        self.local_rank, self.local_size = _node_layout(self._comm)
        self.device = select_device(device, self.local_rank, affinity=gpu_affinity)
        set_threads(threads, self.local_size)

    @property
    def _wire(self) -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        # NumPy has no bfloat16; reductions never see it (float buffers are float32/64).
        return t.numpy()

    def _allreduce_(self, t, op):
        self._comm.Allreduce(self._MPI.IN_PLACE, self._np(t), op=self._ops[op])

    def _broadcast_(self, buf, root):
        self._comm.Bcast(buf.numpy(), root=root)

    def _allgather_rows(self, rows):
        row_bytes = rows.shape[1]
        counts = np.array(self._comm.allgather(rows.shape[0]), dtype=np.int64) * row_bytes
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        out = np.empty(int(counts.sum()), dtype=np.uint8)
        send = rows.contiguous().numpy().reshape(-1)
        self._comm.Allgatherv(send, [out, counts, displs, self._MPI.BYTE])
        return torch.from_numpy(out).view(-1, row_bytes)

    def broadcast_object(self, obj=None, root=0):
        return self._comm.bcast(obj, root=root)

    def barrier(self) -> None:
        self._comm.Barrier()

    def abort(self, code: int = 1) -> None:
        _abort_world(self._comm, code)


# ------------------------------------------------------------------------ torch.distributed
_TORCH_BACKEND = {"cpu": "gloo", "cuda": "nccl", "xpu": "xccl"}


class TorchComm(Communicator):
    """``torch.distributed`` with the device's own library: gloo (CPU), nccl (CUDA/ROCm),
    xccl (Intel XPU; torch >= 2.8, else the ``ccl`` backend of oneccl_bindings_for_pytorch).

    Rendezvous without ``torchrun``: under an MPI launcher, rank 0 opens a ``TCPStore`` on a
    port the OS picks (no race for a "free" port) and broadcasts host and port with mpi4py.
    The host is ``MASTER_ADDR`` if set, ``127.0.0.1`` when all ranks share one node, else rank
    0's hostname. Under ``torchrun`` its ``env://`` variables are used; alone, a world of 1.
    """

    backend = "torch"

    def __init__(self, device: str = "auto", threads: int = 0, *, gpu_affinity: str = "modulo",
                 timeout_s: float = 600.0):
        super().__init__()
        import torch.distributed as dist

        if not dist.is_available():
            raise BackendError("backend", "torch: this torch build has no torch.distributed; "
                                          "choose the mpi backend")
        self._dist = dist
        self._mpi_world = None
        self._store = None
        info = launch_info()
        if launched_by_mpi():
            MPI = _import_mpi("distributed.backend=torch (rendezvous under mpiexec/srun)")
            self._mpi_world = MPI.COMM_WORLD
            self.rank, self.size = self._mpi_world.Get_rank(), self._mpi_world.Get_size()
            self.local_rank, self.local_size = _node_layout(self._mpi_world)
        else:
            self.rank, self.size = info.rank, info.size
            self.local_rank, self.local_size = info.local_rank, info.local_size
        self.device = select_device(device, self.local_rank, affinity=gpu_affinity)
        set_threads(threads, self.local_size)
        self.library = self._library_for(self.device)
        timeout = timedelta(seconds=timeout_s)
        self._owns_group = not dist.is_initialized()
        if not self._owns_group:  # someone (a notebook, a framework) set it up already
            pass
        elif info.launcher == "torchrun":
            dist.init_process_group(self.library, init_method="env://", rank=self.rank,
                                    world_size=self.size, timeout=timeout)
        else:
            self._store = self._rendezvous(timeout)
            dist.init_process_group(self.library, store=self._store, rank=self.rank,
                                    world_size=self.size, timeout=timeout)
        self._ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}
        self._closed = False
        # A rank that leaves while a peer still tears down its process group can kill that
        # peer (std::terminate from a gloo/TCPStore thread): close in step, also at exit.
        atexit.register(self.close)

    def _library_for(self, device: torch.device) -> str:
        dist = self._dist
        name = _TORCH_BACKEND[device.type]
        available = {
            "gloo": dist.is_gloo_available,
            "nccl": dist.is_nccl_available,
            "xccl": getattr(dist, "is_xccl_available", lambda: False),
        }[name]()
        if available:
            return name
        if name == "xccl":
            try:  # Intel's extension registers the older "ccl" backend
                import oneccl_bindings_for_pytorch  # noqa: F401
            except ImportError:
                pass
            else:
                return "ccl"
        raise BackendError(
            "backend", f"torch: the {name} backend needed for {device.type} is not in "
            f"this torch build ({torch.__version__}); choose the mpi backend"
        )

    def _rendezvous(self, timeout: timedelta):
        dist = self._dist
        if self.rank == 0:
            if os.environ.get("MASTER_ADDR"):
                host = os.environ["MASTER_ADDR"]
            elif self.local_size == self.size:
                host = "127.0.0.1"
            else:
                host = socket.gethostname()
            port = int(os.environ.get("MASTER_PORT", 0))
            store = dist.TCPStore(host, port, self.size, is_master=True, timeout=timeout,
                                  wait_for_workers=False)
            address = (host, store.port)
        else:
            address = None
        if self._mpi_world is not None:
            address = self._mpi_world.bcast(address, root=0)
        if self.rank != 0:
            store = dist.TCPStore(address[0], address[1], self.size, is_master=False,
                                  timeout=timeout)
        return store

    def _allreduce_(self, t, op):
        self._dist.all_reduce(t, op=self._ops[op])

    def _broadcast_(self, buf, root):
        self._dist.broadcast(buf, src=root)

    def _allgather_rows(self, rows):
        n = torch.tensor([rows.shape[0]], dtype=torch.int64, device=self._wire)
        counts = [torch.empty_like(n) for _ in range(self.size)]
        self._dist.all_gather(counts, n)
        counts = [int(c) for c in counts]
        longest = max(counts)
        # all_gather needs equal sizes: pad every rank's rows to the longest, then trim.
        padded = torch.zeros(longest, rows.shape[1], dtype=torch.uint8, device=self._wire)
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        self._dist.all_gather(parts, padded)
        return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])

    def broadcast_object(self, obj=None, root=0):
        box = [obj]
        self._dist.broadcast_object_list(box, src=root, device=self._wire)
        return box[0]

    def barrier(self) -> None:
        # A tiny all-reduce instead of dist.barrier(): nccl's barrier guesses a device.
        self._allreduce_(torch.zeros(1, device=self._wire), "sum")

    def abort(self, code: int = 1) -> None:
        # without MPI (torchrun, or alone) the agent / other ranks notice the dead peer
        _abort_world(self._mpi_world, code)

    def close(self) -> None:
        """Tear down in step: barrier, destroy the process group, then drop the TCPStore
        clients before rank 0's server, with MPI barriers between (idempotent)."""
        if getattr(self, "_closed", True):
            return
        self._closed = True
        if self._owns_group and self._dist.is_initialized():
            self.barrier()
            self._dist.destroy_process_group()
        if self.rank != 0:
            self._store = None
        if self._mpi_world is not None:
            self._mpi_world.Barrier()
        self._store = None
        if self._mpi_world is not None:
            self._mpi_world.Barrier()


# ---------------------------------------------------------------------------------- horovod
def _import_horovod():
    try:
        import horovod.torch as hvd
    except ImportError as exc:
        raise BackendError(
            "backend", f"horovod: horovod.torch is not importable ({exc}); " + _HOROVOD_HINT
        ) from None
    except Exception as exc:  # e.g. built against another torch: undefined symbols
        raise BackendError(
            "backend", f"horovod: horovod.torch is installed but fails to load ({exc}); "
            "rebuild it against this torch: " + _HOROVOD_HINT
        ) from None
    return hvd


class HorovodComm(Communicator):
    """``horovod.torch`` (0.28.1, MPI or Gloo controller). Gradients go through the same packed
    buffer as the other backends (Horovod's "fused allreduce"), reduced with ``op=Sum`` and
    divided here rather than ``op=Average``: Horovod averages by multiplying with ``1/size``,
    which differs from ``sum / size`` in the last bit for sizes that are not powers of two, and
    every backend should give the same numbers. Parameters are broadcast with
    ``hvd.broadcast_parameters``; optimizer state goes through its ``state_dict``
    (:meth:`Communicator.broadcast_optimizer_`), which works for every torch optimizer."""

    backend = "horovod"

    def __init__(self, device: str = "auto", threads: int = 0, *, gpu_affinity: str = "modulo"):
        super().__init__()
        hvd = _import_horovod()
        self._hvd = hvd
        hvd.init()
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        self.device = select_device(device, self.local_rank, affinity=gpu_affinity)
        set_threads(threads, self.local_size)
        # Without NCCL/CCL, Horovod reduces host memory only.
        on_device = self.device.type == "cuda" and hvd.nccl_built()
        self._wire_device = self.device if on_device else torch.device("cpu")
        self._ops = {"sum": hvd.Sum, "max": hvd.Max}

    @property
    def _wire(self) -> torch.device:
        return self._wire_device

    def _allreduce_(self, t, op):
        self._hvd.allreduce_(t, op=self._ops[op])

    def _broadcast_(self, buf, root):
        self._hvd.broadcast_(buf, root_rank=root)

    def _allgather_rows(self, rows):
        return self._hvd.allgather(rows)  # Horovod gathers unequal first dimensions itself

    def broadcast_model_(self, module: torch.nn.Module, root: int = 0) -> None:
        self._hvd.broadcast_parameters(module.state_dict(), root_rank=root)

    def broadcast_object(self, obj=None, root=0):
        # An explicit name: Horovod's default is the object's type name, which differs between
        # the root (a dict) and the others (None), so the ranks would never match up.
        return self._hvd.broadcast_object(obj, root_rank=root, name="hpcflow.broadcast_object")

    def barrier(self) -> None:
        self._hvd.barrier()

    def abort(self, code: int = 1) -> None:
        try:
            from mpi4py import MPI

            world = MPI.COMM_WORLD
        except ImportError:
            world = None
        _abort_world(world, code)

    def close(self) -> None:
        self._hvd.shutdown()


# ------------------------------------------------------------------------------- selection
def available_backends() -> dict[str, str]:
    """Each backend and whether it can be used here (``ok`` or why not), for ``hpcflow info``."""
    out = {"none": "ok"}
    try:
        import mpi4py  # noqa: F401 - importing the package does not initialize MPI
        out["mpi"] = "ok"
    except ImportError:
        out["mpi"] = "mpi4py not installed"
    import torch.distributed as dist

    out["torch"] = "ok" if dist.is_available() else "torch.distributed not in this build"
    try:
        import horovod  # noqa: F401 - the package alone; horovod.torch loads the extension
        import horovod.torch  # noqa: F401
        out["horovod"] = "ok"
    except ImportError:
        out["horovod"] = "not installed (launch/install_horovod.sh)"
    except Exception as exc:
        out["horovod"] = f"installed but unusable: {exc}"
    return out


def make_communicator(backend: str = "auto", device: str = "auto", threads: int = 0, *,
                      gpu_affinity: str | None = None) -> Communicator:
    """The communicator of a backend (``auto``, ``none``, ``mpi``, ``torch``, ``horovod``),
    the device of this rank bound (``auto``, ``cpu``, ``cuda``, ``xpu``) and its CPU threads
    set (0: see :func:`~hpcflow.distributed.env.threads_per_rank`).

    ``backend = auto``: ``none`` for one process; ``mpi`` when an MPI launcher started several
    (works everywhere ``mpiexec``/``srun`` does); ``torch`` under ``torchrun``. On GPU clusters
    prefer ``torch`` explicitly (see the module docstring and ``launch/``).

    ``gpu_affinity``: ``modulo`` or ``reverse`` (:func:`hpcflow.distributed.env.device_index`);
    default ``$HPCFLOW_GPU_AFFINITY`` or ``modulo``. ``launch/polaris.pbs`` sets ``reverse``.

    Raises :class:`~hpcflow.distributed.device.BackendError` (field ``backend`` or ``device``)
    when the backend cannot be used: library missing, or ``none`` asked for while the launcher
    started several ranks, or the device is not there.
    """
    affinity = gpu_affinity or os.environ.get("HPCFLOW_GPU_AFFINITY") or "modulo"
    if affinity not in ("modulo", "reverse"):
        raise BackendError("gpu_affinity",
                           f"HPCFLOW_GPU_AFFINITY must be modulo or reverse, got {affinity!r}")
    info = launch_info()
    if backend == "auto":
        if info.size == 1:
            backend = "none"
        elif info.launcher == "torchrun":
            backend = "torch"
        else:
            _import_mpi(f"{info.size} ranks started by {info.launcher} (backend auto)")
            backend = "mpi"
    if backend == "none" and info.size > 1:
        raise BackendError(
            "backend", f"none, but {info.launcher} started {info.size} ranks, which would each "
            "work alone into the same run directory; use auto, mpi, torch or horovod, or start "
            "one process")
    kwargs = {"device": device, "threads": threads, "gpu_affinity": affinity}
    cls = {"none": NoneComm, "mpi": MPIComm, "torch": TorchComm, "horovod": HorovodComm}[backend]
    return cls(**kwargs)


# ------------------------------------------------------------------------------ abort hook
def install_abort_hook(comm: Communicator) -> None:
    """Make an uncaught exception on any rank stop every rank (no hang), traceback shown.

    Without this, a rank that dies leaves the others waiting forever in their next collective.
    The hook prints the traceback prefixed by the rank, flushes, and calls ``comm.abort(1)``
    (``MPI_Abort``: the launcher kills all ranks). Exceptions in other threads abort too. With
    one rank nothing changes. ``python -m mpi4py`` does the same for mpi4py's own runner; the
    ``hpcflow`` console script relies on this hook.
    """
    if comm.size == 1:
        return

    def report_and_abort(exc_type, exc, tb, where: str) -> None:
        try:
            text = "".join(traceback.format_exception(exc_type, exc, tb))
            sys.stderr.write(
                f"hpcflow: uncaught exception on rank {comm.rank} of {comm.size}{where}; "
                f"aborting all ranks\n{text}"
            )
        finally:
            comm.abort(1)

    def hook(exc_type, exc, tb):
        report_and_abort(exc_type, exc, tb, "")

    def thread_hook(args):
        if args.exc_type is SystemExit:
            return
        where = f" (thread {args.thread.name})" if args.thread is not None else ""
        report_and_abort(args.exc_type, args.exc_value, args.exc_traceback, where)

    sys.excepthook = hook
    threading.excepthook = thread_hook


def abort_all(comm: Communicator, message: str, code: int = 2, *, grace_s: float = 2.0) -> None:
    """End the whole job with exit status ``code`` and, usually, ``message`` printed once.

    For an expected error (an input error of the application) found after the ranks started
    talking: if only some ranks meet it (a file missing on one node, rank 0 failing to read the
    checkpoint it was about to broadcast), a plain ``return 2`` leaves the others waiting in
    their next collective forever. Rank 0 prints and aborts at once; other ranks wait
    ``grace_s`` first, so that when rank 0 has the same error its abort ends them before they
    print a duplicate, and when it does not they still print theirs (prefixed with the rank).
    With one rank: prints and exits. Does not return.
    """
    if comm.size > 1 and comm.rank != 0:
        time.sleep(grace_s)
        message = f"[rank {comm.rank}] {message}"
    sys.stderr.write(message.rstrip("\n") + "\n")
    _flush()
    if comm.size == 1:
        sys.exit(code)
    comm.abort(code)
