"""``AsyncTokenManager``: the cache, single flight, background refresh and hooks."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import inspect
import itertools
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import replace
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp

from ._errors import (
    AccountNotFoundError,
    AmzTokenError,
    EventLoopError,
    InvalidClientError,
    InvalidGrantError,
    ManagerClosedError,
    StorageError,
    TokenEndpointError,
    TokenRefreshError,
)
from ._http import ClientSecrets, RetryPolicy, TokenEndpoint
from ._logging import audit_logger, logger
from ._lwa import (
    DEFAULT_SCOPE,
    ClientAuth,
    authorization_url,
    check_client_auth,
    code_request,
    refresh_request,
)
from ._models import AccountState, AccountStatus, Region, Token
from ._reauth import DEFAULT_REAUTH_WARNING, ReauthWatch, check_authorized_at
from ._scrub import raise_without_context, scrubbed
from ._telemetry import telemetry_for
from .stores._base import check_store, mark_refused, validate_account_id
from .stores._locks import KeyedLock
from .stores._memory import MemoryTokenStore

if TYPE_CHECKING:
    from ._grantless import GrantlessTokens, GrantlessTokenSource
    from ._httpx import AsyncHttpxAuth
    from ._middleware import AdsApiMiddleware
    from ._sources import AccountTokenSource
    from .stores import TokenStore

__all__ = ["AsyncTokenManager"]

OnRefresh = Callable[[str, Token], "Awaitable[None] | None"]
OnRefreshError = Callable[[str, BaseException], "Awaitable[None] | None"]
OnReauthRequired = Callable[[str], "Awaitable[None] | None"]
OnReauthDue = Callable[[str, float], "Awaitable[None] | None"]

_R = TypeVar("_R")
_time = time.time
_NEVER = float("-inf")

# The refresh or code exchange whose hooks are running in this context (tasks a hook
# starts, asyncio.wait_for's among them, inherit it): aclose() must not wait for it.
_current_work: contextvars.ContextVar[asyncio.Task[Any] | None] = contextvars.ContextVar(
    "aioamztoken_current_work", default=None
)

#: While an account needs re-authorization, how often (seconds) the store is read again
#: in case another process supplied a new refresh token.
REAUTH_RECHECK_INTERVAL = 30.0

#: The longest pause (seconds) between retries of an account whose refreshes keep failing.
MAX_FAILURE_BACKOFF = 60.0

#: Seconds beyond ``request_timeout`` that :meth:`AsyncTokenManager.aclose` waits for work
#: it lets finish (token requests already sent, and their saves) before abandoning it.
CLOSE_GRACE = 0.5

#: The least time (seconds) a store call gets to save a token the endpoint has issued,
#: even when the refresh's deadline is closer.
SAVE_GRACE = 1.0
#: Seconds after a store stopped answering during which the refreshes that had queued
#: behind the failed one get its error at once (see ``StorageError.unavailable``).
STORE_OUTAGE_WINDOW = 1.0

#: How often (seconds) store calls still running are checked against their deadline: a
#: call that does not answer is given up on at most this long after its deadline.
STORE_WATCH_INTERVAL = 0.1


def _fingerprint(secret: str) -> int:
    return hash(("aioamztoken", secret))


@contextlib.asynccontextmanager
async def _deadline(deadline: float | None) -> AsyncIterator[None]:
    """Raise ``asyncio.TimeoutError`` in the current task at ``deadline`` (monotonic)."""
    if deadline is None:
        yield
        return
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            yield
        return
    # Python 3.10 has no asyncio.timeout: a timer cancels this task. (A cancellation
    # from elsewhere landing in the very loop iteration the timer fires is taken for the
    # timeout there; asyncio.timeout tells them apart on 3.11+.)
    task = asyncio.current_task()
    assert task is not None
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()), fire)
    try:
        yield
    except asyncio.CancelledError:
        if fired:
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            raise asyncio.TimeoutError from None
        raise
    finally:
        handle.cancel()


def _check_token_url(url: str) -> None:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise ValueError("token_url must be an http:// or https:// URL")
    if scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        logger.warning(
            "token_url %s://%s uses plain http: the client secret and refresh tokens "
            "cross the network unencrypted",
            scheme,
            parts.hostname,
        )


# Store calls given up on that have not ended yet (they ignored their cancellation): held
# here so that none is garbage-collected while pending ("Task was destroyed").
_abandoned: set[asyncio.Future[Any]] = set()


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Read a finished task's outcome, so that asyncio never reports it as unretrieved."""
    if not task.cancelled():
        task.exception()


def _being_cancelled() -> bool:
    """True when the current task has been asked to stop (Python 3.11+; else False)."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return bool(cancelling is not None and cancelling())


Reason = Literal["expired", "due", "background", "forced", "rejected", "loaded"]


class _Entry:
    """What the manager knows of one account. ``fresh_until`` is the hot path's test."""

    __slots__ = (
        "access_token",
        "due_at",
        "failures",
        "fresh_until",
        "last_error",
        "needs_reauth",
        "recheck_at",
        "refusal",
        "refused_until",
        "rejected",
        "timer",
        "token",
        "usable_until",
    )

    def __init__(self, token: Token) -> None:
        self.token = token
        self.access_token = token.access_token  # copied: one attribute load on the hot path
        self.fresh_until = _NEVER
        self.due_at = _NEVER
        self.usable_until = _NEVER
        self.timer: asyncio.TimerHandle | None = None
        self.needs_reauth = False
        self.last_error: str | None = None
        # While re-authorization is needed: a fingerprint of the rejected refresh token, and
        # when to look in the store again for a new one (another process may have added it).
        self.rejected = 0
        self.recheck_at = _NEVER
        # Refreshes failed in a row (the backoff grows with it), and the last refusal of
        # the endpoint, raised at once to callers until ``refused_until``.
        self.failures = 0
        self.refusal: TokenRefreshError | None = None
        self.refused_until = _NEVER


