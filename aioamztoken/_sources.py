"""Token sources: what the adapters read tokens from, one per account (or scope).

The adapters (aiohttp, httpx, requests) know no manager: they take a source with a
cached read, a fetch and compare-and-refresh (:class:`~aioamztoken._signing.AsyncTokenSource`,
:class:`~aioamztoken._signing.SyncTokenSource`). Every source of one account shares one
:class:`~aioamztoken._signing.RejectionGuard`, whichever client or thread uses it, so a
token that a refresh did not cure is known to all of them.
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from ._signing import RejectionGuard

if TYPE_CHECKING:
    from ._blocking import BlockingTokenManager
    from ._manager import AsyncTokenManager

__all__ = ["AccountTokenSource", "BlockingAccountTokenSource", "shared_guard"]

_guards_lock = threading.Lock()
#: Guards kept per manager, the least recently used dropped beyond this: forgetting one
#: costs at most one more refresh for an uncured rejection, never a wrong answer.
MAX_GUARDS = 4096
# owner (a manager, weakly: a closed one keeps nothing here) -> key (an account id, or
# "grantless <scope>") -> guard, most recently used last.
_guards: weakref.WeakKeyDictionary[object, collections.OrderedDict[str, RejectionGuard]] = (
    weakref.WeakKeyDictionary()
)


def shared_guard(owner: object, key: str) -> RejectionGuard:
    """The guard of ``key`` under ``owner``, created on first use (bounded LRU)."""
    with _guards_lock:
        by_key = _guards.get(owner)
        if by_key is None:
            by_key = _guards[owner] = collections.OrderedDict()
        guard = by_key.get(key)
        if guard is None:
            # The owner's telemetry (a manager's) counts the retries the guard allows.
            telemetry = getattr(owner, "_telemetry", None)
            on_retry = None if telemetry is None else telemetry.http_retry
            guard = by_key[key] = RejectionGuard(on_retry=on_retry)
            if len(by_key) > MAX_GUARDS:
                by_key.popitem(last=False)
        else:
            by_key.move_to_end(key)
        return guard


def drop_guard(owner: object, key: str) -> None:
    """Forget the guard of ``key`` under ``owner`` (the account was removed)."""
    with _guards_lock:
        by_key = _guards.get(owner)
        if by_key is not None:
            by_key.pop(key, None)
            if not by_key:
                del _guards[owner]


class AccountTokenSource:
    """An account's tokens from an :class:`AsyncTokenManager`, for async adapters."""

    __slots__ = ("_account_id", "_manager", "cached", "client_id", "guard")

    def __init__(self, manager: AsyncTokenManager, account_id: str) -> None:
        if not account_id:
            raise ValueError("account_id must be a non-empty string")
        self._manager = manager
        self._account_id = account_id
        self.client_id = manager.client_id
        self.guard = shared_guard(manager, account_id)
        #: The fresh cached token or ``None``: one C-level partial over the manager's read,
        #: since every signed request makes this call.
        self.cached: Callable[[], str | None] = functools.partial(
            manager.cached_access_token, account_id
        )

    @property
    def account_id(self) -> str:
        return self._account_id

    async def fetch(self) -> str:
        return await self._manager.get_access_token(self._account_id)

    async def refresh_if_current(self, rejected: str) -> str:
        token = await self._manager.refresh_if_current(self._account_id, rejected)
        return token.access_token


class BlockingAccountTokenSource:
    """An account's tokens from a :class:`BlockingTokenManager`, for sync adapters.

    A fresh cached token costs no thread hop; the rest waits for the manager's loop.
    Shares its guard with the async sources of the same account.
    """

    __slots__ = ("_account_id", "_manager", "client_id", "guard")

    def __init__(self, manager: BlockingTokenManager, account_id: str) -> None:
        if not account_id:
            raise ValueError("account_id must be a non-empty string")
        self._manager = manager
        self._account_id = account_id
        self.client_id = manager.manager.client_id
        self.guard = shared_guard(manager.manager, account_id)

    @property
    def account_id(self) -> str:
        return self._account_id

    def cached(self) -> str | None:
        return self._manager.manager.cached_access_token(self._account_id)

    def fetch(self) -> str:
        return self._manager.get_access_token(self._account_id)

    def refresh_if_current(self, rejected: str) -> str:
        return self._manager.refresh_if_current(self._account_id, rejected).access_token
