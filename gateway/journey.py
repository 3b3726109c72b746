"""One message's journey through the gateway, drawn for auditors as SVG or PNG.

:func:`journey` reads from the store what an auditor may see of one message —
its identifiers and outcomes, its parent batch, the messages derived from it,
its deliveries and a short run of its lineage events — into a
:class:`Journey`. :func:`journey_layout` places that on a page once (boxes,
links, texts); :func:`journey_svg` and :func:`journey_png` only draw the
layout, so both pictures are the same picture.

Left to right: the source (listener, peer, authenticated client) → the
message (type, control id, status and reply, received time) → its route (or
``unmatched`` / ``rejected``) → one box per sink with its delivery outcome,
coloured (delivered green, pending or retrying amber, dead red). The parent is
drawn above the message, the children below it, and the lineage events in a
timeline under the picture.

Nothing here reads payloads, headers or business keys: a :class:`Journey`
holds identifiers (ids, control ids, route, sink, listener and client names),
states and bounded codes only, so neither picture can show a patient id or a
card number. Lineage event ``details`` are not read either. Reads of the
message or its lineage (access records) are counted, not drawn. The look —
palette, monospace font, box geometry, escaping — is :mod:`gateway.docs`'s.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import pairwise
from typing import TYPE_CHECKING, Literal

from gateway.docs import _CHAR_W, _FILL, _GAP_X, _GAP_Y, _LINE_H, _PAD_X, _PAD_Y, _clip, _xml
from gateway.lineage import LineageEvent
from gateway.routing import UNMATCHED_ROUTE
from gateway.store import DeliveryRow, MessageRow, Store

if TYPE_CHECKING:
    from PIL import ImageDraw, ImageFont

__all__ = [
    "ACCESS_EVENTS",
    "Box",
    "Journey",
    "JourneyDelivery",
    "JourneyEvent",
    "JourneyMessage",
    "Layout",
    "Link",
    "Text",
    "journey",
    "journey_layout",
    "journey_png",
    "journey_svg",
]

EVENTS_HEAD = 12
EVENTS_TAIL = 12
"""A journey keeps at most this many of its first and last events; the ones between are counted."""

MAX_CHILDREN = 4
"""Children drawn; the rest are one ``+N more`` box."""

ACCESS_EVENTS = frozenset(
    {"LineageQueried", "MessageRead", "MessageBodyRead", "MessagesSearched", "AccessDenied"}
)
"""Access records (someone read, or was refused, the message or its lineage): counted, not drawn."""


# -- what an auditor sees of a message -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JourneyMessage:
    """A message's identifiers and outcome: no payload, headers or business keys."""

    id: str
    protocol: str
    message_type: str
    control_id: str
    received_at: str
    listener: str
    peer: str
    client: str
    status: str
    reply_code: str
    route: str

    @classmethod
    def of(cls, row: MessageRow) -> JourneyMessage:
        return cls(
            id=row.id,
            protocol=row.protocol,
            message_type=row.message_type,
            control_id=row.control_id,
            received_at=row.received_at,
            listener=row.listener,
            peer=row.peer,
            client=row.client,
            status=row.status,
            reply_code=row.reply_code,
            route=row.route,
        )


@dataclass(frozen=True, slots=True)
class JourneyDelivery:
    """One sink's delivery: ``state`` is delivered, pending, retrying (pending after a failure) or dead."""

    sink: str
    state: str
    attempts: int
    last_error_code: str
    delivered_at: str | None

    @classmethod
    def of(cls, row: DeliveryRow) -> JourneyDelivery:
        retrying = row.status == "pending" and row.attempts > 0
        return cls(
            sink=row.sink,
            state="retrying" if retrying else row.status,
            attempts=row.attempts,
            last_error_code=row.last_error_code,
            delivered_at=row.delivered_at,
        )


