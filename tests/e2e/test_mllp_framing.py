"""End to end: MLLP framing edge cases, and what ``gateway send --mllp`` puts in a frame, against the real
``gateway serve`` over real TCP sockets."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import FIXTURES
from tests.support import EB, SB, Gateway, read_frame, wait_until, with_control_id

pytestmark = pytest.mark.e2e

HL7 = FIXTURES / "hl7"


def message(name: str, control_id: str) -> bytes:
    """A fixture with CR segment ends and MSH-10 set to ``control_id``."""
    return with_control_id((HL7 / name).read_bytes(), control_id)


def msa(ack: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-2 of an ACK."""
    seg = next(s for s in ack.split(b"\r") if s.startswith(b"MSA|"))
    fields = seg.decode().split("|")
    return fields[1], fields[2]


def read_frames(s: socket.socket) -> list[bytes]:
    """Every frame the gateway sends until it closes the connection."""
    buf = b""
    s.settimeout(10)
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        buf += chunk
    return [f.split(EB, 1)[0] for f in buf.split(SB)[1:]]


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    g = Gateway(
        tmp_path_factory.mktemp("gw"),
        {"mllp": {"max_frame_bytes": 200_000, "frame_timeout_s": 2.0, "idle_timeout_s": 2.0}},
    ).start()
    yield g
    g.stop()


def log_records(gw: Gateway) -> list[dict[str, object]]:
    return [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]


