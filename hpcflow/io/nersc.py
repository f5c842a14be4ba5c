"""NERSC ("Connection") gauge configurations: an ASCII header, then the links in binary.

Sources: the NERSC/Gauge Connection archive format description (header keys, ``4D_SU3_GAUGE``
and ``4D_SU3_GAUGE_3x3``, the checksum), as read and written by MILC and Grid (``NerscIO.h``;
Grid's ``4D_SU2_GAUGE`` names extend it to SU(2)); docs/lattice-formats.md, "NERSC".

The file::

    BEGIN_HEADER
    HDR_VERSION = 1.0
    DATATYPE = 4D_SU3_GAUGE_3x3          (or 4D_SU3_GAUGE: the first two rows of each link)
    STORAGE_FORMAT = 1.0
    DIMENSION_1 = lx   ...   DIMENSION_4 = lt
    LINK_TRACE = (1/3) Re tr U averaged over all 4 V links
    PLAQUETTE = (1/3) Re tr P averaged over sites and the 6 planes (1 on a cold field)
    BOUNDARY_1 = PERIODIC   ...   BOUNDARY_4 = PERIODIC
    CHECKSUM = sum of the binary data's 32-bit unsigned words mod 2^32, hexadecimal
    ENSEMBLE_ID, ENSEMBLE_LABEL, SEQUENCE_NUMBER, CREATOR, CREATOR_HARDWARE,
    CREATION_DATE, ARCHIVE_DATE
    FLOATING_POINT = IEEE64BIG           (IEEE32BIG; IEEE32LITTLE, IEEE64LITTLE on reading)
    END_HEADER
    <binary data: sites [t][z][y][x], directions x, y, z, t, rows, columns, (re, im)>

The checksum words are read in the file's byte order (so the sum is the same number for the
big- and the little-endian file of one configuration). In the two-row storage (``4D_SU3_GAUGE``)
the third row is ``conj(row_0 x row_1)`` on reading; in ``4D_SU2_GAUGE`` (one row) the second row
is ``(-conj(u_01), conj(u_00))``. U(1) has no NERSC data type.
"""

from __future__ import annotations

import getpass
import platform
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputFileError
from .gauge_conventions import (
    GROUP_TOLERANCE,
    PRECISIONS,
    average_link_trace,
    average_plaquette,
    check_header_value,
    check_links,
    file_dims,
    from_file_order,
    group_deviation,
    lattice_shape_from_file,
    normalize_precision,
    real_dtype,
    to_file_order,
    write_file,
)

__all__ = [
    "FLOATING_POINT",
    "datatype_name",
    "parse_datatype",
    "nersc_checksum",
    "reconstruct_rows",
    "encode_header",
    "parse_header",
    "encode_nersc",
    "write_nersc",
    "read_nersc",
]

# FLOATING_POINT -> (precision, byte order; None: not said, resolved by the checksum)
FLOATING_POINT: dict[str, tuple[str, str | None]] = {
    "IEEE32BIG": ("single", ">"),
    "IEEE64BIG": ("double", ">"),
    "IEEE32LITTLE": ("single", "<"),
    "IEEE64LITTLE": ("double", "<"),
    "IEEE32": ("single", None),
    "IEEE64": ("double", None),
}
_WRITE_FLOATING_POINT = {"single": "IEEE32BIG", "double": "IEEE64BIG"}
_DATATYPE = re.compile(r"4D_SU(\d+)_GAUGE(?:_(\d+)X(\d+))?")
_REQUIRED = ("DATATYPE", "DIMENSION_1", "DIMENSION_2", "DIMENSION_3", "DIMENSION_4",
             "CHECKSUM", "LINK_TRACE", "PLAQUETTE", "FLOATING_POINT")
_BOUNDARIES = ("PERIODIC", "ANTIPERIODIC")  # of the fermions; the links are periodic either way
_MAX_HEADER = 1 << 16


# ------------------------------------------------------------------------------------ datatype
def datatype_name(nc: int, compact: bool) -> str:
    """``4D_SU{N}_GAUGE_{N}x{N}`` (full matrices) or ``4D_SU{N}_GAUGE`` (``N - 1`` rows, for
    N = 2, 3)."""
    if compact and nc not in (2, 3):
        raise ValueError(f"compact (N-1 row) NERSC storage exists for SU(2) and SU(3) only, "
                         f"not SU({nc})")
    return f"4D_SU{nc}_GAUGE" if compact else f"4D_SU{nc}_GAUGE_{nc}x{nc}"


