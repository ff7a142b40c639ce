"""A coordd with its dashboard on a free port, and Debian's chromium driven by Playwright
(never a downloaded browser)."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from tests.integration.harness import start_coordd, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def coordd(tmp_path):
    server = start_coordd(tmp_path / "state", "--heartbeat-timeout", "3",
                          "--dashboard-listen", "127.0.0.1:0",
                          env={"COORDD_STOP_GRACE_S": "3"})
    url_file = server.state_dir / "dashboard.url"
    server.url = wait_for(lambda: url_file.exists() and url_file.read_text().strip(), 30,
                          what="the dashboard to listen")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (bash scripts/setup.sh installs it)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[dev]')")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--disable-gpu", "--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, coordd):
    """A browser tab that trusts coordd's CA (as a person who imported tls/ca.pem would)."""
    context = browser.new_context(ignore_https_errors=True, viewport={"width": 1280,
                                                                      "height": 1600})
    tab = context.new_page()
    yield tab
    context.close()


def sign_in(page, url: str, token: str) -> None:
    page.goto(url + "login")
    page.fill("#token", token)
    page.click("button[type=submit]")


def tls_context(coordd) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(Path(coordd.ca_path)))
