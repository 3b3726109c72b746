"""OpenLineage run events per route, sent in the background through the openlineage-python client.

What is emitted (see the `OpenLineage object model <https://openlineage.io/docs/spec/object-model>`_):

* **job** — a route (``namespace``: the configured one, by default ``connector-gateway://<host>``;
  ``name``: the route name). Messages that took no route (invalid, or refused before routing) count
  under the job ``(unrouted)``; the routing table's own ``(unmatched)`` route is a job like any other.
* **run** — one time window of one route. Windows are aligned to the epoch (``floor(t / window_s)``),
  so processes with the same ``window_s`` cut at the same instants. Each run has a UUIDv7 run id.
* **START** — when the first message (or delivery outcome) of the route arrives in a window: its
  input is that message's source, its outputs the sinks the route names.
* **COMPLETE** — when the window closes (a background ticker, or the route's next note in a later
  window, or :meth:`OpenLineageEmitter.stop`). It carries every source and sink seen in the window,
  the standard ``nominalTime``, ``inputStatistics``/``outputStatistics`` (messages received per
  source, deliveries made per sink) and the custom run facet :data:`FACET_KEY`
  (:class:`RouteWindowRunFacet`): messages by outcome, messages by source and outcome, and deliveries
  by sink and outcome (``delivered``; ``failed`` counts every failed attempt, ``dead`` every
  dead-lettered delivery).
* **datasets** — each source is an input dataset named ``source/<protocol>:<listener>``
  (``source/hl7v2:mllp``), each sink an output dataset named ``sink/<sink name>``, both in the
  configured namespace.

Only route, listener, protocol and sink names and counts leave the gateway: never a payload value, a
business key, a peer address or a sink endpoint.

Never in the way of messages: :meth:`OpenLineageEmitter.note_routed` and
:meth:`OpenLineageEmitter.note_delivery` run on the event loop, touch only in-memory counters, and
put at most a small record on a bounded queue (never waiting: when the queue is full the event is
dropped and counted in ``dropped``); they never raise. One daemon worker thread builds the events and
sends them through the client; a transport error is counted in ``failed`` (and logged at most once a
minute), a sent event in ``emitted``. A slow or hung backend holds up only that thread, and so only
fills the queue. :meth:`OpenLineageEmitter.stop` closes the open windows (COMPLETE), then waits up to
its grace time for the queue to drain; whatever is still queued then is counted as dropped.

The openlineage-python client still honours its own environment: ``OPENLINEAGE_DISABLED=true`` turns
sending off (events then count as emitted), and an ``openlineage.yml`` or ``OPENLINEAGE__*`` variables
may add filters and tags; the transport is always the one given here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Final, Protocol

import attr
from openlineage.client import OpenLineageClient
from openlineage.client.constants import __version__ as CLIENT_VERSION  # noqa: N812
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    JobFacet,
    RunFacet,
    input_statistics_input_dataset,
    job_type_job,
    nominal_time_run,
    output_statistics_output_dataset,
    processing_engine_run,
)
from openlineage.client.transport import Transport
from openlineage.client.transport.file import FileConfig, FileTransport
from openlineage.client.transport.http import (
    ApiKeyTokenProvider,
    HttpConfig,
    HttpTransport,
    TokenProvider,
)
from openlineage.client.transport.http_common import DEFAULT_RETRY_CONFIG
from openlineage.client.uuid import generate_new_uuid

from gateway import __version__
from gateway.errors import ConfigError

log = logging.getLogger("gateway.openlineage")

UNROUTED_JOB: Final = "(unrouted)"
"""The job that messages without a route (invalid, or refused before routing) count under."""
SOURCE_PREFIX: Final = "source/"
SINK_PREFIX: Final = "sink/"
FACET_KEY: Final = "connectorGateway_routeWindow"
"""The custom run facet's key: prefixed, as the spec asks of custom facets."""
PRODUCER: Final = f"urn:connector-gateway:{__version__}"
"""The default ``producer`` (and facets' ``_producer``): a URI naming this gateway and its version.
Replace with the project's repository URL at a tag once it has a public one."""
FACET_SCHEMA_URL: Final = (
    "urn:connector-gateway:openlineage:facets:1-0-0:RouteWindowRunFacet.json#/$defs/RouteWindowRunFacet"
)
"""The default ``_schemaURL`` of :class:`RouteWindowRunFacet`; publish :data:`FACET_SCHEMA` and pass its
URL as ``facet_schema_url``."""
FACET_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$defs": {
        "RouteWindowRunFacet": {
            "allOf": [
                {"$ref": "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunFacet"},
                {
                    "type": "object",
                    "description": "What one route did in one time window of a connector gateway.",
                    "properties": {
                        "windowSeconds": {"type": "number", "description": "Length of the window."},
                        "messages": {
                            "type": "object",
                            "description": "Messages taken in by outcome (accepted, invalid, refused).",
                            "additionalProperties": {"type": "integer", "minimum": 0},
                        },
                        "messagesBySource": {
                            "type": "object",
                            "description": "Per source (protocol:listener), messages by outcome.",
                            "additionalProperties": {
                                "type": "object",
                                "additionalProperties": {"type": "integer", "minimum": 0},
                            },
                        },
                        "deliveries": {
                            "type": "object",
                            "description": "Per sink, delivery outcomes: delivered, failed (attempts), "
                            "dead (dead-lettered).",
                            "additionalProperties": {
                                "type": "object",
                                "additionalProperties": {"type": "integer", "minimum": 0},
                            },
                        },
                    },
                    "required": ["windowSeconds", "messages", "messagesBySource", "deliveries"],
                },
            ],
            "type": "object",
        }
    },
    "type": "object",
    "properties": {FACET_KEY: {"$ref": "#/$defs/RouteWindowRunFacet"}},
}
"""The JSON schema of :class:`RouteWindowRunFacet`, to publish at ``facet_schema_url``."""

