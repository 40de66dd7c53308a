"""Shutdown keeps what the endpoint issued, never hangs, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import time
import warnings

import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator


def expired(emulator: AmazonEmulator, account_id: str) -> at.Token:
    return at.Token("Atza|old", emulator.issue_refresh_token(account_id), time.time() - 10)


async def test_concurrent_acloses_all_wait_for_the_one_close(emulator: AmazonEmulator) -> None:
    store = at.MemoryTokenStore()
    await store.save("acct", expired(emulator, "acct"))
    mgr = at.AsyncTokenManager(
        emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
    )
    emulator.latency = 0.5
    caller = asyncio.ensure_future(mgr.get_access_token("acct"))
    while emulator.in_flight == 0:
        await asyncio.sleep(0.01)
    seen: list[str] = []

    async def close() -> None:
        await mgr.aclose()
        stored = await store.load("acct")
        assert stored is not None
        seen.append(stored.access_token)  # what the store holds when this aclose returns

    await asyncio.gather(*(close() for _ in range(5)))
    token = await caller
    assert seen == [token] * 5  # none returned before the token in flight was saved
    assert mgr.closed
    assert emulator.token_requests == 1


async def test_aclose_from_inside_a_hook_completes_and_closes_the_session(
    emulator: AmazonEmulator,
) -> None:
    closed_in_hook: list[bool] = []
    made: list[at.AsyncTokenManager] = []

    async def on_refresh(account_id: str, token: at.Token) -> None:
        await asyncio.wait_for(made[0].aclose(), 5)  # a hook shutting everything down
        closed_in_hook.append(made[0].closed)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mgr = at.AsyncTokenManager(
            emulator.client_id,
            emulator.client_secret,
            store=at.MemoryTokenStore(),
            token_url=emulator.token_url,
            on_refresh=on_refresh,
        )
        made.append(mgr)
        await mgr.add_account("acct", emulator.issue_refresh_token("acct"))
        token = await asyncio.wait_for(mgr.get_access_token("acct"), 10)
        assert token == emulator.current_access_token("acct")
        assert closed_in_hook == [True]
        await asyncio.wait_for(mgr.aclose(), 5)  # and once more, from outside
        del mgr, made[:]
        gc.collect()
    assert [str(w.message) for w in caught if "nclosed" in str(w.message)] == []


async def test_aclose_from_a_hook_while_closing_does_not_wait_for_itself(
    emulator: AmazonEmulator,
) -> None:
    store = at.MemoryTokenStore()
    await store.save("acct", expired(emulator, "acct"))
    in_hook: list[float] = []
    mgr: at.AsyncTokenManager

    async def on_refresh(account_id: str, token: at.Token) -> None:
        started = time.monotonic()
        await mgr.aclose()  # the close under way waits for this very hook
        in_hook.append(time.monotonic() - started)

    mgr = at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        on_refresh=on_refresh,
    )
    emulator.latency = 0.3
    caller = asyncio.ensure_future(mgr.get_access_token("acct"))
    while emulator.in_flight == 0:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    await asyncio.wait_for(mgr.aclose(), 5)
    assert time.monotonic() - started < 3.0
    assert len(in_hook) == 1
    assert in_hook[0] < 1.0
    assert await caller == (await store.load("acct")).access_token  # type: ignore[union-attr]


async def test_requests_sent_when_closing_finish_and_rotated_tokens_are_kept(
    emulator: AmazonEmulator,
) -> None:
    emulator.rotate_refresh_tokens = True
    store = at.MemoryTokenStore()
    accounts = [f"a{n}" for n in range(20)]
    for account_id in accounts:
        await store.save(account_id, expired(emulator, account_id))
    mgr = at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        max_concurrent_refreshes=5,
    )
    emulator.latency = 0.5
    callers = [asyncio.ensure_future(mgr.get_access_token(a)) for a in accounts]
    while emulator.in_flight < 5:
        await asyncio.sleep(0.01)
    await mgr.aclose()  # 5 requests are at the endpoint, 15 queued behind them
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    got = [o for o in outcomes if isinstance(o, str)]
    assert len(got) == 5 == emulator.refresh_grants
    assert all(isinstance(o, at.ManagerClosedError) for o in outcomes if not isinstance(o, str))
    # Every account's stored refresh token is the live one: a new manager refreshes all.
    emulator.latency = 0.0
    async with at.AsyncTokenManager(
        emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
    ) as again:
        for account_id in accounts:
            await again.refresh(account_id)
    assert emulator.refresh_grants == 5 + 20


CLOSE_IN_EVERY_STATE = textwrap.dedent(
    """
    import asyncio, gc, time
    import aioamztoken as at
    from aioamztoken.testing import AmazonEmulator

    class Hung(at.MemoryTokenStore):
        hang = False
        async def save(self, account_id, token):
            if self.hang:
                await asyncio.Event().wait()
            await super().save(account_id, token)

    async def main():
        async with AmazonEmulator() as amazon:
            def new(store, **kw):
                return at.AsyncTokenManager(amazon.client_id, amazon.client_secret,
                                            store=store, token_url=amazon.token_url, **kw)
            # 1. requests in flight, others queued, a failing one, a code exchange
            store = at.MemoryTokenStore()
            mgr = new(store, max_concurrent_refreshes=2, request_timeout=1.0)
            for n in range(6):
                await mgr.add_account(f"a{n}", amazon.issue_refresh_token(f"a{n}"))
            amazon.latency = 0.3
            amazon.fail_next(1, status=503)
            calls = [asyncio.ensure_future(mgr.get_access_token(f"a{n}")) for n in range(6)]
            code = amazon.issue_code("c", redirect_uri="http://localhost/cb")
            calls.append(asyncio.ensure_future(
                mgr.exchange_code("c", code, redirect_uri="http://localhost/cb")))
            await asyncio.sleep(0.1)
            await mgr.aclose()
            await asyncio.gather(*calls, return_exceptions=True)
            # 2. a hung store, and callers that are never awaited
            hung = Hung()
            mgr = new(hung, request_timeout=0.5)
            await mgr.add_account("h", amazon.issue_refresh_token("h"))
            hung.hang = True
            amazon.latency = 0.0
            call = asyncio.ensure_future(mgr.get_access_token("h"))
            await asyncio.sleep(0.2)
            await mgr.aclose()
            await asyncio.gather(call, return_exceptions=True)
            # 3. a close from a hook, and a manager never used
            async def hook(account_id, token):
                await mgr3.aclose()
            mgr3 = new(at.MemoryTokenStore(), on_refresh=hook)
            await mgr3.add_account("k", amazon.issue_refresh_token("k"))
            await mgr3.get_access_token("k")
            await new(at.MemoryTokenStore()).aclose()
        gc.collect()
        await asyncio.sleep(0.1)
        print("done", flush=True)

    asyncio.run(main())
    gc.collect()
    """
)


def test_closing_in_every_state_prints_no_warning_at_all() -> None:
    child = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", "-c", CLOSE_IN_EVERY_STATE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout == "done\n"
    # No "Task was destroyed", "Unclosed client session", "never retrieved" or traceback;
    # only the one line naming the abandoned account of the hung store.
    lines = [line for line in child.stderr.splitlines() if line.strip()]
    assert all("'h'" in line and "without waiting" in line for line in lines), child.stderr
    assert len(lines) <= 1, child.stderr


@pytest.mark.parametrize("hook", ["on_refresh_error", "on_reauth_required"])
async def test_aclose_from_an_error_hook_completes(emulator: AmazonEmulator, hook: str) -> None:
    mgr: at.AsyncTokenManager
    done: list[bool] = []

    async def close(*args: object) -> None:
        await mgr.aclose()
        done.append(mgr.closed)

    mgr = at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=at.MemoryTokenStore(),
        token_url=emulator.token_url,
        **{hook: close},  # type: ignore[arg-type]
    )
    await mgr.add_account("acct", "Atzr|never-issued")
    with pytest.raises(at.InvalidGrantError):
        await asyncio.wait_for(mgr.get_access_token("acct"), 10)
    assert done == [True]
    await mgr.aclose()
