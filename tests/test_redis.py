"""RedisTokenStore against a real redis-server: layout, corrupt values, the fleet-wide lock,
a fleet of processes refreshing once, a killed lock holder, outages, and encryption."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("redis", reason="redis-py is not installed: pip install 'aioamztoken[redis]'")

import redis.asyncio

import aioamztoken as at
from aioamztoken.stores._crypto import TokenCipher
from aioamztoken.testing import AmazonEmulator

from ._children import child as run_child
from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer, free_port

pytestmark = pytest.mark.redis

SCRIPT = Path(__file__).parent / "_scripts" / "fleet_child.py"
STARTUP_TIMEOUT = 30.0


# ------------------------------------------------------------------------------ fixtures


def _server(**options: Any) -> RedisServer:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    return RedisServer(**options).start()


@pytest.fixture(scope="module")
def shared_server() -> Iterator[RedisServer]:
    """One redis-server for the module (no persistence); each test starts on an empty one."""
    server = _server()
    yield server
    server.stop()


@pytest.fixture
def redis_url(shared_server: RedisServer) -> str:
    shared_server.flush()
    return shared_server.url


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, to pause, stop and restart (append-only file on)."""
    server = _server(data_dir=tmp_path, appendonly=True)
    yield server
    server.stop()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client, to look at (and spoil) what the store wrote."""
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[at.RedisTokenStore]:
    async with at.RedisTokenStore(redis_url) as store:
        yield store


def token(n: int = 1, *, expires_at: float = 2e9) -> at.Token:
    return at.Token(f"Atza|access-{n}", f"Atzr|refresh-{n}", expires_at, scope="s")


# ------------------------------------------------------------------------------ the store


async def test_accounts_live_in_one_hash_under_the_namespace(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    async with (
        at.RedisTokenStore(redis_url) as default,
        at.RedisTokenStore(redis_url, namespace="other") as other,
    ):
        assert await default.load("a") is None
        assert await default.accounts() == []
        for n, account_id in enumerate(["b", "a", "../x", "ü:é", "1 2"]):
            await default.save(account_id, token(n))
        await other.save("z", token(9))
        assert await default.accounts() == sorted(["b", "a", "../x", "ü:é", "1 2"])
        assert await default.load("ü:é") == token(3)
        assert await other.accounts() == ["z"]
        assert sorted(await raw.keys("*")) == [b"aioamztoken:tokens", b"other:tokens"]
        value = json.loads(await raw.hget("aioamztoken:tokens", "b"))
        assert value["account_id"] == "b"
        assert value["token"] == token(0).to_dict()

        await default.save("b", token(7))
        assert await default.load("b") == token(7)
        await default.delete("b")
        await default.delete("b")  # absent: no error
        assert await default.load("b") is None
        assert "b" not in await default.accounts()
        assert await other.load("z") == token(9)


async def test_a_store_satisfies_the_locking_protocol_and_hides_the_password(
    redis_url: str,
) -> None:
    url = redis_url.replace("redis://", "redis://user:hunter2@")
    store = at.RedisTokenStore(url, namespace="ns")
    assert isinstance(store, at.stores.LockingTokenStore)
    assert "hunter2" not in repr(store)
    assert repr(store) == f"RedisTokenStore({url.replace('hunter2', '***')!r}, namespace='ns')"
    await store.aclose()
    with pytest.raises(ValueError, match="exactly one"):
        at.RedisTokenStore()
    with pytest.raises(ValueError, match="empty"):
        await at.RedisTokenStore(redis_url).load("")


async def test_a_client_passed_in_is_used_and_left_open(redis_url: str) -> None:
    client = redis.asyncio.Redis.from_url(redis_url)
    async with at.RedisTokenStore(client=client) as store:
        await store.save("a", token())
        assert store.url == redis_url
    assert await client.hexists("aioamztoken:tokens", "a")
    await client.aclose()


@pytest.mark.parametrize(
    "value",
    [b"not json", b"{}", b'{"format": "aioamztoken/1", "account_id": "a", "token": 5}', b"\xff"],
)
async def test_a_corrupt_value_is_a_storage_error_naming_the_key_and_is_never_overwritten(
    store: at.RedisTokenStore, raw: redis.asyncio.Redis, value: bytes
) -> None:
    await raw.hset("aioamztoken:tokens", "acct", value)
    for attempt in (store.load("acct"), store.save("acct", token()), store.delete("acct")):
        with pytest.raises(at.StorageError) as caught:
            await attempt
        assert "'aioamztoken:tokens'" in str(caught.value)
        assert "'acct'" in str(caught.value)
        assert "left untouched" in str(caught.value)
    assert await raw.hget("aioamztoken:tokens", "acct") == value
    assert await store.accounts() == ["acct"]


async def test_a_value_copied_from_another_account_is_refused(
    store: at.RedisTokenStore, raw: redis.asyncio.Redis
) -> None:
    await store.save("a", token())
    copied = await raw.hget("aioamztoken:tokens", "a")
    await raw.hset("aioamztoken:tokens", "b", copied)
    with pytest.raises(at.StorageError, match="another account"):
        await store.load("b")


async def test_200_concurrent_saves_of_200_accounts_are_all_kept(
    redis_url: str,
) -> None:
    async with at.RedisTokenStore(redis_url) as one, at.RedisTokenStore(redis_url) as two:
        await asyncio.gather(
            *(s.save(f"acct-{n}", token(n)) for n in range(200) for s in (one, two))
        )
        assert len(await one.accounts()) == 200
        assert all([await two.load(f"acct-{n}") == token(n) for n in range(200)])


# ------------------------------------------------------------------------------ the lock


async def enter_and_leave(store: at.RedisTokenStore, account_id: str) -> None:
    async with store.lock(account_id):
        pass


async def test_the_lock_excludes_other_stores_until_its_holder_leaves(redis_url: str) -> None:
    async with at.RedisTokenStore(redis_url) as one, at.RedisTokenStore(redis_url) as two:
        async with one.lock("a"):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(enter_and_leave(two, "a"), 0.3)
            await asyncio.wait_for(enter_and_leave(two, "b"), 2)  # other accounts are free
            waiter = asyncio.create_task(enter_and_leave(two, "a"))
            await asyncio.sleep(0.1)
            assert not waiter.done()
        await asyncio.wait_for(waiter, 2)


async def test_a_held_lock_is_renewed_beyond_its_ttl(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    async with (
        at.RedisTokenStore(redis_url, lock_ttl=0.3) as one,
        at.RedisTokenStore(redis_url, lock_ttl=0.3) as two,
    ):
        async with one.lock("a"):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(enter_and_leave(two, "a"), 1.2)  # 4 TTLs
            assert 0 < await raw.pttl("aioamztoken:lock:a") <= 300
        assert await raw.exists("aioamztoken:lock:a") == 0


async def test_a_lock_is_released_only_by_its_holder(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    async with at.RedisTokenStore(redis_url) as one, at.RedisTokenStore(redis_url) as two:
        async with one.lock("a"):
            # As if ``one`` had stalled past its TTL: the lock expires and ``two`` takes it.
            await raw.delete("aioamztoken:lock:a")
            entered = asyncio.Event()
            leave = asyncio.Event()

            async def hold_with_two() -> None:
                async with two.lock("a"):
                    entered.set()
                    await leave.wait()

            holder = asyncio.create_task(hold_with_two())
            await asyncio.wait_for(entered.wait(), 2)
        # ``one`` has left: two's lock must still be there.
        assert await raw.get("aioamztoken:lock:a") is not None
        leave.set()
        await holder
        assert await raw.exists("aioamztoken:lock:a") == 0


async def test_waiting_for_the_lock_can_be_cancelled_and_leaves_nothing_behind(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    async with at.RedisTokenStore(redis_url) as one, at.RedisTokenStore(redis_url) as two:
        async with one.lock("a"):
            waiter = asyncio.create_task(enter_and_leave(two, "a"))
            await asyncio.sleep(0.1)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
        assert await raw.exists("aioamztoken:lock:a") == 0
        await asyncio.wait_for(enter_and_leave(two, "a"), 1)


async def test_the_default_lock_ttl_outlasts_a_refresh_with_the_default_retry_budget() -> None:
    store = at.RedisTokenStore("redis://127.0.0.1:1/0")
    assert store.lock_ttl == 60.0
    mgr = at.AsyncTokenManager("id", "secret", store=store)
    policy = mgr._endpoint.policy
    assert store.lock_ttl > policy.max_time + policy.request_timeout
    await mgr.aclose()
    await store.aclose()


# ------------------------------------------------------------------------------ processes


def child(
    role: str, config: dict[str, Any]
) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """A running fleet_child.py in ``role``; killed (if still alive) and reaped on exit."""
    return run_child(SCRIPT, role, json.dumps(config))


async def read_line(proc: asyncio.subprocess.Process) -> str:
    """The child's next line; fail with its stderr if it has none."""
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


