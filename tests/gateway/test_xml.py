"""The hardened XML parser: entity attacks, DTDs, depth and size are refused, with no file read or connection made."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.xml import XMLRejected, parse_xml
from tests.support import wait_until

DOC = b'<Document xmlns="urn:iso:std:iso:20022:tech:xsd:pain.001.001.12">'


@pytest.fixture
def listener() -> Iterator[tuple[int, list[bytes]]]:
    """A TCP socket on loopback that records every connection made to it."""
    seen: list[bytes] = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(0.5)
                try:
                    seen.append(conn.recv(1024))
                except OSError:
                    seen.append(b"")

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    stop.set()
    thread.join()
    server.close()


def rejected(raw: bytes, **limits: int) -> XMLRejected:
    with pytest.raises(XMLRejected) as info:
        parse_xml(raw, **limits)
    return info.value


def test_a_plain_document_parses_with_bom_and_cr_line_ends() -> None:
    root = parse_xml(b"\xef\xbb\xbf<?xml version='1.0' encoding='utf-8'?>\r" + DOC + b"\r<A>x</A></Document>")
    assert root.tag.endswith("Document") and root[0].text == "x"


def test_external_file_entity_is_never_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("CANARY-SECRET-CONTENT")
    raw = (
        f'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'.encode()
        + DOC
        + b"<A>&x;</A></Document>"
    )
    err = rejected(raw)
    assert err.code == "doctype_forbidden"
    assert "CANARY" not in str(err)


def test_external_network_entity_and_dtd_make_no_connection(listener: tuple[int, list[bytes]]) -> None:
    port, seen = listener
    for raw in (
        f'<!DOCTYPE d SYSTEM "http://127.0.0.1:{port}/evil.dtd">'.encode() + DOC + b"</Document>",
        f'<!DOCTYPE d [<!ENTITY x SYSTEM "http://127.0.0.1:{port}/x">]>'.encode() + DOC + b"&x;</Document>",
        f'<!DOCTYPE d [<!ENTITY % p SYSTEM "http://127.0.0.1:{port}/p"> %p;]>'.encode()
        + DOC
        + b"</Document>",
    ):
        assert rejected(raw).code == "doctype_forbidden"
    xinclude = (
        DOC
        + f'<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="http://127.0.0.1:{port}/i"/>'.encode()
        + b"</Document>"
    )
    parse_xml(xinclude)  # parsed as an ordinary element: XInclude is never processed
    with socket.create_connection(("127.0.0.1", port)) as probe:  # the listener does record connections
        probe.sendall(b"probe")
    assert wait_until(lambda: seen == [b"probe"], timeout=30)  # and nothing else ever connected


def test_billion_laughs_is_refused_before_expansion() -> None:
    lol = b'<!DOCTYPE lolz [<!ENTITY lol "lol">' + b"".join(
        f'<!ENTITY lol{i} "{("&lol" + (str(i - 1) if i > 1 else "") + ";") * 10}">'.encode()
        for i in range(1, 10)
    )
    raw = lol + b"]>" + DOC + b"<A>&lol9;</A></Document>"
    assert rejected(raw).code == "doctype_forbidden"


def test_entity_declaration_without_doctype_keyword_case_is_refused() -> None:
    assert rejected(b"<!doctype d [<!entity x 'y'>]>" + DOC + b"</Document>").code == "doctype_forbidden"


def test_depth_and_size_caps() -> None:
    deep = DOC + b"<A>" * 100 + b"</A>" * 100 + b"</Document>"
    assert rejected(deep).code == "too_deep"
    parse_xml(deep, max_depth=128)
    very_deep = DOC + b"<A>" * 20000 + b"</A>" * 20000 + b"</Document>"
    assert rejected(very_deep).code in ("too_deep", "not_well_formed")
    assert rejected(DOC + b"<A>" + b"x" * 2000 + b"</A></Document>", max_bytes=1000).code == "too_large"


def test_malformed_input_names_the_line_not_the_content() -> None:
    err = rejected(DOC + b"\n<A>SECRET-VALUE</B></Document>")
    assert err.code == "not_well_formed" and err.line == 2
    assert "SECRET" not in err.diagnostics
    assert rejected(b"").code == "not_well_formed"


def test_a_doctype_in_utf16_is_refused_too() -> None:
    doc = '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE d [<!ENTITY e "x">]><d>&e;</d>'.encode("utf-16")
    with pytest.raises(XMLRejected) as caught:
        parse_xml(doc)
    assert caught.value.code == "doctype_forbidden"
    assert parse_xml('<?xml version="1.0" encoding="UTF-16"?><d>ok</d>'.encode("utf-16")).text == "ok"
