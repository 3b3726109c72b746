"""HL7 v2 acknowledgements: choosing the ACK code, building the ACK, and reading one.

What lives here: :func:`ack_code` (which code answers an outcome, in original
or enhanced mode), :func:`build_ack` (the ACK bytes, with ERR segments for the
issues), :func:`build_batch_ack` (the acknowledgement batch answering an FHS/BHS
batch) and :func:`parse_ack` (what ``gateway send`` prints of a reply).

Acknowledgement modes (HL7 v2.5 §2.9):

* **Original mode** — MSH-15 and MSH-16 both empty: ``AA`` accepted, ``AE``
  invalid, ``AR`` refused.
* **Enhanced mode** — MSH-15 or MSH-16 present. The gateway replies after the
  message is durably committed, which is exactly what an *accept*
  (commit) acknowledgement means, so the reply is ``CA`` / ``CE`` / ``CR``
  when MSH-15 asks for it for this outcome (``AL`` always, ``ER`` only on
  error or reject, ``SU`` only on success, ``NE`` never; an unknown value counts
  as ``AL``; an empty MSH-15 asks for nothing). When MSH-15 does not ask for it
  but MSH-16 asks for an *application* acknowledgement for this outcome, the
  gateway answers as the receiving application with ``AA`` / ``AE`` / ``AR``
  (having committed the message, it is responsible for it). When neither asks
  (``NE``/``NE``, ``ER`` on success, ``SU`` on error), :func:`reply_wanted` is
  false and the MLLP listener sends nothing, as the standard says: a sender that
  asked for nothing does not read a reply, and one sent anyway would be read as
  the answer to its next message. Such a reply is also left out of the reply to
  a payload of several messages (joined ACKs, an acknowledgement batch). HTTP,
  which must answer every request, still carries it when there is nothing else
  to answer with (a single message, or joined ACKs that all declined;
  :func:`gateway.adapter.carried` decides). Application
  acknowledgements produced later by downstream systems are not relayed back to
  the sender.

The ACK swaps sending and receiving application/facility, keeps the
inbound delimiters, MSH-11 processing id, MSH-12 version and MSH-18
character set, sets MSH-9 to ``ACK^<trigger>^ACK`` (``ACK^<trigger>`` before
v2.3.1, which had no message-structure component), mints a new MSH-10 and puts
the inbound MSH-10 in MSA-2. ``AE``/``AR``/``CE``/``CR`` carry the issues: from
v2.5 one ERR segment per issue (ERR-2 location as ERL, ERR-3 the HL7 table 0357
code, ERR-4 severity, ERR-5 our issue code, ERR-7 and ERR-8 the diagnostics
sentence); before v2.5 a single ERR segment whose repeating ERR-1 holds one
ELD per issue, plus the first diagnostics sentence in MSA-3. The issue code →
table 0357 map is the data file ``err_codes.json``. Only issue codes, locations
and diagnostics sentences (which never contain payload values) are written;
nothing of the inbound payload is echoed except its addressing header fields.
"""

from __future__ import annotations

import codecs
import functools
import json
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any, NamedTuple

from adapters.hl7 import er7
from gateway.adapter import Issue, OutcomeKind
from gateway.envelope import new_id

__all__ = [
    "ACCEPT_CODES",
    "DEFAULT_VERSION",
    "ORIGINAL_CODES",
    "Inbound",
    "ack_code",
    "ack_codec",
    "build_ack",
    "build_batch_ack",
    "charset_name",
    "error_condition",
    "parse_ack",
    "reply_wanted",
]

ORIGINAL_CODES: Mapping[OutcomeKind, str] = {"accepted": "AA", "invalid": "AE", "refused": "AR"}
ACCEPT_CODES: Mapping[OutcomeKind, str] = {"accepted": "CA", "invalid": "CE", "refused": "CR"}
POSITIVE_CODES = frozenset({"AA", "CA"})
DEFAULT_VERSION = "2.5.1"
"""MSH-12 of an ACK whose inbound message had no readable version."""

