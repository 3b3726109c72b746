"""The code stays typed and lint-clean: ``mypy --strict`` on gateway/ and adapters/, ``ruff`` on everything."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_mypy_strict() -> None:
    result = _run("mypy", "--strict", "gateway", "adapters")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff() -> None:
    result = _run("ruff", "check", "gateway", "adapters", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr
