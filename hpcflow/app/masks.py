"""``hpcflow masks CONFIG [--plot FILE]``: validate, describe and draw the mask schedule."""

from __future__ import annotations

from pathlib import Path

from ..errors import HpcflowError
from ..masks import describe_schedule, plot_schedule
from .config import Config, mask_schedule

__all__ = ["describe_masks"]


def describe_masks(cfg: Config, plot_path: str | Path | None = None) -> str:
    """The per-layer table of the flow's masks (and the plot, written to ``plot_path``)."""
    schedule = mask_schedule(cfg)
    text = describe_schedule(schedule)
    if plot_path is not None:
        try:
            text += f"\nplot written to {plot_schedule(schedule, plot_path)}"
        except ImportError:
            raise HpcflowError("--plot needs matplotlib: pip install 'hpcflow[plot]'") from None
    return text
