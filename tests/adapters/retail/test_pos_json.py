"""The generic POS JSON adapter (``pos_json``) over its fixtures, its model and its JSON Schema.

Fixtures in ``fixtures/retail/pos_json`` are found by glob and their names are the expectation:
``pos.<kind>__<variant>.json`` parses as ``pos/<kind>`` with no error issue, and
``invalid__<code>.json`` yields exactly the error issue ``<code>`` (from ``parse`` or ``validate``).
"""

from __future__ import annotations

import codecs
import copy
import json
import tracemalloc
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from adapters.retail.pos_json import JSON_SCHEMA, POSJSONAdapter, POSTicket, json_schema
from gateway.adapter import Adapter, Issue, Outcome, ParseError
from gateway.envelope import Envelope, Receipt
from gateway.pipeline import classify
from gateway.stock import Movement, StockSource
from tests.conftest import FIXTURES

FOLDER = FIXTURES / "retail" / "pos_json"
ALL = sorted(FOLDER.glob("*.json"))
INVALID = [p for p in ALL if p.name.startswith("invalid__")]
VALID = [p for p in ALL if p not in INVALID]
RECEIPT = Receipt("test")
ADAPTER = POSJSONAdapter()


def _issues(raw: bytes) -> tuple[Envelope | None, list[Issue]]:
    """The envelope (``None`` when parse refused the bytes) and every issue of ``raw``."""
    try:
        env = ADAPTER.parse(raw, RECEIPT)
    except ParseError as exc:
        return None, exc.issues
    return env, ADAPTER.validate(env)


def _errors(raw: bytes) -> list[Issue]:
    return [i for i in _issues(raw)[1] if i.is_error]


def _doc(name: str = "pos.sale__basic.json") -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((FOLDER / name).read_text(encoding="utf-8"))
    return doc


def _raw(doc: object) -> bytes:
    return json.dumps(doc).encode()


def _envelope(doc: object) -> Envelope:
    return ADAPTER.parse(_raw(doc), RECEIPT)


def test_fixture_set_is_complete() -> None:
    names = {p.name for p in ALL}
    for kind_variant in (
        "sale__basic",
        "sale__two_tenders",
        "sale__voided_line",
        "sale__customer",
        "return__basic",
        "void__basic",
        "reserve__click_and_collect",
        "release__basic",
    ):
        assert f"pos.{kind_variant}.json" in names
    for code in (
        "malformed_json",
        "not_an_object",
        "schema_invalid",
        "unsupported_schema",
        "total_mismatch",
        "tender_mismatch",
        "duplicate_line_id",
        "currency_precision",
    ):
        assert f"invalid__{code}.json" in names


def test_adapter_contract() -> None:
    adapter: Adapter = POSJSONAdapter()
    assert adapter.name == "pos_json"
    assert dict(adapter.rule_sets) == {}
    assert adapter.split(b"{}") is None
    assert isinstance(POSJSONAdapter(), StockSource)


# -- the fixtures --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture(path: Path) -> None:
    raw = path.read_bytes()
    assert ADAPTER.detect(raw, "application/json")
    env, issues = _issues(raw)
    assert env is not None
    assert [i for i in issues if i.is_error] == []
    kind = path.name.split("__")[0].removeprefix("pos.")
    doc = json.loads(raw)
    assert isinstance(env.body, POSTicket)
    assert env.protocol == "pos_json"
    assert env.version == "1"
    assert env.message_type == f"pos/{kind}" == env.headers["message_type"]
    assert (
        env.control_id
        == f"{doc['store']}:{doc['register']}:{doc['business_day']}:{doc['ticket']}"
        == env.headers["control_id"]
    )
    assert env.sender == doc["store"]
    assert env.raw == raw
    assert ADAPTER.serialize(env) == raw  # forwarded exactly as received
    reply = ADAPTER.respond(Outcome("accepted", env.headers, issues, env.id, env))
    assert reply.status == 200
    assert json.loads(reply.body)["control_id"] == env.control_id


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture(path: Path) -> None:
    code = path.name.removeprefix("invalid__").removesuffix(".json")
    raw = path.read_bytes()
    assert {i.code for i in _errors(raw)} == {code}
    env, issues = _issues(raw)
    kind = classify(issues)
    assert kind == ("refused" if code == "unsupported_schema" else "invalid")
    reply = ADAPTER.respond(Outcome(kind, env.headers if env else {}, issues))
    assert reply.status == (400 if code == "malformed_json" else 422)
    assert [i["code"] for i in json.loads(reply.body)["issues"]] == [i.code for i in issues]