def child_config(emu: AmazonEmulator, redis_url: str, **role: Any) -> dict[str, Any]:
    return {
        "redis_url": redis_url,
        "namespace": "fleet",
        "token_url": emu.token_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        **role,
    }


async def seed_expired(emu: AmazonEmulator, store: at.RedisTokenStore, account_id: str) -> None:
    expired = at.Token(
        emu.issue_access_token(account_id, lifetime=1),
        emu.issue_refresh_token(account_id),
        time.time() - 60,
    )
    await store.save(account_id, expired)


async def test_6_processes_with_200_callers_each_refresh_20_expired_accounts_once(
    emulator: AmazonEmulator, redis_url: str
) -> None:
    accounts = [f"acct-{n:02d}" for n in range(20)]
    async with at.RedisTokenStore(redis_url, namespace="fleet") as store:
        for account_id in accounts:
            await seed_expired(emulator, store, account_id)
        emulator.latency = 0.05  # refreshes overlap across processes
        config = child_config(emulator, redis_url, accounts=accounts, callers=200)
        async with contextlib.AsyncExitStack() as stack:
            procs = [await stack.enter_async_context(child("fleet", config)) for _ in range(6)]
            for proc in procs:
                assert await read_line(proc) == "ready"
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


async def test_a_lock_holder_killed_mid_refresh_lets_another_process_take_over(
    emulator: AmazonEmulator, redis_url: str, raw: redis.asyncio.Redis
) -> None:
    async with at.RedisTokenStore(redis_url, namespace="fleet", lock_ttl=1.0) as store:
        await seed_expired(emulator, store, "acct")
        emulator.latency = 60.0  # the child's request hangs: it holds the lock meanwhile
        config = child_config(emulator, redis_url, account="acct", lock_ttl=1.0)
        async with child("refresh", config) as proc:
            assert await read_line(proc) == "ready"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while emulator.in_flight == 0:
                assert time.monotonic() < deadline, "the child never asked for a token"
                await asyncio.sleep(0.01)
            assert await raw.exists("fleet:lock:acct") == 1
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        assert await raw.exists("fleet:lock:acct") == 1  # nobody released it
        emulator.latency = 0.0
        async with at.AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:
            started = time.monotonic()
            access = await asyncio.wait_for(mgr.get_access_token("acct"), 10)
            waited = time.monotonic() - started
        assert access == emulator.current_access_token("acct")
        assert emulator.refresh_grants == 1  # ours; the dead child's never completed
        assert 0.3 < waited < 1.0 + 2.0  # the lock's TTL (1 s), plus slack for a loaded machine
        stored = await store.load("acct")
        assert stored is not None
        assert stored.access_token == access


