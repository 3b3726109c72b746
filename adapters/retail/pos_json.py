"""The generic POS JSON adapter (``pos_json``): a documented JSON shape for point-of-sale tickets.

For point-of-sale systems that speak neither ARTS POSLog nor a webhook platform. One message is one
ticket, version 1 (``"schema": "pos_json/1"``)::

    {"schema": "pos_json/1", "kind": "sale",
     "store": "S001", "register": "R2", "ticket": "T-000123", "business_day": "2026-11-27",
     "occurred_at": "2026-11-27T10:15:00Z", "currency": "EUR", "operator": "op-7",
     "customer": {"email": "jane@example.com", "phone": "+44 20 7946 0123"},
     "lines": [{"line_id": "1", "sku": "SKU-RED-M", "quantity": 2, "unit_price": "19.99",
                "discount": "0.80", "tax": "3.20", "voided": false}],
     "tenders": [{"type": "card", "amount": "42.38"}],
     "total": "42.38", "original_ticket": "T-000100"}

``kind`` is ``sale``, ``return``, ``void`` (cancels a ticket that was never taken), ``reserve``
(stock held for an order, such as click and collect) or ``release`` (the hold given back).
:class:`POSTicket` is the model and :data:`JSON_SCHEMA` the JSON Schema an integrator validates
against (:func:`json_schema`). Amounts are decimal strings or JSON numbers, read exactly: the body
is parsed with ``json.loads(..., parse_float=Decimal)``, so ``19.99`` is ``Decimal("19.99")`` and
never a binary float. Line amounts are line totals: a line is worth
``quantity * unit_price - discount + tax``; tender amounts are what was applied to the ticket
(after change given).

Envelope: ``message_type`` ``pos/<kind>``, ``version`` ``1``, ``control_id``
``<store>:<register>:<business day>:<ticket>`` (a POS that numbers tickets afresh each day is
fine), ``sender`` the store, ``correlation_id`` the ``original_ticket``
of a return or void. ``body`` is the :class:`POSTicket`, or the JSON object as read when it does
not fit the model (``parse`` is tolerant: :meth:`POSJSONAdapter.validate` says why). Headers (see
:data:`HEADER_KEYS`) are read from the JSON object wherever a field is readable. Business keys:
``ticket``, and ``customer_email`` / ``customer_phone`` shown masked (``j***@example.com``,
``***0123``); a message naming a customer is ``pii``.

Issues: ``malformed_json`` and ``not_an_object`` (fatal, from ``parse``); ``unsupported_schema``
(a ``pos_json/<n>`` version other than 1: a refusal); ``schema_invalid`` at the JSON pointer of
each field that does not fit the model; and the business rules ``total_mismatch``,
``tender_mismatch`` (sales only), ``duplicate_line_id`` and ``currency_precision``. No diagnostics
sentence repeats a value of the message. Replies are :func:`adapters.retail.reply.json_reply`.

Stock (:class:`gateway.stock.StockSource`): each non-voided line of a sale takes its quantity off
hand at ``store:<store>``, a return puts it back, a reservation reserves it and a release gives the
reservation back; a void moves nothing.
"""

from __future__ import annotations

import codecs
import contextlib
import copy
import re
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from adapters.finance.identifiers import currency_problem, decimals_problem
from adapters.retail.jsonbody import load_object
from adapters.retail.keys import contact_keys, sku_keys
from adapters.retail.reply import json_reply
from gateway.adapter import Batch, Issue, Outcome, Reply
from gateway.envelope import Envelope, Receipt, new_id, sha256_hex
from gateway.stock import MAX_QUANTITY, ItemLink, Movement, MovementKind, ReportedLevel

__all__ = [
    "CONTENT_TYPE",
    "HEADER_KEYS",
    "JSON_SCHEMA",
    "SCHEMA",
    "POSJSONAdapter",
    "POSTicket",
    "json_schema",
]

