"""PostgresTokenStore against a real PostgreSQL: advisory locks on pooled connections that
never need a second one, no transaction held across a refresh, errors without passwords."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

import aioamztoken as at
from aioamztoken.testing import AmazonEmulator
from bench.bench_stores import save_cost

from .db_servers import PostgresServer

asyncpg = pytest.importorskip("asyncpg", reason="asyncpg is not installed: pip install 'aioamztoken[postgres]'")

pytestmark = pytest.mark.postgres


@pytest.fixture
async def dsn(postgres_server: PostgresServer) -> str:
    conn = await asyncpg.connect(postgres_server.dsn)
    await conn.execute("DROP TABLE IF EXISTS aioamztoken_tokens")
    await conn.close()
    return postgres_server.dsn


def token(n: int = 1, *, expires_at: float = 2e9) -> at.Token:
    return at.Token(f"Atza|access-{n}", f"Atzr|refresh-{n}", expires_at, scope="s")


async def test_the_table_is_created_once_even_by_many_stores_starting_together(dsn: str) -> None:
    stores = [at.PostgresTokenStore(dsn) for _ in range(5)]
    try:
        await asyncio.gather(*(s.save(f"acct-{n}", token(n)) for n, s in enumerate(stores)))
        assert await stores[0].accounts() == [f"acct-{n}" for n in range(5)]
    finally:
        for store in stores:
            await store.aclose()
    conn = await asyncpg.connect(dsn)
    try:
        columns = await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'aioamztoken_tokens' ORDER BY ordinal_position"
        )
    finally:
        await conn.close()
    assert [tuple(c) for c in columns] == [
        ("namespace", "bytea"),
        ("account_id", "bytea"),
        ("value", "bytea"),
    ]


async def test_a_lock_holding_the_only_pooled_connection_still_loads_and_saves(dsn: str) -> None:
    async with at.PostgresTokenStore(dsn, max_connections=1, lock_timeout=5) as store:
        await store.save("a", token(1))
        async with store.lock("a"):
            # The pool's one connection holds the lock: these must run on it.
            assert await store.load("a") == token(1)
            await asyncio.wait_for(store.save("a", token(2)), 10)
            await asyncio.wait_for(store.delete("a"), 10)
            await asyncio.wait_for(store.save("a", token(3)), 10)
        assert await store.load("a") == token(3)


async def test_more_locked_accounts_than_pooled_connections_never_stall(dsn: str) -> None:
    pool = await asyncpg.create_pool(dsn, min_size=0, max_size=2)
    try:
        async with at.PostgresTokenStore(pool=pool, lock_timeout=30) as store:

            async def refresh(n: int) -> None:
                async with store.lock(f"acct-{n}"):
                    await store.load(f"acct-{n}")
                    await asyncio.sleep(0.02)  # the token request: no database work
                    await store.save(f"acct-{n}", token(n))

            await asyncio.wait_for(asyncio.gather(*(refresh(n) for n in range(20))), 60)
            assert len(await store.accounts()) == 20
        assert not pool._closed  # a pool passed in is left open
        assert await pool.fetchval("SELECT count(*) FROM aioamztoken_tokens") == 20
    finally:
        await pool.close()


async def test_no_transaction_stays_open_while_a_refresh_waits_for_amazon(
    emulator: AmazonEmulator, dsn: str
) -> None:
    async with at.PostgresTokenStore(dsn) as store:
        await store.save(
            "acct",
            at.Token(
                emulator.issue_access_token("acct", lifetime=1),
                emulator.issue_refresh_token("acct"),
                time.time() - 60,
            ),
        )
        emulator.latency = 1.0
        async with at.AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:
            refresh = asyncio.create_task(mgr.get_access_token("acct"))
            deadline = time.monotonic() + 30
            while emulator.in_flight == 0:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            watcher = await asyncpg.connect(dsn)
            try:
                states = await watcher.fetch(
                    "SELECT state FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                    "AND datname = current_database() AND backend_type = 'client backend'"
                )
                locks = await watcher.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                )
            finally:
                await watcher.close()
            assert await refresh == emulator.current_access_token("acct")
    assert locks == 1  # the refresh holds the account's lock...
    assert [s["state"] for s in states if s["state"].startswith("idle in transaction")] == []


async def test_the_server_frees_a_lock_whose_connection_died(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="aioamztoken")

    async def take_and_save(store: at.PostgresTokenStore) -> None:
        async with store.lock("a"):
            await store.save("a", token(2))

    async with at.PostgresTokenStore(dsn) as one, at.PostgresTokenStore(dsn) as two:
        async with one.lock("a"):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(take_and_save(two), 0.5)
            killer = await asyncpg.connect(dsn)
            try:  # the holder's connection dies (as when its host goes away)
                await killer.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks "
                    "WHERE locktype = 'advisory' AND granted"
                )
            finally:
                await killer.close()
            await asyncio.wait_for(take_and_save(two), 10)
        assert "was lost while held" in caplog.text
        assert await one.load("a") == token(2)


async def test_waiting_longer_than_lock_timeout_is_a_storage_error(dsn: str) -> None:
    async with (
        at.PostgresTokenStore(dsn) as one,
        at.PostgresTokenStore(dsn, lock_timeout=0.3) as two,
    ):
        async with one.lock("a"):
            started = time.monotonic()
            with pytest.raises(at.StorageError, match=r"lock_timeout=0\.3s"):
                async with two.lock("a"):
                    pass
            assert time.monotonic() - started < 10
        async with two.lock("a"):  # and the failed wait left nothing behind
            pass


async def test_an_unreachable_server_or_a_wrong_password_is_a_storage_error_without_it(
    postgres_server: PostgresServer,
) -> None:
    store = at.PostgresTokenStore("postgresql://app:hunter2@127.0.0.1:1/tokens", timeout=2)
    assert "hunter2" not in repr(store)
    assert repr(store) == "PostgresTokenStore('postgresql://app@127.0.0.1:1/tokens', namespace='aioamztoken')"
    for attempt in (store.load("a"), store.save("a", token()), store.accounts()):
        with pytest.raises(at.StorageError) as caught:
            await attempt
        assert "postgresql://app@127.0.0.1:1/tokens" in str(caught.value)
        assert "hunter2" not in str(caught.value)
    with pytest.raises(at.StorageError, match="take a lock"):
        async with store.lock("a"):
            pass
    await store.aclose()
    wrong = postgres_server.dsn.replace(postgres_server.password, "not-the-password")
    async with at.PostgresTokenStore(wrong) as bad:
        with pytest.raises(at.StorageError, match="password authentication failed") as caught:
            await bad.load("a")
        assert "not-the-password" not in str(caught.value)
        assert postgres_server.password not in str(caught.value)


def test_bad_arguments_are_value_errors() -> None:
    with pytest.raises(ValueError, match="not both"):
        at.PostgresTokenStore("postgresql://x/y", pool=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="namespace"):
        at.PostgresTokenStore("postgresql://x/y", namespace="")
    with pytest.raises(ValueError, match="positive"):
        at.PostgresTokenStore("postgresql://x/y", lock_timeout=0)
    with pytest.raises(ValueError, match="at least 1"):
        at.PostgresTokenStore("postgresql://x/y", max_connections=0)
    assert "PG" in at.PostgresTokenStore().url  # libpq's environment variables


def test_postgres_urls_open_the_store_and_keep_their_options() -> None:
    store = at.open_store("postgres://u:pw@db.example:5433/app?namespace=ads&sslmode=disable")
    assert isinstance(store, at.PostgresTokenStore)
    assert store.namespace == "ads"
    assert store.url == "postgres://u@db.example:5433/app"
    assert store._dsn == "postgres://u:pw@db.example:5433/app?sslmode=disable"
    with pytest.raises(ValueError, match="holds a key"):
        at.open_store("postgresql://db/app?key=abc")


@pytest.mark.slow
async def test_a_save_at_10000_accounts_costs_about_what_it_costs_at_10(
    dsn: str, tmp_path: Path
) -> None:
    # 1.5x in bench/bench_stores.py; generous here on a shared machine.
    cost = await save_cost("postgres", tmp_path, None, saves=40, rounds=4, postgres_dsn=dsn)
    assert cost.ratio <= 2.5, f"{cost.large_us:.0f} us at 10,000 vs {cost.small_us:.0f} us at 10"


def test_dsns_are_shown_without_any_password() -> None:
    keyword = at.PostgresTokenStore("host=db password=hunter2")
    assert keyword.url == "<a PostgreSQL DSN>"
    query = at.PostgresTokenStore("postgresql://u@db/app?password=hunter2")
    assert query.url == "postgresql://u@db/app"
    failure = query._failure("read", OSError("auth with hunter2 failed"))
    assert "hunter2" not in str(failure)
    assert "postgresql://u@db/app" in str(failure)


async def test_an_error_quoting_a_query_argument_never_shows_or_chains_it(dsn: str) -> None:
    async with at.PostgresTokenStore(dsn) as store:

        async def bad_query(db: object) -> object:
            return await db.fetchval("SELECT $1::bytea", "Atzr|SECRET-REFRESH")  # type: ignore[attr-defined]

        with pytest.raises(at.StorageError) as caught:
            await store._with(None, "read", bad_query)
    error: BaseException | None = caught.value
    while error is not None:  # the whole chain
        assert "SECRET" not in str(error)
        assert "SECRET" not in repr(getattr(error, "args", ""))
        error = error.__cause__ or error.__context__
    assert "DataError" in str(caught.value)
