"""FileSink on real files: atomic writes, name patterns, sanitization, traversal, re-delivery, disk errors."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.config import FileSinkConfig
from gateway.errors import ConfigError
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable
from gateway.sinks.file import FileSink, sanitize
from tests.gateway.sinks.peers import delivery, envelope


def config(directory: Path, **kw: Any) -> FileSinkConfig:
    return FileSinkConfig.model_validate({"type": "file", "directory": str(directory), **kw})


def write(sink: FileSink, *deliveries: Delivery) -> None:
    async def go() -> None:
        await sink.open()
        try:
            for d in deliveries:
                await sink.send(d)
        finally:
            await sink.close()

    asyncio.run(go())


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_default_pattern_writes_exact_bytes_atomically(tmp_path: Path) -> None:
    out = tmp_path / "out"
    d = delivery(envelope("C1"))
    write(FileSink("drop", config(out)), d)
    assert files_under(out) == [f"20240305/{d.envelope.id}.hl7"]  # no temporary file left behind
    path = out / "20240305" / f"{d.envelope.id}.hl7"
    assert path.read_bytes() == d.body
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_placeholders_and_sanitization(tmp_path: Path) -> None:
    env = envelope("../../etc/pass wd", message_type="ADT^A01")
    pattern = "{sink}/{received:%Y-%m}/{message_type}/{control_id}__{envelope_id}.{ext}"
    sink = FileSink("lab drop", config(tmp_path, name_pattern=pattern))
    d = delivery(env)
    write(sink, d)
    expected = f"lab_drop/2024-03/ADT_A01/.._.._etc_pass_wd__{env.id}.hl7"
    assert files_under(tmp_path) == [expected]
    assert sink.path_for(d) == tmp_path / expected


@pytest.mark.parametrize(
    ("protocol", "content_type", "ext"),
    [
        ("hl7v2", "x-application/hl7-v2+er7", "hl7"),
        ("fhir", "application/fhir+json", "json"),
        ("hl7v2", "application/fhir+json; charset=utf-8", "json"),  # a transformed body
        ("iso20022", "application/xml", "xml"),
        ("poslog", "text/plain", "xml"),
        ("pos_json", "application/octet-stream", "json"),
        ("iso8583", "application/octet-stream", "bin"),
    ],
)
def test_extension(tmp_path: Path, protocol: str, content_type: str, ext: str) -> None:
    sink = FileSink("drop", config(tmp_path, name_pattern="{envelope_id}.{ext}"))
    d = delivery(envelope(protocol=protocol), content_type=content_type)
    assert sink.path_for(d).name == f"{d.envelope.id}.{ext}"


@pytest.mark.parametrize(
    "pattern",
    [
        "../{envelope_id}",
        "a/../../{envelope_id}",
        "{envelope_id}/..",
        "/etc/{envelope_id}",
        "{control_id}.hl7",  # not unique per message
        "{envelope_id}{patient}",
        "{envelope_id!r}",
        "{envelope_id}.{ext:>9}",
        "{received}/{envelope_id}",
        "{received:..}/{envelope_id}",
        "{envelope_id",
        "{}{envelope_id}",
        "{envelope_id.__class__}",
    ],
)
def test_bad_patterns_are_refused_at_construction(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(ConfigError, match="name_pattern"):
        FileSink("drop", config(tmp_path, name_pattern=pattern))


@pytest.mark.parametrize("value", ["..", ".", "", "a/b", "a\\b", "é"])
def test_sanitize_never_yields_a_path(value: str) -> None:
    safe = sanitize(value)
    assert safe not in ("", ".", "..")
    assert "/" not in safe and "\\" not in safe
    assert safe.isascii()


def test_control_id_of_dots_stays_inside(tmp_path: Path) -> None:
    sink = FileSink("drop", config(tmp_path, name_pattern="{control_id}/{envelope_id}"))
    d = delivery(envelope(".."))
    write(sink, d)
    assert files_under(tmp_path) == [f"_/{d.envelope.id}"]


def test_redelivery_of_same_bytes_leaves_the_file_alone(tmp_path: Path) -> None:
    sink = FileSink("drop", config(tmp_path, name_pattern="{envelope_id}.{ext}"))
    d = delivery()
    write(sink, d)
    path = sink.path_for(d)
    before = path.stat()
    write(sink, Delivery(d.delivery_id, d.envelope, d.body, d.content_type, attempt=2))
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert files_under(tmp_path) == [path.name]


def test_redelivery_of_new_bytes_replaces_the_file(tmp_path: Path) -> None:
    sink = FileSink("drop", config(tmp_path, name_pattern="{envelope_id}.{ext}"))
    d = delivery()
    write(sink, d)
    newer = Delivery(d.delivery_id, d.envelope, d.body + b"ZDS|1\r", d.content_type, attempt=2)
    write(sink, newer)
    assert sink.path_for(d).read_bytes() == newer.body
    assert files_under(tmp_path) == [sink.path_for(d).name]


def test_disk_error_is_retryable_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "20240305").write_bytes(b"a file where the day's folder should be")
    sink = FileSink("drop", config(tmp_path))
    with pytest.raises(DeliveryRetryable) as info:
        write(sink, delivery())
    assert info.value.code == "io_error"
    assert "ENOTDIR" in info.value.reason
    assert files_under(tmp_path) == ["20240305"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_unwritable_directory_is_retryable(tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(DeliveryRetryable) as info:
            write(FileSink("drop", config(tmp_path, name_pattern="{envelope_id}")), delivery())
    finally:
        tmp_path.chmod(0o700)
    assert info.value.code == "permission_denied"


def test_open_creates_the_directory_and_check_reports_it(tmp_path: Path) -> None:
    sink = FileSink("drop", config(tmp_path / "a" / "b"))
    assert asyncio.run(sink.check()) is False
    asyncio.run(sink.open())
    assert (tmp_path / "a" / "b").is_dir()
    assert asyncio.run(sink.check()) is True


def test_received_uses_the_envelope_time(tmp_path: Path) -> None:
    env = envelope(received_at=datetime(1999, 12, 31, 23, 59, tzinfo=UTC))
    sink = FileSink("drop", config(tmp_path, name_pattern="{received:%Y/%m/%d}/{envelope_id}"))
    assert sink.path_for(delivery(env)) == tmp_path / "1999" / "12" / "31" / env.id


def test_disk_full_is_retryable_and_the_temp_file_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC cannot be caused on demand on a real disk; the fsync of the temporary file reports it here."""

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    sink = FileSink("drop", config(tmp_path, name_pattern="{envelope_id}"))
    asyncio.run(sink.open())
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DeliveryRetryable) as info:
        asyncio.run(sink.send(delivery()))
    assert info.value.code == "disk_full"
    assert files_under(tmp_path) == []


def test_name_too_long_is_rejected(tmp_path: Path) -> None:
    sink = FileSink("drop", config(tmp_path, name_pattern="{envelope_id}" + "x" * 300))
    with pytest.raises(DeliveryRejected) as info:
        write(sink, delivery())
    assert info.value.code == "name_too_long"
