"""Logs are JSON lines with the safe fields passed by call sites, and never exception text."""

from __future__ import annotations

import json
import logging

from gateway.logs import JSONFormatter


def test_json_line_with_extra_fields_and_no_exception_text() -> None:
    record = logging.LogRecord("gateway.test", logging.ERROR, __file__, 1, "message %s", ("stored",), None)
    record.envelope_id = "01ABC"
    try:
        raise ValueError("PID|1||SECRET-MRN")
    except ValueError:
        import sys

        record.exc_info = sys.exc_info()
    line = JSONFormatter().format(record)
    out = json.loads(line)
    assert out["msg"] == "message stored" and out["envelope_id"] == "01ABC" and out["level"] == "error"
    assert out["exc_type"] == "ValueError"
    assert "SECRET-MRN" not in line
    assert out["ts"].endswith("Z")