# ------------------------------------------------------------------------------ outages


async def test_an_unreachable_redis_is_a_storage_error_naming_the_url_without_password() -> None:
    port = free_port()  # nothing listens there
    url = f"redis://app:s3cr3t-pw@127.0.0.1:{port}/0"
    async with at.RedisTokenStore(url, timeout=0.5) as store:
        for attempt in (
            store.load("a"),
            store.save("a", token()),
            store.delete("a"),
            store.accounts(),
            enter_and_leave(store, "a"),
        ):
            started = time.monotonic()
            with pytest.raises(at.StorageError) as caught:
                await attempt
            assert time.monotonic() - started < 5
            message = str(caught.value)
            assert f"redis://app:***@127.0.0.1:{port}/0" in message
            assert "s3cr3t-pw" not in message
            assert caught.value.location == f"redis://app:***@127.0.0.1:{port}/0"
            assert isinstance(caught.value.__cause__, redis.RedisError)
        async with at.AsyncTokenManager("id", "secret", store=store) as mgr:
            with pytest.raises(at.StorageError, match=f"127.0.0.1:{port}"):
                await mgr.get_access_token("a")
            with pytest.raises(at.StorageError, match=f"127.0.0.1:{port}"):
                await mgr.add_account("a", "Atzr|x")


