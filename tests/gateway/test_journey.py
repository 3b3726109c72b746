"""A message's journey as a picture (SVG and PNG) from a real store, and what it must never show."""

from __future__ import annotations

import asyncio
import io
import xml.etree.ElementTree as ET
from dataclasses import replace

from PIL import Image

from gateway.envelope import new_id, sha256_hex, utcnow
from gateway.journey import (
    EVENTS_HEAD,
    EVENTS_TAIL,
    Journey,
    journey,
    journey_layout,
    journey_png,
    journey_svg,
)
from gateway.lineage import EventDraft
from gateway.routing import UNMATCHED_ROUTE
from gateway.store import AttemptResult, BatchRecord, IntakeRecord, PlannedDelivery
from gateway.store.sqlite import SQLiteStore

SVG = "{http://www.w3.org/2000/svg}"
ROUTE = "adt-to-ehr"
CANARY = "MRN-CANARY-77"
WARD = "WARD-CANARY-9"


def record(control_id: str, **changes: object) -> IntakeRecord:
    body = f"MSH|^~\\&|APP|FAC|||||ADT^A01|{control_id}|P|2.5\rPID|||{CANARY}^^^HOSP".encode()
    rec = IntakeRecord(
        id=new_id(),
        received_at=utcnow().isoformat(),
        protocol="hl7v2",
        raw=body,
        raw_sha256=sha256_hex(body),
        outcome="accepted",
        listener="mllp",
        peer="127.0.0.1:5000",
        client="lab-feed",
        control_id=control_id,
        sender="APP^FAC",
        message_type="ADT^A01",
        reply_code="AA",
    )
    return replace(rec, **changes)  # type: ignore[arg-type]


def routed(control_id: str, *sinks: str, route: str = ROUTE, **changes: object) -> IntakeRecord:
    return record(
        control_id,
        route=route,
        deliveries=tuple(PlannedDelivery(sink, route) for sink in sinks),
        **changes,
    )


def attempt(
    store: SQLiteStore, message_id: str, sink: str, n: int, outcome: str, code: str = ""
) -> AttemptResult:
    (row,) = [d for d in store.deliveries_of(message_id) if d.sink == sink]
    return AttemptResult(
        delivery_id=row.id,
        message_id=message_id,
        sink=sink,
        attempt=n,
        outcome=outcome,  # type: ignore[arg-type]
        error_code=code,
        reason=f"{code} from the sink" if code else "",
    )


def texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)
    return [t.text or "" for t in root.iter(f"{SVG}text")]


def groups(svg: str) -> dict[str, list[str]]:
    """Box class → the texts of every box of that class, joined by newlines."""
    out: dict[str, list[str]] = {}
    for g in ET.fromstring(svg).iter(f"{SVG}g"):
        out.setdefault(g.get("class", ""), []).append("\n".join(t.text or "" for t in g.iter(f"{SVG}text")))
    return out


def fill_of(svg: str, cls: str) -> str:
    g = next(g for g in ET.fromstring(svg).iter(f"{SVG}g") if g.get("class") == cls)
    rect = g.find(f"{SVG}rect")
    assert rect is not None
    return rect.get("fill", "")


def decode_png(png: bytes) -> Image.Image:
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(png))
    image.load()
    assert image.format == "PNG"
    return image


def build(store: SQLiteStore, message_id: str) -> Journey:
    j = journey(store, message_id)
    assert j is not None
    return j


