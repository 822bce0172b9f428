"""A real browser for the console's tests: Debian's chromium, headless, driven by selenium
through Debian's chromedriver (``make system-deps`` installs both; no Selenium Manager, no
download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

SCREENSHOTS_ENV = "LAKEFERRY_SCREENSHOTS"
"""A folder to copy the tests' screenshots into (``make screenshots``: docs/images)."""


@contextmanager
def chromium(width: int = 1400, height: int = 1000) -> Iterator[WebDriver]:
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    assert binary, "chromium is missing: make system-deps"
    assert driver_path, "chromedriver is missing: make system-deps"
    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(arg)
    options.binary_location = binary
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def until(
    browser: WebDriver, check: Callable[[WebDriver], Any], what: str, timeout: float = 30
) -> Any:
    """Wait for ``check`` to return something true (no fixed sleeps). While a page is being
    replaced (a click that submits a form), an element found on the old one may go stale or
    not be there yet: both mean "not yet"."""
    wait = WebDriverWait(
        browser, timeout, poll_frequency=0.1,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )  # fmt: skip
    return wait.until(check, message=what)


def screenshot(browser: WebDriver, folder: Path, name: str) -> Path:
    """Save a full-height screenshot as ``folder/name.png``; copied to $LAKEFERRY_SCREENSHOTS
    when it is set."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    width = browser.get_window_size()["width"]
    browser.set_window_size(width, max(600, min(int(height) + 40, 2400)))
    path = folder / f"{name}.png"
    browser.save_screenshot(str(path))
    target = os.environ.get(SCREENSHOTS_ENV)
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(target) / path.name)
    return path
