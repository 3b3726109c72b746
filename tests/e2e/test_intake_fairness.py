"""End to end: a large or badly broken payload does not hold up other senders.

On the real gateway, one client posts a 6 MB HL7 message of a million bad
segments over HTTP (parsed and validated off the event loop, its issues
capped); while it is being worked on, another sender's ADT over MLLP is
acknowledged, before the large one is answered.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_hl7_intake import field, fixture, mllp_exchange
from tests.support import TEST_KEY, Gateway, with_control_id

pytestmark = pytest.mark.e2e


def test_a_large_bad_message_does_not_hold_up_another_sender(tmp_path: Path) -> None:
    gw = Gateway(tmp_path).start()
    try:
        big = (
            b"MSH|^~\\&|LAB|HOSP|GW|FAC|20240101120000||ORU^R01^ORU_R01|BIG-1|P|2.5.1\r"
            b"PID|1||BIGMRN^^^H^MR||DOE\rOBR|1\r" + b"QQQ|1\r" * 1_000_000
        )
        order: list[str] = []
        answer: dict[str, httpx.Response] = {}

        def post() -> None:
            answer["big"] = httpx.post(
                f"{gw.http_url}/ingest/hl7v2",
                content=big,
                headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "text/plain"},
                timeout=120,
            )
            order.append("big")

        poster = threading.Thread(target=post)
        poster.start()
        time.sleep(0.3)  # the large body is in: the gateway is reading it
        ack = mllp_exchange(gw.mllp_port, with_control_id(fixture("adt_a01__basic.hl7"), "FAIR-1"))
        order.append("small")
        poster.join(timeout=120)
        assert field(ack, "MSA", 1) == "AA"
        assert order == ["small", "big"]
        refused = answer["big"]
        assert refused.status_code == 400
        assert field(refused.content, "MSA", 1) == "AE"
        assert refused.content.count(b"\rERR|") <= 101 and b"BIGMRN" not in refused.content
    finally:
        gw.stop()
