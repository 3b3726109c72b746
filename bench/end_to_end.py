"""End to end: MLLP intake → route → HTTP sink, delivered messages/s and send-to-receipt latency.

Usage: ``python bench/end_to_end.py [--messages N] [--connections 1 8] [--sink-concurrency 16]``

Runs, in separate processes: the real ``gateway serve`` with one route to an
HTTP sink; a minimal asyncio HTTP receiver that timestamps each delivery; and,
as the baseline measured in the same run, the bare MLLP + SQLite FULL commit
server of ``bench/mllp_intake.py`` (the intake ceiling of this machine). For
each connection count it prints messages delivered per second, p50/p99 latency
from the send to the receiver's receipt, and the ceiling's msg/s for intake alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mllp_intake as intake_bench

START, END = b"\x0b", b"\x1c\x0d"


def run_receiver(port: int) -> None:
    """HTTP/1.1 receiver: records (control id, receipt time) per POST; GET /stats returns them."""
    seen: dict[str, float] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                body = await reader.readexactly(length) if length else b""
                if head.startswith(b"GET /stats"):
                    payload = json.dumps(seen).encode()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
                    continue
                now = time.time()
                control_id = body.split(b"\r", 1)[0].split(b"|")[9].decode()
                seen.setdefault(control_id, now)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


async def fetch_stats(port: int) -> dict[str, float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    body = await reader.readexactly(length)
    writer.close()
    return dict(json.loads(body))


async def sender(port: int, prefix: str, count: int, sent: dict[str, float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(count):
        cid = f"{prefix}-{i}"
        sent[cid] = time.time()
        writer.write(START + intake_bench.with_control_id(intake_bench.MESSAGE, cid) + END)
        await reader.readuntil(START)
        await reader.readuntil(END)
    writer.close()


async def run(
    gw_port: int, recv_port: int, connections: int, total: int, tag: str
) -> tuple[float, float, float]:
    per = max(1, total // connections)
    sent: dict[str, float] = {}
    await asyncio.gather(*(sender(gw_port, f"{tag}-{c}", per, sent) for c in range(connections)))
    deadline = time.time() + 300
    while True:
        seen = await fetch_stats(recv_port)
        if all(cid in seen for cid in sent) or time.time() > deadline:
            break
        await asyncio.sleep(0.2)
    latencies = sorted(seen[c] - sent[c] for c in sent if c in seen)
    elapsed = max(seen[c] for c in sent if c in seen) - min(sent.values())
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return len(latencies) / elapsed, statistics.median(latencies) * 1000, p99 * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=6000)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--sink-concurrency", type=int, default=16)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ceil_port, recv_port = intake_bench.free_port(), intake_bench.free_port()
        gw_port = intake_bench.free_port()
        procs = [
            subprocess.Popen(
                [sys.executable, intake_bench.__file__, "--ceiling-server", str(ceil_port), f"{tmp}/c.db"]
            ),
            subprocess.Popen([sys.executable, __file__, "--receiver", str(recv_port)]),
        ]
        config_yaml = (
            "log_level: warning\nauth: {open: true}\n"
            f"sinks:\n  downstream: {{type: http, endpoint: 'http://127.0.0.1:{recv_port}/in', "
            f"concurrency: {args.sink_concurrency}}}\n"
            "routes:\n  - {name: all, match: {protocol: hl7v2}, to: [downstream]}\nunmatched: reject\n"
        )
        procs.append(intake_bench.spawn_gateway(Path(tmp), config_yaml, gw_port))
        try:
            for port in (ceil_port, recv_port, gw_port):
                intake_bench.wait_port(port)
            print(
                f"message: {len(intake_bench.MESSAGE)} bytes ADT^A01, structure validation, one HTTP sink "
                f"(concurrency {args.sink_concurrency}), {args.messages} messages per run"
            )
            print(
                f"{'conns':>5}  {'delivered msg/s':>15}  {'p50 ms':>8}  {'p99 ms':>8}  {'ceiling intake msg/s':>20}  ratio"
            )
            for conns in args.connections:
                rate, p50, p99 = uvloop.run(run(gw_port, recv_port, conns, args.messages, f"e2e{conns}"))
                ceiling, *_ = uvloop.run(intake_bench.load(ceil_port, conns, args.messages, f"ceil{conns}"))
                print(
                    f"{conns:>5}  {rate:15.0f}  {p50:8.2f}  {p99:8.2f}  {ceiling:20.0f}  {rate / ceiling:.2f}"
                )
        finally:
            intake_bench.stop_all(procs)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--receiver":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        run_receiver(int(sys.argv[2]))
    else:
        main()
