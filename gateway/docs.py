"""``gateway docs``: document every integration from the configuration itself.

Three renderings of the same picture — sources (protocols and the listeners
that carry them) → routes (in order, with what they match) → transforms →
sinks, plus the unmatched path:

* :func:`mermaid` — a Mermaid ``flowchart LR`` for READMEs and wikis;
* :func:`svg` — a self-contained SVG drawn here (four columns of boxes and
  arrows; no external tool, no fonts or scripts fetched);
* :func:`markdown` — a table of every route and of every sink with its
  endpoint, retry policy, circuit breaker and rate limit.

Secrets never appear: sink header values whose name looks like a credential
(authorization, token, key, secret, password, cookie, signature) are shown as
``(hidden)``, ``bearer_token_env`` shows only the variable's name, endpoints
lose their user:password, query string and any path segment that looks like
a token, and the diagram shows only the endpoint's host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from adapters import BUILTIN_ADAPTERS
from gateway.config import (
    UNSET_MARK,
    FHIRSinkConfig,
    FhirStoreSinkConfig,
    FileSinkConfig,
    HTTPSinkConfig,
    ISO8583SinkConfig,
    MemorySinkConfig,
    MLLPSinkConfig,
    Settings,
    SquareOrdersSinkConfig,
)
from gateway.routecheck import route_protocols
from gateway.routing import REJECT, RoutingTable

__all__ = ["LISTENERS", "markdown", "mermaid", "render", "svg"]

AnySink = (
    HTTPSinkConfig
    | MLLPSinkConfig
    | FileSinkConfig
    | MemorySinkConfig
    | SquareOrdersSinkConfig
    | ISO8583SinkConfig
    | FHIRSinkConfig
    | FhirStoreSinkConfig
)

LISTENERS: dict[str, tuple[str, ...]] = {"hl7v2": ("mllp", "http")}
"""The listeners that carry each protocol; a protocol not listed arrives over HTTP."""

_SECRET_NAME = re.compile(r"auth|token|key|secret|passw|cookie|signature|credential", re.IGNORECASE)
_TOKEN_SEGMENT = re.compile(r"(?=[^/]*\d)(?=[^/]*[A-Za-z])[A-Za-z0-9_\-.~=+]{20,}")
HIDDEN = "(hidden)"


# -- what is shown of a sink ---------------------------------------------------------------------


def _url_parts(url: str) -> tuple[str, str, str, bool]:
    """``(scheme, host[:port], path with token-like segments hidden, had a query)`` of ``url``."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    path = "/".join(HIDDEN if _TOKEN_SEGMENT.fullmatch(seg) else seg for seg in parts.path.split("/"))
    return parts.scheme, netloc, path, bool(parts.query)


def endpoint_text(sink: AnySink) -> str:
    """Where a sink sends, without credentials: URL (no user:password, no query), folder, or memory."""
    if isinstance(sink, HTTPSinkConfig | MLLPSinkConfig):
        scheme, netloc, path, query = _url_parts(sink.endpoint)
        return f"{scheme}://{netloc}{path}" + (f"?{HIDDEN}" if query else "")
    if isinstance(sink, FileSinkConfig):
        return str(sink.directory)
    if isinstance(sink, SquareOrdersSinkConfig):
        return f"{sink.api_base}/v2/orders"
    if isinstance(sink, ISO8583SinkConfig):
        return f"iso8583://{sink.endpoint}"
    if isinstance(sink, FHIRSinkConfig):
        scheme, netloc, path, _ = _url_parts(sink.base_url)
        return f"{scheme}://{netloc}{path}"
    if isinstance(sink, FhirStoreSinkConfig):
        return "(the gateway's FHIR store, /fhir)"
    return "(in memory)"


def endpoint_host(sink: AnySink) -> str:
    """The host (and port) a sink sends to, for the diagrams."""
    if isinstance(sink, HTTPSinkConfig | MLLPSinkConfig):
        return _url_parts(sink.endpoint)[1]
    if isinstance(sink, FHIRSinkConfig):
        return _url_parts(sink.base_url)[1]
    return endpoint_text(sink)


def _header_text(name: str, value: str) -> str:
    return f"{name}: {HIDDEN if _SECRET_NAME.search(name) or UNSET_MARK in value else value}"


def _num(value: float) -> str:
    return f"{value:g}"


