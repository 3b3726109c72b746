"""The ISO 8583 adapter: card messages → envelope, validation issues, and the response message.

:class:`ISO8583Adapter` implements :class:`gateway.adapter.Adapter` for ISO 8583
(registry key ``iso8583``) on top of pyiso8583 (module ``iso8583``). The field
specification comes from the config: pyiso8583's ``default_ascii`` (ASCII
bitmaps) or ``default`` (binary bitmaps, PIN and ICC data), or the path of a
JSON file in pyiso8583's spec format for a site's own variant. The bytes given
to :meth:`ISO8583Adapter.parse` are one message without its length header (the
listener, :mod:`adapters.finance.iso8583_listener`, takes that off).

Envelope fields:

* ``version`` from the MTI's first digit (``1987``, ``1993``, ``2003``);
  ``message_type`` the MTI (``0100``, ``0200``, ``0400``, ``0420`` …).
* ``control_id`` ``MTI-STAN-RRN`` (DE11, DE37), with DE7 (transmission date
  and time) standing in for a missing RRN so that a STAN that wrapped around
  does not collide; the MTI is part of it so that a reversal that repeats its
  original's STAN and RRN is not taken for a changed resend of the original.
* ``sender`` ``ACQUIRER/TERMINAL`` (DE32, DE41), either alone when the other is
  absent; ``receiver`` DE100; ``correlation_id`` for a reversal or advice that
  carries DE90, the control id of the original it names.
* ``headers`` (every key always present, ``""`` when absent): ``mti``,
  ``version``, ``message_type``, ``control_id``, ``processing_code`` (DE3),
  ``amount`` (DE4 as a decimal string scaled by the ISO 4217 exponent of the
  DE49 currency, never a float; ``""`` when the currency is unknown),
  ``currency`` (alphabetic code), ``stan``, ``rrn``, ``transmission_time``
  (DE7), ``acquirer_id`` (DE32), ``terminal_id`` (DE41), ``merchant_id``
  (DE42), ``pan_bin`` (first six digits) and ``pan_last4``.
* ``business_keys`` ``{"card": PAN}`` (the store keeps only a keyed pseudonym
  of it); ``masked_keys`` ``{"card": BIN + "*"… + last four}``;
  ``sensitivity`` ``pan``.

PCI DSS. ``Envelope.raw`` is what the store keeps, so it is **not** the bytes as
received: it is the canonical JSON of the decoded data elements (see
:func:`redacted_form`) with the PAN (DE2, DE34) masked to BIN + last four, and
the elements that carry sensitive authentication data removed: track 1, 2 and
3 (DE45, DE35, DE36), the expiry date (DE14), the PIN block (DE52), security
control information (DE53) and chip data (DE55), plus every element of a site
spec whose description names track, PIN, CVV/CVC, ICC/chip, expiry or
security data, or that the spec marks ``"redact": "drop"`` (``"mask"`` masks an
element like a PAN). In the elements kept, a copy of the PAN is masked. Every
element kept is then searched, variable or fixed length (DE43 name and
location, DE90, DE98 …), except the fixed-length ones that hold amounts,
counts, rates, dates and times, codes, bitmaps or MACs: one that holds track-like
data (track 2 with ``=``, ``D`` or ``d``, track 1 with ``B`` or ``b``) is
removed, and in the others every card number is masked: 13 to 19 digits that
pass the Luhn check, written unbroken or in the usual groups joined by any run of
spaces, tabs, hyphens, dots, slashes, underscores or commas
(``4111-1111-1111-1111``, ``3782 822463 10005``, ``5555 - 5555 - 5555 - 4444``),
and at either end of a longer run of digits one that also falls in a card
scheme's issuer range and length (``REF20260101`` followed by the number; in a
DE90 of 42 digits, one written where its institution ids begin; see
:func:`_mask_card_numbers`). Masked digits become ``*`` and separators stay in
place, so a masked element is as long as the clear one and the kept elements
still encode with the spec.
``raw_sha256`` is the digest of that redacted form. The clear data elements
stay only in memory (``Envelope.body``, an :class:`ISO8583Message` whose
``repr`` shows no values) so that :meth:`~ISO8583Adapter.respond` can echo
them. :meth:`~ISO8583Adapter.serialize` returns the redacted form: this adapter
never forwards card data it has not kept.

A message that cannot be decoded raises :class:`~gateway.adapter.ParseError`
with ``stored=b""`` (nothing of it is kept) and whatever header fields were
decoded before the fault (MTI, STAN, RRN, terminal id …, never the PAN). Its
issue names the data element and says what was wrong in a fixed sentence:
pyiso8583's ``DecodeError`` text and ``pp()`` carry the clear PAN and are never
used.

Validation (:meth:`~ISO8583Adapter.validate`): an MTI other than 0100, 0200,
0400, 0420 or their 1993 forms 1100, 1200, 1400, 1420 → ``unsupported_mti``
(refused); a missing mandatory element → ``missing_deN`` (DE2 stands for the
PAN, which track 2 or track 1 data may carry instead); a malformed processing
code, amount, STAN or transmission time, an unknown currency, a PAN that is
not 12 to 19 digits or fails the Luhn check → an error each (invalid). A reversal
or advice without DE90 gets a warning.

Responses (:meth:`~ISO8583Adapter.respond`): the request MTI's function digit
plus one (0100 → 0110, 0200 → 0210, 0400 → 0410, 0420 → 0430; a repeat 0401
→ 0410), echoing DE2, DE3, DE4, DE7, DE11, DE12, DE13, DE24, DE32, DE37, DE41,
DE42, DE49 and DE90 from the message in memory (or, without one, what the
headers still name: DE3, DE7, DE11, DE32, DE37, DE41, DE42), and DE39 ``00``
accepted, ``30`` invalid (format error), ``96`` refused (unsupported, no route,
store unavailable). A spec whose DE39 is three characters long (1993 action
codes) gets ``000``, ``904`` and ``909``. HTTP status: 200, 400, 422, or 503
when the store was unavailable. When not even the MTI was readable the reply
body is empty: the listener answers nothing, logs a warning without values and
keeps the connection, as a jPOS server with ``ignoreISOExceptions`` does (the
length prefix keeps the stream in step).

Network management (0800 echo, sign-on, sign-off; 1804 in 1993 form) is
answered by :meth:`~ISO8583Adapter.network_reply` for the listener, without
intake.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import MappingProxyType
from typing import Any

import iso8583
import orjson
from iso4217 import Currency
from iso8583 import specs

from gateway.adapter import Batch, Issue, Outcome, ParseError, Reply
from gateway.config import ISO8583Config
from gateway.envelope import Envelope, Receipt, new_id, sha256_hex
from gateway.errors import ConfigError

__all__ = [
    "CONTENT_TYPE",
    "HEADER_KEYS",
    "SUPPORTED_MTIS",
    "ISO8583Adapter",
    "ISO8583Message",
    "load_spec",
    "luhn_ok",
    "mask_pan",
    "response_mti",
]

CONTENT_TYPE = "application/octet-stream"
REDACTED_FORMAT = "iso8583/redacted-v1"
SUPPORTED_MTIS = frozenset({"0100", "0200", "0400", "0420", "1100", "1200", "1400", "1420"})
VERSIONS = {"0": "1987", "1": "1993", "2": "2003"}
HEADER_KEYS = (
    "mti",
    "version",
    "message_type",
    "control_id",
    "processing_code",
    "amount",
    "currency",
    "stan",
    "rrn",
    "transmission_time",
    "acquirer_id",
    "terminal_id",
    "merchant_id",
    "pan_bin",
    "pan_last4",
)

SpecDict = Mapping[str, Mapping[str, Any]]

# Data elements never kept: track 2, track 3, expiry, track 1, PIN block, security control, chip data.
_ALWAYS_DROPPED = frozenset({"14", "35", "36", "45", "52", "53", "55"})
_ALWAYS_MASKED = frozenset({"2", "34"})
_SENSITIVE_DESC = re.compile(
    r"\btrack\b|\bpin\b|\bcvv|\bcvc|\bcav|\bicc\b|\bchip\b|card verification|expir|\bsecurity\b", re.I
)
_TRACK_LIKE = re.compile(r"[0-9]{12,19}[=Dd][0-9]{4}|[Bb][0-9]{12,19}\^")
"""Track 2 (PAN, ``=`` or ``D``/``d``, expiry) or track 1 (``B``/``b``, PAN, ``^``) data."""
_SEPARATOR = re.compile(r"[\s\-./_,]+")
"""What may join the groups of a card number written in groups: any run of white space (spaces of any
count, tabs), hyphens, dots, slashes, underscores and commas (``4111 1111``, ``4111 - 1111``,
``4111/1111``)."""
_DIGIT_GROUPS = re.compile(r"[0-9]+(?:[\s\-./_,]+[0-9]+)*")
"""Runs of digits joined by separators: where the elements searched may hold card numbers."""
_TRACK2_PAN = re.compile(r";?([0-9]{12,19})[=Dd]")
_TRACK1_PAN = re.compile(r"%?[Bb]([0-9]{12,19})\^")

# Fixed-length elements that ISO 8583:1987 defines as amounts, counts, conversion rates, dates and
# times, codes, bitmaps or MACs (n, x+n, b), and the card acceptor identification code (DE42: a merchant
# id of 15 digits passes the Luhn check one time in ten, and must reach the acquirer whole): never
# searched for card numbers, so that none of their digits is ever taken for one. Every other element
# kept is searched: the variable-length ones and the fixed-length identifiers and text (DE37-DE41, DE43
# name and location, DE90 original data elements, DE98 payee …).
_NOT_SEARCHED = frozenset(
    str(n) for n in (*range(3, 32), 42, *range(49, 54), *range(64, 90), *range(91, 98), 128)
)

_ALL_LENGTHS = frozenset(range(13, 20))
_LONG = frozenset(range(16, 20))
_DINERS = frozenset(range(14, 20))
_CARD_SCHEMES: tuple[tuple[str, str, frozenset[int]], ...] = (
    ("4", "4", frozenset({13, 16, 19})),  # Visa
    ("51", "55", frozenset({16})),  # Mastercard
    ("2221", "2720", frozenset({16})),  # Mastercard 2-series
    ("34", "34", frozenset({15})),  # American Express
    ("37", "37", frozenset({15})),
    ("6011", "6011", _LONG),  # Discover
    ("644", "649", _LONG),
    ("65", "65", _LONG),
    ("3528", "3589", _LONG),  # JCB
    ("300", "305", _DINERS),  # Diners Club International
    ("3095", "3095", _DINERS),
    ("36", "36", _DINERS),
    ("38", "39", _DINERS),
    ("62", "62", _LONG),  # UnionPay
    ("2200", "2204", _LONG),  # Mir
    ("5018", "5018", _ALL_LENGTHS),  # Maestro
    ("5020", "5020", _ALL_LENGTHS),
    ("5038", "5038", _ALL_LENGTHS),
    ("5893", "5893", _ALL_LENGTHS),
    ("6304", "6304", _ALL_LENGTHS),
    ("6759", "6759", _ALL_LENGTHS),
    ("6761", "6763", _ALL_LENGTHS),
)
"""Issuer identification number ranges of the card schemes (lowest and highest prefix, of the same
number of digits) and the lengths of their card numbers: what a card number found inside a longer run of
digits must match (see :func:`_embedded_card_numbers`)."""

_MANDATORY = ("3", "4", "7", "11", "41", "49")
_ECHOED = ("2", "3", "4", "7", "11", "12", "13", "24", "32", "37", "41", "42", "49", "90")
_ECHOED_FROM_HEADERS = (
    ("3", "processing_code"),
    ("7", "transmission_time"),
    ("11", "stan"),
    ("32", "acquirer_id"),
    ("37", "rrn"),
    ("41", "terminal_id"),
    ("42", "merchant_id"),
)
_NETWORK_ECHOED = ("7", "11", "12", "13", "24", "32", "33", "37", "41", "42", "70")
_NETWORK_CODES = {
    "0800": ("70", frozenset({"001", "002", "301"})),
    "1804": ("24", frozenset({"801", "802", "831"})),
}
_DE_NAMES = {
    "2": "the PAN",
    "3": "the processing code",
    "4": "the transaction amount",
    "7": "the transmission date and time",
    "11": "the STAN",
    "41": "the card acceptor terminal id",
    "49": "the transaction currency code",
}
_DE39_1987 = {"accepted": "00", "invalid": "30", "refused": "96"}
_DE39_1993 = {"accepted": "000", "invalid": "904", "refused": "909"}
_STATUS = {"accepted": 200, "invalid": 400, "refused": 422}
_STORE_UNAVAILABLE = "store_unavailable"

_CURRENCIES: dict[str, Currency] = {}
for _c in Currency:
    _CURRENCIES[_c.code] = _c
    _CURRENCIES[f"{_c.number:03d}"] = _c


@dataclass(frozen=True, slots=True)
class ISO8583Message:
    """The decoded data elements of one message, in memory only: its ``repr`` shows no values."""

    mti: str
    fields: Mapping[str, str]
    """pyiso8583's decoded dict: ``"t"`` the MTI, ``"p"``/``"1"`` bitmaps, ``"2"`` … ``"128"``."""

    def __repr__(self) -> str:
        numbers = sorted((k for k in self.fields if k.isdigit()), key=int)
        return f"ISO8583Message(mti={self.mti!r}, elements=[{', '.join(numbers)}])"

    def get(self, number: str) -> str:
        return self.fields.get(number, "")


