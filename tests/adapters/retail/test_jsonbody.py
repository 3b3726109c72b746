"""Reading JSON bodies: exact decimals, no NaN, no member named twice, and errors that quote nothing."""

from __future__ import annotations

from decimal import Decimal

import pytest

from adapters.retail.jsonbody import load_object
from gateway.adapter import ParseError


def test_numbers_are_exact_decimals() -> None:
    assert load_object(b'{"price": 19.99, "qty": 2}') == {"price": Decimal("19.99"), "qty": 2}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b'{"store": "S1", "store": "S2"}', "malformed_json"),  # which one wins depends on the parser
        (b'{"a": {"x": 1, "x": 2}}', "malformed_json"),
        (b'{"price": NaN}', "malformed_json"),
        (b'{"price": Infinity}', "malformed_json"),
        (b'{"price": 1e99999999999999999999}', "malformed_json"),  # past Decimal's exponent: not ValueError
        (b'{"price": [1E-99999999999999999999]}', "malformed_json"),
        (b'{"secret-value": ', "malformed_json"),
        (b"\xff\xfe\x00{", "malformed_json"),
        (b"[1, 2]", "not_an_object"),
        (b'"secret-value"', "not_an_object"),
    ],
)
def test_bad_bodies_are_refused_without_quoting_them(raw: bytes, code: str) -> None:
    with pytest.raises(ParseError) as caught:
        load_object(raw, {"control_id": "C1"})
    assert [i.code for i in caught.value.issues] == [code]
    assert caught.value.headers == {"control_id": "C1"}
    assert "secret" not in caught.value.issues[0].diagnostics
    assert "S2" not in caught.value.issues[0].diagnostics
