"""BlockingTokenManager from real threads against the emulator (no event loop in the tests)."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

T = TypeVar("T")
BlockingFactory = Callable[..., at.BlockingTokenManager]


@pytest.fixture
def amazon() -> Iterator[AmazonEmulator]:
    with AmazonEmulator.running_in_thread() as emu:
        yield emu


@pytest.fixture
def make_blocking(amazon: AmazonEmulator) -> Iterator[BlockingFactory]:
    """Build blocking managers pointed at the emulator; each is closed at the end."""
    made: list[at.BlockingTokenManager] = []

    def factory(**options: Any) -> at.BlockingTokenManager:
        options.setdefault("store", at.MemoryTokenStore())
        options.setdefault("token_url", amazon.token_url)
        mgr = at.BlockingTokenManager(amazon.client_id, amazon.client_secret, **options)
        made.append(mgr)
        return mgr

    yield factory
    for mgr in made:
        mgr.close()


def seed(
    amazon: AmazonEmulator, store: at.MemoryTokenStore, accounts: list[str], *, expires_in: float
) -> None:
    """Store a token for each account that expires in ``expires_in`` seconds."""

    async def save_all() -> None:
        for account in accounts:
            token = at.Token(
                amazon.issue_access_token(account, lifetime=max(expires_in, 1)),
                amazon.issue_refresh_token(account),
                time.time() + expires_in,
            )
            await store.save(account, token)

    asyncio.run(save_all())


def all_at_once(threads: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(0..threads-1)`` on as many threads, released together by a barrier."""
    barrier = threading.Barrier(threads)

    def run(n: int) -> T:
        barrier.wait(timeout=10)
        return work(n)

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(run, range(threads)))


def blocking_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "aioamztoken-blocking"]


# ---------------------------------------------------------------------- single flight