_ALL: frozenset[OutcomeKind] = frozenset({"accepted", "invalid", "refused"})
_WANTED: Mapping[str, frozenset[OutcomeKind]] = {
    "AL": _ALL,
    "NE": frozenset(),
    "ER": frozenset({"invalid", "refused"}),
    "SU": frozenset({"accepted"}),
}
_SEVERITY = {"fatal": "E", "error": "E", "warning": "W", "information": "I"}


def _load_codes() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        resources.files("adapters.hl7").joinpath("err_codes.json").read_text(encoding="utf-8")
    )
    return data


_CODES = _load_codes()
_TABLE_0357: dict[str, str] = _CODES["table_0357"]
_ISSUE_CODES: dict[str, str] = _CODES["issue_codes"]
_DEFAULT_0357: str = _CODES["default"]
_NEWER: dict[str, dict[str, str]] = _CODES["newer_codes"]


@functools.lru_cache(maxsize=64)
def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.strip().split("."))
    except ValueError:
        return _version_key(DEFAULT_VERSION)


def reply_wanted(kind: OutcomeKind, accept_ack_type: str = "", application_ack_type: str = "") -> bool:
    """False when the inbound MSH-15 and MSH-16 ask for no acknowledgement of ``kind`` (see the module
    docstring); original mode always wants one."""
    accept = accept_ack_type.strip().upper()
    application = application_ack_type.strip().upper()
    if not accept and not application:
        return True
    return any(kind in _WANTED.get(asked, _ALL) for asked in (accept, application) if asked)


def ack_code(kind: OutcomeKind, accept_ack_type: str = "", application_ack_type: str = "") -> str:
    """The MSA-1 code answering ``kind`` given the inbound MSH-15 and MSH-16 (see the module docstring)."""
    accept = accept_ack_type.strip().upper()
    application = application_ack_type.strip().upper()
    if not accept and not application:
        return ORIGINAL_CODES[kind]
    if accept and kind in _WANTED.get(accept, _ALL):
        return ACCEPT_CODES[kind]
    if application and kind in _WANTED.get(application, _ALL):
        return ORIGINAL_CODES[kind]
    return ACCEPT_CODES[kind]


def error_condition(issue_code: str, version: str = DEFAULT_VERSION) -> tuple[str, str]:
    """The HL7 table 0357 ``(code, text)`` for one of our issue codes, as known in ``version``."""
    code = _ISSUE_CODES.get(issue_code, _DEFAULT_0357)
    newer = _NEWER.get(code)
    if newer is not None and _version_key(version) < _version_key(newer["since"]):
        code = newer["otherwise"]
    return code, _TABLE_0357[code]


def _delimiters(headers: Mapping[str, str]) -> er7.Delimiters:
    return _delimiters_of(headers.get("encoding_characters", ""))


@functools.lru_cache(maxsize=64)
def _delimiters_of(chars: str) -> er7.Delimiters:
    try:
        return er7.delimiters_from(chars[:1], chars[1:])
    except er7.ER7Error:
        return er7.DEFAULT


def _error_location(location: str) -> list[str]:
    """ERL / ELD location components for an issue location such as ``PID-3[2].1``; ``[]`` if none."""
    if not location:
        return []
    try:
        seg_id, occurrence, field, rep, comp, sub = er7.parse_path(location)
    except ValueError:
        return []
    if len(seg_id) != 3:  # a segment id is three characters; anything else is not a location
        return []
    parts = [seg_id, str(occurrence)]
    if field:
        parts += [str(field), str(rep)]
        if comp:
            parts.append(str(comp))
            if sub:
                parts.append(str(sub))
    return parts


