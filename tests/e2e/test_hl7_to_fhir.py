"""End to end: HL7 v2 ADT over MLLP, converted on the way (transform hl7v2_to_fhir) into the gateway's
own FHIR store (sink fhir_store), read back through /fhir with a FHIR client; plus the offline
conversion over HTTP and the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fhirpy import SyncFHIRClient

from adapters.fhir.resources import write_json
from adapters.hl7.to_fhir import ConversionError, convert
from tests.e2e.test_hl7_intake import field, mllp_exchange
from tests.support import ADMIN_KEY, READ_KEY, Gateway, wait_until

pytestmark = pytest.mark.e2e

KEY = "hl7-fhir-0123456789abcdef"
MRN = "MRN73155"


def pv1(admitted: str = "", discharged: str = "") -> str:
    fields = [""] * 46
    fields[0:4] = ["PV1", "1", "I", "3WEST^312^B^NWG"]
    fields[7] = fields[17] = "20417^OKAFOR^CHINEDU^^^DR"
    fields[10], fields[14], fields[18], fields[19] = "MED", "7", "IP", "VN5531^^^NWG^VN"
    fields[44], fields[45] = admitted, discharged
    return "|".join(fields).rstrip("|")


def adt(event: str, control_id: str, address: str, discharged: str = "") -> bytes:
    structure = {"A01": "ADT_A01", "A08": "ADT_A01", "A03": "ADT_A03"}[event]
    segments = [
        f"MSH|^~\\&|NW_ADT|NORTHWIND_GEN|GW|GATEWAY|20240312084500+0000||ADT^{event}^{structure}|{control_id}|P|2.5.1",
        f"EVN|{event}|20240312084455+0000",
        f"PID|1||{MRN}^^^NWG^MR||QUILLFEATHER^ODESSA^J||19800229|F|||{address}||^PRN^PH^^1^541^5550199",
        "NK1|1|QUILLFEATHER^BRAM|SPO^Spouse^HL70063",
        pv1("20240312084000+0000", discharged),
        "AL1|1|DA|7980^Penicillin^RXNORM|MO|Hives",
        "DG1|1||J18.9^Pneumonia, unspecified organism^I10||20240312|A",
    ]
    return ("\r".join(segments) + "\r").encode()


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(
        tmp_path_factory.mktemp("hl7fhir"),
        {
            "auth": {
                "api_keys": [
                    {"name": "ehr", "key": KEY, "scopes": ["fhir:read", "fhir:write", "ingest:hl7v2"]},
                    {"name": "auditor", "key": READ_KEY, "scopes": ["messages:read", "lineage:read"]},
                    {"name": "operator", "key": ADMIN_KEY, "scopes": ["admin"]},
                ]
            },
            "sinks": {"fhir": {"type": "fhir_store"}},
            "routes": [
                {
                    "name": "adt-to-fhir",
                    "match": {"protocol": "hl7v2"},
                    "transform": "hl7v2_to_fhir",
                    "order_by": "patient_id",
                    "to": ["fhir"],
                }
            ],
            "unmatched": "reject",
        },
    ).start()
    try:
        yield gateway
    finally:
        assert gateway.stop() == 0


def test_admit_update_discharge_over_mllp_reads_back_through_fhir(gw: Gateway) -> None:
    fc = SyncFHIRClient(f"{gw.http_url}/fhir", authorization=f"Bearer {KEY}")
    identifier = f"{MRN}"

    def patients() -> list[dict[str, object]]:
        return [dict(p) for p in fc.resources("Patient").search(identifier=identifier).fetch_all()]

    sent = [
        adt("A01", "CONV-A01", "41 ALDER CREEK RD^^SPRINGVALE^OR^97321^USA^H"),
        adt("A08", "CONV-A08", "7 HARBOUR VIEW^^PORTSMOUTH^OR^97999^USA^H"),
        adt(
            "A03",
            "CONV-A03",
            "7 HARBOUR VIEW^^PORTSMOUTH^OR^97999^USA^H",
            "20240316120000+0000",
        ),
    ]
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {READ_KEY}"}) as audit:
        ids = []
        for n, message in enumerate(sent, start=1):
            assert field(mllp_exchange(gw.mllp_port, message), "MSA", 1) == "AA"
            mid = audit.get("/api/messages", params={"control_id": message.split(b"|")[9].decode()}).json()[
                "items"
            ][0]["id"]
            ids.append(mid)

            def delivered(mid: str = mid) -> bool:
                deliveries = audit.get(f"/api/messages/{mid}").json()["deliveries"]
                return bool(deliveries) and deliveries[0]["status"] == "delivered"

            assert wait_until(delivered), audit.get(f"/api/messages/{mid}").json()["deliveries"]
            assert len(patients()) == 1  # the A08 and A03 update the A01's patient, not a second one
            if n == 1:
                first = patients()[0]
                assert first["address"][0]["city"] == "SPRINGVALE"  # type: ignore[index]

        pat = patients()[0]
        assert pat["address"][0]["city"] == "PORTSMOUTH"  # type: ignore[index]
        assert pat["birthDate"] == "1980-02-29" and pat["gender"] == "female"
        encounters = [dict(e) for e in fc.resources("Encounter").search(patient=pat["id"]).fetch_all()]
        assert len(encounters) == 1
        enc = encounters[0]
        assert enc["status"] == "finished"
        assert enc["period"]["end"].startswith("2024-03-16")  # type: ignore[index]
        allergies = fc.resources("AllergyIntolerance").search(patient=pat["id"]).fetch_all()
        conditions = fc.resources("Condition").search(subject=f"Patient/{pat['id']}").fetch_all()
        kin = fc.resources("RelatedPerson").search(patient=pat["id"]).fetch_all()
        assert len(allergies) == 1 and len(conditions) == 1 and len(kin) == 1
        assert conditions[0]["code"]["coding"][0]["code"] == "J18.9"

        # the Patient's versions are found by its reference, though the HL7 messages that wrote them are
        # filed under the MRN: lineage names it by the pseudonym of Patient/<id>, never by the id
        query = {"key": f"Patient/{pat['id']}", "event": "ResourceWritten"}
        by_patient = audit.post("/api/lineage/search", json=query).json()["events"]
        assert ids[0] in {e["envelope_id"] for e in by_patient}
        assert {e["details"]["resource_type"] for e in by_patient} == {"Patient"}
        for mid in ids:  # each message's lineage shows the conversion and what it wrote
            events = audit.get(f"/api/messages/{mid}/lineage").json()["events"]
            written = [e for e in events if e["event"] == "ResourceWritten"]
            assert written and all(e["actor"] == "sink:fhir" for e in written)
            assert all(e["details"]["resource"].startswith("hk:") for e in written)
            assert pat["id"] not in json.dumps(events)
            assert "QUILLFEATHER" not in json.dumps(events) and MRN not in json.dumps(events)
        # a lab result names the patient with a bare PID: it links to the Patient, it does not restate it
        oru = (
            "MSH|^~\\&|LAB|NORTHWIND_GEN|GW|GATEWAY|20240313090000+0000||ORU^R01^ORU_R01|CONV-ORU|P|2.5.1\r"
            f"PID|1||{MRN}^^^NWG^MR||QUILLFEATHER^ODESSA\r"
            "OBR|1||LAB-77|718-7^Hemoglobin^LN|||20240313083000+0000\r"
            "OBX|1|NM|718-7^Hemoglobin^LN||13.50|g/dL^^UCUM|12.0-16.0|N|||F\r"
        ).encode()
        assert field(mllp_exchange(gw.mllp_port, oru), "MSA", 1) == "AA"
        assert wait_until(
            lambda: bool(fc.resources("Observation").search(subject=f"Patient/{pat['id']}").fetch())
        )
        obs = fc.resources("Observation").search(subject=f"Patient/{pat['id']}").fetch()[0]
        with httpx.Client(base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {KEY}"}) as h:
            stored = h.get(f"/Observation/{obs['id']}").content
        assert b'"value":13.50' in stored  # the digits sent: FHIR decimals are exact
        after = patients()[0]
        assert after["address"] == pat["address"] and after["meta"]["versionId"] == pat["meta"]["versionId"]

        provenance = fc.resources("Provenance").search(target=f"Patient/{pat['id']}").fetch_all()
        assert {p["entity"][0]["what"]["identifier"]["value"] for p in provenance} >= {ids[0]}


def test_offline_conversion_over_http_and_the_command_line(gw: Gateway, tmp_path: Path) -> None:
    message = adt("A01", "CONV-OFFLINE", "1 MAIN ST^^SALEM^OR^97301^USA^H")
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {KEY}"}) as h:
        r = h.post(
            "/api/convert/hl7v2-to-fhir",
            content=message,
            headers={"Content-Type": "x-application/hl7-v2+er7"},
        )
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
        bundle = r.json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "transaction"
        types = {e["resource"]["resourceType"] for e in bundle["entry"]}
        assert {"Patient", "Encounter", "AllergyIntolerance", "Condition", "RelatedPerson"} <= types
        bad = h.post(
            "/api/convert/hl7v2-to-fhir",
            content=b"MSH|^~\\&|A|B|C|D|20240101||ZZZ^Z99|1|P|2.5\r",
            headers={"Content-Type": "x-application/hl7-v2+er7"},
        )
        assert bad.status_code == 422 and bad.json()["resourceType"] == "OperationOutcome"
    with httpx.Client(base_url=gw.http_url, headers={"Authorization": f"Bearer {READ_KEY}"}) as other:
        assert (
            other.post(
                "/api/convert/hl7v2-to-fhir",
                content=message,
                headers={"Content-Type": "x-application/hl7-v2+er7"},
            ).status_code
            == 403
        )
    path = tmp_path / "a01.hl7"
    path.write_bytes(message)
    done = gw.cli("convert", str(path))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == bundle  # the same Bundle offline and over HTTP


def test_every_corpus_conversion_loads_through_the_fhir_api(gw: Gateway, corpora_dir: Path) -> None:
    """Each FHIR-Converter sample of a supported type converts, and its Bundle loads through POST /fhir."""
    folder = corpora_dir / "hl7v2" / "microsoft-FHIR-Converter" / "messages"
    loaded: dict[str, int] = {}
    with httpx.Client(
        base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {KEY}"}, timeout=60
    ) as h:
        for path in sorted(folder.glob("*.hl7")):
            raw = path.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
            try:
                bundle = convert(raw)
            except ConversionError as exc:
                assert exc.code == "unsupported_message_type", (path.name, exc.code)
                continue
            r = h.post("", content=write_json(bundle), headers={"Content-Type": "application/fhir+json"})
            assert r.status_code == 200, (path.name, r.text[:300])
            statuses = {e["response"]["status"] for e in r.json()["entry"]}
            assert statuses <= {"201 Created", "200 OK"}, (path.name, statuses)
            kind = bundle["entry"][0]["resource"]["eventCoding"]["code"]
            loaded[kind] = loaded.get(kind, 0) + 1
    assert sum(loaded.values()) >= 40, loaded
