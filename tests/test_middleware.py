"""AdsApiMiddleware and AdsApiTraceConfig against the emulator: headers, origins, 401s, bodies."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory

ACCOUNT = "acct"
PROFILE = "123"
AMAZON_HEADERS = (
    "Authorization",
    "Amazon-Advertising-API-ClientId",
    "Amazon-Advertising-API-Scope",
)


@pytest.fixture
async def mgr(emulator: AmazonEmulator, make_manager: ManagerFactory) -> at.AsyncTokenManager:
    """A manager with one account, its first access token already fetched."""
    manager = make_manager()
    await manager.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    await manager.get_access_token(ACCOUNT)
    emulator.reset_counters()
    return manager


@pytest.fixture
async def http(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> AsyncIterator[aiohttp.ClientSession]:
    """A session signed for ACCOUNT/PROFILE, the emulator being an allowed origin."""
    middleware = mgr.middleware(ACCOUNT, profile_id=PROFILE, origins=[emulator.api_url])
    async with aiohttp.ClientSession(middlewares=[middleware]) as session:
        yield session


async def echo(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any]:
    method = kwargs.pop("method", "POST")
    async with http.request(method, url, **kwargs) as resp:
        return resp.status, await resp.json()


# -- headers ---------------------------------------------------------------------------


async def test_requests_to_an_allowed_origin_carry_bearer_client_id_and_scope(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    status, body = await echo(http, f"{emulator.api_url}/echo", method="GET")
    assert status == 200
    token = emulator.current_access_token(ACCOUNT)
    assert body["headers"]["Authorization"] == f"Bearer {token}"
    assert body["headers"]["Amazon-Advertising-API-ClientId"] == emulator.client_id
    assert body["headers"]["Amazon-Advertising-API-Scope"] == PROFILE
    assert emulator.token_requests == 0


async def test_without_a_profile_id_no_scope_header_is_sent(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    async with aiohttp.ClientSession(middlewares=[middleware]) as http:
        status, body = await echo(http, f"{emulator.api_url}/echo", method="GET")
        # A scope the caller sets per request is left alone.
        _, scoped = await echo(
            http, f"{emulator.api_url}/echo", headers={"Amazon-Advertising-API-Scope": "77"}
        )
    assert status == 200
    assert "Amazon-Advertising-API-Scope" not in body["headers"]
    assert body["headers"]["Authorization"].startswith("Bearer Atza|")
    assert scoped["headers"]["Amazon-Advertising-API-Scope"] == "77"


async def test_the_token_is_fetched_when_each_request_is_sent(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager, http: aiohttp.ClientSession
) -> None:
    _, before = await echo(http, f"{emulator.api_url}/echo")
    await mgr.refresh(ACCOUNT)
    _, after = await echo(http, f"{emulator.api_url}/echo")
    assert before["headers"]["Authorization"] != after["headers"]["Authorization"]
    assert after["headers"]["Authorization"] == f"Bearer {emulator.current_access_token(ACCOUNT)}"
    assert emulator.api_requests == 2  # no 401 in between


# -- origin scoping --------------------------------------------------------------------


async def test_requests_to_another_origin_pass_through_untouched(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{emulator.download_url}/offline-reports/nothing.json.gz") as resp:
        assert resp.status == 404  # S3's NoSuchKey, not its 400 for a second auth mechanism
    [record] = emulator.download_log
    assert not any(name in record.headers for name in AMAZON_HEADERS)
    assert emulator.api_requests == 0


async def test_by_default_only_the_four_ads_api_origins_get_the_token(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    middleware = mgr.middleware(ACCOUNT)
    assert middleware.origins == [
        "https://advertising-api-eu.amazon.com",
        "https://advertising-api-fe.amazon.com",
        "https://advertising-api-test.amazon.com",
        "https://advertising-api.amazon.com",
    ]
    for url in (
        "https://advertising-api.amazon.com/v2/profiles",
        "HTTPS://Advertising-API-EU.amazon.com:443/reporting/reports",
        "https://advertising-api-fe.amazon.com",
        "https://advertising-api-test.amazon.com/v2/profiles?x=1",
    ):
        assert middleware.allows(url), url
    for url in (
        "http://advertising-api.amazon.com/v2/profiles",
        "https://advertising-api.amazon.com:8443/v2/profiles",
        "https://advertising-api.amazon.com.evil.example/v2/profiles",
        "https://evil.example/https://advertising-api.amazon.com",
        "https://offline-report-storage-us-east-1-prod.s3.amazonaws.com/r.json.gz?X-Amz-Signature=x",
        "https://api.amazon.com/auth/o2/token",
        emulator.api_url,
    ):
        assert not middleware.allows(url), url
    # The emulator is not an Ads API origin: nothing is added, and its 401 is not retried.
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as http,
        http.get(f"{emulator.api_url}/v2/profiles") as resp,
    ):
        assert resp.status == 401
    [record] = emulator.api_log
    assert not any(name in record.headers for name in AMAZON_HEADERS)
    assert emulator.token_requests == 0


@pytest.mark.parametrize(
    "origin",
    [
        "https://advertising-api.amazon.com/v2",
        "https://advertising-api.amazon.com?x=1",
        "https://user:pw@advertising-api.amazon.com",
        "advertising-api.amazon.com",
        "ftp://advertising-api.amazon.com",
    ],
)
async def test_origins_must_be_bare_origins(mgr: at.AsyncTokenManager, origin: str) -> None:
    with pytest.raises(ValueError, match="not an origin"):
        mgr.middleware(ACCOUNT, origins=[origin])


async def test_origins_must_be_a_list(mgr: at.AsyncTokenManager) -> None:
    with pytest.raises(TypeError):
        mgr.middleware(ACCOUNT, origins="https://advertising-api.amazon.com")


async def completed_report(emulator: AmazonEmulator, http: aiohttp.ClientSession) -> str:
    """Create a report with ``http`` (signed for the first profile) and poll it to completion."""
    emulator.report_polls = 1
    body = {"configuration": {"reportTypeId": "spCampaigns", "format": "GZIP_JSON"}}
    async with http.post(f"{emulator.api_url}/reporting/reports", json=body) as resp:
        assert resp.status == 200, await resp.text()
        report_id: str = (await resp.json())["reportId"]
    async with http.get(f"{emulator.api_url}/reporting/reports/{report_id}") as resp:
        assert (await resp.json())["status"] == "COMPLETED"
    return report_id


@pytest.mark.parametrize("status", [302, 307])
async def test_a_redirect_from_the_api_to_the_download_origin_carries_no_token(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager, status: int
) -> None:
    middleware = mgr.middleware(
        ACCOUNT, profile_id=emulator.profile_ids(ACCOUNT)[0], origins=[emulator.api_url]
    )
    async with aiohttp.ClientSession(middlewares=[middleware]) as http:
        report_id = await completed_report(emulator, http)
        emulator.download_redirect_status = status
        async with http.get(f"{emulator.api_url}/v2/reports/{report_id}/download") as resp:
            assert resp.status == 200, await resp.text()
            assert resp.history[0].status == status
            rows = json.loads(gzip.decompress(await resp.read()))
    assert len(rows) == emulator.report_rows
    redirect = emulator.api_log[-1]
    assert (redirect.status, redirect.path) == (status, f"/v2/reports/{report_id}/download")
    assert redirect.headers["Authorization"].startswith("Bearer ")
    assert redirect.headers["Amazon-Advertising-API-Scope"] == emulator.profile_ids(ACCOUNT)[0]
    [download] = emulator.download_log
    assert download.status == 200
    assert not any(name in download.headers for name in AMAZON_HEADERS)


async def test_the_download_origin_refuses_a_bearer_like_s3(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    middleware = mgr.middleware(
        ACCOUNT, profile_id=emulator.profile_ids(ACCOUNT)[0], origins=[emulator.api_url]
    )
    async with aiohttp.ClientSession(middlewares=[middleware]) as http:
        report_id = await completed_report(emulator, http)
        async with http.get(f"{emulator.api_url}/reporting/reports/{report_id}") as resp:
            signed = (await resp.json())["url"]
        assert signed.startswith(emulator.download_url + "/")
        async with http.get(signed, headers={"Authorization": "Bearer Atza|leak"}) as resp:
            assert resp.status == 400
            assert "Only one auth mechanism allowed" in await resp.text()
        async with http.get(signed) as resp:
            assert resp.status == 200
    assert [r.status for r in emulator.download_log] == [400, 200]
    assert "Authorization" not in emulator.download_log[1].headers


# -- 401: compare-and-refresh, one retry -----------------------------------------------


async def test_200_concurrent_401s_for_one_token_cause_one_refresh_and_all_succeed(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    rejected = emulator.current_access_token(ACCOUNT)
    emulator.expire_access_tokens(ACCOUNT)  # Amazon says no; the manager still trusts it
    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    # A small pool sends them in waves: most 401s come back after the refresh is over,
    # when the rejected token is no longer the current one.
    connector = aiohttp.TCPConnector(limit=20)
    async with aiohttp.ClientSession(connector=connector, middlewares=[middleware]) as http:
        results = await asyncio.gather(
            *(echo(http, f"{emulator.api_url}/echo", data=str(n)) for n in range(200))
        )
    assert emulator.token_requests == 1
    assert [status for status, _ in results] == [200] * 200
    assert sorted(int(body["body"]) for _, body in results) == list(range(200))
    fresh = f"Bearer {emulator.current_access_token(ACCOUNT)}"
    assert {body["headers"]["Authorization"] for _, body in results} == {fresh}
    assert [r.status for r in emulator.api_log].count(401) == 200
    assert {r.headers["Authorization"] for r in emulator.api_log if r.status == 401} == {
        f"Bearer {rejected}"
    }
    assert emulator.api_requests == 400


async def test_a_401_for_a_token_already_replaced_retries_without_refreshing(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    refreshed = False

    async def refresh_meanwhile(
        request: ClientRequest, handler: ClientHandlerType
    ) -> ClientResponse:
        # Another task refreshes while this request is on the wire with the old token.
        nonlocal refreshed
        if not refreshed:
            refreshed = True
            await mgr.refresh(ACCOUNT)
        return await handler(request)

    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    emulator.api_fail_next(1)
    async with aiohttp.ClientSession(middlewares=[middleware, refresh_meanwhile]) as http:
        status, body = await echo(http, f"{emulator.api_url}/echo")
    assert status == 200
    assert emulator.token_requests == 1  # the refresh of the other task, nothing more
    first, retry = emulator.api_log
    assert first.headers["Authorization"] != retry.headers["Authorization"]
    assert body["headers"]["Authorization"] == f"Bearer {emulator.current_access_token(ACCOUNT)}"


async def test_a_401_on_a_locally_valid_token_refreshes_once_and_retries(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.api_fail_next(1)
    status, body = await echo(http, f"{emulator.api_url}/echo")
    assert status == 200
    assert emulator.token_requests == 1
    assert emulator.api_requests == 2
    assert body["headers"]["Authorization"] == f"Bearer {emulator.current_access_token(ACCOUNT)}"


async def test_a_persistent_401_is_returned_after_exactly_two_ads_api_hits(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.api_fail_next(10)
    async with http.get(f"{emulator.api_url}/v2/profiles") as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "UNAUTHORIZED"
    assert emulator.api_requests == 2
    assert emulator.token_requests == 1


async def test_the_first_401_is_released_before_the_retry(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    seen: list[ClientResponse] = []

    async def record(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        response = await handler(request)
        seen.append(response)
        return response

    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    # A 401 body too big to arrive with the headers, and one connection in the pool: a
    # 401 left unreleased would hold the connection and leave the retry waiting forever.
    emulator.api_fail_next(1, body=json.dumps({"code": "UNAUTHORIZED", "details": "x" * 4_000_000}))
    connector = aiohttp.TCPConnector(limit=1)
    async with aiohttp.ClientSession(connector=connector, middlewares=[middleware, record]) as http:
        status, _ = await asyncio.wait_for(echo(http, f"{emulator.api_url}/echo"), 5)
    assert status == 200
    assert [r.status for r in seen] == [401, 200]
    assert seen[0].closed


# -- bodies on the retry ---------------------------------------------------------------


def multipart() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("campaign", "summer")
    form.add_field("budget", "12.5")
    return form


@pytest.mark.parametrize(
    ("make_body", "expected"),
    [
        pytest.param(lambda _: {"data": b"\x00raw bytes\xff"}, None, id="bytes"),
        pytest.param(lambda _: {"data": "texte accentué"}, "texte accentué", id="str"),
        pytest.param(
            lambda _: {"json": {"a": [1, 2], "b": "c"}}, '{"a": [1, 2], "b": "c"}', id="json"
        ),
        pytest.param(lambda _: {"data": {"a": "1", "b": "x y"}}, "a=1&b=x+y", id="form"),
        pytest.param(lambda _: {"data": multipart()}, "summer", id="multipart"),
        pytest.param(
            lambda _: {"data": io.BytesIO(b"in memory file")}, "in memory file", id="bytesio"
        ),
        pytest.param(lambda path: {"data": path.open("rb")}, "a file on disk", id="file"),
    ],
)
async def test_request_bodies_are_sent_again_intact_on_the_retry(
    emulator: AmazonEmulator,
    http: aiohttp.ClientSession,
    tmp_path: Path,
    make_body: Callable[[Path], dict[str, Any]],
    expected: str | None,
) -> None:
    path = tmp_path / "body.txt"
    path.write_bytes(b"a file on disk")
    kwargs = make_body(path)
    emulator.api_fail_next(1)
    try:
        status, body = await echo(http, f"{emulator.api_url}/echo", **kwargs)
    finally:
        close = getattr(kwargs.get("data"), "close", None)
        if close is not None:
            close()
    assert status == 200
    first, retry = emulator.api_log
    assert first.status == 401
    assert first.body == retry.body
    assert first.body
    if expected is None:
        assert retry.body == b"\x00raw bytes\xff"
    else:
        assert expected in body["body"]


class UnseekableReader(io.RawIOBase):
    """A stream that can be read once, like a pipe or a socket."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


