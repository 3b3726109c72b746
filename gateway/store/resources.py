"""Versioned resources: the tables behind the FHIR API (current versions, every version, index rows).

Plain functions over a sqlite3 connection. Writes run inside the store's
transaction (as the effect of the intake record that carries the write), so a
resource version and the envelope that wrote it commit together or not at all;
reads run on a reader connection. A body and its index rows are opaque here:
what they hold is the FHIR adapter's business.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Version:
    """One version of a resource; a deletion is a version with ``deleted`` set and an empty body."""

    type: str
    id: str
    version: int
    last_updated: str
    deleted: bool
    message_id: str
    body: bytes
    method: str = ""
    """How the version came to be: ``POST``, ``PUT`` or ``DELETE`` (history answers it)."""


class IndexEntry(Protocol):
    """A search index row of a resource (``adapters.fhir.search.IndexRow``)."""

    @property
    def param(self) -> str: ...
    @property
    def system(self) -> str: ...
    @property
    def value(self) -> str: ...
    @property
    def exact(self) -> str | None: ...
    @property
    def low(self) -> str | None: ...
    @property
    def high(self) -> str | None: ...
    @property
    def num(self) -> float | None: ...


_CURRENT = "SELECT type, id, version, last_updated, deleted, message_id, body FROM fhir_resources"
_VERSIONS = "SELECT type, id, version, last_updated, deleted, message_id, body, method FROM fhir_versions"


def _version(row: Sequence[Any]) -> Version:
    return Version(row[0], row[1], row[2], row[3], bool(row[4]), row[5], bytes(row[6]), *row[7:8])


def current(conn: sqlite3.Connection, rtype: str, rid: str) -> Version | None:
    """The current version of a resource (a tombstone when it was deleted), or ``None``."""
    row = conn.execute(f"{_CURRENT} WHERE type = ? AND id = ?", (rtype, rid)).fetchone()
    return _version(row) if row else None


def version_of(conn: sqlite3.Connection, rtype: str, rid: str, vid: int) -> Version | None:
    row = conn.execute(f"{_VERSIONS} WHERE type = ? AND id = ? AND version = ?", (rtype, rid, vid)).fetchone()
    return _version(row) if row else None


def put(conn: sqlite3.Connection, v: Version, index: Iterable[IndexEntry]) -> None:
    """Write ``v`` as the resource's current version and replace its index rows (none when deleted)."""
    conn.execute(
        "INSERT INTO fhir_versions (type, id, version, last_updated, method, deleted, message_id, body)"
        " VALUES (?,?,?,?,?,?,?,?)",
        (v.type, v.id, v.version, v.last_updated, v.method, int(v.deleted), v.message_id, v.body),
    )
    conn.execute(
        "INSERT INTO fhir_resources (type, id, version, last_updated, deleted, message_id, body)"
        " VALUES (?,?,?,?,?,?,?) ON CONFLICT (type, id) DO UPDATE SET version = excluded.version,"
        " last_updated = excluded.last_updated, deleted = excluded.deleted,"
        " message_id = excluded.message_id, body = excluded.body",
        (v.type, v.id, v.version, v.last_updated, int(v.deleted), v.message_id, v.body),
    )
    conn.execute("DELETE FROM fhir_index WHERE type = ? AND id = ?", (v.type, v.id))
    if not v.deleted:
        conn.executemany(
            "INSERT INTO fhir_index (type, param, id, system, value, exact, low, high, num)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            [(v.type, e.param, v.id, e.system, e.value, e.exact, e.low, e.high, e.num) for e in index],
        )


def versions_of(conn: sqlite3.Connection, rtype: str, rid: str) -> list[Version]:
    """Every version of a resource, oldest first (tombstones included)."""
    rows = conn.execute(f"{_VERSIONS} WHERE type = ? AND id = ? ORDER BY version", (rtype, rid)).fetchall()
    return [_version(r) for r in rows]


def referring(
    conn: sqlite3.Connection,
    rtype: str,
    params: Sequence[str],
    values: Sequence[str],
    limit: int | None = None,
) -> list[tuple[str, str]]:
    """(type, id) of the current ``rtype`` resources whose index rows of ``params`` hold one of ``values``
    (references such as ``Patient/p1``), at most ``limit`` of them, the same ones every time."""
    # the value index by name: for DISTINCT type, id SQLite would rather walk every row of the type
    sql = (
        "SELECT DISTINCT type, id FROM fhir_index INDEXED BY fhir_index_value WHERE type = ?"  # noqa: S608
        f" AND param IN ({','.join('?' * len(params))}) AND value IN ({','.join('?' * len(values))})"
    )
    args: list[Any] = [rtype, *params, *values]
    if limit is not None:
        sql += " ORDER BY type, id LIMIT ?"
        args.append(limit)
    return [(r[0], r[1]) for r in conn.execute(sql, args)]


