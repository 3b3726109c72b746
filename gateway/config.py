"""The gateway's configuration: pydantic models for the YAML file, plus environment and command-line overrides.

Precedence, lowest first: defaults, the YAML file (``--config`` or
``GATEWAY_CONFIG``), ``GATEWAY_*`` environment variables, command-line
options. Unknown keys are errors (``extra="forbid"``), and every error names
the key, the value and what was expected.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from gateway.errors import ConfigError

ValidationLevel = Literal["none", "header", "structure"]
Scope = Literal[
    "ingest:hl7v2",
    "ingest:iso20022",
    "ingest:poslog",
    "ingest:pos_json",
    "messages:read",
    "lineage:read",
    "metrics:read",
    "inventory:read",
    "inventory:write",
    "fhir:read",
    "fhir:write",
    "admin",
]
ALL_SCOPES: tuple[str, ...] = (
    "ingest:hl7v2",
    "ingest:iso20022",
    "ingest:poslog",
    "ingest:pos_json",
    "inventory:read",
    "inventory:write",
    "fhir:read",
    "fhir:write",
    "messages:read",
    "lineage:read",
    "metrics:read",
    "admin",
)
SMART_SCOPE = re.compile(r"system/([A-Z][A-Za-z]{1,63}|\*)\.(read|write|\*)")
"""A FHIR scope for one resource type (or ``*``), SMART on FHIR's system scopes."""


def _scope(value: str) -> str:
    if value in get_args(Scope) or SMART_SCOPE.fullmatch(value):
        return value
    raise ValueError(
        "not a scope; use one of " + ", ".join(get_args(Scope)) + ", or system/<Type>.read|write"
    )


