"""ISO 20022 schema validation (adapters.finance.schemas) when two threads validate at once.

The event loop validates small documents while the worker that prepares large
payloads validates a large one: each must get its own issues, never the other's.
"""

from __future__ import annotations

import threading
from pathlib import Path

from lxml import etree

from adapters.finance.schemas import SchemaCatalogue

XSD = """<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="urn:t" xmlns="urn:t"
  elementFormDefault="qualified">
  <xs:element name="Document"><xs:complexType><xs:sequence>
    <xs:element name="Item" type="xs:int" maxOccurs="unbounded"/>
  </xs:sequence></xs:complexType></xs:element>
</xs:schema>"""


def test_threads_validating_at_once_each_get_their_own_issues(tmp_path: Path) -> None:
    (tmp_path / "t.xsd").write_text(XSD)
    catalogue = SchemaCatalogue.load(tmp_path)
    large = etree.fromstring(
        b'<Document xmlns="urn:t"><Item>x</Item>' + b"<Item>1</Item>" * 200_000 + b"</Document>"
    )
    small_bad = etree.fromstring(b'<Document xmlns="urn:t"><Item>y</Item></Document>')
    small_ok = etree.fromstring(b'<Document xmlns="urn:t"><Item>1</Item></Document>')
    large_counts: list[int] = []
    done = threading.Event()

    def worker() -> None:
        for _ in range(4):
            found = catalogue.validate(large)
            large_counts.append(-1 if found is None else len(found))
        done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    small_counts: list[int] = []
    while not done.is_set():
        bad, ok = catalogue.validate(small_bad), catalogue.validate(small_ok)
        small_counts.append(-1 if bad is None else len(bad))
        assert ok == []
    thread.join()
    assert large_counts == [1, 1, 1, 1]  # the invalid large document is never taken for valid
    assert set(small_counts) == {1}
