"""Every write that could overwrite newer data compares first (issue 11).

- The needs-reauth mark is written only if the store still holds the refused refresh
  token: two real processes share Redis, one loses its lock mid-refresh, the endpoint
  rotates refresh tokens, and the store ends with the live refresh token, unflagged.
- The same for the encrypted file store during a key rollout, whose lock names do not
  depend on the order of the keys.
- A FileTokenStore opened through a symlink locks next to the file it points to.
- With a user-written store that has no lock(), remove_account racing a refresh never
  brings the account back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import aioamztoken as at
from aioamztoken import AccountNotFoundError, AsyncTokenManager, Token
from aioamztoken.stores import (
    DirectoryTokenStore,
    EncryptedFileTokenStore,
    FileTokenStore,
    MemoryTokenStore,
)
from aioamztoken.stores._base import mark_refused
from aioamztoken.testing import AmazonEmulator

from ._children import child
from .redis_server import REDIS_SERVER, SKIP_REASON, RedisServer

FAULT_CHILD = Path(__file__).parent / "_scripts" / "fault_child.py"
STORE_CHILD = Path(__file__).parent / "_scripts" / "store_child.py"
STARTUP_TIMEOUT = 30.0
NEW_KEY = EncryptedFileTokenStore.generate_key()
OLD_KEY = EncryptedFileTokenStore.generate_key()


def token(n: int, *, expires_at: float = 2e9, flagged: bool = False) -> Token:
    return Token(f"Atza|{n}", f"Atzr|{n}", expires_at, needs_reauth=flagged)


async def readline(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
    except asyncio.TimeoutError:
        line = b""
    if not line:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
        pytest.fail(f"the child said nothing; stderr:\n{err.decode()[-3000:]}")
    return line.decode().strip()


def tell(proc: asyncio.subprocess.Process, line: str = "go") -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"{line}\n".encode())


def child_env(emulator: AmazonEmulator, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AIOAMZTOKEN_TOKEN_URL": emulator.token_url,
        "AIOAMZTOKEN_CLIENT_ID": emulator.client_id,
        "AIOAMZTOKEN_CLIENT_SECRET": emulator.client_secret,
        **extra,
    }


async def until(condition: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never came true"
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------ stores' compare


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    if REDIS_SERVER is None:
        pytest.skip(SKIP_REASON)
    server = RedisServer().start()
    yield server
    server.stop()


@contextlib.asynccontextmanager
async def open_kind(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Any]:
    if kind == "memory":
        yield MemoryTokenStore()
    elif kind == "file":
        yield FileTokenStore(tmp_path / "t.json")
    elif kind == "directory":
        yield DirectoryTokenStore(tmp_path / "d")
    elif kind == "encrypted":
        yield EncryptedFileTokenStore(tmp_path / "e.bin", key=[NEW_KEY, OLD_KEY])
    else:
        pytest.importorskip("redis")
        server: RedisServer = request.getfixturevalue("redis_server")
        server.flush()
        async with at.RedisTokenStore(
            server.url, key=[NEW_KEY] if kind == "redis-encrypted" else None
        ) as store:
            yield store


STORE_KINDS = [
    "memory",
    "file",
    "directory",
    "encrypted",
    pytest.param("redis", marks=pytest.mark.redis),
    pytest.param("redis-encrypted", marks=pytest.mark.redis),
]


@pytest.mark.parametrize("kind", STORE_KINDS)
async def test_mark_needs_reauth_flags_only_the_refused_refresh_token(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    async with open_kind(kind, tmp_path, request) as store:
        await store.save("a", token(2))  # a newer refresh token than the refused one
        assert await store.mark_needs_reauth("a", "Atzr|1") is False
        assert await store.load("a") == token(2)  # untouched
        assert await store.mark_needs_reauth("absent", "Atzr|1") is False
        assert await store.load("absent") is None
        assert await store.mark_needs_reauth("a", "Atzr|2") is True
        assert await store.load("a") == token(2, flagged=True)  # all else kept
        assert await store.mark_needs_reauth("a", "Atzr|2") is True  # already flagged
        assert await store.load("a") == token(2, flagged=True)


async def test_a_store_without_mark_needs_reauth_is_compared_then_saved() -> None:
    class Plain:
        def __init__(self) -> None:
            self.tokens: dict[str, Token] = {}

        async def load(self, account_id: str) -> Token | None:
            return self.tokens.get(account_id)

        async def save(self, account_id: str, token: Token) -> None:
            self.tokens[account_id] = token

        async def delete(self, account_id: str) -> None:
            self.tokens.pop(account_id, None)

        async def accounts(self) -> list[str]:
            return sorted(self.tokens)

    store = Plain()
    await store.save("a", token(2))
    assert await mark_refused(store, "a", "Atzr|1") is False
    assert store.tokens["a"] == token(2)
    assert await mark_refused(store, "a", "Atzr|2") is True
    assert store.tokens["a"] == token(2, flagged=True)
    assert await mark_refused(store, "b", "Atzr|2") is False


# ------------------------------------------------------------------------------ Redis: a lapsed lock


@pytest.mark.redis
async def test_a_process_whose_redis_lock_lapsed_never_flags_the_live_refresh_token(
    redis_server: RedisServer,
) -> None:
    redis = pytest.importorskip("redis.asyncio")
    redis_server.flush()
    async with (
        AmazonEmulator(rotate_refresh_tokens=True) as emulator,
        at.RedisTokenStore(redis_server.url) as store,
    ):
        first = emulator.issue_refresh_token("acct")
        await store.save("acct", Token("Atza|expired", first, 1.0))
        env = child_env(emulator)
        async with child(FAULT_CHILD, "refresh", redis_server.url, "acct", env=env) as proc:
            assert await readline(proc) == "ready"
            emulator.latency = 5.0  # the child's request hangs at the endpoint...
            tell(proc)
            await until(lambda: emulator.in_flight == 1)
            emulator.latency = 0.0
            # ...while its lock lapses (as if lock_ttl had passed): another process takes
            # it, refreshes with the same refresh token, and the endpoint rotates it.
            raw = redis.Redis.from_url(redis_server.url)
            assert await raw.delete("aioamztoken:lock:acct") == 1
            await raw.aclose()
            async with AsyncTokenManager(
                emulator.client_id,
                emulator.client_secret,
                store=store,
                token_url=emulator.token_url,
            ) as mgr:
                live = await mgr.get_token("acct")
            assert live.refresh_token != first
            # The child's refresh is then refused (its refresh token was rotated away).
            outcome = json.loads(await readline(proc))
            assert await proc.wait() == 0
        assert emulator.token_requests == 2
        stored = await store.load("acct")
        assert stored is not None
        assert stored.refresh_token == live.refresh_token  # the live one, not the dead one
        assert not stored.needs_reauth
        assert outcome == {"token": live.access_token}  # the child adopted the live token
        # And the live refresh token works.
        async with AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:
            assert (await mgr.refresh("acct")).refresh_token != live.refresh_token


# ------------------------------------------------------------------------------ encrypted: a key rollout


async def hold_in_child(
    stack: contextlib.AsyncExitStack, path: Path, key: str, account_id: str
) -> asyncio.subprocess.Process:
    env = {**os.environ, "AIOAMZTOKEN_KEY": key}
    proc = await stack.enter_async_context(
        child(STORE_CHILD, "hold-lock", "encrypted", str(path), account_id, env=env)
    )
    assert await readline(proc) == "locked"
    return proc


@pytest.mark.parametrize(
    "ours",
    [[NEW_KEY, OLD_KEY], [OLD_KEY, NEW_KEY], [NEW_KEY], [OLD_KEY]],
    ids=["new,old", "old,new", "new", "old"],
)
async def test_encrypted_lock_names_do_not_depend_on_the_order_of_the_keys(
    ours: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "tokens.bin"
    store = EncryptedFileTokenStore(path, key=ours)

    async def enter() -> None:
        async with store.lock("acct"):
            pass

    async with contextlib.AsyncExitStack() as stack:
        proc = await hold_in_child(stack, path, f"{OLD_KEY},{NEW_KEY}", "acct")
        with pytest.raises(asyncio.TimeoutError):  # the other process holds it
            await asyncio.wait_for(enter(), 0.5)
        await asyncio.wait_for(store.lock("other").__aenter__(), 5)  # other accounts: free
        tell(proc)
        assert await readline(proc) == "released"
    await asyncio.wait_for(enter(), 5)


async def test_processes_midway_through_a_key_rollout_refresh_once_and_keep_the_live_token(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.bin"
    async with AmazonEmulator(rotate_refresh_tokens=True) as emulator:
        first = emulator.issue_refresh_token("acct")
        ours = EncryptedFileTokenStore(path, key=[NEW_KEY, OLD_KEY])
        await EncryptedFileTokenStore(path, key=[OLD_KEY, NEW_KEY]).save(
            "acct", Token("Atza|expired", first, 1.0)
        )
        env = child_env(emulator, AIOAMZTOKEN_KEY=f"{OLD_KEY},{NEW_KEY}")
        url = f"encrypted-file://{path}"
        async with child(FAULT_CHILD, "refresh", url, "acct", env=env) as proc:
            assert await readline(proc) == "ready"
            emulator.latency = 1.0
            tell(proc)
            await until(lambda: emulator.in_flight == 1)  # the child is refreshing
            async with AsyncTokenManager(
                emulator.client_id,
                emulator.client_secret,
                store=ours,
                token_url=emulator.token_url,
            ) as mgr:
                got = await mgr.get_access_token("acct")  # waits for the child's lock
            outcome = json.loads(await readline(proc))
            assert await proc.wait() == 0
        assert emulator.token_requests == 1  # one refresh for both processes
        assert outcome == {"token": got}
        stored = await ours.load("acct")
        assert stored is not None
        assert not stored.needs_reauth
        emulator.latency = 0.0
        async with AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=ours, token_url=emulator.token_url
        ) as mgr:
            await mgr.refresh("acct")  # the stored refresh token is the live one


async def test_an_encrypted_mark_compares_under_the_file_lock(tmp_path: Path) -> None:
    path = tmp_path / "tokens.bin"
    # Written under the old key by a process not yet rotated; read by one rotated.
    await EncryptedFileTokenStore(path, key=[OLD_KEY]).save("acct", token(2))
    rotated = EncryptedFileTokenStore(path, key=[NEW_KEY, OLD_KEY])
    assert await rotated.mark_needs_reauth("acct", "Atzr|1") is False
    assert await EncryptedFileTokenStore(path, key=[OLD_KEY]).load("acct") == token(2)
    assert await rotated.mark_needs_reauth("acct", "Atzr|2") is True
    assert await rotated.load("acct") == token(2, flagged=True)


# ------------------------------------------------------------------------------ symlinks


async def test_a_file_store_opened_through_a_symlink_shares_the_locks_of_its_target(
    tmp_path: Path,
) -> None:
    real = tmp_path / "data" / "tokens.json"
    real.parent.mkdir()
    link = tmp_path / "tokens-link.json"
    link.symlink_to(real)
    async with contextlib.AsyncExitStack() as stack:
        procs = []
        for n in range(4):
            path = real if n % 2 else link
            procs.append(
                await stack.enter_async_context(
                    child(STORE_CHILD, "save-many", "file", str(path), f"p{n}", "40")
                )
            )
        for proc in procs:
            assert await readline(proc) == "ready"
        for proc in procs:
            tell(proc)
        for proc in procs:
            assert await readline(proc) == "done"
            assert await proc.wait() == 0
    assert link.is_symlink()
    assert len(await FileTokenStore(real).accounts()) == 160
    assert await FileTokenStore(link).accounts() == await FileTokenStore(real).accounts()
    assert not (tmp_path / ".tokens-link.json.locks").exists()  # locks sit by the target
    assert (real.parent / ".tokens.json.locks" / "file.lock").exists()


async def test_an_account_lock_taken_through_a_symlink_excludes_one_taken_directly(
    tmp_path: Path,
) -> None:
    real = tmp_path / "tokens.json"
    link = tmp_path / "link.json"
    link.symlink_to(real)
    async with FileTokenStore(link).lock("a"):
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(FileTokenStore(real).lock("a").__aenter__(), 0.3)


# ------------------------------------------------------------------------------ stores without lock()


class RemoteStore:
    """A user-written store with no lock(): each call is a round trip to a slow server,
    which applies it halfway through (reads see the value of that moment)."""

    def __init__(self, read_trip: float, write_trip: float) -> None:
        self.tokens: dict[str, Token] = {}
        self.read_trip = read_trip
        self.write_trip = write_trip

    async def load(self, account_id: str) -> Token | None:
        await asyncio.sleep(self.read_trip / 2)
        found = self.tokens.get(account_id)
        await asyncio.sleep(self.read_trip / 2)
        return found

    async def save(self, account_id: str, token: Token) -> None:
        await asyncio.sleep(self.write_trip / 2)
        self.tokens[account_id] = token
        await asyncio.sleep(self.write_trip / 2)

    async def delete(self, account_id: str) -> None:
        await asyncio.sleep(self.write_trip / 2)
        self.tokens.pop(account_id, None)
        await asyncio.sleep(self.write_trip / 2)

    async def accounts(self) -> list[str]:
        return sorted(self.tokens)


@pytest.mark.parametrize("head_start", [0.0, 0.01, 0.05])
async def test_remove_account_racing_a_refresh_on_a_lockless_store_never_brings_it_back(
    head_start: float,
) -> None:
    async with AmazonEmulator() as emulator:
        store = RemoteStore(read_trip=0.02, write_trip=0.6)
        accounts = [f"acct-{n}" for n in range(10)]
        for account_id in accounts:
            store.tokens[account_id] = Token("", emulator.issue_refresh_token(account_id), 0.0)
        emulator.latency = 0.8
        async with AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:

            async def get_soon(account_id: str) -> object:
                await asyncio.sleep(head_start)  # lands in the removal's round trips
                try:
                    return await mgr.get_access_token(account_id)
                except AccountNotFoundError as exc:
                    return exc

            results = await asyncio.gather(
                *(mgr.remove_account(a) for a in accounts),
                *(get_soon(a) for a in accounts),
            )
            assert results[: len(accounts)] == [None] * len(accounts)
            await asyncio.sleep(1.0)  # anything still in flight lands by now
            assert store.tokens == {}
            assert await mgr.accounts() == []
            for account_id in accounts:
                with pytest.raises(AccountNotFoundError):
                    await mgr.get_access_token(account_id)


async def test_a_refresh_token_replaced_during_a_refused_refresh_is_kept_and_used_next() -> None:
    """Our refresh was refused because another writer (holding no lock we know of) had
    rotated the refresh token meanwhile: the new one is kept unflagged, the caller gets a
    transient error (not a re-authorization), and the next call refreshes with it."""
    async with AmazonEmulator() as emulator:
        store = MemoryTokenStore()
        dead = emulator.issue_refresh_token("acct")
        await store.save("acct", Token("Atza|old", dead, 1.0))
        async with AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:
            emulator.latency = 1.0
            call = asyncio.ensure_future(mgr.get_access_token("acct"))
            await until(lambda: emulator.in_flight == 1)
            live = emulator.issue_refresh_token("acct")
            await store.save("acct", Token("Atza|old", live, 1.0))  # expired: must refresh
            emulator.revoke_refresh_token(dead)
            with pytest.raises(at.TokenEndpointError, match="replaced"):
                await call
            assert await store.load("acct") == Token("Atza|old", live, 1.0)  # not flagged
            emulator.latency = 0.0
            assert await mgr.get_access_token("acct") == emulator.current_access_token("acct")
            stored = await store.load("acct")
            assert stored is not None
            assert stored.refresh_token == live
            assert not stored.needs_reauth


async def test_a_refused_refresh_token_still_stored_is_flagged_for_every_process(
    tmp_path: Path,
) -> None:
    async with AmazonEmulator() as emulator:
        store = FileTokenStore(tmp_path / "t.json")
        refused = emulator.issue_refresh_token("acct")
        await store.save("acct", Token("", refused, 0.0))
        emulator.revoke("acct")
        async with AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:
            with pytest.raises(at.InvalidGrantError):
                await mgr.get_access_token("acct")
        stored = await FileTokenStore(tmp_path / "t.json").load("acct")
        assert stored == Token("", refused, 0.0, needs_reauth=True)


class PlainStore(RemoteStore):
    """No lock() and no mark_needs_reauth(), with instant calls."""

    def __init__(self) -> None:
        super().__init__(read_trip=0.0, write_trip=0.0)


class BrokenMarkStore(PlainStore):
    async def mark_needs_reauth(self, account_id: str, refresh_token: str) -> bool:
        raise OSError(5, "Input/output error")


@pytest.mark.parametrize("store_class", [PlainStore, BrokenMarkStore])
async def test_a_refused_refresh_token_on_a_store_that_cannot_be_marked_still_needs_reauth(
    store_class: type[PlainStore],
) -> None:
    async with AmazonEmulator() as emulator:
        store = store_class()
        refused = emulator.issue_refresh_token("acct")
        store.tokens["acct"] = Token("", refused, 0.0)
        emulator.revoke("acct")
        async with AsyncTokenManager(
            emulator.client_id, emulator.client_secret, store=store, token_url=emulator.token_url
        ) as mgr:
            with pytest.raises(at.InvalidGrantError):
                await mgr.get_access_token("acct")
            with pytest.raises(at.InvalidGrantError):  # at once, from memory
                await mgr.get_access_token("acct")
            assert emulator.token_requests == 1
        assert store.tokens["acct"] == Token("", refused, 0.0)  # nothing was written
