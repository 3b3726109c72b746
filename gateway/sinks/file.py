"""The file sink: write each delivery to its own file in a folder, atomically and durably.

What lives here: :class:`FileSink` and :func:`render_name`.

The file name comes from ``name_pattern`` (relative to ``directory``; ``/``
makes subfolders, created as needed) with these placeholders:

==========================  ====================================================================
``{envelope_id}``           the envelope id (required: it makes the name unique per message)
``{control_id}``            the control id (MSH-10 ...), sanitized to ``[A-Za-z0-9._-]``
``{message_type}``          sanitized the same way: ``ADT^A01`` → ``ADT_A01``
``{sink}``                  the sink name, sanitized
``{ext}``                   ``hl7``, ``json``, ``xml`` or ``bin`` (see :func:`extension`)
``{received:<strftime>}``   ``envelope.received_at`` formatted, e.g. ``{received:%Y%m%d}``
==========================  ====================================================================

A pattern that is absolute, contains a ``..`` component, uses another
placeholder, or lacks ``{envelope_id}`` is refused when the sink is built
(:class:`~gateway.errors.ConfigError`). Rendered names are checked again, so
no placeholder value can lead outside ``directory``.

A write is atomic and durable: the bytes go to a hidden temporary file in the
target folder (``.gateway-<random>.tmp``), which is fsynced, renamed over the
target with ``os.replace``, and the folder is fsynced (as is the parent of
every folder created). A reader never sees a half-written file, and no
temporary file is left behind.
Files are created with mode 0640: message content is never world-readable.

Re-delivery: the name contains the envelope id, and a sink receives one
delivery per envelope, so an existing file of that name is the same delivery
written before. Same bytes → nothing is written and the delivery counts as
done; different bytes (a route's transform changed between attempts) → the
file is replaced atomically with the newer body.

Outcomes: disk errors (``ENOSPC``, ``EIO``, ``EACCES`` ...) are
``DeliveryRetryable`` (codes ``disk_full``, ``permission_denied``,
``read_only``, ``io_error``). A name the file system finds too long is
``DeliveryRejected("name_too_long")`` and one that would leave the directory
``DeliveryRejected("bad_file_name")`` (the construction-time check should make
that impossible): sending again would not help, a better ``name_pattern``
would. The blocking I/O runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import string
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from gateway.config import FileSinkConfig
from gateway.envelope import Envelope
from gateway.errors import ConfigError
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable

__all__ = ["FILE_MODE", "PLACEHOLDERS", "TEMP_PREFIX", "FileSink", "extension", "render_name", "sanitize"]

FILE_MODE = 0o640
TEMP_PREFIX = ".gateway-"
"""Temporary files are named ``.gateway-<random>.tmp``: hidden, and easy for a folder watcher to skip."""
PLACEHOLDERS = frozenset({"envelope_id", "control_id", "message_type", "sink", "ext", "received"})
MAX_PART_CHARS = 100
"""A sanitized placeholder value is cut to this length, so names stay under file-system limits."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_UNSAFE_DATE = re.compile(r"[^A-Za-z0-9._/-]")

_PROTOCOL_EXT = {
    "hl7v2": "hl7",
    "fhir": "json",
    "json": "json",
    "shopify": "json",
    "square": "json",
    "pos_json": "json",
    "iso20022": "xml",
    "poslog": "xml",
    "xml": "xml",
}

_ERRNO_CODES = {
    errno.ENOSPC: "disk_full",
    errno.EDQUOT: "disk_full",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EROFS: "read_only",
}


def sanitize(value: str) -> str:
    """``value`` with every character outside ``[A-Za-z0-9._-]`` replaced by ``_``, never ``.``/``..``/empty."""
    safe = _UNSAFE.sub("_", value)[:MAX_PART_CHARS]
    return "_" if safe.strip(".") == "" else safe