def test_64_threads_asking_at_once_for_one_expired_account_make_one_request(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    store = at.MemoryTokenStore()
    seed(amazon, store, ["acct"], expires_in=-10)
    mgr = make_blocking(store=store)
    amazon.latency = 0.1
    tokens = all_at_once(64, lambda _: mgr.get_access_token("acct"))
    assert amazon.token_requests == 1
    assert set(tokens) == {amazon.current_access_token("acct")}


def test_16_threads_over_20_expired_accounts_make_exactly_20_requests(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    accounts = [f"a{n}" for n in range(20)]
    store = at.MemoryTokenStore()
    seed(amazon, store, accounts, expires_in=-10)
    mgr = make_blocking(store=store)
    amazon.latency = 0.05

    def every_account(n: int) -> dict[str, str]:
        order = accounts[n:] + accounts[:n]  # threads start on different accounts
        return {a: mgr.get_access_token(a) for a in order}

    results = all_at_once(16, every_account)
    assert amazon.token_requests == 20
    assert all(amazon.token_requests_for(a) == 1 for a in accounts)
    for account in accounts:
        assert {r[account] for r in results} == {amazon.current_access_token(account)}


def test_32_threads_forcing_a_refresh_share_one_request(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    store = at.MemoryTokenStore()
    seed(amazon, store, ["acct"], expires_in=3000)
    mgr = make_blocking(store=store)
    old = mgr.get_token("acct")
    amazon.latency = 0.1
    tokens = all_at_once(32, lambda _: mgr.refresh("acct"))
    assert amazon.token_requests == 1
    assert {t.access_token for t in tokens} == {amazon.current_access_token("acct")}
    assert tokens[0].access_token != old.access_token
    assert mgr.get_token("acct") == tokens[0]


def test_a_401_reported_by_32_threads_causes_one_refresh(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    store = at.MemoryTokenStore()
    seed(amazon, store, ["acct"], expires_in=3000)
    mgr = make_blocking(store=store)
    rejected = mgr.get_access_token("acct")
    amazon.latency = 0.05
    tokens = all_at_once(32, lambda _: mgr.refresh_if_current("acct", rejected))
    assert amazon.token_requests == 1
    assert {t.access_token for t in tokens} == {amazon.current_access_token("acct")} - {rejected}


# ---------------------------------------------------------------------- the hot path


def test_fresh_token_is_read_without_a_thread_hop_while_the_loop_is_busy(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    entered, release = threading.Event(), threading.Event()

    def hold_the_loop(account_id: str, token: at.Token) -> None:
        if account_id == "other":
            entered.set()
            release.wait(10)  # a sync hook blocks the manager's loop thread

    store = at.MemoryTokenStore()
    seed(amazon, store, ["acct", "other"], expires_in=3000)
    mgr = make_blocking(store=store, on_refresh=hold_the_loop, call_timeout=0.5)
    token = mgr.get_token("acct")
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(mgr.refresh, "other")
        assert entered.wait(5)
        started = time.monotonic()
        for _ in range(1000):
            assert mgr.get_access_token("acct") == token.access_token
            assert mgr.get_token("acct") is token
        assert time.monotonic() - started < 0.4  # never waited for the loop
        # Anything that must cross threads waits for the loop, up to call_timeout.
        with pytest.raises(at.TokenEndpointError, match="call_timeout"):
            mgr.status("acct")
        with pytest.raises(at.TokenEndpointError, match="call_timeout"):
            held.result()
        release.set()
    # The caller gave up, not the refresh: it completed and the others get its token.
    assert amazon.token_requests_for("other") == 1
    assert mgr.get_access_token("other") == amazon.current_access_token("other")
    assert amazon.token_requests == 1


# ---------------------------------------------------------------------- errors


def test_errors_are_the_typed_errors_of_the_async_api(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    mgr = make_blocking()
    calls: list[Callable[[], object]] = [
        lambda: mgr.get_access_token("nobody"),
        lambda: mgr.get_token("nobody"),
        lambda: mgr.refresh("nobody"),
        lambda: mgr.remove_account("nobody"),
        lambda: mgr.status("nobody"),
    ]
    for call in calls:
        with pytest.raises(at.AccountNotFoundError, match="nobody") as info:
            call()
        assert isinstance(info.value, KeyError)
    with pytest.raises(ValueError, match="refresh_token"):
        mgr.add_account("acct", "  ")
    assert amazon.token_requests == 0


def test_revoked_account_raises_invalid_grant_in_every_thread(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    mgr = make_blocking()
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    mgr.get_access_token("acct")
    amazon.revoke("acct")

    def refresh(_: int) -> BaseException | None:
        try:
            mgr.refresh("acct")
        except Exception as exc:
            return exc
        return None

    errors = all_at_once(8, refresh)
    assert all(type(e) is at.InvalidGrantError for e in errors)
    assert amazon.token_requests == 2  # the first fetch, then one shared refusal
    with pytest.raises(at.InvalidGrantError, match="re-authorization"):
        mgr.get_access_token("acct")
    assert mgr.status("acct").state is at.AccountState.NEEDS_REAUTH


def test_endpoint_down_raises_token_endpoint_error(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    mgr = make_blocking(max_retries=2, retry_budget=1.0)
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    amazon.fail_next(2, status=503)
    with pytest.raises(at.TokenEndpointError) as info:
        mgr.get_access_token("acct")
    assert info.value.status == 503
    assert info.value.attempts == 2
    assert amazon.token_requests == 2


def test_unreachable_endpoint_raises_token_endpoint_error(make_blocking: BlockingFactory) -> None:
    mgr = make_blocking(
        token_url="http://127.0.0.1:9/auth/o2/token", max_retries=2, retry_budget=1.0
    )
    mgr.add_account("acct", "Atzr|x")
    with pytest.raises(at.TokenEndpointError) as info:
        mgr.get_access_token("acct")
    assert info.value.status is None


# ---------------------------------------------------------------------- accounts


def test_code_exchange_accounts_status_and_consent_url(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    store = at.MemoryTokenStore()
    mgr = make_blocking(store=store)
    verifier, challenge = at.make_pkce_pair()
    url = mgr.authorization_url(
        redirect_uri="https://app/cb", state="xyz", code_challenge=challenge
    )
    assert url.startswith("https://www.amazon.com/ap/oa?")
    assert "state=xyz" in url
    code = amazon.issue_code("acct", redirect_uri="https://app/cb", code_challenge=challenge)
    token = mgr.exchange_code("acct", code, redirect_uri="https://app/cb", code_verifier=verifier)
    assert asyncio.run(store.load("acct")) == token
    assert mgr.get_access_token("acct") == token.access_token
    assert mgr.get_token("acct") == token
    with pytest.raises(at.InvalidGrantError):  # codes work once
        mgr.exchange_code("acct", code, redirect_uri="https://app/cb", code_verifier=verifier)
    mgr.add_account("b", amazon.issue_refresh_token("b"))
    assert mgr.accounts() == ["acct", "b"]
    status = mgr.status("acct")
    assert status.state is at.AccountState.FRESH
    assert status.expires_at == token.expires_at
    mgr.remove_account("acct")
    assert mgr.accounts() == ["b"]
    with pytest.raises(at.AccountNotFoundError):
        mgr.get_token("acct")
    assert amazon.token_requests == 2


# ---------------------------------------------------------------------- lifecycle


def test_close_joins_the_thread_and_is_idempotent(amazon: AmazonEmulator) -> None:
    before = set(threading.enumerate())
    mgr = at.BlockingTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=at.MemoryTokenStore(),
        token_url=amazon.token_url,
    )
    assert len(blocking_threads()) == 1
    for n in range(5):
        mgr.add_account(f"a{n}", amazon.issue_refresh_token(f"a{n}"))
        mgr.get_access_token(f"a{n}")  # each schedules a background refresh
    mgr.close()
    assert set(threading.enumerate()) == before
    assert mgr.closed
    assert mgr.manager.closed
    mgr.close()
    assert set(threading.enumerate()) == before


def test_every_call_after_close_raises_manager_closed(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    mgr = make_blocking()
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    mgr.get_token("acct")  # fresh in the cache: close must still be noticed
    mgr.close()
    calls: list[Callable[[], object]] = [
        lambda: mgr.get_access_token("acct"),
        lambda: mgr.get_token("acct"),
        lambda: mgr.refresh("acct"),
        lambda: mgr.refresh_if_current("acct", "Atza|x"),
        lambda: mgr.add_account("acct", "Atzr|x"),
        lambda: mgr.exchange_code("acct", "code", redirect_uri="https://app/cb"),
        lambda: mgr.remove_account("acct"),
        lambda: mgr.accounts(),
        lambda: mgr.status("acct"),
        lambda: mgr.__enter__(),
    ]
    for call in calls:
        with pytest.raises(at.ManagerClosedError):
            call()


def test_a_call_waiting_when_the_manager_closes_raises_manager_closed(
    amazon: AmazonEmulator,
) -> None:
    mgr = at.BlockingTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=at.MemoryTokenStore(),
        token_url=amazon.token_url,
        request_timeout=1.0,  # how long close() lets a request already sent go on
    )
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    amazon.latency = 30.0
    with ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(mgr.get_access_token, "acct") for _ in range(4)]
        deadline = time.monotonic() + 5
        while amazon.in_flight == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert amazon.in_flight == 1
        started = time.monotonic()
        mgr.close()
        assert time.monotonic() - started < 10  # not the 30 s the request is held
        for future in waiting:
            with pytest.raises(at.ManagerClosedError, match="closed"):
                future.result(timeout=5)
    assert blocking_threads() == []


def test_with_block_closes_the_manager_even_when_it_raises(amazon: AmazonEmulator) -> None:
    used: list[at.BlockingTokenManager] = []

    def job() -> None:
        with at.BlockingTokenManager(
            amazon.client_id,
            amazon.client_secret,
            store=at.MemoryTokenStore(),
            token_url=amazon.token_url,
        ) as mgr:
            used.append(mgr)
            mgr.add_account("acct", amazon.issue_refresh_token("acct"))
            assert mgr.get_access_token("acct")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        job()
    assert used[0].closed
    assert blocking_threads() == []
    with pytest.raises(at.ManagerClosedError):
        used[0].get_access_token("acct")


def test_an_unclosed_manager_is_closed_when_garbage_collected(amazon: AmazonEmulator) -> None:
    mgr = at.BlockingTokenManager(
        amazon.client_id,
        amazon.client_secret,
        store=at.MemoryTokenStore(),
        token_url=amazon.token_url,
    )
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    mgr.get_access_token("acct")
    assert len(blocking_threads()) == 1
    del mgr
    gc.collect()
    assert blocking_threads() == []


@pytest.mark.parametrize(
    "options",
    [
        {"session": object()},
        {"refresh_buffer": -1},
        {"no_such_option": True},
        {"call_timeout": 0},
    ],
)
def test_bad_options_raise_in_the_caller_and_leave_no_thread(
    amazon: AmazonEmulator, options: dict[str, Any]
) -> None:
    with pytest.raises((TypeError, ValueError)):
        at.BlockingTokenManager(
            amazon.client_id, amazon.client_secret, store=at.MemoryTokenStore(), **options
        )
    assert blocking_threads() == []


EXIT_WITHOUT_CLOSE = textwrap.dedent(
    """
    import atexit, sys, threading, time

    outcome = []
    waiters = []

    @atexit.register  # first registered, so it runs after the manager's exit hook
    def report():
        for waiter in waiters:
            waiter.join(5)
        print(outcome, flush=True)

    import aioamztoken as at

    token_url, refresh_token, mode = sys.argv[1:]
    mgr = at.BlockingTokenManager(
        "emu-client-id",
        "emu-client-secret",
        store=at.MemoryTokenStore(),
        token_url=token_url,
        request_timeout=1.0,
    )
    mgr.add_account("acct", refresh_token)
    if mode == "idle":
        outcome.append(mgr.get_access_token("acct")[:5])
    else:  # a call is waiting on a slow endpoint when the interpreter exits
        def wait():
            try:
                mgr.get_access_token("acct")
            except at.ManagerClosedError:
                outcome.append("closed")
        waiters.append(threading.Thread(target=wait, daemon=True))
        waiters[0].start()
        time.sleep(0.3)
    print("exiting", flush=True)
    """
)


@pytest.mark.parametrize("mode", ["idle", "call-in-flight"])
def test_interpreter_exits_cleanly_without_close(amazon: AmazonEmulator, mode: str) -> None:
    if mode != "idle":
        amazon.latency = 60.0
    started = time.monotonic()
    child = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            EXIT_WITHOUT_CLOSE,
            amazon.token_url,
            amazon.issue_refresh_token("acct"),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 0, child.stderr
    expected = "['Atza|']" if mode == "idle" else "['closed']"
    assert child.stdout == f"exiting\n{expected}\n"
    assert child.stderr == ""  # no "Task was destroyed", no unclosed session, no traceback
    assert time.monotonic() - started < 10
    assert amazon.token_requests == 1


# ---------------------------------------------------------------------- event loops


def test_calls_from_inside_a_running_event_loop_raise_event_loop_error(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    mgr = make_blocking()
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    mgr.get_token("acct")  # fresh in the cache: the check does not depend on it
    calls: list[Callable[[], object]] = [
        lambda: mgr.get_access_token("acct"),
        lambda: mgr.get_token("acct"),
        lambda: mgr.refresh("acct"),
        lambda: mgr.accounts(),
        lambda: mgr.status("acct"),
    ]

    async def inside_a_loop() -> list[BaseException]:
        errors: list[BaseException] = []
        for call in calls:
            try:
                call()
            except Exception as exc:
                errors.append(exc)
        return errors

    errors = asyncio.run(inside_a_loop())
    assert len(errors) == len(calls)
    for error in errors:
        assert type(error) is at.EventLoopError
        assert "AsyncTokenManager" in str(error)
    assert amazon.token_requests == 1
    assert mgr.get_access_token("acct")  # unharmed, outside the loop


def test_allow_running_loop_accepts_calls_from_a_foreign_loop(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    mgr = make_blocking(allow_running_loop=True)
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))

    async def inside_a_loop() -> tuple[str, str]:
        return mgr.get_access_token("acct"), mgr.refresh("acct").access_token

    first, refreshed = asyncio.run(inside_a_loop())
    assert first != refreshed
    assert refreshed == amazon.current_access_token("acct")


def test_hook_calling_back_into_the_blocking_manager_raises_instead_of_deadlocking(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    seen: list[BaseException] = []
    mgrs: list[at.BlockingTokenManager] = []

    def on_refresh(account_id: str, token: at.Token) -> None:
        try:
            mgrs[0].get_access_token("acct")
        except Exception as exc:
            seen.append(exc)

    mgr = make_blocking(on_refresh=on_refresh, call_timeout=30.0)
    mgrs.append(mgr)
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    started = time.monotonic()
    token = mgr.get_access_token("acct")
    assert time.monotonic() - started < 10  # not a deadlock until the 30 s call_timeout
    assert [type(e) for e in seen] == [at.EventLoopError]
    assert "own event loop" in str(seen[0])
    assert token == amazon.current_access_token("acct")


def test_coroutine_hook_may_await_the_underlying_manager(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    fetched: list[str] = []
    mgrs: list[at.BlockingTokenManager] = []

    async def on_refresh(account_id: str, token: at.Token) -> None:
        if account_id == "a":
            fetched.append(await mgrs[0].manager.get_access_token("b"))

    mgr = make_blocking(on_refresh=on_refresh)
    mgrs.append(mgr)
    mgr.add_account("a", amazon.issue_refresh_token("a"))
    mgr.add_account("b", amazon.issue_refresh_token("b"))
    mgr.get_access_token("a")
    assert fetched == [amazon.current_access_token("b")]
    assert mgr.get_access_token("b") == fetched[0]


def test_underlying_manager_used_from_a_thread_with_its_own_loop_raises(
    amazon: AmazonEmulator, make_blocking: BlockingFactory
) -> None:
    mgr = make_blocking()
    mgr.add_account("acct", amazon.issue_refresh_token("acct"))
    with pytest.raises(at.EventLoopError, match="another event loop"):
        asyncio.run(mgr.manager.refresh("acct"))

    def from_another_thread() -> Any:
        return asyncio.run(mgr.manager.refresh("acct"))

    with (
        ThreadPoolExecutor(1) as pool,
        pytest.raises(at.EventLoopError, match="BlockingTokenManager"),
    ):
        pool.submit(from_another_thread).result()
    assert amazon.token_requests == 0
