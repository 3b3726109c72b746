"""Inventory sync: available-to-sell levels pushed to every sales channel, and reconciliation.

The ledger (:mod:`gateway.store.ledger`) takes each stock movement once, in
the transaction of the message that carries it. This module turns the ledger
into what channels show:

* available-to-sell per SKU = on hand - reserved - safety stock (per SKU or the
  default), over all locations, never below zero;
* one :class:`ChannelPusher` per configured channel sends the level through
  the channel's sink (an ``inventory_levels/set`` body for Shopify's Admin
  API, a small JSON document for a POS). Pushes to one channel go one at a
  time and the level is read from the ledger *when it is sent*, so rapid
  changes coalesce into one push and an older level never follows a newer one;
* a fall in the level is always pushed (a channel must never offer stock that
  is gone); a rise is pushed once it reaches ``min_change``, or at any size
  while either level is at or below ``low_stock``;
* a sweep every ``sweep_s`` (and at start) compares every SKU with what each
  channel was last sent, so a push lost to a crash or a down channel is made
  good;
* :func:`find_drift` compares the levels a channel reported (Shopify
  ``inventory_levels/update``, Square ``inventory.count.updated``) with the
  ledger; fixing drift forgets what the channel was last sent, so the next
  sweep pushes the ledger's level again, recorded in lineage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from gateway.config import InventoryChannel, InventoryConfig, RetryPolicy
from gateway.delivery import TokenBucket, backoff_s
from gateway.envelope import Envelope, new_id, sha256_hex, utcnow
from gateway.errors import ConfigError
from gateway.lineage import EventDraft
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable, Sink
from gateway.store import Store
from gateway.store.ledger import StockLevel

log = logging.getLogger("gateway.inventory")

PROTOCOL = "inventory"
CONTENT_TYPE = "application/json"


def should_push(last: int | None, new: int, config: InventoryConfig) -> bool:
    """Whether a channel last sent ``last`` must now be sent ``new`` (see the module docstring)."""
    if last is None:
        return True
    if new == last:
        return False
    if new < last:
        return True
    return new - last >= config.min_change or min(new, last) <= config.low_stock


def item_ids(store: Store, channel: InventoryChannel) -> dict[str, str]:
    """SKU → the channel's own item id: what its messages taught the ledger (a Shopify ``products/update``
    names each variant's inventory item id), overridden by the configured ``items`` map."""
    return {**store.stock_items(channel.reports or channel.format), **channel.items}


def render(
    name: str, channel: InventoryChannel, sku: str, available: int, version: int, item: str | None
) -> bytes | None:
    """The request body that sets ``sku`` to ``available`` on the channel; None when it cannot be named
    there. ``item`` is the channel's id for the SKU (:func:`item_ids`), where it has one."""
    if channel.format == "shopify":
        if item is None or channel.location_id is None:
            return None
        return json.dumps(
            {"location_id": _id(channel.location_id), "inventory_item_id": _id(item), "available": available}
        ).encode()
    return json.dumps(
        {
            "schema": "inventory/1",
            "channel": name,
            "sku": sku,
            "item": item or sku,
            "available": available,
            "version": version,
            "at": utcnow().isoformat(),
        }
    ).encode()


def _id(value: str) -> int | str:
    return int(value) if value.isdigit() else value


