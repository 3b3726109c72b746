"""A fast reader for HL7 v2 ER7 ("pipe and hat") messages.

What lives here: :func:`canonical` (the bytes the reader reads, in one form
whatever the sender's BOM and line endings), :func:`decode` (bytes → text,
honouring MSH-18), :func:`parse`
(text → :class:`Message` of :class:`Segment` values holding raw, still escaped
field strings), :func:`unescape` / :func:`escape`, :func:`split_batch` (FHS/BHS
and multi-MSH files → one byte string per message), :func:`batch_outline` (an
FHS/BHS file's batches, their messages and the warnings about its structure,
which both the batch's issues and its acknowledgement batch are taken from) and
:class:`ER7Error`.

The reader only splits segments into fields; repetitions, components and
sub-components are split lazily, when a caller asks for them
(:meth:`Message.get`, :meth:`Message.repetitions`, :meth:`Message.components`).
That reads a 1.5 KB ADT in about ten microseconds, against tens of
milliseconds for hl7apy, which builds a full object tree (hl7apy stays the
reference: the tests compare both readers field by field).

Field numbering follows the standard: ``segment.fields[0]`` is the segment id
and ``segment.fields[n]`` is SEG-n. For the header segments (MSH, FHS, BHS)
``fields[1]`` is the field separator itself and ``fields[2]`` the encoding
characters, so ``fields[n]`` is MSH-n there too.

Nothing here logs, and no exception message carries a payload value.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import ClassVar

from gateway.adapter import Batch, Issue

__all__ = [
    "DEFAULT",
    "BatchOutline",
    "Delimiters",
    "ER7Error",
    "FileOutline",
    "Message",
    "Segment",
    "batch_outline",
    "canonical",
    "decode",
    "delimiters_from",
    "escape",
    "escape_table",
    "parse",
    "parse_path",
    "parse_text",
    "split_batch",
    "unescape",
    "value_at",
]

BOM = b"\xef\xbb\xbf"
HEADER_SEGMENTS = frozenset({"MSH", "FHS", "BHS"})
"""Segments whose first two fields are the delimiters themselves."""

# HL7 table 0211 (alternate character sets) → Python codec. The keys are compared
# upper-cased with surrounding blanks removed. A few common non-standard spellings
# are accepted too. UTF-16/UTF-32 are absent on purpose: MSH-18 is read from the raw
# bytes as ASCII, which a UTF-16 message could not be, so such a declaration is
# almost always a mislabelled UTF-8 message and takes the UTF-8 path.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR100": "latin-1",
    "ISO IR101": "iso8859-2",
    "ISO IR109": "iso8859-3",
    "ISO IR110": "iso8859-4",
    "ISO IR144": "iso8859-5",
    "ISO IR127": "iso8859-6",
    "ISO IR126": "iso8859-7",
    "ISO IR138": "iso8859-8",
    "ISO IR148": "iso8859-9",
    "ISO IR14": "iso2022_jp",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "CNS 11643-1992": "big5",
    "BIG-5": "big5",
    "UNICODE": "utf-8",
    "UNICODE UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    "UTF-8": "utf-8",
    "UTF8": "utf-8",
    "ISO-8859-1": "latin-1",
    "ISO8859-1": "latin-1",
    "LATIN1": "latin-1",
    "LATIN-1": "latin-1",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}


class ER7Error(ValueError):
    """No message could be read from the bytes.

    ``code`` is one of ``empty_message``, ``missing_msh``,
    ``bad_encoding_characters``, ``truncated`` (and ``missing_msa`` from
    :func:`adapters.hl7.ack.parse_ack`); ``location`` an HL7 path such as
    ``MSH-2``; ``diagnostics`` a sentence without payload values.

    ``header`` holds the raw header fields that were still readable (index n is
    MSH-n, as in :attr:`Segment.fields`), and ``delimiters`` the delimiters when
    they were valid, so that a reply can still name the sender's control id.
    """

    def __init__(
        self,
        code: str,
        location: str,
        diagnostics: str,
        *,
        header: list[str] | None = None,
        delimiters: Delimiters | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.code = code
        self.location = location
        self.diagnostics = diagnostics
        self.header: list[str] = header or []
        self.delimiters = delimiters


@dataclass(frozen=True, slots=True)
class Delimiters:
    """The separators a message declares in MSH-1 and MSH-2."""

    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str
    truncation: str | None = None
    """The v2.7+ truncation character (fifth character of MSH-2), if declared."""

    DEFAULT: ClassVar[Delimiters]

    def encoding_characters(self) -> str:
        """MSH-2 as it would be written: component, repetition, escape, sub-component[, truncation]."""
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")


DEFAULT = Delimiters("|", "^", "~", "\\", "&", None)
Delimiters.DEFAULT = DEFAULT


def _bad_delimiter(ch: str) -> bool:
    return ch.isalnum() or ch.isspace()


@functools.lru_cache(maxsize=64)
def delimiters_from(field_separator: str, encoding_characters: str) -> Delimiters:
    """Validate MSH-1 and MSH-2 and return the delimiters; raise ``bad_encoding_characters`` otherwise.

    MSH-2 must hold four or five distinct characters (the fifth is the v2.7
    truncation character), none alphanumeric or blank, none equal to MSH-1.
    """
    enc = encoding_characters
    chars = field_separator + enc
    if (
        len(field_separator) != 1
        or len(enc) not in (4, 5)
        or len(set(chars)) != len(chars)
        or any(_bad_delimiter(c) for c in chars)
    ):
        raise ER7Error(
            "bad_encoding_characters",
            "MSH-2",
            "MSH-1 and MSH-2 must declare five or six distinct, non-alphanumeric delimiter characters.",
        )
    return Delimiters(field_separator, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) == 5 else None)


class Segment:
    """One segment: its id and its raw (still escaped) fields, ``fields[n]`` being SEG-n."""

    __slots__ = ("fields", "id")

    def __init__(self, id: str, fields: list[str]) -> None:
        self.id = id
        self.fields = fields

    def __repr__(self) -> str:
        # Never the field values (payload); nor an "id" that is really a stray line of text.
        sid = self.id if len(self.id) == 3 and self.id.isalnum() else "?"
        return f"<Segment {sid} ({len(self.fields) - 1} fields)>"


class Message:
    """A parsed ER7 message: delimiters, segments and the decoded text they came from."""

    __slots__ = ("delimiters", "encoding", "segments", "text")

    def __init__(self, delimiters: Delimiters, segments: list[Segment], text: str, encoding: str) -> None:
        self.delimiters = delimiters
        self.segments = segments
        self.text = text
        """The decoded message, blank lines dropped, segments joined by ``\\r``."""
        self.encoding = encoding
        """The Python codec the bytes were decoded with."""

    def __repr__(self) -> str:
        return f"<Message {len(self.segments)} segments, {self.encoding}>"

    def segment(self, id: str, occurrence: int = 1) -> Segment | None:
        """The ``occurrence``-th (1-based) segment named ``id``, or ``None``."""
        for seg in self.segments:
            if seg.id == id:
                occurrence -= 1
                if occurrence == 0:
                    return seg
        return None

    def segments_named(self, id: str) -> list[Segment]:
        return [seg for seg in self.segments if seg.id == id]

    def field(self, seg: Segment | str, n: int) -> str:
        """Raw (escaped) SEG-n with all its repetitions, or ``""``; ``seg`` may be a segment id."""
        if isinstance(seg, str):
            found = self.segment(seg)
            if found is None:
                return ""
            seg = found
        fields = seg.fields
        return fields[n] if 0 < n < len(fields) else ""

    def repetitions(self, seg: Segment, n: int) -> list[str]:
        """The raw repetitions of SEG-n; ``[]`` when the field is empty or absent."""
        fields = seg.fields
        value = fields[n] if 0 < n < len(fields) else ""
        if not value:
            return []
        if n <= 2 and seg.id in HEADER_SEGMENTS:
            return [value]
        return value.split(self.delimiters.repetition)

    def components(self, value: str) -> list[str]:
        """Split a raw field repetition into its raw components."""
        return value.split(self.delimiters.component)

    def subcomponents(self, value: str) -> list[str]:
        """Split a raw component into its raw sub-components."""
        return value.split(self.delimiters.subcomponent)

    def get(self, path: str) -> str:
        """The unescaped value at ``path`` (``PID-3``, ``PID-3[2].1``, ``OBX(2)-5.1.2``), or ``""``.

        Repetition, component and sub-component indexes are 1-based; the
        repetition defaults to the first. A path without a component returns the
        whole repetition (components and all), unescaped.
        """
        seg_id, occurrence, n, rep, comp, sub = parse_path(path)
        seg = self.segment(seg_id, occurrence)
        if seg is None or n == 0:
            return ""
        fields = seg.fields
        if n >= len(fields):
            return ""
        value = fields[n]
        if n <= 2 and seg_id in HEADER_SEGMENTS:
            return value if rep <= 1 and comp <= 1 and sub <= 1 else ""
        return value_at(value, self.delimiters, rep, comp, sub, self.encoding)


def _pick(value: str, sep: str, index: int) -> str:
    if sep not in value:
        return value if index <= 1 else ""
    parts = value.split(sep)
    return parts[index - 1] if index <= len(parts) else ""


def value_at(
    field: str, d: Delimiters, rep: int = 1, comp: int = 0, sub: int = 0, encoding: str = "utf-8"
) -> str:
    """The unescaped value inside a raw field: repetition ``rep``, component ``comp``, sub-component ``sub``.

    Indexes are 1-based; ``comp``/``sub`` 0 mean the whole repetition/component.
    ``""`` when absent.
    """
    value = _pick(field, d.repetition, rep)
    if comp:
        value = _pick(value, d.component, comp)
        if sub:
            value = _pick(value, d.subcomponent, sub)
    if d.escape in value:
        return unescape(value, d, encoding)
    return value


def _indexed(text: str, path: str, opening: str) -> tuple[str, int]:
    """Split ``NAME[n]`` (or ``NAME(n)``) into ``(NAME, n)``; ``(text, 1)`` without an index."""
    closing = "]" if opening == "[" else ")"
    name, bracket, rest = text.partition(opening)
    if not bracket:
        return text, 1
    if not rest.endswith(closing) or not rest[:-1].isdigit() or int(rest[:-1]) < 1:
        raise ValueError(f"bad HL7 path {path!r}")
    return name, int(rest[:-1])


@functools.lru_cache(maxsize=2048)
def parse_path(path: str) -> tuple[str, int, int, int, int, int]:
    """Parse ``SEG(occ)-field[rep].component.subcomponent``; all but ``SEG`` are optional.

    The segment occurrence may also be written ``SEG[occ]``. Returns
    ``(segment_id, occurrence, field, repetition, component, subcomponent)``;
    absent parts are 0 (1 for occurrence and repetition). Raises
    ``ValueError`` for a malformed path (a programming error, not a content
    problem).
    """
    seg_part, dash, rest = path.strip().partition("-")
    seg_id, occurrence = _indexed(seg_part, path, "(" if "(" in seg_part else "[")
    if not seg_id.isalnum():
        raise ValueError(f"bad HL7 path {path!r}")
    if not dash:
        return seg_id, occurrence, 0, 1, 0, 0
    parts = rest.split(".")
    if len(parts) > 3:
        raise ValueError(f"bad HL7 path {path!r}")
    field_s, rep = _indexed(parts[0], path, "[")
    if not all(p.isdigit() and int(p) > 0 for p in (field_s, *parts[1:])):
        raise ValueError(f"bad HL7 path {path!r}")
    comp = int(parts[1]) if len(parts) > 1 else 0
    sub = int(parts[2]) if len(parts) > 2 else 0
    return seg_id, occurrence, int(field_s), rep, comp, sub


# --------------------------------------------------------------------------- decoding


def _declared_codec(raw: bytes) -> str | None:
    """The codec named by the first MSH segment's MSH-18, read from the raw bytes; ``None`` if none."""
    if raw.startswith(b"MSH"):
        start = 0
    else:
        cr, lf = raw.find(b"\rMSH"), raw.find(b"\nMSH")
        start = min(p for p in (cr, lf) if p >= 0) + 1 if cr >= 0 or lf >= 0 else -1
        if start < 0:
            return None
    end = raw.find(b"\r", start)
    if end < 0:
        end = len(raw)
    newline = raw.find(b"\n", start, end)  # the MSH line ends at the first \r or \n
    line = raw[start : newline if newline >= 0 else end]
    if len(line) < 8:
        return None
    parts = line.split(line[3:4])
    if len(parts) < 18 or not parts[17]:
        return None
    value = parts[17]
    rep = parts[1][1:2]
    if rep and rep in value:
        value = value.split(rep, 1)[0]
    return CHARSETS.get(value.decode("ascii", "replace").strip().upper())


