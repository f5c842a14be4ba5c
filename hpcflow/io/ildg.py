"""ILDG gauge configurations: SciDAC/QIO files in a LIME container (``lime.py``).

Sources: the ILDG binary file format description (ILDG Metadata Working Group), the SciDAC/USQCD
QIO documentation and QIO's ``qioxml.h`` (private file/record XML, ``usqcdInfo``,
``scidac-checksum``, record order); docs/lattice-formats.md, "ILDG" for what hpcflow writes.

A file holds two LIME messages, as QIO writes them::

    message 1  scidac-private-file-xml    <scidacFile>: version 1.1, spacetime 4,
                                          dims "lx ly lz lt", volfmt 0 (single file)
               scidac-file-xml            user XML (hpcflow: group, beta, shape, creator)
    message 2  scidac-private-record-xml  <scidacRecord>: version 1.1, date, recordtype 0,
                                          datatype QDP_F3_ColorMatrix | QDP_D3_ColorMatrix,
                                          precision F | D, colors 3, spins 0,
                                          typesize 72 | 144, datacount 4
               scidac-record-xml          <usqcdInfo>: version 1.0, plaq, linktr, info
               ildg-format                <ildgFormat>: version 1.0, field su3gauge,
                                          precision 32 | 64, lx ly lz lt
               ildg-data-lfn              (optional) the logical file name
               ildg-binary-data           big-endian IEEE floats, [t][z][y][x][d][a][b][re, im]
               scidac-checksum            <scidacChecksum>: version 1.0, suma, sumb (hex)

The SciDAC checksum: for the site of lexicographic rank ``r = x + lx (y + ly (z + lz t))``,
``c = crc32(the site's bytes as stored)`` (zlib's CRC-32); ``suma`` is the XOR over sites of
``c`` rotated left by ``r mod 29`` bits, ``sumb`` the same with ``r mod 31``.

``ildg-format`` knows one field, ``su3gauge``: only SU(3) in 4D can be written or read.
"""

from __future__ import annotations

import re
import time
import zlib
from pathlib import Path
from typing import Any
from xml.etree import ElementTree
from xml.sax.saxutils import escape

import numpy as np

from .._version import __version__
from ..errors import InputFileError
from . import lime
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
    "ILDG_FIELD",
    "ILDG_NAMESPACE",
    "RECORD_TYPES",
    "write_ildg",
    "read_ildg",
    "encode_ildg",
    "encode_binary",
    "decode_binary",
    "scidac_checksum",
    "ildg_format_xml",
    "parse_xml_fields",
]

ILDG_FIELD = "su3gauge"
ILDG_NAMESPACE = "http://www.lqcd.org/ildg"
NC = 3
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
PRIVATE_FILE = "scidac-private-file-xml"
USER_FILE = "scidac-file-xml"
PRIVATE_RECORD = "scidac-private-record-xml"
USER_RECORD = "scidac-record-xml"
ILDG_FORMAT = "ildg-format"
ILDG_LFN = "ildg-data-lfn"
ILDG_BINARY = "ildg-binary-data"
SCIDAC_CHECKSUM = "scidac-checksum"
RECORD_TYPES = (PRIVATE_FILE, USER_FILE, PRIVATE_RECORD, USER_RECORD, ILDG_FORMAT, ILDG_LFN,
                ILDG_BINARY, SCIDAC_CHECKSUM)
_DATATYPE = {"single": "QDP_F3_ColorMatrix", "double": "QDP_D3_ColorMatrix"}
_PRECISION_LETTER = {"single": "F", "double": "D"}
_ILDG_PRECISION = {"single": 32, "double": 64}
_MAX_XML = 1 << 20  # an XML record larger than this is not metadata


# --------------------------------------------------------------------------------- binary data
def encode_binary(links: np.ndarray, precision: str) -> bytes:
    """``links [4, L_t, L_x, L_y, L_z, 3, 3]`` -> the ``ildg-binary-data`` bytes (big-endian
    IEEE of ``precision``, sites x fastest, directions x, y, z, t, rows, columns, re/im)."""
    sites = to_file_order(links.astype(np.complex128, copy=False))
    return sites.view(np.float64).astype(real_dtype(precision, ">")).tobytes()


def decode_binary(data: bytes, dims: tuple[int, int, int, int], precision: str,
                  nc: int = NC) -> np.ndarray:
    """Inverse of :func:`encode_binary`: bytes of extents ``dims = (lx, ly, lz, lt)`` -> links
    ``[4, L_t, L_x, L_y, L_z, Nc, Nc]`` complex128."""
    lx, ly, lz, lt = dims
    reals = np.frombuffer(data, dtype=real_dtype(precision, ">")).astype(np.float64)
    sites = reals.view(np.complex128).reshape(lt, lz, ly, lx, 4, nc, nc)
    return from_file_order(sites)


