"""Which device a rank computes on, and how many CPU threads it uses.

One rank per accelerator is the layout of every launch script in ``launch/``: 12 XPU tiles per
Aurora node, 4 A100 per Polaris or Perlmutter node, 8 MI250X dies per Frontier node. The rank
picks its device from its local rank (:func:`hpcflow.distributed.env.device_index`) and makes it the
current device, so that later ``torch.cuda``/``torch.xpu`` calls without an index, NCCL and
oneCCL all use it.
"""

from __future__ import annotations

import torch

from .env import device_index, threads_per_rank

__all__ = ["BackendError", "accelerator_available", "select_device", "set_threads"]


class BackendError(RuntimeError):
    """A communication backend or device that cannot be used here; ``field`` says which
    choice is at fault (``backend``, ``device``, ``gpu_affinity``)."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


def accelerator_available(kind: str) -> bool:
    """Whether torch can use ``cuda`` (NVIDIA, or AMD through ROCm) or ``xpu`` (Intel) here."""
    if kind == "cuda":
        return torch.cuda.is_available()
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return xpu is not None and xpu.is_available()
    return kind == "cpu"


def select_device(kind: str, local_rank: int, *, affinity: str = "modulo") -> torch.device:
    """Resolve ``distributed.device`` for this rank and make it the current device.

    ``kind``: ``auto`` (cuda, else xpu, else cpu), ``cpu``, ``cuda`` or ``xpu``. For an
    accelerator the index is ``device_index(local_rank, visible devices, affinity)``. Raises
    :class:`BackendError` (field ``device``) when the requested accelerator is not usable.
    """
    if kind == "auto":
        kind = next((k for k in ("cuda", "xpu") if accelerator_available(k)), "cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind not in ("cuda", "xpu"):
        raise BackendError("device", f"unknown device {kind!r}")
    if not accelerator_available(kind):
        build = (
            f"CUDA {torch.version.cuda}" if kind == "cuda" and torch.version.cuda else "CPU-only"
        )
        raise BackendError(
            "device", f"{kind} requested but torch {torch.__version__} ({build} build) sees no "
            f"{kind} device on this node; use cpu or auto, or install a torch build for this "
            "accelerator")
    module = getattr(torch, kind)
    index = device_index(local_rank, module.device_count(), affinity)
    module.set_device(index)
    return torch.device(kind, index)


def set_threads(requested: int, local_size: int) -> int:
    """Set torch's intra-op threads for this rank (see :func:`~.env.threads_per_rank`);
    returns the number in use afterwards."""
    n = threads_per_rank(requested, local_size)
    if n is not None and n != torch.get_num_threads():
        torch.set_num_threads(n)
    return torch.get_num_threads()
