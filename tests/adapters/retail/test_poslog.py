"""The ARTS POSLog adapter over every fixture in ``fixtures/retail/poslog``, the NCR corpus, and its edges.

Fixture names say what each must do:

- ``<message type>__<variant>.xml`` (``/`` written ``.``: ``RetailTransaction.Sale__basic.xml``): one
  transaction that parses as that message type with no error issue, round-trips byte for byte and is
  answered 200.
- ``batch__<variant>.xml``: :meth:`split` gives one unit per Transaction, each a POSLog that parses alone.
- ``invalid__<code>.xml``: yields the issue ``<code>`` among its error issues and no other (at parse time
  as :class:`ParseError` issues, otherwise from ``validate``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path

import pytest
from lxml import etree

from adapters.retail.poslog import ARTS_NS, HEADER_KEYS, POSLogAdapter, Transaction
from gateway.adapter import Issue, Outcome, ParseError
from gateway.envelope import Envelope, Receipt
from gateway.stock import Movement, StockSource
from gateway.xml import parse_xml
from tests import retail_messages
from tests.conftest import FIXTURES

FOLDER = FIXTURES / "retail" / "poslog"
ALL = sorted(FOLDER.glob("*.xml"))
INVALID = [p for p in ALL if p.name.startswith("invalid__")]
BATCH = [p for p in ALL if p.name.startswith("batch__")]
VALID = [p for p in ALL if p not in INVALID and p not in BATCH]
RECEIPT = Receipt("test")
PARSE_CODES = {"transaction_missing", "not_poslog", "not_well_formed", "doctype_forbidden"}
REQUIRED = {
    "RetailTransaction.Sale__basic.xml",
    "RetailTransaction.Return__basic.xml",
    "RetailTransaction.Void__cancelled.xml",
    "RetailTransaction.Sale__voided_line.xml",
    "RetailTransaction.Sale__no_namespace.xml",
    "ControlTransaction__signon.xml",
    "batch__three_transactions.xml",
    *(
        f"invalid__{code}.xml"
        for code in (
            "store_missing",
            "sequence_missing",
            "business_day_invalid",
            "quantity_invalid",
            "amount_invalid",
            "total_mismatch",
            *PARSE_CODES,
        )
    ),
}


@pytest.fixture(scope="module")
def adapter() -> POSLogAdapter:
    return POSLogAdapter()


def parse(adapter: POSLogAdapter, name_or_raw: str | bytes) -> Envelope:
    raw = (FOLDER / name_or_raw).read_bytes() if isinstance(name_or_raw, str) else name_or_raw
    return adapter.parse(raw, RECEIPT)


def issues_of(adapter: POSLogAdapter, raw: bytes) -> list[Issue]:
    try:
        env = adapter.parse(raw, RECEIPT)
    except ParseError as exc:
        return list(exc.issues)
    return adapter.validate(env)


def error_codes(issues: Sequence[Issue]) -> set[str]:
    return {i.code for i in issues if i.is_error}


def transactions_in(raw: bytes) -> int:
    root = parse_xml(raw)
    return sum(1 for el in root.iter(etree.Element) if etree.QName(el).localname == "Transaction")


def poslog(body: str, *, retail: str = "", attrs: str = "") -> bytes:
    """A one-transaction POSLog in the ARTS namespace with ``retail`` as the RetailTransaction's content."""
    inner = body or (
        "<RetailStoreID>7</RetailStoreID><WorkstationID>2</WorkstationID><SequenceNumber>40</SequenceNumber>"
        "<BusinessDayDate>2026-11-27</BusinessDayDate>"
        f'<RetailTransaction Version="2.2">{retail}</RetailTransaction>'
    )
    return f'<POSLog xmlns="{ARTS_NS}"><Transaction{attrs}>{inner}</Transaction></POSLog>'.encode()


def sale(seq: int, item: str, qty: str, amount: str, line_attrs: str = "") -> str:
    return (
        f'<LineItem{line_attrs}><SequenceNumber>{seq}</SequenceNumber><Sale ItemType="Stock">'
        f"<ItemID>{item}</ItemID><ExtendedAmount>{amount}</ExtendedAmount><Quantity>{qty}</Quantity>"
        "</Sale></LineItem>"
    )


