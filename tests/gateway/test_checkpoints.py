"""Signed checkpoints pin the lineage chain: a cut tail and a rewritten-and-rehashed tail are found.

The checkpoint file is written on a disk that fills up too: a line the disk cut short is removed and
its checkpoint written again later, and a last line left incomplete is an interrupted write, not an
alteration.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from gateway.checkpoints import (
    Checkpoint,
    Checkpointer,
    FileCheckpoints,
    load_or_create_key,
    load_public_key,
    public_path,
    read_verified,
    sign,
    verify_store,
)
from gateway.lineage import EventDraft, seal
from gateway.store.sqlite import SQLiteStore
from tests.gateway.test_store import exchange


def fill(store: SQLiteStore, first: int, count: int) -> None:
    async def go() -> None:
        for i in range(first, first + count):
            await exchange(store, f"CP{i}", f"body{i}".encode())

    asyncio.run(go())


@pytest.fixture
def pinned(tmp_path: Path) -> Iterator[tuple[SQLiteStore, Path, Path]]:
    """A store with 18 events and signed checkpoints at seq 9 and 18."""
    store = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    store.open()
    key_path, cp_path = tmp_path / "keys" / "signing.key", tmp_path / "elsewhere" / "checkpoints.jsonl"
    checkpointer = Checkpointer(store, load_or_create_key(key_path), cp_path, every_events=9, every_s=3600)
    fill(store, 0, 3)
    assert checkpointer.checkpoint() is not None  # seq 9
    fill(store, 3, 3)
    assert checkpointer.checkpoint() is not None  # seq 18
    yield store, cp_path, key_path
    store.close()


def test_intact_chain_verifies_against_its_checkpoints(pinned: tuple[SQLiteStore, Path, Path]) -> None:
    store, cp_path, key_path = pinned
    result = verify_store(store, cp_path, public_path(key_path))
    assert result.ok and result.checkpoints == 2 and result.last_seq == 18
    assert (key_path.stat().st_mode & 0o777) == 0o600


def test_a_cut_tail_is_found(pinned: tuple[SQLiteStore, Path, Path]) -> None:
    store, cp_path, key_path = pinned
    conn = sqlite3.connect(store.path)
    conn.execute("DELETE FROM lineage WHERE seq > 15")
    conn.commit()
    conn.close()
    assert store.verify_lineage().ok, "without checkpoints the shorter chain looks fine"
    result = verify_store(store, cp_path, public_path(key_path))
    assert not result.ok and result.first_bad_seq == 16 and "cut" in result.reason


def test_a_rewritten_and_rehashed_tail_is_found(pinned: tuple[SQLiteStore, Path, Path]) -> None:
    store, cp_path, key_path = pinned
    conn = sqlite3.connect(store.path)
    rows = conn.execute(
        "SELECT seq, at, event, envelope_id, parent_id, actor, outcome, error_code, raw_sha256, details"
        " FROM lineage WHERE seq >= 12 ORDER BY seq"
    ).fetchall()
    (prev,) = conn.execute("SELECT hash FROM lineage WHERE seq = 11").fetchone()
    for seq, at, event, envelope_id, parent_id, actor, outcome, error_code, raw_sha256, details in rows:
        if seq == 12:
            outcome = "rejected"  # the forger's edit
        draft = EventDraft(
            event, envelope_id, actor, outcome, error_code, raw_sha256, parent_id, orjson.loads(details)
        )
        ev = seal(seq, at, draft, prev)
        conn.execute(
            "UPDATE lineage SET outcome = ?, prev_hash = ?, hash = ? WHERE seq = ?",
            (outcome, ev.prev_hash, ev.hash, seq),
        )
        prev = ev.hash
    conn.commit()
    conn.close()
    assert store.verify_lineage().ok, "the rehashed chain is consistent with itself"
    result = verify_store(store, cp_path, public_path(key_path))
    assert not result.ok and result.first_bad_seq == 10 and "rewritten" in result.reason


def test_an_altered_checkpoint_file_fails(pinned: tuple[SQLiteStore, Path, Path]) -> None:
    store, cp_path, key_path = pinned
    lines = cp_path.read_bytes().splitlines()
    forged = orjson.loads(lines[-1])
    forged["seq"] = 12
    cp_path.write_bytes(lines[0] + b"\n" + orjson.dumps(forged) + b"\n")
    good, problems = read_verified(
        cp_path, __import__("gateway.checkpoints").checkpoints.load_public_key(public_path(key_path))
    )
    assert [c.seq for c in good] == [9] and problems == ["checkpoint on line 2 has an invalid signature"]
    result = verify_store(store, cp_path, public_path(key_path))
    assert not result.ok and "invalid signature" in result.reason


def test_checkpointer_schedule_and_restart(tmp_path: Path, store: SQLiteStore) -> None:
    key = load_or_create_key(tmp_path / "k")
    path = tmp_path / "cp.jsonl"
    cp = Checkpointer(store, key, path, every_events=100, every_s=3600)
    assert cp.checkpoint() is None  # nothing written yet
    fill(store, 0, 2)
    assert cp.checkpoint() is None  # 6 events: neither threshold reached
    assert cp.checkpoint(force=True) is not None
    assert Checkpointer(store, key, path, 100, 3600).last_seq == 6  # a restart resumes from the file
    missing = verify_store(store, tmp_path / "none.jsonl", public_path(tmp_path / "k"))
    assert missing.ok and missing.warnings
    strict = verify_store(
        store, tmp_path / "none.jsonl", public_path(tmp_path / "k"), require_checkpoints=True
    )
    assert not strict.ok


# -- a disk that fills up -----------------------------------------------------------------------------


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes past ``limit`` bytes are cut short by the kernel, then fail (EFBIG), as on a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


class FillingDisk(FileCheckpoints):
    """A checkpoint file on a disk with ``room`` bytes left (None: as many as needed)."""

    room: int | None = None

    def append(self, checkpoint: Checkpoint) -> None:
        if self.room is None:
            super().append(checkpoint)
            return
        size = self.path.stat().st_size if self.path.exists() else 0
        with file_size_limit(size + self.room):
            super().append(checkpoint)


def complete_lines(path: Path) -> list[int]:
    """The seqs of the file's lines, each of which must be a whole checkpoint ended by a newline."""
    data = path.read_bytes()
    assert data.endswith(b"\n"), f"the file ends with a fragment: {data[-60:]!r}"
    return [orjson.loads(line)["seq"] for line in data.splitlines()]


