"""Redis waits are bounded (issue 11): with redis-server frozen (SIGSTOP), 300 callers at
once against ``max_connections=50`` and ``timeout=1`` all get StorageError within about
3 x timeout, none queueing for a pool connection without limit; after SIGCONT it works."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator

import pytest

pytest.importorskip("redis", reason="redis-py is not installed: pip install 'aioamztoken[redis]'")

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator

from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

pytestmark = pytest.mark.redis

ACCOUNTS = 300
TIMEOUT = 1.0
#: "About 3 x timeout": three tries of one command, their backoff, and a busy machine.
BOUND = 3 * TIMEOUT + 2.5


@pytest.fixture
def server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer().start()
    yield server
    server.stop()  # resumes a frozen server first


async def timed(call: Awaitable[object]) -> tuple[object, float]:
    started = time.monotonic()
    try:
        result: object = await call
    except Exception as exc:
        result = exc
    return result, time.monotonic() - started


async def test_300_callers_on_a_frozen_redis_all_fail_within_3_timeouts_then_recover(
    server: RedisServer,
) -> None:
    async with AmazonEmulator() as emulator:
        async with at.RedisTokenStore(server.url) as seed:
            for n in range(ACCOUNTS):
                refresh = emulator.issue_refresh_token(f"a{n}")
                await seed.save(f"a{n}", at.Token("Atza|expired", refresh, 1.0))
        store = at.RedisTokenStore(server.url, max_connections=50, timeout=TIMEOUT)
        async with (
            store,
            at.AsyncTokenManager(
                emulator.client_id,
                emulator.client_secret,
                store=store,
                token_url=emulator.token_url,
            ) as mgr,
        ):
            server.pause()
            try:
                outcomes = await asyncio.gather(
                    *(timed(mgr.get_access_token(f"a{n}")) for n in range(ACCOUNTS))
                )
            finally:
                server.resume()
            slowest = max(seconds for _, seconds in outcomes)
            kinds = {type(result).__name__ for result, _ in outcomes}
            assert kinds == {"StorageError"}, kinds
            assert slowest < BOUND, f"the slowest caller waited {slowest:.1f}s"
            for result, _ in outcomes:
                assert server.url.split("//")[1].split("/")[0] in str(result)  # names Redis
            assert emulator.token_requests == 0

            # Recovered: the same store and manager serve every account again.
            tokens = await asyncio.wait_for(
                asyncio.gather(*(mgr.get_access_token(f"a{n}") for n in range(ACCOUNTS))), 60
            )
            assert len(set(tokens)) == ACCOUNTS
            assert emulator.refresh_grants == ACCOUNTS


async def test_store_calls_beyond_max_connections_fail_within_the_timeout_when_frozen(
    server: RedisServer,
) -> None:
    async with at.RedisTokenStore(server.url, max_connections=5, timeout=TIMEOUT) as store:
        await store.save("a", at.Token("Atza|x", "Atzr|x", 2e9))
        server.pause()
        try:
            outcomes = await asyncio.gather(*(timed(store.load("a")) for _ in range(40)))
        finally:
            server.resume()
        assert {type(result).__name__ for result, _ in outcomes} == {"StorageError"}
        assert max(seconds for _, seconds in outcomes) < BOUND
        assert await asyncio.wait_for(store.load("a"), 10) == at.Token("Atza|x", "Atzr|x", 2e9)