def canonical(raw: bytes) -> bytes:
    """The message bytes as the reader reads them, in one form whatever the sender's habits.

    A UTF-8 BOM and the blanks before the first segment are dropped, segment
    endings ``\\r\\n`` and ``\\n`` become ``\\r``, and the blank lines and blanks
    after the last segment are dropped, which then ends with one ``\\r``. Blanks
    at the end of the last segment itself are kept: they are part of its last
    field. ``raw`` itself when it is already in this form (the usual case).
    """
    body = raw
    if not body[:1].isalpha():  # a BOM or blanks in front (one test for the usual case)
        body = body[3:] if body.startswith(BOM) else body
        body = body.lstrip()
    if b"\n" in body:
        body = body.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    if body[-1:] != b"\r" or body[-2:-1].isspace():
        end = body.find(b"\r", len(body.rstrip()))
        body = body[: end + 1] if end >= 0 else body + b"\r"
    return body


def decode(raw: bytes) -> tuple[str, str]:
    """Decode message bytes to text; return ``(text, codec_name)``.

    Decodes the :func:`canonical` form of ``raw`` (so segments end with
    ``\\r``; the last one has none) with the codec MSH-18 names (HL7 table
    0211), falling back to UTF-8 and then latin-1 (which cannot fail, so no
    byte is lost) when MSH-18 is empty, unknown or wrong.
    """
    body = canonical(raw)
    text, codec = _decode_bytes(body, _declared_codec(body))
    return text.rstrip("\r"), codec


