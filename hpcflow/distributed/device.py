"""Which device a rank computes on, how many CPU threads it uses, and how exactly it computes.

One rank per accelerator is the layout of every launch script in ``launch/``: 12 XPU tiles per
Aurora node, 4 A100 per Polaris or Perlmutter node, 8 MI250X dies per Frontier node. The rank
picks its device from its local rank (:func:`hpcflow.distributed.env.device_index`) and makes it the
current device, so that later ``torch.cuda``/``torch.xpu`` calls without an index, NCCL and
oneCCL all use it.

Precision policy (:func:`set_float32_precision`, :func:`set_deterministic`): float32 matrix
products and convolutions run in full float32 on GPUs unless ``distributed.tf32`` allows
TensorFloat-32, and ``train.deterministic`` also pins what CUDA needs for repeatable numbers.
Both only set flags, so CPU runs are unaffected.
"""

from __future__ import annotations

import os

import torch

from .env import device_index, threads_per_rank

__all__ = ["BackendError", "accelerator_available", "select_device", "set_deterministic",
           "set_float32_precision", "set_threads"]

#: cuBLAS workspace setting that makes its results repeatable (PyTorch, "Reproducibility")
CUBLAS_DETERMINISTIC = ":4096:8"


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


def set_float32_precision(tf32: bool) -> None:
    """Allow (``tf32``) or forbid TensorFloat-32 in float32 matrix products (cuBLAS) and
    convolutions (cuDNN) of this process; the setting of ``distributed.tf32``.

    TF32 keeps 10 of float32's 23 mantissa bits (relative error ~5e-4 per product) on NVIDIA
    Ampere and later GPUs. A flow's ``log q`` sums the log-determinants of all layers, and the
    importance weights ``exp(-S - log q)`` amplify its errors, so hpcflow computes in full
    float32 unless asked; torch itself enables TF32 for cuDNN convolutions by default.

    Sets ``torch.backends.cuda.matmul.allow_tf32``, ``torch.backends.cudnn.allow_tf32`` and
    ``torch.set_float32_matmul_precision`` (``high`` with TF32, else ``highest``), the flags
    that PyTorch's CUDA notes ("TensorFloat-32 (TF32) on Ampere (and later) devices") name; on
    other devices they change nothing. Only these (older) flags: torch >= 2.9 also has
    ``fp32_precision`` attributes, and refuses to read flags set through a mix of both.
    """
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def set_deterministic(enabled: bool = True) -> str | None:
    """Make this process's kernels deterministic (``train.deterministic``); returns the line to
    log, or None when ``enabled`` is False (then nothing changes).

    ``torch.use_deterministic_algorithms(True)`` (an operation without a deterministic
    implementation then raises), ``torch.backends.cudnn.deterministic = True`` and
    ``torch.backends.cudnn.benchmark = False`` (no autotuner choosing different convolution
    algorithms in different runs), and ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` in the environment
    unless already set (cuBLAS reads it when its first handle is made, so call this before the
    first matrix product on the GPU; the trainer does, before it builds the model).
    """
    if not enabled:
        return None
    preset = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if not preset:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    origin = "from the environment" if preset else "set for cuBLAS"
    return ("deterministic: torch.use_deterministic_algorithms(True), cuDNN deterministic, "
            f"cuDNN benchmark off, CUBLAS_WORKSPACE_CONFIG="
            f"{os.environ['CUBLAS_WORKSPACE_CONFIG']} ({origin})")
