"""Signed lineage checkpoints: the chain head, signed with Ed25519 and kept outside the database.

The hash chain alone shows an edit, a deletion or a reordering, but not a
truncated tail nor a tail that was rewritten and hashed again: both leave a
chain that is consistent with itself. A checkpoint (``seq``, ``hash``, ``at``,
signature) taken every N events or T seconds and kept outside the database
pins the chain: :func:`gateway.lineage.verify_chain` then names the first
event after the last checkpoint that still matches.

Where checkpoints are kept is a *checkpoint sink* (:class:`CheckpointSink`),
one or several, chosen by the operator:

* :class:`FileCheckpoints` appends them to a file, one JSON line each, made
  durable with ``fsync`` (keep it off the database's disk). A line that
  could not be written whole (a full disk) is cut off again, and a last line
  left without its newline (a crash) is cut off before the next one is
  appended, so every line the file keeps is complete;
* :class:`HTTPCheckpoints` POSTs each one (``Checkpoint.as_dict()`` as JSON,
  with an optional bearer token) to an endpoint the operator runs elsewhere,
  and reads them back with a GET on the same URL, answered as JSON lines or
  as a JSON array. It sends no proxy settings from the environment and
  follows no redirect (the token goes to that URL only).

:class:`Checkpointer` signs checkpoints and appends each one to every sink;
it runs its work in a worker thread, never in the event loop. A checkpoint a
sink refuses (a full disk, an endpoint that is down) is kept in memory and
retried, in order, with the next one (or after ``every_s`` when the chain is
quiet); every failure is logged as a warning naming the sink, never a token;
the checkpoints still unwritten when the gateway stops are logged too.

:func:`verify_store` reads every sink, keeps the checkpoints whose signature
verifies and holds the chain against them. The signing key is a file (mode
0600) outside the database; its public half is written beside it as
``<key>.pub`` so that an auditor can verify with the public key alone. A
checkpoint whose signature does not verify, a sink that cannot be read (other
than one that holds nothing yet) and two signed checkpoints that disagree on
one seq are reported and fail the verification; none is trusted. The one
exception is the last line of a checkpoint file when it has no newline: an
append that was interrupted, not an alteration, so it is left out with a
warning. Any other line that cannot be read, ended by a newline or followed
by more lines, fails the verification.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from http.client import HTTPException, HTTPMessage
from pathlib import Path
from typing import IO, Any, Protocol

import orjson
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.envelope import utcnow
from gateway.errors import ConfigError
from gateway.lineage import Verification
from gateway.store import Store

log = logging.getLogger("gateway.checkpoints")

MAX_ANSWER_BYTES = 64 * 1024 * 1024
"""The most an endpoint's list of checkpoints may weigh (about 300,000 of them): verify never reads more."""
MAX_PENDING = 10_000
"""Checkpoints held for one sink that keeps failing; beyond, the oldest are dropped (with a warning):
a later checkpoint pins every event before it, so only the precision of the report is lost."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    seq: int
    hash: str
    at: str
    key_id: str
    signature: str
    kind: str = ""
    """``prune``: the last event removed by retention (signed, so a head deleted any other way, even
    through an ordinary checkpoint, is not taken for pruning); empty for the periodic ones."""

    def signed_bytes(self) -> bytes:
        fields: dict[str, Any] = {"at": self.at, "hash": self.hash, "seq": self.seq}
        if self.kind:
            fields["kind"] = self.kind
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "seq": self.seq,
            "hash": self.hash,
            "at": self.at,
            "key_id": self.key_id,
            "sig": self.signature,
        }
        if self.kind:
            out["kind"] = self.kind
        return out


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
    """The Ed25519 public key in the PEM file ``path``; :class:`ConfigError` when it cannot be read or
    holds anything else (a private key, another algorithm, not PEM)."""
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the public key ({exc.strerror or type(exc).__name__})"
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----)")
    return key


def sign(key: Ed25519PrivateKey, seq: int, chain_hash: str, kind: str = "") -> Checkpoint:
    unsigned = Checkpoint(seq, chain_hash, utcnow().isoformat(), key_id(key.public_key()), "", kind)
    signature = base64.b64encode(key.sign(unsigned.signed_bytes())).decode()
    return replace(unsigned, signature=signature)


# -- sinks ------------------------------------------------------------------------------------------


class CheckpointSinkError(Exception):
    """A sink could not be written or read; the message names the sink and the cause, never a secret."""


class CheckpointsMissing(CheckpointSinkError):
    """The sink holds no checkpoint yet (no file, HTTP 404): a new installation, so only a warning."""


Entry = tuple[str, object]
"""One stored checkpoint as read: where it is (``"on line 3"``) and its JSON (bytes, or already decoded)."""


class CheckpointSink(Protocol):
    """Where signed checkpoints are kept, outside the database.

    ``append`` and ``read`` block (a file, a network call): call them from a worker thread. Both raise
    :class:`CheckpointSinkError` (``read``: :class:`CheckpointsMissing` when there is nothing yet).
    """

    @property
    def name(self) -> str:
        """The sink in messages and logs: a path, or a URL without credentials nor query."""
        ...

    def append(self, checkpoint: Checkpoint) -> None: ...

    def read(self) -> list[Entry]: ...


class FileCheckpoints:
    """Checkpoints appended to a file, one JSON line each, made durable before ``append`` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"FileCheckpoints({str(self.path)!r})"

    @property
    def name(self) -> str:
        return str(self.path)

    def append(self, checkpoint: Checkpoint) -> None:
        """Append one line and ``fsync`` it; a line that could not be written whole is removed again.

        The file's size is noted before the line goes out: when ``write`` or ``fsync`` fails (a full
        disk), the file is cut back to that size, so no fragment of the line stays behind for the next
        one to be glued to, and the caller keeps the checkpoint to append it again. A last line left
        without its newline all the same (a crash, or a cut that failed too) is cut off before the next
        line is appended: see :meth:`_cut_torn_tail`. Appends from threads and processes take turns
        (``flock``).
        """
        line = orjson.dumps(checkpoint.as_dict()) + b"\n"
        readable = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            except PermissionError:  # a file the gateway may write but not read: no tail to look at
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
                readable = False
        except OSError as exc:
            raise CheckpointSinkError(
                f"checkpoint file {self.path} cannot be written: {_cause(exc)}"
            ) from exc
        try:
            # the checkpointer, retention and `gateway lineage prune` may append at once: one at a time,
            # or one's cut could remove another's line. Best effort where the file system has no locks.
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
            start = self._cut_torn_tail(fd) if readable else os.fstat(fd).st_size
            try:
                _write_all(fd, line)
                os.fsync(fd)
            except OSError:
                self._cut_back(fd, start)
                raise
        except OSError as exc:
            raise CheckpointSinkError(
                f"checkpoint file {self.path} cannot be written: {_cause(exc)}"
            ) from exc
        finally:
            os.close(fd)  # and the lock with it

    def _cut_torn_tail(self, fd: int) -> int:
        """Cut off a last line that has no newline, and return the size of the file, where the next line goes.

        Such a line is a write that was interrupted (the process or the machine stopped in the middle,
        or the disk filled and the fragment could not be removed): the checkpoint it began is either
        still pending in this gateway, or superseded by the next one, which pins every event before it.
        Cutting it, rather than starting the next line after it, leaves only complete lines: ended by a
        newline, the fragment would become a line in the middle of the file that cannot be read, which
        verification must take for an alteration. Every complete line is left as it is.
        """
        size = os.fstat(fd).st_size
        if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
            return size
        keep, end = 0, size
        while end > 0:
            begin = max(0, end - 65536)
            newline = os.pread(fd, end - begin, begin).rfind(b"\n")
            if newline >= 0:
                keep = begin + newline + 1
                break
            end = begin
        os.ftruncate(fd, keep)
        log.warning(
            "checkpoint file: an incomplete last line (an interrupted write) was cut before appending",
            extra={"sink": self.name, "bytes": size - keep},
        )
        return keep

    def _cut_back(self, fd: int, size: int) -> None:
        """After a failed append, remove what it wrote (best effort: the next append cuts it otherwise)."""
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        except OSError as exc:
            log.warning(
                "checkpoint file: the incomplete line of a failed append could not be removed;"
                " it is cut before the next checkpoint",
                extra={"sink": self.name, "error": _cause(exc)},
            )

    def read(self) -> list[Entry]:
        """The complete lines (an incomplete last line is left out: see :meth:`read_noting`)."""
        return self.read_noting()[0]

    def read_noting(self) -> tuple[list[Entry], list[str]]:
        """The complete lines, and a warning when the last line is incomplete.

        A last line without its newline is an append that was interrupted (a full disk, a crash): the
        writer ends every line it completes with one, so such a line is not used, and it is no sign of
        an alteration. A line that cannot be read anywhere else is left to verification, which fails.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            raise CheckpointsMissing(f"no checkpoint file at {self.path}") from None
        except OSError as exc:
            raise CheckpointSinkError(f"checkpoint file {self.path} cannot be read: {_cause(exc)}") from exc
        tail = data[data.rfind(b"\n") + 1 :]
        lines = data[: len(data) - len(tail)].splitlines()
        notes: list[str] = []
        if tail.strip():
            torn_line = data.count(b"\n") + 1
            notes.append(
                f"the last line of the checkpoint file {self.path} (line {torn_line}) is incomplete"
                " (an interrupted write); it was not used"
            )
        entries: list[Entry] = [
            (f"on line {number}", line) for number, line in enumerate(lines, start=1) if line.strip()
        ]
        return entries, notes

    def last_seq(self) -> int:
        """The seq of the last complete checkpoint in the file, 0 when there is none (or it cannot be read)."""
        with contextlib.suppress(CheckpointSinkError, ValueError, KeyError, TypeError, IndexError):
            last = self.read()[-1][1]
            if isinstance(last, bytes):
                return int(orjson.loads(last)["seq"])
        return 0


def _write_all(fd: int, data: bytes) -> None:
    """``data`` written whole to ``fd``, or OSError (a full disk writes part of it, then fails)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: the checkpoint (and the token) go to the configured URL only."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class HTTPCheckpoints:
    """Checkpoints POSTed one by one to ``url`` (JSON), and read back with a GET on the same URL.

    The endpoint answers the GET with the checkpoints it holds, as JSON lines or as a JSON array of
    objects; 404 means it holds none yet. ``bearer_token`` is sent as ``Authorization: Bearer`` and
    appears in no message, log or ``repr``. Any status but 2xx is a failure; redirects are not
    followed and proxy variables of the environment are ignored.
    """

    def __init__(
        self,
        url: str,
        bearer_token: str | None = None,
        timeout_s: float = 10.0,
        *,
        ca_file: Path | None = None,
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("checkpoint URL: expected an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise ValueError("checkpoint URL: carries credentials (user:password@); use a bearer token")
        if timeout_s <= 0:
            raise ValueError("checkpoint URL: the time-out must be positive")
        self.url = url
        self.timeout_s = timeout_s
        self._token = bearer_token or None
        self._name = urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({}), _NoRedirect()]
        if parts.scheme == "https":
            context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def __repr__(self) -> str:
        return f"HTTPCheckpoints({self._name!r})"

    @property
    def name(self) -> str:
        return self._name

    def append(self, checkpoint: Checkpoint) -> None:
        self._call("POST", orjson.dumps(checkpoint.as_dict()), {"Content-Type": "application/json"})

    def read(self) -> list[Entry]:
        body = self._call("GET", None, {"Accept": "application/x-ndjson, application/json"})
        if body.lstrip().startswith(b"["):
            try:
                items = orjson.loads(body)
            except orjson.JSONDecodeError:
                raise CheckpointSinkError(f"the checkpoints from {self._name} are not JSON") from None
            return [(f"at position {number}", item) for number, item in enumerate(items, start=1)]
        lines = body.splitlines()
        return [(f"on line {number}", line) for number, line in enumerate(lines, start=1) if line.strip()]

    def _call(self, method: str, body: bytes | None, headers: dict[str, str]) -> bytes:
        # S310: __init__ accepts http:// and https:// only
        request = urllib.request.Request(self.url, data=body, headers=headers, method=method)  # noqa: S310
        if self._token is not None:
            request.add_unredirected_header("Authorization", f"Bearer {self._token}")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                data: bytes = response.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                raise CheckpointSinkError(f"{self._name} answered more than {MAX_ANSWER_BYTES} bytes")
            return data
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 404 and method == "GET":
                raise CheckpointsMissing(f"no checkpoints at {self._name} (HTTP 404)") from None
            raise CheckpointSinkError(f"{method} {self._name} answered HTTP {exc.code}") from None
        except (OSError, HTTPException) as exc:
            raise CheckpointSinkError(f"{method} {self._name} failed: {_cause(exc)}") from None


def _cause(exc: BaseException) -> str:
    """The kind of failure, without the text a server or a library put in it."""
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{type(exc).__name__}: {exc.strerror}"
    return type(exc).__name__


CheckpointSources = Path | CheckpointSink | Sequence[CheckpointSink]
"""Where checkpoints are kept: sinks, one sink, or a path (a :class:`FileCheckpoints`)."""


def as_sinks(sources: CheckpointSources) -> list[CheckpointSink]:
    if isinstance(sources, Path):
        return [FileCheckpoints(sources)]
    if isinstance(sources, Sequence):
        return list(sources)
    return [sources]


def checkpoint_sinks(
    file: Path | None,
    url: str | None = None,
    *,
    token_env: str | None = None,
    timeout_s: float = 10.0,
    ca_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
) -> list[CheckpointSink]:
    """The sinks the settings name: a file, an endpoint (its bearer token read from the environment
    variable ``token_env``), or both; raises ConfigError for an unusable URL or an unset variable."""
    env = os.environ if environ is None else environ
    sinks: list[CheckpointSink] = []
    if file is not None:
        sinks.append(FileCheckpoints(file))
    if url is not None:
        token: str | None = None
        if token_env:
            token = env.get(token_env)
            if not token:
                raise ConfigError(
                    f"lineage.checkpoint_token_env: environment variable {token_env} is not set or empty"
                )
        try:
            sinks.append(HTTPCheckpoints(url, token, timeout_s, ca_file=ca_file))
        except ValueError as exc:
            raise ConfigError(f"lineage.checkpoint_url: {exc}") from None
    return sinks


# -- verification -----------------------------------------------------------------------------------


def _verified(entries: list[Entry], public: Ed25519PublicKey) -> tuple[list[Checkpoint], list[str]]:
    good: list[Checkpoint] = []
    problems: list[str] = []
    for where, value in entries:
        try:
            d = orjson.loads(value) if isinstance(value, bytes | str) else value
            if not isinstance(d, dict):
                raise TypeError("not an object")
            cp = Checkpoint(
                int(d["seq"]),
                str(d["hash"]),
                str(d["at"]),
                str(d["key_id"]),
                str(d["sig"]),
                str(d.get("kind", "")),
            )
            public.verify(base64.b64decode(cp.signature), cp.signed_bytes())
        except InvalidSignature:
            problems.append(f"checkpoint {where} has an invalid signature")
            continue
        except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
            problems.append(f"checkpoint {where} cannot be read")
            continue
        good.append(cp)
    return good, problems


def read_verified(
    source: Path | CheckpointSink, public: Ed25519PublicKey
) -> tuple[list[Checkpoint], list[str]]:
    """Checkpoints from ``source`` whose signatures verify, in order, and a sentence per one that does
    not (or why the source could not be read). A file's incomplete last line is no checkpoint: it is
    left out (:meth:`FileCheckpoints.read_noting`)."""
    sink = FileCheckpoints(source) if isinstance(source, Path) else source
    try:
        entries = sink.read()
    except CheckpointSinkError as exc:
        return [], [str(exc)]
    return _verified(entries, public)


def verify_store(
    store: Store, checkpoints: CheckpointSources, public_key_file: Path, *, require_checkpoints: bool = False
) -> Verification:
    """Recompute the chain and hold it against every checkpoint, from every sink, whose signature verifies.

    A checkpoint that cannot be read or whose signature fails means the sink
    was altered, and a sink that cannot be read (an endpoint that is down or
    refuses the token) means the chain cannot be held against it: the
    verification fails, as it does when two signed checkpoints name different
    hashes for one seq. A sink that holds nothing yet (no file, HTTP 404) is
    only a warning (a new installation has none yet) unless
    ``require_checkpoints``; so is a checkpoint file whose last line has no
    newline (an interrupted append), which is not used.
    """
    sinks = as_sinks(checkpoints)
    warnings: list[str] = []
    altered: list[str] = []
    held: list[Checkpoint] = []
    if public_key_file.exists():
        public = load_public_key(public_key_file)
        for sink in sinks:
            prefix = f"{sink.name}: " if len(sinks) > 1 else ""
            try:
                entries, notes = _read(sink)
            except CheckpointsMissing as exc:
                warnings.append(str(exc))
                continue
            except CheckpointSinkError as exc:
                altered.append(str(exc))
                continue
            warnings.extend(notes)
            good, problems = _verified(entries, public)
            held.extend(good)
            altered.extend(prefix + p for p in problems)
        altered.extend(_disagreements(held))
    else:
        warnings.append(f"no public key at {public_key_file}: checkpoints not checked")
    result = store.verify_lineage(
        [(c.seq, c.hash) for c in held], [(c.seq, c.hash) for c in held if c.kind == "prune"]
    )
    if altered:
        return replace(result, ok=False, reason="; ".join(altered), warnings=tuple(warnings))
    if require_checkpoints and not held:
        return replace(
            result, ok=False, reason="no signed checkpoint to verify against", warnings=tuple(warnings)
        )
    return replace(result, warnings=tuple(warnings))


def _read(sink: CheckpointSink) -> tuple[list[Entry], list[str]]:
    """A sink's entries and its warnings (a file's incomplete last line); an endpoint's answer is whole."""
    if isinstance(sink, FileCheckpoints):
        return sink.read_noting()
    return sink.read(), []


def _disagreements(held: list[Checkpoint]) -> list[str]:
    first: dict[int, str] = {}
    clash: list[int] = []
    for cp in held:
        if first.setdefault(cp.seq, cp.hash) != cp.hash and cp.seq not in clash:
            clash.append(cp.seq)
    return [f"signed checkpoints disagree on the hash of seq {seq}" for seq in clash]


# -- the writer -------------------------------------------------------------------------------------


class Checkpointer:
    """Signs a checkpoint every ``every_events`` events or ``every_s`` seconds while the head moves, and
    appends it to every sink; what a sink refuses is kept and retried with the next one."""

    def __init__(
        self,
        store: Store,
        key: Ed25519PrivateKey,
        sinks: CheckpointSources,
        every_events: int,
        every_s: float,
    ) -> None:
        self.store = store
        self.key = key
        self.sinks = as_sinks(sinks)
        if not self.sinks:
            raise ValueError("a Checkpointer needs at least one checkpoint sink")
        self.every_events = every_events
        self.every_s = every_s
        self.last_seq = max((s.last_seq() for s in self.sinks if isinstance(s, FileCheckpoints)), default=0)
        self.last_time = time.monotonic()
        self._pending: list[list[Checkpoint]] = [[] for _ in self.sinks]
        self._last_attempt = time.monotonic()
        self._lock = threading.Lock()  # the loop's worker thread and stop() must not interleave
        self._task: asyncio.Task[None] | None = None

    def pending(self) -> dict[str, list[int]]:
        """The seqs of the checkpoints each sink still has to take, by sink name."""
        with self._lock:
            return {s.name: [c.seq for c in p] for s, p in zip(self.sinks, self._pending, strict=True) if p}

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def checkpoint(self, force: bool = False) -> Checkpoint | None:
        """Sign a checkpoint if one is due (or ``force``) and hand it, after those still pending, to
        every sink. Blocks on the sinks: the event loop calls it in a worker thread."""
        with self._lock:
            cp: Checkpoint | None = None
            head = self.store.lineage_head()
            now = time.monotonic()
            if head is not None and head[0] > self.last_seq:
                due = head[0] - self.last_seq >= self.every_events or now - self.last_time >= self.every_s
                if due or force:
                    cp = sign(self.key, head[0], head[1])
                    self.last_seq, self.last_time = cp.seq, now
            retry = any(self._pending) and (force or now - self._last_attempt >= self.every_s)
            if cp is not None or retry:
                self._deliver(cp)
            return cp

    def _deliver(self, cp: Checkpoint | None) -> None:
        self._last_attempt = time.monotonic()
        for sink, pending in zip(self.sinks, self._pending, strict=True):
            if cp is not None:
                pending.append(cp)
            retried = len(pending) - (cp is not None)
            while pending:
                try:
                    sink.append(pending[0])
                except Exception as exc:
                    log.warning(
                        "lineage checkpoint not written; kept to retry with the next one",
                        extra={"sink": sink.name, "pending": len(pending), "error": _error(exc)},
                    )
                    break
                pending.pop(0)
            else:
                if retried:
                    log.info(
                        "lineage checkpoints written after a retry",
                        extra={"sink": sink.name, "checkpoints": retried},
                    )
            if len(pending) > MAX_PENDING:
                dropped = pending[: len(pending) - MAX_PENDING]
                del pending[: len(dropped)]
                log.warning(
                    "lineage checkpoints dropped: too many pending; later ones still pin those events",
                    extra={"sink": sink.name, "dropped": len(dropped), "last_dropped_seq": dropped[-1].seq},
                )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.every_s))
            try:
                await asyncio.to_thread(self.checkpoint)
            except Exception:
                log.exception("lineage checkpoint failed")

    async def stop(self) -> None:
        """Stop the schedule, take a last checkpoint, retry what is pending; log what never got written."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await asyncio.to_thread(self.checkpoint, True)
        except Exception:
            log.exception("final lineage checkpoint failed")
        for name, seqs in self.pending().items():
            log.warning(
                "lineage checkpoints never written to this sink",
                extra={"sink": name, "checkpoints": len(seqs), "seqs": seqs[:20]},
            )


def _error(exc: Exception) -> str:
    """A sink's failure for the log: its own message (written to hold no secret) or the kind of error."""
    return str(exc) if isinstance(exc, CheckpointSinkError) else _cause(exc)
