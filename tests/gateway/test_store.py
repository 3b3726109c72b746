"""The embedded store: durable intake decisions, group commit, and the lineage hash chain."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.adapter import Issue
from gateway.envelope import new_id, sha256_hex, utcnow
from gateway.errors import StoreUnavailable
from gateway.lineage import EventDraft, Keyed, pseudonym
from gateway.store import IntakeRecord, MessageFilter, ReplyRecord
from gateway.store.sqlite import WAL_CHECKPOINT_PAGES, SQLiteStore


def record(
    control_id: str, body: bytes = b"MSH|payload", outcome: str = "accepted", sender: str = "APP^FAC"
) -> IntakeRecord:
    return IntakeRecord(
        id=new_id(),
        received_at=utcnow().isoformat(),
        protocol="hl7v2",
        raw=body,
        raw_sha256=sha256_hex(body),
        outcome=outcome,  # type: ignore[arg-type]
        listener="mllp",
        peer="127.0.0.1:5000",
        control_id=control_id,
        sender=sender,
        message_type="ADT^A01",
        business_keys={"patient_id": "MRN-SECRET-1^^^HOSP"},
        issues=[Issue("error", "required_field_missing", "PID-3", "PID-3 is required.")]
        if outcome != "accepted"
        else [],
    )


async def exchange(store: SQLiteStore, control_id: str, body: bytes) -> None:
    """One message as a listener takes it: intake, then the ``ReplySent`` event; three lineage events."""
    (decision,) = await store.record_intake([record(control_id, body)])
    await store.record_events([EventDraft("ReplySent", decision.message_id, "mllp", outcome="AA")])


def test_new_duplicate_and_conflict(store: SQLiteStore) -> None:
    async def go() -> None:
        first = record("C1", b"one")
        (d1,) = await store.record_intake([first])
        assert (d1.kind, d1.message_id, d1.outcome) == ("stored", first.id, "accepted")
        (d2,) = await store.record_intake([record("C1", b"one")])
        assert (d2.kind, d2.message_id) == ("duplicate", first.id)
        other = record("C1", b"two")
        (d3,) = await store.record_intake([other])
        assert (d3.kind, d3.message_id, d3.outcome) == ("conflict", other.id, "invalid")
        # another sender may reuse the control id
        (d4,) = await store.record_intake([record("C1", b"two", sender="OTHER^FAC")])
        assert d4.kind == "stored"

    asyncio.run(go())
    rows = store.list_messages(MessageFilter(control_id="C1"))
    assert sorted(r.status for r in rows) == ["accepted", "accepted", "rejected"]
    conflict = next(r for r in rows if r.status == "rejected")
    assert conflict.issues[-1]["code"] == "control_id_conflict"
    events = [e.event for e in store.lineage_of(rows[-1].id)]
    assert events == ["MessageReceived", "MessageAccepted", "DuplicateReceived"]
    assert store.verify_lineage().ok


def test_duplicates_by_content_digest_and_by_the_same_bytes(store: SQLiteStore) -> None:
    def canonical(control_id: str, body: bytes) -> IntakeRecord:
        """``body`` as an adapter that gives content digests records it (line endings do not count)."""
        return replace(record(control_id, body), content_sha256=sha256_hex(body.rstrip()))

    async def go() -> None:
        # stored before its adapter gave content digests: the same bytes sent again still match it
        (old,) = await store.record_intake([record("C5", b"MSH|one\n")])
        (same,) = await store.record_intake([canonical("C5", b"MSH|one\n")])
        assert (same.kind, same.message_id) == ("duplicate", old.message_id)
        # other bytes of the same content are a resend; other content is a conflict
        (new,) = await store.record_intake([canonical("C6", b"MSH|two\r")])
        (again,) = await store.record_intake([canonical("C6", b"MSH|two\r\n")])
        assert (again.kind, again.message_id) == ("duplicate", new.message_id)
        (other,) = await store.record_intake([canonical("C6", b"MSH|three\r")])
        assert other.kind == "conflict"

    asyncio.run(go())


def test_rejected_message_does_not_claim_its_control_id(store: SQLiteStore) -> None:
    async def go() -> None:
        (bad,) = await store.record_intake([record("C9", b"bad", outcome="invalid")])
        (good,) = await store.record_intake([record("C9", b"fixed")])
        assert (bad.kind, good.kind) == ("stored", "stored")

    asyncio.run(go())


def test_lineage_holds_pseudonyms_not_business_key_values(store: SQLiteStore) -> None:
    asyncio.run(store.record_intake([record("C2")]))
    conn = sqlite3.connect(store.path)
    dump = "\n".join(str(r) for r in conn.execute("SELECT * FROM lineage"))
    assert "MRN-SECRET-1" not in dump
    assert "hk:" in dump


def test_concurrent_intake_shares_commits(store: SQLiteStore) -> None:
    async def go() -> None:
        await asyncio.gather(*(store.record_intake([record(f"G{i}", f"m{i}".encode())]) for i in range(300)))

    asyncio.run(go())
    assert store.count_messages() == 300
    assert store.commits < 300, "group commit should put concurrent messages into shared transactions"
    v = store.verify_lineage()
    assert v.ok and v.events == 600  # MessageReceived and MessageAccepted (with the validation outcome) each


def test_reply_code_and_reply_events_ride_on_the_next_commit(store: SQLiteStore) -> None:
    rec = replace(record("C3"), reply_code="AA")
    later = record("C4")

    async def go() -> None:
        await store.record_intake([rec])
        commits = store.commits
        store.note_replies([ReplyRecord(rec.id, "AA", "mllp")])
        await store.record_intake([later])
        assert store.commits == commits + 1, "reply events must not cost a commit of their own"
        store.note_replies([ReplyRecord(later.id, "AE", "mllp", "conflict")])
        await asyncio.sleep(0.2)  # no further write: the events are committed alone, soon

    asyncio.run(go())
    row = store.get_message(rec.id)
    assert row is not None and row.reply_code == "AA"
    events = store.lineage_of(rec.id)
    assert events[-1].event == "ReplySent" and events[-1].outcome == "AA"
    assert store.lineage_of(later.id)[-1].event == "ReplySent"
    conflict_row = store.get_message(later.id)
    assert conflict_row is not None and conflict_row.reply_code == "AE"


def _tamper(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(sql)
    conn.commit()
    conn.close()


TAMPERED_COLUMNS = {
    "at": "'2000-01-01T00:00:00+00:00'",
    "event": "'MessageRejected'",
    "envelope_id": "'another-envelope'",
    "parent_id": "'another-parent'",
    "actor": "'user:intruder'",
    "outcome": "'rejected'",
    "error_code": "'tampered'",
    "raw_sha256": "'" + "f" * 64 + "'",
    "details": "json_set(details, '$.protocol', 'hl7v3')",
}
"""One changed value per stored column of ``lineage`` that the hash covers."""


def _four_messages(path: Path) -> SQLiteStore:
    store = SQLiteStore(path, b"k" * 32)
    store.open()

    async def go() -> None:
        for i in range(4):
            await store.record_intake([record(f"T{i}", f"t{i}".encode())])

    asyncio.run(go())
    assert store.verify_lineage().ok
    return store


def _column_at(path: Path, column: str, seq: int) -> object:
    conn = sqlite3.connect(path)
    (value,) = conn.execute(f"SELECT {column} FROM lineage WHERE seq = ?", (seq,)).fetchone()
    conn.close()
    return value


def test_the_tampering_cases_cover_every_hashed_lineage_column(tmp_path: Path) -> None:
    store = _four_messages(tmp_path / "columns.db")
    conn = sqlite3.connect(store.path)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(lineage)")}
    conn.close()
    store.close()
    assert columns - {"seq", "prev_hash", "hash"} == set(TAMPERED_COLUMNS)


@pytest.mark.parametrize(
    ("column", "bad_seq"),
    [(column, 1 + n % 8) for n, column in enumerate(TAMPERED_COLUMNS)],
    ids=list(TAMPERED_COLUMNS),
)
def test_verify_detects_a_changed_column(tmp_path: Path, column: str, bad_seq: int) -> None:
    store = _four_messages(tmp_path / "tampered.db")
    before = _column_at(store.path, column, bad_seq)
    _tamper(store.path, f"UPDATE lineage SET {column} = {TAMPERED_COLUMNS[column]} WHERE seq = {bad_seq}")
    assert _column_at(store.path, column, bad_seq) != before
    result = store.verify_lineage()
    store.close()
    assert not result.ok
    assert result.first_bad_seq == bad_seq
    assert result.reason == "event content does not match its hash"


@pytest.mark.parametrize(
    ("sql", "bad_seq"),
    [
        ("DELETE FROM lineage WHERE seq = 5", 5),
        (
            "UPDATE lineage SET seq = -1 WHERE seq = 4; UPDATE lineage SET seq = 4 WHERE seq = 5;"
            " UPDATE lineage SET seq = 5 WHERE seq = -1;",
            4,
        ),
        (f"UPDATE lineage SET hash = '{'e' * 64}' WHERE seq = 6", 6),
        (f"UPDATE lineage SET prev_hash = '{'e' * 64}' WHERE seq = 7", 7),
    ],
    ids=["deleted-event", "reordered", "changed-hash", "changed-prev-hash"],
)
def test_verify_detects_tampering(tmp_path: Path, sql: str, bad_seq: int) -> None:
    store = _four_messages(tmp_path / "tampered.db")
    _tamper(store.path, sql)
    result = store.verify_lineage()
    store.close()
    assert not result.ok
    assert result.first_bad_seq == bad_seq


def test_the_write_connection_is_durable_and_checkpoints_its_wal(store: SQLiteStore) -> None:
    """Each commit is fsynced (synchronous FULL) into a write-ahead log that is checkpointed as it grows."""
    asyncio.run(exchange(store, "DUR-1", b"MSH|durable"))
    conn = sqlite3.connect(store.path)
    (journal_mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    conn.close()
    assert journal_mode == "wal"
    assert store._wconn is not None
    (synchronous,) = store._wconn.execute("PRAGMA synchronous").fetchone()
    (autocheckpoint,) = store._wconn.execute("PRAGMA wal_autocheckpoint").fetchone()
    assert synchronous == 2  # FULL
    assert autocheckpoint == WAL_CHECKPOINT_PAGES > 0


def test_full_disk_fails_the_commit_and_keeps_the_chain(store: SQLiteStore) -> None:
    """SQLITE_FULL (a real disk-full error, forced with max_page_count) becomes StoreUnavailable."""

    async def go() -> int:
        await store.record_intake([record("F0")])
        assert store._wconn is not None
        (pages,) = store._wconn.execute("PRAGMA page_count").fetchone()
        store._wconn.execute(f"PRAGMA max_page_count = {pages}")
        failures = 0
        for i in range(1, 50):
            try:
                await store.record_intake([record(f"F{i}", b"x" * 20000)])
            except StoreUnavailable:
                failures += 1
        store._wconn.execute("PRAGMA max_page_count = 1073741823")
        (d,) = await store.record_intake([record("F-after", b"small")])
        assert d.kind == "stored"
        return failures

    assert asyncio.run(go()) > 0
    assert store.verify_lineage().ok


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs RLIMIT_FSIZE and SIGXFSZ (POSIX)")
def test_a_write_error_that_rolls_the_whole_group_back_keeps_the_chain(store: SQLiteStore) -> None:
    """A write error while one item's pages spill to the WAL (the file may grow no further: a full disk,
    here RLIMIT_FSIZE) makes SQLite roll the whole group's transaction back. The items run before it
    fail with it, the ones after it are committed in the next group (not one by one outside any
    transaction, chained to events that were rolled back), and the chain verifies."""
    small = [record(f"W{i}") for i in range(5)]
    big = record("W-BIG", os.urandom(400_000))

    async def go() -> list[object]:
        await store.record_intake([record("W-FIRST")])
        assert store._wconn is not None
        store._wconn.execute("PRAGMA cache_size = 20")  # 80 KB: the big body spills while it is inserted
        wal = (store.path.parent / (store.path.name + "-wal")).stat().st_size
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (wal + 200_000, hard))
        try:
            items = [store.record_intake([r]) for r in [*small[:2], big, *small[2:]]]
            outcomes = await asyncio.gather(*items, return_exceptions=True)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, ignored)
            store._wconn.execute("PRAGMA cache_size = -65536")
        return outcomes

    outcomes = asyncio.run(go())
    assert [type(o).__name__ for o in outcomes[:3]] == ["StoreUnavailable"] * 3  # the two before, the big one
    assert all(isinstance(o, list) and o[0].kind == "stored" for o in outcomes[3:])  # the three after it
    assert store.verify_lineage().ok
    kept = {r.control_id for r in store.list_messages(MessageFilter(limit=10))}
    assert kept == {"W-FIRST", "W2", "W3", "W4"}


def test_lineage_search_by_receiver(store: SQLiteStore) -> None:
    from gateway.store import EventQuery

    async def go() -> None:
        await store.record_intake([replace(record("RCV-1"), receiver="LAB^FAC")])
        await store.record_intake([replace(record("RCV-2"), receiver="EHR^FAC")])

    asyncio.run(go())
    found = store.search_events(EventQuery(receiver="LAB^FAC"))
    (row,) = store.list_messages(MessageFilter(control_id="RCV-1"))
    assert found and {e.envelope_id for e in found} == {row.id}


def test_the_database_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """Bodies, the FHIR store and key rows live in the database: whatever the umask, a new data
    directory is ``0700`` and the database with its WAL and shared-memory files ``0600``; a database
    made readable to others before is closed to them when the store opens it."""
    data = tmp_path / "new" / "data"
    store = SQLiteStore(data / "gateway.db", b"k" * 32)
    old_umask = os.umask(0o022)
    try:
        store.open()

        async def go() -> None:
            await exchange(store, "MODE-1", b"MSH|one")

        asyncio.run(go())
        names = ["gateway.db", "gateway.db-wal", "gateway.db-shm"]
        assert {n: (data / n).stat().st_mode & 0o777 for n in names} == dict.fromkeys(names, 0o600)
        assert data.stat().st_mode & 0o777 == 0o700
        store.close()
        for n in names:
            if (data / n).exists():
                (data / n).chmod(0o644)
        again = SQLiteStore(data / "gateway.db", b"k" * 32)
        again.open()
        assert (data / "gateway.db").stat().st_mode & 0o777 == 0o600
        assert again.count_messages() == 1
        again.close()
    finally:
        os.umask(old_umask)


def test_order_keys_written_in_clear_before_become_pseudonyms(tmp_path: Path) -> None:
    """An outbox row from a version that kept ``order_by`` values in clear: the migration turns its
    order key into the pseudonym new rows get, so the patient id leaves the table and ordering holds."""
    path = tmp_path / "gw.db"
    first = SQLiteStore(path, b"k" * 32)
    first.open()
    first.close()
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO deliveries (id, message_id, sink, route, order_key, status, next_attempt_at,"
            " created_at, updated_at) VALUES ('m:ehr', 'm', 'ehr', 'adt', 'MRN-CLEAR-9^^^HOSP', 'pending', 0,"
            " '2026-01-01', '2026-01-01')"
        )
        db.execute("DROP TABLE pending_erasures")  # back to version 11: what later migrations made goes
        db.execute("PRAGMA user_version = 11")
    again = SQLiteStore(path, b"k" * 32)
    again.open()
    (row,) = again.list_deliveries(None, None)
    again.close()
    assert row.order_key == pseudonym(b"k" * 32, "MRN-CLEAR-9^^^HOSP")


def test_a_write_lock_held_by_another_process_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    """``gateway replay`` or ``subjects erase`` beside the server holds the write lock for a while:
    intake waits for it without blocking the event loop, so a timer on the loop (here: the one that
    lets the other writer finish) still runs, and the message is stored once the lock is free."""
    store = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    store.open()
    other = sqlite3.connect(tmp_path / "gw.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")

    async def go() -> str:
        asyncio.get_running_loop().call_later(0.3, other.execute, "COMMIT")
        (decision,) = await store.record_intake([record("LOCKED-1")])
        return decision.kind

    try:
        assert asyncio.run(go()) == "stored"
        assert store.count_messages() == 1
    finally:
        other.close()
        store.close()


def test_bodies_are_pruned_a_bounded_chunk_per_transaction(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However many bodies are due, each transaction takes a bounded share (its overwritten pages are
    held until it commits), each with its own ``BodiesPruned`` event, and all of them go."""
    monkeypatch.setattr("gateway.store.sqlite.PRUNE_CHUNK", 4)
    monkeypatch.setattr("gateway.store.sqlite.PRUNE_CHUNK_BYTES", 2500)

    async def go() -> int:
        for i in range(10):
            await store.record_intake([record(f"PRUNE-{i}", b"MSH|" + bytes([65 + i]) * 1000)])
        return await store.prune_bodies("9999", "retention")

    assert asyncio.run(go()) == 10
    events = [e for e in store.events_between(None, None) if e.event == "BodiesPruned"]
    assert [e.details["bodies"] for e in events] == [2, 2, 2, 2, 2]  # 2,500 bytes hold two 1 KB bodies
    assert all(store.get_raw(m.id) == b"" for m in store.list_messages(MessageFilter(limit=50)))


