"""ILDG/LIME and NERSC gauge files (docs/lattice-formats.md): round trips, what reading verifies,
the byte layout against an independent implementation written here from the format documents,
and the export of sample files."""

import re
import struct
import zlib

import numpy as np
import pytest
import torch

from hpcflow import InputFileError
from hpcflow.io.gauge_conventions import write_file
from hpcflow.io.lattice_formats import (
    detect_format,
    export_samples,
    read_configuration,
    write_configuration,
)
from hpcflow.io.samples import SampleHeader, ShardWriter, write_master
from hpcflow.lattice.groups import get_group
from hpcflow.lattice.observables import average_plaquette

# hpcflow lattice_shape = (L_t, L_x, L_y, L_z); unequal extents catch axis mix-ups.
SHAPES = [(2, 2, 2, 4), (4, 2, 2, 2)]
TINY = (2, 3, 4, 5)
FORMATS = ["ildg", "nersc"]


def random_links(shape, seed=0, group="SU3"):
    """One Haar-random configuration ``[4, *shape, Nc, Nc]`` complex128 (numpy)."""
    gen = torch.Generator().manual_seed(seed)
    return get_group(group).random((4, *shape), generator=gen).numpy()


def plaquette_of(links, group="SU3"):
    return float(average_plaquette(torch.from_numpy(links)[None], get_group(group))[0])


# ------------------------------------------------------- independent reference implementation
# Written from the documents (LIME: c-lime's header layout; ILDG binary format; QIO's SciDAC
# checksum; NERSC archive format), without the module's helpers.
LIME_HEADER = ">IHHQ128s"  # magic, version, flags (MB bit 15, ME bit 14), length, type


def lime_records(raw):
    """``[(type, data, mb, me)]`` of a LIME file, checking magic, version and zero padding."""
    out, at = [], 0
    while at < len(raw):
        magic, version, flags, length, name = struct.unpack_from(LIME_HEADER, raw, at)
        assert magic == 0x456789AB and version == 1 and flags & 0x3FFF == 0
        data = raw[at + 144:at + 144 + length]
        pad = -length % 8
        assert raw[at + 144 + length:at + 144 + length + pad] == bytes(pad)
        out.append((name.rstrip(b"\0").decode(), data, bool(flags & 0x8000),
                    bool(flags & 0x4000)))
        at += 144 + length + pad
    return out


def lime_pack(records):
    """Inverse of :func:`lime_records`."""
    out = b""
    for name, data, mb, me in records:
        flags = (0x8000 if mb else 0) | (0x4000 if me else 0)
        out += struct.pack(LIME_HEADER, 0x456789AB, 1, flags, len(data), name.encode())
        out += data + bytes(-len(data) % 8)
    return out


def reference_sites(links, real="d", rows=None):
    """Per-site bytes in file order: t slowest, then z, y, x; at each site the links in the
    directions x, y, z, t (hpcflow mu = 1, 2, 3, 0), rows, columns, (re, im), big-endian."""
    _, lt, lx, ly, lz, nc, _ = links.shape
    rows = nc if rows is None else rows
    sites = []
    for t in range(lt):
        for z in range(lz):
            for y in range(ly):
                for x in range(lx):
                    site = b""
                    for mu in (1, 2, 3, 0):
                        for a in range(rows):
                            for b in range(nc):
                                u = links[mu, t, x, y, z, a, b]
                                site += struct.pack(f">{real}{real}", u.real, u.imag)
                    sites.append(site)
    return sites


def reference_scidac(sites):
    """QIO's checksum: crc32 per site, rotated left by rank % 29 (suma) and rank % 31 (sumb)."""
    suma = sumb = 0
    for rank, site in enumerate(sites):
        crc = zlib.crc32(site)
        ra, rb = rank % 29, rank % 31
        suma ^= ((crc << ra) | (crc >> (32 - ra))) & 0xFFFFFFFF
        sumb ^= ((crc << rb) | (crc >> (32 - rb))) & 0xFFFFFFFF
    return suma, sumb


def reference_nersc_checksum(data):
    return sum(struct.unpack(f">{len(data) // 4}I", data)) % 2**32