def _err_segments(issues: Sequence[Issue], d: er7.Delimiters, version: str) -> list[list[str]]:
    if not issues:
        return []
    if _version_key(version) < (2, 5):
        elds = []
        for issue in issues:
            loc = (_error_location(issue.location) or ["", ""])[:3]
            loc += [""] * (3 - len(loc))
            code, text = error_condition(issue.code, version)
            elds.append(d.component.join([*loc, d.subcomponent.join([code, text, "HL70357"])]))
        return [["ERR", d.repetition.join(elds)]]
    segments = []
    for issue in issues:
        code, text = error_condition(issue.code, version)
        sentence = er7.escape(issue.diagnostics or text, d)
        segments.append(
            [
                "ERR",
                "",
                d.component.join(_error_location(issue.location)),
                d.component.join([code, text, "HL70357"]),
                _SEVERITY.get(issue.severity, "E"),
                er7.escape(issue.code, d),
                "",
                sentence,
                sentence,
            ]
        )
    return segments


def _line(fields: list[str], sep: str) -> str:
    while len(fields) > 1 and not fields[-1]:
        fields.pop()
    return sep.join(fields)


def _stamp_of(moment: datetime) -> str:
    """MSH-7 for ``moment``: seconds in UTC with the zone written out."""
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%S") + "+0000"


def _stamp_among(stamp: str, delimiters: str) -> str:
    """``stamp`` as written in a message with these delimiters (MSH-1 and MSH-2): where ``+`` is one of
    them, which a DTM cannot escape, the time (UTC) goes without its offset, lest its sign split the
    field (or its component) in two."""
    return stamp.removesuffix("+0000") if "+" in delimiters else stamp


class Inbound(NamedTuple):
    """What an ACK copies from the parsed inbound message as sent, escapes and components kept."""

    parties: tuple[str, str, str, str]
    """MSH-3 to MSH-6 (first repetition): the ACK's MSH-5, MSH-6, MSH-3, MSH-4."""
    control_id: str
    """MSH-10: the ACK's MSA-2, character for character."""
    codec: str
    """The codec the message was read with: the ACK's bytes use it, so that what it copies matches."""
    charset: str = ""
    """MSH-18 (first repetition) as sent, as the reader took it to choose the codec: the ACK's MSH-18 (the
    ``charset`` header is its first component, which a component separator such as ``/`` cuts short)."""


@functools.lru_cache(maxsize=2)
def _stamp(second: int) -> str:
    """MSH-7 for a Unix second: formatted once per second, however many ACKs it answers."""
    return _stamp_of(datetime.fromtimestamp(second, UTC))


_IANA = {
    "ascii": "US-ASCII",
    "utf-8": "UTF-8",
    "iso2022_jp": "ISO-2022-JP",
    "iso2022_jp_2": "ISO-2022-JP-2",
    "gb18030": "GB18030",
    "euc_jp": "EUC-JP",
    "euc_kr": "EUC-KR",
    "shift_jis": "Shift_JIS",
    "big5": "Big5",
    "cp1252": "windows-1252",
}


_COPIED = (
    "sending_application",
    "sending_facility",
    "receiving_application",
    "receiving_facility",
    "trigger_event",
    "control_id",
    "processing_id",
    "version",
    "charset",
)
"""The header values an ACK without the parsed message copies (:func:`build_ack`)."""


def ack_codec(headers: Mapping[str, str], inbound: Inbound | None) -> str:
    """The codec of the ACK's bytes: the one the message was read with, else its MSH-18's (UTF-8).

    Without the parsed message, MSH-18's codec only when it can write the header values the ACK copies:
    a message that could not be read may declare a character set its bytes were not in (the reader then
    took UTF-8 or latin-1), and its control id must come back as it was read, not as ``?``.
    """
    if inbound is not None:
        return inbound.codec
    declared = er7.CHARSETS.get(headers.get("charset", "").strip().upper())
    if declared is None:
        return "utf-8"
    try:
        "".join(headers.get(key, "") for key in _COPIED).encode(declared)
    except UnicodeEncodeError:
        return "utf-8"
    return declared


@functools.lru_cache(maxsize=32)
def charset_name(codec: str) -> str | None:
    """The IANA name of a Python codec, for an HTTP ``charset`` parameter; ``None`` when it has none."""
    name = codecs.lookup(codec).name
    if name.startswith("iso8859-"):
        return "ISO-8859-" + name.removeprefix("iso8859-")
    return _IANA.get(name)


