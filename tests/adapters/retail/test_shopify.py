"""The Shopify webhook adapter (``shopify``) over its fixtures and the shared Shopify corpus.

Fixtures in ``fixtures/retail/shopify`` are found by glob. Each body ``<name>.json`` has a sidecar
``<name>.headers.json``: the ``x-shopify-*`` transport headers the ingest layer copies into
``Receipt.attributes``. Names are the expectation: ``<topic with / as .>__<variant>.json`` parses as
that topic with no error issue, round-trips and is answered 200; ``invalid__<code>.json`` yields
exactly the error issue ``<code>`` (as a ParseError issue or from ``validate``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import adapters.retail.shopify as shopify_module
from adapters import BUILTIN_ADAPTERS
from adapters.retail.shopify import (
    HEADER_KEYS,
    TOPICS,
    WEBHOOK_HEADERS,
    ShopifyAdapter,
    ShopifyWebhook,
    variant_items,
)
from adapters.retail.square import SquareAdapter
from gateway.adapter import Adapter, Issue, Outcome, OutcomeKind, ParseError
from gateway.envelope import Envelope, Receipt
from gateway.pipeline import classify
from gateway.stock import Movement, ReportedLevel, StockSource
from tests.conftest import FIXTURES

FOLDER = FIXTURES / "retail" / "shopify"
SIDECAR = ".headers.json"
BODIES = sorted(p for p in FOLDER.glob("*.json") if not p.name.endswith(SIDECAR))
INVALID = [p for p in BODIES if p.name.startswith("invalid__")]
VALID = [p for p in BODIES if p not in INVALID]
ADAPTER = ShopifyAdapter()
SHOP = "maple-and-pine.myshopify.com"
LOCATION = f"shopify:{SHOP}"

REQUIRED_VALID = {
    "orders.create__basic.json",
    "orders.paid__basic.json",
    "orders.cancelled__restock.json",
    "refunds.create__return.json",
    "orders.fulfilled__basic.json",
    "inventory_levels.update__basic.json",
    "products.update__two_variants.json",
}
CODES = {
    "malformed_json",
    "not_an_object",
    "topic_missing",
    "unsupported_topic",
    "webhook_id_missing",
    "shop_missing",
    "line_items_missing",
    "quantity_invalid",
    "amount_invalid",
    "currency_invalid",
    "level_invalid",
}
PII_KEYS = {
    "email",
    "contact_email",
    "phone",
    "first_name",
    "last_name",
    "address1",
    "address2",
    "city",
    "zip",
    "company",
    "latitude",
    "longitude",
    "browser_ip",
    "credit_card_number",
    "credit_card_bin",
}
"""Keys whose values are personal data wherever they are; ``name`` is personal only in PERSON_HOLDERS."""
PERSON_HOLDERS = {"customer", "billing_address", "shipping_address", "default_address", "addresses"}


def sidecar(path: Path) -> Path:
    return path.with_name(path.name.removesuffix(".json") + SIDECAR)


def attributes(path: Path) -> dict[str, str]:
    loaded: dict[str, str] = json.loads(sidecar(path).read_text(encoding="utf-8"))
    return loaded


def receipt(attrs: dict[str, str]) -> Receipt:
    return Receipt("http", content_type="application/json", attributes=attrs)


def parse(path: Path) -> Envelope:
    return ADAPTER.parse(path.read_bytes(), receipt(attributes(path)))


def fixture(name: str) -> Envelope:
    return parse(FOLDER / name)


def topic_of(path: Path) -> str:
    return path.name.split("__", 1)[0].replace(".", "/")


def issues_of(raw: bytes, attrs: dict[str, str]) -> list[Issue]:
    try:
        env = ADAPTER.parse(raw, receipt(attrs))
    except ParseError as exc:
        return list(exc.issues)
    return ADAPTER.validate(env)


def error_codes(issues: list[Issue]) -> set[str]:
    return {i.code for i in issues if i.is_error}


def pii_values(node: object, holder: str = "") -> Iterator[str]:
    """Every personal value in a parsed body: contacts, names, addresses, card digits, IPs."""
    if isinstance(node, dict):
        for key, value in node.items():
            personal = key in PII_KEYS or (key == "name" and holder in PERSON_HOLDERS)
            if personal and isinstance(value, str | int | float | Decimal) and not isinstance(value, bool):
                if str(value).strip():
                    yield str(value).strip()
            elif isinstance(value, dict | list):
                yield from pii_values(value, key if isinstance(value, dict) else holder or key)
    elif isinstance(node, list):
        for item in node:
            yield from pii_values(item, holder)


def shown_texts(raw: bytes, attrs: dict[str, str]) -> list[str]:
    """Everything the gateway may show or store of a message outside its raw bytes."""
    try:
        env = ADAPTER.parse(raw, receipt(attrs))
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
        repr(ADAPTER.movements(env)),
        repr(ADAPTER.reported_levels(env)),
        repr(variant_items(env)),
        reply.body.decode(),
    ]


def floats_in(node: object) -> list[object]:
    if isinstance(node, float):
        return [node]
    if isinstance(node, dict):
        return [f for v in node.values() for f in floats_in(v)]
    if isinstance(node, list):
        return [f for v in node for f in floats_in(v)]
    return []


def sale(order: int, line: int, sku: str, quantity: int) -> Movement:
    return Movement(
        f"{LOCATION}:order:{order}:line:{line}:sale", LOCATION, sku, on_hand=-quantity, kind="sale"
    )


def restock(refund: int, line: int, sku: str, quantity: int) -> Movement:
    key = f"{LOCATION}:refund:{refund}:line:{line}:restock"
    return Movement(key, LOCATION, sku, on_hand=quantity, kind="restock")


# -- the adapter's surface ------------------------------------------------------------------------


def test_the_adapter_meets_the_adapter_and_stock_contracts() -> None:
    adapter: Adapter = ShopifyAdapter()
    assert adapter.name == "shopify"
    assert dict(adapter.rule_sets) == {}
    assert isinstance(adapter, StockSource)
    assert adapter.split(b"{}") is None
    assert set(shopify_module.__all__) >= {
        "HEADER_KEYS",
        "TOPICS",
        "WEBHOOK_HEADERS",
        "ShopifyAdapter",
        "variant_items",
    }
    assert {
        "orders/create",
        "orders/paid",
        "orders/cancelled",
        "orders/fulfilled",
        "refunds/create",
        "inventory_levels/update",
        "products/update",
    } == TOPICS
    assert {
        "x-shopify-topic",
        "x-shopify-shop-domain",
        "x-shopify-api-version",
        "x-shopify-webhook-id",
        "x-shopify-event-id",
        "x-shopify-triggered-at",
    } == WEBHOOK_HEADERS


# -- the folder -------------------------------------------------------------------------------------


def test_the_fixtures_cover_every_topic_and_issue_code() -> None:
    assert {p.name for p in VALID} >= REQUIRED_VALID
    assert {topic_of(p) for p in VALID} == TOPICS
    assert {p.stem.removeprefix("invalid__") for p in INVALID} == CODES
    sidecars = {p.name for p in FOLDER.glob("*" + SIDECAR)}
    assert sidecars == {sidecar(p).name for p in BODIES}, (
        "every body has its headers and no headers are orphaned"
    )


@pytest.mark.parametrize("path", BODIES, ids=lambda p: p.name)
def test_sidecar_holds_only_lower_case_webhook_headers(path: Path) -> None:
    attrs = attributes(path)
    assert set(attrs) <= WEBHOOK_HEADERS
    assert all(isinstance(v, str) for v in attrs.values())


@pytest.mark.parametrize("path", BODIES, ids=lambda p: p.name)
def test_fixture_is_claimed_by_the_shopify_adapter_alone(path: Path) -> None:
    raw = path.read_bytes()
    constructors: dict[str, Callable[[], Any]] = {
        **BUILTIN_ADAPTERS,
        "shopify": ShopifyAdapter,
        "square": SquareAdapter,
    }
    claimed = [name for name, make in constructors.items() if make().detect(raw, "application/json")]
    assert claimed == ["shopify"]


def test_detect_is_cheap_and_never_raises() -> None:
    for raw in (b"", b"   ", b"MSH|^~\\&|", b"<Document/>", b"{}", b'{"id": 1}', b"\xff\xfe{", b"[1, 2]"):
        assert ADAPTER.detect(raw, None) is False
    assert ADAPTER.detect(b'  {"admin_graphql_api_id": "gid://shopify/Order/1"}', None)
    assert ADAPTER.detect(b'{"admin_graphql_api_id": "gid:\\/\\/shopify\\/Order\\/1"}', "application/json")


# -- valid fixtures -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_parses_as_its_topic(path: Path) -> None:
    attrs = attributes(path)
    env = parse(path)
    assert ADAPTER.detect(path.read_bytes(), "application/json")
    assert env.protocol == "shopify"
    assert env.message_type == topic_of(path) == attrs["x-shopify-topic"] == env.headers["topic"]
    assert env.version == attrs["x-shopify-api-version"] == env.headers["version"]
    assert env.control_id == attrs["x-shopify-event-id"] == env.headers["control_id"]
    assert env.sender == SHOP == env.headers["shop_domain"]
    assert env.headers["webhook_id"] == attrs["x-shopify-webhook-id"]
    assert env.headers["triggered_at"] == attrs["x-shopify-triggered-at"]
    assert isinstance(env.body, ShopifyWebhook)
    assert env.body.payload == json.loads(path.read_bytes(), parse_float=Decimal)
    assert env.receipt is not None and env.received_at == env.receipt.received_at
    assert set(env.headers) <= HEADER_KEYS
    assert all(isinstance(v, str) for v in env.headers.values())


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_has_no_error_issue(path: Path) -> None:
    env = parse(path)
    assert [i for i in ADAPTER.validate(env) if i.is_error] == []


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_round_trips(path: Path) -> None:
    raw = path.read_bytes()
    assert ADAPTER.serialize(parse(path)) == raw


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_is_answered_200_json(path: Path) -> None:
    env = parse(path)
    reply = ADAPTER.respond(Outcome("accepted", env.headers, [], env.id, env))
    assert (reply.status, reply.code, reply.content_type) == (200, "accepted", "application/json")
    body = json.loads(reply.body)
    assert body["control_id"] == env.control_id
    assert body["message_type"] == env.message_type
    assert body["id"] == env.id


def test_order_headers_keys_and_sensitivity() -> None:
    env = fixture("orders.create__basic.json")
    assert dict(env.headers) == {
        "message_type": "orders/create",
        "store_id": "maple-and-pine.myshopify.com",
        "version": "2024-07",
        "control_id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "topic": "orders/create",
        "shop_domain": SHOP,
        "api_version": "2024-07",
        "webhook_id": "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043",
        "event_id": "98880550-7158-44d4-b7cd-2c97c8a091b5",
        "triggered_at": "2024-09-03T14:22:08.144512301Z",
        "order_id": "5830915465381",
        "order_name": "#1042",
        "currency": "CAD",
        "total_amount": "101.84",
        "financial_status": "pending",
        "line_count": "3",
        "skus": "MP-MUG-BLU,MP-TEE-M-GRN",
    }
    assert dict(env.business_keys) == {
        "order_id": "5830915465381",
        "customer_email": "ada.lovelace@example.net",
        "customer_phone": "+14165550142",
        "sku": "MP-MUG-BLU",
        "sku.2": "MP-TEE-M-GRN",
    }
    assert dict(env.masked_keys) == {"customer_email": "a***@example.net", "customer_phone": "***0142"}
    assert env.sensitivity == "pii"


def test_refund_level_and_product_headers() -> None:
    refund = fixture("refunds.create__return.json")
    assert {k: refund.headers[k] for k in ("order_id", "refund_id", "skus")} == {
        "order_id": "5830915465381",
        "refund_id": "1014292004005",
        "skus": "MP-MUG-BLU,MP-TEE-M-GRN",
    }
    assert dict(refund.business_keys) == {
        "order_id": "5830915465381",
        "sku": "MP-MUG-BLU",
        "sku.2": "MP-TEE-M-GRN",
    }
    assert refund.sensitivity == "none"
    level = fixture("inventory_levels.update__basic.json")
    assert {k: level.headers[k] for k in ("inventory_item_id", "location_id", "available")} == {
        "inventory_item_id": "45820915171493",
        "location_id": "71029571749",
        "available": "37",
    }
    assert level.sensitivity == "none" and dict(level.business_keys) == {}
    product = fixture("products.update__two_variants.json")
    assert product.headers["product_id"] == "8104922284197"
    assert product.headers["skus"] == "MP-MUG-BLU,MP-MUG-RED"


def test_control_id_falls_back_to_the_webhook_id() -> None:
    path = FOLDER / "orders.create__basic.json"
    attrs = attributes(path)
    del attrs["x-shopify-event-id"]
    env = ADAPTER.parse(path.read_bytes(), receipt(attrs))
    assert env.control_id == attrs["x-shopify-webhook-id"] == env.headers["control_id"]
    assert env.headers["event_id"] == ""
    assert [i for i in ADAPTER.validate(env) if i.is_error] == []


def test_a_redelivery_keeps_its_control_id() -> None:
    """Shopify redelivers an event (or delivers it through a second subscription) with a new webhook id."""
    path = FOLDER / "orders.create__basic.json"
    first = parse(path)
    attrs = attributes(path) | {"x-shopify-webhook-id": "0f9e8d7c-6b5a-4938-8271-605f4e3d2c1b"}
    again = ADAPTER.parse(path.read_bytes(), receipt(attrs))
    assert (again.sender, again.control_id, again.raw_sha256) == (
        first.sender,
        first.control_id,
        first.raw_sha256,
    )
    assert again.id != first.id


def test_money_is_read_as_decimal() -> None:
    env = fixture("orders.create__basic.json")
    assert Decimal(env.headers["total_amount"]) == Decimal("101.84")
    for path in BODIES:
        try:
            payload = json.loads(path.read_bytes(), parse_float=Decimal)
        except ValueError:
            continue
        assert floats_in(payload) == [], path.name
    payload = env.body.payload
    assert payload["tax_lines"][0]["rate"] == Decimal("0.13")
    assert isinstance(payload["billing_address"]["latitude"], Decimal)


def test_skus_header_is_capped_at_fifty() -> None:
    lines = [{"id": n, "sku": f"SKU-{n % 60}", "quantity": 1, "price": "1.00"} for n in range(1, 121)]
    order = {"id": 1, "admin_graphql_api_id": "gid://shopify/Order/1", "currency": "USD", "line_items": lines}
    env = ADAPTER.parse(json.dumps(order).encode(), receipt(attributes(FOLDER / "orders.create__basic.json")))
    skus = env.headers["skus"].split(",")
    assert skus == [f"SKU-{n}" for n in range(1, 51)]
    assert env.headers["line_count"] == "120"


# -- stock ----------------------------------------------------------------------------------------------


def test_orders_create_takes_each_line_with_a_sku_off_hand() -> None:
    env = fixture("orders.create__basic.json")
    assert ADAPTER.movements(env) == [
        sale(5830915465381, 14551983571109, "MP-MUG-BLU", 2),
        sale(5830915465381, 14551983603877, "MP-TEE-M-GRN", 1),
    ]  # the gift card line has no SKU
    assert ADAPTER.reported_levels(env) == []


def test_orders_create_and_orders_paid_of_one_order_give_the_same_keys() -> None:
    created = ADAPTER.movements(fixture("orders.create__basic.json"))
    paid = ADAPTER.movements(fixture("orders.paid__basic.json"))
    assert created and created == paid
    assert len({m.key for m in created}) == len(created)


def test_cancelled_order_restocks_its_refund_lines() -> None:
    env = fixture("orders.cancelled__restock.json")
    assert ADAPTER.movements(env) == [
        restock(1014290268325, 412349137061, "MP-CANDLE-CED", 3),
        restock(1014290268325, 412349169829, "MP-TEE-L-BLK", 1),
    ]


def test_cancelled_order_and_its_refund_give_the_same_restock_keys() -> None:
    cancelled = ADAPTER.movements(fixture("orders.cancelled__restock.json"))
    refund = ADAPTER.movements(fixture("refunds.create__cancel.json"))
    assert cancelled and cancelled == refund
    # the same refund lifted out of the cancelled order and delivered as refunds/create
    lifted = fixture("orders.cancelled__restock.json").body.payload["refunds"][0]
    attrs = attributes(FOLDER / "refunds.create__cancel.json")
    env = ADAPTER.parse(json.dumps(lifted).encode(), receipt(attrs))
    assert ADAPTER.movements(env) == cancelled


def test_a_return_restocks_only_the_lines_it_puts_back() -> None:
    env = fixture("refunds.create__return.json")
    assert ADAPTER.movements(env) == [restock(1014292004005, 412350447781, "MP-MUG-BLU", 1)]


@pytest.mark.parametrize("name", ["orders.fulfilled__basic.json", "products.update__two_variants.json"])
def test_topics_without_stock_effect(name: str) -> None:
    env = fixture(name)
    assert ADAPTER.movements(env) == []
    assert ADAPTER.reported_levels(env) == []


def test_inventory_level_update_reports_the_level() -> None:
    env = fixture("inventory_levels.update__basic.json")
    assert ADAPTER.movements(env) == []
    assert ADAPTER.reported_levels(env) == [ReportedLevel("shopify", "71029571749", "45820915171493", 37)]


def test_variant_items_map_skus_to_inventory_items() -> None:
    assert variant_items(fixture("products.update__two_variants.json")) == {
        "MP-MUG-BLU": "45820915171493",
        "MP-MUG-RED": "45820915204261",
    }
    assert variant_items(fixture("orders.create__basic.json")) == {}


def test_a_line_with_a_bad_quantity_moves_no_stock() -> None:
    path = FOLDER / "invalid__quantity_invalid.json"
    assert [m.sku for m in ADAPTER.movements(parse(path))] == ["MP-MUG-BLU", "MP-MUG-RED", "MP-CANDLE-CED"]
    raw = path.read_bytes()
    assert raw.count(b'"quantity":0,') == 1
    weighed = ADAPTER.parse(raw.replace(b'"quantity":0,', b'"quantity":0.75,'), receipt(attributes(path)))
    assert [m.sku for m in ADAPTER.movements(weighed)] == ["MP-MUG-BLU", "MP-MUG-RED", "MP-CANDLE-CED"]
    assert error_codes(ADAPTER.validate(weighed)) == {"quantity_invalid"}


def test_no_movement_without_a_shop() -> None:
    path = FOLDER / "orders.create__basic.json"
    attrs = {k: v for k, v in attributes(path).items() if k != "x-shopify-shop-domain"}
    assert ADAPTER.movements(ADAPTER.parse(path.read_bytes(), receipt(attrs))) == []


# -- invalid fixtures ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_yields_its_code(path: Path) -> None:
    code = path.stem.removeprefix("invalid__")
    assert error_codes(issues_of(path.read_bytes(), attributes(path))) == {code}


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
    assert body["control_id"] == headers.get("control_id", "")


def test_an_unsupported_topic_parses_and_is_refused() -> None:
    env = fixture("invalid__unsupported_topic.json")  # no ParseError
    issues = ADAPTER.validate(env)
    assert classify(issues) == "refused"
    assert env.sensitivity == "pii"
    assert dict(env.masked_keys) == {"customer_email": "k***@example.com", "customer_phone": "***0123"}


def test_an_unreadable_body_still_names_its_control_id() -> None:
    path = FOLDER / "invalid__malformed_json.json"
    with pytest.raises(ParseError) as caught:
        parse(path)
    assert caught.value.headers["control_id"] == attributes(path)["x-shopify-event-id"]
    assert caught.value.headers["message_type"] == "orders/create"


def test_quantity_issue_points_at_the_line() -> None:
    issues = ADAPTER.validate(fixture("invalid__quantity_invalid.json"))
    assert [(i.code, i.location) for i in issues] == [("quantity_invalid", "/line_items/3/quantity")]


def test_a_conflicting_redelivery_is_answered_200() -> None:
    env = fixture("orders.create__basic.json")
    conflict = [Issue("error", "control_id_conflict", "", "This control id was seen with other content.")]
    reply = ADAPTER.respond(Outcome("invalid", env.headers, conflict, env.id))
    assert (reply.status, reply.code) == (200, "duplicate")


# -- personal data ------------------------------------------------------------------------------------


def test_each_issue_code_has_one_fixed_sentence() -> None:
    """Diagnostics are fixed per code, so they cannot carry a value of the message."""
    sentences: dict[tuple[str, str], set[str]] = {}
    for path in BODIES:
        for issue in issues_of(path.read_bytes(), attributes(path)):
            sentences.setdefault((issue.code, issue.location.split("/")[-1]), set()).add(issue.diagnostics)
    assert sentences and all(len(s) == 1 for s in sentences.values())


@pytest.mark.parametrize("path", BODIES, ids=lambda p: p.name)
def test_no_personal_value_is_shown(path: Path) -> None:
    raw = path.read_bytes()
    # the unreadable fixture is a cut-off copy of orders.create__basic.json: its secrets are that order's
    source = FOLDER / "orders.create__basic.json" if path.name == "invalid__malformed_json.json" else path
    secrets = set(pii_values(json.loads(source.read_bytes(), parse_float=Decimal)))
    for text in shown_texts(raw, attributes(path)):
        for secret in secrets:
            assert secret.lower() not in text.lower(), (path.name, secret)


# -- the shared corpus (REST resources, unwrapped and sent as webhook bodies) --------------------------

CORPUS_HEADERS = {
    "x-shopify-shop-domain": "apple.myshopify.com",
    "x-shopify-api-version": "2024-07",
    "x-shopify-webhook-id": "corpus-webhook-0001",
    "x-shopify-event-id": "corpus-event-0001",
    "x-shopify-triggered-at": "2024-09-01T00:00:00.000Z",
}
CORPUS_LOCATION = "shopify:apple.myshopify.com"


def corpus_resources(corpora_dir: Path, name: str) -> list[Any]:
    """The resources of a corpus file: ``{"order": {...}}`` → [order], ``{"orders": [...]}`` → orders."""
    path = corpora_dir / "retail" / "shopify-python-api" / "fixtures" / name
    (inner,) = json.loads(path.read_bytes()).values()
    return inner if isinstance(inner, list) else [inner]


def corpus_envelope(resource: object, topic: str) -> Envelope:
    raw = json.dumps(resource, ensure_ascii=False).encode()
    return ADAPTER.parse(raw, receipt(CORPUS_HEADERS | {"x-shopify-topic": topic}))


def assert_clean(env: Envelope, resource: object) -> None:
    assert [i for i in ADAPTER.validate(env) if i.is_error] == []
    secrets = set(pii_values(resource))
    shown = [
        repr(env).replace(repr(env.raw), "<raw>"),
        json.dumps(dict(env.headers)),
        repr(dict(env.masked_keys)),
    ]
    for text in shown:
        for secret in secrets:
            assert secret.lower() not in text.lower(), secret


@pytest.mark.parametrize("topic", ["orders/create", "orders/paid"])
def test_corpus_order_sells_its_three_lines(corpora_dir: Path, topic: str) -> None:
    (order,) = corpus_resources(corpora_dir, "order.json")
    env = corpus_envelope(order, topic)
    assert_clean(env, order)
    key = f"{CORPUS_LOCATION}:order:450789469:line:"
    assert ADAPTER.movements(env) == [
        Movement(key + "466157049:sale", CORPUS_LOCATION, "IPOD2008GREEN", on_hand=-1, kind="sale"),
        Movement(key + "518995019:sale", CORPUS_LOCATION, "IPOD2008RED", on_hand=-1, kind="sale"),
        Movement(key + "703073504:sale", CORPUS_LOCATION, "IPOD2008BLACK", on_hand=-1, kind="sale"),
    ]
    assert env.headers["total_amount"] == "409.94"
    assert env.headers["order_name"] == "#1001"
    assert env.headers["skus"] == "IPOD2008GREEN,IPOD2008RED,IPOD2008BLACK"
    assert dict(env.masked_keys) == {"customer_email": "b***@hostmail.com"}
    assert env.sensitivity == "pii"


@pytest.mark.parametrize("topic", ["orders/cancelled", "orders/fulfilled"])
def test_corpus_order_without_refunds_moves_nothing_when_cancelled_or_fulfilled(
    corpora_dir: Path, topic: str
) -> None:
    (order,) = corpus_resources(corpora_dir, "order.json")
    env = corpus_envelope(order, topic)
    assert_clean(env, order)
    assert ADAPTER.movements(env) == []


def test_corpus_orders_list(corpora_dir: Path) -> None:
    """The orders list's order carries no line items: fine once fulfilled, not as a sale."""
    (order,) = corpus_resources(corpora_dir, "orders.json")
    for topic in ("orders/fulfilled", "orders/cancelled"):
        env = corpus_envelope(order, topic)
        assert_clean(env, order)
        assert ADAPTER.movements(env) == []
        assert env.headers["total_amount"] == "598.94"
        assert env.headers["line_count"] == "0"
        assert dict(env.masked_keys) == {"customer_email": "b***@hostmail.com", "customer_phone": "***1234"}
    sale_env = corpus_envelope(order, "orders/create")
    assert error_codes(ADAPTER.validate(sale_env)) == {"line_items_missing"}


