"""SQLiteTokenStore: the file it keeps (private, WAL), what it refuses to touch, its URLs,
its busy timeout, and a save whose cost does not grow with the number of accounts."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

import aioamztoken as at
from aioamztoken.stores._codec import encode_account
from bench.bench_stores import save_cost


def token(n: int = 1) -> at.Token:
    return at.Token(f"Atza|access-{n}", f"Atzr|refresh-{n}", 2e9 + n, scope="s")


async def test_the_database_is_private_in_wal_mode_and_reading_creates_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "state" / "tokens.db"
    async with at.SQLiteTokenStore(path) as store:
        assert await store.load("a") is None
        assert await store.accounts() == []
        await store.delete("a")
        assert not (tmp_path / "state").exists()
        await store.save("a", token())
        assert stat.S_IMODE(os.stat(tmp_path / "state").st_mode) == 0o700
        for name in os.listdir(tmp_path / "state"):
            if not name.endswith(".locks"):
                assert stat.S_IMODE(os.stat(tmp_path / "state" / name).st_mode) == 0o600, name
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            assert db.execute(
                "SELECT value FROM aioamztoken_tokens WHERE namespace = ? AND account_id = ?",
                (b"aioamztoken", b"a"),
            ).fetchone() == (encode_account("a", token()),)
        db.close()
        assert store.path == str(path)
        assert repr(store) == f"SQLiteTokenStore({str(path)!r}, namespace='aioamztoken')"


@pytest.mark.parametrize("content", [b"this is no database, but someone's notes\n" * 50, b"\x00" * 4096])
async def test_a_file_that_is_not_a_database_is_refused_and_left_untouched(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "tokens.db"
    path.write_bytes(content)
    async with at.SQLiteTokenStore(path) as store:
        for attempt in (store.load("a"), store.save("a", token()), store.accounts()):
            with pytest.raises(at.StorageError) as caught:
                await attempt
            assert str(path) in str(caught.value)
            assert "left untouched" in str(caught.value)
    assert path.read_bytes() == content


async def test_a_database_busy_longer_than_the_timeout_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "tokens.db"
    async with at.SQLiteTokenStore(path, timeout=0.3) as store:
        await store.save("a", token(1))
        blocker = sqlite3.connect(path, isolation_level=None)
        try:
            blocker.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(at.StorageError, match="database is locked"):
                await store.save("a", token(2))
            assert time.monotonic() - started < 10
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        await store.save("a", token(2))
        assert await store.load("a") == token(2)


async def test_a_save_cancelled_midway_leaves_the_previous_or_the_new_record(
    tmp_path: Path,
) -> None:
    async with at.SQLiteTokenStore(tmp_path / "t.db") as store:
        await store.save("a", token(1))
        for _ in range(20):
            task = asyncio.create_task(store.save("a", token(2)))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await store.load("a") in (token(1), token(2))


def test_sqlite_urls_name_absolute_and_relative_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    absolute = at.open_store(f"sqlite://{tmp_path}/a.db?namespace=ads")
    assert isinstance(absolute, at.SQLiteTokenStore)
    assert (absolute.path, absolute.namespace) == (str(tmp_path / "a.db"), "ads")
    monkeypatch.chdir(tmp_path)
    relative = at.open_store("sqlite:sub/b.db")
    assert isinstance(relative, at.SQLiteTokenStore)
    assert relative.path == str(tmp_path / "sub" / "b.db")
    monkeypatch.setenv("SQLITE_KEY", at.stores.TokenCipher.generate_key())
    encrypted = at.open_store("sqlite:c.db?key_env=SQLITE_KEY")
    assert "encrypted" in repr(encrypted)
    with pytest.raises(ValueError, match="names the host"):
        at.open_store("sqlite://server/abs/x.db")
    with pytest.raises(ValueError, match="unknown query parameters"):
        at.open_store("sqlite:x.db?journal=off")
    with pytest.raises(ValueError, match="namespace"):
        at.SQLiteTokenStore(tmp_path / "x.db", namespace="")
    with pytest.raises(ValueError, match="positive"):
        at.SQLiteTokenStore(tmp_path / "x.db", timeout=0)
    with pytest.raises(ValueError, match="no key"):
        asyncio.run(at.SQLiteTokenStore(tmp_path / "x.db").reencrypt())


@pytest.mark.slow
async def test_a_save_at_10000_accounts_costs_about_what_it_costs_at_10(tmp_path: Path) -> None:
    # 1.5x in bench/bench_stores.py; generous here on a shared machine.
    cost = await save_cost("sqlite", tmp_path, None, saves=20, rounds=4)
    assert cost.ratio <= 2.5, f"{cost.large_us:.0f} us at 10,000 vs {cost.small_us:.0f} us at 10"
