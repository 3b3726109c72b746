"""End to end: routes deliver to real HTTP, MLLP and file sinks; outages back off and recover; replay works."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import FIXTURES
from tests.e2e.test_hl7_intake import field, mllp_exchange
from tests.gateway.sinks.peers import Answer, Receiver
from tests.support import ADMIN_KEY, TEST_KEY, Gateway, MLLPPeer, wait_until, with_control_id

pytestmark = pytest.mark.e2e
HL7 = FIXTURES / "hl7"


def fixture(name: str) -> bytes:
    return (HL7 / name).read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def adt(control_id: str, patient: str) -> bytes:
    """An ADT^A08 for ``patient`` (PID-3), with its own control id."""
    raw = with_control_id(fixture("adt_a08__update.hl7"), control_id)
    segs = raw.split(b"\r")
    for i, seg in enumerate(segs):
        if seg.startswith(b"PID|"):
            parts = seg.split(b"|")
            parts[3] = patient.encode() + b"^^^HOSP^MR"
            segs[i] = b"|".join(parts)
    return b"\r".join(segs)


def api(gw: Gateway, key: str = TEST_KEY) -> httpx.Client:
    return httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def message_id(gw: Gateway, control_id: str) -> str:
    with api(gw) as c:
        (item,) = c.get("/api/messages", params={"control_id": control_id}).json()["items"]
    return str(item["id"])


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    with Receiver() as ehr, Receiver() as registry:
        yield ehr, registry


def hospital(
    ehr: Receiver, registry: Receiver, lab: MLLPPeer, archive: Path, **retry: float
) -> dict[str, object]:
    fast = {"max_attempts": 8, "base_s": 0.05, "cap_s": 0.4, **retry}
    return {
        "sinks": {
            "ehr": {
                "type": "http",
                "endpoint": ehr.url,
                "retry": fast,
                "circuit": {"failure_threshold": 3, "cooldown_s": 0.5},
            },
            "registry": {"type": "http", "endpoint": registry.url, "body": "envelope", "retry": fast},
            "lab": {"type": "mllp", "endpoint": lab.endpoint, "retry": fast},
            "archive": {"type": "file", "directory": str(archive), "name_pattern": "{envelope_id}.{ext}"},
        },
        "routes": [
            {
                "name": "adt",
                "match": {"message_type": "ADT^A*"},
                "to": ["ehr", "archive"],
                "order_by": "patient_id",
            },
            {"name": "orders", "match": {"message_code": ["ORM", "OML"]}, "to": ["lab"]},
            {"name": "vaccines", "match": {"message_type": "VXU^V04"}, "to": ["registry"]},
        ],
        "unmatched": "reject",
    }


def test_each_message_reaches_exactly_its_sinks(tmp_path: Path, receivers: tuple[Receiver, Receiver]) -> None:
    ehr, registry = receivers
    with MLLPPeer() as lab:
        gw = Gateway(tmp_path, hospital(ehr, registry, lab, tmp_path / "archive")).start()
        try:
            assert field(mllp_exchange(gw.mllp_port, adt("R-ADT-1", "P1")), "MSA", 1) == "AA"
            assert (
                field(
                    mllp_exchange(gw.mllp_port, with_control_id(fixture("orm_o01__order.hl7"), "R-ORM-1")),
                    "MSA",
                    1,
                )
                == "AA"
            )
            vxu = with_control_id(fixture("vxu_v04__immunization.hl7"), "R-VXU-1")
            assert field(mllp_exchange(gw.mllp_port, vxu), "MSA", 1) == "AA"
            unmatched = mllp_exchange(
                gw.mllp_port, with_control_id(fixture("mdm_t02__document.hl7"), "R-MDM-1")
            )
            assert field(unmatched, "MSA", 1) == "AR"

            assert wait_until(lambda: len(ehr.requests) == 1 and lab.received and registry.requests)
            assert wait_until(lambda: len(list((tmp_path / "archive").glob("*.hl7"))) == 1)
            # every outbox row has been worked off: what the sinks got is all they will get
            with api(gw) as c:
                assert wait_until(
                    lambda: not c.get("/api/deliveries", params={"status": "pending"}).json()["items"]
                )
                rows = c.get("/api/deliveries").json()["items"]
            assert rows and {r["status"] for r in rows} == {"delivered"}
            assert [r.headers.get("idempotency-key") for r in ehr.requests] == [
                f"{message_id(gw, 'R-ADT-1')}:ehr"
            ]
            assert ehr.requests[0].body == adt("R-ADT-1", "P1")
            assert lab.received == ["R-ORM-1"]
            envelope = json.loads(registry.requests[0].body)
            assert envelope["control_id"] == "R-VXU-1" and envelope["message_type"] == "VXU^V04"
            (archived,) = (tmp_path / "archive").glob("*.hl7")
            assert archived.read_bytes() == adt("R-ADT-1", "P1")

            with api(gw) as c:
                detail = c.get(f"/api/messages/{message_id(gw, 'R-ADT-1')}").json()
                assert detail["route"] == "adt"
                assert sorted((d["sink"], d["state"]) for d in detail["deliveries"]) == [
                    ("archive", "delivered"),
                    ("ehr", "delivered"),
                ]
                events = [e["event"] for e in detail["lineage"]]
                assert "RouteMatched" in events and events.count("DeliverySucceeded") == 2
                rejected = c.get(f"/api/messages/{message_id(gw, 'R-MDM-1')}").json()
                assert rejected["status"] == "rejected" and rejected["deliveries"] == []
                assert "RouteUnmatched" in [e["event"] for e in rejected["lineage"]]
            shown = gw.cli("messages", "show", message_id(gw, "R-ADT-1"), *gw.store_args())
            assert "delivery     ehr: delivered" in shown.stdout
        finally:
            gw.stop()


def test_outage_backs_off_opens_the_circuit_and_delivers_everything_in_key_order(
    tmp_path: Path, receivers: tuple[Receiver, Receiver]
) -> None:
    ehr, registry = receivers
    ehr.answer(*[Answer(503, {"Retry-After": "0"}) for _ in range(12)])
    with MLLPPeer() as lab:
        cfg = hospital(ehr, registry, lab, tmp_path / "archive", max_attempts=50)
        gw = Gateway(tmp_path, cfg).start()
        try:
            sent = []
            for i in range(12):
                cid = f"OUT-{i}"
                sent.append((cid, f"P{i % 3}"))
                assert field(mllp_exchange(gw.mllp_port, adt(cid, f"P{i % 3}")), "MSA", 1) == "AA"
            with api(gw, ADMIN_KEY) as c:
                assert wait_until(lambda: c.get("/healthz").json()["sinks"]["ehr"]["circuit"] != "closed", 30)
                metrics = c.get("/metrics").text
                assert 'gateway_circuit_state{sink="ehr"}' in metrics
                assert 'gateway_messages_received_total{listener="mllp",protocol="hl7v2"} 12.0' in metrics
                assert 'gateway_replies_total{code="AA",protocol="hl7v2"} 12.0' in metrics
                assert 'gateway_ack_latency_seconds_count{listener="mllp"} 12.0' in metrics
                assert 'gateway_delivery_retries_total{sink="ehr"}' in metrics
            # the receiver answers the first 12 requests 503, every later one 200
            assert wait_until(
                lambda: len({r.headers["idempotency-key"] for r in ehr.requests[12:]}) == 12, 30
            )
            with api(gw) as c:
                assert wait_until(lambda: c.get("/healthz").json()["sinks"]["ehr"]["circuit"] == "closed", 30)
                states = [
                    d["state"]
                    for cid, _ in sent
                    for d in c.get(f"/api/messages/{message_id(gw, cid)}").json()["deliveries"]
                    if d["sink"] == "ehr"
                ]
            assert states == ["delivered"] * 12
            # per patient, the successful deliveries arrived in the order the messages were sent
            order: dict[str, list[str]] = {}
            for r in ehr.requests[12:]:
                order.setdefault(field(r.body, "PID", 3).split("^")[0], []).append(field(r.body, "MSH", 10))
            for patient in ("P0", "P1", "P2"):
                assert order[patient] == [cid for cid, p in sent if p == patient]
        finally:
            gw.stop()


def test_dead_letter_replay_and_reload(tmp_path: Path, receivers: tuple[Receiver, Receiver]) -> None:
    ehr, registry = receivers
    ehr.answer(Answer(400))
    with MLLPPeer() as lab:
        cfg = hospital(ehr, registry, lab, tmp_path / "archive")
        gw = Gateway(tmp_path, cfg).start()
        try:
            assert field(mllp_exchange(gw.mllp_port, adt("DL-1", "P9")), "MSA", 1) == "AA"
            mid = message_id(gw, "DL-1")
            with api(gw) as c:
                assert wait_until(
                    lambda: c.get("/api/deliveries", params={"status": "dead"}).json()["items"] != []
                )
                (dead,) = c.get("/api/deliveries", params={"status": "dead", "sink": "ehr"}).json()["items"]
                assert dead["message_id"] == mid and dead["last_error_code"] == "http_400"
                assert c.post(f"/api/messages/{mid}/replay").status_code == 403
            with api(gw, ADMIN_KEY) as admin:
                assert admin.post(f"/api/messages/{mid}/replay").json() == {"replayed": 1}
                assert admin.post(f"/api/messages/{mid}/replay").status_code in (200, 409)
            assert wait_until(lambda: len(ehr.requests) == 2)
            with api(gw) as c:
                assert wait_until(
                    lambda: (
                        [
                            d["state"]
                            for d in c.get(f"/api/messages/{mid}").json()["deliveries"]
                            if d["sink"] == "ehr"
                        ]
                        == ["delivered"]
                    )
                )
                events = [e["event"] for e in c.get(f"/api/messages/{mid}/lineage").json()["events"]]
            # reads of the message (this test's own polling) are lineage events too, and may land last
            journey = [e for e in events if e not in ("MessageRead", "LineageQueried", "MessagesSearched")]
            assert (
                journey.count("DeadLettered") == 1
                and "Replayed" in journey
                and journey[-1] == "DeliverySucceeded"
            )

            # the same from the command line: list the dead letters of a sink and replay them all
            ehr.answer(Answer(400), Answer(400))
            for cid in ("DL-CLI-1", "DL-CLI-2"):
                assert field(mllp_exchange(gw.mllp_port, adt(cid, "P8")), "MSA", 1) == "AA"
            assert wait_until(lambda: len(ehr.requests) == 4)

            def dead_letters() -> list[str]:
                args = ("deliveries", "list", "--status", "dead", "--sink", "ehr", "--json")
                return gw.cli(*args, *gw.store_args()).stdout.splitlines()

            assert wait_until(lambda: len(dead_letters()) == 2)
            replayed = gw.cli("replay", "--sink", "ehr", *gw.store_args())
            assert replayed.returncode == 0 and replayed.stdout.startswith("2 deliveries")
            assert wait_until(lambda: len(ehr.requests) == 6)
            assert gw.cli("replay", "--sink", "ehr", *gw.store_args()).returncode == 1  # nothing left
            with api(gw) as c:
                lineage = c.get(f"/api/messages/{message_id(gw, 'DL-CLI-1')}/lineage").json()["events"]
            replays = [e for e in lineage if e["event"] == "Replayed"]
            assert len(replays) == 1 and replays[0]["actor"].endswith("(cli)")
            assert gw.cli("lineage", "verify", *gw.store_args()).returncode == 0

            # reload: a broken config is refused and the old routing stays
            good = yaml.safe_load(gw.config_path.read_text())
            gw.config_path.write_text(
                yaml.safe_dump({**good, "routes": [{"name": "x", "match": {}, "to": ["nope"]}]})
            )
            with api(gw, ADMIN_KEY) as admin:
                r = admin.post("/api/admin/reload")
                assert r.status_code == 422 and "nope" in r.json()["detail"]
            assert field(mllp_exchange(gw.mllp_port, adt("DL-2", "P9")), "MSA", 1) == "AA"
            assert wait_until(lambda: len(ehr.requests) == 7)
            # a good change applies on SIGHUP without dropping the connection in use
            changed = {
                **good,
                "routes": [{"name": "all-to-registry", "match": {}, "to": ["registry"]}],
                "unmatched": "reject",
            }
            gw.config_path.write_text(yaml.safe_dump(changed))
            import socket as _socket

            with _socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=10) as s:
                assert gw.proc is not None
                gw.proc.send_signal(signal.SIGHUP)
                assert wait_until(lambda: "routing applied" in gw.logs().split("gateway ready", 1)[-1], 30)
                s.sendall(b"\x0b" + adt("DL-3", "P9") + b"\x1c\x0d")
                buf = b""
                while b"\x1c\x0d" not in buf:
                    buf += s.recv(65536)
            assert b"MSA|AA|DL-3" in buf
            assert wait_until(
                lambda: any(json.loads(r.body)["control_id"] == "DL-3" for r in registry.requests)
            )
            assert len(ehr.requests) == 7
        finally:
            gw.stop()


def test_a_slow_sink_does_not_hold_up_intake_or_other_sinks(tmp_path: Path) -> None:
    """One sink answers after 2 s; the other sink's deliveries and every ACK go on at full speed."""
    with Receiver() as slow, Receiver() as fast:
        slow.default = Answer(delay_s=2.0)
        cfg = {
            "sinks": {
                "slow": {"type": "http", "endpoint": slow.url, "concurrency": 2, "timeout_s": 30},
                "fast": {"type": "http", "endpoint": fast.url},
            },
            "routes": [{"name": "both", "match": {"protocol": "hl7v2"}, "to": ["slow", "fast"]}],
            "unmatched": "reject",
        }
        gw = Gateway(tmp_path, cfg).start()
        try:
            t0 = time.monotonic()
            for i in range(10):
                assert field(mllp_exchange(gw.mllp_port, adt(f"SLOW-{i}", "P1")), "MSA", 1) == "AA"
            acked_in = time.monotonic() - t0
            assert wait_until(lambda: len(fast.requests) == 10, 30)
            # the slow sink (2 in flight, 2 s each) has finished at most a few of its 10 by now
            assert len(slow.requests) <= 4
            assert acked_in < 5.0, "intake must not wait for any sink (10 messages x 2 s if it did)"
            with api(gw) as c:
                states = c.get("/healthz").json()["sinks"]
            assert states["slow"]["pending"] >= 6 and states["fast"]["pending"] == 0
        finally:
            gw.stop()


