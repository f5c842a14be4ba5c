"""The fused spline kernel: `csrc/rqs.cpp`, built on first use and loaded as torch operators.

``torch.ops.hpcflow.rqs_forward`` / ``rqs_backward`` evaluate the rational-quadratic splines of
:mod:`hpcflow.flows.splines` (circular with bias, and on an interval; forward and inverse) and
their backward in one pass over the elements, on CPU tensors of float32 or float64: one
operator call forward and one backward instead of ~40 and ~95 tensor operations (issue 19),
and about half the time at the sizes of a training step (perf/RESULTS.md).

The source is compiled by torch's extension loader (``torch.utils.cpp_extension.load``, which
needs a C++ compiler and ninja; the ``ninja`` package provides the latter) the first time a
process asks for it, ~15 s, and cached under ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) keyed by the source and the flags: later processes load the
cached library in well under a second, and concurrent MPI ranks wait for one build (the loader
locks its build folder). Configuration key ``distributed.splines`` chooses (docs/config.md).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

__all__ = ["fused_splines_error"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "rqs.cpp"
NAME = "hpcflow_rqs"
MAX_BINS = 64  # kMaxBins of csrc/rqs.cpp
STALE_LOCK_S = 600.0  # a build takes ~10 s; a lock this old was left by a killed build


def _remove_stale_lock(cpp_extension) -> None:
    """torch's loader waits without end for the lock file of the build folder; a process
    killed while building (a cancelled job) leaves it, and every later process would hang.
    A lock older than ``STALE_LOCK_S`` is removed first (one warning)."""
    try:
        folder = Path(cpp_extension._get_build_directory(NAME, verbose=False))
    except Exception:  # noqa: BLE001 - a private helper of torch: without it, nothing to clean
        return
    lock = folder / "lock"
    try:
        age = time.time() - lock.stat().st_mtime
    except OSError:
        return
    if age > STALE_LOCK_S:
        warnings.warn(f"removing {lock}, left {age / 60:.0f} minutes ago by an interrupted "
                      "build of the fused spline kernel", stacklevel=3)
        lock.unlink(missing_ok=True)


def _ninja_on_path() -> None:
    """Put the ``ninja`` package's binary on ``PATH`` when none is there (a virtual
    environment's ``bin`` is not on ``PATH`` unless it is activated)."""
    if shutil.which("ninja"):
        return
    try:
        import ninja
    except ImportError:
        return
    os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


@functools.cache
def fused_splines_error() -> str | None:
    """Build (once per source and machine) and load the kernel into this process. ``None`` when
    ``torch.ops.hpcflow.rqs_forward`` is ready, else why it is not (no compiler, no ninja, a
    build error): the message of the failure."""
    if hasattr(torch.ops.hpcflow, "rqs_forward"):
        return None
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)  # its compiler warnings: the reason below says what failed
    try:
        from torch.utils import cpp_extension

        _ninja_on_path()
        _remove_stale_lock(cpp_extension)
        # -fopenmp: at::parallel_for is a serial loop unless the kernel is built with OpenMP
        # (torch's CPU builds use OpenMP threads too)
        cpp_extension.load(name=NAME, sources=[str(SOURCE)], extra_cflags=["-O3", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - any failure means "not available", with its reason
        return f"{type(err).__name__}: {_reason(str(err))}"
    finally:
        logger.setLevel(level)
    return None


def _reason(text: str) -> str:
    """The informative line of a failed build's message (the compiler's error, a missing
    program), else its last line; at most 200 characters."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    keys = ("error:", "not found", "No such file", "Ninja is required", "command not found")
    line = next((ln for ln in lines if any(k in ln for k in keys)), lines[-1] if lines else "")
    return line[:200]