def test_a_keyed_detail_goes_into_lineage_as_its_pseudonym_and_a_key_search_finds_it(
    store: SQLiteStore,
) -> None:
    """A resource an event names (``details.resource``, :class:`Keyed`) enters the chain as the keyed
    pseudonym a business key of the same value gets, never as it is; a key search finds the event by that
    value even when no message is filed under it (a read, a version a sink wrote)."""
    from gateway.store import EventQuery

    drafts = [
        EventDraft(
            "ResourceRead", None, "user:ehr", "ok", details={"resource": Keyed("Patient/MRN-CLEAR-7")}
        ),
        EventDraft("ResourceRead", None, "user:ehr", "ok", details={"resource": Keyed("Patient/other")}),
    ]
    asyncio.run(store.record_events(drafts))
    with sqlite3.connect(store.path) as db:
        dump = repr(db.execute("SELECT * FROM lineage").fetchall())
    assert "MRN-CLEAR-7" not in dump
    (found,) = store.search_events(EventQuery(key="Patient/MRN-CLEAR-7"))
    assert found.details["resource"] == pseudonym(b"k" * 32, "Patient/MRN-CLEAR-7")
    assert store.verify_lineage().ok  # the chain covers the pseudonym, as stored


def test_a_keyed_value_cannot_be_written_anywhere_but_through_the_store() -> None:
    import orjson

    secret = Keyed("Patient/MRN-CLEAR-8")
    assert "MRN-CLEAR-8" not in repr(secret) and "MRN-CLEAR-8" not in repr(
        EventDraft("ResourceRead", None, "user:x", details={"resource": secret})
    )
    with pytest.raises(TypeError):
        orjson.dumps({"resource": secret})


