"""The store contract: what intake, the API and the CLI need from durable storage.

One protocol, implemented first on SQLite (:mod:`gateway.store.sqlite`, the
embedded default). Intake hands the store complete :class:`IntakeRecord`
values; the store decides, inside one transaction, whether each is new, a
duplicate or a conflicting reuse of a control id, writes the message and its
lineage events, and commits before it answers.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from gateway.adapter import Issue, OutcomeKind
from gateway.lineage import EventDraft, LineageEvent, Verification
from gateway.stock import ItemLink, Movement, ReportedLevel
from gateway.store.ledger import MovementRow, PushRow, ReportRow, StockLevel

CONTROL_ID_CONFLICT = Issue(
    "error",
    "control_id_conflict",
    "",
    "This control id was already accepted from this sender with different content.",
)
"""The issue a message gets when its sender reuses an accepted control id for different content."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Applied:
    """What an :data:`Effect` did: a value for the caller, the lineage events it adds, and whether the
    record it rides with is still routed (``False`` when it changed nothing: a conditional create that
    found its resource already there has nothing to deliver)."""

    value: Any
    events: Sequence[EventDraft] = ()
    routed: bool = True
    keys: Sequence[str] = ()
    """Business key values the record is filed under beyond its envelope's: what the effect wrote is
    about them too (a patched resource's patient); kept, like the others, only as pseudonyms."""


Effect = Callable[[sqlite3.Connection], Applied]
"""Work that must commit with an accepted record (a FHIR resource version and its index rows): run in
the record's transaction before it is routed. When it raises, nothing of the record is kept and the
caller gets the exception."""

Expunger = Callable[[sqlite3.Connection, str, str], int]
"""What an adapter's own tables hold about a data subject, removed in the erasure's transaction:
called with the connection, the subject as given and its pseudonym; answers how many records (FHIR
resources) it removed or changed."""


@dataclass(frozen=True, slots=True)
class Erasure:
    """What erasing a data subject did."""

    bodies: int
    """Encrypted message bodies about the subject, unreadable from now on: those sealed under its key,
    and those sealed under another's (a Bundle about several patients), whose bodies are removed."""
    records: int = 0
    """Records the expungers removed or changed (FHIR resources about the subject)."""


MessageStatus = Literal["accepted", "rejected", "batch"]
DecisionKind = Literal["stored", "duplicate", "conflict"]


@dataclass(frozen=True, slots=True)
class PlannedDelivery:
    """An outbox row the routing table asks for: deliver the message to ``sink``."""

    sink: str
    route: str
    transform: str | None = None
    order_key: str | None = None


@dataclass(frozen=True, slots=True)
class IntakeRecord:
    """One received message (or unparseable unit) and what the pipeline found in it."""

    id: str
    received_at: str
    protocol: str
    raw: bytes
    raw_sha256: str
    outcome: OutcomeKind
    listener: str
    peer: str = ""
    client: str = ""
    version: str = ""
    message_type: str = ""
    control_id: str = ""
    sender: str = ""
    receiver: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    business_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    masked_keys: Mapping[str, str] = field(default_factory=dict)
    """How business keys may be shown; the message row keeps these forms in place of the values."""
    sender_key: str = ""
    """The business key that tells senders apart when ``sender`` is a marker
    (:attr:`gateway.envelope.Envelope.sender_key`)."""
    issues: Sequence[Issue] = ()
    parent_id: str | None = None
    validated: bool = True
    reply_code: str = ""
    """The reply this message gets if it is stored as it is (a duplicate or a conflict gets another)."""
    route: str = ""
    """The route that matched, ``(unmatched)``, or "" when routing is off or the message was rejected."""
    deliveries: Sequence[PlannedDelivery] = ()
    storage: str = "full"
    """How the body is kept (the route's ``storage``): ``full``, ``metadata`` or ``encrypted``."""
    subject: str = field(default="", repr=False)
    """``encrypted``: the data subject's value (in memory only; the store keeps its pseudonym)."""
    reply_record: IntakeRecord | None = None
    """The reply as a message of its own (an ISO 20022 status report), stored as this one's child and
    routed when a route takes it, in the same transaction, when this record is stored as it is."""
    online: Sequence[str] = ()
    """Sinks the route names that answer in line (:class:`gateway.sink.OnlineSink`): no outbox rows."""
    content_sha256: str = ""
    """Digest of the canonical content, where the adapter gives one; duplicates are judged by it (and
    by ``raw_sha256``: the same bytes are always a resend)."""
    movements: Sequence[Movement] = ()
    """Stock movements applied to the inventory ledger with the message (accepted messages only)."""
    reports: Sequence[ReportedLevel] = ()
    """Levels a channel reported in the message, kept for reconciliation."""
    items: Sequence[ItemLink] = ()
    """Channel item ids of SKUs the message names (kept for pushing levels to that channel)."""
    effect: Effect | None = field(default=None, repr=False)
    """Run in the transaction when the record is stored as accepted (see :data:`Effect`)."""


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A batch payload kept as received; its messages point to it with ``parent_id``."""

    id: str
    received_at: str
    protocol: str
    kind: str
    raw: bytes
    raw_sha256: str
    listener: str
    peer: str = ""
    client: str = ""
    issues: Sequence[Issue] = ()
    """Warnings about the batch as a whole (counts, trailers): in its ``BatchReceived`` event."""


@dataclass(frozen=True, slots=True)
class IntakeDecision:
    """What the store did with one record. For a duplicate, ``message_id`` is the original's."""

    kind: DecisionKind
    message_id: str
    outcome: OutcomeKind
    effect: Applied | None = None
    """What the record's effect did, when it ran."""


