"""The embedded store: SQLite in WAL mode with group commit.

Writes are built on the event loop and made durable off it. A work item
(``submit``) joins the pending group; the store's pump takes *every* pending
item into one transaction, runs them in the loop thread (inserts are fast),
and hands only the COMMIT — the fsync that ``synchronous=FULL`` demands — to a
dedicated thread. Items that arrive while that fsync is in flight form the
next group. Under concurrency many messages share one fsync; a lone sender
never waits for a commit window. Keeping the statements on the loop thread
also means the fsync thread takes the GIL once per commit instead of once per
statement, which is what a writer thread competing with the event loop for the
GIL loses most of its time to. Between groups the pump yields once, so the
replies of the group just committed leave before the next group's statements
run: its senders prepare their next messages while the loop writes.

Each work item runs inside a savepoint, so one failing item does not take its
neighbours down; a failed COMMIT fails every item in it, and intake then
answers AE/AR or 503. Where SQLite itself rolls the whole transaction back
under an item (a full disk or an I/O error while pages spill to the WAL), the
items that ran before it fail with it, and the rest go into the next group. The hash chain head (last seq and hash) is restored
whenever a savepoint or a commit is rolled back.

Reads use their own connections and never wait for a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import orjson

from gateway.envelope import id_floor, new_id, utcnow
from gateway.errors import StoreError, StoreUnavailable
from gateway.lineage import (
    GENESIS_HASH,
    EventDraft,
    LineageEvent,
    Verification,
    event_hash,
    keyed,
    pseudonym,
    verify_chain,
)
from gateway.routing import UNMATCHED_ROUTE
from gateway.stock import Movement
from gateway.store import (
    CONTROL_ID_CONFLICT,
    Applied,
    AttemptResult,
    BatchRecord,
    DeliveryRow,
    DueDelivery,
    Effect,
    Erasure,
    EventQuery,
    Expunger,
    IntakeDecision,
    IntakeRecord,
    MessageFilter,
    MessageRow,
    ReplyRecord,
    SinkBacklog,
    ledger,
)
from gateway.store.ledger import MovementRow, PushRow, ReportRow, StockLevel
from gateway.store.migrations import MIGRATIONS
from gateway.store.subjects import BodyErased, SubjectKeys, seal_body, unseal_body

log = logging.getLogger("gateway.store")

RECORD_HEADERS = ("resource_type", "resource_id")
"""The headers that name the record a message is about by type and id (a FHIR write's resource, whose id
may be an MRN): lineage names it only by the pseudonym of ``type/id``, and so does every message shown, and
the message rows filed under an erased subject, at rest."""

T = TypeVar("T")
MAX_GROUP = 1024
DEFER_S = 0.02
PRUNE_CHUNK = 256
"""Bodies pruned per transaction at most (see :meth:`SQLiteStore.prune_bodies`)..."""
PRUNE_CHUNK_BYTES = 8 * 1024 * 1024
"""... and bytes of them, beyond the first body."""
"""Longest that work which nobody is waiting on for an ACK waits for a group commit to ride along with."""
WAL_CHECKPOINT_PAGES = 8000
"""Checkpoint the WAL every ~32 MiB rather than SQLite's 4 MiB: fewer, larger checkpoints cost less per commit."""


BUSY_TIMEOUT_MS = 10_000
"""How long a connection waits for another process's lock before it fails (SQLITE_BUSY)."""


