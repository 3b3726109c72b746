"""OpenLineage run events per route and window, through the real openlineage-python client.

The file transport writes to a temporary file that the tests read back; the HTTP transport talks to
a real loopback server that answers 500 or hangs, to show that a down backend costs intake nothing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from openlineage.client.transport.file import FileConfig, FileTransport

from gateway.errors import ConfigError
from gateway.openlineage import (
    FACET_KEY,
    FACET_SCHEMA,
    UNROUTED_JOB,
    OpenLineageEmitter,
    build_emitter,
    build_transport,
)

NS = "connector-gateway://test"
T0 = 1_700_000_040.0
"""A window boundary for 60 s windows (a multiple of 60)."""


@dataclass(frozen=True)
class Cfg:
    """What the proposed ``OpenLineageConfig`` model gives :func:`build_transport`."""

    transport: str = "http"
    url: str | None = None
    endpoint: str = "api/v1/lineage"
    path: Path | None = None
    namespace: str | None = None
    window_s: float = 60.0
    max_buffer: int = 10_000
    api_key_env: str | None = None
    timeout_s: float = 5.0
    retries: int = 0


def file_emitter(path: Path, clock: Callable[[], float], **kw: Any) -> OpenLineageEmitter:
    return OpenLineageEmitter(
        NS, FileTransport(FileConfig(log_file_path=str(path), append=True)), clock=clock, **kw
    )


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def runs_of(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Events by run id, in file order."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        runs.setdefault(e["run"]["runId"], []).append(e)
    return runs


def names(datasets: list[dict[str, Any]]) -> list[str]:
    return [d["name"] for d in datasets]


def test_runs_per_route_and_window_written_to_a_file(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"
    now = [T0 + 1.0]

    async def go() -> OpenLineageEmitter:
        em = file_emitter(path, lambda: now[0], window_s=60)
        await em.start()
        # window 1: two routes, plus a message that took no route
        em.note_routed("adt-to-ehr", "hl7v2:mllp", ["ehr", "lab"], "accepted")
        em.note_routed("adt-to-ehr", "hl7v2:mllp", ["ehr", "lab"], "accepted")
        em.note_routed("adt-to-ehr", "hl7v2:http", ["ehr", "lab"], "accepted")
        em.note_routed("payments", "iso20022:http", ["core"], "accepted")
        em.note_routed("", "hl7v2:mllp", [], "invalid")
        em.note_delivery("adt-to-ehr", "ehr", "delivered")
        em.note_delivery("adt-to-ehr", "ehr", "delivered")
        em.note_delivery("adt-to-ehr", "lab", "failed")
        em.note_delivery("adt-to-ehr", "lab", "dead")
        em.note_delivery("payments", "core", "delivered")
        assert em.open_windows == 3
        # window 2: one route; its first note closes its own window 1, the clock closes the others
        now[0] = T0 + 61.0
        em.note_routed("adt-to-ehr", "hl7v2:mllp", ["ehr"], "accepted")
        em.note_delivery("adt-to-ehr", "ehr", "delivered")
        assert em.close_due() == 2
        assert em.open_windows == 1
        now[0] = T0 + 62.5
        await em.stop()
        return em

    em = asyncio.run(go())
    assert (em.emitted, em.failed, em.dropped) == (8, 0, 0)

    events = read_events(path)
    assert len(events) == 8
    runs = runs_of(events)
    assert len(runs) == 4
    for run_id, evs in runs.items():
        assert uuid.UUID(run_id)
        assert [e["eventType"] for e in evs] == ["START", "COMPLETE"], evs
        assert len({e["job"]["name"] for e in evs}) == 1
    by_job: dict[str, list[list[dict[str, Any]]]] = {}
    for evs in runs.values():
        by_job.setdefault(evs[0]["job"]["name"], []).append(evs)
    assert sorted(by_job) == sorted(["adt-to-ehr", "payments", UNROUTED_JOB])
    assert [len(by_job[j]) for j in ("adt-to-ehr", "payments", UNROUTED_JOB)] == [2, 1, 1]

    for e in events:
        assert e["job"]["namespace"] == NS
        assert all(d["namespace"] == NS for d in e["inputs"] + e["outputs"])
        assert e["job"]["facets"]["jobType"]["jobType"] == "ROUTE"

    # adt-to-ehr, window 1
    (start, complete), (start2, complete2) = by_job["adt-to-ehr"]
    assert start["eventTime"] == "2023-11-14T22:14:01+00:00"
    assert names(start["inputs"]) == ["source/hl7v2:mllp"]
    assert names(start["outputs"]) == ["sink/ehr", "sink/lab"]
    assert FACET_KEY not in start["run"]["facets"]
    nominal = complete["run"]["facets"]["nominalTime"]
    assert nominal["nominalStartTime"] == "2023-11-14T22:14:00+00:00"
    assert nominal["nominalEndTime"] == "2023-11-14T22:15:00+00:00"
    assert complete["eventTime"] == nominal["nominalEndTime"]
    assert names(complete["inputs"]) == ["source/hl7v2:mllp", "source/hl7v2:http"]
    assert [i["inputFacets"]["inputStatistics"]["rowCount"] for i in complete["inputs"]] == [2, 1]
    assert names(complete["outputs"]) == ["sink/ehr", "sink/lab"]
    assert [o["outputFacets"]["outputStatistics"]["rowCount"] for o in complete["outputs"]] == [2, 0]
    facet = complete["run"]["facets"][FACET_KEY]
    assert facet["messages"] == {"accepted": 3}
    assert facet["messagesBySource"] == {"hl7v2:mllp": {"accepted": 2}, "hl7v2:http": {"accepted": 1}}
    assert facet["deliveries"] == {"ehr": {"delivered": 2}, "lab": {"failed": 1, "dead": 1}}
    assert facet["windowSeconds"] == 60.0
    assert facet["_producer"] == complete["producer"]
    assert facet["_schemaURL"].endswith("#/$defs/RouteWindowRunFacet")

    # adt-to-ehr, window 2: closed early by stop
    assert start2["run"]["runId"] != start["run"]["runId"]
    assert complete2["eventTime"] == "2023-11-14T22:15:02.500000+00:00"
    assert complete2["run"]["facets"]["nominalTime"]["nominalEndTime"] == "2023-11-14T22:16:00+00:00"
    assert complete2["run"]["facets"][FACET_KEY]["messages"] == {"accepted": 1}
    assert complete2["run"]["facets"][FACET_KEY]["deliveries"] == {"ehr": {"delivered": 1}}
    assert names(complete2["outputs"]) == ["sink/ehr"]

    # payments, window 1
    (p_start, p_complete) = by_job["payments"][0]
    assert names(p_start["inputs"]) == ["source/iso20022:http"]
    assert names(p_complete["outputs"]) == ["sink/core"]
    assert p_complete["run"]["facets"][FACET_KEY]["messages"] == {"accepted": 1}
    assert p_complete["run"]["facets"][FACET_KEY]["deliveries"] == {"core": {"delivered": 1}}

    # a message without a route has no output
    (u_start, u_complete) = by_job[UNROUTED_JOB][0]
    assert u_start["outputs"] == []
    assert names(u_complete["inputs"]) == ["source/hl7v2:mllp"]
    assert u_complete["outputs"] == []
    assert u_complete["run"]["facets"][FACET_KEY]["messages"] == {"invalid": 1}

    # every COMPLETE facet matches the schema the module publishes for it
    jsonschema = pytest.importorskip("jsonschema")
    own = FACET_SCHEMA["$defs"]["RouteWindowRunFacet"]["allOf"][1]
    for evs in runs.values():
        jsonschema.validate(evs[1]["run"]["facets"][FACET_KEY], own)


def test_the_ticker_closes_windows_on_the_real_clock(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"

    def completes() -> list[dict[str, Any]]:
        return [e for e in read_events(path) if e["eventType"] == "COMPLETE"]

    async def go() -> OpenLineageEmitter:
        em = file_emitter(path, time.time, window_s=0.2)
        await em.start()
        em.note_routed("a", "pos_json:http", ["erp"], "accepted")
        em.note_routed("b", "poslog:drop", ["erp", "bi"], "accepted")
        deadline = time.monotonic() + 30
        while len(completes()) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert sorted(e["job"]["name"] for e in completes()) == ["a", "b"]  # before stop
        em.note_routed("a", "pos_json:http", ["erp"], "refused")
        await em.stop()
        return em

    em = asyncio.run(go())
    assert (em.emitted, em.failed, em.dropped) == (6, 0, 0)
    runs = runs_of(read_events(path))
    assert [e["eventType"] for evs in runs.values() for e in evs] == ["START", "COMPLETE"] * 3
    a_runs = [evs for evs in runs.values() if evs[0]["job"]["name"] == "a"]
    assert [evs[1]["run"]["facets"][FACET_KEY]["messages"] for evs in a_runs] == [
        {"accepted": 1},
        {"refused": 1},
    ]


class Backend:
    """A loopback OpenLineage endpoint that answers 500, or hangs until closed."""

    def __init__(self, hang: bool) -> None:
        self.requests = 0
        self.auth: list[str] = []
        self.release = threading.Event()
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                backend.requests += 1
                backend.auth.append(self.headers.get("Authorization", ""))
                if hang:
                    backend.release.wait(10)
                self.send_response(500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def failing_backend() -> Iterator[Backend]:
    b = Backend(hang=False)
    yield b
    b.close()


@pytest.fixture
def hung_backend() -> Iterator[Backend]:
    b = Backend(hang=True)
    yield b
    b.close()


def note_many(em: OpenLineageEmitter, routes: int) -> float:
    """1,000 notes spread over ``routes`` routes; the seconds they took."""
    t = time.perf_counter()
    for i in range(500):
        route = f"route-{i % routes}"
        em.note_routed(route, "hl7v2:mllp", ["ehr", "lab"], "accepted")
        em.note_delivery(route, "ehr", "delivered" if i % 3 else "failed")
    return time.perf_counter() - t


def test_a_backend_answering_500_counts_failures_and_costs_intake_nothing(failing_backend: Backend) -> None:
    cfg = Cfg(url=failing_backend.url, api_key_env="OL_TEST_KEY", timeout_s=2.0, retries=0)
    transport = build_transport(cfg, environ={"OL_TEST_KEY": "not-a-real-key"})

    async def go() -> tuple[OpenLineageEmitter, float]:
        em = OpenLineageEmitter(NS, transport, window_s=60, clock=lambda: T0 + 5)
        await em.start()
        took = note_many(em, routes=10)
        await em.stop(grace_s=10)
        return em, took

    em, took = asyncio.run(go())
    assert took < 0.5, f"1,000 notes took {took:.3f} s"
    assert em.emitted == 0
    assert em.failed == 20  # 10 routes: a START and a COMPLETE each, every one answered 500
    assert em.dropped == 0
    assert failing_backend.requests == 20
    assert set(failing_backend.auth) == {"Bearer not-a-real-key"}


def test_a_hung_backend_fills_the_buffer_then_drops(hung_backend: Backend) -> None:
    transport = build_transport(Cfg(url=hung_backend.url, timeout_s=3.0, retries=0))

    async def go() -> tuple[OpenLineageEmitter, float, float]:
        em = OpenLineageEmitter(NS, transport, window_s=60, max_buffer=4, clock=lambda: T0 + 5)
        await em.start()
        took = note_many(em, routes=20)
        deadline = time.monotonic() + 30
        while hung_backend.requests == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        t = time.perf_counter()
        await em.stop(grace_s=0.3)
        return em, took, time.perf_counter() - t

    em, took, stopping = asyncio.run(go())
    assert took < 0.5, f"1,000 notes took {took:.3f} s"
    assert stopping < 2.0, f"stop took {stopping:.3f} s"
    assert hung_backend.requests == 1  # the worker is stuck on the first event
    assert em.emitted == 0
    assert em.dropped >= 40 - 5  # 20 STARTs and 20 COMPLETEs; at most 4 queued and 1 in flight
    hung_backend.release.set()
    assert em._thread is not None
    em._thread.join(10)
    assert not em._thread.is_alive()
    assert em.emitted == 0
    assert em.failed + em.dropped == 40
    assert em.failed >= 1


def test_the_buffer_is_bounded_and_counts_what_it_drops(tmp_path: Path) -> None:
    path = tmp_path / "lineage.jsonl"

    async def go() -> OpenLineageEmitter:
        em = file_emitter(path, lambda: T0 + 5, window_s=60, max_buffer=3)  # never started: nothing sends
        for i in range(10):
            em.note_routed(f"route-{i}", "iso8583:tcp", ["switch"], "accepted")
        assert em.dropped == 7
        assert em.pending == 3
        await em.stop(grace_s=0.1)
        return em

    em = asyncio.run(go())
    assert (em.emitted, em.failed, em.dropped) == (0, 0, 20)
    assert not path.exists()


def test_notes_never_raise_and_stop_ends_them(tmp_path: Path) -> None:
    def broken_clock() -> float:
        raise RuntimeError("clock gone")

    async def go() -> None:
        em = file_emitter(tmp_path / "a.jsonl", broken_clock)
        em.note_routed("r", "hl7v2:mllp", ["ehr"], "accepted")
        em.note_delivery("r", "ehr", "delivered")
        assert em.close_due() == 0
        em2 = file_emitter(tmp_path / "b.jsonl", lambda: T0)
        await em2.start()
        await em2.stop()
        em2.note_routed("r", "hl7v2:mllp", ["ehr"], "accepted")
        assert em2.open_windows == 0
        assert em2.pending == 0

    asyncio.run(go())


def test_a_failing_file_transport_is_counted(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")

    async def go() -> OpenLineageEmitter:
        em = file_emitter(blocker / "lineage.jsonl", lambda: T0)
        await em.start()
        em.note_routed("r", "hl7v2:mllp", ["ehr"], "accepted")
        await em.stop(grace_s=5)
        return em

    em = asyncio.run(go())
    assert (em.emitted, em.failed, em.dropped) == (0, 2, 0)


def test_build_from_settings(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="url"):
        build_transport(Cfg())
    with pytest.raises(ConfigError, match="path"):
        build_transport(Cfg(transport="file"))
    with pytest.raises(ConfigError, match="OL_MISSING"):
        build_transport(Cfg(url="http://127.0.0.1:9", api_key_env="OL_MISSING"), environ={})
    em = build_emitter(
        Cfg(transport="file", path=tmp_path / "ol" / "events.jsonl", window_s=30, max_buffer=5)
    )
    assert em.namespace.startswith("connector-gateway://")
    assert (em.window_s, em.max_buffer) == (30.0, 5)
    assert (tmp_path / "ol").is_dir()