async def test_while_redis_is_frozen_cached_tokens_are_served_and_the_refresh_recovers(
    emulator: AmazonEmulator, own_server: RedisServer
) -> None:
    failures: list[BaseException] = []
    async with at.RedisTokenStore(own_server.url, timeout=0.3) as store:
        seeded = at.Token(
            emulator.issue_access_token("acct", lifetime=60),
            emulator.issue_refresh_token("acct"),
            time.time() + 8,
        )
        await store.save("acct", seeded)
        async with at.AsyncTokenManager(
            emulator.client_id,
            emulator.client_secret,
            store=store,
            token_url=emulator.token_url,
            refresh_buffer=6.0,  # the background refresh comes 2 to 5 s from now
            on_refresh_error=lambda _, exc: failures.append(exc),
        ) as mgr:
            assert await mgr.get_access_token("acct") == seeded.access_token
            own_server.pause()
            try:
                # Callers are served from memory while the background refresh fails.
                deadline = time.monotonic() + 10
                while not failures:
                    assert time.monotonic() < deadline, "no background refresh was tried"
                    assert await mgr.get_access_token("acct") == seeded.access_token
                    await asyncio.sleep(0.02)
                assert emulator.token_requests == 0
                status = await mgr.status("acct")
                assert status.last_error is not None
                assert "StorageError" in status.last_error
            finally:
                own_server.resume()
            assert all(isinstance(exc, at.StorageError) for exc in failures)
            assert own_server.url.split("//")[1] in str(failures[0])
            # Redis is back: the manager tries again by itself, and the new token is saved.
            deadline = time.monotonic() + 10
            while (stored := await store.load("acct")) == seeded:
                assert time.monotonic() < deadline, "the refresh never recovered"
                assert await mgr.get_access_token("acct")
                await asyncio.sleep(0.02)
            assert stored is not None
            assert stored.access_token == emulator.current_access_token("acct")
            # Saved first, then cached: the manager may serve the old (valid) token for
            # the few loop turns between the two.
            while (served := await mgr.get_access_token("acct")) != stored.access_token:
                assert time.monotonic() < deadline, "the new token was never served"
                await asyncio.sleep(0.01)
            assert served == stored.access_token
            assert emulator.token_requests == 1


async def test_nothing_written_is_lost_when_redis_freezes_or_restarts_with_its_aof(
    emulator: AmazonEmulator, own_server: RedisServer
) -> None:
    async with at.RedisTokenStore(own_server.url, timeout=0.5) as store:
        for n in range(20):
            await store.save(f"acct-{n}", token(n))
        # Frozen while a save is on its way: it lands once Redis runs again.
        own_server.pause()
        late = asyncio.create_task(store.save("late", token(99)))
        await asyncio.sleep(0.2)
        own_server.resume()
        await late
        # A clean restart (SIGTERM, same data directory, appendonly yes) loses nothing, and
        # the same store reconnects by itself.
        own_server.restart()
        assert await store.accounts() == sorted([f"acct-{n}" for n in range(20)] + ["late"])
        assert all([await store.load(f"acct-{n}") == token(n) for n in range(20)])
        assert await store.load("late") == token(99)
        await store.save("acct-0", token(100))
        own_server.restart()
        assert await store.load("acct-0") == token(100)


# ------------------------------------------------------------------------------ encryption


async def test_encrypted_values_are_unreadable_without_the_key(
    redis_url: str, raw: redis.asyncio.Redis
) -> None:
    key = TokenCipher.generate_key()
    async with at.RedisTokenStore(redis_url, key=key) as store:
        await store.save("acct", token())
        assert await store.load("acct") == token()
        assert repr(store).endswith(", encrypted)")
    value = await raw.hget("aioamztoken:tokens", "acct")
    assert b"Atza|" not in value
    assert b"Atzr|" not in value
    await raw.hset("aioamztoken:tokens", "moved", value)
    async with at.RedisTokenStore(redis_url, key=key) as store:
        with pytest.raises(at.StorageError, match="another account"):
            await store.load("moved")
    await raw.hdel("aioamztoken:tokens", "moved")
    async with at.RedisTokenStore(redis_url) as plain:
        with pytest.raises(at.StorageError, match="'acct'"):
            await plain.load("acct")
        with pytest.raises(at.StorageError):
            await plain.save("acct", token(2))
    async with at.RedisTokenStore(redis_url, key=TokenCipher.generate_key()) as wrong:
        with pytest.raises(at.DecryptionError, match="'aioamztoken:tokens'"):
            await wrong.load("acct")
        with pytest.raises(at.DecryptionError):
            await wrong.save("acct", token(2))
        with pytest.raises(at.DecryptionError):
            await wrong.delete("acct")
    assert await raw.hget("aioamztoken:tokens", "acct") == value