def test_routed_message_with_a_delivered_and_a_dead_sink(store: SQLiteStore) -> None:
    rec = routed("CTRL-1", "ehr", "lab")

    async def go() -> None:
        await store.record_intake([rec])
        await store.record_attempts(
            [
                attempt(store, rec.id, "ehr", 1, "delivered"),
                attempt(store, rec.id, "lab", 1, "retry", "http_503"),
            ]
        )
        await store.record_attempts([attempt(store, rec.id, "lab", 2, "dead", "http_422")])

    asyncio.run(go())
    j = build(store, rec.id)
    assert j.message.route == ROUTE and j.parent is None and j.children == ()
    states = {d.sink: (d.state, d.attempts, d.last_error_code) for d in j.deliveries}
    assert states == {"ehr": ("delivered", 1, ""), "lab": ("dead", 2, "http_422")}

    svg = journey_svg(j)
    boxes = groups(svg)
    (route_box,) = boxes["route route"]
    assert ROUTE in route_box
    (delivered,) = boxes["sink delivered"]
    (dead,) = boxes["sink dead"]
    assert delivered.splitlines()[:3] == ["ehr", "delivered", "attempts 1"]
    assert "delivered 20" in delivered  # the delivery time
    assert dead.splitlines() == ["lab", "dead", "attempts 2", "last error http_422"]
    assert fill_of(svg, "sink delivered") != fill_of(svg, "sink dead")  # colour-coded
    (message_box,) = boxes["message message"]
    assert "control id CTRL-1" in message_box and "hl7v2, accepted, reply AA" in message_box
    (source_box,) = boxes["source source"]
    assert source_box.splitlines()[1:] == ["listener mllp", "peer 127.0.0.1:5000", "client lab-feed"]
    # the timeline: seq, time, event, outcome in chain order
    words = texts(svg)
    timeline = [
        w for w in words if w in {"MessageReceived", "RouteMatched", "DeliverySucceeded", "DeadLettered"}
    ]
    assert timeline == ["MessageReceived", "RouteMatched", "DeliverySucceeded", "DeadLettered"]
    assert [e.seq for e in j.events] == sorted(e.seq for e in j.events)
    assert str(j.events[0].seq) in words and "dead" in words and "http_503" in words

    image = decode_png(journey_png(j))
    layout = journey_layout(j)
    assert image.size == (round(layout.width * 2), round(layout.height * 2))
    assert image.getpixel((0, 0)) == (255, 255, 255)


def test_a_batch_shows_its_messages_and_a_member_its_batch(store: SQLiteStore) -> None:
    raw = b"FHS|^~\\&|APP|FAC\rBHS|^~\\&\r"
    batch = BatchRecord(
        id=new_id(),
        received_at=utcnow().isoformat(),
        protocol="hl7v2",
        kind="hl7-batch",
        raw=raw,
        raw_sha256=sha256_hex(raw),
        listener="mllp",
        peer="127.0.0.1:5001",
    )
    members = [routed(f"B{i}", "ehr", parent_id=batch.id) for i in range(2)]
    asyncio.run(store.record_intake(members, batch))

    parent = build(store, batch.id)
    assert parent.message.status == "batch" and parent.deliveries == ()
    assert sorted(c.id for c in parent.children) == sorted(m.id for m in members)
    svg = journey_svg(parent)
    children = groups(svg)["child related"]
    assert sorted(
        next(line for line in c.splitlines() if line.startswith("control id")) for c in children
    ) == [
        "control id B0",
        "control id B1",
    ]
    for m in members:
        assert any(f"id {m.id}" in c for c in children)
    words = texts(svg)
    assert "carries" in words and "BatchReceived" in words
    assert groups(svg)["route store"][0].startswith("batch")

    member = build(store, members[0].id)
    assert member.parent is not None and member.parent.id == batch.id
    svg = journey_svg(member)
    (parent_box,) = groups(svg)["parent related"]
    assert f"id {batch.id}" in parent_box and "BATCH:hl7-batch" in parent_box
    assert "child related" not in groups(svg)
    decode_png(journey_png(parent))
    decode_png(journey_png(member))


def test_business_keys_and_headers_never_appear(store: SQLiteStore) -> None:
    rec = routed(
        "C-OK",
        "ehr",
        business_keys={"patient_id": f"{CANARY}^^^HOSP"},
        masked_keys={"patient_id": "MRN-***77"},
        headers={"patient_id": f"{CANARY}^^^HOSP", "ward": WARD, "message_type": "ADT^A01"},
    )
    asyncio.run(store.record_intake([rec]))
    row = store.get_message(rec.id)
    assert row is not None and row.headers["ward"] == WARD  # the store does show this header
    hidden = [CANARY, WARD, "MRN-***77", "hk:", row.headers["patient_id"], "MSH|", "PID|"]

    j = build(store, rec.id)
    svg = journey_svg(j)
    png = journey_png(j)
    for secret in hidden:
        assert secret not in repr(j), secret
        assert secret not in svg, secret
        assert secret.encode() not in png, secret
    assert "C-OK" in svg
    image = decode_png(png)
    width, height = image.size
    assert 800 <= width <= 6000 and 300 <= height <= 4000

    # the same check does catch a canary where one may be shown (a control id is an identifier)
    shown = routed(CANARY, "ehr")
    asyncio.run(store.record_intake([shown]))
    assert CANARY in journey_svg(build(store, shown.id))


