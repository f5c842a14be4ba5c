"""Checkpoints that are only ever visible complete.

A checkpoint is written through the one atomic writer (:mod:`hpcflow.io.atomic`) as
``step-NNNNNNNN.pt``. Loading uses ``torch.load(weights_only=True)``: everything inside is
tensors and plain Python values. The newest checkpoint that loads and has every field wins; a
corrupt or truncated one is reported and skipped.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from .atomic import atomic_path, remove_stale_temporaries

__all__ = ["CHECKPOINT_FORMAT", "list_checkpoints", "load_checkpoint", "load_latest_checkpoint",
           "prune_checkpoints", "save_checkpoint"]

CHECKPOINT_FORMAT = "hpcflow-checkpoint-1"
_NAME = re.compile(r"step-(\d{8,})\.pt")
_REQUIRED = ("format", "step", "model", "optimizer", "config", "trainer")


def save_checkpoint(directory: str | Path, step: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus format, step, version) atomically as ``step-NNNNNNNN.pt``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step-{step:08d}.pt"
    data = {"format": CHECKPOINT_FORMAT, "step": step, "hpcflow_version": __version__, **payload}
    with atomic_path(final) as tmp:
        torch.save(data, tmp)
    return final


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete-looking checkpoints ``(step, path)``, oldest first (temporaries excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def _load(path: Path) -> dict[str, Any]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("not an hpcflow checkpoint")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise ValueError(f"missing fields {missing}")
    return data


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint file ``path`` (with ``"path"`` set); ``ValueError`` when it is not a
    complete hpcflow checkpoint, ``OSError`` when it cannot be read."""
    try:
        data = _load(Path(path))
    except (OSError, ValueError):  # unreadable; or a foreign payload: _load's own message
        raise
    except Exception as exc:  # truncated, corrupt, not a torch file (torch's text: many lines)
        raise ValueError(f"not a complete hpcflow checkpoint (torch.load: "
                         f"{type(exc).__name__})") from None
    data["path"] = str(path)
    return data


def load_latest_checkpoint(directory: str | Path, *,
                           warn: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The newest checkpoint that loads completely, or ``None`` when there is none.

    A checkpoint that fails to load (truncated, corrupt, foreign) is reported through ``warn``
    and the previous one is tried.
    """
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path)
        except (OSError, ValueError) as exc:  # not a usable checkpoint: try the one before
            if warn is not None:
                warn(f"skipping unreadable checkpoint {path}: {exc}")
    return None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and stale temporaries."""
    for _, path in list_checkpoints(directory)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)
    remove_stale_temporaries(directory, ".step-*.pt.tmp-*")
