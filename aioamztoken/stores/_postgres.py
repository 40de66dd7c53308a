"""A store in PostgreSQL, shared by a fleet, with advisory locks freed when a holder dies."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .._errors import AmzTokenError, StorageError
from .._logging import logger
from .._models import Token
from ._base import validate_account_id
from ._crypto import TokenCipher
from ._locks import KeyedLock
from ._values import decode_value, encode_value

if TYPE_CHECKING:
    import asyncpg

__all__ = ["DEFAULT_LOCK_TIMEOUT", "PostgresTokenStore"]

T = TypeVar("T")

#: The default ``lock_timeout`` (seconds): longer than a refresh can take with the
#: manager's defaults (a 30 s retry budget, plus a last 10 s request started just before
#: it ends), so a waiter gives up only on a holder that is stuck.
DEFAULT_LOCK_TIMEOUT = 60.0

#: The table every store in a database shares, one row per namespace and account.
TABLE = "aioamztoken_tokens"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS aioamztoken_tokens (
    namespace bytea NOT NULL,
    account_id bytea NOT NULL,
    value bytea NOT NULL,
    PRIMARY KEY (namespace, account_id)
)
"""
# Serializes CREATE TABLE across a fleet starting at once (two concurrent CREATE TABLE IF
# NOT EXISTS can both miss the table and one then fails).
_SCHEMA_LOCK = 0x616D7A746F6B656E  # "amztoken"

# A save or delete that keeps losing the race to other writers gives up after this many
# rounds (each round re-reads and re-checks the current value).
_MAX_ROUNDS = 50


def _import_asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "PostgresTokenStore needs asyncpg: pip install 'aioamztoken[postgres]'"
        ) from exc
    return asyncpg


def display_dsn(dsn: str | None) -> str:
    """``dsn`` as messages show it: user, host, port and database; no password, no query."""
    if dsn is None:
        return "postgresql://<from the PG* environment variables>"
    if not dsn.lower().startswith(("postgres://", "postgresql://")):
        return "<a PostgreSQL DSN>"  # not a URL: it may hold password=... anywhere
    try:
        parts = urllib.parse.urlsplit(dsn)
        host = parts.netloc.rpartition("@")[2]
        user = parts.username
    except ValueError:
        return "<an unparsable PostgreSQL URL>"
    netloc = f"{user}@{host}" if user else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def _passwords_of(dsn: str | None) -> list[str]:
    """Every password ``dsn`` holds (in its user info or a ``password=`` parameter)."""
    if dsn is None:
        return []
    try:
        parts = urllib.parse.urlsplit(dsn)
        found = [parts.password] if parts.password else []
        found += [v for k, v in urllib.parse.parse_qsl(parts.query) if k == "password" and v]
    except ValueError:
        return []
    return found + [urllib.parse.unquote(p) for p in found]


class _Held:
    """A lock held by this store: its connection, which the holder's own reads and writes
    of the account use (one at a time), so they never wait for a second pooled one."""

    __slots__ = ("connection", "turn")

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.turn = asyncio.Lock()