def test_a_key_search_finds_a_resource_and_the_messages_filed_under_it(store: SQLiteStore) -> None:
    """``key: Patient/<id>`` finds the write filed under the patient key and every read of the resource."""
    from gateway.store import EventQuery

    written = replace(record("FHIR-1"), protocol="fhir", business_keys={"patient": "Patient/p-77"})

    async def go() -> None:
        await store.record_intake([written])
        await store.record_events(
            [
                EventDraft(
                    "ResourceRead", written.id, "user:a", "ok", details={"resource": Keyed("Patient/p-77")}
                )
            ]
        )
        await store.record_events(
            [EventDraft("ResourceRead", None, "user:b", "ok", details={"resource": Keyed("Patient/p-77")})]
        )

    asyncio.run(go())
    found = store.search_events(EventQuery(key="Patient/p-77"))
    assert [e.event for e in found] == ["MessageReceived", "MessageAccepted", "ResourceRead", "ResourceRead"]
    assert [e.seq for e in found] == sorted(e.seq for e in found)
    assert (
        store.search_events(EventQuery(key="Patient/p-77", event="ResourceRead", limit=1))[0].actor
        == "user:a"
    )
    assert store.search_events(EventQuery(key="Patient/p-78")) == []


def private_party(control_id: str, body: bytes, party: str) -> IntakeRecord:
    """A payment whose sender is a person, withheld behind a marker and told apart by a business key."""
    return replace(
        record(control_id, body, sender="private-party"),
        protocol="iso20022",
        business_keys={"private_party": party},
        masked_keys={"private_party": party[:1] + "…"},  # as the ISO 20022 adapter masks a name
        sender_key="private_party",
    )