def stored(api: httpx.Client, control_id: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = api.get("/api/messages", params={"control_id": control_id}).json()[
        "items"
    ]
    return items


def test_a_start_byte_inside_an_open_frame_abandons_it(gw: Gateway, api: httpx.Client) -> None:
    """The cut-off message is neither stored nor answered; the one that follows is taken and answered."""
    canary = message("adt_a01__canary.hl7", "E2E-ABANDONED")
    part = canary[: canary.index(b"CANARYPATIENT") + len(b"CANARYPATIENT")]
    full = message("adt_a04__register.hl7", "E2E-AFTER-ABANDONED")
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(SB + part)
        s.sendall(SB + full + EB)
        replies = read_frames(s)  # the idle time-out closes the connection after the last reply
    assert [msa(r) for r in replies] == [("AA", "E2E-AFTER-ABANDONED")]
    assert stored(api, "E2E-ABANDONED") == []
    (item,) = stored(api, "E2E-AFTER-ABANDONED")
    assert item["status"] == "accepted" and item["message_type"] == "ADT^A04"
    assert wait_until(lambda: "mllp frame abandoned" in gw.logs(), 30)
    (warning,) = [r for r in log_records(gw) if "abandoned" in str(r.get("msg"))]
    assert warning["level"] == "warning" and set(warning) == {"ts", "level", "logger", "msg", "peer"}
    assert "CANARYPATIENT" not in gw.logs() and "E2E-ABANDONED" not in gw.logs()


def oversized(control_id: str) -> bytes:
    return message("adt_a01__basic.hl7", control_id) + b"\rNTE|1||" + b"x" * 250_000


def test_frames_before_an_oversized_one_are_answered_in_order_then_it_is_refused(
    gw: Gateway, api: httpx.Client
) -> None:
    g1 = message("adt_a04__register.hl7", "E2E-BEFORE-BIG-1")
    g2 = message("adt_a08__update.hl7", "E2E-BEFORE-BIG-2")
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(SB + g1 + EB + SB + g2 + EB + SB + oversized("E2E-BIG-ENDED") + EB)
        replies = read_frames(s)
    assert [msa(r) for r in replies] == [
        ("AA", "E2E-BEFORE-BIG-1"),
        ("AA", "E2E-BEFORE-BIG-2"),
        ("AR", "E2E-BIG-ENDED"),
    ]
    for control_id in ("E2E-BEFORE-BIG-1", "E2E-BEFORE-BIG-2"):
        (item,) = stored(api, control_id)
        assert item["status"] == "accepted"
    assert stored(api, "E2E-BIG-ENDED") == []


def test_a_frame_before_an_unfinished_oversized_one_is_answered_first(gw: Gateway, api: httpx.Client) -> None:
    """The limit is passed before the oversized frame ends; the frame before it is still answered."""
    g1 = message("adt_a04__register.hl7", "E2E-BEFORE-OPEN-BIG")
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        s.sendall(SB + g1 + EB + SB + oversized("E2E-BIG-OPEN"))
        replies = read_frames(s)
    assert [msa(r) for r in replies] == [("AA", "E2E-BEFORE-OPEN-BIG"), ("AR", "E2E-BIG-OPEN")]
    (item,) = stored(api, "E2E-BEFORE-OPEN-BIG")
    assert item["status"] == "accepted"


def test_cli_sends_an_fhs_batch_in_one_frame_and_prints_an_msa_line_per_message(
    gw: Gateway, api: httpx.Client, tmp_path: Path
) -> None:
    """The batch's messages are stored under it, as over HTTP; the reply's ACKs are printed one by one."""
    path = HL7 / "batch__fhs_bhs.hl7"
    r = gw.cli("send", "--mllp", f"127.0.0.1:{gw.mllp_port}", str(path))
    assert r.returncode == 0, r.stderr
    control_ids = ["NWG-BATCH-0001", "NWG-BATCH-0002", "NWG-BATCH-0003"]
    lines = [line.split("\t") for line in r.stdout.splitlines()]
    assert [(name, msa.split("|")[:3]) for name, msa in lines] == [
        (str(path), ["MSA", "AA", cid]) for cid in control_ids
    ]
    parents = set()
    for cid in control_ids:
        (item,) = stored(api, cid)
        parents.add(item["parent_id"])
    assert len(parents) == 1 and None not in parents
    batch = api.get(f"/api/messages/{parents.pop()}").json()
    assert batch["status"] == "batch" and batch["message_type"] == "BATCH:fhs"

    bad = tmp_path / "bad_batch.hl7"
    text = path.read_bytes().replace(b"NWG-BATCH-000", b"E2E-FHS-BAD-000")
    bad.write_bytes(text.replace(b"|E2E-FHS-BAD-0002|P|2.5.1", b"|E2E-FHS-BAD-0002|P|9.9", 1))
    r = gw.cli("send", "--mllp", f"127.0.0.1:{gw.mllp_port}", str(bad))
    assert r.returncode == 1
    codes = [line.split("\t")[1].split("|")[1:3] for line in r.stdout.splitlines()]
    assert [cid for _, cid in codes] == ["E2E-FHS-BAD-0001", "E2E-FHS-BAD-0002", "E2E-FHS-BAD-0003"]
    assert [code for code, _ in codes] == ["AA", "AR", "AA"]


def pipeline(s: socket.socket, payload: bytes, count: int, pause_s: float) -> tuple[list[bytes], list[str]]:
    """Write ``payload`` back to back while another thread reads the ``count`` replies, sleeping ``pause_s``
    after every small read; return the replies and whatever went wrong on either side."""
    replies: list[bytes] = []
    errors: list[str] = []

    def read() -> None:
        buf = b""
        while len(replies) < count:
            try:
                chunk = s.recv(2048)
            except OSError as exc:
                errors.append(f"read: {exc!r}")
                return
            if not chunk:
                errors.append(f"read: end of stream after {len(replies)} replies")
                return
            buf += chunk
            while EB in buf:
                reply, buf = buf.split(EB, 1)
                replies.append(reply.split(SB, 1)[-1])
            time.sleep(pause_s)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for at in range(0, len(payload), 65536):
            s.sendall(payload[at : at + 65536])
    except OSError as exc:
        errors.append(f"write: {exc!r}")
    reader.join(timeout=240)
    return replies, errors


def test_a_pipelining_sender_that_reads_slowly_gets_every_ack(gw: Gateway) -> None:
    """Frames written back to back for longer than frame_timeout_s (2 s), replies read slowly so that the
    listener pauses: every frame is complete, so none is cut off and every message gets its AA, in order."""
    template = message("adt_a04__register.hl7", "E2E-PIPE-XXXXX")
    ids = [f"E2E-PIPE-{i:05d}" for i in range(4000)]
    payload = b"".join(SB + template.replace(b"E2E-PIPE-XXXXX", cid.encode()) + EB for cid in ids)
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=60) as s:
        t0 = time.monotonic()
        # at most 2 KiB read per 30 ms: the ~480 KB of replies take 7 s or more to read, whatever the machine
        replies, errors = pipeline(s, payload, len(ids), pause_s=0.03)
        took = time.monotonic() - t0
    assert errors == []
    assert [msa(r) for r in replies] == [("AA", cid) for cid in ids]
    assert took > 2 * 2.0, "the exchange must outlast the frame time-out to show anything"


def test_restarting_a_frame_does_not_restart_its_clock(gw: Gateway) -> None:
    """A start byte every half second abandons the open frame and opens another: the connection is still
    closed within frame_timeout_s (2 s) of the first start byte, as a frame that is never finished is."""
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        t0 = time.monotonic()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for _ in range(20):
                s.sendall(SB + b"MSH|^~\\&|again")
                time.sleep(0.5)
            s.recv(100)
        assert time.monotonic() - t0 < 2.0 + 3.0


