"""Shared test fixtures: the corpus location, free ports, and the real gateway process."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
CORPORA = REPO.parent / "shared" / "corpora"


def require_or_skip(reason: str) -> None:
    """Skip with ``reason``, or fail when GATEWAY_REQUIRE_CORPORA=1 (set by .ci/run)."""
    if os.environ.get("GATEWAY_REQUIRE_CORPORA") == "1":
        pytest.fail(f"{reason} (GATEWAY_REQUIRE_CORPORA=1 turns this skip into a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    if not CORPORA.is_dir():
        require_or_skip(f"the shared test corpora are not at {CORPORA} (a plain clone has none)")
    return CORPORA
