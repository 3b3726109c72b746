"""MemorySink basics, and the registry: every sink type in the config has its class and back."""

from __future__ import annotations

import asyncio
import time
import typing
from pathlib import Path

import pytest
from pydantic import TypeAdapter

import gateway.sinks
from adapters.retail.square_orders import SquareOrdersSink
from gateway.config import SinkConfig
from gateway.sink import DeliveryRejected, DeliveryRetryable, Sink
from gateway.sinks import SINK_TYPES, FileSink, HTTPSink, MemorySink, MLLPSink, build_sink
from tests.gateway.sinks.peers import delivery


def test_memory_sink_records_deliveries() -> None:
    async def go() -> MemorySink:
        sink = MemorySink("mem")
        await sink.open()
        first, second = delivery(), delivery()
        await sink.send(first)
        await sink.send(second)
        assert await sink.check() is True
        sink.healthy = False
        assert await sink.check() is False
        await sink.close()
        assert sink.deliveries == [first, second]
        assert sink.bodies == [first.body, second.body]
        return sink

    sink = asyncio.run(go())
    assert sink.opened and sink.closed


def test_memory_sink_fails_on_request() -> None:
    async def go() -> MemorySink:
        sink = MemorySink("mem")
        sink.fail_next(2)
        for _ in range(2):
            with pytest.raises(DeliveryRetryable):
                await sink.send(delivery())
        sink.fail_next(1, retryable=False, code="poison")
        with pytest.raises(DeliveryRejected) as info:
            await sink.send(delivery())
        assert info.value.code == "poison"
        await sink.send(delivery())
        return sink

    sink = asyncio.run(go())
    assert sink.attempts == 4
    assert len(sink.deliveries) == 1


def test_memory_sink_delay() -> None:
    sink = MemorySink("mem")
    sink.delay_s = 0.05
    started = time.monotonic()
    asyncio.run(sink.send(delivery()))
    assert time.monotonic() - started >= 0.05


def _config_types() -> set[str]:
    union = typing.get_args(SinkConfig)[0]
    return {typing.get_args(m.model_fields["type"].annotation)[0] for m in typing.get_args(union)}


def test_every_configured_type_has_a_sink() -> None:
    from adapters import BUILTIN_SINKS

    assert set(SINK_TYPES) | set(BUILTIN_SINKS) == _config_types()
    assert not set(SINK_TYPES) & set(BUILTIN_SINKS)


@pytest.mark.parametrize(
    ("raw", "cls"),
    [
        ({"type": "http", "endpoint": "https://ehr.example.org/hl7"}, HTTPSink),
        ({"type": "mllp", "endpoint": "mllp://lab.example.org:2575"}, MLLPSink),
        ({"type": "file", "directory": "out"}, FileSink),
        ({"type": "memory"}, MemorySink),
        ({"type": "square_orders", "skus": {"VAR-1": "SKU-1"}}, SquareOrdersSink),
    ],
)
def test_build_sink(raw: dict[str, str], cls: type, tmp_path: Path) -> None:
    config = TypeAdapter(SinkConfig).validate_python(raw)
    sink: Sink = build_sink("s1", config)
    assert isinstance(sink, cls)
    assert sink.name == "s1"


def test_public_surface() -> None:
    assert set(gateway.sinks.__all__) == {
        "SINK_TYPES",
        "FileSink",
        "HTTPSink",
        "MLLPSink",
        "MemorySink",
        "build_sink",
    }