def test_a_line_the_full_disk_cut_short_is_removed_and_written_again_later(
    store: SQLiteStore, tmp_path: Path
) -> None:
    key_path = tmp_path / "keys" / "signing.key"
    disk = FillingDisk(tmp_path / "small-disk" / "checkpoints.jsonl")
    checkpointer = Checkpointer(store, load_or_create_key(key_path), disk, every_events=3, every_s=3600)
    fill(store, 0, 1)
    assert checkpointer.checkpoint() is not None  # seq 3
    written = disk.path.read_bytes()

    disk.room = 40  # the next line is cut short after 40 bytes, then the write fails
    fill(store, 1, 1)
    assert checkpointer.checkpoint() is not None  # seq 6: refused, kept
    assert checkpointer.pending() == {disk.name: [6]}
    assert disk.path.read_bytes() == written, "the 40 bytes of the refused line were removed"

    disk.room = None  # space again
    fill(store, 2, 1)
    assert checkpointer.checkpoint() is not None  # seq 9, after seq 6
    assert checkpointer.pending() == {}
    assert complete_lines(disk.path) == [3, 6, 9]
    result = verify_store(store, disk.path, public_path(key_path), require_checkpoints=True)
    assert result.ok and result.checkpoints == 3 and not result.warnings, result


def test_a_failed_fsync_leaves_no_line_behind(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_path, cp_path = tmp_path / "signing.key", tmp_path / "checkpoints.jsonl"
    checkpointer = Checkpointer(store, load_or_create_key(key_path), cp_path, every_events=3, every_s=3600)
    fsync: Callable[[int], None] = os.fsync
    failures = [OSError(errno.EIO, os.strerror(errno.EIO))]

    def failing_once(fd: int) -> None:
        if failures:
            raise failures.pop()
        fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_once)
    fill(store, 0, 1)
    assert checkpointer.checkpoint() is not None and checkpointer.pending() == {str(cp_path): [3]}
    assert cp_path.read_bytes() == b"", "a line that may not be on the disk is not left in the file"
    fill(store, 1, 1)
    assert checkpointer.checkpoint() is not None and checkpointer.pending() == {}
    assert complete_lines(cp_path) == [3, 6], "each checkpoint once"