MIB = 1024 * 1024


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_address(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (IPv6 as ``[::1]:PORT``) into its parts."""
    m = re.fullmatch(r"\[?([^\]]*?)\]?:(\d{1,5})", value.strip())
    if not m or not 0 <= int(m.group(2)) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return m.group(1) or "127.0.0.1", int(m.group(2))


def _check_address(value: str) -> str:
    if value in ("", "off"):
        return "off"
    parse_address(value)
    return value


class TLSConfig(_Model):
    cert: Path = Field(description="PEM certificate chain the listener presents.")
    key: Path = Field(description="PEM private key of that certificate.")
    client_ca: Path | None = Field(
        default=None, description="PEM bundle of CAs whose client certificates are required (mutual TLS)."
    )


class MLLPConfig(_Model):
    address: str = Field(default="127.0.0.1:2575", description="HOST:PORT to bind, or 'off'.")
    validation: ValidationLevel = Field(default="structure", description="none | header | structure.")
    max_frame_bytes: int = Field(
        default=10 * MIB, gt=0, description="Largest frame accepted; larger gets AR."
    )
    frame_timeout_s: float = Field(default=30.0, gt=0, description="Time allowed to finish a started frame.")
    idle_timeout_s: float = Field(default=600.0, gt=0, description="A connection idle this long is closed.")
    max_connections: int = Field(default=512, gt=0, description="Open connections allowed in all.")
    max_connections_per_client: int = Field(
        default=64, gt=0, description="Open connections per client address."
    )
    tls: TLSConfig | None = Field(default=None, description="Serve MLLP over TLS (optionally mutual).")

    _addr = field_validator("address")(_check_address)


class HTTPConfig(_Model):
    address: str = Field(default="127.0.0.1:8080", description="HOST:PORT to bind, or 'off'.")
    validation: ValidationLevel = Field(default="structure", description="none | header | structure.")
    max_body_bytes: int = Field(default=10 * MIB, gt=0, description="Largest request body; larger gets 413.")
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="Time allowed for a whole request body to arrive; slower gets 408."
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="Time allowed for a request's line and headers; slower is closed."
    )
    max_connections: int = Field(default=512, gt=0, description="Open connections allowed in all.")
    max_connections_per_client: int = Field(
        default=64, gt=0, description="Open connections per client address."
    )
    tls: TLSConfig | None = Field(default=None, description="Serve HTTPS.")

    _addr = field_validator("address")(_check_address)


class ISO20022Config(_Model):
    schema_dir: Path | None = Field(
        default=None,
        description="Folder of official ISO 20022 XSDs (*.xsd, found by target namespace); messages whose "
        "version has a schema there are validated against it. Without it only the business rules run.",
    )
    max_depth: int = Field(default=64, ge=8, le=256, description="Deepest element nesting accepted.")


class ISO8583Config(_Model):
    address: str = Field(default="off", description="HOST:PORT of the ISO 8583 TCP listener, or 'off'.")
    length_header: Literal["binary2", "ascii4"] = Field(
        default="binary2",
        description="Message length prefix: 2 bytes big-endian (binary2) or 4 ASCII digits (ascii4).",
    )
    spec: str = Field(
        default="default_ascii",
        description="Field specification: pyiso8583's default_ascii or default (binary), "
        "or the path of a JSON file holding a site's own spec in pyiso8583's format.",
    )
    max_message_bytes: int = Field(
        default=8192,
        gt=0,
        le=65535,
        description="Largest message accepted; a larger length closes the connection.",
    )
    read_timeout_s: float = Field(default=30.0, gt=0, description="Time allowed to finish a started message.")
    idle_timeout_s: float = Field(default=600.0, gt=0, description="A connection idle this long is closed.")
    max_connections: int = Field(default=512, gt=0, description="Open connections allowed in all.")
    max_connections_per_client: int = Field(
        default=64, gt=0, description="Open connections per client address."
    )
    tls: TLSConfig | None = Field(default=None, description="Serve ISO 8583 over TLS (optionally mutual).")

    _addr = field_validator("address")(_check_address)


class ShopifyConfig(_Model):
    webhook_secret: str | None = Field(
        default=None,
        description="The app's client secret that signs webhooks (X-Shopify-Hmac-Sha256), or ${ENV_VAR}; "
        "also GATEWAY_SHOPIFY_WEBHOOK_SECRET. Without one, /ingest/shopify refuses every delivery.",
    )
    shop_domains: list[str] = Field(
        default_factory=list,
        description="The shops (my-shop.myshopify.com) whose webhooks are taken; others get 401. Shopify signs "
        "the body only, not X-Shopify-Shop-Domain: name your shops. Empty: any shop signed with the secret.",
    )


class SquareConfig(_Model):
    signature_key: str | None = Field(
        default=None,
        description="The webhook subscription's signature key, or ${ENV_VAR}; also "
        "GATEWAY_SQUARE_SIGNATURE_KEY. Without one, /ingest/square refuses every delivery.",
    )
    notification_url: str | None = Field(
        default=None,
        description="The notification URL exactly as registered with Square (it is part of what is signed); "
        "also GATEWAY_SQUARE_NOTIFICATION_URL.",
    )


class POSLogConfig(_Model):
    drop_dir: Path | None = Field(
        default=None,
        description="Folder a POS drops POSLog files into; each file is taken in and moved to done/ or "
        "failed/ beside it. Off when unset.",
    )
    poll_s: float = Field(default=1.0, gt=0, le=3600, description="How often the drop folder is looked at.")
    settle_s: float = Field(
        default=1.0,
        ge=0,
        description="A file is taken only once it has not changed for this long (the POS may still be writing).",
    )
    max_depth: int = Field(default=64, ge=8, le=256, description="Deepest element nesting accepted.")


class InventoryChannel(_Model):
    sink: str = Field(description="The sink (an http sink) that pushes levels reach.")
    format: Literal["shopify", "json"] = Field(
        description="shopify: an inventory_levels/set request body for the Admin API; "
        "json: {sku, available, version, at} for a POS or a warehouse.",
    )
    location_id: str | None = Field(
        default=None, description="shopify: the Shopify location whose level is set (and compared)."
    )
    items: dict[str, str] = Field(
        default_factory=dict,
        description="SKU → the channel's own item id (Shopify inventory item id, Square catalog object id). "
        "SKUs not listed are not pushed to a shopify channel.",
    )
    reports: Literal["shopify", "square"] | None = Field(
        default=None,
        description="Whose reported levels (inventory_levels/update, inventory.count.updated) show what this "
        "channel displays, for reconciliation.",
    )
    report_location: str | None = Field(
        default=None, description="Only reports of this channel location are compared (default: location_id)."
    )


class InventoryConfig(_Model):
    enabled: bool = Field(
        default=True, description="Keep the ledger and push levels (an inventory section switches it on)."
    )
    safety_stock: int = Field(
        default=0, ge=0, description="Units held back from every SKU's available-to-sell."
    )
    safety_stock_by_sku: dict[str, int] = Field(
        default_factory=dict, description="Per-SKU safety stock, overriding the default."
    )
    locations: dict[str, str] = Field(
        default_factory=dict,
        description="Where a channel's movements land in the ledger: the location an adapter names "
        "(shopify:SHOP, square:LOCATION, store:ID) → the stock location that is counted (web orders ship "
        'from the warehouse: {"shopify:my-shop.myshopify.com": warehouse}). Unlisted ones are kept.',
    )
    min_change: int = Field(
        default=1,
        ge=1,
        description="Push a new level when it differs from the last pushed one by at least this much...",
    )
    low_stock: int = Field(
        default=5,
        ge=0,
        description="...or whenever either level is at or below this (every change counts there).",
    )
    sweep_s: float = Field(
        default=30.0,
        gt=0,
        description="How often every SKU is compared with what each channel was last sent (recovers pushes "
        "lost to a crash or a down channel).",
    )
    channels: dict[str, InventoryChannel] = Field(
        default_factory=dict, description="Where available-to-sell levels are pushed, by channel name."
    )

    def safety(self, sku: str) -> int:
        return self.safety_stock_by_sku.get(sku, self.safety_stock)


class APIKey(_Model):
    name: str = Field(min_length=1, description="Who holds the key; shown in logs and lineage.")
    key: str = Field(
        min_length=16, description="The secret, or ${ENV_VAR}; only its hash is kept after start."
    )
    scopes: list[Annotated[str, AfterValidator(_scope)]] = Field(
        description="What the key may do: the scopes below, or a FHIR scope per resource type in the SMART "
        "style, system/Patient.read, system/Observation.write, system/*.read (* for any type or both)."
    )


class AuthConfig(_Model):
    api_keys: list[APIKey] = Field(default_factory=list, description="Keys accepted on HTTP endpoints.")
    open: bool = Field(
        default=False, description="Serve every HTTP endpoint without a key. Only for closed test networks."
    )


class RetryPolicy(_Model):
    max_attempts: int = Field(default=10, ge=1, description="Attempts before a delivery is dead-lettered.")
    base_s: float = Field(
        default=1.0, gt=0, description="Backoff base: attempt n waits up to base_s * 2**(n-1)."
    )
    cap_s: float = Field(default=300.0, gt=0, description="Longest wait between two attempts.")


class CircuitPolicy(_Model):
    failure_threshold: int = Field(default=5, ge=1, description="Consecutive failures that open the circuit.")
    cooldown_s: float = Field(default=30.0, gt=0, description="Time open before one probe is let through.")


class RateLimit(_Model):
    per_s: float = Field(gt=0, description="Deliveries per second allowed to this sink.")
    burst: int = Field(default=1, ge=1, description="Deliveries allowed at once above the steady rate.")


class _SinkBase(_Model):
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    circuit: CircuitPolicy = Field(default_factory=CircuitPolicy)
    rate_limit: RateLimit | None = Field(
        default=None, description="Protects a downstream that cannot take a flood."
    )
    concurrency: int = Field(
        default=4, ge=1, le=256, description="Deliveries in flight to this sink at once."
    )


class HTTPSinkConfig(_SinkBase):
    type: Literal["http"]
    endpoint: str = Field(description="http(s) URL the message is POSTed to.")
    timeout_s: float = Field(default=10.0, gt=0, description="Time allowed for the whole request.")
    body: Literal["raw", "envelope"] = Field(
        default="raw", description="raw: the message bytes; envelope: JSON with metadata and the body."
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    bearer_token_env: str | None = Field(
        default=None, description="Name of the environment variable holding a bearer token."
    )
    verify_tls: bool = Field(default=True, description="Check the server certificate.")
    ca_file: Path | None = Field(default=None, description="PEM bundle to trust instead of the system's.")

    @field_validator("endpoint")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/:]+(:\d{1,5})?(/\S*)?", value):
            raise ValueError("expected an http:// or https:// URL")
        return value


class MLLPSinkConfig(_SinkBase):
    type: Literal["mllp"]
    endpoint: str = Field(description="mllp://HOST:PORT (or mllps:// for TLS) of the receiving system.")
    timeout_s: float = Field(default=30.0, gt=0, description="Time allowed for the ACK after sending.")
    connect_timeout_s: float = Field(default=10.0, gt=0)
    on_ae: Literal["reject", "retry"] = Field(
        default="reject", description="What an AE/CE acknowledgement means: dead-letter, or try again."
    )
    ca_file: Path | None = Field(default=None, description="PEM bundle to trust for mllps://.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not re.fullmatch(r"mllps?://[^\s/:]+:\d{1,5}", value):
            raise ValueError("expected mllp://HOST:PORT or mllps://HOST:PORT")
        return value


class FileSinkConfig(_SinkBase):
    type: Literal["file"]
    directory: Path = Field(description="Folder that receives one file per message.")
    name_pattern: str = Field(
        default="{received:%Y%m%d}/{envelope_id}.{ext}",
        description="File name: {envelope_id}, {control_id}, {message_type}, {sink}, {ext}, {received:<strftime>}.",
    )


class MemorySinkConfig(_SinkBase):
    type: Literal["memory"]


class ISO8583SinkConfig(_SinkBase):
    type: Literal["iso8583"]
    endpoint: str = Field(description="HOST:PORT of the upstream host (acquirer switch, issuer processor).")
    length_header: Literal["binary2", "ascii4"] = Field(
        default="binary2", description="The upstream's length prefix."
    )
    spec: str = Field(
        default="default_ascii",
        description="The spec responses are read with (as iso8583.spec); requests go upstream as received, "
        "so the upstream speaks the listener's spec.",
    )
    timeout_s: float = Field(
        default=15.0, gt=0, le=120, description="Time allowed for the upstream's response; then DE39 91."
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    max_message_bytes: int = Field(default=8192, gt=0, le=65535, description="Largest response accepted.")

    _addr = field_validator("endpoint")(lambda v: (parse_address(v), v)[1])


class SquareOrdersSinkConfig(_SinkBase):
    type: Literal["square_orders"]
    api_base: str = Field(
        default="https://connect.squareup.com",
        description="Square's API (https://connect.squareupsandbox.com for tests).",
    )
    access_token_env: str = Field(
        default="GATEWAY_SQUARE_ACCESS_TOKEN",
        description="Name of the environment variable holding the access token that may read orders.",
    )
    api_version: str = Field(default="2024-10-17", description="Square-Version header.")
    timeout_s: float = Field(default=10.0, gt=0, description="Time allowed for each order read.")
    skus: dict[str, str] = Field(
        default_factory=dict,
        description="Catalog object id (item variation) → SKU; lines of unlisted variations move no stock.",
    )

    @field_validator("api_base")
    @classmethod
    def _base(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/:]+(:\d{1,5})?", value.rstrip("/")):
            raise ValueError("expected an http:// or https:// URL without a path")
        return value.rstrip("/")


class FHIRSinkConfig(_SinkBase):
    type: Literal["fhir"]
    base_url: str = Field(
        description="http(s) base of the downstream FHIR R4 server (https://fhir.example.org/fhir); "
        "writes go to {base_url}/{type}/{id}, Bundles to the base itself."
    )
    timeout_s: float = Field(default=10.0, gt=0, description="Time allowed for each request.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    bearer_token_env: str | None = Field(
        default=None, description="Name of the environment variable holding a bearer token."
    )
    verify_tls: bool = Field(default=True, description="Check the server certificate.")
    ca_file: Path | None = Field(default=None, description="PEM bundle to trust instead of the system's.")

    @field_validator("base_url")
    @classmethod
    def _base(cls, value: str) -> str:
        if not re.fullmatch(r"https?://[^\s/:?#@]+(:\d{1,5})?(/[^\s?#]*)?", value):
            raise ValueError("expected an http:// or https:// URL without a query")
        return value.rstrip("/")


class FhirStoreSinkConfig(_SinkBase):
    type: Literal["fhir_store"] = Field(
        description="The gateway's own FHIR store (served at /fhir): a route with transform hl7v2_to_fhir "
        "writes its transaction Bundles here."
    )


SinkConfig = Annotated[
    HTTPSinkConfig
    | MLLPSinkConfig
    | FileSinkConfig
    | MemorySinkConfig
    | SquareOrdersSinkConfig
    | ISO8583SinkConfig
    | FHIRSinkConfig
    | FhirStoreSinkConfig,
    Field(discriminator="type"),
]
MatchValue = str | int | float | dict[str, float | int | str] | list[str]


class RouteConfig(_Model):
    name: str = Field(min_length=1, description="Unique route name; shown in lineage and docs.")
    match: dict[str, MatchValue] = Field(
        default_factory=dict,
        description="Header → exact value, glob ('ADT^A*'), list of alternatives, or comparisons {gt, ge, lt, le, eq, ne}.",
    )
    to: list[str] = Field(min_length=1, description="Sinks every matching envelope is delivered to.")
    transform: str | None = Field(default=None, description="Named transform applied before delivery.")
    order_by: str | None = Field(
        default=None, description="Header whose value keeps deliveries in order per key."
    )
    rules: list[str] = Field(
        default_factory=list,
        description="Extra rule sets an envelope must pass to take this route (for ISO 20022: sepa); "
        "one that fails is rejected with the rule's reason.",
    )
    description: str = Field(default="", description="What the route is for, for the generated docs.")
    storage: Literal["full", "metadata", "encrypted"] = Field(
        default="full",
        description="How the store keeps the bodies of this route's messages: full (as received), metadata "
        "(the body is dropped once every delivery succeeded), or encrypted (sealed under a key per data "
        "subject, named by the header in subject; erasing the subject makes them unreadable).",
    )
    subject: str | None = Field(
        default=None,
        description="encrypted: the header naming the data subject (patient_id, customer_email …); "
        "without it each message is its own subject.",
    )


class AlertConfig(_Model):
    sink: str = Field(description="Name of an http sink that receives alert notifications (a webhook).")
    pending_age_s: float = Field(
        default=600.0, gt=0, description="Alert when a sink's oldest pending delivery is older than this."
    )


class RetentionConfig(_Model):
    bodies_days: dict[str, float] = Field(
        default_factory=dict,
        description="Days a message body is kept, by protocol (hl7v2: 2190, iso8583: 365) or '*' for the rest; "
        "older bodies are removed, the message rows and their lineage stay.",
    )
    events_days: float | None = Field(
        default=None,
        gt=0,
        description="Days lineage events are kept; older ones are removed from the head of the chain after "
        "a signed checkpoint covering them is written, so verify tells pruning from tampering.",
    )
    every_s: float = Field(default=3600.0, gt=0, description="How often the running gateway prunes.")


class LineageConfig(_Model):
    checkpoint_file: Path | None = Field(
        default=None,
        description="Where signed checkpoints are appended; keep it off the database's disk "
        "(default DATA_DIR/lineage-checkpoints.jsonl).",
    )
    checkpoint_url: str | None = Field(
        default=None,
        description="An http(s) endpoint, off this host, that also receives each signed checkpoint "
        "(POST, JSON) and answers them on GET at the same URL (JSON lines or a JSON array).",
    )
    checkpoint_token_env: str | None = Field(
        default=None,
        description="Name of the environment variable holding the bearer token for checkpoint_url.",
    )
    checkpoint_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="Time allowed for one request to checkpoint_url."
    )
    checkpoint_ca_file: Path | None = Field(
        default=None, description="PEM bundle to trust for checkpoint_url instead of the system's."
    )
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 key that signs checkpoints, created on first start with its .pub "
        "(default DATA_DIR/lineage-signing.key).",
    )
    checkpoint_every_events: int = Field(default=1000, ge=1, description="Checkpoint after this many events.")
    checkpoint_every_s: float = Field(
        default=60.0, gt=0, description="Or after this long, if the chain moved."
    )
    retention: RetentionConfig | None = Field(
        default=None, description="How long bodies and lineage events are kept; without it, for ever."
    )

    @field_validator("checkpoint_url")
    @classmethod
    def _checkpoint_url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/:@]+(:\d{1,5})?(/\S*)?", value):
            raise ValueError("expected an http:// or https:// URL without credentials")
        return value


class OpenLineageConfig(_Model):
    transport: Literal["http", "file"] = Field(
        description="http: POST each run event to url + endpoint; file: append them to path, one JSON a line."
    )
    url: str | None = Field(
        default=None, description="http: base URL of the OpenLineage backend (Marquez: http://marquez:5000)."
    )
    endpoint: str = Field(default="api/v1/lineage", description="http: path under url that takes events.")
    path: Path | None = Field(default=None, description="file: the file events are appended to.")
    namespace: str | None = Field(
        default=None,
        description="Namespace of the jobs (routes) and datasets (sources, sinks); "
        "default connector-gateway://<host name>.",
    )
    window_s: float = Field(
        default=60.0, ge=1, le=86400, description="Length of a run: one run per route and window."
    )
    max_buffer: int = Field(
        default=10_000, ge=1, le=1_000_000, description="Events held for sending; beyond, they are dropped."
    )
    api_key_env: str | None = Field(
        default=None,
        description="http: name of the environment variable holding the API key (a bearer token).",
    )
    timeout_s: float = Field(default=5.0, gt=0, le=60, description="http: time allowed for one request.")
    retries: int = Field(
        default=0, ge=0, le=5, description="http: retries of a request on 5xx or a connection error."
    )
    grace_s: float = Field(
        default=5.0, ge=0, le=60, description="At shutdown, time allowed to send what is still queued."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/:]+(:\d{1,5})?(/\S*)?", value):
            raise ValueError("expected an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _target(self) -> OpenLineageConfig:
        if self.transport == "http" and not self.url:
            raise ValueError("transport http needs url")
        if self.transport == "file" and self.path is None:
            raise ValueError("transport file needs path")
        return self


class ConvertConfig(_Model):
    tables_dir: Path | None = Field(
        default=None,
        description="A folder of HL7 → FHIR mapping tables (JSON, named like ours: 0001.json ...) that "
        "replace the built-in ones of the same name, for the hl7v2_to_fhir transform and the convert API.",
    )


class Settings(_Model):
    data_dir: Path = Field(
        default=Path("gateway-data"), description="Where the embedded store keeps its files."
    )
    mllp: MLLPConfig = Field(default_factory=MLLPConfig)
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    iso20022: ISO20022Config = Field(default_factory=ISO20022Config)
    iso8583: ISO8583Config = Field(default_factory=ISO8583Config)
    shopify: ShopifyConfig = Field(default_factory=ShopifyConfig)
    square: SquareConfig = Field(default_factory=SquareConfig)
    poslog: POSLogConfig = Field(default_factory=POSLogConfig)
    convert: ConvertConfig = Field(default_factory=ConvertConfig)
    inventory: InventoryConfig | None = Field(
        default=None, description="The inventory ledger and level sync; off when absent."
    )
    auth: AuthConfig = Field(default_factory=AuthConfig)
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info")
    sinks: dict[str, SinkConfig] = Field(default_factory=dict, description="Downstream systems, by name.")
    routes: list[RouteConfig] = Field(
        default_factory=list, description="Evaluated in order; the first match wins."
    )
    unmatched: str | None = Field(
        default=None,
        description="Required with routes: 'reject', or the name of a sink for unmatched envelopes.",
    )
    alerts: AlertConfig | None = Field(default=None, description="Where alerts about deliveries go.")
    lineage: LineageConfig = Field(default_factory=LineageConfig)
    openlineage: OpenLineageConfig | None = Field(
        default=None, description="OpenLineage run events per route and time window; off when absent."
    )

    def checkpoint_file(self) -> Path:
        return self.lineage.checkpoint_file or self.data_dir / "lineage-checkpoints.jsonl"

    def signing_key(self) -> Path:
        return self.lineage.signing_key or self.data_dir / "lineage-signing.key"


_ENV = {
    "GATEWAY_DATA_DIR": ("data_dir",),
    "GATEWAY_MLLP": ("mllp", "address"),
    "GATEWAY_HTTP": ("http", "address"),
    "GATEWAY_ISO8583": ("iso8583", "address"),
    "GATEWAY_LOG_LEVEL": ("log_level",),
    "GATEWAY_VALIDATION": ("mllp", "validation"),
    "GATEWAY_SHOPIFY_WEBHOOK_SECRET": ("shopify", "webhook_secret"),
    "GATEWAY_SQUARE_SIGNATURE_KEY": ("square", "signature_key"),
    "GATEWAY_SQUARE_NOTIFICATION_URL": ("square", "notification_url"),
    "GATEWAY_POSLOG_DROP_DIR": ("poslog", "drop_dir"),
}

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


UNSET_MARK = "\x00unset:"
"""How an unset ``${VAR}`` secret reads when secrets are not required: this, then 32 random hex digits,
a value nobody can present (HTTP forbids NUL in a header) and that changes with every load."""


def _serve_secret(path: tuple[str | int, ...]) -> bool:
    """Whether the value at ``path`` is a secret that only ``serve`` uses: an API key, a webhook
    secret, a header sent to a sink."""
    match path:
        case (
            ("auth", "api_keys", int(), "key")
            | ("shopify", "webhook_secret")
            | ("square", "signature_key")
            | ("sinks", str(), "headers", str())
        ):
            return True
    return False


def _expand(
    value: Any, where: str, path: tuple[str | int, ...] = (), *, secrets_required: bool = True
) -> Any:
    """Replace ``${VAR}`` in strings with the environment's value; a missing variable is an error, except
    in a serve-only secret when ``secrets_required`` is false (it becomes an :data:`UNSET_MARK`)."""
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name = m.group(1)
            if name in os.environ:
                return os.environ[name]
            if not secrets_required and _serve_secret(path):
                return UNSET_MARK + secrets.token_hex(16)
            raise ConfigError(f"{where}: environment variable {name} is not set")

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _expand(v, f"{where}.{k}", (*path, str(k)), secrets_required=secrets_required)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            _expand(v, f"{where}[{i}]", (*path, i), secrets_required=secrets_required)
            for i, v in enumerate(value)
        ]
    return value


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def load_settings(
    config_file: str | Path | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    secrets_required: bool = True,
) -> Settings:
    """Load settings from the YAML file, the environment and ``overrides`` (command-line options).

    ``secrets_required=False`` is for the commands other than ``serve``: an unset ``${VAR}`` in a secret
    only ``serve`` uses (API keys, webhook secrets, sink headers) then reads as an unusable
    :data:`UNSET_MARK` instead of refusing the file, so an auditor need not hold the ingest keys."""
    env = os.environ if environ is None else environ
    path = config_file or env.get("GATEWAY_CONFIG")
    tree: dict[str, Any] = {}
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start + 1})") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {yaml_problem(exc, text)}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping at the top level")
        tree = _expand(loaded or {}, str(path), secrets_required=secrets_required)
    for var, key in _ENV.items():
        if env.get(var):
            _set(tree, key, env[var])
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(tree, key, value)
    try:
        return Settings.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(explain(exc, tree)) from None


_QUOTED = re.compile(r"'((?:[^'\\]|\\.)*)'|\"((?:[^\"\\]|\\.)*)\"")


def yaml_problem(exc: yaml.YAMLError, text: str) -> str:
    """Where a YAML error is and what PyYAML calls it, without any of the source text.

    PyYAML's own message quotes the offending line with a caret under it, so a secret written inline
    (``key: "abc...`` with its closing quote missing) would reach the terminal, a log or a reload answer.
    Only the line, the column and the problem are kept; in the problem, quoted text other than a
    character (``'\\t'``) or one of PyYAML's token names (``'<block end>'``) is hidden, since a tag, an
    anchor or an alias named there is source text too.
    """

    def hide(m: re.Match[str]) -> str:
        quoted = m.group(1) if m.group(1) is not None else m.group(2)
        if len(quoted) <= 2 or re.fullmatch(r"<[a-z ]+>", quoted):
            return m.group(0)
        return "(hidden)"

    if isinstance(exc, yaml.MarkedYAMLError):
        mark, problem = exc.problem_mark, exc.problem
        context = _QUOTED.sub(hide, exc.context) if exc.context else ""
        if mark is None or problem is None:  # only a context: it is the problem
            mark, problem, context = exc.context_mark, context or "not valid YAML", ""
        elif exc.context_mark is not None and context and exc.context_mark.line != mark.line:
            context += f" at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
        said = _QUOTED.sub(hide, problem) + (f" ({context})" if context else "")
        return f"line {mark.line + 1}, column {mark.column + 1}: {said}" if mark else said
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        return f"line {line}, column {column}: {exc.reason} (#x{code:04x})"
    return type(exc).__name__


def explain(exc: ValidationError, tree: Mapping[str, Any]) -> str:
    """One line per problem: the key, the value given when it is safe to show, and what was expected."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
            continue
        lines.append(f"{key}: {_shown(err)} is not valid: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


_SECRET_NAME = re.compile(r"key|secret|token|password|passwd|credential|authorization|cookie|signature", re.I)


def _shown(err: ErrorDetails) -> str:
    """The given value as an error may show it: a plain value under a harmless name. A mapping or a
    list may hold secrets (a sink's headers), and so may a value named like one, anything under
    ``headers``, or a text with ``@`` in it (a URL's user and password)."""
    if err["type"] == "missing":
        return "(missing)"
    given = err.get("input")
    names = [p for p in err["loc"] if isinstance(p, str)]
    if (names and _SECRET_NAME.search(names[-1])) or "headers" in names:
        return "(hidden)"
    if isinstance(given, Mapping):
        return "(a mapping)"
    if isinstance(given, list | tuple):
        return "(a list)"
    if isinstance(given, str) and ("://" in given or "?" in given):
        return repr(_without_credentials(given))
    if isinstance(given, str) and "@" in given:
        return "(hidden)"
    return repr(given)


def _without_credentials(url: str) -> str:
    """``url`` as an error may show it: no user or password, query or fragment (tokens go there:
    ``?api_key=…``), only the scheme, host, port and path."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # an unparseable authority or port: show none of it
        return "(hidden)"
    shown = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme or parts.netloc else parts.path
    if "@" in shown:
        return "(hidden)"
    return shown + ("?(hidden)" if parts.query else "") + ("#(hidden)" if parts.fragment else "")
