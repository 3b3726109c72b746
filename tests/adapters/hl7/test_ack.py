"""ACK building and reading: addressing, modes, ERR segments with HL7 table 0357 codes, and no payload echo."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from importlib import resources

import pytest

from adapters.hl7 import ack, er7, structure
from adapters.hl7.adapter import HL7Adapter
from gateway.adapter import Issue, Outcome, OutcomeKind, ParseError
from gateway.envelope import Receipt
from tests.conftest import FIXTURES

HL7 = FIXTURES / "hl7"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def headers_of(name: str) -> dict[str, str]:
    return dict(HL7Adapter().parse((HL7 / name).read_bytes(), Receipt("test")).headers)


def build(name: str, code: str, issues: list[Issue] | None = None, **override: str) -> er7.Message:
    headers = headers_of(name) | override
    return er7.parse(ack.build_ack(code, headers, issues or [], control_id="ACK-1", now=NOW))


def test_an_ack_built_now_is_stamped_with_the_current_utc_second() -> None:
    headers = headers_of("adt_a01__basic.hl7")
    stamps = []
    for _ in range(3):  # the stamp is formatted once per second: later ACKs of that second reuse it
        before = datetime.now(UTC).replace(microsecond=0)
        stamp = er7.parse(ack.build_ack("AA", headers)).get("MSH-7")
        after = datetime.now(UTC)
        assert stamp.endswith("+0000")
        assert before <= datetime.strptime(stamp[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC) <= after
        stamps.append(stamp)
    assert stamps == sorted(stamps)


def test_positive_ack_addressing() -> None:
    msg = build("adt_a01__basic.hl7", "AA")
    assert msg.get("MSA-1") == "AA" and msg.get("MSA-2") == "NWG-ADT01-0001"
    # sending and receiving application/facility swapped
    assert msg.get("MSH-3") == "GW_INBOUND" and msg.get("MSH-4") == "GATEWAY"
    assert msg.get("MSH-5") == "NW_ADT" and msg.get("MSH-6") == "NORTHWIND_GEN"
    assert msg.get("MSH-7") == "20240506070809+0000"
    assert msg.get("MSH-9") == "ACK^A01^ACK"
    assert msg.get("MSH-10") == "ACK-1"
    assert msg.get("MSH-11") == "P" and msg.get("MSH-12") == "2.5.1"
    assert msg.segments_named("ERR") == []
    assert [s.id for s in msg.segments] == ["MSH", "MSA"]


def test_ack_bytes_are_cr_terminated_segments() -> None:
    body = ack.build_ack("AA", headers_of("adt_a01__basic.hl7"))
    assert body.endswith(b"\r") and b"\n" not in body
    assert body.count(b"\r") == 2


def test_a_fresh_control_id_each_time() -> None:
    headers = headers_of("adt_a01__basic.hl7")
    ids = {er7.parse(ack.build_ack("AA", headers)).get("MSH-10") for _ in range(20)}
    assert len(ids) == 20 and all(0 < len(i) <= 20 for i in ids)
    assert "NWG-ADT01-0001" not in ids


def test_version_and_trigger_are_kept() -> None:
    assert build("adt_a08__update.hl7", "AA").get("MSH-12") == "2.4"
    assert build("adt_a08__update.hl7", "AA").get("MSH-9") == "ACK^A08^ACK"
    # v2.3 had no message-structure component in MSH-9
    assert build("adt_a04__register.hl7", "AA").get("MSH-9") == "ACK^A04"
    assert build("siu_s12__appointment.hl7", "AA").get("MSH-9") == "ACK^S12^ACK"


def test_same_delimiters_as_the_inbound_message() -> None:
    body = ack.build_ack("AA", headers_of("adt_a01__custom_delimiters.hl7"), now=NOW)
    assert body.startswith(b"MSH|:~\\&#|GW_INBOUND|")
    msg = er7.parse(body)
    assert msg.get("MSH-9") == "ACK:A01:ACK" and msg.get("MSA-2") == "NWG-ADT01-DELIM-0001"


def test_defaults_when_the_inbound_was_unreadable() -> None:
    msg = er7.parse(ack.build_ack("AE", {}, [Issue("fatal", "missing_msh", "MSH", "No MSH segment.")]))
    assert msg.delimiters == er7.DEFAULT
    assert msg.get("MSA-1") == "AE" and msg.get("MSA-2") == ""
    assert msg.get("MSH-12") == ack.DEFAULT_VERSION and msg.get("MSH-11") == "P"
    assert msg.get("MSH-9") == "ACK^^ACK"
    assert msg.get("ERR-3.1") == "100"
    # salvaged but unusable encoding characters fall back to the defaults too
    body = ack.build_ack("AE", {"encoding_characters": "|^~", "control_id": "C-1"})
    assert body.startswith(b"MSH|^~\\&|") and er7.parse(body).get("MSA-2") == "C-1"


def test_header_values_are_escaped_in_the_ack() -> None:
    headers = headers_of("adt_a01__basic.hl7") | {"sending_facility": "A|B^C", "control_id": "X&Y"}
    msg = er7.parse(ack.build_ack("AA", headers))
    assert msg.get("MSH-6") == "A|B^C" and msg.get("MSA-2") == "X&Y"


def test_charset_is_echoed_and_used() -> None:
    headers = headers_of("adt_a01__latin1.hl7") | {"sending_facility": "KLINIK MÜNCHEN"}
    body = ack.build_ack("AA", headers)
    assert "MÜNCHEN".encode("latin-1") in body
    msg = er7.parse(body)
    assert (
        msg.encoding == "latin-1" and msg.get("MSH-18") == "8859/1" and msg.get("MSH-6") == "KLINIK MÜNCHEN"
    )


# -- modes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "accept", "application", "code"),
    [
        # original mode
        ("accepted", "", "", "AA"),
        ("invalid", "", "", "AE"),
        ("refused", "", "", "AR"),
        # enhanced mode: the accept (commit) acknowledgement
        ("accepted", "AL", "", "CA"),
        ("invalid", "AL", "NE", "CE"),
        ("refused", "AL", "AL", "CR"),
        ("accepted", "SU", "", "CA"),
        ("invalid", "ER", "", "CE"),
        ("accepted", "al", "", "CA"),
        ("accepted", "XX", "", "CA"),  # unknown value: treated as AL
        # accept ack not wanted for this outcome, application ack wanted: answer as the application
        ("accepted", "NE", "AL", "AA"),
        ("invalid", "NE", "ER", "AE"),
        ("accepted", "ER", "SU", "AA"),
        ("refused", "SU", "AL", "AR"),
        ("accepted", "", "AL", "AA"),
        ("refused", "NE", "ER", "AR"),
        # nothing wanted: not sent over MLLP; HTTP, which must answer, carries the accept code
        ("accepted", "NE", "NE", "CA"),
        ("invalid", "SU", "SU", "CE"),
        ("accepted", "NE", "", "CA"),
        ("accepted", "ER", "ER", "CA"),
    ],
)
def test_ack_code(kind: OutcomeKind, accept: str, application: str, code: str) -> None:
    assert ack.ack_code(kind, accept, application) == code


def test_enhanced_mode_commit_accept() -> None:
    headers = headers_of("adt_a01__basic.hl7") | {"accept_ack_type": "AL", "application_ack_type": "NE"}
    msg = er7.parse(ack.build_ack(ack.ack_code("accepted", "AL", "NE"), headers))
    assert msg.get("MSA-1") == "CA" and msg.get("MSA-2") == "NWG-ADT01-0001"
    assert msg.get("MSH-15") == "" and msg.get("MSH-16") == ""  # an ACK asks for no ACK


# -- ERR segments -----------------------------------------------------------------------------

ISSUES = [
    Issue(
        "error", "required_field_missing", "PID-3", "PID-3 (Patient Identifier List) is required but empty."
    ),
    Issue("warning", "field_too_long", "OBX(2)-5[1].2", "OBX-5 is longer than 199 characters."),
    Issue("fatal", "store_unavailable", "", "The gateway could not store the message durably."),
    Issue("information", "some_code_nobody_mapped", "not a path", "Odd | characters ^ & ~ \\ escaped."),
]


def test_err_segments_from_v2_5() -> None:
    msg = build("adt_a01__basic.hl7", "AE", ISSUES)
    errs = msg.segments_named("ERR")
    assert len(errs) == 4
    assert msg.get("ERR-2") == "PID^1^3^1"
    assert msg.get("ERR-3") == "101^Required field missing^HL70357"
    assert msg.get("ERR-4") == "E" and msg.get("ERR-5") == "required_field_missing"
    assert msg.get("ERR-7") == ISSUES[0].diagnostics and msg.get("ERR-8") == ISSUES[0].diagnostics
    assert msg.get("ERR(2)-2") == "OBX^2^5^1^2"
    assert msg.get("ERR(2)-3.1") == "102"  # 104 "value too long" exists only from v2.6
    assert msg.get("ERR(2)-4") == "W"
    assert msg.get("ERR(3)-2") == "" and msg.get("ERR(3)-3") == "207^Application internal error^HL70357"
    assert msg.get("ERR(4)-2") == "" and msg.get("ERR(4)-3.1") == "207" and msg.get("ERR(4)-4") == "I"
    assert msg.get("ERR(4)-7") == "Odd | characters ^ & ~ \\ escaped."
    assert msg.get("MSA-3") == ""  # the text lives in ERR from v2.5
    assert build("adt_a01__custom_delimiters.hl7", "AE", ISSUES[1:2]).get("ERR-3.1") == "104"


def test_err_segment_before_v2_5_uses_err1_eld() -> None:
    msg = build("adt_a08__update.hl7", "AR", ISSUES)  # v2.4
    errs = msg.segments_named("ERR")
    assert len(errs) == 1  # ACK has at most one ERR before v2.5; ERR-1 repeats
    reps = msg.repetitions(errs[0], 1)
    assert len(reps) == 4
    assert reps[0] == "PID^1^3^101&Required field missing&HL70357"
    assert reps[1] == "OBX^2^5^102&Data type error&HL70357"
    assert reps[2] == "^^^207&Application internal error&HL70357"
    assert msg.get("ERR-1.4.1") == "101" and msg.get("ERR-1[2].1") == "OBX"
    assert msg.get("MSA-1") == "AR" and msg.get("MSA-3") == ISSUES[0].diagnostics
    assert len(errs[0].fields) == 2  # no ERR-2 and later before v2.5


def test_positive_acks_carry_no_err() -> None:
    assert build("adt_a01__basic.hl7", "AA", ISSUES).segments_named("ERR") == []
    assert build("adt_a01__basic.hl7", "CA", ISSUES).segments_named("ERR") == []


def test_ack_never_echoes_payload_values() -> None:
    raw = (HL7 / "adt_a01__canary.hl7").read_bytes()
    adapter = HL7Adapter()
    env = adapter.parse(raw.replace(b"|2.5||", b"|9.9||"), Receipt("test"))
    issues = adapter.validate(env)
    assert issues
    body = ack.build_ack("AR", env.headers, [*issues, *ISSUES])
    assert b"CANARY" not in body
    # a location that is not an HL7 path never reaches ERR-2
    stray = Issue("error", "unexpected_segment", "CANARYPATIENT-1", "A stray line.")
    assert b"CANARY" not in ack.build_ack("AE", env.headers, [stray])
    with pytest.raises(ParseError) as info:
        adapter.parse(raw.replace(b"MSH|^~\\&", b"MSH|^~"), Receipt("test"))
    body = ack.build_ack("AE", info.value.headers, info.value.issues)
    assert b"CANARY" not in body and b"NWG-ADT01-CNRY-0001" in body


# -- the 0357 map -----------------------------------------------------------------------------


def test_err_code_map_is_data_and_complete() -> None:
    data = json.loads(resources.files("adapters.hl7").joinpath("err_codes.json").read_text())
    table = data["table_0357"]
    assert set(data["issue_codes"].values()) <= set(table)
    assert data["default"] in table
    # every code this package's validators emit is mapped
    emitted = set(structure.DEFAULT_SEVERITIES) | {
        "empty_message",
        "missing_msh",
        "truncated",
        "bad_encoding_characters",
        "missing_msh9",
        "missing_msh10",
        "missing_msh11",
        "missing_msh12",
        "unsupported_message_type",
        "unsupported_processing_id",
        "unsupported_version",
        "store_unavailable",
        "control_id_conflict",
    }
    assert emitted <= set(data["issue_codes"])
    # and agrees with the structure validator's own table where both speak (104 refines 102 from v2.6)
    for code, value in structure.ERR_CODES.items():
        ours = ack.error_condition(code, "2.5.1")[0]
        assert ours == value, code


@pytest.mark.parametrize(
    ("code", "version", "expected"),
    [
        ("unsupported_version", "2.5.1", ("203", "Unsupported version id")),
        ("control_id_conflict", "2.5.1", ("205", "Duplicate key identifier")),
        ("field_too_long", "2.6", ("104", "Value too long")),
        ("field_too_long", "2.5", ("102", "Data type error")),
        ("never_heard_of_it", "2.5", ("207", "Application internal error")),
    ],
)
def test_error_condition(code: str, version: str, expected: tuple[str, str]) -> None:
    assert ack.error_condition(code, version) == expected


# -- parse_ack --------------------------------------------------------------------------------


def test_parse_ack_round_trip() -> None:
    headers = headers_of("adt_a01__basic.hl7")
    assert ack.parse_ack(ack.build_ack("AA", headers)) == ("AA", "NWG-ADT01-0001", "")
    code, acked, text = ack.parse_ack(ack.build_ack("AE", headers, ISSUES))
    assert (code, acked, text) == ("AE", "NWG-ADT01-0001", ISSUES[0].diagnostics)
    old = headers_of("adt_a08__update.hl7")
    assert ack.parse_ack(ack.build_ack("AR", old, ISSUES[1:])) == (
        "AR",
        "NWG-ADT08-0001",
        ISSUES[1].diagnostics,
    )
    bare = b"MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|9|P|2.5.1\rMSA|AE|C-5\rERR||PID^1^3|101^Required field missing^HL70357|E\r"
    assert ack.parse_ack(bare) == ("AE", "C-5", "Required field missing")


def test_parse_ack_needs_an_msa() -> None:
    with pytest.raises(er7.ER7Error) as info:
        ack.parse_ack((HL7 / "adt_a01__basic.hl7").read_bytes())
    assert info.value.code == "missing_msa"
    with pytest.raises(er7.ER7Error):
        ack.parse_ack(b"garbage")


def test_the_ack_swaps_whole_hd_parties_as_sent() -> None:
    """MSH-3 to MSH-6 are HDs: a partner that names itself by a universal id (an ISO OID) gets it back
    in the ACK's MSH-5/6, escapes and all, not only the namespace; a second repetition is not sent."""
    raw = (
        b"MSH|^~\\&|LAB^1.2.3.4^ISO|HOSP\\T\\CO^2.16.840.1.113883.3.72^ISO|GW^9.9^ISO~ALT|GATEWAY|"
        b"20240101120000||ADT^A01^ADT_A01|HD-1|P|2.5.1\rEVN|A01|20240101120000\r"
        b"PID|1||MRN1^^^H^MR||DOE^JANE\rPV1|1|I\r"
    )
    adapter = HL7Adapter()
    env = adapter.parse(raw, Receipt("test"))
    reply = adapter.respond(Outcome("accepted", env.headers, [], env.id, env))
    msh = reply.body.split(b"\r", 1)[0].split(b"|")
    assert msh[2:6] == [
        b"GW^9.9^ISO",
        b"GATEWAY",
        b"LAB^1.2.3.4^ISO",
        b"HOSP\\T\\CO^2.16.840.1.113883.3.72^ISO",
    ]
    assert er7.parse(reply.body).get("MSH-6.1") == "HOSP&CO"


