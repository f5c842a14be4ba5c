"""HDF5 sample files, format_version 3; versions 1 and 2 are read too (docs/file-format.md).

PyPI's h5py has no MPI driver, so every rank writes its own file ``DIR/shard-r{rank:05d}.h5`` and
rank 0 then writes ``DIR/samples.h5``, whose datasets are HDF5 *virtual* datasets that join the
shards through relative file names: the folder can be moved or copied as a unit.

One shard holds, for ``n`` proposals in the order drawn, and ``m`` stored configurations::

    links       [m, Nd, L_0, ..., L_{Nd-1}, Nc, Nc]  complex128 (or complex64)
    links_row   [m]  int64     the row (proposal) whose configuration ``links[j]`` is
    obs/<name>  [n]  float64   observables of proposal i, measured when it was drawn
    log_q       [n]  float64   model log density (normalized Haar measure); NaN where there is
                               none (Markov chains, non-equilibrium trajectories)
    action      [n]  float64   S(U)
    log_weight  [n]  float64   -S - log_q for a flow; -W (the work) for a trajectory; NaN for
                               a Markov chain
    mcmc_state  [n]  int64     the row of the chain state after step i
    accepted    [n]  bool      whether proposal i was accepted

and the root attributes of :data:`HEADER_ATTRS` plus ``format``, ``format_version``, ``rank``,
``world_size``, ``hpcflow_version``, ``n_written``, ``links_written`` (``m``), ``store`` and
``thin``. Which configurations are stored is the store policy: ``all`` (``links_row = 0..n-1``),
``chain`` (the Markov chain's state after every ``thin``-th step: ``links_row[j] =
mcmc_state[(j + 1) thin - 1]``, repeated when the chain stays) or ``none`` (``m = 0``); the
observables of every proposal are stored in all three. Version 3 added ``links_row``, ``obs``
and those attributes (a version 1 or 2 file stores all, with no observables). Version 2 added
``sampler`` (``flow``, ``annealing``, ``snf``, ``hmc``, ``heatbath``) and ``log_z_start`` (log Z
of the start of the trajectories, 0 from Haar, NaN when unknown); a version 1 file reads with
``sampler`` inferred from ``log_q`` (``flow`` if finite, else ``hmc``) and ``log_z_start = 0``.

Crash safety. Rows are written and flushed first; only then are ``n_written`` and
``links_written`` raised and flushed again. A file cut short by a crash therefore opens, and its
first ``n_written`` rows are complete; rows past ``n_written`` are ignored by readers and cut off
when the writer reopens the shard.

Missing shards. A virtual dataset whose source file is missing reads back as fill values without
any error, so ``samples.h5`` records each shard's file name and row count (datasets
``shard_files``, ``shard_n_written``, ``shard_offset``) and :func:`open_samples` checks them.

In ``samples.h5`` the ``mcmc_state`` dataset is an ordinary dataset, not a virtual one: its
indices (and those of ``links_row``) are shifted by each shard's offset so that they index
the joined rows. Each shard
carries its own chain, so the joined chain restarts at every ``shard_offset``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .._version import __version__
from ..errors import InputFileError
from ..lattice.groups import get_group
from .atomic import atomic_path

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MASTER_NAME",
    "ROW_DATASETS",
    "SampleHeader",
    "SampleSet",
    "ShardWriter",
    "open_samples",
    "shard_path",
    "write_master",
]

FORMAT = "hpcflow-samples"
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
MASTER_NAME = "samples.h5"

# Per-row datasets besides ``links``, with their on-disk types.
ROW_DATASETS: dict[str, np.dtype] = {
    "log_q": np.dtype(np.float64),
    "action": np.dtype(np.float64),
    "log_weight": np.dtype(np.float64),
    "mcmc_state": np.dtype(np.int64),
    "accepted": np.dtype(np.bool_),
}
DATASETS = ("links", *ROW_DATASETS)
STORE_POLICIES = ("all", "chain", "none")
OBS_GROUP = "obs"

# Attributes that describe the run; every shard of one sample set has the same values.
HEADER_ATTRS = ("group", "nc", "lattice_shape", "beta", "config", "seed", "checkpoint_step",
                "sampler", "log_z_start")
# Attributes that must agree before a shard may be resumed or joined (``config`` is only
# recorded: a resumed run may legitimately pass other command-line values).
_MUST_MATCH = ("group", "nc", "lattice_shape", "beta", "seed", "checkpoint_step", "world_size",
               "sampler", "store", "thin", "observables")
_REQUIRED_ATTRS = (
    "format", "format_version", *HEADER_ATTRS, "rank", "world_size", "hpcflow_version",
    "n_written", "links_written", "store", "thin", "observables",
)
_ADDED_IN_3 = ("links_written", "store", "thin", "observables")
SAMPLERS = ("flow", "annealing", "snf", "hmc", "heatbath", "imported")
_LINK_DTYPES = ("complex128", "complex64")


def shard_path(directory: str | Path, rank: int) -> Path:
    """``DIR/shard-r{rank:05d}.h5``."""
    return Path(directory) / f"shard-r{rank:05d}.h5"


@dataclass(frozen=True)
class SampleHeader:
    """What a sample set was drawn from: identical in every shard of one run.

    ``config`` is the resolved YAML text of the run; ``checkpoint_step`` the training step of the
    model that proposed the samples (-1 for output without a model, e.g. a reference chain);
    ``sampler``: what drew them (:data:`SAMPLERS`); ``log_z_start``: log Z of the start of
    non-equilibrium trajectories (0: Haar; NaN: unknown, log Z estimates are then relative);
    ``store``, ``thin``: the store policy (module docstring); ``observables``: the names of the
    ``obs/<name>`` datasets; ``nc`` follows from ``group``.
    """

    group: str
    lattice_shape: tuple[int, ...]
    beta: float
    config: str = ""
    seed: int = 0
    checkpoint_step: int = 0
    sampler: str = "flow"
    log_z_start: float = 0.0
    store: str = "all"
    thin: int = 1
    observables: tuple[str, ...] = ()
    nc: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "lattice_shape", tuple(int(x) for x in self.lattice_shape))
        object.__setattr__(self, "nc", get_group(self.group).nc)
        object.__setattr__(self, "beta", float(self.beta))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "checkpoint_step", int(self.checkpoint_step))
        object.__setattr__(self, "log_z_start", float(self.log_z_start))
        object.__setattr__(self, "thin", int(self.thin))
        object.__setattr__(self, "observables", tuple(str(x) for x in self.observables))
        if self.store not in STORE_POLICIES:
            raise ValueError(f"store must be one of {STORE_POLICIES}, got {self.store!r}")
        if self.thin < 1:
            raise ValueError(f"thin must be >= 1, got {self.thin}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")

    def links_shape(self) -> tuple[int, ...]:
        """Shape of one row of ``links``: ``(Nd, *L, Nc, Nc)``."""
        return (len(self.lattice_shape), *self.lattice_shape, self.nc, self.nc)


# ------------------------------------------------------------------------------------ helpers
def _open_h5(path: Path, mode: str) -> h5py.File:
    """Open an HDF5 file, turning every failure into an :class:`InputFileError` naming it."""
    if not path.exists():
        raise InputFileError(path, "no such file")
    try:
        return h5py.File(path, mode)
    except (OSError, RuntimeError, ValueError) as exc:  # garbage, truncated, locked, unreadable
        raise InputFileError(
            path, f"cannot be opened as an HDF5 file (corrupt, truncated or locked?): {exc}"
        ) from None


@contextlib.contextmanager
def _damaged_is_input_error(path: Path) -> Iterator[None]:
    """HDF5 reports damaged metadata as OSError, RuntimeError, KeyError or ValueError: name the
    file instead of showing a traceback."""
    try:
        yield
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise InputFileError(path, f"damaged HDF5 file ({type(exc).__name__}: {exc})") from None


def _plain(value: Any) -> Any:
    """An attribute value as a plain Python value (str, int, float, bool, tuple)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return tuple(_plain(v) for v in value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def _read_attrs(f: h5py.File, path: Path) -> dict[str, Any]:
    """Root attributes, after checking ``format`` and ``format_version``."""
    attrs = {k: _plain(v) for k, v in f.attrs.items()}
    if attrs.get("format") != FORMAT:
        raise InputFileError(
            path, f"not an hpcflow sample file (root attribute 'format' is "
            f"{attrs.get('format')!r}, expected {FORMAT!r})"
        )
    version = attrs.get("format_version")
    if version not in READABLE_VERSIONS:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "; it was written by a newer hpcflow" if newer else ""
        raise InputFileError(
            path, f"format_version {version!r} is not supported (this hpcflow reads "
            f"{', '.join(map(str, READABLE_VERSIONS))}){hint}"
        )
    if version == 1:
        attrs.setdefault("log_z_start", 0.0)
        attrs.setdefault("sampler", "")  # inferred from log_q by SampleSet
    if version in (1, 2):  # every proposal's links, no observables
        attrs.setdefault("links_written", attrs.get("n_written"))
        attrs.setdefault("store", "all")
        attrs.setdefault("thin", 1)
        attrs.setdefault("observables", ())
    if isinstance(attrs.get("observables"), str):  # stored comma-separated
        attrs["observables"] = tuple(x for x in attrs["observables"].split(",") if x)
    missing = [k for k in _REQUIRED_ATTRS if k not in attrs]
    if missing:
        raise InputFileError(path, f"root attribute(s) missing: {', '.join(missing)}")
    if "lattice_shape" in attrs and not isinstance(attrs["lattice_shape"], tuple):
        attrs["lattice_shape"] = (attrs["lattice_shape"],)
    return attrs


def _check_datasets(f: h5py.File, path: Path, n: int, attrs: Mapping[str, Any]) -> None:
    """Every dataset exists, has the layout of the header and at least ``n`` rows (``links``
    and ``links_row``: ``links_written``)."""
    m = attrs["links_written"]
    for key, value in (("n_written", n), ("links_written", m)):
        if not isinstance(value, int) or value < 0:
            raise InputFileError(path, f"attribute '{key}' is {value!r}, expected an integer "
                                       ">= 0")
    if attrs["format_version"] >= 3:
        if "links_row" not in f or f["links_row"].ndim != 1 or f["links_row"].shape[0] < m:
            raise InputFileError(path, f"dataset 'links_row' is missing or has fewer than {m} "
                                       "rows (links_written)")
        for name in attrs["observables"]:
            key = f"{OBS_GROUP}/{name}"
            if key not in f or f[key].ndim != 1 or f[key].shape[0] < n:
                raise InputFileError(path, f"dataset '{key}' is missing or has fewer than {n} "
                                           "rows (n_written)")
    shape = tuple(attrs["lattice_shape"])
    row = (len(shape), *shape, attrs["nc"], attrs["nc"])
    for name in DATASETS:
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise InputFileError(path, f"dataset '{name}' is missing")
        ds = f[name]
        if name == "links":
            if ds.shape[1:] != row or ds.dtype.name not in _LINK_DTYPES:
                raise InputFileError(
                    path, f"dataset 'links' has shape {ds.shape} {ds.dtype}, expected "
                    f"[n, {', '.join(map(str, row))}] complex64 or complex128"
                )
        elif ds.ndim != 1 or ds.dtype != ROW_DATASETS[name]:
            raise InputFileError(
                path, f"dataset '{name}' is {ds.shape} {ds.dtype}, expected [n] "
                f"{ROW_DATASETS[name]}"
            )
        need, what = (m, "links_written") if name == "links" else (n, "n_written")
        if ds.shape[0] < need:
            raise InputFileError(
                path, f"dataset '{name}' has {ds.shape[0]} rows but {what} = {need}: "
                "the file is truncated or damaged"
            )


def _to_numpy(x: Any) -> np.ndarray:
    """numpy array from a numpy array, a torch tensor (any device) or a sequence."""
    if hasattr(x, "detach"):  # torch tensor; no torch import needed here
        x = x.detach()
        if hasattr(x, "resolve_conj"):
            x = x.resolve_conj().resolve_neg()
        x = x.cpu().numpy()
    return np.asarray(x)


def _fsync(f: h5py.File) -> None:
    """Push the file's OS buffers to disk (sec2 driver exposes the descriptor)."""
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # another driver: the flush is all we can do
        return
    if isinstance(fd, int):
        os.fsync(fd)


# ------------------------------------------------------------------------------------- writer
class ShardWriter:
    """Append-only writer of one rank's shard ``DIR/shard-r{rank:05d}.h5``.

    Creates the shard, or reopens it to resume: then its header, rank, world size and link
    precision must match this run (:class:`InputFileError` naming the attribute otherwise) and
    rows past ``n_written`` (written, not counted, before a crash) are cut off.

    ``links_dtype``: ``"complex128"`` or ``"complex64"`` (halves the file; the proposals' log_q
    and action are still stored in float64). ``fsync``: also force every flush to disk, so that
    the row-before-count order survives a node crash, not only a process crash.

    Usage::

        with ShardWriter(out_dir, header, rank=comm.rank, world_size=comm.size) as w:
            w.append({"links": U, "log_q": log_q, "action": S, "log_weight": -S - log_q,
                      "mcmc_state": state, "accepted": acc})
    """

    def __init__(
        self,
        directory: str | Path,
        header: SampleHeader,
        *,
        rank: int = 0,
        world_size: int = 1,
        links_dtype: str = "complex128",
        resume: bool = True,
        chunk_rows: int | None = None,
        fsync: bool = True,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if np.dtype(links_dtype).name not in _LINK_DTYPES:
            raise ValueError(f"links_dtype must be complex128 or complex64, got {links_dtype!r}")
        self.header = header
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.links_dtype = np.dtype(links_dtype)
        self.fsync = fsync
        self.path = shard_path(directory, rank)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if not resume:
                raise InputFileError(self.path, "exists already (resume=False refuses to reuse it)")
        else:
            self._create(chunk_rows)
        self._file = _open_h5(self.path, "r+")
        try:
            with _damaged_is_input_error(self.path):
                self._n = self._check_for_resume()
        except BaseException:
            self._file.close()
            raise

    # -- setup
    def _attrs(self) -> dict[str, Any]:
        h = self.header
        return {
            "format": FORMAT,
            "format_version": np.int64(FORMAT_VERSION),
            "group": h.group,
            "nc": np.int64(h.nc),
            "lattice_shape": np.asarray(h.lattice_shape, dtype=np.int64),
            "beta": np.float64(h.beta),
            "config": h.config,
            "rank": np.int64(self.rank),
            "world_size": np.int64(self.world_size),
            "seed": np.int64(h.seed),
            "checkpoint_step": np.int64(h.checkpoint_step),
            "sampler": h.sampler,
            "log_z_start": np.float64(h.log_z_start),
            "hpcflow_version": __version__,
            "n_written": np.int64(0),
            "links_written": np.int64(0),
            "store": h.store,
            "thin": np.int64(h.thin),
            "observables": ",".join(h.observables),
        }

    def _create(self, chunk_rows: int | None) -> None:
        """Build the empty shard under a temporary name, then rename it into place: a crash
        here never leaves a half-made shard under the final name."""
        row = self.header.links_shape()
        row_bytes = math.prod(row) * self.links_dtype.itemsize
        if chunk_rows is None:  # about 1 MiB per chunk, at least one row
            chunk_rows = max(1, min(1024, (1 << 20) // row_bytes))
        with atomic_path(self.path) as tmp, h5py.File(tmp, "w") as f:
            for k, v in self._attrs().items():
                f.attrs[k] = v
            f.create_dataset("links", shape=(0, *row), maxshape=(None, *row),
                             dtype=self.links_dtype, chunks=(chunk_rows, *row))
            for name, dt in ROW_DATASETS.items():
                f.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dt, chunks=(4096,))
            f.create_dataset("links_row", shape=(0,), maxshape=(None,), dtype=np.int64,
                             chunks=(4096,))
            for name in self.header.observables:
                f.create_dataset(f"{OBS_GROUP}/{name}", shape=(0,), maxshape=(None,),
                                 dtype=np.float64, chunks=(4096,))

    def _check_for_resume(self) -> int:
        """Check the existing shard against this run; cut rows past ``n_written``."""
        f, path = self._file, self.path
        attrs = _read_attrs(f, path)
        want = self._attrs()
        want["observables"] = self.header.observables
        for key in (*_MUST_MATCH, "rank"):
            have, expect = attrs[key], _plain(want[key])
            if have != expect:
                raise InputFileError(
                    path, f"cannot resume: attribute '{key}' is {have!r} in the file but "
                    f"{expect!r} in this run"
                )
        if attrs["format_version"] != FORMAT_VERSION:
            raise InputFileError(path, f"cannot resume: written in format_version "
                                       f"{attrs['format_version']}, this hpcflow writes "
                                       f"{FORMAT_VERSION}")
        n, m = attrs["n_written"], attrs["links_written"]
        _check_datasets(f, path, n, attrs)
        if f["links"].dtype != self.links_dtype:
            raise InputFileError(
                path, f"cannot resume: dataset 'links' is {f['links'].dtype} in the file but "
                f"{self.links_dtype} in this run"
            )
        sizes = {name: n for name in self._row_datasets()}
        sizes.update(links=m, links_row=m)
        if any(f[name].shape[0] > k for name, k in sizes.items()):  # an interrupted append
            for name, k in sizes.items():
                f[name].resize(k, axis=0)
            self._sync()
        self._m = m
        return n

    def _row_datasets(self) -> list[str]:
        """The datasets with one entry per proposal."""
        return [*ROW_DATASETS, *(f"{OBS_GROUP}/{k}" for k in self.header.observables)]

    # -- writing
    @property
    def n_written(self) -> int:
        """Number of complete rows in the shard."""
        return self._n

    @property
    def links_written(self) -> int:
        """Number of stored configurations in the shard."""
        return self._m

    def append(self, batch: Mapping[str, Any]) -> int:
        """Append rows; returns the new ``n_written``.

        ``batch``: numpy arrays or torch tensors ``log_q``, ``action``, ``log_weight``,
        ``mcmc_state``, ``accepted`` (each ``[b]``), ``observables`` (name -> ``[b]``, the
        header's names); and the configurations to store: ``links [k, Nd, *L, Nc, Nc]``
        (complex) with ``links_row [k]``, the shard rows they belong to (``0 .. n_written +
        b - 1``). With ``store: all`` ``links_row`` may be left out (``k = b``, the new rows).
        ``mcmc_state`` indexes this shard's rows (earlier batches included).
        """
        missing = [k for k in ROW_DATASETS if k not in batch]
        if self.header.observables and "observables" not in batch:
            missing.append("observables")
        if missing:
            raise ValueError(f"batch lacks {', '.join(missing)}")
        arrays = {}
        b = len(_to_numpy(batch["action"]))
        for name, dt in ROW_DATASETS.items():
            a = _to_numpy(batch[name])
            if a.shape != (b,):
                raise ValueError(f"{name} has shape {a.shape}, expected ({b},)")
            if name == "mcmc_state" and not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"mcmc_state must be integer, got {a.dtype}")
            arrays[name] = a.astype(dt, copy=False)
        obs = batch.get("observables") or {}
        if set(obs) != set(self.header.observables):
            raise ValueError(f"observables {sorted(obs)} differ from the header's "
                             f"{sorted(self.header.observables)}")
        for name in self.header.observables:
            a = _to_numpy(obs[name])
            if a.shape != (b,):
                raise ValueError(f"observable {name} has shape {a.shape}, expected ({b},)")
            arrays[f"{OBS_GROUP}/{name}"] = a.astype(np.float64, copy=False)
        n0, n1 = self._n, self._n + b
        links, rows = self._links_of(batch, n0, n1)
        if b == 0 and len(rows) == 0:
            return self._n
        state = arrays["mcmc_state"]
        if b and (state.min() < 0 or state.max() >= n1):
            raise ValueError(f"mcmc_state must index rows 0..{n1 - 1} of this shard")
        m0, m1 = self._m, self._m + len(rows)
        for name, a in arrays.items():
            ds = self._file[name]
            ds.resize(n1, axis=0)
            ds[n0:n1] = a
        for name, a in (("links", links), ("links_row", rows)):
            ds = self._file[name]
            ds.resize(m1, axis=0)
            if m1 > m0:
                ds[m0:m1] = a
        self._sync()  # rows are on disk ...
        self._set_n_written(n1, m1)  # ... before they are counted
        self._sync()
        self._n, self._m = n1, m1
        return n1

    def _links_of(self, batch: Mapping[str, Any], n0: int, n1: int
                  ) -> tuple[np.ndarray, np.ndarray]:
        """The batch's configurations to store and their rows, checked."""
        row = self.header.links_shape()
        if "links" not in batch or batch["links"] is None:
            if self.header.store == "all" and n1 > n0:
                raise ValueError("batch lacks links (store: all)")
            return np.zeros((0, *row), self.links_dtype), np.zeros(0, np.int64)
        links = _to_numpy(batch["links"])
        if links.shape[1:] != row:
            raise ValueError(f"links has shape {links.shape}, expected [k, {row}]")
        if not np.iscomplexobj(links):
            raise ValueError(f"links must be complex, got {links.dtype}")
        if batch.get("links_row") is None:
            if self.header.store != "all":
                raise ValueError(f"batch lacks links_row (store: {self.header.store})")
            rows = np.arange(n0, n1, dtype=np.int64)
        else:
            rows = _to_numpy(batch["links_row"]).astype(np.int64).reshape(-1)
        if len(rows) != len(links):
            raise ValueError(f"{len(links)} configurations but {len(rows)} links_row entries")
        if self.header.store == "none" and len(rows):
            raise ValueError("store: none keeps no configurations")
        if self.header.store == "all" and not np.array_equal(rows, np.arange(n0, n1)):
            raise ValueError("store: all stores the links of every new row, in order")
        if len(rows) and (rows.min() < 0 or rows.max() >= n1):
            raise ValueError(f"links_row must index rows 0..{n1 - 1} of this shard")
        return links.astype(self.links_dtype, copy=False), rows

    def _set_n_written(self, n: int, m: int) -> None:
        # modify() rewrites the existing attribute in place (no delete + create)
        self._file.attrs.modify("n_written", np.int64(n))
        self._file.attrs.modify("links_written", np.int64(m))

    def _sync(self) -> None:
        self._file.flush()
        if self.fsync:
            _fsync(self._file)

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if self._file.id.valid:
            self._sync()
            self._file.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ------------------------------------------------------------------------------------- master
@dataclass
class _ShardInfo:
    path: Path
    attrs: dict[str, Any]
    n: int
    links_dtype: np.dtype

    @property
    def m(self) -> int:
        return self.attrs["links_written"]


def _inspect_shard(path: Path, rank: int, world_size: int, master: str) -> _ShardInfo:
    if not path.exists():
        raise InputFileError(path, f"shard of rank {rank} (of {world_size}) is missing; "
                                   f"{master} cannot join the samples without it")
    with _open_h5(path, "r") as f, _damaged_is_input_error(path):
        attrs = _read_attrs(f, path)
        if attrs["rank"] != rank or attrs["world_size"] != world_size:
            raise InputFileError(
                path, f"holds rank {attrs['rank']} of {attrs['world_size']}, expected rank "
                f"{rank} of {world_size}"
            )
        n = attrs["n_written"]
        _check_datasets(f, path, n, attrs)
        return _ShardInfo(path, attrs, n, f["links"].dtype)


def write_master(directory: str | Path, world_size: int, *, name: str = MASTER_NAME) -> Path:
    """Join ``shard-r00000.h5 ... shard-r{world_size-1}.h5`` in ``directory`` into ``name``.

    Called by rank 0 after every rank closed its shard. Checks first that every shard exists,
    opens, belongs to this run (same header, rank, world size) and holds ``n_written`` rows;
    raises :class:`InputFileError` naming the first bad shard. The master gets the shards'
    header with ``rank = -1``, ``n_written`` = total, virtual ``links``, ``log_q``, ``action``,
    ``log_weight``, ``accepted`` over the first ``n_written`` rows of each shard (relative
    paths), a real ``mcmc_state`` (shifted to index the joined rows), and ``shard_files``,
    ``shard_n_written``, ``shard_offset`` ``[world_size]``. Written to a temporary file in the
    same folder and renamed: a half-written master is never visible under ``name``.
    """
    directory = Path(directory)
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    shards = [_inspect_shard(shard_path(directory, r), r, world_size, name)
              for r in range(world_size)]
    first = shards[0]
    for s in shards[1:]:
        for key in _MUST_MATCH:
            if s.attrs[key] != first.attrs[key]:
                raise InputFileError(
                    s.path, f"attribute '{key}' is {s.attrs[key]!r} but {first.attrs[key]!r} "
                    f"in {first.path.name}: the shards come from different runs"
                )
        if s.links_dtype != first.links_dtype:
            raise InputFileError(s.path, f"links are {s.links_dtype}, but {first.links_dtype} "
                                         f"in {first.path.name}")

    counts = np.array([s.n for s in shards], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    row = tuple(first.attrs["lattice_shape"])
    row = (len(row), *row, first.attrs["nc"], first.attrs["nc"])

    final = directory / name
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        _write_master_body(f, shards, counts, offsets, row, first)
    return final


def _virtual(f: h5py.File, name: str, shards, counts, tail, dtype) -> None:
    """``f[name]``: the first ``counts[r]`` rows of each shard's ``name``, joined."""
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    layout = h5py.VirtualLayout(shape=(int(sum(counts)), *tail), dtype=dtype)
    for s, n, off in zip(shards, counts, offsets, strict=True):
        if n == 0:
            continue
        # A bare file name: HDF5 looks for it next to the master file.
        src = h5py.VirtualSource(s.path.name, name, shape=(int(n), *tail), dtype=dtype)
        layout[off:off + n] = src[0:n]
    fill = np.nan if dtype.kind == "f" else None
    f.create_virtual_dataset(name, layout, fillvalue=fill)


def _write_master_body(f, shards, counts, offsets, row, first) -> None:
    for key in (*HEADER_ATTRS, "format"):
        f.attrs[key] = first.attrs[key]
    observables = tuple(first.attrs["observables"])
    link_counts = np.array([s.m for s in shards], dtype=np.int64)
    f.attrs["format_version"] = np.int64(FORMAT_VERSION)
    f.attrs["lattice_shape"] = np.asarray(first.attrs["lattice_shape"], dtype=np.int64)
    f.attrs["rank"] = np.int64(-1)
    f.attrs["world_size"] = np.int64(len(shards))
    f.attrs["hpcflow_version"] = __version__
    f.attrs["n_written"] = np.int64(counts.sum())
    f.attrs["links_written"] = np.int64(link_counts.sum())
    f.attrs["store"] = first.attrs["store"]
    f.attrs["thin"] = np.int64(first.attrs["thin"])
    f.attrs["observables"] = ",".join(observables)

    _virtual(f, "links", shards, link_counts, row, first.links_dtype)
    for k, dt in ROW_DATASETS.items():
        if k != "mcmc_state":
            _virtual(f, k, shards, counts, (), dt)
    for k in observables:
        _virtual(f, f"{OBS_GROUP}/{k}", shards, counts, (), np.dtype(np.float64))

    states, link_rows = [], []
    for s, n, off in zip(shards, counts, offsets, strict=True):
        with _open_h5(s.path, "r") as g, _damaged_is_input_error(s.path):
            states.append(g["mcmc_state"][:n] + off)
            rows = g["links_row"][:s.m] if "links_row" in g else np.arange(s.m)
            link_rows.append(rows.astype(np.int64) + off)
    state = np.concatenate(states) if states else np.zeros(0, np.int64)
    f.create_dataset("mcmc_state", data=state.astype(np.int64))
    f.create_dataset("links_row", data=np.concatenate(link_rows).astype(np.int64))
    f.create_dataset("shard_files", data=np.array([s.path.name for s in shards], dtype=object),
                     dtype=h5py.string_dtype())
    f.create_dataset("shard_n_written", data=counts)
    f.create_dataset("shard_offset", data=offsets)
    f.create_dataset("shard_links_written", data=link_counts)


# ------------------------------------------------------------------------------------- reader
class LazyRows:
    """Row access to a large dataset limited to its first ``n`` (complete) rows.

    ``rows[i]``, ``rows[a:b:s]``, ``rows[index_array]``, ``rows[bool_mask]``, and a tuple whose
    first entry is one of those; only the rows asked for are read.
    """

    def __init__(self, ds: h5py.Dataset, n: int):
        self._ds = ds
        self.n = n
        self.shape = (n, *ds.shape[1:])
        self.dtype = ds.dtype

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.n if key < 0 else 0)
            if not 0 <= i < self.n:
                raise IndexError(f"row {key} outside 0..{self.n - 1}")
            out = self._ds[i]
            return out[rest] if rest else out
        if isinstance(key, slice):
            start, stop, step = key.indices(self.n)
            if step > 0:
                out = self._ds[start:stop:step] if stop > start else self._ds[0:0]
            else:  # h5py slices go forward only
                out = _read_rows(self._ds, np.arange(start, stop, step))
        else:
            idx = np.asarray(key)
            if idx.dtype == np.bool_:
                if idx.shape != (self.n,):
                    raise IndexError(f"boolean mask of shape {idx.shape}, expected ({self.n},)")
                idx = np.flatnonzero(idx)
            idx = idx.astype(np.int64).reshape(-1)
            idx = np.where(idx < 0, idx + self.n, idx)
            if idx.size and (idx.min() < 0 or idx.max() >= self.n):
                raise IndexError(f"row index outside 0..{self.n - 1}")
            out = _read_rows(self._ds, idx)
        return out[(slice(None), *rest)] if rest else out

    def iter_batches(self, batch_size: int = 256) -> Iterator[np.ndarray]:
        """The rows in order, ``batch_size`` at a time."""
        for a in range(0, self.n, batch_size):
            yield self._ds[a:min(a + batch_size, self.n)]


def _read_rows(ds: h5py.Dataset, idx: np.ndarray) -> np.ndarray:
    """``ds[idx]`` for any integer ``idx`` (repeats, any order): h5py wants increasing unique
    indices, so read those (or one contiguous block when that is not much larger) and expand."""
    if idx.size == 0:
        return ds[0:0]
    uniq, inverse = np.unique(idx, return_inverse=True)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 2 * uniq.size:
        block = ds[lo:hi]
        return block[idx - lo]
    return ds[uniq][inverse.reshape(-1)]


class SampleSet:
    """A sample file opened for reading (from :func:`open_samples`).

    ``attrs``: root attributes as plain Python values; ``n``: complete rows; ``links``: a
    :class:`LazyRows` view ``[m, Nd, *L, Nc, Nc]`` of the stored configurations (``m = n``
    with ``store: all``) and ``links_row [m]`` their rows; ``log_q``, ``action``,
    ``log_weight``, ``mcmc_state``, ``accepted``: numpy arrays ``[n]``, read on first use;
    ``observable(name)``: the stored measurements ``[n]`` (``observable_names``; none in
    version 1 and 2 files). ``shard_files`` and ``shard_n_written`` for a master file (one
    entry, the file itself, otherwise).
    """

    def __init__(self, path: Path, f: h5py.File, attrs: dict[str, Any]):
        self.path = path
        self._file = f
        self.attrs = attrs
        self.n: int = attrs["n_written"]
        self.is_master = "shard_files" in f
        self.m: int = attrs["links_written"]
        self.store: str = attrs["store"]
        self.links = LazyRows(f["links"], self.m)
        self._cache: dict[str, np.ndarray] = {}
        if not attrs["sampler"]:  # a version 1 file: flows have a finite log q
            attrs["sampler"] = "flow" if self.n and np.isfinite(self.log_q).all() else "hmc"

    @property
    def weighted(self) -> bool:
        """Independent proposals with importance weights (flows, trajectories), as opposed to
        a Markov chain's states."""
        return self.attrs["sampler"] in ("flow", "annealing", "snf")

    def _column(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._file[name][: self.n]
        return self._cache[name]

    @property
    def log_q(self) -> np.ndarray:
        return self._column("log_q")

    @property
    def action(self) -> np.ndarray:
        return self._column("action")

    @property
    def log_weight(self) -> np.ndarray:
        return self._column("log_weight")

    @property
    def mcmc_state(self) -> np.ndarray:
        return self._column("mcmc_state")

    @property
    def accepted(self) -> np.ndarray:
        return self._column("accepted")

    @property
    def links_row(self) -> np.ndarray:
        """The row of each stored configuration: ``[m]``."""
        if "links_row" not in self._file:  # version 1 and 2: every row
            return np.arange(self.m, dtype=np.int64)
        if "links_row" not in self._cache:
            self._cache["links_row"] = self._file["links_row"][: self.m]
        return self._cache["links_row"]

    @property
    def observable_names(self) -> tuple[str, ...]:
        return tuple(self.attrs["observables"])

    def observable(self, name: str) -> np.ndarray:
        """Measurements of ``name`` for every row, as stored when drawn: ``[n]`` float64."""
        if name not in self.observable_names:
            raise KeyError(f"{self.path} stores no observable {name!r} (it has: "
                           f"{', '.join(self.observable_names) or 'none'})")
        return self._column(f"{OBS_GROUP}/{name}")

    def links_of_rows(self, rows) -> np.ndarray:
        """Configurations of ``rows`` (their stored copies): ``[k, Nd, *L, Nc, Nc]``.

        Raises ``KeyError`` naming the first row whose configuration was not stored."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if self.store == "all" and self.m == self.n:
            return self.links[rows]
        stored = self.links_row
        pos = np.searchsorted(stored, rows)  # links_row never decreases
        bad = (pos >= len(stored)) | (stored[np.minimum(pos, len(stored) - 1)] != rows)
        if bad.any():
            raise KeyError(f"{self.path} (store: {self.store}, thin {self.attrs['thin']}) "
                           f"holds no configuration of row {int(rows[bad][0])}")
        return self.links[pos]

    @property
    def shard_files(self) -> list[str]:
        if self.is_master:
            return [_plain(s) for s in self._file["shard_files"][:]]
        return [self.path.name]

    @property
    def shard_n_written(self) -> np.ndarray:
        if self.is_master:
            return self._file["shard_n_written"][:]
        return np.array([self.n], dtype=np.int64)

    @property
    def chain_starts(self) -> np.ndarray:
        """Row where each rank's Markov chain starts (``shard_offset``; ``[0]`` for one shard)."""
        if self.is_master:
            return self._file["shard_offset"][:]
        return np.zeros(1, dtype=np.int64)

    def mcmc_links(self, start: int = 0, stop: int | None = None, step: int = 1) -> np.ndarray:
        """Links of the Markov chain states after steps ``start:stop:step``:
        ``links[mcmc_state[start:stop:step]]``, ``[k, Nd, *L, Nc, Nc]`` (``KeyError`` when
        one of them was not stored)."""
        return self.links_of_rows(self.mcmc_state[start:stop:step])

    def iter_mcmc_links(self, batch_size: int = 256) -> Iterator[np.ndarray]:
        """The chain states in order, ``batch_size`` steps at a time (bounded memory)."""
        for a in range(0, self.n, batch_size):
            yield self.mcmc_links(a, min(a + batch_size, self.n))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SampleSet:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        a = self.attrs
        kind = f"{len(self.shard_files)} shards" if self.is_master else f"rank {a['rank']}"
        return (f"SampleSet({str(self.path)!r}, {a['group']} {list(a['lattice_shape'])} "
                f"beta={a['beta']}, n={self.n}, {kind})")


def open_samples(path: str | Path) -> SampleSet:
    """Open a shard, a master ``samples.h5`` (or a folder holding one), or an HMC output file.

    Checks ``format``/``format_version``, the datasets and, for a master file, that every shard
    is present, from the same run and still holds the row count recorded in the master (a
    missing shard would otherwise read back as fill values). Raises :class:`InputFileError`
    naming the file at fault.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MASTER_NAME
    f = _open_h5(path, "r")
    try:
        with _damaged_is_input_error(path):
            attrs = _read_attrs(f, path)
            n = attrs["n_written"]
            is_master = "shard_files" in f
        if is_master:
            _check_master_shards(f, path, attrs)
        with _damaged_is_input_error(path):
            _check_datasets(f, path, n, attrs)
    except BaseException:
        f.close()
        raise
    return SampleSet(path, f, attrs)


def _check_master_shards(f: h5py.File, path: Path, attrs: Mapping[str, Any]) -> None:
    with _damaged_is_input_error(path):
        names = [_plain(s) for s in f["shard_files"][:]]
        counts = [int(c) for c in f["shard_n_written"][:]]
    world_size = attrs["world_size"]
    if len(names) != world_size or len(counts) != world_size or sum(counts) != attrs["n_written"]:
        raise InputFileError(path, "shard table disagrees with world_size / n_written")
    for rank, (name, count) in enumerate(zip(names, counts, strict=True)):
        shard = path.parent / name
        info = _inspect_shard(shard, rank, world_size, path.name)
        for key in _MUST_MATCH:
            if info.attrs[key] != attrs[key]:
                raise InputFileError(
                    shard, f"attribute '{key}' is {info.attrs[key]!r} but {attrs[key]!r} in "
                    f"{path.name}: the shard was replaced by one from another run"
                )
        if info.n != count or ("shard_links_written" in f and
                               info.m != int(f["shard_links_written"][rank])):
            raise InputFileError(
                shard, f"holds {info.n} complete rows but {path.name} was written when it held "
                f"{count}; write the master file again (hpcflow.io.samples.write_master)"
            )
