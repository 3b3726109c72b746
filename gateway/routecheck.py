"""``gateway check``: lint a configuration's routing table and run its route tests, with no side effects.

:func:`lint` returns :class:`Finding` values. Errors are what
:meth:`RoutingTable.from_settings <gateway.routing.RoutingTable.from_settings>`
refuses, plus sink endpoints that can never be reached (empty host, port out
of range) and an ``alerts.sink`` that is not an http sink. Warnings:

* a route shadowed by an earlier one (it can never match); see :func:`covers`
  for what is decided: only cases that are certain are reported;
* a sink that no route, ``unmatched`` or ``alerts`` uses;
* credentials written into an endpoint URL;
* a ``match`` key or ``order_by`` header that no adapter promotes (for the
  route's protocols), which would never match or never order;
* ``unmatched`` set on a table without routes (it has no effect).

A **route test file** maps fixtures to the route they must take::

    - {fixture: ../hl7/adt_a01__basic.hl7, route: adt-to-ehr, sinks: [ehr, archive]}
    - {fixture: ../hl7/mdm_t02__document.hl7, route: null, sinks: []}   # unmatched, rejected

``fixture`` is relative to the test file. ``route: null`` means unmatched;
``sinks`` is then ``[]`` for ``reject`` or ``[<unmatched sink>]``. Each
fixture is detected, split (batches: every message must take the route) and
parsed by the registered adapters exactly as intake would, then routed.
Reports name fixtures, routes, sinks and issue codes, never message contents.
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters import BUILTIN_ADAPTERS
from gateway.adapter import ParseError
from gateway.config import (
    HTTPSinkConfig,
    ISO8583SinkConfig,
    MemorySinkConfig,
    MLLPSinkConfig,
    Settings,
    yaml_problem,
)
from gateway.envelope import Receipt
from gateway.errors import ConfigError
from gateway.routing import (
    ENVELOPE_KEYS,
    REPLY_KEY,
    Compare,
    Condition,
    Equals,
    Glob,
    OneOf,
    RoutingTable,
    parse_match,
    routing_problems,
)

__all__ = [
    "Finding",
    "RouteOutcome",
    "RouteTestResult",
    "check_report",
    "covers",
    "lint",
    "load_route_tests",
    "promoted_headers",
    "route_protocols",
    "run_route_tests",
]

Severity = Literal["error", "warning"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing ``gateway check`` reports: its severity, the config key, and a sentence."""

    severity: Severity
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.key}: {self.message}"


# -- which headers adapters promote --------------------------------------------------------------


def promoted_headers() -> dict[str, frozenset[str] | None]:
    """Routing keys per registered protocol: the adapter's ``HEADER_KEYS`` plus the envelope keys.

    An adapter declares its headers as ``HEADER_KEYS`` on its class or in its
    module; ``None`` for an adapter that declares none (nothing is then checked).
    """
    out: dict[str, frozenset[str] | None] = {}
    for name, constructor in BUILTIN_ADAPTERS.items():
        keys = getattr(constructor, "HEADER_KEYS", None)
        if keys is None:
            module = sys.modules.get(getattr(constructor, "__module__", ""))
            keys = getattr(module, "HEADER_KEYS", None)
        if keys is not None and getattr(constructor, "routes_replies", False):
            keys = frozenset(keys) | {REPLY_KEY}
        out[name] = None if keys is None else frozenset(keys) | ENVELOPE_KEYS
    return out


# -- shadowed routes -----------------------------------------------------------------------------


def _interval(c: Compare) -> tuple[Decimal | None, bool, Decimal | None, bool, frozenset[Decimal]]:
    """``(low, low_inclusive, high, high_inclusive, excluded)`` of a conjunction of comparisons."""
    low: Decimal | None = None
    high: Decimal | None = None
    low_in = high_in = True
    excluded: set[Decimal] = set()
    for op, v in c.tests:
        if op in ("gt", "ge", "eq") and (low is None or v > low or (v == low and op == "gt")):
            low, low_in = v, op != "gt"
        if op in ("lt", "le", "eq") and (high is None or v < high or (v == high and op == "lt")):
            high, high_in = v, op != "lt"
        if op == "ne":
            excluded.add(v)
    return low, low_in, high, high_in, frozenset(excluded)


