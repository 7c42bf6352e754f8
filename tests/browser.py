"""What the browser tests share: Debian's Chromium driven by Selenium, made unable to reach
anything but the loopback, and helpers to wait on and call into the page."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select as Select  # re-exported for the tests
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # pragma: no cover - the skip below says why
    webdriver = None  # type: ignore[assignment]

MISSING = [what for what, ok in (("selenium (pip install -e '.[test]')", webdriver is not None),
                                 ("chromium (apt-get install chromium)", CHROMIUM),
                                 ("chromedriver (apt-get install chromium-driver)", CHROMEDRIVER)) if not ok]
# The remedies in the reason become the run's closing line (tests/skipsummary.py).
NEEDS_BROWSER = pytest.mark.skipif(
    bool(MISSING), reason="no browser to test the page in: missing chromium (apt-get install chromium) or "
    f"chromedriver (apt-get install chromium-driver), or selenium (pip install -e '.[test]'): {', '.join(MISSING)}")

KEY = "browser-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# Chromium on a machine without a network: no sandbox as root, no GPU, and none of the
# background connections (updates, sync, QUIC probes) that a closed network refuses. Every host
# but the loopback is made unreachable, whatever network this machine has: names do not resolve,
# and anything else goes to a proxy on a closed loopback port (Chromium never proxies loopback).
# So a page that needs a CDN fails here as it would on an air-gapped machine.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--force-device-scale-factor=1", "--window-size=1280,1000", "--lang=en",
                  "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=http://127.0.0.1:9")


@contextmanager
def chromium(profile: Path, downloads: Path) -> Iterator[Any]:
    """A headless Chromium with its own profile, saving downloads into `downloads`; always ended."""
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: Selenium Manager has nothing to look up (it would try the network).
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(profile.parent / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_script_timeout(20)
        driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
        yield driver
    finally:
        try:
            driver.quit()  # ends Chromium, then chromedriver
        finally:
            service.stop()  # a no-op after a clean quit; kills chromedriver when quit failed


def js(driver: Any, expression: str, *args: Any) -> Any:
    return driver.execute_script(f"return {expression};", *args)


def wait(driver: Any, expression: str, timeout: float = 30.0, errors: str = "errors") -> Any:
    """Waits until the JavaScript expression is truthy; the failure names it and the page's errors."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: js(d, expression))
    except Exception as exc:
        shown = js(driver, f"document.getElementById({errors!r})?.innerText")
        console = [entry["message"] for entry in driver.get_log("browser")]
        raise AssertionError(f"waiting for {expression!r}; page errors: {shown!r}; console: {console}") from exc


def module_call(driver: Any, module: str, body: str, *args: Any) -> Any:
    """Imports one of the page's modules as ``m`` and returns what ``body`` (an expression, which
    may use ``args``) gives, awaited when it is a promise."""
    result = driver.execute_async_script(
        f"const done = arguments[arguments.length - 1], args = [...arguments].slice(0, -1);"
        f"import('/static/{module}').then(async (m) => done({{ok: await ({body})}}))"
        f".catch((e) => done({{error: String(e)}}));",
        *args)
    assert "error" not in result, result["error"]
    return result["ok"]


def decode_png(data: bytes | str) -> np.ndarray:
    """A PNG (bytes, base64 or a data: URL) as a uint8 array, grey."""
    if isinstance(data, str):
        data = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data)
    return np.asarray(Image.open(io.BytesIO(data)).convert("L"))


def decode_data_url(src: str) -> np.ndarray:
    assert src.startswith("data:image/png;base64,")
    return decode_png(src)


def ready_page(driver: Any, url: str) -> None:
    """The page loaded and past the key prompt (the key stays in the tab's session storage)."""
    driver.get(url + "/")
    wait(driver, "['auth', 'ready'].includes(document.body.dataset.state)")
    if js(driver, "document.body.dataset.state") == "auth":
        driver.find_element(By.ID, "api-key").send_keys(KEY, Keys.ENTER)
    wait(driver, "document.body.dataset.state === 'ready'")


def severe_console(driver: Any) -> list[str]:
    """Script errors logged since the last call (failed loads of answers meant to fail aside)."""
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]


def fill(driver: Any, **values: str) -> None:
    """Type each value into the form field of that id (``edit_steps`` is the field ``edit-steps``)."""
    for element_id, value in values.items():
        field = driver.find_element(By.ID, element_id.replace("_", "-"))
        field.clear()
        field.send_keys(value)
