"""Reading an ISO 20022 document: which message it is, and the parts the gateway needs.

The message definition (``pain.001.001.03``) comes from the Document
namespace: the ISO form ``urn:iso:std:iso:20022:tech:xsd:pain.001.001.03``
and national variants that embed it (the Swiss
``http://www.six-interbank-clearing.com/de/pain.001.001.03.ch.02.xsd``). A
Business Application Header (``head.001``) is understood when the document
arrives inside a wrapper element beside an ``AppHdr``.

:data:`KINDS` says, for each supported message, where its group header,
payment-information blocks, transactions and amounts are: the rules, the
envelope headers and the status reports all read the document through it.
Paths are written without namespace (``GrpHdr/MsgId``); :func:`q` adds it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from lxml import etree

from adapters.finance.identifiers import parse_amount

__all__ = [
    "KINDS",
    "Amount",
    "Document",
    "Kind",
    "Transaction",
    "definition_of",
    "element_path",
    "find_document",
    "q",
    "read_document",
]

_DEFINITION = re.compile(r"\b([a-z]{4})\.(\d{3})\.(\d{3})\.(\d{2})\b")
HEAD_PREFIX = "head.001"


@dataclass(frozen=True, slots=True)
class Kind:
    """Where one message type keeps its parts (paths relative to the message root element)."""

    root: str
    """The element under ``Document``: ``CstmrCdtTrfInitn`` for pain.001."""
    blocks: str | None
    """Payment-information level with its own NbOfTxs/CtrlSum (``PmtInf``), or ``None``."""
    transactions: str
    """Transaction elements, relative to a block (or to the root when there are no blocks)."""
    amounts: tuple[str, ...]
    """Candidate amount paths inside a transaction, first present wins."""
    total: str | None = None
    """A group-level total amount element that must equal the sum (``GrpHdr/TtlIntrBkSttlmAmt``)."""
    reply: str | None = None
    """The status report this message is answered with (``pain.002``), or ``None`` (admi.007)."""
    counted: bool = True
    """Whether GrpHdr/NbOfTxs counts these transactions (camt statements count nothing)."""


KINDS: dict[str, Kind] = {
    "pain.001": Kind(
        "CstmrCdtTrfInitn", "PmtInf", "CdtTrfTxInf", ("Amt/InstdAmt", "Amt/EqvtAmt/Amt"), reply="pain.002"
    ),
    "pacs.008": Kind(
        "FIToFICstmrCdtTrf",
        None,
        "CdtTrfTxInf",
        ("IntrBkSttlmAmt",),
        total="GrpHdr/TtlIntrBkSttlmAmt",
        reply="pacs.002",
    ),
    "pacs.004": Kind(
        "PmtRtr",
        None,
        "TxInf",
        ("RtrdIntrBkSttlmAmt",),
        total="GrpHdr/TtlRtrdIntrBkSttlmAmt",
        reply="pacs.002",
    ),
    "pain.002": Kind("CstmrPmtStsRpt", "OrgnlPmtInfAndSts", "TxInfAndSts", (), counted=False),
    "pacs.002": Kind("FIToFIPmtStsRpt", None, "TxInfAndSts", (), counted=False),
    "camt.052": Kind("BkToCstmrAcctRpt", "Rpt", "Ntry", ("Amt",), counted=False),
    "camt.053": Kind("BkToCstmrStmt", "Stmt", "Ntry", ("Amt",), counted=False),
    "camt.054": Kind("BkToCstmrDbtCdtNtfctn", "Ntfctn", "Ntry", ("Amt",), counted=False),
}


@functools.lru_cache(maxsize=1024)
def q(ns: str, path: str) -> str:
    """``GrpHdr/MsgId`` in namespace ``ns`` as an ElementPath: ``{ns}GrpHdr/{ns}MsgId``."""
    if not ns:
        return path
    return "/".join(
        step if step in (".", "..") or step.startswith("@") else f"{{{ns}}}{step}" for step in path.split("/")
    )


def definition_of(namespace: str) -> str | None:
    """The message definition a namespace names (``pain.001.001.03``), or ``None``."""
    m = _DEFINITION.search(namespace)
    return ".".join(m.groups()) if m else None


def local(el: etree._Element) -> str:
    """The element's name without namespace (string work: ``etree.QName`` costs ~1 µs a call)."""
    return str(el.tag).rpartition("}")[2]


def namespace(el: etree._Element) -> str:
    tag = str(el.tag)
    return tag[1 : tag.index("}")] if tag.startswith("{") else ""


def find_document(root: etree._Element) -> tuple[etree._Element | None, etree._Element | None]:
    """The ``Document`` element and the ``AppHdr`` beside it, whether or not a wrapper holds them."""
    if local(root) == "Document":
        return root, None
    if local(root) == "AppHdr":
        return None, root
    document = header = None
    for child in root.iterchildren(etree.Element):
        name = local(child)
        if name == "Document" and document is None:
            document = child
        elif name == "AppHdr" and header is None:
            header = child
    return document, header


@dataclass(frozen=True, slots=True)
class Amount:
    value: Decimal | None
    """``None`` when the text is not an ISO 20022 amount."""
    currency: str
    path: str


