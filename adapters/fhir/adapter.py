"""The ``fhir`` adapter: a FHIR R4 resource (JSON or XML) as one message of the gateway.

A resource posted to an ingest channel, or handed over by the FHIR REST API, is
one envelope; a Bundle too (``split`` never cuts it: the REST API processes a
transaction's entries itself).

Envelope: protocol ``fhir``, version ``4.0.1``, ``message_type`` the resource
type, or ``Bundle/<type>`` for a Bundle (``Bundle/transaction``,
``Bundle/batch`` …); ``control_id`` the request's ``x-request-id`` receipt
attribute; ``body`` the resource's FHIR JSON form as a dict (XML is read into
the same form); ``sensitivity`` ``phi``. Headers (:data:`HEADER_KEYS`):
``message_type``, ``control_id``, ``version``, ``resource_type``,
``resource_id`` (the receipt's ``resource_id`` attribute, else the body's
``id``; the store shows it, as lineage names the resource, as the keyed
pseudonym of ``Type/id``), ``interaction`` (the receipt's ``interaction``
attribute, else ``create``) and, for a Bundle, ``entries``. The business key ``patient`` is the
patient the resource is about (:func:`patient_of`: ``Patient/<id>``, or the
``subject``, ``patient`` or ``beneficiary`` reference when it names a Patient,
or for an Appointment the first participant's ``actor`` that does, for an
AppointmentResponse its ``actor``, for a Bundle its first entry's), shown
masked as ``Patient/***<last 4>``; a route with ``subject: patient`` seals the
body under it. A resource about several patients (:func:`patients_of`: an
Appointment with several Patient participants, a Bundle whose entries are
about several) is filed under every one: ``patient`` for the first,
``patient.2``, ``patient.3`` … for the others (up to :data:`MAX_PATIENTS`, for
display); the store also files a Bundle under the patients of every resource
it wrote (a PATCH entry's, a Patient the Bundle created), so that lineage
search and erasure find it by any of them.

Replies are OperationOutcomes (``application/fhir+json``): 200 when accepted;
400 when the body could not be read; 422 when it was read but is not valid; a
refusal 503 when the store is unavailable, 409 for a control id seen before with
other content, 400 otherwise. Gateway issue codes that are not FHIR
``issue-type`` codes are answered with the nearest one and keep their own code
in ``details.coding``. ``Reply.code`` is the HTTP status, FHIR's own outcome.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, Final

import orjson

from adapters.fhir import resources
from adapters.fhir.outcome import FhirError, operation_outcome
from gateway.adapter import Batch, Issue, Outcome, ParseError, Reply
from gateway.envelope import Envelope, Receipt, new_id, sha256_hex

__all__ = ["CONTENT_TYPE", "FHIR_VERSION", "HEADER_KEYS", "ISSUE_CODE_SYSTEM", "FhirAdapter"]

FHIR_VERSION: Final = "4.0.1"
CONTENT_TYPE: Final = "application/fhir+json"
ISSUE_CODE_SYSTEM: Final = "urn:connector-gateway:issue-code"
"""The code system of the gateway's own issue codes, kept in an OperationOutcome's ``details``."""
HEADER_KEYS: Final = (
    "message_type",
    "control_id",
    "version",
    "resource_type",
    "resource_id",
    "interaction",
    "entries",
)
"""Every header this adapter promotes."""

FHIR_ISSUE_TYPES: Final = frozenset(
    {
        "invalid", "structure", "required", "value", "invariant", "security", "login", "unknown",
        "expired", "forbidden", "suppressed", "processing", "not-supported", "duplicate",
        "multiple-matches", "not-found", "deleted", "too-long", "code-invalid", "extension",
        "too-costly", "business-rule", "conflict", "transient", "lock-error", "no-store", "exception",
        "timeout", "incomplete", "throttled", "informational",
    }
)  # fmt: skip
"""The FHIR R4 ``issue-type`` codes."""
_GATEWAY_CODES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "store_unavailable": "transient",
        "control_id_conflict": "conflict",
        "route_unmatched": "not-supported",
        "unsupported_rule_set": "not-supported",
    }
)
"""Gateway issue codes (raised by intake, not by this adapter) and the FHIR issue type they become."""

_JSON_HEAD = re.compile(rb'^\s*\{[^\x00]{0,4096}?"resourceType"\s*:\s*"[A-Z]', re.DOTALL)
_XML_HEAD = re.compile(
    rb"^\s*(?:<\?xml[^>]{0,200}\?>\s*)?(?:<!--.{0,2000}?-->\s*)*"
    rb"<(?:[A-Za-z][\w.-]{0,30}:)?[A-Z][A-Za-z]{0,63}\b[^>]{0,1000}?"
    rb"\bxmlns(?::[A-Za-z][\w.-]{0,30})?\s*=\s*[\"']http://hl7\.org/fhir[\"']",
    re.DOTALL,
)
_PATIENT_REF = re.compile(r"(?:^|/)Patient/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?")
_ID = re.compile(resources.ID_PATTERN)


def _media(raw: bytes, content_type: str | None) -> str:
    """The media type to read ``raw`` as: the declared one when it is a FHIR format, else sniffed."""
    kind = resources.media_type(content_type)
    if kind in resources.JSON_TYPES or kind in resources.XML_TYPES:
        return kind
    head = bytes(raw[:64]).removeprefix(codecs.BOM_UTF8).lstrip()
    return "application/fhir+xml" if head.startswith(b"<") else "application/fhir+json"


def _reference(value: object) -> str:
    """``Patient/<id>`` for a Reference that names a Patient; a ``urn:uuid:`` reference typed
    ``Patient`` (inside a Bundle) as it is; otherwise ``""``."""
    if not isinstance(value, dict):
        return ""
    ref = value.get("reference")
    if not isinstance(ref, str) or len(ref) > 1024:
        return ""
    match = _PATIENT_REF.search(ref)
    if match and match.end() == len(ref):
        return f"Patient/{match.group(1)}"
    if value.get("type") == "Patient" and ref.startswith("urn:uuid:") and len(ref) <= 45:
        return ref
    return ""


def _patients(resource: Mapping[str, Any]) -> Iterator[str]:
    """The patients a resource is about, in order (repeats included)."""
    rtype = resource.get("resourceType")
    if rtype == "Patient":
        rid = resource.get("id")
        if isinstance(rid, str) and _ID.fullmatch(rid):
            yield f"Patient/{rid}"
        return
    if rtype == "Bundle":
        entries = resource.get("entry")
        for entry in entries if isinstance(entries, list) else []:
            inner = entry.get("resource") if isinstance(entry, dict) else None
            if isinstance(inner, dict):
                yield from _patients(inner)
        return
    for name in ("subject", "patient", "beneficiary"):
        found = _reference(resource.get(name))
        if found:
            yield found
            return
    if rtype == "Appointment":  # its patients are among its participants (an SIU's PID becomes one)
        participants = resource.get("participant")
        for participant in participants if isinstance(participants, list) else []:
            found = _reference(participant.get("actor")) if isinstance(participant, dict) else ""
            if found:
                yield found
    elif rtype == "AppointmentResponse":
        found = _reference(resource.get("actor"))
        if found:
            yield found


def patient_of(resource: Mapping[str, Any]) -> str:
    """The patient a resource is about, the first of :func:`patients_of` (module docstring); ``""`` for
    none."""
    return next(_patients(resource), "")


def patients_of(resource: Mapping[str, Any]) -> list[str]:
    """Every patient a resource is about, each once, in order (module docstring): for a Bundle its
    entries' patients, for an Appointment its participants that are Patients."""
    return list(dict.fromkeys(_patients(resource)))