class ChannelPusher:
    """Pushes one channel's levels, one at a time, reading each level when it is sent.

    A SKU whose push failed waits for its own retry (one deadline per SKU, which neither a sweep nor a
    new sale brings forward); a level the channel rejected is not sent again until the level changes.
    Pushes wait for the sink's rate limit, the same token bucket its deliveries use.
    """

    def __init__(
        self, name: str, channel: InventoryChannel, sink: Sink, store: Store, config: InventoryConfig
    ):
        self.name = name
        self.channel = channel
        self.sink = sink
        self.store = store
        self.config = config
        self.retry: RetryPolicy = RetryPolicy()
        self.bucket: TokenBucket | None = None
        self.last: dict[str, int] = {}
        """What the channel was last sent, per SKU (as stored; reloaded at every sweep)."""
        self.pending: dict[str, None] = {}
        self.attempts: dict[str, int] = {}
        self.series: dict[str, str] = {}
        """Per SKU, the idempotency series of the push being retried (a new decision gets a new one)."""
        self.waiting: dict[str, asyncio.TimerHandle] = {}
        self.rejected: dict[str, int] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.unmapped: set[str] = set()

    def start(self) -> None:
        self.reload()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def reload(self) -> None:
        """Take what the channel was last sent from the store (a fix elsewhere may have forgotten it)."""
        self.last = {p.sku: p.available for p in self.store.stock_pushes(self.name)}

    async def stop(self) -> None:
        for timer in self.waiting.values():
            timer.cancel()
        self.waiting.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def want(self, skus: Sequence[str] | set[str]) -> None:
        for sku in skus:
            if sku not in self.waiting:
                self.pending[sku] = None
        if self.pending:
            self._wake.set()

    def forget(self, skus: Sequence[str]) -> None:
        for sku in skus:
            self.last.pop(sku, None)
            self.rejected.pop(sku, None)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending:
                sku = next(iter(self.pending))
                del self.pending[sku]
                try:
                    await self.push(sku)
                except asyncio.CancelledError:
                    raise
                except Exception:  # one SKU's failure must not stop the channel
                    log.exception("inventory push failed", extra={"channel": self.name})

    def _due(self, sku: str) -> tuple[StockLevel, int] | None:
        """The SKU's level and available-to-sell when the channel must be sent it, else None."""
        level = self.store.stock(sku)
        available = level.available(self.config.safety(sku))
        if self.rejected.get(sku) == available or not should_push(self.last.get(sku), available, self.config):
            return None
        return level, available

    async def push(self, sku: str) -> None:
        due = self._due(sku)
        if due is not None and self.bucket is not None:
            await self.bucket.acquire()  # only a push takes a token; then read the level again
            due = self._due(sku)
        if due is None:
            self._settled(sku)
            return
        level, available = due
        item = self.channel.items.get(sku) or item_ids(self.store, self.channel).get(sku)
        body = render(self.name, self.channel, sku, available, level.version, item)
        if body is None:
            if sku not in self.unmapped:
                self.unmapped.add(sku)
                log.warning("sku has no item id on this channel; not pushed", extra={"channel": self.name})
            return
        attempt = self.attempts.get(sku, 0) + 1
        series = self.series.setdefault(sku, new_id())
        headers = {
            "message_type": "inventory_levels/set",
            "control_id": f"{self.name}:{sku}:{level.version}",
            "channel": self.name,
            "sku": sku,
            "available": str(available),
            "version": str(level.version),
        }
        envelope = Envelope(
            id=new_id(),
            received_at=utcnow(),
            protocol=PROTOCOL,
            version="1",
            message_type="inventory_levels/set",
            control_id=headers["control_id"],
            sender="gateway",
            receiver=self.name,
            raw=body,
            raw_sha256=sha256_hex(body),
            body=None,
            headers=headers,
        )
        key = f"inventory:{self.name}:{sku}:{level.version}:{available}:{series}"
        try:
            await self.sink.send(Delivery(key, envelope, body, CONTENT_TYPE, attempt))
        except DeliveryRetryable as exc:
            self.attempts[sku] = attempt
            self._later(max(backoff_s(attempt, self.retry), exc.retry_after_s or 0.0), sku)
            return
        except DeliveryRejected as exc:
            self._settled(sku)
            self.rejected[sku] = available
            await self.store.record_events(
                [
                    EventDraft(
                        "InventoryPushFailed",
                        None,
                        f"inventory:{self.name}",
                        outcome="rejected",
                        error_code=exc.code,
                        details={"channel": self.name, "sku": sku, "available": available},
                    )
                ]
            )
            return
        self._settled(sku)
        self.rejected.pop(sku, None)
        await self.store.record_push(self.name, sku, available, level.version)
        self.last[sku] = available

    def _settled(self, sku: str) -> None:
        self.attempts.pop(sku, None)
        self.series.pop(sku, None)

    def _later(self, delay: float, sku: str) -> None:
        def again() -> None:
            self.waiting.pop(sku, None)
            self.want([sku])

        self.waiting[sku] = asyncio.get_running_loop().call_later(delay, again)


