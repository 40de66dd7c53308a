"""Edge cases found in review: user sessions, budgets, races with add/remove, lost tokens."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .conftest import ManagerFactory
from .test_manager import seed
from .test_resilience import wait_until


async def test_a_user_session_that_raises_for_status_still_gets_typed_refusals(
    emulator: AmazonEmulator,
) -> None:
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        at.AsyncTokenManager(
            emulator.client_id,
            emulator.client_secret,
            store=at.MemoryTokenStore(),
            token_url=emulator.token_url,
            session=session,
        ) as mgr,
    ):
        await mgr.add_account("acct", "Atzr|never-issued")
        with pytest.raises(at.InvalidGrantError):
            await mgr.get_access_token("acct")
    assert emulator.token_requests == 1


async def test_retry_after_beyond_the_budget_gives_up_at_once(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(retry_budget=10.0)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.fail_next(5, status=429, body="", retry_after=60)
    started = time.monotonic()
    with pytest.raises(at.TokenEndpointError) as info:
        await mgr.get_access_token("acct")
    assert time.monotonic() - started < 5.0  # did not wait, and did not retry too early
    assert info.value.retry_after == 60
    assert emulator.token_requests == 1


async def test_a_429_holds_back_the_other_accounts_too(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(max_concurrent_refreshes=1)
    for n in range(3):
        await mgr.add_account(f"a{n}", emulator.issue_refresh_token(f"a{n}"))
    emulator.fail_next(1, status=429, body="", retry_after=1)
    await asyncio.gather(*(mgr.get_access_token(f"a{n}") for n in range(3)))
    first, *rest = emulator.token_log
    assert first.status == 429
    assert all(r.time - first.time >= 0.9 for r in rest)


async def test_a_silent_endpoint_is_given_up_within_the_budget(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(retry_budget=1.5, request_timeout=10.0)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.latency = 30.0
    started = time.monotonic()
    with pytest.raises(at.TokenEndpointError):
        await mgr.get_access_token("acct")
    assert time.monotonic() - started < 6.0  # not the 10 s request timeout


async def test_managers_sharing_a_store_fail_within_one_budget_not_one_each(
    emulator: AmazonEmulator, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    await at.FileTokenStore(path).save(
        "acct", at.Token("", emulator.issue_refresh_token("acct"), 0)
    )
    emulator.failure_rate = 1.0
    managers = [
        at.AsyncTokenManager(
            emulator.client_id,
            emulator.client_secret,
            store=at.FileTokenStore(path),
            token_url=emulator.token_url,
            retry_budget=2.0,
        )
        for _ in range(4)
    ]
    started = time.monotonic()

    async def one(mgr: at.AsyncTokenManager) -> float:
        # The holder of the lock gives up on the endpoint, the others on the lock.
        with pytest.raises((at.TokenEndpointError, at.StorageError)):
            await mgr.get_access_token("acct")
        return time.monotonic() - started

    try:
        elapsed = await asyncio.gather(*(one(m) for m in managers))
    finally:
        for mgr in managers:
            await mgr.aclose()
    assert max(elapsed) < 5.0  # one budget for all, not 4 budgets (8 s) in a row


async def test_managers_sharing_a_store_do_not_multiply_short_lived_refreshes(
    emulator: AmazonEmulator,
) -> None:
    emulator.token_lifetime = 3.0
    store = at.MemoryTokenStore()
    await store.save("acct", at.Token("", emulator.issue_refresh_token("acct"), 0))
    managers = [
        at.AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        )
        for _ in range(3)
    ]
    deadline = time.monotonic() + 4.0

    async def worker(mgr: at.AsyncTokenManager) -> None:
        while time.monotonic() < deadline:
            await mgr.get_access_token("acct")
            await asyncio.sleep(0.05)

    try:
        await asyncio.gather(*(worker(m) for m in managers))
    finally:
        for mgr in managers:
            await mgr.aclose()
    # 3 s tokens over 4 s: the first fetch and one or two renewals, whatever the fleet size.
    assert emulator.refresh_grants <= 3


async def test_remove_account_racing_a_refresh_leaves_it_removed(
    emulator: AmazonEmulator, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    store = at.FileTokenStore(tmp_path / "tokens.json")
    mgr = make_manager(store=store)
    emulator.latency = 0.2
    for delay in (0.0, 0.001, 0.003, 0.01):
        await mgr.add_account("a", emulator.issue_refresh_token("a"))

        async def caller(delay: float = delay) -> str:
            await asyncio.sleep(delay)
            return await mgr.get_access_token("a")

        await asyncio.gather(mgr.remove_account("a"), caller(), return_exceptions=True)
        assert await store.accounts() == []
        with pytest.raises(at.AccountNotFoundError):
            await mgr.get_access_token("a")


async def test_a_hook_that_removes_its_account_does_not_deadlock(
    emulator: AmazonEmulator, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    mgr: at.AsyncTokenManager

    async def on_reauth(account: str) -> None:
        await mgr.remove_account(account)

    mgr = make_manager(on_reauth_required=on_reauth)
    await mgr.add_account("a", "Atzr|revoked")
    with pytest.raises(at.InvalidGrantError):
        await asyncio.wait_for(mgr.get_access_token("a"), 10)
    assert any(
        "on_reauth_required hook raised RuntimeError" in r.getMessage() for r in caplog.records
    )


class FlakySaveStore(at.MemoryTokenStore):
    """A store whose next save fails (a Redis blip, a full disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_saves = 0

    async def save(self, account_id: str, token: at.Token) -> None:
        if self.fail_saves:
            self.fail_saves -= 1
            raise at.StorageError("disk full", location="flaky")
        await super().save(account_id, token)


async def test_a_rotated_refresh_token_survives_a_failed_save(
    emulator: AmazonEmulator, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    emulator.rotate_refresh_tokens = True
    store = FlakySaveStore()
    mgr = make_manager(store=store)
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    store.fail_saves = 1
    with pytest.raises(at.StorageError):
        await mgr.get_access_token("acct")
    # The token the endpoint issued is served from memory meanwhile...
    assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")
    assert any("kept in memory" in r.getMessage() for r in caplog.records)
    # ...and the next refresh saves it first and uses its (rotated) refresh token.
    token = await mgr.refresh("acct")
    assert token.access_token == emulator.current_access_token("acct")
    stored = await store.load("acct")
    assert stored == token


async def test_a_code_exchange_whose_caller_gives_up_still_stores_the_tokens(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    mgr = make_manager(store=store)
    code = emulator.issue_code("acct", redirect_uri="http://localhost/cb")
    emulator.latency = 0.3
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            mgr.exchange_code("acct", code, redirect_uri="http://localhost/cb"), 0.1
        )
    await wait_until(lambda: "acct" in store._tokens)  # the spent code was not wasted
    assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")


class SlowSaveStore(at.MemoryTokenStore):
    def __init__(self) -> None:
        super().__init__()
        self.saving = asyncio.Event()

    async def save(self, account_id: str, token: at.Token) -> None:
        if token.access_token:
            self.saving.set()
            await asyncio.sleep(0.3)
        await super().save(account_id, token)


async def test_closing_during_the_save_of_a_rotated_token_keeps_it(
    emulator: AmazonEmulator,
) -> None:
    emulator.rotate_refresh_tokens = True
    store = SlowSaveStore()
    mgr = at.AsyncTokenManager(
        emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
    )
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    caller = asyncio.ensure_future(mgr.get_access_token("acct"))
    await store.saving.wait()
    await mgr.aclose()
    with pytest.raises(at.ManagerClosedError):
        await caller
    stored = await store.load("acct")
    assert stored is not None
    assert stored.access_token == emulator.current_access_token("acct")


async def test_a_code_exchange_under_way_when_closing_finishes_and_is_saved(
    emulator: AmazonEmulator,
) -> None:
    store = at.MemoryTokenStore()
    mgr = at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
    )
    code = emulator.issue_code("acct", redirect_uri="http://localhost/cb")
    emulator.latency = 0.5
    exchange = asyncio.ensure_future(
        mgr.exchange_code("acct", code, redirect_uri="http://localhost/cb")
    )
    await asyncio.sleep(0.1)
    await mgr.aclose()  # the code was already sent: spent, so its tokens must be kept
    assert exchange.done()
    token = await exchange
    saved = await store.load("acct")
    assert saved is not None
    assert saved.refresh_token == token.refresh_token
    assert emulator.code_grants == 1


async def test_forced_refresh_on_a_cold_cache_really_refreshes(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    old = await seed(emulator, store, "acct", expires_in=3000)
    mgr = make_manager(store=store)
    got, forced = await asyncio.gather(mgr.get_access_token("acct"), mgr.refresh("acct"))
    assert got == old.access_token
    assert forced.access_token != old.access_token
    assert emulator.token_requests == 1


async def test_invalid_account_ids_are_value_errors(make_manager: ManagerFactory) -> None:
    mgr = make_manager()
    for call in (mgr.get_access_token, mgr.refresh, mgr.remove_account, mgr.status):
        with pytest.raises(ValueError):
            await call("")
    with pytest.raises(ValueError):
        await mgr.add_account("", "Atzr|x")


async def test_refusal_audit_lines_count_their_attempt(
    emulator: AmazonEmulator, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aioamztoken")
    mgr = make_manager()
    await mgr.add_account("acct", "Atzr|revoked")
    with pytest.raises(at.InvalidGrantError):
        await mgr.get_access_token("acct")
    lines = [r.getMessage() for r in caplog.records if r.name == "aioamztoken.audit"]
    assert any("outcome=needs-reauth" in line and "attempts=1" in line for line in lines)


async def test_needs_reauth_is_kept_in_the_store_for_every_process(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    store = at.MemoryTokenStore()
    first = make_manager(store=store)
    await first.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.revoke("acct")
    with pytest.raises(at.InvalidGrantError):
        await first.get_access_token("acct")
    stored = await store.load("acct")
    assert stored is not None
    assert stored.needs_reauth
    assert stored.refresh_token  # the rejected refresh token is kept, not deleted
    # Another process sharing the store knows without asking the endpoint.
    second = make_manager(store=store)
    assert (await second.status("acct")).state is at.AccountState.NEEDS_REAUTH
    with pytest.raises(at.InvalidGrantError):
        await second.get_access_token("acct")
    assert emulator.token_requests == 1
    # A new refresh token ends it, for everyone.
    await second.add_account("acct", emulator.issue_refresh_token("acct"))
    assert not (await store.load("acct")).needs_reauth  # type: ignore[union-attr]
    assert await second.get_access_token("acct") == emulator.current_access_token("acct")


class TaskBoundLockStore(at.MemoryTokenStore):
    """A user store whose lock must be released by the task that took it (anyio.Lock)."""

    def __init__(self) -> None:
        super().__init__()
        import anyio

        self._anyio_lock = anyio.Lock()

    def lock(self, account_id: str) -> Any:
        return self._anyio_lock


async def test_a_task_bound_store_lock_is_taken_and_released_in_one_task(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(store=TaskBoundLockStore())
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")
    assert (await mgr.refresh("acct")).access_token == emulator.current_access_token("acct")


async def test_no_refresh_starts_after_close(emulator: AmazonEmulator) -> None:
    errors: list[str] = []
    store = at.MemoryTokenStore()
    mgr = at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        on_refresh_error=lambda account, exc: errors.append(type(exc).__name__),
    )
    await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
    emulator.latency = 1.0
    getter = asyncio.ensure_future(mgr.get_access_token("acct"))
    forced = asyncio.ensure_future(mgr.refresh("acct"))
    await asyncio.sleep(0.1)
    await mgr.aclose()
    # The request already sent was let finish; the forced one, not yet sent, never was.
    assert await getter == (await store.load("acct")).access_token  # type: ignore[union-attr]
    with pytest.raises(at.ManagerClosedError):
        await forced
    await asyncio.sleep(0.1)
    assert errors == []
    assert emulator.token_requests == 1


async def test_a_long_429_pause_fails_other_accounts_at_once_not_after_the_budget(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    mgr = make_manager(retry_budget=10.0)
    for account in ("a", "b"):
        await mgr.add_account(account, emulator.issue_refresh_token(account))
    emulator.fail_next(1, status=429, body="", retry_after=3600)
    with pytest.raises(at.TokenEndpointError):
        await mgr.get_access_token("a")
    started = time.monotonic()
    with pytest.raises(at.TokenEndpointError) as info:
        await mgr.get_access_token("b")
    assert time.monotonic() - started < 5.0  # not the 10 s budget
    assert info.value.status == 429
    assert emulator.token_requests == 1  # b never hit the endpoint during the pause


def test_a_token_url_that_is_not_http_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="token_url"):
        at.AsyncTokenManager("cid", "secret", store=at.MemoryTokenStore(), token_url="ftp://x")


class LocklessSlowStore:
    """A user store with the four coroutines only (no lock) and slow writes."""

    def __init__(self) -> None:
        self.tokens: dict[str, at.Token] = {}

    async def load(self, account_id: str) -> at.Token | None:
        await asyncio.sleep(0)
        return self.tokens.get(account_id)

    async def save(self, account_id: str, token: at.Token) -> None:
        await asyncio.sleep(0.05)
        self.tokens[account_id] = token

    async def delete(self, account_id: str) -> None:
        self.tokens.pop(account_id, None)

    async def accounts(self) -> list[str]:
        return sorted(self.tokens)


async def test_a_revoked_token_refused_while_a_new_one_is_added_never_hides_the_new_one(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    old = emulator.issue_refresh_token("acct")
    emulator.revoke_refresh_token(old)
    new = emulator.issue_refresh_token("acct")
    emulator.latency = 0.2
    store = LocklessSlowStore()
    store.tokens["acct"] = at.Token("", old, 0.0)
    mgr = make_manager(store=store)
    add = asyncio.ensure_future(mgr.add_account("acct", new))
    await asyncio.sleep(0.01)  # add_account is saving
    # Issue 11: even without a store lock, the manager serialises a refresh behind
    # add_account within the process, so this refresh reads and uses the new token
    # (before, it raced ahead with the old one and got InvalidGrantError).
    got = await mgr.get_access_token("acct")
    await add
    assert emulator.token_requests_for("acct") == 1
    assert got == emulator.current_access_token("acct")
    assert store.tokens["acct"].refresh_token == new
    assert not store.tokens["acct"].needs_reauth
    assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")


class SlowReplyStore(at.MemoryTokenStore):
    """Reads now, answers later (network latency to a remote store)."""

    async def load(self, account_id: str) -> at.Token | None:
        value = await super().load(account_id)
        await asyncio.sleep(0.1)
        return value

    async def save(self, account_id: str, token: at.Token) -> None:
        await asyncio.sleep(0.02)
        await super().save(account_id, token)


async def test_a_stale_needs_reauth_record_is_not_trusted_after_add_account(
    emulator: AmazonEmulator, make_manager: ManagerFactory
) -> None:
    old = emulator.issue_refresh_token("acct")
    emulator.revoke_refresh_token(old)
    store = SlowReplyStore()
    await at.MemoryTokenStore.save(store, "acct", at.Token("", old, 0.0, needs_reauth=True))
    hooks: list[str] = []
    mgr = make_manager(store=store, on_reauth_required=hooks.append)
    add = asyncio.ensure_future(mgr.add_account("acct", emulator.issue_refresh_token("acct")))
    await asyncio.sleep(0)
    traffic = asyncio.ensure_future(mgr.get_access_token("acct"))
    await add
    await asyncio.gather(traffic, return_exceptions=True)
    for _ in range(2):
        assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")
    assert hooks == []
    assert (await mgr.status("acct")).state is at.AccountState.FRESH


def test_token_url_scheme_is_case_insensitive_and_plain_http_elsewhere_is_warned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    at.AsyncTokenManager(
        "cid", "s", store=at.MemoryTokenStore(), token_url="HTTPS://api.amazon.com/auth/o2/token"
    )
    assert not caplog.records
    at.AsyncTokenManager(
        "cid", "s", store=at.MemoryTokenStore(), token_url="http://proxy.internal/token"
    )
    assert any("plain http" in r.getMessage() for r in caplog.records)