MAX_PATIENTS = 100
"""Patients an envelope names, at most (``patient``, ``patient.2`` …); the store files a Bundle under the
patients of every resource it wrote besides, with no limit."""


def _key(n: int) -> str:
    return "patient" if n == 0 else f"patient.{n + 1}"


def mask_patient(reference: str) -> str:
    """``Patient/0b1c2d3e-aaaa-bbbb`` → ``Patient/***bbbb``; a short id shows nothing of itself."""
    prefix, _, rid = reference.rpartition("/") if reference.startswith("Patient/") else ("", "", reference)
    shown = rid[-4:] if len(rid) > 8 else ""
    return f"{prefix}/***{shown}" if prefix else f"***{shown}"


def mask_reference(reference: str) -> str:
    """A resource reference as lineage may show it, as :func:`mask_patient` masks a patient's:
    ``Observation/01J9Z8K4W2`` → ``Observation/***K4W2``, the type kept, a short id shown not at all."""
    rtype, _, rid = reference.rpartition("/")
    shown = rid[-4:] if len(rid) > 8 else ""
    return f"{rtype}/***{shown}" if rtype else f"***{shown}"


def _message_type(resource: Mapping[str, Any]) -> str:
    rtype = str(resource.get("resourceType", ""))
    kind = resource.get("type")
    if rtype == "Bundle" and isinstance(kind, str) and re.fullmatch(r"[a-z][a-z-]{0,39}", kind):
        return f"Bundle/{kind}"
    return rtype


