"""Checkpoints that are only ever visible complete.

A checkpoint is written to a temporary name in the same folder, flushed and fsynced, then
``os.replace``d to ``step-NNNNNNNN.pt`` and the folder fsynced (ENVIRONMENT.md). Loading uses
``torch.load(weights_only=True)``: everything inside is tensors and plain Python values. The
newest checkpoint that loads and has every field wins; a corrupt or truncated one is reported
and skipped.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import HpcflowError

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "list_checkpoints",
    "load_latest_checkpoint",
    "prune_checkpoints",
    "check_compatible",
]

CHECKPOINT_FORMAT = "hpcflow-checkpoint-1"
_NAME = re.compile(r"step-(\d{8,})\.pt")
_REQUIRED = ("format", "step", "model", "optimizer", "config", "trainer")
# Sections of the configuration that define the model: a checkpoint only fits these.
_MODEL_KEYS = ("lattice", "model")


def save_checkpoint(directory: str | Path, step: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format, step, version) atomically as ``step-NNNNNNNN.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}.pt"
    tmp = directory / f".{final.name}.tmp-{os.getpid()}"
    data = {"format": CHECKPOINT_FORMAT, "step": step, "hpcflow_version": __version__, **payload}
    with open(tmp, "wb") as fh:
        torch.save(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    # Fault injection for the crash-safety tests: widen the window between write and rename.
    delay = float(os.environ.get("HPCFLOW_CHECKPOINT_DELAY", "0") or 0)
    if delay > 0:
        time.sleep(delay)
    os.replace(tmp, final)
    _fsync_dir(directory)
    return final


def _fsync_dir(directory: Path) -> None:
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


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoints ``(step, path)``, oldest first (temporaries excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        m = _NAME.fullmatch(path.name)
        if m:
            found.append((int(m.group(1)), path))
    return sorted(found)


def _load(path: Path) -> dict[str, Any]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not an hpcflow checkpoint")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"missing fields {missing}")
    return data


def load_latest_checkpoint(directory: str | Path, *, warn=None) -> dict[str, Any] | None:
    """The newest checkpoint that loads completely, or ``None`` when there is none.

    A checkpoint that fails to load (truncated, corrupt, foreign) is reported through ``warn``
    (default: stderr) and the previous one is tried.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    for _, path in reversed(list_checkpoints(directory)):
        try:
            data = _load(path)
        except Exception as exc:  # any failure to read means: not a usable checkpoint
            warn(f"hpcflow: skipping unreadable checkpoint {path}: {exc}")
            continue
        data["path"] = str(path)
        return data
    return None


def load_checkpoint_file(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint, raising :class:`HpcflowError` naming the file if it is unusable."""
    try:
        return _load(Path(path))
    except Exception as exc:
        raise HpcflowError(f"{path}: not a usable hpcflow checkpoint ({exc})") from None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and stale temporaries."""
    directory = Path(directory)
    ckpts = list_checkpoints(directory)
    for _, path in ckpts[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
    for path in directory.glob(".step-*.pt.tmp-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_compatible(saved: dict[str, Any], current: dict[str, Any], where: str) -> None:
    """Refuse to resume when the lattice, group or model of the configuration changed."""
    diffs = []
    for section in _MODEL_KEYS:
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} in the checkpoint, "
                             f"{b.get(key)!r} now")
    if diffs:
        raise HpcflowError(
            f"cannot resume from {where}: the configuration changed in keys that define the "
            f"model ({'; '.join(diffs)}); use a new run directory or the original values"
        )