@dataclass(frozen=True, slots=True)
class JourneyEvent:
    """A lineage event without its details; ``subject`` is the id of the child it is about, if not this message."""

    seq: int
    at: str
    event: str
    actor: str
    outcome: str
    error_code: str
    subject: str = ""

    @classmethod
    def of(cls, event: LineageEvent, message_id: str) -> JourneyEvent:
        subject = event.envelope_id or ""
        return cls(
            seq=event.seq,
            at=event.at,
            event=event.event,
            actor=event.actor,
            outcome=event.outcome,
            error_code=event.error_code,
            subject="" if subject == message_id else subject,
        )


@dataclass(frozen=True)
class Journey:
    """One message, where it came from, what it carried or produced, where it went, and its events.

    ``events`` holds the first :data:`EVENTS_HEAD` and last :data:`EVENTS_TAIL` events (in chain
    order) when there are more; ``events_omitted`` counts those between. Access records are not
    among them: ``access_records`` counts them.
    """

    message: JourneyMessage
    parent: JourneyMessage | None
    children: tuple[JourneyMessage, ...]
    deliveries: tuple[JourneyDelivery, ...]
    events: tuple[JourneyEvent, ...]
    events_omitted: int = 0
    access_records: int = 0


def journey(store: Store, message_id: str) -> Journey | None:
    """The journey of ``message_id`` as the store knows it now; ``None`` for an unknown id."""
    row = store.get_message(message_id)
    if row is None:
        return None
    parent = store.get_message(row.parent_id) if row.parent_id else None
    every = store.lineage_of(message_id)
    events = [e for e in every if e.event not in ACCESS_EVENTS]
    access = len(every) - len(events)
    omitted = max(0, len(events) - EVENTS_HEAD - EVENTS_TAIL)
    if omitted:
        events = events[:EVENTS_HEAD] + events[-EVENTS_TAIL:]
    return Journey(
        message=JourneyMessage.of(row),
        parent=JourneyMessage.of(parent) if parent is not None else None,
        children=tuple(JourneyMessage.of(c) for c in store.children_of(message_id)),
        deliveries=tuple(JourneyDelivery.of(d) for d in store.deliveries_of(message_id)),
        events=tuple(JourneyEvent.of(e, message_id) for e in events),
        events_omitted=omitted,
        access_records=access,
    )


# -- the layout both renderings draw -------------------------------------------------------------

Anchor = Literal["start", "middle"]


@dataclass(frozen=True, slots=True)
class Text:
    """A line of text; ``y`` is its baseline (as in SVG)."""

    x: float
    y: float
    text: str
    bold: bool = False
    size: int = 12
    anchor: Anchor = "start"
    fill: str = "#000000"


@dataclass(frozen=True, slots=True)
class Box:
    """A rounded box; ``kind`` chooses its colours (and is its SVG class, after ``role``)."""

    x: float
    y: float
    w: float
    h: float
    role: str
    kind: str
    texts: tuple[Text, ...]


@dataclass(frozen=True, slots=True)
class Link:
    """A polyline, with an arrowhead at its last point when ``arrow``."""

    points: tuple[tuple[float, float], ...]
    dashed: bool = False
    arrow: bool = True
    colour: str = "#555555"


@dataclass(frozen=True, slots=True)
class Layout:
    width: float
    height: float
    title: str
    boxes: tuple[Box, ...]
    links: tuple[Link, ...]
    texts: tuple[Text, ...]


STYLE: dict[str, tuple[str, str]] = {
    "source": (_FILL["source"], "#333333"),
    "message": ("#ffffff", "#1f3a5f"),
    "route": (_FILL["route"], "#333333"),
    "unmatched": (_FILL["unmatched"], "#b54708"),
    "reject": (_FILL["reject"], "#b42318"),
    "store": (_FILL["store"], "#333333"),
    "related": (_FILL["transform"], "#333333"),
    "more": ("#ffffff", "#999999"),
    "delivered": ("#dcf2e3", "#067647"),
    "pending": (_FILL["unmatched"], "#b54708"),
    "retrying": (_FILL["unmatched"], "#b54708"),
    "dead": (_FILL["reject"], "#b42318"),
    "sink": (_FILL["sink"], "#333333"),
}
"""Fill and stroke per box kind: :mod:`gateway.docs`'s palette, plus a green for delivered."""