def grand(amount: str) -> str:
    return f'<Total TotalType="TransactionGrandAmount">{amount}</Total>'


# -- the fixture suite ---------------------------------------------------------------------------------


def test_the_required_fixtures_exist() -> None:
    assert {p.name for p in ALL} >= REQUIRED


def test_the_adapter_is_a_stock_source(adapter: POSLogAdapter) -> None:
    assert isinstance(adapter, StockSource)
    assert adapter.name == "poslog"
    assert dict(adapter.rule_sets) == {}


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture(adapter: POSLogAdapter, path: Path) -> None:
    raw = path.read_bytes()
    assert adapter.detect(raw, "application/xml")
    assert adapter.split(raw) is None
    env = adapter.parse(raw, RECEIPT)
    expected_type = path.name.split("__", 1)[0].replace(".", "/")
    assert env.protocol == "poslog"
    assert env.message_type == expected_type == env.headers["message_type"]
    assert tuple(env.headers) == HEADER_KEYS
    assert all(isinstance(v, str) for v in env.headers.values())
    assert env.control_id == "-".join(
        env.headers[k] for k in ("store_id", "workstation_id", "sequence_number", "business_day")
    )
    assert env.sender == env.headers["store_id"]
    issues = adapter.validate(env)
    assert not error_codes(issues), issues
    assert adapter.serialize(env) == raw
    reply = adapter.respond(Outcome("accepted", env.headers, issues, env.id, env))
    assert reply.status == 200
    assert json.loads(reply.body)["control_id"] == env.control_id
    assert isinstance(env.body, Transaction)
    assert adapter.reported_levels(env) == []


@pytest.mark.parametrize("path", BATCH, ids=lambda p: p.name)
def test_batch_fixture(adapter: POSLogAdapter, path: Path) -> None:
    raw = path.read_bytes()
    assert adapter.detect(raw, None)
    batch = adapter.split(raw)
    assert batch is not None and batch.kind == "POSLog" and batch.raw == raw
    assert len(batch.units) == transactions_in(raw) > 1
    for unit in batch.units:
        assert transactions_in(unit) == 1
        assert adapter.split(unit) is None
        env = adapter.parse(unit, RECEIPT)
        assert not error_codes(adapter.validate(env))


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture(adapter: POSLogAdapter, path: Path) -> None:
    raw = path.read_bytes()
    code = path.name.removeprefix("invalid__").removesuffix(".xml")
    assert adapter.detect(raw, None)
    issues = issues_of(adapter, raw)
    assert error_codes(issues) == {code}, issues
    for issue in issues:
        assert "0042" not in issue.diagnostics and "1187" not in issue.diagnostics
    if code in PARSE_CODES:
        with pytest.raises(ParseError):
            parse(adapter, path.name)
    reply = adapter.respond(Outcome("invalid", {}, issues))
    assert reply.status == (400 if code == "not_well_formed" else 422)
    assert [i["code"] for i in json.loads(reply.body)["issues"]] == [i.code for i in issues]


# -- envelope and headers ----------------------------------------------------------------------------


def test_basic_sale_headers_and_body(adapter: POSLogAdapter) -> None:
    env = parse(adapter, "RetailTransaction.Sale__basic.xml")
    assert env.version == "2.2"
    assert dict(env.headers) == {
        "message_type": "RetailTransaction/Sale",
        "version": "2.2",
        "control_id": "0042-3-1187-2026-11-27",
        "store_id": "0042",
        "workstation_id": "3",
        "sequence_number": "1187",
        "business_day": "2026-11-27",
        "end_time": "2026-11-27T10:15:40",
        "operator_id": "207",
        "currency": "USD",
        "total_amount": "8.63",
        "line_count": "2",
        "skus": "04006381333931,00012345678905",
    }
    tx: Transaction = env.body
    assert [(ln.kind, ln.sequence) for ln in tx.lines] == [
        ("sale", "1"),
        ("sale", "2"),
        ("tax", "3"),
        ("tender", "4"),
    ]
    assert tx.lines[0].quantity == Decimal(2) and tx.lines[0].amount == Decimal("3.00")
    assert tx.lines[2].amount == Decimal("0.64") and tx.lines[3].amount == Decimal("8.63")
    assert tx.grand_total == Decimal("8.63")
    assert env.business_keys == {
        "transaction": "0042-3-1187-2026-11-27",
        "sku": "04006381333931",
        "sku.2": "00012345678905",
    }


