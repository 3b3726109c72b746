"""HL7Adapter: detection, the envelope and its headers, validation levels, replies, and the registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters import BUILTIN_ADAPTERS
from adapters.hl7 import er7
from adapters.hl7.adapter import CONTENT_TYPE, HEADER_KEYS, HL7Adapter
from adapters.hl7.framing import FrameReader, frame
from gateway.adapter import Adapter, Issue, Outcome, OutcomeKind, ParseError, ValidationLevel
from gateway.envelope import Envelope, Receipt, sha256_hex
from tests.conftest import FIXTURES

HL7 = FIXTURES / "hl7"
RECEIPT = Receipt("test", peer="127.0.0.1:9")
VALID = sorted(p for p in HL7.glob("*.hl7") if not p.name.startswith("invalid__"))
INVALID = sorted(HL7.glob("invalid__*.hl7"))


def fixture(name: str) -> bytes:
    return (HL7 / name).read_bytes()


def parse(raw: bytes, validation: ValidationLevel = "structure") -> Envelope:
    return HL7Adapter(validation).parse(raw, RECEIPT)


def units(path: Path) -> list[bytes]:
    raw = path.read_bytes()
    batch = HL7Adapter().split(raw)
    return batch.units if batch is not None else [raw]


# -- registry and protocol --------------------------------------------------------------------


def test_registered_under_hl7v2() -> None:
    assert BUILTIN_ADAPTERS["hl7v2"] is HL7Adapter
    adapter: Adapter = BUILTIN_ADAPTERS["hl7v2"](validation="header")
    assert adapter.name == "hl7v2"


def test_unknown_validation_level_is_refused() -> None:
    with pytest.raises(ValueError, match="validation level"):
        HL7Adapter("strict")  # type: ignore[arg-type]


# -- detect -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"MSH|^~\\&|A",
        b"\xef\xbb\xbfMSH|^~\\&|A",
        b"\r\n  MSH|^~\\&|A",
        b"\x0bMSH|^~\\&|A",
        b"FHS|^~\\&|A",
        b"BHS|^~\\&|A",
        b"MSH!^~\\&!A",
    ],
)
def test_detect_claims_hl7(raw: bytes) -> None:
    assert HL7Adapter().detect(raw, None)
    assert HL7Adapter().detect(raw, CONTENT_TYPE)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"MSH",
        b"MSHA^~",
        b"MSH ^~",
        b'{"resourceType": "Patient"}',
        b"<Document/>",
        b"PID|1",
        b"msh|^~\\&",
    ],
)
def test_detect_rejects_the_rest(raw: bytes) -> None:
    assert not HL7Adapter().detect(raw, CONTENT_TYPE)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_detect_claims_every_valid_fixture(path: Path) -> None:
    assert HL7Adapter().detect(path.read_bytes(), None)


# -- parse ------------------------------------------------------------------------------------


def test_envelope_of_a_basic_adt() -> None:
    raw = fixture("adt_a01__basic.hl7")
    env = parse(raw)
    assert env.protocol == "hl7v2"
    assert env.version == "2.5.1"
    assert env.message_type == "ADT^A01"
    assert env.control_id == "NWG-ADT01-0001"
    assert env.sender == "NW_ADT^NORTHWIND_GEN"
    assert env.receiver == "GW_INBOUND^GATEWAY"
    assert env.raw is raw and env.raw_sha256 == sha256_hex(raw)
    assert isinstance(env.body, er7.Message) and env.body.get("PID-5.1") == "HARTWELL"
    assert env.sensitivity == "phi"
    assert env.received_at == RECEIPT.received_at and env.receipt is RECEIPT
    assert len(env.id) == 26 and env.id != parse(raw).id
    assert env.business_keys == {"patient_id": "NW100234^^^NWG"}
    assert env.correlation_id == ""
    assert dict(env.headers) == {
        "sending_application": "NW_ADT",
        "sending_facility": "NORTHWIND_GEN",
        "receiving_application": "GW_INBOUND",
        "receiving_facility": "GATEWAY",
        "message_type": "ADT^A01",
        "message_code": "ADT",
        "trigger_event": "A01",
        "message_structure": "ADT_A01",
        "version": "2.5.1",
        "processing_id": "P",
        "control_id": "NWG-ADT01-0001",
        "accept_ack_type": "",
        "application_ack_type": "",
        "encoding_characters": "|^~\\&",
        "charset": "",
        "patient_id": "NW100234^^^NWG",
    }


def test_content_digest_is_the_same_for_the_same_message_in_other_bytes() -> None:
    raw = fixture("adt_a01__basic.hl7")
    env = parse(raw)
    assert env.raw_sha256 == sha256_hex(raw) and env.content_sha256 != env.raw_sha256  # MSH-7 left out
    msh7 = raw.split(b"\r", 1)[0].split(b"|")[6]
    resends = [
        raw.replace(msh7, b"20991231235959+0000", 1),  # stamped again when sent again
        raw.replace(msh7, b"", 1),
        raw + b"\n",
        raw + b"\r\n\r\n  \n",
        raw.rstrip(b"\r"),
        b"\xef\xbb\xbf" + raw,
        raw.replace(b"\r", b"\n"),
        b"\xef\xbb\xbf" + raw.replace(b"\r", b"\r\n"),
    ]
    for resend in resends:
        again = parse(resend)
        assert again.raw is resend and again.raw_sha256 == sha256_hex(resend) != env.raw_sha256
        assert again.content_sha256 == env.content_sha256, resend[-8:]
    changed = [
        raw.replace(b"PV1|1|I|", b"PV1|1|O|", 1).replace(b"\r", b"\n"),
        raw.replace(b"|P|", b"|T|", 1),  # MSH-11: the rest of MSH counts
        raw.replace(b"|A\r", b"|A \r"),  # a blank at the end of the last field is still a change
    ]
    for other in changed:
        assert other != raw and parse(other).content_sha256 != env.content_sha256


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_every_valid_fixture_has_every_header(path: Path) -> None:
    for unit in units(path):
        env = parse(unit)
        assert tuple(env.headers) == HEADER_KEYS
        assert all(isinstance(v, str) for v in env.headers.values())
        assert env.control_id and env.message_type and env.version


def test_message_structure_without_msh9_3_is_code_event() -> None:
    env = parse(fixture("adt_a04__register.hl7"))
    assert env.headers["message_structure"] == "ADT_A04" and env.version == "2.3"
    # the validator still finds ADT^A04's real structure (ADT_A01) and finds nothing wrong
    assert HL7Adapter().validate(env) == []


def test_headers_of_other_fixtures() -> None:
    latin1 = parse(fixture("adt_a01__latin1.hl7"))
    assert latin1.headers["charset"] == "8859/1" and latin1.body.encoding == "latin-1"
    custom = parse(fixture("adt_a01__custom_delimiters.hl7"))
    assert custom.headers["encoding_characters"] == "|:~\\&#" and custom.message_type == "ADT^A01"
    assert custom.business_keys == {"patient_id": "NW1310518^^^NWG"}
    oru = parse(fixture("oru_r01__cbc_20_obx.hl7"))
    assert oru.message_type == "ORU^R01" and oru.headers["message_structure"] == "ORU_R01"
    assert len(oru.body.segments_named("OBX")) >= 20


def test_patient_id_forms() -> None:
    base = "MSH|^~\\&|A|F|R|RF|20240101||ADT^A08|C1|P|2.5\rEVN|A08|20240101\r"
    assert parse((base + "PID|1||X1\r").encode()).business_keys == {"patient_id": "X1"}
    assert parse((base + "PID|1||X1^^^NS&1.2&ISO^MR\r").encode()).headers["patient_id"] == "X1^^^NS"
    assert parse((base + "PID|1||X1^^^&1.2&ISO\r").encode()).headers["patient_id"] == "X1^^^1.2"
    assert parse((base + "PID|1||X\\S\\1^^^A\r").encode()).headers["patient_id"] == "X^1^^^A"
    none = parse((base + "PID|1||\r").encode())
    assert none.headers["patient_id"] == "" and none.business_keys == {}
    assert parse(base.encode() + b"PV1|1|I\r").business_keys == {}


def test_sender_falls_back_to_the_universal_id() -> None:
    raw = b"MSH|^~\\&|^1.2.3^ISO|FAC|||20240101||ADT^A08|C1|P|2.5\rEVN|A08|20240101\rPID|1||X\r"
    env = parse(raw)
    assert env.sender == "1.2.3^FAC" and env.receiver == ""


def test_an_inbound_ack_correlates_to_what_it_acknowledges() -> None:
    raw = b"MSH|^~\\&|A|F|R|RF|20240101||ACK^A01^ACK|C2|P|2.5.1\rMSA|AA|C1\r"
    env = parse(raw)
    assert env.message_type == "ACK^A01" and env.correlation_id == "C1"
    assert HL7Adapter().validate(env) == []


# -- unreadable messages ----------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_every_invalid_fixture_yields_its_issue_code(path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    adapter = HL7Adapter()
    try:
        env = adapter.parse(path.read_bytes(), RECEIPT)
    except ParseError as exc:
        issues = exc.issues
    else:
        issues = adapter.validate(env)
        assert env.control_id or code == "missing_msh10"
    assert code in [i.code for i in issues if i.is_error]


def test_parse_error_keeps_the_readable_header() -> None:
    with pytest.raises(ParseError) as info:
        parse(fixture("invalid__bad_encoding_characters.hl7"))
    exc = info.value
    assert [i.code for i in exc.issues] == ["bad_encoding_characters"]
    assert exc.issues[0].severity == "fatal" and exc.issues[0].location == "MSH-2"
    assert exc.headers["control_id"] == "NWG-INV-ENC-0001"
    assert (
        exc.headers["sending_application"] == "NW_ADT" and exc.headers["sending_facility"] == "NORTHWIND_GEN"
    )
    assert exc.headers["version"] == "2.5.1" and exc.headers["message_type"] == "ADT^A01"
    assert "patient_id" not in exc.headers
    with pytest.raises(ParseError) as info:
        parse(fixture("invalid__truncated.hl7"))
    assert info.value.headers["sending_application"] == "NW_ADT"
    assert info.value.headers["encoding_characters"] == "|^~\\&"
    with pytest.raises(ParseError) as info:
        parse(b"not hl7")
    assert info.value.headers == {} and info.value.issues[0].code == "missing_msh"


def test_a_lone_complete_msh_line_still_parses() -> None:
    # the MLLP listener reads headers from the first line of an oversized frame this way
    first = fixture("adt_a01__basic.hl7").split(b"\r", 1)[0]
    assert parse(first).control_id == "NWG-ADT01-0001"


# -- validate ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_every_valid_fixture_passes_structure_validation(path: Path) -> None:
    adapter = HL7Adapter("structure")
    for unit in units(path):
        assert adapter.validate(adapter.parse(unit, RECEIPT)) == []


def test_validation_levels() -> None:
    broken = fixture("adt_a01__basic.hl7").replace(b"\rPID|", b"\rXXX|").replace(b"|P|2.5.1", b"|Q|2.5.1")
    assert HL7Adapter("none").validate(parse(broken)) == []
    header = HL7Adapter("header").validate(parse(broken))
    assert [i.code for i in header] == ["unsupported_processing_id"]
    full = {i.code for i in HL7Adapter("structure").validate(parse(broken))}
    assert {"unsupported_processing_id", "required_segment_missing", "unexpected_segment"} <= full


@pytest.mark.parametrize(
    ("change", "code", "location"),
    [
        ((b"ADT^A01^ADT_A01", b""), "missing_msh9", "MSH-9"),
        ((b"NWG-ADT01-0001", b""), "missing_msh10", "MSH-10"),
        ((b"|P|2.5.1", b"||2.5.1"), "missing_msh11", "MSH-11"),
        ((b"|P|2.5.1", b"|X|2.5.1"), "unsupported_processing_id", "MSH-11"),
        ((b"|P|2.5.1", b"|P|"), "missing_msh12", "MSH-12"),
        ((b"|P|2.5.1", b"|P|3.0"), "unsupported_version", "MSH-12"),
        ((b"ADT^A01^ADT_A01", b"QQQ^A01"), "unsupported_message_type", "MSH-9.1"),
    ],
)
def test_header_issues(change: tuple[bytes, bytes], code: str, location: str) -> None:
    raw = fixture("adt_a01__basic.hl7").replace(*change, 1)
    issues = HL7Adapter("header").validate(parse(raw))
    assert [(i.code, i.location, i.severity) for i in issues] == [(code, location, "error")]
    # the structure level reports the same problem once, not again as a structure issue
    full = HL7Adapter("structure").validate(parse(raw))
    assert [i.location for i in full].count(location) == 1


def test_a_second_msh_in_one_message_is_an_error() -> None:
    first = fixture("adt_a01__basic.hl7")
    second = first.replace(b"NWG-ADT01-0001", b"NWG-ADT01-0002", 1)
    assert second != first
    env = parse(first + second)  # two messages read as one, as when nothing split them
    for level in ("header", "structure"):
        issues = HL7Adapter(level).validate(env)
        assert ("unexpected_segment", "MSH(2)", "error") in [(i.code, i.location, i.severity) for i in issues]
        assert [i.location for i in issues].count("MSH(2)") == 1, level


def test_local_message_types_and_every_supported_version() -> None:
    raw = b"MSH|^~\\&|A|F|R|RF|20240101||ZXX^Z01|C1|P|2.5\rZXA|1\r"
    assert HL7Adapter("header").validate(parse(raw)) == []
    for version in (
        "2.1",
        "2.2",
        "2.3",
        "2.3.1",
        "2.4",
        "2.5",
        "2.5.1",
        "2.6",
        "2.7",
        "2.7.1",
        "2.8",
        "2.8.1",
        "2.8.2",
    ):
        msg = f"MSH|^~\\&|A|F|R|RF|20240101||ADT^A01|C1|P|{version}\rEVN|A01|20240101\r".encode()
        assert HL7Adapter("header").validate(parse(msg)) == [], version


def test_validate_never_raises_for_content() -> None:
    adapter = HL7Adapter()
    for raw in (
        b"MSH|^~\\&|A|F|R|RF|20240101||ADT^A01^NOPE_NOPE|C1|P|2.5\r\x00\x01|||\r",
        b"MSH|^~\\&|A|F|R|RF|x||^|C1|P|2.5\rPID|" + b"^" * 5000 + b"\r",
        b"MSH|^~\\&|||||||ORU^R01|C1|P|2.5.1\rOBX|a|b|c\rOBX\r",
    ):
        assert isinstance(adapter.validate(adapter.parse(raw, RECEIPT)), list)


# -- respond / serialize / split --------------------------------------------------------------


def outcome(kind: OutcomeKind, *issues: Issue, name: str = "adt_a01__basic.hl7", **headers: str) -> Outcome:
    env = parse(fixture(name))
    return Outcome(kind, {**env.headers, **headers}, issues, env.id)


@pytest.mark.parametrize(
    ("kind", "issues", "code", "status"),
    [
        ("accepted", (), "AA", 200),
        ("invalid", (Issue("error", "missing_msh9", "MSH-9", "MSH-9 is empty."),), "AE", 400),
        ("refused", (Issue("error", "unsupported_version", "MSH-12", "Not supported."),), "AR", 422),
        ("refused", (Issue("fatal", "store_unavailable", "", "Try later."),), "AR", 503),
    ],
)
def test_respond(kind: OutcomeKind, issues: tuple[Issue, ...], code: str, status: int) -> None:
    reply = HL7Adapter().respond(outcome(kind, *issues))
    assert (reply.code, reply.status, reply.content_type) == (code, status, f"{CONTENT_TYPE}; charset=UTF-8")
    assert reply.accepted == (kind == "accepted")
    msg = er7.parse(reply.body)
    assert msg.get("MSA-1") == code and msg.get("MSA-2") == "NWG-ADT01-0001"
    assert len(msg.segments_named("ERR")) == len(issues)


def test_respond_in_enhanced_mode() -> None:
    adapter = HL7Adapter()
    reply = adapter.respond(outcome("accepted", accept_ack_type="AL", application_ack_type="NE"))
    assert (reply.code, reply.status) == ("CA", 200)
    reply = adapter.respond(
        outcome("invalid", Issue("error", "missing_msh12", "MSH-12", "x"), accept_ack_type="AL")
    )
    assert (reply.code, reply.status) == ("CE", 400)
    reply = adapter.respond(outcome("refused", Issue("fatal", "store_unavailable"), accept_ack_type="ER"))
    assert (reply.code, reply.status) == ("CR", 503)


def test_respond_to_an_unparseable_message() -> None:
    with pytest.raises(ParseError) as info:
        parse(fixture("invalid__bad_encoding_characters.hl7"))
    reply = HL7Adapter().respond(Outcome("invalid", info.value.headers, info.value.issues))
    msg = er7.parse(reply.body)
    assert reply.code == "AE" and msg.get("MSA-2") == "NWG-INV-ENC-0001"
    assert msg.get("ERR-3.1") == "102" and msg.get("MSH-5") == "NW_ADT"
    reply = HL7Adapter().respond(Outcome("invalid", {}, [Issue("fatal", "missing_msh", "MSH", "No MSH.")]))
    assert er7.parse(reply.body).get("MSA-1") == "AE"


def test_serialize_is_the_raw_bytes_and_split_is_the_batch_splitter() -> None:
    adapter = HL7Adapter()
    for name in (
        "adt_a01__z_segment.hl7",
        "adt_a01__lf_endings.hl7",
        "adt_a01__bom.hl7",
        "adt_a01__latin1.hl7",
    ):
        raw = fixture(name)
        assert adapter.serialize(adapter.parse(raw, RECEIPT)) == raw
    assert adapter.split(fixture("adt_a01__basic.hl7")) is None
    batch = adapter.split(fixture("batch__fhs_bhs.hl7"))
    assert batch is not None and batch.kind == "fhs" and len(batch.units) == 3


# -- no payload in errors or replies ----------------------------------------------------------

SECRETS = ("CANARYPATIENT", "CANARY-MRN-0001")


def test_canary_never_leaks_into_issues_errors_or_replies() -> None:
    canary = fixture("adt_a01__canary.hl7")
    assert all(s.encode() in canary for s in SECRETS)
    variants = [
        canary,
        canary.replace(b"|2.5||", b"|9.9||"),
        canary.replace(b"MSH|^~\\&", b"MSH|^~"),
        canary.replace(b"ADT^A01^ADT_A01", b"ADT^A01^ZZZ_NOPE"),
        canary.replace(b"\rEVN|", b"\rPID|CANARYPATIENT|CANARY-MRN-0001\rEVN|"),
        canary.replace(b"19900101", b"CANARYPATIENT"),
        canary.replace(b"|F|", b"|" + b"CANARY-MRN-0001" * 30 + b"|"),
        canary[:60],
        canary.replace(b"\rEVN|", b"\rCANARYPATIENT wrapped onto its own line\rEVN|"),
        canary.replace(b"\rEVN|", b"\rCANARY-MRN-0001|x\rEVN|"),
        b"PID|1||CANARY-MRN-0001||CANARYPATIENT\r",
    ]
    adapter = HL7Adapter()
    seen: list[str] = []
    for raw in variants:
        try:
            env = adapter.parse(raw, RECEIPT)
        except ParseError as exc:
            seen += [str(exc), repr(exc.issues), repr(dict(exc.headers))]
            reply = adapter.respond(Outcome("invalid", exc.headers, exc.issues))
        else:
            issues = adapter.validate(env)
            seen += [repr(issues), repr(env.body), *(repr(s) for s in env.body.segments)]
            kind: OutcomeKind = "accepted" if not any(i.is_error for i in issues) else "invalid"
            reply = adapter.respond(Outcome(kind, env.headers, issues))
            masked = {k: v for k, v in env.headers.items() if k not in env.business_keys}
            seen.append(repr(masked))
        seen.append(reply.body.decode("latin-1"))
    for text in seen:
        for secret in SECRETS:
            assert secret not in text


def test_every_fixture_message_has_its_own_control_id() -> None:
    seen: dict[str, str] = {}
    for path in sorted(HL7.glob("*.hl7")):
        for unit in units(path):
            try:
                control_id = parse(unit).control_id
            except ParseError as exc:
                control_id = exc.headers.get("control_id", "")
            if control_id:
                assert control_id not in seen, (path.name, seen.get(control_id))
                seen[control_id] = path.name
    assert len(seen) >= 25


# -- odd inputs that once broke a reply -------------------------------------------------------


def reply_to(adapter: HL7Adapter, raw: bytes) -> tuple[er7.Message, str]:
    """The ACK intake sends for ``raw``, read back, and the control id the reader read."""
    try:
        env = adapter.parse(raw, RECEIPT)
    except ParseError as exc:
        reply = adapter.respond(Outcome("invalid", exc.headers, exc.issues))
        control_id = exc.headers.get("control_id", "")
    else:
        issues = adapter.validate(env)
        kind: OutcomeKind = "accepted" if not any(i.is_error for i in issues) else "invalid"
        reply = adapter.respond(Outcome(kind, env.headers, issues, env.id, env))
        control_id = env.control_id
    return er7.parse(reply.body), control_id


@pytest.mark.parametrize(
    "raw",
    [
        b"MSH+^~\\&+LAB+HOSP+GW+GATEWAY+20240101++ADT^A01^ADT_A01+C-1+P+2.5.1\rPID+1\r",  # + separates fields
        b"MSH|+~\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT+A01+ADT_A01|C-1|P|2.5.1\rPID|1\r",  # components
        b"MSH|^~\\&+|LAB|HOSP|GW|GATEWAY|20240101||ADT^A01^ADT_A01|C-1|P|2.7\rPID|1\r",  # truncation (v2.7)
        b"MSH+^~\\&+LAB+HOSP+GW+GATEWAY+20240101++ADT^A01+C-1\r",  # unreadable: cut before MSH-12
    ],
    ids=["field", "component", "truncation", "unreadable"],
)
def test_a_plus_among_the_delimiters_leaves_the_ack_header_in_place(raw: bytes) -> None:
    """MSH-7 of an ACK is the UTC time, written with its +0000 offset; where + is a delimiter (which a
    DTM cannot escape) the offset is left out, or its sign split the ACK's MSH-7 and shifted every field
    after it (MSH-9 read empty, MSH-10 read ACK)."""
    ack, control_id = reply_to(HL7Adapter(), raw)
    msh7 = ack.get("MSH-7")
    assert len(msh7) == 14 and msh7.isdigit()
    assert ack.get("MSH-9.1") == "ACK" and len(ack.get("MSH-10")) == 20
    assert ack.get("MSA-2") == control_id == "C-1"
    plain, _ = reply_to(HL7Adapter(), b"MSH|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT^A01|C-1|P|2.5.1\r")
    assert plain.get("MSH-7").endswith("+0000")  # with other delimiters, the offset is written


def test_a_plus_separated_batch_gets_its_batch_header_in_place() -> None:
    msh = b"MSH+^~\\&+LAB+HOSP+GW+GATEWAY+20240101++ADT^A01^ADT_A01+C-1+P+2.5.1\rPID+1\r"
    raw = b"BHS+^~\\&+LAB+HOSP+GW+GATEWAY+20240101++++B-1\r" + msh + b"BTS+1\r"
    adapter = HL7Adapter()
    batch = adapter.split(raw)
    assert batch is not None and batch.units == [msh]
    env = adapter.parse(msh, RECEIPT)
    reply = adapter.respond_batch(batch, [adapter.respond(Outcome("accepted", env.headers, [], env.id, env))])
    bhs = reply.body.split(b"\r")[0].split(b"+")
    assert bhs[:6] == [b"BHS", b"^~\\&", b"GW", b"GATEWAY", b"LAB", b"HOSP"]
    assert len(bhs[6]) == 14 and bhs[6].isdigit() and bhs[11] == b"B-1"


def test_an_unreadable_message_gets_its_control_id_back_whatever_charset_it_declares() -> None:
    """A message that cannot be read (bad MSH-2 here) and declares ASCII in MSH-18 but carries é in its
    control id (read as UTF-8) is answered in UTF-8, so that MSA-2 is the control id as read, not C-?."""
    raw = "MSH|^^\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT^A01|C-é|P|2.5.1||||||ISO IR6\r".encode()
    adapter = HL7Adapter()
    with pytest.raises(ParseError) as caught:
        adapter.parse(raw, RECEIPT)
    assert caught.value.headers["control_id"] == "C-é" and caught.value.headers["charset"] == "ISO IR6"
    reply = adapter.respond(Outcome("invalid", caught.value.headers, caught.value.issues))
    assert reply.content_type.endswith("charset=UTF-8")
    ack = er7.parse(reply.body)
    assert ack.get("MSA-2") == "C-é" and ack.get("MSH-18") == "ISO IR6"
    encodable = raw.replace("C-é".encode(), b"C-1")  # what ASCII can carry is answered in ASCII
    with pytest.raises(ParseError) as caught:
        adapter.parse(encodable, RECEIPT)
    reply = adapter.respond(Outcome("invalid", caught.value.headers, caught.value.issues))
    assert reply.content_type.endswith("charset=US-ASCII")


@pytest.mark.parametrize("raw", [b"BHS", b"FHS", b"  FHS", b"BHS\r", b"FHS\r\nBTS|0\r\n"])
def test_a_bare_batch_header_is_one_unreadable_message(raw: bytes) -> None:
    """A batch header id without its delimiters is no batch (splitting it once failed on an empty
    separator when the acknowledgement batch was built): it is one message that cannot be read."""
    adapter = HL7Adapter()
    assert adapter.split(raw) is None
    with pytest.raises(ParseError) as caught:
        adapter.parse(raw, RECEIPT)
    assert [i.code for i in caught.value.issues] in (["truncated"], ["missing_msh"])
    reply = adapter.respond(Outcome("invalid", caught.value.headers, caught.value.issues))
    assert er7.parse(reply.body).get("MSA-1") == "AE"


def test_a_batch_whose_count_is_too_long_to_read_is_acknowledged() -> None:
    msh = b"MSH|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT^A01^ADT_A01|C-1|P|2.5.1\rPID|1\r"
    raw = b"FHS|^~\\&\rBHS|^~\\&\r" + msh + b"BTS|" + b"7" * 5000 + b"\rFTS|1\r"
    adapter = HL7Adapter()
    batch = adapter.split(raw)
    assert batch is not None and batch.units == [msh]
    env = adapter.parse(msh, RECEIPT)
    reply = adapter.respond_batch(batch, [adapter.respond(Outcome("accepted", env.headers, [], env.id, env))])
    lines = reply.body.split(b"\r")
    assert lines[-3] == b"BTS|1|BTS-1 declares a number of messages 5000 digits long; 1 arrived."
    assert lines[-2] == b"FTS|1"


def test_mllp_frame_bytes_in_copied_fields_reach_the_sender_escaped() -> None:
    """0x1C is no HL7 text, yet a field may hold it (it ends an MLLP frame only before 0x0D); copied into
    the ACK before a segment end it closed the reply's frame early, and the sender read MSA-2 as C1. The
    ACK writes it, and 0x0B, as hex escapes, which read back as the byte."""
    adapter = HL7Adapter()
    raw = b"MSH|^~\\&|LAB\x1c|HOSP|GW|GATEWAY|20240101||ADT^A01^ADT_A01|C1\x1c|P|2.5.1\rPID|1\r"
    env = adapter.parse(raw, RECEIPT)
    replies = [adapter.respond(Outcome("accepted", env.headers, [], env.id, env))]
    with pytest.raises(ParseError) as caught:  # unreadable (cut before MSH-12): the salvaged header
        adapter.parse(raw.split(b"|P|")[0] + b"\r", RECEIPT)
    replies.append(adapter.respond(Outcome("invalid", caught.value.headers, caught.value.issues)))
    for reply in replies:
        assert b"\x1c" not in reply.body and b"MSA|" in reply.body
        (whole,) = FrameReader(1 << 20).feed(frame(reply.body))
        ack = er7.parse(whole)
        assert ack.get("MSA-2") == "C1\x1c" and ack.get("MSH-5") == "LAB\x1c"
    batch = adapter.split(b"BHS|^~\\&|LAB|HOSP|GW|GATEWAY|20240101||||B-1\x1c\r" + raw + b"BTS|1\r")
    assert batch is not None
    body = adapter.respond_batch(batch, replies[:1]).body
    assert b"\x1c" not in body and body.split(b"\r")[0].endswith(b"|B-1\\X1C\\")


def test_the_ack_names_the_character_set_as_the_message_did() -> None:
    """With / as the component separator, MSH-18 8859/3 is one component 8859 to the charset header, but
    the reader takes the field as sent to choose the codec; the ACK, written in that codec, copied the
    header's 8859, which names none, so it read back in latin-1 (MSA-2 C-ÿ for C-˙). It copies MSH-18 as
    sent, as it does MSH-10."""
    raw = "MSH|/~\\&|LAB|HOSP|GW|GATEWAY|20240101||ADT/A01|C-˙|P|2.5.1||||||8859/3\r".encode("iso8859-3")
    ack, control_id = reply_to(HL7Adapter(), raw)
    assert control_id == "C-˙" and ack.encoding == "iso8859-3"
    assert ack.get("MSA-2") == "C-˙" and ack.segments[0].fields[18] == "8859/3"


def test_a_frame_byte_after_an_open_escape_sequence_still_reads_back() -> None:
    """Copied as sent, ``C\\(`` + 0x1C + ``^X`` has an escape sequence left open before the byte, which
    would pair with the byte's own hex escape; such a value is written again from what it reads as."""
    raw = b"MSH|^~\\&|LAB\\(\x1c^ISO|HOSP|GW|GATEWAY|20240101||ADT^A01^ADT_A01|C\\(\x1c^X|P|2.5.1\rPID|1\r"
    env = HL7Adapter().parse(raw, RECEIPT)
    assert env.control_id == "C\\(\x1c^X"
    reply = HL7Adapter().respond(Outcome("accepted", env.headers, [], env.id, env))
    (whole,) = FrameReader(1 << 20).feed(frame(reply.body))
    ack = er7.parse(whole)
    assert er7.unescape(ack.segments[1].fields[2], ack.delimiters) == env.control_id
    assert [ack.get("MSH-5.1"), ack.get("MSH-5.2")] == ["LAB\\(\x1c", "ISO"]
