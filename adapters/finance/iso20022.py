"""The ISO 20022 adapter (``iso20022``): payments, returns, status reports and statements as envelopes.

Takes pain.001, pain.002, pacs.008, pacs.002, pacs.004, camt.052, camt.053
and camt.054 in every version, recognised by the Document namespace, bare or
inside a wrapper with a Business Application Header (head.001). Parsing goes
through the hardened :func:`gateway.xml.parse_xml`; validation is the XSD of
the message's version where the operator's schema folder has it
(:mod:`adapters.finance.schemas`) plus the business rules
(:mod:`adapters.finance.iso20022_rules`); the SEPA rule set is available to
routes as ``rules: [sepa]``. Replies are status reports
(:mod:`adapters.finance.iso20022_reports`).

Envelope: ``message_type`` ``pain.001``, ``version`` ``001.03``,
``control_id`` GrpHdr/MsgId, ``sender`` the initiating party's organisation
identifier or the instructing agent's BIC, ``receiver`` the instructed agent.
An initiating party without an organisation identifier (AnyBIC, BICOrBEI, LEI,
OrgId/Othr/Id) is a private person, or may be one (a name alone): its
identifier or name is personal data, so it is neither a header nor the sender
(``initiating_party`` is empty, ``sender`` the marker ``private-party``,
:data:`PRIVATE_PARTY`) but the business key ``private_party`` (PrvtId/Othr/Id,
else Nm), masked (``…2345``, a name as its first letter); the envelope's
``sender_key`` names that key, so that a resend is recognised per person, not
per marker. The headers that routes read: ``message_definition``, ``msg_id``,
``creation_time``, ``initiating_party``, ``instructing_agent``,
``instructed_agent``, ``debtor_agent``, ``creditor_agent``, ``currency``
(``MULTI`` when transactions differ), ``nb_of_txs``, ``total_amount`` (a
decimal, the sum of the transactions), ``largest_amount``, and the BAH's
``bah_from``, ``bah_to``, ``bah_business_message_id``. Account identifiers
(IBAN or other id) are business keys, shown masked (``DE89…3000``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import MappingProxyType

from lxml import etree

from adapters.finance.identifiers import mask_account
from adapters.finance.iso20022_document import (
    KINDS,
    Document,
    definition_of,
    find_document,
    local,
    read_document,
)
from adapters.finance.iso20022_reports import build_reply
from adapters.finance.iso20022_rules import check, check_sepa
from adapters.finance.schemas import SchemaCatalogue
from gateway.adapter import Batch, Issue, Outcome, ParseError, Reply
from gateway.config import ISO20022Config
from gateway.envelope import Envelope, Receipt, new_id, sha256_hex
from gateway.xml import XMLRejected, parse_xml

__all__ = ["CONTENT_TYPE", "PRIVATE_PARTY", "PRIVATE_PARTY_KEY", "ISO20022Adapter"]

CONTENT_TYPE = "application/xml"
HEADER_KEYS: frozenset[str] = frozenset(
    {
        "message_type",
        "version",
        "message_definition",
        "namespace",
        "msg_id",
        "control_id",
        "creation_time",
        "initiating_party",
        "instructing_agent",
        "instructed_agent",
        "debtor_agent",
        "creditor_agent",
        "bah_from",
        "bah_to",
        "bah_business_message_id",
        "sender",
        "receiver",
        "currency",
        "nb_of_txs",
        "total_amount",
        "largest_amount",
    }
)
"""Every header this adapter promotes (``gateway check`` warns about routes matching others)."""
_STATUS = {"accepted": 200, "invalid": 400, "refused": 422}
_NAMESPACE_SNIFF = re.compile(
    rb"(?:urn:iso:std:iso:20022:tech:xsd:|six-interbank-clearing\.com/(?:[a-z]{2}/)?)[a-z]{4}\.\d{3}"
)
_MAX_ACCOUNT_KEYS = 100
_ORGANISATION_IDS = ("Id/OrgId/AnyBIC", "Id/OrgId/BICOrBEI", "Id/OrgId/LEI", "Id/OrgId/Othr/Id")
_PRIVATE_IDS = ("Id/PrvtId/Othr/Id", "Nm")
PRIVATE_PARTY = "private-party"
"""The ``sender`` of a message whose initiating party has no organisation identifier (a private person, or
a name alone): who it is stays in the business key :data:`PRIVATE_PARTY_KEY`, never in clear."""
PRIVATE_PARTY_KEY = "private_party"
"""The business key of a private initiating party: its PrvtId/Othr/Id, else its name."""
_AGENT_BIC = ("FinInstnId/BICFI", "FinInstnId/BIC")


class ISO20022Adapter:
    """ISO 20022 XML adapter; ``config.schema_dir`` switches XSD validation on."""

    name: str = "iso20022"
    routes_replies: bool = True
    """Status reports are messages too: a route that names ``direction: reply`` takes them (to the sender)."""

    def __init__(self, config: ISO20022Config | None = None) -> None:
        self.config = config or ISO20022Config()
        self.schemas = SchemaCatalogue.load(self.config.schema_dir)
        self.rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType(
            {"sepa": lambda env: check_sepa(env.body)}
        )

    def __repr__(self) -> str:
        return f"ISO20022Adapter(schemas={len(self.schemas.files)})"

    # -- detect / split ---------------------------------------------------------------------

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """True when the first 4 KiB name an ISO 20022 message namespace."""
        return _NAMESPACE_SNIFF.search(raw[:4096]) is not None

    def split(self, raw: bytes) -> Batch | None:
        return None

    # -- parse --------------------------------------------------------------------------------

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        try:
            root = parse_xml(raw, max_bytes=max(len(raw), 1), max_depth=self.config.max_depth)
        except XMLRejected as exc:
            raise ParseError([Issue("fatal", exc.code, "", exc.diagnostics)], _sniffed(raw)) from None
        document, app_header = find_document(root)
        if document is None:
            raise ParseError(
                [Issue("fatal", "document_missing", "/", "No ISO 20022 Document element was found.")],
                _sniffed(raw),
            )
        doc = read_document(document, app_header)
        headers = _headers(doc)
        if doc.kind is None:
            raise ParseError(
                [
                    Issue(
                        "error",
                        "unsupported_message_type",
                        "/Document",
                        "The gateway does not take this ISO 20022 message type"
                        + (f" ({doc.definition})." if doc.definition else "."),
                    )
                ],
                headers,
            )
        accounts = _accounts(doc)
        keys, masked = dict(accounts), {k: mask_account(v) for k, v in accounts.items()}
        _, private, by_name = _initiating_party(doc)
        if private:
            keys[PRIVATE_PARTY_KEY] = private
            masked[PRIVATE_PARTY_KEY] = private[:1] + "…" if by_name else mask_account(private)
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=doc.version,
            message_type=doc.message_type,
            control_id=headers["control_id"],
            sender=headers["sender"],
            receiver=headers["receiver"],
            raw=raw,
            raw_sha256=sha256_hex(raw),
            body=doc,
            headers=headers,
            business_keys=keys,
            masked_keys=masked,
            sender_key=PRIVATE_PARTY_KEY if private else "",
            sensitivity="pii",
            receipt=receipt,
        )

    # -- validate -------------------------------------------------------------------------------

    def validate(self, envelope: Envelope) -> list[Issue]:
        doc: Document = envelope.body
        issues: list[Issue] = []
        if doc.message is None or doc.kind is None or local(doc.message) != doc.kind.root:
            expected = doc.kind.root if doc.kind is not None else "a message element"
            issues.append(
                Issue("error", "schema_invalid", "/Document", f"The Document must hold {expected}.")
            )
        if not envelope.control_id:
            issues.append(
                Issue("error", "msg_id_missing", "/Document/*/GrpHdr/MsgId", "GrpHdr/MsgId is missing.")
            )
        if doc.app_header is not None:
            declared = _header_text(doc, doc.app_header, "MsgDefIdr")
            if declared and definition_of(declared) != doc.definition:
                issues.append(
                    Issue(
                        "error",
                        "bah_mismatch",
                        "/AppHdr/MsgDefIdr",
                        "The business application header names another message definition than the Document.",
                    )
                )
        schema_issues = self.schemas.validate(doc.document)
        if schema_issues:
            issues.extend(schema_issues)
        issues.extend(check(doc))
        return issues

    # -- respond / serialize --------------------------------------------------------------------

    def respond(self, outcome: Outcome) -> Reply:
        doc = outcome.envelope.body if outcome.envelope is not None else None
        accepted = outcome.kind == "accepted"
        body = build_reply(accepted, outcome.issues, doc, outcome.headers, outcome.envelope_id)
        status = _STATUS[outcome.kind]
        if outcome.kind == "refused" and any(i.code == "store_unavailable" for i in outcome.issues):
            status = 503
        return Reply(body=body, content_type=CONTENT_TYPE, status=status, code="ACTC" if accepted else "RJCT")

    def serialize(self, envelope: Envelope) -> bytes:
        """The document exactly as received."""
        return envelope.raw


def _sniffed(raw: bytes) -> dict[str, str]:
    """The message definition named in the first bytes of an unparseable document, for the reply."""
    definition = definition_of(raw[:4096].decode("latin-1"))
    if definition is None:
        return {}
    return {"message_definition": definition, "message_type": definition[:8]}


def _header_text(doc: Document, header: etree._Element, name: str) -> str:
    for el in header.iter(etree.Element):
        if local(el) == name:
            return (el.text or "").strip()
    return ""


def _first(doc: Document, base: etree._Element | None, paths: tuple[str, ...]) -> str:
    if base is None:
        return ""
    for path in paths:
        text = doc.text(path, base)
        if text:
            return text
    return ""


def _agent(doc: Document, *places: str) -> str:
    """The BIC of the first agent found at ``places`` (group header first, then the first transaction/block)."""
    bases = [doc.message] + [b for _, b in doc.blocks[:1]] + [t.element for t in doc.transactions[:1]]
    for place in places:
        for base in bases:
            agent = doc.find(place, base) if base is not None else None
            if agent is not None and (bic := _first(doc, agent, _AGENT_BIC)):
                return bic
    return ""


def _initiating_party(doc: Document) -> tuple[str, str | None, bool]:
    """The initiating party's organisation identifier, else ``""`` and, when the party is (or may be) a
    private person, its private identifier or name (``""`` for neither) and whether that is the name;
    ``None`` when there is no such party."""
    group = doc.find("GrpHdr") if doc.message is not None else None
    party = doc.find("InitgPty", group) if group is not None else None
    if party is None:
        return "", None, False
    organisation = _first(doc, party, _ORGANISATION_IDS)
    if organisation:
        return organisation, None, False
    ident = doc.text(_PRIVATE_IDS[0], party)
    if ident:
        return "", ident, False
    name = doc.text(_PRIVATE_IDS[1], party)
    if name or doc.find("Id/PrvtId", party) is not None:
        return "", name, bool(name)
    return "", None, False


def _headers(doc: Document) -> dict[str, str]:
    h: dict[str, str] = {
        "message_type": doc.message_type,
        "version": doc.version,
        "message_definition": doc.definition,
        "namespace": doc.namespace,
    }
    kind = doc.kind
    group = doc.find("GrpHdr") if doc.message is not None else None
    msg_id = doc.text("MsgId", group) if group is not None else ""
    h["msg_id"] = msg_id
    h["control_id"] = msg_id
    h["creation_time"] = doc.text("CreDtTm", group) if group is not None else ""
    organisation, private, _ = _initiating_party(doc)
    h["initiating_party"] = organisation
    h["instructing_agent"] = _agent(doc, "GrpHdr/InstgAgt", "InstgAgt")
    h["instructed_agent"] = _agent(doc, "GrpHdr/InstdAgt", "InstdAgt")
    h["debtor_agent"] = _agent(doc, "DbtrAgt")
    h["creditor_agent"] = _agent(doc, "CdtrAgt")
    if doc.app_header is not None:
        header = doc.app_header
        h["bah_from"] = _bah_party(header, "Fr")
        h["bah_to"] = _bah_party(header, "To")
        h["bah_business_message_id"] = _header_text(doc, header, "BizMsgIdr")
    h["sender"] = (
        organisation
        or (PRIVATE_PARTY if private is not None else "")
        or h["instructing_agent"]
        or h.get("bah_from", "")
    )
    h["receiver"] = h["instructed_agent"] or h.get("bah_to", "")
    if kind is not None and kind.amounts:
        values = [t.amount for t in doc.transactions if t.amount is not None]
        currencies = {a.currency for a in values}
        h["currency"] = currencies.pop() if len(currencies) == 1 else ("MULTI" if currencies else "")
        numbers = [a.value for a in values if a.value is not None]
        h["nb_of_txs"] = str(len(doc.transactions))
        h["total_amount"] = str(sum(numbers, Decimal(0))) if numbers else ""
        h["largest_amount"] = str(max(numbers)) if numbers else ""
    return h


def _bah_party(header: etree._Element, role: str) -> str:
    for el in header:
        if local(el) == role:
            for node in el.iter(etree.Element):
                if local(node) in ("BICFI", "BIC", "AnyBIC"):
                    return (node.text or "").strip()
    return ""


def _accounts(doc: Document) -> dict[str, str]:
    """Account identifiers by role (``debtor_account``, ``creditor_account.2`` …), at most 100."""
    keys: dict[str, str] = {}
    seen: set[str] = set()
    for role, name in (("debtor_account", "DbtrAcct"), ("creditor_account", "CdtrAcct"), ("account", "Acct")):
        count = 0
        for acct in doc.iter_local(name):
            ident = next(
                (
                    (el.text or "").strip()
                    for el in acct.iter(etree.Element)
                    if local(el) in ("IBAN", "Id") and not len(el) and (el.text or "").strip()
                ),
                "",
            )
            if not ident or ident in seen or len(keys) >= _MAX_ACCOUNT_KEYS:
                continue
            seen.add(ident)
            count += 1
            keys[role if count == 1 else f"{role}.{count}"] = ident
    return keys


SUPPORTED_MESSAGES: tuple[str, ...] = tuple(KINDS)
"""The message types this adapter takes (every version of each)."""
