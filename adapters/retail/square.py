"""The Square webhook adapter (``square``): verified Square event notifications as envelopes and levels.

Signature checks are not done here: the HTTP ingest layer (``gateway/webhooks.py``)
verifies the HMAC before this adapter sees a byte. A Square event is one JSON
object, ``{"merchant_id", "type", "event_id", "created_at", "data": {"type",
"id", "object": {...}}}``, read with ``parse_float=Decimal``.

Event types (:data:`EVENT_TYPES`): ``payment.created``, ``payment.updated``,
``order.created``, ``order.updated``, ``inventory.count.updated``,
``refund.created`` and ``refund.updated``. Another type still parses, but
:meth:`SquareAdapter.validate` answers ``unsupported_event_type`` so that the
pipeline refuses it.

Envelope: ``protocol`` ``square``, ``version`` the body's ``api_version`` (or
``""``), ``message_type`` the event type, ``control_id`` the event id (Square
keeps it on every retry of a delivery), ``sender`` the merchant id. ``body`` is
a :class:`SquareEvent` whose ``repr`` shows no payload value. Headers
(:data:`HEADER_KEYS`): ``message_type``, ``control_id``, ``event_type``,
``merchant_id``, ``event_id``, ``created_at``, ``object_id`` (``data.id``), plus
by type ``payment_id``, ``order_id``, ``status``, ``location_id`` and the amount
(payments); ``order_id``, ``state``, ``location_id`` (orders); ``refund_id``,
``payment_id``, ``order_id``, ``status``, ``location_id`` and the amount
(refunds); ``count`` (inventory counts). Square money is ``{"amount": 1999,
"currency": "USD"}`` in minor units: the headers carry ``amount_minor``
(``"1999"``), ``currency`` and ``total_amount``, the decimal in major units
(``"19.99"``) scaled by the currency's ISO 4217 minor digits (``JPY`` has none).
Business keys: ``payment_id``, ``order_id``, ``refund_id`` and the buyer's
e-mail (masked in ``masked_keys``; the envelope is then ``pii``). Card details
(last four, BIN, fingerprint) are never read.

Stock (:class:`gateway.stock.StockSource`): Square's order webhooks carry no
line items, so no message here moves stock by itself: a completed order's
lines are read from Square's Orders API by the ``square_orders`` sink
(:mod:`adapters.retail.square_orders`, with :func:`order_movements`);
``inventory.count.updated`` reports one level per ``IN_STOCK`` count with a
whole quantity.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

from adapters.finance.identifiers import currency_exponent, currency_problem
from adapters.retail import jsonbody as jb
from adapters.retail.jsonbody import Json
from adapters.retail.keys import contact_keys
from adapters.retail.reply import json_reply
from gateway.adapter import Batch, Issue, Outcome, Reply
from gateway.envelope import Envelope, Receipt, Sensitivity, new_id, sha256_hex
from gateway.stock import MAX_QUANTITY, ItemLink, Movement, MovementKind, ReportedLevel

__all__ = ["EVENT_TYPES", "HEADER_KEYS", "SquareAdapter", "SquareEvent"]

EVENT_OBJECTS: Mapping[str, str] = MappingProxyType(
    {
        "payment.created": "payment",
        "payment.updated": "payment",
        "order.created": "order_created",
        "order.updated": "order_updated",
        "inventory.count.updated": "inventory_counts",
        "refund.created": "refund",
        "refund.updated": "refund",
    }
)
"""Each event type and the key of ``data.object`` that holds its object."""
EVENT_TYPES: frozenset[str] = frozenset(EVENT_OBJECTS)

HEADER_KEYS: frozenset[str] = frozenset(
    {
        "message_type",
        "control_id",
        "event_type",
        "merchant_id",
        "store_id",
        "event_id",
        "created_at",
        "object_id",
        "payment_id",
        "order_id",
        "refund_id",
        "status",
        "state",
        "location_id",
        "amount_minor",
        "currency",
        "total_amount",
        "count",
    }
)
"""Every header this adapter promotes."""

CONTENT_TYPE = "application/json"
_JSON_START = re.compile(rb"(?:\xef\xbb\xbf)?\s*[\[{]")
_MARKERS = (b'"merchant_id"', b'"event_id"', b'"created_at"', b'"data"')
_SHOPIFY_MARKERS = (b"gid://shopify/", b"gid:\\/\\/shopify\\/")
_SNIFF = {
    "event_id": re.compile(rb'"event_id"\s*:\s*"([A-Za-z0-9._:-]{1,100})"'),
    "message_type": re.compile(rb'"type"\s*:\s*"([a-z_]{1,40}(?:\.[a-z_]{1,40}){1,3})"'),
    "merchant_id": re.compile(rb'"merchant_id"\s*:\s*"([A-Za-z0-9_-]{1,100})"'),
}
_ADDRESSES = ("billing_address", "shipping_address")


@dataclass(frozen=True, slots=True)
class SquareEvent:
    """A parsed Square event: its envelope facts and the JSON body, which ``repr`` never shows."""

    event_type: str
    merchant_id: str
    event_id: str
    created_at: str
    payload: Json = field(repr=False)
    """The whole event as parsed (numbers with a fraction as ``Decimal``)."""

    @property
    def object(self) -> Any:
        """The event's object (``data.object.payment`` …, a list for inventory counts), or ``None``."""
        key = EVENT_OBJECTS.get(self.event_type)
        return jb.obj(jb.obj(self.payload.get("data")).get("object")).get(key) if key else None