@dataclass(slots=True)
class Transaction:
    """One transaction (or statement entry) and where it is, for issues and status reports."""

    path: str
    element: etree._Element
    amount: Amount | None
    block: int | None
    """1-based index of its payment-information block, or ``None``."""
    instr_id: str = ""
    end_to_end_id: str = ""
    tx_id: str = ""
    uetr: str = ""


@dataclass(slots=True)
class Document:
    """A parsed ISO 20022 message: the tree plus what the gateway reads from it."""

    definition: str
    """``pain.001.001.03``."""
    message_type: str
    """``pain.001``."""
    namespace: str
    kind: Kind | None
    document: etree._Element
    message: etree._Element | None
    """The element under Document (``CstmrCdtTrfInitn``), ``None`` when it is missing."""
    app_header: etree._Element | None = None
    transactions: list[Transaction] = field(default_factory=list)
    blocks: list[tuple[str, etree._Element]] = field(default_factory=list)

    @property
    def version(self) -> str:
        """``001.03`` of ``pain.001.001.03``."""
        return self.definition[len(self.message_type) + 1 :]

    @property
    def ns(self) -> str:
        return self.namespace

    def find(self, path: str, base: etree._Element | None = None) -> etree._Element | None:
        start = self.message if base is None else base
        if start is None:
            return None
        return start.find(q(self.ns, path))

    def text(self, path: str, base: etree._Element | None = None) -> str:
        el = self.find(path, base)
        return (el.text or "").strip() if el is not None else ""

    def path_of(self, el: etree._Element) -> str:
        """An XPath-like location without namespace prefixes: ``/Document/CstmrCdtTrfInitn/PmtInf[2]``."""
        return element_path(el, self.document)

    def iter_local(self, *names: str) -> Iterator[etree._Element]:
        """Every element of the document with one of these local names (any namespace)."""
        yield from self.document.iter(*(f"{{{self.ns}}}{n}" if self.ns else n for n in names))


def element_path(el: etree._Element, top: etree._Element | None = None) -> str:
    """``el``'s location as local names with 1-based indexes where a name repeats, up to ``top``
    (or the root): ``/Document/CstmrCdtTrfInitn/PmtInf[2]/NbOfTxs``."""
    steps: list[str] = []
    node: etree._Element | None = el
    while node is not None:
        parent = node.getparent()
        name = local(node)
        if parent is not None and node is not top:
            same = [c for c in parent.iterchildren(etree.Element) if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        steps.append(name)
        if node is top:
            break
        node = parent
    return "/" + "/".join(reversed(steps))


def read_document(document: etree._Element, app_header: etree._Element | None) -> Document:
    """Read the parts of a ``Document`` element that the gateway needs (never raises for content)."""
    ns = namespace(document)
    definition = definition_of(ns) or ""
    message_type = definition[:8] if definition else ""
    kind = KINDS.get(message_type)
    message = next(document.iterchildren(etree.Element), None)
    doc = Document(definition, message_type, ns, kind, document, message, app_header)
    if kind is None or message is None or local(message) != kind.root:
        return doc
    root_path = f"/Document/{kind.root}"
    if kind.blocks is None:
        containers: list[tuple[int | None, str, etree._Element]] = [(None, root_path, message)]
    else:
        found = message.findall(q(ns, kind.blocks))
        doc.blocks = [
            (_indexed(f"{root_path}/{kind.blocks}", i, len(found)), b) for i, b in enumerate(found, 1)
        ]
        containers = [(i, path, b) for i, (path, b) in enumerate(doc.blocks, 1)]
    for block, container_path, container in containers:
        txs = container.findall(q(ns, kind.transactions))
        for i, tx in enumerate(txs, 1):
            path = _indexed(f"{container_path}/{kind.transactions}", i, len(txs))
            doc.transactions.append(_transaction(doc, tx, path, block))
    return doc


def _indexed(path: str, index: int, count: int) -> str:
    return f"{path}[{index}]" if count > 1 else path


def _transaction(doc: Document, tx: etree._Element, tx_path: str, block: int | None) -> Transaction:
    kind = doc.kind
    assert kind is not None
    amount: Amount | None = None
    for path in kind.amounts:
        el = tx.find(q(doc.ns, path))
        if el is not None:
            amount = Amount(parse_amount(el.text or ""), (el.get("Ccy") or "").strip(), f"{tx_path}/{path}")
            break
    ids = "PmtId" if doc.message_type in ("pain.001", "pacs.008") else ""

    def ident(name: str) -> str:
        return doc.text(f"{ids}/{name}" if ids else name, tx)

    if doc.message_type == "pacs.004":
        return Transaction(
            tx_path,
            tx,
            amount,
            block,
            instr_id=doc.text("OrgnlInstrId", tx),
            end_to_end_id=doc.text("OrgnlEndToEndId", tx),
            tx_id=doc.text("OrgnlTxId", tx) or doc.text("RtrId", tx),
            uetr=doc.text("OrgnlUETR", tx),
        )
    return Transaction(
        tx_path,
        tx,
        amount,
        block,
        instr_id=ident("InstrId"),
        end_to_end_id=ident("EndToEndId"),
        tx_id=ident("TxId"),
        uetr=ident("UETR"),
    )
