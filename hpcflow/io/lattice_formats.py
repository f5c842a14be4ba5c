"""Standard lattice file formats: one entry point for ILDG/LIME (``ildg.py``) and NERSC
(``nersc.py``) configurations, and the export of hpcflow sample files to them.

Conventions (docs/lattice-formats.md): a configuration is ``links [4, L_t, L_x, L_y, L_z, Nc,
Nc]`` with hpcflow's axis 0 the time axis; it maps to the files' ``(x, y, z, t)`` as
``lattice_shape = (lt, lx, ly, lz)`` and ``mu = 0, 1, 2, 3`` to the directions ``t, x, y, z``;
the matrix is ``U_mu(x)``, the link from ``x`` to ``x + mu``, in both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError
from . import ildg, nersc
from .lime import is_lime

__all__ = [
    "FORMATS",
    "SUFFIXES",
    "check_supported",
    "detect_format",
    "read_configuration",
    "write_configuration",
    "export_samples",
    "export_name",
]

FORMATS = ("ildg", "nersc")
SUFFIXES = {"ildg": ".lime", "nersc": ".nersc"}


def check_supported(fmt: str, group: str, nd: int = 4) -> None:
    """``ValueError`` naming the format and the group when ``fmt`` cannot hold ``group`` in
    ``nd`` dimensions: both formats are 4D; ILDG holds SU(3) only (field ``su3gauge``), NERSC
    SU(N) (SU(3) as standard, SU(2) and SU(N >= 4) with Grid's data type names); U(1) neither."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown lattice file format {fmt!r}; expected one of {FORMATS}")
    if nd != 4:
        raise ValueError(f"{fmt.upper()} files hold 4D gauge fields; this lattice has {nd} "
                         "dimensions")
    if fmt == "ildg" and group != "SU3":
        raise ValueError(f"ILDG files hold SU(3) only (ildg-format field 'su3gauge'); group "
                         f"{group} cannot be written as ILDG"
                         + ("; NERSC takes SU(N) (fmt='nersc')" if group != "U1" else ""))
    if fmt == "nersc" and not (group.startswith("SU") and group[2:].isdigit()):
        raise ValueError(f"NERSC files hold SU(N) gauge fields; group {group} has no NERSC "
                         "data type")


def detect_format(path: str | Path) -> str:
    """``"ildg"`` (LIME magic number) or ``"nersc"`` (``BEGIN_HEADER``) from a file's first
    bytes; :class:`InputFileError` for anything else."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise InputFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if is_lime(head):
        return "ildg"
    if head.lstrip().startswith(b"BEGIN_HEADER"):
        return "nersc"
    raise InputFileError(path, "neither an ILDG/LIME file (magic number 0x456789ab) nor a NERSC "
                               "file (BEGIN_HEADER)")


def read_configuration(path: str | Path, fmt: str | None = None) -> tuple[np.ndarray, dict]:
    """``(links [4, L_t, L_x, L_y, L_z, Nc, Nc] complex128, meta)`` from an ILDG or NERSC
    file (``fmt`` detected when None); every check of :func:`hpcflow.io.ildg.read_ildg` or
    :func:`hpcflow.io.nersc.read_nersc` applies. ``meta`` has at least ``format``, ``group``,
    ``lattice_shape``, ``precision``, ``plaquette``, ``link_trace``."""
    fmt = fmt or detect_format(path)
    if fmt == "ildg":
        return ildg.read_ildg(path)
    if fmt == "nersc":
        return nersc.read_nersc(path)
    raise ValueError(f"unknown lattice file format {fmt!r}; expected one of {FORMATS}")


def write_configuration(path: str | Path, links: Any, fmt: str, *, group: str,
                        precision: str = "double", beta: float | None = None,
                        **options: Any) -> Path:
    """Write one configuration ``links [4, L_t, L_x, L_y, L_z, Nc, Nc]`` (numpy or torch) of
    ``group`` as ``fmt`` (``"ildg"`` or ``"nersc"``) in ``precision`` (``"single"`` or
    ``"double"``), atomically; returns ``path``.

    ``options`` go to the writer: ILDG ``lfn``, ``info``, ``date``; NERSC ``compact``,
    ``ensemble_id``, ``ensemble_label``, ``sequence_number``, ``creator``, ``creation_date``.
    ``ValueError`` for a format that cannot hold the group (:func:`check_supported`), links of
    the wrong shape or not in the group.
    """
    check_supported(fmt, group)  # the writer checks the shape of links
    if fmt == "ildg":
        return ildg.write_ildg(path, links, precision=precision, beta=beta, **options)
    return nersc.write_nersc(path, links, group=group, precision=precision, beta=beta,
                             **options)


def export_name(index: int, fmt: str) -> str:
    """File name of configuration ``index``: ``cfg_000123.lime`` / ``cfg_000123.nersc``."""
    return f"cfg_{index:06d}{SUFFIXES[fmt]}"


def export_samples(samples_path: str | Path, fmt: str, out_dir: str | Path, *, start: int = 0,
                   stop: int | None = None, step: int = 1, chain: bool = True,
                   precision: str = "double", batch_size: int = 16,
                   **options: Any) -> list[Path]:
    """Write configurations of an hpcflow sample file (a shard, ``samples.h5`` or its folder)
    as one ``fmt`` file each in ``out_dir``; returns the paths in order.

    ``chain``: the Markov-chain states after steps ``start:stop:step``
    (``SampleSet.mcmc_links``); from a file that keeps only its thinned chain (``store:
    chain``) the kept configurations ``start:stop:step``, numbered by their position among
    them. Else the proposals of rows ``start:stop:step``. File ``i`` is named
    :func:`export_name` of its index. Every file is written atomically; the group, beta and
    shape come from the sample file. ``options`` as in :func:`write_configuration` (NERSC's
    SEQUENCE_NUMBER is the index unless given). :class:`InputFileError` when the sample file
    did not keep a requested configuration, or keeps none (``store: none``).
    """
    from .samples import open_samples

    if step < 1:
        raise ValueError(f"step must be >= 1, got {step}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown lattice file format {fmt!r}; expected one of {FORMATS}")
    out_dir = Path(out_dir)
    written: list[Path] = []
    with open_samples(samples_path) as ss:
        group = ss.attrs["group"]
        shape = tuple(ss.attrs["lattice_shape"])
        beta = ss.attrs["beta"]
        check_supported(fmt, group, len(shape))
        if ss.n and not ss.m:
            raise InputFileError(ss.path, f"stores no configurations (store: {ss.store}); "
                                          "sample again with sample.store all or chain")
        thinned = chain and ss.m != ss.n
        what = ("kept chain configuration" if thinned else
                "Markov-chain state after step" if chain else "proposal")
        indices = range(ss.m if thinned else ss.n)[start:stop:step]
        if len(indices):
            out_dir.mkdir(parents=True, exist_ok=True)
        for a in range(0, len(indices), batch_size):
            block = indices[a:a + batch_size]
            lo, hi = block[0], block[-1] + 1
            try:
                batch = (ss.links[lo:hi:step] if thinned else ss.mcmc_links(lo, hi, step)
                         if chain else ss.links_of_rows(np.arange(lo, hi, step)))
            except KeyError as exc:  # a file that keeps only some configurations
                raise InputFileError(ss.path, f"cannot export steps {lo}..{hi - 1}: "
                                              f"{exc.args[0] if exc.args else exc}") from None
            for index, links in zip(block, batch, strict=True):
                written.append(_export_one(out_dir / export_name(index, fmt), links, fmt,
                                           group, precision, beta, f"{ss.path.name}: {what} "
                                           f"{index}", index, dict(options)))
    return written


def _export_one(path: Path, links: np.ndarray, fmt: str, group: str, precision: str,
                beta: float, info: str, index: int, options: dict[str, Any]) -> Path:
    if fmt == "ildg":
        options.setdefault("info", f"hpcflow {info}")
    else:
        options.setdefault("sequence_number", index)
    return write_configuration(path, links, fmt, group=group, precision=precision, beta=beta,
                               **options)
