"""Fixtures for the sink tests: TLS material made once per session."""

from __future__ import annotations

import pytest

from tests.gateway.sinks.peers import TLSFiles, make_tls


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    pytest.importorskip("cryptography")
    return make_tls(tmp_path_factory.mktemp("tls"))
