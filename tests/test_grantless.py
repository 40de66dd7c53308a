"""Grantless tokens (client_credentials per scope) and their aiohttp and httpx adapters."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import httpx
import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory

NOTIFICATIONS = "sellingpartnerapi::notifications"
ROTATION = "sellingpartnerapi::client_credential:rotation"


async def test_two_scopes_and_100_callers_each_cause_two_token_requests(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    tokens = await asyncio.gather(
        *(mgr.get_grantless_token(scope) for scope in [NOTIFICATIONS, ROTATION] * 100)
    )
    assert emulator.token_requests == 2
    assert emulator.client_credentials_grants_for(NOTIFICATIONS) == 1
    assert emulator.client_credentials_grants_for(ROTATION) == 1
    assert len(set(tokens[0::2])) == 1
    assert len(set(tokens[1::2])) == 1
    assert tokens[0] != tokens[1]
    assert [r.grant_type for r in emulator.token_log] == ["client_credentials"] * 2
    # Cached afterwards: no further request, and nothing was written to the store.
    assert await mgr.get_grantless_token(NOTIFICATIONS) == tokens[0]
    assert emulator.token_requests == 2
    assert await mgr.accounts() == []


async def test_invalid_client_and_invalid_scope_are_typed_errors(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    with pytest.raises(at.TokenRefreshError) as caught:
        await mgr.get_grantless_token("sellingpartnerapi::nonsense")
    assert caught.value.error == "invalid_scope"
    assert not isinstance(caught.value, (at.InvalidGrantError, at.InvalidClientError))
    wrong = at.AsyncTokenManager(
        emulator.client_id,
        "wrong-secret",
        store=at.MemoryTokenStore(),
        token_url=emulator.token_url,
    )
    async with wrong:
        with pytest.raises(at.InvalidClientError):
            await wrong.get_grantless_token(NOTIFICATIONS)
    with pytest.raises(ValueError):
        await mgr.get_grantless_token(" ")


async def test_grantless_tokens_are_refreshed_in_the_background(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.token_lifetime = 2.0
    mgr = make_manager()
    first = await mgr.get_grantless_token(NOTIFICATIONS)
    deadline = time.monotonic() + 15
    while emulator.client_credentials_grants_for(NOTIFICATIONS) < 2:
        assert time.monotonic() < deadline, "no background refresh"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)
    assert await mgr.get_grantless_token(NOTIFICATIONS) != first


async def test_grantless_middleware_signs_grantless_operations(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    middleware = mgr.grantless_middleware(NOTIFICATIONS, origins=[emulator.spapi_url])
    async with aiohttp.ClientSession(middlewares=[middleware]) as http:
        async with http.get(f"{emulator.spapi_url}/notifications/v1/destinations") as resp:
            assert resp.status == 200
            body = (await resp.json())["payload"]
        assert body["scope"] == NOTIFICATIONS
        assert "Authorization" not in body["headers"]
        # Expired: Amazon's 403 is answered with one token request and one retry.
        emulator.expire_grantless_tokens()
        emulator.reset_counters()
        async with http.get(f"{emulator.spapi_url}/notifications/v1/destinations") as resp:
            assert resp.status == 200
        assert emulator.client_credentials_grants == 1
        assert [r.status for r in emulator.spapi_log] == [403, 200]
        # A grantless token is refused elsewhere with empty details: returned as it is.
        emulator.reset_counters()
        async with http.get(f"{emulator.spapi_url}/orders/v0/orders") as resp:
            assert resp.status == 403
        assert emulator.token_requests == 0
        assert emulator.spapi_requests == 1


async def test_grantless_httpx_auth_and_concurrent_rejections(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    auth = mgr.grantless_httpx_auth(ROTATION, origins=[emulator.spapi_url])
    url = f"{emulator.spapi_url}/applications/2023-11-30/clientSecret"
    async with httpx.AsyncClient(auth=auth) as http:
        assert (await http.post(url)).status_code == 200
        emulator.expire_grantless_tokens(ROTATION)
        emulator.reset_counters()
        answers = await asyncio.gather(*(http.post(url) for _ in range(200)))
    assert [a.status_code for a in answers] == [200] * 200
    assert emulator.client_credentials_grants == 1


async def test_closing_the_manager_stops_grantless_refreshes(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.token_lifetime = 1.0
    mgr = make_manager()
    await mgr.get_grantless_token(NOTIFICATIONS)
    await mgr.aclose()
    grants = emulator.client_credentials_grants
    await asyncio.sleep(1.5)
    assert emulator.client_credentials_grants == grants
    with pytest.raises(at.ManagerClosedError):
        await mgr.get_grantless_token(NOTIFICATIONS)


async def test_a_background_failure_keeps_the_token_until_it_expires(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.token_lifetime = 4.0
    mgr = make_manager(max_retries=1)
    first = await mgr.get_grantless_token(NOTIFICATIONS)
    emulator.fail_next(1, status=503)
    deadline = time.monotonic() + 15
    while emulator.client_credentials_grants_for(NOTIFICATIONS) < 2:
        assert time.monotonic() < deadline, "the background refresh never recovered"
        token = await mgr.get_grantless_token(NOTIFICATIONS)
        # While the endpoint fails, the still valid token is served without waiting.
        assert token == first or emulator.client_credentials_grants_for(NOTIFICATIONS) >= 2
        await asyncio.sleep(0.05)
    assert emulator.token_requests >= 3
    assert await mgr.get_grantless_token(NOTIFICATIONS) != first


async def test_an_async_httpx_auth_refuses_a_sync_client(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    auth = mgr.grantless_httpx_auth(NOTIFICATIONS, origins=[emulator.spapi_url])
    with httpx.Client(auth=auth) as http, pytest.raises(TypeError, match="BlockingTokenManager"):
        http.get(f"{emulator.spapi_url}/notifications/v1/destinations")
    assert emulator.spapi_requests == 0


async def test_a_due_token_is_served_at_once_while_it_is_refreshed(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.token_lifetime = 4.0
    mgr = make_manager(auto_refresh=False)  # no timer: the caller's read starts the refresh
    first = await mgr.get_grantless_token(NOTIFICATIONS)
    # Inside the refresh buffer (half the lifetime), still valid for over a second: room
    # for a sleep that a loaded machine overshoots.
    await asyncio.sleep(2.2)
    emulator.latency = 4.0
    started = time.monotonic()
    assert await mgr.get_grantless_token(NOTIFICATIONS) == first
    assert time.monotonic() - started < 3.0  # did not wait for the token request
    deadline = time.monotonic() + 15
    while emulator.client_credentials_grants_for(NOTIFICATIONS) < 2:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)
    assert await mgr.get_grantless_token(NOTIFICATIONS) != first


async def test_closing_while_a_grantless_token_is_fetched_fails_the_waiting_callers(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.latency = 5.0
    mgr = make_manager()
    waiting = asyncio.ensure_future(mgr.get_grantless_token(NOTIFICATIONS))
    while emulator.in_flight == 0:
        await asyncio.sleep(0.01)
    await mgr.aclose()
    with pytest.raises(at.ManagerClosedError):
        await waiting


@pytest.mark.parametrize("scope", ["", "   ", "a\nb", "a\rb"])
async def test_bad_scopes_are_refused(make_manager: ManagerFactory, scope: str) -> None:
    mgr = make_manager()
    with pytest.raises(ValueError, match="scope"):
        await mgr.get_grantless_token(scope)
    with pytest.raises(ValueError, match="scope"):
        mgr.grantless_middleware(scope)