def _options(sink: AnySink) -> list[str]:
    if isinstance(sink, HTTPSinkConfig | FHIRSinkConfig):
        options = [f"timeout_s {_num(sink.timeout_s)}"]
        if isinstance(sink, HTTPSinkConfig):
            options.append(f"body {sink.body}")
        else:
            options.append("PUT with If-Match")
        options.extend(f"header {_header_text(k, v)}" for k, v in sink.headers.items())
        if sink.bearer_token_env:
            options.append(f"bearer token from ${sink.bearer_token_env}")
        if not sink.verify_tls:
            options.append("TLS certificate NOT verified")
        if sink.ca_file:
            options.append(f"ca_file {sink.ca_file}")
        return options
    if isinstance(sink, MLLPSinkConfig):
        options = [
            f"timeout_s {_num(sink.timeout_s)}",
            f"connect_timeout_s {_num(sink.connect_timeout_s)}",
            f"on AE/CE: {sink.on_ae}",
        ]
        if sink.ca_file:
            options.append(f"ca_file {sink.ca_file}")
        return options
    if isinstance(sink, FileSinkConfig):
        return [f"name_pattern {sink.name_pattern}"]
    if isinstance(sink, ISO8583SinkConfig):
        return [f"in line, timeout_s {_num(sink.timeout_s)} (then DE39 91)", f"length {sink.length_header}"]
    if isinstance(sink, SquareOrdersSinkConfig):
        return [f"access token from ${sink.access_token_env}", f"{len(sink.skus)} catalog variations mapped"]
    return []


# -- the graph every rendering draws -------------------------------------------------------------

Column = int  # 0 sources, 1 routes, 2 transforms, 3 sinks
COLUMNS = ("Sources", "Routes", "Transforms", "Sinks")


@dataclass
class _Node:
    id: str
    column: Column
    kind: str
    lines: list[str]


@dataclass
class _Edge:
    source: str
    target: str
    dashed: bool = False


@dataclass
class _Graph:
    nodes: list[_Node] = field(default_factory=list)
    edges: list[_Edge] = field(default_factory=list)

    def add(self, node: _Node) -> str:
        self.nodes.append(node)
        return node.id


def _sources(settings: Settings, protocol: str) -> str:
    enabled = {"mllp": settings.mllp.address != "off", "http": settings.http.address != "off"}
    carriers = [name.upper() for name in LISTENERS.get(protocol, ("http",)) if enabled.get(name, True)]
    return f"{protocol} via {'/'.join(carriers)}" if carriers else f"{protocol} (no listener enabled)"


def _graph(settings: Settings) -> _Graph:
    table = RoutingTable.from_settings(settings)
    registered = list(BUILTIN_ADAPTERS)
    routes = table.describe()
    reach = [route_protocols(view.conditions, registered) for view in routes]
    protocols = [p for p in registered if not routes or any(p in r for r in reach)]
    g = _Graph()
    rejected: _Node | None = None
    source_ids = {
        p: g.add(_Node(f"src{i}", 0, "source", [_sources(settings, p)])) for i, p in enumerate(protocols)
    }
    sink_ids = {name: f"sink{i}" for i, name in enumerate(settings.sinks)}
    for view, accepted in zip(routes, reach, strict=True):
        lines = [f"{view.order}. {view.name}", *view.match_lines]
        if view.order_by:
            lines.append(f"order by {view.order_by}")
        if view.rules:
            lines.append("rules: " + ", ".join(view.rules))
        rid = g.add(_Node(f"route{view.order}", 1, "route", lines))
        g.edges.extend(_Edge(source_ids[p], rid) for p in accepted)
        start = rid
        if view.transform:
            start = g.add(_Node(f"transform{view.order}", 2, "transform", [view.transform]))
            g.edges.append(_Edge(rid, start))
        g.edges.extend(_Edge(start, sink_ids[s]) for s in view.sinks)
    if table.enabled:
        uid = g.add(_Node("unmatched_path", 1, "unmatched", ["unmatched"]))
        g.edges.extend(_Edge(sid, uid, dashed=True) for sid in source_ids.values())
        if table.unmatched == REJECT:
            rejected = _Node("rejected", 3, "reject", ["reject", "(negative acknowledgement)"])
            g.edges.append(_Edge(uid, rejected.id, dashed=True))
        elif table.unmatched is not None:
            g.edges.append(_Edge(uid, sink_ids[table.unmatched], dashed=True))
    else:
        store = g.add(_Node("stored", 1, "store", ["no routes:", "stored, not routed"]))
        g.edges.extend(_Edge(sid, store) for sid in source_ids.values())
    if settings.alerts is not None and settings.alerts.sink in sink_ids:
        aid = g.add(
            _Node(
                "alerts",
                1,
                "alerts",
                ["delivery alerts", f"pending > {_num(settings.alerts.pending_age_s)} s"],
            )
        )
        g.edges.append(_Edge(aid, sink_ids[settings.alerts.sink], dashed=True))
    for name, sink in settings.sinks.items():
        g.nodes.append(_Node(sink_ids[name], 3, "sink", [name, f"{sink.type} · {endpoint_host(sink)}"]))
    if rejected is not None:
        g.nodes.append(rejected)
    return g


# -- Mermaid -------------------------------------------------------------------------------------