CONTENT_TYPE = "application/json"
SCHEMA: Final = "pos_json/1"
"""The ``schema`` value of the version this adapter reads."""
HEADER_KEYS = (
    "message_type",
    "version",
    "control_id",
    "store_id",
    "register_id",
    "ticket",
    "business_day",
    "currency",
    "total_amount",
    "line_count",
    "skus",
)
"""Every header this adapter promotes (``gateway check`` warns about routes matching others)."""

Kind = Literal["sale", "return", "void", "reserve", "release"]
KINDS: tuple[str, ...] = get_args(Kind)

# -- the model -----------------------------------------------------------------------------------

ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
SKU_PATTERN = r"^[^\s,\x00-\x1f\x7f](?:[^,\x00-\x1f\x7f]{0,62}[^\s,\x00-\x1f\x7f])?$"
"""1 to 64 characters, no control characters or commas (the ``skus`` header joins SKUs with commas),
no space at either end."""
EMAIL_PATTERN = r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$"
PHONE_PATTERN = r"^\+?[0-9][0-9 ().-]{5,30}[0-9]$"
CURRENCY_PATTERN = r"^[A-Z]{3}$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
DATE_TIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)
MONEY_PATTERN = r"^[0-9]{1,14}(\.[0-9]{1,4})?$"
"""An amount written as a string: digits and at most 4 decimals (the most any ISO 4217 currency has);
no sign, exponent or spaces. Whether the currency allows that many is the ``currency_precision`` rule."""
MAX_LINES = 10_000
MAX_TENDERS = 100

_ID = re.compile(ID_PATTERN)
_SKU = re.compile(SKU_PATTERN)
_EMAIL = re.compile(EMAIL_PATTERN)
_PHONE = re.compile(PHONE_PATTERN)
_CURRENCY = re.compile(CURRENCY_PATTERN)
_DATE = re.compile(DATE_PATTERN)
_DATE_TIME = re.compile(DATE_TIME_PATTERN)
_MONEY = re.compile(MONEY_PATTERN)
_AMOUNT_DIGITS = 18
"""The most digits an amount has (before or after the point: ``Money`` takes 18 in all)."""
_PLAIN_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
_SCHEMA_VERSION = re.compile(r"pos_json/([A-Za-z0-9._-]{1,16})")

_OWN_ERRORS: dict[str, str] = {
    "amount_type": "An amount is a decimal string or a JSON number, never a binary float or a boolean.",
    "amount_format": "An amount is written as digits with an optional decimal point: no sign, exponent or spaces.",
    "currency_inactive": "The currency is not an active ISO 4217 code.",
    "date_format": "The date must be a string written YYYY-MM-DD.",
    "date_time_format": "The date-time must be a string in RFC 3339 form with a time zone (2026-11-27T10:15:00Z).",
}
"""Error types this module raises, with their fixed sentences (none repeats a value)."""


def _own(kind: str) -> PydanticCustomError:
    return PydanticCustomError(kind, _OWN_ERRORS[kind])


def _amount_input(value: object) -> object:
    """Admit only exact amounts: a plain decimal string, an int or a ``Decimal`` (a JSON number
    read with ``parse_float=Decimal``). A float has already lost digits, so it is refused."""
    if isinstance(value, bool | float):
        raise _own("amount_type")
    if isinstance(value, str) and not _PLAIN_DECIMAL.fullmatch(value):
        raise _own("amount_format")
    return value


def _text_matching(pattern: re.Pattern[str], error: str) -> Callable[[object], object]:
    """A before-validator requiring a string of ``pattern`` (pydantic would also take numbers for
    dates, and its own date formats)."""

    def check(value: object) -> object:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise _own(error)
        return value

    return check


def _active_currency(code: str) -> str:
    if currency_problem(code) is not None:
        raise _own("currency_inactive")
    return code


