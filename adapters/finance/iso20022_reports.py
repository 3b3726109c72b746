"""The ISO 20022 replies: pain.002 and pacs.002 status reports, and the admi.007 receipt acknowledgement.

A pain.001 is answered with a pain.002, a pacs.008 or pacs.004 with a
pacs.002, in the report version that pairs with the received one
(``status_reports.json``, a data file a site may override). The group status
is ``ACTC`` (accepted after technical validation: schema and business rules)
or ``RJCT``; a rejected message lists each issue as a status reason with its
ISO external code (``reason_codes.json``): group-level issues under
``OrgnlGrpInfAndSts``, a payment-information block's under its
``OrgnlPmtInfAndSts``, a transaction's own issues under its ``TxInfAndSts``
with the original InstrId / EndToEndId / TxId / UETR. The gateway takes a
message whole, so one rejected transaction rejects the message.

Every other message (statements, notifications, status reports themselves,
and anything whose type could not be read) gets an ``admi.007`` receipt
acknowledgement with status ``ACPT`` or ``RJCT``. Reason texts are the
issues' diagnostics, which never carry payload values.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources

from lxml import etree

from adapters.finance.identifiers import date_time_problem, uetr_problem
from adapters.finance.iso20022_document import Document, Transaction
from gateway.adapter import Issue

__all__ = ["REASON_CODES", "REPORT_VERSIONS", "build_reply", "reason_code"]

ISO_NS = "urn:iso:std:iso:20022:tech:xsd:"
_ADDITIONAL_INFO_MAX = 105


def _data(name: str) -> dict[str, str]:
    loaded = json.loads(resources.files("adapters.finance").joinpath(name).read_text(encoding="utf-8"))
    return {k: v for k, v in loaded.items() if not k.startswith("_")}


REASON_CODES: Mapping[str, str] = _data("reason_codes.json")
REPORT_VERSIONS: Mapping[str, str] = _data("status_reports.json")


def reason_code(issue: Issue) -> str:
    """The ISO external status reason code for an issue (``NARR`` when none fits)."""
    return REASON_CODES.get(issue.code, "NARR")


def report_definition(definition: str, message_type: str, kind_reply: str) -> str:
    """The status report definition answering ``definition`` (``pain.002.001.03`` for ``pain.001.001.03``)."""
    return REPORT_VERSIONS.get(definition) or REPORT_VERSIONS[kind_reply]


class _Builder:
    def __init__(self, definition: str) -> None:
        self.ns = ISO_NS + definition

    def el(self, parent: etree._Element | None, name: str, text: str | None = None) -> etree._Element:
        tag = f"{{{self.ns}}}{name}"
        node = etree.Element(tag, nsmap={None: self.ns}) if parent is None else etree.SubElement(parent, tag)
        if text is not None:
            node.text = text
        return node

    def reasons(self, parent: etree._Element, issues: Sequence[Issue]) -> None:
        for issue in issues:
            info = self.el(parent, "StsRsnInf")
            self.el(self.el(info, "Rsn"), "Cd", reason_code(issue))
            if issue.diagnostics:
                self.el(info, "AddtlInf", issue.diagnostics[:_ADDITIONAL_INFO_MAX])


_MAX_ID = 35


def _ref(value: str | None) -> str | None:
    """An original reference as a Max35Text element may carry it, or ``None``."""
    value = (value or "").strip()
    return value if 0 < len(value) <= _MAX_ID else None


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _report_id(envelope_id: str | None) -> str:
    return "GW" + (envelope_id or datetime.now(UTC).strftime("%Y%m%d%H%M%S%f"))


def _split_issues(
    issues: Sequence[Issue], owners: Sequence[tuple[int, str]]
) -> tuple[list[Issue], dict[int, list[Issue]]]:
    """The error issues nobody in ``owners`` holds, and each owner's (by key), told apart by location:
    an owner ``(key, path)`` holds the issues located at ``path`` or inside it."""
    own: dict[int, list[Issue]] = {}
    rest: list[Issue] = []
    prefixes = [(key, path + "/") for key, path in owners]
    for issue in issues:
        if not issue.is_error:
            continue
        location = issue.location + "/"
        hit = next((key for key, prefix in prefixes if location.startswith(prefix)), None)
        if hit is None:
            rest.append(issue)
        else:
            own.setdefault(hit, []).append(issue)
    return rest, own


def build_reply(
    accepted: bool,
    issues: Sequence[Issue],
    doc: Document | None,
    headers: Mapping[str, str],
    envelope_id: str | None,
) -> bytes:
    """The status report (or admi.007) for a message, as UTF-8 XML with a declaration."""
    message_type = doc.message_type if doc is not None else headers.get("message_type", "")
    definition = doc.definition if doc is not None else headers.get("message_definition", "")
    reply_kind = doc.kind.reply if doc is not None and doc.kind is not None else None
    if reply_kind is None and doc is None:
        reply_kind = {"pain.001": "pain.002", "pacs.008": "pacs.002", "pacs.004": "pacs.002"}.get(
            message_type
        )
    if reply_kind is None:
        root = _receipt(accepted, issues, headers, definition, envelope_id)
    else:
        root = _status_report(
            report_definition(definition, message_type, reply_kind),
            accepted,
            issues,
            doc,
            headers,
            envelope_id,
        )
    return bytes(etree.tostring(root, xml_declaration=True, encoding="UTF-8"))


def _status_report(
    report: str,
    accepted: bool,
    issues: Sequence[Issue],
    doc: Document | None,
    headers: Mapping[str, str],
    envelope_id: str | None,
) -> etree._Element:
    b = _Builder(report)
    document = b.el(None, "Document")
    pain = report.startswith("pain.")
    body = b.el(document, "CstmrPmtStsRpt" if pain else "FIToFIPmtStsRpt")
    header = b.el(body, "GrpHdr")
    b.el(header, "MsgId", _report_id(envelope_id))
    b.el(header, "CreDtTm", _now())
    transactions = doc.transactions if doc is not None else []
    group_issues, own = _split_issues(issues, [(i, tx.path) for i, tx in enumerate(transactions)])
    block_own: dict[int, list[Issue]] = {}
    if pain and doc is not None and not accepted:
        # an issue inside a payment-information block but in no transaction (the debtor's IBAN) is the block's
        group_issues, block_own = _split_issues(
            group_issues, [(i, path) for i, (path, _) in enumerate(doc.blocks, 1)]
        )
    original = b.el(body, "OrgnlGrpInfAndSts")
    b.el(original, "OrgnlMsgId", _ref(headers.get("control_id")) or "NOTPROVIDED")
    b.el(
        original,
        "OrgnlMsgNmId",
        (doc.definition if doc is not None else headers.get("message_definition")) or "NOTPROVIDED",
    )
    created = headers.get("creation_time", "").strip()
    if created and date_time_problem(created) is None:
        b.el(original, "OrgnlCreDtTm", created)
    if doc is not None and doc.kind is not None and doc.kind.counted:
        b.el(original, "OrgnlNbOfTxs", str(len(transactions)))
    b.el(original, "GrpSts", "ACTC" if accepted else "RJCT")
    if not accepted:
        b.reasons(original, group_issues or ([] if own or block_own else [_UNSPECIFIED]))
    if accepted or not (own or block_own) or doc is None:
        return document
    if pain:
        by_block: dict[int | None, list[tuple[int, Transaction]]] = {}
        for i, tx in enumerate(transactions):  # once, not once per block (quadratic over many blocks)
            by_block.setdefault(tx.block, []).append((i, tx))
        for block_index, (_path, block) in enumerate(doc.blocks, 1):
            members = by_block.get(block_index, [])
            if block_index not in block_own and not any(i in own for i, _ in members):
                continue
            info = b.el(body, "OrgnlPmtInfAndSts")
            b.el(info, "OrgnlPmtInfId", _ref(doc.text("PmtInfId", block)) or "NOTPROVIDED")
            b.el(info, "PmtInfSts", "RJCT")
            b.reasons(info, block_own.get(block_index, []))
            for i, tx in members:
                if i in own:
                    _transaction_status(b, info, tx, own[i], pacs=False, report=report)
    else:
        for i, tx in enumerate(transactions):
            if i in own:
                _transaction_status(b, body, tx, own[i], pacs=True, report=report)
    return document


_UNSPECIFIED = Issue("error", "unspecified", "", "The message was rejected.")


def _transaction_status(
    b: _Builder, parent: etree._Element, tx: Transaction, issues: Sequence[Issue], *, pacs: bool, report: str
) -> None:
    status = b.el(parent, "TxInfAndSts")
    if instr_id := _ref(tx.instr_id):
        b.el(status, "OrgnlInstrId", instr_id)
    if end_to_end_id := _ref(tx.end_to_end_id):
        b.el(status, "OrgnlEndToEndId", end_to_end_id)
    if pacs and (tx_id := _ref(tx.tx_id)):
        b.el(status, "OrgnlTxId", tx_id)
    if tx.uetr and uetr_problem(tx.uetr) is None and _has_uetr(report):
        b.el(status, "OrgnlUETR", tx.uetr)
    b.el(status, "TxSts", "RJCT")
    b.reasons(status, issues)


def _has_uetr(report: str) -> bool:
    """OrgnlUETR exists from pain.002.001.10 and pacs.002.001.09 on."""
    version = int(report.rsplit(".", 1)[1])
    return version >= (10 if report.startswith("pain.") else 9)


def _receipt(
    accepted: bool,
    issues: Sequence[Issue],
    headers: Mapping[str, str],
    definition: str,
    envelope_id: str | None,
) -> etree._Element:
    b = _Builder("admi.007.001.01")
    document = b.el(None, "Document")
    ack = b.el(document, "RctAck")
    ident = b.el(ack, "MsgId")
    b.el(ident, "MsgId", _report_id(envelope_id))
    b.el(ident, "CreDtTm", _now())
    report = b.el(ack, "Rpt")
    related = b.el(report, "RltdRef")
    b.el(related, "Ref", _ref(headers.get("control_id")) or "NOTPROVIDED")
    if definition:
        b.el(related, "MsgNm", definition)
    handling = b.el(report, "ReqHdlg")
    errors = [i for i in issues if i.is_error]
    b.el(handling, "StsCd", "ACPT" if accepted else "RJCT")
    if not accepted:
        first = errors[0] if errors else _UNSPECIFIED
        b.el(handling, "Desc", f"{reason_code(first)} {first.diagnostics}"[: _ADDITIONAL_INFO_MAX + 5])
    return document
