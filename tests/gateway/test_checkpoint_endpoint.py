"""Signed checkpoints held by an HTTP endpoint: a real server on loopback, a real SQLite store.

The endpoint stores what is POSTed and answers it on GET (JSON lines, or a JSON array); the chain is
held against what it answers exactly as against the file: a rewritten-and-rehashed tail is found, a
forged checkpoint is reported and not trusted, an endpoint that is down gets its checkpoints later,
and the bearer token goes to the endpoint and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.checkpoints import (
    Checkpointer,
    CheckpointSink,
    CheckpointSinkError,
    FileCheckpoints,
    HTTPCheckpoints,
    checkpoint_sinks,
    load_or_create_key,
    load_public_key,
    public_path,
    read_verified,
    sign,
    verify_store,
)
from gateway.errors import ConfigError
from gateway.lineage import EventDraft, seal
from gateway.store.sqlite import SQLiteStore
from tests.gateway.test_store import exchange

TOKEN = "cp-token-7f3a9c1e5b"


class Endpoint:
    """A checkpoint endpoint: POST appends the body, GET answers the bodies as JSON lines (or an array).

    It can be stopped and started again on the same port (an endpoint that is down, then back); with
    ``token`` it answers 401 to a request without ``Authorization: Bearer <token>``.
    """

    def __init__(self, token: str | None = None, post_delay_s: float = 0.0) -> None:
        self.token = token
        self.post_delay_s = post_delay_s
        self.received: list[bytes] = []
        self.served_extra: list[bytes] = []  # served after what was received (a forger's additions)
        self.as_array = False
        self.final_newline = True  # JSON lines: the last one ended by a newline
        self.redirect_to: str | None = None
        self.authorization: list[str] = []
        self.lock = threading.Lock()
        self.port = 0
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/checkpoints"

    def checkpoints(self) -> list[dict[str, Any]]:
        with self.lock:
            return [orjson.loads(b) for b in self.received]

    def start(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _allowed(self) -> bool:
                auth = self.headers.get("Authorization", "")
                with endpoint.lock:
                    endpoint.authorization.append(auth)
                if endpoint.redirect_to is not None:
                    self._answer(302, b"", {"Location": endpoint.redirect_to})
                    return False
                if endpoint.token is not None and auth != f"Bearer {endpoint.token}":
                    self._answer(401, b"")
                    return False
                return True

            def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if not self._allowed():
                    return
                time.sleep(endpoint.post_delay_s)
                with endpoint.lock:
                    endpoint.received.append(body)
                self._answer(201, b"")

            def do_GET(self) -> None:
                if not self._allowed():
                    return
                with endpoint.lock:
                    items = endpoint.received + endpoint.served_extra
                if endpoint.as_array:
                    body = b"[" + b",".join(items) + b"]"
                    self._answer(200, body, {"Content-Type": "application/json"})
                else:
                    body = b"".join(item + b"\n" for item in items)
                    if not endpoint.final_newline:
                        body = body.removesuffix(b"\n")
                    self._answer(200, body, {"Content-Type": "application/x-ndjson"})

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(5)
            self.server = self.thread = None


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    e = Endpoint()
    yield e
    e.stop()


@pytest.fixture
def guarded() -> Iterator[Endpoint]:
    e = Endpoint(token=TOKEN)
    yield e
    e.stop()


def fill(store: SQLiteStore, first: int, count: int) -> None:
    """``count`` intakes, three lineage events each."""

    async def go() -> None:
        for i in range(first, first + count):
            await exchange(store, f"EP{i}", f"body{i}".encode())

    asyncio.run(go())


def rewrite_tail_from(store: SQLiteStore, first: int) -> None:
    """Edit event ``first`` directly in the SQLite file and hash the chain again from there."""
    conn = sqlite3.connect(store.path)
    rows = conn.execute(
        "SELECT seq, at, event, envelope_id, parent_id, actor, outcome, error_code, raw_sha256, details"
        " FROM lineage WHERE seq >= ? ORDER BY seq",
        (first,),
    ).fetchall()
    (prev,) = conn.execute("SELECT hash FROM lineage WHERE seq = ?", (first - 1,)).fetchone()
    for seq, at, event, envelope_id, parent_id, actor, outcome, error_code, raw_sha256, details in rows:
        if seq == first:
            outcome = "rejected"  # the forger's edit
        draft = EventDraft(
            event, envelope_id, actor, outcome, error_code, raw_sha256, parent_id, orjson.loads(details)
        )
        ev = seal(seq, at, draft, prev)
        conn.execute(
            "UPDATE lineage SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (outcome, ev.prev_hash, ev.hash, seq),
        )
        prev = ev.hash
    conn.commit()
    conn.close()


def test_checkpoints_go_to_the_endpoint_and_the_file_and_verify(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    key_path, cp_file = tmp_path / "keys" / "signing.key", tmp_path / "audit" / "checkpoints.jsonl"
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    checkpointer = Checkpointer(
        store, load_or_create_key(key_path), [FileCheckpoints(cp_file), http], every_events=9, every_s=3600
    )
    fill(store, 0, 3)
    first = checkpointer.checkpoint()
    fill(store, 3, 3)
    second = checkpointer.checkpoint()
    assert first is not None and second is not None and (first.seq, second.seq) == (9, 18)

    assert endpoint.checkpoints() == [first.as_dict(), second.as_dict()]
    # the file is written as before: one JSON line per checkpoint
    assert (
        cp_file.read_bytes() == orjson.dumps(first.as_dict()) + b"\n" + orjson.dumps(second.as_dict()) + b"\n"
    )
    assert checkpointer.pending() == {}

    both: list[CheckpointSink] = [FileCheckpoints(cp_file), http]
    for sources in (http, [http], both):
        result = verify_store(store, sources, public_path(key_path), require_checkpoints=True)
        assert result.ok and result.checkpoints == 2 and result.last_seq == 18, (sources, result)
        assert not result.warnings


def test_an_answer_as_a_json_array_is_read_too(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    key_path = tmp_path / "signing.key"
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    checkpointer = Checkpointer(store, load_or_create_key(key_path), http, every_events=3, every_s=3600)
    fill(store, 0, 2)
    assert checkpointer.checkpoint() is not None
    endpoint.as_array = True
    good, problems = read_verified(http, load_public_key(public_path(key_path)))
    assert [c.seq for c in good] == [6] and problems == []
    assert verify_store(store, http, public_path(key_path)).checkpoints == 1


def test_a_tail_rewritten_and_rehashed_in_the_sqlite_file_is_found_against_the_endpoint(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    key_path = tmp_path / "signing.key"
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    checkpointer = Checkpointer(store, load_or_create_key(key_path), [http], every_events=9, every_s=3600)
    fill(store, 0, 3)
    assert checkpointer.checkpoint() is not None  # seq 9
    fill(store, 3, 3)
    assert checkpointer.checkpoint() is not None  # seq 18

    rewrite_tail_from(store, 12)
    assert store.verify_lineage().ok, "the rehashed chain is consistent with itself"
    result = verify_store(store, http, public_path(key_path))
    assert not result.ok and result.first_bad_seq == 10 and "rewritten" in result.reason


def test_a_cut_tail_is_found_against_the_endpoint(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    key_path = tmp_path / "signing.key"
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    checkpointer = Checkpointer(store, load_or_create_key(key_path), http, every_events=9, every_s=3600)
    fill(store, 0, 6)
    assert checkpointer.checkpoint() is not None  # seq 18
    conn = sqlite3.connect(store.path)
    conn.execute("DELETE FROM lineage WHERE seq > 15")
    conn.commit()
    conn.close()
    result = verify_store(store, http, public_path(key_path))
    assert not result.ok and result.first_bad_seq == 16 and "cut" in result.reason


def test_checkpoints_the_endpoint_missed_while_down_arrive_once_it_is_back(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.checkpoints")
    key_path, cp_file = tmp_path / "signing.key", tmp_path / "cp.jsonl"
    http = HTTPCheckpoints(endpoint.url, None, 2.0)
    checkpointer = Checkpointer(
        store, load_or_create_key(key_path), [FileCheckpoints(cp_file), http], every_events=9, every_s=3600
    )
    endpoint.stop()  # down: connection refused

    fill(store, 0, 3)
    first = checkpointer.checkpoint()
    assert first is not None and first.seq == 9, "a sink that is down does not stop the checkpoint"
    assert len(cp_file.read_bytes().splitlines()) == 1, "the file beside it has it at once"
    assert checkpointer.pending() == {http.name: [9]}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].__dict__["sink"] == http.name
    assert "ConnectionRefusedError" in warnings[0].__dict__["error"]

    fill(store, 3, 3)
    assert checkpointer.checkpoint() is not None  # seq 18, still down: both kept
    assert checkpointer.pending() == {http.name: [9, 18]}

    endpoint.start()  # back, on the same URL
    fill(store, 6, 3)
    assert checkpointer.checkpoint() is not None  # seq 27: the missed ones go first, in order
    assert [c["seq"] for c in endpoint.checkpoints()] == [9, 18, 27]
    assert checkpointer.pending() == {}
    assert any("after a retry" in r.getMessage() and r.__dict__["checkpoints"] == 2 for r in caplog.records)

    result = verify_store(store, http, public_path(key_path), require_checkpoints=True)
    assert result.ok and result.checkpoints == 3


def test_a_quiet_chain_still_gets_its_missed_checkpoint_delivered(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    key_path = tmp_path / "signing.key"
    http = HTTPCheckpoints(endpoint.url, None, 2.0)
    checkpointer = Checkpointer(store, load_or_create_key(key_path), http, every_events=3, every_s=0.2)
    endpoint.stop()
    fill(store, 0, 1)
    assert checkpointer.checkpoint() is not None
    assert checkpointer.pending() == {http.name: [3]}
    endpoint.start()
    time.sleep(0.25)
    assert checkpointer.checkpoint() is None, "the chain did not move: no new checkpoint"
    assert [c["seq"] for c in endpoint.checkpoints()] == [3] and checkpointer.pending() == {}


def test_the_running_checkpointer_posts_in_a_worker_thread_and_retries_at_stop(
    store: SQLiteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A slow endpoint never holds up the event loop; what is still pending at stop is tried again."""
    caplog.set_level(logging.INFO, logger="gateway.checkpoints")
    slow = Endpoint(post_delay_s=0.4)
    try:
        key = load_or_create_key(tmp_path / "signing.key")
        http = HTTPCheckpoints(slow.url, None, 5.0)
        checkpointer = Checkpointer(store, key, http, every_events=3, every_s=0.05)
        lags: list[float] = []

        async def main() -> None:
            checkpointer.start()
            for i in range(6):
                await exchange(store, f"RUN{i}", b"body")
                deadline = time.monotonic() + 0.3
                while time.monotonic() < deadline:
                    before = time.monotonic()
                    await asyncio.sleep(0.01)
                    lags.append(time.monotonic() - before - 0.01)
            await checkpointer.stop()

        asyncio.run(main())
        seqs = [c["seq"] for c in slow.checkpoints()]
        assert seqs and seqs[-1] == 18 and seqs == sorted(set(seqs)), seqs
        assert max(lags) < 0.2, f"the event loop was blocked for {max(lags):.2f}s"
        assert checkpointer.pending() == {}
    finally:
        slow.stop()

    # a stop while the endpoint is down: the last try fails and the loss is logged, not silent
    down = HTTPCheckpoints(slow.url, None, 1.0)
    checkpointer = Checkpointer(store, key, down, every_events=1000, every_s=3600)

    async def stop_now() -> None:
        await exchange(store, "LAST", b"body")
        await checkpointer.stop()

    asyncio.run(stop_now())
    assert checkpointer.pending() == {down.name: [21]}
    lost = [r for r in caplog.records if "never written" in r.getMessage()]
    assert len(lost) == 1 and lost[0].__dict__["seqs"] == [21] and lost[0].levelno == logging.WARNING


