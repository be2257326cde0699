"""`eebus-bridge history` and `eebus-bridge report` on a real history file, and [history] config."""

from __future__ import annotations

import csv
import io
import json
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio

from eebus_bridge import cli
from eebus_bridge.config import ConfigError, load_config
from eebus_bridge.history.listing import TimeArgumentError, parse_moment
from tests._bridge_fixtures import write_config
from tests.test_history_report import DAY, SKI, T0, UNTIL
from tests.test_history_store import write_all

WINDOW = ["--since", T0.isoformat(), "--until", UNTIL.isoformat()]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config whose default history file holds the known day of test_history_report."""
    path = write_config(tmp_path, grpc_port=50051)
    trio.run(write_all, tmp_path / "history.sqlite3", DAY)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_history_table_lists_every_record_in_utc(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "history", "-c", config, *WINDOW)
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == len(DAY)
    assert lines[0].split() == ["2026-11-23T00:00:00.000Z", "bridge", "start"]
    assert lines[3].split() == [
        "2026-11-23T00:01:00.000Z",
        "state",
        "old=Init",
        "new=Unlimited/controlled",
        "rule=LPC-902/905",
    ]
    assert lines[4].split()[1:] == [
        "publication",
        "version=2",
        "state=Unlimited/controlled",
        "limit_W=unlimited",
    ]


def test_history_kinds_and_csv(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "history", "-c", config, *WINDOW, "--kind", "writes", "--format", "csv"
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [row["value_W"] for row in rows] == ["11000", "4200", "-5", "6000", "3000", "2000"]
    assert {row["kind"] for row in rows} == {"write"}
    assert rows[2]["approved"] == "false"
    assert rows[2]["reason"].startswith("LPC-001")
    assert rows[0]["ski"] == SKI
    assert rows[0]["duration_s"] == ""


def test_history_json_states(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "history", "-c", config, *WINDOW, "--kind", "states", "--format", "json"
    )
    assert code == 0
    states = json.loads(out)
    assert [s["fields"]["rule"] for s in states] == [
        "LPC-902/905",
        "LPC-910",
        "LPC-908/909",
        "LPC-910",
        "LPC-911",
        "LPC-921",
        "LPC-906",
        "LPC-918..920",
    ]
    assert states[0]["time"] == "2026-11-23T00:01:00.000Z"
    assert states[0]["kind"] == "state"


def test_history_window_by_iso_times(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys,
        "history",
        "-c",
        config,
        "--since",
        "2026-11-23T08:00:00Z",
        "--until",
        "2026-11-23T09:00",
        "--kind",
        "publications",
        "--format",
        "json",
    )
    assert code == 0
    assert [(p["fields"]["state"], p["fields"]["limit_W"]) for p in json.loads(out)] == [
        ("Failsafe", 4200.0)
    ]


def test_history_without_a_file_is_empty_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, grpc_port=50051)
    code, out, err = run(capsys, "history", "-c", config)
    assert (code, out) == (0, "")
    assert f"no history at {tmp_path / 'history.sqlite3'} yet" in err


@pytest.mark.parametrize("since", ["yesterday", "24x", "2026-13-01"])
def test_a_bad_time_is_a_usage_error(
    config: Path, capsys: pytest.CaptureFixture[str], since: str
) -> None:
    code, out, err = run(capsys, "history", "-c", config, "--since", since)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: {since!r} is not a time")


def test_until_before_since_is_a_usage_error(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "history", "-c", config, "--since", "1h", "--until", "2h")
    assert code == 2
    assert "must be after --since" in err


def test_parse_moment_spans_and_iso() -> None:
    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    assert parse_moment("24h", now) == now - timedelta(hours=24)
    assert parse_moment("7d", now) == now - timedelta(days=7)
    assert parse_moment("90s", now) == now - timedelta(seconds=90)
    assert parse_moment("now", now) == now
    assert parse_moment("2026-11-20", now) == datetime(2026, 11, 20, tzinfo=UTC)
    assert parse_moment("2026-11-20T18:00:00+01:00", now) == datetime(2026, 11, 20, 17, tzinfo=UTC)
    with pytest.raises(TimeArgumentError):
        parse_moment("last week", now)


def test_report_html_and_svg(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html_path = tmp_path / "report.html"
    code, _, err = run(capsys, "report", "-c", config, *WINDOW, "--out", html_path)
    assert code == 0, err
    html = html_path.read_text()
    assert "test-wallbox" in html
    assert "27.91 kWh" in html
    svg_path = tmp_path / "timeline.svg"
    code, _, err = run(capsys, "report", "-c", config, *WINDOW, "--out", svg_path)
    assert code == 0, err
    assert ET.parse(svg_path).getroot().tag == "{http://www.w3.org/2000/svg}svg"


def test_report_window_starts_with_the_limit_in_force(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A window starting at 07:30 shows the 3000 W set at 07:00 (read with context)."""
    out = tmp_path / "r.html"
    code, _, _ = run(
        capsys,
        "report",
        "-c",
        config,
        "--since",
        "2026-11-23T07:30Z",
        "--until",
        "2026-11-23T08:00Z",
        "--out",
        out,
    )
    assert code == 0
    assert "3.00 kW" in out.read_text()


