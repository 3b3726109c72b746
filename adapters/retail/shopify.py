"""The Shopify webhook adapter (``shopify``): verified webhook bodies as envelopes, stock movements and levels.

Signature checks are not done here: the HTTP ingest layer (``gateway/webhooks.py``)
verifies the HMAC before this adapter sees a byte, and copies the transport
headers named in :data:`WEBHOOK_HEADERS` into ``Receipt.attributes`` (lower-case
names). The adapter reads the topic, shop, API version and ids there, and the
body as JSON (``parse_float=Decimal``; Shopify sends money as decimal strings,
which stay strings until a header or a check reads them as ``Decimal``).

Topics (:data:`TOPICS`): ``orders/create``, ``orders/paid``,
``orders/cancelled``, ``orders/fulfilled``, ``refunds/create``,
``inventory_levels/update`` and ``products/update``. Another topic still parses,
but :meth:`ShopifyAdapter.validate` answers ``unsupported_topic`` so that the
pipeline refuses it.

Envelope: ``protocol`` ``shopify``, ``version`` the API version header,
``message_type`` the topic, ``control_id`` the event id (the same event
redelivered, or delivered through two subscriptions, keeps it) or else the
webhook id, ``sender`` the shop domain. ``body`` is a :class:`ShopifyWebhook`
whose ``repr`` shows no payload value. Headers (:data:`HEADER_KEYS`): the
transport ones always, plus by topic ``order_id``, ``order_name``,
``currency``, ``total_amount``, ``financial_status``, ``line_count``, ``skus``
(orders); ``order_id``, ``refund_id``, ``skus`` (refunds);
``inventory_item_id``, ``location_id``, ``available`` (inventory levels);
``product_id``, ``skus`` (products); ``store_id`` is the shop domain. Business keys: ``order_id``, the
SKUs (``sku``, ``sku.2`` …) and the customer's e-mail and phone (masked in ``masked_keys``); names and addresses
stay in the raw body only, and any customer data makes the envelope ``pii``.

Stock (:class:`gateway.stock.StockSource`): ``orders/create`` and
``orders/paid`` take each line with a SKU off hand under one key per line
(``shopify:{shop}:order:{order_id}:line:{line_item_id}:sale``), the same for
both topics so that the ledger counts whichever comes first; a refund line that
is restocked (``restock_type`` ``cancel``, ``return`` or ``legacy_restock``, or
the legacy ``restock: true``) puts its quantity back under
``shopify:{shop}:refund:{refund_id}:line:{refund_line_item_id}:restock``, the same
whether the refund arrives inside ``orders/cancelled`` or as ``refunds/create``.
``inventory_levels/update`` reports a level; :func:`variant_items` maps a
``products/update``'s SKUs to Shopify inventory item ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from adapters.finance.identifiers import currency_problem
from adapters.retail import jsonbody as jb
from adapters.retail.jsonbody import Json
from adapters.retail.keys import contact_keys, sku_keys
from adapters.retail.reply import json_reply
from gateway.adapter import Batch, Issue, Outcome, Reply
from gateway.envelope import Envelope, Receipt, Sensitivity, new_id, sha256_hex
from gateway.stock import MAX_QUANTITY, ItemLink, Movement, ReportedLevel

__all__ = [
    "HEADER_KEYS",
    "ORDER_TOPICS",
    "RESTOCK_TYPES",
    "SALE_TOPICS",
    "TOPICS",
    "WEBHOOK_HEADERS",
    "ShopifyAdapter",
    "ShopifyWebhook",
    "variant_items",
]

WEBHOOK_HEADERS: frozenset[str] = frozenset(
    {
        "x-shopify-topic",
        "x-shopify-shop-domain",
        "x-shopify-api-version",
        "x-shopify-webhook-id",
        "x-shopify-event-id",
        "x-shopify-triggered-at",
    }
)
"""The transport headers the ingest channel copies into ``Receipt.attributes`` (lower-case)."""

ORDER_TOPICS: frozenset[str] = frozenset(
    {"orders/create", "orders/paid", "orders/cancelled", "orders/fulfilled"}
)
SALE_TOPICS: frozenset[str] = frozenset({"orders/create", "orders/paid"})
"""Order topics whose line items are sales (and must therefore be present)."""
TOPICS: frozenset[str] = ORDER_TOPICS | {"refunds/create", "inventory_levels/update", "products/update"}
RESTOCK_TYPES: frozenset[str] = frozenset({"cancel", "return", "legacy_restock"})
"""``refund_line_items[].restock_type`` values that put stock back on hand."""

_TRANSPORT_KEYS = ("topic", "shop_domain", "api_version", "webhook_id", "event_id", "triggered_at")
HEADER_KEYS: frozenset[str] = frozenset(
    {
        "message_type",
        "version",
        "control_id",
        "store_id",
        *_TRANSPORT_KEYS,
        "order_id",
        "order_name",
        "currency",
        "total_amount",
        "financial_status",
        "line_count",
        "skus",
        "refund_id",
        "inventory_item_id",
        "location_id",
        "available",
        "product_id",
    }
)
"""Every header this adapter promotes."""

CONTENT_TYPE = "application/json"
MAX_SKUS = 50
_JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*[\[{]")
_GID_MARKERS = (b"gid://shopify/", b"gid:\\/\\/shopify\\/")
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_ORDER_MONEY = (
    "total_price",
    "subtotal_price",
    "total_tax",
    "total_discounts",
    "total_line_items_price",
    "current_total_price",
    "current_subtotal_price",
    "current_total_tax",
    "current_total_discounts",
)
_LINE_MONEY = ("price", "total_discount")
_MONEY_LISTS = (("shipping_lines", "price"), ("tax_lines", "price"), ("discount_codes", "amount"))
_CUSTOMER_FIELDS = (
    "email",
    "contact_email",
    "phone",
    "customer",
    "billing_address",
    "shipping_address",
    "default_address",
    "addresses",
    "first_name",
    "last_name",
)
"""Top-level fields whose presence means the body carries customer data (``pii``)."""


@dataclass(frozen=True, slots=True)
class ShopifyWebhook:
    """A parsed webhook: its transport facts and the JSON body, which ``repr`` never shows."""

    topic: str
    shop_domain: str
    api_version: str
    webhook_id: str
    event_id: str
    triggered_at: str
    payload: Json = field(repr=False)
    """The body as parsed (money still as the decimal strings Shopify sent, other numbers ``Decimal``)."""


class ShopifyAdapter:
    """Shopify webhooks (verified by the ingest layer) → envelopes, stock movements and reported levels."""

    name: str = "shopify"
    transport_headers: frozenset[str] = WEBHOOK_HEADERS
    """The request headers an ingest channel copies into ``Receipt.attributes`` for this adapter."""

    def __init__(self) -> None:
        self.rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType({})

    # -- detect / split ------------------------------------------------------------------------

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """True for JSON that names a Shopify GraphQL id (``gid://shopify/…``, slashes escaped or not)."""
        try:
            return _JSON_START.match(raw) is not None and any(m in raw for m in _GID_MARKERS)
        except Exception:
            return False

    def split(self, raw: bytes) -> Batch | None:
        return None

    # -- parse -----------------------------------------------------------------------------------

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        """Build the envelope from the transport headers in ``receipt.attributes`` and the JSON body."""
        meta = _transport(receipt.attributes)
        headers = _transport_headers(meta)
        payload = jb.load_object(raw, headers)
        hook = ShopifyWebhook(
            topic=meta["topic"],
            shop_domain=meta["shop_domain"],
            api_version=meta["api_version"],
            webhook_id=meta["webhook_id"],
            event_id=meta["event_id"],
            triggered_at=meta["triggered_at"],
            payload=payload,
        )
        headers.update(_topic_headers(hook.topic, payload))
        headers["store_id"] = hook.shop_domain
        keys, masked = _business_keys(hook.topic, payload)
        keys.update(sku_keys(headers.get("skus", "")))
        sensitivity: Sensitivity = "pii" if _has_customer_data(payload) else "none"
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=hook.api_version,
            message_type=hook.topic,
            control_id=headers["control_id"],
            sender=hook.shop_domain,
            receiver="",
            raw=raw,
            raw_sha256=sha256_hex(raw),
            body=hook,
            headers=headers,
            business_keys=keys,
            masked_keys=masked,
            sensitivity=sensitivity,
            receipt=receipt,
        )

    # -- validate --------------------------------------------------------------------------------

    def validate(self, envelope: Envelope) -> list[Issue]:
        """Transport checks (topic, webhook id, shop), then the topic's body checks."""
        hook: ShopifyWebhook = envelope.body
        issues = _transport_issues(hook)
        check = _BODY_CHECKS.get(hook.topic)
        if check is not None:
            issues.extend(check(hook.payload))
        return issues

    # -- respond / serialize ---------------------------------------------------------------------

    def respond(self, outcome: Outcome) -> Reply:
        """The JSON reply; a control id conflict is answered 200 so that Shopify does not redeliver."""
        return json_reply(outcome, conflict_status=200)

    def serialize(self, envelope: Envelope) -> bytes:
        """The body exactly as received."""
        return envelope.raw

    # -- stock -------------------------------------------------------------------------------------

    def movements(self, envelope: Envelope) -> list[Movement]:
        """Sales of ``orders/create``/``orders/paid``, restocks of ``orders/cancelled``/``refunds/create``."""
        hook = envelope.body
        if not isinstance(hook, ShopifyWebhook) or not hook.shop_domain:
            return []
        if hook.topic in SALE_TOPICS:
            return _sales(hook.shop_domain, hook.payload)
        if hook.topic == "orders/cancelled":
            refunds = jb.objects(hook.payload.get("refunds"))
        elif hook.topic == "refunds/create":
            refunds = [hook.payload]
        else:
            return []
        return [m for refund in refunds for m in _restocks(hook.shop_domain, refund)]

    def item_links(self, envelope: Envelope) -> list[ItemLink]:
        """Each variant of a ``products/update``: its SKU and Shopify inventory item id."""
        return [ItemLink("shopify", sku, item) for sku, item in variant_items(envelope).items()]

    def reported_levels(self, envelope: Envelope) -> list[ReportedLevel]:
        """The level of an ``inventory_levels/update`` (location and item are Shopify's ids)."""
        hook = envelope.body
        if not isinstance(hook, ShopifyWebhook) or hook.topic != "inventory_levels/update":
            return []
        item, location, available = (
            jb.integer(hook.payload.get(k)) for k in ("inventory_item_id", "location_id", "available")
        )
        if item is None or location is None or available is None:
            return []
        return [ReportedLevel("shopify", str(location), str(item), available)]