class InventorySync:
    """Every channel's pusher, the sweep, and reconciliation (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        config: InventoryConfig,
        sinks: Mapping[str, Sink],
        retries: Mapping[str, RetryPolicy],
    ) -> None:
        missing = sorted(c.sink for c in config.channels.values() if c.sink not in sinks)
        if missing:
            raise ConfigError(f"inventory.channels: no sink named {', '.join(missing)}")
        for name, channel in config.channels.items():
            if channel.format == "shopify" and channel.location_id is None:
                raise ConfigError(f"inventory.channels.{name}.location_id: required for the shopify format")
        self.store = store
        self.config = config
        self.pushers = {
            name: ChannelPusher(name, channel, sinks[channel.sink], store, config)
            for name, channel in config.channels.items()
        }
        for name, pusher in self.pushers.items():
            pusher.retry = retries.get(config.channels[name].sink, RetryPolicy())
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, buckets: Mapping[str, TokenBucket | None] | None = None) -> None:
        """Start pushing; ``buckets`` are the sinks' rate limits, shared with their delivery workers."""
        for pusher in self.pushers.values():
            pusher.bucket = (buckets or {}).get(pusher.channel.sink)
            pusher.start()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for pusher in self.pushers.values():
            await pusher.stop()

    def notify(self, skus: set[str]) -> None:
        """Stock of ``skus`` changed (called after the commit)."""
        for pusher in self.pushers.values():
            pusher.want(skus)

    def sweep(self) -> None:
        skus = self.store.stock_skus()
        for pusher in self.pushers.values():
            pusher.reload()
            pusher.want(skus)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                self.sweep()
            except Exception:
                log.exception("inventory sweep failed")
            await asyncio.sleep(self.config.sweep_s)

    async def reconcile(self, fix: bool, actor: str) -> list[Drift]:
        drift = find_drift(self.store, self.config)
        await record_reconciliation(self.store, drift, fix, actor)
        if fix:
            for name in {d.channel for d in drift}:
                skus = [d.sku for d in drift if d.channel == name]
                self.pushers[name].forget(skus)
                self.pushers[name].want(skus)
        return drift


class StockCount(BaseModel):
    """A stock take: the quantity counted on hand at one location."""

    model_config = ConfigDict(extra="forbid")
    on_hand: int = Field(ge=0, le=10**9)


def inventory_view(store: Store, config: InventoryConfig, sku: str, movements: int) -> dict[str, Any]:
    """What ``GET /api/inventory/{sku}`` and ``gateway inventory show`` print."""
    level = store.stock(sku)
    safety = config.safety(sku)
    pushed = {p.channel: p for p in store.stock_pushes() if p.sku == sku}
    return {
        "sku": sku,
        "on_hand": level.on_hand,
        "reserved": level.reserved,
        "safety_stock": safety,
        "available": level.available(safety),
        "version": level.version,
        "locations": [
            {"location": x.location, "on_hand": x.on_hand, "reserved": x.reserved} for x in level.locations
        ],
        "channels": {
            name: (
                {
                    "available": pushed[name].available,
                    "version": pushed[name].version,
                    "pushed_at": pushed[name].pushed_at,
                }
                if name in pushed
                else None
            )
            for name in config.channels
        },
        "movements": [m.as_dict() for m in store.stock_movements(sku, movements)],
    }


@dataclass(frozen=True, slots=True)
class Drift:
    """A channel shows ``reported`` for a SKU while the ledger says ``available``."""

    channel: str
    sku: str
    reported: int
    available: int
    reported_at: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "sku": self.sku,
            "reported": self.reported,
            "available": self.available,
            "drift": self.reported - self.available,
            "reported_at": self.reported_at,
        }


def find_drift(store: Store, config: InventoryConfig) -> list[Drift]:
    """Every (channel, SKU) whose reported level differs from the ledger's available-to-sell now.

    With a location (``report_location``, else the shopify ``location_id``) only that location's reports
    count; without one a channel shows stock pooled over its locations, as the ledger does, so its
    reports for a SKU are added up.
    """
    out: list[Drift] = []
    for name, channel in config.channels.items():
        if channel.reports is None:
            continue
        by_item = {item: sku for sku, item in item_ids(store, channel).items()}
        where = channel.report_location or channel.location_id
        shown: dict[str, tuple[int, str]] = {}
        for row in store.stock_reports(channel.reports):
            if where is not None and row.location != where:
                continue
            sku = row.sku or by_item.get(row.item, "")
            if sku:
                total, at = shown.get(sku, (0, ""))
                shown[sku] = (total + row.available, max(at, row.at))
        for sku, (reported, at) in sorted(shown.items()):
            available = store.stock(sku).available(config.safety(sku))
            if reported != available:
                out.append(Drift(name, sku, reported, available, at))
    return out


async def record_reconciliation(store: Store, drift: Sequence[Drift], fix: bool, actor: str) -> None:
    """Lineage of a reconciliation; with ``fix``, forget each drifted channel's last push (the sweep re-pushes)."""
    await store.record_events(
        [
            EventDraft(
                "InventoryReconciled",
                None,
                actor,
                outcome="drift" if drift else "in_sync",
                details={"drifted": len(drift), "fix": fix, "channels": sorted({d.channel for d in drift})},
            )
        ]
    )
    if fix:
        for name in sorted({d.channel for d in drift}):
            mine = [d for d in drift if d.channel == name]
            await store.forget_pushes(
                name, [d.sku for d in mine], actor, {d.sku: d.reported - d.available for d in mine}
            )