class SquareAdapter:
    """Square event notifications (verified by the ingest layer) → envelopes and reported levels."""

    name: str = "square"

    def __init__(self) -> None:
        self.rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType({})

    # -- detect / split ------------------------------------------------------------------------

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """True for JSON with at least three of a Square event's top-level keys and no Shopify id."""
        try:
            if _JSON_START.match(raw) is None or any(m in raw for m in _SHOPIFY_MARKERS):
                return False
            return sum(m in raw for m in _MARKERS) >= 3
        except Exception:
            return False

    def split(self, raw: bytes) -> Batch | None:
        return None

    # -- parse -----------------------------------------------------------------------------------

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        """Build the envelope from the event's JSON body."""
        payload = jb.load_object(raw, _sniffed(raw))
        event = SquareEvent(
            event_type=jb.text(payload.get("type")),
            merchant_id=jb.text(payload.get("merchant_id")),
            event_id=jb.text(payload.get("event_id")),
            created_at=jb.text(payload.get("created_at")),
            payload=payload,
        )
        headers = _headers(event)
        headers["store_id"] = headers.get("location_id") or event.merchant_id
        keys, masked = _business_keys(event)
        sensitivity: Sensitivity = "pii" if "buyer_email" in keys or _has_address(event) else "none"
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=jb.text(payload.get("api_version")),
            message_type=event.event_type,
            control_id=event.event_id,
            sender=event.merchant_id,
            receiver="",
            raw=raw,
            raw_sha256=sha256_hex(raw),
            body=event,
            headers=headers,
            business_keys=keys,
            masked_keys=masked,
            sensitivity=sensitivity,
            receipt=receipt,
        )

    # -- validate --------------------------------------------------------------------------------

    def validate(self, envelope: Envelope) -> list[Issue]:
        """The event's own fields, then its object and the object's money."""
        event: SquareEvent = envelope.body
        issues = _event_issues(event)
        if event.event_type in EVENT_TYPES:
            issues.extend(_object_issues(event))
        return issues

    # -- respond / serialize ---------------------------------------------------------------------

    def respond(self, outcome: Outcome) -> Reply:
        """The JSON reply; a control id conflict is answered 200 so that Square does not redeliver."""
        return json_reply(outcome, conflict_status=200)

    def serialize(self, envelope: Envelope) -> bytes:
        """The body exactly as received."""
        return envelope.raw

    # -- stock -------------------------------------------------------------------------------------

    def movements(self, envelope: Envelope) -> list[Movement]:
        """None: Square's order events carry no line items (the ``square_orders`` sink reads them)."""
        return []

    def item_links(self, envelope: Envelope) -> list[ItemLink]:
        """None: this channel names no item ids of its own."""
        return []

    def reported_levels(self, envelope: Envelope) -> list[ReportedLevel]:
        """One level per ``IN_STOCK`` count of an ``inventory.count.updated`` with a whole quantity."""
        event = envelope.body
        if not isinstance(event, SquareEvent) or event.event_type != "inventory.count.updated":
            return []
        levels: list[ReportedLevel] = []
        for count in jb.objects(event.object):
            location, item = jb.text(count.get("location_id")), jb.text(count.get("catalog_object_id"))
            quantity = _whole(count.get("quantity"))
            if count.get("state") == "IN_STOCK" and location and item and quantity is not None:
                levels.append(ReportedLevel("square", location, item, quantity))
        return levels


