"""The routing table: match semantics, compile errors that name the key, and the named transforms."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest

from adapters.hl7.adapter import HL7Adapter
from gateway.config import Settings
from gateway.envelope import Envelope, Receipt
from gateway.errors import ConfigError
from gateway.routing import UNMATCHED_ROUTE, RouteDecision, RoutingTable, routing_problems
from gateway.transforms import TRANSFORMS, TransformError, hl7v2_without_z_segments, transforms
from tests.conftest import FIXTURES

SINKS = {
    "ehr": {"type": "memory"},
    "lab": {"type": "memory"},
    "archive": {"type": "memory"},
}


def settings(routes: list[dict[str, Any]], unmatched: str | None = "reject", **extra: Any) -> Settings:
    tree: dict[str, Any] = {"sinks": SINKS, "routes": routes, **extra}
    if unmatched is not None:
        tree["unmatched"] = unmatched
    return Settings.model_validate(tree)


def table(*matches: dict[str, Any], unmatched: str = "reject") -> RoutingTable:
    """One route per match, named r0, r1, ... and delivering to ehr."""
    return RoutingTable.from_settings(
        settings([{"name": f"r{i}", "match": m, "to": ["ehr"]} for i, m in enumerate(matches)], unmatched)
    )


def taken(t: RoutingTable, **headers: str) -> str | None:
    decision = t.route(headers)
    return None if decision is None else decision.route


# -- matching ----------------------------------------------------------------------------------


def test_exact_match_is_whole_and_case_sensitive() -> None:
    t = table({"message_type": "ADT^A01"})
    assert taken(t, message_type="ADT^A01") == "r0"
    assert taken(t, message_type="ADT^A011") is None
    assert taken(t, message_type="adt^a01") is None
    assert taken(t, message_type="xADT^A01") is None


def test_glob_treats_caret_as_a_literal() -> None:
    t = table({"message_type": "ADT^A*"})
    assert taken(t, message_type="ADT^A01") == "r0"
    assert taken(t, message_type="ADT^A") == "r0"
    assert taken(t, message_type="ADTXA01") is None  # ^ is not a regex anchor or wildcard
    assert taken(t, message_type="ORU^R01") is None
    assert taken(t, message_type="adt^a01") is None
    t = table({"message_type": "^A0?"})
    assert taken(t, message_type="^A01") == "r0"
    assert taken(t, message_type="A01") is None


def test_glob_question_mark_and_brackets() -> None:
    t = table({"trigger_event": "A0[1-4]"})
    assert [taken(t, trigger_event=e) for e in ("A01", "A04", "A05", "A0")] == ["r0", "r0", None, None]
    t = table({"trigger_event": "A0[!1]"})
    assert [taken(t, trigger_event=e) for e in ("A01", "A02")] == [None, "r0"]
    t = table({"message_type": "ORU^R0?"})
    assert [taken(t, message_type=m) for m in ("ORU^R01", "ORU^R30", "ORU^R0")] == ["r0", None, None]
    t = table({"message_type": "[^]X"})  # a caret inside brackets is literal too
    assert [taken(t, message_type=m) for m in ("^X", "AX")] == ["r0", None]


def test_star_matches_empty_but_question_star_needs_a_value() -> None:
    t = table({"patient_id": "*"})
    assert taken(t, patient_id="") == "r0"
    t = table({"patient_id": "?*"})
    assert taken(t, patient_id="") is None
    assert taken(t, patient_id="123^^^HOSP") == "r0"


def test_list_is_any_alternative_exact_or_glob() -> None:
    t = table({"message_code": ["ORM", "OML"]})
    assert [taken(t, message_code=c) for c in ("ORM", "OML", "ORU", "OR")] == ["r0", "r0", None, None]
    t = table({"message_type": ["ADT^A0[14]", "ORU^R01", "SIU^*"]})
    for value, expected in [
        ("ADT^A01", "r0"),
        ("ADT^A04", "r0"),
        ("ADT^A08", None),
        ("ORU^R01", "r0"),
        ("ORU^R011", None),
        ("SIU^S12", "r0"),
        ("ADT^A01x", None),
    ]:
        assert taken(t, message_type=value) == expected, value


@pytest.mark.parametrize(
    ("spec", "value", "expected"),
    [
        ({"gt": 1000}, "1000.50", True),
        ({"gt": "1000.50"}, "1000.50", False),
        ({"ge": "1000.50"}, "1000.50", True),
        ({"ge": "1000.50"}, "1000.5", True),
        ({"eq": "1000.5"}, "1000.500", True),
        ({"lt": 0.1}, "0.09999", True),
        ({"lt": 0.1}, "0.1", False),  # 0.1 from YAML compares as the decimal 0.1, not a binary float
        ({"le": 5000, "gt": 1000}, "5000", True),
        ({"le": 5000, "gt": 1000}, "5000.01", False),
        ({"ne": 0}, "0.00", False),
        ({"ne": 0}, "-1", True),
        ({"gt": -5}, " -4.5 ", True),
        ({"gt": 1}, "1e3", True),
        ({"gt": 1}, "abc", False),
        ({"ne": 1}, "abc", False),  # not a number is not "not equal"
        ({"gt": 1}, "", False),
        ({"gt": 1}, "NaN", False),
        ({"gt": 1}, "Infinity", False),
        ({"gt": 1}, "1_000", False),
        ({"gt": 1}, "12,5", False),
        ({"gt": 1}, "1e99999999999999999999999999", False),
        ({"gt": 1}, "\u0663", False),  # a non-ASCII digit
    ],
)
def test_numeric_comparisons_use_decimal(spec: dict[str, Any], value: str, expected: bool) -> None:
    t = table({"amount": spec})
    assert (taken(t, amount=value) == "r0") is expected


def test_bare_number_is_numeric_equality() -> None:
    t = table({"amount": 100})
    assert [taken(t, amount=v) for v in ("100", "100.00", "1e2", "100.01", "x")] == [
        "r0",
        "r0",
        "r0",
        None,
        None,
    ]
    t = table({"version": "2.5"})  # quoted: text
    assert [taken(t, version=v) for v in ("2.5", "2.50")] == ["r0", None]


def test_missing_header_never_matches_not_even_ne() -> None:
    t = table({"amount": {"ne": 5}})
    assert taken(t) is None
    t = table({"sending_facility": "*"})
    assert taken(t) is None
    assert taken(t, sending_facility="") == "r0"


def test_every_key_must_hold() -> None:
    t = table({"message_type": "ADT^A*", "sending_facility": "GHH"})
    assert taken(t, message_type="ADT^A01", sending_facility="GHH") == "r0"
    assert taken(t, message_type="ADT^A01", sending_facility="OTHER") is None
    assert taken(t, message_type="ADT^A01") is None


def test_empty_match_takes_everything() -> None:
    t = table({})
    assert taken(t) == "r0"
    assert taken(t, anything="x") == "r0"


def test_first_match_wins_and_to_fans_out() -> None:
    t = RoutingTable.from_settings(
        settings(
            [
                {"name": "adt", "match": {"message_type": "ADT^*"}, "to": ["ehr", "archive"]},
                {"name": "a01", "match": {"message_type": "ADT^A01"}, "to": ["lab"]},
                {"name": "rest", "match": {}, "to": ["archive"], "transform": "hl7v2_without_z_segments"},
            ]
        )
    )
    assert t.route({"message_type": "ADT^A01"}) == RouteDecision("adt", ("ehr", "archive"), None, None)
    assert t.route({"message_type": "ORU^R01"}) == RouteDecision(
        "rest", ("archive",), "hl7v2_without_z_segments", None
    )


def test_order_key_is_the_order_by_header_or_none() -> None:
    t = RoutingTable.from_settings(
        settings(
            [
                {
                    "name": "ordered",
                    "match": {"message_code": "ADT"},
                    "to": ["ehr"],
                    "order_by": "patient_id",
                },
                {"name": "plain", "match": {}, "to": ["ehr"]},
            ]
        )
    )
    decision = t.route({"message_code": "ADT", "patient_id": "123^^^HOSP"})
    assert decision is not None and decision.order_key == "123^^^HOSP"
    decision = t.route({"message_code": "ADT", "patient_id": ""})
    assert decision is not None and decision.order_key is None
    decision = t.route({"message_code": "ADT"})
    assert decision is not None and decision.order_key is None
    decision = t.route({"message_code": "ORU", "patient_id": "123"})
    assert decision is not None and decision.route == "plain" and decision.order_key is None


def test_unmatched_policy() -> None:
    t = table({"message_code": "ADT"}, unmatched="archive")
    assert t.unmatched == "archive"
    assert t.route({"message_code": "ORU"}) is None
    assert t.unmatched_decision() == RouteDecision(UNMATCHED_ROUTE, ("archive",), None, None)
    t = table({"message_code": "ADT"}, unmatched="reject")
    assert t.unmatched == "reject"
    assert t.unmatched_decision() is None


def test_no_routes_means_routing_is_off() -> None:
    t = RoutingTable.from_settings(Settings.model_validate({"sinks": SINKS}))
    assert not t.enabled
    assert t.route({"message_code": "ADT"}) is None
    assert t.describe() == ()
    assert table({}).enabled


def test_route_envelope_adds_protocol_from_the_envelope() -> None:
    raw = (FIXTURES / "hl7" / "adt_a01__basic.hl7").read_bytes()
    envelope = HL7Adapter().parse(raw, Receipt(listener="test"))
    t = table({"protocol": "hl7v2", "message_type": "ADT^A01", "sending_facility": "NORTHWIND_GEN"})
    decision = t.route_envelope(envelope)
    assert decision is not None and decision.route == "r0"
    assert table({"protocol": "fhir"}).route_envelope(envelope) is None


def test_matching_takes_microseconds() -> None:
    routes = [{"message_type": f"ZZ{i}^*", "sending_facility": ["A", "B*"]} for i in range(20)]
    t = table(*routes, {"message_type": "ADT^A0[1-8]", "amount": {"gt": 10}})
    headers = {"message_type": "ADT^A04", "sending_facility": "B1", "amount": "12.5"}
    assert taken(t, **headers) == "r20"
    n = 2000
    start = time.perf_counter()
    for _ in range(n):
        t.route(headers)
    per_message = (time.perf_counter() - start) / n
    assert per_message < 200e-6, f"{per_message * 1e6:.1f} µs for 21 routes"


# -- compile errors ----------------------------------------------------------------------------


def errors(routes: list[dict[str, Any]], unmatched: str | None = "reject", **extra: Any) -> list[str]:
    s = settings(routes, unmatched, **extra)
    with pytest.raises(ConfigError) as info:
        RoutingTable.from_settings(s)
    lines = [line.strip() for line in str(info.value).splitlines()[1:]]
    assert lines == [str(p) for p in routing_problems(s)]
    return lines


def test_unknown_sink_in_to_names_index_and_known_sinks() -> None:
    assert errors([{"name": "a", "to": ["ehr", "ehrr"]}]) == [
        "routes[0].to[1]: 'ehrr' is not a sink; known sinks: archive, ehr, lab"
    ]


def test_sink_listed_twice() -> None:
    assert errors([{"name": "a", "to": ["ehr", "ehr"]}]) == ["routes[0].to[1]: 'ehr' is listed twice"]


def test_unknown_unmatched_sink() -> None:
    assert errors([{"name": "a", "to": ["ehr"]}], unmatched="archiv") == [
        "unmatched: 'archiv' is neither 'reject' nor a sink; known sinks: archive, ehr, lab"
    ]


def test_unmatched_required_with_routes() -> None:
    assert errors([{"name": "a", "to": ["ehr"]}], unmatched=None) == [
        "unmatched: required when routes are given: 'reject' or a sink name"
    ]


def test_duplicate_and_reserved_route_names() -> None:
    assert errors(
        [{"name": "a", "to": ["ehr"]}, {"name": "b", "to": ["ehr"]}, {"name": "a", "to": ["lab"]}]
    ) == ["routes[2].name: 'a' is already the name of routes[0]"]
    assert errors([{"name": "(unmatched)", "to": ["ehr"]}]) == [
        "routes[0].name: '(unmatched)' is reserved for unmatched envelopes"
    ]


def test_unknown_transform() -> None:
    assert errors([{"name": "a", "to": ["ehr"], "transform": "hl7v2_to_fihr"}]) == [
        "routes[0].transform: 'hl7v2_to_fihr' is not a transform; known transforms: hl7v2_to_fhir, hl7v2_without_z_segments"
    ]


def test_bad_match_specs() -> None:
    assert errors(
        [
            {"name": "a", "to": ["ehr"], "match": {"amount": {"gte": 5}}},
            {"name": "b", "to": ["ehr"], "match": {"amount": {"gt": "lots"}}},
            {"name": "c", "to": ["ehr"], "match": {"message_code": []}},
            {"name": "d", "to": ["ehr"], "match": {"amount": {}}},
            {"name": "e", "to": ["ehr"], "match": {"amount": float("nan")}},
            {"name": "f", "to": ["ehr"], "match": {"amount": {"lt": float("inf")}}},
            {"name": "g", "to": ["ehr"], "match": {"": "x"}},
        ]
    ) == [
        "routes[0].match.amount.gte: unknown comparison; expected one of gt, ge, lt, le, eq, ne",
        "routes[1].match.amount.gt: 'lots' is not a number; expected a number such as 1000.50",
        "routes[2].match.message_code: [] is an empty list; expected at least one alternative",
        "routes[3].match.amount: {} has no comparison; expected one or more of gt, ge, lt, le, eq, ne",
        "routes[4].match.amount: nan is not a finite number",
        "routes[5].match.amount.lt: inf is not a finite number",
        "routes[6].match: '' is not a header name",
    ]


def test_empty_order_by() -> None:
    assert errors([{"name": "a", "to": ["ehr"], "order_by": ""}]) == [
        "routes[0].order_by: '' is not a header name; expected a header such as patient_id, or leave order_by out"
    ]


def test_sink_named_reject_is_refused() -> None:
    s = Settings.model_validate(
        {
            "sinks": {"reject": {"type": "memory"}},
            "routes": [{"name": "a", "to": ["reject"]}],
            "unmatched": "reject",
        }
    )
    with pytest.raises(ConfigError, match=r"sinks\.reject: 'reject' is reserved"):
        RoutingTable.from_settings(s)


def test_every_error_is_listed_at_once() -> None:
    lines = errors(
        [
            {"name": "a", "to": ["nope"], "transform": "nope", "match": {"x": []}},
            {"name": "a", "to": ["ehr"], "order_by": ""},
        ],
        unmatched="nowhere",
    )
    assert [line.split(":")[0] for line in lines] == [
        "routes[0].match.x",
        "routes[0].to[0]",
        "routes[0].transform",
        "routes[1].name",
        "routes[1].order_by",
        "unmatched",
    ]


def test_config_without_routes_is_valid() -> None:
    assert routing_problems(Settings.model_validate({})) == []


# -- transforms --------------------------------------------------------------------------------


def _envelope(raw: bytes, protocol: str = "hl7v2") -> Envelope:
    envelope = HL7Adapter().parse(raw, Receipt(listener="test"))
    return dataclasses.replace(envelope, protocol=protocol)


def test_z_segments_removed_everything_else_byte_identical() -> None:
    raw = (FIXTURES / "hl7" / "adt_a01__z_segment.hl7").read_bytes()
    assert b"\rZPI|" in raw
    out = TRANSFORMS["hl7v2_without_z_segments"](_envelope(raw))
    assert out.content_type == "x-application/hl7-v2+er7"
    segments = raw.split(b"\r")
    assert out.body == b"\r".join(s for s in segments if not s.startswith(b"ZPI"))
    assert b"ZPI" not in out.body


@pytest.mark.parametrize("eol", [b"\r", b"\n", b"\r\n"])
def test_z_segment_removal_keeps_each_terminator(eol: bytes) -> None:
    lines = [
        b"MSH|^~\\&|A|B|C|D|20240101000000||ADT^A01|1|P|2.5.1",
        b"ZAB|site|extension",
        b"PID|1||123^^^HOSP||DOE^JOHN||ZZZ",
        b"Z01|x",
        b"PV1|1|I",
        b"ZZZ",
    ]
    raw = eol.join(lines) + eol
    out = hl7v2_without_z_segments(_envelope(raw)).body
    assert out == eol.join([lines[0], lines[2], lines[4]]) + eol


def test_z_segment_removal_with_mixed_endings_and_no_final_terminator() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5.1\r\nZPI|1\nPID|1||9\rZX1|2"
    out = hl7v2_without_z_segments(_envelope(raw)).body
    assert out == b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5.1\r\nPID|1||9\r"


def test_segments_that_only_start_with_z_are_kept() -> None:
    raw = b"MSH#^~\\&#A#B#C#D#20240101##ADT^A01#1#P#2.5.1\rZPI|not a segment here\rZPI#1\rPID#1\r"
    out = hl7v2_without_z_segments(_envelope(raw)).body
    # custom field separator '#': "ZPI|..." is not a segment name followed by the separator
    assert out == b"MSH#^~\\&#A#B#C#D#20240101##ADT^A01#1#P#2.5.1\rZPI|not a segment here\rPID#1\r"


def test_message_without_z_segments_is_unchanged() -> None:
    raw = (FIXTURES / "hl7" / "adt_a01__bom.hl7").read_bytes()
    assert hl7v2_without_z_segments(_envelope(raw)).body == raw


def test_transform_refuses_other_protocols() -> None:
    raw = (FIXTURES / "hl7" / "adt_a01__basic.hl7").read_bytes()
    with pytest.raises(TransformError):
        hl7v2_without_z_segments(_envelope(raw, protocol="fhir"))


def test_transform_names_are_snake_case() -> None:
    assert all(name.isidentifier() and name.islower() for name in transforms())


def test_the_gateways_own_replies_take_only_a_route_that_names_direction() -> None:
    t = table({"protocol": "iso20022"}, {"direction": "reply", "message_type": "pain.002"})
    assert taken(t, protocol="iso20022", message_type="pain.002") == "r0"
    assert (
        taken(t, protocol="iso20022", message_type="pain.002", direction="reply") == "r1"
    )  # not the catch-all
    assert taken(table({"protocol": "iso20022"}), protocol="iso20022", direction="reply") is None
