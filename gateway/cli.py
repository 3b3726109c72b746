"""The ``gateway`` command: serve, send, messages, lineage, check.

Commands that read the store take the same ``--config`` and ``--data-dir``
options as ``serve`` and work whether or not the server is running.
Exit status: 0 on success, 1 when a message was not accepted or the lineage
is broken, 2 on a usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.config import Settings, load_settings, parse_address
from gateway.errors import ConfigError, StoreError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

SINCE_HELP = "ISO 8601 date or date-time (UTC if it names no zone)"
UNTIL_HELP = "ISO 8601 date or date-time, exclusive (UTC if it names no zone)"


def _moment(text: str) -> str:
    """A ``--since``/``--until`` value as UTC (:func:`gateway.envelope.utc_moment`); argparse reports others."""
    from gateway.envelope import utc_moment

    try:
        return utc_moment(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or date-time: {text!r}") from None


def _count(text: str) -> int:
    """A ``--limit``: a whole number of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more: {text!r}")
    return value


def _overrides(args: argparse.Namespace) -> dict[tuple[str, ...], Any]:
    overrides: dict[tuple[str, ...], Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides[("data_dir",)] = args.data_dir
    if getattr(args, "mllp", None) is not None and args.command == "serve":
        overrides[("mllp", "address")] = args.mllp
    if getattr(args, "http", None) is not None and args.command == "serve":
        overrides[("http", "address")] = args.http
    if getattr(args, "iso8583", None) is not None and args.command == "serve":
        overrides[("iso8583", "address")] = args.iso8583
    return overrides


def _settings(args: argparse.Namespace) -> Settings:
    """The command's settings; only ``serve`` needs the secrets it alone uses (API keys, webhook secrets,
    sink headers) set in the environment, the other commands read the store or the file without them."""
    return load_settings(
        getattr(args, "config", None), _overrides(args), secrets_required=args.command == "serve"
    )


def _store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file (also GATEWAY_CONFIG)")
    p.add_argument("--data-dir", help="data directory of the embedded store (also GATEWAY_DATA_DIR)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="Connector gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the gateway (MLLP and HTTP listeners on the embedded store)")
    _store_options(p)
    p.add_argument("--mllp", help="MLLP address HOST:PORT, or 'off' (default 127.0.0.1:2575)")
    p.add_argument("--http", help="HTTP address HOST:PORT, or 'off' (default 127.0.0.1:8080)")
    p.add_argument("--iso8583", help="ISO 8583 TCP address HOST:PORT, or 'off' (the default)")

    p = sub.add_parser("send", help="send HL7 v2 files over MLLP or HTTP and print each ACK's MSA line")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--mllp", metavar="HOST:PORT")
    target.add_argument("--http", metavar="URL", help="for example http://127.0.0.1:8080/ingest/hl7v2")
    p.add_argument("--api-key", help="API key for --http (default: GATEWAY_API_KEY, then DATA_DIR/api-key)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each reply")
    _store_options(p)
    p.add_argument("files", nargs="+", type=Path)

    p = sub.add_parser("messages", help="list or show received messages")
    msub = p.add_subparsers(dest="action", required=True)
    q = msub.add_parser("list")
    _store_options(q)
    for name in ("control-id", "protocol", "message-type"):
        q.add_argument(f"--{name}")
    q.add_argument("--status", choices=["accepted", "rejected", "batch"])
    q.add_argument("--since", type=_moment, help=SINCE_HELP)
    q.add_argument("--until", type=_moment, help=UNTIL_HELP)
    q.add_argument("--limit", type=_count, default=50, help="rows to show, newest first (default 50)")
    q.add_argument("--before", metavar="ID", help="only messages older than this id: the next page")
    q.add_argument("--json", action="store_true")
    q = msub.add_parser("show")
    _store_options(q)
    q.add_argument("id")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("lineage", help="verify the lineage hash chain")
    lsub = p.add_subparsers(dest="action", required=True)
    q = lsub.add_parser("verify")
    _store_options(q)
    q.add_argument("--json", action="store_true")
    q.add_argument(
        "--checkpoints",
        type=Path,
        metavar="FILE",
        help="signed checkpoint file (default: the file and the endpoint of the config)",
    )
    q.add_argument(
        "--checkpoints-url",
        metavar="URL",
        help="endpoint that answers the signed checkpoints on GET (default: from the config); "
        "with --checkpoints both are read, with either only the one(s) given",
    )
    q.add_argument(
        "--checkpoints-token-env",
        metavar="VAR",
        help="environment variable holding the endpoint's bearer token (default: lineage.checkpoint_token_env)",
    )
    q.add_argument("--public-key", type=Path, help="Ed25519 public key (PEM) the checkpoints are signed with")
    q.add_argument("--require-checkpoints", action="store_true", help="fail when there is no checkpoint")
    q = lsub.add_parser("trace", help="a message's journey: receipt, validation, route, deliveries, reads")
    _store_options(q)
    q.add_argument("id")
    q.add_argument("--json", action="store_true")
    q = lsub.add_parser("search", help="lineage events by business key, message, route, sink, outcome, time")
    _store_options(q)
    q.add_argument(
        "--key",
        help="a business key value, e.g. a patient id as ID^^^AUTHORITY, or a FHIR resource as Type/id",
    )
    for name in (
        "control-id",
        "sender",
        "receiver",
        "protocol",
        "message-type",
        "route",
        "sink",
        "event",
        "outcome",
    ):
        q.add_argument(f"--{name}")
    q.add_argument("--since", type=_moment, help=SINCE_HELP)
    q.add_argument("--until", type=_moment, help=UNTIL_HELP)
    q.add_argument("--after-seq", type=int, default=0)
    q.add_argument("--limit", type=_count, default=1000)
    q.add_argument("--json", action="store_true")
    q = lsub.add_parser(
        "export",
        help="lineage events of a time range as CSV, JSON lines, or FHIR AuditEvent/Provenance NDJSON",
    )
    _store_options(q)
    q.add_argument("--since", type=_moment, help=SINCE_HELP)
    q.add_argument("--until", type=_moment, help=UNTIL_HELP)
    q.add_argument(
        "--format",
        choices=["jsonl", "csv", "fhir"],
        default="jsonl",
        help="fhir: one FHIR R4 AuditEvent per event and a Provenance per derived message, one per line",
    )
    q.add_argument("--output", "-o", type=Path)
    q = lsub.add_parser(
        "prune", help="remove bodies and lineage events past their retention (lineage.retention)"
    )
    _store_options(q)
    q = lsub.add_parser("graph", help="a message's journey as a picture (SVG or PNG) for auditors")
    _store_options(q)
    q.add_argument("id")
    q.add_argument("--format", choices=["svg", "png"], default="svg")
    q.add_argument("--output", "-o", type=Path, help="write here instead of standard output")

    p = sub.add_parser("access", help="periodic access review of the API keys")
    asub = p.add_subparsers(dest="action", required=True)
    q = asub.add_parser("review", help="every API key: scopes, last use, what it read and wrote in a period")
    _store_options(q)
    q.add_argument("--since", type=_moment, required=True, help=SINCE_HELP)
    q.add_argument("--until", type=_moment, help=UNTIL_HELP)
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("check", help="validate a config file (and its route tests) without side effects")
    p.add_argument("config_file", type=Path)
    p.add_argument(
        "--test", type=Path, metavar="ROUTE_TESTS", help="YAML table of fixture → expected route and sinks"
    )

    p = sub.add_parser("convert", help="convert HL7 v2 messages to FHIR R4 transaction Bundles (JSON)")
    p.add_argument("files", type=Path, nargs="+", metavar="FILE.hl7")
    p.add_argument("--tables", type=Path, metavar="DIR", help="HL7 → FHIR mapping tables that override ours")

    p = sub.add_parser("docs", help="document the routing table of a config: picture and table")
    p.add_argument("config_file", type=Path)
    p.add_argument("--format", choices=["markdown", "mermaid", "svg"], default="markdown")
    p.add_argument("--output", "-o", type=Path, help="write here instead of standard output")

    p = sub.add_parser("deliveries", help="list outbox rows (dead letters with --status dead)")
    dsub = p.add_subparsers(dest="action", required=True)
    q = dsub.add_parser("list")
    _store_options(q)
    q.add_argument("--status", choices=["pending", "delivered", "dead"])
    q.add_argument("--sink")
    q.add_argument("--limit", type=_count, default=50)
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("inventory", help="the inventory ledger: show a SKU, record a stock count, reconcile")
    isub = p.add_subparsers(dest="action", required=True)
    q = isub.add_parser(
        "show", help="on hand, reserved, available-to-sell, last movements and pushes of a SKU"
    )
    _store_options(q)
    q.add_argument("sku")
    q.add_argument("--movements", type=int, default=20)
    q.add_argument("--json", action="store_true")
    q = isub.add_parser("count", help="record a stock take: the quantity counted on hand at a location")
    _store_options(q)
    q.add_argument("sku")
    q.add_argument("--location", required=True)
    q.add_argument("--on-hand", type=int, required=True)
    q = isub.add_parser(
        "reconcile", help="compare channels' reported levels with the ledger (exit 1 on drift)"
    )
    _store_options(q)
    q.add_argument("--fix", action="store_true", help="have the gateway push the ledger's level again")
    q.add_argument("--json", action="store_true")

    p = sub.add_parser("subjects", help="data subjects: of routes with storage: encrypted, and FHIR patients")
    ssub = p.add_subparsers(dest="action", required=True)
    q = ssub.add_parser(
        "erase",
        help="erase a data subject: their encrypted bodies become unreadable for good, and for "
        "Patient/<id> the FHIR store's Patient and the resources about it are expunged",
    )
    _store_options(q)
    q.add_argument(
        "subject", help="the subject's value as the route's subject header carries it (FHIR: Patient/<id>)"
    )

    p = sub.add_parser("replay", help="make dead-lettered deliveries pending again (recorded in lineage)")
    _store_options(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("id", nargs="?", help="message id: replay its dead deliveries")
    which.add_argument("--sink", help="replay every dead delivery of this sink")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(_dispatch(args))
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except StoreError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "serve":
        from gateway.logs import setup_logging
        from gateway.server import run

        settings = _settings(args)
        setup_logging(settings.log_level)
        config_file = args.config or os.environ.get("GATEWAY_CONFIG")
        run(settings, Path(config_file) if config_file else None, _overrides(args))
        return EXIT_OK
    if args.command == "send":
        return _send(args)
    if args.command == "messages":
        return _messages(args)
    if args.command == "lineage":
        return _lineage(args)
    if args.command == "check":
        from gateway.routecheck import check_report

        ok, lines = check_report(
            load_settings(args.config_file, environ={}, secrets_required=False), args.test
        )
        for line in lines:
            print(line)
        print(f"{args.config_file}: {'ok' if ok else 'FAILED'}")
        return EXIT_OK if ok else EXIT_FAILED
    if args.command == "docs":
        from gateway.docs import render

        text = render(load_settings(args.config_file, environ={}, secrets_required=False), args.format)
        if args.output:
            args.output.write_text(text, encoding="utf-8")
        else:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return EXIT_OK
    if args.command == "convert":
        return _convert(args)
    if args.command == "deliveries":
        return _deliveries(args)
    if args.command == "access":
        return _access_review(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "inventory":
        return _inventory(args)
    if args.command == "subjects":
        return _erase_subject(args)
    return EXIT_USAGE


def _convert(args: argparse.Namespace) -> int:
    """Print each file's message as a FHIR Bundle; exit 1 when one cannot be converted."""
    from adapters.fhir.resources import pretty_json
    from adapters.hl7.er7 import split_batch
    from adapters.hl7.to_fhir import ConversionError, Tables, convert
    from gateway.envelope import sha256_hex

    tables = Tables.load(args.tables) if args.tables else None
    status = EXIT_OK
    for path in args.files:
        raw = _read_file(path)
        if raw is None:
            status = EXIT_FAILED
            continue
        batch = split_batch(raw)
        for unit in batch.units if batch is not None and batch.units else [raw]:
            try:
                bundle = convert(unit, raw_sha256=sha256_hex(unit), tables=tables)
            except ConversionError as exc:
                print(f"{path}: cannot convert ({exc.code}): {exc}", file=sys.stderr)
                status = EXIT_FAILED
                continue
            sys.stdout.write(pretty_json(bundle))
    return status


def _erase_subject(args: argparse.Namespace) -> int:
    """Delete the subject's data key and expunge what the FHIR store holds about them; record the
    erasure (by pseudonym) in lineage."""
    import getpass

    from adapters import EXPUNGERS
    from gateway.server import open_store

    store = open_store(_settings(args).data_dir)
    actor = f"user:{getpass.getuser()} (cli)"
    try:
        done = asyncio.run(store.erase_subject(args.subject, actor, EXPUNGERS))
    finally:
        store.close()
    print(
        f"subject erased: {done.bodies} encrypted message bodies can no longer be read, "
        f"{done.records} FHIR resources expunged (whole, or their versions about the subject); "
        "lineage still verifies"
    )
    return EXIT_OK


def _inventory(args: argparse.Namespace) -> int:
    """Read the ledger from the store (the server may be running or stopped); counts and fixes are written
    with lineage, and a running gateway pushes the result at its next sweep."""
    import getpass

    from gateway.inventory import find_drift, inventory_view, record_reconciliation
    from gateway.server import open_store

    settings = _settings(args)
    if settings.inventory is None:
        raise ConfigError("inventory: the configuration has no inventory section")
    actor = f"user:{getpass.getuser()} (cli)"
    if args.action == "show":
        view = inventory_view(_open_reader(args), settings.inventory, args.sku, args.movements)
        if args.json:
            print(json.dumps(view, indent=2))
            return EXIT_OK
        print(
            f"{view['sku']}: on hand {view['on_hand']}, reserved {view['reserved']}, safety stock "
            f"{view['safety_stock']}, available {view['available']} (ledger version {view['version']})"
        )
        for loc in view["locations"]:
            print(f"    {loc['location']}: on hand {loc['on_hand']}, reserved {loc['reserved']}")
        for name, pushed in view["channels"].items():
            shown = f"{pushed['available']} at {pushed['pushed_at']}" if pushed else "nothing yet"
            print(f"    channel {name}: last pushed {shown}")
        for m in view["movements"]:
            print(
                f"    {m['at']}  {m['kind']:10} {m['on_hand']:+d} on hand {m['reserved']:+d} reserved  "
                f"{m['location']}  {m['source']} {m['message_id'] or ''}"
            )
        return EXIT_OK
    store = open_store(settings.data_dir)
    try:
        if args.action == "count":
            level = asyncio.run(store.adjust_stock(args.sku, args.location, args.on_hand, actor))
            print(f"{args.sku}: on hand {level.on_hand} over all locations (version {level.version})")
            return EXIT_OK
        drift = find_drift(store, settings.inventory)
        asyncio.run(record_reconciliation(store, drift, args.fix, actor))
    finally:
        store.close()
    if args.json:
        print(json.dumps([d.as_dict() for d in drift], indent=2))
    else:
        for d in drift:
            print(
                f"{d.channel} {d.sku}: channel shows {d.reported}, ledger {d.available} ({d.reported - d.available:+d})"
            )
        print(
            f"{len(drift)} drifted"
            + (" (fixed: the gateway pushes them again)" if args.fix and drift else "")
        )
    return EXIT_FAILED if drift and not args.fix else EXIT_OK


def _access_review(args: argparse.Namespace) -> int:
    """Configured keys with their scopes, plus any name seen in the period that is no longer configured."""
    from gateway.security import BOOTSTRAP_KEY_FILE

    settings = _settings(args)
    store = _open_reader(args)
    usage = store.access_summary(args.since, args.until)
    keys: dict[str, dict[str, Any]] = {
        k.name: {"scopes": list(k.scopes), "source": "config"} for k in settings.auth.api_keys
    }
    bootstrap = settings.data_dir / BOOTSTRAP_KEY_FILE
    if not keys and bootstrap.exists():
        created = datetime.fromtimestamp(bootstrap.stat().st_mtime, UTC).isoformat()
        keys["bootstrap"] = {"scopes": ["(all)"], "source": f"{bootstrap} created {created}"}
    report: list[dict[str, Any]] = []
    for name in sorted(set(keys) | set(usage)):
        entry: dict[str, Any] = {
            "name": name,
            **keys.get(name, {"scopes": [], "source": "NOT CONFIGURED NOW"}),
        }
        entry.update(usage.get(name, {"events": {}, "last_used": ""}))
        report.append(entry)
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    for e in report:
        activity = ", ".join(f"{k} {v}" for k, v in sorted(e["events"].items())) or "no activity"
        print(f"{e['name']}: scopes {', '.join(e['scopes']) or '-'} ({e['source']})")
        print(f"    last used {e['last_used'] or 'never in the period'}; {activity}")
    return EXIT_OK


def _deliveries(args: argparse.Namespace) -> int:
    store = _open_reader(args)
    rows = store.list_deliveries(args.status, args.sink, args.limit)
    if args.json:
        for r in rows:
            print(json.dumps(r.as_dict()))
        return EXIT_OK
    print(f"{'DELIVERY':40}  {'SINK':12}  {'STATE':9}  {'TRIES':>5}  LAST ERROR")
    for r in rows:
        d = r.as_dict()
        print(
            f"{r.id:40}  {r.sink[:12]:12}  {d['state']:9}  {r.attempts:>5}  {r.last_error_code} {r.last_error}"
        )
    return EXIT_OK


def _replay(args: argparse.Namespace) -> int:
    import getpass

    from gateway.server import open_store

    settings = _settings(args)
    store = open_store(settings.data_dir)
    try:
        count = asyncio.run(store.replay(args.id, args.sink, f"user:{getpass.getuser()} (cli)"))
    finally:
        store.close()
    print(f"{count} deliveries made pending again; a running gateway picks them up within a second")
    return EXIT_OK if count else EXIT_FAILED


def _open_reader(args: argparse.Namespace) -> Any:
    from gateway.security import pseudonym_key
    from gateway.server import DB_FILE
    from gateway.store.sqlite import SQLiteStore

    settings = _settings(args)
    path = settings.data_dir / DB_FILE
    if not path.exists():
        raise StoreError(f"no store at {path} (is --data-dir right?)")
    return SQLiteStore(path, pseudonym_key(settings.data_dir))


def _messages(args: argparse.Namespace) -> int:
    from gateway.store import MessageFilter

    store = _open_reader(args)
    if args.action == "list":
        rows = store.list_messages(
            MessageFilter(
                control_id=args.control_id,
                protocol=args.protocol,
                message_type=args.message_type,
                status=args.status,
                since=args.since,
                until=args.until,
                limit=args.limit,
                before_id=args.before,
            )
        )
        if args.json:
            for r in rows:
                print(json.dumps(r.as_dict()))
            return EXIT_OK
        # columns as wide as their widest value (Observation, pacs.008.001.08, a UUID control id), within bounds
        tw = min(max([10, *(len(r.message_type) for r in rows)]), 24)
        cw = min(max([20, *(len(r.control_id) for r in rows)]), 36)
        print(f"{'ID':26}  {'RECEIVED':25}  {'TYPE':{tw}}  {'CONTROL ID':{cw}}  {'STATUS':9}  REPLY")
        for r in rows:
            print(
                f"{r.id:26}  {r.received_at[:25]:25}  {r.message_type[:tw]:{tw}}  {r.control_id[:cw]:{cw}}"
                f"  {r.status:9}  {r.reply_code}"
            )
        return EXIT_OK
    row = store.get_message(args.id)
    if row is None:
        print(f"gateway: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    events = store.lineage_of(args.id)
    deliveries = store.deliveries_of(args.id)
    if args.json:
        out = row.as_dict()
        out["deliveries"] = [d.as_dict() for d in deliveries]
        out["lineage"] = [e.as_dict() for e in events]
        print(json.dumps(out, indent=2))
        return EXIT_OK
    d = row.as_dict()
    for key in (
        "id",
        "received_at",
        "protocol",
        "version",
        "message_type",
        "control_id",
        "sender",
        "receiver",
        "status",
        "reply_code",
        "route",
        "listener",
        "peer",
        "raw_sha256",
        "size",
        "parent_id",
    ):
        print(f"{key:12} {d[key] if d[key] is not None else ''}")
    for issue in row.issues:
        print(f"issue        {issue['severity']} {issue['code']} {issue['location']} {issue['diagnostics']}")
    for dl in deliveries:
        d = dl.as_dict()
        when = f" next attempt {d['next_attempt_at']}" if d["state"] == "retrying" else ""
        error = f" last error {dl.last_error_code}: {dl.last_error}" if dl.last_error_code else ""
        print(f"delivery     {dl.sink}: {d['state']} after {dl.attempts} attempt(s){when}{error}")
    print("lineage:")
    for e in events:
        extra = f" error={e.error_code}" if e.error_code else ""
        print(f"  {e.seq:>8}  {e.at[:26]:26}  {e.event:18} {e.outcome:10} actor={e.actor}{extra}")
    return EXIT_OK


def _lineage(args: argparse.Namespace) -> int:
    if args.action == "trace":
        return _trace(args)
    if args.action == "export":
        return _export(args)
    if args.action == "graph":
        return _graph(args)
    if args.action == "prune":
        return _prune(args)
    if args.action == "search":
        from gateway.store import EventQuery

        store = _open_reader(args)
        query = EventQuery(
            key=args.key,
            control_id=args.control_id,
            sender=args.sender,
            receiver=args.receiver,
            protocol=args.protocol,
            message_type=args.message_type,
            route=args.route,
            sink=args.sink,
            event=args.event,
            outcome=args.outcome,
            since=args.since,
            until=args.until,
            after_seq=args.after_seq,
            limit=args.limit,
        )
        for e in store.search_events(query):
            if args.json:
                print(json.dumps(e.as_dict(), sort_keys=True))
            else:
                print(f"{e.seq:>8}  {e.at[:23]}  {e.envelope_id}  {e.event:18} {e.outcome}  {e.actor}")
        return EXIT_OK
    from gateway.checkpoints import checkpoint_sinks, public_path, verify_store

    settings = _settings(args)
    store = _open_reader(args)
    lineage = settings.lineage
    if args.checkpoints is None and args.checkpoints_url is None:
        checkpoint_file, checkpoint_url = settings.checkpoint_file(), lineage.checkpoint_url
    else:
        checkpoint_file, checkpoint_url = args.checkpoints, args.checkpoints_url
    checkpoints = checkpoint_sinks(
        checkpoint_file,
        checkpoint_url,
        token_env=args.checkpoints_token_env or lineage.checkpoint_token_env,
        timeout_s=lineage.checkpoint_timeout_s,
        ca_file=lineage.checkpoint_ca_file,
    )
    public_key = args.public_key or public_path(settings.signing_key())
    result = verify_store(store, checkpoints, public_key, require_checkpoints=args.require_checkpoints)
    if args.json:
        print(json.dumps(result.as_dict()))
    elif result.ok:
        held = f", held against {result.checkpoints} signed checkpoints" if result.checkpoints else ""
        print(f"lineage intact: {result.events} events, last seq {result.last_seq}{held}")
        for warning in result.warnings:
            print(f"warning: {warning}")
    else:
        print(f"lineage BROKEN at seq {result.first_bad_seq}: {result.reason}")
    return EXIT_OK if result.ok else EXIT_FAILED


def _trace(args: argparse.Namespace) -> int:
    store = _open_reader(args)
    row = store.get_message(args.id)
    if row is None:
        print(f"gateway: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    children = store.children_of(args.id)
    deliveries = store.deliveries_of(args.id)
    events = store.lineage_of(args.id)
    if args.json:
        print(
            json.dumps(
                {
                    "message": row.as_dict(),
                    "children": [c.as_dict() for c in children],
                    "deliveries": [d.as_dict() for d in deliveries],
                    "events": [e.as_dict() for e in events],
                },
                indent=2,
            )
        )
        return EXIT_OK
    print(f"{row.id}  {row.message_type}  control id {row.control_id}  from {row.sender}  via {row.listener}")
    print(
        f"  received {row.received_at} from {row.peer or '-'}  status {row.status}  route {row.route or '-'}"
    )
    for child in children:
        print(f"  carries {child.id}  {child.message_type}  {child.status}")
    for d in deliveries:
        print(f"  delivery to {d.sink}: {d.as_dict()['state']} after {d.attempts} attempt(s)")
    for e in events:
        subject = "" if e.envelope_id == args.id else f"  ({e.envelope_id})"
        error = f" {e.error_code}" if e.error_code else ""
        print(f"  {e.seq:>8}  {e.at[:23]}  {e.event:18} {e.outcome}{error}  {e.actor}{subject}")
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    import csv

    store = _open_reader(args)
    out = args.output.open("w", encoding="utf-8", newline="") if args.output else sys.stdout
    count = 0
    if args.format == "fhir":
        from gateway.lineage_fhir import fhir_export

        try:
            for resource in fhir_export(store.events_between(args.since, args.until)):
                out.write(json.dumps(resource, sort_keys=True, separators=(",", ":")) + "\n")
                count += 1
        finally:
            if args.output:
                out.close()
        print(f"{count} FHIR resources exported", file=sys.stderr)
        return EXIT_OK
    try:
        fields = [
            "seq",
            "at",
            "event",
            "envelope_id",
            "parent_id",
            "actor",
            "outcome",
            "error_code",
            "raw_sha256",
            "details",
            "prev_hash",
            "hash",
        ]
        writer = csv.DictWriter(out, fieldnames=fields) if args.format == "csv" else None
        if writer is not None:
            writer.writeheader()
        for event in store.events_between(args.since, args.until):
            row = event.as_dict()
            if writer is not None:
                writer.writerow({**row, "details": json.dumps(row["details"], sort_keys=True)})
            else:
                out.write(json.dumps(row, sort_keys=True) + "\n")
            count += 1
    finally:
        if args.output:
            out.close()
    print(f"{count} events exported", file=sys.stderr)
    return EXIT_OK


def _prune(args: argparse.Namespace) -> int:
    """Prune once, as the running gateway does every ``lineage.retention.every_s``."""
    import getpass

    from gateway.checkpoints import checkpoint_sinks, load_or_create_key
    from gateway.envelope import utcnow
    from gateway.retention import prune
    from gateway.server import open_store

    settings = _settings(args)
    policy = settings.lineage.retention
    if policy is None:
        raise ConfigError("lineage.retention: the configuration keeps everything (no retention section)")
    lineage = settings.lineage
    sinks = checkpoint_sinks(
        settings.checkpoint_file(),
        lineage.checkpoint_url,
        token_env=lineage.checkpoint_token_env,
        timeout_s=lineage.checkpoint_timeout_s,
        ca_file=lineage.checkpoint_ca_file,
    )
    store = open_store(settings.data_dir)
    try:
        key = load_or_create_key(settings.signing_key())
        done = asyncio.run(prune(store, policy, key, sinks, utcnow(), f"user:{getpass.getuser()} (cli)"))
    finally:
        store.close()
    through = f", events through seq {done.through_seq}" if done.through_seq else ""
    print(f"pruned {done.bodies} bodies and {done.events} lineage events{through}")
    return EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    from gateway.journey import journey, journey_png, journey_svg

    j = journey(_open_reader(args), args.id)
    if j is None:
        print(f"gateway: no message {args.id}", file=sys.stderr)
        return EXIT_FAILED
    if args.format == "png" and not args.output and sys.stdout.isatty():
        print("gateway: a PNG is binary; use --output FILE or redirect", file=sys.stderr)
        return EXIT_USAGE
    data = journey_png(j) if args.format == "png" else journey_svg(j).encode("utf-8")
    if args.output:
        args.output.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    return EXIT_OK


def _send(args: argparse.Namespace) -> int:
    """Send each file in turn and print its ACKs' MSA lines as they arrive; a file that cannot be read is
    reported and skipped. Exit 1 unless every message was accepted."""
    from adapters.hl7.ack import parse_ack
    from adapters.hl7.er7 import split_batch

    failed = False
    if args.mllp:
        from adapters.hl7.mllp import send_frames

        host, port = parse_address(args.mllp)
        for path in args.files:
            raw = _read_message(path)
            if raw is None:
                failed = True
                continue
            batch = split_batch(raw)
            # an FHS/BHS batch goes in one frame, as HL7's batch protocol allows, so the gateway keeps
            # its messages under the batch; a file of bare MSH messages goes one message per frame
            messages = batch.units if batch is not None and batch.kind == "multi" else [raw]
            # each message on its own (an FHS/BHS batch is answered as a whole, always)
            one_each = batch is None or batch.kind == "multi"
            unasked = [one_each and _declines_acceptance(m) for m in messages]
            try:
                replies = asyncio.run(
                    send_frames(host, port, messages, timeout_s=args.timeout, unasked=unasked)
                )
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                print(f"{path}: no reply ({type(exc).__name__}: {exc})", file=sys.stderr)
                failed = True
                continue
            for reply in replies:
                if reply is None:
                    print(f"{path}\t(no ACK received: MSH-15/MSH-16 decline one on acceptance)")
                    continue
                failed |= not _print_acks(path, reply, parse_ack)
        return EXIT_FAILED if failed else EXIT_OK

    key = args.api_key or _env_key() or _bootstrap_key(args)
    headers = {"Content-Type": "x-application/hl7-v2+er7"}
    if key:
        headers["Authorization"] = f"Bearer {key}"

    async def post_all() -> bool:
        failed = False
        async for path, outcome in _post_files(args.http, args.files, headers, args.timeout):
            if outcome is None:  # unreadable: already reported
                failed = True
            elif isinstance(outcome, str):
                print(f"{path}: {outcome}", file=sys.stderr)
                failed = True
            else:
                failed |= not _print_acks(path, outcome, parse_ack)
        return failed

    return EXIT_FAILED if asyncio.run(post_all()) else EXIT_OK


def _read_file(path: Path) -> bytes | None:
    """A file's bytes, or ``None`` once a line on stderr said why it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        print(f"gateway: {path}: cannot read ({exc.strerror or type(exc).__name__})", file=sys.stderr)
        return None


def _read_message(path: Path) -> bytes | None:
    """A file's message with CR segment ends, or ``None`` (see :func:`_read_file`)."""
    data = _read_file(path)
    return None if data is None else data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


async def _post_files(
    url: str, files: list[Path], headers: dict[str, str], timeout_s: float
) -> AsyncIterator[tuple[Path, bytes | str | None]]:
    """POST each file in turn and yield, as each reply comes, its ACK bytes, a sentence saying why there
    is none, or ``None`` for a file that could not be read (reported on stderr already)."""
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session:
        for path in files:
            data = _read_message(path)
            if data is None:
                yield path, None
                continue
            outcome: bytes | str
            try:
                async with session.post(url, data=data, headers=headers) as resp:
                    body = await resp.read()
                    if "hl7" not in resp.headers.get("Content-Type", ""):
                        outcome = f"HTTP {resp.status} {body.decode('utf-8', 'replace').strip()}"
                    else:
                        outcome = body
            except (aiohttp.ClientError, TimeoutError) as exc:
                outcome = f"no reply ({type(exc).__name__})"
            yield path, outcome


def _print_acks(path: Path, reply: bytes, parse_ack: Any) -> bool:
    """Print the MSA line of each ACK in ``reply`` (one ACK, an acknowledgement batch, or ACKs one after
    the other); true when each accepts its message."""
    from adapters.hl7.er7 import split_batch

    batch = split_batch(reply)
    if batch is None:
        return _print_ack(path, reply, parse_ack)
    if not batch.units:
        print(f"{path}\t(a batch of no message, acknowledged)", flush=True)
        return True
    return all([_print_ack(path, ack, parse_ack) for ack in batch.units])


def _declines_acceptance(message: bytes) -> bool:
    """True when the message's MSH-15/MSH-16 ask for no acknowledgement when it is accepted."""
    from adapters.hl7.ack import reply_wanted
    from adapters.hl7.er7 import BOM

    msh = message.removeprefix(BOM).lstrip().split(b"\r", 1)[0]
    fields = msh.split(msh[3:4]) if msh.startswith(b"MSH") and len(msh) > 3 else []
    asked = [fields[n].decode("latin-1") if len(fields) > n else "" for n in (14, 15)]
    return not reply_wanted("accepted", *asked)


def _print_ack(path: Path, reply: bytes, parse_ack: Any) -> bool:
    msa = next((seg for seg in reply.replace(b"\n", b"\r").split(b"\r") if seg.startswith(b"MSA")), b"")
    print(f"{path}\t{msa.decode('utf-8', 'replace') or '(no MSA segment)'}", flush=True)
    try:
        code = parse_ack(reply)[0]
    except Exception:
        return False
    return code in ("AA", "CA")


def _env_key() -> str | None:
    import os

    return os.environ.get("GATEWAY_API_KEY") or None


def _bootstrap_key(args: argparse.Namespace) -> str | None:
    from gateway.security import read_bootstrap_key

    try:
        settings = _settings(args)
    except ConfigError:
        return None
    return read_bootstrap_key(settings.data_dir)


if __name__ == "__main__":
    sys.exit(main())
