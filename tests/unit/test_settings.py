from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from ferry.settings import Settings, unknown_variables


def test_defaults_and_nested_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FERRY_PORT", "9001")
    monkeypatch.setenv("FERRY_MODEL__PATH", "/models/x.joblib")
    monkeypatch.setenv("FERRY_API__MAX_BATCH_SIZE", "50")
    s = Settings()
    assert (s.port, s.host, s.workers) == (9001, "0.0.0.0", 0)  # 0: one worker per usable CPU
    assert s.model.path == Path("/models/x.joblib")
    assert s.api.max_batch_size == 50
    assert s.server.keepalive_s > 60  # above common LB idle timeouts


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("FERRY_PORT", "0"),
        ("FERRY_WORKERS", "abc"),
        ("FERRY_MODEL__SHA256", "xyz"),
        ("FERRY_MODEL__PAHT", "x"),
        ("FERRY_LOGGING__LEVEL", "LOUD"),
        ("FERRY_API__MAX_BODY_BYTES", "10"),
    ],
)
def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_unknown_top_level_names_are_reported() -> None:
    env = {"FERRY_PROT": "1", "FERRY_PORT": "1", "FERRY_MODEL__PATH": "x", "FERRY_MODEL__PAHT": "y", "HOME": "/"}
    assert unknown_variables(env) == ["FERRY_MODEL__PAHT", "FERRY_PROT"]


def test_the_clients_variables_are_not_unknown_settings() -> None:
    """A shell that exports the CLI's URL and token can still start the service."""
    assert unknown_variables({"FERRY_URL": "http://x", "FERRY_TOKEN": "t", "FERRY_TOKENS": "t"}) == ["FERRY_TOKENS"]


def test_an_unusable_api_key_file_stops_the_launch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capfd) -> None:
    from ferry.launcher import load_settings

    for content in (None, "not json", '[{"sha256": "short", "principal": "a", "scopes": ["jobs"]}]', "[]"):
        path = tmp_path / "keys.json"
        path.unlink(missing_ok=True)
        if content is not None:
            path.write_text(content)
        monkeypatch.setenv("FERRY_AUTH__MODE", "api_key")
        monkeypatch.setenv("FERRY_AUTH__API_KEYS_FILE", str(path))
        with pytest.raises(SystemExit) as caught:
            load_settings()
        assert caught.value.code == 2
        line = json.loads(capfd.readouterr().out.strip().splitlines()[-1])
        assert line["event"] == "invalid_settings" and line["errors"][0]["setting"] == "auth.api_keys_file", line


def test_every_setting_is_documented() -> None:
    from pydantic import BaseModel

    for name, field in Settings.model_fields.items():
        assert field.description, name
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            for sub, subfield in group.model_fields.items():
                assert subfield.description, f"{name}.{sub}"


def test_the_default_shutdown_chain_lets_the_longest_request_finish() -> None:
    from ferry.settings import Settings, timeout_chain_warnings

    assert timeout_chain_warnings(Settings()) == []
    short = Settings(server={"graceful_timeout_s": 10})
    assert "deadline.max_s (30 s)" in timeout_chain_warnings(short)[0]
    assert timeout_chain_warnings(Settings(server={"graceful_timeout_s": 10}, deadline={"max_s": 7})) == []


def test_a_hang_limit_below_the_longest_deadline_and_a_stream_cap_above_the_connection_limit_are_warned() -> None:
    from ferry.settings import Settings, timeout_chain_warnings

    warnings = timeout_chain_warnings(
        Settings(inference={"hang_s": 20}, connections={"max_event_streams": 5000, "max_connections": 4096})
    )
    assert len(warnings) == 2
    assert "inference.hang_s (20 s)" in warnings[0] and "max_event_streams" in warnings[1]