def test_the_operator_name_goes_nowhere(adapter: POSLogAdapter) -> None:
    env = parse(adapter, "RetailTransaction.Sale__basic.xml")
    assert "Example Cashier" in env.raw.decode()
    assert "Example Cashier" not in repr(env.headers) + repr(env.body) + repr(env.business_keys)
    assert env.headers["operator_id"] == "207"


def test_version_falls_back_to_the_poslog_root(adapter: POSLogAdapter) -> None:
    raw = poslog(
        "<RetailStoreID>7</RetailStoreID><SequenceNumber>1</SequenceNumber>"
        "<BusinessDayDate>2026-11-27</BusinessDayDate><ControlTransaction/>"
    ).replace(b"<POSLog ", b'<POSLog MajorVersion="6" MinorVersion="0" FixVersion="0" ')
    assert parse(adapter, raw).version == "6.0.0"


def test_poslog_6_business_unit_names_the_store(adapter: POSLogAdapter) -> None:
    raw = poslog(
        '<BusinessUnit><UnitID TypeCode="RetailStore">0815</UnitID></BusinessUnit>'
        "<WorkstationID>1</WorkstationID><SequenceNumber>9</SequenceNumber>"
        "<BusinessDayDate>2026-11-27</BusinessDayDate><ControlTransaction/>"
    )
    env = parse(adapter, raw)
    assert env.headers["store_id"] == "0815" and not adapter.validate(env)


def test_other_transaction_kinds_are_valid_without_stock(adapter: POSLogAdapter) -> None:
    for name, kind in (
        ("ControlTransaction__signon.xml", "ControlTransaction"),
        ("TenderControlTransaction__pickup.xml", "TenderControlTransaction"),
    ):
        env = parse(adapter, name)
        assert env.message_type == kind
        assert env.headers["line_count"] == "0" and env.headers["total_amount"] == ""
        assert adapter.movements(env) == []


def test_message_type_of_a_transaction_with_only_voided_lines(adapter: POSLogAdapter) -> None:
    env = parse(adapter, poslog("", retail=sale(1, "A", "1", "1.00", ' VoidFlag="true"') + grand("0.00")))
    assert env.message_type == "RetailTransaction"
    assert not error_codes(adapter.validate(env))


def test_void_flag_on_the_retail_transaction(adapter: POSLogAdapter) -> None:
    raw = poslog("", retail=sale(1, "A", "1", "1.00")).replace(
        b'<RetailTransaction Version="2.2">', b'<RetailTransaction Version="2.2" VoidFlag="true">'
    )
    env = parse(adapter, raw)
    assert env.message_type == "RetailTransaction/Void" and adapter.movements(env) == []


# -- movements -----------------------------------------------------------------------------------------


def test_sale_movements(adapter: POSLogAdapter) -> None:
    env = parse(adapter, "RetailTransaction.Sale__basic.xml")
    assert adapter.movements(env) == [
        Movement(
            "poslog:0042:3:2026-11-27:1187:line:1", "store:0042", "04006381333931", on_hand=-2, kind="sale"
        ),
        Movement(
            "poslog:0042:3:2026-11-27:1187:line:2", "store:0042", "00012345678905", on_hand=-1, kind="sale"
        ),
    ]


def test_return_movements(adapter: POSLogAdapter) -> None:
    env = parse(adapter, "RetailTransaction.Return__basic.xml")
    assert env.headers["total_amount"] == "-5.39"
    assert adapter.movements(env) == [
        Movement(
            "poslog:0042:3:2026-11-27:1190:line:1", "store:0042", "00012345678905", on_hand=1, kind="return"
        )
    ]


