"""HL7 v2 structure validation: our compiled validator against hl7apy's, in one run.

Usage: ``python bench/hl7_validate.py [--runs N] [--hl7apy-runs N]``

On the same 1.5 KB ADT^A01 (``fixtures/hl7/adt_a01__1500_bytes.hl7``, or the
copy below when the fixture is absent) it measures:

* ``compile``: the first message, cold (the validator compiles lazily: hl7apy's
  2.5.1 tables are imported and only ADT_A01 and its segments compiled), then
  the rest of 2.5.1 and every other supported version, whole;
* ``ours``: :func:`adapters.hl7.structure.validate` on an already parsed
  message, and ``er7.parse`` + ``validate`` together (what the gateway pays);
* ``hl7apy``: ``parse_message(..., find_groups=True)`` + ``message.validate()``
  at hl7apy's strict level (it must parse to validate).

It prints µs/op for each and the hl7apy/ours ratio. Figures are the best of
several repeats, to keep other load on the machine out of them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from adapters.hl7 import er7, structure  # noqa: E402

FIXTURE = REPO / "fixtures" / "hl7" / "adt_a01__1500_bytes.hl7"
INLINE = "\r".join(
    [
        "MSH|^~\\&|NW_ADT|NORTHWIND_GEN|GW_INBOUND|GATEWAY|20240312101500+0000||ADT^A01^ADT_A01|NWG-1500|P|2.5.1",
        "EVN|A01|20240312101455+0000||ADM|ADM0042^REYES^MARTA^^^^^^NWG|20240312101000+0000",
        "PID|1||NW204518^^^NWG^MR~812345670^^^USSSA^SS~C7733012^^^ORDMV^DL||OKONKWO^ADAEZE^NGOZI^^MS||19850923|F||"
        "2054-5^Black or African American^CDCREC|1187 JUNIPER HOLLOW DR^APT 4B^EASTBROOK^OR^97401^USA^H~"
        "PO BOX 3310^^EASTBROOK^OR^97440^USA^M||^PRN^PH^^1^541^5552290~^NET^Internet^adaeze.okonkwo@example.org|"
        "^WPN^PH^^1^541^5558100|ENG^English^ISO6392|M|CAT^Catholic^HL70006|NWA7700991^^^NWG^AN|812345670|||"
        "N^Not Hispanic or Latino^HL70189",
        "PD1|||NORTHWIND FAMILY PRACTICE^^4410|30122^VANCE^ELEANOR^^^DR",
        "NK1|1|OKONKWO^CHIDI^E|SPO^Spouse^HL70063|1187 JUNIPER HOLLOW DR^APT 4B^EASTBROOK^OR^97401^USA|"
        "^PRN^PH^^1^541^5552291||EC^Emergency Contact^HL70131",
        "PV1|1|I|4EAST^407^A^NWG^^^^^4 EAST||||20417^OKAFOR^CHINEDU^^^DR|30122^VANCE^ELEANOR^^^DR||MED||||7|||"
        "20417^OKAFOR^CHINEDU^^^DR|IP|VN88120034^^^NWG^VN|||||||||||||||||||||||||20240312101000+0000",
        "PV2|||R07.9^Chest pain, unspecified^I10",
        "OBX|1|NM|8867-4^Heart rate^LN||92|/min^beats per minute^UCUM|60-100||||F|||20240312100500+0000",
        "OBX|2|NM|8480-6^Systolic blood pressure^LN||148|mm[Hg]^millimeter of mercury^UCUM|90-139|H|||F",
        "AL1|1|DA|2670^Codeine^RXNORM|SV|Anaphylaxis|20110605",
        "DG1|1||R07.9^Chest pain, unspecified^I10||20240312|A",
        "IN1|1|NWPPO^Northwind PPO^99NWINS|NWINS01^^^NWG^NIIP|NORTHWIND MUTUAL INSURANCE|"
        "PO BOX 9000^^SALEM^OR^97301^USA||^WPN^PH^^1^800^5550100|GRP-44120||||||||OKONKWO^ADAEZE^NGOZI|"
        "SEL^Self^HL70063|19850923",
    ]
).encode()


def best_us(fn: object, number: int, repeat: int = 7) -> tuple[float, float]:
    """(best, median) µs per call over ``repeat`` batches of ``number`` calls."""
    times = timeit.repeat(fn, number=number, repeat=repeat)  # type: ignore[arg-type]
    per = sorted(t / number * 1e6 for t in times)
    return per[0], statistics.median(per)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000, help="calls per repeat for our validator")
    parser.add_argument("--hl7apy-runs", type=int, default=20, help="calls per repeat for hl7apy")
    args = parser.parse_args()

    raw = FIXTURE.read_bytes() if FIXTURE.is_file() else INLINE
    raw = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    source = FIXTURE.relative_to(REPO) if FIXTURE.is_file() else "inline copy"
    print(f"message: {len(raw)} bytes, ADT^A01 v2.5.1 ({source})")

    # -- compile ------------------------------------------------------------------------------
    # (before hl7apy's own run below imports the same tables)
    started = time.perf_counter()
    structure.validate(er7.parse(raw), "ADT_A01", "2.5.1")
    first_message = time.perf_counter() - started
    rest = structure.compile_version("2.5.1")
    others = {v: structure.compile_version(v) for v in structure.SUPPORTED_VERSIONS if v != "2.5.1"}
    print(
        f"first message, cold (imports hl7apy 2.5.1, compiles ADT_A01 and its segments): {first_message * 1e3:.0f} ms"
    )
    print(f"compile the rest of 2.5.1 (every structure and segment): {rest * 1e3:.0f} ms")
    print(
        f"compile each other version whole: {statistics.mean(others.values()) * 1e3:.0f} ms on average, "
        f"slowest {max(others, key=lambda v: others[v])} at {max(others.values()) * 1e3:.0f} ms"
    )

    # -- ours ---------------------------------------------------------------------------------
    message = er7.parse(raw)
    issues = structure.validate(message, "ADT_A01", "2.5.1")
    assert issues == [], issues
    ours, ours_median = best_us(lambda: structure.validate(message, "ADT_A01", "2.5.1"), args.runs)
    parse_only, _ = best_us(lambda: er7.parse(raw), args.runs)
    both, _ = best_us(lambda: structure.validate(er7.parse(raw), "ADT_A01", "2.5.1"), args.runs)

    # -- hl7apy -------------------------------------------------------------------------------
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    text = raw.decode()

    def hl7apy_validate() -> None:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        msg.validate()  # raises on an invalid message; this one is valid

    hl7apy_validate()  # warm hl7apy's own caches
    started = time.perf_counter()
    hl7apy_validate()
    first = (time.perf_counter() - started) * 1e6
    theirs, theirs_median = best_us(hl7apy_validate, args.hl7apy_runs, repeat=3)

    print()
    print(f"{'what':44} {'best µs/op':>12} {'median':>10}")
    print(f"{'ours: structure.validate (parsed message)':44} {ours:12.1f} {ours_median:10.1f}")
    print(f"{'ours: er7.parse':44} {parse_only:12.1f}")
    print(f"{'ours: er7.parse + structure.validate':44} {both:12.1f}")
    print(f"{'hl7apy: parse_message(find_groups) + validate':44} {theirs:12.1f} {theirs_median:10.1f}")
    print(f"{'  (one warm call)':44} {first:12.1f}")
    print()
    print(f"ratio hl7apy / ours (validate): {theirs / ours:,.0f}x")
    print(f"ratio hl7apy / ours (parse + validate): {theirs / both:,.0f}x")


if __name__ == "__main__":
    main()