async def test_rotating_the_key_reads_old_values_and_rewrites_them_under_the_new_key(
    redis_url: str,
) -> None:
    old, new = TokenCipher.generate_key(), TokenCipher.generate_key()
    async with at.RedisTokenStore(redis_url, key=old) as before:
        for n in range(3):
            await before.save(f"acct-{n}", token(n))
    async with (
        at.RedisTokenStore(redis_url, key=[new, old]) as rotating,
        at.RedisTokenStore(redis_url, key=new) as after,
    ):
        assert await rotating.load("acct-0") == token(0)
        with pytest.raises(at.DecryptionError):
            await after.load("acct-0")
        await rotating.save("acct-0", token(10))  # the next save writes under ``new``
        assert await after.load("acct-0") == token(10)
        with pytest.raises(at.DecryptionError):
            await after.load("acct-1")
        assert await rotating.reencrypt() == 2  # the idle accounts
        assert await rotating.reencrypt() == 0
        assert [await after.load(f"acct-{n}") for n in range(3)] == [token(10), token(1), token(2)]
    with pytest.raises(ValueError, match="no key"):
        await at.RedisTokenStore(redis_url).reencrypt()


def test_arbitrary_bytes_in_a_value_give_storage_error_and_stay_untouched(
    shared_server: RedisServer,
) -> None:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    cipher_key = TokenCipher.generate_key()

    async def check(value: bytes, encrypted: bool) -> None:
        client = redis.asyncio.Redis.from_url(shared_server.url)
        try:
            await client.delete("fuzz:tokens")
            await client.hset("fuzz:tokens", "acct", value)
            key = cipher_key if encrypted else None
            async with at.RedisTokenStore(shared_server.url, namespace="fuzz", key=key) as store:
                try:
                    loaded = await store.load("acct")
                except at.StorageError:
                    loaded = None
                    for attempt in (store.save("acct", token()), store.delete("acct")):
                        with pytest.raises(at.StorageError):
                            await attempt
                    assert await client.hget("fuzz:tokens", "acct") == value
                else:
                    assert isinstance(loaded, at.Token)  # only a well-formed record loads
        finally:
            await client.aclose()

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(value=st.binary(max_size=300), encrypted=st.booleans())
    def run(value: bytes, encrypted: bool) -> None:
        asyncio.run(check(value, encrypted))

    run()


async def test_the_blocking_manager_closes_its_redis_store_on_its_own_loop(
    redis_url: str,
) -> None:
    def client_count() -> int:
        return len([c for c in asyncio.run(_client_list(redis_url)) if "cmd=client" not in c])

    def use() -> int:
        with AmazonEmulator.running_in_thread() as emu:
            store = at.RedisTokenStore(redis_url)
            with at.BlockingTokenManager(
                emu.client_id, emu.client_secret, store=store, token_url=emu.token_url
            ) as mgr:
                mgr.add_account("acct", emu.issue_refresh_token("acct"))
                assert mgr.get_access_token("acct") == emu.current_access_token("acct")
                during = client_count()
        return during

    before = await asyncio.to_thread(client_count)
    during = await asyncio.to_thread(use)
    after = await asyncio.to_thread(client_count)
    assert during > before
    assert after == before  # the store's connections were closed with the manager


async def _client_list(url: str) -> list[str]:
    client = redis.asyncio.Redis.from_url(url)
    try:
        listing = await client.execute_command("CLIENT", "LIST")
    finally:
        await client.aclose()
    text = listing.decode() if isinstance(listing, bytes) else str(listing)
    return [line for line in text.splitlines() if line]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:s3cret@[::1]:6380/2", "redis://user:***@[::1]:6380/2"),
        ("rediss://:s3cret@cache.example:6379/0", "rediss://:***@cache.example:6379/0"),
        ("redis://reader@cache.example/1", "redis://reader@cache.example/1"),
    ],
)
async def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    async with at.RedisTokenStore(url) as store:
        assert store.url == shown
        assert "s3cret" not in repr(store)


async def test_a_lock_taken_from_its_holder_is_reported_not_silently_kept(
    redis_url: str, raw: redis.asyncio.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    async with at.RedisTokenStore(redis_url, lock_ttl=0.3) as store, store.lock("acct"):
        keys = [k async for k in raw.scan_iter("aioamztoken:lock:*")]
        assert len(keys) == 1
        await raw.delete(*keys)  # an operator (or an expiry during a stall) took it
        await asyncio.sleep(0.5)
    assert any("expired while held" in r.getMessage() for r in caplog.records)
