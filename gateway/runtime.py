"""The reloadable part of a running gateway: routing table, sinks, delivery engine and alerts.

:meth:`Runtime.apply` validates a configuration completely (routing table,
lint errors, sinks that can be built and opened) before it touches anything;
a configuration that fails is refused and the running one stays. On success
the new delivery engine starts, intake switches to the new routing table, and
the old engine stops after its attempts in flight finish. Listeners and their
connections are not touched (their settings need a restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.alerts import Alerter
from gateway.config import Settings, load_settings
from gateway.delivery import DeliveryEngine
from gateway.errors import ConfigError
from gateway.inventory import InventorySync
from gateway.metrics import Metrics
from gateway.openlineage import OpenLineageEmitter
from gateway.pipeline import Intake
from gateway.routecheck import lint
from gateway.routing import RoutingTable
from gateway.sink import OnlineSink, Sink, StoreClient
from gateway.sinks import build_sink
from gateway.stock import LedgerClient
from gateway.store import Store

log = logging.getLogger("gateway.runtime")

BACKLOG_CHECK_S = 5.0
LINEAGE_DELIVERY_KINDS = frozenset({"delivered", "failed", "dead"})


class Runtime:
    def __init__(self, store: Store, intake: Intake, metrics: Metrics, config_file: Path | None) -> None:
        self.store = store
        self.intake = intake
        self.metrics = metrics
        self.config_file = config_file
        self.settings: Settings | None = None
        self.engine: DeliveryEngine | None = None
        self.alerter = Alerter(None, 600.0)
        self._lock = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        self.overrides: dict[tuple[str, ...], Any] = {}
        self.openlineage: OpenLineageEmitter | None = None
        """The OpenLineage emitter, when the configuration has an ``openlineage`` section (read at start)."""
        self.inventory: InventorySync | None = None
        """The inventory sync, when the configuration has an ``inventory`` section."""

    def _observer(self, alerter: Alerter) -> Callable[[str, str, dict[str, object]], None]:
        def observe(kind: str, sink: str, data: dict[str, object]) -> None:
            self.metrics.observe_delivery(kind, sink, data)
            alerter.observe(kind, sink, data)
            emitter = self.openlineage
            if emitter is not None and kind in LINEAGE_DELIVERY_KINDS:
                route = data.get("route")
                emitter.note_delivery(route if isinstance(route, str) else "", sink, kind)

        return observe

    async def apply(self, settings: Settings) -> None:
        """Switch to ``settings``' routing and sinks, or raise ConfigError and keep the current ones."""
        async with self._lock:
            table = RoutingTable.from_settings(settings)
            errors = [f for f in lint(settings) if f.severity == "error"]
            if errors:
                raise ConfigError("invalid routing configuration:\n  " + "\n  ".join(str(f) for f in errors))
            sinks: dict[str, Sink] = {name: build_sink(name, cfg) for name, cfg in settings.sinks.items()}
            for sink in sinks.values():  # before the engine starts: a due delivery finds its store
                if isinstance(sink, StoreClient):
                    sink.store = self.intake.store
            inventory = (
                InventorySync(
                    self.store, settings.inventory, sinks, {n: c.retry for n, c in settings.sinks.items()}
                )
                if settings.inventory is not None and settings.inventory.enabled
                else None
            )
            alert_sink: Sink | None = None
            if settings.alerts is not None:
                alert_sink = build_sink(settings.alerts.sink, settings.sinks[settings.alerts.sink])
                await alert_sink.open()
            alerter = Alerter(alert_sink, settings.alerts.pending_age_s if settings.alerts else 600.0)
            engine = DeliveryEngine(self.store, self._observer(alerter))
            try:
                await engine.start(
                    {
                        name: (sink, cfg.retry, cfg.circuit, cfg.rate_limit, cfg.concurrency)
                        for (name, sink), cfg in zip(sinks.items(), settings.sinks.values(), strict=True)
                    }
                )
            except Exception as exc:
                await engine.stop(0)
                if alert_sink is not None:
                    await alert_sink.close()
                raise ConfigError(f"a sink could not be opened: {exc}") from None
            old_engine, old_alerter, old_inventory = self.engine, self.alerter, self.inventory
            self.engine, self.alerter, self.settings = engine, alerter, settings
            self.intake.online = {name: sink for name, sink in sinks.items() if isinstance(sink, OnlineSink)}
            self.intake.routing = table
            self.intake.on_outbox = engine.notify
            if old_inventory is not None:
                await old_inventory.stop()
            self.inventory = inventory
            self.intake.on_stock = inventory.notify if inventory is not None else None
            self.intake.stock_locations = dict(settings.inventory.locations) if settings.inventory else {}
            for sink in sinks.values():
                if isinstance(sink, LedgerClient):
                    sink.apply = self.intake.apply_stock if inventory is not None else None
            if inventory is not None:
                await inventory.start({name: worker.bucket for name, worker in engine.workers.items()})
            if old_engine is not None:
                await old_engine.stop()
            await old_alerter.close()
            if old_alerter.sink is not None:
                await old_alerter.sink.close()
            log.info("routing applied", extra={"routes": len(settings.routes), "sinks": len(settings.sinks)})
            if self._watch is None:
                self._watch = asyncio.get_running_loop().create_task(self._watch_backlog())

    async def reload(self) -> Settings:
        """Read the config file again and apply it (SIGHUP, ``POST /api/admin/reload``)."""
        settings = load_settings(self.config_file, self.overrides)
        await self.apply(settings)
        return settings

    async def _watch_backlog(self) -> None:
        while True:
            await asyncio.sleep(BACKLOG_CHECK_S)
            try:
                self.alerter.check_backlog(self.store.backlog(), time.time())
            except Exception:
                log.exception("backlog check failed")
            try:  # an erasure killed beside the server (the CLI) left its key marked: destroy it now
                await self.store.finish_erasures()
            except Exception:
                log.exception("finishing erasures failed")

    def sink_states(self) -> dict[str, dict[str, Any]]:
        if self.engine is None:
            return {}
        backlog = {b.sink: b for b in self.store.backlog()}
        now = time.time()
        out = {}
        for name, worker in self.engine.workers.items():
            b = backlog.get(name)
            out[name] = {
                "circuit": worker.breaker.state,
                "in_flight": worker.state.in_flight,
                "pending": b.pending if b else 0,
                "oldest_pending_age_s": round(now - b.oldest_pending_at, 3)
                if b and b.oldest_pending_at
                else 0,
                "dead": b.dead if b else 0,
                "last_error_code": worker.state.last_error_code,
            }
        return out

    def circuits(self) -> dict[str, str]:
        return {n: w.breaker.state for n, w in self.engine.workers.items()} if self.engine else {}

    async def stop(self, grace_s: float = 10.0) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self.inventory is not None:
            await self.inventory.stop()
        if self.engine is not None:
            await self.engine.stop(grace_s)
        await self.alerter.close()
        if self.alerter.sink is not None:
            await self.alerter.sink.close()
