"""The HL7 v2 adapter: ER7 bytes → envelope, validation issues, and the ACK reply.

:class:`HL7Adapter` implements :class:`gateway.adapter.Adapter` for HL7 v2
(registry key ``hl7v2``) on top of our own ER7 reader (:mod:`adapters.hl7.er7`),
the ACK builder (:mod:`adapters.hl7.ack`) and the structure validator compiled
from hl7apy's tables (:mod:`adapters.hl7.structure`).

Envelope fields:

* ``version`` MSH-12.1; ``message_type`` ``CODE^EVENT`` from MSH-9.1/9.2
  (``CODE`` alone without an event); ``control_id`` MSH-10.
* ``sender`` ``APP^FACILITY``: the first components of MSH-3 and MSH-4 joined
  with ``^`` (the universal id, component 2, when the first is empty);
  ``receiver`` likewise from MSH-5 and MSH-6; ``""`` when both are empty.
* ``headers`` (every key always present, values unescaped):
  ``sending_application``, ``sending_facility``, ``receiving_application``,
  ``receiving_facility`` (first components as for ``sender``),
  ``message_type``, ``message_code`` (MSH-9.1), ``trigger_event`` (MSH-9.2),
  ``message_structure`` (MSH-9.3, else ``CODE_EVENT``; the structure validator
  maps events to shared structures itself, for example ``ADT^A04`` → ``ADT_A01``),
  ``version``, ``processing_id`` (MSH-11.1), ``control_id``,
  ``accept_ack_type`` (MSH-15), ``application_ack_type`` (MSH-16),
  ``encoding_characters`` (MSH-1 followed by MSH-2, e.g. ``|^~\\&``, so that
  the ACK can reuse the field separator too), ``charset`` (MSH-18 as declared,
  first repetition) and ``patient_id``.
* ``patient_id`` header and business key: the first repetition of PID-3 as
  ``ID^^^AUTHORITY`` (CX.1 and the namespace of CX.4), ``ID`` alone without an
  authority; the business key is present only when PID-3 is. The store shows
  header values that are business keys as pseudonyms.
* ``body`` the :class:`~adapters.hl7.er7.Message`; ``sensitivity`` ``phi``;
  ``correlation_id`` MSA-2 when the message is itself an acknowledgement.
* ``raw_sha256`` the digest of the bytes as received; ``content_sha256`` that of
  their :func:`~adapters.hl7.er7.canonical` form with MSH-7 left empty, so that a
  message sent again with a BOM, other line endings, blank lines after it, or the
  time of the resend in MSH-7 (as many senders stamp it) is a duplicate, not a
  control id conflict.

A missing MSH-9, MSH-10, MSH-11 or MSH-12, an unknown message code or an
unsupported version do not stop :meth:`HL7Adapter.parse`: :meth:`validate`
reports them, so that the sender still gets an ACK naming its control id.
``parse`` raises :class:`~gateway.adapter.ParseError` only when no message can
be read (no MSH, bad delimiters, cut inside MSH), with the header fields it
could still read. A second MSH segment (another message inside this one, which
:meth:`HL7Adapter.split` would have cut off) is an ``unexpected_segment`` error
at the ``header`` and ``structure`` levels.

Replies (:meth:`HL7Adapter.respond`): accepted → ``AA``/``CA`` and HTTP 200;
invalid → ``AE``/``CE`` and 400; refused → ``AR``/``CR`` and 503 when the store
was unavailable (send again later), 422 otherwise. See :mod:`adapters.hl7.ack`
for the acknowledgement modes.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable, Mapping
from types import MappingProxyType

from adapters.hl7 import ack, er7, structure
from gateway.adapter import Batch, Issue, Outcome, ParseError, Reply, ValidationLevel, carried, joined
from gateway.envelope import Envelope, Receipt, new_id, sha256_hex

__all__ = ["CONTENT_TYPE", "HEADER_KEYS", "PROCESSING_IDS", "SUPPORTED_VERSIONS", "HL7Adapter"]

CONTENT_TYPE = "x-application/hl7-v2+er7"
SUPPORTED_VERSIONS = frozenset(structure.SUPPORTED_VERSIONS)
PROCESSING_IDS = frozenset({"P", "D", "T"})
HEADER_KEYS = (
    "sending_application",
    "sending_facility",
    "receiving_application",
    "receiving_facility",
    "message_type",
    "message_code",
    "trigger_event",
    "message_structure",
    "version",
    "processing_id",
    "control_id",
    "accept_ack_type",
    "application_ack_type",
    "encoding_characters",
    "charset",
    "patient_id",
)
_SUPPORTED = ", ".join(structure.SUPPORTED_VERSIONS)
_STATUS = {"accepted": 200, "invalid": 400, "refused": 422}
_STORE_UNAVAILABLE = "store_unavailable"
_SECOND_MSH = Issue(
    "error", "unexpected_segment", "MSH(2)", "A second MSH segment starts another message inside this one."
)


def _first(field: str, d: er7.Delimiters, encoding: str, comp: int = 1) -> str:
    """Component ``comp`` of the first repetition of a raw field, unescaped."""
    return er7.value_at(field, d, 1, comp, 0, encoding)


def _hd(field: str, d: er7.Delimiters, encoding: str) -> str:
    """The namespace id of an HD field, or its universal id when the namespace is empty."""
    return _first(field, d, encoding) or _first(field, d, encoding, 2)


def _msh_headers(fields: list[str], d: er7.Delimiters, encoding: str) -> dict[str, str]:
    """The header map from raw MSH fields (``fields[n]`` is MSH-n); missing fields read as ``""``."""
    f = fields + [""] * (19 - len(fields)) if len(fields) < 19 else fields
    code = _first(f[9], d, encoding)
    event = _first(f[9], d, encoding, 2)
    declared = _first(f[9], d, encoding, 3)
    return {
        "sending_application": _hd(f[3], d, encoding),
        "sending_facility": _hd(f[4], d, encoding),
        "receiving_application": _hd(f[5], d, encoding),
        "receiving_facility": _hd(f[6], d, encoding),
        "message_type": f"{code}^{event}" if event else code,
        "message_code": code,
        "trigger_event": event,
        "message_structure": declared or (f"{code}_{event}" if code and event else code),
        "version": _first(f[12], d, encoding).strip(),
        "processing_id": _first(f[11], d, encoding).strip(),
        "control_id": er7.unescape(f[10], d, encoding),
        "accept_ack_type": _first(f[15], d, encoding).strip(),
        "application_ack_type": _first(f[16], d, encoding).strip(),
        "encoding_characters": f[1] + f[2],
        "charset": _first(f[18], d, encoding).strip(),
        "patient_id": "",
    }


def _inbound(envelope: Envelope | None) -> ack.Inbound | None:
    """What the ACK copies from the parsed message as sent; ``None`` when there is no parsed message."""
    message = envelope.body if envelope is not None else None
    if not isinstance(message, er7.Message):
        return None
    msh = message.segment("MSH")
    if msh is None:
        return None
    fields = msh.fields
    rep = message.delimiters.repetition
    raw = [fields[n] if n < len(fields) else "" for n in (3, 4, 5, 6)]
    first = [f.split(rep, 1)[0] if rep and rep in f else f for f in raw]
    control_id = fields[10] if len(fields) > 10 else ""
    charset = fields[18].split(rep, 1)[0] if len(fields) > 18 and rep else ""
    return ack.Inbound((first[0], first[1], first[2], first[3]), control_id, message.encoding, charset)


def _without_msh7(body: bytes) -> bytes:
    """``body`` (canonical) with MSH-7, the time the sender made the message, left empty."""
    sep = body[3:4]
    head, rest = body.split(b"\r", 1) if b"\r" in body else (body, b"")
    fields = head.split(sep) if sep else [head]
    if len(fields) < 7 or not fields[6]:
        return body
    fields[6] = b""
    return sep.join(fields) + b"\r" + rest


def _party(application: str, facility: str) -> str:
    return f"{application}^{facility}" if application or facility else ""


def _patient_id(message: er7.Message) -> str:
    """PID-3's first repetition as ``ID^^^AUTHORITY`` (CX.1 and CX.4's namespace, else universal id)."""
    pid = message.segment("PID")
    if pid is None or len(pid.fields) <= 3 or not pid.fields[3]:
        return ""
    cx, d, encoding = pid.fields[3], message.delimiters, message.encoding
    ident = er7.value_at(cx, d, 1, 1, 0, encoding)
    if not ident:
        return ""
    authority = er7.value_at(cx, d, 1, 4, 1, encoding) or er7.value_at(cx, d, 1, 4, 2, encoding)
    return f"{ident}^^^{authority}" if authority else ident


def _salvaged_headers(exc: er7.ER7Error) -> dict[str, str]:
    """Whatever header fields an unreadable message still shows, for the reply's addressing."""
    fields = exc.header
    if len(fields) < 3:
        return {}
    d = exc.delimiters
    if d is None:
        # MSH-2 is unusable: keep the characters it does declare plausibly, default the rest,
        # and stand a control character (never in text) in for any that clash.
        fs, declared, chosen = fields[1], fields[2], ""
        for i, default in enumerate("^~\\&"):
            c = declared[i] if i < len(declared) else default
            if c == fs or c.isalnum() or c.isspace() or c in chosen:
                c = chr(i + 1)
            chosen += c
        d = er7.Delimiters(fs, chosen[0], chosen[1], chosen[2], chosen[3], None)
    headers = _msh_headers(fields, d, "utf-8")
    return {k: v for k, v in headers.items() if v}