# -- helpers ---------------------------------------------------------------------------------------


def luhn_ok(digits: str) -> bool:
    """True when ``digits`` (all decimal digits) passes the Luhn (mod 10) check."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def mask_pan(pan: str) -> str:
    """BIN + ``*`` … + last four for a PAN of 13+ characters; shorter ones keep only the last four."""
    n = len(pan)
    head = 6 if n >= 13 else 0
    tail = 4 if n >= 8 else 0
    return pan[:head] + "*" * (n - head - tail) + (pan[n - tail :] if tail else "")


def response_mti(mti: str) -> str | None:
    """The response MTI of a request or advice (function digit + 1, repeat bit cleared), else ``None``."""
    if len(mti) != 4 or not mti.isdigit() or int(mti[2]) % 2:
        return None
    return f"{mti[:2]}{int(mti[2]) + 1}{int(mti[3]) & ~1}"


def load_spec(spec: str) -> SpecDict:
    """pyiso8583's ``default_ascii`` or ``default`` spec, or a site spec read from a JSON file."""
    if spec == "default_ascii":
        return specs.default_ascii
    if spec == "default":
        return specs.default
    path = Path(spec)
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"iso8583.spec: cannot read {path} as JSON ({type(exc).__name__}); expected default_ascii, "
            "default, or the path of a pyiso8583 spec file"
        ) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"iso8583.spec: {path} must hold a JSON object of field specifications")
    for key in ("h", "t", "p"):
        if key not in loaded:
            raise ConfigError(f"iso8583.spec: {path} lacks the field {key!r} (h, t and p are required)")
    for key, field_spec in loaded.items():
        if not (key in ("h", "t", "p") or (key.isdigit() and 1 <= int(key) <= 192)):
            raise ConfigError(f"iso8583.spec: {path} has a field {key!r}; expected h, t, p or 1-192")
        ok = (
            isinstance(field_spec, dict)
            and isinstance(field_spec.get("data_enc"), str)
            and isinstance(field_spec.get("len_enc"), str)
            and isinstance(field_spec.get("len_type"), int)
            and isinstance(field_spec.get("max_len"), int)
            and field_spec["len_type"] >= 0
            and field_spec["max_len"] >= 0
        )
        if not ok:
            raise ConfigError(
                f"iso8583.spec: field {key!r} in {path} needs data_enc and len_enc (strings) and "
                "len_type and max_len (non-negative integers)"
            )
    return loaded