@dataclass(frozen=True, slots=True)
class ReplyRecord:
    """The acknowledgement that left the gateway for one message."""

    message_id: str
    code: str
    actor: str
    decision: DecisionKind = "stored"


@dataclass(frozen=True, slots=True)
class MessageFilter:
    control_id: str | None = None
    protocol: str | None = None
    message_type: str | None = None
    status: str | None = None
    since: str | None = None
    until: str | None = None
    limit: int = 100
    before_id: str | None = None


class EventQuery(BaseModel):
    """What an auditor searches lineage by; every given field must hold.

    The same model is the body of ``POST /api/lineage/search``, so its bounds are the API's.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="A business key value, or a FHIR resource as Type/id, matched by its pseudonym.",
    )
    control_id: str | None = None
    sender: str | None = None
    receiver: str | None = None
    protocol: str | None = None
    message_type: str | None = None
    route: str | None = None
    sink: str | None = None
    event: str | None = None
    outcome: str | None = None
    since: str | None = None
    until: str | None = None
    after_seq: int = Field(default=0, ge=0, description="Page on: the last seq of the previous page.")
    limit: int = Field(default=1000, ge=1, le=10000)


@dataclass(frozen=True, slots=True)
class MessageRow:
    """A stored message as the API and CLI show it (no raw bytes)."""

    id: str
    received_at: str
    protocol: str
    version: str
    message_type: str
    control_id: str
    sender: str
    receiver: str
    status: str
    reply_code: str
    listener: str
    peer: str
    client: str
    raw_sha256: str
    size: int
    headers: Mapping[str, str]
    issues: Sequence[Mapping[str, str]]
    parent_id: str | None
    route: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "received_at": self.received_at,
            "protocol": self.protocol,
            "version": self.version,
            "message_type": self.message_type,
            "control_id": self.control_id,
            "sender": self.sender,
            "receiver": self.receiver,
            "status": self.status,
            "reply_code": self.reply_code,
            "listener": self.listener,
            "peer": self.peer,
            "client": self.client,
            "raw_sha256": self.raw_sha256,
            "size": self.size,
            "headers": dict(self.headers),
            "issues": [dict(i) for i in self.issues],
            "parent_id": self.parent_id,
            "route": self.route,
        }


DeliveryStatus = Literal["pending", "delivered", "dead"]


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """One outbox row as the API shows it."""

    id: str
    message_id: str
    sink: str
    route: str
    transform: str | None
    order_key: str | None
    status: str
    attempts: int
    next_attempt_at: float
    last_error_code: str
    last_error: str
    created_at: str
    updated_at: str
    delivered_at: str | None

    def as_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        retrying = self.status == "pending" and self.attempts > 0
        out["state"] = "retrying" if retrying else self.status
        out["next_attempt_at"] = (
            datetime.fromtimestamp(self.next_attempt_at, UTC).isoformat()
            if self.status == "pending"
            else None
        )
        return out


@dataclass(frozen=True, slots=True)
class DueDelivery:
    """A delivery the engine may attempt now, with what it needs to rebuild the envelope."""

    seq: int
    id: str
    message_id: str
    sink: str
    route: str
    transform: str | None
    order_key: str | None
    attempts: int
    received_at: str
    protocol: str
    version: str
    message_type: str
    control_id: str
    sender: str
    receiver: str
    raw: bytes
    raw_sha256: str
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one attempt did; the store turns it into the row's new state and lineage events."""

    delivery_id: str
    message_id: str
    sink: str
    attempt: int
    outcome: Literal["delivered", "retry", "dead"]
    error_code: str = ""
    reason: str = ""
    next_attempt_at: float = 0.0
    started_at: str = ""
    duration_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class SinkBacklog:
    sink: str
    pending: int
    oldest_pending_at: float | None
    dead: int


