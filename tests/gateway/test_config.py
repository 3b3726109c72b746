"""Configuration: precedence, ${ENV} keys, and errors that name the key, the value and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import load_settings
from gateway.errors import AuthError, ConfigError
from gateway.security import KeyRing
from tests.conftest import FIXTURES


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gw.yaml"
    p.write_text(text)
    return p


def test_defaults() -> None:
    s = load_settings(None, environ={})
    assert (s.mllp.address, s.http.address, s.data_dir) == (
        "127.0.0.1:2575",
        "127.0.0.1:8080",
        Path("gateway-data"),
    )
    assert s.mllp.max_frame_bytes == s.http.max_body_bytes == 10 * 1024 * 1024


def test_precedence_file_then_env_then_options(tmp_path: Path) -> None:
    cfg = write(
        tmp_path,
        "mllp: {address: '127.0.0.1:3000'}\nhttp: {address: '127.0.0.1:3001'}\ndata_dir: from-file\n",
    )
    s = load_settings(cfg, environ={})
    assert (s.mllp.address, s.http.address, str(s.data_dir)) == (
        "127.0.0.1:3000",
        "127.0.0.1:3001",
        "from-file",
    )
    env = {"GATEWAY_MLLP": "127.0.0.1:4000", "GATEWAY_DATA_DIR": "from-env"}
    s = load_settings(cfg, environ=env)
    assert (s.mllp.address, s.http.address, str(s.data_dir)) == (
        "127.0.0.1:4000",
        "127.0.0.1:3001",
        "from-env",
    )
    s = load_settings(cfg, {("mllp", "address"): "127.0.0.1:5000"}, environ=env)
    assert s.mllp.address == "127.0.0.1:5000"
    s = load_settings(None, environ={"GATEWAY_CONFIG": str(cfg)})
    assert s.mllp.address == "127.0.0.1:3000"


def test_env_reference_in_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path, "auth:\n  api_keys:\n    - {name: lab, key: '${LAB_KEY}', scopes: [ingest:hl7v2]}\n"
    )
    monkeypatch.setenv("LAB_KEY", "a-very-secret-key-123")
    s = load_settings(cfg, environ={})
    ring = KeyRing.from_settings(s)
    assert ring.authenticate("a-very-secret-key-123").name == "lab"
    assert "a-very-secret-key-123" not in repr(ring.__dict__)
    monkeypatch.delenv("LAB_KEY")
    with pytest.raises(ConfigError, match="LAB_KEY is not set"):
        load_settings(cfg, environ={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mllp: {adress: '1.2.3.4:5'}\n", "mllp.adress: unknown key"),
        ("mllp: {address: 'nonsense'}\n", "mllp.address: 'nonsense' is not valid"),
        ("http: {max_body_bytes: -1}\n", "http.max_body_bytes: -1 is not valid"),
        ("mllp: {validation: strict}\n", "mllp.validation: 'strict' is not valid"),
        ("auth: {api_keys: [{name: x, key: short, scopes: [admin]}]}\n", "auth.api_keys.0.key: (hidden)"),
        ("auth: {api_keys: [{name: x, key: long-enough-key-123, scopes: [root]}]}\n", "scopes.0: 'root'"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_errors_name_key_and_value(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, text), environ={})
    assert expected in str(err.value)


def test_gateway_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(write(tmp_path, "mllp: {address: '127.0.0.1:2575'}\n"))]) == 0
    assert main(["check", str(write(tmp_path, "mllp: {bogus: 1}\n"))]) == 2
    assert "mllp.bogus: unknown key" in capsys.readouterr().err


def test_quickstart_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:

    monkeypatch.setenv("GATEWAY_API_KEY", "k" * 24)
    s = load_settings(FIXTURES / "config" / "quickstart.yaml", environ={})
    assert s.auth.api_keys[0].scopes == ["ingest:hl7v2", "messages:read", "lineage:read", "admin"]


def test_bootstrap_key_is_private_and_stable(tmp_path: Path) -> None:
    s = load_settings(None, {("data_dir",): str(tmp_path / "d")}, environ={})
    ring = KeyRing.from_settings(s)
    key_file = tmp_path / "d" / "api-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700  # the data directory is its owner's alone
    key = key_file.read_text().strip()
    assert ring.authenticate(key).name == "bootstrap"
    assert KeyRing.from_settings(s).authenticate(key).name == "bootstrap"


def test_bank_config_is_valid_and_its_routes_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.routecheck import lint
    from gateway.routing import RoutingTable

    monkeypatch.setenv("GATEWAY_API_KEY", "k" * 24)
    s = load_settings(FIXTURES / "config" / "bank.yaml", environ={})
    assert s.iso8583.address == "127.0.0.1:8583" and s.mllp.address == "off"
    table = RoutingTable.from_settings(s)
    assert [v.rules for v in table.views][:2] == [(), ("sepa",)]
    assert [f for f in lint(s) if f.severity == "error"] == []


def test_webhook_secrets_come_from_the_environment_and_never_show_in_errors(tmp_path: Path) -> None:
    s = load_settings(
        None,
        environ={
            "GATEWAY_SHOPIFY_WEBHOOK_SECRET": "shpss_from_env",
            "GATEWAY_SQUARE_SIGNATURE_KEY": "sq_from_env",
            "GATEWAY_SQUARE_NOTIFICATION_URL": "https://gw.example.com/ingest/square",
        },
    )
    assert s.shopify.webhook_secret == "shpss_from_env"
    assert (s.square.signature_key, s.square.notification_url) == (
        "sq_from_env",
        "https://gw.example.com/ingest/square",
    )
    assert load_settings(None, environ={}).shopify.webhook_secret is None  # none configured: all refused
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "shopify: {webhook_secret: [not-a-string-secret-777]}\n"), environ={})
    assert "shopify.webhook_secret: (hidden)" in str(caught.value)
    assert "777" not in str(caught.value)


def test_config_errors_never_show_a_sinks_secrets(tmp_path: Path) -> None:
    """A typo in a sink (its whole mapping is the wrong value), a bad header or a URL with a user and
    password in it: the error names the key, never the secret (it reaches logs and reload answers)."""
    text = (
        "sinks:\n"
        "  ehr: {type: htttp, endpoint: 'https://ehr.example.org/x', headers: {Authorization: 'Bearer TOKEN-CANARY-1'}}\n"
        "  lab: {type: http, endpoint: 'https://lab.example.org/x', headers: {X-Custom: [PLAIN-CANARY-2]}}\n"
        "  hub: {type: mllp, endpoint: 'svc:PASS-CANARY-3@hub.example.org:2575'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ={})
    message = str(caught.value)
    assert "sinks.ehr: (a mapping) is not valid" in message and "'htttp'" in message
    assert "sinks.lab.http.headers.X-Custom: (hidden) is not valid" in message
    assert "sinks.hub.mllp.endpoint: (hidden) is not valid" in message
    for canary in ("TOKEN-CANARY-1", "PLAIN-CANARY-2", "PASS-CANARY-3"):
        assert canary not in message


def test_config_errors_show_a_urls_place_but_not_its_query_or_user(tmp_path: Path) -> None:
    """A URL that breaks its rule (a query where none is allowed, a wrong scheme) is shown by its scheme,
    host and path, so the user can find it; its query (``?api_key=…``), fragment and user never."""
    text = (
        "sinks:\n"
        "  fhir: {type: fhir, base_url: 'http://h.example.org/fhir?api_key=QUERY-CANARY-1#frag-CANARY-2'}\n"
        "  ehr: {type: http, endpoint: 'htps://u:PASS-CANARY-3@ehr.example.org/x?access_token=QUERY-CANARY-4'}\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), environ={})
    message = str(caught.value)
    assert "'http://h.example.org/fhir?(hidden)#(hidden)' is not valid" in message
    assert "'htps://ehr.example.org/x?(hidden)' is not valid" in message
    for canary in ("QUERY-CANARY-1", "CANARY-2", "PASS-CANARY-3", "QUERY-CANARY-4"):
        assert canary not in message


def test_shop_config_is_valid_without_secrets() -> None:
    s = load_settings(FIXTURES / "config" / "shop.yaml", environ={})
    assert s.inventory is not None and set(s.inventory.channels) == {"web", "stores"}
    assert s.inventory.safety("MP-MUG-BLU") == 3 and s.inventory.safety("OTHER") == 1


CANARY = "Zq8Xv2Lm9Pw4Rt7Yk1Hs"


@pytest.mark.parametrize(
    ("text", "line"),
    [
        # a quoted key whose closing quote is missing: PyYAML quoted the line with the key in it
        (f'auth:\n  api_keys:\n    - name: a\n      key: "{CANARY}\n      scopes: [admin]\n', 4),
        (f'auth:\n  api_keys:\n    - {{name: a, key: "{CANARY}", scopes: [admin]\n', 4),
        (f'auth:\n  api_keys:\n    - {{name: a, key: "{CANARY}"\n       scopes: [admin]}}\n', 4),
        (f"mllp: {{address: '127.0.0.1:2575'}}\nkey: {CANARY}: x\n", 2),
        (f'data_dir: x\nkey: "{CANARY}\\xq"\n', 2),
        (f"data_dir: x\nauth:\n\tkey: {CANARY}\n", 3),
        (f"data_dir: x\nkey: !{CANARY} x\n", 2),  # a tag, an alias, a tag handle: source text in the problem
        (f"data_dir: x\nkey: *{CANARY}\n", 2),
        (f"data_dir: x\nkey: !{CANARY}! x\n", 2),
        (f"data_dir: x\nkey: {CANARY}\x00\n", 2),
    ],
)
def test_a_yaml_syntax_error_shows_where_never_the_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int
) -> None:
    """``gateway check`` and ``gateway serve`` name the file, line, column and problem of a malformed
    config, never its source text: a key written inline would be printed with it."""
    cfg = write(tmp_path, text)
    for argv in (["check", str(cfg)], ["serve", "--config", str(cfg)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"config file {cfg} is not valid YAML: line " in err and f"line {line}, column " in err
        assert CANARY not in err and CANARY[:8] not in err


def test_route_tests_with_a_yaml_syntax_error_show_where_never_the_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tests_file = tmp_path / "routes.yaml"
    tests_file.write_text(f'- {{fixture: a.hl7, route: "{CANARY}\n')
    assert main(["check", str(write(tmp_path, "data_dir: x\n")), "--test", str(tests_file)]) == 1
    out, err = capsys.readouterr()
    assert "are not valid YAML: line 2, column 1" in out and CANARY not in out + err


def test_a_config_that_is_not_utf8_is_refused_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "gw.yaml"
    cfg.write_bytes(b"data_dir: \xff\n")
    assert main(["check", str(cfg)]) == 2
    assert "is not UTF-8 text (byte 11)" in capsys.readouterr().err


def test_commands_other_than_serve_do_not_need_the_secrets_of_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unset ``${VAR}`` in an API key, a webhook secret or a sink header stops ``serve`` only; for the
    other commands it reads as a value nothing can present. Any other unset variable still stops them."""
    monkeypatch.delenv("AUD_LAB_KEY", raising=False)
    monkeypatch.delenv("SHOP_SECRET", raising=False)
    monkeypatch.delenv("EHR_TENANT", raising=False)
    cfg = write(
        tmp_path,
        "auth:\n  api_keys:\n    - {name: lab, key: '${AUD_LAB_KEY}', scopes: [ingest:hl7v2]}\n"
        "shopify: {webhook_secret: '${SHOP_SECRET}'}\n"
        "sinks:\n  ehr: {type: http, endpoint: 'https://ehr.example.org/x', headers: {X-Tenant: 't-${EHR_TENANT}'}}\n",
    )
    with pytest.raises(
        ConfigError, match=r"auth\.api_keys\[0\]\.key: environment variable AUD_LAB_KEY is not set"
    ):
        load_settings(cfg, environ={})
    s = load_settings(cfg, environ={}, secrets_required=False)
    again = load_settings(cfg, environ={}, secrets_required=False)
    key = s.auth.api_keys[0].key
    assert key.startswith("\x00unset:") and key != again.auth.api_keys[0].key  # unguessable, never the same
    assert s.shopify.webhook_secret is not None and s.shopify.webhook_secret.startswith("\x00unset:")
    ring = KeyRing.from_settings(s)
    for presented in ("", "${AUD_LAB_KEY}", "\x00unset:", key[:-1]):
        with pytest.raises(AuthError):
            ring.authenticate(presented)
    assert main(["check", str(cfg)]) == 0
    assert main(["docs", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "X-Tenant: (hidden)" in out and "\x00" not in out
    cfg = write(tmp_path, "data_dir: '${AUD_DATA_DIR_UNSET}'\n")  # not a secret: still needed
    with pytest.raises(ConfigError, match="AUD_DATA_DIR_UNSET is not set"):
        load_settings(cfg, environ={}, secrets_required=False)
