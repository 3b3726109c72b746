"""Intake with the real HL7 adapter and the real SQLite store: what is committed and what is answered."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from adapters.hl7.ack import parse_ack
from adapters.hl7.adapter import HL7Adapter
from adapters.hl7.framing import END, START, frame
from adapters.hl7.mllp import MLLPServer, send_frames
from gateway.adapter import Reply
from gateway.config import MLLPConfig
from gateway.envelope import Receipt
from gateway.pipeline import Intake
from gateway.store import MessageFilter
from gateway.store.sqlite import SQLiteStore
from tests.conftest import FIXTURES

HL7 = FIXTURES / "hl7"


def load(name: str) -> bytes:
    return (HL7 / name).read_bytes()


def with_control_id(raw: bytes, control_id: str) -> bytes:
    segs = raw.split(b"\r")
    fields = segs[0].split(b"|")
    fields[9] = control_id.encode()
    return b"\r".join([b"|".join(fields), *segs[1:]])


def receive(intake: Intake, adapter: HL7Adapter, raw: bytes) -> list[tuple[str, str]]:
    result = asyncio.run(intake.receive(adapter, raw, Receipt("mllp", "127.0.0.1:1")))
    return [parse_ack(r.body)[:2] for r in result.replies]


def _fill_the_disk(store: SQLiteStore) -> None:
    """Let the database grow no further: each commit that needs a new page fails with SQLITE_FULL."""
    assert store._wconn is not None
    (pages,) = store._wconn.execute("PRAGMA page_count").fetchone()
    store._wconn.execute(f"PRAGMA max_page_count = {pages}")


def _free_the_disk(store: SQLiteStore) -> None:
    assert store._wconn is not None
    store._wconn.execute("PRAGMA max_page_count = 1073741823")


def _large(control_id: str) -> bytes:
    big = load("oru_r01__cbc_20_obx.hl7").replace(b"\n", b"\r")
    return with_control_id(big, control_id) + b"\rNTE|1||" + b"x" * 8000


def _stored_control_ids(store: SQLiteStore) -> set[str]:
    return {r.control_id for r in store.list_messages(MessageFilter(limit=1000))}


def test_store_failure_is_refused_never_accepted(store: SQLiteStore) -> None:
    """A disk-full store (SQLITE_FULL) answers AR and HTTP 503, and nothing half-written remains."""
    intake = Intake(store)
    adapter = HL7Adapter()

    async def go() -> list[Reply]:
        _fill_the_disk(store)
        replies = []
        for i in range(20):
            res = await intake.receive(adapter, _large(f"FULL-{i}"), Receipt("http"))
            replies.extend(res.replies)
        _free_the_disk(store)
        return replies

    replies = asyncio.run(go())
    assert len(replies) == 20
    answers = [(r.status, r.code, *parse_ack(r.body)[:2]) for r in replies]
    assert [acked for _, _, _, acked in answers] == [f"FULL-{i}" for i in range(20)]
    assert {status for status, _, _, _ in answers} <= {200, 503}
    refused = [(code, ack) for status, code, ack, _ in answers if status == 503]
    assert refused and all(pair == ("AR", "AR") for pair in refused)
    assert all((code, ack) == ("AA", "AA") for status, code, ack, _ in answers if status == 200)
    assert all(b"\rERR|" in r.body for r in replies if r.status == 503)
    stored = _stored_control_ids(store)
    assert all(acked in stored for status, _, _, acked in answers if status == 200)
    assert not any(acked in stored for status, _, _, acked in answers if status == 503)
    assert store.verify_lineage().ok


def test_store_failure_over_mllp_answers_ar_for_what_was_not_kept(store: SQLiteStore) -> None:
    """Through the MLLP listener on a real socket: every ACK of a message the full store could not keep
    is AR, every AA names a message that was kept, and the connection serves on after the refusals."""
    intake = Intake(store)
    adapter = HL7Adapter()
    control_ids = [f"MLLP-FULL-{i}" for i in range(20)]

    async def go() -> tuple[list[bytes], list[bytes]]:
        server = MLLPServer(intake, adapter, MLLPConfig())
        await server.start("127.0.0.1", 0)
        try:
            _fill_the_disk(store)
            acks = await send_frames("127.0.0.1", server.port, [_large(c) for c in control_ids])
            _free_the_disk(store)
            after = await send_frames("127.0.0.1", server.port, [_large("MLLP-FULL-AFTER")])
        finally:
            await server.stop(grace_s=5)
        return acks, after

    acks, after = asyncio.run(go())
    answers = [parse_ack(ack)[:2] for ack in acks]
    assert [acked for _, acked in answers] == control_ids
    codes = {code for code, _ in answers}
    assert "AR" in codes and codes <= {"AA", "AR"}
    stored = _stored_control_ids(store)
    for ack, (code, acked) in zip(acks, answers, strict=True):
        if code == "AR":
            assert acked not in stored and b"\rERR|" in ack
        else:
            assert acked in stored
    assert parse_ack(after[0])[:2] == ("AA", "MLLP-FULL-AFTER")
    assert store.verify_lineage().ok


def test_a_pipelining_connection_holds_at_most_max_frame_bytes_of_waiting_frames(store: SQLiteStore) -> None:
    """A sender pipelines 40 frames of ~300 KB while intake cannot commit (another process holds the write
    lock): the listener stops reading once ``max_frame_bytes`` (1 MB) of frames wait, rather than taking
    all 12 MB into memory; once the lock is free every frame is answered, in order, and kept."""
    intake = Intake(store)
    adapter = HL7Adapter()
    notes = b"".join(b"\rNTE|%d||" % i + b"x" * 8000 for i in range(37))
    control_ids = [f"MLLP-MEM-{i}" for i in range(40)]
    messages = [_large(c) + notes for c in control_ids]
    limit = 1_000_000

    async def go() -> tuple[bool, int, list[bytes]]:
        server = MLLPServer(intake, adapter, MLLPConfig(max_frame_bytes=limit))
        await server.start("127.0.0.1", 0)
        blocker = sqlite3.connect(store.path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(
                b"".join(frame(m) for m in messages)
            )  # not drained: the listener decides what it takes
            (conn,) = server._connections
            everything = sum(map(len, messages[1:]))  # all but the one in work
            deadline = asyncio.get_running_loop().time() + 10
            while not conn.read_paused and conn.pending_bytes < everything:
                assert asyncio.get_running_loop().time() < deadline, (
                    "the listener neither paused nor read all"
                )
                await asyncio.sleep(0.01)
            paused, held = conn.read_paused, conn.pending_bytes
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        acks = [(await reader.readuntil(END))[:-2] for _ in messages]
        writer.close()
        await server.stop(grace_s=5)
        return paused, held, acks

    paused, held, acks = asyncio.run(go())
    assert paused
    assert held < limit + len(messages[0])  # the read that crossed the limit, at most one frame more
    answers = [parse_ack(ack.lstrip(START))[:2] for ack in acks]
    assert answers == [("AA", c) for c in control_ids]
    assert _stored_control_ids(store) >= set(control_ids)


def test_unparseable_is_stored_as_rejected_and_answered(store: SQLiteStore) -> None:
    intake = Intake(store)
    acks = receive(intake, HL7Adapter(), load("invalid__truncated.hl7"))
    assert acks[0][0] in ("AE", "AR")
    (row,) = store.list_messages(MessageFilter(status="rejected"))
    assert row.issues and row.size == len(load("invalid__truncated.hl7"))


@pytest.mark.parametrize(
    ("level", "expected"),
    [("none", "AA"), ("header", "AA"), ("structure", "AE")],
)
def test_validation_levels(store: SQLiteStore, level: str, expected: str) -> None:
    """A message whose body breaks the structure (PID-3 empty) passes header checks but not structure ones."""
    raw = load("adt_a01__basic.hl7").replace(b"\n", b"\r")
    segs = raw.split(b"\r")
    for i, seg in enumerate(segs):
        if seg.startswith(b"PID|"):
            fields = seg.split(b"|")
            fields[3] = b""
            segs[i] = b"|".join(fields)
    broken = b"\r".join(segs)
    intake = Intake(store)
    assert receive(intake, HL7Adapter(validation=level), broken)[0][0] == expected  # type: ignore[arg-type]


def test_header_level_still_refuses_an_unsupported_version(store: SQLiteStore) -> None:
    intake = Intake(store)
    assert (
        receive(intake, HL7Adapter(validation="header"), load("invalid__unsupported_version.hl7"))[0][0]
        == "AR"
    )


def test_batch_is_kept_and_each_message_answered(store: SQLiteStore) -> None:
    intake = Intake(store)
    raw = load("batch__fhs_bhs.hl7")
    acks = receive(intake, HL7Adapter(), raw)
    assert [a[0] for a in acks] == ["AA", "AA", "AA"]
    (batch,) = store.list_messages(MessageFilter(status="batch"))
    assert store.get_raw(batch.id) == raw
    children = [r for r in store.list_messages(MessageFilter(status="accepted")) if r.parent_id == batch.id]
    assert sorted(c.control_id for c in children) == sorted(a[1] for a in acks)
    # every message's raw bytes are exactly its slice of the batch file
    for child in children:
        assert store.get_raw(child.id) in raw


def test_the_replies_recorded_as_sent_are_the_ones_the_combined_reply_carries(store: SQLiteStore) -> None:
    """One rule (``carried``) for what goes out: a declined reply (MSH-15/16 NE) only when every one was
    declined and the transport must answer, and then in joined ACKs, never in an acknowledgement batch."""
    from gateway.adapter import carried
    from gateway.pipeline import IntakeResult

    declined = Reply(b"N", "t", 200, "CA", wanted=False)
    wanted = Reply(b"W", "t", 200, "CA")
    assert carried([wanted, declined], must_answer=True) == [True, False]
    assert carried([declined, declined], must_answer=False) == [False, False]
    assert carried([declined, declined], must_answer=True) == [True, True]

    intake, adapter = Intake(store), HL7Adapter()
    ne = with_control_id(load("adt_a01__basic.hl7"), "NE-1").replace(b"|2.5.1\r", b"|2.5.1|||NE|NE\r", 1)
    two = ne + with_control_id(ne, "NE-2")

    def received(raw: bytes) -> IntakeResult:
        return asyncio.run(intake.receive(adapter, raw, Receipt("http", "127.0.0.1:1")))

    def acknowledged(reply: Reply) -> list[bytes]:
        return [line.split(b"|")[2] for line in reply.body.split(b"\r") if line.startswith(b"MSA|")]

    multi = received(two)  # bare MSH messages: joined ACKs, wanted by none; HTTP sends them all the same
    assert not multi.combined().wanted and acknowledged(multi.combined()) == [b"NE-1", b"NE-2"]
    assert multi.sent(must_answer=True) == [True, True] and multi.sent(must_answer=False) == [False, False]
    batch = received(b"BHS|^~\\&\r" + two + b"BTS|2\r")  # an acknowledgement batch, with neither ACK
    assert batch.combined().wanted and acknowledged(batch.combined()) == []
    assert batch.sent(must_answer=True) == batch.sent(must_answer=False) == [False, False]


def test_a_rule_set_the_adapter_lacks_refuses_and_routes_nothing(store: SQLiteStore) -> None:
    """A route demanding rules its protocol has not (SEPA on HL7 v2) refuses rather than skipping them."""
    from gateway.config import Settings
    from gateway.routing import RoutingTable

    settings = Settings.model_validate(
        {
            "sinks": {"ehr": {"type": "memory"}},
            "routes": [{"name": "all", "match": {"protocol": "hl7v2"}, "rules": ["sepa"], "to": ["ehr"]}],
            "unmatched": "reject",
        }
    )
    intake = Intake(store, RoutingTable.from_settings(settings))
    raw = with_control_id(load("adt_a01__basic.hl7").replace(b"\n", b"\r"), "RULES-1")
    assert receive(intake, HL7Adapter(), raw) == [("AR", "RULES-1")]
    (row,) = store.list_messages(MessageFilter(control_id="RULES-1"))
    assert row.status == "rejected" and row.route == ""
    assert store.deliveries_of(row.id) == []
    assert [i["code"] for i in row.as_dict()["issues"]] == ["unsupported_rule_set"]
