"""Retail intake: what parsing, validating and the inventory ledger cost, beside their baselines.

Usage: ``python bench/retail.py [--messages 2000] [--concurrency 8] [--poslog PATH]``

In one process:

* Shopify ``orders/create`` (a 3-line order with a customer): ``json.loads`` alone (baseline) against
  :class:`ShopifyAdapter` parse + validate + movements;
* a POSLog file (``--poslog``, default the shared corpus' 916 KB NCR log when present):
  ``lxml.etree.fromstring`` alone (baseline) against split + parse + validate of every transaction;
* intake of POS JSON sales on a real SQLite store (commit before reply, lineage), ``--concurrency``
  senders at once: the ledger off (baseline) against the ledger on (each sale's movements applied once
  in its transaction, by key); three alternated runs of each, the median printed.

Figures are medians; the ratio to the baseline is printed beside each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lxml import etree  # noqa: E402

from adapters.retail.pos_json import POSJSONAdapter  # noqa: E402
from adapters.retail.poslog import POSLogAdapter  # noqa: E402
from adapters.retail.shopify import ShopifyAdapter  # noqa: E402
from gateway.envelope import Receipt  # noqa: E402
from gateway.pipeline import Intake  # noqa: E402
from gateway.store.sqlite import SQLiteStore  # noqa: E402
from tests.retail_messages import shopify_order  # noqa: E402

CORPUS_LOG = REPO.parent / "shared" / "corpora" / "retail" / "kjbreil-poslog" / "sample" / "POSLog.xml"


def median_us(fn: Callable[[], object], runs: int) -> float:
    samples = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return statistics.median(samples)


def sale(n: int) -> bytes:
    return json.dumps(
        {
            "schema": "pos_json/1",
            "kind": "sale",
            "store": "S001",
            "register": "R1",
            "ticket": f"T-{n:08d}",
            "business_day": "2026-11-27",
            "occurred_at": "2026-11-27T10:15:00Z",
            "currency": "EUR",
            "lines": [
                {"line_id": "1", "sku": f"SKU-{n % 50}", "quantity": 1, "unit_price": "19.99"},
                {"line_id": "2", "sku": f"SKU-{(n + 7) % 50}", "quantity": 2, "unit_price": "5.00"},
            ],
            "tenders": [{"type": "card", "amount": "29.99"}],
            "total": "29.99",
        }
    ).encode()


async def intake_rate(messages: int, concurrency: int, ledger: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "gw.db", b"k" * 32)
        store.open()
        touched: set[str] = set()
        intake = Intake(store, on_stock=touched.update if ledger else None)
        adapter = POSJSONAdapter()
        bodies = [sale(n) for n in range(messages)]
        receipt = Receipt("bench")
        queue = iter(bodies)

        async def sender() -> None:
            for body in queue:
                result = await intake.receive(adapter, body, receipt)
                assert result.replies[0].status == 200, result.replies[0].body

        start = time.perf_counter()
        await asyncio.gather(*(sender() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        if ledger:
            assert sum(store.stock(f"SKU-{k}").on_hand for k in range(50)) == -3 * messages
        await store.flush()
        store.close()
        return messages / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--poslog", type=Path, default=CORPUS_LOG if CORPUS_LOG.exists() else None)
    args = ap.parse_args()

    shopify = ShopifyAdapter()
    body = shopify_order(5001, [(1, "SKU-A", 1), (2, "SKU-B", 2), (3, "SKU-C", 1)])
    receipt = Receipt(
        "bench",
        attributes={
            "x-shopify-topic": "orders/create",
            "x-shopify-shop-domain": "bench.myshopify.com",
            "x-shopify-webhook-id": "wh-1",
            "x-shopify-event-id": "ev-1",
            "x-shopify-api-version": "2025-10",
        },
    )

    def adapter_path() -> None:
        env = shopify.parse(body, receipt)
        assert not [i for i in shopify.validate(env) if i.is_error]
        shopify.movements(env)

    base = median_us(lambda: json.loads(body), 2000)
    full = median_us(adapter_path, 2000)
    print(
        f"shopify orders/create ({len(body)} B): json.loads {base:8.1f} µs | adapter {full:8.1f} µs  x{full / base:.1f}"
    )

    if args.poslog is not None:
        raw = args.poslog.read_bytes()
        poslog = POSLogAdapter()

        def poslog_path() -> int:
            batch = poslog.split(raw)
            units = batch.units if batch is not None else [raw]
            for unit in units:
                poslog.validate(poslog.parse(unit, Receipt("bench")))
            return len(units)

        count = poslog_path()
        base = median_us(lambda: etree.fromstring(raw), 20) / 1000
        full = median_us(poslog_path, 20) / 1000
        print(
            f"poslog {args.poslog.name} ({len(raw) // 1024} KiB, {count} transactions): lxml {base:7.1f} ms | "
            f"split+parse+validate {full:7.1f} ms  x{full / base:.1f}  ({count / full * 1000:,.0f} transactions/s)"
        )
    else:
        print("poslog: no file (pass --poslog; the shared corpus is not beside this checkout)")

    offs, ons = [], []
    for _ in range(3):  # alternated, so that a warming machine favours neither
        offs.append(asyncio.run(intake_rate(args.messages, args.concurrency, ledger=False)))
        ons.append(asyncio.run(intake_rate(args.messages, args.concurrency, ledger=True)))
    off, on = statistics.median(offs), statistics.median(ons)
    print(
        f"pos_json intake, {args.concurrency} senders, {args.messages} sales: ledger off {off:7.0f} msg/s | "
        f"ledger on {on:7.0f} msg/s  x{on / off:.2f}"
    )


if __name__ == "__main__":
    main()