def test_a_fragment_that_could_not_be_removed_is_cut_before_the_next_line(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.checkpoints")
    key_path = tmp_path / "signing.key"
    disk = FillingDisk(tmp_path / "checkpoints.jsonl")
    checkpointer = Checkpointer(store, load_or_create_key(key_path), disk, every_events=3, every_s=3600)
    fill(store, 0, 1)
    assert checkpointer.checkpoint() is not None  # seq 3

    def refused(fd: int, size: int) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    disk.room = 40
    with monkeypatch.context() as patch:
        patch.setattr(os, "ftruncate", refused)
        fill(store, 1, 1)
        refused_cp = checkpointer.checkpoint()  # seq 6: cut short, and the fragment stays
    assert refused_cp is not None and checkpointer.pending() == {disk.name: [6]}
    assert not disk.path.read_bytes().endswith(b"\n")
    torn = verify_store(store, disk.path, public_path(key_path))
    assert torn.ok and torn.checkpoints == 1 and "incomplete" in torn.warnings[0], torn

    disk.room = None
    fill(store, 2, 1)
    assert checkpointer.checkpoint() is not None and checkpointer.pending() == {}
    assert complete_lines(disk.path) == [3, 6, 9]
    result = verify_store(store, disk.path, public_path(key_path))
    assert result.ok and result.checkpoints == 3 and not result.warnings, result

    messages = [r.getMessage() for r in caplog.records]
    assert any("could not be removed" in m for m in messages)
    assert any("incomplete last line" in m and "was cut" in m for m in messages)
    for r in caplog.records:  # the sink, the cause, a count: never the checkpoint itself
        assert refused_cp.hash not in repr(r.__dict__) and refused_cp.signature not in repr(r.__dict__)


def test_a_file_the_gateway_may_only_write_still_takes_checkpoints(
    store: SQLiteStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opened for writing only when reading is refused (mode 0200): no tail to check, lines appended."""
    key_path, cp_path = tmp_path / "signing.key", tmp_path / "checkpoints.jsonl"
    checkpointer = Checkpointer(store, load_or_create_key(key_path), cp_path, every_events=3, every_s=3600)
    os_open = os.open

    def write_only(path: str | Path, flags: int, mode: int = 0o777) -> int:
        if Path(path) == cp_path and flags & os.O_ACCMODE != os.O_WRONLY:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return os_open(path, flags, mode)

    monkeypatch.setattr(os, "open", write_only)
    for i in range(2):
        fill(store, i, 1)
        assert checkpointer.checkpoint() is not None
    assert checkpointer.pending() == {}
    monkeypatch.undo()
    assert complete_lines(cp_path) == [3, 6]


def test_a_checkpoint_file_on_a_full_tmpfs_keeps_complete_lines_only(
    store: SQLiteStore, tmp_path: Path
) -> None:
    """The file on a real 4 KiB tmpfs: the write that finds it full is cut short by the file system."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a 4 KiB tmpfs needs root and mount(8)")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 4 KiB tmpfs here: {mounted.stderr.strip()}")
    try:
        key_path, cp_path = tmp_path / "signing.key", mount_point / "checkpoints.jsonl"
        checkpointer = Checkpointer(
            store, load_or_create_key(key_path), cp_path, every_events=3, every_s=3600
        )
        for i in range(40):  # about 200 bytes a line: the disk is full after some 20
            fill(store, i, 1)
            assert checkpointer.checkpoint() is not None
            if checkpointer.pending():
                break
        else:
            pytest.fail("the 4 KiB tmpfs never filled up")
        refused = checkpointer.pending()[str(cp_path)]
        written = complete_lines(cp_path)
        assert written == [3 * n for n in range(1, len(written) + 1)] and refused == [written[-1] + 3]
        assert verify_store(store, cp_path, public_path(key_path)).ok

        subprocess.run(["mount", "-o", "remount,size=64k", str(mount_point)], check=True)  # space again
        fill(store, 40, 1)
        last = checkpointer.checkpoint()
        assert last is not None and checkpointer.pending() == {}
        assert complete_lines(cp_path) == [*written, refused[0], last.seq]
        result = verify_store(store, cp_path, public_path(key_path), require_checkpoints=True)
        assert result.ok and result.checkpoints == len(written) + 2 and not result.warnings, result
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


# -- reading a file whose last line is incomplete -------------------------------------------------------


def test_an_incomplete_last_line_is_an_interrupted_write_not_an_alteration(
    pinned: tuple[SQLiteStore, Path, Path],
) -> None:
    store, cp_path, key_path = pinned
    key = load_or_create_key(key_path)
    fill(store, 6, 1)
    head = store.lineage_head()
    assert head is not None
    cp_path.write_bytes(cp_path.read_bytes() + orjson.dumps(sign(key, *head).as_dict())[:50])

    result = verify_store(store, cp_path, public_path(key_path), require_checkpoints=True)
    assert result.ok and result.checkpoints == 2, result
    assert result.warnings == (
        f"the last line of the checkpoint file {cp_path} (line 3) is incomplete"
        " (an interrupted write); it was not used",
    )
    assert [c.seq for c in read_verified(cp_path, load_public_key(public_path(key_path)))[0]] == [9, 18]

    # a restart resumes from the last complete line, and the next line replaces the fragment
    checkpointer = Checkpointer(store, key, cp_path, every_events=3, every_s=3600)
    assert checkpointer.last_seq == 18
    assert checkpointer.checkpoint() is not None
    assert complete_lines(cp_path) == [9, 18, 21]
    assert verify_store(store, cp_path, public_path(key_path)).warnings == ()


@pytest.mark.parametrize(
    ("damage", "line"),
    [
        (lambda lines, torn: [lines[0], torn, lines[1]], 2),  # a fragment followed by more lines
        (lambda lines, torn: [*lines, torn], 3),  # a fragment ended by a newline
        (lambda lines, torn: [lines[0], torn + lines[1]], 2),  # a line appended after a fragment
    ],
    ids=["in-the-middle", "ended-by-a-newline", "glued-to-the-next-line"],
)
def test_a_line_that_cannot_be_read_elsewhere_still_fails(
    pinned: tuple[SQLiteStore, Path, Path],
    damage: Callable[[list[bytes], bytes], list[bytes]],
    line: int,
) -> None:
    store, cp_path, key_path = pinned
    lines = cp_path.read_bytes().splitlines()
    cp_path.write_bytes(b"".join(x + b"\n" for x in damage(lines, lines[1][:50])))
    result = verify_store(store, cp_path, public_path(key_path))
    assert not result.ok and result.reason == f"checkpoint on line {line} cannot be read", result
    assert not result.warnings
