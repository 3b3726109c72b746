"""FHIR API at scale: create rates, a bulk load, and search latency beside a scan without the index.

Usage: ``python bench/fhir_api.py [--patients 100000] [--observations 1000000] [--bundle 500]
[--queries 300] [--single 2000] [--concurrency 8] [--baseline-queries 20] [--keep]``

Starts the real ``gateway serve`` process (HTTP only, a fresh data directory under /tmp) and,
as a client over loopback HTTP (httpx):

1. **single creates**: ``--single`` ``POST /fhir/Patient``, one at a time on one keep-alive
   connection, then as many again spread over ``--concurrency`` connections. Each create is a
   durable commit of its own (SQLite ``synchronous=FULL``, with its message and lineage events);
   concurrent creates can share a group commit. Figures: creates/s and per-request p50/p99.
2. **bulk load**: ``--patients`` Patients, then ``--observations`` Observations, as ``transaction``
   Bundles of ``--bundle`` POST entries (the server assigns the ids; the Observations refer to
   Patients by the ids the transaction responses gave). Two Bundles are in flight at a time, so
   that building the next one overlaps the server's work. Figures: resources/s and elapsed time.
   The data is synthetic and deterministic (``random.Random(7)``): Patients with an MRN
   identifier, a name (~200 surnames, some with accents), gender and birth date; Observations
   with an identifier, a category, one of 20 LOINC codes, a subject, an effective time over three
   years with a time zone, and a UCUM quantity.
3. **search latency**, after the load, ``--queries`` random queries of each kind, one at a time on
   one connection: (a) ``Patient?identifier=urn:bench:mrn|MRN<n>``, (b) ``Patient?name=<prefix>``
   (the first three letters of a surname, ``_count=20``), (c) ``Observation?subject=Patient/<id>
   &code=http://loinc.org|<code>&date=ge<date>&_count=20`` (built from an Observation that was
   loaded, so it has at least one match), and (d) ``Patient/<id>`` reads as a reference point.
   Every answer must be 200; (a) must find exactly one Patient (a warning counts those that do not).
4. **baseline, same run**: the same questions (a)-(c) answered with no index at all, by scanning
   ``fhir_resources.body`` with SQLite's JSON functions on a read-only connection to the
   gateway's database file (``--baseline-queries`` of each, the first ones the API was asked).

Latency figures are p50/p99 in milliseconds. API figures are whole HTTP round trips (client,
server, index query, JSON of the answer, the access lineage it notes); scan figures are the
SQLite query alone, in this process, so the ratio understates what the index saves. It also
prints the database size and the number of ``fhir_index`` rows after the load. Figures are
printed, never asserted. The temporary directory is removed at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import yaml

REPO = Path(__file__).resolve().parents[1]
API_KEY = "bench-key-0123456789abcdef"
DB_FILE = "gateway.db"  # gateway.server.DB_FILE, not imported: the bench only talks HTTP and SQL
FHIR_JSON = "application/fhir+json"
MRN_SYSTEM = "urn:bench:mrn"
SINGLE_SYSTEM = "urn:bench:single"
OBS_SYSTEM = "urn:bench:obs"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
LOAD_IN_FLIGHT = 2
START = datetime(2023, 1, 1, tzinfo=UTC)
SPAN_S = 3 * 365 * 24 * 3600
ZONES = ("Z", "+00:00", "+01:00", "+02:00", "-05:00", "-08:00", "+05:30", "+09:00")

SURNAMES = """
Smith Johnson Williams Brown Jones Miller Davis Wilson Anderson Taylor Thomas Moore Martin Jackson
Thompson White Harris Clark Lewis Robinson Walker Young Allen King Wright Scott Hill Green Adams Baker
Nelson Carter Mitchell Roberts Turner Phillips Campbell Parker Evans Edwards Collins Stewart Morris
Rogers Reed Cook Morgan Bell Murphy Bailey Cooper Richardson Cox Howard Ward Peterson Gray James
Watson Brooks Kelly Sanders Price Bennett Wood Barnes Ross Henderson Coleman Jenkins Perry Powell Long
Patterson Hughes Washington Butler Simmons Foster Bryant Alexander Russell Griffin Hayes Myers Ford
Hamilton Graham Sullivan Wallace West Cole Jordan Reynolds Fisher Ellis Harrison Gibson McDonald
Marshall Owens Kennedy Wells Hunter Hoffman Schmidt Schneider Fischer Weber Meyer Wagner Becker
Schulz Koch Richter Klein Wolf Neumann Schwarz Zimmermann Braun Krüger Hofmann Hartmann Lange Schmitt
Werner Köhler Müller Schäfer Günther Böhm Jäger Dubois Durand Lefèvre Moreau Laurent Girard Bonnet
Lambert Fontaine Rousseau Vincent Mercier Boyer Garnier Chevalier François Légaré Hébert Côté Bélanger
García Rodríguez Martínez Hernández López González Pérez Sánchez Ramírez Torres Flores Rivera Gómez
Díaz Cruz Morales Ortiz Gutiérrez Chávez Ramos Ruiz Álvarez Jiménez Núñez Muñoz Castillo Romero
Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Greco Bruno Gallo Conti Costa
Nilsson Johansson Karlsson Andersson Larsson Öberg Åberg Søndergård Jørgensen Nykänen Virtanen
Kowalski Nowak Wiśniewski Wójcik Dvořák Novák Horváth Szabó Nagy Kovačević Popescu Ionescu
Yildiz Kaya Demir Şahin Çelik Papadopoulos Nguyen Tran Pham Kim Lee Park Chen Wang Zhang Liu Tanaka
Suzuki Sato Watanabe Singh Kumar Patel Shah O'Brien O'Connor
""".split()  # noqa: SIM905 (a word list reads better than 200 quoted strings)

GIVEN = """
James Mary John Patricia Robert Jennifer Michael Linda William Elizabeth David Barbara Richard Susan
Joseph Jessica Thomas Sarah Charles Karen Daniel Nancy Matthew Lisa Anthony Betty Mark Margaret Paul
Sandra Steven Ashley Andrew Emily Joshua Donna Kenneth Michelle Kevin Carol Brian Amanda José María
Zoë Chloé Renée André Jürgen Søren Åsa Ñuño Léa Anaïs Björn Dorothée Émile François Inès Mikaël
""".split()  # noqa: SIM905


@dataclass(frozen=True, slots=True)
class Code:
    """A LOINC observation code with its category, UCUM unit and a plausible range of values."""

    code: str
    display: str
    category: str
    unit: str
    low: float
    high: float


CODES = (
    Code("8867-4", "Heart rate", "vital-signs", "/min", 45, 140),
    Code("9279-1", "Respiratory rate", "vital-signs", "/min", 10, 30),
    Code("8310-5", "Body temperature", "vital-signs", "Cel", 35.5, 40.5),
    Code("8480-6", "Systolic blood pressure", "vital-signs", "mm[Hg]", 90, 190),
    Code("8462-4", "Diastolic blood pressure", "vital-signs", "mm[Hg]", 50, 120),
    Code("29463-7", "Body weight", "vital-signs", "kg", 3, 160),
    Code("8302-2", "Body height", "vital-signs", "cm", 50, 205),
    Code("39156-5", "Body mass index", "vital-signs", "kg/m2", 14, 45),
    Code("59408-5", "Oxygen saturation by pulse oximetry", "vital-signs", "%", 85, 100),
    Code("9843-4", "Head occipital-frontal circumference", "vital-signs", "cm", 30, 62),
    Code("2339-0", "Glucose [Mass/volume] in Blood", "laboratory", "mg/dL", 60, 300),
    Code("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "laboratory", "mmol/L", 125, 155),
    Code("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "laboratory", "mmol/L", 2.8, 6.2),
    Code("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 0.4, 4),
    Code("718-7", "Hemoglobin [Mass/volume] in Blood", "laboratory", "g/dL", 7, 19),
    Code("6690-2", "Leukocytes [#/volume] in Blood", "laboratory", "10*3/uL", 2, 20),
    Code("777-3", "Platelets [#/volume] in Blood", "laboratory", "10*3/uL", 80, 500),
    Code("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "laboratory", "%", 4, 12),
    Code("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 110, 320),
    Code("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma", "laboratory", "mg/dL", 5, 60),
)


# -- synthetic data -------------------------------------------------------------------------------


def patient(rng: random.Random, n: int, system: str = MRN_SYSTEM) -> dict[str, Any]:
    given = [rng.choice(GIVEN)] + ([rng.choice(GIVEN)] if rng.random() < 0.3 else [])
    born = datetime(1930, 1, 1) + timedelta(days=rng.randrange(95 * 365))
    return {
        "resourceType": "Patient",
        "identifier": [{"system": system, "value": f"MRN{n}"}],
        "name": [{"use": "official", "family": rng.choice(SURNAMES), "given": given}],
        "gender": rng.choice(("female", "male", "other", "unknown")),
        "birthDate": born.date().isoformat(),
    }


def effective(rng: random.Random) -> str:
    """A dateTime in the three years from 2023-01-01 UTC, written in one of :data:`ZONES`."""
    at = START + timedelta(seconds=rng.randrange(SPAN_S))
    zone = rng.choice(ZONES)
    if zone == "Z":
        return at.strftime("%Y-%m-%dT%H:%M:%SZ")
    sign = -1 if zone[0] == "-" else 1
    offset = timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])) * sign
    return (at + offset).strftime("%Y-%m-%dT%H:%M:%S") + zone


def observation(rng: random.Random, n: int, subject: str) -> dict[str, Any]:
    c = rng.choice(CODES)
    return {
        "resourceType": "Observation",
        "identifier": [{"system": OBS_SYSTEM, "value": f"OBS{n}"}],
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": c.category}]}],
        "code": {"coding": [{"system": LOINC, "code": c.code, "display": c.display}], "text": c.display},
        "subject": {"reference": subject},
        "effectiveDateTime": effective(rng),
        "valueQuantity": {
            "value": round(rng.uniform(c.low, c.high), 1),
            "unit": c.unit,
            "system": UCUM,
            "code": c.unit,
        },
    }


def transaction(resources: Sequence[dict[str, Any]]) -> bytes:
    entries = [{"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources]
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


# -- the gateway process --------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_gateway(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    """``gateway serve`` with HTTP on ``port``, no MLLP, its store in ``workdir/data``."""
    config = workdir / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "log_level": "warning",
                "auth": {
                    "api_keys": [{"name": "bench", "key": API_KEY, "scopes": ["fhir:read", "fhir:write"]}]
                },
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)]
    command += ["--data-dir", str(workdir / "data"), "--mllp", "off", "--http", f"127.0.0.1:{port}"]
    with (workdir / "gateway.log").open("ab") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=REPO)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode}; see {workdir / 'gateway.log'}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"port {port} never opened")


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- measuring ------------------------------------------------------------------------------------


def pct(samples: Sequence[float], q: float) -> float:
    """The ``q`` quantile (nearest rank) of ``samples``, in milliseconds."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000