def test_unknown_id_has_no_journey(store: SQLiteStore) -> None:
    assert journey(store, new_id()) is None
    assert journey(store, "not-an-id") is None


def test_same_input_same_output(store: SQLiteStore) -> None:
    rec = routed("CTRL-D", "ehr", "lab")
    asyncio.run(store.record_intake([rec]))
    first, second = build(store, rec.id), build(store, rec.id)
    assert first == second
    assert journey_svg(first) == journey_svg(second)
    assert journey_png(first) == journey_png(second)


def test_text_from_the_wire_is_escaped(store: SQLiteStore) -> None:
    odd = 'C<1>&"x"\x01'
    rec = routed(odd, "ehr", route='odd <name> & "quotes"')
    asyncio.run(store.record_intake([rec]))
    svg = journey_svg(build(store, rec.id))
    assert "<1>" not in svg and "<name>" not in svg
    words = texts(svg)  # parses: nothing unescaped, no control characters
    assert 'control id C<1>&"x" ' in words
    assert 'odd <name> & "quotes"' in words
    assert "<script" not in svg and "href" not in svg and "@import" not in svg  # self-contained


def test_rejected_and_unmatched_messages(store: SQLiteStore) -> None:
    invalid = record("BAD-1", outcome="invalid", reply_code="AE")
    refused = record("UNM-1", outcome="refused", route=UNMATCHED_ROUTE, reply_code="AR")
    to_default = routed("UNM-2", "archive", route=UNMATCHED_ROUTE)
    asyncio.run(store.record_intake([invalid, refused, to_default]))

    boxes = groups(journey_svg(build(store, invalid.id)))
    assert boxes["route reject"] == ["rejected\nnot routed"]
    assert "no deliveries" in boxes["sink reject"][0]
    assert "rejected, reply AE" in boxes["message message"][0]

    boxes = groups(journey_svg(build(store, refused.id)))
    assert boxes["route unmatched"][0].splitlines()[0] == "unmatched"
    assert boxes["route unmatched"][0].splitlines()[-1] == "rejected"

    boxes = groups(journey_svg(build(store, to_default.id)))
    assert boxes["route unmatched"][0].splitlines()[-1] == "to the unmatched sink"
    assert boxes["sink pending"][0].splitlines()[:2] == ["archive", "pending"]


def test_a_long_journey_keeps_its_first_and_last_events_and_counts_reads(store: SQLiteStore) -> None:
    rec = routed("CTRL-L", "ehr")

    async def go() -> None:
        await store.record_intake([rec])
        for n in range(1, 16):
            await store.record_attempts([attempt(store, rec.id, "ehr", n, "retry", "http_503")])
        await store.record_events(
            [EventDraft("LineageQueried", rec.id, "user:auditor", "ok", details={"scope": "lineage:read"})]
            * 3
        )

    asyncio.run(go())
    every = store.lineage_of(rec.id)
    j = build(store, rec.id)
    assert j.access_records == 3
    assert all(e.event != "LineageQueried" for e in j.events)
    kept = [e for e in every if e.event != "LineageQueried"]
    assert len(j.events) == EVENTS_HEAD + EVENTS_TAIL
    assert j.events_omitted == len(kept) - EVENTS_HEAD - EVENTS_TAIL > 0
    assert [e.seq for e in j.events] == [e.seq for e in kept[:EVENTS_HEAD] + kept[-EVENTS_TAIL:]]
    assert j.deliveries[0].state == "retrying" and j.deliveries[0].attempts == 15

    svg = journey_svg(j)
    words = texts(svg)
    assert f"... {j.events_omitted} more events ..." in words
    assert any(w.startswith("3 access record(s)") for w in words)
    assert groups(svg)["sink retrying"][0].splitlines()[:3] == ["ehr", "retrying", "attempts 15"]
    decode_png(journey_png(j))
