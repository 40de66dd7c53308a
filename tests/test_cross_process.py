"""Cross-process single flight: processes sharing a store refresh an account once, and a
process killed while refreshing never blocks the others."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from aioamztoken import Token, open_store
from aioamztoken.stores import EncryptedFileTokenStore
from aioamztoken.testing import AmazonEmulator

from ._children import child as run_child
from .test_store_processes import expect, tell

SCRIPT = Path(__file__).parent / "_scripts" / "refresh_child.py"
PROCESSES = 4
CALLERS = 20
ACCOUNT = "acct-1"
KEY = EncryptedFileTokenStore.generate_key()

URLS = {
    "file": lambda base: f"file://{base / 'tokens.json'}",
    "directory": lambda base: f"dir://{base / 'tokens'}",
    "encrypted": lambda base: f"encrypted-file://{base / 'tokens.enc'}",
}


def refresher(
    emulator: AmazonEmulator, store_url: str
) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """A running refresh_child.py on ``store_url``; killed (if still alive) and reaped on exit."""
    env = {
        **os.environ,
        "AIOAMZTOKEN_KEY": KEY,
        "AIOAMZTOKEN_TOKEN_URL": emulator.token_url,
        "AIOAMZTOKEN_CLIENT_ID": emulator.client_id,
        "AIOAMZTOKEN_CLIENT_SECRET": emulator.client_secret,
    }
    return run_child(SCRIPT, store_url, ACCOUNT, str(CALLERS), env=env)


async def tokens_of(proc: asyncio.subprocess.Process, timeout: float = 30.0) -> list[str]:
    """The tokens the child's callers got; fails with its stderr if it printed none."""
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if not line:
        _, err = await proc.communicate()
        pytest.fail(f"the child printed no tokens; stderr:\n{err.decode()}")
    tokens: list[str] = json.loads(line)
    return tokens


async def store_an_expired_token(emulator: AmazonEmulator, store_url: str) -> None:
    store = open_store(store_url)
    await store.save(ACCOUNT, Token("", emulator.issue_refresh_token(ACCOUNT), 0.0))


@pytest.mark.parametrize("kind", list(URLS))
async def test_4_processes_with_20_callers_each_make_one_token_request(
    kind: str, tmp_path: Path, emulator: AmazonEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOAMZTOKEN_KEY", KEY)
    store_url = URLS[kind](tmp_path)
    await store_an_expired_token(emulator, store_url)
    emulator.latency = 0.2  # the refresh is slow enough for every process to want one
    async with contextlib.AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(refresher(emulator, store_url))
            for _ in range(PROCESSES)
        ]
        for proc in procs:
            await expect(proc, "ready")
        for proc in procs:  # released together: they really race
            tell(proc, "go")
        results = [await tokens_of(proc) for proc in procs]
        for proc in procs:
            assert await proc.wait() == 0
    assert emulator.token_requests == 1
    the_token = emulator.current_access_token(ACCOUNT)
    assert the_token is not None
    assert results == [[the_token]] * PROCESSES  # all 80 callers got that one token
    stored = await open_store(store_url).load(ACCOUNT)
    assert stored is not None
    assert stored.access_token == the_token
    print(f"\n{kind}: {PROCESSES} processes x {CALLERS} callers, token requests: 1")


@pytest.mark.parametrize("kind", list(URLS))
async def test_a_process_killed_mid_refresh_does_not_block_the_others(
    kind: str, tmp_path: Path, emulator: AmazonEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIOAMZTOKEN_KEY", KEY)
    store_url = URLS[kind](tmp_path)
    await store_an_expired_token(emulator, store_url)
    emulator.latency = 60.0  # the first refresh hangs, holding the store's lock
    async with refresher(emulator, store_url) as holder, refresher(emulator, store_url) as waiter:
        await expect(holder, "ready")
        await expect(waiter, "ready")
        tell(holder, "go")
        deadline = time.monotonic() + 20
        while emulator.token_requests == 0:  # the holder is inside its refresh
            assert time.monotonic() < deadline, "the holder never asked for a token"
            await asyncio.sleep(0.01)
        emulator.latency = 0.0
        tell(waiter, "go")
        answer = asyncio.ensure_future(tokens_of(waiter, timeout=15))
        done, _ = await asyncio.wait([answer], timeout=0.5)
        assert not done  # it waits for the holder's lock
        assert emulator.token_requests == 1
        holder.send_signal(signal.SIGKILL)
        assert await holder.wait() == -signal.SIGKILL
        killed_at = time.monotonic()
        tokens = await answer
        waited = time.monotonic() - killed_at
        assert await waiter.wait() == 0
    assert emulator.token_requests == 2  # the killed refresh, and the survivor's own
    assert tokens == [emulator.current_access_token(ACCOUNT)]
    assert waited < 5
    print(f"\n{kind}: the survivor got its token {waited:.2f} s after the holder was killed")
