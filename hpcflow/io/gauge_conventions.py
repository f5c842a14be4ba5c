"""What the ILDG and NERSC gauge files share: site and link order, precision, header statistics.

Both formats (ILDG file format document, "Binary data"; NERSC archive format, "Data") store one
4D gauge field as a loop over sites with ``x`` fastest, then ``y``, ``z`` and ``t`` slowest, and
at every site the links in the directions ``x, y, z, t``, each an ``Nc x Nc`` complex matrix in
row-major order as (re, im) pairs::

    file[t, z, y, x, d, a, b]      d = 0, 1, 2, 3 for x, y, z, t

hpcflow's links of one configuration are ``links[mu, x_0, x_1, x_2, x_3, a, b]``
(docs/physics.md, "Lattice and fields") with axis 0 the time axis, so
(docs/lattice-formats.md, "Axes and directions")::

    hpcflow axis 0, 1, 2, 3  ->  file t, x, y, z          lattice_shape = (lt, lx, ly, lz)
    hpcflow mu   0, 1, 2, 3  ->  file direction 3, 0, 1, 2 (t, x, y, z)

The matrix is the same on both sides: ``U_mu(x)``, the link from ``x`` to ``x + mu`` (no adjoint,
no transpose), periodic in every direction.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError
from .atomic import atomic_path

__all__ = [
    "ND",
    "GROUP_TOLERANCE",
    "STAT_TOLERANCE",
    "PRECISIONS",
    "MU_TO_FILE_DIRECTION",
    "FILE_DIRECTION_TO_MU",
    "as_links",
    "check_links",
    "file_dims",
    "lattice_shape_from_file",
    "to_file_order",
    "from_file_order",
    "real_dtype",
    "normalize_precision",
    "round_to_precision",
    "average_plaquette",
    "average_link_trace",
    "header_tolerance",
    "parse_float",
    "check_header_value",
    "group_deviation",
    "write_file",
]

ND = 4
# bytes per real number
PRECISIONS = {"single": 4, "double": 8}
# hpcflow direction mu -> file direction (x=0, y=1, z=2, t=3), and back
MU_TO_FILE_DIRECTION = (3, 0, 1, 2)
FILE_DIRECTION_TO_MU = (1, 2, 3, 0)
# hpcflow array axes [mu, t, x, y, z, a, b] -> file axes [t, z, y, x, d, a, b]
_TO_FILE_AXES = (1, 4, 3, 2, 0, 5, 6)
_FROM_FILE_AXES = (4, 0, 3, 2, 1, 5, 6)

# Largest |U U^dag - 1| or |det U - 1| a writer accepts (complex64 samples reach ~1e-6).
GROUP_TOLERANCE = 1e-4
# Header statistics (plaquette, link trace): agreement required on reading, besides the
# rounding of the printed value; never looser than Grid's NERSC reader (1e-5).
STAT_TOLERANCE = {"single": 1e-6, "double": 1e-12}
_LOOSEST_TOLERANCE = 1e-5


def as_links(links: Any) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor (any device, conj bit resolved)."""
    if hasattr(links, "detach"):
        links = links.detach()
        if hasattr(links, "resolve_conj"):
            links = links.resolve_conj().resolve_neg()
        links = links.cpu().numpy()
    return np.asarray(links)


def check_links(links: Any, nc: int) -> np.ndarray:
    """One 4D configuration ``[4, L_t, L_x, L_y, L_z, Nc, Nc]``, complex and finite; returns it as
    a numpy array. Raises ``ValueError`` naming what is wrong."""
    a = as_links(links)
    if a.ndim != 3 + ND or a.shape[0] != ND:
        extra = " (one configuration, without a batch axis)" if a.ndim == 4 + ND else ""
        raise ValueError(f"links must have shape [4, L_t, L_x, L_y, L_z, Nc, Nc]{extra}, "
                         f"got {list(a.shape)}; the formats hold 4D gauge fields only")
    if a.shape[-2:] != (nc, nc):
        raise ValueError(f"links end in {list(a.shape[-2:])}, expected [{nc}, {nc}] for the group")
    if min(a.shape[1:-2]) < 1:
        raise ValueError(f"empty lattice {list(a.shape[1:-2])}")
    if not np.iscomplexobj(a):
        raise ValueError(f"links must be complex, got {a.dtype}")
    if not np.isfinite(a).all():
        raise ValueError("links contain NaN or infinity")
    return a


def group_deviation(links: np.ndarray) -> float:
    """``max(|U U^dag - 1|, |det U - 1|)`` over all links ``[..., Nc, Nc]`` (0 for SU(N))."""
    u = links.astype(np.complex128, copy=False)
    eye = np.eye(u.shape[-1])
    unitarity = np.abs(u @ np.conj(np.swapaxes(u, -1, -2)) - eye).max()
    det = np.abs(np.linalg.det(u) - 1.0).max()
    return float(max(unitarity, det))