Money = Annotated[
    Decimal,
    BeforeValidator(_amount_input),
    Field(ge=0, max_digits=18, decimal_places=4),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": MONEY_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A non-negative amount, as a decimal string (preferred) or a JSON number, "
            "with no more decimals than the currency has.",
        }
    ),
]
Identifier = Annotated[str, Field(pattern=ID_PATTERN, min_length=1, max_length=64)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Customer(_Model):
    """The customer the ticket was for, where the POS knows them (personal data)."""

    email: str | None = Field(None, max_length=254, pattern=EMAIL_PATTERN, description="E-mail address.")
    phone: str | None = Field(
        None,
        pattern=PHONE_PATTERN,
        description="Telephone number: digits, an optional leading +, spaces, ().-",
    )


class Line(_Model):
    """One line of the ticket. Its discount and tax are for the whole line, not per unit."""

    line_id: Identifier = Field(description="Unique within the ticket.")
    sku: str = Field(pattern=SKU_PATTERN, min_length=1, max_length=64, description="The item's SKU.")
    quantity: StrictInt = Field(ge=1, le=MAX_QUANTITY, description="Units, a whole number of at least 1.")
    unit_price: Money = Field(description="Price of one unit, before discount and tax.")
    discount: Money = Field(Decimal(0), description="Discount on the whole line.")
    tax: Money = Field(Decimal(0), description="Tax on the whole line, added to its amount.")
    voided: StrictBool = Field(
        False, description="A line cancelled on the ticket: it neither counts nor moves stock."
    )


class Tender(_Model):
    """One payment applied to the ticket (after change given)."""

    type: Literal["card", "cash", "gift_card", "other"]
    amount: Money


class POSTicket(_Model):
    """A point-of-sale ticket in the pos_json/1 shape of the connector gateway."""

    schema_id: Literal["pos_json/1"] = Field(alias="schema", description="The shape and its version.")
    kind: Kind = Field(
        description="sale; return; void (a ticket cancelled before it was taken: no stock moves); "
        "reserve (stock held for an order); release (a hold given back)."
    )
    store: Identifier = Field(description="The store's id; the message's sender.")
    register_id: Identifier = Field(alias="register", description="The register (till) within the store.")
    ticket: Identifier = Field(description="The ticket number, unique per store and register.")
    business_day: Annotated[date, BeforeValidator(_text_matching(_DATE, "date_format"))] = Field(
        description="The trading day the ticket belongs to.",
        json_schema_extra={"pattern": DATE_PATTERN},
    )
    occurred_at: Annotated[datetime, BeforeValidator(_text_matching(_DATE_TIME, "date_time_format"))] = Field(
        description="When the ticket was closed, with a time zone.",
        json_schema_extra={"pattern": DATE_TIME_PATTERN},
    )
    currency: Annotated[str, AfterValidator(_active_currency)] = Field(
        pattern=CURRENCY_PATTERN, description="An active ISO 4217 currency code."
    )
    operator: Identifier | None = Field(None, description="The cashier or operator id.")
    customer: Customer | None = Field(None, description="The customer, where the POS knows them.")
    lines: list[Line] = Field(min_length=1, max_length=MAX_LINES)
    tenders: list[Tender] = Field(default_factory=list, max_length=MAX_TENDERS)
    total: Money = Field(description="The ticket total: the sum of its non-voided lines.")
    original_ticket: Identifier | None = Field(
        None, description="For a return or a void: the ticket it refers to."
    )


SCHEMA_ID = "urn:connector-gateway:schema:pos_json:1"
JSON_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": SCHEMA_ID,
    **POSTicket.model_json_schema(),
    "title": "POS JSON ticket (pos_json/1)",
}
"""The JSON Schema of ``pos_json/1`` (draft 2020-12), for the HTTP API to publish. The rules it cannot
say (an active currency and its decimals, totals, unique line ids) are checked by ``validate``."""


def json_schema() -> dict[str, Any]:
    """A copy of :data:`JSON_SCHEMA` that the caller may change."""
    return copy.deepcopy(JSON_SCHEMA)


# -- schema errors as issues ---------------------------------------------------------------------

