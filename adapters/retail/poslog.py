"""The ARTS/OMG POSLog adapter (``poslog``): point-of-sale transaction logs as envelopes and stock movements.

Takes POSLog XML in the ARTS namespace ``http://www.nrf-arts.org/IXRetail/namespace/`` (also the
variant without the trailing slash, and documents with no namespace). Vendor extensions in other
namespaces (NCR ACS ``acs:`` …) are ignored. Every document goes through the hardened
:func:`gateway.xml.parse_xml`.

A POSLog with several ``<Transaction>`` elements is a batch: :meth:`POSLogAdapter.split` makes each
Transaction a POSLog document of its own (the original root's namespace declarations and attributes
kept), so that each unit parses alone. A unit is one Transaction, under a ``<POSLog>`` root or as the
root itself.

Envelope: ``protocol`` ``poslog``; ``version`` the ``Version`` of the RetailTransaction /
ControlTransaction (else the POSLog's ``Version`` or ``MajorVersion.MinorVersion.FixVersion``);
``message_type`` ``RetailTransaction/Sale`` (it has sale lines), ``RetailTransaction/Return`` (every
stock line is a return), ``RetailTransaction/Void`` (``CancelFlag`` or ``VoidFlag`` on the
RetailTransaction or the Transaction, or a ``TransactionStatus`` of Suspended, Voided, PostVoided,
Canceled or InProcess), plain ``RetailTransaction`` otherwise, and for other
transactions the name of their element (``ControlTransaction``, ``TenderControlTransaction`` …);
``control_id`` ``{store}-{workstation}-{sequence}-{business day}``; ``sender`` the store. Headers
(:data:`HEADER_KEYS`, every key always present): ``store_id`` (RetailStoreID, or POSLog 6's
``BusinessUnit/UnitID``), ``workstation_id``, ``sequence_number``, ``business_day``, ``end_time``,
``operator_id``, ``currency``, ``total_amount`` (the TransactionGrandAmount as a decimal),
``line_count`` (the Sale and Return lines that are not voided) and ``skus`` (their item ids, comma
separated, each once). The operator's name is never read. ``body`` is a :class:`Transaction`: plain
values, no lxml element is kept alive.

Line voids: a LineItem is voided by ``VoidFlag="true"`` on itself or its Sale/Return element, or a
``<VoidFlag>true</VoidFlag>`` or ``<Void>`` child. NCR ACS (the shared corpus) records a line void
as a *reversal*: a new voided line with the negated quantity and amount, while the cancelled line
stays unflagged. A voided stock line with a negative quantity therefore also voids the latest earlier
line of the same kind, item and opposite quantity, so that neither moves stock nor counts in the
total (without this the cancelled sale would still take stock off hand).

Validation (:meth:`POSLogAdapter.validate`): ``store_missing``, ``sequence_missing``,
``business_day_invalid`` (missing or not ``YYYY-MM-DD``), ``quantity_invalid`` (not a number, or
negative on a line that is not a void reversal), ``amount_invalid`` (a money element that is not a
plain decimal) and ``total_mismatch``: for a RetailTransaction with a TransactionGrandAmount, the
non-voided Sale ExtendedAmounts - Return ExtendedAmounts + Tax Amounts - Discount Amounts must equal
it (an error). The check runs only when every amount involved is present and readable, and is skipped
when the transaction carries amounts it cannot account for: loyalty rewards (every NCR transaction
has them), line items of a kind it does not know, price modifiers or prices that include tax. With
Return lines, where vendors differ on the signs of refunded tax and of the grand total, magnitudes
are compared. ``transaction_missing`` and ``not_poslog`` are :class:`~gateway.adapter.ParseError`
issues, as are the hardened parser's own (``not_well_formed``, ``doctype_forbidden`` …).

Stock (:class:`gateway.stock.StockSource`): each Sale line that is not voided takes its quantity off
hand at ``store:{store}``, each Return line puts it back; a voided, cancelled or training transaction,
a voided line, a weighed item (a fractional quantity or a weight unit of measure), an item whose
``ItemType`` is not ``Stock`` and discount, tax and tender lines move nothing. The movement key is
``poslog:{store}:{workstation}:{business day}:{sequence}:line:{LineItem SequenceNumber or position}``.

Duplicates: ``content_sha256`` is the digest of the Transaction's exclusive canonical form, so a
transaction posted alone and later found again in the day's file is recognised as the same message
(acknowledged again, applied once), whatever bytes surround it.

Replies are the retail JSON reply (:func:`adapters.retail.reply.json_reply`).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Literal

from lxml import etree

from adapters.retail.keys import sku_keys
from adapters.retail.reply import json_reply
from gateway.adapter import Batch, Issue, Outcome, ParseError, Reply
from gateway.envelope import Envelope, Receipt, new_id, sha256_hex
from gateway.stock import MAX_QUANTITY, ItemLink, Movement, ReportedLevel
from gateway.xml import DEFAULT_MAX_DEPTH, XMLRejected, parse_xml

__all__ = ["CONTENT_TYPE", "HEADER_KEYS", "NAMESPACES", "Line", "POSLogAdapter", "Transaction"]

CONTENT_TYPE = "application/json"
ARTS_NS = "http://www.nrf-arts.org/IXRetail/namespace/"
NAMESPACES: tuple[str, ...] = (ARTS_NS, ARTS_NS.rstrip("/"), "")
"""The namespaces a POSLog may be in: ARTS, ARTS without the trailing slash, none."""
HEADER_KEYS: tuple[str, ...] = (
    "message_type",
    "version",
    "control_id",
    "store_id",
    "workstation_id",
    "sequence_number",
    "business_day",
    "end_time",
    "operator_id",
    "currency",
    "total_amount",
    "line_count",
    "skus",
)
"""Every header this adapter promotes (``gateway check`` warns about routes matching others)."""

LineKind = Literal["sale", "return", "discount", "tax", "tender", "loyalty", "void", "other"]

_SNIFF = (b"<POSLog", b"IXRetail/namespace")
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_TRUE = frozenset({"true", "1"})
_WEIGHT_UNITS = frozenset({"KGM", "GRM", "LBR", "ONZ", "KG", "G", "LB", "OZ", "KGS", "LBS"})
_LINE_KINDS: tuple[tuple[str, LineKind], ...] = (
    ("Sale", "sale"),
    ("Return", "return"),
    ("Discount", "discount"),
    ("Tax", "tax"),
    ("Tender", "tender"),
    ("LoyaltyReward", "loyalty"),
)
_LINE_FRAME = frozenset({"SequenceNumber", "BeginDateTime", "EndDateTime", "VoidFlag", "Void"})
"""LineItem children that say nothing about what the line is."""
_STOCK_MONEY = (
    "RegularSalesUnitPrice",
    "ActualSalesUnitPrice",
    "UnitListPrice",
    "UnitCostPrice",
    "ExtendedAmount",
    "DiscountAmount",
    "ExtendedDiscountAmount",
)
_OTHER_MONEY = ("Amount", "TaxableAmount")
_PRICE_EXTRAS = ("RetailPriceModifier", "PriceDerivationResult")
"""Stock line children whose amounts the total check cannot place."""
_SNIFF_FIELD = {
    name: re.compile(rb"<(?:[\w.-]+:)?" + name.encode() + rb">\s*([^<&\s]{1,64})\s*<")
    for name in ("RetailStoreID", "WorkstationID", "SequenceNumber", "BusinessDayDate")
}


@dataclass(frozen=True, slots=True)
class Line:
    """One LineItem of a RetailTransaction."""

    kind: LineKind
    sequence: str
    """The LineItem's SequenceNumber, or its 1-based position when it has none."""
    item_id: str = ""
    """Sale/Return: ``ItemID``, else ``POSIdentity/POSItemID``."""
    quantity: Decimal | None = None
    """Sale/Return: ``Quantity`` (1 when absent); ``None`` when it is not a number."""
    amount: Decimal | None = None
    """Sale/Return ``ExtendedAmount``; Tax, Discount, Tender ``Amount``; ``None`` when absent or unreadable."""
    voided: bool = False
    stock: bool = True
    """Sale/Return of an item whose ``ItemType`` is ``Stock`` or not given."""
    weighed: bool = False
    """The quantity is a weight (a fractional quantity or a weight unit of measure)."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """The one Transaction of a POSLog unit, read into plain values."""

    kind: str
    """The transaction's element: ``RetailTransaction``, ``ControlTransaction`` … (``Transaction`` if none)."""
    version: str
    store_id: str
    workstation_id: str
    sequence_number: str
    business_day: str
    end_time: str
    operator_id: str
    currency: str
    voided: bool
    training: bool
    grand_total: Decimal | None
    lines: tuple[Line, ...] = ()
    unaccounted: bool = False
    """It carries amounts the total check cannot account for (loyalty rewards, price modifiers …)."""
    problems: tuple[Issue, ...] = ()
    """Quantity and amount issues found while reading (the body keeps values, not text)."""
    location: str = "/POSLog/Transaction"

    @property
    def stock_lines(self) -> tuple[Line, ...]:
        """The Sale and Return lines that are not voided."""
        return tuple(ln for ln in self.lines if ln.kind in ("sale", "return") and not ln.voided)

    @property
    def message_type(self) -> str:
        if self.kind != "RetailTransaction":
            return self.kind
        if self.voided:
            return "RetailTransaction/Void"
        kinds = {ln.kind for ln in self.stock_lines}
        if "sale" in kinds:
            return "RetailTransaction/Sale"
        if kinds == {"return"}:
            return "RetailTransaction/Return"
        return "RetailTransaction"

    @property
    def control_id(self) -> str:
        return f"{self.store_id}-{self.workstation_id}-{self.sequence_number}-{self.business_day}"


