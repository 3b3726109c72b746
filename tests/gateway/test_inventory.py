"""The inventory ledger and level sync on a real store, pushing to a real HTTP receiver."""

from __future__ import annotations

import asyncio
import json

from gateway.config import HTTPSinkConfig, InventoryChannel, InventoryConfig
from gateway.envelope import new_id, sha256_hex, utcnow
from gateway.inventory import InventorySync, find_drift, should_push
from gateway.sinks.http import HTTPSink
from gateway.stock import Movement, ReportedLevel
from gateway.store import IntakeRecord
from gateway.store.sqlite import SQLiteStore
from tests.gateway.sinks.peers import Answer, Receiver


def sale(control_id: str, *moves: Movement, reports: tuple[ReportedLevel, ...] = ()) -> IntakeRecord:
    body = control_id.encode()
    return IntakeRecord(
        id=new_id(),
        received_at=utcnow().isoformat(),
        protocol="pos_json",
        raw=body,
        raw_sha256=sha256_hex(body),
        outcome="accepted",
        listener="http",
        control_id=control_id,
        sender="S1",
        movements=moves,
        reports=reports,
    )


def test_movements_apply_once_by_key_and_levels_are_their_sum(store: SQLiteStore) -> None:
    async def go() -> None:
        await store.adjust_stock("SKU-1", "store:S1", 10, "user:test")
        m1 = Movement("pos:S1:T1:line:1:sale", "store:S1", "SKU-1", on_hand=-2)
        m2 = Movement("pos:S1:T2:line:1:reserve", "store:S1", "SKU-1", reserved=3, kind="reserve")
        await store.record_intake([sale("T1", m1)])
        await store.record_intake([sale("T2", m2)])
        # the same movement in another message (orders/paid after orders/create) is ignored
        await store.record_intake([sale("T3", m1)])

    asyncio.run(go())
    level = store.stock("SKU-1")
    assert (level.on_hand, level.reserved) == (8, 3)
    assert level.available(2) == 3
    assert level.available(20) == 0
    moves = store.stock_movements("SKU-1")
    assert sum(m.on_hand for m in moves) == 8
    assert [m.kind for m in moves] == ["reserve", "sale", "adjustment"]
    assert level.version == moves[0].seq
    events = [e.event for e in store.events_between(None, None)]
    assert events.count("StockMoved") == 3 and "StockAdjusted" in events


def test_a_rejected_message_moves_no_stock(store: SQLiteStore) -> None:
    rec = sale("T9", Movement("k9", "store:S1", "SKU-9", on_hand=-1))
    bad = IntakeRecord(**{f: getattr(rec, f) for f in rec.__dataclass_fields__} | {"outcome": "invalid"})
    asyncio.run(store.record_intake([bad]))
    assert store.stock("SKU-9").version == 0
    assert store.stock_movements("SKU-9") == []


def test_falls_always_push_rises_wait_for_min_change_unless_stock_is_low() -> None:
    cfg = InventoryConfig(min_change=5, low_stock=3)
    assert should_push(None, 50, cfg)
    assert not should_push(50, 50, cfg)
    assert should_push(50, 49, cfg)  # a fall: at once, whatever its size
    assert not should_push(40, 44, cfg)
    assert should_push(40, 45, cfg)
    assert should_push(2, 4, cfg)  # low stock: every change


def test_pushes_coalesce_read_the_level_when_sent_and_retry(store: SQLiteStore) -> None:
    with Receiver() as rx:
        rx.answer(Answer(status=503))  # the first push fails and is retried

        async def go() -> None:
            cfg = InventoryConfig(
                safety_stock=1,
                sweep_s=60,
                channels={"pos": InventoryChannel(sink="pos", format="json")},
            )
            sink_cfg = HTTPSinkConfig(type="http", endpoint=rx.url, retry={"base_s": 0.01, "cap_s": 0.05})
            sink = HTTPSink("pos", sink_cfg)
            await sink.open()
            sync = InventorySync(store, cfg, {"pos": sink}, {"pos": sink_cfg.retry})
            await store.adjust_stock("SKU-1", "store:S1", 6, "user:test")
            await sync.start()
            for n in range(4):  # rapid sales: at most one push in flight, the last level wins
                await store.record_intake([sale(f"T{n}", Movement(f"k{n}", "store:S1", "SKU-1", on_hand=-1))])
                sync.notify({"SKU-1"})
            for _ in range(200):
                if store.stock_pushes("pos") and store.stock_pushes("pos")[0].available == 1:
                    break
                await asyncio.sleep(0.02)
            await sync.stop()
            await sink.close()

        asyncio.run(go())
        levels = [json.loads(r.body)["available"] for r in rx.requests]
        versions = [json.loads(r.body)["version"] for r in rx.requests]
        assert levels[-1] == 1  # 6 - 4 sold - 1 safety
        assert versions == sorted(versions)  # never an older level after a newer one
        assert len(rx.requests) <= 1 + 1 + 4
        assert store.stock_pushes("pos")[0].available == 1


