"""``gateway serve``: the store, the MLLP listener and the HTTP API in one event loop.

Start-up opens (and migrates) the store before any listener accepts a byte.
SIGTERM or SIGINT stops intake first (listeners close), lets messages in
flight finish their commit and reply, records the last lineage events, then
closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

from adapters import BUILTIN_ADAPTERS
from adapters.finance.iso8583_listener import ISO8583Server
from adapters.hl7.mllp import MLLPServer
from gateway.app import create_app, ingest_channels
from gateway.checkpoints import Checkpointer, load_or_create_key, public_path, verify_store
from gateway.config import Settings, parse_address
from gateway.errors import ConfigError
from gateway.listeners import server_tls
from gateway.metrics import Metrics
from gateway.pipeline import Intake
from gateway.runtime import Runtime
from gateway.security import BOOTSTRAP_KEY_FILE, KeyRing, pseudonym_key
from gateway.store.sqlite import SQLiteStore

log = logging.getLogger("gateway.server")

DB_FILE = "gateway.db"


def open_store(data_dir: Path) -> SQLiteStore:
    store = SQLiteStore(data_dir / DB_FILE, pseudonym_key(data_dir))
    store.open()
    return store


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: ``serve`` owns the signals and the shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def serve(
    settings: Settings, config_file: Path | None = None, overrides: dict[tuple[str, ...], Any] | None = None
) -> None:
    data_dir = settings.data_dir
    store = open_store(data_dir)
    metrics = Metrics()
    intake = Intake(store, metrics=metrics)
    runtime = Runtime(store, intake, metrics, config_file)
    runtime.overrides = dict(overrides or {})
    await runtime.apply(settings)
    keyring = KeyRing.from_settings(settings)
    checkpointer = Checkpointer(
        store,
        load_or_create_key(settings.signing_key()),
        settings.checkpoint_file(),
        settings.lineage.checkpoint_every_events,
        settings.lineage.checkpoint_every_s,
    )
    checkpointer.start()
    hl7 = BUILTIN_ADAPTERS["hl7v2"]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def reload() -> None:
        async def go() -> None:
            try:
                await runtime.reload()
            except ConfigError as exc:
                log.error("reload refused; the running configuration stays", extra={"reason": str(exc)})

        task = loop.create_task(go())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    reloads: set[asyncio.Task[None]] = set()
    loop.add_signal_handler(signal.SIGHUP, reload)

    listeners: list[MLLPServer | ISO8583Server] = []
    if settings.mllp.address != "off":
        listeners.append(MLLPServer(intake, hl7(validation=settings.mllp.validation), settings.mllp))
    if settings.iso8583.address != "off":
        iso8583 = BUILTIN_ADAPTERS["iso8583"](settings.iso8583)
        listeners.append(ISO8583Server(intake, iso8583, settings.iso8583))
    for listener in listeners:
        host, port = parse_address(listener.config.address)
        await listener.start(host, port, server_tls(listener.config.tls))
        log.info(
            f"{listener.name} listening",
            extra={"address": f"{host}:{listener.port}", "tls": listener.config.tls is not None},
        )

    http_task: asyncio.Task[None] | None = None
    http: _Uvicorn | None = None
    if settings.http.address != "off":
        host, port = parse_address(settings.http.address)
        app = create_app(
            store=store,
            intake=intake,
            keyring=keyring,
            ingest_channels=ingest_channels(
                hl7(validation=settings.http.validation),
                BUILTIN_ADAPTERS["iso20022"](settings.iso20022),
            ),
            max_body_bytes=settings.http.max_body_bytes,
            runtime=runtime,
            metrics=metrics,
            verify=lambda: verify_store(
                store, settings.checkpoint_file(), public_path(settings.signing_key())
            ),
        )
        tls_http = settings.http.tls
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="off",
            timeout_keep_alive=30,
            ssl_certfile=str(tls_http.cert) if tls_http else None,
            ssl_keyfile=str(tls_http.key) if tls_http else None,
        )
        http = _Uvicorn(config)
        http_task = asyncio.create_task(http.serve())
        while not http.started and not http_task.done():
            await asyncio.sleep(0.01)
        if http_task.done():
            http_task.result()
        log.info("http listening", extra={"address": f"{host}:{port}", "tls": bool(tls_http)})
    if not settings.auth.api_keys and not settings.auth.open:
        log.info("bootstrap api key in use", extra={"key_file": str(data_dir / BOOTSTRAP_KEY_FILE)})
    log.info("gateway ready", extra={"data_dir": str(data_dir)})

    await stop.wait()
    log.info("gateway stopping")
    for listener in listeners:
        await listener.stop()
    if http is not None and http_task is not None:
        http.should_exit = True
        await http_task
    await runtime.stop()
    await intake.drain()
    await checkpointer.stop()
    store.close()
    log.info("gateway stopped")


def run(
    settings: Settings, config_file: Path | None = None, overrides: dict[tuple[str, ...], Any] | None = None
) -> None:
    """Run :func:`serve` on uvloop where it is installed."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(serve(settings, config_file, overrides))
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, config_file, overrides))
