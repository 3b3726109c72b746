"""ISO 20022 intake: pain.001 files of 1,000 transactions, parse + rules + store, beside lxml alone.

Usage: ``python bench/iso20022.py [--transactions 1000] [--files 20] [--schemas DIR]``

For the same generated pain.001.001.12 file (valid: every IBAN, BIC, UETR and
sum checks out) it measures, in one process:

* ``baseline``: ``lxml.etree.fromstring`` of the file, nothing else;
* ``parse``: :meth:`ISO20022Adapter.parse` (hardened parser, envelope, headers);
* ``parse + rules``: parse and :meth:`validate` without schemas (business rules);
* ``parse + rules + xsd``: the same with ``--schemas`` pointing at a schema folder;
* ``intake``: :meth:`Intake.receive` on a real SQLite store (commit before reply, lineage), files/s and
  transactions/s, each file with its own MsgId.

Figures are medians of ``--files`` runs; the ratio to the baseline is printed beside each.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lxml import etree  # noqa: E402

from adapters.finance.iso20022 import ISO20022Adapter  # noqa: E402
from gateway.config import ISO20022Config  # noqa: E402
from gateway.envelope import Receipt  # noqa: E402
from gateway.pipeline import Intake  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402
from tests.finance_messages import pain001  # noqa: E402


def median_ms(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1000)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transactions", type=int, default=1000)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--schemas", type=Path, help="folder of ISO 20022 XSDs (with pain.001.001.12.xsd)")
    args = ap.parse_args()

    amounts = [f"{(i % 997) + 1}.{i % 100:02d}" for i in range(args.transactions)]
    raw = pain001("BENCH-0", amounts)
    receipt = Receipt("bench")
    plain = ISO20022Adapter()
    rows: list[tuple[str, float]] = [
        ("baseline: lxml fromstring", median_ms(lambda: etree.fromstring(raw), args.files)),
        ("parse", median_ms(lambda: plain.parse(raw, receipt), args.files)),
        ("parse + rules", median_ms(lambda: plain.validate(plain.parse(raw, receipt)), args.files)),
    ]
    if args.schemas:
        checked = ISO20022Adapter(ISO20022Config(schema_dir=args.schemas))
        checked.validate(checked.parse(raw, receipt))  # compile the schema outside the timing
        rows.append(
            (
                "parse + rules + xsd",
                median_ms(lambda: checked.validate(checked.parse(raw, receipt)), args.files),
            )
        )

    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "gateway.db", b"k" * 32)
        store.open()
        intake = Intake(store)
        files = [pain001(f"BENCH-{n + 1}", amounts) for n in range(args.files)]

        async def run() -> list[float]:
            took = []
            for body in files:
                start = time.perf_counter()
                result = await intake.receive(plain, body, receipt)
                took.append((time.perf_counter() - start) * 1000)
                assert result.replies[0].code == "ACTC", result.replies[0].body[:300]
            await intake.drain()
            return took

        intake_ms = statistics.median(asyncio.run(run()))
        store.close()
    rows.append(("intake (parse + rules + commit + reply)", intake_ms))

    base = rows[0][1]
    print(
        f"pain.001.001.12, {args.transactions} transactions, {len(raw) / 1024:.0f} KiB, median of {args.files}"
    )
    for name, ms in rows:
        print(
            f"  {name:42s} {ms:8.1f} ms/file  {args.transactions / ms * 1000:10.0f} tx/s  x{ms / base:6.1f}"
        )


if __name__ == "__main__":
    main()
