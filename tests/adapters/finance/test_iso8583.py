"""The ISO 8583 adapter and listener: envelope, validation, responses, PCI redaction, framing and limits.

Fixtures are JSON field maps (``fixtures/finance/iso8583``) encoded here with
pyiso8583. The listener tests run the real :class:`ISO8583Server` with the real
intake and SQLite store on a loopback port.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import iso8583
import pytest
import trustme
from iso8583.specs import default, default_ascii

from adapters.finance.iso8583 import (
    HEADER_KEYS,
    ISO8583Adapter,
    ISO8583Message,
    load_spec,
    luhn_ok,
    mask_pan,
    response_mti,
)
from adapters.finance.iso8583_listener import MAX_IN_FLIGHT, ISO8583Server, frame
from gateway.adapter import Issue, Outcome, OutcomeKind, ParseError
from gateway.config import ISO8583Config
from gateway.envelope import Envelope, Receipt, sha256_hex
from gateway.errors import ConfigError
from gateway.pipeline import Intake, classify
from gateway.store import MessageFilter
from gateway.store.sqlite import SQLiteStore
from tests.conftest import FIXTURES

DIR = FIXTURES / "finance" / "iso8583"
ALL = sorted(p.name for p in DIR.glob("*.json"))
VALID = [n for n in ALL if not n.startswith("invalid__")]
REQUESTS = [n for n in VALID if not n.startswith("0800")]
INVALID = [n for n in ALL if n.startswith("invalid__")]

# What must never be kept: clear PANs, track data, PIN block, chip data (and the PANs inside them).
SECRETS = [
    "4111111111111111",
    "5500005555555559",
    "4012888888881881",
    "4761739001010010",
    "378282246310005",
    "6011111111111117",
    "5500005555555559=2512",
    "A1B2C3D4E5F60718",
    "9F2608C3D2A1B0E9F8A796",
    "CARDHOLDER/TEST",
]


def fields_of(name: str) -> dict[str, str]:
    data: dict[str, str] = json.loads((DIR / name).read_text())
    return data


def encode(fields: dict[str, str], spec: Any = default_ascii) -> bytes:
    raw, _ = iso8583.encode(dict(fields), spec)
    return bytes(raw)


def load(name: str) -> bytes:
    return encode(fields_of(name))


def decode(body: bytes, spec: Any = default_ascii) -> dict[str, str]:
    fields, _ = iso8583.decode(body, spec)
    return fields


def leaks(text: str | bytes) -> list[str]:
    s = text.decode("latin-1") if isinstance(text, bytes) else text
    return [secret for secret in SECRETS if secret in s]


@pytest.fixture(scope="module")
def adapter() -> ISO8583Adapter:
    return ISO8583Adapter(ISO8583Config())


def parse(adapter: ISO8583Adapter, raw: bytes) -> Envelope:
    return adapter.parse(raw, Receipt("iso8583", "127.0.0.1:9"))


def answer(adapter: ISO8583Adapter, env: Envelope, issues: list[Issue] | None = None) -> dict[str, str]:
    issues = adapter.validate(env) if issues is None else issues
    reply = adapter.respond(Outcome(classify(issues), env.headers, issues, env.id, env))
    return decode(reply.body)


# -- envelope ------------------------------------------------------------------------------------


def test_envelope_of_an_authorization(adapter: ISO8583Adapter) -> None:
    env = parse(adapter, load("0100__basic.json"))
    assert (env.protocol, env.version, env.message_type) == ("iso8583", "1987", "0100")
    assert env.control_id == "0100-100001-507414100001"
    assert env.sender == "456789/TERM0001"
    assert env.sensitivity == "pan"
    assert env.business_keys == {"card": "4111111111111111"}
    assert env.masked_keys == {"card": "411111******1111"}
    assert set(env.headers) == set(HEADER_KEYS)
    assert {k: env.headers[k] for k in ("mti", "processing_code", "amount", "currency", "stan", "rrn")} == {
        "mti": "0100",
        "processing_code": "000000",
        "amount": "125.00",
        "currency": "USD",
        "stan": "100001",
        "rrn": "507414100001",
    }
    h = env.headers
    assert (h["terminal_id"], h["merchant_id"], h["pan_bin"], h["pan_last4"]) == (
        "TERM0001",
        "MERCH0000000001",
        "411111",
        "1111",
    )
    assert adapter.validate(env) == []


@pytest.mark.parametrize(
    ("name", "amount", "currency"),
    [
        ("0200__purchase.json", "49.99", "USD"),
        ("0200__zero_decimal_currency.json", "15000", "JPY"),
        ("0200__three_decimal_currency.json", "12.345", "BHD"),
    ],
)
def test_amount_is_a_decimal_scaled_by_the_currency_exponent(
    adapter: ISO8583Adapter, name: str, amount: str, currency: str
) -> None:
    env = parse(adapter, load(name))
    assert (env.headers["amount"], env.headers["currency"]) == (amount, currency)


def test_control_id_falls_back_to_transmission_time_without_rrn(adapter: ISO8583Adapter) -> None:
    env = parse(adapter, load("0200__no_rrn.json"))
    assert env.control_id == "0200-200005-0315143000"


def test_pan_from_track_data_when_de2_is_absent(adapter: ISO8583Adapter) -> None:
    env = parse(adapter, load("0100__track2_only.json"))
    assert env.business_keys == {"card": "4012888888881881"}
    assert env.headers["pan_bin"] == "401288" and env.headers["pan_last4"] == "1881"
    assert adapter.validate(env) == []
    env = parse(adapter, load("0100__track1.json"))
    assert env.masked_keys == {"card": "378282*****0005"}


def test_reversal_names_its_original(adapter: ISO8583Adapter) -> None:
    original = parse(adapter, load("0100__basic.json"))
    reversal = parse(adapter, load("0400__reversal.json"))
    assert reversal.correlation_id == original.control_id
    assert reversal.control_id != original.control_id  # a reversal is not a changed resend of its original
    assert adapter.validate(reversal) == []


@pytest.mark.parametrize("name", VALID)
def test_every_valid_fixture_parses_and_validates(adapter: ISO8583Adapter, name: str) -> None:
    raw = load(name)
    assert adapter.detect(raw, None)
    env = parse(adapter, raw)
    issues = adapter.validate(env)
    if name.startswith("0800"):
        assert [i.code for i in issues] == [
            "unsupported_mti"
        ]  # intake never sees these: the listener answers
    else:
        assert not [i for i in issues if i.is_error], issues


def test_detect_rejects_other_protocols(adapter: ISO8583Adapter) -> None:
    assert not adapter.detect(b"MSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\r", None)
    assert not adapter.detect(b"<?xml version='1.0'?><Document/>", None)
    assert not adapter.detect(b"", None)
    assert adapter.detect(b"", "application/iso8583")


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", INVALID)
def test_every_invalid_fixture_yields_its_code(adapter: ISO8583Adapter, name: str) -> None:
    code = name.removeprefix("invalid__").removesuffix(".json")
    env = parse(adapter, load(name))
    issues = adapter.validate(env)
    assert code in {i.code for i in issues if i.is_error}, issues
    located = next(i for i in issues if i.code == code)
    assert located.location.startswith(("DE", "MTI"))
    expected = "96" if code.startswith("unsupported_") else "30"
    response = answer(adapter, env, issues)
    assert response["39"] == expected
    assert response.get("11") == fields_of(name).get("11")
    for issue in issues:
        assert not leaks(issue.diagnostics)


def test_response_codes_and_status(adapter: ISO8583Adapter) -> None:
    env = parse(adapter, load("0100__basic.json"))
    cases: list[tuple[OutcomeKind, list[Issue], str, int]] = [
        ("accepted", [], "00", 200),
        ("invalid", [Issue("error", "invalid_amount", "DE4", "x")], "30", 400),
        ("refused", [Issue("error", "route_unmatched", "", "x")], "96", 422),
        ("refused", [Issue("fatal", "store_unavailable", "", "x")], "96", 503),
    ]
    for kind, issues, code, status in cases:
        reply = adapter.respond(Outcome(kind, env.headers, issues, env.id, env))
        assert (reply.code, reply.status, reply.content_type) == (code, status, "application/octet-stream")
        assert decode(reply.body)["39"] == code


@pytest.mark.parametrize(
    ("name", "mti"),
    [
        ("0100__basic.json", "0110"),
        ("0200__purchase.json", "0210"),
        ("0400__reversal.json", "0410"),
        ("0420__reversal_advice.json", "0430"),
        ("1100__authorization_1993.json", "1110"),
        ("1200__financial_1993.json", "1210"),
    ],
)
def test_response_mti_and_echoed_elements(adapter: ISO8583Adapter, name: str, mti: str) -> None:
    request = fields_of(name)
    response = answer(adapter, parse(adapter, load(name)))
    assert response["t"] == mti and response["39"] == "00"
    for de in ("2", "3", "4", "7", "11", "12", "13", "32", "37", "41", "42", "49", "90"):
        assert response.get(de) == request.get(de), de
    for de in ("14", "35", "43", "45", "52", "55"):
        assert de not in response


def test_response_mti_rules() -> None:
    assert [response_mti(m) for m in ("0100", "0200", "0401", "0420", "0800", "1804")] == [
        "0110",
        "0210",
        "0410",
        "0430",
        "0810",
        "1814",
    ]
    assert response_mti("0110") is None and response_mti("01X0") is None and response_mti("") is None


def test_luhn_and_masking() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("5500005555555559") and luhn_ok("378282246310005")
    assert not luhn_ok("4111111111111112")
    assert mask_pan("4111111111111111") == "411111******1111"
    assert mask_pan("4111111111111111111") == "411111*********1111"
    assert mask_pan("411111111111") == "********1111"  # a short PAN shows no BIN


# -- PCI DSS -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_raw_is_redacted_and_headers_carry_no_card_data(adapter: ISO8583Adapter, name: str) -> None:
    env = parse(adapter, load(name))
    assert not leaks(env.raw), name
    assert env.raw_sha256 == sha256_hex(env.raw)
    assert not leaks(json.dumps(dict(env.headers)))
    assert not leaks(json.dumps(dict(env.masked_keys)))
    assert not leaks(repr(env.body))
    assert not leaks(env.control_id + env.sender + env.receiver + env.correlation_id)
    assert adapter.serialize(env) == env.raw


def test_redacted_form_masks_the_pan_and_removes_sensitive_elements(adapter: ISO8583Adapter) -> None:
    env = parse(adapter, load("0100__track2_pin.json"))
    doc = json.loads(env.raw)
    assert doc["format"] == "iso8583/redacted-v1"
    assert doc["fields"]["2"] == "550000******5559"
    assert doc["removed"] == ["14", "35", "52"]
    assert {"14", "35", "52"}.isdisjoint(doc["fields"])
    assert doc["fields"]["11"] == "100002" and doc["fields"]["4"] == "000000012500"
    chip = json.loads(parse(adapter, load("0100__chip.json")).raw)
    assert chip["removed"] == ["55"]
    track1 = json.loads(parse(adapter, load("0100__track1.json")).raw)
    assert track1["removed"] == ["45"]


def test_card_numbers_inside_free_form_elements_are_masked(adapter: ISO8583Adapter) -> None:
    env = parse(adapter, load("0200__private_data.json"))
    de48 = json.loads(env.raw)["fields"]["48"]
    assert de48 == "REF601111******1117 ALT 401288******1881 ORDER 12345"
    # the clear value stays in memory for the response
    assert (
        isinstance(env.body, ISO8583Message)
        and env.body.get("48") == fields_of("0200__private_data.json")["48"]
    )


@pytest.mark.parametrize(
    ("clear", "kept"),
    [
        ("4111-1111-1111-1111 5500 0000 0000 0004", "4111-11**-****-1111 5500 00** **** 0004"),
        ("AMEX 3782 822463 10005.", "AMEX 3782 82**** *0005."),  # 4-6-5
        ("CUP 6222-0200-0000-0000-000", "CUP 6222-02**-****-***0-000"),  # 4-4-4-4-3, all 19 digits
        ("REF 2025 4761 7390 0101 0010 END", "REF 2025 4761 73** **** 0010 END"),  # a group before it
        # 2024 4761 7390 0101 passes the Luhn check too: both numbers are masked
        ("REF 2024 4761 7390 0101 0010 END", "REF 2024 47** **** **** 0010 END"),
        ("4111 1111-1111 1111", "4111 11**-**** 1111"),
        ("4111  1111  1111  1111", "4111  11**  ****  1111"),  # double spaces, as some terminals pad
        ("PAN 4111.1111.1111.1111.", "PAN 4111.11**.****.1111."),  # dots
        # any run of white space, hyphens, dots, slashes, underscores and commas joins groups
        ("4111   1111 1111 1111", "4111   11** **** 1111"),
        ("5555   5555   5555   4444", "5555   55**   ****   4444"),
        ("5555\t5555\t5555\t4444", "5555\t55**\t****\t4444"),
        ("5555/5555/5555/4444", "5555/55**/****/4444"),
        ("5555_5555_5555_4444", "5555_55**_****_4444"),
        ("5555,5555,5555,4444", "5555,55**,****,4444"),
        ("5555 - 5555 - 5555 - 4444", "5555 - 55** - **** - 4444"),
        ("AMEX 3782 / 822463 / 10005", "AMEX 3782 / 82**** / *0005"),
        # not card numbers: no Luhn, no card grouping, a date, an amount, zero fill (Luhn-valid, but
        # no issuer number begins with 0)
        ("1234 5678 9012 3456", "1234 5678 9012 3456"),
        ("41 1111 1111 1111 11", "41 1111 1111 1111 11"),
        ("2024-01-15 10:30", "2024-01-15 10:30"),
        ("2024/01/15 TOTAL 1,234.56", "2024/01/15 TOTAL 1,234.56"),
        ("2024.01.15 TOTAL 1234.56", "2024.01.15 TOTAL 1234.56"),
        ("FILL 0000000000000000 0000 0000 0000 0000", "FILL 0000000000000000 0000 0000 0000 0000"),
    ],
)
def test_card_numbers_written_in_groups_are_masked_in_place(
    adapter: ISO8583Adapter, clear: str, kept: str
) -> None:
    fields = fields_of("0200__private_data.json") | {"48": clear}
    env = parse(adapter, encode(fields))
    de48 = json.loads(env.raw)["fields"]["48"]
    assert de48 == kept and len(de48) == len(clear)
    assert isinstance(env.body, ISO8583Message) and env.body.get("48") == clear


def test_track_like_data_in_a_free_form_element_removes_it(adapter: ISO8583Adapter) -> None:
    fields = fields_of("0200__purchase.json") | {"62": "T2 5500005555555559=25121011000012345678"}
    doc = json.loads(parse(adapter, encode(fields)).raw)
    assert "62" in doc["removed"] and "62" not in doc["fields"]


def redacted(adapter: ISO8583Adapter, fields: dict[str, str]) -> dict[str, Any]:
    """The stored form of ``fields``; its elements must still encode with the spec and keep their lengths."""
    doc: dict[str, Any] = json.loads(parse(adapter, encode(fields)).raw)
    kept = {k: v for k, v in doc["fields"].items() if k not in ("p", "1")}  # the bitmaps as received
    assert kept.keys() == fields.keys() - set(doc["removed"])
    again = decode(encode(kept))
    assert {k: v for k, v in again.items() if k not in ("p", "1")} == kept
    for key, value in kept.items():
        assert len(value) == len(fields[key]), key
    return doc


@pytest.mark.parametrize(
    ("element", "clear", "kept"),
    [
        (
            "43",
            "PAID 5555555555554444 SPRINGFIELD US".ljust(40),
            "PAID 555555******4444 SPRINGFIELD US".ljust(40),
        ),
        # DE2's own number, in groups
        (
            "43",
            "CARD 4111 1111 1111 1111 ACME STORE  US ",
            "CARD 4111 11** **** 1111 ACME STORE  US ",
        ),
        (
            "43",
            "AMEX 3782-822463-10005 SPRINGFIELD US".ljust(40),
            "AMEX 3782-82****-*0005 SPRINGFIELD US".ljust(40),
        ),
        ("90", "ORIG 5555555555554444".ljust(42), "ORIG 555555******4444".ljust(42)),
        ("98", "PAYEE 5555-5555-5555-4444", "PAYEE 5555-55**-****-4444"),
    ],
)
def test_card_numbers_in_fixed_length_elements_are_masked_in_place(
    adapter: ISO8583Adapter, element: str, clear: str, kept: str
) -> None:
    doc = redacted(adapter, fields_of("0100__basic.json") | {element: clear})
    assert doc["fields"][element] == kept and doc["removed"] == []


@pytest.mark.parametrize(
    ("clear", "kept"),
    [
        # a reference or date written against the number (tag-length-value data)
        ("REF20260101" + "5555555555554444", "REF20260101" + "555555******4444"),
        ("5555555555554444" + "0315143000 END", "555555******4444" + "0315143000 END"),
        ("REF 12" + "378282246310005", "REF 12" + "378282*****0005"),
        (
            "20260101" + "4111111111111111" + " " + "4111111111111111" + "0042",
            "20260101411111******1111 411111******11110042",
        ),
    ],
)
def test_a_card_number_at_either_end_of_a_longer_run_of_digits_is_masked(
    adapter: ISO8583Adapter, clear: str, kept: str
) -> None:
    fields = fields_of("0100__basic.json") | {"2": "6011111111111117", "48": clear}
    assert redacted(adapter, fields)["fields"]["48"] == kept


def test_a_card_number_in_de90_is_masked_where_the_institution_ids_belong(adapter: ISO8583Adapter) -> None:
    reversal = fields_of("0400__reversal.json")
    embedded = "01001000010315143000" + "5555555555554444" + "000000"
    assert redacted(adapter, reversal | {"90": embedded})["fields"]["90"] == (
        "01001000010315143000" + "555555******4444" + "000000"
    )
    # genuine original data elements are kept whole, even where their last sixteen digits (the
    # zero-filled acquiring and forwarding institution ids 36494 and 205552) pass for a Diners number
    for genuine in (reversal["90"], "0200201198" + "0315143000" + "00000036494" + "00000205552"):
        assert redacted(adapter, reversal | {"90": genuine})["fields"]["90"] == genuine


def test_amounts_dates_codes_and_references_are_not_taken_for_card_numbers(adapter: ISO8583Adapter) -> None:
    """Fixed-length elements of amounts, dates, codes and MACs, and the merchant id, are never searched while those of text
    are (DE43 here), and in the elements searched a run of digits is masked inside only at its ends,
    where it holds a number of a card scheme."""
    numeric = {  # Luhn-valid numbers of a scheme's range (not DE2's, which is masked wherever it is)
        "86": "5555555555554444",  # credits, amount
        "95": "5555555555554444" + "0" * 26,  # replacement amounts
        "64": "4012888888881881",  # MAC
        "97": "C5555555555554444",  # net settlement amount
        "42": "378282246310005",  # a merchant id that passes the Luhn check (in an Amex range, even)
    }
    free = (
        "REF 30234483478245040008"  # not Luhn-valid; Diners-like 16 digits inside, at neither end
        " TS 20260316050051429355"  # date and time and a sequence number (a Visa-like run inside)
        " TOTAL 000000012500 DATE 20260315"
        " CARD 5555 - 5555 - 5555 - 4444"
    )
    text = "PAID 5555555555554444 SPRINGFIELD US".ljust(40)
    fields = fields_of("0100__basic.json") | numeric | {"43": text, "48": free}
    doc = redacted(adapter, fields)
    assert {k: doc["fields"][k] for k in numeric} == numeric
    for k in ("3", "4", "7", "11", "12", "13", "49"):
        assert doc["fields"][k] == fields[k]
    assert doc["fields"]["43"] == text.replace("5555555555554444", "555555******4444")
    assert doc["fields"]["48"] == free.replace("5555 - 5555 - 5555 - 4444", "5555 - 55** - **** - 4444")


@pytest.mark.parametrize(
    ("element", "clear"),
    [
        ("62", "5555555555554444d29121010000"),  # track 2, lower-case separator
        ("62", "4111111111111111D29121010000"),  # the message's own track 2 (its PAN is DE2)
        ("62", "%b5555555555554444^TEST/CARD^2912101"),  # track 1, lower-case format code
        ("43", "T2 5555555555554444=2912101 ACME US".ljust(40)),  # in a fixed-length element
    ],
)
def test_track_data_in_any_case_removes_the_element(
    adapter: ISO8583Adapter, element: str, clear: str
) -> None:
    fields = fields_of("0100__basic.json") | {element: clear}
    doc = redacted(adapter, fields)
    assert doc["removed"] == [element] and element not in doc["fields"]
    assert "2912" not in json.dumps(doc)


def test_same_message_same_digest(adapter: ISO8583Adapter) -> None:
    a = parse(adapter, load("0100__track2_pin.json"))
    b = parse(adapter, load("0100__track2_pin.json"))
    assert a.raw == b.raw and a.raw_sha256 == b.raw_sha256


def test_an_undecodable_message_keeps_nothing_and_names_no_value(adapter: ISO8583Adapter) -> None:
    """Every cut of a message carrying PAN, track 2 and PIN block: a ParseError with no value in it."""
    raw = load("0100__track2_pin.json")
    for cut in range(len(raw)):
        try:
            adapter.parse(raw[:cut], Receipt("iso8583"))
        except ParseError as exc:
            assert exc.stored == b""
            assert not leaks(str(exc)) and not leaks(json.dumps(dict(exc.headers)))
            assert not leaks(repr(exc.issues))
            assert exc.__cause__ is None and exc.__context__ is None
            assert exc.issues and all(i.severity == "fatal" for i in exc.issues)
            reply = adapter.respond(Outcome("invalid", exc.headers, exc.issues))
            assert not leaks(reply.body)
            if "mti" in exc.headers:
                response = decode(reply.body)
                assert response["t"] == "0110" and response["39"] == "30"
                if "stan" in exc.headers:
                    assert response["11"] == "100002"
            else:
                assert reply.body == b""
        else:
            pytest.fail(f"a message cut at {cut} bytes was taken")


def test_an_undecodable_element_is_named(adapter: ISO8583Adapter) -> None:
    raw = load("0100__basic.json")
    i = raw.index(b"16" + b"4111111111111111")
    bad = raw[:i] + b"9X" + raw[i + 2 :]  # DE2's length is not numeric
    with pytest.raises(ParseError) as info:
        adapter.parse(bad, Receipt("iso8583"))
    (issue,) = info.value.issues
    assert (issue.code, issue.location) == ("malformed_field", "DE2")
    with pytest.raises(ParseError) as info:
        adapter.parse(raw + b"00", Receipt("iso8583"))
    assert info.value.issues[0].code == "trailing_data"
    assert info.value.headers["stan"] == "100001"
    with pytest.raises(ParseError) as info:
        adapter.parse(b"01", Receipt("iso8583"))
    assert info.value.issues[0].code == "malformed_mti" and dict(info.value.headers) == {}


# -- specs ---------------------------------------------------------------------------------------


def test_binary_spec(adapter: ISO8583Adapter) -> None:
    binary = ISO8583Adapter(ISO8583Config(spec="default"))
    fields = fields_of("0100__track2_pin.json")
    raw = encode(fields, default)
    env = binary.parse(raw, Receipt("iso8583"))
    assert binary.validate(env) == [] and not leaks(env.raw)
    assert "52" in json.loads(env.raw)["removed"]
    response = decode(binary.respond(Outcome("accepted", env.headers, [], env.id, env)).body, default)
    assert response["t"] == "0110" and response["11"] == "100002" and response["39"] == "00"


@pytest.fixture
def site_spec(tmp_path: Path) -> Path:
    spec = copy.deepcopy(default_ascii)
    spec["39"] = {**spec["39"], "max_len": 3, "desc": "Action Code"}
    spec["126"] = {**spec["126"], "desc": "CVV2 Data"}
    spec["62"] = {**spec["62"], "redact": "drop"}
    spec["103"] = {**spec["103"], "redact": "mask"}
    path = tmp_path / "site-spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_custom_spec_file(site_spec: Path) -> None:
    site = ISO8583Adapter(ISO8583Config(spec=str(site_spec)))
    spec = load_spec(str(site_spec))
    fields = fields_of("1100__authorization_1993.json") | {
        "126": "123",
        "62": "LOYALTY 77",
        "103": "12345678901234",
    }
    env = site.parse(encode(fields, spec), Receipt("iso8583"))
    doc = json.loads(env.raw)
    assert {"62", "126"} <= set(doc["removed"])
    assert doc["fields"]["103"] == "123456****1234"
    response = decode(site.respond(Outcome("accepted", env.headers, [], env.id, env)).body, spec)
    assert response["39"] == "000"  # a three-character DE39 gets 1993 action codes
    invalid = decode(site.respond(Outcome("invalid", env.headers, [], env.id, env)).body, spec)
    assert invalid["39"] == "904"


@pytest.mark.parametrize(
    "content", ["not json", "[1, 2]", '{"t": {}}', '{"h": {}, "t": {}, "p": {}}', '{"h":1,"t":1,"p":1,"x":1}']
)
def test_a_bad_spec_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "spec.json"
    path.write_text(content)
    with pytest.raises(ConfigError):
        ISO8583Adapter(ISO8583Config(spec=str(path)))
    with pytest.raises(ConfigError):
        ISO8583Adapter(ISO8583Config(spec=str(tmp_path / "missing.json")))


# -- network management --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["0800__echo.json", "0800__sign_on.json", "0800__sign_off.json"])
def test_network_management_is_answered_by_the_adapter(adapter: ISO8583Adapter, name: str) -> None:
    request = fields_of(name)
    body = adapter.network_reply(load(name))
    assert body is not None
    response = decode(body)
    assert response["t"] == "0810" and response["39"] == "00"
    assert (response["11"], response["70"], response["7"]) == (request["11"], request["70"], request["7"])


def test_network_management_in_1993_form(adapter: ISO8583Adapter) -> None:
    body = adapter.network_reply(encode({"t": "1804", "11": "800010", "24": "831"}))
    assert body is not None
    assert decode(body) | {"p": ""} == {"t": "1814", "p": "", "11": "800010", "24": "831", "39": "00"}


def test_other_messages_are_not_network_management(adapter: ISO8583Adapter) -> None:
    assert adapter.network_reply(load("0100__basic.json")) is None
    key_change = fields_of("0800__echo.json") | {"70": "161"}
    assert adapter.network_reply(encode(key_change)) is None
    assert adapter.network_reply(load("0800__echo.json")[:-2]) is None


# -- the listener, with the real intake and store ------------------------------------------------


@contextlib.asynccontextmanager
async def listening(
    tmp_path: Path, tls: ssl.SSLContext | None = None, **config: Any
) -> AsyncIterator[tuple[ISO8583Server, SQLiteStore]]:
    store = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    store.open()
    cfg = ISO8583Config(address="127.0.0.1:0", **config)
    server = ISO8583Server(Intake(store), ISO8583Adapter(cfg), cfg)
    await server.start("127.0.0.1", 0, tls)
    try:
        yield server, store
    finally:
        await server.stop(grace_s=5)
        await store.flush()
        assert store.verify_lineage().ok
        store.close()


async def read_message(reader: asyncio.StreamReader, header: str = "binary2") -> bytes:
    if header == "ascii4":
        n = int(await reader.readexactly(4))
    else:
        n = int.from_bytes(await reader.readexactly(2), "big")
    return await reader.readexactly(n)


async def closed(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(), timeout)
    except ConnectionResetError:
        return True
    return data == b""


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def with_stan(name: str, stan: int) -> bytes:
    return encode(fields_of(name) | {"11": f"{stan:06d}", "37": f"5074141{stan:05d}"})


def test_listener_answers_concurrently_and_matches_on_stan(tmp_path: Path) -> None:
    async def go() -> None:
        async with listening(tmp_path) as (server, store), connect(server.port) as (reader, writer):
            count = MAX_IN_FLIGHT * 2 + 7  # more than may be in flight at once
            writer.write(b"".join(frame(with_stan("0200__purchase.json", s)) for s in range(1, count + 1)))
            writer.write(
                frame(load("0800__echo.json")) + frame(b"") + frame(load("invalid__invalid_amount.json"))
            )
            answers = [decode(await asyncio.wait_for(read_message(reader), 20)) for _ in range(count + 2)]
            by_stan = {a["11"]: a for a in answers}
            assert len(by_stan) == count + 2
            assert all(by_stan[f"{s:06d}"]["39"] == "00" for s in range(1, count + 1))
            assert by_stan["800001"]["t"] == "0810" and by_stan["800001"]["39"] == "00"
            assert by_stan["900008"]["t"] == "0110" and by_stan["900008"]["39"] == "30"
            await store.flush()
            stored = store.list_messages(MessageFilter(protocol="iso8583", limit=1000))
            assert len(stored) == count + 1  # the echo is not stored
            assert not [m for m in stored if m.message_type == "0800"]

    asyncio.run(go())


def test_listener_ascii4_and_unreadable_messages(tmp_path: Path) -> None:
    async def go() -> None:
        async with listening(tmp_path, length_header="ascii4") as (server, store):
            async with connect(server.port) as (reader, writer):
                writer.write(frame(b"\x01\x02", "ascii4"))  # not even an MTI: no answer, connection kept
                writer.write(frame(load("0100__basic.json"), "ascii4"))
                answer_ = decode(await asyncio.wait_for(read_message(reader, "ascii4"), 10))
                assert answer_["39"] == "00" and answer_["11"] == "100001"
                writer.write(b"12AB")  # a prefix that is not four digits closes the connection
                assert await closed(reader)
            rejected = store.list_messages(MessageFilter(protocol="iso8583", status="rejected", limit=10))
            assert len(rejected) == 1 and store.get_raw(rejected[0].id) == b""

    asyncio.run(go())


def test_listener_limits(tmp_path: Path) -> None:
    async def go() -> None:
        async with listening(
            tmp_path,
            max_message_bytes=600,
            read_timeout_s=0.3,
            idle_timeout_s=0.6,
            max_connections_per_client=2,
        ) as (server, _):
            async with connect(server.port) as (reader, writer):
                writer.write((601).to_bytes(2, "big") + b"0100")
                assert await closed(reader)  # a declared length above the limit
            async with connect(server.port) as (reader, writer):
                writer.write(frame(load("0100__basic.json"))[:30])
                assert await closed(reader, 3)  # a started message not finished in time
            async with connect(server.port) as (reader, writer):
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                assert await closed(reader, 5)  # idle
                assert loop.time() - t0 >= 0.5
            async with connect(server.port) as (_, w1), connect(server.port) as (_, w2):
                async with connect(server.port) as (r3, _):
                    assert await closed(r3)  # a third connection from the same client
                w1.write(frame(load("0800__echo.json")))
                w2.write(frame(load("0800__echo.json")))

    asyncio.run(go())


def test_listener_answers_a_slow_writer(tmp_path: Path) -> None:
    async def go() -> None:
        async with listening(tmp_path) as (server, _), connect(server.port) as (reader, writer):
            data = frame(load("0100__basic.json"))
            for i in range(len(data)):
                writer.write(data[i : i + 1])
                await writer.drain()
            assert decode(await asyncio.wait_for(read_message(reader), 10))["39"] == "00"

    asyncio.run(go())


def test_listener_over_tls(tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def go() -> None:
        async with listening(tmp_path, server_ctx) as (server, _):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", server.port, ssl=client_ctx, server_hostname="127.0.0.1"
            )
            try:
                writer.write(frame(load("0100__basic.json")) + frame(load("0800__echo.json")))
                answers = {decode(await asyncio.wait_for(read_message(reader), 10))["t"] for _ in range(2)}
                assert answers == {"0110", "0810"}
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()

    asyncio.run(go())


def test_repr_of_the_body_shows_no_values(adapter: ISO8583Adapter) -> None:
    env = parse(adapter, load("0100__track2_pin.json"))
    text = repr(env.body)
    assert re.fullmatch(r"ISO8583Message\(mti='0100', elements=\[[0-9, ]+\]\)", text), text