def build_ack(
    code: str,
    headers: Mapping[str, str],
    issues: Sequence[Issue] = (),
    *,
    control_id: str | None = None,
    now: datetime | None = None,
    inbound: Inbound | None = None,
) -> bytes:
    """The ACK message answering the message described by ``headers`` (envelope or salvaged headers).

    ``code`` is the MSA-1 code (see :func:`ack_code`); ``issues`` become ERR
    segments unless the code is positive. ``control_id`` (the ACK's own MSH-10)
    and ``now`` (MSH-7) default to a fresh 20-character id and the current time.
    With ``inbound`` (the parsed message as sent) the ACK's MSH-3 to MSH-6 are its MSH-3 to MSH-6
    swapped, whole (an HD's universal id too), MSA-2 is its MSH-10 and MSH-18 its MSH-18 as sent, and
    the bytes are encoded with the codec it was read with; without it (a message that could not be
    parsed) the promoted header values are used, escaped, and the bytes are in the MSH-18 character
    set (UTF-8 when none, or when that set cannot write them: :func:`ack_codec`). MLLP's frame bytes
    in a copied value are written as hex escapes. Segments end with ``\\r``.
    """
    d = _delimiters(headers)
    table = er7.escape_table(d)

    def esc(value: str) -> str:
        return value.translate(table)

    if inbound is not None:
        inbound = _refitted(inbound, d)
    version = headers.get("version", "") or DEFAULT_VERSION
    version_key = _version_key(version)
    trigger = headers.get("trigger_event", "")
    msg_type = ["ACK", trigger, "ACK"] if version_key >= (2, 3, 1) else ["ACK", trigger]
    charset = headers.get("charset", "")
    stamp = _stamp_among(
        _stamp(int(time.time())) if now is None else _stamp_of(now), d.field + d.encoding_characters()
    )
    msh = [
        "MSH",
        d.encoding_characters(),
        *(
            (inbound.parties[2], inbound.parties[3], inbound.parties[0], inbound.parties[1])
            if inbound is not None
            else (
                esc(headers.get("receiving_application", "")),
                esc(headers.get("receiving_facility", "")),
                esc(headers.get("sending_application", "")),
                esc(headers.get("sending_facility", "")),
            )
        ),
        stamp,
        "",
        _line([esc(p) for p in msg_type], d.component),
        esc(control_id or new_id()[-20:]),
        esc(headers.get("processing_id", "") or "P"),
        esc(version),
        "",
        "",
        "",
        "",
        "",
        inbound.charset if inbound is not None else esc(charset),
    ]
    msa = ["MSA", code, inbound.control_id if inbound is not None else esc(headers.get("control_id", ""))]
    errors = [] if code in POSITIVE_CODES else list(issues)
    if errors and version_key < (2, 5):
        msa.append(esc(errors[0].diagnostics or error_condition(errors[0].code, version)[1]))
    lines = [_line(msh, d.field), _line(msa, d.field)]
    lines.extend(_line(err, d.field) for err in _err_segments(errors, d, version))
    codec = ack_codec(headers, inbound)
    return _unframed("\r".join(lines) + "\r", d.escape).encode(codec, errors="replace")


def _refitted(inbound: Inbound, d: er7.Delimiters) -> Inbound:
    """``inbound`` with each copied value that holds an MLLP frame byte written again from what it reads
    as (an HD component by component), its escape characters escaped: as sent, an escape sequence left
    open before the byte (``/(`` + 0x1C) would take the byte's hex escape (:func:`_unframed`) apart."""

    def again(raw: str, split: bool) -> str:
        if "\x0b" not in raw and "\x1c" not in raw:
            return raw
        parts = raw.split(d.component) if split else [raw]
        return d.component.join(er7.escape(er7.unescape(p, d, inbound.codec), d) for p in parts)

    a, b, c, e = (again(p, True) for p in inbound.parties)
    return inbound._replace(
        parties=(a, b, c, e),
        control_id=again(inbound.control_id, False),
        charset=again(inbound.charset, False),
    )


