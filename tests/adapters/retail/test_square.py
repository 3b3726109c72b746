"""The Square webhook adapter (``square``) over its fixtures.

Fixtures in ``fixtures/retail/square`` are found by glob and their names are the expectation:
``<event type>__<variant>.json`` parses as that event type with no error issue, round-trips and is
answered 200; ``invalid__<code>.json`` yields exactly the error issue ``<code>`` (as a ParseError issue
or from ``validate``). Square is not in the shared corpus; the fixtures follow Square's documented
event examples.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import adapters.retail.square as square_module
from adapters import BUILTIN_ADAPTERS
from adapters.finance.identifiers import currency_exponent
from adapters.retail.shopify import ShopifyAdapter
from adapters.retail.square import EVENT_TYPES, HEADER_KEYS, SquareAdapter, SquareEvent
from gateway.adapter import Adapter, Issue, Outcome, OutcomeKind, ParseError
from gateway.envelope import Envelope, Receipt
from gateway.pipeline import classify
from gateway.stock import Movement, ReportedLevel, StockSource
from tests.conftest import FIXTURES

FOLDER = FIXTURES / "retail" / "square"
ALL = sorted(FOLDER.glob("*.json"))
INVALID = [p for p in ALL if p.name.startswith("invalid__")]
VALID = [p for p in ALL if p not in INVALID]
ADAPTER = SquareAdapter()
RECEIPT = Receipt("http", content_type="application/json")
MERCHANT = "6SSW7HV8K2ST5"

REQUIRED_VALID = {
    "payment.created__basic.json",
    "payment.updated__completed.json",
    "order.created__basic.json",
    "order.updated__basic.json",
    "refund.created__basic.json",
    "inventory.count.updated__basic.json",
    "payment.created__jpy.json",
}
CODES = {
    "malformed_json",
    "not_an_object",
    "event_type_missing",
    "event_id_missing",
    "merchant_missing",
    "unsupported_event_type",
    "amount_invalid",
    "currency_invalid",
    "object_missing",
}
PII_KEYS = {
    "buyer_email_address",
    "email_address",
    "phone_number",
    "given_name",
    "family_name",
    "first_name",
    "last_name",
    "address_line_1",
    "address_line_2",
    "locality",
    "postal_code",
    "last_4",
    "bin",
    "fingerprint",
}
"""Personal data and card details: never in headers, keys, issues or replies."""


def parse(path: Path) -> Envelope:
    return ADAPTER.parse(path.read_bytes(), RECEIPT)


def fixture(name: str) -> Envelope:
    return parse(FOLDER / name)


def event_type_of(path: Path) -> str:
    return path.name.split("__", 1)[0]


def issues_of(raw: bytes) -> list[Issue]:
    try:
        env = ADAPTER.parse(raw, RECEIPT)
    except ParseError as exc:
        return list(exc.issues)
    return ADAPTER.validate(env)


def error_codes(issues: list[Issue]) -> set[str]:
    return {i.code for i in issues if i.is_error}


def pii_values(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in PII_KEYS and isinstance(value, str) and value.strip():
                yield value.strip()
            else:
                yield from pii_values(value)
    elif isinstance(node, list):
        for item in node:
            yield from pii_values(item)


def shown_texts(raw: bytes) -> list[str]:
    """Everything the gateway may show or store of a message outside its raw bytes."""
    try:
        env = ADAPTER.parse(raw, RECEIPT)
    except ParseError as exc:
        reply = ADAPTER.respond(Outcome("invalid", exc.headers, exc.issues))
        return [str(exc), repr(exc.issues), repr(dict(exc.headers)), reply.body.decode()]
    issues = ADAPTER.validate(env)
    kind: OutcomeKind = classify(issues)
    reply = ADAPTER.respond(Outcome(kind, env.headers, issues, env.id, env))
    return [
        repr(env).replace(repr(env.raw), "<raw>"),  # Envelope.raw is the raw body, shown by Envelope's repr
        json.dumps(dict(env.headers)),
        repr(issues),
        repr(dict(env.masked_keys)),
        repr(ADAPTER.reported_levels(env)),
        reply.body.decode(),
    ]


# -- the adapter's surface ------------------------------------------------------------------------


def test_the_adapter_meets_the_adapter_and_stock_contracts() -> None:
    adapter: Adapter = SquareAdapter()
    assert adapter.name == "square"
    assert dict(adapter.rule_sets) == {}
    assert isinstance(adapter, StockSource)
    assert adapter.split(b"{}") is None
    assert set(square_module.__all__) >= {"EVENT_TYPES", "HEADER_KEYS", "SquareAdapter"}
    assert {
        "payment.created",
        "payment.updated",
        "order.created",
        "order.updated",
        "inventory.count.updated",
        "refund.created",
        "refund.updated",
    } == EVENT_TYPES


# -- the folder -------------------------------------------------------------------------------------


def test_the_fixtures_cover_the_event_types_and_issue_codes() -> None:
    assert {p.name for p in VALID} >= REQUIRED_VALID
    assert {event_type_of(p) for p in VALID} <= EVENT_TYPES
    assert {p.stem.removeprefix("invalid__") for p in INVALID} == CODES


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_fixture_is_claimed_by_the_square_adapter_alone(path: Path) -> None:
    raw = path.read_bytes()
    constructors: dict[str, Callable[[], Any]] = {
        **BUILTIN_ADAPTERS,
        "shopify": ShopifyAdapter,
        "square": SquareAdapter,
    }
    claimed = [name for name, make in constructors.items() if make().detect(raw, "application/json")]
    assert claimed == ["square"]


def test_detect_is_cheap_and_never_raises() -> None:
    for raw in (b"", b"MSH|^~\\&|", b"<Document/>", b"{}", b'{"merchant_id": "M"}', b"\xff\xfe{", b"[1]"):
        assert ADAPTER.detect(raw, None) is False
    assert ADAPTER.detect(b'{"merchant_id": "M", "event_id": "E", "data": {}}', None)


# -- valid fixtures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_parses_as_its_event_type(path: Path) -> None:
    payload = json.loads(path.read_bytes(), parse_float=Decimal)
    env = parse(path)
    assert env.protocol == "square"
    assert env.version == ""
    assert env.message_type == event_type_of(path) == env.headers["event_type"] == payload["type"]
    assert env.control_id == payload["event_id"] == env.headers["control_id"] == env.headers["event_id"]
    assert env.sender == payload["merchant_id"] == env.headers["merchant_id"]
    assert env.headers["created_at"] == payload["created_at"]
    assert env.headers["object_id"] == payload["data"]["id"]
    assert isinstance(env.body, SquareEvent) and env.body.payload == payload
    assert set(env.headers) <= HEADER_KEYS
    assert all(isinstance(v, str) for v in env.headers.values())


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_has_no_error_issue(path: Path) -> None:
    assert [i for i in ADAPTER.validate(parse(path)) if i.is_error] == []


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_round_trips(path: Path) -> None:
    assert ADAPTER.serialize(parse(path)) == path.read_bytes()


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_is_answered_200_json(path: Path) -> None:
    env = parse(path)
    reply = ADAPTER.respond(Outcome("accepted", env.headers, [], env.id, env))
    assert (reply.status, reply.code, reply.content_type) == (200, "accepted", "application/json")
    body = json.loads(reply.body)
    assert (body["control_id"], body["message_type"], body["id"]) == (
        env.control_id,
        env.message_type,
        env.id,
    )


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_no_square_message_moves_stock(path: Path) -> None:
    assert ADAPTER.movements(parse(path)) == []


def test_payment_headers_keys_and_sensitivity() -> None:
    env = fixture("payment.created__basic.json")
    assert dict(env.headers) == {
        "message_type": "payment.created",
        "store_id": "L1NN6Q4P3ZBMB",
        "control_id": "13b867cf-db3d-4b1c-90b6-2f32a9d78124",
        "event_type": "payment.created",
        "merchant_id": MERCHANT,
        "event_id": "13b867cf-db3d-4b1c-90b6-2f32a9d78124",
        "created_at": "2024-09-03T18:41:07.119Z",
        "object_id": "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY",
        "payment_id": "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY",
        "order_id": "pRsEfB6T4ClOxfWw2XvTzYtuM6eZY",
        "status": "APPROVED",
        "location_id": "L1NN6Q4P3ZBMB",
        "amount_minor": "1999",
        "currency": "USD",
        "total_amount": "19.99",
    }
    assert dict(env.business_keys) == {
        "payment_id": "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY",
        "order_id": "pRsEfB6T4ClOxfWw2XvTzYtuM6eZY",
        "buyer_email": "linus.pauling@example.com",
    }
    assert dict(env.masked_keys) == {"buyer_email": "l***@example.com"}
    assert env.sensitivity == "pii"
    assert ADAPTER.reported_levels(env) == []


def test_completed_payment_carries_its_total_with_the_tip() -> None:
    env = fixture("payment.updated__completed.json")
    assert env.headers["status"] == "COMPLETED"
    assert (env.headers["amount_minor"], env.headers["currency"], env.headers["total_amount"]) == (
        "2299",
        "USD",
        "22.99",
    )


def test_money_is_decimal_in_major_units() -> None:
    for name, minor, currency, major in [
        ("payment.created__basic.json", 1999, "USD", "19.99"),
        ("payment.updated__completed.json", 2299, "USD", "22.99"),
        ("payment.created__jpy.json", 1500, "JPY", "1500"),
        ("refund.created__basic.json", 500, "USD", "5.00"),
    ]:
        headers = fixture(name).headers
        assert (headers["amount_minor"], headers["currency"], headers["total_amount"]) == (
            str(minor),
            currency,
            major,
        )
        total = Decimal(headers["total_amount"])
        exponent = currency_exponent(currency)
        assert exponent is not None
        assert total == Decimal(minor).scaleb(-exponent)
        assert total.as_tuple().exponent == -exponent  # as many decimals as the currency has
    assert fixture("payment.created__jpy.json").sensitivity == "none"


def test_refund_headers() -> None:
    env = fixture("refund.created__basic.json")
    refund_id = "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY_KlWP8IC1557ddwc9QWTKrCVU6m0JXDz15R2Qym5eQfR"
    assert {k: env.headers[k] for k in ("refund_id", "payment_id", "status", "order_id", "location_id")} == {
        "refund_id": refund_id,
        "payment_id": "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY",
        "status": "PENDING",
        "order_id": "qB3xN7pWm2YtRv5LcZ8kGd1HfSeZY",
        "location_id": "L1NN6Q4P3ZBMB",
    }
    assert dict(env.business_keys) == {
        "refund_id": refund_id,
        "payment_id": "R2B3Z8WMVt3EAmzYWLZvz7Y69EbZY",
        "order_id": "qB3xN7pWm2YtRv5LcZ8kGd1HfSeZY",
    }
    assert env.sensitivity == "none"


@pytest.mark.parametrize(
    ("name", "state"), [("order.created__basic.json", "OPEN"), ("order.updated__basic.json", "COMPLETED")]
)
def test_order_headers(name: str, state: str) -> None:
    env = fixture(name)
    assert {k: env.headers[k] for k in ("order_id", "state", "location_id")} == {
        "order_id": "pRsEfB6T4ClOxfWw2XvTzYtuM6eZY",
        "state": state,
        "location_id": "L1NN6Q4P3ZBMB",
    }
    assert dict(env.business_keys) == {"order_id": "pRsEfB6T4ClOxfWw2XvTzYtuM6eZY"}
    assert env.sensitivity == "none"


def test_inventory_counts_report_whole_in_stock_levels() -> None:
    env = fixture("inventory.count.updated__basic.json")
    assert env.headers["count"] == "4"
    # the fractional count (2.5) and the WASTE count are skipped
    assert ADAPTER.reported_levels(env) == [
        ReportedLevel("square", "L1NN6Q4P3ZBMB", "FGQ5JJ4UGOLAZHRKMBHAGZFR", 12),
        ReportedLevel("square", "LTK9C2XQ7M0JH", "Y7NKQ4RZ2LHXW6TB3MJCVP5D", 0),
    ]


def test_api_version_in_the_body_is_the_envelope_version() -> None:
    raw = (
        (FOLDER / "order.created__basic.json")
        .read_bytes()
        .replace(b'{"merchant_id"', b'{"api_version":"2024-08-21","merchant_id"', 1)
    )
    assert ADAPTER.parse(raw, RECEIPT).version == "2024-08-21"


# -- invalid fixtures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_yields_its_code(path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    assert error_codes(issues_of(path.read_bytes())) == {code}


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_is_answered_with_its_issue(path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    try:
        env = parse(path)
    except ParseError as exc:
        headers, issues = dict(exc.headers), list(exc.issues)
    else:
        headers, issues = dict(env.headers), ADAPTER.validate(env)
    reply = ADAPTER.respond(Outcome(classify(issues), headers, issues))
    assert reply.status == (400 if code == "malformed_json" else 422)
    body = json.loads(reply.body)
    assert [i["code"] for i in body["issues"]] == [i.code for i in issues]


def test_an_unreadable_event_still_names_its_event_id() -> None:
    with pytest.raises(ParseError) as caught:
        fixture("invalid__malformed_json.json")
    assert dict(caught.value.headers) == {
        "control_id": "13b867cf-db3d-4b1c-90b6-2f32a9d78124",
        "event_id": "13b867cf-db3d-4b1c-90b6-2f32a9d78124",
        "message_type": "payment.created",
        "merchant_id": MERCHANT,
    }


def test_an_unsupported_event_type_parses_and_is_refused() -> None:
    env = fixture("invalid__unsupported_event_type.json")  # no ParseError
    assert classify(ADAPTER.validate(env)) == "refused"
    assert dict(env.business_keys) == {}


def test_money_issues_point_at_the_amount() -> None:
    issues = ADAPTER.validate(fixture("invalid__amount_invalid.json"))
    assert [(i.code, i.location) for i in issues] == [
        ("amount_invalid", "/data/object/payment/amount_money/amount")
    ]
    issues = ADAPTER.validate(fixture("invalid__currency_invalid.json"))
    assert [(i.code, i.location) for i in issues] == [
        ("currency_invalid", "/data/object/payment/amount_money/currency"),
        ("currency_invalid", "/data/object/payment/total_money/currency"),
    ]


def test_a_conflicting_redelivery_is_answered_200() -> None:
    env = fixture("payment.created__basic.json")
    conflict = [Issue("error", "control_id_conflict", "", "This control id was seen with other content.")]
    reply = ADAPTER.respond(Outcome("invalid", env.headers, conflict, env.id))
    assert (reply.status, reply.code) == (200, "duplicate")


# -- personal data and card details ---------------------------------------------------------------------


def test_each_issue_code_has_one_fixed_sentence() -> None:
    sentences: dict[str, set[str]] = {}
    for path in ALL:
        for issue in issues_of(path.read_bytes()):
            sentences.setdefault(issue.code, set()).add(issue.diagnostics)
    assert sentences and all(len(s) == 1 for s in sentences.values())


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_no_personal_value_or_card_detail_is_shown(path: Path) -> None:
    raw = path.read_bytes()
    # the unreadable fixture is a cut-off copy of payment.created__basic.json: its secrets are that payment's
    source = FOLDER / "payment.created__basic.json" if path.name == "invalid__malformed_json.json" else path
    secrets = set(pii_values(json.loads(source.read_bytes())))
    for text in shown_texts(raw):
        for secret in secrets:
            assert secret.lower() not in text.lower(), (path.name, secret)


def test_the_card_fixtures_do_carry_card_details() -> None:
    """The check above is only worth something if the payments hold what it looks for."""
    secrets = set(pii_values(json.loads((FOLDER / "payment.created__basic.json").read_bytes())))
    assert {"8317", "453275", "linus.pauling@example.com", "500 Electric Avenue", "Pauling"} <= secrets


def test_a_completed_order_read_from_the_orders_api_moves_its_mapped_lines() -> None:
    from adapters.retail.square import order_movements

    order = {
        "id": "ord-1",
        "location_id": "L1",
        "state": "COMPLETED",
        "line_items": [
            {"uid": "a", "catalog_object_id": "VAR-1", "quantity": "2"},
            {"uid": "b", "catalog_object_id": "VAR-2", "quantity": "0.5"},  # weighed: no movement
            {"uid": "c", "catalog_object_id": "VAR-9", "quantity": "1"},  # not mapped
        ],
        "returns": [{"return_line_items": [{"uid": "r", "catalog_object_id": "VAR-1", "quantity": "1"}]}],
    }
    skus = {"VAR-1": "SKU-1", "VAR-2": "SKU-2"}
    assert order_movements(order, skus) == [
        Movement("square:L1:order:ord-1:line:a:sale", "square:L1", "SKU-1", on_hand=-2, kind="sale"),
        Movement("square:L1:order:ord-1:return:r", "square:L1", "SKU-1", on_hand=1, kind="return"),
    ]
    assert order_movements({**order, "state": "OPEN"}, skus) == []


@pytest.mark.parametrize(
    ("event_type", "key", "wrong"),
    [
        ("payment.created", "payment", []),
        ("refund.created", "refund", [{"id": "R1"}]),
        ("order.updated", "order_updated", ["x"]),
        ("inventory.count.updated", "inventory_counts", {"catalog_object_id": "V1"}),
    ],
)
def test_an_object_of_the_wrong_json_type_is_an_issue_not_a_crash(
    event_type: str, key: str, wrong: object
) -> None:
    """A payment given as an array (or inventory counts as an object) reached the payment's header reader,
    which took it for an object (AttributeError): it reads as no object, and validation says so."""
    event = {
        "merchant_id": MERCHANT,
        "type": event_type,
        "event_id": "e-1",
        "created_at": "2024-09-03T18:41:07Z",
        "data": {"type": key, "id": "X1", "object": {key: wrong}},
    }
    env = ADAPTER.parse(json.dumps(event).encode(), RECEIPT)
    assert env.control_id == "e-1"
    assert error_codes(ADAPTER.validate(env)) == {"object_missing"}
