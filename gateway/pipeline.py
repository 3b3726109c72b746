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
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeGuard

from gateway.adapter import Adapter, Batch, Issue, Outcome, OutcomeKind, ParseError, Reply, carried, joined
from gateway.envelope import Envelope, Receipt, new_id, sha256_hex
from gateway.errors import StoreUnavailable
from gateway.lineage import EventDraft
from gateway.metrics import Metrics
from gateway.routing import REPLY_KEY, UNMATCHED_ROUTE, RouteDecision, RoutingTable
from gateway.sink import DeliveryError, OnlineSink, Relayed
from gateway.stock import ItemLink, Movement, ReportedLevel, StockSource
from gateway.store import (
    CONTROL_ID_CONFLICT,
    BatchRecord,
    DecisionKind,
    Effect,
    IntakeDecision,
    IntakeRecord,
    PlannedDelivery,
    ReplyRecord,
    Store,
)

log = logging.getLogger("gateway.intake")

ROUTE_UNMATCHED = Issue(
    "error",
    "route_unmatched",
    "",
    "No route takes this kind of message, and the gateway rejects unmatched ones.",
)
OFF_LOOP_BYTES = 64 * 1024
"""Payloads larger than this are parsed and validated in a worker thread (see :meth:`Intake.receive`)."""
STORE_UNAVAILABLE = Issue(
    "fatal", "store_unavailable", "", "The gateway could not store the message durably; send it again later."
)


@dataclass(slots=True)
class IntakeResult:
    """The replies for one received payload (one per message), in order."""

    replies: list[Reply]
    message_ids: list[str]
    decisions: list[DecisionKind] = field(default_factory=list)
    listener: str = ""
    online: list[tuple[str, ...]] = field(default_factory=list)
    """Per message, the online sinks its route names, for accepted messages (see :meth:`Intake.relay`)."""
    batch_reply: Reply | None = None
    """The adapter's one reply to a batch payload (``respond_batch``), when it has one."""

    def combined(self) -> Reply:
        """One reply for the whole payload: the adapter's batch reply, else the replies joined (see
        :func:`gateway.adapter.joined`)."""
        return self.batch_reply if self.batch_reply is not None else joined(self.replies)

    def sent(self, must_answer: bool) -> list[bool]:
        """Per message, whether :meth:`combined` carries its reply, once the combined reply is sent
        (:func:`gateway.adapter.carried`): the transport's duty to answer (HTTP) falls on the messages'
        replies only when the combined reply is not wanted itself (an acknowledgement batch is: it
        answers the batch, leaving declined replies out whatever the transport)."""
        return carried(self.replies, must_answer=must_answer and not self.combined().wanted)


def _batch_reply(adapter: Adapter, batch: Batch | None, replies: list[Reply]) -> Reply | None:
    """The adapter's one reply to ``batch`` (see ``respond_batch`` in :mod:`gateway.adapter`), if it
    gives one."""
    respond_batch: Callable[[Batch, list[Reply]], Reply] | None = getattr(adapter, "respond_batch", None)
    if batch is None or respond_batch is None:
        return None
    return respond_batch(batch, replies)


def classify(issues: Sequence[Issue]) -> OutcomeKind:
    errors = [i for i in issues if i.is_error]
    if not errors:
        return "accepted"
    if any(i.code.startswith("unsupported_") for i in errors):
        return "refused"
    return "invalid"


def _planned(decision: RouteDecision | None) -> tuple[PlannedDelivery, ...]:
    """The outbox rows a routing decision asks for (none for no decision: unmatched and rejected)."""
    if decision is None:
        return ()
    return tuple(
        PlannedDelivery(sink, decision.route, decision.transform, decision.order_key)
        for sink in decision.sinks
    )


def _envelope_record(env: Envelope, receipt: Receipt, outcome: OutcomeKind, **fields: Any) -> IntakeRecord:
    """The intake record of a parsed envelope: its identity and headers, plus ``fields``."""
    return IntakeRecord(
        id=env.id,
        received_at=receipt.received_at.isoformat(),
        protocol=env.protocol,
        raw=env.raw,
        raw_sha256=env.raw_sha256,
        outcome=outcome,
        listener=fields.pop("listener", receipt.listener),
        peer=receipt.peer,
        client=receipt.client,
        version=env.version,
        message_type=env.message_type,
        control_id=env.control_id,
        sender=env.sender,
        receiver=env.receiver,
        headers=env.headers,
        business_keys=env.business_keys,
        masked_keys=env.masked_keys,
        sender_key=env.sender_key,
        **fields,
    )