def p50_p99(samples: Sequence[float]) -> str:
    return f"p50 {statistics.median(samples) * 1000:8.2f} ms   p99 {pct(samples, 0.99):8.2f} ms"


def headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}", "Accept": FHIR_JSON}


def post_patient(resp: httpx.Response) -> None:
    if resp.status_code != 201:
        raise SystemExit(f"create answered {resp.status_code}: {resp.text[:500]}")


def single_creates(base: str, count: int, rng: random.Random, first: int) -> tuple[float, list[float]]:
    """``count`` creates one after another on one connection: (creates/s, latencies)."""
    bodies = [orjson.dumps(patient(rng, first + i, SINGLE_SYSTEM)) for i in range(count)]
    latencies: list[float] = []
    with httpx.Client(base_url=base, headers=headers(), timeout=120) as client:
        post_patient(client.post("/Patient", content=bodies[0], headers={"Content-Type": FHIR_JSON}))
        t0 = time.perf_counter()
        for body in bodies:
            t = time.perf_counter()
            post_patient(client.post("/Patient", content=body, headers={"Content-Type": FHIR_JSON}))
            latencies.append(time.perf_counter() - t)
        elapsed = time.perf_counter() - t0
    return count / elapsed, latencies


async def concurrent_creates(
    base: str, count: int, connections: int, rng: random.Random, first: int
) -> tuple[float, list[float]]:
    """``count`` creates over ``connections`` connections, each sending one after another."""
    bodies = [orjson.dumps(patient(rng, first + i, SINGLE_SYSTEM)) for i in range(count)]
    latencies: list[float] = []
    clients = [
        httpx.AsyncClient(
            base_url=base, headers=headers(), timeout=120, limits=httpx.Limits(max_connections=1)
        )
        for _ in range(connections)
    ]

    async def worker(client: httpx.AsyncClient, mine: list[bytes]) -> None:
        for body in mine:
            t = time.perf_counter()
            resp = await client.post("/Patient", content=body, headers={"Content-Type": FHIR_JSON})
            latencies.append(time.perf_counter() - t)
            post_patient(resp)

    try:
        for c in clients:  # open every connection before the clock starts
            post_patient(await c.post("/Patient", content=bodies[0], headers={"Content-Type": FHIR_JSON}))
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c, bodies[i::connections]) for i, c in enumerate(clients)))
        elapsed = time.perf_counter() - t0
    finally:
        for c in clients:
            await c.aclose()
    return count / elapsed, latencies


