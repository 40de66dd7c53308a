"""A store in Redis, shared by every process and host that can reach it, with a fleet-wide lock."""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._errors import AmzTokenError, StorageError
from .._logging import logger, redact
from .._models import Token
from .._scrub import scrubbed
from ._base import validate_account_id
from ._codec import corrupt, decode_account, encode_account
from ._crypto import TokenCipher
from ._locks import KeyedLock
from ._redis_topology import (
    AclDenied,
    Script,
    acl_failure,
    cluster_lock_key,
    cluster_record_key,
    denied_in_script,
    describe_client,
    is_cluster,
    open_topology,
    scan_accounts,
)

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisTokenStore"]

#: The default ``lock_ttl`` (seconds): longer than a refresh can take with the manager's
#: defaults (a 30 s retry budget, plus a last 10 s request started just before it ends).
DEFAULT_LOCK_TTL = 60.0

# Polling delays (seconds) while another process holds a lock: quick at first, then
# backing off, each drawn with jitter so that waiters do not poll in step.
_FIRST_POLL = 0.005
_MAX_POLL = 0.05

# A save or delete that keeps losing the race to other writers gives up after this many
# rounds (each round re-reads and re-checks the current value).
_MAX_ROUNDS = 50

# Replace (ARGV[4] == "set": with ARGV[5]) or delete field ARGV[1] of hash KEYS[1], only if
# it still holds what the caller read and checked: absent (ARGV[2] == "0") or ARGV[3].
# A value written meanwhile, readable or not, is therefore never overwritten unseen.
_REPLACE_SCRIPT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[2] == '1' then
    if current ~= ARGV[3] then return 0 end
elseif current then
    return 0
end
if ARGV[4] == 'set' then
    redis.call('HSET', KEYS[1], ARGV[1], ARGV[5])
else
    redis.call('HDEL', KEYS[1], ARGV[1])
end
return 1
"""

# Release (delete) or renew (PEXPIRE ARGV[2]) lock KEYS[1], only for its holder ARGV[1].
_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""
_RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "RedisTokenStore needs redis-py: pip install 'aioamztoken[redis]'"
        ) from exc
    return redis


def _display_url(url: str) -> str:
    """``url`` as messages show it: no password, no query string (it may hold one)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<an unparsable Redis URL>"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None else f"{host}:{port}"
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc}"
    elif parts.username:
        netloc = f"{parts.username}@{netloc}"
    return f"{parts.scheme}://{netloc}{parts.path}"


