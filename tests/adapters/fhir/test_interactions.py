"""How FHIR writes and reads name their resource in lineage: by type, keyed pseudonym and masked form.

Clients use an MRN as a Patient's id, and lineage is hash-chained: an id that went in could never be
taken out when the patient is erased. The writes run on a real store, as the API and the ``fhir_store``
sink run them, and the chain is read back as stored.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.fhir import interactions
from adapters.fhir.adapter import mask_reference
from adapters.fhir.api import FhirAPI
from gateway.envelope import new_id
from gateway.lineage import Keyed, pseudonym
from gateway.security import Principal
from gateway.store import Applied, EventQuery
from gateway.store.sqlite import SQLiteStore

KEY = b"k" * 32
MRN = "MRNCANARY777"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "gw.db", KEY)
    s.open()
    yield s
    assert s.verify_lineage().ok
    s.close()


def test_a_resource_is_named_by_type_pseudonym_and_mask() -> None:
    details = interactions.resource_details("Patient", MRN)
    assert details == {
        "resource_type": "Patient",
        "resource": Keyed(f"Patient/{MRN}"),
        "masked_resource": "Patient/***Y777",
    }
    assert MRN not in repr(details)
    read = FhirAPI._read_event(Principal("ehr", frozenset()), "Patient", MRN, 2, new_id(), "create")
    assert read.details["resource"] == Keyed(f"Patient/{MRN}") and read.details["version"] == 2
    assert MRN not in repr(read)


def test_a_reference_is_masked_as_a_patient_key_is() -> None:
    assert mask_reference("Observation/01J9Z8K4W2") == "Observation/***K4W2"
    assert mask_reference("Patient/p-1") == "Patient/***"  # a short id shows nothing of itself
    assert mask_reference(f"Patient/{MRN}") == "Patient/***Y777"


def test_a_write_goes_into_lineage_as_the_pseudonym_its_patient_key_gets(store: SQLiteStore) -> None:
    """``ResourceWritten`` holds the pseudonym of ``Patient/<id>``, the one the ``patient`` business key
    of the same write gets, so a lineage search by ``Patient/<id>`` finds it; the id is nowhere."""
    message_id = new_id()
    patient = {"resourceType": "Patient", "id": MRN, "name": [{"family": "Doe"}]}

    def effect(conn: sqlite3.Connection) -> Applied:
        done = interactions.update(conn, patient, MRN, message_id)
        return Applied(done, interactions.events([done], message_id))

    asyncio.run(store.record_effect(effect))
    (event,) = [e for e in store.events_between(None, None) if e.event == "ResourceWritten"]
    assert event.details == {
        "resource_type": "Patient",
        "resource": pseudonym(KEY, f"Patient/{MRN}"),
        "masked_resource": "Patient/***Y777",
        "version": 1,
    }
    assert [e.seq for e in store.search_events(EventQuery(key=f"Patient/{MRN}"))] == [event.seq]
    with sqlite3.connect(store.path) as db:
        assert MRN not in repr(db.execute("SELECT * FROM lineage").fetchall())