@dataclass(slots=True)
class Load:
    """What a bulk load phase did: the ids the server gave, in the order of the resources sent."""

    ids: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    bundles: int = 0


async def bulk_load(base: str, bundles: Iterator[tuple[int, bytes]], total: int, what: str) -> Load:
    """POST the transaction Bundles with :data:`LOAD_IN_FLIGHT` in flight; ids from the ``location``s."""
    out = Load(ids=[""] * total)
    done = 0
    step = max(1, total // 10)
    next_report = step

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done, next_report
        for start, body in bundles:  # one shared iterator: Bundles are built in order, on demand
            resp = await client.post("/", content=body, headers={"Content-Type": FHIR_JSON})
            if resp.status_code != 200:
                raise SystemExit(f"transaction answered {resp.status_code}: {resp.text[:800]}")
            entries = orjson.loads(resp.content)["entry"]
            for i, entry in enumerate(entries):
                out.ids[start + i] = entry["response"]["location"].split("/")[1]
            out.bundles += 1
            done += len(entries)
            if done >= next_report:
                rate = done / (time.perf_counter() - t0)
                print(f"  ... {what}: {done:,}/{total:,} ({rate:,.0f}/s)", file=sys.stderr, flush=True)
                next_report += step

    async with httpx.AsyncClient(
        base_url=base, headers=headers(), timeout=600, limits=httpx.Limits(max_connections=LOAD_IN_FLIGHT)
    ) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(LOAD_IN_FLIGHT)))
        out.elapsed = time.perf_counter() - t0
    return out