def variant_items(envelope: Envelope) -> dict[str, str]:
    """SKU → inventory item id of each variant of a ``products/update`` (first variant wins on a repeated SKU)."""
    hook = envelope.body
    if not isinstance(hook, ShopifyWebhook) or hook.topic != "products/update":
        return {}
    items: dict[str, str] = {}
    for variant in jb.objects(hook.payload.get("variants")):
        sku, item = jb.text(variant.get("sku")), _ident(variant.get("inventory_item_id"))
        if sku and item:
            items.setdefault(sku, item)
    return items


# -- reading values ---------------------------------------------------------------------------------


def _positive_int(value: object) -> int | None:
    """A quantity: a JSON integer from 1 to :data:`MAX_QUANTITY`, else ``None``."""
    number = jb.integer(value)
    return number if number is not None and 0 < number <= MAX_QUANTITY else None


def _ident(value: object) -> str:
    """An id as text: Shopify ids are JSON integers, sometimes strings."""
    number = jb.integer(value)
    return str(number) if number is not None else jb.text(value)


def _money(value: object) -> Decimal | None:
    """A decimal money string (``"199.00"``) as Decimal, or ``None``."""
    if isinstance(value, str) and _DECIMAL_TEXT.fullmatch(value):
        return Decimal(value)
    return None