def _unframed(text: str, escape: str) -> str:
    """``text`` with MLLP's frame bytes (0x0B, 0x1C), which a copied field may hold, as hex escapes: copied
    as they were, a 0x1C before a segment's end closed the reply's frame there (``MSA|AA|C1`` + 0x1C)."""
    if "\x0b" not in text and "\x1c" not in text:
        return text
    return text.replace("\x0b", f"{escape}X0B{escape}").replace("\x1c", f"{escape}X1C{escape}")


def build_batch_ack(batch: bytes, acks: Sequence[bytes | None]) -> bytes:
    """The acknowledgement batch answering the FHS/BHS batch ``batch`` (HL7 v2.5 §2.10.3).

    Each inbound FHS and BHS is answered by one with sender and receiver swapped (FHS/BHS-3,4 ↔ 5,6,
    copied as sent), this moment in FHS/BHS-7, a new control id in FHS/BHS-11 and the inbound one in
    FHS/BHS-12; each MSH by the next of ``acks`` (one per message, in order; ``None`` for a message
    that asked for no acknowledgement, which then gets none); each batch ends with a BTS whose BTS-1
    counts its ACKs and whose BTS-2 carries that batch's warnings, and the file with an FTS counting its
    batches, with the file's own warnings in FTS-2 (batches, messages and warnings as the batch's
    :func:`~adapters.hl7.er7.batch_outline` finds them: counts, trailers, never values). A trailer the
    inbound batch lacks is still written. The header fields are copied as bytes, so no character set is
    involved. ``b""`` when ``batch`` is not an FHS/BHS batch.
    """
    outline = er7.batch_outline(batch)
    if outline is None:
        return b""
    sep, d = outline.separator, outline.delimiters
    stamp = _stamp_among(_stamp(int(time.time())), sep.decode("latin-1") + d.encoding_characters()).encode()

    def header(line: bytes) -> bytes:
        f = line.split(sep) + [b""] * 12
        control = new_id()[-20:].encode()
        fields = [f[0], f[1], f[4], f[5], f[2], f[3], stamp, b"", b"", b"", control, f[10]]
        return _unframed((sep.join(fields).rstrip(sep) + b"\r").decode("latin-1"), d.escape).encode("latin-1")

    def trailer(name: bytes, count: int, ordinal: int) -> bytes:
        comment = " ".join(issue.diagnostics for at, issue in outline.issues if at == ordinal)
        return sep.join([name, str(count).encode(), er7.escape(comment, d).encode()]).rstrip(sep) + b"\r"

    out = [header(outline.header)] if outline.header is not None else []
    for part in outline.batches:
        replies = [acks[n] for n in part.messages if n < len(acks)]
        answers = [reply for reply in replies if reply is not None]
        if part.header is None:  # messages outside any batch: their ACKs, counted in none
            out.extend(answers)
            continue
        out += [header(part.header), *answers, trailer(b"BTS", len(answers), part.ordinal)]
    if outline.header is not None:
        out.append(trailer(b"FTS", sum(part.header is not None for part in outline.batches), 0))
    return b"".join(out)


def parse_ack(raw: bytes) -> tuple[str, str, str]:
    """Read a received ACK: ``(MSA-1 code, MSA-2 acknowledged control id, text)``.

    ``text`` is MSA-3, else the first ERR's ERR-8, ERR-7, ERR-3 text or ELD
    text, else ``""``. Raises :class:`~adapters.hl7.er7.ER7Error` when the
    bytes are not an HL7 message or have no MSA segment (code ``missing_msa``).
    """
    msg = er7.parse(raw)
    if msg.segment("MSA") is None:
        raise er7.ER7Error("missing_msa", "MSA", "The reply has no MSA segment.")
    text = (
        msg.get("MSA-3") or msg.get("ERR-8") or msg.get("ERR-7") or msg.get("ERR-3.2") or msg.get("ERR-1.4.2")
    )
    return msg.get("MSA-1"), msg.get("MSA-2"), text
