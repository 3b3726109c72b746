"""XSD validation of ISO 20022 documents against a folder of official schemas.

The operator points ``iso20022.schema_dir`` at a folder of ``*.xsd`` files
(from iso20022.org, or a bank's distribution; file names do not matter). At
start the folder is indexed by each schema's ``targetNamespace``; a schema is
compiled the first time a document in its namespace arrives and kept. The
schemas are parsed with the same hardened parser as messages (no network,
no entities), and a schema that does not compile is logged once and skipped.

Errors become issues with code ``schema_invalid``, the element's path as
location, and a sentence chosen by libxml2's error type: libxml2's own
messages quote the offending value, so they are never passed on.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from adapters.finance.iso20022_document import element_path
from gateway.adapter import Issue
from gateway.xml import hardened_parser

__all__ = ["SchemaCatalogue"]

log = logging.getLogger("gateway.iso20022")

_MAX_SCHEMA_ISSUES = 50

_SENTENCES = {
    "SCHEMAV_CVC_PATTERN_VALID": "The value does not have the format the schema requires.",
    "SCHEMAV_CVC_ENUMERATION_VALID": "The value is not one of the codes the schema allows.",
    "SCHEMAV_CVC_MAXLENGTH_VALID": "The value is longer than the schema allows.",
    "SCHEMAV_CVC_MINLENGTH_VALID": "The value is shorter than the schema allows.",
    "SCHEMAV_CVC_LENGTH_VALID": "The value does not have the length the schema requires.",
    "SCHEMAV_CVC_TOTALDIGITS_VALID": "The number has more digits than the schema allows.",
    "SCHEMAV_CVC_FRACTIONDIGITS_VALID": "The number has more decimals than the schema allows.",
    "SCHEMAV_CVC_MININCLUSIVE_VALID": "The number is below the schema's minimum.",
    "SCHEMAV_CVC_MAXINCLUSIVE_VALID": "The number is above the schema's maximum.",
    "SCHEMAV_CVC_DATATYPE_VALID_1_2_1": "The value is not of the schema's data type.",
    "SCHEMAV_ELEMENT_CONTENT": "An element is missing, misplaced or not allowed here.",
    "SCHEMAV_CVC_COMPLEX_TYPE_2_4": "A required element is missing.",
    "SCHEMAV_CVC_COMPLEX_TYPE_3_2_2": "The element has an attribute the schema does not allow.",
    "SCHEMAV_CVC_COMPLEX_TYPE_4": "A required attribute is missing.",
    "SCHEMAV_CVC_ELT_1": "The root element is not one the schema declares.",
}


_COMPILING = threading.Lock()


class _Compiled(threading.local):
    """One thread's compiled schemas: an ``XMLSchema`` keeps one error log, which validation fills
    without the GIL, so two threads validating with the same object would read each other's errors."""

    def __init__(self) -> None:
        self.by_namespace: dict[str, etree.XMLSchema | None] = {}


@dataclass(slots=True)
class SchemaCatalogue:
    """The schemas of one folder, by target namespace, compiled on first use in each thread that
    validates (the event loop, and the worker that prepares large payloads)."""

    directory: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    _compiled: _Compiled = field(default_factory=_Compiled)

    @classmethod
    def load(cls, directory: Path | None) -> SchemaCatalogue:
        catalogue = cls(directory)
        if directory is None:
            return catalogue
        parser = hardened_parser()
        for path in sorted(directory.glob("*.xsd")):
            try:
                root = etree.parse(str(path), parser).getroot()
            except (OSError, etree.XMLSyntaxError):
                log.warning("schema file unreadable; skipped", extra={"file": str(path)})
                continue
            target = root.get("targetNamespace")
            if target:
                catalogue.files.setdefault(target, path)
        log.info(
            "iso20022 schemas indexed", extra={"folder": str(directory), "schemas": len(catalogue.files)}
        )
        return catalogue

    def has(self, namespace: str) -> bool:
        return namespace in self.files

    def schema(self, namespace: str) -> etree.XMLSchema | None:
        """This thread's compiled schema of ``namespace``; ``None`` when there is none, or it does not
        compile."""
        compiled_here = self._compiled.by_namespace
        if namespace not in compiled_here:
            path = self.files.get(namespace)
            compiled: etree.XMLSchema | None = None
            if path is not None:
                try:
                    with _COMPILING:  # libxml2's schema compiler is not safe to run in two threads at once
                        compiled = etree.XMLSchema(etree.parse(str(path), hardened_parser()))
                except (etree.XMLSchemaParseError, etree.XMLSyntaxError, OSError):
                    log.error(
                        "schema does not compile; documents of its namespace are not validated",
                        extra={"file": str(path)},
                    )
            compiled_here[namespace] = compiled
        return compiled_here[namespace]

    def validate(self, document: etree._Element) -> list[Issue] | None:
        """Schema issues of ``document``; ``None`` when no schema for its namespace is at hand."""
        namespace = etree.QName(document).namespace or ""
        schema = self.schema(namespace)
        if schema is None:
            return None
        # validate the Document on its own: a wrapper with a head.001 header is not part of the schema
        standalone = document if document.getparent() is None else _detached(document)
        if schema.validate(standalone):
            return []
        issues: list[Issue] = []
        for error in schema.error_log:
            if len(issues) >= _MAX_SCHEMA_ISSUES:
                break
            sentence = _SENTENCES.get(error.type_name, "The document does not follow its schema.")
            issues.append(
                Issue("error", "schema_invalid", _element_location(standalone, error.path), sentence)
            )
        return issues


def _element_location(document: etree._Element, path: str | None) -> str:
    """The element libxml2 names (``/*/*[2]/*[3]``) as ``/Document/CstmrCdtTrfInitn/PmtInf[2]/NbOfTxs``."""
    try:
        found = document.getroottree().xpath(path) if path else []
    except etree.XPathError:
        found = []
    node = found[0] if isinstance(found, list) and found and isinstance(found[0], etree._Element) else None
    return _location(path) if node is None else element_path(node)


def _detached(document: etree._Element) -> etree._Element:
    return etree.fromstring(etree.tostring(document), hardened_parser())


def _location(path: str | None) -> str:
    """``/*[local-name()='Document']/...`` or ``/ns:Document/ns:GrpHdr`` as ``/Document/GrpHdr``."""
    if not path:
        return ""
    steps = []
    for step in path.split("/")[1:]:
        if step.startswith("*[local-name()='"):
            name = step[len("*[local-name()='") :].split("'", 1)[0]
            rest = step.split("]", 1)[1] if "]" in step else ""
            steps.append(name + rest)
        else:
            steps.append(step.split(":", 1)[-1])
    return "/" + "/".join(steps)
