"""A store keeping every account in one JSON file a person can read."""

from __future__ import annotations

import contextlib
import functools
import os

from .._models import Token
from ._base import validate_account_id
from ._codec import decode_file, encode_file, lock_name
from ._fs import atomic_write, read_bytes, resolve_path, run_sync
from ._locks import LockFiles

__all__ = ["FileTokenStore"]

# Lock name of the whole file, taken around every read-modify-write. Never a lock_name().
_WRITE_LOCK = "file"


class FileTokenStore:
    """All accounts in one JSON document at ``path``, shared safely by many processes.

    The document (mode 0600, indented, keys sorted)::

        {"accounts": {"<account id>": {"access_token": ..., "refresh_token": ...,
                                       "expires_at": ..., "token_type": ..., "scope": ...}},
         "format": "aioamztoken/1"}

    ``~`` is expanded; missing parent directories are created with mode 0700 on the first
    write, and a missing file is an empty store. Every write replaces the file atomically
    (write a temporary file, fsync, rename), so readers take no lock and a crash never
    leaves a torn file. ``save`` and ``delete`` read, modify and write the file under an
    exclusive ``flock`` on ``.<name>.locks/file.lock`` next to it, so concurrent writers in
    any number of processes lose no update. ``lock(account_id)`` is a per-account lock in
    the same directory, shared across processes.

    A file that cannot be read (not JSON, wrong shape, an invalid record) makes every
    method raise :class:`~aioamztoken.StorageError`, and it is never overwritten.

    Cost: each call reads the whole file and each write rewrites it, so it suits up to a
    few ten thousand accounts; beyond, prefer :class:`DirectoryTokenStore`. Safe to share
    between tasks on one event loop (writes from one instance queue up in order, using one
    worker thread at a time) and between processes; not thread-safe.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._path = resolve_path(path)
        self._locks = LockFiles(self._path.with_name(f".{self._path.name}.locks"))

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
        validate_account_id(account_id)
        async with self._locks.hold(_WRITE_LOCK):
            await run_sync(functools.partial(self._update, account_id, token))

    async def delete(self, account_id: str) -> None:
        """Remove ``account_id`` (absent: nothing happens). Raises StorageError like ``save``."""
        validate_account_id(account_id)
        if account_id not in await run_sync(self._read):
            return  # nothing to write, no lock to take: the account was absent then
        async with self._locks.hold(_WRITE_LOCK):
            await run_sync(functools.partial(self._update, account_id, None))

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id``, shared by every process using this file.

        Not re-entrant. Waiting does not block the event loop and can be cancelled; the
        lock is released when the block exits, or by the kernel if the process dies.
        """
        return self._locks.hold(lock_name(account_id))

    def _read(self) -> dict[str, Token]:
        data = read_bytes(self._path)
        return {} if data is None else decode_file(data, str(self._path))

    def _update(self, account_id: str, token: Token | None) -> None:
        # Runs under the write lock: nothing can change the file between read and write.
        accounts = self._read()
        if token is not None:
            accounts[account_id] = token
        elif accounts.pop(account_id, None) is None:
            return
        atomic_write(self._path, encode_file(accounts))