class FhirAdapter:
    """The ``fhir`` adapter (see the module docstring)."""

    name: str = "fhir"
    rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType({})

    def __repr__(self) -> str:
        return "FhirAdapter()"

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """A JSON object naming a ``resourceType`` in its first 4 KiB, or an XML document whose root
        element is in the FHIR namespace. Never raises."""
        head = bytes(raw[:8192]).removeprefix(codecs.BOM_UTF8)
        return bool(_JSON_HEAD.match(head) or _XML_HEAD.match(head))

    def split(self, raw: bytes) -> Batch | None:
        """Never: a Bundle is one message (the REST API handles its entries)."""
        return None

    def deletion(self, resource_type: str, resource_id: str, receipt: Receipt) -> Envelope:
        """The envelope of a DELETE of ``resource_type/resource_id``: no body, no bytes, the type, the id
        and the interaction in its headers."""
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=FHIR_VERSION,
            message_type=resource_type,
            control_id="",
            sender="",
            receiver="",
            raw=b"",
            raw_sha256=sha256_hex(b""),
            body=None,
            headers={
                "message_type": resource_type,
                "control_id": "",
                "resource_type": resource_type,
                "resource_id": resource_id,
                "interaction": "delete",
            },
            sensitivity="phi",
            receipt=receipt,
        )

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        """Read the resource (:func:`adapters.fhir.resources.read_resource`) into an envelope."""
        control_id = receipt.attributes.get("x-request-id", "")
        try:
            body = resources.read_resource(bytes(raw), _media(raw, receipt.content_type))
        except FhirError as exc:
            headers = {"message_type": "", "control_id": control_id, "version": FHIR_VERSION}
            raise ParseError(exc.issues, headers) from None
        message_type = _message_type(body)
        rid = body.get("id")
        headers = {
            "message_type": message_type,
            "control_id": control_id,
            "version": FHIR_VERSION,
            "resource_type": body["resourceType"],
            "resource_id": receipt.attributes.get("resource_id")
            or (rid if isinstance(rid, str) and _ID.fullmatch(rid) else ""),
            "interaction": receipt.attributes.get("interaction", "create"),
        }
        entries = body.get("entry")
        if body["resourceType"] == "Bundle":
            headers["entries"] = str(len(entries) if isinstance(entries, list) else 0)
        patients = patients_of(body)[:MAX_PATIENTS]
        if not patients and body["resourceType"] == "Patient" and headers["resource_id"]:
            patients = [f"Patient/{headers['resource_id']}"]  # a create: the id the server gave it
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=FHIR_VERSION,
            message_type=message_type,
            control_id=control_id,
            sender="",
            receiver="",
            raw=raw,
            raw_sha256=sha256_hex(raw),
            body=body,
            headers=headers,
            business_keys={_key(n): p for n, p in enumerate(patients)},
            masked_keys={_key(n): mask_patient(p) for n, p in enumerate(patients)},
            sensitivity="phi",
            receipt=receipt,
        )

    def validate(self, envelope: Envelope) -> list[Issue]:
        """The resource's issues, each entry of a Bundle with its own path, and for a transaction or
        batch every entry's ``request.method`` and ``request.url``."""
        body = envelope.body
        if not isinstance(body, Mapping):
            return [Issue("error", "structure", "", "The message body is not a FHIR resource.")]
        issues = resources.validate(body)
        if body.get("resourceType") == "Bundle" and body.get("type") in ("transaction", "batch"):
            seen = {(i.code, i.location) for i in issues}
            entries = body.get("entry")
            for n, entry in enumerate(entries if isinstance(entries, list) else []):
                request = entry.get("request") if isinstance(entry, dict) else None
                for part in ("method", "url"):
                    value = request.get(part) if isinstance(request, dict) else None
                    where = f"Bundle.entry[{n}].request.{part}"
                    if not (isinstance(value, str) and value) and ("required", where) not in seen:
                        issues.append(
                            Issue(
                                "error",
                                "required",
                                where,
                                f"Every entry of a {body['type']} Bundle needs a request {part}.",
                            )
                        )
        return issues

    def respond(self, outcome: Outcome) -> Reply:
        """An OperationOutcome with the status of the module docstring."""
        codes = {i.code for i in outcome.issues if i.is_error}
        if outcome.kind == "accepted":
            status = 200
        elif "store_unavailable" in codes:
            status = 503
        elif "control_id_conflict" in codes:
            status = 409
        elif outcome.kind == "refused":
            status = 400
        elif outcome.envelope is None:
            status = 400  # no envelope: the body could not be read
        else:
            status = 422
        if outcome.kind == "accepted" and not outcome.issues:
            issues: list[Issue] = [Issue("information", "informational", "", "The resource was accepted.")]
        else:
            issues = list(outcome.issues)
        body = operation_outcome([_fhir_issue(i) for i in issues])
        for issue, entry in zip(issues, body["issue"], strict=True):
            if issue.code not in FHIR_ISSUE_TYPES:
                entry["details"] = {"coding": [{"system": ISSUE_CODE_SYSTEM, "code": issue.code}]}
        return Reply(orjson.dumps(body), CONTENT_TYPE, status, str(status))

    def serialize(self, envelope: Envelope) -> bytes:
        """The resource as FHIR JSON (an XML body is forwarded in its JSON form)."""
        body = envelope.body
        return resources.write_json(body) if isinstance(body, Mapping) else envelope.raw


def _fhir_issue(issue: Issue) -> Issue:
    """``issue`` with a FHIR ``issue-type`` code: a gateway code becomes the nearest one."""
    if issue.code in FHIR_ISSUE_TYPES:
        return issue
    code = _GATEWAY_CODES.get(issue.code, "processing")
    return Issue(issue.severity, code, issue.location, issue.diagnostics)