def _skus(lines: Iterable[Json]) -> str:
    """The distinct SKUs of ``lines``, first-seen order, at most :data:`MAX_SKUS`, comma-joined."""
    seen: dict[str, None] = {}
    for line in lines:
        sku = jb.text(line.get("sku"))
        if sku and len(seen) < MAX_SKUS:
            seen.setdefault(sku, None)
    return ",".join(seen)


def _refund_lines(refund: Json) -> list[Json]:
    return jb.objects(refund.get("refund_line_items"))


# -- headers and keys --------------------------------------------------------------------------------


def _transport(attributes: Mapping[str, str]) -> dict[str, str]:
    """``topic``, ``shop_domain`` … read from the ``x-shopify-*`` attributes (``""`` when absent)."""
    return {key: attributes.get("x-shopify-" + key.replace("_", "-"), "").strip() for key in _TRANSPORT_KEYS}


def _transport_headers(meta: Mapping[str, str]) -> dict[str, str]:
    headers = {
        "message_type": meta["topic"],
        "version": meta["api_version"],
        "control_id": meta["event_id"] or meta["webhook_id"],
    }
    headers.update(meta)
    return headers


def _order_headers(order: Json) -> dict[str, str]:
    total = _money(order.get("total_price"))
    lines = order.get("line_items")
    lines = lines if isinstance(lines, list) else []
    return {
        "order_id": _ident(order.get("id")),
        "order_name": jb.text(order.get("name")),
        "currency": jb.text(order.get("currency")),
        "total_amount": str(total) if total is not None else "",
        "financial_status": jb.text(order.get("financial_status")),
        "line_count": str(len(lines)),
        "skus": _skus(jb.objects(lines)),
    }