_SENTENCES: dict[str, str] = {
    "missing": "A required field is missing.",
    "extra_forbidden": "This field is not part of the pos_json/1 shape.",
    "model_type": "The value must be a JSON object.",
    "model_attributes_type": "The value must be a JSON object.",
    "dict_type": "The value must be a JSON object.",
    "list_type": "The value must be a JSON array.",
    "too_short": "The array must have at least {min_length} items.",
    "too_long": "The array may have at most {max_length} items.",
    "string_type": "The value must be a string.",
    "string_too_short": "The text must have at least {min_length} characters.",
    "string_too_long": "The text may have at most {max_length} characters.",
    "string_pattern_mismatch": "The text does not match the pattern {pattern}.",
    "literal_error": "The value must be one of {expected}.",
    "int_type": "The value must be a whole number.",
    "int_parsing": "The value must be a whole number.",
    "int_from_float": "The value must be a whole number.",
    "bool_type": "The value must be true or false.",
    "greater_than_equal": "The value must be at least {ge}.",
    "less_than_equal": "The value may be at most {le}.",
    "decimal_type": "The value must be a decimal amount.",
    "decimal_parsing": "The value must be a decimal amount.",
    "finite_number": "The amount must be a finite number.",
    "decimal_max_digits": "The amount may have at most {max_digits} digits.",
    "decimal_max_places": "The amount may have at most {decimal_places} decimals.",
    "decimal_whole_digits": "The amount may have at most {whole_digits} digits before the decimal point.",
    "date_parsing": "The date does not exist in the calendar.",
    "date_from_datetime_parsing": "The date does not exist in the calendar.",
    "datetime_parsing": "The date-time does not exist in the calendar.",
    "datetime_from_date_parsing": "The date-time does not exist in the calendar.",
}
"""A fixed sentence per pydantic error type: pydantic's own ``msg`` quotes the value for some types.
Placeholders name only constraints (``ctx`` keys of :data:`_CONSTRAINTS`), never the input."""
_CONSTRAINTS = frozenset({"min_length", "max_length", "pattern", "expected", "ge", "le", "max_digits",
                          "decimal_places", "whole_digits"})  # fmt: skip


def _pointer(loc: tuple[int | str, ...]) -> str:
    """The JSON pointer (RFC 6901) of a pydantic error location: ``/lines/0/quantity``."""
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in loc)


def _sentence(error: ErrorDetails) -> str:
    kind = error["type"]
    if kind in _OWN_ERRORS:
        return _OWN_ERRORS[kind]
    template = _SENTENCES.get(kind)
    if template is None:
        return f"The value is not valid here ({kind})."
    ctx = {k: v for k, v in (error.get("ctx") or {}).items() if k in _CONSTRAINTS}
    try:
        return template.format(**ctx)
    except (KeyError, IndexError):
        return f"The value is not valid here ({kind})."


def _schema_issues(exc: ValidationError) -> list[Issue]:
    return [
        Issue("error", "schema_invalid", _pointer(e["loc"]), _sentence(e))
        for e in exc.errors(include_url=False, include_input=False)
    ]


# -- reading the JSON object where it is readable ------------------------------------------------


def _readable(data: Mapping[str, Any], key: str, pattern: re.Pattern[str]) -> str:
    """``data[key]`` when it is a string of ``pattern``, else ``""``."""
    value = data.get(key)
    return value if isinstance(value, str) and pattern.fullmatch(value) else ""