def patient_bundles(rng: random.Random, count: int, size: int) -> Iterator[tuple[int, bytes]]:
    for start in range(0, count, size):
        yield start, transaction([patient(rng, n) for n in range(start, min(count, start + size))])


@dataclass(frozen=True, slots=True)
class ObsQuery:
    """A subject+code+date search built from one loaded Observation (so it matches at least that one)."""

    subject: str
    code: str
    since: str


def observation_bundles(
    rng: random.Random,
    count: int,
    size: int,
    patient_ids: Sequence[str],
    targets: set[int],
    queries: dict[int, ObsQuery],
) -> Iterator[tuple[int, bytes]]:
    """The Observation Bundles; for each index in ``targets`` a query is kept in ``queries``."""
    for start in range(0, count, size):
        batch = []
        for n in range(start, min(count, start + size)):
            obs = observation(rng, n, f"Patient/{patient_ids[rng.randrange(len(patient_ids))]}")
            if n in targets:
                at = datetime.fromisoformat(obs["effectiveDateTime"].replace("Z", "+00:00")).astimezone(UTC)
                since = (at - timedelta(days=rng.randrange(400))).date().isoformat()
                queries[n] = ObsQuery(obs["subject"]["reference"], obs["code"]["coding"][0]["code"], since)
            batch.append(obs)
        yield start, transaction(batch)


