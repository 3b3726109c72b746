"""End to end: retail webhooks and POS files into the real gateway, the inventory ledger, levels pushed.

The gateway runs as a real process; Shopify's Admin API and the store POS are
real HTTP receivers that record every level pushed to them and when it arrived.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.webhooks import shopify_signature, square_signature
from tests.gateway.sinks.peers import Answer, Receiver, Recorded
from tests.retail_messages import (
    CUSTOMER_EMAIL,
    CUSTOMER_PHONE,
    poslog_sale,
    shopify_headers,
    shopify_level,
    shopify_order,
    shopify_product,
    shopify_refund,
    square_order_event,
    square_payment,
)
from tests.support import ADMIN_KEY, TEST_KEY, Gateway, wait_until

pytestmark = pytest.mark.e2e

SECRET = "shpss_0123456789abcdef0123456789abcdef"
SQUARE_KEY = "sq-signature-key-0123456789"
SQUARE_URL = "https://gateway.example.com/ingest/square"
KEY = "retail-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
XML = {**AUTH, "Content-Type": "application/xml"}
LOCATION = 655441491
ITEMS = {"SKU-A": "1001", "SKU-B": "1002"}
SAFETY = 2
SHOPIFY = shopify_signature(SECRET)


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[tuple[Gateway, Receiver, Receiver, Receiver]]:
    with Receiver() as erp, Receiver() as admin, Receiver() as pos:
        fast = {"max_attempts": 5, "base_s": 0.05, "cap_s": 0.2}
        gw = Gateway(
            tmp_path,
            {
                "auth": {
                    "api_keys": [
                        {
                            "name": "store",
                            "key": KEY,
                            "scopes": [
                                "ingest:poslog",
                                "ingest:pos_json",
                                "inventory:read",
                                "inventory:write",
                                "messages:read",
                                "lineage:read",
                            ],
                        }
                    ]
                },
                "shopify": {"webhook_secret": SECRET, "shop_domains": ["north-shop.myshopify.com"]},
                "square": {"signature_key": SQUARE_KEY, "notification_url": SQUARE_URL},
                "poslog": {"drop_dir": str(tmp_path / "drop"), "poll_s": 0.1, "settle_s": 0.1},
                "sinks": {
                    "erp": {"type": "http", "endpoint": erp.url, "retry": fast},
                    "shopify_admin": {"type": "http", "endpoint": admin.url, "retry": fast},
                    "pos": {"type": "http", "endpoint": pos.url, "retry": fast},
                },
                "routes": [
                    {
                        "name": "retail-to-erp",
                        "match": {"protocol": ["shopify", "square", "poslog", "pos_json"]},
                        "to": ["erp"],
                    }
                ],
                "unmatched": "reject",
                "inventory": {
                    "safety_stock": SAFETY,
                    "sweep_s": 0.5,
                    "locations": {
                        "shopify:north-shop.myshopify.com": "warehouse"
                    },  # web orders ship from there
                    "channels": {
                        "web": {
                            "sink": "shopify_admin",
                            "format": "shopify",
                            "location_id": str(LOCATION),
                            "items": ITEMS,
                            "reports": "shopify",
                        },
                        "store": {"sink": "pos", "format": "json"},
                    },
                },
            },
        ).start()
        try:
            yield gw, erp, admin, pos
        finally:
            gw.stop()


def count(gw: Gateway, sku: str, location: str, on_hand: int) -> None:
    r = httpx.put(
        f"{gw.http_url}/api/inventory/{sku}/locations/{location}", json={"on_hand": on_hand}, headers=AUTH
    )
    assert r.status_code == 200, r.text


def inventory(gw: Gateway, sku: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.http_url}/api/inventory/{sku}", params={"movements": 1000}, headers=AUTH)
    assert r.status_code == 200, r.text
    return dict(r.json())


def webhook(gw: Gateway, body: bytes, topic: str, webhook_id: str, event_id: str) -> httpx.Response:
    return httpx.post(
        f"{gw.http_url}/ingest/shopify",
        content=body,
        headers=shopify_headers(SHOPIFY, body, topic, webhook_id, event_id),
    )


def pushes(receiver: Receiver, sku: str) -> list[tuple[Recorded, int, int]]:
    """(request, level, ledger version) of every push of ``sku`` to ``receiver``, in arrival order."""
    out = []
    for req in list(receiver.requests):
        version = int(
            req.headers["idempotency-key"].rsplit(":", 3)[1]
        )  # inventory:CH:SKU:VERSION:LEVEL:SERIES
        body = json.loads(req.body)
        if body.get("sku", sku) != sku or (
            "inventory_item_id" in body and str(body["inventory_item_id"]) != ITEMS[sku]
        ):
            continue
        out.append((req, int(body["available"]), version))
    return out


def available_at(moves: list[dict[str, Any]], *, seq: int | None = None, at: str | None = None) -> int:
    """Available-to-sell from the movements up to a ledger version (seq) or a moment (ISO time)."""
    on_hand = reserved = 0
    for m in moves:
        if (seq is not None and m["seq"] <= seq) or (at is not None and m["at"] <= at):
            on_hand += m["on_hand"]
            reserved += m["reserved"]
    return max(0, on_hand - reserved - SAFETY)


def iso(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat()


def test_store_and_web_sales_never_push_more_than_is_available(
    shop: tuple[Gateway, Receiver, Receiver, Receiver],
) -> None:
    gw, erp, admin, pos = shop
    count(gw, "SKU-A", "warehouse", 9)
    count(gw, "SKU-B", "warehouse", 5)
    assert wait_until(lambda: len(pushes(admin, "SKU-A")) >= 1 and len(pushes(pos, "SKU-B")) >= 1)

    errors: list[str] = []
    orders: list[tuple[bytes, str, str]] = []

    def web() -> None:
        for n in range(6):
            sku = "SKU-A" if n % 3 else "SKU-B"
            body = shopify_order(5000 + n, [(9000 + n, sku, 1)])
            orders.append((body, f"wh-{n}", f"ev-{n}"))
            r = webhook(gw, body, "orders/create", f"wh-{n}", f"ev-{n}")
            if r.status_code != 200:
                errors.append(f"web {n}: {r.status_code} {r.text}")

    def store() -> None:
        for n in range(6):
            sku = "SKU-A" if n % 2 == 0 else "SKU-B"
            r = httpx.post(
                f"{gw.http_url}/ingest/poslog",
                content=poslog_sale("12", "3", 100 + n, [(sku, 1)]),
                headers=XML,
            )
            if r.status_code != 200:
                errors.append(f"store {n}: {r.status_code} {r.text}")

    threads = [threading.Thread(target=web), threading.Thread(target=store)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors

    # 4 web + 3 store sales of SKU-A (9 on hand), 2 web + 3 store of SKU-B (5 on hand)
    a, b = inventory(gw, "SKU-A"), inventory(gw, "SKU-B")
    assert (a["on_hand"], a["available"]) == (2, 0)
    assert (b["on_hand"], b["available"]) == (0, 0)
    for view in (a, b):
        assert view["on_hand"] == sum(m["on_hand"] for m in view["movements"])  # the ledger is its movements
        assert {x["location"] for x in view["locations"]} == {"warehouse", "store:12"}

    for receiver in (admin, pos):
        for sku, view in (("SKU-A", a), ("SKU-B", b)):
            assert wait_until(lambda r=receiver, s=sku: bool(pushes(r, s)) and pushes(r, s)[-1][1] == 0), (
                f"{sku}: the last level pushed never reached 0"
            )
            moves = sorted(view["movements"], key=lambda m: m["seq"])
            zero_from = min(m["seq"] for m in moves if available_at(moves, seq=m["seq"]) == 0)
            last_version = -1
            for req, level, version in pushes(receiver, sku):
                # the level sent is the ledger's level at the version it names, and versions only go up
                assert level == available_at(moves, seq=version), (sku, level, version)
                assert version > last_version
                last_version = version
                # when it arrived, the channel was never offered more than the ledger had, beyond the safety stock
                assert level <= available_at(moves, at=iso(req.at)) + SAFETY, (sku, level)
                if version >= zero_from:
                    assert level == 0
            channel = "web" if receiver is admin else "store"
            # what the ledger records as sent catches up once the channel has answered (the view above
            # was read before the pushes finished)
            assert wait_until(lambda s=sku, c=channel: inventory(gw, s)["channels"][c]["available"] == 0), (
                sku,
                channel,
            )

    # the Shopify admin channel gets inventory_levels/set bodies for its own item ids and location
    body = json.loads(pushes(admin, "SKU-A")[-1][0].body)
    assert body == {"location_id": LOCATION, "inventory_item_id": 1001, "available": 0}

    # redelivered webhooks, and the same orders seen again as orders/paid, change nothing
    before = (inventory(gw, "SKU-A"), inventory(gw, "SKU-B"))
    for body, wh, ev in orders:
        assert webhook(gw, body, "orders/create", wh, ev).status_code == 200
        assert webhook(gw, body, "orders/paid", f"paid-{wh}", f"paid-{ev}").status_code == 200
    after = (inventory(gw, "SKU-A"), inventory(gw, "SKU-B"))
    assert [(v["on_hand"], v["version"]) for v in after] == [(v["on_hand"], v["version"]) for v in before]

    # a stock take that finds in the warehouse what the ledger says is there changes nothing: web orders
    # were taken off the warehouse, where they ship from, not off a place nobody counts
    shelf = {x["location"]: x["on_hand"] for x in after[1]["locations"]}
    count(gw, "SKU-B", "warehouse", shelf["warehouse"])
    assert inventory(gw, "SKU-B")["on_hand"] == after[1]["on_hand"]

    # a refund with restock puts stock back, and the level pushed rises again
    refund = shopify_refund(8800, 5001, [(7700, 9001, "SKU-A", 1)])
    r = webhook(gw, json.dumps(refund).encode(), "refunds/create", "wh-refund", "ev-refund")
    assert r.status_code == 200, r.text
    assert inventory(gw, "SKU-A")["on_hand"] == 3
    assert wait_until(lambda: pushes(admin, "SKU-A")[-1][1] == 1)

    # every retail message also went its route
    assert wait_until(lambda: len(erp.requests) >= 6 + 6 + 6 + 1)


def test_signatures_refuse_and_store_nothing(shop: tuple[Gateway, Receiver, Receiver, Receiver]) -> None:
    gw, *_ = shop
    body = shopify_order(6001, [(9101, "SKU-A", 1)])
    good = shopify_headers(SHOPIFY, body, "orders/create", "wh-s1", "ev-s1")
    wrong = shopify_headers(
        shopify_signature("another-secret-entirely"), body, "orders/create", "wh-s1", "ev-s1"
    )
    missing = {k: v for k, v in good.items() if k != "X-Shopify-Hmac-Sha256"}
    url = f"{gw.http_url}/ingest/shopify"
    for content, headers in (
        (body.replace(b'"quantity": 1', b'"quantity": 9'), good),  # altered after signing
        (body, wrong),
        (body, missing),
        (body, {**good, "X-Shopify-Hmac-Sha256": "not base64!"}),
        (body, {**good, "X-Shopify-Shop-Domain": "other-shop.myshopify.com"}),  # replayed under another shop
    ):
        r = httpx.post(url, content=content, headers=headers)
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "unauthorized"
    listed = httpx.get(f"{gw.http_url}/api/messages", params={"protocol": "shopify"}, headers=AUTH).json()
    assert listed["items"] == []
    # an API key is no substitute for the signature
    assert (
        httpx.post(url, content=body, headers={**AUTH, "Content-Type": "application/json"}).status_code == 401
    )

    # the genuine delivery is taken once; the replay is acknowledged and not applied again
    first = httpx.post(url, content=body, headers=good)
    assert first.status_code == 200, first.text
    again = httpx.post(url, content=body, headers=good)
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert (
        len(
            httpx.get(f"{gw.http_url}/api/messages", params={"protocol": "shopify"}, headers=AUTH).json()[
                "items"
            ]
        )
        == 1
    )

    # Square signs the notification URL with the body
    square = square_signature(SQUARE_KEY, SQUARE_URL)
    payment = square_payment("ev-sq-1", 1999)
    sq_headers = {"Content-Type": "application/json", "x-square-hmacsha256-signature": square.sign(payment)}
    r = httpx.post(f"{gw.http_url}/ingest/square", content=payment, headers=sq_headers)
    assert r.status_code == 200, r.text
    other_url = square_signature(SQUARE_KEY, "https://elsewhere.example.com/hook").sign(payment)
    r = httpx.post(
        f"{gw.http_url}/ingest/square",
        content=payment,
        headers={**sq_headers, "x-square-hmacsha256-signature": other_url},
    )
    assert r.status_code == 401
    row = httpx.get(
        f"{gw.http_url}/api/messages/{httpx.post(f'{gw.http_url}/ingest/square', content=payment, headers=sq_headers).json()['id']}",
        headers=AUTH,
    ).json()
    assert row["headers"]["total_amount"] == "19.99"

    # lineage finds the order by a SKU it sold, and by the customer's e-mail, through their pseudonyms
    for key in ("SKU-A", CUSTOMER_EMAIL):
        found = httpx.post(f"{gw.http_url}/api/lineage/search", json={"key": key}, headers=AUTH).json()
        assert first.json()["id"] in {e["envelope_id"] for e in found["events"]}

    # the customer's contact data is nowhere but in the raw bytes
    shown = json.dumps(
        httpx.get(f"{gw.http_url}/api/messages", params={"protocol": "shopify"}, headers=AUTH).json()
    ) + json.dumps(httpx.get(f"{gw.http_url}/api/lineage/messages/{first.json()['id']}", headers=AUTH).json())
    gw.stop()
    for secret in (CUSTOMER_EMAIL, CUSTOMER_PHONE, "Whitfield", "Harbour Lane", SECRET, "411111"):
        assert secret not in shown
        assert secret not in gw.logs()


def test_drop_folder_and_reconciliation(shop: tuple[Gateway, Receiver, Receiver, Receiver]) -> None:
    gw, _, admin, _ = shop
    drop = gw.workdir / "drop"
    count(gw, "SKU-A", "warehouse", 10)
    assert wait_until(lambda: drop.is_dir())
    (drop / "day-1.xml").write_bytes(poslog_sale("12", "4", 500, [("SKU-A", 2)]))
    (drop / "broken.xml").write_bytes(b"<POSLog><Transaction>")
    assert wait_until(
        lambda: (drop / "done" / "day-1.xml").exists() and (drop / "failed" / "broken.xml").exists()
    )
    reply = json.loads((drop / "failed" / "broken.xml.reply.json").read_text())
    assert reply["outcome"] == "invalid" and reply["issues"][0]["code"] == "not_well_formed"
    assert inventory(gw, "SKU-A")["on_hand"] == 8
    assert wait_until(lambda: pushes(admin, "SKU-A")[-1][1] == 8 - SAFETY)

    # Shopify reports another level for the item (a manual edit in its admin): drift
    body = shopify_level(1001, LOCATION, 11)
    assert webhook(gw, body, "inventory_levels/update", "wh-lvl", "ev-lvl").status_code == 200
    check = gw.cli("inventory", "reconcile", "--json", *gw.store_args())
    assert check.returncode == 1, check.stderr
    assert json.loads(check.stdout) == [
        {
            "channel": "web",
            "sku": "SKU-A",
            "reported": 11,
            "available": 6,
            "drift": 5,
            "reported_at": json.loads(check.stdout)[0]["reported_at"],
        }
    ]
    # fixed from the command line while the gateway runs: its next sweep pushes the ledger's level again
    sent = len(admin.requests)
    fixed_cli = gw.cli("inventory", "reconcile", "--fix", *gw.store_args())
    assert fixed_cli.returncode == 0, fixed_cli.stderr
    assert wait_until(lambda: len(admin.requests) > sent and pushes(admin, "SKU-A")[-1][1] == 6)
    # and over the API, for the same drift reported again
    again = webhook(gw, shopify_level(1001, LOCATION, 11), "inventory_levels/update", "wh-2", "ev-2")
    assert again.status_code == 200
    sent = len(admin.requests)
    fixed = httpx.post(f"{gw.http_url}/api/inventory/reconcile", params={"fix": "true"}, headers=AUTH)
    assert fixed.status_code == 200 and len(fixed.json()["drift"]) == 1
    assert wait_until(lambda: len(admin.requests) > sent and pushes(admin, "SKU-A")[-1][1] == 6)
    shown = gw.cli("inventory", "show", "SKU-A", *gw.store_args())
    assert shown.returncode == 0 and "available 6" in shown.stdout
    events = httpx.post(
        f"{gw.http_url}/api/lineage/search", json={"event": "InventoryDriftFixed"}, headers=AUTH
    ).json()
    assert len(events["events"]) == 2


def test_without_secrets_the_webhook_endpoints_refuse_everything(tmp_path: Path) -> None:
    gw = Gateway(tmp_path).start()  # no shopify or square section: no secret
    try:
        body = shopify_order(7001, [(9201, "SKU-A", 1)])
        guessed = shopify_headers(
            shopify_signature("a-guessed-secret"), body, "orders/create", "wh-1", "ev-1"
        )
        for headers in (guessed, {**guessed, "X-Shopify-Hmac-Sha256": SHOPIFY.sign(body)}):
            assert (
                httpx.post(f"{gw.http_url}/ingest/shopify", content=body, headers=headers).status_code == 401
            )
        payment = square_payment("ev-1", 100)
        signed = square_signature(SQUARE_KEY, SQUARE_URL).sign(payment)
        r = httpx.post(
            f"{gw.http_url}/ingest/square",
            content=payment,
            headers={"Content-Type": "application/json", "x-square-hmacsha256-signature": signed},
        )
        assert r.status_code == 401
        # POS endpoints take API keys, and only with their scope
        r = httpx.post(
            f"{gw.http_url}/ingest/poslog",
            content=poslog_sale("1", "1", 1, [("SKU-A", 1)]),
            headers={"Authorization": f"Bearer {TEST_KEY}", "Content-Type": "application/xml"},
        )
        assert r.status_code == 403
        # and without an inventory section there is no ledger to ask
        assert (
            httpx.get(
                f"{gw.http_url}/api/inventory/SKU-A", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
            ).status_code
            == 404
        )
    finally:
        gw.stop()


def test_a_count_taken_while_the_gateway_was_down_is_pushed_at_start(
    shop: tuple[Gateway, Receiver, Receiver, Receiver],
) -> None:
    gw, _, admin, pos = shop
    count(gw, "SKU-B", "warehouse", 3)
    assert wait_until(lambda: bool(pushes(pos, "SKU-B")) and pushes(pos, "SKU-B")[-1][1] == 3 - SAFETY)
    gw.kill()  # no goodbye: whatever was in memory is gone
    done = gw.cli(
        "inventory", "count", "SKU-B", "--location", "warehouse", "--on-hand", "12", *gw.store_args()
    )
    assert done.returncode == 0, done.stderr
    gw.start()
    for receiver in (admin, pos):
        assert wait_until(lambda r=receiver: pushes(r, "SKU-B")[-1][1] == 12 - SAFETY)
    view = inventory(gw, "SKU-B")
    assert [m["kind"] for m in view["movements"]] == ["adjustment", "adjustment"]
    assert view["movements"][0]["source"].endswith("(cli)")


def test_square_store_sales_reach_the_ledger_through_the_orders_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SQUARE_TEST_TOKEN", "sq-access-token-for-tests")
    order = {
        "order": {
            "id": "ord-9",
            "location_id": "L88",
            "state": "COMPLETED",
            "line_items": [
                {"uid": "li-1", "catalog_object_id": "VAR-A", "quantity": "2", "name": "Mug"},
                {"uid": "li-2", "catalog_object_id": "VAR-UNMAPPED", "quantity": "1"},
            ],
        }
    }
    with Receiver() as square_api, Receiver() as pos:
        square_api.default = Answer(
            body=json.dumps(order).encode(), headers={"Content-Type": "application/json"}
        )
        base = square_api.url.removesuffix("/in")
        gw = Gateway(
            tmp_path,
            {
                "auth": {
                    "api_keys": [
                        {
                            "name": "store",
                            "key": KEY,
                            "scopes": ["inventory:read", "inventory:write", "messages:read", "lineage:read"],
                        }
                    ]
                },
                "square": {"signature_key": SQUARE_KEY, "notification_url": SQUARE_URL},
                "sinks": {
                    "square_api": {
                        "type": "square_orders",
                        "api_base": base,
                        "access_token_env": "SQUARE_TEST_TOKEN",
                        "skus": {"VAR-A": "SKU-A"},
                        "retry": {"base_s": 0.05, "cap_s": 0.2},
                    },
                    "pos": {"type": "http", "endpoint": pos.url},
                },
                "routes": [
                    {
                        "name": "square-sales",
                        "match": {"protocol": "square", "message_type": "order.*", "state": "COMPLETED"},
                        "to": ["square_api"],
                    },
                    {"name": "square-other", "match": {"protocol": "square"}, "to": ["pos"]},
                ],
                "unmatched": "reject",
                "inventory": {
                    "locations": {"square:L88": "store:12"},
                    "channels": {"store": {"sink": "pos", "format": "json"}},
                },
            },
        ).start()
        try:
            count(gw, "SKU-A", "store:12", 10)
            signer = square_signature(SQUARE_KEY, SQUARE_URL)
            told: list[str] = []
            for event_id in ("ev-o1", "ev-o2"):  # the same sale told twice (order.updated again)
                body = square_order_event(event_id, "ord-9")
                headers = {
                    "Content-Type": "application/json",
                    "x-square-hmacsha256-signature": signer.sign(body),
                }
                r = httpx.post(f"{gw.http_url}/ingest/square", content=body, headers=headers, timeout=30)
                assert r.status_code == 200, r.text
                found = httpx.get(
                    f"{gw.http_url}/api/messages", params={"control_id": event_id}, headers=AUTH, timeout=30
                ).json()["items"]
                assert [m["status"] for m in found] == ["accepted"]
                told.append(found[0]["id"])

            def delivered(message_id: str) -> bool:
                rows = httpx.get(f"{gw.http_url}/api/messages/{message_id}", headers=AUTH, timeout=30).json()
                return [(d["sink"], d["status"]) for d in rows["deliveries"]] == [("square_api", "delivered")]

            # both tellings were read from Square and applied (or found applied) before anything is
            # judged: waiting for the level alone would pass while the second one is still on its way
            assert wait_until(lambda: all(delivered(m) for m in told), 30)
            assert len([r for r in square_api.requests if r.method == "GET"]) >= 2
            read = square_api.requests[0]
            assert (read.path, read.headers["authorization"]) == (
                "/v2/orders/ord-9",
                "Bearer sq-access-token-for-tests",
            )
            view = inventory(gw, "SKU-A")
            assert view["on_hand"] == 8
            assert [x["location"] for x in view["locations"]] == [
                "store:12"
            ]  # mapped: Square's L88 is store 12
            assert wait_until(lambda: bool(pushes(pos, "SKU-A")) and pushes(pos, "SKU-A")[-1][1] == 8, 30)
            # the second telling moved nothing more: one sale, and each telling's lineage says what it did
            sales = [m for m in view["movements"] if m["kind"] == "sale"]
            assert len(sales) == 1 and sales[0]["source"] == "sink:square_api"
            moved = []
            for message_id in told:
                events = httpx.get(
                    f"{gw.http_url}/api/lineage/messages/{message_id}", headers=AUTH, timeout=30
                ).json()["events"]
                moved += [e["outcome"] for e in events if e["event"] == "StockMoved"]
            assert sorted(moved) == ["already_applied", "applied"]
        finally:
            gw.stop()
        assert "sq-access-token-for-tests" not in gw.logs()


def test_a_products_update_teaches_the_shopify_item_ids(
    shop: tuple[Gateway, Receiver, Receiver, Receiver],
) -> None:
    gw, _, admin, _ = shop
    body = shopify_product(7001, [(1, "SKU-NEW", 1003)])  # SKU-NEW is not in the configured items map
    assert webhook(gw, body, "products/update", "wh-prod", "ev-prod").status_code == 200
    count(gw, "SKU-NEW", "warehouse", 7)

    def pushed() -> list[dict[str, Any]]:
        return [json.loads(r.body) for r in admin.requests if b'"inventory_item_id": 1003' in r.body]

    assert wait_until(lambda: bool(pushed()))
    assert pushed()[-1] == {"location_id": LOCATION, "inventory_item_id": 1003, "available": 7 - SAFETY}
