"""The inventory ledger inside the store: stock movements applied once, levels, pushes and reports.

Movements arrive with the message that carries them and are applied in that
message's transaction (commit before reply holds for stock too). A movement's
``key`` is unique: the second time a key comes (a redelivered webhook, the
same order seen as ``orders/create`` and ``orders/paid``) it is ignored, so
the levels always equal the sum of the movements. Every change is a lineage
event; SKUs, locations and quantities are not personal data and are recorded.

Functions here take a connection (writes: the store's transaction) and know
nothing of the event loop; :class:`gateway.store.sqlite.SQLiteStore` calls them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gateway.lineage import EventDraft
from gateway.stock import ItemLink, Movement, ReportedLevel

MAX_SKUS_IN_EVENT = 50


@dataclass(frozen=True, slots=True)
class LocationLevel:
    location: str
    on_hand: int
    reserved: int


@dataclass(frozen=True, slots=True)
class StockLevel:
    """A SKU's stock over all locations; ``version`` is the seq of its last movement (0: none)."""

    sku: str
    on_hand: int
    reserved: int
    version: int
    locations: tuple[LocationLevel, ...] = ()

    def available(self, safety_stock: int) -> int:
        """Available-to-sell: on hand - reserved - safety stock, never below zero."""
        return max(0, self.on_hand - self.reserved - safety_stock)


@dataclass(frozen=True, slots=True)
class MovementRow:
    seq: int
    key: str
    message_id: str | None
    at: str
    location: str
    sku: str
    on_hand: int
    reserved: int
    kind: str
    actor: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "at": self.at,
            "kind": self.kind,
            "location": self.location,
            "on_hand": self.on_hand,
            "reserved": self.reserved,
            "message_id": self.message_id,
            "source": self.actor,
        }


@dataclass(frozen=True, slots=True)
class PushRow:
    channel: str
    sku: str
    available: int
    version: int
    pushed_at: str


@dataclass(frozen=True, slots=True)
class ReportRow:
    channel: str
    location: str
    item: str
    sku: str
    available: int
    message_id: str | None
    at: str


@dataclass(slots=True)
class Applied:
    applied: list[Movement] = field(default_factory=list)
    ignored: int = 0


def apply_movements(
    conn: sqlite3.Connection, movements: Sequence[Movement], message_id: str | None, actor: str, at: str
) -> Applied:
    """Apply each movement whose key is new; count the ones already applied.

    A release never takes more than is reserved at its location: the quantity held for orders cannot
    go below zero (a release with no reservation behind it would otherwise raise available-to-sell
    above what is on the shelf). The movement row keeps the quantity actually released, so the
    levels stay the sum of the movements.
    """
    out = Applied()
    for m in movements:
        if m.reserved < 0:
            row = conn.execute(
                "SELECT reserved FROM stock_levels WHERE sku = ? AND location = ?", (m.sku, m.location)
            ).fetchone()
            held = max(0, int(row[0])) if row else 0
            m = replace(m, reserved=max(m.reserved, -held))
        cur = conn.execute(
            "INSERT OR IGNORE INTO stock_movements (key, message_id, at, location, sku, on_hand, reserved, kind,"
            " actor) VALUES (?,?,?,?,?,?,?,?,?)",
            (m.key, message_id, at, m.location, m.sku, m.on_hand, m.reserved, m.kind, actor),
        )
        if cur.rowcount == 0:
            out.ignored += 1
            continue
        conn.execute(
            "INSERT INTO stock_levels (sku, location, on_hand, reserved, version) VALUES (?,?,?,?,?)"
            " ON CONFLICT (sku, location) DO UPDATE SET on_hand = on_hand + excluded.on_hand,"
            " reserved = reserved + excluded.reserved, version = excluded.version",
            (m.sku, m.location, m.on_hand, m.reserved, cur.lastrowid),
        )
        out.applied.append(m)
    return out


def movement_event(
    result: Applied, message_id: str | None, actor: str, event: str = "StockMoved"
) -> EventDraft:
    skus = sorted({m.sku for m in result.applied})
    return EventDraft(
        event,
        message_id,
        actor,
        outcome="applied" if result.applied else "already_applied",
        details={
            "applied": len(result.applied),
            "ignored": result.ignored,
            "skus": skus[:MAX_SKUS_IN_EVENT],
            "on_hand": sum(m.on_hand for m in result.applied),
            "reserved": sum(m.reserved for m in result.applied),
        },
    )


