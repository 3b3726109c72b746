"""Checks and masks for the identifiers finance messages carry: IBAN, BIC, ISO 4217 amounts, UETR.

IBAN country formats and mod-97 check digits come from ``schwifty`` (which
keeps the SWIFT IBAN registry current), currencies and their minor units
from ``iso4217`` (the published ISO table). Each check returns ``None`` when
the value is fine, or a fixed sentence that never repeats the value, so a
caller can put it straight into an :class:`~gateway.adapter.Issue`.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from decimal import Decimal, InvalidOperation

import iso4217
from schwifty import BIC, IBAN
from schwifty.exceptions import (
    InvalidAccountCode,
    InvalidBankCode,
    InvalidBBANChecksum,
    InvalidBranchCode,
    InvalidChecksumDigits,
    InvalidCountryCode,
    InvalidLength,
    InvalidStructure,
    SchwiftyException,
)

__all__ = [
    "bic_problem",
    "currency_exponent",
    "currency_problem",
    "date_problem",
    "date_time_problem",
    "decimals_problem",
    "iban_problem",
    "mask_account",
    "parse_amount",
    "uetr_problem",
]

_BIC = re.compile(r"[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?")
_AMOUNT = re.compile(r"[0-9]{1,18}(\.[0-9]{1,18})?")
_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})?")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

_IBAN_PROBLEMS: tuple[tuple[type[SchwiftyException], str], ...] = (
    (InvalidCountryCode, "The IBAN's country code is not a country that issues IBANs."),
    (InvalidLength, "The IBAN has the wrong length for its country."),
    (InvalidStructure, "The IBAN does not have its country's format."),
    (InvalidChecksumDigits, "The IBAN's check digits are wrong (mod-97)."),
    (InvalidBBANChecksum, "The national check digits inside the IBAN are wrong."),
    (InvalidBankCode, "The IBAN's bank code is not valid for its country."),
    (InvalidBranchCode, "The IBAN's branch code is not valid for its country."),
    (InvalidAccountCode, "The IBAN's account number is not valid for its country."),
)


def iban_problem(value: str) -> str | None:
    """Why ``value`` is not a valid IBAN (country format and mod-97 check digits), or ``None``."""
    if not value or value != value.strip() or " " in value:
        return "The IBAN must be written without spaces."
    try:
        IBAN(value, validate_bban=False)
    except SchwiftyException as exc:
        for kind, sentence in _IBAN_PROBLEMS:
            if isinstance(exc, kind):
                return sentence
        return "The IBAN is not valid."
    return None


def bic_problem(value: str) -> str | None:
    """Why ``value`` is not a BIC (8 or 11 characters: bank, country, location, branch), or ``None``."""
    if not _BIC.fullmatch(value):
        return "The BIC must be 8 or 11 characters: 4 letters, a country code, 2 and optionally 3 more."
    try:
        BIC(value, allow_invalid=False)
    except SchwiftyException:
        return "The BIC's country code is not a country."
    return None


def currency_exponent(code: str) -> int | None:
    """Minor-unit digits of an active ISO 4217 currency (``EUR`` 2, ``JPY`` 0, ``BHD`` 3); ``None``
    for a code without minor units (``XAU``). Raises ``KeyError`` for an unknown code."""
    try:
        currency = iso4217.Currency(code)
    except ValueError:
        raise KeyError(code) from None
    exponent = currency.exponent
    return None if exponent is None else int(exponent)


def currency_problem(code: str) -> str | None:
    """Why ``code`` is not an active ISO 4217 currency, or ``None``."""
    try:
        currency_exponent(code)
    except KeyError:
        return "The currency is not an active ISO 4217 code."
    return None


def parse_amount(text: str) -> Decimal | None:
    """An ISO 20022 amount (digits, optional fraction, no sign or exponent) as a Decimal, or ``None``."""
    text = text.strip()
    if not _AMOUNT.fullmatch(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
        return None


def decimals_problem(amount: Decimal, currency: str) -> str | None:
    """Why ``amount`` has more decimals than ``currency`` allows, or ``None`` (also for unknown codes)."""
    try:
        exponent = currency_exponent(currency)
    except KeyError:
        return None
    places = -int(amount.as_tuple().exponent)
    if exponent is not None and places > exponent:
        return f"The amount has {places} decimals; its currency allows {exponent}."
    return None


def uetr_problem(value: str) -> str | None:
    """Why ``value`` is not a UETR (a lower-case-or-upper UUID, version 4), or ``None``."""
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return "The UETR is not a UUID."
    if len(value) != 36 or parsed.version != 4 or parsed.variant != uuid.RFC_4122:
        return "The UETR must be a version 4 UUID."
    return None


def date_problem(text: str) -> str | None:
    """Why ``text`` is not a real ISO 8601 date or date-time (ISODate, ISODateTime), or ``None``."""
    if _DATE.fullmatch(text):
        try:
            date.fromisoformat(text)
        except ValueError:
            return "The date does not exist in the calendar."
        return None
    if _DATE_TIME.fullmatch(text):
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return "The date-time does not exist in the calendar."
        return None
    return "The value is not an ISO 8601 date or date-time."


def date_time_problem(text: str) -> str | None:
    """Why ``text`` is not a real ISO 8601 date-time (a date alone is not one), or ``None``."""
    if not _DATE_TIME.fullmatch(text):
        return "The value is not an ISO 8601 date-time."
    return date_problem(text)


def mask_account(value: str) -> str:
    """An account identifier as it may be shown: an IBAN as country + check digits + last four
    (``DE89…3000``), any other identifier as its last four at most."""
    value = value.strip()
    if len(value) >= 8 and value[:2].isalpha() and value[2:4].isdigit():
        return f"{value[:4]}…{value[-4:]}"
    return "…" + value[-4:] if len(value) > 4 else "…"
