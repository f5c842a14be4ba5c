"""Pure lattice gauge theory: groups, loops, actions, observables, exact results.

Imports nothing else of the package (tests/test_layers.py checks it).
"""

from .action import GaugeAction, action_density, loop_density
from .groups import SUN, U1, Angles, Counts, Group, gauge_transform, get_group, random_gauge
from .loops import LOOP_SHAPES, Loop, closed_loop_trace, loops_of_shape, path_product, reroot
from .observables import average_plaquette, polyakov_loop, topological_charge, wilson_loop

__all__ = [
    "Angles",
    "Counts",
    "GaugeAction",
    "Group",
    "LOOP_SHAPES",
    "Loop",
    "SUN",
    "U1",
    "action_density",
    "average_plaquette",
    "closed_loop_trace",
    "gauge_transform",
    "get_group",
    "loop_density",
    "loops_of_shape",
    "path_product",
    "polyakov_loop",
    "random_gauge",
    "reroot",
    "topological_charge",
    "wilson_loop",
]
