"""The consent app (aioamztoken.web) driven with aiohttp's test client against the emulator."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from aioamztoken.web import SELLER_CENTRAL_URLS, SETTINGS, consent_app
from tests.conftest import ManagerFactory

REDIRECT = "https://app.example.com/amazon/callback"
APP_ID = "amzn1.sp.solution.emulator-app"


@contextlib.asynccontextmanager
async def serving(*apps: tuple[str, web.Application]) -> AsyncIterator[TestClient[Any, Any]]:
    """A test client of a parent app with each consent app mounted at its prefix."""
    parent = web.Application()
    for prefix, app in apps:
        parent.add_subapp(prefix, app)
    async with TestClient(TestServer(parent)) as client:
        yield client


@pytest.fixture
def mgr(make_manager: ManagerFactory, emulator: AmazonEmulator) -> at.AsyncTokenManager:
    return make_manager(authorization_base_url=emulator.authorization_url)


def assert_self_contained(page: str) -> None:
    """Server-rendered, with no script and no external asset."""
    assert page.startswith("<!DOCTYPE html>")
    assert '<html lang="en">' in page
    assert "<title>" in page
    for forbidden in ("<script", "<link", "src=", "@import", "url("):
        assert forbidden not in page


def query_of(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


async def connect(
    client: TestClient[Any, Any], account: str | None, prefix: str = "/amazon"
) -> str:
    """The consent URL that ``/connect`` redirects to."""
    params = {} if account is None else {"account": account}
    async with client.get(f"{prefix}/connect", params=params, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        return resp.headers["Location"]


async def consent(url: str) -> dict[str, str]:
    """Play the browser at the emulator's consent page (it approves at once for non-HTML
    clients): the query string it sends back to the redirect URI."""
    async with aiohttp.ClientSession() as browser, browser.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return query_of(location)


async def callback(
    client: TestClient[Any, Any], params: dict[str, str], prefix: str = "/amazon"
) -> tuple[int, str, Any]:
    async with client.get(f"{prefix}/callback", params=params, allow_redirects=False) as resp:
        assert resp.headers["Cache-Control"] == "no-store"
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        return resp.status, await resp.text(), resp.headers


# -- the Ads flow ---------------------------------------------------------------------------


async def test_connect_redirects_to_the_consent_page_with_a_fresh_state_and_pkce(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        first = await connect(client, "acme")
        second = await connect(client, "acme")
    assert first.startswith(emulator.authorization_url + "?")
    query = query_of(first)
    assert query["client_id"] == emulator.client_id
    assert query["response_type"] == "code"
    assert query["redirect_uri"] == REDIRECT
    assert query["scope"] == "advertising::campaign_management"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32
    assert query["state"] != query_of(second)["state"]
    assert query["code_challenge"] != query_of(second)["code_challenge"]
    assert emulator.token_requests == 0


async def test_consent_round_trip_stores_the_account_and_shows_a_success_page(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT, scope="advertising::audiences")
    async with serving(("/amazon", app)) as client:
        url = await connect(client, "acme")
        assert query_of(url)["scope"] == "advertising::audiences"
        params = await consent(url)
        status, body, headers = await callback(client, params)
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "Account connected" in body
    assert "acme" in body
    assert_self_contained(body)
    assert params["code"] not in body
    assert params["state"] not in body
    stored = await mgr.store.load("acme")
    assert stored is not None
    assert stored.access_token == emulator.current_access_token(emulator.consent_account)
    assert stored.refresh_token not in body
    assert stored.access_token not in body
    assert emulator.code_grants == 1


async def test_success_url_gets_a_303(mgr: at.AsyncTokenManager) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT, success_url="https://app.example.com/done")
    async with serving(("/amazon", app)) as client:
        params = await consent(await connect(client, "acme"))
        status, _, headers = await callback(client, params)
    assert status == 303
    assert headers["Location"] == "https://app.example.com/done"
    assert await mgr.accounts() == ["acme"]


async def test_a_fresh_page_offers_the_connect_button(mgr: at.AsyncTokenManager) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        async with client.get("/amazon/", params={"account": "acme <b>"}) as resp:
            assert resp.status == 200
            page = await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
        async with client.get("/amazon/") as resp:
            blank = await resp.text()
    assert '<html lang="en">' in page
    assert 'action="connect"' in page
    assert ">Connect</button>" in page
    assert "acme &lt;b&gt;" in page
    assert "acme <b>" not in page
    assert 'id="account"' in blank
    assert "required" in blank
    assert "http://" not in page.split("</head>")[1]  # no external asset, relative links only


# -- failures -------------------------------------------------------------------------------


async def assert_nothing_stored(mgr: at.AsyncTokenManager, emulator: AmazonEmulator) -> None:
    assert await mgr.accounts() == []
    assert emulator.code_grants == 0


@pytest.mark.parametrize(
    ("state", "title"),
    [
        (None, "Missing state"),
        ("", "Missing state"),
        ("attacker-state", "Unknown state"),
        ("s1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "Unknown state"),
        ("s1.%%%", "Unknown state"),
        ("s1.AAAAA", "Unknown state"),
        ("s1." + "A" * 5000, "Unknown state"),
    ],
    ids=["absent", "empty", "forged", "garbage", "not-base64", "bad-length", "huge"],
)
async def test_a_missing_or_forged_state_is_a_400_page_and_nothing_is_stored(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator, state: str | None, title: str
) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        params = await consent(await connect(client, "acme"))
        if state is None:
            del params["state"]
        else:
            params["state"] = state
        status, body, headers = await callback(client, params)
    assert status == 400
    assert headers["Content-Type"].startswith("text/html")
    assert title in body
    assert 'role="alert"' in body
    assert_self_contained(body)
    assert "Nothing was saved" in body
    assert params["code"] not in body
    await assert_nothing_stored(mgr, emulator)


async def test_a_tampered_state_or_one_from_another_app_is_refused(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT)
    other = consent_app(mgr, redirect_uri=REDIRECT, state_key="another key")
    async with serving(("/amazon", app), ("/other", other)) as client:
        params = await consent(await connect(client, "acme", prefix="/other"))
        status, body, _ = await callback(client, params)
        assert (status, "Unknown state" in body) == (400, True)
        params = await consent(await connect(client, "acme"))
        state = params["state"]
        flipped = state[:-5] + ("A" if state[-5] != "A" else "B") + state[-4:]
        status, body, _ = await callback(client, {**params, "state": flipped})
        assert (status, "Unknown state" in body) == (400, True)
    await assert_nothing_stored(mgr, emulator)


async def test_an_expired_state_is_refused(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT, state_ttl=0.5)
    async with serving(("/amazon", app)) as client:
        params = await consent(await connect(client, "acme"))
        await asyncio.sleep(1.0)
        status, body, _ = await callback(client, params)
    assert status == 400
    assert "expired" in body
    await assert_nothing_stored(mgr, emulator)


async def test_a_state_works_once(mgr: at.AsyncTokenManager, emulator: AmazonEmulator) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        params = await consent(await connect(client, "acme"))
        assert (await callback(client, params))[0] == 200
        stored = await mgr.store.load("acme")
        status, body, _ = await callback(client, params)
    assert status == 400
    assert "already been used" in body
    assert await mgr.store.load("acme") == stored
    assert emulator.code_grants == 1
    assert emulator.token_requests == 1  # the replay never reached Amazon


async def test_a_state_used_by_another_process_is_not_used_again(
    make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    store = at.MemoryTokenStore()
    first = make_manager(store=store, authorization_base_url=emulator.authorization_url)
    second = make_manager(store=store, authorization_base_url=emulator.authorization_url)
    async with serving(
        ("/a", consent_app(first, redirect_uri=REDIRECT)),
        ("/b", consent_app(second, redirect_uri=REDIRECT)),
    ) as client:
        params = await consent(await connect(client, "acme", prefix="/a"))
        assert (await callback(client, params, prefix="/a"))[0] == 200
        stored = await store.load("acme")
        status, _body, _ = await callback(client, params, prefix="/b")
    # With Token.authorized_at the store tells every process that the state was used;
    # without it, Amazon refuses the spent code. Either way nothing changes.
    used_state = "authorized_at" in at.Token.__dataclass_fields__
    assert status == (400 if used_state else 502)
    assert await store.load("acme") == stored
    assert emulator.code_grants == 1


async def test_an_error_callback_is_a_400_page_that_says_access_was_not_granted(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        url = await connect(client, "acme")
        state = query_of(url)["state"]
        denied = {
            "error": "access_denied",
            "error_description": "The user denied the request",
            "state": state,
        }
        status, body, _ = await callback(client, denied)
        assert status == 400
        assert "Authorization declined" in body
        assert "not granted" in body
        assert "access_denied" in body
        # The state was spent by the refusal; an error without any state is refused too.
        status, body, _ = await callback(client, {"error": "server_error"})
        assert status == 400
        assert "Amazon did not authorize" in body
    await assert_nothing_stored(mgr, emulator)
    assert emulator.token_requests == 0


async def test_an_error_description_is_escaped(mgr: at.AsyncTokenManager) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        status, body, _ = await callback(
            client, {"error": "x", "error_description": "<script>alert(1)</script>"}
        )
    assert status == 400
    assert "<script>" not in body
    assert "&lt;script&gt;" in body


async def test_a_failed_exchange_is_a_502_page_without_the_code(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        params = await consent(await connect(client, "acme"))
        forged = {**params, "code": "ANcodeForgedByTheTest0123456789"}
        status, body, _ = await callback(client, forged)
    assert status == 502
    assert "Amazon refused the authorization code" in body
    assert forged["code"] not in body
    assert params["code"] not in body
    assert emulator.client_secret not in body
    await assert_nothing_stored(mgr, emulator)
    assert emulator.token_requests == 1


async def test_an_endpoint_that_keeps_failing_is_a_502_page(
    make_manager: ManagerFactory, emulator: AmazonEmulator
) -> None:
    mgr = make_manager(
        authorization_base_url=emulator.authorization_url, max_retries=2, retry_budget=5
    )
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        params = await consent(await connect(client, "acme"))
        emulator.fail_next(5, status=503)
        status, body, _ = await callback(client, params)
    assert status == 502
    assert "did not accept" in body
    assert params["code"] not in body
    await assert_nothing_stored(mgr, emulator)


async def test_a_missing_or_doubled_code_is_refused(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        params = await consent(await connect(client, "acme"))
        status, body, _ = await callback(client, {"state": params["state"]})
        assert status == 400
        assert "no authorization code" in body
        params = await consent(await connect(client, "acme"))
        doubled = urlencode([("state", params["state"]), ("code", "a"), ("code", "b")])
        async with client.get("/amazon/callback?" + doubled) as resp:
            assert resp.status == 400
    await assert_nothing_stored(mgr, emulator)


@pytest.mark.parametrize(
    "query",
    [{}, {"account": ""}, {"account": "a\x00b"}, {"account": "x" * 300}, "account=a&account=b"],
    ids=["none", "empty", "control-char", "too-long", "twice"],
)
async def test_connect_needs_a_sensible_account(
    mgr: at.AsyncTokenManager, query: dict[str, str] | str
) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT)
    async with (
        serving(("/amazon", app)) as client,
        client.get("/amazon/connect", params=query, allow_redirects=False) as resp,
    ):
        assert resp.status == 400
        assert "Cannot start the authorization" in await resp.text()
        assert resp.headers["Referrer-Policy"] == "no-referrer"


async def test_a_store_that_cannot_save_is_a_500_page(
    make_manager: ManagerFactory, emulator: AmazonEmulator, tmp_path: Any
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the store wants a directory")
    store = at.DirectoryTokenStore(blocked / "tokens")
    mgr = make_manager(store=store, authorization_base_url=emulator.authorization_url)
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        params = await consent(await connect(client, "acme"))
        status, body, _ = await callback(client, params)
    assert status == 500
    assert "could not be saved" in body
    assert params["code"] not in body


# -- the SP-API website authorization workflow ----------------------------------------------


@pytest.fixture
def sp_mgr(make_manager: ManagerFactory, emulator: AmazonEmulator) -> at.AsyncTokenManager:
    return make_manager(authorization_base_url=emulator.seller_central_url)


async def seller_consent(url: str) -> dict[str, str]:
    async with aiohttp.ClientSession() as browser, browser.get(url, allow_redirects=False) as resp:
        assert resp.status == 302, await resp.text()
        return query_of(resp.headers["Location"])


async def test_sp_api_connect_goes_to_seller_central_with_the_documented_parameters(
    sp_mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    app = consent_app(sp_mgr, redirect_uri=REDIRECT, api="sp-api", application_id=APP_ID)
    draft = consent_app(
        sp_mgr, redirect_uri=REDIRECT, api="sp-api", application_id=APP_ID, draft=True
    )
    async with serving(("/sp", app), ("/draft", draft)) as client:
        url = await connect(client, None, prefix="/sp")
        beta = await connect(client, "acme", prefix="/draft")
    assert url.startswith(emulator.seller_central_url + "?")
    query = query_of(url)
    assert query.keys() == {"application_id", "state", "redirect_uri"}
    assert query["application_id"] == APP_ID
    assert query["redirect_uri"] == REDIRECT
    assert query_of(beta)["version"] == "beta"


async def test_sp_api_callback_stores_the_selling_partner(
    sp_mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    app = consent_app(sp_mgr, redirect_uri=REDIRECT, api="sp-api", application_id=APP_ID)
    async with serving(("/sp", app)) as client:
        params = await seller_consent(await connect(client, None, prefix="/sp"))
        assert params.keys() == {"state", "selling_partner_id", "spapi_oauth_code"}
        status, body, _ = await callback(client, params, prefix="/sp")
        assert status == 200, body
        assert params["spapi_oauth_code"] not in body
        # An account named at /connect wins over the seller id.
        params = await seller_consent(await connect(client, "acme-eu", prefix="/sp"))
        assert (await callback(client, params, prefix="/sp"))[0] == 200
    seller = emulator.selling_partner_id
    assert await sp_mgr.accounts() == sorted(["acme-eu", seller])
    stored = await sp_mgr.store.load(seller)
    assert stored is not None
    assert emulator.token_requests_for(seller) == 2


async def test_sp_api_failures(sp_mgr: at.AsyncTokenManager, emulator: AmazonEmulator) -> None:
    app = consent_app(sp_mgr, redirect_uri=REDIRECT, api="sp-api", application_id=APP_ID)
    async with serving(("/sp", app)) as client:
        params = await seller_consent(await connect(client, None, prefix="/sp"))
        no_seller = {k: v for k, v in params.items() if k != "selling_partner_id"}
        status, body, _ = await callback(client, no_seller, prefix="/sp")
        assert (status, "named no selling partner" in body) == (400, True)
        params = await seller_consent(await connect(client, None, prefix="/sp"))
        status, body, _ = await callback(client, {**params, "state": "forged"}, prefix="/sp")
        assert status == 400
        bogus = {**params, "spapi_oauth_code": "ANcodeBogus"}
        status, body, _ = await callback(client, bogus, prefix="/sp")
        assert status == 502
        assert "ANcodeBogus" not in body
    assert await sp_mgr.accounts() == []
    assert emulator.code_grants == 0


async def test_sp_api_defaults_to_the_regions_seller_central(
    make_manager: ManagerFactory,
) -> None:
    for region in at.Region:
        mgr = make_manager(region=region)
        app = consent_app(mgr, redirect_uri=REDIRECT, api="sp-api", application_id=APP_ID)
        async with serving(("/sp", app)) as client:
            url = await connect(client, "acme", prefix="/sp")
        assert url.startswith(SELLER_CENTRAL_URLS[region] + "/apps/authorize/consent?")
    assert SELLER_CENTRAL_URLS[at.Region.EU] == "https://sellercentral-europe.amazon.com"


# -- the operator page ----------------------------------------------------------------------


async def test_no_operator_no_accounts_page(mgr: at.AsyncTokenManager) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT)
    async with serving(("/amazon", app)) as client, client.get("/amazon/accounts") as resp:
        assert resp.status == 404


async def test_the_operator_decides_who_sees_the_accounts(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    seen: list[str] = []

    async def operator(request: web.Request) -> bool:
        seen.append(request.path)
        return request.headers.get("X-Operator") == "yes"

    await mgr.add_account("acme", emulator.issue_refresh_token("acme"))
    app = consent_app(mgr, redirect_uri=REDIRECT, operator=operator)
    async with serving(("/amazon", app)) as client:
        async with client.get("/amazon/accounts") as resp:
            assert resp.status == 403
            assert "acme" not in await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
        async with client.get("/amazon/accounts", headers={"X-Operator": "yes"}) as resp:
            assert resp.status == 200
    assert seen == ["/amazon/accounts", "/amazon/accounts"]


async def test_the_operator_page_lists_every_account_with_a_reauthorize_link(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    for name in ("acme", "globex", "needs reauth & co"):
        await mgr.add_account(name, emulator.issue_refresh_token(name))
    await mgr.get_access_token("acme")
    emulator.revoke("needs reauth & co")
    with pytest.raises(at.InvalidGrantError):
        await mgr.get_access_token("needs reauth & co")
    app = consent_app(mgr, redirect_uri=REDIRECT, operator=lambda request: True)
    async with serving(("/amazon", app)) as client, client.get("/amazon/accounts") as resp:
        assert resp.status == 200
        assert resp.headers["Referrer-Policy"] == "no-referrer"
        page = await resp.text()
    assert "<caption>3 accounts</caption>" in page
    assert_self_contained(page)
    assert 'aria-label="re-authorize acme"' in page
    assert '<th scope="col">State</th>' in page
    assert '<th scope="row">acme</th>' in page
    assert "needs reauth &amp; co" in page
    assert "needs-reauth" in page
    assert "https://app.example.com/amazon/connect?account=acme" in page
    assert "https://app.example.com/amazon/connect?account=needs+reauth+%26+co" in page
    assert ">re-authorize</a>" in page
    assert "fresh" in page
    assert "no access token yet" in page
    for name in ("acme", "globex"):
        token = await mgr.store.load(name)
        assert token is not None
        assert token.refresh_token not in page
        assert not token.access_token or token.access_token not in page


async def test_the_operator_page_shows_authorization_age_where_known(
    mgr: at.AsyncTokenManager,
) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT, operator=lambda request: True)
    async with serving(("/amazon", app)) as client:
        params = await consent(await connect(client, "acme"))
        assert (await callback(client, params))[0] == 200
        async with client.get("/amazon/accounts") as resp:
            page = await resp.text()
    status = await mgr.status("acme")
    if getattr(status, "authorized_at", None) is not None:
        assert "just now" in page
    else:
        assert "unknown" in page


# -- settings ------------------------------------------------------------------------------


async def test_one_process_mounts_two_consent_apps_with_their_own_settings(
    mgr: at.AsyncTokenManager, sp_mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    ads = consent_app(mgr, redirect_uri=REDIRECT)
    sp = consent_app(sp_mgr, redirect_uri=REDIRECT, api="sp-api", application_id=APP_ID)
    assert ads[SETTINGS].api == "ads"
    assert sp[SETTINGS].api == "sp-api"
    async with serving(("/ads", ads), ("/sp", sp)) as client:
        assert (await connect(client, "a", prefix="/ads")).startswith(emulator.authorization_url)
        assert (await connect(client, "a", prefix="/sp")).startswith(emulator.seller_central_url)
        # A state of one app means nothing to the other.
        params = await consent(await connect(client, "a", prefix="/ads"))
        status, _, _ = await callback(
            client, {"state": params["state"], "spapi_oauth_code": params["code"]}, prefix="/sp"
        )
        assert status == 400


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"redirect_uri": "/callback"}, ValueError),
        ({"redirect_uri": "ftp://x/callback"}, ValueError),
        ({"api": "mws"}, ValueError),
        ({"api": "sp-api"}, ValueError),
        ({"state_ttl": 0}, ValueError),
        ({"state_key": b""}, ValueError),
        ({"operator": "yes"}, TypeError),
    ],
    ids=["relative", "ftp", "unknown-api", "sp-api-without-app-id", "ttl", "key", "operator"],
)
def test_bad_settings_are_refused_at_once(
    mgr: at.AsyncTokenManager, options: dict[str, Any], problem: type[Exception]
) -> None:
    options = {"redirect_uri": REDIRECT, **options}
    with pytest.raises(problem):
        consent_app(mgr, **options)


def test_the_operator_page_renders_authorization_age_and_due_dates() -> None:
    from aioamztoken.web import _pages

    now = 1_800_000_000.0
    rows = [
        _pages.AccountRow(
            "seller <1>",
            "expired",
            now - 7200,
            "TokenEndpointError: token endpoint answered 503",
            now - 40 * 86400,
            now + 325 * 86400,
            "https://app.example.com/connect?account=seller+%3C1%3E",
        )
    ]
    page = _pages.accounts_page(rows, api_name="Amazon Selling Partner API", now=now)
    assert "seller &lt;1&gt;" in page
    assert "2 hours ago" in page
    assert "40 days ago" in page
    assert "re-authorize by" in page
    assert '<time datetime="2027-01-15T06:00:00Z">' in page
    assert "token endpoint answered 503" in page
    assert "<caption>1 account</caption>" in page
    assert "No accounts yet" in _pages.accounts_page([], api_name="Amazon Ads")


async def test_an_unreadable_account_is_shown_as_such_and_the_page_still_renders(
    make_manager: ManagerFactory, emulator: AmazonEmulator, tmp_path: Any
) -> None:
    store = at.DirectoryTokenStore(tmp_path / "tokens")
    mgr = make_manager(store=store)
    await mgr.add_account("good", emulator.issue_refresh_token("good"))
    await mgr.add_account("bad", emulator.issue_refresh_token("bad"))
    for path in (tmp_path / "tokens").iterdir():
        if "bad" in path.name:
            path.write_text("{not json")
    app = consent_app(mgr, redirect_uri=REDIRECT, operator=lambda request: True)
    async with serving(("/amazon", app)) as client, client.get("/amazon/accounts") as resp:
        assert resp.status == 200
        page = await resp.text()
    assert '<td class="state-unreadable">unreadable</td>' in page
    assert "StorageError" in page
    assert '<th scope="row">good</th>' in page


def test_spent_states_are_forgotten_once_expired_and_reprs_hold_no_secret() -> None:
    from aioamztoken.web._state import StateError, StateSealer

    sealer = StateSealer(b"key material", binding="app", ttl=0.2)
    first = sealer.open(sealer.seal("acme", "verifier-secret"))
    sealer.spend(first)
    assert "verifier-secret" not in repr(first)
    assert "spent=1" in repr(sealer)
    time.sleep(0.3)
    second = sealer.open(sealer.seal("acme", None))
    sealer.spend(second)
    assert "spent=1" in repr(sealer)  # the expired one was dropped
    state = sealer.seal(None, None)
    sealer.spend(sealer.open(state))
    with pytest.raises(StateError) as refused:
        sealer.open(state)
    assert refused.value.reason == "reused"


async def test_two_racing_callbacks_with_one_state_exchange_once(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator
) -> None:
    emulator.latency = 0.2  # keeps the first exchange in flight while the second arrives
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        params = await consent(await connect(client, "acme"))
        answers = await asyncio.gather(*(callback(client, params) for _ in range(5)))
    assert sorted(status for status, _, _ in answers) == [200, 400, 400, 400, 400]
    assert emulator.token_requests == 1
    assert emulator.code_grants == 1


@pytest.mark.parametrize("prefix", ["/amazon", ""])
async def test_every_response_even_an_error_of_the_router_is_neither_cached_nor_referred(
    mgr: at.AsyncTokenManager, prefix: str
) -> None:
    app = consent_app(mgr, redirect_uri=REDIRECT)
    client = TestClient(TestServer(app)) if not prefix else None
    async with contextlib.AsyncExitStack() as stack:
        if client is None:
            client = await stack.enter_async_context(serving((prefix, app)))
        else:
            await stack.enter_async_context(client)
        for method, path, status in [
            ("POST", "/connect", 405),
            ("GET", "/nowhere", 404),
            ("GET", "/accounts", 404),
            ("GET", "/", 200),
        ]:
            async with client.request(method, prefix + path, allow_redirects=False) as resp:
                assert resp.status == status
                assert resp.headers["Cache-Control"] == "no-store"
                assert resp.headers["Referrer-Policy"] == "no-referrer"
                assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_no_code_state_or_token_reaches_the_logs(
    mgr: at.AsyncTokenManager, emulator: AmazonEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    # aiohttp's access log writes each request line, query string included: the filter
    # the docs recommend for it masks codes and states.
    access = logging.getLogger("aiohttp.access")
    redacting = at.RedactingFilter()
    access.addFilter(redacting)
    try:
        seen = await _round_trips_for_the_logs(mgr)
    finally:
        access.removeFilter(redacting)
    assert any(r.name == "aiohttp.access" for r in caplog.records)
    stored = await mgr.store.load("acme")
    assert stored is not None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "connected" in text  # the app does log what happened
    for secret in (*seen, stored.access_token, stored.refresh_token, emulator.client_secret):
        assert secret not in text


async def _round_trips_for_the_logs(mgr: at.AsyncTokenManager) -> list[str]:
    """A success, a refused exchange and a refusal; the codes and states they used."""
    async with serving(("/amazon", consent_app(mgr, redirect_uri=REDIRECT))) as client:
        good = await consent(await connect(client, "acme"))
        assert (await callback(client, good))[0] == 200
        bad = await consent(await connect(client, "globex"))
        assert (await callback(client, {**bad, "code": "ANcodeRefused"}))[0] == 502
        assert (await callback(client, {**bad, "error": "access_denied"}))[0] == 400
    return [good["code"], good["state"], bad["code"], bad["state"], "ANcodeRefused"]


def test_the_redacting_filter_masks_sp_api_codes_and_consent_states() -> None:
    from aioamztoken._logging import redact

    line = 'GET /callback?state=s1.abc_DEF-123&selling_partner_id=A1&spapi_oauth_code=ANxyz HTTP/1.1'
    cleaned = redact(line)
    assert "ANxyz" not in cleaned
    assert "s1.abc_DEF-123" not in cleaned
    assert "selling_partner_id=A1" in cleaned
    assert redact("state=plain") == "state=plain"  # only a sealed state is masked
