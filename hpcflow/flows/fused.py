"""The fused spline kernel: `csrc/rqs.cpp`, built on first use and loaded as torch operators.

``torch.ops.hpcflow.rqs_forward`` / ``rqs_backward`` evaluate the rational-quadratic splines of
:mod:`hpcflow.flows.splines` (circular with bias, and on an interval; forward and inverse) and
their backward in one pass over the elements, on CPU tensors of float32 or float64: one
operator call forward and one backward instead of ~40 and ~95 tensor operations (issue 19),
and about half the time at the sizes of a training step (perf/RESULTS.md).

The source is compiled by torch's extension loader (``torch.utils.cpp_extension.load``, which
needs a C++ compiler and ninja; the ``ninja`` package provides the latter) the first time a
process asks for it, ~10-15 s, into a folder of ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) named by a hash of the source, the flags and torch's version;
concurrent MPI ranks wait for one build (the loader locks the folder). Later processes load
the built library directly (``torch.ops.load_library``): no lock, no ninja run, so a rank
killed at start-up cannot leave a lock behind that would stop the next job. Configuration key
``distributed.splines`` chooses (docs/config.md).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import shutil
import time
import warnings
from pathlib import Path

import torch

__all__ = ["fused_splines_error"]

SOURCE = Path(__file__).resolve().parent / "csrc" / "rqs.cpp"
# -fopenmp: at::parallel_for is a serial loop unless the kernel is built with OpenMP (torch's
# CPU builds use OpenMP threads too)
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)
MAX_BINS = 64  # kMaxBins of csrc/rqs.cpp
STALE_LOCK_S = 300.0  # a build takes ~10-15 s; a lock this old was left by a killed build


def library_name() -> str:
    """The extension's name: ``hpcflow_rqs_`` and a hash of the source, the flags and torch's
    version, so that a built library of that name is the one this code needs."""
    key = SOURCE.read_bytes() + repr((CFLAGS, LDFLAGS, torch.__version__)).encode()
    return f"hpcflow_rqs_{hashlib.sha256(key).hexdigest()[:12]}"


def build_folder(cpp_extension) -> Path:
    """Where torch's loader builds :func:`library_name` (created if missing)."""
    return Path(cpp_extension._get_build_directory(library_name(), verbose=False))


def _remove_stale_lock(cpp_extension) -> None:
    """torch's loader waits without end for the lock file of the build folder; a process
    killed while building (a cancelled job) leaves it, and every later first build would hang.
    A lock older than ``STALE_LOCK_S`` is removed first (one warning)."""
    try:
        folder = build_folder(cpp_extension)
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

        name = library_name()
        built = build_folder(cpp_extension) / f"{name}.so"
        if built.is_file():  # built before by this code: load it, no lock, no ninja
            torch.ops.load_library(str(built))
            return None
        _ninja_on_path()
        _remove_stale_lock(cpp_extension)
        cpp_extension.load(name=name, sources=[str(SOURCE)], extra_cflags=list(CFLAGS),
                           extra_ldflags=list(LDFLAGS), is_python_module=False, verbose=False)
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
