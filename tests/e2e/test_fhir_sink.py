"""End to end: two real gateway processes, the writes of gateway A's FHIR API made again on gateway B.

Gateway B is a plain FHIR server (its ``/fhir`` API, nothing routed). Gateway A
routes every ``fhir`` envelope to a ``fhir`` sink whose base is B's ``/fhir``,
with a bearer token (one of B's API keys) from an environment variable. What
clients write on A must arrive on B: the same resources under the same ids,
B counting versions of its own, deletions as deletions, Bundles as Bundles.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.test_fhir_api import SYSTEM, patient
from tests.e2e.test_hl7_intake import field, mllp_exchange
from tests.support import Gateway, wait_until

pytestmark = pytest.mark.e2e

A_KEY = "fhir-a-key-0123456789abcdef"
B_KEY = "fhir-b-key-0123456789abcdef"
TOKEN_ENV = "FHIR_DOWNSTREAM_TOKEN"
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
FAST_RETRY = {"max_attempts": 8, "base_s": 0.05, "cap_s": 0.5}


def fhir_keys(name: str, key: str) -> dict[str, object]:
    return {"api_keys": [{"name": name, "key": key, "scopes": ["fhir:read", "fhir:write"]}]}


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Gateway]]:
    b = Gateway(tmp_path_factory.mktemp("fhir-b"), {"auth": fhir_keys("gateway-a", B_KEY)})
    a = Gateway(
        tmp_path_factory.mktemp("fhir-a"),
        {
            "auth": fhir_keys("ehr", A_KEY),
            "sinks": {
                "downstream": {
                    "type": "fhir",
                    "base_url": f"{b.http_url}/fhir",
                    "bearer_token_env": TOKEN_ENV,
                    "timeout_s": 10,
                    "retry": FAST_RETRY,
                }
            },
            "routes": [
                {
                    "name": "fhir-to-downstream",
                    "match": {"protocol": "fhir"},
                    "to": ["downstream"],
                    "order_by": "resource_id",
                },
                {
                    "name": "adt-to-downstream",
                    "match": {"protocol": "hl7v2"},
                    "transform": "hl7v2_to_fhir",
                    "to": ["downstream"],
                    "order_by": "patient_id",
                },
            ],
            "unmatched": "reject",
        },
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(TOKEN_ENV, B_KEY)  # Gateway passes every variable but GATEWAY_* to the child
        b.start()
        try:
            a.start()
        except BaseException:
            b.stop()
            raise
    try:
        yield a, b
    finally:
        a_rc, b_rc = a.stop(), b.stop()
        assert (a_rc, b_rc) == (0, 0), a.logs()[-3000:] + b.logs()[-3000:]


def http(gw: Gateway, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=f"{gw.http_url}/fhir",
        headers={"Authorization": f"Bearer {key}", "Accept": FHIR_JSON},
        timeout=60,
    )


def sink_state(a: Gateway) -> dict[str, Any]:
    state: dict[str, Any] = httpx.get(f"{a.http_url}/healthz", timeout=10).json()["sinks"]["downstream"]
    return state


def delivered(a: Gateway) -> None:
    """Wait until A's sink has nothing pending or in flight, and nothing dead-lettered."""

    def idle() -> bool:
        state = sink_state(a)
        return bool(state["pending"] == 0 and state["in_flight"] == 0)

    assert wait_until(idle, 30), (sink_state(a), a.logs()[-3000:])
    assert sink_state(a)["dead"] == 0, sink_state(a)


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k != "meta"}


XML_UPDATE = """<?xml version="1.0" encoding="UTF-8"?>
<Patient xmlns="http://hl7.org/fhir">
  <id value="{rid}"/>
  <identifier><system value="{system}"/><value value="{mark}"/></identifier>
  <active value="true"/>
  <name><family value="Chalmers-Windsor"/><given value="Peter"/><given value="James"/></name>
  <gender value="male"/>
  <birthDate value="1974-12-25"/>
</Patient>
"""