class Intake:
    """The one path every received message takes (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        routing: RoutingTable | None = None,
        on_outbox: Callable[[set[str]], None] | None = None,
        metrics: Metrics | None = None,
        on_stock: Callable[[set[str]], None] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.routing = routing
        """Swapped whole on reload; each message is routed by the table in place when it arrived."""
        self.on_outbox = on_outbox
        """Told which sinks got outbox rows, after the commit (wakes their delivery workers)."""
        self.on_stock = on_stock
        self.on_routed: Callable[[str, str, Sequence[str], str], None] | None = None
        """Told of every stored message after the commit: route, source (``protocol:listener``), the
        sinks its route sends it to, and its outcome (the OpenLineage emitter's ``note_routed``)."""
        self.online: Mapping[str, OnlineSink] = {}
        """Sinks that answer in line, by name (set with the routing table)."""
        self.stock_locations: Mapping[str, str] = {}
        """Movement location → ledger location (``inventory.locations``)."""
        self._stock_sources: dict[type, bool] = {}
        """Set when the inventory ledger is kept: the stock movements of accepted messages are applied in
        their transaction, and this is told which SKUs they touched, after the commit."""
        self._large: ThreadPoolExecutor | None = None
        """The worker thread large payloads are prepared in (made on first use)."""

    def _record(
        self, adapter: Adapter, unit: bytes, receipt: Receipt, parent_id: str | None
    ) -> tuple[IntakeRecord, Outcome, Reply]:
        """Parse and validate one unit; prepare its record and the reply it gets if stored as it is."""
        received_at = receipt.received_at.isoformat()
        try:
            env = adapter.parse(unit, receipt)
        except ParseError as exc:
            headers = dict(exc.headers)
            kind = classify(exc.issues) if exc.issues else "invalid"
            if kind == "accepted":
                kind = "invalid"
            record_id = new_id()
            out = Outcome(kind, headers, exc.issues, record_id)
            reply = adapter.respond(out)
            kept = unit if exc.stored is None else exc.stored
            rec = IntakeRecord(
                id=record_id,
                received_at=received_at,
                protocol=adapter.name,
                raw=kept,
                raw_sha256=sha256_hex(kept),
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
                reply_code=reply.code,
            )
            return rec, out, reply
        return self._prepare(adapter, env, receipt, parent_id, adapter.validate(env))

    def _prepare(
        self,
        adapter: Adapter,
        env: Envelope,
        receipt: Receipt,
        parent_id: str | None,
        issues: Sequence[Issue],
        *,
        kept: bool = False,
        effect: Effect | None = None,
    ) -> tuple[IntakeRecord, Outcome, Reply]:
        """Route a parsed, validated envelope and prepare its record and reply.

        ``kept``: the gateway itself keeps what the message carries (a write to the FHIR store), so an
        unmatched message is not refused for want of a route.
        """
        kind = classify(issues)
        route: str = ""
        deliveries: tuple[PlannedDelivery, ...] = ()
        online: tuple[str, ...] = ()
        storage, subject = "full", ""
        decided: RouteDecision | None = None
        routing = self.routing if self.routing is not None and self.routing.enabled else None
        if routing is not None:
            # an invalid message is kept as the route it would take says too (sealed under its subject)
            decided = routing.route_envelope(env) or routing.unmatched_decision()
            if decided is not None and decided.storage != "full":
                storage = decided.storage
                if decided.subject:
                    subject = env.headers.get(decided.subject) or env.business_keys.get(decided.subject, "")
        if kind == "accepted" and routing is not None:
            route = decided.route if decided is not None else UNMATCHED_ROUTE
            planned = _planned(decided)
            online = tuple(d.sink for d in planned if d.sink in self.online)
            deliveries = tuple(d for d in planned if d.sink not in self.online)
            if not deliveries and not online and route == UNMATCHED_ROUTE and kept:
                route = ""
            elif not deliveries and not online and route == UNMATCHED_ROUTE:
                issues = [*issues, ROUTE_UNMATCHED]
                kind = "refused"
            elif decided is not None and decided.rules:
                issues = [*issues, *self._rule_issues(adapter, env, decided.rules)]
                kind = classify(issues)
                if kind != "accepted":  # refused by the route's rules: still kept as the route says
                    route, deliveries, online = "", (), ()
        out = Outcome(kind, env.headers, issues, env.id, env)
        reply = adapter.respond(out)
        child = (
            self._reply_record(adapter, reply, receipt, env.id)
            if getattr(adapter, "routes_replies", False)
            else None
        )
        movements: Sequence[Movement] = ()
        reports: Sequence[ReportedLevel] = ()
        links: Sequence[ItemLink] = ()
        if kind == "accepted" and self.on_stock is not None and self._moves_stock(adapter):
            movements = self._placed(adapter.movements(env))
            reports = adapter.reported_levels(env)
            links = adapter.item_links(env)
        rec = _envelope_record(
            env,
            receipt,
            kind,
            issues=issues,
            parent_id=parent_id,
            reply_code=reply.code,
            route=route,
            deliveries=deliveries,
            movements=movements,
            reports=reports,
            items=links,
            content_sha256=env.content_sha256,
            online=online,
            reply_record=child,
            storage=storage,
            subject=subject,
            effect=effect if kind == "accepted" else None,
        )
        return rec, out, reply

    async def apply_stock(self, movements: Sequence[Movement], message_id: str, actor: str) -> None:
        """Apply movements learnt after a message was taken (a sink that read Square's order lines), at
        the ledger locations the configuration maps them to, and have the changed SKUs pushed."""
        skus = await self.store.apply_stock(self._placed(movements), message_id, actor)
        if skus and self.on_stock is not None:
            self.on_stock(set(skus))

    def _placed(self, movements: Sequence[Movement]) -> list[Movement]:
        """``movements`` at the ledger locations ``inventory.locations`` maps their locations to."""
        places = self.stock_locations
        return [replace(m, location=places[m.location]) if m.location in places else m for m in movements]

    def _reply_record(
        self, adapter: Adapter, reply: Reply, receipt: Receipt, parent_id: str
    ) -> IntakeRecord | None:
        """The reply as a child message, when a route takes it (a pain.002 for the sender's bank)."""
        if self.routing is None or not self.routing.takes_replies or not reply.body:
            return None
        try:
            env = adapter.parse(
                reply.body, Receipt("reply", receipt.peer, receipt.client, reply.content_type)
            )
        except ParseError:  # a reply kind the adapter does not take as a message (admi.007)
            return None
        env = replace(env, headers={**env.headers, REPLY_KEY: "reply"})
        decision = self.routing.route_envelope(env)
        if decision is None or not decision.sinks:
            return None
        return _envelope_record(
            env,
            receipt,
            "accepted",
            listener="reply",
            parent_id=parent_id,
            validated=False,
            route=decision.route,
            deliveries=_planned(decision),
        )

    def _moves_stock(self, adapter: Adapter) -> TypeGuard[StockSource]:
        """Whether the adapter is a :class:`StockSource` (remembered per class: a runtime protocol check
        costs ~15 µs)."""
        known = self._stock_sources.get(type(adapter))
        if known is None:
            known = self._stock_sources[type(adapter)] = isinstance(adapter, StockSource)
        return known

    @staticmethod
    def _rule_issues(adapter: Adapter, env: Envelope, rules: Sequence[str]) -> list[Issue]:
        """The issues of the rule sets a route demands; a set this adapter lacks refuses the message."""
        issues: list[Issue] = []
        for name in rules:
            check = adapter.rule_sets.get(name)
            if check is None:
                issues.append(
                    Issue(
                        "error",
                        "unsupported_rule_set",
                        "",
                        f"The route demands the rule set {name}, which {adapter.name} messages do not have.",
                    )
                )
            else:
                issues.extend(check(env))
        return issues

    def _prepare_payload(
        self, adapter: Adapter, raw: bytes, receipt: Receipt
    ) -> tuple[Batch | None, BatchRecord | None, list[tuple[IntakeRecord, Outcome, Reply]]]:
        """Split a payload into its messages; parse, validate and route each (see :meth:`_record`). A
        batch may hold no message (an HL7 batch with ``BTS|0``): it is kept, and answered, all the same."""
        try:
            batch = adapter.split(raw)
        except Exception:  # a splitter bug must not lose the message: treat it as one unit
            log.exception("batch split failed", extra={"listener": receipt.listener})
            batch = None
        batch_record: BatchRecord | None = None
        units = [raw]
        parent_id = None
        if batch is not None:
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
                issues=batch.issues,
            )
        return batch, batch_record, [self._record(adapter, unit, receipt, parent_id) for unit in units]

    async def receive(self, adapter: Adapter, raw: bytes, receipt: Receipt) -> IntakeResult:
        """Take one payload (a message or a batch) through intake and return its replies.

        A payload over :data:`OFF_LOOP_BYTES` is split, parsed and validated in a worker thread (one:
        large payloads take turns), so that a large one does not hold up every other connection's
        replies."""
        if len(raw) > OFF_LOOP_BYTES:
            if self._large is None:
                self._large = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intake-large")
            batch, batch_record, prepared = await asyncio.get_running_loop().run_in_executor(
                self._large, self._prepare_payload, adapter, raw, receipt
            )
        else:
            batch, batch_record, prepared = self._prepare_payload(adapter, raw, receipt)
        records = [rec for rec, _, _ in prepared]
        try:
            decisions = await self.store.record_intake(records, batch_record)
        except StoreUnavailable:
            log.error(
                "store unavailable; refusing", extra={"listener": receipt.listener, "messages": len(records)}
            )
            replies = [
                adapter.respond(Outcome("refused", out.headers, [STORE_UNAVAILABLE], None, out.envelope))
                for _, out, _ in prepared
            ]
            if not replies:  # a batch of no message: the refusal answers the batch itself
                return IntakeResult([adapter.respond(Outcome("refused", {}, [STORE_UNAVAILABLE]))], [])
            return IntakeResult(
                replies, [], [], receipt.listener, batch_reply=_batch_reply(adapter, batch, replies)
            )
        self._committed(adapter, prepared, decisions)
        replies = []
        for (_, out, reply), decision in zip(prepared, decisions, strict=True):
            replies.append(
                reply if decision.kind == "stored" else adapter.respond(self._final(out, decision))
            )
        if self.metrics is not None:
            self.metrics.observe_intake(adapter.name, receipt, [r.code for r in replies])
        online = [
            tuple(rec.online) if decision.outcome == "accepted" and decision.kind != "conflict" else ()
            for (rec, _, _), decision in zip(prepared, decisions, strict=True)
        ]
        return IntakeResult(
            replies,
            [d.message_id for d in decisions],
            [d.kind for d in decisions],
            receipt.listener,
            online,
            _batch_reply(adapter, batch, replies),
        )

    async def commit(
        self,
        adapter: Adapter,
        env: Envelope,
        receipt: Receipt,
        issues: Sequence[Issue],
        effect: Effect | None = None,
    ) -> tuple[IntakeDecision, Outcome]:
        """Take one envelope that its listener parsed and validated (a FHIR REST write) through routing
        and the store; ``effect`` commits with it when it is accepted (the resource version it writes).

        The gateway keeps what such a message carries, so no route is needed. Raises
        :class:`StoreUnavailable`, or whatever the effect raised (then nothing of it was kept).
        """
        prepared = [self._prepare(adapter, env, receipt, None, issues, kept=True, effect=effect)]
        rec, out, reply = prepared[0]
        decisions = await self.store.record_intake([rec])
        self._committed(adapter, prepared, decisions)
        if self.metrics is not None:
            self.metrics.observe_intake(adapter.name, receipt, [reply.code])
        return decisions[0], out

    def _committed(
        self,
        adapter: Adapter,
        prepared: Sequence[tuple[IntakeRecord, Outcome, Reply]],
        decisions: Sequence[IntakeDecision],
    ) -> None:
        """After the commit: wake the sinks that got outbox rows, push stock, tell the lineage emitter,
        and log each message."""
        if self.on_outbox is not None:
            sinks: set[str] = set()
            for (rec, _, _), decision in zip(prepared, decisions, strict=True):
                if decision.kind != "stored":
                    continue
                if decision.outcome == "accepted" and (decision.effect is None or decision.effect.routed):
                    sinks.update(d.sink for d in rec.deliveries)
                if rec.reply_record is not None:  # stored with its parent, whatever the parent's outcome
                    sinks.update(d.sink for d in rec.reply_record.deliveries)
            if sinks:
                self.on_outbox(sinks)
        if self.on_stock is not None:
            skus = {
                m.sku
                for (rec, _, _), decision in zip(prepared, decisions, strict=True)
                if decision.kind == "stored" and decision.outcome == "accepted"
                for m in rec.movements
            }
            if skus:
                self.on_stock(skus)
        if self.on_routed is not None:
            self._note_routed(self.on_routed, adapter.name, prepared, decisions)
        for (rec, _, _), decision in zip(prepared, decisions, strict=True):
            self._log(rec, decision)

    async def relay(self, sink_name: str, raw: bytes, message_id: str) -> Relayed | None:
        """Hand ``raw`` (in memory, as received) to an online sink and return its answer, or ``None`` when
        none came (the listener then answers for the downstream); either way a lineage event records
        the downstream's outcome code and the time it took, never a value of the message."""
        sink = self.online.get(sink_name)
        if sink is None:
            return None
        start = time.perf_counter()
        actor = f"sink:{sink_name}"
        try:
            answer = await sink.relay(raw)
        except DeliveryError as exc:
            ms = round((time.perf_counter() - start) * 1000, 1)
            self.store.note_events(
                [EventDraft("RelayFailed", message_id, actor, "no_answer", exc.code, details={"ms": ms})]
            )
            log.warning("relay got no answer", extra={"sink": sink_name, "error_code": exc.code, "ms": ms})
            return None
        ms = round((time.perf_counter() - start) * 1000, 1)
        self.store.note_events(
            [EventDraft("RelayAnswered", message_id, actor, answer.code, details={"ms": ms})]
        )
        return answer

    @staticmethod
    def _note_routed(
        note: Callable[[str, str, Sequence[str], str], None],
        protocol: str,
        prepared: Sequence[tuple[IntakeRecord, Outcome, Reply]],
        decisions: Sequence[IntakeDecision],
    ) -> None:
        """Tell ``note`` of each stored message (duplicates and conflicts were not routed again)."""
        for (rec, _, _), decision in zip(prepared, decisions, strict=True):
            if decision.kind != "stored" or (decision.effect is not None and not decision.effect.routed):
                continue
            note(
                rec.route,
                f"{protocol}:{rec.listener}",
                [*(d.sink for d in rec.deliveries), *rec.online],
                decision.outcome,
            )
            child = rec.reply_record
            if child is not None:
                note(
                    child.route,
                    f"{protocol}:{child.listener}",
                    [d.sink for d in child.deliveries],
                    child.outcome,
                )

    @staticmethod
    def _final(out: Outcome, decision: IntakeDecision) -> Outcome:
        """The outcome to answer when the store did not take the record as it was."""
        if decision.kind == "conflict":
            return Outcome(
                "invalid", out.headers, [*out.issues, CONTROL_ID_CONFLICT], decision.message_id, out.envelope
            )
        return Outcome("accepted", out.headers, (), decision.message_id, out.envelope)

    @staticmethod
    def _log(rec: IntakeRecord, decision: IntakeDecision) -> None:
        level = (
            logging.DEBUG if decision.kind == "stored" and decision.outcome == "accepted" else logging.INFO
        )
        if not log.isEnabledFor(level):
            return
        codes = sorted({i.code for i in rec.issues if i.is_error})
        log.log(
            level,
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

    def replied(self, result: IntakeResult, *, must_answer: bool = False) -> None:
        """Note that the combined reply of ``result`` was sent: a ``ReplySent`` event (riding on the next
        commit) for each message whose reply it carried (see :meth:`IntakeResult.sent`; ``must_answer``
        for HTTP)."""
        if not result.message_ids:
            return
        records = [
            ReplyRecord(mid, reply.code, result.listener, kind)
            for mid, reply, kind, sent in zip(
                result.message_ids, result.replies, result.decisions, result.sent(must_answer), strict=True
            )
            if sent
        ]
        if records:
            self.store.note_replies(records)

    async def drain(self) -> None:
        """Commit the last lineage events (used at shutdown)."""
        await self.store.flush()
