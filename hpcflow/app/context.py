"""The run context: what every command of the application shares.

One object per command run holds the communicator, the run directory, the per-rank logger and
the few rules that every command follows the same way:

- **one rank-split rule** (:meth:`RunContext.share`): rank ``r`` of ``R`` handles the global
  indices ``r, r + R, r + 2R, ...`` of any list of work items (training samples, proposals,
  chains). Every item draws its random numbers from its own stream, so results do not depend on
  ``R``; :meth:`RunContext.gather` puts per-rank results back into global index order (one
  sum-allreduce of :meth:`RunContext.place`: the split is known, so no counts are exchanged);
- **logging** (:mod:`logging`): every rank writes ``RUN_DIR/logs/rank-NNNNN.log`` with
  timestamps (when the command has a run directory); rank 0 also writes to the terminal; the
  error that ends a rank also goes to rank 0's log and, if it is the job's first, to
  ``RUN_DIR/logs/first-error.log`` (:meth:`RunContext.report_error`);
- **progress** (:meth:`RunContext.progress`): a bar on an interactive terminal, periodic log
  lines otherwise, rank 0 only;
- **rank 0 writes, everyone waits** (:meth:`RunContext.on_root`), with the one atomic writer of
  :mod:`hpcflow.io.atomic` for every file that must never be seen half-written.

:func:`run_context` opens one for a command: it makes the communicator (an unusable backend or
device becomes a :class:`~hpcflow.errors.ConfigError` naming the key), sets the float32
precision policy (``distributed.tf32``), installs the hook that stops every rank when one fails,
and ends every rank when an input error is met after the ranks started talking.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from ..distributed import (
    BackendError,
    Communicator,
    abort_all,
    install_abort_hook,
    make_communicator,
    set_float32_precision,
)
from ..errors import ConfigError, HpcflowError

__all__ = ["Progress", "RunContext", "run_context"]


class RunContext:
    """Communicator, run directory, logger and shared rules of one command run.

    ``comm``: the :class:`~hpcflow.distributed.Communicator`; ``run_dir``: where the command
    writes (``None`` for commands that write nothing); ``command``: its name, for messages;
    ``terminal``: whether rank 0 logs to the terminal (tests turn it off).
    """

    def __init__(self, comm: Communicator, run_dir: str | Path | None = None, *,
                 command: str = "hpcflow", terminal: bool = True):
        self.comm = comm
        self.command = command
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = logging.getLogger(f"hpcflow.{command}.{id(self):x}")
        self.log.setLevel(logging.INFO)
        self.log.propagate = False
        if terminal and comm.is_root:
            handler = logging.StreamHandler(sys.stdout)
            handler.setFormatter(logging.Formatter(f"hpcflow {command}: %(message)s"))
            self.log.addHandler(handler)
        if self.run_dir is not None:
            self.log_to_file(self.run_dir / "logs" / f"rank-{comm.rank:05d}.log")

    def log_to_file(self, path: Path) -> None:
        """Also write this rank's log, with timestamps, to ``path`` (appended)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s rank {self.comm.rank}/{self.comm.size} {self.command} "
            f"%(levelname)s %(message)s"))
        self.log.addHandler(handler)

    def report_error(self, message: str, exc_info=None) -> None:
        """Make this rank's failure findable from anywhere: it goes to this rank's log (with the
        traceback ``exc_info``), into ``logs/first-error.log`` if no rank wrote one yet (the
        first error of the job, whichever rank), and, from another rank, into rank 0's log:
        the rank that hangs or fails at 768 ranks is named where one looks first."""
        for handler in self.log.handlers:
            if isinstance(handler, logging.FileHandler):
                handler.handle(self.log.makeRecord(self.log.name, logging.ERROR, "", 0,
                                                   message, None, exc_info))
        if self.run_dir is None:
            return
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} rank {self.rank}/{self.size} {self.command} ERROR {message}\n"
        logs = self.run_dir / "logs"
        with contextlib.suppress(OSError):
            fd = os.open(logs / "first-error.log", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(line)
        if self.rank != 0:
            with contextlib.suppress(OSError), open(logs / "rank-00000.log", "a") as f:
                f.write(f"{stamp} rank 0/{self.size} {self.command} ERROR from rank "
                        f"{self.rank}: {message}\n")

    def close(self) -> None:
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)

    # ------------------------------------------------------------------ ranks
    @property
    def rank(self) -> int:
        return self.comm.rank

    @property
    def size(self) -> int:
        return self.comm.size

    @property
    def is_root(self) -> bool:
        return self.comm.is_root

    @property
    def device(self) -> torch.device:
        return self.comm.device

    def share(self, n: int) -> range:
        """This rank's global indices of ``n`` work items: ``rank, rank + size, ... < n``."""
        return range(self.comm.rank, n, self.comm.size)

    def place(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """``[n, ...]`` zeros with this rank's rows of :meth:`share` ``(n)`` (``local:
        [len(share(n)), ...]``) at their global indices. Summed over ranks this is the whole
        batch in global order, exactly: every row has one contributor and ``x + 0 = x``. The
        split is known in advance, so no rank has to send its row count."""
        out = local.new_zeros((n, *local.shape[1:]))
        out[self.comm.rank:n:self.comm.size] = local
        return out

    def gather(self, local: torch.Tensor, n: int) -> torch.Tensor:
        """Every rank's rows of :meth:`share` ``(n)`` (``local: [len(share(n)), ...]``, a
        number or bool dtype) on every rank, in global index order: ``[n, ...]``; one
        sum-allreduce of :meth:`place` (a ``-0.0`` arrives as ``0.0``)."""
        if self.comm.size == 1:
            return local.clone()
        rows = self.comm.allreduce_sum(self.place(local, n))
        return rows.bool() if local.dtype == torch.bool else rows

    def on_root(self, fn: Callable[..., Any], *args, **kwargs) -> Any:
        """Once every rank got here, run ``fn`` on rank 0 only, and wait for it on every rank
        (e.g. joining the shards every rank has closed); rank 0's result is returned on rank 0,
        ``None`` elsewhere."""
        self.comm.barrier()
        result = fn(*args, **kwargs) if self.comm.is_root else None
        self.comm.barrier()
        return result

    # ------------------------------------------------------------------ progress
    def progress(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "it"
                 ) -> Progress:
        """A progress display for ``total`` units of work (rank 0 only; see :class:`Progress`)."""
        return Progress(total, initial=initial, desc=desc or self.command, unit=unit,
                        log=self.log if self.comm.is_root else None)


class Progress:
    """A tqdm bar on an interactive terminal, a log line every 5% of the work otherwise.

    ``update(k, line=..., **postfix)``: ``k`` more units done; ``postfix`` shows on the bar,
    ``line`` is what a log line says (default: units done and rate). ``force=True`` logs the
    line now. Inactive (``log=None``, other ranks) it does nothing.
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "it",
                 log: logging.Logger | None = None):
        self.total, self.done, self.unit, self.log = total, initial, unit, log
        self.every = max(1, total // 20)
        self.next_line = (initial // self.every + 1) * self.every
        self.t0 = time.perf_counter()
        self.start = initial
        self.bar = None
        if log is not None and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                            dynamic_ncols=True)

    def update(self, k: int = 1, *, line: str | None = None, force: bool = False,
               **postfix) -> None:
        if self.log is None:
            return
        self.done += k
        if self.bar is not None:
            self.bar.update(k)
            if postfix:
                self.bar.set_postfix(**postfix)
            return
        if force or self.done >= self.next_line or self.done >= self.total:
            self.next_line = (self.done // self.every + 1) * self.every
            if line is None:
                rate = (self.done - self.start) / max(time.perf_counter() - self.t0, 1e-9)
                line = f"{self.done}/{self.total} {self.unit} ({rate:.1f} {self.unit}/s)"
            self.log.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def run_context(distributed, command: str, run_dir: str | Path | None = None
                ) -> Iterator[RunContext]:
    """Open the :class:`RunContext` of one command from the ``distributed`` config section.

    An input error (:class:`~hpcflow.errors.HpcflowError`) met after the ranks started talking
    ends every rank (a plain return on one rank would leave the others waiting in a collective);
    it is logged to this rank's log file first.
    """
    try:
        comm = make_communicator(distributed.backend, distributed.device, distributed.threads)
    except BackendError as exc:
        raise ConfigError(f"distributed.{exc.field}", str(exc)) from None
    set_float32_precision(distributed.tf32)
    install_abort_hook(comm)
    ctx = RunContext(comm, run_dir, command=command)
    try:
        yield ctx
    except HpcflowError as exc:
        ctx.report_error(str(exc))
        if comm.size > 1:
            abort_all(comm, f"hpcflow {command}: error: {exc}", exc.exit_code)
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        ctx.report_error(f"uncaught exception: {type(exc).__name__}: {exc}", sys.exc_info())
        raise
    finally:
        ctx.close()
        comm.close()
