"""ISO 8583 0200 round trips per second: the gateway beside a bare framing baseline, in one run.

Usage: ``python bench/iso8583_roundtrips.py [--messages N] [--connections 1 8]``

For each connection count, every connection sends a 0200 (pyiso8583,
``default_ascii``, a fresh STAN and RRN each time, its own terminal id) and
waits for the 0210 before sending the next, against:

* ``baseline``: a bare asyncio server (uvloop) with the same 2-byte length
  framing that answers every message with a fixed 0210 — no decoding, no
  store: the ceiling of the transport on this machine;
* ``gateway``: the real ``gateway serve --iso8583`` process (decode, validate,
  redact, commit with lineage, respond).

It prints round trips per second and p50/p99 latency for each, and the
gateway/baseline ratio. The process helpers come from ``bench/mllp_intake.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import iso8583  # noqa: E402
import uvloop  # noqa: E402
from iso8583.specs import default_ascii  # noqa: E402

from adapters.finance.iso8583_listener import frame  # noqa: E402
from bench.mllp_intake import free_port, spawn_gateway, stop_all, wait_port  # noqa: E402

REQUEST = {
    "t": "0200",
    "2": "4111111111111111",
    "3": "000000",
    "4": "000000004999",
    "7": "0315143000",
    "11": "000000",
    "12": "143000",
    "13": "0315",
    "22": "051",
    "32": "456789",
    "37": "000000000000",
    "41": "BENCH000",
    "42": "MERCH0000000001",
    "49": "840",
}
FIXED_0210 = bytes(
    iso8583.encode(
        {"t": "0210", "3": "000000", "4": "000000004999", "11": "000001", "39": "00", "41": "BENCH000"},
        default_ascii,
    )[0]
)


def request(tag: int, conn: int, i: int) -> bytes:
    fields = dict(REQUEST)
    fields["11"] = f"{i % 1_000_000:06d}"
    fields["37"] = f"{tag:02d}{conn:02d}{i:08d}"
    fields["41"] = f"BENCH{conn:03d}"
    raw, _ = iso8583.encode(fields, default_ascii)
    return frame(bytes(raw))


# -- the baseline: bare framing, fixed 0210 ------------------------------------------------------


def run_baseline(port: int) -> None:
    answer = frame(FIXED_0210)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                n = int.from_bytes(await reader.readexactly(2), "big")
                await reader.readexactly(n)
                writer.write(answer)
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


# -- the client ----------------------------------------------------------------------------------


async def client(port: int, tag: int, conn: int, count: int, latencies: list[float]) -> int:
    messages = [request(tag, conn, i) for i in range(count)]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    approved = 0
    try:
        for message in messages:
            t0 = time.perf_counter()
            writer.write(message)
            n = int.from_bytes(await reader.readexactly(2), "big")
            body = await reader.readexactly(n)
            latencies.append(time.perf_counter() - t0)
            if iso8583.decode(body, default_ascii)[0].get("39") == "00":
                approved += 1
    finally:
        writer.close()
    return approved


async def load(port: int, connections: int, total: int, tag: int) -> tuple[float, float, float, int]:
    per = max(1, total // connections)
    latencies: list[float] = []
    await client(port, tag, 99, 50, [])  # warm-up
    t0 = time.perf_counter()
    results = await asyncio.gather(*(client(port, tag, c, per, latencies) for c in range(connections)))
    elapsed = time.perf_counter() - t0
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return per * connections / elapsed, p50, p99, sum(results)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--messages", type=int, default=5000, help="round trips per measurement")
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base_port, gw_port = free_port(), free_port()
        baseline = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(base_port)])
        gateway = spawn_gateway(
            Path(tmp),
            f"iso8583:\n  address: 127.0.0.1:{gw_port}\nlog_level: warning\nauth:\n  open: true\n",
            free_port(),
        )
        try:
            wait_port(base_port)
            wait_port(gw_port)
            print(
                f"0200 of {len(request(0, 0, 0)) - 2} bytes, {args.messages} round trips per run, cpus={os.cpu_count()}"
            )
            print(f"{'conns':>5}  {'server':8}  {'rt/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  approved")
            for tag, conns in enumerate(args.connections):
                row = {}
                for name, port in (("baseline", base_port), ("gateway", gw_port)):
                    rate, p50, p99, ok = uvloop.run(load(port, conns, args.messages, tag))
                    row[name] = rate
                    print(f"{conns:>5}  {name:8}  {rate:8.0f}  {p50:7.2f}  {p99:7.2f}  {ok}")
                print(f"{conns:>5}  ratio     gateway/baseline = {row['gateway'] / row['baseline']:.2f}")
        finally:
            stop_all([baseline, gateway])


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline-server":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        run_baseline(int(sys.argv[2]))
    else:
        main()