def _amount_text(value: object) -> str:
    """An amount as a plain decimal string (``42.38``), or ``""`` when it is not a readable amount."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        return ""
    if isinstance(value, Decimal) and not _writable(value):
        return ""
    text = value if isinstance(value, str) else format(Decimal(value), "f")
    return text if _MONEY.fullmatch(text) else ""


def _writable(number: Decimal) -> bool:
    """True when ``number`` written out in full is short enough to be an amount: ``1e999999999``, a JSON
    number, is a billion digits in fixed-point notation (writing them out hung)."""
    exponent = number.as_tuple().exponent
    return isinstance(exponent, int) and exponent >= -_AMOUNT_DIGITS and number.adjusted() < _AMOUNT_DIGITS


def _schema_version(data: Mapping[str, Any]) -> str | None:
    """The ``n`` of ``"schema": "pos_json/<n>"``, or ``None`` when there is no such member."""
    value = data.get("schema")
    m = _SCHEMA_VERSION.fullmatch(value) if isinstance(value, str) else None
    return m.group(1) if m else None


def _headers(data: Mapping[str, Any]) -> dict[str, str]:
    """The promoted headers, from whatever fields of the JSON object are readable."""
    kind = data.get("kind")
    store = _readable(data, "store", _ID)
    register = _readable(data, "register", _ID)
    ticket = _readable(data, "ticket", _ID)
    day = _readable(data, "business_day", _DATE)
    headers = {
        "message_type": f"pos/{kind}" if isinstance(kind, str) and kind in KINDS else "",
        "version": _schema_version(data) or "1",
        "control_id": f"{store}:{register}:{day}:{ticket}" if store and register and day and ticket else "",
        "store_id": store,
        "register_id": register,
        "ticket": ticket,
        "business_day": _readable(data, "business_day", _DATE),
        "currency": _readable(data, "currency", _CURRENCY),
        "total_amount": _amount_text(data.get("total")),
    }
    lines = data.get("lines")
    if isinstance(lines, list):
        headers["line_count"] = str(len(lines))
        skus = (line.get("sku") for line in lines if isinstance(line, dict))
        headers["skus"] = ",".join(dict.fromkeys(s for s in skus if isinstance(s, str) and _SKU.fullmatch(s)))
    return {k: v for k, v in headers.items() if v or k in ("message_type", "version", "control_id")}


def _customer_keys(data: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """Business keys and their masked forms for the customer's e-mail and phone, where readable."""
    customer = data.get("customer")
    if not isinstance(customer, dict):
        return {}, {}
    return contact_keys(_readable(customer, "email", _EMAIL), _readable(customer, "phone", _PHONE))


# -- business rules ------------------------------------------------------------------------------


def _line_amount(line: Line) -> Decimal:
    return line.quantity * line.unit_price - line.discount + line.tax


def _rules(ticket: POSTicket) -> list[Issue]:
    """The rules the model cannot express (see the module docstring)."""
    issues: list[Issue] = []
    seen: set[str] = set()
    for i, line in enumerate(ticket.lines):
        if line.line_id in seen:
            issues.append(
                Issue(
                    "error",
                    "duplicate_line_id",
                    f"/lines/{i}/line_id",
                    "Another line of the ticket has this line id.",
                )
            )
        seen.add(line.line_id)
    if sum((_line_amount(line) for line in ticket.lines if not line.voided), Decimal(0)) != ticket.total:
        issues.append(
            Issue(
                "error",
                "total_mismatch",
                "/total",
                "The total is not the sum of the non-voided lines (quantity * unit price - discount + tax).",
            )
        )
    if ticket.kind == "sale" and sum((t.amount for t in ticket.tenders), Decimal(0)) != ticket.total:
        issues.append(
            Issue(
                "error", "tender_mismatch", "/tenders", "The tenders of the sale do not add up to its total."
            )
        )
    amounts: list[tuple[str, Decimal]] = [("/total", ticket.total)]
    for i, line in enumerate(ticket.lines):
        amounts += [(f"/lines/{i}/{name}", getattr(line, name)) for name in ("unit_price", "discount", "tax")]
    amounts += [(f"/tenders/{i}/amount", t.amount) for i, t in enumerate(ticket.tenders)]
    for where, amount in amounts:
        problem = decimals_problem(amount, ticket.currency)
        if problem is not None:
            issues.append(Issue("error", "currency_precision", where, problem))
    return issues