def test_parse_errors_carry_no_headers() -> None:
    for name in ("invalid__malformed_json.json", "invalid__not_an_object.json"):
        with pytest.raises(ParseError) as caught:
            ADAPTER.parse((FOLDER / name).read_bytes(), RECEIPT)
        assert caught.value.headers == {}
        assert [i.severity for i in caught.value.issues] == ["fatal"]


# -- amounts are exact ---------------------------------------------------------------------------


def test_amounts_are_read_exactly_never_through_binary_float() -> None:
    raw = b"""{"schema": "pos_json/1", "kind": "sale", "store": "S1", "register": "R1", "ticket": "T1",
    "business_day": "2026-11-27", "occurred_at": "2026-11-27T10:15:00Z", "currency": "EUR",
    "lines": [{"line_id": "1", "sku": "A", "quantity": 1, "unit_price": 19.99},
              {"line_id": "2", "sku": "B", "quantity": 1, "unit_price": "19.99"}],
    "tenders": [{"type": "cash", "amount": 39.98}], "total": "39.98"}"""
    env = ADAPTER.parse(raw, RECEIPT)
    assert isinstance(env.body, POSTicket)
    for line in env.body.lines:
        assert type(line.unit_price) is Decimal
        assert line.unit_price.as_tuple() == Decimal("19.99").as_tuple()
    assert env.body.tenders[0].amount.as_tuple() == Decimal("39.98").as_tuple()
    assert ADAPTER.validate(env) == []


def test_a_number_a_float_would_round_is_refused_not_rounded() -> None:
    # float("19.990000000000001") == 19.99: a parse through binary float would accept this line
    doc = _doc()
    raw = _raw(doc).replace(b'"unit_price": "19.99"', b'"unit_price": 19.990000000000001')
    assert b"19.990000000000001" in raw
    issues = _errors(raw)
    assert [(i.code, i.location) for i in issues] == [("schema_invalid", "/lines/0/unit_price")]


def test_the_model_refuses_floats_and_booleans_as_amounts() -> None:
    doc = _doc()
    for bad in (19.99, True):
        doc["lines"][0]["unit_price"] = bad
        with pytest.raises(ValidationError) as caught:
            POSTicket.model_validate(doc)
        assert [e["type"] for e in caught.value.errors()] == ["amount_type"]


@pytest.mark.parametrize("text", ["-1.00", "1e2", " 19.99", "19,99", "NaN", "+5", ""])
def test_amount_strings_are_plain_decimals(text: str) -> None:
    doc = _doc()
    doc["lines"][0]["unit_price"] = text
    assert [(i.code, i.location) for i in _errors(_raw(doc))] == [("schema_invalid", "/lines/0/unit_price")]


def test_negative_amount_and_too_many_decimals() -> None:
    doc = _doc()
    raw = _raw(doc).replace(b'"discount": "0.80"', b'"discount": -0.80')
    raw = raw.replace(b'"tax": "3.20"', b'"tax": "3.20001"')
    assert {(i.code, i.location) for i in _errors(raw)} == {
        ("schema_invalid", "/lines/0/discount"),
        ("schema_invalid", "/lines/0/tax"),
    }


def test_nan_and_infinity_are_not_json() -> None:
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        raw = _raw(_doc()).replace(b'"42.38"', constant)
        assert [i.code for i in _errors(raw)] == ["malformed_json"]


@pytest.mark.parametrize(
    "raw",
    [b"", b"   ", b"\xff\xfe\x00{", b"[" * 100_000 + b"]" * 100_000, b'{"a": 1' + b"9" * 5000 + b"}"],
    ids=["empty", "blank", "not-utf8", "deep", "huge-int"],
)
def test_unreadable_bodies_are_malformed_json(raw: bytes) -> None:
    assert [i.code for i in _errors(raw)] == ["malformed_json"]


@pytest.mark.parametrize("body", [b"[]", b'"pos_json/1"', b"42", b"null", b"true"])
def test_a_body_that_is_not_an_object(body: bytes) -> None:
    assert [i.code for i in _errors(body)] == ["not_an_object"]


# -- schema issues -------------------------------------------------------------------------------


