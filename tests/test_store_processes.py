"""The file stores shared by real processes: no lost update, locks the kernel releases,
and no torn or lost record when a writer is killed at any moment."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import random
import signal
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest

from aioamztoken._models import Token
from aioamztoken.stores import DirectoryTokenStore, FileTokenStore

from ._children import child as run_child

SCRIPT = Path(__file__).parent / "_scripts" / "store_child.py"


def _load_script() -> Any:
    # By path: the test must not depend on how pytest puts tests/ on sys.path.
    spec = importlib.util.spec_from_file_location("store_child", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_child_script = _load_script()
BASE_ACCOUNTS: list[str] = _child_script.BASE_ACCOUNTS
token_for: Callable[[str, int], Token] = _child_script.token_for
generation_of: Callable[[str, Token], int] = _child_script.generation_of
STARTUP_TIMEOUT = 20.0

Store = FileTokenStore | DirectoryTokenStore


def open_store(kind: str, base: Path) -> Store:
    return (
        FileTokenStore(base / "tokens.json")
        if kind == "file"
        else DirectoryTokenStore(base / "tokens")
    )


def child(*args: str) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """A running store_child.py; killed (if still alive) and reaped on exit."""
    return run_child(SCRIPT, *args)


async def expect(proc: asyncio.subprocess.Process, word: str) -> None:
    """Wait for the child to print ``word``; fail with its stderr if it prints anything else."""
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT)
    except asyncio.TimeoutError:
        line = b"<nothing: timed out>"
    if line.decode().strip() != word:
        if proc.returncode is None:
            proc.kill()
        _, err = await proc.communicate()
        pytest.fail(f"child printed {line!r}, not {word!r}; stderr:\n{err.decode()}")


def tell(proc: asyncio.subprocess.Process, line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"{line}\n".encode())


async def enter_and_leave(store: Store, account_id: str) -> None:
    async with store.lock(account_id):
        pass


# ------------------------------------------------------------------------------ no lost update


async def test_4_processes_saving_40_accounts_each_into_one_file_lose_none(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    async with contextlib.AsyncExitStack() as stack:
        procs = [
            await stack.enter_async_context(child("save-many", "file", str(path), f"p{n}", "40"))
            for n in range(4)
        ]
        for proc in procs:
            await expect(proc, "ready")
        for proc in procs:  # all start at once
            tell(proc, "go")
        for proc in procs:
            await expect(proc, "done")
        for proc in procs:
            assert await proc.wait() == 0
    store = FileTokenStore(path)
    expected = sorted(f"p{n}-{i}" for n in range(4) for i in range(40))
    assert await store.accounts() == expected
    assert len(expected) == 160
    for account_id in expected:
        assert await store.load(account_id) == token_for(account_id, 1)


# ------------------------------------------------------------------------------ locks


@pytest.mark.parametrize("kind", ["file", "directory"])
async def test_a_lock_held_by_another_process_makes_us_wait_until_it_is_released(
    kind: str, tmp_path: Path
) -> None:
    store = open_store(kind, tmp_path)
    async with child("hold-lock", kind, store.path, "a") as proc:
        await expect(proc, "locked")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(enter_and_leave(store, "a"), 0.3)
        await asyncio.wait_for(enter_and_leave(store, "b"), 2)  # other accounts are free
        waiter = asyncio.create_task(enter_and_leave(store, "a"))
        await asyncio.sleep(0.2)
        assert not waiter.done()
        tell(proc, "release")
        await expect(proc, "released")
        await asyncio.wait_for(waiter, 2)
        assert await proc.wait() == 0


@pytest.mark.parametrize("kind", ["file", "directory"])
async def test_a_lock_held_by_a_killed_process_is_free_at_once(kind: str, tmp_path: Path) -> None:
    store = open_store(kind, tmp_path)
    async with child("hold-lock", kind, store.path, "a") as proc:
        await expect(proc, "locked")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(enter_and_leave(store, "a"), 0.2)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
    start = time.monotonic()
    await asyncio.wait_for(enter_and_leave(store, "a"), 10)
    assert time.monotonic() - start < 2  # freed by the kernel, not by a stale-lock timeout


# ------------------------------------------------------------------------------ crash safety

CRASH_ROUNDS = 12
UNTOUCHED = [f"kept-{i}" for i in range(5)]  # saved before any run; the child never writes them


async def check_intact(store: Store, floor: dict[str, int]) -> dict[str, int]:
    """Every record is whole; base accounts are no older than ``floor``; returns generations."""
    generations = {}
    for account_id in await store.accounts():
        token = await store.load(account_id)
        assert token is not None, account_id
        generations[account_id] = generation_of(account_id, token)
    for account_id in UNTOUCHED:
        assert generations[account_id] == 0
    for account_id in BASE_ACCOUNTS:
        assert generations[account_id] >= floor.get(account_id, 0), account_id
    return generations


async def test_writers_killed_at_random_moments_never_tear_or_lose_a_record(tmp_path: Path) -> None:
    file_store = FileTokenStore(tmp_path / "tokens.json")
    dir_store = DirectoryTokenStore(tmp_path / "tokens")
    for store in (file_store, dir_store):
        for account_id in UNTOUCHED + BASE_ACCOUNTS:
            await store.save(account_id, token_for(account_id, 0))
    floors: dict[Store, dict[str, int]] = {file_store: {}, dir_store: {}}
    rng = random.Random(1234)
    survived = 0
    for round_number in range(CRASH_ROUNDS):
        start = (round_number + 1) * 1_000_000
        async with child("churn", file_store.path, dir_store.path, str(start)) as proc:
            await expect(proc, "ready")
            await asyncio.sleep(rng.uniform(0.0, 0.15))
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        for store in (file_store, dir_store):
            generations = await check_intact(store, floors[store])
            # Every base account was saved at least once in this round before "ready".
            assert all(generations[a] > start for a in BASE_ACCOUNTS)
            floors[store] = {a: generations[a] for a in BASE_ACCOUNTS}
        survived += 1
    assert survived == CRASH_ROUNDS
    # A kill mid-write may leave a hidden temporary file: never taken for an account.
    leftovers = [
        n for d in (tmp_path, tmp_path / "tokens") for n in os.listdir(d) if n.endswith(".tmp")
    ]
    assert all(n.startswith(".") for n in leftovers)
    print(
        f"\n{survived} kill rounds survived; file store holds {len(await file_store.accounts())}"
        f" accounts, directory store {len(await dir_store.accounts())};"
        f" {len(leftovers)} temporary files left behind by kills"
    )