def scidac_checksum(data: bytes, site_bytes: int) -> tuple[int, int]:
    """SciDAC ``(suma, sumb)`` of binary data made of sites of ``site_bytes`` bytes each, in
    lexicographic order (QIO's ``DML_checksum_accum``): per site ``c = crc32(site)``, then
    ``suma ^= rotl32(c, rank % 29)``, ``sumb ^= rotl32(c, rank % 31)``."""
    if site_bytes <= 0 or len(data) % site_bytes:
        raise ValueError(f"{len(data)} bytes are not a whole number of {site_bytes}-byte sites")
    n = len(data) // site_bytes
    view = memoryview(data)
    crc = np.fromiter((zlib.crc32(view[i * site_bytes:(i + 1) * site_bytes]) for i in range(n)),
                      dtype=np.uint64, count=n)
    rank = np.arange(n, dtype=np.uint64)
    return _xor_of_rotations(crc, rank % 29), _xor_of_rotations(crc, rank % 31)


def _xor_of_rotations(words: np.ndarray, shifts: np.ndarray) -> int:
    """XOR over ``rotl32(words[i], shifts[i])`` (uint64 arrays holding 32-bit values)."""
    mask = np.uint64(0xFFFFFFFF)
    rotated = ((words << shifts) | (words >> (np.uint64(32) - shifts))) & mask
    return int(np.bitwise_xor.reduce(rotated)) if rotated.size else 0


# ------------------------------------------------------------------------------------ XML text
def _xml(root: str, fields: dict[str, Any], attrs: str = "") -> bytes:
    inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in fields.items())
    head = f"<{root} {attrs}>" if attrs else f"<{root}>"
    return f"{XML_DECLARATION}{head}{inner}</{root}>".encode()


def ildg_format_xml(dims: tuple[int, int, int, int], precision: str) -> bytes:
    """The ``ildg-format`` record: ``<ildgFormat>`` with version, field, precision, lx..lt."""
    lx, ly, lz, lt = dims
    attrs = (f'xmlns="{ILDG_NAMESPACE}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
             f'xsi:schemaLocation="{ILDG_NAMESPACE} {ILDG_NAMESPACE}/filefmt.xsd"')
    return _xml("ildgFormat", {"version": "1.0", "field": ILDG_FIELD,
                               "precision": _ILDG_PRECISION[precision],
                               "lx": lx, "ly": ly, "lz": lz, "lt": lt}, attrs)


def _private_file_xml(dims: tuple[int, int, int, int]) -> bytes:
    return _xml("scidacFile", {"version": "1.1", "spacetime": 4,
                               "dims": " ".join(map(str, dims)) + " ", "volfmt": 0})


def _private_record_xml(precision: str, date: str) -> bytes:
    nbytes = PRECISIONS[precision]
    return _xml("scidacRecord", {"version": "1.1", "date": date, "recordtype": 0,
                                 "datatype": _DATATYPE[precision],
                                 "precision": _PRECISION_LETTER[precision], "colors": NC,
                                 "spins": 0, "typesize": 2 * NC * NC * nbytes, "datacount": 4})


def _user_record_xml(plaq: float, linktr: float, info: str) -> bytes:
    return _xml("usqcdInfo", {"version": "1.0", "plaq": repr(plaq), "linktr": repr(linktr),
                              "info": info})


def _user_file_xml(lattice_shape: tuple[int, ...], beta: float | None, info: str) -> bytes:
    fields: dict[str, Any] = {"version": "1.0", "creator": f"hpcflow {__version__}",
                              "group": "SU3",
                              "lattice_shape": " ".join(map(str, lattice_shape))}
    if beta is not None:
        fields["beta"] = repr(float(beta))
    fields["axes"] = "hpcflow axes (0, 1, 2, 3) = ILDG (t, x, y, z)"
    if info:
        fields["info"] = info
    return _xml("hpcflowConfiguration", fields)


