"""Crash-safe failsafe value storage [LPC-TS-044]."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from eebus_bridge.failsafe_store import load_failsafe_values, save_failsafe_values
from eebus_bridge.lpc import FailsafeValues


def test_round_trip_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "state.json"
    save_failsafe_values(path, FailsafeValues(limit_W=1234.5, duration_s=9000.0))
    assert load_failsafe_values(path) == FailsafeValues(limit_W=1234.5, duration_s=9000.0)
    save_failsafe_values(path, FailsafeValues(limit_W=0.0, duration_s=86400.0))
    assert load_failsafe_values(path) == FailsafeValues(limit_W=0.0, duration_s=86400.0)
    assert [p.name for p in path.parent.iterdir()] == ["state.json"]  # no temp file left


def test_missing_file_is_not_an_error(tmp_path: Path) -> None:
    assert load_failsafe_values(tmp_path / "nothing.json") is None


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{",
        "[]",
        '{"version": 1}',
        '{"version": 2, "failsafe_limit_W": 1, "failsafe_duration_s": 7200}',
        '{"version": 1, "failsafe_limit_W": "1", "failsafe_duration_s": 7200}',
        '{"version": 1, "failsafe_limit_W": true, "failsafe_duration_s": 7200}',
        '{"version": 1, "failsafe_limit_W": NaN, "failsafe_duration_s": 7200}',
        '{"version": 1, "failsafe_limit_W": 1, "failsafe_duration_s": Infinity}',
        "\x00\xff garbage",
    ],
)
def test_corrupt_file_falls_back_with_a_warning(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.write_text(content, encoding="utf-8", errors="surrogateescape")
    with caplog.at_level(logging.WARNING):
        assert load_failsafe_values(path) is None
    assert any("corrupt" in r.getMessage() for r in caplog.records)


def test_unreadable_file_falls_back_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # a directory where the file should be: reading fails with an OSError
    with caplog.at_level(logging.WARNING):
        assert load_failsafe_values(path) is None
    assert any("cannot read" in r.getMessage() for r in caplog.records)


def test_file_format_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_failsafe_values(path, FailsafeValues(limit_W=4200.0, duration_s=7200.0))
    assert json.loads(path.read_text()) == {
        "version": 1,
        "failsafe_limit_W": 4200.0,
        "failsafe_duration_s": 7200.0,
    }
