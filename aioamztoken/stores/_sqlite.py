"""A store in one SQLite database file: many accounts and many processes on one host."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import TypeVar

import anyio.to_thread

from .._errors import StorageError
from .._models import Token
from ._base import validate_account_id
from ._codec import corrupt, lock_name
from ._crypto import TokenCipher
from ._fs import ensure_dir, os_failure, resolve_path, wait_despite_cancellation
from ._locks import LockFiles
from ._values import decode_value, encode_value

__all__ = ["SQLiteTokenStore"]

T = TypeVar("T")

#: The table every store in a database file shares, one row per namespace and account.
TABLE = "aioamztoken_tokens"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aioamztoken_tokens (
    namespace BLOB NOT NULL,
    account_id BLOB NOT NULL,
    value BLOB NOT NULL,
    PRIMARY KEY (namespace, account_id)
) WITHOUT ROWID
"""

# Worker threads (each with its own connection) one store uses at most: SQLite runs one
# writer at a time anyway, and the event loop's thread pool is shared with everyone else.
_MAX_CONNECTIONS = 4


class SQLiteTokenStore:
    """Tokens in one SQLite database file, shared by every process on the host.

    ``SQLiteTokenStore("/var/lib/app/tokens.db")`` (``~`` expanded; the file, mode 0600,
    and its missing parent directories, mode 0700, are created on the first write; a
    missing file is an empty store). It uses the standard library's :mod:`sqlite3` in
    worker threads, so it never blocks the event loop, with the database in WAL mode
    (readers never wait for a writer) and ``synchronous=FULL`` (a save that returned
    survives a power cut). Every account is one row of the table ``aioamztoken_tokens``,
    keyed by ``namespace`` (default ``"aioamztoken"``, so stores with different
    namespaces share a file) and the account id; its value is the JSON document a
    :class:`DirectoryTokenStore` file holds. A save is one short transaction that reads
    the account's row, checks it, and replaces it: its cost does not grow with the number
    of accounts (an index lookup), and nothing another process wrote is lost.

    With ``key=`` values are encrypted exactly as :class:`RedisTokenStore` does it
    (:class:`~aioamztoken.stores.TokenCipher`, several keys to rotate them, newest first;
    :meth:`reencrypt` moves idle accounts to the newest key). Account ids stay readable.

    **Lock.** ``lock(account_id)`` is an ``flock(2)`` on a lock file in
    ``<path>.locks/``, shared by every process on the host: the kernel releases it when
    its holder dies, however it dies, so no stale lock ever blocks the others.

    **Failures.** A database busy for longer than ``timeout`` seconds (default 30), a
    file that is not an SQLite database, or a value that cannot be read (not a token
    document, another account's, encrypted under an unknown key) raises
    :class:`~aioamztoken.StorageError` naming the file (and the account); nothing that
    cannot be read is ever overwritten or deleted. SQLite on a network file system is
    not safe: keep the file on a local disk.

    Use it as ``async with SQLiteTokenStore(path) as store:`` or call :meth:`aclose`
    (connections are otherwise closed by the garbage collector). Safe to share between
    tasks on one event loop and between processes; not thread-safe.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        namespace: str = "aioamztoken",
        key: str | Sequence[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("namespace must be a non-empty string")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._path = resolve_path(path)
        self.namespace = namespace
        self.timeout = float(timeout)
        self._cipher = None if key is None else TokenCipher(key)
        self._ns = namespace.encode("utf-8", "surrogatepass")
        self._locks = LockFiles(Path(f"{self._path}.locks"))
        self._idle: list[sqlite3.Connection] = []
        self._guard = threading.Lock()
        self._slots: asyncio.Semaphore | None = None

    @property
    def path(self) -> str:
        """The absolute path of the database file."""
        return str(self._path)

    def __repr__(self) -> str:
        encrypted = ", encrypted" if self._cipher is not None else ""
        return f"{type(self).__name__}({self.path!r}, namespace={self.namespace!r}{encrypted})"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SQLiteTokenStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the idle connections. The store stays usable: a later call reopens one."""
        with self._guard:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()

    # ------------------------------------------------------------------ the store protocol

    async def load(self, account_id: str) -> Token | None:
        """The token of ``account_id``, or ``None`` if absent.

        Raises ``ValueError`` for an empty id, StorageError if the database or the value
        cannot be read (DecryptionError for a wrong key).
        """
        field = _field(account_id)

        def read(db: sqlite3.Connection) -> Token | None:
            value = self._select(db, field)
            return None if value is None else self._decode(account_id, value)[0]

        return await self._run("read", read, create=False, default=None)

    async def save(self, account_id: str, token: Token) -> None:
        """Store ``token`` for ``account_id`` in one transaction; other accounts are untouched.

        Raises StorageError, leaving the database as it was, if it cannot be written or
        the account's current value cannot be read.
        """
        field = _field(account_id)
        value = encode_value(self._cipher, account_id, token)

        def write(db: sqlite3.Connection) -> None:
            with _transaction(db):
                current = self._select(db, field)
                if current is not None:
                    self._decode(account_id, current)  # raises rather than replace it
                self._upsert(db, field, value)

        await self._run("write", write, create=True, default=None)

    async def delete(self, account_id: str) -> None:
        """Forget ``account_id`` (absent: no error). Raises StorageError like ``save``."""
        field = _field(account_id)

        def remove(db: sqlite3.Connection) -> None:
            with _transaction(db):
                current = self._select(db, field)
                if current is None:
                    return
                self._decode(account_id, current)
                db.execute(
                    "DELETE FROM aioamztoken_tokens WHERE namespace = ? AND account_id = ?",
                    (self._ns, field),
                )

        await self._run("delete", remove, create=False, default=None)

    async def accounts(self) -> list[str]:
        """The stored account ids of the namespace, sorted (ids that are not UTF-8 skipped)."""

        def names(db: sqlite3.Connection) -> list[str]:
            rows = db.execute(
                "SELECT account_id FROM aioamztoken_tokens WHERE namespace = ?", (self._ns,)
            ).fetchall()
            found = []
            for (raw,) in rows:
                try:
                    found.append(validate_account_id(bytes(raw).decode("utf-8")))
                except (UnicodeError, ValueError, TypeError):
                    continue
            return sorted(found)

        return await self._run("list accounts", names, create=False, default=[])

    async def mark_needs_reauth(self, account_id: str, refresh_token: str) -> bool:
        """Flag the stored record of ``account_id`` as needing a new authorization, in one
        transaction, only if it still holds ``refresh_token`` (the one Amazon refused).

        Returns whether it holds it (now flagged); ``False`` when absent or holding
        another refresh token, which is left untouched. Raises StorageError like ``save``.
        """
        field = _field(account_id)

        def mark(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                current = self._select(db, field)
                if current is None:
                    return False
                stored, outdated = self._decode(account_id, current)
                if stored.refresh_token != refresh_token:
                    return False
                if not stored.needs_reauth or outdated:
                    flagged = replace(stored, needs_reauth=True)
                    self._upsert(db, field, encode_value(self._cipher, account_id, flagged))
                return True

        return await self._run("mark", mark, create=False, default=False)

    async def reencrypt(self) -> int:
        """Rewrite under the newest key every value written under an older one.

        Returns how many were rewritten. Raises StorageError at the first value that
        cannot be read (rewriting nothing more); ``ValueError`` without ``key=``.
        """
        if self._cipher is None:
            raise ValueError("this SQLiteTokenStore has no key: its values are not encrypted")
        cipher = self._cipher
        rewritten = 0
        for account_id in await self.accounts():
            field = _field(account_id)

            def rewrite(
                db: sqlite3.Connection, account_id: str = account_id, field: bytes = field
            ) -> int:
                with _transaction(db):
                    current = self._select(db, field)
                    if current is None:
                        return 0
                    stored, outdated = self._decode(account_id, current)
                    if not outdated:
                        return 0
                    self._upsert(db, field, encode_value(cipher, account_id, stored))
                    return 1

            rewritten += await self._run("re-encrypt", rewrite, create=False, default=0)
        return rewritten

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id``, shared by every process on the host using this file.

        Not re-entrant; waiting can be cancelled; released by the kernel if its holder
        dies. Raises StorageError if the lock file cannot be created.
        """
        validate_account_id(account_id)
        return self._locks.hold(lock_name(f"{self.namespace}\x00{account_id}"))

    # ------------------------------------------------------------------ rows

    def _location(self, account_id: str) -> str:
        return (
            f"SQLite database {self._path} table {TABLE!r} namespace {self.namespace!r} "
            f"account {account_id!r}"
        )

    def _decode(self, account_id: str, value: object) -> tuple[Token, bool]:
        location = self._location(account_id)
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise corrupt(location, "holds a value that is not a BLOB")
        return decode_value(self._cipher, account_id, bytes(value), location)

    def _select(self, db: sqlite3.Connection, field: bytes) -> object | None:
        row = db.execute(
            "SELECT value FROM aioamztoken_tokens WHERE namespace = ? AND account_id = ?",
            (self._ns, field),
        ).fetchone()
        return None if row is None else row[0]

    def _upsert(self, db: sqlite3.Connection, field: bytes, value: bytes) -> None:
        db.execute(
            "INSERT INTO aioamztoken_tokens (namespace, account_id, value) VALUES (?, ?, ?) "
            "ON CONFLICT (namespace, account_id) DO UPDATE SET value = excluded.value",
            (self._ns, field, value),
        )

    # ------------------------------------------------------------------ threads, connections

    async def _run(
        self, action: str, work: Callable[[sqlite3.Connection], T], *, create: bool, default: T
    ) -> T:
        """``work(connection)`` in a worker thread, its failures as StorageError.

        Without ``create``, a missing database file is an empty store: ``default``.
        A cancelled caller still waits for the thread, whose transaction then completes.
        """
        if self._slots is None:
            self._slots = asyncio.Semaphore(_MAX_CONNECTIONS)
        async with self._slots:
            task = asyncio.ensure_future(
                anyio.to_thread.run_sync(self._in_thread, action, work, create, default)
            )
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                await wait_despite_cancellation(task)
                raise

    def _in_thread(
        self, action: str, work: Callable[[sqlite3.Connection], T], create: bool, default: T
    ) -> T:
        if not create and not self._path.exists():
            return default
        with self._connection(action, create) as db:
            try:
                return work(db)
            except StorageError:
                raise
            except sqlite3.Error as exc:
                raise self._failure(action, exc) from exc

    @contextlib.contextmanager
    def _connection(self, action: str, create: bool) -> Iterator[sqlite3.Connection]:
        with self._guard:
            db = self._idle.pop() if self._idle else None
        if db is None:
            db = self._connect(action, create)
        try:
            yield db
        except BaseException:
            if db.in_transaction:  # a failure midway: never keep its half
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        finally:
            with self._guard:
                self._idle.append(db)

    def _connect(self, action: str, create: bool) -> sqlite3.Connection:
        if create:
            ensure_dir(self._path.parent)
            try:  # so that the file (and SQLite's -wal and -shm files after it) are private
                os.close(os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
            except OSError as exc:
                raise os_failure("create", self._path, exc) from exc
        try:
            db = sqlite3.connect(
                self._path, timeout=self.timeout, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._failure(action, exc) from exc
        # Switching a new database to WAL needs it to itself for a moment, and SQLite may
        # answer "database is locked" at once rather than wait: retried until the timeout.
        deadline = time.monotonic() + self.timeout
        pause = 0.005
        while True:
            try:
                self._prepare(db)
                return db
            except sqlite3.OperationalError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() + pause > deadline:
                    db.close()
                    raise self._failure(action, exc) from exc
            except BaseException as exc:
                db.close()
                if isinstance(exc, sqlite3.Error):
                    raise self._failure(action, exc) from exc
                raise
            time.sleep(pause)  # a worker thread: never the event loop
            pause = min(pause * 2, 0.1)

    def _prepare(self, db: sqlite3.Connection) -> None:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise StorageError(
                f"SQLite database {self._path} could not be put in WAL mode "
                f"(it stays in {mode[0] if mode else 'an unknown'} mode)",
                location=str(self._path),
            )
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)

    def _failure(self, action: str, exc: sqlite3.Error) -> StorageError:
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(
            exc, sqlite3.OperationalError
        ):
            # "file is not a database", "database disk image is malformed": SQLite never
            # writes into such a file, and neither do we.
            return corrupt(
                f"SQLite database {self._path}",
                f"cannot be read as an SQLite database ({exc})",
            )
        return StorageError(
            f"SQLite database {self._path} failed to {action}: {type(exc).__name__}: {exc}",
            location=str(self._path),
        )


def _field(account_id: str) -> bytes:
    return validate_account_id(account_id).encode("utf-8")


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, taken at once (``BEGIN IMMEDIATE``): waits for other writers
    (up to the connection's timeout) before reading, so what it read is what it replaces."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