def test_a_reply_is_wanted_unless_both_fields_decline_it() -> None:
    """HL7 table 0155 for MSH-15 and MSH-16: AL always, NE never, ER on error or reject, SU on success."""
    assert ack.reply_wanted("accepted") and ack.reply_wanted("invalid", "", "")
    assert not ack.reply_wanted("accepted", "NE", "NE")
    assert not ack.reply_wanted("accepted", "ER", "ER")
    assert ack.reply_wanted("invalid", "ER", "NE") and ack.reply_wanted("refused", "NE", "ER")
    assert not ack.reply_wanted("invalid", "SU", "NE") and ack.reply_wanted("accepted", "SU", "NE")
    assert not ack.reply_wanted("accepted", "NE", "")
    assert ack.reply_wanted("accepted", "NE", "AL") and ack.reply_wanted("accepted", "XX", "NE")


@pytest.mark.parametrize(
    ("ack_types", "unwanted", "wanted"),
    [(b"NE|NE", "accepted", None), (b"ER|ER", "accepted", "invalid"), (b"SU|SU", "invalid", "accepted")],
)
def test_the_adapter_marks_a_reply_nobody_asked_for(
    ack_types: bytes, unwanted: OutcomeKind, wanted: OutcomeKind | None
) -> None:
    raw = b"MSH|^~\\&|LAB|H|GW|G|20240101||ADT^A01^ADT_A01|M-1|P|2.5.1|||" + ack_types + b"\rPID|1||M1\r"
    adapter = HL7Adapter()
    env = adapter.parse(raw, Receipt("test"))
    assert adapter.respond(Outcome(unwanted, env.headers, [], env.id, env)).wanted is False
    if wanted is not None:
        assert adapter.respond(Outcome(wanted, env.headers, [], env.id, env)).wanted is True


