"""Canary values that must never appear in clear outside the message bodies.

A patient (MRN, name, phone), a card (PAN, track 2, PIN block), an account
(IBAN), a FHIR Patient whose id is an MRN (written, read, its history read) and
a private person initiating a payment (by name) go in through HL7 v2, ISO 8583,
the FHIR API and ISO 20022 on the real gateway process; then the lineage table,
the message listing, every lineage export (JSON lines, CSV, FHIR
AuditEvent/Provenance), the journey pictures (SVG and PNG, API and CLI), the
API's lineage answers and the gateway's log are searched for them.
"""

from __future__ import annotations

import socket
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_hl7_intake import field
from tests.e2e.test_iso8583 import encode, fields_of, read_exact
from tests.finance_messages import DEBTOR_IBAN, pain001
from tests.support import ADMIN_KEY, EB, SB, TEST_KEY, Gateway, free_port, read_frame, wait_port, wait_until

pytestmark = pytest.mark.e2e

MRN = "MRNCANARY7731"
SURNAME = "CANARYWOOD"
PHONE = "5550199731"
PAN = "4111111111111111"
TRACK2 = "4111111111111111=29121011000012345678"
PIN_BLOCK = "A1B2C3D4E5F60718"
FHIR_MRN = "FHIRMRNCANARY777"
PRIVATE_NAME = "ZZCANARYDEBTORNAME"
CANARIES = [MRN, SURNAME, PHONE, PAN, TRACK2, PIN_BLOCK, DEBTOR_IBAN, FHIR_MRN, PRIVATE_NAME]

HL7 = (
    "MSH|^~\\&|LAB|NWG|GW|GATEWAY|20260101120000||ADT^A01^ADT_A01|CANARY-0001|P|2.5.1\r"
    "EVN|A01|20260101120000\r"
    f"PID|1||{MRN}^^^NWG^MR||{SURNAME}^ADA^^^MS||19800101|F|||1 MAIN ST^^TOWN^OR^97000||^PRN^PH^^1^{PHONE[:3]}^{PHONE[3:]}\r"
    "PV1|1|I|3WEST^312^B^NWG\r"
)


