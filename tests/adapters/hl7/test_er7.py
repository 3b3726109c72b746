"""The ER7 reader: delimiters, escapes, repetitions and components, decoding, errors and batch splitting."""

from __future__ import annotations

import pytest

from adapters.hl7 import er7
from adapters.hl7.er7 import DEFAULT, Delimiters, ER7Error
from tests.conftest import FIXTURES

HL7 = FIXTURES / "hl7"

ADT = (
    "MSH|^~\\&|SRC_APP|SRC_FAC|DST_APP|DST_FAC|20240101120000+0000||ADT^A01^ADT_A01|CTRL-1|P|2.5.1\r"
    "EVN|A01|20240101115955+0000\r"
    "PID|1||ID-1^^^AUTH&1.2.3&ISO^MR~ID-2^^^OTHER^SS||DOE^JANE^Q||19800101|F\r"
    "PV1|1|I|WARD^101^A\r"
)


def fixture(name: str) -> bytes:
    return (HL7 / name).read_bytes()


# -- delimiters -------------------------------------------------------------------------------


def test_default_delimiters() -> None:
    assert Delimiters("|", "^", "~", "\\", "&", None) == DEFAULT
    assert Delimiters.DEFAULT is DEFAULT
    assert DEFAULT.encoding_characters() == "^~\\&"
    assert Delimiters("|", "^", "~", "\\", "&", "#").encoding_characters() == "^~\\&#"


def test_standard_message_fields_are_numbered_the_hl7_way() -> None:
    msg = er7.parse(ADT.encode())
    assert msg.delimiters == DEFAULT
    assert [s.id for s in msg.segments] == ["MSH", "EVN", "PID", "PV1"]
    msh = msg.segments[0]
    assert msh.fields[0] == "MSH" and msh.fields[1] == "|" and msh.fields[2] == "^~\\&"
    assert msh.fields[9] == "ADT^A01^ADT_A01" and msh.fields[10] == "CTRL-1" and msh.fields[12] == "2.5.1"
    assert msg.get("MSH-1") == "|" and msg.get("MSH-2") == "^~\\&"
    assert msg.get("MSH-9") == "ADT^A01^ADT_A01"
    assert msg.get("MSH-9.1") == "ADT" and msg.get("MSH-9.2") == "A01" and msg.get("MSH-9.3") == "ADT_A01"
    assert msg.get("MSH-9.4") == "" and msg.get("MSH-30") == ""
    assert msg.field(msh, 10) == "CTRL-1" and msg.field("PID", 8) == "F" and msg.field("ZZZ", 1) == ""
    assert msg.encoding == "utf-8"
    assert msg.text == ADT.rstrip("\r")


def test_repetitions_components_and_subcomponents() -> None:
    msg = er7.parse(ADT.encode())
    pid = msg.segment("PID")
    assert pid is not None
    assert msg.repetitions(pid, 3) == ["ID-1^^^AUTH&1.2.3&ISO^MR", "ID-2^^^OTHER^SS"]
    assert msg.repetitions(pid, 2) == [] and msg.repetitions(pid, 99) == []
    assert msg.components("ID-2^^^OTHER^SS") == ["ID-2", "", "", "OTHER", "SS"]
    assert msg.subcomponents("AUTH&1.2.3&ISO") == ["AUTH", "1.2.3", "ISO"]
    assert msg.get("PID-3") == "ID-1^^^AUTH&1.2.3&ISO^MR"  # first repetition by default
    assert msg.get("PID-3[2]") == "ID-2^^^OTHER^SS"
    assert msg.get("PID-3[2].4") == "OTHER"
    assert msg.get("PID-3[3].1") == ""
    assert msg.get("PID-3.4") == "AUTH&1.2.3&ISO"
    assert (
        msg.get("PID-3.4.1") == "AUTH" and msg.get("PID-3.4.2") == "1.2.3" and msg.get("PID-3.4.3") == "ISO"
    )
    assert msg.get("PID-3.4.4") == ""
    assert msg.get("PID-5.2") == "JANE"
    assert msg.get("PID-8.1") == "F" and msg.get("PID-8.2") == "" and msg.get("PID-8[2]") == ""
    assert msg.repetitions(msg.segments[0], 2) == ["^~\\&"]  # MSH-2 never splits