@pytest.mark.parametrize(
    ("msh", "control_id"),
    [
        (b"MSH|^~\\&|LAB|H|GW|G|20240101||ADT^A01^ADT_A01|C^2|P|2.5.1", b"C^2"),
        (b"MSH|^~\\&#|LAB|H|GW|G|20240101||ADT^A01^ADT_A01|TR#1|P|2.7", b"TR#1"),
        (b"MSH|^~\\&|LAB|H|GW|G|20240101||ADT^A01^ADT_A01|A\\T\\B|P|2.5.1", b"A\\T\\B"),
    ],
)
def test_msa_2_is_msh_10_as_sent(msh: bytes, control_id: bytes) -> None:
    """A sender matches MSA-2 against its MSH-10 as text: it gets it back character for character, not
    unescaped and escaped again."""
    adapter = HL7Adapter()
    env = adapter.parse(msh + b"\rPID|1||M1\r", Receipt("test"))
    reply = adapter.respond(Outcome("accepted", env.headers, [], env.id, env))
    assert reply.body.split(b"\r")[1].split(b"|")[2] == control_id


@pytest.mark.parametrize(
    ("raw", "codec"),
    [
        # no MSH-18, Latin-1 bytes: read as latin-1, answered in latin-1
        (b"MSH|^~\\&|LAB|H\xd4SP|GW|G|20240101||ADT^A01^ADT_A01|CS-5|P|2.5.1\rPID|1||M1\r", "latin-1"),
        # MSH-18 says ASCII, the bytes are UTF-8: read as UTF-8, answered in UTF-8
        (
            b"MSH|^~\\&|LAB|H\xc3\x94SP|GW|G|20240101||ADT^A01^ADT_A01|CS-3|P|2.5.1||||||ASCII\rPID|1||M1\r",
            "utf-8",
        ),
    ],
)
def test_the_ack_is_encoded_as_the_message_was_read(raw: bytes, codec: str) -> None:
    """The facility the ACK copies into MSH-6 comes back as the very bytes the sender sent."""
    adapter = HL7Adapter()
    env = adapter.parse(raw, Receipt("test"))
    reply = adapter.respond(Outcome("accepted", env.headers, [], env.id, env))
    sent_facility = raw.split(b"|")[3]
    assert reply.body.split(b"\r")[0].split(b"|")[5] == sent_facility
    assert sent_facility.decode(codec) == "HÔSP"


