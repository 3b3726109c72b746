"""``gateway serve``: the store, the MLLP listener and the HTTP API in one event loop.

Start-up takes the data directory for this process alone (:func:`hold_data_dir`:
a second ``serve`` on it would deliver every outbox row twice), then opens (and
migrates) the store before any listener accepts a byte.
SIGTERM or SIGINT stops intake first (listeners close), lets messages in
flight finish their commit and reply, records the last lineage events, then
closes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import signal
import sqlite3
from collections.abc import Generator
from pathlib import Path
from typing import IO, Any

import uvicorn
import uvloop

from adapters import BUILTIN_ADAPTERS, EXPUNGERS
from adapters.fhir.api import FhirAPI
from adapters.fhir.routes import mount as mount_fhir
from adapters.finance.iso8583_listener import ISO8583Server
from adapters.hl7 import fhir_transform
from adapters.hl7.convert_api import mount as mount_convert
from adapters.hl7.mllp import MLLPServer
from adapters.retail.pos_json import json_schema as pos_json_schema
from adapters.retail.poslog_drop import DropFolder
from gateway.app import create_app, ingest_channels
from gateway.bodies import BodyLimits
from gateway.checkpoints import (
    Checkpointer,
    checkpoint_sinks,
    load_or_create_key,
    public_path,
    verify_store,
)
from gateway.config import Settings, parse_address
from gateway.errors import ConfigError
from gateway.http_head import limited_protocol
from gateway.listeners import bound_socket, server_tls
from gateway.metrics import Metrics
from gateway.openlineage import OpenLineageEmitter, build_emitter
from gateway.pipeline import Intake
from gateway.retention import prune_forever
from gateway.runtime import Runtime
from gateway.security import BOOTSTRAP_KEY_FILE, KeyRing, pseudonym_key
from gateway.store.sqlite import SQLiteStore
from gateway.webhooks import shopify_signature, square_signature

log = logging.getLogger("gateway.server")

DB_FILE = "gateway.db"

TLS_HANDSHAKE_TIMEOUT_S = 10.0
"""A TLS client must finish its handshake within this; the connection is dropped otherwise (asyncio's
default is 60 s, during which a connection that sends half a ClientHello is held)."""
TLS_SHUTDOWN_TIMEOUT_S = 5.0
"""A TLS connection being closed waits this long for the peer's close_notify, then is dropped (asyncio's
default is 30 s: a client that holds a keep-alive connection and reads nothing more held up every stop)."""


class GatewayLoop(uvloop.Loop):
    """uvloop, where every TLS server gets :data:`TLS_HANDSHAKE_TIMEOUT_S` as its handshake limit and
    :data:`TLS_SHUTDOWN_TIMEOUT_S` as its closing one: the MLLP and ISO 8583 listeners and uvicorn's HTTPS
    alike (uvicorn has no setting for either)."""

    async def create_server(  # type: ignore[override]  # passes every argument on as given
        self, *args: Any, **kwargs: Any
    ) -> asyncio.AbstractServer:
        if kwargs.get("ssl") is not None:
            for name, limit in (
                ("ssl_handshake_timeout", TLS_HANDSHAKE_TIMEOUT_S),
                ("ssl_shutdown_timeout", TLS_SHUTDOWN_TIMEOUT_S),
            ):
                if kwargs.get(name) is None:
                    kwargs[name] = limit
        server: asyncio.AbstractServer = await super().create_server(*args, **kwargs)
        return server


LOCK_FILE = "serve.lock"


def hold_data_dir(data_dir: Path) -> IO[str]:
    """Lock ``data_dir`` for this ``serve`` until the returned file is closed (or the process ends, however
    it ends); :class:`ConfigError` when another ``serve`` holds it. Two would share the store safely but each
    would run the delivery workers, retention and checkpoints: every outbox row would go out twice. The
    commands meant to run beside the server (``replay``, ``subjects erase``, ``lineage prune`` …) do not
    take it."""
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="ascii")  # noqa: SIM115  # held open for the life of serve
    except FileExistsError:  # what mkdir says of a file in the way
        raise ConfigError(f"data directory {data_dir}: {os.strerror(errno.ENOTDIR)}") from None
    except OSError as exc:
        raise ConfigError(f"data directory {data_dir}: {exc.strerror or type(exc).__name__}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip()
        fh.close()
        by = f" (pid {holder})" if holder.isdigit() else ""
        raise ConfigError(f"data directory {data_dir} is in use by another gateway serve{by}") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def open_store(data_dir: Path) -> SQLiteStore:
    """Open (creating and migrating) the store in ``data_dir``; a directory that cannot be created or
    written (not a directory, no permission, a read-only file system) is a :class:`ConfigError` naming it."""
    try:
        store = SQLiteStore(data_dir / DB_FILE, pseudonym_key(data_dir))
        store.open()
    except OSError as exc:
        raise ConfigError(f"data directory {data_dir}: {exc.strerror or type(exc).__name__}") from None
    except sqlite3.DatabaseError as exc:  # not a database, or a damaged one
        raise ConfigError(f"data directory {data_dir}: {DB_FILE} cannot be opened ({exc})") from None
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
    with hold_data_dir(data_dir):
        await _serve(settings, config_file, overrides)


async def _serve(
    settings: Settings, config_file: Path | None = None, overrides: dict[tuple[str, ...], Any] | None = None
) -> None:
    data_dir = settings.data_dir
    store = open_store(data_dir)
    metrics = Metrics()
    intake = Intake(store, metrics=metrics)
    runtime = Runtime(store, intake, metrics, config_file)
    runtime.overrides = dict(overrides or {})
    emitter: OpenLineageEmitter | None = None
    if settings.openlineage is not None:  # read at start only: a change needs a restart
        emitter = build_emitter(settings.openlineage)
        await emitter.start()
        intake.on_routed = emitter.note_routed
        runtime.openlineage = emitter
    await runtime.apply(settings)
    keyring = KeyRing.from_settings(settings)
    checkpoint_to = checkpoint_sinks(  # read at start only (the token too): a change needs a restart
        settings.checkpoint_file(),
        settings.lineage.checkpoint_url,
        token_env=settings.lineage.checkpoint_token_env,
        timeout_s=settings.lineage.checkpoint_timeout_s,
        ca_file=settings.lineage.checkpoint_ca_file,
    )
    checkpointer = Checkpointer(
        store,
        load_or_create_key(settings.signing_key()),
        checkpoint_to,
        settings.lineage.checkpoint_every_events,
        settings.lineage.checkpoint_every_s,
    )
    checkpointer.start()
    pruner: asyncio.Task[None] | None = None
    if settings.lineage.retention is not None:
        pruner = asyncio.get_running_loop().create_task(
            prune_forever(
                store, settings.lineage.retention, load_or_create_key(settings.signing_key()), checkpoint_to
            )
        )
    hl7 = BUILTIN_ADAPTERS["hl7v2"]
    fhir_transform.use_tables(settings.convert.tables_dir)
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

    poslog = BUILTIN_ADAPTERS["poslog"](max_depth=settings.poslog.max_depth)
    drop: DropFolder | None = None
    if settings.poslog.drop_dir is not None:
        drop = DropFolder(
            intake,
            poslog,
            settings.poslog.drop_dir,
            poll_s=settings.poslog.poll_s,
            settle_s=settings.poslog.settle_s,
            max_bytes=settings.http.max_body_bytes,
        )
        await drop.start()
        log.info("poslog drop folder watched", extra={"folder": str(settings.poslog.drop_dir)})
    http_adapters = {
        "hl7v2": hl7(validation=settings.http.validation),
        "iso20022": BUILTIN_ADAPTERS["iso20022"](settings.iso20022),
        "poslog": poslog,
        "pos_json": BUILTIN_ADAPTERS["pos_json"](),
        "shopify": BUILTIN_ADAPTERS["shopify"](),
        "square": BUILTIN_ADAPTERS["square"](),
    }
    http_task: asyncio.Task[None] | None = None
    http: _Uvicorn | None = None
    if settings.http.address != "off":
        host, port = parse_address(settings.http.address)
        body_limits = BodyLimits(settings.http.max_body_bytes, settings.http.body_timeout_s)
        app = create_app(
            store=store,
            intake=intake,
            keyring=keyring,
            ingest_channels=ingest_channels(
                http_adapters,
                {
                    "shopify": shopify_signature(
                        settings.shopify.webhook_secret, settings.shopify.shop_domains
                    ),
                    "square": square_signature(
                        settings.square.signature_key, settings.square.notification_url
                    ),
                },
            ),
            schemas={"pos_json": pos_json_schema()},
            expungers=EXPUNGERS,
            body_limits=body_limits,
            runtime=runtime,
            metrics=metrics,
            verify=lambda: verify_store(store, checkpoint_to, public_path(settings.signing_key())),
        )
        mount_convert(app, keyring, body_limits)
        mount_fhir(app, FhirAPI(store=store, intake=intake, keyring=keyring, body_limits=body_limits))
        https = server_tls(settings.http.tls)
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="off",
            timeout_keep_alive=30,
            http=limited_protocol(settings.http),  # connection limits and the request head time limit
            # no WebSocket route: an upgrade would hand the connection to a protocol outside those limits
            ws="none",
            # the listeners' own context: mutual TLS when ``client_ca`` is set
            ssl_context_factory=(lambda _config, _default: https) if https is not None else None,
        )
        http = _Uvicorn(config)
        http_task = asyncio.create_task(http.serve(sockets=[bound_socket("http", host, port)]))
        while not http.started and not http_task.done():
            await asyncio.sleep(0.01)
        if http_task.done():
            http_task.result()
        log.info("http listening", extra={"address": f"{host}:{port}", "tls": https is not None})
    if not settings.auth.api_keys and not settings.auth.open:
        log.info("bootstrap api key in use", extra={"key_file": str(data_dir / BOOTSTRAP_KEY_FILE)})
    log.info("gateway ready", extra={"data_dir": str(data_dir)})

    await stop.wait()
    log.info("gateway stopping")
    for listener in listeners:
        await listener.stop()
    if drop is not None:
        await drop.stop()
    if http is not None and http_task is not None:
        http.should_exit = True
        await http_task
    if pruner is not None:
        pruner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruner
    await runtime.stop()
    await intake.drain()
    if emitter is not None and settings.openlineage is not None:
        await emitter.stop(settings.openlineage.grace_s)  # after the engine: its last outcomes count
    await checkpointer.stop()
    store.close()
    log.info("gateway stopped")


def run(
    settings: Settings, config_file: Path | None = None, overrides: dict[tuple[str, ...], Any] | None = None
) -> None:
    """Run :func:`serve` on a :class:`GatewayLoop`."""
    with asyncio.Runner(loop_factory=GatewayLoop) as runner:
        runner.run(serve(settings, config_file, overrides))