def _inside(x: Decimal, low: Decimal | None, low_in: bool, high: Decimal | None, high_in: bool) -> bool:
    above = low is None or x > low or (low_in and x == low)
    below = high is None or x < high or (high_in and x == high)
    return above and below


def _compare_covers(earlier: Compare, later: Compare) -> bool:
    lo1, lo1_in, hi1, hi1_in, ex1 = _interval(earlier)
    lo2, lo2_in, hi2, hi2_in, ex2 = _interval(later)
    if lo2 is not None and hi2 is not None and (lo2 > hi2 or (lo2 == hi2 and not (lo2_in and hi2_in))):
        return False  # the later route matches nothing at all: not a shadowing question
    low_ok = lo1 is None or (lo2 is not None and (lo2 > lo1 or (lo2 == lo1 and (lo1_in or not lo2_in))))
    high_ok = hi1 is None or (hi2 is not None and (hi2 < hi1 or (hi2 == hi1 and (hi1_in or not hi2_in))))
    return low_ok and high_ok and all(x in ex2 or not _inside(x, lo2, lo2_in, hi2, hi2_in) for x in ex1)


def _scalar_covers(earlier: Equals | Glob, later: Equals | Glob) -> bool:
    if isinstance(earlier, Equals):
        return isinstance(later, Equals) and later.value == earlier.value
    if earlier.matches_everything:
        return True
    if isinstance(later, Equals):
        return earlier.predicate()(later.value)
    if later.pattern == earlier.pattern:
        return True
    # "ADT^*" covers "ADT^A*": every value the later glob matches starts with its literal prefix.
    prefix = earlier.pattern[:-1]
    return (
        earlier.pattern.endswith("*")
        and earlier.literal_prefix == prefix
        and later.literal_prefix.startswith(prefix)
    )


def _alternatives(c: Equals | Glob | OneOf) -> tuple[Equals | Glob, ...]:
    return c.options if isinstance(c, OneOf) else (c,)


def covers(earlier: Condition, later: Condition) -> bool:
    """True when every header value ``later`` accepts is certainly accepted by ``earlier``.

    Decided: identical conditions; a glob of only ``*``; a glob against an
    exact value; a ``PREFIX*`` glob against a glob with that prefix; lists
    alternative by alternative; comparisons as intervals; a comparison against
    an exact numeric text. Anything else counts as not covered, so a shadow
    warning is never wrong, but some shadowed routes go unreported (for example
    ``A?`` against ``A[12]``).
    """
    if earlier == later:
        return True
    if isinstance(earlier, Compare):
        if isinstance(later, Compare):
            return _compare_covers(earlier, later)
        alternatives = _alternatives(later)
        return all(isinstance(a, Equals) and earlier.predicate()(a.value) for a in alternatives)
    if isinstance(later, Compare):
        return isinstance(earlier, Glob) and earlier.matches_everything
    return all(any(_scalar_covers(e, la) for e in _alternatives(earlier)) for la in _alternatives(later))


def _shadowed_by(earlier: Sequence[tuple[str, Condition]], later: Sequence[tuple[str, Condition]]) -> bool:
    later_by_key = dict(later)
    return all(key in later_by_key and covers(cond, later_by_key[key]) for key, cond in earlier)


# -- endpoints -----------------------------------------------------------------------------------

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)


def _endpoint_findings(name: str, endpoint: str) -> list[Finding]:
    key = f"sinks.{name}.endpoint"
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return [Finding("error", key, "the port is out of range; expected 1 to 65535")]
    findings: list[Finding] = []
    host = parts.hostname or ""
    if not host:
        findings.append(Finding("error", key, "the URL has no host"))
    else:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not _HOSTNAME.fullmatch(host):
                findings.append(Finding("error", key, f"{host!r} is not a valid host name"))
    if port == 0:
        findings.append(Finding("error", key, "port 0 is out of range; expected 1 to 65535"))
    if parts.username is not None or parts.password is not None:
        findings.append(
            Finding(
                "warning",
                key,
                "the URL carries credentials (user:password@); use bearer_token_env or a header instead",
            )
        )
    return findings


