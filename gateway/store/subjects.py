"""Per-subject data keys: bodies of routes with ``storage: encrypted`` are sealed under their subject's key.

Envelope encryption: each data subject (a patient, a customer, named by a header
the route chooses) has its own random AES-256 data key; the data keys live in a
small SQLite file of their own (``subject-keys.db``), each wrapped (AES-GCM)
under a master key kept in a file outside both databases
(``subject-master.key``, mode 0600). A body is sealed as ``GWE1 || nonce ||
AES-GCM(data key, body, aad = message id)``.

Erasing a subject deletes its data key (with ``secure_delete`` on, the freed
pages are overwritten): every body sealed under it becomes unreadable, while
the lineage chain, which holds only digests and pseudonyms, still verifies.
The key goes only after the erasure is committed in the main database, with a
``pending_erasures`` row that keeps it to be destroyed should the process stop
in between (``SQLiteStore.erase_subject``).
Subjects are known here only by their keyed pseudonyms, never by value.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.envelope import utcnow
from gateway.errors import StoreError

MAGIC = b"GWE1"
NONCE = 12
MASTER_FILE = "subject-master.key"
KEYS_FILE = "subject-keys.db"


class BodyErased(StoreError):
    """The body was sealed under a subject key that has been erased: it cannot be read any more."""


def master_key(data_dir: Path) -> bytes:
    """The master key that wraps the data keys; created (0600) on first use."""
    path = data_dir / MASTER_FILE
    if not path.exists():
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(AESGCM.generate_key(bit_length=256))
    key = path.read_bytes()
    if len(key) != 32:
        raise StoreError(f"{path} does not hold a 256-bit key")
    return key


def seal_body(key: bytes, plain: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE)
    return MAGIC + nonce + AESGCM(key).encrypt(nonce, plain, aad)


def unseal_body(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    if not sealed.startswith(MAGIC):
        raise StoreError("not a sealed body")
    nonce, body = sealed[len(MAGIC) : len(MAGIC) + NONCE], sealed[len(MAGIC) + NONCE :]
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise StoreError("a sealed body failed its integrity check") from None


class SubjectKeys:
    """The data keys, one per subject pseudonym, wrapped under the master key."""

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / KEYS_FILE
        self._master: bytes | None = None
        self._data_dir = data_dir

    def _conn(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA secure_delete = ON")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS subject_keys (subject TEXT PRIMARY KEY, wrapped BLOB NOT NULL,"
            " created_at TEXT NOT NULL)"
        )
        return conn

    def _wrapping(self) -> AESGCM:
        if self._master is None:
            self._master = master_key(self._data_dir)
        return AESGCM(self._master)

    def key(self, subject: str, *, create: bool) -> bytes | None:
        """The subject's data key; a new one when ``create`` and there is none; None when erased/absent."""
        with self._conn() as conn:  # read every time, never cached: an erasure elsewhere counts at once
            row = conn.execute("SELECT wrapped FROM subject_keys WHERE subject = ?", (subject,)).fetchone()
            if row is None:
                if not create:
                    return None
                dek = AESGCM.generate_key(bit_length=256)
                wrapped = seal_key(self._wrapping(), dek, subject)
                conn.execute(
                    "INSERT OR IGNORE INTO subject_keys (subject, wrapped, created_at) VALUES (?,?,?)",
                    (subject, wrapped, utcnow().isoformat()),
                )
                row = conn.execute(
                    "SELECT wrapped FROM subject_keys WHERE subject = ?", (subject,)
                ).fetchone()
        return open_key(self._wrapping(), bytes(row[0]), subject)

    def has(self, subject: str) -> bool:
        """Whether the subject has a data key now."""
        with self._conn() as conn:
            return (
                conn.execute("SELECT 1 FROM subject_keys WHERE subject = ?", (subject,)).fetchone()
                is not None
            )

    def erase(self, subject: str) -> bool:
        """Delete the subject's data key for good; True when there was one."""
        with self._conn() as conn:
            cur = conn.execute("DELETE FROM subject_keys WHERE subject = ?", (subject,))
            conn.execute("VACUUM")
            return cur.rowcount > 0


def seal_key(wrapping: AESGCM, dek: bytes, subject: str) -> bytes:
    nonce = os.urandom(NONCE)
    return nonce + wrapping.encrypt(nonce, dek, subject.encode())


def open_key(wrapping: AESGCM, wrapped: bytes, subject: str) -> bytes:
    try:
        return wrapping.decrypt(wrapped[:NONCE], wrapped[NONCE:], subject.encode())
    except InvalidTag:
        raise StoreError("a subject key failed its integrity check (wrong master key?)") from None
