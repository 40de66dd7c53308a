"""Review of issue 15: the SQL stores' needs-reauth mark is compared and set atomically.

The manager flags a refused refresh token through ``mark_refused``; a store without its
own ``mark_needs_reauth`` falls back to load, compare, save, which overwrites a newer
refresh token written between the load and the save. These tests hold such a write open
(uncommitted) on a connection of their own while the mark runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import aioamztoken as at
from aioamztoken import Token
from aioamztoken.stores._base import mark_refused
from aioamztoken.stores._values import encode_value

from .engines import ENGINES, Engine, make_engine
from .test_stores import (
    test_a_lock_excludes_a_second_holder_and_not_other_accounts,
    test_a_lock_is_released_when_its_holder_is_cancelled,
    test_a_non_string_account_id_is_a_type_error,
    test_a_saved_token_loads_back_equal,
    test_an_empty_or_unencodable_account_id_is_a_value_error,
    test_any_account_id_roundtrips_and_stays_distinct,
    test_delete_forgets_only_that_account_and_absent_accounts_are_no_error,
    test_every_store_satisfies_both_protocols,
    test_save_replaces_the_previous_token,
    test_saves_can_run_inside_the_lock_of_their_account,
)

KEY = at.stores.TokenCipher.generate_key()

# The shared store suite of tests/test_stores.py, collected here again with ``store``
# below: each engine in turn (the engine suite in test_store_engines.py is its own).
SHARED_SUITE = [
    test_a_lock_excludes_a_second_holder_and_not_other_accounts,
    test_a_lock_is_released_when_its_holder_is_cancelled,
    test_a_non_string_account_id_is_a_type_error,
    test_a_saved_token_loads_back_equal,
    test_an_empty_or_unencodable_account_id_is_a_value_error,
    test_any_account_id_roundtrips_and_stays_distinct,
    test_delete_forgets_only_that_account_and_absent_accounts_are_no_error,
    test_every_store_satisfies_both_protocols,
    test_save_replaces_the_previous_token,
    test_saves_can_run_inside_the_lock_of_their_account,
]


@pytest.fixture(
    params=[
        pytest.param(name, marks=() if mark is None else getattr(pytest.mark, mark))
        for name, mark in ENGINES.items()
    ]
)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[object]:
    """Each engine's store in turn (encrypted, so the suite covers values under a key)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVIEW_KEY", KEY)
        opened = make_engine(request, request.param, tmp_path).open("shared", key_env="REVIEW_KEY")
    async with opened:
        yield opened


def token(n: int, *, flagged: bool = False) -> Token:
    return Token(f"Atza|{n}", f"Atzr|{n}", 2e9, needs_reauth=flagged)