# -- lint ----------------------------------------------------------------------------------------


def route_protocols(conditions: Sequence[tuple[str, Condition]], registered: Sequence[str]) -> list[str]:
    """The registered protocols a route can take: those its ``protocol`` condition accepts, else all."""
    for key, condition in conditions:
        if key == "protocol":
            holds = condition.predicate()
            return [p for p in registered if holds(p)]
    return list(registered)


def _online_problems(settings: Settings) -> list[Finding]:
    """An ``iso8583`` sink relays in line from the ISO 8583 listener only: its routes must take nothing
    else, name no second such sink, and the upstream must speak the listener's spec (requests go as
    received); ``unmatched`` cannot be one (nothing would be sent)."""
    online = {name for name, sink in settings.sinks.items() if isinstance(sink, ISO8583SinkConfig)}
    out: list[Finding] = []
    if settings.unmatched in online:
        out.append(
            Finding(
                "error",
                "unmatched",
                f"{settings.unmatched!r} relays in line; it cannot take unmatched messages",
            )
        )
    for i, route in enumerate(settings.routes):
        relays = [s for s in route.to if s in online]
        if not relays:
            continue
        conditions, _ = parse_match(route.match, f"routes[{i}].match")
        if route_protocols(conditions, list(BUILTIN_ADAPTERS)) != ["iso8583"]:
            out.append(
                Finding(
                    "error",
                    f"routes[{i}].match",
                    "a route to an iso8583 sink must match protocol: iso8583 only",
                )
            )
        if len(relays) > 1:
            out.append(
                Finding(
                    "error", f"routes[{i}].to", "at most one iso8583 sink per route: a request has one answer"
                )
            )
    for name in sorted(online):
        sink = settings.sinks[name]
        assert isinstance(sink, ISO8583SinkConfig)
        if sink.spec != settings.iso8583.spec:
            out.append(
                Finding(
                    "error",
                    f"sinks.{name}.spec",
                    f"{sink.spec!r} differs from the listener's {settings.iso8583.spec!r}; requests go upstream as received",
                )
            )
    return out


def _fhir_findings(settings: Settings, i: int, protocols: Sequence[str]) -> list[Finding]:
    """What goes wrong when a route feeds FHIR sinks: the store's sink takes only converted Bundles,
    converted PHI lands in clear in the FHIR store, and conversions applied out of order would let an
    older message overwrite a newer one."""
    route = settings.routes[i]
    kinds = {settings.sinks[s].type for s in route.to if s in settings.sinks}
    out: list[Finding] = []
    converted = route.transform == "hl7v2_to_fhir"
    if "fhir_store" in kinds and not converted:
        out.append(
            Finding(
                "error",
                f"routes[{i}].transform",
                "a fhir_store sink takes FHIR transaction Bundles: give the route transform hl7v2_to_fhir",
            )
        )
    if "fhir" in kinds and not converted and any(p != "fhir" for p in protocols):
        out.append(
            Finding(
                "warning",
                f"routes[{i}].transform",
                "a fhir sink takes FHIR writes or converted Bundles: other messages are dead-lettered",
            )
        )
    if converted and route.order_by is None:
        out.append(
            Finding(
                "warning",
                f"routes[{i}].order_by",
                "without order_by: patient_id, conversions of one patient's messages may be applied out "
                "of order, and an older message would overwrite what a newer one said",
            )
        )
    if converted and "fhir_store" in kinds and route.storage != "full":
        out.append(
            Finding(
                "warning",
                f"routes[{i}].storage",
                f"storage {route.storage} applies to the HL7 message; the FHIR store keeps the resources "
                "converted from it in clear, to serve them at /fhir",
            )
        )
    return out