def parse_datatype(text: str) -> tuple[int, int] | None:
    """``(Nc, stored rows)`` of a DATATYPE value, or None if it is not a 4D SU(N) gauge field."""
    m = _DATATYPE.fullmatch(text.strip().upper())
    if not m:
        return None
    nc = int(m.group(1))
    if nc < 2:
        return None
    if m.group(2) is None:
        return (nc, nc - 1) if nc in (2, 3) else None
    if int(m.group(2)) != nc or int(m.group(3)) != nc:
        return None
    return nc, nc


def reconstruct_rows(stored: np.ndarray, nc: int) -> np.ndarray:
    """Full SU(N) matrices ``[..., N, N]`` from the first ``N - 1`` rows ``[..., N - 1, N]``
    (N = 2, 3): the last row is the complex conjugate of the cross product of the others
    (SU(3)), or ``(-conj(u_01), conj(u_00))`` (SU(2)); full storage is returned unchanged."""
    if stored.shape[-2] == nc:
        return stored
    if nc == 3:
        last = np.conj(np.cross(stored[..., 0, :], stored[..., 1, :]))
    elif nc == 2:
        last = np.stack([-np.conj(stored[..., 0, 1]), np.conj(stored[..., 0, 0])], axis=-1)
    else:
        raise ValueError(f"no row reconstruction for SU({nc})")
    return np.concatenate([stored, last[..., None, :]], axis=-2)