def _digits(value: str) -> bool:
    return value.isascii() and value.isdigit()


def _pans(fields: Mapping[str, str]) -> list[str]:
    """Every clear PAN the message carries: DE2, DE34, and the PAN inside track 2 and track 1 data."""
    found = []
    for key in ("2", "34"):
        if fields.get(key):
            found.append(fields[key])
    m = _TRACK2_PAN.match(fields.get("35", ""))
    if m:
        found.append(m.group(1))
    m = _TRACK1_PAN.match(fields.get("45", ""))
    if m:
        found.append(m.group(1))
    return [p for p in dict.fromkeys(found) if len(p) >= 8]


def _primary_pan(fields: Mapping[str, str]) -> str:
    """The cardholder's PAN: DE2, else the PAN of track 2, else of track 1; ``""`` without one."""
    if fields.get("2"):
        return fields["2"]
    for key, pattern in (("35", _TRACK2_PAN), ("45", _TRACK1_PAN)):
        m = pattern.match(fields.get(key, ""))
        if m:
            return m.group(1)
    return ""


def _currency(code: str) -> Currency | None:
    return _CURRENCIES.get(code.strip().upper()) if code else None


def _amount(de4: str, currency: Currency | None) -> str:
    if currency is None or not _digits(de4):
        return ""
    return str(Decimal(int(de4)).scaleb(-(currency.exponent or 0)))


