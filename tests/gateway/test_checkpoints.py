"""Signed checkpoints pin the lineage chain: a cut tail and a rewritten-and-rehashed tail are found."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from gateway.checkpoints import (
    Checkpointer,
    load_or_create_key,
    public_path,
    read_verified,
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
