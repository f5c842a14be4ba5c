"""What a sampling run writes: the store policy, the expected file sizes, the free-space check.

A production ensemble cannot keep every proposal (SU(3) 16^4 in complex128 is 37.7 MB per
configuration): ``sample.store`` decides which configurations are written (module docstring of
:mod:`hpcflow.io.samples`), while the per-proposal scalars and observables are always kept.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HpcflowError
from ..io.samples import ROW_DATASETS

__all__ = ["StorePlan", "check_free_space", "format_bytes", "plan_store", "prepare_store",
           "stored_rows"]

GB = 1e9


@dataclass(frozen=True)
class StorePlan:
    """The resolved policy and its cost: ``store``, ``thin``; bytes of one configuration,
    of one row's scalars and observables, and of the whole run (all ranks)."""

    store: str
    thin: int
    config_bytes: int
    row_bytes: int
    n_total: int

    def configurations(self, n_rows: int) -> int:
        """Configurations stored for ``n_rows`` rows of one chain."""
        return {"all": n_rows, "chain": n_rows // self.thin, "none": 0}[self.store]

    def total_bytes(self, rows_per_rank: list[int]) -> int:
        """Bytes of every shard (data only; HDF5 metadata adds a few kB per file)."""
        return sum(n * self.row_bytes + self.configurations(n) * self.config_bytes
                   for n in rows_per_rank)


def plan_store(store: str, thin: int, max_store_gb: float, *, n_total: int, config_bytes: int,
               n_observables: int) -> StorePlan:
    """Resolve ``store: auto`` (``all`` if every proposal fits in ``max_store_gb``, else
    ``chain`` with ``thin`` raised until the chain's configurations fit)."""
    row_bytes = sum(dt.itemsize for dt in ROW_DATASETS.values()) + 8 * n_observables
    if store == "auto":
        budget = max_store_gb * GB
        if n_total * config_bytes <= budget:
            store = "all"
        else:
            store = "chain"
            thin = max(thin, math.ceil(n_total * config_bytes / budget))
    return StorePlan(store, int(thin), int(config_bytes), int(row_bytes), int(n_total))


def stored_rows(first_row: int, n_rows: int, store: str, thin: int) -> np.ndarray:
    """Rows (of one chain) after which a configuration is stored, among
    ``first_row .. first_row + n_rows - 1``: every row (``all``), rows with ``(row + 1) %
    thin == 0`` (``chain``; the configuration stored is the chain's state after that row), or
    none."""
    rows = np.arange(first_row, first_row + n_rows, dtype=np.int64)
    if store == "all":
        return rows
    if store == "chain":
        return rows[(rows + 1) % thin == 0]
    return rows[:0]


def format_bytes(n: float) -> str:
    """``n`` bytes in kB, MB, GB, TB or PB (powers of 1000)."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def check_free_space(directory: str | Path, needed: int, what: str) -> None:
    """Refuse (:class:`HpcflowError`) when ``needed`` bytes exceed the free space of the file
    system that holds ``directory`` (its nearest existing parent)."""
    path = Path(directory).resolve()
    while not path.exists():
        path = path.parent
    free = shutil.disk_usage(path).free
    if needed > free:
        raise HpcflowError(
            f"{what} needs {format_bytes(needed)} but the file system of {path} has "
            f"{format_bytes(free)} free; store fewer configurations (sample.store: chain with "
            f"a larger sample.thin, or none), draw fewer (--n), or write elsewhere (--out)")



def existing_bytes(directory: str | Path) -> int:
    """Bytes of the shards already in ``directory`` (an interrupted run's)."""
    return sum(p.stat().st_size for p in Path(directory).glob("shard-r*.h5"))


def prepare_store(plan: StorePlan, ctx, directory: str | Path, n_total: int) -> None:
    """Rank 0 logs the expected sizes and checks the free space for the part not yet
    written; every rank raises the same :class:`HpcflowError` when it does not fit."""
    size = ctx.comm.size
    message = None
    if ctx.comm.is_root:
        rows = [len(range(r, n_total, size)) for r in range(size)]
        total = plan.total_bytes(rows)
        ctx.log.info(
            f"store: {plan.store}" + (f", thin {plan.thin}" if plan.store == "chain" else "")
            + f"; {format_bytes(plan.config_bytes)} per configuration; expected "
            f"{format_bytes(total)} in all ({format_bytes(plan.total_bytes(rows[:1]))} per "
            f"rank's shard)")
        try:
            check_free_space(directory, total - existing_bytes(directory), "this run")
        except HpcflowError as exc:
            message = str(exc)
    message = ctx.comm.broadcast_object(message)
    if message:
        raise HpcflowError(message)
