"""The memory sink, for tests only: it keeps every delivery in a list and fails on request.

What lives here: :class:`MemorySink`. Nothing leaves the process, so it is
never the right sink for real traffic; tests use it to watch what the
delivery engine sends, and to make attempts fail or hang on purpose:

* ``fail_next(n, retryable=True, code=...)`` — the next ``n`` sends raise
  ``DeliveryRetryable`` (or ``DeliveryRejected``) and record nothing;
* ``delay_s`` — every send first waits this long (a slow downstream);
* ``healthy`` — what ``check`` answers.
"""

from __future__ import annotations

import asyncio

from gateway.config import MemorySinkConfig
from gateway.sink import Delivery, DeliveryRejected, DeliveryRetryable

__all__ = ["MemorySink"]


class MemorySink:
    """Records deliveries in ``deliveries``; for tests only (see the module docstring)."""

    def __init__(self, name: str, config: MemorySinkConfig | None = None) -> None:
        self.name = name
        self.config = config
        self.deliveries: list[Delivery] = []
        self.attempts = 0
        """Every call of ``send``, failed ones included."""
        self.delay_s = 0.0
        self.healthy = True
        self.opened = False
        self.closed = False
        self._failures = 0
        self._fail_retryable = True
        self._fail_code = "test_failure"

    def fail_next(self, n: int, retryable: bool = True, code: str | None = None) -> None:
        """Make the next ``n`` sends fail, retryably or for good, with ``code``."""
        self._failures = n
        self._fail_retryable = retryable
        self._fail_code = code or ("test_retryable" if retryable else "test_rejected")

    async def open(self) -> None:
        self.opened = True
        self.closed = False

    async def send(self, delivery: Delivery) -> None:
        """Record ``delivery`` after ``delay_s``, unless a failure was asked for."""
        self.attempts += 1
        if self.delay_s > 0:
            await asyncio.sleep(self.delay_s)
        if self._failures > 0:
            self._failures -= 1
            reason = f"sink {self.name!r}: failure asked for by the test"
            if self._fail_retryable:
                raise DeliveryRetryable(self._fail_code, reason)
            raise DeliveryRejected(self._fail_code, reason)
        self.deliveries.append(delivery)

    async def check(self) -> bool:
        return self.healthy

    async def close(self) -> None:
        self.closed = True

    @property
    def bodies(self) -> list[bytes]:
        """The delivered bodies, in order."""
        return [d.body for d in self.deliveries]
