"""A store keeping each account in an entry of the OS keyring."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import platformdirs

from .._errors import StorageError
from .._logging import redact
from .._models import Token
from .._scrub import scrubbed
from ._base import validate_account_id
from ._codec import corrupt, decode_account, decode_index, encode_account, encode_index, lock_name
from ._fs import resolve_path, run_sync
from ._locks import KeyedLock, LockFiles

if TYPE_CHECKING:
    from keyring.backend import KeyringBackend

__all__ = ["KeyringTokenStore"]

T = TypeVar("T")

_INDEX = "index"


class KeyringTokenStore:
    """Each account in its own entry of the OS keyring (Keychain, Credential Manager,
    the Secret Service...), through the ``keyring`` package (``pip install
    'aioamztoken[keyring]'``).

    Entries of service ``service`` (default ``"aioamztoken"``):

    - ``account-<sha256 of the id>``: one per account, holding the JSON document a
      :class:`DirectoryTokenStore` file holds (the id is inside, and checked on reading);
      hashing makes any id a name every backend can keep.
    - ``index``: the sorted list of account ids, since a keyring cannot list its entries.
      ``save`` adds to it before writing the entry and ``delete`` removes from it after
      deleting the entry, so ``accounts()`` never misses a stored account; a process
      killed in between may leave an id listed whose ``load`` gives ``None``.

    ``backend`` is a ``keyring`` backend; by default ``keyring.get_keyring()``, looked up
    at each call. Every keyring call runs in a worker thread, never on the event loop, and
    the calls of one store are made one at a time, since some backends are not
    thread-safe. Saves and deletes (the index's read-modify-write) are serialised within
    the process and, through a ``flock`` in ``lock_dir``, across processes: every process
    of this user sees every account. ``lock(account_id)`` is a per-account lock in
    ``lock_dir`` shared across processes. ``lock_dir`` defaults to
    ``<user data dir>/aioamztoken/locks/keyring-<hash of service>``; processes sharing a
    keyring must share it.

    Only a backend that keeps secrets safe is used. keyrings.alt's plaintext backends, the
    fail backend (keyring found nothing usable), any backend whose priority is below 1
    (keyring's own "not recommended") and a chain holding any of those are refused: the
    first call raises :class:`~aioamztoken.StorageError` naming the backend, and nothing
    is read or written. ``allow_insecure_backend=True`` (``keyring://SERVICE?
    allow_insecure_backend=1``) opts in to such a backend, for tests or a machine where
    a plain file is acceptable.

    An entry or index that cannot be read raises :class:`~aioamztoken.StorageError` and
    is never overwritten or deleted; so does any failure of the backend (a locked or
    missing keyring, a D-Bus error). Safe to share between tasks on one event loop and
    between processes; not thread-safe.
    """

    def __init__(
        self,
        service: str = "aioamztoken",
        *,
        backend: KeyringBackend | None = None,
        lock_dir: str | os.PathLike[str] | None = None,
        allow_insecure_backend: bool = False,
    ) -> None:
        if not isinstance(service, str) or not service:
            raise ValueError("service must be a non-empty string")
        try:
            import keyring  # noqa: F401 (an optional dependency: fail here, not at first use)
        except ImportError as exc:
            raise ImportError(
                "KeyringTokenStore needs the keyring package: pip install 'aioamztoken[keyring]'"
            ) from exc
        self.service = service
        self._backend = backend
        self.allow_insecure_backend = allow_insecure_backend
        if lock_dir is None:
            digest = hashlib.sha256(service.encode("utf-8", "surrogatepass")).hexdigest()[:16]
            lock_dir = Path(platformdirs.user_data_dir("aioamztoken"), "locks", f"keyring-{digest}")
        self._locks = LockFiles(resolve_path(lock_dir))
        self._calls = KeyedLock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.service!r})"

    async def load(self, account_id: str) -> Token | None:
        """The token of ``account_id``, or ``None`` if absent.

        Raises ``ValueError`` for an empty id, StorageError if the entry cannot be read.
        """
        validate_account_id(account_id)
        return await self._call(functools.partial(self._read_entry, account_id))

    async def save(self, account_id: str, token: Token) -> None:
        """Store ``token`` for ``account_id``, adding it to the index if needed.

        Raises StorageError, changing nothing, if the entry or the index cannot be read.
        """
        validate_account_id(account_id)
        async with self._locks.hold(_INDEX):
            await self._call(functools.partial(self._write_entry, account_id, token))

    async def delete(self, account_id: str) -> None:
        """Remove the account's entry, then its place in the index (absent: no error).

        Raises StorageError, changing nothing, if the entry or the index cannot be read.
        """
        validate_account_id(account_id)
        async with self._locks.hold(_INDEX):
            await self._call(functools.partial(self._remove_entry, account_id))

    async def accounts(self) -> list[str]:
        """The account ids in the index, sorted. Raises StorageError if it cannot be read."""
        return sorted(await self._call(self._read_index))

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id``, shared by every process using ``lock_dir``.

        Not re-entrant. Waiting does not block the event loop and can be cancelled; the
        lock is released when the block exits, or by the kernel if the process dies.
        """
        return self._locks.hold(lock_name(account_id))

    # ------------------------------------------------------------------ in worker threads

    async def _call(self, func: Callable[[], T]) -> T:
        async with self._calls.hold(""):
            return await run_sync(func)

    def _read_entry(self, account_id: str) -> Token | None:
        where = self._where(lock_name(account_id), account_id)
        data = self._get(lock_name(account_id), where)
        if data is None:
            return None
        stored_id, token = decode_account(data, where)
        if stored_id != account_id:
            raise corrupt(where, "holds another account than its name says")
        return token

    def _read_index(self) -> list[str]:
        data = self._get(_INDEX, self._where(_INDEX))
        return [] if data is None else decode_index(data, self._where(_INDEX))

    def _write_entry(self, account_id: str, token: Token) -> None:
        self._read_entry(account_id)  # raises rather than replace what it cannot read
        index = self._read_index()
        if account_id not in index:
            self._set(_INDEX, encode_index([*index, account_id]), self._where(_INDEX))
        self._set(
            lock_name(account_id),
            encode_account(account_id, token),
            self._where(lock_name(account_id), account_id),
        )

    def _remove_entry(self, account_id: str) -> None:
        present = self._read_entry(account_id) is not None
        index = self._read_index()
        if present:
            self._backend_call(
                "delete",
                self._where(lock_name(account_id), account_id),
                lambda backend: backend.delete_password(self.service, lock_name(account_id)),
            )
        if account_id in index:
            remaining = [a for a in index if a != account_id]
            self._set(_INDEX, encode_index(remaining), self._where(_INDEX))

    def _get(self, username: str, where: str) -> bytes | None:
        value = self._backend_call(
            "read", where, lambda backend: backend.get_password(self.service, username)
        )
        if value is None:
            return None
        if not isinstance(value, str):
            raise corrupt(where, "is not text")
        return value.encode("utf-8", "surrogatepass")  # a lone surrogate fails decoding

    def _set(self, username: str, data: bytes, where: str) -> None:
        text = data.decode("utf-8")  # the codec writes UTF-8 (or ASCII) only
        self._backend_call(
            "write", where, lambda backend: backend.set_password(self.service, username, text)
        )

    def _backend_call(self, action: str, where: str, call: Callable[[KeyringBackend], T]) -> T:
        # Every failure of a backend becomes a StorageError here, in one place.
        import keyring
        import keyring.errors

        backend = self._checked_backend()
        # Raised outside the except block, with a scrubbed cause: a backend's error may
        # hold what it was sent (a token).
        try:
            return call(backend)
        except Exception as exc:
            if isinstance(exc, keyring.errors.KeyringError) and str(exc):
                reason = f"{type(exc).__name__}: {redact(str(exc))[:200]}"
            else:  # other messages may quote what was sent: the type alone is safe
                reason = type(exc).__name__
            failure = StorageError(
                f"the keyring could not {action} {where}: {reason}", location=where
            )
            failure.__cause__ = scrubbed(exc, text=False)
        raise failure

    def _checked_backend(self) -> KeyringBackend:
        import keyring

        backend: KeyringBackend = (
            self._backend if self._backend is not None else keyring.get_keyring()
        )
        if not self.allow_insecure_backend:
            reason = _insecurity(backend)
            if reason is not None:
                raise StorageError(
                    f"the keyring backend {_backend_name(backend)} is refused: {reason}. Use a "
                    "keyring that encrypts (the Secret Service, macOS Keychain, Windows "
                    "Credential Locker), or opt in with KeyringTokenStore(..., "
                    "allow_insecure_backend=True) (keyring://SERVICE?allow_insecure_backend=1)",
                    location=f"keyring service {self.service!r}",
                )
        return backend

    def _where(self, username: str, account_id: str | None = None) -> str:
        where = f"keyring entry {username!r} of service {self.service!r}"
        return where if account_id is None else f"{where} (account {account_id!r})"


def _backend_name(backend: object) -> str:
    kind = type(backend)
    return f"{kind.__module__}.{kind.__qualname__}"


def _insecurity(backend: KeyringBackend) -> str | None:
    """Why ``backend`` must not hold tokens, or ``None`` if it may."""
    import keyring.backends.chainer
    import keyring.backends.fail

    if isinstance(backend, keyring.backends.fail.Keyring):
        return "it is keyring's fail backend (no usable keyring was found)"
    kind = type(backend)
    if any(  # a subclass elsewhere (with a higher priority, say) keeps the plain file
        c.__module__.startswith("keyrings.alt") and "plaintext" in c.__name__.lower()
        for c in kind.__mro__
    ):
        return "it keeps secrets in a plain file anyone who can read the file can read"
    if isinstance(backend, keyring.backends.chainer.ChainerBackend):
        for chained in backend.backends:
            reason = _insecurity(chained)
            if reason is not None:
                return f"it chains to {_backend_name(chained)}, which is refused: {reason}"
        return None
    try:
        priority = float(backend.priority)
    except Exception:  # keyring's way of saying a backend is not viable here
        return "keyring says it is not usable here (its priority cannot be computed)"
    if priority < 1:
        return f"its priority is {priority:g}, below 1: keyring does not recommend it"
    return None