def _valid_mmddhhmmss(value: str) -> bool:
    if len(value) != 10 or not _digits(value):
        return False
    month, day, hour, minute, second = (int(value[i : i + 2]) for i in range(0, 10, 2))
    return 1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and second <= 59


def _control_id(mti: str, stan: str, rrn: str, transmitted: str) -> str:
    parts = [mti, stan, rrn.strip() or transmitted]
    return "-".join(p for p in parts if p)


def _party(acquirer: str, terminal: str) -> str:
    if acquirer and terminal:
        return f"{acquirer}/{terminal}"
    return acquirer or terminal


def _headers(fields: Mapping[str, str]) -> dict[str, str]:
    """The flat header map (see the module docstring); never a clear PAN."""
    mti = fields.get("t", "")
    stan = fields.get("11", "")
    rrn = fields.get("37", "").strip()
    transmitted = fields.get("7", "")
    currency = _currency(fields.get("49", ""))
    pan = _primary_pan(fields)
    masked = mask_pan(pan) if pan else ""
    return {
        "mti": mti,
        "version": VERSIONS.get(mti[:1], "") if _digits(mti) else "",
        "message_type": mti,
        "control_id": _control_id(mti, stan, rrn, transmitted),
        "processing_code": fields.get("3", ""),
        "amount": _amount(fields.get("4", ""), currency),
        "currency": currency.code if currency is not None else "",
        "stan": stan,
        "rrn": rrn,
        "transmission_time": transmitted,
        "acquirer_id": fields.get("32", ""),
        "terminal_id": fields.get("41", "").strip(),
        "merchant_id": fields.get("42", "").strip(),
        "pan_bin": masked[:6] if masked[:6].isdigit() else "",
        "pan_last4": masked[-4:] if len(pan) >= 8 else "",
    }


# -- the adapter -----------------------------------------------------------------------------------