def record_reports(
    conn: sqlite3.Connection, reports: Sequence[ReportedLevel], message_id: str, at: str
) -> None:
    conn.executemany(
        "INSERT INTO stock_reports (channel, location, item, sku, available, message_id, at) VALUES (?,?,?,?,?,?,?)"
        " ON CONFLICT (channel, location, item) DO UPDATE SET sku = excluded.sku, available = excluded.available,"
        " message_id = excluded.message_id, at = excluded.at",
        [(r.channel, r.location, r.item, r.sku, r.available, message_id, at) for r in reports],
    )


def record_items(conn: sqlite3.Connection, links: Sequence[ItemLink], at: str) -> None:
    conn.executemany(
        "INSERT INTO stock_items (channel, sku, item, at) VALUES (?,?,?,?) ON CONFLICT (channel, sku)"
        " DO UPDATE SET item = excluded.item, at = excluded.at",
        [(link.channel, link.sku, link.item, at) for link in links],
    )


def items(conn: sqlite3.Connection, channel: str) -> dict[str, str]:
    """SKU → the channel's item id, as learnt from its messages."""
    return dict(conn.execute("SELECT sku, item FROM stock_items WHERE channel = ?", (channel,)).fetchall())


def on_hand_at(conn: sqlite3.Connection, sku: str, location: str) -> int:
    row = conn.execute(
        "SELECT on_hand FROM stock_levels WHERE sku = ? AND location = ?", (sku, location)
    ).fetchone()
    return int(row[0]) if row else 0


def stock_level(conn: sqlite3.Connection, sku: str) -> StockLevel:
    rows = conn.execute(
        "SELECT location, on_hand, reserved, version FROM stock_levels WHERE sku = ? ORDER BY location",
        (sku,),
    ).fetchall()
    return StockLevel(
        sku,
        sum(r[1] for r in rows),
        sum(r[2] for r in rows),
        max((r[3] for r in rows), default=0),
        tuple(LocationLevel(r[0], r[1], r[2]) for r in rows),
    )


def skus(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT DISTINCT sku FROM stock_levels ORDER BY sku")]


def movements_of(conn: sqlite3.Connection, sku: str, limit: int) -> list[MovementRow]:
    rows = conn.execute(
        "SELECT seq, key, message_id, at, location, sku, on_hand, reserved, kind, actor FROM stock_movements"
        " WHERE sku = ? ORDER BY seq DESC LIMIT ?",
        (sku, limit),
    )
    return [MovementRow(*r) for r in rows]


def record_push(
    conn: sqlite3.Connection, channel: str, sku: str, available: int, version: int, at: str
) -> None:
    conn.execute(
        "INSERT INTO stock_pushes (channel, sku, available, version, pushed_at) VALUES (?,?,?,?,?)"
        " ON CONFLICT (channel, sku) DO UPDATE SET available = excluded.available, version = excluded.version,"
        " pushed_at = excluded.pushed_at",
        (channel, sku, available, version, at),
    )


def forget_push(conn: sqlite3.Connection, channel: str, sku: str) -> None:
    conn.execute("DELETE FROM stock_pushes WHERE channel = ? AND sku = ?", (channel, sku))


def pushes(conn: sqlite3.Connection, channel: str | None = None) -> list[PushRow]:
    if channel is None:
        rows = conn.execute("SELECT channel, sku, available, version, pushed_at FROM stock_pushes")
    else:
        rows = conn.execute(
            "SELECT channel, sku, available, version, pushed_at FROM stock_pushes WHERE channel = ?",
            (channel,),
        )
    return [PushRow(*r) for r in rows]


def reports(conn: sqlite3.Connection, channel: str) -> list[ReportRow]:
    rows = conn.execute(
        "SELECT channel, location, item, sku, available, message_id, at FROM stock_reports WHERE channel = ?"
        " ORDER BY location, item",
        (channel,),
    )
    return [ReportRow(*r) for r in rows]