class POSLogAdapter:
    """ARTS/OMG POSLog XML adapter; ``max_depth`` caps element nesting (the hardened parser's depth cap)."""

    name: str = "poslog"

    def __init__(self, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.max_depth = max_depth
        self.rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType({})

    def __repr__(self) -> str:
        return f"POSLogAdapter(max_depth={self.max_depth})"

    # -- detect / split ---------------------------------------------------------------------

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """True when the first 4 KiB hold ``<POSLog`` or the ARTS namespace."""
        head = raw[:4096]
        return any(mark in head for mark in _SNIFF)

    def split(self, raw: bytes) -> Batch | None:
        """One standalone POSLog per Transaction when there are several; ``None`` otherwise
        (one Transaction, or bytes that do not parse: :meth:`parse` reports those)."""
        try:
            root = self._read(raw)
        except XMLRejected:
            return None
        ns = _namespace(root)
        if ns is None or etree.QName(root).localname != "POSLog":
            return None
        transactions = list(root.iterchildren(f"{ns}Transaction"))
        if len(transactions) < 2:
            return None
        return Batch("POSLog", raw, [_unit(root, tx) for tx in transactions])

    # -- parse --------------------------------------------------------------------------------

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        try:
            root = self._read(raw)
        except XMLRejected as exc:
            headers = _sniffed(raw) if exc.code == "not_well_formed" else {}
            raise ParseError([Issue("fatal", exc.code, "", exc.diagnostics)], headers) from None
        ns = _namespace(root)
        local = etree.QName(root).localname
        if ns is None or local not in ("POSLog", "Transaction"):
            raise ParseError(
                [Issue("fatal", "not_poslog", "/", "The root element is not an ARTS POSLog or Transaction.")]
            )
        if local == "Transaction":
            element, location = root, "/Transaction"
        else:
            found = list(root.iterchildren(f"{ns}Transaction"))
            if not found:
                raise ParseError(
                    [Issue("fatal", "transaction_missing", "/POSLog", "The POSLog holds no Transaction.")]
                )
            if len(found) > 1:
                raise ParseError(
                    [
                        Issue(
                            "fatal",
                            "multiple_transactions",
                            "/POSLog",
                            f"The POSLog holds {len(found)} Transactions; a batch must be split first.",
                        )
                    ]
                )
            element, location = found[0], "/POSLog/Transaction"
        tx = _read_transaction(element, ns, _root_version(root) if local == "POSLog" else "", location)
        headers = _headers(tx)
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=tx.version,
            message_type=headers["message_type"],
            control_id=headers["control_id"],
            sender=tx.store_id,
            receiver="",
            raw=raw,
            raw_sha256=sha256_hex(raw),
            body=tx,
            headers=headers,
            business_keys={"transaction": tx.control_id, **sku_keys(headers["skus"])},
            masked_keys={"transaction": tx.control_id},
            sensitivity="pii",
            content_sha256=sha256_hex(_canonical(element)),
            receipt=receipt,
        )

    def _read(self, raw: bytes) -> etree._Element:
        return parse_xml(raw, max_bytes=max(len(raw), 1), max_depth=self.max_depth)

    # -- validate -------------------------------------------------------------------------------

    def validate(self, envelope: Envelope) -> list[Issue]:
        tx: Transaction = envelope.body
        at = tx.location
        issues: list[Issue] = []
        if not tx.store_id:
            issues.append(Issue("error", "store_missing", f"{at}/RetailStoreID", "RetailStoreID is missing."))
        if not tx.sequence_number:
            issues.append(
                Issue("error", "sequence_missing", f"{at}/SequenceNumber", "SequenceNumber is missing.")
            )
        if not _is_day(tx.business_day):
            issues.append(
                Issue(
                    "error",
                    "business_day_invalid",
                    f"{at}/BusinessDayDate",
                    "BusinessDayDate is missing or not a date in the form YYYY-MM-DD.",
                )
            )
        issues.extend(tx.problems)
        mismatch = _total_mismatch(tx)
        if mismatch is not None:
            issues.append(mismatch)
        return issues

    # -- stock --------------------------------------------------------------------------------

    def movements(self, envelope: Envelope) -> list[Movement]:
        """Sale lines take stock off hand, Return lines put it back (see the module docstring)."""
        tx: Transaction = envelope.body
        if tx.kind != "RetailTransaction" or tx.voided or tx.training:
            return []
        prefix = f"poslog:{tx.store_id}:{tx.workstation_id}:{tx.business_day}:{tx.sequence_number}:line:"
        location = f"store:{tx.store_id}"
        out: list[Movement] = []
        for ln in tx.stock_lines:
            qty = ln.quantity
            if not ln.stock or ln.weighed or not ln.item_id or qty is None or qty <= 0:
                continue
            units = int(qty)
            if ln.kind == "sale":
                out.append(Movement(prefix + ln.sequence, location, ln.item_id, on_hand=-units, kind="sale"))
            else:
                out.append(Movement(prefix + ln.sequence, location, ln.item_id, on_hand=units, kind="return"))
        return out

    def item_links(self, envelope: Envelope) -> list[ItemLink]:
        """None: this channel names no item ids of its own."""
        return []

    def reported_levels(self, envelope: Envelope) -> list[ReportedLevel]:
        return []

    # -- respond / serialize --------------------------------------------------------------------

    def respond(self, outcome: Outcome) -> Reply:
        return json_reply(outcome)

    def serialize(self, envelope: Envelope) -> bytes:
        """The document exactly as received."""
        return envelope.raw


