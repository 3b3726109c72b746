"""The adapter contract: how a protocol codec plugs into the gateway.

An adapter turns raw bytes into an :class:`~gateway.envelope.Envelope`, lists
the problems it finds as :class:`Issue` values, and answers in the protocol's
own terms with a :class:`Reply`. It never knows which listener delivered the
bytes. A ``typing.Protocol`` is the whole contract; no base class is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from gateway.envelope import Envelope, Receipt

Severity = Literal["fatal", "error", "warning", "information"]
OutcomeKind = Literal["accepted", "invalid", "refused"]
ValidationLevel = Literal["none", "header", "structure"]


@dataclass(frozen=True, slots=True)
class Issue:
    """A problem found in a message, one shape for every protocol.

    ``code`` is a bounded snake_case vocabulary, ``location`` a protocol path
    (``PID-5.1``, FHIRPath, XPath, ``DE4``), and ``diagnostics`` a sentence
    that never contains a payload value.
    """

    severity: Severity
    code: str
    location: str = ""
    diagnostics: str = ""

    @property
    def is_error(self) -> bool:
        return self.severity in ("fatal", "error")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the gateway decided about one message, handed to ``Adapter.respond``.

    ``headers`` are the envelope headers, or for a message that could not be
    parsed whatever header fields were still readable (for the reply's
    addressing and control id).
    """

    kind: OutcomeKind
    headers: Mapping[str, str]
    issues: Sequence[Issue] = ()
    envelope_id: str | None = None
    envelope: Envelope | None = None
    """The parsed message, when there is one: a reply that must echo fields the headers do not
    carry (an ISO 20022 status report's per-transaction references, an ISO 8583 response's
    echoed data elements) reads them here, in memory."""


@dataclass(frozen=True, slots=True)
class Reply:
    """The protocol's acknowledgement: bytes for the wire plus how HTTP should carry them."""

    body: bytes
    content_type: str
    status: int
    code: str
    """The protocol's own outcome code: ``AA``, ``AE``, ``CA`` …"""
    wanted: bool = True
    """False when the sender asked for no reply to this outcome (HL7 MSH-15/MSH-16 ``NE``, ``ER`` on
    success, ``SU`` on error): a stream listener then sends nothing; HTTP, which answers every
    request, still carries it."""

    @property
    def accepted(self) -> bool:
        return 200 <= self.status < 300


def carried(replies: Sequence[Reply], *, must_answer: bool) -> list[bool]:
    """Per reply to one of a payload's messages, whether the payload's one reply carries it: not when its
    message declined it (``wanted`` false), unless every one was declined and the transport must answer
    (HTTP), which then answers with them all. :func:`joined` and an adapter's ``respond_batch`` choose
    what they carry with it, and :meth:`gateway.pipeline.IntakeResult.sent` records what went out."""
    wanted = [r.wanted for r in replies]
    return [True] * len(wanted) if must_answer and not any(wanted) else wanted


def joined(replies: Sequence[Reply]) -> Reply:
    """One reply for several: the bodies joined (JSON bodies as one array) with the least favourable
    status and code of them all. It carries what :func:`carried` chooses for a transport that must
    answer: a reply its message declined (``wanted`` false) is left out; when every one was declined, all
    are joined and the whole is not wanted (HTTP, which must answer, still sends it; a stream listener
    sends nothing). ``replies`` must not be empty."""
    if len(replies) == 1:
        return replies[0]
    worst = max(replies, key=lambda r: (not r.accepted, r.status))
    chosen = [r for r, out in zip(replies, carried(replies, must_answer=True), strict=True) if out]
    if worst.content_type == "application/json":
        body = b"[" + b",".join(r.body for r in chosen) + b"]"
    else:
        body = b"".join(r.body for r in chosen)
    return Reply(body, worst.content_type, worst.status, worst.code, any(r.wanted for r in replies))


class ParseError(Exception):
    """No envelope could be built from the bytes.

    ``headers`` holds whatever header fields were readable, so that the reply
    still names the sender's control id; ``issues`` explain why. ``stored`` is
    what the store keeps of the bytes when it must not keep them as received
    (an ISO 8583 message that may carry a card number keeps nothing).
    """

    def __init__(
        self,
        issues: Sequence[Issue],
        headers: Mapping[str, str] | None = None,
        stored: bytes | None = None,
    ) -> None:
        super().__init__(issues[0].diagnostics if issues else "unparseable message")
        self.issues = list(issues)
        self.headers: Mapping[str, str] = dict(headers or {})
        self.stored = stored


@dataclass(frozen=True, slots=True)
class Batch:
    """A payload that carries several messages (an HL7 FHS/BHS file, a multi-MSH file)."""

    kind: str
    raw: bytes
    units: list[bytes] = field(default_factory=list)
    issues: tuple[Issue, ...] = ()
    """Warnings about the batch as a whole (its counts, its trailers), for lineage and its reply."""


class Adapter(Protocol):
    """A protocol codec. Every method is pure; none of them does I/O."""

    name: str
    """Registry key and ``Envelope.protocol`` value, for example ``hl7v2``."""

    rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]]
    """Extra named rule sets a route may demand (``rules: [sepa]``); empty for most adapters."""

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """Cheap, non-validating guess whether ``raw`` is this protocol. Never raises."""
        ...

    def split(self, raw: bytes) -> Batch | None:
        """Return the messages of a batch payload, or ``None`` when ``raw`` is a single message."""
        ...

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        """Build an envelope, tolerantly; raise :class:`ParseError` only when none can be built."""
        ...

    def validate(self, envelope: Envelope) -> list[Issue]:
        """Return every issue found at this adapter's configured level; never raises for content."""
        ...

    def respond(self, outcome: Outcome) -> Reply:
        """Build the protocol's acknowledgement for ``outcome``."""
        ...

    def serialize(self, envelope: Envelope) -> bytes:
        """The bytes to forward downstream (for HL7 v2, the raw message as received)."""
        ...


# An adapter may also define ``respond_batch(batch: Batch, replies: list[Reply]) -> Reply``: the one reply
# to a batch payload (HL7 v2: an acknowledgement batch); without it a batch's replies are joined
# (:meth:`gateway.pipeline.IntakeResult.combined`). It carries the replies :func:`carried` chooses: for a
# transport that must answer when the batch reply is not wanted itself, else for one that need not.
#
# An adapter may also set ``routes_replies = True``: its replies are messages of its own kind (ISO 20022
# status reports), which intake parses, marks ``direction: reply`` and stores as the received message's
# child, routed when a route names ``direction`` (see :meth:`gateway.pipeline.Intake._reply_record`).
