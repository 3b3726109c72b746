"""``gateway check``: lint findings, route test files, and every example config's own route tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from adapters import BUILTIN_ADAPTERS
from adapters.hl7.adapter import HEADER_KEYS
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from gateway.routecheck import (
    Finding,
    RouteOutcome,
    check_report,
    covers,
    lint,
    promoted_headers,
    run_route_tests,
)
from gateway.routing import Compare, Equals, Glob, OneOf, RoutingTable, parse_match
from tests.conftest import FIXTURES

CONFIGS = FIXTURES / "config"
HL7 = FIXTURES / "hl7"
ROUTE_TEST_FILES = sorted(CONFIGS.glob("*.routes-test.yaml"))


def settings(tree: dict[str, Any]) -> Settings:
    base: dict[str, Any] = {"sinks": {"ehr": {"type": "memory"}, "lab": {"type": "memory"}}}
    return Settings.model_validate({**base, **tree})


def findings(tree: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(f.severity, f.key, f.message) for f in lint(settings(tree))]


def warnings(tree: dict[str, Any]) -> list[str]:
    return [f"{key}: {message}" for severity, key, message in findings(tree) if severity == "warning"]


def cond(value: Any) -> Any:
    conditions, problems = parse_match({"k": value}, "m")
    assert not problems
    return conditions[0][1]


# -- every example config comes with a passing route test table ----------------------------------


def test_every_example_config_has_route_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_API_KEY", "x" * 24)
    configs = {p.name for p in CONFIGS.glob("*.yaml") if not p.name.endswith(".routes-test.yaml")}
    tested = {p.name.removesuffix(".routes-test.yaml") + ".yaml" for p in ROUTE_TEST_FILES}
    assert {"hospital.yaml", "reject-unmatched.yaml"} <= tested
    assert tested <= configs
    # quickstart.yaml has no routes, so there is nothing to test there
    for name in configs - tested:
        assert not load_settings(CONFIGS / name, environ={}).routes, name


@pytest.mark.parametrize("tests_file", ROUTE_TEST_FILES, ids=lambda p: p.name)
def test_example_config_route_tests_pass(tests_file: Path) -> None:
    config = tests_file.with_name(tests_file.name.removesuffix(".routes-test.yaml") + ".yaml")
    s = load_settings(config, environ={})
    results = run_route_tests(s, tests_file)
    assert results, "an empty route test table proves nothing"
    assert [r.explanation for r in results if not r.ok] == []
    routes = {view.name for view in RoutingTable.from_settings(s).describe()}
    assert routes <= {r.expected.route for r in results}, "every route is exercised by a fixture"


@pytest.mark.parametrize("tests_file", ROUTE_TEST_FILES, ids=lambda p: p.name)
def test_example_config_lint_is_clean(tests_file: Path) -> None:
    config = tests_file.with_name(tests_file.name.removesuffix(".routes-test.yaml") + ".yaml")
    s = load_settings(config, environ={})
    assert lint(s) == []
    passed, lines = check_report(s, tests_file)
    assert passed, lines
    assert lines[-1] == "check passed"


# -- route tests ---------------------------------------------------------------------------------

HOSPITAL = {
    "sinks": {
        "ehr": {"type": "memory"},
        "lab": {"type": "memory"},
        "archive": {"type": "memory"},
    },
    "routes": [
        {"name": "adt-to-ehr", "match": {"message_type": "ADT^A*"}, "to": ["ehr"]},
        {"name": "lab-results", "match": {"message_type": "ORU^R01"}, "to": ["lab"]},
    ],
    "unmatched": "archive",
}


def write_tests(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.routes-test.yaml"
    path.write_text(text)
    return path


def hl7(name: str) -> str:
    return str(HL7 / name)


def test_wrong_expectation_is_explained(tmp_path: Path) -> None:
    tests = write_tests(
        tmp_path,
        f"- {{fixture: {hl7('adt_a01__basic.hl7')}, route: lab-results, sinks: [lab]}}\n"
        f"- {{fixture: {hl7('adt_a01__basic.hl7')}, route: adt-to-ehr, sinks: [ehr, lab]}}\n"
        f"- {{fixture: {hl7('mdm_t02__document.hl7')}, route: adt-to-ehr, sinks: [ehr]}}\n"
        f"- {{fixture: {hl7('adt_a01__basic.hl7')}, route: null, sinks: []}}\n"
        f"- {{fixture: {hl7('adt_a01__basic.hl7')}, route: adt-to-erh, sinks: [ehr]}}\n",
    )
    results = run_route_tests(settings(HOSPITAL), tests)
    assert [r.ok for r in results] == [False] * 5
    assert [r.explanation for r in results] == [
        "took route 'adt-to-ehr' (sinks ehr), expected 'lab-results' (sinks lab)",
        "took route 'adt-to-ehr' (sinks ehr), expected 'adt-to-ehr' (sinks ehr, lab)",
        "was unmatched (sink archive), expected 'adt-to-ehr' (sinks ehr)",
        "took route 'adt-to-ehr' (sinks ehr), expected unmatched (rejected)",
        "took route 'adt-to-ehr' (sinks ehr), expected 'adt-to-erh' (sinks ehr) (no route has that name)",
    ]
    assert results[0].actual == RouteOutcome("adt-to-ehr", ("ehr",))
    assert results[0].expected == RouteOutcome("lab-results", ("lab",))


def test_sinks_compare_as_a_set_and_fixtures_are_relative(tmp_path: Path) -> None:
    tree = {
        **HOSPITAL,
        "routes": [{"name": "adt", "match": {"message_code": "ADT"}, "to": ["ehr", "archive"]}],
    }
    sub = tmp_path / "config"
    sub.mkdir()
    (tmp_path / "msgs").mkdir()
    (tmp_path / "msgs" / "a.hl7").write_bytes((HL7 / "adt_a01__basic.hl7").read_bytes())
    tests = sub / "t.routes-test.yaml"
    tests.write_text("- {fixture: ../msgs/a.hl7, route: adt, sinks: [archive, ehr]}\n")
    [result] = run_route_tests(settings(tree), tests)
    assert result.ok and result.explanation == ""


def test_batch_units_must_all_take_the_route(tmp_path: Path) -> None:
    tree = {**HOSPITAL, "routes": [{"name": "a04", "match": {"message_type": "ADT^A04"}, "to": ["ehr"]}]}
    tests = write_tests(tmp_path, f"- {{fixture: {hl7('batch__multi_msh.hl7')}, route: a04, sinks: [ehr]}}\n")
    [result] = run_route_tests(settings(tree), tests)
    assert not result.ok
    assert result.explanation == "message 2 of 3: was unmatched (sink archive), expected 'a04' (sinks ehr)"


def test_unreadable_undetected_and_unparseable_fixtures(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_bytes(b"hello, not a message")
    tests = write_tests(
        tmp_path,
        "- {fixture: missing.hl7, route: null, sinks: [archive]}\n"
        "- {fixture: note.txt, route: null, sinks: [archive]}\n"
        f"- {{fixture: {hl7('invalid__truncated.hl7')}, route: null, sinks: [archive]}}\n",
    )
    results = run_route_tests(settings(HOSPITAL), tests)
    assert [r.ok for r in results] == [False, False, False]
    assert results[0].explanation.startswith("cannot read the fixture")
    assert results[1].explanation == "no registered adapter recognises it"
    assert results[2].explanation.startswith("the hl7v2 adapter cannot parse it (")
    assert all(r.actual is None for r in results)


def test_explanations_never_carry_message_content(tmp_path: Path) -> None:
    raw = (HL7 / "adt_a01__basic.hl7").read_bytes()
    tests = write_tests(
        tmp_path, f"- {{fixture: {hl7('adt_a01__basic.hl7')}, route: lab-results, sinks: [lab]}}\n"
    )
    _, lines = check_report(settings(HOSPITAL), tests)
    text = "\n".join(lines)
    pid = next(seg for seg in raw.split(b"\r") if seg.startswith(b"PID")).decode()
    for value in pid.split("|")[3:6]:
        for part in value.split("^"):
            if len(part) > 2:
                assert part not in text


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("fixture: x.hl7\n", "expected a list"),
        ("- {fixture: x.hl7, sinks: []}\n", "[0].route: (missing)"),
        ("- {fixture: x.hl7, route: a, sinks: [], extra: 1}\n", "[0].extra: unknown key"),
        ("- {fixture: x.hl7, route: a, sinks: ehr}\n", "[0].sinks: 'ehr' is not valid"),
        ("- [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_tests_file(tmp_path: Path, text: str, fragment: str) -> None:
    tests = write_tests(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        run_route_tests(settings(HOSPITAL), tests)
    assert fragment in str(info.value)
    passed, lines = check_report(settings(HOSPITAL), tests)
    assert not passed and lines[-1] == "check failed"


def test_check_report_pass_fail_and_warnings(tmp_path: Path) -> None:
    good = write_tests(
        tmp_path, f"- {{fixture: {hl7('oru_r01__cbc_20_obx.hl7')}, route: lab-results, sinks: [lab]}}\n"
    )
    passed, lines = check_report(settings(HOSPITAL), good)
    assert passed
    assert "ok: " in lines[1] and "route 'lab-results' (sinks lab)" in lines[1]
    assert lines[-2:] == ["0 errors, 0 warnings; route tests: 1 passed, 0 failed", "check passed"]

    # a warning alone passes
    tree = {**HOSPITAL, "sinks": {**HOSPITAL["sinks"], "unused": {"type": "memory"}}}
    passed, lines = check_report(settings(tree), None)
    assert (
        passed
        and "warning: sinks.unused: not used by any route, by unmatched, by alerts or by inventory" in lines
    )

    # a failed route test fails
    bad = write_tests(
        tmp_path, f"- {{fixture: {hl7('oru_r01__cbc_20_obx.hl7')}, route: adt-to-ehr, sinks: [ehr]}}\n"
    )
    passed, lines = check_report(settings(HOSPITAL), bad)
    assert not passed
    assert any(line.startswith("FAILED: ") and "took route 'lab-results'" in line for line in lines)

    # an error fails, and route tests are not run
    broken = {**HOSPITAL, "unmatched": "nowhere"}
    passed, lines = check_report(settings(broken), good)
    assert not passed
    assert any(line.startswith("error: unmatched: 'nowhere'") for line in lines)
    assert "route tests: not run, the routing table has errors" in lines[-2]


# -- lint ----------------------------------------------------------------------------------------


def routes(*matches: dict[str, Any]) -> dict[str, Any]:
    return {
        "routes": [{"name": f"r{i}", "match": m, "to": ["ehr", "lab"]} for i, m in enumerate(matches)],
        "unmatched": "reject",
    }


def shadowed(*matches: dict[str, Any]) -> list[str]:
    return [w.split(":")[0] for w in warnings(routes(*matches)) if "never matches: routes[" in w]


def test_shadowed_routes() -> None:
    assert warnings(routes({"message_code": "ADT"}, {"message_code": "ADT", "trigger_event": "A01"})) == [
        "routes[1]: route 'r1' never matches: routes[0] ('r0') takes every message it would"
    ]
    assert shadowed({}, {"message_code": "ADT"}) == ["routes[1]"]
    assert shadowed({"message_type": "*"}, {"message_type": "ADT^A01"}) == ["routes[1]"]
    assert shadowed({"message_type": "ADT^*"}, {"message_type": "ADT^A0?"}) == ["routes[1]"]
    assert shadowed({"message_type": "ADT^A*"}, {"message_type": ["ADT^A01", "ADT^A04"]}) == ["routes[1]"]
    assert shadowed({"message_code": ["ADT", "ORU"]}, {"message_code": "ORU"}) == ["routes[1]"]
    assert shadowed({"message_code": ["ADT", "OR?"]}, {"message_code": ["ORU", "ADT"]}) == ["routes[1]"]
    assert shadowed({"message_code": "ORM"}, {"message_code": "ADT"}, {"message_code": "ORM"}) == [
        "routes[2]"
    ]


def test_not_shadowed() -> None:
    assert shadowed({"message_code": "ADT", "trigger_event": "A01"}, {"message_code": "ADT"}) == []
    assert shadowed({"message_type": "ADT^A01"}, {"message_type": "ADT^A*"}) == []
    assert shadowed({"message_type": "ADT^A?"}, {"message_type": "ADT^A*"}) == []
    assert shadowed({"message_code": ["ADT"]}, {"message_code": ["ADT", "ORU"]}) == []
    assert shadowed({"sending_facility": "A"}, {"receiving_facility": "A"}) == []
    assert shadowed({"message_type": "ADT^A*"}, {}) == []


def test_covers_decidable_cases() -> None:
    assert covers(cond("*"), cond({"gt": 5}))
    assert covers(cond({"gt": 5}), cond({"gt": 6}))
    assert covers(cond({"ge": 5}), cond({"gt": 5}))
    assert not covers(cond({"gt": 5}), cond({"ge": 5}))
    assert covers(cond({"gt": 0, "le": 100}), cond({"ge": 10, "lt": 50}))
    assert not covers(cond({"gt": 0, "le": 100}), cond({"ge": 10}))
    assert covers(cond({"ne": 0}), cond({"gt": 0}))
    assert not covers(cond({"ne": 5}), cond({"gt": 0}))
    assert covers(cond({"ne": 5}), cond({"gt": 0, "ne": 5}))
    assert covers(cond({"gt": 100}), cond("1000.50"))
    assert not covers(cond({"gt": 100}), cond("abc"))
    assert covers(cond(5), cond({"eq": "5.0"}))
    assert not covers(cond("5"), cond({"eq": 5}))  # text "5" does not cover "5.0"
    assert not covers(cond({"gt": 5}), cond({"gt": 10, "lt": 3}))  # the later matches nothing
    assert isinstance(cond("A*"), Glob) and isinstance(cond("A"), Equals)
    assert isinstance(cond(["A"]), OneOf) and isinstance(cond(3), Compare)


def test_unused_sink_warns_unless_unmatched_or_alerts_use_it() -> None:
    tree = {
        "sinks": {
            "ehr": {"type": "memory"},
            "spare": {"type": "memory"},
            "hook": {"type": "http", "endpoint": "http://127.0.0.1:9000/alerts"},
        },
        "routes": [{"name": "all", "to": ["ehr"]}],
        "unmatched": "reject",
    }
    assert warnings(tree) == [
        "sinks.spare: not used by any route, by unmatched, by alerts or by inventory",
        "sinks.hook: not used by any route, by unmatched, by alerts or by inventory",
    ]
    assert warnings({**tree, "unmatched": "spare", "alerts": {"sink": "hook"}}) == []


def test_alerts_sink_must_exist_and_be_http() -> None:
    base = {**routes({}), "alerts": {"sink": "nowhere"}}
    assert ("error", "alerts.sink", "'nowhere' is not a sink; known sinks: ehr, lab") in findings(base)
    base = {**routes({}), "alerts": {"sink": "lab"}}
    assert ("error", "alerts.sink", "'lab' is a memory sink; expected an http sink (a webhook)") in findings(
        base
    )


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        ({"type": "mllp", "endpoint": "mllp://lab.example.org:99999"}, ("error", "out of range")),
        ({"type": "mllp", "endpoint": "mllp://lab.example.org:0"}, ("error", "port 0 is out of range")),
        ({"type": "http", "endpoint": "https://ehr.example.org:70000/x"}, ("error", "out of range")),
        ({"type": "http", "endpoint": "https://-bad-.example.org/x"}, ("error", "not a valid host name")),
        ({"type": "http", "endpoint": "https://user@ehr.example.org/x"}, ("warning", "carries credentials")),
    ],
)
def test_bad_endpoints(sink: dict[str, Any], expected: tuple[str, str]) -> None:
    tree = {"sinks": {"ehr": sink}, "routes": [{"name": "a", "to": ["ehr"]}], "unmatched": "reject"}
    [(severity, key, message)] = findings(tree)
    assert (severity, key) == (expected[0], "sinks.ehr.endpoint")
    assert expected[1] in message


def test_good_endpoints_are_quiet() -> None:
    for endpoint in ("https://ehr.example.org/hl7", "http://127.0.0.1:8080/x", "http://localhost:1/"):
        tree = {
            "sinks": {"ehr": {"type": "http", "endpoint": endpoint}},
            "routes": [{"name": "a", "to": ["ehr"]}],
            "unmatched": "reject",
        }
        assert findings(tree) == [], endpoint


def test_order_by_and_match_keys_must_be_promoted_headers() -> None:
    tree = {
        "routes": [
            {
                "name": "a",
                "match": {"protocol": "hl7v2", "sending_facilty": "GHH"},
                "to": ["ehr"],
                "order_by": "patient",
            },
            {"name": "b", "match": {"protocol": "hl7v2"}, "to": ["lab"], "order_by": "patient_id"},
        ],
        "unmatched": "reject",
    }
    got = warnings(tree)
    assert len(got) == 2
    assert got[0].startswith(
        "routes[0].match.sending_facilty: no hl7v2 adapter promotes a header 'sending_facilty'"
    )
    assert got[1].startswith(
        "routes[0].order_by: no hl7v2 adapter promotes a header 'patient', so deliveries"
    )
    assert "patient_id" in got[1]


def test_protocol_that_no_adapter_handles() -> None:
    assert warnings(routes({"protocol": "dicom"})) == [
        "routes[0].match.protocol: matches no registered protocol; known protocols: "
        + ", ".join(sorted(BUILTIN_ADAPTERS))
    ]


def test_unmatched_without_routes_has_no_effect() -> None:
    assert warnings({"unmatched": "reject", "sinks": {}}) == [
        "unmatched: 'reject' has no effect without routes: envelopes are stored without routing"
    ]


def test_lint_includes_compile_errors_first() -> None:
    got = lint(settings({"routes": [{"name": "a", "to": ["nope"]}], "unmatched": "reject"}))
    assert got[0] == Finding("error", "routes[0].to[0]", "'nope' is not a sink; known sinks: ehr, lab")
    assert str(got[0]) == "error: routes[0].to[0]: 'nope' is not a sink; known sinks: ehr, lab"


def test_promoted_headers_come_from_the_adapter_registry() -> None:
    keys = promoted_headers()["hl7v2"]
    assert keys is not None and set(HEADER_KEYS) | {"protocol"} == keys


def test_inventory_channels_need_an_http_sink_and_shopify_a_location() -> None:
    tree: dict[str, Any] = {
        "sinks": {"ehr": {"type": "memory"}, "files": {"type": "file", "directory": "/tmp/x"}},
        "inventory": {
            "channels": {
                "web": {"sink": "nowhere", "format": "json"},
                "pos": {"sink": "files", "format": "json"},
                "shop": {"sink": "ehr", "format": "shopify"},
            }
        },
    }
    errors = [(k, m) for s, k, m in findings(tree) if s == "error"]
    assert ("inventory.channels.web.sink", "'nowhere' is not a sink; known sinks: ehr, files") in errors
    assert (
        "inventory.channels.pos.sink",
        "'files' is not an http sink; levels are pushed over HTTP",
    ) in errors
    assert ("inventory.channels.shop.location_id", "required for the shopify format") in errors
    # a sink that only an inventory channel uses is used
    assert not [w for w in warnings(tree) if w.startswith("sinks.ehr")]


def test_an_iso8583_sink_relays_only_card_messages_in_the_listeners_spec() -> None:
    relay = {"type": "iso8583", "endpoint": "127.0.0.1:7000"}
    tree: dict[str, Any] = {
        "sinks": {"ehr": {"type": "memory"}, "issuer": relay, "other": {**relay, "spec": "default"}},
        "routes": [
            {"name": "cards", "match": {"protocol": "iso8583"}, "to": ["issuer"]},
            {"name": "anything", "match": {"message_type": "0100"}, "to": ["issuer"]},
            {"name": "two", "match": {"protocol": "iso8583"}, "to": ["issuer", "other"]},
        ],
        "unmatched": "issuer",
    }
    errors = {(k, m) for s, k, m in findings(tree) if s == "error"}
    assert ("unmatched", "'issuer' relays in line; it cannot take unmatched messages") in errors
    assert ("routes[1].match", "a route to an iso8583 sink must match protocol: iso8583 only") in errors
    assert ("routes[2].to", "at most one iso8583 sink per route: a request has one answer") in errors
    assert (
        "sinks.other.spec",
        "'default' differs from the listener's 'default_ascii'; requests go upstream as received",
    ) in errors
    assert not [k for k, _ in errors if k == "routes[0].match"]


def test_fhir_sinks_need_what_they_take() -> None:
    """fhir_store takes converted Bundles only; converted routes want order_by; storage does not reach the
    FHIR store."""
    store, ehr = {"type": "fhir_store"}, {"type": "fhir", "base_url": "https://ehr.example"}
    base: dict[str, Any] = {"sinks": {"store": store, "ehr": ehr}, "unmatched": "reject"}
    plain = {"name": "r", "match": {"protocol": "hl7v2"}, "to": ["store", "ehr"]}
    raw = findings({**base, "routes": [plain]})
    assert any(f[:2] == ("error", "routes[0].transform") and "hl7v2_to_fhir" in f[2] for f in raw)
    assert any(f[0] == "warning" and "fhir sink" in f[2] for f in raw)
    converted = {**plain, "transform": "hl7v2_to_fhir", "to": ["store"]}
    unordered = findings({**base, "routes": [{**converted, "storage": "encrypted", "subject": "patient_id"}]})
    keys = {(f[0], f[1]) for f in unordered}
    assert ("warning", "routes[0].order_by") in keys and ("warning", "routes[0].storage") in keys
    assert not any(f[0] == "error" for f in unordered)
    ordered = findings({**base, "routes": [{**converted, "order_by": "patient_id", "to": ["store", "ehr"]}]})
    assert not [f for f in ordered if f[1].startswith("routes[0]")]