# -- reading -----------------------------------------------------------------------------------------


def _namespace(root: etree._Element) -> str | None:
    """``{ns}`` for a root in an accepted namespace (``""`` for none), ``None`` for any other."""
    ns = etree.QName(root).namespace or ""
    return ("{" + ns + "}" if ns else "") if ns in NAMESPACES else None


def _canonical(transaction: etree._Element) -> bytes:
    """The Transaction's exclusive canonical form (C14N 1.0), whose digest is ``content_sha256``.

    C14N cannot carry a namespace name that is a relative URI (``xmlns="local"``, which XML itself
    allows, so the parser took it) and libxml2 refuses such a tree; the Transaction is then digested as
    its serialisation taken out of the document (only the namespaces it uses declared on it), so that
    what surrounds it still does not count.
    """
    try:
        return bytes(etree.tostring(transaction, method="c14n", exclusive=True))
    except etree.C14NError:
        return bytes(etree.tostring(copy.deepcopy(transaction)))


def _unit(root: etree._Element, transaction: etree._Element) -> bytes:
    """``transaction`` alone under a copy of ``root``'s start tag (its namespaces and attributes).

    The default namespace is declared first: where a prefix (NCR's ``poslog:``) names the same
    namespace, libxml2 reuses the first declaration, so the elements keep their unprefixed names.
    """
    nsmap: dict[str | None, str] = {None: root.nsmap[None]} if None in root.nsmap else {}
    nsmap.update((prefix, uri) for prefix, uri in root.nsmap.items() if prefix is not None)
    shell = etree.Element(root.tag, attrib=dict(root.attrib), nsmap=nsmap)
    shell.append(copy.deepcopy(transaction))
    return etree.tostring(shell, encoding="UTF-8", xml_declaration=True)


