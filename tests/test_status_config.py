"""[status]: listen address, token, and the rule that a non-loopback bind needs a token."""

from __future__ import annotations

from pathlib import Path

import pytest

from eebus_bridge.config import (
    StatusConfig,
    config_to_toml_dict,
    is_loopback_host,
    load_config,
    parse_listen,
)
from tests.test_config import minimal_document, patched, problems_of, write


def test_status_defaults_to_loopback_port_8780_without_token(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, minimal_document()))

    assert loaded.config.status == StatusConfig("127.0.0.1:8780", None, False)
    assert loaded.warnings == ()


@pytest.mark.parametrize(
    ("listen", "expected"),
    [
        ("127.0.0.1:8780", ("127.0.0.1", 8780)),
        ("[::1]:9000", ("::1", 9000)),
        ("localhost:0", ("localhost", 0)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("charger.local:8780", ("charger.local", 8780)),
    ],
)
def test_parse_listen(listen: str, expected: tuple[str, int]) -> None:
    assert parse_listen(listen) == expected


@pytest.mark.parametrize(
    ("listen", "problem"),
    [
        ("8780", 'must be "host:port"'),
        ("127.0.0.1:", 'must be "host:port"'),
        ("127.0.0.1:http", 'must be "host:port"'),
        ("127.0.0.1:70000", "port must be between 0 and 65535"),
        ("::1:8780", "IPv6 address in brackets"),
        ("[zz::1]:8780", "is not an IPv6 address"),
        ("bad host:8780", "is not a host name"),
    ],
)
def test_bad_listen_values_are_named(tmp_path: Path, listen: str, problem: str) -> None:
    problems = problems_of(tmp_path, patched(minimal_document(), {"status.listen": listen}))

    assert len(problems) == 1
    assert problems[0].startswith("status.listen: ")
    assert problem in problems[0]


def test_empty_listen_disables_the_endpoint(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, patched(minimal_document(), {"status.listen": ""})))
    assert config.config.status.listen == ""


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "[::]", "charger.local"])
def test_non_loopback_bind_without_token_is_an_error(tmp_path: Path, host: str) -> None:
    document = patched(minimal_document(), {"status.listen": f"{host}:8780"})

    problems = problems_of(tmp_path, document)

    assert len(problems) == 1
    assert problems[0].startswith("status.token: required when status.listen")
    assert "allow_anonymous" in problems[0]


def test_non_loopback_bind_with_token_or_anonymous_is_accepted(tmp_path: Path) -> None:
    with_token = patched(
        minimal_document(),
        {"status.listen": "0.0.0.0:8780", "status.token": "s3cret-token-for-the-status"},
    )
    loaded = load_config(write(tmp_path, with_token))
    assert loaded.config.status.token == "s3cret-token-for-the-status"
    assert loaded.warnings == ()
    assert config_to_toml_dict(loaded.config)["status"]["token"] == "<hidden>"

    anonymous = patched(
        minimal_document(), {"status.listen": "0.0.0.0:8780", "status.allow_anonymous": True}
    )
    loaded = load_config(write(tmp_path, anonymous))
    assert loaded.config.status.allow_anonymous is True
    assert any("anyone who can reach" in warning for warning in loaded.warnings)


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ({"status.token": ""}, "status.token: must not be empty"),
        ({"status.token": "has space"}, "status.token: must be printable ASCII"),
        ({"status.allow_anonymous": "yes"}, "status.allow_anonymous: must be true or false"),
        ({"status.listen": 8780}, "status.listen: must be a string"),
        ({"status.port": 1}, "status.port: unknown key"),
    ],
)
def test_bad_status_keys(tmp_path: Path, patch: dict[str, object], problem: str) -> None:
    problems = problems_of(tmp_path, patched(minimal_document(), patch))
    assert any(line.startswith(problem) for line in problems), problems


def test_short_token_warns(tmp_path: Path) -> None:
    loaded = load_config(write(tmp_path, patched(minimal_document(), {"status.token": "abc"})))
    assert any("shorter than 16" in warning for warning in loaded.warnings)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("LOCALHOST", True),
     ("0.0.0.0", False), ("::", False), ("10.0.0.1", False), ("example.org", False)],
)  # fmt: skip
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
