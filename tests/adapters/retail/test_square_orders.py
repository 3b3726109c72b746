"""The ``square_orders`` sink against a real loopback Orders API that answers in pieces."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
from pydantic import TypeAdapter

from adapters.retail.square_orders import MAX_ORDER_BYTES, SquareOrdersSink
from gateway.config import SinkConfig
from gateway.sink import DeliveryRejected
from gateway.stock import Movement
from tests.gateway.sinks.peers import delivery, envelope

ORDER = {
    "order": {
        "id": "ord-1",
        "location_id": "L1",
        "state": "COMPLETED",
        "line_items": [{"uid": "li-1", "catalog_object_id": "VAR-A", "quantity": "3"}],
    }
}


class PiecewiseAPI:
    """Answers one request with ``body`` in ``pieces`` writes, 0.2 s apart: a client read that returns
    what has arrived so far gets the first piece alone."""

    def __init__(self, body: bytes, pieces: int) -> None:
        self.body = body
        self.pieces = pieces
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.sent = threading.Event()

    def __enter__(self) -> PiecewiseAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()
        self.thread.join(5)

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head = f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {len(self.body)}\r\n\r\n"
            size = -(-len(self.body) // self.pieces)
            parts = [self.body[i : i + size] for i in range(0, len(self.body), size)]
            with contextlib.suppress(OSError):  # a client that stops reading at its limit closes early
                conn.sendall(head.encode() + parts[0])
                for part in parts[1:]:
                    time.sleep(0.2)
                    conn.sendall(part)
                self.sent.set()
                conn.recv(1)  # until the client closes


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("SQUARE_UNIT_TOKEN", "sq-unit-token")
    yield "SQUARE_UNIT_TOKEN"


def sink_for(port: int, token_env: str) -> SquareOrdersSink:
    config = TypeAdapter(SinkConfig).validate_python(
        {
            "type": "square_orders",
            "api_base": f"http://127.0.0.1:{port}",
            "access_token_env": token_env,
            "skus": {"VAR-A": "SKU-A"},
        }
    )
    return SquareOrdersSink("square_api", config)  # type: ignore[arg-type]


def deliver(sink: SquareOrdersSink) -> list[Sequence[Movement]]:
    applied: list[Sequence[Movement]] = []

    async def apply(movements: Sequence[Movement], message_id: str, actor: str) -> None:
        applied.append(movements)

    async def go() -> None:
        sink.apply = apply
        await sink.open()
        try:
            env = envelope(protocol="square", message_type="order.updated")
            env = replace(env, headers={**env.headers, "order_id": "ord-1"})
            await sink.send(delivery(env, sink="square_api"))
        finally:
            await sink.close()

    asyncio.run(go())
    return applied


def test_an_order_answered_in_pieces_is_read_whole(token: str) -> None:
    body = json.dumps(ORDER).encode()
    with PiecewiseAPI(body, pieces=3) as api:
        applied = deliver(sink_for(api.port, token))
        assert api.sent.is_set()
    assert applied == [[Movement("square:L1:order:ord-1:line:li-1:sale", "square:L1", "SKU-A", on_hand=-3)]]


def test_an_answer_over_the_limit_is_rejected_even_in_pieces(token: str) -> None:
    body = json.dumps({**ORDER, "padding": "x" * MAX_ORDER_BYTES}).encode()
    with PiecewiseAPI(body, pieces=4) as api, pytest.raises(DeliveryRejected) as caught:
        deliver(sink_for(api.port, token))
    assert caught.value.code == "too_large"
