"""The distribution's headless Chromium through the system chromedriver (Selenium; nothing downloaded at run time),
for the tests that look at pages as a person would (tests/test_web_page.py, tests/test_gallery.py)."""

from __future__ import annotations

import contextlib
import shutil

BROWSERS = ("chromium", "chromium-browser")
CHROMIUM = next((path for path in map(shutil.which, BROWSERS) if path), None)
MISSING = ("no Chromium binary (chromium / chromium-browser) on PATH: install the distribution's chromium and "
           "chromium-driver packages (.ci/run does it with apt when it runs as root)")


@contextlib.contextmanager
def chromium(profile_dir, *, width: int = 1280, height: int = 2000):
    """A headless Chromium WebDriver (console logged, autoplay allowed), quit with every process it started."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    assert driver_path, f"{CHROMIUM} is installed but chromedriver is not (Debian: the chromium-driver package)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-proxy-server", "--no-first-run", "--disable-extensions", "--disable-sync",
                     "--disable-background-networking", "--disable-component-update",
                     "--autoplay-policy=no-user-gesture-required", f"--window-size={width},{height}",
                     f"--user-data-dir={profile_dir}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def severe(driver, *, allowed: tuple[str, ...] = ()) -> list[dict]:
    """The console's errors since the last call (get_log drains it), but those naming ``allowed``."""
    return [entry for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and not any(text in entry["message"] for text in allowed)]