def test_alerts_fire_once_per_incident_and_resolve(tmp_path: Path) -> None:
    with Receiver() as ehr, Receiver() as pager:
        ehr.answer(*[Answer(400) for _ in range(3)])
        cfg = {
            "sinks": {
                "ehr": {"type": "http", "endpoint": ehr.url},
                "pager": {"type": "http", "endpoint": pager.url},
            },
            "routes": [{"name": "all", "match": {"protocol": "hl7v2"}, "to": ["ehr"]}],
            "unmatched": "reject",
            "alerts": {"sink": "pager"},
        }
        gw = Gateway(tmp_path, cfg).start()
        try:
            for i in range(3):
                mllp_exchange(gw.mllp_port, adt(f"ALERT-{i}", "P1"))
            assert wait_until(lambda: len(ehr.requests) == 3)
            mllp_exchange(gw.mllp_port, adt("ALERT-OK", "P1"))
            assert wait_until(lambda: len(pager.requests) == 2, 30)
            time.sleep(0.5)
            notes = [json.loads(r.body) for r in pager.requests]
            assert [(n["alert"], n["state"], n["sink"]) for n in notes] == [
                ("dead_letters", "firing", "ehr"),
                ("dead_letters", "resolved", "ehr"),
            ]
            assert all(b"ALERT-" not in r.body for r in pager.requests)
        finally:
            gw.stop()
