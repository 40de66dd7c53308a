"""Review of issue 15: the SQL stores' needs-reauth mark is compared and set atomically.

The manager flags a refused refresh token through ``mark_refused``; a store without its
own ``mark_needs_reauth`` falls back to load, compare, save, which overwrites a newer
refresh token written between the load and the save. These tests hold such a write open
(uncommitted) on a connection of their own while the mark runs.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

import aioamztoken as at
from aioamztoken import Token
from aioamztoken.stores._base import mark_refused
from aioamztoken.stores._values import encode_value

from .engines import Engine, make_engine

KEY = at.stores.TokenCipher.generate_key()


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
