"""Webhook signatures: how ``/ingest/shopify`` and ``/ingest/square`` know a delivery is genuine.

Webhook platforms cannot send our API keys; they sign each delivery with a
shared secret instead. A :class:`Signature` checks one scheme before any byte of
the body reaches an adapter or the store: a missing, malformed or wrong
signature is answered 401 and nothing of the request is kept. Comparison is in
constant time (:func:`hmac.compare_digest`). With no secret configured the
channel refuses every delivery, so a forgotten secret never opens the door.

- Shopify: ``X-Shopify-Hmac-Sha256`` = base64(HMAC-SHA256(app secret, raw body)).
- Square: ``x-square-hmacsha256-signature`` = base64(HMAC-SHA256(signature key,
  notification URL + raw body)); the URL is the one registered with Square,
  from the configuration, never from the request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gateway.errors import AuthError
from gateway.lineage import EventDraft


@dataclass(frozen=True, slots=True)
class Signature:
    """One HMAC-SHA256 signature scheme: the header that carries it, the secret, what is signed."""

    header: str
    """Lower-case request header carrying the base64 signature."""
    secret: str | None = field(repr=False)
    signed_prefix: bytes = field(default=b"", repr=False)
    """Bytes signed before the body (Square's notification URL)."""
    allowed: tuple[tuple[str, frozenset[str]], ...] = ()
    """Unsigned request headers that must hold one of the given values (Shopify's shop domain: its
    signature covers the body only, so a captured delivery could be replayed under another shop)."""

    def sign(self, body: bytes) -> str:
        """The base64 signature of ``body`` under this scheme (for senders and tests)."""
        if not self.secret:
            raise AuthError(401, "No webhook secret is configured for this channel.")
        digest = hmac.new(self.secret.encode(), self.signed_prefix + body, hashlib.sha256).digest()
        return base64.b64encode(digest).decode()

    def verify(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Return when the request's signature matches; raise :class:`AuthError` (401) otherwise."""
        if not self.secret:
            raise AuthError(401, "This webhook channel has no secret configured; every delivery is refused.")
        given = headers.get(self.header, "").strip()
        if not given:
            raise AuthError(401, f"The {self.header} header is missing.")
        try:
            received = base64.b64decode(given, validate=True)
        except (binascii.Error, ValueError):
            raise AuthError(401, f"The {self.header} header is not base64.") from None
        expected = hmac.new(self.secret.encode(), self.signed_prefix + body, hashlib.sha256).digest()
        if not hmac.compare_digest(received, expected):
            raise AuthError(401, "The webhook signature does not match the body.")
        for name, values in self.allowed:
            if headers.get(name, "").strip().lower() not in values:
                raise AuthError(401, f"The {name} header names no source this gateway takes.")


class Refusals:
    """Lineage for refused deliveries, without letting strangers grow it: webhook endpoints face the
    internet, so per channel at most one ``AccessDenied`` event is written per ``window_s``, counting the
    refusals since the last one (the log and the metrics see every refusal)."""

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def note(self, channel: str, peer: str, now: float) -> EventDraft | None:
        self._since[channel] = self._since.get(channel, 0) + 1
        if now - self._last.get(channel, float("-inf")) < self.window_s:
            return None
        self._last[channel] = now
        count = self._since.pop(channel)
        return EventDraft(
            "AccessDenied",
            None,
            f"webhook:{channel}",
            outcome="bad_signature",
            details={"peer": peer, "refused": count, "window_s": self.window_s},
        )


def shopify_signature(secret: str | None, shops: Sequence[str] = ()) -> Signature:
    """Shopify's scheme; with ``shops``, only deliveries naming one of them in X-Shopify-Shop-Domain pass."""
    allowed = (("x-shopify-shop-domain", frozenset(s.strip().lower() for s in shops)),) if shops else ()
    return Signature("x-shopify-hmac-sha256", secret, allowed=allowed)


def square_signature(signature_key: str | None, notification_url: str | None) -> Signature:
    """Square signs the notification URL and the body; without the URL no delivery can be checked."""
    return Signature(
        "x-square-hmacsha256-signature",
        signature_key if notification_url else None,
        (notification_url or "").encode(),
    )
