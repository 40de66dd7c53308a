"""The emulator's HTML consent pages: Login with Amazon's /ap/oa and Seller Central's."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from aioamztoken import make_pkce_pair
from aioamztoken.testing import AmazonEmulator

REDIRECT = "https://app.example.com/callback"
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


class Form(HTMLParser):
    """The fields and buttons of the one form on a page."""

    def __init__(self) -> None:
        super().__init__()
        self.method = ""
        self.fields: dict[str, str] = {}
        self.buttons: dict[str, tuple[str, str]] = {}
        self._button: tuple[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.method = a.get("method", "get")
        elif tag == "input":
            self.fields[a["name"]] = a.get("value", "")
        elif tag == "button":
            self._button = (a["name"], a["value"])

    def handle_data(self, data: str) -> None:
        if self._button is not None and data.strip():
            self.buttons[data.strip()] = self._button
            self._button = None


async def page_form(http: aiohttp.ClientSession, url: str, params: dict[str, str]) -> Form:
    async with http.get(url, params=params, headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "text/html"
        form = Form()
        form.feed(await resp.text())
    assert form.method == "post"
    return form


async def press(
    http: aiohttp.ClientSession, url: str, form: Form, button: str, **changes: str
) -> dict[str, str]:
    """Submit the form with ``button``; the query the browser is redirected with."""
    name, value = form.buttons[button]
    data = {**form.fields, **changes, name: value}
    async with http.post(url, data=data, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        target = urlsplit(resp.headers["Location"])
    assert f"{target.scheme}://{target.netloc}{target.path}" == REDIRECT
    return dict(parse_qsl(target.query))


def ads_query(emulator: AmazonEmulator, **extra: str) -> dict[str, str]:
    return {
        "client_id": emulator.client_id,
        "scope": "advertising::campaign_management",
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "state": "st-1",
        **extra,
    }


async def exchange(
    http: aiohttp.ClientSession, emulator: AmazonEmulator, code: str, **form: str
) -> int:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "client_id": emulator.client_id,
        "client_secret": emulator.client_secret,
        **form,
    }
    async with http.post(emulator.token_url, data=data) as resp:
        return resp.status


async def test_a_browser_gets_the_ads_consent_page_and_allow_issues_a_code(
    emulator: AmazonEmulator,
) -> None:
    verifier, challenge = make_pkce_pair()
    query = ads_query(emulator, code_challenge=challenge, code_challenge_method="S256")
    async with aiohttp.ClientSession() as http:
        form = await page_form(http, emulator.authorization_url, query)
        assert set(form.buttons) == {"Allow", "Deny"}
        assert form.fields["account"] == emulator.consent_account
        back = await press(http, emulator.authorization_url, form, "Allow", account="seller-7")
        assert back["state"] == "st-1"
        assert back["scope"] == "advertising::campaign_management"
        assert await exchange(http, emulator, back["code"], code_verifier=verifier) == 200
    assert emulator.last_consent == query
    assert emulator.current_access_token("seller-7") is not None


async def test_deny_sends_access_denied_back_with_the_state(emulator: AmazonEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        form = await page_form(http, emulator.authorization_url, ads_query(emulator))
        back = await press(http, emulator.authorization_url, form, "Deny")
    assert back == {
        "error": "access_denied",
        "error_description": "The user denied the request",
        "state": "st-1",
    }
    assert emulator.code_grants == 0


async def test_clients_that_do_not_ask_for_html_are_approved_at_once_unless_told(
    emulator: AmazonEmulator,
) -> None:
    async with aiohttp.ClientSession() as http:
        url = emulator.authorization_url
        async with http.get(url, params=ads_query(emulator), allow_redirects=False) as resp:
            assert resp.status == 302
        emulator.consent_page = True
        async with http.get(url, params=ads_query(emulator), allow_redirects=False) as resp:
            assert resp.status == 200
            assert "Allow" in await resp.text()
        emulator.consent_page = False
        params = ads_query(emulator)
        async with http.get(url, params=params, headers=HTML, allow_redirects=False) as resp:
            assert resp.status == 302


async def test_a_bad_consent_request_is_refused_on_the_page_and_on_post(
    emulator: AmazonEmulator,
) -> None:
    async with aiohttp.ClientSession() as http:
        bad = ads_query(emulator, client_id="someone-else")
        async with http.get(emulator.authorization_url, params=bad, headers=HTML) as resp:
            assert resp.status == 400
            assert "unknown client_id" in await resp.text()
        async with http.post(emulator.authorization_url, data={**bad, "decision": "allow"}) as resp:
            assert resp.status == 400
        async with http.put(emulator.authorization_url) as resp:
            assert resp.status == 405
    assert emulator.code_grants == 0


def sp_query(emulator: AmazonEmulator, **extra: str) -> dict[str, str]:
    return {
        "application_id": emulator.spapi_application_id,
        "state": "sp-state",
        "redirect_uri": REDIRECT,
        **extra,
    }


async def test_seller_central_page_allow_sends_the_website_workflow_parameters(
    emulator: AmazonEmulator,
) -> None:
    async with aiohttp.ClientSession() as http:
        form = await page_form(http, emulator.seller_central_url, sp_query(emulator))
        assert set(form.buttons) == {"Allow", "Deny"}
        back = await press(http, emulator.seller_central_url, form, "Allow", account="A2SELLER")
        assert back.keys() == {"state", "selling_partner_id", "spapi_oauth_code"}
        assert back["state"] == "sp-state"
        assert back["selling_partner_id"] == "A2SELLER"
        assert await exchange(http, emulator, back["spapi_oauth_code"]) == 200
    assert emulator.last_seller_consent == sp_query(emulator)
    assert emulator.current_access_token("A2SELLER") is not None


async def test_seller_central_deny_and_auto_approval(emulator: AmazonEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        form = await page_form(http, emulator.seller_central_url, sp_query(emulator))
        back = await press(http, emulator.seller_central_url, form, "Deny")
        assert back["error"] == "access_denied"
        assert back["state"] == "sp-state"
        url = emulator.seller_central_url
        async with http.get(url, params=sp_query(emulator), allow_redirects=False) as resp:
            assert resp.status == 302
            back = dict(parse_qsl(urlsplit(resp.headers["Location"]).query))
        assert back["selling_partner_id"] == emulator.selling_partner_id
        async with http.delete(url) as resp:
            assert resp.status == 405


@pytest.mark.parametrize(
    ("setup", "change", "problem"),
    [
        ({}, {"application_id": "amzn1.sp.solution.other"}, "unknown application_id"),
        ({"spapi_app_draft": True}, {}, "MD1000"),
        ({"spapi_redirect_uris": ("https://elsewhere/cb",)}, {}, "MD5101"),
        ({}, {"redirect_uri": ""}, "no redirect_uri"),
    ],
    ids=["app-id", "draft-without-beta", "unregistered-redirect", "no-redirect"],
)
async def test_seller_central_refuses_what_amazon_refuses(
    emulator: AmazonEmulator, setup: dict[str, object], change: dict[str, str], problem: str
) -> None:
    for name, value in setup.items():
        setattr(emulator, name, value)
    async with aiohttp.ClientSession() as http:
        params = sp_query(emulator, **change)
        async with http.get(emulator.seller_central_url, params=params, headers=HTML) as resp:
            assert resp.status == 400
            assert problem in await resp.text()
    assert emulator.code_grants == 0


async def test_a_draft_app_with_version_beta_and_the_registered_redirect(
    emulator: AmazonEmulator,
) -> None:
    emulator.spapi_app_draft = True
    emulator.spapi_redirect_uris = (REDIRECT, "https://app.example.com/other")
    params = sp_query(emulator, version="beta")
    del params["redirect_uri"]
    async with aiohttp.ClientSession() as http:
        form = await page_form(http, emulator.seller_central_url, params)
        back = await press(http, emulator.seller_central_url, form, "Allow")
        assert await exchange(http, emulator, back["spapi_oauth_code"]) == 200