def _connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    # savepoint journals and sorts stay in memory: SQLite's temporary files (in /var/tmp, unlinked at once)
    # would carry page images with patient data where neither erasure nor secure_delete reaches, and
    # opening one per group costs the event loop ~8% of its time per message under load
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def _private(path: Path) -> None:
    """Make the database readable by its owner only (it holds bodies, the FHIR store and key rows).

    A new file is created ``0600``; SQLite gives its ``-wal`` and ``-shm`` files the database's mode.
    An existing one, and files SQLite made before, are set to ``0600``."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for part in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(part, 0o600)


def _where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """`` WHERE ...`` for the conditions whose value is given, and their arguments.

    Each condition is ``("column = ?", value)``; a ``None`` or empty value leaves it out, a
    condition whose text has no ``?`` (``("status = 'dead'", True)``) is kept without an argument, and
    one with several takes a tuple of their arguments.
    """
    given = [(clause, value) for clause, value in conditions if value is not None and value != ""]
    if not given:
        return "", []
    text = " WHERE " + " AND ".join(clause for clause, _ in given)
    args: list[Any] = []
    for clause, value in given:
        if "?" in clause:
            args.extend(value if isinstance(value, tuple) else (value,))
    return text, args


def migrate(conn: sqlite3.Connection, pseudonym_key: bytes) -> int:
    """Bring the schema up to date; returns the version reached. Migrations may call ``pseudonym(v)``,
    the keyed pseudonym of a value under ``pseudonym_key``."""
    conn.create_function("pseudonym", 1, lambda v: pseudonym(pseudonym_key, v), deterministic=True)
    (level,) = conn.execute("PRAGMA user_version").fetchone()
    for number, script in enumerate(MIGRATIONS, start=1):
        if number <= level:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        level = number
    return int(level)


class _Txn:
    """What a work item may do inside the writer's transaction."""

    def __init__(self, conn: sqlite3.Connection, head: list[Any], key: bytes) -> None:
        self.conn = conn
        self.head = head  # [last_seq, last_hash]
        self._key = key

    def append(self, drafts: Sequence[EventDraft], at: str) -> None:
        """Seal ``drafts`` onto the chain, in order, and insert them in one statement; a
        :class:`~gateway.lineage.Keyed` value in their details goes in as its pseudonym."""
        if not self.conn.in_transaction:  # never seal events outside the group's transaction
            raise StoreUnavailable("the store's transaction was rolled back")
        seq, prev = self.head
        rows = []
        for given in drafts:
            draft = keyed(given, self._key)
            seq += 1
            digest = event_hash(seq, at, draft, prev)
            rows.append(
                (
                    seq,
                    at,
                    draft.event,
                    draft.envelope_id,
                    draft.parent_id,
                    draft.actor,
                    draft.outcome,
                    draft.error_code,
                    draft.raw_sha256,
                    orjson.dumps(draft.details, option=orjson.OPT_SORT_KEYS).decode(),
                    prev,
                    digest,
                )
            )
            prev = digest
        self.conn.executemany(
            "INSERT INTO lineage (seq, at, event, envelope_id, parent_id, actor, outcome, error_code,"
            " raw_sha256, details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        self.head[0] = seq
        self.head[1] = prev


class SQLiteStore:
    """The embedded default store (see the module docstring)."""

    def __init__(self, path: Path, pseudonym_key: bytes) -> None:
        self.path = path
        self._key = pseudonym_key
        self._pending: list[tuple[Callable[[_Txn], Any], asyncio.Future[Any]]] = []
        self._pump_task: asyncio.Task[None] | None = None
        self._committer: ThreadPoolExecutor | None = None
        self._head: list[Any] = [0, GENESIS_HASH]
        self._deferred: list[tuple[Callable[[_Txn], Any], asyncio.Future[Any]]] = []
        self._replies: list[ReplyRecord] = []
        self._defer_timer: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._wconn: sqlite3.Connection | None = None
        self._local = threading.local()
        self.commits = 0
        """Transactions committed (fewer than work items when group commit works)."""
        self._subjects = SubjectKeys(path.parent)
        self._dead_lettering: set[str] = set()
        """Deliveries with an erased body that a coming transaction dead-letters (_dead_letter_unreadable)."""

    # -- life cycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Create or migrate the database and get ready to write."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private(self.path)
        conn = _connect(self.path)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_CHECKPOINT_PAGES}")
        conn.execute("PRAGMA cache_size = -65536")  # 64 MiB: index pages stay hot between commits
        conn.execute(
            "PRAGMA secure_delete = ON"
        )  # dropped, pruned and erased bodies leave no copy in free pages
        migrate(conn, self._key)
        self._finish_erasures_on_open(conn)
        conn.execute("PRAGMA busy_timeout = 0")  # the write lock is waited for off the loop (_begin)
        row = conn.execute("SELECT seq, hash FROM lineage ORDER BY seq DESC LIMIT 1").fetchone()
        self._head = [row[0], row[1]] if row else [0, GENESIS_HASH]
        self._wconn = conn
        self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-commit")

    def _finish_erasures_on_open(self, conn: sqlite3.Connection) -> None:
        """Destroy the subject keys of erasures that were committed but stopped before their key went (a
        process killed between the steps of :meth:`erase_subject`). With none marked, no write lock is
        taken; with the lock held by another process past the busy time-out, the marks stay for the next
        open or erasure (their bodies read as erased meanwhile)."""
        if conn.execute("SELECT 1 FROM pending_erasures LIMIT 1").fetchone() is None:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")  # as every key change: under the write lock (see _destroy_keys)
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            log.warning("erasures left unfinished by a stop are not finished yet: the store is busy")
            return
        try:
            finished = self._destroy_keys(conn)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.warning(
            "erasures left unfinished by a stop are finished: their subject keys are destroyed now",
            extra={"erasures": finished},
        )

    def close(self) -> None:
        if self._committer is not None:
            self._committer.shutdown(wait=True)
            self._committer = None
        if self._wconn is not None:
            self._wconn.close()
            self._wconn = None

    # -- writing --------------------------------------------------------------------------------

    async def submit(self, fn: Callable[[_Txn], T], *, urgent: bool = True) -> T:
        """Run ``fn`` in a group's transaction; return once that transaction is durable.

        Urgent work (intake: a sender waits for its ACK) starts a group at once.
        Other work (delivery attempts, reply events) rides along with the next
        group, or is committed on its own after :data:`DEFER_S`: under load it
        costs no fsync of its own.
        """
        if self._wconn is None:
            raise StoreUnavailable("the store is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        if urgent:
            self._pending.append((fn, fut))
            self._start_pump(loop)
        else:
            self._deferred.append((fn, fut))
            if self._defer_timer is None:
                self._defer_timer = loop.call_later(DEFER_S, self._deferred_due)
        return await fut

    def _start_pump(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pump_task is None or self._pump_task.done():
            self._pump_task = loop.create_task(self._pump())

    def _deferred_due(self) -> None:
        self._defer_timer = None
        if self._deferred and self._wconn is not None:
            self._start_pump(asyncio.get_running_loop())

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        while (self._pending or self._deferred) and self._wconn is not None:
            work = self._pending + self._deferred
            group, rest = work[:MAX_GROUP], work[MAX_GROUP:]
            self._pending, self._deferred = rest, []
            await self._commit_group(loop, self._wconn, group)
            # let the group just committed send its replies before the next group's statements run:
            # its senders then prepare their next messages while this thread writes
            await asyncio.sleep(0)

    async def _commit_group(
        self,
        loop: asyncio.AbstractEventLoop,
        conn: sqlite3.Connection,
        group: list[tuple[Callable[[_Txn], Any], asyncio.Future[Any]]],
    ) -> None:
        start_head = list(self._head)
        try:
            await self._begin(loop, conn)
        except sqlite3.Error as exc:
            log.error("store begin failed", extra={"error": type(exc).__name__})
            for _, fut in group:
                _settle(fut, None, StoreUnavailable("the store cannot start a transaction"))
            return
        # another process (``gateway replay`` beside a running server) may have appended events
        row = conn.execute("SELECT seq, hash FROM lineage ORDER BY seq DESC LIMIT 1").fetchone()
        self._head[:] = [row[0], row[1]] if row else [0, GENESIS_HASH]
        start_head = list(self._head)
        txn = _Txn(conn, self._head, self._key)
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        for n, (fn, fut) in enumerate(group):
            item_head = list(self._head)
            try:
                conn.execute("SAVEPOINT item")
                value = fn(txn)
                conn.execute("RELEASE item")
                results.append((fut, value, None))
            except Exception as exc:  # one item's failure must not fail its neighbours
                if not conn.in_transaction:
                    # SQLite rolled the whole transaction back (a full disk or an I/O error while pages
                    # spilled): what the items before this one wrote is gone too
                    self._abandon(group[: n + 1], group[n + 1 :], start_head, exc)
                    return
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK TO item")
                    conn.execute("RELEASE item")
                self._head[:] = item_head
                failure: BaseException = exc
                if isinstance(exc, sqlite3.Error):
                    failure = StoreUnavailable("the store could not write")
                results.append((fut, None, failure))
        try:
            assert self._committer is not None
            await loop.run_in_executor(self._committer, conn.execute, "COMMIT")
        except (sqlite3.Error, RuntimeError, AssertionError) as exc:
            log.error("store commit failed", extra={"error": type(exc).__name__})
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._head[:] = start_head
            for _, fut in group:
                _settle(fut, None, StoreUnavailable("the store could not commit"))
            return
        self.commits += 1
        for fut, value, problem in results:
            _settle(fut, value, problem)

    def _abandon(
        self,
        lost: list[tuple[Callable[[_Txn], Any], asyncio.Future[Any]]],
        unrun: list[tuple[Callable[[_Txn], Any], asyncio.Future[Any]]],
        start_head: list[Any],
        exc: Exception,
    ) -> None:
        """The group's transaction is gone (see :meth:`_commit_group`): the items that ran in it fail, the
        ones not run yet go first into the next group (none of them may run outside a transaction: each
        statement would then commit on its own, chained to events that were rolled back), and the chain
        head is where the group began."""
        log.error("store transaction rolled back", extra={"error": type(exc).__name__})
        self._head[:] = start_head
        for _, fut in lost:
            _settle(fut, None, StoreUnavailable("the store could not write"))
        self._pending[:0] = unrun

    async def _begin(self, loop: asyncio.AbstractEventLoop, conn: sqlite3.Connection) -> None:
        """Take the write lock. Free (the rule) it is taken at once on the loop; held by another
        process (``gateway replay``, ``subjects erase``) the wait for it happens in the commit thread,
        up to the busy time-out, so that the loop serves reads and replies meanwhile."""
        try:
            conn.execute("BEGIN IMMEDIATE")  # the writer's busy time-out is 0: never waits here
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # BUSY, BUSY_RECOVERY …
                raise
        assert self._committer is not None
        await loop.run_in_executor(self._committer, _begin_waiting, conn)

    async def record_intake(
        self, records: Sequence[IntakeRecord], batch: BatchRecord | None = None
    ) -> list[IntakeDecision]:
        return await self.submit(lambda txn: self._intake(txn, records, batch))

    async def record_effect(self, effect: Effect) -> Applied:
        """Run ``effect`` in a committed transaction with the lineage events it gives.

        When it raises, nothing of it is kept and the caller gets the exception."""

        def fn(txn: _Txn) -> Applied:
            applied = effect(txn.conn)
            txn.append(applied.events, utcnow().isoformat())
            return applied

        return await self.submit(fn)

    async def record_events(self, drafts: Sequence[EventDraft]) -> None:
        def fn(txn: _Txn) -> None:
            txn.append(drafts, utcnow().isoformat())

        await self.submit(fn)

    def note_events(self, drafts: Sequence[EventDraft]) -> None:
        """Append lineage events with a coming transaction (access records and the like); nothing waits."""
        events = list(drafts)
        task = asyncio.get_running_loop().create_task(
            self.submit(lambda txn: txn.append(events, utcnow().isoformat()), urgent=False)
        )
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def note_replies(self, replies: Sequence[ReplyRecord]) -> None:
        """Record a ``ReplySent`` event per reply with a coming transaction; nothing waits for it.

        Replies noted before that transaction runs share one work item; if it
        fails they are kept and tried again with the next one.
        """
        first = not self._replies
        self._replies.extend(replies)
        if first:
            self._schedule_replies()

    def _schedule_replies(self) -> None:
        taken: list[ReplyRecord] = []

        def fn(txn: _Txn) -> None:
            taken.extend(self._replies)
            self._replies.clear()
            self._append_replies(txn, taken)

        def done(task: asyncio.Task[Any]) -> None:
            self._background.discard(task)
            if task.cancelled() or task.exception() is None or not taken:
                return
            log.warning("reply events not recorded yet; will retry", extra={"events": len(taken)})
            retry = not self._replies
            self._replies[:0] = taken
            if retry and self._wconn is not None:
                self._schedule_replies()

        task = asyncio.get_running_loop().create_task(self.submit(fn, urgent=False))
        self._background.add(task)
        task.add_done_callback(done)

    async def flush(self) -> None:
        """Commit everything waiting (reply events, attempts), for example before shutdown."""
        try:
            await self.submit(lambda txn: None)
        except StoreError:
            log.warning("could not flush the store")
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    @staticmethod
    def _append_replies(txn: _Txn, replies: Sequence[ReplyRecord]) -> None:
        if not replies:
            return
        txn.append(
            [
                EventDraft(
                    "ReplySent",
                    r.message_id,
                    r.actor,
                    outcome=r.code,
                    details={"decision": r.decision},
                )
                for r in replies
            ],
            utcnow().isoformat(),
        )
        conflicts = [(r.code, r.message_id) for r in replies if r.decision == "conflict"]
        if conflicts:
            txn.conn.executemany("UPDATE messages SET reply_code = ? WHERE id = ?", conflicts)

    async def check(self) -> bool:
        try:
            await asyncio.wait_for(self.submit(lambda txn: None), timeout=5)
        except (StoreError, TimeoutError):
            return False
        return True

    def _intake(
        self, txn: _Txn, records: Sequence[IntakeRecord], batch: BatchRecord | None
    ) -> list[IntakeDecision]:
        conn = txn.conn
        at = utcnow().isoformat()
        if batch is not None:
            # a batch whose messages a route seals is not kept whole in clear: its messages hold the bodies
            sealed = any(rec.storage == "encrypted" for rec in records)
            conn.execute(
                "INSERT INTO messages (id, received_at, protocol, message_type, status, listener, peer, client,"
                " raw, raw_sha256, storage) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    batch.id,
                    batch.received_at,
                    batch.protocol,
                    f"BATCH:{batch.kind}",
                    "batch",
                    batch.listener,
                    batch.peer,
                    batch.client,
                    b"" if sealed else batch.raw,
                    batch.raw_sha256,
                    "dropped:sealed-messages" if sealed else "full",
                ),
            )
            txn.append(
                [
                    EventDraft(
                        "BatchReceived",
                        batch.id,
                        batch.listener,
                        outcome="received",
                        raw_sha256=batch.raw_sha256,
                        details={
                            "kind": batch.kind,
                            "messages": len(records),
                            "bytes": len(batch.raw),
                            **({"issues": sorted({i.code for i in batch.issues})} if batch.issues else {}),
                        },
                    )
                ],
                at,
            )
        decisions = []
        for rec in records:
            decision = self._intake_one(txn, rec, at)
            decisions.append(decision)
            if decision.kind == "stored" and rec.reply_record is not None:
                self._intake_one(txn, rec.reply_record, at)
        return decisions

    def _intake_one(self, txn: _Txn, rec: IntakeRecord, at: str) -> IntakeDecision:
        conn = txn.conn
        keyed = bool(rec.control_id) and rec.outcome == "accepted"
        if keyed:
            sql = (
                "SELECT raw_sha256, id, content_sha256 FROM messages WHERE control_id = ? AND sender = ?"
                " AND protocol = ? AND status = 'accepted'"
            )
            args: tuple[str, ...] = (rec.control_id, rec.sender, rec.protocol)
            party = rec.business_keys.get(rec.sender_key) if rec.sender_key else None
            if party:
                # the sender is a marker standing for a person: only that person's messages count, those
                # filed under their pseudonym (or, stored before the person was withheld, sent by their
                # value: compared here, never written)
                sql = (
                    "SELECT raw_sha256, id, content_sha256 FROM messages WHERE control_id = ? AND protocol = ?"
                    " AND status = 'accepted' AND (sender = ? AND id IN"
                    " (SELECT message_id FROM message_keys WHERE pseudonym = ?) OR sender = ?)"
                )
                args = (rec.control_id, rec.protocol, rec.sender, pseudonym(self._key, party), party)
            row = conn.execute(sql + " LIMIT 1", args).fetchone()
            if row is not None:
                # The same bytes, or the same content: a row stored before its adapter gave a
                # content digest has none, and an identical resend must still match it.
                if row[0] == rec.raw_sha256 or (row[2] or row[0]) == (rec.content_sha256 or rec.raw_sha256):
                    txn.append(
                        [
                            EventDraft(
                                "DuplicateReceived",
                                row[1],
                                rec.listener,
                                outcome="duplicate",
                                raw_sha256=rec.raw_sha256,
                                details=self._receipt_details(rec),
                            )
                        ],
                        at,
                    )
                    return IntakeDecision("duplicate", row[1], "accepted")
                return self._insert(txn, rec, at, conflict_with=row[1])
        return self._insert(txn, rec, at, conflict_with=None)

    def _receipt_details(self, rec: IntakeRecord) -> dict[str, Any]:
        details: dict[str, Any] = {
            "protocol": rec.protocol,
            "message_type": rec.message_type,
            "control_id": rec.control_id,
            "bytes": len(rec.raw),
        }
        if rec.peer:
            details["peer"] = rec.peer
        if rec.client:
            details["client"] = rec.client
        if rec.business_keys:
            details["keys"] = {k: pseudonym(self._key, v) for k, v in sorted(rec.business_keys.items())}
        if rec.masked_keys:
            details["masked_keys"] = dict(sorted(rec.masked_keys.items()))
        return details

    def _insert(self, txn: _Txn, rec: IntakeRecord, at: str, conflict_with: str | None) -> IntakeDecision:
        issues = list(rec.issues)
        outcome = rec.outcome
        if conflict_with is not None:
            outcome = "invalid"
            issues.append(CONTROL_ID_CONFLICT)
        status = "accepted" if outcome == "accepted" else "rejected"
        raw, storage = rec.raw, "full"
        if rec.storage == "encrypted":
            subject = pseudonym(self._key, rec.subject) if rec.subject else f"message:{rec.id}"
            # an erasure of this subject is committed but its key not destroyed yet: destroy it now (in
            # this transaction, as erase_subject would), so that the new message gets a key of its own
            self._destroy_keys(txn.conn, subject)
            dek = self._subjects.key(subject, create=True)
            assert dek is not None
            raw, storage = seal_body(dek, rec.raw, rec.id.encode()), f"encrypted:{subject}"
        elif status == "accepted" and conflict_with is None and rec.storage == "metadata":
            storage = "metadata"
        txn.conn.execute(
            "INSERT INTO messages (id, received_at, protocol, version, message_type, control_id, sender, receiver,"
            " status, listener, peer, client, raw, raw_sha256, headers, business_keys, issues, parent_id,"
            " reply_code, route, content_sha256, storage) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                rec.id,
                rec.received_at,
                rec.protocol,
                rec.version,
                rec.message_type,
                rec.control_id,
                rec.sender,
                rec.receiver,
                status,
                rec.listener,
                rec.peer,
                rec.client,
                raw,
                rec.raw_sha256,
                orjson.dumps(dict(rec.headers)).decode(),
                orjson.dumps({k: rec.masked_keys.get(k, v) for k, v in rec.business_keys.items()}).decode(),
                orjson.dumps([asdict(i) for i in issues]).decode(),
                rec.parent_id,
                rec.reply_code if conflict_with is None else "",
                rec.route if conflict_with is None else "",
                rec.content_sha256,
                storage,
            ),
        )
        self._file_under(txn, rec.id, rec.business_keys.values())
        drafts = [
            EventDraft(
                "MessageReceived",
                rec.id,
                rec.listener,
                outcome="received",
                raw_sha256=rec.raw_sha256,
                parent_id=rec.parent_id,
                details=self._receipt_details(rec),
            )
        ]
        errors = [i for i in issues if i.is_error]
        # the validation outcome rides on the closing event (MessageAccepted / MessageRejected): one row
        # fewer per message than an event of its own
        closing: dict[str, Any] = {}
        if rec.validated:
            closing = {
                "validation": "invalid" if errors else "valid",
                "errors": len(errors),
                "warnings": len(issues) - len(errors),
                "codes": sorted({i.code for i in issues}),
            }
        effected: Applied | None = None
        if status == "accepted" and rec.effect is not None:
            effected = rec.effect(txn.conn)
            drafts.extend(effected.events)
            # what the effect wrote is about these too (a Bundle's patched resources)
            self._file_under(txn, rec.id, effected.keys)
        if effected is not None and not effected.routed:  # it changed nothing: nothing to deliver
            txn.conn.execute("UPDATE messages SET route = '' WHERE id = ?", (rec.id,))
        elif rec.route and conflict_with is None:
            drafts.append(self._route_event(txn, rec, at, status))
        if status == "accepted" and (rec.movements or rec.reports or rec.items):
            if rec.movements:
                applied = ledger.apply_movements(txn.conn, rec.movements, rec.id, rec.protocol, at)
                drafts.append(ledger.movement_event(applied, rec.id, "inventory"))
            if rec.reports:
                ledger.record_reports(txn.conn, rec.reports, rec.id, at)
            if rec.items:
                ledger.record_items(txn.conn, rec.items, at)
        if status == "accepted":
            drafts.append(
                EventDraft("MessageAccepted", rec.id, rec.listener, outcome="accepted", details=closing)
            )
        else:
            drafts.append(
                EventDraft(
                    "MessageRejected",
                    rec.id,
                    rec.listener,
                    outcome=outcome,
                    error_code=errors[0].code if errors else "rejected",
                    details={**closing, "original": conflict_with} if conflict_with else closing,
                )
            )
        txn.append(drafts, at)
        return IntakeDecision("conflict" if conflict_with else "stored", rec.id, outcome, effected)

    def _file_under(self, txn: _Txn, message_id: str, values: Iterable[str]) -> None:
        """File the message under these business key values, by their pseudonyms (each once)."""
        rows = [(pseudonym(self._key, v), message_id) for v in dict.fromkeys(values)]
        if rows:
            txn.conn.executemany(
                "INSERT OR IGNORE INTO message_keys (pseudonym, message_id) VALUES (?, ?)", rows
            )

    def _route_event(self, txn: _Txn, rec: IntakeRecord, at: str, status: str) -> EventDraft:
        """Write the outbox rows of an accepted record; return the routing lineage event."""
        sinks = [d.sink for d in rec.deliveries]
        if status == "accepted" and rec.deliveries:
            now = time.time()
            txn.conn.executemany(
                "INSERT INTO deliveries (id, message_id, sink, route, transform, order_key, status, attempts,"
                " next_attempt_at, created_at, updated_at) VALUES (?,?,?,?,?,?,'pending',0,?,?,?)",
                [
                    (
                        f"{rec.id}:{d.sink}",
                        rec.id,
                        d.sink,
                        d.route,
                        d.transform,
                        # only equality matters for ordering: a patient id is kept as its pseudonym
                        pseudonym(self._key, d.order_key) if d.order_key else None,
                        now,
                        at,
                        at,
                    )
                    for d in rec.deliveries
                ],
            )
        unmatched = rec.route == UNMATCHED_ROUTE
        return EventDraft(
            "RouteUnmatched" if unmatched else "RouteMatched",
            rec.id,
            f"route:{rec.route}",
            outcome=("rejected" if not sinks else "routed") if unmatched else "routed",
            details={
                "route": rec.route,
                "sinks": sinks,
                **({"online": list(rec.online)} if rec.online else {}),
            },
        )

    # -- deliveries -----------------------------------------------------------------------------

    async def record_attempts(self, results: Sequence[AttemptResult]) -> None:
        await self.submit(lambda txn: self._attempts(txn, results), urgent=False)

    def _attempts(self, txn: _Txn, results: Sequence[AttemptResult]) -> None:
        at = utcnow().isoformat()
        drafts: list[EventDraft] = []
        delivered: list[tuple[int, str, str, str]] = []
        done: set[str] = set()
        for r in results:
            actor = f"sink:{r.sink}"
            base = {"delivery_id": r.delivery_id, "attempt": r.attempt}
            drafts.append(
                EventDraft(
                    "DeliveryAttempted",
                    r.message_id,
                    actor,
                    outcome="attempted",
                    details={**base, "started_at": r.started_at, "duration_ms": round(r.duration_ms, 1)},
                )
            )
            if r.outcome == "delivered":
                delivered.append((r.attempt, at, at, r.delivery_id))
                done.add(r.message_id)
                drafts.append(
                    EventDraft("DeliverySucceeded", r.message_id, actor, outcome="delivered", details=base)
                )
            else:
                # a failed attempt changes its row only while it is pending: one dead-lettered while the
                # attempt was out (its subject erased) stays as the erasure left it, never to be replayed
                if r.outcome == "retry":
                    cur = txn.conn.execute(
                        "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error_code = ?,"
                        " last_error = ?, updated_at = ? WHERE id = ? AND status = 'pending'",
                        (r.attempt, r.next_attempt_at, r.error_code, r.reason, at, r.delivery_id),
                    )
                else:
                    cur = txn.conn.execute(
                        "UPDATE deliveries SET status = 'dead', attempts = ?, last_error_code = ?, last_error = ?,"
                        " updated_at = ? WHERE id = ? AND status = 'pending'",
                        (r.attempt, r.error_code, r.reason, at, r.delivery_id),
                    )
                if r.outcome == "retry" and cur.rowcount:
                    drafts.append(
                        EventDraft(
                            "DeliveryFailed",
                            r.message_id,
                            actor,
                            outcome="retrying",
                            error_code=r.error_code,
                            details={**base, "next_attempt_at": r.next_attempt_at},
                        )
                    )
                    continue
                drafts.append(
                    EventDraft(
                        "DeliveryFailed",
                        r.message_id,
                        actor,
                        outcome="failed",  # no retry follows
                        error_code=r.error_code,
                        details=base,
                    )
                )
                if cur.rowcount:  # else dead-lettered already, while the attempt was out
                    drafts.append(
                        EventDraft(
                            "DeadLettered",
                            r.message_id,
                            actor,
                            outcome="dead",
                            error_code=r.error_code,
                            details=base,
                        )
                    )
        if delivered:
            txn.conn.executemany(
                "UPDATE deliveries SET status = 'delivered', attempts = ?, updated_at = ?, delivered_at = ?,"
                " last_error_code = '', last_error = '' WHERE id = ?",
                delivered,
            )
            drafts.extend(self._drop_delivered_bodies(txn.conn, done))
        txn.append(drafts, at)

    @staticmethod
    def _drop_delivered_bodies(conn: sqlite3.Connection, message_ids: set[str]) -> list[EventDraft]:
        """``storage: metadata``: a body goes once every delivery of its message succeeded."""
        drafts = []
        for mid in sorted(message_ids):
            cur = conn.execute(
                "UPDATE messages SET raw = x'', storage = 'metadata:dropped' WHERE id = ? AND storage = 'metadata'"
                " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE message_id = ? AND status != 'delivered')",
                (mid, mid),
            )
            if cur.rowcount:
                drafts.append(EventDraft("BodyDropped", mid, "store", outcome="metadata"))
        return drafts

    def _plain(self, raw: bytes, storage: str, message_id: str) -> bytes:
        """The body as received, unsealed where the route said ``encrypted``; :class:`BodyErased` when its
        subject was erased."""
        if not storage.startswith("encrypted:"):
            return raw
        subject = storage.removeprefix("encrypted:")
        # erased once the erasure is committed, before its key is destroyed too (and if it never is)
        if self._erasure_pending(subject):
            raise BodyErased("the body's data subject was erased")
        dek = self._subjects.key(subject, create=False)
        if dek is None:
            raise BodyErased("the body's data subject was erased")
        try:
            return unseal_body(dek, raw, message_id.encode())
        except StoreError:  # sealed under a key erased since (the subject has a new one now)
            raise BodyErased("the body's data subject was erased") from None

    def _erasure_pending(self, subject: str | None = None) -> bool:
        """Whether an erasure (of ``subject``, or any) is committed and its key not destroyed yet."""
        where, args = _where(("subject = ?", subject))
        try:
            row = (
                self._reader()
                .execute(f"SELECT 1 FROM pending_erasures{where} LIMIT 1", args)  # noqa: S608 - bound values
                .fetchone()
            )
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # a store not migrated yet, read as it is: it marks nothing
                return False
            raise
        return row is not None

    async def erase_subject(self, value: str, actor: str, expungers: Sequence[Expunger] = ()) -> Erasure:
        """Erase a data subject, in an order that a crash at any point cannot turn into a half erasure:

        1. one transaction (:meth:`_erasure`) scrubs their values beside the bodies, dead-letters their
           pending deliveries, lets each expunger remove what its tables hold about them, records
           ``SubjectErased`` and marks the subject's key to be destroyed (``pending_erasures``); from
           its commit on, their sealed bodies read as erased;
        2. then the key is deleted from subject-keys.db, and
        3. the mark is removed (:meth:`_destroy_keys`, in a transaction of its own).

        A process stopped after 1 leaves the mark: the next open of the store (server start, a CLI
        command that writes), the next erasure or a running server's :meth:`finish_erasures` finishes
        it; intake of a new message of the subject does too, before it gives the subject a new key."""
        done = await self.submit(
            functools.partial(self._erasure, value=value, actor=actor, expungers=expungers)
        )
        try:
            await self.submit(lambda txn: self._destroy_keys(txn.conn))
        except (StoreError, OSError) as exc:
            raise StoreUnavailable(
                "the erasure is recorded and its bodies read as erased, but its key is not destroyed yet:"
                " it will be when the store is next opened, or when the erasure is run again"
            ) from exc
        if done.records or done.bodies:
            await asyncio.get_running_loop().run_in_executor(None, self._purge_wal)
        return done

    async def finish_erasures(self) -> int:
        """Destroy the keys of erasures committed but stopped before their key went, and clear their
        marks; returns how many. Opening the store does it; a running server calls this now and then,
        for a ``gateway subjects erase`` killed beside it. Nothing is written when nothing is marked."""
        if not self._erasure_pending():
            return 0
        finished = await self.submit(lambda txn: self._destroy_keys(txn.conn))
        if finished:
            log.warning(
                "erasures left unfinished by a stop are finished: their subject keys are destroyed now",
                extra={"erasures": finished},
            )
        return finished

    def _erasure(self, txn: _Txn, value: str, actor: str, expungers: Sequence[Expunger]) -> Erasure:
        """Step 1 of :meth:`erase_subject`: all of the erasure that the main database holds, and the mark
        that its key is to be destroyed. A failure here (an expunger's) leaves everything as it was."""
        subject = pseudonym(self._key, value)
        conn = txn.conn
        at = utcnow().isoformat()
        ids = [
            r[0] for r in conn.execute("SELECT id FROM messages WHERE storage = ?", (f"encrypted:{subject}",))
        ]
        # messages about them too but sealed under another subject's key (a Bundle about several
        # patients, sealed under the first one's): their bodies go, as that key cannot
        shared = [
            r[0]
            for r in conn.execute(
                "SELECT m.id FROM message_keys k JOIN messages m ON m.id = k.message_id"
                " WHERE k.pseudonym = ? AND m.storage LIKE 'encrypted:%' AND m.storage != ?",
                (subject, f"encrypted:{subject}"),
            )
        ]
        for mid in shared:
            conn.execute(
                "UPDATE messages SET raw = x'', storage = ? WHERE id = ?", (f"encrypted:{subject}", mid)
            )
        ids += shared
        named = self._scrub_keys(conn, value, subject)
        pending = [
            (r[0], r[1], r[2])
            for mid in dict.fromkeys([*ids, *named])  # what was erased is not written downstream afterwards
            for r in conn.execute(
                "SELECT id, message_id, sink FROM deliveries WHERE message_id = ? AND status = 'pending'"
                " ORDER BY seq",
                (mid,),
            )
        ]
        dead = self._dead_letter_erased(conn, pending, actor, at)
        records = sum(expunge(conn, value, subject) for expunge in expungers)
        # in the writer's turn: no intake makes or uses the subject's key meanwhile
        had_key = self._subjects.has(subject)
        conn.execute("INSERT OR REPLACE INTO pending_erasures (subject, at) VALUES (?, ?)", (subject, at))
        txn.append(
            [
                EventDraft(
                    "SubjectErased",
                    None,
                    actor,
                    outcome="erased" if had_key or records else "no_key",
                    details={"subject": subject, "messages": len(ids), "records": records},
                ),
                *dead,
            ],
            at,
        )
        return Erasure(len(ids), records)

    def _destroy_keys(self, conn: sqlite3.Connection, subject: str | None = None) -> int:
        """Steps 2 and 3 of :meth:`erase_subject`, for every marked erasure (or ``subject``'s): delete the
        key in subject-keys.db, then the mark. Run inside a write transaction of the main database, as
        every key change is (intake makes keys in its own), so that no key is made or used meanwhile;
        should that transaction not commit, the mark stays and the next run deletes nothing twice."""
        where, args = _where(("subject = ?", subject))
        marked = [r[0] for r in conn.execute(f"SELECT subject FROM pending_erasures{where}", args)]  # noqa: S608
        for each in marked:
            self._subjects.erase(each)
            conn.execute("DELETE FROM pending_erasures WHERE subject = ?", (each,))
        return len(marked)

    @staticmethod
    def _dead_letter_erased(
        conn: sqlite3.Connection, deliveries: Iterable[tuple[str, str, str]], actor: str | None, at: str
    ) -> list[EventDraft]:
        """Dead-letter pending deliveries whose body can no longer be read, as their data subject was
        erased (``subject_erased``: :meth:`replay` never brings them back); ``deliveries`` are (delivery
        id, message id, sink). Returns a ``DeadLettered`` event per row changed (one no longer pending is
        left as it is), by ``actor`` or else the sink's worker."""
        drafts = []
        for delivery_id, message_id, sink in deliveries:
            cur = conn.execute(
                "UPDATE deliveries SET status = 'dead', last_error_code = 'subject_erased', last_error = ?,"
                " updated_at = ? WHERE id = ? AND status = 'pending'",
                ("The data subject was erased.", at, delivery_id),
            )
            if cur.rowcount:
                drafts.append(
                    EventDraft(
                        "DeadLettered",
                        message_id,
                        actor or f"sink:{sink}",
                        outcome="dead",
                        error_code="subject_erased",
                        details={"delivery_id": delivery_id, "sink": sink},
                    )
                )
        return drafts

    def _dead_letter_unreadable(self, deliveries: Sequence[tuple[str, str, str]]) -> None:
        """Dead-letter, with a coming transaction, pending deliveries that :meth:`due_deliveries` found
        with a body that cannot be read any more, instead of passing over them for ever (and holding up
        the deliveries behind them under the same order key): their subject's key went while they were
        still pending, as when an erasure that destroyed the key before committing was cut off by a
        crash, or a key was deleted outside an erasure. Each gets its ``DeadLettered`` event as in an
        erasure. Nothing waits for it; without a running loop (a plain read), the next read by a
        delivery worker does it."""
        fresh = [d for d in deliveries if d[0] not in self._dead_lettering]
        if not fresh:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        ids = {d[0] for d in fresh}
        self._dead_lettering |= ids

        def fn(txn: _Txn) -> int:
            at = utcnow().isoformat()
            drafts = self._dead_letter_erased(txn.conn, fresh, None, at)
            if drafts:
                txn.append(drafts, at)
            return len(drafts)

        def done(task: asyncio.Task[int]) -> None:
            self._background.discard(task)
            self._dead_lettering -= ids
            if task.cancelled():
                return
            if task.exception() is not None:
                log.warning(
                    "could not dead-letter deliveries with erased bodies; will retry",
                    extra={"deliveries": len(ids)},
                )
            elif task.result():
                log.warning(
                    "deliveries dead-lettered: their data subject's key is gone, their bodies cannot be read",
                    extra={"deliveries": task.result(), "error_code": "subject_erased"},
                )

        task = loop.create_task(self.submit(fn, urgent=False))
        self._background.add(task)
        task.add_done_callback(done)

    def _scrub_keys(self, conn: sqlite3.Connection, value: str, subject: str) -> list[str]:
        """Replace the erased subject's value by its pseudonym wherever a message row keeps it in clear
        (the promoted headers and business keys of the messages filed under it; an outbox order key
        written before those were pseudonyms). A record those messages name by type and id
        (:data:`RECORD_HEADERS`: the FHIR resource a write is about, erased with the subject) keeps only
        the pseudonym of ``type/id`` for its id, as lineage names it. Returns the ids of the messages that
        name such a record: their pending deliveries are to be dead-lettered, as a sink could no longer
        name it."""
        rows = conn.execute(
            "SELECT m.id, m.headers, m.business_keys FROM message_keys k JOIN messages m ON m.id = k.message_id"
            " WHERE k.pseudonym = ?",
            (subject,),
        ).fetchall()
        named: list[str] = []
        for mid, headers_json, keys_json in rows:
            headers, keys = orjson.loads(headers_json), orjson.loads(keys_json)
            for name, held in keys.items():
                if held == value:
                    keys[name] = subject
                    if headers.get(name) == value:
                        headers[name] = subject
            hidden = self._record_pseudonym(headers)
            if hidden:
                headers[RECORD_HEADERS[1]] = hidden
                named.append(mid)
            conn.execute(
                "UPDATE messages SET headers = ?, business_keys = ? WHERE id = ?",
                (orjson.dumps(headers).decode(), orjson.dumps(keys).decode(), mid),
            )
        conn.execute("UPDATE deliveries SET order_key = ? WHERE order_key = ?", (subject, value))
        return named

    def _record_pseudonym(self, headers: Mapping[str, Any]) -> str:
        """The pseudonym of ``type/id`` for the record ``headers`` name (:data:`RECORD_HEADERS`); ``""``
        when they name none, or hold its pseudonym already."""
        rtype, rid = RECORD_HEADERS
        named = headers.get(rid)
        if not isinstance(named, str) or not named or named.startswith("hk:"):
            return ""
        return pseudonym(self._key, f"{headers.get(rtype, '')}/{named}")

    def _purge_wal(self) -> None:
        """Copy the WAL into the database and empty it, so that pages holding removed rows survive
        nowhere (``secure_delete`` has overwritten them in the database file itself). It waits for
        readers on older snapshots; when one holds on past the busy timeout, the WAL is left as it is,
        and later writes overwrite it from its start."""
        conn = _connect(self.path)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                log.warning("store wal not emptied after an erasure; a reader held on")
        finally:
            conn.close()

    async def replay(self, message_id: str | None, sink: str | None, actor: str) -> int:
        def fn(txn: _Txn) -> int:
            where, args = _where(
                ("status = 'dead'", True),
                ("last_error_code != 'subject_erased'", True),
                ("message_id = ?", message_id),
                ("sink = ?", sink),
            )
            rows = txn.conn.execute(
                "SELECT id, message_id, sink FROM deliveries" + where + " ORDER BY seq",  # noqa: S608
                args,
            ).fetchall()
            if not rows:
                return 0
            at = utcnow().isoformat()
            now = time.time()
            txn.conn.executemany(
                # pending anew: its age (for backlog alerts) counts from the replay
                "UPDATE deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, updated_at = ?,"
                " created_at = ? WHERE id = ?",
                [(now, at, at, r[0]) for r in rows],
            )
            txn.append(
                [
                    EventDraft(
                        "Replayed",
                        r[1],
                        actor,
                        outcome="pending",
                        details={"delivery_id": r[0], "sink": r[2]},
                    )
                    for r in rows
                ],
                at,
            )
            return len(rows)

        return await self.submit(fn)

    _DELIVERY_COLUMNS = (
        "id, message_id, sink, route, transform, order_key, status, attempts, next_attempt_at,"
        " last_error_code, last_error, created_at, updated_at, delivered_at"
    )

    def deliveries_of(self, message_id: str) -> list[DeliveryRow]:
        rows = self._reader().execute(
            f"SELECT {self._DELIVERY_COLUMNS} FROM deliveries WHERE message_id = ? ORDER BY seq",  # noqa: S608
            (message_id,),
        )
        return [DeliveryRow(*r) for r in rows]

    def list_deliveries(self, status: str | None, sink: str | None, limit: int = 100) -> list[DeliveryRow]:
        where, args = _where(("status = ?", status), ("sink = ?", sink))
        sql = f"SELECT {self._DELIVERY_COLUMNS} FROM deliveries{where} ORDER BY seq DESC LIMIT ?"  # noqa: S608
        return [DeliveryRow(*r) for r in self._reader().execute(sql, [*args, max(1, min(limit, 1000))])]

    def due_deliveries(self, sink: str, now: float, limit: int, exclude: set[str]) -> list[DueDelivery]:
        rows = self._reader().execute(
            "SELECT d.seq, d.id, d.message_id, d.sink, d.route, d.transform, d.order_key, d.attempts,"
            " m.received_at, m.protocol, m.version, m.message_type, m.control_id, m.sender, m.receiver,"
            " m.raw, m.raw_sha256, m.headers, m.storage"
            " FROM deliveries d JOIN messages m ON m.id = d.message_id"
            " WHERE d.sink = ? AND d.status = 'pending' AND d.next_attempt_at <= ?"
            " AND (d.order_key IS NULL OR d.seq = (SELECT min(e.seq) FROM deliveries e"
            "      WHERE e.sink = d.sink AND e.order_key = d.order_key AND e.status = 'pending'))"
            " ORDER BY d.seq LIMIT ?",
            (sink, now, limit + len(exclude)),
        )
        out = []
        unreadable: list[tuple[str, str, str]] = []
        for r in rows:
            if r[1] in exclude:
                continue
            try:
                raw = self._plain(bytes(r[15]), r[18], r[2])
            except BodyErased:
                # never deliverable: dead-lettered (an erasure does that; this one was left pending)
                unreadable.append((r[1], r[2], r[3]))
                continue
            out.append(
                DueDelivery(
                    seq=r[0],
                    id=r[1],
                    message_id=r[2],
                    sink=r[3],
                    route=r[4],
                    transform=r[5],
                    order_key=r[6],
                    attempts=r[7],
                    received_at=r[8],
                    protocol=r[9],
                    version=r[10],
                    message_type=r[11],
                    control_id=r[12],
                    sender=r[13],
                    receiver=r[14],
                    raw=raw,
                    raw_sha256=r[16],
                    headers=orjson.loads(r[17]),
                )
            )
            if len(out) >= limit:
                break
        if unreadable:
            self._dead_letter_unreadable(unreadable)
        return out

    def next_due_at(self, sink: str) -> float | None:
        (when,) = (
            self._reader()
            .execute(
                "SELECT min(next_attempt_at) FROM deliveries WHERE sink = ? AND status = 'pending'", (sink,)
            )
            .fetchone()
        )
        return float(when) if when is not None else None

    def backlog(self) -> list[SinkBacklog]:
        rows = self._reader().execute(
            "SELECT sink, sum(status = 'pending'), min(CASE WHEN status = 'pending' THEN created_at END),"
            " sum(status = 'dead') FROM deliveries WHERE status != 'delivered' GROUP BY sink"
        )
        out = []
        for sink, pending, oldest, dead in rows:
            oldest_ts = datetime.fromisoformat(oldest).timestamp() if oldest else None
            out.append(SinkBacklog(sink, int(pending or 0), oldest_ts, int(dead or 0)))
        return out

    # -- inventory ledger -----------------------------------------------------------------------

    async def apply_stock(self, movements: Sequence[Movement], message_id: str, actor: str) -> list[str]:
        def fn(txn: _Txn) -> list[str]:
            at = utcnow().isoformat()
            applied = ledger.apply_movements(txn.conn, movements, message_id, actor, at)
            txn.append([ledger.movement_event(applied, message_id, actor)], at)
            return sorted({m.sku for m in applied.applied})

        return await self.submit(fn)

    async def adjust_stock(self, sku: str, location: str, on_hand: int, actor: str) -> StockLevel:
        def fn(txn: _Txn) -> StockLevel:
            at = utcnow().isoformat()
            delta = on_hand - ledger.on_hand_at(txn.conn, sku, location)
            move = Movement(f"adjustment:{new_id()}", location, sku, on_hand=delta, kind="adjustment")
            applied = ledger.apply_movements(txn.conn, [move], None, actor, at)
            txn.append([ledger.movement_event(applied, None, actor, "StockAdjusted")], at)
            return ledger.stock_level(txn.conn, sku)

        return await self.submit(fn)

    async def record_push(self, channel: str, sku: str, available: int, version: int) -> None:
        def fn(txn: _Txn) -> None:
            at = utcnow().isoformat()
            ledger.record_push(txn.conn, channel, sku, available, version, at)
            details = {"channel": channel, "sku": sku, "available": available, "version": version}
            txn.append(
                [EventDraft("InventoryPushed", None, f"inventory:{channel}", "delivered", details=details)],
                at,
            )

        await self.submit(fn, urgent=False)

    async def forget_pushes(
        self, channel: str, skus: Sequence[str], actor: str, drift: Mapping[str, int]
    ) -> None:
        def fn(txn: _Txn) -> None:
            at = utcnow().isoformat()
            for sku in skus:
                ledger.forget_push(txn.conn, channel, sku)
            details = {
                "channel": channel,
                "skus": sorted(skus)[: ledger.MAX_SKUS_IN_EVENT],
                "drift": dict(drift),
            }
            txn.append([EventDraft("InventoryDriftFixed", None, actor, "repush", details=details)], at)

        await self.submit(fn)

    def stock(self, sku: str) -> StockLevel:
        return ledger.stock_level(self._reader(), sku)

    def stock_skus(self) -> list[str]:
        return ledger.skus(self._reader())

    def stock_movements(self, sku: str, limit: int = 20) -> list[MovementRow]:
        return ledger.movements_of(self._reader(), sku, max(1, min(limit, 1000)))

    def stock_pushes(self, channel: str | None = None) -> list[PushRow]:
        return ledger.pushes(self._reader(), channel)

    def stock_items(self, channel: str) -> dict[str, str]:
        return ledger.items(self._reader(), channel)

    def stock_reports(self, channel: str) -> list[ReportRow]:
        return ledger.reports(self._reader(), channel)

    # -- reads --------------------------------------------------------------------------------

    def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on this thread's read-only connection (it sees what has committed)."""
        return fn(self._reader())

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.exists():
                raise StoreError(f"no store at {self.path}")
            conn = _connect(self.path, readonly=True)
            self._local.conn = conn
        return conn

    _COLUMNS = (
        "id, received_at, protocol, version, message_type, control_id, sender, receiver, status, reply_code,"
        " listener, peer, client, raw_sha256, length(raw), headers, issues, parent_id, business_keys, route"
    )

    def _row(self, r: Sequence[Any]) -> MessageRow:
        """A message for display: header values that are business keys show as their pseudonyms, and so
        does the id of the record it names (:data:`RECORD_HEADERS`), as lineage names that record."""
        headers = orjson.loads(r[15])
        for key, value in orjson.loads(r[18]).items():
            if key in headers:  # an erased subject's value is a pseudonym already
                headers[key] = value if value.startswith("hk:") else pseudonym(self._key, value)
        hidden = self._record_pseudonym(headers)
        if hidden:
            headers[RECORD_HEADERS[1]] = hidden
        return MessageRow(
            id=r[0],
            received_at=r[1],
            protocol=r[2],
            version=r[3],
            message_type=r[4],
            control_id=r[5],
            sender=r[6],
            receiver=r[7],
            status=r[8],
            reply_code=r[9],
            listener=r[10],
            peer=r[11],
            client=r[12],
            raw_sha256=r[13],
            size=r[14],
            route=r[19],
            headers=headers,
            issues=orjson.loads(r[16]),
            parent_id=r[17],
        )

    def list_messages(self, flt: MessageFilter) -> list[MessageRow]:
        where, args = _where(
            ("control_id = ?", flt.control_id),
            ("protocol = ?", flt.protocol),
            ("message_type = ?", flt.message_type),
            ("status = ?", flt.status),
            ("id >= ?", id_floor(flt.since) if flt.since else None),
            ("id < ?", id_floor(flt.until) if flt.until else None),
            ("id < ?", flt.before_id),
        )
        sql = f"SELECT {self._COLUMNS} FROM messages{where} ORDER BY id DESC LIMIT ?"  # noqa: S608 - bound values
        return [self._row(r) for r in self._reader().execute(sql, [*args, max(1, min(flt.limit, 1000))])]

    def get_message(self, message_id: str) -> MessageRow | None:
        r = (
            self._reader()
            .execute(
                f"SELECT {self._COLUMNS} FROM messages WHERE id = ?",  # noqa: S608 - constant columns
                (message_id,),
            )
            .fetchone()
        )
        return self._row(r) if r else None

    def get_raw(self, message_id: str) -> bytes | None:
        """The body as received (unsealed); ``b""`` once dropped by ``storage: metadata``; raises
        :class:`BodyErased` when its subject was erased."""
        r = self._reader().execute("SELECT raw, storage FROM messages WHERE id = ?", (message_id,)).fetchone()
        return self._plain(bytes(r[0]), r[1], message_id) if r else None

    def count_messages(self) -> int:
        (n,) = self._reader().execute("SELECT count(*) FROM messages WHERE status != 'batch'").fetchone()
        return int(n)

    @staticmethod
    def _event(r: Sequence[Any]) -> LineageEvent:
        return LineageEvent(
            seq=r[0],
            at=r[1],
            event=r[2],
            envelope_id=r[3],
            parent_id=r[4],
            actor=r[5],
            outcome=r[6],
            error_code=r[7],
            raw_sha256=r[8],
            details=orjson.loads(r[9]),
            prev_hash=r[10],
            hash=r[11],
        )

    _EVENT_COLUMNS = "seq, at, event, envelope_id, parent_id, actor, outcome, error_code, raw_sha256, details, prev_hash, hash"

    def lineage_of(self, message_id: str) -> list[LineageEvent]:
        rows = self._reader().execute(
            f"SELECT {self._EVENT_COLUMNS} FROM lineage"  # noqa: S608 - constant columns
            " WHERE envelope_id = ? OR parent_id = ? ORDER BY seq",
            (message_id, message_id),
        )
        return [self._event(r) for r in rows]

    def events_between(self, since: str | None, until: str | None) -> Iterator[LineageEvent]:
        """Lineage events with ``since <= at < until`` (ISO 8601, UTC), in chain order."""
        where, args = _where(("at >= ?", since), ("at < ?", until))
        sql = f"SELECT {self._EVENT_COLUMNS} FROM lineage{where} ORDER BY seq"  # noqa: S608 - bound values
        conn = _connect(self.path, readonly=True)
        try:
            for row in conn.execute(sql, args):
                yield self._event(row)
        finally:
            conn.close()

    def search_events(self, q: EventQuery) -> list[LineageEvent]:
        """Lineage events matching every given criterion, in chain order, from ``after_seq`` on.

        A business key is looked up by its pseudonym (the value is never stored): the events of the
        messages filed under it, and the events that name a record by it (a FHIR resource read or written,
        ``details.resource``, as ``Patient/<id>``); message criteria (control id, sender, receiver,
        protocol, type, route) select the events of those messages; ``sink`` selects the events its
        delivery worker wrote.
        """
        key = pseudonym(self._key, q.key) if q.key else None
        where, args = _where(
            (
                "l.seq IN (SELECT seq FROM lineage WHERE envelope_id IN"
                " (SELECT message_id FROM message_keys WHERE pseudonym = ?)"
                " UNION SELECT seq FROM lineage WHERE json_extract(details, '$.resource') = ?)",
                (key, key) if key else None,
            ),
            ("m.control_id = ?", q.control_id),
            ("m.sender = ?", q.sender),
            ("m.receiver = ?", q.receiver),
            ("m.protocol = ?", q.protocol),
            ("m.message_type = ?", q.message_type),
            ("m.route = ?", q.route),
            ("l.event = ?", q.event),
            ("l.outcome = ?", q.outcome),
            ("l.actor = ?", f"sink:{q.sink}" if q.sink else None),
            ("l.at >= ?", q.since),
            ("l.at < ?", q.until),
            ("l.seq > ?", q.after_seq),
        )
        columns = ", ".join(f"l.{c.strip()}" for c in self._EVENT_COLUMNS.split(","))
        sql = (
            f"SELECT {columns} FROM lineage l LEFT JOIN messages m ON m.id = l.envelope_id"  # noqa: S608
            f"{where} ORDER BY l.seq LIMIT ?"
        )
        rows = self._reader().execute(sql, [*args, max(1, min(q.limit, 10000))])
        return [self._event(r) for r in rows]

    def access_summary(self, since: str | None, until: str | None) -> dict[str, dict[str, Any]]:
        """Per API key name: its reads and refusals (lineage) and its ingested messages in a period."""
        out: dict[str, dict[str, Any]] = {}
        where, args = _where(("actor LIKE 'user:%'", True), ("at >= ?", since), ("at < ?", until))
        rows = self._reader().execute(
            f"SELECT substr(actor, 6), event, count(*), max(at) FROM lineage{where} GROUP BY 1, 2",  # noqa: S608
            args,
        )
        for name, event, count, last in rows:
            entry = out.setdefault(name, {"events": {}, "last_used": ""})
            entry["events"][event] = count
            entry["last_used"] = max(entry["last_used"], last)
        where, args = _where(
            ("client != ''", True),
            ("status != 'batch'", True),
            ("received_at >= ?", since),
            ("received_at < ?", until),
        )
        rows = self._reader().execute(
            f"SELECT client, count(*), max(received_at) FROM messages{where} GROUP BY 1",  # noqa: S608
            args,
        )
        for name, count, last in rows:
            entry = out.setdefault(name, {"events": {}, "last_used": ""})
            entry["events"]["MessageIngested"] = count
            entry["last_used"] = max(entry["last_used"], last)
        return out

    def children_of(self, message_id: str) -> list[MessageRow]:
        rows = self._reader().execute(
            f"SELECT {self._COLUMNS} FROM messages WHERE parent_id = ? ORDER BY id",  # noqa: S608
            (message_id,),
        )
        return [self._row(r) for r in rows]

    def verify_lineage(
        self, checkpoints: Sequence[tuple[int, str]] = (), prune_anchors: Sequence[tuple[int, str]] = ()
    ) -> Verification:
        conn = _connect(self.path, readonly=True)
        try:
            conn.execute("BEGIN")  # one snapshot for the whole walk
            rows = conn.execute(f"SELECT {self._EVENT_COLUMNS} FROM lineage ORDER BY seq")  # noqa: S608
            return verify_chain((self._event(r) for r in rows), checkpoints, prune_anchors)
        finally:
            conn.close()

    # -- retention -------------------------------------------------------------------------------

    async def prune_bodies(
        self, before: str, actor: str, only: Sequence[str] = (), besides: Sequence[str] = ()
    ) -> int:
        """Remove the bodies of messages received before ``before`` (of the protocols in ``only``, or of
        all but ``besides``), never one a delivery still needs (pending or dead, for its replay).

        At most :data:`PRUNE_CHUNK` bodies and :data:`PRUNE_CHUNK_BYTES` go per transaction, each with
        its ``BodiesPruned`` event:
        a transaction keeps the pages it overwrites (``secure_delete``) in memory until it ends, and
        intake waits for it."""
        clauses, args = ["received_at < ?", "length(raw) > 0"], [before]
        if only:
            clauses.append(f"protocol IN ({','.join('?' * len(only))})")
            args.extend(only)
        if besides:
            clauses.append(f"protocol NOT IN ({','.join('?' * len(besides))})")
            args.extend(besides)
        candidates = (
            "SELECT id, length(raw) FROM messages WHERE "  # noqa: S608 - bound values
            + " AND ".join(clauses)
            + " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = messages.id"
            " AND d.status != 'delivered') LIMIT ?"
        )

        def fn(txn: _Txn, first: bool) -> tuple[int, bool]:
            ids: list[tuple[str]] = []
            size = 0
            rows = txn.conn.execute(candidates, [*args, PRUNE_CHUNK]).fetchall()
            for mid, length in rows:
                if ids and size + length > PRUNE_CHUNK_BYTES:
                    break
                ids.append((mid,))
                size += length
            txn.conn.executemany("UPDATE messages SET raw = x'', storage = 'pruned' WHERE id = ?", ids)
            if ids or first:
                details = {"before": before, "bodies": len(ids), "protocols": list(only) or "*"}
                txn.append(
                    [EventDraft("BodiesPruned", None, actor, "pruned", details=details)], utcnow().isoformat()
                )
            return len(ids), len(ids) < len(rows) or len(rows) == PRUNE_CHUNK

        total = 0
        while True:
            pruned, more = await self.submit(functools.partial(fn, first=total == 0))
            total += pruned
            if not more:
                return total

    def last_event_before(self, before: str) -> tuple[int, str] | None:
        """The newest lineage event older than ``before``: (seq, hash), or None."""
        row = (
            self._reader()
            .execute("SELECT seq, hash FROM lineage WHERE at < ? ORDER BY seq DESC LIMIT 1", (before,))
            .fetchone()
        )
        return (int(row[0]), str(row[1])) if row else None

    async def prune_events(self, through_seq: int, actor: str) -> int:
        """Remove the lineage events up to ``through_seq`` (the head of the chain) and record it. Call only
        after a signed checkpoint of ``through_seq`` is held outside the database."""

        def fn(txn: _Txn) -> int:
            cur = txn.conn.execute("DELETE FROM lineage WHERE seq <= ?", (through_seq,))
            details = {"through_seq": through_seq, "events": cur.rowcount}
            txn.append(
                [EventDraft("LineagePruned", None, actor, "pruned", details=details)], utcnow().isoformat()
            )
            return int(cur.rowcount)

        return await self.submit(fn)

    def lineage_head(self) -> tuple[int, str] | None:
        row = (
            _connect(self.path, readonly=True)
            .execute("SELECT seq, hash FROM lineage ORDER BY seq DESC LIMIT 1")
            .fetchone()
        )
        return (int(row[0]), str(row[1])) if row else None


def _begin_waiting(conn: sqlite3.Connection) -> None:
    """``BEGIN IMMEDIATE``, waiting up to :data:`BUSY_TIMEOUT_MS` for another process's write lock."""
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    try:
        conn.execute("BEGIN IMMEDIATE")
    finally:
        conn.execute("PRAGMA busy_timeout = 0")


def _settle(fut: asyncio.Future[Any], value: Any, err: BaseException | None) -> None:
    if fut.done():
        return
    if err is not None:
        fut.set_exception(err)
    else:
        fut.set_result(value)