def _checksum_xml(suma: int, sumb: int) -> bytes:
    return _xml("scidacChecksum", {"version": "1.0", "suma": f"{suma:x}", "sumb": f"{sumb:x}"})


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def parse_xml_fields(path: Path, record: str, data: bytes) -> tuple[str, dict[str, str]]:
    """Root tag (namespace removed) and ``{child tag: stripped text}`` of an XML record;
    :class:`InputFileError` naming ``record`` if it is not well-formed XML. Document type
    declarations (entities) are refused."""
    if len(data) > _MAX_XML:
        raise InputFileError(path, f"LIME record '{record}' holds {len(data)} bytes, too many "
                                   "for an XML metadata record")
    text = data.rstrip(b"\0").decode("utf-8", errors="replace")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InputFileError(path, f"LIME record '{record}' has a DOCTYPE/ENTITY declaration")
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError as exc:
        raise InputFileError(path, f"LIME record '{record}' is not well-formed XML ({exc})") \
            from None
    return _local(root.tag), {_local(c.tag): (c.text or "").strip() for c in root}


# -------------------------------------------------------------------------------------- writer
def encode_ildg(links: Any, *, precision: str = "double", beta: float | None = None,
                lfn: str | None = None, info: str = "", date: str | None = None) -> list[bytes]:
    """The two LIME messages of an ILDG file of one SU(3) configuration, as bytes.

    ``links [4, L_t, L_x, L_y, L_z, 3, 3]`` (hpcflow axes; complex, numpy or torch);
    ``precision``: ``"single"`` (32-bit) or ``"double"``; ``beta``: recorded in the user file
    XML; ``lfn``: an ``ildg-data-lfn`` record; ``info``: free text for the ``usqcdInfo`` record;
    ``date``: the private record's date (default: now, UTC). The ``plaq``/``linktr`` of the
    record XML are computed from the data as stored (rounded to ``precision``).
    """
    precision = normalize_precision(precision)
    links = check_links(links, NC)
    deviation = group_deviation(links)
    if deviation > GROUP_TOLERANCE:
        raise ValueError(f"links are not SU(3) matrices (deviation {deviation:.2g} > "
                         f"{GROUP_TOLERANCE:g}); ILDG's field 'su3gauge' holds SU(3) only")
    dims = file_dims(links.shape[1:5])
    binary = encode_binary(links, precision)
    stored = decode_binary(binary, dims, precision)
    suma, sumb = scidac_checksum(binary, 4 * 2 * NC * NC * PRECISIONS[precision])
    if date is None:
        date = time.strftime("%a %b %d %H:%M:%S %Y UTC", time.gmtime())
    file_message = [(PRIVATE_FILE, _private_file_xml(dims)),
                    (USER_FILE, _user_file_xml(links.shape[1:5], beta, info))]
    record_message = [
        (PRIVATE_RECORD, _private_record_xml(precision, date)),
        (USER_RECORD, _user_record_xml(average_plaquette(stored, NC),
                                       average_link_trace(stored), info)),
        (ILDG_FORMAT, ildg_format_xml(dims, precision)),
    ]
    if lfn is not None:
        record_message.append((ILDG_LFN, lfn.encode()))
    record_message += [(ILDG_BINARY, binary), (SCIDAC_CHECKSUM, _checksum_xml(suma, sumb))]
    return [lime.encode_message(file_message), lime.encode_message(record_message)]


def write_ildg(path: str | Path, links: Any, *, precision: str = "double",
               beta: float | None = None, lfn: str | None = None, info: str = "",
               date: str | None = None) -> Path:
    """Write one SU(3) configuration as an ILDG/LIME file (see :func:`encode_ildg`) through
    :func:`hpcflow.io.atomic.atomic_path`; returns ``path``."""
    return write_file(path, encode_ildg(links, precision=precision, beta=beta, lfn=lfn,
                                        info=info, date=date))


# -------------------------------------------------------------------------------------- reader
def _one(path: Path, records: list[lime.LimeRecord], lime_type: str,
         required: bool) -> lime.LimeRecord | None:
    found = [r for r in records if r.type == lime_type]
    if len(found) > 1:
        raise InputFileError(path, f"{len(found)} '{lime_type}' records; hpcflow reads files of "
                                   "one configuration")
    if not found and required:
        raise InputFileError(path, f"no '{lime_type}' LIME record: not an ILDG configuration")
    return found[0] if found else None


def _int_field(path: Path, record: str, fields: dict[str, str], key: str) -> int:
    text = fields.get(key)
    if text is None:
        raise InputFileError(path, f"'{record}' has no <{key}> field")
    try:
        value = int(text)
    except ValueError:
        raise InputFileError(path, f"'{record}' field <{key}> is {text!r}, not an integer") \
            from None
    return value


