"""The consent flow in a real headless browser: Debian's chromium driven by Selenium.

Set ``AIOAMZTOKEN_SCREENSHOTS=docs/_static/web`` to refresh the screenshots of the docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from aioamztoken.web import consent_app
from tests.conftest import ManagerFactory

pytestmark = [pytest.mark.browser, pytest.mark.slow]

APP_ID = "amzn1.sp.solution.emulator-app"
WAIT = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def chrome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One headless chromium for the module (started once: it is slow to start)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium-driver)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("needs selenium (pip install selenium)")
    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager download
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--no-first-run",
        "--no-default-browser-check",
        "--window-size=1100,760",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()


class Browser:
    """The driver's blocking calls, run in a thread so the servers on this loop answer."""

    def __init__(self, driver: Any, shots: Path) -> None:
        self.driver = driver
        self.shots = shots

    async def run(self, call: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(call, *args)

    async def open(self, url: str) -> None:
        await self.run(self.driver.get, url)

    async def wait_for(self, css: str) -> Any:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        def wait() -> Any:
            return WebDriverWait(self.driver, WAIT).until(
                expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
            )

        return await self.run(wait)

    async def click(self, css: str) -> None:
        element = await self.wait_for(css)
        await self.run(element.click)

    async def text(self) -> str:
        from selenium.webdriver.common.by import By

        body = await self.run(self.driver.find_element, By.TAG_NAME, "body")
        return str(await self.run(lambda: body.text))

    async def screenshot(self, name: str) -> None:
        path = self.shots / name
        assert await self.run(self.driver.save_screenshot, str(path))
        assert path.stat().st_size > 1000
        target = os.environ.get("AIOAMZTOKEN_SCREENSHOTS")
        if target:
            Path(target).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, Path(target) / name)


@pytest.fixture
def browser(chrome: Any, tmp_path: Path) -> Iterator[Browser]:
    chrome.delete_all_cookies()
    return Browser(chrome, tmp_path)


def loopback(request: web.Request) -> bool:
    return request.remote in ("127.0.0.1", "::1")


@contextlib.asynccontextmanager
async def site(mgr: at.AsyncTokenManager, **options: Any) -> AsyncIterator[str]:
    """The consent app mounted at /amazon on a real loopback port; yields the origin."""
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    parent = web.Application()
    parent.add_subapp(
        "/amazon",
        consent_app(mgr, redirect_uri=f"{origin}/amazon/callback", operator=loopback, **options),
    )
    runner = web.AppRunner(parent, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield origin
    finally:
        await runner.cleanup()


async def test_connect_allow_and_land_on_the_success_page(
    browser: Browser, make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    store = at.MemoryTokenStore()
    mgr = make_manager(store=store, authorization_base_url=emulator.authorization_url)
    async with site(mgr) as origin:
        await browser.open(f"{origin}/amazon/?account=acme-us")
        await browser.wait_for("button[type=submit]")
        await browser.screenshot("connect.png")
        await browser.click("button[type=submit]")  # "Connect"
        await browser.wait_for("button[value=allow]")
        assert "Allow access?" in await browser.text()
        await browser.screenshot("consent.png")
        await browser.click("button[value=allow]")
        await browser.wait_for("div.ok h1")
        page = await browser.text()
        assert "Account connected" in page
        assert "acme-us" in page
        await browser.screenshot("success.png")
        assert await store.accounts() == ["acme-us"]
        token = await store.load("acme-us")
        assert token is not None
        assert token.access_token == emulator.current_access_token(emulator.consent_account)
        assert "code=" not in browser.driver.current_url or token.access_token not in page

        # More accounts for the operator page: one authorized long ago (where the manager
        # records authorization dates), one whose refresh token Amazon revoked.
        refresh_token = emulator.issue_refresh_token("globex-eu")
        if "authorized_at" in inspect.signature(mgr.add_account).parameters:
            long_ago = time.time() - 200 * 86400
            await mgr.add_account("globex-eu", refresh_token, authorized_at=long_ago)
        else:
            await mgr.add_account("globex-eu", refresh_token)
        await mgr.add_account("initech-jp", emulator.issue_refresh_token("initech-jp"))
        emulator.revoke("initech-jp")
        with pytest.raises(at.InvalidGrantError):
            await mgr.get_access_token("initech-jp")
        await browser.run(browser.driver.set_window_size, 1280, 900)
        await browser.open(f"{origin}/amazon/accounts")
        await browser.wait_for("table")
        operator_page = await browser.text()
        assert "acme-us" in operator_page
        assert "globex-eu" in operator_page
        assert "needs-reauth" in operator_page
        assert "re-authorize" in operator_page
        await browser.screenshot("operator.png")
        await browser.run(browser.driver.set_window_size, 1100, 760)


async def test_deny_shows_what_happened_and_stores_nothing(
    browser: Browser, make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    mgr = make_manager(authorization_base_url=emulator.authorization_url)
    async with site(mgr) as origin:
        await browser.open(f"{origin}/amazon/?account=acme-us")
        await browser.click("button[type=submit]")
        await browser.click("button[value=deny]")
        await browser.wait_for("div.problem h1")
        page = await browser.text()
        await browser.screenshot("denied.png")
    assert "Authorization declined" in page
    assert "not granted" in page
    assert await mgr.accounts() == []
    assert emulator.token_requests == 0


async def test_a_forged_callback_stores_nothing(
    browser: Browser, make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    mgr = make_manager(authorization_base_url=emulator.authorization_url)
    code = emulator.issue_code("victim", redirect_uri="http://127.0.0.1/elsewhere")
    async with site(mgr) as origin:
        await browser.open(f"{origin}/amazon/callback?code={code}&state=forged-by-attacker")
        await browser.wait_for("div.problem h1")
        page = await browser.text()
    assert "Unknown state" in page
    assert code not in page
    assert await mgr.accounts() == []
    assert emulator.token_requests == 0


async def test_sp_api_connect_allow_on_seller_central(
    browser: Browser, make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    mgr = make_manager(authorization_base_url=emulator.seller_central_url)
    async with site(mgr, api="sp-api", application_id=APP_ID) as origin:
        await browser.open(f"{origin}/amazon/")
        await browser.click("button[type=submit]")  # no account: the seller id names it
        await browser.wait_for("button[value=allow]")
        assert "Authorize this application?" in await browser.text()
        await browser.screenshot("seller-central.png")
        await browser.click("button[value=allow]")
        await browser.wait_for("div.ok h1")
        assert emulator.selling_partner_id in await browser.text()
    assert await mgr.accounts() == [emulator.selling_partner_id]