def test_a_forged_checkpoint_served_by_the_endpoint_is_reported_and_not_trusted(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    key_path = tmp_path / "signing.key"
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    checkpointer = Checkpointer(store, load_or_create_key(key_path), http, every_events=9, every_s=3600)
    fill(store, 0, 3)
    assert checkpointer.checkpoint() is not None  # seq 9
    fill(store, 3, 3)
    assert checkpointer.checkpoint() is not None  # seq 18

    forged = endpoint.checkpoints()[-1]
    forged["seq"] = 12  # a claim about seq 12 under the signature of seq 18
    endpoint.served_extra.append(orjson.dumps(forged))
    good, problems = read_verified(http, load_public_key(public_path(key_path)))
    assert [c.seq for c in good] == [9, 18]
    assert problems == ["checkpoint on line 3 has an invalid signature"]

    result = verify_store(store, http, public_path(key_path))
    assert not result.ok and "invalid signature" in result.reason
    assert result.checkpoints == 2, "the forged checkpoint is not one the chain was held against"
    assert result.first_bad_seq is None, "trusted, its hash (seq 18's) would have failed seq 12"

    endpoint.served_extra[:] = [b"{not json"]
    result = verify_store(store, http, public_path(key_path))
    assert not result.ok and result.reason == "checkpoint on line 3 cannot be read"


def test_an_answer_without_a_final_newline_is_whole(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    """Unlike a file's, the endpoint's last line is no interrupted write (the answer is read whole): it
    is used when it verifies, and it fails the verification when it cannot be read."""
    key_path = tmp_path / "signing.key"
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    checkpointer = Checkpointer(store, load_or_create_key(key_path), http, every_events=9, every_s=3600)
    fill(store, 0, 3)
    assert checkpointer.checkpoint() is not None  # seq 9
    fill(store, 3, 3)
    assert checkpointer.checkpoint() is not None  # seq 18
    endpoint.final_newline = False

    result = verify_store(store, http, public_path(key_path), require_checkpoints=True)
    assert result.ok and result.checkpoints == 2 and result.last_seq == 18 and not result.warnings, result

    endpoint.served_extra.append(endpoint.received[-1][:50])  # cut short, and last
    result = verify_store(store, http, public_path(key_path))
    assert not result.ok and result.reason == "checkpoint on line 3 cannot be read", result
    assert not result.warnings


def test_two_signed_checkpoints_that_disagree_fail(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    """A file and an endpoint each holding a validly signed checkpoint for one seq, with different hashes."""
    key_path, cp_file = tmp_path / "signing.key", tmp_path / "cp.jsonl"
    key = load_or_create_key(key_path)
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    fill(store, 0, 3)
    assert Checkpointer(store, key, http, every_events=9, every_s=3600).checkpoint() is not None
    head = store.lineage_head()
    assert head is not None
    FileCheckpoints(cp_file).append(sign(key, head[0], "0" * 64))  # signed with the stolen key
    result = verify_store(store, [FileCheckpoints(cp_file), http], public_path(key_path))
    assert not result.ok and "disagree on the hash of seq 9" in result.reason


def test_an_empty_endpoint_is_no_checkpoint_and_one_that_is_down_fails(
    store: SQLiteStore, tmp_path: Path, endpoint: Endpoint
) -> None:
    load_or_create_key(tmp_path / "signing.key")
    pub = public_path(tmp_path / "signing.key")
    fill(store, 0, 1)
    http = HTTPCheckpoints(endpoint.url, None, 5.0)
    empty = verify_store(store, http, pub)
    assert empty.ok and empty.checkpoints == 0 and not empty.warnings
    strict = verify_store(store, http, pub, require_checkpoints=True)
    assert not strict.ok and strict.reason == "no signed checkpoint to verify against"

    endpoint.stop()
    down = verify_store(store, http, pub)
    assert not down.ok and "ConnectionRefusedError" in down.reason and http.name in down.reason


def test_a_404_means_no_checkpoint_yet(store: SQLiteStore, tmp_path: Path) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        load_or_create_key(tmp_path / "signing.key")
        pub = public_path(tmp_path / "signing.key")
        http = HTTPCheckpoints(f"http://127.0.0.1:{server.server_address[1]}/cp", None, 5.0)
        result = verify_store(store, http, pub)
        assert result.ok and result.warnings == (f"no checkpoints at {http.name} (HTTP 404)",)
        assert not verify_store(store, http, pub, require_checkpoints=True).ok
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_the_bearer_token_is_sent_and_never_logged(
    store: SQLiteStore, tmp_path: Path, guarded: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key_path = tmp_path / "signing.key"
    key = load_or_create_key(key_path)
    sinks = checkpoint_sinks(
        None, guarded.url, token_env="CP_TOKEN", timeout_s=5.0, environ={"CP_TOKEN": TOKEN}
    )
    (http,) = sinks
    assert TOKEN not in repr(http) and TOKEN not in http.name

    # no token: refused, kept, logged without any token
    anonymous = HTTPCheckpoints(guarded.url, None, 5.0)
    refused = Checkpointer(store, key, anonymous, every_events=3, every_s=3600)
    fill(store, 0, 1)
    assert refused.checkpoint() is not None and refused.pending() == {anonymous.name: [3]}
    assert any("HTTP 401" in str(r.__dict__.get("error")) for r in caplog.records)

    # the right token: accepted
    checkpointer = Checkpointer(store, key, sinks, every_events=3, every_s=3600)
    fill(store, 1, 1)
    assert checkpointer.checkpoint() is not None
    assert [c["seq"] for c in guarded.checkpoints()] == [6]
    assert guarded.authorization[-1] == f"Bearer {TOKEN}"

    # reading needs it too
    assert verify_store(store, http, public_path(key_path), require_checkpoints=True).ok
    assert guarded.authorization[-1] == f"Bearer {TOKEN}"
    denied = verify_store(store, anonymous, public_path(key_path))
    assert not denied.ok and "HTTP 401" in denied.reason

    # the endpoint down while the token is in use
    guarded.stop()
    fill(store, 2, 1)
    assert checkpointer.checkpoint() is not None and checkpointer.pending() == {http.name: [9]}
    failed = verify_store(store, http, public_path(key_path))
    assert not failed.ok and TOKEN not in failed.reason

    assert caplog.records, "the failures were logged"
    for r in caplog.records:
        assert TOKEN not in r.getMessage() and TOKEN not in repr(r.__dict__), r
    assert TOKEN not in caplog.text


def test_a_redirect_is_not_followed_with_the_token(
    store: SQLiteStore, tmp_path: Path, guarded: Endpoint, endpoint: Endpoint
) -> None:
    guarded.redirect_to = endpoint.url  # somewhere else
    key = load_or_create_key(tmp_path / "signing.key")
    http = HTTPCheckpoints(guarded.url, TOKEN, 5.0)
    fill(store, 0, 1)
    checkpointer = Checkpointer(store, key, http, every_events=3, every_s=3600)
    assert checkpointer.checkpoint() is not None and checkpointer.pending() == {http.name: [3]}
    assert endpoint.authorization == [] and endpoint.received == []
    with pytest.raises(CheckpointSinkError, match="HTTP 302"):
        http.read()


def test_unusable_endpoint_settings_are_refused() -> None:
    for url in ("file:///etc/passwd", "ftp://example.org/cp", "http://user:pw@example.org/cp", "example.org"):
        with pytest.raises(ValueError, match="checkpoint URL"):
            HTTPCheckpoints(url, None, 5.0)
    with pytest.raises(ConfigError, match="CP_TOKEN is not set"):
        checkpoint_sinks(None, "https://audit.example.org/cp", token_env="CP_TOKEN", environ={})
    with pytest.raises(ConfigError, match=r"lineage\.checkpoint_url"):
        checkpoint_sinks(None, "file:///tmp/cp")
    both = checkpoint_sinks(Path("cp.jsonl"), "https://audit.example.org/cp?stream=gw1")
    assert [type(s).__name__ for s in both] == ["FileCheckpoints", "HTTPCheckpoints"]
    assert both[1].name == "https://audit.example.org/cp", "the query is left out of messages"
    (file,) = checkpoint_sinks(Path("cp.jsonl"))
    assert isinstance(file, FileCheckpoints) and file.path == Path("cp.jsonl")