def _read_format(path: Path, data: bytes) -> tuple[tuple[int, int, int, int], str]:
    """``(lx, ly, lz, lt)`` and precision from the ``ildg-format`` record, checked."""
    root, fields = parse_xml_fields(path, ILDG_FORMAT, data)
    if root != "ildgFormat":
        raise InputFileError(path, f"'{ILDG_FORMAT}' has root element <{root}>, expected "
                                   "<ildgFormat>")
    field = fields.get("field")
    if field != ILDG_FIELD:
        raise InputFileError(path, f"'{ILDG_FORMAT}' field <field> is {field!r}; hpcflow reads "
                                   f"'{ILDG_FIELD}' only")
    bits = _int_field(path, ILDG_FORMAT, fields, "precision")
    if bits not in (32, 64):
        raise InputFileError(path, f"'{ILDG_FORMAT}' field <precision> is {bits}, expected 32 "
                                   "or 64")
    dims = tuple(_int_field(path, ILDG_FORMAT, fields, k) for k in ("lx", "ly", "lz", "lt"))
    bad = [k for k, n in zip(("lx", "ly", "lz", "lt"), dims, strict=True) if n < 1]
    if bad:
        raise InputFileError(path, f"'{ILDG_FORMAT}' field <{bad[0]}> is not positive")
    return dims, ("single" if bits == 32 else "double")  # type: ignore[return-value]


def _check_private_file(path: Path, data: bytes, dims: tuple[int, ...]) -> None:
    _, fields = parse_xml_fields(path, PRIVATE_FILE, data)
    if "spacetime" in fields and fields["spacetime"] != "4":
        raise InputFileError(path, f"'{PRIVATE_FILE}' field <spacetime> is "
                                   f"{fields['spacetime']!r} but ILDG files are 4D")
    if "dims" in fields:
        try:
            stated = tuple(int(n) for n in fields["dims"].split())
        except ValueError:
            stated = ()
        if stated != tuple(dims):
            raise InputFileError(path, f"'{PRIVATE_FILE}' field <dims> is {fields['dims']!r} "
                                       f"but '{ILDG_FORMAT}' says lx ly lz lt = "
                                       f"{' '.join(map(str, dims))}")


def _check_private_record(path: Path, data: bytes, precision: str) -> None:
    _, fields = parse_xml_fields(path, PRIVATE_RECORD, data)
    expect = {"precision": _PRECISION_LETTER[precision], "colors": str(NC),
              "typesize": str(2 * NC * NC * PRECISIONS[precision]), "datacount": "4"}
    for key, want in expect.items():
        have = fields.get(key)
        if have is not None and have != want:
            raise InputFileError(path, f"'{PRIVATE_RECORD}' field <{key}> is {have!r} but the "
                                       f"'{ILDG_FORMAT}' record implies {want!r}")


def _check_checksum(path: Path, data: bytes, binary: bytes, site_bytes: int) -> tuple[int, int]:
    _, fields = parse_xml_fields(path, SCIDAC_CHECKSUM, data)
    stated = {}
    for key in ("suma", "sumb"):
        text = fields.get(key)
        if text is None:
            raise InputFileError(path, f"'{SCIDAC_CHECKSUM}' has no <{key}> field")
        try:
            stated[key] = int(text, 16)
        except ValueError:
            raise InputFileError(path, f"'{SCIDAC_CHECKSUM}' field <{key}> is {text!r}, not "
                                       "hexadecimal") from None
    computed = dict(zip(("suma", "sumb"), scidac_checksum(binary, site_bytes), strict=True))
    for key in ("suma", "sumb"):
        if stated[key] != computed[key]:
            raise InputFileError(path, f"'{SCIDAC_CHECKSUM}' field <{key}> is "
                                       f"{stated[key]:08x} but the '{ILDG_BINARY}' data gives "
                                       f"{computed[key]:08x}: the data is damaged")
    return stated["suma"], stated["sumb"]


