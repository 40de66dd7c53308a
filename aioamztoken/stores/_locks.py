"""Locks: per key within one process, and across processes through ``flock(2)`` lock files.

A process holding a lock file's ``flock`` loses it when it dies, however it dies: the
kernel releases it, so no stale lock ever blocks anyone. The lock files themselves stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import TypeAlias

from ._fs import open_lock_file, os_failure, run_sync

__all__ = ["KeyedLock", "LockAbandoned", "LockFiles", "lock_file"]

#: Where a lock file is: a path, or a function (run in a worker thread) that finds it, so
#: that a store can resolve symlinks each time rather than once.
LockPath: TypeAlias = "Path | Callable[[], Path]"

# Polling delays (seconds) while another process holds a lock: quick at first, then
# backing off so that waiters cost little.
_FIRST_DELAY = 0.001
_MAX_DELAY = 0.025


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyedLock:
    """One asyncio lock per key, within one process; FIFO; cancellable while waiting.

    A key's lock exists only while someone holds or awaits it, so memory does not grow
    with the number of keys ever used, and no lock outlives the event loop it ran on.
    """

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Hold the lock of ``key`` (not re-entrant)."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._entries[key]


class LockAbandoned(Exception):
    """Raised on entering :func:`lock_file` when its ``give_up`` said to stop waiting."""


class LockFiles:
    """Exclusive locks shared by every process, one lock file ``<directory>/<name>.lock`` each.

    ``directory`` is a path, or a function returning it (called in a worker thread at
    each lock). Within a process, waiters for one name queue on an asyncio lock; only
    the head of the queue polls the lock file. Safe to share between tasks on one loop.
    """

    def __init__(self, directory: LockPath) -> None:
        self.directory = directory
        self._local = KeyedLock()

    def path_of(self, name: str) -> LockPath:
        """Where the lock file of ``name`` is (resolved when it is locked)."""
        directory = self.directory
        if isinstance(directory, Path):
            return directory / f"{name}.lock"
        return lambda: directory() / f"{name}.lock"

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold lock ``name`` (a safe file-name stem), as :func:`lock_file` does."""
        async with self._local.hold(name), lock_file(self.path_of(name)):
            yield

    @contextlib.asynccontextmanager
    async def hold_all(self, names: Iterable[str]) -> AsyncIterator[None]:
        """Hold every lock of ``names``, taken in sorted order so that holders of
        overlapping sets never deadlock; whatever order ``names`` come in, the same locks."""
        async with contextlib.AsyncExitStack() as stack:
            for name in sorted(set(names)):
                await stack.enter_async_context(self.hold(name))
            yield


@contextlib.asynccontextmanager
async def lock_file(
    path: LockPath, *, give_up: Callable[[], bool] | None = None
) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) until the block exits.

    Excludes every other holder, in this process or another: each call opens its own
    descriptor. Waiting polls (every 25 ms at most), never blocks the event loop, and
    can be cancelled; the lock is released however the block exits. ``give_up``, if
    given, is asked at each poll: once it says true, :class:`LockAbandoned` is raised
    instead of waiting on. Raises StorageError if it cannot be locked.
    """
    fd, where = await _open(path)
    try:  # closing the descriptor releases the flock
        delay = _FIRST_DELAY
        while not _try_lock(fd, where):
            if give_up is not None and give_up():
                raise LockAbandoned(str(where))
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)
        yield
    finally:
        os.close(fd)


async def _open(path: LockPath) -> tuple[int, Path]:
    opened: list[tuple[int, Path]] = []

    def open_into_list() -> None:
        where = path if isinstance(path, Path) else path()
        opened.append((open_lock_file(where), where))

    try:
        await run_sync(open_into_list)
    except BaseException:
        # Cancelled after the thread opened it (run_sync waits for the thread): close it.
        for fd, _ in opened:
            os.close(fd)
        raise
    return opened[0]


def _try_lock(fd: int, path: Path) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:
        raise os_failure("lock", path, exc) from exc
    return True