_MERMAID_ESCAPES = {"#": "#35;", '"': "#34;", "<": "#60;", ">": "#62;", "&": "#38;", "`": "#96;"}
_MERMAID_SHAPES = {
    "source": ('(["', '"])'),
    "route": ('["', '"]'),
    "transform": ('{{"', '"}}'),
    "sink": ('[("', '")]'),
    "unmatched": ('{"', '"}'),
    "reject": ('[/"', '"/]'),
    "store": ('[("', '")]'),
    "alerts": ('>"', '"]'),
}


def _mm(text: str) -> str:
    text = "".join(_MERMAID_ESCAPES.get(c, c) for c in text)
    return "".join(c if c.isprintable() else " " for c in text)


def mermaid(settings: Settings) -> str:
    """A Mermaid ``flowchart LR`` of sources → routes → transforms → sinks, with the unmatched path."""
    g = _graph(settings)
    out = ["flowchart LR", "  %% generated by `gateway docs` from the configuration"]
    for node in g.nodes:
        opening, closing = _MERMAID_SHAPES[node.kind]
        out.append(f"  {node.id}{opening}{'<br/>'.join(_mm(line) for line in node.lines)}{closing}")
    for edge in g.edges:
        out.append(f"  {edge.source} {'-.->' if edge.dashed else '-->'} {edge.target}")
    out.append("  classDef reject fill:#fde2e2,stroke:#b42318")
    out.append("  classDef unmatched fill:#fff4d6,stroke:#b54708")
    for kind in ("reject", "unmatched"):
        ids = [n.id for n in g.nodes if n.kind == kind]
        if ids:
            out.append(f"  class {','.join(ids)} {kind}")
    return "\n".join(out) + "\n"


# -- SVG -----------------------------------------------------------------------------------------

_CHAR_W = 7.3
_LINE_H = 16
_PAD_X = 10
_PAD_Y = 8
_GAP_X = 90
_GAP_Y = 14
_TOP = 48
_MAX_CHARS = 48
_FILL = {
    "source": "#e8f1fb",
    "route": "#eef7ee",
    "transform": "#f3ecfa",
    "sink": "#f5f5f5",
    "unmatched": "#fff4d6",
    "reject": "#fde2e2",
    "store": "#f5f5f5",
    "alerts": "#fff4d6",
}
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _xml(text: str) -> str:
    text = _XML_INVALID.sub(" ", text)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def _clip(line: str) -> str:
    return line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 1] + "…"


def svg(settings: Settings) -> str:
    """A self-contained SVG: four columns of boxes (sources, routes, transforms, sinks) joined by arrows."""
    g = _graph(settings)
    widths = [160.0] * 4
    for node in g.nodes:
        longest = max(len(_clip(line)) for line in node.lines)
        widths[node.column] = max(widths[node.column], longest * _CHAR_W + 2 * _PAD_X)
    xs = [20.0]
    for w in widths[:-1]:
        xs.append(xs[-1] + w + _GAP_X)
    heights = {n.id: len(n.lines) * _LINE_H + 2 * _PAD_Y - 4 for n in g.nodes}
    column_h = [sum(heights[n.id] + _GAP_Y for n in g.nodes if n.column == c) - _GAP_Y for c in range(4)]
    total_h = max([*column_h, 40])
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for c in (0, 1, 3):
        y = _TOP + (total_h - column_h[c]) / 2
        for n in (n for n in g.nodes if n.column == c):
            boxes[n.id] = (xs[c], y, widths[c], heights[n.id])
            y += heights[n.id] + _GAP_Y
    for n in (n for n in g.nodes if n.column == 2):  # a transform sits level with its route
        _, ry, _, rh = boxes[next(e.source for e in g.edges if e.target == n.id)]
        boxes[n.id] = (xs[2], ry + (rh - heights[n.id]) / 2, widths[2], heights[n.id])
    column = {n.id: n.column for n in g.nodes}
    width = xs[-1] + widths[-1] + 20
    height = _TOP + total_h + 24
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="monospace" font-size="12">',
        "<title>Routing table</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        f'<rect x="0" y="0" width="{width:.0f}" height="{height:.0f}" fill="#ffffff"/>',
    ]
    for c, title in enumerate(COLUMNS):
        out.append(
            f'<text x="{xs[c] + widths[c] / 2:.1f}" y="28" text-anchor="middle" font-weight="bold" '
            f'font-size="14">{_xml(title)}</text>'
        )
    for edge in g.edges:
        x1, y1, w1, h1 = boxes[edge.source]
        x2, y2, _, h2 = boxes[edge.target]
        sx, sy, tx, ty = x1 + w1, y1 + h1 / 2, x2, y2 + h2 / 2
        # An edge that skips a column runs level through it (between the boxes there), then bends.
        skipped = column[edge.target] - 1
        run = f"L {xs[skipped] + widths[skipped]:.1f} {sy:.1f} " if skipped > column[edge.source] else ""
        bx = xs[skipped] + widths[skipped] if run else sx
        bend = max((tx - bx) / 2, 20)
        dash = ' stroke-dasharray="5 4"' if edge.dashed else ""
        out.append(
            f'<path d="M {sx:.1f} {sy:.1f} {run}C {bx + bend:.1f} {sy:.1f}, {tx - bend:.1f} {ty:.1f}, '
            f'{tx:.1f} {ty:.1f}" fill="none" stroke="#555" stroke-width="1.2"{dash} '
            'marker-end="url(#arrow)"/>'
        )
    for node in g.nodes:
        x, y, w, h = boxes[node.id]
        out.append(f'<g class="{node.kind}">')
        out.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" rx="6" '
            f'fill="{_FILL[node.kind]}" stroke="#333"/>'
        )
        for i, line in enumerate(node.lines):
            weight = ' font-weight="bold"' if i == 0 else ""
            out.append(
                f'<text x="{x + _PAD_X:.1f}" y="{y + _PAD_Y + 10 + i * _LINE_H:.1f}"{weight}>'
                f"{_xml(_clip(line))}</text>"
            )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- Markdown ------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    text = " ".join(text.split())
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;") or "—"