def test_a_voided_transaction_moves_nothing(adapter: POSLogAdapter) -> None:
    env = parse(adapter, "RetailTransaction.Void__cancelled.xml")
    assert env.body.voided and adapter.movements(env) == []


def test_a_voided_line_moves_nothing_and_does_not_count(adapter: POSLogAdapter) -> None:
    env = parse(adapter, "RetailTransaction.Sale__voided_line.xml")
    assert [ln.voided for ln in env.body.lines] == [False, True, False, False, False]
    assert env.headers["line_count"] == "2"
    assert env.headers["skus"] == "04006381333931,00012345678912"
    assert [(m.key.rsplit(":", 1)[1], m.on_hand) for m in adapter.movements(env)] == [("1", -1), ("3", -3)]


@pytest.mark.parametrize(
    "line",
    [
        "<LineItem><SequenceNumber>2</SequenceNumber><VoidFlag>true</VoidFlag><Sale><ItemID>B</ItemID>"
        "<ExtendedAmount>1.00</ExtendedAmount></Sale></LineItem>",
        "<LineItem><SequenceNumber>2</SequenceNumber><Void/><Sale><ItemID>B</ItemID>"
        "<ExtendedAmount>1.00</ExtendedAmount></Sale></LineItem>",
        '<LineItem><SequenceNumber>2</SequenceNumber><Sale VoidFlag="true"><ItemID>B</ItemID>'
        "<ExtendedAmount>1.00</ExtendedAmount></Sale></LineItem>",
    ],
    ids=["VoidFlag-child", "Void-child", "Sale-VoidFlag"],
)
def test_other_ways_to_void_a_line(adapter: POSLogAdapter, line: str) -> None:
    env = parse(adapter, poslog("", retail=sale(1, "A", "1", "2.00") + line + grand("2.00")))
    assert [m.sku for m in adapter.movements(env)] == ["A"]
    assert not error_codes(adapter.validate(env))


def test_a_void_reversal_line_cancels_the_line_it_reverses(adapter: POSLogAdapter) -> None:
    """NCR ACS voids a line by a new voided line with the negated quantity; the original stays unflagged."""
    retail = (
        sale(1, "A", "1", "2.79")
        + sale(2, "A", "1", "2.79")
        + sale(3, "B", "1", "1.00")
        + sale(4, "A", "-1", "-2.79", ' VoidFlag="true"')
        + grand("3.79")
    )
    env = parse(adapter, poslog("", retail=retail))
    assert [ln.voided for ln in env.body.lines] == [False, True, False, True]
    assert [(m.sku, m.key.rsplit(":", 1)[1]) for m in adapter.movements(env)] == [("A", "1"), ("B", "3")]
    assert not error_codes(adapter.validate(env))  # the negative quantity of a reversal is fine


def test_weighed_and_non_stock_items_move_nothing(adapter: POSLogAdapter) -> None:
    env = parse(adapter, "RetailTransaction.Sale__bare_transaction.xml")
    assert env.body.lines[1].weighed  # a fractional quantity in pounds
    assert [m.sku for m in adapter.movements(env)] == ["00012345678912"]
    whole_kilos = (
        "<LineItem><SequenceNumber>1</SequenceNumber><Sale><ItemID>C</ItemID><ExtendedAmount>4.00</ExtendedAmount>"
        '<Quantity UnitOfMeasureCode="KGM">2</Quantity></Sale></LineItem>'
        '<LineItem><SequenceNumber>2</SequenceNumber><Sale ItemType="Deposit"><ItemID>D</ItemID>'
        "<ExtendedAmount>0.25</ExtendedAmount></Sale></LineItem>"
    )
    env = parse(adapter, poslog("", retail=whole_kilos + grand("4.25")))
    assert adapter.movements(env) == []
    assert env.headers["line_count"] == "2"


def test_training_transactions_move_nothing(adapter: POSLogAdapter) -> None:
    env = parse(adapter, poslog("", retail=sale(1, "A", "1", "1.00"), attrs=' TrainingModeFlag="true"'))
    assert env.message_type == "RetailTransaction/Sale" and adapter.movements(env) == []


