"""Stock movements and channel-reported levels: what a retail adapter reads out of a message for
the inventory ledger.

An adapter that knows stock (POSLog, POS JSON, Shopify, Square) is a
:class:`StockSource`: beside the envelope it lists the message's
:class:`Movement` values (a sale takes stock off hand, a return puts it back)
and the :class:`ReportedLevel` values a channel announces (a Shopify
``inventory_levels/update``, a Square ``inventory.count.updated``). The
functions are pure; the store applies movements exactly once by their
``key`` in the transaction that stores the message, and the inventory
service (:mod:`gateway.inventory`) turns the ledger into levels pushed to the
channels.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from gateway.envelope import Envelope

MAX_QUANTITY = 1_000_000
"""The largest quantity one line may move; adapters report a larger one as ``quantity_invalid``."""

MovementKind = Literal["sale", "return", "restock", "reserve", "release", "adjustment"]


@dataclass(frozen=True, slots=True)
class Movement:
    """One change of stock at one (location, SKU), applied to the ledger at most once.

    ``key`` names the source and the line (``shopify:shop.example:order:450789469:line:466157049:sale``):
    a redelivered webhook, a resent POSLog file or the same order seen through ``orders/create`` and
    ``orders/paid`` yields the same key, and the ledger ignores it the second time.
    """

    key: str
    location: str
    sku: str
    on_hand: int = 0
    """Change of the quantity on hand: a sale is negative, a return or restock positive."""
    reserved: int = 0
    """Change of the quantity held for orders not yet taken off hand."""
    kind: MovementKind = "sale"


@dataclass(frozen=True, slots=True)
class ReportedLevel:
    """A quantity a channel says it shows for an item at one of its locations.

    ``item`` is the channel's own id of the item (a Shopify inventory item id, a Square catalog
    object id) and ``sku`` the SKU where the message names it; the inventory configuration maps
    one to the other.
    """

    channel: str
    """The adapter that reported it: ``shopify`` or ``square``."""
    location: str
    item: str
    available: int
    sku: str = ""


@dataclass(frozen=True, slots=True)
class ItemLink:
    """A channel's own id for a SKU, learnt from a message (a Shopify ``products/update`` names each
    variant's SKU and inventory item id), so that levels can be pushed without a hand-kept map."""

    channel: str
    sku: str
    item: str


ApplyStock = Callable[[Sequence[Movement], str, str], Awaitable[None]]
"""The ledger's way in for movements learnt after intake: ``(movements, message id, actor)``."""


@runtime_checkable
class LedgerClient(Protocol):
    """A sink that learns stock movements while delivering (Square's order lines): the runtime gives
    it the ledger's way in when the configuration keeps one, else ``None``."""

    apply: ApplyStock | None


@runtime_checkable
class StockSource(Protocol):
    """An adapter whose messages move stock or report levels."""

    def movements(self, envelope: Envelope) -> list[Movement]:
        """The stock movements this message stands for; empty when it moves no stock."""
        ...

    def reported_levels(self, envelope: Envelope) -> list[ReportedLevel]:
        """The levels this message reports; empty for most messages."""
        ...

    def item_links(self, envelope: Envelope) -> list[ItemLink]:
        """The channel item ids of SKUs this message names; empty for most messages."""
        ...