class ISO8583Adapter:
    """ISO 8583 adapter (see the module docstring) for one field specification."""

    name: str = "iso8583"
    rule_sets: Mapping[str, Callable[[Envelope], list[Issue]]] = MappingProxyType({})

    def __init__(self, config: ISO8583Config | None = None) -> None:
        self.config = config if config is not None else ISO8583Config()
        self.spec: SpecDict = load_spec(self.config.spec)
        spec = self.spec
        self._dropped = frozenset(
            k
            for k, f in spec.items()
            if k.isdigit()
            and (
                k in _ALWAYS_DROPPED
                or f.get("redact") == "drop"
                or _SENSITIVE_DESC.search(str(f.get("desc", ""))) is not None
            )
        )
        self._masked = (_ALWAYS_MASKED | {k for k, f in spec.items() if f.get("redact") == "mask"}) - (
            self._dropped
        )
        self._searched = frozenset(
            k
            for k, f in spec.items()
            if k.isdigit()
            and k not in self._dropped | self._masked | {"1"}
            and (int(f.get("len_type", 0)) > 0 or k not in _NOT_SEARCHED)
        )
        de39 = spec.get("39", {})
        self._de39 = _DE39_1993 if de39.get("max_len") == 3 else _DE39_1987
        t = spec["t"]
        self._mti_len = 2 if t.get("data_enc") == "b" else 4
        h = spec["h"]
        self._mti_at: int | None = (
            0 if int(h.get("max_len", 0)) <= 0 else (int(h["max_len"]) if int(h["len_type"]) == 0 else None)
        )

    def __repr__(self) -> str:
        return f"ISO8583Adapter(spec={self.config.spec!r})"

    # -- detect / split ---------------------------------------------------------------------------

    def detect(self, raw: bytes, content_type: str | None) -> bool:
        """True for an ISO 8583 content type, or an MTI followed by a bitmap in this spec's encoding."""
        try:
            if content_type and "iso8583" in content_type.lower().replace("-", "").replace("_", ""):
                return True
            mti = self._peek_mti(raw)
            if mti is None or mti[1] not in "12345678":
                return False
            at = (self._mti_at or 0) + self._mti_len
            if self.spec["p"].get("data_enc") == "b":
                return len(raw) >= at + 8
            bitmap = raw[at : at + 16]
            return len(bitmap) == 16 and all(c in b"0123456789ABCDEFabcdef" for c in bitmap)
        except Exception:
            return False

    def _peek_mti(self, raw: bytes) -> str | None:
        """The MTI without decoding the message, when the spec puts it at a fixed offset."""
        if self._mti_at is None:
            return None
        chunk = raw[self._mti_at : self._mti_at + self._mti_len]
        if len(chunk) != self._mti_len:
            return None
        if self._mti_len == 2:
            mti = chunk.hex()
        else:
            try:
                mti = chunk.decode(str(self.spec["t"].get("data_enc", "ascii")))
            except (UnicodeDecodeError, LookupError):
                return None
        return mti if _digits(mti) and mti[0] in VERSIONS else None

    def split(self, raw: bytes) -> Batch | None:
        return None

    # -- parse ------------------------------------------------------------------------------------

    def decode(self, raw: bytes) -> dict[str, str]:
        """The decoded data elements of ``raw``; raises :class:`ParseError` (values never shown)."""
        issue: Issue
        partial: dict[str, str] = {}
        try:
            fields, _ = iso8583.decode(bytes(raw), self.spec)
            return fields
        except iso8583.DecodeError as exc:
            issue = _decode_issue(exc.field, exc.msg)
            partial = {k: v for k, v in exc.doc_dec.items() if k != exc.field and k != "2"}
        except KeyError as exc:
            issue = Issue(
                "fatal",
                "undefined_field",
                f"DE{exc.args[0]}" if exc.args and str(exc.args[0]).isdigit() else "",
                "The bitmap names a data element that the configured field specification does not define.",
            )
        except Exception:
            issue = Issue(
                "fatal",
                "malformed_message",
                "",
                "The message could not be decoded with the configured field specification.",
            )
        # raised outside the except blocks: no reference to pyiso8583's error (it holds the PAN)
        raise ParseError([issue], _salvaged_headers(partial), stored=b"")

    def parse(self, raw: bytes, receipt: Receipt) -> Envelope:
        fields = self.decode(raw)
        headers = _headers(fields)
        pan = _primary_pan(fields)
        redacted = self.redacted_form(fields)
        return Envelope(
            id=new_id(),
            received_at=receipt.received_at,
            protocol=self.name,
            version=headers["version"],
            message_type=headers["message_type"],
            control_id=headers["control_id"],
            sender=_party(headers["acquirer_id"], headers["terminal_id"]),
            receiver=fields.get("100", ""),
            raw=redacted,
            raw_sha256=sha256_hex(redacted),
            body=ISO8583Message(headers["mti"], fields),
            headers=headers,
            business_keys={"card": pan} if pan else {},
            masked_keys={"card": mask_pan(pan)} if pan else {},
            sensitivity="pan",
            correlation_id=_original_control_id(fields),
            receipt=receipt,
        )

    def redacted_form(self, fields: Mapping[str, str]) -> bytes:
        """Canonical JSON of the data elements as the store may keep them (module docstring, PCI DSS).

        ``{"format": "iso8583/redacted-v1", "fields": {...}, "removed": ["35", "52", ...]}`` with
        sorted keys and no spaces; ``removed`` lists the elements present but not kept.
        """
        pans = _pans(fields)
        kept: dict[str, str] = {}
        removed: list[str] = []
        for key, value in fields.items():
            if key in self._dropped:
                removed.append(key)
                continue
            if key in self._masked:
                kept[key] = mask_pan(value)
                continue
            if key in ("t", "p", "1") or not value:
                kept[key] = value
                continue
            searched = key in self._searched
            if searched and _TRACK_LIKE.search(value):  # before the PAN in it is masked
                removed.append(key)
                continue
            for pan in pans:
                if pan in value:
                    value = value.replace(pan, mask_pan(pan))
            if searched:
                value = _mask_card_numbers(value, _subfield_starts(key, value))
            kept[key] = value
        doc = {
            "format": REDACTED_FORMAT,
            "fields": kept,
            "removed": sorted(removed, key=lambda k: (len(k), k)),
        }
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    # -- validate ---------------------------------------------------------------------------------

    def validate(self, envelope: Envelope) -> list[Issue]:
        message = envelope.body
        if not isinstance(message, ISO8583Message):
            return [
                Issue("fatal", "internal_error", "", "The envelope does not hold a decoded ISO 8583 message.")
            ]
        mti = message.mti
        if mti not in SUPPORTED_MTIS:
            return [
                Issue(
                    "error",
                    "unsupported_mti",
                    "MTI",
                    "The gateway takes the requests 0100, 0200, 0400 and 0420 (1100, 1200, 1400 and 1420 "
                    "in the 1993 form); this message type is not one of them.",
                )
            ]
        issues: list[Issue] = []
        f = message.fields
        pan = _primary_pan(f)
        if not pan:
            issues.append(
                Issue(
                    "error",
                    "missing_de2",
                    "DE2",
                    "The PAN is missing: neither DE2 nor track 2 (DE35) or track 1 (DE45) data carries it.",
                )
            )
        elif not (_digits(pan) and 12 <= len(pan) <= 19):
            issues.append(Issue("error", "invalid_pan", "DE2", "The PAN must be 12 to 19 decimal digits."))
        elif not luhn_ok(pan):
            issues.append(
                Issue("error", "invalid_pan_luhn", "DE2", "The PAN fails the Luhn (mod 10) check digit test.")
            )
        for number in _MANDATORY:
            if not f.get(number, "").strip():
                issues.append(
                    Issue(
                        "error",
                        f"missing_de{number}",
                        f"DE{number}",
                        f"DE{number} ({_DE_NAMES[number]}) is mandatory for this message type and missing.",
                    )
                )
        de3, de4, de7, de11, de49 = (f.get(k, "") for k in ("3", "4", "7", "11", "49"))
        if de3 and not (len(de3) == 6 and _digits(de3)):
            issues.append(
                Issue("error", "invalid_processing_code", "DE3", "DE3 (processing code) must be six digits.")
            )
        if de4 and not (len(de4) == 12 and _digits(de4)):
            issues.append(
                Issue(
                    "error",
                    "invalid_amount",
                    "DE4",
                    "DE4 (transaction amount) must be twelve digits in the currency's minor unit.",
                )
            )
        if de7 and not _valid_mmddhhmmss(de7):
            issues.append(
                Issue(
                    "error",
                    "invalid_transmission_time",
                    "DE7",
                    "DE7 (transmission date and time) must be a valid MMDDhhmmss.",
                )
            )
        if de11 and not (len(de11) == 6 and _digits(de11)):
            issues.append(Issue("error", "invalid_stan", "DE11", "DE11 (STAN) must be six digits."))
        if de49 and _currency(de49) is None:
            issues.append(
                Issue(
                    "error",
                    "unknown_currency",
                    "DE49",
                    "DE49 is not an active ISO 4217 currency code (numeric or alphabetic).",
                )
            )
        if mti[1] == "4" and not f.get("90"):
            issues.append(
                Issue(
                    "warning",
                    "missing_de90",
                    "DE90",
                    "A reversal should carry DE90 (original data elements) naming the message it reverses.",
                )
            )
        return issues

    # -- respond / serialize ----------------------------------------------------------------------

    def respond(self, outcome: Outcome) -> Reply:
        code = self._de39[outcome.kind]
        status = _STATUS[outcome.kind]
        if outcome.kind == "refused" and any(i.code == _STORE_UNAVAILABLE for i in outcome.issues):
            status = 503
        env = outcome.envelope
        message = env.body if env is not None and isinstance(env.body, ISO8583Message) else None
        h = outcome.headers
        mti = message.mti if message is not None else h.get("mti", "")
        answer_mti = response_mti(mti)
        if answer_mti is None:
            return Reply(b"", CONTENT_TYPE, status, code)
        out: dict[str, str] = {"t": answer_mti}
        if message is not None:
            out.update({k: message.fields[k] for k in _ECHOED if message.fields.get(k)})
        else:
            out.update({k: self._fit(k, h[name]) for k, name in _ECHOED_FROM_HEADERS if h.get(name)})
        out["39"] = code
        return Reply(self._encode(out), CONTENT_TYPE, status, code)

    def unavailable_reply(self, raw: bytes) -> bytes:
        """The response to a request relayed upstream that got no answer in time: DE39 ``91`` (issuer or
        switch inoperative; ``911``, card issuer timed out, in the 1993 form), echoing the request."""
        try:
            fields = self.decode(raw)
        except ParseError:
            return b""
        answer_mti = response_mti(fields.get("t", ""))
        if answer_mti is None:
            return b""
        out = {"t": answer_mti, **{k: fields[k] for k in _ECHOED if fields.get(k)}}
        out["39"] = "911" if self._de39 is _DE39_1993 else "91"
        return self._encode(out)

    def _fit(self, number: str, value: str) -> str:
        """A header value padded back to its fixed length (headers strip DE41 and DE42)."""
        f = self.spec.get(number, {})
        if f.get("len_type") == 0 and f.get("data_enc") != "b":
            return value.ljust(int(f.get("max_len", 0)))
        return value

    def _encode(self, out: dict[str, str]) -> bytes:
        """Encode a response; when an echoed element does not fit the spec, fall back to the bare minimum."""
        minimal = {k: v for k, v in out.items() if k in ("t", "11", "39", "41")}
        for attempt in (out, minimal):
            data = _try_encode(attempt, self.spec)
            if data:
                return data
        return b""

    def serialize(self, envelope: Envelope) -> bytes:
        """The redacted form (``envelope.raw``): clear card data is never forwarded from the store."""
        return envelope.raw

    # -- network management -----------------------------------------------------------------------

    def network_reply(self, raw: bytes) -> bytes | None:
        """The 0810 (1814) answer to an 0800 echo, sign-on or sign-off (1804 831, 801, 802), else ``None``.

        ``None`` also for a network message that cannot be decoded: intake then answers it.
        """
        mti = self._peek_mti(raw) if self._mti_at is not None else None
        if self._mti_at is not None and mti not in _NETWORK_CODES:
            return None
        try:
            fields, _ = iso8583.decode(bytes(raw), self.spec)
        except Exception:
            return None
        mti = fields.get("t", "")
        rule = _NETWORK_CODES.get(mti)
        if rule is None or fields.get(rule[0], "") not in rule[1]:
            return None
        answer_mti = response_mti(mti)
        assert answer_mti is not None
        out = {"t": answer_mti, **{k: fields[k] for k in _NETWORK_ECHOED if fields.get(k)}}
        out["39"] = "800" if self._de39 is _DE39_1993 else "00"
        return self._encode(out) or None


