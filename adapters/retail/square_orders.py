"""The ``square_orders`` sink: reads a completed Square order's lines and applies them to the ledger.

Square's ``order.created`` / ``order.updated`` webhooks name the order but not
its lines, so a route sends those events here (match ``protocol: square``,
``state: COMPLETED``). For each delivery the sink reads the order from Square's
Orders API (``GET {api_base}/v2/orders/{order_id}``, the access token from the
environment variable the config names) and applies its movements
(:func:`adapters.retail.square.order_movements`) through the ledger, exactly
once by key, recorded in lineage against the webhook's message.

Being a sink, it inherits what the delivery engine gives every sink: the
outbox row survives a crash, a Square outage is retried with backoff and
opens the circuit, a 4xx (an order that does not exist, a token that may not
read it) dead-letters the delivery for an operator's replay. A delivery
before the ledger is attached (no ``inventory`` section) is rejected.
"""

from __future__ import annotations

import json
import os

import aiohttp

from adapters.retail.square import order_movements
from gateway.config import SquareOrdersSinkConfig
from gateway.errors import ConfigError
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable
from gateway.sinks._net import read_capped
from gateway.stock import ApplyStock

MAX_ORDER_BYTES = 4 * 1024 * 1024


class SquareOrdersSink:
    """Reads each delivered order event's order from Square and applies its lines to the ledger."""

    def __init__(self, name: str, config: SquareOrdersSinkConfig) -> None:
        self.name = name
        self.config = config
        self.apply: ApplyStock | None = None
        """Set by the runtime when the configuration keeps an inventory ledger."""
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        if self._session is not None:
            return
        token = os.environ.get(self.config.access_token_env, "")
        if not token:
            raise ConfigError(
                f"sinks.{self.name}.access_token_env: environment variable {self.config.access_token_env} "
                "is not set or empty"
            )
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}", "Square-Version": self.config.api_version},
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
            trust_env=False,
        )

    async def send(self, delivery: Delivery) -> None:
        if self._session is None:
            raise RuntimeError(f"sink {self.name!r} is not open")
        if self.apply is None:
            raise DeliveryRejected(
                "no_ledger", "The gateway keeps no inventory ledger (no inventory section)."
            )
        order_id = delivery.envelope.headers.get("order_id", "")
        if not order_id or "/" in order_id:
            raise DeliveryRejected("order_id_missing", "The event names no order.")
        order = await self._order(order_id)
        movements = order_movements(order, self.config.skus)
        if movements:
            await self.apply(movements, delivery.envelope.id, f"sink:{self.name}")

    async def _order(self, order_id: str) -> dict[str, object]:
        assert self._session is not None
        url = f"{self.config.api_base}/v2/orders/{order_id}"
        try:
            async with self._session.get(url) as response:
                if response.status == 429 or response.status >= 500:
                    raise DeliveryRetryable(f"http_{response.status}", f"Square answered {response.status}.")
                if response.status >= 400:
                    raise DeliveryRejected(f"http_{response.status}", f"Square answered {response.status}.")
                body = await read_capped(response, MAX_ORDER_BYTES)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise DeliveryRetryable(
                "unreachable", f"Square could not be reached ({type(exc).__name__})."
            ) from None
        if len(body) > MAX_ORDER_BYTES:
            raise DeliveryRejected("too_large", "Square's answer exceeds the size limit.")
        try:
            loaded = json.loads(body)
        except ValueError:
            raise DeliveryRetryable("bad_answer", "Square's answer is not JSON.") from None
        order = loaded.get("order") if isinstance(loaded, dict) else None
        if not isinstance(order, dict):
            raise DeliveryRejected("bad_answer", "Square's answer holds no order.")
        return order

    async def check(self) -> bool:
        return self._session is not None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