class AsyncTokenManager:
    """Keeps Login with Amazon access tokens valid for many accounts of one application.

    Use it as ``async with AsyncTokenManager(...) as mgr:``, then ``await
    mgr.get_access_token(account_id)`` wherever a bearer token is needed.

    - A cached, fresh token costs one dict lookup and one clock read: no lock, no task.
    - Concurrent callers for one account share one refresh (single flight); accounts
      refresh in parallel, at most ``max_concurrent_refreshes`` token requests at once.
    - With ``auto_refresh`` (the default) each token is refreshed in the background at
      a jittered moment in ``[expires_at - refresh_buffer, expires_at - refresh_buffer/2]``.
      A token inside the buffer but not about to expire is served at once while its
      refresh runs; only callers holding an expired token wait.
    - Transient endpoint failures retry with exponential backoff and full jitter,
      honouring ``Retry-After``; ``invalid_grant`` marks the account as needing
      re-authorization and later calls fail at once with :class:`InvalidGrantError`.
    - Every new token is saved to ``store`` before any caller receives it. Where the
      store offers a cross-process ``lock(account_id)``, refreshes take it and re-read
      the store, so that processes sharing the store refresh once.

    Concurrency: safe to share between any number of tasks on one event loop; bound to
    the first loop that uses it (another loop gets :class:`EventLoopError`); not
    thread-safe (use :class:`BlockingTokenManager` from threads).

    ``session`` is the caller's own ``aiohttp.ClientSession``: used, never closed, and
    its middlewares are bypassed for token requests. Without one, the manager owns a
    session and closes it in :meth:`aclose`. Hooks may be plain functions or coroutine
    functions; they run after the token is saved and cached, before waiting callers
    resume, so keep them quick; one that raises is logged and ignored.

    ``client_secret`` is one secret or a sequence of them, newest first (a rotation): on
    ``invalid_client`` the next is tried at once, and the first one accepted is used
    from then on for every account; :meth:`set_client_secrets` swaps them at run time.
    ``client_auth`` is ``"post"`` (the default, as Amazon documents: the client id and
    secret in the form) or ``"basic"`` (an ``Authorization: Basic`` header, RFC 6749
    section 2.3.1).

    ``authorization_max_age`` (seconds, default ``None``: unknown) is how long a grant
    lasts before the account must be authorized again (365 days for public SP-API
    apps). Once an account is within ``reauth_warning`` (default 30 days) of that date,
    ``on_reauth_due(account_id, reauth_due_at)`` runs once (a coroutine function in a task
    of its own) and an audit line is logged; :meth:`status` reports ``authorized_at`` and
    ``reauth_due_at``.

    ``meter_provider`` and ``tracer_provider`` receive OpenTelemetry metrics and spans
    (the ``[otel]`` extra; :doc:`/observability`). ``None`` means the global providers
    when ``opentelemetry-api`` is installed, and nothing at all when it is not. The hot
    path never records anything.

    Every wait is bounded. Store calls (``load``, ``save``, ``lock``) made for a refresh
    end with :class:`StorageError` at the refresh's deadline (``retry_budget``); at most
    ``2 * max_concurrent_refreshes`` refreshes are at work at once (store reads, store
    lock, token request), the others queue before touching the store, so a cold fleet of
    any size holds a bounded number of lock files open. A failing account backs off
    exponentially (from ``min_refresh_interval`` up to a minute); after a refusal
    (``invalid_client``, ``invalid_request``...) callers get the same error at once
    until its backoff ends.
    ``min_refresh_interval`` (seconds, default 1.0) is also the least time between a
    token's issue and its background refresh, whatever its ``expires_in``.
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str | Sequence[str],
        *,
        store: TokenStore,
        region: Region | str = "na",
        token_url: str | None = None,
        refresh_buffer: float = 300.0,
        auto_refresh: bool = True,
        session: aiohttp.ClientSession | None = None,
        on_refresh: OnRefresh | None = None,
        on_refresh_error: OnRefreshError | None = None,
        on_reauth_required: OnReauthRequired | None = None,
        max_concurrent_refreshes: int = 10,
        max_retries: int = 8,
        retry_budget: float = 30.0,
        request_timeout: float = 10.0,
        expiry_margin: float | None = None,
        authorization_base_url: str | None = None,
        client_auth: ClientAuth = "post",
        authorization_max_age: float | None = None,
        reauth_warning: float = DEFAULT_REAUTH_WARNING,
        on_reauth_due: OnReauthDue | None = None,
        meter_provider: Any = None,
        tracer_provider: Any = None,
        min_refresh_interval: float = 1.0,
    ) -> None:
        if not client_id or not client_secret:
            raise ValueError("client_id and client_secret must be non-empty strings")
        self._secrets = ClientSecrets(client_secret)
        self.client_auth: ClientAuth = check_client_auth(client_auth)
        self._reauth = ReauthWatch(authorization_max_age, reauth_warning)
        self.on_reauth_due = on_reauth_due
        if refresh_buffer < 0:
            raise ValueError("refresh_buffer must not be negative")
        if not min_refresh_interval >= 0:
            raise ValueError("min_refresh_interval must not be negative")
        self.min_refresh_interval = float(min_refresh_interval)
        self.client_id = client_id
        self.store = check_store(store)
        self.region = Region.parse(region)
        self.token_url = token_url or self.region.token_url
        _check_token_url(self.token_url)
        self.authorization_base_url = authorization_base_url
        self.refresh_buffer = float(refresh_buffer)
        self.expiry_margin = (
            min(30.0, self.refresh_buffer / 10) if expiry_margin is None else float(expiry_margin)
        )
        if self.expiry_margin < 0 or (
            refresh_buffer and self.expiry_margin >= self.refresh_buffer / 2
        ):
            raise ValueError("expiry_margin must be between 0 and refresh_buffer / 2")
        self.auto_refresh = auto_refresh
        self.on_refresh = on_refresh
        self.on_refresh_error = on_refresh_error
        self.on_reauth_required = on_reauth_required
        self._endpoint = TokenEndpoint(
            session=session,
            max_concurrent=max_concurrent_refreshes,
            policy=RetryPolicy(
                max_tries=max_retries, max_time=retry_budget, request_timeout=request_timeout
            ),
            secrets=self._secrets,
        )
        self._entries: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[Token]] = {}
        self._forced: set[str] = set()  # accounts whose in-flight refresh is a forced one
        # Work aclose() cancels (refreshes, code exchanges) and work it waits for (saves of
        # tokens the endpoint already issued: losing one could lose a rotated refresh token).
        self._cancellable: set[asyncio.Task[Any]] = set()
        self._must_finish: set[asyncio.Task[Any]] = set()
        # Changed by add/exchange/remove: a refresh that started before does not install.
        # Only accounts with a refresh in flight have an entry (a unique, non-zero value).
        self._generation: dict[str, int] = {}
        self._generations = itertools.count(1)
        # Refreshes at work at once: the rest queue before touching the store, so that a
        # cold fleet holds neither one lock file per account nor every store thread.
        self._refresh_slots = asyncio.Semaphore(2 * max_concurrent_refreshes)
        self._task_accounts: dict[asyncio.Task[Any], str] = {}
        self._close_task: asyncio.Task[None] | None = None
        # Store calls under way and their deadlines, checked by one watchdog timer.
        self._store_waits: dict[asyncio.Future[None], float] = {}
        self._watchdog: asyncio.TimerHandle | None = None
        # The in-memory store's calls are dict operations that cannot hang: they run in
        # the caller's task, sparing a task per call (subclasses may do anything: not them).
        self._inline_store = type(store) is MemoryTokenStore
        self._close_waits_for: set[asyncio.Task[Any]] = set()
        # The last time the store itself stopped answering, and how (see StorageError).
        self._store_outage: tuple[float, StorageError] | None = None
        # Tokens the endpoint issued but the store failed to save: kept, and saved first.
        self._unsaved: dict[str, Token] = {}
        self._local_locks = KeyedLock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._rng = random.Random()
        # OpenTelemetry (docs/observability.rst): a no-op without the API, never on the hot path.
        self._telemetry = telemetry_for(self._entries.values, meter_provider, tracer_provider)
        self._endpoint.telemetry = self._telemetry

    def __repr__(self) -> str:
        return (
            f"<AsyncTokenManager client_id={self.client_id!r} region={self.region.value!r} "
            f"store={self.store!r} accounts_cached={len(self._entries)}"
            f"{' closed' if self._closed else ''}>"
        )

    @property
    def _client_secret(self) -> str:
        return self._secrets.preferred

    @property
    def authorization_max_age(self) -> float | None:
        """Seconds a grant lasts before re-authorization, or ``None`` when unknown."""
        return self._reauth.max_age

    def set_client_secrets(self, client_secrets: str | Sequence[str]) -> None:
        """Use ``client_secrets`` (newest first) from now on, without a restart.

        Tokens, timers and refreshes in flight are left alone: a request in flight that
        is refused tries the new secrets, and accounts refused with ``invalid_client``
        try again at once instead of waiting out their backoff. Raises ``ValueError`` for
        an empty list.
        Safe to call from the manager's loop (from :class:`BlockingTokenManager`, any
        thread).
        """
        before = len(self._secrets)
        self._secrets.replace(client_secrets)
        # New secrets may cure an invalid_client: accounts it refused try again at once
        # rather than wait out their backoff.
        for entry in self._entries.values():
            if isinstance(entry.refusal, InvalidClientError):
                entry.refusal = None
                entry.refused_until = _NEVER
        audit_logger.info(
            "set-client-secrets outcome=ok secrets=%d (was %d)", len(self._secrets), before
        )

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> AsyncTokenManager:
        self._bind()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._closed

    async def aclose(self) -> None:
        """Stop every timer and background refresh, and close the session the manager owns.

        Token requests already sent are let finish (each within ``request_timeout``) and
        their tokens saved, so that nothing the endpoint issued is lost; work that has not
        reached the endpoint is cancelled. Work still unfinished ``request_timeout`` plus
        about a second later (a store that does not answer) is abandoned, and the accounts
        concerned are logged by id. The owned session is closed in every case.

        Idempotent: concurrent calls all wait for the one close. Called from a hook of
        work that the close is waiting for, it returns at once (it cannot wait for
        itself); the close then completes. Tokens already saved stay in the store; the
        in-memory cache is dropped.
        """
        current = _current_work.get() or asyncio.current_task()
        if self._close_task is None:
            self._closed = True
            # Stopped here, before any await: a refresh task that has not run yet must not
            # get the chance to send its request while the close task is being started.
            work, accounts = self._stop_work(current)
            self._close_task = asyncio.get_running_loop().create_task(
                self._close(work, accounts), name="aioamztoken-close"
            )
            self._close_task.add_done_callback(_retrieve)
        elif current is not None and current in self._close_waits_for:
            return
        await asyncio.shield(self._close_task)

    def _stop_work(
        self, caller: asyncio.Task[Any] | None
    ) -> tuple[set[asyncio.Task[Any]], dict[asyncio.Task[Any], str]]:
        """The synchronous first step of closing: timers stopped, work that has not reached
        the endpoint cancelled. Returns the work to wait for, and its accounts."""
        endpoint = self._endpoint
        endpoint.closing = True
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
                entry.timer = None
        accounts = {task: account for account, task in self._inflight.items()}
        accounts.update(self._task_accounts)
        work = {
            task
            for task in (*self._inflight.values(), *self._cancellable, *self._must_finish)
            if not task.done() and task is not caller
        }
        for task in work:
            # A request already sent may have been acted on (a rotated refresh token, a
            # spent code): let it finish and its token be saved. The rest stops now.
            if task not in self._must_finish and task not in endpoint.sending:
                task.cancel()
        self._close_waits_for = work
        return work, accounts

    async def _close(
        self, work: set[asyncio.Task[Any]], accounts: dict[asyncio.Task[Any], str]
    ) -> None:
        endpoint = self._endpoint
        grantless = getattr(self, "_grantless", None)
        if grantless is not None:
            await grantless.aclose()
        try:
            if work:
                _, pending = await asyncio.wait(
                    work, timeout=endpoint.policy.request_timeout + CLOSE_GRACE
                )
                if pending:
                    for task in pending:
                        task.cancel()
                    await asyncio.wait(pending, timeout=CLOSE_GRACE / 2)
                    abandoned = sorted({accounts.get(task, "?") for task in pending})
                    logger.error(
                        "closed without waiting any longer for the store or hooks of "
                        "account(s) %s",
                        ", ".join(repr(a) for a in abandoned),
                    )
            for entry in self._entries.values():
                if entry.timer is not None:
                    entry.timer.cancel()
            self._entries.clear()
            self._inflight.clear()
            self._forced.clear()
            self._cancellable.clear()
            self._must_finish.clear()
            self._generation.clear()
        finally:
            self._close_waits_for = set()
            await endpoint.aclose()
        if self._unsaved:
            # A last chance for tokens the endpoint issued that the store refused earlier.
            deadline = time.monotonic() + CLOSE_GRACE / 2
            saved = await asyncio.gather(
                *(self._save(a, t, deadline) for a, t in self._unsaved.items()),
                return_exceptions=True,
            )
            for account_id, outcome in zip(list(self._unsaved), saved, strict=True):
                if outcome is None:
                    del self._unsaved[account_id]
        if self._unsaved:
            logger.error(
                "closed with %d refreshed token(s) the store could not save: %s",
                len(self._unsaved),
                ", ".join(repr(a) for a in sorted(self._unsaved)),
            )

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ManagerClosedError("this AsyncTokenManager is closed; create a new one")
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise EventLoopError(
                "this AsyncTokenManager belongs to another event loop; create one per loop, "
                "or use BlockingTokenManager to share one between threads"
            )
        return loop

    # ------------------------------------------------------------------ getting tokens

    async def get_access_token(self, account_id: str) -> str:
        """A valid access token for ``account_id``, refreshing it first if it has expired.

        Raises :class:`AccountNotFoundError`, :class:`InvalidGrantError` (the account
        needs re-authorization), :class:`InvalidClientError`, :class:`TokenEndpointError`
        or :class:`StorageError`.
        """
        entry = self._entries.get(account_id)
        if entry is not None and _time() < entry.fresh_until:
            return entry.access_token
        return (await self._get_slow(account_id)).access_token

    def cached_access_token(self, account_id: str) -> str | None:
        """The cached access token if it is fresh, else ``None``; never waits, never does I/O.

        Safe to call from any thread (a dict read and a clock read): the blocking facade
        uses it so that a fresh token costs no thread hop.
        """
        entry = self._entries.get(account_id)
        if entry is not None and _time() < entry.fresh_until:
            return entry.access_token
        return None

    async def get_token(self, account_id: str) -> Token:
        """Like :meth:`get_access_token`, returning the whole :class:`Token`."""
        entry = self._entries.get(account_id)
        if entry is not None and _time() < entry.fresh_until:
            return entry.token
        return await self._get_slow(account_id)

    async def _get_slow(self, account_id: str) -> Token:
        self._bind()
        validate_account_id(account_id)
        entry = self._entries.get(account_id)
        if entry is not None and entry.needs_reauth:
            entry = await self._recheck_reauth(account_id, entry)
        if entry is None:
            return await self._join(account_id, stale=None, force=False, reason="loaded")
        now = _time()
        if now < entry.usable_until:
            # Due but valid: serve it now; the refresh runs without anyone waiting for it.
            if now >= entry.fresh_until and account_id not in self._inflight:
                self._start(account_id, entry.token.access_token, force=False, reason="due")
            return entry.token
        return await self._join(
            account_id, stale=entry.token.access_token, force=False, reason="expired"
        )

    async def refresh(self, account_id: str) -> Token:
        """Refresh now, whatever the token's expiry. Concurrent calls share one request."""
        self._bind()
        validate_account_id(account_id)
        entry = self._entries.get(account_id)
        if entry is not None and entry.needs_reauth:
            entry = await self._recheck_reauth(account_id, entry)
        # A refresh in flight that is not forced may end by adopting the stored token: let
        # it end, then make (or join) a forced one.
        while (
            task := self._inflight.get(account_id)
        ) is not None and account_id not in self._forced:
            self._not_this_task(account_id, task)
            await asyncio.wait([task])
        entry = self._entries.get(account_id)
        stale = entry.token.access_token if entry is not None else None
        return await self._join(account_id, stale=stale, force=True, reason="forced")

    async def refresh_if_current(self, account_id: str, rejected_access_token: str) -> Token:
        """Compare-and-refresh after the Ads API rejected ``rejected_access_token`` (a 401).

        Refreshes only if the rejected token is still the current one; otherwise the
        newer token is returned at once. Any number of concurrent calls for one rejected
        token cause at most one refresh.
        """
        self._bind()
        entry = self._entries.get(account_id)
        if entry is not None and entry.needs_reauth:
            entry = await self._recheck_reauth(account_id, entry)
        if (
            entry is not None
            and entry.token.access_token != rejected_access_token
            and _time() < entry.usable_until
        ):
            return entry.token
        return await self._join(
            account_id, stale=rejected_access_token, force=False, reason="rejected"
        )

    async def _join(
        self, account_id: str, *, stale: str | None, force: bool, reason: Reason
    ) -> Token:
        task = self._inflight.get(account_id)
        if task is None:
            self._raise_if_refused(account_id)
            task = self._start(account_id, stale, force=force, reason=reason)
        else:
            self._not_this_task(account_id, task)
        try:
            # shield: a cancelled caller must not cancel the refresh others share.
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._closed and not _being_cancelled():
                raise ManagerClosedError(
                    "the manager was closed while this call waited for a refresh"
                ) from None
            raise

    def _raise_if_closing(self, exc: AmzTokenError) -> None:
        """A request that ``aclose()`` let finish failed transiently: what the caller
        needs to know is that the manager closed (the cause is chained)."""
        if self._closed and isinstance(exc, TokenEndpointError):
            raise ManagerClosedError(
                "the manager was closed while this call waited for the token endpoint"
            ) from exc

    def _raise_if_store_down(self, queued_at: float) -> None:
        """A refresh that queued for its turn while the store stopped answering (another
        refresh's store call failed or timed out since) fails at once with that error."""
        outage = self._store_outage
        if outage is None:
            return
        failed_at, error = outage
        if failed_at < queued_at or time.monotonic() - failed_at > STORE_OUTAGE_WINDOW:
            return
        raise_without_context(copy.copy(error))

    def _raise_if_refused(self, account_id: str) -> None:
        """While a refusal's backoff lasts, callers get it again without a new request."""
        entry = self._entries.get(account_id)
        if entry is None or entry.refusal is None or _time() >= entry.refused_until:
            return
        error = copy.copy(entry.refusal)
        error.__traceback__ = None
        raise error

    @staticmethod
    def _not_this_task(account_id: str, task: asyncio.Task[Token]) -> None:
        if task is asyncio.current_task():
            raise RuntimeError(
                f"a hook of the refresh of {account_id!r} waited for that same refresh; "
                "hooks may read tokens but must not refresh, add, exchange or remove the "
                "account being refreshed (schedule that in a task of its own)"
            )

    def _start(
        self, account_id: str, stale: str | None, *, force: bool, reason: Reason
    ) -> asyncio.Task[Token]:
        loop = self._loop
        assert loop is not None
        if self._closed:
            raise ManagerClosedError("this AsyncTokenManager is closed; create a new one")
        task = loop.create_task(
            self._traced_refresh(account_id, stale, force, reason),
            name=f"aioamztoken-refresh:{account_id}",
        )
        self._inflight[account_id] = task
        if force:
            self._forced.add(account_id)
        task.add_done_callback(lambda t: self._refresh_done(account_id, t))
        return task

    async def _traced_refresh(
        self, account_id: str, stale: str | None, force: bool, reason: Reason
    ) -> Token:
        # The refresh coroutine is made here, in its task: a task cancelled before it ran
        # (aclose just after a timer fired) then leaves none behind that was never awaited.
        return await self._telemetry.refresh(
            self._run_refresh(account_id, stale, force, reason), account_id, reason
        )

    def _refresh_done(self, account_id: str, task: asyncio.Task[Token]) -> None:
        if self._inflight.get(account_id) is task:
            del self._inflight[account_id]
            self._forced.discard(account_id)
            # No refresh of the account is left to compare against this.
            self._generation.pop(account_id, None)
        if not task.cancelled():
            task.exception()  # retrieved here so an unwatched failure is never reported twice

    # ------------------------------------------------------------------ the refresh

    async def _run_refresh(
        self, account_id: str, stale: str | None, force: bool, reason: Reason
    ) -> Token:
        started = time.monotonic()
        generation = self._generation.get(account_id, 0)
        unsaved_before = self._unsaved.get(account_id)
        try:
            async with self._refresh_slot():
                self._raise_if_store_down(started)
                token, attempts = await self._obtain(account_id, stale, force, generation)
        except asyncio.CancelledError:
            raise

        except InvalidGrantError as exc:
            exc.account_id = account_id
            entry = self._entries.get(account_id)
            if entry is not None:
                entry.last_error = f"{type(exc).__name__}: {exc}"
            self._audit("refresh", account_id, "needs-reauth", started, exc.attempts, reason)
            await self._hook("on_refresh_error", self.on_refresh_error, account_id, exc)
            await self._hook("on_reauth_required", self.on_reauth_required, account_id)
            raise
        except AmzTokenError as exc:
            if isinstance(exc, StorageError) and exc.unavailable:
                # Noted before any await: the refreshes queued behind this one fail with it
                # at once, rather than each wait its turn to time out on the same store.
                self._store_outage = (time.monotonic(), exc)
            unsaved = self._unsaved.get(account_id)
            if (
                unsaved is not None
                and unsaved is not unsaved_before
                and generation == self._generation.get(account_id, 0)
            ):
                # This refresh got a token the store would not take: serve it from memory
                # (later callers get it) and save it before the next refresh.
                self._install(account_id, unsaved).last_error = f"{type(exc).__name__}: {exc}"
                logger.error(
                    "account %r: refreshed, but the store failed to save the token (%s); "
                    "it is kept in memory and saved before the next refresh",
                    account_id,
                    type(exc).__name__,
                )
            else:
                # Whatever failed (the endpoint, the store), the next try waits a while.
                self._note_failure(account_id, exc)
            self._audit(
                "refresh",
                account_id,
                f"failed ({type(exc).__name__})",
                started,
                getattr(exc, "attempts", None),
                reason,
            )
            await self._hook("on_refresh_error", self.on_refresh_error, account_id, exc)
            self._raise_if_closing(exc)
            raise
        if generation != self._generation.get(account_id, 0):
            # add_account, exchange_code or remove_account ran meanwhile: what they did wins.
            return token
        self._install(account_id, token)
        if attempts == 0:
            # Another process (or an earlier run) had already stored a usable token.
            return token
        self._audit("refresh", account_id, "ok", started, attempts, reason)
        await self._hook("on_refresh", self.on_refresh, account_id, token)
        return token

    async def _obtain(
        self, account_id: str, stale: str | None, force: bool, generation: int
    ) -> tuple[Token, int]:
        """The token to use, and how many token requests it took (0: read from the store).

        ``generation`` is the account's when the refresh started: if ``add_account``,
        ``exchange_code`` or ``remove_account`` ran since, what this refresh learnt about
        the old refresh token is not recorded.
        """
        unsaved = self._unsaved.get(account_id)
        if not force and unsaved is None:
            # A flagged (needs re-auth) record read here is not trusted: only the re-read
            # under the lock is, below.
            stored = await self._load(account_id)
            if stored is None:
                raise AccountNotFoundError(account_id)
            if self._adoptable(stored, stale):
                return stored, 0
            await self._pace(stored)
        # One budget for waiting on another process's refresh and for our own retries.
        deadline = time.monotonic() + self._endpoint.policy.max_time
        async with self._store_lock(account_id, deadline):
            unsaved = self._unsaved.get(account_id)
            if unsaved is not None:
                # Our last token never reached the store: it is the truth; save it first.
                stored = unsaved
                with contextlib.suppress(StorageError):
                    await self._save_to_the_end(account_id, unsaved, deadline)
                    del self._unsaved[account_id]
            else:
                # Re-read inside the lock: another process may have refreshed meanwhile.
                loaded = await self._load(account_id, deadline)
                if loaded is None:
                    raise AccountNotFoundError(account_id)
                stored = loaded
                if stored.needs_reauth:
                    # Another process was told invalid_grant for this very refresh token.
                    if generation == self._generation.get(account_id, 0):
                        self._mark_reauth(account_id, _fingerprint(stored.refresh_token))
                    raise self._reauth_error(account_id)
                if not force and self._adoptable(stored, stale):
                    return stored, 0
            try:
                token, attempts = await self._endpoint.request(
                    refresh_request(
                        self.token_url,
                        self.client_id,
                        self._client_secret,
                        stored.refresh_token,
                        client_auth=self.client_auth,
                    ),
                    account_id=account_id,
                    previous_refresh_token=stored.refresh_token,
                    deadline=deadline,
                )
                if stored.authorized_at is not None:
                    # The same grant: its age goes on counting from when it was made.
                    token = replace(token, authorized_at=stored.authorized_at)
            except InvalidGrantError:
                if generation == self._generation.get(account_id, 0):
                    live = await self._flag_refused(account_id, stored)
                    if live is not None:
                        return live, 0
                    self._mark_reauth(account_id, _fingerprint(stored.refresh_token))
                raise
            if generation != self._generation.get(account_id, 0):
                # remove_account (or add/exchange) ran meanwhile: saving would undo it.
                return token, attempts
            try:
                await self._save_to_the_end(
                    account_id, token, max(deadline, time.monotonic() + SAVE_GRACE)
                )
            except StorageError:
                self._unsaved[account_id] = token
                raise
            self._unsaved.pop(account_id, None)
        return token, attempts

    async def _save_to_the_end(
        self, account_id: str, token: Token, deadline: float | None = None
    ) -> None:
        """Save a token the endpoint issued, even if the caller is cancelled meanwhile:
        ``aclose()`` waits for such saves instead of cancelling them. The save itself
        ends at ``deadline`` (default: ``retry_budget`` from now)."""
        save = self._track(
            self._save(account_id, token, deadline), must_finish=True, account_id=account_id
        )
        try:
            await asyncio.shield(save)
        except asyncio.CancelledError:
            await asyncio.wait([save])  # keep holding the lock until the save is done
            raise

    def _track(
        self, work: Coroutine[Any, Any, _R], *, must_finish: bool, account_id: str
    ) -> asyncio.Task[_R]:
        loop = self._loop
        assert loop is not None
        task = loop.create_task(work)
        tasks = self._must_finish if must_finish else self._cancellable
        tasks.add(task)
        self._task_accounts[task] = account_id
        task.add_done_callback(tasks.discard)
        task.add_done_callback(self._untrack)
        return task

    async def _flag_refused(self, account_id: str, refused: Token) -> Token | None:
        """Tell every process sharing the store (and ``aioamztoken accounts``) that the
        refresh token of ``refused`` was rejected, if the store still holds it (compared
        atomically: our lock may have lapsed, and another process saved a newer one).

        Returns the token to use instead when the store holds a newer, usable one; raises
        a transient error when it holds a newer one that needs refreshing first.
        """
        if getattr(self.store, "lock", None) is None and not hasattr(
            self.store, "mark_needs_reauth"
        ):
            return None  # a store that can neither lock nor compare: mark in memory only
        try:
            with self._store_errors(f"mark account {account_id!r}"):
                if await mark_refused(self.store, account_id, refused.refresh_token):
                    return None
            live = await self._load(account_id)
        except StorageError:
            return None
        if live is None or live.needs_reauth:
            return None
        if self._adoptable(live, None):
            return live
        raise TokenEndpointError(
            f"account {account_id!r}: its refresh token was replaced by another process "
            "during this refresh; try again",
            status=None,
            attempts=1,
        )

    def _untrack(self, task: asyncio.Task[Any]) -> None:
        self._task_accounts.pop(task, None)
        _retrieve(task)

    @contextlib.asynccontextmanager
    async def _refresh_slot(self) -> AsyncIterator[None]:
        """One of the ``2 * max_concurrent_refreshes`` places of refreshes at work (store
        reads, store lock, token request, save): queued refreshes hold no lock file and
        no thread, whatever the size of a cold fleet. Hooks run after it is left.

        Budgets start once a place is taken, so a cold fleet's tail does not fail for
        having waited its turn. The queue has no deadline of its own and needs none:
        every holder's store calls and token requests end at their deadlines, so it
        moves by ``2 * max_concurrent_refreshes`` at least every ``retry_budget``."""
        await self._refresh_slots.acquire()
        try:
            yield
        finally:
            self._refresh_slots.release()

    async def _pace(self, token: Token) -> None:
        """Wait until ``min_refresh_interval`` has passed since ``token`` was issued, if it
        lived less than that: an endpoint handing out tokens that expire at once (a tiny
        ``expires_in``) gets at most one request per interval, however eager the callers.
        Normal tokens live far longer than the interval and never wait here."""
        lifetime = token.lifetime
        if token.issued_at is None or lifetime is None or lifetime >= self.min_refresh_interval:
            return
        pause = token.issued_at + self.min_refresh_interval - _time()
        if pause > 0:
            await asyncio.sleep(min(pause, self.min_refresh_interval))

    def _adoptable(self, stored: Token, stale: str | None) -> bool:
        return stored.access_token != stale and not stored.is_expired(self._pacing(stored)[1])

    def _pacing(self, token: Token) -> tuple[float, float]:
        """The refresh buffer and expiry margin that fit ``token``'s lifetime."""
        buffer = self.refresh_buffer
        lifetime = token.lifetime
        if lifetime is not None and lifetime > 0:
            # A token that lives less than twice the buffer would be due on arrival.
            buffer = min(buffer, lifetime / 2)
        return buffer, min(self.expiry_margin, buffer / 4)

    @contextlib.asynccontextmanager
    async def _store_lock(
        self, account_id: str, deadline: float | None = None
    ) -> AsyncIterator[None]:
        # A store without a lock still gets one within this process, so that a refresh
        # and remove_account (or add_account) of one account never interleave.
        lock = getattr(self.store, "lock", None) or self._local_locks.hold
        if deadline is None:
            deadline = time.monotonic() + self._endpoint.policy.max_time
        # Another process may hold the lock for as long as its own refresh takes; or the
        # store does not answer. Either way the wait ends at the deadline.
        async with self._store_call(f"take the lock of account {account_id!r}", deadline):
            cm = lock(account_id)
            # In this task, not a helper task: some locks belong to the task that took them.
            with self._telemetry.lock_wait():
                await cm.__aenter__()
        release = f"release the lock of account {account_id!r}"
        try:
            yield
        except BaseException as exc:
            async with self._store_call(release, time.monotonic() + SAVE_GRACE):
                suppressed = await cm.__aexit__(type(exc), exc, exc.__traceback__)
            if not suppressed:
                raise
        else:
            async with self._store_call(release, time.monotonic() + SAVE_GRACE):
                await cm.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def _store_call(self, action: str, deadline: float) -> AsyncIterator[None]:
        """A store call made in this task (a lock's enter or exit), its errors mapped to
        :class:`StorageError`, cancelled at ``deadline`` (``time.monotonic()``): a store
        that never answers (a hung mount, a user-written store) must not hold the caller
        for ever."""
        with self._store_errors(action):
            try:
                async with _deadline(deadline):
                    yield
            except asyncio.TimeoutError:
                if time.monotonic() < deadline:
                    raise  # the store's own timeout, not ours: _store_errors names it
                raise StorageError(
                    f"store did not {action} before the refresh's deadline "
                    f"(retry_budget={self._endpoint.policy.max_time:g} s)",
                    location=repr(self.store),
                    unavailable=not action.startswith("take the lock"),
                ) from None

    @contextlib.contextmanager
    def _store_errors(self, action: str) -> Iterator[None]:
        """Map whatever a (user-written) store raises to :class:`StorageError`."""
        try:
            yield
        except AmzTokenError:
            raise
        except Exception as exc:
            # A store's error may hold what it was given (a token): only its type is kept.
            error = StorageError(
                f"store failed to {action}: {type(exc).__name__}", location=repr(self.store)
            )
            error.__cause__ = scrubbed(exc, text=False)
            raise_without_context(error)

    async def _in_store(
        self, action: str, call: Callable[[], Awaitable[_R]], deadline: float | None
    ) -> _R:
        """Run a store's ``load`` or ``save`` until ``deadline`` (default: ``retry_budget``
        from now), then give up on it with :class:`StorageError`.

        The call runs in a task of its own, waited for with a timeout: a call that
        ignores cancellation (a thread stuck on a hung mount) is left to end on its own,
        instead of holding the caller past the deadline.
        """
        if self._inline_store:
            with self._store_errors(action):
                return await call()
        if deadline is None:
            deadline = time.monotonic() + self._endpoint.policy.max_time
        with self._store_errors(action):
            task = asyncio.ensure_future(call())
        # asyncio.wait(timeout=...) without a timer per call: with 10,000 refresh timers
        # scheduled, each timer costs a heap push; one watchdog serves every call.
        woken = asyncio.get_running_loop().create_future()

        def wake(_: object = None) -> None:
            if not woken.done():
                woken.set_result(None)

        task.add_done_callback(wake)
        self._store_waits[woken] = deadline
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().call_later(
                STORE_WATCH_INTERVAL, self._watch_store_calls
            )
        try:
            await woken
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            del self._store_waits[woken]
            task.remove_done_callback(wake)
            if not task.done():  # given up on: kept referenced until it ends by itself
                _abandoned.add(task)
                task.add_done_callback(_abandoned.discard)
            task.add_done_callback(_retrieve)
        if not task.done():
            task.cancel()
            raise StorageError(
                f"store did not {action} before the refresh's deadline "
                f"(retry_budget={self._endpoint.policy.max_time:g} s)",
                location=repr(self.store),
                unavailable=True,
            )
        with self._store_errors(action):
            return task.result()
        raise AssertionError("unreachable")  # pragma: no cover (for mypy)

    def _watch_store_calls(self) -> None:
        """Wake the store calls whose deadline has passed (``_in_store`` gives up on them)."""
        now = time.monotonic()
        for woken, deadline in self._store_waits.items():
            if now >= deadline and not woken.done():
                woken.set_result(None)
        self._watchdog = None
        if self._store_waits:
            self._watchdog = asyncio.get_running_loop().call_later(
                STORE_WATCH_INTERVAL, self._watch_store_calls
            )

    async def _load(self, account_id: str, deadline: float | None = None) -> Token | None:
        return await self._in_store(
            f"load account {account_id!r}", lambda: self.store.load(account_id), deadline
        )

    async def _save(self, account_id: str, token: Token, deadline: float | None = None) -> None:
        await self._in_store(
            f"save account {account_id!r}", lambda: self.store.save(account_id, token), deadline
        )

    # ------------------------------------------------------------------ cache and timers

    def _install(self, account_id: str, token: Token) -> _Entry:
        """Cache ``token`` and schedule its background refresh."""
        self._watch_reauth(account_id, token)
        entry = self._entries.get(account_id)
        if entry is None:
            entry = self._entries[account_id] = _Entry(token)
        elif entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.token = token
        entry.access_token = token.access_token
        entry.needs_reauth = False
        entry.last_error = None
        entry.failures = 0
        entry.refusal = None
        entry.refused_until = _NEVER
        buffer, margin = self._pacing(token)
        if not token.access_token:
            entry.fresh_until = entry.due_at = entry.usable_until = _NEVER
            return entry
        entry.due_at = token.expires_at - buffer
        entry.usable_until = token.expires_at - margin
        if not self.auto_refresh:
            entry.fresh_until = entry.due_at
            return entry
        now = _time()
        if now < entry.due_at:
            # A jittered moment in [expires_at - buffer, expires_at - buffer/2].
            refresh_at = entry.due_at + self._rng.uniform(0.0, buffer / 2)
        else:
            # Already due when it arrived (read from a store late): refresh it soon, with a
            # little jitter so that many such accounts do not fire at one instant.
            refresh_at = now + self._rng.uniform(
                0.0, min(1.0, max(0.0, entry.usable_until - now) / 2)
            )
        if token.issued_at is not None:
            # However short its expires_in, a token is not renewed in the background sooner
            # than min_refresh_interval after it was issued.
            refresh_at = max(refresh_at, token.issued_at + self.min_refresh_interval)
        entry.fresh_until = min(refresh_at, entry.usable_until)
        self._schedule(account_id, entry, refresh_at - now)
        return entry

    def _schedule(self, account_id: str, entry: _Entry, delay: float) -> None:
        loop = self._loop
        if loop is None or self._closed or not self.auto_refresh:
            return
        if entry.timer is not None:
            entry.timer.cancel()
        # An empty context: the caller's (its spans, say) is not kept alive for a lifetime.
        entry.timer = loop.call_at(
            loop.time() + max(0.0, delay),
            self._on_timer,
            account_id,
            context=contextvars.Context(),
        )

    def _on_timer(self, account_id: str) -> None:
        entry = self._entries.get(account_id)
        if entry is None or self._closed:
            return
        entry.timer = None
        if entry.needs_reauth or account_id in self._inflight:
            return
        self._start(account_id, entry.token.access_token, force=False, reason="background")

    def _note_failure(self, account_id: str, exc: AmzTokenError) -> None:
        """Record a failed refresh, and back off: the next background try waits longer
        after each failure in a row; after a refusal of the endpoint, callers get that
        refusal again at once, without a request, until the backoff ends."""
        refused = isinstance(exc, TokenRefreshError)
        entry = self._entries.get(account_id)
        if entry is None:
            if not refused or self._closed:
                return
            entry = self._entries[account_id] = _Entry(Token("", "-", 0.0))
        entry.last_error = f"{type(exc).__name__}: {exc}"
        entry.failures += 1
        backoff = min(
            MAX_FAILURE_BACKOFF, self.min_refresh_interval * 2 ** min(entry.failures - 1, 16)
        )
        now = _time()
        if refused:
            assert isinstance(exc, TokenRefreshError)
            entry.refusal = exc
            entry.refused_until = now + backoff
        if now < entry.usable_until:
            # Still valid: keep serving it, and try again in a while (sooner as expiry
            # nears, but never sooner than the backoff).
            left = entry.usable_until - now
            delay = max(0.5, min(60.0, left / 3), backoff) * self._rng.uniform(0.5, 1.0)
            delay = max(delay, self.min_refresh_interval)
            entry.fresh_until = now + delay
            self._schedule(account_id, entry, delay)

    def _mark_reauth(self, account_id: str, fingerprint: int) -> None:
        entry = self._entries.get(account_id)
        if entry is None:
            entry = self._entries[account_id] = _Entry(Token("", "-", 0.0))
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.needs_reauth = True
        entry.rejected = fingerprint
        entry.recheck_at = _time() + REAUTH_RECHECK_INTERVAL
        entry.fresh_until = entry.due_at = entry.usable_until = _NEVER

    async def _recheck_reauth(self, account_id: str, entry: _Entry) -> _Entry | None:
        """Raise for an account that needs re-authorization, unless the store now holds a
        new refresh token (another process ran ``login`` or ``add``): then forget the state.

        The store is looked at no more than every ``REAUTH_RECHECK_INTERVAL`` seconds.
        """
        now = _time()
        if now >= entry.recheck_at:
            entry.recheck_at = now + REAUTH_RECHECK_INTERVAL
            stored = await self._load(account_id)
            if (
                stored is not None
                and not stored.needs_reauth
                and _fingerprint(stored.refresh_token) != entry.rejected
            ):
                self._forget(account_id)
                return None
        raise self._reauth_error(account_id)

    def _reauth_error(self, account_id: str) -> InvalidGrantError:
        return InvalidGrantError(
            f"account {account_id!r} needs re-authorization: its refresh token was rejected; "
            "supply a new one with add_account() or exchange_code()",
            error="invalid_grant",
            account_id=account_id,
        )

    def _forget(self, account_id: str) -> None:
        entry = self._entries.pop(account_id, None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    def _replace(self, account_id: str) -> None:
        """The user changed the account (add, exchange, remove): a refresh that started
        before must not install its result, and nothing older is kept."""
        if account_id in self._inflight:
            self._generation[account_id] = next(self._generations)
        else:  # no refresh to tell: nothing to keep for the account
            self._generation.pop(account_id, None)
        self._unsaved.pop(account_id, None)
        self._forget(account_id)

    async def _settle(self, account_id: str, *, closing: bool = False) -> None:
        """Wait for an in-flight refresh of ``account_id`` to end, whatever its outcome.

        Raises :class:`ManagerClosedError` if the manager was closed meanwhile, unless
        ``closing`` (work that ``aclose()`` lets finish)."""
        task = self._inflight.get(account_id)
        if task is not None:
            self._not_this_task(account_id, task)
            await asyncio.wait([task])
        if self._closed and not closing:
            raise ManagerClosedError("this AsyncTokenManager was closed meanwhile")

    # ------------------------------------------------------------------ hooks and logs

    async def _hook(self, name: str, hook: Callable[..., Any] | None, *args: Any) -> None:
        if hook is None:
            return
        # Set for the hook only: a timer made elsewhere in this task must not keep the
        # task alive through its context.
        work = _current_work.set(asyncio.current_task())
        try:
            result = hook(*args)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.error(
                "%s hook raised %s for account %r; ignored", name, type(exc).__name__, args[0]
            )
        finally:
            _current_work.reset(work)

    @staticmethod
    def _audit(
        event: str,
        account_id: str,
        outcome: str,
        started: float,
        attempts: int | None,
        reason: str,
    ) -> None:
        audit_logger.info(
            "%s account=%r outcome=%s duration_ms=%.0f attempts=%s reason=%s",
            event,
            account_id,
            outcome,
            (time.monotonic() - started) * 1000,
            attempts if attempts is not None else "-",
            reason,
        )

    # ------------------------------------------------------------------ accounts

    def authorization_url(
        self,
        *,
        redirect_uri: str,
        state: str,
        scope: str = DEFAULT_SCOPE,
        code_challenge: str | None = None,
    ) -> str:
        """The consent URL to send a user to (the region's host), with ``state`` and PKCE.

        Make the pair with :func:`aioamztoken.make_pkce_pair`; keep the verifier for
        :meth:`exchange_code`. ``state`` must be unguessable and checked on return.
        """
        return authorization_url(
            self.region,
            self.client_id,
            redirect_uri=redirect_uri,
            state=state,
            scope=scope,
            code_challenge=code_challenge,
            base_url=self.authorization_base_url,
        )

    async def exchange_code(
        self,
        account_id: str,
        code: str,
        *,
        redirect_uri: str,
        code_verifier: str | None = None,
    ) -> Token:
        """Trade an authorization code for the account's first tokens, and store them.

        Clears a needs-re-authorization state. Raises :class:`InvalidGrantError` for a
        used, expired or mismatched code.
        """
        self._bind()
        validate_account_id(account_id)
        refreshing = self._inflight.get(account_id)
        if refreshing is not None:
            self._not_this_task(account_id, refreshing)
        # A task of its own: a caller that gives up (a timeout) after the endpoint answered
        # must not lose the tokens, the code being spent by then.
        task = self._track(
            self._telemetry.exchange(
                self._exchange(account_id, code, redirect_uri, code_verifier), account_id
            ),
            must_finish=False,
            account_id=account_id,
        )
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled() and self._closed and not _being_cancelled():
                raise ManagerClosedError(
                    "the manager was closed while this code exchange was under way"
                ) from None
            raise

    async def _exchange(
        self, account_id: str, code: str, redirect_uri: str, code_verifier: str | None
    ) -> Token:
        started = time.monotonic()
        try:
            token, attempts = await self._endpoint.request(
                code_request(
                    self.token_url,
                    self.client_id,
                    self._client_secret,
                    code,
                    redirect_uri,
                    code_verifier,
                    client_auth=self.client_auth,
                ),
                account_id=account_id,
            )
            token = replace(token, authorized_at=token.issued_at or time.time())
            # The code is spent: its tokens are saved even if aclose() began meanwhile.
            await self._settle(account_id, closing=True)
            async with self._store_lock(account_id):
                await self._save_to_the_end(account_id, token)
            self._replace(account_id)
        except AmzTokenError as exc:
            self._audit(
                "code-exchange",
                account_id,
                f"failed ({type(exc).__name__})",
                started,
                getattr(exc, "attempts", None),
                "authorization_code",
            )
            self._raise_if_closing(exc)
            raise
        self._install(account_id, token)
        self._audit("code-exchange", account_id, "ok", started, attempts, "authorization_code")
        return token

    async def add_account(
        self, account_id: str, refresh_token: str, *, authorized_at: float | None = None
    ) -> None:
        """Store ``refresh_token`` for ``account_id``; the first use fetches an access token.

        ``authorized_at`` (POSIX seconds) is when the grant was made, default now. Makes
        no network call. Replaces whatever the account had and clears a
        needs-re-authorization state.
        """
        validate_account_id(account_id)
        if not isinstance(refresh_token, str) or not refresh_token.strip():
            raise ValueError("refresh_token must be a non-empty string")
        granted = check_authorized_at(authorized_at)
        self._bind()
        await self._settle(account_id)
        token = Token("", refresh_token.strip(), 0.0, authorized_at=granted)
        async with self._store_lock(account_id):
            await self._save(account_id, token)
        self._replace(account_id)
        pending = self._watch_reauth(account_id, token)
        if pending is not None:
            await asyncio.wait([pending])
        audit_logger.info("add-account account=%r outcome=ok", account_id)

    async def remove_account(self, account_id: str) -> None:
        """Forget ``account_id`` here and in the store. Raises :class:`AccountNotFoundError`."""
        self._bind()
        validate_account_id(account_id)
        await self._settle(account_id)
        async with self._store_lock(account_id):
            known = account_id in self._entries or await self._load(account_id) is not None
            self._replace(account_id)
            if not known:
                raise AccountNotFoundError(account_id)
            await self._in_store(
                f"delete account {account_id!r}", lambda: self.store.delete(account_id), None
            )
        # Nothing is kept for a removed account (50,000 add/remove cycles hold nothing).
        self._reauth.forget(account_id)
        from ._sources import drop_guard

        drop_guard(self, account_id)
        audit_logger.info("remove-account account=%r outcome=ok", account_id)

    async def accounts(self) -> list[str]:
        """The account ids in the store, sorted."""
        return sorted(await self._in_store("list accounts", self.store.accounts, None))

    async def status(self, account_id: str) -> AccountStatus:
        """Where ``account_id`` stands: fresh, due, expired or needs-reauth, with its expiry.

        Reads the store when the account is not cached. Raises :class:`AccountNotFoundError`.
        """
        self._bind()
        validate_account_id(account_id)
        entry = self._entries.get(account_id)
        refreshing = account_id in self._inflight
        if entry is not None and entry.needs_reauth:
            return self._with_authorization(
                AccountStatus(
                    account_id, AccountState.NEEDS_REAUTH, None, refreshing, entry.last_error
                ),
                entry.token,
            )
        if entry is not None:
            token = entry.token
            due_at, usable_until = entry.due_at, entry.usable_until
            last_error = entry.last_error
        else:
            stored = await self._load(account_id)
            if stored is None:
                raise AccountNotFoundError(account_id)
            if stored.needs_reauth:
                return self._with_authorization(
                    AccountStatus(account_id, AccountState.NEEDS_REAUTH, None, refreshing), stored
                )
            token, last_error = stored, None
            buffer, margin = self._pacing(stored)
            due_at = stored.expires_at - buffer
            usable_until = stored.expires_at - margin
        now = _time()
        if not token.access_token or now >= usable_until:
            state = AccountState.EXPIRED
        elif now >= due_at:
            state = AccountState.DUE
        else:
            state = AccountState.FRESH
        expires_at = token.expires_at if token.access_token else None
        pending = self._watch_reauth(account_id, token)  # time passes: the date may be near
        if pending is not None:
            await asyncio.wait([pending])
        return self._with_authorization(
            AccountStatus(account_id, state, expires_at, refreshing, last_error), token
        )

    def _with_authorization(self, status: AccountStatus, token: Token) -> AccountStatus:
        return replace(
            status, authorized_at=token.authorized_at, reauth_due_at=self._reauth.due_at(token)
        )

    def _watch_reauth(self, account_id: str, token: Token) -> asyncio.Task[Any] | None:
        """Run ``on_reauth_due`` the first time ``token``'s grant is near its end.

        A plain function runs here and now; a coroutine function runs in a task of its
        own, returned so that a caller outside a refresh may wait for it (a refresh must
        not: the hook may use the account being refreshed).
        """
        due = self._reauth.due_to_warn(account_id, token)
        if due is None or self._closed or self._loop is None:
            return None
        audit_logger.info(
            "reauth-due account=%r due=%s age_days=%.0f: must be re-authorized by then",
            account_id,
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due)),
            (_time() - (token.authorized_at or 0.0)) / 86400,
        )
        hook = self.on_reauth_due
        if hook is None:
            return None
        try:
            result = hook(account_id, due)
        except Exception as exc:
            self._hook_failed("on_reauth_due", exc, account_id)
            return None
        if not inspect.isawaitable(result):
            return None
        awaitable = result

        async def finish() -> None:
            try:
                await awaitable
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._hook_failed("on_reauth_due", exc, account_id)

        return self._track(finish(), must_finish=False, account_id=account_id)

    @staticmethod
    def _hook_failed(name: str, exc: Exception, account_id: str) -> None:
        logger.error(
            "%s hook raised %s for account %r; ignored", name, type(exc).__name__, account_id
        )

    # ------------------------------------------------------------------ aiohttp integration

    if TYPE_CHECKING:
        from ._middleware import AdsApiTraceConfig, Origins

    def middleware(
        self,
        account_id: str,
        *,
        api: str = "ads",
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Origins | None = None,
    ) -> AdsApiMiddleware:
        """An aiohttp client middleware that signs Amazon API requests for ``account_id``.

        ``api="ads"`` (the default) sends ``Authorization: Bearer`` and the Ads API
        headers; ``api="sp-api"`` sends ``x-amz-access-token``. ``origins=None`` means
        that API's Amazon origins; otherwise a list of ``scheme://host[:port]``.
        Requests to other origins pass through untouched. On a rejected token it
        refreshes (compare-and-refresh) and retries once; see :class:`AdsApiMiddleware`
        for bodies that cannot be replayed and for the typed errors a failed refresh
        raises. Cheap to create; keep one per session.
        """
        from ._middleware import AdsApiMiddleware

        return AdsApiMiddleware(
            self.token_source(account_id),
            api=api,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )

    def token_source(self, account_id: str) -> AccountTokenSource:
        """What the adapters read ``account_id``'s tokens from (cached, fetch, compare)."""
        from ._sources import AccountTokenSource

        return AccountTokenSource(self, account_id)

    def httpx_auth(
        self,
        account_id: str,
        *,
        api: str = "ads",
        profile_id: str | int | None = None,
        ads_account_id: str | None = None,
        manager_account_id: str | None = None,
        origins: Origins | None = None,
    ) -> AsyncHttpxAuth:
        """An ``httpx.Auth`` for ``httpx.AsyncClient`` signing like :meth:`middleware`.

        Needs the ``httpx`` extra. With a sync ``httpx.Client`` it raises an error that
        points to :meth:`BlockingTokenManager.httpx_auth`.
        """
        from ._httpx import AsyncHttpxAuth

        return AsyncHttpxAuth(
            self.token_source(account_id),
            api=api,
            profile_id=profile_id,
            ads_account_id=ads_account_id,
            manager_account_id=manager_account_id,
            origins=origins,
        )

    async def get_grantless_token(self, scope: str) -> str:
        """An access token of the ``client_credentials`` grant for ``scope``.

        For grantless SP-API operations (``scope="sellingpartnerapi::notifications"``).
        Cached per scope, one token request for all concurrent callers of a scope,
        refreshed in the background; no refresh token and no store record. Raises
        :class:`InvalidClientError` for a rejected client, :class:`TokenRefreshError`
        for an ``invalid_scope``, :class:`TokenEndpointError` for transient failures.
        """
        cached = self._grantless_tokens().cached(scope)
        if cached is not None:
            return cached
        return (await self._grantless_tokens().get(scope)).access_token

    def grantless_middleware(
        self, scope: str, *, origins: Origins | None = None
    ) -> AdsApiMiddleware:
        """An aiohttp middleware signing SP-API requests with the grantless token of ``scope``."""
        from ._middleware import AdsApiMiddleware

        return AdsApiMiddleware(self._grantless_source(scope), api="sp-api", origins=origins)

    def grantless_httpx_auth(self, scope: str, *, origins: Origins | None = None) -> AsyncHttpxAuth:
        """An ``httpx.Auth`` (``AsyncClient``) signing SP-API requests with a grantless token."""
        from ._httpx import AsyncHttpxAuth

        return AsyncHttpxAuth(self._grantless_source(scope), api="sp-api", origins=origins)

    def _grantless_tokens(self) -> GrantlessTokens:
        from ._grantless import GrantlessTokens

        tokens: GrantlessTokens | None = getattr(self, "_grantless", None)
        if tokens is None:
            tokens = self._grantless = GrantlessTokens(self)
        return tokens

    def _grantless_source(self, scope: str) -> GrantlessTokenSource:
        from ._grantless import GrantlessTokenSource

        return GrantlessTokenSource(self, self._grantless_tokens(), scope)

    def trace_config(self) -> AdsApiTraceConfig:
        """The manager's :class:`AdsApiTraceConfig`: counts and logs 401s and retries.

        The same object on every call, so its ``rejected`` and ``retried`` counters sum
        over every session it is attached to: ``ClientSession(trace_configs=[...])``.
        """
        from ._middleware import AdsApiTraceConfig

        config: AdsApiTraceConfig | None = getattr(self, "_trace_config", None)
        if config is None:
            config = self._trace_config = AdsApiTraceConfig()
        return config

    def session(
        self,
        account_id: str,
        *,
        profile_id: str | int | None = None,
        region: Region | str | None = None,
        origins: Origins | None = None,
        **session_kwargs: Any,
    ) -> aiohttp.ClientSession:
        """A new ``aiohttp.ClientSession`` for the Ads API, signed for ``account_id``.

        Its ``base_url`` is the Ads API origin of ``region`` (default: the manager's), so
        ``await http.get("/v2/profiles")`` works, and :meth:`middleware` is attached after
        any ``middlewares`` passed in (innermost: every send, retries of outer middlewares
        included, gets a token fetched at that moment, and outer middlewares never see it).
        Other keyword arguments go to ``ClientSession``; a ``base_url`` among them
        replaces the region's and must be one of ``origins``, else ``ValueError``.

        The caller owns the session and closes it (``async with mgr.session(...) as
        http:``). Call it from a coroutine, as ``ClientSession`` requires.
        """
        middleware = self.middleware(account_id, profile_id=profile_id, origins=origins)
        base_url = session_kwargs.pop("base_url", None)
        if base_url is None:
            base_url = (self.region if region is None else Region.parse(region)).api_host
        elif region is not None:
            raise ValueError("pass region or base_url, not both")
        if not middleware.allows(str(base_url)):
            raise ValueError(
                f"base_url {str(base_url)!r} is not among the origins the token is sent to "
                f"({', '.join(middleware.origins)}); pass origins=[...]"
            )
        middlewares = (*(session_kwargs.pop("middlewares", None) or ()), middleware)
        return aiohttp.ClientSession(base_url=base_url, middlewares=middlewares, **session_kwargs)
