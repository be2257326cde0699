"""Make docs/status-page.png: the live status page with a plausible day in its history.

    .venv/bin/python -m tools.status_page_screenshot [--out docs/status-page.png]

A fresh history file gets a made-up but rule-true last 24 hours (evening and midday limits
from the energy guard, one heartbeat loss with its failsafe period); then the real bridge
runs against the simulator's controlbox preset with that history, and headless chromium
(Debian's chromium + chromedriver, as in tests/test_status_browser.py) photographs the page
once it shows the 100 W limit and its chart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import trio

from eebus_bridge.activity import Activity, ActivityKind
from eebus_bridge.config import load_config
from eebus_bridge.history import HistoryStore
from eebus_bridge.island import open_island
from eebus_bridge.runtime import Bridge
from tests._bridge_fixtures import EG_SKI, write_config
from tools.hems_simulator import open_hems_simulator

FCAPL_W = 4200.0


def made_up_day(now: datetime) -> list[Activity]:
    """The last 24 h before `now`, as the runtime would have recorded them."""
    day: list[Activity] = []
    version = 0
    state = "Init"

    def at(hours_ago: float, kind: ActivityKind, **fields: Any) -> None:
        day.append(Activity(kind, now - timedelta(hours=hours_ago), fields))

    def change(
        hours_ago: float, new: str, rule: str, limit_w: float | None, end_h: float = 0
    ) -> None:
        nonlocal version, state
        at(hours_ago, "state", old=state, new=new, rule=rule)
        version += 1
        end = None if not end_h else (now - timedelta(hours=hours_ago - end_h)).isoformat()
        at(hours_ago, "publication", version=version, state=new, limit_W=limit_w,
           end_time=end, latency_s=0.0012)  # fmt: skip
        state = new

    def write(hours_ago: float, value_w: float, duration_h: float, active: bool = True) -> None:
        at(hours_ago, "write", ski=EG_SKI, msg_counter=int(1000 - hours_ago * 10),
           value_W=value_w, active=active, duration_s=duration_h * 3600 or None, approved=True,
           reason="")  # fmt: skip

    at(23.99, "bridge", event="start")
    version += 1
    at(
        23.99,
        "publication",
        version=1,
        state="Init",
        limit_W=FCAPL_W,
        end_time=None,
        latency_s=None,
    )
    write(23.98, FCAPL_W, 0.0, active=False)
    change(23.98, "Unlimited/controlled", "LPC-902/905", None)
    for start_h, value_w, hours in ((18.5, 3000.0, 2.5), (6.0, 1800.0, 1.5), (2.5, 2400.0, 1.0)):
        write(start_h, value_w, hours)
        change(start_h, "Limited", "LPC-910", value_w, hours)
        change(start_h - hours, "Unlimited/controlled", "LPC-908/909", None)
    at(11.0, "eg", event="heartbeat_lost", ski=EG_SKI)
    change(11.0, "Failsafe", "LPC-912", FCAPL_W)
    at(10.3, "eg", event="heartbeat_back", ski=EG_SKI)
    change(10.3 - 120 / 3600, "Unlimited/autonomous", "LPC-921", None)
    write(9.9, 3500.0, 0.0)
    change(9.9, "Limited", "LPC-918..920", 3500.0)
    write(8.5, 3500.0, 0.0, active=False)
    change(8.5, "Unlimited/controlled", "LPC-908/909", None)
    at(0.02, "bridge", event="stop")
    return sorted(day, key=lambda activity: activity.time)


async def fill_history(path: Path, activities: list[Activity]) -> None:
    store = HistoryStore(path, 400)
    for activity in activities:
        store.observe(activity)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        with trio.fail_after(10):
            while store.written < len(activities):  # noqa: ASYNC110 - a tool, not a test
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def photograph(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1150"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(url)
        wait = WebDriverWait(driver, 30, poll_frequency=0.2)
        wait.until(lambda d: d.find_element(By.ID, "limit").text == "100 W")
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart svg path.limit"))
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


async def main_async(out: Path) -> None:
    folder = Path(tempfile.mkdtemp(prefix="eebus-screenshot-"))
    await fill_history(folder / "history.sqlite3", made_up_day(datetime.now(UTC)))
    async with (
        open_island(),
        open_hems_simulator(
            "controlbox", time_scale=0.2, connect_delay_s=0.1, heartbeat_period_s=20.0
        ) as sim,
    ):
        config_path = write_config(
            folder,
            grpc_port=sim.port,
            timing={  # the spec's values, not the tests' shortened ones
                "heartbeat_timeout_s": 120.0,
                "init_timeout_s": 120.0,
                "failsafe_recovery_s": 120.0,
                "write_window_s": 60.0,
            },
            status={"listen": "127.0.0.1:0"},
            eebus={"ems_ski_allowlist": [EG_SKI]},
            jsonl="publications.jsonl",
        )
        text = config_path.read_text().replace(
            '[device]\nvendor_code = "TEST"\nbrand = "eebus-bridge"\nmodel = "test-wallbox"\n'
            'serial_number = "SN-1"',
            '[device]\nvendor_code = "EVR"\nbrand = "EVerest"\nmodel = "Wallbox 11 kW"\n'
            'serial_number = "WB-000123"',
        )
        config_path.write_text(text)
        bridge = Bridge(load_config(config_path).config)
        async with trio.open_nursery() as nursery:
            await nursery.start(bridge.run)
            await bridge.status_endpoint.bound.wait()
            assert bridge.status_endpoint.url is not None
            await trio.to_thread.run_sync(photograph, bridge.status_endpoint.url + "/", out)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.status_page_screenshot")
    parser.add_argument("--out", type=Path, default=Path("docs/status-page.png"))
    args = parser.parse_args(argv)
    trio.run(main_async, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
