"""Lineage search on a large store: by business key and by time range, beside a full scan.

Usage: ``python bench/lineage.py [--events 1000000] [--queries 200]``

Fills a fresh store (the real schema and migrations) with ``--events`` lineage
events over 50,000 patients — five events per message, as intake writes them —
then measures, for random patients, :meth:`SQLiteStore.search_events` by key (the
pseudonym index), and as the baseline in the same run the query one would run
without that index (a scan of the events' JSON details for the pseudonym).
It also times a one-hour export window. Figures: p50/p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from gateway.lineage import pseudonym
from gateway.store import EventQuery
from gateway.store.sqlite import SQLiteStore, _connect, migrate

KEY = b"k" * 32
EVENTS_PER_MESSAGE = 5
PATIENTS = 50_000


def fill(path: Path, events: int) -> None:
    conn = _connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    migrate(conn, b"k" * 32)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rng = random.Random(7)
    messages = events // EVENTS_PER_MESSAGE
    seq = 0
    conn.execute("BEGIN")
    for m in range(messages):
        message_id = f"M{m:012d}"
        patient = f"MRN{rng.randrange(PATIENTS):06d}^^^HOSP"
        at = (start + timedelta(seconds=m * 2)).isoformat()
        hk = pseudonym(KEY, patient)
        conn.execute(
            "INSERT INTO messages (id, received_at, protocol, message_type, control_id, sender, status, raw,"
            " raw_sha256) VALUES (?,?,?,?,?,?,?,?,?)",
            (message_id, at, "hl7v2", "ADT^A01", f"C{m}", "APP^FAC", "accepted", b"", "0" * 64),
        )
        conn.execute("INSERT INTO message_keys (pseudonym, message_id) VALUES (?, ?)", (hk, message_id))
        rows = []
        for name in (
            "MessageReceived",
            "MessageAccepted",
            "ReplySent",
            "DeliverySucceeded",
        ):
            seq += 1
            details = orjson.dumps({"keys": {"patient_id": hk}} if name == "MessageReceived" else {}).decode()
            rows.append((seq, at, name, message_id, None, "mllp", "ok", "", "", details, "0" * 64, "0" * 64))
        conn.executemany(
            "INSERT INTO lineage (seq, at, event, envelope_id, parent_id, actor, outcome, error_code, raw_sha256,"
            " details, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        if m % 20_000 == 0:
            conn.execute("COMMIT")
            conn.execute("BEGIN")
    conn.execute("COMMIT")
    conn.close()


def percentiles(samples: list[float]) -> str:
    samples.sort()
    p99 = samples[max(0, int(len(samples) * 0.99) - 1)]
    return f"p50 {statistics.median(samples) * 1000:8.2f} ms   p99 {p99 * 1000:8.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "gateway.db"
        t0 = time.perf_counter()
        fill(path, args.events)
        print(f"filled {args.events:,} events in {time.perf_counter() - t0:.1f} s")
        store = SQLiteStore(path, KEY)
        rng = random.Random(11)
        patients = [f"MRN{rng.randrange(PATIENTS):06d}^^^HOSP" for _ in range(args.queries)]

        indexed: list[float] = []
        found = 0
        for patient in patients:
            t = time.perf_counter()
            found += len(store.search_events(EventQuery(key=patient)))
            indexed.append(time.perf_counter() - t)
        print(
            f"by business key (pseudonym index): {percentiles(indexed)}   ({found / len(patients):.1f} events each)"
        )

        conn = _connect(path, readonly=True)
        scans: list[float] = []
        for patient in patients[: max(5, args.queries // 20)]:
            t = time.perf_counter()
            ids = [
                r[0]
                for r in conn.execute(
                    "SELECT envelope_id FROM lineage WHERE details LIKE ?", (f"%{pseudonym(KEY, patient)}%",)
                )
            ]
            conn.execute(
                f"SELECT * FROM lineage WHERE envelope_id IN ({','.join('?' * len(ids))})", ids
            ).fetchall()
            scans.append(time.perf_counter() - t)
        print(f"baseline, scan of event details:   {percentiles(scans)}")

        windows: list[float] = []
        for _ in range(20):
            hour = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=rng.randrange(100))
            t = time.perf_counter()
            n = sum(
                1 for _ in store.events_between(hour.isoformat(), (hour + timedelta(hours=1)).isoformat())
            )
            windows.append(time.perf_counter() - t)
        print(f"one-hour export window ({n} events): {percentiles(windows)}")


if __name__ == "__main__":
    main()