@dataclass(slots=True)
class Timed:
    """Latencies of one kind of question and the number of matches of each answer."""

    latencies: list[float] = field(default_factory=list)
    matches: list[int] = field(default_factory=list)


def api_searches(
    base: str, kind: str, requests: Sequence[tuple[str, dict[str, str]]], expect_one: bool = False
) -> tuple[Timed, int]:
    """Run ``requests`` (path, params) one after another; (timings, answers that were not as expected)."""
    timed = Timed()
    odd = 0
    with httpx.Client(base_url=base, headers=headers(), timeout=120) as client:
        client.get("/metadata")  # the connection is open before the clock starts
        for path, params in requests:
            t = time.perf_counter()
            resp = client.get(path, params=params)
            timed.latencies.append(time.perf_counter() - t)
            if resp.status_code != 200:
                odd += 1
                print(f"  warning: {kind} answered {resp.status_code}: {resp.text[:300]}", file=sys.stderr)
                timed.matches.append(-1)
                continue
            body = orjson.loads(resp.content)
            if body.get("resourceType") == "Bundle":
                n = int(body.get("total", len(body.get("entry", []))))
                timed.matches.append(n)
                if expect_one and (n != 1 or len(body.get("entry", [])) != 1):
                    odd += 1
            else:
                timed.matches.append(1)
    return timed, odd


SCAN_IDENTIFIER = (
    "SELECT id FROM fhir_resources WHERE type = 'Patient' AND deleted = 0 AND EXISTS"
    " (SELECT 1 FROM json_each(CAST(body AS TEXT), '$.identifier')"
    "  WHERE json_extract(value, '$.value') = ? AND json_extract(value, '$.system') = ?)"
)
SCAN_NAME = (
    "SELECT id FROM fhir_resources WHERE type = 'Patient' AND deleted = 0 AND EXISTS"
    " (SELECT 1 FROM json_each(CAST(body AS TEXT), '$.name') AS n"
    "  WHERE json_extract(n.value, '$.family') LIKE ?1"
    "  OR EXISTS (SELECT 1 FROM json_each(n.value, '$.given') AS g WHERE g.value LIKE ?1))"
    " ORDER BY id"
)
SCAN_OBSERVATION = (
    "SELECT id FROM fhir_resources WHERE type = 'Observation' AND deleted = 0"
    " AND json_extract(CAST(body AS TEXT), '$.subject.reference') = ?"
    " AND EXISTS (SELECT 1 FROM json_each(CAST(body AS TEXT), '$.code.coding')"
    "  WHERE json_extract(value, '$.code') = ? AND json_extract(value, '$.system') = ?)"
    " AND datetime(json_extract(CAST(body AS TEXT), '$.effectiveDateTime')) >= ?"
    " ORDER BY id"
)
"""``ge<date>``: the resource's time (converted to UTC by SQLite's ``datetime``) at or after the
start of that UTC day, as the index compares it."""


def scan(conn: sqlite3.Connection, sql: str, args: Sequence[tuple[Any, ...]]) -> Timed:
    timed = Timed()
    for a in args:
        t = time.perf_counter()
        rows = conn.execute(sql, a).fetchall()
        timed.latencies.append(time.perf_counter() - t)
        timed.matches.append(len(rows))
    return timed