def xml_field(data, tag):
    return re.search(rf"<{tag}>\s*([^<]*?)\s*</{tag}>", data.decode()).group(1)


def nersc_header(raw):
    head, _, data = raw.partition(b"END_HEADER\n")
    fields = dict(line.split(" = ", 1) for line in head.decode().splitlines()[1:])
    return fields, data


def replace_header_value(raw, key, value):
    fields, data = nersc_header(raw)
    head, _, _ = raw.partition(b"END_HEADER\n")
    new = re.sub(rf"^{key} = .*$", f"{key} = {value}", head.decode(), flags=re.M)
    return new.encode() + b"END_HEADER\n" + data


# ---------------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("precision", ["double", "single"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_round_trip_is_bit_exact(tmp_path, fmt, precision, shape):
    links = random_links(shape, seed=sum(shape))
    path = write_configuration(tmp_path / f"cfg.{fmt}", torch.from_numpy(links), fmt,
                               group="SU3", precision=precision, beta=5.7)
    assert detect_format(path) == fmt
    got, meta = read_configuration(path)
    expected = links if precision == "double" else links.astype(np.complex64)
    assert got.dtype == np.complex128 and got.shape == links.shape
    np.testing.assert_array_equal(got, expected.astype(np.complex128))
    assert (meta["format"], meta["group"], meta["precision"]) == (fmt, "SU3", precision)
    assert meta["lattice_shape"] == shape
    # (6) the plaquette of what was read is hpcflow's plaquette of the original
    tol = 1e-13 if precision == "double" else 1e-6
    assert meta["plaquette"] == pytest.approx(plaquette_of(links), abs=tol)
    assert meta["plaquette"] == pytest.approx(plaquette_of(got), abs=1e-15)
    if fmt == "ildg":
        assert meta["beta"] == 5.7 and meta["checksum"] is not None
    else:
        assert meta["header"]["ENSEMBLE_LABEL"] == "hpcflow-SU3-beta5.7"


@pytest.mark.parametrize("group", ["SU3", "SU2"])
@pytest.mark.parametrize("precision", ["double", "single"])
def test_nersc_compact_storage_rebuilds_the_last_row(tmp_path, group, precision):
    links = random_links(SHAPES[0], seed=3, group=group)
    path = write_configuration(tmp_path / "cfg", links, "nersc", group=group,
                               precision=precision, compact=True)
    got, meta = read_configuration(path)
    nc = links.shape[-1]
    assert meta["datatype"] == f"4D_SU{nc}_GAUGE" and meta["group"] == group
    stored = links if precision == "double" else links.astype(np.complex64)
    np.testing.assert_array_equal(got[..., :-1, :], stored[..., :-1, :].astype(np.complex128))
    np.testing.assert_allclose(got, links, atol=1e-14 if precision == "double" else 1e-6)
    assert meta["plaquette"] == pytest.approx(plaquette_of(got, group), abs=1e-15)


@pytest.mark.parametrize("group", ["SU2", "SU4"])
def test_nersc_other_su_n_full_storage(tmp_path, group):
    """Grid's data type names 4D_SU<N>_GAUGE_<N>x<N>."""
    links = random_links(SHAPES[1], seed=4, group=group)
    path = write_configuration(tmp_path / "cfg", links, "nersc", group=group)
    got, meta = read_configuration(path)
    n = group[2:]
    assert meta["datatype"] == f"4D_SU{n}_GAUGE_{n}x{n}" and meta["group"] == group
    np.testing.assert_array_equal(got, links)
    if group == "SU4":  # no row reconstruction beyond SU(3)
        with pytest.raises(ValueError, match="compact .* SU\\(2\\) and SU\\(3\\) only"):
            write_configuration(tmp_path / "c", links, "nersc", group=group, compact=True)


def test_ildg_lfn_and_records(tmp_path):
    links = random_links(SHAPES[0])
    path = write_configuration(tmp_path / "cfg.lime", links, "ildg", group="SU3",
                               lfn="lfn://hpcflow/test/cfg_000001")
    _, meta = read_configuration(path, "ildg")
    assert meta["lfn"] == "lfn://hpcflow/test/cfg_000001"
    assert meta["records"] == ["scidac-private-file-xml", "scidac-file-xml",
                               "scidac-private-record-xml", "scidac-record-xml", "ildg-format",
                               "ildg-data-lfn", "ildg-binary-data", "scidac-checksum"]