_MOVES: Mapping[str, tuple[MovementKind, int, int]] = MappingProxyType(
    {
        "sale": ("sale", -1, 0),
        "return": ("return", 1, 0),
        "reserve": ("reserve", 0, 1),
        "release": ("release", 0, -1),
    }
)
"""Per kind of ticket: the movement kind and the signs of its on-hand and reserved changes. A void
is absent: it cancels a ticket that was never taken, so nothing moves."""


# -- the adapter ---------------------------------------------------------------------------------


class POSJSONAdapter:
    """The ``pos_json`` adapter (see the module docstring)."""

    name: str = "pos_json"
    rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType({})

    def __repr__(self) -> str:
        return "POSJSONAdapter()"

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """A JSON object (after whitespace or a UTF-8 BOM) naming ``"pos_json/`` in its first 4 KiB."""
        head = bytes(raw[:4096])
        return head.removeprefix(codecs.BOM_UTF8).lstrip().startswith(b"{") and b'"pos_json/' in head

    def split(self, raw: bytes) -> Batch | None:
        return None

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        """Read the JSON object (amounts as exact decimals) and the ticket where it fits the model."""
        data = load_object(bytes(raw), {}, "one JSON object, one ticket")
        body: POSTicket | dict[str, Any] = data
        if _schema_version(data) in (None, "1"):
            with contextlib.suppress(ValidationError):  # validate() reports why
                body = POSTicket.model_validate(data)
        headers = _headers(data)
        keys, masked = _customer_keys(data)
        ticket = headers.get("ticket", "")
        if ticket:
            keys["ticket"] = ticket
        keys.update(sku_keys(headers.get("skus", "")))
        original = _readable(data, "original_ticket", _ID)
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=headers["version"],
            message_type=headers["message_type"],
            control_id=headers["control_id"],
            sender=headers.get("store_id", ""),
            receiver="",
            raw=raw,
            raw_sha256=sha256_hex(raw),
            body=body,
            headers=headers,
            business_keys=keys,
            masked_keys=masked,
            sensitivity="pii" if data.get("customer") is not None else "none",
            correlation_id=original,
            receipt=receipt,
        )

    def validate(self, envelope: Envelope) -> list[Issue]:
        """Schema issues (or ``unsupported_schema``) for a body that is not a ticket, else the rules."""
        body = envelope.body
        if isinstance(body, POSTicket):
            return _rules(body)
        version = _schema_version(body)
        if version not in (None, "1"):
            return [
                Issue(
                    "error",
                    "unsupported_schema",
                    "/schema",
                    f"This gateway reads {SCHEMA} only; the message names another version of the shape.",
                )
            ]
        try:
            ticket = POSTicket.model_validate(body)
        except ValidationError as exc:
            return _schema_issues(exc)
        return _rules(ticket)

    def movements(self, envelope: Envelope) -> list[Movement]:
        """One movement per non-voided line (module docstring); none when the body is not a ticket."""
        ticket = envelope.body
        if not isinstance(ticket, POSTicket) or ticket.kind not in _MOVES:
            return []
        kind, on_hand, reserved = _MOVES[ticket.kind]
        prefix = f"{self.name}:{ticket.store}:{ticket.register_id}:{ticket.business_day}:{ticket.ticket}:line"
        return [
            Movement(
                key=f"{prefix}:{line.line_id}:{kind}",
                location=f"store:{ticket.store}",
                sku=line.sku,
                on_hand=on_hand * line.quantity,
                reserved=reserved * line.quantity,
                kind=kind,
            )
            for line in ticket.lines
            if not line.voided
        ]

    def item_links(self, envelope: Envelope) -> list[ItemLink]:
        """None: this channel names no item ids of its own."""
        return []

    def reported_levels(self, envelope: Envelope) -> list[ReportedLevel]:
        """A POS ticket reports no channel levels."""
        return []

    def respond(self, outcome: Outcome) -> Reply:
        return json_reply(outcome)

    def serialize(self, envelope: Envelope) -> bytes:
        """The ticket exactly as received."""
        return envelope.raw