def read_ildg(path: str | Path, *, require_checksum: bool = True) -> tuple[np.ndarray, dict]:
    """Read one SU(3) configuration from an ILDG/LIME file.

    Returns ``links [4, L_t, L_x, L_y, L_z, 3, 3]`` complex128 (hpcflow axes) and ``meta``:
    ``format`` ``"ildg"``, ``group`` ``"SU3"``, ``lattice_shape``, ``precision``,
    ``plaquette`` and ``link_trace`` (recomputed), ``checksum`` ``(suma, sumb)`` or None,
    ``lfn``, ``beta`` (when an hpcflow file XML records it), ``file_xml``, ``record_xml``,
    ``records`` (LIME types in order).

    Checks, each refused with :class:`InputFileError` naming the record and field: the LIME
    structure (``lime.scan_records``); one ``ildg-format`` with field ``su3gauge``, precision
    32|64 and positive extents; one ``ildg-binary-data`` of exactly ``V * 4 * 18`` numbers;
    the private file XML's dims and the private record XML's precision, colors, typesize and
    datacount where present; the SciDAC checksum (its absence too, unless ``require_checksum``
    is false); the ``plaq``/``linktr`` of a ``usqcdInfo`` record XML where present.
    """
    path = Path(path)
    records = lime.scan_records(path)
    fmt = _one(path, records, ILDG_FORMAT, True)
    binary_record = _one(path, records, ILDG_BINARY, True)
    dims, precision = _read_format(path, lime.read_record_data(path, fmt))
    lx, ly, lz, lt = dims
    site_bytes = 4 * 2 * NC * NC * PRECISIONS[precision]
    expected = lx * ly * lz * lt * site_bytes
    if binary_record.length != expected:
        raise InputFileError(path, f"'{ILDG_BINARY}' holds {binary_record.length} bytes but "
                                   f"'{ILDG_FORMAT}' (lx ly lz lt = {lx} {ly} {lz} {lt}, "
                                   f"precision {8 * PRECISIONS[precision]}) needs {expected}")
    texts: dict[str, bytes] = {}
    for lime_type in (PRIVATE_FILE, USER_FILE, PRIVATE_RECORD, USER_RECORD, ILDG_LFN,
                      SCIDAC_CHECKSUM):
        rec = _one(path, records, lime_type, False)
        if rec is not None:
            texts[lime_type] = lime.read_record_data(path, rec)
    if PRIVATE_FILE in texts:
        _check_private_file(path, texts[PRIVATE_FILE], dims)
    if PRIVATE_RECORD in texts:
        _check_private_record(path, texts[PRIVATE_RECORD], precision)

    binary = lime.read_record_data(path, binary_record)
    checksum = None
    if SCIDAC_CHECKSUM in texts:
        checksum = _check_checksum(path, texts[SCIDAC_CHECKSUM], binary, site_bytes)
    elif require_checksum:
        raise InputFileError(path, f"no '{SCIDAC_CHECKSUM}' record: the data cannot be verified "
                                   "(read_ildg(..., require_checksum=False) reads it unverified)")
    links = decode_binary(binary, dims, precision)
    if not np.isfinite(links).all():
        raise InputFileError(path, f"'{ILDG_BINARY}' holds NaN or infinite numbers")
    plaquette = average_plaquette(links, NC)
    link_trace = average_link_trace(links)
    beta = _check_user_xml(path, texts, precision, plaquette, link_trace)
    meta = {
        "format": "ildg",
        "group": "SU3",
        "lattice_shape": lattice_shape_from_file(*dims),
        "precision": precision,
        "plaquette": plaquette,
        "link_trace": link_trace,
        "checksum": checksum,
        "lfn": texts[ILDG_LFN].decode("utf-8", errors="replace") if ILDG_LFN in texts else None,
        "beta": beta,
        "file_xml": _text(texts.get(USER_FILE)),
        "record_xml": _text(texts.get(USER_RECORD)),
        "records": [r.type for r in records],
    }
    return links, meta


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.rstrip(b"\0").decode("utf-8", errors="replace")


def _check_user_xml(path: Path, texts: dict[str, bytes], precision: str, plaquette: float,
                    link_trace: float) -> float | None:
    """Verify ``plaq``/``linktr`` of a USQCD record XML; return the beta of an hpcflow file
    XML (None otherwise). Other user XML is free-form and not interpreted."""
    if USER_RECORD in texts and b"usqcdInfo" in texts[USER_RECORD]:
        root, fields = parse_xml_fields(path, USER_RECORD, texts[USER_RECORD])
        if root == "usqcdInfo":
            for key, value in (("plaq", plaquette), ("linktr", link_trace)):
                if re.fullmatch(r"\s*[-+0-9.eE]+\s*", fields.get(key, "")):
                    check_header_value(path, f"'{USER_RECORD}' field <{key}>", fields[key],
                                       value, precision)
    if USER_FILE in texts and b"hpcflowConfiguration" in texts[USER_FILE]:
        root, fields = parse_xml_fields(path, USER_FILE, texts[USER_FILE])
        if root == "hpcflowConfiguration" and "beta" in fields:
            try:
                return float(fields["beta"])
            except ValueError:
                return None
    return None