def test_schema_issue_locations_are_json_pointers() -> None:
    doc = _doc()
    del doc["store"]
    doc["lines"][0]["quantity"] = 0
    doc["lines"][0]["colour"] = "red"
    doc["register"] = "R 2"
    doc["tenders"][0]["type"] = "cheque"
    issues = _errors(_raw(doc))
    assert {i.code for i in issues} == {"schema_invalid"}
    assert {i.location: i.diagnostics for i in issues} == {
        "/store": "A required field is missing.",
        "/register": "The text does not match the pattern ^[A-Za-z0-9._:-]{1,64}$.",
        "/lines/0/quantity": "The value must be at least 1.",
        "/lines/0/colour": "This field is not part of the pos_json/1 shape.",
        "/tenders/0/type": "The value must be one of 'card', 'cash', 'gift_card' or 'other'.",
    }


def test_json_pointer_escapes_tilde_and_slash() -> None:
    doc = _doc()
    doc["a/b~c"] = 1
    assert [i.location for i in _errors(_raw(doc))] == ["/a~1b~0c"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", "2"),
        ("quantity", 2.0),
        ("quantity", True),
        ("quantity", 1_000_001),
        ("voided", "false"),
        ("sku", ""),
        ("sku", " SKU"),
        ("sku", "A,B"),
        ("sku", "x" * 65),
        ("line_id", "1/2"),
    ],
)
def test_line_field_types_are_strict(field: str, value: object) -> None:
    doc = _doc()
    doc["lines"][0][field] = value
    assert [(i.code, i.location) for i in _errors(_raw(doc))] == [("schema_invalid", f"/lines/0/{field}")]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("business_day", "2026-02-30"),
        ("business_day", "20261127"),
        ("business_day", 0),
        ("occurred_at", "2026-11-27T10:15:00"),
        ("occurred_at", 1_764_238_500),
        ("occurred_at", "2026-11-27T25:15:00Z"),
        ("currency", "eur"),
        ("currency", "ABC"),
        ("kind", "refund"),
        ("ticket", "x" * 65),
        ("operator", ""),
        ("lines", []),
        ("tenders", {}),
        ("customer", {"name": "Jane"}),
        ("original_ticket", 100),
    ],
)
def test_ticket_field_constraints(field: str, value: object) -> None:
    doc = _doc()
    doc[field] = value
    assert [(i.code, i.location.split("/")[1]) for i in _errors(_raw(doc))] == [("schema_invalid", field)]


def test_missing_schema_member_is_schema_invalid_not_unsupported() -> None:
    doc = _doc()
    del doc["schema"]
    assert [(i.code, i.location) for i in _errors(_raw(doc))] == [("schema_invalid", "/schema")]
    doc["schema"] = "poslog/1"
    assert [(i.code, i.location) for i in _errors(_raw(doc))] == [("schema_invalid", "/schema")]


def test_unsupported_schema_is_a_refusal_and_nothing_else() -> None:
    doc = _doc()
    doc["schema"] = "pos_json/2"
    doc["lines"][0]["quantity"] = 0  # a version we cannot read is not judged by version 1's rules
    env, issues = _issues(_raw(doc))
    assert env is not None
    assert [(i.code, i.severity, i.location) for i in issues] == [("unsupported_schema", "error", "/schema")]
    assert classify(issues) == "refused"
    assert env.version == env.headers["version"] == "2"
    assert ADAPTER.movements(env) == []


def test_values_never_appear_in_issues_or_replies() -> None:
    secrets = {
        "email": "SECRET.PERSON@@nowhere",
        "phone": "call-SECRET-0000",
        "sku": "SECRET\tSKU",
        "kind": "SECRETKIND",
        "store": "SECRET STORE",
        "currency": "SECRETCUR",
        "business_day": "SECRET-DAY",
        "occurred_at": "SECRET-TIME",
        "unit_price": "SECRET-PRICE",
        "amount": "-123456.78",
        "line_id": "SECRET LINE",
        "extra": "SECRET-EXTRA-VALUE",
    }
    doc = _doc()
    doc["customer"] = {"email": secrets["email"], "phone": secrets["phone"]}
    doc["lines"][0].update(sku=secrets["sku"], unit_price=secrets["unit_price"], line_id=secrets["line_id"])
    doc["tenders"][0]["amount"] = secrets["amount"]
    doc.update(kind=secrets["kind"], store=secrets["store"], currency=secrets["currency"])
    doc.update(business_day=secrets["business_day"], occurred_at=secrets["occurred_at"])
    doc["unknown"] = secrets["extra"]
    env, issues = _issues(_raw(doc))
    assert env is not None
    assert len(issues) == len(secrets)  # every bad value is reported ...
    reply = ADAPTER.respond(Outcome(classify(issues), env.headers, issues, env.id)).body.decode()
    for value in secrets.values():  # ... and none is repeated
        assert value not in reply
        assert json.dumps(value)[1:-1] not in reply
        for issue in issues:
            assert value not in issue.location
            assert value not in issue.diagnostics
    assert "customer_email" not in env.business_keys
    assert env.sensitivity == "pii"