COLUMNS = ("Source", "Message", "Route", "Deliveries")

_TITLE_Y = 24
_HEAD_Y = 50
_TOP = 64
_ROW_GAP = 44
_MIN_W = 160.0
_LABEL = "#555555"


def _utc(at: str | None) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM:SS.mmmZ`` (UTC); text that is not one, as it is."""
    if not at:
        return "-"
    try:
        t = datetime.fromisoformat(at)
    except ValueError:
        return at
    t = t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.%f")[:23] + "Z"


def _width(lines: Sequence[str]) -> float:
    return max(len(_clip(line)) for line in lines) * _CHAR_W + 2 * _PAD_X


def _height(lines: Sequence[str]) -> float:
    return len(lines) * _LINE_H + 2 * _PAD_Y - 4


def _box(x: float, y: float, w: float, role: str, kind: str, lines: Sequence[str]) -> Box:
    texts = tuple(
        Text(x + _PAD_X, y + _PAD_Y + 10 + i * _LINE_H, _clip(line), bold=i == 0)
        for i, line in enumerate(lines)
    )
    return Box(x, y, w, _height(lines), role, kind, texts)


def _source_lines(m: JourneyMessage) -> list[str]:
    return [
        "source",
        f"listener {m.listener or '-'}",
        f"peer {m.peer or '-'}",
        f"client {m.client or '(none)'}",
    ]


def _message_lines(m: JourneyMessage) -> list[str]:
    reply = f", reply {m.reply_code}" if m.reply_code else ""
    return [
        m.message_type or "(no message type)",
        f"control id {m.control_id or '-'}",
        f"id {m.id}",
        f"{m.protocol}, {m.status}{reply}",
        f"received {_utc(m.received_at)}",
    ]


def _route(m: JourneyMessage) -> tuple[str, list[str]]:
    if m.route == UNMATCHED_ROUTE:
        then = "rejected" if m.status == "rejected" else "to the unmatched sink"
        return "unmatched", ["unmatched", "no route matched", then]
    if m.status == "rejected":
        return "reject", ["rejected", "not routed"]
    if m.route:
        return "route", ["route", m.route]
    if m.status == "batch":
        return "store", ["batch", "not routed itself:", "its messages are"]
    return "store", ["not routed", "(routing off)"]


def _delivery_lines(d: JourneyDelivery) -> list[str]:
    lines = [d.sink, d.state, f"attempts {d.attempts}"]
    if d.last_error_code:
        lines.append(f"last error {d.last_error_code}")
    if d.delivered_at:
        lines.append(f"delivered {_utc(d.delivered_at)}")
    return lines


def _related_lines(title: str, m: JourneyMessage) -> list[str]:
    reply = f", reply {m.reply_code}" if m.reply_code else ""
    return [
        f"{title}: {m.message_type or '(no message type)'}",
        f"control id {m.control_id or '-'}",
        f"id {m.id}",
        f"{m.status}{reply}",
    ]


def _elbow(x1: float, y1: float, x2: float, y2: float) -> tuple[tuple[float, float], ...]:
    """Right from (x1, y1), down or up halfway across, then right into (x2, y2)."""
    if abs(y1 - y2) < 0.05:
        return ((x1, y1), (x2, y2))
    mid = (x1 + x2) / 2
    return ((x1, y1), (mid, y1), (mid, y2), (x2, y2))


def _timeline(j: Journey, top: float) -> tuple[list[Text], list[Link], float, float]:
    """The event table under the picture: texts, its rule, its right edge and its bottom."""
    heading = "Lineage events"
    if j.events_omitted:
        heading += f" (first {EVENTS_HEAD} and last {EVENTS_TAIL})"
    texts = [Text(20, top + 14, heading, bold=True, size=14)]
    header = ("seq", "time (UTC)", "event", "outcome", "error", "actor", "about")
    rows = [
        (
            str(e.seq),
            _utc(e.at),
            e.event,
            e.outcome,
            e.error_code,
            e.actor,
            f"child {e.subject}" if e.subject else "",
        )
        for e in j.events
    ]
    used = [i for i in range(len(header)) if i < 4 or any(r[i] for r in rows)]
    cells = [[_clip(r[i]) for i in used] for r in rows]
    titles = [header[i] for i in used]
    xs = [20.0]
    for c in range(len(used) - 1):
        longest = max([len(titles[c]), *(len(r[c]) for r in cells)])
        xs.append(xs[-1] + longest * _CHAR_W + 16)
    right = xs[-1] + max([len(titles[-1]), *(len(r[-1]) for r in cells)]) * _CHAR_W
    y = top + 40
    texts.extend(Text(x, y, t, bold=True) for x, t in zip(xs, titles, strict=True))
    rule = Link(((20.0, y + 5), (max(right, 20.0 + 40 * _CHAR_W), y + 5)), arrow=False, colour="#999999")
    y += 4
    gap_after = EVENTS_HEAD if j.events_omitted else -1
    for i, row in enumerate(cells):
        if i == gap_after:
            y += _LINE_H
            texts.append(Text(xs[0], y, f"... {j.events_omitted} more events ...", fill=_LABEL))
        y += _LINE_H
        texts.extend(Text(x, y, t) for x, t in zip(xs, row, strict=True))
    if not cells:
        y += _LINE_H
        texts.append(Text(xs[0], y, "(no events)", fill=_LABEL))
    if j.access_records:
        note = (
            f"{j.access_records} access record(s) (reads of this message or its lineage) "
            "not drawn: see `gateway lineage trace`"
        )
        y += _LINE_H + 4
        texts.append(Text(xs[0], y, note, fill=_LABEL))
        right = max(right, xs[0] + len(note) * _CHAR_W)
    return texts, [rule], right, y


def journey_layout(j: Journey) -> Layout:
    """Where every box, link and line of text of the picture goes (the one layout both renderers draw)."""
    m = j.message
    route_kind, route_lines = _route(m)
    sinks: list[tuple[str, list[str]]] = [
        (d.state if d.state in STYLE else "sink", _delivery_lines(d)) for d in j.deliveries
    ]
    if not sinks:
        sinks = [("reject" if m.status == "rejected" else "sink", ["no deliveries"])]
    parent_lines = _related_lines("parent", j.parent) if j.parent else None
    shown = j.children[:MAX_CHILDREN]
    child_lines = [_related_lines("child", c) for c in shown]
    if len(j.children) > len(shown):
        child_lines.append([f"+{len(j.children) - len(shown)} more", "see `gateway lineage trace`"])

    columns: list[list[tuple[str, str, list[str]]]] = [
        [("source", "source", _source_lines(m))],
        [("message", "message", _message_lines(m))],
        [("route", route_kind, route_lines)],
        [("sink", kind, lines) for kind, lines in sinks],
    ]
    widths = [max([_MIN_W, *(_width(lines) for _, _, lines in col)]) for col in columns]
    if parent_lines is not None:
        widths[1] = max(widths[1], _width(parent_lines))
    xs = [20.0]
    for w in widths[:-1]:
        xs.append(xs[-1] + w + _GAP_X)

    boxes: list[Box] = []
    links: list[Link] = []
    texts: list[Text] = [Text(20, _TITLE_Y, f"Journey of message {m.id}", bold=True, size=14)]
    texts.extend(
        Text(xs[c] + widths[c] / 2, _HEAD_Y, title, bold=True, anchor="middle")
        for c, title in enumerate(COLUMNS)
    )

    top = float(_TOP)
    parent_box: Box | None = None
    if j.parent is not None and parent_lines is not None:
        parent_box = _box(xs[1], top, widths[1], "parent", "related", parent_lines)
        boxes.append(parent_box)
        top += parent_box.h + _ROW_GAP

    column_h = [sum(_height(lines) + _GAP_Y for _, _, lines in col) - _GAP_Y for col in columns]
    row_h = max(column_h)
    placed: list[list[Box]] = []
    for c, col in enumerate(columns):
        y = top + (row_h - column_h[c]) / 2
        placed.append([])
        for role, kind, lines in col:
            box = _box(xs[c], y, widths[c], role, kind, lines)
            placed[c].append(box)
            y += box.h + _GAP_Y
    for col_boxes in placed:
        boxes.extend(col_boxes)
    source, message, route = placed[0][0], placed[1][0], placed[2][0]

    def mid_right(b: Box) -> tuple[float, float]:
        return b.x + b.w, b.y + b.h / 2

    def mid_left(b: Box) -> tuple[float, float]:
        return b.x, b.y + b.h / 2

    links.append(Link(_elbow(*mid_right(source), *mid_left(message))))
    links.append(
        Link(_elbow(*mid_right(message), *mid_left(route)), dashed=route_kind in ("unmatched", "reject"))
    )
    for sink in placed[3]:
        dashed = sink.kind in ("dead", "reject") or (sink.kind == "sink" and not j.deliveries)
        links.append(Link(_elbow(*mid_right(route), *mid_left(sink)), dashed=dashed))

    centre = message.x + message.w / 2
    if parent_box is not None and j.parent is not None:
        links.append(Link(((centre, parent_box.y + parent_box.h), (centre, message.y))))
        label = "carries" if j.parent.status == "batch" else "produced"
        texts.append(Text(centre + 6, message.y - _ROW_GAP / 2 + 4, label, size=11, fill=_LABEL))
    bottom = top + row_h
    if child_lines:
        child_top = bottom + _ROW_GAP
        bus = child_top - 14
        x = xs[1]
        for lines in child_lines:
            more = lines[0].startswith("+")
            box = _box(
                x, child_top, max(_MIN_W, _width(lines)), "child", "more" if more else "related", lines
            )
            boxes.append(box)
            cx = box.x + box.w / 2
            points = ((centre, message.y + message.h), (centre, bus), (cx, bus), (cx, child_top))
            links.append(Link(points if abs(cx - centre) > 0.05 else (points[0], points[3]), dashed=more))
            x += box.w + 2 * _GAP_Y
        texts.append(
            Text(centre + 6, bus - 4, "carries" if m.status == "batch" else "produced", size=11, fill=_LABEL)
        )
        bottom = child_top + max(_height(lines) for lines in child_lines)

    table, rules, table_right, table_bottom = _timeline(j, bottom + 28)
    texts.extend(table)
    links.extend(rules)
    width = max([b.x + b.w for b in boxes] + [table_right]) + 20
    height = table_bottom + 20
    return Layout(
        width=math.ceil(width),
        height=math.ceil(height),
        title=f"Journey of message {m.id}",
        boxes=tuple(boxes),
        links=tuple(links),
        texts=tuple(texts),
    )


# -- SVG -----------------------------------------------------------------------------------------


def _svg_text(t: Text) -> str:
    attrs = f'x="{t.x:.1f}" y="{t.y:.1f}"'
    if t.anchor != "start":
        attrs += f' text-anchor="{t.anchor}"'
    if t.bold:
        attrs += ' font-weight="bold"'
    if t.size != 12:
        attrs += f' font-size="{t.size}"'
    if t.fill != "#000000":
        attrs += f' fill="{t.fill}"'
    return f"<text {attrs}>{_xml(t.text)}</text>"


def journey_svg(j: Journey) -> str:
    """A self-contained SVG of the journey (no fonts, scripts or images fetched); same input, same bytes."""
    lay = journey_layout(j)
    w, h = f"{lay.width:.0f}", f"{lay.height:.0f}"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}" font-family="monospace" font-size="12">',
        f"<title>{_xml(lay.title)}</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff"/>',
    ]
    for link in lay.links:
        d = " ".join(f"{'M' if i == 0 else 'L'} {x:.1f} {y:.1f}" for i, (x, y) in enumerate(link.points))
        dash = ' stroke-dasharray="5 4"' if link.dashed else ""
        arrow = ' marker-end="url(#arrow)"' if link.arrow else ""
        out.append(f'<path d="{d}" fill="none" stroke="{link.colour}" stroke-width="1.2"{dash}{arrow}/>')
    for box in lay.boxes:
        fill, stroke = STYLE[box.kind]
        width = "2" if box.role == "message" else "1"
        out.append(f'<g class="{box.role} {box.kind}">')
        out.append(
            f'<rect x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{box.h:.1f}" rx="6" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"/>'
        )
        out.extend(_svg_text(t) for t in box.texts)
        out.append("</g>")
    out.extend(_svg_text(t) for t in lay.texts)
    out.append("</svg>")
    return "\n".join(out) + "\n"


# -- PNG -----------------------------------------------------------------------------------------


def _dashes(
    a: tuple[float, float], b: tuple[float, float], on: float, off: float
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    length = math.dist(a, b)
    if length == 0:
        return []
    ux, uy = (b[0] - a[0]) / length, (b[1] - a[1]) / length
    out = []
    pos = 0.0
    while pos < length:
        end = min(pos + on, length)
        out.append(((a[0] + ux * pos, a[1] + uy * pos), (a[0] + ux * end, a[1] + uy * end)))
        pos = end + off
    return out


def _png_link(draw: ImageDraw.ImageDraw, link: Link, s: float) -> None:
    points = [(x * s, y * s) for x, y in link.points]
    width = max(1, round(1.2 * s))
    if link.arrow and len(points) >= 2:
        (px, py), (tx, ty) = points[-2], points[-1]
        length = math.dist((px, py), (tx, ty)) or 1.0
        ux, uy = (tx - px) / length, (ty - py) / length
        size = 8 * s
        base = (tx - ux * size, ty - uy * size)
        head = [
            (tx, ty),
            (base[0] - uy * size / 2, base[1] + ux * size / 2),
            (base[0] + uy * size / 2, base[1] - ux * size / 2),
        ]
        draw.polygon(head, fill=link.colour)
        points[-1] = base
    for a, b in pairwise(points):
        if link.dashed:
            for p, q in _dashes(a, b, 5 * s, 4 * s):
                draw.line([p, q], fill=link.colour, width=width)
        else:
            draw.line([a, b], fill=link.colour, width=width)


def _png_text(
    draw: ImageDraw.ImageDraw,
    t: Text,
    s: float,
    fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont],
) -> None:
    from PIL import ImageFont

    if t.size not in fonts:
        fonts[t.size] = ImageFont.load_default(size=t.size * s)
    font = fonts[t.size]
    x, y = t.x * s, t.y * s
    if isinstance(font, ImageFont.FreeTypeFont):
        text = t.text
        anchor = "ms" if t.anchor == "middle" else "ls"
    else:  # the bitmap fallback (Pillow built without FreeType): Latin-1 only, no anchors
        text = t.text.encode("latin-1", "replace").decode("latin-1")
        left, _, right, bottom = draw.textbbox((0, 0), text, font=font)
        x -= (right - left) / 2 if t.anchor == "middle" else 0
        y -= bottom
        anchor = None
    offsets = (0.0, max(1.0, s / 2)) if t.bold else (0.0,)
    for dx in offsets:
        draw.text((x + dx, y), text, fill=t.fill, font=font, anchor=anchor)


def journey_png(j: Journey, *, scale: int = 2) -> bytes:
    """The same picture as :func:`journey_svg`, drawn with Pillow's default font; PNG bytes.

    ``scale`` is pixels per SVG unit (2 gives a sharp picture on screen and paper).
    """
    from PIL import Image, ImageDraw

    lay = journey_layout(j)
    s = float(scale)
    image = Image.new("RGB", (math.ceil(lay.width * s), math.ceil(lay.height * s)), "#ffffff")
    draw = ImageDraw.Draw(image)
    fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = {}
    for link in lay.links:
        _png_link(draw, link, s)
    for box in lay.boxes:
        fill, stroke = STYLE[box.kind]
        draw.rounded_rectangle(
            [box.x * s, box.y * s, (box.x + box.w) * s, (box.y + box.h) * s],
            radius=6 * s,
            fill=fill,
            outline=stroke,
            width=max(1, round((2 if box.role == "message" else 1) * s)),
        )
        for t in box.texts:
            _png_text(draw, t, s, fonts)
    for t in lay.texts:
        _png_text(draw, t, s, fonts)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()
