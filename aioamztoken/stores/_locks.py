"""Locks: per key within one process, and across processes through ``flock(2)`` lock files.

A process holding a lock file's ``flock`` loses it when it dies, however it dies: the
kernel releases it, so no stale lock ever blocks anyone. The lock files themselves stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import AsyncIterator
from pathlib import Path

from ._fs import open_lock_file, os_failure, run_sync

__all__ = ["KeyedLock", "LockFiles", "lock_file"]

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


class LockFiles:
    """Exclusive locks shared by every process, one lock file ``<directory>/<name>.lock`` each.

    Within a process, waiters for one name queue on an asyncio lock; only the head of the
    queue polls the lock file. Safe to share between tasks on one event loop.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._local = KeyedLock()

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold lock ``name`` (a safe file-name stem), as :func:`lock_file` does."""
        async with self._local.hold(name), lock_file(self.directory / f"{name}.lock"):
            yield


@contextlib.asynccontextmanager
async def lock_file(path: Path) -> AsyncIterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed) until the block exits.

    Excludes every other holder, in this process or another: each call opens its own
    descriptor. Waiting polls, never blocks the event loop, and can be cancelled; the lock
    is released however the block exits. Raises StorageError if it cannot be locked.
    """
    fd = await _open(path)
    try:  # closing the descriptor releases the flock
        delay = _FIRST_DELAY
        while not _try_lock(fd, path):
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)
        yield
    finally:
        os.close(fd)


async def _open(path: Path) -> int:
    opened: list[int] = []

    def open_into_list() -> None:
        opened.append(open_lock_file(path))

    try:
        await run_sync(open_into_list)
    except BaseException:
        # Cancelled after the thread opened it (run_sync waits for the thread): close it.
        for fd in opened:
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