def test_segment_occurrences() -> None:
    msg = er7.parse((ADT + "OBX|1|NM|A||1\rOBX|2|NM|B||2\r").encode())
    assert len(msg.segments_named("OBX")) == 2
    second = msg.segment("OBX", 2)
    assert second is not None and second.fields[3] == "B"
    assert msg.segment("OBX", 3) is None
    assert msg.get("OBX(2)-3") == "B" and msg.get("OBX[2]-5") == "2" and msg.get("OBX-5") == "1"
    assert msg.get("OBX(3)-5") == ""


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("PID", ("PID", 1, 0, 1, 0, 0)),
        ("PID(2)", ("PID", 2, 0, 1, 0, 0)),
        ("MSH-9.1", ("MSH", 1, 9, 1, 1, 0)),
        ("PID-3[2].4.1", ("PID", 1, 3, 2, 4, 1)),
        ("OBX[3]-5", ("OBX", 3, 5, 1, 0, 0)),
        ("PID(2)-11[3].7.1", ("PID", 2, 11, 3, 7, 1)),
    ],
)
def test_parse_path(path: str, parts: tuple[str, int, int, int, int, int]) -> None:
    assert er7.parse_path(path) == parts


@pytest.mark.parametrize(
    "path", ["", "PID-", "PID-0", "PID-3.0", "PID-3.1.2.3", "PID(x)", "PID-3[0]", "PID-a"]
)
def test_parse_path_rejects_malformed_paths(path: str) -> None:
    with pytest.raises(ValueError, match="bad HL7 path"):
        er7.parse_path(path)


def test_custom_delimiters_and_truncation_character() -> None:
    msg = er7.parse(fixture("adt_a01__custom_delimiters.hl7"))
    d = msg.delimiters
    assert (d.field, d.component, d.repetition, d.escape, d.subcomponent, d.truncation) == (
        "|",
        ":",
        "~",
        "\\",
        "&",
        "#",
    )
    assert d.encoding_characters() == ":~\\&#"
    assert msg.get("MSH-2") == ":~\\&#"
    assert msg.get("MSH-9.1") == "ADT" and msg.get("MSH-9.2") == "A01"
    assert msg.get("PID-5.1") == "YILMAZ" and msg.get("PID-3.4") == "NWG"
    assert msg.get("OBX-5") == "Ratio 3:1, hash # and amp & kept"


def test_non_standard_field_separator() -> None:
    text = "MSH!^~\\&!APP!FAC!!!20240101!!ORU^R01!C-9!P!2.5\rPID!1!!X1^^^A!!ROE^RICHARD\r"
    msg = er7.parse(text.encode())
    assert msg.delimiters.field == "!"
    assert msg.get("MSH-1") == "!" and msg.get("MSH-10") == "C-9" and msg.get("PID-5.2") == "RICHARD"


# -- escapes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("a\\F\\b", "a|b"),
        ("a\\S\\b", "a^b"),
        ("a\\T\\b", "a&b"),
        ("a\\R\\b", "a~b"),
        ("a\\E\\b", "a\\b"),
        ("line1\\.br\\line2", "line1\nline2"),
        ("\\X41424344\\", "ABCD"),
        ("\\X0D0A\\", "\r\n"),
        ("caf\\XC3A9\\", "café"),  # UTF-8 bytes
        ("\\XE9\\", "é"),  # not UTF-8: latin-1 keeps the byte
        ("\\H\\bold\\N\\", "\\H\\bold\\N\\"),  # formatting escapes are left alone
        ("\\Zcustom\\", "\\Zcustom\\"),
        ("\\XZZ\\", "\\XZZ\\"),  # not hex
        ("\\X123\\", "\\X123\\"),  # odd number of digits
        ("\\P\\", "\\P\\"),  # no truncation character declared
        ("trailing \\F", "trailing \\F"),  # unterminated
        ("no escapes at all", "no escapes at all"),
        ("\\\\", "\\\\"),
    ],
)
def test_unescape(raw: str, text: str) -> None:
    assert er7.unescape(raw, DEFAULT) == text