def nersc_checksum(data: bytes | memoryview, byteorder: str = ">") -> int:
    """Sum of the 32-bit unsigned words of ``data`` (read in ``byteorder``) modulo 2^32."""
    if len(data) % 4:
        raise ValueError(f"{len(data)} bytes are not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype=np.dtype(f"{byteorder}u4"))
    return int(words.sum(dtype=np.uint64)) & 0xFFFFFFFF


# -------------------------------------------------------------------------------------- header
def encode_header(fields: dict[str, Any]) -> bytes:
    """``BEGIN_HEADER``, one ``KEY = value`` line per field (in the given order), ``END_HEADER``
    (each line ending in a newline; the binary data follows the last one)."""
    lines = ["BEGIN_HEADER", *(f"{k} = {v}" for k, v in fields.items()), "END_HEADER"]
    text = "\n".join(lines) + "\n"
    return text.encode("ascii")


def parse_header(path: Path, head: bytes) -> tuple[dict[str, str], int]:
    """``({key: value}, offset of the binary data)`` from the first bytes of a NERSC file.

    Keys and values are stripped of blanks; lines without ``=`` are ignored. The data begins
    after the newline that ends the ``END_HEADER`` line."""
    if not head.lstrip().startswith(b"BEGIN_HEADER"):
        raise InputFileError(path, "not a NERSC file: it does not begin with BEGIN_HEADER")
    end = head.find(b"END_HEADER")
    newline = head.find(b"\n", end) if end >= 0 else -1
    if end < 0 or newline < 0:
        raise InputFileError(path, f"no END_HEADER line in the first {len(head)} bytes "
                                   "(truncated header?)")
    try:
        text = head[:end].decode("ascii")
    except UnicodeDecodeError:
        raise InputFileError(path, "the NERSC header is not ASCII text") from None
    fields: dict[str, str] = {}
    for line in text.splitlines()[1:]:
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    return fields, newline + 1


# -------------------------------------------------------------------------------------- writer
def encode_nersc(links: Any, *, group: str = "SU3", precision: str = "double",
                 compact: bool = False, beta: float | None = None,
                 ensemble_id: str = "hpcflow", ensemble_label: str | None = None,
                 sequence_number: int = 0, creator: str | None = None,
                 creation_date: str | None = None) -> list[bytes]:
    """Header and binary data of a NERSC file of one SU(N) configuration (N = 3; N = 2 and
    N >= 4 with Grid's ``4D_SU{N}_GAUGE*`` names).

    ``links [4, L_t, L_x, L_y, L_z, N, N]`` (hpcflow axes); ``precision``: ``"single"``
    (IEEE32BIG) or ``"double"`` (IEEE64BIG); ``compact``: store ``N - 1`` rows
    (``4D_SU3_GAUGE``) instead of full matrices (``4D_SU3_GAUGE_3x3``, the default: it reads
    back bit for bit); ``beta`` goes into the default ENSEMBLE_LABEL. PLAQUETTE and LINK_TRACE
    are computed from the data as a reader sees it (rounded, rows rebuilt).
    """
    m = re.fullmatch(r"SU(\d+)", group)
    if not m or int(m.group(1)) < 2:
        raise ValueError(f"NERSC files hold SU(N) gauge fields; group {group!r} has no NERSC "
                         "data type")
    nc = int(m.group(1))
    precision = normalize_precision(precision)
    links = check_links(links, nc)
    deviation = group_deviation(links)
    if deviation > GROUP_TOLERANCE:
        raise ValueError(f"links are not {group} matrices (deviation {deviation:.2g} > "
                         f"{GROUP_TOLERANCE:g})")
    datatype = datatype_name(nc, compact)
    rows = nc - 1 if compact else nc
    sites = to_file_order(links.astype(np.complex128, copy=False))[..., :rows, :]
    data = np.ascontiguousarray(sites).view(np.float64) \
        .astype(real_dtype(precision, ">")).tobytes()
    stored = _decode(data, file_dims(links.shape[1:5]), precision, ">", nc, rows)
    lx, ly, lz, lt = file_dims(links.shape[1:5])
    now = creation_date or time.strftime("%a %b %d %H:%M:%S %Y UTC", time.gmtime())
    if ensemble_label is None:
        ensemble_label = f"hpcflow-{group}" + (f"-beta{float(beta):g}" if beta is not None else "")
    fields: dict[str, Any] = {
        "HDR_VERSION": "1.0",
        "DATATYPE": datatype,
        "STORAGE_FORMAT": "1.0",
        "DIMENSION_1": lx, "DIMENSION_2": ly, "DIMENSION_3": lz, "DIMENSION_4": lt,
        "LINK_TRACE": f"{average_link_trace(stored):.16f}",
        "PLAQUETTE": f"{average_plaquette(stored, nc):.16f}",
        "BOUNDARY_1": "PERIODIC", "BOUNDARY_2": "PERIODIC",
        "BOUNDARY_3": "PERIODIC", "BOUNDARY_4": "PERIODIC",
        "CHECKSUM": f"{nersc_checksum(data, '>'):x}",
        "ENSEMBLE_ID": ensemble_id,
        "ENSEMBLE_LABEL": ensemble_label,
        "SEQUENCE_NUMBER": int(sequence_number),
        "CREATOR": creator or _user(),
        "CREATOR_HARDWARE": f"{platform.machine()}-{platform.system()}",
        "CREATION_DATE": now,
        "ARCHIVE_DATE": now,
        "FLOATING_POINT": _WRITE_FLOATING_POINT[precision],
    }
    return [encode_header(fields), data]


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (containers)
        return "hpcflow"


def write_nersc(path: str | Path, links: Any, **options: Any) -> Path:
    """Write one configuration as a NERSC file (options of :func:`encode_nersc`) through
    :func:`hpcflow.io.atomic.atomic_path`; returns ``path``."""
    return write_file(path, encode_nersc(links, **options))


# -------------------------------------------------------------------------------------- reader
def _decode(data: bytes | memoryview, dims: tuple[int, int, int, int], precision: str,
            byteorder: str, nc: int, rows: int) -> np.ndarray:
    lx, ly, lz, lt = dims
    reals = np.frombuffer(data, dtype=real_dtype(precision, byteorder)).astype(np.float64)
    stored = reals.view(np.complex128).reshape(lt, lz, ly, lx, 4, rows, nc)
    return from_file_order(reconstruct_rows(stored, nc))


def _dimension(path: Path, fields: dict[str, str], i: int) -> int:
    key = f"DIMENSION_{i}"
    try:
        n = int(fields[key])
    except ValueError:
        raise InputFileError(path, f"{key} in the header is {fields[key]!r}, not an integer") \
            from None
    if n < 1:
        raise InputFileError(path, f"{key} in the header is {n}")
    return n


def _resolve_checksum(path: Path, fields: dict[str, str], data: bytes | memoryview,
                      byteorder: str | None) -> tuple[int, str]:
    """Verify CHECKSUM; returns it and the byte order (tried both ways when not stated)."""
    text = fields["CHECKSUM"]
    try:
        stated = int(text, 16)
    except ValueError:
        raise InputFileError(path, f"CHECKSUM in the header is {text!r}, not hexadecimal") \
            from None
    orders = (byteorder,) if byteorder else (">", "<")
    sums = {order: nersc_checksum(data, order) for order in orders}
    for order, value in sums.items():
        if value == stated:
            return stated, order
    got = " or ".join(f"{v:x}" for v in sums.values())
    raise InputFileError(path, f"CHECKSUM in the header is {text} but the data sums to {got}: "
                               "the data is damaged")


def read_nersc(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read one configuration from a NERSC file.

    Returns ``links [4, L_t, L_x, L_y, L_z, N, N]`` complex128 (hpcflow axes) and ``meta``:
    ``format`` ``"nersc"``, ``group``, ``lattice_shape``, ``precision``, ``datatype``,
    ``floating_point``, ``plaquette`` and ``link_trace`` (recomputed), ``checksum``,
    ``header`` (every key, as text).

    Refused with :class:`InputFileError` naming the header key: a missing key of
    DATATYPE, DIMENSION_1..4, CHECKSUM, LINK_TRACE, PLAQUETTE, FLOATING_POINT; a DATATYPE other
    than 4D SU(N) gauge fields; an unknown FLOATING_POINT or BOUNDARY_i; binary data of the
    wrong length; a CHECKSUM, PLAQUETTE or LINK_TRACE the data does not reproduce (the two
    statistics to the round-off of the precision or of the printed digits, at most 1e-5).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    fields, offset = parse_header(path, raw[:_MAX_HEADER])
    missing = [k for k in _REQUIRED if k not in fields]
    if missing:
        raise InputFileError(path, f"header lacks {', '.join(missing)}")
    parsed = parse_datatype(fields["DATATYPE"])
    if parsed is None:
        raise InputFileError(path, f"DATATYPE in the header is {fields['DATATYPE']!r}; hpcflow "
                                   "reads 4D_SU3_GAUGE, 4D_SU3_GAUGE_3x3 and Grid's "
                                   "4D_SU<N>_GAUGE[_<N>x<N>]")
    nc, rows = parsed
    fp = fields["FLOATING_POINT"].upper()
    if fp not in FLOATING_POINT:
        raise InputFileError(path, f"FLOATING_POINT in the header is "
                                   f"{fields['FLOATING_POINT']!r}; expected one of "
                                   f"{', '.join(FLOATING_POINT)}")
    precision, byteorder = FLOATING_POINT[fp]
    for i in range(1, 5):
        value = fields.get(f"BOUNDARY_{i}", "PERIODIC").upper()
        if value not in _BOUNDARIES:
            raise InputFileError(path, f"BOUNDARY_{i} in the header is {value!r}; hpcflow "
                                       "reads periodic gauge fields only")
    dims = tuple(_dimension(path, fields, i) for i in range(1, 5))
    lx, ly, lz, lt = dims
    expected = lx * ly * lz * lt * 4 * rows * nc * 2 * PRECISIONS[precision]
    data = memoryview(raw)[offset:]
    if len(data) != expected:
        raise InputFileError(path, f"binary data after END_HEADER has {len(data)} bytes but "
                                   f"DATATYPE {fields['DATATYPE']}, DIMENSION_1..4 = "
                                   f"{lx} {ly} {lz} {lt} and FLOATING_POINT {fp} need "
                                   f"{expected}")
    checksum, byteorder = _resolve_checksum(path, fields, data, byteorder)
    links = _decode(data, dims, precision, byteorder, nc, rows)
    if not np.isfinite(links).all():
        raise InputFileError(path, "binary data holds NaN or infinite numbers")
    plaquette = average_plaquette(links, nc)
    link_trace = average_link_trace(links)
    check_header_value(path, "PLAQUETTE in the header", fields["PLAQUETTE"], plaquette,
                       precision)
    check_header_value(path, "LINK_TRACE in the header", fields["LINK_TRACE"], link_trace,
                       precision)
    meta = {
        "format": "nersc",
        "group": f"SU{nc}",
        "lattice_shape": lattice_shape_from_file(*dims),
        "precision": precision,
        "datatype": fields["DATATYPE"],
        "floating_point": f"IEEE{8 * PRECISIONS[precision]}"
                          f"{'BIG' if byteorder == '>' else 'LITTLE'}",
        "plaquette": plaquette,
        "link_trace": link_trace,
        "checksum": checksum,
        "header": fields,
    }
    return links, meta
