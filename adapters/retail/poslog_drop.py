"""The POSLog drop folder: a listener that takes the files a POS writes into a folder.

Many stores' back-office systems write a POSLog file per transaction or per
day into a shared folder rather than calling an API. Every ``poll_s`` the
listener looks at the folder; a regular file that has not changed for
``settle_s`` (the POS may still be writing it) goes through intake exactly
like a ``POST /ingest/poslog``. Then:

* every transaction stored and accepted → the file moves to ``done/``;
* any transaction invalid or refused → the file moves to ``failed/``, with the
  reply beside it as ``<name>.reply.json`` (issue codes and locations, no
  payload values);
* the store could not take it (503) → the file stays where it is and is tried
  again at the next poll: nothing is lost;
* a file over ``max_bytes`` → ``failed/`` with a reply that says so (at most
  ``max_bytes + 1`` bytes of it are read);
* a symbolic link, or a file with more than one hard link, is never read (it
  could point anywhere on the machine): → ``failed/``;
* nothing is written or moved through a link either: ``done/`` and ``failed/``
  must be directories of their own (start refuses a link there), a reply is
  only ever created as a new file, and a name already taken in ``done/`` or
  ``failed/`` (by a file, or by a link someone put there) is never reused;
* a file whose intake fails unexpectedly is tried again and, after three
  tries, moved to ``failed/``; it never holds up the files after it.

A crash between the commit and the move only means the file is taken again
at start, and intake recognises it as a duplicate (same control ids, same
content), so nothing is applied twice. Hidden files (``.name``) and files
ending ``.tmp`` or ``.part`` are never picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from pathlib import Path

from gateway.adapter import Adapter
from gateway.envelope import Receipt, new_id
from gateway.errors import ConfigError
from gateway.pipeline import Intake

log = logging.getLogger("gateway.poslog_drop")

SKIPPED_SUFFIXES = (".tmp", ".part", ".reply.json")
MAX_TRIES = 3
"""Unexpected failures a file may cause before it goes to ``failed/``."""


class DropFolder:
    """Polls ``folder`` and hands each settled file to intake (see the module docstring)."""

    name = "poslog-drop"

    def __init__(
        self,
        intake: Intake,
        adapter: Adapter,
        folder: Path,
        *,
        poll_s: float = 1.0,
        settle_s: float = 1.0,
        max_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.intake = intake
        self.adapter = adapter
        self.folder = folder
        self.done = folder / "done"
        self.failed = folder / "failed"
        self.poll_s = poll_s
        self.settle_s = settle_s
        self.max_bytes = max_bytes
        self._task: asyncio.Task[None] | None = None
        self.tries: dict[str, int] = {}
        self.taken = 0
        """Files moved to done/ or failed/ since start."""

    async def start(self) -> None:
        """Create the folders and start polling; :class:`ConfigError` if ``done/`` or ``failed/`` is
        not a directory of its own (a link there would send files and replies anywhere)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for folder in (self.done, self.failed):
            with contextlib.suppress(FileExistsError):
                folder.mkdir()
            if not stat.S_ISDIR(os.lstat(folder).st_mode):
                raise ConfigError(
                    f"poslog.drop_dir: {folder} is not a directory (a symbolic link?); "
                    f"{folder.name}/ must be a real directory inside the drop folder"
                )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                await self.poll()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bad poll must not end the listener
                log.exception("drop folder poll failed", extra={"folder": str(self.folder)})
            await asyncio.sleep(self.poll_s)

    def _ready(self) -> list[Path]:
        now = time.time()
        out = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name.startswith(".") or entry.name.endswith(SKIPPED_SUFFIXES):
                    continue
                if not entry.is_file(follow_symlinks=False):
                    continue
                if now - entry.stat(follow_symlinks=False).st_mtime >= self.settle_s:
                    out.append(Path(entry.path))
        return sorted(out)

    async def poll(self) -> int:
        """Take every settled file once; return how many were moved.

        A file whose intake fails unexpectedly is tried again at the next polls and moved to
        ``failed/`` after :data:`MAX_TRIES`; it never holds up the files after it.
        """
        moved = 0
        for path in self._ready():
            try:
                if await self.take(path):
                    moved += 1
                    self.tries.pop(path.name, None)
            except Exception:
                tries = self.tries[path.name] = self.tries.get(path.name, 0) + 1
                log.exception("poslog file could not be taken", extra={"file": path.name, "tries": tries})
                if tries >= MAX_TRIES:
                    self.tries.pop(path.name, None)
                    self._refuse(path, "internal_error", "The gateway could not take this file; see its log.")
                    moved += 1
        return moved

    def _read(self, path: Path) -> bytes | None:
        """The file's bytes, or None when it must not be read: not a regular file of its own (a link
        swapped in after the scan, a hard link to another file) or over the size limit."""
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
                raise PermissionError("not a regular file with one link")
            data = f.read(self.max_bytes + 1)
        return data if len(data) <= self.max_bytes else None

    async def take(self, path: Path) -> bool:
        try:
            raw = self._read(path)
        except PermissionError:
            self._refuse(path, "not_a_file", "Only regular files with a single link are taken.")
            return True
        if raw is None:
            log.warning("poslog file over the size limit", extra={"file": path.name})
            self._refuse(path, "too_large", f"The file exceeds the limit of {self.max_bytes} bytes.")
            return True
        receipt = Receipt(self.name, peer=f"file:{path.name}", content_type="application/xml")
        result = await self.intake.receive(self.adapter, raw, receipt)
        reply = result.combined()
        self.intake.replied(result)
        if reply.status == 503:
            log.warning("store unavailable; the file stays for the next poll", extra={"file": path.name})
            return False
        if reply.accepted:
            self._move(path, self.done, None)
        else:
            self._move(path, self.failed, reply.body)
        log.info(
            "poslog file taken",
            extra={"file": path.name, "outcome": reply.code, "messages": len(result.message_ids)},
        )
        return True

    def _refuse(self, path: Path, code: str, sentence: str) -> None:
        refusal = {
            "outcome": "invalid",
            "issues": [{"severity": "fatal", "code": code, "diagnostics": sentence}],
        }
        self._move(path, self.failed, json.dumps(refusal).encode())

    def _move(self, path: Path, folder: Path, reply: bytes | None) -> None:
        """Move ``path`` into ``folder``, its reply (if any) written beside it first.

        Everything happens relative to ``folder`` opened with ``O_NOFOLLOW``, so a folder swapped
        for a link since start is an error, not a way out. A name whose file or reply is already
        there (even as a link) is not reused; the reply is created with ``O_EXCL``, which never
        follows or replaces a link; the rename replaces at most a directory entry, never a link's
        target.
        """
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            name = path.name
            if _present(name, fd) or _present(f"{name}.reply.json", fd):  # the same name again: keep both
                name = f"{path.stem}.{new_id()}{path.suffix}"
            if reply is not None:
                _create(f"{name}.reply.json", reply, fd)
            os.replace(path, name, dst_dir_fd=fd)
        finally:
            os.close(fd)
        self.taken += 1


def _present(name: str, folder_fd: int) -> bool:
    """Whether anything (a file, a folder, a link, even a dangling one) has ``name`` in the folder."""
    try:
        os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _create(name: str, data: bytes, folder_fd: int) -> None:
    """Write ``data`` to a new file ``name`` in the folder; fails if the name exists, even as a link."""
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644, dir_fd=folder_fd)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