def _root_version(root: etree._Element) -> str:
    version = root.get("Version")
    if version:
        return version.strip()
    parts = [root.get(name, "").strip() for name in ("MajorVersion", "MinorVersion", "FixVersion")]
    return ".".join(p for p in parts if p) if parts[0] else ""


def _text(element: etree._Element, tag: str) -> str:
    return (element.findtext(tag) or "").strip()


def _flag(element: etree._Element, name: str) -> bool:
    return (element.get(name) or "").strip().lower() in _TRUE


def _decimal(text: str) -> Decimal | None:
    text = text.strip()
    return Decimal(text) if _DECIMAL.fullmatch(text) else None


def _is_day(text: str) -> bool:
    if not _DAY.fullmatch(text):
        return False
    try:
        date.fromisoformat(text)
    except ValueError:
        return False
    return True


def _kind_element(transaction: etree._Element, ns: str) -> etree._Element | None:
    """The element saying what the transaction is: ``RetailTransaction``, ``ControlTransaction`` …"""
    for child in transaction.iterchildren(etree.Element):
        qname = etree.QName(child)
        if (qname.namespace or "") == ns.strip("{}") and (
            qname.localname.endswith("Transaction") or qname.localname == "FunctionLog"
        ):
            return child
    return None


_UNFINISHED = frozenset(
    {"suspended", "suspendeddeleted", "voided", "postvoided", "canceled", "cancelled", "inprocess"}
)
"""``RetailTransaction@TransactionStatus`` values of a sale that did not (or no longer) take stock: a
suspended transaction moves stock when it is resumed and finished, under its own sequence number."""