def test_no_canary_in_lineage_exports_pictures_or_logs(tmp_path: Path) -> None:
    card_port = free_port()
    gw = Gateway(tmp_path, {"iso8583": {"address": f"127.0.0.1:{card_port}"}}).start()
    try:
        wait_port(card_port, proc=gw.proc)
        auth = {"Authorization": f"Bearer {TEST_KEY}"}
        r = httpx.post(
            f"{gw.http_url}/ingest/hl7v2",
            content=HL7.encode(),
            headers={**auth, "Content-Type": "text/plain"},
        )
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{gw.http_url}/ingest/iso20022",
            content=pain001("CANARY-PAY-1", ["10.00"]),
            headers={**auth, "Content-Type": "application/xml"},
        )
        assert r.status_code == 200, r.text
        r = httpx.post(
            f"{gw.http_url}/ingest/iso20022",
            content=pain001("CANARY-PAY-2", ["20.00"], initiating_party=f"<Nm>{PRIVATE_NAME}</Nm>"),
            headers={**auth, "Content-Type": "application/xml"},
        )
        assert r.status_code == 200, r.text
        with httpx.Client(
            base_url=f"{gw.http_url}/fhir", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        ) as h:
            patient = {"resourceType": "Patient", "id": FHIR_MRN, "name": [{"family": "Doe"}]}
            assert h.put(f"/Patient/{FHIR_MRN}", json=patient).status_code == 201
            assert h.get(f"/Patient/{FHIR_MRN}").status_code == 200
            assert h.get(f"/Patient/{FHIR_MRN}/_history").status_code == 200
        card = fields_of("0100__track2_pin.json", **{"2": PAN, "35": TRACK2, "52": PIN_BLOCK, "11": "773101"})
        raw = encode(card)
        with socket.create_connection(("127.0.0.1", card_port), timeout=10) as s:
            s.sendall(len(raw).to_bytes(2, "big") + raw)
            read_exact(s, int.from_bytes(read_exact(s, 2), "big"))

        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        listing = httpx.get(f"{gw.http_url}/api/messages", headers=admin)
        ids = [m["id"] for m in listing.json()["items"]]
        assert len(ids) == 5
        seen: list[bytes] = [listing.content]
        for mid in ids:
            seen.append(httpx.get(f"{gw.http_url}/api/lineage/messages/{mid}", headers=admin).content)
            for fmt in ("svg", "png"):
                picture = httpx.get(
                    f"{gw.http_url}/api/lineage/messages/{mid}/graph", params={"format": fmt}, headers=admin
                )
                assert picture.status_code == 200 and picture.content
                seen.append(picture.content)
        for key in (f"{MRN}^^^NWG", PAN, DEBTOR_IBAN, f"Patient/{FHIR_MRN}", PRIVATE_NAME):
            # found by their pseudonyms, never shown
            found = httpx.post(f"{gw.http_url}/api/lineage/search", json={"key": key}, headers=admin)
            assert found.json()["events"], key
            seen.append(found.content)
        # the FHIR reads are noted in the background: wait for them before the lineage is read
        reads = {"event": "ResourceHistoryRead", "key": f"Patient/{FHIR_MRN}"}
        assert wait_until(
            lambda: bool(
                httpx.post(f"{gw.http_url}/api/lineage/search", json=reads, headers=admin).json()["events"]
            )
        )
    finally:
        gw.stop()

    for fmt in ("jsonl", "csv", "fhir"):
        out = tmp_path / f"export.{fmt}"
        done = gw.cli("lineage", "export", "--format", fmt, "--output", str(out), *gw.store_args())
        assert done.returncode == 0, done.stderr
        assert out.stat().st_size > 0
        seen.append(out.read_bytes())
    picture = tmp_path / "journey.png"
    done = gw.cli("lineage", "graph", ids[0], "--format", "png", "--output", str(picture), *gw.store_args())
    assert done.returncode == 0 and picture.read_bytes().startswith(b"\x89PNG")
    seen.append(picture.read_bytes())
    with sqlite3.connect(gw.data_dir / "gateway.db") as db:
        seen.append(repr(db.execute("SELECT * FROM lineage").fetchall()).encode())
    seen.append(gw.logs().encode())

    everything = b"\n".join(seen)
    for canary in CANARIES:
        assert canary.encode() not in everything, canary
    assert b"DE89" in everything  # the masked IBAN is there (country and check digits): the search is real


def test_the_store_writes_no_temporary_file_outside_its_data_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite spills savepoint journals and large sorts to temporary files (unlinked at once, so their
    blocks hold patient data that erasure and ``secure_delete`` never reach). The gateway keeps them in
    memory: with SQLite's temporary directory pointed at a watched folder, concurrent intake (groups
    whose savepoints journal many pages) and the API's reads never touch it."""
    watched = tmp_path / "sqlite-tmp"
    watched.mkdir()
    monkeypatch.setenv("SQLITE_TMPDIR", str(watched))
    (tmp_path / "gw").mkdir()
    gw = Gateway(tmp_path / "gw").start()
    before = watched.stat().st_mtime_ns  # creating or unlinking a file there would move it
    try:

        def sender(n: int) -> list[str]:
            codes = []
            with socket.create_connection(("127.0.0.1", gw.mllp_port), timeout=20) as s:
                for i in range(40):
                    s.sendall(SB + HL7.replace("CANARY-0001", f"TMP-{n}-{i}").encode() + EB)
                    codes.append(field(read_frame(s), "MSA", 1))
            return codes

        with ThreadPoolExecutor(8) as pool:
            codes = [c for batch in pool.map(sender, range(8)) for c in batch]
        assert codes == ["AA"] * 320
        listed = httpx.get(
            f"{gw.http_url}/api/messages",
            params={"limit": 500},
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        assert len(listed.json()["items"]) == 320
    finally:
        gw.stop()
    assert list(watched.iterdir()) == []
    assert watched.stat().st_mtime_ns == before