def _decode_bytes(raw: bytes, declared: str | None) -> tuple[str, str]:
    for codec in (declared, "utf-8"):
        if codec is not None:
            try:
                return raw.decode(codec), codec
            except UnicodeDecodeError:
                pass
    return raw.decode("latin-1"), "latin-1"


# --------------------------------------------------------------------------- parsing


def parse(raw: bytes) -> Message:
    """Read one message from bytes (see :func:`decode`); raise :class:`ER7Error` only if none can be read."""
    text, codec = decode(raw)
    return parse_text(text, codec)


def parse_text(text: str, encoding: str = "utf-8") -> Message:
    """Read one message from decoded text whose segments end with ``\\r``.

    Leading FHS/BHS segments are kept as segments; the message must contain an
    MSH segment. Blank lines are dropped. ``encoding`` is recorded on the
    message (and used to decode ``\\X..\\`` hex escapes).
    """
    text = text.lstrip()
    if not text.strip():
        raise ER7Error("empty_message", "", "The message is empty.")
    head = text[:3]
    if head not in HEADER_SEGMENTS:
        raise ER7Error("missing_msh", "MSH", "The message does not start with an MSH segment.")
    lines = text.split("\r")
    first = lines[0]
    if len(first) < 4:
        raise ER7Error("truncated", head, f"The message ends inside the {head} segment.")
    fs = first[3]
    header = first.split(fs)
    header.insert(1, fs)
    if len(header) < 4 and len(lines) == 1:
        # MSH-2 not terminated by a field separator and nothing after it: cut off.
        raise ER7Error(
            "truncated", f"{head}-2", f"The message ends inside the {head} segment.", header=header
        )
    try:
        d = delimiters_from(fs, header[2])
    except ER7Error as exc:
        exc.header = header
        raise

    segments = [Segment(head, header)]
    append = segments.append
    clean = True
    for line in lines[1:]:
        if not line or line.isspace():
            clean = False
            continue
        fields = line.split(fs)
        sid = fields[0]
        if sid in HEADER_SEGMENTS:
            fields.insert(1, fs)
        append(Segment(sid, fields))

    msh = segments[0] if head == "MSH" else next((s for s in segments if s.id == "MSH"), None)
    if msh is None:
        raise ER7Error("missing_msh", "MSH", f"The {head} batch header is not followed by an MSH segment.")
    if len(segments) == 1 and len(msh.fields) < 13:
        raise ER7Error(
            "truncated",
            f"MSH-{len(msh.fields) - 1}",
            "The message ends inside the MSH segment, before MSH-12.",
            header=msh.fields,
            delimiters=d,
        )
    if not clean:
        text = "\r".join(line for line in lines if line and not line.isspace())
    return Message(d, segments, text, encoding)


