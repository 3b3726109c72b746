"""API keys and scopes for the HTTP endpoints.

Keys come from the config (``auth.api_keys``). Only their SHA-256 digests are
kept in memory after start, and a presented key is compared in constant time.
With no key configured and ``auth.open`` false, ``gateway serve`` creates one
bootstrap key with every scope in ``DATA_DIR/api-key`` (mode 0600) so that the
quickstart works without writing a config first.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.config import ALL_SCOPES, Settings
from gateway.errors import AuthError

BOOTSTRAP_KEY_FILE = "api-key"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request, and what they may do."""

    name: str
    scopes: frozenset[str]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """The accepted API keys, by digest."""

    def __init__(self, keys: list[tuple[str, str, frozenset[str]]], *, open_access: bool = False) -> None:
        self._keys = [(_digest(secret), Principal(name, scopes)) for name, secret, scopes in keys]
        self.open_access = open_access

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyRing:
        keys: list[tuple[str, str, frozenset[str]]] = [
            (k.name, k.key, frozenset(str(s) for s in k.scopes)) for k in settings.auth.api_keys
        ]
        if not keys and not settings.auth.open:
            keys.append(("bootstrap", ensure_bootstrap_key(settings.data_dir), frozenset(ALL_SCOPES)))
        return cls(keys, open_access=settings.auth.open)

    def from_headers(self, headers: Mapping[str, str]) -> Principal:
        """Who presents the key in ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``; 401 otherwise."""
        auth = headers.get("authorization", "")
        return self.authenticate(
            auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key")
        )

    def authenticate(self, presented: str | None) -> Principal:
        if self.open_access:
            return Principal("anonymous", frozenset(ALL_SCOPES))
        if not presented:
            raise AuthError(401, "an API key is required (Authorization: Bearer KEY or X-API-Key: KEY)")
        digest = _digest(presented)
        found: Principal | None = None
        for known, principal in self._keys:
            if hmac.compare_digest(known, digest):
                found = principal
        if found is None:
            raise AuthError(401, "the API key is not valid")
        return found

    @staticmethod
    def require(principal: Principal, scope: str) -> None:
        if scope not in principal.scopes and "admin" not in principal.scopes:
            raise AuthError(403, f"the API key lacks the scope {scope}")


def ensure_bootstrap_key(data_dir: Path) -> str:
    """Return the bootstrap key of this data directory, creating it (mode 0600) on first use."""
    path = data_dir / BOOTSTRAP_KEY_FILE
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = "gw_" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key + "\n")
    return key


def read_bootstrap_key(data_dir: Path) -> str | None:
    path = data_dir / BOOTSTRAP_KEY_FILE
    try:
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return None


def pseudonym_key(data_dir: Path) -> bytes:
    """The installation's secret for lineage pseudonyms, created on first use (mode 0600)."""
    path = data_dir / "pseudonym.key"
    try:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        pass
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.hex() + "\n")
    return key
