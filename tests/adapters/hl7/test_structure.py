"""The HL7 v2 structure validator compiled from hl7apy's definitions (adapters.hl7.structure)."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest

from adapters.hl7 import er7, structure
from adapters.hl7.ack import build_ack
from adapters.hl7.structure import library_for, parse_location, resolve_structure, validate
from gateway.adapter import Issue
from tests.conftest import FIXTURES, require_or_skip

CORPORA = Path(__file__).resolve().parents[3].parent / "shared" / "corpora"
FHIR_CONVERTER = CORPORA / "hl7v2" / "microsoft-FHIR-Converter" / "messages"

MSH = "MSH|^~\\&|NW_ADT|NORTHWIND|GW|GATEWAY|20240312101500+0000||ADT^A01^ADT_A01|CTRL-0001|P|{version}"
SEGMENTS = [
    MSH,
    "EVN|A01|20240312101455+0000||ADM|ADM0042^REYES^MARTA|20240312101000+0000",
    "PID|1||NW204518^^^NWG^MR~812345670^^^USSSA^SS||OKONKWO^ADAEZE^NGOZI^^MS||19850923|F||"
    "2054-5^Black^CDCREC|1187 JUNIPER DR^APT 4B^EASTBROOK^OR^97401^USA^H||^PRN^PH^^1^541^5552290",
    "PD1|||NORTHWIND FAMILY PRACTICE^^4410|30122^VANCE^ELEANOR^^^DR",
    "NK1|1|OKONKWO^CHIDI^E|SPO^Spouse^HL70063",
    "PV1|1|I|4EAST^407^A^NWG||||20417^OKAFOR^CHINEDU^^^DR|||MED",
    "OBX|1|NM|8867-4^Heart rate^LN|1|92|/min^per minute^UCUM|60-100||||F|||20240312100500+0000",
    "AL1|1|DA|2670^Codeine^RXNORM|SV|Anaphylaxis",
    "DG1|1||R07.9^Chest pain^I10||20240312|A",
]


def seg(sid: str, **fields: str) -> str:
    """A segment with the given fields (``f3="..."`` is SEG-3) and the others empty."""
    numbered = {int(k[1:]): v for k, v in fields.items()}
    return "|".join([sid, *(numbered.get(i, "") for i in range(1, max(numbered, default=0) + 1))])


def pid(**fields: str) -> str:
    """A minimal valid PID with the given fields changed."""
    return seg("PID", **{"f1": "1", "f3": "MRN1^^^H^MR", "f5": "DOE^JANE", **fields})


def message(*segments: str, version: str = "2.5.1") -> er7.Message:
    lines = [s.format(version=version) if s.startswith("MSH") else s for s in segments]
    return er7.parse(("\r".join(lines) + "\r").encode())


def adt(version: str = "2.5.1", **replace: str) -> er7.Message:
    """The valid ADT^A01 above, with whole segments replaced by id (``PID="PID|..."``, ``PV1=""`` drops it)."""
    lines = [replace.get(s[:3], s) for s in SEGMENTS]
    return message(*(line for line in lines if line), version=version)


def check(
    msg: er7.Message, structure_id: str = "ADT_A01", version: str = "2.5.1"
) -> list[tuple[str, str, str]]:
    return [(i.severity, i.code, i.location) for i in validate(msg, structure_id, version)]


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.is_error]


# -- the whole message ---------------------------------------------------------------------------


def test_valid_adt_a01_passes() -> None:
    assert validate(adt(), "ADT_A01", "2.5.1") == []


def test_the_1500_byte_fixture_passes() -> None:
    raw = (FIXTURES / "hl7" / "adt_a01__1500_bytes.hl7").read_bytes()
    assert validate(er7.parse(raw), "ADT_A01", "2.5.1") == []


def test_every_fixture_has_no_errors() -> None:
    for path in sorted((FIXTURES / "hl7").glob("*.hl7")):
        if path.name.startswith(("invalid__", "batch__")):
            continue
        msg = er7.parse(path.read_bytes())
        msh9 = [*msg.get("MSH-9").split(msg.delimiters.component), "", "", ""]
        version = msg.get("MSH-12")
        found = resolve_structure(version, msh9[0], msh9[1], msh9[2]) or msh9[2]
        assert errors(validate(msg, found, version)) == [], path.name


# -- segments ------------------------------------------------------------------------------------


def test_missing_pid_is_an_error() -> None:
    issues = validate(adt(PID=""), "ADT_A01", "2.5.1")
    assert [(i.severity, i.code, i.location) for i in issues] == [
        ("error", "required_segment_missing", "PID")
    ]
    assert issues[0].diagnostics == "Required segment PID is missing before PD1 in the ADT_A01 message."


def test_a_missing_segment_that_is_not_the_subject_is_a_warning() -> None:
    assert check(adt(EVN="")) == [("warning", "required_segment_missing", "EVN")]


def test_several_missing_segments_are_each_reported() -> None:
    # a message of MSH alone misses EVN, PID and PV1; only PID is an error
    assert check(message(MSH)) == [
        ("warning", "required_segment_missing", "EVN"),
        ("error", "required_segment_missing", "PID"),
        ("warning", "required_segment_missing", "PV1"),
    ]
    # recovery goes on after the first problem
    assert check(adt(EVN="", PID="")) == [
        ("warning", "required_segment_missing", "EVN"),
        ("error", "required_segment_missing", "PID"),
    ]


def test_segments_out_of_order_have_a_location() -> None:
    msg = message(SEGMENTS[0], SEGMENTS[1], SEGMENTS[5], SEGMENTS[2])  # MSH EVN PV1 PID
    issues = validate(msg, "ADT_A01", "2.5.1")
    assert [(i.severity, i.code, i.location) for i in issues] == [
        ("warning", "segment_sequence_error", "PV1"),
        ("warning", "segment_sequence_error", "PID"),
    ]
    assert issues[0].diagnostics == "PV1 is out of sequence for ADT_A01: PID should come before it."
    # a present but misplaced PID is an order problem, never "PID missing"
    assert not any(i.code == "required_segment_missing" for i in issues)
    # a strict channel turns order problems into errors
    strict = validate(msg, "ADT_A01", "2.5.1", severities={"segment_sequence_error": "error"})
    assert [(i.severity, i.location) for i in strict] == [("error", "PV1"), ("error", "PID")]


def test_segment_order_within_groups() -> None:
    # DG1 after IN1 is out of order in ADT_A01 (DG1 comes before the INSURANCE group)
    msg = message(*SEGMENTS[:6], "IN1|1|PPO^Plan^99|INS01^^^NWG^NIIP", SEGMENTS[-1])
    issues = validate(msg, "ADT_A01", "2.5.1")
    assert [(i.code, i.location) for i in issues] == [("segment_sequence_error", "DG1")]
    assert "expected" in issues[0].diagnostics


def test_a_segment_repeated_more_than_allowed() -> None:
    msg = message(*SEGMENTS[:3], SEGMENTS[2], *SEGMENTS[3:])  # two PIDs
    issues = validate(msg, "ADT_A01", "2.5.1")
    assert [(i.code, i.location) for i in issues] == [("segment_sequence_error", "PID(2)")]
    assert "repeats more often than ADT_A01 allows" in issues[0].diagnostics


def test_second_occurrence_locations() -> None:
    obx2 = "OBX|2|NM|8480-6^Systolic^LN|1|148|mm[Hg]|90-139|H|||F|||2024-03-12"
    msg = message(*SEGMENTS[:7], obx2, *SEGMENTS[7:])
    assert check(msg) == [("warning", "data_type_error", "OBX(2)-14.1")]


@pytest.mark.parametrize("where", [1, 3, 6, len(SEGMENTS)])
def test_z_segments_are_allowed_anywhere(where: int) -> None:
    lines = [*SEGMENTS]
    lines.insert(where, "ZPI|1|site specific^data|x~y~z")
    assert validate(message(*lines), "ADT_A01", "2.5.1") == []


def test_unknown_and_unexpected_segments() -> None:
    unknown = message(*SEGMENTS[:3], "XYZ|1|2", *SEGMENTS[3:])
    assert check(unknown) == [("warning", "unexpected_segment", "XYZ")]
    assert validate(unknown, "ADT_A01", "2.5.1")[0].diagnostics == "Segment XYZ is not defined in HL7 2.5.1."
    # ORC exists in 2.5.1 but not in ADT_A01
    foreign = message(*SEGMENTS, "ORC|NW|123")
    assert check(foreign) == [("warning", "unexpected_segment", "ORC")]
    # an id that is not a segment id at all (a stray text line) is not echoed
    stray = message(*SEGMENTS[:3], "the rest of a note", *SEGMENTS[3:])
    issues = validate(stray, "ADT_A01", "2.5.1")
    assert [(i.code, i.location) for i in issues] == [("unexpected_segment", "")]
    assert "the" not in issues[0].diagnostics


def test_wildcard_segments_in_a_structure() -> None:
    # QBP_Q15 (2.5): MSH SFT* QPD ANYHL7SEGMENT? RCP DSC?
    head = "MSH|^~\\&|A|F|R|RF|20240101||QBP^Q15^QBP_Q15|C1|P|2.5"
    qpd, rcp = "QPD|Q15^Query^HL70471|Q1", "RCP|I"
    assert check(message(head, qpd, "STF|1", rcp), "QBP_Q15", "2.5") == []
    assert check(message(head, qpd, rcp), "QBP_Q15", "2.5") == []
    assert check(message(head, qpd, "STF|1", "NTE|1", rcp), "QBP_Q15", "2.5") == [
        ("warning", "segment_sequence_error", "NTE")
    ]


# -- fields --------------------------------------------------------------------------------------


def test_missing_pid_3_is_an_error() -> None:
    pid = "PID|1||||OKONKWO^ADAEZE||19850923|F"
    issues = validate(adt(PID=pid), "ADT_A01", "2.5.1")
    assert [(i.severity, i.code, i.location) for i in issues] == [
        ("error", "required_field_missing", "PID-3")
    ]
    assert issues[0].diagnostics == "PID-3 (Patient Identifier List) is required but empty."


def test_other_required_fields_are_warnings_and_null_is_present() -> None:
    assert check(adt(PV1="PV1|1||4EAST^407")) == [("warning", "required_field_missing", "PV1-2")]
    assert check(adt(PV1='PV1|1|""|4EAST^407')) == []  # HL7 null counts as present
    assert check(adt(PV1="PV1|1|^^|4EAST^407")) == [("warning", "required_field_missing", "PV1-2")]
    # a segment cut short before a required field
    assert check(adt(PV1="PV1|1")) == [("warning", "required_field_missing", "PV1-2")]


def test_required_msh_fields_are_errors() -> None:
    msg = er7.parse(
        b"MSH|^~\\&|A|F|R|RF|||ADT^A01^ADT_A01|C1|P|2.5.1\rEVN|A01|20240101\r"
        b"PID|1||MRN1^^^H^MR||DOE^JANE\rPV1|1|I\r"
    )
    assert check(msg) == [("error", "required_field_missing", "MSH-7")]


@pytest.mark.parametrize(
    ("replace", "location", "kind"),
    [
        ({"PID": pid(f7="1985-09-23")}, "PID-7.1", "DTM"),  # TS.1 in 2.5.1
        ({"AL1": "AL1|1|DA|2670^Codeine^RXNORM|SV|Anaphylaxis|05/06/2011"}, "AL1-6", "DT"),
        ({"PID": pid(f13="^PRN^PH^^1^54I^5552290")}, "PID-13.6", "NM"),
        ({"OBX": "OBX|one|NM|8867-4^Heart rate^LN|1|92||||||F"}, "OBX-1", "SI"),
        ({"DG1": "DG1|1||R07.9^Chest pain^I10||20241332|A"}, "DG1-5.1", "DTM"),  # month 13
        ({"EVN": "EVN|A01|20240312101455+0000||ADM||2024031210+5"}, "EVN-6.1", "DTM"),  # bad offset
    ],
)
def test_data_type_errors_have_locations(replace: dict[str, str], location: str, kind: str) -> None:
    issues = validate(adt(**replace), "ADT_A01", "2.5.1")
    assert [(i.severity, i.code, i.location) for i in issues] == [("warning", "data_type_error", location)]
    assert f"({kind})" in issues[0].diagnostics


def test_data_type_error_in_msh_is_an_error() -> None:
    msg = message(MSH.replace("20240312101500+0000", "2024-03-12"), *SEGMENTS[1:])
    assert check(msg) == [("error", "data_type_error", "MSH-7.1")]


def test_data_types_in_repetitions_and_subcomponents() -> None:
    # the second repetition of PID-13; IN1-37 (CP) holds a price (MO) whose first part is a number
    value = pid(f13="^PRN^PH^^1^541^5552290~^PRN^PH^^1^X^5")
    in1 = seg("IN1", f1="1", f2="PPO^Plan^99", f3="INS01^^^NWG^NIIP", f37="12,50&USD")
    assert check(adt(PID=value, DG1=SEGMENTS[-1] + "\r" + in1)) == [
        ("warning", "data_type_error", "PID-13[2].6"),
        ("warning", "data_type_error", "IN1-37.1.1"),
    ]
    assert check(adt(DG1=SEGMENTS[-1] + "\r" + in1.replace("12,50", "12.50"))) == []


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        (
            "DT",
            ["2024", "202403", "20240312"],
            ["24", "2024031", "20241301", "20240332", "2024-03-12", "\uff12\uff10\uff12\uff14"],
        ),
        (
            "DTM",
            [
                "2024",
                "20240312",
                "2024031210",
                "202403121015",
                "20240312101530.1234",
                "20240312101530-0500",
                "2024+0100",
            ],
            ["202403121", "20240312101530.12345", "20240312246000", "20240312101530-05", "20240312T1015"],
        ),
        ("TM", ["10", "1015", "101530", "101530.5", "1015+0100"], ["25", "1", "10:15", "106000"]),
        ("NM", ["0", "-1", "+1.5", "1.", ".5", "00012"], ["1,5", "1e5", "abc", ".", "1.2.3", "--1"]),
        ("SI", ["0", "1", "9999"], ["-1", "1.0", "a"]),
    ],
)
def test_formats(kind: str, good: list[str], bad: list[str]) -> None:
    fmt = structure._FORMATS[kind]
    assert all(fmt(v) for v in good), kind
    assert not any(fmt(v) for v in bad), kind


def test_too_many_repetitions() -> None:
    issues = validate(adt(PID=pid(f7="19850923", f8="F~M")), "ADT_A01", "2.5.1")
    assert [(i.severity, i.code, i.location) for i in issues] == [
        ("warning", "too_many_repetitions", "PID-8")
    ]
    assert issues[0].diagnostics == "PID-8 (Administrative Sex) allows at most 1 repetition(s) but has 2."


def test_field_too_long_and_fields_beyond_the_definition() -> None:
    assert check(adt(PID=pid(f19="9" * 200))) == [("warning", "field_too_long", "PID-19")]
    assert check(adt(PID=pid(f19="9" * 199))) == []
    # PID-40: 2.5.1 defines 39 fields
    assert check(adt(PID=pid(f40="EXTRA"))) == [("information", "unexpected_field", "PID-40")]


def test_tables_are_checked_only_when_given() -> None:
    coded = pid(f3="MRN1^^^H^XX", f8="Q")
    assert check(adt(PID=coded)) == []
    tables = {"HL70001": frozenset({"F", "M", "U"}), "0203": frozenset({"MR", "SS"})}
    issues = validate(adt(PID=coded), "ADT_A01", "2.5.1", tables=tables)
    assert [(i.severity, i.code, i.location) for i in issues] == [
        ("warning", "table_value_not_found", "PID-3.5"),
        ("warning", "table_value_not_found", "PID-8"),
    ]
    assert issues[1].diagnostics == "PID-8 (Administrative Sex) is not a value of table HL70001."
    assert validate(adt(), "ADT_A01", "2.5.1", tables=tables) == []


def test_builtin_tables() -> None:
    tables = structure.builtin_tables("2.5.1")
    assert {"F", "M", "U"} <= tables["HL70001"]
    assert structure.builtin_tables("2.1") == {}  # hl7apy ships no tables that old
    assert validate(adt(), "ADT_A01", "2.5.1", tables={"HL70001": tables["HL70001"]}) == []


def test_diagnostics_never_carry_values() -> None:
    canary = "CANARY7781"
    msg = message(
        MSH.replace("20240312101500+0000", canary),
        "EVN|A01|" + canary,
        f"PID|{canary}||||{canary}^JANE||{canary}|{canary}~{canary}||||||||||||" + canary * 30,
        f"{canary[:3]}|1",
        f"ZZ{canary}|1",
        f"PV1|1|I|||||||||||||||||||||||||||||||||||||||||||||||||||{canary}",
    )
    issues = validate(msg, "ADT_A01", "2.5.1", tables={"HL70001": frozenset({"F"})})
    assert len(issues) > 5
    for issue in issues:
        assert canary not in issue.diagnostics and canary not in issue.location, issue


# -- versions and structures ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "library"),
    [
        ("2.1", "v2_1"),
        ("2.3.1", "v2_3_1"),
        ("2.5.1", "v2_5_1"),
        ("2.7", "v2_7"),
        ("2.7.1", "v2_7"),
        ("2.8", "v2_8"),
        ("2.8.2", "v2_8_2"),
        ("2.9", "v2_8_2"),
        ("2.5.2", "v2_5_1"),
        ("2.10", "v2_8_2"),
        ("3.0", None),
        ("", None),
        ("2", None),
        ("1.9", None),
        ("v2.5", None),
    ],
)
def test_library_for(version: str, library: str | None) -> None:
    assert library_for(version) == library


@pytest.mark.parametrize(
    ("version", "birth_date"),
    [("2.3.1", "PID-7.1"), ("2.5.1", "PID-7.1"), ("2.7.1", "PID-7"), ("2.8", "PID-7")],
)
def test_each_version_uses_its_own_definitions(version: str, birth_date: str) -> None:
    assert validate(adt(version), "ADT_A01", version) == []
    # TS (a composite) until 2.5.1, DTM (a primitive) from 2.6: the location says which
    bad = adt(version, PID=pid(f7="1985-09-23"))
    assert check(bad, version=version) == [("warning", "data_type_error", birth_date)]
    # PD1 is optional, NK1 repeats, PV1 is required in every one of them
    assert check(adt(version, PV1=""), version=version) == [("warning", "required_segment_missing", "PV1")]


def test_unsupported_versions() -> None:
    assert check(adt("2.9"), version="2.9") == [("warning", "unsupported_version", "MSH-12")]
    issues = validate(adt("3.0"), "ADT_A01", "3.0")
    assert [(i.severity, i.code) for i in issues] == [("warning", "unsupported_version")]
    assert "not validated" in issues[0].diagnostics
    assert check(adt(""), version="") == [("error", "required_field_missing", "MSH-12")]
    assert validate(adt(), "ADT_A01", "2.5.1^USA^ISO3166") == []  # MSH-12 with its components


@pytest.mark.parametrize(
    ("version", "code", "event", "declared", "expected"),
    [
        ("2.5.1", "ADT", "A01", "ADT_A01", "ADT_A01"),
        ("2.3", "ADT", "A04", "", "ADT_A01"),
        ("2.5", "ADT", "A08", "", "ADT_A01"),
        ("2.3.1", "ADT", "A28", "", "ADT_A01"),  # no ADT_A05 before 2.4
        ("2.5", "ADT", "A28", "", "ADT_A05"),
        ("2.3.1", "PPR", "PC2", "", "PPR_PC1"),
        ("2.8", "SIU", "S14", "SIU_S14", "SIU_S14"),  # hl7apy names every SIU event's structure
        ("2.8", "SIU", "S25", "SIU_S25", "SIU_S12"),
        ("2.5.1", "ORU", "R01", "", "ORU_R01"),
        ("2.5.1", "ACK", "A01", "", "ACK"),
        ("2.5.1", "ZXX", "Z01", "", None),
        ("9.9", "ADT", "A01", "ADT_A01", None),
    ],
)
def test_resolve_structure(version: str, code: str, event: str, declared: str, expected: str | None) -> None:
    assert resolve_structure(version, code, event, declared) == expected


def test_structure_not_in_the_version() -> None:
    msg = message(MSH.replace("ADT^A01^ADT_A01", "ADT^A04^ADT_A01"), *SEGMENTS[1:])
    assert check(msg, "ADT_A01") == []
    # not declared, or declared as CODE_EVENT (a common habit): the event's structure, silently
    assert check(msg, "") == []
    assert check(msg, "ADT_A04") == []
    # declared as something the version does not define: the event's structure, with a warning
    issues = validate(msg, "ADT_X04", "2.5.1")
    assert [(i.severity, i.code, i.location) for i in issues] == [("warning", "unknown_structure", "MSH-9.3")]
    assert issues[0].diagnostics == (
        "Message structure ADT_X04 is not defined in HL7 2.5.1; validated as ADT_A01, the structure of its event."
    )
    unknown = message(MSH.replace("ADT^A01^ADT_A01", "ADT^A99"), *SEGMENTS[1:])
    issues = validate(unknown, "", "2.5.1")
    assert [(i.code, i.location) for i in issues] == [("unknown_structure", "MSH-9")]
    assert "segment order was not checked" in issues[0].diagnostics
    # fields are still checked
    assert check(message(MSH.replace("ADT^A01^ADT_A01", "ADT^A99"), "PID|1"), "") == [
        ("warning", "unknown_structure", "MSH-9"),
        ("error", "required_field_missing", "PID-3"),
        ("warning", "required_field_missing", "PID-5"),
    ]
    # site-defined message types have no structure to check
    assert check(message(MSH.replace("ADT^A01^ADT_A01", "ZXX^Z01"), "ZXA|1"), "") == []


def test_every_structure_of_every_version_compiles() -> None:
    for version in structure.SUPPORTED_VERSIONS:
        assert structure.compile_version(version) < 30  # seconds; typically ~0.1
    with pytest.raises(ValueError, match="no hl7apy definitions"):
        structure.compile_version("3.0")


def test_parse_location() -> None:
    assert parse_location("PID") == ("PID", 1, None, None, None, None)
    assert parse_location("PID(2)") == ("PID", 2, None, None, None, None)
    assert parse_location("PID-3") == ("PID", 1, 3, 1, None, None)
    assert parse_location("OBX(2)-5[3].7.1") == ("OBX", 2, 5, 3, 7, 1)
    assert parse_location("nonsense") is None
    # every location the validator writes is one er7.parse_path reads the same way
    assert er7.parse_path("OBX(2)-5[3].7.1") == ("OBX", 2, 5, 3, 7, 1)


def test_validate_never_raises_for_content() -> None:
    rng = random.Random(20240312)
    base = "\r".join(SEGMENTS).format(version="2.5.1")
    alphabet = '|^~&\\"0123456789.+-AZaz #'
    for _ in range(300):
        chars = list(base)
        for _ in range(rng.randint(1, 30)):
            chars[rng.randrange(12, len(chars))] = rng.choice(alphabet)
        try:
            msg = er7.parse("".join(chars).encode())
        except er7.ER7Error:
            continue
        for name in ("ADT_A01", "", "ORU_R01", "NOPE_NOPE"):
            issues = validate(msg, name, rng.choice(["2.3", "2.5.1", "2.8", "2.9", "x"]))
            assert all(isinstance(i, Issue) for i in issues)


def test_ids_from_messages_do_not_grow_the_caches() -> None:
    lib = structure._library("v2_5_1")
    validate(adt(), "ADT_A01", "2.5.1")
    before = (len(lib.segments), len(lib.automata))
    for n in range(200):
        msg = message(*SEGMENTS, f"Q{n:02d}|1", f"free text line {n}")
        validate(msg, f"QRY_{n:03d}", "2.5.1")
    assert (len(lib.segments), len(lib.automata)) == before


# -- the real-world corpus -----------------------------------------------------------------------


def corpus_messages() -> list[tuple[str, er7.Message]]:
    if not FHIR_CONVERTER.is_dir():
        require_or_skip(f"the FHIR-Converter HL7 v2 corpus is not at {FHIR_CONVERTER}")
    out = []
    for path in sorted(FHIR_CONVERTER.glob("*.hl7")):
        raw = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
        out.append((path.name, er7.parse(raw)))
    return out


@pytest.mark.corpus
def test_real_corpus_has_no_errors() -> None:
    messages = corpus_messages()
    assert len(messages) == 139
    clean = 0
    codes: Counter[str] = Counter()
    for name, msg in messages:
        msh9 = [*msg.get("MSH-9").split(msg.delimiters.component), "", "", ""]
        version = msg.get("MSH-12")
        issues = validate(msg, msh9[2], version)
        assert errors(issues) == [], name
        clean += not issues
        codes.update(i.code for i in issues)
        values = {
            v
            for seg in msg.segments[1:]
            for f in seg.fields[1:]
            for v in re.split(r"[|^~&]", f)
            if len(v) >= 6 and any(c.isdigit() for c in v)
        }
        for issue in issues:
            assert not any(v in issue.diagnostics for v in values), (name, issue)
    # what the corpus is known to contain (see the module docstring of adapters.hl7.structure)
    assert clean >= 40
    assert codes["required_segment_missing"] == 7 and codes["segment_sequence_error"] == 8


@pytest.mark.corpus
def test_corpus_pid_problems_are_errors() -> None:
    for name, msg in corpus_messages()[:20]:
        if msg.segment("PID") is None:
            continue
        version = msg.get("MSH-12")
        msh9 = [*msg.get("MSH-9").split(msg.delimiters.component), "", "", ""]
        without_pid = er7.Message(
            msg.delimiters, [s for s in msg.segments if s.id != "PID"], msg.text, msg.encoding
        )
        assert any(
            i.is_error and i.code == "required_segment_missing" and i.location == "PID"
            for i in validate(without_pid, msh9[2], version)
        ), name


def test_many_bad_segments_stop_at_the_issue_cap_and_cost_little() -> None:
    """A small message of thousands of bad segments: validation stops after MAX_ISSUES with one
    ``too_many_issues`` error (so the message is refused, not accepted half-checked), the ACK carries
    that many ERR segments at most, and the later segments' locations still count occurrences right."""
    msg = message(MSH, SEGMENTS[1], SEGMENTS[2], SEGMENTS[5], *["QQQ|1"] * 40_000)
    issues = validate(msg, "ADT_A01", "2.5.1")
    assert len(issues) == structure.MAX_ISSUES + 1
    assert (issues[-1].severity, issues[-1].code) == ("error", "too_many_issues")
    assert [i.location for i in issues[:3]] == ["QQQ", "QQQ(2)", "QQQ(3)"]
    ack = build_ack("AE", {"control_id": "CTRL-0001", "version": "2.5.1"}, issues)
    assert ack.count(b"\rERR|") == structure.MAX_ISSUES + 1


def test_locations_count_each_segments_occurrences() -> None:
    bad = seg("OBX", f1="first", f2="NM", f3="8867-4^Heart rate^LN", f5="92", f11="F")
    msg = adt(OBX="\r".join([SEGMENTS[6], SEGMENTS[6], bad]))
    assert ("warning", "data_type_error", "OBX(3)-1") in check(msg)
