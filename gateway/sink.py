"""The sink contract: how the delivery engine hands an envelope to a downstream system.

A sink does one attempt and reports how it went. It never sleeps and never
retries: the delivery engine owns retry, backoff, circuit breaking, rate
limits and dead letters. An attempt ends in one of three ways:

* ``send`` returns            — delivered;
* ``DeliveryRetryable``       — not delivered this time (time-out, 5xx, AR, network); try again later;
* ``DeliveryRejected``        — the downstream refused this message for good (4xx, AE); dead-letter it.

Error messages name the sink, the status or ACK code and the reason, never payload values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from gateway.envelope import Envelope

if TYPE_CHECKING:
    from gateway.store import Store


class DeliveryError(Exception):
    """Base of the two ways an attempt can fail; ``code`` is short and bounded (``http_503``, ``ack_AE``)."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class DeliveryRetryable(DeliveryError):
    """The attempt failed for a reason that may pass; ``retry_after_s`` is the downstream's own hint, if any."""

    def __init__(self, code: str, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(code, reason)
        self.retry_after_s = retry_after_s


class DeliveryRejected(DeliveryError):
    """The downstream refused the message; sending it again unchanged will not help."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt to hand ``envelope`` (with ``body`` already transformed, if the route says so) to a sink.

    ``delivery_id`` is stable across retries and restarts (the envelope id plus the sink name), so a
    downstream can deduplicate re-deliveries; sinks pass it on where the protocol allows
    (HTTP ``Idempotency-Key``).
    """

    delivery_id: str
    envelope: Envelope
    body: bytes
    content_type: str
    attempt: int


class Sink(Protocol):
    """A downstream destination."""

    name: str

    async def open(self) -> None:
        """Prepare connections or folders; called once before the first ``send``."""
        ...

    async def send(self, delivery: Delivery) -> None:
        """Make one attempt; return when delivered, else raise DeliveryRetryable or DeliveryRejected."""
        ...

    async def check(self) -> bool:
        """Cheap health probe for ``/healthz`` (can the sink be reached?)."""
        ...

    async def close(self) -> None:
        """Release connections; pending work is the engine's business."""
        ...


@dataclass(frozen=True, slots=True)
class Relayed:
    """A downstream's answer to a message relayed in line: its bytes and its own outcome code (DE39)."""

    body: bytes
    code: str


@runtime_checkable
class OnlineSink(Protocol):
    """A sink that answers in line: the sender's reply waits for the downstream's (an ISO 8583
    authorisation relayed to the issuer and its response relayed back).

    Routes to an online sink write no outbox row: the bytes are handed over in memory, because the
    store keeps only what it may (a card message is stored redacted), and an authorisation answered
    late is worthless. ``relay`` raises :class:`DeliveryRetryable` when no answer comes in time or the
    downstream cannot be reached, and :class:`DeliveryRejected` when it cannot take the message.
    """

    name: str

    async def relay(self, raw: bytes) -> Relayed: ...


@runtime_checkable
class StoreClient(Protocol):
    """A sink that writes into the gateway's own store (the FHIR store): the runtime hands it the store."""

    store: Store | None
