"""Envelope ids: ULIDs (Crockford base32) that sort by the time they were minted."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta

from gateway.envelope import _ulid, id_floor, new_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def decode(ulid: str) -> int:
    """The 128-bit value of a ULID, digit by digit (the spec's own definition)."""
    value = 0
    for digit in ulid:
        value = value * 32 + CROCKFORD.index(digit)
    return value


def test_an_id_is_26_crockford_digits_holding_the_millisecond_it_was_minted() -> None:
    before = time.time_ns() // 1_000_000
    ident = new_id()
    after = time.time_ns() // 1_000_000
    assert len(ident) == 26 and set(ident) <= set(CROCKFORD)
    assert before <= decode(ident) >> 80 <= after


def test_ids_sort_by_time_and_a_floor_sorts_before_every_id_of_its_moment() -> None:
    rng = random.Random(7)
    start = datetime(2026, 11, 27, tzinfo=UTC)
    moments = [start + timedelta(milliseconds=rng.randrange(10**9)) for _ in range(2000)]
    floors = [id_floor(m) for m in moments]
    assert [decode(f) >> 80 for f in floors] == [int(m.timestamp() * 1000) for m in moments]
    assert sorted(floors) == [id_floor(m) for m in sorted(moments)]
    assert id_floor(start.isoformat()) == id_floor(start)
    # every id minted now sorts at or after the floor of now, and before the floor of a later moment
    now = datetime.now(UTC)
    ident = new_id()
    assert id_floor(now - timedelta(milliseconds=1)) < ident < id_floor(now + timedelta(seconds=5))


def test_every_value_encodes_to_the_digits_that_decode_back_to_it() -> None:
    assert _ulid(0) == "0" * 26 == id_floor(datetime.fromtimestamp(0, UTC))
    assert _ulid(2**128 - 1) == "7" + "Z" * 25
    rng = random.Random(11)
    for value in [1, 31, 32, 1023, 1024, *(rng.getrandbits(128) for _ in range(5000))]:
        encoded = _ulid(value)
        assert len(encoded) == 26 and decode(encoded) == value