def _try_encode(fields: Mapping[str, str], spec: SpecDict) -> bytes:
    """The encoded message, or ``b""`` when an element does not fit (the error text may carry the PAN)."""
    try:
        data, _ = iso8583.encode(dict(fields), spec)
    except Exception:
        return b""
    return bytes(data)


def _mask_card_numbers(text: str, starts: tuple[int, ...] | None = None) -> str:
    """``text`` with every card number in it masked as :func:`mask_pan` does, separators kept in place.

    A card number is 13 to 19 digits that pass the Luhn check and do not begin with 0 (no issuer
    number does), written either as one unbroken run of digits or as a group of four followed by two
    to four groups of three to six digits, each joined to the next by a separator: any run of white
    space, hyphens, dots, slashes, underscores and commas (4-4-4-4, 4-6-5, 4-6-4, 4-4-5, 4-3-3-3,
    4-4-4-4-3 …; ``4111 1111``, ``4111 - 1111``, ``4111/1111``). Where groups run on (two numbers one
    after the other, a reference before one), every group is tried as the start of the longest such
    number. A longer unbroken run of digits (a reference, a date or tag-length-value data written
    against a card number) hides one when it begins or ends with one that also matches a card
    scheme's issuer range and length (:func:`_embedded_card_numbers`); in a structured element whose
    subfields are known, ``starts`` are the offsets in ``text`` where one may begin instead
    (:func:`_subfield_starts`). A digit stays clear only when no number found hides it: numbers that
    overlap never show more than BIN + last four of either. Every masked digit becomes ``*`` and
    nothing else changes, so the text keeps its length.
    """
    return _DIGIT_GROUPS.sub(lambda m: _mask_groups(m, starts), text)