def test_unescape_truncation_character_and_hex_in_the_message_charset() -> None:
    d = Delimiters("|", "^", "~", "\\", "&", "#")
    assert er7.unescape("a\\P\\b", d) == "a#b"
    assert er7.unescape("\\XE9\\", DEFAULT, "latin-1") == "é"
    assert er7.unescape("\\XC3A9\\", DEFAULT, "latin-1") == "Ã©"


def test_escape_round_trips() -> None:
    d = Delimiters("|", "^", "~", "\\", "&", "#")
    value = "a|b^c~d\\e&f#g\rh\ni"
    escaped = er7.escape(value, d)
    assert not any(c in escaped for c in "|^~&#\r\n")
    assert er7.unescape(escaped, d) == value
    assert er7.escape("", d) == ""


def test_escape_sequences_fixture() -> None:
    msg = er7.parse(fixture("adt_a01__escape_sequences.hl7"))
    assert msg.get("PID-11.1") == "MARKET & 2ND AVE^SUITE 200"
    assert msg.get("OBX-5") == ("Pipe | caret ^ tilde ~ amp & backslash \\ end.\nSecond line ABCD hex.")
    pid = msg.segment("PID")
    assert pid is not None and "\\T\\" in pid.fields[11]  # fields stay raw


# -- decoding ---------------------------------------------------------------------------------


def test_segment_endings_are_normalised() -> None:
    cr = er7.parse(ADT.encode())
    for raw in (ADT.replace("\r", "\n"), ADT.replace("\r", "\r\n"), ADT + "\r\r\n\n", ADT.rstrip("\r")):
        msg = er7.parse(raw.encode())
        assert msg.text == cr.text
        assert [s.fields for s in msg.segments] == [s.fields for s in cr.segments]


def test_canonical_form() -> None:
    raw = ADT.encode()
    assert er7.canonical(raw) is raw
    for other in (
        ADT.replace("\r", "\n"),
        ADT.replace("\r", "\r\n"),
        ADT + "\r\r\n \n\t",
        ADT.rstrip("\r"),
        "\ufeff" + ADT,
        "\ufeff\x0b \r\n" + ADT.replace("\r", "\n") + "\n",
    ):
        assert er7.canonical(other.encode()) == raw
    # blanks after the last segment go; blanks at the end of its last field stay
    assert er7.canonical((ADT + "  ").encode()) == raw
    kept = ADT.replace("|A\r", "|A  \r").encode()
    assert er7.canonical(kept.rstrip(b"\r")) == er7.canonical(kept + b"\r\n \n") == kept
    assert er7.canonical(b"") == b"\r" and er7.canonical(b"\xef\xbb\xbf \n") == b"\r"


def test_blank_lines_and_leading_blanks_are_dropped() -> None:
    msg = er7.parse(("\x0b \r\n" + ADT.replace("EVN|", "\r\r  \rEVN|")).encode())
    assert [s.id for s in msg.segments] == ["MSH", "EVN", "PID", "PV1"]
    assert "\r\r" not in msg.text


def test_lf_endings_fixture() -> None:
    raw = fixture("adt_a01__lf_endings.hl7")
    assert b"\r" not in raw and raw.count(b"\n") == 4
    msg = er7.parse(raw)
    assert [s.id for s in msg.segments] == ["MSH", "EVN", "PID", "PV1"]
    assert msg.get("PID-5.1") == "BRENNAN"


def test_bom_fixture() -> None:
    raw = fixture("adt_a01__bom.hl7")
    assert raw.startswith(b"\xef\xbb\xbfMSH|")
    text, codec = er7.decode(raw)
    assert text.startswith("MSH|") and codec == "utf-8"
    msg = er7.parse(raw)
    assert msg.get("PID-5.1") == "ŠIMUNOVIĆ" and msg.get("MSH-18") == "UNICODE UTF-8"


def test_latin1_fixture() -> None:
    raw = fixture("adt_a01__latin1.hl7")
    assert "MÜLLER".encode("latin-1") in raw
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    msg = er7.parse(raw)
    assert msg.encoding == "latin-1"
    assert msg.get("PID-5.1") == "MÜLLER" and msg.get("PID-5.2") == "JOSÉ" and msg.get("PID-5.3") == "ÁNGEL"
    assert msg.get("MSH-18") == "8859/1"


