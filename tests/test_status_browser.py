"""A real browser (Debian's headless chromium + chromedriver via Selenium) on the live page.

The simulator plays the controlbox preset; the page must show "Limited" and "100 W" by
itself (it polls /api/status), and its 24 h chart must be the SVG with the limit step.
Selenium blocks, so every browser call runs in a worker thread while the bridge runs here.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from tests._status_fixtures import status_bridge

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

# Skipped on a developer machine without the Debian packages, never in CI (CI=true).
pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)) and not os.environ.get("CI"),
    reason="chromium and chromium-driver are not installed (apt-get install chromium-driver)",
)

T = TypeVar("T")


@pytest.fixture
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM  # explicit: Selenium Manager would try to download one
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


async def in_thread(function: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(function)


async def wait_in_browser(condition: Callable[[], bool], within_s: float = 30.0) -> None:
    """Poll `condition` in the browser. The page redraws its parts while it refreshes itself,
    so an element found a moment ago may be gone: that counts as "not yet" (this failed once
    in a CI run, StaleElementReferenceException)."""
    from selenium.common.exceptions import StaleElementReferenceException

    def holds() -> bool:
        try:
            return condition()
        except StaleElementReferenceException:
            return False

    with trio.fail_after(within_s):
        while not await in_thread(holds):  # noqa: ASYNC110 - the browser's DOM has no event here
            await trio.sleep(0.2)


async def test_live_page_shows_the_controlbox_limit_and_its_chart(
    tmp_path: Path, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    driver = browser
    # The controlbox EG writes 100 W for 3723 s, 5 s after connecting (here 1 s: time_scale).
    async with status_bridge(tmp_path, actions=None, time_scale=0.2) as run:
        await in_thread(lambda: driver.get(run.url + "/"))
        assert await in_thread(lambda: driver.find_element(By.ID, "state").text) == "Init"

        # The page updates itself: no reload from here on.
        def shows_the_limit() -> bool:
            state = driver.find_element(By.ID, "state").text
            limit = driver.find_element(By.ID, "limit").text
            return state == "Limited" and limit == "100 W"

        await wait_in_browser(shows_the_limit)

        def chart_has_the_step() -> bool:
            paths = driver.find_elements(By.CSS_SELECTOR, "#chart svg path.limit")
            titles = driver.find_elements(By.CSS_SELECTOR, "#chart svg title")
            return bool(paths) and any(
                "100 W" in (title.get_attribute("textContent") or "") for title in titles
            )

        await wait_in_browser(chart_has_the_step)
        # One script reads the whole chart at once: the page may replace the SVG between two
        # separate element look-ups.
        step = await in_thread(
            lambda: driver.execute_script(
                "const path = document.querySelector('#chart svg path.limit');"
                "return path ? path.getAttribute('d') : null;"
            )
        )

        def text_of(element_id: str) -> str:
            # Looked up and read in one script: the element may be redrawn in between otherwise.
            text = driver.execute_script(
                "const element = document.getElementById(arguments[0]);"
                "return element ? element.innerText : '';",
                element_id,
            )
            return str(text)

        ems = await in_thread(lambda: text_of("ems"))
        health = await in_thread(lambda: text_of("health"))
        until = await in_thread(lambda: text_of("limit-end"))
        screenshot = tmp_path / "status-page.png"
        await in_thread(lambda: driver.save_screenshot(str(screenshot)))

    assert step is not None
    assert "V" in step  # Init's 4200 W down to 100 W: a vertical step in the line
    assert "Demo" in ems
    assert "ControlBox" in ems
    assert health == "Healthy"
    assert until.startswith("until ")
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