def file_dims(lattice_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(lx, ly, lz, lt)`` of an hpcflow ``lattice_shape = (L_t, L_x, L_y, L_z)``."""
    lt, lx, ly, lz = (int(n) for n in lattice_shape)
    return lx, ly, lz, lt


def lattice_shape_from_file(lx: int, ly: int, lz: int, lt: int) -> tuple[int, int, int, int]:
    """hpcflow ``lattice_shape`` ``(L_t, L_x, L_y, L_z)`` of a file's extents."""
    return lt, lx, ly, lz


def to_file_order(links: np.ndarray) -> np.ndarray:
    """``links [4, L_t, L_x, L_y, L_z, Nc, Nc]`` -> ``[L_t, L_z, L_y, L_x, 4, Nc, Nc]`` with file
    direction ``d`` (x, y, z, t) on axis 4; a C-contiguous copy."""
    by_file_direction = links[list(FILE_DIRECTION_TO_MU)]
    return np.ascontiguousarray(np.transpose(by_file_direction, _TO_FILE_AXES))


def from_file_order(sites: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_file_order`: ``[L_t, L_z, L_y, L_x, 4, Nc, Nc]`` -> hpcflow links."""
    by_file_direction = np.transpose(sites, _FROM_FILE_AXES)
    return np.ascontiguousarray(by_file_direction[list(MU_TO_FILE_DIRECTION)])


def normalize_precision(precision: str | int) -> str:
    """``"single"`` or ``"double"`` from those names, ``32``/``64`` or ``float32``/``float64``."""
    names = {"single": "single", "double": "double", "32": "single", "64": "double",
             "float32": "single", "float64": "double", "f": "single", "d": "double"}
    key = str(precision).lower()
    if key not in names:
        raise ValueError(f"precision must be 'single' or 'double', got {precision!r}")
    return names[key]


def real_dtype(precision: str, byteorder: str = ">") -> np.dtype:
    """IEEE float of ``precision`` in ``byteorder`` (``">"`` big-endian, ``"<"`` little)."""
    return np.dtype(f"{byteorder}f{PRECISIONS[precision]}")


def round_to_precision(links: np.ndarray, precision: str) -> np.ndarray:
    """``links`` as complex128 after rounding to the stored precision."""
    if precision == "single":
        return links.astype(np.complex64).astype(np.complex128)
    return links.astype(np.complex128)


def average_plaquette(links: np.ndarray, nc: int) -> float:
    """``(1/Nc) Re tr P_{mu nu}(x)`` averaged over sites and the 6 planes: exactly
    :func:`hpcflow.lattice.observables.average_plaquette` (docs/physics.md, "Loops"). NERSC's
    PLAQUETTE and the USQCD record's ``plaq`` have this normalization (1 on a cold field)."""
    import torch

    from ..lattice.groups import get_group
    from ..lattice.observables import average_plaquette as plaquette

    u = torch.from_numpy(np.ascontiguousarray(links, dtype=np.complex128))[None]
    return float(plaquette(u, get_group(f"SU{nc}"))[0])


def average_link_trace(links: np.ndarray) -> float:
    """``(1/Nc) Re tr U_mu(x)`` averaged over all ``4 V`` links (NERSC LINK_TRACE)."""
    nc = links.shape[-1]
    return float(np.trace(links, axis1=-2, axis2=-1).real.mean() / nc)


def header_tolerance(text: str, precision: str) -> float:
    """How far a header statistic printed as ``text`` may lie from the value recomputed from
    data of ``precision``: the precision's round-off (``STAT_TOLERANCE``) or half a unit of the
    last printed digit, whichever is larger, but never more than 1e-5."""
    try:
        exponent = Decimal(text.strip()).as_tuple().exponent
    except InvalidOperation:
        exponent = None
    printed = 0.5 * 10.0 ** exponent if isinstance(exponent, int) else 0.0
    return max(STAT_TOLERANCE[precision], min(printed, _LOOSEST_TOLERANCE))


def parse_float(path: Path, where: str, text: str) -> float:
    """A finite float from header text, or :class:`InputFileError` naming ``where``."""
    try:
        value = float(text)
    except ValueError:
        raise InputFileError(path, f"{where} is {text!r}, not a number") from None
    if not np.isfinite(value):
        raise InputFileError(path, f"{where} is {text!r}")
    return value


def check_header_value(path: Path, where: str, text: str, computed: float,
                       precision: str) -> float:
    """Compare a statistic the file states (``text``) with the one recomputed from its data;
    :class:`InputFileError` naming ``where`` (e.g. ``"PLAQUETTE in the header"``) if they differ
    by more than :func:`header_tolerance`. Returns the stated value."""
    stated = parse_float(path, where, text)
    tol = header_tolerance(text, precision)
    if not abs(stated - computed) <= tol:
        raise InputFileError(path, f"{where} is {text.strip()} but the data gives "
                                   f"{computed:.12g} (difference {abs(stated - computed):.3g}, "
                                   f"tolerance {tol:.1g}): wrong or damaged data, or another "
                                   "link convention")
    return stated


def write_file(path: str | Path, chunks: Iterable[bytes]) -> Path:
    """Write ``chunks`` to ``path`` through :func:`hpcflow.io.atomic.atomic_path`: the file only
    appears under its name once complete."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        os.makedirs(path.parent, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        for chunk in chunks:
            f.write(chunk)
    return path