class Store(Protocol):
    """Durable storage for messages and lineage. Writes are async; reads are plain calls."""

    async def record_intake(
        self, records: Sequence[IntakeRecord], batch: BatchRecord | None = None
    ) -> list[IntakeDecision]:
        """Write records (and their batch) with lineage in one committed transaction, then answer."""
        ...

    async def record_events(self, drafts: Sequence[EventDraft]) -> None:
        """Append lineage events after the fact (for example ``ReplySent``)."""
        ...

    async def record_effect(self, effect: Effect) -> Applied:
        """Run ``effect`` (a FHIR Bundle a sink applies to the store) in a committed transaction."""
        ...

    def note_events(self, drafts: Sequence[EventDraft]) -> None:
        """Append lineage events with a coming transaction; nothing waits for them."""
        ...

    def note_replies(self, replies: Sequence[ReplyRecord]) -> None:
        """Record a ``ReplySent`` event per reply with a coming transaction (nothing waits for it)."""
        ...

    async def flush(self) -> None:
        """Commit everything noted so far."""
        ...

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on a read-only connection (the FHIR resource reads of :mod:`gateway.store.resources`)."""
        ...

    def list_messages(self, flt: MessageFilter) -> list[MessageRow]: ...

    def get_message(self, message_id: str) -> MessageRow | None: ...

    def get_raw(self, message_id: str) -> bytes | None: ...

    def lineage_of(self, message_id: str) -> list[LineageEvent]: ...

    def due_deliveries(self, sink: str, now: float, limit: int, exclude: set[str]) -> list[DueDelivery]:
        """Pending deliveries of ``sink`` due by ``now``: for ordered keys only each key's oldest."""
        ...

    async def record_attempts(self, results: Sequence[AttemptResult]) -> None: ...

    async def replay(self, message_id: str | None, sink: str | None, actor: str) -> int:
        """Make dead deliveries (of one message, or of a sink) pending again; returns how many."""
        ...

    def deliveries_of(self, message_id: str) -> list[DeliveryRow]: ...

    def list_deliveries(self, status: str | None, sink: str | None, limit: int) -> list[DeliveryRow]: ...

    def backlog(self) -> list[SinkBacklog]: ...

    def verify_lineage(
        self, checkpoints: Sequence[tuple[int, str]] = (), prune_anchors: Sequence[tuple[int, str]] = ()
    ) -> Verification:
        """Recompute the hash chain, holding it against signed (seq, hash) checkpoints."""
        ...

    def events_between(self, since: str | None, until: str | None) -> Iterator[LineageEvent]:
        """Lineage events in a time range, in chain order (for exports)."""
        ...

    def search_events(self, q: EventQuery) -> list[LineageEvent]:
        """Lineage events matching a query, in chain order (page with ``after_seq``)."""
        ...

    def access_summary(self, since: str | None, until: str | None) -> dict[str, dict[str, Any]]:
        """Per API key name: reads, refusals and ingested messages in a period, and when last used."""
        ...

    def children_of(self, message_id: str) -> list[MessageRow]:
        """Messages derived from or carried by this one (the messages of a batch)."""
        ...

    def lineage_head(self) -> tuple[int, str] | None:
        """The last committed event's (seq, hash)."""
        ...

    # -- inventory ledger (gateway.store.ledger) -------------------------------------------

    async def erase_subject(self, value: str, actor: str, expungers: Sequence[Expunger] = ()) -> Erasure:
        """Erase a data subject: what the store holds about them, their dead-lettered deliveries, what each
        expunger removes and ``SubjectErased`` are committed first, with a mark that their key is to go;
        then their key is destroyed (their encrypted bodies become unreadable; lineage still verifies)."""
        ...

    async def finish_erasures(self) -> int:
        """Destroy the keys of erasures committed but stopped before their key went; how many."""
        ...

    async def apply_stock(self, movements: Sequence[Movement], message_id: str, actor: str) -> list[str]:
        """Apply movements learnt after intake (Square's order lines) once by key; the SKUs moved."""
        ...

    async def adjust_stock(self, sku: str, location: str, on_hand: int, actor: str) -> StockLevel:
        """Set the counted quantity on hand at a location (a movement of the difference)."""
        ...

    async def record_push(self, channel: str, sku: str, available: int, version: int) -> None:
        """Note the level pushed to a channel (and its lineage event)."""
        ...

    async def forget_pushes(
        self, channel: str, skus: Sequence[str], actor: str, drift: Mapping[str, int]
    ) -> None:
        """Drop what a channel was last sent for ``skus`` so that the next sweep pushes again (drift fixed)."""
        ...

    def stock(self, sku: str) -> StockLevel: ...

    def stock_skus(self) -> list[str]: ...

    def stock_movements(self, sku: str, limit: int = 20) -> list[MovementRow]: ...

    def stock_pushes(self, channel: str | None = None) -> list[PushRow]: ...

    def stock_reports(self, channel: str) -> list[ReportRow]: ...

    def stock_items(self, channel: str) -> dict[str, str]: ...

    async def check(self) -> bool:
        """True when a write transaction can be committed now."""
        ...

    def close(self) -> None: ...
