"""Masks: link masks, loop counts, active-loop assignment, layer schedules, reports and plots.

``checkerboard``: the generalized checkerboard link masks, their validation and the defaults;
``loopmask``: active links per loop for any link mask, classification, active-loop candidates;
``schedule``: the masks of every coupling layer, with coverage;
``report``: the ``hpcflow masks`` table and plot.
Arguments are plain values; errors are :class:`MaskError` naming the argument at fault.
"""

from .checkerboard import MaskError, MaskPattern, check_pattern, default_patterns, link_mask
from .loopmask import ActiveLoop, FrozenLoop, classify, loop_counts
from .report import describe_schedule, plot_schedule
from .schedule import LayerMask, Schedule, build_layer, build_schedule

__all__ = [
    "ActiveLoop",
    "FrozenLoop",
    "LayerMask",
    "MaskError",
    "MaskPattern",
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
]
