"""Business rules for ISO 20022 messages that an XSD cannot express, and the SEPA rule set.

Each rule is a function of a :class:`~adapters.finance.iso20022_document.Document`
that yields :class:`~gateway.adapter.Issue` values with its own code (the
codes and the ISO external status reason each maps to are in
``reason_codes.json``). Locations are XPath-like paths without namespace
prefixes; diagnostics never repeat a value from the message.

:data:`RULES` always run; :data:`SEPA_RULES` run when a route demands
``rules: [sepa]`` (EPC credit-transfer rulebook: EUR only, charge bearer
SLEV, at most 2 decimals and 999,999,999.99, the SEPA character set, EPC
field lengths, IBANs for both accounts).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from itertools import islice

from lxml import etree

from adapters.finance.identifiers import (
    bic_problem,
    currency_problem,
    date_problem,
    date_time_problem,
    decimals_problem,
    iban_problem,
    parse_amount,
    uetr_problem,
)
from adapters.finance.iso20022_document import Document, local
from gateway.adapter import Issue

__all__ = ["MAX_RULE_ISSUES", "RULES", "SEPA_RULES", "check", "check_sepa"]

Rule = Callable[[Document], Iterator[Issue]]

_BIC_ELEMENTS = ("BIC", "BICFI", "AnyBIC", "BICOrBEI")
_REQUESTED_DATES = ("ReqdExctnDt", "ReqdColltnDt", "IntrBkSttlmDt")
_COUNT = re.compile(r"[0-9]+")
_COUNT_DIGITS = 15
"""NbOfTxs is a Max15NumericText."""
MAX_RULE_ISSUES = 50
"""The most issues :func:`check` (and :func:`check_sepa`) report for one document, as schema validation
does: a document past that is rejected for what was found, and the further issues are not looked for
(each names an element by a path that is found among its siblings, which over thousands of bad siblings
took quadratic time)."""


def _error(code: str, location: str, diagnostics: str) -> Issue:
    return Issue("error", code, location, diagnostics)


# -- counts and sums ---------------------------------------------------------------------------


def _declared_count(doc: Document, base: etree._Element, path: str) -> tuple[str, str | None] | None:
    """Where NbOfTxs is and its digits without leading zeros (``None`` when it is not ASCII digits)."""
    el = doc.find("NbOfTxs", base)
    if el is None:
        return None
    text = (el.text or "").strip()
    return f"{path}/NbOfTxs", (text.lstrip("0") or "0") if _COUNT.fullmatch(text) else None


def _declared_sum(
    doc: Document, base: etree._Element, path: str, name: str = "CtrlSum"
) -> tuple[str, Decimal | None] | None:
    el = doc.find(name, base)
    if el is None:
        return None
    return f"{path}/{name}", parse_amount(el.text or "")


def counts_and_sums(doc: Document) -> Iterator[Issue]:
    """NbOfTxs equals the number of transactions and CtrlSum their sum, at group and block level."""
    kind = doc.kind
    if kind is None or not kind.counted or doc.message is None:
        return
    header = doc.find("GrpHdr")
    root_path = f"/Document/{kind.root}"
    levels: list[tuple[etree._Element, str, list[Decimal | None]]] = []
    if header is not None:
        levels.append(
            (header, f"{root_path}/GrpHdr", [t.amount.value if t.amount else None for t in doc.transactions])
        )
    by_block: dict[int | None, list[Decimal | None]] = {}
    for t in doc.transactions:  # once, not once per block (quadratic over many blocks)
        by_block.setdefault(t.block, []).append(t.amount.value if t.amount else None)
    for i, (path, block) in enumerate(doc.blocks, 1):
        levels.append((block, path, by_block.get(i, [])))
    for base, path, amounts in levels:
        count = _declared_count(doc, base, path)
        if count is not None:
            where, digits = count
            if digits is None:
                yield _error("nb_of_txs_invalid", where, "NbOfTxs is not a whole number.")
            elif len(digits) > _COUNT_DIGITS:  # no count (and too long for int() past 4300 digits)
                yield _error(
                    "nb_of_txs_mismatch",
                    where,
                    f"NbOfTxs declares a number {len(digits)} digits long; the message holds {len(amounts)}"
                    " transactions.",
                )
            elif int(digits) != len(amounts):
                yield _error(
                    "nb_of_txs_mismatch",
                    where,
                    f"NbOfTxs declares {int(digits)} transactions; the message holds {len(amounts)}.",
                )
        total = _declared_sum(doc, base, path)
        if total is not None and all(a is not None for a in amounts):
            where, declared = total
            if declared is None:
                yield _error("ctrl_sum_invalid", where, "CtrlSum is not an amount.")
            elif declared != sum(a for a in amounts if a is not None):
                yield _error("ctrl_sum_mismatch", where, "CtrlSum is not the sum of the transaction amounts.")
    if kind.total is not None:
        el = doc.find(kind.total)
        amounts = [t.amount.value if t.amount else None for t in doc.transactions]
        if el is not None and all(a is not None for a in amounts):
            declared = parse_amount(el.text or "")
            if declared is None or declared != sum(a for a in amounts if a is not None):
                yield _error(
                    "total_amount_mismatch",
                    f"{root_path}/{kind.total}",
                    "The group's total settlement amount is not the sum of the transaction amounts.",
                )


# -- amounts and currencies --------------------------------------------------------------------


def amounts(doc: Document) -> Iterator[Issue]:
    """Every amount is a plain positive decimal in an active currency, with no more decimals than it allows."""
    for tx in doc.transactions:
        amount = tx.amount
        if amount is None:
            continue
        if amount.value is None:
            yield _error("amount_invalid", amount.path, "The amount is not a plain decimal number.")
            continue
        if doc.kind is not None and doc.kind.counted and amount.value == 0:
            yield _error("amount_zero", amount.path, "A payment amount must be greater than zero.")
        if (problem := currency_problem(amount.currency)) is not None:
            yield _error("currency_unknown", f"{amount.path}/@Ccy", problem)
        elif (problem := decimals_problem(amount.value, amount.currency)) is not None:
            yield _error("amount_decimals", amount.path, problem)
    for el in doc.iter_local("Ccy"):
        if (problem := currency_problem((el.text or "").strip())) is not None:
            yield _error("currency_unknown", doc.path_of(el), problem)


# -- identifiers -------------------------------------------------------------------------------


def identifiers(doc: Document) -> Iterator[Issue]:
    """IBAN country format and mod-97, BIC format, UETR a version 4 UUID."""
    for el in doc.iter_local("IBAN"):
        if (problem := iban_problem((el.text or "").strip())) is not None:
            yield _error("iban_invalid", doc.path_of(el), problem)
    for el in doc.iter_local(*_BIC_ELEMENTS):
        if (problem := bic_problem((el.text or "").strip())) is not None:
            yield _error("bic_invalid", doc.path_of(el), problem)
    for el in doc.iter_local("UETR", "OrgnlUETR"):
        if (problem := uetr_problem((el.text or "").strip())) is not None:
            yield _error("uetr_invalid", doc.path_of(el), problem)


# -- dates -------------------------------------------------------------------------------------


def dates(doc: Document) -> Iterator[Issue]:
    """CreDtTm is a real date-time; requested execution, collection and settlement dates are real dates."""
    for el in doc.iter_local("CreDtTm"):
        text = (el.text or "").strip()
        problem = date_time_problem(text)
        if problem is not None:
            yield _error("creation_time_invalid", doc.path_of(el), problem)
    for el in doc.iter_local(*_REQUESTED_DATES):
        # since pain.001.001.09 ReqdExctnDt holds a Dt or DtTm child instead of text
        target = next(el.iterchildren(etree.Element), el)
        if (problem := date_problem((target.text or "").strip())) is not None:
            yield _error("requested_date_invalid", doc.path_of(target), problem)


RULES: tuple[Rule, ...] = (counts_and_sums, amounts, identifiers, dates)


def check(doc: Document) -> list[Issue]:
    """The business-rule issues of ``doc``: every one, up to :data:`MAX_RULE_ISSUES`."""
    return list(islice((issue for rule in RULES for issue in rule(doc)), MAX_RULE_ISSUES))


# -- SEPA ----------------------------------------------------------------------------------------

_SEPA_TEXT = re.compile(r"[A-Za-z0-9/\-?:().,'+ ]*")
_SEPA_MAX_AMOUNT = Decimal("999999999.99")
_SEPA_LENGTHS = {"MsgId": 35, "PmtInfId": 35, "InstrId": 35, "EndToEndId": 35, "Nm": 70, "Ustrd": 140}


def sepa_payments(doc: Document) -> Iterator[Issue]:
    """EUR only, at most 999,999,999.99 with 2 decimals, charge bearer SLEV, service level SEPA."""
    for tx in doc.transactions:
        amount = tx.amount
        if amount is None or amount.value is None:
            continue
        if amount.currency != "EUR":
            yield _error("sepa_currency", f"{amount.path}/@Ccy", "SEPA credit transfers are in euro only.")
        if amount.value > _SEPA_MAX_AMOUNT:
            yield _error("sepa_amount", amount.path, "SEPA amounts are at most 999,999,999.99.")
        if -int(amount.value.as_tuple().exponent) > 2:
            yield _error("sepa_amount", amount.path, "SEPA amounts have at most 2 decimals.")
    for el in doc.iter_local("ChrgBr"):
        if (el.text or "").strip() != "SLEV":
            yield _error("sepa_charge_bearer", doc.path_of(el), "SEPA requires the charge bearer SLEV.")
    for el in doc.iter_local("SvcLvl"):
        code = next((c for c in el.iterchildren(etree.Element) if local(c) == "Cd"), None)
        if code is not None and (code.text or "").strip() != "SEPA":
            yield _error("sepa_service_level", doc.path_of(code), "SEPA requires the service level SEPA.")
    for name in ("DbtrAcct", "CdtrAcct"):
        for acct in doc.iter_local(name):
            if not any(local(e) == "IBAN" for e in acct.iter(etree.Element)):
                yield _error("sepa_iban_required", doc.path_of(acct), "SEPA accounts are identified by IBAN.")


def sepa_text(doc: Document) -> Iterator[Issue]:
    """Text uses the SEPA (Latin) character set and stays within the EPC lengths."""
    for el in doc.document.iter(etree.Element):
        if len(el):
            continue
        text = el.text or ""
        if not _SEPA_TEXT.fullmatch(text):
            yield _error(
                "sepa_character_set",
                doc.path_of(el),
                "The text has characters outside the SEPA character set.",
            )
        limit = _SEPA_LENGTHS.get(local(el))
        if limit is not None and len(text.strip()) > limit:
            yield _error("sepa_length", doc.path_of(el), f"SEPA allows at most {limit} characters here.")


SEPA_RULES: tuple[Rule, ...] = (sepa_payments, sepa_text)


def check_sepa(doc: Document) -> list[Issue]:
    """The SEPA rule-set issues of ``doc``: every one, up to :data:`MAX_RULE_ISSUES`."""
    return list(islice((issue for rule in SEPA_RULES for issue in rule(doc)), MAX_RULE_ISSUES))