def test_report_needs_a_known_suffix(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "report", "-c", config, "--out", tmp_path / "report.pdf")
    assert code == 2
    assert "must end in .html (report) or .svg (chart)" in err
    assert not (tmp_path / "report.pdf").exists()


def test_a_broken_history_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, grpc_port=50051)
    (tmp_path / "history.sqlite3").write_bytes(b"garbage" * 1000)
    code, out, err = run(capsys, "history", "-c", config)
    assert (code, out) == (1, "")
    assert err.startswith("error: cannot read the history:")
    assert "not a database" in err


# --------------------------------------------------------------------------- [history] config


def test_history_defaults_next_to_the_state_file(tmp_path: Path) -> None:
    (tmp_path / "var").mkdir()
    config = load_config(
        write_config(tmp_path, grpc_port=50051, lpc={"state_file": "var/state.json"})
    ).config
    assert config.history.enabled is True
    assert config.history.retention_days == 400
    assert config.history_path == tmp_path / "var" / "history.sqlite3"


def test_history_path_is_relative_to_the_config(tmp_path: Path) -> None:
    config = load_config(
        write_config(
            tmp_path,
            grpc_port=50051,
            history={"path": "h/x.sqlite3", "retention_days": 30, "enabled": False},
        )
    ).config
    assert config.history_path == tmp_path / "h" / "x.sqlite3"
    assert (config.history.enabled, config.history.retention_days) == (False, 30)


@pytest.mark.parametrize(
    ("history", "problem"),
    [
        ({"retention_days": 0}, "history.retention_days: must be between 1 and 36500, got 0"),
        ({"retention_days": 7.5}, "history.retention_days: must be an integer, got float 7.5"),
        ({"enabled": "yes"}, 'history.enabled: must be true or false, got string "yes"'),
        ({"path": ""}, "history.path: must not be empty"),
        (
            {"retension_days": 9},
            'history.retension_days: unknown key (did you mean "retention_days"?)',
        ),
    ],
)
def test_history_config_is_checked_strictly(
    tmp_path: Path, history: dict[str, object], problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        load_config(write_config(tmp_path, grpc_port=50051, history=history))
    assert error.value.problems == [problem]


def test_an_unwritable_history_location_is_a_warning_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    loaded = load_config(
        write_config(tmp_path, grpc_port=50051, history={"path": "file/history.sqlite3"})
    )
    assert [w for w in loaded.warnings if w.startswith("history.path:")] == [
        f"history.path: cannot create {tmp_path}/file/history.sqlite3: {tmp_path}/file is not "
        "a directory; the bridge runs, but records no history until it can"
    ]


def test_demo_week_makes_a_report_with_failsafe_and_limits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.history_demo import main as history_demo

    config = write_config(tmp_path, grpc_port=50051)
    history_demo([str(tmp_path / "history.sqlite3"), "--end", "2026-11-29T12:00Z"])
    out = tmp_path / "week.html"
    code, _, err = run(
        capsys,
        "report",
        "-c",
        config,
        "--since",
        "2026-11-22T12:00Z",
        "--until",
        "2026-11-29T12:00Z",
        "--out",
        out,
    )
    assert code == 0, err
    html = out.read_text()
    assert "LPC-912" in html  # the night without heartbeat
    assert "denied: LPC-001" in html
    assert "sidecar restart" in html
