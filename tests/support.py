"""Helpers for end-to-end tests: run the real ``gateway serve`` process on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import yaml

SB, EB = b"\x0b", b"\x1c\x0d"
"""MLLP's start and end of a frame."""

TEST_KEY = "test-key-0123456789abcdef"
READ_KEY = "read-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"


def with_control_id(message: bytes, control_id: str) -> bytes:
    """``message`` with segments ending in ``\\r`` and MSH-10 set to ``control_id``."""
    segs = message.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
    parts = segs[0].split(b"|")
    parts[9] = control_id.encode()
    segs[0] = b"|".join(parts)
    return b"\r".join(segs)


def read_frame(s: socket.socket) -> bytes:
    """The content of the next MLLP frame read from ``s``; ``ConnectionError`` if it closes first."""
    buf = b""
    while EB not in buf:
        chunk = s.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full frame; got {buf!r}")
        buf += chunk
    start = buf.index(SB)
    return buf[start + 1 : buf.index(EB)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode} before port {port} opened")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"port {port} did not open in {timeout} s")


class Gateway:
    """A ``gateway serve`` child process with its own data directory and ports."""

    def __init__(self, workdir: Path, config: dict[str, object] | None = None) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.mllp_port = free_port()
        self.http_port = free_port()
        self.log_path = workdir / "gateway.log"
        self.config_path = workdir / "gateway.yaml"
        cfg: dict[str, object] = {
            "auth": {
                "api_keys": [
                    {
                        "name": "tester",
                        "key": TEST_KEY,
                        "scopes": ["ingest:hl7v2", "ingest:iso20022", "messages:read", "lineage:read"],
                    },
                    {"name": "reader", "key": READ_KEY, "scopes": ["messages:read"]},
                    {"name": "operator", "key": ADMIN_KEY, "scopes": ["admin"]},
                ]
            }
        }
        cfg.update(config or {})
        self.config_path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def cli(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run another ``gateway`` command against this gateway's config and data directory (with ``env``
        added to its environment)."""
        return subprocess.run(
            [sys.executable, "-m", "gateway.cli", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**self._env(), **(env or {})},
        )

    def store_args(self) -> list[str]:
        return ["--config", str(self.config_path), "--data-dir", str(self.data_dir)]

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def start(self) -> Gateway:
        with self.log_path.open("ab") as log:
            self.proc = self._spawn(log)
        wait_port(self.mllp_port, proc=self.proc)
        wait_port(self.http_port, proc=self.proc)
        return self

    def _spawn(self, log: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                *self.store_args(),
                "--mllp",
                f"127.0.0.1:{self.mllp_port}",
                "--http",
                f"127.0.0.1:{self.http_port}",
            ],
            stdout=log,  # type: ignore[arg-type]
            stderr=log,  # type: ignore[arg-type]
            env=self._env(),
        )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode or 0)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class MLLPPeer:
    """A real MLLP receiver in a thread: ACKs every message with ``code`` and records its control id."""

    def __init__(self, code: str = "AA") -> None:
        self.code = code
        self.received: list[str] = []
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"mllp://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> MLLPPeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        buf = b""
        with conn:
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                while b"\x1c\x0d" in buf:
                    start = buf.index(b"\x0b")
                    end = buf.index(b"\x1c\x0d")
                    message, buf = buf[start + 1 : end], buf[end + 2 :]
                    control_id = message.split(b"\r", 1)[0].split(b"|")[9].decode()
                    self.received.append(control_id)
                    ack = (
                        "MSH|^~\\&|LAB|LAB|GW|GW|20260101000000||ACK^O01^ACK|A1|P|2.5\r"
                        f"MSA|{self.code}|{control_id}\r"
                    ).encode()
                    conn.sendall(b"\x0b" + ack + b"\x1c\x0d")


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
