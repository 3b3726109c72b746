"""Fixtures the end-to-end modules share: an API client for the module's ``gw`` gateway."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.support import TEST_KEY, Gateway


@pytest.fixture
def api(gw: Gateway) -> Iterator[httpx.Client]:
    """A client of ``gw``'s HTTP API with the tester's key (ingest, messages and lineage scopes)."""
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {TEST_KEY}"}, timeout=30) as c:
        yield c
