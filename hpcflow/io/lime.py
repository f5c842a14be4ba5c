"""LIME, the record container of USQCD's c-lime (the packaging of SciDAC and ILDG files).

Format (c-lime's ``lime_fixed_types.h`` / ``lime_header.c``; ILDG file format document,
"LIME"): a file is a sequence of *messages*, a message a sequence of *records*. Every record is a
144-byte header followed by its data, zero-padded to a multiple of 8 bytes::

    offset  size  field
         0     4  magic number 0x456789ab                  (big-endian uint32)
         4     2  LIME version, 1                          (big-endian uint16)
         6     2  flags: bit 15 MB (message begin), bit 14 ME (message end), rest zero
         8     8  data length in bytes, without the padding (big-endian uint64)
        16   128  record type, ASCII, NUL-padded (e.g. "ildg-binary-data")

The first record of a message has MB set, the last ME (a one-record message has both).

This module only packs and unpacks records; the records of an ILDG file are in ``ildg.py``.
Reading refuses, with :class:`hpcflow.errors.InputFileError` naming the file and the byte
offset, a bad magic number or version, a record that runs past the end of the file, a message
that is not closed before the next begins, and a file that ends inside a message (cut short).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ..errors import InputFileError

__all__ = [
    "LIME_MAGIC",
    "LIME_VERSION",
    "HEADER_SIZE",
    "TYPE_SIZE",
    "LimeRecord",
    "is_lime",
    "pack_header",
    "encode_record",
    "encode_message",
    "write_messages",
    "padding",
    "scan_records",
    "read_record_data",
]

LIME_MAGIC = 0x456789AB
LIME_VERSION = 1
HEADER_SIZE = 144
TYPE_SIZE = 128
MB_FLAG = 0x8000  # bit 15 of the 16-bit flags word: message begin
ME_FLAG = 0x4000  # bit 14: message end
_HEADER = struct.Struct(">IHHQ128s")
assert _HEADER.size == HEADER_SIZE


@dataclass(frozen=True)
class LimeRecord:
    """One record of a LIME file: its ``type``, the file offset of its data (``offset``), the data
    length without padding (``length``) and the message flags ``mb``, ``me``."""

    type: str
    offset: int
    length: int
    mb: bool
    me: bool


def padding(length: int) -> int:
    """Number of zero bytes after ``length`` data bytes (to the next multiple of 8)."""
    return -length % 8


def pack_header(lime_type: str, length: int, *, mb: bool, me: bool) -> bytes:
    """The 144-byte header of one record (see the module docstring)."""
    name = lime_type.encode("ascii")
    if not name or len(name) > TYPE_SIZE or b"\0" in name:
        raise ValueError(f"LIME record type must be 1..{TYPE_SIZE} ASCII characters, "
                         f"got {lime_type!r}")
    if length < 0:
        raise ValueError(f"negative record length {length}")
    flags = (MB_FLAG if mb else 0) | (ME_FLAG if me else 0)
    return _HEADER.pack(LIME_MAGIC, LIME_VERSION, flags, length, name)


def encode_record(lime_type: str, data: bytes, *, mb: bool, me: bool) -> bytes:
    """Header, data and padding of one record."""
    return pack_header(lime_type, len(data), mb=mb, me=me) + data + bytes(padding(len(data)))


def encode_message(records: Sequence[tuple[str, bytes]]) -> bytes:
    """One message: ``records`` as ``(type, data)`` pairs, MB on the first, ME on the last."""
    if not records:
        raise ValueError("a LIME message needs at least one record")
    last = len(records) - 1
    return b"".join(encode_record(t, d, mb=i == 0, me=i == last)
                    for i, (t, d) in enumerate(records))


def write_messages(f: BinaryIO, messages: Iterable[Sequence[tuple[str, bytes]]]) -> None:
    """Write several messages to an open binary file, one after another."""
    for message in messages:
        f.write(encode_message(message))


def is_lime(head: bytes) -> bool:
    """Whether the first bytes of a file carry the LIME magic number."""
    return len(head) >= 4 and struct.unpack(">I", head[:4])[0] == LIME_MAGIC


def _unpack_header(raw: bytes, path: Path, at: int) -> tuple[str, int, bool, bool]:
    magic, version, flags, length, name = _HEADER.unpack(raw)
    if magic != LIME_MAGIC:
        raise InputFileError(path, f"LIME record header at byte {at}: magic number "
                                   f"{magic:#010x}, expected {LIME_MAGIC:#010x} (not a LIME "
                                   "file, or a damaged one)")
    if version != LIME_VERSION:
        raise InputFileError(path, f"LIME record header at byte {at}: version {version}, "
                                   f"only version {LIME_VERSION} is known")
    try:
        lime_type = name.split(b"\0", 1)[0].decode("ascii")
    except UnicodeDecodeError:
        raise InputFileError(path, f"LIME record header at byte {at}: the record type is not "
                                   "ASCII") from None
    return lime_type, length, bool(flags & MB_FLAG), bool(flags & ME_FLAG)


def scan_records(path: str | Path) -> list[LimeRecord]:
    """Headers of every record of a LIME file, in file order (the data is not read).

    Checks the magic number and version of each header, that each record's data lies inside the
    file, that messages nest (MB after a closed message, ME before the next MB) and that the file
    does not end inside a message. The padding of the very last record may be missing.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        f = path.open("rb")
    except OSError as exc:
        raise InputFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    records: list[LimeRecord] = []
    in_message = False
    with f:
        at = 0
        while at < size:
            if size - at < HEADER_SIZE:
                raise InputFileError(path, f"{size - at} stray bytes at byte {at} after the "
                                           "last LIME record (truncated header?)")
            f.seek(at)
            lime_type, length, mb, me = _unpack_header(f.read(HEADER_SIZE), path, at)
            data_at = at + HEADER_SIZE
            if data_at + length > size:
                raise InputFileError(path, f"LIME record '{lime_type}' at byte {at} declares "
                                           f"{length} data bytes but the file ends after "
                                           f"{size - data_at} (truncated)")
            if mb == in_message:
                problem = ("begins a message (MB) before the previous one ended (ME)" if mb
                           else "is outside any message (no MB flag)")
                raise InputFileError(path, f"LIME record '{lime_type}' at byte {at} {problem}")
            in_message = not me
            records.append(LimeRecord(lime_type, data_at, length, mb, me))
            at = min(data_at + length + padding(length), size)
    if in_message:
        raise InputFileError(path, "the file ends inside a LIME message (the last record has no "
                                   "ME flag): truncated or still being written")
    if not records:
        raise InputFileError(path, "empty file: no LIME record")
    return records


def read_record_data(path: str | Path, record: LimeRecord) -> bytes:
    """The data bytes of one record (without padding)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            f.seek(record.offset)
            data = f.read(record.length)
    except OSError as exc:
        raise InputFileError(path, f"cannot be read: {exc.strerror or exc}") from None
    if len(data) != record.length:
        raise InputFileError(path, f"LIME record '{record.type}' is truncated")
    return data
