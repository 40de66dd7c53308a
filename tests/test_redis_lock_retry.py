"""RedisTokenStore's lock when Redis stalls mid-take: redis-py re-sends a SET that timed
out, and the first one may have landed; the lock is then ours, not someone else's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

pytest.importorskip("redis", reason="redis-py is not installed: pip install 'aioamztoken[redis]'")

import aioamztoken as at

from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

pytestmark = pytest.mark.redis


@pytest.fixture
def server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    running = RedisServer().start()
    yield running
    running.stop()


async def test_a_lock_taken_by_a_timed_out_set_that_landed_is_held_not_waited_for(
    server: RedisServer,
) -> None:
    entered = asyncio.Event()
    leave = asyncio.Event()

    async def hold(store: at.RedisTokenStore) -> None:
        async with store.lock("acct"):
            entered.set()
            await leave.wait()

    async with at.RedisTokenStore(server.url, timeout=0.4, lock_ttl=60) as store:
        assert await store.accounts() == []  # connected
        server.pause()
        holder = asyncio.ensure_future(hold(store))
        try:
            # The SET times out after 0.4 s and is sent again; Redis wakes while the second
            # waits, and runs the first (the lock is taken) before the second (refused).
            await asyncio.sleep(0.5)
        finally:
            server.resume()
        await asyncio.wait_for(entered.wait(), 10)  # not the 60 s lock_ttl
        # Held: another store (another process, say) waits for it ...
        async with at.RedisTokenStore(server.url, timeout=2) as other:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(enter_and_leave(other), 0.3)
            leave.set()
            await asyncio.wait_for(holder, 10)
            # ... and has it once it is given back.
            await asyncio.wait_for(enter_and_leave(other), 10)


async def enter_and_leave(store: at.RedisTokenStore) -> None:
    async with store.lock("acct"):
        pass
