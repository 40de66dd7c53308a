"""The loopback Amazon emulator behaves like Login with Amazon and the Ads API."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from aioamztoken._lwa import make_pkce_pair, parse_token_response, pkce_challenge
from aioamztoken.testing import AmazonEmulator, ApiRequestRecord, TokenRequestRecord

REDIRECT = "https://app.example/callback"


@pytest.fixture
async def amazon() -> AsyncIterator[AmazonEmulator]:
    async with AmazonEmulator() as emulator:
        yield emulator


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


async def post_token(
    http: aiohttp.ClientSession,
    amazon: AmazonEmulator,
    form: dict[str, str],
    *,
    with_client: bool = True,
    **kwargs: Any,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    if with_client:
        form = {"client_id": amazon.client_id, "client_secret": amazon.client_secret, **form}
    async with http.post(amazon.token_url, data=form, **kwargs) as resp:
        raw = await resp.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode()
    return resp.status, body, resp


async def refresh(
    http: aiohttp.ClientSession, amazon: AmazonEmulator, refresh_token: str
) -> tuple[int, Any]:
    status, body, _ = await post_token(
        http, amazon, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )
    return status, body


async def exchange(
    http: aiohttp.ClientSession, amazon: AmazonEmulator, code: str, **extra: str
) -> tuple[int, Any]:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, **extra}
    status, body, _ = await post_token(http, amazon, form)
    return status, body


async def call_api(
    http: aiohttp.ClientSession,
    amazon: AmazonEmulator,
    path: str,
    token: str | None,
    *,
    method: str = "GET",
    client_id: str | None = "default",
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = dict(headers or {})
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if client_id is not None:
        headers["Amazon-Advertising-API-ClientId"] = (
            amazon.client_id if client_id == "default" else client_id
        )
    async with http.request(method, amazon.api_url + path, headers=headers, **kwargs) as resp:
        return resp.status, await resp.json(), resp


# -- refresh grant --------------------------------------------------------------------


async def test_refresh_grant_returns_a_bearer_token_and_the_same_refresh_token(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    refresh_token = amazon.issue_refresh_token("acme")
    status, body = await refresh(http, amazon, refresh_token)
    assert status == 200
    assert body["access_token"].startswith("Atza|")
    assert body == {
        "access_token": body["access_token"],
        "refresh_token": refresh_token,
        "token_type": "bearer",
        "expires_in": 3600,
    }
    assert amazon.current_access_token("acme") == body["access_token"]
    assert (amazon.refresh_grants, amazon.token_requests, amazon.token_requests_for("acme")) == (
        1,
        1,
        1,
    )


async def test_refresh_answers_parse_with_the_librarys_own_parser_even_as_strings(
    http: aiohttp.ClientSession,
) -> None:
    async with AmazonEmulator(token_lifetime=120, expires_in_as_string=True) as amazon:
        refresh_token = amazon.issue_refresh_token("acme")
        status, body, resp = await post_token(
            http, amazon, {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )
    assert body["expires_in"] == "120"
    token = parse_token_response(
        status, json.dumps(body).encode(), sent_at=1000.0, content_type=resp.content_type
    )
    assert token.expires_at == 1120.0
    assert token.refresh_token == refresh_token


async def test_token_lifetime_is_mutable_and_applies_to_new_tokens(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.token_lifetime = 0.5
    _, body = await refresh(http, amazon, amazon.issue_refresh_token("acme"))
    assert body["expires_in"] == 0.5


async def test_http_basic_client_authentication_is_accepted(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": amazon.issue_refresh_token("acme")}
    headers = {"Authorization": basic(amazon.client_id, amazon.client_secret)}
    status, _, _ = await post_token(http, amazon, form, with_client=False, headers=headers)
    assert status == 200


@pytest.mark.parametrize(
    ("client", "basic_pair"),
    [
        ({"client_id": "emu-client-id", "client_secret": "rotated-away"}, None),
        ({"client_id": "someone-else", "client_secret": "emu-client-secret"}, None),
        ({}, None),
        ({}, ("emu-client-id", "wrong")),
    ],
    ids=["wrong-secret", "wrong-id", "missing", "wrong-basic"],
)
async def test_bad_client_credentials_answer_401_invalid_client(
    amazon: AmazonEmulator,
    http: aiohttp.ClientSession,
    client: dict[str, str],
    basic_pair: tuple[str, str] | None,
) -> None:
    form = {"grant_type": "refresh_token", "refresh_token": amazon.issue_refresh_token("acme")}
    headers = {} if basic_pair is None else {"Authorization": basic(*basic_pair)}
    status, body, _ = await post_token(
        http, amazon, {**client, **form}, with_client=False, headers=headers
    )
    assert status == 401
    assert body["error"] == "invalid_client"
    assert body["error_description"]
    assert amazon.refresh_grants == 0
    assert amazon.token_requests_for("acme") == 1


async def test_unknown_refresh_token_answers_400_invalid_grant(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    status, body = await refresh(http, amazon, "Atzr|never-issued")
    assert (status, body["error"]) == (400, "invalid_grant")


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"refresh_token": "Atzr|x"}, "invalid_request"),
        ({"grant_type": "refresh_token"}, "invalid_request"),
        ({"grant_type": "authorization_code", "redirect_uri": REDIRECT}, "invalid_request"),
        ({"grant_type": "authorization_code", "code": "ANcode1"}, "invalid_request"),
        ({"grant_type": "password", "username": "u"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "invalid_scope"),  # grantless: scope needed
    ],
    ids=["no-grant-type", "no-refresh-token", "no-code", "no-redirect", "password", "client-cred"],
)
async def test_malformed_token_requests_answer_400_with_the_rfc_error(
    amazon: AmazonEmulator, http: aiohttp.ClientSession, form: dict[str, str], error: str
) -> None:
    status, body, _ = await post_token(http, amazon, form)
    assert (status, body["error"]) == (400, error)


async def test_a_json_body_is_not_a_form_and_answers_invalid_request(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    payload = {
        "grant_type": "refresh_token",
        "refresh_token": amazon.issue_refresh_token("acme"),
        "client_id": amazon.client_id,
        "client_secret": amazon.client_secret,
    }
    async with http.post(amazon.token_url, json=payload) as resp:
        assert resp.status == 400
        assert (await resp.json())["error"] == "invalid_request"


async def test_only_post_is_counted_as_a_token_request(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(amazon.token_url) as resp:
        assert resp.status == 405
    assert amazon.token_requests == 0


async def test_rotation_returns_a_new_refresh_token_and_retires_the_old_one(
    http: aiohttp.ClientSession,
) -> None:
    async with AmazonEmulator(rotate_refresh_tokens=True) as amazon:
        first = amazon.issue_refresh_token("acme")
        _, body = await refresh(http, amazon, first)
        second = body["refresh_token"]
        assert second.startswith("Atzr|")
        assert second != first
        status, body = await refresh(http, amazon, first)
        assert (status, body["error"]) == (400, "invalid_grant")
        status, body = await refresh(http, amazon, second)
        assert status == 200
        assert body["refresh_token"] not in (first, second)
        # the retired token is still attributed to its account
        assert amazon.token_requests_for("acme") == 3
        assert amazon.refresh_grants == 2


# -- authorization code grant ---------------------------------------------------------


async def test_code_grant_returns_a_new_refresh_token_for_the_account(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    code = amazon.issue_code("acme", redirect_uri=REDIRECT)
    assert code.startswith("ANcode")
    status, body = await exchange(http, amazon, code)
    assert status == 200
    assert body["refresh_token"].startswith("Atzr|")
    assert body["access_token"] == amazon.current_access_token("acme")
    assert (amazon.code_grants, amazon.token_requests_for("acme")) == (1, 1)
    status, _ = await refresh(http, amazon, body["refresh_token"])
    assert status == 200
    assert amazon.token_requests_for("acme") == 2


async def test_codes_work_only_once(amazon: AmazonEmulator, http: aiohttp.ClientSession) -> None:
    code = amazon.issue_code("acme", redirect_uri=REDIRECT)
    assert (await exchange(http, amazon, code))[0] == 200
    status, body = await exchange(http, amazon, code)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert amazon.code_grants == 1
    assert amazon.token_requests_for("acme") == 2


async def test_expired_codes_answer_invalid_grant(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    assert amazon.code_lifetime == 300.0
    amazon.code_lifetime = 0.0
    code = amazon.issue_code("acme", redirect_uri=REDIRECT)
    status, body = await exchange(http, amazon, code)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "expired" in body["error_description"]


async def test_unknown_codes_answer_invalid_grant(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    status, body = await exchange(http, amazon, "ANcodeNeverIssued")
    assert (status, body["error"]) == (400, "invalid_grant")


async def test_codes_are_bound_to_their_redirect_uri(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    code = amazon.issue_code("acme", redirect_uri="https://other.example/cb")
    status, body = await exchange(http, amazon, code)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "redirect_uri" in body["error_description"]


@pytest.mark.parametrize(
    "verifier", [None, "the-wrong-verifier-" + "x" * 40], ids=["missing", "mismatch"]
)
async def test_pkce_codes_need_the_matching_verifier(
    amazon: AmazonEmulator, http: aiohttp.ClientSession, verifier: str | None
) -> None:
    right_verifier, challenge = make_pkce_pair()
    code = amazon.issue_code("acme", redirect_uri=REDIRECT, code_challenge=challenge)
    extra = {} if verifier is None else {"code_verifier": verifier}
    status, body = await exchange(http, amazon, code, **extra)
    assert (status, body["error"]) == (400, "invalid_grant")
    assert "code_verifier" in body["error_description"]
    # a refused attempt does not use the code up
    status, _ = await exchange(http, amazon, code, code_verifier=right_verifier)
    assert status == 200


async def test_pkce_code_with_the_matching_verifier_succeeds(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    verifier = "v" * 64
    code = amazon.issue_code("acme", redirect_uri=REDIRECT, code_challenge=pkce_challenge(verifier))
    status, _ = await exchange(http, amazon, code, code_verifier=verifier)
    assert status == 200
    assert amazon.code_grants == 1


# -- revocation and expiry ------------------------------------------------------------


async def test_revoke_invalidates_every_refresh_and_access_token_of_the_account(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    refresh_tokens = [amazon.issue_refresh_token("acme") for _ in range(2)]
    access_token = amazon.issue_access_token("acme")
    other = amazon.issue_access_token("globex")
    amazon.revoke("acme")
    for refresh_token in refresh_tokens:
        status, body = await refresh(http, amazon, refresh_token)
        assert (status, body["error"]) == (400, "invalid_grant")
    status, body, _ = await call_api(http, amazon, "/v2/profiles", access_token)
    assert (status, body["code"]) == (401, "UNAUTHORIZED")
    assert amazon.current_access_token("acme") is None
    assert (await call_api(http, amazon, "/v2/profiles", other))[0] == 200
    assert amazon.token_requests_for("acme") == 2


async def test_revoking_one_refresh_token_leaves_the_others_and_the_access_tokens(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    revoked = amazon.issue_refresh_token("acme")
    kept = amazon.issue_refresh_token("acme")
    access_token = amazon.issue_access_token("acme")
    amazon.revoke_refresh_token(revoked)
    assert (await refresh(http, amazon, revoked))[0] == 400
    assert (await refresh(http, amazon, kept))[0] == 200
    assert (await call_api(http, amazon, "/v2/profiles", access_token))[0] == 200


async def test_expired_access_tokens_answer_401_until_refreshed(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    refresh_token = amazon.issue_refresh_token("acme")
    _, body = await refresh(http, amazon, refresh_token)
    other = amazon.issue_access_token("globex")
    amazon.expire_access_tokens("acme")
    status, error, _ = await call_api(http, amazon, "/v2/profiles", body["access_token"])
    assert status == 401
    assert "expired" in error["details"]
    assert amazon.current_access_token("acme") is None
    assert (await call_api(http, amazon, "/v2/profiles", other))[0] == 200
    _, body = await refresh(http, amazon, refresh_token)
    assert (await call_api(http, amazon, "/v2/profiles", body["access_token"]))[0] == 200


async def test_expire_access_tokens_without_account_expires_everyones(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    tokens = [amazon.issue_access_token(account) for account in ("acme", "globex")]
    amazon.expire_access_tokens()
    for token in tokens:
        assert (await call_api(http, amazon, "/v2/profiles", token))[0] == 401


async def test_access_tokens_stop_working_when_their_lifetime_is_over(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    token = amazon.issue_access_token("acme", lifetime=0)
    assert (await call_api(http, amazon, "/v2/profiles", token))[0] == 401
    assert amazon.current_access_token("acme") is None


async def test_current_access_token_is_the_latest_valid_one(amazon: AmazonEmulator) -> None:
    assert amazon.current_access_token("acme") is None
    amazon.issue_access_token("acme")
    latest = amazon.issue_access_token("acme")
    amazon.issue_access_token("globex")
    assert amazon.current_access_token("acme") == latest


# -- fault injection ------------------------------------------------------------------


async def test_fail_next_serves_an_html_502_then_recovers(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    refresh_token = amazon.issue_refresh_token("acme")
    amazon.fail_next(2, status=502, body="<html>502 Bad Gateway</html>", content_type="text/html")
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    for _ in range(2):
        status, body, resp = await post_token(http, amazon, form)
        assert (status, body, resp.content_type) == (
            502,
            "<html>502 Bad Gateway</html>",
            "text/html",
        )
    assert (await refresh(http, amazon, refresh_token))[0] == 200
    assert amazon.token_requests_for("acme") == 3
    assert amazon.refresh_grants == 1
    assert [r.status for r in amazon.token_log] == [502, 502, 200]


async def test_fail_next_429_carries_retry_after(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.fail_next(status=429, retry_after=2.0)
    amazon.fail_next(status=429, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")
    form = {"grant_type": "refresh_token", "refresh_token": amazon.issue_refresh_token("acme")}
    _, _, first = await post_token(http, amazon, form)
    _, _, second = await post_token(http, amazon, form)
    assert (first.status, first.headers["Retry-After"]) == (429, "2")
    assert second.headers["Retry-After"] == "Wed, 21 Oct 2015 07:28:00 GMT"


async def test_fail_next_default_body_for_5xx_is_a_json_server_error(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.fail_next()
    status, body, resp = await post_token(http, amazon, {"grant_type": "refresh_token"})
    assert (status, body["error"]) == (503, "server_error")
    assert "Retry-After" not in resp.headers


async def test_injected_faults_come_before_client_authentication(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.fail_next(status=500)
    status, _, _ = await post_token(http, amazon, {}, with_client=False)
    assert status == 500
    assert amazon.token_requests == 1


async def test_failure_rate_picks_the_same_requests_for_the_same_seed(
    http: aiohttp.ClientSession,
) -> None:
    async def statuses(seed: int) -> list[int]:
        async with AmazonEmulator(seed=seed) as amazon:
            amazon.failure_rate = 0.5
            amazon.failure_status = 500
            refresh_token = amazon.issue_refresh_token("acme")
            return [(await refresh(http, amazon, refresh_token))[0] for _ in range(20)]

    first, again, other = await statuses(7), await statuses(7), await statuses(8)
    assert first == again
    assert first != other
    assert set(first) == {200, 500}


async def test_failure_rate_uses_the_rng_attribute(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.failure_rate = 0.5
    amazon.rng = random.Random(123)
    twin = random.Random(123)
    expected = [503 if twin.random() < 0.5 else 200 for _ in range(8)]
    refresh_token = amazon.issue_refresh_token("acme")
    assert [(await refresh(http, amazon, refresh_token))[0] for _ in range(8)] == expected


async def test_latency_holds_concurrent_requests_in_flight_together(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.latency = 0.2
    refresh_token = amazon.issue_refresh_token("acme")
    started = time.monotonic()
    results = await asyncio.gather(*(refresh(http, amazon, refresh_token) for _ in range(10)))
    assert time.monotonic() - started >= 0.2
    assert [status for status, _ in results] == [200] * 10
    assert amazon.max_in_flight == 10
    assert amazon.in_flight == 0


async def test_latency_range_delays_each_request_within_bounds(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.latency = (0.05, 0.1)
    started = time.monotonic()
    await refresh(http, amazon, amazon.issue_refresh_token("acme"))
    assert 0.05 <= time.monotonic() - started < 1.0


async def test_api_fail_next_injects_ads_api_faults_then_recovers(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    token = amazon.issue_access_token("acme")
    amazon.api_fail_next(status=429, retry_after=1)
    amazon.api_fail_next()
    status, body, resp = await call_api(http, amazon, "/v2/profiles", token)
    assert (status, body["code"], resp.headers["Retry-After"]) == (429, "THROTTLED", "1")
    status, body, _ = await call_api(http, amazon, "/v2/profiles", token)
    assert (status, body["code"]) == (401, "UNAUTHORIZED")
    assert (await call_api(http, amazon, "/v2/profiles", token))[0] == 200
    assert [r.status for r in amazon.api_log] == [429, 401, 200]
    assert amazon.api_requests_for("acme") == 3


# -- observation ----------------------------------------------------------------------


async def test_token_log_records_every_request_with_account_and_outcome(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    before = time.monotonic()
    await refresh(http, amazon, amazon.issue_refresh_token("acme"))
    await exchange(http, amazon, amazon.issue_code("globex", redirect_uri=REDIRECT))
    await refresh(http, amazon, "Atzr|unknown")
    assert [(r.account_id, r.grant_type, r.status) for r in amazon.token_log] == [
        ("acme", "refresh_token", 200),
        ("globex", "authorization_code", 200),
        (None, "refresh_token", 400),
    ]
    assert all(isinstance(r, TokenRequestRecord) and r.time >= before for r in amazon.token_log)
    assert (amazon.refresh_grants, amazon.code_grants, amazon.token_requests) == (1, 1, 3)


async def test_reset_counters_zeroes_counters_and_logs_but_keeps_tokens(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    refresh_token = amazon.issue_refresh_token("acme")
    _, body = await refresh(http, amazon, refresh_token)
    await call_api(http, amazon, "/v2/profiles", body["access_token"])
    amazon.reset_counters()
    assert (amazon.token_requests, amazon.refresh_grants, amazon.code_grants) == (0, 0, 0)
    assert (amazon.api_requests, amazon.max_in_flight) == (0, 0)
    assert (amazon.token_log, amazon.api_log) == ([], [])
    assert amazon.token_requests_for("acme") == amazon.api_requests_for("acme") == 0
    assert (await refresh(http, amazon, refresh_token))[0] == 200
    assert amazon.token_requests_for("acme") == 1


# -- consent page ---------------------------------------------------------------------


async def test_consent_redirects_with_code_scope_and_state_and_the_code_exchanges(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    verifier, challenge = make_pkce_pair()
    query = {
        "client_id": amazon.client_id,
        "scope": "advertising::campaign_management",
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "state": "csrf-guard-123",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    async with http.get(amazon.authorization_url, params=query, allow_redirects=False) as resp:
        assert resp.status == 302
        location = resp.headers["Location"]
    assert amazon.last_consent == query
    target = urllib.parse.urlsplit(location)
    assert f"{target.scheme}://{target.netloc}{target.path}" == REDIRECT
    params = dict(urllib.parse.parse_qsl(target.query))
    assert params["state"] == "csrf-guard-123"
    assert params["scope"] == "advertising::campaign_management"
    assert params["code"].startswith("ANcode")
    assert (await exchange(http, amazon, params["code"]))[0] == 400  # verifier required
    status, _ = await exchange(http, amazon, params["code"], code_verifier=verifier)
    assert status == 200
    assert amazon.token_requests_for(amazon.consent_account) == 2


async def test_consent_logs_in_as_consent_account_and_keeps_redirect_query(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    amazon.consent_account = "seller-42"
    redirect = REDIRECT + "?tenant=7"
    query = {
        "client_id": amazon.client_id,
        "response_type": "code",
        "redirect_uri": redirect,
        "state": "s",
    }
    async with http.get(amazon.authorization_url, params=query, allow_redirects=False) as resp:
        params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(resp.headers["Location"]).query))
    assert params["tenant"] == "7"
    form = {"grant_type": "authorization_code", "code": params["code"], "redirect_uri": redirect}
    status, body, _ = await post_token(http, amazon, form)
    assert status == 200
    assert amazon.current_access_token("seller-42") == body["access_token"]


@pytest.mark.parametrize(
    "change",
    [
        {"client_id": "someone-else"},
        {"response_type": "token"},
        {"redirect_uri": ""},
        {"code_challenge": "abc", "code_challenge_method": "plain"},
    ],
    ids=["client-id", "response-type", "no-redirect", "plain-pkce"],
)
async def test_consent_rejects_bad_requests_with_400_text(
    amazon: AmazonEmulator, http: aiohttp.ClientSession, change: dict[str, str]
) -> None:
    query = {
        "client_id": amazon.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT,
        "state": "s",
        **change,
    }
    async with http.get(amazon.authorization_url, params=query, allow_redirects=False) as resp:
        assert resp.status == 400
        assert resp.content_type == "text/plain"
    assert amazon.last_consent == query


# -- Ads API --------------------------------------------------------------------------


async def test_profiles_are_listed_for_the_tokens_account_and_the_call_is_logged(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    token = amazon.issue_access_token("acme")
    status, profiles, _ = await call_api(
        http, amazon, "/v2/profiles", token, headers={"Amazon-Advertising-API-Scope": "1"}
    )
    assert status == 200
    assert 1 <= len(profiles) <= 2
    assert all(p["accountInfo"]["name"] == "acme" for p in profiles)
    assert all(isinstance(p["profileId"], int) for p in profiles)
    assert (await call_api(http, amazon, "/v2/profiles", token))[1] == profiles
    record = amazon.api_log[0]
    assert isinstance(record, ApiRequestRecord)
    assert (record.method, record.path, record.status, record.account_id) == (
        "GET",
        "/v2/profiles",
        200,
        "acme",
    )
    assert record.headers["Authorization"] == f"Bearer {token}"
    assert record.headers["Amazon-Advertising-API-ClientId"] == amazon.client_id
    assert (amazon.api_requests, amazon.api_requests_for("acme")) == (2, 2)


async def test_other_accounts_get_other_profiles(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    acme = (await call_api(http, amazon, "/v2/profiles", amazon.issue_access_token("acme")))[1]
    globex = (await call_api(http, amazon, "/v2/profiles", amazon.issue_access_token("globex")))[1]
    assert {p["profileId"] for p in acme}.isdisjoint(p["profileId"] for p in globex)


@pytest.mark.parametrize("token", [None, "Atza|never-issued"], ids=["missing", "unknown"])
async def test_ads_api_answers_401_to_missing_or_unknown_bearers_and_logs_it(
    amazon: AmazonEmulator, http: aiohttp.ClientSession, token: str | None
) -> None:
    status, body, _ = await call_api(http, amazon, "/sp/campaigns", token)
    assert (status, body["code"]) == (401, "UNAUTHORIZED")
    assert body["details"]
    assert [(r.path, r.status, r.account_id) for r in amazon.api_log] == [
        ("/sp/campaigns", 401, None)
    ]


async def test_ads_api_401s_on_expired_tokens_are_attributed_to_the_account(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    token = amazon.issue_access_token("acme")
    amazon.expire_access_tokens()
    await call_api(http, amazon, "/v2/profiles", token)
    assert amazon.api_requests_for("acme") == 1
    assert amazon.api_log[0].status == 401


async def test_ads_api_checks_the_client_id_header(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    token = amazon.issue_access_token("acme")
    missing = await call_api(http, amazon, "/v2/profiles", token, client_id=None)
    wrong = await call_api(http, amazon, "/v2/profiles", token, client_id="someone-else")
    assert missing[0] == 400
    assert (wrong[0], wrong[1]["code"]) == (401, "UNAUTHORIZED")


async def test_echo_returns_exactly_what_arrived(
    amazon: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    token = amazon.issue_access_token("acme")
    status, echo, _ = await call_api(
        http,
        amazon,
        "/echo",
        token,
        method="PUT",
        data=b'{"x": 1}',
        headers={"Amazon-Advertising-API-Scope": "123"},
    )
    assert status == 200
    assert (echo["method"], echo["path"], echo["body"], echo["account_id"]) == (
        "PUT",
        "/echo",
        '{"x": 1}',
        "acme",
    )
    assert echo["headers"]["Authorization"] == f"Bearer {token}"
    assert echo["headers"]["Amazon-Advertising-API-Scope"] == "123"
    assert amazon.api_log[0].body == b'{"x": 1}'


@pytest.mark.parametrize(
    "path", ["/v2/sp/campaigns", "/sp/targets/list", "/sb/v4/campaigns/list", "/"]
)
async def test_any_other_ads_api_path_answers_ok(
    amazon: AmazonEmulator, http: aiohttp.ClientSession, path: str
) -> None:
    token = amazon.issue_access_token("acme")
    status, body, _ = await call_api(http, amazon, path, token, method="POST", json={})
    assert (status, body) == (200, {"ok": True, "path": path})


# -- lifecycle ------------------------------------------------------------------------


async def test_urls_are_known_once_started_and_share_one_origin() -> None:
    emulator = AmazonEmulator()
    with pytest.raises(RuntimeError):
        _ = emulator.token_url
    async with emulator:
        assert emulator.base_url.startswith("http://127.0.0.1:")
        assert emulator.token_url == emulator.base_url + "/auth/o2/token"
        assert emulator.authorization_url == emulator.base_url + "/ap/oa"
        assert emulator.api_url == emulator.base_url
        with pytest.raises(RuntimeError):
            await emulator.start()


async def test_close_is_idempotent_and_stops_listening(http: aiohttp.ClientSession) -> None:
    emulator = AmazonEmulator()
    await emulator.start()
    url = emulator.token_url
    await emulator.close()
    await emulator.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        await http.post(url, data={})


async def test_close_answers_requests_held_by_latency_at_once(
    http: aiohttp.ClientSession,
) -> None:
    emulator = AmazonEmulator()
    await emulator.start()
    emulator.latency = 30.0
    pending = asyncio.create_task(refresh(http, emulator, emulator.issue_refresh_token("a")))
    while emulator.in_flight == 0:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await emulator.close()
    status, body = await pending
    assert time.monotonic() - started < 5  # not the 30 s of latency
    assert (status, body["error"]) == (503, "temporarily_unavailable")
    assert emulator.refresh_grants == 0


# -- running in a thread --------------------------------------------------------------


def _sync_post(url: str, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=urllib.parse.urlencode(form).encode())
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def test_running_in_thread_serves_synchronous_clients_and_takes_calls_from_them() -> None:
    with AmazonEmulator.running_in_thread(client_secret="s3cret", token_lifetime=60) as amazon:
        refresh_token = amazon.issue_refresh_token("acme")
        form = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
            "client_id": amazon.client_id,
            "client_secret": "s3cret",
        }
        status, body = _sync_post(amazon.token_url, form)
        assert (status, body["expires_in"]) == (200, 60)
        amazon.fail_next(status=500)
        assert _sync_post(amazon.token_url, form)[0] == 500
        amazon.revoke("acme")
        status, body = _sync_post(amazon.token_url, form)
        assert (status, body["error"]) == (400, "invalid_grant")
        assert amazon.token_requests_for("acme") == 3
        assert amazon.refresh_grants == 1
        url = amazon.token_url
    with pytest.raises(urllib.error.URLError):
        _sync_post(url, form)


def test_running_in_thread_works_with_an_aiohttp_client_on_another_loop() -> None:
    async def fetch_profiles(amazon: AmazonEmulator, token: str) -> int:
        headers = {
            "Authorization": f"Bearer {token}",
            "Amazon-Advertising-API-ClientId": amazon.client_id,
        }
        async with (
            aiohttp.ClientSession() as session,
            session.get(amazon.api_url + "/v2/profiles", headers=headers) as resp,
        ):
            return resp.status

    with AmazonEmulator.running_in_thread() as amazon:
        assert asyncio.run(fetch_profiles(amazon, amazon.issue_access_token("acme"))) == 200
        assert amazon.api_requests_for("acme") == 1


def test_running_in_thread_reraises_start_errors() -> None:
    with (
        pytest.raises(OSError),
        AmazonEmulator.running_in_thread(host="203.0.113.1"),  # TEST-NET-3: not ours
    ):
        pass


def test_a_running_in_thread_block_that_raises_still_closes_the_emulator() -> None:
    urls: list[str] = []

    def fail_inside() -> None:
        with AmazonEmulator.running_in_thread() as amazon:
            urls.append(amazon.base_url)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail_inside()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(urls[0] + "/echo", timeout=5)


def test_basic_credentials_are_form_decoded_as_rfc_6749_says() -> None:
    with AmazonEmulator.running_in_thread(client_secret="a b+c") as amazon:
        token = amazon.issue_refresh_token("acme")
        quote = urllib.parse.quote_plus
        form = {"grant_type": "refresh_token", "refresh_token": token}
        request = urllib.request.Request(
            amazon.token_url,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": basic(quote(amazon.client_id), quote("a b+c"))},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            assert resp.status == 200