@pytest.mark.parametrize(
    ("charset", "codec"),
    [
        ("ASCII", "ascii"),
        ("8859/1", "latin-1"),
        ("8859/2", "iso8859-2"),
        ("8859/15", "iso8859-15"),
        ("UNICODE UTF-8", "utf-8"),
        ("UNICODE", "utf-8"),
        ("unicode utf-8", "utf-8"),
        ("UTF-8", "utf-8"),
        ("ISO IR100", "latin-1"),
        (" 8859/1 ", "latin-1"),
        ("8859/1~ISO IR87", "latin-1"),  # the first repetition is the message's own
    ],
)
def test_msh18_picks_the_codec(charset: str, codec: str) -> None:
    raw = f"MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5||||||{charset}\rPID|1||X\r".encode("ascii")
    assert er7.decode(raw)[1] == codec


def test_msh18_is_read_from_the_msh_line_whatever_the_line_endings() -> None:
    # MSH ends in \n, a later segment in \r\n: the MSH line ends at the first of the two
    raw = (
        b"MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5||||||8859/2\n"
        b"EVN|A01|20240101\r\n"
        b"PID|1||X||" + "Łódź^Zofia".encode("iso8859-2") + b"\r\n"
    )
    msg = er7.parse(raw)
    assert msg.encoding == "iso8859-2"
    assert msg.get("PID-5.1") == "Łódź" and msg.get("MSH-18") == "8859/2"


def test_undeclared_or_wrong_charset_falls_back_without_losing_bytes() -> None:
    base = "MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5{}\rPID|1||X||MÜLLER\r"
    # no MSH-18, valid UTF-8
    assert er7.decode(base.format("").encode("utf-8"))[1] == "utf-8"
    # no MSH-18, not UTF-8: latin-1 keeps every byte
    text, codec = er7.decode(base.format("").encode("latin-1"))
    assert codec == "latin-1" and "MÜLLER" in text
    # declared ASCII but carries UTF-8
    text, codec = er7.decode(base.format("||||||ASCII").encode("utf-8"))
    assert codec == "utf-8" and "MÜLLER" in text
    # unknown charset name
    text, codec = er7.decode(base.format("||||||KLINGON").encode("utf-8"))
    assert codec == "utf-8" and "MÜLLER" in text


def test_z_segments_are_kept() -> None:
    msg = er7.parse(fixture("adt_a01__z_segment.hl7"))
    assert [s.id for s in msg.segments] == ["MSH", "EVN", "PID", "PV1", "ZPI"]
    assert msg.get("ZPI-2.1") == "VIP" and msg.get("ZPI-3") == "NORTHWIND FOUNDATION DONOR"


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"", "empty_message"),
        (b"  \r\n\r\n", "empty_message"),
        (b"\xef\xbb\xbf", "empty_message"),
        (b"PID|1||SECRET-ID||SECRETNAME\r", "missing_msh"),
        (b"this is not HL7 at all", "missing_msh"),
        (b"BHS|^~\\&|A|F\rPID|1||SECRET-ID||SECRETNAME\rBTS|1\r", "missing_msh"),
        (b"MSH|^~|A|F|||20240101||ADT^A01|SECRET-ID|P|2.5\rPID|1||SECRETNAME\r", "bad_encoding_characters"),
        (b"MSH|^~\\&&|A|F|||20240101||ADT^A01|C1|P|2.5\rPID|1\r", "bad_encoding_characters"),
        (b"MSH|^~\\|&|A|F|||20240101||ADT^A01|C1|P|2.5\rPID|1\r", "bad_encoding_characters"),
        (b"MSHA^~\\&A|F\rPID|1\r", "bad_encoding_characters"),
        (b"MSH|^~\\&#!|A|F|||20240101||ADT^A01|C1|P|2.5\rPID|1\r", "bad_encoding_characters"),
        (b"MSH", "truncated"),
        (b"MSH|^~", "truncated"),
        (b"MSH|^~\\&|SECRETNAME|F|||2024", "truncated"),
    ],
)
def test_unreadable_messages(raw: bytes, code: str) -> None:
    with pytest.raises(ER7Error) as info:
        er7.parse(raw)
    exc = info.value
    assert isinstance(exc, ValueError)
    assert exc.code == code
    assert exc.diagnostics and str(exc) == exc.diagnostics
    assert "SECRET" not in str(exc) and "SECRET" not in exc.location


