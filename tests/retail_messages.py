"""Builders of retail payloads for end-to-end tests: Shopify webhooks, Square events, POSLog, POS JSON.

Shapes follow the platforms' documented payloads; values are made up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal

from gateway.webhooks import Signature

SHOP = "north-shop.myshopify.com"
CUSTOMER_EMAIL = "dana.whitfield@example.org"
CUSTOMER_PHONE = "+1 555 010 7788"


def shopify_order(
    order_id: int,
    lines: Sequence[tuple[int, str, int]],
    *,
    price: str = "25.00",
    financial_status: str = "paid",
    refunds: Sequence[dict[str, object]] = (),
) -> bytes:
    """An ``orders/*`` webhook body: ``lines`` are (line item id, SKU, quantity)."""
    total = sum(Decimal(price) * q for _, _, q in lines)
    body = {
        "id": order_id,
        "name": f"#{order_id % 10000}",
        "email": CUSTOMER_EMAIL,
        "phone": CUSTOMER_PHONE,
        "created_at": "2026-11-27T10:00:00-05:00",
        "currency": "USD",
        "financial_status": financial_status,
        "total_price": str(total),
        "subtotal_price": str(total),
        "total_tax": "0.00",
        "customer": {"id": 7001, "email": CUSTOMER_EMAIL, "first_name": "Dana", "last_name": "Whitfield"},
        "shipping_address": {
            "address1": "12 Harbour Lane",
            "city": "Portland",
            "zip": "04101",
            "country": "US",
        },
        "line_items": [
            {
                "id": line_id,
                "sku": sku,
                "quantity": qty,
                "price": price,
                "title": f"Item {sku}",
                "variant_id": 40000 + line_id,
            }
            for line_id, sku, qty in lines
        ],
        "refunds": list(refunds),
    }
    return json.dumps(body).encode()


def shopify_refund(
    refund_id: int, order_id: int, lines: Sequence[tuple[int, int, str, int]]
) -> dict[str, object]:
    """A refund with restocked lines: (refund line item id, line item id, SKU, quantity)."""
    return {
        "id": refund_id,
        "order_id": order_id,
        "created_at": "2026-11-27T12:00:00-05:00",
        "refund_line_items": [
            {
                "id": rli,
                "line_item_id": li,
                "quantity": qty,
                "restock_type": "return",
                "line_item": {"id": li, "sku": sku, "quantity": qty, "price": "25.00"},
            }
            for rli, li, sku, qty in lines
        ],
        "transactions": [],
    }


def shopify_level(item: int, location: int, available: int) -> bytes:
    return json.dumps(
        {
            "inventory_item_id": item,
            "location_id": location,
            "available": available,
            "updated_at": "2026-11-27T12:00:00-05:00",
        }
    ).encode()


def shopify_headers(
    signature: Signature, body: bytes, topic: str, webhook_id: str, event_id: str
) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": topic,
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-API-Version": "2025-10",
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Event-Id": event_id,
        "X-Shopify-Triggered-At": "2026-11-27T15:00:00.000Z",
        "X-Shopify-Hmac-Sha256": signature.sign(body),
    }


def square_payment(event_id: str, amount: int, currency: str = "USD") -> bytes:
    return json.dumps(
        {
            "merchant_id": "MLX3K2Z9Q",
            "type": "payment.created",
            "event_id": event_id,
            "created_at": "2026-11-27T15:00:00Z",
            "data": {
                "type": "payment",
                "id": "pay-1",
                "object": {
                    "payment": {
                        "id": "pay-1",
                        "order_id": "ord-1",
                        "location_id": "L88",
                        "status": "APPROVED",
                        "amount_money": {"amount": amount, "currency": currency},
                        "total_money": {"amount": amount, "currency": currency},
                        "buyer_email_address": CUSTOMER_EMAIL,
                        "card_details": {"card": {"last_4": "1111", "bin": "411111", "card_brand": "VISA"}},
                    }
                },
            },
        }
    ).encode()


ARTS = "http://www.nrf-arts.org/IXRetail/namespace/"


def poslog_sale(
    store: str, workstation: str, sequence: int, lines: Sequence[tuple[str, int]], *, kind: str = "Sale"
) -> bytes:
    """A POSLog RetailTransaction with one ``kind`` (Sale or Return) line per (SKU, quantity), at 25.00 each."""
    items = []
    total = Decimal(0)
    for n, (sku, qty) in enumerate(lines, start=1):
        amount = Decimal("25.00") * qty
        total += amount if kind == "Sale" else -amount
        items.append(
            f'<LineItem><SequenceNumber>{n}</SequenceNumber><{kind} ItemType="Stock"><ItemID>{sku}</ItemID>'
            f"<RegularSalesUnitPrice>25.00</RegularSalesUnitPrice><ExtendedAmount>{amount}</ExtendedAmount>"
            f"<Quantity>{qty}</Quantity></{kind}></LineItem>"
        )
    n = len(lines) + 1
    items.append(
        f'<LineItem><SequenceNumber>{n}</SequenceNumber><Tender TenderType="Cash" TypeCode="Sale">'
        f"<Amount>{total}</Amount></Tender></LineItem>"
    )
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><POSLog xmlns="{ARTS}"><Transaction>'
        f"<RetailStoreID>{store}</RetailStoreID><WorkstationID>{workstation}</WorkstationID>"
        f"<SequenceNumber>{sequence}</SequenceNumber><BusinessDayDate>2026-11-27</BusinessDayDate>"
        f"<EndDateTime>2026-11-27T10:15:00</EndDateTime><OperatorID>41</OperatorID><CurrencyCode>USD</CurrencyCode>"
        f'<RetailTransaction Version="2.1">{"".join(items)}'
        f'<Total TotalType="TransactionGrandAmount">{total}</Total></RetailTransaction></Transaction></POSLog>'
    ).encode()


def square_order_event(
    event_id: str, order_id: str, state: str = "COMPLETED", location: str = "L88"
) -> bytes:
    """An ``order.updated`` event: it names the order, its state and location, but no lines."""
    return json.dumps(
        {
            "merchant_id": "MLX3K2Z9Q",
            "type": "order.updated",
            "event_id": event_id,
            "created_at": "2026-11-27T15:05:00Z",
            "data": {
                "type": "order_updated",
                "id": order_id,
                "object": {
                    "order_updated": {
                        "order_id": order_id,
                        "location_id": location,
                        "state": state,
                        "version": 3,
                        "updated_at": "2026-11-27T15:05:00Z",
                    }
                },
            },
        }
    ).encode()


def shopify_product(product_id: int, variants: Sequence[tuple[int, str, int]]) -> bytes:
    """A ``products/update`` body: ``variants`` are (variant id, SKU, inventory item id)."""
    return json.dumps(
        {
            "id": product_id,
            "title": "Enamel mug",
            "admin_graphql_api_id": f"gid://shopify/Product/{product_id}",
            "variants": [
                {"id": vid, "product_id": product_id, "sku": sku, "inventory_item_id": item, "price": "12.00"}
                for vid, sku, item in variants
            ],
        }
    ).encode()
