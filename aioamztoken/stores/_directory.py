"""A store keeping each account in its own JSON file."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import replace
from pathlib import Path

from .._models import Token
from ._codec import corrupt, decode_account, decode_name, encode_account, encode_name, lock_name
from ._fs import (
    atomic_write,
    ensure_dir,
    list_dir,
    read_bytes,
    remove,
    resolve_path,
    run_sync,
)
from ._locks import LockFiles
from ._trust import check_store_dir

__all__ = ["DirectoryTokenStore"]

_SUFFIX = ".json"


class DirectoryTokenStore:
    """One JSON file per account in the directory ``path``; suits any number of accounts.

    Each account lives in ``<encoded id>.json`` (mode 0600)::

        {"account_id": "<account id>", "format": "aioamztoken/1", "token": {...}}

    The file name encodes the id reversibly and safely: lower-case letters, digits and
    ``-_.@+`` stay, every other byte is written ``%XX`` (``"../x"`` → ``%2E.%2Fx.json``).
    An id longer than about 240 characters once encoded raises ``ValueError``.

    ``~`` is expanded; the directory and its missing parents are created with mode 0700
    on the first write, and a missing directory is an empty store. A save touches one
    account's file only (atomically replaced), so its cost does not grow with the number
    of accounts, and writers of different accounts never wait for each other.
    ``lock(account_id)`` is a per-account lock in ``<path>/.locks/``, shared across
    processes. ``accounts()`` lists file names and ignores any other file.

    An account file that cannot be read, that is not a regular file (a FIFO, a device:
    refused at once, never waited on) or that is larger than ``max_file_size`` bytes
    (default 1 MiB; a token takes a few kilobytes) makes ``load``, ``save`` and ``delete``
    of that account raise :class:`~aioamztoken.StorageError`, and it is never overwritten
    or deleted; a save that would make it larger than ``max_file_size`` raises
    StorageError and writes nothing. Safe to share between tasks on one event loop and
    between processes; not thread-safe.
    """

    #: The default ``max_file_size`` (bytes) of one account's file.
    DEFAULT_MAX_FILE_SIZE = 1024 * 1024

    def __init__(
        self, path: str | os.PathLike[str], *, max_file_size: int = DEFAULT_MAX_FILE_SIZE
    ) -> None:
        if max_file_size < 1:
            raise ValueError("max_file_size must be a positive number of bytes")
        self._dir = resolve_path(path)
        self.max_file_size = int(max_file_size)
        self._locks = LockFiles(self._dir / ".locks")

    @property
    def path(self) -> str:
        """The absolute path of the directory."""
        return str(self._dir)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    async def load(self, account_id: str) -> Token | None:
        """The token of ``account_id``, or ``None`` if absent.

        Raises ``ValueError`` for an unusable id and StorageError if its file cannot be read.
        """
        path = self._file_of(account_id)
        return await run_sync(functools.partial(self._read, account_id, path))

    async def save(self, account_id: str, token: Token) -> None:
        """Store ``token`` for ``account_id``, creating the directory if needed.

        Raises StorageError, leaving the file as it was, if the account's current file
        cannot be read or the new one cannot be written.
        """
        path = self._file_of(account_id)
        await run_sync(functools.partial(self._write, account_id, token, path))

    async def delete(self, account_id: str) -> None:
        """Remove the account's file (absent: no error). Raises StorageError like ``save``."""
        path = self._file_of(account_id)
        await run_sync(functools.partial(self._remove, account_id, path))

    async def accounts(self) -> list[str]:
        """The stored account ids, sorted: decoded from the file names, no file is read."""
        names = await run_sync(functools.partial(list_dir, self._dir))
        found = (decode_name(name[: -len(_SUFFIX)]) for name in names if name.endswith(_SUFFIX))
        return sorted(account_id for account_id in found if account_id is not None)

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id``, shared by every process using this directory.

        Not re-entrant. Waiting does not block the event loop and can be cancelled; the
        lock is released when the block exits, or by the kernel if the process dies.
        """
        return self._locks.hold(lock_name(account_id))

    async def mark_needs_reauth(self, account_id: str, refresh_token: str) -> bool:
        """Flag the account's record as needing re-authorization, only if it still holds
        ``refresh_token`` (the one the endpoint refused); else change nothing.

        The file is read, compared and replaced in one step of a worker thread; the
        manager calls this under ``lock(account_id)``, which every refresh takes, so no
        newer refresh token is overwritten. Returns whether the record is now flagged.
        """
        path = self._file_of(account_id)
        return await run_sync(functools.partial(self._mark, account_id, refresh_token, path))

    def _mark(self, account_id: str, refresh_token: str, path: Path) -> bool:
        current = self._read(account_id, path)
        if current is None or current.refresh_token != refresh_token:
            return False
        if not current.needs_reauth:
            marked = encode_account(account_id, replace(current, needs_reauth=True))
            atomic_write(path, marked, self.max_file_size)
        return True

    def _file_of(self, account_id: str) -> Path:
        return self._dir / f"{encode_name(account_id)}{_SUFFIX}"

    def _read(self, account_id: str, path: Path) -> Token | None:
        data = read_bytes(path, self.max_file_size)
        if data is None:
            return None
        stored_id, token = decode_account(data, str(path))
        if stored_id != account_id:  # copied or renamed by hand
            raise corrupt(str(path), "holds another account than its name says")
        return token

    def _write(self, account_id: str, token: Token, path: Path) -> None:
        self._read(account_id, path)  # raises rather than replace what it cannot read
        ensure_dir(self._dir)
        check_store_dir(self._dir)  # never write tokens into another user's directory
        atomic_write(path, encode_account(account_id, token), self.max_file_size)

    def _remove(self, account_id: str, path: Path) -> None:
        if self._read(account_id, path) is not None:
            remove(path)
