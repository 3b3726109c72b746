"""The builder registry: message type (``ADT^A01``) → the function that converts its body.

A *builder* is ``Callable[[Context], None]``. It reads ``ctx.message`` and adds
resources with ``ctx.add``; it sets ``ctx.patient`` / ``ctx.encounter`` (the
:func:`~adapters.hl7.to_fhir.patient.patient` and
:func:`~adapters.hl7.to_fhir.encounter.encounter` mappers do) and appends to
``ctx.focus`` what the MessageHeader is about. The framework
(:func:`adapters.hl7.to_fhir.convert`) adds the MessageHeader before it and
the Provenance after it; a builder never makes those.

To add a message family: write a module beside ``adt.py`` with its builders,
call :func:`register` with its message types, and import that module in the
package ``__init__`` so that the registration happens at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from adapters.hl7.to_fhir.context import Context

__all__ = ["Builder", "builder_for", "register", "supported"]

Builder = Callable[[Context], None]

_BUILDERS: dict[str, Builder] = {}


def register(message_types: Iterable[str], builder: Builder) -> None:
    """Convert each of ``message_types`` (``ADT^A01`` style, trigger level) with ``builder``.

    A later registration of the same type replaces the earlier one.
    """
    for message_type in message_types:
        code, sep, trigger = message_type.strip().upper().partition("^")
        if not sep or len(code) != 3 or not trigger:
            raise ValueError(f"not a message type of the form ADT^A01: {message_type!r}")
        _BUILDERS[f"{code}^{trigger}"] = builder


def builder_for(message_type: str) -> Builder | None:
    return _BUILDERS.get(message_type)


def supported() -> frozenset[str]:
    """Every message type with a builder."""
    return frozenset(_BUILDERS)