# --------------------------------------------------------------------- what is verified on read
def test_nersc_header_plaquette_and_checksum_are_verified(tmp_path):
    links = random_links(SHAPES[0], seed=1)
    path = write_configuration(tmp_path / "cfg", links, "nersc", group="SU3")
    fields, data = nersc_header(path.read_bytes())
    assert float(fields["PLAQUETTE"]) == pytest.approx(plaquette_of(links), abs=1e-15)
    trace = np.trace(links, axis1=-2, axis2=-1).real.mean() / 3
    assert float(fields["LINK_TRACE"]) == pytest.approx(trace, abs=1e-15)
    assert int(fields["CHECKSUM"], 16) == reference_nersc_checksum(data)

    for key, value in (("PLAQUETTE", float(fields["PLAQUETTE"]) + 1e-4),
                       ("LINK_TRACE", float(fields["LINK_TRACE"]) - 1e-4)):
        bad = tmp_path / f"bad_{key}"
        bad.write_bytes(replace_header_value(path.read_bytes(), key, f"{value:.16f}"))
        with pytest.raises(InputFileError, match=f"{key} in the header is") as exc:
            read_configuration(bad)
        assert str(bad) in str(exc.value)
    # A value printed with few digits (as some writers do) is accepted to its last digit.
    short = tmp_path / "short"
    short.write_bytes(replace_header_value(path.read_bytes(), "PLAQUETTE",
                                           f"{float(fields['PLAQUETTE']):.7f}"))
    read_configuration(short)


def test_ildg_record_plaquette_is_verified(tmp_path):
    links = random_links(SHAPES[1], seed=2)
    path = write_configuration(tmp_path / "cfg.lime", links, "ildg", group="SU3")
    records = lime_records(path.read_bytes())
    names = [r[0] for r in records]
    rec = records[names.index("scidac-record-xml")]
    assert float(xml_field(rec[1], "plaq")) == pytest.approx(plaquette_of(links), abs=1e-15)
    text = rec[1].decode()
    plaq = xml_field(rec[1], "plaq")
    wrong = text.replace(f"<plaq>{plaq}</plaq>", f"<plaq>{float(plaq) + 1e-3!r}</plaq>")
    records[names.index("scidac-record-xml")] = (rec[0], wrong.encode(), rec[2], rec[3])
    bad = tmp_path / "bad.lime"
    bad.write_bytes(lime_pack(records))
    with pytest.raises(InputFileError, match="'scidac-record-xml' field <plaq>"):
        read_configuration(bad)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_corrupted_byte_is_refused(tmp_path, fmt):
    links = random_links(SHAPES[0], seed=5)
    path = write_configuration(tmp_path / "cfg", links, fmt, group="SU3")
    raw = bytearray(path.read_bytes())
    if fmt == "ildg":
        at = raw.index(b"ildg-binary-data") - 16 + 144 + 1000  # a byte inside the data
        message = "'scidac-checksum' field <suma> is .* but the 'ildg-binary-data' data gives"
    else:
        at = raw.index(b"END_HEADER\n") + 11 + 1000
        message = "CHECKSUM in the header is .* but the data sums to"
    raw[at] ^= 0x10
    bad = tmp_path / "bad"
    bad.write_bytes(bytes(raw))
    with pytest.raises(InputFileError, match=message) as exc:
        read_configuration(bad, fmt)
    assert str(bad) in str(exc.value)