def test_malformed_json_diagnostics_name_a_position_not_content() -> None:
    raw = b'{"schema": "pos_json/1", "customer": {"email": "SECRET@example.com" "x"}}'
    (issue,) = _errors(raw)
    assert issue.code == "malformed_json"
    assert "SECRET" not in issue.diagnostics
    assert "line 1, column" in issue.diagnostics


# -- business rules ------------------------------------------------------------------------------


def test_rules_are_reported_together_with_locations() -> None:
    doc = _doc()
    doc["currency"] = "JPY"
    doc["lines"].append(dict(doc["lines"][0]))
    doc["tenders"][0]["amount"] = "1.00"
    issues = _errors(_raw(doc))
    assert [(i.code, i.location) for i in issues] == [
        ("duplicate_line_id", "/lines/1/line_id"),
        ("total_mismatch", "/total"),
        ("tender_mismatch", "/tenders"),
        ("currency_precision", "/total"),
        ("currency_precision", "/lines/0/unit_price"),
        ("currency_precision", "/lines/0/discount"),
        ("currency_precision", "/lines/0/tax"),
        ("currency_precision", "/lines/1/unit_price"),
        ("currency_precision", "/lines/1/discount"),
        ("currency_precision", "/lines/1/tax"),
        ("currency_precision", "/tenders/0/amount"),
    ]


def test_voided_lines_do_not_count_toward_the_total() -> None:
    doc = _doc("pos.sale__voided_line.json")
    doc["lines"][1]["voided"] = False
    assert [i.code for i in _errors(_raw(doc))] == ["total_mismatch"]


def test_tenders_are_checked_for_sales_only() -> None:
    for kind in ("return", "void", "reserve", "release"):
        doc = _doc()
        doc["kind"] = kind
        doc["tenders"] = []
        assert _errors(_raw(doc)) == [], kind
    doc = _doc()
    doc["tenders"] = []
    assert [i.code for i in _errors(_raw(doc))] == ["tender_mismatch"]


def test_equal_amounts_written_differently_match() -> None:
    doc = _doc()
    doc["total"] = "42.380"  # the same amount, but a third decimal EUR does not have
    assert [(i.code, i.location) for i in _errors(_raw(doc))] == [("currency_precision", "/total")]
    doc = _doc()
    doc.update(currency="BHD", total="42.380")
    doc["tenders"][0]["amount"] = "42.38"
    assert _errors(_raw(doc)) == []


# -- envelope ------------------------------------------------------------------------------------


def test_headers_of_the_basic_sale() -> None:
    env = ADAPTER.parse((FOLDER / "pos.sale__basic.json").read_bytes(), RECEIPT)
    assert dict(env.headers) == {
        "message_type": "pos/sale",
        "version": "1",
        "control_id": "S001:R2:2026-11-27:T-000123",
        "store_id": "S001",
        "register_id": "R2",
        "ticket": "T-000123",
        "business_day": "2026-11-27",
        "currency": "EUR",
        "total_amount": "42.38",
        "line_count": "1",
        "skus": "SKU-RED-M",
    }
    assert dict(env.business_keys) == {"ticket": "T-000123", "sku": "SKU-RED-M"}
    assert dict(env.masked_keys) == {}
    assert env.sensitivity == "none"
    assert env.correlation_id == ""


def test_headers_list_each_sku_once_and_amounts_as_plain_decimals() -> None:
    env = ADAPTER.parse((FOLDER / "pos.sale__two_tenders.json").read_bytes(), RECEIPT)
    assert env.headers["total_amount"] == "45.82"  # a JSON number, read exactly
    doc = _doc("pos.reserve__click_and_collect.json")
    doc["lines"].append({**doc["lines"][0], "line_id": "3"})
    doc["total"] = 100
    env = _envelope(doc)
    assert env.headers["skus"] == "SKU-RED-M,SKU-TEE-BLK-L"
    assert env.headers["line_count"] == "3"
    assert env.headers["total_amount"] == "100"