class PostgresTokenStore:
    """Tokens in PostgreSQL, shared by every process and host that reaches it: ``[postgres]``.

    ``PostgresTokenStore("postgresql://user:password@host:5432/db")`` (``postgres://``
    too; without a DSN, libpq's ``PG*`` environment variables), or ``pool=`` an existing
    ``asyncpg`` pool (used as is, never closed). It uses asyncpg, imported only when a
    store is made. Every account is one row of the table ``aioamztoken_tokens`` (created
    on first use if missing; the user then needs ``CREATE`` on the schema), keyed by
    ``namespace`` (default ``"aioamztoken"``) and the account id, as ``bytea``; its
    value is the JSON document a :class:`DirectoryTokenStore` file holds, encrypted
    exactly as :class:`RedisTokenStore` does with ``key=``.

    Each save or delete is one statement in its own implicit transaction, a
    compare-and-set: it replaces the value only if it still holds what was read and
    checked, so nothing written meanwhile, readable or not, is overwritten unseen, and no
    transaction is ever held open across a token request. Its cost does not grow with the
    number of accounts (a primary-key lookup).

    **Lock.** ``lock(account_id)`` takes a session-level advisory lock
    (``pg_advisory_lock``) on a pooled connection and keeps that connection until it is
    released. The server releases the lock if that connection dies (its process killed,
    its host gone once TCP notices), so no stale lock outlives its holder. While a
    lock is held, this store's reads and writes of that account run on the lock's own
    connection: a holder never needs a second pooled connection for the save it guards,
    so a fleet that locks as many accounts as the pool has connections cannot stall.
    Waiting gives up after ``lock_timeout`` seconds (default 60, longer than a refresh
    takes with the manager's default retry budget) with a StorageError; within one
    process, waiters for one account queue locally so that only one of them waits on the
    server. A lock whose connection broke while held is reported as lost (a warning).

    **Failures.** Every failure is a :class:`~aioamztoken.StorageError` naming the
    server (never its password); a command or connection attempt gets ``timeout``
    seconds (default 10). A value that cannot be read makes ``load``, ``save`` and
    ``delete`` of that account raise StorageError, and it is never overwritten or deleted.
    At most ``max_connections`` (default 10) connections are opened; waiting for one is
    bounded by ``lock_timeout``.

    Use it as ``async with PostgresTokenStore(dsn) as store:`` or call :meth:`aclose`.
    Safe to share between tasks on one event loop (one store per loop); not thread-safe.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        pool: asyncpg.Pool | None = None,
        namespace: str = "aioamztoken",
        key: str | Sequence[str] | None = None,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        timeout: float = 10.0,
        max_connections: int = 10,
    ) -> None:
        if dsn is not None and pool is not None:
            raise ValueError("pass a PostgreSQL dsn or pool=, not both")
        if not isinstance(namespace, str) or not namespace:
            raise ValueError("namespace must be a non-empty string")
        if not lock_timeout > 0 or not timeout > 0:
            raise ValueError("lock_timeout and timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._lib = _import_asyncpg()
        self._cipher = None if key is None else TokenCipher(key)
        self.namespace = namespace
        self.lock_timeout = float(lock_timeout)
        self.timeout = float(timeout)
        self._dsn = dsn
        self._max_connections = max_connections
        self._pool: Any = pool
        self._owns_pool = pool is None
        if pool is not None:
            connect_args = getattr(pool, "_connect_args", ())
            dsn = connect_args[0] if connect_args and isinstance(connect_args[0], str) else None
        self.url = display_dsn(dsn) if dsn is not None or pool is None else "<an asyncpg pool>"
        self._passwords = _passwords_of(dsn)
        self._ns = namespace.encode("utf-8", "surrogatepass")
        self._errors: tuple[type[BaseException], ...] = (
            self._lib.PostgresError,
            self._lib.InterfaceError,
            OSError,
            asyncio.TimeoutError,
        )
        self._starting: asyncio.Lock | None = None
        self._schema_ready = False
        self._held: dict[str, _Held] = {}
        self._local = KeyedLock()
        self._rng = random.Random()

    def __repr__(self) -> str:
        encrypted = ", encrypted" if self._cipher is not None else ""
        return f"{type(self).__name__}({self.url!r}, namespace={self.namespace!r}{encrypted})"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> PostgresTokenStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the pool (not one passed in). Locks still held are released by the server."""
        pool, self._pool = self._pool, None
        if pool is not None and self._owns_pool:
            with contextlib.suppress(*self._errors):
                await asyncio.wait_for(pool.close(), self.timeout)
        if not self._owns_pool:
            self._pool = pool

    # ------------------------------------------------------------------ the store protocol

    async def load(self, account_id: str) -> Token | None:
        """The token of ``account_id``, or ``None`` if absent.

        Raises ``ValueError`` for an empty id, StorageError if the server fails or the
        value cannot be read (DecryptionError for a wrong key).
        """
        field = _field(account_id)

        async def read(db: Any) -> Token | None:
            value = await self._select(db, field)
            return None if value is None else self._decode(account_id, value)[0]

        return await self._with(account_id, "read", read)

    async def save(self, account_id: str, token: Token) -> None:
        """Store ``token`` for ``account_id`` (one statement); other accounts are untouched.

        Raises StorageError, leaving the row as it was, if the server fails or the
        account's current value cannot be read.
        """
        await self._write(account_id, token)

    async def delete(self, account_id: str) -> None:
        """Forget ``account_id`` (absent: no error). Raises StorageError like ``save``."""
        await self._write(account_id, None)

    async def accounts(self) -> list[str]:
        """The stored account ids of the namespace, sorted (ids that are not UTF-8 skipped)."""

        async def names(db: Any) -> list[str]:
            rows = await db.fetch(
                "SELECT account_id FROM aioamztoken_tokens WHERE namespace = $1", self._ns
            )
            found = []
            for row in rows:
                try:
                    found.append(validate_account_id(bytes(row[0]).decode("utf-8")))
                except (UnicodeError, ValueError):
                    continue
            return sorted(found)

        return await self._with(None, "list accounts", names)

    async def mark_needs_reauth(self, account_id: str, refresh_token: str) -> bool:
        """Flag the stored record of ``account_id`` as needing a new authorization,
        compare-and-set, only if it still holds ``refresh_token`` (the one Amazon refused).

        Returns whether it holds it (now flagged); ``False`` when absent or holding
        another refresh token, which is left untouched. Raises StorageError like ``save``.
        """
        field = _field(account_id)

        async def mark(db: Any) -> bool:
            for _ in range(_MAX_ROUNDS):
                current = await self._select(db, field)
                if current is None:
                    return False
                stored, outdated = self._decode(account_id, current)  # raises if unreadable
                if stored.refresh_token != refresh_token:
                    return False
                if stored.needs_reauth and not outdated:
                    return True
                flagged = encode_value(
                    self._cipher, account_id, replace(stored, needs_reauth=True)
                )
                status = await db.execute(
                    "UPDATE aioamztoken_tokens SET value = $4 "
                    "WHERE namespace = $1 AND account_id = $2 AND value = $3",
                    self._ns,
                    field,
                    current,
                    flagged,
                )
                if str(status).endswith(" 1"):
                    return True
            raise StorageError(
                f"{self._location(account_id)} kept changing while being marked "
                f"({_MAX_ROUNDS} attempts); try again",
                location=self._location(account_id),
            )

        return await self._with(account_id, "mark", mark)

    async def reencrypt(self) -> int:
        """Rewrite under the newest key every value written under an older one.

        Returns how many were rewritten. Raises StorageError at the first value that
        cannot be read (rewriting nothing more); ``ValueError`` without ``key=``.
        """
        if self._cipher is None:
            raise ValueError("this PostgresTokenStore has no key: its values are not encrypted")
        rewritten = 0
        for account_id in await self.accounts():
            rewritten += await self._write(account_id, None, reencrypt=True)
        return rewritten

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id``, shared by every process using this database and namespace.

        Not re-entrant. Waiting can be cancelled and gives up after ``lock_timeout``
        seconds (StorageError); the server releases the lock if its holder dies.
        """
        return self._hold(validate_account_id(account_id))

    # ------------------------------------------------------------------ values

    def _location(self, account_id: str) -> str:
        return (
            f"PostgreSQL {self.url} table {TABLE!r} namespace {self.namespace!r} "
            f"account {account_id!r}"
        )

    def _decode(self, account_id: str, value: bytes) -> tuple[Token, bool]:
        return decode_value(self._cipher, account_id, value, self._location(account_id))

    async def _select(self, db: Any, field: bytes) -> bytes | None:
        value: bytes | None = await db.fetchval(
            "SELECT value FROM aioamztoken_tokens WHERE namespace = $1 AND account_id = $2",
            self._ns,
            field,
        )
        return value

    async def _write(
        self, account_id: str, token: Token | None, *, reencrypt: bool = False
    ) -> bool:
        """Save ``token`` (``None``: delete; ``reencrypt``: rewrite under the newest key),
        compare-and-set, unless the current value cannot be read. Returns whether a row changed."""
        field = _field(account_id)

        async def write(db: Any) -> bool:
            for _ in range(_MAX_ROUNDS):
                current = await self._select(db, field)
                new: bytes | None
                if current is None:
                    if token is None:
                        return False
                    new = encode_value(self._cipher, account_id, token)
                    status = await db.execute(
                        "INSERT INTO aioamztoken_tokens (namespace, account_id, value) "
                        "VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                        self._ns,
                        field,
                        new,
                    )
                else:
                    stored, outdated = self._decode(account_id, current)  # raises if unreadable
                    if reencrypt:
                        if not outdated:
                            return False
                        new = encode_value(self._cipher, account_id, stored)
                    else:
                        new = None if token is None else encode_value(
                            self._cipher, account_id, token
                        )
                    if new is None:
                        status = await db.execute(
                            "DELETE FROM aioamztoken_tokens "
                            "WHERE namespace = $1 AND account_id = $2 AND value = $3",
                            self._ns,
                            field,
                            current,
                        )
                    else:
                        status = await db.execute(
                            "UPDATE aioamztoken_tokens SET value = $4 "
                            "WHERE namespace = $1 AND account_id = $2 AND value = $3",
                            self._ns,
                            field,
                            current,
                            new,
                        )
                if str(status).endswith(" 1"):
                    return True
            raise StorageError(
                f"{self._location(account_id)} kept changing while being written "
                f"({_MAX_ROUNDS} attempts); try again",
                location=self._location(account_id),
            )

        return await self._with(account_id, "write", write)

    # ------------------------------------------------------------------ connections

    async def _with(
        self, account_id: str | None, action: str, work: Callable[[Any], Awaitable[T]]
    ) -> T:
        """``work(connection)``: on the account's held lock connection if this store holds
        its lock, else on a pooled one; failures become StorageError."""
        held = None if account_id is None else self._held.get(account_id)
        try:
            if held is not None:
                async with held.turn:
                    await self._ensure_schema(held.connection)
                    return await work(held.connection)
            pool = await self._get_pool()
            connected = False
            try:
                async with pool.acquire(timeout=self.lock_timeout) as db:
                    connected = True
                    await self._ensure_schema(db)
                    return await work(db)
            except ValueError as exc:
                if connected:
                    raise
                failure = self._failure("connect", exc)  # a DSN asyncpg cannot parse
        except AmzTokenError:
            raise
        except self._errors as exc:
            failure = self._failure(action, exc)
        # Raised outside the except block: asyncpg's errors may quote a query argument (a
        # token), and error reporters walk __context__.
        raise failure

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._pool is None:
                pool = self._lib.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=self._max_connections,
                    timeout=self.timeout,
                    command_timeout=self.timeout,
                )
                await pool
                self._pool = pool
        return self._pool

    async def _ensure_schema(self, db: Any) -> None:
        if self._schema_ready:
            return
        # Checked first: a user allowed to use the table but not to create one still works.
        if await db.fetchval("SELECT to_regclass($1)", TABLE) is None:
            async with db.transaction():
                await db.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
                await db.execute(_SCHEMA)
        self._schema_ready = True

    def _failure(self, action: str, exc: BaseException) -> StorageError:
        if isinstance(exc, asyncio.TimeoutError):
            reason = "TimeoutError: no answer in time"
        elif isinstance(exc, self._lib.DataError):
            # Raised before sending, when a query argument cannot be encoded: its message
            # quotes the argument, which may be a token.
            reason = type(exc).__name__
        else:
            reason = f"{type(exc).__name__}: {str(exc) or type(exc).__name__}"
        for password in self._passwords:
            reason = reason.replace(password, "***")
        return StorageError(
            f"PostgreSQL at {self.url} failed to {action}: {reason}", location=self.url
        )

    # ------------------------------------------------------------------ the lock

    def _lock_key(self, account_id: str) -> int:
        digest = hashlib.sha256(self._ns + b"\x00" + account_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    @contextlib.asynccontextmanager
    async def _hold(self, account_id: str) -> AsyncIterator[None]:
        key = self._lock_key(account_id)
        async with self._local.hold(account_id):
            pool = await self._call("take a lock", self._get_pool())
            db = await self._call("take a lock", pool.acquire(timeout=self.lock_timeout))
            try:
                await self._acquire(db, account_id, key)
                held = self._held[account_id] = _Held(db)
                try:
                    yield
                finally:
                    del self._held[account_id]
                    async with held.turn:  # after any read or write still running on it
                        await self._unlock(db, account_id, key)
            finally:
                # Releasing resets the connection (pg_advisory_unlock_all, RESET ALL): a
                # lock granted just as its waiter was cancelled is not kept either.
                with contextlib.suppress(*self._errors):
                    await asyncio.shield(pool.release(db, timeout=self.timeout))

    async def _acquire(self, db: Any, account_id: str, key: int) -> None:
        ms = max(1, round(self.lock_timeout * 1000))
        try:
            await db.execute(f"SET lock_timeout = {ms}")
            await db.execute("SELECT pg_advisory_lock($1)", key, timeout=self.lock_timeout + 5)
            return
        except asyncio.CancelledError:
            db.terminate()  # the lock may have been granted: the server frees it now
            raise
        except self._lib.LockNotAvailableError:
            raise StorageError(
                f"PostgreSQL at {self.url}: the lock of account {account_id!r} was held by "
                f"another process for longer than lock_timeout={self.lock_timeout:g}s",
                location=self.url,
            ) from None
        except self._errors as exc:
            db.terminate()
            failure = self._failure("take a lock", exc)
        raise failure

    async def _unlock(self, db: Any, account_id: str, key: int) -> None:
        try:
            released = await asyncio.shield(
                db.fetchval("SELECT pg_advisory_unlock($1)", key, timeout=self.timeout)
            )
        except self._errors as exc:
            logger.warning(
                "the lock of account %r was lost while held (its connection failed: %s): "
                "another process may have refreshed it too",
                account_id,
                self._failure("release a lock", exc),
            )
            return
        if not released:  # pragma: no cover - only if someone unlocked it on our session
            logger.warning("the lock of account %r was no longer held at release", account_id)

    async def _call(self, action: str, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except AmzTokenError:
            raise
        except self._errors as exc:
            failure = self._failure(action, exc)
        except ValueError as exc:  # a DSN asyncpg cannot parse (a port not a number)
            failure = self._failure(action, exc)
        raise failure


def _field(account_id: str) -> bytes:
    return validate_account_id(account_id).encode("utf-8")
