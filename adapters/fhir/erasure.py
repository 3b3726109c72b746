"""Erasing a data subject from the FHIR store: a Patient and the resources about it, expunged.

``gateway subjects erase Patient/<id>`` runs :func:`expunge_patient` in the
erasure's transaction. A resource is *about* the patient when the adapter would
file it under that patient (:func:`adapters.fhir.adapter.patients_of`: the
Patient itself, a ``subject``, ``patient`` or ``beneficiary`` reference to it,
any Appointment participant's or an AppointmentResponse's ``actor``),
which is also a business key its writes were filed under. The candidates come
from the search index (current resources that refer to the patient) and from
the writes filed under the patient's pseudonym (deleted resources and earlier
versions, which the index does not hold); each is then judged version by
version:

* when its latest version with content is about the patient, the whole
  resource goes (every version, tombstone and index row): reads answer 404, as
  after HAPI FHIR's ``$expunge``. Deliberately so even when it is also about
  other patients (an Appointment of two): it holds the erased patient's data,
  so it goes for the others too, as the body of a Bundle about several
  patients is dropped when any of them is erased;
* when only earlier versions are (an Observation moved to another patient),
  those versions go and the current one stays.

What stays: the lineage events of the writes, which name resources by type and
the keyed pseudonym of their reference (never by id) and hold no values, and
the envelopes, whose ``resource_id`` header the store replaces by that
pseudonym too (their pending deliveries dead-lettered) and whose bodies are
unreadable when their route sealed them (``storage: encrypted``): under this
patient's key, or under another's when the write was filed under this patient
too (a Bundle or an Appointment about several patients), its body removed.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Final

from adapters.fhir import search
from adapters.fhir.adapter import patients_of
from adapters.fhir.interactions import body_of
from adapters.fhir.resources import ID_PATTERN, RESOURCE_TYPES
from gateway.store import resources

PATIENT_PARAMS = ("subject", "patient", "beneficiary")
"""The reference search parameters that file a resource under a patient."""
_ID = re.compile(ID_PATTERN)


def _filing() -> dict[str, list[str]]:
    """Per resource type, which of :data:`PATIENT_PARAMS` it has: one indexed lookup each."""
    out: dict[str, list[str]] = {}
    for rtype in sorted(RESOURCE_TYPES):
        params = search.params_of(rtype)
        names = [n for n in PATIENT_PARAMS if n in params and params[n].kind == "reference"]
        if names:
            out[rtype] = names
    return out


_FILING: Final = _filing()


def expunge_patient(conn: sqlite3.Connection, value: str, key_pseudonym: str) -> int:
    """Expunge what the FHIR store holds about the patient ``value`` (``Patient/<id>``); the number of
    resources removed or cut down. Any other kind of subject value holds nothing here: 0."""
    kind, _, rid = value.partition("/")
    if kind != "Patient" or not _ID.fullmatch(rid):
        return 0
    candidates = dict.fromkeys(
        [
            ("Patient", rid),
            *(
                ref
                for rtype, names in _FILING.items()
                for ref in resources.referring(conn, rtype, names, [value])
            ),
            *resources.written_for(conn, key_pseudonym),
        ]
    )
    touched = 0
    for ctype, cid in candidates:
        versions = [v for v in resources.versions_of(conn, ctype, cid) if not v.deleted]
        about = [v.version for v in versions if value in patients_of(body_of(v))]
        if not about:
            continue
        if about[-1] == versions[-1].version:
            resources.expunge(conn, ctype, cid)
        else:
            resources.expunge(conn, ctype, cid, about)
        touched += 1
    return touched
