"""Crash safety: SIGKILL the gateway under MLLP load, restart, and prove that every AA'd message is stored once.

The number of kill cycles is ``GATEWAY_CRASH_CYCLES`` (default 4); ``bench/`` or a
manual run can raise it for a longer soak.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from tests.support import Gateway, wait_port, with_control_id

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SB, EB = b"\x0b", b"\x1c\x0d"
BASE = (FIXTURES / "hl7" / "adt_a01__basic.hl7").read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def message(control_id: str) -> bytes:
    return with_control_id(BASE, control_id)


def sender(port: int, prefix: str, stop: threading.Event, acked: list[str], sent: list[str]) -> None:
    """Stream messages on one connection until the connection dies or ``stop`` is set."""
    i = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            buf = b""
            while not stop.is_set():
                cid = f"{prefix}-{i}"
                sent.append(cid)
                s.sendall(SB + message(cid) + EB)
                while EB not in buf:
                    chunk = s.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                frame, buf = buf[: buf.index(EB)], buf[buf.index(EB) + 2 :]
                if b"MSA|AA|" + cid.encode() + b"\r" in frame + b"\r":
                    acked.append(cid)
                i += 1
    except OSError:
        return


def kill_under_load(gw: Gateway, cycles: int, senders: int, seed: int) -> tuple[list[str], list[str]]:
    """Start the gateway, stream from ``senders`` connections, SIGKILL it at a random moment; ``cycles`` times.

    Returns the control ids that got AA and every control id sent.
    """
    rng = random.Random(seed)
    acked: list[str] = []
    sent: list[str] = []
    for cycle in range(cycles):
        gw.start()
        stop = threading.Event()
        threads = [
            threading.Thread(target=sender, args=(gw.mllp_port, f"K{seed}-{cycle}-{c}", stop, acked, sent))
            for c in range(senders)
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.4, 1.5))
        gw.kill()  # SIGKILL mid-stream
        stop.set()
        for t in threads:
            t.join(timeout=10)
    return acked, sent


def test_acknowledged_messages_survive_sigkill(tmp_path: Path) -> None:
    gw = Gateway(tmp_path, {"log_level": "warning"})
    acked, sent = kill_under_load(gw, int(os.environ.get("GATEWAY_CRASH_CYCLES", "4")), 4, 20261127)
    assert len(acked) > 100, "the senders should have been acknowledged many times before each kill"

    gw.start()
    try:
        conn = sqlite3.connect(gw.data_dir / "gateway.db")
        rows = conn.execute(
            "SELECT control_id, count(*) FROM messages WHERE status = 'accepted' GROUP BY control_id"
        )
        stored = dict(rows.fetchall())
        conn.close()
        missing = [c for c in acked if c not in stored]
        assert not missing, f"{len(missing)} acknowledged messages were lost, e.g. {missing[:5]}"
        assert all(n == 1 for n in stored.values()), "a control id was stored twice"
        assert set(stored) <= set(sent)

        # resending everything acknowledged yields duplicates, not new messages
        wait_port(gw.mllp_port)
        with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
            buf = b""
            for cid in acked:
                s.sendall(SB + message(cid) + EB)
                while EB not in buf:
                    buf += s.recv(65536)
                frame, buf = buf[: buf.index(EB)], buf[buf.index(EB) + 2 :]
                assert b"MSA|AA|" + cid.encode() in frame
        conn = sqlite3.connect(gw.data_dir / "gateway.db")
        (after,) = conn.execute("SELECT count(*) FROM messages WHERE status = 'accepted'").fetchone()
        (dups,) = conn.execute("SELECT count(*) FROM lineage WHERE event = 'DuplicateReceived'").fetchone()
        conn.close()
        assert after == len(stored)
        assert dups >= len(acked)
        verify = gw.cli("lineage", "verify", *gw.store_args())
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        gw.stop()


def test_exactly_once_effect_downstream_across_sigkills(tmp_path: Path) -> None:
    """Stream to a route with an HTTP sink, SIGKILL the gateway repeatedly, restart and drain.

    Every message that got AA is delivered; re-deliveries carry the same Idempotency-Key, so a
    receiver that deduplicates on it sees each message exactly once.
    """
    from tests.gateway.sinks.peers import Receiver
    from tests.support import wait_until

    cycles = max(2, int(os.environ.get("GATEWAY_CRASH_CYCLES", "4")) - 1)
    with Receiver() as receiver:
        cfg = {
            "log_level": "warning",
            "sinks": {
                "ehr": {"type": "http", "endpoint": receiver.url, "retry": {"base_s": 0.05, "cap_s": 0.5}}
            },
            "routes": [{"name": "all", "match": {"protocol": "hl7v2"}, "to": ["ehr"]}],
            "unmatched": "reject",
        }
        gw = Gateway(tmp_path, cfg)
        acked, _ = kill_under_load(gw, cycles, 3, 20261128)
        assert len(acked) > 50
        gw.start()
        try:
            conn = sqlite3.connect(gw.data_dir / "gateway.db")
            stored = {
                r[0]: r[1]
                for r in conn.execute("SELECT control_id, id FROM messages WHERE status = 'accepted'")
            }
            conn.close()
            expected_keys = {f"{stored[c]}:ehr" for c in acked}
            assert wait_until(
                lambda: expected_keys <= {r.headers["idempotency-key"] for r in list(receiver.requests)}, 60
            ), "an acknowledged message was never delivered"
            time.sleep(0.5)
            delivered = [r.headers["idempotency-key"] for r in list(receiver.requests)]
            assert set(delivered) <= {f"{mid}:ehr" for mid in stored.values()}
            # the receiver's view after deduplicating on Idempotency-Key: each stored message once
            assert len(set(delivered)) == len(stored)
        finally:
            gw.stop()


def test_a_second_serve_on_the_same_data_directory_is_refused(tmp_path: Path) -> None:
    """Two servers on one data directory would both run the delivery workers (every outbox row twice): the
    second is refused at once, naming the first; a SIGKILL of the first frees the directory."""
    first = Gateway(tmp_path).start()
    try:
        addresses = ["--mllp", "127.0.0.1:0", "--http", "127.0.0.1:0"]
        second = first.cli("serve", *first.store_args(), *addresses)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        expected = f"gateway: data directory {first.data_dir} is in use by another gateway serve (pid {first.proc.pid})\n"  # type: ignore[union-attr]
        assert second.stderr == expected
        with socket.create_connection(("127.0.0.1", first.mllp_port), timeout=5):
            pass  # the first serves on
        first.kill()
        again = first.start()  # the kernel let go of the lock with the killed process
        assert again.proc is not None and again.proc.poll() is None
    finally:
        first.stop()
