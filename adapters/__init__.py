"""Protocol adapters, and the one place they are registered.

``BUILTIN_ADAPTERS`` maps each registry key (``Envelope.protocol``) to the
adapter's constructor; the gateway core knows adapters only through it, and
``BUILTIN_SINKS`` the sinks that speak an adapter's platform (Square's Orders
API) by configuration type; ``EXPUNGERS`` remove what an adapter's own tables
hold about a data subject when it is erased.
"""

from __future__ import annotations

from collections.abc import Callable

from adapters.fhir.adapter import FhirAdapter
from adapters.fhir.erasure import expunge_patient
from adapters.fhir.sink import FHIRSink
from adapters.fhir.store_sink import FhirStoreSink
from adapters.finance.iso8583 import ISO8583Adapter
from adapters.finance.iso8583_relay import ISO8583Relay
from adapters.finance.iso20022 import ISO20022Adapter
from adapters.hl7.adapter import HL7Adapter
from adapters.hl7.fhir_transform import hl7v2_to_fhir
from adapters.retail.pos_json import POSJSONAdapter
from adapters.retail.poslog import POSLogAdapter
from adapters.retail.shopify import ShopifyAdapter
from adapters.retail.square import SquareAdapter
from adapters.retail.square_orders import SquareOrdersSink
from gateway.adapter import Adapter
from gateway.sink import Sink
from gateway.store import Expunger
from gateway.transforms import Transform

BUILTIN_ADAPTERS: dict[str, Callable[..., Adapter]] = {
    "hl7v2": HL7Adapter,
    "iso20022": ISO20022Adapter,
    "iso8583": ISO8583Adapter,
    "shopify": ShopifyAdapter,
    "square": SquareAdapter,
    "poslog": POSLogAdapter,
    "pos_json": POSJSONAdapter,
    "fhir": FhirAdapter,
}

BUILTIN_SINKS: dict[str, Callable[..., Sink]] = {
    "square_orders": SquareOrdersSink,
    "iso8583": ISO8583Relay,
    "fhir": FHIRSink,
    "fhir_store": FhirStoreSink,
}
"""Sinks that belong to an adapter's platform (by configuration ``type``), beside the core's own."""

BUILTIN_TRANSFORMS: dict[str, Transform] = {
    "hl7v2_to_fhir": hl7v2_to_fhir,
}
"""Route transforms that need an adapter (HL7 v2 → FHIR), beside the core's own."""

EXPUNGERS: tuple[Expunger, ...] = (expunge_patient,)
"""Run by every erasure of a data subject (``gateway subjects erase``, ``POST /api/subjects/erase``), in its
transaction: the FHIR store's Patient and the resources about it."""
