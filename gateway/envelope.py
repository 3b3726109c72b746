"""The common envelope every adapter produces, and the receipt a listener hands to an adapter.

An envelope is frozen: the raw bytes are kept exactly as received, the parsed
body is only a view of them, and ``headers`` is the flat string map that
routing reads so that nothing downstream re-parses the payload.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

Sensitivity = Literal["phi", "pan", "pii", "none"]


_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Ids need uniqueness, not secrecy: a generator seeded once from the OS is ~30x cheaper than a
# getrandom() call per id on this kind of machine.
_random = random.Random(os.urandom(32))


_PAIRS = tuple(_CROCKFORD[i >> 5] + _CROCKFORD[i & 31] for i in range(1024))
_PAIR_SHIFTS = tuple(range(120, -1, -10))


def _ulid(value: int) -> str:
    """``value`` (below 2**130) as 26 Crockford base32 digits, two digits (10 bits) a step."""
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def new_id() -> str:
    """Mint a sortable, unique envelope id: a ULID (48-bit millisecond time + 80 random bits, Crockford base32)."""
    return _ulid((time.time_ns() // 1_000_000) << 80 | _random.getrandbits(80))


def id_floor(when: str | datetime) -> str:
    """The smallest id minted at or after ``when`` (an aware datetime or ISO 8601 text), for time-range queries."""
    moment = datetime.fromisoformat(when) if isinstance(when, str) else when
    return _ulid(max(0, int(moment.timestamp() * 1000)) << 80)  # ids begin in 1970: earlier is their start


def utc_moment(text: str) -> str:
    """An ISO 8601 date or date-time as UTC ISO text, the form the store keeps times in (a value
    naming no zone is UTC; a date alone is its midnight). Raises :class:`ValueError` for other text.

    Times are compared as text in the store, so every time a query is given goes through here:
    ``06:00+05:00`` and ``01:00Z`` are the same moment and must select the same rows."""
    parsed = datetime.fromisoformat(text.strip())
    try:
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).isoformat()
    except OverflowError:  # 0001-01-01T00:00+14:00 is before year 1 in UTC
        raise ValueError(f"out of range: {text!r}") from None


def utcnow() -> datetime:
    """Aware UTC now; the one clock every receipt and lineage event uses."""
    return datetime.now(UTC)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where and when bytes arrived: filled by the listener, read by the adapter and lineage."""

    listener: str
    """Listener name, for example ``mllp`` or ``http``."""
    peer: str = ""
    """Remote address as ``host:port``."""
    client: str = ""
    """Authenticated client (API key name) where there is one."""
    content_type: str | None = None
    received_at: datetime = field(default_factory=utcnow)
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Transport metadata an adapter reads, with lower-case names: a webhook's ``x-shopify-topic``,
    ``x-shopify-shop-domain`` … (only the headers the ingest channel names; never credentials)."""


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message, in the shape every part of the gateway shares (DESIGN.md §4)."""

    id: str
    received_at: datetime
    protocol: str
    version: str
    message_type: str
    control_id: str
    sender: str
    receiver: str
    raw: bytes = field(repr=False)
    raw_sha256: str
    body: Any = field(repr=False)
    headers: Mapping[str, str]
    business_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Values lineage searches find the message by; the store keeps only their keyed pseudonyms
    in lineage, and in the message row the ``masked_keys`` form where the adapter gives one."""
    masked_keys: Mapping[str, str] = field(default_factory=dict)
    """How a business key may be shown (an IBAN as ``DE89…3000``, a card as BIN + last four)."""
    sender_key: str = ""
    """The business key that tells senders apart when ``sender`` is only a marker standing for a person
    (an ISO 20022 private initiating party: ``private-party``): a resend is matched against the messages
    of that marker filed under the key's value, so that two people using one control id are not taken for
    one sender reusing it."""
    sensitivity: Sensitivity = "none"
    content_sha256: str = ""
    """What decides that a message was received before, when the same content may arrive in other bytes
    (a POSLog transaction alone, then inside a day file): a digest of its canonical form. Empty: the
    raw bytes decide (``raw_sha256``)."""
    correlation_id: str = ""
    parent_id: str | None = None
    receipt: Receipt | None = None
