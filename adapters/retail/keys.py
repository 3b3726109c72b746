"""Business keys of retail messages: the customer's contact data, masked, and the SKUs sold.

Customer e-mail addresses and phone numbers are business keys (lineage finds an
order by them through their keyed pseudonyms); the masking functions give the
form a message row and an operator may see. SKUs are keys too, so that lineage
answers "every message that moved this item"; they are not personal data and
need no mask.
"""

from __future__ import annotations


def mask_email(value: str) -> str:
    """``jane.doe@example.com`` → ``j***@example.com``; anything without an ``@`` → ``***``."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local or not domain:
        return "***"
    return f"{local[0]}***@{domain}"


def mask_phone(value: str) -> str:
    """``+1 (555) 010-1234`` → ``***1234``: the last four digits at most."""
    digits = [c for c in value if c.isdigit()]
    return "***" + "".join(digits[-4:]) if len(digits) > 4 else "***"


def contact_keys(
    email: str | None, phone: str | None, prefix: str = "customer"
) -> tuple[dict[str, str], dict[str, str]]:
    """The business keys and their masked forms for a customer's e-mail and phone (absent ones omitted)."""
    keys: dict[str, str] = {}
    masked: dict[str, str] = {}
    if email and email.strip():
        keys[f"{prefix}_email"] = email.strip().lower()
        masked[f"{prefix}_email"] = mask_email(email)
    if phone and phone.strip():
        keys[f"{prefix}_phone"] = phone.strip()
        masked[f"{prefix}_phone"] = mask_phone(phone)
    return keys, masked


MAX_SKU_KEYS = 50


def sku_keys(skus: str) -> dict[str, str]:
    """``"A,B"`` (an adapter's ``skus`` header) → ``{"sku": "A", "sku.2": "B"}``, at most 50."""
    names = [s for s in skus.split(",") if s][:MAX_SKU_KEYS]
    return {("sku" if n == 1 else f"sku.{n}"): s for n, s in enumerate(names, start=1)}