# -- reading values ---------------------------------------------------------------------------------


def _sniffed(raw: bytes) -> dict[str, str]:
    """The event id, type and merchant named in the first bytes of an unreadable body, for the reply."""
    found: dict[str, str] = {}
    for name, pattern in _SNIFF.items():
        match = pattern.search(raw[:4096])
        if match:
            found[name] = match.group(1).decode("ascii")
    if "event_id" in found:
        found["control_id"] = found["event_id"]
    return found


def _whole(value: object) -> int | None:
    """A Square quantity (a decimal string such as ``"12"``) as an int, or ``None`` when it has a fraction."""
    if not isinstance(value, str):
        return None
    try:
        number = Decimal(value.strip())
    except InvalidOperation:
        return None
    if not number.is_finite() or number != number.to_integral_value() or abs(number) > MAX_QUANTITY:
        return None
    return int(number)


def _exponent(currency: str) -> int | None:
    """Minor-unit digits of an active ISO 4217 code; ``None`` when unknown or without minor units."""
    try:
        return currency_exponent(currency)
    except KeyError:
        return None


def _money_headers(money: object) -> dict[str, str]:
    """``amount_minor``, ``currency`` and ``total_amount`` (major units, a decimal string) of a Square amount."""
    money = jb.obj(money)
    amount, currency = jb.integer(money.get("amount")), jb.text(money.get("currency"))
    exponent = _exponent(currency) if currency else None
    return {
        "amount_minor": str(amount) if amount is not None else "",
        "currency": currency,
        "total_amount": str(Decimal(amount).scaleb(-exponent))
        if amount is not None and exponent is not None
        else "",
    }


def _money_fields(obj: Json) -> list[str]:
    """The names of ``obj``'s Square amounts: every top-level ``*_money`` field that is set."""
    return [name for name, value in obj.items() if name.endswith("_money") and value is not None]


# -- headers and keys --------------------------------------------------------------------------------


def _payment_headers(payment: Json) -> dict[str, str]:
    return {
        "payment_id": jb.text(payment.get("id")),
        "order_id": jb.text(payment.get("order_id")),
        "status": jb.text(payment.get("status")),
        "location_id": jb.text(payment.get("location_id")),
        **_money_headers(payment.get("total_money") or payment.get("amount_money")),
    }


def _order_headers(order: Json) -> dict[str, str]:
    return {
        "order_id": jb.text(order.get("order_id")),
        "state": jb.text(order.get("state")),
        "location_id": jb.text(order.get("location_id")),
    }


def _refund_headers(refund: Json) -> dict[str, str]:
    return {
        "refund_id": jb.text(refund.get("id")),
        "payment_id": jb.text(refund.get("payment_id")),
        "order_id": jb.text(refund.get("order_id")),
        "status": jb.text(refund.get("status")),
        "location_id": jb.text(refund.get("location_id")),
        **_money_headers(refund.get("amount_money")),
    }


def _count_headers(counts: object) -> dict[str, str]:
    return {"count": str(len(counts)) if isinstance(counts, list) else "0"}


_FAMILY_HEADERS: dict[str, Callable[[Any], dict[str, str]]] = {
    "payment": _payment_headers,
    "order": _order_headers,
    "refund": _refund_headers,
    "inventory": _count_headers,
}


def _headers(event: SquareEvent) -> dict[str, str]:
    headers = {
        "message_type": event.event_type,
        "control_id": event.event_id,
        "event_type": event.event_type,
        "merchant_id": event.merchant_id,
        "event_id": event.event_id,
        "created_at": event.created_at,
        "object_id": jb.text(jb.obj(event.payload.get("data")).get("id")),
    }
    if event.event_type in EVENT_TYPES:
        family = event.event_type.split(".", 1)[0]
        # inventory counts are a list, every other object an object: either may arrive as the other
        obj = event.object if family == "inventory" else jb.obj(event.object)
        headers.update(_FAMILY_HEADERS[family](obj))
    return headers


