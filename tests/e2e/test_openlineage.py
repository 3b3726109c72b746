"""End to end: the real gateway emits OpenLineage run events per route to a file, START and COMPLETE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_hl7_intake import field, mllp_exchange
from tests.e2e.test_routing_delivery import adt
from tests.gateway.sinks.peers import Receiver
from tests.support import Gateway, wait_until

pytestmark = pytest.mark.e2e


def test_runs_per_route_reach_the_lineage_file(tmp_path: Path) -> None:
    out = tmp_path / "openlineage.ndjson"
    with Receiver() as ehr:
        gw = Gateway(
            tmp_path,
            {
                "sinks": {"ehr": {"type": "http", "endpoint": ehr.url}},
                "routes": [{"name": "adt-to-ehr", "match": {"protocol": "hl7v2"}, "to": ["ehr"]}],
                "unmatched": "reject",
                "openlineage": {
                    "transport": "file",
                    "path": str(out),
                    "window_s": 60,
                    "namespace": "test-gw",
                },
            },
        ).start()
        try:
            for n in range(3):
                assert field(mllp_exchange(gw.mllp_port, adt(f"OL-{n}", f"P{n}")), "MSA", 1) == "AA"
            assert wait_until(lambda: len(ehr.requests) == 3)
        finally:
            assert gw.stop() == 0
    events = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    runs = [(e["eventType"], e["job"]["name"]) for e in events]
    assert ("START", "adt-to-ehr") in runs and ("COMPLETE", "adt-to-ehr") in runs
    complete = next(e for e in events if e["eventType"] == "COMPLETE")
    assert complete["job"]["namespace"] == "test-gw"
    assert [d["name"] for d in complete["inputs"]] == ["source/hl7v2:mllp"]
    assert [d["name"] for d in complete["outputs"]] == ["sink/ehr"]
    counts = json.dumps(complete["run"]["facets"])
    assert '"accepted": 3' in counts and '"delivered": 3' in counts
    assert "P0" not in out.read_text()  # patient ids never leave