async def chunks() -> AsyncIterator[bytes]:
    for part in (b"streamed ", b"once"):
        yield part


@pytest.mark.parametrize(
    "make_data",
    [
        pytest.param(chunks, id="async-generator"),
        pytest.param(lambda: UnseekableReader(b"pipe"), id="unseekable"),
    ],
)
async def test_a_body_that_cannot_be_replayed_is_not_retried_and_the_401_is_returned(
    emulator: AmazonEmulator, http: aiohttp.ClientSession, make_data: Callable[[], Any]
) -> None:
    emulator.api_fail_next(1)
    async with http.post(f"{emulator.api_url}/echo", data=make_data()) as resp:
        assert resp.status == 401
        assert (await resp.json())["code"] == "UNAUTHORIZED"  # still readable
    assert emulator.api_requests == 1
    assert emulator.token_requests == 0
    # The next request, with a body that can be replayed, is fine.
    status, _ = await echo(http, f"{emulator.api_url}/echo", data=b"again")
    assert status == 200


async def test_a_failed_refresh_raises_the_typed_error_from_the_request(
    emulator: AmazonEmulator, http: aiohttp.ClientSession
) -> None:
    emulator.revoke(ACCOUNT)  # the access token now answers 401, the refresh token invalid_grant
    with pytest.raises(at.InvalidGrantError) as caught:
        await http.get(f"{emulator.api_url}/v2/profiles")
    assert caught.value.account_id == ACCOUNT
    assert emulator.api_requests == 1
    assert emulator.token_requests == 1
    # The account now needs re-authorization: later requests fail before reaching Amazon.
    with pytest.raises(at.InvalidGrantError):
        await http.get(f"{emulator.api_url}/v2/profiles")
    assert emulator.api_requests == 1
    assert emulator.token_requests == 1


