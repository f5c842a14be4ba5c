"""The fused CPU kernels: `csrc/rqs.cpp`, `csrc/loops.cpp`, `csrc/conv.cpp`, `csrc/su3.cpp` and
`csrc/eig.cpp`, built on first use and loaded as torch operators.

``torch.ops.hpcflow.rqs_forward`` / ``rqs_backward`` evaluate the rational-quadratic splines of
:mod:`hpcflow.flows.splines` (circular with bias, and on an interval; forward and inverse) and
their backward in one pass over the elements, on CPU tensors of float32 or float64: one
operator call forward and one backward instead of ~40 and ~95 tensor operations (issue 19),
and about half the time at the sizes of a training step (perf/RESULTS.md).
``torch.ops.hpcflow.loop_product`` / ``loop_product_backward`` form the ordered products of many
lattice paths from the links through a gather table (:func:`loop_product`, for SU(N) matrices
and U(1) angles: :func:`hpcflow.lattice.loops.table_product` without extending the links,
gathering and multiplying step by step). ``torch.ops.hpcflow.depthwise_periodic`` and
``depthwise_periodic_kernel_grad`` are the depthwise periodic convolution of the CP-factorized
convolutions (:func:`hpcflow.nn.factorized.depthwise_periodic_conv1d`) and its kernel's
gradient. ``torch.ops.hpcflow.su3_spectral`` / ``su3_spectral_backward`` are SU(3)'s whole
eigen-angle map (:func:`hpcflow.flows.spectral.su3_spectral`: sort, canonical cell, the two
coupling splines with their series parameters, the Haar log-Jacobian), one call each way
instead of ~280 and ~400 (the splines' element code is shared with ``rqs.cpp``: ``rqs.h``).
``torch.ops.hpcflow.su3_eig`` is :func:`hpcflow.lattice.eigen.su3_eig`'s closed-form
eigen-decomposition in one pass (forward only: its backward, written out in
:class:`hpcflow.flows.spectral._UnitaryEig`, needs only the outputs).

The sources are compiled by torch's extension loader (``torch.utils.cpp_extension.load``, which
needs a C++ compiler and ninja; the ``ninja`` package provides the latter) the first time a
process asks for them, ~20-30 s, into a folder of ``TORCH_EXTENSIONS_DIR`` (default
``~/.cache/torch_extensions``) named by a hash of the sources, the flags and torch's version;
concurrent MPI ranks wait for one build (the loader locks the folder). Later processes load
the built library directly (``torch.ops.load_library``): no lock, no ninja run, so a rank
killed at start-up cannot leave a lock behind that would stop the next job. Configuration keys
``distributed.splines`` (the splines, SU(3)'s eigen-angle map) and ``distributed.kernels`` (the
loops, the factorized convolutions, SU(3)'s eigen-decomposition) choose (docs/config.md).
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

__all__ = ["MAX_STEPS", "applies", "fused_kernels_error", "loop_product", "loops_apply"]

SOURCES = tuple(Path(__file__).resolve().parent / "csrc" / name
                for name in ("rqs.cpp", "loops.cpp", "conv.cpp", "su3.cpp", "eig.cpp"))
HEADERS = (Path(__file__).resolve().parent / "csrc" / "rqs.h",)  # included by rqs.cpp, su3.cpp
# -fopenmp: at::parallel_for is a serial loop unless the kernel is built with OpenMP (torch's
# CPU builds use OpenMP threads too)
CFLAGS = ("-O3", "-fopenmp")
LDFLAGS = ("-fopenmp",)
MAX_BINS = 64  # kMaxBins of csrc/rqs.h
MAX_STEPS = 64  # kMaxSteps of csrc/loops.cpp: the longest path loop_product walks
MAX_MODES = 8  # kMaxModes of csrc/su3.cpp
OPERATORS = ("rqs_forward", "loop_product", "depthwise_periodic", "su3_spectral",
             "su3_eig")  # one of each source
STALE_LOCK_S = 300.0  # a build takes ~10-15 s; a lock this old was left by a killed build


def library_name() -> str:
    """The extension's name: ``hpcflow_kernels_`` and a hash of the sources, the flags and torch's
    version, so that a built library of that name is the one this code needs."""
    key = b"".join(source.read_bytes() for source in SOURCES + HEADERS)
    key += repr((CFLAGS, LDFLAGS, torch.__version__)).encode()
    return f"hpcflow_kernels_{hashlib.sha256(key).hexdigest()[:12]}"


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
                      "build of the fused CPU kernels", stacklevel=3)
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
def fused_kernels_error() -> str | None:
    """Build (once per source and machine) and load the kernels into this process. ``None``
    when the operators of every source (``OPERATORS``) are ready, else why not (no compiler,
    no ninja, a build error): the message of the failure."""
    if all(hasattr(torch.ops.hpcflow, op) for op in OPERATORS):
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
        cpp_extension.load(name=name, sources=[str(source) for source in SOURCES],
                           extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS),
                           is_python_module=False, verbose=False)
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


REAL = (torch.float32, torch.float64)
COMPLEX = (torch.complex64, torch.complex128)


def applies(x: torch.Tensor, dtypes: tuple, what: str, key: str = "distributed.kernels"
            ) -> bool:
    """The one rule for every fused kernel: ``x`` is a CPU tensor of one of ``dtypes``, not
    traced by ``torch.compile`` (which fuses the tensor operations itself), and the kernels
    build here. A build that fails is said by one warning with the reason (``what`` then run
    as tensor operations; ``key``: the configuration key that chooses), and the caller keeps
    its tensor operations."""
    if x.device.type != "cpu" or x.dtype not in dtypes or torch.compiler.is_compiling():
        return False
    error = fused_kernels_error()
    if error is not None:
        warnings.warn(f"the fused CPU kernels cannot be built here ({error}); {what} run as "
                      f"torch operations (the same maps, slower; {key})", stacklevel=3)
    return error is None


def loops_apply(links: torch.Tensor) -> bool:
    """Whether :func:`loop_product` takes ``links`` (real angles ``[B, M]`` or complex matrices
    ``[B, M, N, N]`` with ``N <= 4``) by :func:`applies`."""
    if links.dim() == 2:
        return applies(links, REAL, "the loops")
    return (links.dim() == 4 and links.shape[-1] == links.shape[-2] <= 4
            and applies(links, COMPLEX, "the loops"))


def loop_product(links: torch.Tensor, table: torch.Tensor, trace: bool = False
                 ) -> torch.Tensor:
    """:func:`hpcflow.lattice.loops.table_product` of ``Algebra.extend(links)``, read from the
    links themselves by the fused kernel (``csrc/loops.cpp``): ``links: [B, M, *E]`` (angles
    ``[B, M]`` real, or matrices ``[B, M, N, N]`` complex), ``table: [rows, len]``
    (:func:`hpcflow.lattice.loops.path_table`, entries in ``[0, 2M]``) -> ``[B, rows, *E]``;
    with ``trace`` (matrices), the products' traces ``[B, rows]`` (no matrix is stored, forward
    or backward). One operator call forward and one backward (first order: a second
    derivative raises). Call where :func:`loops_apply`."""
    return _LoopProduct.apply(links, table, trace)


class _LoopProduct(torch.autograd.Function):
    """Autograd of :func:`loop_product`; saves the links only (the backward recomputes the
    products: docs/physics.md, "Gauge-equivariant coupling layer")."""

    @staticmethod
    def forward(ctx, links, table, trace):
        links = links.contiguous()  # lazy conjugation: resolved by torch's dispatcher
        ctx.save_for_backward(links, table)
        ctx.trace = trace
        return torch.ops.hpcflow.loop_product(links, table, links.shape[1], trace)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph: the kernel's backward is first order
            raise RuntimeError("loop_product: second derivatives are not implemented (the fused "
                               "kernel's backward is first order); differentiate without "
                               "create_graph=True or set distributed.kernels: torch")
        links, table = ctx.saved_tensors
        return torch.ops.hpcflow.loop_product_backward(grad, links, table, links.shape[1],
                                                       ctx.trace), None, None
