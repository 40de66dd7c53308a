"""Every family through every client against the emulator: aiohttp, httpx (async and
sync) and requests, over the one signing policy."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx
import pytest
import requests

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory

ACCOUNT = "acct"
CLIENTS = ("aiohttp", "httpx", "httpx-sync", "requests")
AMAZON_HEADERS = (
    "authorization",
    "x-amz-access-token",
    "amazon-advertising-api-clientid",
    "amazon-advertising-api-scope",
    "amazon-ads-clientid",
    "amazon-ads-accountid",
    "amazon-ads-manager-accountid",
)


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


Body = bytes | Callable[[], Any] | None


class Client:
    """One HTTP client signed by one adapter; ``send`` returns status and body."""

    def __init__(
        self,
        kind: str,
        close: Callable[[], Any],
        send: Callable[..., Any],
        blocking_send: Callable[..., Answer] | None = None,
    ) -> None:
        self.kind = kind
        self._close = close
        self._send = send
        self.blocking_send = blocking_send
        """The sync clients' own call, for threads."""

    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: Body = None,
        follow: bool = True,
    ) -> Answer:
        result = self._send(method, url, headers or {}, body, follow)
        if asyncio.iscoroutine(result):
            return await result  # type: ignore[no-any-return]
        assert isinstance(result, Answer)
        return result

    async def aclose(self) -> None:
        result = self._close()
        if asyncio.iscoroutine(result):
            await result


async def _in_thread(fn: Callable[..., Answer], *args: Any) -> Answer:
    return await asyncio.to_thread(fn, *args)


async def _async_manager(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> at.AsyncTokenManager:
    manager = make_manager()
    await manager.add_account(ACCOUNT, emulator.issue_refresh_token(ACCOUNT))
    await manager.get_access_token(ACCOUNT)
    return manager


async def _blocking_manager(emulator: AmazonEmulator) -> at.BlockingTokenManager:
    manager = at.BlockingTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=at.MemoryTokenStore(),
        token_url=emulator.token_url,
    )
    refresh_token = emulator.issue_refresh_token(ACCOUNT)
    await asyncio.to_thread(manager.add_account, ACCOUNT, refresh_token)
    await asyncio.to_thread(manager.get_access_token, ACCOUNT)
    return manager


@pytest.fixture(params=CLIENTS)
async def make_client(
    request: pytest.FixtureRequest, emulator: AmazonEmulator, make_manager: ManagerFactory
) -> AsyncIterator[Callable[..., Client]]:
    """Build a client of the parametrized kind, signed with ``adapter options``.

    Only the manager that kind uses exists: one account, one current token at the emulator.
    """
    kind: str = request.param
    blocking: at.BlockingTokenManager | None = None
    manager: Any
    if kind in ("aiohttp", "httpx"):
        manager = await _async_manager(emulator, make_manager)
    else:
        manager = blocking = await _blocking_manager(emulator)
    made: list[Client] = []

    def factory(**options: Any) -> Client:
        client = _build(kind, manager, options)
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()
    if blocking is not None:
        await asyncio.to_thread(blocking.close)


