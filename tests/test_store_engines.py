"""The shared store suite, run on every database engine against a real server: SQLite,
PostgreSQL, a 3-master Redis Cluster, Redis behind Sentinel, and Valkey.

What every store must do (docs/stores.rst): keep any account id distinctly, replace a
record atomically, refuse what it cannot read and never overwrite it, encrypt with
``key=``, lock an account against every other holder, and let a fleet of processes
refresh each expired account exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aioamztoken as at
from aioamztoken.stores import TokenCipher
from aioamztoken.testing import AmazonEmulator

from ._children import child as run_child
from .engines import Engine

SCRIPT = Path(__file__).parent / "_scripts" / "fleet_child.py"
STARTUP_TIMEOUT = 60.0

WEIRD_IDS = [
    "../x",
    "a/b",
    "ü:é-账户-🚀",
    "with space",
    "nul\x00byte",
    "line\nbreak",
    "brace}{tag}",
    "*?[glob]\\",
    "x" * 200,
    "Bob",
    "bob",
]


def token(n: int = 1, *, expires_at: float = 2e9) -> at.Token:
    return at.Token(f"Atza|access-{n}", f"Atzr|refresh-{n}", expires_at, scope="s")


@contextlib.asynccontextmanager
async def opened(engine: Engine, namespace: str = "suite", **params: str) -> Any:
    store = engine.open(namespace, **params)
    try:
        yield store
    finally:
        await store.aclose()


# ------------------------------------------------------------------------------ keeping


async def test_records_roundtrip_replace_delete_and_stay_apart_per_namespace(
    engine: Engine,
) -> None:
    async with opened(engine) as store, opened(engine, "other") as other:
        assert isinstance(store, at.stores.LockingTokenStore)
        assert await store.load("a") is None
        assert await store.accounts() == []
        await store.delete("never-saved")
        for n, account_id in enumerate(WEIRD_IDS):
            await store.save(account_id, token(n))
        await other.save("a/b", token(99))
        for n, account_id in enumerate(WEIRD_IDS):
            assert await store.load(account_id) == token(n)
        assert await store.accounts() == sorted(WEIRD_IDS)
        assert await other.accounts() == ["a/b"]
        await store.save("Bob", token(7))
        assert await store.load("Bob") == token(7)
        await store.delete("Bob")
        await store.delete("Bob")
        assert await store.load("Bob") is None
        assert "Bob" not in await store.accounts()
        assert await other.load("a/b") == token(99)
        with pytest.raises(ValueError, match="empty"):
            await store.load("")


async def test_200_concurrent_saves_from_two_stores_all_land_whole(engine: Engine) -> None:
    async with opened(engine) as one, opened(engine) as two:
        results = await asyncio.gather(
            *(s.save(f"acct-{n}", token(n)) for n in range(100) for s in (one, two)),
            *(s.save("same", token(n)) for n in range(10) for s in (one, two)),
            return_exceptions=True,
        )
        assert [repr(r) for r in results if r is not None] == []
        assert len(await one.accounts()) == 101
        assert [await two.load(f"acct-{n}") for n in range(100)] == [
            token(n) for n in range(100)
        ]
        assert await one.load("same") in [token(n) for n in range(10)]


# ------------------------------------------------------------------------------ refusing


@pytest.mark.parametrize(
    "value",
    [b"not json", b"{}", b'{"format": "aioamztoken/1", "account_id": "acct", "token": 5}', b"\xff"],
)
async def test_an_unreadable_value_is_a_storage_error_and_is_never_overwritten(
    engine: Engine, value: bytes
) -> None:
    async with opened(engine) as store:
        await store.save("other", token(2))  # the table or key space exists
        engine.put_raw("suite", "acct", value)
        for attempt in (store.load("acct"), store.save("acct", token()), store.delete("acct")):
            with pytest.raises(at.StorageError) as caught:
                await attempt
            assert "left untouched" in str(caught.value)
            assert "'acct'" in str(caught.value)
        assert engine.get_raw("suite", "acct") == value
        assert "acct" in await store.accounts()
        assert await store.load("other") == token(2)


async def test_a_value_copied_from_another_account_is_refused(engine: Engine) -> None:
    async with opened(engine) as store:
        await store.save("a", token())
        copied = engine.get_raw("suite", "a")
        assert copied is not None
        engine.put_raw("suite", "b", copied)
        with pytest.raises(at.StorageError, match="another account"):
            await store.load("b")


def test_any_bytes_in_a_value_load_or_raise_storage_error_and_survive(engine: Engine) -> None:
    key = TokenCipher.generate_key()

    async def check(value: bytes, encrypted: bool) -> None:
        params = {"key_env": "AIOAMZTOKEN_SUITE_KEY"} if encrypted else {}
        namespace = "fuzz-encrypted" if encrypted else "fuzz"
        async with opened(engine, namespace, **params) as store:
            await store.save("seed", token())
            engine.put_raw(namespace, "acct", value)
            try:
                loaded = await store.load("acct")
            except at.StorageError:
                for attempt in (store.save("acct", token()), store.delete("acct")):
                    with pytest.raises(at.StorageError):
                        await attempt
                assert engine.get_raw(namespace, "acct") == value
            else:
                assert isinstance(loaded, at.Token)

    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(value=st.binary(max_size=200), encrypted=st.booleans())
    def run(value: bytes, encrypted: bool) -> None:
        asyncio.run(check(value, encrypted))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIOAMZTOKEN_SUITE_KEY", key)
        run()


async def test_encrypted_values_need_their_key_and_rotation_reads_the_old_one(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    old, new = TokenCipher.generate_key(), TokenCipher.generate_key()
    monkeypatch.setenv("SUITE_OLD", old)
    monkeypatch.setenv("SUITE_BOTH", f"{new},{old}")
    async with opened(engine, key_env="SUITE_OLD") as before:
        await before.save("acct", token(1))
        await before.save("idle", token(2))
    raw = engine.get_raw("suite", "acct")
    assert raw is not None
    assert b"Atza|access-1" not in raw
    async with opened(engine) as plain:
        with pytest.raises(at.StorageError):
            await plain.load("acct")
    monkeypatch.setenv("SUITE_NEW", new)
    async with opened(engine, key_env="SUITE_NEW") as wrong:
        with pytest.raises(at.DecryptionError):
            await wrong.load("acct")
    async with opened(engine, key_env="SUITE_BOTH") as rotating:
        assert await rotating.load("acct") == token(1)
        await rotating.save("acct", token(3))
        assert await rotating.reencrypt() == 1  # "idle"
        assert await rotating.reencrypt() == 0
    async with opened(engine, key_env="SUITE_NEW") as after:
        assert [await after.load("acct"), await after.load("idle")] == [token(3), token(2)]


# ------------------------------------------------------------------------------ the lock


async def enter_and_leave(store: Any, account_id: str) -> None:
    async with store.lock(account_id):
        pass


async def test_a_lock_excludes_another_store_not_other_accounts_and_allows_saves(
    engine: Engine,
) -> None:
    async with opened(engine) as one, opened(engine) as two:
        async with one.lock("a"):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(enter_and_leave(two, "a"), 0.5)
            await asyncio.wait_for(enter_and_leave(two, "b"), 10)
            await one.save("a", token(1))  # inside the lock of its account
            assert await one.load("a") == token(1)
            await two.save("a", token(2))  # a save never takes the lock
            waiter = asyncio.create_task(enter_and_leave(two, "a"))
            await asyncio.sleep(0.2)
            assert not waiter.done()
        await asyncio.wait_for(waiter, 10)
        assert await two.load("a") == token(2)


async def test_a_cancelled_waiter_and_a_cancelled_holder_leave_the_lock_free(
    engine: Engine,
) -> None:
    async with opened(engine) as one, opened(engine) as two:
        async with one.lock("a"):
            waiter = asyncio.create_task(enter_and_leave(two, "a"))
            await asyncio.sleep(0.2)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        held = asyncio.Event()

        async def hold() -> None:
            async with one.lock("a"):
                held.set()
                await asyncio.sleep(60)

        holder = asyncio.create_task(hold())
        await asyncio.wait_for(held.wait(), 10)
        holder.cancel()
        with pytest.raises(asyncio.CancelledError):
            await holder
        await asyncio.wait_for(enter_and_leave(two, "a"), 10)


# ------------------------------------------------------------------------------ the fleet


async def read_line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
    except asyncio.TimeoutError:
        line = b""
    if not line:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
        pytest.fail(f"the child printed nothing; stderr:\n{err.decode()}")
    return line.decode().strip()


def child_config(emu: AmazonEmulator, store_url: str, **role: Any) -> dict[str, Any]:
    return {
        "store_url": store_url,
        "token_url": emu.token_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        **role,
    }


async def seed_expired(emu: AmazonEmulator, store: Any, account_id: str) -> None:
    expired = at.Token(
        emu.issue_access_token(account_id, lifetime=1),
        emu.issue_refresh_token(account_id),
        time.time() - 60,
    )
    await store.save(account_id, expired)


@pytest.mark.slow
async def test_6_processes_with_200_callers_each_refresh_20_expired_accounts_once(
    emulator: AmazonEmulator, engine: Engine, request: pytest.FixtureRequest
) -> None:
    accounts = [f"acct-{n:02d}" for n in range(20)]
    url = engine.url("fleet")
    async with opened(engine, "fleet") as store:
        for account_id in accounts:
            await seed_expired(emulator, store, account_id)
        emulator.latency = 0.05  # refreshes overlap across processes
        config = child_config(emulator, url, accounts=accounts, callers=200)
        async with contextlib.AsyncExitStack() as stack:
            procs = [
                await stack.enter_async_context(run_child(SCRIPT, "fleet", json.dumps(config)))
                for _ in range(6)
            ]
            for proc in procs:  # each has read the store once: connected to the master
                assert await read_line(proc) == "ready"
            if engine.name == "redis-sentinel":
                await asyncio.to_thread(request.getfixturevalue("redis_sentinel").failover)
            for proc in procs:  # all start at once
                assert proc.stdin is not None
                proc.stdin.write(b"go\n")
            reports = [json.loads(await read_line(proc)) for proc in procs]
            for proc in procs:
                assert await proc.wait() == 0
        assert [r["errors"] for r in reports] == [[]] * 6
        assert emulator.token_requests == 20
        assert all(emulator.token_requests_for(a) == 1 for a in accounts)
        for account_id in accounts:
            stored = await store.load(account_id)
            assert stored is not None
            assert stored.access_token == emulator.current_access_token(account_id)
            assert {r["tokens"][account_id] for r in reports} == {stored.access_token}


async def test_a_lock_holder_killed_mid_refresh_lets_another_process_take_over_at_once(
    emulator: AmazonEmulator, sql_engine: Engine
) -> None:
    engine = sql_engine
    async with opened(engine, "fleet") as store:
        await seed_expired(emulator, store, "acct")
        emulator.latency = 60.0  # the child's request hangs: it holds the lock meanwhile
        config = child_config(emulator, engine.url("fleet"), account="acct")
        async with run_child(SCRIPT, "refresh", json.dumps(config)) as proc:
            assert await read_line(proc) == "ready"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while emulator.in_flight == 0:
                assert time.monotonic() < deadline, "the child never asked for a token"
                await asyncio.sleep(0.01)
            with pytest.raises(asyncio.TimeoutError):  # the child holds the lock
                await asyncio.wait_for(enter_and_leave(store, "acct"), 0.5)
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        emulator.latency = 0.0
        async with at.AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:
            started = time.monotonic()
            access = await asyncio.wait_for(mgr.get_access_token("acct"), 20)
            waited = time.monotonic() - started
        assert access == emulator.current_access_token("acct")
        assert emulator.refresh_grants == 1  # ours; the dead child's never completed
        assert waited < 10  # freed at the holder's death, not after some timeout
        stored = await store.load("acct")
        assert stored is not None
        assert stored.access_token == access