def written_for(conn: sqlite3.Connection, key_pseudonym: str) -> list[tuple[str, str]]:
    """(type, id) of the resources with a version written by a message whose business keys include the
    one with this pseudonym (deleted resources and earlier versions too: the index holds neither)."""
    rows = conn.execute(
        "SELECT DISTINCT v.type, v.id FROM message_keys k JOIN fhir_versions v ON v.message_id = k.message_id"
        " WHERE k.pseudonym = ?",
        (key_pseudonym,),
    )
    return [(r[0], r[1]) for r in rows]


def expunge(conn: sqlite3.Connection, rtype: str, rid: str, versions: Sequence[int] | None = None) -> None:
    """Remove a resource for good: every version, the current one and its index rows; with ``versions``,
    only those earlier versions (the current one stays as it is, and so does its index)."""
    if versions is not None:
        conn.executemany(
            "DELETE FROM fhir_versions WHERE type = ? AND id = ? AND version = ?",
            [(rtype, rid, v) for v in versions],
        )
        return
    for table in ("fhir_versions", "fhir_resources", "fhir_index"):
        conn.execute(f"DELETE FROM {table} WHERE type = ? AND id = ?", (rtype, rid))  # noqa: S608


def history(
    conn: sqlite3.Connection,
    rtype: str | None,
    rid: str | None,
    since: str | None,
    limit: int,
    offset: int,
) -> tuple[int, list[Version]]:
    """Versions, newest first, of one resource, one type or everything: (total, one page)."""
    clauses, args = [], []
    for clause, value in (("type = ?", rtype), ("id = ?", rid), ("last_updated >= ?", since)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    (total,) = conn.execute(f"SELECT count(*) FROM fhir_versions{where}", args).fetchone()  # noqa: S608
    rows = conn.execute(
        f"{_VERSIONS}{where} ORDER BY last_updated DESC, version DESC LIMIT ? OFFSET ?",
        [*args, limit, offset],
    ).fetchall()
    return int(total), [_version(r) for r in rows]


def search(
    conn: sqlite3.Connection,
    rtype: str,
    where: str,
    args: Sequence[Any],
    order_by: str,
    order_args: Sequence[Any],
    limit: int,
    offset: int,
) -> list[Version]:
    """Current, not-deleted versions of ``rtype`` that satisfy ``where`` (SQL over alias ``r``)."""
    sql = (
        "SELECT r.type, r.id, r.version, r.last_updated, r.deleted, r.message_id, r.body"  # noqa: S608
        f" FROM fhir_resources r WHERE r.type = ? AND r.deleted = 0 AND ({where})"
        f" ORDER BY {order_by} LIMIT ? OFFSET ?"
    )
    rows = conn.execute(sql, [rtype, *args, *order_args, limit, offset]).fetchall()
    return [_version(r) for r in rows]


def count(
    conn: sqlite3.Connection, rtype: str, where: str, args: Sequence[Any], at_most: int | None = None
) -> int:
    """How many current resources satisfy ``where``; with ``at_most``, counting stops past it (a broad
    search over a million resources must not read them all to say how many there are)."""
    inner = f"SELECT 1 FROM fhir_resources r WHERE r.type = ? AND r.deleted = 0 AND ({where})"  # noqa: S608
    if at_most is not None:
        inner += f" LIMIT {int(at_most) + 1}"
    (n,) = conn.execute(f"SELECT count(*) FROM ({inner})", [rtype, *args]).fetchone()  # noqa: S608
    return int(n)


def matching_ids(
    conn: sqlite3.Connection, rtype: str, where: str, args: Sequence[Any], limit: int
) -> list[str]:
    """Ids of current resources that satisfy ``where`` (conditional create, update and references)."""
    sql = f"SELECT r.id FROM fhir_resources r WHERE r.type = ? AND r.deleted = 0 AND ({where}) LIMIT ?"  # noqa: S608
    return [row[0] for row in conn.execute(sql, [rtype, *args, limit])]


def current_many(conn: sqlite3.Connection, refs: Iterable[tuple[str, str]]) -> list[Version]:
    """The current, not-deleted versions of the given (type, id) pairs that exist (``_include``)."""
    out = []
    for rtype, rid in dict.fromkeys(refs):
        v = current(conn, rtype, rid)
        if v is not None and not v.deleted:
            out.append(v)
    return out
