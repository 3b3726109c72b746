"""Reading a JSON request body the one way every retail adapter does.

Money never passes through a binary float (``parse_float=Decimal``); ``NaN``
and ``Infinity`` are refused (they are not JSON); and an object that names the
same member twice is refused, because parsers disagree on which value wins:
routing would read one store or amount while a downstream system reads the
other. Problems become a :class:`gateway.adapter.ParseError` with
``malformed_json`` or ``not_an_object`` and a sentence that quotes nothing of
the body.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.adapter import Issue, ParseError

Json = dict[str, Any]


class _Duplicate(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise ValueError("not JSON")


def _unique(pairs: list[tuple[str, Any]]) -> Json:
    out: Json = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate
        out[key] = value
    return out


def load_object(raw: bytes, headers: Mapping[str, str] | None = None, what: str = "a JSON object") -> Json:
    """The body as a JSON object; ``headers`` are what the reply may still name when it is not one."""
    readable = dict(headers or {})
    try:
        value = json.loads(raw, parse_float=Decimal, parse_constant=_no_constant, object_pairs_hook=_unique)
    except _Duplicate:
        raise ParseError(
            [Issue("fatal", "malformed_json", "", "An object in the body names the same member twice.")],
            readable,
        ) from None
    except json.JSONDecodeError as exc:
        raise ParseError(
            [
                Issue(
                    "fatal",
                    "malformed_json",
                    "",
                    f"The body is not well-formed JSON (line {exc.lineno}, column {exc.colno}).",
                )
            ],
            readable,
        ) from None
    except (ValueError, RecursionError, InvalidOperation):
        # not UTF-8/16/32, NaN or Infinity, too deep, an int too long, or an exponent past what
        # Decimal holds (1e99999999999999999999: InvalidOperation, an ArithmeticError)
        raise ParseError(
            [Issue("fatal", "malformed_json", "", "The body is not well-formed JSON in UTF-8.")], readable
        ) from None
    if not isinstance(value, dict):
        raise ParseError([Issue("fatal", "not_an_object", "", f"The body must be {what}.")], readable)
    return value


def text(value: object) -> str:
    """A string value stripped, or ``""`` for anything else."""
    return value.strip() if isinstance(value, str) else ""


def integer(value: object) -> int | None:
    """A JSON integer (never a boolean), or ``None``."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def obj(value: object) -> Json:
    return value if isinstance(value, dict) else {}


def objects(value: object) -> list[Json]:
    """The objects of a JSON array (anything else in it, or a non-array, gives none)."""
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