def test_a_sender_withheld_behind_a_marker_is_told_apart_by_its_key(store: SQLiteStore) -> None:
    """Two people who use one control id are two senders, not one reusing it; the same person sending
    the same file again is a duplicate, and another file under the same control id a conflict."""

    async def go() -> list[str]:
        kinds = []
        for rec in (
            private_party("P-1", b"<a/>", "ANN EXAMPLE"),
            private_party("P-1", b"<b/>", "BOB EXAMPLE"),  # another person, the same MsgId
            private_party("P-1", b"<a/>", "ANN EXAMPLE"),  # Ann's file again
            private_party("P-1", b"<c/>", "ANN EXAMPLE"),  # Ann reuses her MsgId for another file
        ):
            (decision,) = await store.record_intake([rec])
            kinds.append(decision.kind)
        return kinds

    assert asyncio.run(go()) == ["stored", "stored", "duplicate", "conflict"]
    rows = store.list_messages(MessageFilter(control_id="P-1"))
    assert {r.sender for r in rows} == {"private-party"}
    with sqlite3.connect(store.path) as db:
        dump = repr(db.execute("SELECT * FROM messages").fetchall())
        dump += repr(db.execute("SELECT * FROM lineage").fetchall())
    assert "ANN EXAMPLE" not in dump and "BOB EXAMPLE" not in dump


