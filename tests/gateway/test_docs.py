"""``gateway docs``: Mermaid, SVG and Markdown renderings of the routing table, without secrets."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from adapters import BUILTIN_ADAPTERS
from gateway import docs
from gateway.config import Settings, load_settings
from gateway.errors import ConfigError
from tests.conftest import FIXTURES

FIXTURES_CONFIG = FIXTURES / "config"

SVG_NS = "{http://www.w3.org/2000/svg}"
SECRET = "s3cr3t-Bearer-Value-0123"
API_KEY = "k3y-material-0987654321"

TREE: dict[str, Any] = {
    "sinks": {
        "ehr": {
            "type": "http",
            "endpoint": "https://ehr.example.org/hl7/v2?api_key=querysecret123",
            "headers": {"Authorization": f"Bearer {SECRET}", "X-Api-Key": API_KEY, "X-Site": "GHH"},
            "bearer_token_env": "EHR_TOKEN",
            "retry": {"max_attempts": 7, "base_s": 0.5, "cap_s": 120},
            "rate_limit": {"per_s": 20, "burst": 5},
        },
        "hook": {
            "type": "http",
            "endpoint": "https://hooks.example.org/services/T0000/B0000/AbCdEfGh1234567890XyZabc",
        },
        "lab": {"type": "mllp", "endpoint": "mllp://lab.example.org:2575"},
        "archive": {"type": "file", "directory": "/var/lib/gateway/archive"},
    },
    "routes": [
        {
            "name": "adt-to-ehr",
            "match": {"protocol": "hl7v2", "message_type": "ADT^A*", "sending_facility": "GHH"},
            "to": ["ehr", "archive"],
            "order_by": "patient_id",
            "description": 'Admissions <b>"and"</b> & transfers | moves',
        },
        {
            "name": "orders",
            "match": {"message_code": ["ORM", "OML"], "amount": {"gt": "1000.50", "le": 5000}},
            "to": ["lab"],
            "transform": "hl7v2_without_z_segments",
        },
        {"name": 'odd <name> & "quotes" #1', "match": {"message_type": "Z*|`x`"}, "to": ["lab"]},
    ],
    "unmatched": "archive",
    "alerts": {"sink": "hook"},
}


@pytest.fixture
def s() -> Settings:
    return Settings.model_validate(TREE)


def all_renderings(s: Settings) -> dict[str, str]:
    return {fmt: docs.render(s, fmt) for fmt in ("markdown", "mermaid", "svg")}


def test_no_secret_in_any_rendering(s: Settings) -> None:
    for fmt, text in all_renderings(s).items():
        for secret in (SECRET, API_KEY, "querysecret123", "AbCdEfGh1234567890XyZabc"):
            assert secret not in text, (fmt, secret)
    md = docs.markdown(s)
    assert "Authorization: (hidden)" in md
    assert "X-Api-Key: (hidden)" in md
    assert "X-Site: GHH" in md
    assert "bearer token from $EHR_TOKEN" in md
    assert "https://ehr.example.org/hl7/v2?(hidden)" in md
    assert "https://hooks.example.org/services/T0000/B0000/(hidden)" in md


def test_credentials_in_endpoint_urls_are_dropped() -> None:
    tree = {
        "sinks": {"ehr": {"type": "http", "endpoint": "https://alice@ehr.example.org:8443/fhir"}},
        "routes": [{"name": "a", "to": ["ehr"]}],
        "unmatched": "reject",
    }
    for text in all_renderings(Settings.model_validate(tree)).values():
        assert "alice" not in text
    assert "https://ehr.example.org:8443/fhir" in docs.markdown(Settings.model_validate(tree))
    assert "ehr.example.org:8443" in docs.mermaid(Settings.model_validate(tree))


def test_mermaid_has_every_route_sink_and_the_unmatched_path(s: Settings) -> None:
    text = docs.mermaid(s)
    assert text.startswith("flowchart LR\n")
    for name in ("adt-to-ehr", "orders", "ehr", "hook", "lab", "archive", "hl7v2_without_z_segments"):
        assert name in text
    assert "odd #60;name#62; #38; #34;quotes#34; #35;1" in text  # escaped for a quoted Mermaid label
    assert "hl7v2 via MLLP/HTTP" in text
    assert "ehr.example.org" in text and "lab.example.org:2575" in text
    assert "message_type = ADT^A*" in text
    assert re.search(r"unmatched_path -\.-> sink3", text)  # unmatched goes to archive (4th sink)
    # every edge joins two declared nodes
    declared = set(re.findall(r"^  (\w+)[\[\(\{>]", text, re.MULTILINE))
    for a, b in re.findall(r"^  (\w+) -\.?-?> (\w+)$", text, re.MULTILINE):
        assert a in declared and b in declared


def test_mermaid_reject_path() -> None:
    tree = {**TREE, "unmatched": "reject"}
    text = docs.mermaid(Settings.model_validate(tree))
    assert "unmatched_path -.-> rejected" in text
    assert 'rejected[/"reject' in text


def test_svg_is_well_formed_with_four_columns(s: Settings) -> None:
    text = docs.svg(s)
    root = ET.fromstring(text)
    assert root.tag == f"{SVG_NS}svg"
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG_NS}text")]
    assert texts[:4] == ["Sources", "Routes", "Transforms", "Sinks"]
    for name in ("1. adt-to-ehr", "2. orders", 'odd <name> & "quotes" #1', "ehr", "lab", "archive", "hook"):
        assert any(name in t for t in texts), name
    assert "hl7v2_without_z_segments" in texts
    groups = {g.get("class") for g in root.iter(f"{SVG_NS}g")}
    assert {"source", "route", "transform", "sink", "unmatched", "alerts"} <= groups
    paths = [p for p in root.iter(f"{SVG_NS}path") if p.get("marker-end")]
    # source→routes 3, adt→ehr and archive 2, orders→transform→lab 2, odd→lab 1,
    # source→unmatched→archive 2, alerts→hook 1; every other registered protocol reaches the two
    # routes that do not name a protocol, and the unmatched path: 3 more each
    assert len(paths) == 11 + 3 * (len(BUILTIN_ADAPTERS) - 1)
    assert not re.search(r"<script|href=|xlink", text)


def test_svg_escapes_hostile_text() -> None:
    tree = {
        **TREE,
        "routes": [
            {
                "name": "x]]><script>alert(1)</script>",
                "match": {"message_type": "a\x01b<&>"},
                "to": ["lab"],
            }
        ],
    }
    text = docs.svg(Settings.model_validate(tree))
    root = ET.fromstring(text)  # parses: everything is escaped, control characters dropped
    assert "<script>" not in text
    assert any("x]]><script>" in "".join(t.itertext()) for t in root.iter(f"{SVG_NS}text"))


def test_markdown_has_a_row_per_route_and_per_sink(s: Settings) -> None:
    md = docs.markdown(s)
    route_rows = [line for line in md.splitlines() if re.match(r"\| \d+ \| ", line)]
    assert len(route_rows) == 3
    first = route_rows[0]
    assert first.startswith("| 1 | adt-to-ehr | `protocol = hl7v2`<br>`message_type = ADT^A*`")
    assert "| ehr, archive | `patient_id` |" in first
    assert '&lt;b&gt;"and"&lt;/b&gt; & transfers \\| moves' in first  # a pipe cannot break the table
    assert "`amount > 1000.50 and amount <= 5000`" in route_rows[1]
    assert "`hl7v2_without_z_segments`" in route_rows[1]
    assert "`message_type = Z*\\|'x'`" in route_rows[2]
    for row in route_rows:
        assert len(re.findall(r"(?<!\\)\|", row)) == 8  # 7 columns
    sinks_part = md.split("## Sinks")[1].split("## Alerts")[0]
    rows = [line for line in sinks_part.splitlines() if line.startswith("| ")][1:]  # after the header
    sink_rows = {line.split(" | ")[0][2:]: line for line in rows if not line.startswith("|---")}
    assert set(sink_rows) == {"ehr", "hook", "lab", "archive"}
    assert "| 7, 0.5, 120 |" in sink_rows["ehr"]
    assert "opens after 5 failures, probe after 30 s" in sink_rows["ehr"]
    assert "20/s, burst 5" in sink_rows["ehr"]
    assert "| 10, 1, 300 |" in sink_rows["lab"]
    assert "/var/lib/gateway/archive" in sink_rows["archive"]
    assert "**Unmatched:** a message no route takes goes to sink archive." in md
    assert "## Alerts" in md


def test_markdown_unmatched_reject_and_no_routes() -> None:
    md = docs.markdown(Settings.model_validate({**TREE, "unmatched": "reject"}))
    assert "**Unmatched:** `reject`" in md
    md = docs.markdown(Settings.model_validate({"sinks": {}}))
    assert "No routes: envelopes are stored and not routed to any sink." in md
    assert "stored, not routed" in docs.mermaid(Settings.model_validate({}))
    ET.fromstring(docs.svg(Settings.model_validate({})))


def test_mllp_only_listener_is_named() -> None:
    s = load_settings(FIXTURES / "config" / "reject-unmatched.yaml", environ={})
    assert "hl7v2 via MLLP" in docs.mermaid(s) and "MLLP/HTTP" not in docs.mermaid(s)


def test_invalid_table_is_refused() -> None:
    with pytest.raises(ConfigError):
        docs.markdown(Settings.model_validate({**TREE, "unmatched": "nowhere"}))
    with pytest.raises(ValueError, match="unknown format"):
        docs.render(Settings.model_validate(TREE), "pdf")


EXAMPLE_CONFIGS = sorted(
    p for p in (FIXTURES / "config").glob("*.yaml") if not p.name.endswith(".routes-test.yaml")
)


@pytest.mark.parametrize("config", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_every_example_config_renders(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_API_KEY", "x" * 24)
    s = load_settings(config, environ={})
    ET.fromstring(docs.svg(s))
    md = docs.markdown(s)
    for route in s.routes:
        assert f"| {route.name} |" in md
        assert route.name in docs.mermaid(s)


def test_gateway_docs_and_check_commands(tmp_path: Path) -> None:
    """The CLI renders every format and runs a route-test table, failing on a wrong expectation."""
    from gateway.cli import main

    config = FIXTURES_CONFIG / "hospital.yaml"
    out = tmp_path / "routes.svg"
    assert main(["docs", str(config), "--format", "svg", "--output", str(out)]) == 0
    assert out.read_text().lstrip().startswith(("<svg", "<?xml"))
    assert main(["check", str(config), "--test", str(FIXTURES_CONFIG / "hospital.routes-test.yaml")]) == 0
    wrong = tmp_path / "wrong.routes-test.yaml"
    wrong.write_text(
        f"- fixture: {FIXTURES_CONFIG.parent / 'hl7' / 'adt_a01__basic.hl7'}\n  route: orders-to-lab\n  sinks: [lab]\n"
    )
    assert main(["check", str(config), "--test", str(wrong)]) == 1
