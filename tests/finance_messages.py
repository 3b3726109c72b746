"""Builders of valid ISO 20022 messages for tests and benchmarks: pain.001.001.12 and pacs.008.001.13.

Each builder takes the parts a test varies (message id, amounts, currency,
accounts) and fills the rest with valid identifiers, so that a message it
builds passes both the XSD and the gateway's business rules unless a test
breaks one on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from decimal import Decimal
from xml.sax.saxutils import escape

PAIN_001 = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.12"
PACS_008 = "urn:iso:std:iso:20022:tech:xsd:pacs.008.001.13"

DEBTOR_IBAN = "DE89370400440532013000"
CREDITOR_IBANS = ("FR1420041010050500013M02606", "NL91ABNA0417164300", "GB82WEST12345698765432")


def pain001(
    msg_id: str,
    amounts: Sequence[str] = ("100.00",),
    *,
    currency: str = "EUR",
    debtor_iban: str = DEBTOR_IBAN,
    creditor_ibans: Sequence[str] = CREDITOR_IBANS,
    ctrl_sum: str | None = None,
    charge_bearer: str = "SLEV",
    debtor_name: str = "Acme Trading GmbH",
    initiating_party: str | None = None,
) -> bytes:
    """A pain.001.001.12 with one payment-information block and one transaction per amount.

    ``initiating_party``: the XML inside ``InitgPty`` (by default the debtor's name and the BIC
    ``ACMEDEFF`` as its organisation id)."""
    party = (
        initiating_party
        if initiating_party is not None
        else f"<Nm>{escape(debtor_name)}</Nm><Id><OrgId><AnyBIC>ACMEDEFF</AnyBIC></OrgId></Id>"
    )
    total = ctrl_sum if ctrl_sum is not None else str(sum((Decimal(a) for a in amounts), Decimal(0)))
    txs = "".join(
        f"""
      <CdtTrfTxInf>
        <PmtId><InstrId>{escape(msg_id)}-I{i}</InstrId><EndToEndId>{escape(msg_id)}-E{i}</EndToEndId><UETR>{uuid.uuid4()}</UETR></PmtId>
        <Amt><InstdAmt Ccy="{currency}">{amount}</InstdAmt></Amt>
        <CdtrAgt><FinInstnId><BICFI>BNPAFRPP</BICFI></FinInstnId></CdtrAgt>
        <Cdtr><Nm>Supplier {i}</Nm></Cdtr>
        <CdtrAcct><Id><IBAN>{creditor_ibans[i % len(creditor_ibans)]}</IBAN></Id></CdtrAcct>
        <RmtInf><Ustrd>Invoice {i}</Ustrd></RmtInf>
      </CdtTrfTxInf>"""
        for i, amount in enumerate(amounts, 1)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="{PAIN_001}">
  <CstmrCdtTrfInitn>
    <GrpHdr>
      <MsgId>{escape(msg_id)}</MsgId>
      <CreDtTm>2026-11-27T09:30:00Z</CreDtTm>
      <NbOfTxs>{len(amounts)}</NbOfTxs>
      <CtrlSum>{total}</CtrlSum>
      <InitgPty>{party}</InitgPty>
    </GrpHdr>
    <PmtInf>
      <PmtInfId>{escape(msg_id)}-P1</PmtInfId>
      <PmtMtd>TRF</PmtMtd>
      <NbOfTxs>{len(amounts)}</NbOfTxs>
      <CtrlSum>{total}</CtrlSum>
      <PmtTpInf><SvcLvl><Cd>SEPA</Cd></SvcLvl></PmtTpInf>
      <ReqdExctnDt><Dt>2026-11-30</Dt></ReqdExctnDt>
      <Dbtr><Nm>{escape(debtor_name)}</Nm></Dbtr>
      <DbtrAcct><Id><IBAN>{debtor_iban}</IBAN></Id></DbtrAcct>
      <DbtrAgt><FinInstnId><BICFI>COBADEFFXXX</BICFI></FinInstnId></DbtrAgt>
      <ChrgBr>{charge_bearer}</ChrgBr>{txs}
    </PmtInf>
  </CstmrCdtTrfInitn>
</Document>
""".encode()


def pacs008(msg_id: str, amounts: Sequence[str] = ("2500.00",), *, currency: str = "EUR") -> bytes:
    """A pacs.008.001.13 from DEUTDEFF to BNPAFRPP with one transaction per amount."""
    total = sum((Decimal(a) for a in amounts), Decimal(0))
    txs = "".join(
        f"""
    <CdtTrfTxInf>
      <PmtId><InstrId>{escape(msg_id)}-I{i}</InstrId><EndToEndId>{escape(msg_id)}-E{i}</EndToEndId><TxId>{escape(msg_id)}-T{i}</TxId><UETR>{uuid.uuid4()}</UETR></PmtId>
      <IntrBkSttlmAmt Ccy="{currency}">{amount}</IntrBkSttlmAmt>
      <ChrgBr>SHAR</ChrgBr>
      <Dbtr><Nm>Acme Trading GmbH</Nm></Dbtr>
      <DbtrAcct><Id><IBAN>{DEBTOR_IBAN}</IBAN></Id></DbtrAcct>
      <DbtrAgt><FinInstnId><BICFI>DEUTDEFF</BICFI></FinInstnId></DbtrAgt>
      <CdtrAgt><FinInstnId><BICFI>BNPAFRPP</BICFI></FinInstnId></CdtrAgt>
      <Cdtr><Nm>Supplier {i}</Nm></Cdtr>
      <CdtrAcct><Id><IBAN>{CREDITOR_IBANS[i % len(CREDITOR_IBANS)]}</IBAN></Id></CdtrAcct>
    </CdtTrfTxInf>"""
        for i, amount in enumerate(amounts, 1)
    )
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Document xmlns="{PACS_008}">
  <FIToFICstmrCdtTrf>
    <GrpHdr>
      <MsgId>{escape(msg_id)}</MsgId>
      <CreDtTm>2026-11-27T09:30:00Z</CreDtTm>
      <NbOfTxs>{len(amounts)}</NbOfTxs>
      <TtlIntrBkSttlmAmt Ccy="{currency}">{total}</TtlIntrBkSttlmAmt>
      <IntrBkSttlmDt>2026-11-27</IntrBkSttlmDt>
      <SttlmInf><SttlmMtd>CLRG</SttlmMtd></SttlmInf>
      <InstgAgt><FinInstnId><BICFI>DEUTDEFF</BICFI></FinInstnId></InstgAgt>
      <InstdAgt><FinInstnId><BICFI>BNPAFRPP</BICFI></FinInstnId></InstdAgt>
    </GrpHdr>{txs}
  </FIToFICstmrCdtTrf>
</Document>
""".encode()