def test_error_keeps_the_readable_header() -> None:
    with pytest.raises(ER7Error) as info:
        er7.parse(b"MSH|^~|A|F|R|RF|20240101||ADT^A01|C-77|P|2.5\rPID|1\r")
    assert info.value.header[10] == "C-77" and info.value.delimiters is None
    with pytest.raises(ER7Error) as info:
        er7.parse(b"MSH|^~\\&|APP|FAC|R|RF|2024")
    assert info.value.code == "truncated" and info.value.header[3] == "APP"
    assert info.value.delimiters == DEFAULT


def test_a_complete_msh_alone_is_a_message() -> None:
    msg = er7.parse(b"MSH|^~\\&|A|F|R|RF|20240101||ADT^A01|C1|P|2.5")
    assert len(msg.segments) == 1 and msg.get("MSH-12") == "2.5"


def test_reprs_never_show_field_values() -> None:
    msg = er7.parse(fixture("adt_a01__canary.hl7"))
    shown = repr(msg) + "".join(repr(s) for s in msg.segments)
    assert "CANARY" not in shown and "PID" in shown


# -- batches ----------------------------------------------------------------------------------


def test_single_message_is_not_a_batch() -> None:
    assert er7.split_batch(fixture("adt_a01__basic.hl7")) is None
    assert er7.split_batch(fixture("adt_a01__bom.hl7")) is None
    assert er7.split_batch(b"not hl7") is None
    assert er7.split_batch(b"") is None


def test_fhs_bhs_batch() -> None:
    raw = fixture("batch__fhs_bhs.hl7")
    batch = er7.split_batch(raw)
    assert batch is not None and batch.kind == "fhs" and batch.raw is raw
    assert len(batch.units) == 3
    for unit in batch.units:
        assert unit.startswith(b"MSH|") and unit.endswith(b"\r")
        assert b"BHS" not in unit and b"BTS" not in unit and b"FHS" not in unit
        assert unit in raw
    ids = [er7.parse(u).get("MSH-10") for u in batch.units]
    assert ids == ["NWG-BATCH-0001", "NWG-BATCH-0002", "NWG-BATCH-0003"]
    # the units are the messages' bytes exactly: header + units + trailer is the file
    start = raw.index(b"MSH|")
    end = raw.index(b"BTS|")
    assert b"".join(batch.units) == raw[start:end]


def test_bhs_batch_and_empty_batch() -> None:
    messages = [
        b"MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5\rPID|1\r",
        b"MSH|^~\\&|A|F|||20240101||ADT^A08|C2|P|2.5\rPID|2\r",
    ]
    batch = er7.split_batch(b"BHS|^~\\&|A|F\r" + b"".join(messages) + b"BTS|2\r")
    assert batch is not None and batch.kind == "bhs" and batch.units == messages
    empty = er7.split_batch(b"BHS|^~\\&|A|F\rBTS|0\r")
    assert empty is not None and empty.kind == "bhs" and empty.units == [] and empty.issues == ()
    assert batch.issues == ()


def test_an_empty_batch_holds_only_its_headers_and_trailers() -> None:
    """``BTS|0`` is a batch of no message; a header followed by other segments is no batch but one
    malformed message (read as such, it has no MSH)."""
    empty = er7.split_batch(b"FHS|^~\\&|A|F\r\nBHS|^~\\&|A|F\r\n\r\nBTS|0\r\nFTS|1\r\n")
    assert empty is not None and empty.kind == "fhs" and empty.units == [] and empty.issues == ()
    assert er7.split_batch(b"FHS|^~\\&|A|F\rBHS|^~\\&|A|F\rPID|1||X\rBTS|0\rFTS|1\r") is None