def test_a_resend_of_a_file_stored_with_its_person_as_sender_is_still_a_duplicate(store: SQLiteStore) -> None:
    """A message stored before private senders were withheld has the person's value as its sender: the
    same file sent again is its duplicate, not a second payment."""

    async def go() -> list[str]:
        old = replace(record("P-2", b"<a/>", sender="ANN EXAMPLE"), protocol="iso20022", business_keys={})
        (first,) = await store.record_intake([old])
        (again,) = await store.record_intake([private_party("P-2", b"<a/>", "ANN EXAMPLE")])
        (other,) = await store.record_intake([private_party("P-2", b"<a/>", "BOB EXAMPLE")])
        return [first.kind, again.kind, other.kind]

    assert asyncio.run(go()) == ["stored", "duplicate", "stored"]


def test_erasure_replaces_a_resource_id_header_by_its_pseudonym(store: SQLiteStore) -> None:
    """A FHIR write names its resource in the ``resource_id`` header, shown as the pseudonym lineage names
    the resource by: once its patient is erased that pseudonym replaces the id at rest too, and its
    pending deliveries are dead-lettered."""
    from gateway.store import PlannedDelivery

    def write(control_id: str, patient: str, rtype: str, rid: str) -> IntakeRecord:
        return replace(
            record(control_id),
            protocol="fhir",
            headers={"resource_type": rtype, "resource_id": rid, "interaction": "update"},
            business_keys={"patient": patient},
            route="r",
            deliveries=(PlannedDelivery("registry", "r", None, None),),
        )

    erased = write("W-1", "Patient/MRN-GONE-9", "Patient", "MRN-GONE-9")
    about = write("W-2", "Patient/MRN-GONE-9", "Observation", "obs-of-gone-1")
    kept = write("W-3", "Patient/MRN-KEPT-9", "Patient", "MRN-KEPT-9")

    async def go() -> None:
        await store.record_intake([erased, about, kept])
        await store.erase_subject("Patient/MRN-GONE-9", "user:test")

    asyncio.run(go())
    key = b"k" * 32
    shown = {m.id: m for m in store.list_messages(MessageFilter())}
    assert shown[erased.id].headers["resource_id"] == pseudonym(key, "Patient/MRN-GONE-9")
    assert shown[about.id].headers["resource_id"] == pseudonym(key, "Observation/obs-of-gone-1")
    # a message shows its resource so in any case; the erased ones keep only the pseudonym at rest too
    assert shown[kept.id].headers["resource_id"] == pseudonym(key, "Patient/MRN-KEPT-9")
    states = {m: (d.status, d.last_error_code) for m in shown for d in store.deliveries_of(m)}
    assert states[erased.id] == states[about.id] == ("dead", "subject_erased")
    assert states[kept.id] == ("pending", "")
    with sqlite3.connect(store.path) as db:
        dump = repr(db.execute("SELECT * FROM messages").fetchall())
    assert "MRN-GONE-9" not in dump and "obs-of-gone-1" not in dump and "MRN-KEPT-9" in dump
