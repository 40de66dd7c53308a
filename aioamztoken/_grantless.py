"""Grantless tokens: ``client_credentials`` access tokens per scope, for SP-API operations.

Grantless SP-API operations (``/notifications/v1/destinations``,
``/authorization/v1/authorizationCode``, ``/applications/2023-11-30/clientSecret``) are
called without a selling partner's authorization: the Login with Amazon token comes
from ``grant_type=client_credentials`` with a ``scope`` such as
``sellingpartnerapi::notifications`` or ``sellingpartnerapi::client_credential:rotation``
("Grantless Operations", SP-API docs). No refresh token is issued.

Here each scope has its own cached token, fetched with single flight and refreshed in
the background at a jittered moment before it is due, the way account tokens are; no
store record is written, since nothing but the client secret is needed to get another.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from ._errors import AmzTokenError, ManagerClosedError
from ._logging import logger
from ._lwa import client_credentials_request
from ._models import Token
from ._sources import shared_guard

if TYPE_CHECKING:
    from ._manager import AsyncTokenManager
    from ._signing import RejectionGuard

__all__ = ["GrantlessTokenSource", "GrantlessTokens"]

_time = time.time
_NEVER = float("-inf")
#: What stands in for the refresh token a client_credentials answer never carries.
_NO_REFRESH_TOKEN = "-"


class _Scoped:
    __slots__ = ("fresh_until", "timer", "token", "usable_until")

    def __init__(self, token: Token, fresh_until: float, usable_until: float) -> None:
        self.token = token
        self.fresh_until = fresh_until
        self.usable_until = usable_until
        self.timer: asyncio.TimerHandle | None = None


def _check_scope(scope: str) -> str:
    if not isinstance(scope, str) or not scope.strip():
        raise ValueError(
            "scope must be a non-empty string, e.g. 'sellingpartnerapi::notifications'"
        )
    if any(ch in scope for ch in "\r\n\0"):
        raise ValueError("scope must be a single line")
    return scope.strip()


class GrantlessTokens:
    """The grantless tokens of one :class:`AsyncTokenManager`, one per scope.

    Concurrency: on the manager's event loop only, like the manager itself.
    """

    def __init__(self, manager: AsyncTokenManager) -> None:
        self._manager = manager
        self._scopes: dict[str, _Scoped] = {}
        self._inflight: dict[str, asyncio.Task[Token]] = {}

    def cached(self, scope: str) -> str | None:
        """The fresh cached token of ``scope``, else ``None``; never waits."""
        entry = self._scopes.get(scope)
        if entry is not None and _time() < entry.fresh_until:
            return entry.token.access_token
        return None

    async def get(self, scope: str) -> Token:
        """A valid token for ``scope``: cached, or fetched (one request for all callers)."""
        scope = _check_scope(scope)
        entry = self._scopes.get(scope)
        now = _time()
        if entry is not None and now < entry.usable_until:
            if now >= entry.fresh_until and scope not in self._inflight:
                self._start(scope)  # due but valid: served now, refreshed meanwhile
            return entry.token
        return await self._join(scope)

    async def refresh_if_current(self, scope: str, rejected: str) -> Token:
        """Compare-and-refresh: a new token unless ``rejected`` is no longer the current one."""
        scope = _check_scope(scope)
        entry = self._scopes.get(scope)
        if (
            entry is not None
            and entry.token.access_token != rejected
            and _time() < entry.usable_until
        ):
            return entry.token
        task = self._inflight.get(scope)
        if task is None:
            if entry is not None:
                entry.fresh_until = entry.usable_until = _NEVER
            task = self._start(scope)
        return await asyncio.shield(task)

    async def aclose(self) -> None:
        """Cancel timers and fetches in flight; forget every token."""
        for entry in self._scopes.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self._scopes.clear()
        tasks = [t for t in self._inflight.values() if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    async def _join(self, scope: str) -> Token:
        task = self._inflight.get(scope) or self._start(scope)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._manager.closed:
                raise ManagerClosedError(
                    "the manager was closed while this call waited for a grantless token"
                ) from None
            raise

    def _start(self, scope: str) -> asyncio.Task[Token]:
        loop = self._manager._bind()
        task = loop.create_task(self._fetch(scope), name=f"aioamztoken-grantless:{scope}")
        self._inflight[scope] = task

        def done(t: asyncio.Task[Token]) -> None:
            if self._inflight.get(scope) is t:
                del self._inflight[scope]
            if not t.cancelled():
                t.exception()  # retrieved: a background failure is logged, not reported twice

        task.add_done_callback(done)
        return task

    async def _fetch(self, scope: str) -> Token:
        manager = self._manager
        started = time.monotonic()
        try:
            token, _ = await manager._endpoint.request(
                client_credentials_request(
                    manager.token_url,
                    manager.client_id,
                    manager._client_secret,
                    scope,
                    client_auth=manager.client_auth,
                ),
                account_id=f"grantless {scope}",
                previous_refresh_token=_NO_REFRESH_TOKEN,
            )
        except AmzTokenError as exc:
            self._failed(scope, exc)
            raise
        self._install(scope, token)
        logger.debug(
            "grantless token for scope %r in %.0f ms", scope, (time.monotonic() - started) * 1000
        )
        return token

    def _install(self, scope: str, token: Token) -> None:
        manager = self._manager
        old = self._scopes.get(scope)
        if old is not None and old.timer is not None:
            old.timer.cancel()
        buffer, margin = manager._pacing(token)
        due_at = token.expires_at - buffer
        entry = _Scoped(token, due_at, token.expires_at - margin)
        self._scopes[scope] = entry
        if not manager.auto_refresh or manager.closed:
            return
        now = _time()
        if now < due_at:
            refresh_at = due_at + manager._rng.uniform(0.0, buffer / 2)
        else:
            refresh_at = now + manager._rng.uniform(
                0.0, min(1.0, max(0.0, entry.usable_until - now) / 2)
            )
        entry.fresh_until = refresh_at
        self._schedule(scope, entry, refresh_at - now)

    def _schedule(self, scope: str, entry: _Scoped, delay: float) -> None:
        loop = self._manager._loop
        if loop is None or self._manager.closed:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = loop.call_at(loop.time() + max(0.0, delay), self._on_timer, scope)

    def _on_timer(self, scope: str) -> None:
        entry = self._scopes.get(scope)
        if entry is None or self._manager.closed:
            return
        entry.timer = None
        if scope not in self._inflight:
            self._start(scope)

    def _failed(self, scope: str, exc: AmzTokenError) -> None:
        logger.warning("grantless token for scope %r failed: %s", scope, type(exc).__name__)
        entry = self._scopes.get(scope)
        now = _time()
        if entry is not None and now < entry.usable_until:
            # Still valid: keep serving it, and try again in a while (sooner as expiry nears).
            left = entry.usable_until - now
            delay = max(0.5, min(60.0, left / 3)) * self._manager._rng.uniform(0.5, 1.0)
            entry.fresh_until = now + delay
            self._schedule(scope, entry, delay)


class GrantlessTokenSource:
    """A scope's grantless token, as the adapters read it."""

    __slots__ = ("_tokens", "client_id", "guard", "scope")

    def __init__(self, manager: AsyncTokenManager, tokens: GrantlessTokens, scope: str) -> None:
        self.scope = _check_scope(scope)
        self._tokens = tokens
        self.client_id = manager.client_id
        self.guard: RejectionGuard = shared_guard(manager, "grantless " + self.scope)

    def cached(self) -> str | None:
        return self._tokens.cached(self.scope)

    async def fetch(self) -> str:
        return (await self._tokens.get(self.scope)).access_token

    async def refresh_if_current(self, rejected: str) -> str:
        return (await self._tokens.refresh_if_current(self.scope, rejected)).access_token