def lint(settings: Settings) -> list[Finding]:
    """Every error and warning about the routing table, its sinks and alerts, errors first."""
    errors = [Finding("error", p.key, p.message) for p in routing_problems(settings)]
    warnings: list[Finding] = []
    registry = promoted_headers()
    compiled: list[tuple[int, str, tuple[tuple[str, Condition], ...]]] = []
    for i, route in enumerate(settings.routes):
        conditions, problems = parse_match(route.match, f"routes[{i}].match")
        if problems:
            continue
        for j, earlier_name, earlier in compiled:
            if _shadowed_by(earlier, conditions):
                warnings.append(
                    Finding(
                        "warning",
                        f"routes[{i}]",
                        f"route {route.name!r} never matches: routes[{j}] ({earlier_name!r}) "
                        "takes every message it would",
                    )
                )
                break
        compiled.append((i, route.name, conditions))
        protocols = route_protocols(conditions, list(registry))
        if not protocols:
            warnings.append(
                Finding(
                    "warning",
                    f"routes[{i}].match.protocol",
                    f"matches no registered protocol; known protocols: {', '.join(sorted(registry))}",
                )
            )
            continue
        warnings.extend(_fhir_findings(settings, i, protocols))
        if "fhir" in protocols and route.storage != "full":
            warnings.append(
                Finding(
                    "warning",
                    f"routes[{i}].storage",
                    f"storage {route.storage} keeps a FHIR write's message body as it says, but the FHIR "
                    "store keeps the resource it writes in clear, to serve it at /fhir",
                )
            )
        key_sets = [registry[p] for p in protocols]
        if any(keys is None for keys in key_sets):
            continue
        known = frozenset().union(*(k for k in key_sets if k is not None))
        scope = "/".join(protocols)
        for key, _ in conditions:
            if key not in known:
                warnings.append(
                    Finding(
                        "warning",
                        f"routes[{i}].match.{key}",
                        f"no {scope} adapter promotes a header {key!r}, so this route never matches; "
                        f"known headers: {', '.join(sorted(known))}",
                    )
                )
        if route.order_by and route.order_by.strip() and route.order_by not in known:
            warnings.append(
                Finding(
                    "warning",
                    f"routes[{i}].order_by",
                    f"no {scope} adapter promotes a header {route.order_by!r}, so deliveries are not "
                    f"ordered; known headers: {', '.join(sorted(known))}",
                )
            )
    used = {sink for route in settings.routes for sink in route.to}
    if settings.unmatched is not None:
        used.add(settings.unmatched)
    if settings.alerts is not None:
        used.add(settings.alerts.sink)
        sink = settings.sinks.get(settings.alerts.sink)
        if sink is None:
            errors.append(
                Finding(
                    "error",
                    "alerts.sink",
                    f"{settings.alerts.sink!r} is not a sink; known sinks: "
                    f"{', '.join(sorted(settings.sinks)) or '(none)'}",
                )
            )
        elif not isinstance(sink, HTTPSinkConfig):
            errors.append(
                Finding(
                    "error",
                    "alerts.sink",
                    f"{settings.alerts.sink!r} is a {sink.type} sink; expected an http sink (a webhook)",
                )
            )
    if settings.inventory is not None:
        for channel_name, channel in settings.inventory.channels.items():
            where = f"inventory.channels.{channel_name}.sink"
            if channel.sink not in settings.sinks:
                names = ", ".join(sorted(settings.sinks)) or "(none)"
                errors.append(
                    Finding("error", where, f"{channel.sink!r} is not a sink; known sinks: {names}")
                )
            elif not isinstance(settings.sinks[channel.sink], HTTPSinkConfig | MemorySinkConfig):
                errors.append(
                    Finding(
                        "error", where, f"{channel.sink!r} is not an http sink; levels are pushed over HTTP"
                    )
                )
            if channel.format == "shopify" and channel.location_id is None:
                errors.append(
                    Finding(
                        "error",
                        f"inventory.channels.{channel_name}.location_id",
                        "required for the shopify format",
                    )
                )
            used.add(channel.sink)
    errors.extend(_online_problems(settings))
    for name, sink in settings.sinks.items():
        if name not in used:
            warnings.append(
                Finding(
                    "warning",
                    f"sinks.{name}",
                    "not used by any route, by unmatched, by alerts or by inventory",
                )
            )
        if isinstance(sink, HTTPSinkConfig | MLLPSinkConfig):
            for finding in _endpoint_findings(name, sink.endpoint):
                (errors if finding.severity == "error" else warnings).append(finding)
    if not settings.routes and settings.unmatched is not None:
        warnings.append(
            Finding(
                "warning",
                "unmatched",
                f"{settings.unmatched!r} has no effect without routes: envelopes are stored without routing",
            )
        )
    return errors + warnings


