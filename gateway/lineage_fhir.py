"""Lineage as FHIR R4: one AuditEvent per lineage event, one Provenance per derived message.

A healthcare auditor loads the output into a FHIR server or an audit repository
(``gateway lineage export --format fhir`` writes it as NDJSON). The resources
follow the IHE Basic Audit Log Patterns (BALP) where BALP has a pattern (API
reads and searches are ``rest`` events with a ``restful-interaction``
subtype), and the DICOM audit event ids (``110100`` family, the ``DCM`` code
system) elsewhere; gateway events that neither names keep a type of our own
(``urn:connector-gateway:lineage-event``, allowed by the extensible binding).
Every AuditEvent also carries the gateway's own event name as a subtype, so a
consumer can always filter by it.

Mapping (type system: DCM = ``http://dicom.nema.org/resources/ontology/DCM``,
AET = ``http://terminology.hl7.org/CodeSystem/audit-event-type``, GW = the
gateway's own; subtype: RI = ``http://hl7.org/fhir/restful-interaction``):

=====================  ==========================  ======================  ======
Lineage event          type                        subtype (besides GW)    action
=====================  ==========================  ======================  ======
BatchReceived          DCM 110107 Import           --                      C
MessageReceived        DCM 110107 Import           --                      C
DuplicateReceived      DCM 110107 Import           --                      C
DeliverySucceeded      DCM 110106 Export           --                      R
DeliveryFailed         DCM 110106 Export           --                      R
DeadLettered           DCM 110106 Export           --                      R
RelayAnswered          DCM 110106 Export           --                      R
RelayFailed            DCM 110106 Export           --                      R
InventoryPushed        DCM 110106 Export           --                      R
InventoryPushFailed    DCM 110106 Export           --                      R
MessageRead            AET rest                    RI read                 R
MessageBodyRead        AET rest                    RI read                 R
MessagesSearched       AET rest                    RI search-type          E
LineageQueried         DCM 110101 Audit Log Used   RI read / search-type   R / E
AccessDenied           DCM 110113 Security Alert   --                      E
Replayed               GW Replayed                 --                      U
StockMoved             GW StockMoved               --                      U
StockAdjusted          GW StockAdjusted            --                      U
InventoryDriftFixed    GW InventoryDriftFixed      --                      U
MessageValidated,      GW (the event name)         --                      E
RouteMatched,
RouteUnmatched,
MessageAccepted,
MessageRejected,
ReplySent,
DeliveryAttempted,
InventoryReconciled,
any other event
=====================  ==========================  ======================  ======

``MessageValidated`` appears only in chains written before the validation
outcome rode on ``MessageAccepted`` / ``MessageRejected`` (details
``validation``, ``errors``, ``warnings``, ``codes``).

``LineageQueried`` is a read (R, subtype ``read``) when it names a message and a
search (E, subtype ``search-type``) when it does not. As DICOM has it, an
export is a read of the data leaving (R), an import a create (C), and BALP
records a query as an execute (E).

Outcome: ``0`` success; ``8`` serious failure for a delivery that failed for
good or a relay that got no answer (``failed``, ``dead``, ``no_answer``);
``4`` minor failure for a refused or rejected request and a delivery to be
retried (``invalid``, ``refused``, ``rejected``, ``retrying``, ``forbidden``,
``bad_signature``), and for any other outcome that comes with an error code.
``outcomeDesc`` is the error code alone.

Agents: a ``user:NAME`` actor (an API key, or ``user:NAME (cli)`` for an OS
user on the command line) is the requestor (``requestor: true``, type
``IRCP`` information recipient for reads and searches, ``AUT`` author
otherwise). Listeners, routes, sinks, webhook and inventory channels are
agents with ``requestor: false``, a DCM participant role type (listener and
sink: 110152 Destination Role ID, route: 110150 Application, webhook: 110153
Source Role ID) and their actor string as ``name``.

Entities: the message (``what.identifier`` in ``urn:connector-gateway:envelope``)
and, for a derived message, its parent. The first entity (the message, or the
lineage record itself, ``urn:connector-gateway:lineage``, when the event names
no message) carries ``detail``: ``seq``, ``prev_hash``, ``hash``,
``raw_sha256`` and the event's scalar details (lists of scalars joined with
commas), never ``peer`` (a network address), ``masked_keys`` or
``masked_resource`` (masked forms keep part of the value). Business keys appear
only as their keyed pseudonyms (``hk:...``), each as a detail of type
``pseudonym:<key name>``; a FHIR resource read or written as ``resource_type``
and the pseudonym of its reference, type ``pseudonym:resource`` (an event
written before resources were named so holds the reference itself, which is
left out). Lineage holds no payload values, and neither does this export.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final

from gateway.lineage import LineageEvent

ENVELOPE_SYSTEM: Final = "urn:connector-gateway:envelope"
LINEAGE_SYSTEM: Final = "urn:connector-gateway:lineage"
EVENT_SYSTEM: Final = "urn:connector-gateway:lineage-event"
API_KEY_SYSTEM: Final = "urn:connector-gateway:api-key"
OS_USER_SYSTEM: Final = "urn:connector-gateway:os-user"
ACTOR_SYSTEM: Final = "urn:connector-gateway:actor"
OBSERVER: Final = "connector gateway"

DCM: Final = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_EVENT_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION: Final = "http://hl7.org/fhir/restful-interaction"
PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ENTITY_TYPE: Final = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
SOURCE_TYPE: Final = "http://terminology.hl7.org/CodeSystem/security-source-type"
PROVENANCE_PARTICIPANT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

IMPORT: Final = {"system": DCM, "code": "110107", "display": "Import"}
EXPORT: Final = {"system": DCM, "code": "110106", "display": "Export"}
AUDIT_LOG_USED: Final = {"system": DCM, "code": "110101", "display": "Audit Log Used"}
SECURITY_ALERT: Final = {"system": DCM, "code": "110113", "display": "Security Alert"}
REST: Final = {"system": AUDIT_EVENT_TYPE, "code": "rest", "display": "Restful Operation"}
READ: Final = {"system": RESTFUL_INTERACTION, "code": "read", "display": "read"}
SEARCH_TYPE: Final = {"system": RESTFUL_INTERACTION, "code": "search-type", "display": "search-type"}

SOURCE_ROLE: Final = {"system": DCM, "code": "110153", "display": "Source Role ID"}
DESTINATION_ROLE: Final = {"system": DCM, "code": "110152", "display": "Destination Role ID"}
APPLICATION: Final = {"system": DCM, "code": "110150", "display": "Application"}
INFORMATION_RECIPIENT: Final = {
    "system": PARTICIPATION_TYPE,
    "code": "IRCP",
    "display": "information recipient",
}
AUTHOR: Final = {"system": PARTICIPATION_TYPE, "code": "AUT", "display": "author (originator)"}
SYSTEM_OBJECT: Final = {"system": ENTITY_TYPE, "code": "2", "display": "System Object"}
APPLICATION_SERVER: Final = {"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}

_TYPES: Final[Mapping[str, tuple[Mapping[str, str] | None, str]]] = {
    # event -> (type coding, or None for the gateway's own; action)
    "BatchReceived": (IMPORT, "C"),
    "MessageReceived": (IMPORT, "C"),
    "DuplicateReceived": (IMPORT, "C"),
    "DeliverySucceeded": (EXPORT, "R"),
    "DeliveryFailed": (EXPORT, "R"),
    "DeadLettered": (EXPORT, "R"),
    "RelayAnswered": (EXPORT, "R"),
    "RelayFailed": (EXPORT, "R"),
    "InventoryPushed": (EXPORT, "R"),
    "InventoryPushFailed": (EXPORT, "R"),
    "MessageRead": (REST, "R"),
    "MessageBodyRead": (REST, "R"),
    "MessagesSearched": (REST, "E"),
    "LineageQueried": (AUDIT_LOG_USED, "R"),
    "AccessDenied": (SECURITY_ALERT, "E"),
    "Replayed": (None, "U"),
    "StockMoved": (None, "U"),
    "StockAdjusted": (None, "U"),
    "InventoryDriftFixed": (None, "U"),
}
"""Events with a type or an action of their own; any other event is the gateway's own type with action E."""