def extension(envelope: Envelope, content_type: str) -> str:
    """The ``{ext}`` value: from the delivered content type when it says JSON, XML or HL7, else the protocol."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media.endswith(("/json", "+json")):
        return "json"
    if media.endswith(("/xml", "+xml")):
        return "xml"
    if "hl7-v2" in media:
        return "hl7"
    return _PROTOCOL_EXT.get(envelope.protocol, "bin")


def _check_pattern(sink: str, pattern: str) -> None:
    where = f"sinks.{sink}.name_pattern"
    if PurePosixPath(pattern).is_absolute() or pattern.startswith("\\") or re.match(r"[A-Za-z]:", pattern):
        raise ConfigError(f"{where}: {pattern!r} is absolute; expected a name relative to the directory")
    names: set[str] = set()
    try:
        parsed = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise ConfigError(f"{where}: {pattern!r} is not a valid pattern ({exc})") from None
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in PLACEHOLDERS:
            raise ConfigError(
                f"{where}: {pattern!r} uses {{{field}}}; expected one of {', '.join(sorted(PLACEHOLDERS))}"
            )
        if conversion or (spec and field != "received") or (field == "received" and not spec):
            raise ConfigError(
                f"{where}: {pattern!r}: only {{received:<strftime>}} takes a format, and no placeholder "
                "takes a conversion"
            )
        names.add(field)
    if ".." in re.split(r"[/\\]", pattern):
        raise ConfigError(f"{where}: {pattern!r} contains '..'; names must stay inside the directory")
    if "envelope_id" not in names:
        raise ConfigError(
            f"{where}: {pattern!r} lacks {{envelope_id}}; without it two messages could share a file"
        )
    sample = Envelope(
        id="0" * 26,
        received_at=datetime(2000, 1, 1, tzinfo=UTC),
        protocol="",
        version="",
        message_type="",
        control_id="",
        sender="",
        receiver="",
        raw=b"",
        raw_sha256="",
        body=None,
        headers={},
    )
    try:
        render_name(pattern, sink, sample, "")
    except ValueError:
        raise ConfigError(f"{where}: {pattern!r} renders a name outside the directory") from None


def render_name(pattern: str, sink: str, envelope: Envelope, content_type: str) -> PurePosixPath:
    """The relative file path for ``envelope``; every part is checked to stay inside the directory."""
    received = envelope.received_at

    class _Received:
        def __format__(self, spec: str) -> str:
            return _UNSAFE_DATE.sub("_", received.strftime(spec))[:MAX_PART_CHARS]

    text = pattern.format(
        envelope_id=sanitize(envelope.id),
        control_id=sanitize(envelope.control_id),
        message_type=sanitize(envelope.message_type),
        sink=sanitize(sink),
        ext=extension(envelope, content_type),
        received=_Received(),
    )
    path = PurePosixPath(text)
    parts = path.parts
    if not parts or path.is_absolute() or any(p in ("", ".", "..") for p in parts):
        raise ValueError("the rendered file name leaves the directory")
    return path


class FileSink:
    """Writes one file per delivery under ``config.directory``; see the module docstring."""

    def __init__(self, name: str, config: FileSinkConfig) -> None:
        self.name = name
        self.config = config
        _check_pattern(name, config.name_pattern)
        self.directory = Path(config.directory)

    async def open(self) -> None:
        """Create the directory if needed."""
        try:
            await asyncio.to_thread(_makedirs, self.directory)
        except OSError as exc:
            raise ConfigError(
                f"sinks.{self.name}.directory: {self.directory} cannot be created "
                f"({errno.errorcode.get(exc.errno or 0, type(exc).__name__)})"
            ) from None

    def path_for(self, delivery: Delivery) -> Path:
        """Where ``delivery`` is written."""
        relative = render_name(self.config.name_pattern, self.name, delivery.envelope, delivery.content_type)
        return self.directory.joinpath(*relative.parts)

    async def send(self, delivery: Delivery) -> None:
        """Write ``delivery.body`` atomically; an identical existing file counts as delivered."""
        try:
            target = self.path_for(delivery)
        except ValueError:
            raise DeliveryRejected(
                "bad_file_name", f"sink {self.name!r}: the rendered file name leaves the directory"
            ) from None
        try:
            await asyncio.to_thread(_write_once, self.directory, target, delivery.body)
        except OSError as exc:
            if exc.errno == errno.ENAMETOOLONG:
                raise DeliveryRejected(
                    "name_too_long", f"sink {self.name!r}: the rendered file name is too long"
                ) from None
            code = _ERRNO_CODES.get(exc.errno or 0, "io_error")
            name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
            raise DeliveryRetryable(
                code, f"sink {self.name!r}: the file could not be written ({name})"
            ) from None

    async def check(self) -> bool:
        """True when the directory exists and is writable."""
        return await asyncio.to_thread(
            lambda: self.directory.is_dir() and os.access(self.directory, os.W_OK | os.X_OK)
        )

    async def close(self) -> None:
        """Nothing to release: every write is complete when ``send`` returns."""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _makedirs(directory: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every folder it creates, so the new folders survive a crash."""
    missing: list[Path] = []
    current = directory
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir()
        _fsync_dir(folder.parent)


def _same_content(path: Path, body: bytes) -> bool:
    try:
        if path.stat().st_size != len(body):
            return False
        return path.read_bytes() == body
    except FileNotFoundError:
        return False


def _write_once(root: Path, target: Path, body: bytes) -> None:
    folder = target.parent
    if folder != root:
        _makedirs(folder)
    if _same_content(target, body):
        return
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".tmp")
    try:
        try:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(body)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)