def test_a_wrong_checksum_field_is_refused(tmp_path):
    links = random_links(SHAPES[1], seed=6)
    # ILDG: suma, then sumb, off by one
    path = write_configuration(tmp_path / "cfg.lime", links, "ildg", group="SU3")
    records = lime_records(path.read_bytes())
    name, data, mb, me = records[-1]
    assert name == "scidac-checksum"
    for tag in ("suma", "sumb"):
        value = xml_field(data, tag)
        wrong = data.replace(f"<{tag}>{value}<".encode(),
                             f"<{tag}>{(int(value, 16) + 1) % 2**32:x}<".encode())
        bad = tmp_path / f"bad_{tag}.lime"
        bad.write_bytes(lime_pack([*records[:-1], (name, wrong, mb, me)]))
        with pytest.raises(InputFileError, match=f"'scidac-checksum' field <{tag}>") as exc:
            read_configuration(bad)
        assert str(bad) in str(exc.value)
    # ... and a missing checksum record (the message then ends with the binary data)
    records[-2] = (*records[-2][:3], True)
    bad = tmp_path / "no_checksum.lime"
    bad.write_bytes(lime_pack(records[:-1]))
    with pytest.raises(InputFileError, match="no 'scidac-checksum' record"):
        read_configuration(bad)
    # NERSC: CHECKSUM
    path = write_configuration(tmp_path / "cfg.nersc", links, "nersc", group="SU3")
    fields, _ = nersc_header(path.read_bytes())
    bad = tmp_path / "bad.nersc"
    bad.write_bytes(replace_header_value(path.read_bytes(), "CHECKSUM",
                                         f"{(int(fields['CHECKSUM'], 16) ^ 1):x}"))
    with pytest.raises(InputFileError, match="CHECKSUM in the header is") as exc:
        read_configuration(bad)
    assert str(bad) in str(exc.value)


def test_inconsistent_or_truncated_files_are_refused(tmp_path):
    links = random_links(SHAPES[0], seed=7)
    ildg_path = write_configuration(tmp_path / "cfg.lime", links, "ildg", group="SU3")
    nersc_path = write_configuration(tmp_path / "cfg.nersc", links, "nersc", group="SU3")
    raw = ildg_path.read_bytes()

    def refused(data, match, name="bad"):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(InputFileError, match=match):
            read_configuration(bad)

    refused(raw[:-300], "truncated|ends inside a LIME message")
    records = lime_records(raw)
    cut = len(lime_pack(records[:-1]))  # everything up to the checksum record: message open
    refused(raw[:cut], "ends inside a LIME message")
    for tag, value, match in (("lx", "3", "'ildg-binary-data' holds .* bytes but 'ildg-format'"),
                              ("field", "su2gauge", "<field> is 'su2gauge'"),
                              ("precision", "16", "<precision> is 16")):
        i = [r[0] for r in records].index("ildg-format")
        fmt = records[i][1].decode()
        fmt = re.sub(rf"<{tag}>[^<]*</{tag}>", f"<{tag}>{value}</{tag}>", fmt)
        changed = list(records)
        changed[i] = (records[i][0], fmt.encode(), *records[i][2:])
        refused(lime_pack(changed), match)
    i = [r[0] for r in records].index("scidac-private-file-xml")
    changed = list(records)
    changed[i] = (records[i][0], records[i][1].replace(b"<dims>2 2 4 2 ", b"<dims>2 2 4 3 "),
                  *records[i][2:])
    refused(lime_pack(changed), "'scidac-private-file-xml' field <dims>")

    raw = nersc_path.read_bytes()
    refused(raw[:-8], "binary data after END_HEADER has")
    refused(replace_header_value(raw, "DIMENSION_4", "3"), "DIMENSION_1..4 = 2 2 4 3")
    refused(replace_header_value(raw, "DATATYPE", "4D_U1_GAUGE"), "DATATYPE in the header")
    refused(replace_header_value(raw, "FLOATING_POINT", "IEEE16"), "FLOATING_POINT")
    refused(replace_header_value(raw, "BOUNDARY_2", "OPEN"), "BOUNDARY_2")
    refused(raw.replace(b"PLAQUETTE", b"PLAQUETTX"), "header lacks PLAQUETTE")
    refused(b"garbage" * 10, "neither an ILDG/LIME file")