@pytest.mark.parametrize("total", ["1e999999999", "1e-999999999", "-1e999999999"])
def test_an_amount_a_billion_digits_long_written_out_is_no_amount(total: str) -> None:
    """1e999999999 is a JSON number Decimal reads at once; written out in fixed-point notation for the
    total_amount header it took a billion digits (a gigabyte and seconds per message): it is no amount,
    and the schema says so."""
    raw = (
        (FOLDER / "pos.sale__basic.json")
        .read_bytes()
        .replace(b'"total": "42.38"', f'"total": {total}'.encode())
    )
    tracemalloc.start()
    try:
        env = ADAPTER.parse(raw, RECEIPT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000
    assert env.headers.get("total_amount", "") == ""  # an empty header is left out
    assert "/total" in {i.location for i in ADAPTER.validate(env) if i.is_error}


def test_customer_keys_are_masked_and_the_message_is_pii() -> None:
    env = ADAPTER.parse((FOLDER / "pos.sale__customer.json").read_bytes(), RECEIPT)
    assert dict(env.business_keys) == {
        "ticket": "T-000126",
        "sku": "SKU-MUG-01",
        "customer_email": "jane.doe@example.com",
        "customer_phone": "+44 20 7946 0123",
    }
    assert dict(env.masked_keys) == {"customer_email": "j***@example.com", "customer_phone": "***0123"}
    assert env.sensitivity == "pii"
    assert "jane" not in json.dumps(dict(env.headers))


def test_return_names_its_original_ticket() -> None:
    env = ADAPTER.parse((FOLDER / "pos.return__basic.json").read_bytes(), RECEIPT)
    assert env.correlation_id == "T-000123"


def test_parse_is_tolerant_and_keeps_readable_headers() -> None:
    env = ADAPTER.parse((FOLDER / "invalid__schema_invalid.json").read_bytes(), RECEIPT)
    assert isinstance(env.body, dict)
    assert env.control_id == "S001:R2:2026-11-27:T-000142"
    assert env.headers["total_amount"] == "42.38"
    doc: dict[str, Any] = {
        "schema": "pos_json/1",
        "kind": "exchange",
        "store": "S 1",
        "register": "R1",
        "ticket": 7,
        "total": "-1",
        "lines": [{"sku": "A"}, "x", {"sku": "B,C"}],
        "customer": {"email": "not an address"},
    }
    env = _envelope(doc)
    assert dict(env.headers) == {
        "message_type": "",
        "version": "1",
        "control_id": "",
        "register_id": "R1",
        "line_count": "3",
        "skus": "A",
    }
    assert dict(env.business_keys) == {"sku": "A"}
    assert env.sensitivity == "pii"
    assert env.sender == ""
    assert {i.code for i in ADAPTER.validate(env)} == {"schema_invalid"}


# -- stock movements -----------------------------------------------------------------------------


def _movements(name: str) -> list[Movement]:
    return ADAPTER.movements(ADAPTER.parse((FOLDER / name).read_bytes(), RECEIPT))


def test_sale_takes_stock_off_hand_and_skips_voided_lines() -> None:
    assert _movements("pos.sale__basic.json") == [
        Movement(
            "pos_json:S001:R2:2026-11-27:T-000123:line:1:sale",
            "store:S001",
            "SKU-RED-M",
            on_hand=-2,
            kind="sale",
        )
    ]
    assert [m.sku for m in _movements("pos.sale__voided_line.json")] == ["SKU-RED-M"]


def test_return_puts_stock_back() -> None:
    assert _movements("pos.return__basic.json") == [
        Movement(
            "pos_json:S001:R1:2026-11-28:T-000131:line:1:return",
            "store:S001",
            "SKU-RED-M",
            on_hand=1,
            kind="return",
        )
    ]


def test_void_moves_nothing() -> None:
    assert _movements("pos.void__basic.json") == []


def test_reserve_and_release() -> None:
    prefix = "pos_json:S002:CNC:2026-11-27:CC-2026-000045:line"
    assert _movements("pos.reserve__click_and_collect.json") == [
        Movement(f"{prefix}:1:reserve", "store:S002", "SKU-RED-M", reserved=2, kind="reserve"),
        Movement(f"{prefix}:2:reserve", "store:S002", "SKU-TEE-BLK-L", reserved=1, kind="reserve"),
    ]
    released = _movements("pos.release__basic.json")
    assert [(m.sku, m.on_hand, m.reserved, m.kind) for m in released] == [
        ("SKU-RED-M", 0, -2, "release"),
        ("SKU-TEE-BLK-L", 0, -1, "release"),
    ]
    assert released[0].key == "pos_json:S002:CNC:2026-11-30:CC-2026-000046:line:1:release"


def test_no_movements_from_a_body_that_is_not_a_ticket() -> None:
    assert _movements("invalid__schema_invalid.json") == []
    assert _movements("invalid__unsupported_schema.json") == []
    assert (
        ADAPTER.reported_levels(ADAPTER.parse((FOLDER / "pos.sale__basic.json").read_bytes(), RECEIPT)) == []
    )


# -- detect --------------------------------------------------------------------------------------


def test_detect() -> None:
    basic = (FOLDER / "pos.sale__basic.json").read_bytes()
    assert ADAPTER.detect(b" \r\n\t" + basic, None)
    assert ADAPTER.detect(codecs.BOM_UTF8 + basic, None)
    assert ADAPTER.detect((FOLDER / "invalid__malformed_json.json").read_bytes(), None)
    assert not ADAPTER.detect(b'{"id": 450789469, "line_items": []}', "application/json")
    assert not ADAPTER.detect(
        b'<?xml version="1.0"?><POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/"/>', None
    )
    assert not ADAPTER.detect(b'[{"schema": "pos_json/1"}]', None)
    assert not ADAPTER.detect(b'{"pad": "' + b" " * 4096 + b'", "schema": "pos_json/1"}', None)
    for junk in (b"", b"{", b"\x00" * 10, b"\xff\xfe{"):
        assert not ADAPTER.detect(junk, None)
    # a memoryview, as a listener may hand over
    assert ADAPTER.detect(memoryview(basic), None)


# -- the published JSON Schema -------------------------------------------------------------------


def test_json_schema_is_the_model_schema_with_id_and_title() -> None:
    schema = json_schema()
    assert schema == JSON_SCHEMA
    assert schema["$id"] and schema["title"]
    assert {k: v for k, v in schema.items() if k not in ("$id", "$schema", "title")} == {
        k: v for k, v in POSTicket.model_json_schema().items() if k != "title"
    }
    schema["properties"].clear()  # a copy: the published constant is untouched
    assert JSON_SCHEMA["properties"]["lines"]["minItems"] == 1
    assert json.loads(json.dumps(JSON_SCHEMA)) == JSON_SCHEMA


def _schema_validator() -> Any:
    jsonschema = pytest.importorskip(
        "jsonschema", reason="the jsonschema package is not installed (it comes with the dev extra's camt053)"
    )
    cls = jsonschema.validators.validator_for(JSON_SCHEMA)
    cls.check_schema(JSON_SCHEMA)
    return cls(JSON_SCHEMA, format_checker=cls.FORMAT_CHECKER)


SCHEMA_VALID = [p for p in ALL if p.name.startswith("pos.") or p.stem.removeprefix("invalid__") in (
    "total_mismatch", "tender_mismatch", "duplicate_line_id", "currency_precision")]  # fmt: skip
"""The valid fixtures, and those whose fault is a rule the JSON Schema cannot express."""


@pytest.mark.parametrize("path", SCHEMA_VALID, ids=lambda p: p.name)
def test_the_json_schema_accepts_the_valid_fixtures(path: Path) -> None:
    validator = _schema_validator()
    errors = [e.message for e in validator.iter_errors(json.loads(path.read_bytes()))]
    assert errors == []


def test_the_json_schema_refuses_what_the_model_refuses() -> None:
    validator = _schema_validator()
    doc = json.loads((FOLDER / "invalid__schema_invalid.json").read_bytes())
    assert [list(e.absolute_path) for e in validator.iter_errors(doc)] == [["lines", 0, "quantity"]]
    for path, value in [
        (("lines", 0, "unit_price"), "19.99999"),
        (("lines", 0, "unit_price"), "-1"),
        (("lines", 0, "unit_price"), -1),
        (("lines", 0, "unit_price"), "1e2"),
        (("lines", 0, "quantity"), 1.5),
        (("lines", 0, "sku"), "A,B"),
        (("lines", 0, "voided"), "no"),
        (("store",), "S 1"),
        (("currency",), "eur"),
        (("business_day",), "20261127"),
        (("occurred_at",), "2026-11-27T10:15:00"),
        (("schema",), "pos_json/2"),
        (("kind",), "refund"),
        (("extra",), 1),
    ]:
        doc = _doc()
        target: Any = doc
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value
        assert not validator.is_valid(doc), path
        with pytest.raises(ValidationError):
            POSTicket.model_validate(copy.deepcopy(doc))
