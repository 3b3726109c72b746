"""Webhook signatures: Shopify's and Square's HMAC schemes, checked in constant time, refusing by default."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from gateway.errors import AuthError
from gateway.webhooks import shopify_signature, square_signature

BODY = b'{"id": 820982911946154508, "email": "jon@example.com"}'


def test_shopify_signature_is_base64_hmac_sha256_of_the_body() -> None:
    expected = base64.b64encode(hmac.new(b"secret-1", BODY, hashlib.sha256).digest()).decode()
    sig = shopify_signature("secret-1")
    assert sig.sign(BODY) == expected
    sig.verify(BODY, {"x-shopify-hmac-sha256": expected})


def test_square_signs_the_notification_url_then_the_body() -> None:
    url = "https://gw.example.com/ingest/square"
    expected = base64.b64encode(hmac.new(b"sq-key", url.encode() + BODY, hashlib.sha256).digest()).decode()
    square_signature("sq-key", url).verify(BODY, {"x-square-hmacsha256-signature": expected})
    with pytest.raises(AuthError):
        square_signature("sq-key", "https://other.example.com/hook").verify(
            BODY, {"x-square-hmacsha256-signature": expected}
        )


@pytest.mark.parametrize(
    ("body", "header"),
    [
        (BODY + b" ", None),  # altered body
        (BODY, ""),  # empty header
        (BODY, "***"),  # not base64
        (BODY, base64.b64encode(b"x" * 32).decode()),  # wrong digest
    ],
)
def test_bad_signatures_are_401(body: bytes, header: str | None) -> None:
    sig = shopify_signature("secret-1")
    value = sig.sign(BODY) if header is None else header
    with pytest.raises(AuthError) as caught:
        sig.verify(body, {"x-shopify-hmac-sha256": value})
    assert caught.value.status == 401
    assert "secret-1" not in caught.value.reason


def test_without_a_secret_every_delivery_is_refused() -> None:
    with pytest.raises(AuthError):
        shopify_signature(None).verify(BODY, {"x-shopify-hmac-sha256": "anything"})
    with pytest.raises(AuthError):  # Square without its notification URL cannot check anything
        square_signature("sq-key", None).verify(BODY, {"x-square-hmacsha256-signature": "anything"})


def test_the_secret_is_not_in_the_repr() -> None:
    assert "secret-1" not in repr(shopify_signature("secret-1"))


def test_named_shops_only() -> None:
    sig = shopify_signature("secret-1", ["North-Shop.myshopify.com"])
    good = {"x-shopify-hmac-sha256": sig.sign(BODY), "x-shopify-shop-domain": "north-shop.myshopify.com"}
    sig.verify(BODY, good)
    for shop in ("other-shop.myshopify.com", ""):
        with pytest.raises(AuthError):  # a genuine body replayed under another shop
            sig.verify(BODY, {**good, "x-shopify-shop-domain": shop})


def test_refusals_write_at_most_one_lineage_event_per_window() -> None:
    from gateway.webhooks import Refusals

    refusals = Refusals(window_s=60)
    first = refusals.note("shopify", "203.0.113.9:5000", 1000.0)
    assert first is not None and first.details["refused"] == 1
    assert all(refusals.note("shopify", "203.0.113.9:5001", 1000.0 + n) is None for n in range(1, 50))
    assert refusals.note("square", "203.0.113.9:5002", 1010.0) is not None  # per channel
    later = refusals.note("shopify", "203.0.113.9:5003", 1061.0)
    assert later is not None and later.details["refused"] == 50