def _mask_groups(m: re.Match[str], starts_in_text: tuple[int, ...] | None) -> str:
    run = m.group(0)
    groups = _SEPARATOR.split(run)
    at = [g.start() + m.start() for g in re.finditer(r"[0-9]+", run)]  # where each group is in the text
    starts = [0]
    for g in groups:
        starts.append(starts[-1] + len(g))
    hidden: set[int] = set()

    def hide(at: int, digits: str) -> None:
        hidden.update(at + k for k, ch in enumerate(mask_pan(digits)) if ch == "*")

    for i, group in enumerate(groups):
        end = _card_number_end(groups, i)
        if end is not None:
            hide(starts[i], "".join(groups[i : end + 1]))
        elif len(group) > 13:
            inner = None if starts_in_text is None else tuple(s - at[i] for s in starts_in_text)
            for a, b in _embedded_card_numbers(group, inner):
                hide(starts[i] + a, group[a:b])
    if not hidden:
        return run
    out = []
    digit = 0
    for ch in run:
        if not "0" <= ch <= "9":  # a separator: kept in place
            out.append(ch)
        else:
            out.append("*" if digit in hidden else ch)
            digit += 1
    return "".join(out)


def _card_number_end(groups: list[str], i: int) -> int | None:
    """The index of the last group of the card number that starts at group ``i``, or ``None``."""
    if groups[i].startswith("0"):
        return None
    if 13 <= len(groups[i]) <= 19:
        return i if luhn_ok(groups[i]) else None
    if len(groups[i]) != 4:
        return None
    for end in range(min(i + 4, len(groups) - 1), i + 1, -1):
        digits = "".join(groups[i : end + 1])
        if (
            13 <= len(digits) <= 19
            and all(3 <= len(g) <= 6 for g in groups[i + 1 : end + 1])
            and luhn_ok(digits)
        ):
            return end
    return None


