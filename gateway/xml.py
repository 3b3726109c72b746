"""The one hardened XML parser every XML adapter uses (ISO 20022, POSLog).

No entity is ever expanded (external or internal: billion laughs), no DTD is
loaded, no network is touched, and libxml2's own huge-tree limits stay on.
On top of that the document must fit a size cap and a depth cap, and a
``<!DOCTYPE`` is refused outright: no message format we take uses one, and
refusing it is the only way to be sure nothing in it is acted on.

Errors are :class:`XMLRejected` with a bounded ``code`` and a sentence that
never quotes the document.
"""

from __future__ import annotations

import re

from lxml import etree

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_DEPTH", "XMLRejected", "hardened_parser", "parse_xml"]

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_MAX_DEPTH = 64

_DOCTYPE = re.compile(rb"<!DOCTYPE", re.IGNORECASE)
_ENTITY = re.compile(rb"<!ENTITY", re.IGNORECASE)


class XMLRejected(ValueError):
    """The bytes are not a document the gateway will read. ``code`` is a bounded snake_case name."""

    def __init__(self, code: str, diagnostics: str, line: int = 0) -> None:
        super().__init__(diagnostics)
        self.code = code
        self.diagnostics = diagnostics
        self.line = line


def hardened_parser() -> etree.XMLParser:
    """lxml's parser with entities, DTDs, the network and huge trees off (also for reading XSDs)."""
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=False,
    )


def parse_xml(
    raw: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> etree._Element:
    """Parse ``raw`` into its root element, or raise :class:`XMLRejected`.

    A UTF-8 byte order mark and the XML declaration's encoding are honoured
    (lxml reads them from the bytes); ``\\r``-only line ends are fine.
    """
    if len(raw) > max_bytes:
        raise XMLRejected("too_large", f"The document exceeds the limit of {max_bytes} bytes.")
    if _DOCTYPE.search(raw) or _ENTITY.search(raw):
        raise XMLRejected("doctype_forbidden", "Documents with a DOCTYPE or entity declarations are refused.")
    try:
        root = etree.fromstring(raw, hardened_parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno or 0
        raise XMLRejected(
            "not_well_formed", f"The document is not well-formed XML (line {line}).", line
        ) from None
    if root is None:
        raise XMLRejected("not_well_formed", "The document is empty.")
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:  # a DOCTYPE the byte check missed (UTF-16, UTF-32)
        raise XMLRejected("doctype_forbidden", "Documents with a DOCTYPE or entity declarations are refused.")
    if _depth(root, max_depth) > max_depth:
        raise XMLRejected("too_deep", f"The document nests elements deeper than {max_depth} levels.")
    return root


def _depth(root: etree._Element, limit: int) -> int:
    """``limit + 1`` when some element lies deeper than ``limit`` levels, else ``limit`` (an XPath in C)."""
    deeper = root.xpath("boolean(/" + "*/" * limit + "*)")
    return limit + 1 if deeper else limit
