"""FHIR search: index rows written with resources, and searches run against them in a real SQLite.

The database has the tables and indexes of migration 10 (``gateway/store/migrations.py``); the
resources below are indexed with :func:`index_rows` and every search runs the SELECT the FHIR API
runs, so each test states which resources a client gets back.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.fhir.outcome import FhirError
from adapters.fhir.search import (
    COMMON_PARAMS,
    SEARCH_PARAMS,
    Include,
    IndexRow,
    Search,
    index_rows,
    params_of,
    parse_search,
)
from gateway.store.sqlite import migrate

MRN = "http://hospital.example/mrn"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

PATIENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "2026-01-01T10:00:00.000000Z",
        {
            "resourceType": "Patient",
            "id": "p1",
            "identifier": [{"system": MRN, "value": "MRN-1"}],
            "name": [{"family": "Müller", "given": ["Zoë", "Anna"]}, {"family": "Müller"}],
            "gender": "female",
            "birthDate": "1980-05-17",
            "active": True,
            "telecom": [
                {"system": "phone", "value": "555-0101"},
                {"system": "email", "value": "zoe@example.org"},
            ],
            "address": [{"line": ["1 Main St"], "city": "Zürich", "postalCode": "8001"}],
            "generalPractitioner": [{"reference": "Practitioner/dr1"}],
            "managingOrganization": {"reference": "Organization/org1"},
        },
    ),
    (
        "2026-01-02T10:00:00.000000Z",
        {
            "resourceType": "Patient",
            "id": "p2",
            "identifier": [
                {"system": MRN, "value": "MRN-2"},
                {"system": "http://other.example/ids", "value": "MRN-1"},
            ],
            "name": [{"family": "Mueller", "given": ["Hans"]}],
            "gender": "male",
            "birthDate": "1980",
            "active": False,
            "deceasedDateTime": "2020-03-01T01:00:00+02:00",
            "telecom": [{"system": "email", "value": "555-0101"}],
        },
    ),
    (
        "2026-01-03T10:00:00.000000Z",
        {
            "resourceType": "Patient",
            "id": "p3",
            "identifier": [{"value": "MRN-3"}],
            "name": [{"text": "Jean-Luc Picard", "family": "Picard", "given": ["Jean-Luc"]}],
            "gender": "male",
            "birthDate": "1975-12",
        },
    ),
    (
        "2026-02-01T00:00:00.000000Z",
        {"resourceType": "Patient", "id": "p4", "name": [{"family": "Lee_Ann"}]},
    ),
]


def _code(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


SYSTOLIC = _code(LOINC, "8480-6")

OBSERVATIONS: list[tuple[str, dict[str, Any]]] = [
    (
        "2026-03-01T00:00:00.000000Z",
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": SYSTOLIC,
            "category": [_code("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs")],
            "subject": {"reference": "Patient/p1"},
            "encounter": {"reference": "Encounter/e1"},
            "effectiveDateTime": "2021-03-04T10:00:00+02:00",
            "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        },
    ),
    (
        "2026-03-02T00:00:00.000000Z",
        {
            "resourceType": "Observation",
            "id": "o2",
            "status": "final",
            "code": SYSTOLIC,
            "subject": {"reference": "Patient/p1/_history/3"},
            "effectiveDateTime": "2021-03-05",
            "valueQuantity": {"value": 135.5, "system": UCUM, "code": "mm[Hg]"},
        },
    ),
    (
        "2026-03-03T00:00:00.000000Z",
        {
            "resourceType": "Observation",
            "id": "o3",
            "status": "final",
            "code": _code(LOINC, "29463-7"),
            "subject": {"reference": "Patient/p2"},
            "effectivePeriod": {"start": "2021-01-01T00:00:00Z"},
            "valueQuantity": {"value": 80, "unit": "kg", "system": UCUM, "code": "kg"},
        },
    ),
    (
        "2026-03-04T00:00:00.000000Z",
        {
            "resourceType": "Observation",
            "id": "o4",
            "status": "preliminary",
            "code": SYSTOLIC,
            "subject": {"reference": "Group/g1"},
            "effectiveInstant": "2019-06-30T23:30:00.123Z",
            "valueQuantity": {"value": 120, "unit": "mmHg"},
            "valueString": "Très haut",
        },
    ),
    (
        "2026-03-05T00:00:00.000000Z",
        {
            "resourceType": "Observation",
            "id": "o5",
            "status": "final",
            "code": {"text": "free text only"},
            "subject": {"reference": "http://other.example/fhir/Patient/p9"},
            "valueString": "Élevé, très",
        },
    ),
]


@pytest.fixture(scope="module")
def db() -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, b"k" * 32)  # the store's real schema (migration 10: the FHIR tables and their indexes)
    for last_updated, resource in PATIENTS + OBSERVATIONS:
        rtype, rid = resource["resourceType"], resource["id"]
        conn.execute(
            "INSERT INTO fhir_resources VALUES (?, ?, 1, ?, 0, 'm1', ?)",
            (rtype, rid, last_updated, json.dumps(resource).encode()),
        )
        conn.executemany(
            "INSERT INTO fhir_index (type, param, id, system, value, exact, low, high, num)"
            " VALUES (?,?,?,?,?,?,?,?,?)",
            [
                (rtype, e.param, rid, e.system, e.value, e.exact, e.low, e.high, e.num)
                for e in index_rows(rtype, resource)
            ],
        )
    yield conn
    conn.close()


def _pairs(query: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(name, value) for name, _, value in (q.partition("=") for q in query)]


def _select(s: Search) -> str:
    return (
        "SELECT r.id, r.version, r.last_updated, r.body FROM fhir_resources r"
        f" WHERE r.type = ? AND r.deleted = 0 AND ({s.where}) ORDER BY {s.order_by} LIMIT ? OFFSET ?"
    )


def run(db: sqlite3.Connection, s: Search) -> list[str]:
    rows = db.execute(_select(s), [s.resource_type, *s.args, *s.order_args, s.count, s.offset])
    return [row[0] for row in rows]


def found(db: sqlite3.Connection, rtype: str, *query: str, strict: bool = True) -> list[str]:
    """Ids that ``GET /fhir/rtype?query...`` answers (each query item ``name=value``), in result order."""
    return run(db, parse_search(rtype, _pairs(query), strict=strict))


def error(rtype: str, *query: str) -> FhirError:
    with pytest.raises(FhirError) as caught:
        parse_search(rtype, _pairs(query))
    assert caught.value.status == 400
    return caught.value


# --- index rows -------------------------------------------------------------------------------------


def test_index_rows_of_a_patient() -> None:
    rows = index_rows("Patient", PATIENTS[0][1])
    assert IndexRow("name", value="muller", exact="Müller") in rows
    assert IndexRow("given", value="zoe", exact="Zoë") in rows
    assert IndexRow("address-city", value="zurich", exact="Zürich") in rows
    assert IndexRow("identifier", system=MRN, value="MRN-1") in rows
    assert IndexRow("phone", system="phone", value="555-0101") in rows
    assert IndexRow("email", system="email", value="zoe@example.org") in rows
    assert not [r for r in rows if r.param == "phone" and r.system == "email"]
    assert IndexRow("active", value="true") in rows
    assert (
        IndexRow("birthdate", low="1980-05-17T00:00:00.000000Z", high="1980-05-17T23:59:59.999999Z") in rows
    )
    assert IndexRow("general-practitioner", value="Practitioner/dr1") in rows
    assert len(rows) == len(set(rows))  # the family written twice is one row
    assert [r for r in rows if r.param == "family"] == [IndexRow("family", value="muller", exact="Müller")]


def test_index_rows_of_observations() -> None:
    o1, o2, o3 = (index_rows("Observation", OBSERVATIONS[i][1]) for i in range(3))
    # a zoned dateTime is stored in UTC, as a range of its precision (seconds)
    assert IndexRow("date", low="2021-03-04T08:00:00.000000Z", high="2021-03-04T08:00:00.999999Z") in o1
    # code and a different unit: a second row lets number||unit find it
    assert IndexRow("value-quantity", system=UCUM, value="mm[Hg]", num=120.0) in o1
    assert IndexRow("value-quantity", value="mmHg", num=120.0) in o1
    assert IndexRow("patient", value="Patient/p1") in o1
    assert IndexRow("subject", value="Patient/p1") in o2  # /_history/3 dropped
    assert IndexRow("date", low="2021-01-01T00:00:00.000000Z", high="9999-12-31T23:59:59.999999Z") in o3
    o4 = index_rows("Observation", OBSERVATIONS[3][1])
    assert IndexRow("subject", value="Group/g1") in o4
    assert not [r for r in o4 if r.param == "patient"]  # patient only indexes references to Patient


def test_index_rows_skip_what_cannot_be_searched() -> None:
    resource = {
        "resourceType": "Observation",
        "subject": {"reference": "urn:uuid:4b8e2c2e-0000-4000-8000-000000000001"},
        "performer": [
            {"reference": "#contained"},
            {"reference": "Practitioner?identifier=x|1"},
            {"display": "Dr"},
        ],
        "effectivePeriod": {"end": "2020-02"},
        "issued": "not a date",
        "valueQuantity": {"value": "12"},
        "code": {"text": "no coding"},
    }
    rows = index_rows("Observation", resource)
    assert rows == [IndexRow("date", low="0001-01-01T00:00:00.000000Z", high="2020-02-29T23:59:59.999999Z")]
    assert index_rows("Observation", {"effectiveDateTime": "2020-02-30"}) == []
    assert index_rows("Basic", {"code": {"text": "x"}}) == []


def test_parameter_table() -> None:
    assert set(COMMON_PARAMS) == {"_id", "_lastUpdated"}
    assert set(params_of("Basic")) == {"_id", "_lastUpdated"}
    assert {"_id", "_lastUpdated", "identifier", "birthdate", "phone"} <= set(params_of("Patient"))
    assert params_of("Observation")["patient"].targets == ("Patient",)
    for rtype, params in SEARCH_PARAMS.items():
        for name, p in params.items():
            assert p.name == name and p.paths and p.description, (rtype, name)
            assert not p.targets or p.kind == "reference", (rtype, name)
    assert SEARCH_PARAMS["Patient"]["phone"].description == (
        "Code or identifier search on Patient.telecom.where(system = 'phone')."
    )


# --- string -----------------------------------------------------------------------------------------


def test_string_starts_with_ignoring_case_and_accents(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "name=muller") == ["p1"]
    assert found(db, "Patient", "name=MÜL") == ["p1"]
    assert found(db, "Patient", "name=mu") == ["p1", "p2"]
    assert found(db, "Patient", "name=Zoë") == found(db, "Patient", "name=zoe") == ["p1"]
    assert found(db, "Patient", "family=pic") == ["p3"]
    assert found(db, "Patient", "given=jean") == ["p3"]
    assert found(db, "Patient", "family=jean") == []
    assert found(db, "Patient", "address-city=zurich") == ["p1"]
    assert found(db, "Patient", "address=1 main") == ["p1"]
    assert found(db, "Patient", "address=main") == []  # starts-with, not contains
    # a string value is never read as a prefix: "le" and "lee" are text
    assert found(db, "Patient", "name=lee") == found(db, "Patient", "name=le") == ["p4"]


def test_string_contains_and_exact(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "name:contains=luc") == ["p3"]
    assert found(db, "Patient", "name:contains=ll") == ["p1", "p2"]
    assert found(db, "Patient", "address:contains=MAIN") == ["p1"]
    assert found(db, "Patient", "name:contains=_") == ["p4"]  # LIKE wildcards are escaped
    assert found(db, "Patient", "name:contains=%") == []
    assert found(db, "Patient", "name:exact=Müller") == ["p1"]
    assert found(db, "Patient", "name:exact=müller") == []
    assert found(db, "Patient", "name:exact=Muller") == []


def test_escaped_comma_is_part_of_the_value(db: sqlite3.Connection) -> None:
    assert found(db, "Observation", "value-string=tres") == ["o4"]
    assert found(db, "Observation", "value-string=élevé\\, très") == ["o5"]
    assert found(db, "Observation", "value-string=zzz,tres") == ["o4"]  # OR
    assert found(db, "Observation", "value-string=zzz\\,tres") == []  # one value


# --- token ------------------------------------------------------------------------------------------


def test_token_forms(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "identifier=MRN-1") == ["p1", "p2"]
    assert found(db, "Patient", f"identifier={MRN}|MRN-1") == ["p1"]
    assert found(db, "Patient", "identifier=|MRN-3") == ["p3"]
    assert found(db, "Patient", "identifier=|MRN-1") == []
    assert found(db, "Patient", f"identifier={MRN}|") == ["p1", "p2"]
    assert found(db, "Patient", "identifier=mrn-1") == []  # codes are case-sensitive
    assert found(db, "Observation", f"code={LOINC}|8480-6") == ["o1", "o2", "o4"]
    assert found(db, "Patient", "active=true") == ["p1"]
    assert found(db, "Patient", "active=false") == ["p2"]


def test_token_contact_points(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "telecom=555-0101") == ["p1", "p2"]
    assert found(db, "Patient", "telecom=phone|555-0101") == ["p1"]
    assert found(db, "Patient", "phone=555-0101") == ["p1"]
    assert found(db, "Patient", "email=555-0101") == ["p2"]


def test_token_not(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "gender:not=male") == ["p1", "p4"]  # p4 has no gender at all
    assert found(db, "Patient", "gender:not=male,female") == ["p4"]
    assert found(db, "Observation", "code:not=8480-6") == ["o3", "o5"]
    assert error("Observation", "code:text=pressure").code == "not-supported"
    assert error("Patient", "identifier=a|b|c").code == "invalid"


# --- date -------------------------------------------------------------------------------------------

# Observation date ranges (UTC): o1 2021-03-04T08:00:00 (1 s), o2 the day 2021-03-05, o3 from
# 2021-01-01 on (open Period), o4 2019-06-30T23:30:00.123 (1 ms), o5 none.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2021", ["o1", "o2"]),
        ("2021-03", ["o1", "o2"]),
        ("2021-03-04", ["o1"]),
        ("2021-03-04T10:00:00+02:00", ["o1"]),
        ("2021-03-04T10:00:00 02:00", ["o1"]),  # '+' decoded to a space by the query string
        ("2021-03-04T08:00:00Z", ["o1"]),
        ("2021-03-04T08:00", ["o1"]),
        ("2021-03-04T10:00:00", []),  # no zone: UTC
        ("2019-06-30T23:30:00.123Z", ["o4"]),
        ("ne2021-03", ["o3", "o4"]),
        ("gt2021-03-04", ["o2", "o3"]),
        ("gt2030", ["o3"]),
        ("lt2021-01-01", ["o4"]),
        ("ge2021-03-05", ["o2", "o3"]),
        ("le2021-01-01", ["o3", "o4"]),
        ("sa2021-02", ["o1", "o2"]),
        ("eb2021", ["o4"]),
        ("ap2019-06-30", ["o4"]),  # widened by a tenth of the years to now: still far from 2021
        ("lt2021-03-05,gt2100", ["o1", "o3", "o4"]),
    ],
)
def test_date_prefixes(db: sqlite3.Connection, value: str, expected: list[str]) -> None:
    assert found(db, "Observation", f"date={value}") == expected


def test_dates_of_different_precisions(db: sqlite3.Connection) -> None:
    # p1 1980-05-17, p2 1980 (the whole year), p3 1975-12, p4 none
    assert found(db, "Patient", "birthdate=1980") == ["p1", "p2"]
    assert found(db, "Patient", "birthdate=1980-05") == ["p1"]
    assert found(db, "Patient", "birthdate=1980-05-17") == ["p1"]
    assert found(db, "Patient", "birthdate=1975-12-31") == []  # the month is wider than the day
    assert found(db, "Patient", "birthdate=lt1980-05") == ["p2", "p3"]
    assert found(db, "Patient", "birthdate=ge1980-06") == ["p2"]
    assert found(db, "Patient", "birthdate=le1975") == ["p3"]


def test_zoned_date_time_is_compared_in_utc(db: sqlite3.Connection) -> None:
    # 2020-03-01T01:00:00+02:00 is 2020-02-29T23:00:00Z
    assert found(db, "Patient", "death-date=2020-02-29") == ["p2"]
    assert found(db, "Patient", "death-date=2020-03-01") == []


def test_last_updated(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "_lastUpdated=ge2026-01-02") == ["p2", "p3", "p4"]
    assert found(db, "Patient", "_lastUpdated=2026-01") == ["p1", "p2", "p3"]
    assert found(db, "Patient", "_lastUpdated=lt2026-01-02T00:00:00Z") == ["p1"]
    assert found(db, "Patient", "_lastUpdated=2026-01-01,2026-02") == ["p1", "p4"]
    assert found(db, "Patient", "_lastUpdated=gt2026-01-01", "_lastUpdated=lt2026-01-03") == ["p2"]


# --- reference --------------------------------------------------------------------------------------


def test_reference_forms(db: sqlite3.Connection) -> None:
    assert found(db, "Observation", "subject=Patient/p1") == ["o1", "o2"]
    assert found(db, "Observation", "subject=Patient/p1/_history/9") == ["o1", "o2"]
    assert found(db, "Observation", "subject=p1") == ["o1", "o2"]  # bare id: any type
    assert found(db, "Observation", "subject:Patient=p1") == ["o1", "o2"]
    assert found(db, "Observation", "subject:Group=g1") == ["o4"]
    assert found(db, "Observation", "subject:Patient=g1") == []
    assert found(db, "Observation", "patient=p1") == ["o1", "o2"]
    assert found(db, "Observation", "patient=g1") == []
    assert found(db, "Observation", "encounter=e1") == ["o1"]
    assert found(db, "Observation", "subject=http://other.example/fhir/Patient/p9") == ["o5"]
    assert found(db, "Observation", "patient=http://other.example/fhir/Patient/p9") == ["o5"]
    assert found(db, "Patient", "general-practitioner=Practitioner/dr1") == ["p1"]
    assert found(db, "Patient", "general-practitioner=dr1") == ["p1"]  # one of three target types
    assert found(db, "Patient", "organization=org1") == ["p1"]


def test_reference_errors() -> None:
    assert error("Observation", "subject:Nonsense=1").code == "not-supported"
    assert error("Observation", "patient:Group=g1").code == "invalid"
    assert error("Observation", "subject:Group=Patient/p1").code == "invalid"
    assert error("Observation", "subject=not an id").code == "invalid"


# --- quantity ---------------------------------------------------------------------------------------

# o1 120 mm[Hg] (unit mmHg), o2 135.5 mm[Hg], o3 80 kg, o4 120 with unit mmHg only, o5 none.


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", ["o1", "o4"]),
        (f"120|{UCUM}|mm[Hg]", ["o1"]),
        ("120||mmHg", ["o1", "o4"]),  # code or unit
        ("gt100||mm[Hg]", ["o1", "o2"]),
        ("le80", ["o3"]),
        ("lt80", []),
        ("135", []),  # 135 means [134.5, 135.5)
        ("135.5", ["o2"]),
        ("1.4e2", ["o2"]),  # [135, 145)
        ("ne120", ["o2", "o3"]),
        (f"ge80|{UCUM}|kg", ["o3"]),
        (f"ge80|{UCUM}|", ["o1", "o2", "o3"]),
        ("ap130", ["o1", "o2", "o4"]),  # within 10 %
        ("80,135.5", ["o2", "o3"]),
    ],
)
def test_quantity(db: sqlite3.Connection, value: str, expected: list[str]) -> None:
    assert found(db, "Observation", f"value-quantity={value}") == expected


# --- missing, _id, AND / OR -------------------------------------------------------------------------


def test_missing(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "birthdate:missing=true") == ["p4"]
    assert found(db, "Patient", "birthdate:missing=false") == ["p1", "p2", "p3"]
    assert found(db, "Observation", "value-quantity:missing=true") == ["o5"]
    assert found(db, "Observation", "encounter:missing=true") == ["o2", "o3", "o4", "o5"]
    assert error("Patient", "birthdate:missing=maybe").code == "invalid"
    assert error("Patient", "_id:missing=true").code == "not-supported"


def test_id(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "_id=p1,p3") == ["p1", "p3"]
    assert found(db, "Patient", "_id=p1", "_id=p3") == []
    assert found(db, "Patient", "_id=o1") == []


def test_and_or(db: sqlite3.Connection) -> None:
    assert found(db, "Patient", "name=mu", "gender=male") == ["p2"]
    assert found(db, "Patient", "gender=male", "gender=female") == []
    assert found(db, "Patient", "gender=male,female") == ["p1", "p2", "p3"]
    assert found(db, "Patient", "name=zoe,pic") == ["p1", "p3"]
    assert found(db, "Observation", "date=ge2021", "date=le2021-03-04") == ["o1", "o3"]
    assert found(db, "Observation", "patient=p1", f"code={LOINC}|8480-6", "date=2021-03-05") == ["o2"]


def test_no_criteria_and_empty_values(db: sqlite3.Connection) -> None:
    assert parse_search("Patient", []).where == "1"
    assert found(db, "Patient") == ["p1", "p2", "p3", "p4"]
    assert found(db, "Patient", "name=", "gender=,") == ["p1", "p2", "p3", "p4"]
    ignored = parse_search("Patient", [("_format", "json"), ("_pretty", "true"), ("_elements", "id")])
    assert (ignored.where, ignored.echo) == ("1", (("_elements", "id"),))  # _elements: kept for the links


# --- sort, page, summary, include -------------------------------------------------------------------


def test_sort(db: sqlite3.Connection) -> None:
    assert found(db, "Observation", "_sort=date") == ["o4", "o3", "o1", "o2", "o5"]  # none last
    assert found(db, "Observation", "_sort=-date") == ["o3", "o2", "o1", "o4", "o5"]
    assert found(db, "Patient", "_sort=-_lastUpdated") == ["p4", "p3", "p2", "p1"]
    assert found(db, "Patient", "_sort=_lastUpdated") == ["p1", "p2", "p3", "p4"]
    assert found(db, "Patient", "_sort=-_id") == ["p4", "p3", "p2", "p1"]
    assert found(db, "Patient", "_sort=birthdate") == ["p3", "p2", "p1", "p4"]
    assert found(db, "Patient", "gender=male", "_sort=-birthdate") == ["p2", "p3"]
    s = parse_search("Patient", [("_sort", "-_lastUpdated")])
    assert (s.order_by, s.order_args) == ("r.last_updated DESC, r.id", ())
    assert parse_search("Patient", []).order_by == "r.id"
    assert parse_search("Observation", [("_sort", "-date")]).order_args == ("Observation", "date")


def test_bad_sort() -> None:
    for value in ("name", "foo", "-", "date,", "_lastUpdated:desc"):
        assert error("Patient", f"_sort={value}").code == "invalid", value


def test_paging(db: sqlite3.Connection) -> None:
    s = parse_search("Patient", [("_sort", "_id"), ("_count", "2"), ("_offset", "2")])
    assert (s.count, s.offset) == (2, 2)
    assert run(db, s) == ["p3", "p4"]
    assert parse_search("Patient", []).count == 20
    assert parse_search("Patient", [("_count", "0")]).count == 0
    assert parse_search("Patient", [("_count", "5000")]).count == 1000
    for bad in ("_count=abc", "_count=-1", "_count=1.5", "_offset=-1", "_offset=x"):
        assert error("Patient", bad).code == "invalid", bad


def test_summary_and_total() -> None:
    s = parse_search("Patient", [("_summary", "count")])
    assert s.summary_count and s.total
    assert not parse_search("Patient", [("_summary", "false")]).summary_count
    assert not parse_search("Patient", [("_total", "none")]).total
    assert parse_search("Patient", [("_total", "accurate")]).total
    assert not parse_search(
        "Patient", [("_summary", "true")]
    ).summary_count  # (a subset: adapters.fhir.subset)
    assert error("Patient", "_summary=some").code == "invalid"
    assert error("Patient", "_total=some").code == "invalid"


def test_include() -> None:
    s = parse_search(
        "Observation",
        [("_include", "Observation:subject"), ("_include", "Observation:encounter:Encounter")],
    )
    assert s.includes == (
        Include("Observation", "subject", ""),
        Include("Observation", "encounter", "Encounter"),
    )
    assert error("Observation", "_include=*").code == "not-supported"
    assert error("Observation", "_include:iterate=Observation:subject").code == "not-supported"
    assert error("Observation", "_include=Patient:subject").code == "invalid"
    assert error("Observation", "_include=Observation:code").code == "invalid"
    assert error("Observation", "_include=Observation:patient:Group").code == "invalid"


def test_echo_is_canonical_and_leaves_out_paging() -> None:
    s = parse_search(
        "Patient",
        [
            ("name", "x"),
            ("_count", "5"),
            ("_offset", "10"),
            ("gender", "male"),
            ("_sort", "-_lastUpdated"),
            ("unknown", "1"),
            ("_format", "json"),
        ],
        strict=False,
    )
    assert s.echo == (("gender", "male"), ("name", "x"), ("_sort", "-_lastUpdated"))


# --- errors -----------------------------------------------------------------------------------------


def test_unknown_parameter_strict_and_lenient(db: sqlite3.Connection) -> None:
    e = error("Patient", "colour=blue")
    assert e.code == "not-supported"
    assert e.issues[0].diagnostics == "Unknown search parameter colour for Patient."
    assert found(db, "Patient", "colour=blue", "gender=male", strict=False) == ["p2", "p3"]
    unsafe = error("Patient", "<b>Smith</b>=1")
    assert "Smith" not in str(unsafe) and "an unknown search parameter" in str(unsafe)
    assert "Name the type subject refers to" in str(error("Observation", "subject.name=peter"))
    lenient = found(db, "Observation", "patient.colour=blue", "status=final", strict=False)
    assert lenient == found(db, "Observation", "status=final")  # an unknown chained parameter is ignored


def test_chained_parameters_find_resources_by_what_they_refer_to(db: sqlite3.Connection) -> None:
    # o1 and o2 name p1 (o2 by a versioned reference), o3 names p2, o4 a Group, o5 a server elsewhere
    assert found(db, "Observation", f"subject:Patient.identifier={MRN}|MRN-1") == ["o1", "o2"]
    assert found(db, "Observation", "subject:Patient.identifier=MRN-1") == ["o1", "o2", "o3"]  # any system
    assert found(db, "Observation", "patient.family=muller") == ["o1", "o2"]  # one target: no :Type needed
    assert found(db, "Observation", "patient.family=m") == ["o1", "o2", "o3"]
    assert found(db, "Observation", "patient.family:exact=Mueller") == ["o3"]
    assert found(db, "Observation", "patient.gender=male,female", "code=http://loinc.org|29463-7") == ["o3"]
    assert found(db, "Observation", "patient.birthdate=lt1980-01-01") == []  # p3 has no observation


def test_has_finds_resources_by_what_refers_to_them(db: sqlite3.Connection) -> None:
    # o1, o2 (systolic) name p1; o3 (body weight) names p2; o4 (systolic) names a Group
    assert found(db, "Patient", "_has:Observation:subject:code=http://loinc.org|8480-6") == ["p1"]
    assert found(db, "Patient", "_has:Observation:patient:code=29463-7") == ["p2"]
    assert found(db, "Patient", "_has:Observation:subject:status=final", "gender=male") == ["p2"]
    assert found(db, "Patient", "_has:Observation:subject:value-quantity=gt130") == ["p1"]  # o2's 135.5
    assert found(db, "Patient", "_has:Observation:subject:code=8480-6,29463-7") == ["p1", "p2"]
    assert found(db, "Patient", "_has:Observation:subject:code=nothing") == []
    lenient = found(db, "Patient", "_has:Observation:subject:colour=blue", "gender=male", strict=False)
    assert lenient == found(db, "Patient", "gender=male")  # an unknown parameter in _has is ignored


@pytest.mark.parametrize(
    "query",
    [
        "_has:Observation:subject=x",  # no parameter of the referring type
        "_has:Nothing:subject:code=x",
        "_has:Observation:code:status=final",  # code is no reference
        "_has:Observation:patient:colour=blue",  # (ignored under handling=lenient)
        "_has:Observation:subject:_has:Provenance:target:agent=x",  # nested
        "_has:Encounter:subject:status:missing=true",
    ],
)
def test_has_that_cannot_be_answered_is_400(query: str) -> None:
    error("Patient", query)


@pytest.mark.parametrize(
    "query",
    [
        "subject.name=x",  # subject may name any type: which one?
        "status.name=x",  # not a reference
        "subject:Nothing.name=x",
        "patient:Group.name=x",  # patient names Patients only
        "patient.identifier.system=x",  # two links
        "patient.colour=blue",
        "patient.name:missing=true",
        "patient._id=p1",
    ],
)
def test_chains_that_cannot_be_answered_are_400(query: str) -> None:
    error("Observation", query)


@pytest.mark.parametrize(
    ("rtype", "name", "value"),
    [
        ("Patient", "birthdate", "1980-13-01"),
        ("Patient", "birthdate", "Smith"),
        ("Patient", "_lastUpdated", "yesterday"),
        ("Observation", "value-quantity", "Smith"),
        ("Observation", "value-quantity", "5|Smith"),
        ("Observation", "value-quantity", "sa5"),
        ("Observation", "subject", "Smith Jones"),
        ("Patient", "identifier", "a|Smith|b"),
        ("Patient", "name:missing", "Smith"),
        ("Patient", "_count", "Smith"),
    ],
)
def test_bad_values_are_never_quoted(rtype: str, name: str, value: str) -> None:
    with pytest.raises(FhirError) as caught:
        parse_search(rtype, [(name, value)])
    e = caught.value
    assert (e.status, e.code) == (400, "invalid")
    diagnostics = e.issues[0].diagnostics
    assert name.partition(":")[0] in diagnostics
    assert value not in diagnostics and "Smith" not in diagnostics


# --- query plans ------------------------------------------------------------------------------------


def _plan(db: sqlite3.Connection, s: Search) -> str:
    rows = db.execute("EXPLAIN QUERY PLAN " + _select(s), [s.resource_type, *s.args, *s.order_args, 20, 0])
    return "\n".join(row[3] for row in rows)


def test_identifier_search_uses_the_value_index(db: sqlite3.Connection) -> None:
    plan = _plan(db, parse_search("Patient", [("identifier", f"{MRN}|MRN-1")]))
    assert (
        "fhir_index USING COVERING INDEX fhir_index_value (type=? AND param=? AND value=? AND system=?)"
        in plan
    )
    assert "SCAN" not in plan


def test_date_sort_looks_up_each_result_by_id(db: sqlite3.Connection) -> None:
    plan = _plan(db, parse_search("Observation", [("code", "8480-6"), ("_sort", "-date")]))
    assert "fhir_index USING INDEX fhir_index_resource (type=? AND id=?)" in plan
    assert "SCAN" not in plan


def test_a_capped_count_stops_past_its_cap(db: sqlite3.Connection) -> None:
    """A broad search counts at most one past the cap (the API then leaves Bundle.total out)."""
    from gateway.store import resources

    every = parse_search("Observation", [])
    exact = resources.count(db, "Observation", every.where, every.args)
    assert exact == len(OBSERVATIONS) > 3
    assert resources.count(db, "Observation", every.where, every.args, at_most=2) == 3
    assert resources.count(db, "Observation", every.where, every.args, at_most=exact) == exact