def _embedded_card_numbers(run: str, starts: tuple[int, ...] | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` of each card number that a longer run of digits begins or ends with (or, given
    ``starts``, that begins at one of those offsets).

    Such a number passes the Luhn check and falls in a card scheme's issuer range with a length the
    scheme issues (:data:`_CARD_SCHEMES`: Visa 13, 16 or 19 digits from 4, Mastercard 16 from 51-55 and
    2221-2720, American Express 15 from 34 and 37 …). Only the two ends of the run are tried: a window
    slid over the whole of a long reference finds a Luhn-valid number in a scheme's range at about one
    position in fifteen, so most references of twenty digits or more would lose digits; at its two ends
    about one reference in seven does, as often as the Luhn check alone finds a "card number" in a run
    of 13 to 19 digits.
    """
    found = []
    n = len(run)
    for length in range(13, min(n, 20)):
        for start in dict.fromkeys((0, n - length) if starts is None else starts):
            window = run[start : start + length] if 0 <= start <= n - length else ""
            if window and length in _scheme_lengths(window) and luhn_ok(window):
                found.append((start, start + length))
    return found


def _subfield_starts(key: str, value: str) -> tuple[int, ...] | None:
    """Where a card number may begin inside an element of known subfields; ``None`` for any other.

    DE90 as 42 digits (original MTI, STAN, transmission date and time, acquiring and forwarding
    institution ids): only the two ids, 22 digits from offset 20, are long enough together to be
    taken for a card number, so that is where one is looked for. Its ends would do badly: the
    zero-padded ids of a genuine DE90 end in a Luhn-valid number of a scheme's range about one time in
    twenty, while a number written from offset 20 has padding zeros (no issuer number begins with 0)
    only where it is genuine. A DE90 in any other form (text) is searched like free text.
    """
    return (20,) if key == "90" and len(value) == 42 and _digits(value) else None


def _scheme_lengths(digits: str) -> frozenset[int]:
    """The lengths that the card schemes whose issuer ranges ``digits`` begins in give their numbers."""
    lengths: frozenset[int] = frozenset()
    for low, high, allowed in _CARD_SCHEMES:
        if low <= digits[: len(low)] <= high:
            lengths |= allowed
    return lengths


def _decode_issue(field: str, msg: str) -> Issue:
    """A fixed sentence for a pyiso8583 decode fault: its text is not used (it may carry the PAN)."""
    if field == "t":
        return Issue("fatal", "malformed_mti", "MTI", "The message type indicator could not be read.")
    if field in ("p", "1"):
        return Issue(
            "fatal",
            "malformed_bitmap",
            "bitmap",
            "The bitmap could not be read with the configured field specification.",
        )
    if field == "h":
        return Issue("fatal", "malformed_header", "header", "The message header could not be read.")
    if msg.startswith("Extra data after last field"):
        return Issue(
            "fatal",
            "trailing_data",
            "",
            "The message has bytes after the last data element its bitmap names.",
        )
    location = f"DE{field}" if field.isdigit() else ""
    return Issue(
        "fatal",
        "malformed_field",
        location,
        f"{location or 'A data element'} could not be decoded: its length or encoding does not match "
        "the configured field specification.",
    )


def _salvaged_headers(partial: Mapping[str, str]) -> dict[str, str]:
    """Header fields decoded before a fault, for the response's addressing (never the PAN)."""
    safe = {k: v for k, v in partial.items() if k in ("t", "3", "7", "11", "32", "37", "41", "42")}
    mti = safe.get("t", "")
    if not (_digits(mti) and len(mti) == 4):
        return {}
    headers = _headers(safe)
    return {k: v for k, v in headers.items() if v}


def _original_control_id(fields: Mapping[str, str]) -> str:
    """For a reversal or advice with DE90 (original MTI, STAN, transmission time …), the original's control id."""
    de90 = fields.get("90", "")
    if len(de90) < 20 or not _digits(de90[:20]) or fields.get("t", "")[1:2] not in ("4",):
        return ""
    return _control_id(de90[:4], de90[4:10], fields.get("37", "").strip(), de90[10:20])