SERIOUS_OUTCOMES: Final = frozenset({"failed", "dead", "no_answer"})
MINOR_OUTCOMES: Final = frozenset(
    {"invalid", "refused", "rejected", "retrying", "forbidden", "bad_signature"}
)

WITHHELD_DETAILS: Final = frozenset({"keys", "masked_keys", "masked_resource", "peer", "resource"})
"""Detail keys never exported as values: business keys and resources go out as pseudonyms only."""
_CHAIN_FIELDS: Final = frozenset({"seq", "prev_hash", "hash", "raw_sha256"})
_PSEUDONYM: Final = re.compile(r"hk:[0-9a-f]{8,64}")
_FHIR_ID: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def audit_event(ev: LineageEvent) -> dict[str, Any]:
    """The FHIR R4 AuditEvent for one lineage event (its ``id`` is ``lineage-<seq>``, stable)."""
    type_coding, action = _TYPES.get(ev.event, (None, "E"))
    own = {"system": EVENT_SYSTEM, "code": ev.event, "display": ev.event}
    subtype: list[dict[str, str]] = []
    if ev.event in ("MessageRead", "MessageBodyRead"):
        subtype.append(dict(READ))
    elif ev.event == "MessagesSearched":
        subtype.append(dict(SEARCH_TYPE))
    elif ev.event == "LineageQueried":
        subtype.append(dict(READ if ev.envelope_id else SEARCH_TYPE))
        action = "R" if ev.envelope_id else "E"
    subtype.append(own)
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": f"lineage-{ev.seq}",
        "type": dict(type_coding) if type_coding is not None else dict(own),
        "subtype": subtype,
        "action": action,
        "recorded": _instant(ev.at),
        "outcome": _outcome(ev.outcome, ev.error_code),
    }
    if ev.error_code:
        resource["outcomeDesc"] = ev.error_code
    resource["agent"] = [_agent(ev.actor, action)]
    resource["source"] = {"observer": {"display": OBSERVER}, "type": [dict(APPLICATION_SERVER)]}
    resource["entity"] = _entities(ev)
    return resource