def test_corpus_refund_restocks_by_the_legacy_flag(corpora_dir: Path) -> None:
    (refund,) = corpus_resources(corpora_dir, "refund.json")
    env = corpus_envelope(refund, "refunds/create")
    assert_clean(env, refund)
    key = f"{CORPUS_LOCATION}:refund:509562969:line:"
    assert ADAPTER.movements(env) == [
        Movement(key + "104689539:restock", CORPUS_LOCATION, "IPOD2008BLACK", on_hand=1, kind="restock"),
        Movement(key + "709875399:restock", CORPUS_LOCATION, "IPOD2008GREEN", on_hand=1, kind="restock"),
    ]
    assert env.headers["order_id"] == "450789469"
    assert env.headers["refund_id"] == "509562969"


def test_corpus_inventory_levels(corpora_dir: Path) -> None:
    (level,) = corpus_resources(corpora_dir, "inventory_level.json")
    env = corpus_envelope(level, "inventory_levels/update")
    assert_clean(env, level)
    assert ADAPTER.reported_levels(env) == [ReportedLevel("shopify", "905684977", "808950810", 6)]
    levels = corpus_resources(corpora_dir, "inventory_levels.json")
    reported = []
    for resource in levels:
        each = corpus_envelope(resource, "inventory_levels/update")
        assert_clean(each, resource)
        reported += ADAPTER.reported_levels(each)
    assert reported == [
        ReportedLevel("shopify", "487838322", "39072856", 27),
        ReportedLevel("shopify", "905684977", "808950810", 1),
        ReportedLevel("shopify", "487838322", "808950810", 9),
        ReportedLevel("shopify", "905684977", "39072856", 3),
    ]


def test_the_order_fixtures_do_carry_personal_data() -> None:
    """The check above is only worth something if the orders hold what it looks for."""
    payload = json.loads((FOLDER / "orders.create__basic.json").read_bytes(), parse_float=Decimal)
    assert {"ada.lovelace@example.net", "+14165550142", "Lovelace", "12 Analytical Row", "M5V 2T6"} <= set(
        pii_values(payload)
    )


def test_products_update_links_each_variant_sku_to_its_inventory_item() -> None:
    env = fixture("products.update__two_variants.json")
    links = ShopifyAdapter().item_links(env)
    assert {(link.channel, link.item) for link in links} == {
        ("shopify", "45820915171493"),
        ("shopify", "45820915204261"),
    }
    assert {link.sku: link.item for link in links} == variant_items(env)
    assert ShopifyAdapter().item_links(fixture("orders.create__basic.json")) == []