# --------------------------------------------------------------------------- escapes


def unescape(value: str, d: Delimiters, encoding: str = "utf-8") -> str:
    """Resolve HL7 escape sequences in a raw value.

    ``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\`` become the delimiters, ``\\P\\`` the truncation
    character (when MSH-2 declares one), ``\\Xhh..\\`` the bytes ``hh..`` decoded
    with ``encoding`` (latin-1 when they do not decode), and ``\\.br\\`` a line
    break ``\\n``. Any other sequence (``\\H\\``, ``\\N\\``, ``\\Zxx\\``, …) and an
    unterminated escape are left as they are.
    """
    esc = d.escape
    if esc not in value:
        return value
    out: list[str] = []
    i = 0
    while True:
        j = value.find(esc, i)
        if j < 0:
            break
        k = value.find(esc, j + 1)
        if k < 0:
            break
        out.append(value[i:j])
        replacement = _resolve(value[j + 1 : k], d, encoding)
        out.append(value[j : k + 1] if replacement is None else replacement)
        i = k + 1
    out.append(value[i:])
    return "".join(out)


def _resolve(seq: str, d: Delimiters, encoding: str) -> str | None:
    if len(seq) == 1:
        if seq == "F":
            return d.field
        if seq == "S":
            return d.component
        if seq == "T":
            return d.subcomponent
        if seq == "R":
            return d.repetition
        if seq == "E":
            return d.escape
        if seq == "P":
            return d.truncation
        return None
    if seq == ".br":
        return "\n"
    if seq[:1] == "X" and len(seq) % 2 == 1:
        try:
            data = bytes.fromhex(seq[1:])
        except ValueError:
            return None
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            return data.decode("latin-1")
    return None


