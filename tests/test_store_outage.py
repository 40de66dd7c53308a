"""A store that stops answering fails every queued refresh at once, not one slot at a time.

At most ``2 * max_concurrent_refreshes`` refreshes are at work at once (the descriptor
bound of issue 11); the others queue. When the store itself stops answering, the refreshes
at work fail at their deadline, and those queued behind them get the same error at once
instead of each waiting its turn to time out.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator


class HungStore:
    """A user-written store whose ``load`` never returns (a hung mount)."""

    def __init__(self) -> None:
        self.loads = 0

    async def load(self, account_id: str) -> at.Token | None:
        self.loads += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def save(self, account_id: str, token: at.Token) -> None:
        await asyncio.Event().wait()

    async def delete(self, account_id: str) -> None:
        return None

    async def accounts(self) -> list[str]:
        return []


async def _timed(awaitable: Any) -> tuple[object, float]:
    started = time.monotonic()
    try:
        result: object = await awaitable
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


async def test_200_cold_accounts_on_a_hung_store_all_fail_within_one_budget(
    emulator: AmazonEmulator,
) -> None:
    store = HungStore()
    budget = 1.0
    async with at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        retry_budget=budget,
        request_timeout=1.0,
        max_concurrent_refreshes=5,  # 10 at work at once, 190 queued
    ) as mgr:
        outcomes = await asyncio.gather(
            *(_timed(mgr.get_access_token(f"acct-{n}")) for n in range(200))
        )
    kinds = {type(result).__name__ for result, _ in outcomes}
    assert kinds == {"StorageError"}, kinds
    slowest = max(seconds for _, seconds in outcomes)
    # One budget for the first ten, then at once for the rest: not 20 budgets in a row.
    assert slowest < budget + 3, f"the slowest caller waited {slowest:.1f}s"
    assert all(getattr(result, "unavailable", False) for result, _ in outcomes)
    assert store.loads <= 20  # the queued ones never called the hung store
    assert emulator.token_requests == 0


async def test_accounts_arriving_after_an_outage_try_the_store_again(
    emulator: AmazonEmulator,
) -> None:
    """Only refreshes queued behind the failure fail at once: a later one tries again."""
    store = HungStore()
    async with at.AsyncTokenManager(
        emulator.client_id,
        emulator.client_secret,
        store=store,
        token_url=emulator.token_url,
        retry_budget=0.5,
        request_timeout=1.0,
    ) as mgr:
        first, _ = await _timed(mgr.get_access_token("a"))
        assert isinstance(first, at.StorageError)
        loads = store.loads
        second, _ = await _timed(mgr.get_access_token("b"))
        assert isinstance(second, at.StorageError)
        assert store.loads == loads + 1  # it really asked the store again