# -- route tests ---------------------------------------------------------------------------------


class _Case(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    fixture: str = Field(min_length=1, description="Fixture path, relative to the test file.")
    route: str | None = Field(description="The route the fixture must take; null for unmatched.")
    sinks: list[str] = Field(description="The sinks it must reach; [] with route null means rejected.")


@dataclass(frozen=True, slots=True)
class RouteOutcome:
    """Where a message went (or must go): a route and its sinks; ``route`` ``None`` is unmatched."""

    route: str | None
    sinks: tuple[str, ...]

    def same_as(self, other: RouteOutcome) -> bool:
        return self.route == other.route and set(self.sinks) == set(other.sinks)

    def __str__(self) -> str:
        sinks = ", ".join(self.sinks)
        if self.route is None:
            return f"unmatched (sink {sinks})" if sinks else "unmatched (rejected)"
        return f"route {self.route!r} (sinks {sinks or 'none'})"


@dataclass(frozen=True, slots=True)
class RouteTestResult:
    """One fixture of a route test file: what was expected, what happened, and why it failed."""

    fixture: str
    expected: RouteOutcome
    actual: RouteOutcome | None
    """``None`` when the fixture could not be routed at all (unreadable, unknown protocol, unparseable)."""
    ok: bool
    explanation: str = ""


def load_route_tests(tests_file: Path) -> list[tuple[str, RouteOutcome]]:
    """Read a route test file: ``(fixture, expected)`` pairs; :class:`ConfigError` names any bad entry."""
    try:
        text = tests_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"route tests {tests_file}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"route tests {tests_file} are not UTF-8 text (byte {exc.start + 1})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"route tests {tests_file} are not valid YAML: {yaml_problem(exc, text)}") from None
    if not isinstance(loaded, list):
        raise ConfigError(f"route tests {tests_file}: expected a list of {{fixture, route, sinks}} entries")
    cases: list[tuple[str, RouteOutcome]] = []
    lines: list[str] = []
    for i, entry in enumerate(loaded):
        try:
            case = _Case.model_validate(entry)
        except ValidationError as exc:
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"])
                key = f"[{i}].{where}" if where else f"[{i}]"
                shown = "(missing)" if err["type"] == "missing" else repr(err.get("input"))
                lines.append(
                    f"{key}: unknown key"
                    if err["type"] == "extra_forbidden"
                    else f"{key}: {shown} is not valid: {err['msg']}"
                )
            continue
        cases.append((case.fixture, RouteOutcome(case.route, tuple(case.sinks))))
    if lines:
        raise ConfigError(f"invalid route tests {tests_file}:\n  " + "\n  ".join(lines))
    return cases


def transport_sidecar(path: Path) -> dict[str, str]:
    """The transport headers recorded beside a fixture (``name.headers.json`` beside ``name.json``): a
    webhook's topic and ids, which arrive as HTTP headers rather than in the body."""
    sidecar = path.with_name(path.name.removesuffix(path.suffix) + ".headers.json")
    if not sidecar.is_file():
        return {}
    try:
        loaded = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k).lower(): str(v) for k, v in loaded.items()} if isinstance(loaded, dict) else {}


