"""MLLP intake throughput and ACK latency: the gateway beside a bare ceiling, in one run.

Usage: ``python bench/mllp_intake.py [--messages N] [--connections 1 8] [--validation structure] [--rounds N]``

For each connection count it measures, with the same client and the same
1.5 KB ADT^A01 (a fresh MSH-10 per message):

* ``1-commit``: a bare asyncio MLLP server (uvloop) that commits each message
  to SQLite (WAL, synchronous=FULL) on its own and then returns a fixed ACK;
* ``ceiling``: the same with group commit in a writer thread — what this
  machine can do durably with no HL7 work;
* ``gateway``: the real ``gateway serve`` process.

It prints msg/s and p50/p99 ACK latency for each, the server process's CPU time per
message (user + system, all its threads; read from /proc, so Linux only), and the
gateway/ceiling ratio. CPU per message moves far less than msg/s when the machine is
busy with other work: compare it when judging a change to the intake path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import queue
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvloop

REPO = Path(__file__).resolve().parents[1]
MESSAGE = (REPO / "fixtures/hl7/adt_a01__1500_bytes.hl7").read_bytes().replace(b"\n", b"\r")
START, END = b"\x0b", b"\x1c\x0d"
WARM_UP = 50
FIXED_ACK = b"MSH|^~\\&|GW|GW|S|S|20260101000000||ACK^A01^ACK|1|P|2.5\rMSA|AA|1\r"


def with_control_id(msg: bytes, control_id: str) -> bytes:
    segs = msg.split(b"\r")
    fields = segs[0].split(b"|")
    fields[9] = control_id.encode()
    segs[0] = b"|".join(fields)
    return b"\r".join(segs)


# -- the ceiling: bare MLLP + SQLite FULL group commit ------------------------------------------


def run_ceiling(port: int, db: str, group_commit: bool = True) -> None:
    """Bare MLLP server: store each frame with a FULL commit, then a fixed ACK.

    With ``group_commit`` every frame that queued during the last fsync shares the next commit;
    without it each frame gets a commit of its own.
    """
    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS m (id INTEGER PRIMARY KEY, raw BLOB)")
    work: queue.SimpleQueue[tuple[bytes, asyncio.Future[None], asyncio.AbstractEventLoop]] = (
        queue.SimpleQueue()
    )

    def writer() -> None:
        while True:
            group = [work.get()]
            while group_commit:
                try:
                    group.append(work.get_nowait())
                except queue.Empty:
                    break
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany("INSERT INTO m (raw) VALUES (?)", [(g[0],) for g in group])
            conn.execute("COMMIT")
            loop = group[0][2]
            loop.call_soon_threadsafe(_resolve, [g[1] for g in group])

    def _resolve(futs: list[asyncio.Future[None]]) -> None:
        for f in futs:
            if not f.done():
                f.set_result(None)

    threading.Thread(target=writer, daemon=True).start()

    async def handle(reader: asyncio.StreamReader, writer_: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                await reader.readuntil(START)
                data = await reader.readuntil(END)
                fut: asyncio.Future[None] = loop.create_future()
                work.put((data[:-2], fut, loop))
                await fut
                writer_.write(START + FIXED_ACK + END)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer_.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# -- the client ---------------------------------------------------------------------------------


async def client(port: int, prefix: str, count: int, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    accepted = 0
    for i in range(count):
        msg = START + with_control_id(MESSAGE, f"{prefix}-{i}") + END
        t0 = time.perf_counter()
        writer.write(msg)
        await reader.readuntil(START)
        reply = await reader.readuntil(END)
        latencies.append(time.perf_counter() - t0)
        if b"MSA|AA" in reply or b"MSA|CA" in reply:
            accepted += 1
    writer.close()
    return accepted


async def load(port: int, connections: int, total: int, tag: str) -> tuple[float, float, float, int, int]:
    """Send ``total`` messages over ``connections`` (after a warm-up): msg/s, p50 and p99 ms, the number
    accepted, and the number sent including the warm-up (what the server's CPU time was spent on)."""
    per = max(1, total // connections)
    latencies: list[float] = []
    # warm-up
    await client(port, f"{tag}-warm", WARM_UP, [])
    t0 = time.perf_counter()
    results = await asyncio.gather(*(client(port, f"{tag}-{c}", per, latencies) for c in range(connections)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return per * connections / elapsed, p50, p99, sum(results), per * connections + WARM_UP


def spawn_gateway(tmp: Path, config_yaml: str, mllp_port: int) -> subprocess.Popen[bytes]:
    """Start ``gateway serve`` with ``config_yaml``, its store under ``tmp`` and MLLP on ``mllp_port``."""
    cfg = tmp / "gw.yaml"
    cfg.write_text(config_yaml)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    command = ["gateway.cli", "serve", "--config", str(cfg), "--data-dir", str(tmp / "gw")]
    addresses = ["--mllp", f"127.0.0.1:{mllp_port}", "--http", f"127.0.0.1:{free_port()}"]
    return subprocess.Popen([sys.executable, "-m", *command, *addresses], env=env)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each helper process, and SIGKILL the ones that have not gone within 20 s."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process ``pid`` so far (all threads), or ``None`` off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(400):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=8000, help="messages per measurement")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--validation", default="structure", choices=["none", "header", "structure"])
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every server this many times, in turn, and end with the median of each "
        "(runs on a busy machine vary by 20%%: one round proves little)",
    )
    args = ap.parse_args()
    if args.rounds < 1:
        ap.error("--rounds must be 1 or more")

    with tempfile.TemporaryDirectory() as tmp:
        ceil_port, single_port = free_port(), free_port()
        ceiling = subprocess.Popen(
            [sys.executable, __file__, "--ceiling-server", str(ceil_port), f"{tmp}/ceiling.db"]
        )
        single = subprocess.Popen(
            [sys.executable, __file__, "--single-commit-server", str(single_port), f"{tmp}/single.db"]
        )
        gw_port = free_port()
        gateway = spawn_gateway(
            Path(tmp),
            f"mllp:\n  validation: {args.validation}\nlog_level: warning\nauth:\n  open: true\n",
            gw_port,
        )
        try:
            wait_port(ceil_port)
            wait_port(single_port)
            wait_port(gw_port)
            print(
                f"message: {len(MESSAGE)} bytes ADT^A01, validation={args.validation}, "
                f"{args.messages} messages per run, cpus={os.cpu_count()}"
            )
            print(
                f"{'conns':>5}  {'server':8}  {'msg/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'cpu us/msg':>10}  accepted"
            )
            servers = (
                ("1-commit", single, single_port),
                ("ceiling", ceiling, ceil_port),
                ("gateway", gateway, gw_port),
            )
            seen: dict[tuple[int, str], list[tuple[float, float]]] = {}  # (conns, server) → (msg/s, cpu)
            ratios: dict[int, list[float]] = {}
            for turn in range(args.rounds):
                for conns in args.connections:
                    row = {}
                    for name, proc, port in servers:
                        tag = f"{name}{conns}-{turn}"
                        before = cpu_seconds(proc.pid)
                        rate, p50, p99, ok, sent = uvloop.run(load(port, conns, args.messages, tag))
                        after = cpu_seconds(proc.pid)
                        per = (
                            (after - before) / sent * 1e6 if before is not None and after is not None else 0.0
                        )
                        cpu = f"{per:10.0f}" if per else f"{'-':>10}"
                        row[name] = rate
                        seen.setdefault((conns, name), []).append((rate, per))
                        print(f"{conns:>5}  {name:8}  {rate:8.0f}  {p50:7.2f}  {p99:7.2f}  {cpu}  {ok}")
                    ratios.setdefault(conns, []).append(row["gateway"] / row["ceiling"])
                    print(f"{conns:>5}  ratio     gateway/ceiling = {ratios[conns][-1]:.2f}")
            if args.rounds > 1:
                print(f"median of {args.rounds} rounds:")
                for (conns, name), runs in seen.items():
                    rate = statistics.median(r for r, _ in runs)
                    readings = [c for _, c in runs if c]  # (none off Linux)
                    per = f"{statistics.median(readings):10.0f}" if readings else f"{'-':>10}"
                    print(f"{conns:>5}  {name:8}  {rate:8.0f}  {'':7}  {'':7}  {per}")
                for conns, values in ratios.items():
                    low, high = min(values), max(values)
                    print(
                        f"{conns:>5}  ratio     gateway/ceiling = {statistics.median(values):.2f}"
                        f" (from {low:.2f} to {high:.2f})"
                    )
        finally:
            stop_all([ceiling, single, gateway])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--single-commit-server":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        run_ceiling(int(sys.argv[2]), sys.argv[3], group_commit=False)
    elif len(sys.argv) == 4 and sys.argv[1] == "--ceiling-server":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        run_ceiling(int(sys.argv[2]), sys.argv[3])
    else:
        main()
