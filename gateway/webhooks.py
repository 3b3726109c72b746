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
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.errors import AuthError


@dataclass(frozen=True, slots=True)
class Signature:
    """One HMAC-SHA256 signature scheme: the header that carries it, the secret, what is signed."""

    header: str
    """Lower-case request header carrying the base64 signature."""
    secret: str | None = field(repr=False)
    signed_prefix: bytes = field(default=b"", repr=False)
    """Bytes signed before the body (Square's notification URL)."""

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


def shopify_signature(secret: str | None) -> Signature:
    return Signature("x-shopify-hmac-sha256", secret)


def square_signature(signature_key: str | None, notification_url: str | None) -> Signature:
    """Square signs the notification URL and the body; without the URL no delivery can be checked."""
    return Signature(
        "x-square-hmacsha256-signature",
        signature_key if notification_url else None,
        (notification_url or "").encode(),
    )