def test_line_position_keys_lines_without_a_sequence_number(adapter: POSLogAdapter) -> None:
    retail = (
        "<LineItem><Sale><ItemID>A</ItemID></Sale></LineItem>"
        "<LineItem><Sale><ItemID>B</ItemID><Quantity>2</Quantity></Sale></LineItem>"
        + sale(2, "C", "1", "1.00")
    )
    keys = [m.key.rsplit(":", 1)[1] for m in adapter.movements(parse(adapter, poslog("", retail=retail)))]
    assert keys == ["1", "2", "2@3"]  # a repeated number never merges two lines into one ledger key


# -- validation edges ----------------------------------------------------------------------------------


def test_a_negative_quantity_is_invalid(adapter: POSLogAdapter) -> None:
    issues = issues_of(adapter, poslog("", retail=sale(1, "A", "-2", "-3.00")))
    assert error_codes(issues) == {"quantity_invalid"}
    assert issues[0].location == "/POSLog/Transaction/RetailTransaction/LineItem[1]/Sale/Quantity"


def test_an_unreadable_total_is_an_amount_issue(adapter: POSLogAdapter) -> None:
    issues = issues_of(adapter, poslog("", retail=sale(1, "A", "1", "1.00") + grand("NaN")))
    assert error_codes(issues) == {"amount_invalid"}


def test_a_missing_business_day_is_invalid(adapter: POSLogAdapter) -> None:
    raw = poslog("<RetailStoreID>7</RetailStoreID><SequenceNumber>1</SequenceNumber><ControlTransaction/>")
    assert error_codes(issues_of(adapter, raw)) == {"business_day_invalid"}
    raw = raw.replace(
        b"<ControlTransaction/>", b"<BusinessDayDate>2026-02-30</BusinessDayDate><ControlTransaction/>"
    )
    assert error_codes(issues_of(adapter, raw)) == {"business_day_invalid"}


def test_total_check_skips_what_it_cannot_account_for(adapter: POSLogAdapter) -> None:
    reward = (
        "<LineItem><SequenceNumber>2</SequenceNumber><LoyaltyReward><PromotionID>5123</PromotionID>"
        "</LoyaltyReward></LineItem>"
    )
    off = sale(1, "A", "1", "2.00") + grand("1.50")
    assert error_codes(issues_of(adapter, poslog("", retail=off))) == {"total_mismatch"}
    assert not error_codes(issues_of(adapter, poslog("", retail=off + reward)))
    no_amount = "<LineItem><SequenceNumber>1</SequenceNumber><Sale><ItemID>A</ItemID></Sale></LineItem>"
    assert not error_codes(issues_of(adapter, poslog("", retail=no_amount + grand("1.50"))))
    no_total = sale(1, "A", "1", "2.00")
    assert not error_codes(issues_of(adapter, poslog("", retail=no_total)))


def test_a_refund_may_state_its_grand_total_as_a_magnitude(adapter: POSLogAdapter) -> None:
    retail = (
        "<LineItem><SequenceNumber>1</SequenceNumber><Return><ItemID>A</ItemID>"
        "<ExtendedAmount>10.00</ExtendedAmount></Return></LineItem>"
        "<LineItem><SequenceNumber>2</SequenceNumber><Tax><Amount>0.70</Amount></Tax></LineItem>"
    )
    assert not error_codes(issues_of(adapter, poslog("", retail=retail + grand("10.70"))))
    assert not error_codes(issues_of(adapter, poslog("", retail=retail + grand("-10.70"))))
    assert error_codes(issues_of(adapter, poslog("", retail=retail + grand("-9.00")))) == {"total_mismatch"}


# -- parse errors, security, split -------------------------------------------------------------------


def test_a_doctype_is_refused_and_no_entity_is_read(adapter: POSLogAdapter) -> None:
    raw = (FOLDER / "invalid__doctype_forbidden.xml").read_bytes()
    with pytest.raises(ParseError) as caught:
        adapter.parse(raw, RECEIPT)
    assert [i.code for i in caught.value.issues] == ["doctype_forbidden"]
    assert dict(caught.value.headers) == {}
    reply = adapter.respond(Outcome("invalid", caught.value.headers, caught.value.issues))
    shown = reply.body.decode() + repr(caught.value.issues)
    assert "ENTITY-STORE-7731" not in shown and "/etc/hostname" not in shown
    assert adapter.split(raw) is None


