"""Exceptions the gateway raises, in one tree.

    GatewayError
    ├── ConfigError          a configuration key has a value the gateway cannot use
    ├── StoreError           the store could not do what was asked
    │   └── StoreUnavailable the store cannot commit now (disk full, I/O error, closed)
    └── AuthError            a request has no valid credential or lacks a scope

Problems *in a message* are not exceptions: adapters return them as
:class:`gateway.adapter.Issue` values, and a message that cannot be parsed at
all raises :class:`gateway.adapter.ParseError`.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class of every error the gateway raises on purpose."""


class ConfigError(GatewayError):
    """A configuration value is unusable; the message names the key, the value and what was expected."""


class StoreError(GatewayError):
    """The store failed to do what was asked."""


class StoreUnavailable(StoreError):
    """The store cannot commit now; intake must answer AE/AR or 503, never a positive acknowledgement."""


class AuthError(GatewayError):
    """A request lacks a valid credential (401) or the scope it needs (403)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