def _code(text: str) -> str:
    return "`" + " ".join(text.split()).replace("`", "'").replace("|", "\\|") + "`"


def markdown(settings: Settings) -> str:
    """Every route (order, name, match, transform, sinks, order_by) and every sink, as Markdown tables."""
    table = RoutingTable.from_settings(settings)
    g = _graph(settings)
    sources = [n.lines[0] for n in g.nodes if n.kind == "source"]
    out = [
        "# Routing table",
        "",
        "Generated by `gateway docs` from the configuration; edit the configuration, not this page.",
        "",
        f"Sources: {_cell(', '.join(sources))}.",
        "",
        "## Routes",
        "",
    ]
    if not table.enabled:
        out += ["No routes: envelopes are stored and not routed to any sink.", ""]
    else:
        out += [
            "Evaluated in order; the first route whose every condition holds takes the message, "
            "and every sink it lists receives it.",
            "",
            "| # | Route | Match | Transform | Sinks | Order by | Description |",
            "|---|---|---|---|---|---|---|",
        ]
        for view in table.describe():
            match = "<br>".join(_code(line) for line in view.match_lines)
            out.append(
                f"| {view.order} | {_cell(view.name)} | {match} | "
                f"{_code(view.transform) if view.transform else '—'} | {_cell(', '.join(view.sinks))} | "
                f"{_code(view.order_by) if view.order_by else '—'} | {_cell(view.description)} |"
            )
        out.append("")
        if table.unmatched == REJECT:
            out.append(
                "**Unmatched:** `reject` — a message no route takes is refused with the protocol's "
                "negative acknowledgement (HL7 AR) and the refusal is recorded."
            )
        else:
            out.append(f"**Unmatched:** a message no route takes goes to sink {_cell(str(table.unmatched))}.")
        out.append("")
    out += [
        "## Sinks",
        "",
        "| Sink | Type | Endpoint | Retry (max_attempts, base_s, cap_s) | Circuit | Rate limit | Concurrency | Options |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, sink in settings.sinks.items():
        retry = f"{sink.retry.max_attempts}, {_num(sink.retry.base_s)}, {_num(sink.retry.cap_s)}"
        circuit = (
            f"opens after {sink.circuit.failure_threshold} failures, "
            f"probe after {_num(sink.circuit.cooldown_s)} s"
        )
        rate = (
            f"{_num(sink.rate_limit.per_s)}/s, burst {sink.rate_limit.burst}" if sink.rate_limit else "none"
        )
        options = "<br>".join(_cell(o) for o in _options(sink)) or "—"
        out.append(
            f"| {_cell(name)} | {sink.type} | {_cell(endpoint_text(sink))} | {retry} | {circuit} | "
            f"{rate} | {sink.concurrency} | {options} |"
        )
    if not settings.sinks:
        out.append("| — | — | — | — | — | — | — | — |")
    if settings.alerts is not None:
        out += [
            "",
            "## Alerts",
            "",
            f"Delivery alerts go to sink {_cell(settings.alerts.sink)} when a sink's oldest pending "
            f"delivery is older than {_num(settings.alerts.pending_age_s)} s.",
        ]
    return "\n".join(out) + "\n"


def render(settings: Settings, fmt: str) -> str:
    """``gateway docs --format``: ``markdown``, ``mermaid`` or ``svg``."""
    renderers = {"markdown": markdown, "mermaid": mermaid, "svg": svg}
    if fmt not in renderers:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(renderers)}")
    return renderers[fmt](settings)