def test_not_well_formed_still_names_the_transaction(adapter: POSLogAdapter) -> None:
    with pytest.raises(ParseError) as caught:
        parse(adapter, "invalid__not_well_formed.xml")
    assert caught.value.headers["control_id"] == "0042-3-1191-2026-11-27"


def test_parse_refuses_an_unsplit_batch(adapter: POSLogAdapter) -> None:
    with pytest.raises(ParseError) as caught:
        parse(adapter, "batch__three_transactions.xml")
    assert [i.code for i in caught.value.issues] == ["multiple_transactions"]


def test_a_foreign_namespace_is_not_poslog(adapter: POSLogAdapter) -> None:
    raw = b'<POSLog xmlns="urn:example:other"><Transaction/></POSLog>'
    assert error_codes(issues_of(adapter, raw)) == {"not_poslog"}
    assert adapter.split(raw) is None


def test_the_depth_cap_is_the_adapters(adapter: POSLogAdapter) -> None:
    raw = (FOLDER / "RetailTransaction.Sale__basic.xml").read_bytes()
    assert error_codes(issues_of(POSLogAdapter(max_depth=4), raw)) == {"too_deep"}


def test_an_extension_in_a_relative_namespace_is_read_and_has_a_content_digest(
    adapter: POSLogAdapter,
) -> None:
    """A namespace name that is a relative URI (``xmlns="local"``) is well-formed XML but cannot be put in
    canonical form: the transaction is still read, and its content digest still ignores what surrounds it."""
    tx = (
        b"<Transaction><RetailStoreID>7</RetailStoreID><WorkstationID>1</WorkstationID>"
        b"<SequenceNumber>5</SequenceNumber><BusinessDayDate>2026-11-27</BusinessDayDate>"
        b'<Note xmlns="local-extension">x</Note></Transaction>'
    )
    alone = adapter.parse(b'<POSLog xmlns="' + ARTS_NS.encode() + b'">' + tx + b"</POSLog>", RECEIPT)
    assert alone.control_id == "7-1-5-2026-11-27" and alone.content_sha256
    batch = adapter.split(
        b'<POSLog xmlns="' + ARTS_NS.encode() + b'" xmlns:acs="urn:acs">' + tx + tx + b"</POSLog>"
    )
    assert batch is not None
    assert adapter.parse(batch.units[0], RECEIPT).content_sha256 == alone.content_sha256
    assert (
        adapter.parse(batch.units[0], RECEIPT).content_sha256
        != adapter.parse(batch.units[0].replace(b">x<", b">y<"), RECEIPT).content_sha256
    )


def test_split_units_keep_the_namespaces_and_root_attributes(adapter: POSLogAdapter) -> None:
    batch = adapter.split((FOLDER / "batch__three_transactions.xml").read_bytes())
    assert batch is not None
    root = parse_xml(batch.units[1])
    assert root.tag == f"{{{ARTS_NS}}}POSLog" and root.get("MajorVersion") == "2"
    assert root.nsmap[None] == ARTS_NS and "acs" in root.nsmap
    assert b"<Transaction>" in batch.units[1]
    assert [parse(adapter, u).message_type for u in batch.units] == [
        "ControlTransaction",
        "RetailTransaction/Sale",
        "RetailTransaction/Return",
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id": 1}',
        b"MSH|^~\\&|A|B\r",
        b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:pain.001.001.09'/>",
        b"",
    ],
)
def test_detect_declines_other_payloads(adapter: POSLogAdapter, raw: bytes) -> None:
    assert not adapter.detect(raw, None)


def test_split_returns_none_for_garbage(adapter: POSLogAdapter) -> None:
    assert adapter.split(b"<POSLog><Transaction>") is None
    assert adapter.split(b"") is None


