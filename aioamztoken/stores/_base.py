"""The store protocols, and the account-id rule every store applies."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Protocol, runtime_checkable

from .._models import Token

__all__ = [
    "LockingTokenStore",
    "TokenStore",
    "check_store",
    "mark_refused",
    "validate_account_id",
]


@runtime_checkable
class TokenStore(Protocol):
    """Where tokens live between runs. Write your own by implementing these four coroutines.

    Account ids are non-empty strings. ``save`` must be atomic: a reader sees the old
    record or the new one, never a torn one. Data the store cannot read must raise
    :class:`~aioamztoken.StorageError` and must never be overwritten or deleted.

    Optional: ``async def mark_needs_reauth(account_id, refresh_token) -> bool``, which
    flags the stored record as needing re-authorization only if it still holds
    ``refresh_token``, atomically (every store of this package but the keyring store has
    one; the manager marks that one under its cross-process lock). Without it the
    manager reads, compares and saves, which is safe only under the store's lock.

    Concurrency: the manager calls a store from its event loop, concurrently for
    different accounts, so a store must be safe to share between tasks on one event loop
    and must not block it (run blocking I/O in a worker thread).
    """

    async def load(self, account_id: str) -> Token | None:
        """The stored token of ``account_id``, or ``None`` if the account is absent."""
        ...

    async def save(self, account_id: str, token: Token) -> None:
        """Store ``token`` for ``account_id``, replacing any previous one, atomically."""
        ...

    async def delete(self, account_id: str) -> None:
        """Forget ``account_id``. Deleting an absent account is not an error."""
        ...

    async def accounts(self) -> list[str]:
        """Every stored account id, sorted."""
        ...


@runtime_checkable
class LockingTokenStore(TokenStore, Protocol):
    """A store that also offers a per-account lock shared by every process using it.

    The token manager holds ``lock(account_id)`` around a refresh and re-reads the store
    inside it, so that processes sharing the store refresh an account once. The lock must
    exclude every other holder of the same account's lock: other tasks on the event loop,
    and other processes sharing the store.
    """

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """An async context manager holding the lock of ``account_id`` (not re-entrant).

        ``save``/``load``/``delete`` never take it, so they may be called inside it.
        """
        ...


def validate_account_id(account_id: str) -> str:
    """Return ``account_id`` if every store can keep it.

    Raises ``TypeError`` for a non-string and ``ValueError`` for the empty string or a
    string that cannot be encoded as UTF-8 (lone surrogates).
    """
    if not isinstance(account_id, str):
        raise TypeError(f"an account id must be a str, not {type(account_id).__name__}")
    if not account_id:
        raise ValueError("an account id must not be empty")
    try:
        account_id.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("an account id must be valid Unicode (no lone surrogates)") from None
    return account_id


def check_store(store: object) -> TokenStore:
    """Return ``store`` if it has the :class:`TokenStore` methods; raise ``TypeError`` if not.

    A URL given where a store is expected (``store="memory://"``) is the usual slip: the
    message points to ``open_store(url)``.
    """
    if isinstance(store, TokenStore) and not isinstance(store, type):
        return store
    if isinstance(store, str):
        hint = f"for a store URL write store=open_store({store!r}) (aioamztoken.open_store)"
    else:
        hint = (
            "give a store object (MemoryTokenStore(), FileTokenStore(path)..., or "
            "open_store(url) for a URL)"
        )
    missing = [m for m in ("load", "save", "delete", "accounts") if not hasattr(store, m)]
    what = f" (it has no {', '.join(missing)})" if missing and not isinstance(store, str) else ""
    raise TypeError(f"store must be a token store, not {type(store).__name__}{what}: {hint}")
async def mark_refused(store: TokenStore, account_id: str, refresh_token: str) -> bool:
    """Record in ``store`` that ``refresh_token`` of ``account_id`` was refused
    (``invalid_grant``), unless the store holds another refresh token by now.

    A store's own ``mark_needs_reauth(account_id, refresh_token) -> bool`` does it
    atomically (every store of this package but the keyring store has one). For a store
    without it (the keyring store, a user-written one), the record
    is read, compared and saved, which is safe under the store's lock but not atomic.
    Returns whether the stored record holds ``refresh_token``, flagged; ``False`` when it
    holds another refresh token (a newer one: nothing was written) or is absent.
    """
    mark = getattr(store, "mark_needs_reauth", None)
    if mark is not None:
        return bool(await mark(account_id, refresh_token))
    current = await store.load(account_id)
    if current is None or current.refresh_token != refresh_token:
        return False
    if not current.needs_reauth:
        await store.save(account_id, replace(current, needs_reauth=True))
    return True
