"""End to end: per-route storage policies (full, metadata, encrypted) and erasing a data subject.

The real gateway keeps ADT bodies sealed under a key per patient, drops ORU
bodies once delivered, and keeps the rest as received. Deliveries still get
the bodies as received; erasing one patient makes only their bodies
unreadable, and the lineage chain still verifies.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.e2e.test_hl7_intake import field, fixture, mllp_exchange, with_control_id
from tests.e2e.test_routing_delivery import adt
from tests.gateway.sinks.peers import Receiver
from tests.support import ADMIN_KEY, Gateway, wait_until

pytestmark = pytest.mark.e2e


def test_bodies_kept_as_each_route_says_and_a_subject_erased(tmp_path: Path) -> None:
    with Receiver() as ehr:
        gw = Gateway(
            tmp_path,
            {
                "sinks": {"ehr": {"type": "http", "endpoint": ehr.url}},
                "routes": [
                    {
                        "name": "adt",
                        "match": {"protocol": "hl7v2", "message_type": "ADT^*"},
                        "to": ["ehr"],
                        "storage": "encrypted",
                        "subject": "patient_id",
                    },
                    {
                        "name": "results",
                        "match": {"message_type": "ORU^R01"},
                        "to": ["ehr"],
                        "storage": "metadata",
                    },
                ],
                "unmatched": "reject",
            },
        ).start()
        try:
            # the bodies carry a name found nowhere else (the patient id is a header, kept as metadata)
            one = adt("ST-1", "PSUBJECTONE").replace(b"PID|", b"NTE|1||SURNAMECANARYONE\rPID|", 1)
            two = adt("ST-2", "PSUBJECTTWO").replace(b"PID|", b"NTE|1||SURNAMECANARYTWO\rPID|", 1)
            oru = with_control_id(fixture("oru_r01__cbc_20_obx.hl7"), "ST-3")
            for raw in (one, two, oru):
                assert field(mllp_exchange(gw.mllp_port, raw), "MSA", 1) == "AA"
            assert wait_until(lambda: len(ehr.requests) == 3)
            assert sorted(r.body for r in ehr.requests) == sorted([one, two, oru])  # delivered as received

            with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
                ids = {m["control_id"]: m["id"] for m in api.get("/api/messages").json()["items"]}
                assert api.get(f"/api/messages/{ids['ST-1']}/raw").content == one  # read back, unsealed
                # the results body goes once delivered: only its metadata and lineage stay
                assert wait_until(lambda: api.get(f"/api/messages/{ids['ST-3']}/raw").content == b"")
                events = [
                    e["event"] for e in api.get(f"/api/messages/{ids['ST-3']}/lineage").json()["events"]
                ]
                assert "BodyDropped" in events
            # at rest, the sealed bodies are nowhere in clear
            at_rest = b"".join(p.read_bytes() for p in gw.data_dir.glob("gateway.db*"))
            assert b"SURNAMECANARYONE" not in at_rest and b"SURNAMECANARYTWO" not in at_rest

            erased = gw.cli("subjects", "erase", "PSUBJECTONE^^^HOSP", *gw.store_args())
            assert erased.returncode == 0, erased.stderr
            with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as api:
                gone = api.get(f"/api/messages/{ids['ST-1']}/raw")
                assert gone.status_code == 410 and gone.json()["error"] == "erased"
                assert (
                    api.get(f"/api/messages/{ids['ST-2']}/raw").content == two
                )  # the other patient is untouched
                assert api.get("/api/lineage/verify").json()["ok"] is True
                found = api.post("/api/lineage/search", json={"event": "SubjectErased"}).json()["events"]
                assert len(found) == 1 and "PSUBJECTONE" not in str(found)
        finally:
            gw.stop()
    verified = gw.cli("lineage", "verify", *gw.store_args())
    assert verified.returncode == 0, verified.stdout + verified.stderr
