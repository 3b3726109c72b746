"""How retail adapters show a customer's contact data: masked, never as received.

Customer e-mail addresses and phone numbers are business keys (lineage finds an
order by them through their keyed pseudonyms); these functions give the form
a message row and an operator may see.
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
