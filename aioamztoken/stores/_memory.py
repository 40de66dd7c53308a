"""A store that lives and dies with the process."""

from __future__ import annotations

import contextlib
from dataclasses import replace

from .._models import Token
from ._base import validate_account_id
from ._locks import KeyedLock

__all__ = ["MemoryTokenStore"]


class MemoryTokenStore:
    """Tokens in a dict: nothing survives the process. For tests and short-lived scripts.

    ``lock()`` excludes other tasks of this process only, which is all a store private
    to one process needs. Safe to share between tasks on one event loop; not thread-safe.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}
        self._locks = KeyedLock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    async def load(self, account_id: str) -> Token | None:
        """The token of ``account_id``, or ``None``. Raises ``ValueError`` for an empty id."""
        return self._tokens.get(validate_account_id(account_id))

    async def save(self, account_id: str, token: Token) -> None:
        """Keep ``token`` for ``account_id``, replacing any previous one."""
        self._tokens[validate_account_id(account_id)] = token

    async def delete(self, account_id: str) -> None:
        """Forget ``account_id``; an absent account is not an error."""
        self._tokens.pop(validate_account_id(account_id), None)

    async def accounts(self) -> list[str]:
        """The stored account ids, sorted."""
        return sorted(self._tokens)

    async def mark_needs_reauth(self, account_id: str, refresh_token: str) -> bool:
        """Flag the account as needing re-authorization if it still holds ``refresh_token``."""
        current = self._tokens.get(validate_account_id(account_id))
        if current is None or current.refresh_token != refresh_token:
            return False
        self._tokens[account_id] = replace(current, needs_reauth=True)
        return True

    def lock(self, account_id: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The lock of ``account_id`` among the tasks of this process (not re-entrant)."""
        return self._locks.hold(validate_account_id(account_id))