def test_drift_compares_reported_levels_with_the_ledger(store: SQLiteStore) -> None:
    cfg = InventoryConfig(
        safety_stock=0,
        channels={
            "web": InventoryChannel(
                sink="shop", format="shopify", location_id="77", items={"SKU-1": "1001"}, reports="shopify"
            )
        },
    )

    async def go() -> None:
        await store.adjust_stock("SKU-1", "warehouse", 4, "user:test")
        await store.record_intake(
            [
                sale(
                    "R1",
                    reports=(
                        ReportedLevel("shopify", "77", "1001", 9),
                        ReportedLevel("shopify", "88", "1001", 1),
                    ),
                )
            ]
        )

    asyncio.run(go())
    drift = find_drift(store, cfg)
    assert [(d.channel, d.sku, d.reported, d.available) for d in drift] == [("web", "SKU-1", 9, 4)]


def test_a_release_never_takes_more_than_is_reserved(store: SQLiteStore) -> None:
    async def go() -> None:
        await store.adjust_stock("SKU-R", "store:S1", 5, "user:test")
        await store.record_intake(
            [sale("H1", Movement("k-h1", "store:S1", "SKU-R", reserved=2, kind="reserve"))]
        )
        # released 3 while 2 are held (a resent release, or one whose reservation was refused)
        await store.record_intake(
            [sale("H2", Movement("k-h2", "store:S1", "SKU-R", reserved=-3, kind="release"))]
        )
        await store.record_intake(
            [sale("H3", Movement("k-h3", "store:S1", "SKU-R", reserved=-1, kind="release"))]
        )

    asyncio.run(go())
    level = store.stock("SKU-R")
    assert (level.on_hand, level.reserved, level.available(0)) == (5, 0, 5)
    moves = store.stock_movements("SKU-R")
    assert [m.reserved for m in moves] == [0, -2, 2, 0]  # what was actually released
    assert sum(m.reserved for m in moves) == level.reserved


def test_a_down_channel_gets_one_retry_per_sku_and_a_rejected_level_is_not_resent(store: SQLiteStore) -> None:
    with Receiver() as down, Receiver() as strict:
        down.default = Answer(status=503)
        strict.default = Answer(status=400)

        async def go() -> tuple[int, int, int]:
            cfg = InventoryConfig(
                sweep_s=0.05,
                channels={
                    "down": InventoryChannel(sink="down", format="json"),
                    "strict": InventoryChannel(sink="strict", format="json"),
                },
            )
            slow = {"base_s": 5.0, "cap_s": 5.0}
            sinks = {
                "down": HTTPSink("down", HTTPSinkConfig(type="http", endpoint=down.url, retry=slow)),
                "strict": HTTPSink("strict", HTTPSinkConfig(type="http", endpoint=strict.url, retry=slow)),
            }
            for sink in sinks.values():
                await sink.open()
            sync = InventorySync(store, cfg, sinks, {})
            sync.pushers["down"].retry = sync.pushers["strict"].retry = HTTPSinkConfig(
                type="http", endpoint=down.url, retry=slow
            ).retry
            await store.adjust_stock("SKU-1", "store:S1", 6, "user:test")
            await sync.start()
            waiting = 0
            for _ in range(20):  # 20 sweeps in one second
                await asyncio.sleep(0.05)
                waiting = max(waiting, len(sync.pushers["down"].waiting))
            tries = sync.pushers["down"].attempts.get("SKU-1", 0)
            await sync.stop()
            for sink in sinks.values():
                await sink.close()
            return waiting, tries, len(strict.requests)

        waiting, tries, rejected_sends = asyncio.run(go())
        assert waiting == 1  # one retry deadline, however many sweeps
        assert len(down.requests) == tries < 20  # each try is a retry on its backoff, not one per sweep
        assert rejected_sends == 1  # the level the channel refused is not sent again


def test_a_channel_without_a_location_shows_its_locations_pooled(store: SQLiteStore) -> None:
    cfg = InventoryConfig(
        channels={
            "pos": InventoryChannel(sink="pos", format="json", items={"SKU-1": "CAT-1"}, reports="square")
        }
    )

    async def go() -> None:
        await store.adjust_stock("SKU-1", "warehouse", 7, "user:test")
        levels = (ReportedLevel("square", "L1", "CAT-1", 3), ReportedLevel("square", "L2", "CAT-1", 4))
        await store.record_intake([sale("Q1", reports=levels)])

    asyncio.run(go())
    assert find_drift(store, cfg) == []  # 3 + 4 shown, 7 available
