"""FHIR errors and OperationOutcome: how every failure of the FHIR API is answered.

A :class:`FhirError` carries the HTTP status and one or more :class:`~gateway.adapter.Issue`
values; :func:`operation_outcome` turns issues into an R4 ``OperationOutcome``. Issue codes
are the FHIR ``issue-type`` codes (``invalid``, ``not-found``, ``conflict``, ``processing``,
``not-supported``, ``security``, ``deleted``, ``too-costly``, ``exception``, ...), locations are
FHIRPath expressions, and diagnostics never quote a value of the resource.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.adapter import Issue


class FhirError(Exception):
    """A FHIR interaction that cannot be done: answered with ``status`` and an OperationOutcome."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        location: str = "",
        *,
        issues: Sequence[Issue] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.issues: list[Issue] = list(issues) or [Issue("error", code, location, diagnostics)]
        self.headers = headers or {}

    @property
    def code(self) -> str:
        return self.issues[0].code


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """An R4 OperationOutcome with one ``issue`` per issue (FHIRPath in ``expression``)."""
    out: list[dict[str, Any]] = []
    for i in issues or [Issue("information", "informational", "", "All OK.")]:
        entry: dict[str, Any] = {"severity": i.severity, "code": i.code}
        if i.diagnostics:
            entry["diagnostics"] = i.diagnostics
        if i.location:
            entry["expression"] = [i.location]
        out.append(entry)
    return {"resourceType": "OperationOutcome", "issue": out}
