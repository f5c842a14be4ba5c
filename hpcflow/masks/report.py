"""What ``hpcflow masks CONFIG [--plot FILE]`` prints and draws.

The table gives, per layer: the pattern and offset, the fraction of active links, the active
loops per active link (usable candidates, min-max, and how many each update uses), the fraction
of frozen loops per shape; then the coverage (updates per link over all layers). The plot draws
2D slices the way the talk does ("Algorithm for masking pattern"): active links as black lines,
active plaquettes red, frozen plaquettes orange.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..lattice.loops import loops_of_shape
from .checkerboard import pattern_label
from .loopmask import loop_counts
from .schedule import Schedule

__all__ = ["describe_schedule", "plot_schedule"]

_ABBREV = {"plaquette": "plaq", "rectangle": "rect", "chair": "chair", "crown": "crown"}


def describe_schedule(schedule: Schedule) -> str:
    """The per-layer table and the coverage summary as text."""
    nd = len(schedule.shape)
    dims = "x".join(map(str, schedule.shape))
    lines = [
        f"masks: {len(schedule.layers)} layers on {dims} (Nd = {nd}), "
        f"{len(schedule.patterns)} patterns, active loops {list(schedule.active_shapes)}, "
        f"multi_update = {schedule.multi_update}, features {list(schedule.feature_shapes)}",
        "",
    ]
    rows = []
    for layer in schedule.layers:
        act = " ".join(f"{_ABBREV[s]} {lo}-{hi}" if lo != hi else f"{_ABBREV[s]} {lo}"
                       for s, (lo, hi) in layer.candidates.items())
        classes = {s: layer.loop_classes(s) for s in schedule.feature_shapes}
        frozen = " ".join(f"{_ABBREV[s]} {100 * f / max(f + a + u, 1):.0f}%"
                          for s, (f, a, u) in classes.items())
        rows.append([str(layer.index), pattern_label(layer.pattern), str(layer.offset),
                     f"{100 * layer.active_fraction:.2f}%", act, frozen,
                     str(sum(len(layer.frozen_features[s]) for s in layer.frozen_features))])
    header = ["layer", "pattern", "offset", "active links", "active loops/link (use "
              f"{schedule.multi_update} per update)", "frozen loops", "features"]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    cov = schedule.coverage
    per_dir = ", ".join(f"mu={mu}: {int(cov[mu].min())}-{int(cov[mu].max())}" for mu in range(nd))
    lines += [
        "",
        f"coverage: every link updated {int(cov.min())} to {int(cov.max())} times over all "
        f"layers (per direction {per_dir}); {int((cov == 0).sum())} links never updated",
    ]
    return "\n".join(lines)


def plot_schedule(schedule: Schedule, path: str | Path, layers=None) -> Path:
    """Draw the 2D slice (axes 0 and 1, other coordinates 0) of each layer to a PNG file.

    Active links in the slice are black lines, active links perpendicular to it black dots;
    plaquettes ``P_01`` are red where they are an active loop (closed loop of a selected
    active plaquette), orange where frozen, grey where they hold two or more active links.
    ``layers``: indices to draw (default: all, at most 16).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    index = list(layers) if layers is not None else list(range(min(len(schedule.layers), 16)))
    nd = len(schedule.shape)
    l0, l1 = schedule.shape[0], schedule.shape[1]
    slc = (slice(None), slice(None)) + (0,) * (nd - 2)
    ncol = min(4, len(index))
    nrow = -(-len(index) // ncol)
    fig = Figure(figsize=(3.2 * ncol, 3.4 * nrow))
    FigureCanvasAgg(fig)
    plaq01 = _plaquettes_01(nd)
    for n, i in enumerate(index):
        layer = schedule.layers[i]
        ax = fig.add_subplot(nrow, ncol, n + 1)
        counts = loop_counts(layer.active, "plaquette", plaq01)[0][slc]
        red = torch.zeros(schedule.shape, dtype=torch.bool)
        for update in layer.active_loops.get("plaquette", []):
            for a in update:
                if a.source == plaq01[0]:
                    red |= a.closed_bases()
        red = red[slc]
        for x0 in range(l0):
            for x1 in range(l1):
                c = int(counts[x0, x1])
                color = ("tab:red" if red[x0, x1] else "orange" if c == 0
                         else "0.8" if c >= 2 else "white")
                ax.add_patch(Rectangle((x0, x1), 1, 1, facecolor=color, edgecolor="none"))
        active = layer.active[(slice(None),) + slc]
        for x0 in range(l0 + 1):
            ax.plot([x0, x0], [0, l1], color="0.85", lw=0.5)
        for x1 in range(l1 + 1):
            ax.plot([0, l0], [x1, x1], color="0.85", lw=0.5)
        for x0 in range(l0):
            for x1 in range(l1):
                if active[0, x0, x1]:
                    ax.plot([x0, x0 + 1], [x1, x1], color="black", lw=2.5)
                if active[1, x0, x1]:
                    ax.plot([x0, x0], [x1, x1 + 1], color="black", lw=2.5)
                if nd > 2 and active[2:, x0, x1].any():
                    ax.plot([x0], [x1], "o", color="black", ms=3)
        ax.set_xlim(-0.2, l0 + 0.2)
        ax.set_ylim(-0.2, l1 + 0.2)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"layer {i}: {pattern_label(layer.pattern)} off={layer.offset}", fontsize=7)
    rest = {2: "", 3: ", x_2 = 0"}.get(nd, f", x_2..x_{nd - 1} = 0")
    fig.suptitle(f"axes 0 (right), 1 (up){rest}: active links black, active plaquettes red, "
                 f"frozen orange", fontsize=8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def _plaquettes_01(nd: int):
    return [loops_of_shape("plaquette", nd)[0]]  # combinations order: (0, 1) comes first
