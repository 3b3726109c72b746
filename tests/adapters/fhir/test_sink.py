"""The ``fhir`` sink against a real HTTP server on loopback: version-aware PUTs, deletes, Bundles,
status mapping, network failures, the bearer token, and its configuration.

``tests/gateway/sinks/peers.Receiver`` answers GET and POST only, so the downstream here is a small
``http.server`` peer of the same kind (scripted answers, every request recorded) that also takes PUT
and DELETE.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import TypeAdapter

from adapters import BUILTIN_SINKS
from adapters.fhir.adapter import FhirAdapter
from adapters.fhir.resources import write_xml
from adapters.fhir.sink import FHIRSink
from gateway.config import FHIRSinkConfig, SinkConfig, load_settings
from gateway.envelope import Envelope, Receipt
from gateway.errors import ConfigError
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable
from gateway.sinks import build_sink
from gateway.sinks.http import MAX_RESPONSE_BYTES
from tests.gateway.sinks.peers import Answer, Receiver, delivery, envelope
from tests.support import free_port

T = TypeVar("T")
FAMILY = "Zebediah-Quixote"
"""A value of the patient that must never appear in a reason."""
BIRTH = "1931-07-04"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


class FhirPeer(Receiver):
    """The tests' HTTP receiver as a FHIR server's base: records every request, answers from a script
    (then an empty 200)."""

    def __init__(self) -> None:
        super().__init__()
        self.default = Answer(status=200, body=b"")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def __enter__(self) -> FhirPeer:
        super().__enter__()
        return self


@pytest.fixture
def peer() -> Iterator[FhirPeer]:
    with FhirPeer() as p:
        yield p


# -- messages as the /fhir API makes them ----------------------------------------------------------


def patient(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN-98765"}],
        "name": [{"family": FAMILY, "given": ["Ada"]}],
        "birthDate": BIRTH,
        **extra,
    }


def fhir_envelope(
    resource: dict[str, Any] | bytes,
    interaction: str,
    rid: str = "",
    media: str = "application/fhir+json",
) -> Envelope:
    """The envelope the /fhir API hands to intake for a write (parsed by the real adapter)."""
    raw = resource if isinstance(resource, bytes) else json.dumps(resource).encode()
    receipt = Receipt("fhir", content_type=media, attributes={"interaction": interaction, "resource_id": rid})
    return FhirAdapter().parse(raw, receipt)


def delete_envelope(rtype: str, rid: str) -> Envelope:
    """The envelope the /fhir API hands to intake for a DELETE."""
    receipt = Receipt("fhir", attributes={"interaction": "delete", "resource_id": rid})
    return FhirAdapter().deletion(rtype, rid, receipt)


def stored(env: Envelope) -> Delivery:
    """The delivery as the engine makes it from the outbox: no parsed body, the stored bytes, and
    ``application/octet-stream`` (the engine knows no FHIR content type)."""
    again = replace(env, body=None, receipt=None)
    return delivery(again, sink="downstream", content_type="application/octet-stream", attempt=2)


def config(base: str, **kw: Any) -> FHIRSinkConfig:
    return FHIRSinkConfig.model_validate({"type": "fhir", "base_url": base, **kw})


async def send(cfg: FHIRSinkConfig, *deliveries: Delivery) -> None:
    sink = FHIRSink("downstream", cfg)
    await sink.open()
    try:
        for d in deliveries:
            await sink.send(d)
    finally:
        await sink.close()


def outcome(*codes: str, diagnostics: str = "") -> bytes:
    issues = [
        {"severity": "error", "code": c, "diagnostics": diagnostics, "expression": [f"Patient.name.{FAMILY}"]}
        for c in codes
    ]
    return json.dumps({"resourceType": "OperationOutcome", "issue": issues}).encode()


def found(version: int) -> Answer:
    body = json.dumps(patient(id="p1", meta={"versionId": str(version)})).encode()
    return Answer(200, {"ETag": f'W/"{version}"', "Content-Type": "application/fhir+json"}, body)


# -- resource writes ----------------------------------------------------------------------------------


def test_update_puts_with_if_match_from_the_etag_the_get_answered(peer: FhirPeer) -> None:
    d = delivery(
        fhir_envelope(patient(id="p1", meta={"versionId": "4", "lastUpdated": "2024-01-01T00:00:00Z",
                                             "profile": ["http://example.org/p"]}), "update", "p1"),
        sink="downstream",
        attempt=3,
    )  # fmt: skip
    peer.answer(found(7), Answer(200, body=b""))
    run(send(config(peer.base, headers={"X-Site": "north"}), d))
    get, put = peer.requests
    assert (get.method, get.path, put.method, put.path) == (
        "GET",
        "/fhir/Patient/p1",
        "PUT",
        "/fhir/Patient/p1",
    )
    assert "if-match" not in get.headers and get.body == b""
    assert put.headers["if-match"] == 'W/"7"'
    assert put.headers["content-type"].startswith("application/fhir+json")
    assert put.headers["accept"] == "application/fhir+json"
    assert put.headers["prefer"] == "return=minimal"
    assert put.headers["idempotency-key"] == d.delivery_id
    assert put.headers["x-gateway-envelope-id"] == d.envelope.id
    assert put.headers["x-gateway-attempt"] == "3"
    assert put.headers["x-site"] == "north"
    sent = json.loads(put.body)
    # the gateway's id; the gateway's version is not the downstream's, other meta is kept
    assert sent == patient(id="p1", meta={"profile": ["http://example.org/p"]})


def test_a_patch_goes_downstream_as_the_update_of_the_whole_patched_resource(peer: FhirPeer) -> None:
    patched = patient(id="p1", gender="female")
    d = delivery(fhir_envelope(patched, "patch", "p1"), sink="downstream")
    peer.answer(found(2), Answer(200, body=b""))
    run(send(config(peer.base), d))
    get, put = peer.requests
    assert (get.method, put.method, put.path) == ("GET", "PUT", "/fhir/Patient/p1")
    assert put.headers["if-match"] == 'W/"2"' and json.loads(put.body) == patched


def test_create_puts_under_the_gateway_id_without_if_match_when_absent(peer: FhirPeer) -> None:
    # a create: the client sent an id of its own, the gateway minted "gw-id-1" (resource_id)
    d = delivery(fhir_envelope(patient(id="client-id"), "create", "gw-id-1"), sink="downstream")
    peer.answer(Answer(404, body=outcome("not-found")), Answer(201, body=b""))
    run(send(config(peer.base), d))
    get, put = peer.requests
    assert get.path == put.path == "/fhir/Patient/gw-id-1"
    assert "if-match" not in put.headers
    assert json.loads(put.body) == patient(id="gw-id-1")


def test_a_deleted_resource_is_put_again_without_if_match(peer: FhirPeer) -> None:
    d = delivery(fhir_envelope(patient(id="p1"), "conditional-update"), sink="downstream")
    peer.answer(Answer(410, {"ETag": 'W/"3"'}, b""), Answer(201, body=b""))
    run(send(config(peer.base), d))
    assert [(r.method, r.path) for r in peer.requests] == [
        ("GET", "/fhir/Patient/p1"),
        ("PUT", "/fhir/Patient/p1"),
    ]
    assert "if-match" not in peer.requests[1].headers


@pytest.mark.parametrize("status", [412, 409])
def test_a_version_conflict_is_retried(peer: FhirPeer, status: int) -> None:
    d = delivery(fhir_envelope(patient(id="p1"), "update", "p1"))
    peer.answer(found(2), Answer(status, body=outcome("conflict", diagnostics=f"{FAMILY} is busy")))
    with pytest.raises(DeliveryRetryable) as caught:
        run(send(config(peer.base), d))
    assert caught.value.code == f"http_{status}"
    assert "PUT Patient" in caught.value.reason and "conflict" in caught.value.reason
    assert FAMILY not in caught.value.reason
    assert peer.requests[1].headers["if-match"] == 'W/"2"'


def test_unprocessable_is_rejected_naming_status_and_issue_codes_never_values(peer: FhirPeer) -> None:
    d = delivery(fhir_envelope(patient(id="p1"), "update", "p1"))
    echo = f"Patient.name.family {FAMILY!r} born {BIRTH} (MRN-98765) is not allowed"
    peer.answer(Answer(404), Answer(422, body=outcome("business-rule", "value", "value", diagnostics=echo)))
    with pytest.raises(DeliveryRejected) as caught:
        run(send(config(peer.base), d))
    reason = caught.value.reason
    assert caught.value.code == "http_422"
    assert "HTTP 422" in reason and "business-rule, value" in reason
    for secret in (FAMILY, BIRTH, "MRN-98765", "is not allowed", "Patient.name"):
        assert secret not in reason


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 422, 301])
def test_client_errors_and_redirects_are_rejected(peer: FhirPeer, status: int) -> None:
    peer.answer(Answer(404), Answer(status, {"Location": "http://elsewhere.example/"}, b""))
    with pytest.raises(DeliveryRejected) as caught:
        run(send(config(peer.base), delivery(fhir_envelope(patient(id="p1"), "update", "p1"))))
    assert caught.value.code == f"http_{status}"


def test_a_refused_get_is_not_followed_by_a_put(peer: FhirPeer) -> None:
    peer.answer(Answer(403, body=outcome("forbidden")))
    with pytest.raises(DeliveryRejected) as caught:
        run(send(config(peer.base), delivery(fhir_envelope(patient(id="p1"), "update", "p1"))))
    assert (caught.value.code, "GET Patient" in caught.value.reason) == ("http_403", True)
    assert [r.method for r in peer.requests] == ["GET"]


def test_unavailable_is_retried_with_the_retry_after_hint(peer: FhirPeer) -> None:
    peer.answer(Answer(404), Answer(503, {"Retry-After": "7"}, outcome("transient")))
    with pytest.raises(DeliveryRetryable) as caught:
        run(send(config(peer.base), delivery(fhir_envelope(patient(id="p1"), "update", "p1"))))
    assert (caught.value.code, caught.value.retry_after_s) == ("http_503", 7.0)
    peer.answer(Answer(429, {"Retry-After": "2"}, b""))  # the GET already: no PUT
    with pytest.raises(DeliveryRetryable) as caught:
        run(send(config(peer.base), delivery(fhir_envelope(patient(id="p1"), "update", "p1"))))
    assert (caught.value.code, caught.value.retry_after_s) == ("http_429", 2.0)
    assert [r.method for r in peer.requests] == ["GET", "PUT", "GET"]


def test_connection_refused_is_retried() -> None:
    cfg = config(f"http://127.0.0.1:{free_port()}/fhir")
    with pytest.raises(DeliveryRetryable) as caught:
        run(send(cfg, delivery(fhir_envelope(patient(id="p1"), "update", "p1"))))
    assert caught.value.code == "connect_error"
    assert "GET Patient" in caught.value.reason


def test_no_answer_in_time_is_retried(peer: FhirPeer) -> None:
    peer.answer(Answer(404), Answer(201, delay_s=5))
    with pytest.raises(DeliveryRetryable) as caught:
        run(send(config(peer.base, timeout_s=0.3), delivery(fhir_envelope(patient(id="p1"), "update", "p1"))))
    assert caught.value.code == "timeout" and "PUT Patient" in caught.value.reason


def test_an_error_answer_is_read_only_up_to_the_cap(peer: FhirPeer) -> None:
    huge = outcome("value", diagnostics="x" * (MAX_RESPONSE_BYTES + 10))
    peer.answer(Answer(404), Answer(422, body=huge))
    with pytest.raises(DeliveryRejected) as caught:
        run(send(config(peer.base), delivery(fhir_envelope(patient(id="p1"), "update", "p1"))))
    assert caught.value.code == "http_422" and "issue codes" not in caught.value.reason


# -- what is read and what is sent ------------------------------------------------------------------------


def test_xml_as_stored_goes_downstream_as_json(peer: FhirPeer) -> None:
    xml = write_xml(patient(id="x1", gender="female"))
    env = fhir_envelope(xml, "update", "x1", media="application/fhir+xml")
    assert env.raw.lstrip().startswith(b"<?xml")
    peer.answer(Answer(404), Answer(201, body=b""))
    run(send(config(peer.base), stored(env)))
    put = peer.requests[1]
    assert put.path == "/fhir/Patient/x1"
    assert put.headers["content-type"].startswith("application/fhir+json")
    assert json.loads(put.body) == patient(id="x1", gender="female")


def test_json_as_stored_is_read_again(peer: FhirPeer) -> None:
    peer.answer(Answer(404), Answer(201, body=b""))
    run(send(config(peer.base), stored(fhir_envelope(patient(), "create", "c1"))))
    assert json.loads(peer.requests[1].body) == patient(id="c1")


def test_a_message_the_sink_cannot_deliver_is_rejected_without_a_request(peer: FhirPeer) -> None:
    cases = [
        (delivery(envelope()), "not_fhir"),  # an HL7 v2 message routed here by mistake
        (delivery(fhir_envelope(patient(), "create")), "no_resource_id"),  # no id anywhere
        (delivery(fhir_envelope(patient(id="p1"), "search-type", "p1")), "unsupported_interaction"),
        (stored(replace(fhir_envelope(patient(id="p1"), "update", "p1"), raw=b"{not json")), "unreadable"),
        (delivery(delete_envelope("Patient", "../admin")), "no_resource_id"),
        (delivery(delete_envelope("NotAType", "p1")), "no_resource_type"),
    ]
    for d, code in cases:
        with pytest.raises(DeliveryRejected) as caught:
            run(send(config(peer.base), d))
        assert caught.value.code == code
    assert peer.requests == []


# -- delete and Bundle -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202, 204, 404, 410])
def test_delete_is_done_when_the_resource_is_gone(peer: FhirPeer, status: int) -> None:
    peer.answer(Answer(status, body=b""))
    run(send(config(peer.base), delivery(delete_envelope("Observation", "o-1"))))
    (req,) = peer.requests
    assert (req.method, req.path, req.body) == ("DELETE", "/fhir/Observation/o-1", b"")


@pytest.mark.parametrize(("status", "error"), [(409, DeliveryRetryable), (500, DeliveryRetryable),
                                               (403, DeliveryRejected), (405, DeliveryRejected)])  # fmt: skip
def test_delete_failures(peer: FhirPeer, status: int, error: type[Exception]) -> None:
    peer.answer(Answer(status, body=outcome("processing")))
    with pytest.raises(error, match=f"DELETE Observation answered HTTP {status}"):
        run(send(config(peer.base), delivery(delete_envelope("Observation", "o-1"))))


def transaction() -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
                "resource": patient(),
                "request": {"method": "POST", "url": "Patient"},
            }
        ],
    }


def test_a_bundle_is_posted_to_the_base(peer: FhirPeer) -> None:
    peer.answer(
        Answer(200, body=json.dumps({"resourceType": "Bundle", "type": "transaction-response"}).encode())
    )
    run(send(config(peer.base + "/"), stored(fhir_envelope(transaction(), "bundle"))))
    (req,) = peer.requests
    assert (req.method, req.path) == ("POST", "/fhir")
    assert req.headers["content-type"].startswith("application/fhir+json")
    assert json.loads(req.body) == transaction()


def test_a_refused_bundle_is_rejected_and_a_failed_one_retried(peer: FhirPeer) -> None:
    peer.answer(Answer(400, body=outcome("invalid", diagnostics=FAMILY)), Answer(502, body=b""))
    d = delivery(fhir_envelope(transaction(), "bundle"))
    with pytest.raises(DeliveryRejected) as rejected:
        run(send(config(peer.base), d))
    assert rejected.value.code == "http_400" and FAMILY not in rejected.value.reason
    with pytest.raises(DeliveryRetryable, match="POST Bundle answered HTTP 502"):
        run(send(config(peer.base), d))


# -- bearer token, health --------------------------------------------------------------------------------


def test_bearer_token_from_the_environment(peer: FhirPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FHIR_SINK_TEST_TOKEN", "s3cret-token")
    cfg = config(peer.base, bearer_token_env="FHIR_SINK_TEST_TOKEN", headers={"Authorization": "Basic x"})
    peer.answer(Answer(404), Answer(201, body=b""), Answer(204, body=b""))
    run(
        send(
            cfg,
            delivery(fhir_envelope(patient(id="p1"), "update", "p1")),
            delivery(delete_envelope("Patient", "p1")),
        )
    )
    assert [r.headers["authorization"] for r in peer.requests] == ["Bearer s3cret-token"] * 3
    monkeypatch.delenv("FHIR_SINK_TEST_TOKEN")
    with pytest.raises(ConfigError, match="FHIR_SINK_TEST_TOKEN is not set"):
        run(FHIRSink("downstream", cfg).open())


def test_check_reads_the_capability_statement(peer: FhirPeer) -> None:
    async def probe(cfg: FHIRSinkConfig) -> bool:
        sink = FHIRSink("downstream", cfg)
        assert await sink.check() is False  # not open
        await sink.open()
        try:
            return await sink.check()
        finally:
            await sink.close()

    peer.answer(Answer(200, body=b'{"resourceType": "CapabilityStatement"}'), Answer(503, body=b""))
    assert run(probe(config(peer.base))) is True
    assert run(probe(config(peer.base))) is False
    assert [(r.method, r.path) for r in peer.requests] == [("GET", "/fhir/metadata")] * 2
    assert run(probe(config(f"http://127.0.0.1:{free_port()}/fhir"))) is False


# -- configuration ----------------------------------------------------------------------------------------


def test_config_with_a_fhir_sink_loads_and_builds(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "sinks:\n"
        "  registry:\n"
        "    type: fhir\n"
        "    base_url: https://fhir.example.org/fhir/\n"
        "    bearer_token_env: REGISTRY_TOKEN\n"
        "    headers: {X-Site: north}\n"
        "routes:\n"
        "  - {name: fhir-out, match: {protocol: fhir}, to: [registry], order_by: resource_id}\n"
        "unmatched: reject\n"
    )
    s = load_settings(path, environ={})
    cfg = s.sinks["registry"]
    assert isinstance(cfg, FHIRSinkConfig)
    assert (cfg.base_url, cfg.timeout_s, cfg.verify_tls, cfg.bearer_token_env) == (
        "https://fhir.example.org/fhir",
        10.0,
        True,
        "REGISTRY_TOKEN",
    )
    assert isinstance(build_sink("registry", cfg), FHIRSink)
    assert BUILTIN_SINKS["fhir"] is FHIRSink
    assert isinstance(
        TypeAdapter(SinkConfig).validate_python({"type": "fhir", "base_url": "http://h:80"}), FHIRSinkConfig
    )


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        (
            "{type: fhir, base_url: 'ftp://fhir.example.org'}",
            "sinks.registry.fhir.base_url: 'ftp://fhir.example.org'",
        ),
        (
            "{type: fhir, base_url: 'https://h/fhir?x=1'}",
            "expected an http:// or https:// URL without a query",
        ),
        ("{type: fhir}", "sinks.registry.fhir.base_url"),
        (
            "{type: fhir, base_url: 'https://h', timeout_s: 0}",
            "sinks.registry.fhir.timeout_s: 0 is not valid",
        ),
        (
            "{type: fhir, base_url: 'https://h', endpoint: 'https://h'}",
            "sinks.registry.fhir.endpoint: unknown key",
        ),
    ],
)
def test_a_bad_fhir_sink_config_errors_clearly(tmp_path: Path, sink: str, expected: str) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(f"sinks:\n  registry: {sink}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert expected in str(caught.value)