def test_nersc_little_endian_files_are_read(tmp_path):
    """A little-endian file holds the same numbers; the checksum is the same number."""
    links = random_links(SHAPES[1], seed=8)
    path = write_configuration(tmp_path / "big", links, "nersc", group="SU3")
    fields, data = nersc_header(path.read_bytes())
    little = np.frombuffer(data, ">f8").astype("<f8").tobytes()
    for fp in ("IEEE64LITTLE", "IEEE64"):  # plain IEEE64: the byte order the checksum fits
        raw = replace_header_value(path.read_bytes(), "FLOATING_POINT", fp)
        bad = tmp_path / fp
        bad.write_bytes(raw.partition(b"END_HEADER\n")[0] + b"END_HEADER\n" + little)
        got, meta = read_configuration(bad)
        np.testing.assert_array_equal(got, links)
        assert meta["floating_point"] == "IEEE64LITTLE"


def test_adjoint_convention_fails_the_plaquette_check(tmp_path):
    """Storing U^dagger instead of U (the other link convention) keeps the checksum valid but
    changes the plaquette: the header check tells the conventions apart."""
    links = random_links(SHAPES[0], seed=9)
    path = write_configuration(tmp_path / "cfg", links, "nersc", group="SU3")
    adjoint = np.conj(np.swapaxes(links, -1, -2))
    data = b"".join(reference_sites(adjoint))
    head = replace_header_value(path.read_bytes(), "CHECKSUM",
                                f"{reference_nersc_checksum(data):x}").partition(b"END_HEADER")
    bad = tmp_path / "adjoint"
    bad.write_bytes(head[0] + b"END_HEADER\n" + data)
    with pytest.raises(InputFileError, match="PLAQUETTE in the header"):
        read_configuration(bad)


# --------------------------------------------------------------------------------- byte layout
@pytest.mark.parametrize("precision,real", [("double", "d"), ("single", "f")])
def test_ildg_byte_layout_matches_the_documents(tmp_path, precision, real):
    links = random_links(TINY, seed=10)
    path = write_configuration(tmp_path / "cfg.lime", links, "ildg", group="SU3",
                               precision=precision)
    records = lime_records(path.read_bytes())
    assert [(r[0], r[2], r[3]) for r in records] == [
        ("scidac-private-file-xml", True, False), ("scidac-file-xml", False, True),
        ("scidac-private-record-xml", True, False), ("scidac-record-xml", False, False),
        ("ildg-format", False, False), ("ildg-binary-data", False, False),
        ("scidac-checksum", False, True)]
    data = {r[0]: r[1] for r in records}
    lt, lx, ly, lz = TINY
    fmt = data["ildg-format"]
    assert xml_field(fmt, "field") == "su3gauge"
    assert xml_field(fmt, "precision") == ("64" if precision == "double" else "32")
    assert [int(xml_field(fmt, k)) for k in ("lx", "ly", "lz", "lt")] == [lx, ly, lz, lt]
    assert xml_field(data["scidac-private-file-xml"], "dims").split() == \
        [str(n) for n in (lx, ly, lz, lt)]
    private = data["scidac-private-record-xml"]
    assert xml_field(private, "typesize") == ("144" if precision == "double" else "72")
    assert xml_field(private, "datacount") == "4"

    sites = reference_sites(links, real)
    assert data["ildg-binary-data"] == b"".join(sites)
    suma, sumb = reference_scidac(sites)
    assert int(xml_field(data["scidac-checksum"], "suma"), 16) == suma
    assert int(xml_field(data["scidac-checksum"], "sumb"), 16) == sumb


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("precision,real", [("double", "d"), ("single", "f")])
def test_nersc_byte_layout_matches_the_documents(tmp_path, precision, real, compact):
    links = random_links(TINY, seed=11)
    path = write_configuration(tmp_path / "cfg", links, "nersc", group="SU3",
                               precision=precision, compact=compact)
    fields, data = nersc_header(path.read_bytes())
    lt, lx, ly, lz = TINY
    assert [int(fields[f"DIMENSION_{i}"]) for i in (1, 2, 3, 4)] == [lx, ly, lz, lt]
    assert fields["DATATYPE"] == ("4D_SU3_GAUGE" if compact else "4D_SU3_GAUGE_3x3")
    assert fields["FLOATING_POINT"] == ("IEEE64BIG" if precision == "double" else "IEEE32BIG")
    assert all(fields[f"BOUNDARY_{i}"] == "PERIODIC" for i in (1, 2, 3, 4))
    assert data == b"".join(reference_sites(links, real, rows=2 if compact else 3))
    assert int(fields["CHECKSUM"], 16) == reference_nersc_checksum(data)
    tol = 1e-15 if precision == "double" else 1e-6
    assert float(fields["PLAQUETTE"]) == pytest.approx(plaquette_of(links), abs=tol)