def provenance(child_id: str, parent_id: str, at: str, activity: str) -> dict[str, Any]:
    """The FHIR R4 Provenance of a derived message: ``child_id`` came from ``parent_id`` by ``activity``."""
    return {
        "resourceType": "Provenance",
        "id": _resource_id("provenance", child_id),
        "target": [{"identifier": {"system": ENVELOPE_SYSTEM, "value": child_id}}],
        "recorded": _instant(at),
        "activity": {"text": activity},
        "agent": [
            {
                "type": {
                    "coding": [
                        {"system": PROVENANCE_PARTICIPANT, "code": "assembler", "display": "Assembler"}
                    ]
                },
                "who": {"display": OBSERVER},
            }
        ],
        "entity": [
            {"role": "source", "what": {"identifier": {"system": ENVELOPE_SYSTEM, "value": parent_id}}}
        ],
    }


def fhir_export(events: Iterable[LineageEvent]) -> Iterator[dict[str, Any]]:
    """An AuditEvent per lineage event, in order, each derived message's Provenance right after the
    first event that names its parent (its ``MessageReceived``)."""
    batches: set[str] = set()
    derived: set[str] = set()
    for ev in events:
        yield audit_event(ev)
        if ev.event == "BatchReceived" and ev.envelope_id:
            batches.add(ev.envelope_id)
        if ev.parent_id and ev.envelope_id and ev.envelope_id not in derived:
            derived.add(ev.envelope_id)
            yield provenance(ev.envelope_id, ev.parent_id, ev.at, _activity(ev, batches))


def _activity(ev: LineageEvent, batches: set[str]) -> str:
    if ev.actor == "reply":
        return "status report"
    if ev.parent_id in batches:
        return "split from batch"
    return "derived"


def _outcome(outcome: str, error_code: str) -> str:
    if outcome in SERIOUS_OUTCOMES:
        return "8"
    if outcome in MINOR_OUTCOMES or error_code:
        return "4"
    return "0"