def test_a_batch_is_answered_by_an_acknowledgement_batch() -> None:
    """HL7 v2.5 §2.10.3: FHS/BHS with sender and receiver swapped and the inbound control ids as
    references, the ACKs batch by batch, BTS-1 counting each batch's ACKs, FTS-1 counting batches; each
    batch's warnings in its own BTS-2 only, the file's in FTS-2."""
    raw = (
        b"FHS|^~\\&|LAB|HOSP^1.2^ISO|GW|GATEWAY|20240101||F-NAME||FHS-11\r"
        b"BHS|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||B-NAME||BHS-1\r"
        b"MSH|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT^A01^ADT_A01|M1|P|2.5.1\rPID|1\r"
        b"MSH|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT^A01^ADT_A01|M2|P|2.5.1\rPID|1\r"
        b"BTS|5\r"
        b"BHS|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||B-NAME||BHS-2\r"
        b"MSH|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT^A01^ADT_A01|M3|P|2.5.1\rPID|1\r"
        b"BTS|1\r"
        b"FTS|3\r"
    )
    acks = [b"MSH|ack1\rMSA|AA|M1\r", None, b"MSH|ack3\rMSA|AE|M3\r"]  # M2 asked for none
    lines = ack.build_batch_ack(raw, acks).split(b"\r")
    fhs, bhs1 = lines[0].split(b"|"), lines[1].split(b"|")
    assert fhs[:6] == [b"FHS", b"^~\\&", b"GW", b"GATEWAY", b"LAB", b"HOSP^1.2^ISO"]
    assert fhs[11] == b"FHS-11" and fhs[10] and fhs[10] != b"FHS-11" and len(fhs[6]) >= 14
    assert bhs1[:6] == [b"BHS", b"^~\\&", b"GW", b"GATEWAY", b"LAB", b"HOSP"] and bhs1[11] == b"BHS-1"
    assert lines[2:5] == [b"MSH|ack1", b"MSA|AA|M1", b"BTS|1|BTS-1 declares 5 messages; 2 arrived."]
    assert lines[5].split(b"|")[11] == b"BHS-2"
    assert lines[6:] == [
        b"MSH|ack3",
        b"MSA|AE|M3",
        b"BTS|1",
        b"FTS|2|FTS-1 declares 3 batches; 2 arrived.",
        b"",
    ]
    # a batch of no message, cut short of its trailers: still closed, and said so
    empty = ack.build_batch_ack(b"BHS|^~\\&|LAB|HOSP|GW|GATEWAY|||||B0\r", [])
    assert empty.split(b"\r")[1:] == [b"BTS|0|The batch has no BTS: it may be cut short.", b""]