def test_empty_frames_are_keep_alives_not_messages(gw: Gateway, api: httpx.Client) -> None:
    """Empty frames, and frames of only whitespace, get no reply and are not stored, but keep the connection
    open past idle_timeout_s (2 s); the real message sent after them on the same connection gets the one
    reply."""
    real = message("adt_a04__register.hl7", "E2E-AFTER-KEEPALIVE")
    with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
        host, port = s.getsockname()[:2]
        for _ in range(8):
            s.sendall(SB + EB)
            time.sleep(0.5)
        s.sendall(SB + b"\r" + EB + SB + b"\r\n \t\n" + EB)
        s.sendall(SB + EB + SB + real + EB + SB + EB)
        replies = read_frames(s)  # the idle time-out closes the connection after the last reply
    assert len(replies) == 1, replies
    assert msa(replies[0]) == ("AA", "E2E-AFTER-KEEPALIVE")
    (item,) = stored(api, "E2E-AFTER-KEEPALIVE")
    assert item["status"] == "accepted" and item["peer"] == f"{host}:{port}"
    rejected = api.get("/api/messages", params={"status": "rejected", "limit": 1000}).json()["items"]
    assert [r for r in rejected if r["peer"] == f"{host}:{port}"] == []


def tcp_state(s: socket.socket) -> int:
    """The socket's TCP state from ``TCP_INFO`` (Linux): 1 is ESTABLISHED."""
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]


@contextlib.contextmanager
def admitted(port: int, rcvbuf: int = 0, attempts: int = 50) -> Iterator[socket.socket]:
    """A connection the gateway has admitted: one message is answered AA on it. With one connection per
    client, a connection made while the gateway has not yet seen the last one end is refused: try again."""
    hello = message("adt_a04__register.hl7", "E2E-ADMITTED")
    for attempt in range(attempts):
        s = socket.socket()
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        s.settimeout(10)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(SB + hello + EB)
            reply = read_frame(s)
        except ConnectionError:  # refused: closed, reset or a broken pipe
            s.close()
            if attempt == attempts - 1:
                raise
            time.sleep(0.1)
            continue
        with s:
            assert msa(reply)[0] == "AA"
            yield s
        return


def test_a_peer_that_never_reads_is_cut_off_and_its_slot_freed(tmp_path: Path) -> None:
    """A sender that writes frames and never reads its replies: once they pile up the gateway takes no more
    of its frames, resets it idle_timeout_s (2 s) after it stopped reading, and a new connection from the
    same address is then admitted (one connection per client)."""
    g = Gateway(
        tmp_path, {"mllp": {"frame_timeout_s": 60.0, "idle_timeout_s": 2.0, "max_connections_per_client": 1}}
    ).start()  # the frame time-out is out of the way: this is about the idle one
    try:
        # each message gets a long AE (an ERR repetition per undefined segment), so that the unread replies
        # pass the socket buffers in a few hundred messages
        template = message("adt_a04__register.hl7", "E2E-NOREAD-XXXXXX") + b"".join(
            b"\rXYZ|%d" % i for i in range(150)
        )
        with admitted(g.mllp_port, rcvbuf=4096) as s:
            s.setblocking(False)
            sent, pending = 0, b""
            last_progress = time.monotonic()
            until = last_progress + 15  # then go idle, if the gateway is still taking frames
            while time.monotonic() < until and tcp_state(s) == 1:
                if not pending:
                    ids = [f"E2E-NOREAD-{sent + i:06d}".encode() for i in range(50)]
                    pending = b"".join(SB + template.replace(b"E2E-NOREAD-XXXXXX", cid) + EB for cid in ids)
                    sent += 50
                _, writable, _ = select.select([], [s], [], 0.2)
                if writable:
                    try:
                        n = s.send(pending)
                    except (BrokenPipeError, ConnectionResetError):
                        break
                    pending = pending[n:]
                    last_progress = time.monotonic()
            limit = last_progress + 2.0 + 8.0
            assert wait_until(lambda: tcp_state(s) != 1, max(0.0, limit - time.monotonic())), (
                f"still open {time.monotonic() - last_progress:.1f} s after the last byte sent"
            )
        assert "mllp peer not reading its replies; closed" in g.logs()
        with admitted(g.mllp_port, attempts=1):
            pass
    finally:
        g.stop()


def test_stopping_answers_what_arrived_and_does_not_wait_for_idle_connections(tmp_path: Path) -> None:
    """SIGTERM: frames already received are answered, idle connections are closed at once, and the
    gateway exits well within the listener's 10 s grace (which is for work in flight, not for idlers)."""
    gw = Gateway(tmp_path).start()
    idle = socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=30)
    busy = socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=30)
    try:
        busy.sendall(SB + message("adt_a01__basic.hl7", "STOP-1") + EB)
        assert wait_until(lambda: select.select([busy], [], [], 0)[0] != [], 30)
        busy.sendall(SB + message("adt_a01__basic.hl7", "STOP-2") + EB)
        started = time.monotonic()
        assert gw.stop() == 0
        took = time.monotonic() - started
        assert [msa(f) for f in read_frames(busy)] == [("AA", "STOP-1"), ("AA", "STOP-2")]
        assert idle.recv(100) == b""  # closed, not left open
        assert took < 8, took
    finally:
        idle.close()
        busy.close()