def _business_keys(event: SquareEvent) -> tuple[dict[str, str], dict[str, str]]:
    """``payment_id``, ``order_id``, ``refund_id`` where the object names them, and the buyer's e-mail."""
    obj = event.object if event.event_type in EVENT_TYPES else None
    if not isinstance(obj, dict):
        return {}, {}
    family = event.event_type.split(".", 1)[0]
    ids = {
        "payment_id": obj.get("id") if family == "payment" else obj.get("payment_id"),
        "order_id": obj.get("order_id"),
        "refund_id": obj.get("id") if family == "refund" else None,
    }
    email = jb.text(obj.get("buyer_email_address")) if family == "payment" else ""
    keys, masked = contact_keys(email or None, None, "buyer")
    keys.update({name: jb.text(value) for name, value in ids.items() if jb.text(value)})
    return keys, masked


def _has_address(event: SquareEvent) -> bool:
    obj = event.object
    return isinstance(obj, dict) and any(obj.get(name) for name in _ADDRESSES)


# -- checks ------------------------------------------------------------------------------------------


def _event_issues(event: SquareEvent) -> list[Issue]:
    issues: list[Issue] = []
    if not event.event_type:
        issues.append(Issue("error", "event_type_missing", "/type", "The event names no type."))
    elif event.event_type not in EVENT_TYPES:
        issues.append(
            Issue(
                "error",
                "unsupported_event_type",
                "/type",
                "The gateway does not take this Square event type.",
            )
        )
    if not event.event_id:
        issues.append(Issue("error", "event_id_missing", "/event_id", "The event carries no event id."))
    if not event.merchant_id:
        issues.append(Issue("error", "merchant_missing", "/merchant_id", "The event names no merchant."))
    return issues


def _object_issues(event: SquareEvent) -> list[Issue]:
    """The object must be where its event type puts it; its amounts must be minor-unit integers."""
    key = EVENT_OBJECTS[event.event_type]
    where = f"/data/object/{key}"
    obj = event.object
    expected = list if key == "inventory_counts" else dict
    if not isinstance(obj, expected):
        return [
            Issue("error", "object_missing", where, "The event does not carry the object its type names.")
        ]
    if not isinstance(obj, dict):
        return []
    issues: list[Issue] = []
    for name in _money_fields(obj):
        issues.extend(_money_issues(obj[name], f"{where}/{name}"))
    return issues


def _money_issues(money: object, where: str) -> list[Issue]:
    if not isinstance(money, dict):
        return [
            Issue(
                "error",
                "amount_invalid",
                where,
                "A Square amount must be an object with amount and currency.",
            )
        ]
    issues: list[Issue] = []
    if jb.integer(money.get("amount")) is None:
        issues.append(
            Issue(
                "error", "amount_invalid", f"{where}/amount", "An amount must be an integer in minor units."
            )
        )
    currency = money.get("currency")
    if not isinstance(currency, str) or currency_problem(currency) is not None:
        issues.append(
            Issue(
                "error",
                "currency_invalid",
                f"{where}/currency",
                "The currency is not an active ISO 4217 code.",
            )
        )
    return issues


def order_movements(order: Json, skus: Mapping[str, str]) -> list[Movement]:
    """The stock movements of a COMPLETED Square order read from its Orders API (``GET /v2/orders/{id}``):
    each line item of a mapped catalog variation takes its quantity off hand at ``square:{location}``,
    each returned line puts it back. The webhooks carry no lines, so this is how Square sales reach the
    ledger (see :mod:`adapters.retail.square_orders`). Keys name the order and the line's ``uid``."""
    order_id, location = jb.text(order.get("id")), jb.text(order.get("location_id"))
    if not order_id or not location or jb.text(order.get("state")) != "COMPLETED":
        return []
    prefix, place = f"square:{location}:order:{order_id}", f"square:{location}"

    def moves(lines: list[Json], label: str, suffix: str, sign: int, kind: MovementKind) -> list[Movement]:
        out = []
        for line in lines:
            sku, quantity, uid = (
                skus.get(jb.text(line.get("catalog_object_id"))),
                _whole(line.get("quantity")),
                jb.text(line.get("uid")),
            )
            if sku and uid and quantity is not None and quantity > 0:
                key = f"{prefix}:{label}:{uid}{suffix}"
                out.append(Movement(key, place, sku, on_hand=sign * quantity, kind=kind))
        return out

    returned = [
        line for ret in jb.objects(order.get("returns")) for line in jb.objects(ret.get("return_line_items"))
    ]
    return [
        *moves(jb.objects(order.get("line_items")), "line", ":sale", -1, "sale"),
        *moves(returned, "return", "", 1, "return"),
    ]
