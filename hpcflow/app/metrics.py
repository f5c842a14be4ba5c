"""Training metrics: the metrics.jsonl writer, the optional TensorBoard mirror, and the reader
the plots use. The estimators themselves (ESS, log Z) are those of ``hpcflow.estimators``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import ConfigError

__all__ = ["MetricsLog", "TensorBoardLog", "read_metrics"]


class MetricsLog:
    """``RUN_DIR/metrics.jsonl``: one JSON object per logged step (rank 0 only).

    On resume, lines of steps after the checkpoint are dropped first, so that the file of an
    interrupted and resumed run reads as that of an uninterrupted one.
    """

    def __init__(self, path: str | Path, *, resume_step: int | None):
        self.path = Path(path)
        if resume_step is None:
            self.path.write_text("")
        elif self.path.exists():
            keep = [ln for ln in self.path.read_text().splitlines()
                    if ln.strip() and _step_of(ln) is not None and _step_of(ln) <= resume_step]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        self._fh = open(self.path, "a")

    def write(self, record: dict) -> None:
        if self._fh.closed:  # a later ``Trainer.run`` after an earlier one closed the file
            self._fh = open(self.path, "a")
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}  # strict JSON: no NaN/Infinity tokens
        self._fh.write(json.dumps(clean) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


def read_metrics(path: str | Path) -> list[dict]:
    """All complete records of a metrics.jsonl file."""
    out = []
    for ln in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    return out


class TensorBoardLog:
    """Optional mirror of the metrics as TensorBoard scalars (``RUN_DIR/tensorboard``).

    Needs the ``tensorboard`` package (``pip install tensorboard``); asking for it without the
    package is an input error, reported before training starts.
    """

    def __init__(self, directory: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("train.tensorboard", "needs the tensorboard package "
                              "(pip install tensorboard), or set it to false") from None
        self._writer = SummaryWriter(log_dir=str(directory))

    def write(self, record: dict) -> None:
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, int | float) and math.isfinite(value):
                self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
