"""End to end: authorisations relayed in line to a real upstream host over TCP, and 91 when none answers.

The upstream is a real TCP server speaking pyiso8583 with a 2-byte length
prefix, on loopback. It answers some requests late so that responses come back
out of order on its one connection, and never answers others.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import iso8583
import pytest
from iso8583.specs import default_ascii as spec

from tests.e2e.test_iso8583 import PANS, exchange, fields_of, read_exact
from tests.support import TEST_KEY, Gateway, free_port, wait_port, wait_until

pytestmark = pytest.mark.e2e

LATE = "000001"  # answered only once two more requests came, so their responses overtake it
STALL = "000009"  # never answered
AFTER = "000020"  # answered 1.5 s late (the gateway gives up after 1 s); its reversal after 0.8 s
DECLINED_ABOVE = 100_000  # DE4 in minor units: 1,000.00 and more is declined (05)


class Upstream:
    """A real ISO 8583 host: 0110 with DE38 naming the STAN, 05 above the limit, late or silent on cue."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.received: list[str] = []
        self.connections = 0
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> Upstream:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    n = int.from_bytes(read_exact(conn, 2), "big")
                    request, _ = iso8583.decode(read_exact(conn, n), spec)
                except (ConnectionError, OSError):
                    return
                self.received.append(f"{request['t']}:{request['11']}")
                if request["11"] == STALL:
                    continue
                threading.Thread(target=self._answer, args=(conn, request), daemon=True).start()

    def _answer(self, conn: socket.socket, request: dict[str, str]) -> None:
        if request["11"] == LATE:
            deadline = time.monotonic() + 5
            while len(self.received) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        elif request["11"] == AFTER:
            time.sleep(1.5 if request["t"] == "0100" else 0.8)  # the late 0110 lands while the 0400 waits
        code = "05" if int(request["4"]) >= DECLINED_ABOVE else "00"
        response = {k: request[k] for k in ("2", "3", "4", "7", "11", "32", "37", "41", "49") if k in request}
        answer = "0410" if request["t"] == "0400" else "0110"
        response.update({"t": answer, "39": code, "38": "AU" + request["11"][-4:]})
        raw, _ = iso8583.encode(response, spec)
        with self._lock, contextlib.suppress(OSError):  # the gateway may have given up on it
            conn.sendall(len(raw).to_bytes(2, "big") + bytes(raw))


@pytest.fixture
def acquirer(tmp_path: Path) -> Iterator[tuple[Gateway, int, Upstream]]:
    with Upstream() as host:
        port = free_port()
        gw = Gateway(
            tmp_path,
            {
                "iso8583": {"address": f"127.0.0.1:{port}"},
                "sinks": {
                    "issuer": {"type": "iso8583", "endpoint": host.endpoint, "timeout_s": 1.0},
                    "down": {"type": "iso8583", "endpoint": f"127.0.0.1:{free_port()}", "timeout_s": 1.0},
                },
                "routes": [
                    {
                        "name": "amex-nowhere",
                        "match": {"protocol": "iso8583", "pan_bin": "378282"},
                        "to": ["down"],
                    },
                    {
                        "name": "authorisations",
                        "match": {"protocol": "iso8583", "message_type": ["0100", "0400"]},
                        "to": ["issuer"],
                    },
                ],
                "unmatched": "reject",
            },
        ).start()
        wait_port(port, proc=gw.proc)
        try:
            yield gw, port, host
        finally:
            gw.stop()


def request(stan: str, amount: str = "000000012500", **more: str) -> dict[str, str]:
    return fields_of("0100__basic.json", **{"11": stan, "37": f"50741431{stan[-4:]}", "4": amount, **more})


def test_the_terminal_gets_the_issuers_answer_matched_by_stan(
    acquirer: tuple[Gateway, int, Upstream],
) -> None:
    gw, port, host = acquirer
    with ThreadPoolExecutor(4) as pool:
        late = pool.submit(exchange, port, request(LATE))
        assert wait_until(lambda: len(host.received) == 1)  # upstream first; the next two overtake it
        fast = pool.submit(exchange, port, request("000002"))
        declined = pool.submit(exchange, port, request("000003", amount="000000250000"))
        answers = [late.result(), fast.result(), declined.result()]
    assert [(a["11"], a["39"], a["38"]) for a in answers] == [
        (LATE, "00", "AU0001"),
        ("000002", "00", "AU0002"),
        ("000003", "05", "AU0003"),
    ]
    assert host.received[0] == f"0100:{LATE}" and len(host.received) == 3
    assert host.connections == 1  # one persistent connection carried them all

    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}) as api:
        item = api.get("/api/messages", params={"control_id": "0100-000003-507414310003"}).json()["items"][0]
        events = api.get(f"/api/messages/{item['id']}/lineage").json()["events"]
        relayed = [e for e in events if e["event"] == "RelayAnswered"]
        assert len(relayed) == 1
        assert relayed[0]["outcome"] == "05" and relayed[0]["actor"] == "sink:issuer"
        assert any(e["event"] == "ReplySent" and e["outcome"] == "05" for e in events)
        assert (
            api.get("/api/deliveries", params={"sink": "issuer"}).json()["items"] == []
        )  # nothing in the outbox


def test_no_answer_in_time_or_no_host_is_91(acquirer: tuple[Gateway, int, Upstream]) -> None:
    gw, port, _ = acquirer
    started = time.monotonic()
    stalled = exchange(port, request(STALL))
    assert (stalled["t"], stalled["11"], stalled["39"]) == ("0110", STALL, "91")
    assert 0.9 <= time.monotonic() - started < 10
    nowhere = exchange(
        port, fields_of("0100__basic.json", **{"2": PANS[4], "11": "000010", "37": "507414310010"})
    )
    assert (nowhere["11"], nowhere["39"]) == ("000010", "91")
    # the host still answers the next one on the same connection
    assert exchange(port, request("000011"))["39"] == "00"
    gw.stop()
    stored = b"".join(p.read_bytes() for p in gw.data_dir.rglob("*") if p.is_file())
    for pan in PANS[:1] + PANS[4:5]:
        assert pan.encode() not in stored and pan not in gw.logs()


def test_a_resent_request_is_answered_again_never_sent_twice(acquirer: tuple[Gateway, int, Upstream]) -> None:
    _, port, host = acquirer
    first = exchange(port, request("000030"))
    again = exchange(port, request("000030"))  # the terminal's own time-out fired: it sends it again
    assert first == again and first["39"] == "00"
    assert host.received.count("0100:000030") == 1


def test_a_late_authorisation_never_answers_the_reversal(acquirer: tuple[Gateway, int, Upstream]) -> None:
    _, port, host = acquirer
    gave_up = exchange(port, request(AFTER))
    assert gave_up["39"] == "91"  # the terminal reverses what it could not see answered
    reversal = fields_of("0400__reversal.json", **{"11": AFTER, "37": request(AFTER)["37"]})
    answer = exchange(port, reversal)  # the late 0110 arrives meanwhile, for the same STAN and terminal
    assert (answer["t"], answer["11"], answer["39"]) == ("0410", AFTER, "00")
    assert host.received.count(f"0400:{AFTER}") == 1
