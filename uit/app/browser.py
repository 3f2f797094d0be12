"""Open a page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``) through
Selenium: console errors, images that did not render, resources loaded from outside the page,
and a full-page screenshot. Used by ``uit report --screenshot``, the report's tests and the tests
of ``uit serve``'s page."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uit.core.errors import UitError
from uit.core.io import atomic_write_bytes

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MIN_WINDOW_WIDTH = 500  # px: Chromium widens a narrower window to this


@dataclass(frozen=True)
class PageCheck:
    console_errors: list[str]
    images: int
    broken_images: list[str]  # alt text of images with natural width 0
    remote_resources: list[str]  # anything not data: or file: (the page must work offline)


def browser_available() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


def start_chromium(width: int = 1200, height: int = 1000) -> Any:
    """A headless Chromium WebDriver, ``width`` x ``height``, keeping the console's messages;
    the caller quits it."""
    if not browser_available():
        raise UitError(
            "headless Chromium is not installed: apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--window-size={width},{height}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    if width < MIN_WINDOW_WIDTH:  # a phone: the viewport is emulated, as DevTools does
        metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": True}
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver


def check_page(
    page: str | Path, screenshot: str | Path | None = None, width: int = 1200
) -> PageCheck:
    """Load ``page`` (a local HTML file) and report what a reader would see go wrong."""
    driver = start_chromium(width)
    try:
        driver.get(Path(page).resolve().as_uri())
        driver.execute_script("return document.readyState")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete ? i.naturalWidth : 0])"
        )
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)"
        )
        errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        if screenshot is not None:
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(int(height) + 40, 16000))
            atomic_write_bytes(screenshot, driver.get_screenshot_as_png())
    finally:
        driver.quit()
    remote = [r for r in resources if not r.startswith(("data:", "file:"))]
    return PageCheck(errors, len(images), [alt for alt, w in images if not w], remote)