def _agent(actor: str, action: str) -> dict[str, Any]:
    if actor.startswith("user:"):
        name = actor[len("user:") :].strip()
        system = API_KEY_SYSTEM
        if name.endswith("(cli)"):
            name, system = name[: -len("(cli)")].strip(), OS_USER_SYSTEM
        name = name or actor
        return {
            "type": {"coding": [dict(INFORMATION_RECIPIENT if action in ("R", "E") else AUTHOR)]},
            "who": {"identifier": {"system": system, "value": name}, "display": name},
            "name": name,
            "requestor": True,
        }
    if actor.startswith("route:"):
        role = APPLICATION
    elif actor.startswith("webhook:"):
        role = SOURCE_ROLE
    else:  # listeners, sinks, inventory channels
        role = DESTINATION_ROLE
    return {
        "type": {"coding": [dict(role)]},
        "who": {"identifier": {"system": ACTOR_SYSTEM, "value": actor or "unknown"}},
        "name": actor or "unknown",
        "requestor": False,
    }


def _entities(ev: LineageEvent) -> list[dict[str, Any]]:
    detail = _details(ev)
    if ev.envelope_id:
        subject: dict[str, Any] = {
            "what": {"identifier": {"system": ENVELOPE_SYSTEM, "value": ev.envelope_id}},
            "type": dict(SYSTEM_OBJECT),
            "description": "message",
        }
    else:
        subject = {
            "what": {"identifier": {"system": LINEAGE_SYSTEM, "value": str(ev.seq)}},
            "type": dict(SYSTEM_OBJECT),
            "description": "lineage event",
        }
    subject["detail"] = detail
    entities = [subject]
    if ev.parent_id:
        entities.append(
            {
                "what": {"identifier": {"system": ENVELOPE_SYSTEM, "value": ev.parent_id}},
                "type": dict(SYSTEM_OBJECT),
                "description": "parent message",
            }
        )
    return entities


def _details(ev: LineageEvent) -> list[dict[str, str]]:
    out = [
        {"type": "seq", "valueString": str(ev.seq)},
        {"type": "prev_hash", "valueString": ev.prev_hash},
        {"type": "hash", "valueString": ev.hash},
    ]
    if ev.raw_sha256:
        out.append({"type": "raw_sha256", "valueString": ev.raw_sha256})
    for key in sorted(ev.details):
        if key in WITHHELD_DETAILS:
            continue
        text = _text(ev.details[key])
        if text:
            name = f"details.{key}" if key in _CHAIN_FIELDS else key
            out.append({"type": name, "valueString": text})
    keys = ev.details.get("keys")
    if isinstance(keys, Mapping):
        for name in sorted(keys):
            value = keys[name]
            if isinstance(value, str) and _PSEUDONYM.fullmatch(value):
                out.append({"type": f"pseudonym:{name}", "valueString": value})
    resource = ev.details.get("resource")
    if isinstance(resource, str) and _PSEUDONYM.fullmatch(resource):
        out.append({"type": "pseudonym:resource", "valueString": resource})
    return out


def _text(value: Any) -> str:
    """A scalar (or a list of scalars) as detail text; "" for anything else, which is then left out."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value).strip()
    if isinstance(value, list | tuple) and all(
        isinstance(v, str | int | float) and not isinstance(v, bool) for v in value
    ):
        return ",".join(str(v) for v in value).strip()
    return ""


def _instant(at: str) -> str:
    """A FHIR instant (seconds and a zone are required): lineage times are aware UTC ISO 8601 already."""
    try:
        moment = datetime.fromisoformat(at)
    except ValueError:
        return at
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _resource_id(prefix: str, key: str) -> str:
    """``prefix-key`` when that is a valid FHIR id, else ``prefix-`` and a digest of the key (still stable)."""
    candidate = f"{prefix}-{key}"
    if _FHIR_ID.fullmatch(candidate):
        return candidate
    return f"{prefix}-{hashlib.sha256(key.encode()).hexdigest()[:40]}"
