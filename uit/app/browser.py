"""Open a page in headless Chromium (Debian's ``chromium`` and ``chromium-driver``) through
Selenium: console errors, images that did not render, resources loaded from outside the page,
and a full-page screenshot. Used by ``uit report --screenshot``, the report's tests and the tests
of ``uit serve``'s page."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from uit.core.errors import UitError
from uit.core.io import atomic_write_bytes

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
MIN_WINDOW_WIDTH = 500  # px: Chromium widens a narrower window to this
SOCKET_PATH_MAX = 107  # bytes of a Unix socket's path: Chromium's own must fit in it


@dataclass(frozen=True)
class PageCheck:
    console_errors: list[str]
    images: int
    broken_images: list[str]  # alt text of images with natural width 0
    remote_resources: list[str]  # anything not data: or file: (the page must work offline)


def browser_available() -> bool:
    return CHROMIUM.is_file() and CHROMEDRIVER.is_file()


@contextmanager
def chromium(width: int = 1200, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium WebDriver, ``width`` x ``height``, keeping the console's messages,
    quit when the block ends. Its profile and the folder Chromium makes in the temporary folder
    for its socket live in a scratch folder removed with it (quitting leaves the socket's
    folder behind: each page check left one in /tmp)."""
    if not browser_available():
        raise UitError(
            "headless Chromium is not installed: apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    scratch = _scratch()
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--window-size={width},{height}",
                 f"--user-data-dir={scratch / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(str(CHROMEDRIVER), env={**os.environ, "TMPDIR": str(scratch)})
    try:
        driver = webdriver.Chrome(service=service, options=options)
        try:
            if width < MIN_WINDOW_WIDTH:  # a phone: the viewport is emulated, as DevTools does
                metrics = {"width": width, "height": height, "deviceScaleFactor": 1,
                           "mobile": True}  # fmt: skip
                driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
            yield driver
        finally:
            driver.quit()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _scratch() -> Path:
    """A new folder for one Chromium: in the temporary folder, or in /tmp where the temporary
    folder's path is so long that Chromium's socket in it (70 more bytes) would not fit and
    Chromium would not start."""
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + 70 > SOCKET_PATH_MAX and Path("/tmp").is_dir():
        base = "/tmp"
    return Path(tempfile.mkdtemp(prefix="uit-chromium-", dir=base))


def check_page(
    page: str | Path, screenshot: str | Path | None = None, width: int = 1200
) -> PageCheck:
    """Load ``page`` (a local HTML file) and report what a reader would see go wrong."""
    with chromium(width) as driver:
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
    remote = [r for r in resources if not r.startswith(("data:", "file:"))]
    return PageCheck(errors, len(images), [alt for alt, w in images if not w], remote)