# -- the NCR ACS corpus --------------------------------------------------------------------------------


@pytest.mark.corpus
@pytest.mark.parametrize(("name", "units", "retail"), [("SMALL.xml", 2, 1), ("POSLog.xml", 51, 42)])
def test_corpus(adapter: POSLogAdapter, corpora_dir: Path, name: str, units: int, retail: int) -> None:
    raw = (corpora_dir / "retail" / "kjbreil-poslog" / "sample" / name).read_bytes()
    assert adapter.detect(raw, None)
    batch = adapter.split(raw)
    assert batch is not None and len(batch.units) == units
    envelopes = [adapter.parse(unit, RECEIPT) for unit in batch.units]
    for env in envelopes:
        issues = adapter.validate(env)
        assert not error_codes(issues), (env.control_id, issues)
    assert sum(env.message_type.startswith("RetailTransaction") for env in envelopes) == retail
    for env in envelopes:  # vendor elements (acs:…) never become lines or SKUs
        assert all(not ln.item_id or ln.item_id.isdigit() for ln in env.body.lines)


@pytest.mark.corpus
def test_corpus_known_unit(adapter: POSLogAdapter, corpora_dir: Path) -> None:
    raw = (corpora_dir / "retail" / "kjbreil-poslog" / "sample" / "SMALL.xml").read_bytes()
    batch = adapter.split(raw)
    assert batch is not None
    env = next(
        e for e in (adapter.parse(u, RECEIPT) for u in batch.units) if e.headers["sequence_number"] == "161"
    )
    assert env.headers["store_id"] == "9" and env.headers["workstation_id"] == "34"
    assert env.headers["control_id"] == "9-34-161-2017-09-30"
    assert env.message_type == "RetailTransaction/Sale" and env.version == "2.1"
    assert env.headers["total_amount"] == "1.07" and env.headers["skus"] == "00000000067591"
    assert "FL 34" not in repr(env.headers)  # the OperatorName attribute
    line = next(ln for ln in env.body.lines if ln.item_id == "00000000067591")
    assert line.kind == "sale" and line.quantity == Decimal("0.42") and line.weighed
    assert adapter.movements(env) == []  # weighed: no unit movement


@pytest.mark.corpus
def test_corpus_line_voids_cancel_their_sale(adapter: POSLogAdapter, corpora_dir: Path) -> None:
    raw = (corpora_dir / "retail" / "kjbreil-poslog" / "sample" / "POSLog.xml").read_bytes()
    batch = adapter.split(raw)
    assert batch is not None
    by_sequence: dict[tuple[str, str], Envelope] = {}
    for unit in batch.units:
        env = adapter.parse(unit, RECEIPT)
        if env.message_type.startswith("RetailTransaction"):
            by_sequence[(env.headers["workstation_id"], env.headers["sequence_number"])] = env
    voided = [e for e in by_sequence.values() if any(ln.voided for ln in e.body.lines)]
    assert voided
    for env in voided:
        lines = env.body.lines
        # every reversal (negative quantity) found the sale it cancels
        assert sum(ln.voided and (ln.quantity or 0) < 0 for ln in lines) == sum(
            ln.voided and (ln.quantity or 0) > 0 for ln in lines
        )
        moved = {m.key.rsplit(":", 1)[1] for m in adapter.movements(env)}
        assert moved  # the other items of the transaction still sold
        assert not moved & {ln.sequence for ln in lines if ln.voided}


@pytest.mark.parametrize("status", ["Suspended", "PostVoided", "Totaled"])
def test_only_a_finished_sale_moves_stock(status: str) -> None:
    doc = retail_messages.poslog_sale("7", "1", 5, [("SKU-9", 1)]).replace(
        b'<RetailTransaction Version="2.1">',
        f'<RetailTransaction Version="2.1" TransactionStatus="{status}">'.encode(),
    )
    adapter = POSLogAdapter()
    env = adapter.parse(doc, Receipt("test"))
    moved = adapter.movements(env)
    assert (len(moved), env.message_type) == (
        (1, "RetailTransaction/Sale") if status == "Totaled" else (0, "RetailTransaction/Void")
    )
