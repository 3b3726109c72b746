"""Conformance suite of the ISO 20022 adapter over every fixture in ``fixtures/finance/iso20022``.

The fixtures are found by glob, so a new file is checked without touching this
module. Its name says what it must do:

- ``<definition>__<variant>.xml`` (``pacs.008.001.13__basic.xml``): a valid
  message. It parses as that message type and version, has no error issue with
  the XSDs of ``schema_dir`` nor without schemas (business rules only),
  round-trips byte for byte, and is answered with the status report of its kind
  (pain.002 for pain.001, pacs.002 for pacs.008 and pacs.004, admi.007 for
  everything else), schema-valid where the report's XSD is at hand.
- ``invalid__<code>.xml``: yields exactly the issue ``<code>`` among its error
  issues (at parse time as :class:`ParseError` issues, otherwise from
  ``validate``), and its rejection names the ISO reason code that
  ``reason_codes.json`` maps the code to.
- ``sepa__<code>.xml``: passes the base validation but fails exactly ``<code>``
  of the SEPA rule set that routes select with ``rules: [sepa]``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

import adapters.finance
from adapters import BUILTIN_ADAPTERS
from adapters.finance.iso20022 import PRIVATE_PARTY, PRIVATE_PARTY_KEY, ISO20022Adapter
from adapters.finance.iso20022_rules import MAX_RULE_ISSUES
from gateway.adapter import Issue, Outcome, ParseError, Reply
from gateway.config import ISO20022Config
from gateway.envelope import Envelope, Receipt
from tests.conftest import FIXTURES
from tests.finance_messages import pain001

FOLDER = FIXTURES / "finance" / "iso20022"
ALL = sorted(FOLDER.glob("*.xml"))
INVALID = [p for p in ALL if p.name.startswith("invalid__")]
SEPA = [p for p in ALL if p.name.startswith("sepa__")]
VALID = [p for p in ALL if p not in INVALID and p not in SEPA]

ISO_NS = "urn:iso:std:iso:20022:tech:xsd:"
RECEIPT = Receipt("test")
REASON_CODES: dict[str, str] = {
    code: reason
    for code, reason in json.loads(
        Path(adapters.finance.__file__).with_name("reason_codes.json").read_text(encoding="utf-8")
    ).items()
    if not code.startswith("_")
}
REPLY_KIND = {"pain.001": "pain.002", "pacs.008": "pacs.002", "pacs.004": "pacs.002"}
"""The status report that answers a message type; every other type gets an admi.007."""

# Issue codes of reason_codes.json that neither the parser, the adapter nor the base rules raise:
# the pipeline raises them (duplicate MsgId, routing, the store), the SEPA codes come from the
# rule set a route selects, and too_large from the listener's size cap (the adapter parses
# whatever the listener accepted: ``parse_xml(raw, max_bytes=len(raw))``).
RAISED_ELSEWHERE = {
    "control_id_conflict",
    "route_unmatched",
    "store_unavailable",
    "unsupported_rule_set",
    "too_large",
}
SEPA_CODES = {code for code in REASON_CODES if code.startswith("sepa_")}
REQUIRED_VALID = {
    "pain.001.001.03",
    "pain.001.001.09",
    "pain.001.001.12",
    "pain.002.001.14",
    "pacs.008.001.08",
    "pacs.008.001.13",
    "pacs.002.001.15",
    "pacs.004.001.11",
    "camt.052.001.08",
    "camt.053.001.02",
    "camt.053.001.13",
    "camt.054.001.13",
}


def definition_of(path: Path) -> str:
    return path.name.split("__", 1)[0]


def issues_of(adapter: ISO20022Adapter, raw: bytes) -> list[Issue]:
    """Everything the adapter finds in ``raw``: the parse error's issues, or validate's."""
    try:
        env = adapter.parse(raw, RECEIPT)
    except ParseError as exc:
        return list(exc.issues)
    return adapter.validate(env)


def error_codes(issues: Sequence[Issue]) -> set[str]:
    return {i.code for i in issues if i.is_error}


def reject(adapter: ISO20022Adapter, raw: bytes) -> tuple[Reply, list[Issue]]:
    """The reply the gateway sends for ``raw`` when it rejects it for what the adapter found."""
    try:
        env = adapter.parse(raw, RECEIPT)
    except ParseError as exc:
        return adapter.respond(Outcome("invalid", exc.headers, exc.issues)), list(exc.issues)
    issues = adapter.validate(env)
    assert error_codes(issues), "the message was expected to be rejected"
    return adapter.respond(Outcome("invalid", env.headers, issues, env.id, env)), issues


def report_definition(body: bytes) -> str:
    root = etree.fromstring(body)
    namespace = etree.QName(root).namespace or ""
    assert namespace.startswith(ISO_NS), namespace
    return namespace.removeprefix(ISO_NS)


def xpath(node: etree._Element, path: str) -> list[str]:
    """Texts at ``path`` written with the ``r:`` prefix for the report's own namespace."""
    ns = {"r": etree.QName(node).namespace or ""}
    return [str(t).strip() for t in node.xpath(path + "/text()", namespaces=ns)]