def test_creates_updates_and_deletes_reach_the_downstream_server(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    mark = uuid.uuid4().hex[:12]
    with http(a, A_KEY) as on_a, http(b, B_KEY) as on_b:
        # create, then update twice (the second time in XML), on A
        r = on_a.post("/Patient", json=patient(mark, "Chalmers"), headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        r = on_a.put(
            f"/Patient/{pid}",
            json=patient(mark, "Chalmers", id=pid, active=True),
            headers={"Content-Type": FHIR_JSON},
        )
        assert r.status_code == 200, r.text
        xml = XML_UPDATE.format(rid=pid, system=SYSTEM, mark=mark).encode()
        r = on_a.put(f"/Patient/{pid}", content=xml, headers={"Content-Type": FHIR_XML})
        assert r.status_code == 200, r.text
        # another patient, created and deleted
        r = on_a.post("/Patient", json=patient(mark, "Gone"), headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 201, r.text
        gone = r.json()["id"]
        assert on_a.delete(f"/Patient/{gone}").status_code == 200

        delivered(a)
        on_a_now = on_a.get(f"/Patient/{pid}")
        on_b_now = on_b.get(f"/Patient/{pid}")
        assert on_a_now.status_code == on_b_now.status_code == 200
        assert on_a_now.headers["etag"] == on_b_now.headers["etag"] == 'W/"3"'
        assert on_b_now.json()["meta"]["versionId"] == "3"
        assert without_meta(on_b_now.json()) == without_meta(on_a_now.json())
        assert on_b_now.json()["name"][0]["family"] == "Chalmers-Windsor"
        history = on_b.get(f"/Patient/{pid}/_history").json()
        assert [e["request"]["method"] for e in history["entry"]] == ["PUT", "PUT", "PUT"]

        assert on_b.get(f"/Patient/{gone}").status_code == 410
        assert on_a.get(f"/Patient/{gone}").status_code == 410


def test_a_transaction_bundle_reaches_the_downstream_server(pair: tuple[Gateway, Gateway]) -> None:
    a, b = pair
    mark = uuid.uuid4().hex[:12]
    pat_urn = f"urn:uuid:{uuid.uuid4()}"
    tx = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": pat_urn,
                "resource": patient(mark, "Bundled"),
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": pat_urn},
                    "valueQuantity": {"value": 72, "unit": "/min"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    with http(a, A_KEY) as on_a, http(b, B_KEY) as on_b:
        r = on_a.post("", json=tx, headers={"Content-Type": FHIR_JSON})
        assert r.status_code == 200, r.text
        assert [e["response"]["status"] for e in r.json()["entry"]] == ["201 Created"] * 2
        delivered(a)
        found = on_b.get("/Patient", params={"identifier": f"{SYSTEM}|{mark}"}).json()
        (entry,) = found["entry"]
        b_pid = entry["resource"]["id"]
        assert entry["resource"]["name"][0]["family"] == "Bundled"
        obs = on_b.get("/Observation", params={"subject": f"Patient/{b_pid}"}).json()
        (o,) = obs["entry"]
        assert o["resource"]["valueQuantity"]["value"] == 72


def test_hl7_converted_on_the_way_reaches_the_downstream_server(pair: tuple[Gateway, Gateway]) -> None:
    """An ADT^A01 over MLLP into A, converted by the route, arrives at B as FHIR (same ids, same patient)."""
    a, b = pair
    mrn = f"SINK{uuid.uuid4().hex[:8].upper()}"
    adt = (
        "MSH|^~\\&|NW_ADT|NORTHWIND_GEN|GW|GATEWAY|20240312084500+0000||ADT^A01^ADT_A01|"
        f"SINK-{mrn}|P|2.5.1\rEVN|A01|20240312084455+0000\r"
        f"PID|1||{mrn}^^^NWG^MR||LINDQVIST^ASTRID||19700101|F\r"
        "PV1|1|I|3WEST^312^B^NWG\r"
    ).encode()
    assert field(mllp_exchange(a.mllp_port, adt), "MSA", 1) == "AA"
    delivered(a)
    with http(b, B_KEY) as hb:
        found = hb.get("/Patient", params={"identifier": mrn}).json()
        assert found["total"] == 1
        assert found["entry"][0]["resource"]["name"][0]["family"] == "LINDQVIST"
        assert found["entry"][0]["resource"]["birthDate"] == "1970-01-01"