def _refund_headers(refund: Json) -> dict[str, str]:
    return {
        "order_id": _ident(refund.get("order_id")),
        "refund_id": _ident(refund.get("id")),
        "skus": _skus(jb.obj(line.get("line_item")) for line in _refund_lines(refund)),
    }


def _level_headers(level: Json) -> dict[str, str]:
    return {key: _ident(level.get(key)) for key in ("inventory_item_id", "location_id", "available")}


def _product_headers(product: Json) -> dict[str, str]:
    return {"product_id": _ident(product.get("id")), "skus": _skus(jb.objects(product.get("variants")))}


_TOPIC_HEADERS: dict[str, Callable[[Json], dict[str, str]]] = {
    **dict.fromkeys(ORDER_TOPICS, _order_headers),
    "refunds/create": _refund_headers,
    "inventory_levels/update": _level_headers,
    "products/update": _product_headers,
}


def _topic_headers(topic: str, payload: Json) -> dict[str, str]:
    build = _TOPIC_HEADERS.get(topic)
    return build(payload) if build is not None else {}


def _business_keys(topic: str, payload: Json) -> tuple[dict[str, str], dict[str, str]]:
    """``order_id`` (orders, refunds) and the customer's e-mail and phone, with their masked forms."""
    customer = jb.obj(payload.get("customer"))
    email = (
        jb.text(payload.get("email"))
        or jb.text(payload.get("contact_email"))
        or jb.text(customer.get("email"))
    )
    phone = jb.text(payload.get("phone")) or jb.text(customer.get("phone"))
    keys, masked = contact_keys(email or None, phone or None, "customer")
    order_id = ""
    if topic in ORDER_TOPICS:
        order_id = _ident(payload.get("id"))
    elif topic == "refunds/create":
        order_id = _ident(payload.get("order_id"))
    if order_id:
        keys["order_id"] = order_id
    return keys, masked


def _has_customer_data(payload: Json) -> bool:
    return any(payload.get(name) not in (None, "", [], {}) for name in _CUSTOMER_FIELDS)


# -- checks ------------------------------------------------------------------------------------------


def _transport_issues(hook: ShopifyWebhook) -> list[Issue]:
    issues: list[Issue] = []
    if not hook.topic:
        issues.append(Issue("error", "topic_missing", "x-shopify-topic", "The webhook names no topic."))
    elif hook.topic not in TOPICS:
        issues.append(
            Issue(
                "error",
                "unsupported_topic",
                "x-shopify-topic",
                "The gateway does not take this webhook topic.",
            )
        )
    if not hook.webhook_id:
        issues.append(
            Issue("error", "webhook_id_missing", "x-shopify-webhook-id", "The webhook carries no webhook id.")
        )
    if not hook.shop_domain:
        issues.append(
            Issue("error", "shop_missing", "x-shopify-shop-domain", "The webhook names no shop domain.")
        )
    return issues


def _amount_issue(location: str) -> Issue:
    return Issue(
        "error", "amount_invalid", location, "A money amount must be a decimal string such as 12.50."
    )


def _quantity_issue(location: str) -> Issue:
    return Issue("error", "quantity_invalid", location, "A quantity must be a positive integer.")


def _money_issues(holder: Json, names: Iterable[str], base: str) -> list[Issue]:
    """An issue for each of ``names`` present in ``holder`` that is not a decimal string."""
    return [
        _amount_issue(f"{base}/{name}")
        for name in names
        if holder.get(name) is not None and _money(holder.get(name)) is None
    ]


def _line_issues(lines: list[Any], base: str) -> list[Issue]:
    issues: list[Issue] = []
    for i, line in enumerate(lines):
        where = f"{base}/{i}"
        if not isinstance(line, dict):
            issues.append(
                Issue("error", "line_items_missing", where, "Each line item must be a JSON object.")
            )
            continue
        if _positive_int(line.get("quantity")) is None:
            issues.append(_quantity_issue(f"{where}/quantity"))
        issues.extend(_money_issues(line, _LINE_MONEY, where))
    return issues


