"""The JSON reply every retail adapter answers with (webhooks, POSLog, POS JSON).

Accepted messages get 200 once they are stored; invalid content 400 (cannot be
read) or 422 (read, but wrong); a refusal 422, or 503 when the store could not
take the message. A control id seen before with other content is a conflict:
409 for an API client, who can act on it, but 200 for a webhook platform,
which would otherwise redeliver the event for hours and then drop the
subscription (the conflict is still recorded in the store and in lineage).
The body names the outcome, the envelope id and the issues, never a payload value.
"""

from __future__ import annotations

import json

from gateway.adapter import Outcome, Reply

CONTENT_TYPE = "application/json"
MALFORMED: frozenset[str] = frozenset(
    {"malformed_json", "malformed_xml", "not_well_formed", "encoding_error"}
)
"""Issue codes meaning the bytes could not be read at all: answered 400, not 422."""


def json_reply(outcome: Outcome, *, conflict_status: int = 409) -> Reply:
    """Build the reply for ``outcome`` (see the module docstring for the statuses)."""
    codes = {i.code for i in outcome.issues if i.is_error}
    status: int
    label: str = outcome.kind
    if outcome.kind == "accepted":
        status = 200
    elif codes == {"control_id_conflict"}:
        status, label = conflict_status, "duplicate" if conflict_status < 300 else "conflict"
    elif "store_unavailable" in codes:
        status = 503
    elif outcome.kind == "refused":
        status = 422
    else:
        status = 400 if codes & MALFORMED else 422
    body = {
        "outcome": label,
        "id": outcome.envelope_id,
        "control_id": outcome.headers.get("control_id", ""),
        "message_type": outcome.headers.get("message_type", ""),
        "issues": [
            {"severity": i.severity, "code": i.code, "location": i.location, "diagnostics": i.diagnostics}
            for i in outcome.issues
        ],
    }
    return Reply(json.dumps(body).encode(), CONTENT_TYPE, status, label)