@functools.lru_cache(maxsize=64)
def escape_table(d: Delimiters) -> dict[int, str]:
    """The ``str.translate`` table :func:`escape` uses; take it once to escape many values."""
    e = d.escape
    table = {
        ord(d.escape): f"{e}E{e}",
        ord(d.field): f"{e}F{e}",
        ord(d.component): f"{e}S{e}",
        ord(d.subcomponent): f"{e}T{e}",
        ord(d.repetition): f"{e}R{e}",
        ord("\r"): f"{e}X0D{e}",
        ord("\n"): f"{e}X0A{e}",
    }
    if d.truncation:
        table[ord(d.truncation)] = f"{e}P{e}"
    return table


def escape(value: str, d: Delimiters) -> str:
    """Escape a text value for one ER7 field component (the inverse of :func:`unescape`)."""
    return value.translate(escape_table(d)) if value else value


# --------------------------------------------------------------------------- batches

_SEGMENT_START = re.compile(rb"[\r\n](?:\xef\xbb\xbf)?[ \t]*(MSH|FHS|BHS|BTS|FTS)(?![A-Za-z0-9])")
"""A line that starts a message or a batch header or trailer, from the line end before it. A BOM
and blanks before the segment id still start one: files that each begin with a BOM, joined."""
_BATCH_KINDS = {b"FHS": "fhs", b"BHS": "bhs"}
LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_MAX_COUNT_DIGITS = 18
"""The longest BTS-1 / FTS-1 count read as a number (HL7 gives them NM, 10 characters); a longer run of
digits is a mismatch however it would read."""