@functools.cache
def _message_codes(version: str) -> frozenset[str] | None:
    """HL7 table 0076 (message type) of ``version`` from hl7apy, or ``None`` when it has none."""
    library = structure.library_for(version)
    for name in (library, "v2_3_1"):  # hl7apy ships no tables before 2.3.1
        if name is None:
            continue
        try:
            tables = importlib.import_module(f"hl7apy.{name}.tables").TABLES
        except ImportError:
            continue
        entry = tables.get("HL70076")
        if entry:
            return frozenset(str(v) for v in entry[1])
    return None


class HL7Adapter:
    """HL7 v2 (ER7) adapter; ``validation`` is ``none``, ``header`` (MSH only) or ``structure``."""

    name: str = "hl7v2"
    rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType({})

    def __init__(self, validation: ValidationLevel = "structure") -> None:
        if validation not in ("none", "header", "structure"):
            raise ValueError(f"unknown validation level {validation!r}")
        self.validation: ValidationLevel = validation

    def __repr__(self) -> str:
        return f"HL7Adapter(validation={self.validation!r})"

    # -- detect / split ---------------------------------------------------------------------

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """True when ``raw`` starts (after a BOM and blanks) with MSH, FHS or BHS and a delimiter."""
        try:
            head = raw[:256]
            if head.startswith(er7.BOM):
                head = head[3:]
            head = head.lstrip()
            if len(head) < 4 or head[:3] not in (b"MSH", b"FHS", b"BHS"):
                return False
            sep = head[3:4]
            return not (sep.isalnum() or sep.isspace())
        except Exception:
            return False

    def split(self, raw: bytes) -> Batch | None:
        return er7.split_batch(raw)

    # -- parse ------------------------------------------------------------------------------

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        body = er7.canonical(raw)
        try:
            message = er7.parse(body)
        except er7.ER7Error as exc:
            issue = Issue("fatal", exc.code, exc.location, exc.diagnostics)
            raise ParseError([issue], _salvaged_headers(exc)) from None
        msh = message.segment("MSH")
        assert msh is not None  # er7.parse guarantees an MSH segment
        headers = _msh_headers(msh.fields, message.delimiters, message.encoding)
        patient_id = _patient_id(message)
        headers["patient_id"] = patient_id
        correlation_id = message.get("MSA-2")
        raw_sha256 = sha256_hex(raw)
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=headers["version"],
            message_type=headers["message_type"],
            control_id=headers["control_id"],
            sender=_party(headers["sending_application"], headers["sending_facility"]),
            receiver=_party(headers["receiving_application"], headers["receiving_facility"]),
            raw=raw,
            raw_sha256=raw_sha256,
            content_sha256=sha256_hex(_without_msh7(body)),
            body=message,
            headers=headers,
            business_keys={"patient_id": patient_id} if patient_id else {},
            sensitivity="phi",
            correlation_id=correlation_id,
            receipt=receipt,
        )

    # -- validate ---------------------------------------------------------------------------

    def validate(self, envelope: Envelope) -> list[Issue]:
        if self.validation == "none":
            return []
        message = envelope.body
        if not isinstance(message, er7.Message):
            return [
                Issue("fatal", "internal_error", "", "The envelope does not hold a parsed HL7 v2 message.")
            ]
        h = envelope.headers
        issues = self._header_issues(h)
        if message.segment("MSH", 2) is not None:
            issues.append(_SECOND_MSH)
        if self.validation == "structure" and h["message_code"] and h["version"] in SUPPORTED_VERSIONS:
            # Pass MSH-9.3 only when the sender declared it: without it the validator finds the
            # event's structure itself (ADT^A04 -> ADT_A01) instead of warning about ADT_A04.
            declared = message.get("MSH-9.3")
            reported = {issue.location for issue in issues}  # header checks already explain these
            issues.extend(
                issue
                for issue in structure.validate(message, declared, h["version"])
                if not issue.location or issue.location not in reported
            )
        return issues

    @staticmethod
    def _header_issues(h: Mapping[str, str]) -> list[Issue]:
        issues: list[Issue] = []
        version = h["version"]
        code = h["message_code"]
        if not code:
            issues.append(Issue("error", "missing_msh9", "MSH-9", "MSH-9 (message type) is empty."))
        if not h["control_id"]:
            issues.append(Issue("error", "missing_msh10", "MSH-10", "MSH-10 (message control id) is empty."))
        processing = h["processing_id"]
        if not processing:
            issues.append(Issue("error", "missing_msh11", "MSH-11", "MSH-11 (processing id) is empty."))
        elif processing not in PROCESSING_IDS:
            issues.append(
                Issue(
                    "error",
                    "unsupported_processing_id",
                    "MSH-11",
                    "MSH-11 (processing id) must be P (production), D (debugging) or T (training).",
                )
            )
        if not version:
            issues.append(Issue("error", "missing_msh12", "MSH-12", "MSH-12 (version id) is empty."))
        elif version not in SUPPORTED_VERSIONS:
            issues.append(
                Issue(
                    "error",
                    "unsupported_version",
                    "MSH-12",
                    f"MSH-12 names an HL7 version this gateway does not support; supported: {_SUPPORTED}.",
                )
            )
        if code and version in SUPPORTED_VERSIONS and not code.startswith("Z"):
            codes = _message_codes(version)
            if codes is not None and code not in codes:
                issues.append(
                    Issue(
                        "error",
                        "unsupported_message_type",
                        "MSH-9.1",
                        f"MSH-9.1 is not a message type of HL7 table 0076 in version {version}.",
                    )
                )
        return issues

    # -- respond / serialize ----------------------------------------------------------------

    def respond(self, outcome: Outcome) -> Reply:
        h = outcome.headers
        asked = (h.get("accept_ack_type", ""), h.get("application_ack_type", ""))
        code = ack.ack_code(outcome.kind, *asked)
        inbound = _inbound(outcome.envelope)
        body = ack.build_ack(code, h, outcome.issues, inbound=inbound)
        status = _STATUS[outcome.kind]
        if outcome.kind == "refused" and any(i.code == _STORE_UNAVAILABLE for i in outcome.issues):
            status = 503
        charset = ack.charset_name(ack.ack_codec(h, inbound))
        return Reply(
            body=body,
            content_type=f"{CONTENT_TYPE}; charset={charset}" if charset else CONTENT_TYPE,
            status=status,
            code=code,
            wanted=ack.reply_wanted(outcome.kind, *asked),
        )

    def respond_batch(self, batch: Batch, replies: list[Reply]) -> Reply:
        """An FHS/BHS batch is answered by an acknowledgement batch (:func:`ack.build_batch_ack`) with the
        least favourable status of its messages' replies (200 for a batch of none); a file of bare MSH
        messages by their ACKs one after the other."""
        types = {r.content_type for r in replies}
        content_type = types.pop() if len(types) == 1 else CONTENT_TYPE  # a charset only if one for all
        if batch.kind == "multi":
            return dataclasses.replace(joined(replies), content_type=content_type)
        chosen = carried(replies, must_answer=False)  # it answers the batch itself: no declined reply in it
        body = ack.build_batch_ack(
            batch.raw, [r.body if c else None for r, c in zip(replies, chosen, strict=True)]
        )
        if not replies:
            return Reply(body=body, content_type=CONTENT_TYPE, status=200, code="AA")
        worst = joined(replies)
        return Reply(body=body, content_type=content_type, status=worst.status, code=worst.code)

    def serialize(self, envelope: Envelope) -> bytes:
        return envelope.raw
