"""The page in a real headless Chromium (Debian's chromium + chromium-driver) against live servers.

Every test's page is checked when the test ends: no console errors (except the HTTP errors the
test expects) and no request to any origin but the server's. Without the browser the tests are
skipped with a note, unless LABS_REQUIRE_BROWSER is set (as .ci/run does): then they fail.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import SHIPPED_TRANSACTIONS, LiveServer, start_server, write_settings

CHROMIUM = os.environ.get("LABS_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LABS_TEST_CHROMEDRIVER", shutil.which("chromedriver") or "/usr/bin/chromedriver")
API_KEY = "sk-page-test-key"


def _browser_missing() -> str | None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="session")
def driver() -> Iterator[Any]:
    missing = _browser_missing()
    if missing:
        if os.environ.get("LABS_REQUIRE_BROWSER"):
            pytest.fail(f"LABS_REQUIRE_BROWSER is set but {missing}")
        pytest.skip(missing)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-default-apps", "--disable-sync"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    browser = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    browser.set_script_timeout(60)
    yield browser
    browser.quit()


@dataclass
class Page:
    """One test's view of the browser: the server it talks to and what it allows in the console."""

    driver: Any
    server: LiveServer
    expected_statuses: set[int] = field(default_factory=set)

    @property
    def url(self) -> str:
        return self.server.url

    def open(self, width: int = 1280, height: int = 900) -> None:
        self.driver.set_window_size(width, height)
        self.driver.get(self.url + "/")
        self.wait_for_script("return document.readyState === 'complete' && document.getElementById('model').options.length > 0"
                             " || document.querySelector('dialog[open]') !== null")

    def wait_for_script(self, script: str, timeout: float = 30.0, *args: Any) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(lambda d: d.execute_script(script, *args))

    def wait(self, condition: Any, timeout: float = 60.0) -> Any:
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(condition)

    def drain_logs(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        return self.driver.get_log("browser"), self.driver.get_log("performance")

    def check_clean(self, console: list[dict[str, Any]], performance: list[dict[str, Any]]) -> None:
        errors = [entry for entry in console if entry["level"] == "SEVERE"
                  and not any(f"status of {status}" in entry["message"] for status in self.expected_statuses)]
        assert not errors, f"console errors: {errors}"
        elsewhere = []
        for entry in performance:
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                url = message["params"]["request"]["url"]
                if not (url.startswith(self.url + "/") or url.startswith(("data:", "blob:"))):
                    elsewhere.append(url)
        assert not elsewhere, f"requests left the server's origin: {elsewhere}"


def _page(driver: Any, server: LiveServer) -> Iterator[Page]:
    page = Page(driver, server)
    driver.get(server.url + "/ui/favicon.svg")  # this origin, to clear what earlier tests stored
    driver.execute_script("localStorage.clear(); sessionStorage.clear();")
    page.drain_logs()
    yield page
    page.check_clean(*page.drain_logs())
    driver.get("about:blank")  # stop whatever still streams before the next test


@pytest.fixture(scope="session")
def page_server(labs_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """The embedded default model (real text), preloaded, the shipped transactions, a local index."""
    settings = write_settings(tmp_path_factory.mktemp("page-server"), LABS_CACHE_DIR=str(labs_cache_dir),
                              LABS_PRELOAD_ON_START="true", LABS_KV_CACHE_MEMORY="256MiB",
                              LABS_TRANSACTIONS_CSV=str(SHIPPED_TRANSACTIONS))
    server = start_server(settings)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def keyed_server(thinking_model_dir: Path, labs_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Behind an API key: the embedded default with one sequence and one queued request at most (so busy
    is easy to reach), and a tiny reasoning model as `thinker`."""
    toml = f'[engine]\nmax_num_seqs = 1\nmax_queue = 1\n\n[models]\nthinker = "{thinking_model_dir}"\n'
    settings = write_settings(tmp_path_factory.mktemp("keyed-server"), toml, LABS_CACHE_DIR=str(labs_cache_dir),
                              LABS_PRELOAD_ON_START="true", LABS_KV_CACHE_MEMORY="128MiB", LABS_API_KEY=API_KEY,
                              LABS_MAX_LOADED_MODELS="2", LABS_TRANSACTIONS_CSV=str(SHIPPED_TRANSACTIONS))
    server = start_server(settings)
    yield server
    server.stop()


@pytest.fixture
def page(driver: Any, page_server: LiveServer) -> Iterator[Page]:
    yield from _page(driver, page_server)


@pytest.fixture
def keyed_page(driver: Any, keyed_server: LiveServer) -> Iterator[Page]:
    yield from _page(driver, keyed_server)