def _refund_issues(refund: Json, base: str = "") -> list[Issue]:
    """Each refund line's quantity must be a positive integer."""
    return [
        _quantity_issue(f"{base}/refund_line_items/{i}/quantity")
        for i, line in enumerate(_refund_lines(refund))
        if _positive_int(line.get("quantity")) is None
    ]


def _currency_issues(order: Json) -> list[Issue]:
    currency = order.get("currency")
    if isinstance(currency, str) and currency_problem(currency) is None:
        return []
    return [Issue("error", "currency_invalid", "/currency", "The currency is not an active ISO 4217 code.")]


def _order_issues(order: Json, lines_required: bool) -> list[Issue]:
    issues: list[Issue] = []
    lines = order.get("line_items")
    if isinstance(lines, list):
        issues.extend(_line_issues(lines, "/line_items"))
    elif lines is not None or lines_required:
        issues.append(
            Issue(
                "error", "line_items_missing", "/line_items", "The order must carry its line items as a list."
            )
        )
    issues.extend(_money_issues(order, _ORDER_MONEY, ""))
    for name, amount in _MONEY_LISTS:
        for i, entry in enumerate(jb.objects(order.get(name))):
            issues.extend(_money_issues(entry, (amount,), f"/{name}/{i}"))
    issues.extend(_currency_issues(order))
    for i, refund in enumerate(jb.objects(order.get("refunds"))):
        issues.extend(_refund_issues(refund, f"/refunds/{i}"))
    return issues


def _level_issues(level: Json) -> list[Issue]:
    return [
        Issue(
            "error",
            "level_invalid",
            f"/{name}",
            "An inventory level's ids and available count must be integers.",
        )
        for name in ("inventory_item_id", "location_id", "available")
        if jb.integer(level.get(name)) is None
        or (name == "available" and abs(jb.integer(level.get(name)) or 0) > MAX_QUANTITY)
    ]


def _sale_order_issues(order: Json) -> list[Issue]:
    return _order_issues(order, lines_required=True)


def _other_order_issues(order: Json) -> list[Issue]:
    return _order_issues(order, lines_required=False)


_BODY_CHECKS: dict[str, Callable[[Json], list[Issue]]] = {
    **dict.fromkeys(SALE_TOPICS, _sale_order_issues),
    **dict.fromkeys(ORDER_TOPICS - SALE_TOPICS, _other_order_issues),
    "refunds/create": _refund_issues,
    "inventory_levels/update": _level_issues,
}


# -- movements ---------------------------------------------------------------------------------------


def _sales(shop: str, order: Json) -> list[Movement]:
    order_id = _ident(order.get("id"))
    if not order_id:
        return []
    moves: list[Movement] = []
    for line in jb.objects(order.get("line_items")):
        sku, line_id, quantity = (
            jb.text(line.get("sku")),
            _ident(line.get("id")),
            _positive_int(line.get("quantity")),
        )
        if sku and line_id and quantity is not None:
            key = f"shopify:{shop}:order:{order_id}:line:{line_id}:sale"
            moves.append(Movement(key, f"shopify:{shop}", sku, on_hand=-quantity, kind="sale"))
    return moves


def _restocked(refund: Json, line: Json) -> bool:
    """``restock_type`` decides where it is given; otherwise the legacy ``restock`` flag (line or refund)."""
    kind = jb.text(line.get("restock_type"))
    if kind:
        return kind in RESTOCK_TYPES
    return line.get("restock") is True or refund.get("restock") is True


def _restocks(shop: str, refund: Json) -> list[Movement]:
    refund_id = _ident(refund.get("id"))
    if not refund_id:
        return []
    moves: list[Movement] = []
    for line in _refund_lines(refund):
        sku = jb.text(jb.obj(line.get("line_item")).get("sku"))
        line_id, quantity = _ident(line.get("id")), _positive_int(line.get("quantity"))
        if sku and line_id and quantity is not None and _restocked(refund, line):
            key = f"shopify:{shop}:refund:{refund_id}:line:{line_id}:restock"
            moves.append(Movement(key, f"shopify:{shop}", sku, on_hand=quantity, kind="restock"))
    return moves