def batch_lines(raw: bytes) -> list[tuple[bytes, int, int]] | None:
    """The MSH and batch header and trailer lines of ``raw``, in order, as ``(segment id, start, end)``.

    ``end`` is where the next such line starts (or the end of ``raw``): an MSH's span is its whole
    message. ``None`` unless ``raw`` starts (after a BOM and blanks) with MSH, FHS or BHS and a
    delimiter. Only segment starts count, so a field whose value is ``MSH`` never splits.
    """
    base = 3 if raw.startswith(BOM) else 0
    base += len(raw) - base - len(raw[base:].lstrip())
    head = raw[base : base + 3]
    if head != b"MSH" and head not in _BATCH_KINDS:
        return None
    sep = raw[base + 3 : base + 4]
    if not sep or sep.isalnum() or sep.isspace():  # no field separator: a bare "BHS" is not a batch
        return None
    starts = [(head, base)]
    starts.extend((m.group(1), m.start() + 1) for m in _SEGMENT_START.finditer(raw, base + 1))
    ends = [start for _, start in starts[1:]] + [len(raw)]
    return [(name, start, end) for (name, start), end in zip(starts, ends, strict=True)]


def split_batch(raw: bytes) -> Batch | None:
    """Split an FHS/BHS batch file or a file of several MSH messages into messages.

    Returns ``None`` for a single plain message (or for bytes that are not
    HL7). Each unit is the message's bytes exactly as received, from the start
    of its MSH line (a BOM and blanks before ``MSH`` included) up to (not
    including) the line of the next MSH or batch header/trailer segment, its
    own segment terminators included; FHS, BHS, BTS and FTS belong to no unit.

    An FHS/BHS batch may hold no message (``BTS|0``): it is a batch with no
    units, unless something other than its headers and trailers is in it (then
    ``None``: it is read as one message, which has no MSH). The batch's
    :attr:`~gateway.adapter.Batch.issues` are the warnings of its :func:`batch_outline`.
    """
    lines = batch_lines(raw)
    if lines is None:
        return None
    units = [raw[start:end] for name, start, end in lines if name == b"MSH"]
    head = lines[0][0]
    if head == b"MSH":
        return Batch(kind="multi", raw=raw, units=units) if len(units) > 1 else None
    if not units and any(_beyond_line(raw, start, end) for _, start, end in lines):
        return None
    outline = batch_outline(raw, lines)
    assert outline is not None  # the payload starts with FHS or BHS
    issues = tuple(issue for _, issue in outline.issues)
    return Batch(kind=_BATCH_KINDS[head], raw=raw, units=units, issues=issues)


def _beyond_line(raw: bytes, start: int, end: int) -> bool:
    """True when ``raw[start:end]`` holds more than one line (blank lines aside)."""
    return any(line.strip() for line in LINE_BREAK.split(raw[start:end])[1:])


def _first_line(raw: bytes, start: int, end: int) -> bytes:
    """The first line of ``raw[start:end]``, blanks around it dropped."""
    return LINE_BREAK.split(raw[start:end], 1)[0].strip()


@dataclass(frozen=True, slots=True)
class BatchOutline:
    """One BHS batch of an FHS/BHS file, or a run of messages outside any (see :class:`FileOutline`)."""

    ordinal: int
    """1 for the first BHS, 2 for the next …; 0 for messages outside any BHS."""
    header: bytes | None
    """The BHS line, blanks around it dropped; ``None`` for messages outside any BHS."""
    messages: list[int] = field(default_factory=list)
    """Its messages, as their places among the file's MSH messages (0 for the first)."""


@dataclass(frozen=True, slots=True)
class FileOutline:
    """The structure of an FHS/BHS payload, from one walk of its :func:`batch_lines`."""

    separator: bytes
    """The field separator of the first line (FHS or BHS); ``b""`` when it has none."""
    delimiters: Delimiters
    """The delimiters its first line declares, :data:`DEFAULT` when they are not valid."""
    header: bytes | None
    """The FHS line, blanks around it dropped; ``None`` when the payload starts with BHS."""
    batches: list[BatchOutline]
    """Its batches and the runs of messages outside any, in order."""
    issues: list[tuple[int, Issue]]
    """The warnings about its structure (counts and trailers, never values), each with the batch it is
    about: 1 for the first BHS, 2 for the next …, 0 for the file itself."""


