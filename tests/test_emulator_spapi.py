"""The emulator's SP-API origin, client_credentials grant and unified Ads API path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aioamztoken.testing import AmazonEmulator

DENIED = "Access to requested resource is denied."


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(
    http: aiohttp.ClientSession, method: str, url: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, allow_redirects=False, **kwargs) as resp:
        try:
            return resp.status, await resp.json(content_type=None)
        except ValueError:
            return resp.status, None


async def grant(http: aiohttp.ClientSession, amazon: AmazonEmulator, **form: str) -> Any:
    form = {"client_id": amazon.client_id, "client_secret": amazon.client_secret, **form}
    return await call(http, "POST", amazon.token_url, data=form)


async def test_the_client_credentials_grant_issues_scoped_tokens_without_refresh_tokens(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    status, body = await grant(
        http, emulator, grant_type="client_credentials", scope="sellingpartnerapi::notifications"
    )
    assert status == 200
    assert body["access_token"].startswith("Atc|")
    assert "refresh_token" not in body
    assert body["scope"] == "sellingpartnerapi::notifications"
    assert body["expires_in"] == 3600
    assert emulator.client_credentials_grants == 1
    status, body = await grant(http, emulator, grant_type="client_credentials", scope="x::y")
    assert (status, body["error"]) == (400, "invalid_scope")
    status, body = await call(
        http,
        "POST",
        emulator.token_url,
        data={"grant_type": "client_credentials", "scope": "sellingpartnerapi::notifications"},
    )
    assert (status, body["error"]) == (401, "invalid_client")
    assert emulator.client_credentials_grants_for("sellingpartnerapi::notifications") == 1
    emulator.reset_counters()
    assert emulator.client_credentials_grants == 0


async def test_the_sp_api_answers_amazons_403_bodies(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    url = f"{emulator.spapi_url}/orders/v0/orders"
    status, body = await call(http, "GET", url)
    assert status == 403
    assert body["errors"][0]["code"] == "MissingAuthenticationToken"
    status, body = await call(http, "GET", url, headers={"x-amz-access-token": "Atza|nope"})
    assert (status, body["errors"][0]["details"]) == (
        403,
        "The access token you provided is revoked, malformed or invalid.",
    )
    token = emulator.issue_access_token("acme")
    headers = {"x-amz-access-token": token}
    status, body = await call(http, "GET", url, headers=headers)
    assert status == 200
    assert body["payload"]["account_id"] == "acme"
    emulator.expire_access_tokens("acme")
    status, body = await call(http, "GET", url, headers=headers)
    assert status == 403
    assert body["errors"] == [
        {
            "code": "Unauthorized",
            "message": DENIED,
            "details": "The access token you provided has expired.",
        }
    ]
    emulator.revoke("acme")
    status, body = await call(http, "GET", url, headers=headers)
    assert "revoked, malformed or invalid" in body["errors"][0]["details"]
    assert emulator.spapi_requests == 5
    assert [r.status for r in emulator.spapi_log] == [403, 403, 200, 403, 403]


async def test_missing_roles_and_grantless_paths_answer_empty_details(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    headers = {"x-amz-access-token": emulator.issue_access_token("acme")}
    emulator.spapi_missing_roles.add("/finances/")
    status, body = await call(http, "GET", f"{emulator.spapi_url}/finances/v0/x", headers=headers)
    assert (status, body["errors"][0]["details"]) == (403, "")
    assert body["errors"][0]["message"] == DENIED
    destinations = f"{emulator.spapi_url}/notifications/v1/destinations"
    status, body = await call(http, "GET", destinations, headers=headers)
    assert (status, body["errors"][0]["details"]) == (403, "")
    scoped = {"x-amz-access-token": emulator.issue_grantless_token("sellingpartnerapi::migration")}
    status, _ = await call(http, "GET", destinations, headers=scoped)
    assert status == 403  # another scope's token
    notifications = emulator.issue_grantless_token("sellingpartnerapi::notifications")
    status, body = await call(
        http, "GET", destinations, headers={"x-amz-access-token": notifications}
    )
    assert (status, body["payload"]["scope"]) == (200, "sellingpartnerapi::notifications")
    emulator.expire_grantless_tokens("sellingpartnerapi::notifications")
    status, body = await call(
        http, "GET", destinations, headers={"x-amz-access-token": notifications}
    )
    assert (status, body["errors"][0]["details"]) == (
        403,
        "The access token you provided has expired.",
    )


async def test_restricted_data_tokens_redirects_and_queued_faults(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    headers = {"x-amz-access-token": emulator.issue_access_token("acme")}
    status, body = await call(
        http,
        "POST",
        f"{emulator.spapi_url}/tokens/2021-03-01/restrictedDataToken",
        headers=headers,
        json={"restrictedResources": []},
    )
    assert status == 200
    rdt = body["restrictedDataToken"]
    status, body = await call(
        http,
        "GET",
        f"{emulator.spapi_url}/orders/v0/orders/1/address",
        headers={"x-amz-access-token": rdt},
    )
    assert (status, body["payload"]["account_id"]) == (200, "acme")
    short = emulator.issue_restricted_data_token("acme", lifetime=0)
    status, _ = await call(
        http, "GET", f"{emulator.spapi_url}/x", headers={"x-amz-access-token": short}
    )
    assert status == 403
    target = f"{emulator.download_url}/offline-reports/x"
    async with http.get(
        f"{emulator.spapi_url}/emulator/redirect?to={target}",
        headers=headers,
        allow_redirects=False,
    ) as resp:
        assert (resp.status, resp.headers["Location"]) == (307, target)
    emulator.spapi_fail_next(2, status=429, details="Rate exceeded", code="QuotaExceeded")
    assert (await call(http, "GET", f"{emulator.spapi_url}/x", headers=headers))[0] == 429
    assert (await call(http, "GET", f"{emulator.spapi_url}/x", headers=headers))[0] == 429
    assert (await call(http, "GET", f"{emulator.spapi_url}/x", headers=headers))[0] == 200


async def test_the_unified_ads_path_checks_its_headers(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    url = f"{emulator.api_url}/adsApi/v1/query/campaigns"
    base = {
        "Authorization": f"Bearer {emulator.issue_access_token('acme')}",
        "Amazon-Advertising-API-ClientId": emulator.client_id,
    }
    status, body = await call(http, "POST", url, headers=base)
    assert status == 400
    assert "Amazon-Ads-ClientId" in body["details"]
    wrong = {**base, "Amazon-Ads-ClientId": "someone-else"}
    assert (await call(http, "POST", url, headers=wrong))[0] == 401
    no_account = {**base, "Amazon-Ads-ClientId": emulator.client_id}
    assert (await call(http, "POST", url, headers=no_account))[0] == 400
    status, body = await call(
        http, "POST", url, headers={**no_account, "Amazon-Ads-AccountId": "amzn1.ads-account.g.1"}
    )
    assert status == 200
    assert body["path"] == "/adsApi/v1/query/campaigns"
    status, _ = await call(http, "GET", f"{emulator.api_url}/emulator/redirect", headers=base)
    assert status == 400


def test_the_sp_api_url_is_known_once_started() -> None:
    with pytest.raises(RuntimeError):
        _ = AmazonEmulator().spapi_url
