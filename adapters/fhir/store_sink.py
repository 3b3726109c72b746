"""The ``fhir_store`` sink: writes a route's FHIR transaction Bundles into the gateway's own FHIR store.

A route with ``transform: hl7v2_to_fhir`` hands this sink the Bundle converted
from an HL7 v2 message; the sink validates every resource with the R4B models
and applies the Bundle as one transaction of the store (all or nothing), with a
``ResourceWritten`` lineage event per resource version against the HL7
message's envelope. Then ``GET /fhir/Patient?identifier=...`` finds what the
message said. The Bundle's deterministic ids make a redelivery or a replay
idempotent: a resource whose content is unchanged gets no new version.

A Bundle that is not valid or that the store refuses (a conditional reference
that matches nothing) is rejected for good: sending it again will not change
it. A store that cannot write now is retried by the delivery engine.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

from adapters.fhir import bundle, interactions, resources
from adapters.fhir.outcome import FhirError
from gateway.config import FhirStoreSinkConfig
from gateway.errors import StoreUnavailable
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable
from gateway.store import Applied, Store


class FhirStoreSink:
    """Applies each delivered transaction Bundle to the gateway's FHIR store (see the module docstring)."""

    def __init__(self, name: str, config: FhirStoreSinkConfig) -> None:
        self.name = name
        self.config = config
        self.store: Store | None = None
        """Set by the runtime (:class:`gateway.sink.StoreClient`)."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def check(self) -> bool:
        return self.store is not None

    def _bundle(self, delivery: Delivery) -> dict[str, Any]:
        try:
            found = resources.load_json(delivery.body)
        except (ValueError, RecursionError):
            raise DeliveryRejected("not_fhir", f"sink {self.name}: the body is not FHIR JSON") from None
        if (
            not isinstance(found, dict)
            or found.get("resourceType") != "Bundle"
            or found.get("type") != "transaction"
        ):
            raise DeliveryRejected(
                "not_transaction", f"sink {self.name}: the body is not a FHIR transaction Bundle"
            )
        problems = resources.validate(found)
        errors = [i for i in problems if i.is_error]
        if errors:
            where = ", ".join(sorted({i.location for i in errors if i.location})[:5])
            raise DeliveryRejected(
                "invalid_resource", f"sink {self.name}: the Bundle has invalid resources ({where})"
            )
        return found

    async def send(self, delivery: Delivery) -> None:
        if self.store is None:
            raise DeliveryRetryable("no_store", f"sink {self.name}: the store is not attached yet")
        found = await asyncio.to_thread(self._bundle, delivery)  # validation off the loop
        message_id = delivery.envelope.id
        actor = f"sink:{self.name}"

        def effect(conn: sqlite3.Connection) -> Applied:
            done = bundle.transaction(conn, found, message_id)
            return Applied(done, interactions.events(done.written, message_id, actor))

        try:
            await self.store.record_effect(effect)
        except FhirError as exc:
            raise DeliveryRejected(
                f"fhir_{exc.status}", f"sink {self.name}: the store refused the Bundle ({exc.code})"
            ) from None
        except StoreUnavailable:
            raise DeliveryRetryable(
                "store_unavailable", f"sink {self.name}: the store cannot write now"
            ) from None