def batch_outline(raw: bytes, lines: list[tuple[bytes, int, int]] | None = None) -> FileOutline | None:
    """The outline of an FHS/BHS payload: its header, its batches and their messages, and the warnings
    about them; ``None`` for anything else (a plain message, bare MSH messages, bytes that are not HL7).

    A batch runs from its BHS to its BTS, the next BHS or the end; the warnings are a BTS-1 or FTS-1 count
    that does not match, a missing BTS or FTS (the file may have been cut short), and segments after an
    FHS, BHS, BTS or FTS before the next MSH, which belong to no message. ``lines`` are
    :func:`batch_lines` of ``raw`` when the caller has them."""
    lines = batch_lines(raw) if lines is None else lines
    if not lines or lines[0][0] == b"MSH":
        return None
    base = lines[0][1]
    sep = raw[base + 3 : base + 4]
    try:
        d = delimiters_from(sep.decode("latin-1"), raw[base + 4 :].split(sep, 1)[0].decode("latin-1"))
    except (ER7Error, ValueError):  # ValueError: no separator to split on
        d = DEFAULT
    issues: list[tuple[int, Issue]] = []
    parts: list[BatchOutline] = []
    batch: BatchOutline | None = None  # the open BHS batch, if one is open
    batches = messages = 0
    file_open = lines[0][0] == b"FHS"

    def missing(ordinal: int, trailer: str, what: str) -> None:
        diagnostics = f"The {what} has no {trailer}: it may be cut short."
        issues.append((ordinal, Issue("warning", "batch_trailer_missing", trailer, diagnostics)))

    def count(start: int, end: int, where: str, what: str, found: int, ordinal: int) -> None:
        line = _first_line(raw, start, end)
        fields = line.split(sep) if sep else [line]
        declared = fields[1].strip() if len(fields) > 1 else b""
        if not declared.isdigit():
            return
        digits = declared.lstrip(b"0") or b"0"
        if len(digits) > _MAX_COUNT_DIGITS:  # past what int() reads, and past any real count
            diagnostics = f"{where} declares a number of {what} {len(digits)} digits long; {found} arrived."
        elif int(digits) != found:
            diagnostics = f"{where} declares {int(digits)} {what}; {found} arrived."
        else:
            return
        issues.append((ordinal, Issue("warning", "batch_count_mismatch", where, diagnostics)))

    for name, start, end in lines:
        if name != b"MSH" and _beyond_line(raw, start, end):
            segment = name.decode()
            diagnostics = (
                f"Segments after {segment} and before the next MSH belong to no message; "
                "they are kept with the batch but not read."
            )
            ordinal = 0 if name == b"FHS" else batches + (name == b"BHS")
            issues.append((ordinal, Issue("warning", "unexpected_segment", segment, diagnostics)))
        if name == b"BHS":
            if batch is not None:
                missing(batches, "BTS", "batch")
            batches += 1
            batch = BatchOutline(batches, _first_line(raw, start, end))
            parts.append(batch)
        elif name == b"MSH":
            if batch is not None:
                batch.messages.append(messages)
            elif parts and parts[-1].header is None:
                parts[-1].messages.append(messages)
            else:
                parts.append(BatchOutline(0, None, [messages]))
            messages += 1
        elif name == b"BTS":
            count(start, end, "BTS-1", "messages", len(batch.messages) if batch is not None else 0, batches)
            batch = None
        elif name == b"FTS":
            count(start, end, "FTS-1", "batches", batches, 0)
            file_open = False
    if batch is not None:
        missing(batches, "BTS", "batch")
    if file_open:
        missing(0, "FTS", "file")
    header = _first_line(raw, base, lines[0][2]) if lines[0][0] == b"FHS" else None
    return FileOutline(sep, d, header, parts, issues)
