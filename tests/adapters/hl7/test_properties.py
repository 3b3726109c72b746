"""Properties of the HL7 v2 reader and its acknowledgement, over generated messages (hypothesis).

Messages are built from plausible MSH headers (random delimiters, including a v2.7 truncation
character; any message type, control id, version, acknowledgement types and MSH-18 character set)
and random field contents, written with any line ending and an optional BOM, then mutated byte by byte
(bytes dropped, inserted, replaced, the message cut short or a span repeated). For every one, parsing
either gives an envelope or raises :class:`~gateway.adapter.ParseError`, never another exception, and
the reply intake builds for it (see :meth:`gateway.pipeline.Intake._record`) is a readable ACK whose
MSA-1 is the reply's code and whose MSA-2 is MSH-10 as the reader read it. Batch splitting and the
acknowledgement batch take the same payloads; escaped values read back as they were; and the MLLP
deframer finds the same frames however a byte stream is cut into reads.

The runs are derandomized and keep no example database, so CI sees the same examples every time.
"""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.hl7 import er7, framing
from adapters.hl7.adapter import HL7Adapter
from gateway.adapter import Issue, Outcome, OutcomeKind, ParseError, Reply
from gateway.envelope import Envelope, Receipt
from gateway.pipeline import classify

RECEIPT = Receipt("test", peer="127.0.0.1:9")
ADAPTERS = {level: HL7Adapter(level) for level in ("none", "header", "structure")}
DETERMINISTIC = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

PUNCTUATION = "|^~\\&#!@$%*+-_=:;,./?<>'\"`()[]{}"
CHARSETS = [*er7.CHARSETS, "", "UNICODE UTF-16", "8859/1~UNICODE UTF-8", "NOT A CHARSET"]
TEXT = st.text(
    alphabet=st.one_of(
        st.sampled_from(PUNCTUATION + "AZaz09 \t"),
        st.sampled_from("éßøΩЖ中\u00a0\u200b\ufeff"),
        st.characters().filter(lambda c: c not in "\r\n"),  # any but surrogates (never drawn)
    ),
    max_size=12,
)
"""Field contents: delimiters of every kind among other text, so that they may split or escape anything."""
ESCAPES = st.sampled_from(
    [
        "X",
        "X0",
        "XZZ",
        "X0D0A",
        "XC3A9",
        "XFF",
        "X" + "41" * 40,
        "E",
        "F",
        "S",
        "T",
        "R",
        "P",
        ".br",
        "H",
        "Z1",
    ]
)


@st.composite
def delimiters(draw: st.DrawFn) -> er7.Delimiters:
    chars = draw(st.lists(st.sampled_from(PUNCTUATION), min_size=5, max_size=6, unique=True))
    return er7.Delimiters(*chars[:5], chars[5] if len(chars) == 6 else None)


@st.composite
def field(draw: st.DrawFn, d: er7.Delimiters) -> str:
    """Raw field text: random text, or repetitions and components of it with escape sequences."""
    if draw(st.booleans()):
        return draw(TEXT)
    parts = draw(st.lists(st.one_of(TEXT, ESCAPES.map(lambda s: d.escape + s + d.escape)), max_size=4))
    glue = draw(st.sampled_from([d.component, d.repetition, d.subcomponent, ""]))
    return glue.join(parts)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    d = draw(delimiters())
    charset = draw(st.sampled_from(CHARSETS))
    msh = [
        "MSH",
        d.encoding_characters(),
        *(draw(field(d)) for _ in range(4)),
        draw(st.sampled_from(["20240101120000+0000", ""])),
        "",
        draw(
            st.one_of(
                st.sampled_from(["ADT^A01^ADT_A01", "ORU^R01", "ACK^A01^ACK", "ZZZ^Z99", "QBP^Q22"]).map(
                    lambda t: t.replace("^", d.component)
                ),
                field(d),
            )
        ),
        draw(field(d)),
        draw(st.sampled_from(["P", "D", "T", "", "X"])),
        draw(
            st.one_of(st.sampled_from(["2.1", "2.3", "2.3.1", "2.5", "2.5.1", "2.7", "2.9", "9.9", ""]), TEXT)
        ),
        "",
        "",
        draw(st.sampled_from(["AL", "NE", "ER", "SU", "", "xx"])),
        draw(st.sampled_from(["AL", "NE", "ER", "SU", "", "xx"])),
        "",
        charset.replace("~", d.repetition),
    ]
    msh = msh[: draw(st.integers(8, len(msh)))]
    segments = [d.field.join(msh)]  # MSH-1, the separator itself, stands between MSH and MSH-2
    for _ in range(draw(st.integers(0, 4))):
        sid = draw(
            st.sampled_from(["EVN", "PID", "PV1", "OBX", "MSA", "ERR", "NTE", "ZZ1", "MSH", "BHS", "pid"])
        )
        segments.append(d.field.join([sid, *(draw(field(d)) for _ in range(draw(st.integers(0, 8))))]))
    text = draw(st.sampled_from(["\r", "\n", "\r\n"])).join(segments) + draw(
        st.sampled_from(["\r", "", "\r\n\r\n"])
    )
    raw = text.encode(er7.CHARSETS.get(charset.upper(), "utf-8"), errors="replace")
    if draw(st.booleans()):
        raw = er7.BOM + raw
    return draw(mutated(raw))