FAILURE_LOG_EVERY_S = 60.0
TICK_MAX_S = 1.0


@attr.define
class RouteWindowRunFacet(RunFacet):
    """Counts of one route in one window (see :data:`FACET_SCHEMA`)."""

    windowSeconds: float = attr.field(default=0.0, kw_only=True)  # noqa: N815
    messages: dict[str, int] = attr.field(factory=dict, kw_only=True)
    messagesBySource: dict[str, dict[str, int]] = attr.field(factory=dict, kw_only=True)  # noqa: N815
    deliveries: dict[str, dict[str, int]] = attr.field(factory=dict, kw_only=True)

    _additional_skip_redact: ClassVar[list[str]] = [
        "windowSeconds",
        "messages",
        "messagesBySource",
        "deliveries",
    ]

    @staticmethod
    def _get_schema() -> str:
        return FACET_SCHEMA_URL


@dataclass(slots=True, eq=False)
class _Window:
    """One route's open window: touched only on the event loop until it is closed, then only read."""

    route: str
    index: int
    run_id: str
    start: float
    end: float
    messages: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, dict[str, int]] = field(default_factory=dict)
    sinks: dict[str, None] = field(default_factory=dict)
    """Every sink seen in the window, in the order first seen (an ordered set)."""
    deliveries: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Start:
    route: str
    run_id: str
    at: float
    start: float
    end: float
    sources: tuple[str, ...]
    sinks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Complete:
    window: _Window
    at: float


_Item = _Start | _Complete | None
"""What the worker takes from the queue; ``None`` tells it to finish."""