def _read_transaction(element: etree._Element, ns: str, root_version: str, location: str) -> Transaction:
    kind_el = _kind_element(element, ns)
    kind = etree.QName(kind_el).localname if kind_el is not None else "Transaction"
    store = _text(element, f"{ns}RetailStoreID") or _text(element, f"{ns}BusinessUnit/{ns}UnitID")
    status = (kind_el.get("TransactionStatus") or "").strip().lower() if kind_el is not None else ""
    voided = (
        _flag(element, "CancelFlag")
        or _flag(element, "VoidFlag")
        or (kind_el is not None and (_flag(kind_el, "CancelFlag") or _flag(kind_el, "VoidFlag")))
        or status in _UNFINISHED
    )
    version = (kind_el.get("Version") or "").strip() if kind_el is not None else ""
    problems: list[Issue] = []
    grand_total: Decimal | None = None
    lines: tuple[Line, ...] = ()
    unaccounted = False
    if kind == "RetailTransaction" and kind_el is not None:
        base = f"{location}/RetailTransaction"
        lines, unaccounted = _read_lines(kind_el, ns, base, problems)
        for position, total in enumerate(kind_el.iterchildren(f"{ns}Total"), 1):
            value = _decimal(total.text or "")
            if value is None:
                problems.append(_amount_invalid(f"{base}/Total[{position}]", "Total"))
            elif total.get("TotalType") == "TransactionGrandAmount" and grand_total is None:
                grand_total = value
    return Transaction(
        kind=kind,
        version=version or root_version,
        store_id=store,
        workstation_id=_text(element, f"{ns}WorkstationID"),
        sequence_number=_text(element, f"{ns}SequenceNumber"),
        business_day=_text(element, f"{ns}BusinessDayDate"),
        end_time=_text(element, f"{ns}EndDateTime"),
        operator_id=_text(element, f"{ns}OperatorID"),
        currency=_text(element, f"{ns}CurrencyCode"),
        voided=voided,
        training=_flag(element, "TrainingModeFlag"),
        grand_total=grand_total,
        lines=lines,
        unaccounted=unaccounted,
        problems=tuple(problems),
        location=location,
    )