def test_batch_counts_trailers_and_stray_segments_are_warnings() -> None:
    msh = b"MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5\rPID|1\r"
    counted = er7.split_batch(b"FHS|^~\\&|A|F\rBHS|^~\\&|A|F\r" + msh + b"BTS|3\rFTS|2\r")
    assert counted is not None and counted.units == [msh]
    assert [(i.severity, i.code, i.location) for i in counted.issues] == [
        ("warning", "batch_count_mismatch", "BTS-1"),
        ("warning", "batch_count_mismatch", "FTS-1"),
    ]
    assert counted.issues[0].diagnostics == "BTS-1 declares 3 messages; 1 arrived."
    cut = er7.split_batch(b"FHS|^~\\&|A|F\rBHS|^~\\&|A|F\r" + msh)  # cut short: no BTS, no FTS
    assert cut is not None and cut.units == [msh]
    assert [(i.code, i.location) for i in cut.issues] == [
        ("batch_trailer_missing", "BTS"),
        ("batch_trailer_missing", "FTS"),
    ]
    stray = er7.split_batch(b"BHS|^~\\&|A|F\rPID|1||X\r" + msh + b"BTS|1\r")
    assert stray is not None and stray.units == [msh]
    assert [(i.code, i.location) for i in stray.issues] == [("unexpected_segment", "BHS")]
    assert "X" not in stray.issues[0].diagnostics
    # a custom field separator; a count that is not a number is not checked
    custom = er7.split_batch(b"BHS#^~\\&#A#F\rMSH#^~\\&#A#F####ADT^A01#C1#P#2.5\rBTS#2\r")
    assert custom is not None and [i.location for i in custom.issues] == ["BTS-1"]
    assert er7.split_batch(b"BHS|^~\\&|A|F\r" + msh + b"BTS|one\r").issues == ()  # type: ignore[union-attr]


def test_a_header_id_without_a_field_separator_starts_no_batch() -> None:
    """``BHS`` or ``FHS`` alone (or followed by a line end or a blank) declares no delimiters: it is no
    batch, and is read as one message, which then fails with an ER7 error rather than in the splitter."""
    for raw in (
        b"BHS",
        b"FHS",
        b"  BHS",
        b"\xef\xbb\xbfFHS",
        b"BHS\r",
        b"BHS \rBTS|0\r",
        b"FHS\r\nMSH|^~\\&|A\r",
    ):
        assert er7.batch_lines(raw) is None, raw
        assert er7.split_batch(raw) is None, raw
        assert er7.batch_outline(raw) is None, raw
        with pytest.raises(ER7Error):
            er7.parse(raw)
    assert er7.split_batch(b"MSH\rMSH\r") is None


def test_a_batch_count_too_long_to_read_as_a_number_is_a_mismatch() -> None:
    """BTS-1 and FTS-1 are counts; a run of digits longer than any count (and than ``int`` reads) is a
    mismatch, and the warning says how long it was rather than quoting it."""
    msh = b"MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5\rPID|1\r"
    huge = b"9" * 5000
    batch = er7.split_batch(b"FHS|^~\\&\rBHS|^~\\&\r" + msh + b"BTS|" + huge + b"\rFTS|" + huge + b"\r")
    assert batch is not None and batch.units == [msh]
    assert [(i.code, i.location, i.diagnostics) for i in batch.issues] == [
        ("batch_count_mismatch", "BTS-1", "BTS-1 declares a number of messages 5000 digits long; 1 arrived."),
        ("batch_count_mismatch", "FTS-1", "FTS-1 declares a number of batches 5000 digits long; 1 arrived."),
    ]
    padded = er7.split_batch(b"BHS|^~\\&\r" + msh + b"BTS|" + b"0" * 5000 + b"1\r")  # leading zeros: 1
    assert padded is not None and padded.issues == ()


def test_multi_msh_file() -> None:
    raw = fixture("batch__multi_msh.hl7")
    batch = er7.split_batch(raw)
    assert batch is not None and batch.kind == "multi"
    assert b"".join(batch.units) == raw
    assert [er7.parse(u).get("MSH-10") for u in batch.units] == [
        "NWG-MULTI-0001",
        "NWG-MULTI-0002",
        "NWG-MULTI-0003",
    ]


