"""Debian's headless chromium driven by Selenium, for the dashboard's tests and benchmark.

A fresh profile in a temporary directory each time, removed afterwards; the flags keep it
from reaching out (updates, sync, component downloads) and let it run as root in a
container-less CI (`--no-sandbox`). Chromium or chromedriver missing is an AssertionError
naming the packages, never a skip: `.ci/run` installs them.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-dev-shm-usage", "--window-size=1400,1000",
)  # fmt: skip


def binaries() -> tuple[str, str]:
    """(chromium, chromedriver) from PATH."""
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise AssertionError(
            "the dashboard's browser tests need Debian's chromium and chromium-driver: "
            "apt-get install -y --no-install-recommends chromium chromium-driver "
            "(.ci/run installs them)"
        )
    return browser, driver


@contextlib.contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    binary, driver_path = binaries()
    profile = tempfile.mkdtemp(prefix="dcnr-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    # An explicit driver path: Selenium Manager never downloads one.
    chrome = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)