async def test_an_unknown_account_raises_before_anything_is_sent(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    middleware = mgr.middleware("nobody", origins=[emulator.api_url])
    async with aiohttp.ClientSession(middlewares=[middleware]) as http:
        with pytest.raises(at.AccountNotFoundError):
            await http.get(f"{emulator.api_url}/v2/profiles")
    assert emulator.api_requests == 0


# -- composition -----------------------------------------------------------------------


async def test_token_requests_never_pass_through_the_users_session_middlewares(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    # The token endpoint lives on an allowed origin, and the manager borrows the very
    # session that carries the middleware: a recursion would deadlock or send a bearer.
    signing: list[at.AdsApiMiddleware] = []

    async def ours(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        return await signing[0](request, handler)  # the manager exists only once the session does

    async with aiohttp.ClientSession(middlewares=[ours]) as http:
        mgr = make_manager(session=http)
        signing.append(mgr.middleware(ACCOUNT, origins=[emulator.api_url]))
        assert signing[0].allows(emulator.token_url)
        await mgr.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
        status, body = await asyncio.wait_for(echo(http, f"{emulator.api_url}/echo"), 5)
        assert status == 200
        emulator.api_fail_next(1)  # and once more through the 401 path
        status, _ = await asyncio.wait_for(echo(http, f"{emulator.api_url}/echo"), 5)
        assert status == 200
        assert not http.closed  # borrowed, not closed by the manager
    assert [r.status for r in emulator.token_log] == [200, 200]
    for record in emulator.token_log:
        assert not any(name in record.headers for name in AMAZON_HEADERS)
    assert body["headers"]["Authorization"].startswith("Bearer Atza|")


async def test_it_works_with_a_session_base_url(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    async with (
        aiohttp.ClientSession(base_url=emulator.api_url, middlewares=[middleware]) as http,
        http.get("/v2/profiles") as resp,
    ):
        assert resp.status == 200
        profiles = await resp.json()
    assert len(profiles) == 2
    assert emulator.api_log[0].headers["Authorization"].startswith("Bearer ")


async def test_it_works_beside_other_middlewares(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    outer_calls: list[str] = []
    inner_saw: list[str | None] = []

    async def tag(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        outer_calls.append(request.url.path)
        request.headers["X-Pipeline-Tag"] = "r-1"
        return await handler(request)

    async def inspect(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        inner_saw.append(request.headers.get(hdrs.AUTHORIZATION))
        return await handler(request)

    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    emulator.api_fail_next(1)
    async with aiohttp.ClientSession(middlewares=[tag, middleware, inspect]) as http:
        status, body = await echo(http, f"{emulator.api_url}/echo")
    assert status == 200
    assert outer_calls == ["/echo"]
    assert len(inner_saw) == 2
    assert inner_saw[0] != inner_saw[1]
    assert all(value and value.startswith("Bearer ") for value in inner_saw)
    assert [r.headers["X-Pipeline-Tag"] for r in emulator.api_log] == ["r-1", "r-1"]
    assert body["headers"]["X-Pipeline-Tag"] == "r-1"


async def test_it_works_as_a_per_request_middleware(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    middleware = mgr.middleware(ACCOUNT, profile_id=PROFILE, origins=[emulator.api_url])
    async with aiohttp.ClientSession() as http:
        status, body = await echo(http, f"{emulator.api_url}/echo", middlewares=[middleware])
    assert status == 200
    assert body["headers"]["Amazon-Advertising-API-Scope"] == PROFILE


# -- mgr.session() ---------------------------------------------------------------------


class Stop(Exception):
    pass


async def test_session_targets_the_regions_ads_api_host_and_keeps_user_middlewares(
    mgr: at.AsyncTokenManager,
) -> None:
    seen: list[str] = []

    async def capture(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        seen.append(str(request.url))
        raise Stop  # no network: the URL is what this test is about

    for region, host in [
        (None, "advertising-api.amazon.com"),
        ("eu", "advertising-api-eu.amazon.com"),
        (at.Region.FE, "advertising-api-fe.amazon.com"),
    ]:
        async with mgr.session(ACCOUNT, region=region, middlewares=[capture]) as http:
            with pytest.raises(Stop):
                await http.get("/v2/profiles")
        assert seen.pop() == f"https://{host}/v2/profiles"


async def test_session_signs_requests_and_merges_middlewares(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    calls: list[str] = []

    async def count(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        calls.append(request.method)
        return await handler(request)

    async with mgr.session(
        ACCOUNT,
        profile_id=PROFILE,
        base_url=emulator.api_url,
        origins=[emulator.api_url],
        middlewares=[count],
        headers={"User-Agent": "pipeline/1"},
    ) as http:
        status, body = await echo(http, "/echo")
    assert status == 200
    assert calls == ["POST"]
    assert body["headers"]["Amazon-Advertising-API-Scope"] == PROFILE
    assert body["headers"]["User-Agent"] == "pipeline/1"
    assert body["headers"]["Authorization"] == f"Bearer {emulator.current_access_token(ACCOUNT)}"


async def test_session_refuses_a_base_url_that_would_not_get_the_token(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager
) -> None:
    with pytest.raises(ValueError, match="not among the origins"):
        mgr.session(ACCOUNT, base_url=emulator.api_url)
    with pytest.raises(ValueError, match="region or base_url"):
        mgr.session(ACCOUNT, region="eu", base_url=emulator.api_url, origins=[emulator.api_url])


# -- trace config and logs -------------------------------------------------------------


async def test_trace_config_counts_and_logs_401s_and_retries(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioamztoken.middleware")
    trace = mgr.trace_config()
    assert isinstance(trace, aiohttp.TraceConfig)
    assert mgr.trace_config() is trace
    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    url = f"{emulator.api_url}/echo"
    async with aiohttp.ClientSession(middlewares=[middleware], trace_configs=[trace]) as http:
        assert (await echo(http, url))[0] == 200
        assert (trace.rejected, trace.retried) == (0, 0)
        assert not caplog.records

        emulator.api_fail_next(1)
        assert (await echo(http, url + "?q=secret-query"))[0] == 200
        assert (trace.rejected, trace.retried) == (1, 1)
        [record] = caplog.records
        assert record.levelno == logging.INFO
        assert record.name == "aioamztoken.middleware"
        message = record.getMessage()
        assert f"POST {emulator.api_url}/echo answered 401" in message
        assert "final status 200" in message
        assert "secret-query" not in message

        emulator.api_fail_next(2)
        assert (await echo(http, url))[0] == 401
        assert (trace.rejected, trace.retried) == (3, 2)
        assert "final status 401" in caplog.records[-1].getMessage()

        emulator.api_fail_next(1)
        async with http.post(url, data=chunks()) as resp:
            assert resp.status == 401
        assert (trace.rejected, trace.retried) == (4, 2)
        assert "cannot be sent again" in caplog.records[-1].getMessage()

    # A traced session without the middleware: its 401s are counted, nothing is retried.
    async with aiohttp.ClientSession(trace_configs=[trace]) as plain, plain.get(url) as resp:
        assert resp.status == 401
    assert (trace.rejected, trace.retried) == (5, 2)


async def test_trace_config_logs_a_refresh_that_fails_after_a_401(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioamztoken.middleware")
    trace = mgr.trace_config()
    middleware = mgr.middleware(ACCOUNT, origins=[emulator.api_url])
    emulator.revoke(ACCOUNT)
    async with aiohttp.ClientSession(middlewares=[middleware], trace_configs=[trace]) as http:
        with pytest.raises(at.InvalidGrantError):
            await http.get(f"{emulator.api_url}/v2/profiles")
    assert (trace.rejected, trace.retried) == (1, 0)
    assert "InvalidGrantError" in caplog.records[-1].getMessage()


async def test_no_secret_reaches_any_log_even_at_debug(
    emulator: AmazonEmulator, mgr: at.AsyncTokenManager, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    refresh_token = emulator.issue_refresh_token("other")
    await mgr.add_account("other", refresh_token)
    middleware = mgr.middleware(ACCOUNT, profile_id=PROFILE, origins=[emulator.api_url])
    other = mgr.middleware("other", origins=[emulator.api_url])
    trace = mgr.trace_config()
    url = f"{emulator.api_url}/echo"
    async with aiohttp.ClientSession(middlewares=[middleware], trace_configs=[trace]) as http:
        emulator.api_fail_next(1)
        await echo(http, url)
        emulator.api_fail_next(2)
        await echo(http, url)
        emulator.api_fail_next(1)
        async with http.post(url, data=chunks()) as resp:
            await resp.read()
        await echo(http, url, middlewares=[other])
        # ACCOUNT's token is now one a refresh did not cure (issue 11): revoke "other",
        # whose rejected token is refreshed, and refused.
        emulator.revoke("other")
        with pytest.raises(at.InvalidGrantError):
            await http.get(url, middlewares=[other])
    secrets = {
        token
        for record in emulator.api_log
        for token in [record.headers.get("Authorization", "")[7:]]
        if token
    }
    secrets |= {refresh_token, emulator.client_secret}
    assert len(secrets) >= 4
    text = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert caplog.records
    assert "aioamztoken.middleware" in {r.name for r in caplog.records}
    for secret in secrets:
        assert secret not in text
    assert "Atza|" not in text
    assert "Atzr|" not in text
    assert "Bearer" not in text
    assert "Atza|" not in repr(middleware) + repr(trace)
