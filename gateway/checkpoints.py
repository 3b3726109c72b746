"""Signed lineage checkpoints: the chain head, signed with Ed25519 and kept outside the database.

The hash chain alone shows an edit, a deletion or a reordering, but not a
truncated tail nor a tail that was rewritten and hashed again: both leave a
chain that is consistent with itself. A checkpoint (``seq``, ``hash``, ``at``,
signature) taken every N events or T seconds and appended to a file outside
the database pins the chain: :func:`gateway.lineage.verify_chain` then names
the first event after the last checkpoint that still matches.

The signing key is a file (mode 0600) outside the database; its public half
is written beside it as ``<key>.pub`` so that an auditor can verify with the
public key alone. A checkpoint whose signature does not verify is reported
and not trusted.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.envelope import utcnow
from gateway.lineage import Verification
from gateway.store import Store

log = logging.getLogger("gateway.checkpoints")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    key_id: str
    signature: str

    def signed_bytes(self) -> bytes:
        return orjson.dumps({"at": self.at, "hash": self.hash, "seq": self.seq}, option=orjson.OPT_SORT_KEYS)

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "key_id": self.key_id,
            "sig": self.signature,
        }


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The signing key at ``path`` (PEM, mode 0600), created with its ``.pub`` on first use."""
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        public_path(path).write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def public_path(key_path: Path) -> Path:
    return key_path.with_name(key_path.name + ".pub")


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 public key")
    return key


def sign(key: Ed25519PrivateKey, seq: int, chain_hash: str) -> Checkpoint:
    unsigned = Checkpoint(seq, chain_hash, utcnow().isoformat(), key_id(key.public_key()), "")
    signature = base64.b64encode(key.sign(unsigned.signed_bytes())).decode()
    return Checkpoint(seq, chain_hash, unsigned.at, unsigned.key_id, signature)


def append(path: Path, checkpoint: Checkpoint) -> None:
    """Append one checkpoint as a JSON line and make it durable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab") as fh:
        fh.write(orjson.dumps(checkpoint.as_dict()) + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_verified(path: Path, public: Ed25519PublicKey) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints from ``path`` whose signatures verify, in order, and a sentence per one that does not."""
    good: list[Checkpoint] = []
    problems: list[str] = []
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return [], [f"no checkpoint file at {path}"]
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
            cp = Checkpoint(int(d["seq"]), str(d["hash"]), str(d["at"]), str(d["key_id"]), str(d["sig"]))
            public.verify(base64.b64decode(cp.signature), cp.signed_bytes())
        except InvalidSignature:
            problems.append(f"checkpoint on line {number} has an invalid signature")
            continue
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            problems.append(f"checkpoint on line {number} cannot be read")
            continue
        good.append(cp)
    return good, problems


def verify_store(
    store: Store, checkpoint_file: Path, public_key_file: Path, *, require_checkpoints: bool = False
) -> Verification:
    """Recompute the chain and hold it against every checkpoint whose signature verifies.

    A checkpoint that cannot be read or whose signature fails means the file
    was altered: the verification fails. No checkpoint file is only a warning
    (a new installation has none yet) unless ``require_checkpoints``.
    """
    warnings: list[str] = []
    checkpoints: list[Checkpoint] = []
    if public_key_file.exists():
        checkpoints, problems = read_verified(checkpoint_file, load_public_key(public_key_file))
        missing = [p for p in problems if p.startswith("no checkpoint file")]
        altered = [p for p in problems if p not in missing]
        warnings.extend(missing)
    else:
        altered = []
        warnings.append(f"no public key at {public_key_file}: checkpoints not checked")
    result = store.verify_lineage([(c.seq, c.hash) for c in checkpoints])
    if altered:
        return replace(result, ok=False, reason="; ".join(altered), warnings=tuple(warnings))
    if require_checkpoints and not checkpoints:
        return replace(
            result, ok=False, reason="no signed checkpoint to verify against", warnings=tuple(warnings)
        )
    return replace(result, warnings=tuple(warnings))


class Checkpointer:
    """Writes a checkpoint every ``every_events`` events or ``every_s`` seconds while the head moves."""

    def __init__(
        self, store: Store, key: Ed25519PrivateKey, path: Path, every_events: int, every_s: float
    ) -> None:
        self.store = store
        self.key = key
        self.path = path
        self.every_events = every_events
        self.every_s = every_s
        self.last_seq = 0
        self.last_time = time.monotonic()
        self._task: asyncio.Task[None] | None = None
        with contextlib.suppress(OSError):
            lines = path.read_bytes().splitlines()
            if lines:
                self.last_seq = int(orjson.loads(lines[-1])["seq"])

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def checkpoint(self, force: bool = False) -> Checkpoint | None:
        head = self.store.lineage_head()
        if head is None or head[0] <= self.last_seq:
            return None
        due = (
            head[0] - self.last_seq >= self.every_events or time.monotonic() - self.last_time >= self.every_s
        )
        if not (due or force):
            return None
        cp = sign(self.key, head[0], head[1])
        append(self.path, cp)
        self.last_seq, self.last_time = cp.seq, time.monotonic()
        return cp

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.every_s))
            try:
                await asyncio.to_thread(self.checkpoint)
            except Exception:
                log.exception("lineage checkpoint failed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            self.checkpoint(force=True)
        except Exception:
            log.exception("final lineage checkpoint failed")
