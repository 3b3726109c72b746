"""The routing table: compiled once from ``settings.routes``, matched for every envelope inside intake.

A route matches an envelope when every key of its ``match`` holds against the
envelope's routing headers (:func:`routing_headers`: the adapter's promoted
``headers`` plus ``protocol``). Routes are tried in order; the first match
wins and its ``to`` list fans out. An envelope no route takes follows the
table's ``unmatched`` policy: ``reject``, or one named sink.

Match values (one per header key)::

    exact     message_type: "ADT^A01"          the header equals the text
    glob      message_type: "ADT^A*"           fnmatch: * ? [...] ([!...] negates), case-sensitive;
                                               every other character is literal, ``^`` included
    list      message_code: [ORM, "OM?"]       any alternative (each exact or glob)
    number    amount: 100                      numerically equal (Decimal): "100.00" matches
    compare   amount: {gt: "1000.50", le: 5000}  every comparison holds (gt ge lt le eq ne, Decimal)

Decisions worth knowing:

* A **missing header never matches**, whatever the condition, ``ne`` included;
  so does a header that is not a number under a comparison or a bare number
  (``ne`` included: "not a number" is not "not equal"). An empty header is a
  value: ``"*"`` matches it, use ``"?*"`` for "present and not empty".
* A bare YAML number is a numeric comparison, not text: quote values such as
  ``"007"`` or ``"2.50"`` to compare them as text.
* ``protocol`` comes from the envelope, never from message content, and wins
  over an adapter header of the same name.

Globs are compiled to regular expressions once, lists of exact values to sets,
so matching one envelope costs a few microseconds.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import TypeAlias

from gateway.config import MatchValue, RouteConfig, Settings
from gateway.envelope import Envelope
from gateway.errors import ConfigError
from gateway.transforms import transforms

RULE_SETS: dict[str, str] = {"sepa": "iso20022"}
"""Rule sets a route may demand (``rules: [sepa]``), by name, with the protocol whose adapter checks them."""

__all__ = [
    "COMPARISONS",
    "ENVELOPE_KEYS",
    "REJECT",
    "RULE_SETS",
    "UNMATCHED_ROUTE",
    "Compare",
    "Condition",
    "Equals",
    "Glob",
    "OneOf",
    "Problem",
    "RouteDecision",
    "RouteView",
    "RoutingTable",
    "describe_match",
    "parse_match",
    "routing_headers",
    "routing_problems",
    "to_decimal",
]

REJECT = "reject"
"""The ``unmatched`` value that refuses unmatched envelopes (the protocol's negative acknowledgement)."""
UNMATCHED_ROUTE = "(unmatched)"
"""``RouteDecision.route`` of an envelope that took the unmatched sink."""
ENVELOPE_KEYS: frozenset[str] = frozenset({"protocol"})
"""Routing keys taken from the envelope itself rather than from the adapter's headers."""

COMPARISONS: dict[str, Callable[[Decimal, Decimal], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
    "eq": operator.eq,
    "ne": operator.ne,
}
_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "eq": "==", "ne": "!="}
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_GLOB_CHARS = frozenset("*?[")

Predicate: TypeAlias = Callable[[str], bool]


def to_decimal(text: str) -> Decimal | None:
    """``text`` as a finite Decimal (surrounding blanks allowed), or ``None`` when it is not a plain number."""
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # an exponent beyond what Decimal can hold
        return None


# -- conditions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Equals:
    """The header equals ``value`` exactly."""

    value: str

    def predicate(self) -> Predicate:
        return self.value.__eq__

    def summary(self, key: str) -> str:
        return f"{key} = {self.value}"


@dataclass(frozen=True, slots=True)
class Glob:
    """The header matches the fnmatch ``pattern`` (case-sensitive)."""

    pattern: str

    @property
    def regex(self) -> str:
        return fnmatch.translate(self.pattern)

    @property
    def literal_prefix(self) -> str:
        """The text before the first wildcard: every matching value starts with it."""
        for i, c in enumerate(self.pattern):
            if c in _GLOB_CHARS:
                return self.pattern[:i]
        return self.pattern

    @property
    def matches_everything(self) -> bool:
        return bool(self.pattern) and set(self.pattern) == {"*"}

    def predicate(self) -> Predicate:
        match = re.compile(self.regex).match
        return lambda value: match(value) is not None

    def summary(self, key: str) -> str:
        return f"{key} = {self.pattern}"


@dataclass(frozen=True, slots=True)
class OneOf:
    """The header satisfies any of ``options``."""

    options: tuple[Equals | Glob, ...]

    def predicate(self) -> Predicate:
        if all(isinstance(o, Equals) for o in self.options):
            return frozenset(o.value for o in self.options if isinstance(o, Equals)).__contains__
        parts = [o.regex if isinstance(o, Glob) else re.escape(o.value) + r"\Z" for o in self.options]
        match = re.compile("|".join(parts)).match
        return lambda value: match(value) is not None

    def summary(self, key: str) -> str:
        shown = ", ".join(o.value if isinstance(o, Equals) else o.pattern for o in self.options)
        return f"{key} in ({shown})"


@dataclass(frozen=True, slots=True)
class Compare:
    """The header is a number and every ``(operator, bound)`` comparison holds."""

    tests: tuple[tuple[str, Decimal], ...]

    def predicate(self) -> Predicate:
        tests = tuple((COMPARISONS[op], bound) for op, bound in self.tests)

        def holds(value: str) -> bool:
            number = to_decimal(value)
            if number is None:
                return False
            return all(compare(number, bound) for compare, bound in tests)

        return holds

    def summary(self, key: str) -> str:
        return " and ".join(f"{key} {_SYMBOLS[op]} {bound}" for op, bound in self.tests)


Condition: TypeAlias = Equals | Glob | OneOf | Compare


@dataclass(frozen=True, slots=True)
class Problem:
    """One configuration error: the key (``routes[0].to[1]``) and what is wrong with its value."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def _text_condition(text: str) -> Equals | Glob:
    return Glob(text) if any(c in _GLOB_CHARS for c in text) else Equals(text)


def _bound(value: object, where: str, problems: list[Problem]) -> Decimal | None:
    if isinstance(value, bool):
        problems.append(Problem(where, f"{value!r} is not a number; expected a number such as 1000.50"))
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            problems.append(Problem(where, f"{value!r} is not a finite number"))
            return None
        return Decimal(repr(value))
    if isinstance(value, str) and (number := to_decimal(value)) is not None:
        return number
    problems.append(Problem(where, f"{value!r} is not a number; expected a number such as 1000.50"))
    return None


def _condition(value: MatchValue, where: str, problems: list[Problem]) -> Condition | None:
    if isinstance(value, str):
        return _text_condition(value)
    if isinstance(value, bool | int | float):
        bound = _bound(value, where, problems)
        return None if bound is None else Compare((("eq", bound),))
    if isinstance(value, list):
        if not value:
            problems.append(Problem(where, "[] is an empty list; expected at least one alternative"))
            return None
        return OneOf(tuple(_text_condition(v) for v in value))
    if not value:
        problems.append(
            Problem(where, f"{{}} has no comparison; expected one or more of {', '.join(COMPARISONS)}")
        )
        return None
    tests: list[tuple[str, Decimal]] = []
    for op, raw in value.items():
        if op not in COMPARISONS:
            problems.append(
                Problem(f"{where}.{op}", f"unknown comparison; expected one of {', '.join(COMPARISONS)}")
            )
            continue
        bound = _bound(raw, f"{where}.{op}", problems)
        if bound is not None:
            tests.append((op, bound))
    return Compare(tuple(tests)) if len(tests) == len(value) else None


def parse_match(
    match: Mapping[str, MatchValue], where: str
) -> tuple[tuple[tuple[str, Condition], ...], list[Problem]]:
    """Turn a route's ``match`` mapping into ``(header, condition)`` pairs, plus the problems found."""
    problems: list[Problem] = []
    conditions: list[tuple[str, Condition]] = []
    for key, value in match.items():
        if not key.strip():
            problems.append(Problem(where, f"{key!r} is not a header name"))
            continue
        condition = _condition(value, f"{where}.{key}", problems)
        if condition is not None:
            conditions.append((key, condition))
    return tuple(conditions), problems


def describe_match(conditions: Sequence[tuple[str, Condition]]) -> list[str]:
    """One readable line per condition (``message_type = ADT^A*``); ``["(everything)"]`` for an empty match."""
    return [condition.summary(key) for key, condition in conditions] or ["(everything)"]


# -- checking the whole table --------------------------------------------------------------------


def _known(names: Sequence[str]) -> str:
    return ", ".join(sorted(names)) or "(none)"


def routing_problems(settings: Settings) -> list[Problem]:
    """Every error in the routing part of ``settings``, in config order; empty when the table compiles."""
    problems: list[Problem] = []
    sinks = list(settings.sinks)
    if REJECT in settings.sinks:
        problems.append(
            Problem(f"sinks.{REJECT}", f"{REJECT!r} is reserved for the unmatched policy; rename the sink")
        )
    seen: dict[str, int] = {}
    for i, route in enumerate(settings.routes):
        where = f"routes[{i}]"
        if route.name == UNMATCHED_ROUTE:
            problems.append(Problem(f"{where}.name", f"{route.name!r} is reserved for unmatched envelopes"))
        elif route.name in seen:
            problems.append(
                Problem(f"{where}.name", f"{route.name!r} is already the name of routes[{seen[route.name]}]")
            )
        else:
            seen[route.name] = i
        problems.extend(parse_match(route.match, f"{where}.match")[1])
        listed: set[str] = set()
        for j, sink in enumerate(route.to):
            if sink not in settings.sinks:
                problems.append(
                    Problem(f"{where}.to[{j}]", f"{sink!r} is not a sink; known sinks: {_known(sinks)}")
                )
            elif sink in listed:
                problems.append(Problem(f"{where}.to[{j}]", f"{sink!r} is listed twice"))
            listed.add(sink)
        if route.transform is not None and route.transform not in transforms():
            problems.append(
                Problem(
                    f"{where}.transform",
                    f"{route.transform!r} is not a transform; known transforms: {_known(list(transforms()))}",
                )
            )
        for j, name in enumerate(route.rules):
            if name not in RULE_SETS:
                problems.append(
                    Problem(
                        f"{where}.rules[{j}]",
                        f"{name!r} is not a rule set; known rule sets: {_known(list(RULE_SETS))}",
                    )
                )
        if route.order_by is not None and not route.order_by.strip():
            problems.append(
                Problem(
                    f"{where}.order_by",
                    f"{route.order_by!r} is not a header name; expected a header such as patient_id, "
                    "or leave order_by out",
                )
            )
    unmatched = settings.unmatched
    if unmatched is None:
        if settings.routes:
            problems.append(
                Problem("unmatched", f"required when routes are given: {REJECT!r} or a sink name")
            )
    elif unmatched != REJECT and unmatched not in settings.sinks:
        problems.append(
            Problem(
                "unmatched",
                f"{unmatched!r} is neither {REJECT!r} nor a sink; known sinks: {_known(sinks)}",
            )
        )
    return problems


# -- the compiled table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RouteDecision:
    """Where one envelope goes: the route taken, its sinks, transform and ordering key."""

    route: str
    """Route name, or ``(unmatched)`` for the unmatched sink."""
    sinks: tuple[str, ...]
    transform: str | None
    order_key: str | None
    """The value of the route's ``order_by`` header; ``None`` without order_by or when the header is empty."""
    rules: tuple[str, ...] = ()
    """Extra rule sets (for example ``sepa``) the envelope must pass to take this route."""
    storage: str = "full"
    """How the store keeps the body: ``full``, ``metadata`` or ``encrypted`` (the route's ``storage``)."""
    subject: str | None = None
    """``encrypted``: the header that names the data subject."""


@dataclass(frozen=True, slots=True)
class RouteView:
    """One route as the docs and ``gateway check`` show it (1-based ``order``)."""

    order: int
    name: str
    conditions: tuple[tuple[str, Condition], ...]
    sinks: tuple[str, ...]
    transform: str | None
    order_by: str | None
    description: str
    rules: tuple[str, ...] = ()
    storage: str = "full"
    subject: str | None = None

    @property
    def match_lines(self) -> list[str]:
        return describe_match(self.conditions)


REPLY_KEY = "direction"
"""The header the gateway's own replies carry (``direction: reply``); only a route that names it takes them."""


@dataclass(frozen=True, slots=True)
class _Compiled:
    checks: tuple[tuple[str, Predicate], ...]
    order_by: str | None
    decision: RouteDecision
    replies: bool
    """The route names ``direction``: it may take the gateway's own replies (status reports)."""


def routing_headers(envelope: Envelope) -> Mapping[str, str]:
    """The map routing reads: the adapter's headers plus the envelope keys (``protocol``)."""
    return {**envelope.headers, "protocol": envelope.protocol}


class RoutingTable:
    """The routes of one configuration, compiled for matching.

    ``enabled`` is false when the configuration has no routes: the gateway then
    stores envelopes without routing them. ``unmatched`` is ``reject``, a sink
    name, or ``None`` (only possible without routes).
    """

    __slots__ = ("_routes", "_unmatched_decision", "enabled", "takes_replies", "unmatched", "views")

    def __init__(self, routes: Sequence[RouteView], unmatched: str | None) -> None:
        self.views: tuple[RouteView, ...] = tuple(routes)
        self.enabled = bool(self.views)
        self.unmatched = unmatched
        self._routes = tuple(
            _Compiled(
                checks=tuple((key, condition.predicate()) for key, condition in view.conditions),
                order_by=view.order_by,
                decision=RouteDecision(
                    view.name, view.sinks, view.transform, None, view.rules, view.storage, view.subject
                ),
                replies=any(key == REPLY_KEY for key, _ in view.conditions),
            )
            for view in self.views
        )
        self.takes_replies = any(c.replies for c in self._routes)
        """Some route names ``direction``: the gateway's own replies may be routed."""
        self._unmatched_decision = (
            None
            if unmatched in (None, REJECT)
            else RouteDecision(UNMATCHED_ROUTE, (str(unmatched),), None, None)
        )

    def __repr__(self) -> str:
        return f"RoutingTable(routes={[v.name for v in self.views]!r}, unmatched={self.unmatched!r})"

    @classmethod
    def from_settings(cls, settings: Settings) -> RoutingTable:
        """Compile ``settings.routes``; raise :class:`ConfigError` listing every problem found."""
        problems = routing_problems(settings)
        if problems:
            raise ConfigError("invalid routing table:\n  " + "\n  ".join(str(p) for p in problems))
        return cls([_view(i, route) for i, route in enumerate(settings.routes)], settings.unmatched)

    def route(self, headers: Mapping[str, str]) -> RouteDecision | None:
        """The first route whose every condition holds for ``headers``, or ``None`` (unmatched).

        A reply the gateway made (headers with ``direction``) is taken only by a route that names
        ``direction`` in its match, so that a catch-all route never sends status reports back in.
        """
        reply = REPLY_KEY in headers
        for compiled in self._routes:
            if reply and not compiled.replies:
                continue
            for key, holds in compiled.checks:
                value = headers.get(key)
                if value is None or not holds(value):
                    break
            else:
                if compiled.order_by is None:
                    return compiled.decision
                decision = compiled.decision
                return replace(decision, order_key=headers.get(compiled.order_by) or None)
        return None

    def route_envelope(self, envelope: Envelope) -> RouteDecision | None:
        """:meth:`route` over :func:`routing_headers` of ``envelope``."""
        return self.route(routing_headers(envelope))

    def unmatched_decision(self) -> RouteDecision | None:
        """The decision for an unmatched envelope: the unmatched sink, or ``None`` to reject it."""
        return self._unmatched_decision

    def describe(self) -> tuple[RouteView, ...]:
        """The routes in order, for docs and reports."""
        return self.views


def _view(index: int, route: RouteConfig) -> RouteView:
    conditions, problems = parse_match(route.match, f"routes[{index}].match")
    assert not problems  # from_settings checked them
    return RouteView(
        order=index + 1,
        name=route.name,
        conditions=conditions,
        sinks=tuple(route.to),
        transform=route.transform,
        order_by=route.order_by,
        description=route.description,
        rules=tuple(route.rules),
        storage=route.storage,
        subject=route.subject,
    )
