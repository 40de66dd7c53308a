"""AsyncTokenManager against the emulator: single flight, persistence, protocol, secrets."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory


async def seed(
    emu: AmazonEmulator, store: at.MemoryTokenStore, account: str, *, expires_in: float
) -> at.Token:
    """Put a token for ``account`` into ``store`` that expires in ``expires_in`` seconds."""
    token = at.Token(
        emu.issue_access_token(account, lifetime=max(expires_in, 1)),
        emu.issue_refresh_token(account),
        time.time() + expires_in,
    )
    await store.save(account, token)
    return token


async def test_1000_concurrent_callers_on_an_expired_token_cause_one_refresh(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    await seed(emulator, store, "acct", expires_in=-10)
    emulator.latency = 0.05
    mgr = make_manager(store=store)
    tokens = await asyncio.gather(*(mgr.get_access_token("acct") for _ in range(1000)))
    assert emulator.token_requests == 1
    assert len(set(tokens)) == 1
    assert tokens[0] == emulator.current_access_token("acct")


async def test_50_accounts_with_40_callers_each_make_50_requests_in_parallel(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    accounts = [f"a{n}" for n in range(50)]
    for account in accounts:
        await mgr.add_account(account, emulator.issue_refresh_token(account))
    emulator.latency = 0.05
    results = await asyncio.gather(*(mgr.get_access_token(a) for a in accounts for _ in range(40)))
    assert emulator.token_requests == 50
    assert all(emulator.token_requests_for(a) == 1 for a in accounts)
    assert len(set(results)) == 50
    # Accounts refresh side by side, up to the default cap of 10 in flight.
    assert emulator.max_in_flight == 10


async def test_100_concurrent_forced_refreshes_share_one_request(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    old = await seed(emulator, store, "acct", expires_in=3000)
    mgr = make_manager(store=store)
    assert await mgr.get_access_token("acct") == old.access_token
    assert emulator.token_requests == 0
    emulator.latency = 0.05
    tokens = await asyncio.gather(*(mgr.refresh("acct") for _ in range(100)))
    assert emulator.token_requests == 1
    assert {t.access_token for t in tokens} == {emulator.current_access_token("acct")}
    assert tokens[0].access_token != old.access_token


async def test_cancelling_one_waiting_caller_does_not_cancel_the_shared_refresh(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    await seed(emulator, store, "acct", expires_in=-1)
    emulator.latency = 0.2
    mgr = make_manager(store=store)
    first = asyncio.ensure_future(mgr.get_access_token("acct"))
    second = asyncio.ensure_future(mgr.get_access_token("acct"))
    await asyncio.sleep(0.05)
    first.cancel()
    assert await second == emulator.current_access_token("acct")
    assert first.cancelled()
    assert emulator.token_requests == 1
    assert (await store.load("acct")).access_token == await second  # type: ignore[union-attr]


class CountingStore(at.MemoryTokenStore):
    """A user-written store that counts what the manager asks of it."""

    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.saves = 0

    async def load(self, account_id: str) -> at.Token | None:
        self.loads += 1
        return await super().load(account_id)

    async def save(self, account_id: str, token: at.Token) -> None:
        self.saves += 1
        await super().save(account_id, token)


async def test_cached_fresh_token_is_served_without_io_lock_or_task(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = CountingStore()
    await seed(emulator, store, "acct", expires_in=3000)
    mgr = make_manager(store=store)
    token = await mgr.get_access_token("acct")
    loads, requests = store.loads, emulator.token_requests
    tasks_before = len(asyncio.all_tasks())
    await emulator.close()  # no endpoint at all from here on
    for _ in range(1000):
        assert await mgr.get_access_token("acct") == token
        assert (await mgr.get_token("acct")).access_token == token
    assert store.loads == loads
    assert emulator.token_requests == requests
    assert len(asyncio.all_tasks()) == tasks_before


class BlockingSaveStore(at.MemoryTokenStore):
    """A user store whose save waits until the test lets it finish."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.saving = asyncio.Event()

    async def save(self, account_id: str, token: at.Token) -> None:
        self.saving.set()
        await self.release.wait()
        await super().save(account_id, token)