def _build(kind: str, manager: Any, options: Any) -> Client:
    mgr = blocking = manager
    if kind == "aiohttp":
        session = aiohttp.ClientSession(middlewares=[mgr.middleware(ACCOUNT, **options)])

        async def send_aiohttp(
            method: str, url: str, headers: Any, body: Body, follow: bool
        ) -> Answer:
            data = body() if callable(body) else body
            async with session.request(
                method, url, headers=headers, data=data, allow_redirects=follow
            ) as resp:
                return Answer(resp.status, await resp.read())

        return Client(kind, session.close, send_aiohttp)
    if kind == "httpx":
        aclient = httpx.AsyncClient(auth=mgr.httpx_auth(ACCOUNT, **options))

        async def send_httpx(
            method: str, url: str, headers: Any, body: Body, follow: bool
        ) -> Answer:
            content = body() if callable(body) else body
            resp = await aclient.request(
                method, url, headers=headers, content=content, follow_redirects=follow
            )
            return Answer(resp.status_code, resp.content)

        return Client(kind, aclient.aclose, send_httpx)
    if kind == "httpx-sync":
        sclient = httpx.Client(auth=blocking.httpx_auth(ACCOUNT, **options))

        def send_sync(method: str, url: str, headers: Any, body: Body, follow: bool) -> Answer:
            content = body() if callable(body) else body
            resp = sclient.request(
                method, url, headers=headers, content=content, follow_redirects=follow
            )
            return Answer(resp.status_code, resp.content)

        return Client(
            kind,
            lambda: asyncio.to_thread(sclient.close),
            lambda *a: _in_thread(send_sync, *a),
            send_sync,
        )
    session_r = requests.Session()
    session_r.auth = blocking.requests_auth(ACCOUNT, **options)

    def send_requests(method: str, url: str, headers: Any, body: Body, follow: bool) -> Answer:
        data = body() if callable(body) else body
        resp = session_r.request(
            method, url, headers=headers, data=data, allow_redirects=follow, timeout=30
        )
        return Answer(resp.status_code, resp.content)

    return Client(
        kind,
        lambda: asyncio.to_thread(session_r.close),
        lambda *a: _in_thread(send_requests, *a),
        send_requests,
    )


def _stream(kind: str) -> Callable[[], Any]:
    """A body each client can only stream once."""
    if kind in ("aiohttp", "httpx"):

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"a": '
            yield b"1}"

        return chunks

    def sync_chunks() -> Iterator[bytes]:
        yield b'{"a": '
        yield b"1}"

    return sync_chunks


def _current(emulator: AmazonEmulator) -> str:
    token = emulator.current_access_token(ACCOUNT)
    assert token is not None
    return token


# -- Ads API ----------------------------------------------------------------------------


