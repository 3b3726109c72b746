"""The POSLog drop folder on a real store: files in, done/ or failed/ out, nothing read that is not the POS's."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.retail.poslog import POSLogAdapter
from adapters.retail.poslog_drop import DropFolder
from gateway.envelope import Receipt
from gateway.errors import ConfigError
from gateway.pipeline import Intake
from gateway.store import MessageFilter
from gateway.store.sqlite import SQLiteStore
from tests.retail_messages import poslog_sale


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    s.open()
    yield s
    s.close()


def run(store: SQLiteStore, folder: Path, max_bytes: int = 1 << 20) -> int:
    async def go() -> int:
        drop = DropFolder(Intake(store), POSLogAdapter(), folder, settle_s=0, max_bytes=max_bytes)
        for sub in (folder, drop.done, drop.failed):
            sub.mkdir(parents=True, exist_ok=True)
        moved = await drop.poll()
        await store.flush()
        return moved

    return asyncio.run(go())


def reply(folder: Path, name: str) -> dict[str, object]:
    return dict(json.loads((folder / "failed" / f"{name}.reply.json").read_text()))


def test_good_files_go_to_done_and_bad_ones_to_failed_with_their_reply(
    store: SQLiteStore, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.xml").write_bytes(poslog_sale("7", "1", 1, [("SKU-1", 2)]))
    (drop / "b.xml").write_bytes(poslog_sale("7", "1", 2, [("SKU-1", 10**20)]))  # no sale is that large
    (drop / "c.xml").write_bytes(poslog_sale("7", "1", 3, [("SKU-2", 1)]))
    (drop / "d.tmp").write_bytes(b"still being written")
    assert run(store, drop) == 3
    assert sorted(p.name for p in (drop / "done").iterdir()) == ["a.xml", "c.xml"]
    assert (drop / "failed" / "b.xml").exists()
    assert [i["code"] for i in reply(drop, "b.xml")["issues"]] == ["quantity_invalid"]  # type: ignore[index]
    assert (drop / "d.tmp").exists()
    assert len(store.list_messages(MessageFilter(protocol="poslog"))) == 3


def test_links_are_never_read(store: SQLiteStore, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    outside = tmp_path / "secret.xml"
    outside.write_bytes(poslog_sale("7", "1", 9, [("TOP-SECRET-SKU", 1)]))
    (drop / "link.xml").symlink_to(outside)
    os.link(outside, drop / "hard.xml")
    assert run(store, drop) == 1  # the symbolic link is not even picked up; the hard link is refused
    assert [i["code"] for i in reply(drop, "hard.xml")["issues"]] == ["not_a_file"]  # type: ignore[index]
    assert store.list_messages(MessageFilter()) == []
    assert (drop / "link.xml").is_symlink() and outside.exists()


@pytest.mark.parametrize("victim_exists", [True, False])
def test_a_link_where_the_reply_would_go_is_never_written_through(
    store: SQLiteStore, tmp_path: Path, victim_exists: bool
) -> None:
    drop = tmp_path / "drop"
    (drop / "failed").mkdir(parents=True)
    victim = tmp_path / "victim"
    if victim_exists:
        victim.write_bytes(b"precious")
    (drop / "failed" / "evil.xml.reply.json").symlink_to(victim)
    (drop / "evil.xml").write_bytes(b"<POSLog><Broken>")
    assert run(store, drop) == 1
    assert (victim.read_bytes() == b"precious") if victim_exists else not victim.exists()
    assert os.readlink(drop / "failed" / "evil.xml.reply.json") == str(victim)
    (taken,) = [p for p in (drop / "failed").iterdir() if p.suffix == ".xml"]
    assert taken.name != "evil.xml" and taken.read_bytes() == b"<POSLog><Broken>"
    assert [i["code"] for i in reply(drop, taken.name)["issues"]] == ["not_well_formed"]  # type: ignore[index]


def test_a_link_where_the_file_would_go_is_left_alone(store: SQLiteStore, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    (drop / "done").mkdir(parents=True)
    victim = tmp_path / "victim"
    (drop / "done" / "a.xml").symlink_to(victim)  # dangling: renaming onto it would replace the link
    (drop / "a.xml").write_bytes(poslog_sale("7", "1", 1, [("SKU-1", 1)]))
    assert run(store, drop) == 1
    assert not victim.exists() and (drop / "done" / "a.xml").is_symlink()
    assert len([p for p in (drop / "done").iterdir() if not p.is_symlink()]) == 1


@pytest.mark.parametrize("sub", ["done", "failed"])
def test_start_refuses_a_done_or_failed_folder_that_is_a_link(
    store: SQLiteStore, tmp_path: Path, sub: str
) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (drop / sub).symlink_to(elsewhere)
    (drop / "a.xml").write_bytes(b"<POSLog><Broken>")

    async def go() -> None:
        await DropFolder(Intake(store), POSLogAdapter(), drop, settle_s=0).start()

    with pytest.raises(ConfigError, match=f"{sub}/ must be a real directory"):
        asyncio.run(go())
    assert list(elsewhere.iterdir()) == [] and (drop / "a.xml").exists()


def test_a_folder_swapped_for_a_link_after_start_is_not_written_through(
    store: SQLiteStore, tmp_path: Path
) -> None:
    drop = tmp_path / "drop"
    (drop / "done").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (drop / "failed").symlink_to(elsewhere)
    (drop / "a.xml").write_bytes(b"<POSLog><Broken>")
    assert run(store, drop) == 0  # the file stays and is tried again
    assert list(elsewhere.iterdir()) == [] and (drop / "a.xml").exists()


def test_a_file_over_the_limit_is_refused_unread(store: SQLiteStore, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "huge.xml").write_bytes(poslog_sale("7", "1", 1, [("SKU-1", 1)]) + b" " * 5000)
    assert run(store, drop, max_bytes=4096) == 1
    assert [i["code"] for i in reply(drop, "huge.xml")["issues"]] == ["too_large"]  # type: ignore[index]
    assert store.list_messages(MessageFilter()) == []


def test_the_same_name_twice_keeps_both(store: SQLiteStore, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "day.xml").write_bytes(poslog_sale("7", "1", 1, [("SKU-1", 1)]))
    run(store, drop)
    (drop / "day.xml").write_bytes(poslog_sale("7", "1", 2, [("SKU-1", 1)]))
    run(store, drop)
    assert len(list((drop / "done").iterdir())) == 2


def test_when_the_store_cannot_take_it_the_file_stays(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "gw.db", b"k" * 32)
    store.open()
    store.close()  # every commit now fails: intake answers 503
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "a.xml").write_bytes(poslog_sale("7", "1", 1, [("SKU-1", 1)]))

    async def go() -> int:
        folder = DropFolder(Intake(store), POSLogAdapter(), drop, settle_s=0)
        await folder.start()
        await folder.stop()
        return await folder.poll()

    assert asyncio.run(go()) == 0
    assert (drop / "a.xml").exists()
    assert not list((drop / "failed").iterdir()) and not list((drop / "done").iterdir())


def test_a_transaction_posted_alone_is_a_duplicate_in_the_day_file(
    store: SQLiteStore, tmp_path: Path
) -> None:
    one = poslog_sale("7", "1", 1, [("SKU-1", 2)])
    two = poslog_sale("7", "1", 2, [("SKU-1", 1)])

    def transaction(doc: bytes) -> bytes:
        return doc[doc.index(b"<Transaction>") : doc.index(b"</POSLog>")]

    day = (
        b'<?xml version="1.0"?>\n<POSLog xmlns="http://www.nrf-arts.org/IXRetail/namespace/" '
        b'xmlns:x="urn:vendor">\n  ' + transaction(one) + b"\n  " + transaction(two) + b"\n</POSLog>"
    )

    async def go() -> list[str]:
        intake = Intake(store, on_stock=lambda skus: None)
        adapter = POSLogAdapter()
        first = await intake.receive(adapter, one, Receipt("http"))
        later = await intake.receive(adapter, day, Receipt("poslog-drop"))
        assert first.replies[0].status == 200
        return [*first.decisions, *later.decisions]

    assert asyncio.run(go()) == ["stored", "duplicate", "stored"]
    assert store.stock("SKU-1").on_hand == -3  # the first sale counted once
