"""Training curves as PNG: loss, ESS and acceptance against step and wall time."""

from __future__ import annotations

from pathlib import Path

from ..io.atomic import atomic_path
from .metrics import read_metrics

__all__ = ["plot_training"]


def plot_training(run_dir: str | Path) -> Path | None:
    """Draw ``RUN_DIR/training.png`` from ``metrics.jsonl``; None when there is nothing to
    draw. Raises ``ImportError`` when matplotlib is missing."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl") if (run_dir / "metrics.jsonl").exists() \
        else []
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("loss", "loss: <log q + S> or <W>"), ("ess", "ESS (batch)"),
              ("eval_ess", "ESS (evaluation batch)"), ("eval_acceptance", "acceptance (IMH)")]
    panels = [(k, label) for k, label in panels if any(k in r for r in records)]
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 2.6 * len(panels)), squeeze=False)
    for row, (key, label) in enumerate(panels):
        pts = [r for r in records if r.get(key) is not None]
        for col, xkey in enumerate(("step", "time")):
            ax = axes[row][col]
            # markers for short runs: a curve of one or a few records is otherwise invisible
            ax.plot([r[xkey] for r in pts], [r[key] for r in pts], lw=1,
                    marker="o" if len(pts) <= 50 else None, ms=3)
            ax.set_ylabel(label)
            ax.set_xlabel("step" if xkey == "step" else "wall time [s]")
            ax.grid(alpha=0.3)
            if key in ("ess", "eval_ess", "eval_acceptance"):
                ax.set_ylim(0, 1)
    fig.tight_layout()
    out = run_dir / "training.png"
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
