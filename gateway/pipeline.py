"""Intake: receive → split → parse → validate → commit → reply, the same for every listener.

A listener hands :meth:`Intake.receive` the bytes it got and a receipt; the
adapter parses and validates each message; the store commits every message
with its lineage in one transaction; only then is the adapter asked for the
reply. A store failure becomes a refusal (AR / 503), never an acceptance.
After the listener has written the reply it calls :meth:`Intake.replied`,
which records ``ReplySent`` events in the background.

An issue whose code begins with ``unsupported_`` refuses the message (HL7
``AR``) rather than calling it invalid (``AE``): the sender's message may be
fine, the gateway just does not take that kind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from gateway.adapter import Adapter, Issue, Outcome, OutcomeKind, ParseError, Reply
from gateway.envelope import Receipt, new_id, sha256_hex
from gateway.errors import StoreUnavailable
from gateway.store import BatchRecord, IntakeDecision, IntakeRecord, ReplyRecord
from gateway.store.sqlite import SQLiteStore

log = logging.getLogger("gateway.intake")

STORE_UNAVAILABLE = Issue(
    "fatal", "store_unavailable", "", "The gateway could not store the message durably; send it again later."
)
CONTROL_ID_CONFLICT = Issue(
    "error",
    "control_id_conflict",
    "",
    "This control id was already accepted from this sender with different content.",
)


@dataclass(slots=True)
class IntakeResult:
    """The replies for one received payload (one per message), in order."""

    replies: list[Reply]
    message_ids: list[str]
    duplicates: list[bool] = field(default_factory=list)
    listener: str = ""

    def combined(self) -> Reply:
        """One reply for the whole payload: the ACKs joined, with the least favourable status."""
        if len(self.replies) == 1:
            return self.replies[0]
        worst = max(self.replies, key=lambda r: (not r.accepted, r.status))
        return Reply(b"".join(r.body for r in self.replies), worst.content_type, worst.status, worst.code)


def classify(issues: Sequence[Issue]) -> OutcomeKind:
    errors = [i for i in issues if i.is_error]
    if not errors:
        return "accepted"
    if any(i.code.startswith("unsupported_") for i in errors):
        return "refused"
    return "invalid"


class Intake:
    """The one path every received message takes (see the module docstring)."""

    def __init__(self, store: SQLiteStore) -> None:
        self.store = store
        self._background: set[asyncio.Task[None]] = set()

    def _record(
        self, adapter: Adapter, unit: bytes, receipt: Receipt, parent_id: str | None
    ) -> tuple[IntakeRecord, Outcome]:
        received_at = receipt.received_at.isoformat()
        try:
            env = adapter.parse(unit, receipt)
        except ParseError as exc:
            headers = dict(exc.headers)
            kind = classify(exc.issues) if exc.issues else "invalid"
            if kind == "accepted":
                kind = "invalid"
            rec = IntakeRecord(
                id=new_id(),
                received_at=received_at,
                protocol=adapter.name,
                raw=unit,
                raw_sha256=sha256_hex(unit),
                outcome=kind,
                listener=receipt.listener,
                peer=receipt.peer,
                client=receipt.client,
                version=headers.get("version", ""),
                message_type=headers.get("message_type", ""),
                control_id=headers.get("control_id", ""),
                headers=headers,
                issues=exc.issues,
                parent_id=parent_id,
                validated=False,
            )
            return rec, Outcome(kind, headers, exc.issues, rec.id)
        issues = adapter.validate(env)
        kind = classify(issues)
        rec = IntakeRecord(
            id=env.id,
            received_at=received_at,
            protocol=env.protocol,
            raw=env.raw,
            raw_sha256=env.raw_sha256,
            outcome=kind,
            listener=receipt.listener,
            peer=receipt.peer,
            client=receipt.client,
            version=env.version,
            message_type=env.message_type,
            control_id=env.control_id,
            sender=env.sender,
            receiver=env.receiver,
            headers=env.headers,
            business_keys=env.business_keys,
            issues=issues,
            parent_id=parent_id,
        )
        return rec, Outcome(kind, env.headers, issues, env.id)

    async def receive(self, adapter: Adapter, raw: bytes, receipt: Receipt) -> IntakeResult:
        """Take one payload (a message or a batch) through intake and return its replies."""
        try:
            batch = adapter.split(raw)
        except Exception:  # a splitter bug must not lose the message: treat it as one unit
            log.exception("batch split failed", extra={"listener": receipt.listener})
            batch = None
        batch_record: BatchRecord | None = None
        units = [raw]
        parent_id = None
        if batch is not None and batch.units:
            parent_id = new_id()
            units = batch.units
            batch_record = BatchRecord(
                id=parent_id,
                received_at=receipt.received_at.isoformat(),
                protocol=adapter.name,
                kind=batch.kind,
                raw=raw,
                raw_sha256=sha256_hex(raw),
                listener=receipt.listener,
                peer=receipt.peer,
                client=receipt.client,
            )
        pairs = [self._record(adapter, unit, receipt, parent_id) for unit in units]
        records = [rec for rec, _ in pairs]
        try:
            decisions = await self.store.record_intake(records, batch_record)
        except StoreUnavailable:
            log.error(
                "store unavailable; refusing", extra={"listener": receipt.listener, "messages": len(records)}
            )
            replies = [
                adapter.respond(Outcome("refused", out.headers, [STORE_UNAVAILABLE], None))
                for _, out in pairs
            ]
            return IntakeResult(replies, [], [], receipt.listener)
        replies = []
        for (rec, out), decision in zip(pairs, decisions, strict=True):
            outcome = self._final(out, decision)
            replies.append(adapter.respond(outcome))
            self._log(rec, decision)
        return IntakeResult(
            replies,
            [d.message_id for d in decisions],
            [d.kind == "duplicate" for d in decisions],
            receipt.listener,
        )

    @staticmethod
    def _final(out: Outcome, decision: IntakeDecision) -> Outcome:
        if decision.kind == "conflict":
            return Outcome("invalid", out.headers, [*out.issues, CONTROL_ID_CONFLICT], decision.message_id)
        if decision.kind == "duplicate":
            return Outcome("accepted", out.headers, (), decision.message_id)
        return out

    @staticmethod
    def _log(rec: IntakeRecord, decision: IntakeDecision) -> None:
        codes = sorted({i.code for i in rec.issues if i.is_error})
        log.info(
            "message " + (decision.kind if decision.kind != "stored" else decision.outcome),
            extra={
                "envelope_id": decision.message_id,
                "listener": rec.listener,
                "protocol": rec.protocol,
                "message_type": rec.message_type,
                "control_id": rec.control_id,
                "raw_sha256": rec.raw_sha256,
                "issues": codes,
            },
        )

    def replied(self, result: IntakeResult) -> None:
        """Record, in the background, that the replies of ``result`` were sent."""
        if not result.message_ids:
            return
        records = [
            ReplyRecord(mid, reply.code, result.listener, dup)
            for mid, reply, dup in zip(result.message_ids, result.replies, result.duplicates, strict=True)
        ]
        task = asyncio.get_running_loop().create_task(self._record_replies(records))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _record_replies(self, records: list[ReplyRecord]) -> None:
        try:
            await self.store.record_replies(records)
        except Exception:
            log.warning("could not record reply events", extra={"messages": len(records)})

    async def drain(self) -> None:
        """Wait for background lineage writes (used at shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
