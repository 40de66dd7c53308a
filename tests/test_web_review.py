"""Review of the consent app (issue 17): regressions for the defects the review found."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from aioamztoken.web import SELLER_CENTRAL_URLS, consent_app
from tests.conftest import ManagerFactory

APP_ID = "amzn1.sp.solution.emulator-app"


@contextlib.asynccontextmanager
async def mounted(prefix: str, app: web.Application) -> AsyncIterator[TestClient[Any, Any]]:
    parent = web.Application()
    parent.add_subapp(prefix, app)
    async with TestClient(TestServer(parent)) as client:
        yield client


def query_of(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


class Anchors(HTMLParser):
    """The ``href`` of every ``<a>`` on a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.extend(v for k, v in attrs if k == "href" and v)


# -- the re-authorize link follows the mount prefix, whatever the redirect URI ---------------


@pytest.mark.parametrize(
    ("redirect_uri", "public"),
    [
        # A redirect URI that is not this app's /callback (another path, a front end's).
        ("http://localhost:9999/oauth/amazon-return", "http://localhost:9999/partners/connect"),
        # This app's /callback, seen through a proxy that maps another prefix onto it.
        ("https://portal.example.org/ext/callback", "https://portal.example.org/ext/connect"),
    ],
    ids=["foreign-redirect", "proxied-callback"],
)
async def test_the_reauthorize_link_works_under_the_mount_prefix(
    make_manager: ManagerFactory, emulator: AmazonEmulator, redirect_uri: str, public: str
) -> None:
    mgr = make_manager(authorization_base_url=emulator.authorization_url)
    account = "Müller & Söhne <b>"
    await mgr.add_account(account, emulator.issue_refresh_token(account))
    app = consent_app(mgr, redirect_uri=redirect_uri, operator=lambda request: True)
    async with mounted("/partners", app) as client:
        async with client.get("/partners/accounts") as resp:
            assert resp.status == 200
            page = await resp.text()
            page_url = str(resp.url)
        anchors = Anchors()
        anchors.feed(page)
        (href,) = [h for h in anchors.hrefs if "connect" in h]
        assert href.startswith("/partners/connect?")
        target = urlsplit(urljoin(page_url, href))
        async with client.get(f"{target.path}?{target.query}", allow_redirects=False) as resp:
            assert resp.status == 302, await resp.text()
            consent = resp.headers["Location"]
            assert resp.headers["Cache-Control"] == "no-store"
    assert consent.startswith(emulator.authorization_url + "?")
    assert query_of(consent)["redirect_uri"] == redirect_uri
    # The link to copy is the public one.
    assert f"<code>{public}?account=M%C3%BCller+%26+S%C3%B6hne+%3Cb%3E</code>" in page
    assert "Müller &amp; Söhne &lt;b&gt;" in page


async def test_a_reauthorize_link_leads_through_consent_to_the_same_account(
    make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    mgr = make_manager(authorization_base_url=emulator.authorization_url)
    await mgr.add_account("old-customer", emulator.issue_refresh_token("old-customer"))
    before = await mgr.store.load("old-customer")
    app = consent_app(mgr, redirect_uri="https://x.example/cb", operator=lambda r: True)
    async with mounted("/amazon", app) as client:
        async with client.get("/amazon/accounts") as resp:
            anchors = Anchors()
            anchors.feed(await resp.text())
        (href,) = [h for h in anchors.hrefs if "connect" in h]
        async with client.get(href, allow_redirects=False) as resp:
            consent = resp.headers["Location"]
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(consent, allow_redirects=False) as resp,
        ):
            back = query_of(resp.headers["Location"])
        async with client.get("/amazon/callback", params=back) as resp:
            assert resp.status == 200, await resp.text()
    after = await mgr.store.load("old-customer")
    assert before is not None
    assert after is not None
    assert after.refresh_token != before.refresh_token
    assert await mgr.accounts() == ["old-customer"]


# -- SP-API with a manager whose consent URL is Login with Amazon's ---------------------------


async def test_sp_api_with_an_lwa_consent_url_on_amazon_goes_to_seller_central(
    make_manager: ManagerFactory,
) -> None:
    for region in at.Region:
        mgr = make_manager(region=region, authorization_base_url=region.authorization_url)
        app = consent_app(
            mgr, redirect_uri="https://x.example/cb", api="sp-api", application_id=APP_ID
        )
        async with (
            mounted("/sp", app) as client,
            client.get("/sp/connect", allow_redirects=False) as resp,
        ):
            assert resp.status == 302
            location = resp.headers["Location"]
        assert location.startswith(SELLER_CENTRAL_URLS[region] + "/apps/authorize/consent?")
        assert query_of(location)["application_id"] == APP_ID


async def test_sp_api_with_the_emulators_lwa_url_uses_the_emulators_seller_central(
    make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    # One manager set up for the Ads API's consent page serves an SP-API consent app too.
    mgr = make_manager(authorization_base_url=emulator.authorization_url)
    emulator.selling_partner_id = "A3REVIEWSELLER"
    app = consent_app(mgr, redirect_uri="https://x.example/cb", api="sp-api", application_id=APP_ID)
    async with mounted("/sp", app) as client:
        async with client.get("/sp/connect", allow_redirects=False) as resp:
            location = resp.headers["Location"]
        assert location.startswith(emulator.seller_central_url + "?")
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(location, allow_redirects=False) as resp,
        ):
            assert resp.status == 302, await resp.text()
            back = query_of(resp.headers["Location"])
        async with client.get("/sp/callback", params=back) as resp:
            body = await resp.text()
            assert resp.status == 200, body
    assert back["spapi_oauth_code"] not in body
    assert await mgr.accounts() == ["A3REVIEWSELLER"]


# -- aioamztoken serve: a redirect URI it cannot answer is pointed out ------------------------


async def test_serve_warns_when_the_redirect_uri_is_not_its_callback(
    emulator: AmazonEmulator, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOAMZTOKEN_")}
    env.update(
        AIOAMZTOKEN_CLIENT_ID=emulator.client_id,
        AIOAMZTOKEN_CLIENT_SECRET=emulator.client_secret,
        AIOAMZTOKEN_TOKEN_URL=emulator.token_url,
        AIOAMZTOKEN_STORE=(tmp_path / "tokens.json").as_uri(),
    )
    lines: dict[str, list[str]] = {}
    for redirect in ("https://consent.example.com/oauth/return", "https://c.example/callback"):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aioamztoken",
            "serve",
            "--redirect-uri",
            redirect,
            "--port",
            "0",
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        try:
            assert proc.stderr is not None
            first = (await asyncio.wait_for(proc.stderr.readline(), 60)).decode()
            assert first.startswith("serving the consent app on http://127.0.0.1:"), first
            proc.send_signal(signal.SIGTERM)
            _, rest = await asyncio.wait_for(proc.communicate(), 60)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.communicate()
        assert proc.returncode == 0
        lines[redirect] = rest.decode().splitlines()
    (warning, stopped) = lines["https://consent.example.com/oauth/return"]
    assert "does not end in /callback" in warning
    assert "https://consent.example.com/oauth/return" in warning
    assert stopped == "stopped"
    assert lines["https://c.example/callback"] == ["stopped"]