def row(label: str, api: Timed, base: Timed | None) -> str:
    line = f"{label:34} {len(api.latencies):>5}  {statistics.median(api.latencies) * 1000:9.2f} {pct(api.latencies, 0.99):9.2f}"
    if base is None:
        return line + f"  {'':>5}  {'':>9} {'':>9}  {'-':>9}"
    b50, a50 = statistics.median(base.latencies), statistics.median(api.latencies)
    return (
        line
        + f"  {len(base.latencies):>5}  {b50 * 1000:9.2f} {pct(base.latencies, 0.99):9.2f}  {b50 / a50:8.1f}x"
    )


def size_of(path: Path) -> str:
    main = path.stat().st_size
    wal = path.with_name(path.name + "-wal")
    extra = wal.stat().st_size if wal.exists() else 0
    return f"{main / 2**20:,.0f} MiB (+ WAL {extra / 2**20:,.0f} MiB)"


# -- the run --------------------------------------------------------------------------------------


def run(args: argparse.Namespace, workdir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    gateway = start_gateway(workdir, port)
    try:
        measure(args, base, workdir / "data" / DB_FILE)
    finally:
        stop_gateway(gateway)


def measure(args: argparse.Namespace, base: str, db: Path) -> None:
    rng = random.Random(7)
    print(
        f"FHIR API bench: {args.patients:,} Patients, {args.observations:,} Observations, Bundles of"
        f" {args.bundle}, cpus={os.cpu_count()}, SQLite {sqlite3.sqlite_version}, gateway and client"
        " on this machine"
    )

    print(f"\n1. single creates (POST /fhir/Patient, {args.single:,} each)")
    rate1, lat1 = single_creates(base, args.single, rng, 0)
    print(f"   1 connection          {rate1:8.0f} creates/s   {p50_p99(lat1)}")
    rate_n, lat_n = asyncio.run(concurrent_creates(base, args.single, args.concurrency, rng, args.single))
    print(f"   {args.concurrency} connections{'':9} {rate_n:8.0f} creates/s   {p50_p99(lat_n)}")

    print(f"\n2. bulk load (transaction Bundles of {args.bundle}, {LOAD_IN_FLIGHT} in flight)")
    pats = asyncio.run(
        bulk_load(base, patient_bundles(rng, args.patients, args.bundle), args.patients, "Patients")
    )
    print(
        f"   Patients      {args.patients:>10,} in {pats.elapsed:8.1f} s  {args.patients / pats.elapsed:8.0f}"
        f" resources/s  ({pats.bundles} Bundles)"
    )
    qrng = random.Random(11)
    targets = set(qrng.sample(range(args.observations), min(args.queries, args.observations)))
    obs_queries: dict[int, ObsQuery] = {}
    obs = asyncio.run(
        bulk_load(
            base,
            observation_bundles(rng, args.observations, args.bundle, pats.ids, targets, obs_queries),
            args.observations,
            "Observations",
        )
    )
    print(
        f"   Observations  {args.observations:>10,} in {obs.elapsed:8.1f} s  {args.observations / obs.elapsed:8.0f}"
        f" resources/s  ({obs.bundles} Bundles)"
    )

    # -- 3. the questions, each asked the same way of the API and of the scan
    mrns = [qrng.randrange(args.patients) for _ in range(args.queries)]
    prefixes = [qrng.choice(SURNAMES)[:3] for _ in range(args.queries)]
    oq = [obs_queries[n] for n in sorted(obs_queries)]
    qrng.shuffle(oq)
    reads = [pats.ids[qrng.randrange(args.patients)] for _ in range(args.queries)]

    print(f"\n3. search latency (one connection, {args.queries} queries each, after the load)")
    ident, odd_ident = api_searches(
        base, "identifier", [("/Patient", {"identifier": f"{MRN_SYSTEM}|MRN{n}"}) for n in mrns], True
    )
    name, odd_name = api_searches(base, "name", [("/Patient", {"name": p, "_count": "20"}) for p in prefixes])
    subj, odd_subj = api_searches(
        base,
        "subject+code+date",
        [
            (
                "/Observation",
                {"subject": q.subject, "code": f"{LOINC}|{q.code}", "date": f"ge{q.since}", "_count": "20"},
            )
            for q in oq
        ],
    )
    read, odd_read = api_searches(base, "read", [(f"/Patient/{rid}", {}) for rid in reads])

    k = args.baseline_queries
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    scans = {
        "identifier": scan(conn, SCAN_IDENTIFIER, [(f"MRN{n}", MRN_SYSTEM) for n in mrns[:k]]),
        "name": scan(conn, SCAN_NAME, [(f"{p}%",) for p in prefixes[:k]]),
        "subject": scan(
            conn, SCAN_OBSERVATION, [(q.subject, q.code, LOINC, f"{q.since} 00:00:00") for q in oq[:k]]
        ),
    }
    (index_rows,) = conn.execute("SELECT count(*) FROM fhir_index").fetchone()
    (resource_rows,) = conn.execute("SELECT count(*) FROM fhir_resources").fetchone()
    conn.close()

    print(f"   {'':34} {'API (HTTP round trip, index)':^27}  {'scan of bodies (SQLite alone)':^27}  scan/API")
    print(
        f"   {'question':34} {'n':>5}  {'p50 ms':>9} {'p99 ms':>9}  {'n':>5}  {'p50 ms':>9} {'p99 ms':>9}  {'p50':>9}"
    )
    print("   " + row("(a) Patient?identifier=sys|MRN", ident, scans["identifier"]))
    print("   " + row("(b) Patient?name=<3 letters>", name, scans["name"]))
    print("   " + row("(c) Observation?subject&code&date", subj, scans["subject"]))
    print("   " + row("(d) read Patient/<id>", read, None))

    # the scans answered the first k of the API's questions: compare the answers on those
    print(f"   matches per answer on the {k} questions both answered (API total / scan, mean, same count):")
    for label, api, base_ in (
        ("identifier", ident, scans["identifier"]),
        ("name", name, scans["name"]),
        ("subject+code+date", subj, scans["subject"]),
    ):
        pairs = list(zip(api.matches, base_.matches, strict=False))
        same = sum(1 for a, b in pairs if a == b)
        a_mean = statistics.fmean(a for a, _ in pairs) if pairs else 0.0
        b_mean = statistics.fmean(b for _, b in pairs) if pairs else 0.0
        print(f"     {label:18} {a_mean:8.2f} / {b_mean:8.2f}   same for {same} of {len(pairs)}")
    print("     (the name scan's LIKE does not fold accents as the index does, so its counts may be lower)")
    warnings = {
        "identifier not exactly 1 match": odd_ident,
        "name not 200": odd_name,
        "subject+code+date not 200": odd_subj,
        "read not 200": odd_read,
    }
    bad = {k: v for k, v in warnings.items() if v}
    print("   warnings: " + (", ".join(f"{k}: {v}" for k, v in bad.items()) if bad else "none"))

    print("\n4. store after the load")
    print(f"   database file {size_of(db)}")
    print(f"   fhir_resources rows {resource_rows:,}   fhir_index rows {index_rows:,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--observations", type=int, default=1_000_000)
    ap.add_argument("--bundle", type=int, default=500, help="entries per transaction Bundle")
    ap.add_argument("--queries", type=int, default=300, help="API queries of each kind")
    ap.add_argument("--single", type=int, default=2000, help="single creates, sequential and concurrent")
    ap.add_argument("--concurrency", type=int, default=8, help="connections for the concurrent creates")
    ap.add_argument("--baseline-queries", type=int, default=20, help="scan queries of each kind")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (and its database)")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fhir-bench-", dir="/tmp"))
    t0 = time.perf_counter()
    try:
        run(args, workdir)
    finally:
        took = time.perf_counter() - t0
        if args.keep:
            print(f"\nkept {workdir} (database {workdir / 'data' / DB_FILE}); run took {took:.0f} s")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            print(f"\nrun took {took:.0f} s")


if __name__ == "__main__":
    main()