def _password_of(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


def _username_of(client: Any) -> str | None:
    holder = getattr(client, "nodes_manager", None) or getattr(client, "connection_pool", None)
    name = getattr(holder, "connection_kwargs", {}).get("username")
    return name if isinstance(name, str) else None


class RedisTokenStore:
    """Tokens in Redis, shared by every process and host that reaches it: ``aioamztoken[redis]``.

    ``RedisTokenStore("redis://[:password@]host:6379/0")``, or ``client=`` an existing
    ``redis.asyncio.Redis`` (used as is, never closed: it must not decode responses).
    Everything lives under ``namespace`` (default ``"aioamztoken"``):

    - ``{namespace}:tokens``: a hash, one field per account id (UTF-8), whose value is
      the JSON document a :class:`DirectoryTokenStore` file holds. A save replaces one
      field atomically and touches no other account, so its cost does not depend on the
      number of accounts; ``accounts()`` reads the field names (``HKEYS``), O(n) only
      when it is called.
    - ``{namespace}:lock:{account id}``: the account's lock while someone holds it.

    On a Redis Cluster (``redis+cluster://host:port,.../`` or ``client=`` a
    ``redis.asyncio.RedisCluster``) each account has a hash of its own,
    ``{namespace:account id}:token`` (``:`` and braces in the namespace escaped), and its
    lock is ``{namespace:account id}:lock``: the hash tag puts both in one slot, and the
    accounts spread over the masters; ``accounts()`` scans every master. Behind Sentinel
    (``redis+sentinel://host:port,.../SERVICE[/DB]``) the layout is the one above, on
    whichever server is the master.

    With ``key=`` (a :class:`~aioamztoken.stores.TokenCipher` key, or several to rotate
    them, newest first) each value is encrypted as the encrypted file store does it:
    values written under an older key are read, the next save of the account writes it
    under the newest key, and :meth:`reencrypt` moves the idle ones. The account ids (the
    field names) stay readable; each encrypted value names its account, so a value moved
    to another field is refused.

    **Lock.** ``lock(account_id)`` is a lock shared by everyone using the same Redis and
    namespace: ``SET NX PX`` with a random token, released only by its holder (a Lua
    compare-and-delete). While held it is renewed every ``lock_ttl / 3`` seconds, so a
    long refresh keeps it; if the holder dies, the lock frees itself within ``lock_ttl``
    seconds (default 60: longer than a refresh takes with the manager's default retry
    budget of 30 s plus one 10 s request, so it holds even if renewals fail). Waiters
    poll with jittered sleeps of 5 to 50 ms, can be cancelled, and within one process
    queue locally so that only one of them polls Redis. A holder that finds its lock
    gone (it stalled for longer than ``lock_ttl``) logs a warning; a lock that cannot be
    released (Redis unreachable at that moment) is logged and expires by itself. A take
    that redis-py re-sent after a timeout finds the lock its first attempt may have taken,
    and holds it rather than wait for it to expire.

    **Failures.** Every Redis failure becomes a :class:`~aioamztoken.StorageError` that
    names the URL (never its password). A command gets ``timeout`` seconds (connecting
    too) and is retried twice on connection errors and timeouts, so an unreachable Redis
    is reported within about ``3 * timeout`` seconds. At most ``max_connections``
    connections are opened; callers beyond that wait for one at most ``timeout`` seconds,
    then get StorageError. A value that cannot be
    read (not a token document, another account's, encrypted under an unknown key)
    makes ``load``, ``save`` and ``delete`` of that account raise StorageError naming
    the key and field, and it is never overwritten or deleted. What survives a Redis
    restart is Redis's business: run it with persistence (``appendonly yes``) when it is
    the only place your refresh tokens live.

    Use it as ``async with RedisTokenStore(url) as store:`` or call :meth:`aclose`. Safe
    to share between tasks on one event loop (one store per loop); not thread-safe.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "aioamztoken",
        key: str | Sequence[str] | None = None,
        client: redis.asyncio.Redis | None = None,
        lock_ttl: float = DEFAULT_LOCK_TTL,
        timeout: float = 5.0,
        max_connections: int = 50,
    ) -> None:
        if (url is None) == (client is None):
            raise ValueError("pass a Redis url or client=, exactly one of them")
        if not namespace:
            raise ValueError("namespace must be a non-empty string")
        if not lock_ttl > 0 or not timeout > 0:
            raise ValueError("lock_ttl and timeout must be positive")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        lib = _import_redis()
        topology = open_topology(  # redis+cluster://, redis+sentinel://; None for others
            lib, url or "", max_connections=max_connections, timeout=timeout
        )
        if topology is not None:
            client, url = topology.client, None
        self._cipher = None if key is None else TokenCipher(key)
        self.namespace = namespace
        self.lock_ttl = float(lock_ttl)
        self._errors: tuple[type[BaseException], ...] = (
            lib.exceptions.RedisError,
            lib.exceptions.RedisClusterException,  # not a RedisError
            OSError,
        )
        self._lib = lib
        self._client: redis.asyncio.Redis
        self._password: str | None
        if client is not None:
            self._client = client
            self._owns_client = False
            self.url, self._password = describe_client(client)
        else:
            assert url is not None
            self.url = _display_url(url)
            self._password = _password_of(url)
            pool = lib.asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                # Waiting for a free connection is bounded too: with Redis frozen, callers
                # beyond max_connections fail after `timeout` instead of queueing for ever.
                timeout=timeout,
                socket_timeout=timeout,
                socket_connect_timeout=timeout,
                retry=lib.asyncio.retry.Retry(
                    lib.backoff.ExponentialWithJitterBackoff(cap=0.5, base=0.05), 2
                ),
            )
            self._client = lib.asyncio.Redis.from_pool(pool)
            self._owns_client = True
        self._closers = [] if topology is None else list(topology.closers)
        if topology is not None:
            self._owns_client = True
            self.url, self._password = topology.url, topology.password
        # On a cluster each account has a hash of its own, in its lock's slot.
        self._cluster = is_cluster(self._client)
        self._username: str | None = _username_of(self._client)
        self._tokens_key = f"{namespace}:tokens".encode()
        self._replace = Script(self._client, _REPLACE_SCRIPT, lib)
        self._release_script = Script(self._client, _RELEASE_SCRIPT, lib)
        self._renew_script = Script(self._client, _RENEW_SCRIPT, lib)
        self._local = KeyedLock()
        self._rng = random.Random()
        self._releases: set[asyncio.Task[None]] = set()
        self._renewals: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        encrypted = ", encrypted" if self._cipher is not None else ""
        return f"{type(self).__name__}({self.url!r}, namespace={self.namespace!r}{encrypted})"

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> RedisTokenStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Finish pending lock releases and close the connections (not a client passed in).

        Locks still held stop being renewed (they expire within ``lock_ttl``).
        """
        for task in self._renewals:
            task.cancel()
        while self._releases or self._renewals:
            await asyncio.gather(*self._releases, *self._renewals, return_exceptions=True)
        if self._closers:
            for close in self._closers:
                await close()
        elif self._owns_client:
            await self._client.aclose()

    # ------------------------------------------------------------------ the store protocol

    async def load(self, account_id: str) -> Token | None:
        """The token of ``account_id``, or ``None`` if absent.

        Raises ``ValueError`` for an empty id, StorageError if Redis fails or the value
        cannot be read (DecryptionError for a wrong key).
        """
        field = self._field(account_id)
        value = await self._call("read", self._client.hget(self._record_key(account_id), field))
        return None if value is None else self._decode(account_id, value)[0]

    async def save(self, account_id: str, token: Token) -> None:
        """Store ``token`` for ``account_id``, atomically; other accounts are not touched.

        Raises StorageError, leaving Redis as it was, if Redis fails or the account's
        current value cannot be read.
        """
        await self._write(account_id, token)

    async def delete(self, account_id: str) -> None:
        """Forget ``account_id`` (absent: no error). Raises StorageError like ``save``."""
        await self._write(account_id, None)

    async def mark_needs_reauth(self, account_id: str, refresh_token: str) -> bool:
        """Flag the account's record as needing re-authorization, only if it still holds
        ``refresh_token`` (the one the endpoint refused); else change nothing.

        Compare-and-set: the value is replaced only if it is still the one read and
        checked (a Lua script), so a newer refresh token saved meanwhile by a process
        that holds the lock (ours lapsed, or was deleted) is never overwritten. Returns
        whether the record is now flagged. Raises StorageError like ``save``.
        """
        field = self._field(account_id)
        record = self._record_key(account_id)
        for _ in range(_MAX_ROUNDS):
            current = await self._call("read", self._client.hget(record, field))
            if current is None:
                return False
            stored, outdated = self._decode(account_id, current)
            if stored.refresh_token != refresh_token:
                return False
            if stored.needs_reauth and not outdated:
                return True
            new = self._encode(account_id, replace(stored, needs_reauth=True))
            args = [field, "1", current, "set", new]
            if await self._call("write", self._replace(keys=[record], args=args)):
                return True
        raise StorageError(
            f"{self._location(account_id)} kept changing while being marked "
            f"({_MAX_ROUNDS} attempts); try again",
            location=self._location(account_id),
        )

    async def reencrypt(self) -> int:
        """Rewrite under the newest key every value written under an older one.

        After a rotation (``key=[new, old]``) each account moves to ``new`` at its next
        save anyway; run this to move idle accounts too, so that ``old`` can be dropped.
        Returns how many values were rewritten. Raises StorageError, rewriting nothing
        more, at the first value that cannot be read; ``ValueError`` without ``key=``.
        """
        if self._cipher is None:
            raise ValueError("this RedisTokenStore has no key: its values are not encrypted")
        rewritten = 0
        for account_id in await self.accounts():
            rewritten += await self._write(account_id, None, reencrypt=True)
        return rewritten

    async def accounts(self) -> list[str]:
        """The stored account ids, sorted (one ``HKEYS``). Fields that are not UTF-8 are skipped."""
        if self._cluster:
            fields = await self._call("list accounts", scan_accounts(self._client, self.namespace))
        else:
            fields = await self._call("list accounts", self._client.hkeys(self._tokens_key))
        found = []
        for field in fields:
            try:
                raw = field if isinstance(field, bytes) else str(field).encode("utf-8")
                found.append(validate_account_id(raw.decode("utf-8")))
            except (UnicodeError, ValueError):
                continue
        return sorted(found)

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id``, shared by every process using this Redis and namespace.

        Not re-entrant. Waiting can be cancelled; see the class docstring for renewal and
        what happens when a holder dies. Raises StorageError if Redis fails while taking it.
        """
        return self._hold(validate_account_id(account_id))

    # ------------------------------------------------------------------ values

    def _field(self, account_id: str) -> bytes:
        return validate_account_id(account_id).encode("utf-8")

    def _record_key(self, account_id: str) -> bytes:
        if self._cluster:
            return cluster_record_key(self.namespace, account_id)
        return self._tokens_key

    def _location(self, account_id: str) -> str:
        key = self._record_key(account_id).decode("utf-8", "backslashreplace")
        return f"Redis {self.url} key {key!r} field {account_id!r}"

    def _decode(self, account_id: str, value: bytes | str) -> tuple[Token, bool]:
        """The token in ``value``, and whether it was encrypted under an older key."""
        data = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value
        location = self._location(account_id)
        outdated = False
        if self._cipher is not None:
            data, outdated = self._cipher.decrypt(data, location=location)
        stored_id, token = decode_account(data, location)
        if stored_id != account_id:  # copied from another field by hand
            raise corrupt(location, "holds another account than its field says")
        return token, outdated

    def _encode(self, account_id: str, token: Token) -> bytes:
        data = encode_account(account_id, token)
        return data if self._cipher is None else self._cipher.encrypt(data)

    async def _write(
        self, account_id: str, token: Token | None, *, reencrypt: bool = False
    ) -> bool:
        """Save ``token`` (``None``: delete; ``reencrypt``: rewrite what is there if it was
        encrypted under an older key) unless the current value cannot be read.

        Compare-and-set: the current value is read and checked, then replaced only if it
        is still the same, so nothing written meanwhile is overwritten unseen. Returns
        whether Redis was changed.
        """
        field = self._field(account_id)
        for _ in range(_MAX_ROUNDS):
            record = self._record_key(account_id)
            current = await self._call("read", self._client.hget(record, field))
            new: bytes | None
            if current is None:
                if token is None:
                    return False  # nothing to delete or rewrite
                new = self._encode(account_id, token)
            else:
                # Raises rather than replace what it cannot read.
                stored, outdated = self._decode(account_id, current)
                if reencrypt:
                    if not outdated:
                        return False
                    new = self._encode(account_id, stored)
                else:
                    new = None if token is None else self._encode(account_id, token)
            args = [
                field,
                "0" if current is None else "1",
                current or b"",
                "del" if new is None else "set",
                new or b"",
            ]
            if await self._call("write", self._replace(keys=[record], args=args)):
                return True
        raise StorageError(
            f"{self._location(account_id)} kept changing while being written "
            f"({_MAX_ROUNDS} attempts); try again",
            location=self._location(account_id),
        )

    # ------------------------------------------------------------------ errors

    async def _call(self, action: str, awaitable: Any) -> Any:
        """Await a redis-py call, turning its failures into StorageError."""
        # redis-py's errors may hold the command sent (a token): raised outside the except
        # block, with a scrubbed cause.
        try:
            return await awaitable
        except AmzTokenError:
            raise
        except self._errors as exc:
            failure = self._failure(action, exc)
        except AttributeError as exc:
            # redis-py's cluster client under concurrency (see _redis_topology): a client
            # passed in has not got the retries of the one a URL builds.
            if not (self._cluster and "writelines" in str(exc)):
                raise
            failure = self._failure(action, exc)
        raise failure

    def _failure(self, action: str, exc: BaseException) -> StorageError:
        if isinstance(exc, self._lib.exceptions.NoPermissionError):
            return acl_failure(self.url, action, exc, self._username)
        command = denied_in_script(exc)
        if command is not None:
            return acl_failure(self.url, action, exc, self._username, command)
        if isinstance(exc, self._lib.exceptions.MovedError) and not self._cluster:
            return StorageError(
                f"Redis at {self.url} is a node of a Redis Cluster (it answered MOVED to "
                f"{action}): open the store as redis+cluster://HOST:PORT/ instead",
                location=self.url,
            )
        hidden = (self._password,) if self._password else ()
        reason = redact(str(exc), hidden) or type(exc).__name__
        exceptions = self._lib.exceptions
        error = StorageError(
            f"Redis at {self.url} failed to {action}: {type(exc).__name__}: {reason}",
            location=self.url,
            # Redis did not answer (a frozen or unreachable server, no pool connection in
            # time): not this account's problem, and every other call would fail alike.
            unavailable=isinstance(exc, (exceptions.ConnectionError, exceptions.TimeoutError)),
        )
        error.__cause__ = scrubbed(exc, hidden)
        return error

    # ------------------------------------------------------------------ the lock

    def _lock_key(self, account_id: str) -> bytes:
        if self._cluster:
            return cluster_lock_key(self.namespace, account_id)
        return f"{self.namespace}:lock:".encode() + account_id.encode("utf-8")

    @contextlib.asynccontextmanager
    async def _hold(self, account_id: str) -> AsyncIterator[None]:
        key = self._lock_key(account_id)
        async with self._local.hold(account_id):
            holder = secrets.token_hex(16)
            await self._acquire(key, holder)
            renewal = self._spawn(self._renew(account_id, key, holder), self._renewals)
            try:
                yield
            finally:
                renewal.cancel()
                # Shielded: a holder cancelled here still releases, in the background. A
                # renewal still in flight is harmless: it only extends the holder's own lock.
                await asyncio.shield(self._spawn(self._release(key, holder), self._releases))

    async def _acquire(self, key: bytes, holder: str) -> None:
        ttl_ms = max(1, round(self.lock_ttl * 1000))
        delay = _FIRST_POLL
        while True:
            # The SET runs in a task of its own that we await through a shield: redis-py
            # has been seen to swallow a cancellation that lands mid-command, which would
            # leave a cancelled waiter polling for ever. Our own await always honours it.
            attempt = asyncio.ensure_future(self._try_take(key, holder, ttl_ms))
            try:
                taken = await asyncio.shield(attempt)
            except BaseException:
                # The SET may reach (or have reached) Redis despite the failure or the
                # cancellation: once it has settled, give the lock back rather than leave
                # it to expire.
                self._spawn(self._release_after(attempt, key, holder), self._releases)
                raise
            if taken:
                return
            await asyncio.sleep(self._rng.uniform(delay / 2, delay))
            delay = min(delay * 2, _MAX_POLL)

    async def _try_take(self, key: bytes, holder: str, ttl_ms: int) -> bool:
        # redis-py (the cluster client too) re-sends a command that timed out or whose
        # connection broke, and the first SET may have landed: SET NX GET answers what was
        # there, so a lock already held by this holder counts as taken (instead of waiting
        # lock_ttl for our own lock). Needs Redis 7.0; no script, so no EVAL permission.
        before = await self._call(
            "take a lock", self._client.set(key, holder, nx=True, px=ttl_ms, get=True)
        )
        return before is None or before == holder.encode()

    async def _renew(self, account_id: str, key: bytes, holder: str) -> None:
        ttl_ms = max(1, round(self.lock_ttl * 1000))
        while True:
            await asyncio.sleep(self.lock_ttl / 3)
            try:
                renewed = await self._call(
                    "renew a lock", self._renew_script(keys=[key], args=[holder, ttl_ms])
                )
            except StorageError as exc:
                logger.warning("could not renew the lock of account %r: %s", account_id, exc)
                continue
            if not renewed:
                logger.warning(
                    "the lock of account %r expired while held (stalled for more than "
                    "lock_ttl=%gs?): another process may be refreshing it too",
                    account_id,
                    self.lock_ttl,
                )
                return

    @staticmethod
    def _spawn(
        coro: Coroutine[Any, Any, None], into: set[asyncio.Task[None]]
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(coro)
        into.add(task)
        task.add_done_callback(into.discard)
        task.add_done_callback(_retrieved)  # a release that raised was reported already
        return task

    async def _release_after(
        self, attempt: asyncio.Future[Any], key: bytes, holder: str
    ) -> None:
        with contextlib.suppress(BaseException):
            await attempt
        await self._release(key, holder)

    async def _release(self, key: bytes, holder: str) -> None:
        try:
            await self._call("release a lock", self._release_script(keys=[key], args=[holder]))
        except StorageError as exc:
            if isinstance(exc, AclDenied):
                # Every lock of this user would stay held for lock_ttl: say so at once.
                logger.error("could not release a lock: %s", exc)
                raise
            logger.warning("could not release a lock (it expires by itself): %s", exc)


def _retrieved(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()