@st.composite
def mutated(draw: st.DrawFn, raw: bytes) -> bytes:
    """``raw`` with a few byte-level mutations (none half of the time)."""
    for _ in range(draw(st.integers(0, 3)) if draw(st.booleans()) else 0):
        at = draw(st.integers(0, len(raw)))
        op = draw(st.sampled_from(["drop", "insert", "replace", "cut", "repeat"]))
        chunk = draw(st.binary(min_size=1, max_size=4))
        if op == "drop":
            raw = raw[:at] + raw[at + len(chunk) :]
        elif op == "insert":
            raw = raw[:at] + chunk + raw[at:]
        elif op == "replace":
            raw = raw[:at] + chunk + raw[at + len(chunk) :]
        elif op == "cut":
            raw = raw[:at]
        else:
            raw = raw[:at] + raw[at : at + 16] * draw(st.integers(2, 50)) + raw[at:]
    return raw


def intake(adapter: HL7Adapter, unit: bytes) -> tuple[Reply, str]:
    """Parse, validate and answer one message as intake does; the reply and the control id the reader
    read (the salvaged one when the message could not be parsed)."""
    envelope: Envelope | None = None
    try:
        envelope = adapter.parse(unit, RECEIPT)
    except ParseError as exc:
        assert exc.issues and all(i.is_error and i.code for i in exc.issues)
        kind: OutcomeKind = "invalid"
        headers, issues, control_id = exc.headers, exc.issues, exc.headers.get("control_id", "")
    else:
        issues = adapter.validate(envelope)
        kind = classify(issues)
        headers, control_id = envelope.headers, envelope.control_id
    reply = adapter.respond(Outcome(kind, headers, issues, "01J00000000000000000000000", envelope))
    refused = Issue("error", "store_unavailable", "", "The store is unavailable.")
    adapter.respond(Outcome("refused", headers, [refused], None, envelope))
    return reply, control_id


def assert_acknowledges(reply: Reply, control_id: str) -> None:
    """``reply`` read in the character set it names (the reader's own guess where it names none) is an
    ACK of ``reply.code`` whose MSA-2 is ``control_id``, and it goes through MLLP framing whole."""
    assert framing.FrameReader(max_frame_bytes=1 << 24).feed(framing.frame(reply.body)) == [reply.body]
    _, _, charset = reply.content_type.partition("; charset=")
    ack = er7.parse_text(reply.body.decode(charset), charset) if charset else er7.parse(reply.body)
    assert [s.id for s in ack.segments[:2]] == ["MSH", "MSA"]
    assert ack.get("MSH-9.1") == "ACK"
    msa = ack.segments[1].fields
    assert msa[1] == reply.code
    assert er7.unescape(msa[2] if len(msa) > 2 else "", ack.delimiters, ack.encoding) == control_id