def _line_voided(line_item: etree._Element, ns: str) -> bool:
    if _flag(line_item, "VoidFlag"):
        return True
    if line_item.find(f"{ns}Void") is not None:
        return True
    flag = line_item.findtext(f"{ns}VoidFlag")
    return flag is not None and flag.strip().lower() in _TRUE


def _line_body(line_item: etree._Element, ns: str) -> tuple[LineKind, etree._Element | None]:
    """What the line is, and the element holding it (``None`` for a bare void or an empty line)."""
    for tag, kind in _LINE_KINDS:
        found = line_item.find(f"{ns}{tag}")
        if found is not None:
            return kind, found
    bare = ns.strip("{}")
    for child in line_item.iterchildren(etree.Element):
        qname = etree.QName(child)
        if (qname.namespace or "") == bare and qname.localname not in _LINE_FRAME:
            return "other", child
    return ("void" if line_item.find(f"{ns}Void") is not None else "other"), None


def _read_lines(
    retail: etree._Element, ns: str, base: str, problems: list[Issue]
) -> tuple[tuple[Line, ...], bool]:
    lines: list[Line] = []
    used: set[str] = set()
    unaccounted = False
    for position, line_item in enumerate(retail.iterchildren(f"{ns}LineItem"), 1):
        at = f"{base}/LineItem[{position}]"
        sequence = _text(line_item, f"{ns}SequenceNumber") or str(position)
        if sequence in used:  # keep movement keys unique within the transaction
            sequence = f"{sequence}@{position}"
        used.add(sequence)
        voided = _line_voided(line_item, ns)
        kind, body = _line_body(line_item, ns)
        if kind == "loyalty" or (kind == "other" and body is not None):
            unaccounted = True
        if body is None or kind in ("loyalty", "other"):
            lines.append(Line(kind, sequence, voided=voided))
            continue
        where = f"{at}/{etree.QName(body).localname}"
        if kind in ("sale", "return"):
            line = _stock_line(body, ns, kind, sequence, voided, where, problems)
            if any(True for _ in body.iterchildren(*(f"{ns}{t}" for t in _PRICE_EXTRAS))):
                unaccounted = True
            if (body.findtext(f"{ns}TaxIncludedInPriceFlag") or "").strip().lower() in _TRUE:
                unaccounted = True
            if line.voided and line.quantity is not None and line.quantity < 0:
                _void_reversed(lines, line)
        else:
            amount = _money(body, ns, _OTHER_MONEY, where, problems).get("Amount")
            line = Line(kind, sequence, amount=amount, voided=voided)
        lines.append(line)
    return tuple(lines), unaccounted


def _stock_line(
    body: etree._Element,
    ns: str,
    kind: LineKind,
    sequence: str,
    voided: bool,
    where: str,
    problems: list[Issue],
) -> Line:
    voided = voided or _flag(body, "VoidFlag")
    item = _text(body, f"{ns}ItemID") or _text(body, f"{ns}POSIdentity/{ns}POSItemID")
    quantity_el = body.find(f"{ns}Quantity")
    quantity: Decimal | None = Decimal(1)
    weighed = False
    if quantity_el is not None:
        quantity = _decimal(quantity_el.text or "")
        if quantity is None:
            problems.append(
                Issue("error", "quantity_invalid", f"{where}/Quantity", "The Quantity is not a number.")
            )
        elif abs(quantity) > MAX_QUANTITY:
            problems.append(
                Issue(
                    "error", "quantity_invalid", f"{where}/Quantity", "The Quantity is beyond any one sale."
                )
            )
        elif quantity < 0 and not voided:
            problems.append(
                Issue("error", "quantity_invalid", f"{where}/Quantity", "The Quantity is negative.")
            )
        unit = (quantity_el.get("UnitOfMeasureCode") or "").strip().upper()
        weighed = unit in _WEIGHT_UNITS or (quantity is not None and quantity != quantity.to_integral_value())
    item_type = (body.get("ItemType") or "").strip()
    amount = _money(body, ns, _STOCK_MONEY, where, problems).get("ExtendedAmount")
    return Line(
        kind,
        sequence,
        item_id=item,
        quantity=quantity,
        amount=amount,
        voided=voided,
        stock=item_type in ("", "Stock"),
        weighed=weighed,
    )