def _route_fixture(
    table: RoutingTable, raw: bytes, attributes: dict[str, str] | None = None
) -> tuple[RouteOutcome | None, str]:
    for protocol, constructor in BUILTIN_ADAPTERS.items():
        adapter = constructor()
        if not adapter.detect(raw, None):
            continue
        batch = adapter.split(raw)
        units = batch.units if batch is not None else [raw]
        if not units:
            return None, f"the {protocol} batch holds no messages"
        outcomes: list[RouteOutcome] = []
        for unit in units:
            try:
                envelope = adapter.parse(unit, Receipt(listener="route-test", attributes=attributes or {}))
            except ParseError as exc:
                codes = ", ".join(issue.code for issue in exc.issues) or "unparseable"
                where = f"message {len(outcomes) + 1} of {len(units)}: " if batch is not None else ""
                return None, f"{where}the {protocol} adapter cannot parse it ({codes})"
            decision = table.route_envelope(envelope)
            if decision is not None:
                outcomes.append(RouteOutcome(decision.route, decision.sinks))
            else:
                unmatched = table.unmatched_decision()
                outcomes.append(RouteOutcome(None, unmatched.sinks if unmatched is not None else ()))
        first = outcomes[0]
        for n, outcome in enumerate(outcomes[1:], start=2):
            if not outcome.same_as(first):
                return outcome, f"message {n} of {len(units)}"
        return first, ""
    return None, "no registered adapter recognises it"


def run_route_tests(settings: Settings, tests_file: Path) -> list[RouteTestResult]:
    """Route every fixture of ``tests_file`` through the table of ``settings`` and compare."""
    table = RoutingTable.from_settings(settings)
    base = tests_file.parent
    results: list[RouteTestResult] = []
    for fixture, expected in load_route_tests(tests_file):
        path = base / fixture
        try:
            raw = path.read_bytes()
        except OSError as exc:
            results.append(
                RouteTestResult(fixture, expected, None, False, f"cannot read the fixture: {exc.strerror}")
            )
            continue
        if not table.enabled:
            results.append(RouteTestResult(fixture, expected, None, False, "the configuration has no routes"))
            continue
        actual, note = _route_fixture(table, raw, transport_sidecar(path))
        if actual is None:
            results.append(RouteTestResult(fixture, expected, None, False, note))
            continue
        if actual.same_as(expected):
            results.append(RouteTestResult(fixture, expected, actual, True))
            continue
        took = f"was {actual}" if actual.route is None else f"took {actual}"
        prefix = f"{note}: " if note else ""
        want = str(expected).removeprefix("route ")
        if expected.route is not None and expected.route not in {v.name for v in table.describe()}:
            want += " (no route has that name)"
        results.append(RouteTestResult(fixture, expected, actual, False, f"{prefix}{took}, expected {want}"))
    return results


def check_report(settings: Settings, tests_file: Path | None) -> tuple[bool, list[str]]:
    """The lines ``gateway check`` prints, and whether the check passed (no errors, no failed tests)."""
    findings = lint(settings)
    errors = [f for f in findings if f.severity == "error"]
    warnings = [f for f in findings if f.severity == "warning"]
    unmatched = settings.unmatched or "(not set)"
    lines = [
        f"routing table: {len(settings.routes)} routes, {len(settings.sinks)} sinks, unmatched: {unmatched}"
        if settings.routes
        else f"routing table: no routes (envelopes are stored without routing), {len(settings.sinks)} sinks"
    ]
    lines.extend(str(f) for f in findings)
    passed = not errors
    tests_line = ""
    if tests_file is not None:
        if errors:
            tests_line = "route tests: not run, the routing table has errors"
        else:
            try:
                results = run_route_tests(settings, tests_file)
            except ConfigError as exc:
                lines.append(f"error: {exc}")
                return False, [*lines, "check failed"]
            failed = [r for r in results if not r.ok]
            for r in results:
                if r.ok:
                    lines.append(f"ok: {r.fixture} -> {r.actual}")
                else:
                    lines.append(f"FAILED: {r.fixture}: {r.explanation}")
            tests_line = f"route tests: {len(results) - len(failed)} passed, {len(failed)} failed"
            passed = passed and not failed
    lines.append(
        f"{len(errors)} errors, {len(warnings)} warnings" + (f"; {tests_line}" if tests_line else "")
    )
    lines.append("check passed" if passed else "check failed")
    return passed, lines
