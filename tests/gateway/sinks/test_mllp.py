"""MLLPSink against a real MLLP peer on loopback: ACK codes, MSA-2 checks, time-outs, broken connections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from gateway.config import MLLPSinkConfig
from gateway.sink import DeliveryRejected, DeliveryRetryable
from gateway.sinks.mllp import MLLPSink
from tests.gateway.sinks.peers import Peer, TLSFiles, delivery, envelope, hl7
from tests.support import free_port

T = TypeVar("T")


def config(endpoint: str, **kw: Any) -> MLLPSinkConfig:
    return MLLPSinkConfig.model_validate({"type": "mllp", "endpoint": endpoint, **kw})


def with_peer(
    actions: tuple[str, ...],
    test: Callable[[Peer, MLLPSink], Awaitable[T]],
    tls: TLSFiles | None = None,
    **kw: Any,
) -> tuple[Peer, T]:
    """Run ``test(peer, sink)`` with a real peer acting out ``actions`` and an open sink pointed at it."""

    async def main() -> tuple[Peer, T]:
        async with Peer(*actions, tls=tls) as peer:
            sink = MLLPSink("lab", config(peer.endpoint, **kw))
            await sink.open()
            try:
                return peer, await test(peer, sink)
            finally:
                await sink.close()

    return asyncio.run(main())


def send(control_id: str) -> Callable[[Peer, MLLPSink], Awaitable[None]]:
    async def go(peer: Peer, sink: MLLPSink) -> None:
        await sink.send(delivery(envelope(control_id)))

    return go


@pytest.mark.parametrize("code", ["AA", "CA"])
def test_positive_ack_is_delivered_and_the_connection_kept(code: str) -> None:
    async def go(peer: Peer, sink: MLLPSink) -> None:
        await sink.send(delivery(envelope("M1")))
        await sink.send(delivery(envelope("M2")))

    peer, _ = with_peer((code, code), go)
    assert peer.received == [(0, "M1"), (1 - 1, "M2")]
    assert peer.connections == 1


@pytest.mark.parametrize("code", ["AE", "CE"])
def test_application_error_is_rejected(code: str) -> None:
    with pytest.raises(DeliveryRejected) as info:
        with_peer((f"{code}:Patient DOE^JANE unknown",), send("M1"))
    assert info.value.code == f"ack_{code}"
    assert "DOE" not in str(info.value)


def test_application_error_is_retried_when_configured() -> None:
    with pytest.raises(DeliveryRetryable) as info:
        with_peer(("AE",), send("M1"), on_ae="retry")
    assert info.value.code == "ack_AE"


def test_negative_ack_keeps_the_connection() -> None:
    async def go(peer: Peer, sink: MLLPSink) -> None:
        with pytest.raises(DeliveryRejected):
            await sink.send(delivery(envelope("M1")))
        await sink.send(delivery(envelope("M2")))

    peer, _ = with_peer(("AE", "AA"), go)
    assert peer.connections == 1


@pytest.mark.parametrize("code", ["AR", "CR"])
def test_reject_is_retryable(code: str) -> None:
    with pytest.raises(DeliveryRetryable) as info:
        with_peer((code,), send("M1"))
    assert info.value.code == f"ack_{code}"


def test_unknown_ack_code_is_retryable() -> None:
    with pytest.raises(DeliveryRetryable) as info:
        with_peer(("ZZ",), send("M1"))
    assert info.value.code == "ack_unknown"


def test_msa2_mismatch_drops_the_connection() -> None:
    async def go(peer: Peer, sink: MLLPSink) -> None:
        with pytest.raises(DeliveryRetryable) as info:
            await sink.send(delivery(envelope("M1")))
        assert info.value.code == "ack_mismatch"
        await sink.send(delivery(envelope("M2")))

    peer, _ = with_peer(("mismatch", "AA"), go)
    assert peer.received == [(0, "M1"), (1, "M2")]
    assert 0 in peer.eof


def test_timeout_then_next_message_never_reads_the_late_ack() -> None:
    """Message 1's ACK comes after the time-out; message 2, sent after it, must get its own ACK."""

    async def go(peer: Peer, sink: MLLPSink) -> float:
        started = time.monotonic()
        with pytest.raises(DeliveryRetryable) as info:
            await sink.send(delivery(envelope("M1")))
        elapsed = time.monotonic() - started
        assert info.value.code == "timeout"
        await asyncio.wait_for(peer.late_sent.wait(), 30)  # the late ACK for M1 is now on the wire
        await sink.send(delivery(envelope("M2")))  # raises ack_mismatch if it read M1's ACK
        return elapsed

    # the ACK comes 1 s after M1 and the time-out is 0.2 s: the wait ends with the time-out, well before
    # the ACK (a bound as close as 0.4 s is missed on a busy machine, where timers fire late)
    peer, elapsed = with_peer(("late:1.0", "AA"), go, timeout_s=0.2)
    assert 0.15 < elapsed < 1.0
    assert 0 in peer.eof  # the sink closed the timed-out connection ...
    assert peer.received == [(0, "M1"), (1, "M2")]  # ... and sent M2 on a fresh one