@settings(DETERMINISTIC, max_examples=250)
@given(raw=messages(), level=st.sampled_from(sorted(ADAPTERS)))
def test_a_message_parses_or_fails_cleanly_and_its_ack_names_its_control_id(raw: bytes, level: str) -> None:
    reply, control_id = intake(ADAPTERS[level], raw)
    assert_acknowledges(reply, control_id)


BATCH_LINES = st.one_of(
    st.sampled_from(
        [
            b"FHS|^~\\&|A|F\r",
            b"BHS|^~\\&|A|F\r",
            b"BHS+^~\\&+A\r",
            b"FHS",
            b"BHS",
            b"BHS\r",
            b"BTS|1\r",
            b"FTS|",
            b"FTS|1\r",
        ]
    ),
    st.integers(0, 6000).map(lambda n: b"BTS|" + b"7" * n + b"\r"),  # counts past what int() reads too
)
"""Batch headers and trailers, whole or not."""


@settings(DETERMINISTIC, max_examples=100)
@given(parts=st.lists(st.one_of(messages(), BATCH_LINES), max_size=6))
@example(parts=[b"BHS"])  # a header id alone: the acknowledgement batch once split on an empty separator
@example(parts=[b"FHS|^~\\&\r", b"MSH|^~\\&|A|F|||1||ADT^A01|C|P|2.5\r", b"BTS|" + b"7" * 5000 + b"\r"])
def test_a_payload_of_several_messages_splits_and_gets_one_reply(parts: list[bytes]) -> None:
    """Split as intake splits, each unit answered, and the batch answered as a whole."""
    raw = b"".join(parts)
    adapter = ADAPTERS["header"]
    batch = adapter.split(raw)
    units = batch.units if batch is not None else [raw]
    replies = []
    for unit in units:
        reply, control_id = intake(adapter, unit)
        assert_acknowledges(reply, control_id)
        replies.append(reply)
    if batch is not None:
        answer = adapter.respond_batch(batch, replies)
        assert answer.body or not replies


@settings(DETERMINISTIC, max_examples=200)
@given(d=delimiters(), values=st.lists(st.text(), min_size=1, max_size=3))
def test_escaped_values_read_back_equal(d: er7.Delimiters, values: list[str]) -> None:
    """Text with any delimiter, escape or line break in it, escaped, reads back as it was: from the field
    alone, and as PID-5's components in a message written with those delimiters."""
    escaped = [er7.escape(v, d) for v in values]
    assert [er7.unescape(e, d) for e in escaped] == values
    msh = d.field.join(["MSH", d.encoding_characters(), "A", "F", "", "", "", "", "ADT", "C1", "P", "2.5.1"])
    pid = d.field.join(["PID", "1", "", "ID", "", d.component.join(escaped)])
    message = er7.parse(f"{msh}\r{pid}\r".encode())
    assert [message.get(f"PID-5.{n}") for n in range(1, len(values) + 1)] == values


@settings(DETERMINISTIC, max_examples=200)
@given(
    stream=st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from([framing.START, framing.END, b"\x1c", b"\r", b"MSH|^~\\&|A\r"]),
        ),
        max_size=12,
    ).map(b"".join),
    cuts=st.lists(st.integers(1, 6), max_size=60),
)
def test_mllp_frames_do_not_depend_on_how_the_bytes_arrive(stream: bytes, cuts: list[int]) -> None:
    """The deframer finds the same frames, and abandons the same ones, whether the stream comes in one
    read or cut anywhere (a frame's end split between reads, a start byte at a read's edge)."""
    whole = framing.FrameReader(max_frame_bytes=1 << 20)
    expected = whole.feed(stream)
    pieces = framing.FrameReader(max_frame_bytes=1 << 20)
    got: list[bytes] = []
    at = 0
    for cut in [*cuts, len(stream)]:
        got += pieces.feed(stream[at : at + cut])
        at += cut
    got += pieces.feed(stream[at:])
    assert got == expected and pieces.abandoned == whole.abandoned
    assert all(framing.START not in frame for frame in got)
    messages = [m for m in stream.split(framing.START) if framing.START not in m and framing.END not in m]
    framed = b"junk" + b"".join(framing.frame(m) for m in messages)
    assert framing.FrameReader(max_frame_bytes=1 << 20).feed(framed) == messages
