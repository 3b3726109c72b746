"""The connection gate every listener keeps its limits with: per client address and overall."""

from __future__ import annotations

import logging

import pytest

from gateway.config import HTTPConfig, MLLPConfig
from gateway.http_head import limited_protocol
from gateway.listeners import ConnectionGate

log = logging.getLogger("gateway.test")


def test_a_client_over_its_limit_is_refused_until_one_of_its_connections_is_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = ConnectionGate("mllp", MLLPConfig(max_connections=10, max_connections_per_client=2), log)
    assert gate.admit("10.0.0.1", "10.0.0.1:5001") and gate.admit("10.0.0.1", "10.0.0.1:5002")
    with caplog.at_level(logging.WARNING, "gateway.test"):
        assert not gate.admit("10.0.0.1", "10.0.0.1:5003")
    (record,) = caplog.records
    assert record.getMessage() == "mllp connection refused: too many connections from client"
    assert record.__dict__["peer"] == "10.0.0.1:5003"
    assert gate.admit("10.0.0.2", "10.0.0.2:6001")  # another client is counted apart
    assert gate.open == 3  # the refused one is not counted
    gate.release("10.0.0.1")
    assert gate.admit("10.0.0.1", "10.0.0.1:5004")
    assert not gate.admit("10.0.0.1", "10.0.0.1:5005")


def test_connections_over_the_overall_limit_are_refused_until_one_is_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate = ConnectionGate("http", HTTPConfig(max_connections=2, max_connections_per_client=2), log)
    assert gate.admit("10.0.0.1", "10.0.0.1:5001") and gate.admit("10.0.0.2", "10.0.0.2:6001")
    with caplog.at_level(logging.WARNING, "gateway.test"):
        assert not gate.admit("10.0.0.3", "10.0.0.3:7001")
    assert [r.getMessage() for r in caplog.records] == ["http connection refused: too many connections"]
    gate.release("10.0.0.2")
    assert gate.admit("10.0.0.3", "10.0.0.3:7002")
    assert gate.open == 2


def test_releasing_a_client_with_no_admitted_connection_changes_nothing() -> None:
    gate = ConnectionGate("mllp", MLLPConfig(max_connections=1, max_connections_per_client=1), log)
    assert gate.admit("10.0.0.1", "10.0.0.1:5001")
    gate.release("10.0.0.9")
    assert gate.open == 1
    assert not gate.admit("10.0.0.2", "10.0.0.2:6001")
    gate.release("10.0.0.1")
    gate.release("10.0.0.1")  # once too often: the count does not go below nothing
    assert gate.open == 0
    assert gate.admit("10.0.0.2", "10.0.0.2:6002")
    assert not gate.admit("10.0.0.3", "10.0.0.3:7001")


def test_each_http_protocol_class_counts_its_own_connections() -> None:
    """One gate per :func:`limited_protocol` call, so per server: two servers (or two tests) never share
    a count."""
    config = HTTPConfig(max_connections=1, header_timeout_s=2.5)
    first, second = limited_protocol(config), limited_protocol(config)
    assert first.gate is not second.gate
    assert first.gate.limits is config and first.header_timeout_s == 2.5
    assert first.gate.admit("10.0.0.1", "10.0.0.1:5001")
    assert second.gate.admit("10.0.0.1", "10.0.0.1:5002")