def test_stalled_peer_times_out() -> None:
    with pytest.raises(DeliveryRetryable) as info:
        with_peer(("stall",), send("M1"), timeout_s=0.2)
    assert info.value.code == "timeout"


def test_peer_closing_without_ack_is_retryable() -> None:
    with pytest.raises(DeliveryRetryable) as info:
        with_peer(("close",), send("M1"))
    assert info.value.code == "connection_closed"


def test_idle_connection_closed_by_peer_is_replaced() -> None:
    async def go(peer: Peer, sink: MLLPSink) -> None:
        await sink.send(delivery(envelope("M1")))
        await asyncio.sleep(0.05)  # the peer's close reaches the idle connection
        await sink.send(delivery(envelope("M2")))

    peer, _ = with_peer(("AA+close", "AA"), go)
    assert peer.received == [(0, "M1"), (1, "M2")]


def test_connection_refused_is_retryable() -> None:
    async def go() -> None:
        sink = MLLPSink("lab", config(f"mllp://127.0.0.1:{free_port()}"))
        await sink.open()
        try:
            await sink.send(delivery())
        finally:
            await sink.close()

    with pytest.raises(DeliveryRetryable) as info:
        asyncio.run(go())
    assert info.value.code == "connect_refused"


def test_oversized_ack_is_refused() -> None:
    with pytest.raises(DeliveryRetryable) as info:
        with_peer(("big",), send("M1"))
    assert info.value.code == "ack_too_large"


def test_reply_that_is_not_an_ack_is_retryable() -> None:
    with pytest.raises(DeliveryRetryable) as info:
        with_peer(("garbage",), send("M1"))
    assert info.value.code == "ack_invalid"


def test_pool_never_exceeds_concurrency() -> None:
    async def go(peer: Peer, sink: MLLPSink) -> None:
        await asyncio.gather(*(sink.send(delivery(envelope(f"M{i}"))) for i in range(8)))

    peer, _ = with_peer(tuple(["slow:0.03"] * 8), go, concurrency=2)
    assert sorted(c for _, c in peer.received) == sorted(f"M{i}" for i in range(8))
    assert peer.connections == 2
    assert peer.max_open == 2


def test_frame_carries_the_delivered_body() -> None:
    """The transformed body is what goes on the wire, in one MLLP frame."""
    env = envelope("M9")
    body = hl7("M9", "ADT^A08")

    async def go(peer: Peer, sink: MLLPSink) -> None:
        await sink.send(delivery(env, body=body))

    peer, _ = with_peer(("AA",), go)
    assert peer.received == [(0, "M9")]


def test_mllps_with_ca_file(tls: TLSFiles) -> None:
    peer, _ = with_peer(("AA",), send("M1"), tls=tls, ca_file=str(tls.ca))
    assert peer.received == [(0, "M1")]
    with pytest.raises(DeliveryRetryable) as info:
        with_peer(("AA",), send("M1"), tls=tls)  # the test CA is not in the system's trust store
    assert info.value.code == "tls_error"


def test_check() -> None:
    async def go(peer: Peer, sink: MLLPSink) -> bool:
        return await sink.check()

    assert with_peer((), go)[1] is True
    closed = MLLPSink("lab", config(f"mllp://127.0.0.1:{free_port()}"))
    assert asyncio.run(closed.check()) is False