async def test_refreshed_token_is_saved_before_any_caller_gets_it(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = BlockingSaveStore()
    await at.MemoryTokenStore.save(
        store, "acct", at.Token("", emulator.issue_refresh_token("acct"), 0)
    )
    mgr = make_manager(store=store)
    caller = asyncio.ensure_future(mgr.get_access_token("acct"))
    await store.saving.wait()
    await asyncio.sleep(0.05)
    assert not caller.done()  # the endpoint answered, but the save has not finished
    store.release.set()
    token = await caller
    assert (await store.load("acct")).access_token == token  # type: ignore[union-attr]


async def test_rotated_refresh_token_replaces_the_stored_one(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.rotate_refresh_tokens = True
    store = at.MemoryTokenStore()
    first_refresh = emulator.issue_refresh_token("acct")
    mgr = make_manager(store=store)
    await mgr.add_account("acct", first_refresh)
    await mgr.get_access_token("acct")
    stored = await store.load("acct")
    assert stored is not None
    assert stored.refresh_token != first_refresh
    # The old one no longer works at the emulator; the stored one does.
    await mgr.refresh("acct")
    assert emulator.token_requests == 2
    assert (await store.load("acct")).refresh_token not in (first_refresh, stored.refresh_token)  # type: ignore[union-attr]


async def test_expired_token_found_in_the_store_is_refreshed_on_first_use(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    old = await seed(emulator, store, "acct", expires_in=-60)
    mgr = make_manager(store=store)
    token = await mgr.get_token("acct")
    assert token.access_token != old.access_token
    assert token.refresh_token == old.refresh_token
    assert emulator.token_requests_for("acct") == 1


@pytest.mark.parametrize("as_string", [False, True])
async def test_expiry_follows_expires_in_whether_number_or_string(
    emulator: AmazonEmulator, make_manager: ManagerFactory, as_string: bool
) -> None:
    emulator.expires_in_as_string = as_string
    emulator.token_lifetime = 1234
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    before = time.time()
    token = await mgr.get_token("acct")
    assert before + 1234 <= token.expires_at <= time.time() + 1234


async def test_token_lifetime_counts_from_when_the_request_was_sent(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    emulator.latency = 0.5
    emulator.token_lifetime = 1000
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    before = time.time()
    token = await mgr.get_token("acct")
    assert time.time() - before >= 0.5
    assert token.expires_at <= before + 1000 + 0.2


async def test_invalid_grant_raises_after_exactly_one_request(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    await mgr.add_account("acct", "Atzr|never-issued")
    with pytest.raises(at.InvalidGrantError) as info:
        await mgr.get_access_token("acct")
    assert emulator.token_requests == 1
    assert info.value.error == "invalid_grant"
    assert info.value.status == 400
    assert isinstance(info.value, at.TokenRefreshError)


async def test_invalid_client_raises_after_exactly_one_request(emulator: AmazonEmulator) -> None:
    store = at.MemoryTokenStore()
    async with at.AsyncTokenManager(
        emulator.client_id, "wrong-secret", store=store, token_url=emulator.token_url
    ) as mgr:
        await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
        with pytest.raises(at.InvalidClientError) as info:
            await mgr.get_access_token("acct")
    assert emulator.token_requests == 1
    assert info.value.status == 401
    assert "wrong-secret" not in str(info.value)


async def test_unknown_account_raises_account_not_found(make_manager: ManagerFactory) -> None:
    mgr = make_manager()
    with pytest.raises(at.AccountNotFoundError) as info:
        await mgr.get_access_token("nobody")
    assert isinstance(info.value, KeyError)
    assert "nobody" in str(info.value)
    with pytest.raises(at.AccountNotFoundError):
        await mgr.refresh("nobody")
    with pytest.raises(at.AccountNotFoundError):
        await mgr.remove_account("nobody")
    with pytest.raises(at.AccountNotFoundError):
        await mgr.status("nobody")


async def test_unreachable_endpoint_is_a_typed_error_not_an_aiohttp_one() -> None:
    store = at.MemoryTokenStore()
    await store.save("acct", at.Token("", "Atzr|x", 0))
    async with at.AsyncTokenManager(
        "cid",
        "secret",
        store=store,
        token_url="http://127.0.0.1:9/auth/o2/token",
        max_retries=2,
        retry_budget=2.0,
    ) as mgr:
        with pytest.raises(at.TokenEndpointError) as info:
            await mgr.get_access_token("acct")
    assert info.value.status is None
    assert info.value.attempts == 2


async def test_code_exchange_with_pkce_stores_the_tokens(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    mgr = make_manager(store=store)
    verifier, challenge = at.make_pkce_pair()
    code = emulator.issue_code("acct", redirect_uri="http://localhost/cb", code_challenge=challenge)
    token = await mgr.exchange_code(
        "acct", code, redirect_uri="http://localhost/cb", code_verifier=verifier
    )
    assert await store.load("acct") == token
    assert await mgr.get_access_token("acct") == token.access_token
    assert emulator.token_requests == 1
    assert await mgr.accounts() == ["acct"]
    with pytest.raises(at.InvalidGrantError):  # codes work once
        await mgr.exchange_code(
            "acct", code, redirect_uri="http://localhost/cb", code_verifier=verifier
        )


async def test_code_exchange_with_a_wrong_verifier_is_invalid_grant(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    _, challenge = at.make_pkce_pair()
    code = emulator.issue_code("acct", redirect_uri="http://localhost/cb", code_challenge=challenge)
    with pytest.raises(at.InvalidGrantError):
        await mgr.exchange_code(
            "acct", code, redirect_uri="http://localhost/cb", code_verifier="x" * 50
        )
    assert await mgr.accounts() == []


@pytest.mark.parametrize(
    ("region", "host"),
    [("na", "www.amazon.com"), ("eu", "eu.account.amazon.com"), ("fe", "apac.account.amazon.com")],
)
async def test_consent_url_of_the_manager_uses_its_region(
    make_manager: ManagerFactory, region: str, host: str
) -> None:
    mgr = make_manager(region=region)
    url = mgr.authorization_url(redirect_uri="https://app/cb", state="xyz")
    assert url.startswith(f"https://{host}/ap/oa?")
    assert "client_id=emu-client-id" in url
    assert "state=xyz" in url
    assert "response_type=code" in url


async def test_add_and_remove_accounts(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    mgr = make_manager(store=store)
    await mgr.add_account("b", emulator.issue_refresh_token("b"))
    await mgr.add_account("a", emulator.issue_refresh_token("a"))
    assert emulator.token_requests == 0  # adding makes no network call
    assert await mgr.accounts() == ["a", "b"]
    await mgr.get_access_token("a")
    await mgr.remove_account("a")
    assert await mgr.accounts() == ["b"]
    with pytest.raises(at.AccountNotFoundError):
        await mgr.get_access_token("a")
    with pytest.raises(ValueError):
        await mgr.add_account("c", "  ")


SECRET_CLIENT = "emu-client-secret"


async def test_no_secret_reaches_logs_reprs_or_errors_even_at_debug(
    emulator: AmazonEmulator, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    store = at.MemoryTokenStore()
    mgr = make_manager(store=store, max_retries=2)
    verifier, challenge = at.make_pkce_pair()
    code = emulator.issue_code("acct", redirect_uri="http://localhost/cb", code_challenge=challenge)
    token = await mgr.exchange_code(
        "acct", code, redirect_uri="http://localhost/cb", code_verifier=verifier
    )
    emulator.fail_next(1, status=502, body="<html>bad gateway</html>", content_type="text/html")
    refreshed = await mgr.refresh("acct")
    errors: list[BaseException] = []
    emulator.revoke("acct")
    try:
        await mgr.refresh("acct")
    except at.InvalidGrantError as exc:
        errors.append(exc)
    secrets = {
        SECRET_CLIENT,
        token.access_token,
        token.refresh_token,
        refreshed.access_token,
        code,
        verifier,
    }
    texts = [r.getMessage() for r in caplog.records]
    texts += [repr(mgr), repr(store), repr(token), str(token), repr(refreshed)]
    texts += [str(e) for e in errors] + [repr(e) for e in errors]
    assert errors
    assert caplog.records
    for text in texts:
        for secret in secrets:
            assert secret not in text


async def test_leaving_async_with_leaves_no_task_and_no_unclosed_session(
    emulator: AmazonEmulator,
) -> None:
    store = at.MemoryTokenStore()
    before = asyncio.all_tasks()
    async with at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        max_concurrent_refreshes=1,
    ) as mgr:
        for n in range(5):
            await mgr.add_account(f"a{n}", emulator.issue_refresh_token(f"a{n}"))
            await mgr.get_access_token(f"a{n}")
        emulator.latency = 1.0
        await seed(emulator, store, "late", expires_in=-1)
        await seed(emulator, store, "queued", expires_in=-1)
        pending = asyncio.ensure_future(mgr.get_access_token("late"))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(mgr.get_access_token("queued"))
        await asyncio.sleep(0.05)
    # The request already sent was let finish, and its token saved...
    saved = await store.load("late")
    assert saved is not None
    assert await pending == saved.access_token
    # ...the one still queued for the endpoint was not sent.
    with pytest.raises(at.ManagerClosedError, match="closed while this call waited"):
        await queued  # the caller was not cancelled: it is told why it got no token
    assert emulator.token_requests_for("queued") == 0
    await emulator.close()  # its own handler tasks are not ours to count
    gc.collect()
    assert asyncio.all_tasks() == before
    assert mgr.closed
    with pytest.raises(at.ManagerClosedError):
        await mgr.get_access_token("a0")


async def test_callers_sessions_are_used_and_never_closed(emulator: AmazonEmulator) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with at.AsyncTokenManager(
            emulator.client_id,
            emulator.client_secret,
            store=at.MemoryTokenStore(),
            token_url=emulator.token_url,
            session=session,
        ) as mgr:
            await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
            await mgr.get_access_token("acct")
        assert not session.closed
        assert emulator.token_requests == 1


async def test_manager_used_from_another_event_loop_raises_clearly(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager()
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))

    def other_loop() -> Any:
        return asyncio.run(mgr.refresh("acct"))

    with pytest.raises(at.EventLoopError, match="another event loop"):
        await asyncio.to_thread(other_loop)


async def test_a_closed_user_session_is_a_clear_error(emulator: AmazonEmulator) -> None:
    import aiohttp

    session = aiohttp.ClientSession()
    await session.close()
    async with at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=at.MemoryTokenStore(),
        token_url=emulator.token_url,
        session=session,
    ) as mgr:
        await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
        with pytest.raises(at.ManagerClosedError, match="session given to the manager"):
            await mgr.get_access_token("acct")


async def test_a_hook_that_refreshes_its_own_account_fails_instead_of_deadlocking(
    emulator: AmazonEmulator, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    mgr: at.AsyncTokenManager

    async def on_refresh(account: str, token: at.Token) -> None:
        await mgr.refresh(account)

    mgr = make_manager(on_refresh=on_refresh)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    token = await asyncio.wait_for(mgr.get_access_token("acct"), 10)
    assert token == emulator.current_access_token("acct")
    assert any("on_refresh hook raised RuntimeError" in r.getMessage() for r in caplog.records)


class BrokenStore(at.MemoryTokenStore):
    """A user-written store whose backend fails with its own exception type."""

    async def load(self, account_id: str) -> at.Token | None:
        raise ConnectionResetError("backend went away")

    async def accounts(self) -> list[str]:
        raise ConnectionResetError("backend went away")


async def test_a_user_store_that_raises_its_own_errors_gives_storage_error(
    make_manager: ManagerFactory,
) -> None:
    mgr = make_manager(store=BrokenStore())
    with pytest.raises(at.StorageError, match="failed to load account 'acct'") as info:
        await mgr.get_access_token("acct")
    # The store's own error is kept only as a scrubbed stand-in naming its type.
    assert info.value.__cause__ is not None
    assert getattr(info.value.__cause__, "type_name", None) == "ConnectionResetError"
    assert info.value.__context__ is None
    with pytest.raises(at.StorageError, match="failed to list accounts"):
        await mgr.accounts()
