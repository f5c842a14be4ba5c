"""Masks: link masks, loop counts, active-loop assignment, layer schedules, reports and plots.

``checkerboard``: the generalized checkerboard link masks and their validation;
``loopmask``: active links per loop for any link mask, classification, active-loop candidates;
``schedule``: the masks of every coupling layer from the config, with coverage;
``report``: the ``hpcflow masks`` table and plot.
"""

from .checkerboard import check_pattern, default_patterns, link_mask
from .loopmask import ActiveLoop, FrozenLoop, classify, loop_counts
from .report import describe_schedule, plot_schedule, run_masks_command
from .schedule import LayerMask, Schedule, build_layer, build_schedule

__all__ = [
    "ActiveLoop",
    "FrozenLoop",
    "LayerMask",
    "Schedule",
    "build_layer",
    "build_schedule",
    "check_pattern",
    "classify",
    "default_patterns",
    "describe_schedule",
    "link_mask",
    "loop_counts",
    "plot_schedule",
    "run_masks_command",
]
