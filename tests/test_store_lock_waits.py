"""Waits on another process's file lock can be cancelled (issue 11): a store call still
waiting for a lock that a real second process holds stops within about a second of
being cancelled or timed out; a call that has started writing finishes its write."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aioamztoken import Token
from aioamztoken.stores import DirectoryTokenStore, EncryptedFileTokenStore, FileTokenStore

from ._children import child

SCRIPT = Path(__file__).parent / "_scripts" / "fault_child.py"
KEY = EncryptedFileTokenStore.generate_key()
STARTUP_TIMEOUT = 20.0
#: A cancelled or timed-out wait must end within about a second; generous for a busy CI.
STOP_BOUND = 2.5


def token(n: int = 1) -> Token:
    return Token(f"Atza|{n}", f"Atzr|{n}", 2e9 + n)


@contextlib.asynccontextmanager
async def held_by_another_process(path: Path) -> AsyncIterator[None]:
    """``path`` flocked by a child process for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    async with child(SCRIPT, "flock", str(path)) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
        assert line.strip() == b"locked"
        yield
        proc.stdin.write(b"release\n")
        await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)


async def ends_within(task: asyncio.Task[object], bound: float) -> float:
    """How long ``task`` took to end; fails (leaving it to the cleanup) past ``bound``."""
    started = time.monotonic()
    await asyncio.wait([task], timeout=bound)
    elapsed = time.monotonic() - started
    assert task.done(), f"still waiting {elapsed:.1f}s after it should have stopped"
    return elapsed


@pytest.mark.parametrize("kind", ["file", "encrypted"])
async def test_a_save_waiting_for_another_process_file_lock_times_out_at_once(
    kind: str, tmp_path: Path
) -> None:
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path) if kind == "file" else EncryptedFileTokenStore(path, key=KEY)
    await store.save("kept", token(1))
    async with held_by_another_process(tmp_path / ".tokens.json.locks" / "file.lock"):
        started = time.monotonic()
        task = asyncio.ensure_future(asyncio.wait_for(store.save("a", token(2)), 1.0))
        await ends_within(task, 1.0 + STOP_BOUND)
        with pytest.raises(asyncio.TimeoutError):
            task.result()
        assert time.monotonic() - started < 1.0 + STOP_BOUND
        # Dropped, not written later behind our back.
        await asyncio.sleep(0.2)
    await asyncio.sleep(0.2)
    assert await store.accounts() == ["kept"]
    await store.save("b", token(3))  # the store still works
    assert await store.accounts() == ["b", "kept"]


async def test_many_saves_cancelled_while_another_process_holds_the_lock_all_stop(
    tmp_path: Path,
) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    async with held_by_another_process(tmp_path / ".tokens.json.locks" / "file.lock"):
        tasks = [asyncio.ensure_future(store.save(f"a{n}", token(n))) for n in range(50)]
        await asyncio.sleep(0.3)
        for task in tasks:
            task.cancel()
        gathered = asyncio.ensure_future(asyncio.gather(*tasks, return_exceptions=True))
        await ends_within(gathered, STOP_BOUND)
        assert all(isinstance(r, asyncio.CancelledError) for r in gathered.result())
    assert await store.accounts() == []


@pytest.mark.parametrize("kind", ["file", "directory"])
async def test_waiting_for_an_account_lock_another_process_holds_can_be_cancelled(
    kind: str, tmp_path: Path
) -> None:
    if kind == "file":
        store: FileTokenStore | DirectoryTokenStore = FileTokenStore(tmp_path / "tokens.json")
        locks = tmp_path / ".tokens.json.locks"
    else:
        store = DirectoryTokenStore(tmp_path / "tokens")
        locks = tmp_path / "tokens" / ".locks"
    from aioamztoken.stores._codec import lock_name

    async def enter() -> None:
        async with store.lock("a"):
            pass

    async with held_by_another_process(locks / f"{lock_name('a')}.lock"):
        task = asyncio.ensure_future(asyncio.wait_for(enter(), 0.5))
        await ends_within(task, 0.5 + STOP_BOUND)
        with pytest.raises(asyncio.TimeoutError):
            task.result()
    await asyncio.wait_for(enter(), 5)  # free again once the other process lets go


async def test_a_save_cancelled_once_its_write_has_begun_finishes_the_write(
    tmp_path: Path,
) -> None:
    path = tmp_path / "tokens.json"
    store = FileTokenStore(path)
    # A large document makes the write take a while, so that the cancellation lands in it.
    big = {f"acct-{n}": Token("Atza|" + "x" * 400, "Atzr|" + "y" * 400, 2e9) for n in range(20_000)}
    await asyncio.gather(*(store.save(a, t) for a, t in big.items()))
    async with held_by_another_process(tmp_path / ".tokens.json.locks" / "file.lock"):
        task = asyncio.ensure_future(store.save("late", token(7)))
        await asyncio.sleep(0.2)  # waiting for the other process: still withdrawable
    # Released: the writer takes the lock and writes a temporary file; cancel it then.
    deadline = time.monotonic() + 10
    while not task.done() and time.monotonic() < deadline:
        if any(name.endswith(".tmp") for name in os.listdir(tmp_path)):
            break
        await asyncio.sleep(0.002)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The cancelled caller returned only once its write was on disk.
    assert await FileTokenStore(path).load("late") == token(7)


async def test_withdrawing_a_save_brings_back_the_earlier_save_it_replaced(tmp_path: Path) -> None:
    store = FileTokenStore(tmp_path / "tokens.json")
    async with held_by_another_process(tmp_path / ".tokens.json.locks" / "file.lock"):
        kept = asyncio.ensure_future(store.save("a", token(1)))
        await asyncio.sleep(0.1)
        withdrawn = asyncio.ensure_future(store.save("a", token(2)))  # replaces it, queued
        await asyncio.sleep(0.1)
        withdrawn.cancel()
        await ends_within(asyncio.ensure_future(asyncio.wait([withdrawn])), STOP_BOUND)
        assert withdrawn.cancelled()
        assert not kept.done()  # still waiting for the lock
    await asyncio.wait_for(kept, 10)  # written once the other process lets go
    assert await store.load("a") == token(1)