# ------------------------------------------------------------------------------------ refusals
def test_groups_and_shapes_the_formats_cannot_hold(tmp_path):
    su2 = random_links(SHAPES[0], group="SU2")
    with pytest.raises(ValueError, match="ILDG files hold SU\\(3\\) only.*group SU2"):
        write_configuration(tmp_path / "a", su2, "ildg", group="SU2")
    u1 = get_group("U1").random((4, *SHAPES[0])).numpy()
    for fmt in FORMATS:
        with pytest.raises(ValueError, match="U1"):
            write_configuration(tmp_path / "a", u1, fmt, group="U1")
    with pytest.raises(ValueError, match="4D gauge fields"):
        write_configuration(tmp_path / "a", random_links((2, 2, 2))[:3], "nersc", group="SU3")
    with pytest.raises(ValueError, match="without a batch axis"):
        write_configuration(tmp_path / "a", random_links(SHAPES[0])[None], "ildg", group="SU3")
    with pytest.raises(ValueError, match="not SU\\(3\\) matrices"):
        write_configuration(tmp_path / "a", 2 * random_links(SHAPES[0]), "ildg", group="SU3")
    assert not list(tmp_path.iterdir())


def test_an_interrupted_write_leaves_no_file(tmp_path):
    def chunks():
        yield b"BEGIN_HEADER\n"
        raise KeyboardInterrupt("killed while writing")

    with pytest.raises(KeyboardInterrupt):
        write_file(tmp_path / "cfg_000000.nersc", chunks())
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------- export
def make_sample_file(directory, n=5):
    """A Markov chain of ``n`` SU(3) states with rejections: state after step i."""
    header = SampleHeader(group="SU3", lattice_shape=SHAPES[0], beta=5.7, sampler="hmc",
                          checkpoint_step=-1)
    gen = torch.Generator().manual_seed(12)
    links = get_group("SU3").random((n, 4, *SHAPES[0]), generator=gen).numpy()
    state = np.array([0, 0, 2, 3, 3])[:n]
    with ShardWriter(directory, header) as w:
        w.append({"links": links, "log_q": np.full(n, np.nan), "action": np.zeros(n),
                  "log_weight": np.full(n, np.nan), "mcmc_state": state,
                  "accepted": state == np.arange(n)})
    write_master(directory, 1)
    return links, state


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_samples_writes_one_file_per_configuration(tmp_path, fmt):
    links, state = make_sample_file(tmp_path / "samples")
    out = tmp_path / "out"
    paths = export_samples(tmp_path / "samples", fmt, out, start=1, step=2)
    suffix = ".lime" if fmt == "ildg" else ".nersc"
    assert [p.name for p in paths] == [f"cfg_000001{suffix}", f"cfg_000003{suffix}"]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]  # no temporaries
    for p, i in zip(paths, (1, 3), strict=True):
        got, meta = read_configuration(p)
        np.testing.assert_array_equal(got, links[state[i]])
        assert meta["plaquette"] == pytest.approx(plaquette_of(links[state[i]]), abs=1e-13)
        if fmt == "nersc":
            assert meta["header"]["SEQUENCE_NUMBER"] == str(i)
        else:
            assert meta["beta"] == 5.7
    proposals = export_samples(tmp_path / "samples" / "samples.h5", fmt, tmp_path / "prop",
                               start=1, stop=3, chain=False, precision="single")
    assert [p.name for p in proposals] == [f"cfg_000001{suffix}", f"cfg_000002{suffix}"]
    for p, i in zip(proposals, (1, 2), strict=True):
        got, meta = read_configuration(p)
        assert meta["precision"] == "single"
        np.testing.assert_array_equal(got, links[i].astype(np.complex64))