@pytest.fixture(scope="module")
def adapter(schema_dir: Path) -> ISO20022Adapter:
    return ISO20022Adapter(ISO20022Config(schema_dir=schema_dir))


@pytest.fixture(scope="module")
def bare() -> ISO20022Adapter:
    """The adapter as an operator without a schema folder runs it: business rules only."""
    return ISO20022Adapter()


class Schemas(dict[str, etree.XMLSchema]):
    """Official XSDs by message definition, compiled straight with lxml (not through the adapter)."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = folder

    def __missing__(self, definition: str) -> etree.XMLSchema:
        schema = etree.XMLSchema(etree.parse(str(self.folder / f"{definition}.xsd")))
        self[definition] = schema
        return schema


@pytest.fixture(scope="module")
def xsd(schema_dir: Path) -> Schemas:
    return Schemas(schema_dir)


def assert_schema_valid(schema: etree.XMLSchema, node: etree._Element, what: str) -> None:
    ok = schema.validate(node)
    assert ok, (what, [(e.path, e.message) for e in schema.error_log])


# -- the folder ---------------------------------------------------------------------------------


def test_the_fixtures_cover_every_message_version_and_issue_code() -> None:
    assert {definition_of(p) for p in VALID} >= REQUIRED_VALID
    assert all(re.fullmatch(r"[a-z]{4}\.\d{3}\.\d{3}\.\d{2}", definition_of(p)) for p in VALID)
    raised_here = set(REASON_CODES) - RAISED_ELSEWHERE - SEPA_CODES
    assert {p.stem.removeprefix("invalid__") for p in INVALID} == raised_here
    assert {p.stem.removeprefix("sepa__") for p in SEPA} == SEPA_CODES
    assert (FOLDER / "pacs.008.001.13__large.xml").is_file()
    assert (FOLDER / "pacs.008.001.13__bah.xml").is_file()


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_fixture_is_claimed_by_the_iso20022_adapter_alone(path: Path) -> None:
    raw = path.read_bytes()
    claimed = [name for name, constructor in BUILTIN_ADAPTERS.items() if constructor().detect(raw, None)]
    assert claimed == ["iso20022"]


# -- valid fixtures -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_parses_as_its_message(adapter: ISO20022Adapter, path: Path) -> None:
    raw = path.read_bytes()
    definition = definition_of(path)
    assert adapter.detect(raw, "application/xml")
    env = adapter.parse(raw, RECEIPT)
    assert env.protocol == "iso20022"
    assert env.message_type == definition[:8]
    assert env.version == definition[9:]
    assert env.headers["message_definition"] == definition

    ns = env.body.namespace
    assert ns == ISO_NS + definition
    group_header = env.body.document[0].find(f"{{{ns}}}GrpHdr")
    assert group_header is not None
    msg_id = group_header.findtext(f"{{{ns}}}MsgId")
    assert msg_id and env.control_id == msg_id == env.headers["msg_id"]
    if env.message_type in REPLY_KIND:
        assert env.sender, "a payment's sender is its initiating party or instructing agent"

    if env.body.kind is not None and env.body.kind.counted:
        # what the gateway counts and sums matches what the sender declared in a valid message
        declared = group_header.findtext(f"{{{ns}}}NbOfTxs")
        assert env.headers["nb_of_txs"] == declared
        total = Decimal(env.headers["total_amount"])
        for name in ("CtrlSum", "TtlIntrBkSttlmAmt", "TtlRtrdIntrBkSttlmAmt"):
            declared_total = group_header.findtext(f"{{{ns}}}{name}")
            if declared_total is not None:
                assert total == Decimal(declared_total), name
        assert Decimal(env.headers["largest_amount"]) <= total


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_has_no_error_with_or_without_schemas(
    adapter: ISO20022Adapter,
    bare: ISO20022Adapter,
    schema_dir: Path,
    xsd: Schemas,
    path: Path,
) -> None:
    raw = path.read_bytes()
    definition = definition_of(path)
    env = adapter.parse(raw, RECEIPT)
    has_xsd = (schema_dir / f"{definition}.xsd").is_file()
    # the adapter found the schema of this version in the folder (so "no error" includes the XSD)
    assert adapter.schemas.has(env.body.namespace) == has_xsd
    assert [i for i in adapter.validate(env) if i.is_error] == []
    assert [i for i in bare.validate(bare.parse(raw, RECEIPT)) if i.is_error] == []
    if has_xsd:
        assert_schema_valid(xsd[definition], env.body.document, path.name)


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_round_trips(adapter: ISO20022Adapter, path: Path) -> None:
    raw = path.read_bytes()
    assert adapter.serialize(adapter.parse(raw, RECEIPT)) == raw


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_is_answered_with_its_report(
    adapter: ISO20022Adapter, schema_dir: Path, xsd: Schemas, path: Path
) -> None:
    env = adapter.parse(path.read_bytes(), RECEIPT)
    reply = adapter.respond(Outcome("accepted", env.headers, [], env.id, env))
    assert (reply.status, reply.code, reply.content_type) == (200, "ACTC", "application/xml")
    root = etree.fromstring(reply.body)  # well-formed, or this raises
    report = report_definition(reply.body)
    assert report[:8] == REPLY_KIND.get(env.message_type, "admi.007")
    if report.startswith("admi.007"):
        assert xpath(root, "r:RctAck/r:Rpt/r:ReqHdlg/r:StsCd") == ["ACPT"]
        assert xpath(root, "r:RctAck/r:Rpt/r:RltdRef/r:Ref") == [env.control_id]
    else:
        group = "r:*/r:OrgnlGrpInfAndSts"
        assert xpath(root, f"{group}/r:GrpSts") == ["ACTC"]
        assert xpath(root, f"{group}/r:OrgnlMsgId") == [env.control_id]
        assert xpath(root, f"{group}/r:OrgnlMsgNmId") == [env.headers["message_definition"]]
        assert xpath(root, f"{group}/r:OrgnlNbOfTxs") == [str(len(env.body.transactions))]
    if (schema_dir / f"{report}.xsd").is_file():
        assert_schema_valid(xsd[report], root, f"accepted reply to {path.name}")


@pytest.mark.parametrize(
    ("fixture", "report"),
    [
        ("pain.001.001.12__basic.xml", "pain.002.001.14"),
        ("pacs.008.001.13__basic.xml", "pacs.002.001.15"),
        ("pacs.008.001.13__large.xml", "pacs.002.001.15"),
        ("pacs.008.001.13__bah.xml", "pacs.002.001.15"),
        ("pacs.004.001.11__basic.xml", "pacs.002.001.12"),
    ],
)
def test_accepted_reports_are_valid_against_their_xsd(
    adapter: ISO20022Adapter, xsd: Schemas, fixture: str, report: str
) -> None:
    env = adapter.parse((FOLDER / fixture).read_bytes(), RECEIPT)
    reply = adapter.respond(Outcome("accepted", env.headers, [], env.id, env))
    assert report_definition(reply.body) == report
    assert_schema_valid(xsd[report], etree.fromstring(reply.body), fixture)


def test_bah_fixture_headers_come_from_the_application_header(adapter: ISO20022Adapter) -> None:
    env = adapter.parse((FOLDER / "pacs.008.001.13__bah.xml").read_bytes(), RECEIPT)
    assert env.body.app_header is not None
    assert env.headers["bah_from"] == "DEUTDEFF"
    assert env.headers["bah_to"] == "GEBABEBB"
    assert env.headers["bah_business_message_id"] == "DEUT20240514-BAH-0007"


def test_large_fixture_carries_its_amount_as_a_decimal_header(adapter: ISO20022Adapter) -> None:
    env = adapter.parse((FOLDER / "pacs.008.001.13__large.xml").read_bytes(), RECEIPT)
    assert Decimal(env.headers["total_amount"]) > Decimal("1000000.00")
    assert env.headers["largest_amount"] == "2750000.00"
    assert env.headers["currency"] == "EUR"


# -- invalid fixtures ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_yields_its_code(adapter: ISO20022Adapter, path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    assert error_codes(issues_of(adapter, path.read_bytes())) == {code}


@pytest.mark.parametrize(
    "path", [p for p in INVALID if p.name != "invalid__schema_invalid.xml"], ids=lambda p: p.name
)
def test_invalid_fixture_yields_its_code_without_schemas(bare: ISO20022Adapter, path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    assert error_codes(issues_of(bare, path.read_bytes())) == {code}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_rejection_names_its_iso_reason(adapter: ISO20022Adapter, path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    reply, _ = reject(adapter, path.read_bytes())
    assert reply.code == "RJCT"
    assert reply.status == 400
    root = etree.fromstring(reply.body)
    if report_definition(reply.body).startswith("admi.007"):
        assert xpath(root, "r:RctAck/r:Rpt/r:ReqHdlg/r:StsCd") == ["RJCT"]
        (description,) = xpath(root, "r:RctAck/r:Rpt/r:ReqHdlg/r:Desc")
        assert description.split(" ", 1)[0] == REASON_CODES[code]
    else:
        assert xpath(root, "r:*/r:OrgnlGrpInfAndSts/r:GrpSts") == ["RJCT"]
        assert REASON_CODES[code] in xpath(root, "//r:StsRsnInf/r:Rsn/r:Cd")


def test_schema_issue_location_names_the_offending_element(adapter: ISO20022Adapter) -> None:
    # PmtMtd is missing, so the element the schema stumbles on is PmtInf's NbOfTxs
    issues = issues_of(adapter, (FOLDER / "invalid__schema_invalid.xml").read_bytes())
    assert [i.location for i in issues if i.code == "schema_invalid"] == [
        "/Document/CstmrCdtTrfInitn/PmtInf/NbOfTxs"
    ]


# -- rejected status reports --------------------------------------------------------------------

REJECTIONS: list[tuple[str, str, dict[str, set[str]], set[str]]] = [
    # fixture, report, {OrgnlEndToEndId of each rejected transaction: its reasons}, group reasons
    ("invalid__iban_invalid.xml", "pain.002.001.14", {"ACME-E2E-20240603-2": {"AC01"}}, set()),
    ("invalid__amount_decimals.xml", "pain.002.001.14", {"ACME-E2E-20240603-1": {"AM12"}}, set()),
    ("invalid__currency_unknown.xml", "pain.002.001.14", {"ACME-E2E-20240603-2": {"AM03"}}, set()),
    ("invalid__ctrl_sum_mismatch.xml", "pain.002.001.14", {}, {"AM10"}),
    ("invalid__nb_of_txs_mismatch.xml", "pain.002.001.14", {}, {"AM18"}),
    ("invalid__schema_invalid.xml", "pain.002.001.14", {}, set()),  # its block's: see below
    ("invalid__not_well_formed.xml", "pain.002.001.14", {}, {"FF01"}),
    ("invalid__doctype_forbidden.xml", "pain.002.001.14", {}, {"FF01"}),
    ("invalid__amount_zero.xml", "pacs.002.001.15", {"ACME-INV-2024-0118": {"AM01"}}, set()),
    (
        "invalid__bic_invalid.xml",
        "pacs.002.001.15",
        {"ACME-INV-2024-0117": {"RC01"}, "ACME-INV-2024-0118": {"RC01"}},
        set(),
    ),
    ("invalid__total_amount_mismatch.xml", "pacs.002.001.15", {}, {"AM10"}),
    ("invalid__bah_mismatch.xml", "pacs.002.001.15", {}, {"FF01"}),
]


@pytest.mark.parametrize(
    ("fixture", "report", "transactions", "group"), REJECTIONS, ids=[r[0] for r in REJECTIONS]
)
def test_rejected_report_is_valid_and_names_the_failing_transactions(
    adapter: ISO20022Adapter,
    xsd: Schemas,
    fixture: str,
    report: str,
    transactions: dict[str, set[str]],
    group: set[str],
) -> None:
    raw = (FOLDER / fixture).read_bytes()
    reply, issues = reject(adapter, raw)
    assert report_definition(reply.body) == report
    root = etree.fromstring(reply.body)
    assert_schema_valid(xsd[report], root, f"rejection of {fixture}")

    ns = {"r": etree.QName(root).namespace or ""}
    assert set(xpath(root, "r:*/r:OrgnlGrpInfAndSts/r:StsRsnInf/r:Rsn/r:Cd")) == group
    found: dict[str, set[str]] = {}
    for status in root.xpath("//r:TxInfAndSts", namespaces=ns):
        assert xpath(status, "r:TxSts") == ["RJCT"]
        (end_to_end,) = xpath(status, "r:OrgnlEndToEndId")
        found[end_to_end] = set(xpath(status, "r:StsRsnInf/r:Rsn/r:Cd"))
    assert found == transactions

    if transactions:
        env = adapter.parse(raw, RECEIPT)
        by_e2e = {tx.end_to_end_id: tx for tx in env.body.transactions}
        for status in root.xpath("//r:TxInfAndSts", namespaces=ns):
            tx = by_e2e[xpath(status, "r:OrgnlEndToEndId")[0]]
            assert xpath(status, "r:OrgnlInstrId") == [tx.instr_id]
            assert xpath(status, "r:OrgnlUETR") == [tx.uetr]
            if report.startswith("pacs."):
                assert xpath(status, "r:OrgnlTxId") == [tx.tx_id]
    # every reason is the one reason_codes.json gives the issue's code
    assert set(xpath(root, "//r:StsRsnInf/r:Rsn/r:Cd")) == {
        REASON_CODES[i.code] for i in issues if i.is_error
    }


MALFORMED_ORIGINALS = [
    # a message rejected *because* a value is malformed: the report must not copy it verbatim
    (
        "pacs.008.001.13__basic.xml",
        "949c369c-916f-4c22-a61b-767b637b96b5",
        "c232ab00-9414-11ec-b3c8-9f6bdeced846",  # a version 1 UUID as UETR
        "pacs.002.001.15",
    ),
    (
        "pain.001.001.12__basic.xml",
        "3821bc23-47ae-4a06-b53f-504f2730fdcf",
        "c232ab00-9414-11ec-b3c8-9f6bdeced846",
        "pain.002.001.14",
    ),
    (
        "pacs.008.001.13__basic.xml",
        "2024-05-14T09:30:12.345+02:00",
        "2024-02-30T09:30:12",  # a creation time that is not in the calendar
        "pacs.002.001.15",
    ),
    (
        "pain.001.001.12__basic.xml",
        "<MsgId>ACME-20240603-0001</MsgId>",
        "<MsgId>ACME-20240603-0001-WITH-A-FAR-TOO-LONG-SUFFIX</MsgId>",  # over 35 characters
        "pain.002.001.14",
    ),
    (
        "pacs.008.001.13__basic.xml",
        "<EndToEndId>ACME-INV-2024-0117</EndToEndId>",
        "<EndToEndId>ACME-INV-2024-0117-WITH-A-FAR-TOO-LONG-SUFFIX</EndToEndId>",
        "pacs.002.001.15",
    ),
]


@pytest.mark.parametrize(
    ("fixture", "old", "new", "report"),
    MALFORMED_ORIGINALS,
    ids=["uetr_v1_pacs", "uetr_v1_pain", "credttm_not_a_date", "msgid_too_long", "e2e_too_long"],
)
def test_rejected_report_stays_valid_when_the_original_values_are_malformed(
    adapter: ISO20022Adapter, xsd: Schemas, fixture: str, old: str, new: str, report: str
) -> None:
    raw = (FOLDER / fixture).read_bytes()
    assert raw.count(old.encode()) == 1
    reply, _ = reject(adapter, raw.replace(old.encode(), new.encode()))
    assert report_definition(reply.body) == report
    assert_schema_valid(xsd[report], etree.fromstring(reply.body), f"{fixture} with {new}")


def test_rejected_pacs004_report_names_the_returned_transaction(
    adapter: ISO20022Adapter, xsd: Schemas
) -> None:
    raw = (FOLDER / "pacs.004.001.11__basic.xml").read_bytes()
    raw = raw.replace(b"<IBAN>DE89370400440532013000</IBAN>", b"<IBAN>DE89370400440532013001</IBAN>")
    reply, _ = reject(ISO20022Adapter(), raw)  # business rules only: the return's IBAN is wrong
    assert report_definition(reply.body) == "pacs.002.001.12"
    root = etree.fromstring(reply.body)
    assert_schema_valid(xsd["pacs.002.001.12"], root, "rejected pacs.004")
    ns = {"r": etree.QName(root).namespace or ""}
    (status,) = root.xpath("//r:TxInfAndSts", namespaces=ns)
    assert xpath(status, "r:OrgnlEndToEndId") == ["ACME-INV-2024-0118"]
    assert xpath(status, "r:OrgnlTxId") == ["DEUT20240514-TX-0002"]
    assert xpath(status, "r:OrgnlUETR") == ["3e59f1cf-b1f4-45b5-94fc-67a2007f5ed6"]
    assert xpath(status, "r:StsRsnInf/r:Rsn/r:Cd") == [REASON_CODES["iban_invalid"]]


# -- the SEPA rule set --------------------------------------------------------------------------


def sepa_codes(adapter: ISO20022Adapter, env: Envelope) -> list[str]:
    return [i.code for i in adapter.rule_sets["sepa"](env) if i.is_error]


def test_the_sepa_fixture_passes_the_sepa_rules(adapter: ISO20022Adapter) -> None:
    env = adapter.parse((FOLDER / "pain.001.001.03__sepa.xml").read_bytes(), RECEIPT)
    assert [i for i in adapter.validate(env) if i.is_error] == []
    assert sepa_codes(adapter, env) == []


@pytest.mark.parametrize("path", SEPA, ids=lambda p: p.name)
def test_sepa_fixture_fails_only_its_sepa_rule(adapter: ISO20022Adapter, path: Path) -> None:
    code = path.stem.removeprefix("sepa__")
    env = adapter.parse(path.read_bytes(), RECEIPT)
    assert [i for i in adapter.validate(env) if i.is_error] == [], "the base rules and the XSD pass"
    assert set(sepa_codes(adapter, env)) == {code}
    assert adapter.serialize(env) == path.read_bytes()


def test_an_issue_of_a_payment_block_is_reported_under_that_block(
    adapter: ISO20022Adapter, xsd: Schemas
) -> None:
    """A fault inside PmtInf but in no transaction (here its NbOfTxs) is the block's, not the group's."""
    reply, issues = reject(adapter, (FOLDER / "invalid__schema_invalid.xml").read_bytes())
    root = etree.fromstring(reply.body)
    assert_schema_valid(xsd["pain.002.001.14"], root, "block-level rejection")
    assert any("/PmtInf" in i.location for i in issues if i.is_error)
    assert xpath(root, "r:*/r:OrgnlGrpInfAndSts/r:GrpSts") == ["RJCT"]
    assert xpath(root, "r:*/r:OrgnlPmtInfAndSts/r:PmtInfSts") == ["RJCT"]
    assert xpath(root, "r:*/r:OrgnlPmtInfAndSts/r:StsRsnInf/r:Rsn/r:Cd") == ["FF01"]


NAME_CANARY = "ZZCANARYDEBTORNAME"
ID_CANARY = "CANARY12345"
PRIVATE_ID = (
    f"<Nm>{NAME_CANARY}</Nm><Id><PrvtId><Othr><Id>{ID_CANARY}</Id>"
    "<SchmeNm><Cd>NIDN</Cd></SchmeNm></Othr></PrvtId></Id>"
)


@pytest.mark.parametrize(
    ("party", "key", "masked"),
    [
        (f"<Nm>{NAME_CANARY}</Nm>", NAME_CANARY, "Z…"),  # a name alone: a person, or may be one
        (PRIVATE_ID, ID_CANARY, "…2345"),  # a private person's id, with their name beside it
    ],
    ids=["name-only", "private-id"],
)
def test_a_private_initiating_party_is_a_business_key_never_the_sender(
    adapter: ISO20022Adapter, party: str, key: str, masked: str
) -> None:
    """A person's name or id is neither the sender nor a header: the sender is the marker
    ``private-party``, and the party a business key (pseudonymised by the store) shown masked, as the
    accounts are; the envelope names that key as the one that tells senders apart."""
    env = adapter.parse(pain001("PRIV-1", ["10.00"], initiating_party=party), RECEIPT)
    assert [i for i in adapter.validate(env) if i.is_error] == []
    assert env.sender == env.headers["sender"] == PRIVATE_PARTY == "private-party"
    assert env.headers["initiating_party"] == ""
    assert env.business_keys[PRIVATE_PARTY_KEY] == key and env.masked_keys[PRIVATE_PARTY_KEY] == masked
    assert env.sender_key == PRIVATE_PARTY_KEY
    shown = repr(env) + repr(env.headers) + env.sender + env.receiver + repr(env.masked_keys)
    assert NAME_CANARY not in shown and ID_CANARY not in shown


@pytest.mark.parametrize(
    ("party", "sender"),
    [
        ("<Nm>Acme Trading GmbH</Nm><Id><OrgId><AnyBIC>ACMEDEFF</AnyBIC></OrgId></Id>", "ACMEDEFF"),
        ("<Id><OrgId><LEI>529900T8BM49AURSDO55</LEI></OrgId></Id>", "529900T8BM49AURSDO55"),
        (
            "<Nm>Acme Trading GmbH</Nm><Id><OrgId><Othr><Id>DE-HRB-12345</Id></Othr></OrgId></Id>",
            "DE-HRB-12345",
        ),
    ],
    ids=["bic", "lei", "other-org-id"],
)
def test_an_organisation_initiating_party_is_the_sender(
    adapter: ISO20022Adapter, party: str, sender: str
) -> None:
    env = adapter.parse(pain001("ORG-1", ["10.00"], initiating_party=party), RECEIPT)
    assert env.sender == env.headers["sender"] == env.headers["initiating_party"] == sender
    assert "private_party" not in env.business_keys and env.sender_key == ""
    assert "Acme" not in repr(env.headers)  # an organisation's name is not promoted either


def test_a_private_party_without_name_or_id_is_still_withheld(adapter: ISO20022Adapter) -> None:
    born = (
        "<Id><PrvtId><DtAndPlcOfBirth><BirthDt>1980-01-01</BirthDt><CityOfBirth>Bonn</CityOfBirth>"
        "<CtryOfBirth>DE</CtryOfBirth></DtAndPlcOfBirth></PrvtId></Id>"
    )
    env = adapter.parse(pain001("PRIV-2", ["10.00"], initiating_party=born), RECEIPT)
    assert env.sender == "private-party" and env.headers["initiating_party"] == ""
    assert "private_party" not in env.business_keys and env.sender_key == ""


# -- malformed documents that once broke the business rules -------------------------------------


def pain001_blocks(blocks: Sequence[bytes], count: bytes = b"1") -> bytes:
    """A pain.001.001.03 whose group header declares ``count`` transactions, with these PmtInf blocks."""
    return (
        b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.03"><CstmrCdtTrfInitn><GrpHdr>'
        b"<MsgId>M-1</MsgId><CreDtTm>2024-05-14T08:15:00</CreDtTm><NbOfTxs>" + count + b"</NbOfTxs>"
        b"<InitgPty><Nm>A</Nm></InitgPty></GrpHdr>" + b"".join(blocks) + b"</CstmrCdtTrfInitn></Document>"
    )


def payment_block(transactions: int = 1, agent: bytes = b"<BIC>COBADEFFXXX</BIC>") -> bytes:
    transaction = (
        b"<CdtTrfTxInf><PmtId><EndToEndId>E-1</EndToEndId></PmtId>"
        b'<Amt><InstdAmt Ccy="EUR">10.00</InstdAmt></Amt><Cdtr><Nm>C</Nm></Cdtr>'
        b"<CdtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></CdtrAcct></CdtTrfTxInf>"
    )
    return (
        b"<PmtInf><PmtInfId>P-1</PmtInfId><PmtMtd>TRF</PmtMtd><ReqdExctnDt>2024-05-15</ReqdExctnDt>"
        b"<Dbtr><Nm>D</Nm></Dbtr><DbtrAcct><Id><IBAN>DE89370400440532013000</IBAN></Id></DbtrAcct>"
        b"<DbtrAgt><FinInstnId>"
        + agent
        + b"</FinInstnId></DbtrAgt>"
        + transaction * transactions
        + b"</PmtInf>"
    )


@pytest.mark.parametrize(
    ("count", "code"),
    [
        ("²".encode(), "nb_of_txs_invalid"),  # str.isdigit() takes it, int() does not
        ("٣".encode(), "nb_of_txs_invalid"),  # a digit, but not one of Max15NumericText's
        (b"9" * 5000, "nb_of_txs_mismatch"),  # past the 4300 digits int() reads
        (b"0" * 5000 + b"1", None),  # leading zeros: one transaction, as declared
    ],
    ids=["superscript", "arabic_indic", "5000_digits", "zero_padded"],
)
def test_an_unreadable_transaction_count_is_an_issue(
    bare: ISO20022Adapter, count: bytes, code: str | None
) -> None:
    raw = pain001_blocks([payment_block()], count)
    issues = [i for i in issues_of(bare, raw) if i.location == "/Document/CstmrCdtTrfInitn/GrpHdr/NbOfTxs"]
    assert [i.code for i in issues] == ([code] if code else [])
    assert all(len(i.diagnostics) < 200 for i in issues)  # never the declared digits
    if code:
        reply, _ = reject(bare, raw)
        assert report_definition(reply.body) == "pain.002.001.03"


def test_business_rule_issues_stop_at_their_cap(bare: ISO20022Adapter) -> None:
    """Thousands of bad elements side by side get the first MAX_RULE_ISSUES issues, not one each (each
    location is found among its siblings: one each took quadratic time); the reply still says why."""
    raw = pain001_blocks([payment_block(agent=b"<BIC>X</BIC>" * 3000)])
    issues = issues_of(bare, raw)
    assert len(issues) == MAX_RULE_ISSUES
    assert {i.code for i in issues} == {"bic_invalid"}
    assert issues[1].location == "/Document/CstmrCdtTrfInitn/PmtInf/DbtrAgt/FinInstnId/BIC[2]"
    reply, _ = reject(bare, raw)
    assert xpath(etree.fromstring(reply.body), "r:*/r:OrgnlGrpInfAndSts/r:GrpSts") == ["RJCT"]


def test_counts_are_checked_block_by_block_over_many_blocks(bare: ISO20022Adapter) -> None:
    blocks = [payment_block()] * 300
    blocks[1] = payment_block(2).replace(b"<ReqdExctnDt>", b"<NbOfTxs>3</NbOfTxs><ReqdExctnDt>")
    issues = issues_of(bare, pain001_blocks(blocks, b"301"))
    assert [(i.code, i.location) for i in issues if i.is_error] == [
        ("nb_of_txs_mismatch", "/Document/CstmrCdtTrfInitn/PmtInf[2]/NbOfTxs")
    ]
