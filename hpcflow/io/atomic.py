"""The one atomic writer: a file is only ever visible complete under its final name.

Write to a temporary name in the same folder, flush and fsync, ``os.replace`` to the final
name, fsync the folder (a crash leaves either the old file or the new one, never half of one).
Temporaries carry the writer's process id, so that a stale one of a killed process can be told
from one being written right now (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "fsync_dir", "remove_stale_temporaries", "write_atomic"]


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def fsync_dir(directory: str | Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for a writer that wants a file name (torch.save,
    h5py, matplotlib); on success it is fsynced and renamed to ``path``; on error removed."""
    path = Path(path)
    tmp = _temporary(path)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # Fault injection for the crash-safety tests: widen the window before the rename.
        delay = float(os.environ.get("HPCFLOW_ATOMIC_DELAY", "0") or 0)
        if delay > 0:
            import time

            time.sleep(delay)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8) to ``path`` atomically; returns ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(directory: str | Path, pattern: str = ".*.tmp-*") -> None:
    """Delete temporaries in ``directory`` left by writers that no longer run."""
    for tmp in Path(directory).glob(pattern):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
