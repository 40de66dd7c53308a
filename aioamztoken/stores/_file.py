"""A store keeping every account in one JSON file a person can read."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TypeAlias

from .._models import Token
from ._base import validate_account_id
from ._codec import decode_file, encode_file, lock_name
from ._fs import (
    DEFAULT_MAX_FILE_SIZE,
    atomic_write,
    check_regular_or_absent,
    read_bytes,
    resolve_path,
    run_sync,
    wait_despite_cancellation,
)
from ._locks import LockAbandoned, LockFiles, lock_file
from ._trust import needs_tightening

__all__ = ["FileTokenStore"]

# A queued change: the new token (None: delete), and an object owned by the call making it.
_Change: TypeAlias = "tuple[Token | None, object]"


class _Batch:
    """Changes queued while the file is being written, to be written together next."""

    __slots__ = ("changes", "queued", "written")

    def __init__(self) -> None:
        self.changes: dict[str, _Change] = {}  # the latest change of each account
        self.queued: dict[str, list[_Change]] = {}  # every change still awaited, oldest first
        self.written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Read the outcome even if every caller was cancelled: no "never retrieved" noise.
        self.written.add_done_callback(lambda f: f.cancelled() or f.exception())

    def add(self, account_id: str, change: _Change) -> None:
        self.queued.setdefault(account_id, []).append(change)
        self.changes[account_id] = change

    def withdraw(self, account_id: str, change: _Change) -> None:
        """Take back ``change``; an earlier change of the account it replaced comes back."""
        queued = self.queued.get(account_id, [])
        if change in queued:
            queued.remove(change)
        if queued:
            self.changes[account_id] = queued[-1]
        else:
            self.queued.pop(account_id, None)
            self.changes.pop(account_id, None)

    def withdrawn(self) -> bool:
        """True once every change queued here was withdrawn by its (cancelled) caller."""
        return not self.changes


class FileTokenStore:
    """All accounts in one JSON document at ``path``, shared safely by many processes.

    The document (mode 0600, indented, keys sorted)::

        {"accounts": {"<account id>": {"access_token": ..., "refresh_token": ...,
                                       "expires_at": ..., "token_type": ..., "scope": ...}},
         "format": "aioamztoken/1"}

    ``~`` is expanded; missing parent directories are created with mode 0700 on the first
    write, and a missing file is an empty store. Every write replaces the file atomically
    (write a temporary file, fsync, rename), so readers take no lock and a crash never
    leaves a torn file. Writes read, modify and write the file under an exclusive ``flock``
    on ``.<name>.locks/file.lock`` next to it, so concurrent writers in any number of
    processes lose no update. ``lock(account_id)`` is a per-account lock in the same
    directory, shared across processes. If ``path`` is a symlink, the locks live next to
    the file it points to (resolved at each use), so processes that open the file by
    different names still exclude each other.

    A file that cannot be read (not JSON, wrong shape, an invalid record), that is not a
    regular file (a FIFO, a device: refused at once, never waited on) or that is larger
    than ``max_file_size`` bytes (default 64 MiB, some 40,000 accounts) makes
    every method raise :class:`~aioamztoken.StorageError`, and it is never overwritten.
    A write that would make the file larger than ``max_file_size`` raises StorageError
    and writes nothing (the store could not read it back).

    Cost: each call reads the whole file and each write rewrites it. Saves and deletes
    made while a write is under way are queued and written together by the next one, so
    1,000 concurrent saves cost a few writes and one worker thread. A save cancelled while
    queued, including while it waits for another process to release the file's lock, is
    dropped at once; one cancelled while being written finishes the write first. Safe to
    share between tasks on one event loop and between processes; not thread-safe.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, max_file_size: int = DEFAULT_MAX_FILE_SIZE
    ) -> None:
        if max_file_size < 1:
            raise ValueError("max_file_size must be a positive number of bytes")
        self._path = resolve_path(path)
        self.max_file_size = int(max_file_size)
        self._locks = LockFiles(self._lock_dir)
        self._queued: _Batch | None = None
        self._writer: asyncio.Task[None] | None = None

    @property
    def path(self) -> str:
        """The absolute path of the JSON file."""
        return str(self._path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    async def load(self, account_id: str) -> Token | None:
        """The token of ``account_id``, or ``None`` if absent.

        Raises ``ValueError`` for an empty id and StorageError if the file cannot be read.
        """
        validate_account_id(account_id)
        return (await run_sync(self._read)).get(account_id)

    async def accounts(self) -> list[str]:
        """The stored account ids, sorted. Raises StorageError if the file cannot be read."""
        return sorted(await run_sync(self._read))

    async def save(self, account_id: str, token: Token) -> None:
        """Store ``token`` for ``account_id``, creating the file if needed.

        Raises StorageError, leaving the file as it was, if it cannot be read or written.
        """
        await self._change(validate_account_id(account_id), token)

    async def delete(self, account_id: str) -> None:
        """Remove ``account_id`` (absent: nothing happens). Raises StorageError like ``save``."""
        validate_account_id(account_id)
        if account_id in await run_sync(self._read):
            await self._change(account_id, None)
        # else: absent when read, so there is nothing to write and no lock to take

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id``, shared by every process using this file.

        Not re-entrant. Waiting does not block the event loop and can be cancelled; the
        lock is released when the block exits, or by the kernel if the process dies.
        """
        return self._locks.hold_all(self._lock_names(account_id))

    async def mark_needs_reauth(self, account_id: str, refresh_token: str) -> bool:
        """Flag the stored record of ``account_id`` as needing re-authorization, only if
        it still holds ``refresh_token`` (the one the endpoint refused); else change nothing.

        Compared and written under the file's lock, so a newer refresh token saved by
        another process is never overwritten. Returns whether the record is now flagged.
        Raises StorageError like ``save``.
        """
        validate_account_id(account_id)
        async with lock_file(self._file_lock):
            return await run_sync(functools.partial(self._mark, account_id, refresh_token))

    def _lock_dir(self) -> Path:
        # Next to the file itself, not to a symlink naming it: every name, one lock.
        target = Path(os.path.realpath(self._path))
        # A FIFO or a device there is refused before any lock directory is made beside
        # it (in /dev, say); the store's reads would refuse it anyway.
        check_regular_or_absent(target, self._path)
        return target.with_name(f".{target.name}.locks")

    def _file_lock(self) -> Path:
        return self._lock_dir() / "file.lock"

    # The document's form on disk: a subclass (EncryptedFileTokenStore) changes these three.

    def _encode(self, accounts: Mapping[str, Token]) -> bytes:
        return encode_file(accounts)

    def _decode(self, data: bytes, location: str) -> tuple[dict[str, Token], bool]:
        """The accounts in ``data``, and whether to rewrite them even if nothing changed."""
        return decode_file(data, location), False

    def _lock_names(self, account_id: str) -> list[str]:
        return [lock_name(account_id)]

    def _read(self) -> dict[str, Token]:
        return self._read_document()[0]

    def _read_document(self) -> tuple[dict[str, Token], bool]:
        data = read_bytes(self._path, self.max_file_size)
        return ({}, False) if data is None else self._decode(data, str(self._path))

    async def _change(self, account_id: str, token: Token | None) -> None:
        batch = self._queued
        if batch is None:
            batch = self._queued = _Batch()
        change: _Change = (token, object())
        batch.add(account_id, change)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued())
        try:
            await asyncio.shield(batch.written)
        except asyncio.CancelledError:
            if batch is self._queued:  # not being written yet: withdraw the change
                batch.withdraw(account_id, change)
            else:  # being written: the caller's locks must outlast the write
                await wait_despite_cancellation(batch.written)
            raise

    async def _write_queued(self) -> None:
        # The one writer task of this store: callers' cancellations never reach it. While
        # it waits for the file's lock (another process may hold it) the batch stays
        # queued, so its callers can still withdraw; once every change is withdrawn it
        # stops waiting. Only once the lock is held is the batch taken and written.
        while (batch := self._queued) is not None:
            try:
                async with lock_file(self._file_lock, give_up=batch.withdrawn):
                    self._queued = None
                    if batch.changes:
                        await run_sync(functools.partial(self._apply, batch.changes))
            except LockAbandoned:
                if self._queued is batch:
                    self._queued = None
                batch.written.set_result(None)
            except asyncio.CancelledError:  # the event loop is shutting down
                batch.written.cancel()
                if self._queued is not None:
                    self._queued.written.cancel()
                    self._queued = None
                raise
            except Exception as exc:
                if self._queued is batch:  # failed before taking it (opening the lock)
                    self._queued = None
                batch.written.set_exception(exc)
            else:
                batch.written.set_result(None)

    def _mark(self, account_id: str, refresh_token: str) -> bool:
        # Runs under the file lock, like _apply.
        accounts, outdated = self._read_document()
        current = accounts.get(account_id)
        if current is None or current.refresh_token != refresh_token:
            return False
        if not current.needs_reauth or outdated:
            accounts[account_id] = replace(current, needs_reauth=True)
            atomic_write(self._path, self._encode(accounts), self.max_file_size)
        return True

    def _apply(self, changes: dict[str, _Change]) -> None:
        # Runs under the file lock: nothing can change the file between read and write.
        accounts, outdated = self._read_document()
        before = dict(accounts)
        for account_id, (token, _) in changes.items():
            if token is None:
                accounts.pop(account_id, None)
            else:
                accounts[account_id] = token
        if outdated or accounts != before or needs_tightening(self._path):
            atomic_write(self._path, self._encode(accounts), self.max_file_size)
