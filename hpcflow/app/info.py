"""``hpcflow info``: versions, MPI library, communication backends and devices."""

from __future__ import annotations

import os
import platform

import numpy
import torch

from .._version import __version__
from ..distributed import available_backends, launch_info

__all__ = ["info_rows"]


def info_rows() -> list[tuple[str, str]]:
    """``(what, value)`` rows of ``hpcflow info``."""
    launch = launch_info()
    backends = ", ".join(f"{k}: {v}" for k, v in available_backends().items())
    return [
        ("hpcflow", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform()),
        ("torch", torch.__version__),
        ("numpy", numpy.__version__),
        ("h5py", _version_of("h5py")),
        ("scipy", _version_of("scipy")),
        ("mpi4py", _version_of("mpi4py")),
        ("MPI library", _mpi_library()),
        ("launcher", f"{launch.launcher or 'none'}, rank {launch.rank} of {launch.size}"),
        ("hpcflow backends", backends),
        ("horovod", _horovod_status()),
        ("torch.distributed", _torch_distributed_status()),
        ("CPU threads (torch)", f"{torch.get_num_threads()} of {os.cpu_count()} cores"),
        ("CUDA", _cuda_status()),
        ("XPU", _xpu_status()),
        ("fused CPU kernels", _fused_kernels_status()),
    ]


def _fused_kernels_status() -> str:
    """Whether the fused CPU kernels (splines and loops) build and load here
    (``distributed.splines``, ``distributed.kernels``); asking builds them the first time
    (~20-30 s), so that training ranks find them in the cache."""
    from ..kernels import fused_kernels_error

    error = fused_kernels_error()
    if error is None:
        return "available (distributed.splines and .kernels: auto uses them on CPUs)"
    return f"unavailable, tensor operations instead: {error}"


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
    if not torch.cuda.is_available():
        return "none"
    names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
    return f"{torch.cuda.device_count()} device(s): {', '.join(sorted(names))}"


def _xpu_status() -> str:
    xpu = getattr(torch, "xpu", None)
    if xpu is None or not xpu.is_available():
        return "none"
    return f"{xpu.device_count()} device(s)"