async def test_ads_headers_on_the_wire(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(
        profile_id=42,
        ads_account_id="amzn1.ads-account.g.1",
        manager_account_id="amzn1.ads-manager.1",
        origins=[emulator.api_url],
    )
    emulator.reset_counters()
    answer = await client.send("GET", f"{emulator.api_url}/echo")
    assert answer.status == 200
    headers = {k.lower(): v for k, v in emulator.api_log[-1].headers.items()}
    assert headers["authorization"] == f"Bearer {_current(emulator)}"
    assert headers["amazon-advertising-api-clientid"] == emulator.client_id
    assert headers["amazon-advertising-api-scope"] == "42"
    assert headers["amazon-ads-accountid"] == "amzn1.ads-account.g.1"
    assert headers["amazon-ads-manager-accountid"] == "amzn1.ads-manager.1"
    assert "amazon-ads-clientid" not in headers  # classic path
    assert "x-amz-access-token" not in headers
    assert emulator.token_requests == 0

    # A header set on the request wins: one session, many profiles.
    answer = await client.send(
        "GET", f"{emulator.api_url}/echo", headers={"Amazon-Advertising-API-Scope": "7"}
    )
    assert answer.json()["headers"]["Amazon-Advertising-API-Scope"] == "7"


async def test_unified_ads_api_paths_get_both_client_id_headers(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    signed = make_client(ads_account_id="amzn1.ads-account.g.1", origins=[emulator.api_url])
    answer = await signed.send("POST", f"{emulator.api_url}/adsApi/v1/query/campaigns", body=b"{}")
    assert answer.status == 200, answer.body
    headers = answer.json()["headers"]
    assert headers["Amazon-Ads-ClientId"] == emulator.client_id
    assert headers["Amazon-Advertising-API-ClientId"] == emulator.client_id
    assert headers["Amazon-Ads-AccountId"] == "amzn1.ads-account.g.1"
    # The emulator checks those headers: without an account header the call is refused.
    bare = make_client(origins=[emulator.api_url])
    refused = await bare.send("POST", f"{emulator.api_url}/adsApi/v1/query/campaigns", body=b"{}")
    assert refused.status == 400
    assert b"Amazon-Ads-AccountId" in refused.body


async def test_a_401_that_refreshing_does_not_cure_is_not_amplified(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(origins=[emulator.api_url])
    emulator.reset_counters()
    emulator.api_fail_next(1000, status=401)  # the Ads API rejects every token
    for _ in range(100):
        assert (await client.send("GET", f"{emulator.api_url}/v2/profiles")).status == 401
    assert emulator.refresh_grants <= 2
    assert emulator.api_requests <= 110
    assert emulator.api_requests >= 100


async def test_200_concurrent_rejections_cause_one_refresh(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(origins=[emulator.api_url])
    emulator.expire_access_tokens(ACCOUNT)  # still fresh locally: every send gets a 401
    emulator.reset_counters()
    url = f"{emulator.api_url}/v2/profiles"
    if client.blocking_send is None:
        answers = await asyncio.gather(*(client.send("GET", url) for _ in range(200)))
    else:
        loop = asyncio.get_running_loop()
        send = client.blocking_send
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            futures = [
                loop.run_in_executor(pool, send, "GET", url, {}, None, True) for _ in range(200)
            ]
            answers = list(await asyncio.gather(*futures))
    assert [a.status for a in answers] == [200] * 200
    assert emulator.refresh_grants == 1


async def test_streaming_bodies_are_not_replayed(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(origins=[emulator.api_url])
    emulator.reset_counters()
    emulator.api_fail_next(1, status=401)
    answer = await client.send("POST", f"{emulator.api_url}/echo", body=_stream(client.kind))
    assert answer.status == 401
    assert emulator.api_requests == 1
    assert emulator.refresh_grants == 0
    # A body that can be replayed is sent again, intact, with the new token.
    emulator.api_fail_next(1, status=401)
    answer = await client.send("POST", f"{emulator.api_url}/echo", body=b'{"a": 1}')
    assert answer.status == 200
    assert answer.json()["body"] == '{"a": 1}'
    assert emulator.refresh_grants == 1
    assert emulator.api_requests == 3


async def test_other_origins_and_redirects_to_them_are_unsigned(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    ads = make_client(profile_id=1, origins=[emulator.api_url])
    sp = make_client(api="sp-api", origins=[emulator.spapi_url])
    target = f"{emulator.download_url}/offline-reports/none.json.gz"
    emulator.reset_counters()
    assert (await ads.send("GET", target)).status == 404
    assert (await sp.send("GET", target)).status == 404
    # Redirected by the API to the download origin (S3): nothing of ours rides along.
    assert (await ads.send("GET", f"{emulator.api_url}/emulator/redirect?to={target}")).status == (
        404
    )
    assert (await sp.send("GET", f"{emulator.spapi_url}/emulator/redirect?to={target}")).status == (
        404
    )
    assert emulator.download_requests == 4
    for record in emulator.download_log:
        assert not {k.lower() for k in record.headers} & set(AMAZON_HEADERS), record.headers
    assert emulator.api_log[-1].status == 307
    assert emulator.spapi_log[-1].status == 307
    assert emulator.spapi_log[-1].headers.get("x-amz-access-token")


# -- Selling Partner API ----------------------------------------------------------------


async def test_sp_api_headers_on_the_wire(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(api="sp-api", origins=[emulator.spapi_url])
    emulator.reset_counters()
    answer = await client.send("GET", f"{emulator.spapi_url}/orders/v0/orders")
    assert answer.status == 200, answer.body
    headers = {k.lower(): v for k, v in emulator.spapi_log[-1].headers.items()}
    assert headers["x-amz-access-token"] == _current(emulator)
    assert "authorization" not in headers
    assert not {"amazon-advertising-api-clientid", "amazon-ads-clientid"} & set(headers)
    assert answer.json()["payload"]["account_id"] == ACCOUNT


async def test_a_restricted_data_token_is_left_alone(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(api="sp-api", origins=[emulator.spapi_url])
    rdt = emulator.issue_restricted_data_token(ACCOUNT)
    emulator.reset_counters()
    url = f"{emulator.spapi_url}/orders/v0/orders/1/address"
    answer = await client.send("GET", url, headers={"x-amz-access-token": rdt})
    assert answer.status == 200
    assert emulator.spapi_log[-1].headers["x-amz-access-token"] == rdt
    # Even rejected as expired, it is neither refreshed nor retried.
    emulator.spapi_fail_next(1)
    answer = await client.send("GET", url, headers={"x-amz-access-token": rdt})
    assert answer.status == 403
    assert emulator.spapi_requests == 2
    assert emulator.token_requests == 0


async def test_a_403_for_an_expired_token_causes_one_refresh_and_one_retry(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(api="sp-api", origins=[emulator.spapi_url])
    emulator.expire_access_tokens(ACCOUNT)
    emulator.reset_counters()
    answer = await client.send("GET", f"{emulator.spapi_url}/orders/v0/orders")
    assert answer.status == 200, answer.body
    assert emulator.refresh_grants == 1
    assert emulator.spapi_requests == 2
    assert [r.status for r in emulator.spapi_log] == [403, 200]


async def test_a_403_for_a_missing_role_causes_no_refresh_and_no_retry(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(api="sp-api", origins=[emulator.spapi_url])
    emulator.spapi_missing_roles.add("/finances/")
    emulator.reset_counters()
    answer = await client.send("GET", f"{emulator.spapi_url}/finances/v0/financialEvents")
    assert answer.status == 403
    assert answer.json()["errors"][0]["details"] == ""
    assert emulator.token_requests == 0
    assert emulator.spapi_requests == 1


async def test_sp_api_is_signed_only_on_its_own_origins_by_default(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(api="sp-api")
    emulator.reset_counters()
    answer = await client.send("GET", f"{emulator.spapi_url}/orders/v0/orders")
    assert answer.status == 403  # the emulator is not a real SP-API origin: no token sent
    assert "x-amz-access-token" not in emulator.spapi_log[-1].headers
    assert emulator.token_requests == 0


# -- the contract -----------------------------------------------------------------------


def test_the_adapter_factories_keep_the_contracts_signature() -> None:
    import inspect

    expected = {
        "api": "ads",
        "profile_id": None,
        "ads_account_id": None,
        "manager_account_id": None,
        "origins": None,
    }
    for method in (
        at.AsyncTokenManager.middleware,
        at.AsyncTokenManager.httpx_auth,
        at.BlockingTokenManager.httpx_auth,
        at.BlockingTokenManager.requests_auth,
    ):
        params = inspect.signature(method).parameters
        assert list(params)[:2] == ["self", "account_id"], method
        for name, default in expected.items():
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (method, name)
            assert params[name].default == default, (method, name)
    for method in (
        at.AsyncTokenManager.grantless_middleware,
        at.AsyncTokenManager.grantless_httpx_auth,
    ):
        params = inspect.signature(method).parameters
        assert list(params) == ["self", "scope", "origins"]
        assert params["origins"].default is None


async def test_a_blocking_httpx_auth_refuses_an_async_client(emulator: AmazonEmulator) -> None:
    manager = await _blocking_manager(emulator)
    try:
        auth = manager.httpx_auth(ACCOUNT, origins=[emulator.api_url])
        async with httpx.AsyncClient(auth=auth) as http:
            with pytest.raises(TypeError, match="AsyncTokenManager"):
                await http.get(f"{emulator.api_url}/v2/profiles")
        assert isinstance(auth, httpx.Auth)
        assert auth.allows(f"{emulator.api_url}/x")
        assert not auth.allows(emulator.download_url)
        assert "Atza|" not in repr(auth)
        requests_auth = manager.requests_auth(ACCOUNT, api="sp-api")
        assert requests_auth.origins[0].startswith("https://sandbox.sellingpartnerapi")
        assert requests_auth.allows("https://sellingpartnerapi-eu.amazon.com/orders/v0/orders")
        assert "Atza|" not in repr(requests_auth)
    finally:
        await asyncio.to_thread(manager.close)


async def test_an_sp_api_middleware_refuses_ads_headers(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = await _async_manager(emulator, make_manager)
    with pytest.raises(ValueError, match="Ads API headers"):
        mgr.middleware(ACCOUNT, api="sp-api", profile_id=1)
    with pytest.raises(ValueError, match="api must be one of"):
        mgr.httpx_auth(ACCOUNT, api="mws")
    middleware = mgr.middleware(ACCOUNT, api="sp-api")
    assert middleware.api == "sp-api"
    assert "https://sellingpartnerapi-na.amazon.com" in middleware.origins
    assert middleware.account_id == ACCOUNT
    assert middleware.profile_id is None


async def test_a_seekable_file_body_is_rewound_and_sent_again_where_the_client_allows(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(origins=[emulator.api_url])
    emulator.reset_counters()
    emulator.api_fail_next(1, status=401)
    if client.kind == "httpx":
        # httpx.AsyncClient refuses a sync file body by itself: its error comes through.
        with pytest.raises(RuntimeError, match="sync request with an AsyncClient"):
            await client.send("POST", f"{emulator.api_url}/echo", body=io.BytesIO(b"12"))
        return
    answer = await client.send("POST", f"{emulator.api_url}/echo", body=lambda: io.BytesIO(b"12"))
    # httpx streams a file body (it cannot be sent twice); the others rewind it.
    if client.kind == "httpx-sync":
        assert (answer.status, emulator.refresh_grants) == (401, 0)
    else:
        assert answer.status == 200
        assert answer.json()["body"] == "12"
        assert emulator.refresh_grants == 1


async def test_a_redirect_within_the_allowed_origins(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(origins=[emulator.api_url])
    emulator.reset_counters()
    target = f"{emulator.api_url}/echo"
    answer = await client.send("GET", f"{emulator.api_url}/emulator/redirect?to={target}")
    if client.kind in ("httpx", "httpx-sync"):
        # httpx follows redirects without the auth: the hop goes unsigned, and its 401
        # is returned as it is (no refresh: it was not the request the auth signed).
        assert answer.status == 401
        assert emulator.token_requests == 0
    else:
        assert answer.status == 200
        assert answer.json()["headers"]["Authorization"].startswith("Bearer ")


def test_guards_are_bounded_per_manager() -> None:
    from aioamztoken._sources import MAX_GUARDS, shared_guard

    class Owner:
        pass

    owner = Owner()
    first = shared_guard(owner, "a0")
    assert shared_guard(owner, "a0") is first
    for n in range(1, MAX_GUARDS + 1):
        shared_guard(owner, f"a{n}")
    assert shared_guard(owner, "a0") is not first  # the least recently used was dropped


async def test_a_failed_refresh_raises_its_typed_error_from_the_request(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(api="sp-api", origins=[emulator.spapi_url])
    emulator.revoke(ACCOUNT)  # its token is refused, and so is its refresh token
    with pytest.raises(at.InvalidGrantError):
        await client.send("GET", f"{emulator.spapi_url}/orders/v0/orders")
    assert [r.status for r in emulator.spapi_log] == [403]
    assert emulator.token_log[-1].grant_type == "refresh_token"


async def test_the_middleware_still_takes_a_manager_and_an_account(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = await _async_manager(emulator, make_manager)
    middleware = at.AdsApiMiddleware(mgr, ACCOUNT, profile_id=5, origins=[emulator.api_url])
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as http,
        http.get(f"{emulator.api_url}/echo") as resp,
    ):
        assert (await resp.json())["headers"]["Amazon-Advertising-API-Scope"] == "5"
    with pytest.raises(TypeError):
        at.AdsApiMiddleware(mgr)  # type: ignore[arg-type]


def test_importing_aioamztoken_imports_neither_httpx_nor_requests() -> None:
    import subprocess
    import sys

    code = (
        "import sys, aioamztoken, aioamztoken.testing, aioamztoken.peers\n"
        "print(sorted(m for m in ('httpx', 'requests', 'ad_api', 'sp_api') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


async def test_an_sp_api_403_that_refreshing_does_not_cure_is_not_amplified(
    emulator: AmazonEmulator, make_client: Callable[..., Client]
) -> None:
    client = make_client(api="sp-api", origins=[emulator.spapi_url])
    emulator.reset_counters()
    emulator.spapi_fail_next(1000)  # "The access token you provided has expired.", always
    for _ in range(100):
        assert (await client.send("GET", f"{emulator.spapi_url}/orders/v0/orders")).status == 403
    assert emulator.refresh_grants <= 2
    assert 100 <= emulator.spapi_requests <= 110