@pytest.mark.parametrize("encrypted", [False, True])
async def test_the_sql_stores_flag_only_the_refused_refresh_token(
    sql_engine: Engine, encrypted: bool
) -> None:
    params = {"key_env": "REVIEW_KEY"} if encrypted else {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REVIEW_KEY", KEY)
        store = sql_engine.open("marks", **params)
    async with store:
        await store.save("a", token(2))
        await store.save("b", token(7))
        assert await store.mark_needs_reauth("a", "Atzr|1") is False  # a newer one is stored
        assert await store.load("a") == token(2)
        assert await store.mark_needs_reauth("absent", "Atzr|1") is False
        assert await store.load("absent") is None
        assert await store.mark_needs_reauth("a", "Atzr|2") is True
        assert await store.load("a") == token(2, flagged=True)
        assert await store.mark_needs_reauth("a", "Atzr|2") is True  # already flagged
        assert await store.load("a") == token(2, flagged=True)
        assert await store.load("b") == token(7)  # another account untouched
        raw = sql_engine.get_raw("marks", "a")
        assert raw is not None
        assert (b"Atzr|2" in raw) is not encrypted


async def test_the_sql_stores_never_mark_over_an_unreadable_value(sql_engine: Engine) -> None:
    async with sql_engine.open("marks") as store:
        await store.save("a", token(1))
        sql_engine.put_raw("marks", "a", b"\xffnot a token")
        with pytest.raises(at.StorageError):
            await store.mark_needs_reauth("a", "Atzr|1")
        assert sql_engine.get_raw("marks", "a") == b"\xffnot a token"


async def _mark_while_a_newer_token_is_being_written(
    store: at.stores.TokenStore, begin: object, commit: object
) -> bool:
    """Start the mark of Atzr|1 while another connection writes Atzr|2 (uncommitted),
    then commit that write; the mark's result."""
    await begin()  # type: ignore[operator]
    marking = asyncio.ensure_future(mark_refused(store, "a", "Atzr|1"))
    await asyncio.sleep(1.5)  # the mark has read, or waits for the write lock
    await commit()  # type: ignore[operator]
    return await asyncio.wait_for(marking, 60)


async def test_sqlite_mark_never_overwrites_a_refresh_token_saved_meanwhile(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.db"
    async with at.SQLiteTokenStore(path, namespace="ns") as store:
        await store.save("a", token(1))
        other = sqlite3.connect(path, isolation_level=None, timeout=30)

        async def begin() -> None:
            other.execute("BEGIN IMMEDIATE")
            other.execute(
                "UPDATE aioamztoken_tokens SET value = ? WHERE namespace = ? AND account_id = ?",
                (encode_value(None, "a", token(2)), b"ns", b"a"),
            )

        async def commit() -> None:
            other.execute("COMMIT")

        try:
            marked = await _mark_while_a_newer_token_is_being_written(store, begin, commit)
        finally:
            other.close()
        assert marked is False
        assert await store.load("a") == token(2)


@pytest.mark.postgres
async def test_postgres_mark_never_overwrites_a_refresh_token_saved_meanwhile(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    sql_engine = make_engine(request, "postgres", tmp_path)
    asyncpg = pytest.importorskip("asyncpg")
    async with sql_engine.open("ns") as store:
        await store.save("a", token(1))
        other = await asyncpg.connect(sql_engine.base_url)
        tx = other.transaction()

        async def begin() -> None:
            await tx.start()
            await other.execute(
                "UPDATE aioamztoken_tokens SET value = $1 WHERE namespace = $2 AND account_id = $3",
                encode_value(None, "a", token(2)),
                b"ns",
                b"a",
            )

        async def commit() -> None:
            await tx.commit()

        try:
            marked = await _mark_while_a_newer_token_is_being_written(store, begin, commit)
        finally:
            await other.close()
        assert marked is False
        assert await store.load("a") == token(2)


# ------------------------------------------------------------------ contract probes, other data


async def test_sqlite_namespaces_in_one_file_and_keys_stay_apart(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "shared.db"
    other_key = at.stores.TokenCipher.generate_key()
    async with (
        at.SQLiteTokenStore(path, namespace="team-a", key=KEY) as a,
        at.SQLiteTokenStore(str(path), namespace="team-b") as b,
    ):
        await a.save("acct", Token("Atza|secret-access-a", "Atzr|secret-refresh-a", 2e9))
        await b.save("acct", token(5))
        assert await b.load("acct") == token(5)
        assert (await a.load("acct")).refresh_token == "Atzr|secret-refresh-a"  # type: ignore[union-attr]
        await b.delete("acct")
        assert await a.accounts() == ["acct"]
        assert await b.accounts() == []
    on_disk = b"".join(p.read_bytes() for p in path.parent.iterdir() if p.is_file())
    assert b"secret-refresh-a" not in on_disk
    assert b"secret-access-a" not in on_disk
    async with at.SQLiteTokenStore(path, namespace="team-a", key=other_key) as wrong:
        with pytest.raises(at.DecryptionError) as caught:
            await wrong.load("acct")
        assert "secret" not in str(caught.value)
    via_url = at.open_store(f"sqlite://{path}?namespace=team-a")
    async with via_url:
        with pytest.raises(at.StorageError):  # encrypted, and this store has no key
            await via_url.load("acct")


@pytest.mark.postgres
async def test_postgres_scheme_pool_passed_in_and_wrong_password_chain(
    request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    asyncpg = pytest.importorskip("asyncpg")
    server = request.getfixturevalue("postgres_server")
    make_engine(request, "postgres", tmp_path)  # the table dropped: the store creates it
    dsn = server.dsn.replace("postgresql://", "postgres://", 1)
    store = at.open_store(f"{dsn}?namespace=fleet-x")
    assert isinstance(store, at.PostgresTokenStore)
    async with store:
        await store.save("acct", token(3))
    pool = await asyncpg.create_pool(server.dsn, min_size=1, max_size=1)
    try:
        async with at.PostgresTokenStore(pool=pool, namespace="fleet-x", key=None) as mine:
            assert await mine.load("acct") == token(3)
            async with mine.lock("acct"):
                await mine.save("acct", token(4))
        assert await pool.fetchval("SELECT 41 + 1") == 42  # left open and usable
    finally:
        await pool.close()
    wrong = server.dsn.replace(server.password, "Wr0ngPassw0rd")
    async with at.PostgresTokenStore(wrong, namespace="fleet-x") as bad:
        for attempt in (bad.save("acct", token(9)), bad.mark_needs_reauth("acct", "Atzr|4")):
            with pytest.raises(at.StorageError) as caught:
                await attempt
            seen, chain = caught.value, []
            while seen is not None:
                chain.append(f"{seen!r} {seen}")
                seen = seen.__cause__ or seen.__context__
            assert "Wr0ngPassw0rd" not in " ".join(chain)
            assert "127.0.0.1" in str(caught.value)


@pytest.mark.redis
async def test_cluster_and_sentinel_urls_mark_compare_first(request: pytest.FixtureRequest) -> None:
    cluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    first = cluster.nodes[1]
    async with at.open_store(f"redis+cluster://127.0.0.1:{first.port}/?namespace=rv") as store:
        await store.save("acct", token(2))
        assert await mark_refused(store, "acct", "Atzr|1") is False
        assert await store.load("acct") == token(2)
        assert await mark_refused(store, "acct", "Atzr|2") is True
        assert await store.load("acct") == token(2, flagged=True)
    sentinel = request.getfixturevalue("redis_sentinel")
    sentinel.flush()
    url = f"redis+sentinel://127.0.0.1:1,127.0.0.1:{sentinel.sentinel_port}/{sentinel.SERVICE}"
    async with at.open_store(f"{url}?namespace=rv") as store:
        await store.save("acct", token(6))
        async with store.lock("acct"):
            assert await mark_refused(store, "acct", "Atzr|6") is True
        assert await store.load("acct") == token(6, flagged=True)


@pytest.mark.postgres
async def test_a_dsn_asyncpg_cannot_parse_is_a_storage_error_without_its_password() -> None:
    pytest.importorskip("asyncpg")
    store = at.PostgresTokenStore("postgresql://u:S3cretPw@127.0.0.1:notaport/db", timeout=3)
    for attempt in (store.load("a"), store.accounts()):
        with pytest.raises(at.StorageError, match="ValueError") as caught:
            await attempt
        assert "S3cretPw" not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None
    with pytest.raises(at.StorageError, match="take a lock"):
        async with store.lock("a"):
            pass
    await store.aclose()


async def test_a_refused_refresh_token_is_flagged_in_every_engine(engine: Engine) -> None:
    from aioamztoken.testing import AmazonEmulator

    async with AmazonEmulator() as emulator:
        async with engine.open("refused") as store:
            refused = emulator.issue_refresh_token("acct")
            await store.save("acct", Token("", refused, 0.0))
            await store.save("other", Token("", emulator.issue_refresh_token("other"), 0.0))
            emulator.revoke("acct")
            async with at.AsyncTokenManager(
                emulator.client_id,
                emulator.client_secret,
                store=store,
                token_url=emulator.token_url,
            ) as mgr:
                with pytest.raises(at.InvalidGrantError):
                    await mgr.get_access_token("acct")
                assert await mgr.get_access_token("other") == emulator.current_access_token(
                    "other"
                )
        async with engine.open("refused") as later:  # another process's view
            assert await later.load("acct") == Token("", refused, 0.0, needs_reauth=True)
            other = await later.load("other")
            assert other is not None
            assert not other.needs_reauth


@pytest.mark.redis
async def test_a_cluster_client_passed_in_marks_compare_first(request: pytest.FixtureRequest) -> None:
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    cluster = request.getfixturevalue("redis_cluster")
    cluster.flush()
    client = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", cluster.nodes[2].port)])
    try:
        async with at.RedisTokenStore(client=client, namespace="rv-client") as store:
            for n in range(12):  # accounts spread over the masters' slots
                await store.save(f"acct-{n}", token(n))
            for n in range(12):
                assert await mark_refused(store, f"acct-{n}", f"Atzr|{n + 1}") is False
                assert await mark_refused(store, f"acct-{n}", f"Atzr|{n}") is True
                assert await store.load(f"acct-{n}") == token(n, flagged=True)
        assert await client.ping()  # a client passed in is left open
    finally:
        await client.aclose()
