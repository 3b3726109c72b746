"""HL7 v2 table → FHIR code maps, kept as data files so that a site can override them.

Each map is one JSON file in ``tables/`` beside this module; its name (without
``.json``) is the table id (``0001``, ``0203``, ``coding_systems`` …)::

    {
      "title": "HL7 table 0001 administrative sex -> FHIR administrative-gender",
      "system": "http://hl7.org/fhir/administrative-gender",
      "codes": {"F": {"code": "female", "display": "Female"}, ...}
    }

``system`` is the default code system of the mapped codes; an entry may name
its own ``system`` (0063 maps some relationships to v2-0131, others to
v3-RoleCode) and ``code`` (absent: the v2 code itself). Entries may carry other
string members a mapper reads (``use`` in 0190, ``category`` in 0127 …).

:meth:`Tables.load` reads the built-in files, then every ``*.json`` file of an
override folder, each replacing the built-in table of the same name whole (a
site that only wants to add a code copies the built-in file and edits it).
Lookups try the code as given, then upper-cased.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources as package_files
from pathlib import Path
from typing import Any

__all__ = ["Table", "TableError", "Tables", "default_tables"]


class TableError(ValueError):
    """A table file is not of the documented shape (a configuration error, raised at load time)."""


@dataclass(frozen=True, slots=True)
class Table:
    """One code map: its id, default target ``system`` and its entries by v2 code."""

    id: str
    system: str
    codes: Mapping[str, Mapping[str, str]]
    title: str = ""

    def entry(self, code: str) -> Mapping[str, str] | None:
        """The raw entry of ``code`` (as given, then upper-cased), or ``None``."""
        if not code:
            return None
        found = self.codes.get(code)
        if found is None:
            found = self.codes.get(code.upper())
        return found

    def coding(self, code: str) -> dict[str, str] | None:
        """The FHIR Coding that ``code`` maps to (``system``, ``code``, ``display`` when known), or ``None``."""
        found = self.entry(code)
        if found is None:
            return None
        out: dict[str, str] = {}
        system = found.get("system", self.system)
        if system:
            out["system"] = system
        out["code"] = found.get("code", code)
        if found.get("display"):
            out["display"] = found["display"]
        return out


def _table(table_id: str, doc: Any) -> Table:
    if not isinstance(doc, dict) or not isinstance(doc.get("codes"), dict):
        raise TableError(f"The table {table_id} must be a JSON object with a 'codes' object.")
    system = doc.get("system", "")
    title = doc.get("title", "")
    if not isinstance(system, str) or not isinstance(title, str):
        raise TableError(f"The table {table_id} has a 'system' or 'title' that is not a string.")
    codes: dict[str, dict[str, str]] = {}
    for code, entry in doc["codes"].items():
        if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
            raise TableError(f"The table {table_id} has an entry that is not an object of strings.")
        codes[code] = dict(entry)
    return Table(table_id, system, codes, title)


def _read(table_id: str, text: str) -> Table:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise TableError(f"The table {table_id} is not valid JSON.") from None
    return _table(table_id, doc)


@dataclass(frozen=True, slots=True)
class Tables:
    """All code maps by table id. Build with :meth:`load` (or :func:`default_tables`)."""

    tables: Mapping[str, Table] = field(default_factory=dict)

    @classmethod
    def load(cls, override_dir: Path | None = None) -> Tables:
        """The built-in tables, each replaced by ``override_dir/<id>.json`` when that file exists.

        Override files with a name no built-in table has are added (a mapper may read them).
        Raises :class:`TableError` for a file that is not a table.
        """
        found: dict[str, Table] = {}
        builtin = package_files.files(__package__ or "adapters.hl7.to_fhir").joinpath("tables")
        for item in sorted(builtin.iterdir(), key=lambda p: p.name):
            if item.name.endswith(".json"):
                table_id = item.name.removesuffix(".json")
                found[table_id] = _read(table_id, item.read_text(encoding="utf-8"))
        if override_dir is not None:
            for path in sorted(Path(override_dir).glob("*.json")):
                found[path.stem] = _read(path.stem, path.read_text(encoding="utf-8"))
        return cls(found)

    def get(self, table_id: str) -> Table:
        """The table ``table_id``; an empty one when there is none (every lookup then misses)."""
        return self.tables.get(table_id) or Table(table_id, "", {})

    def entry(self, table_id: str, code: str) -> Mapping[str, str] | None:
        return self.get(table_id).entry(code)

    def coding(self, table_id: str, code: str) -> dict[str, str] | None:
        return self.get(table_id).coding(code)


@functools.cache
def default_tables() -> Tables:
    """The built-in tables, read once per process."""
    return Tables.load()
