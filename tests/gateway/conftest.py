"""Fixtures for the core's tests: a real SQLite store whose lineage must still verify when the test ends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.store.sqlite import SQLiteStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    s.open()
    yield s
    verification = s.verify_lineage()
    s.close()
    assert verification.ok, verification