class OpenLineageSettings(Protocol):
    """The configuration :func:`build_emitter` reads (the ``openlineage`` section of the settings)."""

    @property
    def transport(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def path(self) -> Path | None: ...
    @property
    def namespace(self) -> str | None: ...
    @property
    def window_s(self) -> float: ...
    @property
    def max_buffer(self) -> int: ...
    @property
    def api_key_env(self) -> str | None: ...
    @property
    def timeout_s(self) -> float: ...
    @property
    def retries(self) -> int: ...


def default_namespace() -> str:
    """``connector-gateway://<host name>``."""
    return f"connector-gateway://{socket.gethostname() or 'localhost'}"


def build_transport(settings: OpenLineageSettings, environ: Mapping[str, str] | None = None) -> Transport:
    """The openlineage-python transport ``settings`` ask for: HTTP (with an optional API key read from
    the environment variable ``api_key_env``, a time-out and few retries) or a file of JSON lines."""
    env = os.environ if environ is None else environ
    if settings.transport == "file":
        if settings.path is None:
            raise ConfigError("openlineage.path is required with transport: file")
        settings.path.parent.mkdir(parents=True, exist_ok=True)
        return FileTransport(FileConfig(log_file_path=str(settings.path), append=True))
    if settings.transport != "http":
        raise ConfigError(f"openlineage.transport: {settings.transport!r} is not http or file")
    if not settings.url:
        raise ConfigError("openlineage.url is required with transport: http")
    auth = TokenProvider({})
    if settings.api_key_env:
        key = env.get(settings.api_key_env)
        if not key:
            raise ConfigError(
                f"openlineage.api_key_env: environment variable {settings.api_key_env} is not set"
            )
        auth = ApiKeyTokenProvider({"apiKey": key})
    retries = settings.retries
    return HttpTransport(
        HttpConfig(
            url=settings.url,
            endpoint=settings.endpoint,
            timeout=settings.timeout_s,
            auth=auth,
            retry={**DEFAULT_RETRY_CONFIG, "total": retries, "connect": retries, "read": retries},
        )
    )


def build_emitter(settings: OpenLineageSettings) -> OpenLineageEmitter:
    """An emitter for the ``openlineage`` section of the settings (raises ConfigError when incomplete)."""
    return OpenLineageEmitter(
        settings.namespace or default_namespace(),
        build_transport(settings),
        window_s=settings.window_s,
        max_buffer=settings.max_buffer,
    )


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


class OpenLineageEmitter:
    """Counts messages and deliveries per route and time window; sends START/COMPLETE run events.

    ``transport`` is an openlineage-python transport (:class:`~openlineage.client.transport.http.
    HttpTransport`, :class:`~openlineage.client.transport.file.FileTransport`, …). ``clock`` gives
    the time in seconds since the epoch (tests drive it; :meth:`close_due` closes the windows that are
    over by then).
    """

    def __init__(
        self,
        namespace: str,
        transport: Transport,
        window_s: float = 60.0,
        max_buffer: int = 10_000,
        *,
        producer: str = PRODUCER,
        facet_schema_url: str = FACET_SCHEMA_URL,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        if max_buffer < 1:
            raise ValueError("max_buffer must be at least 1")
        self.namespace = namespace
        self.window_s = float(window_s)
        self.max_buffer = max_buffer
        self.producer = producer
        self.facet_schema_url = facet_schema_url
        self._clock = clock
        self.client = OpenLineageClient(transport=transport)
        self.emitted = 0
        """Events the transport took (written by the worker thread only)."""
        self.failed = 0
        """Events the transport (or building them) failed on (written by the worker thread only)."""
        self.dropped = 0
        """Events never handed to the transport: the queue was full, or still held them at stop."""
        self._queue: queue.Queue[_Item] = queue.Queue(maxsize=max_buffer)
        self._queued = 0
        """Events put on the queue (event loop only)."""
        self._discarded = 0
        """Events taken back off the queue at stop, unsent (event loop only)."""
        self._open: dict[str, _Window] = {}
        self._closed = False
        self._thread: threading.Thread | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_failure_log = 0.0
        self._failures_unlogged = 0
        self._note_errors = 0
        self._job_facets: dict[str, JobFacet] = {
            "jobType": job_type_job.JobTypeJobFacet(
                processingType="STREAMING",
                integration="CONNECTOR_GATEWAY",
                jobType="ROUTE",
                emissionPattern=job_type_job.EmissionPattern(
                    eventTrigger="PERIODIC",
                    eventContentMode="COMPLETE_SNAPSHOT",
                    windowDuration=max(1, round(self.window_s)),
                ),
                producer=producer,
            )
        }

    # -- on the event loop ------------------------------------------------------------------------------

    def note_routed(self, route: str, source: str, sinks: Sequence[str], outcome: str) -> None:
        """Count one stored message: its route (``""`` for none), its source (``protocol:listener``),
        the sinks the route sends it to, and its outcome (accepted, invalid, refused). Never raises."""
        try:
            if self._closed:
                return
            now = self._clock()
            win = self._window(route or UNROUTED_JOB, now, (source,), tuple(sinks))
            win.messages[outcome] = win.messages.get(outcome, 0) + 1
            counts = win.by_source.get(source)
            if counts is None:
                counts = win.by_source[source] = {}
            counts[outcome] = counts.get(outcome, 0) + 1
            seen = win.sinks
            for sink in sinks:
                if sink not in seen:
                    seen[sink] = None
        except Exception:
            self._note_failed()

    def note_delivery(self, route: str, sink: str, outcome: str) -> None:
        """Count one delivery outcome of ``route`` at ``sink`` (delivered, failed, dead). Never raises."""
        try:
            if self._closed:
                return
            now = self._clock()
            win = self._window(route or UNROUTED_JOB, now, (), (sink,))
            if sink not in win.sinks:
                win.sinks[sink] = None
            counts = win.deliveries.get(sink)
            if counts is None:
                counts = win.deliveries[sink] = {}
            counts[outcome] = counts.get(outcome, 0) + 1
        except Exception:
            self._note_failed()

    def close_due(self, now: float | None = None) -> int:
        """Close (COMPLETE) every window that is over at ``now``; return how many. Never raises."""
        try:
            t = self._clock() if now is None else now
            due = [w for w in self._open.values() if w.end <= t]
            for w in due:
                del self._open[w.route]
                self._put(_Complete(w, w.end))
            return len(due)
        except Exception:
            self._note_failed()
            return 0

    @property
    def open_windows(self) -> int:
        return len(self._open)

    @property
    def pending(self) -> int:
        """Events queued or being sent."""
        return self._queued - self._discarded - self.emitted - self.failed

    def _window(self, route: str, now: float, sources: tuple[str, ...], sinks: tuple[str, ...]) -> _Window:
        index = int(now // self.window_s)
        win = self._open.get(route)
        if win is not None:
            if index <= win.index:  # the same window (or the clock stepped back: stay in it)
                return win
            del self._open[route]
            self._put(_Complete(win, win.end))
        start = index * self.window_s
        end = start + self.window_s
        run_id = str(generate_new_uuid(datetime.fromtimestamp(now, UTC)))
        win = self._open[route] = _Window(route, index, run_id, start, end)
        self._put(_Start(route, run_id, now, start, end, sources, sinks))
        return win

    def _put(self, item: _Start | _Complete) -> None:
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self.dropped += 1
            return
        self._queued += 1

    def _note_failed(self) -> None:
        self._note_errors += 1
        if self._note_errors == 1 or self._note_errors % 10_000 == 0:
            log.exception("openlineage note failed", extra={"times": self._note_errors})

    async def start(self) -> None:
        """Start the sending thread and the ticker that closes windows as they end."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="openlineage", daemon=True)
            self._thread.start()
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="openlineage-ticker")

    async def _tick(self) -> None:
        period = min(TICK_MAX_S, self.window_s / 4)
        while True:
            await asyncio.sleep(period)
            self.close_due()

    async def stop(self, grace_s: float = 5.0) -> None:
        """Close the open windows (COMPLETE), send what is queued within ``grace_s``, count the rest as
        dropped, and let the worker finish (it is not waited for beyond ``grace_s``: a hung request is
        left to its time-out)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, grace_s)
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        now = self._clock()
        for win in list(self._open.values()):
            self._put(_Complete(win, min(now, win.end)))
        self._open.clear()
        thread = self._thread
        if thread is not None:
            while self.pending > 0 and loop.time() < deadline and thread.is_alive():
                await asyncio.sleep(0.01)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._discarded += 1
                self.dropped += 1
        if thread is not None:
            self._queue.put_nowait(None)  # the queue was just emptied: there is room
            while thread.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.01)
        else:
            with contextlib.suppress(Exception):
                self.client.close(0)
        if self.dropped or self.failed:
            log.warning(
                "openlineage events not sent",
                extra={"emitted": self.emitted, "failed": self.failed, "dropped": self.dropped},
            )

    # -- on the worker thread -------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                break
            try:
                self.client.emit(self._event(item))
            except Exception as exc:
                self.failed += 1
                self._log_failure(exc)
            else:
                self.emitted += 1
        try:
            self.client.close(0)
        except Exception:
            log.exception("openlineage transport close failed")

    def _log_failure(self, exc: Exception) -> None:
        self._failures_unlogged += 1
        now = time.monotonic()
        if self._last_failure_log and now - self._last_failure_log < FAILURE_LOG_EVERY_S:
            return
        self._last_failure_log = now
        log.warning(
            "openlineage events could not be sent",
            extra={
                "error": f"{type(exc).__name__}: {str(exc)[:300]}",
                "failures": self._failures_unlogged,
                "failed": self.failed,
                "dropped": self.dropped,
            },
        )
        self._failures_unlogged = 0

    def _event(self, item: _Start | _Complete) -> RunEvent:
        ns, producer = self.namespace, self.producer
        if isinstance(item, _Start):
            route, run_id, start, end = item.route, item.run_id, item.start, item.end
            state, at = RunState.START, item.at
            inputs = [InputDataset(ns, SOURCE_PREFIX + s) for s in item.sources]
            outputs = [OutputDataset(ns, SINK_PREFIX + s) for s in item.sinks]
            extra: dict[str, RunFacet] = {}
        else:
            win = item.window
            route, run_id, start, end = win.route, win.run_id, win.start, win.end
            state, at = RunState.COMPLETE, item.at
            inputs = [
                InputDataset(
                    ns,
                    SOURCE_PREFIX + source,
                    inputFacets={
                        "inputStatistics": input_statistics_input_dataset.InputStatisticsInputDatasetFacet(
                            rowCount=sum(counts.values()), producer=producer
                        )
                    },
                )
                for source, counts in win.by_source.items()
            ]
            outputs = [
                OutputDataset(
                    ns,
                    SINK_PREFIX + sink,
                    outputFacets={
                        "outputStatistics": output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(
                            rowCount=win.deliveries.get(sink, {}).get("delivered", 0), producer=producer
                        )
                    },
                )
                for sink in win.sinks
            ]
            facet = RouteWindowRunFacet(
                windowSeconds=self.window_s,
                messages=dict(win.messages),
                messagesBySource={s: dict(c) for s, c in win.by_source.items()},
                deliveries={s: dict(c) for s, c in win.deliveries.items()},
                producer=producer,
            )
            facet._schemaURL = self.facet_schema_url
            extra = {FACET_KEY: facet}
        run_facets: dict[str, RunFacet] = {
            "nominalTime": nominal_time_run.NominalTimeRunFacet(
                nominalStartTime=_iso(start), nominalEndTime=_iso(end), producer=producer
            ),
            "processing_engine": processing_engine_run.ProcessingEngineRunFacet(
                version=__version__,
                name="connector-gateway",
                openlineageAdapterVersion=CLIENT_VERSION,
                producer=producer,
            ),
            **extra,
        }
        return RunEvent(
            eventType=state,
            eventTime=_iso(at),
            run=Run(runId=run_id, facets=run_facets),
            job=Job(namespace=ns, name=route, facets=dict(self._job_facets)),
            inputs=inputs,
            outputs=outputs,
            producer=producer,
        )