def _void_reversed(lines: list[Line], reversal: Line) -> None:
    """Mark voided the latest earlier line that ``reversal`` (a negative voided line) cancels."""
    assert reversal.quantity is not None
    for index in range(len(lines) - 1, -1, -1):
        ln = lines[index]
        if (
            not ln.voided
            and ln.kind == reversal.kind
            and ln.item_id == reversal.item_id
            and ln.quantity == -reversal.quantity
        ):
            lines[index] = replace(ln, voided=True)
            return


def _money(
    body: etree._Element, ns: str, names: tuple[str, ...], where: str, problems: list[Issue]
) -> dict[str, Decimal]:
    """The readable money elements of ``body`` by local name; an unreadable one is an issue."""
    values: dict[str, Decimal] = {}
    for el in body.iterchildren(*(f"{ns}{n}" for n in names)):
        name = etree.QName(el).localname
        value = _decimal(el.text or "")
        if value is None:
            problems.append(_amount_invalid(f"{where}/{name}", name))
        elif name not in values:
            values[name] = value
    return values


def _amount_invalid(location: str, name: str) -> Issue:
    return Issue("error", "amount_invalid", location, f"{name} is not a decimal amount.")


def _headers(tx: Transaction) -> dict[str, str]:
    stock = tx.stock_lines
    skus = dict.fromkeys(ln.item_id for ln in stock if ln.item_id)
    return {
        "message_type": tx.message_type,
        "version": tx.version,
        "control_id": tx.control_id,
        "store_id": tx.store_id,
        "workstation_id": tx.workstation_id,
        "sequence_number": tx.sequence_number,
        "business_day": tx.business_day,
        "end_time": tx.end_time,
        "operator_id": tx.operator_id,
        "currency": tx.currency,
        "total_amount": str(tx.grand_total) if tx.grand_total is not None else "",
        "line_count": str(len(stock)),
        "skus": ",".join(skus),
    }


def _sniffed(raw: bytes) -> dict[str, str]:
    """The transaction's identifiers in the first 4 KiB of a document that is not well-formed."""
    head = raw[:4096]
    found = {
        name: m.group(1).decode("ascii", "replace")
        for name, p in _SNIFF_FIELD.items()
        if (m := p.search(head))
    }
    if not found:
        return {}
    headers = {
        "store_id": found.get("RetailStoreID", ""),
        "workstation_id": found.get("WorkstationID", ""),
        "sequence_number": found.get("SequenceNumber", ""),
        "business_day": found.get("BusinessDayDate", ""),
    }
    if all(headers.values()):
        headers["control_id"] = "-".join(headers.values())
    return headers


# -- the total check ---------------------------------------------------------------------------------


def _counted(tx: Transaction) -> Iterator[Line]:
    return (ln for ln in tx.lines if not ln.voided and ln.kind in ("sale", "return", "tax", "discount"))


def _total_mismatch(tx: Transaction) -> Issue | None:
    """``total_mismatch`` when the lines do not add up to the grand total (see the module docstring)."""
    if tx.kind != "RetailTransaction" or tx.voided or tx.grand_total is None or tx.unaccounted:
        return None
    goods = tax = discount = Decimal(0)
    returns = False
    for ln in _counted(tx):
        if ln.amount is None:
            return None
        if ln.kind == "sale":
            goods += ln.amount
        elif ln.kind == "return":
            goods -= abs(ln.amount)
            returns = True
        elif ln.kind == "tax":
            tax += ln.amount
        else:
            discount += abs(ln.amount)
    if goods + tax - discount == tx.grand_total:
        return None
    if returns and abs(goods - discount) + abs(tax) == abs(tx.grand_total):
        return None
    return Issue(
        "error",
        "total_mismatch",
        f"{tx.location}/RetailTransaction/Total",
        "The sale, return, tax and discount lines do not add up to the TransactionGrandAmount.",
    )
