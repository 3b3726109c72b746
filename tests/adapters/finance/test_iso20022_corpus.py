"""The real-world ISO 20022 corpus (moov-io/iso20022's testdata): every file gets the outcome it deserves.

Supported messages parse and, where the schema folder has their version, are
valid against the official XSD; the business-rule findings on the samples are
real (placeholder IBANs whose check digits do not verify, a pain.001 that
declares 7 transactions and holds 8) and are asserted one by one. Message types
the gateway does not take get ``unsupported_message_type``; the JSON renderings
and broken files get ``not_well_formed``; a UTF-8 byte order mark and CR-only
line ends are read as they come.

The corpus lives outside the repository (``../shared/corpora``); without it these
tests skip, and fail instead when ``GATEWAY_REQUIRE_CORPORA=1``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from adapters.finance.iso20022 import ISO20022Adapter
from gateway.adapter import Issue, Outcome, ParseError
from gateway.config import ISO20022Config
from gateway.envelope import Envelope, Receipt
from tests.conftest import require_or_skip

pytestmark = pytest.mark.corpus

RECEIPT = Receipt("test")
BOM = b"\xef\xbb\xbf"
SWISS_CAMT = [
    "200519_camt.052_P_CH2909000000250094239_1110092686_0_2019042416072347.xml",
    "200519_camt.054-Credit_P_CH2909000000250094239_1110092691_0_2019042421291293.xml",
    "200519_camt.054-Debit_P_CH2909000000250094239_1110092692_0_2019042401501580.xml",
    "200519_camt.054_P_CH2909000000250094239_1111091335_0_2020061900081727.xml",
    "200519_camt054-ESR-ASR_P_CH2909000000250094239_1110092704_0_2019042500372179.xml",
    "200519_camt054-chdd_p_ch2909000000250094239_1110097484_0_20190520700381159.xml",
    "200519_camt054-epo_p_ch5109000000250092291_1110097605_0_2019052003522556.xml",
    "200519_camt054-epo_p_ch5109000000250092291_1110097605_0_2019052103322231.xml",
    "200519_camt054-returns_p_ch2909000000250094239_1109800798_0_2019052023472022.xml",
    "200924_camt.054_P_CH2909000000250094239_1110092703_0_2019042423412214.xml",
    "200924_camt.054_P_CH2909000000250094239_1111091335_0_2020061900081727.xml",
    "camt.053_P_CH2909000000250094239_1110092698_0_2020112503071366.xml",
    "camt054-returns_p_ch5109000000250092291_1110097606_0_2020112500512470.xml",
]
PAIN_002_SAMPLES = [
    "pain002-chdd-cor1_p_ch2909000000250094239_1110097483_0_2018031317221082.xml",
    "pain002-epo_p_0_0_0_2018031510491259.xml",
    "pain002-epo_p_0_0_0_2018032614401842.xml",
    "pain002-epo_p_ch2909000000250094239_1109800799_0_2018032612092784.xml",
    "pain002-epo_p_ch5109000000250092291_1110097605_0_2018031511252307.xml",
]


def swiss_camt_definition(name: str) -> str:
    """The Swiss samples name their message in the file name (``camt054`` or ``camt.054``); all are .04."""
    kind = next(k for k in ("052", "053", "054") if f"camt{k}" in name.replace(".", ""))
    return f"camt.{kind}.001.04"


# The LT sample IBANs all have check digits 00, which mod-97 never produces.
_STATEMENT_ENTRIES = [
    f"/Document/BkToCstmrStmt/Stmt/Ntry[{n}]/NtryDtls/TxDtls/RltdPties/{role}/Id/IBAN"
    for n in range(1, 5)
    for role in ("DbtrAcct", "CdtrAcct")
]

SUPPORTED: dict[str, tuple[str, set[tuple[str, str]]]] = {
    # file: (message definition, every error finding as (code, location))
    **{name: (swiss_camt_definition(name), set()) for name in SWISS_CAMT},
    "FI_camt_052_sample.xml.xml": ("camt.052.001.02", set()),
    "FI_camt_053_sample.xml.xml": ("camt.053.001.02", set()),
    "FI_camt_054_sample.xml.xml": ("camt.054.001.02", set()),
    "gistfile1.xml": ("pain.001.001.03", set()),
    "International_payment_RUB_naujas_1.xml": (
        "pain.001.001.03",
        {("iban_invalid", "/Document/CstmrCdtTrfInitn/PmtInf/DbtrAcct/Id/IBAN")},
    ),
    "International_payment_USD_naujas_1.xml": (
        "pain.001.001.03",
        {("iban_invalid", "/Document/CstmrCdtTrfInitn/PmtInf/DbtrAcct/Id/IBAN")},
    ),
    "sepa_payment_naujas_1.xml": (
        "pain.001.001.03",
        {
            ("iban_invalid", "/Document/CstmrCdtTrfInitn/PmtInf/DbtrAcct/Id/IBAN"),
            ("iban_invalid", "/Document/CstmrCdtTrfInitn/PmtInf/CdtTrfTxInf/CdtrAcct/Id/IBAN"),
        },
    ),
    "statement_1.xml": (
        "camt.053.001.02",
        {("iban_invalid", "/Document/BkToCstmrStmt/Stmt/Acct/Id/IBAN")}
        | {("iban_invalid", location) for location in _STATEMENT_ENTRIES},
    ),
    # the Swiss (six-interbank-clearing) variant of pain.001.001.03: no official XSD for its namespace
    "musterfile_pain.001_Nov2020.xml": (
        "pain.001.001.03",
        {
            # NbOfTxs says 7, the file holds 8 transactions
            ("nb_of_txs_mismatch", "/Document/CstmrCdtTrfInitn/GrpHdr/NbOfTxs"),
            # CH010023512312312365L: wrong check digits
            ("iban_invalid", "/Document/CstmrCdtTrfInitn/PmtInf[3]/CdtTrfTxInf[2]/CdtrAcct/Id/IBAN"),
            # IT1122334455667788991122334: not the Italian IBAN format
            ("iban_invalid", "/Document/CstmrCdtTrfInitn/PmtInf[4]/CdtTrfTxInf/CdtrAcct/Id/IBAN"),
        },
    ),
    **{name: ("pain.002.001.03", set()) for name in PAIN_002_SAMPLES},
    "valid_pacs_v11.xml": ("pacs.002.001.11", set()),
    "valid_pain_v11.xml": ("pain.002.001.11", set()),
}
UNSUPPORTED = {
    "pain008-musterfile.xml": "pain.008.001.02",
    "valid_acmt_v03.xml": "acmt.007.001.03",
    "valid_auth_v02.xml": "auth.018.001.02",
    "valid_camt_v09.xml": "camt.055.001.09",
    "valid_reda_v01.xml": "reda.066.001.01",
    "valid_remt_v04.xml": "remt.001.001.04",
    "invalid_pain_v11.xml": "",  # a Document without a namespace
}
NOT_WELL_FORMED = {
    "invalid_file1",  # JSON
    "invalid_file2",  # start tags without their closing '>'
    "invalid_acmt_v03.json",
    "invalid_pain_v11.json",
    "valid_acmt_v03.json",
    "valid_auth_v02.json",
    "valid_camt_v09.json",
    "valid_pacs_v11.json",
    "valid_pain_v11.json",
    "valid_reda_v01.json",
    "valid_remt_v04.json",
}
SCHEMA_VALIDATED = 21
"""Supported samples whose version has an official XSD in the schema folder."""


@pytest.fixture(scope="module")
def corpus(corpora_dir: Path) -> dict[str, Path]:
    folder = corpora_dir / "iso20022" / "moov-io-iso20022" / "testdata"
    files = {p.name: p for p in sorted(folder.iterdir()) if p.is_file()} if folder.is_dir() else {}
    if not files:
        require_or_skip(f"no ISO 20022 corpus files in {folder}")
    return files


@pytest.fixture(scope="module")
def adapter(schema_dir: Path) -> ISO20022Adapter:
    return ISO20022Adapter(ISO20022Config(schema_dir=schema_dir))


def parse_issues(adapter: ISO20022Adapter, raw: bytes) -> list[Issue]:
    with pytest.raises(ParseError) as caught:
        adapter.parse(raw, RECEIPT)
    return caught.value.issues


def test_every_corpus_file_has_an_expected_outcome(corpus: dict[str, Path]) -> None:
    assert set(corpus) == set(SUPPORTED) | set(UNSUPPORTED) | NOT_WELL_FORMED


def test_supported_samples_parse_with_exactly_their_known_findings(
    adapter: ISO20022Adapter, corpus: dict[str, Path]
) -> None:
    for name, (definition, expected) in SUPPORTED.items():
        raw = corpus[name].read_bytes()
        assert adapter.detect(raw, None), name
        env = adapter.parse(raw, RECEIPT)
        assert env.headers["message_definition"] == definition, name
        assert (env.message_type, env.version) == (definition[:8], definition[9:]), name
        assert env.control_id, name
        assert adapter.serialize(env) == raw, name
        findings = {(i.code, i.location) for i in adapter.validate(env) if i.is_error}
        assert findings == expected, name


def test_samples_with_a_schema_at_hand_are_valid_against_it(
    adapter: ISO20022Adapter, corpus: dict[str, Path], schema_dir: Path
) -> None:
    validated = 0
    for name, (definition, _) in SUPPORTED.items():
        env = adapter.parse(corpus[name].read_bytes(), RECEIPT)
        xsd = schema_dir / f"{definition}.xsd"
        iso_namespace = env.body.namespace == f"urn:iso:std:iso:20022:tech:xsd:{definition}"
        assert adapter.schemas.has(env.body.namespace) == (iso_namespace and xsd.is_file()), name
        if not adapter.schemas.has(env.body.namespace):
            continue
        validated += 1
        assert [i for i in adapter.validate(env) if i.code == "schema_invalid"] == [], name
        schema = etree.XMLSchema(etree.parse(str(xsd)))
        assert schema.validate(env.body.document), (name, [e.message for e in schema.error_log])
    assert validated == SCHEMA_VALIDATED


def test_out_of_scope_message_types_are_refused_by_name(
    adapter: ISO20022Adapter, corpus: dict[str, Path]
) -> None:
    for name, definition in UNSUPPORTED.items():
        with pytest.raises(ParseError) as caught:
            adapter.parse(corpus[name].read_bytes(), RECEIPT)
        assert [i.code for i in caught.value.issues] == ["unsupported_message_type"], name
        assert caught.value.headers.get("message_definition", "") == definition, name


def test_broken_and_json_files_are_not_well_formed(adapter: ISO20022Adapter, corpus: dict[str, Path]) -> None:
    for name in sorted(NOT_WELL_FORMED):
        issues = parse_issues(adapter, corpus[name].read_bytes())
        assert [(i.severity, i.code) for i in issues] == [("fatal", "not_well_formed")], name


def test_every_corpus_file_gets_a_well_formed_reply(
    adapter: ISO20022Adapter, corpus: dict[str, Path]
) -> None:
    for name, path in corpus.items():
        raw = path.read_bytes()
        env: Envelope | None
        try:
            env = adapter.parse(raw, RECEIPT)
        except ParseError as exc:
            reply = adapter.respond(Outcome("invalid", exc.headers, exc.issues))
            assert reply.code == "RJCT", name
        else:
            issues = adapter.validate(env)
            kind = "invalid" if any(i.is_error for i in issues) else "accepted"
            reply = adapter.respond(Outcome(kind, env.headers, issues, env.id, env))
        root = etree.fromstring(reply.body)
        assert (etree.QName(root).namespace or "").startswith("urn:iso:std:iso:20022:tech:xsd:"), name


def test_byte_order_mark_and_cr_only_files_parse(adapter: ISO20022Adapter, corpus: dict[str, Path]) -> None:
    with_bom = {
        "International_payment_RUB_naujas_1.xml": "MSGID0003",
        "International_payment_USD_naujas_1.xml": "MSGID0002",
        "sepa_payment_naujas_1.xml": "MSGID0001",
    }
    for name, msg_id in with_bom.items():
        raw = corpus[name].read_bytes()
        assert raw.startswith(BOM), name
        assert adapter.parse(raw, RECEIPT).control_id == msg_id
    cr_only = ["FI_camt_052_sample.xml.xml", "FI_camt_054_sample.xml.xml"]
    for name in cr_only:
        raw = corpus[name].read_bytes()
        assert b"\n" not in raw and raw.count(b"\r") > 100, name
        env = adapter.parse(raw, RECEIPT)
        assert env.control_id == "BANKFILEID219073"
        assert [i for i in adapter.validate(env) if i.is_error] == [], name