def test_msh_as_a_field_value_never_splits() -> None:
    raw = fixture("batch__multi_msh.hl7")
    batch = er7.split_batch(raw)
    assert batch is not None
    second = batch.units[1]
    assert b"|MSH\r" in second  # PID-30 of the second message holds the literal value MSH
    single = b"MSH|^~\\&|A|F|||20240101||ADT^A04|C1|P|2.3\rPID|1||X||MSH|MSH\rPV1|1|O|||||||||||||||||||||||||||||||||||MSH\r"
    assert er7.split_batch(single) is None
    assert er7.split_batch(single.replace(b"\r", b"\n")) is None


def test_files_joined_together_split_at_each_bom_or_blanks_before_msh() -> None:
    def file(control_id: str, lead: bytes = er7.BOM) -> bytes:
        return lead + ADT.replace("CTRL-1", control_id).replace("\r", "\r\n").encode()

    first, second = file("CAT1"), file("CAT2")
    raw = first + second
    batch = er7.split_batch(raw)
    assert batch is not None and batch.kind == "multi"
    assert batch.units == [first[3:], second]  # the second keeps its BOM: its bytes as received
    assert [er7.parse(u).get("MSH-10") for u in batch.units] == ["CAT1", "CAT2"]
    assert [[s.id for s in er7.parse(u).segments] for u in batch.units] == [["MSH", "EVN", "PID", "PV1"]] * 2
    for lead in (b"  ", b"\t", er7.BOM + b" "):
        batch = er7.split_batch(first + file("CAT2", lead) + file("CAT3", lead).replace(b"\r\n", b"\n"))
        assert batch is not None, lead
        assert [er7.parse(u).get("MSH-10") for u in batch.units] == ["CAT1", "CAT2", "CAT3"], lead
    assert er7.split_batch(first) is None


def test_batches_with_other_line_endings_keep_their_bytes() -> None:
    lf = fixture("batch__fhs_bhs.hl7").replace(b"\r", b"\n")
    batch = er7.split_batch(b"\xef\xbb\xbf" + lf)
    assert batch is not None and batch.kind == "fhs" and len(batch.units) == 3
    assert all(u.startswith(b"MSH|") and u.endswith(b"\n") and b"\r" not in u for u in batch.units)
    crlf = fixture("batch__multi_msh.hl7").replace(b"\r", b"\r\n")
    batch = er7.split_batch(crlf)
    assert batch is not None and b"".join(batch.units) == crlf


def test_batch_warnings_name_the_batch_they_are_about() -> None:
    """1 for the first BHS, 2 for the next, 0 for the file: a batch closed by the next BHS instead of a BTS
    lacks its trailer, and a count is checked against its own batch (the batch's outline holds its
    messages)."""
    msh = b"MSH|^~\\&|A|F|||20240101||ADT^A01|C1|P|2.5\rPID|1\r"
    raw = b"FHS|^~\\&\rBHS|^~\\&\r" + msh + b"BHS|^~\\&\r" + msh + msh + b"BTS|3\rFTS|2\r"
    outline = er7.batch_outline(raw)
    assert outline is not None
    assert [(at, i.code, i.location) for at, i in outline.issues] == [
        (1, "batch_trailer_missing", "BTS"),
        (2, "batch_count_mismatch", "BTS-1"),
    ]
    assert [(b.ordinal, b.messages) for b in outline.batches] == [(1, [0]), (2, [1, 2])]
    assert er7.batch_outline(msh + msh) is None  # bare MSH messages: no batch structure to check
    # messages outside any BHS: runs of their own, in the batch of none (ordinal 0, no header)
    loose = er7.batch_outline(b"FHS|^~\\&\r" + msh + b"BHS|^~\\&\r" + msh + b"BTS|1\r" + msh + b"FTS|1\r")
    assert loose is not None and loose.issues == []
    assert [(b.ordinal, b.header, b.messages) for b in loose.batches] == [
        (0, None, [0]),
        (1, b"BHS|^~\\&", [1]),
        (0, None, [2]),
    ]
